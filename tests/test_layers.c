/* Every layer and loss against finite differences (input and parameter
   gradients, odd shapes, batch 1), and convolutions against direct nested
   loops. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

static dg_pool *pool;

/* L = sum r . y for a fixed random r; returns L in double */
static double net_loss(dg_net *net, const float *x, int batch, int train, const float *r, size_t ny)
{
    const float *y;
    double s = 0.0;
    size_t i;
    if (dg_net_forward(net, x, batch, train, &y) != DG_OK) return NAN;
    for (i = 0; i < ny; i++) s += (double)r[i] * y[i];
    return s;
}

static int fd_ok(double fd, double an)
{
    double scale = fabs(fd) > fabs(an) ? fabs(fd) : fabs(an);
    return fabs(fd - an) <= 3e-2 * scale + 3e-3;
}

/* Central difference of L along one float of the net's input or params.
   Returns NAN where the two step sizes disagree: a kink of relu, leaky
   relu or max-pool lies within the step, where no derivative exists. */
static double fd_at(dg_net *net, float *v, int batch, int train, const float *r, size_t ny,
                    const float *x)
{
    float keep = *v;
    double d[2];
    int s;
    for (s = 0; s < 2; s++) {
        float eps = s ? 1.5e-3f : 3e-3f;
        double lp, lm;
        *v = keep + eps;
        lp = net_loss(net, x, batch, train, r, ny);
        *v = keep - eps;
        lm = net_loss(net, x, batch, train, r, ny);
        d[s] = (lp - lm) / (2 * eps);
    }
    *v = keep;
    return fd_ok(d[0], d[1]) ? d[1] : NAN;
}

/* Checks up to 48 input and 48 parameter entries of net's gradient;
   at most a quarter of them may sit on a kink. */
static void grad_check(dg_net *net, int batch, int train, float *x, const char *what)
{
    int c, h, w, i, bad = 0, kinks = 0, checked = 0;
    size_t nx, ny, np = dg_net_param_count(net);
    float *r, *dx, *g;
    const float *dxp;
    dg_rng rng = dg_rng_make(11, batch, np);
    dg_net_input_shape(net, &c, &h, &w);
    nx = (size_t)c * h * w * batch;
    dg_net_output_shape(net, &c, &h, &w);
    ny = (size_t)c * h * w * batch;
    r = malloc(ny * 4);
    dx = malloc(nx * 4);
    g = malloc((np + 1) * 4);
    dg_rng_fill_uniform(&rng, r, ny, -1, 1);
    net_loss(net, x, batch, train, r, ny);
    dg_net_zero_grad(net);
    CHECK_OK(dg_net_backward(net, r, &dxp));
    memcpy(dx, dxp, nx * 4);
    memcpy(g, dg_net_grads(net), np * 4);
    for (i = 0; i < 96; i++) {
        int param = i >= 48;
        size_t n = param ? np : nx, at;
        double fd, an;
        if ((size_t)(i % 48) >= n) continue;
        at = n <= 48 ? (size_t)(i % 48) : dg_rng_below(&rng, (uint32_t)n);
        fd = fd_at(net, param ? dg_net_params(net) + at : x + at, batch, train, r, ny, x);
        an = param ? g[at] : dx[at];
        checked++;
        if (isnan(fd)) {
            kinks++;
        } else if (!fd_ok(fd, an)) {
            if (bad++ < 4)
                printf("  %s: d%s[%zu] fd %.6g analytic %.6g\n", what, param ? "param" : "x", at, fd, an);
        }
    }
    CHECK(bad == 0);
    CHECK(kinks * 4 <= checked);
    if (bad || kinks * 4 > checked) printf("  %s: %d mismatches, %d kinks\n", what, bad, kinks);
    free(r);
    free(dx);
    free(g);
}

/* x away from 0 so that relu-like kinks are not crossed by +-eps */
static float *make_input(size_t n, uint64_t seed, int away_from_zero)
{
    float *x = malloc(n * 4);
    dg_rng rng = dg_rng_make(seed, 1, n);
    size_t i;
    dg_rng_fill_uniform(&rng, x, n, -1, 1);
    if (away_from_zero)
        for (i = 0; i < n; i++) x[i] = x[i] < 0 ? x[i] - 0.05f : x[i] + 0.05f;
    return x;
}

static void check_layer(int c, int h, int w, int batch, const dg_layer_desc *d, int train,
                        int away)
{
    dg_net *net;
    float *x;
    char what[96];
    CHECK_OK(dg_net_create(&net, c, h, w));
    CHECK_OK(dg_net_add(net, d));
    CHECK_OK(dg_net_plan(net, pool, batch));
    CHECK_OK(dg_net_init(net, 5, 0.0f));
    if (d->type == DG_LAYER_BATCHNORM) { /* non-trivial gamma and beta */
        dg_rng rng = dg_rng_make(2, 2, 2);
        dg_rng_fill_uniform(&rng, dg_net_params(net), dg_net_param_count(net), 0.5f, 1.5f);
    }
    x = make_input((size_t)c * h * w * batch, (uint64_t)(c * 131 + h * 7 + batch), away);
    snprintf(what, sizeof what, "type %d in %dx%dx%d batch %d train %d", (int)d->type, c, h, w,
             batch, train);
    grad_check(net, batch, train, x, what);
    free(x);
    dg_net_free(net);
}

static dg_layer_desc desc(dg_layer_type t, int out, int k, int s, int p, int op, float a)
{
    dg_layer_desc d = {.type = t, .out = out, .kernel = k, .stride = s, .pad = p, .out_pad = op,
                       .alpha = a};
    return d;
}

TEST(grad_linear)
{
    dg_layer_desc d = desc(DG_LAYER_LINEAR, 7, 0, 0, 0, 0, 0);
    check_layer(13, 1, 1, 5, &d, 1, 0);
    check_layer(3, 3, 2, 1, &d, 1, 0); /* image input flattened implicitly, batch 1 */
    d.out = 1;
    check_layer(33, 1, 1, 4, &d, 1, 0);
}

TEST(grad_conv2d)
{
    int s, p;
    for (s = 1; s <= 2; s++)
        for (p = 0; p <= 2; p++) {
            dg_layer_desc d = desc(DG_LAYER_CONV2D, 3, 3, s, p, 0, 0);
            check_layer(2, 7, 6, 2, &d, 1, 0);
        }
    {
        dg_layer_desc d = desc(DG_LAYER_CONV2D, 5, 4, 2, 1, 0, 0);
        check_layer(3, 9, 9, 1, &d, 1, 0);
    }
}

TEST(grad_conv_transpose2d)
{
    int s, p;
    for (s = 1; s <= 2; s++)
        for (p = 0; p <= 2; p++) {
            dg_layer_desc d = desc(DG_LAYER_CONV_TRANSPOSE2D, 3, 3, s, p, s - 1, 0);
            check_layer(2, 5, 4, 2, &d, 1, 0);
        }
    {
        dg_layer_desc d = desc(DG_LAYER_CONV_TRANSPOSE2D, 2, 4, 2, 1, 0, 0);
        check_layer(3, 7, 7, 1, &d, 1, 0);
    }
}

TEST(grad_batchnorm)
{
    dg_layer_desc d = desc(DG_LAYER_BATCHNORM, 0, 0, 0, 0, 0, 0);
    check_layer(3, 5, 3, 4, &d, 1, 0);  /* 2d, train */
    check_layer(9, 1, 1, 7, &d, 1, 0);  /* 1d, train */
    check_layer(3, 5, 3, 1, &d, 1, 0);  /* batch 1 of an image: statistics over H*W */
    check_layer(3, 5, 3, 3, &d, 0, 0);  /* eval: running statistics */
}

TEST(grad_activations)
{
    dg_layer_desc r = desc(DG_LAYER_RELU, 0, 0, 0, 0, 0, 0);
    dg_layer_desc l = desc(DG_LAYER_LEAKY_RELU, 0, 0, 0, 0, 0, 0.2f);
    dg_layer_desc t = desc(DG_LAYER_TANH, 0, 0, 0, 0, 0, 0);
    dg_layer_desc s = desc(DG_LAYER_SIGMOID, 0, 0, 0, 0, 0, 0);
    dg_layer_desc m = desc(DG_LAYER_MAXPOOL, 0, 2, 2, 0, 0, 0);
    dg_layer_desc m3 = desc(DG_LAYER_MAXPOOL, 0, 3, 2, 0, 0, 0);
    dg_layer_desc dr = desc(DG_LAYER_DROPOUT, 0, 0, 0, 0, 0, 0.3f);
    check_layer(2, 3, 5, 3, &r, 1, 1);
    check_layer(2, 3, 5, 1, &l, 1, 1);
    check_layer(1, 1, 37, 2, &t, 1, 0);
    check_layer(1, 1, 37, 2, &s, 1, 0);
    check_layer(2, 6, 5, 2, &m, 1, 0);
    check_layer(3, 7, 7, 1, &m3, 1, 0);
    check_layer(2, 4, 4, 3, &dr, 0, 0); /* eval: identity */
}

TEST(dropout_mask)
{
    dg_net *net;
    const float *y, *dx;
    float x[2000], dy[2000];
    int i, zeros = 0, ok = 1;
    for (i = 0; i < 2000; i++) x[i] = dy[i] = 1.0f + (float)(i % 3);
    CHECK_OK(dg_net_create(&net, 1, 1, 1000));
    CHECK_OK(dg_net_dropout(net, 0.25f));
    CHECK_OK(dg_net_plan(net, pool, 2));
    CHECK_OK(dg_net_forward(net, x, 2, 1, &y));
    CHECK_OK(dg_net_backward(net, dy, &dx));
    for (i = 0; i < 2000; i++) {
        if (y[i] == 0.0f) zeros++;
        else ok &= fabsf(y[i] - x[i] / 0.75f) < 1e-5f;
        ok &= dx[i] == (y[i] == 0.0f ? 0.0f : dy[i] / 0.75f) || fabsf(dx[i] - dy[i] / 0.75f) < 1e-5f;
    }
    CHECK(ok);
    CHECK(zeros > 400 && zeros < 600); /* 25% of 2000, +-5 sigma */
    dg_net_free(net);
}

TEST(grad_whole_dcgan_like_nets)
{
    /* a small generator and discriminator with the parametrised layers in
       play.  The activations are smooth here: with relu-like kinks in
       every channel, a bias step of 1e-3 already crosses dozens of them
       and the central difference no longer measures the derivative (kinked
       layers are checked alone above, on inputs away from their kinks). */
    dg_net *g, *d;
    float *z = make_input(3 * 8, 1, 0), *img = make_input(3 * 1 * 8 * 8, 2, 0);
    CHECK_OK(dg_net_create(&g, 8, 1, 1));
    CHECK_OK(dg_net_linear(g, 4 * 2 * 2));
    CHECK_OK(dg_net_batchnorm(g));
    CHECK_OK(dg_net_tanh(g));
    CHECK_OK(dg_net_reshape(g, 4, 2, 2));
    CHECK_OK(dg_net_conv_transpose2d(g, 3, 4, 2, 1, 0));
    CHECK_OK(dg_net_batchnorm(g));
    CHECK_OK(dg_net_sigmoid(g));
    CHECK_OK(dg_net_conv_transpose2d(g, 1, 4, 2, 1, 0));
    CHECK_OK(dg_net_tanh(g));
    CHECK_OK(dg_net_plan(g, pool, 3));
    CHECK_OK(dg_net_init(g, 9, 0.0f));
    grad_check(g, 3, 1, z, "generator");
    CHECK_OK(dg_net_create(&d, 1, 8, 8));
    CHECK_OK(dg_net_conv2d(d, 4, 4, 2, 1));
    CHECK_OK(dg_net_tanh(d));
    CHECK_OK(dg_net_conv2d(d, 6, 3, 1, 1));
    CHECK_OK(dg_net_batchnorm(d));
    CHECK_OK(dg_net_sigmoid(d));
    CHECK_OK(dg_net_maxpool(d, 2, 2));
    CHECK_OK(dg_net_flatten(d));
    CHECK_OK(dg_net_linear(d, 3));
    CHECK_OK(dg_net_plan(d, pool, 3));
    CHECK_OK(dg_net_init(d, 10, 0.0f));
    grad_check(d, 3, 1, img, "discriminator");
    dg_net_free(g);
    dg_net_free(d);
    free(z);
    free(img);
}

/* ---- losses ---- */

/* the four loss calls grad_losses checks, on 12 logits z: BCE with
   per-element targets; BCE on every second logit against a constant target
   (stride 0); softmax cross-entropy of 3 samples of 4 classes; MSE */
static dg_result loss_case(int c, float *z, const float *y, const int32_t *labels, float scale,
                           float *dz, float *l)
{
    switch (c) {
    case 0: return dg_loss_bce_logits(z, 1, y, 1, 12, scale, dz, l);
    case 1: return dg_loss_bce_logits(z, 2, y, 0, 6, scale, dz, l);
    case 2: return dg_loss_softmax_ce(z, 4, labels, 3, 4, scale, dz, l);
    default: return dg_loss_mse(z, y, 12, scale, dz, l);
    }
}

TEST(grad_losses)
{
    /* per case: the logits it reads (every stride-th of count), its gradient
       scale, and what turns the loss's difference into the gradient's (the
       BCE of case 1 is scaled per sample: 1, not 1/6) */
    static const struct {
        int stride, count;
        float scale, fd_times;
    } cases[4] = {{1, 12, 1.0f / 12, 1}, {2, 6, 1.0f, 6}, {1, 12, 1.0f / 3, 1}, {1, 12, 1.0f / 12, 1}};
    float z[12], dz[12], y[12], l0, lp, lm, eps = 1e-3f;
    int32_t labels[3] = {0, 3, 2};
    int c, i, bad = 0;
    dg_rng rng = dg_rng_make(4, 4, 4);
    dg_rng_fill_uniform(&rng, z, 12, -3, 3);
    dg_rng_fill_uniform(&rng, y, 12, 0, 1);
    for (c = 0; c < 4; c++) {
        CHECK_OK(loss_case(c, z, y, labels, cases[c].scale, dz, &l0));
        for (i = 0; i < cases[c].count; i++) {
            int at = cases[c].stride * i;
            float k = z[at];
            z[at] = k + eps; loss_case(c, z, y, labels, 0, NULL, &lp);
            z[at] = k - eps; loss_case(c, z, y, labels, 0, NULL, &lm);
            z[at] = k;
            bad += !fd_ok(cases[c].fd_times * (lp - lm) / (2 * eps), dz[at]);
        }
    }
    CHECK(bad == 0);
}

TEST(loss_values)
{
    float z[2] = {0.0f, 100.0f}, one = 1.0f, l;
    int32_t lab = 1;
    float zz[3] = {1.0f, 2.0f, 3.0f};
    CHECK_OK(dg_loss_bce_logits(z, 1, &one, 0, 1, 1, NULL, &l));
    CHECK_NEAR(l, log(2.0), 1e-6);
    CHECK_OK(dg_loss_bce_logits(z + 1, 1, &one, 0, 1, 1, NULL, &l)); /* no overflow */
    CHECK_NEAR(l, 0.0, 1e-6);
    CHECK_OK(dg_loss_softmax_ce(zz, 3, &lab, 1, 3, 1, NULL, &l));
    CHECK_NEAR(l, log(exp(1.0) + exp(2.0) + exp(3.0)) - 2.0, 1e-5);
    lab = 3;
    CHECK(dg_loss_softmax_ce(zz, 3, &lab, 1, 3, 1, NULL, &l) == DG_ERR_ARG);
}

/* ---- convolutions against direct loops ---- */

static void conv_ref(const float *x, const float *w, const float *b, float *y, int n, int ci,
                     int h, int wd, int co, int k, int s, int p, int oh, int ow)
{
    int a, o, c, i, j, u, v;
    for (a = 0; a < n; a++)
        for (o = 0; o < co; o++)
            for (i = 0; i < oh; i++)
                for (j = 0; j < ow; j++) {
                    double acc = b[o];
                    for (c = 0; c < ci; c++)
                        for (u = 0; u < k; u++)
                            for (v = 0; v < k; v++) {
                                int iy = i * s - p + u, ix = j * s - p + v;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                acc += (double)x[((a * ci + c) * h + iy) * wd + ix] *
                                       w[((o * ci + c) * k + u) * k + v];
                            }
                    y[((a * co + o) * oh + i) * ow + j] = (float)acc;
                }
}

/* transposed convolution as the scatter it is: every input pixel spreads
   its value times the kernel over the output */
static void convt_ref(const float *x, const float *w, const float *b, float *y, int n, int ci,
                      int h, int wd, int co, int k, int s, int p, int oh, int ow)
{
    int a, o, c, i, j, u, v;
    for (a = 0; a < n; a++)
        for (o = 0; o < co; o++)
            for (i = 0; i < oh * ow; i++) y[(a * co + o) * oh * ow + i] = b[o];
    for (a = 0; a < n; a++)
        for (c = 0; c < ci; c++)
            for (i = 0; i < h; i++)
                for (j = 0; j < wd; j++)
                    for (o = 0; o < co; o++)
                        for (u = 0; u < k; u++)
                            for (v = 0; v < k; v++) {
                                int oy = i * s - p + u, ox = j * s - p + v;
                                if (oy < 0 || oy >= oh || ox < 0 || ox >= ow) continue;
                                y[((a * co + o) * oh + oy) * ow + ox] +=
                                    x[((a * ci + c) * h + i) * wd + j] * w[((c * co + o) * k + u) * k + v];
                            }
}

static void conv_compare(int transpose, int n, int ci, int h, int w, int co, int k, int s, int p,
                         int op)
{
    dg_net *net;
    const float *y;
    int oc, oh, ow;
    size_t i, ny, nw = (size_t)ci * co * k * k;
    float *x = make_input((size_t)n * ci * h * w, 3, 0), *ref;
    double err = 0.0;
    CHECK_OK(dg_net_create(&net, ci, h, w));
    if (transpose)
        CHECK_OK(dg_net_conv_transpose2d(net, co, k, s, p, op));
    else
        CHECK_OK(dg_net_conv2d(net, co, k, s, p));
    CHECK_OK(dg_net_plan(net, pool, n));
    CHECK_OK(dg_net_init(net, 8, 0.0f));
    dg_net_output_shape(net, &oc, &oh, &ow);
    CHECK(oh == (transpose ? (h - 1) * s - 2 * p + k + op : (h + 2 * p - k) / s + 1));
    ny = (size_t)n * co * oh * ow;
    ref = malloc(ny * 4);
    CHECK_OK(dg_net_forward(net, x, n, 1, &y));
    if (transpose)
        convt_ref(x, dg_net_params(net), dg_net_params(net) + nw, ref, n, ci, h, w, co, k, s, p, oh, ow);
    else
        conv_ref(x, dg_net_params(net), dg_net_params(net) + nw, ref, n, ci, h, w, co, k, s, p, oh, ow);
    for (i = 0; i < ny; i++)
        if (fabs(y[i] - ref[i]) > err) err = fabs(y[i] - ref[i]);
    CHECK(err < 1e-4);
    if (err >= 1e-4) printf("  conv%s s=%d p=%d: max error %g\n", transpose ? "T" : "", s, p, err);
    free(ref);
    free(x);
    dg_net_free(net);
}

TEST(conv2d_matches_direct_loops)
{
    int s, p;
    for (s = 1; s <= 2; s++)
        for (p = 0; p <= 2; p++) {
            conv_compare(0, 3, 3, 11, 9, 5, 3, s, p, 0);
            conv_compare(0, 1, 2, 8, 8, 4, 4, s, p, 0);
        }
    conv_compare(0, 64, 1, 28, 28, 64, 4, 2, 1, 0); /* the reference DCGAN's first layer */
}

TEST(conv_transpose2d_matches_direct_loops)
{
    int s, p;
    for (s = 1; s <= 2; s++)
        for (p = 0; p <= 2; p++) {
            conv_compare(1, 3, 3, 5, 6, 4, 3, s, p, 0);
            conv_compare(1, 2, 2, 4, 4, 3, 4, s, p, s - 1);
        }
    conv_compare(1, 8, 128, 7, 7, 64, 4, 2, 1, 0); /* the reference DCGAN's G */
}

/* Output, input gradient and parameter gradient of one convolution with
   the pool's instruction set; returns them in one malloc'd vector. */
static float *conv_run(dg_pool *pl, int transpose, int n, int ci, int h, int w, int co, int k,
                       int s, int p, size_t *count)
{
    dg_net *net;
    const float *y, *dx;
    float *dy, *out;
    int oc, oh, ow;
    size_t ny, nx = (size_t)n * ci * h * w, np;
    float *x = make_input(nx, 5, 0);
    CHECK_OK(dg_net_create(&net, ci, h, w));
    CHECK_OK(transpose ? dg_net_conv_transpose2d(net, co, k, s, p, 0) : dg_net_conv2d(net, co, k, s, p));
    CHECK_OK(dg_net_plan(net, pl, n));
    CHECK_OK(dg_net_init(net, 9, 0.0f));
    dg_net_output_shape(net, &oc, &oh, &ow);
    ny = (size_t)n * oc * oh * ow;
    np = dg_net_param_count(net);
    dy = make_input(ny, 6, 0);
    *count = ny + nx + np;
    out = malloc(*count * sizeof *out);
    CHECK_OK(dg_net_forward(net, x, n, 1, &y));
    memcpy(out, y, ny * sizeof *out);
    dg_net_zero_grad(net);
    CHECK_OK(dg_net_backward(net, dy, &dx));
    memcpy(out + ny, dx, nx * sizeof *out);
    memcpy(out + ny + nx, dg_net_grads(net), np * sizeof *out);
    free(dy);
    free(x);
    dg_net_free(net);
    return out;
}

/* The SIMD paths pack image taps in their own ways (permuted windows, and
   gathers when the taps are far apart or at the ends of the image): each
   instruction set must agree with the scalar loops, forward and backward. */
TEST(conv_agrees_across_isas)
{
    static const int shapes[][8] = {
        /* transpose, n, ci, h, w, co, k, s, p */
        {0, 3, 5, 14, 14, 6, 4, 2}, /* stride 2, 4x4: two windows of taps */
        {0, 2, 40, 9, 11, 3, 1, 1}, /* 1x1: taps a whole plane apart, gathers */
        {0, 1, 3, 30, 31, 4, 5, 3}, /* wide rows, stride 3 */
        {1, 2, 8, 7, 7, 3, 4, 2},
        {0, 5, 1, 6, 5, 2, 3, 1},   /* a tiny image: every window at an end */
    };
    static const int pads[] = {1, 0, 2, 1, 2};
    size_t i, j, n0, n1;
    int isa;
    dg_pool *pl;
    CHECK_OK(dg_pool_create(&pl, 2));
    for (i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int *a = shapes[i];
        float *ref;
        CHECK_OK(dg_pool_set_isa(pl, DG_ISA_SCALAR));
        ref = conv_run(pl, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], pads[i], &n0);
        for (isa = 1; isa <= (int)dg_isa_best(); isa++) {
            float *v, err = 0.0f;
            CHECK_OK(dg_pool_set_isa(pl, (dg_isa)isa));
            v = conv_run(pl, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], pads[i], &n1);
            CHECK(n0 == n1);
            for (j = 0; j < n0 && j < n1; j++)
                if (fabsf(v[j] - ref[j]) > err) err = fabsf(v[j] - ref[j]);
            if (err > 1e-4f) printf("  shape %zu isa %s: max difference %g\n", i, dg_isa_name((dg_isa)isa), err);
            CHECK(err <= 1e-4f);
            free(v);
        }
        free(ref);
    }
    dg_pool_destroy(pl);
}

/* A convolution with few taps at stride 1 runs directly from the image on
   AVX-512 (an image's first layer): its output must be the bits of the
   GEMM it replaces, here on an explicit im2col matrix, the bias added as
   the GEMM path adds it (not at all when it is +-0).  Inputs with zeros and
   -0, biases 0, -0 and others; rows of 1 to 3 vectors with tails; pads 0
   to 2 (lanes expanded at a row's head).  With <= 16 taps the weight
   gradient too is direct: the bits of the GEMM's dW += dy cols^T (for
   implicit columns always its packed path: per depth block of
   dg__block(grid, DG__KC = 256) positions, the FMA chain from +0 over the
   block, added to dW; fmaf here), over two backward passes, and with 32
   channels also the bits of dg_gemm on the explicit columns. */
static void conv_direct_compare(dg_pool *pl, int n, int ci, int h, int w, int co, int k, int p)
{
    int oh = h + 2 * p - k + 1, ow = w + 2 * p - k + 1, kdim = ci * k * k, grid = n * oh * ow;
    int a, o, i, j, r;
    size_t nx = (size_t)n * ci * h * w, ny = (size_t)n * co * oh * ow, q;
    float *x = make_input(nx, 11, 0), *cols = calloc((size_t)kdim * grid, 4);
    float *ref = malloc(ny * 4), *prod = malloc((size_t)co * grid * 4), *wt, *bias;
    const float *y;
    dg_net *net;
    for (q = 0; q < nx; q += 7) x[q] = q % 2 ? 0.0f : -0.0f;
    CHECK_OK(dg_net_create(&net, ci, h, w));
    CHECK_OK(dg_net_conv2d(net, co, k, 1, p));
    CHECK_OK(dg_net_plan(net, pl, n));
    CHECK_OK(dg_net_init(net, 12, 0.0f));
    wt = dg_net_params(net), bias = wt + (size_t)co * kdim;
    for (o = 0; o < co; o++) bias[o] = o % 3 == 0 ? 0.0f : o % 3 == 1 ? -0.0f : 0.25f * (float)o;
    for (r = 0; r < kdim; r++) /* row (c, u, v), column (a, i, j): x there, 0 in the pad */
        for (q = 0; q < (size_t)grid; q++) {
            int c = r / (k * k), u = r / k % k, v = r % k, a = (int)q / (oh * ow);
            int iy = (int)q / ow % oh + u - p, ix = (int)q % ow + v - p;
            if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                cols[(size_t)r * grid + q] = x[((size_t)(a * ci + c) * h + iy) * w + ix];
        }
    CHECK_OK(dg_gemm(pl, 0, 0, co, grid, kdim, 1.0f, wt, kdim, cols, grid, 0.0f, prod, grid));
    for (a = 0; a < n; a++)
        for (o = 0; o < co; o++)
            for (i = 0; i < oh * ow; i++) {
                float z = prod[(size_t)o * grid + a * oh * ow + i];
                ref[((size_t)a * co + o) * oh * ow + i] = bias[o] == 0.0f ? z : z + bias[o];
            }
    CHECK_OK(dg_net_forward(net, x, n, 1, &y));
    CHECK(memcmp(y, ref, ny * 4) == 0);
    { /* dy in CNHW (the GEMM's A) from an NCHW dy */
        float *dy = make_input(ny, 13, 0), *dyc = malloc(ny * 4), *dw = calloc((size_t)co * kdim, 4);
        float *dwg = calloc((size_t)co * kdim, 4);
        int blocks = (grid + 255) / 256, kc = (grid + blocks - 1) / blocks, b0, b;
        for (a = 0; a < n; a++)
            for (o = 0; o < co; o++)
                memcpy(dyc + (size_t)o * grid + a * oh * ow, dy + ((size_t)a * co + o) * oh * ow,
                       (size_t)oh * ow * 4);
        dg_net_zero_grad(net);
        for (i = 0; i < 2; i++) {
            CHECK_OK(dg_net_backward(net, dy, NULL));
            for (o = 0; o < co; o++)
                for (j = 0; j < kdim; j++)
                    for (b0 = 0; b0 < grid; b0 += kc) {
                        float acc = 0.0f;
                        for (b = b0; b < grid && b < b0 + kc; b++)
                            acc = fmaf(dyc[(size_t)o * grid + b], cols[(size_t)j * grid + b], acc);
                        dw[o * kdim + j] += acc;
                    }
            CHECK(memcmp(dg_net_grads(net), dw, (size_t)co * kdim * 4) == 0);
            if (co == 32) {
                CHECK_OK(dg_gemm(pl, 0, 1, co, kdim, grid, 1.0f, dyc, grid, cols, grid, 1.0f, dwg, kdim));
                CHECK(memcmp(dwg, dw, (size_t)co * kdim * 4) == 0);
            }
        }
        free(dy), free(dyc), free(dw), free(dwg);
    }
    free(x), free(cols), free(ref), free(prod);
    dg_net_free(net);
}

TEST(conv_direct_matches_gemm)
{
    dg_pool *pl;
    int threads;
    for (threads = 1; threads <= 2; threads++) {
        CHECK_OK(dg_pool_create(&pl, threads));
        conv_direct_compare(pl, 10, 1, 28, 28, 32, 3, 1); /* the AdaComp CNN's first layer */
        conv_direct_compare(pl, 3, 3, 11, 9, 5, 3, 2);
        conv_direct_compare(pl, 2, 2, 8, 37, 4, 4, 1);
        conv_direct_compare(pl, 1, 1, 5, 40, 3, 5, 0);
        conv_direct_compare(pl, 2, 1, 6, 17, 2, 5, 2);
        conv_direct_compare(pl, 3, 1, 13, 21, 20, 4, 2); /* 16 taps, 2 tasks of channels */
        conv_direct_compare(pl, 1, 1, 70, 70, 3, 3, 1);  /* dW over several depth blocks */
        dg_pool_destroy(pl);
    }
}

/* 2 x 2, stride 2 max-pooling on every ISA against direct loops: the
   maximum of each window, and its gradient routed to the first maximum in
   scan order (values from a small set, +-0 included, so that ties are the
   rule), on planes with odd sides and rows of more than 16 outputs. */
TEST(maxpool_matches_direct_loops)
{
    static const int shapes[][3] = {{3, 7, 7}, {2, 28, 28}, {1, 37, 35}, {2, 2, 2}};
    static const float vals[] = {-1.0f, -0.0f, 0.0f, 0.5f, 1.0f, 0.5f};
    size_t i;
    int isa, b = 2, y, x, n, k, ok;
    dg_pool *pl;
    CHECK_OK(dg_pool_create(&pl, 2));
    for (i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        int ch = shapes[i][0], h = shapes[i][1], w = shapes[i][2], oh = h / 2, ow = w / 2;
        size_t in = (size_t)b * ch * h * w, out = (size_t)b * ch * oh * ow, j;
        float *xs = (float *)malloc(in * sizeof(float)), *dy = (float *)malloc(out * sizeof(float));
        float *ry = (float *)malloc(out * sizeof(float)), *rdx = (float *)calloc(in, sizeof(float));
        dg_rng rng = dg_rng_make(7, (uint64_t)i, 1);
        for (j = 0; j < in; j++) xs[j] = vals[dg_rng_below(&rng, 6)];
        for (j = 0; j < out; j++) dy[j] = (float)(j + 1);
        for (n = 0; n < b * ch; n++)
            for (y = 0; y < oh; y++)
                for (x = 0; x < ow; x++) {
                    const float *p = xs + (size_t)n * h * w;
                    int best = 2 * y * w + 2 * x, at;
                    for (k = 1; k < 4; k++)
                        if (p[at = (2 * y + k / 2) * w + 2 * x + k % 2] > p[best]) best = at;
                    ry[((size_t)n * oh + y) * ow + x] = p[best];
                    rdx[(size_t)n * h * w + best] = dy[((size_t)n * oh + y) * ow + x];
                }
        for (isa = 0; isa <= (int)dg_isa_best(); isa++) {
            dg_net *net;
            const float *yv, *dx;
            CHECK_OK(dg_pool_set_isa(pl, (dg_isa)isa));
            CHECK_OK(dg_net_create(&net, ch, h, w));
            CHECK_OK(dg_net_maxpool(net, 2, 2));
            CHECK_OK(dg_net_plan(net, pl, b));
            CHECK_OK(dg_net_forward(net, xs, b, 1, &yv));
            CHECK_OK(dg_net_backward(net, dy, &dx));
            ok = memcmp(yv, ry, out * sizeof(float)) == 0 && memcmp(dx, rdx, in * sizeof(float)) == 0;
            if (!ok) printf("  shape %zu isa %s differs\n", i, dg_isa_name((dg_isa)isa));
            CHECK(ok);
            dg_net_free(net);
        }
        free(xs), free(dy), free(ry), free(rdx);
    }
    dg_pool_destroy(pl);
}

/* Without dx the first layer skips its input gradient, and nothing else
   changes: the parameter gradients are the same bits. */
TEST(backward_without_dx)
{
    static const dg_layer_type firsts[] = {DG_LAYER_CONV2D, DG_LAYER_LINEAR, DG_LAYER_BATCHNORM,
                                           DG_LAYER_LEAKY_RELU};
    size_t f, i, np;
    for (f = 0; f < sizeof firsts / sizeof *firsts; f++) {
        dg_net *net;
        const float *y, *dx;
        float *x = make_input(4 * 2 * 6 * 6, 12, 0), dy[4], *g1;
        CHECK_OK(dg_net_create(&net, 2, 6, 6));
        CHECK_OK(firsts[f] == DG_LAYER_CONV2D ? dg_net_conv2d(net, 3, 3, 2, 1)
                 : firsts[f] == DG_LAYER_LINEAR ? dg_net_linear(net, 9)
                 : firsts[f] == DG_LAYER_BATCHNORM ? dg_net_batchnorm(net)
                                                   : dg_net_leaky_relu(net, 0.2f));
        CHECK_OK(dg_net_tanh(net));
        CHECK_OK(dg_net_flatten(net));
        CHECK_OK(dg_net_linear(net, 1));
        CHECK_OK(dg_net_plan(net, pool, 4));
        CHECK_OK(dg_net_init(net, 3, 0.0f));
        for (i = 0; i < 4; i++) dy[i] = 0.25f * (float)(i + 1);
        np = dg_net_param_count(net);
        g1 = malloc(np * sizeof *g1);
        dg_net_zero_grad(net);
        CHECK_OK(dg_net_forward(net, x, 4, 1, &y));
        CHECK_OK(dg_net_backward(net, dy, &dx));
        memcpy(g1, dg_net_grads(net), np * sizeof *g1);
        dg_net_zero_grad(net);
        CHECK_OK(dg_net_forward(net, x, 4, 1, &y));
        CHECK_OK(dg_net_backward(net, dy, NULL));
        CHECK(memcmp(g1, dg_net_grads(net), np * sizeof *g1) == 0);
        free(g1);
        free(x);
        dg_net_free(net);
    }
}

/* A big batch folds its columns a chunk of samples at a time (four here);
   each sample's output and input gradient must be the bits of that sample
   alone, through the same weights in one pass. */
TEST(columns_in_chunks_match_one_pass)
{
    enum { B = 64, IN = 32 * 7 * 7, OUT = 32 * 7 * 7 };
    dg_net *big, *one;
    const float *y, *dx;
    float *x = make_input((size_t)B * IN, 21, 0), *dy = make_input((size_t)B * OUT, 22, 0);
    float *yb = malloc((size_t)B * OUT * 4), *dxb = malloc((size_t)B * IN * 4);
    int n, same_y = 1, same_dx = 1;
    dg_net *nets[2];
    for (n = 0; n < 2; n++) {
        CHECK_OK(dg_net_create(&nets[n], 32, 7, 7));
        CHECK_OK(dg_net_conv_transpose2d(nets[n], 32, 4, 2, 1, 0));
        CHECK_OK(dg_net_relu(nets[n]));
        CHECK_OK(dg_net_conv2d(nets[n], 32, 4, 2, 1));
        CHECK_OK(dg_net_plan(nets[n], pool, n ? 1 : B));
        CHECK_OK(dg_net_init(nets[n], 5, 0.0f));
    }
    big = nets[0];
    one = nets[1];
    CHECK_OK(dg_net_forward(big, x, B, 1, &y));
    memcpy(yb, y, (size_t)B * OUT * 4);
    CHECK_OK(dg_net_backward(big, dy, &dx));
    memcpy(dxb, dx, (size_t)B * IN * 4);
    for (n = 0; n < B; n++) {
        CHECK_OK(dg_net_forward(one, x + (size_t)n * IN, 1, 1, &y));
        same_y &= memcmp(y, yb + (size_t)n * OUT, OUT * 4) == 0;
        CHECK_OK(dg_net_backward(one, dy + (size_t)n * OUT, &dx));
        same_dx &= memcmp(dx, dxb + (size_t)n * IN, IN * 4) == 0;
    }
    CHECK(same_y);
    CHECK(same_dx);
    free(x);
    free(dy);
    free(yb);
    free(dxb);
    dg_net_free(big);
    dg_net_free(one);
}

/* One GAN step (D on real and fake, G through D) on two pairs of nets, one
   pair sharing its scratch: the same bits. */
static void gan_step(dg_net *g, dg_net *d, const float *z, const float *real, int b)
{
    const float *y, *dx;
    float dl[8];
    int i;
    dg_net_zero_grad(d);
    dg_net_zero_grad(g);
    dg_net_forward(g, z, b, 1, &y);
    dg_net_forward(d, y, b, 1, &y);
    for (i = 0; i < b; i++) dl[i] = y[i];
    dg_net_backward(d, dl, NULL);
    dg_net_forward(d, real, b, 1, &y);
    for (i = 0; i < b; i++) dl[i] = -y[i];
    dg_net_backward(d, dl, &dx);
    dg_net_forward(d, real, b, 1, &y); /* a forward leaves dx alone */
    dg_net_backward(g, dx, NULL);
}

TEST(shared_scratch_same_bits)
{
    enum { B = 8 };
    dg_net *g[2], *d[2];
    float *z = make_input(B * 16, 31, 0), *real = make_input(B * 12 * 12, 32, 0);
    int p, step;
    for (p = 0; p < 2; p++) {
        CHECK_OK(dg_net_create(&g[p], 16, 1, 1));
        CHECK_OK(dg_net_linear(g[p], 8 * 3 * 3));
        CHECK_OK(dg_net_batchnorm(g[p]));
        CHECK_OK(dg_net_relu(g[p]));
        CHECK_OK(dg_net_reshape(g[p], 8, 3, 3));
        CHECK_OK(dg_net_conv_transpose2d(g[p], 4, 4, 2, 1, 0));
        CHECK_OK(dg_net_relu(g[p]));
        CHECK_OK(dg_net_conv_transpose2d(g[p], 1, 4, 2, 1, 0));
        CHECK_OK(dg_net_tanh(g[p]));
        CHECK_OK(dg_net_create(&d[p], 1, 12, 12));
        CHECK_OK(dg_net_conv2d(d[p], 4, 4, 2, 1));
        CHECK_OK(dg_net_leaky_relu(d[p], 0.2f));
        CHECK_OK(dg_net_conv2d(d[p], 8, 4, 2, 1));
        CHECK_OK(dg_net_leaky_relu(d[p], 0.2f));
        CHECK_OK(dg_net_flatten(d[p]));
        CHECK_OK(dg_net_linear(d[p], 1));
        CHECK(dg_net_share_scratch(g[p], d[p]) == DG_ERR_STATE); /* not planned yet */
        CHECK_OK(dg_net_plan(g[p], pool, B));
        CHECK_OK(dg_net_plan(d[p], pool, B));
        CHECK_OK(dg_net_init(g[p], 1, 0.02f));
        CHECK_OK(dg_net_init(d[p], 2, 0.02f));
    }
    CHECK_OK(dg_net_share_scratch(g[1], d[1]));
    CHECK_OK(dg_net_share_scratch(g[1], d[1])); /* already shared: nothing to do */
    CHECK(dg_net_share_scratch(NULL, d[1]) == DG_ERR_ARG);
    for (step = 0; step < 3; step++)
        for (p = 0; p < 2; p++) {
            size_t i;
            gan_step(g[p], d[p], z, real, B);
            /* a plain SGD step, so that the next one starts elsewhere */
            for (i = 0; i < dg_net_param_count(g[p]); i++)
                dg_net_params(g[p])[i] -= 0.1f * dg_net_grads(g[p])[i];
            for (i = 0; i < dg_net_param_count(d[p]); i++)
                dg_net_params(d[p])[i] -= 0.1f * dg_net_grads(d[p])[i];
        }
    CHECK(memcmp(dg_net_params(g[0]), dg_net_params(g[1]), 4 * dg_net_param_count(g[0])) == 0);
    CHECK(memcmp(dg_net_params(d[0]), dg_net_params(d[1]), 4 * dg_net_param_count(d[0])) == 0);
    CHECK(memcmp(dg_net_grads(g[0]), dg_net_grads(g[1]), 4 * dg_net_param_count(g[0])) == 0);
    dg_net_free(d[1]); /* the scratch lives on with G (ASan checks) */
    gan_step(g[1], d[0], z, real, B);
    for (p = 0; p < 2; p++) dg_net_free(g[p]);
    dg_net_free(d[0]);
    free(z);
    free(real);
}

/* The backward modes of the GAN steps: DG__GRADS_FIRST gives the bits of
   dg_net_zero_grad then dg_net_backward without reading the old gradients
   (NaN here), in every layer type with parameters; DG__GRADS_SKIP gives the
   same input gradient and leaves the linear layers' gradients alone. */
TEST(backward_grads_first_and_skip)
{
    dg_net *net;
    const float *y, *dx;
    float *x = make_input(4 * 2 * 6 * 6, 13, 0), dy[4], *g1, *dx1;
    size_t i, np, nx = 4 * 2 * 6 * 6;
    int l;
    CHECK_OK(dg_net_create(&net, 2, 6, 6));
    CHECK_OK(dg_net_conv2d(net, 3, 3, 2, 1));
    CHECK_OK(dg_net_batchnorm(net));
    CHECK_OK(dg_net_leaky_relu(net, 0.2f));
    CHECK_OK(dg_net_flatten(net));
    CHECK_OK(dg_net_linear(net, 20));
    CHECK_OK(dg_net_relu(net));
    CHECK_OK(dg_net_linear(net, 1));
    CHECK_OK(dg_net_plan(net, pool, 4));
    CHECK_OK(dg_net_init(net, 5, 0.0f));
    for (i = 0; i < 4; i++) dy[i] = 0.25f * (float)i - 0.3f;
    np = dg_net_param_count(net);
    g1 = malloc(np * sizeof *g1);
    dx1 = malloc(nx * sizeof *dx1);
    dg_net_zero_grad(net);
    CHECK_OK(dg_net_forward(net, x, 4, 1, &y));
    CHECK_OK(dg_net_backward(net, dy, &dx));
    CHECK_OK(dg_net_backward(net, dy, &dx)); /* and a second one adds */
    memcpy(g1, dg_net_grads(net), np * sizeof *g1);
    memcpy(dx1, dx, nx * sizeof *dx1);
    for (i = 0; i < np; i++) dg_net_grads(net)[i] = NAN;
    CHECK_OK(dg_net_forward(net, x, 4, 1, &y));
    CHECK_OK(dg__net_backward(net, dy, &dx, DG__GRADS_FIRST));
    CHECK_OK(dg__net_backward(net, dy, &dx, DG__GRADS_ADD));
    CHECK(memcmp(g1, dg_net_grads(net), np * sizeof *g1) == 0);
    CHECK(memcmp(dx1, dx, nx * sizeof *dx1) == 0);
    for (i = 0; i < np; i++) dg_net_grads(net)[i] = NAN;
    CHECK_OK(dg_net_forward(net, x, 4, 1, &y));
    CHECK_OK(dg__net_backward(net, dy, &dx, DG__GRADS_SKIP));
    CHECK(memcmp(dx1, dx, nx * sizeof *dx1) == 0);
    for (l = 0; l < dg_net_layer_count(net); l++) {
        dg_layer_info info;
        CHECK_OK(dg_net_layer_info(net, l, &info));
        for (i = 0; i < info.param_count && info.desc.type == DG_LAYER_LINEAR; i++)
            CHECK(isnan(dg_net_grads(net)[info.param_offset + i]));
    }
    free(g1);
    free(dx1);
    free(x);
    dg_net_free(net);
}

/* ---- PyTorch-compatible options and the layer accessors ---- */

TEST(grad_without_bias)
{
    dg_layer_desc d[3];
    int i;
    d[0] = desc(DG_LAYER_LINEAR, 7, 0, 0, 0, 0, 0);
    d[1] = desc(DG_LAYER_CONV2D, 3, 3, 2, 1, 0, 0);
    d[2] = desc(DG_LAYER_CONV_TRANSPOSE2D, 3, 4, 2, 1, 0, 0);
    for (i = 0; i < 3; i++) {
        dg_net *net;
        dg_layer_info info;
        d[i].no_bias = 1;
        check_layer(2, 5, 4, 2, &d[i], 1, 0);
        CHECK_OK(dg_net_create(&net, 2, 5, 4));
        CHECK_OK(dg_net_add(net, &d[i]));
        CHECK_OK(dg_net_layer_info(net, 0, &info));
        CHECK(info.desc.no_bias == 1);
        CHECK(info.param_count == info.weight_count); /* weights only */
        CHECK(dg_net_param_count(net) == (i == 0 ? (size_t)40 * 7 : (size_t)2 * 3 * (i == 1 ? 9 : 16)));
        dg_net_free(net);
    }
}

TEST(leaky_relu_any_slope)
{
    float slopes[] = {-0.5f, 1.5f, 0.2f};
    int i;
    for (i = 0; i < 3; i++) {
        dg_layer_desc d = desc(DG_LAYER_LEAKY_RELU, 0, 0, 0, 0, 0, slopes[i]);
        dg_net *net;
        const float *y;
        float x[2] = {-2.0f, 3.0f};
        check_layer(2, 3, 5, 2, &d, 1, 1);
        CHECK_OK(dg_net_create(&net, 2, 1, 1));
        CHECK_OK(dg_net_leaky_relu(net, slopes[i]));
        CHECK_OK(dg_net_plan(net, pool, 1));
        CHECK_OK(dg_net_forward(net, x, 1, 1, &y));
        CHECK(y[0] == -2.0f * slopes[i] && y[1] == 3.0f);
        dg_net_free(net);
    }
}

TEST(batchnorm_eps_and_momentum)
{
    dg_layer_desc d = desc(DG_LAYER_BATCHNORM, 0, 0, 0, 0, 0, 0);
    dg_layer_info info;
    dg_net *net;
    const float *y;
    float x[4] = {1.0f, 2.0f, 3.0f, 6.0f}, *st;
    d.eps = 0.5f;
    d.momentum = 0.25f;
    check_layer(3, 4, 2, 3, &d, 1, 0);
    check_layer(3, 4, 2, 3, &d, 0, 0);
    CHECK_OK(dg_net_create(&net, 1, 1, 1));
    CHECK_OK(dg_net_add(net, &d));
    CHECK_OK(dg_net_plan(net, pool, 4));
    CHECK_OK(dg_net_forward(net, x, 4, 1, &y)); /* mean 3, biased var 3.5, unbiased 14/3 */
    CHECK_NEAR(y[0], (1.0 - 3.0) / sqrt(3.5 + 0.5), 1e-6);
    st = dg_net_state(net);
    CHECK_NEAR(st[0], 0.25 * 3.0, 1e-6);
    CHECK_NEAR(st[1], 0.75 + 0.25 * 14.0 / 3.0, 1e-6);
    CHECK_OK(dg_net_forward(net, x, 4, 0, &y)); /* eval: running statistics and eps */
    CHECK_NEAR(y[3], (6.0 - st[0]) / sqrt(st[1] + 0.5), 1e-5);
    dg_net_free(net);
    /* zero in the descriptor: PyTorch's defaults */
    d.eps = d.momentum = 0.0f;
    CHECK_OK(dg_net_create(&net, 1, 1, 1));
    CHECK_OK(dg_net_add(net, &d));
    CHECK_OK(dg_net_batchnorm(net));
    CHECK_OK(dg_net_layer_info(net, 0, &info));
    CHECK(info.desc.eps == 1e-5f && info.desc.momentum == 0.1f);
    CHECK_OK(dg_net_layer_info(net, 1, &info));
    CHECK(info.desc.eps == 1e-5f && info.desc.momentum == 0.1f);
    dg_net_free(net);
}

TEST(maxpool_stride_zero_is_the_kernel)
{
    dg_net *net;
    dg_layer_info info;
    int c, h, w;
    CHECK_OK(dg_net_create(&net, 2, 6, 4));
    CHECK_OK(dg_net_maxpool(net, 2, 0));
    dg_net_output_shape(net, &c, &h, &w);
    CHECK(c == 2 && h == 3 && w == 2);
    CHECK_OK(dg_net_layer_info(net, 0, &info));
    CHECK(info.desc.stride == 2);
    dg_net_free(net);
}

TEST(layer_info)
{
    dg_net *net;
    dg_layer_info info;
    size_t p = 0, s = 0;
    int i;
    CHECK_OK(dg_net_create(&net, 3, 8, 8));
    CHECK_OK(dg_net_conv2d(net, 4, 3, 1, 1));
    CHECK_OK(dg_net_batchnorm(net));
    CHECK_OK(dg_net_relu(net));
    CHECK_OK(dg_net_flatten(net));
    CHECK_OK(dg_net_linear(net, 5));
    CHECK(dg_net_layer_count(net) == 5);
    for (i = 0; i < 5; i++) { /* layers tile both vectors in order */
        CHECK_OK(dg_net_layer_info(net, i, &info));
        CHECK(info.param_offset == p && info.state_offset == s);
        p += info.param_count;
        s += info.state_count;
    }
    CHECK(p == dg_net_param_count(net) && s == dg_net_state_count(net));
    CHECK_OK(dg_net_layer_info(net, 0, &info));
    CHECK(info.desc.type == DG_LAYER_CONV2D && info.weight_count == 4 * 3 * 9 &&
          info.param_count == 4 * 3 * 9 + 4 && info.in_c == 3 && info.out_c == 4 &&
          info.out_h == 8 && info.out_w == 8);
    CHECK_OK(dg_net_layer_info(net, 1, &info));
    CHECK(info.desc.type == DG_LAYER_BATCHNORM && info.weight_count == 4 && info.param_count == 8 &&
          info.state_count == 8);
    CHECK_OK(dg_net_layer_info(net, 3, &info));
    CHECK(info.desc.type == DG_LAYER_RESHAPE && info.out_c == 256 && info.param_count == 0);
    CHECK_OK(dg_net_layer_info(net, 4, &info));
    CHECK(info.weight_count == 5 * 256 && info.param_count == 5 * 256 + 5 && info.in_c == 256);
    CHECK(dg_net_layer_info(net, 5, &info) == DG_ERR_ARG);
    CHECK(dg_net_layer_info(net, -1, &info) == DG_ERR_ARG);
    CHECK(dg_net_layer_info(NULL, 0, &info) == DG_ERR_ARG);
    dg_net_free(net);
}

/* A PyTorch state_dict, laid out as torch stores it, copied in through the
   accessors: Conv2d(2, 3, 3, padding=1, bias=False), BatchNorm2d(3,
   eps=1e-3), LeakyReLU(-0.1), Flatten, Linear(3*4*4, 2), ConvTranspose2d
   (after a reshape to 2x1x1; 2 -> 1 channel, kernel 4, bias=False).  The
   net in eval mode must match the same layers computed here by hand. */
TEST(load_pytorch_layout)
{
    enum { N = 2, CI = 2, H = 4, CO = 3, F = CO * H * H, OUT = 2 };
    float conv_w[CO * CI * 9], bn_g[CO], bn_b[CO], bn_m[CO], bn_v[CO], lin_w[OUT * F], lin_b[OUT];
    float ct_w[OUT * 1 * 16], x[N * CI * H * H], a[N * F], z[N * OUT], ref[N * 16], zero[CO] = {0};
    const float *y;
    dg_net *net;
    dg_layer_desc d;
    dg_layer_info info;
    dg_rng rng = dg_rng_make(4, 4, 4);
    int n, i, c, j;
    double err = 0.0;
    dg_rng_fill_uniform(&rng, conv_w, sizeof conv_w / 4, -0.5f, 0.5f);
    dg_rng_fill_uniform(&rng, bn_g, CO, 0.5f, 1.5f);
    dg_rng_fill_uniform(&rng, bn_b, CO, -0.5f, 0.5f);
    dg_rng_fill_uniform(&rng, bn_m, CO, -0.2f, 0.2f);
    dg_rng_fill_uniform(&rng, bn_v, CO, 0.5f, 2.0f);
    dg_rng_fill_uniform(&rng, lin_w, sizeof lin_w / 4, -0.2f, 0.2f);
    dg_rng_fill_uniform(&rng, lin_b, OUT, -0.2f, 0.2f);
    dg_rng_fill_uniform(&rng, ct_w, sizeof ct_w / 4, -0.5f, 0.5f);
    dg_rng_fill_uniform(&rng, x, sizeof x / 4, -1.0f, 1.0f);

    CHECK_OK(dg_net_create(&net, CI, H, H));
    d = desc(DG_LAYER_CONV2D, CO, 3, 1, 1, 0, 0);
    d.no_bias = 1;
    CHECK_OK(dg_net_add(net, &d));
    d = desc(DG_LAYER_BATCHNORM, 0, 0, 0, 0, 0, 0);
    d.eps = 1e-3f;
    CHECK_OK(dg_net_add(net, &d));
    CHECK_OK(dg_net_leaky_relu(net, -0.1f));
    CHECK_OK(dg_net_flatten(net));
    CHECK_OK(dg_net_linear(net, OUT));
    CHECK_OK(dg_net_reshape(net, OUT, 1, 1));
    d = desc(DG_LAYER_CONV_TRANSPOSE2D, 1, 4, 1, 0, 0, 0);
    d.no_bias = 1;
    CHECK_OK(dg_net_add(net, &d));
    CHECK_OK(dg_net_plan(net, pool, N));
    /* torch: conv.weight (out, in, kh, kw); bn.weight, bn.bias; buffers
       running_mean, running_var; linear.weight (out, in), linear.bias;
       conv_transpose.weight (in, out, kh, kw) */
    CHECK_OK(dg_net_layer_info(net, 0, &info));
    CHECK(info.weight_count == sizeof conv_w / 4 && info.param_count == info.weight_count);
    memcpy(dg_net_params(net) + info.param_offset, conv_w, sizeof conv_w);
    CHECK_OK(dg_net_layer_info(net, 1, &info));
    memcpy(dg_net_params(net) + info.param_offset, bn_g, sizeof bn_g);
    memcpy(dg_net_params(net) + info.param_offset + info.weight_count, bn_b, sizeof bn_b);
    memcpy(dg_net_state(net) + info.state_offset, bn_m, sizeof bn_m);
    memcpy(dg_net_state(net) + info.state_offset + CO, bn_v, sizeof bn_v);
    CHECK_OK(dg_net_layer_info(net, 4, &info));
    memcpy(dg_net_params(net) + info.param_offset, lin_w, sizeof lin_w);
    memcpy(dg_net_params(net) + info.param_offset + info.weight_count, lin_b, sizeof lin_b);
    CHECK_OK(dg_net_layer_info(net, 6, &info));
    CHECK(info.param_count == sizeof ct_w / 4);
    memcpy(dg_net_params(net) + info.param_offset, ct_w, sizeof ct_w);
    CHECK_OK(dg_net_forward(net, x, N, 0, &y));

    conv_ref(x, conv_w, zero, a, N, CI, H, H, CO, 3, 1, 1, H, H);
    for (n = 0; n < N; n++)
        for (c = 0; c < CO; c++)
            for (i = 0; i < H * H; i++) {
                float *v = &a[(n * CO + c) * H * H + i];
                *v = (*v - bn_m[c]) / sqrtf(bn_v[c] + 1e-3f) * bn_g[c] + bn_b[c];
                *v = *v > 0 ? *v : -0.1f * *v;
            }
    for (n = 0; n < N; n++)
        for (j = 0; j < OUT; j++) {
            double s = lin_b[j];
            for (i = 0; i < F; i++) s += (double)lin_w[j * F + i] * a[n * F + i];
            z[n * OUT + j] = (float)s;
        }
    convt_ref(z, ct_w, zero, ref, N, OUT, 1, 1, 1, 4, 1, 0, 4, 4);
    for (i = 0; i < N * 16; i++)
        if (fabs(y[i] - ref[i]) > err) err = fabs(y[i] - ref[i]);
    CHECK(err < 1e-4);
    if (err >= 1e-4) printf("  pytorch layout: max error %g\n", err);
    dg_net_free(net);
}

/* Checkpoints: a net a version 1 file describes is still written as one;
   the new options round-trip and must match on load. */
TEST(checkpoint_of_new_options)
{
    dg_net *a, *b;
    dg_layer_desc d = desc(DG_LAYER_LINEAR, 3, 0, 0, 0, 0, 0);
    unsigned char buf[4096];
    size_t len;
    CHECK_OK(dg_net_create(&a, 4, 1, 1));
    CHECK_OK(dg_net_linear(a, 3));
    CHECK_OK(dg_net_batchnorm(a));
    CHECK_OK(dg_net_plan(a, pool, 2));
    CHECK_OK(dg_net_save_mem(a, NULL, buf, sizeof buf, &len));
    CHECK(!memcmp(buf, "DGCK", 4) && buf[4] == 1); /* container version 1 */
    dg_net_free(a);

    d.no_bias = 1;
    CHECK_OK(dg_net_create(&a, 4, 1, 1));
    CHECK_OK(dg_net_add(a, &d));
    CHECK_OK(dg_net_plan(a, pool, 2));
    CHECK_OK(dg_net_init(a, 3, 0.0f));
    CHECK_OK(dg_net_save_mem(a, NULL, buf, sizeof buf, &len));
    CHECK_OK(dg_net_create(&b, 4, 1, 1));
    CHECK_OK(dg_net_add(b, &d));
    CHECK_OK(dg_net_plan(b, pool, 2));
    CHECK_OK(dg_net_load_mem(b, NULL, buf, len));
    CHECK(memcmp(dg_net_params(a), dg_net_params(b), 4 * dg_net_param_count(a)) == 0);
    dg_net_free(b);
    CHECK_OK(dg_net_create(&b, 4, 1, 1)); /* the same net with a bias */
    CHECK_OK(dg_net_linear(b, 3));
    CHECK_OK(dg_net_plan(b, pool, 2));
    CHECK(dg_net_load_mem(b, NULL, buf, len) == DG_ERR_CONFIG);
    dg_net_free(b);
    dg_net_free(a);

    d = desc(DG_LAYER_BATCHNORM, 0, 0, 0, 0, 0, 0);
    d.momentum = 0.5f;
    CHECK_OK(dg_net_create(&a, 4, 1, 1));
    CHECK_OK(dg_net_add(a, &d));
    CHECK_OK(dg_net_plan(a, pool, 2));
    CHECK_OK(dg_net_save_mem(a, NULL, buf, sizeof buf, &len));
    CHECK_OK(dg_net_create(&b, 4, 1, 1)); /* default momentum */
    CHECK_OK(dg_net_batchnorm(b));
    CHECK_OK(dg_net_plan(b, pool, 2));
    CHECK(dg_net_load_mem(b, NULL, buf, len) == DG_ERR_CONFIG);
    CHECK_OK(dg_net_save_mem(b, NULL, buf, sizeof buf, &len)); /* and the other way */
    CHECK(dg_net_load_mem(a, NULL, buf, len) == DG_ERR_CONFIG);
    dg_net_free(b);
    dg_net_free(a);
}

TEST(bad_layer_configs)
{
    dg_net *net;
    dg_layer_desc d = desc((dg_layer_type)99, 0, 0, 0, 0, 0, 0);
    CHECK(dg_net_create(&net, 0, 1, 1) == DG_ERR_SHAPE);
    CHECK(dg_net_create(NULL, 1, 1, 1) == DG_ERR_ARG);
    CHECK_OK(dg_net_create(&net, 1, 5, 5));
    CHECK(dg_net_conv2d(net, 4, 9, 1, 0) == DG_ERR_SHAPE);
    CHECK(strstr(dg_last_error(), "kernel") != NULL);
    CHECK(dg_net_conv2d(net, 0, 3, 1, 0) == DG_ERR_ARG);
    CHECK(dg_net_conv2d(net, 4, 3, -1, 0) == DG_ERR_ARG);
    CHECK(dg_net_conv_transpose2d(net, 4, 3, 2, 0, 2) == DG_ERR_ARG); /* out_pad >= stride */
    CHECK(dg_net_reshape(net, 2, 3, 4) == DG_ERR_SHAPE);
    CHECK(dg_net_dropout(net, 1.0f) == DG_ERR_ARG);
    CHECK(dg_net_leaky_relu(net, 0.0f) == DG_ERR_ARG); /* a ReLU */
    CHECK(dg_net_leaky_relu(net, INFINITY) == DG_ERR_ARG);
    CHECK(dg_net_leaky_relu(net, NAN) == DG_ERR_ARG);
    CHECK(dg_net_maxpool(net, 2, -1) == DG_ERR_ARG);
    d = desc(DG_LAYER_RELU, 0, 0, 0, 0, 0, 0);
    d.no_bias = 1; /* only layers with a bias can drop it */
    CHECK(dg_net_add(net, &d) == DG_ERR_ARG);
    d = desc(DG_LAYER_BATCHNORM, 0, 0, 0, 0, 0, 0);
    d.momentum = 1.5f;
    CHECK(dg_net_add(net, &d) == DG_ERR_ARG);
    d.momentum = 0.0f;
    d.eps = -1.0f;
    CHECK(dg_net_add(net, &d) == DG_ERR_ARG);
    d = desc((dg_layer_type)99, 0, 0, 0, 0, 0, 0);
    CHECK(dg_net_add(net, &d) == DG_ERR_ARG);
    CHECK(dg_net_maxpool(net, 6, 1) == DG_ERR_SHAPE);
    CHECK(dg_net_plan(net, pool, 4) == DG_ERR_STATE); /* no layer */
    CHECK_OK(dg_net_linear(net, 3));
    CHECK(dg_net_forward(net, (const float *)&d, 1, 1, NULL) == DG_ERR_STATE); /* not planned */
    CHECK(dg_net_plan(net, pool, 0) == DG_ERR_ARG);
    CHECK_OK(dg_net_plan(net, pool, 4));
    CHECK(dg_net_linear(net, 3) == DG_ERR_STATE); /* planned: no more layers */
    {
        float x[25 * 5] = {0};
        const float *y;
        CHECK(dg_net_backward(net, x, NULL) == DG_ERR_STATE); /* no forward yet */
        CHECK(dg_net_forward(net, x, 5, 1, &y) == DG_ERR_SHAPE);
        CHECK(dg_net_forward(net, NULL, 1, 1, &y) == DG_ERR_ARG);
        CHECK_OK(dg_net_forward(net, x, 4, 1, &y));
    }
    dg_net_free(net);
}

int main(void)
{
    if (dg_pool_create(&pool, 2)) return 1;
    RUN(grad_linear);
    RUN(grad_conv2d);
    RUN(grad_conv_transpose2d);
    RUN(grad_batchnorm);
    RUN(grad_activations);
    RUN(dropout_mask);
    RUN(grad_whole_dcgan_like_nets);
    RUN(grad_losses);
    RUN(loss_values);
    RUN(conv2d_matches_direct_loops);
    RUN(conv_transpose2d_matches_direct_loops);
    RUN(conv_agrees_across_isas);
    RUN(maxpool_matches_direct_loops);
    RUN(backward_without_dx);
    RUN(backward_grads_first_and_skip);
    RUN(bad_layer_configs);
    RUN(grad_without_bias);
    RUN(leaky_relu_any_slope);
    RUN(conv_direct_matches_gemm);
    RUN(batchnorm_eps_and_momentum);
    RUN(maxpool_stride_zero_is_the_kernel);
    RUN(layer_info);
    RUN(load_pytorch_layout);
    RUN(checkpoint_of_new_options);
    RUN(columns_in_chunks_match_one_pass);
    RUN(shared_scratch_same_bits);
    dg_pool_destroy(pool);
    return th_done();
}
