/* examples/distgan.c: train a GAN standalone, with MD-GAN or with FL-GAN,
 * all in one process (N in-process workers on one thread pool), and watch
 * quality, traffic and workers come and go.
 *
 *   cc -O2 examples/distgan.c -lpthread -lm
 *   ./a.out --algo mdgan --workers 4 --dataset fashion --iters 2000
 *   ./a.out --algo mdgan --workers 10 --k 4 --crash 3@500,7@800 --acgan
 *   ./a.out --algo flgan --workers 10 --E 1 --dirichlet 0.5
 *   ./a.out --help
 *
 *   ./a.out --algo mdgan --workers 20 --network edge      (simulated time: sim_s)
 *
 * Writes into --out: log.csv (iteration, losses, score, FID, bytes per
 * direction, time, N_live, simulated time), samples_<iter>.png, checkpoints (server.ckpt
 * and worker_<n>.ckpt for MD-GAN, gan.ckpt standalone; --resume continues
 * from them). */
#define _POSIX_C_SOURCE 200809L
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define MAX_FAULTS 64
#define GRID_SEED 0x9717 /* the grids of a run show the same z over time */

typedef enum algo { ALGO_GAN, ALGO_MDGAN, ALGO_FLGAN } algo;

typedef struct options {
    int algo, arch;   /* algo, dg_arch: indices into the --algo and --arch choices */
    const char *dataset, *out, *classifier, *k_str, *crash_str, *join_str,
        *attack_str;
    int workers, batch, k, L, E, acgan, saturating, threads, resume, no_eval, eval_samples,
        clf_epochs, iid, shards, swap_every, swap_opt_stays, real_once, z_dim, no_checkpoint,
        help;
    double alpha, feedback_clip;
    float lr;
    int64_t iters, eval_every;
    uint64_t seed;
    dg_fault crash[MAX_FAULTS], join[MAX_FAULTS];
    dg_fault_spec attack[MAX_FAULTS];
    int n_crash, n_join, n_attack;
    const char *network; dg_netsim_config net; /* --network, parsed (docs/network.md) */
} options;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: distgan [options]\n"
        "Trains a GAN standalone, with MD-GAN or with FL-GAN (server and N workers in\n"
        "this process), with progress, a CSV log, sample grids and checkpoints.\n\n"
        "  --algo gan|mdgan|flgan   (default mdgan)\n"
        "  --workers N         workers (default 4)\n"
        "  --batch b           batch size (default 64)\n"
        "  --k K               MD-GAN generated batches per iteration: a number or\n"
        "                      'log' for ceil(log2 N) (default 1)\n"
        "  --L L               discriminator steps per iteration (default 1)\n"
        "  --E E               local epochs: MD-GAN swaps D every m*E/b iterations,\n"
        "                      FL-GAN averages every m*E/b (default 1; MD-GAN 0 = no swap)\n"
        "  --swap-every S      MD-GAN: swap every S iterations instead of m*E/b\n"
        "  --swap-opt-stays    MD-GAN: D's Adam state stays with the worker\n"
        "  --real-once         MD-GAN: one real batch per iteration (paper) instead of\n"
        "                      a fresh one per D step\n"
        "  --feedback-clip C   MD-GAN: the server scales each sample's feedback from a\n"
        "                      worker down to L2 norm C before summing (default off)\n"
        "  --iid | --shards S | --dirichlet A\n"
        "                      split: i.i.d. (default), S label shards per worker,\n"
        "                      Dirichlet(A) label skew\n"
        "  --acgan             class-conditional G, D with 1 + C outputs\n"
        "  --saturating        G loss log(1 - D(G(z))) (default -log D(G(z)))\n"
        "  --arch dcgan|mlp    networks (default dcgan; mlp = the MD-GAN paper's)\n"
        "  --lr LR             Adam learning rate of G and D (default 2e-4)\n"
        "  --dataset SPEC      fashion, mnist[:DIR], shapes[:N], idx:DIR, idx:IMAGES[,LABELS],\n"
        "                      cifar:DIR or images:DIR (docs/data.md; default: fashion\n"
        "                      when " DG_FASHION_MNIST_DIR " exists, else shapes)\n"
        "  --iters I           generator updates (default 2000)\n"
        "  --eval-every N      score/FID every N iterations (default 500; 0 = at the end)\n"
        "  --eval-samples S    samples per evaluation (default 500)\n"
        "  --no-eval           no classifier, no score/FID (grids and logs only)\n"
        "  --classifier FILE   classifier cache (default DIR/classifier-<dataset>.bin)\n"
        "  --clf-epochs N      classifier training epochs (default 3)\n"
        "  --seed S            run seed (default 1)\n"
        "  --threads T         pool threads (default 0: one per core)\n"
        "  --crash n@t[,..]    worker n stops answering at iteration t (FL-GAN: round t)\n"
        "  --attack n@s[,..]   MD-GAN: worker n's feedback is multiplied by s ('nan': NaN)\n"
        "                      from the first iteration, by a fault transport\n"
        "  --join t[,..]       MD-GAN: a new worker joins at iteration t with a copy of a\n"
        "                      live worker's D (the data is split over N + joins)\n"
        "  --network SPEC      MD-GAN, FL-GAN: simulate a network (docs/network.md): a\n"
        "                      profile (datacenter, wan, edge), a spec such as\n"
        "                      'wan; worker 3 gflops=5' or @FILE; sim_s is its time\n"
        "  --out DIR           outputs (default out/distgan)\n"
        "  --resume            continue from the checkpoints in DIR\n"
        "  --no-checkpoint     write no checkpoints\n"
        "  --help\n"
        "An option the chosen --algo does not use is an error.\n");
}

/* "n@t,n@t" (with_worker) or "t,t": faults, strictly */
static int parse_faults(const char *name, const char *s, dg_fault *f, int *n, int with_worker)
{
    const char *list = s;
    char item[64];
    for (;; s += strcspn(s, ",") + 1) {
        size_t len = strcspn(s, ",");
        const char *at;
        long long w = 0, t;
        snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item ? len : sizeof item - 1), s);
        at = strchr(item, '@');
        if (with_worker && at) item[at - item] = 0;
        if (*n == MAX_FAULTS || len >= sizeof item || !with_worker != !at ||
            (with_worker && dg_parse_int(item, 1, 100000, &w)) ||
            dg_parse_int(with_worker ? at + 1 : item, 0, 1000000000, &t)) {
            fprintf(stderr, "distgan: %s: '%s' is not %s (at most %d)\n", name, list,
                    with_worker ? "n@t[,n@t...] (worker n >= 1, iteration t >= 0)"
                                : "t[,t...] (iteration t >= 0)", MAX_FAULTS);
            return 1;
        }
        f[*n].worker = (int)w;
        f[*n].iteration = t;
        (*n)++;
        if (!s[len]) return 0;
    }
}

/* --attack "n@scale,n@nan": feedback faults of workers 1..N */
static int parse_attacks(options *o)
{
    const char *s = o->attack_str;
    char item[64];
    for (;; s += strcspn(s, ",") + 1) {
        size_t len = strcspn(s, ",");
        char *at;
        long long w;
        double scale = 0.0;
        dg_fault_spec *f = &o->attack[o->n_attack];
        snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item ? len : sizeof item - 1), s);
        at = strchr(item, '@');
        if (at) *at++ = 0;
        if (o->n_attack == MAX_FAULTS || len >= sizeof item || !at ||
            dg_parse_int(item, 1, o->workers, &w) ||
            (strcmp(at, "nan") && dg_parse_float(at, -1e30, 1e30, &scale))) {
            fprintf(stderr, "distgan: --attack: '%s' is not n@scale[,n@scale...] (worker 1 <= n <= "
                    "%d, scale a number or 'nan'; at most %d)\n", o->attack_str, o->workers,
                    MAX_FAULTS);
            return 1;
        }
        f->kind = strcmp(at, "nan") ? DG_FAULT_SCALE : DG_FAULT_NAN;
        f->peer = (int)w;
        f->type = DG_MSG_FEEDBACK;
        f->iteration = 0;
        f->scale = (float)scale;
        o->n_attack++;
        if (!s[len]) return 0;
    }
}

static int parse(options *o, int argc, char **argv)
{
    struct stat st;
    const dg_option table[] = {
        {"--algo", DG_OPT_CHOICE, &o->algo, 0, 0, "gan|mdgan|flgan"},
        {"--arch", DG_OPT_CHOICE, &o->arch, 0, 0, "dcgan|mlp"},
        {"--workers", DG_OPT_INT, &o->workers, 1, 10000, NULL},
        {"--batch", DG_OPT_INT, &o->batch, 1, 65536, NULL},
        {"--k", DG_OPT_STRING, &o->k_str, 0, 0, NULL},
        {"--L", DG_OPT_INT, &o->L, 1, 1000, NULL},
        {"--E", DG_OPT_INT, &o->E, 0, 1000000, NULL},
        {"--swap-every", DG_OPT_INT, &o->swap_every, 0, 1000000000, NULL},
        {"--swap-opt-stays", DG_OPT_FLAG, &o->swap_opt_stays, 0, 0, NULL},
        {"--real-once", DG_OPT_FLAG, &o->real_once, 0, 0, NULL},
        {"--iid", DG_OPT_FLAG, &o->iid, 0, 0, NULL},
        {"--shards", DG_OPT_INT, &o->shards, 1, 1000, NULL},
        {"--dirichlet", DG_OPT_DOUBLE, &o->alpha, 1e-6, 1e6, NULL},
        {"--feedback-clip", DG_OPT_DOUBLE, &o->feedback_clip, 0, 1e30, NULL},
        {"--acgan", DG_OPT_FLAG, &o->acgan, 0, 0, NULL},
        {"--saturating", DG_OPT_FLAG, &o->saturating, 0, 0, NULL},
        {"--lr", DG_OPT_FLOAT, &o->lr, 1e-8, 1, NULL},
        {"--dataset", DG_OPT_STRING, &o->dataset, 0, 0, NULL},
        {"--iters", DG_OPT_INT64, &o->iters, 1, 1e9, NULL},
        {"--eval-every", DG_OPT_INT64, &o->eval_every, 0, 1e9, NULL},
        {"--eval-samples", DG_OPT_INT, &o->eval_samples, 2, 1000000, NULL},
        {"--no-eval", DG_OPT_FLAG, &o->no_eval, 0, 0, NULL},
        {"--classifier", DG_OPT_STRING, &o->classifier, 0, 0, NULL},
        {"--clf-epochs", DG_OPT_INT, &o->clf_epochs, 0, 1000, NULL},
        {"--seed", DG_OPT_U64, &o->seed, 0, 0, NULL},
        {"--threads", DG_OPT_INT, &o->threads, 0, 1024, NULL},
        {"--crash", DG_OPT_STRING, &o->crash_str, 0, 0, NULL},
        {"--join", DG_OPT_STRING, &o->join_str, 0, 0, NULL},
        {"--attack", DG_OPT_STRING, &o->attack_str, 0, 0, NULL},
        {"--network", DG_OPT_STRING, &o->network, 0, 0, NULL},
        {"--out", DG_OPT_STRING, &o->out, 0, 0, NULL},
        {"--resume", DG_OPT_FLAG, &o->resume, 0, 0, NULL},
        {"--no-checkpoint", DG_OPT_FLAG, &o->no_checkpoint, 0, 0, NULL},
        {"--help", DG_OPT_FLAG, &o->help, 0, 0, NULL},
    };
    long long k;
    int i;
    memset(o, 0, sizeof *o);
    o->algo = ALGO_MDGAN;
    o->dataset = stat(DG_FASHION_MNIST_DIR "/train-images-idx3-ubyte.gz", &st) == 0 ? "fashion"
                                                                                    : "shapes";
    o->out = "out/distgan";
    o->workers = 4;
    o->batch = 64;
    o->L = 1;
    o->E = 1;
    o->eval_samples = 500;
    o->clf_epochs = 3;
    o->z_dim = 100;
    o->arch = DG_ARCH_DCGAN;
    o->lr = 2e-4f;
    o->iters = 2000;
    o->eval_every = 500;
    o->seed = 1;
    if (dg_options_parse(table, (int)(sizeof table / sizeof table[0]), argc, argv, 1)) {
        fprintf(stderr, "distgan: %s\n", dg_last_error());
        return 1;
    }
    for (i = 1; i < argc; i++) { /* never ignore an option silently */
        static const struct { const char *name; unsigned algos; } only[] = {
            {"--k", 2}, {"--swap-every", 2}, {"--swap-opt-stays", 2}, {"--real-once", 2},
            {"--join", 2}, {"--feedback-clip", 2}, {"--attack", 2}, {"--L", 1 | 2}, {"--workers", 2 | 4},
            {"--E", 2 | 4}, {"--iid", 2 | 4}, {"--shards", 2 | 4}, {"--dirichlet", 2 | 4},
            {"--crash", 2 | 4}, {"--network", 2 | 4}};
        size_t j;
        for (j = 0; j < sizeof only / sizeof only[0]; j++)
            if (!strcmp(argv[i], only[j].name) && !(only[j].algos & (1u << o->algo))) {
                fprintf(stderr, "distgan: %s is not an option of --algo %s\n", argv[i],
                        o->algo == ALGO_GAN ? "gan" : o->algo == ALGO_MDGAN ? "mdgan" : "flgan");
                return 1;
            }
    }
    if (o->help) {
        usage(stdout);
        exit(0);
    }
    if (o->iid + (o->shards > 0) + (o->alpha > 0) > 1) {
        fprintf(stderr, "distgan: --iid, --shards and --dirichlet exclude each other\n");
        return 1;
    }
    if (!o->k_str || !strcmp(o->k_str, "log")) o->k = o->k_str ? DG_MDGAN_K_LOG2 : 1;
    else if (dg_parse_int(o->k_str, 1, o->workers, &k) == DG_OK) o->k = (int)k;
    else {
        fprintf(stderr, "distgan: --k: %s (or 'log')\n", dg_last_error());
        return 1;
    }
    if ((o->crash_str && parse_faults("--crash", o->crash_str, o->crash, &o->n_crash, 1)) ||
        (o->join_str && parse_faults("--join", o->join_str, o->join, &o->n_join, 0)))
        return 1;
    for (i = 0; i < o->n_crash; i++)
        if (o->crash[i].worker > o->workers + o->n_join) {
            fprintf(stderr, "distgan: --crash: '%s' names worker %d of %d\n", o->crash_str,
                    o->crash[i].worker, o->workers + o->n_join);
            return 1;
        }
    for (i = 0; i < o->n_join; i++) o->join[i].worker = o->workers + 1 + i;
    if (o->network && (dg_netsim_parse(o->network, &o->net) || /* peers: server + N + joins */
                       dg_netsim_config_check(&o->net, o->workers + o->n_join + 1))) {
        fprintf(stderr, "distgan: --network '%s': %s\n", o->network, dg_last_error());
        return 1;
    }
    return o->attack_str ? parse_attacks(o) : 0;
}

static const char *mb(double bytes, char *buf)
{
    if (bytes >= 1e9) sprintf(buf, "%.2f GB", bytes / 1e9);
    else sprintf(buf, "%.1f MB", bytes / 1e6);
    return buf;
}

static int fail(const char *what, dg_result r)
{
    fprintf(stderr, "distgan: %s: %s (%s)\n", what, dg_result_str(r), dg_last_error());
    return 1;
}

static void print_log(void *user, const char *line)
{
    (void)user;
    printf("  [event] %s\n", line);
    fflush(stdout);
}

static dg_result write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok;
    if (!f) return DG_ERR_IO;
    ok = fwrite(buf, 1, n, f) == n;
    ok = fclose(f) == 0 && ok;
    return ok ? DG_OK : DG_ERR_IO;
}

static dg_result read_file(const char *path, unsigned char **buf, size_t *n)
{
    FILE *f = fopen(path, "rb");
    long len;
    if (!f) return DG_ERR_IO;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = (unsigned char *)malloc(len > 0 ? (size_t)len : 1);
    if (!*buf || len <= 0 || fread(*buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(*buf);
        return DG_ERR_IO;
    }
    fclose(f);
    *n = (size_t)len;
    return DG_OK;
}

/* MD-GAN (md) or FL-GAN (fl) checkpoint of an in-process run: one file for
   the server and one for every worker, through the roles' _mem functions.
   MD-GAN settles its run first so that no message is in flight. */
static dg_result checkpoint(dg_mdgan_run *md, dg_flgan_run *fl, int n_workers, const char *dir,
                            int load)
{
    char path[1100];
    int n;
    dg_result e;
    if (md && !load && (e = dg_mdgan_run_settle(md)) != DG_OK) return e;
    for (n = 0; n <= n_workers; n++) {
        dg_mdgan_server *ms = md ? dg_mdgan_run_server(md) : NULL;
        dg_mdgan_worker *mw = md && n ? dg_mdgan_run_worker(md, n) : NULL;
        dg_flgan_server *fs = fl ? dg_flgan_run_server(fl) : NULL;
        dg_flgan_worker *fw = fl && n ? dg_flgan_run_worker(fl, n) : NULL;
        unsigned char *buf = NULL;
        size_t len;
        dg_result r;
        if (n == 0) snprintf(path, sizeof path, "%s/%sserver.ckpt", dir, md ? "" : "flgan_");
        else snprintf(path, sizeof path, "%s/%sworker_%d.ckpt", dir, md ? "" : "flgan_", n);
        if (load) {
            if ((r = read_file(path, &buf, &len))) {
                if (n) continue; /* a worker that never trained (a later joiner) or had crashed */
                fprintf(stderr, "distgan: cannot read %s\n", path);
                return r;
            }
            if (md && n) r = dg_mdgan_worker_load_mem(mw, buf, len);
            else if (md) r = dg_mdgan_server_load_mem(ms, buf, len);
            else if (n) r = dg_flgan_worker_load_mem(fw, buf, len);
            else r = dg_flgan_server_load_mem(fs, buf, len);
        } else {
            if (n && (md ? !dg_mdgan_server_is_live(ms, n) : !dg_flgan_server_is_live(fs, n)))
                continue;
            if (md) len = n ? dg_mdgan_worker_save_size(mw) : dg_mdgan_server_save_size(ms);
            else len = n ? dg_flgan_worker_save_size(fw) : dg_flgan_server_save_size(fs);
            buf = (unsigned char *)malloc(len);
            if (!buf) return DG_ERR_NOMEM;
            if (md && n) r = dg_mdgan_worker_save_mem(mw, buf, len, &len);
            else if (md) r = dg_mdgan_server_save_mem(ms, buf, len, &len);
            else if (n) r = dg_flgan_worker_save_mem(fw, buf, len, &len);
            else r = dg_flgan_server_save_mem(fs, buf, len, &len);
            if (r == DG_OK) r = write_file(path, buf, len);
        }
        free(buf);
        if (r) return r;
    }
    return DG_OK;
}

int main(int argc, char **argv)
{
    options o;
    dg_pool *pool;
    dg_dataset train, test;
    dg_partition part;
    dg_evaluator ev;
    dg_csv csv;
    dg_gan_trainer trainer;
    dg_mdgan_run *md = NULL;
    dg_flgan_run *fl = NULL;
    dg_transport *t = NULL;
    dg_gan_sampler src;
    dg_result r;
    char path[1100], clf_path[1100], b1[32], b2[32], b3[32], b4[32];
    int have_eval = 0, have_floor = 0, have_untrained = 0, slots, n_classes, per_round = 1, i;
    dg_eval_result floor_er, untrained_er, last_er; /* the summary's reference points */
    int64_t it = 0, start_it = 0;
    double t0, t_last_print = 0.0;
    const char *algo_name;

    if (parse(&o, argc, argv)) return 2;
    algo_name = o.algo == ALGO_GAN ? "gan" : o.algo == ALGO_MDGAN ? "mdgan" : "flgan";
    if ((r = dg_pool_create(&pool, o.threads))) return fail("pool", r);
    if ((r = dg_dataset_open(o.dataset, 1, &train, &test))) {
        fprintf(stderr, "distgan: --dataset: %s\n", dg_last_error());
        return r == DG_ERR_ARG ? 2 : 1; /* a malformed spec is a usage error */
    }
    if (mkdir(o.out, 0777) && errno != EEXIST) {
        /* one level of parents (out/), enough for the defaults */
        char parent[1024];
        char *slash;
        snprintf(parent, sizeof parent, "%s", o.out);
        slash = strrchr(parent, '/');
        if (slash) {
            *slash = 0;
            mkdir(parent, 0777);
        }
        if (mkdir(o.out, 0777) && errno != EEXIST) {
            fprintf(stderr, "distgan: cannot create %s\n", o.out);
            return 1;
        }
    }
    n_classes = o.acgan ? train.n_classes : 0;
    slots = o.algo == ALGO_GAN ? 1 : o.workers + o.n_join;
    printf("distgan %s: %s, %zu training images %dx%dx%d, %s, %d threads\n", algo_name,
           o.dataset, train.n, train.c, train.h, train.w,
           o.arch == DG_ARCH_DCGAN ? "dcgan" : "mlp", dg_pool_size(pool));

    /* the evaluator (classifier cached in the output folder) */
    if (!o.no_eval && train.n_classes >= 2) {
        dg_evaluator_config ec = dg_evaluator_config_init();
        double c0 = dg_clock_seconds();
        if (o.classifier) snprintf(clf_path, sizeof clf_path, "%s", o.classifier);
        else snprintf(clf_path, sizeof clf_path, "%s/classifier-%.*s.bin", o.out,
                      (int)strcspn(o.dataset, ":"), o.dataset);
        ec.cache_path = clf_path;
        ec.epochs = o.clf_epochs;
        ec.ref_max = 10000;
        printf("classifier: loading or training (%d epochs) ...\n", o.clf_epochs);
        fflush(stdout);
        if ((r = dg_evaluator_init(&ev, pool, &train, test.n ? &test : NULL, &ec)))
            return fail("classifier", r);
        printf("classifier %s: test accuracy %.2f%% (%.0f s)\n", ev.loaded ? "loaded" : "trained",
               100.0 * ev.test_accuracy, dg_clock_seconds() - c0);
        have_eval = 1;
        /* the floor: real held-out images scored like generated ones */
        if (test.n >= 2) {
            size_t n = (size_t)o.eval_samples < test.n ? (size_t)o.eval_samples : test.n;
            if ((r = dg_evaluator_dataset(&ev, &test, n, n >= 10 ? 10 : 1, &floor_er)))
                return fail("floor", r);
            printf("real test data, %zu samples: score %.2f FID %.2f (the floor)\n", n,
                   floor_er.score_mean, floor_er.fid_logits);
            have_floor = 1;
        }
    }

    /* the split and the algorithm */
    if (o.algo != ALGO_GAN) {
        if (o.shards) r = dg_partition_by_label(&part, &train, slots, o.shards, o.seed);
        else if (o.alpha > 0) r = dg_partition_dirichlet(&part, &train, slots, o.alpha, (size_t)o.batch, o.seed);
        else r = dg_partition_iid(&part, train.n, slots, o.seed);
        if (r) return fail("partition", r);
    }
    memset(&src, 0, sizeof src);
    src.z_dim = o.z_dim;
    src.n_classes = n_classes;
    src.seed = o.seed + 0x5eed; /* evaluation samples, as dg_gan_trainer_sample */
    if (o.algo == ALGO_GAN) {
        dg_gan_config gc = dg_gan_config_init();
        gc.arch = (dg_arch)o.arch;
        gc.lr = o.lr;
        gc.z_dim = o.z_dim;
        gc.batch = o.batch;
        gc.seed = o.seed;
        gc.acgan = o.acgan;
        gc.saturating = o.saturating;
        gc.d_steps = o.L;
        gc.iterations = o.iters;
        if ((r = dg_gan_trainer_init(&trainer, &gc, &train, pool))) return fail("trainer", r);
        snprintf(path, sizeof path, "%s/gan.ckpt", o.out);
        if (o.resume && (r = dg_gan_trainer_load(&trainer, path))) return fail("resume", r);
        src.g = trainer.g;
        src.chunk = o.batch;
        start_it = trainer.iter;
    } else if (o.algo == ALGO_MDGAN) {
        dg_mdgan_config c = dg_mdgan_config_init();
        c.n_workers = o.workers;
        c.max_workers = slots;
        c.c = train.c;
        c.h = train.h;
        c.w = train.w;
        c.n_classes = n_classes;
        c.arch = (dg_arch)o.arch;
        c.lr_g = c.lr_d = o.lr;
        c.z_dim = o.z_dim;
        c.batch = o.batch;
        c.k = o.k;
        c.disc_steps = o.L;
        c.fresh_real = !o.real_once;
        c.saturating = o.saturating;
        c.local_epochs = o.E;
        c.swap_every = o.swap_every;
        c.swap_optimizer = !o.swap_opt_stays;
        c.feedback_clip = (float)o.feedback_clip;
        c.seed = o.seed;
        c.log = print_log;
        if ((r = dg_mdgan_run_create(&md, &c, pool, &train, &part, o.crash, o.n_crash, o.join,
                                     o.n_join)))
            return fail("mdgan", r);
        t = dg_mdgan_run_transport(md);
        for (i = 0; i < o.n_attack; i++)
            if ((r = dg_fault_transport_add(t, &o.attack[i]))) return fail("attack", r);
        if (o.resume && (r = checkpoint(md, NULL, slots, o.out, 1))) return fail("resume", r);
        src.g = dg_mdgan_server_generator(dg_mdgan_run_server(md));
        src.chunk = o.batch * dg_mdgan_k(&c);
        start_it = dg_mdgan_server_stats(dg_mdgan_run_server(md))->iteration;
        if (o.swap_every) snprintf(b1, sizeof b1, "%d", o.swap_every);
        else snprintf(b1, sizeof b1, "%s", o.E ? "m*E/b" : "no");
        printf("MD-GAN: N = %d, k = %d, L = %d, b = %d, swap every %s iterations, |w| = %zu, "
               "|θ| = %zu\n", o.workers, dg_mdgan_k(&c), o.L, o.batch, b1, dg_net_param_count(src.g),
               dg_net_param_count(dg_mdgan_worker_discriminator(dg_mdgan_run_worker(md, 1))));
    } else {
        dg_flgan_config c = dg_flgan_config_init();
        c.n_workers = o.workers;
        c.c = train.c;
        c.h = train.h;
        c.w = train.w;
        c.n_classes = n_classes;
        c.arch = (dg_arch)o.arch;
        c.lr = o.lr;
        c.z_dim = o.z_dim;
        c.batch = o.batch;
        c.local_epochs = o.E > 0 ? o.E : 1;
        c.saturating = o.saturating;
        c.seed = o.seed;
        c.log = print_log;
        if ((r = dg_flgan_run_create(&fl, &c, pool, &train, &part, o.crash, o.n_crash)))
            return fail("flgan", r);
        t = dg_flgan_run_transport(fl);
        if (o.resume && (r = checkpoint(NULL, fl, o.workers, o.out, 1))) return fail("resume", r);
        src.g = dg_flgan_server_generator(dg_flgan_run_server(fl));
        src.chunk = o.batch;
        per_round = dg_flgan_worker_iters_per_round(dg_flgan_run_worker(fl, 1));
        start_it = dg_flgan_server_stats(dg_flgan_run_server(fl))->rounds * per_round;
        printf("FL-GAN: N = %d, %d local iterations (E = %d) per round\n", o.workers, per_round,
               c.local_epochs);
    }
    if (o.network) { /* before any traffic: the simulated clocks start at 0 */
        r = md ? dg_mdgan_run_set_network(md, &o.net) : dg_flgan_run_set_network(fl, &o.net);
        if (r) return fail("network", r);
    }
    src.g_in = (float *)malloc(sizeof(float) * (size_t)src.chunk * (o.z_dim + n_classes));
    if (!src.g_in) return fail("memory", DG_ERR_NOMEM);

    snprintf(path, sizeof path, "%s/log.csv", o.out);
    if ((r = dg_csv_open(&csv, path, "iteration,d_loss,g_loss,score,fid,bytes_down,bytes_up,"
                                     "bytes_w2w,time_s,n_live,sim_s", o.resume)))
        return fail("log", r);
    printf("log: %s\n", path);

    if (have_eval && start_it == 0) { /* the other end: G before training */
        if ((r = dg_evaluator_run(&ev, dg_gan_sampler_sample, &src, (size_t)o.eval_samples, 10,
                                  &untrained_er)))
            return fail("evaluation", r);
        printf("untrained G: score %.2f FID %.2f\n", untrained_er.score_mean,
               untrained_er.fid_logits);
        have_untrained = 1;
    }
    memset(&last_er, 0, sizeof last_er);
    t0 = dg_clock_seconds();
    it = start_it;
    while (it < o.iters) {
        float dl, gl;
        int n_live, last, evaluate;
        double score = NAN, fid = NAN, down = 0, up = 0, w2w = 0, el, sim;
        if (o.algo == ALGO_GAN) {
            dg_gan_stats st;
            if ((r = dg_gan_trainer_step(&trainer, &st))) return fail("step", r);
            it = st.iter;
            dl = st.d_loss;
            gl = st.g_loss;
            n_live = 1;
        } else if (o.algo == ALGO_MDGAN) {
            const dg_mdgan_stats *st;
            if ((r = dg_mdgan_run_iteration(md))) return fail("iteration", r);
            st = dg_mdgan_server_stats(dg_mdgan_run_server(md));
            it = st->iteration;
            dl = st->d_loss;
            gl = st->g_loss;
            n_live = st->n_live;
        } else {
            const dg_flgan_stats *st;
            if ((r = dg_flgan_run_round(fl))) return fail("round", r);
            st = dg_flgan_server_stats(dg_flgan_run_server(fl));
            it = st->iterations;
            dl = st->d_loss;
            gl = st->g_loss;
            n_live = st->n_live;
        }
        if (t) {
            dg_traffic all = dg_transport_traffic(t, DG_ANY_PEER, DG_ANY_PEER);
            down = (double)dg_transport_traffic(t, 0, DG_ANY_PEER).payload_bytes;
            up = (double)dg_transport_traffic(t, DG_ANY_PEER, 0).payload_bytes;
            w2w = (double)all.payload_bytes - down - up;
        }
        last = it >= o.iters;
        evaluate = last || (o.eval_every && it / o.eval_every != (it - per_round) / o.eval_every &&
                            it > start_it);
        if (evaluate) {
            if (have_eval) {
                dg_eval_result er;
                if ((r = dg_evaluator_run(&ev, dg_gan_sampler_sample, &src, (size_t)o.eval_samples, 10, &er)))
                    return fail("evaluation", r);
                score = er.score_mean;
                fid = er.fid_logits;
                last_er = er;
            }
            snprintf(path, sizeof path, "%s/samples_%06lld.png", o.out, (long long)it);
            if ((r = dg_gan_write_samples(&src, GRID_SEED, 100, 10, path))) return fail("grid", r);
            if (o.no_checkpoint) r = DG_OK;
            else if (o.algo == ALGO_GAN) {
                snprintf(path, sizeof path, "%s/gan.ckpt", o.out);
                r = dg_gan_trainer_save(&trainer, path);
            } else if (o.algo == ALGO_MDGAN) {
                r = checkpoint(md, NULL, slots, o.out, 0);
            } else {
                r = checkpoint(NULL, fl, o.workers, o.out, 0);
            }
            if (r) return fail("checkpoint", r);
        }
        el = dg_clock_seconds() - t0;
        sim = o.network ? dg_netsim_clock(t, DG_PEER_SERVER) : NAN; /* --network's time */
        {
            /* bytes exact (payload bytes of this run, see dg_transport_traffic);
               score and FID empty (NaN) when not evaluated */
            double row[11] = {(double)it, dl, gl, score, fid, down, up, w2w, el, n_live, sim};
            if ((r = dg_csv_row(&csv, row, 11))) return fail("log", r);
        }
        if (evaluate || el - t_last_print >= 2.0 || it == start_it + per_round) {
            double eta = (double)(o.iters - it) * el / (double)(it - start_it);
            printf("it %6lld/%lld | D %.3f G %.3f", (long long)it, (long long)o.iters, dl, gl);
            if (evaluate && have_eval) printf(" | score %.2f FID %.2f", score, fid);
            if (o.algo != ALGO_GAN)
                printf(" | live %d/%d | down %s up %s w2w %s", n_live, slots, mb(down, b1),
                       mb(up, b2), mb(w2w, b3));
            if (o.network && sim < 60.0) printf(" | sim %.2f s", sim);
            else if (o.network) printf(" | sim %s", dg_format_hms(sim, b2));
            printf(" | %s, ETA %s\n", dg_format_hms(el, b4), dg_format_hms(eta, b1));
            fflush(stdout);
            t_last_print = el;
        }
    }
    dg_csv_close(&csv);
    snprintf(path, sizeof path, "%s/samples_final.png", o.out);
    if ((r = dg_gan_write_samples(&src, GRID_SEED, 100, 10, path))) return fail("grid", r);
    printf("done: %lld iterations in %.1f s\n", (long long)it, dg_clock_seconds() - t0);
    if (have_eval && last_er.n) { /* FID on the classifier's logits, lower is better */
        printf("  quality: FID %.1f (real data: ", last_er.fid_logits);
        if (have_floor) printf("%.1f", floor_er.fid_logits);
        else printf("n/a");
        if (have_untrained) printf("; untrained G: %.1f", untrained_er.fid_logits);
        printf("), classifier score %.2f (real data: ", last_er.score_mean);
        if (have_floor) printf("%.2f", floor_er.score_mean);
        else printf("n/a");
        if (have_untrained) printf("; untrained G: %.2f", untrained_er.score_mean);
        printf("; 1 to %d)\n", ev.n_classes);
    }
    printf("  samples: %s\n  log:     %s/log.csv\n", path, o.out);
    if (md) dg_mdgan_run_free(md);
    if (fl) dg_flgan_run_free(fl);
    if (o.algo == ALGO_GAN) dg_gan_trainer_free(&trainer);
    if (o.algo != ALGO_GAN) dg_partition_free(&part);
    if (have_eval) dg_evaluator_free(&ev);
    free(src.g_in);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
    dg_pool_destroy(pool);
    return 0;
}
