/* tests/fuzz_idx.c: libFuzzer target for the IDX parser and the gzip
 * reader behind dg_dataset_load_idx_mem.
 *   byte 0, bit 0: 0 = images only, 1 = images + labels
 *   with labels: bytes 1-2 (little-endian) give the split point (mod the
 *   remaining size) between the images file and the labels file.
 * Each part may be raw IDX or gzip.  On success the dataset must be
 * self-consistent (checked), then freed. */
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include <stdint.h>
#include <stdlib.h>
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dg_dataset ds;
    dg_result r;
    if (size < 1) return 0;
    if ((data[0] & 1) && size >= 3) {
        size_t rest = size - 3, split = ((size_t)data[1] | ((size_t)data[2] << 8)) % (rest + 1);
        r = dg_dataset_load_idx_mem(&ds, data + 3, split, data + 3 + split, rest - split);
    } else {
        r = dg_dataset_load_idx_mem(&ds, data + 1, size - 1, NULL, 0);
    }
    if (r == DG_OK) {
        size_t i, sum = 0, per = (size_t)ds.c * ds.h * ds.w;
        if (ds.n == 0 || ds.c != 1 || ds.h < 1 || ds.w < 1 || !ds.pixels) abort();
        for (i = 0; i < ds.n * per; i += 997) sum += ds.pixels[i];
        for (i = 0; i < ds.n; i++)
            if (ds.labels[i] < -1 || ds.labels[i] >= (ds.n_classes ? ds.n_classes : 0)) {
                if (!(ds.labels[i] == -1 && ds.n_classes == 0)) abort();
            }
        (void)sum;
        dg_dataset_free(&ds);
    } else if (ds.pixels || ds.labels || dg_last_error()[0] == 0) {
        abort(); /* failures leave an empty dataset and a message */
    }
    return 0;
}
