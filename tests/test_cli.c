/* tests/test_cli.c: the command lines of the programs in examples/ and
 * tools/.  Every numeric option of every program (and the numbers inside
 * dataset specs and lists) is given malformed and out-of-range values; the
 * program must exit with status 2 and write exactly one line to stderr that
 * names the option and quotes the value, before doing any work.
 *
 * Runs the binaries of build/ from the repository root (the Makefile
 * builds them first); set DG_CLI_BIN to test the binaries of another
 * folder.  A program that does not refuse within 3 s is killed. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "harness.h"

extern char **environ;

static char errfile[256];
static const char *bindir = "build";

/* runs bin with argv (NULL-terminated) for at most the given seconds;
   returns the exit status (-1 when it did not exit normally) and leaves
   its stderr in errfile */
static int run_for(const char *bin, char **argv, int seconds)
{
    posix_spawn_file_actions_t fa;
    char path[512];
    pid_t pid;
    int st, waited;
    snprintf(path, sizeof path, "%s/%s", bindir, bin);
    argv[0] = path;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    st = posix_spawn(&pid, path, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (st != 0) {
        printf("  cannot run %s\n", path);
        return -1;
    }
    /* a refusal is immediate: a program still running after 3 s took
       the bad value and started working */
    for (waited = 0; waitpid(pid, &st, WNOHANG) == 0; waited++) {
        struct timespec ts = {0, 10000000};
        if (waited == 100 * seconds) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            printf("  %s still running after %d s: killed\n", path, seconds);
            return -1;
        }
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run(const char *bin, char **argv) { return run_for(bin, argv, 3); }

/* stderr is one line holding every needle */
static int one_line_with(const char *a, const char *b, char *line, size_t cap)
{
    FILE *f = fopen(errfile, "r");
    size_t n = f ? fread(line, 1, cap - 1, f) : 0;
    if (f) fclose(f);
    line[n] = 0;
    return n > 0 && line[n - 1] == '\n' && strchr(line, '\n') == line + n - 1 && strstr(line, a) &&
           strstr(line, b);
}

/* prog [prefix...] option value: status 2 and one line naming both */
static int refused(const char *prog, const char *const *prefix, const char *opt, const char *value)
{
    char *argv[16], line[1024], quoted[128];
    int n = 1, st, ok;
    while (prefix && *prefix) argv[n++] = (char *)*prefix++;
    argv[n++] = (char *)opt;
    argv[n++] = (char *)value;
    argv[n] = NULL;
    snprintf(quoted, sizeof quoted, "'%s'", value);
    line[0] = 0;
    st = run(prog, argv);
    ok = st == 2 && one_line_with(opt, quoted, line, sizeof line);
    if (!ok) printf("  %s %s '%s': status %d, stderr: %s\n", prog, opt, value, st, line);
    return ok;
}

enum { INT, FLOAT, ONLY }; /* ONLY: just the value given, no malformed forms */

typedef struct numopt {
    const char *name;
    const char *out_of_range;   /* a well-formed value the option refuses */
    int kind;                   /* INT, FLOAT or ONLY */
} numopt;

/* every malformed form (none for ONLY), then the out-of-range value;
   returns the failures */
static int check_options(const char *prog, const char *const *prefix, const numopt *opts, int n)
{
    static const char *const malformed[] = {"abc", "", " 1", "1 ", "5x", "99999999999999999999999"};
    static const char *const not_int[] = {"1.5", "1e3"}, *const not_float[] = {"nan", "inf"};
    int i, k, failed = 0;
    for (i = 0; i < n; i++) {
        int forms = opts[i].kind == ONLY ? 0 : (int)(sizeof malformed / sizeof malformed[0]);
        for (k = 0; k < forms; k++)
            failed += !refused(prog, prefix, opts[i].name, malformed[k]);
        for (k = 0; forms && k < 2; k++)
            failed += !refused(prog, prefix, opts[i].name,
                               opts[i].kind == FLOAT ? not_float[k] : not_int[k]);
        if (opts[i].out_of_range) failed += !refused(prog, prefix, opts[i].name, opts[i].out_of_range);
    }
    return failed;
}

#define N(a) ((int)(sizeof a / sizeof a[0]))

/* the distgan options refused alike in process and by a TCP server */
static const numopt distgan_any[] = {
    {"--workers", "0", INT}, {"--batch", "0", INT}, {"--k", "0", INT}, {"--L", "0", INT},
    {"--E", "-1", INT}, {"--swap-every", "-1", INT}, {"--lr", "0", FLOAT}, {"--iters", "-5", INT},
    {"--seed", "-1", INT}, {"--threads", "-1", INT}, {"--dataset", "shapes:0", ONLY},
    {"--dataset", "shapes:abc", ONLY}, {"--algo", "sgd", ONLY},
};

TEST(distgan_options)
{
    static const numopt o[] = {
        {"--shards", "0", INT}, {"--dirichlet", "0", FLOAT}, {"--eval-every", "-1", INT},
        {"--eval-samples", "1", INT}, {"--clf-epochs", "-1", INT}, {"--crash", "0@5", INT},
        {"--join", "-1", INT},
        {"--iters", "0", ONLY}, {"--k", "5", ONLY}, /* more than the 4 workers */
        {"--crash", "3@", ONLY}, {"--crash", "3@5,", ONLY},
        {"--crash", "9@5", ONLY}, /* no worker 9 */
        {"--network", "moon", ONLY}, {"--network", "wan; up lat=abc", ONLY},
        {"--network", "link 0->3 bw=-1", ONLY}, {"--network", "@/nonexistent/net.txt", ONLY},
        {"--network", "worker 9 gflops=1", ONLY}, /* no worker 9 */
        {"--also-network", "wan", ONLY},          /* without --network */
        {"--quorum", "0", INT}, {"--quorum", "5", ONLY}, /* more than the 4 workers */
        {"--deadline", "0", FLOAT}, {"--tau-max", "-1", INT}, {"--staleness", "newest", ONLY},
        {"--codec", "batch=int9", ONLY}, {"--codec", "batch=int8,batch=f16", ONLY},
        {"--codec", "weights=f16", ONLY}, {"--codec", "feedback=topk:0", ONLY},
        {"--codec", "feedback=topk:x", ONLY}, {"--codec", "feedback=ibm:0", ONLY},
        {"--codec", "f16", ONLY}, {"--codec", "batch=f16,", ONLY},
        {"--codec", "batch=topk", ONLY},   /* images are absolute: f16 or int8 */
        {"--codec", "upload=topk", ONLY},  /* FL-GAN traffic, MD-GAN the default */
    };
    static const numopt fl[] = {{"--fraction", "1.5", FLOAT}, {"--fraction", "0", ONLY},
                                {"--codec", "feedback=f16", ONLY}, {"--codec", "swap=f16", ONLY}};
    static const char *const flgan[] = {"--algo", "flgan", NULL};
    static const char *const coded[] = {"--codec", "feedback=f16", NULL};
    static const numopt attack[] = {{"--attack", "1@5", ONLY}}; /* scales float32 feedback */
    static const char *const edge[] = {"--network", "edge", NULL};
    static const char *const async[] = {"--network", "edge", "--quorum", "2", NULL};
    static const numopt also[] = {{"--also-network", "moon", ONLY}, {"--also-network", "wan|", ONLY},
                                  {"--also-network", "wan|wan|wan|wan", ONLY}, /* 5 networks */
                                  {"--also-network", "wan|worker 9 gflops=1", ONLY}};
    static const numopt also_async[] = {{"--also-network", "wan", ONLY}};
    CHECK(check_options("distgan", edge, also, N(also)) == 0);
    CHECK(check_options("distgan", async, also_async, N(also_async)) == 0);
    CHECK(check_options("distgan", NULL, distgan_any, N(distgan_any)) == 0);
    CHECK(check_options("distgan", NULL, o, N(o)) == 0);
    CHECK(check_options("distgan", flgan, fl, N(fl)) == 0);
    CHECK(check_options("distgan", coded, attack, N(attack)) == 0);
}

/* the settings of asynchronous MD-GAN and FeGAN alone are refused, and
   in process the quorum without the network model that times it */
TEST(distgan_async_needs_quorum)
{
    static const char *const runs[][4] = {
        {"--deadline", "1", NULL}, {"--staleness", "constant", NULL}, {"--tau-max", "3", NULL},
        {"--algo", "flgan", "--balanced", NULL}, {"--quorum", "2", NULL},
    };
    char *argv[8], line[1024];
    int i, k;
    for (i = 0; i < N(runs); i++) {
        for (k = 0; k < 4 && runs[i][k]; k++) argv[k + 1] = (char *)runs[i][k];
        argv[k + 1] = NULL;
        CHECK(run("distgan", argv) == 2 &&
              one_line_with(" needs --", !strcmp(runs[i][k - 1], "--balanced") ? "--fraction"
                                         : !strcmp(runs[i][0], "--quorum") ? "--network" : "--quorum",
                            line, sizeof line));
        if (th_cur_failed) printf("  run %d: %s", i, line);
    }
}

TEST(gan_options)
{
    static const numopt o[] = {
        {"--iters", "0", INT}, {"--batch", "0", INT}, {"--lr", "0", FLOAT}, {"--d-steps", "0", INT},
        {"--eval-every", "-1", INT}, {"--eval-samples", "1", INT}, {"--splits", "0", INT},
        {"--clf-epochs", "-1", INT}, {"--seed", "-1", INT}, {"--threads", "-1", INT},
        {"--eval-samples", "500,x", ONLY}, {"--eval-samples", "500,", ONLY},
        {"--dataset", "shapes:-3", ONLY}, {"--dataset", "dir:x", ONLY},
    };
    CHECK(check_options("gan", NULL, o, N(o)) == 0);
}

TEST(asgd_options)
{
    static const numopt o[] = {
        {"--workers", "0", INT}, {"--c", "2", FLOAT}, {"--bin", "0", INT}, {"--hidden", "0", INT},
        {"--updates", "-5", INT}, {"--batch", "0", INT}, {"--lr", "0", FLOAT},
        {"--history-mb", "0", INT}, {"--max-staleness", "-1", INT},
        {"--slow", "1.5", FLOAT}, {"--slow-factor", "0", FLOAT}, {"--jitter", "-1", FLOAT},
        {"--drop", "2", FLOAT}, {"--down", "1e10", FLOAT}, {"--eval-every", "-1", INT},
        {"--eval-limit", "-1", INT}, {"--seed", "-1", INT}, {"--threads", "-1", INT},
        {"--dataset", "shapes:0", ONLY}, {"--mode", "fast", ONLY}, {"--modulation", "x", ONLY},
    };
    CHECK(check_options("asgd", NULL, o, N(o)) == 0);
}

TEST(distgan_tcp_options)
{
    static const char *const server[] = {"--transport", "tcp", "--role", "server", "--listen",
                                         "127.0.0.1:0", "--workers", "2", NULL};
    static const char *const worker[] = {"--transport", "tcp", "--role", "worker", "--connect",
                                         "127.0.0.1:1", "--workers", "3", NULL};
    static const numopt o[] = {
        {"--checkpoint-every", "-1", INT}, {"--log-every", "-1", INT}, {"--dead-ms", "-1", INT},
        {"--heartbeat-ms", "-1", INT}, {"--barrier-ms", "-1", INT},
        {"--protocol-version", "65536", INT}, {"--max-message", "-1", INT},
        {"--data-seed", "-1", INT}, {"--role", "client", ONLY},
    };
    static const numopt id[] = {{"--id", "4", INT}, {"--id", "0", ONLY}};
    CHECK(check_options("distgan", server, distgan_any, N(distgan_any)) == 0);
    CHECK(check_options("distgan", server, o, N(o)) == 0);
    CHECK(check_options("distgan", worker, id, N(id)) == 0);
}

/* build/distgan is built without MPI: --transport mpi names the program that has it */
TEST(distgan_mpi_needs_its_build)
{
    static const numopt o[] = {{"--transport", "mpi", ONLY}};
    char *argv[4], line[1024];
    CHECK(check_options("distgan", NULL, o, N(o)) == 0);
    argv[1] = "--transport";
    argv[2] = "mpi";
    argv[3] = NULL;
    CHECK(run("distgan", argv) == 2 && one_line_with("distgan-mpi", "--transport", line, sizeof line));
}

/* an option the chosen transport, role or algorithm does not use */
TEST(distgan_unused_options)
{
    static const char *const runs[][8] = {
        {"--transport", "tcp", "--role", "worker", "--connect", "127.0.0.1:1", "--eval-every", "5"},
        {"--transport", "tcp", "--role", "server", "--listen", "127.0.0.1:0", "--id", "1"},
        {"--transport", "tcp", "--role", "server", "--listen", "127.0.0.1:0", "--crash", "1@2"},
        {"--algo", "flgan", "--swap-every", "3", NULL},
        {"--algo", "mdgan", "--local-iters", "3", NULL},
        {"--algo", "flgan", "--quorum", "2", NULL},
        {"--algo", "mdgan", "--fraction", "0.5", NULL},
        {"--slow", "1@5", NULL}, /* tcp, mpi only (asynchronous MD-GAN runs on every transport) */
        {"--listen", "127.0.0.1:0", NULL},
        {"--checkpoint-every", "5", NULL},
        {"--algo", "gan", "--codec", "batch=f16", NULL},
    };
    char *argv[10], line[1024];
    int i, k;
    for (i = 0; i < N(runs); i++) {
        for (k = 0; k < 8 && runs[i][k]; k++) argv[k + 1] = (char *)runs[i][k];
        argv[k + 1] = NULL;
        CHECK(run("distgan", argv) == 2 && one_line_with("is not an option of", "--", line, sizeof line));
        if (th_cur_failed) printf("  run %d: %s", i, line);
    }
}

TEST(plot_options)
{
    static const char *const files[] = {"docs/adacomp-curves.csv", "--y", "accuracy", NULL};
    static const numopt o[] = {{"--ymin", "-1e16", FLOAT}, {"--ymax", "1e16", FLOAT},
                               {"--width", "10", INT}, {"--height", "100000", INT}};
    CHECK(check_options("plot", files, o, N(o)) == 0);
}

/* unknown options and missing values: one line, status 2 */
TEST(unknown_and_missing)
{
    static const char *const runs[][3] = {{"distgan", NULL, "--seed"}, {"gan", NULL, "--seed"},
                                          {"asgd", NULL, "--seed"}, {"plot", NULL, "--width"}};
    char *argv[5], line[1024];
    int i, k;
    for (i = 0; i < N(runs); i++) {
        k = 1;
        if (runs[i][1]) argv[k++] = (char *)runs[i][1];
        argv[k] = "--no-such-option";
        argv[k + 1] = NULL;
        CHECK(run(runs[i][0], argv) == 2 &&
              one_line_with("unknown option", "'--no-such-option'", line, sizeof line));
        argv[k] = (char *)runs[i][2];
        CHECK(run(runs[i][0], argv) == 2 && one_line_with(runs[i][2], "needs a value", line, sizeof line));
    }
}

/* a file's bytes (NUL-terminated), NULL when it cannot be read */
static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *b = NULL;
    long len;
    if (f && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (b = malloc((size_t)len + 1)) && fread(b, 1, (size_t)len, f) == (size_t)len) {
        b[len] = 0;
        *n = (size_t)len;
    } else {
        free(b);
        b = NULL;
    }
    if (f) fclose(f);
    return b;
}

/* log.csv without its host-time column (the 9th) */
static char *log_without_time(const char *dir)
{
    char path[600], *b, *o, *p;
    size_t n;
    int col = 0;
    snprintf(path, sizeof path, "%s/log.csv", dir);
    if (!(b = slurp(path, &n)) || !(o = malloc(n + 1))) return b;
    for (p = b, n = 0; *p; p++) {
        if (*p == '\n') col = 0;
        else if (*p == ',') col++;
        if (col != 8) o[n++] = *p;
    }
    o[n] = 0;
    free(b);
    return o;
}

/* A run stopped midway and resumed with --resume logs, evaluates and ends
   as the run that went through: FeGAN (a round moves by C times a full
   round's iterations), FL-GAN on unequal shards, MD-GAN. */
TEST(distgan_resume_continues_the_log)
{
    static const char *const algos[][4] = {
        {"--algo", "flgan", "--fraction", "0.5"},
        {"--algo", "flgan", "--dirichlet", "0.3"},
        {"--algo", "mdgan", "--k", "1"},
    };
    static const char *const iters[] = {"40", "15", "40"};
    char dir[2][300], *argv[32], *a, *b, path[1000];
    const char *base = getenv("TMPDIR");
    int i, k, d, r, it;
    for (i = 0; i < N(algos); i++) {
        for (d = 0; d < 2; d++) {
            snprintf(dir[d], sizeof dir[d], "%s/dg_cli_resume_XXXXXX", base ? base : "/tmp");
            CHECK(mkdtemp(dir[d]) != NULL);
        }
        /* dir[0]: 40 updates in one go; dir[1]: the first ones, then --resume */
        for (r = 0; r < 3; r++) {
            static const char *const common[] = {"--arch", "tiny", "--dataset", "shapes:256", "--batch",
                                                 "8", "--no-eval", "--threads", "1", "--workers", "4",
                                                 "--eval-every", "8", "--seed", "3"};
            k = 1;
            for (d = 0; d < N(common); d++) argv[k++] = (char *)common[d];
            for (d = 0; d < 4; d++) argv[k++] = (char *)algos[i][d];
            argv[k++] = "--out";
            argv[k++] = dir[r == 0 ? 0 : 1];
            argv[k++] = "--iters";
            argv[k++] = (char *)(r == 1 ? iters[i] : "40");
            if (r == 2) argv[k++] = "--resume";
            argv[k] = NULL;
            CHECK(run_for("distgan", argv, 60) == 0);
        }
        for (d = 0; d < 2; d++) {
            size_t na, nb;
            snprintf(path, sizeof path, "%s/g.f32", dir[0]);
            a = slurp(path, &na);
            snprintf(path, sizeof path, "%s/g.f32", dir[1]);
            b = slurp(path, &nb);
            if (d == 1) {
                free(a);
                free(b);
                a = log_without_time(dir[0]);
                b = log_without_time(dir[1]);
                na = a ? strlen(a) : 0;
                nb = b ? strlen(b) : 0;
            }
            CHECK(a && b && na == nb && memcmp(a, b, na) == 0);
            if (th_cur_failed) printf("  %s %s: %s differs\n", algos[i][1], algos[i][3], d ? "log.csv" : "G");
            free(a);
            free(b);
        }
        /* one grid per --eval-every period, at its first update (FeGAN's
           rounds and MD-GAN's iterations land on the multiples of 8) */
        for (it = 1; i != 1 && it <= 40; it++) {
            FILE *f;
            snprintf(path, sizeof path, "%s/samples_%06d.png", dir[1], it);
            f = fopen(path, "rb");
            CHECK((f != NULL) == (it % 8 == 0));
            if (th_cur_failed) printf("  %s: grid at update %d: %s\n", algos[i][1], it, f ? "yes" : "no");
            if (f) fclose(f);
        }
        for (d = 0; d < 2; d++) {
            snprintf(path, sizeof path, "rm -rf '%s'", dir[d]);
            CHECK(system(path) == 0);
        }
    }
}

int main(void)
{
    const char *env = getenv("DG_CLI_BIN"), *base = getenv("TMPDIR");
    int fd;
    if (env) bindir = env;
    snprintf(errfile, sizeof errfile, "%s/dg_test_cli_XXXXXX", base ? base : "/tmp");
    fd = mkstemp(errfile);
    if (fd < 0) {
        printf("cannot create a temporary file\n");
        return 1;
    }
    close(fd);
    RUN(distgan_options);
    RUN(gan_options);
    RUN(asgd_options);
    RUN(distgan_tcp_options);
    RUN(distgan_mpi_needs_its_build);
    RUN(distgan_unused_options);
    RUN(distgan_async_needs_quorum);
    RUN(plot_options);
    RUN(unknown_and_missing);
    RUN(distgan_resume_continues_the_log);
    unlink(errfile);
    return th_done();
}
