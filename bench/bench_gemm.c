/* bench gemm: our GEMM against OpenBLAS (loaded at run time when
   libopenblas is installed) and against the machine's measured FMA peak,
   for square sizes and the im2col shapes of the reference DCGAN. */
#include "bench_common.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include <string.h>

typedef struct job {
    dg_pool *pool;
    bench_sgemm_fn ref;
    int ta, tb, m, n, k;
    float *a, *b, *c;
} job;

static void run_ours(void *arg)
{
    job *j = (job *)arg;
    dg_gemm(j->pool, j->ta, j->tb, j->m, j->n, j->k, 1.0f, j->a, j->ta ? j->m : j->k, j->b,
            j->tb ? j->k : j->n, 0.0f, j->c, j->n);
}

static void run_ref(void *arg)
{
    job *j = (job *)arg;
    /* CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 */
    j->ref(101, j->ta ? 112 : 111, j->tb ? 112 : 111, j->m, j->n, j->k, 1.0f, j->a,
           j->ta ? j->m : j->k, j->b, j->tb ? j->k : j->n, 0.0f, j->c, j->n);
}

int main(int argc, char **argv)
{
    static const int shapes[][5] = {
        /* m, n, k, ta, tb */
        {256, 256, 256, 0, 0}, {512, 512, 512, 0, 0}, {1024, 1024, 1024, 0, 0},
        {2048, 2048, 2048, 0, 0},
        /* reference DCGAN at batch 64: D conv2 forward, weight and input
           gradients (G's conv-transpose 1 uses the same three), conv1 ones */
        {128, 3136, 1024, 0, 0}, {128, 1024, 3136, 0, 1}, {1024, 3136, 128, 1, 0},
        {64, 12544, 16, 0, 0}, {64, 16, 12544, 0, 1}, {16, 12544, 64, 1, 0},
        /* G's linear layer: 64 x 6272 x 100 */
        {64, 6272, 100, 0, 1}};
    int n_shapes = (int)(sizeof shapes / sizeof *shapes), threads, s;
    bench_threads_fn set_threads = NULL;
    bench_sgemm_fn ref = bench_openblas(&set_threads);
    double peak[3] = {0, 0, 0};
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    for (threads = 1; threads <= 2; threads++) {
        peak[threads] = bench_fma_peak(threads);
        printf("bench fma_peak threads=%d gflops=%.1f\n", threads, peak[threads]);
    }
    if (!ref) printf("bench gemm status=reference_skipped reason=libopenblas.so.0_not_found (make bench-deps)\n");
    for (threads = 1; threads <= 2; threads++) {
        dg_pool *pool;
        if (dg_pool_create(&pool, threads) != DG_OK) return 1;
        if (ref && set_threads) set_threads(threads);
        for (s = 0; s < n_shapes; s++) {
            job j;
            size_t sa, sb, sc;
            double t, flops, g, rg = 0.0;
            dg_rng rng = dg_rng_make(1, 2, 3);
            j.pool = pool;
            j.ref = ref;
            j.m = shapes[s][0];
            j.n = shapes[s][1];
            j.k = shapes[s][2];
            j.ta = shapes[s][3];
            j.tb = shapes[s][4];
            if (quick && j.m == 2048) continue;
            sa = (size_t)j.m * j.k;
            sb = (size_t)j.k * j.n;
            sc = (size_t)j.m * j.n;
            j.a = malloc(sa * 4);
            j.b = malloc(sb * 4);
            j.c = malloc(sc * 4);
            dg_rng_fill_uniform(&rng, j.a, sa, -1, 1);
            dg_rng_fill_uniform(&rng, j.b, sb, -1, 1);
            flops = 2.0 * j.m * j.n * j.k;
            t = bench_time(run_ours, &j, quick ? 0.05 : 0.2, 3);
            g = flops / t / 1e9;
            if (ref) rg = flops / bench_time(run_ref, &j, quick ? 0.05 : 0.2, 3) / 1e9;
            printf("bench gemm m=%d n=%d k=%d ta=%d tb=%d threads=%d isa=%s gflops=%.1f", j.m, j.n,
                   j.k, j.ta, j.tb, threads, dg_isa_name(dg_pool_isa(pool)), g);
            if (ref) printf(" ref_gflops=%.1f ratio=%.2f", rg, g / rg);
            if (peak[threads] > 0) printf(" peak_pct=%.1f", 100.0 * g / peak[threads]);
            printf("\n");
            fflush(stdout);
            free(j.a);
            free(j.b);
            free(j.c);
        }
        dg_pool_destroy(pool);
    }
    return 0;
}
