/* tools/plot.c: columns of CSV files as a line plot (PNG), through dg_plot.
 *
 *   make build/plot
 *   build/plot docs/adacomp-curves.csv --x bytes --y accuracy --group label \
 *       --where dataset=mnist,workers=10 --log-x --out acc.png
 *   build/plot run1/log.csv run2/log.csv --x iteration --y fid --out fid.png
 *
 * The files come first, then the options.  Each file starts with a header
 * row of column names; fields are separated by commas (no quoting).  Rows
 * whose x or y field is empty or not a number are skipped.  Without
 * --group, each file is one curve named after the file. */
#define _POSIX_C_SOURCE 200809L
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "../examples/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERIES 32
#define MAX_COLS 64
#define MAX_WHERE 8

typedef struct curve {
    char name[64];
    const char *file;   /* the file it comes from */
    double *x, *y;
    int n, cap;
} curve;

static void usage(FILE *f)
{
    fprintf(f,"usage: plot FILE.csv [FILE.csv ...] --y COL --out OUT.png [options]\n"
           "  --x COL              x column (default: the first)\n"
           "  --y COL              y column\n"
           "  --group COL          one curve per value of COL (default: one per file)\n"
           "  --where C=V[,C=V]    only the rows whose column C holds V\n"
           "  --log-x              log10 x axis\n"
           "  --title T --xlabel T --ylabel T\n"
           "  --ymin V --ymax V    y range (default: from the data)\n"
           "  --width W --height H size in pixels (900 x 560)\n"
           "  --out FILE.png\n");
}

/* splits line in place at commas; returns the number of fields */
static int split(char *line, char **field)
{
    int n = 0;
    line[strcspn(line, "\r\n")] = 0;
    for (;;) {
        size_t len = strcspn(line, ",");
        if (n < MAX_COLS) field[n++] = line;
        if (!line[len]) return n;
        line[len] = 0;
        line += len + 1;
    }
}

static int column(char **field, int n, const char *name)
{
    int i;
    for (i = 0; i < n; i++)
        if (!strcmp(field[i], name)) return i;
    return -1;
}

static int add_point(curve *c, double x, double y)
{
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        double *nx = (double *)realloc(c->x, sizeof(double) * cap);
        double *ny = nx ? (double *)realloc(c->y, sizeof(double) * cap) : NULL;
        if (nx) c->x = nx;
        if (!ny) return 1;
        c->y = ny;
        c->cap = cap;
    }
    c->x[c->n] = x;
    c->y[c->n++] = y;
    return 0;
}

/* the curves of one file; returns nonzero after printing why */
static int read_csv(const char *path, const char *xcol, const char *ycol, const char *group,
                    char where[][2][64], int n_where, curve *cv, int *n_cv)
{
    char line[8192], *field[MAX_COLS], header[8192];
    int nh, ix, iy, ig = -1, iw[MAX_WHERE], k, missing = -1;
    FILE *f = fopen(path, "r");
    if (!f || !fgets(header, sizeof header, f)) {
        fprintf(stderr, "plot: cannot read %s\n", path);
        if (f) fclose(f);
        return 1;
    }
    nh = split(header, field);
    ix = xcol ? column(field, nh, xcol) : 0;
    iy = column(field, nh, ycol);
    if (group) ig = column(field, nh, group);
    for (k = 0; k < n_where; k++)
        if ((iw[k] = column(field, nh, where[k][0])) < 0) missing = k;
    if (ix < 0 || iy < 0 || (group && ig < 0) || missing >= 0) {
        fprintf(stderr, "plot: %s has no column %s\n", path,
                ix < 0 ? xcol : iy < 0 ? ycol : ig < 0 && group ? group : where[missing][0]);
        fclose(f);
        return 1;
    }
    while (fgets(line, sizeof line, f)) {
        int n = split(line, field), s;
        const char *name = path;
        double x, y;
        for (k = 0; k < n_where; k++)
            if (iw[k] >= n || strcmp(field[iw[k]], where[k][1])) break;
        if (k < n_where || ix >= n || iy >= n || (ig >= n) ||
            dg_parse_float(field[ix], -1e300, 1e300, &x) ||
            dg_parse_float(field[iy], -1e300, 1e300, &y))
            continue;
        if (ig >= 0) name = field[ig];
        else if (strrchr(path, '/')) name = strrchr(path, '/') + 1;
        for (s = 0; s < *n_cv; s++)
            if (ig < 0 ? cv[s].file == path : !strncmp(cv[s].name, name, sizeof cv[s].name - 1)) break;
        if (s == *n_cv) {
            /* a file's curve is named without ".csv" */
            size_t len = ig < 0 && strrchr(name, '.') ? (size_t)(strrchr(name, '.') - name) : strlen(name);
            if (s == MAX_SERIES) continue;
            snprintf(cv[s].name, sizeof cv[s].name, "%.*s", (int)len, name);
            cv[s].file = path;
            (*n_cv)++;
        }
        if (add_point(&cv[s], x, y)) {
            fprintf(stderr, "plot: out of memory\n");
            fclose(f);
            return 1;
        }
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    const char *xcol = NULL, *ycol = NULL, *group = NULL, *where_s = NULL, *out = NULL, *w;
    size_t len = 0;
    dg_plot_config pc = dg_plot_config_init();
    char where[MAX_WHERE][2][64];
    int n_files, i, n_where = 0, n_cv = 0, help = 0, status = 0;
    curve cv[MAX_SERIES];
    dg_plot_series ser[MAX_SERIES];
    const dg_option table[] = {
        {"--x", DG_OPT_STRING, &xcol, 0, 0, NULL},
        {"--y", DG_OPT_STRING, &ycol, 0, 0, NULL},
        {"--group", DG_OPT_STRING, &group, 0, 0, NULL},
        {"--where", DG_OPT_STRING, &where_s, 0, 0, NULL},
        {"--log-x", DG_OPT_FLAG, &pc.log_x, 0, 0, NULL},
        {"--title", DG_OPT_STRING, &pc.title, 0, 0, NULL},
        {"--xlabel", DG_OPT_STRING, &pc.x_label, 0, 0, NULL},
        {"--ylabel", DG_OPT_STRING, &pc.y_label, 0, 0, NULL},
        {"--ymin", DG_OPT_DOUBLE, &pc.y_min, -1e15, 1e15, NULL},
        {"--ymax", DG_OPT_DOUBLE, &pc.y_max, -1e15, 1e15, NULL},
        {"--width", DG_OPT_INT, &pc.width, 200, 8192, NULL},
        {"--height", DG_OPT_INT, &pc.height, 150, 8192, NULL},
        {"--out", DG_OPT_STRING, &out, 0, 0, NULL},
        {"--help", DG_OPT_FLAG, &help, 0, 0, NULL},
    };
    n_files = 0;
    while (1 + n_files < argc && strncmp(argv[1 + n_files], "--", 2)) n_files++;
    if (cli_parse("plot", table, (int)(sizeof table / sizeof table[0]), argc, argv, 1 + n_files,
                  &help, usage))
        return 2;
    if (!n_files || !ycol || !out) {
        fprintf(stderr, "plot: needs FILE.csv, --y COL and --out FILE.png (see --help)\n");
        return 2;
    }
    for (w = where_s; w; w = w[len] ? w + len + 1 : NULL) {
        size_t eq = strcspn(w, "=");
        len = strcspn(w, ",");
        if (n_where == MAX_WHERE || eq == 0 || eq >= len || eq >= 64 || len - eq > 64) {
            fprintf(stderr, "plot: --where: '%s' is not C=V[,C=V] (at most %d)\n", where_s, MAX_WHERE);
            return 2;
        }
        snprintf(where[n_where][0], 64, "%.*s", (int)eq, w);
        snprintf(where[n_where][1], 64, "%.*s", (int)(len - eq - 1), w + eq + 1);
        n_where++;
    }
    memset(cv, 0, sizeof cv);
    memset(ser, 0, sizeof ser);
    for (i = 0; i < n_files && !status; i++)
        status = read_csv(argv[1 + i], xcol, ycol, group, where, n_where, cv, &n_cv);
    for (i = 0; i < n_cv; i++) {
        ser[i].label = cv[i].name;
        ser[i].x = cv[i].x;
        ser[i].y = cv[i].y;
        ser[i].n = cv[i].n;
    }
    if (!status && dg_plot_write_png(out, &pc, ser, n_cv)) {
        fprintf(stderr, "plot: %s\n", dg_last_error());
        status = 1;
    }
    for (i = 0; i < n_cv; i++) {
        free(cv[i].x);
        free(cv[i].y);
    }
    return status;
}
