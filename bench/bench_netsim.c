/* bench/bench_netsim.c: what the network model (dg_netsim) costs the host.
   The same MD-GAN run (MLP, N workers, b = 64, built-in shapes data) in
   process, once plain and once over the edge profile (jitter, losses, a
   straggler: every draw of the model is exercised), iterations of the two
   interleaved in rounds so that the load of a shared machine hits both
   alike (which one goes first alternates); the best round's mean of each.

   bench netsim_overhead arch=mlp workers=N threads=T b=64 plain_ms=... netsim_ms=...
                         overhead_pct=... plain_cpu_ms=... netsim_cpu_ms=... cpu_overhead_pct=...
                         sim_s_per_iter=...
     plain_ms, netsim_ms  host wall time of one iteration without and with
                          the model (target: overhead_pct <= 5)
     *_cpu_ms             the same in process CPU time (less sensitive to the
                          other users of a shared machine)
     sim_s_per_iter       the simulated time of one iteration on the edge
                          network (the server's clock / iterations)
   bench netsim_message bytes=B plain_ns=... netsim_ns=... extra_ns=...
     one send + receive of a B-byte-payload message on one thread, plain
     in-process and through the model: extra_ns, times the messages of an
     iteration (3N for MD-GAN), bounds the model's cost independently of the
     load of the machine */
#include "bench_common.h" /* first: it sets _GNU_SOURCE */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct pingpong {
    dg_transport *t;
    size_t floats;
} pingpong;

static void pingpong_once(void *arg)
{
    pingpong *p = (pingpong *)arg;
    dg_part_kind k = DG_PART_F32;
    dg_msg *m;
    int i;
    for (i = 0; i < 100; i++) {
        if (dg_msg_create(p->t, DG_MSG_USER, 1, 0, i, 1, &k, &p->floats, &m) ||
            dg_transport_send(p->t, m) || dg_transport_recv(p->t, 0, 0, &m))
            return;
        dg_msg_free(p->t, m);
    }
}

static void bench_message(size_t floats)
{
    dg_netsim_config nc;
    dg_transport *in[2], *t[2];
    double ns[2];
    int k;
    if (dg_netsim_profile("edge", &nc) || dg_inproc_create(&in[0], 2, 0, 0) ||
        dg_inproc_create(&in[1], 2, 0, 0) || dg_netsim_create(&t[1], in[1], &nc)) {
        printf("bench netsim_message status=failed (%s)\n", dg_last_error());
        return;
    }
    t[0] = in[0];
    for (k = 0; k < 2; k++) {
        pingpong p;
        p.t = t[k];
        p.floats = floats;
        ns[k] = 1e9 * bench_time(pingpong_once, &p, 0.05, 5) / 100;
    }
    printf("bench netsim_message bytes=%zu plain_ns=%.0f netsim_ns=%.0f extra_ns=%.0f\n",
           4 * floats, ns[0], ns[1], ns[1] - ns[0]);
    for (k = 0; k < 2; k++) dg_transport_close(t[k]);
}

static void bench_overhead(dg_pool *pool, const dg_dataset *ds, int n_workers, int iters,
                           int rounds)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    dg_netsim_config nc;
    dg_partition part;
    dg_mdgan_run *run[2] = {NULL, NULL};
    double best[2] = {1e30, 1e30}, cpu[2] = {1e30, 1e30};
    int i, j, k, round;
    c.n_workers = n_workers;
    c.c = ds->c;
    c.h = ds->h;
    c.w = ds->w;
    c.arch = DG_ARCH_MLP;
    c.batch = 64;
    if (dg_netsim_profile("edge", &nc) || dg_partition_iid(&part, ds->n, n_workers, 1) ||
        dg_mdgan_run_create(&run[0], &c, pool, ds, &part, NULL, 0, NULL, 0) ||
        dg_mdgan_run_create(&run[1], &c, pool, ds, &part, NULL, 0, NULL, 0) ||
        dg_mdgan_run_set_network(run[1], &nc)) {
        printf("bench netsim_overhead status=failed (%s)\n", dg_last_error());
        return;
    }
    for (k = 0; k < 2; k++) dg_mdgan_run_iteration(run[k]); /* warm-up */
    for (round = 0; round < rounds; round++)
        for (j = 0; j < 2; j++) {
            double t0, c0, t, u;
            k = (round + j) % 2; /* which goes first alternates */
            t0 = bench_now();
            c0 = cpu_now();
            for (i = 0; i < iters; i++) dg_mdgan_run_iteration(run[k]);
            t = (bench_now() - t0) / iters;
            u = (cpu_now() - c0) / iters;
            if (t < best[k]) best[k] = t;
            if (u < cpu[k]) cpu[k] = u;
        }
    printf("bench netsim_overhead arch=mlp workers=%d threads=%d b=%d plain_ms=%.3f netsim_ms=%.3f "
           "overhead_pct=%.1f plain_cpu_ms=%.3f netsim_cpu_ms=%.3f cpu_overhead_pct=%.1f "
           "sim_s_per_iter=%.3f\n", n_workers, dg_pool_size(pool), c.batch,
           1e3 * best[0], 1e3 * best[1], 100.0 * (best[1] / best[0] - 1.0), 1e3 * cpu[0],
           1e3 * cpu[1], 100.0 * (cpu[1] / cpu[0] - 1.0),
           dg_netsim_clock(dg_mdgan_run_transport(run[1]), DG_PEER_SERVER) /
               (double)(1 + rounds * iters));
    fflush(stdout);
    for (k = 0; k < 2; k++) dg_mdgan_run_free(run[k]);
    dg_partition_free(&part);
}

int main(int argc, char **argv)
{
    dg_pool *pool;
    dg_dataset ds;
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    if (dg_pool_create(&pool, 0) || dg_dataset_make_shapes(&ds, 6400, 1)) return 1;
    bench_message(16);
    bench_message(64 * 784);
    bench_overhead(pool, &ds, 10, quick ? 2 : 3, quick ? 2 : 15);
    bench_overhead(pool, &ds, 50, 1, quick ? 2 : 8);
    dg_dataset_free(&ds);
    dg_pool_destroy(pool);
    return 0;
}
