/* Optimisers against hand-computed steps; checkpoints: round trip and
   rejection of truncated, corrupted, wrong-version and wrong-architecture
   files without touching the net. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include <sys/stat.h> /* mkdir, after distgan.h has made POSIX visible */

static dg_pool *pool;

TEST(sgd_momentum_by_hand)
{
    dg_optim o;
    float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, 0.25f};
    CHECK_OK(dg_optim_sgd(&o, 2, 0.1f, 0.9f));
    CHECK_OK(dg_optim_step(&o, pool, p, g)); /* buf = g; p -= 0.1 g */
    CHECK_NEAR(p[0], 0.95, 1e-7);
    CHECK_NEAR(p[1], -2.025, 1e-7);
    CHECK_OK(dg_optim_step(&o, pool, p, g)); /* buf = 0.9 g + g = 1.9 g */
    CHECK_NEAR(p[0], 0.95 - 0.1 * 1.9 * 0.5, 1e-6);
    CHECK_NEAR(p[1], -2.025 - 0.1 * 1.9 * 0.25, 1e-6);
    dg_optim_free(&o);
}

TEST(adam_by_hand)
{
    dg_optim o;
    float p[1] = {1.0f}, g1[1] = {0.5f}, g2[1] = {-1.0f};
    double m, v, mh, vh, expect;
    CHECK_OK(dg_optim_adam(&o, 1, 0.01f, 0.9f, 0.999f, 1e-8f));
    /* step 1: m = 0.05, v = 0.00025, m^ = 0.5, v^ = 0.25: p -= 0.01 */
    CHECK_OK(dg_optim_step(&o, pool, p, g1));
    CHECK_NEAR(p[0], 0.99, 1e-6);
    /* step 2 */
    CHECK_OK(dg_optim_step(&o, pool, p, g2));
    m = 0.9 * 0.05 + 0.1 * -1.0;
    v = 0.999 * 0.00025 + 0.001 * 1.0;
    mh = m / (1 - 0.81);
    vh = v / (1 - 0.999 * 0.999);
    expect = 0.99 - 0.01 * mh / (sqrt(vh) + 1e-8);
    CHECK_NEAR(p[0], expect, 1e-6);
    CHECK(o.t == 2);
    CHECK_NEAR(o.state[0], m, 1e-7);
    CHECK_NEAR(o.state[1], v, 2e-7); /* 1 - 0.999f is not 0.001 in float */
    dg_optim_reset(&o);
    CHECK(o.t == 0 && o.state[0] == 0.0f);
    dg_optim_free(&o);
}

/* Adam's SIMD kernels run blocks of 16 and a scalar tail: 37 entries,
   two steps, each instruction set against the formula in double. */
TEST(adam_every_lane_every_isa)
{
    enum { N = 37 };
    int isa, i, s;
    dg_pool *pl;
    CHECK_OK(dg_pool_create(&pl, 1));
    for (isa = 0; isa <= (int)dg_isa_best(); isa++) {
        dg_optim o;
        float p[N], g[N];
        double rp[N], rm[N] = {0}, rv[N] = {0}, worst = 0.0;
        CHECK_OK(dg_pool_set_isa(pl, (dg_isa)isa));
        CHECK_OK(dg_optim_adam(&o, N, 0.01f, 0.5f, 0.999f, 1e-8f));
        for (i = 0; i < N; i++) rp[i] = p[i] = (float)sin(i + 1.0);
        for (s = 1; s <= 2; s++) {
            for (i = 0; i < N; i++) {
                double gd = g[i] = (float)(cos(3.0 * i) * s);
                rm[i] = 0.5 * rm[i] + 0.5 * gd;
                rv[i] = 0.999 * rv[i] + 0.001 * gd * gd;
                rp[i] -= 0.01 * (rm[i] / (1 - pow(0.5, s))) /
                         (sqrt(rv[i] / (1 - pow(0.999, s))) + 1e-8);
            }
            CHECK_OK(dg_optim_step(&o, pl, p, g));
        }
        for (i = 0; i < N; i++)
            if (fabs(p[i] - rp[i]) > worst) worst = fabs(p[i] - rp[i]);
        if (worst > 1e-5) printf("  %s: max error %g\n", dg_isa_name((dg_isa)isa), worst);
        CHECK(worst <= 1e-5);
        dg_optim_free(&o);
    }
    dg_pool_destroy(pl);
}

TEST(optim_rejects_bad_config)
{
    dg_optim o;
    CHECK(dg_optim_adam(&o, 10, 0.0f, 0.9f, 0.999f, 1e-8f) == DG_ERR_ARG);
    CHECK(dg_optim_adam(&o, 10, 1e-3f, 1.0f, 0.999f, 1e-8f) == DG_ERR_ARG);
    CHECK(dg_optim_adam(&o, 0, 1e-3f, 0.5f, 0.999f, 1e-8f) == DG_ERR_ARG);
    CHECK(dg_optim_sgd(&o, 10, 0.1f, -0.5f) == DG_ERR_ARG);
    CHECK(dg_optim_sgd(NULL, 10, 0.1f, 0.5f) == DG_ERR_ARG);
}

static dg_net *small_net(int hidden)
{
    dg_net *net;
    if (dg_net_create(&net, 1, 6, 6)) return NULL;
    dg_net_conv2d(net, 3, 3, 1, 1);
    dg_net_batchnorm(net);
    dg_net_relu(net);
    dg_net_flatten(net);
    dg_net_linear(net, hidden);
    if (dg_net_plan(net, pool, 4)) return NULL;
    return net;
}

static void train_a_bit(dg_net *net, dg_optim *o)
{
    float x[4 * 36], dy[4 * 5];
    const float *y;
    int i;
    dg_rng rng = dg_rng_make(1, 2, 3);
    for (i = 0; i < 3; i++) {
        dg_rng_fill_uniform(&rng, x, 4 * 36, -1, 1);
        dg_rng_fill_uniform(&rng, dy, 4 * 5, -1, 1);
        dg_net_zero_grad(net);
        dg_net_forward(net, x, 4, 1, &y);
        dg_net_backward(net, dy, NULL);
        dg_optim_step(o, pool, dg_net_params(net), dg_net_grads(net));
    }
}

static int same(const float *a, const float *b, size_t n) { return memcmp(a, b, n * 4) == 0; }

TEST(checkpoint_round_trip)
{
    dg_net *a = small_net(5), *b = small_net(5);
    dg_optim oa, ob;
    const char *path = "build/test_optim_ckpt.bin";
    CHECK(a && b);
    CHECK_OK(dg_net_init(a, 1, 0.0f));
    CHECK_OK(dg_net_init(b, 2, 0.0f));
    CHECK_OK(dg_optim_adam(&oa, dg_net_param_count(a), 1e-3f, 0.5f, 0.999f, 1e-8f));
    CHECK_OK(dg_optim_adam(&ob, dg_net_param_count(b), 1e-3f, 0.5f, 0.999f, 1e-8f));
    train_a_bit(a, &oa);
    CHECK_OK(dg_net_save(a, &oa, path));
    CHECK_OK(dg_net_load(b, &ob, path));
    CHECK(same(dg_net_params(a), dg_net_params(b), dg_net_param_count(a)));
    CHECK(same(dg_net_state(a), dg_net_state(b), dg_net_state_count(a)));
    CHECK(same(oa.state, ob.state, dg_optim_state_count(&oa)));
    CHECK(oa.t == ob.t && ob.t == 3);
    /* training on from both gives the same result */
    train_a_bit(a, &oa);
    train_a_bit(b, &ob);
    CHECK(same(dg_net_params(a), dg_net_params(b), dg_net_param_count(a)));
    /* without the optimiser */
    CHECK_OK(dg_net_save(a, NULL, path));
    CHECK_OK(dg_net_init(b, 3, 0.0f));
    CHECK_OK(dg_net_load(b, NULL, path));
    CHECK(same(dg_net_params(a), dg_net_params(b), dg_net_param_count(a)));
    remove(path);
    dg_optim_free(&oa);
    dg_optim_free(&ob);
    dg_net_free(a);
    dg_net_free(b);
}

TEST(checkpoint_rejects_bad_files)
{
    dg_net *a = small_net(5), *b = small_net(5), *other = small_net(6);
    dg_optim oa, sgd;
    unsigned char *buf, *bad;
    size_t len, i, cut;
    float *before;
    int all_rejected = 1, untouched = 1;
    CHECK_OK(dg_net_init(a, 1, 0.0f));
    CHECK_OK(dg_net_init(b, 2, 0.0f));
    CHECK_OK(dg_optim_adam(&oa, dg_net_param_count(a), 1e-3f, 0.5f, 0.999f, 1e-8f));
    CHECK_OK(dg_optim_sgd(&sgd, dg_net_param_count(a), 0.1f, 0.0f));
    len = dg_net_save_size(a, &oa);
    buf = malloc(len);
    bad = malloc(len);
    before = malloc(dg_net_param_count(b) * 4);
    memcpy(before, dg_net_params(b), dg_net_param_count(b) * 4);
    CHECK_OK(dg_net_save_mem(a, &oa, buf, len, &i));
    CHECK(i == len);
    CHECK(dg_net_save_mem(a, &oa, buf, len - 1, &i) == DG_ERR_TOO_LARGE);
    /* every truncation */
    for (cut = 0; cut < len; cut++) {
        dg_result r = dg_net_load_mem(b, NULL, buf, cut);
        all_rejected &= r == DG_ERR_FORMAT;
    }
    CHECK(all_rejected);
    /* a flipped bit anywhere in the section: CRC mismatch */
    all_rejected = 1;
    for (i = 32; i < len; i += 13) {
        memcpy(bad, buf, len);
        bad[i] ^= 0x10;
        all_rejected &= dg_net_load_mem(b, NULL, bad, len) == DG_ERR_CHECKSUM;
    }
    CHECK(all_rejected);
    /* in the container's and the section's headers: refused all the same */
    all_rejected = 1;
    for (i = 0; i < 32; i++) {
        dg_result r;
        memcpy(bad, buf, len);
        bad[i] ^= 0x10;
        r = dg_net_load_mem(b, NULL, bad, len);
        all_rejected &= r == DG_ERR_FORMAT || r == DG_ERR_VERSION || r == DG_ERR_CHECKSUM;
    }
    CHECK(all_rejected);
    /* a file of the old format names it */
    memcpy(bad, buf, len);
    memcpy(bad, "DGNT", 4);
    CHECK(dg_net_load_mem(b, NULL, bad, len) == DG_ERR_VERSION);
    CHECK(strstr(dg_last_error(), "DGNT") && strstr(dg_last_error(), "re-create"));
    memcpy(bad, buf, len);
    bad[0] = 'X';
    CHECK(dg_net_load_mem(b, NULL, bad, len) == DG_ERR_FORMAT);
    memcpy(bad, buf, len);
    bad[4] = 3; /* version 3 */
    CHECK(dg_net_load_mem(b, NULL, bad, len) == DG_ERR_VERSION);
    CHECK(strstr(dg_last_error(), "version 3") != NULL);
    CHECK(dg_net_load_mem(other, NULL, buf, len) == DG_ERR_CONFIG); /* other architecture */
    CHECK(dg_net_load_mem(b, &sgd, buf, len) == DG_ERR_CONFIG);      /* other optimiser */
    CHECK(dg_net_load(b, NULL, "build/does/not/exist.bin") == DG_ERR_IO);
    untouched = same(before, dg_net_params(b), dg_net_param_count(b));
    CHECK(untouched);
    /* a truncated file on disk */
    {
        FILE *f = fopen("build/test_optim_trunc.bin", "wb");
        fwrite(buf, 1, len / 2, f);
        fclose(f);
        CHECK(dg_net_load(b, NULL, "build/test_optim_trunc.bin") == DG_ERR_FORMAT);
        remove("build/test_optim_trunc.bin");
    }
    free(buf);
    free(bad);
    free(before);
    dg_optim_free(&oa);
    dg_optim_free(&sgd);
    dg_net_free(a);
    dg_net_free(b);
    dg_net_free(other);
}

/* The checkpoint of another kind is refused by name. */
TEST(container_kinds)
{
    static const uint32_t types[2] = {DG__SEC_STATE, DG__SEC_NET};
    unsigned char buf[256];
    dg__wbuf w = {buf, 0, sizeof buf};
    dg__rbuf sec[2];
    size_t start;
    dg__ck_begin(&w, DG__CK_MDGAN_WORKER, 2);
    start = dg__ck_section(&w, DG__SEC_STATE);
    dg__put_u64(&w, 7);
    dg__ck_end(&w, start);
    start = dg__ck_section(&w, DG__SEC_NET);
    dg__put_u32(&w, 9);
    dg__ck_end(&w, start);
    CHECK(w.len == 16 + 16 + 8 + 16 + 4);
    CHECK_OK(dg__ck_open(buf, w.len, DG__CK_MDGAN_WORKER, types, 2, sec, "t"));
    CHECK(dg__get_u64(&sec[0]) == 7 && dg__get_u32(&sec[1]) == 9);
    CHECK_OK(dg__ck_done(&sec[0], "t"));
    CHECK(dg__ck_open(buf, w.len, DG__CK_MDGAN_SERVER, types, 2, sec, "t") == DG_ERR_FORMAT);
    CHECK(strstr(dg_last_error(), "MD-GAN worker") != NULL);
    CHECK(dg__ck_open(buf, w.len, DG__CK_MDGAN_WORKER, types, 1, sec, "t") == DG_ERR_FORMAT);
    CHECK(dg__ck_open(buf, w.len, DG__CK_MDGAN_WORKER, types + 1, 1, sec, "t") == DG_ERR_FORMAT);
    buf[w.len++] = 0; /* a byte after the last section */
    CHECK(dg__ck_open(buf, w.len, DG__CK_MDGAN_WORKER, types, 2, sec, "t") == DG_ERR_FORMAT);
}

/* Reads stop at the end: zeros, the reader marked bad, nothing past it. */
TEST(byte_cursor_bounds)
{
    unsigned char b[12];
    dg__wbuf w = {b, 0, sizeof b}, count = {NULL, 0, 0};
    dg__rbuf r = {b, 6, 0, 0};
    float f = 1.5f, g;
    dg__put_u32(&w, 0x04030201u);
    dg__put_f32s(&w, &f, 1);
    dg__put_u32(&w, 7);
    dg__put_u32(&w, 8); /* over the cap: counted, not written */
    CHECK(w.len == 16 && b[0] == 1 && b[3] == 4);
    dg__put_f32s(&count, &f, 1000);
    CHECK(count.len == 4000);
    CHECK(dg__get_u32(&r) == 0x04030201u && !r.bad);
    CHECK(dg__get_u32(&r) == 0 && r.bad); /* 2 bytes left */
    CHECK(dg__take(&r, 0) == NULL && r.pos == 4);
    CHECK(dg__ck_done(&r, "t") == DG_ERR_FORMAT);
    r.len = 8;
    r.pos = 4;
    r.bad = 0;
    g = dg__get_f32(&r);
    CHECK(g == 1.5f && dg__ck_done(&r, "t") == DG_OK);
    CHECK(dg__get_u64(&r) == 0 && r.bad);
}

/* A failed write leaves the old file as it was. */
TEST(atomic_write)
{
    const char *path = "build/test_optim_atomic.bin";
    unsigned char *got;
    size_t n;
    remove(path);
    CHECK_OK(dg__write_file(path, "old", 3));
    /* a directory where the temporary file goes: the write fails */
    CHECK(mkdir("build/test_optim_atomic.bin.tmp", 0700) == 0);
    CHECK(dg__write_file(path, "new!", 4) == DG_ERR_IO);
    CHECK(rmdir("build/test_optim_atomic.bin.tmp") == 0);
    CHECK_OK(dg__read_file(path, 3, &got, &n));
    CHECK(n == 3 && !memcmp(got, "old", 3));
    dg__free(got);
    CHECK(dg__read_file(path, 2, &got, &n) == DG_ERR_TOO_LARGE);
    CHECK_OK(dg__write_file(path, "new!", 4));
    CHECK_OK(dg__read_file(path, 4, &got, &n));
    CHECK(n == 4 && !memcmp(got, "new!", 4));
    dg__free(got);
    CHECK(dg__write_file("build/no/such/dir/x.bin", "x", 1) == DG_ERR_IO);
    remove(path);
}

int main(void)
{
    if (dg_pool_create(&pool, 2)) return 1;
    RUN(sgd_momentum_by_hand);
    RUN(adam_by_hand);
    RUN(adam_every_lane_every_isa);
    RUN(optim_rejects_bad_config);
    RUN(checkpoint_round_trip);
    RUN(checkpoint_rejects_bad_files);
    RUN(container_kinds);
    RUN(byte_cursor_bounds);
    RUN(atomic_write);
    dg_pool_destroy(pool);
    return th_done();
}
