// Process creation and reaping for sandboxkit-agent (docs/supervisor-protocol.md, "Execution model").
//
// sbk_spawn() starts a program the way the supervisor needs it and the C library cannot:
//   - clone(CLONE_VM | CLONE_VFORK | SIGCHLD) on a private stack, with every signal blocked in the calling
//     thread, so no handler of the .NET runtime can run in the child while it shares the parent's memory;
//   - in the child, raw system calls only (no errno, no locks, no glibc wrappers: glibc's setresuid() would
//     broadcast the change to every thread of the *parent*, since the child shares its memory): reset every
//     signal disposition, setsid, optional controlling terminal, place descriptors, drop groups, gid and uid
//     (per process: the child is its own process), chdir as the user, write oom_score_adj before the uid
//     changes (so the command cannot lower it), empty the signal mask and execve;
//   - a failure before execve is reported as errno (and the step) through memory shared with the parent.
//
// sbk_wait_peek() and sbk_reap() are the reaper thread's two halves: peek at any exited child without
// reaping it (WNOWAIT), then, under the supervisor's spawn lock, reap exactly that pid with its rusage.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SBK_EXPORT __attribute__((visibility("default")))

// ---- raw system calls (no errno: the child shares the parent's thread-local storage) ------------------

#if defined(__x86_64__)
static inline long raw_syscall(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static inline long raw_syscall(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
}
#else
#error "sandboxkit-agent's spawn helper supports x86_64 and aarch64"
#endif

#define RAW0(n) raw_syscall((n), 0, 0, 0, 0, 0, 0)
#define RAW1(n, a) raw_syscall((n), (long)(a), 0, 0, 0, 0, 0)
#define RAW2(n, a, b) raw_syscall((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define RAW3(n, a, b, c) raw_syscall((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define RAW4(n, a, b, c, d) raw_syscall((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)

// ---- the request (mirrored by SpawnRequest in Native.cs; keep both in sync) ----------------------------

enum
{
    SBK_SPAWN_SETSID = 1,       // new session (and process group)
    SBK_SPAWN_SETCTTY = 2,      // make fd `controlling_tty` (a target fd) the controlling terminal (needs SETSID)
    SBK_SPAWN_OOM_SCORE = 4,    // write `oom_score_adj` to /proc/self/oom_score_adj (failure is ignored)
    SBK_SPAWN_SET_IDS = 8,      // setgroups(0, NULL), setresgid(gid), setresuid(uid)
};

// Steps a pre-exec failure is reported for.
enum
{
    SBK_STEP_NONE = 0,
    SBK_STEP_SIGNALS = 1,
    SBK_STEP_SETSID = 2,
    SBK_STEP_FDS = 3,
    SBK_STEP_CTTY = 4,
    SBK_STEP_IDS = 5,
    SBK_STEP_CHDIR = 6,
    SBK_STEP_EXEC = 7,
};

#define SBK_MAX_FDS 16

struct sbk_fd_map
{
    int32_t source; // a descriptor of the parent (close-on-exec or not: the child's copy is placed)
    int32_t target; // the number it gets in the child
};

struct sbk_spawn_request
{
    const char *path;          // executable
    char *const *argv;         // NULL-terminated
    char *const *envp;         // NULL-terminated
    const char *cwd;           // NULL: inherit
    int32_t uid;               // with SBK_SPAWN_SET_IDS
    int32_t gid;               // with SBK_SPAWN_SET_IDS
    int32_t oom_score_adj;     // with SBK_SPAWN_OOM_SCORE
    int32_t flags;             // SBK_SPAWN_*
    int32_t controlling_tty;   // target fd, with SBK_SPAWN_SETCTTY
    int32_t fd_count;          // entries of fds (at most SBK_MAX_FDS)
    const struct sbk_fd_map *fds;
};

struct sbk_spawn_result
{
    int32_t error; // errno of the failed step, 0 when execve succeeded
    int32_t step;  // SBK_STEP_*
};

struct child_context
{
    const struct sbk_spawn_request *request;
    volatile int32_t error;
    volatile int32_t step;
};

// The kernel's struct sigaction for SIG_DFL is all zeros on both architectures (handler, flags, restorer or
// mask), whatever their layouts: a zeroed block big enough for either works.
static const unsigned long default_action[4] = {0, 0, 0, 0};

static int format_int(char *buffer, int value)
{
    char digits[16];
    int n = 0, length = 0;
    unsigned int magnitude = value < 0 ? (unsigned int)(-(long)value) : (unsigned int)value;
    do
    {
        digits[n++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    if (value < 0)
    {
        buffer[length++] = '-';
    }
    while (n > 0)
    {
        buffer[length++] = digits[--n];
    }
    buffer[length++] = '\n';
    return length;
}

__attribute__((noreturn)) static void child_fail(struct child_context *context, int step, long error)
{
    context->step = step;
    context->error = (int32_t)(error < 0 ? -error : error);
    for (;;)
    {
        RAW1(SYS_exit_group, 127);
    }
}

static int child_main(void *argument)
{
    struct child_context *context = argument;
    const struct sbk_spawn_request *request = context->request;
    long rc;

    // Dispositions: a handler of the parent must never run in the new program, and ignored signals (SIGPIPE,
    // as the .NET runtime sets it) would stay ignored across execve. Signals are still blocked here.
    for (int sig = 1; sig < 65; sig++)
    {
        if (sig == SIGKILL || sig == SIGSTOP)
        {
            continue;
        }
        rc = RAW4(SYS_rt_sigaction, sig, default_action, 0, 8);
        if (rc < 0 && rc != -EINVAL) // EINVAL: a number the kernel does not know
        {
            child_fail(context, SBK_STEP_SIGNALS, rc);
        }
    }

    if (request->flags & SBK_SPAWN_SETSID)
    {
        rc = RAW0(SYS_setsid);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_SETSID, rc);
        }
    }

    // Descriptors, in two passes so that overlapping maps (a source that is another entry's target) are safe:
    // first every source is copied above every number involved (close-on-exec copies), then each copy is
    // placed with dup3, which clears close-on-exec on the target. The copies vanish at execve.
    int copies[SBK_MAX_FDS];
    int above = 0;
    for (int i = 0; i < request->fd_count; i++)
    {
        if (request->fds[i].source >= above)
        {
            above = request->fds[i].source + 1;
        }
        if (request->fds[i].target >= above)
        {
            above = request->fds[i].target + 1;
        }
    }
    for (int i = 0; i < request->fd_count; i++)
    {
        rc = RAW3(SYS_fcntl, request->fds[i].source, F_DUPFD_CLOEXEC, above);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_FDS, rc);
        }
        copies[i] = (int)rc;
    }
    for (int i = 0; i < request->fd_count; i++)
    {
        rc = RAW3(SYS_dup3, copies[i], request->fds[i].target, 0);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_FDS, rc);
        }
    }

    if (request->flags & SBK_SPAWN_SETCTTY)
    {
        rc = RAW3(SYS_ioctl, request->controlling_tty, TIOCSCTTY, 0);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_CTTY, rc);
        }
    }

    // Before the uid changes: an unprivileged process may raise its score but never lower it again. Failure
    // (a runtime without the file) is not fatal: the command simply keeps the supervisor's score.
    if (request->flags & SBK_SPAWN_OOM_SCORE)
    {
        rc = RAW4(SYS_openat, AT_FDCWD, "/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC, 0);
        if (rc >= 0)
        {
            char text[16];
            int length = format_int(text, request->oom_score_adj);
            RAW3(SYS_write, rc, text, length);
            RAW1(SYS_close, rc);
        }
    }

    if (request->flags & SBK_SPAWN_SET_IDS)
    {
        rc = RAW2(SYS_setgroups, 0, 0);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_IDS, rc);
        }
        rc = RAW3(SYS_setresgid, request->gid, request->gid, request->gid);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_IDS, rc);
        }
        rc = RAW3(SYS_setresuid, request->uid, request->uid, request->uid);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_IDS, rc);
        }
    }

    // After the uid change, so the directory is entered with the user's permissions.
    if (request->cwd != NULL)
    {
        rc = RAW1(SYS_chdir, request->cwd);
        if (rc < 0)
        {
            child_fail(context, SBK_STEP_CHDIR, rc);
        }
    }

    uint64_t empty_mask = 0;
    RAW4(SYS_rt_sigprocmask, SIG_SETMASK, &empty_mask, 0, 8);
    rc = RAW3(SYS_execve, request->path, request->argv, request->envp);
    // Still here: execve failed. Block signals again before reporting (nothing may run on this stack).
    uint64_t full_mask = ~(uint64_t)0;
    RAW4(SYS_rt_sigprocmask, SIG_SETMASK, &full_mask, 0, 8);
    child_fail(context, SBK_STEP_EXEC, rc);
}

// One stack for every child: spawns are serialized by this mutex (the supervisor spawns under its own lock
// anyway), and the vfork semantics mean the stack is free again when clone returns.
#define CHILD_STACK_SIZE (64 * 1024)
static pthread_mutex_t stack_mutex = PTHREAD_MUTEX_INITIALIZER;
static void *child_stack;

// Returns the child's pid (> 0), or -errno when clone itself failed. When the child failed before execve,
// result->error and result->step say why and the pid returned is that of an exited child: it is left for
// the reaper (it must not be waited for here: the reaper owns every wait).
SBK_EXPORT int sbk_spawn(const struct sbk_spawn_request *request, struct sbk_spawn_result *result)
{
    result->error = 0;
    result->step = SBK_STEP_NONE;
    if (request->fd_count < 0 || request->fd_count > SBK_MAX_FDS)
    {
        return -EINVAL;
    }
    if ((request->flags & SBK_SPAWN_SETCTTY) && !(request->flags & SBK_SPAWN_SETSID))
    {
        return -EINVAL;
    }

    pthread_mutex_lock(&stack_mutex);
    if (child_stack == NULL)
    {
        void *stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED)
        {
            int error = errno;
            pthread_mutex_unlock(&stack_mutex);
            return -error;
        }
        child_stack = stack;
    }

    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);

    struct child_context context = {.request = request, .error = 0, .step = SBK_STEP_NONE};
    int pid = clone(child_main, (char *)child_stack + CHILD_STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, &context);
    int clone_error = errno;

    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    pthread_mutex_unlock(&stack_mutex);

    if (pid < 0)
    {
        return -clone_error;
    }
    result->error = context.error;
    result->step = context.step;
    return pid;
}

// Blocks until some child has exited and returns its pid without reaping it; -errno on failure (-ECHILD:
// no children at all). EINTR is retried.
SBK_EXPORT int sbk_wait_peek(void)
{
    for (;;)
    {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOWAIT | __WALL) == 0)
        {
            if (info.si_pid != 0)
            {
                return info.si_pid;
            }
            continue;
        }
        if (errno != EINTR)
        {
            return -errno;
        }
    }
}

// True (1) when the unreaped child `pid` has already exited (is a zombie), 0 when it runs, -errno otherwise.
SBK_EXPORT int sbk_has_exited(int pid)
{
    for (;;)
    {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT | WNOHANG | __WALL) == 0)
        {
            return info.si_pid == pid ? 1 : 0;
        }
        if (errno != EINTR)
        {
            return -errno;
        }
    }
}

struct sbk_exit
{
    int32_t exited;      // 1: exit(code); 0: killed by signal `code`
    int32_t code;        // exit status or signal number
    int32_t core_dumped; // with a signal
    int32_t reserved;
    int64_t user_usec;
    int64_t system_usec;
    int64_t max_rss_kib;
};

// Reaps exactly `pid` (which sbk_wait_peek reported) and returns 0, or -errno.
SBK_EXPORT int sbk_reap(int pid, struct sbk_exit *out)
{
    int status = 0;
    struct rusage usage;
    memset(&usage, 0, sizeof usage);
    pid_t r;
    do
    {
        r = wait4(pid, &status, __WALL, &usage);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
    {
        return -errno;
    }
    memset(out, 0, sizeof *out);
    if (WIFSIGNALED(status))
    {
        out->exited = 0;
        out->code = WTERMSIG(status);
        out->core_dumped = WCOREDUMP(status) ? 1 : 0;
    }
    else
    {
        out->exited = 1;
        out->code = WEXITSTATUS(status);
    }
    out->user_usec = (int64_t)usage.ru_utime.tv_sec * 1000000 + usage.ru_utime.tv_usec;
    out->system_usec = (int64_t)usage.ru_stime.tv_sec * 1000000 + usage.ru_stime.tv_usec;
    out->max_rss_kib = usage.ru_maxrss;
    return 0;
}
