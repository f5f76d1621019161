/* examples/adacomp_sgd.c: adacomp.h dropped into someone else's plain-C SGD.
 *
 * A softmax regression (one weight matrix, one bias vector) is trained by
 * asynchronous SGD: W simulated workers each pull the model, compute a
 * minibatch gradient on their own shard, and push it to a parameter server
 * while the others keep pushing, so every gradient arrives stale.  The
 * same loop runs with dense pushes (plain ASGD) and with AdaComp (Hardy
 * mode, c = 1%), with and without sigma modulation, then with the IBM mode,
 * and prints test accuracy and the bytes the workers sent.
 *
 *   cc -O2 examples/adacomp_sgd.c -lm && ./a.out
 *
 * Everything AdaComp-specific is marked "adacomp:"; the rest is ordinary
 * SGD code that knows nothing about compression. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADACOMP_IMPLEMENTATION
#include "../adacomp.h"

enum { D = 256, C = 10, N_TRAIN = 20000, N_TEST = 5000, WORKERS = 8, BATCH = 10 };
enum { N_PARAMS = D * C + C, STEPS = 12000 };

/* ---- a generated dataset: ten Gaussian blobs in 256 dimensions, unit noise ---- */

static uint64_t rng_state = 42;
static double uniform(void)
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static float normal(void)
{
    return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

static float centres[C][D];
static float train_x[N_TRAIN][D], test_x[N_TEST][D];
static int train_y[N_TRAIN], test_y[N_TEST];

static void make_sample(float *x, int *y)
{
    int j, c = (int)(uniform() * C);
    for (j = 0; j < D; j++) x[j] = centres[c][j] + normal();
    *y = c;
}

static void make_dataset(void)
{
    int i, j;
    for (i = 0; i < C; i++)
        for (j = 0; j < D; j++) centres[i][j] = 0.25f * normal();
    for (i = 0; i < N_TRAIN; i++) make_sample(train_x[i], &train_y[i]);
    for (i = 0; i < N_TEST; i++) make_sample(test_x[i], &test_y[i]);
}

/* ---- the model: params = [W (D x C) | b (C)] in one flat vector ---- */

static void logits(const float *p, const float *x, float *z)
{
    int j, c;
    for (c = 0; c < C; c++) z[c] = p[D * C + c];
    for (j = 0; j < D; j++)
        for (c = 0; c < C; c++) z[c] += x[j] * p[j * C + c];
}

/* Mean softmax cross-entropy gradient over a minibatch of one shard. */
static void gradient(const float *p, int shard, float *g)
{
    int s, j, c;
    memset(g, 0, N_PARAMS * sizeof(float));
    for (s = 0; s < BATCH; s++) {
        int i = shard * (N_TRAIN / WORKERS) + (int)(uniform() * (N_TRAIN / WORKERS));
        float z[C], zmax, sum = 0;
        logits(p, train_x[i], z);
        zmax = z[0];
        for (c = 1; c < C; c++) zmax = z[c] > zmax ? z[c] : zmax;
        for (c = 0; c < C; c++) sum += z[c] = expf(z[c] - zmax);
        for (c = 0; c < C; c++) {
            float dz = (z[c] / sum - (c == train_y[i])) / BATCH;
            for (j = 0; j < D; j++) g[j * C + c] += dz * train_x[i][j];
            g[D * C + c] += dz;
        }
    }
}

/* Test accuracy, and the mean cross-entropy in *loss (finer grained). */
static double accuracy(const float *p, double *loss)
{
    int i, c, right = 0;
    *loss = 0;
    for (i = 0; i < N_TEST; i++) {
        float z[C];
        double sum = 0;
        int best = 0;
        logits(p, test_x[i], z);
        for (c = 1; c < C; c++) best = z[c] > z[best] ? c : best;
        for (c = 0; c < C; c++) sum += exp((double)z[c] - z[best]);
        *loss += log(sum) - ((double)z[test_y[i]] - z[best]);
        right += best == test_y[i];
    }
    *loss /= N_TEST;
    return (double)right / N_TEST;
}

/* ---- asynchronous SGD with compressed pushes ---- */

typedef struct worker {
    float params[N_PARAMS];   /* its (stale) copy of the model */
    uint64_t t_pull;
    ac_compressor *comp;      /* adacomp: one compressor per worker */
} worker;

static worker workers[WORKERS];
static float server_params[N_PARAMS], grad[N_PARAMS];

static void run(const char *name, ac_mode mode, ac_staleness staleness, float alpha)
{
    uint32_t sizes[2] = {D * C, C};              /* adacomp: weights, biases */
    ac_layout layout = {2, sizes};
    ac_compressor_config cc;
    ac_server_config sc;
    ac_server *ps;
    unsigned char *packet;
    size_t cap = 0, len;
    uint64_t sent = 0, dense = 0, stale = 0;
    double acc, loss;
    int w, step;
    ac_stats st;

    memset(server_params, 0, sizeof server_params);
    cc = ac_compressor_config_init();             /* Hardy, c = 0.01, float32 */
    sc = ac_server_config_init();                 /* every push applied, sigma exact */
    cc.mode = mode;
    sc.alpha = alpha, sc.staleness = staleness;
    if (ac_server_init(&ps, &layout, server_params, &sc) != AC_OK) goto fail;
    for (w = 0; w < WORKERS; w++) {
        if (ac_compressor_init(&workers[w].comp, &layout, &cc) != AC_OK) goto fail;
        cap = ac_compressor_packet_bound(workers[w].comp);
        ac_server_pull(ps, workers[w].params, &workers[w].t_pull);
    }
    packet = (unsigned char *)malloc(cap);        /* the only buffer, sized once */
    rng_state = 7;

    for (step = 0; step < STEPS; step++) {
        /* the next worker to finish its computation: random order, so each
           gradient was computed on a model several updates old */
        worker *wk = &workers[(int)(uniform() * WORKERS)];
        ac_result r;
        gradient(wk->params, (int)(wk - workers), grad);
        if (ac_compress(wk->comp, grad, wk->t_pull, packet, cap, &len) != AC_OK) goto fail;
        r = ac_server_apply_packet(ps, packet, len);   /* over the network, in real life */
        if (r == AC_ERR_STALE) stale++;
        else if (r != AC_OK) goto fail;
        ac_server_pull(ps, wk->params, &wk->t_pull);
    }
    for (w = 0; w < WORKERS; w++) {
        st = ac_compressor_stats(workers[w].comp);
        sent += st.bytes_out;
        dense += st.dense_bytes;
        ac_compressor_free(workers[w].comp);
    }
    st = ac_server_stats(ps);
    acc = accuracy(server_params, &loss);
    printf("%-27s accuracy %.3f  loss %.4f  pushed %7.2f MB (dense %6.2f MB, %5.1fx less)  "
           "applied %llu, stale %llu\n",
           name, acc, loss, sent / 1e6, dense / 1e6, (double)dense / (double)sent,
           (unsigned long long)st.packets, (unsigned long long)stale);
    free(packet);
    ac_server_free(ps);
    return;
fail:
    fprintf(stderr, "%s: %s\n", name, ac_last_error());
    exit(1);
}

int main(void)
{
    make_dataset();
    printf("softmax regression, %d parameters, %d async workers, batch %d, %d pushes\n",
           N_PARAMS, WORKERS, BATCH, STEPS);
    run("dense ASGD", AC_MODE_DENSE, AC_STALENESS_CONSTANT, 0.1f);
    run("top-k per tensor, constant", AC_MODE_HARDY, AC_STALENESS_CONSTANT, 0.1f);
    run("AdaComp (Hardy, c = 0.01)", AC_MODE_HARDY, AC_STALENESS_SIGMA, 0.1f);
    run("IBM AdaComp (L_T = 64)", AC_MODE_IBM, AC_STALENESS_SIGMA, 0.1f);
    return 0;
}
