/* bench/bench_common.h: timing and reference loading shared by the
   benchmarks.  Every measurement prints one line "bench NAME key=value ...". */
#ifndef DG_BENCH_COMMON_H
#define DG_BENCH_COMMON_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of the whole process (every thread's, spinning included). */
static inline double bench_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best time of `reps` rounds, each round repeating fn until it has run at
   least min_s seconds, after `warmup` calls (page faults, caches, thread
   wake-up); returns seconds per call.  cpu_s, when not NULL, gets the
   process's CPU seconds per call of the round that used the least: on a
   busy host the CPU time moves less than the wall time. */
static inline double bench_time_cpu(void (*fn)(void *), void *arg, int warmup, double min_s,
                                    int reps, double *cpu_s)
{
    double best = 1e30, cpu_best = 1e30;
    int r;
    for (r = 0; r < warmup; r++) fn(arg);
    for (r = 0; r < reps; r++) {
        double t0 = bench_now(), c0 = bench_cpu_now(), t, c;
        long n = 0;
        do {
            fn(arg);
            n++;
            t = bench_now() - t0;
        } while (t < min_s);
        c = bench_cpu_now() - c0;
        if (t / n < best) best = t / n;
        if (c / n < cpu_best) cpu_best = c / n;
    }
    if (cpu_s) *cpu_s = cpu_best;
    return best;
}

/* bench_time_cpu after one warm-up call, wall time only */
static inline double bench_time(void (*fn)(void *), void *arg, double min_s, int reps)
{
    return bench_time_cpu(fn, arg, 1, min_s, reps, NULL);
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

/* A memory figure of this process in MiB: "VmHWM" (peak resident) or
   "VmRSS" (resident now). */
static inline double bench_mem_mb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t n = strlen(field);
    double kb = 0.0;
    if (!f) return 0.0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':' && sscanf(line + n + 1, "%lf", &kb) == 1) break;
    fclose(f);
    return kb / 1024.0;
}
static inline double bench_rss_mb(void) { return bench_mem_mb("VmHWM"); }
/* ---- the machine's FMA peak ----
   Twelve independent chains of AVX-512 FMAs hide the FMA latency on both
   pipes; each thread times itself by its own CPU time, so a busy host
   lowers the figure less than it lowers wall-clock benchmarks.  Every
   peak_pct= of `make bench` is a fraction of this, measured in the same
   run. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) static double bench__fma_avx512(long iters)
{
    /* distinct starting values: equal chains would be merged into one */
    volatile float seed[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    __m512 a0 = _mm512_set1_ps(seed[0]), a1 = _mm512_set1_ps(seed[1]), a2 = _mm512_set1_ps(seed[2]);
    __m512 a3 = _mm512_set1_ps(seed[3]), a4 = _mm512_set1_ps(seed[4]), a5 = _mm512_set1_ps(seed[5]);
    __m512 a6 = _mm512_set1_ps(seed[6]), a7 = _mm512_set1_ps(seed[7]), a8 = _mm512_set1_ps(seed[8]);
    __m512 a9 = _mm512_set1_ps(seed[9]), a10 = _mm512_set1_ps(seed[10]), a11 = _mm512_set1_ps(seed[11]);
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    float out[16];
    long i;
    for (i = 0; i < iters; i++) {
        a0 = _mm512_fmadd_ps(a0, m, c); a1 = _mm512_fmadd_ps(a1, m, c);
        a2 = _mm512_fmadd_ps(a2, m, c); a3 = _mm512_fmadd_ps(a3, m, c);
        a4 = _mm512_fmadd_ps(a4, m, c); a5 = _mm512_fmadd_ps(a5, m, c);
        a6 = _mm512_fmadd_ps(a6, m, c); a7 = _mm512_fmadd_ps(a7, m, c);
        a8 = _mm512_fmadd_ps(a8, m, c); a9 = _mm512_fmadd_ps(a9, m, c);
        a10 = _mm512_fmadd_ps(a10, m, c); a11 = _mm512_fmadd_ps(a11, m, c);
    }
    a0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                       _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    a0 = _mm512_add_ps(a0, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    _mm512_storeu_ps(out, a0);
    return (double)out[0];
}
#endif

static void *bench__peak_thread(void *arg)
{
    double *gflops = (double *)arg;
    long iters = 100000000;
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
#if defined(__x86_64__) && defined(__GNUC__)
    {
        volatile double sink = bench__fma_avx512(iters);
        (void)sink;
    }
#endif
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    *gflops = (double)iters * 12 * 16 * 2 /
              ((double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec)) / 1e9;
    return NULL;
}

/* GFLOP/s of 1 or 2 threads at full FMA throughput; 0 without AVX-512
   (peak_pct is then left out). */
static inline double bench_fma_peak(int threads)
{
    pthread_t t[2];
    double g[2] = {0, 0};
    int i;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return 0.0;
#else
    return 0.0;
#endif
    if (threads > 2) threads = 2;
    for (i = 0; i < threads; i++) pthread_create(&t[i], NULL, bench__peak_thread, &g[i]);
    for (i = 0; i < threads; i++) pthread_join(t[i], NULL);
    return g[0] + (threads > 1 ? g[1] : 0.0);
}

/* ---- PyTorch references ----
   Debian's python3-torch at its best here: /usr/bin/python3 (not a
   python3 earlier on PATH), no OpenBLAS core override, one OpenBLAS
   thread beside torch's own (the script calls torch.set_num_threads), and
   a malloc that keeps large activation buffers mapped (otherwise page
   faults double PyTorch's DCGAN step).  Runs "/usr/bin/python3 bench/ARGS"
   and returns its last output line in out (0), or 1 when PyTorch is not
   installed or the script failed. */
static inline int bench_torch_installed(void)
{
    return access("/usr/bin/python3", X_OK) == 0 &&
           access("/usr/lib/python3/dist-packages/torch/__init__.py", R_OK) == 0;
}

static inline int bench_torch(const char *args, char *out, size_t cap)
{
    char cmd[512], line[512];
    FILE *f;
    int ok = 0;
    if (!bench_torch_installed()) return 1;
    snprintf(cmd, sizeof cmd,
             "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 "
             "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 "
             "/usr/bin/python3 bench/%s 2>/dev/null", args);
    fflush(stdout);
    f = popen(cmd, "r");
    if (!f) return 1;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "ms=")) {
            snprintf(out, cap, "%s", line);
            ok = 1;
        }
    return pclose(f) == 0 && ok ? 0 : 1;
}

/* "key=<number>" in a line of key=value pairs; 1 when found. */
static inline int bench_field(const char *line, const char *key, double *v)
{
    char pat[64];
    const char *p = line;
    size_t n = (size_t)snprintf(pat, sizeof pat, "%s=", key);
    while ((p = strstr(p, pat)) != NULL) {
        if (p == line || p[-1] == ' ') return sscanf(p + n, "%lf", v) == 1;
        p += n;
    }
    return 0;
}
#endif
