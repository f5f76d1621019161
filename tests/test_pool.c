/* The thread pool: every task runs exactly once, nested loops run inline,
   many jobs back to back, pools created and destroyed repeatedly, and a
   net trained with 1 and 2 threads gives bit-identical parameters.  This
   is the program `make tsan` runs under ThreadSanitizer. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

typedef struct counts {
    dg_pool *pool;
    int *hits;
    int nested_ok;
} counts;

static void count_task(void *arg, int task, int thread)
{
    counts *c = (counts *)arg;
    (void)thread;
    c->hits[task]++;
}

static void nested_task(void *arg, int task, int thread)
{
    counts *c = (counts *)arg;
    counts inner;
    int h[4] = {0, 0, 0, 0};
    (void)task;
    (void)thread;
    inner.pool = c->pool;
    inner.hits = h;
    dg_parallel_for(c->pool, 4, count_task, &inner); /* runs inline */
    if (h[0] != 1 || h[1] != 1 || h[2] != 1 || h[3] != 1) c->nested_ok = 0;
}

TEST(every_task_once)
{
    dg_pool *pool;
    int hits[1000], n, i, ok = 1;
    counts c;
    CHECK_OK(dg_pool_create(&pool, 2));
    c.pool = pool;
    c.hits = hits;
    for (n = 1; n <= 1000; n = n * 3 + 1) {
        memset(hits, 0, sizeof hits);
        dg_parallel_for(pool, n, count_task, &c);
        for (i = 0; i < n; i++) ok &= hits[i] == 1;
    }
    for (i = 0; i < 2000; i++) { /* back-to-back jobs: the spin/sleep hand-over */
        memset(hits, 0, sizeof(int) * 7);
        dg_parallel_for(pool, 7, count_task, &c);
        ok &= hits[0] == 1 && hits[6] == 1;
    }
    CHECK(ok);
    c.nested_ok = 1;
    dg_parallel_for(pool, 8, nested_task, &c);
    CHECK(c.nested_ok);
    dg_parallel_for(NULL, 3, count_task, &c); /* no pool: inline */
    dg_pool_destroy(pool);
}

TEST(create_destroy_repeatedly)
{
    int i, ok = 1;
    for (i = 0; i < 20; i++) {
        dg_pool *p;
        ok &= dg_pool_create(&p, 1 + i % 3) == DG_OK;
        ok &= dg_pool_size(p) == 1 + i % 3;
        dg_pool_destroy(p);
    }
    CHECK(ok);
    CHECK(dg_pool_create(NULL, 2) == DG_ERR_ARG);
}

TEST(isa_selection)
{
    dg_pool *p;
    CHECK_OK(dg_pool_create(&p, 1));
    CHECK(dg_pool_isa(p) == dg_isa_best());
    CHECK_OK(dg_pool_set_isa(p, DG_ISA_SCALAR));
    CHECK(dg_pool_isa(p) == DG_ISA_SCALAR);
    if (dg_isa_best() != DG_ISA_AVX512) CHECK(dg_pool_set_isa(p, DG_ISA_AVX512) == DG_ERR_UNSUPPORTED);
    CHECK(dg_pool_set_isa(p, (dg_isa)3) == DG_ERR_ARG);
#ifdef DG_NO_SIMD /* the build, not the CPU, lacks AVX2: the message says so */
    CHECK(dg_pool_set_isa(p, DG_ISA_AVX2) == DG_ERR_UNSUPPORTED);
    CHECK(strstr(dg_last_error(), "not in this build") != NULL);
#endif
    dg_pool_destroy(p);
}

/* A few steps of the reference DCGAN's discriminator shape on a small
   batch; returns the parameters after `steps` Adam steps, or the gradient
   of the first step when steps is 0. */
static float *train_conv_net(int threads, dg_isa isa, int steps, size_t *n)
{
    dg_pool *pool;
    dg_net *net;
    dg_optim opt;
    float x[6 * 784], dz[6], loss, *out, one = 1.0f;
    const float *y;
    int it;
    dg_rng rng = dg_rng_make(9, 9, 9);
    if (dg_pool_create(&pool, threads) || dg_pool_set_isa(pool, isa)) return NULL;
    dg_net_create(&net, 1, 28, 28);
    dg_net_conv2d(net, 64, 4, 2, 1);
    dg_net_leaky_relu(net, 0.2f);
    dg_net_conv2d(net, 128, 4, 2, 1);
    dg_net_batchnorm(net);
    dg_net_leaky_relu(net, 0.2f);
    dg_net_flatten(net);
    dg_net_linear(net, 1);
    dg_net_plan(net, pool, 6);
    dg_net_init(net, 1, 0.02f);
    dg_optim_adam(&opt, dg_net_param_count(net), 2e-4f, 0.5f, 0.999f, 1e-8f);
    for (it = 0; it < (steps ? steps : 1); it++) {
        dg_rng_fill_uniform(&rng, x, 6 * 784, -1, 1);
        dg_net_zero_grad(net);
        dg_net_forward(net, x, 6, 1, &y);
        dg_loss_bce_logits(y, 1, &one, 0, 6, 1.0f / 6, dz, &loss);
        dg_net_backward(net, dz, NULL);
        if (steps) dg_optim_step(&opt, pool, dg_net_params(net), dg_net_grads(net));
    }
    *n = dg_net_param_count(net);
    out = malloc(*n * 4);
    memcpy(out, steps ? dg_net_params(net) : dg_net_grads(net), *n * 4);
    dg_optim_free(&opt);
    dg_net_free(net);
    dg_pool_destroy(pool);
    return out;
}

TEST(one_and_two_threads_bit_identical)
{
    size_t n1, n2, i;
    float *a = train_conv_net(1, dg_isa_best(), 3, &n1), *b = train_conv_net(2, dg_isa_best(), 3, &n2);
    float *s = train_conv_net(2, DG_ISA_SCALAR, 0, &n2), *v = train_conv_net(1, dg_isa_best(), 0, &n1);
    double worst = 0.0, scale = 0.0;
    CHECK(a && b && s && v && n1 == n2);
    CHECK(memcmp(a, b, n1 * 4) == 0);
    /* SIMD and scalar kernels sum in different orders: their gradients
       agree to a tolerance, not bit for bit (Adam would then amplify the
       difference of tiny gradients, so compare before the step) */
    for (i = 0; i < n1; i++) {
        if (fabs(v[i] - s[i]) > worst) worst = fabs(v[i] - s[i]);
        if (fabs(v[i]) > scale) scale = fabs(v[i]);
    }
    CHECK(worst <= 1e-4 * scale);
    printf("  scalar vs %s: max gradient difference %.3g of max %.3g\n", dg_isa_name(dg_isa_best()), worst, scale);
    free(v);
    free(a);
    free(b);
    free(s);
}

int main(void)
{
    RUN(every_task_once);
    RUN(create_destroy_repeatedly);
    RUN(isa_selection);
    RUN(one_and_two_threads_bit_identical);
    return th_done();
}
