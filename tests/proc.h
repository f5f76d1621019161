/* tests/proc.h: the test program's child processes, each with its stdout
 * and stderr in files of the scratch folder (tests/scratch.h):
 *
 *   int main(void) { if (!proc_setup("build/asgd", "asgd_net", 600)) return 1; ...
 *                    the scratch folder is made and becomes the cwd; `bin`
 *                    is then the program's absolute path; the whole program
 *                    is killed after 600 s (a hard bound: a hung child or
 *                    peer fails the run instead of stalling it)
 *   have_bin()                       1 if bin is there, else says so
 *   if (!proc_begin(addr, sizeof addr)) return;   the start of a test: a
 *                                    failed check without bin, else addr
 *                                    is 127.0.0.1:<a free port>
 *   pid = spawn("w1", args)          runs args[0] (bin) with args, its output
 *                                    in w1.out and w1.err of the folder
 *   reap(pid, ms)                    its exit status (128 + the signal when
 *                                    killed), or -1 after ms (it is then
 *                                    killed and reaped)
 *   wait_for("w1.err", "joined", ms) 1 once the file holds the text, 0 after ms
 *   slurp("w1.err"), file_has(name, text), show(name), read_floats(name, &n)
 *   check_same_as_file(what, a, na, "g.f32")   check_same_floats of a and the
 *                                    file's floats; frees a
 *   check_same_files(what, "a.f32", "b.f32")   the same for two files
 *   nth("w", 2)                      "w2": a worker's name or id in spawn's args
 *   reap_run(srv, ms, w, n, w_ms)    1 when the server and its n workers all
 *                                    exited 0
 *   free_port()                      a free TCP port on 127.0.0.1 (0 if none)
 *
 * Include after distgan.h with DISTGAN_IMPLEMENTATION (dg__now,
 * dg__drive_sleep_ms, the socket headers) and harness.h (CHECK). */
#ifndef DG_TEST_PROC_H
#define DG_TEST_PROC_H
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include "scratch.h"

static const char *bin; /* the program spawn runs: set by proc_setup */

static int proc_setup(const char *program, const char *name, unsigned seconds)
{
    static char abs_bin[4200];
    char cwd[4096];
    alarm(seconds);
    signal(SIGPIPE, SIG_IGN);
    bin = program;
    if (!scratch_create(name)) return 0;
    /* the program's path is relative to the repository, and the tests run
       in the scratch folder: resolve it first */
    if (getcwd(cwd, sizeof cwd)) {
        snprintf(abs_bin, sizeof abs_bin, "%s/%s", cwd, program);
        bin = abs_bin;
    }
    return chdir(tmpdir) == 0;
}

static int have_bin(void)
{
    if (access(bin, X_OK) == 0) return 1;
    printf("  %s is missing: build it first (make %s)\n", bin, bin);
    return 0;
}

static uint16_t free_port(void);

/* The start of a test that runs bin: 0 (a failed check) when bin is
   missing, else addr (n bytes) is 127.0.0.1:<a free port>. */
static int proc_begin(char *addr, size_t n)
{
    if (!have_bin()) {
        CHECK(0);
        return 0;
    }
    snprintf(addr, n, "127.0.0.1:%u", (unsigned)free_port());
    return 1;
}

static uint16_t free_port(void)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    uint16_t port = 0;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static pid_t spawn(const char *name, char *const *args)
{
    char out[512], err[512];
    pid_t pid;
    snprintf(out, sizeof out, "%s/%s.out", tmpdir, name);
    snprintf(err, sizeof err, "%s/%s.err", tmpdir, name);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        FILE *o = freopen(out, "w", stdout), *e = freopen(err, "w", stderr);
        (void)o;
        (void)e;
        execv(args[0], args);
        _exit(127);
    }
    return pid;
}

static int reap(pid_t pid, int ms)
{
    double end = dg__now() + ms / 1e3;
    int st;
    while (dg__now() < end) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        dg__drive_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* "<prefix><i>" in one of eight static buffers used in turn: a worker's
   name or id in the arguments of one spawn */
static inline char *nth(const char *prefix, int i)
{
    static char buf[8][32];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s%d", prefix, i);
    return buf[k];
}

/* 1 when the server srv exits 0 within srv_ms, then each of its n workers
   w[] within w_ms (every one is reaped either way) */
static inline int reap_run(pid_t srv, int srv_ms, const pid_t *w, int n, int w_ms)
{
    int i, ok = reap(srv, srv_ms) == 0;
    for (i = 0; i < n; i++)
        if (reap(w[i], w_ms) != 0) ok = 0;
    return ok;
}

/* the file's text (its first 256 KB; "" when it cannot be read), in one
   static buffer that the next call overwrites */
static char *slurp(const char *name)
{
    static char buf[1 << 18];
    size_t n;
    FILE *f;
    buf[0] = 0;
    if (!(f = fopen(tpath(name), "r"))) return buf;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

static int file_has(const char *name, const char *needle) { return strstr(slurp(name), needle) != NULL; }

static int wait_for(const char *name, const char *needle, int ms)
{
    double end = dg__now() + ms / 1e3;
    while (dg__now() < end) {
        if (file_has(name, needle)) return 1;
        dg__drive_sleep_ms(20);
    }
    return 0;
}

static void show(const char *name)
{
    char line[512];
    FILE *f;
    if (!(f = fopen(tpath(name), "r"))) return;
    printf("  --- %s\n", name);
    while (fgets(line, sizeof line, f)) printf("  %s", line);
    fclose(f);
}

/* the file's floats (malloc'd, *n of them), NULL (*n = 0) if it cannot be read */
static float *read_floats(const char *name, size_t *n)
{
    FILE *f;
    long len;
    float *x;
    *n = 0;
    if (!(f = fopen(tpath(name), "rb"))) return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    x = (float *)malloc((size_t)len + 4);
    if (x && fread(x, 1, (size_t)len, f) == (size_t)len) *n = (size_t)len / 4;
    fclose(f);
    return x;
}

/* check_same_floats (harness.h) of a (na floats, malloc'd: freed here) and
   the floats of the file */
static inline void check_same_as_file(const char *what, float *a, size_t na, const char *name)
{
    size_t nb;
    float *b = read_floats(name, &nb);
    check_same_floats(what, a, na, b, nb);
    free(a);
    free(b);
}

static inline void check_same_files(const char *what, const char *name_a, const char *name_b)
{
    size_t na;
    float *a = read_floats(name_a, &na);
    check_same_as_file(what, a, na, name_b);
}
#endif
