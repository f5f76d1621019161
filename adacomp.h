/* adacomp.h - v0.1.0 - AdaComp gradient compression for parameter servers, one C header

   Do this:
      #define ADACOMP_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the
   implementation.  Every other file includes it without the define.

      #include ...
      #define ADACOMP_IMPLEMENTATION
      #include "adacomp.h"

   It needs libc only (no libm, no threads) and never includes distgan.h.

   What it does.  In asynchronous SGD with a parameter server (PS), every
   worker pushes its gradient to one machine, so the PS's ingress link is the
   bottleneck.  AdaComp (Hardy, Le Merrer, Sericola, NCA 2017) makes workers
   send, per tensor, only the k_l = max(1, floor(c * n_l)) largest |g| entries,
   and makes the PS divide each entry's step by sigma_i, the number of updates
   applied since the worker's pull that also touched entry i.  This header
   holds the worker side (a compressor), a compact packet format with a
   validating decoder, and the PS side (staleness-modulated sparse apply).

   Configuration macros (define before the implementation include):
      ADACOMP_STATIC        every function is static (private to that file)
      AC_MALLOC, AC_FREE    your allocator: define both or none
      AC_NO_SIMD            plain C kernels only (SSE2 is used where the compiler
                            targets it, as every x86-64 compiler does, and
                            AVX-512 where the CPU has it; results are
                            bit-identical either way)

   Example: one worker step and the PS receiving it.

      uint32_t sizes[] = {288, 32, 18432, 64, 401408, 128, 1280, 10};
      ac_layout layout = {8, sizes};
      ac_compressor *comp;  ac_server *ps;
      ac_compressor_config cc = ac_compressor_config_init(); // Hardy, c = 0.01,
      ac_server_config sc = ac_server_config_init();         // float32; sigma
      cc.rate = 0.005;                               // every field is a value
      ac_compressor_init(&comp, &layout, &cc);       // the only allocation
      ac_server_init(&ps, &layout, params, &sc);
      size_t cap = ac_compressor_packet_bound(comp);
      uint8_t *packet = malloc(cap);
      for (;;) {
          uint64_t t_pull;  size_t len;
          ac_server_pull(ps, my_params, &t_pull);    // dense model + clock t
          compute_gradient(my_params, grad);         // your SGD code
          ac_compress(comp, grad, t_pull, packet, cap, &len);
          // ... packet travels to the PS ...
          ac_result r = ac_server_apply_packet(ps, packet, len);
          if (r != AC_OK) fprintf(stderr, "%s\n", ac_last_error()); // refused, pull again
      }

   Every fallible function returns an ac_result (0 = AC_OK, negative = error);
   ac_result_str() names the code and ac_last_error() gives this thread's
   detailed message for the last failure.

   Memory.  ac_compressor_init and ac_server_init allocate what they need,
   sized from the layout; selection, encoding, decoding and pulling never
   allocate.  The one exception is the server's touch history (sigma mode):
   it grows, by doubling, to twice the largest staleness seen, within the
   history_bytes cap of its configuration; ac_server_reserve sizes it up
   front for a run that must not allocate at all.  ac_update_init carves an
   update out of memory the caller provides, so a decoder needs no
   allocator at all.

   Threads.  There is no global state: any number of compressors and servers
   live in one process.  An object is not internally locked: calls on one
   ac_server (apply, pull) must be serialised by the caller, which is what
   makes "apply + history append + clock increment" one atomic step.

   Table of contents (the same names mark the sections below)
      ac_config      version, result codes, errors, allocation
      ac_layout      the tensors a flat gradient is made of
      ac_update      a sparse update: per-tensor counts, indices, values
      ac_compressor  worker side: Hardy, IBM, dense, global top-k, threshold
      ac_packet      the binary packet: encode, decode, float16
      ac_server      PS side: clock, touch history, sigma modulation

   Version history
      0.2.0  *_config_init() (zero is a value, not "default"); sigma exact at any
             staleness (a touch history that grows under a memory cap) instead
             of a 64-update window; max_staleness for bounded-staleness ASGD
             (plain ASGD applies every push); IBM sends nothing for G = 0; the
             server refuses non-finite values before touching w; SIMD kernels,
             AVX-512 ones chosen at run time (the configs' simd field);
             ac_server_consume_packet (a dense push checked and applied in
             one pass)
      0.1.0  Hardy/IBM/baseline compressors, packet v1, sigma/tau/constant PS
*/
#ifndef ADACOMP_H
#define ADACOMP_H

/* Not needed here, but distgan.h (which may come next) needs POSIX, and
   under a strict -std=c11 the feature macro must precede the C library's
   first header: the same rule as at the top of distgan.h. */
#if defined(__STRICT_ANSI__) && !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && \
    !defined(_DEFAULT_SOURCE) && !defined(_XOPEN_SOURCE) && !defined(_BSD_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stddef.h>
#include <stdint.h>

#define ADACOMP_VERSION_MAJOR 0
#define ADACOMP_VERSION_MINOR 2
#define ADACOMP_VERSION_PATCH 0

#if defined(ADACOMP_STATIC) && defined(__GNUC__)
#define ACDEF static __attribute__((unused)) /* a file need not use them all */
#elif defined(ADACOMP_STATIC)
#define ACDEF static
#else
#define ACDEF extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ==== ac_config ==== */

typedef enum ac_result {
    AC_OK = 0,
    AC_ERR_ARG = -1,       /* NULL pointer, bad option, invalid update */
    AC_ERR_NOMEM = -2,     /* allocation failed (init only) */
    AC_ERR_MAGIC = -3,     /* not an AdaComp packet */
    AC_ERR_VERSION = -4,   /* packet format version this build cannot read */
    AC_ERR_FORMAT = -5,    /* unknown mode, value format or flag; bad padding */
    AC_ERR_LAYOUT = -6,    /* packet built for another layout */
    AC_ERR_COUNT = -7,     /* a per-tensor count exceeds the tensor size */
    AC_ERR_INDEX = -8,     /* an index beyond its tensor */
    AC_ERR_ORDER = -9,     /* zero delta: indices not strictly increasing */
    AC_ERR_TRUNCATED = -10,/* packet ends inside a field */
    AC_ERR_VARINT = -11,   /* varint longer than 5 bytes, over 32 bits, or not minimal */
    AC_ERR_TRAILING = -12, /* bytes after the last field */
    AC_ERR_VALUE = -13,    /* NaN/Inf value, negative scale, float16 overflow */
    AC_ERR_CAPACITY = -14, /* destination buffer or update too small */
    AC_ERR_STALE = -15,    /* tau > max_staleness: the worker must pull again */
    AC_ERR_CLOCK = -16,    /* t_pull is ahead of the server clock */
    AC_ERR_HISTORY = -17   /* sigma cannot be counted exactly: the touch history
                              would exceed history_bytes, or tau more than
                              doubled and the updates it needs were forgotten */
} ac_result;

ACDEF const char *ac_result_str(ac_result r);
/* The detailed message of the last failure on the calling thread. */
ACDEF const char *ac_last_error(void);

/* ==== ac_layout ==== */

/* The sizes of the tensors (weights and biases are separate tensors) laid end
   to end in one flat float vector.  The total must fit in 32 bits, so that
   an index is a uint32_t.  Objects built from a layout copy the sizes. */
typedef struct ac_layout {
    uint32_t count;         /* number of tensors, >= 1 */
    const uint32_t *sizes;  /* [count] entries, each >= 1 */
} ac_layout;

ACDEF ac_result ac_layout_check(const ac_layout *layout);
ACDEF uint64_t ac_layout_total(const ac_layout *layout);
/* FNV-1a 64 over the count and sizes: packets carry it so that a PS refuses
   gradients of a different network. */
ACDEF uint64_t ac_layout_hash(const ac_layout *layout);

/* ==== ac_update ==== */

typedef enum ac_mode {
    AC_MODE_HARDY = 1,     /* per-tensor top-k, k_l = max(1, floor(c n_l)) */
    AC_MODE_IBM = 2,       /* Chen et al. 2018: bins, residue, sign x scale */
    AC_MODE_DENSE = 3,     /* everything (c = 1) */
    AC_MODE_TOPK = 4,      /* top-k over the whole vector, k = max(1, floor(c n)) */
    AC_MODE_THRESHOLD = 5  /* every |g| >= threshold */
} ac_mode;

typedef enum ac_format {
    AC_FORMAT_F32 = 1,        /* IEEE single, 4 bytes per value */
    AC_FORMAT_F16 = 2,        /* IEEE half, 2 bytes, round-to-nearest-even */
    AC_FORMAT_SIGN_SCALE = 3  /* IBM mode only: 1 bit per value + f32 per tensor */
} ac_format;

#define AC_FLAG_RESIDUE 1u  /* the sender keeps the unsent part (error feedback) */

/* A sparse gradient: what a compressor selects, what a packet carries, what
   a server applies.  Indices are global (into the flat vector), strictly
   increasing, grouped by tensor in layout order: the first count[0] belong
   to tensor 0, and so on.  The server subtracts alpha * value, divided by
   the staleness modulation, from w[index]; in IBM mode value is
   +-scale[tensor]. */
typedef struct ac_update {
    ac_layout layout;       /* sizes not owned */
    uint64_t layout_hash;
    uint64_t t_pull;        /* server clock of the model the gradient came from */
    uint32_t capacity;      /* entries index/value can hold */
    uint32_t nnz;           /* entries in use */
    uint32_t *count;        /* [layout.count] entries per tensor */
    float *scale;           /* [layout.count] IBM: one scale per tensor */
    uint32_t *index;        /* [capacity] */
    float *value;           /* [capacity] */
    uint8_t mode;           /* ac_mode */
    uint8_t format;         /* ac_format: how the values travel */
    uint8_t flags;          /* AC_FLAG_* */
} ac_update;

/* Bytes of memory an update over `layout` with room for `capacity` entries
   needs; capacity = ac_layout_total() holds any packet for that layout. */
ACDEF size_t ac_update_memory_size(const ac_layout *layout, uint32_t capacity);
/* Lays the update's arrays out in `memory` (any alignment of 4 or more).
   The update keeps pointers into memory and to layout->sizes. */
ACDEF ac_result ac_update_init(ac_update *u, const ac_layout *layout, uint32_t capacity,
                               void *memory, size_t memory_size);

/* ==== ac_compressor ==== */

/* Start from ac_compressor_config_init() and change what you need: every
   field is then a value, zero included (a zeroed struct is refused: mode 0
   does not exist). */
typedef struct ac_compressor_config {
    ac_mode mode;        /* AC_MODE_HARDY */
    ac_format format;    /* AC_FORMAT_F32 (IBM mode ignores it: SIGN_SCALE) */
    double rate;         /* c for HARDY and TOPK, in [0, 1]: 0.01.  k is
                            max(1, floor(c n)), so c = 0 sends one entry */
    float threshold;     /* THRESHOLD mode, >= 0: 1e-3 (0 sends everything) */
    uint32_t bin_size;   /* IBM L_T, >= 1: 64 */
    int residue;         /* 0; 1: extension for HARDY/TOPK/THRESHOLD: accumulate
                            what was not sent and add it to the next gradient.
                            Not part of Hardy et al.; IBM always does it. */
    int simd;            /* 1: the AVX-512 kernels when the CPU has them; 0:
                            the plain ones.  The bits are the same either way */
} ac_compressor_config;

ACDEF ac_compressor_config ac_compressor_config_init(void);

typedef struct ac_stats {
    uint64_t packets;      /* compressor: encoded; server: applied */
    uint64_t rejected;     /* server: refused (malformed, non-finite, stale, other layout) */
    uint64_t entries;      /* gradient entries carried by those packets */
    uint64_t bytes_in;     /* server: packet bytes offered to it */
    uint64_t bytes_out;    /* compressor: packet bytes written; server: pull bytes */
    uint64_t dense_bytes;  /* 4 * total per packet: the same pushes sent dense */
    uint64_t pulls;        /* server: ac_server_pull calls */
    uint64_t tau_sum;      /* server: sum of the staleness of the applied pushes */
    uint64_t tau_max;      /* server: largest staleness applied */
    uint64_t history_bytes;/* server: memory of the touch history now */
} ac_stats;

typedef struct ac_compressor ac_compressor;

ACDEF ac_result ac_compressor_init(ac_compressor **out, const ac_layout *layout,
                                   const ac_compressor_config *config);
ACDEF void ac_compressor_free(ac_compressor *c);
/* Selects from a dense gradient `grad` (layout total floats) into the
   compressor's update and updates the residue.  Fails with AC_ERR_VALUE if a
   selected value (or, in IBM mode, any G) is NaN or infinite; the residue
   then holds the poisoned sum, so call ac_compressor_reset before going on. */
ACDEF ac_result ac_compressor_select(ac_compressor *c, const float *grad, uint64_t t_pull);
/* The update the last select produced (owned by the compressor). */
ACDEF const ac_update *ac_compressor_update(const ac_compressor *c);
/* Encodes the current update and counts the bytes in the stats. */
ACDEF ac_result ac_compressor_encode(ac_compressor *c, void *buf, size_t cap, size_t *written);
/* select + encode. */
ACDEF ac_result ac_compress(ac_compressor *c, const float *grad, uint64_t t_pull,
                            void *buf, size_t cap, size_t *written);
/* Bytes that always suffice for this compressor's packets. */
ACDEF size_t ac_compressor_packet_bound(const ac_compressor *c);
ACDEF void ac_compressor_reset(ac_compressor *c);   /* zero the residue */
ACDEF ac_stats ac_compressor_stats(const ac_compressor *c);

/* ==== ac_packet ==== */

#define AC_PACKET_VERSION 1
#define AC_PACKET_HEADER_SIZE 28

/* Exact size ac_encode writes for u (0 if u has no valid layout). */
ACDEF size_t ac_packet_size(const ac_update *u);
/* Worst-case size of a packet for an update with u's layout and capacity. */
ACDEF size_t ac_packet_bound(const ac_update *u);
/* Checks u (indices, counts, finite values, mode/format) and writes it. */
ACDEF ac_result ac_encode(const ac_update *u, void *buf, size_t cap, size_t *written);
/* Decodes untrusted bytes into u, whose layout (set by ac_update_init) is the
   one expected.  Every field is validated; on failure u->nnz is 0 and the
   result says which rule the packet broke.  Never allocates. */
ACDEF ac_result ac_decode(ac_update *u, const void *data, size_t len);

ACDEF uint16_t ac_f32_to_f16(float f);   /* round to nearest, ties to even */
ACDEF float ac_f16_to_f32(uint16_t h);

/* ==== ac_server ==== */

typedef enum ac_staleness {
    AC_STALENESS_SIGMA = 1,    /* AdaComp: alpha / max(1, sigma_i) */
    AC_STALENESS_TAU = 2,      /* staleness-aware ASGD: alpha / max(1, tau) */
    AC_STALENESS_CONSTANT = 3  /* plain ASGD: alpha */
} ac_staleness;

/* Start from ac_server_config_init() and change what you need (a zeroed
   struct is refused: staleness 0 does not exist). */
typedef struct ac_server_config {
    float alpha;               /* learning rate, finite: 0.1 (0 is a value) */
    ac_staleness staleness;    /* AC_STALENESS_SIGMA */
    uint64_t max_staleness;    /* 0: none, every push is applied (the paper's PS,
                                  plain ASGD); T > 0: a push with tau > T is
                                  refused, AC_ERR_STALE (bounded-staleness ASGD) */
    uint64_t history_bytes;    /* SIGMA: cap on the touch history, which grows by
                                  doubling to cover twice the largest tau seen:
                                  16 bytes per parameter up to tau = 32, 24 to 64,
                                  40 to 128, 72 to 256.  256 MiB (W = 100 on the
                                  421k-parameter CNN: 30 MB).  Past it, pushes are
                                  refused with AC_ERR_HISTORY */
    int simd;                  /* 1: AVX-512 kernels when the CPU has them; 0: plain
                                  (same bits) */
} ac_server_config;

#define AC_HISTORY_BYTES_DEFAULT ((uint64_t)256 << 20)

ACDEF ac_server_config ac_server_config_init(void);

typedef struct ac_server ac_server;

/* The server updates `params` (layout total floats, owned by the caller) in
   place.  Its clock t starts at 0.  config NULL: ac_server_config_init(). */
ACDEF ac_result ac_server_init(ac_server **out, const ac_layout *layout, float *params,
                               const ac_server_config *config);
ACDEF void ac_server_free(ac_server *s);
ACDEF uint64_t ac_server_clock(const ac_server *s);
/* Copies the parameters to dst (may be NULL) and returns the clock in t_pull. */
ACDEF void ac_server_pull(ac_server *s, float *dst, uint64_t *t_pull);
/* Decodes a packet into init-time memory and applies it: one step.  A
   refused packet (any error) leaves w, the history and the clock as they
   were; in SIGMA mode a push staler than any before may grow the history.
   Every value is checked before w is written, so a float32 value sent in
   a whole tensor is read twice: once checked, once applied. */
ACDEF ac_result ac_server_apply_packet(ac_server *s, const void *data, size_t len);
/* The same for a packet the caller gives up (a received message it frees
   next): the server may overwrite its bytes, which are unspecified after
   the call, accepted or refused.  With the AVX-512 kernels and a TAU or
   CONSTANT server, the float32 values of whole tensors (dense pushes) are
   checked and applied in one pass, each old w stored over the value that
   replaced it; a NaN or infinity found midway refuses the packet and puts
   w back from those bits, so that a refused packet leaves w, the history
   and the clock bit for bit as they were, as with ac_server_apply_packet
   (only a reader racing the call, which the serialisation rule forbids,
   could see the difference).  Otherwise it is ac_server_apply_packet.
   There is no trusted flag or "checked" mark to forge: every value is
   still checked by the call that applies it. */
ACDEF ac_result ac_server_consume_packet(ac_server *s, void *data, size_t len);
/* Applies an update already in memory: its indices are checked, and its
   values must be finite (AC_ERR_VALUE), before anything changes. */
ACDEF ac_result ac_server_apply(ac_server *s, const ac_update *u);
/* sigma_i for each entry of u as the next apply would count it (SIGMA mode;
   like an apply, it may grow the history). */
ACDEF ac_result ac_server_sigma(ac_server *s, const ac_update *u, uint32_t *sigma);
/* SIGMA mode: sizes the touch history now for pushes up to staleness tau,
   so that applies never allocate (AC_ERR_HISTORY past history_bytes). */
ACDEF ac_result ac_server_reserve(ac_server *s, uint64_t tau);
ACDEF ac_stats ac_server_stats(const ac_server *s);
/* The server's state without the parameters (they are the caller's): the
   clock, the touch history (sigma mode) and the statistics, so that a PS
   that restarts from a checkpoint modulates the next pushes exactly as if
   it had never stopped.  Little-endian: "ACSS" | u32 version 1 | u64 layout
   hash | u32 staleness | u32 words | u64 t | u64 forgot | 10 x u64 stats |
   total x (1 + words) x u64 history (sigma mode only). */
ACDEF size_t ac_server_state_size(const ac_server *s);
ACDEF ac_result ac_server_save(const ac_server *s, void *buf, size_t cap, size_t *written);
/* Restores a state saved by a server of the same layout and staleness mode
   (AC_ERR_LAYOUT / AC_ERR_FORMAT otherwise; AC_ERR_HISTORY when the history
   exceeds this server's history_bytes).  On failure nothing changes. */
ACDEF ac_result ac_server_load(ac_server *s, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* ADACOMP_H */

/* ========================================================================
   Implementation
   ======================================================================== */
#if defined(ADACOMP_IMPLEMENTATION) && !defined(ADACOMP_IMPLEMENTATION_INCLUDED)
#define ADACOMP_IMPLEMENTATION_INCLUDED

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(AC_MALLOC) && defined(AC_FREE)
#elif !defined(AC_MALLOC) && !defined(AC_FREE)
#define AC_MALLOC(sz) malloc(sz)
#define AC_FREE(p) free(p)
#else
#error "define both AC_MALLOC and AC_FREE, or neither"
#endif

#ifdef __cplusplus
#define AC__TLS thread_local
#else
#define AC__TLS _Thread_local
#endif

/* SSE2 is part of x86-64, so a plain `cc -O2` build has it; GCC does not
   vectorise these loops at -O2 by itself.  Each SIMD kernel does the same
   float operations in the same order as its scalar twin (mul then sub, no
   FMA; max and comparisons are exact), so the bits do not depend on it. */
#if defined(__SSE2__) && !defined(AC_NO_SIMD)
#include <emmintrin.h>
#define AC__SSE2 1
#endif
/* AVX-512 kernels are compiled with target attributes and chosen at init
   when the CPU has AVX-512F (ac__avx512), so that a plain `cc -O2` build
   uses them.  Their one product goes through a builtin (mul_round), which
   the compiler cannot contract into an FMA even under -ffp-contract=fast,
   and tails are masked vectors rather than scalar code for the same
   reason: the same float operations in the same order as the plain loops. */
#if defined(AC__SSE2) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AC__AVX512 1
#if !defined(__clang__)
/* GCC's intrinsics start from `__m512 __Y = __Y;`, which g++ -O1 reports as
   maybe uninitialised in every kernel that inlines them */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define AC__POP_DIAGNOSTIC 1
#endif
#define AC__AVX512_FN __attribute__((target("avx512f,popcnt")))
#define AC__MUL512(a, b) _mm512_mul_round_ps(a, b, _MM_FROUND_CUR_DIRECTION)
#endif
#if defined(__GNUC__)
#define AC__PREFETCH(p) __builtin_prefetch(p)
#else
#define AC__PREFETCH(p) ((void)0)
#endif
#define AC__AHEAD 16  /* entries ahead to prefetch in a sparse apply */
#ifndef AC__SIGMA_AHEAD
#define AC__SIGMA_AHEAD 256
#endif
#ifndef AC__IBM_AHEAD
#define AC__IBM_AHEAD 256
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ==== ac_config ==== */

ACDEF const char *ac_result_str(ac_result r)
{
    switch (r) {
    case AC_OK: return "ok";
    case AC_ERR_ARG: return "invalid argument";
    case AC_ERR_NOMEM: return "out of memory";
    case AC_ERR_MAGIC: return "not an AdaComp packet";
    case AC_ERR_VERSION: return "unsupported packet version";
    case AC_ERR_FORMAT: return "unknown packet mode, format or flags";
    case AC_ERR_LAYOUT: return "layout mismatch";
    case AC_ERR_COUNT: return "count exceeds tensor size";
    case AC_ERR_INDEX: return "index out of range";
    case AC_ERR_ORDER: return "indices not strictly increasing";
    case AC_ERR_TRUNCATED: return "truncated packet";
    case AC_ERR_VARINT: return "malformed varint";
    case AC_ERR_TRAILING: return "trailing bytes";
    case AC_ERR_VALUE: return "non-finite or unrepresentable value";
    case AC_ERR_CAPACITY: return "buffer too small";
    case AC_ERR_STALE: return "update too stale, pull again";
    case AC_ERR_CLOCK: return "clock from the future";
    case AC_ERR_HISTORY: return "staleness beyond the touch history, pull again";
    }
    return "unknown error";
}

static AC__TLS char ac__errmsg[256];

ACDEF const char *ac_last_error(void) { return ac__errmsg; }

/* Records why a call failed and returns the code, so that error paths read
   `return ac__fail(AC_ERR_INDEX, "...", ...)`. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static ac_result ac__fail(ac_result code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ac__errmsg, sizeof ac__errmsg, fmt, ap);
    va_end(ap);
    return code;
}

static void *ac__calloc(size_t count, size_t size)
{
    void *p;
    if (count == 0) count = 1;
    if (size && count > SIZE_MAX / size) return NULL;
    p = AC_MALLOC(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

static uint32_t ac__f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float ac__u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Finite means exponent bits not all ones; no libm needed. */
static int ac__finite(float f) { return (ac__f2u(f) & 0x7F800000u) != 0x7F800000u; }

static float ac__absf(float f) { return ac__u2f(ac__f2u(f) & 0x7FFFFFFFu); }

/* The builtin only when the target has the instruction: without -mpopcnt
   GCC turns it into a libgcc call, slower than these few inline steps. */
static unsigned ac__popcount64(uint64_t x)
{
#if defined(__GNUC__) && defined(__POPCNT__)
    return (unsigned)__builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (unsigned)((x * 0x0101010101010101ull) >> 56);
#endif
}

static unsigned ac__ctz64(uint64_t x) /* x != 0 */
{
#if defined(__GNUC__)
    return (unsigned)__builtin_ctzll(x);
#else
    return ac__popcount64((x & (0 - x)) - 1);
#endif
}

/* Whether to run the AVX-512 kernels: asked for (a config's simd) and there. */
static int ac__avx512(int want)
{
#ifdef AC__AVX512
    __builtin_cpu_init();
    return want && __builtin_cpu_supports("avx512f");
#else
    (void)want;
    return 0;
#endif
}

#ifdef AC__AVX512
/* Lanes [0, n) of a 16-lane vector, n > 0. */
static __mmask16 ac__lanes(uint32_t n)
{
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}
#endif

/* Index of the first NaN or infinite value, n if none. */
static uint32_t ac__first_non_finite(const float *v, uint32_t n)
{
    uint32_t j;
    for (j = 0; j < n && ac__finite(v[j]); j++) {}
    return j;
}

/* Says whether n little-endian float32 at src are all finite, and copies
   them to dst unless dst is NULL: one pass over a packet's values, no
   branch per value.  The AVX-512 kernel runs backwards: a dense apply then
   reads the values forwards, and finds the first ones still in L2. */
#ifdef AC__AVX512
AC__AVX512_FN static int ac__load_f32_avx512(float *dst, const unsigned char *src, uint32_t n)
{
    const __m512i inf = _mm512_set1_epi32(0x7F800000);
    __mmask16 bad = 0;
    uint32_t j = n, i;
    while (j > 0) {
        __mmask16 k;
        __m512i x;
        i = j >= 16 ? j - 16 : 0;
        k = ac__lanes(j - i);
        x = _mm512_maskz_loadu_epi32(k, src + 4 * (size_t)i);
        bad |= _mm512_mask_cmpeq_epi32_mask(k, _mm512_and_si512(x, inf), inf);
        if (dst) _mm512_mask_storeu_epi32(dst + i, k, x);
        j = i;
    }
    return !bad;
}
#endif

static int ac__load_f32(float *dst, const unsigned char *src, uint32_t n, int avx512)
{
    uint32_t j = 0, bad = 0;
#ifdef AC__AVX512
    if (avx512) return ac__load_f32_avx512(dst, src, n);
#endif
    (void)avx512;
#ifdef AC__SSE2 /* x86: little-endian */
    const __m128i inf = _mm_set1_epi32(0x7F800000);
    __m128i b = _mm_setzero_si128();
    for (; j + 4 <= n; j += 4) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(src + 4 * (size_t)j));
        b = _mm_or_si128(b, _mm_cmpeq_epi32(_mm_and_si128(x, inf), inf));
        if (dst) _mm_storeu_si128((__m128i *)(void *)(dst + j), x);
    }
    bad = (uint32_t)_mm_movemask_epi8(b);
#endif
    for (; j < n; j++) {
        const unsigned char *p = src + 4 * (size_t)j;
        uint32_t x = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24;
        bad |= (x & 0x7F800000u) == 0x7F800000u;
        if (dst) dst[j] = ac__u2f(x);
    }
    return !bad;
}

/* Whether all n values are finite, without a branch per value. */
static int ac__all_finite(const float *v, uint32_t n)
{
    uint32_t j = 0, bad = 0;
#ifdef AC__SSE2
    const __m128i inf = _mm_set1_epi32(0x7F800000);
    __m128i b = _mm_setzero_si128();
    for (; j + 4 <= n; j += 4) {
        __m128i x = _mm_castps_si128(_mm_loadu_ps(v + j));
        b = _mm_or_si128(b, _mm_cmpeq_epi32(_mm_and_si128(x, inf), inf));
    }
    bad = (uint32_t)_mm_movemask_epi8(b);
#endif
    for (; j < n; j++) bad |= (ac__f2u(v[j]) & 0x7F800000u) == 0x7F800000u;
    return !bad;
}

/* w -= a * v over a contiguous run (a dense push's whole tensors).  v is
   a float array of this host, or, where AC__RAW_F32, a packet's values in
   place (unaligned little-endian bytes), which saves the copy. */
#ifdef AC__SSE2
#define AC__RAW_F32 1
#endif
#ifdef AC__AVX512
AC__AVX512_FN static void ac__axpy_avx512(float *w, const unsigned char *b, uint32_t n, float a)
{
    const __m512 av = _mm512_set1_ps(a);
    uint32_t k;
    for (k = 0; k < n; k += 16) {
        __mmask16 m = ac__lanes(n - k);
        __m512 x = AC__MUL512(av, _mm512_maskz_loadu_ps(m, b + 4 * (size_t)k));
        _mm512_mask_storeu_ps(w + k, m, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, w + k), x));
    }
}

/* w -= a * v in one pass over a consumed packet's values v (see
   ac_server_consume_packet): each 16 values are checked before their w is
   written, and the w they replace is stored over them, so that a
   non-finite value can put w[0, k) back bit for bit.  Returns the index of
   the first non-finite value, w as it was; n if none, v then holding the
   old w. */
AC__AVX512_FN static uint32_t ac__axpy_save_avx512(float *w, unsigned char *v, uint32_t n, float a)
{
    const __m512 av = _mm512_set1_ps(a);
    const __m512i inf = _mm512_set1_epi32(0x7F800000);
    uint32_t k;
    for (k = 0; k < n; k += 16) {
        __mmask16 m = ac__lanes(n - k), bad;
        __m512i x = _mm512_maskz_loadu_epi32(m, v + 4 * (size_t)k);
        __m512 old;
        if ((bad = _mm512_mask_cmpeq_epi32_mask(m, _mm512_and_si512(x, inf), inf)) != 0) {
            memcpy(w, v, 4 * (size_t)k);
            return k + ac__ctz64(bad);
        }
        old = _mm512_maskz_loadu_ps(m, w + k);
        _mm512_mask_storeu_ps(w + k, m, _mm512_sub_ps(old, AC__MUL512(av, _mm512_castsi512_ps(x))));
        _mm512_mask_storeu_ps(v + 4 * (size_t)k, m, old);
    }
    return n;
}
#endif

static void ac__axpy(float *w, const void *v, uint32_t n, float a, int avx512)
{
    const unsigned char *b = (const unsigned char *)v;
    uint32_t k = 0;
#ifdef AC__AVX512
    if (avx512) {
        ac__axpy_avx512(w, b, n, a);
        return;
    }
#endif
    (void)avx512;
#ifdef AC__SSE2
    const __m128 av = _mm_set1_ps(a);
    for (; k + 8 <= n; k += 8) {
        __m128 v0 = _mm_loadu_ps((const float *)(const void *)(b + 4 * (size_t)k));
        __m128 v1 = _mm_loadu_ps((const float *)(const void *)(b + 4 * (size_t)k + 16));
        _mm_storeu_ps(w + k, _mm_sub_ps(_mm_loadu_ps(w + k), _mm_mul_ps(av, v0)));
        _mm_storeu_ps(w + k + 4, _mm_sub_ps(_mm_loadu_ps(w + k + 4), _mm_mul_ps(av, v1)));
    }
#endif
    for (; k < n; k++) {
        float x;
        memcpy(&x, b + 4 * (size_t)k, 4);
        w[k] -= a * x;
    }
}

/* ==== ac_layout ==== */

ACDEF ac_result ac_layout_check(const ac_layout *layout)
{
    uint64_t total = 0;
    uint32_t l;
    if (!layout || !layout->sizes || layout->count == 0)
        return ac__fail(AC_ERR_ARG, "layout: NULL or no tensors");
    for (l = 0; l < layout->count; l++) {
        if (layout->sizes[l] == 0)
            return ac__fail(AC_ERR_ARG, "layout: tensor %u has size 0", (unsigned)l);
        total += layout->sizes[l];
    }
    if (total > UINT32_MAX)
        return ac__fail(AC_ERR_ARG, "layout: %llu entries do not fit 32-bit indices",
                        (unsigned long long)total);
    return AC_OK;
}

ACDEF uint64_t ac_layout_total(const ac_layout *layout)
{
    uint64_t total = 0;
    uint32_t l;
    if (!layout || !layout->sizes) return 0;
    for (l = 0; l < layout->count; l++) total += layout->sizes[l];
    return total;
}

static uint64_t ac__fnv_u32(uint64_t h, uint32_t v)
{
    int b;
    for (b = 0; b < 4; b++) {
        h ^= (v >> (8 * b)) & 0xFFu;
        h *= 0x100000001B3ull;
    }
    return h;
}

ACDEF uint64_t ac_layout_hash(const ac_layout *layout)
{
    uint64_t h = 0xCBF29CE484222325ull;
    uint32_t l;
    if (!layout || !layout->sizes) return 0;
    h = ac__fnv_u32(h, layout->count);
    for (l = 0; l < layout->count; l++) h = ac__fnv_u32(h, layout->sizes[l]);
    return h;
}

/* Copies the sizes so that objects outlive the caller's layout. */
static ac_result ac__layout_copy(ac_layout *dst, uint32_t **sizes, const ac_layout *src)
{
    ac_result r = ac_layout_check(src);
    if (r != AC_OK) return r;
    *sizes = (uint32_t *)ac__calloc(src->count, sizeof(uint32_t));
    if (!*sizes) return ac__fail(AC_ERR_NOMEM, "layout: cannot copy %u sizes", (unsigned)src->count);
    memcpy(*sizes, src->sizes, (size_t)src->count * sizeof(uint32_t));
    dst->count = src->count;
    dst->sizes = *sizes;
    return AC_OK;
}

/* ==== ac_update ==== */

/* Arrays in order: count, scale, index, value; all 4-byte elements, so any
   4-aligned memory works. */
ACDEF size_t ac_update_memory_size(const ac_layout *layout, uint32_t capacity)
{
    if (!layout) return 0;
    return ((size_t)layout->count * 2 + (size_t)capacity * 2) * 4;
}

ACDEF ac_result ac_update_init(ac_update *u, const ac_layout *layout, uint32_t capacity,
                               void *memory, size_t memory_size)
{
    unsigned char *m = (unsigned char *)memory;
    ac_result r;
    if (!u || !memory) return ac__fail(AC_ERR_ARG, "ac_update_init: NULL argument");
    if ((r = ac_layout_check(layout)) != AC_OK) return r;
    if (memory_size < ac_update_memory_size(layout, capacity))
        return ac__fail(AC_ERR_CAPACITY, "ac_update_init: %zu bytes given, %zu needed",
                        memory_size, ac_update_memory_size(layout, capacity));
    if ((uintptr_t)m & 3) return ac__fail(AC_ERR_ARG, "ac_update_init: memory not 4-aligned");
    memset(u, 0, sizeof *u);
    u->layout = *layout;
    u->layout_hash = ac_layout_hash(layout);
    u->capacity = capacity;
    u->count = (uint32_t *)(void *)m;
    u->scale = (float *)(void *)(m + (size_t)layout->count * 4);
    u->index = (uint32_t *)(void *)(m + (size_t)layout->count * 8);
    u->value = (float *)(void *)(m + (size_t)layout->count * 8 + (size_t)capacity * 4);
    memset(u->count, 0, (size_t)layout->count * 4);
    memset(u->scale, 0, (size_t)layout->count * 4);
    u->mode = AC_MODE_HARDY;
    u->format = AC_FORMAT_F32;
    return AC_OK;
}

/* ==== ac_compressor ==== */

/* Selection.  Hardy mode needs, per tensor, the k largest |g|; a sort costs
   O(n log n) and a comparison quickselect is branchy.  We use a radix
   select on the bits of |g| instead: for non-negative IEEE floats the bit
   pattern, read as an unsigned integer, orders like the value.
     1. A histogram of bits 30..20 over the tensor finds the bucket b that
        holds the k-th largest |g|.
     2. One branch-free pass collects, in increasing order, the indices
        whose |g| lies in bucket b or above: about k plus one bucket.
     3. Two more histogram rounds (bits 19..10, then 9..0) over that short
        list pin down the exact bit pattern T of the k-th largest |g|.
     4. Ties are broken deterministically, the lower index winning: the
        list is in index order, so the r-th entry equal to T is the last
        one taken; the list is then emitted by comparing keys
        (|g| bits << 32 | ~index), already in increasing index order.
   Two passes over the tensor, worst-case linear time, no sort, no
   allocation (the list lives in init-time scratch of max n_l entries). */

#define AC__HIST_BUCKETS 2048
#define AC__HIST_WAYS 4

struct ac_compressor {
    ac_compressor_config cfg;  /* defaults resolved */
    ac_layout layout;
    uint32_t *sizes;           /* owned copy of the layout sizes */
    uint32_t *k;               /* HARDY: k_l per tensor */
    uint32_t k_global;         /* TOPK */
    uint32_t total;
    int avx512;                /* cfg.simd and the CPU has it */
    float *residue;            /* IBM or cfg.residue: total floats, else NULL */
    uint16_t *sent;            /* IBM with AVX-512: one mask per 16-lane chunk of each
                                  bin (bins in order, chunks from the bin's start),
                                  lane set when R still holds the G sent last time,
                                  its correction R -= +-scale pending; whole
                                  aligned masks, so that no store half-overlaps
                                  the next load (a store-forwarding stall) */
    size_t sent_chunks;        /* entries of sent */
    float *sent_scale;         /* IBM with AVX-512: that scale, per tensor */
    uint32_t *scratch;         /* the candidate list: max n_l (total for TOPK) */
    uint32_t hist[AC__HIST_WAYS][AC__HIST_BUCKETS];
    void *update_memory;
    ac_update update;
    ac_stats stats;
};

/* k = max(1, floor(c * n)), at most n.  The product is taken with a 4-ulp
   tolerance so that a decimal c such as 0.29 (stored as 0.28999...) still
   gives 29 of 100 rather than 28. */
static uint32_t ac__k_of(double c, uint32_t n)
{
    double x = c * (double)n * (1.0 + 4.0 * DBL_EPSILON);
    uint32_t k = x >= (double)n ? n : (uint32_t)x;
    if (k < 1) k = 1;
    return k < n ? k : n;
}

static uint32_t ac__abits(float f) { return ac__f2u(f) & 0x7FFFFFFFu; }

/* In one histogram round, finds the bucket holding the r-th largest key and
   turns r into the rank within that bucket. */
static uint32_t ac__pick_bucket(const uint32_t *hist, uint32_t buckets, uint32_t *r)
{
    uint32_t b = buckets;
    while (b-- > 0) {
        if (hist[b] >= *r) return b;
        *r -= hist[b];
    }
    return 0; /* unreachable when r <= number of keys */
}

/* Step 1: merges AC__HIST_WAYS partial histograms, which keeps repeated
   increments of one hot bucket from serialising on a store. */
static uint32_t ac__hist_first(ac_compressor *c, const float *x, uint32_t n, uint32_t *r)
{
    uint32_t (*h)[AC__HIST_BUCKETS] = c->hist;
    uint32_t i, b;
    memset(h, 0, sizeof c->hist);
    for (i = 0; i + 4 <= n; i += 4) {
        h[0][ac__abits(x[i]) >> 20]++;
        h[1][ac__abits(x[i + 1]) >> 20]++;
        h[2][ac__abits(x[i + 2]) >> 20]++;
        h[3][ac__abits(x[i + 3]) >> 20]++;
    }
    for (; i < n; i++) h[0][ac__abits(x[i]) >> 20]++;
    for (b = 0; b < AC__HIST_BUCKETS; b++) h[0][b] += h[1][b] + h[2][b] + h[3][b];
    return ac__pick_bucket(h[0], AC__HIST_BUCKETS, r);
}

/* Step 2: the store is unconditional and the count advances on a match,
   so a 1% selection rate costs no branch mispredictions. */
static uint32_t ac__collect(uint32_t *list, const float *x, uint32_t n, uint32_t min_bits)
{
    uint32_t i, m = 0;
    for (i = 0; i < n; i++) {
        list[m] = i;
        m += ac__abits(x[i]) >= min_bits;
    }
    return m;
}

/* Step 3, one round: among the listed entries whose bits match `prefix`
   under `mask`, histograms the 10 bits at `shift` and returns the prefix
   extended by the bucket of rank r. */
static uint32_t ac__refine(ac_compressor *c, const float *x, const uint32_t *list, uint32_t m,
                           uint32_t prefix, uint32_t mask, int shift, uint32_t *r)
{
    uint32_t *h = c->hist[0];
    uint32_t j;
    memset(h, 0, 1024 * sizeof(uint32_t));
    for (j = 0; j < m; j++) {
        uint32_t a = ac__abits(x[list[j]]);
        if ((a & mask) == prefix) h[(a >> shift) & 1023u]++;
    }
    return prefix | ac__pick_bucket(h, 1024, r) << shift;
}

/* Steps 1-4 for 1 <= k < n: leaves the candidate list in scratch (*m
   entries) and returns the key of the k-th largest |x_i|. */
static uint64_t ac__kth_key(ac_compressor *c, const float *x, uint32_t n, uint32_t k,
                            uint32_t *m)
{
    uint32_t r = k, j, t_bits = ac__hist_first(c, x, n, &r) << 20;
    const uint32_t *list = c->scratch;
    *m = ac__collect(c->scratch, x, n, t_bits);
    t_bits = ac__refine(c, x, list, *m, t_bits, 0x7FF00000u, 10, &r);
    t_bits = ac__refine(c, x, list, *m, t_bits, 0x7FFFFC00u, 0, &r);
    for (j = 0; j < *m; j++)
        if (ac__abits(x[list[j]]) == t_bits && --r == 0) break;
    return ((uint64_t)t_bits << 32) | (uint32_t)~list[j];
}

/* Appends the listed entries of x whose key is >= min_key; indices in the
   update are base + the listed index. */
static void ac__emit_list(ac_update *u, const float *x, const uint32_t *list, uint32_t m,
                          uint32_t base, uint64_t min_key)
{
    uint32_t j, nnz = u->nnz;
    for (j = 0; j < m; j++) {
        uint32_t i = list[j];
        if ((((uint64_t)ac__abits(x[i]) << 32) | (uint32_t)~i) >= min_key) {
            u->index[nnz] = base + i;
            u->value[nnz++] = x[i];
        }
    }
    u->nnz = nnz;
}

static void ac__emit_all(ac_update *u, const float *x, uint32_t base, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++) u->index[u->nnz + i] = base + i;
    memcpy(u->value + u->nnz, x, (size_t)n * sizeof(float));
    u->nnz += n;
}

static uint32_t ac__emit_threshold(ac_update *u, const float *x, uint32_t base, uint32_t n,
                                   float t)
{
    uint32_t i, nnz = u->nnz;
    for (i = 0; i < n; i++) {
        if (ac__absf(x[i]) >= t) {
            u->index[nnz] = base + i;
            u->value[nnz++] = x[i];
        }
    }
    n = nnz - u->nnz;
    u->nnz = nnz;
    return n;
}

/* Error feedback: the sent entries leave the residue. */
static void ac__residue_clear_sent(ac_compressor *c)
{
    uint32_t j;
    for (j = 0; j < c->update.nnz; j++) c->residue[c->update.index[j]] = 0.0f;
}

static ac_result ac__check_sent_finite(const ac_update *u)
{
    uint32_t j;
    for (j = 0; j < u->nnz; j++)
        if (!ac__finite(u->value[j]))
            return ac__fail(AC_ERR_VALUE, "compress: gradient entry %u is not finite",
                            (unsigned)u->index[j]);
    return AC_OK;
}

/* Hardy et al.: per tensor, the k_l largest |g|. */
static void ac__select_hardy(ac_compressor *c, const float *x)
{
    uint32_t l, base = 0, m;
    for (l = 0; l < c->layout.count; l++) {
        uint32_t n = c->layout.sizes[l], k = c->k[l], first = c->update.nnz;
        if (k >= n) {
            ac__emit_all(&c->update, x + base, base, n);
        } else {
            uint64_t key = ac__kth_key(c, x + base, n, k, &m);
            ac__emit_list(&c->update, x + base, c->scratch, m, base, key);
        }
        c->update.count[l] = c->update.nnz - first;
        base += n;
    }
}

/* Baseline: one k over the whole vector.  The per-tensor counts are read
   off the emitted (increasing) indices afterwards. */
static void ac__select_topk(ac_compressor *c, const float *x)
{
    ac_update *u = &c->update;
    uint32_t l, j = 0, end = 0, m;
    if (c->k_global >= c->total) {
        ac__emit_all(u, x, 0, c->total);
    } else {
        uint64_t key = ac__kth_key(c, x, c->total, c->k_global, &m);
        ac__emit_list(u, x, c->scratch, m, 0, key);
    }
    for (l = 0; l < c->layout.count; l++) {
        uint32_t first = j;
        end += c->layout.sizes[l];
        while (j < u->nnz && u->index[j] < end) j++;
        u->count[l] = j - first;
    }
}

static void ac__select_threshold(ac_compressor *c, const float *x)
{
    uint32_t l, base = 0;
    for (l = 0; l < c->layout.count; l++) {
        uint32_t n = c->layout.sizes[l];
        c->update.count[l] = ac__emit_threshold(&c->update, x + base, base, n, c->cfg.threshold);
        base += n;
    }
}

/* DENSE: the indices were written once at init; only the values move. */
static void ac__select_dense(ac_compressor *c, const float *g)
{
    memcpy(c->update.value, g, (size_t)c->total * sizeof(float));
    c->update.nnz = c->total;
}

/* IBM AdaComp, one bin kernel, step 1: G = R + dW stored in R; returns
   max |G| over [0, n), or a negative value if some G is not finite. */
static float ac__ibm_accumulate(float *R, const float *dw, uint32_t n)
{
    uint32_t i = 0, bad = 0;
    float gmax = 0.0f;
#ifdef AC__SSE2
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
    const __m128i inf = _mm_set1_epi32(0x7F800000);
    __m128 m = _mm_setzero_ps();
    __m128i b = _mm_setzero_si128();
    for (; i + 4 <= n; i += 4) {
        __m128 G = _mm_add_ps(_mm_loadu_ps(R + i), _mm_loadu_ps(dw + i)), a;
        _mm_storeu_ps(R + i, G);
        a = _mm_and_ps(G, abs_mask);
        m = _mm_max_ps(m, a);
        b = _mm_or_si128(b, _mm_cmpeq_epi32(_mm_and_si128(_mm_castps_si128(a), inf), inf));
    }
    bad = (uint32_t)_mm_movemask_epi8(b);
    /* max is exact: any order of the lanes gives the same float */
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    gmax = _mm_cvtss_f32(m);
#endif
    for (; i < n; i++) {
        float G = R[i] + dw[i], a = ac__absf(G);
        R[i] = G;
        bad |= !ac__finite(G);
        if (a > gmax) gmax = a;
    }
    return bad ? -1.0f : gmax;
}

/* Step 2, for n <= 64 entries: bit i set when |H| = |G + dW| >= gmax and
   G != 0 (an entry with G = 0 has nothing to say: sent, it would be
   +scale). */
static uint64_t ac__ibm_select(const float *R, const float *dw, uint32_t n, float gmax)
{
    uint64_t mask = 0;
    uint32_t i = 0;
#ifdef AC__SSE2
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF)), g = _mm_set1_ps(gmax);
    const __m128 zero = _mm_setzero_ps();
    for (; i + 4 <= n; i += 4) {
        __m128 G = _mm_loadu_ps(R + i);
        __m128 H = _mm_and_ps(_mm_add_ps(G, _mm_loadu_ps(dw + i)), abs_mask);
        __m128 send = _mm_andnot_ps(_mm_cmpeq_ps(G, zero), _mm_cmpge_ps(H, g));
        mask |= (uint64_t)_mm_movemask_ps(send) << i;
    }
#endif
    for (; i < n; i++)
        mask |= (uint64_t)(ac__absf(R[i] + dw[i]) >= gmax && ac__abits(R[i]) != 0) << i;
    return mask;
}

/* The |G| of the entries a bin emitted, summed in index order. */
static double ac__sum_abs(double sum, const float *v, uint32_t n)
{
    uint32_t j;
    for (j = 0; j < n; j++) sum += ac__absf(v[j]);
    return sum;
}

#ifdef AC__AVX512
/* sign(R) * scale, the sign by comparison so that -0 counts as + */
AC__AVX512_FN static __m512 ac__signed_scale(__m512 r, __m512i scale)
{
    __mmask16 neg = _mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_castsi512_ps(_mm512_mask_or_epi32(scale, neg, scale, _mm512_set1_epi32(INT32_MIN)));
}

/* ac__ibm_bin in one kernel, 16 lanes at a time, the selected entries
   packed by a compress instead of a loop over the bits.  The residue of
   the entries sent last time is corrected here, in the pass that reads R
   anyway (R - sign(G) scale, the same operation as ac__ibm_tensor's), so
   that no pass revisits R after the tensor (which misses the cache once
   the tensor is larger than it). */
AC__AVX512_FN static int ac__ibm_bin_avx512(ac_compressor *c, const float *dw, uint32_t b,
                                            uint32_t e, float last_scale, double *sum_abs,
                                            uint16_t *sent)
{
    ac_update *u = &c->update;
    float *R = c->residue;
    const __m512i inf = _mm512_set1_epi32(0x7F800000), abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i scale = _mm512_set1_epi32((int)ac__f2u(last_scale));
    __m512 m = _mm512_setzero_ps(), g;
    __mmask16 bad = 0;
    uint32_t i, j, nnz = u->nnz;
    float gmax;
    for (i = b, j = 0; i < e; i += 16, j++) {
        __mmask16 k = ac__lanes(e - i), fix = k & (__mmask16)sent[j];
        __m512 r = _mm512_maskz_loadu_ps(k, R + i), G;
        __m512i a;
        AC__PREFETCH(R + i + AC__IBM_AHEAD);
        AC__PREFETCH(dw + i + AC__IBM_AHEAD);
        r = _mm512_mask_sub_ps(r, fix, r, ac__signed_scale(r, scale));
        G = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, dw + i));
        a = _mm512_and_si512(_mm512_castps_si512(G), abs_mask);
        _mm512_mask_storeu_ps(R + i, k, G);
        m = _mm512_max_ps(m, _mm512_castsi512_ps(a)); /* masked-off lanes are 0 */
        bad |= _mm512_mask_cmpeq_epi32_mask(k, _mm512_and_si512(a, inf), inf);
    }
    /* max is exact in any order (_mm512_reduce_max_ps warns in g++) */
    m = _mm512_max_ps(m, _mm512_shuffle_f32x4(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm512_max_ps(m, _mm512_shuffle_f32x4(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    m = _mm512_max_ps(m, _mm512_permute_ps(m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm512_max_ps(m, _mm512_permute_ps(m, _MM_SHUFFLE(2, 3, 0, 1)));
    gmax = _mm_cvtss_f32(_mm512_castps512_ps128(m));
    if (bad) return 0;
    g = _mm512_set1_ps(gmax);
    for (i = b, j = 0; i < e; i += 16, j++) {
        __mmask16 k = ac__lanes(e - i), send;
        __m512 G = _mm512_maskz_loadu_ps(k, R + i), val;
        __m512 H = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(_mm512_add_ps(G, _mm512_maskz_loadu_ps(k, dw + i))), abs_mask));
        __m512i idx;
        unsigned taken;
        send = gmax == 0.0f ? 0 /* nothing to say about this bin */
                            : _mm512_mask_cmp_ps_mask(k, H, g, _CMP_GE_OQ) &
                                  _mm512_cmp_ps_mask(G, _mm512_setzero_ps(), _CMP_NEQ_OQ);
        sent[j] = (uint16_t)send;
        idx = _mm512_maskz_compress_epi32(send, _mm512_add_epi32(iota, _mm512_set1_epi32((int)i)));
        val = _mm512_maskz_compress_ps(send, G);
        taken = (unsigned)_mm_popcnt_u32(send);
        if (nnz + 16 <= u->capacity) { /* a whole store: the sum below reads it back */
            _mm512_storeu_si512(u->index + nnz, idx);
            _mm512_storeu_ps(u->value + nnz, val);
        } else {
            _mm512_mask_storeu_epi32(u->index + nnz, ac__lanes(taken), idx);
            _mm512_mask_storeu_ps(u->value + nnz, ac__lanes(taken), val);
        }
        nnz += taken;
    }
    *sum_abs = ac__sum_abs(*sum_abs, u->value + u->nnz, nnz - u->nnz);
    u->nnz = nnz;
    return 1;
}

/* ac__ibm_tensor's last loop without its residue stores (left to the next
   select's ac__ibm_bin_avx512). */
AC__AVX512_FN static void ac__ibm_quantize_avx512(float *value, uint32_t n, float scale)
{
    const __m512i s = _mm512_set1_epi32((int)ac__f2u(scale));
    uint32_t j;
    for (j = 0; j < n; j += 16) {
        __mmask16 k = ac__lanes(n - j);
        _mm512_mask_storeu_ps(value + j, k,
                              ac__signed_scale(_mm512_maskz_loadu_ps(k, value + j), s));
    }
}
#endif

/* IBM AdaComp, one bin [b, e) of a tensor: G = R + dW is stored in R, gmax
   = max |G|; the selected entries are emitted carrying G for now (the
   scale is known only after the whole tensor) and their |G| summed, in
   index order.  Returns 0 if some G is not finite. */
static int ac__ibm_bin(ac_compressor *c, const float *dw, uint32_t b, uint32_t e,
                       double *sum_abs)
{
    ac_update *u = &c->update;
    float *R = c->residue, gmax = ac__ibm_accumulate(R + b, dw + b, e - b);
    uint32_t *index = u->index, nnz = u->nnz, i;
    float *value = u->value;
    if (gmax < 0.0f) return 0;
    if (gmax == 0.0f) return 1; /* nothing to say about this bin */
    for (i = b; i < e; i += 64) {
        uint64_t m = ac__ibm_select(R + i, dw + i, e - i < 64 ? e - i : 64, gmax);
        for (; m; m &= m - 1) {
            uint32_t k = i + ac__ctz64(m);
            index[nnz] = k;
            value[nnz++] = R[k];
        }
    }
    *sum_abs = ac__sum_abs(*sum_abs, value + u->nnz, nnz - u->nnz);
    u->nnz = nnz;
    return 1;
}

/* The 16-lane chunks of n entries cut in bins of L (n <= L: one bin). */
static size_t ac__ibm_chunks(uint32_t n, uint32_t L)
{
    return (size_t)(n / L) * (L / 16 + (L % 16 != 0)) + (n % L) / 16 + (n % L % 16 != 0);
}

/* IBM AdaComp, one tensor: bins, then the ternary quantisation of what was
   sent, value = sign(G) * scale with scale = mean |G| over the sent entries
   (one float per tensor; Chen et al. leave the scale's choice open), and
   the residue R = G - value for those entries. */
static int ac__ibm_tensor(ac_compressor *c, const float *dw, uint32_t l, uint32_t base,
                          uint16_t *sent)
{
    ac_update *u = &c->update;
    uint32_t n = c->layout.sizes[l], L = c->cfg.bin_size, b, j, first = u->nnz;
    double sum_abs = 0.0;
    float scale;
    (void)sent; /* the AVX-512 kernel's */
    for (b = 0; b < n; b += L) {
        uint32_t e = base + (n - b < L ? n : b + L);
#ifdef AC__AVX512
        if (c->sent) {
            if (!ac__ibm_bin_avx512(c, dw, base + b, e, c->sent_scale[l], &sum_abs, sent))
                return 0;
            sent += ac__ibm_chunks(e - base - b, L);
            continue;
        }
#endif
        if (!ac__ibm_bin(c, dw, base + b, e, &sum_abs)) return 0;
    }
    u->count[l] = u->nnz - first;
    scale = u->count[l] ? (float)(sum_abs / u->count[l]) : 0.0f;
    u->scale[l] = scale;
#ifdef AC__AVX512
    if (c->sent) {
        ac__ibm_quantize_avx512(u->value + first, u->count[l], scale);
        c->sent_scale[l] = scale;
        return 1;
    }
#endif
    for (j = first; j < u->nnz; j++) {
        float G = u->value[j];  /* sign by comparison, so -0 counts as + */
        float v = ac__u2f(ac__f2u(scale) | (uint32_t)(G < 0.0f) << 31);
        u->value[j] = v;
        c->residue[u->index[j]] = G - v;
    }
    return 1;
}

static ac_result ac__select_ibm(ac_compressor *c, const float *dw)
{
    uint32_t l, base = 0;
    uint16_t *sent = c->sent;
    for (l = 0; l < c->layout.count; l++) {
        if (!ac__ibm_tensor(c, dw, l, base, sent))
            return ac__fail(AC_ERR_VALUE, "compress: non-finite gradient or residue in tensor %u",
                            (unsigned)l);
        if (sent) sent += ac__ibm_chunks(c->layout.sizes[l], c->cfg.bin_size);
        base += c->layout.sizes[l];
    }
    return AC_OK;
}

ACDEF ac_compressor_config ac_compressor_config_init(void)
{
    ac_compressor_config c;
    memset(&c, 0, sizeof c);
    c.mode = AC_MODE_HARDY;
    c.format = AC_FORMAT_F32;
    c.rate = 0.01;
    c.threshold = 1e-3f;
    c.bin_size = 64;
    c.simd = 1;
    return c;
}

static ac_result ac__resolve_config(ac_compressor_config *cfg, const ac_compressor_config *in)
{
    *cfg = in ? *in : ac_compressor_config_init();
    if (cfg->mode < AC_MODE_HARDY || cfg->mode > AC_MODE_THRESHOLD)
        return ac__fail(AC_ERR_ARG, "compressor: unknown mode %d (start from "
                                    "ac_compressor_config_init())", (int)cfg->mode);
    if (cfg->mode == AC_MODE_IBM) {
        cfg->format = AC_FORMAT_SIGN_SCALE;
        cfg->residue = 1;
    } else if (cfg->format != AC_FORMAT_F32 && cfg->format != AC_FORMAT_F16) {
        return ac__fail(AC_ERR_ARG, "compressor: format %d is not float32/float16 (sign+scale "
                                    "is IBM mode's)", (int)cfg->format);
    }
    if (cfg->mode == AC_MODE_DENSE) cfg->residue = 0; /* nothing is ever left over */
    if (!(cfg->rate >= 0.0 && cfg->rate <= 1.0))
        return ac__fail(AC_ERR_ARG, "compressor: rate c = %g outside [0, 1]", cfg->rate);
    if (!(cfg->threshold >= 0.0f) || !ac__finite(cfg->threshold))
        return ac__fail(AC_ERR_ARG, "compressor: threshold %g must be >= 0 and finite",
                        (double)cfg->threshold);
    if (cfg->bin_size == 0) return ac__fail(AC_ERR_ARG, "compressor: bin size L_T = 0");
    return AC_OK;
}

/* The most entries one select can produce in this mode. */
static uint32_t ac__capacity(const ac_compressor *c)
{
    uint32_t l, cap = 0;
    if (c->cfg.mode == AC_MODE_TOPK) return c->k_global;
    if (c->cfg.mode != AC_MODE_HARDY) return c->total;
    for (l = 0; l < c->layout.count; l++) cap += c->k[l];
    return cap;
}

static ac_result ac__compressor_alloc(ac_compressor *c)
{
    uint32_t l, cap, scratch = 0;
    size_t bytes;
    c->k = (uint32_t *)ac__calloc(c->layout.count, sizeof(uint32_t));
    if (!c->k) return ac__fail(AC_ERR_NOMEM, "compressor: no memory for k");
    for (l = 0; l < c->layout.count; l++) {
        c->k[l] = ac__k_of(c->cfg.rate, c->layout.sizes[l]);
        if (c->layout.sizes[l] > scratch) scratch = c->layout.sizes[l];
    }
    c->k_global = ac__k_of(c->cfg.rate, c->total);
    if (c->cfg.mode == AC_MODE_TOPK) scratch = c->total;
    if (c->cfg.mode == AC_MODE_HARDY || c->cfg.mode == AC_MODE_TOPK) {
        c->scratch = (uint32_t *)ac__calloc(scratch, sizeof(uint32_t));
        if (!c->scratch) return ac__fail(AC_ERR_NOMEM, "compressor: no memory for scratch");
    }
    if (c->cfg.residue) {
        c->residue = (float *)ac__calloc(c->total, sizeof(float));
        if (!c->residue) return ac__fail(AC_ERR_NOMEM, "compressor: no memory for residue");
    }
    if (c->cfg.mode == AC_MODE_IBM && c->avx512) {
        for (l = 0; l < c->layout.count; l++)
            c->sent_chunks += ac__ibm_chunks(c->layout.sizes[l], c->cfg.bin_size);
        c->sent = (uint16_t *)ac__calloc(c->sent_chunks, sizeof(uint16_t));
        c->sent_scale = (float *)ac__calloc(c->layout.count, sizeof(float));
        if (!c->sent || !c->sent_scale)
            return ac__fail(AC_ERR_NOMEM, "compressor: no memory for the sent bits");
    }
    cap = ac__capacity(c);
    bytes = ac_update_memory_size(&c->layout, cap);
    c->update_memory = ac__calloc(bytes, 1);
    if (!c->update_memory) return ac__fail(AC_ERR_NOMEM, "compressor: no memory for update");
    return ac_update_init(&c->update, &c->layout, cap, c->update_memory, bytes);
}

ACDEF ac_result ac_compressor_init(ac_compressor **out, const ac_layout *layout,
                                   const ac_compressor_config *config)
{
    ac_compressor *c;
    ac_result r;
    uint32_t i;
    if (!out) return ac__fail(AC_ERR_ARG, "ac_compressor_init: NULL out");
    *out = NULL;
    c = (ac_compressor *)ac__calloc(1, sizeof *c);
    if (!c) return ac__fail(AC_ERR_NOMEM, "ac_compressor_init: no memory");
    if ((r = ac__resolve_config(&c->cfg, config)) != AC_OK ||
        (r = ac__layout_copy(&c->layout, &c->sizes, layout)) != AC_OK) {
        ac_compressor_free(c);
        return r;
    }
    c->total = (uint32_t)ac_layout_total(&c->layout);
    c->avx512 = ac__avx512(c->cfg.simd);
    if ((r = ac__compressor_alloc(c)) != AC_OK) {
        ac_compressor_free(c);
        return r;
    }
    c->update.mode = (uint8_t)c->cfg.mode;
    c->update.format = (uint8_t)c->cfg.format;
    c->update.flags = c->cfg.residue ? AC_FLAG_RESIDUE : 0;
    if (c->cfg.mode == AC_MODE_DENSE) {
        for (i = 0; i < c->total; i++) c->update.index[i] = i;
        memcpy(c->update.count, c->layout.sizes, (size_t)c->layout.count * 4);
    }
    *out = c;
    return AC_OK;
}

ACDEF void ac_compressor_free(ac_compressor *c)
{
    if (!c) return;
    AC_FREE(c->update_memory);
    AC_FREE(c->residue);
    AC_FREE(c->sent);
    AC_FREE(c->sent_scale);
    AC_FREE(c->scratch);
    AC_FREE(c->k);
    AC_FREE(c->sizes);
    AC_FREE(c);
}

/* With error feedback the selection runs on R += g, in place. */
static const float *ac__accumulate(ac_compressor *c, const float *g)
{
    uint32_t i;
    if (!c->cfg.residue) return g;
    for (i = 0; i < c->total; i++) c->residue[i] += g[i];
    return c->residue;
}

ACDEF ac_result ac_compressor_select(ac_compressor *c, const float *grad, uint64_t t_pull)
{
    const float *x;
    ac_result r = AC_OK;
    if (!c || !grad) return ac__fail(AC_ERR_ARG, "ac_compressor_select: NULL argument");
    c->update.t_pull = t_pull;
    if (c->cfg.mode == AC_MODE_DENSE) {
        ac__select_dense(c, grad);
        return ac__check_sent_finite(&c->update);
    }
    c->update.nnz = 0;
    memset(c->update.scale, 0, (size_t)c->layout.count * sizeof(float));
    if (c->cfg.mode == AC_MODE_IBM) {
        r = ac__select_ibm(c, grad);
        if (r != AC_OK) c->update.nnz = 0;
        return r;
    }
    x = ac__accumulate(c, grad);
    if (c->cfg.mode == AC_MODE_HARDY) ac__select_hardy(c, x);
    else if (c->cfg.mode == AC_MODE_TOPK) ac__select_topk(c, x);
    else ac__select_threshold(c, x);
    r = ac__check_sent_finite(&c->update);
    if (r == AC_OK && c->cfg.residue) ac__residue_clear_sent(c);
    return r;
}

ACDEF const ac_update *ac_compressor_update(const ac_compressor *c)
{
    return c ? &c->update : NULL;
}

static ac_result ac__write(const ac_update *u, void *buf, size_t cap, size_t *written,
                           int avx512);

ACDEF ac_result ac_compressor_encode(ac_compressor *c, void *buf, size_t cap, size_t *written)
{
    size_t n = 0;
    ac_result r;
    if (!c || !buf) return ac__fail(AC_ERR_ARG, "ac_compressor_encode: NULL argument");
    /* the compressor's own update is valid by construction (select checked
       the values), so it skips ac_encode's checks; the f16 range is the one
       thing select does not know */
    r = c->update.format == AC_FORMAT_F16 ? ac_encode(&c->update, buf, cap, &n)
                                          : ac__write(&c->update, buf, cap, &n, c->avx512);
    if (written) *written = n;
    if (r != AC_OK) return r;
    c->stats.packets++;
    c->stats.entries += c->update.nnz;
    c->stats.bytes_out += n;
    c->stats.dense_bytes += (uint64_t)c->total * 4;
    return AC_OK;
}

ACDEF ac_result ac_compress(ac_compressor *c, const float *grad, uint64_t t_pull,
                            void *buf, size_t cap, size_t *written)
{
    ac_result r = ac_compressor_select(c, grad, t_pull);
    if (written) *written = 0;
    if (r != AC_OK) return r;
    return ac_compressor_encode(c, buf, cap, written);
}

ACDEF size_t ac_compressor_packet_bound(const ac_compressor *c)
{
    return c ? ac_packet_bound(&c->update) : 0;
}

ACDEF void ac_compressor_reset(ac_compressor *c)
{
    if (c && c->residue) memset(c->residue, 0, (size_t)c->total * sizeof(float));
    if (c && c->sent) memset(c->sent, 0, c->sent_chunks * sizeof(uint16_t));
}

ACDEF ac_stats ac_compressor_stats(const ac_compressor *c)
{
    ac_stats s;
    memset(&s, 0, sizeof s);
    return c ? c->stats : s;
}

/* ==== ac_packet ==== */

/* Packet v1, little-endian (the byte-level table is in docs/adacomp.md):
      0   4  magic "ACMP"          8  8  layout hash
      4   1  version (1)          16  8  t_pull
      5   1  mode (ac_mode)       24  4  tensor count L
      6   1  value format         28  .. L varints: entries per tensor
      7   1  flags
   then, per tensor with 0 < count < size, count varints: index deltas, the
   first from -1 (so index 0 is delta 1) and all >= 1; a tensor sent whole
   carries no indices.  Then the values: F32 4 bytes each, F16 2 bytes each;
   SIGN_SCALE a float32 scale per tensor with entries, then one sign bit per
   entry (bit j%8 of byte j/8, 1 = negative, unused bits 0).  Every varint is
   LEB128, minimal, at most 5 bytes.  The encoding is canonical: decoding and
   re-encoding reproduces the bytes, which the fuzz target checks. */

static const unsigned char ac__magic[4] = {'A', 'C', 'M', 'P'};

static size_t ac__varint_len(uint32_t v)
{
    return v < (1u << 7) ? 1 : v < (1u << 14) ? 2 : v < (1u << 21) ? 3 : v < (1u << 28) ? 4 : 5;
}

static unsigned char *ac__put_varint(unsigned char *p, uint32_t v)
{
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

static unsigned char *ac__put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
    return p + 4;
}

static unsigned char *ac__put_u64(unsigned char *p, uint64_t v)
{
    p = ac__put_u32(p, (uint32_t)v);
    return ac__put_u32(p, (uint32_t)(v >> 32));
}

/* Float16, IEEE binary16.  Rounding to nearest even is done on the integer
   bits: the discarded bits are compared with one half ulp, and a tie goes to
   the neighbour whose last kept bit is 0. */
ACDEF uint16_t ac_f32_to_f16(float f)
{
    uint32_t x = ac__f2u(f), ax = x & 0x7FFFFFFFu, h, rem, halfway;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu)); /* NaN */
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520 and Inf */
    if (ax >= 0x38800000u) { /* normal half: rebias the exponent, keep 10 bits */
        h = (ax - 0x38000000u) >> 13;
        rem = ax & 0x1FFFu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    if (ax < 0x33000000u) return sign; /* below 2^-25: rounds to zero */
    {   /* subnormal half: h * 2^-24 with h = m * 2^(e - 126) */
        uint32_t e = ax >> 23, m = (ax & 0x7FFFFFu) | 0x800000u, s = 126 - e;
        h = m >> s;
        rem = m & ((1u << s) - 1);
        halfway = 1u << (s - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
}

ACDEF float ac_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float */
        float v = (float)m * 5.9604644775390625e-8f;
        return ac__u2f(ac__f2u(v) | sign);
    }
    if (e == 31) return ac__u2f(sign | 0x7F800000u | (m << 13));
    return ac__u2f(sign | ((e + 112) << 23) | (m << 13));
}

static int ac__mode_format_ok(unsigned mode, unsigned format)
{
    if (mode < AC_MODE_HARDY || mode > AC_MODE_THRESHOLD) return 0;
    if (mode == AC_MODE_IBM) return format == AC_FORMAT_SIGN_SCALE;
    return format == AC_FORMAT_F32 || format == AC_FORMAT_F16;
}

static size_t ac__value_bytes(const ac_update *u)
{
    uint32_t l;
    size_t n;
    if (u->format == AC_FORMAT_F32) return (size_t)u->nnz * 4;
    if (u->format == AC_FORMAT_F16) return (size_t)u->nnz * 2;
    n = ((size_t)u->nnz + 7) / 8;
    for (l = 0; l < u->layout.count; l++) n += u->count[l] ? 4 : 0;
    return n;
}

ACDEF size_t ac_packet_size(const ac_update *u)
{
    size_t n = AC_PACKET_HEADER_SIZE;
    uint32_t l, j = 0, base = 0;
    if (!u || !u->layout.sizes || !u->count) return 0;
    for (l = 0; l < u->layout.count; l++) {
        uint32_t size = u->layout.sizes[l], c = u->count[l], end = j + c;
        int64_t prev = -1;
        n += ac__varint_len(c);
        if (c == size || end > u->nnz) {
            j = end;
            base += size;
            continue;
        }
        for (; j < end; j++) {
            n += ac__varint_len((uint32_t)((int64_t)(u->index[j] - base) - prev));
            prev = u->index[j] - base;
        }
        base += size;
    }
    return n + ac__value_bytes(u);
}

ACDEF size_t ac_packet_bound(const ac_update *u)
{
    if (!u) return 0;
    return AC_PACKET_HEADER_SIZE + (size_t)u->layout.count * (5 + 4) +
           (size_t)u->capacity * (5 + 4) + ((size_t)u->capacity + 7) / 8;
}

/* The encoder refuses what the decoder would refuse, so that every packet
   it writes decodes. */
static ac_result ac__check_indices(const ac_update *u)
{
    uint32_t l, j = 0, base = 0;
    uint64_t sum = 0;
    for (l = 0; l < u->layout.count; l++) sum += u->count[l];
    if (sum != u->nnz || u->nnz > u->capacity)
        return ac__fail(AC_ERR_ARG, "update: counts add to %llu, nnz %u, capacity %u",
                        (unsigned long long)sum, (unsigned)u->nnz, (unsigned)u->capacity);
    for (l = 0; l < u->layout.count; l++) {
        uint32_t size = u->layout.sizes[l], end = j + u->count[l];
        int64_t prev = -1;
        if (u->count[l] > size)
            return ac__fail(AC_ERR_COUNT, "update: tensor %u count %u > size %u", (unsigned)l,
                            (unsigned)u->count[l], (unsigned)size);
        if (u->mode == AC_MODE_DENSE && u->count[l] != size)
            return ac__fail(AC_ERR_ARG, "update: dense update misses entries of tensor %u",
                            (unsigned)l);
        for (; j < end; j++) {
            int64_t local = (int64_t)u->index[j] - base;
            if (local < 0 || local >= size)
                return ac__fail(AC_ERR_INDEX, "update: index %u outside tensor %u",
                                (unsigned)u->index[j], (unsigned)l);
            if (local <= prev)
                return ac__fail(AC_ERR_ORDER, "update: index %u not increasing",
                                (unsigned)u->index[j]);
            prev = local;
        }
        base += size;
    }
    return AC_OK;
}

static ac_result ac__check_values(const ac_update *u)
{
    uint32_t l, j, first = 0;
    for (j = 0; u->format != AC_FORMAT_SIGN_SCALE && j < u->nnz; j++) {
        if (!ac__finite(u->value[j]) ||
            (u->format == AC_FORMAT_F16 && (ac_f32_to_f16(u->value[j]) & 0x7C00u) == 0x7C00u))
            return ac__fail(AC_ERR_VALUE, "encode: value %g at index %u not representable",
                            (double)u->value[j], (unsigned)u->index[j]);
    }
    if (u->format != AC_FORMAT_SIGN_SCALE) return AC_OK;
    for (l = 0; l < u->layout.count; l++) {
        float s = u->scale[l];
        if (u->count[l] && (!ac__finite(s) || (ac__f2u(s) >> 31)))
            return ac__fail(AC_ERR_VALUE, "encode: scale of tensor %u is %g", (unsigned)l,
                            (double)s);
        for (j = first; j < first + u->count[l]; j++)
            if ((ac__f2u(u->value[j]) & 0x7FFFFFFFu) != ac__f2u(s))
                return ac__fail(AC_ERR_VALUE, "encode: IBM value %g is not +-scale %g",
                                (double)u->value[j], (double)s);
        first += u->count[l];
    }
    return AC_OK;
}

static unsigned char *ac__put_header(unsigned char *p, const ac_update *u)
{
    uint32_t l;
    memcpy(p, ac__magic, 4);
    p[4] = AC_PACKET_VERSION;
    p[5] = u->mode;
    p[6] = u->format;
    p[7] = u->flags;
    p = ac__put_u64(p + 8, u->layout_hash);
    p = ac__put_u64(p, u->t_pull);
    p = ac__put_u32(p, u->layout.count);
    for (l = 0; l < u->layout.count; l++) p = ac__put_varint(p, u->count[l]);
    return p;
}

#ifdef AC__AVX512
/* 16 deltas at a time, index - previous index, the previous of a tensor's
   first being base - 1 (delta local + 1, modulo 2^32 as the scalar loop's);
   where all 16 fit one varint byte (a dense selection such as IBM's) they
   are narrowed and stored at once, else they go through ac__put_varint.
   Returns the entries done, a multiple of 16. */
AC__AVX512_FN static uint32_t ac__put_deltas_avx512(unsigned char **pp, const uint32_t *index,
                                                    uint32_t n, uint32_t base)
{
    const __m512i one_byte = _mm512_set1_epi32(0x80);
    __m512i prev = _mm512_set1_epi32((int)(base - 1u));
    unsigned char *p = *pp;
    uint32_t j, t;
    for (j = 0; j + 16 <= n; j += 16) {
        __m512i cur = _mm512_loadu_si512(index + j);
        __m512i d = _mm512_sub_epi32(cur, _mm512_alignr_epi32(cur, prev, 15));
        if (!_mm512_cmpge_epu32_mask(d, one_byte)) {
            _mm_storeu_si128((__m128i *)(void *)p, _mm512_cvtepi32_epi8(d));
            p += 16;
        } else {
            uint32_t ds[16];
            _mm512_storeu_si512(ds, d);
            for (t = 0; t < 16; t++) p = ac__put_varint(p, ds[t]);
        }
        prev = cur;
    }
    *pp = p;
    return j;
}
#endif

static unsigned char *ac__put_indices(unsigned char *p, const ac_update *u, int avx512)
{
    uint32_t l, j = 0, base = 0;
    (void)avx512;
    for (l = 0; l < u->layout.count; l++) {
        uint32_t size = u->layout.sizes[l], end = j + u->count[l];
        int64_t prev = -1; /* so that index 0 is delta 1 */
        if (u->count[l] == size) {
            j = end;
        } else {
#ifdef AC__AVX512
            if (avx512) {
                j += ac__put_deltas_avx512(&p, u->index + j, end - j, base);
                if (j > end - u->count[l]) prev = (int64_t)u->index[j - 1] - base;
            }
#endif
            for (; j < end; j++) {
                int64_t local = (int64_t)u->index[j] - base;
                p = ac__put_varint(p, (uint32_t)(local - prev));
                prev = local;
            }
        }
        base += size;
    }
    return p;
}

/* One sign bit per value, 8 to a byte, each byte built in a register: a
   read-modify-write per value through unsigned char (which may alias
   anything) made the compiler reload the update at every step. */
static unsigned char *ac__put_signs(unsigned char *p, const float *v, uint32_t n)
{
    uint32_t j = 0, b;
#ifdef AC__SSE2
    for (; j + 8 <= n; j += 8)
        *p++ = (unsigned char)(_mm_movemask_ps(_mm_loadu_ps(v + j)) |
                               _mm_movemask_ps(_mm_loadu_ps(v + j + 4)) << 4);
#endif
    for (; j < n; j += 8) {
        unsigned byte = 0;
        for (b = 0; b < 8 && j + b < n; b++) byte |= (unsigned)(ac__f2u(v[j + b]) >> 31) << b;
        *p++ = (unsigned char)byte;
    }
    return p;
}

static unsigned char *ac__put_values(unsigned char *p, const ac_update *u)
{
    uint32_t l, j;
    if (u->format == AC_FORMAT_F32) {
        for (j = 0; j < u->nnz; j++) p = ac__put_u32(p, ac__f2u(u->value[j]));
    } else if (u->format == AC_FORMAT_F16) {
        for (j = 0; j < u->nnz; j++) {
            uint16_t h = ac_f32_to_f16(u->value[j]);
            *p++ = (unsigned char)h;
            *p++ = (unsigned char)(h >> 8);
        }
    } else {
        for (l = 0; l < u->layout.count; l++)
            if (u->count[l]) p = ac__put_u32(p, ac__f2u(u->scale[l]));
        p = ac__put_signs(p, u->value, u->nnz);
    }
    return p;
}

/* Writes a valid update; the exact size is computed only when the buffer
   is smaller than the bound. */
static ac_result ac__write(const ac_update *u, void *buf, size_t cap, size_t *written,
                           int avx512)
{
    unsigned char *p = (unsigned char *)buf;
    size_t size;
    if (cap < ac_packet_bound(u) && cap < (size = ac_packet_size(u)))
        return ac__fail(AC_ERR_CAPACITY, "encode: packet needs %zu bytes, buffer has %zu",
                        size, cap);
    p = ac__put_header(p, u);
    p = ac__put_indices(p, u, avx512);
    p = ac__put_values(p, u);
    if (written) *written = (size_t)(p - (unsigned char *)buf);
    return AC_OK;
}

ACDEF ac_result ac_encode(const ac_update *u, void *buf, size_t cap, size_t *written)
{
    ac_result r;
    if (written) *written = 0;
    if (!u || !buf || !u->count || !u->layout.sizes)
        return ac__fail(AC_ERR_ARG, "ac_encode: NULL argument");
    if (!ac__mode_format_ok(u->mode, u->format) || (u->flags & ~AC_FLAG_RESIDUE))
        return ac__fail(AC_ERR_FORMAT, "ac_encode: mode %u with format %u, flags %u",
                        (unsigned)u->mode, (unsigned)u->format, (unsigned)u->flags);
    if ((r = ac__check_indices(u)) != AC_OK || (r = ac__check_values(u)) != AC_OK) return r;
    return ac__write(u, buf, cap, written, ac__avx512(1));
}

/* Decoding reads through a cursor that knows where the bytes end; every
   read checks first, so a truncated packet is reported at the field where
   it ends. */
typedef struct ac__reader {
    const unsigned char *p, *begin, *end;
    int avx512;          /* the kernels to check values with */
    int defer;           /* raw float32 whole tensors left unchecked: the
                            consuming apply checks them as it goes */
} ac__reader;

static ac_result ac__need(const ac__reader *r, size_t n, const char *what)
{
    if ((size_t)(r->end - r->p) >= n) return AC_OK;
    return ac__fail(AC_ERR_TRUNCATED, "decode: packet of %zu bytes ends in %s at byte %zu",
                    (size_t)(r->end - r->begin), what, (size_t)(r->p - r->begin));
}

static uint32_t ac__get_u32(ac__reader *r)
{
    const unsigned char *p = r->p;
    r->p += 4;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ac__get_u64(ac__reader *r)
{
    uint64_t lo = ac__get_u32(r);
    return lo | (uint64_t)ac__get_u32(r) << 32;
}

static ac_result ac__get_varint(ac__reader *r, uint32_t *out, const char *what)
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < 5; i++) {
        unsigned b;
        if (r->p == r->end) return ac__need(r, 1, what);
        b = *r->p++;
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (b & 0x80) continue;
        if ((i > 0 && b == 0) || v > UINT32_MAX)
            return ac__fail(AC_ERR_VARINT, "decode: %s varint at byte %zu is %s", what,
                            (size_t)(r->p - r->begin) - (size_t)i - 1,
                            v > UINT32_MAX ? "over 32 bits" : "not minimal");
        *out = (uint32_t)v;
        return AC_OK;
    }
    return ac__fail(AC_ERR_VARINT, "decode: %s varint at byte %zu longer than 5 bytes", what,
                    (size_t)(r->p - r->begin) - 5);
}

static ac_result ac__get_header(ac__reader *r, ac_update *u)
{
    uint32_t tensors;
    ac_result e;
    if ((e = ac__need(r, 4, "magic")) != AC_OK) return e;
    if (memcmp(r->p, ac__magic, 4) != 0) return ac__fail(AC_ERR_MAGIC, "decode: bad magic");
    r->p += 4;
    if ((e = ac__need(r, 1, "version")) != AC_OK) return e;
    if (*r->p != AC_PACKET_VERSION)
        return ac__fail(AC_ERR_VERSION, "decode: version %u, this build reads %u",
                        (unsigned)*r->p, (unsigned)AC_PACKET_VERSION);
    r->p++;
    if ((e = ac__need(r, 3, "mode, format, flags")) != AC_OK) return e;
    if (!ac__mode_format_ok(r->p[0], r->p[1]) || (r->p[2] & ~AC_FLAG_RESIDUE))
        return ac__fail(AC_ERR_FORMAT, "decode: mode %u, format %u, flags 0x%02x",
                        (unsigned)r->p[0], (unsigned)r->p[1], (unsigned)r->p[2]);
    u->mode = r->p[0];
    u->format = r->p[1];
    u->flags = r->p[2];
    r->p += 3;
    if ((e = ac__need(r, 8, "layout hash")) != AC_OK) return e;
    if (ac__get_u64(r) != u->layout_hash)
        return ac__fail(AC_ERR_LAYOUT, "decode: layout hash differs from the expected layout");
    if ((e = ac__need(r, 8, "t_pull")) != AC_OK) return e;
    u->t_pull = ac__get_u64(r);
    if ((e = ac__need(r, 4, "tensor count")) != AC_OK) return e;
    if ((tensors = ac__get_u32(r)) != u->layout.count)
        return ac__fail(AC_ERR_LAYOUT, "decode: %u tensors, layout has %u", (unsigned)tensors,
                        (unsigned)u->layout.count);
    return AC_OK;
}

/* Counts, then two cheap guards before any per-entry work: the update must
   hold them, and the bytes left must be able to carry them (one byte per
   index at least, plus the values), so huge forged counts cost nothing. */
static ac_result ac__get_counts(ac__reader *r, ac_update *u)
{
    uint64_t sum = 0, min_bytes = 0;
    uint32_t l;
    ac_result e;
    for (l = 0; l < u->layout.count; l++) {
        if ((e = ac__get_varint(r, &u->count[l], "count")) != AC_OK) return e;
        if (u->count[l] > u->layout.sizes[l])
            return ac__fail(AC_ERR_COUNT, "decode: tensor %u claims %u entries of %u",
                            (unsigned)l, (unsigned)u->count[l], (unsigned)u->layout.sizes[l]);
        if (u->mode == AC_MODE_DENSE && u->count[l] != u->layout.sizes[l])
            return ac__fail(AC_ERR_COUNT, "decode: dense packet sends %u of %u in tensor %u",
                            (unsigned)u->count[l], (unsigned)u->layout.sizes[l], (unsigned)l);
        sum += u->count[l];
        if (u->count[l] != u->layout.sizes[l]) min_bytes += u->count[l];
    }
    if (sum > u->capacity)
        return ac__fail(AC_ERR_CAPACITY, "decode: %llu entries, the update holds %u",
                        (unsigned long long)sum, (unsigned)u->capacity);
    u->nnz = (uint32_t)sum;
    min_bytes += ac__value_bytes(u);
    u->nnz = 0;
    if ((e = ac__need(r, min_bytes, "entries")) != AC_OK) return e;
    u->nnz = (uint32_t)sum;
    return AC_OK;
}

/* A tensor sent whole carries no indices; they are written out only when
   `whole` is set (the server's own decode streams whole tensors instead). */
static ac_result ac__get_tensor_indices(ac__reader *r, ac_update *u, uint32_t l, uint32_t base,
                                        uint32_t *j, int whole)
{
    uint32_t size = u->layout.sizes[l], c = u->count[l], end = *j + c, delta;
    int64_t idx = -1;
    ac_result e;
    if (c == size) {
        for (; whole && *j < end; (*j)++) u->index[*j] = base + (*j - (end - c));
        *j = end;
        return AC_OK;
    }
    for (; *j < end; (*j)++) {
        if ((e = ac__get_varint(r, &delta, "index")) != AC_OK) return e;
        if (delta == 0)
            return ac__fail(AC_ERR_ORDER, "decode: zero delta in tensor %u after index %lld",
                            (unsigned)l, (long long)idx);
        idx += delta;
        if (idx >= (int64_t)size)
            return ac__fail(AC_ERR_INDEX, "decode: index %lld beyond tensor %u of size %u",
                            (long long)idx, (unsigned)l, (unsigned)size);
        u->index[*j] = base + (uint32_t)idx;
    }
    return AC_OK;
}

/* raw non-NULL (the server's decode): float32 values of whole tensors are
   checked where they lie (unless r->defer) and not copied; *raw tells
   where they start. */
static ac_result ac__get_values(ac__reader *r, ac_update *u, const unsigned char **raw)
{
    uint32_t j = 0, l;
    if (u->format == AC_FORMAT_F32) {
        int ok = 1;
        float x;
        for (l = u->layout.count, j = u->nnz; l-- > 0;) { /* backwards: ac__load_f32 */
            uint32_t c = u->count[l];
            int keep = raw && c == u->layout.sizes[l];
            j -= c;
            if (!(keep && r->defer))
                ok &= ac__load_f32(keep ? NULL : u->value + j, r->p + 4 * (size_t)j, c, r->avx512);
        }
        for (j = 0; !ok && ac__load_f32(&x, r->p + 4 * (size_t)j, 1, 0); j++) {}
        if (!ok) return ac__fail(AC_ERR_VALUE, "decode: value %u is NaN or infinite", (unsigned)j);
        if (raw) *raw = r->p;
        r->p += 4 * (size_t)u->nnz;
    } else {
        for (j = 0; j < u->nnz; j++, r->p += 2) {
            uint16_t h = (uint16_t)(r->p[0] | r->p[1] << 8);
            if ((h & 0x7C00u) == 0x7C00u)
                return ac__fail(AC_ERR_VALUE, "decode: value %u is NaN or infinite", (unsigned)j);
            u->value[j] = ac_f16_to_f32(h);
        }
    }
    return AC_OK;
}

static ac_result ac__get_signs(ac__reader *r, ac_update *u)
{
    uint32_t l, j = 0, end;
    size_t bytes = ((size_t)u->nnz + 7) / 8;
    for (l = 0; l < u->layout.count; l++) {
        float s;
        if (!u->count[l]) continue;
        s = u->scale[l] = ac__u2f(ac__get_u32(r));
        if (!ac__finite(s) || (ac__f2u(s) >> 31))
            return ac__fail(AC_ERR_VALUE, "decode: scale of tensor %u is %g", (unsigned)l,
                            (double)s);
    }
    if ((u->nnz & 7) && (r->p[bytes - 1] >> (u->nnz & 7)))
        return ac__fail(AC_ERR_FORMAT, "decode: unused sign bits are not zero");
    for (l = 0; l < u->layout.count; l++)
        for (end = j + u->count[l]; j < end; j++)
            u->value[j] = (r->p[j >> 3] >> (j & 7)) & 1 ? -u->scale[l] : u->scale[l];
    r->p += bytes;
    return AC_OK;
}

static ac_result ac__decode(ac__reader *r, ac_update *u, const unsigned char **raw)
{
    uint32_t l, j = 0, base = 0;
    ac_result e;
    memset(u->scale, 0, (size_t)u->layout.count * sizeof(float));
    if ((e = ac__get_header(r, u)) != AC_OK || (e = ac__get_counts(r, u)) != AC_OK) return e;
    for (l = 0; l < u->layout.count; l++) {
        if ((e = ac__get_tensor_indices(r, u, l, base, &j, !raw)) != AC_OK) return e;
        base += u->layout.sizes[l];
    }
    /* the value bytes were already checked to be present */
    if ((e = ac__need(r, ac__value_bytes(u), "values")) != AC_OK) return e;
    e = u->format == AC_FORMAT_SIGN_SCALE ? ac__get_signs(r, u) : ac__get_values(r, u, raw);
    if (e != AC_OK) return e;
    if (r->p != r->end)
        return ac__fail(AC_ERR_TRAILING, "decode: %zu bytes after the packet's end",
                        (size_t)(r->end - r->p));
    return AC_OK;
}

/* raw, defer: see ac__get_values; raw NULL for a full decode. */
static ac_result ac__decode_bytes(ac_update *u, const void *data, size_t len,
                                  const unsigned char **raw, int avx512, int defer)
{
    ac__reader r;
    ac_result e;
    if (!u || !u->count || !u->layout.sizes || (!data && len))
        return ac__fail(AC_ERR_ARG, "decode: NULL argument or uninitialised update");
    u->nnz = 0;
    r.begin = r.p = (const unsigned char *)data;
    r.end = r.begin + len;
    r.avx512 = avx512;
    r.defer = defer;
    if (!data) r.begin = r.p = r.end = (const unsigned char *)ac__magic; /* empty */
    if (raw) *raw = NULL;
    e = ac__decode(&r, u, raw);
    if (e != AC_OK) u->nnz = 0;
    return e;
}

ACDEF ac_result ac_decode(ac_update *u, const void *data, size_t len)
{
    return ac__decode_bytes(u, data, len, NULL, ac__avx512(1), 0);
}

/* ==== ac_server ==== */

/* sigma_i counts, among the updates applied in (t_pull, t], those that
   touched i.  Scanning a ring of index sets costs O(tau * |S|) per apply;
   we store the ring transposed instead.  Each update is labelled by the
   clock after it (the first update is 1), and each parameter i keeps
   last[i], the label of the latest update that touched it, and a mask of
   `words` 64-bit words whose bit b says "the update labelled last[i] - b
   touched i".  Then
      sigma_i = popcount(mask[i] & low (last[i] - t_pull) bits)
   and recording a touch by label c shifts the mask left by c - last[i] and
   sets bit 0.  An apply costs O(|S| * words) whatever tau is, and no list
   of index sets is kept or evicted.

   Exactness.  A bit shifted past the top is forgotten; the server records
   the newest label it ever forgot (`forgot`).  A push is counted exactly
   when its tau fits the mask and t_pull >= forgot.  So that this holds for
   every staleness that occurs, the mask grows (doubling, reallocated) to
   cover twice the largest tau seen before the push is counted: a push only
   finds its updates forgotten if its tau more than doubles every tau
   before, and then it is refused (AC_ERR_HISTORY) rather than undercounted.
   Memory: 8 + 8 * words bytes per parameter (SIGMA mode only), at most
   history_bytes. */

struct ac_server {
    ac_server_config cfg;
    ac_layout layout;
    uint32_t *sizes;        /* owned copy */
    uint32_t total;
    float *params;          /* not owned */
    uint64_t t;             /* clock: updates applied so far */
    uint64_t *touch;        /* SIGMA: [total][1 + words]: last, then the mask, side by
                               side so that an entry costs one cache miss, not two */
    uint32_t words;         /* mask words per parameter: tau <= 64 * words is counted */
    uint32_t words_max;     /* what history_bytes allows */
    uint64_t forgot;        /* newest label a touch bit was shifted out for */
    int avx512;             /* cfg.simd and the CPU has it */
    void *update_memory;
    ac_update update;       /* where packets are decoded */
    ac_stats stats;
};

ACDEF ac_server_config ac_server_config_init(void)
{
    ac_server_config c;
    memset(&c, 0, sizeof c);
    c.alpha = 0.1f;
    c.staleness = AC_STALENESS_SIGMA;
    c.history_bytes = AC_HISTORY_BYTES_DEFAULT;
    c.simd = 1;
    return c;
}

static uint64_t ac__history_size(const ac_server *s, uint64_t words)
{
    return (uint64_t)s->total * 8 * (1 + words);
}

static ac_result ac__server_config(ac_server *s, const ac_server_config *config)
{
    uint64_t cap;
    s->cfg = config ? *config : ac_server_config_init();
    if (!ac__finite(s->cfg.alpha) || s->cfg.staleness < AC_STALENESS_SIGMA ||
        s->cfg.staleness > AC_STALENESS_CONSTANT)
        return ac__fail(AC_ERR_ARG, "ac_server_init: alpha %g or staleness mode %d (start from "
                                    "ac_server_config_init())",
                        (double)s->cfg.alpha, (int)s->cfg.staleness);
    if (s->cfg.staleness != AC_STALENESS_SIGMA) return AC_OK;
    cap = s->cfg.history_bytes < SIZE_MAX ? s->cfg.history_bytes : SIZE_MAX;
    s->words_max = (uint32_t)(cap / ((uint64_t)s->total * 8) > 0xFFFFFFu
                                  ? 0xFFFFFFu : cap / ((uint64_t)s->total * 8));
    if (s->words_max < 2)
        return ac__fail(AC_ERR_ARG, "ac_server_init: history_bytes %llu below the %llu that "
                                    "sigma needs (16 bytes per parameter)",
                        (unsigned long long)s->cfg.history_bytes,
                        (unsigned long long)ac__history_size(s, 1));
    s->words_max--;   /* one word of last[] per parameter */
    return AC_OK;
}

ACDEF ac_result ac_server_init(ac_server **out, const ac_layout *layout, float *params,
                               const ac_server_config *config)
{
    ac_server *s;
    ac_result r;
    size_t bytes;
    if (!out || !params) return ac__fail(AC_ERR_ARG, "ac_server_init: NULL argument");
    *out = NULL;
    s = (ac_server *)ac__calloc(1, sizeof *s);
    if (!s) return ac__fail(AC_ERR_NOMEM, "ac_server_init: no memory");
    r = ac__layout_copy(&s->layout, &s->sizes, layout);
    if (r == AC_OK) {
        s->total = (uint32_t)ac_layout_total(&s->layout);
        r = ac__server_config(s, config);
    }
    if (r != AC_OK) {
        ac_server_free(s);
        return r;
    }
    s->params = params;
    s->avx512 = ac__avx512(s->cfg.simd);
    bytes = ac_update_memory_size(&s->layout, s->total);
    s->update_memory = ac__calloc(bytes, 1);
    if (s->cfg.staleness == AC_STALENESS_SIGMA) {
        s->words = 1;
        s->touch = (uint64_t *)ac__calloc(s->total, 2 * sizeof(uint64_t));
        s->stats.history_bytes = ac__history_size(s, 1);
    }
    if (!s->update_memory ||
        (s->cfg.staleness == AC_STALENESS_SIGMA && !s->touch)) {
        ac_server_free(s);
        return ac__fail(AC_ERR_NOMEM, "ac_server_init: no memory for %u parameters",
                        (unsigned)ac_layout_total(layout));
    }
    ac_update_init(&s->update, &s->layout, s->total, s->update_memory, bytes);
    *out = s;
    return AC_OK;
}

ACDEF void ac_server_free(ac_server *s)
{
    if (!s) return;
    AC_FREE(s->touch);
    AC_FREE(s->update_memory);
    AC_FREE(s->sizes);
    AC_FREE(s);
}

ACDEF uint64_t ac_server_clock(const ac_server *s) { return s ? s->t : 0; }

ACDEF void ac_server_pull(ac_server *s, float *dst, uint64_t *t_pull)
{
    if (!s) return;
    if (dst) {
        memcpy(dst, s->params, (size_t)s->total * sizeof(float));
        s->stats.bytes_out += (uint64_t)s->total * 4;
    }
    s->stats.pulls++;
    if (t_pull) *t_pull = s->t;
}

/* Makes the mask cover tau, with room for twice as much (doubling, so that
   a run reallocates O(log tau) times). */
static ac_result ac__history_grow(ac_server *s, uint64_t tau)
{
    uint64_t need = (tau + 63) / 64, want = (2 * tau + 63) / 64, words;
    uint64_t *mask;
    uint32_t i;
    if (s->cfg.max_staleness && want > (s->cfg.max_staleness + 63) / 64)
        want = (s->cfg.max_staleness + 63) / 64;  /* never needs more */
    if (want <= s->words) return AC_OK;
    if (need > s->words_max)
        return ac__fail(AC_ERR_HISTORY, "sigma: tau = %llu needs a touch history of %llu bytes, "
                                        "over history_bytes = %llu: raise it, or bound the "
                                        "staleness (max_staleness)",
                        (unsigned long long)tau, (unsigned long long)ac__history_size(s, need),
                        (unsigned long long)s->cfg.history_bytes);
    words = 2 * (uint64_t)s->words;
    if (words < want) words = want;
    if (words > s->words_max) words = s->words_max;
    if (words <= s->words) return AC_OK; /* the cap leaves no more headroom */
    mask = (uint64_t *)ac__calloc((size_t)s->total, (size_t)(1 + words) * sizeof(uint64_t));
    if (!mask)
        return ac__fail(AC_ERR_NOMEM, "sigma: no memory to grow the touch history to %llu bytes",
                        (unsigned long long)ac__history_size(s, words));
    for (i = 0; i < s->total; i++)
        memcpy(mask + (size_t)i * (1 + words), s->touch + (size_t)i * (1 + s->words),
               (size_t)(1 + s->words) * sizeof(uint64_t));
    AC_FREE(s->touch);
    s->touch = mask;
    s->words = (uint32_t)words;
    s->stats.history_bytes = ac__history_size(s, words);
    return AC_OK;
}

ACDEF ac_result ac_server_reserve(ac_server *s, uint64_t tau)
{
    if (!s || s->cfg.staleness != AC_STALENESS_SIGMA)
        return ac__fail(AC_ERR_ARG, "ac_server_reserve: NULL or not a sigma server");
    return ac__history_grow(s, tau);
}

/* The admission rule shared by apply and sigma: the clock, max_staleness,
   and in SIGMA mode a history that counts this tau exactly. */
static ac_result ac__admit(ac_server *s, uint64_t t_pull)
{
    uint64_t tau;
    ac_result r;
    if (t_pull > s->t)
        return ac__fail(AC_ERR_CLOCK, "apply: t_pull %llu is ahead of the clock %llu",
                        (unsigned long long)t_pull, (unsigned long long)s->t);
    tau = s->t - t_pull;
    if (s->cfg.max_staleness && tau > s->cfg.max_staleness)
        return ac__fail(AC_ERR_STALE, "apply: tau = %llu updates since the pull > max_staleness "
                                      "= %llu", (unsigned long long)tau,
                        (unsigned long long)s->cfg.max_staleness);
    if (s->cfg.staleness != AC_STALENESS_SIGMA) return AC_OK;
    if ((r = ac__history_grow(s, tau)) != AC_OK) return r;
    if (t_pull < s->forgot)
        return ac__fail(AC_ERR_HISTORY, "sigma: tau = %llu more than doubles the staleness seen "
                                        "before, and updates it counts were forgotten; the "
                                        "history now covers %llu: pull again",
                        (unsigned long long)tau, 64ull * s->words);
    return AC_OK;
}

/* Number of touches of i labelled after t_pull.  last - t_pull <= tau <=
   64 * words, so the mask covers the whole span. */
static uint32_t ac__sigma(const ac_server *s, uint32_t i, uint64_t t_pull)
{
    const uint64_t *m = s->touch + (size_t)i * (1 + s->words) + 1;
    uint64_t last = m[-1], span;
    uint32_t sigma = 0;
    if (last <= t_pull) return 0;
    span = last - t_pull;
    if (span < 64) return ac__popcount64(*m & ((1ull << span) - 1)); /* short: inlined */
    for (; span >= 64; span -= 64) sigma += ac__popcount64(*m++);
    if (span) sigma += ac__popcount64(*m & ((1ull << span) - 1));
    return sigma;
}

/* The newest label among the set bits at positions >= p of a mask whose
   bit b stands for label last - b; 0 if none. */
static uint64_t ac__newest_from(const uint64_t *m, uint32_t words, uint64_t last, uint64_t p)
{
    uint64_t k = p / 64, x;
    if (k >= words) return 0;
    x = m[k] & (~0ull << (p % 64));
    while (!x) {
        if (++k == words) return 0;
        x = m[k];
    }
    return last - (64 * k + ac__ctz64(x));
}

/* Records that update `label` touched i; returns the newest label whose
   bit was shifted out of the mask (0 if none), for s->forgot. */
static uint64_t ac__touch(ac_server *s, uint32_t i, uint64_t label)
{
    uint64_t *m = s->touch + (size_t)i * (1 + s->words) + 1, bits = 64ull * s->words;
    uint64_t last = m[-1], d = label - last, gone;
    uint32_t k, q, r;
    m[-1] = label;
    if (s->words == 1) { /* the common case (tau <= 32), kept short */
        uint64_t m0 = *m, from = d >= 64 ? 0 : 64 - d, out = d >= 64 ? m0 : m0 >> from;
        *m = d >= 64 ? 1 : m0 << d | 1;
        return out ? last - (from + ac__ctz64(out)) : 0;
    }
    gone = ac__newest_from(m, s->words, last, d >= bits ? 0 : bits - d);
    if (d >= bits) {
        memset(m, 0, (size_t)s->words * sizeof(uint64_t));
        m[0] = 1;
        return gone;
    }
    q = (uint32_t)(d / 64), r = (uint32_t)(d % 64);
    for (k = s->words; k-- > q;) /* downwards: reads only words not yet written */
        m[k] = m[k - q] << r | (r && k > q ? m[k - q - 1] >> (64 - r) : 0);
    for (k = 0; k < q; k++) m[k] = 0;
    m[0] |= 1;
    return gone;
}

/* Global indices strictly increasing and in range, values finite: all an
   apply needs for an update that did not come from ac_decode. */
static ac_result ac__check_update(const ac_server *s, const ac_update *u)
{
    uint32_t j;
    ac_result r;
    if (!u || (u->nnz && (!u->index || !u->value)))
        return ac__fail(AC_ERR_ARG, "apply: NULL update");
    if (u->layout_hash != ac_layout_hash(&s->layout) || !u->count ||
        u->layout.count != s->layout.count || !u->layout.sizes)
        return ac__fail(AC_ERR_LAYOUT, "apply: update is for another layout");
    for (j = 0; j < s->layout.count; j++)
        if (u->layout.sizes[j] != s->layout.sizes[j])
            return ac__fail(AC_ERR_LAYOUT, "apply: update is for another layout");
    if ((r = ac__check_indices(u)) != AC_OK) return r;
    if (!ac__all_finite(u->value, u->nnz))
        return ac__fail(AC_ERR_VALUE, "apply: value %u is NaN or infinite",
                        (unsigned)ac__first_non_finite(u->value, u->nnz));
    return AC_OK;
}

/* w[index_j] -= a * value_j.  A tensor sent whole is a contiguous run
   (dense pushes are nothing else), streamed without reading its indices,
   which the server's decode does not even write, and with raw (float32
   values left in the packet) without its values copied either; with
   done, whole tensors are skipped (ac__step_consume applied them). */
static void ac__step(float *w, const ac_update *u, const unsigned char *raw, float a,
                     int avx512, int done)
{
    uint32_t l, j = 0, base = 0;
    for (l = 0; l < u->layout.count; l++) {
        uint32_t c = u->count[l], n = u->layout.sizes[l], end = j + c;
        if (c == n) {
            if (!done)
                ac__axpy(w + base, raw ? (const void *)(raw + 4 * (size_t)j) : u->value + j, n,
                         a, avx512);
        } else
            for (; j < end; j++) w[u->index[j]] -= a * u->value[j];
        j = end;
        base += n;
    }
}

#ifdef AC__AVX512
/* Bits set in each 64-bit lane (AVX-512F has no popcount of its own).  The
   shifts are the zero-masked forms: g++ reports the plain ones' undefined
   start value as uninitialised. */
#define AC__SRLI64(x, n) _mm512_maskz_srli_epi64((__mmask8)0xFF, x, n)
AC__AVX512_FN static __m512i ac__popcount512(__m512i x)
{
    const __m512i m1 = _mm512_set1_epi64(0x5555555555555555ll);
    const __m512i m2 = _mm512_set1_epi64(0x3333333333333333ll);
    const __m512i m4 = _mm512_set1_epi64(0x0F0F0F0F0F0F0F0Fll);
    x = _mm512_sub_epi64(x, _mm512_and_si512(AC__SRLI64(x, 1), m1));
    x = _mm512_add_epi64(_mm512_and_si512(x, m2), _mm512_and_si512(AC__SRLI64(x, 2), m2));
    x = _mm512_and_si512(_mm512_add_epi64(x, AC__SRLI64(x, 4)), m4);
    x = _mm512_add_epi64(x, AC__SRLI64(x, 8));
    x = _mm512_add_epi64(x, AC__SRLI64(x, 16));
    x = _mm512_add_epi64(x, AC__SRLI64(x, 32));
    return _mm512_and_si512(x, _mm512_set1_epi64(0x7F));
}

/* ac__step_sigma over a tensor sent whole, 8 entries at a time, for a
   one-word history (tau <= 64): the same sigma, the same a * v / max(1,
   sigma) (a product then a quotient, no FMA), the same touch records as
   ac__sigma and ac__touch.  touch: the tensor's first row; returns the
   newest label shifted out, 0 if none. */
AC__AVX512_FN static uint64_t ac__step_sigma_avx512(float *w, const unsigned char *v,
                                                    uint64_t *touch, uint32_t n, float a,
                                                    uint64_t t_pull, uint64_t label)
{
    const __m512i even = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
    const __m512i lo_rows = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i hi_rows = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    const __m512i one = _mm512_set1_epi64(1), ones = _mm512_set1_epi64(-1);
    const __m512i tp = _mm512_set1_epi64((long long)t_pull), lb = _mm512_set1_epi64((long long)label);
    const __m512i n64 = _mm512_set1_epi64(64);
    const __m512 av = _mm512_set1_ps(a);
    __m512i forgot = _mm512_setzero_si512();
    uint64_t lane[8], newest = 0;
    uint32_t k;
    for (k = 0; k < n; k += 8) {
        uint32_t c = n - k < 8 ? n - k : 8;
        __mmask8 lanes = (__mmask8)((1u << c) - 1);
        __mmask16 lo_k = (__mmask16)((1u << 2 * (c < 4 ? c : 4)) - 1);
        __mmask16 hi_k = (__mmask16)((1u << 2 * (c > 4 ? c - 4 : 0)) - 1);
        uint64_t *row = touch + 2 * (size_t)k;
        __m512i lo;
        AC__PREFETCH(row + AC__SIGMA_AHEAD);
        AC__PREFETCH(row + AC__SIGMA_AHEAD + 8);
        lo = _mm512_maskz_loadu_epi64((__mmask8)lo_k, row);
        __m512i hi = _mm512_maskz_loadu_epi64((__mmask8)hi_k, row + 8);
        __m512i last = _mm512_permutex2var_epi64(lo, even, hi);
        __m512i m = _mm512_permutex2var_epi64(lo, odd, hi);
        /* sigma = popcount(m & low (last - t_pull) bits), 0 if last <= t_pull */
        __mmask8 live = _mm512_mask_cmpgt_epu64_mask(lanes, last, tp);
        __m512i span = _mm512_sub_epi64(last, tp);
        __m512i sigma = _mm512_maskz_mov_epi64(
            live, ac__popcount512(_mm512_andnot_si512(_mm512_sllv_epi64(ones, span), m)));
        __m512 den = _mm512_cvtepi32_ps(_mm512_castsi256_si512(
            _mm512_cvtepi64_epi32(_mm512_max_epu64(sigma, one))));
        __m512 x = _mm512_div_ps(AC__MUL512(av, _mm512_maskz_loadu_ps((__mmask16)lanes,
                                                                     v + 4 * (size_t)k)), den);
        /* the touch: shift by d = label - last >= 1; what leaves is out */
        __m512i d = _mm512_sub_epi64(lb, last);
        __m512i from = _mm512_maskz_sub_epi64(_mm512_cmplt_epu64_mask(d, n64), n64, d);
        __m512i out = _mm512_srlv_epi64(m, from);
        __m512i low = _mm512_and_si512(out, _mm512_sub_epi64(_mm512_setzero_si512(), out));
        __m512i gone = _mm512_sub_epi64(
            last, _mm512_add_epi64(from, ac__popcount512(_mm512_sub_epi64(low, one))));
        forgot = _mm512_mask_max_epu64(forgot, _mm512_mask_test_epi64_mask(lanes, out, out),
                                       forgot, gone);
        m = _mm512_or_si512(_mm512_sllv_epi64(m, d), one);
        _mm512_mask_storeu_ps(w + k, (__mmask16)lanes,
                              _mm512_sub_ps(_mm512_maskz_loadu_ps((__mmask16)lanes, w + k), x));
        _mm512_mask_storeu_epi64(row, (__mmask8)lo_k, _mm512_permutex2var_epi64(lb, lo_rows, m));
        _mm512_mask_storeu_epi64(row + 8, (__mmask8)hi_k,
                                 _mm512_permutex2var_epi64(lb, hi_rows, m));
    }
    _mm512_storeu_si512(lane, forgot); /* _mm512_reduce_max_epu64 warns in g++ */
    for (k = 0; k < 8; k++) newest = lane[k] > newest ? lane[k] : newest;
    return newest;
}
#endif

/* The same with alpha / max(1, sigma_i) per entry, recording the touches. */
static void ac__step_sigma(ac_server *s, const ac_update *u, const unsigned char *raw, float a,
                           uint64_t label)
{
    uint32_t l, j = 0, base = 0;
    uint64_t forgot = s->forgot, gone;
    float *w = s->params;
    for (l = 0; l < u->layout.count; l++) {
        uint32_t c = u->count[l], n = u->layout.sizes[l], k;
#ifdef AC__AVX512
        if (c == n && s->words == 1 && s->avx512) {
            gone = ac__step_sigma_avx512(w + base, raw ? raw + 4 * (size_t)j
                                                       : (const unsigned char *)(u->value + j),
                                         s->touch + 2 * (size_t)base, n, a, u->t_pull, label);
            if (gone > forgot) forgot = gone;
            j += c;
            base += n;
            continue;
        }
#endif
        for (k = 0; k < c; k++, j++) {
            uint32_t i = c == n ? base + k : u->index[j], sigma;
            float v;
            if (c != n && k + AC__AHEAD < c) { /* sparse: the history rows are cache misses */
                AC__PREFETCH(s->touch + (size_t)u->index[j + AC__AHEAD] * (1 + s->words));
                AC__PREFETCH(w + u->index[j + AC__AHEAD]);
            }
            sigma = ac__sigma(s, i, u->t_pull);
            v = u->value[j];
            if (raw && c == n) memcpy(&v, raw + 4 * (size_t)j, 4);
            w[i] -= a * v / (float)(sigma > 1 ? sigma : 1);
            if ((gone = ac__touch(s, i, label)) > forgot) forgot = gone;
        }
        base += n;
    }
    s->forgot = forgot;
}

#ifdef AC__AVX512
/* The whole tensors of a consumed packet, each in one pass
   (ac__axpy_save_avx512) at its values v + 4 j; a non-finite value puts
   back the tensors stepped before its own from the old w they left in v. */
static ac_result ac__step_consume(float *w, const ac_update *u, unsigned char *v, float a)
{
    uint32_t l, m, j = 0, base = 0, bad;
    for (l = 0; l < u->layout.count; j += u->count[l], base += u->layout.sizes[l], l++) {
        uint32_t n = u->layout.sizes[l], jm = 0, bm = 0;
        if (u->count[l] != n || (bad = ac__axpy_save_avx512(w + base, v + 4 * (size_t)j, n, a)) == n)
            continue;
        for (m = 0; m < l; jm += u->count[m], bm += u->layout.sizes[m], m++)
            if (u->count[m] == u->layout.sizes[m])
                memcpy(w + bm, v + 4 * (size_t)jm, 4 * (size_t)u->count[m]);
        return ac__fail(AC_ERR_VALUE, "apply: value %u is NaN or infinite", (unsigned)(j + bad));
    }
    return AC_OK;
}
#endif

/* One PS step: w_i -= alpha * v_i / scale_i, record the touches, t += 1.
   raw: where the values of whole tensors lie (ac__get_values), or NULL;
   mut: the same bytes, writable and not yet checked (a consumed packet
   decoded with defer, never in SIGMA mode): a non-finite value among them
   refuses the step with w as it was (ac__step_consume). */
static ac_result ac__apply(ac_server *s, const ac_update *u, const unsigned char *raw,
                           unsigned char *mut)
{
    uint64_t label = s->t + 1, tau = s->t - u->t_pull;
    float a = s->cfg.alpha;
    if (s->cfg.staleness == AC_STALENESS_SIGMA) {
        ac__step_sigma(s, u, raw, a, label);
    } else {
        if (s->cfg.staleness == AC_STALENESS_TAU && tau > 1) a /= (float)tau;
#ifdef AC__AVX512
        if (mut) {
            ac_result r = ac__step_consume(s->params, u, mut, a);
            if (r != AC_OK) return r;
        }
#endif
        ac__step(s->params, u, raw, a, s->avx512, mut != NULL);
    }
    s->t = label;
    s->stats.tau_sum += tau;
    if (tau > s->stats.tau_max) s->stats.tau_max = tau;
    s->stats.packets++;
    s->stats.entries += u->nnz;
    s->stats.dense_bytes += (uint64_t)s->total * 4;
    return AC_OK;
}

ACDEF ac_result ac_server_apply(ac_server *s, const ac_update *u)
{
    ac_result r;
    if (!s) return ac__fail(AC_ERR_ARG, "ac_server_apply: NULL server");
    if ((r = ac__check_update(s, u)) != AC_OK || (r = ac__admit(s, u->t_pull)) != AC_OK) {
        s->stats.rejected++;
        return r;
    }
    return ac__apply(s, u, NULL, NULL);
}

/* Both packet applies; mut: data itself when the caller gave it up. */
static ac_result ac__apply_bytes(ac_server *s, const void *data, size_t len, void *mut)
{
    const unsigned char *raw = NULL;
    int fused = 0;
    ac_result r;
    s->stats.bytes_in += len;
#ifdef AC__RAW_F32
    fused = mut && s->avx512 && s->cfg.staleness != AC_STALENESS_SIGMA;
    r = ac__decode_bytes(&s->update, data, len, &raw, s->avx512, fused);
#else /* values must be copied: a full decode */
    (void)mut;
    r = ac__decode_bytes(&s->update, data, len, NULL, s->avx512, 0);
#endif
    if (r == AC_OK) r = ac__admit(s, s->update.t_pull);
    /* refused for what the checking decode meets only after the values (a
       trailing byte, the clock, the staleness): there a NaN/Inf among them
       comes first, so the answer is the same on both paths (nnz > 0: the
       decode succeeded, a failed one leaves 0) */
    if (fused && r != AC_OK && (r == AC_ERR_TRAILING || s->update.nnz) &&
        ac__decode_bytes(&s->update, data, len, &raw, s->avx512, 0) == AC_ERR_VALUE)
        r = AC_ERR_VALUE;
    if (r == AC_OK)
        r = ac__apply(s, &s->update, raw,
                      fused && raw ? (unsigned char *)mut + (raw - (const unsigned char *)data)
                                   : NULL);
    if (r != AC_OK) s->stats.rejected++;
    return r;
}

ACDEF ac_result ac_server_apply_packet(ac_server *s, const void *data, size_t len)
{
    if (!s) return ac__fail(AC_ERR_ARG, "ac_server_apply_packet: NULL server");
    return ac__apply_bytes(s, data, len, NULL);
}

ACDEF ac_result ac_server_consume_packet(ac_server *s, void *data, size_t len)
{
    if (!s) return ac__fail(AC_ERR_ARG, "ac_server_consume_packet: NULL server");
    return ac__apply_bytes(s, data, len, data);
}

ACDEF ac_result ac_server_sigma(ac_server *s, const ac_update *u, uint32_t *sigma)
{
    uint32_t j;
    ac_result r;
    if (!s || !sigma) return ac__fail(AC_ERR_ARG, "ac_server_sigma: NULL argument");
    if (s->cfg.staleness != AC_STALENESS_SIGMA)
        return ac__fail(AC_ERR_ARG, "ac_server_sigma: server does not count sigma");
    if ((r = ac__check_update(s, u)) != AC_OK || (r = ac__admit(s, u->t_pull)) != AC_OK)
        return r;
    for (j = 0; j < u->nnz; j++) sigma[j] = ac__sigma(s, u->index[j], u->t_pull);
    return AC_OK;
}

ACDEF ac_stats ac_server_stats(const ac_server *s)
{
    ac_stats st;
    memset(&st, 0, sizeof st);
    return s ? s->stats : st;
}

#define AC__STATE_MAGIC "ACSS"
#define AC__STATE_HEAD 40   /* magic .. forgot */
#define AC__STATE_STATS 10

static void ac__stats_fields(ac_stats *st, uint64_t **f)
{
    f[0] = &st->packets;  f[1] = &st->rejected;  f[2] = &st->entries;  f[3] = &st->bytes_in;
    f[4] = &st->bytes_out;  f[5] = &st->dense_bytes;  f[6] = &st->pulls;  f[7] = &st->tau_sum;
    f[8] = &st->tau_max;  f[9] = &st->history_bytes;
}

static size_t ac__history_words(const ac_server *s)
{
    return s->cfg.staleness == AC_STALENESS_SIGMA ? (size_t)s->total * (1 + s->words) : 0;
}

ACDEF size_t ac_server_state_size(const ac_server *s)
{
    return s ? AC__STATE_HEAD + 8 * AC__STATE_STATS + 8 * ac__history_words(s) : 0;
}

ACDEF ac_result ac_server_save(const ac_server *s, void *buf, size_t cap, size_t *written)
{
    unsigned char *p = (unsigned char *)buf;
    ac_stats st;
    uint64_t *f[AC__STATE_STATS];
    size_t i, n;
    if (!s || !buf) return ac__fail(AC_ERR_ARG, "ac_server_save: NULL argument");
    if (cap < ac_server_state_size(s))
        return ac__fail(AC_ERR_CAPACITY, "ac_server_save: %zu bytes, needs %zu", cap,
                        ac_server_state_size(s));
    memcpy(p, AC__STATE_MAGIC, 4);
    p = ac__put_u32(p + 4, 1);
    p = ac__put_u64(p, ac_layout_hash(&s->layout));
    p = ac__put_u32(p, (uint32_t)s->cfg.staleness);
    p = ac__put_u32(p, s->cfg.staleness == AC_STALENESS_SIGMA ? s->words : 0);
    p = ac__put_u64(p, s->t);
    p = ac__put_u64(p, s->forgot);
    st = s->stats;
    ac__stats_fields(&st, f);
    for (i = 0; i < AC__STATE_STATS; i++) p = ac__put_u64(p, *f[i]);
    for (i = 0, n = ac__history_words(s); i < n; i++) p = ac__put_u64(p, s->touch[i]);
    if (written) *written = (size_t)(p - (unsigned char *)buf);
    return AC_OK;
}

ACDEF ac_result ac_server_load(ac_server *s, const void *buf, size_t len)
{
    ac__reader r;
    uint64_t hash, t, forgot, *touch = NULL, *f[AC__STATE_STATS];
    uint32_t version, staleness, words;
    ac_stats st;
    size_t i, n;
    if (!s || !buf) return ac__fail(AC_ERR_ARG, "ac_server_load: NULL argument");
    r.begin = r.p = (const unsigned char *)buf;
    r.end = r.p + len;
    if (len < AC__STATE_HEAD + 8 * AC__STATE_STATS || memcmp(buf, AC__STATE_MAGIC, 4))
        return ac__fail(AC_ERR_MAGIC, "ac_server_load: not a server state");
    r.p += 4;
    version = ac__get_u32(&r);
    hash = ac__get_u64(&r);
    staleness = ac__get_u32(&r);
    words = ac__get_u32(&r);
    t = ac__get_u64(&r);
    forgot = ac__get_u64(&r);
    if (version != 1) return ac__fail(AC_ERR_VERSION, "ac_server_load: state version %u", version);
    if (hash != ac_layout_hash(&s->layout))
        return ac__fail(AC_ERR_LAYOUT, "ac_server_load: the state of another layout");
    if (staleness != (uint32_t)s->cfg.staleness)
        return ac__fail(AC_ERR_FORMAT, "ac_server_load: staleness mode %u, this server's is %d",
                        staleness, (int)s->cfg.staleness);
    if (s->cfg.staleness == AC_STALENESS_SIGMA ? words < 1 || words > s->words_max : words != 0)
        return ac__fail(words > s->words_max ? AC_ERR_HISTORY : AC_ERR_FORMAT,
                        "ac_server_load: a touch history of %u words per parameter", words);
    n = s->cfg.staleness == AC_STALENESS_SIGMA ? (size_t)s->total * (1 + (size_t)words) : 0;
    if ((size_t)(r.end - r.p) != 8 * AC__STATE_STATS + 8 * n || forgot > t)
        return ac__fail(AC_ERR_FORMAT, "ac_server_load: %zu bytes for a state of %zu", len,
                        AC__STATE_HEAD + 8 * AC__STATE_STATS + 8 * n);
    memset(&st, 0, sizeof st);
    ac__stats_fields(&st, f);
    for (i = 0; i < AC__STATE_STATS; i++) *f[i] = ac__get_u64(&r);
    if (n) {
        if (!(touch = (uint64_t *)ac__calloc(n, sizeof(uint64_t))))
            return ac__fail(AC_ERR_NOMEM, "ac_server_load: no memory for the touch history");
        for (i = 0; i < n; i++) {
            touch[i] = ac__get_u64(&r);
            if (i % (1 + (size_t)words) == 0 && touch[i] > t) {
                AC_FREE(touch);
                return ac__fail(AC_ERR_FORMAT, "ac_server_load: a touch after the clock");
            }
        }
        AC_FREE(s->touch);
        s->touch = touch;
        s->words = words;
    }
    s->t = t;
    s->forgot = forgot;
    s->stats = st;
    return AC_OK;
}

#ifdef __cplusplus
}
#endif
#ifdef AC__POP_DIAGNOSTIC
#pragma GCC diagnostic pop
#endif
#endif /* ADACOMP_IMPLEMENTATION */

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
