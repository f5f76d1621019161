/* wip/gan.h: the dg_gan section of distgan.h (networks of both papers, the
   GAN steps shared by every trainer, the standalone trainer, the classifier
   evaluator), written apart while the engine sections are in progress.
   Part 1 (declarations) and part 2 (implementation) are pasted verbatim into
   distgan.h after the dg_data and dg_metrics sections; until then include
   this file right after wip/data.h:

      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"
      #include "wip/data.h"
      #include "wip/gan.h"

   Uses the dg_net, dg_optim, dg_data and dg_metrics sections. */

/* ======================================================================
   Part 1: public declarations
   ====================================================================== */
#ifndef DG_WIP_GAN_DECL
#define DG_WIP_GAN_DECL

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_gan ==== */

/* A GAN here is two dg_nets: a generator G (noise z, plus a one-hot class
   in ACGAN mode, to an image in [-1, 1]) and a discriminator D (an image to
   logits: column 0 says real/fake, columns 1..C the class in ACGAN mode).
   dg_build_generator / dg_build_discriminator make the two networks of the
   papers (the reference DCGAN and the MD-GAN paper's MLP); they come back
   created but not planned, so the caller plans them with its own pool and
   maximum batch and then initialises them (dg_net_init(net, seed, 0.02f) is
   the DCGAN initialisation).

   Every trainer (standalone, MD-GAN worker, FL-GAN worker) is built from two
   shared pieces.  dg_gan_d_step is one discriminator update: it maximises
   log D(x_r) + log(1 - D(x_g)) (plus the ACGAN class likelihood of both
   batches).  dg_gan_g_feedback is the generator's side seen from D: the
   per-sample generator loss under D and its gradient with respect to the
   generated images, dL/dx, which is exactly MD-GAN's error feedback F_n; a
   standalone trainer simply backpropagates it through G itself.

   The standalone trainer dg_gan_trainer runs "L D steps, then one G step"
   on a whole dataset; it draws every noise batch from a stream derived from
   (seed, iteration), so a run, and a run resumed from a checkpoint, are
   reproducible bit for bit.  Sample quality is measured by a dg_evaluator:
   a small CNN classifier trained by this library on the dataset (its
   weights cached in a file), whose logits give the classifier score
   exp(E_x KL(p(y|x) || p(y))) and whose logits and penultimate features give
   two FIDs against statistics of the real training data. */

typedef enum dg_arch { DG_ARCH_DCGAN = 0, DG_ARCH_MLP = 1 } dg_arch;

/* Generator: input z_dim (+ n_classes one-hot appended when n_classes > 0,
   ACGAN), output c x h x w in [-1, 1] (tanh).
   DCGAN: Linear(in, 128*(h/4)*(w/4)) BN1d ReLU reshape(128, h/4, w/4)
          ConvT(128, 64, 4, 2, 1) BN2d ReLU ConvT(64, c, 4, 2, 1) tanh
          (h and w divisible by 4, else DG_ERR_SHAPE).
   MLP (MD-GAN paper): Linear(in, 512) ReLU Linear(512, 512) ReLU
          Linear(512, c*h*w) tanh reshape(c, h, w).
   The net's input shape is (z_dim + n_classes, 1, 1). */
DGDEF dg_result dg_build_generator(dg_net **out, dg_arch arch, int z_dim, int n_classes, int c,
                                   int h, int w);
/* Discriminator: c x h x w to n_out logits (1 for a plain GAN, 1 + C for
   ACGAN: column 0 real/fake, columns 1..C the classes).
   DCGAN: Conv(c, 64, 4, 2, 1) LeakyReLU(0.2) Conv(64, 128, 4, 2, 1) BN2d
          LeakyReLU(0.2) flatten Linear(128*(h/4)*(w/4), n_out)
          (h and w divisible by 4).
   MLP:   flatten Linear(c*h*w, 512) LeakyReLU(0.2) Linear(512, 512)
          LeakyReLU(0.2) Linear(512, n_out). */
DGDEF dg_result dg_build_discriminator(dg_net **out, dg_arch arch, int c, int h, int w,
                                       int n_out);

/* The generator's input for b samples: row i of g_in (b x (z_dim +
   n_classes)) is z_i ~ N(0, I) followed, when n_classes > 0, by the one-hot
   code of labels[i] ~ U{0..n_classes-1}.  Draw order, per row: z_dim
   normals, then the label.  labels may be NULL (the labels are still drawn,
   so the stream does not depend on it). */
DGDEF void dg_gan_sample_input(dg_rng *rng, int b, int z_dim, int n_classes, float *g_in,
                               int32_t *labels);

/* One discriminator update on b real and b generated samples (each b x
   c*h*w, NCHW in [-1, 1]).  Zeroes D's gradients, then
     real batch: forward (train mode), BCE(logit0, 1), mean over b
     fake batch: forward (train mode), BCE(logit0, 0), mean over b
   (two separate forwards, so batchnorm sees each batch on its own, as the
   reference DCGAN), ACGAN (n_classes > 0) adds the softmax cross-entropy of
   columns 1..C against real_labels and fake_labels (mean over b) to each,
   backward after each forward, then one opt step on D's flat (params,
   grads).  *loss (may be NULL) = the sum of the two (or four) means, the
   "errD" of the reference scripts.  Labels may be NULL when n_classes = 0.
   b <= D's planned batch; D's output must have 1 + n_classes columns.
   Allocates nothing when b * (1 + n_classes) <= 8192, otherwise a scratch
   for the loss gradient for the duration of the call. */
DGDEF dg_result dg_gan_d_step(dg_net *d, dg_optim *opt, dg_pool *pool, const float *real,
                              const int32_t *real_labels, const float *fake,
                              const int32_t *fake_labels, int b, int n_classes, float *loss);

/* The generator loss of b generated samples under D and its input gradient
   (MD-GAN's error feedback).  Forward D in train mode on fake, then per
   sample i with z_i = logit0:
     non-saturating (saturating = 0, default):  l_i = -log D(x_i)
                                               = BCE(z_i, 1) = softplus(-z_i)
     saturating     (saturating != 0, paper):   l_i = log(1 - D(x_i))
                                               = -BCE(z_i, 0) = -softplus(z_i)
   plus, in ACGAN mode, the cross-entropy of columns 1..C against
   fake_labels.  Backward through D writes
     dx (b x c*h*w) = grad_scale * d(sum_i l_i)/dx
   so grad_scale = 1 gives the unscaled per-sample feedback MD-GAN sends and
   grad_scale = 1/b the gradient of the mean.  *loss (may be NULL) = mean_i
   l_i (negative for the saturating loss).  D's parameters are unchanged,
   but its gradients receive this backward's contribution (the caller
   zeroes them before its next D step; dg_gan_d_step does) and its
   batchnorm running statistics are updated.  Same scratch rule as
   dg_gan_d_step. */
DGDEF dg_result dg_gan_g_feedback(dg_net *d, const float *fake, const int32_t *fake_labels, int b,
                                  int n_classes, int saturating, float grad_scale, float *dx,
                                  float *loss);

#ifdef __cplusplus
}
#endif
#endif /* DG_WIP_GAN_DECL */

/* ======================================================================
   Part 2: implementation
   ====================================================================== */
#if defined(DISTGAN_IMPLEMENTATION) && !defined(DG_WIP_GAN_IMPL)
#define DG_WIP_GAN_IMPL

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_gan ==== */

/* Adds layers and frees the net on the first failure. */
#define DG__GAN_TRY(expr)                                                                 \
    do {                                                                                  \
        if ((r = (expr)) != DG_OK) goto fail;                                             \
    } while (0)

DGDEF dg_result dg_build_generator(dg_net **out, dg_arch arch, int z_dim, int n_classes, int c,
                                   int h, int w)
{
    dg_net *g = NULL;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_build_generator: out is NULL");
    *out = NULL;
    if (z_dim <= 0 || n_classes < 0 || c <= 0 || h <= 0 || w <= 0)
        return dg__fail(DG_ERR_ARG, "dg_build_generator: z_dim %d, %d classes, shape %dx%dx%d",
                        z_dim, n_classes, c, h, w);
    if (arch == DG_ARCH_DCGAN && (h % 4 || w % 4))
        return dg__fail(DG_ERR_SHAPE, "dg_build_generator: DCGAN needs h, w divisible by 4 (%dx%d)",
                        h, w);
    if (arch != DG_ARCH_DCGAN && arch != DG_ARCH_MLP)
        return dg__fail(DG_ERR_ARG, "dg_build_generator: unknown architecture %d", (int)arch);
    DG__GAN_TRY(dg_net_create(&g, z_dim + n_classes, 1, 1));
    if (arch == DG_ARCH_DCGAN) {
        DG__GAN_TRY(dg_net_linear(g, 128 * (h / 4) * (w / 4)));
        DG__GAN_TRY(dg_net_batchnorm(g));
        DG__GAN_TRY(dg_net_relu(g));
        DG__GAN_TRY(dg_net_reshape(g, 128, h / 4, w / 4));
        DG__GAN_TRY(dg_net_conv_transpose2d(g, 64, 4, 2, 1, 0));
        DG__GAN_TRY(dg_net_batchnorm(g));
        DG__GAN_TRY(dg_net_relu(g));
        DG__GAN_TRY(dg_net_conv_transpose2d(g, c, 4, 2, 1, 0));
        DG__GAN_TRY(dg_net_tanh(g));
    } else {
        DG__GAN_TRY(dg_net_linear(g, 512));
        DG__GAN_TRY(dg_net_relu(g));
        DG__GAN_TRY(dg_net_linear(g, 512));
        DG__GAN_TRY(dg_net_relu(g));
        DG__GAN_TRY(dg_net_linear(g, c * h * w));
        DG__GAN_TRY(dg_net_tanh(g));
        DG__GAN_TRY(dg_net_reshape(g, c, h, w));
    }
    *out = g;
    return DG_OK;
fail:
    dg_net_free(g);
    return r;
}

DGDEF dg_result dg_build_discriminator(dg_net **out, dg_arch arch, int c, int h, int w, int n_out)
{
    dg_net *d = NULL;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_build_discriminator: out is NULL");
    *out = NULL;
    if (c <= 0 || h <= 0 || w <= 0 || n_out <= 0)
        return dg__fail(DG_ERR_ARG, "dg_build_discriminator: shape %dx%dx%d, %d outputs", c, h, w,
                        n_out);
    if (arch == DG_ARCH_DCGAN && (h % 4 || w % 4))
        return dg__fail(DG_ERR_SHAPE,
                        "dg_build_discriminator: DCGAN needs h, w divisible by 4 (%dx%d)", h, w);
    if (arch != DG_ARCH_DCGAN && arch != DG_ARCH_MLP)
        return dg__fail(DG_ERR_ARG, "dg_build_discriminator: unknown architecture %d", (int)arch);
    DG__GAN_TRY(dg_net_create(&d, c, h, w));
    if (arch == DG_ARCH_DCGAN) {
        DG__GAN_TRY(dg_net_conv2d(d, 64, 4, 2, 1));
        DG__GAN_TRY(dg_net_leaky_relu(d, 0.2f));
        DG__GAN_TRY(dg_net_conv2d(d, 128, 4, 2, 1));
        DG__GAN_TRY(dg_net_batchnorm(d));
        DG__GAN_TRY(dg_net_leaky_relu(d, 0.2f));
        DG__GAN_TRY(dg_net_flatten(d));
        DG__GAN_TRY(dg_net_linear(d, n_out));
    } else {
        DG__GAN_TRY(dg_net_flatten(d));
        DG__GAN_TRY(dg_net_linear(d, 512));
        DG__GAN_TRY(dg_net_leaky_relu(d, 0.2f));
        DG__GAN_TRY(dg_net_linear(d, 512));
        DG__GAN_TRY(dg_net_leaky_relu(d, 0.2f));
        DG__GAN_TRY(dg_net_linear(d, n_out));
    }
    *out = d;
    return DG_OK;
fail:
    dg_net_free(d);
    return r;
}

DGDEF void dg_gan_sample_input(dg_rng *rng, int b, int z_dim, int n_classes, float *g_in,
                               int32_t *labels)
{
    int i, row = z_dim + (n_classes > 0 ? n_classes : 0);
    for (i = 0; i < b; i++) {
        float *x = g_in + (size_t)i * row;
        dg_rng_fill_normal(rng, x, (size_t)z_dim, 0.0f, 1.0f);
        if (n_classes > 0) {
            int32_t y = (int32_t)dg_rng_below(rng, (uint32_t)n_classes);
            memset(x + z_dim, 0, sizeof(float) * (size_t)n_classes);
            x[z_dim + y] = 1.0f;
            if (labels) labels[i] = y;
        }
    }
}

/* Gradient scratch of the two GAN losses: on the stack up to this many
   floats, else allocated for the call. */
#define DG__GAN_STACK 8192

typedef struct dg__gan_scratch {
    float stack[DG__GAN_STACK];
    float *p;
} dg__gan_scratch;

static dg_result dg__gan_scratch_get(dg__gan_scratch *s, size_t n)
{
    s->p = n <= DG__GAN_STACK ? s->stack : (float *)dg__alloc(sizeof(float) * n);
    return s->p ? DG_OK : dg__fail(DG_ERR_NOMEM, "dg_gan: no memory for %zu loss gradients", n);
}

static void dg__gan_scratch_put(dg__gan_scratch *s)
{
    if (s->p != s->stack) dg__free(s->p);
    s->p = NULL;
}

/* Checks the shapes shared by the two GAN losses; *n_out = D's columns. */
static dg_result dg__gan_check(dg_net *d, int b, int n_classes, const int32_t *l1,
                               const int32_t *l2, int *n_out, const char *who)
{
    int oc, oh, ow;
    if (!d) return dg__fail(DG_ERR_ARG, "%s: D is NULL", who);
    if (b <= 0 || n_classes < 0) return dg__fail(DG_ERR_ARG, "%s: b %d, %d classes", who, b, n_classes);
    if (n_classes > 0 && (!l1 || !l2)) return dg__fail(DG_ERR_ARG, "%s: ACGAN needs labels", who);
    dg_net_output_shape(d, &oc, &oh, &ow);
    if (oc * oh * ow != 1 + n_classes)
        return dg__fail(DG_ERR_SHAPE, "%s: D has %d outputs, expected 1 + %d", who, oc * oh * ow,
                        n_classes);
    *n_out = 1 + n_classes;
    return DG_OK;
}

/* Forward D on x (train mode); loss sign * BCE(logit0, target) plus the
   ACGAN cross-entropy of columns 1..C; backward with dz = gs * dloss/dz.
   *loss += the mean loss.  sign = -1 is the saturating generator loss
   log(1 - D(x)) = -BCE(z, 0). */
static dg_result dg__gan_half(dg_net *d, const float *x, const int32_t *labels, int b,
                              int n_classes, float target, float sign, float gs, float *dz,
                              float *loss, const float **dx)
{
    const float *z;
    float l;
    int n_out = 1 + n_classes;
    dg_result r;
    if ((r = dg_net_forward(d, x, b, 1, &z)) != DG_OK) return r;
    if ((r = dg_loss_bce_logits(z, n_out, &target, 0, b, sign * gs, dz, &l)) != DG_OK) return r;
    *loss += sign * l;
    if (n_classes > 0) {
        r = dg_loss_softmax_ce(z + 1, n_out, labels, b, n_classes, gs, dz + 1, &l);
        if (r != DG_OK) return r;
        *loss += l;
    }
    return dg_net_backward(d, dz, dx);
}

DGDEF dg_result dg_gan_d_step(dg_net *d, dg_optim *opt, dg_pool *pool, const float *real,
                              const int32_t *real_labels, const float *fake,
                              const int32_t *fake_labels, int b, int n_classes, float *loss)
{
    dg__gan_scratch s;
    float total = 0.0f;
    int n_out;
    dg_result r;
    if ((r = dg__gan_check(d, b, n_classes, real_labels, fake_labels, &n_out, "dg_gan_d_step")))
        return r;
    if (!opt || !real || !fake) return dg__fail(DG_ERR_ARG, "dg_gan_d_step: NULL argument");
    if (opt->n != dg_net_param_count(d))
        return dg__fail(DG_ERR_SHAPE, "dg_gan_d_step: optimiser for %zu parameters, D has %zu",
                        opt->n, dg_net_param_count(d));
    if ((r = dg__gan_scratch_get(&s, (size_t)b * n_out)) != DG_OK) return r;
    dg_net_zero_grad(d);
    r = dg__gan_half(d, real, real_labels, b, n_classes, 1.0f, 1.0f, 1.0f / b, s.p, &total, NULL);
    if (r == DG_OK)
        r = dg__gan_half(d, fake, fake_labels, b, n_classes, 0.0f, 1.0f, 1.0f / b, s.p, &total,
                         NULL);
    if (r == DG_OK) r = dg_optim_step(opt, pool, dg_net_params(d), dg_net_grads(d));
    dg__gan_scratch_put(&s);
    if (r == DG_OK && loss) *loss = total;
    return r;
}

DGDEF dg_result dg_gan_g_feedback(dg_net *d, const float *fake, const int32_t *fake_labels, int b,
                                  int n_classes, int saturating, float grad_scale, float *dx,
                                  float *loss)
{
    dg__gan_scratch s;
    const float *g;
    float total = 0.0f;
    int n_out, c, h, w;
    dg_result r;
    if ((r = dg__gan_check(d, b, n_classes, fake_labels, fake_labels, &n_out,
                           "dg_gan_g_feedback")))
        return r;
    if (!fake || !dx) return dg__fail(DG_ERR_ARG, "dg_gan_g_feedback: NULL argument");
    if ((r = dg__gan_scratch_get(&s, (size_t)b * n_out)) != DG_OK) return r;
    r = dg__gan_half(d, fake, fake_labels, b, n_classes, saturating ? 0.0f : 1.0f,
                     saturating ? -1.0f : 1.0f, grad_scale, s.p, &total, &g);
    if (r == DG_OK) {
        dg_net_input_shape(d, &c, &h, &w);
        memcpy(dx, g, sizeof(float) * (size_t)b * c * h * w);
        if (loss) *loss = total;
    }
    dg__gan_scratch_put(&s);
    return r;
}

#ifdef __cplusplus
}
#endif
#endif /* DISTGAN_IMPLEMENTATION && !DG_WIP_GAN_IMPL */
