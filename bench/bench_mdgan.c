/* bench/bench_mdgan.c: one MD-GAN iteration in-process for N = 1, 10, 50
   workers on one pool (wall time, and the roles' own compute time measured
   inside the roles), and the cost of one worker under MD-GAN (D only) and
   FL-GAN (G and D) for each architecture: parameters, FLOPs per iteration
   and planned memory, to check the paper's "factor two" claim.

   bench mdgan_iter transport=inproc workers=N ms=... compute_ms=...
     ms         wall time of one global iteration (server + all workers)
     compute_ms the sum of the roles' compute times in that iteration (the
                work itself; ms * threads / compute_ms ~ 1 means the pool
                is kept busy, the rest is queueing and scheduling)
   bench worker_cost arch=A mdgan_params= flgan_params= mdgan_flops= ...
     per worker and per iteration (b = 64, L = 1):
     MD-GAN: L x D fwd+bwd on 2b + D fwd+bwd on b (the feedback)
     FL-GAN: G fwd on b + the same D work + G bwd on b */
#include "bench_common.h" /* first: it sets _GNU_SOURCE */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

static void bench_iter(dg_pool *pool, const dg_dataset *ds, dg_arch arch, int n_workers, int iters)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    dg_partition part;
    dg_mdgan_run *run;
    double t0, w0, s0, wall, comp;
    int i;
    c.n_workers = n_workers;
    c.c = ds->c;
    c.h = ds->h;
    c.w = ds->w;
    c.arch = arch;
    c.batch = 64;
    c.local_epochs = 0; /* the iteration alone; a swap costs |θ| per worker */
    if (dg_partition_iid(&part, ds->n, n_workers, 1) ||
        dg_mdgan_run_create(&run, &c, pool, ds, &part, NULL, 0, NULL, 0)) {
        printf("bench mdgan_iter status=failed (%s)\n", dg_last_error());
        return;
    }
    dg_mdgan_run_iteration(run); /* warm-up: message buffers, page faults */
    t0 = bench_now();
    w0 = dg_mdgan_run_worker_compute(run);
    s0 = dg_mdgan_server_stats(dg_mdgan_run_server(run))->compute_s;
    for (i = 0; i < iters; i++) dg_mdgan_run_iteration(run);
    wall = (bench_now() - t0) / iters;
    comp = (dg_mdgan_run_worker_compute(run) - w0 +
            dg_mdgan_server_stats(dg_mdgan_run_server(run))->compute_s - s0) / iters;
    printf("bench mdgan_iter transport=inproc arch=%s workers=%d threads=%d b=64 ms=%.2f "
           "compute_ms=%.2f\n", arch == DG_ARCH_DCGAN ? "dcgan" : "mlp", n_workers,
           dg_pool_size(pool), 1e3 * wall, 1e3 * comp);
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
           "ratio_flops=%.2f ratio_mem=%.2f\n", arch == DG_ARCH_DCGAN ? "dcgan" : "mlp", b, pd,
           pd + pg, md_flops, fl_flops, md_mem / 1048576.0, fl_mem / 1048576.0,
           (double)(pd + pg) / pd, fl_flops / md_flops, fl_mem / md_mem);
    fflush(stdout);
    dg_net_free(g);
    dg_net_free(d);
}

int main(int argc, char **argv)
{
    dg_pool *pool;
    dg_dataset ds;
    int sizes[3] = {1, 10, 50}, i, quick = argc > 1 && !strcmp(argv[1], "--quick");
    if (dg_pool_create(&pool, 0) || dg_dataset_make_shapes(&ds, 6400, 1)) return 1;
    worker_cost(pool, DG_ARCH_DCGAN);
    worker_cost(pool, DG_ARCH_MLP);
    for (i = 0; i < 3; i++) bench_iter(pool, &ds, DG_ARCH_MLP, sizes[i], quick ? 2 : sizes[i] < 50 ? 10 : 4);
    for (i = 0; i < 3 && !quick; i++) bench_iter(pool, &ds, DG_ARCH_DCGAN, sizes[i], sizes[i] < 50 ? 3 : 1);
    dg_dataset_free(&ds);
    dg_pool_destroy(pool);
    return 0;
}
