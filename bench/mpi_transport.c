/* bench/mpi_transport.c: what the MPI transport costs (mpirun -n 2).
 *
 *   bench mpi_throughput size=S msgs=N gbps=... raw_gbps=... ratio=...
 *       ratio_min=... ratio_max=... crc_ratio=...
 *     float32 messages of S bytes from rank 0 to rank 1 through dg_mpi
 *     (pooled messages, dg_transport_send / recv) against a plain
 *     MPI_Send / MPI_Recv loop of the same sizes from one buffer written
 *     once (as the pool's buffers are when they are made: an untouched
 *     calloc'd buffer maps the kernel's zero page, which MPI's copy reads
 *     from cache whatever the size), in the same run: ROUNDS
 *     rounds, ours and raw alternating; gbps and raw_gbps are the medians,
 *     ratio = their quotient, ratio_min / ratio_max the spread of the
 *     per-round quotients (the machine is shared: read the spread).
 *     crc_ratio: ours with checksum = 1 (a CRC-32 over every frame).
 *     written_ratio: both loops with the sender writing every payload
 *     before it sends (memset), as a role does: the plain loop resends one
 *     buffer that stays in cache, while our sender goes through the pool's
 *     buffers of its send window.
 *   bench mpi_wake gap_ms=5 n=... us=... p90_us=... raw_us=... raw_p90_us=...
 *     how late a waiting receiver gets a message: rank 0 sends an 8-byte
 *     message every 5 ms (sleeping between), rank 1 waits in recv; us is
 *     the median of (receipt - send) over n messages (one host, one
 *     clock), p90_us its 90th percentile; raw_*: the same with MPI_Send to
 *     a blocking MPI_Recv (which spins on a core the whole time).
 *   bench mpi_idle seconds=2 thread_cpu_pct=... process_cpu_pct=...
 *     a receiver waiting 2 s with nothing coming: CPU time of its thread
 *     and of its whole process (Open MPI's own threads included).
 *   `bench_mpi_transport ours SIZE N` or `... raw SIZE N` (mpirun -n 2)
 *   sends N messages of SIZE bytes one way only (after a warm-up), for
 *   `perf record` / `perf stat` of either rank; `... wake` prints the
 *   mpi_wake and mpi_idle lines only. */
#include "bench_common.h" /* _GNU_SOURCE first: RUSAGE_THREAD */
#include <sys/resource.h>
#define DISTGAN_MPI
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#define ROUNDS 7

static int rank;

static double gbps_ours(dg_transport *t, size_t bytes, int n, int write)
{
    dg_part_kind kind = DG_PART_F32;
    size_t floats = bytes / 4;
    double t0;
    int i;
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = bench_now();
    for (i = 0; i < n; i++) {
        dg_msg *m;
        if (rank == 0) {
            if (dg_msg_create(t, DG_MSG_FEEDBACK, 0, 1, i, 1, &kind, &floats, &m) != DG_OK)
                return 0;
            if (write) memset(m->part[0].data, i, bytes);
            if (dg_transport_send(t, m) != DG_OK) return 0;
        } else {
            if (dg_transport_recv(t, 1, 60000, &m) != DG_OK) return 0;
            dg_msg_free(t, m);
        }
    }
    return (double)bytes * n / (bench_now() - t0) / 1e9;
}

static double gbps_raw(char *buf, size_t bytes, int n, int write)
{
    double t0;
    int i;
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = bench_now();
    for (i = 0; i < n; i++) {
        if (rank == 0 && write) memset(buf, i, bytes);
        if (rank == 0)
            MPI_Send(buf, (int)bytes, MPI_BYTE, 1, 7, MPI_COMM_WORLD);
        else
            MPI_Recv(buf, (int)bytes, MPI_BYTE, 0, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    return (double)bytes * n / (bench_now() - t0) / 1e9;
}

static void throughput(dg_transport *t, dg_transport *tc, char *buf, size_t bytes, int n)
{
    double ours[ROUNDS], raw[ROUNDS], crc[ROUNDS], q[ROUNDS], wo[ROUNDS], wr[ROUNDS], mo, mr, mc;
    int r;
    gbps_ours(t, bytes, n / 4 + 1, 0); /* warm-up: the pool's buffers, MPI's connections */
    gbps_ours(tc, bytes, n / 4 + 1, 0);
    gbps_raw(buf, bytes, n / 4 + 1, 0);
    for (r = 0; r < ROUNDS; r++) {
        ours[r] = gbps_ours(t, bytes, n, 0);
        raw[r] = gbps_raw(buf, bytes, n, 0);
        crc[r] = gbps_ours(tc, bytes, n, 0);
        wo[r] = gbps_ours(t, bytes, n, 1);
        wr[r] = gbps_raw(buf, bytes, n, 1);
        q[r] = raw[r] > 0 ? ours[r] / raw[r] : 0;
    }
    if (rank != 1) return; /* the receiver's clock saw the last byte */
    mo = bench_median(ours, ROUNDS);
    mr = bench_median(raw, ROUNDS);
    mc = bench_median(crc, ROUNDS);
    bench_median(q, ROUNDS); /* sorted: the extremes */
    printf("bench mpi_throughput size=%zu msgs=%d gbps=%.3f raw_gbps=%.3f ratio=%.2f "
           "ratio_min=%.2f ratio_max=%.2f crc_ratio=%.2f written_ratio=%.2f\n",
           bytes, n, mo, mr, mo / mr, q[0], q[ROUNDS - 1], mc / mr,
           bench_median(wo, ROUNDS) / bench_median(wr, ROUNDS));
    fflush(stdout);
}

#define WAKES 100

/* rank 0 sends WAKES messages 5 ms apart, rank 1 notes how long each took
   to come (raw: plain MPI_Send / MPI_Recv). */
static void wake_lag(dg_transport *t, int raw, double *lag)
{
    dg_part_kind kind = DG_PART_BYTES;
    size_t n = sizeof(double);
    int i;
    MPI_Barrier(MPI_COMM_WORLD);
    for (i = 0; i < WAKES; i++) {
        double sent, now;
        dg_msg *m;
        if (rank == 0) {
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
            now = bench_now();
            if (raw) {
                MPI_Send(&now, 1, MPI_DOUBLE, 1, 9, MPI_COMM_WORLD);
            } else if (dg_msg_create(t, DG_MSG_FEEDBACK, 0, 1, i, 1, &kind, &n, &m) == DG_OK) {
                memcpy(m->part[0].data, &now, sizeof now);
                dg_transport_send(t, m);
            }
        } else if (raw) {
            MPI_Recv(&sent, 1, MPI_DOUBLE, 0, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            lag[i] = bench_now() - sent;
        } else if (dg_transport_recv(t, 1, 60000, &m) == DG_OK) {
            now = bench_now();
            memcpy(&sent, m->part[0].data, sizeof sent);
            lag[i] = now - sent;
            dg_msg_free(t, m);
        }
    }
}

static void wake(dg_transport *t)
{
    double ours[WAKES] = {0}, raw[WAKES] = {0}, mo, mr;
    wake_lag(t, 0, ours);
    wake_lag(t, 1, raw);
    if (rank != 1) return;
    mo = bench_median(ours, WAKES); /* sorted: the 90th percentile */
    mr = bench_median(raw, WAKES);
    printf("bench mpi_wake gap_ms=5 n=%d us=%.1f p90_us=%.1f raw_us=%.1f raw_p90_us=%.1f\n",
           WAKES, 1e6 * mo, 1e6 * ours[WAKES * 9 / 10], 1e6 * mr, 1e6 * raw[WAKES * 9 / 10]);
    fflush(stdout);
}

static double cpu_s(int who)
{
    struct rusage u;
    getrusage(who, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec +
           (double)u.ru_stime.tv_sec + 1e-6 * (double)u.ru_stime.tv_usec;
}

int main(int argc, char **argv)
{
    dg_transport *t = NULL, *tc = NULL;
    dg_mpi_config c;
    char *buf;
    int size;
    if (dg_mpi_init(&argc, &argv) != DG_OK) {
        printf("bench mpi_throughput status=failed (%s)\n", dg_last_error());
        return 0;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    dg_mpi_config_init(&c);
    if (size != 2 || dg_mpi_create(&t, MPI_COMM_WORLD, &c) != DG_OK) {
        if (rank == 0)
            printf("bench mpi_throughput status=failed (run on 2 ranks: %s)\n", dg_last_error());
        MPI_Finalize();
        return 0;
    }
    c.checksum = 1;
    dg_mpi_create(&tc, MPI_COMM_WORLD, &c);
    buf = (char *)malloc(16 << 20);
    memset(buf, 0x5a, 16 << 20); /* real pages, not the zero page */
    if (argc > 3 && (!strcmp(argv[1], "ours") || !strcmp(argv[1], "raw")) &&
        (size_t)atol(argv[2]) <= (16 << 20)) {
        size_t bytes = (size_t)atol(argv[2]);
        int n = atoi(argv[3]), raw = !strcmp(argv[1], "raw");
        double g;
        if (raw) gbps_raw(buf, bytes, n / 4 + 1, 0);
        else gbps_ours(t, bytes, n / 4 + 1, 0);
        g = raw ? gbps_raw(buf, bytes, n, 0) : gbps_ours(t, bytes, n, 0);
        if (rank == 1)
            printf("bench mpi_one_way %s size=%zu msgs=%d gbps=%.3f\n", argv[1], bytes, n, g);
        argc = 0; /* no throughput lines */
    }
    if (argc > 1 && !strcmp(argv[1], "wake")) {
        argc = 1; /* no throughput lines */
    } else if (argc) {
        throughput(t, tc, buf, 1024, 20000);
        throughput(t, tc, buf, 64 << 10, 2000);
        throughput(t, tc, buf, 1 << 20, 200);
        throughput(t, tc, buf, 16 << 20, 16);
    }
    if (argc) wake(t);
    MPI_Barrier(MPI_COMM_WORLD);
    if (argc && rank == 1) { /* nothing comes for 2 s */
        dg_msg *m;
        double c0 = cpu_s(RUSAGE_THREAD), p0 = cpu_s(RUSAGE_SELF), t0 = bench_now(), wall;
        dg_transport_recv(t, 1, 2000, &m);
        wall = bench_now() - t0;
        printf("bench mpi_idle seconds=%.2f thread_cpu_pct=%.2f process_cpu_pct=%.2f\n", wall,
               100.0 * (cpu_s(RUSAGE_THREAD) - c0) / wall,
               100.0 * (cpu_s(RUSAGE_SELF) - p0) / wall);
    }
    free(buf);
    dg_transport_close(tc);
    dg_transport_close(t);
    MPI_Finalize();
    return 0;
}
