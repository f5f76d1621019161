/* bench/mpi_mdgan.c: one MD-GAN iteration over MPI beside in-process and
 * TCP, on the same workload in the same run (mpirun -n N+1; make bench
 * runs N = 4 and N = 10).
 *
 *   bench mdgan_iter transport=inproc|tcp|mpi workers=N ms=... overhead=...
 *     bench/mdgan_iter.h: the reference DCGAN, b = 64, N workers.  Every
 *     round, rank 0 runs the in-process and the TCP iterations alone (the
 *     other ranks sleep meanwhile), then the MPI one: rank 0 the server on a
 *     pool of a thread per core, ranks 1..N the workers with a one-thread
 *     pool; overhead is against the in-process ms of the same round.
 *   bench mdgan_cpu transport=mpi workers=N cpu_s=... inproc_cpu_s=...
 *       cpu_overhead=... cpu_overhead_min=... cpu_overhead_max=...
 *     the CPU seconds of one round (setup, the warm-up and the timed
 *     iterations): all ranks' from create to the end of their drive beside
 *     the in-process run's (its whole process); cpu_overhead the median of
 *     the rounds' quotients - 1 and their spread.  CPU time moves less than
 *     wall time on a busy host, and it shows what waiting ranks cost (on
 *     fewer cores than ranks, their wake-ups take the others' cores). */
#include "bench_common.h"
#define _POSIX_C_SOURCE 200809L
#define DISTGAN_MPI
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "mdgan_iter.h"

/* A barrier whose waiting ranks sleep (MPI_Barrier spins, and would take
   the cores from rank 0's in-process and TCP runs). */
static void sleepy_barrier(void)
{
    MPI_Request req;
    int done = 0;
    struct timespec ts = {0, 2000000};
    MPI_Ibarrier(MPI_COMM_WORLD, &req);
    while (MPI_Test(&req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done) nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    dg_dataset ds;
    dg_partition part;
    dg_mpi_config mc;
    dg_pool *pool = NULL;
    double inproc[MDI_ROUNDS] = {0}, tcp[MDI_ROUNDS] = {0}, mpi[MDI_ROUNDS] = {0};
    double icpu[MDI_ROUNDS] = {0}, mcpu[MDI_ROUNDS] = {0}, q[MDI_ROUNDS];
    dg_result r = DG_OK;
    int rank, size, nw, round;
    if (dg_mpi_init(&argc, &argv) != DG_OK) return 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    nw = size - 1;
    if (nw < 1) {
        printf("bench mdgan_iter transport=mpi status=skipped (needs 2 ranks)\n");
        MPI_Finalize();
        return 0;
    }
    if (!mdi_dataset(&ds) || dg_partition_iid(&part, ds.n, nw, 1) != DG_OK) {
        printf("bench mdgan_iter transport=mpi status=failed (%s)\n", dg_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    dg_mpi_config_init(&mc);
    if (rank == 0 && dg_pool_create(&pool, 0) != DG_OK) MPI_Abort(MPI_COMM_WORLD, 1);
    for (round = 0; round < MDI_ROUNDS; round++) { /* every rank every round: none waits alone */
        dg_transport *t = NULL;
        dg_result rr;
        double c0;
        if (rank == 0) {
            c0 = bench_cpu_now();
            inproc[round] = mdi_inproc_ms(&ds, &part, nw, pool);
            icpu[round] = bench_cpu_now() - c0;
            tcp[round] = mdi_tcp_ms(&ds, &part, nw, pool);
        }
        sleepy_barrier();
        rr = dg_mpi_create(&t, MPI_COMM_WORLD, &mc);
        c0 = bench_cpu_now();
        if (rr == DG_OK && rank == 0)
            mpi[round] = mdi_server_ms(&ds, nw, t, pool);
        else if (rr == DG_OK)
            rr = mdi_worker(&ds, &part, nw, rank, t);
        c0 = bench_cpu_now() - c0;
        if (rr != DG_OK) r = rr;
        dg_transport_close(t);
        MPI_Reduce(&c0, &mcpu[round], 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    }
    if (rank == 0) {
        mdi_print("inproc", nw, inproc, NULL);
        mdi_print("tcp", nw, tcp, inproc);
        mdi_print("mpi", nw, mpi, inproc);
        for (round = 0; round < MDI_ROUNDS; round++)
            q[round] = icpu[round] > 0 ? 100.0 * (mcpu[round] / icpu[round] - 1.0) : 0;
        qsort(q, MDI_ROUNDS, sizeof *q, mdi_cmp);
        printf("bench mdgan_cpu transport=mpi workers=%d cpu_s=%.2f inproc_cpu_s=%.2f "
               "cpu_overhead=%.1f%% cpu_overhead_min=%.1f%% cpu_overhead_max=%.1f%%\n",
               nw, mdi_median(mcpu, MDI_ROUNDS), mdi_median(icpu, MDI_ROUNDS), q[MDI_ROUNDS / 2],
               q[0], q[MDI_ROUNDS - 1]);
    }
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
    MPI_Finalize();
    return r == DG_OK ? 0 : 1;
}
