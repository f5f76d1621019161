/* The network model (dg_netsim): the spec parser and its errors, the
   arithmetic of arrivals by hand-computed cases (one message, two queued on
   a link, order per link under jitter while another link is faster, the
   retransmission timeout of a loss), a disconnect dropping a worker, a
   straggler delaying the MD-GAN server's iteration by exactly its modelled
   compute, simulated times identical for a seed on 1 and 2 threads, and
   the network changing no result: MD-GAN and FL-GAN give the same bits
   with and without it; a resumed run keeps its clocks (network.ckpt); one
   run timed on three networks (add_network) equals the three runs, and
   what add_network refuses. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include "small_gan.h"
#include "scratch.h"

#include <stdlib.h>


/* a network from a spec that must parse */
static dg_netsim_config net(const char *spec)
{
    dg_netsim_config c = dg_netsim_config_init();
    if (dg_netsim_parse(spec, &c) != DG_OK) printf("  spec '%s': %s\n", spec, dg_last_error());
    return c;
}

/* a netsim over an in-process transport of n peers */
static dg_transport *sim(int n, const char *spec)
{
    dg_transport *in, *t = NULL;
    dg_netsim_config c = net(spec);
    if (dg_inproc_create(&in, n, 0, 0) != DG_OK) return NULL;
    if (dg_netsim_create(&t, in, &c) != DG_OK) {
        printf("  create: %s\n", dg_last_error());
        dg_transport_close(in);
    }
    return t;
}

/* sends `floats` floats from -> to, tagged with iteration it */
static dg_result send_floats(dg_transport *t, int from, int to, int64_t it, size_t floats)
{
    dg_part_kind k = DG_PART_F32;
    dg_msg *m;
    dg_result r = dg_msg_create(t, DG_MSG_USER, from, to, it, 1, &k, &floats, &m);
    return r ? r : dg_transport_send(t, m);
}

/* receives one message at self; returns its iteration (-1: none) */
static int64_t recv_one(dg_transport *t, int self)
{
    dg_msg *m;
    int64_t it;
    if (dg_transport_recv(t, self, 0, &m) != DG_OK) return -1;
    it = m->iteration;
    dg_msg_free(t, m);
    return it;
}

static int has(const char *s, const char *part) { return strstr(s, part) != NULL; }

TEST(spec_parsing)
{
    dg_netsim_config c, keep;
    dg_netsim_link l;
    dg_transport *t;
    FILE *f;
    int p, slow;
    CHECK_OK(dg_netsim_parse("wan", &c));
    CHECK(c.up.bw == 100e6 && c.down.latency == 0.02 && c.peer.jitter == 0.001);
    CHECK_OK(dg_netsim_parse("edge", &c));
    CHECK(c.up.bw == 5e6 && c.down.bw == 20e6 && c.peer.bw == 5e6 && c.up.latency == 0.05);
    CHECK(c.worker_gflops == 20.0 && c.server_gflops == 100.0 && c.slow_fraction == 0.1 &&
          c.slow_factor == 4.0);
    CHECK_OK(dg_netsim_parse("profile=datacenter", &c));
    CHECK(c.down.bw == 10e9 && c.up.latency == 1e-4);
    CHECK_OK(dg_netsim_parse("profile=edge; link 0->3 bw=1e6 lat=0.08; worker 5 gflops=2\n"
                             "  # a comment\nup lat=20ms jitter=500us ; seed=7 rto=0.3\n"
                             "link *->2 bw=2.5M; server gflops=400", &c));
    CHECK(c.seed == 7 && c.rto_min == 0.3 && c.server_gflops == 400.0);
    CHECK(c.n_link_rules == 2 && c.n_worker_rules == 1);
    CHECK(c.up.latency == 0.02 && fabs(c.up.jitter - 5e-4) < 1e-15 && c.up.bw == 5e6);
    t = NULL;
    {
        dg_transport *in;
        CHECK_OK(dg_inproc_create(&in, 11, 0, 0));
        CHECK_OK(dg_netsim_create(&t, in, &c));
    }
    CHECK_OK(dg_netsim_link_params(t, 0, 3, &l));
    CHECK(l.bw == 1e6 && l.latency == 0.08 && l.jitter == 0.01); /* the rest from down */
    CHECK_OK(dg_netsim_link_params(t, 3, 0, &l));
    CHECK(l.bw == 5e6 && l.latency == 0.02);
    CHECK_OK(dg_netsim_link_params(t, 0, 2, &l));
    CHECK(l.bw == 2.5e6 && l.latency == 0.05);
    CHECK_OK(dg_netsim_link_params(t, 4, 2, &l));
    CHECK(l.bw == 2.5e6);
    CHECK(dg_netsim_gflops(t, 0) == 400.0 && dg_netsim_gflops(t, 5) == 2.0);
    for (slow = 0, p = 1; p <= 10; p++) slow += dg_netsim_gflops(t, p) == 5.0;
    CHECK(slow == 1); /* round(10% of 10) workers 4x slower (worker 5 is set) */
    dg_transport_close(t);
    /* a rule naming a peer the transport lacks */
    {
        dg_transport *in;
        c = net("worker 9 gflops=1");
        CHECK(dg_netsim_config_check(&c, 10) == DG_OK && dg_netsim_config_check(&c, 9) == DG_ERR_ARG);
        CHECK_OK(dg_inproc_create(&in, 4, 0, 0));
        CHECK(dg_netsim_create(&t, in, &c) == DG_ERR_ARG && t == NULL);
        CHECK(has(dg_last_error(), "worker rule 9"));
        dg_transport_close(in);
    }
    /* strict: every bad token is named, *out unchanged */
    keep = c = dg_netsim_config_init();
    CHECK(dg_netsim_parse("profile=edge; link 0->3 bw=fast", &c) == DG_ERR_ARG);
    CHECK(has(dg_last_error(), "item 2 ('link 0->3 bw=fast'): 'bw=fast': 'fast' is not a number"));
    CHECK(memcmp(&c, &keep, sizeof c) == 0);
    {   /* each spec refused, naming what the second column names */
        static const char *const bad[][2] = {
            {"lat=1; profile=wan", ""}, {"up lat=1; wan", "'wan'"}, {"moon", "'moon'"},
            {"link 0-3 bw=1", "'0-3'"}, {"link 0->x bw=1", "'x'"}, {"link 0->3", ""},
            {"up speed=3", "'speed'"}, {"up loss=0.95", "loss=0.95"}, {"up lat=-1", ""},
            {"up lat=5parsecs", ""}, {"up bw", "'bw'"}, {"worker 0 gflops=1", "'0'"},
            {"server slow=0.5", "'slow'"}, {"seed=x", "seed=x"}, {" ; # nothing", ""},
            {"edge; up", "'up' sets nothing"}, {"wan; edge", "'edge': the profile comes first"},
            {"up lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1", "too many fields"}};
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            int ok = dg_netsim_parse(bad[i][0], &c) == DG_ERR_ARG && has(dg_last_error(), bad[i][1]);
            if (!ok) printf("  '%s': %s\n", bad[i][0], dg_last_error());
            CHECK(ok);
        }
    }
    CHECK(dg_netsim_parse("@/nonexistent/net.txt", &c) == DG_ERR_IO);
    CHECK(memcmp(&c, &keep, sizeof c) == 0);
    CHECK(dg_netsim_parse("@build", &c) == DG_ERR_IO && has(dg_last_error(), "build is not a file"));
    CHECK(dg_netsim_parse("@", &c) == DG_ERR_IO && has(dg_last_error(), "no name"));
    /* 64 fields are the most an item has; a link from a peer to itself is none */
    CHECK_OK(dg_netsim_parse("up lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
                             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
                             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
                             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
                             "lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 lat=1 "
                             "lat=1 lat=1 lat=1", &keep));
    CHECK_OK(dg_netsim_parse("wan # the uplink; up bw=x", &c)); /* a comment runs to the line's end */
    CHECK(c.up.bw == 100e6);
    c = net("link 2->2 bw=1M");
    CHECK(dg_netsim_config_check(&c, 4) == DG_ERR_ARG && has(dg_last_error(), "no link to itself"));
    /* from a file */
    if ((f = fopen("build/test_netsim_spec.txt", "w")) != NULL) {
        /* a byte order mark, a comment with a ';' in it */
        fputs("\xEF\xBB\xBFprofile=wan\n# the slow one; worker 3\nworker 2 gflops=1.5 # x; y\n", f);
        fclose(f);
        CHECK_OK(dg_netsim_parse("@build/test_netsim_spec.txt", &c));
        CHECK(c.up.bw == 100e6 && c.n_worker_rules == 1 && c.worker_rules[0].gflops == 1.5);
        remove("build/test_netsim_spec.txt");
    }
}

/* B = 56 + 16 + 4*floats bytes: the frame of one part and its payload */
static double bytes_of(size_t floats) { return DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES + 4.0 * floats; }

TEST(one_message_and_two_queued)
{
    /* 1 MB/s, 10 ms; the server computes 1e9 FLOPs at 100 GFLOP/s first */
    dg_transport *t = sim(3, "down bw=8e6 lat=0.01");
    double tx = bytes_of(1000) * 8.0 / 8e6;
    if (!t) return;
    dg_transport_charge(t, 0, 1e9);
    CHECK(dg_netsim_clock(t, 0) == 0.01);
    CHECK_OK(send_floats(t, 0, 1, 0, 1000));
    CHECK(dg_netsim_clock(t, 0) == 0.01); /* sending costs the sender nothing */
    CHECK(recv_one(t, 1) == 0);
    CHECK_NEAR(dg_netsim_clock(t, 1), 0.01 + tx + 0.01, 1e-15);
    /* two back to back from t0 = 0.01: the second waits for the first */
    CHECK_OK(send_floats(t, 0, 2, 0, 1000));
    CHECK_OK(send_floats(t, 0, 2, 1, 1000));
    CHECK(recv_one(t, 2) == 0);
    CHECK_NEAR(dg_netsim_clock(t, 2), 0.01 + tx + 0.01, 1e-15);
    CHECK(recv_one(t, 2) == 1);
    CHECK_NEAR(dg_netsim_clock(t, 2), 0.01 + 2 * tx + 0.01, 1e-15);
    /* a link idle again starts at the sender's clock */
    dg_transport_charge(t, 0, 1e10); /* + 0.1 s */
    CHECK_OK(send_floats(t, 0, 2, 2, 1000));
    CHECK(recv_one(t, 2) == 2);
    CHECK_NEAR(dg_netsim_clock(t, 2), 0.11 + tx + 0.01, 1e-15);
    /* a receiver ahead of the arrival keeps its clock */
    dg_transport_charge(t, 1, 1e12); /* 10 s */
    CHECK_OK(send_floats(t, 0, 1, 3, 10));
    CHECK(recv_one(t, 1) == 3);
    CHECK_NEAR(dg_netsim_clock(t, 1), 0.02 + tx + 10.0, 1e-12);
    CHECK(dg_netsim_clock(t, 3) == -1.0 && dg_netsim_clock(NULL, 0) == -1.0);
    dg_transport_close(t);
}

TEST(order_per_link_kept_while_another_is_faster)
{
    /* 0 -> 1: 10 ms + up to 50 ms of jitter; 0 -> 2: 1 ms, no jitter */
    dg_transport *t = sim(3, "down lat=0.01 jitter=0.05; link 0->2 lat=0.001 jitter=0");
    double prev = 0.0;
    int i, in_order = 1, monotone = 1;
    if (!t) return;
    for (i = 0; i < 50; i++) CHECK_OK(send_floats(t, 0, 1, i, 16));
    CHECK_OK(send_floats(t, 0, 2, 0, 16)); /* sent last, arrives first */
    for (i = 0; i < 50; i++) {
        double c;
        if (recv_one(t, 1) != i) in_order = 0;
        c = dg_netsim_clock(t, 1);
        if (c < prev || c < 0.01 || c >= 0.06) monotone = 0;
        prev = c;
    }
    CHECK(in_order && monotone);
    CHECK(recv_one(t, 2) == 0);
    CHECK(dg_netsim_clock(t, 2) == 0.001);
    CHECK(dg_netsim_clock(t, 2) < dg_netsim_clock(t, 1));
    dg_transport_close(t);
}

/* A message overtaken by jitter arrives with the one before it on its link
   (TCP delivers in order): each arrival is the running maximum of the
   link's raw times t + L + B/R + jitter, recomputed here from the link's
   draws (disconnect, jitter, one loss draw per message). */
TEST(arrival_raised_to_the_previous_on_its_link)
{
    /* 1 Mbit/s so that transmission queues too; 64 floats = 256 B of payload */
    dg_transport *t = sim(2, "down lat=0.01 jitter=0.05 bw=1M; seed=7");
    double raw_max = 0.0, free_at = 0.0, tx;
    int i, exact = 1, overtaken = 0;
    if (!t) return;
    for (i = 0; i < 50; i++) CHECK_OK(send_floats(t, 0, 1, i, 64));
    for (i = 0; i < 50; i++) {
        dg_rng rng = dg_rng_make(7, DG_NETSIM_STREAM_LINK + 0 * 2 + 1, (uint64_t)i);
        dg_msg *m;
        double jitter, raw;
        dg_rng_u64(&rng); /* disconnect */
        jitter = (double)(dg_rng_u64(&rng) >> 11) / 9007199254740992.0 * 0.05;
        if (dg_transport_recv(t, 1, 0, &m) != DG_OK) {
            exact = 0;
            break;
        }
        tx = 8.0 * (double)dg_msg_encoded_size(m) / 1e6;
        free_at += tx; /* all sent at 0: each starts when the one before is out */
        raw = free_at + 0.01 + jitter;
        if (raw < raw_max) overtaken++;
        else raw_max = raw;
        if (m->iteration != i || fabs(m->arrival - raw_max) > 1e-12) exact = 0;
        dg_msg_free(t, m);
    }
    CHECK(exact);
    CHECK(overtaken > 0); /* the rule was exercised */
    dg_transport_close(t);
}

TEST(loss_adds_the_rto)
{
    /* loss 0.5; latencies 20 ms and 30 ms: 2*RTT = 0.1 < rto_min 0.2 */
    dg_transport *t = sim(2, "down lat=0.02 loss=0.5; up lat=0.03; seed=5");
    int i, some_lost = 0, some_not = 0, exact = 1;
    if (!t) return;
    for (i = 0; i < 20; i++) {
        /* the draws of message i on link 0 -> 1: disconnect, jitter, losses */
        dg_rng rng = dg_rng_make(5, DG_NETSIM_STREAM_LINK + 0 * 2 + 1, (uint64_t)i);
        int lost = 0;
        double at = 10.0 * i;
        dg_rng_u64(&rng);
        dg_rng_u64(&rng);
        while ((double)(dg_rng_u64(&rng) >> 11) / 9007199254740992.0 < 0.5) lost++;
        if (lost) some_lost = 1; else some_not = 1;
        CHECK_OK(send_floats(t, 0, 1, i, 4));
        CHECK(recv_one(t, 1) == i);
        if (fabs(dg_netsim_clock(t, 1) - (at + 0.02 + 0.2 * lost)) > 1e-12) exact = 0;
        dg_transport_charge(t, 0, 1e12); /* 10 s: the next message starts on an idle link */
    }
    CHECK(exact && some_lost && some_not);
    dg_transport_close(t);
    /* 2*RTT over rto_min: RTO = 2 * (0.2 + 0.3) = 1 s */
    t = sim(2, "down lat=0.2 loss=0.9; up lat=0.3; seed=5");
    if (!t) return;
    CHECK_OK(send_floats(t, 0, 1, 0, 4));
    CHECK(recv_one(t, 1) == 0);
    {
        double k = (dg_netsim_clock(t, 1) - 0.2) / 1.0;
        CHECK(k >= 0.0 && fabs(k - floor(k + 0.5)) < 1e-12);
    }
    dg_transport_close(t);
}

/* an MD-GAN run of n workers over network spec (NULL: none) on pool;
   "a|b": timed on a, and on b as well (add_network) */
static dg_mdgan_run *mdgan(dg_mdgan_config *c, dg_dataset *ds, dg_partition *part, dg_pool *pool,
                           const char *spec)
{
    dg_mdgan_run *run;
    char buf[256], *one, *save = NULL;
    int k = 0;
    if (dg_mdgan_run_create(&run, c, pool, ds, part, NULL, 0, NULL, 0) != DG_OK) return NULL;
    snprintf(buf, sizeof buf, "%s", spec ? spec : "");
    for (one = strtok_r(buf, "|", &save); one; one = strtok_r(NULL, "|", &save), k++) {
        dg_netsim_config nc = net(one);
        if ((k ? dg_mdgan_run_add_network(run, &nc) : dg_mdgan_run_set_network(run, &nc)) != DG_OK) {
            printf("  %s_network: %s\n", k ? "add" : "set", dg_last_error());
            dg_mdgan_run_free(run);
            return NULL;
        }
    }
    return run;
}

TEST(disconnect_drops_the_worker)
{
    dg_dataset ds;
    dg_partition part;
    dg_mdgan_config c = small_config(3);
    dg_mdgan_run *run;
    dg_transport *t = sim(3, "link 0->2 disconnect=1");
    int it;
    if (!t) return;
    CHECK_OK(send_floats(t, 0, 1, 0, 4));
    CHECK_OK(send_floats(t, 0, 2, 0, 4));
    CHECK(dg_transport_pending(t, 2) == 0 && dg_netsim_disconnected(t, 2));
    CHECK(recv_one(t, 1) == 0 && !dg_netsim_disconnected(t, 1));
    CHECK_OK(send_floats(t, 2, 1, 1, 4)); /* a disconnected peer sends nothing */
    CHECK(dg_transport_pending(t, 1) == 0);
    dg_transport_close(t);
    make_data(&ds, 96, 1);
    CHECK_OK(dg_partition_iid(&part, ds.n, 3, 1));
    run = mdgan(&c, &ds, &part, pool2, "link 0->2 disconnect=1");
    CHECK(run != NULL);
    for (it = 0; run && it < 3; it++) CHECK_OK(dg_mdgan_run_iteration(run));
    if (run) {
        const dg_mdgan_stats *st = dg_mdgan_server_stats(dg_mdgan_run_server(run));
        CHECK(st->iteration == 3 && st->n_live == 2 && st->n_dropped == 1);
        CHECK(dg_netsim_disconnected(dg_mdgan_run_transport(run), 2));
        dg_netsim_config ideal = dg_netsim_config_init();
        CHECK(dg_mdgan_run_set_network(run, &ideal) == DG_ERR_STATE); /* once, before traffic */
        dg_mdgan_run_free(run);
    }
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

/* The server's simulated iteration, by hand: G forward, GEN_BATCHES down
   (2 parts of b*d floats), the slowest worker's L D steps and feedback,
   FEEDBACK up (1 part), G backward. */
TEST(straggler_delays_the_server_by_its_compute)
{
    dg_dataset ds;
    dg_partition part;
    dg_mdgan_config c = small_config(3);
    const char *fast = "all bw=1e7 lat=0.01", *slow = "all bw=1e7 lat=0.01; worker 2 gflops=0.5";
    dg_mdgan_run *a, *b;
    make_data(&ds, 96, 1);
    CHECK_OK(dg_partition_iid(&part, ds.n, 3, 1));
    a = mdgan(&c, &ds, &part, pool1, fast);
    b = mdgan(&c, &ds, &part, pool2, slow);
    if (a && b) {
        dg_net *g = dg_mdgan_server_generator(dg_mdgan_run_server(a));
        dg_net *d = dg_mdgan_worker_discriminator(dg_mdgan_run_worker(a, 2));
        double bd = (double)c.batch * 64;
        double t_fwd = c.batch * dg_net_flops(g, 0) / 100e9;
        double t_bwd = c.batch * (dg_net_train_flops(g, 0) - dg_net_flops(g, 0)) / 100e9;
        double w_flops = c.batch * (2.0 * c.disc_steps * dg_net_train_flops(d, 0) +
                                    dg_net_train_flops(d, 1));
        double down = 8.0 * (DG_MSG_HEADER_BYTES + 2 * DG_MSG_PART_BYTES + 2 * 4 * bd) / 1e7;
        double up = 8.0 * (DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES + 4 * bd) / 1e7;
        double one_fast = t_fwd + down + 0.01 + w_flops / 100e9 + up + 0.01 + t_bwd;
        double one_slow = t_fwd + down + 0.01 + w_flops / 0.5e9 + up + 0.01 + t_bwd;
        CHECK_OK(dg_mdgan_run_iteration(a));
        CHECK_OK(dg_mdgan_run_iteration(b));
        CHECK_NEAR(dg_netsim_clock(dg_mdgan_run_transport(a), 0), one_fast, 1e-12);
        CHECK_NEAR(dg_netsim_clock(dg_mdgan_run_transport(b), 0), one_slow, 1e-12);
        CHECK_NEAR(dg_netsim_clock(dg_mdgan_run_transport(b), 0) -
                       dg_netsim_clock(dg_mdgan_run_transport(a), 0),
                   w_flops / 0.5e9 - w_flops / 100e9, 1e-12);
        /* a fast worker waited for nothing: its clock is its own answer's */
        CHECK_NEAR(dg_netsim_clock(dg_mdgan_run_transport(b), 1),
                   t_fwd + down + 0.01 + w_flops / 100e9, 1e-12);
        CHECK_OK(dg_mdgan_run_iteration(b));
        CHECK_NEAR(dg_netsim_clock(dg_mdgan_run_transport(b), 0), 2 * one_slow, 1e-12);
        /* the plain run has no clock */
        CHECK(w_flops > 0 && one_slow > one_fast);
    }
    dg_mdgan_run_free(a);
    dg_mdgan_run_free(b);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

/* MD-GAN with swaps, 4 workers: the G after iters iterations, the sim
   clocks of every peer into clk[0..4] (of each model k of "a|b|..":
   clk[5k..5k+4]) */
static size_t g_count;

/* With dir: the run stops after `iters` / 2 iterations, is saved into dir
   and freed, and a new run loads it and does the rest. */
static int mdgan_final_in(dg_pool *pool, const char *spec, int iters, const char *dir, float **g,
                          double *clk)
{
    dg_dataset ds;
    dg_partition part;
    dg_mdgan_config c = small_config(4);
    dg_mdgan_run *run;
    int it, p, ok = 1;
    c.local_epochs = 1;
    c.swap_every = 2;
    make_data(&ds, 128, 2);
    if (dg_partition_iid(&part, ds.n, 4, 3) != DG_OK) return 0;
    run = mdgan(&c, &ds, &part, pool, spec);
    if (!run) ok = 0;
    for (it = 0; ok && it < iters; it++) {
        if (dir && it == iters / 2) {
            ok = dg_mdgan_run_save(run, dir) == DG_OK;
            dg_mdgan_run_free(run);
            run = ok ? mdgan(&c, &ds, &part, pool, spec) : NULL;
            ok = run && dg_mdgan_run_load(run, dir) == DG_OK;
            if (!ok) printf("  resume: %s\n", dg_last_error());
        }
        ok = ok && dg_mdgan_run_iteration(run) == DG_OK;
    }
    if (ok) {
        dg_net *gn = dg_mdgan_server_generator(dg_mdgan_run_server(run));
        size_t n = g_count = dg_net_param_count(gn);
        *g = (float *)malloc(4 * n);
        memcpy(*g, dg_net_params(gn), 4 * n);
        int k, models = dg_netsim_models(dg_mdgan_run_transport(run));
        for (k = 0; k < (models ? models : 1); k++)
            for (p = 0; p <= 4; p++) clk[5 * k + p] = dg_netsim_clock_of(dg_mdgan_run_transport(run), k, p);
    }
    dg_mdgan_run_free(run);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
    return ok;
}

static int mdgan_final(dg_pool *pool, const char *spec, int iters, float **g, double *clk)
{
    return mdgan_final_in(pool, spec, iters, NULL, g, clk);
}

TEST(same_times_for_a_seed_on_1_and_2_threads)
{
    const char *spec = "edge; workers gflops=0.3; down loss=0.3 jitter=0.02; peer loss=0.2";
    float *g1 = NULL, *g2 = NULL, *g3 = NULL;
    double c1[5], c2[5], c3[5];
    CHECK(mdgan_final(pool1, spec, 6, &g1, c1));
    CHECK(mdgan_final(pool2, spec, 6, &g2, c2));
    CHECK(mdgan_final(pool2, "edge; workers gflops=0.3; down loss=0.3 jitter=0.02; peer loss=0.2; "
                             "seed=2", 6, &g3, c3));
    if (g1 && g2 && g3) {
        CHECK(memcmp(c1, c2, sizeof c1) == 0);
        CHECK(memcmp(g1, g2, 4 * g_count) == 0 && memcmp(g1, g3, 4 * g_count) == 0);
        CHECK(c1[0] > 0.0 && c1[0] != c3[0]); /* another seed, other draws */
        printf("  edge, 6 iterations: server at %.3f s\n", c1[0]);
    }
    free(g1);
    free(g2);
    free(g3);
}

TEST(mdgan_same_bits_with_and_without_a_network)
{
    float *plain = NULL, *ideal = NULL, *wan = NULL;
    double c0[5], c1[5], c2[5];
    CHECK(mdgan_final(pool2, NULL, 8, &plain, c0));
    CHECK(mdgan_final(pool2, "ideal", 8, &ideal, c1));
    CHECK(mdgan_final(pool1, "wan; all loss=0.2", 8, &wan, c2));
    if (plain && ideal && wan) {
        CHECK(memcmp(plain, ideal, 4 * g_count) == 0);
        CHECK(memcmp(plain, wan, 4 * g_count) == 0);
        CHECK(c0[0] == -1.0 && c1[0] > 0.0 && c2[0] > c1[0]);
    }
    free(plain);
    free(ideal);
    free(wan);
}

TEST(flgan_same_bits_and_a_clock)
{
    dg_dataset ds;
    dg_partition part;
    dg_flgan_config c = small_flgan_config(3, 2);
    dg_flgan_run *a = NULL, *b = NULL;
    dg_netsim_config nc = net("wan; worker 3 gflops=1");
    int r;
    make_data(&ds, 96, 4);
    CHECK_OK(dg_partition_iid(&part, ds.n, 3, 1));
    CHECK_OK(dg_flgan_run_create(&a, &c, pool2, &ds, &part, NULL, 0));
    CHECK_OK(dg_flgan_run_create(&b, &c, pool2, &ds, &part, NULL, 0));
    if (a && b) {
        dg_net *ga = dg_flgan_server_generator(dg_flgan_run_server(a));
        dg_net *gb = dg_flgan_server_generator(dg_flgan_run_server(b));
        CHECK_OK(dg_flgan_run_set_network(b, &nc));
        for (r = 0; r < 2; r++) {
            CHECK_OK(dg_flgan_run_round(a));
            CHECK_OK(dg_flgan_run_round(b));
        }
        CHECK(memcmp(dg_net_params(ga), dg_net_params(gb), 4 * dg_net_param_count(ga)) == 0);
        /* a round: the model down, worker 3's 2 local steps at 1 GFLOP/s, the
           model up (20 ms each way, + up to 1 ms of jitter) */
        {
            dg_net *d = dg_flgan_server_discriminator(dg_flgan_run_server(a));
            dg_traffic down = dg_transport_traffic(dg_flgan_run_transport(b), 0, 3);
            dg_traffic up = dg_transport_traffic(dg_flgan_run_transport(b), 3, 0);
            double t_w = 2.0 * c.batch * (dg_net_train_flops(ga, 0) + 2.0 * dg_net_train_flops(d, 0) +
                                          dg_net_train_flops(d, 1)) / 1e9;
            double tx = 8.0 * (down.payload_bytes + down.frame_bytes + up.payload_bytes +
                               up.frame_bytes) / 2 / 100e6;
            double round = tx + 0.04 + t_w;
            CHECK(down.messages == 2 && up.messages == 2);
            CHECK(dg_netsim_clock(dg_flgan_run_transport(b), 0) >= 2 * round);
            CHECK(dg_netsim_clock(dg_flgan_run_transport(b), 0) <= 2 * (round + 0.002));
        }
        CHECK(dg_netsim_clock(dg_flgan_run_transport(a), 0) == -1.0);
    }
    dg_flgan_run_free(a);
    dg_flgan_run_free(b);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

/* A run under a lossy, jittery network saved halfway and resumed ends with
   the clocks of every peer and the G of the uninterrupted run, bit for bit
   (the clocks, the links' busy times and their draw counts are in
   network.ckpt); a damaged, foreign or implausible state is refused with
   the model untouched, and a missing one starts the clocks at 0. */
TEST(resumed_run_keeps_its_clocks)
{
    const char *spec = "edge; workers gflops=0.3; down loss=0.3 jitter=0.02; peer loss=0.2";
    float *whole = NULL, *resumed = NULL;
    double c1[5], c2[5];
    char path[600];
    unsigned char buf[4096];
    size_t len;
    FILE *f;
    dg_transport *t3 = sim(4, "wan"), *t5 = sim(5, "wan");
    CHECK(mdgan_final(pool2, spec, 6, &whole, c1));
    CHECK(mdgan_final_in(pool2, spec, 6, tmpdir, &resumed, c2));
    if (whole && resumed) {
        CHECK(memcmp(c1, c2, sizeof c1) == 0);
        CHECK(memcmp(whole, resumed, 4 * g_count) == 0);
    }
    free(whole);
    free(resumed);
    CHECK_OK(dg_checkpoint_path(path, sizeof path, tmpdir, 0, -1));
    CHECK(strstr(path, "/network.ckpt") != NULL);
    f = fopen(path, "rb");
    len = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f) fclose(f);
    CHECK(len == 32 + 4 + 5 * 12 + 25 * 24 + 4); /* container, peers, 5 peers, 25 links, digest */
    if (t3 && t5 && len > 40) {
        double nan = NAN;
        CHECK(dg_netsim_load(t3, path) == DG_ERR_CONFIG && has(dg_last_error(), "5 peers, this run has 4"));
        /* t5 is a wan, the run an edge */
        CHECK(dg_netsim_load(t5, path) == DG_ERR_CONFIG && has(dg_last_error(), "another network"));
        /* the layout before the digest: its own message */
        dg__le64(buf + 20, len - 32 - 4);
        dg__le32(buf + 28, dg_crc32(0, buf + 32, len - 32 - 4));
        f = fopen(path, "wb");
        if (f) fwrite(buf, 1, len - 4, f), fclose(f);
        CHECK(dg_netsim_load(t5, path) == DG_ERR_VERSION && has(dg_last_error(), "older version"));
        dg__le64(buf + 20, len - 32);
        buf[40] ^= 1; /* peer 0's clock, under the section's CRC */
        f = fopen(path, "wb");
        if (f) fwrite(buf, 1, len, f), fclose(f);
        CHECK(dg_netsim_load(t5, path) == DG_ERR_CHECKSUM);
        memcpy(buf + 36, &nan, 8); /* a NaN clock with a valid CRC */
        dg__le32(buf + 28, dg_crc32(0, buf + 32, len - 32));
        f = fopen(path, "wb");
        if (f) fwrite(buf, 1, len - 1, f), fclose(f);
        CHECK(dg_netsim_load(t5, path) == DG_ERR_FORMAT); /* truncated */
        f = fopen(path, "wb");
        if (f) fwrite(buf, 1, len, f), fclose(f);
        CHECK(dg_netsim_load(t5, path) == DG_ERR_FORMAT && has(dg_last_error(), "peer 0: clock nan"));
        CHECK(dg_netsim_clock(t5, 0) == 0.0);
        CHECK_OK(dg_netsim_load(t5, tpath("none.ckpt")));
        CHECK(dg_netsim_load(NULL, path) == DG_ERR_ARG);
    }
    if (t3) dg_transport_close(t3);
    if (t5) dg_transport_close(t5);
}

/* A run resumes only under the network it was made with: another network
   or none is refused with the run untouched; a run saved without a model
   drops an earlier run's network.ckpt from its folder. */
TEST(resume_under_another_network_refused)
{
    static const char *const spec[] = {"edge; seed=3", "edge; seed=4", "wan", NULL};
    dg_dataset ds;
    dg_partition part;
    dg_mdgan_config c = small_config(4);
    dg_mdgan_run *run;
    char path[600];
    int i;
    make_data(&ds, 128, 2);
    if (dg_partition_iid(&part, ds.n, 4, 3) != DG_OK) return;
    if ((run = mdgan(&c, &ds, &part, pool2, spec[0]))) {
        CHECK_OK(dg_mdgan_run_iteration(run));
        CHECK_OK(dg_mdgan_run_save(run, tmpdir));
        dg_mdgan_run_free(run);
    }
    for (i = 1; i < 4; i++) {
        if (!(run = mdgan(&c, &ds, &part, pool2, spec[i]))) continue;
        CHECK(dg_mdgan_run_load(run, tmpdir) == DG_ERR_CONFIG &&
              has(dg_last_error(), spec[i] ? "another network" : "made under a network model"));
        CHECK(dg_mdgan_server_stats(dg_mdgan_run_server(run))->iteration == 0); /* untouched */
        if (th_cur_failed) printf("  %s: %s\n", spec[i] ? spec[i] : "no network", dg_last_error());
        dg_mdgan_run_free(run);
    }
    if ((run = mdgan(&c, &ds, &part, pool2, spec[0]))) {
        CHECK_OK(dg_mdgan_run_load(run, tmpdir));
        CHECK(dg_mdgan_server_stats(dg_mdgan_run_server(run))->iteration == 1);
        dg_mdgan_run_free(run);
    }
    if ((run = mdgan(&c, &ds, &part, pool2, NULL))) { /* a new run without a network */
        CHECK_OK(dg_mdgan_run_save(run, tmpdir));
        CHECK_OK(dg_checkpoint_path(path, sizeof path, tmpdir, 0, -1));
        CHECK(fopen(path, "rb") == NULL);
        CHECK_OK(dg_mdgan_run_load(run, tmpdir));
        dg_mdgan_run_free(run);
    }
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

/* One run timed on three networks (add_network) is the three runs: the
   same G, and each model's clocks those of the run on its network alone,
   through a checkpoint of the three models in the middle. */
TEST(one_run_timed_on_three_networks)
{
    static const char *spec[3] = {"edge; workers gflops=0.3; down loss=0.3 jitter=0.02; peer loss=0.2",
                                  "wan; all jitter=0.005; seed=7", "datacenter; worker 2 gflops=1"};
    char all[256];
    float *g[3] = {NULL, NULL, NULL}, *g3 = NULL;
    double c[3][5], c3[15];
    int k;
    snprintf(all, sizeof all, "%s|%s|%s", spec[0], spec[1], spec[2]);
    for (k = 0; k < 3; k++) CHECK(mdgan_final(pool2, spec[k], 6, &g[k], c[k]));
    CHECK(mdgan_final_in(pool2, all, 6, tmpdir, &g3, c3));
    if (g[0] && g[1] && g[2] && g3) {
        CHECK(memcmp(g3, g[0], 4 * g_count) == 0 && memcmp(g3, g[2], 4 * g_count) == 0);
        for (k = 0; k < 3; k++) CHECK(memcmp(c3 + 5 * k, c[k], sizeof c[k]) == 0);
        CHECK(c[0][0] > c[1][0] && c[1][0] > c[2][0]); /* three different clocks */
    }
    for (k = 0; k < 3; k++) free(g[k]);
    free(g3);
}

/* What add_network refuses, each with an error that says why. */
TEST(add_network_refusals)
{
    dg_dataset ds;
    dg_partition part;
    dg_mdgan_config c = small_config(3), ac = small_config(3);
    dg_mdgan_run *run = NULL, *async = NULL;
    dg_netsim_config wan = net("wan"), cut = net("wan; link 0->1 disconnect=0.5");
    char path[600];
    int k;
    ac.quorum = 2;
    make_data(&ds, 96, 2);
    CHECK_OK(dg_partition_iid(&part, ds.n, 3, 1));
    CHECK_OK(dg_mdgan_run_create(&run, &c, pool2, &ds, &part, NULL, 0, NULL, 0));
    CHECK_OK(dg_mdgan_run_create(&async, &ac, pool2, &ds, &part, NULL, 0, NULL, 0));
    if (run && async) {
        CHECK(dg_mdgan_run_add_network(run, &wan) == DG_ERR_STATE && has(dg_last_error(), "set_network comes first"));
        CHECK_OK(dg_mdgan_run_set_network(async, &wan));
        CHECK(dg_mdgan_run_add_network(async, &wan) == DG_ERR_CONFIG && has(dg_last_error(), "asynchronous"));
        CHECK_OK(dg_mdgan_run_set_network(run, &wan));
        CHECK(dg_mdgan_run_add_network(run, &cut) == DG_ERR_CONFIG && has(dg_last_error(), "disconnections"));
        for (k = 1; k < DG_NETSIM_MAX_MODELS; k++) CHECK_OK(dg_mdgan_run_add_network(run, &wan));
        CHECK(dg_mdgan_run_add_network(run, &wan) == DG_ERR_ARG && has(dg_last_error(), "at most"));
        CHECK(dg_netsim_models(dg_mdgan_run_transport(run)) == DG_NETSIM_MAX_MODELS);
        CHECK(dg_netsim_clock_of(dg_mdgan_run_transport(run), DG_NETSIM_MAX_MODELS, 0) == -1.0);
        CHECK_OK(dg_mdgan_run_iteration(run));
        CHECK(dg_mdgan_run_add_network(run, &wan) == DG_ERR_STATE);
        /* a checkpoint of 4 models does not go into a run timed on 1 */
        CHECK_OK(dg_mdgan_run_save(run, tmpdir));
        CHECK_OK(dg_checkpoint_path(path, sizeof path, tmpdir, 0, -1));
        CHECK(dg_netsim_load(dg_mdgan_run_transport(async), path) == DG_ERR_CONFIG &&
              has(dg_last_error(), "timed on 4 network(s), this run is timed on 1"));
    }
    dg_mdgan_run_free(run);
    dg_mdgan_run_free(async);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

int main(void)
{
    if (!scratch_create("netsim") || !pools_create()) return 1;
    RUN(spec_parsing);
    RUN(one_message_and_two_queued);
    RUN(order_per_link_kept_while_another_is_faster);
    RUN(arrival_raised_to_the_previous_on_its_link);
    RUN(loss_adds_the_rto);
    RUN(disconnect_drops_the_worker);
    RUN(straggler_delays_the_server_by_its_compute);
    RUN(same_times_for_a_seed_on_1_and_2_threads);
    RUN(mdgan_same_bits_with_and_without_a_network);
    RUN(flgan_same_bits_and_a_clock);
    RUN(resumed_run_keeps_its_clocks);
    RUN(resume_under_another_network_refused);
    RUN(one_run_timed_on_three_networks);
    RUN(add_network_refusals);
    pools_destroy();
    scratch_remove();
    return th_done();
}
