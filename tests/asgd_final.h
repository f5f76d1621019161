/* tests/asgd_final.h: what an ASGD parameter server ends with, kept by its
 * drive's progress callback for the checks after the run:
 *
 *   asgd_final f = {0};  d.progress = asgd_final_keep;  d.user = &f;
 *   dg_asgd_server_drive(...);  ... f.w[0 .. f.n), f.st ...  free(f.w);
 *
 * Include after adacomp.h and distgan.h. */
#ifndef DG_TEST_ASGD_FINAL_H
#define DG_TEST_ASGD_FINAL_H
#include <stdlib.h>
#include <string.h>

typedef struct asgd_final {
    dg_asgd_stats st;
    float *w; /* a copy of the final parameters (NULL: the copy failed) */
    size_t n;
} asgd_final;

static void asgd_final_keep(void *user, const dg_asgd_drive_status *s)
{
    asgd_final *f = (asgd_final *)user;
    if (!s->last) return;
    f->st = *dg_asgd_server_stats(s->server);
    f->n = (size_t)ac_layout_total(&s->server->layout);
    f->w = (float *)malloc(f->n * sizeof(float));
    if (f->w) memcpy(f->w, dg_asgd_server_params(s->server), f->n * sizeof(float));
}
#endif
