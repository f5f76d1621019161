/* test_readme_example: the MD-GAN example at the top of distgan.h, so that it
 * cannot rot.  The lines between "example: begin" and "example: end" below
 * are the header's example (the test checks that the two texts agree, the
 * "test only" blocks aside), and running them must train: G's parameters
 * change, the losses stay finite, the sample grid is written. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the example's lines in file `path` between the two markers, each without
   its leading blanks and without any comment-marker prefix; `skip` drops
   the "test only" blocks.  Returns a malloc'd text or NULL. */
static char *example_text(const char *path, const char *begin, const char *end, int skip)
{
    FILE *f = fopen(path, "r");
    char line[512], *out;
    size_t n = 0, cap = 1 << 16;
    int in = 0, hidden = 0;
    if (!f) return NULL;
    out = (char *)malloc(cap);
    if (!out) {
        fclose(f);
        return NULL;
    }
    out[0] = 0;
    while (fgets(line, sizeof line, f)) {
        const char *s = line;
        size_t len;
        if (strstr(line, end) && in) break;
        if (strstr(line, begin)) {
            in = 1;
            continue;
        }
        if (!in) continue;
        if (skip && strstr(line, "test only {")) hidden = 1;
        if (!hidden) {
            while (*s == ' ') s++;
            len = strlen(s);
            if (len > 1 && n + len + 1 < cap) {
                memcpy(out + n, s, len + 1);
                n += len;
            }
        }
        if (skip && strstr(line, "} test only")) hidden = 0;
    }
    fclose(f);
    return out;
}

/* returns G's parameters, copied */
static float *copy_params(dg_net *g)
{
    size_t n = dg_net_param_count(g);
    float *p = (float *)malloc(sizeof(float) * n);
    if (p) memcpy(p, dg_net_params(g), sizeof(float) * n);
    return p;
}

static float *g0;
static size_t g_changed, g_count;
static int finite_losses = 1, iterations;

static int run_example(void)
{
    /* example: begin */
    dg_pool *pool;  dg_dataset train, test;  dg_partition part;  dg_mdgan_run *run;
    dg_mdgan_config c = dg_mdgan_config_init();
    dg_gan_sampler s = {0};
    float g_in[32 * 100];                                 // chunk x z_dim noise scratch
    int it;
    if (dg_pool_create(&pool, 0) ||                       // one thread per core
        dg_dataset_open("shapes:2000", 1, &train, &test)) // or "fashion", "idx:DIR", ...
        return 1;
    c.n_workers = 4;                                      // N workers, each with its own D
    c.c = train.c;  c.h = train.h;  c.w = train.w;        // image shape
    c.arch = DG_ARCH_MLP;  c.batch = 32;                  // the MD-GAN paper's MLPs
    if (dg_partition_iid(&part, train.n, c.n_workers, 1) ||  // each worker's shard
        dg_mdgan_run_create(&run, &c, pool, &train, &part, NULL, 0, NULL, 0))
        return 1;                                         // dg_last_error() says why
    s.g = dg_mdgan_server_generator(dg_mdgan_run_server(run)); // the server's G
    s.z_dim = c.z_dim;  s.chunk = c.batch;  s.g_in = g_in;
    /* test only { */
    g0 = copy_params(s.g);
    /* } test only */
    for (it = 1; it <= 200; it++) {   // G on the server, D on each worker, Ds swap
        const dg_mdgan_stats *st;
        if (dg_mdgan_run_iteration(run)) return 1;
        st = dg_mdgan_server_stats(dg_mdgan_run_server(run));
        if (it % 50 == 0) printf("it %d: D %.3f G %.3f\n", it, st->d_loss, st->g_loss);
        /* test only { */
        finite_losses &= isfinite(st->d_loss) && isfinite(st->g_loss);
        iterations = (int)st->iteration;
        /* } test only */
    }
    dg_gan_write_samples(&s, 7, 100, 10, "mdgan.png");    // a 10x10 grid of G's samples
    /* test only { */
    if (g0) {
        const float *g1 = dg_net_params(s.g);
        size_t i;
        g_count = dg_net_param_count(s.g);
        for (i = 0; i < g_count; i++) g_changed += g1[i] != g0[i];
    }
    /* } test only */
    dg_mdgan_run_free(run);  dg_partition_free(&part);
    dg_dataset_free(&train);  dg_dataset_free(&test);  dg_pool_destroy(pool);
    /* example: end */
    return 0;
}

TEST(example_matches_header)
{
    /* __FILE__ is tests/test_readme_example.c as make compiles it */
    char hdr[1024];
    char *mine, *theirs;
    const char *slash = strrchr(__FILE__, '/');
    size_t dir = slash ? (size_t)(slash - __FILE__) : 0;
    snprintf(hdr, sizeof hdr, "%.*s%s../distgan.h", (int)dir, __FILE__, dir ? "/" : "");
    mine = example_text(__FILE__, "/* example: begin */", "/* example: end */", 1);
    theirs = example_text(hdr, "grid in mdgan.png):", "More: docs/api.md", 0);
    CHECK(mine && theirs);
    if (mine && theirs) {
        CHECK(strlen(theirs) > 500);
        CHECK(strcmp(mine, theirs) == 0);
        if (strcmp(mine, theirs))
            fprintf(stderr, "---- test:\n%s---- distgan.h:\n%s----\n", mine, theirs);
    }
    free(mine);
    free(theirs);
}

TEST(example_trains)
{
    FILE *f;
    remove("mdgan.png");
    CHECK(run_example() == 0);
    CHECK(iterations == 200);
    CHECK(finite_losses);
    CHECK(g0 != NULL);
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
    RUN(example_matches_header);
    RUN(example_trains);
    return th_done();
}
