/* bench/bench_load_idx.c: time to load the Fashion-MNIST training images
 * from the .gz (read the whole file, parse the gzip header, one inflate,
 * CRC-32 + ISIZE check, IDX parse).  Best of 5 runs.
 *   bench load_idx n=60000 threads=1 ms=... mb_per_s=...
 * mb_per_s counts the inflated bytes (47 MB) per second. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <time.h>
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#define FMNIST "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(void)
{
    FILE *f = fopen(FMNIST, "rb");
    double best = 1e30;
    size_t n = 0, bytes = 0;
    int rep;
    if (!f) {
        printf("bench load_idx status=skipped reason=missing_%s\n", FMNIST);
        return 0;
    }
    fclose(f);
    for (rep = 0; rep < 5; rep++) {
        dg_dataset ds;
        double t0 = now_ms(), t;
        dg_result r = dg_dataset_load_idx(&ds, FMNIST, NULL);
        t = now_ms() - t0;
        if (r) {
            printf("bench load_idx status=failed reason=\"%s\"\n", dg_last_error());
            return 1;
        }
        n = ds.n;
        bytes = ds.n * (size_t)ds.c * ds.h * ds.w + 16;
        dg_dataset_free(&ds);
        if (t < best) best = t;
    }
    printf("bench load_idx n=%zu threads=1 ms=%.1f mb_per_s=%.1f\n", n, best, bytes / 1e6 / (best / 1e3));
    return 0;
}
