/* distgan.h - v0.1.0 - distributed GAN training (MD-GAN, FL-GAN) in one C header

   Do this:
      #define DISTGAN_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the
   implementation.  Every other file includes it without the define.

      #include ...
      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"

   and build with nothing but a C compiler:  cc -O2 my.c -lpthread -lm
   (the data loaders use stb_image from /usr/include/stb, Debian libstb-dev).

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
      dg_net_init(net, 42);
      dg_optim_adam(&opt, dg_net_param_count(net), 1e-3f, 0.9f, 0.999f, 1e-8f);
      for (it = 0; it < 1000; it++) {
          float loss;  const float *logits;
          dg_net_zero_grad(net);
          dg_net_forward(net, x, 64, 1, &logits);      // train mode
          dg_loss_softmax_ce(logits, labels, 64, 10, 1.0f / 64, dlogits, &loss);
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
      dg_kernels   GEMM (packed, blocked, AVX-512/AVX2/scalar), im2col/col2im
      dg_net       layers and sequential nets, save/load
      dg_optim     losses, SGD with momentum, Adam

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

#if defined(DG_MALLOC) && defined(DG_FREE) && defined(DG_REALLOC)
#elif !defined(DG_MALLOC) && !defined(DG_FREE) && !defined(DG_REALLOC)
#define DG_MALLOC(sz) malloc(sz)
#define DG_REALLOC(p, sz) realloc(p, sz)
#define DG_FREE(p) free(p)
#else
#error "define all of DG_MALLOC, DG_REALLOC and DG_FREE, or none"
#endif

#ifndef DG_ASSERT
#include <assert.h>
#define DG_ASSERT(x) assert(x)
#endif

#ifdef __cplusplus
#define DG__TLS thread_local
#else
#define DG__TLS _Thread_local
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

static uint32_t dg__crc_table[256];

static void dg__crc_init(void)
{
    uint32_t k, c;
    int i;
    for (k = 0; k < 256; k++) {
        c = k;
        for (i = 0; i < 8; i++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        dg__crc_table[k] = c;
    }
}

DGDEF uint32_t dg_crc32(uint32_t crc, const void *data, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    const unsigned char *p = (const unsigned char *)data;
    size_t i;
    pthread_once(&once, dg__crc_init);
    crc = ~crc;
    for (i = 0; i < n; i++) crc = dg__crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
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
