/* test_readme_example: the MD-GAN example at the top of distgan.h, so that it
 * cannot rot.  The build copies the example out of the header's comment into
 * build/readme_example.inc (the Makefile's rule: the lines after the one that
 * names this file, up to the next blank line), and run_example() below is
 * that text, compiled as it stands.  Running it must train: G's parameters
 * change, the losses stay finite, the sample grid is written.  The test
 * watches through three of the example's calls, which the macros below
 * route through wrappers that record and then call the library. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *g0;      /* G's parameters before the first iteration */
static size_t g_changed, g_count;
static int finite_losses = 1, iterations, freed;

static dg_net *run_generator(dg_mdgan_run *r)
{
    return dg_mdgan_server_generator(dg_mdgan_run_server(r));
}

static dg_result watched_iteration(dg_mdgan_run *r)
{
    const dg_mdgan_stats *st;
    dg_result res;
    if (!g0) {
        dg_net *g = run_generator(r);
        size_t n = dg_net_param_count(g);
        if ((g0 = (float *)malloc(sizeof(float) * n))) memcpy(g0, dg_net_params(g), sizeof(float) * n);
        g_count = n;
    }
    res = dg_mdgan_run_iteration(r);
    st = dg_mdgan_server_stats(dg_mdgan_run_server(r));
    finite_losses &= isfinite(st->d_loss) && isfinite(st->g_loss);
    iterations = (int)st->iteration;
    return res;
}

/* the end of the run: how many of G's parameters moved since g0 */
static void watched_free(dg_mdgan_run *r)
{
    if (g0) {
        const float *g1 = dg_net_params(run_generator(r));
        size_t i;
        for (i = 0; i < g_count; i++) g_changed += g1[i] != g0[i];
    }
    freed = 1;
    dg_mdgan_run_free(r);
}

#define dg_mdgan_run_iteration(r) watched_iteration(r)
#define dg_mdgan_run_free(r) watched_free(r)

static int run_example(void)
{
#include "readme_example.inc"
/* the rule counts the lines it copied: none means the header's text moved */
#if !defined(README_EXAMPLE_LINES) || README_EXAMPLE_LINES < 10
#error "build/readme_example.inc holds no example: see its rule in the Makefile"
#endif
    return 0;
}

#undef dg_mdgan_run_iteration
#undef dg_mdgan_run_free

TEST(example_trains)
{
    FILE *f;
    remove("mdgan.png");
    CHECK(run_example() == 0);
    CHECK(iterations == 200);
    CHECK(finite_losses);
    CHECK(g0 != NULL);
    CHECK(freed);
    /* Adam moves every weight G's gradient reaches: nearly all of them */
    CHECK(g_count > 0 && g_changed > g_count / 2);
    f = fopen("mdgan.png", "rb");
    CHECK(f != NULL);
    if (f) fclose(f);
    remove("mdgan.png");
    free(g0);
}

int main(void)
{
    RUN(example_trains);
    return th_done();
}
