/* tests/mpi_asgd.c: AdaComp-ASGD over MPI, run under mpirun (tests/run.sh
   uses 3 ranks; any size >= 2 works, e.g. tests/mpirun.sh 4).  Rank 0 runs
   the PS driver (dg_asgd_server_drive), ranks 1..W the workers
   (dg_asgd_worker_drive), W = size - 1.  In the deterministic schedule the
   final w equals the in-process run's (dg_asgd_run) bit for bit, in the
   hardy, ibm and dense modes and with drop-outs replayed; the asynchronous
   schedule reaches its updates with a finite w. */
#define ADACOMP_IMPLEMENTATION
#define _POSIX_C_SOURCE 200809L
#include "../adacomp.h"
#define DISTGAN_MPI
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "mpi_harness.h"
#include "asgd_final.h"

#include <stdlib.h>

static dg_dataset g_ds;
static dg_partition g_part;

static dg_asgd_config config(dg_asgd_mode mode, double drop)
{
    dg_asgd_config c = dg_asgd_config_init();
    c.n_workers = size - 1;
    c.mode = mode;
    c.arch = DG_ASGD_ARCH_MLP; c.hidden = 24;
    c.rate = 0.05;
    c.seed = 11;
    c.drop_prob = drop; c.down_time = 2.0; /* drop-outs, down 2 units on average */
    c.c = g_ds.c; c.h = g_ds.h; c.w = g_ds.w; c.n_classes = g_ds.n_classes;
    return c;
}

/* The run over MPI; on rank 0 its final w in f. */
static dg_result run_mpi(const dg_asgd_config *cfg, dg_asgd_schedule sched, int64_t updates,
                         asgd_final *f)
{
    dg_transport *t = NULL;
    dg_mpi_config mc;
    dg_pool *pool = NULL;
    dg_asgd_drive d;
    dg_result r;
    memset(f, 0, sizeof *f);
    dg_mpi_config_init(&mc);
    if ((r = dg_mpi_create(&t, MPI_COMM_WORLD, &mc)) != DG_OK) return r;
    if ((r = dg_pool_create(&pool, 1)) == DG_OK) {
        memset(&d, 0, sizeof d);
        d.d.iterations = updates;
        d.schedule = sched;
        d.progress = asgd_final_keep;
        d.user = f;
        if (rank == 0) {
            r = dg_asgd_server_drive(cfg, t, pool, &d);
        } else {
            size_t count;
            const uint32_t *idx = dg_partition_worker(&g_part, rank - 1, &count);
            r = dg_asgd_worker_drive(cfg, rank, t, pool, &g_ds, idx, count, &d);
        }
        if (r != DG_OK) printf("rank %d: %s\n", rank, dg_last_error());
        dg_pool_destroy(pool);
    }
    dg_transport_close(t);
    return r;
}

static void deterministic_equals_inproc(dg_asgd_mode mode, double drop)
{
    dg_asgd_config cfg = config(mode, drop);
    asgd_final f;
    CHECK_OK(run_mpi(&cfg, DG_ASGD_DETERMINISTIC, 200, &f));
    if (rank == 0) {
        dg_pool *pool;
        dg_asgd_run *run = NULL;
        CHECK_OK(dg_pool_create(&pool, 1));
        CHECK_OK(dg_asgd_run_create(&run, &cfg, pool, &g_ds, &g_part));
        if (run) CHECK_OK(dg_asgd_run_updates(run, 200));
        CHECK(run != NULL);
        if (run) {
            char what[128];
            snprintf(what, sizeof what, "%s (drop %g), %d workers: parameters over MPI "
                     "(deterministic) and in-process", dg_asgd_mode_name(mode), drop, size - 1);
            check_same_floats(what, f.w, f.n, dg_asgd_server_params(dg_asgd_run_server(run)),
                              (size_t)ac_layout_total(dg_asgd_run_layout(run)));
        }
        dg_asgd_run_free(run);
        dg_pool_destroy(pool);
    }
    free(f.w);
}

static void det_hardy(void) { deterministic_equals_inproc(DG_ASGD_MODE_HARDY, 0.0); }
static void det_ibm(void) { deterministic_equals_inproc(DG_ASGD_MODE_IBM, 0.0); }
static void det_dense(void) { deterministic_equals_inproc(DG_ASGD_MODE_DENSE, 0.0); }
static void det_hardy_dropouts(void) { deterministic_equals_inproc(DG_ASGD_MODE_HARDY, 0.1); }

static void async_runs(void)
{
    dg_asgd_config cfg = config(DG_ASGD_MODE_HARDY, 0.0);
    asgd_final f;
    size_t i;
    int finite = 1;
    CHECK_OK(run_mpi(&cfg, DG_ASGD_ASYNC, 500, &f));
    if (rank == 0) {
        CHECK(f.w && f.st.applied == 500);
        for (i = 0; f.w && i < f.n; i++) finite &= isfinite(f.w[i]) != 0;
        CHECK(finite);
    }
    free(f.w);
}

int main(int argc, char **argv)
{
    if (!mpi_start(&argc, &argv, 2, 0)) return 1;
    if (dg_dataset_make_shapes(&g_ds, 600, 3) != DG_OK ||
        dg_asgd_partition_contiguous(&g_part, g_ds.n, size - 1) != DG_OK) {
        printf("rank %d: %s\n", rank, dg_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_RUN(det_hardy);
    MPI_RUN(det_ibm);
    MPI_RUN(det_dense);
    MPI_RUN(det_hardy_dropouts);
    MPI_RUN(async_runs);
    dg_partition_free(&g_part);
    dg_dataset_free(&g_ds);
    return mpi_done();
}
