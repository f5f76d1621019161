/* Asynchronous MD-GAN and FeGAN-style FL-GAN (issue 13, docs/mdgan.md).

   MD-GAN: a scripted network where worker 3 is always late by a known
   number of iterations (the test plays the workers on a dg_netsim
   transport, so every arrival time is set by hand): its feedback is used
   with weight 1/tau at the right iteration, or dropped beyond tau_max, and
   G after that update equals a reference built by hand from the same
   pieces (the noise of both iterations, the feedback sent, G and Adam
   before the step); the close times of the quorum and of the deadline on
   the simulated clock; and q = N (or no network model) is the synchronous
   MD-GAN, bit for bit.

   FeGAN: the systematic sampling's selection frequencies against the
   inclusion probabilities (chi-square at a fixed seed), uniform and
   proportional to shard size with a worker chosen for sure; a round asks
   only the chosen workers (traffic, their clocks, their local iterations)
   and averages exactly the weighted mean of their models; C = 1 is plain
   FL-GAN, bit for bit. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include "scratch.h"
#include "small_gan.h"


/* ---- asynchronous MD-GAN on a scripted network ---- */

enum { SN = 3, SB = 8, SD = 64 };

/* The server of small_config(3) on an ideal network whose server computes
   at 1e12 GFLOP/s (its passes take ~1e-16 s); the test is the workers. */
typedef struct script {
    dg_transport *t;
    dg_mdgan_server *s;
    dg_mdgan_config c;
    float fb[16][SN + 1][SB * SD]; /* the feedback sent, per iteration and worker */
} script;

static void script_start(script *sc, int quorum, double deadline, dg_staleness rule, int tau_max)
{
    dg_transport *in;
    dg_netsim_config net = dg_netsim_config_init();
    memset(sc, 0, sizeof *sc);
    sc->c = small_config(SN);
    sc->c.quorum = quorum;
    sc->c.deadline = deadline;
    sc->c.staleness = rule;
    sc->c.tau_max = tau_max;
    net.server_gflops = 1e12;
    CHECK_OK(dg_inproc_create(&in, SN + 1, 0, 0));
    CHECK_OK(dg_netsim_create(&sc->t, in, &net));
    CHECK_OK(dg_mdgan_server_create(&sc->s, &sc->c, sc->t, pool1));
}

static void script_end(script *sc)
{
    dg_mdgan_server_free(sc->s);
    dg_transport_close(sc->t);
}

/* One iteration: begin; each worker that got a batch takes it (its clock
   moves to the arrival), computes for secs[n] simulated seconds and sends
   a feedback of seeded random values; the server takes in its inbox, then
   the iteration closes (what the in-process driver does once every queue
   is empty).  before_close (if any) runs just before the close. */
static void script_iteration(script *sc, const double secs[SN + 1],
                             void (*before_close)(script *, void *), void *user)
{
    dg_msg *m;
    int n;
    CHECK_OK(dg_mdgan_server_begin(sc->s));
    for (n = 1; n <= SN; n++) {
        dg_part_kind k = DG_PART_F32;
        size_t bd = SB * SD;
        int64_t it;
        dg_rng rng;
        if (dg_transport_recv(sc->t, n, 0, &m) != DG_OK) continue;
        CHECK(m->type == DG_MSG_GEN_BATCHES);
        it = m->iteration;
        dg_msg_free(sc->t, m);
        dg_transport_charge(sc->t, n, secs[n] * 100e9); /* workers at 100 GFLOP/s */
        CHECK_OK(dg_msg_create(sc->t, DG_MSG_FEEDBACK, n, 0, it, 1, &k, &bd, &m));
        rng = dg_rng_make(77, (uint64_t)n, (uint64_t)it);
        dg_rng_fill_uniform(&rng, (float *)m->part[0].data, bd, -1, 1);
        memcpy(sc->fb[it][n], m->part[0].data, sizeof sc->fb[it][n]);
        CHECK_OK(dg_transport_send(sc->t, m));
    }
    while (dg_transport_recv(sc->t, 0, 0, &m) == DG_OK) CHECK_OK(dg_mdgan_server_handle(sc->s, m));
    if (before_close) before_close(sc, user);
    CHECK_OK(dg_mdgan_server_expire(sc->s));
}

/* G and its Adam state before an update */
typedef struct snapshot {
    float *w, *opt;
    int64_t t;
} snapshot;

static void take_snapshot(script *sc, void *user)
{
    snapshot *p = (snapshot *)user;
    dg_net *g = dg_mdgan_server_generator(sc->s);
    dg_optim *o = dg_mdgan_server_optim(sc->s);
    p->w = (float *)malloc(4 * dg_net_param_count(g));
    p->opt = (float *)malloc(4 * dg_optim_state_count(o));
    memcpy(p->w, dg_net_params(g), 4 * dg_net_param_count(g));
    memcpy(p->opt, o->state, 4 * dg_optim_state_count(o));
    p->t = o->t;
}

/* The reference update of iteration `it` by hand: G and Adam from the
   snapshot; the fresh feedback of workers 1 and 2 summed, times
   1/(W*b), through G on the noise of `it`; worker 3's feedback of
   iteration `old` (if old >= 0) times w3/(W*b) through G on the noise of
   `old`; one Adam step.  W = 2 + w3. */
static void reference_update(script *sc, const snapshot *p, int it, int old, float w3,
                             dg_net **out)
{
    const dg_mdgan_config *c = &sc->c;
    dg_net *g;
    dg_optim o;
    float z[SB * 16], dy[SB * SD], scale = 1.0f / ((2.0f + w3) * (float)SB);
    const float *x;
    int32_t lab[SB];
    dg_rng rng;
    int i;
    CHECK_OK(dg_build_generator(&g, c->arch, c->z_dim, 0, c->c, c->h, c->w));
    CHECK_OK(dg_net_plan(g, pool1, SB));
    CHECK_OK(dg_optim_adam(&o, dg_net_param_count(g), c->lr_g, c->beta1, c->beta2, c->eps));
    memcpy(dg_net_params(g), p->w, 4 * dg_net_param_count(g));
    memcpy(o.state, p->opt, 4 * dg_optim_state_count(&o));
    o.t = p->t;
    dg_net_zero_grad(g);
    rng = dg_rng_make(c->seed, DG_MDGAN_STREAM_NOISE, (uint64_t)it);
    dg_gan_sample_input(&rng, SB, c->z_dim, 0, z, lab);
    for (i = 0; i < SB * SD; i++) dy[i] = sc->fb[it][1][i] + sc->fb[it][2][i];
    for (i = 0; i < SB * SD; i++) dy[i] *= scale;
    CHECK_OK(dg_net_forward(g, z, SB, 1, &x));
    CHECK_OK(dg_net_backward(g, dy, NULL));
    if (old >= 0) {
        rng = dg_rng_make(c->seed, DG_MDGAN_STREAM_NOISE, (uint64_t)old);
        dg_gan_sample_input(&rng, SB, c->z_dim, 0, z, lab);
        for (i = 0; i < SB * SD; i++) dy[i] = w3 * scale * sc->fb[old][3][i];
        CHECK_OK(dg_net_forward(g, z, SB, 1, &x));
        CHECK_OK(dg_net_backward(g, dy, NULL));
    }
    CHECK_OK(dg_optim_step(&o, pool1, dg_net_params(g), dg_net_grads(g)));
    dg_optim_free(&o);
    *out = g;
}

/* Workers 1 and 2 compute 1 s, worker 3 2.5 s, quorum 2: iterations close
   at 1, 2, 3, 4, 5, 6 s; worker 3's feedback of iteration 0 arrives at
   2.5 s and is used at the close of iteration 2 (tau = 2), that of
   iteration 3 (sent at 3 s, in at 5.5 s) at the close of 5 (tau = 2). */
static void late_worker(dg_staleness rule, int tau_max, float w3_expected, int used_expected)
{
    static const double secs[SN + 1] = {0, 1.0, 1.0, 2.5};
    static const int n_live[6] = {2, 2, 3, 2, 2, 3}, n_stale[6] = {0, 0, 1, 0, 0, 1};
    script *sc = (script *)calloc(1, sizeof *sc);
    snapshot snap;
    dg_net *ref;
    int it;
    script_start(sc, 2, 0.0, rule, tau_max);
    for (it = 0; it < 6; it++) {
        const dg_mdgan_stats *st;
        script_iteration(sc, secs, it == 2 ? take_snapshot : NULL, &snap);
        st = dg_mdgan_server_stats(sc->s);
        CHECK(st->n_live == (used_expected ? n_live[it] : 2));
        CHECK(st->n_stale == (used_expected ? n_stale[it] : 0));
        /* the server's clock: the close time (+ its passes, ~1e-16 s) */
        CHECK_NEAR(dg_netsim_clock(sc->t, 0), it + 1.0, 1e-9);
        if (it == 2) {
            reference_update(sc, &snap, 2, used_expected ? 0 : -1, w3_expected, &ref);
            CHECK(memcmp(dg_net_params(ref), dg_net_params(dg_mdgan_server_generator(sc->s)),
                         4 * dg_net_param_count(ref)) == 0);
            dg_net_free(ref);
            free(snap.w);
            free(snap.opt);
        }
    }
    CHECK(dg_mdgan_server_stats(sc->s)->stale_dropped == (used_expected ? 0 : 2));
    CHECK(dg_mdgan_server_is_live(sc->s, 3));
    script_end(sc);
    free(sc);
}

TEST(late_feedback_weighs_one_over_tau) { late_worker(DG_STALENESS_INVERSE, -1, 0.5f, 1); }
TEST(late_feedback_constant_weight) { late_worker(DG_STALENESS_CONSTANT, 2, 1.0f, 1); }
TEST(late_feedback_beyond_tau_max_dropped) { late_worker(DG_STALENESS_INVERSE, 1, 0.0f, 0); }

/* Workers at 1, 1.5 and 2.5 s, quorum 3 (all) but a deadline of 1.2 s
   after the batches leave: iteration 0 closes at 1.2 s with worker 1
   alone; iteration 1 (batches at 1.2 s, only to worker 1) closes at its
   deadline 2.4 s with worker 1's fresh feedback (in at 2.2 s) and worker
   2's of iteration 0 (in at 1.5 s, tau 1: weight 1); iteration 2 at 3.6 s
   with worker 3's (2.5 s, tau 2) and worker 1's (3.4 s), while worker 2's
   second (sent at 2.4 s) is in at 3.9 s only. */
TEST(deadline_closes_on_the_simulated_clock)
{
    static const double secs[SN + 1] = {0, 1.0, 1.5, 2.5};
    script *sc = (script *)calloc(1, sizeof *sc);
    const dg_mdgan_stats *st;
    script_start(sc, 3, 1.2, DG_STALENESS_INVERSE, -1);
    st = dg_mdgan_server_stats(sc->s);
    script_iteration(sc, secs, NULL, NULL);
    CHECK(st->n_live == 1 && st->n_stale == 0);
    CHECK_NEAR(dg_netsim_clock(sc->t, 0), 1.2, 1e-9);
    script_iteration(sc, secs, NULL, NULL);
    CHECK(st->n_live == 2 && st->n_stale == 1);
    CHECK_NEAR(dg_netsim_clock(sc->t, 0), 2.4, 1e-9);
    script_iteration(sc, secs, NULL, NULL);
    CHECK(st->n_live == 2 && st->n_stale == 1);
    CHECK_NEAR(dg_netsim_clock(sc->t, 0), 3.6, 1e-9);
    /* iteration 3 (batches at 3.6 s to workers 1 and 3): worker 2's
       feedback of iteration 2 (3.9 s, tau 1) and worker 1's (4.6 s) by the
       deadline 4.8 s; worker 3's is in at 6.1 s */
    script_iteration(sc, secs, NULL, NULL);
    CHECK(st->n_live == 2);
    CHECK_NEAR(dg_netsim_clock(sc->t, 0), 4.8, 1e-9);
    script_end(sc);
    free(sc);
}

/* A deadline shorter than every worker: the close waits for the first
   arrival (an update without feedback would not move G). */
TEST(deadline_waits_for_the_first_feedback)
{
    static const double secs[SN + 1] = {0, 2.0, 3.0, 3.0};
    script *sc = (script *)calloc(1, sizeof *sc);
    script_start(sc, 2, 0.5, DG_STALENESS_INVERSE, -1);
    script_iteration(sc, secs, NULL, NULL);
    CHECK(dg_mdgan_server_stats(sc->s)->n_live == 1);
    CHECK_NEAR(dg_netsim_clock(sc->t, 0), 2.0, 1e-9);
    script_end(sc);
    free(sc);
}

/* tau_max = 0: worker 3's feedback (2.5 s) is too stale from iteration 1
   on; at iteration 2 it is the first arrival, before the deadline (2.5 s),
   but it cannot close the iteration: the close waits for workers 1 and 2
   (3 s), and worker 3's is dropped there. */
TEST(deadline_waits_for_a_usable_feedback)
{
    static const double secs[SN + 1] = {0, 1.0, 1.0, 2.5};
    script *sc = (script *)calloc(1, sizeof *sc);
    const dg_mdgan_stats *st;
    int it;
    script_start(sc, 2, 0.5, DG_STALENESS_INVERSE, 0);
    st = dg_mdgan_server_stats(sc->s);
    for (it = 0; it < 3; it++) {
        script_iteration(sc, secs, NULL, NULL);
        CHECK(st->n_live == 2 && st->n_stale == 0);
        CHECK_NEAR(dg_netsim_clock(sc->t, 0), it + 1.0, 1e-9);
        CHECK(st->stale_dropped == (it == 2));
    }
    script_end(sc);
    free(sc);
}

/* ---- q = N, or no network model: the synchronous MD-GAN ---- */

static void mdgan_run(const dg_mdgan_config *c, const char *network, int iters, float **g,
                      double *sim)
{
    dg_dataset ds;
    dg_partition part;
    dg_mdgan_run *run;
    dg_net *net;
    int i;
    make_data(&ds, 96, 5);
    CHECK_OK(dg_partition_iid(&part, ds.n, c->n_workers, 5));
    CHECK_OK(dg_mdgan_run_create(&run, c, pool2, &ds, &part, NULL, 0, NULL, 0));
    if (network) {
        dg_netsim_config net_cfg;
        CHECK_OK(dg_netsim_parse(network, &net_cfg));
        CHECK_OK(dg_mdgan_run_set_network(run, &net_cfg));
    }
    for (i = 0; i < iters; i++) CHECK_OK(dg_mdgan_run_iteration(run));
    net = dg_mdgan_server_generator(dg_mdgan_run_server(run));
    *g = (float *)malloc(4 * dg_net_param_count(net));
    memcpy(*g, dg_net_params(net), 4 * dg_net_param_count(net));
    *sim = dg_netsim_clock(dg_mdgan_run_transport(run), 0);
    dg_mdgan_run_free(run);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

TEST(async_quorum_n_is_sync)
{
    enum { N = 4, ITERS = 8 };
    dg_mdgan_config c = small_config(N);
    size_t np;
    float *g_sync, *g_async;
    double sim_sync, sim_async;
    dg_net *probe;
    c.local_epochs = 1; /* swaps on: every 2 iterations (24 images per worker) */
    c.swap_every = 2;
    c.k = 2;
    CHECK_OK(dg_build_generator(&probe, c.arch, c.z_dim, 0, c.c, c.h, c.w));
    np = dg_net_param_count(probe);
    dg_net_free(probe);
    /* under the edge profile (jitter, loss, a slow worker): same bits, same time */
    mdgan_run(&c, "edge; worker 2 gflops=2", ITERS, &g_sync, &sim_sync);
    c.quorum = N;
    mdgan_run(&c, "edge; worker 2 gflops=2", ITERS, &g_async, &sim_async);
    CHECK(memcmp(g_sync, g_async, 4 * np) == 0);
    CHECK(sim_async == sim_sync);
    CHECK(sim_sync > 0.0);
    free(g_async);
    /* without a network model every feedback arrives together: any quorum */
    c.quorum = 1;
    c.deadline = 1e-3;
    mdgan_run(&c, NULL, ITERS, &g_async, &sim_async);
    CHECK(memcmp(g_sync, g_async, 4 * np) == 0);
    CHECK(sim_async == -1.0);
    free(g_async);
    /* and a quorum under the network is not (the test can fail) */
    c.quorum = 2;
    c.deadline = 0;
    mdgan_run(&c, "edge; worker 2 gflops=2", ITERS, &g_async, &sim_async);
    CHECK(memcmp(g_sync, g_async, 4 * np) != 0);
    CHECK(sim_async < sim_sync);
    free(g_async);
    free(g_sync);
}

/* ---- held feedback survives a checkpoint ---- */

static dg_mdgan_run *held_run(const dg_mdgan_config *c, const dg_dataset *ds,
                              const dg_partition *part)
{
    dg_mdgan_run *run;
    dg_netsim_config net;
    CHECK_OK(dg_mdgan_run_create(&run, c, pool2, ds, part, NULL, 0, NULL, 0));
    CHECK_OK(dg_netsim_parse("edge; worker 2 gflops=2; worker 4 gflops=4", &net));
    CHECK_OK(dg_mdgan_run_set_network(run, &net));
    return run;
}

static int held_count(dg_mdgan_run *run)
{
    dg_mdgan_server *s = dg_mdgan_run_server(run);
    int n, k = 0;
    for (n = 1; n <= s->ro.slots; n++) k += s->ro.got[n] != NULL;
    return k;
}

/* The start of section i of a checkpoint (its u32 type; length u64 and
   CRC u32 follow, then its bytes). */
static size_t section_at(const unsigned char *buf, int i)
{
    size_t at = 16;
    uint64_t len;
    while (i-- > 0) {
        memcpy(&len, buf + at + 4, 8);
        at += 16 + (size_t)len;
    }
    return at;
}

/* An asynchronous run under a network with stragglers (quorum 2 of 4),
   saved at iteration 5 while feedback is held (dg_mdgan_run_save: the
   server's held feedback and the network model's clocks) and loaded into
   a new run, ends 5 iterations later with G, the simulated clock and the
   stale counts of the uninterrupted run; a held-feedback section that is
   damaged or names a worker twice is refused and changes nothing. */
TEST(async_resume_keeps_held_feedback)
{
    enum { N = 4, T = 5 };
    dg_dataset ds;
    dg_partition part;
    dg_mdgan_config c = small_config(N);
    dg_mdgan_run *a, *b;
    dg_mdgan_server *s;
    unsigned char *buf, *bad;
    float *g0;
    size_t len, np, at;
    int it, stale_a = 0, stale_b = 0, held;
    uint32_t crc;
    c.quorum = 2;
    c.k = 2;
    make_data(&ds, 96, 5);
    CHECK_OK(dg_partition_iid(&part, ds.n, N, 5));
    a = held_run(&c, &ds, &part);
    for (it = 0; it < 2 * T; it++) {
        CHECK_OK(dg_mdgan_run_iteration(a));
        if (it >= T) stale_a += dg_mdgan_server_stats(dg_mdgan_run_server(a))->n_stale;
    }
    b = held_run(&c, &ds, &part);
    for (it = 0; it < T; it++) CHECK_OK(dg_mdgan_run_iteration(b));
    held = held_count(b);
    CHECK(held > 0); /* the stragglers' feedback waits for a later iteration */
    CHECK_OK(dg_mdgan_run_save(b, tmpdir));
    {
        FILE *f = fopen(tpath("network.ckpt"), "rb"); /* the simulated clocks */
        CHECK(f != NULL);
        if (f) fclose(f);
    }
    dg_mdgan_run_free(b);
    b = held_run(&c, &ds, &part);
    CHECK_OK(dg_mdgan_run_load(b, tmpdir));
    CHECK(held_count(b) == held);
    for (it = 0; it < T; it++) {
        CHECK_OK(dg_mdgan_run_iteration(b));
        stale_b += dg_mdgan_server_stats(dg_mdgan_run_server(b))->n_stale;
    }
    np = dg_net_param_count(dg_mdgan_server_generator(dg_mdgan_run_server(a)));
    check_same_floats("G after resume", dg_net_params(dg_mdgan_server_generator(dg_mdgan_run_server(a))),
                      np, dg_net_params(dg_mdgan_server_generator(dg_mdgan_run_server(b))), np);
    CHECK(dg_netsim_clock(dg_mdgan_run_transport(a), 0) ==
          dg_netsim_clock(dg_mdgan_run_transport(b), 0));
    CHECK(stale_a > 0 && stale_b == stale_a);
    /* the server's checkpoint: state, G, held feedback */
    s = dg_mdgan_run_server(b);
    len = dg_mdgan_server_save_size(s);
    buf = (unsigned char *)malloc(len);
    bad = (unsigned char *)malloc(len);
    CHECK_OK(dg_mdgan_server_save_mem(s, buf, len, &len));
    held = held_count(b);
    CHECK(held > 0);
    g0 = (float *)malloc(4 * np);
    memcpy(g0, dg_net_params(dg_mdgan_server_generator(s)), 4 * np);
    at = section_at(buf, 2);
    CHECK(at < len && buf[at] == 6 && section_at(buf, 3) == len); /* HELD, the last one */
    if (at >= len) at = 0; /* (failed above) */
    memcpy(bad, buf, len);
    bad[len - 1] ^= 1; /* a flipped bit of a held value */
    CHECK(dg_mdgan_server_load_mem(s, bad, len) == DG_ERR_CHECKSUM);
    memcpy(bad, buf, len);
    bad[at + 16 + 12] = bad[at + 16 + 12 + 4 + 8 + 8 + 8 + 4 * SB * SD]; /* the 2nd held worker's id */
    if (held < 2) bad[at + 16 + 12] = 9; /* or one not in the run */
    crc = dg_crc32(0, bad + at + 16, len - at - 16);
    memcpy(bad + at + 12, &crc, 4);
    CHECK(dg_mdgan_server_load_mem(s, bad, len) == DG_ERR_FORMAT);
    CHECK(strstr(dg_last_error(), "held feedback") != NULL);
    CHECK(held_count(b) == held); /* refused: nothing changed */
    CHECK(memcmp(g0, dg_net_params(dg_mdgan_server_generator(s)), 4 * np) == 0);
    CHECK_OK(dg_mdgan_server_load_mem(s, buf, len));
    CHECK(held_count(b) == held);
    free(g0);
    free(buf);
    free(bad);
    dg_mdgan_run_free(a);
    dg_mdgan_run_free(b);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

/* ---- real time (the process drivers' server) ---- */

/* Worker n's feedback for its batch of iteration it, of seeded values. */
static void send_feedback(dg_transport *t, int n, int64_t it)
{
    dg_part_kind k = DG_PART_F32;
    size_t bd = SB * SD;
    dg_msg *m;
    dg_rng rng = dg_rng_make(78, (uint64_t)n, (uint64_t)it);
    CHECK_OK(dg_msg_create(t, DG_MSG_FEEDBACK, n, 0, it, 1, &k, &bd, &m));
    dg_rng_fill_uniform(&rng, (float *)m->part[0].data, bd, -1, 1);
    CHECK_OK(dg_transport_send(t, m));
}

/* The number of generated batches waiting for worker n (freed). */
static int batches_for(dg_transport *t, int n)
{
    dg_msg *m;
    int k = 0;
    while (dg_transport_recv(t, n, 0, &m) == DG_OK) {
        k += m->type == DG_MSG_GEN_BATCHES;
        dg_msg_free(t, m);
    }
    return k;
}

/* The server of dg_mdgan_server_drive in real time (its private switch):
   with q = 2 of 3 an iteration closes when the second feedback is handled,
   worker 3 (silent) stays live and asked and gets no new batch; its late
   feedback is used at the next close, stale.  With q = 3 and a 50 ms
   deadline a blocking poll closes on the one feedback in once the deadline
   has passed, and past it, with none usable, waits (no empty update). */
/* A real-time server of quorum q (deadline in seconds, 0: none) over an
   in-process transport, its first iteration begun. */
static dg_mdgan_server *realtime_server(int q, double deadline, dg_transport **t,
                                        const dg_mdgan_stats **st)
{
    dg_mdgan_config c = small_config(SN);
    dg_mdgan_server *s = NULL;
    c.quorum = q;
    c.deadline = deadline;
    CHECK_OK(dg_inproc_create(t, SN + 1, 0, 0));
    CHECK_OK(dg_mdgan_server_create(&s, &c, *t, pool1));
    if (!s) return NULL;
    s->realtime = 1;
    *st = dg_mdgan_server_stats(s);
    CHECK_OK(dg_mdgan_server_begin(s));
    return s;
}

TEST(realtime_closes_as_feedback_arrives)
{
    dg_transport *t;
    const dg_mdgan_stats *st;
    dg_mdgan_server *s = realtime_server(2, 0.0, &t, &st);
    if (!s) return;
    send_feedback(t, 1, 0);
    CHECK(dg_mdgan_server_poll(s, 0) == DG_ERR_TIMEOUT && st->iteration == 0); /* 1 of 2 */
    send_feedback(t, 2, 0);
    CHECK_OK(dg_mdgan_server_poll(s, 0));
    CHECK(st->iteration == 1 && st->n_live == 2 && st->n_stale == 0 && st->n_dropped == 0);
    CHECK(dg_mdgan_server_is_live(s, 3) && dg_mdgan_server_missing(s) == 0);
    CHECK(batches_for(t, 3) == 1 && batches_for(t, 1) == 1);
    CHECK_OK(dg_mdgan_server_begin(s)); /* to 1 and 2 only: 3's batch is in flight */
    CHECK(batches_for(t, 3) == 0 && batches_for(t, 1) == 1);
    send_feedback(t, 3, 0); /* late */
    send_feedback(t, 1, 1);
    CHECK_OK(dg_mdgan_server_poll(s, 0));
    CHECK(st->iteration == 2 && st->n_live == 2 && st->n_stale == 1);
    dg_mdgan_server_free(s);
    dg_transport_close(t);

    if (!(s = realtime_server(SN, 0.05, &t, &st))) return;
    send_feedback(t, 1, 0);
    CHECK_OK(dg_mdgan_server_poll(s, 10000)); /* closes at the deadline, with 1 of 3 */
    CHECK(st->iteration == 1 && st->n_live == 1 && st->n_dropped == 0);
    CHECK_OK(dg_mdgan_server_begin(s)); /* to 1 only */
    CHECK(dg_mdgan_server_poll(s, 200) == DG_ERR_TIMEOUT && st->iteration == 1);
    send_feedback(t, 2, 0);
    CHECK_OK(dg_mdgan_server_poll(s, 10000));
    CHECK(st->iteration == 2 && st->n_live == 1 && st->n_stale == 1);
    dg_mdgan_server_free(s);
    dg_transport_close(t);
}

TEST(async_settings_checked)
{
    dg_mdgan_config c = small_config(3);
    dg_transport *t;
    dg_mdgan_server *s = NULL;
    dg_drive d;
    memset(&d, 0, sizeof d);
    CHECK_OK(dg_inproc_create(&t, 4, 0, 0));
    c.quorum = 4;
    CHECK(dg_mdgan_server_create(&s, &c, t, pool1) == DG_ERR_ARG);
    c.quorum = 2;
    c.deadline = -1;
    CHECK(dg_mdgan_server_create(&s, &c, t, pool1) == DG_ERR_ARG);
    c.deadline = 0;
    c.tau_max = -2;
    CHECK(dg_mdgan_server_create(&s, &c, t, pool1) == DG_ERR_ARG);
    c.tau_max = -1;
    c.staleness = (dg_staleness)7;
    CHECK(dg_mdgan_server_create(&s, &c, t, pool1) == DG_ERR_ARG);
    CHECK(dg_mdgan_server_drive(&c, t, pool1, &d) == DG_ERR_ARG); /* the process driver too */
    dg_transport_close(t);
}

/* ---- FeGAN ---- */

/* selection counts over R draws of m of the weights w against R * pi_i,
   pi_i = min(1, ...) given in pi; returns the chi-square statistic over
   the items with 0 < pi < 1 (the others must be exact) */
static double pick_chi2(const double *w, const double *pi, int n, int m, int rounds)
{
    int count[16] = {0}, r, i, total = 0;
    char chosen[16];
    uint32_t order[16];
    double chi2 = 0.0;
    for (r = 0; r < rounds; r++) {
        dg_rng rng = dg_rng_make(9, DG_FLGAN_STREAM_PICK, (uint64_t)r);
        dg__pps_pick(&rng, w, n, m, order, chosen);
        for (i = 0; i < n; i++) {
            count[i] += chosen[i];
            total += chosen[i];
        }
    }
    CHECK(total == rounds * m);
    for (i = 0; i < n; i++) {
        double e = rounds * pi[i];
        if (pi[i] <= 0.0 || pi[i] >= 1.0) CHECK(count[i] == (int)e);
        else chi2 += (count[i] - e) * (count[i] - e) / e;
    }
    return chi2;
}

TEST(fegan_sampling_distribution)
{
    enum { R = 20000 };
    double w[10], pi[10], chi2;
    int i;
    /* uniform: 3 of 10, each 0.3 (chi-square, 9 degrees of freedom: 27.9
       at p = 0.001) */
    for (i = 0; i < 10; i++) w[i] = 1.0, pi[i] = 0.3;
    chi2 = pick_chi2(w, pi, 10, 3, R);
    printf("  uniform 3 of 10: chi2 %.2f (9 dof)\n", chi2);
    CHECK(chi2 < 27.9);
    /* balanced: shard sizes 1..10, 3 of them: pi = 3 m_i / 55 */
    for (i = 0; i < 10; i++) w[i] = i + 1, pi[i] = 3.0 * (i + 1) / 55.0;
    chi2 = pick_chi2(w, pi, 10, 3, R);
    printf("  proportional to 1..10, 3 of 10: chi2 %.2f (9 dof)\n", chi2);
    CHECK(chi2 < 27.9);
    /* the uniform frequencies are far from these (the test can fail) */
    for (i = 0; i < 10; i++) pi[i] = 0.3;
    CHECK(pick_chi2(w, pi, 10, 3, 2000) > 100.0);
    /* a shard of 100 among four of 1, 2 of 5: it is always chosen, the
       others 1/4 each; an empty slot (weight 0) never */
    w[0] = 100, pi[0] = 1;
    for (i = 1; i < 5; i++) w[i] = 1, pi[i] = 0.25;
    w[5] = 0, pi[5] = 0;
    chi2 = pick_chi2(w, pi, 6, 2, R);
    printf("  one certain, 1 of 4 others: chi2 %.2f (3 dof)\n", chi2);
    CHECK(chi2 < 16.3);
}

/* an FL-GAN run of c on 64 images with shards of 8, 16, 8 and 32 */
typedef struct fl_fixture {
    dg_dataset ds;
    dg_partition part;
    dg_flgan_run *run;
} fl_fixture;

static dg_flgan_run *fl_start(fl_fixture *f, const dg_flgan_config *c, const char *network)
{
    static const size_t cut[5] = {0, 8, 24, 32, 64};
    int n;
    memset(f, 0, sizeof *f);
    make_data(&f->ds, 64, 3);
    CHECK_OK(dg_partition_iid(&f->part, f->ds.n, 4, 5));
    for (n = 0; n <= 4; n++) f->part.offset[n] = cut[n];
    CHECK_OK(dg_flgan_run_create(&f->run, c, pool2, &f->ds, &f->part, NULL, 0));
    if (network) {
        dg_netsim_config net;
        CHECK_OK(dg_netsim_parse(network, &net));
        CHECK_OK(dg_flgan_run_set_network(f->run, &net));
    }
    return f->run;
}

static void fl_end(fl_fixture *f)
{
    dg_flgan_run_free(f->run);
    dg_partition_free(&f->part);
    dg_dataset_free(&f->ds);
}

/* Half of 4 workers per round, balanced: the two the draw of (seed, PICK,
   0) names get the model, train and upload (traffic, clocks, local
   iterations), the others do nothing; G is their shard-weighted mean. */
TEST(fegan_round_asks_the_chosen_only)
{
    static const double shard[5] = {0, 8, 16, 8, 32};
    dg_flgan_config c = small_flgan_config(4, 2);
    fl_fixture f;
    dg_flgan_run *run;
    dg_transport *t;
    dg_net *g;
    double total = 0;
    char chosen[4];
    uint32_t order[4];
    dg_rng rng;
    size_t np, i;
    float *mean;
    int n, first = 1, n_chosen = 0;
    c.fraction = 0.5f;
    c.balanced = 1;
    run = fl_start(&f, &c, "wan");
    t = dg_flgan_run_transport(run);
    rng = dg_rng_make(c.seed, DG_FLGAN_STREAM_PICK, 0);
    dg__pps_pick(&rng, shard + 1, 4, 2, order, chosen);
    CHECK_OK(dg_flgan_run_round(run));
    g = dg_flgan_server_generator(dg_flgan_run_server(run));
    np = dg_net_param_count(g);
    mean = (float *)calloc(np, 4);
    for (n = 1; n <= 4; n++)
        if (chosen[n - 1]) total += shard[n];
    for (n = 1; n <= 4; n++) {
        struct dg_flgan_worker *w = dg_flgan_run_worker(run, n);
        int on = chosen[n - 1];
        n_chosen += on;
        CHECK((dg_transport_traffic(t, 0, n).messages == 1) == on);
        CHECK((dg_transport_traffic(t, n, 0).messages == 1) == on);
        CHECK((dg_netsim_clock(t, n) > 0.0) == on);
        CHECK(w->local_iter == (on ? 2 : 0));
        if (on) { /* the hand-computed mean, in worker order, as the weights say */
            const float *x = dg_net_params(w->gan.g);
            float wgt = (float)(shard[n] / total);
            for (i = 0; i < np; i++) mean[i] = first ? wgt * x[i] : mean[i] + wgt * x[i];
            first = 0;
        }
    }
    CHECK(n_chosen == 2);
    CHECK(dg_flgan_server_stats(dg_flgan_run_server(run))->n_live == 2);
    CHECK(memcmp(mean, dg_net_params(g), 4 * np) == 0);
    /* the next rounds keep every worker live */
    CHECK_OK(dg_flgan_run_round(run));
    CHECK_OK(dg_flgan_run_round(run));
    for (n = 1; n <= 4; n++) CHECK(dg_flgan_server_is_live(dg_flgan_run_server(run), n));
    free(mean);
    fl_end(&f);
}

/* C = 1, balanced or not, is plain FL-GAN */
TEST(fegan_fraction_one_is_plain)
{
    dg_flgan_config c = small_flgan_config(4, 2);
    fl_fixture a, b;
    int r, k;
    for (k = 0; k < 2; k++) {
        dg_flgan_run *ra = fl_start(&a, &c, NULL), *rb;
        dg_flgan_config c1 = c;
        c1.fraction = 1.0f;
        c1.balanced = k;
        rb = fl_start(&b, &c1, NULL);
        for (r = 0; r < 2; r++) {
            CHECK_OK(dg_flgan_run_round(ra));
            CHECK_OK(dg_flgan_run_round(rb));
        }
        CHECK(memcmp(dg_net_params(dg_flgan_server_generator(dg_flgan_run_server(ra))),
                     dg_net_params(dg_flgan_server_generator(dg_flgan_run_server(rb))),
                     4 * dg_net_param_count(dg_flgan_server_generator(dg_flgan_run_server(ra)))) == 0);
        fl_end(&a);
        fl_end(&b);
    }
}

TEST(fegan_settings_checked)
{
    dg_flgan_config c = small_flgan_config(2, 1);
    dg_transport *t;
    dg_flgan_server *s = NULL;
    CHECK_OK(dg_inproc_create(&t, 3, 0, 0));
    c.fraction = 1.5f;
    CHECK(dg_flgan_server_create(&s, &c, t, pool1) == DG_ERR_ARG);
    c.fraction = 0.5f;
    c.balanced = 2;
    CHECK(dg_flgan_server_create(&s, &c, t, pool1) == DG_ERR_ARG);
    /* balanced without the shard sizes: refused at the round, naming why */
    c.balanced = 1;
    CHECK_OK(dg_flgan_server_create(&s, &c, t, pool1));
    CHECK(dg_flgan_server_begin(s) == DG_ERR_STATE);
    CHECK(strstr(dg_last_error(), "shard size") != NULL);
    CHECK(dg_flgan_server_set_shard(s, 3, 10) == DG_ERR_ARG);
    CHECK(dg_flgan_server_set_shard(s, 1, 0) == DG_ERR_ARG);
    dg_flgan_server_free(s);
    dg_transport_close(t);
}

int main(void)
{
    if (!pools_create() || !scratch_create("async")) return 1;
    RUN(late_feedback_weighs_one_over_tau);
    RUN(late_feedback_constant_weight);
    RUN(late_feedback_beyond_tau_max_dropped);
    RUN(deadline_closes_on_the_simulated_clock);
    RUN(deadline_waits_for_the_first_feedback);
    RUN(deadline_waits_for_a_usable_feedback);
    RUN(async_quorum_n_is_sync);
    RUN(async_resume_keeps_held_feedback);
    RUN(realtime_closes_as_feedback_arrives);
    RUN(async_settings_checked);
    RUN(fegan_sampling_distribution);
    RUN(fegan_round_asks_the_chosen_only);
    RUN(fegan_fraction_one_is_plain);
    RUN(fegan_settings_checked);
    pools_destroy();
    scratch_remove();
    return th_done();
}
