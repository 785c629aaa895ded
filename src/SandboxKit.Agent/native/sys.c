// Thin system-call layer of sandboxkit-agent, linked into the NativeAOT binary (DirectPInvoke).
//
// Conventions, so the C# side needs no errno handling or variadic calls:
//   - every function returns a non-negative result or -errno;
//   - EINTR is retried where retrying is right (everything but close);
//   - every descriptor created here is close-on-exec (commands only get what the spawn helper places);
//   - structures handed to C# have fixed layouts (sbk_stat, sbk_event) mirrored in Native.cs.

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SBK_EXPORT __attribute__((visibility("default")))
#define RETRY(expression)                                                                                    \
    ({                                                                                                       \
        long _r;                                                                                             \
        do                                                                                                   \
        {                                                                                                    \
            _r = (long)(expression);                                                                         \
        } while (_r < 0 && errno == EINTR);                                                                  \
        _r < 0 ? -(long)errno : _r;                                                                          \
    })

// ---- descriptors ---------------------------------------------------------------------------------------

SBK_EXPORT long sbk_read(int fd, void *buffer, long count) { return RETRY(read(fd, buffer, (size_t)count)); }

SBK_EXPORT long sbk_write(int fd, const void *buffer, long count) { return RETRY(write(fd, buffer, (size_t)count)); }

SBK_EXPORT long sbk_pread(int fd, void *buffer, long count, long offset)
{
    return RETRY(pread(fd, buffer, (size_t)count, (off_t)offset));
}

SBK_EXPORT long sbk_pwrite(int fd, const void *buffer, long count, long offset)
{
    return RETRY(pwrite(fd, buffer, (size_t)count, (off_t)offset));
}

// Not retried: on Linux the descriptor is gone even when close reports EINTR.
SBK_EXPORT int sbk_close(int fd) { return close(fd) < 0 ? -errno : 0; }

SBK_EXPORT int sbk_pipe(int *fds, int nonblocking)
{
    return pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0)) < 0 ? -errno : 0;
}

SBK_EXPORT int sbk_set_nonblocking(int fd, int on)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
    {
        return -errno;
    }
    flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags) < 0 ? -errno : 0;
}

// A close-on-exec copy of fd numbered at least `minimum`.
SBK_EXPORT int sbk_dup_above(int fd, int minimum) { return (int)RETRY(fcntl(fd, F_DUPFD_CLOEXEC, minimum)); }

SBK_EXPORT int sbk_fionread(int fd)
{
    int available = 0;
    return ioctl(fd, FIONREAD, &available) < 0 ? -errno : available;
}

SBK_EXPORT int sbk_memfd(const char *name) { return (int)RETRY(memfd_create(name, MFD_CLOEXEC)); }

SBK_EXPORT int sbk_open(const char *path, int flags, int mode) { return (int)RETRY(open(path, flags | O_CLOEXEC, mode)); }

SBK_EXPORT int sbk_openat(int dirfd, const char *path, int flags, int mode)
{
    return (int)RETRY(openat(dirfd, path, flags | O_CLOEXEC, mode));
}

// ---- pseudo-terminals (composed in C#: Terminal.cs) -----------------------------------------------------

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

// Unlocks the slave of a /dev/ptmx master (what unlockpt does).
SBK_EXPORT int sbk_pty_unlock(int master)
{
    int unlock = 0;
    return ioctl(master, TIOCSPTLCK, &unlock) < 0 ? -errno : 0;
}

// Opens the slave through the master, without a path lookup (Linux 4.13+; -ENOTTY/-EINVAL where unsupported,
// e.g. gVisor). O_NOCTTY: the supervisor must never acquire a controlling terminal.
SBK_EXPORT int sbk_pty_peer(int master) { return (int)RETRY(ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)); }

// The slave's number n (/dev/pts/n).
SBK_EXPORT int sbk_pty_number(int master)
{
    unsigned int n = 0;
    return ioctl(master, TIOCGPTN, &n) < 0 ? -errno : (int)n;
}

// TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group when the size changes.
SBK_EXPORT int sbk_set_winsize(int fd, int cols, int rows)
{
    struct winsize size;
    memset(&size, 0, sizeof size);
    size.ws_col = (unsigned short)cols;
    size.ws_row = (unsigned short)rows;
    return ioctl(fd, TIOCSWINSZ, &size) < 0 ? -errno : 0;
}

SBK_EXPORT int sbk_fchown(int fd, int uid, int gid) { return fchown(fd, (uid_t)uid, (gid_t)gid) < 0 ? -errno : 0; }

// ---- epoll, eventfd, timerfd ---------------------------------------------------------------------------

struct sbk_event
{
    uint32_t events;
    int32_t fd;
};

SBK_EXPORT int sbk_epoll_create1(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

SBK_EXPORT int sbk_epoll_ctl(int epfd, int op, int fd, uint32_t events)
{
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = events;
    event.data.fd = fd;
    return epoll_ctl(epfd, op, fd, &event) < 0 ? -errno : 0;
}

// Waits for events (timeout in ms, -1: forever) and copies them into `out` as (events, fd) pairs.
SBK_EXPORT int sbk_epoll_wait(int epfd, struct sbk_event *out, int capacity, int timeout_ms)
{
    struct epoll_event events[256];
    if (capacity > 256)
    {
        capacity = 256;
    }
    int n;
    do
    {
        n = epoll_wait(epfd, events, capacity, timeout_ms);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
    {
        return -errno;
    }
    for (int i = 0; i < n; i++)
    {
        out[i].events = events[i].events;
        out[i].fd = events[i].data.fd;
    }
    return n;
}

SBK_EXPORT int sbk_eventfd(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

SBK_EXPORT int sbk_timerfd(void)
{
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

// Arms the timer at an absolute CLOCK_MONOTONIC time in nanoseconds (0 disarms).
SBK_EXPORT int sbk_timerfd_set(int fd, int64_t deadline_ns)
{
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    if (deadline_ns > 0)
    {
        spec.it_value.tv_sec = deadline_ns / 1000000000;
        spec.it_value.tv_nsec = deadline_ns % 1000000000;
    }
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0 ? -errno : 0;
}

SBK_EXPORT int64_t sbk_monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

SBK_EXPORT int64_t sbk_realtime_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

// ---- Unix sockets --------------------------------------------------------------------------------------

static int fill_address(struct sockaddr_un *address, const char *path)
{
    size_t length = strlen(path);
    if (length == 0 || length >= sizeof address->sun_path)
    {
        return -ENAMETOOLONG;
    }
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path, path, length + 1);
    return 0;
}

// A non-blocking listening socket at `path` (an existing socket file there is replaced). It is bound under a
// temporary name and renamed into place once it listens: whoever sees the path can connect at once.
SBK_EXPORT int sbk_listen_unix(const char *path, int backlog)
{
    struct sockaddr_un address;
    char temporary[sizeof address.sun_path];
    int n = snprintf(temporary, sizeof temporary, "%s.%d", path, (int)getpid());
    if (n < 0 || (size_t)n >= sizeof temporary)
    {
        return -ENAMETOOLONG;
    }
    int rc = fill_address(&address, temporary);
    if (rc < 0)
    {
        return rc;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
    {
        return -errno;
    }
    unlink(temporary);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, backlog) < 0 || rename(temporary, path) < 0)
    {
        int error = errno;
        close(fd);
        unlink(temporary);
        return -error;
    }
    return fd;
}

SBK_EXPORT int sbk_accept(int fd)
{
    int client = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return client < 0 ? -errno : client;
}

// A blocking connected socket to `path`.
SBK_EXPORT int sbk_connect_unix(const char *path)
{
    struct sockaddr_un address;
    int rc = fill_address(&address, path);
    if (rc < 0)
    {
        return rc;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
    {
        return -errno;
    }
    if (RETRY(connect(fd, (struct sockaddr *)&address, sizeof address)) < 0)
    {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

SBK_EXPORT int sbk_shutdown_write(int fd) { return shutdown(fd, SHUT_WR) < 0 ? -errno : 0; }

// Sends on a socket without SIGPIPE.
SBK_EXPORT long sbk_send(int fd, const void *buffer, long count) { return RETRY(send(fd, buffer, (size_t)count, MSG_NOSIGNAL)); }

// poll() on up to two descriptors for the relay: returns the revents of each in out[0], out[1].
SBK_EXPORT int sbk_poll2(int fd0, int events0, int fd1, int events1, int timeout_ms, int *out)
{
    struct pollfd fds[2] = {{.fd = fd0, .events = (short)events0}, {.fd = fd1, .events = (short)events1}};
    int n = (int)RETRY(poll(fds, 2, timeout_ms));
    if (n < 0)
    {
        return n;
    }
    out[0] = fds[0].revents;
    out[1] = fds[1].revents;
    return n;
}

// ---- files ---------------------------------------------------------------------------------------------

struct sbk_stat
{
    int64_t dev;
    int64_t ino;
    int64_t size;
    int64_t mtime_sec;
    int64_t mtime_nsec;
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint32_t nlink;
};

static void fill_stat(struct sbk_stat *out, const struct stat *st)
{
    out->dev = (int64_t)st->st_dev;
    out->ino = (int64_t)st->st_ino;
    out->size = (int64_t)st->st_size;
    out->mtime_sec = (int64_t)st->st_mtim.tv_sec;
    out->mtime_nsec = (int64_t)st->st_mtim.tv_nsec;
    out->mode = st->st_mode;
    out->uid = st->st_uid;
    out->gid = st->st_gid;
    out->nlink = (uint32_t)st->st_nlink;
}

// fstatat: `dirfd` AT_FDCWD (-100) for paths; `nofollow` for lstat semantics.
SBK_EXPORT int sbk_statat(int dirfd, const char *path, int nofollow, struct sbk_stat *out)
{
    struct stat st;
    if (fstatat(dirfd, path, &st, nofollow ? AT_SYMLINK_NOFOLLOW : 0) < 0)
    {
        return -errno;
    }
    fill_stat(out, &st);
    return 0;
}

SBK_EXPORT int sbk_fstat(int fd, struct sbk_stat *out)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
    {
        return -errno;
    }
    fill_stat(out, &st);
    return 0;
}

SBK_EXPORT int sbk_mkdirat(int dirfd, const char *path, int mode) { return mkdirat(dirfd, path, (mode_t)mode) < 0 ? -errno : 0; }

SBK_EXPORT int sbk_unlinkat(int dirfd, const char *path, int remove_directory)
{
    return unlinkat(dirfd, path, remove_directory ? AT_REMOVEDIR : 0) < 0 ? -errno : 0;
}

SBK_EXPORT int sbk_renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    return renameat(olddirfd, oldpath, newdirfd, newpath) < 0 ? -errno : 0;
}

SBK_EXPORT long sbk_readlinkat(int dirfd, const char *path, char *buffer, long size)
{
    ssize_t n = readlinkat(dirfd, path, buffer, (size_t)size);
    return n < 0 ? -errno : n;
}

SBK_EXPORT int sbk_fchmod(int fd, int mode) { return fchmod(fd, (mode_t)mode) < 0 ? -errno : 0; }

SBK_EXPORT int sbk_chown(const char *path, int uid, int gid) { return lchown(path, (uid_t)uid, (gid_t)gid) < 0 ? -errno : 0; }

SBK_EXPORT int sbk_chmod(const char *path, int mode) { return chmod(path, (mode_t)mode) < 0 ? -errno : 0; }

// Executable for the calling thread's effective ids (the file workers run as the command user).
SBK_EXPORT int sbk_can_execute(const char *path) { return faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) < 0 ? -errno : 0; }

// Raw directory entries (struct linux_dirent64) into buffer; 0 at the end.
SBK_EXPORT long sbk_getdents(int fd, void *buffer, long size)
{
    return RETRY(syscall(SYS_getdents64, fd, buffer, (size_t)size));
}

SBK_EXPORT long sbk_lseek(int fd, long offset, int whence)
{
    off_t r = lseek(fd, (off_t)offset, whence);
    return r < 0 ? -errno : (long)r;
}

SBK_EXPORT int sbk_fsync(int fd) { return (int)RETRY(fsync(fd)); }

// ---- processes, identity, signals ----------------------------------------------------------------------

SBK_EXPORT int sbk_kill(int pid, int sig) { return kill(pid, sig) < 0 ? -errno : 0; }

SBK_EXPORT int sbk_getpid(void) { return getpid(); }

SBK_EXPORT int sbk_geteuid(void) { return (int)geteuid(); }

SBK_EXPORT int sbk_umask(int mask) { return (int)umask((mode_t)mask); }

SBK_EXPORT int sbk_set_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ? -errno : 0; }

// The whole process: no supplementary groups (glibc broadcasts this to every thread, as wanted here).
SBK_EXPORT int sbk_clear_groups(void) { return setgroups(0, NULL) < 0 ? -errno : 0; }

// The calling thread only (raw system calls, which Linux applies per thread): no supplementary groups,
// effective (and so file-system) ids of the command user, real and saved ids unchanged. Commands then cannot
// signal or ptrace this thread (its real and saved uid stay root) while it acts with the user's permissions.
SBK_EXPORT int sbk_thread_become_user(int uid, int gid)
{
    if (syscall(SYS_setgroups, 0, NULL) < 0)
    {
        return -errno;
    }
    if (syscall(SYS_setresgid, -1, gid, -1) < 0)
    {
        return -errno;
    }
    if (syscall(SYS_setresuid, -1, uid, -1) < 0)
    {
        return -errno;
    }
    return 0;
}

SBK_EXPORT int sbk_getrandom(void *buffer, long size)
{
    long done = 0;
    while (done < size)
    {
        ssize_t n = getrandom((char *)buffer + done, (size_t)(size - done), 0);
        if (n < 0)
        {
            if (errno == EINTR)
            {
                continue;
            }
            return -errno;
        }
        done += n;
    }
    return 0;
}

static int termination_fd = -1;

static void on_termination(int sig)
{
    (void)sig;
    int saved = errno;
    uint64_t one = 1;
    if (termination_fd >= 0)
    {
        ssize_t ignored = write(termination_fd, &one, sizeof one);
        (void)ignored;
    }
    errno = saved;
}

// SIGPIPE ignored (writes report EPIPE); SIGTERM, SIGINT and SIGHUP increment the eventfd `fd` (the event
// loop shuts down cleanly). The handler only writes: async-signal-safe, and no managed code in it.
SBK_EXPORT int sbk_install_signal_handlers(int fd)
{
    termination_fd = fd;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_IGN;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGPIPE, &action, NULL) < 0)
    {
        return -errno;
    }
    if (fd >= 0)
    {
        action.sa_handler = on_termination;
        action.sa_flags = SA_RESTART;
        if (sigaction(SIGTERM, &action, NULL) < 0 || sigaction(SIGINT, &action, NULL) < 0 ||
            sigaction(SIGHUP, &action, NULL) < 0)
        {
            return -errno;
        }
    }
    return 0;
}

// The page size, for /proc/<pid>/statm.
SBK_EXPORT long sbk_page_size(void) { return sysconf(_SC_PAGESIZE); }
