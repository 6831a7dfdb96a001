/* tiergate's compiled front (issue 20): the program engines call, compiled by `tiergate install`
 * (engines/front.py) with its constants in a generated header: TG_LINK (lib/current), TG_PREFIX
 * (the warm helper's socket, less the release digest), TG_PYTHON, TG_LAUNCHER (the Python launcher),
 * TG_UID (who the helper serves: root) and TG_RUN (/run: may this start a helper?).
 *
 * With TG_REAL it is the runtime shim itself (BIN/tiergate-runtime, engines/shim.py), doing the
 * /bin/sh front's job first (shim.sh_front, the reference): a pass-through subcommand execs the real
 * runtime TG_REAL (or $TG_RUNTIME_ENV) at once; TG_ENFORCED ones (and a real runtime named without
 * a slash, which Python resolves) go on to the start below. TG_VALUE_FLAGS are the global flags that
 * take a value; both tables are generated from the Python ones (engines/front.py shim_header).
 *
 * It hands the start to the warm helper (engines/warm.py): connect to TG_PREFIX + basename of
 * lib/current's target, send the request (u32 LE length, then NUL-terminated fields: umask, cwd,
 * argc, argv with argv[0] = TG_LAUNCHER, the environment) with fds 0, 1, 2 (SCM_RIGHTS), read "A",
 * then frames (tag, u32 LE length, body): E (exit with this status), X (exec this) or R (run this
 * as our child and reply its i32 status, or -(1<<20)-errno). Anything else after "A": one line, exit 1.
 * Before "A" nothing of the start was consumed: any failure, a decline or no root runs the Python
 * launcher (the start in its own process), with SPAWN when no helper listens and /run is ours.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPAWN "TIERGATE_WARM_SPAWN="  /* =1: the launcher starts a helper first (engines/warm.py) */
#define MAX_BODY (1u << 20)

extern char **environ;
const char tiergate_marker[] = TG_MARKER ": compiled front of " TG_LAUNCHER;  /* uninstall, doctor: engines/front.py */

/* Run the Python launcher with our arguments; the environment without SPAWN, or with it first. */
static void launch(int argc, char **argv, int spawn) {
    size_t n = 0, k = 0;
    while (environ && environ[n]) n++;
    char **args = calloc((size_t)argc + 3, sizeof *args), **env = calloc(n + 2, sizeof *env);
    if (args && env) {
        args[0] = TG_PYTHON, args[1] = "-IS", args[2] = TG_LAUNCHER;
        for (int i = 1; i < argc; i++) args[i + 2] = argv[i];
        if (spawn) env[k++] = SPAWN "1";
        for (size_t i = 0; i < n; i++)
            if (strncmp(environ[i], SPAWN, sizeof SPAWN - 1)) env[k++] = environ[i];
        execve(TG_PYTHON, args, env);
    }
    dprintf(2, "tiergate: error: cannot run %s: %s\n", TG_PYTHON, strerror(errno));
    _exit(1);
}

#ifdef TG_REAL
static const char *const value_flags[] = {TG_VALUE_FLAGS, NULL}, *const enforced[] = {TG_ENFORCED, NULL};

static int listed(const char *const *names, const char *s) {
    for (; *names; names++)
        if (!strcmp(*names, s)) return 1;
    return 0;
}

/* The sh front's scan: value flags skip their value, `--` ends the flags, other -x flags are
 * skipped, the first other word decides. Returns only for the start (enforced, or a relative real). */
static void shim_front(int argc, char **argv) {
    const char *loop = getenv(TG_LOOP_ENV), *real = getenv(TG_RUNTIME_ENV);
    if (loop && *loop) {
        dprintf(2, "tiergate: error: tiergate-runtime was started by itself through the real runtime (a loop)\n");
        _exit(1);
    }
    if (!real || !*real) real = TG_REAL;
    if (*real != '/') return;
    for (int i = 1, end = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!end && *a == '-') {
            if (listed(value_flags, a + 1) || (a[1] == '-' && listed(value_flags, a + 2))) {
                i++;
                continue;
            }
            if (!strcmp(a, "--")) {
                end = 1;
                continue;
            }
            if (a[1]) continue;
        }
        if (listed(enforced, a)) return;
        break;
    }
    char **args = calloc((size_t)(argc > 0 ? argc : 1) + 1, sizeof *args);
    if (!args || setenv(TG_LOOP_ENV, "1", 1)) {
        dprintf(2, "tiergate: error: %s\n", strerror(errno));
        _exit(1);
    }
    args[0] = (char *)real;  /* as sh's `exec "$real" "$@"` */
    for (int i = 1; i < argc; i++) args[i] = argv[i];
    execv(real, args);
    int e = errno;
    dprintf(2, "tiergate: error: cannot run the real runtime %s: %s\n", real, strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}
#endif

static void refuse(void) {
    dprintf(2, "tiergate: error: the warm helper stopped during this start: refused\n");
    _exit(1);
}

/* n bytes from s; the first fd passed along with them goes to *fd. -1 on EOF or error. */
static int readn(int s, void *buf, size_t n, int *fd) {
    char *p = buf;
    while (n) {
        union { struct cmsghdr h; char b[CMSG_SPACE(4 * sizeof(int))]; } c;
        struct iovec io = {p, n};
        struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = c.b, .msg_controllen = sizeof c.b};
        ssize_t r = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h))
            if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS)
                for (size_t i = 0; i < (h->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                    int f;
                    memcpy(&f, CMSG_DATA(h) + i * sizeof(int), sizeof f);
                    if (*fd < 0) *fd = f; else close(f);
                }
        p += r, n -= (size_t)r;
    }
    return 0;
}

static uint32_t le32(const unsigned char *b) {
    return b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Append s and its NUL at *p (NULL: only count). */
static size_t put(char **p, const char *s) {
    size_t n = strlen(s) + 1;
    if (*p) memcpy(*p, s, n), *p += n;
    return n;
}

static size_t request(char *out, mode_t mask, const char *cwd, int argc, char **argv) {
    char num[16], *p = out;
    size_t n = 0;
    snprintf(num, sizeof num, "%u", (unsigned)mask), n += put(&p, num);
    n += put(&p, cwd);
    snprintf(num, sizeof num, "%d", argc), n += put(&p, num);
    n += put(&p, TG_LAUNCHER);
    for (int i = 1; i < argc; i++) n += put(&p, argv[i]);
    for (char **e = environ; e && *e; e++) n += put(&p, *e);
    return n;
}

/* An X or R frame's body: path, argc, argv..., environment...; exec it or run it and reply. */
static void hand_back(int s, char tag, char *body, uint32_t n, int fd) {
    size_t count = 0, i = 0;
    if (!n || body[n - 1]) refuse();
    for (uint32_t j = 0; j < n; j++) count += !body[j];
    char **f = calloc(count + 1, sizeof *f);
    if (!f) refuse();
    for (char *p = body; p < body + n; p += strlen(p) + 1) f[i++] = p;
    char *end;
    long argc = count >= 2 ? strtol(f[1], &end, 10) : -1;
    if (count < 2 || !*f[1] || *end || argc < 1 || (size_t)argc > count - 2) refuse();
    char **argv = calloc((size_t)argc + 1, sizeof *argv), **env = f + 2 + argc;
    if (!argv) refuse();
    memcpy(argv, f + 2, (size_t)argc * sizeof *argv);
    if (fd >= 0 && (dup2(fd, 0) < 0 || close(fd) < 0)) refuse();
    if (tag == 'X') {
        execve(f[0], argv, env);
        dprintf(2, "tiergate: error: cannot run the real runtime: %s\n", strerror(errno));
        _exit(1);
    }
    pid_t pid;
    int32_t status, e = posix_spawn(&pid, f[0], NULL, NULL, argv, env);
    if (e) status = -(1 << 20) - e;
    else {
        int w;
        while (waitpid(pid, &w, 0) < 0)
            if (errno != EINTR) refuse();
        status = WIFEXITED(w) ? WEXITSTATUS(w) : -WTERMSIG(w);
    }
    unsigned char reply[4] = {status & 0xff, (status >> 8) & 0xff, (status >> 16) & 0xff, (uint32_t)status >> 24};
    if (send(s, reply, 4, MSG_NOSIGNAL) != 4) refuse();
    free(argv), free(f);
}

int main(int argc, char **argv) {
    char rel[PATH_MAX], cwd[PATH_MAX];
#ifdef TG_REAL
    shim_front(argc, argv);
#endif
    if (geteuid() != TG_UID) launch(argc, argv, 0);
    ssize_t r = readlink(TG_LINK, rel, sizeof rel - 1);
    if (r <= 0) launch(argc, argv, 0);
    rel[r] = 0;
    const char *digest = strrchr(rel, '/') ? strrchr(rel, '/') + 1 : rel;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if ((size_t)snprintf(a.sun_path, sizeof a.sun_path, "%s%s", TG_PREFIX, digest) >= sizeof a.sun_path)
        launch(argc, argv, 0);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) launch(argc, argv, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)  /* none, or a dead one's: start one if /run is ours */
        launch(argc, argv, (errno == ENOENT || errno == ECONNREFUSED) && access(TG_RUN, W_OK) == 0);
    mode_t mask = umask(077);
    umask(mask);
    if (!getcwd(cwd, sizeof cwd)) launch(argc, argv, 0);
    size_t n = request(NULL, mask, cwd, argc, argv);
    char *req = n <= MAX_BODY ? malloc(4 + n) : NULL;
    if (!req) launch(argc, argv, 0);
    req[0] = n & 0xff, req[1] = (n >> 8) & 0xff, req[2] = (n >> 16) & 0xff, req[3] = n >> 24;
    request(req + 4, mask, cwd, argc, argv);
    union { struct cmsghdr h; char b[CMSG_SPACE(3 * sizeof(int))]; } c = {0};
    int fds[3] = {0, 1, 2};
    struct iovec io = {req, 4 + n};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = c.b, .msg_controllen = sizeof c.b};
    c.h.cmsg_level = SOL_SOCKET, c.h.cmsg_type = SCM_RIGHTS, c.h.cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(&c.h), fds, sizeof fds);
    ssize_t sent = sendmsg(s, &m, MSG_NOSIGNAL);
    while (sent > 0 && (size_t)sent < 4 + n) {  /* errors: the reply decides (a quick child may be done) */
        ssize_t more = send(s, req + sent, 4 + n - (size_t)sent, MSG_NOSIGNAL);
        if (more <= 0) break;
        sent += more;
    }
    free(req);
    char first = 0;
    int fd = -1;
    if (readn(s, &first, 1, &fd) || first != 'A') launch(argc, argv, 0);  /* declined: nothing consumed */
    for (;;) {
        unsigned char head[5];
        fd = -1;
        if (readn(s, head, 5, &fd) || le32(head + 1) > MAX_BODY) refuse();
        uint32_t len = le32(head + 1);
        char *body = malloc(len + 1);
        if (!body || readn(s, body, len, &fd)) refuse();
        if (head[0] == 'E' && len == 1) _exit((unsigned char)body[0]);
        if (head[0] != 'X' && head[0] != 'R') refuse();
        hand_back(s, (char)head[0], body, len, fd);
        free(body);
    }
}
