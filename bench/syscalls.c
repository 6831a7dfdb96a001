/* syscalls: a syscall-heavy workload for tiergate's seccomp benchmark (bench/bench.py).
 *
 * Build: gcc -O2 -static -o syscalls bench/syscalls.c
 * Usage: syscalls [GETPPID_CALLS [OPEN_CLOSE_PAIRS [BATCHES]]]
 *        (defaults 2000000, 250000, 3)
 *
 * Makes cheap system calls as fast as it can, the way a seccomp filter is
 * hit hardest: getppid() through syscall(2) (glibc caches nothing for it,
 * but syscall() makes sure), then open("/dev/null")/close() pairs. Each
 * kind runs BATCHES times; the fastest batch counts (other jobs on the
 * machine only ever add time). Prints one line, key=value:
 *
 *   getppid_ns=41.2 open_close_ns=312.5 mixed_ns=... syscalls=... seccomp=2 seccomp_filters=1
 *
 * getppid_ns is ns per getppid call, open_close_ns ns per syscall of an
 * open+close pair (pair time / 2), mixed_ns ns per syscall over both kinds
 * together (total fastest time / total calls); seccomp and seccomp_filters
 * are the Seccomp and Seccomp_filters fields of /proc/self/status (read by
 * the program itself: no shell, which a tier denying fork would stop).
 * Exit 1 if a call fails (a filter that denies it would make the numbers
 * meaningless).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double run_getppid(long n)
{
    double t = now_ns();
    for (long i = 0; i < n; i++) {
        if (syscall(SYS_getppid) < 0) {
            perror("getppid");
            exit(1);
        }
    }
    return now_ns() - t;
}

static double run_open_close(long n)
{
    double t = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            perror("open /dev/null");
            exit(1);
        }
        if (close(fd) != 0) {
            perror("close");
            exit(1);
        }
    }
    return now_ns() - t;
}

/* The value of "Key:" in /proc/self/status, or -1. */
static long status_field(const char *key)
{
    char line[256];
    size_t n = strlen(key);
    long value = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            value = strtol(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return value;
}

int main(int argc, char **argv)
{
    long n_ppid = argc > 1 ? atol(argv[1]) : 2000000;
    long n_open = argc > 2 ? atol(argv[2]) : 250000;
    int batches = argc > 3 ? atoi(argv[3]) : 3;
    if (n_ppid < 1 || n_open < 1 || batches < 1) {
        fprintf(stderr, "usage: %s [GETPPID_CALLS [OPEN_CLOSE_PAIRS [BATCHES]]]\n", argv[0]);
        return 2;
    }
    run_getppid(n_ppid / 10 + 1); /* warm up: page in, settle the CPU frequency */
    run_open_close(n_open / 10 + 1);
    double best_ppid = 0, best_open = 0;
    for (int b = 0; b < batches; b++) {
        double a = run_getppid(n_ppid);
        double o = run_open_close(n_open);
        if (b == 0 || a < best_ppid)
            best_ppid = a;
        if (b == 0 || o < best_open)
            best_open = o;
    }
    long calls = n_ppid + 2 * n_open;
    printf("getppid_ns=%.2f open_close_ns=%.2f mixed_ns=%.2f syscalls=%ld batches=%d "
           "seccomp=%ld seccomp_filters=%ld\n",
           best_ppid / n_ppid, best_open / (2.0 * n_open), (best_ppid + best_open) / calls,
           calls, batches, status_field("Seccomp"), status_field("Seccomp_filters"));
    return 0;
}
