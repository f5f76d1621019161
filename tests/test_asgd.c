/* tests/test_asgd.c: the ASGD parameter-server and worker roles (the dg_asgd section of distgan.h).
 *
 * The schedule is reproducible and gives the staleness it should; the
 * in-process run equals a plain loop over the schedule with ac_server and
 * ac_compressor (bit for bit); the link's byte counters are the packets'
 * sizes; 1 and 2 threads give the same bits; a small problem learns in
 * hardy and dense mode; drop-outs neither hang nor break the run; the roles
 * also run free on threads, in arrival order. */
#define ADACOMP_IMPLEMENTATION
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include "../adacomp.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

#include <pthread.h>
#include <stdlib.h>

static dg_dataset g_train, g_test;

static void data_init(void)
{
    if (g_train.n) return;
    CHECK_OK(dg_dataset_make_shapes(&g_train, 2000, 11));
    CHECK_OK(dg_dataset_make_shapes(&g_test, 500, 12));
}

static dg_asgd_config small_config(int W, dg_asgd_mode mode)
{
    dg_asgd_config c = dg_asgd_config_init();
    c.n_workers = W;
    c.mode = mode;
    c.arch = DG_ASGD_ARCH_MLP;
    c.hidden = 32;
    c.rate = 0.05;
    c.seed = 7;
    return c;
}

/* staleness of every push, replayed from the schedule alone */
typedef struct tau_trace {
    uint64_t clock, pushes, drops, joins;
    uint64_t t_pull[256];
    double tau_sum[256];
    uint64_t n[256];
    double total;
    int first_round_ok, all_w_minus_1;
} tau_trace;

static void replay(dg_asgd_config *cfg, uint64_t n_push, tau_trace *tr)
{
    dg_asgd_sched *s;
    dg_asgd_event ev;
    memset(tr, 0, sizeof *tr);
    tr->all_w_minus_1 = 1;
    CHECK_OK(dg_asgd_sched_create(&s, cfg));
    if (!s) return;
    while (tr->pushes < n_push && dg_asgd_sched_next(s, &ev)) {
        int w = ev.worker;
        if (ev.type == DG_ASGD_EV_JOIN) {
            tr->t_pull[w] = tr->clock;
            tr->joins++;
        } else if (ev.type == DG_ASGD_EV_PUSH) {
            uint64_t tau = tr->clock - tr->t_pull[w];
            tr->tau_sum[w] += (double)tau;
            tr->total += (double)tau;
            tr->n[w]++;
            if (tr->pushes >= (uint64_t)cfg->n_workers && tau != (uint64_t)cfg->n_workers - 1)
                tr->all_w_minus_1 = 0;
            tr->t_pull[w] = ++tr->clock;
            tr->pushes++;
        } else {
            tr->drops++;
        }
    }
    dg_asgd_sched_free(s);
}

TEST(schedule_reproducible_and_staleness)
{
    dg_asgd_config cfg = small_config(16, DG_ASGD_MODE_HARDY);
    dg_asgd_sched *a, *b, *c;
    dg_asgd_event ea, eb, ec;
    tau_trace tr;
    int i, same = 1, differs = 0, ordered = 1, w;
    double last = 0, slow_tau = 0, fast_tau = 0, slow_n = 0, fast_n = 0, slow_share;
    /* the same configuration gives the same events; another seed others */
    CHECK_OK(dg_asgd_sched_create(&a, &cfg));
    CHECK_OK(dg_asgd_sched_create(&b, &cfg));
    cfg.seed = 8;
    CHECK_OK(dg_asgd_sched_create(&c, &cfg));
    for (i = 0; i < 5000; i++) {
        CHECK(dg_asgd_sched_next(a, &ea) && dg_asgd_sched_next(b, &eb) && dg_asgd_sched_next(c, &ec));
        if (ea.type != eb.type || ea.worker != eb.worker || ea.time != eb.time) same = 0;
        if (ea.worker != ec.worker) differs = 1;
        if (ea.time < last) ordered = 0;
        last = ea.time;
    }
    CHECK(same);
    CHECK(differs);
    CHECK(ordered);
    dg_asgd_sched_free(a);
    dg_asgd_sched_free(b);
    dg_asgd_sched_free(c);

    /* W equal workers without jitter: round robin, tau = W - 1 exactly */
    cfg = small_config(16, DG_ASGD_MODE_HARDY);
    cfg.jitter = 0.0;
    replay(&cfg, 2000, &tr);
    CHECK(tr.all_w_minus_1);
    /* with jitter the mean stays close to W - 1 */
    cfg.jitter = 0.3;
    replay(&cfg, 20000, &tr);
    CHECK_NEAR(tr.total / (double)tr.pushes, 15.0, 0.3);
    /* a quarter of the workers 4x slower: they push 4x less often, and the
       updates they carry are 4x staler */
    cfg = small_config(20, DG_ASGD_MODE_HARDY);
    cfg.slow_fraction = 0.25;
    cfg.slow_factor = 4.0;
    CHECK_OK(dg_asgd_sched_create(&a, &cfg));
    replay(&cfg, 40000, &tr);
    for (w = 1; w <= 20; w++) {
        if (dg_asgd_sched_speed(a, w) > 1.0) {
            slow_tau += tr.tau_sum[w];
            slow_n += (double)tr.n[w];
        } else {
            fast_tau += tr.tau_sum[w];
            fast_n += (double)tr.n[w];
        }
    }
    dg_asgd_sched_free(a);
    slow_share = slow_n / (slow_n + fast_n);
    CHECK_NEAR(slow_share, 1.25 / 16.25, 0.01);              /* 5 slow at 1/4 the rate */
    CHECK_NEAR((slow_tau / slow_n) / (fast_tau / fast_n), 4.0, 0.25);
    /* mean tau = throughput x compute time: (15 + 5/4) x 1 for a fast worker */
    CHECK_NEAR(fast_tau / fast_n, 16.25 - 1.0, 0.6);
    /* drop-outs: about drop_prob of the computations end in one */
    cfg = small_config(10, DG_ASGD_MODE_HARDY);
    cfg.drop_prob = 0.1;
    cfg.down_time = 5.0;
    replay(&cfg, 20000, &tr);
    CHECK_NEAR((double)tr.drops / (double)(tr.drops + tr.pushes), 0.1, 0.01);
    CHECK(tr.joins > 10 && tr.joins <= 10 + tr.drops); /* drop-outs come back */
}

/* ---- the in-process run against a plain loop ---- */

typedef struct trace_sum {
    uint64_t bytes, pushes, applied;
} trace_sum;

static void on_push(void *user, int worker, uint64_t t_pull, uint64_t clock, const void *packet,
                    size_t len, int result)
{
    trace_sum *t = (trace_sum *)user;
    (void)worker;
    (void)t_pull;
    (void)clock;
    (void)packet;
    t->bytes += len;
    t->pushes++;
    t->applied += result == AC_OK;
}

/* The same training written as a loop over the schedule, with nothing of
   the roles, the transport or the driver: ac_server_apply_packet on the
   packets ac_compress makes from each worker's stale copy. */
static void direct_loop(const dg_asgd_config *cfg, const dg_partition *part, uint64_t n,
                        float *out, uint64_t *bytes)
{
    enum { MAXW = 16 };
    dg_pool *pool;
    dg_net *net;
    ac_layout layout;
    uint32_t sizes[64];
    ac_compressor_config cc;
    ac_server_config sc;
    ac_server *ps;
    ac_compressor *comp[MAXW + 1];
    dg_batcher bat[MAXW + 1];
    float *copy[MAXW + 1], *w, *x, *dz;
    int32_t y[64];
    uint64_t t_pull[MAXW + 1];
    dg_asgd_sched *s;
    dg_asgd_event ev;
    size_t np, cap, len;
    uint8_t *packet;
    int i;
    CHECK(cfg->n_workers <= MAXW);
    CHECK_OK(dg_pool_create(&pool, 1));
    CHECK_OK(dg_asgd_net_create(&net, cfg, 1, 28, 28, 10, pool, cfg->batch));
    CHECK_OK(dg_net_init(net, dg_asgd_seed(cfg->seed, DG_ASGD_STREAM_INIT, 0), 0.0f));
    CHECK_OK(dg_asgd_layout(net, sizes, 64, &layout));
    np = dg_net_param_count(net);
    w = (float *)malloc(np * sizeof(float));
    memcpy(w, dg_net_params(net), np * sizeof(float));
    dg_asgd_ac_configs(cfg, &cc, &sc);
    CHECK(ac_server_init(&ps, &layout, w, &sc) == AC_OK);
    for (i = 1; i <= cfg->n_workers; i++) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(part, i - 1, &count);
        CHECK(ac_compressor_init(&comp[i], &layout, &cc) == AC_OK);
        CHECK_OK(dg_batcher_init(&bat[i], &g_train, idx, count, cfg->batch,
                                 dg_asgd_seed(cfg->seed, DG_ASGD_STREAM_DATA, (uint64_t)i)));
        copy[i] = (float *)malloc(np * sizeof(float));
    }
    cap = ac_compressor_packet_bound(comp[1]);
    packet = (uint8_t *)malloc(cap);
    x = (float *)malloc((size_t)cfg->batch * 784 * sizeof(float));
    dz = (float *)malloc((size_t)cfg->batch * 10 * sizeof(float));
    *bytes = 0;
    CHECK_OK(dg_asgd_sched_create(&s, cfg));
    while (ac_server_clock(ps) < n && dg_asgd_sched_next(s, &ev)) {
        int k = ev.worker;
        const float *logits;
        float loss;
        if (ev.type == DG_ASGD_EV_DROP) continue;
        if (ev.type == DG_ASGD_EV_PUSH) {
            memcpy(dg_net_params(net), copy[k], np * sizeof(float));
            CHECK_OK(dg_batcher_next(&bat[k], x, y));
            dg_net_zero_grad(net);
            CHECK_OK(dg_net_forward(net, x, cfg->batch, 1, &logits));
            CHECK_OK(dg_loss_softmax_ce(logits, 10, y, cfg->batch, 10, 1.0f / cfg->batch, dz, &loss));
            CHECK_OK(dg_net_backward(net, dz, NULL));
            CHECK(ac_compress(comp[k], dg_net_grads(net), t_pull[k], packet, cap, &len) == AC_OK);
            *bytes += len;
            CHECK(ac_server_apply_packet(ps, packet, len) == AC_OK);
        }
        ac_server_pull(ps, copy[k], &t_pull[k]);
    }
    memcpy(out, w, np * sizeof(float));
    dg_asgd_sched_free(s);
    for (i = 1; i <= cfg->n_workers; i++) {
        ac_compressor_free(comp[i]);
        dg_batcher_free(&bat[i]);
        free(copy[i]);
    }
    ac_server_free(ps);
    free(w);
    free(x);
    free(dz);
    free(packet);
    dg_net_free(net);
    dg_pool_destroy(pool);
}

static int run_model(const dg_asgd_config *cfg, int threads, uint64_t n, float *out, size_t np,
                     trace_sum *ts, dg_traffic *tr, uint64_t *compressor_bytes, double *acc)
{
    dg_pool *pool;
    dg_partition part;
    dg_asgd_run *run;
    int i, ok = 0;
    CHECK_OK(dg_pool_create(&pool, threads));
    CHECK_OK(dg_partition_iid(&part, g_train.n, cfg->n_workers, 3));
    CHECK_OK(dg_asgd_run_create(&run, cfg, pool, &g_train, &part));
    if (!run) return 0;
    if (ts) dg_asgd_server_set_trace(dg_asgd_run_server(run), on_push, ts);
    CHECK(np == (size_t)ac_layout_total(dg_asgd_run_layout(run)));
    if (dg_asgd_run_updates(run, n) == DG_OK) ok = 1;
    CHECK(ok);
    CHECK(dg_asgd_server_clock(dg_asgd_run_server(run)) == n);
    memcpy(out, dg_asgd_server_params(dg_asgd_run_server(run)), np * sizeof(float));
    if (tr) *tr = dg_transport_traffic(dg_asgd_run_transport(run), DG_ANY_PEER, DG_PEER_SERVER);
    if (compressor_bytes) {
        *compressor_bytes = 0;
        for (i = 1; i <= cfg->n_workers; i++)
            *compressor_bytes += dg_asgd_worker_compressor_stats(dg_asgd_run_worker(run, i)).bytes_out;
    }
    if (acc) CHECK_OK(dg_asgd_run_accuracy(run, &g_test, 0, acc));
    dg_asgd_run_free(run);
    dg_partition_free(&part);
    dg_pool_destroy(pool);
    return ok;
}

static size_t mlp_params(int hidden) { return (size_t)784 * hidden + hidden + (size_t)hidden * 10 + 10; }

TEST(run_equals_direct_loop)
{
    static const dg_asgd_mode modes[] = {DG_ASGD_MODE_HARDY, DG_ASGD_MODE_DENSE, DG_ASGD_MODE_IBM,
                                         DG_ASGD_MODE_STALENESS};
    size_t np = mlp_params(32);
    float *a = (float *)malloc(np * sizeof(float)), *b = (float *)malloc(np * sizeof(float));
    size_t m;
    data_init();
    for (m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        dg_asgd_config cfg = small_config(6, modes[m]);
        dg_partition part;
        trace_sum ts = {0, 0, 0};
        dg_traffic tr;
        uint64_t direct_bytes = 0, comp_bytes = 0;
        cfg.drop_prob = 0.1;   /* drop-outs and rejoins are part of the schedule */
        cfg.down_time = 3.0;
        CHECK_OK(dg_partition_iid(&part, g_train.n, cfg.n_workers, 3));
        direct_loop(&cfg, &part, 80, b, &direct_bytes);
        dg_partition_free(&part);
        run_model(&cfg, 2, 80, a, np, &ts, &tr, &comp_bytes, NULL);
        CHECK(memcmp(a, b, np * sizeof(float)) == 0);
        /* traffic: the PS received exactly the packets of the direct loop;
           the link counted every packet the compressors wrote (some are
           still in flight when the run stops) */
        CHECK(ts.bytes == direct_bytes);
        CHECK(ts.applied == 80 && ts.pushes == 80);
        CHECK(tr.payload_bytes == comp_bytes);
        CHECK(tr.payload_bytes >= ts.bytes);
        if (modes[m] == DG_ASGD_MODE_DENSE) { /* 28 + 4 count varints (<= 3 bytes) + 4 n */
            CHECK(ts.bytes / 80 >= 28 + 4 * np && ts.bytes / 80 <= 28 + 12 + 4 * np);
        }
    }
    free(a);
    free(b);
}

/* the model after `steps` updates, with 1 and with 2 threads: the same bits */
static void check_same_bits_for_threads(const dg_asgd_config *cfg, int steps, size_t np)
{
    float *a = (float *)malloc(np * sizeof(float)), *b = (float *)malloc(np * sizeof(float));
    run_model(cfg, 1, steps, a, np, NULL, NULL, NULL, NULL);
    run_model(cfg, 2, steps, b, np, NULL, NULL, NULL, NULL);
    CHECK(memcmp(a, b, np * sizeof(float)) == 0);
    free(a);
    free(b);
}

TEST(threads_give_identical_bits)
{
    static const dg_asgd_mode modes[] = {DG_ASGD_MODE_HARDY, DG_ASGD_MODE_IBM, DG_ASGD_MODE_TOPK};
    size_t m;
    data_init();
    for (m = 0; m < 3; m++) {
        dg_asgd_config cfg = small_config(8, modes[m]);
        cfg.slow_fraction = 0.25;
        cfg.f16 = m == 2;
        check_same_bits_for_threads(&cfg, 60, mlp_params(32));
    }
    { /* the authors' CNN too (convolutions, pooling) */
        dg_asgd_config cfg = small_config(4, DG_ASGD_MODE_HARDY);
        cfg.arch = DG_ASGD_ARCH_CNN;
        check_same_bits_for_threads(&cfg, 12, 421642);
    }
}

TEST(small_problem_learns)
{
    static const dg_asgd_mode modes[] = {DG_ASGD_MODE_HARDY, DG_ASGD_MODE_DENSE};
    size_t m, np = mlp_params(64);
    float *p = (float *)malloc(np * sizeof(float));
    data_init();
    for (m = 0; m < 2; m++) {
        dg_asgd_config cfg = small_config(8, modes[m]);
        double acc = 0.0;
        cfg.rate = 0.05;
        cfg.hidden = 64;
        cfg.alpha = 0.02f;   /* 0.1 and 0.05 are too much for dense pushes 7 updates stale */
        run_model(&cfg, 2, 1500, p, np, NULL, NULL, NULL, &acc);
        printf("  %s: accuracy %.3f on the shapes after 1500 updates (chance 0.1)\n",
               dg_asgd_mode_name(cfg.mode), acc);
        CHECK(acc > 0.5);
    }
    free(p);
}

TEST(dropouts_do_not_hang)
{
    size_t np = mlp_params(32);
    float *p = (float *)malloc(np * sizeof(float));
    dg_asgd_config cfg = small_config(5, DG_ASGD_MODE_HARDY);
    dg_pool *pool;
    dg_partition part;
    dg_asgd_run *run;
    dg_result r;
    data_init();
    /* frequent drop-outs, everyone comes back */
    cfg.drop_prob = 0.3;
    cfg.down_time = 2.0;
    run_model(&cfg, 2, 200, p, np, NULL, NULL, NULL, NULL);
    /* everyone leaves for good: the run says so instead of waiting */
    cfg.drop_prob = 0.5;
    cfg.down_time = -1.0;
    CHECK_OK(dg_pool_create(&pool, 2));
    CHECK_OK(dg_partition_iid(&part, g_train.n, cfg.n_workers, 3));
    CHECK_OK(dg_asgd_run_create(&run, &cfg, pool, &g_train, &part));
    r = dg_asgd_run_updates(run, 100000);
    CHECK(r == DG_ERR_CLOSED);
    CHECK(dg_asgd_server_clock(dg_asgd_run_server(run)) < 100);
    CHECK(dg_asgd_run_drops(run) == 5);
    dg_asgd_run_free(run);
    dg_partition_free(&part);
    dg_pool_destroy(pool);
    /* tau > max_staleness refused: counted stale, the worker pulls again */
    cfg = small_config(8, DG_ASGD_MODE_HARDY);
    cfg.max_staleness = 3;
    cfg.jitter = 0.0;   /* tau = 7 > 3 for every push after the first round */
    CHECK_OK(dg_pool_create(&pool, 1));
    CHECK_OK(dg_partition_iid(&part, g_train.n, cfg.n_workers, 3));
    CHECK_OK(dg_asgd_run_create(&run, &cfg, pool, &g_train, &part));
    r = dg_asgd_run_updates(run, 40);
    CHECK(r == DG_OK);
    CHECK(dg_asgd_server_stats(dg_asgd_run_server(run))->stale > 0);
    CHECK(dg_asgd_server_stats(dg_asgd_run_server(run))->applied == 40);
    dg_asgd_run_free(run);
    dg_partition_free(&part);
    dg_pool_destroy(pool);
    free(p);
}

/* ---- the PS refuses what it cannot apply ---- */

/* One PUSH from worker 1 carrying `packet` and the loss, handled by s; the
   MODEL that answers it is taken back. */
static void push_one(dg_asgd_server *s, dg_transport *t, const void *packet, size_t len,
                     uint64_t t_pull, float loss)
{
    dg_part_kind kind = DG_PART_BYTES;
    dg_msg *m;
    CHECK_OK(dg_msg_create(t, DG_MSG_ASGD_PUSH, 1, DG_PEER_SERVER, (int64_t)t_pull, 1, &kind,
                           &len, &m));
    memcpy(m->part[0].data, packet, len);
    m->stat[0] = loss;
    CHECK_OK(dg_asgd_server_handle(s, m));
    CHECK_OK(dg_transport_recv(t, 1, 0, &m));
    CHECK(m->type == DG_MSG_ASGD_MODEL);
    dg_msg_free(t, m);
}

static void count_results(void *user, int worker, uint64_t t_pull, uint64_t clock,
                          const void *packet, size_t len, int result)
{
    int *n = (int *)user;
    (void)worker, (void)t_pull, (void)clock, (void)packet, (void)len;
    n[result == AC_OK ? 0 : 1]++;
}

/* Issue 2: a push whose values or loss are NaN/Inf is refused before it
   touches w or the PS's statistics, counted, traced, and the run goes on. */
TEST(server_refuses_non_finite_pushes)
{
    uint32_t sizes[] = {40, 8};
    ac_layout layout = {2, sizes};
    dg_asgd_config cfg = small_config(2, DG_ASGD_MODE_DENSE);
    ac_compressor_config cc;
    ac_server_config sc;
    ac_compressor *comp;
    dg_transport *t;
    dg_asgd_server *s;
    float w0[48], g[48];
    unsigned char pkt[512];
    size_t len;
    int i, results[2] = {0, 0};
    const dg_asgd_stats *st;
    for (i = 0; i < 48; i++) w0[i] = 0.01f * (float)i, g[i] = 1.0f;
    CHECK_OK(dg_inproc_create(&t, 3, 16, 0));
    CHECK_OK(dg_asgd_server_create(&s, &cfg, t, &layout, w0));
    dg_asgd_server_set_trace(s, count_results, results);
    dg_asgd_ac_configs(&cfg, &cc, &sc);
    CHECK(ac_compressor_init(&comp, &layout, &cc) == AC_OK);
    CHECK(ac_compress(comp, g, 0, pkt, sizeof pkt, &len) == AC_OK);
    push_one(s, t, pkt, len, 0, NAN);                 /* a finite gradient, a NaN loss */
    memcpy(pkt + len - 4, "\x00\x00\x80\x7f", 4);   /* the last value becomes +Inf */
    push_one(s, t, pkt, len, 0, 0.5f);
    st = dg_asgd_server_stats(s);
    CHECK(st->invalid == 2 && st->applied == 0 && st->pushes == 2 && results[1] == 2);
    CHECK(memcmp(dg_asgd_server_params(s), w0, sizeof w0) == 0);
    CHECK(st->loss == 0.0);
    CHECK(ac_compress(comp, g, 0, pkt, sizeof pkt, &len) == AC_OK);
    push_one(s, t, pkt, len, 0, 0.5f);                /* the run goes on */
    CHECK(st->applied == 1 && st->loss == 0.5 && results[0] == 1);
    CHECK(dg_asgd_server_params(s)[0] == w0[0] - 0.1f);
    ac_compressor_free(comp);
    dg_asgd_server_free(s);
    dg_transport_close(t);
}

/* Issue 10: the PS a default configuration stands for counts sigma exactly
   at the staleness of W = 100 workers (tau ~ 100-300) and refuses nothing. */
TEST(default_sigma_exact_at_w100)
{
    uint32_t sizes[] = {10};
    ac_layout layout = {1, sizes};
    dg_asgd_config cfg = dg_asgd_config_init();
    ac_compressor_config cc;
    ac_server_config sc;
    ac_server *ps;
    static uint32_t mem[2 + 2 * 10];
    ac_update u;
    float w[10];
    int k;
    cfg.n_workers = 100;
    dg_asgd_ac_configs(&cfg, &cc, &sc);
    CHECK(sc.staleness == AC_STALENESS_SIGMA && sc.max_staleness == 0);
    memset(w, 0, sizeof w);
    CHECK(ac_server_init(&ps, &layout, w, &sc) == AC_OK);
    CHECK(ac_update_init(&u, &layout, 10, mem, sizeof mem) == AC_OK);
    u.nnz = 1, u.count[0] = 1, u.index[0] = 3, u.value[0] = 1.0f;
    for (k = 0; k < 300; k++) {   /* index 3 touched by updates 1..300, tau = k */
        u.t_pull = 0;
        CHECK(ac_server_apply(ps, &u) == AC_OK);
    }
    w[3] = 0.0f;
    CHECK(ac_server_apply(ps, &u) == AC_OK);   /* tau = 300, sigma = 300 */
    CHECK(w[3] == -(0.1f * 1.0f / 300.0f));
    CHECK(ac_server_stats(ps).rejected == 0);
    ac_server_free(ps);
}

/* Issue 13: zero is a value (c = 0 sends one entry per tensor, alpha = 0
   learns nothing), and what has no meaning is refused, never replaced by
   a default behind the caller's back. */
TEST(config_zero_is_a_value)
{
    dg_asgd_config cfg = small_config(2, DG_ASGD_MODE_HARDY);
    ac_compressor_config cc;
    ac_server_config sc;
    dg_asgd_sched *s = NULL;
    cfg.rate = 0.0, cfg.alpha = 0.0f;
    CHECK_OK(dg_asgd_sched_create(&s, &cfg));
    dg_asgd_sched_free(s);
    dg_asgd_ac_configs(&cfg, &cc, &sc);
    CHECK(cc.rate == 0.0 && sc.alpha == 0.0f);
    cfg = small_config(2, DG_ASGD_MODE_HARDY);
    cfg.hidden = 0;
    CHECK(dg_asgd_sched_create(&s, &cfg) == DG_ERR_ARG);
    cfg = small_config(2, DG_ASGD_MODE_HARDY);
    cfg.bin_size = 0;
    CHECK(dg_asgd_sched_create(&s, &cfg) == DG_ERR_ARG);
    cfg = small_config(2, DG_ASGD_MODE_HARDY);
    cfg.modulation = (dg_asgd_modulation)7;
    CHECK(dg_asgd_sched_create(&s, &cfg) == DG_ERR_ARG);
}

/* ---- the roles running free on threads, in arrival order ---- */

typedef struct free_worker {
    dg_asgd_worker *w;
    dg_net *net;
    dg_pool *pool;      /* its own: a pool's GEMM buffers serve one caller */
    pthread_t th;
    dg_result r;
} free_worker;

static void *free_worker_main(void *arg)
{
    free_worker *fw = (free_worker *)arg;
    fw->r = dg_asgd_worker_start(fw->w);
    while (fw->r == DG_OK && !dg_asgd_worker_stopped(fw->w)) {
        dg_result e = dg_asgd_worker_poll(fw->w, fw->net, 20);
        if (e != DG_OK && e != DG_ERR_TIMEOUT) fw->r = e;
    }
    return NULL;
}

TEST(roles_run_free_on_threads)
{
    enum { W = 3 };
    dg_asgd_config cfg = small_config(W, DG_ASGD_MODE_HARDY);
    dg_transport *t;
    dg_asgd_server *ps;
    free_worker fw[W + 1];
    dg_pool *pool;
    dg_partition part;
    dg_net *init;
    ac_layout layout;
    uint32_t sizes[64];
    int i;
    data_init();
    CHECK_OK(dg_pool_create(&pool, 1));
    CHECK_OK(dg_inproc_create(&t, W + 1, 64, 0));
    CHECK_OK(dg_partition_iid(&part, g_train.n, W, 3));
    CHECK_OK(dg_asgd_net_create(&init, &cfg, 1, 28, 28, 10, pool, cfg.batch));
    CHECK_OK(dg_net_init(init, 5, 0.0f));
    CHECK_OK(dg_asgd_layout(init, sizes, 64, &layout));
    CHECK_OK(dg_asgd_server_create(&ps, &cfg, t, &layout, dg_net_params(init)));
    for (i = 1; i <= W; i++) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(&part, i - 1, &count);
        CHECK_OK(dg_asgd_worker_create(&fw[i].w, &cfg, i, t, &layout, &g_train, idx, count));
        CHECK_OK(dg_pool_create(&fw[i].pool, 1));
        CHECK_OK(dg_asgd_net_create(&fw[i].net, &cfg, 1, 28, 28, 10, fw[i].pool, cfg.batch));
    }
    for (i = 1; i <= W; i++) pthread_create(&fw[i].th, NULL, free_worker_main, &fw[i]);
    while (dg_asgd_server_clock(ps) < 60) {
        dg_result e = dg_asgd_server_poll(ps, 20);
        CHECK(e == DG_OK || e == DG_ERR_TIMEOUT);
        if (e != DG_OK && e != DG_ERR_TIMEOUT) break;
    }
    CHECK_OK(dg_asgd_server_stop(ps));
    for (i = 1; i <= W; i++) {
        pthread_join(fw[i].th, NULL);
        CHECK(fw[i].r == DG_OK);
        CHECK(dg_asgd_worker_stopped(fw[i].w));
    }
    CHECK(dg_asgd_server_stats(ps)->applied >= 60);
    CHECK(dg_asgd_server_stats(ps)->invalid == 0);
    for (i = 1; i <= W; i++) {
        dg_asgd_worker_free(fw[i].w);
        dg_net_free(fw[i].net);
        dg_pool_destroy(fw[i].pool);
    }
    dg_asgd_server_free(ps);
    dg_transport_close(t);
    dg_net_free(init);
    dg_partition_free(&part);
    dg_pool_destroy(pool);
}

int main(void)
{
    RUN(schedule_reproducible_and_staleness);
    RUN(run_equals_direct_loop);
    RUN(threads_give_identical_bits);
    RUN(small_problem_learns);
    RUN(dropouts_do_not_hang);
    RUN(server_refuses_non_finite_pushes);
    RUN(default_sigma_exact_at_w100);
    RUN(config_zero_is_a_value);
    RUN(roles_run_free_on_threads);
    dg_dataset_free(&g_train);
    dg_dataset_free(&g_test);
    return th_done();
}
