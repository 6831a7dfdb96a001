/* tiergate escape probe: tries container-escape and abuse techniques, one line each.
 *
 *   escape [all|NAME...]       ->  "NAME=OK detail" | "NAME=<ERRNO> detail" | "NAME=NA why"
 *
 * OK means the technique worked (or got past every permission check, e.g. a module
 * load that reached the module parser). Each technique runs in a forked child when
 * fork() works (so one probe cannot change what the next sees); where fork is
 * denied (node-worker) it runs in-process, state-changing probes last.
 * Nothing here changes the host: writes go to files inside the container, the
 * release_agent/core_pattern probes only open for writing (never write), the
 * block-device probe reads 512 bytes, the firewall probe acts on the container's
 * own network namespace. Build: gcc -static -O1 -o escape escape.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/perf_event.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char detail[256];
#define FAIL() do { return -errno; } while (0)
#define CHECK(x) do { if ((x) < 0) FAIL(); } while (0)

static int p_unshare_user(void) { CHECK(unshare(CLONE_NEWUSER)); return 0; }
static int p_unshare_mnt(void) { CHECK(unshare(CLONE_NEWNS)); return 0; }
static int p_mount_tmpfs(void) {
    mkdir("/tmp/.tg-m1", 0700);
    CHECK(mount("none", "/tmp/.tg-m1", "tmpfs", 0, "size=64k")); umount("/tmp/.tg-m1"); return 0;
}
static int p_mount_bind(void) {
    mkdir("/tmp/.tg-m2", 0700);
    CHECK(mount("/", "/tmp/.tg-m2", NULL, MS_BIND, NULL)); umount("/tmp/.tg-m2"); return 0;
}
static int p_proc_mount(void) {
    mkdir("/tmp/.tg-m3", 0700);
    CHECK(mount("proc", "/tmp/.tg-m3", "proc", 0, NULL));
    int ok = access("/tmp/.tg-m3/sys/kernel/core_pattern", F_OK) == 0;
    snprintf(detail, sizeof detail, "fresh procfs mounted%s", ok ? ", unmasked /proc/sys visible" : "");
    umount("/tmp/.tg-m3"); return 0;
}
static int p_keyctl(void) {
    long k = syscall(__NR_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL);
    CHECK(k); snprintf(detail, sizeof detail, "new session keyring %ld", k); return 0;
}
static int p_bpf(void) {
    union bpf_attr a; memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_ARRAY; a.key_size = 4; a.value_size = 4; a.max_entries = 1;
    int fd = syscall(__NR_bpf, BPF_MAP_CREATE, &a, sizeof a);
    CHECK(fd); close(fd); snprintf(detail, sizeof detail, "BPF_MAP_CREATE fd"); return 0;
}
static int p_perf(void) {
    struct perf_event_attr a; memset(&a, 0, sizeof a);
    a.size = sizeof a; a.type = PERF_TYPE_SOFTWARE; a.config = PERF_COUNT_SW_CPU_CLOCK;
    /* cpu-wide, kernel included: needs CAP_PERFMON at perf_event_paranoid >= 0 */
    int fd = syscall(__NR_perf_event_open, &a, -1, 0, -1, 0);
    CHECK(fd); close(fd); snprintf(detail, sizeof detail, "cpu-wide counter on cpu 0"); return 0;
}
static int p_ptrace(void) {
    pid_t c = fork();
    if (c < 0) FAIL();
    if (c == 0) { for (int i = 0; i < 50; i++) usleep(100000); _exit(0); }
    long r = ptrace(PTRACE_ATTACH, c, NULL, NULL);
    int e = errno;
    if (r == 0) { waitpid(c, NULL, 0); ptrace(PTRACE_DETACH, c, NULL, NULL); }
    kill(c, SIGKILL); waitpid(c, NULL, 0);
    if (r < 0) { errno = e; FAIL(); }
    snprintf(detail, sizeof detail, "attached to pid %d", c); return 0;
}
static int p_open_by_handle(void) {
    struct { struct file_handle h; unsigned char b[128]; } fh;
    int mnt;
    fh.h.handle_bytes = 128;
    CHECK(syscall(__NR_name_to_handle_at, AT_FDCWD, "/etc/hosts", &fh.h, &mnt, 0));
    int dirfd = open("/etc/hosts", O_RDONLY);
    CHECK(dirfd);
    if (fh.h.handle_type == 1 && fh.h.handle_bytes >= 8) {  /* ext4 FILEID_INO32_GEN: inode 2 = fs root */
        unsigned int ino2[2] = {2, 0}; memcpy(fh.h.f_handle, ino2, 8);
    }
    int fd = syscall(__NR_open_by_handle_at, dirfd, &fh.h, O_RDONLY);
    CHECK(fd);
    snprintf(detail, sizeof detail, "opened a host inode by handle (type %d)", fh.h.handle_type);
    close(fd); return 0;
}
static int p_module(void) {
    int fd = open("/proc/self/exe", O_RDONLY);  /* not a module: a permitted call fails in the parser */
    long r = syscall(__NR_finit_module, fd, "", 0);
    int e = errno; close(fd);
    if (r == 0) return 0;
    if (e == ENOEXEC || e == EINVAL || e == EBADMSG || e == EKEYREJECTED) {
        snprintf(detail, sizeof detail, "reached the module loader (%s)", strerrorname_np(e)); return 0;
    }
    errno = e; FAIL();
}
static int p_raw(void) { int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP); CHECK(s); close(s); return 0; }
static int p_packet(void) { int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)); CHECK(s); close(s); return 0; }
static int p_sysrq(void) {
    if (access("/proc/sysrq-trigger", F_OK) < 0 && errno == ENOENT) return 1000;
    int fd = open("/proc/sysrq-trigger", O_WRONLY); CHECK(fd); close(fd); return 0;  /* never written */
}
static int p_release_agent(void) {
    /* mount a cgroup v1 hierarchy and open its release_agent for writing (never written) */
    char ctl[64] = ""; FILE *f = fopen("/proc/self/cgroup", "r"); char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
        if (a && b && b > a + 1) { *b = 0; snprintf(ctl, sizeof ctl, "%s", a + 1); if (!strchr(ctl, '=')) break; ctl[0] = 0; }
    }
    if (f) fclose(f);
    if (!ctl[0]) { snprintf(detail, sizeof detail, "no cgroup v1 controller"); return 1000; }
    mkdir("/tmp/.tg-cg", 0700);
    CHECK(mount("cgroup", "/tmp/.tg-cg", "cgroup", 0, ctl));
    int fd = open("/tmp/.tg-cg/release_agent", O_WRONLY);
    int e = errno; umount("/tmp/.tg-cg");
    if (fd < 0) { errno = e; snprintf(detail, sizeof detail, "mounted %s, release_agent not writable", ctl); FAIL(); }
    close(fd); snprintf(detail, sizeof detail, "mounted %s and opened release_agent for writing", ctl); return 0;
}
static int p_engine_socket(void) {
    const char *paths[] = {"/run/docker.sock", "/var/run/docker.sock", "/run/podman/podman.sock", NULL};
    for (int i = 0; paths[i]; i++) {
        if (access(paths[i], F_OK) < 0) continue;
        int s = socket(AF_UNIX, SOCK_STREAM, 0); CHECK(s);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", paths[i]);
        if (connect(s, (void *)&a, sizeof a) < 0) { int e = errno; close(s); errno = e; FAIL(); }
        char buf[64] = {0}; write(s, "GET /_ping HTTP/1.0\r\n\r\n", 23);
        int n = read(s, buf, sizeof buf - 1); close(s);
        snprintf(detail, sizeof detail, "%s answered %d bytes", paths[i], n); return 0;
    }
    errno = ENOENT; FAIL();
}
static int p_metadata(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0); CHECK(s);
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "169.254.169.254", &a.sin_addr);
    if (connect(s, (void *)&a, sizeof a) < 0) { int e = errno; close(s); errno = e; FAIL(); }
    close(s); snprintf(detail, sizeof detail, "connected to 169.254.169.254:80"); return 0;
}
static int p_lo_down(void) {
    int s = socket(AF_UNIX, SOCK_DGRAM, 0); CHECK(s);
    struct ifreq r; memset(&r, 0, sizeof r); strcpy(r.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &r) < 0) { int e = errno; close(s); errno = e; FAIL(); }
    r.ifr_flags &= ~IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &r) < 0) { int e = errno; close(s); errno = e; FAIL(); }
    r.ifr_flags |= IFF_UP; ioctl(s, SIOCSIFFLAGS, &r); close(s); return 0;
}
static int p_nft_flush(void) {
    /* one nfnetlink batch: NFT_MSG_DELTABLE, family inet, no name = flush every inet table */
    int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER); CHECK(s);
    char buf[256]; memset(buf, 0, sizeof buf); int off = 0;
    struct nlmsghdr *h; struct nfgenmsg *g;
    int types[3] = {NFNL_MSG_BATCH_BEGIN, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE, NFNL_MSG_BATCH_END};
    for (int i = 0; i < 3; i++) {
        h = (void *)(buf + off); h->nlmsg_len = NLMSG_LENGTH(sizeof *g); h->nlmsg_type = types[i];
        h->nlmsg_flags = NLM_F_REQUEST | (i == 1 ? NLM_F_ACK : 0); h->nlmsg_seq = i + 1;
        g = NLMSG_DATA(h); g->nfgen_family = i == 1 ? NFPROTO_INET : AF_UNSPEC; g->version = NFNETLINK_V0;
        g->res_id = i == 1 ? 0 : htons(NFNL_SUBSYS_NFTABLES);
        off += NLMSG_ALIGN(h->nlmsg_len);
    }
    struct sockaddr_nl k = {.nl_family = AF_NETLINK};
    if (sendto(s, buf, off, 0, (void *)&k, sizeof k) < 0) { int e = errno; close(s); errno = e; FAIL(); }
    struct timeval tv = {2, 0}; setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int n = recv(s, buf, sizeof buf, 0); close(s);
    if (n < 0) FAIL();
    h = (void *)buf;
    if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(h);
        if (e->error) { errno = -e->error; FAIL(); }
    }
    snprintf(detail, sizeof detail, "flushed the inet tables of its own netns"); return 0;
}
static int p_mknod(const char *devno) {
    unsigned maj = 254, mi = 0;
    if (devno) sscanf(devno, "%u:%u", &maj, &mi);
    unlink("/dev/.tg-blk");
    CHECK(mknod("/dev/.tg-blk", S_IFBLK | 0600, makedev(maj, mi)));
    int fd = open("/dev/.tg-blk", O_RDONLY);  /* /dev: the rootfs is mounted nodev */
    int e = errno; unlink("/dev/.tg-blk");
    if (fd < 0) { errno = e; snprintf(detail, sizeof detail, "mknod ok, open refused"); FAIL(); }
    char b[512]; int n = read(fd, b, sizeof b); e = errno; close(fd);
    if (n < 0) { errno = e; FAIL(); }
    snprintf(detail, sizeof detail, "read %d bytes of host block device %u:%u", n, maj, mi); return 0;
}
static int p_io_uring(void) {
    struct io_uring_params p; memset(&p, 0, sizeof p);
    int fd = syscall(__NR_io_uring_setup, 4, &p); CHECK(fd); close(fd); return 0;
}
static const char *host_ns_pid(void) {
    /* a host process we may open (pid 1 holds capabilities a container never has: EACCES) */
    const char *p = getenv("TG_HOST_PID"); static char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/mnt", p && *p ? p : "1");
    if (access(path, F_OK) < 0) snprintf(path, sizeof path, "/proc/1/ns/mnt");
    return path;
}
static int p_setns(void) {
    const char *path = host_ns_pid();
    int fd = open(path, O_RDONLY); CHECK(fd);
    if (setns(fd, CLONE_NEWNS) < 0) { int e = errno; close(fd); errno = e; FAIL(); }
    close(fd);
    const char *marker = getenv("TG_HOST_MARKER");
    int host = marker && access(marker, F_OK) == 0;
    snprintf(detail, sizeof detail, "setns(%s)%s", path, host ? ": the host's filesystem is visible" : "");
    return 0;
}
static int p_host_pid(void) {
    /* the host's pid namespace has kthreadd as pid 2; a container's never does */
    char buf[64] = {0}; int fd = open("/proc/2/comm", O_RDONLY);
    if (fd >= 0) { read(fd, buf, sizeof buf - 1); close(fd); buf[strcspn(buf, "\n")] = 0; }
    if (strcmp(buf, "kthreadd") != 0) {
        errno = ESRCH; snprintf(detail, sizeof detail, "own pid namespace (no kthreadd)"); FAIL();
    }
    snprintf(detail, sizeof detail, "pid 2 is kthreadd: the host's pid namespace"); return 0;
}
static int p_proc_sys(void) {
    int fd = open("/proc/sys/kernel/core_pattern", O_WRONLY); CHECK(fd); close(fd);  /* never written */
    snprintf(detail, sizeof detail, "core_pattern open for writing"); return 0;
}
static int p_chroot(void) {
    mkdir("/tmp/.tg-jail", 0700);
    CHECK(chroot("/tmp/.tg-jail"));
    for (int i = 0; i < 32; i++) chdir("..");
    CHECK(chroot("."));
    int outside = access("/proc/1/root", F_OK) == 0 || access("/bin", F_OK) == 0;
    snprintf(detail, sizeof detail, "left a chroot%s", outside ? " (back at the container root, not the host)" : "");
    return 0;
}
static int p_pivot_root(void) {
    CHECK(unshare(CLONE_NEWNS));
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    mkdir("/tmp/.tg-new", 0700);
    CHECK(mount("/tmp/.tg-new", "/tmp/.tg-new", NULL, MS_BIND, NULL));
    mkdir("/tmp/.tg-new/old", 0700);
    CHECK(syscall(__NR_pivot_root, "/tmp/.tg-new", "/tmp/.tg-new/old"));
    return 0;
}

struct probe { const char *name; int (*fn)(void); };
static const char *g_devno;
static int p_mknod0(void) { return p_mknod(g_devno); }
/* state-changing probes last (they run in-process where fork is denied) */
static struct probe probes[] = {
    {"mount_tmpfs", p_mount_tmpfs}, {"mount_bind", p_mount_bind}, {"proc_mount", p_proc_mount},
    {"keyctl", p_keyctl}, {"bpf", p_bpf}, {"perf_event_open", p_perf}, {"ptrace", p_ptrace},
    {"open_by_handle_at", p_open_by_handle}, {"kernel_module", p_module}, {"raw_socket", p_raw},
    {"packet_socket", p_packet}, {"sysrq_trigger", p_sysrq}, {"cgroup_release_agent", p_release_agent},
    {"engine_socket", p_engine_socket}, {"metadata_169_254_169_254", p_metadata},
    {"lo_down", p_lo_down}, {"nft_flush", p_nft_flush}, {"mknod_block_read", p_mknod0},
    {"io_uring", p_io_uring}, {"host_pid_ns", p_host_pid}, {"proc_sys_write", p_proc_sys},
    {"setns_proc1_mnt", p_setns}, {"chroot", p_chroot}, {"pivot_root", p_pivot_root},
    {"unshare_mnt", p_unshare_mnt}, {"unshare_user", p_unshare_user}, {NULL, NULL},
};

static void run(struct probe *p, int forked) {
    detail[0] = 0; errno = 0;
    int r;
    if (forked) {
        int pfd[2]; if (pipe(pfd) < 0) { printf("%s=NA pipe\n", p->name); return; }
        pid_t c = fork();
        if (c == 0) {
            close(pfd[0]); alarm(5); detail[0] = 0; int rr = p->fn();
            char out[300]; int n = snprintf(out, sizeof out, "%d %s", rr, detail);
            write(pfd[1], out, n); _exit(0);
        }
        close(pfd[1]);
        char in[300] = {0}; int n = 0, k;
        while ((k = read(pfd[0], in + n, sizeof in - 1 - n)) > 0) n += k;
        close(pfd[0]); int st; waitpid(c, &st, 0);
        if (n <= 0) { printf("%s=DIED signal %d\n", p->name, WIFSIGNALED(st) ? WTERMSIG(st) : 0); return; }
        char *sp = strchr(in, ' '); r = atoi(in);
        snprintf(detail, sizeof detail, "%s", sp ? sp + 1 : "");
    } else {
        r = p->fn();
    }
    if (r == 0) printf("%s=OK %s\n", p->name, detail);
    else if (r == 1000) printf("%s=NA %s\n", p->name, detail[0] ? detail : "absent on this kernel");
    else printf("%s=%s %s\n", p->name, strerrorname_np(-r) ? strerrorname_np(-r) : "ERR", detail);
    fflush(stdout);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_devno = getenv("TG_BLOCK_DEV");
    pid_t t = fork();
    int forked = t >= 0;
    if (t == 0) _exit(0);
    if (t > 0) waitpid(t, NULL, 0);
    printf("fork=%s\n", forked ? "OK" : strerrorname_np(errno));
    for (struct probe *p = probes; p->name; p++) {
        int want = argc < 2 || !strcmp(argv[1], "all");
        for (int i = 1; i < argc && !want; i++) want = !strcmp(argv[i], p->name);
        if (want) run(p, forked);
    }
    printf("DONE\n");
    return 0;
}
