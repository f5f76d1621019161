/* bench gan_step / sgd_step: one training step of the papers' small
   networks at the papers' small batches, side by side with PyTorch CPU
   (bench/steps_ref.py: the same layers, optimiser, batch and thread count,
   timed the same way), when Debian's python3-torch is installed.

   bench gan_step arch=mlp b=B threads=T params=P ms= gflops= peak_pct= ref_ms= speedup=
     the MD-GAN paper's MLP GAN (dg_build_generator / dg_build_discriminator,
     DG_ARCH_MLP, 1 x 28 x 28), one dg_gan_trainer_step with L = 1: G forward,
     a D step on a real and the fake batch, the G loss through D and G
     backward, Adam 2e-4 / 0.5 / 0.999 on both
   bench sgd_step net=adacomp_cnn b=B threads=T params=P ms= ...
     the AdaComp paper's CNN (dg_asgd_net_create, 421,642 parameters):
     forward, softmax cross-entropy, backward, one SGD step (lr 0.1)

   ms is the best of 15 rounds of at least 50 ms each (the round's mean
   step), after ten warm-up steps; cpu_ms the process's CPU time per step
   in the round that used the least (all threads, spinning included).  gflops counts what the step computes
   (dg_net_train_flops: forward and backward, input gradients only where
   they are computed; the G-loss feedback without D's weight gradients,
   dg_gan_feedback_flops; optimisers and losses are left out), and peak_pct is
   that rate over the FMA peak of as many threads, measured at the start of
   this run.  speedup = ref_ms / ms.  The reference's parameter count must
   equal ours, else its figure is refused (ref=mismatch). */
#include "bench_common.h"
#define ADACOMP_IMPLEMENTATION
#include "../adacomp.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#define ROUNDS 15
#define ROUND_S 0.05
#define WARMUP 10

static int no_ref; /* profiling runs: ours only */

typedef struct gan_job {
    dg_gan_trainer t;
} gan_job;

static void gan_step(void *arg)
{
    gan_job *j = (gan_job *)arg;
    if (dg_gan_trainer_step(&j->t, NULL) != DG_OK) {
        fprintf(stderr, "gan_step: %s\n", dg_last_error());
        exit(1);
    }
}

typedef struct sgd_job {
    dg_pool *pool;
    dg_net *net;
    dg_optim opt;
    int b;
    float *x, *dz;
    int32_t *y;
} sgd_job;

static void sgd_step(void *arg)
{
    sgd_job *j = (sgd_job *)arg;
    const float *logits;
    float loss;
    dg_net_zero_grad(j->net);
    if (dg_net_forward(j->net, j->x, j->b, 1, &logits) ||
        dg_loss_softmax_ce(logits, 10, j->y, j->b, 10, 1.0f / (float)j->b, j->dz, &loss) ||
        dg_net_backward(j->net, j->dz, NULL) ||
        dg_optim_step(&j->opt, j->pool, dg_net_params(j->net), dg_net_grads(j->net))) {
        fprintf(stderr, "sgd_step: %s\n", dg_last_error());
        exit(1);
    }
}

/* bench_time_cpu with the settings above, in milliseconds */
static double best_ms(void (*fn)(void *), void *arg, double *cpu_ms)
{
    double ms = 1e3 * bench_time_cpu(fn, arg, WARMUP, ROUND_S, ROUNDS, cpu_ms);
    *cpu_ms *= 1e3;
    return ms;
}

/* The line's tail: the PyTorch figure for the same configuration. */
static void reference(const char *args, size_t params, double ms)
{
    char out[512];
    double rms, rcpu = 0, rparams;
    if (no_ref) {
        printf("\n");
    } else if (!bench_torch_installed()) {
        printf(" ref=skipped reason=python3-torch_not_installed (make bench-deps)\n");
    } else if (bench_torch(args, out, sizeof out) || !bench_field(out, "ms", &rms) ||
               !bench_field(out, "params", &rparams)) {
        printf(" ref=failed\n");
    } else if ((size_t)rparams != params) {
        printf(" ref=mismatch ref_params=%.0f\n", rparams);
    } else {
        bench_field(out, "cpu_ms", &rcpu);
        printf(" ref_ms=%.3f ref_cpu_ms=%.3f speedup=%.2f\n", rms, rcpu, rms / ms);
    }
    fflush(stdout);
}

static void print_rate(const char *isa, size_t params, double ms, double cpu_ms, double flop,
                       double peak)
{
    double gflops = flop / (ms / 1e3) / 1e9;
    printf(" isa=%s params=%zu ms=%.3f cpu_ms=%.3f gflops=%.1f", isa, params, ms, cpu_ms, gflops);
    if (peak > 0) printf(" peak_pct=%.1f", 100.0 * gflops / peak);
}

static int bench_gan(const dg_dataset *ds, int b, int threads, double peak)
{
    static gan_job j;
    dg_gan_config c = dg_gan_config_init();
    dg_pool *pool;
    size_t params;
    double ms, cpu, flop;
    char args[64];
    c.arch = DG_ARCH_MLP;
    c.batch = b;
    if (dg_pool_create(&pool, threads) || dg_gan_trainer_init(&j.t, &c, ds, pool)) {
        printf("bench gan_step arch=mlp b=%d threads=%d status=failed (%s)\n", b, threads,
               dg_last_error());
        return 1;
    }
    params = dg_net_param_count(j.t.g) + dg_net_param_count(j.t.d);
    ms = best_ms(gan_step, &j, &cpu);
    /* G forward and backward (no input gradient); D on the real and the
       fake batch (no input gradient), then through D to the images (no
       weight gradients) */
    flop = (double)b * (dg_net_train_flops(j.t.g, 0) + 2.0 * dg_net_train_flops(j.t.d, 0) +
                        dg_gan_feedback_flops(j.t.d));
    printf("bench gan_step arch=mlp b=%d threads=%d", b, threads);
    print_rate(dg_isa_name(dg_pool_isa(pool)), params, ms, cpu, flop, peak);
    dg_gan_trainer_free(&j.t);
    dg_pool_destroy(pool);
    snprintf(args, sizeof args, "steps_ref.py gan_mlp %d %d", b, threads);
    reference(args, params, ms);
    return 0;
}

static int bench_sgd(int b, int threads, double peak)
{
    sgd_job j;
    dg_asgd_config c = dg_asgd_config_init();
    dg_rng rng = dg_rng_make(1, 2, 3);
    size_t params;
    double ms, cpu;
    char args[64];
    int i;
    memset(&j, 0, sizeof j);
    j.b = b;
    j.x = (float *)malloc(sizeof(float) * 784 * (size_t)b);
    j.dz = (float *)malloc(sizeof(float) * 10 * (size_t)b);
    j.y = (int32_t *)malloc(sizeof(int32_t) * (size_t)b);
    c.n_workers = 1;
    c.arch = DG_ASGD_ARCH_CNN;
    if (!j.x || !j.dz || !j.y || dg_pool_create(&j.pool, threads) ||
        dg_asgd_net_create(&j.net, &c, 1, 28, 28, 10, j.pool, b) || dg_net_init(j.net, 1, 0.0f) ||
        dg_optim_sgd(&j.opt, dg_net_param_count(j.net), 0.1f, 0.0f)) {
        printf("bench sgd_step net=adacomp_cnn b=%d threads=%d status=failed (%s)\n", b, threads,
               dg_last_error());
        return 1;
    }
    dg_rng_fill_uniform(&rng, j.x, 784 * (size_t)b, -1, 1);
    for (i = 0; i < b; i++) j.y[i] = (int32_t)dg_rng_below(&rng, 10);
    params = dg_net_param_count(j.net);
    ms = best_ms(sgd_step, &j, &cpu);
    printf("bench sgd_step net=adacomp_cnn b=%d threads=%d", b, threads);
    print_rate(dg_isa_name(dg_pool_isa(j.pool)), params, ms, cpu,
               (double)b * dg_net_train_flops(j.net, 0), peak);
    dg_optim_free(&j.opt);
    dg_net_free(j.net);
    dg_pool_destroy(j.pool);
    free(j.x);
    free(j.dz);
    free(j.y);
    snprintf(args, sizeof args, "steps_ref.py sgd_cnn %d %d", b, threads);
    reference(args, params, ms);
    return 0;
}

/* No argument: every configuration.  "gan|sgd B THREADS [noref]": one
   (for profiling). */
int main(int argc, char **argv)
{
    static const int gan_b[] = {10, 100};
    dg_dataset ds;
    double peak[3] = {0, 0, 0};
    int threads, i, fails = 0;
    if (dg_dataset_make_shapes(&ds, 2000, 1)) return 1;
    if (argc >= 4) {
        int b = atoi(argv[2]);
        threads = atoi(argv[3]) == 2 ? 2 : 1;
        no_ref = argc > 4 && !strcmp(argv[4], "noref");
        peak[threads] = bench_fma_peak(threads);
        fails = !strcmp(argv[1], "gan") ? bench_gan(&ds, b, threads, peak[threads])
                                         : bench_sgd(b, threads, peak[threads]);
        dg_dataset_free(&ds);
        return fails;
    }
    for (threads = 1; threads <= 2; threads++) peak[threads] = bench_fma_peak(threads);
    for (threads = 1; threads <= 2; threads++) {
        for (i = 0; i < 2; i++) fails += bench_gan(&ds, gan_b[i], threads, peak[threads]);
        fails += bench_sgd(10, threads, peak[threads]);
    }
    dg_dataset_free(&ds);
    return fails ? 1 : 0;
}
