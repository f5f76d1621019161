/* examples/distgan_tcp.c: MD-GAN or FL-GAN as separate processes over TCP.
 *
 *   distgan_tcp server --listen 127.0.0.1:7000 --workers 3 --iters 500
 *   distgan_tcp worker --connect 127.0.0.1:7000 --workers 3 --id 1
 *   distgan_tcp worker --connect 127.0.0.1:7000 --workers 3 --id 2   (...)
 *
 * Every process takes the same run options (algorithm, data, network,
 * hyperparameters, seed): the handshake compares a hash of them and refuses
 * a peer that differs.  Workers load the data and keep their shard (i.i.d.
 * split of the dataset by the seed); the server only needs its shape and
 * size.  Options:
 *   --algo mdgan|flgan   --arch mlp|dcgan  --data shapes:N | idx:IMAGES[,LABELS]
 *   --batch b --iters I --k k --disc-steps L --epochs E --swap-every n --seed s
 *   --threads n (pool size; 0 = one per core)  --secret-file F  --insecure
 *   --checkpoint F --checkpoint-every n --resume   (server; MD-GAN and FL-GAN)
 *   --feedback-clip C (MD-GAN server: each sample's feedback scaled to L2 norm <= C)
 *   --out G.f32 (server: final generator parameters, raw float32)
 *   --max-message BYTES --dead-ms n --heartbeat-ms n --barrier-ms n
 *   --protocol-version v (tests only)
 * An option the chosen --algo does not use (--k, --disc-steps, --feedback-clip
 * with flgan) is an error.  The server prints one progress line per --log-every iterations; every
 * event (connections, drops, joins, refusals) goes to stderr.  SIGINT or
 * SIGTERM: the server checkpoints and shuts down; workers leave. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

typedef struct opts {
    const char *mode, *listen, *connect, *algo, *arch, *data, *secret_file, *checkpoint, *out;
    int workers, id, batch, k, disc_steps, epochs, swap_every, threads, ckpt_every, resume;
    int insecure, log_every, dead_ms, heartbeat_ms, barrier_ms, version;
    long long iters;
    unsigned long long seed, max_message;
    double feedback_clip;
} opts;

static double t_start;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void log_line(void *user, const char *line)
{
    fprintf(stderr, "[%s %7.2fs] %s\n", (const char *)user, now_s() - t_start, line);
    fflush(stderr);
}

static int usage(void)
{
    fprintf(stderr, "usage: distgan_tcp server --listen HOST:PORT --workers N [options]\n"
                    "       distgan_tcp worker --connect HOST:PORT --workers N --id n [options]\n"
                    "(see the top of examples/distgan_tcp.c for the options)\n");
    return 2;
}

static int parse(opts *o, int argc, char **argv)
{
    int i;
    memset(o, 0, sizeof *o);
    o->algo = "mdgan"; o->arch = "mlp"; o->data = "shapes:2000";
    o->batch = 32; o->k = 1; o->disc_steps = 1; o->epochs = 1; o->iters = 100; o->seed = 1;
    o->threads = 1; o->log_every = 10;
    if (argc < 2) return -1;
    o->mode = argv[1];
    for (i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define S(name, field) if (!strcmp(a, name) && v) { o->field = v; i++; continue; }
#define I(name, field) if (!strcmp(a, name) && v) { o->field = atoi(v); i++; continue; }
        S("--listen", listen) S("--connect", connect) S("--algo", algo) S("--arch", arch)
        S("--data", data) S("--secret-file", secret_file) S("--checkpoint", checkpoint)
        S("--out", out) I("--workers", workers) I("--id", id) I("--batch", batch) I("--k", k)
        I("--disc-steps", disc_steps) I("--epochs", epochs) I("--swap-every", swap_every)
        I("--threads", threads) I("--checkpoint-every", ckpt_every) I("--log-every", log_every)
        I("--dead-ms", dead_ms) I("--heartbeat-ms", heartbeat_ms) I("--barrier-ms", barrier_ms)
        I("--protocol-version", version)
        if (!strcmp(a, "--iters") && v) { o->iters = atoll(v); i++; continue; }
        if (!strcmp(a, "--seed") && v) { o->seed = strtoull(v, NULL, 10); i++; continue; }
        if (!strcmp(a, "--max-message") && v) { o->max_message = strtoull(v, NULL, 10); i++; continue; }
        if (!strcmp(a, "--feedback-clip") && v) { o->feedback_clip = atof(v); i++; continue; }
        if (!strcmp(a, "--resume")) { o->resume = 1; continue; }
        if (!strcmp(a, "--insecure")) { o->insecure = 1; continue; }
        fprintf(stderr, "distgan_tcp: unknown option %s\n", a);
        return -1;
#undef S
#undef I
    }
    if (o->workers < 1 || o->batch < 1 || !(o->feedback_clip >= 0)) return -1;
    for (i = 2; i < argc && !strcmp(o->algo, "flgan"); i++)
        if (!strcmp(argv[i], "--k") || !strcmp(argv[i], "--disc-steps") ||
            !strcmp(argv[i], "--feedback-clip")) {
            fprintf(stderr, "distgan_tcp: %s is not an option of --algo flgan\n", argv[i]);
            return -1;
        }
    return 0;
}

static dg_result load_data(const char *spec, uint64_t seed, dg_dataset *ds)
{
    if (!strncmp(spec, "shapes:", 7)) return dg_dataset_make_shapes(ds, (size_t)atol(spec + 7), seed);
    if (!strncmp(spec, "idx:", 4)) {
        char img[4096], *lab;
        snprintf(img, sizeof img, "%s", spec + 4);
        lab = strchr(img, ',');
        if (lab) *lab++ = 0;
        return dg_dataset_load_idx(ds, img, lab);
    }
    fprintf(stderr, "distgan_tcp: --data must be shapes:N or idx:IMAGES[,LABELS]\n");
    return DG_ERR_ARG;
}

static void progress(void *user, int64_t it, int n_live, float d_loss, float g_loss,
                     const dg_transport *t)
{
    const opts *o = (const opts *)user;
    uint64_t in, out;
    double el = now_s() - t_start, rate = el > 0 ? (double)it / el : 0.0;
    if (o->log_every <= 0 || (it % o->log_every && it != o->iters)) return;
    dg_tcp_wire_bytes((dg_transport *)t, DG_ANY_PEER, &in, &out);
    printf("iter %lld/%lld  N_live %d  d_loss %.4f  g_loss %.4f  in %.2f MB  out %.2f MB  "
           "%.1f it/s  left %.0fs\n", (long long)it, o->iters, n_live, d_loss, g_loss,
           in / 1e6, out / 1e6, rate, rate > 0 ? (o->iters - it) / rate : 0.0);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    static unsigned char secret[DG_TCP_SECRET_MAX];
    opts o;
    dg_dataset ds;
    dg_partition part;
    dg_pool *pool = NULL;
    dg_transport *t = NULL;
    dg_tcp_config tc;
    dg_tcp_run run;
    dg_mdgan_config mc = dg_mdgan_config_init();
    dg_flgan_config fc = dg_flgan_config_init();
    char extra[256], who[32];
    int is_server, md;
    dg_result r;
    float *g = NULL;
    size_t gn = 0, secret_len = 0;

    t_start = now_s();
    if (parse(&o, argc, argv)) return usage();
    is_server = !strcmp(o.mode, "server");
    if (!is_server && strcmp(o.mode, "worker")) return usage();
    if (is_server ? !o.listen : (!o.connect || o.id < 1 || o.id > o.workers)) return usage();
    md = strcmp(o.algo, "flgan") != 0;
    snprintf(who, sizeof who, is_server ? "server" : "worker %d", o.id);
    dg_tcp_install_signal_handlers();
    if (o.secret_file) {
        FILE *f = fopen(o.secret_file, "rb");
        if (!f) { fprintf(stderr, "distgan_tcp: cannot read %s\n", o.secret_file); return 1; }
        secret_len = fread(secret, 1, sizeof secret, f);
        fclose(f);
        while (secret_len && (secret[secret_len - 1] == '\n' || secret[secret_len - 1] == '\r')) secret_len--;
    }
    memset(&ds, 0, sizeof ds);
    memset(&part, 0, sizeof part);
    if ((r = load_data(o.data, o.seed, &ds)) != DG_OK ||
        (r = dg_partition_iid(&part, ds.n, o.workers, o.seed)) != DG_OK ||
        (r = dg_pool_create(&pool, o.threads)) != DG_OK) {
        fprintf(stderr, "distgan_tcp: %s: %s\n", dg_result_str(r), dg_last_error());
        return 1;
    }
    snprintf(extra, sizeof extra, "data %s n=%zu", o.data, ds.n);
    if (md) {
        mc.n_workers = o.workers;
        mc.c = ds.c; mc.h = ds.h; mc.w = ds.w;
        mc.arch = strcmp(o.arch, "dcgan") ? DG_ARCH_MLP : DG_ARCH_DCGAN;
        mc.batch = o.batch; mc.k = o.k; mc.disc_steps = o.disc_steps; mc.local_epochs = o.epochs;
        mc.seed = o.seed;
        /* m*E/b with m the mean shard size, as the in-process driver does */
        mc.swap_every = o.swap_every > 0 ? o.swap_every
                        : (int)((double)ds.n / o.workers * o.epochs / o.batch + 0.5);
        if (mc.swap_every < 1) mc.swap_every = 1;
        mc.barrier_timeout_ms = o.barrier_ms;
        mc.feedback_clip = (float)o.feedback_clip;
        mc.log = log_line;
        mc.log_user = who;
        dg_tcp_mdgan_config_hash(&mc, extra, tc.config_hash);
    } else {
        fc.n_workers = o.workers;
        fc.c = ds.c; fc.h = ds.h; fc.w = ds.w;
        fc.arch = strcmp(o.arch, "dcgan") ? DG_ARCH_MLP : DG_ARCH_DCGAN;
        fc.batch = o.batch; fc.local_epochs = o.epochs; fc.seed = o.seed;
        fc.local_iters = o.swap_every;
        fc.barrier_timeout_ms = o.barrier_ms;
        fc.log = log_line;
        fc.log_user = who;
    }
    {
        unsigned char h[32];
        if (md) dg_tcp_mdgan_config_hash(&mc, extra, h);
        else dg_tcp_flgan_config_hash(&fc, extra, h);
        dg_tcp_config_init(&tc);
        memcpy(tc.config_hash, h, 32);
    }
    tc.n_peers = o.workers + 1;
    tc.self = is_server ? 0 : o.id;
    tc.listen = o.listen;
    tc.connect = o.connect;
    tc.secret = secret_len ? secret : NULL;
    tc.secret_len = secret_len;
    tc.allow_insecure = o.insecure;
    tc.max_message = o.max_message;
    tc.dead_ms = o.dead_ms;
    tc.heartbeat_ms = o.heartbeat_ms;
    tc.protocol_version = (uint16_t)o.version;
    tc.log = log_line;
    tc.log_user = who;
    memset(&run, 0, sizeof run);
    run.iterations = o.iters;
    run.checkpoint = o.checkpoint;
    run.checkpoint_every = o.ckpt_every;
    run.resume = o.resume;
    run.progress = progress;
    run.user = &o;
    r = is_server ? dg_tcp_server_create(&t, &tc) : dg_tcp_worker_create(&t, &tc);
    /* a worker started before its server keeps dialling for 30 s */
    while (!is_server && (r == DG_ERR_IO || r == DG_ERR_TIMEOUT) && now_s() - t_start < 30 &&
           !dg_tcp_stop_requested()) {
        struct timespec ts = {0, 200000000};
        nanosleep(&ts, NULL);
        r = dg_tcp_worker_create(&t, &tc);
    }
    if (r != DG_OK) {
        fprintf(stderr, "distgan_tcp %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
        return 1;
    }
    if (is_server) {
        printf("server listening on port %u\n", (unsigned)dg_tcp_port(t));
        fflush(stdout);
        r = md ? dg_tcp_mdgan_server_run(&mc, t, pool, &run, &g, &gn)
               : dg_tcp_flgan_server_run(&fc, t, pool, &run, &g, &gn);
        if (r == DG_OK && o.out && g) {
            FILE *f = fopen(o.out, "wb");
            if (!f || fwrite(g, sizeof(float), gn, f) != gn) r = DG_ERR_IO;
            if (f) fclose(f);
        }
    } else {
        size_t count;
        const uint32_t *idx = dg_partition_worker(&part, o.id - 1, &count);
        r = md ? dg_tcp_mdgan_worker_run(&mc, t, pool, &ds, idx, count, &run)
               : dg_tcp_flgan_worker_run(&fc, t, pool, &ds, idx, count, &run);
    }
    if (r != DG_OK) fprintf(stderr, "distgan_tcp %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
    else fprintf(stderr, "[%s] done\n", who);
    dg_tcp_free(g);
    dg_transport_close(t);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
    return r == DG_OK ? 0 : 1;
}
