/* bench/bench_adacomp.c: throughput of the worker side (select + encode) and
 * of the PS ingress (decode + sigma-modulated apply), single thread.
 *
 * Output, one line per measurement (machine-readable, then "# " comments):
 *   bench adacomp_compress mode=M n=N c=C threads=1 gbps=G bytes_per_entry=B
 *   bench adacomp_apply mode=M n=N modulation=S threads=1 gbps=G
 *   bench adacomp_apply mode=dense n=N modulation=constant path=consume threads=1 gbps=G
 * gbps is dense gradient processed per second: 4 bytes x n per call, for
 * both lines (the apply touches only the sent entries, so its figure says
 * how many dense-equivalent gradients per second one PS core absorbs).
 * Each mode is applied by the PS it runs with in dg_asgd (hardy: sigma;
 * the others: constant alpha), and dense also by a sigma PS and, last, by
 * ac_server_consume_packet (path=consume: check and apply in one pass; the
 * packet's values are then the w they replaced, finite, so every call
 * after the first applies those: the same traffic).
 * bytes_per_entry is packet bytes per *sent* entry (index + value cost),
 * summed over every packet of the run.
 * c is the configured rate for hardy/topk, 1 for dense, and the measured
 * fraction sent for ibm and threshold.  Times are medians of repeated calls,
 * measured in CPU time of the thread (CLOCK_THREAD_CPUTIME_ID), so that the
 * other jobs of a shared machine do not count, after one untimed call that
 * faults the pages in; the "# spread" lines give the fastest and slowest
 * call.  The gradient is N(0,1)-like.  `bench_adacomp MODE` runs one mode;
 * `bench_adacomp MODE plain` runs it on the plain kernels (simd = 0), to
 * compare with the AVX-512 ones in the same session. */
#include "bench_common.h" /* first: it sets _GNU_SOURCE */
#include <stdint.h>
#include <time.h>

#define ADACOMP_IMPLEMENTATION
#include "../adacomp.h"

#define MAX_REPS 64
#define TARGET_SECONDS 0.4

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Sorts t; returns the median and, in spread, the fastest and slowest. */
static double median(double *t, int n, double *spread)
{
    double m = bench_median(t, n);
    spread[0] = t[0], spread[1] = t[n - 1];
    return m;
}

static void print_spread(const char *what, const char *mode, uint32_t n, const double *spread)
{
    printf("# spread %s mode=%s n=%u: %.3f to %.3f GB/s\n", what, mode, (unsigned)n,
           4.0 * n / spread[1] / 1e9, 4.0 * n / spread[0] / 1e9);
}

/* A CNN-like layout of exactly n entries: two convolutions, a big fully
   connected layer absorbing the rest, a classifier; weights and biases are
   separate tensors. */
static uint32_t make_layout(uint32_t *sizes, uint32_t n)
{
    uint32_t fixed = 288 + 32 + 18432 + 64 + 256 + 2560 + 10;
    sizes[0] = 288, sizes[1] = 32, sizes[2] = 18432, sizes[3] = 64;
    sizes[4] = n - fixed, sizes[5] = 256, sizes[6] = 2560, sizes[7] = 10;
    return 8;
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float approx_normal(void)
{
    float s = 0;
    int i;
    for (i = 0; i < 4; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        s += (float)(rng >> 40) * (1.0f / 16777216.0f);
    }
    return (s - 2.0f) * 1.7320508f; /* variance 4/12 -> 1 */
}

typedef struct bench_mode {
    const char *name;
    ac_mode mode;
} bench_mode;

static const bench_mode modes[] = {
    {"hardy", AC_MODE_HARDY}, {"ibm", AC_MODE_IBM}, {"dense", AC_MODE_DENSE},
    {"topk", AC_MODE_TOPK},   {"threshold", AC_MODE_THRESHOLD},
};

static void put_t_pull(unsigned char *packet, uint64_t t)
{
    int b;
    for (b = 0; b < 8; b++) packet[16 + b] = (unsigned char)(t >> (8 * b));
}

/* Compresses `reps` times alternating two gradients; returns the median
   time, the mean entries and bytes per packet, and leaves the last packet
   in buf. */
static int run_compress(ac_compressor *c, float *const g[2], unsigned char *buf, size_t cap,
                        size_t *len, double *sent, double *bytes, double *seconds, double *spread)
{
    double t[MAX_REPS], start = now();
    int r;
    *sent = *bytes = 0;
    if (ac_compress(c, g[1], 0, buf, cap, len) != AC_OK) { /* untimed: page faults */
        printf("# compress failed: %s\n", ac_last_error());
        return 0;
    }
    for (r = 0; r < MAX_REPS && (r < 3 || now() - start < TARGET_SECONDS); r++) {
        double t0 = now();
        if (ac_compress(c, g[r & 1], 0, buf, cap, len) != AC_OK) {
            printf("# compress failed: %s\n", ac_last_error());
            return 0;
        }
        t[r] = now() - t0;
        *sent += ac_compressor_update(c)->nnz;
        *bytes += (double)*len;
    }
    *sent /= r;
    *bytes /= r;
    *seconds = median(t, r, spread);
    return 1;
}

/* Applies the packet repeatedly as if 8 workers were pushing: t_pull lags
   the clock by 8, so sigma counting really looks at history. */
static double run_apply(ac_server *s, unsigned char *buf, size_t len, int consume,
                        double *spread)
{
    double t[MAX_REPS], start = now();
    int r;
    for (r = -1; r < MAX_REPS && (r < 3 || now() - start < TARGET_SECONDS); r++) {
        uint64_t clock = ac_server_clock(s);
        double t0;
        put_t_pull(buf, clock >= 8 ? clock - 8 : 0);
        t0 = now();
        if ((consume ? ac_server_consume_packet(s, buf, len)
                     : ac_server_apply_packet(s, buf, len)) != AC_OK) {
            printf("# apply failed: %s\n", ac_last_error());
            return 0;
        }
        if (r >= 0) t[r] = now() - t0; /* the first call faults the pages in */
    }
    return median(t, r, spread);
}

static const char *const staleness_names[] = {"", "sigma", "tau", "constant"};
static int simd = 1; /* the configs' simd field */

static void bench_apply(const ac_layout *layout, float *w, ac_staleness st, const char *mode,
                        unsigned char *buf, size_t len, int consume)
{
    ac_server_config sc = ac_server_config_init();
    ac_server *ps;
    double sec, spread[2];
    uint32_t n = (uint32_t)ac_layout_total(layout);
    sc.staleness = st;
    sc.simd = simd;
    if (ac_server_init(&ps, layout, w, &sc) != AC_OK) {
        printf("# server: %s\n", ac_last_error());
        return;
    }
    sec = run_apply(ps, buf, len, consume, spread);
    if (sec > 0) {
        printf("bench adacomp_apply mode=%s n=%u modulation=%s%s threads=1 gbps=%.3f\n", mode,
               (unsigned)n, staleness_names[st], consume ? " path=consume" : "",
               4.0 * n / sec / 1e9);
        print_spread("apply", mode, n, spread);
    }
    ac_server_free(ps);
}

static void bench_size(uint32_t n, const char *only)
{
    uint32_t sizes[8], count = make_layout(sizes, n), i;
    ac_layout layout;
    float *g[2], *w;
    size_t m;
    layout.count = count, layout.sizes = sizes;
    g[0] = (float *)malloc(n * sizeof(float));
    g[1] = (float *)malloc(n * sizeof(float));
    w = (float *)calloc(n, sizeof(float));
    for (i = 0; i < n; i++) g[0][i] = approx_normal(), g[1][i] = approx_normal();
    for (m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        ac_compressor_config cfg = ac_compressor_config_init();
        ac_compressor *c;
        unsigned char *buf;
        size_t cap, len = 0;
        double sent, bytes, sec, shown_c, spread[2];
        if (only && strcmp(only, modes[m].name) != 0) continue;
        cfg.mode = modes[m].mode, cfg.rate = 0.01, cfg.threshold = 2.576f; /* ~1% of N(0,1) */
        cfg.simd = simd;
        if (ac_compressor_init(&c, &layout, &cfg) != AC_OK) {
            printf("# init: %s\n", ac_last_error());
            continue;
        }
        cap = ac_compressor_packet_bound(c);
        buf = (unsigned char *)malloc(cap);
        memset(buf, 0, cap); /* first touch outside the timing */
        if (run_compress(c, g, buf, cap, &len, &sent, &bytes, &sec, spread)) {
            shown_c = modes[m].mode == AC_MODE_DENSE ? 1.0
                      : (modes[m].mode == AC_MODE_HARDY || modes[m].mode == AC_MODE_TOPK)
                          ? 0.01 : sent / n;
            printf("bench adacomp_compress mode=%s n=%u c=%.4g threads=1 gbps=%.3f "
                   "bytes_per_entry=%.3f\n", modes[m].name, (unsigned)n, shown_c,
                   4.0 * n / sec / 1e9, bytes / (sent > 0 ? sent : 1));
            printf("# %s n=%u: %.0f entries, %.0f bytes/packet, %.1fx smaller than dense\n",
                   modes[m].name, (unsigned)n, sent, bytes, 4.0 * n / bytes);
            print_spread("compress", modes[m].name, n, spread);
            bench_apply(&layout, w, modes[m].mode == AC_MODE_HARDY ? AC_STALENESS_SIGMA
                                                                   : AC_STALENESS_CONSTANT,
                        modes[m].name, buf, len, 0);
            if (modes[m].mode == AC_MODE_DENSE) {
                bench_apply(&layout, w, AC_STALENESS_SIGMA, modes[m].name, buf, len, 0);
                bench_apply(&layout, w, AC_STALENESS_CONSTANT, modes[m].name, buf, len, 1);
            }
        }
        fflush(stdout);
        free(buf);
        ac_compressor_free(c);
    }
    free(g[0]), free(g[1]), free(w);
}

/* An optional argument, a mode's name, runs that mode alone (for perf). */
int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    simd = !(argc > 2 && strcmp(argv[2], "plain") == 0);
    printf("# kernels: %s\n", simd ? "AVX-512 where the CPU has it" : "plain (simd = 0)");
    bench_size(1000000, only);
    bench_size(10000000, only);
    return 0;
}
