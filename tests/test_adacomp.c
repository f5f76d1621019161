/* tests/test_adacomp.c: adacomp.h against independent references.
 *
 * Selection is compared with a sort-based top-k, IBM mode with a direct
 * transcription of Chen et al.'s rule, sigma with a brute-force count over
 * a history kept here, the packet format with bytes written by hand, and
 * the decoder with one packet per rule it enforces.  The allocator is
 * counted to prove that nothing allocates after init. */
#include <stdint.h>
#include <stdlib.h>

static long t_allocs;
static void *t_malloc(size_t n)
{
    t_allocs++;
    return malloc(n);
}
#define AC_MALLOC(n) t_malloc(n)
#define AC_FREE(p) free(p)
#define ADACOMP_IMPLEMENTATION
#include "../adacomp.h"
#include "harness.h"

/* ---- helpers ---- */

static uint64_t t_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
    t_rng ^= t_rng << 13;
    t_rng ^= t_rng >> 7;
    t_rng ^= t_rng << 17;
    return (uint32_t)(t_rng >> 16);
}
static uint32_t rnd_below(uint32_t n) { return rnd() % n; }
static float rnd_normal(void)
{
    float s = 0;
    int i;
    for (i = 0; i < 12; i++) s += (float)rnd_below(1u << 20) / (float)(1u << 20);
    return s - 6.0f;
}

/* Gradients with many exact ties (and +-0) or continuous values. */
static void fill_grad(float *g, uint32_t n, int ties)
{
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (ties) g[i] = 0.25f * (float)((int)rnd_below(9) - 4);
        else g[i] = rnd_normal();
    }
}

static uint32_t total_of(const uint32_t *sizes, uint32_t count)
{
    uint32_t l, t = 0;
    for (l = 0; l < count; l++) t += sizes[l];
    return t;
}

static int random_layout(uint32_t *sizes, uint32_t max_count)
{
    static const uint32_t pool[] = {1, 2, 3, 7, 63, 64, 65, 127, 128, 129, 999, 1000, 4097};
    uint32_t l, count = 1 + rnd_below(max_count);
    for (l = 0; l < count; l++)
        sizes[l] = rnd_below(4) ? pool[rnd_below(13)] : 1 + rnd_below(3000);
    return (int)count;
}

/* Reference top-k: sort by |g| descending, lower index first among equal
   |g|, keep k, then sort the kept indices ascending. */
static const float *cmp_g;
static int cmp_by_abs(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    float x = fabsf(cmp_g[i]), y = fabsf(cmp_g[j]);
    if (x != y) return x > y ? -1 : 1;
    return i < j ? -1 : 1;
}
static int cmp_u32(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    return i < j ? -1 : i > j;
}
static void ref_topk(const float *g, uint32_t base, uint32_t n, uint32_t k, uint32_t *out)
{
    uint32_t *order = (uint32_t *)malloc(n * sizeof *order), i;
    for (i = 0; i < n; i++) order[i] = base + i;
    cmp_g = g;
    qsort(order, n, sizeof *order, cmp_by_abs);
    memcpy(out, order, k * sizeof *out);
    qsort(out, k, sizeof *out, cmp_u32);
    free(order);
}

static uint32_t hardy_k(double c, uint32_t n)
{
    uint32_t k = (uint32_t)floor(c * n + 1e-9);
    return k < 1 ? 1 : (k > n ? n : k);
}

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

static ac_compressor *make_comp(const uint32_t *sizes, uint32_t count, ac_mode mode,
                                ac_format fmt, double rate)
{
    ac_layout layout;
    ac_compressor_config cfg;
    ac_compressor *c = NULL;
    layout.count = count;
    layout.sizes = sizes;
    cfg = ac_compressor_config_init();
    cfg.mode = mode;
    cfg.format = fmt;
    cfg.rate = rate;
    if (ac_compressor_init(&c, &layout, &cfg) != AC_OK) return NULL;
    return c;
}

/* The compressor's selection, at t_pull, of a gradient of fill_grad's
   (ties) over the layout (*g, malloc'd), with room for a reference
   selection (*ref, as many entries). */
static const ac_update *select_new_grad(ac_compressor *comp, const uint32_t *sizes, uint32_t count,
                                        int ties, uint64_t t_pull, float **g, uint32_t **ref)
{
    uint32_t total = total_of(sizes, count);
    *g = (float *)malloc(total * sizeof **g);
    *ref = (uint32_t *)malloc(total * sizeof **ref);
    fill_grad(*g, total, ties);
    CHECK_OK(ac_compressor_select(comp, *g, t_pull));
    return ac_compressor_update(comp);
}

/* ---- selection ---- */

TEST(hardy_matches_sort_reference)
{
    static const double rates[] = {0.01, 0.05, 0.3, 0.5, 1.0};
    int trial;
    for (trial = 0; trial < 60; trial++) {
        uint32_t sizes[8], count = (uint32_t)random_layout(sizes, 8), l, base = 0, j = 0;
        double c = rates[trial % 5];
        ac_compressor *comp = make_comp(sizes, count, AC_MODE_HARDY, AC_FORMAT_F32, c);
        const ac_update *u;
        float *g;
        uint32_t *ref;
        CHECK(comp != NULL);
        if (!comp) return;
        u = select_new_grad(comp, sizes, count, trial % 2, 7, &g, &ref);
        CHECK(u->t_pull == 7);
        for (l = 0; l < count; l++) {
            uint32_t k = hardy_k(c, sizes[l]), i;
            CHECK(u->count[l] == k);
            ref_topk(g, base, sizes[l], k, ref);
            for (i = 0; i < k && j + i < u->nnz; i++) {
                CHECK(u->index[j + i] == ref[i]);
                CHECK(same_bits(u->value[j + i], g[ref[i]]));
            }
            j += u->count[l];
            base += sizes[l];
        }
        CHECK(j == u->nnz);
        free(g);
        free(ref);
        ac_compressor_free(comp);
    }
}

TEST(hardy_all_equal_takes_lowest_indices)
{
    uint32_t sizes[] = {10, 301};
    float g[311];
    ac_compressor *comp = make_comp(sizes, 2, AC_MODE_HARDY, AC_FORMAT_F32, 0.1);
    const ac_update *u;
    uint32_t i;
    for (i = 0; i < 311; i++) g[i] = (i % 2) ? -1.5f : 1.5f;
    CHECK_OK(ac_compressor_select(comp, g, 0));
    u = ac_compressor_update(comp);
    CHECK(u->nnz == 1 + 30);
    CHECK(u->index[0] == 0);
    for (i = 0; i < 30; i++) CHECK(u->index[1 + i] == 10 + i);
    ac_compressor_free(comp);
}

TEST(k_rule)
{
    uint32_t sizes[] = {1, 99, 100, 250, 1000, 3, 1999};
    uint32_t expect_001[] = {1, 1, 1, 2, 10, 1, 19};
    uint32_t hundred[] = {100};
    float g[3452];
    ac_compressor *comp;
    uint32_t l;
    fill_grad(g, 3452, 0);
    comp = make_comp(sizes, 7, AC_MODE_HARDY, AC_FORMAT_F32, 0.01);
    CHECK_OK(ac_compressor_select(comp, g, 0));
    for (l = 0; l < 7; l++) CHECK(ac_compressor_update(comp)->count[l] == expect_001[l]);
    ac_compressor_free(comp);
    /* 0.29 is stored as 0.28999...; a plain floor would give 28 */
    comp = make_comp(hundred, 1, AC_MODE_HARDY, AC_FORMAT_F32, 0.29);
    CHECK_OK(ac_compressor_select(comp, g, 0));
    CHECK(ac_compressor_update(comp)->count[0] == 29);
    ac_compressor_free(comp);
    comp = make_comp(sizes, 7, AC_MODE_HARDY, AC_FORMAT_F32, 1.0);
    CHECK_OK(ac_compressor_select(comp, g, 0));
    for (l = 0; l < 7; l++) CHECK(ac_compressor_update(comp)->count[l] == sizes[l]);
    ac_compressor_free(comp);
}

TEST(global_topk_matches_sort_reference)
{
    int trial;
    for (trial = 0; trial < 40; trial++) {
        uint32_t sizes[8], count = (uint32_t)random_layout(sizes, 8), total, k, i;
        double c = trial % 3 ? 0.02 : 0.4;
        ac_compressor *comp = make_comp(sizes, count, AC_MODE_TOPK, AC_FORMAT_F32, c);
        const ac_update *u;
        float *g;
        uint32_t *ref, l, sum = 0;
        total = total_of(sizes, count);
        k = hardy_k(c, total);
        u = select_new_grad(comp, sizes, count, trial % 2, 0, &g, &ref);
        ref_topk(g, 0, total, k, ref);
        CHECK(u->nnz == k);
        for (i = 0; i < k && i < u->nnz; i++) CHECK(u->index[i] == ref[i]);
        /* the per-tensor counts must agree with where the indices fall */
        for (l = 0, i = 0; l < count; l++) {
            uint32_t in = 0;
            for (; i < k && ref[i] < sum + sizes[l]; i++) in++;
            CHECK(u->count[l] == in);
            sum += sizes[l];
        }
        free(g);
        free(ref);
        ac_compressor_free(comp);
    }
}

TEST(threshold_and_dense)
{
    uint32_t sizes[] = {17, 1, 400};
    float g[418];
    ac_layout layout = {3, sizes};
    ac_compressor_config cfg;
    ac_compressor *comp;
    const ac_update *u;
    uint32_t i, j = 0;
    fill_grad(g, 418, 0);
    cfg = ac_compressor_config_init();
    cfg.mode = AC_MODE_THRESHOLD;
    cfg.threshold = 1.5f;
    CHECK_OK(ac_compressor_init(&comp, &layout, &cfg));
    CHECK_OK(ac_compressor_select(comp, g, 3));
    u = ac_compressor_update(comp);
    for (i = 0; i < 418; i++) {
        if (fabsf(g[i]) >= 1.5f) {
            CHECK(j < u->nnz && u->index[j] == i && same_bits(u->value[j], g[i]));
            j++;
        }
    }
    CHECK(j == u->nnz && j > 0);
    ac_compressor_free(comp);

    comp = make_comp(sizes, 3, AC_MODE_DENSE, AC_FORMAT_F32, 1.0);
    CHECK_OK(ac_compressor_select(comp, g, 3));
    u = ac_compressor_update(comp);
    CHECK(u->nnz == 418);
    for (i = 0; i < 418; i++) CHECK(u->index[i] == i && same_bits(u->value[i], g[i]));
    for (i = 0; i < 3; i++) CHECK(u->count[i] == sizes[i]);
    ac_compressor_free(comp);
}

/* Hardy with error feedback (extension): acc += g, send top-k of acc, the
   sent entries leave acc. */
TEST(hardy_residue_extension)
{
    uint32_t sizes[] = {50, 333};
    float g[383], acc[383];
    uint32_t ref[383];
    ac_layout layout = {2, sizes};
    ac_compressor_config cfg;
    ac_compressor *comp;
    int step;
    cfg = ac_compressor_config_init();
    cfg.rate = 0.05;
    cfg.residue = 1;
    CHECK_OK(ac_compressor_init(&comp, &layout, &cfg));
    memset(acc, 0, sizeof acc);
    for (step = 0; step < 6; step++) {
        const ac_update *u;
        uint32_t l, i, base = 0, j = 0;
        fill_grad(g, 383, step % 2);
        for (i = 0; i < 383; i++) acc[i] += g[i];
        CHECK_OK(ac_compressor_select(comp, g, 0));
        u = ac_compressor_update(comp);
        CHECK(u->flags == AC_FLAG_RESIDUE);
        for (l = 0; l < 2; l++) {
            uint32_t k = hardy_k(0.05, sizes[l]);
            ref_topk(acc, base, sizes[l], k, ref);
            CHECK(u->count[l] == k);
            for (i = 0; i < k; i++, j++) {
                CHECK(u->index[j] == ref[i] && same_bits(u->value[j], acc[ref[i]]));
                acc[ref[i]] = 0.0f;
            }
            base += sizes[l];
        }
    }
    ac_compressor_free(comp);
}

/* ---- IBM mode against a naive transcription of Chen et al. ---- */

typedef struct ibm_out {
    uint32_t nnz, count[4], index[2000];
    float value[2000], scale[4];
} ibm_out;

static void ibm_naive(const uint32_t *sizes, uint32_t L, uint32_t LT, const float *dW, float *R,
                      ibm_out *o)
{
    static float G[2000], H[2000];
    static int sent[2000];
    uint32_t l, i, b, base = 0;
    o->nnz = 0;
    for (l = 0; l < L; l++) {
        uint32_t n = sizes[l], cnt = 0;
        double sum = 0;
        float scale;
        for (i = 0; i < n; i++) {
            G[base + i] = R[base + i] + dW[base + i];   /* G = R + dW */
            H[base + i] = G[base + i] + dW[base + i];   /* H = G + dW */
            sent[base + i] = 0;
        }
        for (b = 0; b < n; b += LT) {                    /* bins of L_T */
            uint32_t e = b + LT < n ? b + LT : n;
            float gmax = 0;
            for (i = b; i < e; i++)
                if (fabsf(G[base + i]) > gmax) gmax = fabsf(G[base + i]);
            if (gmax == 0) continue;                     /* skip empty bins */
            for (i = b; i < e; i++)
                if (fabsf(H[base + i]) >= gmax && G[base + i] != 0) sent[base + i] = 1;
        }
        for (i = 0; i < n; i++)
            if (sent[base + i]) cnt++, sum += fabsf(G[base + i]);
        scale = cnt ? (float)(sum / cnt) : 0.0f;         /* mean |G| of sent */
        o->count[l] = cnt;
        o->scale[l] = scale;
        for (i = 0; i < n; i++) {
            float v = 0;
            if (sent[base + i]) {
                v = G[base + i] < 0 ? -scale : scale;
                o->index[o->nnz] = base + i;
                o->value[o->nnz++] = v;
            }
            R[base + i] = G[base + i] - v;               /* R <- G - sent */
        }
        base += n;
    }
}

TEST(ibm_matches_naive_rule)
{
    uint32_t sizes[] = {100, 7, 1, 700};
    float dW[808], R[808];
    static ibm_out o;
    ac_layout layout = {4, sizes};
    ac_compressor_config cfg;
    ac_compressor *comp;
    int step, sent_total = 0;
    cfg = ac_compressor_config_init();
    cfg.mode = AC_MODE_IBM;
    cfg.bin_size = 50;
    CHECK_OK(ac_compressor_init(&comp, &layout, &cfg));
    memset(R, 0, sizeof R);
    for (step = 0; step < 12; step++) {
        const ac_update *u;
        uint32_t j, l;
        fill_grad(dW, 808, step % 3 == 0);
        if (step == 5) memset(dW, 0, 100 * sizeof(float)); /* bins with gmax 0 after sending */
        ibm_naive(sizes, 4, 50, dW, R, &o);
        CHECK_OK(ac_compressor_select(comp, dW, (uint64_t)step));
        u = ac_compressor_update(comp);
        CHECK(u->format == AC_FORMAT_SIGN_SCALE && u->mode == AC_MODE_IBM);
        CHECK(u->nnz == o.nnz);
        for (l = 0; l < 4; l++) {
            CHECK(u->count[l] == o.count[l]);
            CHECK(same_bits(u->scale[l], o.scale[l]));
        }
        for (j = 0; j < o.nnz && j < u->nnz; j++)
            CHECK(u->index[j] == o.index[j] && same_bits(u->value[j], o.value[j]));
        sent_total += (int)o.nnz;
    }
    /* a real compression happened, and not everything was sent */
    CHECK(sent_total > 0 && sent_total < 12 * 808 / 2);
    ac_compressor_free(comp);
}

TEST(ibm_zero_gradient_sends_nothing)
{
    uint32_t sizes[] = {130};
    float g[130];
    ac_compressor *comp = make_comp(sizes, 1, AC_MODE_IBM, AC_FORMAT_F32, 0.01);
    memset(g, 0, sizeof g);
    CHECK_OK(ac_compressor_select(comp, g, 0));
    CHECK(ac_compressor_update(comp)->nnz == 0);
    ac_compressor_free(comp);
}

/* Issue 12: an entry whose accumulated G is exactly 0 has nothing to send
   (sent, it would travel as +scale and leave -scale in the residue). */
TEST(ibm_zero_accumulated_sends_nothing)
{
    uint32_t sizes[] = {2};
    float g1[2] = {1.0f, 0.25f}, g2[2] = {0.1f, -0.25f};
    ac_compressor *comp = make_comp(sizes, 1, AC_MODE_IBM, AC_FORMAT_F32, 0.01);
    const ac_update *u;
    CHECK_OK(ac_compressor_select(comp, g1, 0)); /* G = {1, .25}: sends 0, R = {0, .25} */
    u = ac_compressor_update(comp);
    CHECK(u->nnz == 1 && u->index[0] == 0);
    CHECK_OK(ac_compressor_select(comp, g2, 1)); /* G = {.1, 0}, |H_1| = .25 >= gmax .1 */
    u = ac_compressor_update(comp);
    CHECK(u->nnz == 1 && u->index[0] == 0 && u->value[0] == 0.1f && u->scale[0] == 0.1f);
    ac_compressor_free(comp);
}

/* Issue 13: in a configuration, zero is a value: c = 0 sends max(1, 0) = 1
   entry per tensor, threshold 0 sends everything, alpha 0 learns nothing. */
TEST(zero_is_a_value)
{
    uint32_t sizes[] = {1000, 10}, l;
    ac_layout layout = {2, sizes};
    static float g[1010], w[1010];
    ac_compressor_config cc = ac_compressor_config_init();
    ac_server_config sc = ac_server_config_init();
    ac_compressor *comp;
    ac_server *s;
    static unsigned char buf[20000];
    size_t n;
    fill_grad(g, 1010, 0);
    cc.rate = 0.0;
    CHECK_OK(ac_compressor_init(&comp, &layout, &cc));
    CHECK_OK(ac_compressor_select(comp, g, 0));
    for (l = 0; l < 2; l++) CHECK(ac_compressor_update(comp)->count[l] == 1);
    ac_compressor_free(comp);
    cc.mode = AC_MODE_THRESHOLD, cc.threshold = 0.0f;
    CHECK_OK(ac_compressor_init(&comp, &layout, &cc));
    CHECK_OK(ac_compress(comp, g, 0, buf, sizeof buf, &n));
    CHECK(ac_compressor_update(comp)->nnz == 1010);
    sc.alpha = 0.0f;
    memset(w, 0, sizeof w);
    CHECK_OK(ac_server_init(&s, &layout, w, &sc));
    CHECK_OK(ac_server_apply_packet(s, buf, n));
    for (l = 0; l < 1010; l++) CHECK(w[l] == 0.0f);
    ac_server_free(s);
    ac_compressor_free(comp);
}

TEST(compress_rejects_non_finite)
{
    uint32_t sizes[] = {64};
    float g[64];
    ac_compressor *comp = make_comp(sizes, 1, AC_MODE_HARDY, AC_FORMAT_F32, 0.1);
    fill_grad(g, 64, 0);
    g[10] = NAN;
    CHECK(ac_compressor_select(comp, g, 0) == AC_ERR_VALUE);
    ac_compressor_free(comp);
    comp = make_comp(sizes, 1, AC_MODE_IBM, AC_FORMAT_F32, 0.01);
    g[10] = INFINITY;
    CHECK(ac_compressor_select(comp, g, 0) == AC_ERR_VALUE);
    CHECK(strstr(ac_last_error(), "tensor 0") != NULL);
    ac_compressor_free(comp);
}

TEST(config_validation)
{
    uint32_t sizes[] = {3, 0}, ok[] = {3};
    ac_layout bad = {2, sizes}, good = {1, ok};
    ac_compressor_config cfg;
    ac_server_config sc;
    ac_compressor *c;
    ac_server *s;
    float w[3];
    cfg = ac_compressor_config_init();
    CHECK(ac_compressor_init(&c, &bad, &cfg) == AC_ERR_ARG && c == NULL);
    cfg.rate = 1.5;
    CHECK(ac_compressor_init(&c, &good, &cfg) == AC_ERR_ARG);
    cfg.rate = 0;
    cfg.format = AC_FORMAT_SIGN_SCALE;
    CHECK(ac_compressor_init(&c, &good, &cfg) == AC_ERR_ARG);
    cfg.format = AC_FORMAT_F32;
    cfg.mode = (ac_mode)9;
    CHECK(ac_compressor_init(&c, &good, &cfg) == AC_ERR_ARG);
    cfg = ac_compressor_config_init();
    cfg.mode = AC_MODE_IBM, cfg.bin_size = 0;
    CHECK(ac_compressor_init(&c, &good, &cfg) == AC_ERR_ARG);
    sc = ac_server_config_init();
    sc.history_bytes = 3 * 16 - 1;   /* sigma needs 16 bytes per parameter */
    CHECK(ac_server_init(&s, &good, w, &sc) == AC_ERR_ARG && s == NULL);
    sc.history_bytes = 3 * 16;
    CHECK_OK(ac_server_init(&s, &good, w, &sc));
    ac_server_free(s);
    sc.alpha = NAN;
    CHECK(ac_server_init(&s, &good, w, &sc) == AC_ERR_ARG);
    /* a zeroed struct is not a configuration: mode and staleness 0 do not exist */
    memset(&cfg, 0, sizeof cfg);
    CHECK(ac_compressor_init(&c, &good, &cfg) == AC_ERR_ARG);
    CHECK(strstr(ac_last_error(), "ac_compressor_config_init") != NULL);
    memset(&sc, 0, sizeof sc);
    CHECK(ac_server_init(&s, &good, w, &sc) == AC_ERR_ARG);
    CHECK(strstr(ac_last_error(), "ac_server_config_init") != NULL);
    CHECK(ac_layout_check(&bad) == AC_ERR_ARG);
    CHECK(strcmp(ac_result_str(AC_ERR_STALE), "update too stale, pull again") == 0);
}

/* ---- float16 ---- */

static double half_value(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    if (e == 31) v = 65536.0; /* infinity stands for "beyond the last finite" */
    return (h & 0x8000) ? -v : v;
}

TEST(half_round_trip_exhaustive)
{
    uint32_t h;
    int bad = 0;
    for (h = 0; h < 65536; h++) {
        float f = ac_f16_to_f32((uint16_t)h);
        int is_nan = ((h >> 10) & 31) == 31 && (h & 1023);
        if (is_nan) bad += f == f;
        else bad += ac_f32_to_f16(f) != h || (((h >> 10) & 31) != 31 && f != (float)half_value((uint16_t)h));
    }
    CHECK(bad == 0);
}

/* Property of round-to-nearest-even: no neighbour is closer, and on a tie
   the result is even.  Checked on random floats over the whole half range. */
TEST(half_rounding_nearest_even)
{
    int i, bad = 0;
    CHECK(ac_f32_to_f16(1.0f + 1.0f / 2048) == 0x3C00);            /* tie -> even */
    CHECK(ac_f32_to_f16(1.0f + 3.0f / 2048) == 0x3C02);            /* tie -> even */
    CHECK(ac_f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(ac_f32_to_f16(65519.99f) == 0x7BFF);
    CHECK(ac_f32_to_f16(65520.0f) == 0x7C00);
    CHECK(ac_f32_to_f16(5.9604644775390625e-8f) == 0x0001);        /* 2^-24 */
    CHECK(ac_f32_to_f16(2.98023223876953125e-8f) == 0x0000);       /* 2^-25 tie */
    CHECK(ac_f32_to_f16(-3.0e-8f) == 0x8001);
    CHECK(ac_f32_to_f16(-0.0f) == 0x8000);
    for (i = 0; i < 200000; i++) {
        float x = ldexpf((float)(rnd() & 0xFFFFFF) / 16777216.0f, (int)rnd_below(44) - 27);
        uint16_t h = ac_f32_to_f16(x);
        double d = fabs(x - half_value(h)), lo, hi;
        if (h == 0x7C00) { bad += x < 65520.0f; continue; }
        lo = h ? fabs(x - half_value((uint16_t)(h - 1))) : 1e9;
        hi = fabs(x - half_value((uint16_t)(h + 1)));
        if (d > lo || d > hi) bad++;
        if ((d == lo || d == hi) && (h & 1)) bad++;
    }
    CHECK(bad == 0);
}

/* ---- packets ---- */

static uint64_t fnv_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    while (n--) h = (h ^ *p++) * 0x100000001B3ull;
    return h;
}

/* The byte layout written out by hand, as docs/adacomp.md tabulates it. */
TEST(packet_golden_bytes)
{
    uint32_t sizes[] = {4, 300};
    static uint32_t mem[2 * 2 + 304 * 2];
    unsigned char want[128], got[128], lay[12] = {2, 0, 0, 0, 4, 0, 0, 0, 44, 1, 0, 0};
    ac_layout layout = {2, sizes};
    ac_update u;
    uint64_t hash = fnv_bytes(lay, 12);
    size_t n = 0, written;
    int b;
    CHECK(ac_layout_hash(&layout) == hash);
    CHECK_OK(ac_update_init(&u, &layout, 304, mem, sizeof mem));
    u.t_pull = 0x0102030405060708ull;
    u.nnz = 4;
    u.count[0] = 2, u.count[1] = 2;
    u.index[0] = 0, u.index[1] = 3, u.index[2] = 4 + 5, u.index[3] = 4 + 200;
    u.value[0] = 1.0f, u.value[1] = -2.0f, u.value[2] = 0.5f, u.value[3] = 3.0f;
    memcpy(want, "ACMP", 4), n = 4;
    want[n++] = 1, want[n++] = AC_MODE_HARDY, want[n++] = AC_FORMAT_F32, want[n++] = 0;
    for (b = 0; b < 8; b++) want[n++] = (unsigned char)(hash >> (8 * b));
    for (b = 0; b < 8; b++) want[n++] = (unsigned char)(8 - b);
    want[n++] = 2, want[n++] = 0, want[n++] = 0, want[n++] = 0;
    want[n++] = 2, want[n++] = 2;                    /* counts */
    want[n++] = 1, want[n++] = 3;                    /* 0 - (-1), 3 - 0 */
    want[n++] = 6, want[n++] = 0xC3, want[n++] = 1;  /* 5 - (-1), 200 - 5 = 195 */
    memcpy(want + n, "\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x00\x3f\x00\x00\x40\x40", 16);
    n += 16;
    CHECK(ac_packet_size(&u) == n);
    CHECK_OK(ac_encode(&u, got, sizeof got, &written));
    CHECK(written == n && memcmp(got, want, n) == 0);

    /* IBM: scales of tensors with entries, then sign bits LSB first */
    u.mode = AC_MODE_IBM, u.format = AC_FORMAT_SIGN_SCALE, u.flags = AC_FLAG_RESIDUE;
    u.scale[0] = 2.0f, u.scale[1] = 0.25f;
    u.value[0] = 2.0f, u.value[1] = -2.0f, u.value[2] = -0.25f, u.value[3] = 0.25f;
    want[5] = AC_MODE_IBM, want[6] = AC_FORMAT_SIGN_SCALE, want[7] = AC_FLAG_RESIDUE;
    n = 28 + 2 + 5;
    memcpy(want + n, "\x00\x00\x00\x40\x00\x00\x80\x3e\x06", 9);
    n += 9;
    CHECK(ac_packet_size(&u) == n);
    CHECK_OK(ac_encode(&u, got, sizeof got, &written));
    CHECK(written == n && memcmp(got, want, n) == 0);
}

/* Encode, check the size, decode into a fresh update and compare. */
static void round_trip(ac_mode mode, ac_format fmt, int residue)
{
    uint32_t sizes[] = {1, 5, 129, 1000, 64, 17};
    ac_layout layout = {6, sizes};
    ac_compressor_config cfg;
    ac_compressor *comp;
    static float g[1216];
    static unsigned char buf[20000];
    static uint32_t mem[6 * 2 + 1216 * 2];
    ac_update d;
    int step;
    cfg = ac_compressor_config_init();
    cfg.mode = mode, cfg.format = fmt, cfg.rate = 0.05, cfg.threshold = 1.0f, cfg.residue = residue;
    CHECK_OK(ac_compressor_init(&comp, &layout, &cfg));
    CHECK_OK(ac_update_init(&d, &layout, 1216, mem, sizeof mem));
    for (step = 0; step < 4; step++) {
        const ac_update *u;
        size_t n = 0;
        uint32_t j, l;
        fill_grad(g, 1216, step == 1);
        CHECK_OK(ac_compress(comp, g, 1000 + (uint64_t)step, buf, sizeof buf, &n));
        u = ac_compressor_update(comp);
        CHECK(n == ac_packet_size(u) && n <= ac_compressor_packet_bound(comp));
        CHECK_OK(ac_decode(&d, buf, n));
        CHECK(d.mode == u->mode && d.format == u->format && d.flags == u->flags);
        CHECK(d.t_pull == 1000 + (uint64_t)step && d.nnz == u->nnz && d.nnz > 0);
        for (l = 0; l < 6; l++) CHECK(d.count[l] == u->count[l]);
        for (j = 0; j < d.nnz && j < u->nnz; j++) {
            CHECK(d.index[j] == u->index[j]);
            if (fmt == AC_FORMAT_F16)
                CHECK_NEAR(d.value[j], u->value[j], fabsf(u->value[j]) / 2048 + 3e-8);
            else
                CHECK(same_bits(d.value[j], u->value[j]));
        }
    }
    ac_compressor_free(comp);
}

TEST(round_trip_every_mode_and_format)
{
    int m;
    for (m = AC_MODE_HARDY; m <= AC_MODE_THRESHOLD; m++) {
        if (m == AC_MODE_IBM) {
            round_trip((ac_mode)m, (ac_format)0, 0);
            continue;
        }
        round_trip((ac_mode)m, AC_FORMAT_F32, 0);
        round_trip((ac_mode)m, AC_FORMAT_F16, 0);
        if (m != AC_MODE_DENSE) round_trip((ac_mode)m, AC_FORMAT_F32, 1);
    }
}

TEST(encode_rejects_invalid_updates)
{
    uint32_t sizes[] = {10, 10};
    static uint32_t mem[2 * 2 + 20 * 2];
    unsigned char buf[256];
    ac_layout layout = {2, sizes};
    ac_update u;
    size_t n = 99;
    CHECK_OK(ac_update_init(&u, &layout, 20, mem, sizeof mem));
    u.nnz = 3, u.count[0] = 2, u.count[1] = 1;
    u.index[0] = 2, u.index[1] = 5, u.index[2] = 12;
    u.value[0] = 1, u.value[1] = 2, u.value[2] = 3;
    CHECK_OK(ac_encode(&u, buf, sizeof buf, &n));
    CHECK(ac_encode(&u, buf, n - 1, &n) == AC_ERR_CAPACITY && n == 0);
    u.index[1] = 2;
    CHECK(ac_encode(&u, buf, sizeof buf, &n) == AC_ERR_ORDER);
    u.index[1] = 10; /* belongs to tensor 1, counted in tensor 0 */
    CHECK(ac_encode(&u, buf, sizeof buf, &n) == AC_ERR_INDEX);
    u.index[1] = 5, u.value[2] = NAN;
    CHECK(ac_encode(&u, buf, sizeof buf, &n) == AC_ERR_VALUE);
    u.value[2] = 1e5f, u.format = AC_FORMAT_F16;
    CHECK(ac_encode(&u, buf, sizeof buf, &n) == AC_ERR_VALUE);
    u.value[2] = 3, u.count[1] = 2;
    CHECK(ac_encode(&u, buf, sizeof buf, &n) == AC_ERR_ARG);
    u.count[1] = 1, u.mode = AC_MODE_IBM;
    CHECK(ac_encode(&u, buf, sizeof buf, &n) == AC_ERR_FORMAT);
    u.format = AC_FORMAT_SIGN_SCALE, u.scale[0] = 1, u.scale[1] = 3;
    CHECK(ac_encode(&u, buf, sizeof buf, &n) == AC_ERR_VALUE); /* value 2 is not +-1 */
    u.value[1] = -1;
    CHECK_OK(ac_encode(&u, buf, sizeof buf, &n));
}

/* ---- decoder: one malformed packet per rule ---- */

static const uint32_t mf_sizes[] = {10, 300, 1};
#define MF_TOTAL 311
static uint32_t mf_mem[3 * 2 + MF_TOTAL * 2];

/* Header written independently of the encoder. */
static size_t mf_header(unsigned char *p, int mode, int format, int flags, uint32_t tensors)
{
    ac_layout layout = {3, mf_sizes};
    uint64_t h = ac_layout_hash(&layout), t = 42;
    size_t n = 0;
    int b;
    memcpy(p, "ACMP", 4), n = 4;
    p[n++] = 1, p[n++] = (unsigned char)mode, p[n++] = (unsigned char)format, p[n++] = (unsigned char)flags;
    for (b = 0; b < 8; b++) p[n++] = (unsigned char)(h >> (8 * b));
    for (b = 0; b < 8; b++) p[n++] = (unsigned char)(t >> (8 * b));
    for (b = 0; b < 4; b++) p[n++] = (unsigned char)(tensors >> (8 * b));
    return n;
}

static size_t mf_f32(unsigned char *p, size_t n, float v)
{
    memcpy(p + n, &v, 4); /* the tests run on little-endian hosts */
    return n + 4;
}

static ac_result mf_decode(const unsigned char *p, size_t n, uint32_t capacity)
{
    ac_layout layout = {3, mf_sizes};
    ac_update u;
    ac_result r;
    if (ac_update_init(&u, &layout, capacity, mf_mem, sizeof mf_mem) != AC_OK) return AC_ERR_ARG;
    ac__errmsg[0] = '\0';
    r = ac_decode(&u, p, n);
    if (r != AC_OK && (u.nnz != 0 || ac_last_error()[0] == '\0')) return AC_ERR_ARG;
    return r;
}

/* A valid packet: tensor 0 indices {0, 9}, tensor 1 {299}, tensor 2 whole. */
static size_t mf_valid(unsigned char *p)
{
    size_t n = mf_header(p, AC_MODE_HARDY, AC_FORMAT_F32, 0, 3);
    p[n++] = 2, p[n++] = 1, p[n++] = 1;        /* counts */
    p[n++] = 1, p[n++] = 9;                    /* 0, 9 */
    p[n++] = 0xAC, p[n++] = 0x02;              /* 299 - (-1) = 300 */
    n = mf_f32(p, n, 1), n = mf_f32(p, n, 2), n = mf_f32(p, n, 3), n = mf_f32(p, n, 4);
    return n;
}

TEST(decode_rejects_malformed)
{
    unsigned char p[256];
    size_t n, v = mf_valid(p);
    CHECK_OK(mf_decode(p, v, MF_TOTAL));
    p[0] = 'B';
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_MAGIC);
    v = mf_valid(p), p[4] = 2;
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_VERSION);
    v = mf_valid(p), p[5] = 0;
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_FORMAT);
    v = mf_valid(p), p[5] = 6;
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_FORMAT);
    v = mf_valid(p), p[6] = AC_FORMAT_SIGN_SCALE;      /* only IBM uses it */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_FORMAT);
    v = mf_valid(p), p[7] = 2;                         /* unknown flag */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_FORMAT);
    v = mf_valid(p), p[8] ^= 0x40;
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_LAYOUT);
    v = mf_valid(p), p[24] = 4;                        /* tensor count */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_LAYOUT);
    v = mf_valid(p), p[28] = 11;                       /* count > size 10 */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_COUNT);
    v = mf_valid(p), p[30] = 2;                        /* 2 entries in a size-1 tensor */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_COUNT);
    v = mf_valid(p), p[5] = AC_MODE_DENSE;             /* dense but partial */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_COUNT);
    v = mf_valid(p), p[32] = 10;                       /* 0 + 10 = 10 >= 10 */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_INDEX);
    v = mf_valid(p), p[33] = 0xAD;                     /* 301 - 1 = 300 >= 300 */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_INDEX);
    v = mf_valid(p), p[32] = 0;                        /* zero delta */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_ORDER);
    v = mf_valid(p), p[31] = 0;                        /* first delta 0 = index -1 */
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_ORDER);
    v = mf_valid(p);
    CHECK(mf_decode(p, v, 3) == AC_ERR_CAPACITY);      /* 4 entries, room for 3 */
    v = mf_valid(p), p[v] = 0;
    CHECK(mf_decode(p, v + 1, MF_TOTAL) == AC_ERR_TRAILING);
    v = mf_valid(p), mf_f32(p, 35, NAN);
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_VALUE);
    v = mf_valid(p), mf_f32(p, 47, -INFINITY);
    CHECK(mf_decode(p, v, MF_TOTAL) == AC_ERR_VALUE);

    /* varints: not minimal, longer than 5 bytes, over 32 bits */
    n = mf_header(p, AC_MODE_HARDY, AC_FORMAT_F32, 0, 3);
    p[n++] = 0x81, p[n++] = 0x00;
    memset(p + n, 0, 64);
    CHECK(mf_decode(p, n + 64, MF_TOTAL) == AC_ERR_VARINT);
    n = mf_header(p, AC_MODE_HARDY, AC_FORMAT_F32, 0, 3);
    memcpy(p + n, "\x80\x80\x80\x80\x80\x01", 6), n += 6;
    CHECK(mf_decode(p, n + 64, MF_TOTAL) == AC_ERR_VARINT);
    n = mf_header(p, AC_MODE_HARDY, AC_FORMAT_F32, 0, 3);
    memcpy(p + n, "\xff\xff\xff\xff\x1f", 5), n += 5;
    CHECK(mf_decode(p, n + 64, MF_TOTAL) == AC_ERR_VARINT);
    n = mf_header(p, AC_MODE_HARDY, AC_FORMAT_F32, 0, 3);
    p[n++] = 1, p[n++] = 0, p[n++] = 0, p[n++] = 0x85, p[n++] = 0x80, p[n++] = 0x00;
    CHECK(mf_decode(p, n + 4, MF_TOTAL) == AC_ERR_VARINT); /* index delta 5 as 3 bytes */

    /* float16 NaN and Inf */
    n = mf_header(p, AC_MODE_THRESHOLD, AC_FORMAT_F16, 0, 3);
    p[n++] = 1, p[n++] = 0, p[n++] = 0, p[n++] = 4;
    p[n++] = 0x00, p[n++] = 0x7E;
    CHECK(mf_decode(p, n, MF_TOTAL) == AC_ERR_VALUE);
    p[n - 1] = 0xFC;
    CHECK(mf_decode(p, n, MF_TOTAL) == AC_ERR_VALUE);
    p[n - 1] = 0x3C; /* 1.0 */
    CHECK_OK(mf_decode(p, n, MF_TOTAL));
}

TEST(decode_rejects_bad_ibm_fields)
{
    unsigned char p[256];
    size_t n = mf_header(p, AC_MODE_IBM, AC_FORMAT_SIGN_SCALE, AC_FLAG_RESIDUE, 3), s;
    p[n++] = 1, p[n++] = 0, p[n++] = 1;        /* one entry in tensors 0 and 2 */
    p[n++] = 4;                                /* tensor 0, index 3 */
    s = n;
    n = mf_f32(p, n, 0.5f), n = mf_f32(p, n, 0.25f);
    p[n++] = 0x02;                             /* second entry negative */
    CHECK_OK(mf_decode(p, n, MF_TOTAL));
    p[n - 1] = 0x06;                           /* an unused sign bit set */
    CHECK(mf_decode(p, n, MF_TOTAL) == AC_ERR_FORMAT);
    p[n - 1] = 0x02;
    mf_f32(p, s, -0.5f);
    CHECK(mf_decode(p, n, MF_TOTAL) == AC_ERR_VALUE);
    mf_f32(p, s, NAN);
    CHECK(mf_decode(p, n, MF_TOTAL) == AC_ERR_VALUE);
    mf_f32(p, s, 0.5f);
    p[6] = AC_FORMAT_F32;                      /* IBM needs sign+scale */
    CHECK(mf_decode(p, n, MF_TOTAL) == AC_ERR_FORMAT);
}

/* Every proper prefix of a valid packet is a truncated packet. */
TEST(decode_truncated_at_every_byte)
{
    uint32_t sizes[] = {1, 5, 129, 1000, 64, 17};
    ac_layout layout = {6, sizes};
    static float g[1216];
    static unsigned char buf[20000];
    static uint32_t mem[6 * 2 + 1216 * 2];
    int m, bad = 0, tried = 0;
    for (m = AC_MODE_HARDY; m <= AC_MODE_THRESHOLD; m++) {
        ac_compressor_config cfg;
        ac_compressor *comp;
        ac_update d;
        size_t n, cut;
        cfg = ac_compressor_config_init();
        cfg.mode = (ac_mode)m, cfg.rate = 0.02, cfg.threshold = 2.0f;
        cfg.format = m == AC_MODE_TOPK ? AC_FORMAT_F16 : AC_FORMAT_F32;
        CHECK_OK(ac_compressor_init(&comp, &layout, &cfg));
        fill_grad(g, 1216, 0);
        CHECK_OK(ac_compress(comp, g, 5, buf, sizeof buf, &n));
        CHECK_OK(ac_update_init(&d, &layout, 1216, mem, sizeof mem));
        CHECK_OK(ac_decode(&d, buf, n));
        for (cut = 0; cut < n; cut++, tried++)
            if (ac_decode(&d, buf, cut) != AC_ERR_TRUNCATED || d.nnz != 0) bad++;
        ac_compressor_free(comp);
    }
    CHECK(bad == 0 && tried > 5000);
}

/* Forged counts cost nothing: a 40-byte packet claiming a million entries
   is refused before any per-entry work, and a too-small update says so. */
TEST(decode_oversized_counts)
{
    uint32_t sizes[] = {1000000, 3};
    ac_layout layout = {2, sizes};
    static uint32_t mem[2 * 2 + 16 * 2];
    unsigned char p[64];
    ac_update u;
    size_t n = 0;
    int b;
    uint64_t h = ac_layout_hash(&layout);
    CHECK_OK(ac_update_init(&u, &layout, 16, mem, sizeof mem));
    memcpy(p, "ACMP\x01\x01\x01\x00", 8), n = 8;
    for (b = 0; b < 8; b++) p[n++] = (unsigned char)(h >> (8 * b));
    memset(p + n, 0, 8), n += 8;
    p[n++] = 2, p[n++] = 0, p[n++] = 0, p[n++] = 0;
    p[n++] = 0xC0, p[n++] = 0x84, p[n++] = 0x3D;      /* 1000000 */
    p[n++] = 0;
    CHECK(ac_decode(&u, p, n) == AC_ERR_CAPACITY);
    {
        static uint32_t big[2 * 2 + 1000003 * 2];
        CHECK_OK(ac_update_init(&u, &layout, 1000003, big, sizeof big));
        CHECK(ac_decode(&u, p, n) == AC_ERR_TRUNCATED);
    }
    p[n - 4] = 0xC1;                                   /* 1000001 > size */
    CHECK(ac_decode(&u, p, n) == AC_ERR_COUNT);
}

/* ---- server ---- */

#define SV_TOTAL 90
static const uint32_t sv_sizes[] = {50, 7, 33};

typedef struct sv_history {
    int n;
    uint8_t touched[1200][SV_TOTAL]; /* by label - 1 */
} sv_history;

static uint32_t random_set(uint32_t *idx, uint32_t max_n)
{
    uint8_t on[SV_TOTAL];
    uint32_t i, n = 0, want = 1 + rnd_below(max_n);
    memset(on, 0, sizeof on);
    for (i = 0; i < want; i++) on[rnd_below(SV_TOTAL)] = 1;
    for (i = 0; i < SV_TOTAL; i++)
        if (on[i]) idx[n++] = i;
    return n;
}

/* Fills u from a sorted global index set, counting per tensor. */
static void set_update(ac_update *u, const uint32_t *idx, uint32_t n, uint64_t t_pull)
{
    uint32_t j, l;
    memset(u->count, 0, 3 * sizeof(uint32_t));
    for (j = 0; j < n; j++) {
        u->index[j] = idx[j];
        u->value[j] = (float)(int)(rnd_below(200) - 100) / 16.0f;
        l = idx[j] < 50 ? 0 : idx[j] < 57 ? 1 : 2;
        u->count[l]++;
    }
    u->nnz = n;
    u->t_pull = t_pull;
}

/* u, for pushes to the server's layout, over one buffer the server tests
   share (they run one at a time; ac_update_init copies the layout) */
static void sv_update_init(ac_update *u)
{
    static uint32_t mem[3 * 2 + SV_TOTAL * 2];
    ac_layout layout = {3, sv_sizes};
    CHECK_OK(ac_update_init(u, &layout, SV_TOTAL, mem, sizeof mem));
}

/* Random pushes with staleness up to max_back, applied through packets,
   against a brute-force count over the history kept here.  Returns the
   number of pushes staler than 64 (the old fixed window). */
static int sigma_against_brute_force(const ac_server_config *sc, uint32_t max_back, int steps)
{
    static sv_history hist;
    static unsigned char pkt[2048];
    ac_layout layout = {3, sv_sizes};
    ac_server *s;
    ac_update u;
    float w[SV_TOTAL];
    uint32_t idx[SV_TOTAL], sigma[SV_TOTAL];
    int step, bad_sigma = 0, bad_w = 0, old = 0;
    memset(w, 0, sizeof w);
    CHECK_OK(ac_server_init(&s, &layout, w, sc));
    sv_update_init(&u);
    hist.n = 0;
    for (step = 0; step < steps && step < 1200; step++) {
        uint64_t t = ac_server_clock(s), back = rnd_below(max_back + 1), lab;
        uint32_t n = random_set(idx, step % 7 == 0 ? SV_TOTAL : 12), j;
        float before[SV_TOTAL];
        size_t len;
        if (step % 50 == 0) back = max_back; /* reach the largest staleness early */
        if (back > t) back = t;
        set_update(&u, idx, n, t - back);
        old += back > 64;
        CHECK_OK(ac_server_sigma(s, &u, sigma));
        memcpy(before, w, sizeof w);
        CHECK_OK(ac_encode(&u, pkt, sizeof pkt, &len));
        CHECK_OK(ac_server_apply_packet(s, pkt, len));
        for (j = 0; j < n; j++) {
            uint32_t i = idx[j], brute = 0;
            float expect;
            for (lab = t - back + 1; lab <= t; lab++) brute += hist.touched[lab - 1][i];
            bad_sigma += sigma[j] != brute;
            expect = before[i] - sc->alpha * u.value[j] / (float)(brute > 1 ? brute : 1);
            bad_w += w[i] != expect;
        }
        memset(hist.touched[hist.n], 0, SV_TOTAL);
        for (j = 0; j < n; j++) hist.touched[hist.n][idx[j]] = 1;
        hist.n++;
        CHECK(ac_server_clock(s) == t + 1);
    }
    CHECK(bad_sigma == 0 && bad_w == 0);
    CHECK(ac_server_stats(s).rejected == 0);
    ac_server_free(s);
    return old;
}

TEST(sigma_matches_brute_force)
{
    ac_server_config sc = ac_server_config_init();
    sc.alpha = 0.5f;
    CHECK(sigma_against_brute_force(&sc, 16, 1100) == 0);
    sc.max_staleness = 64;
    CHECK(sigma_against_brute_force(&sc, 64, 1100) == 0);
}

/* Issue 10: the default server counts sigma exactly at every staleness that
   occurs (W = 100 gives tau ~ 100-300), growing its history, and refuses
   nothing; before, tau > 64 was refused or counted over 64 updates only. */
TEST(sigma_exact_at_any_staleness)
{
    ac_server_config sc = ac_server_config_init();
    sc.alpha = 0.5f;
    CHECK(sigma_against_brute_force(&sc, 300, 1150) > 200);
    CHECK(sigma_against_brute_force(&sc, 1000, 1150) > 200);
}

/* The history grows to twice the largest tau, by doubling, and stays
   within the cap; a push the cap cannot count is an error that says so,
   and it changes nothing. */
TEST(history_grows_within_its_cap)
{
    ac_layout layout = {3, sv_sizes};
    ac_server_config sc = ac_server_config_init();
    ac_server *s;
    ac_update u;
    float w[SV_TOTAL], before[SV_TOTAL];
    uint32_t one[] = {5}, all[SV_TOTAL], i, sigma;
    long allocs;
    for (i = 0; i < SV_TOTAL; i++) all[i] = i;
    sc.history_bytes = SV_TOTAL * 8 * (1 + 4);   /* 4 words: tau <= 256 */
    memset(w, 0, sizeof w);
    CHECK_OK(ac_server_init(&s, &layout, w, &sc));
    sv_update_init(&u);
    CHECK(ac_server_stats(s).history_bytes == SV_TOTAL * 16);
    allocs = t_allocs;
    for (i = 0; i < 300; i++) {      /* tau = i: every push touches everything */
        set_update(&u, all, SV_TOTAL, 0);
        if (i <= 256) CHECK_OK(ac_server_apply(s, &u));
        else break;
    }
    /* 1 -> 2 -> 4 words: two reallocations, then the cap */
    CHECK(t_allocs - allocs == 2);
    CHECK(ac_server_stats(s).history_bytes == SV_TOTAL * 8 * 5);
    CHECK(ac_server_stats(s).tau_max == 256);
    set_update(&u, one, 1, 0), u.value[0] = 1.0f;   /* tau = 257 */
    memcpy(before, w, sizeof w);
    CHECK(ac_server_apply(s, &u) == AC_ERR_HISTORY);
    CHECK(strstr(ac_last_error(), "history_bytes") != NULL);
    CHECK(memcmp(before, w, sizeof w) == 0 && ac_server_clock(s) == 257);
    set_update(&u, one, 1, 1);                      /* tau = 256: exact */
    CHECK_OK(ac_server_sigma(s, &u, &sigma));
    CHECK(sigma == 256);
    ac_server_free(s);

    /* reserve: sized up front, applies never allocate */
    sc = ac_server_config_init();
    CHECK_OK(ac_server_init(&s, &layout, w, &sc));
    CHECK_OK(ac_server_reserve(s, 300));
    allocs = t_allocs;
    for (i = 0; i < 320; i++) {
        set_update(&u, all, SV_TOTAL, i > 300 ? i - 300 : 0);
        CHECK_OK(ac_server_apply(s, &u));
    }
    CHECK(t_allocs == allocs);
    sc.history_bytes = SV_TOTAL * 16;
    ac_server_free(s);
    CHECK_OK(ac_server_init(&s, &layout, w, &sc));
    CHECK(ac_server_reserve(s, 65) == AC_ERR_HISTORY);
    ac_server_free(s);
}

/* A push whose tau more than doubles every tau before may need updates the
   history has already forgotten: refused, never undercounted. */
TEST(history_never_undercounts)
{
    ac_layout layout = {3, sv_sizes};
    ac_server_config sc = ac_server_config_init();
    ac_server *s;
    ac_update u;
    float w[SV_TOTAL];
    uint32_t one[] = {5}, sigma;
    uint64_t i;
    memset(w, 0, sizeof w);
    CHECK_OK(ac_server_init(&s, &layout, w, &sc));
    sv_update_init(&u);
    for (i = 0; i < 200; i++) {     /* fresh pushes of index 5: tau = 0 */
        set_update(&u, one, 1, i);
        CHECK_OK(ac_server_apply(s, &u));
    }
    set_update(&u, one, 1, 0);      /* tau = 200: label 1..136 were forgotten */
    CHECK(ac_server_sigma(s, &u, &sigma) == AC_ERR_HISTORY);
    set_update(&u, one, 1, 190);    /* still counted exactly */
    CHECK_OK(ac_server_sigma(s, &u, &sigma));
    CHECK(sigma == 10);
    ac_server_free(s);
}

/* Applies `steps` updates, each touching every parameter with value 1. */
static void touch_all(ac_server *s, ac_update *u, int steps)
{
    uint32_t idx[SV_TOTAL], i;
    for (i = 0; i < SV_TOTAL; i++) idx[i] = i;
    while (steps-- > 0) {
        set_update(u, idx, SV_TOTAL, ac_server_clock(s));
        CHECK_OK(ac_server_apply(s, u));
    }
}

static ac_server *make_server(float *w, ac_staleness st, uint64_t max_staleness)
{
    ac_layout layout = {3, sv_sizes};
    ac_server_config sc;
    ac_server *s = NULL;
    sc = ac_server_config_init();
    sc.alpha = 0.25f, sc.staleness = st, sc.max_staleness = max_staleness;
    memset(w, 0, SV_TOTAL * sizeof(float));
    CHECK_OK(ac_server_init(&s, &layout, w, &sc));
    return s;
}

/* A server (alpha 0.25) in staleness mode st, bounded by max_staleness (0:
   none), over w zeroed, after n updates that touched every entry; u is
   the update pushed through it. */
typedef struct sv_rig {
    ac_update u;
    float w[SV_TOTAL];
    ac_server *s;
} sv_rig;

static ac_server *sv_start(sv_rig *r, ac_staleness st, uint64_t max_staleness, int n)
{
    sv_update_init(&r->u);
    r->s = make_server(r->w, st, max_staleness);
    touch_all(r->s, &r->u, n);
    return r->s;
}

/* pushes value at index i, pulled at t_pull, with w[i] = before; returns
   w[i] after the server applied it */
static float sv_push(sv_rig *r, uint32_t i, uint64_t t_pull, float value, float before)
{
    set_update(&r->u, &i, 1, t_pull), r->u.value[0] = value, r->w[i] = before;
    CHECK_OK(ac_server_apply(r->s, &r->u));
    return r->w[i];
}

TEST(modulation_modes)
{
    sv_rig r;
    uint32_t one[] = {3};

    /* sigma: tau = 0 gives scale 1, however often 3 was touched before */
    sv_start(&r, AC_STALENESS_SIGMA, 0, 10);
    CHECK(sv_push(&r, 3, 10, 2.0f, 1.0f) == 1.0f - 0.25f * 2.0f);
    /* pulled 4 updates ago: those 4 (labels 8..11) all touched 3 -> / 4 */
    CHECK(sv_push(&r, 3, 7, 2.0f, 1.0f) == 1.0f - 0.25f * 2.0f / 4.0f);
    ac_server_free(r.s);

    /* staleness-aware: alpha / tau, with max(1, tau) */
    sv_start(&r, AC_STALENESS_TAU, 0, 6);
    CHECK(sv_push(&r, 3, 3, 1.0f, 0.0f) == -(0.25f / 3.0f));
    CHECK(sv_push(&r, 3, 7, 1.0f, 0.0f) == -0.25f);
    ac_server_free(r.s);

    /* constant: alpha whatever the staleness */
    sv_start(&r, AC_STALENESS_CONSTANT, 0, 20);
    CHECK(sv_push(&r, 3, 1, 1.0f, 0.0f) == -0.25f);
    CHECK(ac_server_sigma(r.s, &r.u, one) == AC_ERR_ARG); /* no history kept */
    ac_server_free(r.s);
}

TEST(too_old_and_future_updates)
{
    sv_rig r;
    uint32_t one[] = {60}, sigma[1];
    ac_server *s = sv_start(&r, AC_STALENESS_SIGMA, 4, 10);
    ac_stats st;

    set_update(&r.u, one, 1, 5), r.w[60] = 7.0f; /* tau = 5 > max_staleness = 4 */
    CHECK(ac_server_apply(s, &r.u) == AC_ERR_STALE);
    CHECK(r.w[60] == 7.0f && ac_server_clock(s) == 10);
    set_update(&r.u, one, 1, 11);
    CHECK(ac_server_apply(s, &r.u) == AC_ERR_CLOCK);
    set_update(&r.u, one, 1, 6), r.u.value[0] = 1.0f; /* tau = 4 */
    CHECK_OK(ac_server_sigma(s, &r.u, sigma));
    CHECK(sigma[0] == 4);
    CHECK_OK(ac_server_apply(s, &r.u));
    CHECK(r.w[60] == 7.0f - 0.25f / 4.0f);
    st = ac_server_stats(s);
    CHECK(st.rejected == 2 && st.packets == 11);
    ac_server_free(s);

    /* the same bound holds in every modulation mode */
    s = sv_start(&r, AC_STALENESS_CONSTANT, 4, 10);
    set_update(&r.u, one, 1, 5);
    CHECK(ac_server_apply(s, &r.u) == AC_ERR_STALE);
    ac_server_free(s);
}

/* Issue 11: plain ASGD (constant alpha) and staleness-aware ASGD apply every
   push by default, however stale: no bound unless max_staleness sets one. */
TEST(plain_asgd_applies_every_push)
{
    sv_rig r;
    sv_start(&r, AC_STALENESS_CONSTANT, 0, 500);
    CHECK(sv_push(&r, 60, 0, 1.0f, 0.0f) == -0.25f);  /* tau = 500 */
    ac_server_free(r.s);
    sv_start(&r, AC_STALENESS_TAU, 0, 500);
    CHECK(sv_push(&r, 60, 0, 1.0f, 0.0f) == -(0.25f / 500.0f));
    CHECK(ac_server_stats(r.s).rejected == 0);
    ac_server_free(r.s);
}

TEST(server_refuses_bad_updates_and_counts_bytes)
{
    static uint32_t mem[3 * 2 + SV_TOTAL * 2];
    static unsigned char pkt[1024];
    uint32_t other[] = {50, 7, 34}, idx[] = {1, 2, 80};
    ac_layout layout = {3, sv_sizes}, wrong = {3, other};
    ac_update u;
    float w[SV_TOTAL], before[SV_TOTAL];
    ac_server *s = make_server(w, AC_STALENESS_SIGMA, 0);
    ac_stats st;
    size_t len;
    uint64_t t_pull;
    CHECK_OK(ac_update_init(&u, &layout, SV_TOTAL, mem, sizeof mem));
    set_update(&u, idx, 3, 0);
    u.index[1] = 1; /* not increasing */
    CHECK(ac_server_apply(s, &u) == AC_ERR_ORDER);
    u.index[1] = 2, u.index[2] = SV_TOTAL;
    CHECK(ac_server_apply(s, &u) == AC_ERR_INDEX);
    u.index[2] = 80;
    CHECK_OK(ac_encode(&u, pkt, sizeof pkt, &len));
    memcpy(before, w, sizeof w);
    memset(pkt + len - 4, 0xFF, 4); /* the last value becomes a NaN */
    CHECK(ac_server_apply_packet(s, pkt, len) == AC_ERR_VALUE);
    CHECK(memcmp(before, w, sizeof w) == 0 && ac_server_clock(s) == 0);
    CHECK_OK(ac_update_init(&u, &wrong, SV_TOTAL, mem, sizeof mem));
    set_update(&u, idx, 3, 0);
    CHECK_OK(ac_encode(&u, pkt, sizeof pkt, &len));
    CHECK(ac_server_apply_packet(s, pkt, len) == AC_ERR_LAYOUT);
    CHECK(ac_server_apply(s, &u) == AC_ERR_LAYOUT);
    CHECK_OK(ac_update_init(&u, &layout, SV_TOTAL, mem, sizeof mem));
    set_update(&u, idx, 3, 0);
    CHECK_OK(ac_encode(&u, pkt, sizeof pkt, &len));
    CHECK_OK(ac_server_apply_packet(s, pkt, len));
    ac_server_pull(s, before, &t_pull);
    CHECK(t_pull == 1 && memcmp(before, w, sizeof w) == 0);
    st = ac_server_stats(s);
    CHECK(st.packets == 1 && st.rejected == 5 && st.entries == 3 && st.pulls == 1);
    CHECK(st.bytes_in == 3 * len && st.bytes_out == SV_TOTAL * 4);
    CHECK(st.dense_bytes == SV_TOTAL * 4);
    ac_server_free(s);
}

/* Issue 2: an update handed to the server in memory (not through the
   decoder) is checked for NaN/Inf before anything changes. */
TEST(apply_refuses_non_finite_values)
{
    ac_update u;
    uint32_t idx[] = {1, 2, 80}, st, sigma[3];
    float w[SV_TOTAL], before[SV_TOTAL];
    for (st = AC_STALENESS_SIGMA; st <= AC_STALENESS_CONSTANT; st++) {
        ac_server *s = make_server(w, (ac_staleness)st, 0);
        sv_update_init(&u);
        set_update(&u, idx, 3, 0);
        u.value[2] = st == AC_STALENESS_TAU ? -INFINITY : NAN;
        memcpy(before, w, sizeof w);
        CHECK(ac_server_apply(s, &u) == AC_ERR_VALUE);
        CHECK(strstr(ac_last_error(), "value 2") != NULL);
        if (st == AC_STALENESS_SIGMA) CHECK(ac_server_sigma(s, &u, sigma) == AC_ERR_VALUE);
        CHECK(memcmp(before, w, sizeof w) == 0 && ac_server_clock(s) == 0);
        CHECK(ac_server_stats(s).rejected == 1);
        u.value[2] = 1.0f;
        CHECK_OK(ac_server_apply(s, &u));
        ac_server_free(s);
    }
}

/* ---- SIMD kernels ---- */

/* The AVX-512 kernels (IBM selection, index encoding, dense apply, value
   checks) against the plain ones, bit for bit: the same packets from
   compressors that differ only in `simd`, then the same weights from
   servers that differ only in `simd`, on tensors of awkward sizes (tails of
   every length), with ties, zeros and -0 in the gradients.  Without AVX-512 both sides run the
   plain kernels and the test checks nothing more than determinism. */
#define SK_TOTAL (1u + 15u + 17u + 1000003u)
static float sk_grad[SK_TOTAL], sk_w[2][SK_TOTAL], sk_keep[SK_TOTAL];
static unsigned char *sk_packet[2];

static void sk_compressors(ac_mode mode, uint32_t bin, size_t *len, const ac_layout *layout,
                           int round, ac_compressor **c)
{
    uint32_t i;
    int k;
    for (i = 0; i < SK_TOTAL; i++) {
        uint32_t r = rnd_below(16);
        sk_grad[i] = r == 0 ? 0.0f : r == 1 ? -0.0f : r < 5 ? 0.5f * (float)(r - 3) : rnd_normal();
    }
    if (round == 0) {
        for (k = 0; k < 2; k++) {
            ac_compressor_config cc = ac_compressor_config_init();
            cc.mode = mode, cc.bin_size = bin, cc.simd = k;
            CHECK_OK(ac_compressor_init(&c[k], layout, &cc));
        }
    }
    for (k = 0; k < 2; k++)
        CHECK_OK(ac_compress(c[k], sk_grad, (uint64_t)round, sk_packet[k],
                             ac_compressor_packet_bound(c[k]), &len[k]));
}

TEST(simd_kernels_match_plain)
{
    uint32_t sizes[] = {1, 15, 17, 1000003}, bins[] = {64, 7, 20}, b;
    ac_layout layout = {4, sizes};
    ac_mode modes[] = {AC_MODE_IBM, AC_MODE_DENSE, AC_MODE_HARDY}; /* Hardy: index deltas
                                                                     of 1 to 3 bytes */
    ac_staleness st;
    size_t len[2], m, cap = 9 * (size_t)SK_TOTAL + 1024;
    int k, round;
    sk_packet[0] = (unsigned char *)malloc(cap), sk_packet[1] = (unsigned char *)malloc(cap);
    for (m = 0; m < 3; m++) {
        for (b = 0; b < (modes[m] == AC_MODE_IBM ? 3u : 1u); b++) {
            ac_compressor *c[2];
            for (st = AC_STALENESS_SIGMA; st <= AC_STALENESS_CONSTANT; st++) {
                ac_server *s[2];
                for (k = 0; k < 2; k++) {
                    ac_server_config sc = ac_server_config_init();
                    sc.staleness = st, sc.alpha = 0.3f, sc.simd = k;
                    memset(sk_w[k], 0, sizeof sk_w[k]);
                    CHECK_OK(ac_server_init(&s[k], &layout, sk_w[k], &sc));
                }
                /* the IBM residue carries from one round to the next, and is
                   zeroed by a reset before the third */
                for (round = 0; round < 4; round++) {
                    if (round == 2) ac_compressor_reset(c[0]), ac_compressor_reset(c[1]);
                    sk_compressors(modes[m], bins[b], len, &layout, round, c);
                    CHECK(len[0] == len[1] && memcmp(sk_packet[0], sk_packet[1], len[0]) == 0);
                    for (k = 0; k < 2; k++) CHECK_OK(ac_server_apply_packet(s[k], sk_packet[0], len[0]));
                    CHECK(memcmp(sk_w[0], sk_w[1], sizeof sk_w[0]) == 0);
                }
                /* a NaN is refused by both, w untouched, wherever it lies: the
                   first value, a tensor's first values (the AVX-512 check runs
                   backwards, its partial vector is a tensor's head), the last */
                if (modes[m] == AC_MODE_DENSE) {
                    uint32_t at[] = {0, 33, 35, SK_TOTAL / 2, SK_TOTAL - 1}, a;
                    unsigned char *values = sk_packet[0] + len[0] - 4 * (size_t)SK_TOTAL, keep[4];
                    char want[64];
                    memcpy(sk_keep, sk_w[0], sizeof sk_keep);
                    for (a = 0; a < sizeof at / sizeof at[0]; a++) {
                        memcpy(keep, values + 4 * (size_t)at[a], 4);
                        memset(values + 4 * (size_t)at[a], 0xFF, 4);
                        snprintf(want, sizeof want, "value %u is NaN", (unsigned)at[a]);
                        for (k = 0; k < 2; k++) {
                            CHECK(ac_server_apply_packet(s[k], sk_packet[0], len[0]) ==
                                  AC_ERR_VALUE);
                            CHECK(strstr(ac_last_error(), want) != NULL);
                            CHECK(memcmp(sk_w[k], sk_keep, sizeof sk_keep) == 0);
                        }
                        memcpy(values + 4 * (size_t)at[a], keep, 4);
                    }
                }
                for (k = 0; k < 2; k++) ac_server_free(s[k]), ac_compressor_free(c[k]);
            }
        }
    }
    free(sk_packet[0]), free(sk_packet[1]);
}

/* The AVX-512 sigma kernel (whole tensors, one-word history) against the
   plain loop: pushes of whole tensors with staleness 0 to 30, each tensor
   on its own schedule so that the shift d = label - last runs from 1 to
   beyond 64 (a tensor pushed every 70 updates) and touch bits leave the
   mask (forgot); tails of 1 to 8 lanes.  The weights and the whole saved
   state (clock, forgot, touch history) must be the same bits. */
TEST(simd_sigma_matches_plain)
{
    uint32_t sizes[] = {1, 7, 8, 9, 33, 100}, period[] = {1, 2, 3, 70, 1, 5}, l, j;
    ac_layout layout = {6, sizes};
    static float w[2][158];
    static unsigned char pkt[2048], state[2][16384];
    static uint32_t mem[6 * 2 + 158 * 2];
    size_t len, st_len[2];
    ac_server *s[2];
    ac_update u;
    int k, step;
    CHECK_OK(ac_update_init(&u, &layout, 158, mem, sizeof mem));
    for (k = 0; k < 2; k++) {
        ac_server_config sc = ac_server_config_init();
        sc.alpha = 0.3f, sc.simd = k, sc.max_staleness = 30;
        memset(w[k], 0, sizeof w[k]);
        CHECK_OK(ac_server_init(&s[k], &layout, w[k], &sc));
    }
    for (step = 0; step < 300; step++) {
        uint64_t t = ac_server_clock(s[0]), back = rnd_below(31);
        uint32_t base = 0;
        u.nnz = 0;
        for (l = 0; l < 6; l++) {
            u.count[l] = step % period[l] == 0 ? sizes[l] : 0;
            for (j = 0; j < u.count[l]; j++, u.nnz++)
                u.index[u.nnz] = base + j, u.value[u.nnz] = rnd_normal();
            base += sizes[l];
        }
        u.t_pull = back > t ? 0 : t - back;
        CHECK_OK(ac_encode(&u, pkt, sizeof pkt, &len));
        for (k = 0; k < 2; k++) CHECK_OK(ac_server_apply_packet(s[k], pkt, len));
    }
    for (k = 0; k < 2; k++) CHECK_OK(ac_server_save(s[k], state[k], sizeof state[k], &st_len[k]));
    CHECK(memcmp(w[0], w[1], sizeof w[0]) == 0);
    CHECK(st_len[0] == st_len[1] && memcmp(state[0], state[1], st_len[0]) == 0);
    CHECK(ac_server_stats(s[0]).history_bytes == 158 * 16); /* one word throughout */
    for (k = 0; k < 2; k++) ac_server_free(s[k]);
}

/* ---- non-finite values on every path ---- */

/* Tensors of 1, 15, 17, 1000 and 37: partial vectors at every tensor's
   head and tail.  Packet kinds: dense float32 and float16, a mixed float32
   one (tensors 0, 2, 4 whole, 1 and 3 sparse), IBM sign x scale. */
#define NF_L 5u
#define NF_TOTAL 1070u
static const uint32_t nf_sizes[NF_L] = {1, 15, 17, 1000, 37};
static uint32_t nf_mem[NF_L * 2 + NF_TOTAL * 2];
static float nf_w0[NF_TOTAL];

static void nf_update(ac_update *u, int kind)
{
    ac_layout layout = {NF_L, nf_sizes};
    uint32_t l, i, base = 0;
    CHECK_OK(ac_update_init(u, &layout, NF_TOTAL, nf_mem, sizeof nf_mem));
    u->mode = kind < 2 ? AC_MODE_DENSE : kind == 2 ? AC_MODE_HARDY : AC_MODE_IBM;
    u->format = kind == 1 ? AC_FORMAT_F16 : kind == 3 ? AC_FORMAT_SIGN_SCALE : AC_FORMAT_F32;
    u->nnz = 0;
    for (l = 0; l < NF_L; base += nf_sizes[l], l++) {
        uint32_t step = kind < 2 || (kind == 2 && l % 2 == 0) ? 1 : kind == 2 ? 3 : 2, first = u->nnz;
        u->scale[l] = 0.5f + (float)l;
        for (i = 0; i < nf_sizes[l]; i += step, u->nnz++) {
            u->index[u->nnz] = base + i;
            u->value[u->nnz] = kind == 3 ? (rnd() & 1 ? -u->scale[l] : u->scale[l]) : rnd_normal();
        }
        u->count[l] = u->nnz - first;
    }
}

/* Puts the bad value number b (NaN, +inf, -inf, a NaN with every bit set)
   at value pos of an encoded packet, or, for IBM, at tensor pos's scale. */
static void nf_poke(unsigned char *p, size_t len, const ac_update *u, uint32_t pos, int b)
{
    static const uint32_t f32[4] = {0x7FC00000u, 0x7F800000u, 0xFF800000u, 0xFFFFFFFFu};
    static const uint16_t f16[4] = {0x7E00u, 0x7C00u, 0xFC00u, 0xFFFFu};
    unsigned char *at;
    int k;
    if (u->format == AC_FORMAT_F16) {
        at = p + len - 2 * (size_t)(u->nnz - pos);
        at[0] = (unsigned char)f16[b], at[1] = (unsigned char)(f16[b] >> 8);
        return;
    }
    at = u->format == AC_FORMAT_F32 ? p + len - 4 * (size_t)(u->nnz - pos)
                                    : p + len - (u->nnz + 7) / 8 - 4 * (size_t)(NF_L - pos);
    for (k = 0; k < 4; k++) at[k] = (unsigned char)(f32[b] >> (8 * k));
}

/* Where a NaN or infinity goes: the first and last value, the middle, and
   each tensor's first and last value (IBM: each tensor's scale). */
static uint32_t nf_positions(const ac_update *u, uint32_t *pos)
{
    uint32_t l, j = 0, n = 0;
    if (u->format == AC_FORMAT_SIGN_SCALE) {
        for (l = 0; l < NF_L; l++) pos[n++] = l;
        return n;
    }
    pos[n++] = u->nnz / 2;
    for (l = 0; l < NF_L; j += u->count[l], l++) pos[n++] = j, pos[n++] = j + u->count[l] - 1;
    return n;
}

/* A packet, or an update, with a NaN or an infinity anywhere is refused
   with w, the clock and the history as they were, on every path
   (ac_server_apply_packet, ac_server_consume_packet, ac_server_apply), in
   every modulation, with the AVX-512 kernels and the plain ones; the
   consuming path, which checks as it applies and puts back what it
   stepped, must leave the same bits.  Clean packets then give the same w
   on every path, and in CONSTANT mode the w of w - alpha v computed here. */
TEST(non_finite_refused_on_every_path)
{
    ac_layout layout = {NF_L, nf_sizes};
    static unsigned char clean[8192], buf[8192];
    static float w[3][NF_TOTAL], keep[NF_TOTAL], ref[NF_TOTAL];
    static uint32_t umem[NF_L * 2 + NF_TOTAL * 2];
    uint32_t i, pos[2 + 2 * NF_L], npos, a;
    int kind, simd, st, path, b = 0;
    for (i = 0; i < NF_TOTAL; i++) nf_w0[i] = rnd_normal();
    for (kind = 0; kind < 4; kind++)
        for (st = AC_STALENESS_SIGMA; st <= AC_STALENESS_CONSTANT; st++)
            for (simd = 0; simd < 2; simd++) {
                ac_server *s[3];
                ac_update u, d;
                size_t len;
                int round;
                for (path = 0; path < 3; path++) {
                    ac_server_config sc = ac_server_config_init();
                    sc.alpha = 0.3f, sc.staleness = (ac_staleness)st, sc.simd = simd;
                    memcpy(w[path], nf_w0, sizeof nf_w0);
                    CHECK_OK(ac_server_init(&s[path], &layout, w[path], &sc));
                }
                CHECK_OK(ac_update_init(&d, &layout, NF_TOTAL, umem, sizeof umem));
                for (round = 0; round < 3; round++) {
                    uint64_t t = ac_server_clock(s[0]);
                    nf_update(&u, kind);
                    u.t_pull = t >= 2 ? t - 2 : 0; /* TAU: alpha / 2 */
                    CHECK_OK(ac_encode(&u, clean, sizeof clean, &len));
                    CHECK_OK(ac_decode(&d, clean, len));
                    npos = nf_positions(&u, pos);
                    for (a = 0; a < npos; a++, b = (b + 1) % 4) {
                        char want[64];
                        snprintf(want, sizeof want, "value %u is NaN", (unsigned)pos[a]);
                        for (path = 0; path < 3; path++) {
                            ac_stats before = ac_server_stats(s[path]);
                            float v = 0;
                            ac_result r;
                            memcpy(keep, w[path], sizeof keep);
                            memcpy(buf, clean, len), nf_poke(buf, len, &u, pos[a], b);
                            if (path == 2) { /* the update: the same bad value */
                                v = d.value[pos[a]];
                                if (u.format == AC_FORMAT_F32)
                                    memcpy(&d.value[pos[a]], buf + len - 4 * (size_t)(u.nnz - pos[a]), 4);
                                else
                                    d.value[pos[a]] = b & 1 ? INFINITY : NAN;
                            }
                            r = path == 0 ? ac_server_apply_packet(s[0], buf, len)
                                : path == 1 ? ac_server_consume_packet(s[1], buf, len)
                                            : ac_server_apply(s[2], &d);
                            if (path == 2) d.value[pos[a]] = v;
                            if (path < 2) { /* and with t_pull ahead: still the value first */
                                ac_result c;
                                memcpy(buf, clean, len), nf_poke(buf, len, &u, pos[a], b);
                                buf[16] = (unsigned char)(t + 5);
                                c = path == 0 ? ac_server_apply_packet(s[0], buf, len)
                                              : ac_server_consume_packet(s[1], buf, len);
                                CHECK(c == AC_ERR_VALUE);
                                before.rejected++;
                            }
                            CHECK(r == AC_ERR_VALUE);
                            if (u.format != AC_FORMAT_SIGN_SCALE || path == 2)
                                CHECK(strstr(ac_last_error(), want) != NULL);
                            CHECK(memcmp(keep, w[path], sizeof keep) == 0);
                            CHECK(ac_server_clock(s[path]) == before.packets);
                            CHECK(ac_server_stats(s[path]).rejected == before.rejected + 1);
                        }
                    }
                    for (i = 0; i < NF_TOTAL; i++) ref[i] = w[0][i];
                    for (i = 0; i < d.nnz; i++) ref[d.index[i]] -= 0.3f * d.value[i];
                    CHECK_OK(ac_server_apply_packet(s[0], clean, len));
                    memcpy(buf, clean, len);
                    CHECK_OK(ac_server_consume_packet(s[1], buf, len));
                    CHECK_OK(ac_server_apply(s[2], &d));
                    CHECK(memcmp(w[0], w[1], sizeof w[0]) == 0 && memcmp(w[0], w[2], sizeof w[0]) == 0);
                    if (st == AC_STALENESS_CONSTANT) CHECK(memcmp(w[0], ref, sizeof ref) == 0);
                }
                for (path = 0; path < 3; path++) ac_server_free(s[path]);
            }
}

/* ---- memory ---- */

/* By design every buffer is sized at init; this proves the steps keep to
   it with a counting AC_MALLOC, across every mode and the server. */
TEST(no_allocation_after_init)
{
    uint32_t sizes[] = {300, 20, 5000, 1};
    ac_layout layout = {4, sizes};
    static float g[5321], w[5321];
    static unsigned char buf[60000];
    ac_compressor *comp[5];
    ac_server *s;
    ac_server_config sc;
    long before;
    int m, step;
    sc = ac_server_config_init();
    for (m = 0; m < 5; m++) {
        ac_compressor_config cfg;
        cfg = ac_compressor_config_init();
        cfg.mode = (ac_mode)(m + 1), cfg.residue = 1, cfg.threshold = 2.5f;
        CHECK_OK(ac_compressor_init(&comp[m], &layout, &cfg));
    }
    CHECK_OK(ac_server_init(&s, &layout, w, &sc));
    CHECK_OK(ac_server_reserve(s, 100)); /* the pushes below reach tau = 50 */
    before = t_allocs;
    CHECK(before >= 5 * 4);
    for (step = 0; step < 20; step++) {
        for (m = 0; m < 5; m++) {
            size_t n;
            fill_grad(g, 5321, step % 2);
            CHECK_OK(ac_compress(comp[m], g, ac_server_clock(s) / 2, buf, sizeof buf, &n));
            CHECK_OK(ac_server_apply_packet(s, buf, n));
            ac_server_pull(s, g, NULL);
        }
    }
    CHECK(t_allocs == before);
    for (m = 0; m < 5; m++) {
        ac_stats st = ac_compressor_stats(comp[m]);
        CHECK(st.packets == 20 && st.dense_bytes == 20 * 5321 * 4);
        if (m + 1 == AC_MODE_HARDY || m + 1 == AC_MODE_TOPK || m + 1 == AC_MODE_IBM)
            CHECK(st.bytes_out < st.dense_bytes / 4);
        ac_compressor_free(comp[m]);
    }
    ac_server_free(s);
}

int main(void)
{
    RUN(hardy_matches_sort_reference);
    RUN(hardy_all_equal_takes_lowest_indices);
    RUN(k_rule);
    RUN(global_topk_matches_sort_reference);
    RUN(threshold_and_dense);
    RUN(hardy_residue_extension);
    RUN(ibm_matches_naive_rule);
    RUN(ibm_zero_gradient_sends_nothing);
    RUN(ibm_zero_accumulated_sends_nothing);
    RUN(zero_is_a_value);
    RUN(compress_rejects_non_finite);
    RUN(config_validation);
    RUN(half_round_trip_exhaustive);
    RUN(half_rounding_nearest_even);
    RUN(packet_golden_bytes);
    RUN(round_trip_every_mode_and_format);
    RUN(encode_rejects_invalid_updates);
    RUN(decode_rejects_malformed);
    RUN(decode_rejects_bad_ibm_fields);
    RUN(decode_truncated_at_every_byte);
    RUN(decode_oversized_counts);
    RUN(sigma_matches_brute_force);
    RUN(sigma_exact_at_any_staleness);
    RUN(history_grows_within_its_cap);
    RUN(history_never_undercounts);
    RUN(plain_asgd_applies_every_push);
    RUN(modulation_modes);
    RUN(too_old_and_future_updates);
    RUN(server_refuses_bad_updates_and_counts_bytes);
    RUN(apply_refuses_non_finite_values);
    RUN(simd_kernels_match_plain);
    RUN(simd_sigma_matches_plain);
    RUN(non_finite_refused_on_every_path);
    RUN(no_allocation_after_init);
    return th_done();
}
