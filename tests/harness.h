/* tests/harness.h: the tiny test harness shared by every test program.
 *
 *   TEST(name) { CHECK(x == 1); CHECK_NEAR(a, b, 1e-5); }
 *   int main(void) { RUN(name); return th_done(); }
 *   check_same_floats(what, a, na, b, nb)   a and b the same bits: checked,
 *                                           and said on one line
 *
 * Each program prints one line per failed check, one line per test, and a
 * last line "N passed, N failed"; tests/run.sh adds the programs' lines up. */
#ifndef DG_TEST_HARNESS_H
#define DG_TEST_HARNESS_H
#include <math.h>
#include <stdio.h>
#include <string.h>

static int th_passed, th_failed, th_cur_failed;

#define TEST(name) static void name(void)
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            th_cur_failed++;                                                 \
            printf("  check failed %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                    \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                   \
    do {                                                                        \
        double th_a_ = (double)(a), th_b_ = (double)(b);                        \
        if (!(fabs(th_a_ - th_b_) <= (tol))) {                                  \
            th_cur_failed++;                                                    \
            printf("  check failed %s:%d: %s = %.9g, %s = %.9g (tol %g)\n",     \
                   __FILE__, __LINE__, #a, th_a_, #b, th_b_, (double)(tol));    \
        }                                                                       \
    } while (0)
#define CHECK_OK(expr)                                                         \
    do {                                                                       \
        int th_r_ = (int)(expr);                                               \
        if (th_r_ != 0) {                                                      \
            th_cur_failed++;                                                   \
            printf("  check failed %s:%d: %s returned %d\n", __FILE__,         \
                   __LINE__, #expr, th_r_);                                    \
        }                                                                      \
    } while (0)
#define RUN(name)                                                   \
    do {                                                            \
        th_cur_failed = 0;                                          \
        name();                                                     \
        if (th_cur_failed) th_failed++; else th_passed++;           \
        printf("%s %s\n", th_cur_failed ? "FAIL" : "ok  ", #name);  \
        fflush(stdout);                                             \
    } while (0)

/* Checks that a (na floats) and b (nb) are the same bits, and says so:
   "  <what>: <na> floats, bit-identical" (or DIFFERENT). */
static inline void check_same_floats(const char *what, const float *a, size_t na, const float *b,
                                     size_t nb)
{
    int same;
    CHECK(a && b && na == nb && na > 0);
    if (!a || !b || na != nb || na == 0) return;
    same = memcmp(a, b, na * sizeof(float)) == 0;
    CHECK(same);
    printf("  %s: %zu floats, %s\n", what, na, same ? "bit-identical" : "DIFFERENT");
}

static int th_done(void)
{
    printf("%d passed, %d failed\n", th_passed, th_failed);
    return th_failed ? 1 : 0;
}
#endif
