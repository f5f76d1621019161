/* bench/bench_codec.c: encode and decode throughput of every codec of GAN
 * traffic (dg_codec) on one thread, on the sizes the roles send: a batch
 * of 64 x 784 values in rows (MD-GAN's generated batch or feedback) and the
 * paper's MLP GAN on 28x28 images, G + D, one segment per tensor (an FL-GAN
 * upload, with its residual).  gbps counts float32 input bytes (4 n) per
 * second of CPU time, both ways (wall_gbps per second of wall time);
 * ratio = 4 n / encoded bytes.
 *
 *   bench codec name=int8 data=batch n=50176 enc_gbps=... dec_gbps=... ratio=... */
#include "bench_common.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

typedef struct job {
    dg_codec c;
    const float *x;
    float *y, *residual;
    size_t n, len;
    const uint32_t *segs;
    uint32_t n_segs;
    unsigned char *buf;
    size_t cap;
} job;

static void enc(void *arg)
{
    job *j = (job *)arg;
    if (dg_codec_encode(&j->c, j->x, j->n, j->segs, j->n_segs, j->residual, j->buf, j->cap,
                        &j->len))
        abort();
}

static void dec(void *arg)
{
    job *j = (job *)arg;
    if (dg_codec_decode(j->c.kind, j->buf, j->len, j->y, j->n)) abort();
}

static void run(const char *data, const float *x, size_t n, const uint32_t *segs, uint32_t n_segs,
                int residual)
{
    static const dg_codec_kind kinds[] = {DG_CODEC_F16, DG_CODEC_INT8, DG_CODEC_TOPK, DG_CODEC_IBM};
    size_t k;
    for (k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        job j;
        double te, td, ce, cd;
        memset(&j, 0, sizeof j);
        j.c.kind = kinds[k];
        j.x = x;
        j.n = n;
        j.segs = segs;
        j.n_segs = n_segs;
        j.cap = dg_codec_bound(&j.c, n, n_segs);
        j.buf = (unsigned char *)aligned_alloc(64, (j.cap + 63) & ~(size_t)63);
        j.y = (float *)malloc(4 * n);
        j.residual = residual && kinds[k] >= DG_CODEC_TOPK ? (float *)calloc(n, 4) : NULL;
        if (!j.buf || !j.y) abort();
        enc(&j);
        te = bench_time_cpu(enc, &j, 1, 0.2, 3, &ce);
        td = bench_time_cpu(dec, &j, 1, 0.2, 3, &cd);
        /* gbps from the process's CPU time (the machine is shared: wall time
           counts the other processes' turns too), wall beside it */
        printf("bench codec name=%s data=%s n=%zu residual=%d enc_gbps=%.2f dec_gbps=%.2f "
               "ratio=%.1f enc_wall_gbps=%.2f dec_wall_gbps=%.2f\n", dg_codec_name(kinds[k]),
               data, n, j.residual != NULL, 4e-9 * n / ce, 4e-9 * n / cd, 4.0 * n / j.len,
               4e-9 * n / te, 4e-9 * n / td);
        fflush(stdout);
        free(j.buf);
        free(j.y);
        free(j.residual);
    }
}

/* the tensors of the paper's MLP G and D on 28x28 images, end to end */
static uint32_t model_segments(uint32_t *segs, size_t *n)
{
    dg_net *net[2];
    uint32_t s = 0;
    int i, l;
    *n = 0;
    if (dg_build_generator(&net[0], DG_ARCH_MLP, 100, 0, 1, 28, 28) ||
        dg_build_discriminator(&net[1], DG_ARCH_MLP, 1, 28, 28, 1))
        abort();
    for (i = 0; i < 2; i++) {
        for (l = 0; l < dg_net_layer_count(net[i]); l++) {
            dg_layer_info li;
            dg_net_layer_info(net[i], l, &li);
            if (li.weight_count) segs[s++] = (uint32_t)li.weight_count;
            if (li.param_count > li.weight_count)
                segs[s++] = (uint32_t)(li.param_count - li.weight_count);
        }
        *n += dg_net_param_count(net[i]);
        dg_net_free(net[i]);
    }
    return s;
}

int main(void)
{
    enum { B = 64, D = 784 };
    static uint32_t rows[B], segs[256];
    dg_rng r = dg_rng_make(1, 2, 3);
    float *x;
    size_t i, n;
    uint32_t s;
    for (i = 0; i < B; i++) rows[i] = D;
    /* a batch: tanh images in [-1, 1] */
    x = (float *)malloc(sizeof(float) * B * D);
    for (i = 0; i < (size_t)B * D; i++) x[i] = tanhf(2.0f * (dg_rng_uniform(&r) - 0.5f) * 3.0f);
    run("batch64x784", x, (size_t)B * D, rows, B, 0);
    free(x);
    /* a model delta: small Gaussian-ish values */
    s = model_segments(segs, &n);
    x = (float *)malloc(sizeof(float) * n);
    for (i = 0; i < n; i++) x[i] = 1e-3f * (dg_rng_uniform(&r) + dg_rng_uniform(&r) - 1.0f);
    run("mlp_gan", x, n, segs, s, 1);
    free(x);
    return 0;
}
