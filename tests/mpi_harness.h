/* tests/mpi_harness.h: tests/harness.h for the programs run under mpirun
 * (tests/mpi_*.c).  Every rank runs every test; a test passes when it passes
 * on all ranks, and rank 0 prints the lines:
 *
 *   int main(int argc, char **argv)
 *   { if (!mpi_start(&argc, &argv, 2, 0)) return 1;   at least 2 ranks
 *     MPI_RUN(name); ... return mpi_done(); }
 *
 * Include after distgan.h (DISTGAN_MPI, DISTGAN_IMPLEMENTATION). */
#ifndef DG_TEST_MPI_HARNESS_H
#define DG_TEST_MPI_HARNESS_H
#include "harness.h"

static int rank, size;

#define MPI_RUN(name)                                                              \
    do {                                                                           \
        int mine_, all_ = 0;                                                       \
        th_cur_failed = 0;                                                         \
        name();                                                                    \
        mine_ = th_cur_failed;                                                     \
        MPI_Allreduce(&mine_, &all_, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);          \
        if (all_) th_failed++; else th_passed++;                                   \
        if (rank == 0) printf("%s %s\n", all_ ? "FAIL" : "ok  ", #name);           \
        fflush(stdout);                                                            \
    } while (0)

/* dg_mpi_init, then rank and size.  0 when it fails, or when size is below
   min or (max > 0) above max: rank 0 says so, and MPI is finalized. */
static int mpi_start(int *argc, char ***argv, int min, int max)
{
    if (dg_mpi_init(argc, argv) != DG_OK) {
        printf("dg_mpi_init: %s\n", dg_last_error());
        return 0;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size >= min && (max <= 0 || size <= max)) return 1;
    if (rank == 0) {
        if (min == max) printf("run with %d ranks (mpirun -n %d)\n", min, min);
        else printf("run with at least %d ranks (mpirun -n %d)\n", min, min + 1);
        printf("0 passed, 1 failed\n");
    }
    MPI_Finalize();
    return 0;
}

/* MPI_Finalize; rank 0 returns th_done() (the "N passed, N failed" line) */
static int mpi_done(void)
{
    MPI_Finalize();
    if (rank == 0) return th_done();
    return th_failed ? 1 : 0;
}
#endif
