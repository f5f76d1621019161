/* bench/bench_common.h: timing and reference loading shared by the
   benchmarks.  Every measurement prints one line "bench NAME key=value ...". */
#ifndef DG_BENCH_COMMON_H
#define DG_BENCH_COMMON_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best time of `reps` rounds, each round repeating fn until it has run at
   least min_s seconds; returns seconds per call. */
static inline double bench_time(void (*fn)(void *), void *arg, double min_s, int reps)
{
    double best = 1e30;
    int r;
    fn(arg); /* warm-up: page faults, caches, thread wake-up */
    for (r = 0; r < reps; r++) {
        double t0 = bench_now(), t;
        long n = 0;
        do {
            fn(arg);
            n++;
            t = bench_now() - t0;
        } while (t < min_s);
        if (t / n < best) best = t / n;
    }
    return best;
}

/* OpenBLAS at its best: the variables this machine sets for old OpenBLAS
   builds force its slower Haswell kernels, so the reference drops them
   (they only affect the reference, loaded here at run time). */
typedef void (*bench_sgemm_fn)(int order, int ta, int tb, int m, int n, int k, float alpha,
                               const float *a, int lda, const float *b, int ldb, float beta,
                               float *c, int ldc);
typedef void (*bench_threads_fn)(int);

static inline bench_sgemm_fn bench_openblas(bench_threads_fn *set_threads)
{
    void *h;
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("OPENBLAS_L2_SIZE");
    h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libopenblas.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) return NULL;
    {
        /* POSIX guarantees dlsym's object pointers convert to function
           pointers; memcpy says so without a pedantic warning */
        void *sym = dlsym(h, "openblas_set_num_threads");
        bench_sgemm_fn gemm;
        memcpy(set_threads, &sym, sizeof sym);
        sym = dlsym(h, "cblas_sgemm");
        memcpy(&gemm, &sym, sizeof sym);
        return sym ? gemm : NULL;
    }
}

/* Peak resident memory of this process in MiB (VmHWM). */
static inline double bench_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0.0;
    if (!f) return 0.0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb / 1024.0;
}
#endif
