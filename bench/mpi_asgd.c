/* bench/mpi_asgd.c: AdaComp-ASGD pushes per second over MPI.
 *
 *   bench asgd_push transport=mpi workers=W mode=hardy pushes=N
 *       pushes_per_s=... bytes_per_push=... model_bytes=...
 *     as bench/bench_asgd.c (the AdaComp paper's CNN, dg_asgd_config_init()
 *     defaults, asynchronous schedule), with rank 0 the PS and ranks 1..W
 *     the workers, each process with a one-thread pool.  W = ranks - 1:
 *     the paper's W = 10 is `sh tests/mpirun.sh 11 build/bench_mpi_asgd`
 *     (make bench runs it with 2 ranks, W = 1). */
#include "bench_common.h"
#define _POSIX_C_SOURCE 200809L
#define ADACOMP_IMPLEMENTATION
#include "../adacomp.h"
#define DISTGAN_MPI
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#define PUSHES 300

static double t_first, t_end;
static dg_asgd_stats g_st;
static size_t g_n;

static void progress(void *user, const dg_asgd_drive_status *s)
{
    (void)user;
    if (!s->last) {
        if (t_first == 0) t_first = bench_now(); /* at 20 updates: everyone is in */
        return;
    }
    t_end = bench_now();
    g_st = *dg_asgd_server_stats(s->server);
    g_n = (size_t)ac_layout_total(&s->server->layout);
}

int main(int argc, char **argv)
{
    dg_dataset ds;
    dg_partition part;
    dg_transport *t = NULL;
    dg_mpi_config mc;
    dg_pool *pool = NULL;
    dg_asgd_config c = dg_asgd_config_init();
    dg_asgd_drive d;
    dg_result r;
    int rank, size;
    if (dg_mpi_init(&argc, &argv) != DG_OK) return 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        if (rank == 0) printf("bench asgd_push transport=mpi status=skipped (needs 2 ranks)\n");
        MPI_Finalize();
        return 0;
    }
    memset(&ds, 0, sizeof ds);
    r = dg_dataset_make_shapes(&ds, 6000, 1);
    if (r == DG_OK) r = dg_asgd_partition_contiguous(&part, ds.n, size - 1);
    c.n_workers = size - 1;
    c.c = ds.c; c.h = ds.h; c.w = ds.w; c.n_classes = ds.n_classes;
    dg_mpi_config_init(&mc);
    if (r == DG_OK) r = dg_mpi_create(&t, MPI_COMM_WORLD, &mc);
    if (r == DG_OK) r = dg_pool_create(&pool, 1);
    memset(&d, 0, sizeof d);
    d.d.iterations = PUSHES + 20;
    d.progress_every = 20;
    d.progress = progress;
    if (r == DG_OK) {
        if (rank == 0) {
            r = dg_asgd_server_drive(&c, t, pool, &d);
        } else {
            size_t count;
            const uint32_t *idx = dg_partition_worker(&part, rank - 1, &count);
            r = dg_asgd_worker_drive(&c, rank, t, pool, &ds, idx, count, &d);
        }
    }
    if (rank == 0) {
        if (r == DG_OK && t_first > 0)
            printf("bench asgd_push transport=mpi workers=%d mode=hardy pushes=%llu "
                   "pushes_per_s=%.1f bytes_per_push=%.0f model_bytes=%zu\n",
                   size - 1, (unsigned long long)(g_st.applied - 20),
                   (g_st.applied - 20) / (t_end - t_first),
                   g_st.pushes ? (double)g_st.bytes_pushed / g_st.pushes : 0.0, 4 * g_n);
        else
            printf("bench asgd_push transport=mpi status=failed (%s)\n", dg_last_error());
        fflush(stdout);
    }
    dg_transport_close(t);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
    MPI_Finalize();
    return r == DG_OK ? 0 : 1;
}
