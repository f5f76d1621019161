/* bench dcgan_step: one training step of the reference DCGAN at batch 64
   (one D update on a real and a fake batch, one G update through D,
   non-saturating BCE-with-logits loss, Adam 2e-4 / 0.5 / 0.999), against
   PyTorch CPU running bench/dcgan_ref.py when Debian's python3-torch is
   installed.  Each configuration runs in its own process, so rss_mb is
   that configuration's peak.  peak_pct is the step's rate over the FMA
   peak of as many threads (bench_fma_peak), measured in the same run. */
#include "bench_common.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { B = 64, Z = 100 };

typedef struct dcgan {
    dg_pool *pool;
    dg_net *g, *d;
    dg_optim og, od;
    float z[B * Z], real[B * 784], fake[B * 784], dlogit[B];
    dg_rng rng;
} dcgan;

static int build(dcgan *m, int threads)
{
    dg_net *g, *d;
    if (dg_pool_create(&m->pool, threads)) return 1;
    if (dg_net_create(&g, Z, 1, 1) || dg_net_linear(g, 128 * 7 * 7) || dg_net_batchnorm(g) ||
        dg_net_relu(g) || dg_net_reshape(g, 128, 7, 7) || dg_net_conv_transpose2d(g, 64, 4, 2, 1, 0) ||
        dg_net_batchnorm(g) || dg_net_relu(g) || dg_net_conv_transpose2d(g, 1, 4, 2, 1, 0) ||
        dg_net_tanh(g) || dg_net_plan(g, m->pool, B) || dg_net_init(g, 1, 0.02f))
        return 1;
    if (dg_net_create(&d, 1, 28, 28) || dg_net_conv2d(d, 64, 4, 2, 1) || dg_net_leaky_relu(d, 0.2f) ||
        dg_net_conv2d(d, 128, 4, 2, 1) || dg_net_batchnorm(d) || dg_net_leaky_relu(d, 0.2f) ||
        dg_net_flatten(d) || dg_net_linear(d, 1) || dg_net_plan(d, m->pool, B) ||
        dg_net_init(d, 2, 0.02f))
        return 1;
    m->g = g;
    m->d = d;
    /* G and D run one after the other: one scratch */
    if (dg_net_share_scratch(g, d) ||
        dg_optim_adam(&m->og, dg_net_param_count(g), 2e-4f, 0.5f, 0.999f, 1e-8f) ||
        dg_optim_adam(&m->od, dg_net_param_count(d), 2e-4f, 0.5f, 0.999f, 1e-8f))
        return 1;
    m->rng = dg_rng_make(1, 2, 3);
    dg_rng_fill_uniform(&m->rng, m->real, B * 784, -1, 1);
    return 0;
}

static void step(void *arg)
{
    dcgan *m = (dcgan *)arg;
    const float *y, *dx;
    float loss, one = 1.0f, zero = 0.0f;
    dg_rng_fill_normal(&m->rng, m->z, B * Z, 0, 1);
    dg_net_forward(m->g, m->z, B, 1, &y);
    memcpy(m->fake, y, sizeof m->fake);
    dg_net_zero_grad(m->d);
    dg_net_forward(m->d, m->real, B, 1, &y);
    dg_loss_bce_logits(y, 1, &one, 0, B, 1.0f / B, m->dlogit, &loss);
    dg_net_backward(m->d, m->dlogit, NULL);
    dg_net_forward(m->d, m->fake, B, 1, &y);
    dg_loss_bce_logits(y, 1, &zero, 0, B, 1.0f / B, m->dlogit, &loss);
    dg_net_backward(m->d, m->dlogit, NULL);
    dg_optim_step(&m->od, m->pool, dg_net_params(m->d), dg_net_grads(m->d));
    dg_net_forward(m->d, m->fake, B, 1, &y);
    dg_loss_bce_logits(y, 1, &one, 0, B, 1.0f / B, m->dlogit, &loss);
    dg_net_backward(m->d, m->dlogit, &dx);
    dg_net_zero_grad(m->g);
    dg_net_backward(m->g, dx, NULL);
    dg_optim_step(&m->og, m->pool, dg_net_params(m->g), dg_net_grads(m->g));
}

/* runs in a child process: prints "ms rss flops" on fd */
static void measure_ours(int threads, int fd)
{
    static dcgan m;
    char line[128];
    double ms, gflop;
    if (build(&m, threads)) _exit(1);
    ms = 1e3 * bench_time(step, &m, 1.0, 3);
    /* one step: G forward and backward once, D forward and backward three
       times, the input gradient only in the last one (dg_net_train_flops
       counts what each pass computes) */
    gflop = B * (dg_net_train_flops(m.g, 0) + 2 * dg_net_train_flops(m.d, 0) +
                 dg_net_train_flops(m.d, 1)) / 1e9;
    snprintf(line, sizeof line, "%.3f %.1f %.3f %s\n", ms, bench_rss_mb(), gflop,
             dg_isa_name(dg_pool_isa(m.pool)));
    if (write(fd, line, strlen(line)) < 0) _exit(1);
    _exit(0);
}

static int run_child(int threads, char *out, size_t cap)
{
    int p[2], status;
    ssize_t n;
    pid_t pid;
    if (pipe(p)) return 1;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        close(p[0]);
        measure_ours(threads, p[1]);
    }
    close(p[1]);
    n = read(p[0], out, cap - 1);
    close(p[0]);
    waitpid(pid, &status, 0);
    if (n <= 0) return 1;
    out[n] = 0;
    return 0;
}

static int run_torch(int threads, double *ms, double *rss)
{
    char args[64], out[512];
    snprintf(args, sizeof args, "dcgan_ref.py %d 30", threads);
    return !bench_torch(args, out, sizeof out) && bench_field(out, "ms", ms) &&
           bench_field(out, "rss_mb", rss);
}

int main(void)
{
    int threads;
    for (threads = 1; threads <= 2; threads++) {
        char out[128], isa[32];
        double ms, rss, gflop, rms = 0, rrss = 0, peak = bench_fma_peak(threads);
        if (run_child(threads, out, sizeof out) ||
            sscanf(out, "%lf %lf %lf %31s", &ms, &rss, &gflop, isa) != 4) {
            printf("bench dcgan_step threads=%d status=failed\n", threads);
            continue;
        }
        printf("bench dcgan_step batch=%d threads=%d isa=%s ms=%.1f gflops=%.1f", B, threads, isa,
               ms, gflop / (ms / 1e3));
        if (peak > 0) printf(" peak_pct=%.1f", 100.0 * gflop / (ms / 1e3) / peak);
        printf(" rss_mb=%.0f", rss);
        if (run_torch(threads, &rms, &rrss))
            printf(" ref_ms=%.1f ref_rss_mb=%.0f speedup=%.2f\n", rms, rrss, rms / ms);
        else
            printf(" ref=skipped reason=python3-torch_not_installed (make bench-deps)\n");
        fflush(stdout);
    }
    return 0;
}
