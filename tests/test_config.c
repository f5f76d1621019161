/* The config and rng sections: result strings, the thread-local error
   message, CRC-32 against its check value and a bitwise reference, the
   random streams (reproducible, independent, unbiased), and the strict
   parsing of numbers and command-line options. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

TEST(result_strings)
{
    int r, distinct = 1;
    for (r = 0; r >= -14; r--) {
        const char *s = dg_result_str((dg_result)r);
        distinct &= s != NULL && strcmp(s, "unknown error") != 0;
    }
    CHECK(distinct);
    CHECK(strcmp(dg_result_str((dg_result)-99), "unknown error") == 0);
}

static void *fail_on_thread(void *arg)
{
    (void)arg;
    dg_net_create(NULL, 1, 1, 1);
    return NULL;
}

TEST(last_error_is_per_thread)
{
    pthread_t t;
    dg_net *net;
    CHECK(dg_net_create(&net, 0, 5, 5) == DG_ERR_SHAPE);
    CHECK(strstr(dg_last_error(), "0x5x5") != NULL);
    pthread_create(&t, NULL, fail_on_thread, NULL);
    pthread_join(t, NULL);
    CHECK(strstr(dg_last_error(), "0x5x5") != NULL); /* the other thread's failure is its own */
}

static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        for (k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

TEST(crc32)
{
    /* every length to 300 (the 16-byte short path, the 64-byte and the
       AVX-512 paths' edges), past 256 bytes (several steps of the 64-byte
       lanes) and from odd addresses */
    unsigned char buf[3000];
    size_t i, n;
    int ok = 1;
    CHECK(dg_crc32(0, "123456789", 9) == 0xCBF43926u); /* the standard check value */
    CHECK(dg_crc32(0, "", 0) == 0);
    for (i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 37 + 11 + (i >> 8));
    for (n = 0; n + 1 <= sizeof buf; n += n < 300 ? 1 : 13) {
        uint32_t ref = crc_bitwise(buf, n), ref1 = crc_bitwise(buf + 1, n);
        ok &= dg_crc32(0, buf, n) == ref;
        ok &= dg_crc32(0, buf + 1, n) == ref1;
        ok &= dg_crc32(dg_crc32(0, buf, n / 3), buf + n / 3, n - n / 3) == ref; /* streaming */
    }
    CHECK(ok);
}

TEST(rng_streams)
{
    dg_rng a = dg_rng_make(1, 2, 3), b = dg_rng_make(1, 2, 3), c = dg_rng_make(1, 2, 4);
    int i, same = 1, differ = 0, counts[7] = {0};
    double s = 0, ss = 0;
    for (i = 0; i < 100; i++) {
        uint64_t x = dg_rng_u64(&a), y = dg_rng_u64(&b), z = dg_rng_u64(&c);
        same &= x == y;
        differ += x != z;
    }
    CHECK(same);
    CHECK(differ == 100);
    for (i = 0; i < 70000; i++) counts[dg_rng_below(&a, 7)]++;
    for (i = 0; i < 7; i++) CHECK(counts[i] > 9500 && counts[i] < 10500); /* +-5 sigma */
    for (i = 0; i < 100000; i++) {
        float v = dg_rng_normal(&a);
        s += v;
        ss += (double)v * v;
    }
    CHECK_NEAR(s / 100000, 0.0, 0.02);
    CHECK_NEAR(ss / 100000, 1.0, 0.02);
    for (i = 0; i < 10000; i++) {
        float u = dg_rng_uniform(&a);
        same &= u >= 0.0f && u < 1.0f;
    }
    CHECK(same);
    CHECK(dg_rng_below(&a, 0) == 0);
}

TEST(rng_shuffle_is_permutation)
{
    uint32_t p[100], seen[100] = {0};
    int i, ok = 1, moved = 0;
    dg_rng r = dg_rng_make(5, 5, 5);
    for (i = 0; i < 100; i++) p[i] = (uint32_t)i;
    dg_rng_shuffle(&r, p, 100);
    for (i = 0; i < 100; i++) {
        ok &= p[i] < 100 && !seen[p[i]];
        seen[p[i]] = 1;
        moved += p[i] != (uint32_t)i;
    }
    CHECK(ok);
    CHECK(moved > 80);
}

/* ---- strict parsing ---- */

TEST(parse_int)
{
    static const char *const bad[] = {"", " 5", "5 ", "\t5", "5\n", "5x", "abc", "0x10", "1e3",
                                      "1.0", "--5", "- 5", "99999999999999999999",
                                      "-99999999999999999999", "0", "1000000001", "-1"};
    long long v = 42;
    size_t i;
    CHECK_OK(dg_parse_int("1", 1, 1000000000, &v));
    CHECK(v == 1);
    CHECK_OK(dg_parse_int("1000000000", 1, 1000000000, &v));
    CHECK(v == 1000000000);
    CHECK_OK(dg_parse_int("-7", -10, 10, &v));
    CHECK(v == -7);
    CHECK_OK(dg_parse_int("+7", -10, 10, &v));
    CHECK(v == 7);
    CHECK_OK(dg_parse_int("9223372036854775807", 0, INT64_MAX, &v));
    CHECK(v == INT64_MAX);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char quoted[40];
        int ok;
        v = 42;
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        ok = dg_parse_int(bad[i], 1, 1000000000, &v) == DG_ERR_ARG && v == 42 &&
             strstr(dg_last_error(), quoted) && strstr(dg_last_error(), "[1, 1000000000]");
        if (!ok) printf("  \"%s\": %s\n", bad[i], dg_last_error());
        CHECK(ok);
    }
    CHECK(strcmp(dg_last_error(), "'-1' is not an integer in [1, 1000000000]") == 0);
    CHECK(dg_parse_int(NULL, 0, 1, &v) == DG_ERR_ARG && v == 42);
}

TEST(parse_u64)
{
    static const char *const bad[] = {"", "-1", "+1", " 1", "1 ", "1x", "abc", "0x1",
                                      "18446744073709551616", "99999999999999999999999", "-0"};
    uint64_t v = 42;
    size_t i;
    CHECK_OK(dg_parse_u64("0", &v));
    CHECK(v == 0);
    CHECK_OK(dg_parse_u64("18446744073709551615", &v));
    CHECK(v == UINT64_MAX);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 42;
        CHECK(dg_parse_u64(bad[i], &v) == DG_ERR_ARG && v == 42 &&
              strstr(dg_last_error(), "18446744073709551615]"));
    }
    CHECK(dg_parse_u64(NULL, &v) == DG_ERR_ARG);
}

TEST(parse_float)
{
    static const char *const bad[] = {"", " 1", "1 ", "1x", "abc", "nan", "NaN", "inf", "-inf",
                                      "Infinity", "1e999", "-1e999", "1e-999", "1,5", "1..2",
                                      "2", "-0.5"};
    double v = 42;
    size_t i;
    CHECK_OK(dg_parse_float("0.5", 0, 1, &v));
    CHECK(v == 0.5);
    CHECK_OK(dg_parse_float("2e-4", 0, 1, &v));
    CHECK(v == 2e-4);
    CHECK_OK(dg_parse_float("-1", -1, 1, &v));
    CHECK(v == -1);
    CHECK_OK(dg_parse_float("1", 0, 1, &v)); /* the range is inclusive */
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int ok;
        v = 42;
        ok = dg_parse_float(bad[i], 0, 1, &v) == DG_ERR_ARG && v == 42 &&
             strstr(dg_last_error(), "is not a number in [0, 1]");
        if (!ok) printf("  \"%s\": %s\n", bad[i], dg_last_error());
        CHECK(ok);
    }
    CHECK(dg_parse_float(NULL, 0, 1, &v) == DG_ERR_ARG);
}

TEST(options_table)
{
    int flag = 0, n = 5, choice = 1;
    int64_t big = 0;
    uint64_t seed = 0;
    float lr = 0;
    double alpha = 0;
    const char *name = NULL;
    const dg_option table[] = {
        {"--flag", DG_OPT_FLAG, &flag, 0, 0, NULL},
        {"--n", DG_OPT_INT, &n, 1, 10, NULL},
        {"--iters", DG_OPT_INT64, &big, 1, 1e9, NULL},
        {"--seed", DG_OPT_U64, &seed, 0, 0, NULL},
        {"--lr", DG_OPT_FLOAT, &lr, 1e-8, 1, NULL},
        {"--alpha", DG_OPT_DOUBLE, &alpha, 0, 100, NULL},
        {"--name", DG_OPT_STRING, &name, 0, 0, NULL},
        {"--algo", DG_OPT_CHOICE, &choice, 0, 0, "gan|mdgan|flgan"},
    };
    char *good[] = {"prog", "--flag", "--n", "7", "--iters", "1000000000", "--seed",
                    "18446744073709551615", "--lr", "2e-4", "--alpha", "0.5", "--name", "x y",
                    "--algo", "flgan"};
    struct { const char *arg, *value, *msg; } bad[] = {
        {"--iters", "abc", "--iters: 'abc' is not an integer in [1, 1000000000]"},
        {"--iters", "-5", "--iters: '-5' is not an integer in [1, 1000000000]"},
        {"--iters", "0", "--iters: '0' is not an integer in [1, 1000000000]"},
        {"--n", "11", "--n: '11' is not an integer in [1, 10]"},
        {"--n", "3 ", "--n: '3 ' is not an integer in [1, 10]"},
        {"--seed", "-1", "--seed: '-1' is not an integer in [0, 18446744073709551615]"},
        {"--lr", "nan", "--lr: 'nan' is not a number in [1e-08, 1]"},
        {"--alpha", "inf", "--alpha: 'inf' is not a number in [0, 100]"},
        {"--algo", "md", "--algo: 'md' is not one of gan|mdgan|flgan"},
        {"--algo", "", "--algo: '' is not one of gan|mdgan|flgan"},
        {"--bogus", "1", "unknown option '--bogus'"},
        {"--n", NULL, "--n needs a value"},
    };
    size_t i;
    const int n_table = (int)(sizeof table / sizeof table[0]);
    CHECK_OK(dg_options_parse(table, n_table, (int)(sizeof good / sizeof good[0]), good, 1));
    CHECK(flag == 1 && n == 7 && big == 1000000000 && seed == UINT64_MAX && lr == 2e-4f &&
          alpha == 0.5 && name == good[13] && choice == 2);
    CHECK_OK(dg_options_parse(table, n_table, 1, good, 1)); /* nothing to parse */
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[3] = {"prog", (char *)bad[i].arg, (char *)bad[i].value};
        int ok;
        n = 5;
        ok = dg_options_parse(table, n_table, bad[i].value ? 3 : 2, argv, 1) == DG_ERR_ARG &&
             !strcmp(dg_last_error(), bad[i].msg) && n == 5;
        if (!ok) printf("  %s %s: %s\n", bad[i].arg, bad[i].value ? bad[i].value : "", dg_last_error());
        CHECK(ok);
    }
    /* the first argument parsed is `first`: a mode word before the options */
    {
        char *argv[] = {"prog", "server", "--n", "3"};
        CHECK_OK(dg_options_parse(table, n_table, 4, argv, 2));
        CHECK(n == 3);
        CHECK(dg_options_parse(table, n_table, 4, argv, 1) == DG_ERR_ARG &&
              strstr(dg_last_error(), "'server'"));
    }
}

TEST(clock_and_hms)
{
    char b[DG_HMS_SIZE];
    double t0 = dg_clock_seconds(), t1 = dg_clock_seconds();
    CHECK(t0 > 0 && t1 >= t0);
    CHECK(strcmp(dg_format_hms(0, b), "0m00s") == 0);
    CHECK(strcmp(dg_format_hms(65.4, b), "1m05s") == 0);
    CHECK(strcmp(dg_format_hms(3599.4, b), "59m59s") == 0);
    CHECK(strcmp(dg_format_hms(3599.6, b), "1h00m") == 0);
    CHECK(strcmp(dg_format_hms(3 * 3600 + 7 * 60 + 20, b), "3h07m") == 0);
    CHECK(strcmp(dg_format_hms(-5, b), "0m00s") == 0);
    CHECK(strcmp(dg_format_hms(0.0 / 0.0, b), "0m00s") == 0);
    CHECK(strcmp(dg_format_hms(1e300, b), "277777777h46m") == 0); /* capped at 1e12 s */
}

int main(void)
{
    RUN(result_strings);
    RUN(last_error_is_per_thread);
    RUN(crc32);
    RUN(rng_streams);
    RUN(rng_shuffle_is_permutation);
    RUN(parse_int);
    RUN(parse_u64);
    RUN(parse_float);
    RUN(options_table);
    RUN(clock_and_hms);
    return th_done();
}
