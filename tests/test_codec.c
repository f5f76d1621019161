/* tests/test_codec.c: the codecs of GAN traffic (dg_codec): each codec's
 * round trip against its documented error bound, top-k against a sorted
 * reference, the residual identity (sum of what was sent + final residual =
 * sum of the inputs), malformed payloads refused with the rule they broke,
 * the option parser, and MD-GAN / FL-GAN runs whose wire bytes shrink by
 * the exact ratio of the formats. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include "small_gan.h"

#include <stdlib.h>


/* 4-aligned scratch for one encoding */
static unsigned char buf[1 << 21] __attribute__((aligned(64)));

static float rnd(dg_rng *r, float lo, float hi) { return lo + (hi - lo) * dg_rng_uniform(r); }

static dg_codec codec(dg_codec_kind k, float rate, int bin)
{
    dg_codec c;
    c.kind = k;
    c.rate = rate;
    c.bin = bin;
    return c;
}

/* the half h as a double, independently of the library */
static double half_value(unsigned h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp((double)m, -24);
    return (h & 0x8000) ? -v : v;
}

TEST(f16_round_trip_is_nearest_even_within_2_11)
{
    enum { N = 4099 };
    static float x[N], y[N];
    uint32_t seg = N;
    dg_codec c = codec(DG_CODEC_F16, 0, 0);
    dg_rng r = dg_rng_make(1, 2, 3);
    size_t len, i;
    int bad = 0;
    for (i = 0; i < N; i++) x[i] = (float)ldexp(rnd(&r, -1, 1), (int)(i % 40) - 26); /* subnormals too */
    x[0] = 70000.0f;   /* saturates */
    x[1] = -1e30f;
    x[2] = 65504.0f;
    x[3] = 0.0f;
    CHECK_OK(dg_codec_encode(&c, x, N, &seg, 1, NULL, buf, sizeof buf, &len));
    CHECK(len == 16 + 4 + 2 * N);
    CHECK_OK(dg_codec_decode(DG_CODEC_F16, buf, len, y, N));
    CHECK(y[0] == 65504.0f && y[1] == -65504.0f && y[2] == 65504.0f && y[3] == 0.0f);
    for (i = 4; i < N; i++) {
        unsigned h;
        uint16_t got;
        double e = fabs((double)x[i] - y[i]);
        memcpy(&got, buf + 20 + 2 * i, 2);
        h = got;
        /* the bound: 2^-11 relative for normal halves, 2^-25 absolute below */
        if (fabs(x[i]) >= ldexp(1, -14) ? e > ldexp(fabs(x[i]), -11) : e > ldexp(1, -25)) bad++;
        /* nearest: neither neighbour is closer; a tie goes to the even one */
        if (y[i] != (float)half_value(h)) bad++;
        if ((h & 0x7FFF) < 0x7BFF) {
            double up = fabs(half_value(h + 1) - x[i]);
            if (up < e || (up == e && (h & 1))) bad++;
        }
        if ((h & 0x7FFF) > 0) {
            double dn = fabs(half_value(h - 1) - x[i]);
            if (dn < e || (dn == e && (h & 1))) bad++;
        }
    }
    CHECK(bad == 0);
}

TEST(int8_rows_within_half_a_scale)
{
    enum { ROWS = 10, D = 784 };
    static float x[ROWS * D], y[ROWS * D];
    uint32_t segs[ROWS];
    dg_codec c = codec(DG_CODEC_INT8, 0, 0);
    dg_rng r = dg_rng_make(4, 5, 6);
    size_t len, i;
    int row, bad = 0;
    for (row = 0; row < ROWS; row++) {
        segs[row] = D;
        for (i = 0; i < D; i++) x[row * D + i] = row == 3 ? 0.0f : rnd(&r, -1, 1) * (float)(row + 1);
    }
    CHECK_OK(dg_codec_encode(&c, x, ROWS * D, segs, ROWS, NULL, buf, sizeof buf, &len));
    CHECK(len == 16 + 4 * ROWS + 4 * ROWS + ROWS * D);
    CHECK_OK(dg_codec_decode(DG_CODEC_INT8, buf, len, y, ROWS * D));
    for (row = 0; row < ROWS; row++) {
        double m = 0, scale;
        for (i = 0; i < D; i++) m = fabs(x[row * D + i]) > m ? fabs(x[row * D + i]) : m;
        scale = m / 127.0;
        for (i = 0; i < D; i++)
            if (fabs((double)x[row * D + i] - y[row * D + i]) > scale / 2 * (1 + 1e-5)) bad++;
        if (row == 3)
            for (i = 0; i < D; i++) bad += y[row * D + i] != 0.0f;
    }
    CHECK(bad == 0);
}

/* the reference top-k: sort the indices by |x| descending, then index */
static const float *ref_x;
static int by_abs(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    float u = fabsf(ref_x[i]), v = fabsf(ref_x[j]);
    return u > v ? -1 : u < v ? 1 : i < j ? -1 : 1;
}

/* Segments small (a heap over all), large with distinct values (a sampled
   threshold, then a heap over the candidates) and large with ties (the
   sample guesses wrong: a heap over all). */
TEST(topk_keeps_exactly_the_k_largest_and_the_residual_adds_up)
{
    enum { N = 63000, S = 5, STEPS = 5 };
    static float x[N], g[N], y[N], res[N], sum_in[N], sum_sent[N];
    static uint32_t order[N];
    uint32_t segs[S] = {1000, 1999, 1, 40000, 20000}, s;
    dg_codec c = codec(DG_CODEC_TOPK, 0.05f, 0);
    dg_rng r = dg_rng_make(7, 8, 9);
    size_t len, i, base, k_all = 0;
    int step, bad = 0;
    memset(res, 0, sizeof res);
    memset(sum_in, 0, sizeof sum_in);
    memset(sum_sent, 0, sizeof sum_sent);
    for (s = 0; s < S; s++) k_all += segs[s] / 20 ? segs[s] / 20 : 1;
    for (step = 0; step < STEPS; step++) {
        /* dyadic values (every sum below is exact): coarse ones with many
           ties, and fine ones in segment 3 */
        for (i = 0; i < N; i++)
            x[i] = i >= 2000 + 1000 && i < 43000 ? (float)((int)rnd(&r, -524288, 524288)) / 1024.0f
                                                 : (float)((int)rnd(&r, -64, 64)) / 8.0f;
        for (i = 0; i < N; i++) g[i] = x[i] + res[i];
        CHECK_OK(dg_codec_encode(&c, x, N, segs, S, res, buf, sizeof buf, &len));
        CHECK_OK(dg_codec_decode(DG_CODEC_TOPK, buf, len, y, N));
        for (s = 0, base = 0; s < S; base += segs[s++]) {
            size_t k = (size_t)floor(0.05 * segs[s]), j;
            if (k < 1) k = 1;
            for (j = 0; j < segs[s]; j++) order[j] = (uint32_t)(base + j);
            ref_x = g;
            qsort(order, segs[s], sizeof *order, by_abs);
            for (j = 0; j < segs[s]; j++) {
                uint32_t q = order[j];
                if (j < k ? y[q] != g[q] : y[q] != 0.0f) bad++;  /* exactly the k largest */
            }
        }
        for (i = 0; i < N; i++) {
            if (res[i] != g[i] - y[i]) bad++;                      /* residual = input - sent */
            sum_in[i] += x[i];
            sum_sent[i] += y[i];
        }
        CHECK(len == 16 + 4 * S + 4 + 8 * k_all);
    }
    for (i = 0; i < N; i++) bad += sum_sent[i] + res[i] != sum_in[i];
    CHECK(bad == 0);
}

/* bins of 50 and 100 (the scalar rule), 64 (the AVX2 kernel when the CPU
   has it): each against the rule computed here */
TEST(ibm_sends_sign_times_scale_and_the_residual_adds_up)
{
    enum { N = 1000, STEPS = 6 };
    static float x[N], y[N], res[N], g[N];
    static double sum_in[N], sum_sent[N];
    static const int bins[3] = {50, 64, 100};
    uint32_t segs[2] = {700, 300};
    dg_rng r = dg_rng_make(10, 11, 12);
    size_t len, i, j;
    int step, bad = 0, sent = 0, b;
    for (b = 0; b < 3; b++) {
        dg_codec c = codec(DG_CODEC_IBM, 0, bins[b]);
        memset(res, 0, sizeof res);
        memset(sum_in, 0, sizeof sum_in);
        memset(sum_sent, 0, sizeof sum_sent);
        for (step = 0; step < STEPS; step++) {
            for (i = 0; i < N; i++) x[i] = rnd(&r, -1, 1) * (i % 7 == 0 ? 5.0f : 1.0f);
            if (step == 2) for (i = 128; i < 192; i++) x[i] = -res[i]; /* G = 0 in a bin */
            for (i = 0; i < N; i++) g[i] = res[i] + x[i];
            CHECK_OK(dg_codec_encode(&c, x, N, segs, 2, res, buf, sizeof buf, &len));
            CHECK_OK(dg_codec_decode(DG_CODEC_IBM, buf, len, y, N));
            for (j = 0; j < N;) { /* the bin rule, from G = R + x and H = G + x */
                size_t e = j < 700 ? (700 - j < (size_t)bins[b] ? 700 : j + bins[b])
                                   : (N - j < (size_t)bins[b] ? N : j + bins[b]);
                float gmax = 0;
                for (i = j; i < e; i++) gmax = fabsf(g[i]) > gmax ? fabsf(g[i]) : gmax;
                for (i = j; i < e; i++) {
                    int go = fabsf(g[i] + x[i]) >= gmax && g[i] != 0.0f;
                    if (go != (y[i] != 0.0f)) bad++;
                    if (go && (y[i] < 0) != (g[i] < 0)) bad++;
                    sent += go;
                }
                j = e;
            }
            for (i = 1; i < N; i++) /* one magnitude per segment */
                if (y[i] != 0.0f && y[i - 1] != 0.0f && (i < 700) == (i - 1 < 700) &&
                    fabsf(y[i]) != fabsf(y[i - 1]))
                    bad++;
            for (i = 0; i < N; i++) {
                if (fabsf(res[i] - (g[i] - y[i])) > 1e-6f * (1 + fabsf(g[i]))) bad++;
                sum_in[i] += x[i];
                sum_sent[i] += y[i];
            }
        }
        for (i = 0; i < N; i++)
            bad += fabs(sum_sent[i] + res[i] - sum_in[i]) > 1e-5 * (1 + fabs(sum_in[i]));
    }
    CHECK(bad == 0);
    CHECK(sent > 0 && sent < 3 * STEPS * N / 4); /* it compresses */
}

/* decode must refuse r with code and a message containing what */
static void refused(const void *p, size_t len, dg_codec_kind k, size_t n, dg_result code,
                    const char *what)
{
    static float out[4096];
    dg_result r = dg_codec_decode(k, p, len, out, n);
    CHECK(r == code);
    if (r != code || !strstr(dg_last_error(), what))
        printf("  got %d '%s', expected %d '%s'\n", r, dg_last_error(), code, what);
}

TEST(malformed_payloads_are_refused_naming_the_rule)
{
    static float x[256];
    static unsigned char p[8192] __attribute__((aligned(64)));
    uint32_t seg[2] = {200, 56}, v;
    dg_codec f16 = codec(DG_CODEC_F16, 0, 0), i8 = codec(DG_CODEC_INT8, 0, 0);
    dg_codec tk = codec(DG_CODEC_TOPK, 0.1f, 0), ibm = codec(DG_CODEC_IBM, 0, 16);
    dg_rng r = dg_rng_make(1, 1, 1);
    size_t len, i;
    float nan = NAN;
    for (i = 0; i < 256; i++) x[i] = rnd(&r, -3, 3);
    /* float16 */
    CHECK_OK(dg_codec_encode(&f16, x, 256, seg, 2, NULL, p, sizeof p, &len));
    refused(p, len - 1, DG_CODEC_F16, 256, DG_ERR_FORMAT, "truncated");
    refused(p, 10, DG_CODEC_F16, 256, DG_ERR_FORMAT, "truncated");
    refused(p, len, DG_CODEC_F16, 255, DG_ERR_FORMAT, "holds 256 values, expected 255");
    refused(p, len, DG_CODEC_INT8, 256, DG_ERR_CONFIG, "coded with f16, this peer expects int8");
    p[16 + 8 + 6] = 0x00, p[16 + 8 + 7] = 0x7C; /* value 3 = +inf */
    refused(p, len, DG_CODEC_F16, 256, DG_ERR_FORMAT, "infinite or NaN");
    memset(p + 16, 0, 4); /* segment 0 empty */
    refused(p, len, DG_CODEC_F16, 256, DG_ERR_FORMAT, "segment 0 is empty");
    p[0] = 9;
    refused(p, len, DG_CODEC_F16, 256, DG_ERR_FORMAT, "unknown codec 9");
    /* int8 */
    CHECK_OK(dg_codec_encode(&i8, x, 256, seg, 2, NULL, p, sizeof p, &len));
    refused(p, len + 1, DG_CODEC_INT8, 256, DG_ERR_FORMAT, "oversized");
    memcpy(p + 24 + 4, &nan, 4);
    refused(p, len, DG_CODEC_INT8, 256, DG_ERR_FORMAT, "int8 scale 1 is nan");
    {
        float big = 3e38f; /* finite, but 127 times it is not (found by fuzz_codec) */
        memcpy(p + 24 + 4, &big, 4);
        refused(p, len, DG_CODEC_INT8, 256, DG_ERR_FORMAT, "int8 scale 1 is 3e+38");
    }
    CHECK_OK(dg_codec_encode(&i8, x, 256, seg, 2, NULL, p, sizeof p, &len));
    p[len - 1] = 0x80;
    refused(p, len, DG_CODEC_INT8, 256, DG_ERR_FORMAT, "-128");
    /* top-k: nnz = 20 + 5, indices at 28.., values after */
    CHECK_OK(dg_codec_encode(&tk, x, 256, seg, 2, NULL, p, sizeof p, &len));
    CHECK(len == 16 + 8 + 4 + 8 * 25);
    v = 256;
    memcpy(p + 28 + 4 * 24, &v, 4);
    refused(p, len, DG_CODEC_TOPK, 256, DG_ERR_FORMAT, "indices");
    CHECK_OK(dg_codec_encode(&tk, x, 256, seg, 2, NULL, p, sizeof p, &len));
    memcpy(&v, p + 28, 4);
    memcpy(p + 32, &v, 4); /* a repeated index */
    refused(p, len, DG_CODEC_TOPK, 256, DG_ERR_FORMAT, "strictly increasing");
    CHECK_OK(dg_codec_encode(&tk, x, 256, seg, 2, NULL, p, sizeof p, &len));
    memcpy(p + 28 + 4 * 25, &nan, 4);
    refused(p, len, DG_CODEC_TOPK, 256, DG_ERR_FORMAT, "not finite");
    v = 1000; /* more entries than values */
    memcpy(p + 24, &v, 4);
    refused(p, len, DG_CODEC_TOPK, 256, DG_ERR_FORMAT, "1000 entries for 256 values");
    v = 26; /* a count that does not fit the length */
    memcpy(p + 24, &v, 4);
    refused(p, len, DG_CODEC_TOPK, 256, DG_ERR_FORMAT, "truncated");
    /* IBM: scales at 24, nnz at 32, indices at 36 */
    CHECK_OK(dg_codec_encode(&ibm, x, 256, seg, 2, NULL, p, sizeof p, &len));
    memcpy(&v, p + 32, 4);
    CHECK(v > 0 && len == 16 + 8 + 8 + 4 + 4 * v + (v + 7) / 8);
    {
        float neg = -1.0f;
        memcpy(p + 24, &neg, 4);
        refused(p, len, DG_CODEC_IBM, 256, DG_ERR_FORMAT, "IBM scale 0 is -1");
    }
    CHECK_OK(dg_codec_encode(&ibm, x, 256, seg, 2, NULL, p, sizeof p, &len));
    v = 300;
    memcpy(p + 36, &v, 4);
    refused(p, len, DG_CODEC_IBM, 256, DG_ERR_FORMAT, "indices");
    CHECK_OK(dg_codec_encode(&ibm, x, 256, seg, 2, NULL, p, sizeof p, &len));
    memcpy(&v, p + 32, 4);
    if (v & 7) {
        p[len - 1] |= 0x80;
        refused(p, len, DG_CODEC_IBM, 256, DG_ERR_FORMAT, "padding");
    }
    /* the encoder refuses what it cannot send */
    x[5] = NAN;
    CHECK(dg_codec_encode(&f16, x, 256, seg, 2, NULL, p, sizeof p, &len) == DG_ERR_ARG);
    CHECK(dg_codec_encode(&tk, x, 256, seg, 2, NULL, p, sizeof p, &len) == DG_ERR_ARG);
    x[5] = 0;
    CHECK(dg_codec_encode(&f16, x, 256, seg, 1, NULL, p, sizeof p, &len) == DG_ERR_ARG); /* sum */
    CHECK(dg_codec_encode(&f16, x, 256, seg, 2, NULL, p, 100, &len) == DG_ERR_ARG);      /* cap */
}

TEST(codec_options_parse_strictly)
{
    dg_codec c;
    dg_codec_set s;
    char text[256];
    CHECK_OK(dg_codec_parse("topk:0.02", &c));
    CHECK(c.kind == DG_CODEC_TOPK && fabsf(c.rate - 0.02f) < 1e-9f);
    CHECK_OK(dg_codec_parse("ibm", &c));
    CHECK(c.kind == DG_CODEC_IBM && c.bin == 0);
    CHECK(dg_codec_parse("int9", &c) == DG_ERR_ARG && strstr(dg_last_error(), "'int9'"));
    CHECK(dg_codec_parse("topk:0", &c) == DG_ERR_ARG && strstr(dg_last_error(), "(0, 1]"));
    CHECK(dg_codec_parse("topk:1.5", &c) == DG_ERR_ARG);
    CHECK(dg_codec_parse("f16:2", &c) == DG_ERR_ARG && strstr(dg_last_error(), "no parameter"));
    CHECK(dg_codec_parse("ibm:0", &c) == DG_ERR_ARG);
    CHECK_OK(dg_codec_set_parse("batch=int8,feedback=f16,swap=f16,upload=topk:0.01", &s));
    CHECK(s.batch.kind == DG_CODEC_INT8 && s.feedback.kind == DG_CODEC_F16 &&
          s.swap.kind == DG_CODEC_F16 && s.upload.kind == DG_CODEC_TOPK &&
          s.download.kind == DG_CODEC_NONE);
    dg_codec_set_format(&s, text, sizeof text);
    CHECK(!strcmp(text, "batch=int8,feedback=f16,swap=f16,upload=topk:0.01"));
    CHECK(dg_codec_set_parse("batch=int8,batch=f16", &s) == DG_ERR_ARG &&
          strstr(dg_last_error(), "twice"));
    CHECK(dg_codec_set_parse("weights=f16", &s) == DG_ERR_ARG &&
          strstr(dg_last_error(), "unknown traffic 'weights'"));
    CHECK(dg_codec_set_parse("batch", &s) == DG_ERR_ARG && strstr(dg_last_error(), "TRAFFIC=CODEC"));
    CHECK(dg_codec_set_parse("batch=f16,", &s) == DG_ERR_ARG);
    CHECK(dg_codec_set_parse("upload=topk:x", &s) == DG_ERR_ARG && strstr(dg_last_error(), "upload"));
    memset(&s, 0, sizeof s);
    dg_codec_set_format(&s, text, sizeof text);
    CHECK(!strcmp(text, "none"));
}

/* MD-GAN with int8 batches and f16 feedback: the wire bytes are the formats'
   exactly, the run trains (finite losses), and the configs refuse what
   does not fit (top-k on batches, FL-GAN traffic). */
TEST(mdgan_codecs_count_fewer_wire_bytes)
{
    small_data data;
    dg_mdgan_run *run;
    dg_mdgan_config c = small_config(3);
    const int I = 4;
    uint64_t b, d;
    int n, it, acgan;
    small_data_make(&data, 96, 1, 3);
    b = (uint64_t)c.batch;
    d = 64;
    c.codec.batch.kind = DG_CODEC_INT8;
    c.codec.feedback.kind = DG_CODEC_F16;
    for (acgan = 0; acgan <= 1; acgan++) {
        c.n_classes = acgan ? 4 : 0; /* the labels travel as int32, uncoded */
        CHECK_OK(dg_mdgan_run_create(&run, &c, pool2, &data.ds, &data.part, NULL, 0, NULL, 0));
        for (it = 0; it < I; it++) CHECK_OK(dg_mdgan_run_iteration(run));
        for (n = 1; n <= 3; n++) {
            dg_traffic down = dg_transport_traffic(dg_mdgan_run_transport(run), 0, n);
            dg_traffic up = dg_transport_traffic(dg_mdgan_run_transport(run), n, 0);
            /* int8: header 16 + b lengths + b scales + b*d bytes, twice; f16: 16 + 4b + 2bd */
            CHECK(down.payload_bytes == (uint64_t)I * (2 * (16 + 8 * b + b * d) + (acgan ? 8 * b : 0)));
            CHECK(up.payload_bytes == (uint64_t)I * (16 + 4 * b + 2 * b * d));
            /* dense: 2*4bd down, 4bd up: ratios 3.4x and 1.9x here (d = 64) */
            CHECK(4.0 * 2 * b * d * I / down.payload_bytes > (acgan ? 3.0 : 3.3));
        }
        CHECK(dg_mdgan_server_stats(dg_mdgan_run_server(run))->n_live == 3);
        CHECK(isfinite(dg_mdgan_server_stats(dg_mdgan_run_server(run))->g_loss));
        dg_mdgan_run_free(run);
    }
    c.n_classes = 0;
    c.codec.batch.kind = DG_CODEC_TOPK;
    CHECK(dg_mdgan_run_create(&run, &c, pool2, &data.ds, &data.part, NULL, 0, NULL, 0) ==
              DG_ERR_ARG &&
          strstr(dg_last_error(), "absolute values"));
    c.codec.batch.kind = DG_CODEC_NONE;
    c.codec.upload.kind = DG_CODEC_F16;
    CHECK(dg_mdgan_run_create(&run, &c, pool2, &data.ds, &data.part, NULL, 0, NULL, 0) ==
              DG_ERR_ARG &&
          strstr(dg_last_error(), "FL-GAN traffic"));
    small_data_free(&data);
}

/* A swap with f16 θ: the DISC payload is the f16 size of D's tensors. */
TEST(mdgan_swap_f16_halves_the_swap)
{
    small_data data;
    dg_mdgan_run *run[2];
    dg_mdgan_config c = small_config(3);
    uint64_t p2p[2];
    int v, it;
    small_data_make(&data, 96, 2, 3);
    c.local_epochs = 1;
    c.swap_every = 2;
    for (v = 0; v < 2; v++) {
        c.codec.swap.kind = v ? DG_CODEC_F16 : DG_CODEC_NONE;
        CHECK_OK(dg_mdgan_run_create(&run[v], &c, pool2, &data.ds, &data.part, NULL, 0, NULL, 0));
        for (it = 0; it < 5; it++) CHECK_OK(dg_mdgan_run_iteration(run[v]));
        p2p[v] = 0;
        for (it = 1; it <= 3; it++)
            p2p[v] += dg_transport_traffic(dg_mdgan_run_transport(run[v]), it, DG_ANY_PEER).payload_bytes -
                      dg_transport_traffic(dg_mdgan_run_transport(run[v]), it, 0).payload_bytes;
    }
    /* 2 swaps x 3 workers; f16 = half the floats + 16 + 4 per tensor per part */
    CHECK(p2p[0] > 0 && p2p[1] * 2 > p2p[0] && p2p[1] * 2 < p2p[0] + 6 * 3 * 200);
    for (v = 0; v < 2; v++) dg_mdgan_run_free(run[v]);
    small_data_free(&data);
}

/* FL-GAN: top-k uploads of deltas send about 8 c |model| bytes instead of
   4 |model|; f16 uploads of deltas give a global model within the f16
   error of the dense run's. */
TEST(flgan_delta_uploads)
{
    enum { N = 3 };
    small_data data;
    dg_flgan_run *run[3];
    dg_flgan_config c = small_flgan_config(N, 2);
    uint64_t up[3], down[3];
    int v, it;
    size_t i, np;
    double diff = 0, ref = 0;
    small_data_make(&data, 96, 3, N);
    for (v = 0; v < 3; v++) {
        memset(&c.codec, 0, sizeof c.codec);
        if (v == 1) c.codec.upload.kind = DG_CODEC_F16;
        if (v == 2) {
            c.codec.upload = codec(DG_CODEC_TOPK, 0.01f, 0);
            c.codec.download.kind = DG_CODEC_F16;
        }
        CHECK_OK(dg_flgan_run_create(&run[v], &c, pool2, &data.ds, &data.part, NULL, 0));
        for (it = 0; it < 3; it++) CHECK_OK(dg_flgan_run_round(run[v]));
        up[v] = dg_transport_traffic(dg_flgan_run_transport(run[v]), DG_ANY_PEER, 0).payload_bytes;
        down[v] = dg_transport_traffic(dg_flgan_run_transport(run[v]), 0, DG_ANY_PEER).payload_bytes;
    }
    np = dg_net_param_count(dg_flgan_server_generator(dg_flgan_run_server(run[0]))) +
         dg_net_param_count(dg_flgan_server_discriminator(dg_flgan_run_server(run[0])));
    CHECK(up[0] == 3ull * N * 4 * np && down[0] == up[0]);
    CHECK(up[1] < up[0] / 2 + 3ull * N * 16 * 20);
    CHECK(down[2] < down[0] / 2 + 3ull * N * 16 * 20);
    CHECK(up[2] * 30 < up[0]); /* 1%: ~8 bytes per 100 floats, + one entry per bias tensor */
    for (i = 0; i < dg_net_param_count(dg_flgan_server_generator(dg_flgan_run_server(run[0]))); i++) {
        float a = dg_net_params(dg_flgan_server_generator(dg_flgan_run_server(run[0])))[i];
        float b = dg_net_params(dg_flgan_server_generator(dg_flgan_run_server(run[1])))[i];
        diff = fabs(a - b) > diff ? fabs(a - b) : diff;
        ref = fabs(a) > ref ? fabs(a) : ref;
    }
    /* deltas of a few Adam steps, sent in f16 (2^-11 relative): the models
       agree to far better than the weights' size */
    CHECK(diff > 0 && diff < 1e-4 * ref);
    for (v = 0; v < 3; v++) dg_flgan_run_free(run[v]);
    small_data_free(&data);
}

static int refs_equal_by_hand(const dg_flgan_server *s, const dg_flgan_worker *w)
{
    return s->ref_round[1] >= 0 && s->ref_round[1] == w->ref_round &&
           !memcmp(s->refs, w->ref, 4 * s->ref_len);
}

static int same_params(dg_net *a, dg_net *b)
{
    return dg_net_param_count(a) == dg_net_param_count(b) &&
           !memcmp(dg_net_params(a), dg_net_params(b), 4 * dg_net_param_count(a));
}
/* The server's reference of worker n and the worker's own: the same round
   and the same bits (or both unknown). */
static int refs_agree(dg_flgan_run *run, int n)
{
    dg_flgan_server *s = dg_flgan_run_server(run);
    dg_flgan_worker *w = dg_flgan_run_worker(run, n);
    if (s->ref_round[n] < 0) return 1; /* unknown: the next download is dense */
    return s->ref_round[n] == w->ref_round &&
           !memcmp(s->refs + (size_t)(n - 1) * s->ref_len, w->ref, 4 * s->ref_len);
}

/* FL-GAN download deltas (top-k and IBM, with FeGAN sampling of 2 of 3
   workers): after every round the server's ref_n and worker n's are
   bit-identical; the first round goes dense (4 bytes a float), the later
   ones at about 8 C bytes a float; the model trains (finite losses). */
TEST(flgan_download_deltas_keep_references_equal)
{
    enum { N = 3, R = 5 };
    small_data data;
    dg_flgan_run *run;
    dg_flgan_config c = small_flgan_config(N, 2);
    int v, it, n, agree = 1;
    small_data_make(&data, 96, 3, N);
    for (v = 0; v < 2; v++) {
        uint64_t down0 = 0, down = 0, dense;
        dg_transport *t;
        c.codec.upload = codec(DG_CODEC_TOPK, 0.1f, 0);
        c.codec.download = v ? codec(DG_CODEC_IBM, 0, 0) : codec(DG_CODEC_TOPK, 0.1f, 0);
        c.fraction = v ? 0.67f : 0.0f;
        CHECK_OK(dg_flgan_run_create(&run, &c, pool2, &data.ds, &data.part, NULL, 0));
        t = dg_flgan_run_transport(run);
        dense = 4 * dg_flgan_run_server(run)->ref_len;
        for (it = 0; it < R; it++) {
            CHECK_OK(dg_flgan_run_round(run));
            for (n = 1; n <= N; n++) agree &= refs_agree(run, n);
            if (!it) down0 = dg_transport_traffic(t, 0, DG_ANY_PEER).payload_bytes;
        }
        down = dg_transport_traffic(t, 0, DG_ANY_PEER).payload_bytes - down0;
        CHECK(agree);
        CHECK(down0 == (v ? 2 : 3) * dense); /* nobody's reference is known yet */
        if (!v) CHECK(down * 3 < (uint64_t)(R - 1) * N * dense); /* 10%: ~0.2 x dense */
        else CHECK(down < (uint64_t)(R - 1) * 2 * dense);
        CHECK(isfinite(dg_flgan_server_stats(dg_flgan_run_server(run))->g_loss));
        dg_flgan_run_free(run);
    }
    small_data_free(&data);
}

/* Top-k at C = 1 sends all of global - ref_n: a worker that missed rounds
   (one of 3 asked per round) holds the global model after one download, to
   the rounding of ref + (g - ref): |ref' - g| <= 2^-23 (|g| + |g - ref|).
   Not the dense run's bits: (g - ref) + ref is not g in float. */
TEST(flgan_download_deltas_at_c1_catch_up)
{
    enum { N = 3, R = 6 };
    small_data data;
    dg_flgan_run *run;
    dg_flgan_config c = small_flgan_config(N, 2);
    dg_flgan_server *s;
    float *g, *old;
    int64_t prev[N + 1];
    int it, n, stale = 0, ok = 1;
    size_t inexact = 0, deltas = 0;
    size_t i, len;
    small_data_make(&data, 96, 3, N);
    c.codec.download = codec(DG_CODEC_TOPK, 1.0f, 0);
    c.fraction = 0.34f;
    CHECK_OK(dg_flgan_run_create(&run, &c, pool2, &data.ds, &data.part, NULL, 0));
    s = dg_flgan_run_server(run);
    len = s->ref_len;
    g = (float *)malloc(4 * len);
    old = (float *)malloc(4 * len * N);
    for (it = 0; it < R; it++) {
        dg__pair_flatten(&s->model, 0, g); /* the global model this round sends */
        memcpy(old, s->refs, 4 * len * N);
        memcpy(prev, s->ref_round, sizeof prev);
        CHECK_OK(dg_flgan_run_round(run));
        for (n = 1; n <= N; n++) {
            const float *ref = s->refs + (size_t)(n - 1) * len, *was = old + (size_t)(n - 1) * len;
            if (s->ref_round[n] != it) continue; /* not asked this round */
            ok &= refs_agree(run, n);
            stale += prev[n] >= 0 && prev[n] < it - 1; /* it missed a round or more */
            deltas += prev[n] >= 0 ? len : 0;
            for (i = 0; i < len; i++) {
                ok &= fabsf(ref[i] - g[i]) <= 0x1p-23f * (fabsf(g[i]) + fabsf(g[i] - was[i]));
                inexact += ref[i] != g[i];
            }
        }
    }
    CHECK(ok);
    CHECK(stale > 0);
    CHECK(deltas > 0);
    printf("  (C = 1: %zu of the %zu values downloaded as deltas differ from g by rounding)\n",
           inexact, deltas);
    free(g);
    free(old);
    dg_flgan_run_free(run);
    small_data_free(&data);
}

/* The server and one worker by hand: the first download is dense, the
   next a delta; a worker that left and rejoined gets the dense model; a
   worker without a reference (a fresh one in the same slot) refuses a
   delta, and a worker whose download codec is absolute refuses one too. */
TEST(flgan_download_deltas_unknown_worker_gets_the_model)
{
    dg_dataset ds;
    dg_transport *t;
    dg_flgan_server *s;
    dg_flgan_worker *w, *fresh;
    dg_flgan_config c = small_flgan_config(1, 1), abs_c;
    uint32_t idx[32];
    uint64_t dense, before;
    int i;
    make_data(&ds, 32, 4);
    for (i = 0; i < 32; i++) idx[i] = (uint32_t)i;
    c.codec.download = codec(DG_CODEC_TOPK, 0.05f, 0);
    abs_c = c;
    abs_c.codec.download = codec(DG_CODEC_F16, 0, 0);
    CHECK_OK(dg_inproc_create(&t, 2, 0, 0));
    CHECK_OK(dg_flgan_server_create(&s, &c, t, pool2));
    CHECK_OK(dg_flgan_worker_create(&w, &c, 1, t, pool2, &ds, idx, 32));
    dense = 4 * s->ref_len;
    for (i = 0; i < 4; i++) {
        before = dg_transport_traffic(t, 0, 1).payload_bytes;
        if (i == 2) { /* it leaves and comes back: its reference is forgotten */
            CHECK_OK(dg_flgan_server_drop_worker(s, 1, "test"));
            CHECK(s->ref_round[1] == -1);
            CHECK_OK(dg_flgan_server_add_worker(s, 1));
        }
        CHECK_OK(dg_flgan_server_begin(s));
        CHECK_OK(dg_flgan_worker_poll(w, 1000));
        CHECK_OK(dg_flgan_server_poll(s, 1000));
        CHECK(dg_flgan_server_stats(s)->rounds == i + 1);
        CHECK(refs_equal_by_hand(s, w));
        if (i == 0 || i == 2) CHECK(dg_transport_traffic(t, 0, 1).payload_bytes - before == dense);
        else CHECK((dg_transport_traffic(t, 0, 1).payload_bytes - before) * 5 < dense);
    }
    CHECK_OK(dg_flgan_worker_create(&fresh, &c, 1, t, pool2, &ds, idx, 32));
    CHECK_OK(dg_flgan_server_begin(s));
    CHECK(dg_flgan_worker_poll(fresh, 1000) == DG_ERR_FORMAT);
    CHECK(strstr(dg_last_error(), "download delta") && strstr(dg_last_error(), "no reference"));
    dg_flgan_worker_free(fresh);
    CHECK_OK(dg_flgan_server_expire(s)); /* the round closes without it: forgotten */
    CHECK(s->ref_round[1] == -1 && !dg_flgan_server_is_live(s, 1));
    CHECK_OK(dg_flgan_server_add_worker(s, 1));
    before = dg_transport_traffic(t, 0, 1).payload_bytes;
    CHECK_OK(dg_flgan_server_begin(s)); /* so the next download is dense */
    CHECK(dg_transport_traffic(t, 0, 1).payload_bytes - before == dense);
    CHECK_OK(dg_flgan_worker_poll(w, 1000));
    CHECK_OK(dg_flgan_server_poll(s, 1000));
    CHECK(refs_equal_by_hand(s, w));
    CHECK_OK(dg_flgan_worker_create(&fresh, &abs_c, 1, t, pool2, &ds, idx, 32));
    CHECK_OK(dg_flgan_server_begin(s));
    CHECK(dg_flgan_worker_poll(fresh, 1000) == DG_ERR_FORMAT);
    CHECK(strstr(dg_last_error(), "absolute"));
    dg_flgan_worker_free(fresh);
    dg_flgan_worker_free(w);
    dg_flgan_server_free(s);
    dg_transport_close(t);
    dg_dataset_free(&ds);
}

/* Every role of an FL-GAN run of n workers into buf/len (each replaced),
   or back from them. */
static void flgan_roles_save(dg_flgan_run *r, int n_workers, unsigned char **buf, size_t *len)
{
    int n;
    for (n = 0; n <= n_workers; n++) {
        free(buf[n]);
        len[n] = n ? dg_flgan_worker_save_size(dg_flgan_run_worker(r, n))
                   : dg_flgan_server_save_size(dg_flgan_run_server(r));
        buf[n] = (unsigned char *)malloc(len[n]);
        CHECK_OK(n ? dg_flgan_worker_save_mem(dg_flgan_run_worker(r, n), buf[n], len[n], &len[n])
                   : dg_flgan_server_save_mem(dg_flgan_run_server(r), buf[n], len[n], &len[n]));
    }
}

static void flgan_roles_load(dg_flgan_run *r, int n_workers, unsigned char **buf, const size_t *len)
{
    int n;
    for (n = 0; n <= n_workers; n++)
        CHECK_OK(n ? dg_flgan_worker_load_mem(dg_flgan_run_worker(r, n), buf[n], len[n])
                   : dg_flgan_server_load_mem(dg_flgan_run_server(r), buf[n], len[n]));
}

/* A coded FL-GAN run (top-k uploads with their residuals, top-k download
   deltas) saved after 2 rounds and resumed in a new run ends 4 rounds with
   the G and D of an uninterrupted one, bit for bit; a checkpoint without
   the codec state (an uncoded run's) resumes with dense downloads, and a
   coded one is refused by an uncoded run. */
TEST(flgan_coded_resume_is_exact)
{
    enum { N = 3 };
    small_data data;
    dg_flgan_config c = small_flgan_config(N, 2), plain;
    dg_flgan_run *a, *b, *r2;
    unsigned char *buf[N + 1] = {NULL};
    size_t len[N + 1];
    int it, n;
    small_data_make(&data, 96, 9, N);
    c.seed = 4;
    c.codec.upload = codec(DG_CODEC_TOPK, 0.05f, 0);
    c.codec.download = codec(DG_CODEC_TOPK, 0.05f, 0);
    plain = c;
    memset(&plain.codec, 0, sizeof plain.codec);
    CHECK_OK(dg_flgan_run_create(&a, &c, pool2, &data.ds, &data.part, NULL, 0));
    for (it = 0; it < 4; it++) CHECK_OK(dg_flgan_run_round(a));
    CHECK_OK(dg_flgan_run_create(&b, &c, pool2, &data.ds, &data.part, NULL, 0));
    for (it = 0; it < 2; it++) CHECK_OK(dg_flgan_run_round(b));
    flgan_roles_save(b, N, buf, len);
    dg_flgan_run_free(b);
    CHECK_OK(dg_flgan_run_create(&r2, &c, pool2, &data.ds, &data.part, NULL, 0));
    flgan_roles_load(r2, N, buf, len);
    for (it = 0; it < 2; it++) CHECK_OK(dg_flgan_run_round(r2));
    CHECK(same_params(dg_flgan_server_generator(dg_flgan_run_server(a)),
                      dg_flgan_server_generator(dg_flgan_run_server(r2))));
    CHECK(same_params(dg_flgan_server_discriminator(dg_flgan_run_server(a)),
                      dg_flgan_server_discriminator(dg_flgan_run_server(r2))));
    dg_flgan_run_free(r2);
    /* the same without the codec state: residuals restart at zero, another model */
    CHECK_OK(dg_flgan_run_create(&r2, &plain, pool2, &data.ds, &data.part, NULL, 0));
    CHECK(dg_flgan_server_load_mem(dg_flgan_run_server(r2), buf[0], len[0]) == DG_ERR_CONFIG);
    CHECK(strstr(dg_last_error(), "download references"));
    CHECK(dg_flgan_worker_load_mem(dg_flgan_run_worker(r2, 1), buf[1], len[1]) == DG_ERR_CONFIG);
    for (it = 0; it < 2; it++) CHECK_OK(dg_flgan_run_round(r2));
    flgan_roles_save(r2, N, buf, len);
    dg_flgan_run_free(r2);
    CHECK_OK(dg_flgan_run_create(&r2, &c, pool2, &data.ds, &data.part, NULL, 0));
    flgan_roles_load(r2, N, buf, len);
    for (n = 1; n <= N; n++) CHECK(dg_flgan_run_server(r2)->ref_round[n] == -1);
    {
        dg_transport *t = dg_flgan_run_transport(r2);
        uint64_t before = dg_transport_traffic(t, 0, DG_ANY_PEER).payload_bytes;
        CHECK_OK(dg_flgan_run_round(r2));
        CHECK(dg_transport_traffic(t, 0, DG_ANY_PEER).payload_bytes - before ==
              (uint64_t)N * 4 * dg_flgan_run_server(r2)->ref_len);
    }
    for (n = 0; n <= N; n++) free(buf[n]);
    dg_flgan_run_free(r2);
    dg_flgan_run_free(a);
    small_data_free(&data);
}

/* A worker coding its feedback while the server expects float32: the
   server refuses it, naming the codec, and drops the worker. */
TEST(codec_mismatch_is_refused)
{
    dg_dataset ds;
    dg_transport *t;
    dg_mdgan_server *s;
    dg_mdgan_worker *w;
    dg_mdgan_config cs = small_config(1), cw = small_config(1);
    uint32_t idx[32];
    int i;
    make_data(&ds, 32, 4);
    for (i = 0; i < 32; i++) idx[i] = (uint32_t)i;
    cw.codec.feedback.kind = DG_CODEC_F16;
    CHECK_OK(dg_inproc_create(&t, 2, 0, 0));
    CHECK_OK(dg_mdgan_server_create(&s, &cs, t, pool2));
    CHECK_OK(dg_mdgan_worker_create(&w, &cw, 1, t, pool2, &ds, idx, 32, 0));
    CHECK_OK(dg_mdgan_server_begin(s));
    CHECK_OK(dg_mdgan_worker_poll(w, 1000));
    CHECK_OK(dg_mdgan_server_poll(s, 1000));
    CHECK(dg_mdgan_server_stats(s)->n_dropped == 1);
    dg_mdgan_worker_free(w);
    dg_mdgan_server_free(s);
    dg_transport_close(t);
    dg_dataset_free(&ds);
}

/* A coded message keeps what is not its payload: aux, the losses, the
   simulated arrival (asynchronous MD-GAN closes iterations from it), and
   its int32 parts as they were. */
TEST(coded_messages_keep_their_header)
{
    dg_transport *t;
    dg__coder co;
    dg_msg *m;
    dg_part_kind kinds[2] = {DG_PART_F32, DG_PART_I32};
    size_t counts[2] = {40, 3}, i;
    CHECK_OK(dg_inproc_create(&t, 2, 0, 0));
    memset(&co, 0, sizeof co);
    co.codec.kind = DG_CODEC_INT8;
    CHECK_OK(dg__coder_add(&co, 40, 4, NULL));
    CHECK_OK(dg__coder_ready(&co, 1, 0, 0));
    CHECK_OK(dg_msg_create(t, DG_MSG_FEEDBACK, 1, 0, 7, 2, kinds, counts, &m));
    for (i = 0; i < 40; i++) ((float *)m->part[0].data)[i] = (float)i - 20.0f;
    for (i = 0; i < 3; i++) ((int32_t *)m->part[1].data)[i] = (int32_t)(100 + i);
    m->aux = 42;
    m->stat[0] = 1.5f;
    m->stat[1] = -2.0f;
    m->arrival = 3.25;
    CHECK_OK(dg__coder_pack(&co, t, &m));
    CHECK(m->part[0].kind == DG_PART_BYTES && m->part[0].count == 16 + 16 + 16 + 40);
    CHECK(m->aux == 42 && m->stat[0] == 1.5f && m->stat[1] == -2.0f && m->arrival == 3.25);
    CHECK(m->iteration == 7 && m->from == 1 && m->to == 0 && m->type == DG_MSG_FEEDBACK);
    CHECK_OK(dg__coder_unpack(&co, t, &m));
    CHECK(m->part[0].kind == DG_PART_F32 && m->part[0].count == 40);
    CHECK(m->aux == 42 && m->stat[0] == 1.5f && m->stat[1] == -2.0f && m->arrival == 3.25);
    for (i = 0; i < 3; i++) CHECK(((int32_t *)m->part[1].data)[i] == (int32_t)(100 + i));
    for (i = 0; i < 40; i++) /* integers up to 20 in rows of 10: scale <= 20/127 */
        CHECK(fabsf(((float *)m->part[0].data)[i] - ((float)i - 20.0f)) <= 10.0f / 127.0f + 1e-6f);
    dg_msg_free(t, m);
    dg__coder_free(&co);
    dg_transport_close(t);
}

#ifndef DG_NO_TCP
/* The TCP handshake's config hash covers the codecs, so processes that
   disagree do not connect; with none everywhere it is the hash of before. */
TEST(config_hash_covers_the_codecs)
{
    dg_mdgan_config a = small_config(2), b = small_config(2);
    dg_flgan_config fa = small_flgan_config(2, 1), fb = small_flgan_config(2, 1);
    unsigned char ha[32], hb[32];
    dg_tcp_mdgan_config_hash(&a, NULL, ha);
    dg_tcp_mdgan_config_hash(&b, NULL, hb);
    CHECK(!memcmp(ha, hb, 32));
    b.codec.swap.kind = DG_CODEC_F16;
    dg_tcp_mdgan_config_hash(&b, NULL, hb);
    CHECK(memcmp(ha, hb, 32));
    dg_tcp_flgan_config_hash(&fa, NULL, ha);
    fb.codec.upload = codec(DG_CODEC_TOPK, 0.02f, 0);
    dg_tcp_flgan_config_hash(&fb, NULL, hb);
    CHECK(memcmp(ha, hb, 32));
    fa.codec.upload = codec(DG_CODEC_TOPK, 0.01f, 0);
    dg_tcp_flgan_config_hash(&fa, NULL, ha);
    CHECK(memcmp(ha, hb, 32)); /* the rate counts too */
    fb = fa;
    fa.codec.download = codec(DG_CODEC_TOPK, 0.01f, 0);
    fb.codec.download = codec(DG_CODEC_TOPK, 0.05f, 0);
    dg_tcp_flgan_config_hash(&fa, NULL, ha);
    dg_tcp_flgan_config_hash(&fb, NULL, hb);
    CHECK(memcmp(ha, hb, 32)); /* download deltas: their rate too */
}
#endif

int main(void)
{
    if (!pools_create()) return 1;
    RUN(f16_round_trip_is_nearest_even_within_2_11);
    RUN(int8_rows_within_half_a_scale);
    RUN(topk_keeps_exactly_the_k_largest_and_the_residual_adds_up);
    RUN(ibm_sends_sign_times_scale_and_the_residual_adds_up);
    RUN(malformed_payloads_are_refused_naming_the_rule);
    RUN(codec_options_parse_strictly);
    RUN(mdgan_codecs_count_fewer_wire_bytes);
    RUN(mdgan_swap_f16_halves_the_swap);
    RUN(flgan_delta_uploads);
    RUN(flgan_download_deltas_keep_references_equal);
    RUN(flgan_download_deltas_at_c1_catch_up);
    RUN(flgan_download_deltas_unknown_worker_gets_the_model);
    RUN(flgan_coded_resume_is_exact);
    RUN(codec_mismatch_is_refused);
    RUN(coded_messages_keep_their_header);
#ifndef DG_NO_TCP
    RUN(config_hash_covers_the_codecs);
#endif
    pools_destroy();
    return th_done();
}
