/* The dg_gan section: network builders (shapes and parameter counts worked
   out by hand), noise and labels, the discriminator step, the generator
   feedback against finite differences (both losses, ACGAN), the evaluator
   on a small synthetic dataset, the trainer's determinism and checkpoints,
   CSV and PNG output. */
#define _POSIX_C_SOURCE 200809L
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

#include <stdlib.h>
#include <unistd.h>

static dg_pool *pool;

static size_t count_of(dg_net *net, int *c, int *h, int *w)
{
    dg_net_output_shape(net, c, h, w);
    return dg_net_param_count(net);
}

TEST(builders_shapes_and_parameter_counts)
{
    dg_net *n;
    int c, h, w;
    /* DCGAN G, z 100, 1x28x28: Linear 100->6272 (100*6272 + 6272 = 633,472),
       BN1d 6272 (12,544), ConvT 128->64 k4 (128*64*16 + 64 = 131,136),
       BN2d 64 (128), ConvT 64->1 k4 (64*16 + 1 = 1,025) = 778,305 */
    CHECK_OK(dg_build_generator(&n, DG_ARCH_DCGAN, 100, 0, 1, 28, 28));
    CHECK(count_of(n, &c, &h, &w) == 778305);
    CHECK(c == 1 && h == 28 && w == 28);
    dg_net_input_shape(n, &c, &h, &w);
    CHECK(c == 100 && h == 1 && w == 1);
    dg_net_free(n);
    /* ACGAN: input 110, first Linear 110*6272 + 6272 = 696,192 -> 841,025 */
    CHECK_OK(dg_build_generator(&n, DG_ARCH_DCGAN, 100, 10, 1, 28, 28));
    CHECK(count_of(n, &c, &h, &w) == 841025);
    dg_net_input_shape(n, &c, &h, &w);
    CHECK(c == 110);
    dg_net_free(n);
    /* DCGAN D, 1x28x28 -> 1: Conv 1->64 k4 (1,088), Conv 64->128 k4
       (131,200), BN2d 128 (256), Linear 6272->1 (6,273) = 138,817;
       -> 11 outputs: Linear 6272*11 + 11 = 69,003 -> 201,547 */
    CHECK_OK(dg_build_discriminator(&n, DG_ARCH_DCGAN, 1, 28, 28, 1));
    CHECK(count_of(n, &c, &h, &w) == 138817);
    CHECK(c * h * w == 1);
    dg_net_free(n);
    CHECK_OK(dg_build_discriminator(&n, DG_ARCH_DCGAN, 1, 28, 28, 11));
    CHECK(count_of(n, &c, &h, &w) == 201547);
    CHECK(c * h * w == 11);
    dg_net_free(n);
    /* MLP G (MD-GAN paper), z 100: 100*512+512 (51,712) + 512*512+512
       (262,656) + 512*784+784 (402,192) = 716,560, output 1x28x28 */
    CHECK_OK(dg_build_generator(&n, DG_ARCH_MLP, 100, 0, 1, 28, 28));
    CHECK(count_of(n, &c, &h, &w) == 716560);
    CHECK(c == 1 && h == 28 && w == 28);
    dg_net_free(n);
    /* MLP D: 784*512+512 (401,920) + 262,656 + 513 = 665,089; 11 outputs:
       512*11 + 11 = 5,643 -> 670,219 */
    CHECK_OK(dg_build_discriminator(&n, DG_ARCH_MLP, 1, 28, 28, 1));
    CHECK(count_of(n, &c, &h, &w) == 665089);
    dg_net_free(n);
    CHECK_OK(dg_build_discriminator(&n, DG_ARCH_MLP, 1, 28, 28, 11));
    CHECK(count_of(n, &c, &h, &w) == 670219);
    dg_net_free(n);
    /* the tiny MLP, 32 units: G 100*32+32 + 32*32+32 + 32*784+784 = 30,160;
       D 784*32+32 + 32*32+32 + 33 = 26,209 */
    CHECK_OK(dg_build_generator(&n, DG_ARCH_TINY, 100, 0, 1, 28, 28));
    CHECK(count_of(n, &c, &h, &w) == 30160 && c == 1 && h == 28 && w == 28);
    dg_net_free(n);
    CHECK_OK(dg_build_discriminator(&n, DG_ARCH_TINY, 1, 28, 28, 1));
    CHECK(count_of(n, &c, &h, &w) == 26209);
    dg_net_free(n);
    CHECK(!strcmp(dg_arch_name(DG_ARCH_DCGAN), "dcgan") && !strcmp(dg_arch_name(DG_ARCH_MLP), "mlp") &&
          !strcmp(dg_arch_name(DG_ARCH_TINY), "tiny") && !strcmp(dg_arch_name((dg_arch)7), "?"));
    /* colour 32x32: G ends in 3x32x32 */
    CHECK_OK(dg_build_generator(&n, DG_ARCH_DCGAN, 64, 0, 3, 32, 32));
    count_of(n, &c, &h, &w);
    CHECK(c == 3 && h == 32 && w == 32);
    dg_net_free(n);
    /* DCGAN needs multiples of 4; bad arguments are results */
    CHECK(dg_build_generator(&n, DG_ARCH_DCGAN, 100, 0, 1, 30, 30) == DG_ERR_SHAPE && !n);
    CHECK(dg_build_discriminator(&n, DG_ARCH_DCGAN, 1, 30, 28, 1) == DG_ERR_SHAPE && !n);
    CHECK(dg_build_generator(&n, DG_ARCH_MLP, 0, 0, 1, 28, 28) == DG_ERR_ARG);
    CHECK(dg_build_discriminator(&n, (dg_arch)7, 1, 28, 28, 1) == DG_ERR_ARG);
    CHECK(dg_build_discriminator(NULL, DG_ARCH_MLP, 1, 28, 28, 1) == DG_ERR_ARG);
}

TEST(sample_input_one_hot)
{
    enum { B = 200, Z = 5, C = 10 };
    float g[B * (Z + C)], g2[B * (Z + C)];
    int32_t lab[B];
    int i, k, seen[C] = {0}, all = 1;
    double mean = 0, var = 0;
    dg_rng r = dg_rng_make(3, 4, 5), r2 = dg_rng_make(3, 4, 5);
    dg_gan_sample_input(&r, B, Z, C, g, lab);
    dg_gan_sample_input(&r2, B, Z, C, g2, NULL); /* NULL labels: same stream */
    CHECK(memcmp(g, g2, sizeof g) == 0);
    for (i = 0; i < B; i++) {
        float *row = g + i * (Z + C), sum = 0;
        CHECK(lab[i] >= 0 && lab[i] < C);
        if (lab[i] < 0 || lab[i] >= C) continue;
        seen[lab[i]]++;
        for (k = 0; k < C; k++) {
            CHECK(row[Z + k] == (k == lab[i] ? 1.0f : 0.0f));
            sum += row[Z + k];
        }
        CHECK(sum == 1.0f);
        for (k = 0; k < Z; k++) {
            mean += row[k];
            var += (double)row[k] * row[k];
        }
    }
    for (k = 0; k < C; k++) all &= seen[k] > 0;
    CHECK(all);
    mean /= B * Z;
    var = var / (B * Z) - mean * mean;
    CHECK(fabs(mean) < 0.15 && fabs(var - 1) < 0.2);
    /* plain GAN: rows are z only */
    r = dg_rng_make(3, 4, 5);
    dg_gan_sample_input(&r, 4, Z, 0, g, NULL);
    r2 = dg_rng_make(3, 4, 5);
    dg_rng_fill_normal(&r2, g2, 4 * Z, 0, 1);
    CHECK(memcmp(g, g2, sizeof(float) * 4 * Z) == 0);
}

/* loss of dg_gan_g_feedback at x, in double from the float result */
static double g_loss_at(dg_net *d, const float *x, const int32_t *lab, int b, int nc, int sat,
                        float *scratch)
{
    float l = 0;
    CHECK_OK(dg_gan_g_feedback(d, x, lab, b, nc, sat, 1.0f, scratch, &l));
    return l;
}

/* Checks dx = grad_scale * d(sum of per-sample losses)/dx by central
   differences, on a smooth D (tanh; with bn, batchnorm couples the samples
   of the batch): the leaky-ReLU networks of the papers are piecewise linear
   and their kinks spoil finite differences, so for those
   g_feedback_sign_and_errors checks dx against backpropagating the
   analytic dl/dz instead. */
static void check_feedback(int bn, int nc, int sat)
{
    enum { B = 6, C = 1, H = 4, W = 4, D = C * H * W };
    dg_net *d;
    float x[B * D], dx[B * D], dx2[B * D], scratch[B * D], l1, l2;
    int32_t lab[B];
    int i, k, bad = 0;
    const float *z;
    double max_err = 0;
    dg_rng r = dg_rng_make(11, (uint64_t)bn, (uint64_t)(nc * 2 + sat));
    CHECK_OK(dg_net_create(&d, C, H, W));
    CHECK_OK(dg_net_flatten(d));
    CHECK_OK(dg_net_linear(d, 24));
    if (bn) CHECK_OK(dg_net_batchnorm(d));
    CHECK_OK(dg_net_tanh(d));
    CHECK_OK(dg_net_linear(d, 1 + nc));
    CHECK_OK(dg_net_plan(d, pool, B));
    CHECK_OK(dg_net_init(d, 5, 0.0f));
    dg_rng_fill_uniform(&r, x, B * D, -1, 1);
    for (i = 0; i < B; i++) lab[i] = nc ? (int32_t)dg_rng_below(&r, (uint32_t)nc) : 0;
    CHECK_OK(dg_gan_g_feedback(d, x, nc ? lab : NULL, B, nc, sat, 1.0f, dx, &l1));
    /* the reported loss is the documented mean */
    {
        double ref = 0;
        CHECK_OK(dg_net_forward(d, x, B, 1, &z));
        for (i = 0; i < B; i++) {
            const float *zi = z + i * (1 + nc);
            double s = sat ? -log1p(exp(zi[0])) : log1p(exp(-zi[0]));
            if (nc) {
                double mx = zi[1], se = 0;
                for (k = 1; k < nc; k++) mx = zi[1 + k] > mx ? zi[1 + k] : mx;
                for (k = 0; k < nc; k++) se += exp(zi[1 + k] - mx);
                s += log(se) + mx - zi[1 + lab[i]];
            }
            ref += s / B;
        }
        CHECK_NEAR(l1, ref, 1e-4 * (1 + fabs(ref)));
        if (sat && !nc) CHECK(l1 < 0);
    }
    /* grad_scale is linear */
    CHECK_OK(dg_gan_g_feedback(d, x, nc ? lab : NULL, B, nc, sat, 0.25f, dx2, &l2));
    for (i = 0; i < B * D; i++)
        if (fabsf(dx2[i] - 0.25f * dx[i]) > 1e-6f * (1 + fabsf(dx[i]))) bad++;
    CHECK(bad == 0);
    /* directional derivatives along random +-1 directions: every
       coordinate moves, so the difference of two float losses is large
       against their rounding */
    for (k = 0; k < 8; k++) {
        const float h = 1e-2f;
        float v[B * D], xp[B * D], xm[B * D];
        double lp, lm, fd, an = 0, err;
        for (i = 0; i < B * D; i++) {
            v[i] = dg_rng_below(&r, 2) ? 1.0f : -1.0f;
            xp[i] = x[i] + h * v[i];
            xm[i] = x[i] - h * v[i];
            an += (double)dx[i] * v[i];
        }
        lp = g_loss_at(d, xp, nc ? lab : NULL, B, nc, sat, scratch);
        lm = g_loss_at(d, xm, nc ? lab : NULL, B, nc, sat, scratch);
        fd = (lp - lm) / (2 * h) * B; /* d(sum)/dx = B * d(mean)/dx */
        /* central differences err by O(h^2); batchnorm curves more */
        err = fabs(fd - an) / (0.2 + fabs(an));
        if (getenv("FD_DEBUG")) printf("    fd %g analytic %g\n", fd, an);
        if (err > max_err) max_err = err;
    }
    printf("  feedback %s %s%s: max relative error %.2e\n", bn ? "tanh+bn" : "tanh",
           sat ? "saturating" : "non-saturating", nc ? " acgan" : "", max_err);
    CHECK(max_err < (bn ? 1e-2 : 2e-3));
    dg_net_free(d);
}

TEST(g_feedback_matches_finite_differences)
{
    int bn, nc, sat;
    for (bn = 0; bn < 2; bn++)
        for (nc = 0; nc <= 3; nc += 3)
            for (sat = 0; sat < 2; sat++) check_feedback(bn, nc, sat);
}

TEST(g_feedback_sign_and_errors)
{
    /* both losses push D's real/fake logit up: dl/dz < 0 */
    enum { B = 4, D = 16 };
    dg_net *d;
    float x[B * D], dx[B * D], l;
    const float *z, *dxn;
    dg_rng r = dg_rng_make(1, 2, 3);
    int i, j, ok = 1;
    CHECK_OK(dg_build_discriminator(&d, DG_ARCH_MLP, 1, 4, 4, 1));
    CHECK_OK(dg_net_plan(d, pool, B));
    CHECK_OK(dg_net_init(d, 1, 0.0f));
    dg_rng_fill_uniform(&r, x, B * D, -1, 1);
    for (i = 0; i < 2; i++) {
        float dz[B];
        CHECK_OK(dg_gan_g_feedback(d, x, NULL, B, 0, i, 1.0f, dx, &l));
        /* same as backpropagating dz = -1 scaled by |dl/dz| per sample */
        CHECK_OK(dg_net_forward(d, x, B, 1, &z));
        for (j = 0; j < B; j++) {
            float s = 1.0f / (1.0f + expf(-z[j]));
            dz[j] = i ? -s : s - 1.0f;
            ok &= dz[j] < 0;
        }
        CHECK_OK(dg_net_backward(d, dz, &dxn));
        for (j = 0; j < B * D; j++) ok &= fabsf(dxn[j] - dx[j]) <= 1e-6f;
    }
    CHECK(ok);
    CHECK(dg_gan_g_feedback(d, x, NULL, B, 2, 0, 1.0f, dx, &l) == DG_ERR_ARG);   /* no labels */
    {
        int32_t lab[B] = {0, 1, 0, 1};
        CHECK(dg_gan_g_feedback(d, x, lab, B, 2, 0, 1.0f, dx, &l) == DG_ERR_SHAPE); /* 1 col */
    }
    CHECK(dg_gan_g_feedback(d, x, NULL, 0, 0, 0, 1.0f, dx, &l) == DG_ERR_ARG);
    dg_net_free(d);
}

static void d_step_learns(dg_arch arch, int nc)
{
    enum { B = 16, C = 1, H = 8, W = 8, D = C * H * W };
    dg_net *d;
    dg_optim opt;
    float real[B * D], fake[B * D], first = 0, loss = 0;
    int32_t rl[B], fl[B];
    int i, it;
    dg_rng r = dg_rng_make(21, 1, (uint64_t)nc);
    for (i = 0; i < B * D; i++) {
        /* real: a bright left half; fake: noise */
        real[i] = ((i % W) < W / 2 ? 0.8f : -0.8f) + 0.1f * dg_rng_normal(&r);
        fake[i] = dg_rng_uniform(&r) * 2 - 1;
    }
    for (i = 0; i < B; i++) {
        rl[i] = nc ? i % nc : 0;
        fl[i] = nc ? (i + 1) % nc : 0;
        /* the real classes are visible: class k brightens row k */
        if (nc)
            for (it = 0; it < W; it++) real[i * D + rl[i] * W + it] += 1.0f;
    }
    CHECK_OK(dg_build_discriminator(&d, arch, C, H, W, 1 + nc));
    CHECK_OK(dg_net_plan(d, pool, B));
    CHECK_OK(dg_net_init(d, 2, arch == DG_ARCH_DCGAN ? 0.02f : 0.0f));
    CHECK_OK(dg_optim_adam(&opt, dg_net_param_count(d), 1e-3f, 0.5f, 0.999f, 1e-8f));
    for (it = 0; it < 60; it++) {
        CHECK_OK(dg_gan_d_step(d, &opt, pool, real, nc ? rl : NULL, fake, nc ? fl : NULL, B, nc,
                               &loss));
        if (it == 0) first = loss;
    }
    printf("  d_step %s%s: loss %.4f -> %.4f\n", arch == DG_ARCH_DCGAN ? "dcgan" : "mlp",
           nc ? " acgan" : "", first, loss);
    /* at init errD ~ 2 log 2 (+ 2 log C); it must fall well below */
    CHECK(first > 1.0f);
    CHECK(loss < 0.5f * first);
    CHECK(opt.t == 60);
    dg_optim_free(&opt);
    dg_net_free(d);
}

TEST(d_step_decreases_loss)
{
    d_step_learns(DG_ARCH_MLP, 0);
    d_step_learns(DG_ARCH_DCGAN, 0);
    d_step_learns(DG_ARCH_MLP, 3);
}

TEST(d_step_loss_is_sum_of_bce_means)
{
    /* with lr 1e-30 nothing moves: errD = BCE(real, 1) + BCE(fake, 0) at the
       same parameters, and D's gradients are exactly those of that loss */
    enum { B = 5, D = 16 };
    dg_net *d;
    dg_optim opt;
    float real[B * D], fake[B * D], loss, lr_, lf, one = 1, zero = 0;
    const float *z;
    dg_rng r = dg_rng_make(8, 8, 8);
    CHECK_OK(dg_build_discriminator(&d, DG_ARCH_MLP, 1, 4, 4, 1));
    CHECK_OK(dg_net_plan(d, pool, B));
    CHECK_OK(dg_net_init(d, 3, 0.0f));
    CHECK_OK(dg_optim_sgd(&opt, dg_net_param_count(d), 1e-30f, 0.0f));
    dg_rng_fill_uniform(&r, real, B * D, -1, 1);
    dg_rng_fill_uniform(&r, fake, B * D, -1, 1);
    CHECK_OK(dg_gan_d_step(d, &opt, pool, real, NULL, fake, NULL, B, 0, &loss));
    CHECK_OK(dg_net_forward(d, real, B, 0, &z));
    CHECK_OK(dg_loss_bce_logits(z, 1, &one, 0, B, 1, NULL, &lr_));
    CHECK_OK(dg_net_forward(d, fake, B, 0, &z));
    CHECK_OK(dg_loss_bce_logits(z, 1, &zero, 0, B, 1, NULL, &lf));
    CHECK_NEAR(loss, lr_ + lf, 1e-5);
    /* a wrong-sized optimiser is refused */
    dg_optim_free(&opt);
    CHECK_OK(dg_optim_sgd(&opt, 3, 0.1f, 0.0f));
    CHECK(dg_gan_d_step(d, &opt, pool, real, NULL, fake, NULL, B, 0, &loss) == DG_ERR_SHAPE);
    dg_optim_free(&opt);
    dg_net_free(d);
}

TEST(evaluator_on_shapes)
{
    dg_dataset train, test;
    dg_evaluator ev;
    dg_evaluator_config cfg = dg_evaluator_config_init();
    dg_eval_result same, held, noise;
    char path[] = "/tmp/dg_test_clf_XXXXXX";
    float *img;
    double acc;
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK_OK(dg_dataset_make_shapes(&train, 1000, 1));
    CHECK_OK(dg_dataset_make_shapes(&test, 300, 2));
    /* a small CNN, trained briefly: fast, and still accurate enough below */
    cfg.conv1 = 6; cfg.conv2 = 12; cfg.features = 24;
    cfg.epochs = 3; cfg.batch = 32; cfg.lr = 3e-3f;
    cfg.cache_path = path;
    CHECK_OK(dg_evaluator_init(&ev, pool, &train, &test, &cfg));
    acc = ev.test_accuracy;
    printf("  shapes classifier: test accuracy %.3f (trained: %d)\n", acc, !ev.loaded);
    CHECK(!ev.loaded);
    CHECK(acc >= 0.8);
    /* the training images against their own statistics: FID 0 */
    CHECK_OK(dg_evaluator_dataset(&ev, &train, 0, 10, &same));
    CHECK_NEAR(same.fid_logits, 0, 1e-6);
    CHECK_NEAR(same.fid_features, 0, 1e-6);
    CHECK(same.n == 1000);
    CHECK_OK(dg_evaluator_dataset(&ev, &test, 0, 3, &held));
    { /* a class-ordered dataset still gives balanced splits */
        dg_dataset a, b;
        dg_eval_result ordered;
        CHECK_OK(dg_dataset_split_per_class(&test, 0.5, &a, &b));
        CHECK(a.labels[0] == 0 && a.labels[a.n - 1] == 9);
        CHECK_OK(dg_evaluator_dataset(&ev, &a, 100, 5, &ordered));
        CHECK(ordered.score_mean > 3.0);
        dg_dataset_free(&a);
        dg_dataset_free(&b);
    }
    /* uniform noise images */
    img = (float *)malloc(sizeof(float) * 300 * 784);
    {
        dg_rng r = dg_rng_make(1, 1, 1);
        dg_rng_fill_uniform(&r, img, 300 * 784, -1, 1);
    }
    CHECK_OK(dg_evaluator_images(&ev, img, 300, 3, &noise));
    printf("  score real %.2f noise %.2f; FID logits held-out %.3f noise %.1f; features %.3f %.1f\n",
           held.score_mean, noise.score_mean, held.fid_logits, noise.fid_logits, held.fid_features,
           noise.fid_features);
    CHECK(held.score_mean > 3.0);
    CHECK(held.score_mean > noise.score_mean + 2);
    CHECK(noise.fid_logits > 20 * held.fid_logits && noise.fid_logits > 10);
    CHECK(noise.fid_features > 20 * held.fid_features);
    dg_evaluator_free(&ev);
    /* the cache is reused when data and settings match ... */
    CHECK_OK(dg_evaluator_init(&ev, pool, &train, &test, &cfg));
    CHECK(ev.loaded);
    CHECK(ev.test_accuracy == acc);
    dg_evaluator_free(&ev);
    /* ... and ignored (retrained) when they do not */
    cfg.epochs = 1;
    CHECK_OK(dg_evaluator_init(&ev, pool, &train, &test, &cfg));
    CHECK(!ev.loaded);
    dg_evaluator_free(&ev);
    { /* unlabelled data is refused */
        dg_dataset un = train;
        un.n_classes = 0;
        CHECK(dg_evaluator_init(&ev, pool, &un, NULL, &cfg) == DG_ERR_ARG);
    }
    free(img);
    remove(path);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
}

static void run_trainer(dg_gan_config *cfg, const dg_dataset *ds, int iters, float **g, float **d,
                        size_t *ng, size_t *nd)
{
    dg_gan_trainer t;
    dg_gan_stats st;
    int i;
    CHECK_OK(dg_gan_trainer_init(&t, cfg, ds, pool));
    for (i = 0; i < iters; i++) CHECK_OK(dg_gan_trainer_step(&t, &st));
    CHECK(st.iter == iters && t.iter == iters);
    CHECK(isfinite(st.d_loss) && isfinite(st.g_loss));
    *ng = dg_net_param_count(t.g);
    *nd = dg_net_param_count(t.d);
    *g = (float *)malloc(sizeof(float) * *ng);
    *d = (float *)malloc(sizeof(float) * *nd);
    memcpy(*g, dg_net_params(t.g), sizeof(float) * *ng);
    memcpy(*d, dg_net_params(t.d), sizeof(float) * *nd);
    dg_gan_trainer_free(&t);
}

TEST(trainer_is_deterministic)
{
    dg_dataset ds;
    dg_gan_config cfg = dg_gan_config_init();
    float *g1, *d1, *g2, *d2;
    size_t ng, nd, ng2, nd2;
    int acgan;
    CHECK_OK(dg_dataset_make_shapes(&ds, 200, 5));
    cfg.batch = 8;
    for (acgan = 0; acgan < 2; acgan++) {
        cfg.arch = acgan ? DG_ARCH_MLP : DG_ARCH_DCGAN;
        cfg.acgan = acgan;
        cfg.d_steps = 1 + acgan;
        run_trainer(&cfg, &ds, 2, &g1, &d1, &ng, &nd);
        run_trainer(&cfg, &ds, 2, &g2, &d2, &ng2, &nd2);
        CHECK(ng == ng2 && nd == nd2);
        CHECK(memcmp(g1, g2, sizeof(float) * ng) == 0);
        CHECK(memcmp(d1, d2, sizeof(float) * nd) == 0);
        free(g2);
        free(d2);
        /* another seed trains differently */
        cfg.seed = 2;
        run_trainer(&cfg, &ds, 2, &g2, &d2, &ng2, &nd2);
        CHECK(memcmp(g1, g2, sizeof(float) * ng) != 0);
        cfg.seed = 1;
        free(g1);
        free(d1);
        free(g2);
        free(d2);
    }
    dg_dataset_free(&ds);
}

TEST(trainer_checkpoint_resumes_exactly)
{
    dg_dataset ds;
    dg_gan_config cfg = dg_gan_config_init();
    dg_gan_trainer a, b;
    char path[] = "/tmp/dg_test_gan_XXXXXX";
    float img1[4 * 784], img2[4 * 784];
    int32_t l1[4], l2[4];
    int fd = mkstemp(path), i;
    CHECK(fd >= 0);
    close(fd);
    CHECK_OK(dg_dataset_make_shapes(&ds, 100, 9));
    cfg.arch = DG_ARCH_MLP;
    cfg.batch = 8;
    cfg.acgan = 1;
    cfg.z_dim = 16;
    CHECK_OK(dg_gan_trainer_init(&a, &cfg, &ds, pool));
    for (i = 0; i < 14; i++) CHECK_OK(dg_gan_trainer_step(&a, NULL)); /* crosses an epoch */
    CHECK_OK(dg_gan_trainer_save(&a, path));
    for (i = 0; i < 3; i++) CHECK_OK(dg_gan_trainer_step(&a, NULL));
    CHECK_OK(dg_gan_trainer_init(&b, &cfg, &ds, pool));
    CHECK_OK(dg_gan_trainer_load(&b, path));
    CHECK(b.iter == 14);
    for (i = 0; i < 3; i++) CHECK_OK(dg_gan_trainer_step(&b, NULL));
    CHECK(memcmp(dg_net_params(a.g), dg_net_params(b.g), sizeof(float) * dg_net_param_count(a.g)) == 0);
    CHECK(memcmp(dg_net_params(a.d), dg_net_params(b.d), sizeof(float) * dg_net_param_count(a.d)) == 0);
    /* samples: labels in range, values in [-1, 1], independent of the cut */
    CHECK_OK(dg_gan_trainer_generate(&a, 77, 0, 4, img1, l1));
    CHECK_OK(dg_gan_trainer_generate(&a, 77, 2, 2, img2, l2));
    CHECK(memcmp(img1 + 2 * 784, img2, sizeof(float) * 2 * 784) == 0);
    CHECK(l1[2] == l2[0] && l1[3] == l2[1]);
    for (i = 0; i < 4 * 784; i++)
        if (!(img1[i] >= -1 && img1[i] <= 1)) break;
    CHECK(i == 4 * 784);
    for (i = 0; i < 4; i++) CHECK(l1[i] >= 0 && l1[i] < 10);
    dg_gan_trainer_free(&b);
    /* another configuration is refused */
    cfg.z_dim = 17;
    CHECK_OK(dg_gan_trainer_init(&b, &cfg, &ds, pool));
    CHECK(dg_gan_trainer_load(&b, path) == DG_ERR_CONFIG);
    dg_gan_trainer_free(&b);
    /* G's or D's section naming another input shape, under a valid CRC:
       refused, and the other net (whichever a loader reads first) is left
       as it was */
    {
        unsigned char *buf = NULL;
        size_t len = 0;
        int k;
        cfg.z_dim = 16;
        CHECK_OK(dg__read_file(path, (size_t)1 << 26, &buf, &len));
        for (k = 1; buf && k <= 2; k++) { /* sections: state, G, D */
            size_t at = 16, sec = 0, slen = 0;
            dg_net *other;
            float *keep;
            FILE *f;
            for (i = 0; i <= k; i++, at += 16 + slen) { /* type, length, CRC, bytes */
                sec = at + 16;
                slen = (size_t)dg__rd64(buf + at + 4);
            }
            if (sec + 4 > len) break;
            dg__le32(buf + sec, dg__rd32(buf + sec) + 1);
            dg__le32(buf + sec - 4, dg_crc32(0, buf + sec, slen));
            f = fopen(path, "wb");
            if (f) fwrite(buf, 1, len, f), fclose(f);
            CHECK_OK(dg_gan_trainer_init(&b, &cfg, &ds, pool));
            other = k == 1 ? b.d : b.g;
            keep = (float *)malloc(sizeof(float) * dg_net_param_count(other));
            if (keep) memcpy(keep, dg_net_params(other), sizeof(float) * dg_net_param_count(other));
            CHECK(dg_gan_trainer_load(&b, path) == DG_ERR_CONFIG);
            CHECK(keep && !memcmp(keep, dg_net_params(other), sizeof(float) * dg_net_param_count(other)));
            CHECK(b.iter == 0);
            free(keep);
            dg_gan_trainer_free(&b);
            dg__le32(buf + sec, dg__rd32(buf + sec) - 1); /* back as saved */
            dg__le32(buf + sec - 4, dg_crc32(0, buf + sec, slen));
            f = fopen(path, "wb");
            if (f) fwrite(buf, 1, len, f), fclose(f);
        }
        dg__free(buf);
    }
    /* a corrupted file is refused */
    {
        FILE *f = fopen(path, "r+b");
        CHECK(f != NULL);
        if (f) {
            fseek(f, 200, SEEK_SET); /* inside G's section */
            fputc(0x5a, f);
            fclose(f);
        }
        cfg.z_dim = 16;
        CHECK_OK(dg_gan_trainer_init(&b, &cfg, &ds, pool));
        CHECK(dg_gan_trainer_load(&b, path) == DG_ERR_CHECKSUM);
        dg_gan_trainer_free(&b);
    }
    dg_gan_trainer_free(&a);
    /* ACGAN on unlabelled data is refused */
    ds.n_classes = 0;
    CHECK(dg_gan_trainer_init(&b, &cfg, &ds, pool) == DG_ERR_ARG);
    ds.n_classes = 10;
    remove(path);
    dg_dataset_free(&ds);
}

/* the whole of a small text file, NUL-terminated (empty when it cannot be read) */
static void read_text(const char *path, char *text, size_t cap)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(text, 1, cap - 1, f) : 0;
    if (f) fclose(f);
    text[n] = 0;
}

TEST(csv_and_grid_files)
{
    char csvp[] = "/tmp/dg_test_csv_XXXXXX", pngp[] = "/tmp/dg_test_png_XXXXXX";
    dg_csv csv;
    double row[3] = {1000, 0.5, 0.0 / 0.0};
    char text[256];
    size_t n;
    FILE *f;
    unsigned char magic[8];
    dg_dataset ds;
    dg_gan_config cfg = dg_gan_config_init();
    dg_gan_trainer t;
    float img[20 * 784];
    int32_t lab[20];
    int fd = mkstemp(csvp);
    close(fd);
    fd = mkstemp(pngp);
    close(fd);
    CHECK_OK(dg_csv_open(&csv, csvp, "iter,loss,fid", 0));
    CHECK_OK(dg_csv_row(&csv, row, 3));
    CHECK(dg_csv_row(&csv, row, 2) == DG_ERR_ARG);
    dg_csv_close(&csv);
    CHECK_OK(dg_csv_open(&csv, csvp, "iter,loss,fid", 1)); /* append: no second header */
    row[0] = 2000;
    CHECK_OK(dg_csv_row(&csv, row, 3));
    dg_csv_close(&csv);
    read_text(csvp, text, sizeof text);
    CHECK(strcmp(text, "iter,loss,fid\n1000,0.5,\n2000,0.5,\n") == 0);
    { /* a run resumed from a checkpoint at 1500: the row of 2000 goes, the
         last kept row comes back, and rows append after it */
        double last[3];
        f = fopen(csvp, "a");
        fputs("3000,0.2", f); /* a row cut by a crash */
        fclose(f);
        CHECK_OK(dg_csv_reopen(&csv, csvp, "iter,loss,fid", 1500, last));
        CHECK(last[0] == 1000 && last[1] == 0.5 && isnan(last[2]));
        row[0] = 1600;
        CHECK_OK(dg_csv_row(&csv, row, 3));
        dg_csv_close(&csv);
        read_text(csvp, text, sizeof text);
        CHECK(strcmp(text, "iter,loss,fid\n1000,0.5,\n1600,0.5,\n") == 0);
        CHECK_OK(dg_csv_reopen(&csv, csvp, "iter,loss,fid", 0, last)); /* nothing kept */
        dg_csv_close(&csv);
        CHECK(isnan(last[0]));
        read_text(csvp, text, sizeof text);
        CHECK(strcmp(text, "iter,loss,fid\n") == 0);
        CHECK(dg_csv_reopen(&csv, csvp, "iter,loss", 10, last) == DG_ERR_FORMAT); /* other columns */
        f = fopen(csvp, "a");
        fputs("5,x,1\n", f);
        fclose(f);
        CHECK(dg_csv_reopen(&csv, csvp, "iter,loss,fid", 10, last) == DG_ERR_FORMAT);
        CHECK(strstr(dg_last_error(), "line 2"));
        remove(csvp);
        CHECK_OK(dg_csv_reopen(&csv, csvp, "iter,loss,fid", 10, last)); /* no file: a new log */
        dg_csv_close(&csv);
        read_text(csvp, text, sizeof text);
        CHECK(strcmp(text, "iter,loss,fid\n") == 0);
    }
    /* integers (byte counts) exactly, other values to 6 digits */
    CHECK_OK(dg_csv_open(&csv, csvp, "bytes,x,y", 0));
    row[0] = 123456789012.0;
    row[1] = 1234567.5;
    row[2] = -3;
    CHECK_OK(dg_csv_row(&csv, row, 3));
    dg_csv_close(&csv);
    read_text(csvp, text, sizeof text);
    CHECK(strcmp(text, "bytes,x,y\n123456789012,1.23457e+06,-3\n") == 0);
    /* a grid of generated samples, by class */
    CHECK_OK(dg_dataset_make_shapes(&ds, 50, 1));
    cfg.arch = DG_ARCH_MLP;
    cfg.acgan = 1;
    cfg.batch = 8;
    CHECK_OK(dg_gan_trainer_init(&t, &cfg, &ds, pool));
    CHECK_OK(dg_gan_trainer_generate(&t, 1, 0, 20, img, lab));
    CHECK_OK(dg_write_png_grid_by_class(pngp, img, lab, 20, 1, 28, 28, 10, 4, 1));
    f = fopen(pngp, "rb");
    n = f ? fread(magic, 1, 8, f) : 0;
    if (f) fclose(f);
    CHECK(n == 8 && memcmp(magic, "\x89PNG\r\n\x1a\n", 8) == 0);
    /* any sampler over the same G: the trainer's stream, whatever the chunk */
    {
        static float img2[20 * 784], g_in[3 * (100 + 10)];
        int32_t lab2[20];
        dg_gan_sampler s = dg_gan_trainer_sampler(&t);
        CHECK(s.g == t.g && s.chunk == 8 && s.seed == cfg.seed + 0x5eed && s.n_classes == 10);
        s.chunk = 3;
        s.g_in = g_in;
        CHECK_OK(dg_gan_generate(&s, 1, 0, 20, img2, lab2));
        CHECK(memcmp(img, img2, sizeof img) == 0 && memcmp(lab, lab2, sizeof lab) == 0);
        CHECK_OK(dg_gan_sampler_sample(&s, 5, 6, img2));
        CHECK_OK(dg_gan_trainer_sample(&t, 5, 6, img));
        CHECK(memcmp(img, img2, sizeof(float) * 6 * 784) == 0);
        CHECK_OK(dg_gan_write_samples(&s, 1, 20, 4, pngp));
        s.chunk = 0;
        CHECK(dg_gan_generate(&s, 1, 0, 20, img2, lab2) == DG_ERR_ARG);
    }
    dg_gan_trainer_free(&t);
    dg_dataset_free(&ds);
    remove(csvp);
    remove(pngp);
}

TEST(split_per_class)
{
    dg_dataset all, tr, te;
    size_t h1[10], h2[10];
    int k, ok = 1;
    CHECK_OK(dg_dataset_make_shapes(&all, 1000, 3)); /* 100 per class */
    CHECK_OK(dg_dataset_split_per_class(&all, 0.2, &tr, &te));
    CHECK(tr.n == 800 && te.n == 200);
    dg_dataset_class_counts(&tr, h1);
    dg_dataset_class_counts(&te, h2);
    for (k = 0; k < 10; k++) ok &= h1[k] == 80 && h2[k] == 20;
    CHECK(ok);
    /* the last images of each class are the test ones: image 999 (class 9) */
    CHECK(memcmp(te.pixels + 199 * 784, all.pixels + 999 * 784, 784) == 0);
    dg_dataset_free(&tr);
    dg_dataset_free(&te);
    dg_dataset_free(&all);
}

int main(void)
{
    if (dg_pool_create(&pool, 2)) return 1;
    RUN(builders_shapes_and_parameter_counts);
    RUN(sample_input_one_hot);
    RUN(g_feedback_matches_finite_differences);
    RUN(g_feedback_sign_and_errors);
    RUN(d_step_decreases_loss);
    RUN(d_step_loss_is_sum_of_bce_means);
    RUN(evaluator_on_shapes);
    RUN(trainer_is_deterministic);
    RUN(trainer_checkpoint_resumes_exactly);
    RUN(csv_and_grid_files);
    RUN(split_per_class);
    dg_pool_destroy(pool);
    return th_done();
}
