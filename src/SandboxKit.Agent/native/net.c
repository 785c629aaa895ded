// Sockets and routes of sandboxkit-agent: connections into the sandbox (N), the egress relay's listeners
// (DNS on 127.0.0.1:53, TCP on the configured ports of every local address), its catch-all route and its second
// loopback address.
//
// Same conventions as sys.c: a non-negative result or -errno, EINTR retried where that is right, every
// descriptor non-blocking and close-on-exec. Addresses cross as struct sbk_inet (mirrored in Native.cs):
// family AF_INET (first 4 bytes of `address`) or AF_INET6, port in host order.

#define _GNU_SOURCE
#include <errno.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define SBK_EXPORT __attribute__((visibility("default")))

struct sbk_inet
{
    int32_t family;
    int32_t port;
    uint8_t address[16];
};

static int to_sockaddr(const struct sbk_inet *in, struct sockaddr_storage *out, socklen_t *length)
{
    memset(out, 0, sizeof *out);
    if (in->port < 0 || in->port > 65535)
    {
        return -EINVAL;
    }
    if (in->family == AF_INET)
    {
        struct sockaddr_in *v4 = (struct sockaddr_in *)out;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)in->port);
        memcpy(&v4->sin_addr, in->address, 4);
        *length = sizeof *v4;
        return 0;
    }
    if (in->family == AF_INET6)
    {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)in->port);
        memcpy(&v6->sin6_addr, in->address, 16);
        *length = sizeof *v6;
        return 0;
    }
    return -EAFNOSUPPORT;
}

static void from_sockaddr(const struct sockaddr_storage *in, struct sbk_inet *out)
{
    memset(out, 0, sizeof *out);
    if (in->ss_family == AF_INET)
    {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)in;
        out->family = AF_INET;
        out->port = ntohs(v4->sin_port);
        memcpy(out->address, &v4->sin_addr, 4);
    }
    else if (in->ss_family == AF_INET6)
    {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)in;
        out->family = AF_INET6;
        out->port = ntohs(v6->sin6_port);
        memcpy(out->address, &v6->sin6_addr, 16);
    }
}

// A non-blocking, close-on-exec socket: `stream` 1 for TCP, 0 for UDP.
SBK_EXPORT int sbk_inet_socket(int family, int stream)
{
    int fd = socket(family, (stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

// Starts a connection: 0 when connected at once, -EINPROGRESS while it is under way (then EPOLLOUT and
// sbk_socket_error tell the outcome), else -errno.
SBK_EXPORT int sbk_inet_connect(int fd, const struct sbk_inet *to)
{
    struct sockaddr_storage address;
    socklen_t length;
    int rc = to_sockaddr(to, &address, &length);
    if (rc < 0)
    {
        return rc;
    }
    // A non-blocking connect interrupted by a signal goes on in the background: EINTR means "in progress".
    if (connect(fd, (struct sockaddr *)&address, length) < 0)
    {
        return errno == EINTR ? -EINPROGRESS : -errno;
    }
    return 0;
}

// Binds with SO_REUSEADDR (a listener can be made again at once after the relay was turned off and on);
// IPv6 sockets are IPv6-only, so an IPv4 and an IPv6 listener can share a port.
SBK_EXPORT int sbk_inet_bind(int fd, const struct sbk_inet *at)
{
    struct sockaddr_storage address;
    socklen_t length;
    int rc = to_sockaddr(at, &address, &length);
    if (rc < 0)
    {
        return rc;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
    {
        return -errno;
    }
    if (at->family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
    {
        return -errno;
    }
    return bind(fd, (struct sockaddr *)&address, length) < 0 ? -errno : 0;
}

SBK_EXPORT int sbk_listen(int fd, int backlog) { return listen(fd, backlog) < 0 ? -errno : 0; }

// Accepts one connection (non-blocking, close-on-exec) and reports the local address it arrived on: for the
// egress relay that is the address the sandbox dialed (with the catch-all route, any address at all).
SBK_EXPORT int sbk_inet_accept(int fd, struct sbk_inet *local)
{
    int client = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (client < 0)
    {
        return -errno;
    }
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    memset(&address, 0, sizeof address);
    if (getsockname(client, (struct sockaddr *)&address, &length) < 0)
    {
        int error = errno;
        close(client);
        return -error;
    }
    from_sockaddr(&address, local);
    return client;
}

// The pending error of a socket (the outcome of a non-blocking connect): 0 or -errno.
SBK_EXPORT int sbk_socket_error(int fd)
{
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0)
    {
        return -errno;
    }
    return -error;
}

// Closes a TCP socket with a reset (SO_LINGER 0): the peer sees ECONNRESET, not an orderly end.
SBK_EXPORT int sbk_reset_close(int fd)
{
    struct linger linger = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
    return close(fd) < 0 ? -errno : 0;
}

SBK_EXPORT long sbk_inet_recvfrom(int fd, void *buffer, long size, struct sbk_inet *from)
{
    struct sockaddr_storage address;
    socklen_t length;
    ssize_t n;
    do
    {
        length = sizeof address;
        memset(&address, 0, sizeof address);
        n = recvfrom(fd, buffer, (size_t)size, MSG_TRUNC, (struct sockaddr *)&address, &length);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
    {
        return -errno;
    }
    from_sockaddr(&address, from);
    return n; // with MSG_TRUNC: the datagram's real length, which may exceed `size`
}

SBK_EXPORT long sbk_inet_sendto(int fd, const void *buffer, long size, const struct sbk_inet *to)
{
    struct sockaddr_storage address;
    socklen_t length;
    int rc = to_sockaddr(to, &address, &length);
    if (rc < 0)
    {
        return rc;
    }
    ssize_t n;
    do
    {
        n = sendto(fd, buffer, (size_t)size, MSG_NOSIGNAL, (struct sockaddr *)&address, length);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

// ---- the catch-all route ------------------------------------------------------------------------------

static void add_attribute(struct nlmsghdr *message, size_t capacity, int type, const void *data, size_t size)
{
    size_t at = NLMSG_ALIGN(message->nlmsg_len);
    size_t length = RTA_LENGTH(size);
    if (at + RTA_ALIGN(length) > capacity)
    {
        return; // cannot happen with the fixed request below; the kernel then rejects the message
    }
    struct rtattr *attribute = (struct rtattr *)((char *)message + at);
    attribute->rta_type = (unsigned short)type;
    attribute->rta_len = (unsigned short)length;
    memcpy(RTA_DATA(attribute), data, size);
    message->nlmsg_len = (uint32_t)(at + RTA_ALIGN(length));
}

// Sends one request to the kernel's routing netlink and waits for its acknowledgement: 0 or -errno.
static int netlink_request(struct nlmsghdr *request)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
    {
        return -errno;
    }
    // The kernel answers synchronously; the timeout only guards against a runtime that never does.
    struct timeval timeout = {.tv_sec = 2, .tv_usec = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct sockaddr_nl kernel;
    memset(&kernel, 0, sizeof kernel);
    kernel.nl_family = AF_NETLINK;
    ssize_t sent;
    do
    {
        sent = sendto(fd, request, request->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0)
    {
        int error = errno;
        close(fd);
        return -error;
    }
    char answer[4096];
    for (;;)
    {
        ssize_t n;
        do
        {
            n = recv(fd, answer, sizeof answer, 0);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
        {
            int error = errno;
            close(fd);
            return -error;
        }
        for (struct nlmsghdr *message = (struct nlmsghdr *)answer; NLMSG_OK(message, (unsigned int)n); message = NLMSG_NEXT(message, n))
        {
            if (message->nlmsg_type == NLMSG_ERROR)
            {
                const struct nlmsgerr *error = (const struct nlmsgerr *)NLMSG_DATA(message);
                int code = message->nlmsg_len >= NLMSG_LENGTH(sizeof *error) ? error->error : -EPROTO;
                close(fd);
                return code <= 0 ? code : -code;
            }
            if (message->nlmsg_type == NLMSG_DONE)
            {
                close(fd);
                return 0;
            }
        }
    }
}

// Adds (add=1) or removes (add=0) `local default dev lo` in the main table for `family` (AF_INET or
// AF_INET6): what `ip route add local default dev lo` does. With it every destination of that family is a
// local address, so a connect to any address lands on a local listener (which sees it as its local address).
// Needs CAP_NET_ADMIN; gVisor answers -EOPNOTSUPP. Returns 0 or -errno (-EEXIST / -ESRCH: already there / not
// there).
SBK_EXPORT int sbk_route_local_default(int family, int add)
{
    if (family != AF_INET && family != AF_INET6)
    {
        return -EAFNOSUPPORT;
    }
    unsigned int lo = if_nametoindex("lo");
    if (lo == 0)
    {
        return -errno;
    }
    struct
    {
        struct nlmsghdr header;
        struct rtmsg route;
        char attributes[64];
    } request;
    memset(&request, 0, sizeof request);
    request.header.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
    request.header.nlmsg_type = add ? RTM_NEWROUTE : RTM_DELROUTE;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? (NLM_F_CREATE | NLM_F_EXCL) : 0);
    request.header.nlmsg_seq = 1;
    request.route.rtm_family = (unsigned char)family;
    request.route.rtm_dst_len = 0;
    request.route.rtm_table = RT_TABLE_MAIN;
    request.route.rtm_protocol = add ? RTPROT_BOOT : 0;
    request.route.rtm_scope = add ? RT_SCOPE_HOST : RT_SCOPE_NOWHERE;
    request.route.rtm_type = RTN_LOCAL;
    uint32_t oif = lo;
    add_attribute(&request.header, sizeof request, RTA_OIF, &oif, sizeof oif);
    return netlink_request(&request.header);
}

// Adds (add=1) or removes (add=0) the IPv4 address of the 4 bytes at `address4` (/32, scope host) on lo: what
// `ip addr add 127.0.0.2/32 dev lo scope host` does. glibc's getaddrinfo with AI_ADDRCONFIG (node's default
// lookup, getent ahosts) returns no IPv4 address at all while 127.0.0.1 is the only IPv4 address of the
// system; one more loopback address satisfies it. Needs CAP_NET_ADMIN. 0 or -errno (-EEXIST, -EADDRNOTAVAIL:
// already there / not there).
SBK_EXPORT int sbk_loopback_address(const uint8_t *address4, int add)
{
    uint32_t address;
    memcpy(&address, address4, sizeof address);
    unsigned int lo = if_nametoindex("lo");
    if (lo == 0)
    {
        return -errno;
    }
    struct
    {
        struct nlmsghdr header;
        struct ifaddrmsg address;
        char attributes[64];
    } request;
    memset(&request, 0, sizeof request);
    request.header.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
    request.header.nlmsg_type = add ? RTM_NEWADDR : RTM_DELADDR;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? (NLM_F_CREATE | NLM_F_EXCL) : 0);
    request.header.nlmsg_seq = 1;
    request.address.ifa_family = AF_INET;
    request.address.ifa_prefixlen = 32;
    request.address.ifa_flags = IFA_F_PERMANENT;
    request.address.ifa_scope = RT_SCOPE_HOST;
    request.address.ifa_index = lo;
    add_attribute(&request.header, sizeof request, IFA_LOCAL, &address, sizeof address);
    add_attribute(&request.header, sizeof request, IFA_ADDRESS, &address, sizeof address);
    return netlink_request(&request.header);
}
