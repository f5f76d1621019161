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
 *   --algo mdgan|flgan   --arch mlp|dcgan  --data SPEC (docs/data.md; default
 *   shapes:2000, drawn from the run seed; idx:IMAGES[,LABELS] for files)
 *   --batch b --iters I --k k --lr LR --disc-steps L --epochs E --swap-every n --seed s
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
    const char *mode, *listen, *connect, *data, *secret_file, *checkpoint, *out, *id_str;
    int algo, arch;   /* indices into the --algo and --arch choices */
    int workers, id, batch, k, disc_steps, epochs, swap_every, threads, ckpt_every, resume;
    int insecure, log_every, dead_ms, heartbeat_ms, barrier_ms, version;
    float lr;
    double feedback_clip;
    int64_t iters;
    uint64_t seed, max_message;
} opts;

static double t_start;

static void log_line(void *user, const char *line)
{
    fprintf(stderr, "[%s %7.2fs] %s\n", (const char *)user, dg_clock_seconds() - t_start, line);
    fflush(stderr);
}

static int usage(void)
{
    fprintf(stderr, "usage: distgan_tcp server --listen HOST:PORT --workers N [options]\n"
                    "       distgan_tcp worker --connect HOST:PORT --workers N --id n [options]\n"
                    "(see the top of examples/distgan_tcp.c for the options)\n");
    return 2;
}

/* 0, or 2 after printing why (a usage error) */
static int parse(opts *o, int argc, char **argv)
{
    const dg_option table[] = {
        {"--listen", DG_OPT_STRING, &o->listen, 0, 0, NULL},
        {"--connect", DG_OPT_STRING, &o->connect, 0, 0, NULL},
        {"--algo", DG_OPT_CHOICE, &o->algo, 0, 0, "mdgan|flgan"},
        {"--arch", DG_OPT_CHOICE, &o->arch, 0, 0, "mlp|dcgan"},
        {"--data", DG_OPT_STRING, &o->data, 0, 0, NULL},
        {"--secret-file", DG_OPT_STRING, &o->secret_file, 0, 0, NULL},
        {"--checkpoint", DG_OPT_STRING, &o->checkpoint, 0, 0, NULL},
        {"--out", DG_OPT_STRING, &o->out, 0, 0, NULL},
        {"--workers", DG_OPT_INT, &o->workers, 1, 10000, NULL},
        {"--id", DG_OPT_STRING, &o->id_str, 0, 0, NULL},
        {"--batch", DG_OPT_INT, &o->batch, 1, 65536, NULL},
        {"--k", DG_OPT_INT, &o->k, 1, 10000, NULL},
        {"--lr", DG_OPT_FLOAT, &o->lr, 1e-8, 1, NULL},
        {"--disc-steps", DG_OPT_INT, &o->disc_steps, 1, 1000, NULL},
        {"--epochs", DG_OPT_INT, &o->epochs, 0, 1000000, NULL},
        {"--swap-every", DG_OPT_INT, &o->swap_every, 0, 1000000000, NULL},
        {"--threads", DG_OPT_INT, &o->threads, 0, 1024, NULL},
        {"--checkpoint-every", DG_OPT_INT, &o->ckpt_every, 0, 1000000000, NULL},
        {"--log-every", DG_OPT_INT, &o->log_every, 0, 1000000000, NULL},
        {"--dead-ms", DG_OPT_INT, &o->dead_ms, 0, 86400000, NULL},
        {"--heartbeat-ms", DG_OPT_INT, &o->heartbeat_ms, 0, 86400000, NULL},
        {"--barrier-ms", DG_OPT_INT, &o->barrier_ms, 0, 86400000, NULL},
        {"--protocol-version", DG_OPT_INT, &o->version, 0, 65535, NULL},
        {"--iters", DG_OPT_INT64, &o->iters, 1, 1e9, NULL},
        {"--seed", DG_OPT_U64, &o->seed, 0, 0, NULL},
        {"--max-message", DG_OPT_U64, &o->max_message, 0, 0, NULL},
        {"--feedback-clip", DG_OPT_DOUBLE, &o->feedback_clip, 0, 1e30, NULL},
        {"--resume", DG_OPT_FLAG, &o->resume, 0, 0, NULL},
        {"--insecure", DG_OPT_FLAG, &o->insecure, 0, 0, NULL},
    };
    long long id = 0;
    int server, i;
    memset(o, 0, sizeof *o);
    o->data = "shapes:2000";
    o->batch = 32; o->k = 1; o->disc_steps = 1; o->epochs = 1; o->iters = 100; o->seed = 1;
    o->threads = 1; o->log_every = 10; o->lr = 2e-4f;
    if (argc < 2 || (strcmp(argv[1], "server") && strcmp(argv[1], "worker"))) return usage();
    o->mode = argv[1];
    if (dg_options_parse(table, (int)(sizeof table / sizeof table[0]), argc, argv, 2)) {
        fprintf(stderr, "distgan_tcp: %s\n", dg_last_error());
        return 2;
    }
    server = !strcmp(o->mode, "server");
    if (server ? !o->listen || !o->workers : !o->connect || !o->workers || !o->id_str) {
        fprintf(stderr, "distgan_tcp: %s needs %s\n", o->mode,
                server ? "--listen HOST:PORT and --workers N" : "--connect HOST:PORT, --workers N and --id n");
        return 2;
    }
    if (!server && dg_parse_int(o->id_str, 1, o->workers, &id)) {
        fprintf(stderr, "distgan_tcp: --id: %s\n", dg_last_error());
        return 2;
    }
    o->id = (int)id;
    for (i = 2; i < argc && o->algo == 1; i++) /* flgan */
        if (!strcmp(argv[i], "--k") || !strcmp(argv[i], "--disc-steps") ||
            !strcmp(argv[i], "--feedback-clip")) {
            fprintf(stderr, "distgan_tcp: %s is not an option of --algo flgan\n", argv[i]);
            return 2;
        }
    return 0;
}

static float *g_final;
static size_t g_final_n;

static void finish(void *user, const dg_drive_status *s)
{
    (void)user;
    g_final_n = dg_net_param_count(s->generator);
    g_final = (float *)malloc(g_final_n * sizeof(float));
    if (g_final) memcpy(g_final, dg_net_params(s->generator), g_final_n * sizeof(float));
}

static void progress(void *user, const dg_drive_status *s)
{
    const opts *o = (const opts *)user;
    uint64_t in, out;
    int64_t it = s->iteration;
    int n_live = s->n_live;
    float d_loss = s->d_loss, g_loss = s->g_loss;
    double el = dg_clock_seconds() - t_start, rate = el > 0 ? (double)it / el : 0.0;
    if (o->log_every <= 0 || (it % o->log_every && it != o->iters)) return;
    dg_tcp_wire_bytes(s->transport, DG_ANY_PEER, &in, &out);
    printf("iter %lld/%lld  N_live %d  d_loss %.4f  g_loss %.4f  in %.2f MB  out %.2f MB  "
           "%.1f it/s  left %.0fs\n", (long long)it, (long long)o->iters, n_live, d_loss, g_loss,
           in / 1e6, out / 1e6, rate, rate > 0 ? (o->iters - it) / rate : 0.0);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    unsigned char *secret = NULL;
    opts o;
    dg_dataset ds;
    dg_partition part;
    dg_pool *pool = NULL;
    dg_transport *t = NULL;
    dg_tcp_config tc;
    dg_drive run;
    dg_mdgan_config mc = dg_mdgan_config_init();
    dg_flgan_config fc = dg_flgan_config_init();
    char extra[256], who[32];
    int is_server, md;
    dg_result r;
    float *g = NULL;
    size_t gn = 0, secret_len = 0;

    t_start = dg_clock_seconds();
    if (parse(&o, argc, argv)) return 2;
    is_server = !strcmp(o.mode, "server");
    md = o.algo == 0;
    snprintf(who, sizeof who, is_server ? "server" : "worker %d", o.id);
    dg_install_stop_handlers();
    if (o.secret_file && (r = dg_tcp_read_secret(o.secret_file, &secret, &secret_len)) != DG_OK) {
        fprintf(stderr, "distgan_tcp: %s\n", dg_last_error());
        return 1;
    }
    memset(&ds, 0, sizeof ds);
    memset(&part, 0, sizeof part);
    if ((r = dg_dataset_open(o.data, o.seed, &ds, NULL)) != DG_OK) {
        fprintf(stderr, "distgan_tcp: --data: %s\n", dg_last_error());
        return r == DG_ERR_ARG ? 2 : 1; /* a malformed spec is a usage error */
    }
    if ((r = dg_partition_iid(&part, ds.n, o.workers, o.seed)) != DG_OK ||
        (r = dg_pool_create(&pool, o.threads)) != DG_OK) {
        fprintf(stderr, "distgan_tcp: %s: %s\n", dg_result_str(r), dg_last_error());
        return 1;
    }
    snprintf(extra, sizeof extra, "data %s n=%zu", o.data, ds.n);
    if (md) {
        mc.n_workers = o.workers;
        mc.c = ds.c; mc.h = ds.h; mc.w = ds.w;
        mc.arch = o.arch ? DG_ARCH_DCGAN : DG_ARCH_MLP;
        mc.lr_g = mc.lr_d = o.lr;
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
        fc.arch = o.arch ? DG_ARCH_DCGAN : DG_ARCH_MLP;
        fc.lr = o.lr;
        fc.batch = o.batch; fc.local_epochs = o.epochs; fc.seed = o.seed;
        fc.local_iters = o.swap_every;
        fc.barrier_timeout_ms = o.barrier_ms;
        fc.max_shard = (int64_t)ds.n; /* the hash covers n */
        fc.log = log_line;
        fc.log_user = who;
    }
    {
        unsigned char h[32];
        if (md) dg_tcp_mdgan_config_hash(&mc, extra, h);
        else dg_tcp_flgan_config_hash(&fc, extra, h);
        tc = dg_tcp_config_init();
        memcpy(tc.config_hash, h, 32);
    }
    tc.n_peers = o.workers + 1;
    tc.self = is_server ? 0 : o.id;
    tc.listen = o.listen;
    tc.connect = o.connect;
    tc.secret = secret;
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
    run.checkpoint = is_server ? o.checkpoint : NULL; /* the workers keep none */
    run.checkpoint_every = o.ckpt_every;
    run.resume = o.resume;
    run.progress = progress;
    run.finish = finish;
    run.user = &o;
    run.peer_timeout_ms = o.dead_ms;
    run.log = log_line;
    run.log_user = who;
    /* a worker started before its server, or refused while it is full,
       keeps dialling for 30 s */
    tc.retry_ms = 30000;
    r = is_server ? dg_tcp_server_create(&t, &tc) : dg_tcp_worker_create(&t, &tc);
    if (secret) memset(secret, 0, secret_len); /* the transport keeps its own key */
    dg_tcp_free(secret);
    if (r != DG_OK) {
        fprintf(stderr, "distgan_tcp %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
        return 1;
    }
    if (is_server) {
        printf("server listening on port %u\n", (unsigned)dg_tcp_port(t));
        fflush(stdout);
        r = md ? dg_mdgan_server_drive(&mc, t, pool, &run) : dg_flgan_server_drive(&fc, t, pool, &run);
        g = g_final;
        gn = g_final_n;
        if (r == DG_OK && o.out && g) {
            FILE *f = fopen(o.out, "wb");
            if (!f || fwrite(g, sizeof(float), gn, f) != gn) r = DG_ERR_IO;
            if (f) fclose(f);
        }
    } else {
        size_t count;
        const uint32_t *idx = dg_partition_worker(&part, o.id - 1, &count);
        r = md ? dg_mdgan_worker_drive(&mc, o.id, t, pool, &ds, idx, count, &run)
               : dg_flgan_worker_drive(&fc, o.id, t, pool, &ds, idx, count, &run);
    }
    if (r != DG_OK) fprintf(stderr, "distgan_tcp %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
    else fprintf(stderr, "[%s] done\n", who);
    free(g);
    dg_transport_close(t);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
    return r == DG_OK ? 0 : 1;
}
