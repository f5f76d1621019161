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
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVAL_SIZES 4
#define GRID_SEED 0x9717 /* the grids of a run show the same z over time */

typedef struct options {
    cli_run run; /* --dataset, --arch, --classifier, --out, ... */
    const char *sizes;
    dg_gan_config gan;
    int eval_only, splits, n_sizes, grid;
    size_t eval_sizes[MAX_EVAL_SIZES];
} options;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: gan [options]\n"
        "Trains a GAN on one machine (the papers' standalone baseline) and scores it\n"
        "with a classifier trained by the library.\n\n"
        "  --dataset SPEC      fashion (default), mnist[:DIR], shapes[:N], idx:DIR,\n"
        "                      idx:IMAGES[,LABELS], cifar:DIR or images:DIR (docs/data.md;\n"
        "                      the test split is held out for the classifier)\n"
        "  --arch dcgan|mlp|tiny  networks (default dcgan; mlp = the MD-GAN paper's, tiny =\n"
        "                      that MLP with 32 units: scale tests)\n"
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
        "  --threads T         threads (default 0: one per core)\n"
        "  --out DIR           log.csv, samples_<iter>.png, gan.ckpt (default out/gan-<dataset>)\n"
        "  --resume            continue from DIR/gan.ckpt\n"
        "  --no-checkpoint     write no checkpoint\n"
        "  --help\n");
}

/* "500,10000": up to MAX_EVAL_SIZES sample counts */
static int parse_sizes(options *o, const char *s)
{
    char item[32];
    long long v;
    for (o->n_sizes = 0;; s += strcspn(s, ",") + 1) {
        size_t len = strcspn(s, ",");
        snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item ? len : sizeof item - 1), s);
        if (o->n_sizes == MAX_EVAL_SIZES || len >= sizeof item ||
            dg_parse_int(item, 2, 1000000, &v))
            return 1;
        o->eval_sizes[o->n_sizes++] = (size_t)v;
        if (!s[len]) return 0;
    }
}

static int parse(options *o, int argc, char **argv)
{
    const dg_option table[] = {
        CLI_RUN_OPTIONS(&o->run),
        {"--iters", DG_OPT_INT64, &o->gan.iterations, 1, 1e9, NULL},
        {"--batch", DG_OPT_INT, &o->gan.batch, 1, 65536, NULL},
        {"--lr", DG_OPT_FLOAT, &o->gan.lr, 1e-8, 1, NULL},
        {"--d-steps", DG_OPT_INT, &o->gan.d_steps, 1, 1000, NULL},
        {"--acgan", DG_OPT_FLAG, &o->gan.acgan, 0, 0, NULL},
        {"--saturating", DG_OPT_FLAG, &o->gan.saturating, 0, 0, NULL},
        {"--sample-batch-stats", DG_OPT_FLAG, &o->gan.sample_batch_stats, 0, 0, NULL},
        {"--eval-every", DG_OPT_INT, &o->gan.eval_every, 0, 1e9, NULL},
        {"--eval-samples", DG_OPT_STRING, &o->sizes, 0, 0, NULL},
        {"--splits", DG_OPT_INT, &o->splits, 1, 1000, NULL},
        {"--eval-only", DG_OPT_FLAG, &o->eval_only, 0, 0, NULL},
        {"--seed", DG_OPT_U64, &o->gan.seed, 0, 0, NULL},
    };
    memset(o, 0, sizeof *o);
    o->run.dataset = "fashion";
    o->gan = dg_gan_config_init();
    o->run.arch = o->gan.arch;
    o->run.clf_epochs = 12;
    o->splits = 10;
    o->grid = 64;
    o->sizes = "500,10000";
    if (cli_parse("gan", table, (int)(sizeof table / sizeof table[0]), argc, argv, 1, &o->run.help,
                  usage))
        return 1;
    o->gan.arch = (dg_arch)o->run.arch;
    if (parse_sizes(o, o->sizes)) {
        fprintf(stderr, "gan: --eval-samples: '%s' is not a list of up to %d integers in [2, 1000000]\n",
                o->sizes, MAX_EVAL_SIZES);
        return 1;
    }
    return 0;
}

/* the library's log lines (classifier training) */
static void log_stderr(void *user, const char *line)
{
    (void)user;
    fprintf(stderr, "%s\n", line);
}

static int fail(const char *what, dg_result r)
{
    fprintf(stderr, "gan: %s: %s (%s)\n", what, dg_result_str(r), dg_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    options o;
    dg_dataset train, test;
    dg_pool *pool = NULL;
    dg_evaluator ev;
    dg_evaluator_config ec;
    dg_gan_trainer t;
    dg_gan_sampler sampler;
    dg_csv csv;
    dg_result r;
    char name[32], clf_path[1100], out[1024], path[1200], header[512], b1[32], b2[32];
    int have_eval, k;
    int64_t start_iter, it;
    double t0, last_print = 0, d_sum = 0, g_sum = 0, score = -1, fid = -1;
    long n_sum = 0;

    if (parse(&o, argc, argv)) return 2;
    if ((r = dg_dataset_open(o.run.dataset, 1, &train, &test))) {
        fprintf(stderr, "gan: --dataset: %s\n", dg_last_error());
        return r == DG_ERR_ARG ? 2 : 1; /* a malformed spec is a usage error */
    }
    snprintf(name, sizeof name, "%.*s", (int)strcspn(o.run.dataset, ":"), o.run.dataset);
    fprintf(stderr, "gan: %s: %zu training, %zu test images of %dx%dx%d, %d classes\n",
            o.run.dataset, train.n, test.n, train.c, train.h, train.w, train.n_classes);
    if ((r = dg_pool_create(&pool, o.run.threads))) return fail("thread pool", r);
    mkdir("out", 0777);
    if (o.run.classifier) snprintf(clf_path, sizeof clf_path, "%s", o.run.classifier);
    else snprintf(clf_path, sizeof clf_path, "out/classifier-%s.bin", name);
    if (o.run.out) snprintf(out, sizeof out, "%s", o.run.out);
    else snprintf(out, sizeof out, "out/gan-%s", name);

    /* the evaluator: classifier, its accuracy, the reference statistics */
    have_eval = train.n_classes >= 2;
    memset(&ev, 0, sizeof ev);
    if (have_eval) {
        double t1 = dg_clock_seconds();
        ec = dg_evaluator_config_init();
        ec.epochs = o.run.clf_epochs;
        ec.cache_path = clf_path;
        ec.log = log_stderr;
        if ((r = dg_evaluator_init(&ev, pool, &train, test.n ? &test : NULL, &ec)))
            return fail("classifier", r);
        printf("classifier %s: %s, test accuracy %.2f%% on %zu held-out images (%.0f s)\n",
               clf_path, ev.loaded ? "loaded" : "trained", 100.0 * ev.test_accuracy, test.n,
               dg_clock_seconds() - t1);
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
    sampler = dg_gan_trainer_sampler(&t);
    mkdir(out, 0777);
    snprintf(path, sizeof path, "%s/gan.ckpt", out);
    if (o.run.resume) {
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
    if ((r = dg_csv_open(&csv, path, header, o.run.resume))) return fail("log", r);
    fprintf(stderr, "gan: %s %s%s, G %zu and D %zu parameters, %lld iterations of batch %d, "
            "writing %s/\n", dg_arch_name(o.gan.arch),
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

    t0 = dg_clock_seconds();
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
            row[nv++] = dg_clock_seconds() - t0;
            printf(" %s |\n", dg_format_hms(dg_clock_seconds() - t0, b1));
            fflush(stdout);
            if ((r = dg_csv_row(&csv, row, nv))) return fail("log", r);
            snprintf(path, sizeof path, "%s/samples_%06lld.png", out, (long long)it);
            if ((r = dg_gan_write_samples(&sampler, GRID_SEED, t.n_classes ? 10 * t.n_classes : o.grid,
                                          t.n_classes ? 10 : 8, path)))
                return fail("grid", r);
            snprintf(path, sizeof path, "%s/gan.ckpt", out);
            if (!o.run.no_checkpoint && (r = dg_gan_trainer_save(&t, path)))
                return fail("checkpoint", r);
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
            tn = dg_clock_seconds();
            if (tn - last_print > 1.0 || it + 1 == o.gan.iterations) {
                double el = tn - t0, eta = el / (double)(it + 1 - start_iter) *
                                           (double)(o.gan.iterations - it - 1);
                last_print = tn;
                char sc[64] = "score -  FID -";
                if (score >= 0) snprintf(sc, sizeof sc, "score %.2f  FID %.2f", score, fid);
                fprintf(stderr, "%sit %lld/%lld  D %.3f  G %.3f  %s  elapsed %s  ETA %s%s",
                        isatty(2) ? "\r\033[K" : "", (long long)(it + 1),
                        (long long)o.gan.iterations, st.d_loss, st.g_loss, sc,
                        dg_format_hms(el, b1), dg_format_hms(eta, b2), isatty(2) ? "" : "\n");
            }
        }
    }
    if (isatty(2)) fprintf(stderr, "\n");
    fprintf(stderr, "gan: done in %s; %s/log.csv, %s/samples_*.png, %s/gan.ckpt\n",
            dg_format_hms(dg_clock_seconds() - t0, b1), out, out, out);
    dg_csv_close(&csv);
    dg_gan_trainer_free(&t);
    if (have_eval) dg_evaluator_free(&ev);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
    dg_pool_destroy(pool);
    return 0;
}
