/* tests/test_plot.c: the dg_plot section.  Plots are written into a
 * temporary folder and read back with stb_image: the PNG has the asked
 * size, the pixels of a known line carry its series colour where the line
 * must be, the legend shows the colour, and bad input is refused. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <unistd.h>
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include "scratch.h"

/* pixels of colour rgb in the box [x0, x1) x [y0, y1) of an RGB image */
static int count(const unsigned char *px, int w, int x0, int y0, int x1, int y1, const uint8_t rgb[3])
{
    int x, y, n = 0;
    for (y = y0; y < y1; y++)
        for (x = x0; x < x1; x++) n += !memcmp(px + ((size_t)y * w + x) * 3, rgb, 3);
    return n;
}

TEST(line_plot)
{
    double x[11], flat[11], rise[11];
    dg_plot_series s[2] = {{"flat", x, flat, 11}, {"rise", x, rise, 11}};
    dg_plot_config c = dg_plot_config_init();
    uint8_t c0[3], c1[3];
    unsigned char *px;
    int w, h, comp, i, band_rows = 0, y;
    for (i = 0; i <= 10; i++) {
        x[i] = i;
        flat[i] = 0.5;
        rise[i] = i / 10.0;
    }
    c.width = 640;
    c.height = 400;
    c.y_min = 0;
    c.y_max = 1;
    c.markers = 0;
    c.title = "a test plot";
    c.x_label = "x";
    c.y_label = "y";
    CHECK_OK(dg_plot_write_png(tpath("lines.png"), &c, s, 2));
    px = stbi_load(tpath("lines.png"), &w, &h, &comp, 3);
    CHECK(px != NULL && w == 640 && h == 400);
    if (!px) return;
    dg_plot_colour(0, c0);
    dg_plot_colour(1, c1);
    CHECK(memcmp(c0, c1, 3) != 0);
    /* the flat line y = 0.5: rows in the middle third hold a long run of
       its colour, and no other rows of the plot area do */
    for (y = 0; y < h; y++) {
        int n = count(px, w, 0, y, w - 150, y + 1, c0);
        if (n > w / 2) {
            band_rows++;
            CHECK(y > h / 3 && y < 2 * h / 3);
        }
    }
    CHECK(band_rows >= 2 && band_rows <= 4); /* a pen of 3 pixels */
    /* the rising line: low on the left, high on the right */
    CHECK(count(px, w, 0, h / 2, w / 3, h, c1) > 20);
    CHECK(count(px, w, w / 2, 0, w - 150, h / 3, c1) > 20);
    CHECK(count(px, w, 0, 0, w / 3, h / 3, c1) == 0);
    /* the legend: both colours in the right margin, near the top */
    CHECK(count(px, w, w - 150, 0, w, 80, c0) > 20 && count(px, w, w - 150, 0, w, 80, c1) > 20);
    /* the background stays white, the axes black */
    CHECK(count(px, w, 0, 0, w, h, (const uint8_t *)"\xff\xff\xff") > w * h / 2);
    CHECK(count(px, w, 0, 0, w, h, (const uint8_t *)"\0\0\0") > 500);
    stbi_image_free(px);
}

TEST(log_axis_and_gaps)
{
    double x[6] = {0, 1e3, 1e4, NAN, 1e6, 1e9}, y[6] = {1, 0.2, 0.4, 0.5, INFINITY, 0.9};
    dg_plot_series s = {NULL, x, y, 6};
    dg_plot_config c = dg_plot_config_init();
    unsigned char *px;
    uint8_t c0[3];
    int w, h, comp;
    c.log_x = 1;
    CHECK_OK(dg_plot_write_png(tpath("log.png"), &c, &s, 1)); /* x = 0, NaN, inf skipped */
    px = stbi_load(tpath("log.png"), &w, &h, &comp, 3);
    CHECK(px != NULL && w == 900 && h == 560);
    dg_plot_colour(0, c0);
    if (px) CHECK(count(px, w, 0, 0, w, h, c0) > 100);
    stbi_image_free(px);
    c.log_x = 0;
    CHECK_OK(dg_plot_write_png(tpath("lin.png"), &c, &s, 1));
}

TEST(refusals)
{
    double x[2] = {-1, 0}, y[2] = {NAN, 1};
    dg_plot_series s = {"s", x, y, 2}, none = {"none", NULL, NULL, 0};
    dg_plot_config c = dg_plot_config_init();
    c.log_x = 1; /* no x > 0 */
    CHECK(dg_plot_write_png(tpath("r.png"), &c, &s, 1) == DG_ERR_ARG &&
          strstr(dg_last_error(), "no point"));
    CHECK(dg_plot_write_png(tpath("r.png"), NULL, &none, 1) == DG_ERR_ARG);
    CHECK(dg_plot_write_png(tpath("r.png"), NULL, NULL, 0) == DG_ERR_ARG);
    c = dg_plot_config_init();
    c.width = 10;
    CHECK(dg_plot_write_png(tpath("r.png"), &c, &s, 1) == DG_ERR_ARG);
    s.n = -1;
    CHECK(dg_plot_write_png(tpath("r.png"), NULL, &s, 1) == DG_ERR_ARG);
    s.n = 2;
    CHECK(dg_plot_write_png(tpath("no/such/dir.png"), NULL, &s, 1) == DG_ERR_IO &&
          strstr(dg_last_error(), "dir.png"));
}

int main(void)
{
    if (!scratch_create("plot")) return 1;
    RUN(line_plot);
    RUN(log_axis_and_gaps);
    RUN(refusals);
    scratch_remove();
    return th_done();
}
