/* wip/asgd.h: the ASGD parameter-server and worker roles of distgan.h
   (dg_roles), compressed with adacomp.h, written apart while the transport
   and roles sections are in progress.  Part 1 (declarations) and part 2
   (implementation) are meant to be pasted into distgan.h after the MD-GAN
   and FL-GAN roles; until then include this file after wip/mdgan.h, with
   adacomp.h included first (the whole file is empty without it):

      #define ADACOMP_IMPLEMENTATION
      #include "adacomp.h"
      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"
      #include "wip/gan.h"
      #include "wip/mdgan.h"
      #include "wip/asgd.h"

   Uses the dg_pool, dg_net, dg_optim and dg_data sections, the dg_transport
   section of wip/mdgan.h, and adacomp.h's compressor and server.
   docs/adacomp.md explains the compressor; docs/results-adacomp.md holds
   the experiment this file was written for. */

#ifdef ADACOMP_H

/* ======================================================================
   Part 1: public declarations
   ====================================================================== */
#ifndef DG_WIP_ASGD_DECL
#define DG_WIP_ASGD_DECL

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_asgd ==== */

/* Asynchronous SGD with a parameter server (papers.md section 2).  Three
   message types travel on a dg_transport (peer 0 is the PS, workers are
   1..W):

     worker -> PS   PULL   empty: "send me the model" (start, rejoin)
     PS -> worker   MODEL  one float32 part, the dense w; iteration = the
                           PS clock t at the copy (the worker's t_pull)
     worker -> PS   PUSH   one raw-bytes part: an adacomp.h packet (every
                           mode, dense included, so a push's payload is
                           exactly the packet and the link's payload counter
                           is the sum of packet sizes); iteration = t_pull;
                           stat[0] = the worker's minibatch loss.  An empty
                           PUSH (no part) says "my gradient was not finite".

   The worker, on MODEL: keeps the message (no copy) until it computes.
   dg_asgd_worker_compute then loads w into a net, takes the next batch of
   its shard, computes the mean cross-entropy gradient, selects with its
   ac_compressor (Hardy top-k per tensor, IBM bins with residue, dense, ...),
   encodes the packet straight into a PUSH message of its exact size and
   sends it.  The PS, on PUSH: ac_server_apply_packet (decode, sigma or tau
   modulation, history, t <- t + 1: one step), then replies MODEL (the pull
   that follows every push); a push too old for the history (with
   reject_too_old) or malformed is counted as rejected and answered with
   the model all the same, so the worker carries on from fresh weights.

   Modes are settings of the same path: dense ASGD = dense packets and a
   constant alpha; staleness-aware ASGD (Zhang et al. 2016) = dense packets
   and alpha / max(1, tau); top-k = Hardy's per-tensor selection without
   modulation; AdaComp = Hardy's selection and alpha / max(1, sigma_i);
   IBM = Chen et al.'s bins with residue (constant alpha unless told).

   Staleness must be realistic and reproducible, so the in-process driver
   does not let threads race: a schedule (dg_asgd_sched) plays the workers
   on a virtual clock.  Worker w's k-th gradient takes
   mu_w * exp(jitter * N(0,1)) time units (mu_w = 1, or slow_factor for a
   seeded slow_fraction of the workers); with probability drop_prob the
   worker drops out during that computation (its gradient is lost) and
   comes back after an exponential down time (mean down_time; < 0: never)
   with a PULL.  Events are taken in (virtual time, worker id) order; every
   draw comes from (seed, stream, worker, k), so the order of pushes, and
   with it every staleness tau = t - t_pull, is a pure function of the
   configuration.  W equal workers without jitter give exactly tau = W - 1.
   The driver (dg_asgd_run) follows the schedule: when the next push's
   gradient is not computed yet, every worker that holds a model computes
   its gradient as a task of one dg_pool (one net per pool thread, kernels
   inline), each sends its PUSH, and the PS applies them one by one in
   schedule order.  A worker's gradient depends only on the w it pulled,
   its batch stream and its compressor, so 1 and 2 threads give the same
   bits, and the in-process run equals a plain loop over the schedule.
   Without the driver, dg_asgd_server_poll / dg_asgd_worker_poll run the
   same roles in arrival order on any transport (threads, TCP). */

#define DG_MSG_ASGD_PULL 96
#define DG_MSG_ASGD_MODEL 97
#define DG_MSG_ASGD_PUSH 98

#define DG_ASGD_STREAM_INIT 0x6173696e6974ull   /* index 0: the initial w */
#define DG_ASGD_STREAM_DATA 0x617364617461ull   /* index: worker id */
#define DG_ASGD_STREAM_SPEED 0x6173737064ull    /* index: worker << 32 | k */
#define DG_ASGD_STREAM_DROP 0x617364726f70ull   /* index: worker << 32 | k */
#define DG_ASGD_STREAM_DOWN 0x6173646f776eull   /* index: worker << 32 | k */
#define DG_ASGD_STREAM_SLOW 0x6173736c6f77ull   /* index 0: which workers are slow */

typedef enum dg_asgd_mode {
    DG_ASGD_MODE_DENSE = 1,     /* plain ASGD: dense pushes, constant alpha */
    DG_ASGD_MODE_STALENESS = 2, /* dense pushes, alpha / max(1, tau) */
    DG_ASGD_MODE_TOPK = 3,      /* per-tensor top-k (Hardy's selection), constant alpha */
    DG_ASGD_MODE_HARDY = 4,     /* AdaComp: per-tensor top-k, alpha / max(1, sigma_i) */
    DG_ASGD_MODE_IBM = 5,       /* Chen et al. 2018: bins with residue, sign x scale */
    DG_ASGD_MODE_GTOPK = 6      /* top-k over the whole vector, constant alpha */
} dg_asgd_mode;

/* The PS's learning-rate modulation; AUTO takes the mode's. */
typedef enum dg_asgd_modulation {
    DG_ASGD_MOD_AUTO = 0,
    DG_ASGD_MOD_SIGMA = 1,
    DG_ASGD_MOD_TAU = 2,
    DG_ASGD_MOD_CONSTANT = 3
} dg_asgd_modulation;

typedef enum dg_asgd_arch {
    DG_ASGD_ARCH_CNN = 0, /* the authors' MNIST CNN: conv3x3-32 (pad 1) ReLU maxpool2,
                             conv3x3-64 (pad 1) ReLU maxpool2, FC -> 128 ReLU, FC -> classes
                             (421,642 parameters on 28 x 28 x 1, 10 classes) */
    DG_ASGD_ARCH_MLP = 1  /* flatten, FC -> hidden ReLU, FC -> classes (small, for tests) */
} dg_asgd_arch;

/* Start from dg_asgd_config_init() and change what you need. */
typedef struct dg_asgd_config {
    int n_workers;            /* W: worker ids 1..W (required) */
    dg_asgd_mode mode;        /* DG_ASGD_MODE_HARDY */
    double rate;              /* c = 0.01 (hardy, topk, gtopk) */
    int f16;                  /* 0: float32 values; 1: IEEE half (not IBM) */
    int bin_size;             /* IBM L_T = 64 */
    int residue;              /* 0; 1: error feedback for hardy/topk (extension) */
    dg_asgd_modulation modulation; /* AUTO */
    float alpha;              /* 0.1 */
    int history;              /* H = 64 (1..64) */
    int reject_too_old;       /* 0 (default): a push with tau > H is applied with
                                 sigma counted over the last H updates (needed for
                                 W = 100, where tau ~ 99); 1: rejected, pull again */
    int batch;                /* 10 */
    dg_asgd_arch arch;        /* DG_ASGD_ARCH_CNN */
    int hidden;               /* MLP hidden units: 128 */
    uint64_t seed;            /* 1 */
    /* the schedule */
    double slow_fraction;     /* 0: share of slow workers */
    double slow_factor;       /* 4: a slow worker's mean compute time */
    double jitter;            /* 0.2: sigma of the log of a compute time */
    double drop_prob;         /* 0: chance that a computation ends in a drop-out */
    double down_time;         /* 10: mean down time (compute units); < 0: never back */
} dg_asgd_config;

DGDEF dg_asgd_config dg_asgd_config_init(void);
DGDEF const char *dg_asgd_mode_name(dg_asgd_mode mode);
/* "dense", "staleness", "topk", "hardy", "ibm", "gtopk"; 0 when unknown. */
DGDEF dg_asgd_mode dg_asgd_mode_parse(const char *name);
/* The 64-bit seed of stream (seed, stream, index), as the roles derive them. */
DGDEF uint64_t dg_asgd_seed(uint64_t seed, uint64_t stream, uint64_t index);
/* The compressor and server settings a configuration stands for. */
DGDEF void dg_asgd_ac_configs(const dg_asgd_config *cfg, ac_compressor_config *cc,
                              ac_server_config *sc);

/* The model of cfg->arch for images c x h x w and `classes` outputs, planned
   for `batch` on pool (not initialised). */
DGDEF dg_result dg_asgd_net_create(dg_net **out, const dg_asgd_config *cfg, int c, int h, int w,
                                   int classes, dg_pool *pool, int batch);
/* The adacomp layout of a net: one tensor per weight and per bias (gamma,
   beta), in parameter order.  sizes needs room for 2 * layers entries. */
DGDEF dg_result dg_asgd_layout(const dg_net *net, uint32_t *sizes, uint32_t cap, ac_layout *out);
/* Test accuracy of net with parameters params (copied in) on the first n
   images of ds (n = 0: all), in chunks of the net's planned batch. */
DGDEF dg_result dg_asgd_accuracy(dg_net *net, const float *params, const dg_dataset *ds, size_t n,
                                 double *accuracy);
/* Worker w (0-based) owns images [w*n/W, (w+1)*n/W) of the dataset order:
   the authors' contiguous split. */
DGDEF dg_result dg_asgd_partition_contiguous(dg_partition *p, size_t n, int n_workers);

/* ---- the schedule: a virtual clock that orders the pushes ---- */

typedef enum dg_asgd_event_type {
    DG_ASGD_EV_JOIN = 1,   /* the worker pulls (start, or back from a drop-out) */
    DG_ASGD_EV_PUSH = 2,   /* its push reaches the PS; it pulls again at once */
    DG_ASGD_EV_DROP = 3    /* it drops out: the gradient it was computing is lost */
} dg_asgd_event_type;

typedef struct dg_asgd_event {
    int type;              /* dg_asgd_event_type */
    int worker;            /* 1..W */
    double time;           /* virtual time, in mean fast compute times */
} dg_asgd_event;

typedef struct dg_asgd_sched dg_asgd_sched;

DGDEF dg_result dg_asgd_sched_create(dg_asgd_sched **out, const dg_asgd_config *cfg);
DGDEF void dg_asgd_sched_free(dg_asgd_sched *s);
/* The next event, in (time, worker) order; 0 when no worker will ever act
   again (all dropped out for good). */
DGDEF int dg_asgd_sched_next(dg_asgd_sched *s, dg_asgd_event *ev);
/* 1 when the worker's next event is a drop-out (its gradient need not be
   computed). */
DGDEF int dg_asgd_sched_doomed(const dg_asgd_sched *s, int worker);
/* mu_w: 1 for a fast worker, slow_factor for a slow one. */
DGDEF double dg_asgd_sched_speed(const dg_asgd_sched *s, int worker);

/* ---- the roles ---- */

typedef struct dg_asgd_stats {
    uint64_t pulls;           /* MODEL messages sent */
    uint64_t pushes;          /* PUSH messages handled */
    uint64_t applied;         /* = the PS clock t */
    uint64_t stale;           /* rejected: tau > H (with reject_too_old) */
    uint64_t invalid;         /* rejected: malformed packet or non-finite gradient */
    uint64_t bytes_pushed;    /* packet bytes received by the PS (all pushes) */
    uint64_t dense_bytes;     /* 4 * n per push: the same pushes sent dense */
    uint64_t entries;         /* gradient entries applied */
    double tau_sum;           /* sum of tau over applied pushes */
    uint64_t tau_max;
    double loss;              /* mean minibatch loss of the last 100 pushes (EMA) */
} dg_asgd_stats;

/* Called by the PS after each push: the worker, its t_pull, the clock
   before the push, the packet and the apply's result (an ac_result). */
typedef void (*dg_asgd_trace_fn)(void *user, int worker, uint64_t t_pull, uint64_t clock,
                                 const void *packet, size_t len, int result);

typedef struct dg_asgd_server dg_asgd_server;
typedef struct dg_asgd_worker dg_asgd_worker;

/* The PS over a copy of params (n = layout total floats). */
DGDEF dg_result dg_asgd_server_create(dg_asgd_server **out, const dg_asgd_config *cfg,
                                      dg_transport *t, const ac_layout *layout,
                                      const float *params);
DGDEF void dg_asgd_server_free(dg_asgd_server *s);
/* Reacts to one message (takes ownership): PULL and PUSH are answered with
   MODEL.  DG_ERR_FORMAT for an unknown message (freed, nothing else). */
DGDEF dg_result dg_asgd_server_handle(dg_asgd_server *s, dg_msg *m);
/* Handles what arrives within timeout_ms (0: what is queued), in arrival order. */
DGDEF dg_result dg_asgd_server_poll(dg_asgd_server *s, int timeout_ms);
/* STOP to workers 1..W. */
DGDEF dg_result dg_asgd_server_stop(dg_asgd_server *s);
DGDEF void dg_asgd_server_set_trace(dg_asgd_server *s, dg_asgd_trace_fn fn, void *user);
DGDEF const dg_asgd_stats *dg_asgd_server_stats(const dg_asgd_server *s);
DGDEF uint64_t dg_asgd_server_clock(const dg_asgd_server *s);
DGDEF float *dg_asgd_server_params(dg_asgd_server *s);
DGDEF ac_server *dg_asgd_server_ac(dg_asgd_server *s);

/* Worker id (1..W) over its shard idx[0..count) of ds (kept by pointer);
   its compressor follows cfg. */
DGDEF dg_result dg_asgd_worker_create(dg_asgd_worker **out, const dg_asgd_config *cfg, int id,
                                      dg_transport *t, const ac_layout *layout,
                                      const dg_dataset *ds, const uint32_t *idx, size_t count);
DGDEF void dg_asgd_worker_free(dg_asgd_worker *w);
/* Sends PULL (start, or rejoin after a drop-out). */
DGDEF dg_result dg_asgd_worker_start(dg_asgd_worker *w);
/* MODEL: keep it; STOP: stop.  Takes ownership. */
DGDEF dg_result dg_asgd_worker_handle(dg_asgd_worker *w, dg_msg *m);
/* With a model in hand: gradient on the next batch with net (a net of the
   same layout; its parameters are overwritten), compress, send PUSH.
   DG_ERR_STATE without a model. */
DGDEF dg_result dg_asgd_worker_compute(dg_asgd_worker *w, dg_net *net);
/* Handles what arrives within timeout_ms and computes whenever it holds a
   model (free-running mode). */
DGDEF dg_result dg_asgd_worker_poll(dg_asgd_worker *w, dg_net *net, int timeout_ms);
/* Drop-out: the model in hand (if any) is forgotten; start() brings it back. */
DGDEF void dg_asgd_worker_crash(dg_asgd_worker *w);
DGDEF int dg_asgd_worker_has_model(const dg_asgd_worker *w);
DGDEF int dg_asgd_worker_stopped(const dg_asgd_worker *w);
DGDEF ac_stats dg_asgd_worker_compressor_stats(const dg_asgd_worker *w);

/* ---- the in-process driver ---- */

typedef struct dg_asgd_run dg_asgd_run;

/* W workers on an in-process transport, the PS initialised from
   (seed, DG_ASGD_STREAM_INIT, 0), worker w on part's list w - 1 (part has
   >= W lists), one net per thread of pool for the workers' gradients. */
DGDEF dg_result dg_asgd_run_create(dg_asgd_run **out, const dg_asgd_config *cfg, dg_pool *pool,
                                   const dg_dataset *train, const dg_partition *part);
DGDEF void dg_asgd_run_free(dg_asgd_run *r);
/* Plays the schedule until the PS clock has advanced by n updates.
   DG_ERR_CLOSED when every worker has dropped out for good first. */
DGDEF dg_result dg_asgd_run_updates(dg_asgd_run *r, uint64_t n);
/* Test accuracy of the PS's w on the first n images of ds (0: all). */
DGDEF dg_result dg_asgd_run_accuracy(dg_asgd_run *r, const dg_dataset *ds, size_t n,
                                     double *accuracy);
DGDEF dg_asgd_server *dg_asgd_run_server(dg_asgd_run *r);
DGDEF dg_asgd_worker *dg_asgd_run_worker(dg_asgd_run *r, int id);
DGDEF dg_transport *dg_asgd_run_transport(dg_asgd_run *r);
DGDEF const ac_layout *dg_asgd_run_layout(const dg_asgd_run *r);
DGDEF double dg_asgd_run_time(const dg_asgd_run *r);       /* virtual time now */
DGDEF uint64_t dg_asgd_run_drops(const dg_asgd_run *r);    /* drop-outs so far */
DGDEF double dg_asgd_run_compute_seconds(const dg_asgd_run *r); /* wall time in gradients */

#ifdef __cplusplus
}
#endif
#endif /* DG_WIP_ASGD_DECL */

/* ======================================================================
   Part 2: implementation
   ====================================================================== */
#if defined(DISTGAN_IMPLEMENTATION) && !defined(DG_WIP_ASGD_IMPL)
#define DG_WIP_ASGD_IMPL

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_asgd ==== */

DGDEF dg_asgd_config dg_asgd_config_init(void)
{
    dg_asgd_config c;
    memset(&c, 0, sizeof c);
    c.mode = DG_ASGD_MODE_HARDY;
    c.rate = 0.01;
    c.bin_size = 64;
    c.alpha = 0.1f;
    c.history = AC_HISTORY_MAX;
    c.batch = 10;
    c.arch = DG_ASGD_ARCH_CNN;
    c.hidden = 128;
    c.seed = 1;
    c.slow_factor = 4.0;
    c.jitter = 0.2;
    c.down_time = 10.0;
    return c;
}

static const char *const dg__asgd_mode_names[] = {"", "dense", "staleness", "topk",
                                                   "hardy", "ibm", "gtopk"};

DGDEF const char *dg_asgd_mode_name(dg_asgd_mode mode)
{
    return mode >= DG_ASGD_MODE_DENSE && mode <= DG_ASGD_MODE_GTOPK ? dg__asgd_mode_names[mode]
                                                                    : "?";
}

DGDEF dg_asgd_mode dg_asgd_mode_parse(const char *name)
{
    int i;
    for (i = DG_ASGD_MODE_DENSE; name && i <= DG_ASGD_MODE_GTOPK; i++)
        if (!strcmp(name, dg__asgd_mode_names[i])) return (dg_asgd_mode)i;
    return (dg_asgd_mode)0;
}

DGDEF uint64_t dg_asgd_seed(uint64_t seed, uint64_t stream, uint64_t index)
{
    dg_rng r = dg_rng_make(seed, stream, index);
    return dg_rng_u64(&r);
}

DGDEF void dg_asgd_ac_configs(const dg_asgd_config *cfg, ac_compressor_config *cc,
                              ac_server_config *sc)
{
    static const ac_staleness mods[] = {AC_STALENESS_SIGMA, AC_STALENESS_SIGMA, AC_STALENESS_TAU,
                                        AC_STALENESS_CONSTANT};
    ac_staleness auto_mod = AC_STALENESS_CONSTANT;
    memset(cc, 0, sizeof *cc);
    memset(sc, 0, sizeof *sc);
    switch (cfg->mode) {
    case DG_ASGD_MODE_STALENESS: cc->mode = AC_MODE_DENSE; auto_mod = AC_STALENESS_TAU; break;
    case DG_ASGD_MODE_TOPK: cc->mode = AC_MODE_HARDY; break;
    case DG_ASGD_MODE_HARDY: cc->mode = AC_MODE_HARDY; auto_mod = AC_STALENESS_SIGMA; break;
    case DG_ASGD_MODE_IBM: cc->mode = AC_MODE_IBM; break;
    case DG_ASGD_MODE_GTOPK: cc->mode = AC_MODE_TOPK; break;
    default: cc->mode = AC_MODE_DENSE; break;
    }
    cc->format = cfg->f16 && cc->mode != AC_MODE_IBM && cc->mode != AC_MODE_DENSE
                     ? AC_FORMAT_F16 : AC_FORMAT_F32;
    cc->rate = cfg->rate;
    cc->bin_size = cfg->bin_size > 0 ? (uint32_t)cfg->bin_size : 0;
    cc->residue = cfg->residue && (cc->mode == AC_MODE_HARDY || cc->mode == AC_MODE_TOPK);
    sc->alpha = cfg->alpha;
    sc->staleness = (unsigned)cfg->modulation <= DG_ASGD_MOD_CONSTANT && cfg->modulation
                        ? mods[cfg->modulation] : auto_mod;
    sc->history = cfg->history > 0 ? (uint32_t)cfg->history : 0;
    sc->too_old = cfg->reject_too_old ? AC_TOO_OLD_REJECT : AC_TOO_OLD_WINDOW;
}

static dg_result dg__asgd_check(const dg_asgd_config *cfg)
{
    if (!cfg) return dg__fail(DG_ERR_ARG, "asgd: NULL config");
    if (cfg->n_workers < 1 || cfg->n_workers > 65535)
        return dg__fail(DG_ERR_ARG, "asgd: %d workers", cfg->n_workers);
    if (cfg->mode < DG_ASGD_MODE_DENSE || cfg->mode > DG_ASGD_MODE_GTOPK)
        return dg__fail(DG_ERR_ARG, "asgd: mode %d", (int)cfg->mode);
    if (!(cfg->rate > 0.0 && cfg->rate <= 1.0))
        return dg__fail(DG_ERR_ARG, "asgd: rate c = %g outside (0, 1]", cfg->rate);
    if (cfg->batch < 1 || cfg->history < 1 || cfg->history > AC_HISTORY_MAX)
        return dg__fail(DG_ERR_ARG, "asgd: batch %d, history %d", cfg->batch, cfg->history);
    if (!(cfg->alpha > 0.0f) || !(cfg->slow_fraction >= 0.0 && cfg->slow_fraction <= 1.0) ||
        !(cfg->slow_factor > 0.0) || !(cfg->jitter >= 0.0) ||
        !(cfg->drop_prob >= 0.0 && cfg->drop_prob < 1.0))
        return dg__fail(DG_ERR_ARG, "asgd: alpha, slow_fraction, slow_factor, jitter or "
                                    "drop_prob out of range");
    return DG_OK;
}

DGDEF dg_result dg_asgd_net_create(dg_net **out, const dg_asgd_config *cfg, int c, int h, int w,
                                   int classes, dg_pool *pool, int batch)
{
    dg_net *net = NULL;
    dg_result r;
    if (!out || !cfg) return dg__fail(DG_ERR_ARG, "dg_asgd_net_create: NULL argument");
    *out = NULL;
    if ((r = dg_net_create(&net, c, h, w)) != DG_OK) return r;
    if (cfg->arch == DG_ASGD_ARCH_MLP) {
        if (!r) r = dg_net_flatten(net);
        if (!r) r = dg_net_linear(net, cfg->hidden > 0 ? cfg->hidden : 128);
        if (!r) r = dg_net_relu(net);
    } else {
        if (!r) r = dg_net_conv2d(net, 32, 3, 1, 1);
        if (!r) r = dg_net_relu(net);
        if (!r) r = dg_net_maxpool(net, 2, 2);
        if (!r) r = dg_net_conv2d(net, 64, 3, 1, 1);
        if (!r) r = dg_net_relu(net);
        if (!r) r = dg_net_maxpool(net, 2, 2);
        if (!r) r = dg_net_flatten(net);
        if (!r) r = dg_net_linear(net, 128);
        if (!r) r = dg_net_relu(net);
    }
    if (!r) r = dg_net_linear(net, classes);
    if (!r) r = dg_net_plan(net, pool, batch);
    if (r) {
        dg_net_free(net);
        return r;
    }
    *out = net;
    return DG_OK;
}

DGDEF dg_result dg_asgd_layout(const dg_net *net, uint32_t *sizes, uint32_t cap, ac_layout *out)
{
    uint32_t n = 0;
    int i;
    if (!net || !sizes || !out) return dg__fail(DG_ERR_ARG, "dg_asgd_layout: NULL argument");
    for (i = 0; i < net->n_layers; i++) {
        const dg__layer *l = &net->layers[i];
        size_t bias;
        if (l->n_p == 0) continue;
        switch (l->d.type) {
        case DG_LAYER_LINEAR: bias = (size_t)l->d.out; break;
        case DG_LAYER_CONV2D:
        case DG_LAYER_CONV_TRANSPOSE2D: bias = (size_t)l->oc; break;
        default: bias = l->n_p / 2; break;   /* batchnorm: gamma, beta */
        }
        if (bias >= l->n_p || l->n_p > 0xffffffffu) bias = 0;
        if (n + 2 > cap) return dg__fail(DG_ERR_TOO_LARGE, "dg_asgd_layout: %u sizes", cap);
        sizes[n++] = (uint32_t)(l->n_p - bias);
        if (bias) sizes[n++] = (uint32_t)bias;
    }
    if (n == 0) return dg__fail(DG_ERR_ARG, "dg_asgd_layout: the net has no parameter");
    out->count = n;
    out->sizes = sizes;
    return DG_OK;
}

DGDEF dg_result dg_asgd_accuracy(dg_net *net, const float *params, const dg_dataset *ds, size_t n,
                                 double *accuracy)
{
    size_t per, done = 0, right = 0;
    int chunk, c, h, w, classes, oh, ow;
    float *x;
    int32_t *y;
    uint32_t *idx;
    dg_result r = DG_OK;
    if (!net || !params || !ds || !accuracy) return dg__fail(DG_ERR_ARG, "dg_asgd_accuracy: NULL");
    dg_net_input_shape(net, &c, &h, &w);
    dg_net_output_shape(net, &classes, &oh, &ow);
    if (c != ds->c || h != ds->h || w != ds->w)
        return dg__fail(DG_ERR_SHAPE, "dg_asgd_accuracy: dataset shape differs from the net's");
    if (n == 0 || n > ds->n) n = ds->n;
    chunk = net->max_batch;
    per = (size_t)c * h * w;
    x = (float *)dg__calloc((size_t)chunk * per, sizeof(float));
    y = (int32_t *)dg__calloc((size_t)chunk, sizeof(int32_t));
    idx = (uint32_t *)dg__calloc((size_t)chunk, sizeof(uint32_t));
    if (!x || !y || !idx) {
        r = dg__fail(DG_ERR_NOMEM, "dg_asgd_accuracy: no memory");
        goto done;
    }
    memcpy(dg_net_params(net), params, dg_net_param_count(net) * sizeof(float));
    while (done < n && r == DG_OK) {
        int b = (int)(n - done < (size_t)chunk ? n - done : (size_t)chunk), i;
        const float *logits;
        double acc;
        for (i = 0; i < b; i++) idx[i] = (uint32_t)(done + i);
        if ((r = dg_dataset_batch(ds, idx, (size_t)b, x, y)) != DG_OK) break;
        if ((r = dg_net_forward(net, x, b, 0, &logits)) != DG_OK) break;
        if ((r = dg_accuracy(logits, y, (size_t)b, classes, &acc)) != DG_OK) break;
        right += (size_t)floor(acc * b + 0.5);
        done += (size_t)b;
    }
    if (r == DG_OK) *accuracy = (double)right / (double)n;
done:
    dg__free(x);
    dg__free(y);
    dg__free(idx);
    return r;
}

DGDEF dg_result dg_asgd_partition_contiguous(dg_partition *p, size_t n, int n_workers)
{
    size_t i;
    int w;
    if (!p) return dg__fail(DG_ERR_ARG, "dg_asgd_partition_contiguous: NULL");
    memset(p, 0, sizeof *p);
    if (n_workers < 1 || n < (size_t)n_workers || n > 0xffffffffu)
        return dg__fail(DG_ERR_ARG, "dg_asgd_partition_contiguous: %zu images, %d workers", n,
                        n_workers);
    p->index = (uint32_t *)dg__calloc(n, sizeof(uint32_t));
    p->offset = (size_t *)dg__calloc((size_t)n_workers + 1, sizeof(size_t));
    if (!p->index || !p->offset) {
        dg_partition_free(p);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_partition_contiguous: no memory");
    }
    p->n_workers = n_workers;
    p->n = n;
    for (i = 0; i < n; i++) p->index[i] = (uint32_t)i;
    for (w = 0; w <= n_workers; w++) p->offset[w] = n * (size_t)w / (size_t)n_workers;
    return DG_OK;
}

/* ---- the schedule ---- */

/* Each worker has at most one pending event: its time and type.  W is at
   most a few hundred, so the next event is found by a scan (ties: lower
   id first), which keeps the order obviously deterministic. */
struct dg_asgd_sched {
    dg_asgd_config cfg;
    int W;
    double *mu;        /* [W + 1] mean compute time */
    double *when;      /* [W + 1] time of the pending event */
    int *type;         /* [W + 1] pending event type, 0: none (gone for good) */
    uint32_t *k;       /* [W + 1] computations started */
};

DGDEF void dg_asgd_sched_free(dg_asgd_sched *s)
{
    if (!s) return;
    dg__free(s->mu);
    dg__free(s->when);
    dg__free(s->type);
    dg__free(s->k);
    dg__free(s);
}

DGDEF dg_result dg_asgd_sched_create(dg_asgd_sched **out, const dg_asgd_config *cfg)
{
    dg_asgd_sched *s;
    dg_result r;
    uint32_t *perm;
    int w, n_slow;
    dg_rng rng;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_sched_create: out is NULL");
    *out = NULL;
    if ((r = dg__asgd_check(cfg)) != DG_OK) return r;
    s = (dg_asgd_sched *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_asgd_sched_create: no memory");
    s->cfg = *cfg;
    s->W = cfg->n_workers;
    s->mu = (double *)dg__calloc((size_t)s->W + 1, sizeof(double));
    s->when = (double *)dg__calloc((size_t)s->W + 1, sizeof(double));
    s->type = (int *)dg__calloc((size_t)s->W + 1, sizeof(int));
    s->k = (uint32_t *)dg__calloc((size_t)s->W + 1, sizeof(uint32_t));
    perm = (uint32_t *)dg__calloc((size_t)s->W, sizeof(uint32_t));
    if (!s->mu || !s->when || !s->type || !s->k || !perm) {
        dg__free(perm);
        dg_asgd_sched_free(s);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_sched_create: no memory for %d workers", s->W);
    }
    for (w = 0; w < s->W; w++) perm[w] = (uint32_t)w + 1;
    rng = dg_rng_make(cfg->seed, DG_ASGD_STREAM_SLOW, 0);
    dg_rng_shuffle(&rng, perm, (size_t)s->W);
    n_slow = (int)floor(cfg->slow_fraction * s->W + 0.5);
    for (w = 1; w <= s->W; w++) {
        s->mu[w] = 1.0;
        s->type[w] = DG_ASGD_EV_JOIN;   /* everyone pulls at time 0 */
    }
    for (w = 0; w < n_slow; w++) s->mu[perm[w]] = cfg->slow_factor;
    dg__free(perm);
    *out = s;
    return DG_OK;
}

static double dg__asgd_u01(dg_rng *r) { return ((double)(dg_rng_u64(r) >> 11) + 0.5) / 9007199254740992.0; }

/* The worker pulls at time now: draw its k-th computation's length and fate. */
static void dg__asgd_sched_pull(dg_asgd_sched *s, int w, double now)
{
    uint64_t index = (uint64_t)w << 32 | s->k[w];
    dg_rng speed = dg_rng_make(s->cfg.seed, DG_ASGD_STREAM_SPEED, index);
    dg_rng drop = dg_rng_make(s->cfg.seed, DG_ASGD_STREAM_DROP, index);
    double d = s->mu[w];
    if (s->cfg.jitter > 0.0) d *= exp(s->cfg.jitter * (double)dg_rng_normal(&speed));
    s->k[w]++;
    s->when[w] = now + d;
    s->type[w] = s->cfg.drop_prob > 0.0 && dg__asgd_u01(&drop) < s->cfg.drop_prob
                     ? DG_ASGD_EV_DROP : DG_ASGD_EV_PUSH;
}

DGDEF int dg_asgd_sched_next(dg_asgd_sched *s, dg_asgd_event *ev)
{
    int w, best = 0;
    if (!s || !ev) return 0;
    for (w = 1; w <= s->W; w++)
        if (s->type[w] && (!best || s->when[w] < s->when[best])) best = w;
    if (!best) return 0;
    ev->type = s->type[best];
    ev->worker = best;
    ev->time = s->when[best];
    if (ev->type == DG_ASGD_EV_DROP) {
        if (s->cfg.down_time < 0.0) {
            s->type[best] = 0;
        } else {
            dg_rng down = dg_rng_make(s->cfg.seed, DG_ASGD_STREAM_DOWN,
                                      (uint64_t)best << 32 | s->k[best]);
            s->when[best] = ev->time - s->cfg.down_time * log(dg__asgd_u01(&down));
            s->type[best] = DG_ASGD_EV_JOIN;
        }
    } else {
        dg__asgd_sched_pull(s, best, ev->time);
    }
    return 1;
}

DGDEF int dg_asgd_sched_doomed(const dg_asgd_sched *s, int worker)
{
    return s && worker >= 1 && worker <= s->W && s->type[worker] == DG_ASGD_EV_DROP;
}

DGDEF double dg_asgd_sched_speed(const dg_asgd_sched *s, int worker)
{
    return s && worker >= 1 && worker <= s->W ? s->mu[worker] : 0.0;
}

/* ---- the parameter server ---- */

struct dg_asgd_server {
    dg_asgd_config cfg;
    dg_transport *t;
    ac_layout layout;
    uint32_t *sizes;
    size_t n;
    float *params;
    ac_server *ac;
    dg_asgd_stats stats;
    dg_asgd_trace_fn trace;
    void *trace_user;
};

DGDEF void dg_asgd_server_free(dg_asgd_server *s)
{
    if (!s) return;
    ac_server_free(s->ac);
    dg__free(s->params);
    dg__free(s->sizes);
    dg__free(s);
}

DGDEF dg_result dg_asgd_server_create(dg_asgd_server **out, const dg_asgd_config *cfg,
                                      dg_transport *t, const ac_layout *layout,
                                      const float *params)
{
    dg_asgd_server *s;
    ac_compressor_config cc;
    ac_server_config sc;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_server_create: out is NULL");
    *out = NULL;
    if ((r = dg__asgd_check(cfg)) != DG_OK) return r;
    if (!t || !layout || !params || ac_layout_check(layout) != AC_OK)
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_create: NULL argument or bad layout");
    if (t->n_peers < cfg->n_workers + 1)
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_create: %d peers for %d workers", t->n_peers,
                        cfg->n_workers);
    s = (dg_asgd_server *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_asgd_server_create: no memory");
    s->cfg = *cfg;
    s->t = t;
    s->n = (size_t)ac_layout_total(layout);
    s->sizes = (uint32_t *)dg__calloc(layout->count, sizeof(uint32_t));
    s->params = (float *)dg__calloc(s->n, sizeof(float));
    if (!s->sizes || !s->params) {
        dg_asgd_server_free(s);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_server_create: no memory for %zu parameters", s->n);
    }
    memcpy(s->sizes, layout->sizes, layout->count * sizeof(uint32_t));
    s->layout.count = layout->count;
    s->layout.sizes = s->sizes;
    memcpy(s->params, params, s->n * sizeof(float));
    dg_asgd_ac_configs(cfg, &cc, &sc);
    if (ac_server_init(&s->ac, &s->layout, s->params, &sc) != AC_OK) {
        dg_asgd_server_free(s);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_server_create: %s", ac_last_error());
    }
    *out = s;
    return DG_OK;
}

/* The pull that answers every PULL and PUSH: w and the clock. */
static dg_result dg__asgd_send_model(dg_asgd_server *s, int to)
{
    dg_part_kind kind = DG_PART_F32;
    size_t count = s->n;
    uint64_t t_pull = 0;
    dg_msg *m;
    dg_result r;
    if (to < 1 || to >= s->t->n_peers)
        return dg__fail(DG_ERR_FORMAT, "asgd server: message from peer %d", to);
    if ((r = dg_msg_create(s->t, DG_MSG_ASGD_MODEL, DG_PEER_SERVER, to, 0, 1, &kind, &count, &m)))
        return r;
    ac_server_pull(s->ac, (float *)m->part[0].data, &t_pull);
    m->iteration = (int64_t)t_pull;
    s->stats.pulls++;
    return dg_transport_send(s->t, m);
}

DGDEF dg_result dg_asgd_server_handle(dg_asgd_server *s, dg_msg *m)
{
    int from;
    if (!s || !m) {
        if (s && m) dg_msg_free(s->t, m);
        return dg__fail(DG_ERR_ARG, "dg_asgd_server_handle: NULL argument");
    }
    from = m->from;
    if (m->type == DG_MSG_ASGD_PUSH) {
        uint64_t clock = ac_server_clock(s->ac), t_pull = (uint64_t)m->iteration;
        int res = AC_ERR_VALUE;
        s->stats.pushes++;
        if (m->n_parts == 1 && m->part[0].kind == DG_PART_BYTES) {
            size_t len = m->part[0].count;
            res = ac_server_apply_packet(s->ac, m->part[0].data, len);
            s->stats.bytes_pushed += len;
            s->stats.dense_bytes += 4 * (uint64_t)s->n;
            if (res == AC_OK) {
                uint64_t tau = clock - t_pull;
                s->stats.applied++;
                s->stats.entries = ac_server_stats(s->ac).entries;
                s->stats.tau_sum += (double)tau;
                if (tau > s->stats.tau_max) s->stats.tau_max = tau;
                s->stats.loss = s->stats.applied == 1 ? m->stat[0]
                                                      : 0.99 * s->stats.loss + 0.01 * m->stat[0];
            } else if (res == AC_ERR_STALE) {
                s->stats.stale++;
            } else {
                s->stats.invalid++;
            }
            if (s->trace) s->trace(s->trace_user, from, t_pull, clock, m->part[0].data, len, res);
        } else {
            s->stats.invalid++;
            if (s->trace) s->trace(s->trace_user, from, t_pull, clock, NULL, 0, res);
        }
        dg_msg_free(s->t, m);
        return dg__asgd_send_model(s, from);
    }
    if (m->type == DG_MSG_ASGD_PULL) {
        dg_msg_free(s->t, m);
        return dg__asgd_send_model(s, from);
    }
    {
        int type = m->type;
        dg_msg_free(s->t, m);
        return dg__fail(DG_ERR_FORMAT, "asgd server: unexpected message type %d from %d", type,
                        from);
    }
}

DGDEF dg_result dg_asgd_server_poll(dg_asgd_server *s, int timeout_ms)
{
    dg_result r, got = DG_ERR_TIMEOUT;
    dg_msg *m;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_asgd_server_poll: NULL");
    while ((r = dg_transport_recv(s->t, DG_PEER_SERVER, got == DG_OK ? 0 : timeout_ms, &m)) ==
           DG_OK) {
        got = DG_OK;
        if ((r = dg_asgd_server_handle(s, m)) != DG_OK) return r;
    }
    return r == DG_ERR_TIMEOUT ? got : r;
}

DGDEF dg_result dg_asgd_server_stop(dg_asgd_server *s)
{
    int w;
    dg_result r = DG_OK, e;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_asgd_server_stop: NULL");
    for (w = 1; w <= s->cfg.n_workers; w++) {
        dg_msg *m;
        if ((e = dg_msg_create(s->t, DG_MSG_STOP, DG_PEER_SERVER, w,
                               (int64_t)ac_server_clock(s->ac), 0, NULL, NULL, &m)) == DG_OK)
            e = dg_transport_send(s->t, m);
        if (e != DG_OK && r == DG_OK) r = e;
    }
    return r;
}

DGDEF void dg_asgd_server_set_trace(dg_asgd_server *s, dg_asgd_trace_fn fn, void *user)
{
    if (!s) return;
    s->trace = fn;
    s->trace_user = user;
}
DGDEF const dg_asgd_stats *dg_asgd_server_stats(const dg_asgd_server *s) { return s ? &s->stats : NULL; }
DGDEF uint64_t dg_asgd_server_clock(const dg_asgd_server *s) { return s ? ac_server_clock(s->ac) : 0; }
DGDEF float *dg_asgd_server_params(dg_asgd_server *s) { return s ? s->params : NULL; }
DGDEF ac_server *dg_asgd_server_ac(dg_asgd_server *s) { return s ? s->ac : NULL; }

/* ---- the worker ---- */

enum { DG__ASGD_IDLE = 0, DG__ASGD_WAITING, DG__ASGD_HOLDING, DG__ASGD_STOPPED };

struct dg_asgd_worker {
    dg_asgd_config cfg;
    int id, state, classes;
    dg_transport *t;
    size_t n;
    ac_compressor *comp;
    dg_batcher batcher;
    float *x, *dz;
    int32_t *y;
    dg_msg *model;        /* the MODEL in hand */
    uint64_t t_pull;
};

DGDEF void dg_asgd_worker_free(dg_asgd_worker *w)
{
    if (!w) return;
    if (w->model) dg_msg_free(w->t, w->model);
    ac_compressor_free(w->comp);
    dg_batcher_free(&w->batcher);
    dg__free(w->x);
    dg__free(w->dz);
    dg__free(w->y);
    dg__free(w);
}

DGDEF dg_result dg_asgd_worker_create(dg_asgd_worker **out, const dg_asgd_config *cfg, int id,
                                      dg_transport *t, const ac_layout *layout,
                                      const dg_dataset *ds, const uint32_t *idx, size_t count)
{
    dg_asgd_worker *w;
    ac_compressor_config cc;
    ac_server_config sc;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_create: out is NULL");
    *out = NULL;
    if ((r = dg__asgd_check(cfg)) != DG_OK) return r;
    if (!t || !layout || !ds || id < 1 || id >= t->n_peers || ds->n_classes < 2)
        return dg__fail(DG_ERR_ARG, "dg_asgd_worker_create: bad arguments (worker %d)", id);
    w = (dg_asgd_worker *)dg__calloc(1, sizeof *w);
    if (!w) return dg__fail(DG_ERR_NOMEM, "dg_asgd_worker_create: no memory");
    w->cfg = *cfg;
    w->id = id;
    w->t = t;
    w->classes = ds->n_classes;
    w->n = (size_t)ac_layout_total(layout);
    dg_asgd_ac_configs(cfg, &cc, &sc);
    if (ac_compressor_init(&w->comp, layout, &cc) != AC_OK) {
        dg_asgd_worker_free(w);
        return dg__fail(DG_ERR_ARG, "dg_asgd_worker_create: %s", ac_last_error());
    }
    r = dg_batcher_init(&w->batcher, ds, idx, count, cfg->batch,
                        dg_asgd_seed(cfg->seed, DG_ASGD_STREAM_DATA, (uint64_t)id));
    if (r != DG_OK) {
        dg_asgd_worker_free(w);
        return r;
    }
    w->x = (float *)dg__calloc((size_t)cfg->batch * ds->c * ds->h * ds->w, sizeof(float));
    w->dz = (float *)dg__calloc((size_t)cfg->batch * w->classes, sizeof(float));
    w->y = (int32_t *)dg__calloc((size_t)cfg->batch, sizeof(int32_t));
    if (!w->x || !w->dz || !w->y) {
        dg_asgd_worker_free(w);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_worker_create: no memory");
    }
    *out = w;
    return DG_OK;
}

DGDEF dg_result dg_asgd_worker_start(dg_asgd_worker *w)
{
    dg_msg *m;
    dg_result r;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_start: NULL");
    if (w->state == DG__ASGD_STOPPED) return dg__fail(DG_ERR_STATE, "asgd worker %d: stopped", w->id);
    if ((r = dg_msg_create(w->t, DG_MSG_ASGD_PULL, w->id, DG_PEER_SERVER, 0, 0, NULL, NULL, &m)))
        return r;
    w->state = DG__ASGD_WAITING;
    return dg_transport_send(w->t, m);
}

DGDEF dg_result dg_asgd_worker_handle(dg_asgd_worker *w, dg_msg *m)
{
    if (!w || !m) {
        if (w && m) dg_msg_free(w->t, m);
        return dg__fail(DG_ERR_ARG, "dg_asgd_worker_handle: NULL argument");
    }
    if (m->type == DG_MSG_STOP) {
        dg_msg_free(w->t, m);
        dg_asgd_worker_crash(w);
        w->state = DG__ASGD_STOPPED;
        return DG_OK;
    }
    if (m->type != DG_MSG_ASGD_MODEL || !dg_msg_f32(m, 0, w->n)) {
        int type = m->type;
        dg_msg_free(w->t, m);
        return dg__fail(DG_ERR_FORMAT, "asgd worker %d: unexpected message type %d", w->id, type);
    }
    if (w->state == DG__ASGD_STOPPED) { /* late model after STOP */
        dg_msg_free(w->t, m);
        return DG_OK;
    }
    if (w->model) dg_msg_free(w->t, w->model);
    w->model = m;
    w->t_pull = (uint64_t)m->iteration;
    w->state = DG__ASGD_HOLDING;
    return DG_OK;
}

/* An empty PUSH: this gradient cannot be sent (not finite). */
static dg_result dg__asgd_push_nothing(dg_asgd_worker *w)
{
    dg_msg *m;
    dg_result r;
    ac_compressor_reset(w->comp);
    if ((r = dg_msg_create(w->t, DG_MSG_ASGD_PUSH, w->id, DG_PEER_SERVER, (int64_t)w->t_pull, 0,
                           NULL, NULL, &m)))
        return r;
    return dg_transport_send(w->t, m);
}

DGDEF dg_result dg_asgd_worker_compute(dg_asgd_worker *w, dg_net *net)
{
    dg_part_kind kind = DG_PART_BYTES;
    const float *logits;
    size_t len, written;
    float loss = 0.0f;
    dg_msg *m;
    dg_result r;
    if (!w || !net) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_compute: NULL argument");
    if (w->state != DG__ASGD_HOLDING || !w->model)
        return dg__fail(DG_ERR_STATE, "asgd worker %d: no model to compute on", w->id);
    if (dg_net_param_count(net) != w->n)
        return dg__fail(DG_ERR_SHAPE, "asgd worker %d: net of %zu parameters for %zu", w->id,
                        dg_net_param_count(net), w->n);
    memcpy(dg_net_params(net), w->model->part[0].data, w->n * sizeof(float));
    dg_msg_free(w->t, w->model);
    w->model = NULL;
    w->state = DG__ASGD_WAITING;
    if ((r = dg_batcher_next(&w->batcher, w->x, w->y)) != DG_OK) return r;
    dg_net_zero_grad(net);
    if ((r = dg_net_forward(net, w->x, w->cfg.batch, 1, &logits)) != DG_OK) return r;
    if ((r = dg_loss_softmax_ce(logits, w->classes, w->y, w->cfg.batch, w->classes,
                                1.0f / (float)w->cfg.batch, w->dz, &loss)) != DG_OK)
        return r;
    if ((r = dg_net_backward(net, w->dz, NULL)) != DG_OK) return r;
    if (ac_compressor_select(w->comp, dg_net_grads(net), w->t_pull) != AC_OK)
        return dg__asgd_push_nothing(w);
    len = ac_packet_size(ac_compressor_update(w->comp));
    if ((r = dg_msg_create(w->t, DG_MSG_ASGD_PUSH, w->id, DG_PEER_SERVER, (int64_t)w->t_pull, 1,
                           &kind, &len, &m)))
        return r;
    if (ac_compressor_encode(w->comp, m->part[0].data, len, &written) != AC_OK || written != len) {
        dg_msg_free(w->t, m);
        return dg__fail(DG_ERR_STATE, "asgd worker %d: encode: %s", w->id, ac_last_error());
    }
    m->stat[0] = loss;
    return dg_transport_send(w->t, m);
}

DGDEF dg_result dg_asgd_worker_poll(dg_asgd_worker *w, dg_net *net, int timeout_ms)
{
    dg_result r, got = DG_ERR_TIMEOUT;
    dg_msg *m;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_asgd_worker_poll: NULL");
    while (w->state != DG__ASGD_STOPPED &&
           (r = dg_transport_recv(w->t, w->id, got == DG_OK ? 0 : timeout_ms, &m)) == DG_OK) {
        got = DG_OK;
        if ((r = dg_asgd_worker_handle(w, m)) != DG_OK) return r;
        if (net && w->state == DG__ASGD_HOLDING && (r = dg_asgd_worker_compute(w, net)) != DG_OK)
            return r;
    }
    return got;
}

DGDEF void dg_asgd_worker_crash(dg_asgd_worker *w)
{
    if (!w) return;
    if (w->model) dg_msg_free(w->t, w->model);
    w->model = NULL;
    if (w->state != DG__ASGD_STOPPED) w->state = DG__ASGD_IDLE;
}

DGDEF int dg_asgd_worker_has_model(const dg_asgd_worker *w) { return w && w->state == DG__ASGD_HOLDING; }
DGDEF int dg_asgd_worker_stopped(const dg_asgd_worker *w) { return w && w->state == DG__ASGD_STOPPED; }
DGDEF ac_stats dg_asgd_worker_compressor_stats(const dg_asgd_worker *w)
{
    ac_stats st;
    memset(&st, 0, sizeof st);
    return w ? ac_compressor_stats(w->comp) : st;
}

/* ---- the in-process driver ---- */

struct dg_asgd_run {
    dg_asgd_config cfg;
    dg_pool *pool;
    dg_transport *t;
    dg_asgd_sched *sched;
    dg_asgd_server *server;
    dg_asgd_worker **workers;   /* [W + 1] */
    dg_msg **inbox;             /* [W + 1] each worker's message to the PS, by sender */
    dg_net **nets;              /* one per pool thread */
    dg_net *eval;               /* for accuracy, planned for 100 */
    int n_nets;
    int *todo, n_todo;          /* workers to compute in this phase */
    dg_result *errors;          /* [W + 1] */
    uint32_t sizes[64];
    ac_layout layout;
    double now, compute_s;
    uint64_t drops;
};

DGDEF void dg_asgd_run_free(dg_asgd_run *r)
{
    int i;
    if (!r) return;
    for (i = 0; r->inbox && i <= r->cfg.n_workers; i++)
        if (r->inbox[i]) dg_msg_free(r->t, r->inbox[i]);
    for (i = 1; r->workers && i <= r->cfg.n_workers; i++) dg_asgd_worker_free(r->workers[i]);
    dg_asgd_server_free(r->server);
    for (i = 0; r->nets && i < r->n_nets; i++) dg_net_free(r->nets[i]);
    dg_net_free(r->eval);
    dg_asgd_sched_free(r->sched);
    if (r->t) dg_transport_close(r->t);
    dg__free(r->workers);
    dg__free(r->inbox);
    dg__free(r->nets);
    dg__free(r->todo);
    dg__free(r->errors);
    dg__free(r);
}

DGDEF dg_result dg_asgd_run_create(dg_asgd_run **out, const dg_asgd_config *cfg, dg_pool *pool,
                                   const dg_dataset *train, const dg_partition *part)
{
    dg_asgd_run *r;
    dg_result e;
    int W, i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_asgd_run_create: out is NULL");
    *out = NULL;
    if ((e = dg__asgd_check(cfg)) != DG_OK) return e;
    if (!pool || !train || !part || part->n_workers < cfg->n_workers || train->n_classes < 2)
        return dg__fail(DG_ERR_ARG, "dg_asgd_run_create: bad arguments (partition of %d for %d "
                                    "workers, or unlabelled data)",
                        part ? part->n_workers : 0, cfg->n_workers);
    W = cfg->n_workers;
    r = (dg_asgd_run *)dg__calloc(1, sizeof *r);
    if (!r) return dg__fail(DG_ERR_NOMEM, "dg_asgd_run_create: no memory");
    r->cfg = *cfg;
    r->pool = pool;
    r->n_nets = dg_pool_size(pool);
    r->workers = (dg_asgd_worker **)dg__calloc((size_t)W + 1, sizeof(dg_asgd_worker *));
    r->inbox = (dg_msg **)dg__calloc((size_t)W + 1, sizeof(dg_msg *));
    r->nets = (dg_net **)dg__calloc((size_t)r->n_nets, sizeof(dg_net *));
    r->todo = (int *)dg__calloc((size_t)W + 1, sizeof(int));
    r->errors = (dg_result *)dg__calloc((size_t)W + 1, sizeof(dg_result));
    if (!r->workers || !r->inbox || !r->nets || !r->todo || !r->errors) {
        dg_asgd_run_free(r);
        return dg__fail(DG_ERR_NOMEM, "dg_asgd_run_create: no memory for %d workers", W);
    }
    e = dg_inproc_create(&r->t, W + 1, 2 * W + 16, 0);
    for (i = 0; e == DG_OK && i < r->n_nets; i++)
        e = dg_asgd_net_create(&r->nets[i], cfg, train->c, train->h, train->w, train->n_classes,
                               pool, cfg->batch);
    if (e == DG_OK)
        e = dg_asgd_net_create(&r->eval, cfg, train->c, train->h, train->w, train->n_classes, pool,
                               100);
    if (e == DG_OK)
        e = dg_net_init(r->eval, dg_asgd_seed(cfg->seed, DG_ASGD_STREAM_INIT, 0), 0.0f);
    if (e == DG_OK) e = dg_asgd_layout(r->eval, r->sizes, 64, &r->layout);
    if (e == DG_OK) e = dg_asgd_server_create(&r->server, cfg, r->t, &r->layout, dg_net_params(r->eval));
    for (i = 1; e == DG_OK && i <= W; i++) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(part, i - 1, &count);
        e = dg_asgd_worker_create(&r->workers[i], cfg, i, r->t, &r->layout, train, idx, count);
    }
    if (e == DG_OK) e = dg_asgd_sched_create(&r->sched, cfg);
    if (e != DG_OK) {
        dg_asgd_run_free(r);
        return e;
    }
    *out = r;
    return DG_OK;
}

static void dg__asgd_compute_task(void *arg, int task, int thread)
{
    dg_asgd_run *r = (dg_asgd_run *)arg;
    int w = r->todo[task];
    r->errors[w] = dg_asgd_worker_compute(r->workers[w], r->nets[thread]);
}

/* Every worker that holds a model and will not drop out computes its
   gradient (in parallel) and pushes; the pushes wait in the PS's inbox and
   are sorted by sender, so the schedule decides when each is applied. */
static dg_result dg__asgd_collect(dg_asgd_run *r);

static dg_result dg__asgd_compute_phase(dg_asgd_run *r, int current)
{
    double t0 = dg__now();
    int w;
    r->n_todo = 0;
    /* the schedule has already drawn the fate of current's next model, so
       "doomed" speaks of the one after the model it holds now */
    for (w = 1; w <= r->cfg.n_workers; w++)
        if (dg_asgd_worker_has_model(r->workers[w]) &&
            (w == current || !dg_asgd_sched_doomed(r->sched, w)))
            r->todo[r->n_todo++] = w;
    dg_parallel_for(r->pool, r->n_todo, dg__asgd_compute_task, r);
    r->compute_s += dg__now() - t0;
    for (w = 0; w < r->n_todo; w++)
        if (r->errors[r->todo[w]] != DG_OK) return r->errors[r->todo[w]];
    return dg__asgd_collect(r);
}

/* Moves what waits in the PS's inbox into the per-sender slots. */
static dg_result dg__asgd_collect(dg_asgd_run *r)
{
    dg_msg *m;
    while (dg_transport_recv(r->t, DG_PEER_SERVER, 0, &m) == DG_OK) {
        if (m->from < 1 || m->from > r->cfg.n_workers || r->inbox[m->from]) {
            int from = m->from;
            dg_msg_free(r->t, m);
            return dg__fail(DG_ERR_STATE, "asgd run: second message from worker %d", from);
        }
        r->inbox[m->from] = m;
    }
    return DG_OK;
}

/* The PS handles worker w's message; w takes the MODEL it answers with. */
static dg_result dg__asgd_deliver(dg_asgd_run *r, int w)
{
    dg_msg *m = r->inbox[w];
    dg_result e;
    r->inbox[w] = NULL;
    if ((e = dg_asgd_server_handle(r->server, m)) != DG_OK) return e;
    if ((e = dg_transport_recv(r->t, w, 0, &m)) != DG_OK)
        return dg__fail(DG_ERR_STATE, "asgd run: no model for worker %d", w);
    return dg_asgd_worker_handle(r->workers[w], m);
}

DGDEF dg_result dg_asgd_run_updates(dg_asgd_run *r, uint64_t n)
{
    uint64_t target;
    dg_asgd_event ev;
    dg_result e;
    if (!r) return dg__fail(DG_ERR_ARG, "dg_asgd_run_updates: NULL");
    target = dg_asgd_server_clock(r->server) + n;
    while (dg_asgd_server_clock(r->server) < target) {
        int w;
        if (!dg_asgd_sched_next(r->sched, &ev))
            return dg__fail(DG_ERR_CLOSED, "asgd run: every worker dropped out for good after "
                                           "%llu updates",
                            (unsigned long long)dg_asgd_server_clock(r->server));
        w = ev.worker;
        r->now = ev.time;
        switch (ev.type) {
        case DG_ASGD_EV_JOIN:
            if ((e = dg_asgd_worker_start(r->workers[w])) != DG_OK) return e;
            if ((e = dg__asgd_collect(r)) != DG_OK) return e;
            if (!r->inbox[w]) return dg__fail(DG_ERR_STATE, "asgd run: no pull from %d", w);
            if ((e = dg__asgd_deliver(r, w)) != DG_OK) return e;
            break;
        case DG_ASGD_EV_DROP:
            dg_asgd_worker_crash(r->workers[w]);
            r->drops++;
            break;
        default: /* a push arrives */
            if (!r->inbox[w] && (e = dg__asgd_compute_phase(r, w)) != DG_OK) return e;
            if (!r->inbox[w])
                return dg__fail(DG_ERR_STATE, "asgd run: worker %d has nothing to push", w);
            if ((e = dg__asgd_deliver(r, w)) != DG_OK) return e;
            break;
        }
    }
    return DG_OK;
}

DGDEF dg_result dg_asgd_run_accuracy(dg_asgd_run *r, const dg_dataset *ds, size_t n,
                                     double *accuracy)
{
    if (!r) return dg__fail(DG_ERR_ARG, "dg_asgd_run_accuracy: NULL");
    return dg_asgd_accuracy(r->eval, dg_asgd_server_params(r->server), ds, n, accuracy);
}

DGDEF dg_asgd_server *dg_asgd_run_server(dg_asgd_run *r) { return r ? r->server : NULL; }
DGDEF dg_asgd_worker *dg_asgd_run_worker(dg_asgd_run *r, int id)
{
    return r && id >= 1 && id <= r->cfg.n_workers ? r->workers[id] : NULL;
}
DGDEF dg_transport *dg_asgd_run_transport(dg_asgd_run *r) { return r ? r->t : NULL; }
DGDEF const ac_layout *dg_asgd_run_layout(const dg_asgd_run *r) { return r ? &r->layout : NULL; }
DGDEF double dg_asgd_run_time(const dg_asgd_run *r) { return r ? r->now : 0.0; }
DGDEF uint64_t dg_asgd_run_drops(const dg_asgd_run *r) { return r ? r->drops : 0; }
DGDEF double dg_asgd_run_compute_seconds(const dg_asgd_run *r) { return r ? r->compute_s : 0.0; }

#ifdef __cplusplus
}
#endif
#endif /* DISTGAN_IMPLEMENTATION */
#endif /* ADACOMP_H */
