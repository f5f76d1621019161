/* The config and rng sections: result strings, the thread-local error
   message, CRC-32 against its check value and a bitwise reference, and the
   random streams (reproducible, independent, unbiased). */
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
    unsigned char buf[1000];
    size_t i, n;
    int ok = 1;
    CHECK(dg_crc32(0, "123456789", 9) == 0xCBF43926u); /* the standard check value */
    CHECK(dg_crc32(0, "", 0) == 0);
    for (i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 37 + 11);
    for (n = 0; n <= sizeof buf; n += 13) {
        uint32_t ref = crc_bitwise(buf, n);
        ok &= dg_crc32(0, buf, n) == ref;
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

int main(void)
{
    RUN(result_strings);
    RUN(last_error_is_per_thread);
    RUN(crc32);
    RUN(rng_streams);
    RUN(rng_shuffle_is_permutation);
    return th_done();
}
