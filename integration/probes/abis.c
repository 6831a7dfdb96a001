/* abis: one raw syscall per line on each x86 ABI, for the seccomp shape test
 * (integration/test_seccomp_abis.py). Each call runs in a forked child, so a filter
 * that kills the caller only ends that line: "ABI NAME = RESULT" where RESULT is the
 * return value (-errno on failure) or "signal N".
 * Build: gcc -static -O1 -o abis integration/probes/abis.c (x86_64 only).
 */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#define X32_BIT 0x40000000L

static long x86_64(long nr, long a0, long a1) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a0), "S"(a1) : "rcx", "r11", "memory");
    return r;
}

static long i386(long nr, long a0, long a1) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a0), "c"(a1) : "memory");
    return r;
}

static void line(const char *abi, const char *name, int which, long nr, long a0, long a1) {
    int fd[2];
    long r = 0;
    int status;
    if (pipe(fd) != 0) return;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        r = which == 1 ? i386(nr, a0, a1) : x86_64(nr, a0, a1);
        if (write(fd[1], &r, sizeof r) != sizeof r) _exit(2);
        _exit(0);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], &r, sizeof r);
    close(fd[0]);
    waitpid(pid, &status, 0);
    if (got == sizeof r) printf("%s %s = %ld\n", abi, name, r);
    else if (WIFSIGNALED(status)) printf("%s %s = signal %d\n", abi, name, WTERMSIG(status));
    else printf("%s %s = exit %d\n", abi, name, WEXITSTATUS(status));
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    /* name, x86_64 number, i386 number, arg0, arg1 */
    static const struct { const char *name; long x, i, a0, a1; } calls[] = {
        {"getppid", 110, 64, 0, 0},
        {"umount2", 166, 52, 0, 0},              /* the tiers: EPERM */
        {"nfsservctl", 180, 169, 0, 0},          /* named by no tier: the default, ENOSYS */
        {"io_uring_setup", 425, 425, 0, 0},      /* ENOSYS by the default (a rule repeating it left out) */
        {"personality-query", 135, 136, 0xffffffffL, 0},  /* allowed by argument */
        {"personality-1", 135, 136, 1, 0},       /* not allowed by argument */
        {"socket-vsock", 41, 359, 40, 1},        /* baseline: arg0 != AF_VSOCK */
        {"socket-unix", 41, 359, 1, 1},
        {"unshare-user", 272, 310, 0x10000000L, 0},
        {"nr-1000", 1000, 1000, 0, 0},
    };
    for (unsigned k = 0; k < sizeof calls / sizeof *calls; k++) {
        line("x86_64", calls[k].name, 0, calls[k].x, calls[k].a0, calls[k].a1);
        line("i386", calls[k].name, 1, calls[k].i, calls[k].a0, calls[k].a1);
        line("x32", calls[k].name, 0, calls[k].x | X32_BIT, calls[k].a0, calls[k].a1);
    }
    return 0;
}
