/* The named networks of dg_netsim_profile, field by field against the
   numbers distgan.h's dg_netsim section documents (written out here, not
   taken from the library): every link of each profile, edge's faster
   downlink, the compute speeds and the slow workers, the fields a profile
   leaves at dg_netsim_config_init's values, and an unknown name refused
   with *out untouched. */
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

typedef struct expect {
    const char *name;
    double bw, latency, jitter, loss, down_bw, worker_gflops, slow_fraction, slow_factor;
} expect;

static const expect profiles[] = {
    /* name         bw     latency jitter  loss  down bw worker slow  x    */
    {"ideal",       0.0,   0.0,    0.0,    0.0,  0.0,    100.0, 0.0,  1.0},
    {"datacenter",  10e9,  1e-4,   0.0,    0.0,  10e9,   100.0, 0.0,  1.0},
    {"wan",         100e6, 0.02,   0.001,  0.0,  100e6,  100.0, 0.0,  1.0},
    {"edge",        5e6,   0.05,   0.01,   0.01, 20e6,   20.0,  0.1,  4.0},
};

static int link_is(const dg_netsim_link *l, double bw, const expect *e)
{
    return l->bw == bw && l->latency == e->latency && l->jitter == e->jitter &&
           l->loss == e->loss && l->disconnect == 0.0;
}

TEST(every_profile_field_by_field)
{
    size_t i;
    for (i = 0; i < sizeof profiles / sizeof *profiles; i++) {
        const expect *e = &profiles[i];
        dg_netsim_config c;
        memset(&c, 0xff, sizeof c);
        CHECK_OK(dg_netsim_profile(e->name, &c));
        if (!link_is(&c.up, e->bw, e) || !link_is(&c.peer, e->bw, e) ||
            !link_is(&c.down, e->down_bw, e))
            printf("  %s: a link differs\n", e->name);
        CHECK(link_is(&c.up, e->bw, e) && link_is(&c.peer, e->bw, e));
        CHECK(link_is(&c.down, e->down_bw, e));
        CHECK(c.worker_gflops == e->worker_gflops && c.slow_fraction == e->slow_fraction &&
              c.slow_factor == e->slow_factor);
        /* what no profile sets: dg_netsim_config_init's documented values */
        CHECK(c.server_gflops == 100.0 && c.rto_min == 0.2 && c.seed == 1);
        CHECK(c.n_link_rules == 0 && c.n_worker_rules == 0);
    }
}

TEST(unknown_profile_refused)
{
    dg_netsim_config c = dg_netsim_config_init();
    c.seed = 42;
    CHECK(dg_netsim_profile("moon", &c) == DG_ERR_ARG);
    CHECK(strstr(dg_last_error(), "'moon'") != NULL);
    CHECK(c.seed == 42);
    CHECK(dg_netsim_profile("Edge", &c) == DG_ERR_ARG); /* names are exact */
    CHECK(dg_netsim_profile(NULL, &c) == DG_ERR_ARG);
    CHECK(dg_netsim_profile("wan", NULL) == DG_ERR_ARG);
}

int main(void)
{
    RUN(every_profile_field_by_field);
    RUN(unknown_profile_refused);
    return th_done();
}
