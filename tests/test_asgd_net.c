/* tests/test_asgd_net.c: AdaComp-ASGD across processes (the process
 * drivers of the dg_asgd section: dg_asgd_server_drive, dg_asgd_worker_drive).
 *
 * With real processes (build/asgd, forked and reaped, 127.0.0.1 on ports
 * found by binding port 0): the deterministic schedule over TCP, a PS and 3
 * workers, gives a final w bit-identical to the in-process run in the
 * hardy, ibm and dense modes (and with drop-outs replayed); in the
 * asynchronous mode a worker killed with SIGKILL mid-run is noticed and
 * logged, the run finishes, a restarted worker rejoins and pushes again,
 * and w stays finite.  In one process (threads, TCP transports): an insider
 * sending a malformed PUSH, then a NaN PUSH, is dropped each time, w is
 * not touched by them, and the run completes.  A PS stopped by SIGTERM
 * checkpoints; resumed, it finishes the run with the workers that waited.
 * adacomp's server state (ac_server_save / ac_server_load) restores a PS
 * that then modulates the next pushes exactly as the original. */
#define ADACOMP_IMPLEMENTATION
#define _POSIX_C_SOURCE 200809L
#include "../adacomp.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include "proc.h"
#include "log_buf.h"
#include "asgd_final.h"

#include <sys/stat.h>

/* ---- real processes (tests/proc.h, as tests/test_tcp.c) ---- */

#define ARGS(...) ((char *const[]){(char *)bin, __VA_ARGS__, NULL})

/* ---- (i) the deterministic schedule over TCP equals the in-process run ---- */

#define RUNOPTS "--dataset", "shapes:2000", "--workers", "3", "--arch", "mlp", "--hidden", "32", \
                "--seed", "5", "--threads", "1"

static void det_vs_inproc(const char *mode, const char *drop)
{
    char addr[32], what[128];
    pid_t srv, wk[3];
    int i;
    if (!proc_begin(addr, sizeof addr)) return;
    CHECK(reap(spawn("inproc", ARGS("--mode", (char *)mode, "--updates", "240", "--drop",
                                    (char *)drop, "--down", "2", "--out", "inproc.f32", RUNOPTS)),
               60000) == 0);
    srv = spawn("dsrv", ARGS("--transport", "tcp", "--role", "server", "--listen", addr,
                             "--schedule", "deterministic", "--mode", (char *)mode, "--updates",
                             "240", "--eval-every", "80", "--drop", (char *)drop, "--down", "2",
                             "--out", "tcp.f32", RUNOPTS));
    for (i = 0; i < 3; i++)
        wk[i] = spawn(nth("dw", i + 1),
                      ARGS("--transport", "tcp", "--role", "worker", "--connect", addr, "--id",
                           nth("", i + 1), "--schedule", "deterministic", "--mode", (char *)mode,
                           "--updates", "240", "--drop", (char *)drop, "--down", "2", RUNOPTS));
    CHECK(reap_run(srv, 120000, wk, 3, 20000));
    snprintf(what, sizeof what, "%s (drop %s): parameters over TCP (deterministic) and in-process",
             mode, drop);
    check_same_files(what, "inproc.f32", "tcp.f32");
    if (th_cur_failed) { show("dsrv.out"); show("dsrv.err"); show("dw1.err"); show("inproc.err"); }
}

TEST(det_tcp_hardy) { det_vs_inproc("hardy", "0"); }
TEST(det_tcp_ibm) { det_vs_inproc("ibm", "0"); }
TEST(det_tcp_dense) { det_vs_inproc("dense", "0"); }
TEST(det_tcp_staleness_dropouts) { det_vs_inproc("staleness", "0.1"); }

/* ---- (ii) asynchronous: kill -9 of a worker, restart ---- */

static int all_finite(const float *x, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return n > 0;
}

TEST(async_worker_killed_and_rejoins)
{
    char addr[32];
    pid_t srv, w1, w2, w3;
    const char *p;
    float *w;
    size_t n;
    if (!proc_begin(addr, sizeof addr)) return;
#define AOPTS RUNOPTS, "--updates", "12000", "--dead-ms", "1500", "--heartbeat-ms", "300"
    srv = spawn("ksrv", ARGS("--transport", "tcp", "--role", "server", "--listen", addr,
                             "--eval-every", "500", "--eval-limit", "200", "--out", "async.f32",
                             AOPTS));
    w1 = spawn("kw1", ARGS("--transport", "tcp", "--role", "worker", "--connect", addr, "--id", "1", AOPTS));
    w2 = spawn("kw2", ARGS("--transport", "tcp", "--role", "worker", "--connect", addr, "--id", "2", AOPTS));
    w3 = spawn("kw3", ARGS("--transport", "tcp", "--role", "worker", "--connect", addr, "--id", "3", AOPTS));
    CHECK(wait_for("ksrv.out", "update   1000", 60000));
    kill(w2, SIGKILL);
    reap(w2, 2000);
    CHECK(wait_for("ksrv.err", "worker 2 lost: its connection closed (2 live)", 10000));
    w2 = spawn("kw2b", ARGS("--transport", "tcp", "--role", "worker", "--connect", addr, "--id", "2", AOPTS));
    CHECK(reap(srv, 120000) == 0);
    CHECK(reap(w1, 20000) == 0);
    CHECK(reap(w2, 20000) == 0);
    CHECK(reap(w3, 20000) == 0);
    CHECK(file_has("ksrv.out", "RESULT") && file_has("ksrv.out", "updates=12000"));
    /* it came back (connected or joined again) and pushed */
    p = strstr(slurp("kw2b.err"), "training is over after ");
    CHECK(p && atol(p + strlen("training is over after ")) > 0);
    if (p) printf("  the restarted worker 2 pushed %ld times\n", atol(p + strlen("training is over after ")));
    w = read_floats("async.f32", &n);
    CHECK(w && all_finite(w, n));
    free(w);
    if (th_cur_failed) { show("ksrv.out"); show("ksrv.err"); show("kw2b.err"); }
}

/* ---- (iii) an insider: malformed and NaN pushes (threads, TCP) ---- */

/* The PS (id 0, its end in `end`) or worker id (on shard id - 1 of part)
   on a thread of its own, with a one-thread pool. */
typedef struct role_arg {
    dg_asgd_config cfg;
    int id;
    dg_transport *t;
    const dg_dataset *ds;
    const dg_partition *part;
    dg_asgd_drive d;
    asgd_final end;
    dg_result r;
} role_arg;

static void *role_thread(void *arg)
{
    role_arg *a = (role_arg *)arg;
    dg_pool *pool;
    if ((a->r = dg_pool_create(&pool, 1)) != DG_OK) return NULL;
    if (a->id) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(a->part, a->id - 1, &count);
        a->r = dg_asgd_worker_drive(&a->cfg, a->id, a->t, pool, a->ds, idx, count, &a->d);
    } else {
        a->r = dg_asgd_server_drive(&a->cfg, a->t, pool, &a->d);
    }
    dg_pool_destroy(pool);
    return NULL;
}

/* Sends one PUSH of `len` packet bytes from the insider (peer 3). */
static dg_result insider_push(dg_transport *t, const void *packet, size_t len, float loss)
{
    dg_part_kind kind = DG_PART_BYTES;
    dg_msg *m;
    dg_result r = dg_msg_create(t, DG_MSG_ASGD_PUSH, 3, 0, 0, 1, &kind, &len, &m);
    if (r != DG_OK) return r;
    memcpy(m->part[0].data, packet, len);
    m->stat[0] = loss;
    return dg_transport_send(t, m);
}

static int wait_log(log_buf *b, const char *needle, int count, int ms)
{
    double end = dg__now() + ms / 1e3;
    while (dg__now() < end) {
        if (log_count(b, needle) >= count) return 1;
        dg__drive_sleep_ms(10);
    }
    return 0;
}

TEST(insider_malformed_and_nan_push)
{
    static log_buf lb;
    dg_dataset ds;
    dg_partition part;
    dg_tcp_config tc = dg_tcp_config_init();
    dg_asgd_config cfg = dg_asgd_config_init();
    role_arg ps, wk[2];
    pthread_t pth, wth[2];
    dg_transport *ins = NULL;
    ac_compressor *comp = NULL;
    uint64_t n = 0;
    unsigned char *packet = NULL, junk[64];
    char addr[32];
    size_t len = 0, i;
    float *grad = NULL, sentinel = 1.2345678f, nan_v = NAN;
    int k, patched = 0;
    pthread_mutex_init(&lb.mu, NULL);
    memset(&ds, 0, sizeof ds);
    CHECK_OK(dg_dataset_make_shapes(&ds, 600, 3));
    cfg.n_workers = 3;
    cfg.mode = DG_ASGD_MODE_DENSE;
    cfg.arch = DG_ASGD_ARCH_MLP;
    cfg.hidden = 16;
    cfg.seed = 9;
    cfg.c = ds.c; cfg.h = ds.h; cfg.w = ds.w; cfg.n_classes = ds.n_classes;
    CHECK_OK(dg_asgd_partition_contiguous(&part, ds.n, 3));
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)free_port());
    tc.n_peers = 4;
    tc.listen = addr;
    tc.retry_ms = 10000;
    tc.log = log_to;
    tc.log_user = &lb;
    memset(&ps, 0, sizeof ps);
    ps.cfg = cfg;
    CHECK_OK(dg_tcp_server_create(&ps.t, &tc));
    if (!ps.t) return;
    ps.d.d.iterations = 4000;
    ps.d.d.wait_workers_ms = 10000;
    ps.d.d.log = log_to;
    ps.d.d.log_user = &lb;
    ps.d.progress = asgd_final_keep;
    ps.d.user = &ps.end;
    pthread_create(&pth, NULL, role_thread, &ps);
    tc.listen = NULL;
    tc.connect = addr;
    for (k = 0; k < 2; k++) {
        memset(&wk[k], 0, sizeof wk[k]);
        wk[k].cfg = cfg;
        wk[k].id = k + 1;
        wk[k].ds = &ds;
        wk[k].part = &part;
        wk[k].d.d.log = log_to;
        wk[k].d.d.log_user = &lb;
        tc.self = k + 1;
        CHECK_OK(dg_tcp_worker_create(&wk[k].t, &tc));
    }
    tc.self = 3;
    CHECK_OK(dg_tcp_worker_create(&ins, &tc));
    for (k = 0; k < 2; k++) pthread_create(&wth[k], NULL, role_thread, &wk[k]);
    /* a dense packet of a finite gradient with a sentinel value, then NaN in its place */
    CHECK_OK(dg__asgd_compressor(&cfg, &comp, &n));
    grad = (float *)calloc(n, sizeof(float));
    packet = (unsigned char *)malloc(ac_compressor_packet_bound(comp));
    grad[5] = sentinel;
    CHECK(ac_compress(comp, grad, 0, packet, ac_compressor_packet_bound(comp), &len) == AC_OK);
    for (i = 0; i + 4 <= len && !patched; i++)
        if (!memcmp(packet + i, &sentinel, 4)) {
            memcpy(packet + i, &nan_v, 4);
            patched = 1;
        }
    CHECK(patched);
    /* malformed: bytes that are no packet */
    for (i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(i * 37 + 11);
    CHECK_OK(insider_push(ins, junk, sizeof junk, 0.5f));
    CHECK(wait_log(&lb, "worker 3 dropped: malformed or non-finite push", 1, 10000));
    /* back in, with a NaN value */
    for (k = 0; k < 100 && dg_transport_connected(ins, 0); k++) dg__drive_sleep_ms(20);
    CHECK_OK(dg_tcp_reconnect(ins));
    CHECK_OK(insider_push(ins, packet, len, 0.5f));
    CHECK(wait_log(&lb, "worker 3 dropped: malformed or non-finite push", 2, 10000));
    pthread_join(pth, NULL);
    for (k = 0; k < 2; k++) pthread_join(wth[k], NULL);
    CHECK_OK(ps.r);
    CHECK_OK(wk[0].r);
    CHECK_OK(wk[1].r);
    CHECK(ps.end.st.applied == 4000 && ps.end.st.invalid == 2);
    CHECK(ps.end.w && all_finite(ps.end.w, ps.end.n));
    printf("  insider dropped twice (malformed, NaN); %llu updates applied, %llu refused\n",
           (unsigned long long)ps.end.st.applied, (unsigned long long)ps.end.st.invalid);
    if (th_cur_failed) printf("%s", lb.text);
    dg_transport_close(ins);
    for (k = 0; k < 2; k++) dg_transport_close(wk[k].t);
    dg_transport_close(ps.t);
    free(ps.end.w);
    free(grad);
    free(packet);
    ac_compressor_free(comp);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

/* ---- the PS checkpoint: stop, resume, same w ---- */

TEST(ps_checkpoint_resume)
{
    char addr[32], ck[512];
    pid_t srv, wk[3];
    float *a;
    size_t na;
    int i;
    if (!proc_begin(addr, sizeof addr)) return;
    snprintf(ck, sizeof ck, "%s", tpath("ps.ckpt"));
    /* async run stopped by SIGTERM, resumed: finishes with the checkpoint's clock */
#define COPTS RUNOPTS, "--updates", "30000", "--dead-ms", "1500", "--heartbeat-ms", "300"
    srv = spawn("csrv", ARGS("--transport", "tcp", "--role", "server", "--listen", addr,
                             "--eval-every", "1000", "--eval-limit", "100", "--checkpoint", ck,
                             "--checkpoint-every", "500", COPTS));
    for (i = 0; i < 3; i++) {
        char id[16], name[16];
        snprintf(id, sizeof id, "%d", i + 1);
        snprintf(name, sizeof name, "cw%d", i + 1);
        wk[i] = spawn(name, ARGS("--transport", "tcp", "--role", "worker", "--connect", addr,
                                 "--id", id, COPTS));
    }
    CHECK(wait_for("csrv.out", "update   2000", 60000));
    kill(srv, SIGTERM);
    CHECK(reap(srv, 20000) == 0);
    CHECK(file_has("csrv.err", "stop requested: checkpoint and shut down"));
    srv = spawn("csrv2", ARGS("--transport", "tcp", "--role", "server", "--listen", addr,
                              "--eval-every", "1000", "--eval-limit", "100", "--checkpoint", ck,
                              "--resume", "--out", "resumed.f32", COPTS));
    CHECK(wait_for("csrv2.err", "resumed from", 20000));
    CHECK(reap(srv, 120000) == 0);
    for (i = 0; i < 3; i++) CHECK(reap(wk[i], 40000) == 0);
    CHECK(file_has("csrv2.out", "updates=30000"));
    a = read_floats("resumed.f32", &na);
    CHECK(a && all_finite(a, na));
    free(a);
    if (th_cur_failed) { show("csrv.out"); show("csrv.err"); show("csrv2.out"); show("csrv2.err"); show("cw1.err"); }
}

/* ---- adacomp's server state: what a resumed PS needs ---- */

TEST(ac_server_state_roundtrip)
{
    uint32_t sizes[2] = {300, 20};
    ac_layout layout = {2, sizes};
    ac_compressor *comp = NULL;
    ac_server *a = NULL, *b = NULL, *c = NULL;
    ac_compressor_config cc = ac_compressor_config_init();
    ac_server_config sc = ac_server_config_init(), tau = ac_server_config_init();
    float pa[320], pb[320], pc[320], grad[320];
    unsigned char packet[4096], *state = NULL;
    size_t len, slen = 0;
    uint64_t t_pull[4] = {0, 0, 0, 0};
    int k, i;
    cc.rate = 0.05;
    for (i = 0; i < 320; i++) pa[i] = pb[i] = pc[i] = 0.01f * (float)(i % 17);
    CHECK(ac_compressor_init(&comp, &layout, &cc) == AC_OK);
    CHECK(ac_server_init(&a, &layout, pa, &sc) == AC_OK);
    CHECK(ac_server_init(&b, &layout, pb, &sc) == AC_OK);
    tau.staleness = AC_STALENESS_TAU;
    CHECK(ac_server_init(&c, &layout, pc, &tau) == AC_OK);
    if (!comp || !a || !b || !c) return;
    /* 200 pushes of 4 workers with staleness up to 150 (the history grows) */
    for (k = 0; k < 200; k++) {
        int w = k % 4;
        for (i = 0; i < 320; i++) grad[i] = (float)((i * 7 + k * 13) % 29) - 14.0f;
        CHECK(ac_compress(comp, grad, t_pull[w], packet, sizeof packet, &len) == AC_OK);
        CHECK(ac_server_apply_packet(a, packet, len) == AC_OK);
        t_pull[w] = k < 150 && w == 3 ? 0 : ac_server_clock(a);
    }
    slen = ac_server_state_size(a);
    state = (unsigned char *)malloc(slen);
    CHECK(state && ac_server_save(a, state, slen, &len) == AC_OK && len == slen);
    CHECK(ac_server_save(a, state, slen - 1, &len) == AC_ERR_CAPACITY);
    CHECK(ac_server_load(c, state, slen) == AC_ERR_FORMAT);      /* another staleness mode */
    CHECK(ac_server_load(b, state, slen - 8) == AC_ERR_FORMAT);  /* truncated */
    state[0] ^= 1;
    CHECK(ac_server_load(b, state, slen) == AC_ERR_MAGIC);
    state[0] ^= 1;
    CHECK(ac_server_load(b, state, slen) == AC_OK);
    memcpy(pb, pa, sizeof pa);
    CHECK(ac_server_clock(b) == ac_server_clock(a));
    CHECK(ac_server_stats(b).tau_max == ac_server_stats(a).tau_max);
    /* the next pushes, stale ones included, modulate the same on both */
    for (k = 0; k < 20; k++) {
        for (i = 0; i < 320; i++) grad[i] = (float)((i * 5 + k * 3) % 23) - 11.0f;
        CHECK(ac_compress(comp, grad, ac_server_clock(a) - (uint64_t)(k * 7 % 120), packet,
                          sizeof packet, &len) == AC_OK);
        CHECK(ac_server_apply_packet(a, packet, len) == ac_server_apply_packet(b, packet, len));
    }
    CHECK(memcmp(pa, pb, sizeof pa) == 0);
    free(state);
    ac_compressor_free(comp);
    ac_server_free(a);
    ac_server_free(b);
    ac_server_free(c);
}

/* argv[1], if any: run only the tests whose name contains it */
static const char *only;
#define RUN_SOME(name) do { if (!only || strstr(#name, only)) RUN(name); } while (0)

int main(int argc, char **argv)
{
    only = argc > 1 ? argv[1] : NULL;
    if (!proc_setup("build/asgd", "asgd_net", 600)) return 1;
    RUN_SOME(ac_server_state_roundtrip);
    RUN_SOME(det_tcp_hardy);
    RUN_SOME(det_tcp_ibm);
    RUN_SOME(det_tcp_dense);
    RUN_SOME(det_tcp_staleness_dropouts);
    RUN_SOME(async_worker_killed_and_rejoins);
    RUN_SOME(insider_malformed_and_nan_push);
    RUN_SOME(ps_checkpoint_resume);
    scratch_remove();
    return th_done();
}
