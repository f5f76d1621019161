/* tests/mpi_drive.c: the process drivers (dg_mdgan_server_drive & co.) on
   the MPI transport, under mpirun with 4 ranks (tests/run.sh): rank 0 the
   server, ranks 1..3 the workers.  Every rank runs every test; a test
   passes when it passes on all ranks, and rank 0 prints the lines.

   - MD-GAN and FL-GAN at N = 3 end with a generator bit-identical to the
     in-process dg_mdgan_run / dg_flgan_run of the same seed and options
     (as tests/test_tcp.c checks over TCP);
   - a run stopped after k iterations (rounds), every role checkpointed,
     and resumed ends bit-identical to the uninterrupted run;
   - the per-type message limits of a run (dg_transport_set_limits) refuse
     a message of a type the server never receives, or over its size;
   - an idle server's receive sleeps (process CPU time over 1 s);
   - asynchronous MD-GAN (quorum 2 of 3, real time) with worker 3 20x
     slower than the others completes its iterations with stale feedback
     used and a finite G. */
#define _GNU_SOURCE /* mkdtemp */
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#define DISTGAN_MPI
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "mpi_harness.h"

#define NW 3
#define BATCH 16
#define MD_ITERS 12  /* swaps at 5 and 10 */
#define MD_STOP 5    /* the first run stops right after a swap is announced */
#define FL_LOCAL 3
#define FL_ROUNDS 3

static dg_dataset ds;
static dg_partition part;
static dg_pool *pool;
static char dir[64];   /* the checkpoints, made by rank 0 */

/* but in mdgan_async_mpi_completes_with_the_quorum: quorum 2, no swap, and
   every worker's feedback late (worker 3 by 400 ms, the others by 20 ms) */
static int md_async;

static dg_mdgan_config md_config(void)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    c.n_workers = NW; c.c = ds.c; c.h = ds.h; c.w = ds.w; c.arch = DG_ARCH_MLP; c.batch = BATCH;
    c.seed = 7; c.swap_every = 5;
    if (md_async) {
        c.quorum = 2;
        c.swap_every = 0;
        c.local_epochs = 0;
    }
    return c;
}

static dg_codec_set fl_codec; /* none but in flgan_coded_mpi_equals_inproc */

static dg_flgan_config fl_config(void)
{
    dg_flgan_config c = dg_flgan_config_init();
    c.n_workers = NW; c.c = ds.c; c.h = ds.h; c.w = ds.w; c.arch = DG_ARCH_MLP; c.batch = BATCH;
    c.seed = 7; c.local_iters = FL_LOCAL; c.max_shard = (int64_t)ds.n;
    c.codec = fl_codec;
    return c;
}

static float *copy_g(dg_net *g, size_t *n)
{
    float *x;
    *n = dg_net_param_count(g);
    x = (float *)malloc(*n * sizeof(float));
    if (x) memcpy(x, dg_net_params(g), *n * sizeof(float));
    return x;
}

/* The in-process runs of the same configurations. */
static float *inproc_g(int md, int64_t iters, size_t *n)
{
    float *g = NULL;
    int64_t i;
    if (md) {
        dg_mdgan_config c = md_config();
        dg_mdgan_run *run;
        if (dg_mdgan_run_create(&run, &c, pool, &ds, &part, NULL, 0, NULL, 0) != DG_OK) return NULL;
        for (i = 0; i < iters; i++) dg_mdgan_run_iteration(run);
        g = copy_g(dg_mdgan_server_generator(dg_mdgan_run_server(run)), n);
        dg_mdgan_run_free(run);
    } else {
        dg_flgan_config c = fl_config();
        dg_flgan_run *run;
        if (dg_flgan_run_create(&run, &c, pool, &ds, &part, NULL, 0) != DG_OK) return NULL;
        for (i = 0; i < iters; i++) dg_flgan_run_round(run);
        g = copy_g(dg_flgan_server_generator(dg_flgan_run_server(run)), n);
        dg_flgan_run_free(run);
    }
    return g;
}

typedef struct final_g {
    float *g;
    size_t n;
    int64_t iteration, stale_used;
} final_g;

static final_g last_run; /* the last mpi_run's iterations and stale counts (rank 0) */

static void on_finish(void *user, const dg_drive_status *s)
{
    final_g *f = (final_g *)user;
    f->g = copy_g(s->generator, &f->n);
    f->iteration = s->iteration;
    f->stale_used = s->stale_used;
}

/* One MPI run of the drivers on every rank: iters iterations (rounds),
   checkpoints in dir when ckpt, resumed from them when resume.  Rank 0
   returns the final G. */
static float *mpi_run(int md, int64_t iters, int ckpt, int resume, size_t *n)
{
    dg_transport *t = NULL;
    dg_mpi_config mc;
    dg_drive d;
    final_g f = {NULL, 0, 0, 0};
    char path[128];
    dg_result r;
    dg_mpi_config_init(&mc);
    CHECK_OK(dg_mpi_create(&t, MPI_COMM_WORLD, &mc));
    if (!t) return NULL;
    if (md_async && rank > 0) { /* a fault transport over the rank delays its feedback */
        dg_fault_spec slow = {DG_FAULT_DELAY, rank, DG_MSG_FEEDBACK, 0, rank == 3 ? 0.4f : 0.02f};
        dg_transport *mpi = t;
        CHECK_OK(dg_fault_transport_create(&t, mpi, &slow, 1));
        if (!t) t = mpi;
    }
    memset(&d, 0, sizeof d);
    CHECK_OK(dg_checkpoint_path(path, sizeof path, dir, !md, rank));
    d.checkpoint = ckpt ? path : NULL;
    d.resume = resume;
    d.iterations = iters;
    d.finish = on_finish;
    d.user = &f;
    if (rank == 0) {
        if (md) {
            dg_mdgan_config c = md_config();
            r = dg_mdgan_server_drive(&c, t, pool, &d);
        } else {
            dg_flgan_config c = fl_config();
            r = dg_flgan_server_drive(&c, t, pool, &d);
        }
    } else {
        size_t count;
        const uint32_t *idx = dg_partition_worker(&part, rank - 1, &count);
        if (md) {
            dg_mdgan_config c = md_config();
            r = dg_mdgan_worker_drive(&c, rank, t, pool, &ds, idx, count, &d);
        } else {
            dg_flgan_config c = fl_config();
            r = dg_flgan_worker_drive(&c, rank, t, pool, &ds, idx, count, &d);
        }
    }
    if (r != DG_OK) printf("rank %d: %s: %s\n", rank, dg_result_str(r), dg_last_error());
    CHECK_OK(r);
    dg_transport_close(t);
    last_run = f;
    *n = f.n;
    return f.g;
}

static void compare(const char *what, float *a, size_t na, float *b, size_t nb)
{
    if (rank == 0) check_same_floats(what, a, na, b, nb);
}

static void mpi_equals_inproc(int md)
{
    size_t na = 0, nb = 0;
    int64_t iters = md ? MD_ITERS : FL_ROUNDS;
    float *b = mpi_run(md, iters, 0, 0, &nb);
    float *a = rank == 0 ? inproc_g(md, iters, &na) : NULL;
    compare(md ? "MD-GAN, MPI and in-process" : "FL-GAN, MPI and in-process", a, na, b, nb);
    free(a);
    free(b);
}

TEST(mdgan_mpi_equals_inproc) { mpi_equals_inproc(1); }
TEST(flgan_mpi_equals_inproc) { mpi_equals_inproc(0); }

/* Stopped after k (every role checkpointed at the end of its run), then
   resumed to the end: the uninterrupted run's G, bit for bit. */
static void resume_is_exact(int md)
{
    size_t na = 0, nb = 0;
    float *a, *b;
    free(mpi_run(md, md ? MD_STOP : 1, 1, 0, &nb));
    b = mpi_run(md, md ? MD_ITERS : FL_ROUNDS, 1, 1, &nb);
    a = rank == 0 ? inproc_g(md, md ? MD_ITERS : FL_ROUNDS, &na) : NULL;
    compare(md ? "MD-GAN stopped at 5 of 12 and resumed, and uninterrupted"
               : "FL-GAN stopped at round 1 of 3 and resumed, and uninterrupted", a, na, b, nb);
    free(a);
    free(b);
}

TEST(mdgan_checkpoint_resume_is_exact) { resume_is_exact(1); }
TEST(flgan_checkpoint_resume_is_exact) { resume_is_exact(0); }

/* Top-k both ways (download deltas from per-worker references): the same
   bits as in process, and stopped and resumed (the residuals and the
   references in the checkpoints) the same bits as uninterrupted. */
TEST(flgan_coded_mpi_equals_inproc)
{
    CHECK_OK(dg_codec_set_parse("upload=topk:0.05,download=topk:0.05", &fl_codec));
    mpi_equals_inproc(0);
    resume_is_exact(0);
    memset(&fl_codec, 0, sizeof fl_codec);
}

/* The server of an MD-GAN run receives FEEDBACK of b*d floats and nothing
   else: a message of another type, or a larger one, is refused from its
   size (named with the rank), and the next good one comes through. */
TEST(message_limits_per_type)
{
    dg_transport *t = NULL;
    dg_mpi_config mc;
    dg_mdgan_config c = md_config();
    uint64_t lim[DG_MSG_TYPE_MAX + 1];
    size_t fb = (size_t)BATCH * ds.c * ds.h * ds.w, big = fb + 1000, one = 1;
    dg_part_kind k = DG_PART_F32;
    dg_msg *m;
    dg_mpi_config_init(&mc);
    CHECK_OK(dg_mpi_create(&t, MPI_COMM_WORLD, &mc));
    if (!t) return;
    CHECK_OK(dg_mdgan_max_payload(&c, 0, lim));
    if (rank == 0) dg_transport_set_limits(t, lim);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) {
        CHECK_OK(dg_msg_create(t, DG_MSG_USER, 1, 0, 0, 1, &k, &one, &m));
        CHECK_OK(dg_transport_send(t, m));                 /* a type the server never receives */
        CHECK_OK(dg_msg_create(t, DG_MSG_FEEDBACK, 1, 0, 0, 1, &k, &big, &m));
        CHECK_OK(dg_transport_send(t, m));                 /* over FEEDBACK's size */
        CHECK_OK(dg_msg_create(t, DG_MSG_FEEDBACK, 1, 0, 0, 1, &k, &fb, &m));
        CHECK_OK(dg_transport_send(t, m));                 /* right */
    }
    if (rank == 0) {
        int never = 0, over = 0, got = 0, tries;
        for (tries = 0; tries < 20 && !got; tries++) {
            dg_result r = dg_transport_recv(t, 0, 5000, &m);
            if (r == DG_OK) {
                got = m->type == DG_MSG_FEEDBACK && m->part[0].count == fb;
                dg_msg_free(t, m);
            } else if (r == DG_ERR_TOO_LARGE) {
                never += strstr(dg_last_error(), "never receives") != NULL;
                over += strstr(dg_last_error(), "over its limit") != NULL;
                CHECK(strstr(dg_last_error(), "rank 1") != NULL);
            }
        }
        printf("  refused: %d of a type never received, %d over its size; the right one %s\n",
               never, over, got ? "came" : "did NOT come");
        CHECK(never == 1 && over == 1 && got);
    }
    dg_transport_close(t);
}

/* Asynchronous MD-GAN on MPI (md_async): quorum 2 of 3, no swap; each
   worker's feedback leaves late by a fault transport over its rank, worker
   3 by 400 ms, workers 1 and 2 by 20 ms (so 40 iterations last >= 0.8 s and
   3's feedback comes during the run).  Whatever the scheduling: 40
   iterations, stale feedback used (3's, on an older G), a finite G. */
TEST(mdgan_async_mpi_completes_with_the_quorum)
{
    size_t n = 0, i;
    float *g;
    int finite = 1;
    md_async = 1;
    g = mpi_run(1, 40, 0, 0, &n);
    md_async = 0;
    if (rank == 0) {
        for (i = 0; i < n; i++) finite &= isfinite(g[i]) != 0;
        printf("  40 iterations, quorum 2 of 3, worker 3 20x slower: %lld stale feedbacks used\n",
               (long long)last_run.stale_used);
        CHECK(last_run.iteration == 40 && last_run.stale_used > 0 && g && n > 0 && finite);
    }
    free(g);
}

/* An idle server's receive sleeps: the whole process (Open MPI's threads
   too) uses under 0.2 s of CPU over a 1 s wait. */
TEST(idle_server_does_not_burn_a_core)
{
    dg_transport *t = NULL;
    dg_mpi_config mc;
    dg_mpi_config_init(&mc);
    CHECK_OK(dg_mpi_create(&t, MPI_COMM_WORLD, &mc));
    if (!t) return;
    if (rank == 0) {
        struct rusage r0, r1;
        dg_msg *m = NULL;
        double cpu;
        getrusage(RUSAGE_SELF, &r0);
        CHECK(dg_transport_recv(t, 0, 1000, &m) == DG_ERR_TIMEOUT);
        getrusage(RUSAGE_SELF, &r1);
        cpu = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) +
              1e-6 * (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) +
              (double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
              1e-6 * (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
        printf("  idle server: %.3f s of CPU over a 1 s receive\n", cpu);
        CHECK(cpu < 0.2);
    }
    dg_transport_close(t);
}

int main(int argc, char **argv)
{
    if (!mpi_start(&argc, &argv, NW + 1, NW + 1)) return 1;
    if (rank == 0) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/dg_mpi_drive_XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(dir)) dir[0] = 0;
    }
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    memset(&ds, 0, sizeof ds);
    if (!dir[0] || dg_dataset_make_shapes(&ds, 640, 1) != DG_OK ||
        dg_partition_iid(&part, ds.n, NW, 1) != DG_OK || dg_pool_create(&pool, 1) != DG_OK) {
        printf("rank %d: setup failed: %s\n", rank, dg_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_RUN(mdgan_mpi_equals_inproc);
    MPI_RUN(flgan_mpi_equals_inproc);
    MPI_RUN(mdgan_checkpoint_resume_is_exact);
    MPI_RUN(flgan_checkpoint_resume_is_exact);
    MPI_RUN(flgan_coded_mpi_equals_inproc);
    MPI_RUN(message_limits_per_type);
    MPI_RUN(idle_server_does_not_burn_a_core);
    MPI_RUN(mdgan_async_mpi_completes_with_the_quorum);
    if (rank == 0) { /* the checkpoints */
        char path[128];
        const char *names[] = {"server.ckpt", "flgan_server.ckpt"};
        int i;
        for (i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            unlink(path);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank > 0) {
        char path[128];
        snprintf(path, sizeof path, "%s/worker_%d.ckpt", dir, rank);
        unlink(path);
        snprintf(path, sizeof path, "%s/flgan_worker_%d.ckpt", dir, rank);
        unlink(path);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) rmdir(dir);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
    return mpi_done();
}
