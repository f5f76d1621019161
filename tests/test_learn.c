/* End-to-end learning: an MLP on two interleaved spirals, a CNN on small
   generated images, and a tiny GAN that covers the eight modes of a ring
   of Gaussians.  Each asserts a stated target on held-out data. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

static dg_pool *pool;

/* three spiral arms in the plane, class = arm */
static void spiral(dg_rng *rng, float *x, int32_t *label)
{
    int c = (int)dg_rng_below(rng, 3);
    float t = dg_rng_uniform(rng), r = 0.1f + 0.9f * t, a = 4.0f * t + 2.0944f * c;
    x[0] = r * cosf(a) + 0.02f * dg_rng_normal(rng);
    x[1] = r * sinf(a) + 0.02f * dg_rng_normal(rng);
    *label = c;
}

static float accuracy(dg_net *net, const float *x, const int32_t *labels, int n, int classes)
{
    const float *y;
    int i, c, ok = 0;
    dg_net_forward(net, x, n, 0, &y);
    for (i = 0; i < n; i++) {
        int best = 0;
        for (c = 1; c < classes; c++)
            if (y[i * classes + c] > y[i * classes + best]) best = c;
        ok += best == labels[i];
    }
    return (float)ok / n;
}

/* in -> hidden -> hidden -> out, each hidden layer followed by a ReLU
   (leak 0) or a leaky ReLU of that slope; planned for max_batch, seeded */
static void two_hidden_mlp(dg_net **net, int in, int hidden, int out, float leak, int max_batch,
                           uint64_t seed)
{
    int k;
    CHECK_OK(dg_net_create(net, in, 1, 1));
    for (k = 0; k < 2; k++) {
        CHECK_OK(dg_net_linear(*net, hidden));
        CHECK_OK(leak ? dg_net_leaky_relu(*net, leak) : dg_net_relu(*net));
    }
    CHECK_OK(dg_net_linear(*net, out));
    CHECK_OK(dg_net_plan(*net, pool, max_batch));
    CHECK_OK(dg_net_init(*net, seed, 0.0f));
}

/* draws one labelled example of dim floats */
typedef void (*draw_fn)(dg_rng *rng, float *x, int32_t *label);

/* steps of softmax cross-entropy on b fresh examples from rng each, then
   the accuracy on n held-out examples from trng */
static float train_then_score(dg_net *net, dg_optim *opt, draw_fn draw, int dim, int classes,
                              int b, int steps, dg_rng *rng, dg_rng *trng, int n)
{
    float *x = malloc((size_t)b * dim * 4), *dz = malloc((size_t)b * classes * 4), loss, acc;
    float *tx = malloc((size_t)n * dim * 4);
    int32_t *lab = malloc((size_t)b * 4), *tl = malloc((size_t)n * 4);
    int it, i;
    const float *y;
    for (it = 0; it < steps; it++) {
        for (i = 0; i < b; i++) draw(rng, x + dim * i, &lab[i]);
        dg_net_zero_grad(net);
        CHECK_OK(dg_net_forward(net, x, b, 1, &y));
        CHECK_OK(dg_loss_softmax_ce(y, classes, lab, b, classes, 1.0f / b, dz, &loss));
        CHECK_OK(dg_net_backward(net, dz, NULL));
        CHECK_OK(dg_optim_step(opt, pool, dg_net_params(net), dg_net_grads(net)));
    }
    for (i = 0; i < n; i++) draw(trng, tx + dim * i, &tl[i]);
    acc = accuracy(net, tx, tl, n, classes);
    free(x);
    free(dz);
    free(tx);
    free(lab);
    free(tl);
    return acc;
}

TEST(mlp_learns_spirals)
{
    dg_net *net;
    dg_optim opt;
    float acc;
    dg_rng rng = dg_rng_make(42, 1, 0), trng = dg_rng_make(42, 2, 0);
    two_hidden_mlp(&net, 2, 64, 3, 0.0f, 1000, 7);
    CHECK_OK(dg_optim_adam(&opt, dg_net_param_count(net), 1e-2f, 0.9f, 0.999f, 1e-8f));
    acc = train_then_score(net, &opt, spiral, 2, 3, 64, 3000, &rng, &trng, 1000);
    printf("  spirals: held-out accuracy %.3f (target >= 0.95)\n", acc);
    CHECK(acc >= 0.95f);
    dg_optim_free(&opt);
    dg_net_free(net);
}

/* 12x12 images of four classes: horizontal bar, vertical bar, cross, box,
   at random positions, with noise */
static void shape_image(dg_rng *rng, float *img, int32_t *label)
{
    int c = (int)dg_rng_below(rng, 4), cy = 3 + (int)dg_rng_below(rng, 6),
        cx = 3 + (int)dg_rng_below(rng, 6), i, j;
    for (i = 0; i < 144; i++) img[i] = 0.3f * dg_rng_normal(rng);
    for (i = -3; i <= 3; i++) {
        if (c == 0 || c == 2) img[cy * 12 + cx + i] += 1.0f;
        if (c == 1 || c == 2) img[(cy + i) * 12 + cx] += 1.0f;
    }
    if (c == 3)
        for (i = -2; i <= 2; i++)
            for (j = -2; j <= 2; j++)
                if (i == -2 || i == 2 || j == -2 || j == 2) img[(cy + i) * 12 + cx + j] += 1.0f;
    *label = c;
}

TEST(cnn_learns_shapes)
{
    enum { TEST_N = 500, STEPS = 600 };
    dg_net *net;
    dg_optim opt;
    float acc;
    dg_rng rng = dg_rng_make(5, 1, 0), trng = dg_rng_make(5, 2, 0);
    CHECK_OK(dg_net_create(&net, 1, 12, 12));
    CHECK_OK(dg_net_conv2d(net, 8, 3, 1, 1));
    CHECK_OK(dg_net_batchnorm(net));
    CHECK_OK(dg_net_relu(net));
    CHECK_OK(dg_net_maxpool(net, 2, 2));
    CHECK_OK(dg_net_conv2d(net, 16, 3, 1, 1));
    CHECK_OK(dg_net_relu(net));
    CHECK_OK(dg_net_maxpool(net, 2, 2));
    CHECK_OK(dg_net_flatten(net));
    CHECK_OK(dg_net_dropout(net, 0.1f));
    CHECK_OK(dg_net_linear(net, 4));
    CHECK_OK(dg_net_plan(net, pool, TEST_N));
    CHECK_OK(dg_net_init(net, 3, 0.0f));
    CHECK_OK(dg_optim_sgd(&opt, dg_net_param_count(net), 0.05f, 0.9f));
    acc = train_then_score(net, &opt, shape_image, 144, 4, 32, STEPS, &rng, &trng, TEST_N);
    printf("  shapes: held-out accuracy %.3f after %d steps (target >= 0.95)\n", acc, STEPS);
    CHECK(acc >= 0.95f);
    dg_optim_free(&opt);
    dg_net_free(net);
}

/* ---- a GAN on a ring of eight Gaussians ---- */

#define MODES 8
#define RADIUS 2.0f
#define SIGMA 0.05f

static void ring_sample(dg_rng *rng, float *x)
{
    float a = 6.2831853f * (float)dg_rng_below(rng, MODES) / MODES;
    x[0] = RADIUS * cosf(a) + SIGMA * dg_rng_normal(rng);
    x[1] = RADIUS * sinf(a) + SIGMA * dg_rng_normal(rng);
}

TEST(gan_covers_ring_of_gaussians)
{
    enum { B = 128, Z = 8, EVAL = 4000 };
    dg_net *g, *d;
    dg_optim og, od;
    float z[B * Z], real[B * 2], dlogit[B], loss, one = 1.0f, zero = 0.0f;
    float *ez = malloc(EVAL * Z * 4);
    const float *fake, *logit, *dx;
    int it, i, m, hits[MODES] = {0}, good = 0, covered = 0;
    dg_rng rng = dg_rng_make(2024, 1, 0);
    two_hidden_mlp(&g, Z, 128, 2, 0.0f, EVAL, 1);
    two_hidden_mlp(&d, 2, 128, 1, 0.2f, B, 2);
    CHECK_OK(dg_optim_adam(&og, dg_net_param_count(g), 1e-3f, 0.5f, 0.999f, 1e-8f));
    CHECK_OK(dg_optim_adam(&od, dg_net_param_count(d), 1e-3f, 0.5f, 0.999f, 1e-8f));
    for (it = 0; it < 2500; it++) {
        float fake_copy[B * 2];
        dg_rng_fill_normal(&rng, z, B * Z, 0, 1);
        for (i = 0; i < B; i++) ring_sample(&rng, real + 2 * i);
        dg_net_forward(g, z, B, 1, &fake);
        memcpy(fake_copy, fake, sizeof fake_copy);
        /* D: real -> 1, fake -> 0 */
        dg_net_zero_grad(d);
        dg_net_forward(d, real, B, 1, &logit);
        dg_loss_bce_logits(logit, 1, &one, 0, B, 1.0f / B, dlogit, &loss);
        dg_net_backward(d, dlogit, NULL);
        dg_net_forward(d, fake_copy, B, 1, &logit);
        dg_loss_bce_logits(logit, 1, &zero, 0, B, 1.0f / B, dlogit, &loss);
        dg_net_backward(d, dlogit, NULL);
        dg_optim_step(&od, pool, dg_net_params(d), dg_net_grads(d));
        /* G: non-saturating, fake -> 1 through D */
        dg_net_forward(d, fake_copy, B, 1, &logit);
        dg_loss_bce_logits(logit, 1, &one, 0, B, 1.0f / B, dlogit, &loss);
        dg_net_backward(d, dlogit, &dx);
        dg_net_zero_grad(g);
        dg_net_backward(g, dx, NULL);
        dg_optim_step(&og, pool, dg_net_params(g), dg_net_grads(g));
    }
    dg_rng_fill_normal(&rng, ez, EVAL * Z, 0, 1);
    dg_net_forward(g, ez, EVAL, 0, &fake);
    for (i = 0; i < EVAL; i++)
        for (m = 0; m < MODES; m++) {
            float a = 6.2831853f * m / MODES, dx0 = fake[2 * i] - RADIUS * cosf(a),
                  dy0 = fake[2 * i + 1] - RADIUS * sinf(a);
            if (dx0 * dx0 + dy0 * dy0 < (4 * SIGMA) * (4 * SIGMA)) {
                hits[m]++;
                good++;
            }
        }
    for (m = 0; m < MODES; m++) covered += hits[m] >= EVAL / MODES / 4;
    printf("  ring: %d of %d modes covered, %.1f%% of samples within 4 sigma of a mode\n", covered,
           MODES, 100.0 * good / EVAL);
    CHECK(covered == MODES);
    CHECK(good >= EVAL / 2);
    dg_optim_free(&og);
    dg_optim_free(&od);
    dg_net_free(g);
    dg_net_free(d);
    free(ez);
}

int main(void)
{
    if (dg_pool_create(&pool, 2)) return 1;
    RUN(mlp_learns_spirals);
    RUN(cnn_learns_shapes);
    RUN(gan_covers_ring_of_gaussians);
    dg_pool_destroy(pool);
    return th_done();
}
