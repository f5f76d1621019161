/* GEMM against a naive triple loop: every transpose case, every instruction
   set this CPU has, sizes 1..300 including non-multiples of every tile,
   alpha/beta cases, and bit-identical results for 1 and 2 threads. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

static void naive(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc)
{
    int i, j, p;
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) {
            double s = 0.0;
            for (p = 0; p < k; p++)
                s += (double)(ta ? a[p * lda + i] : a[i * lda + p]) *
                     (tb ? b[j * ldb + p] : b[p * ldb + j]);
            c[i * ldc + j] = (float)(alpha * s + (beta == 0.0f ? 0.0 : beta * c[i * ldc + j]));
        }
}

/* the operands and results of a comparison */
static void free4(float *a, float *b, float *c, float *d)
{
    free(a);
    free(b);
    free(c);
    free(d);
}

/* max |ours - naive| relative to the magnitude of the products */
static double gemm_err(dg_pool *pool, int ta, int tb, int m, int n, int k, float alpha, float beta,
                       int pad)
{
    int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    size_t sa = (size_t)(ta ? k : m) * lda, sb = (size_t)(tb ? n : k) * ldb, sc = (size_t)m * ldc, i;
    float *a = malloc(sa * 4 + 4), *b = malloc(sb * 4 + 4), *c = malloc(sc * 4 + 4),
          *r = malloc(sc * 4 + 4);
    dg_rng rng = dg_rng_make(7, (uint64_t)m * 1000003 + n, (uint64_t)k * 4 + ta * 2 + tb);
    double err = 0.0;
    dg_rng_fill_uniform(&rng, a, sa, -1, 1);
    dg_rng_fill_uniform(&rng, b, sb, -1, 1);
    dg_rng_fill_uniform(&rng, c, sc, -1, 1);
    memcpy(r, c, sc * 4);
    CHECK_OK(dg_gemm(pool, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc));
    naive(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, r, ldc);
    for (i = 0; i < sc; i++) {
        double d = fabs((double)c[i] - r[i]);
        if ((i % ldc) >= (size_t)n) d = c[i] != r[i] ? 1e9 : 0.0; /* padding untouched */
        if (d > err) err = d;
    }
    free(a);
    free(b);
    free(c);
    free(r);
    return err / (k > 0 ? sqrt((double)k) : 1.0);
}

static dg_pool *pool1, *pool2;

TEST(gemm_all_transposes_sizes_1_to_300)
{
    static const int sizes[] = {1, 2, 3, 5, 7, 11, 12, 13, 16, 17, 31, 32, 33, 47, 64, 65, 97,
                                128, 143, 145, 200, 255, 257, 300};
    int ns = (int)(sizeof sizes / sizeof *sizes), isa, ta, tb, i;
    double worst = 0.0;
    for (isa = 0; isa <= (int)dg_isa_best(); isa++) {
        CHECK_OK(dg_pool_set_isa(pool2, (dg_isa)isa));
        for (ta = 0; ta < 2; ta++)
            for (tb = 0; tb < 2; tb++)
                for (i = 0; i < ns; i++) {
                    int m = sizes[i], n = sizes[(i * 7 + 3) % ns], k = sizes[(i * 5 + 1) % ns];
                    double e = gemm_err(pool2, ta, tb, m, n, k, 1.0f, 0.0f, i % 3);
                    if (e > worst) worst = e;
                    e = gemm_err(pool2, ta, tb, n, k, m, 1.0f, 0.0f, 0);
                    if (e > worst) worst = e;
                }
    }
    CHECK(worst < 1e-5);
    printf("  worst scaled error %.3g\n", worst);
    CHECK_OK(dg_pool_set_isa(pool2, dg_isa_best()));
}

TEST(gemm_every_size_1_to_300_square)
{
    int s;
    double worst = 0.0;
    for (s = 1; s <= 300; s++) {
        double e = gemm_err(pool2, s & 1, (s >> 1) & 1, s, s, s, 1.0f, 0.0f, 0);
        if (e > worst) worst = e;
    }
    CHECK(worst < 1e-5);
}

TEST(gemm_alpha_beta)
{
    CHECK(gemm_err(pool2, 0, 0, 37, 41, 29, 0.5f, 0.0f, 1) < 1e-5);
    CHECK(gemm_err(pool2, 0, 1, 37, 41, 29, -2.0f, 1.0f, 0) < 1e-5);
    CHECK(gemm_err(pool2, 1, 0, 37, 41, 29, 1.0f, -0.75f, 2) < 1e-5);
    CHECK(gemm_err(pool2, 1, 1, 300, 290, 600, 1.0f, 0.25f, 0) < 1e-5);
    CHECK(gemm_err(pool2, 0, 0, 5, 6, 0, 1.0f, 0.5f, 0) < 1e-6); /* k = 0: C = beta C */
}

TEST(gemm_large_blocks)
{
    /* crosses the KC, MCH and NC block boundaries */
    CHECK(gemm_err(pool2, 0, 0, 1200, 3100, 300, 1.0f, 0.0f, 0) < 1e-5);
    CHECK(gemm_err(pool2, 1, 1, 1160, 70, 520, 1.0f, 1.0f, 3) < 1e-5);
}

TEST(gemm_threads_bit_identical)
{
    int m = 333, n = 517, k = 701, ta, tb;
    for (ta = 0; ta < 2; ta++)
        for (tb = 0; tb < 2; tb++) {
            size_t sa = (size_t)m * k, sb = (size_t)k * n, sc = (size_t)m * n;
            float *a = malloc(sa * 4), *b = malloc(sb * 4), *c1 = malloc(sc * 4), *c2 = malloc(sc * 4);
            dg_rng rng = dg_rng_make(3, 4, 5);
            dg_rng_fill_uniform(&rng, a, sa, -1, 1);
            dg_rng_fill_uniform(&rng, b, sb, -1, 1);
            CHECK_OK(dg_gemm(pool1, ta, tb, m, n, k, 1.0f, a, ta ? m : k, b, tb ? k : n, 0.0f, c1, n));
            CHECK_OK(dg_gemm(pool2, ta, tb, m, n, k, 1.0f, a, ta ? m : k, b, tb ? k : n, 0.0f, c2, n));
            CHECK(memcmp(c1, c2, sc * 4) == 0);
            free(a);
            free(b);
            free(c1);
            free(c2);
        }
}

/* Every transpose case of shape m x n x k, with and without padded leading
   dimensions, alpha and beta: within the tolerance of the naive loop, and
   the same bits for 1 and 2 threads. */
static void check_shape(int s, int m, int n, int k)
{
    int ta, tb, pad;
    for (ta = 0; ta < 2; ta++)
        for (tb = 0; tb < 2; tb++)
            for (pad = 0; pad < 2; pad++) {
                int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
                size_t sa = (size_t)(ta ? k : m) * lda, sb = (size_t)(tb ? n : k) * ldb;
                size_t sc = (size_t)m * ldc;
                float *a = malloc(sa * 4), *b = malloc(sb * 4), *c1 = malloc(sc * 4),
                      *c2 = malloc(sc * 4);
                dg_rng rng = dg_rng_make(9, (uint64_t)s, (uint64_t)(ta * 4 + tb * 2 + pad));
                CHECK(gemm_err(pool2, ta, tb, m, n, k, 0.5f, pad ? 0.25f : 0.0f, pad) < 1e-5);
                dg_rng_fill_uniform(&rng, a, sa, -1, 1);
                dg_rng_fill_uniform(&rng, b, sb, -1, 1);
                dg_rng_fill_uniform(&rng, c1, sc, -1, 1);
                memcpy(c2, c1, sc * 4);
                CHECK_OK(dg_gemm(pool1, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c1, ldc));
                CHECK_OK(dg_gemm(pool2, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c2, ldc));
                CHECK(memcmp(c1, c2, sc * 4) == 0);
                free4(a, b, c1, c2);
            }
}

/* One side of C equal to 1 runs as a matrix-vector product: both loop
   forms, sizes large enough for the threads. */
TEST(gemm_matrix_vector)
{
    static const int shapes[][3] = {{1, 3000, 700}, {2500, 1, 900}, {1, 1, 37}, {1, 17, 1},
                                    {45, 1, 33}};
    int s;
    for (s = 0; s < 5; s++) check_shape(s, shapes[s][0], shapes[s][1], shapes[s][2]);
}

/* Up to 12 rows of C (a linear layer on a batch of b <= 12) stream op(B)
   unpacked: the papers' b = 10 through the MLP's layers, odd edges in n
   and k, and enough work for the threads. */
TEST(gemm_few_rows)
{
    static const int shapes[][3] = {{10, 512, 784}, {10, 784, 512}, {2, 3001, 97},
                                    {12, 33, 1000}, {7, 785, 17}, {11, 1000, 300}};
    int s;
    for (s = 0; s < 6; s++) check_shape(10 + s, shapes[s][0], shapes[s][1], shapes[s][2]);
}

/* dg__gemm_onto_zero (a backward's first gradient, no zeroing pass) gives
   the bits of zeroing C, then dg_gemm with beta = 1, and never reads C (it
   starts as NaN here): every path (matrix-vector, few rows NN and NT, the
   packed blocks with edge tiles and several depth blocks), 1 and 2
   threads, and rows of zeros in A whose products are -0. */
TEST(gemm_onto_zero_matches_zeroing)
{
    static const int shapes[][5] = {/* ta, tb, m, n, k */
                                    {1, 0, 512, 784, 10}, {1, 0, 1, 512, 10}, {0, 0, 700, 1, 33},
                                    {1, 0, 7, 300, 10},   {0, 1, 10, 33, 1000}, {0, 0, 300, 200, 600},
                                    {1, 1, 13, 45, 7},    {0, 0, 5, 40, 0}};
    int s, t;
    for (s = 0; s < 8; s++)
        for (t = 0; t < 2; t++) {
            int ta = shapes[s][0], tb = shapes[s][1], m = shapes[s][2], n = shapes[s][3],
                k = shapes[s][4], lda = ta ? m : k, ldb = tb ? k : n;
            size_t sa = (size_t)m * k + 1, sb = (size_t)k * n + 1, sc = (size_t)m * n, i;
            float *a = malloc(sa * 4), *b = malloc(sb * 4), *c = malloc(sc * 4), *r = malloc(sc * 4);
            dg_rng rng = dg_rng_make(9, (uint64_t)s, 0);
            dg_pool *pool = t ? pool2 : pool1;
            dg_rng_fill_uniform(&rng, a, sa, -1, 1);
            dg_rng_fill_uniform(&rng, b, sb, -1, 1);
            for (i = 0; i < (size_t)k && m > 1; i++) a[ta ? i * lda : i] = 0.0f; /* row 0 of op(A) */
            for (i = 0; i < sc; i++) c[i] = NAN;
            memset(r, 0, sc * 4);
            dg__gemm_onto_zero(pool, ta, tb, m, n, k, a, lda, b, ldb, c, n);
            CHECK_OK(dg_gemm(pool, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, r, n));
            CHECK(memcmp(c, r, sc * 4) == 0);
            free4(a, b, c, r);
        }
}

TEST(gemm_rejects_bad_arguments)
{
    float x[4] = {0};
    CHECK(dg_gemm(NULL, 0, 0, 1, 1, 1, 1, x, 1, x, 1, 0, x, 1) == DG_ERR_ARG);
    CHECK(dg_gemm(pool1, 0, 0, -1, 1, 1, 1, x, 1, x, 1, 0, x, 1) == DG_ERR_ARG);
    CHECK(dg_gemm(pool1, 0, 0, 2, 2, 2, 1, x, 1, x, 2, 0, x, 2) == DG_ERR_ARG);
    CHECK(dg_gemm(pool1, 0, 0, 2, 2, 2, 1, NULL, 2, x, 2, 0, x, 2) == DG_ERR_ARG);
    CHECK(strstr(dg_last_error(), "NULL") != NULL);
    CHECK(dg_gemm(pool1, 0, 0, 0, 2, 2, 1, x, 2, x, 2, 0, x, 2) == DG_OK);
    x[0] = 3.0f; /* k = 0 with beta = 1 leaves C as it is */
    CHECK(dg_gemm(pool1, 0, 0, 2, 2, 0, 1, x, 1, x, 2, 1, x, 2) == DG_OK && x[0] == 3.0f);
}

int main(void)
{
    if (dg_pool_create(&pool1, 1) || dg_pool_create(&pool2, 2)) return 1;
    printf("isa %s\n", dg_isa_name(dg_isa_best()));
    RUN(gemm_all_transposes_sizes_1_to_300);
    RUN(gemm_every_size_1_to_300_square);
    RUN(gemm_alpha_beta);
    RUN(gemm_large_blocks);
    RUN(gemm_threads_bit_identical);
    RUN(gemm_matrix_vector);
    RUN(gemm_few_rows);
    RUN(gemm_onto_zero_matches_zeroing);
    RUN(gemm_rejects_bad_arguments);
    dg_pool_destroy(pool1);
    dg_pool_destroy(pool2);
    return th_done();
}
