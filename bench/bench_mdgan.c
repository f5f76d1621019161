/* bench/bench_mdgan.c: one MD-GAN iteration in-process for N = 1, 10, 50
   workers on one pool (wall time, and the roles' own compute time measured
   inside the roles), and the cost of one worker under MD-GAN (D only) and
   FL-GAN (G and D) for each architecture: parameters, FLOPs per iteration
   and planned memory, to check the paper's "factor two" claim.

   bench mdgan_iter transport=inproc arch=A workers=N threads=T b=B ms=... compute_ms=... peak_pct=...
                    busy=... mem_mb_per_worker=...
     ms         wall time of one global iteration (server + all workers);
                the best of a few rounds' means
     compute_ms the sum of the roles' compute times in that iteration (the
                work itself; ms * threads / compute_ms ~ 1 means the pool
                is kept busy, the rest is queueing and scheduling)
     peak_pct   the iteration's FLOPs (dg_net_train_flops: G forward and
                backward on k*b rows, per worker L D steps on 2b rows and
                the feedback pass on b, dg_gan_feedback_flops) per ms, over the FMA peak of T
                threads measured in the same run (bench_fma_peak)
     busy       compute_ms / (ms * threads): the share of the threads' time
                spent in the roles' work (1: the iteration is the workers'
                compute spread over the threads)
     mem_mb_per_worker
                the growth of resident memory from before the run was
                created to its end, over N (D, its Adam state and gradient,
                the worker's buffers, its share of the server and inboxes)
   `bench_mdgan mlp B` prints only the two lines of the MLP at N = 10 and
   batch B (all threads, then one).
   bench worker_cost arch=A mdgan_params= flgan_params= mdgan_flops= ...
     per worker and per iteration (b = 64, L = 1):
     MD-GAN: L x D fwd+bwd on 2b + D fwd+bwd on b (the feedback)
     FL-GAN: G fwd on b + the same D work + G bwd on b */
#include "bench_common.h" /* first: it sets _GNU_SOURCE */
#include <malloc.h>
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

/* FLOPs of one MD-GAN iteration of configuration c (k generated batches,
   L D steps per worker, no swap). */
static double iter_flops(const dg_mdgan_config *c)
{
    dg_net *g, *d;
    double f, b = c->batch;
    if (dg_build_generator(&g, c->arch, c->z_dim, 0, c->c, c->h, c->w) ||
        dg_build_discriminator(&d, c->arch, c->c, c->h, c->w, 1))
        return 0.0;
    f = dg_mdgan_k(c) * b * dg_net_train_flops(g, 0) +
        c->n_workers * b * (2.0 * c->disc_steps * dg_net_train_flops(d, 0) + dg_gan_feedback_flops(d));
    dg_net_free(g);
    dg_net_free(d);
    return f;
}

static void bench_iter(dg_pool *pool, const dg_dataset *ds, dg_arch arch, int n_workers, int b,
                       int iters, int rounds, double peak)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    dg_partition part;
    dg_mdgan_run *run;
    double best = 1e30, w0, s0, comp, flops, mem0;
    int i, round, done = 0;
    c.n_workers = n_workers;
    c.c = ds->c;
    c.h = ds->h;
    c.w = ds->w;
    c.arch = arch;
    c.batch = b;
    c.local_epochs = 0; /* the iteration alone; a swap costs |θ| per worker */
    malloc_trim(0); /* what earlier runs freed goes back, so that it is not reused unseen */
    mem0 = bench_mem_mb("VmRSS");
    if (dg_partition_iid(&part, ds->n, n_workers, 1) ||
        dg_mdgan_run_create(&run, &c, pool, ds, &part, NULL, 0, NULL, 0)) {
        printf("bench mdgan_iter status=failed (%s)\n", dg_last_error());
        return;
    }
    dg_mdgan_run_iteration(run); /* warm-up: message buffers, page faults */
    w0 = dg_mdgan_run_worker_compute(run);
    s0 = dg_mdgan_server_stats(dg_mdgan_run_server(run))->compute_s;
    for (round = 0; round < rounds; round++) {
        double t0 = bench_now(), t;
        for (i = 0; i < iters; i++) dg_mdgan_run_iteration(run);
        t = (bench_now() - t0) / iters;
        if (t < best) best = t;
        done += iters;
    }
    comp = (dg_mdgan_run_worker_compute(run) - w0 +
            dg_mdgan_server_stats(dg_mdgan_run_server(run))->compute_s - s0) / done;
    flops = iter_flops(&c);
    printf("bench mdgan_iter transport=inproc arch=%s workers=%d threads=%d b=%d ms=%.2f "
           "compute_ms=%.2f", dg_arch_name(arch), n_workers,
           dg_pool_size(pool), b, 1e3 * best, 1e3 * comp);
    if (peak > 0 && flops > 0) printf(" peak_pct=%.1f", 100.0 * flops / best / 1e9 / peak);
    printf(" busy=%.2f mem_mb_per_worker=%.1f\n", comp / (best * dg_pool_size(pool)),
           (bench_mem_mb("VmRSS") - mem0) / n_workers);
    fflush(stdout);
    dg_mdgan_run_free(run);
    dg_partition_free(&part);
}

static void worker_cost(dg_pool *pool, dg_arch arch)
{
    const int b = 64;
    dg_net *g, *d;
    double fbd, fbg, md_flops, fl_flops, md_mem, fl_mem;
    size_t pg, pd;
    dg_build_generator(&g, arch, 100, 0, 1, 28, 28);
    dg_build_discriminator(&d, arch, 1, 28, 28, 1);
    dg_net_plan(g, pool, b);
    dg_net_plan(d, pool, b);
    pg = dg_net_param_count(g);
    pd = dg_net_param_count(d);
    fbd = dg_net_flops(d, 1); /* forward + backward, per sample */
    fbg = dg_net_flops(g, 1);
    /* D step: forward and backward on b real and b fake; feedback: forward
       and backward on b (input gradient included) */
    md_flops = 3.0 * b * fbd;
    fl_flops = md_flops + b * fbg;
    /* planned nets + Adam state (2 floats per parameter) + batch buffers
       (MD-GAN: X_g, X_d, a real batch, the feedback; FL-GAN: real, noise,
       input gradient) */
    md_mem = (double)dg_net_memory(d) + 8.0 * pd + 4.0 * 4 * b * 784;
    fl_mem = (double)dg_net_memory(d) + dg_net_memory(g) + 8.0 * (pd + pg) + 4.0 * b * (2 * 784 + 100);
    printf("bench worker_cost arch=%s b=%d mdgan_params=%zu flgan_params=%zu mdgan_flops=%.3g "
           "flgan_flops=%.3g mdgan_mem_mb=%.1f flgan_mem_mb=%.1f ratio_params=%.2f "
           "ratio_flops=%.2f ratio_mem=%.2f\n", dg_arch_name(arch), b, pd,
           pd + pg, md_flops, fl_flops, md_mem / 1048576.0, fl_mem / 1048576.0,
           (double)(pd + pg) / pd, fl_flops / md_flops, fl_mem / md_mem);
    fflush(stdout);
    dg_net_free(g);
    dg_net_free(d);
}

int main(int argc, char **argv)
{
    dg_pool *pool, *one;
    dg_dataset ds;
    double peak, peak1;
    int sizes[3] = {1, 10, 50}, i, quick = argc > 1 && !strcmp(argv[1], "--quick");
    if (dg_pool_create(&pool, 0) || dg_pool_create(&one, 1) || dg_dataset_make_shapes(&ds, 6400, 1))
        return 1;
    peak = bench_fma_peak(dg_pool_size(pool));
    peak1 = bench_fma_peak(1);
    if (argc > 2 && !strcmp(argv[1], "mlp")) { /* "mlp B": the two N = 10 lines of batch B only */
        int b = atoi(argv[2]);
        bench_iter(pool, &ds, DG_ARCH_MLP, 10, b, b <= 10 ? 20 : 4, 5, peak);
        bench_iter(one, &ds, DG_ARCH_MLP, 10, b, b <= 10 ? 20 : 4, 5, peak1);
        goto done;
    }
    worker_cost(pool, DG_ARCH_DCGAN);
    worker_cost(pool, DG_ARCH_MLP);
    /* the MD-GAN paper's MLP at its batches, N = 10, on all threads and on
       one (the ratio says how busy the driver keeps the cores) */
    for (i = 0; i < 2; i++) {
        int b = i ? 100 : 10;
        bench_iter(pool, &ds, DG_ARCH_MLP, 10, b, quick ? 2 : b == 10 ? 20 : 4, quick ? 1 : 5, peak);
        if (!quick) bench_iter(one, &ds, DG_ARCH_MLP, 10, b, b == 10 ? 20 : 4, 5, peak1);
    }
    for (i = 0; i < 3; i++) bench_iter(pool, &ds, DG_ARCH_MLP, sizes[i], 64, quick ? 2 : sizes[i] < 50 ? 10 : 4, 1, peak);
    /* scale: the paper's MLP at b = 10 with N = 100 workers on this pool,
       and N = 1000 on the tiny MLP (32 units) */
    bench_iter(pool, &ds, DG_ARCH_MLP, 100, 10, quick ? 1 : 5, quick ? 1 : 3, peak);
    bench_iter(pool, &ds, DG_ARCH_TINY, 1000, 10, quick ? 1 : 5, quick ? 1 : 3, peak);
    for (i = 0; i < 3 && !quick; i++) bench_iter(pool, &ds, DG_ARCH_DCGAN, sizes[i], 64, sizes[i] < 50 ? 3 : 1, 1, peak);
done:
    dg_dataset_free(&ds);
    dg_pool_destroy(one);
    dg_pool_destroy(pool);
    return 0;
}
