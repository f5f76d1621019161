/* wip/mdgan.h: the dg_transport and dg_roles sections of distgan.h
   (message transport, MD-GAN and FL-GAN server and worker roles, the
   in-process driver), written apart while the other sections are in
   progress.  Part 1 (declarations) and part 2 (implementation) are pasted
   verbatim into distgan.h after the dg_gan section; until then include this
   file right after wip/gan.h:

      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"
      #include "wip/data.h"
      #include "wip/gan.h"
      #include "wip/mdgan.h"

   Uses the dg_pool, dg_net, dg_optim, dg_data and dg_gan sections, pthreads
   and clock_gettime.  docs/mdgan.md walks through one MD-GAN iteration in
   this code. */

/* ======================================================================
   Part 1: public declarations
   ====================================================================== */
#ifndef DG_WIP_MDGAN_DECL
#define DG_WIP_MDGAN_DECL

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_transport ==== */

/* Roles talk only through a dg_transport: send a message to a peer, receive
   one (with a timeout), close.  Peers are small integers: the server is 0,
   workers are 1..N.  A message (dg_msg) is a type, the sender and receiver,
   an iteration, two small header fields (aux: an integer such as a swap
   partner or a shard size; stat[2]: two floats such as the worker's losses)
   and a payload of up to DG_MSG_MAX_PARTS parts, each a list of float32,
   int32 or raw bytes.  Messages live in one buffer taken from the
   transport's pool of message buffers: the sender creates it
   (dg_msg_create), writes the parts in place (a worker's discriminator
   writes its feedback straight into the message), and dg_transport_send
   hands the buffer over; the receiver reads it in place and gives it back
   with dg_msg_free.  After the first iterations every buffer is recycled,
   so training never allocates.

   Traffic.  dg_transport_send counts every message on its link (from, to):
   payload bytes exactly as the papers count them (4 bytes per float32 or
   int32 value, 1 per raw byte) and, apart, the framing a byte stream needs
   (DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES per part, as encoded by
   dg_msg_encode).  So the payload counters can be checked against the
   formulas of papers.md to the byte and the framing stays visible.
   Control messages (swap announcements, stop) have an empty payload.

   The codec (dg_msg_encode / dg_msg_decode) turns a message into the bytes
   of one frame and back, validating everything; a socket transport sends
   those bytes and reuses the same message pool.  The in-process transport
   (dg_inproc_create) gives every peer a bounded FIFO inbox (mutex +
   condition variables) and moves message pointers: no copy, no encoding.
   A new transport fills the four function pointers and calls
   dg_transport_base_init; the roles never know which one they run on. */

#define DG_PEER_SERVER 0
#define DG_ANY_PEER (-1)
#define DG_MSG_MAX_PARTS 6
#define DG_MSG_HEADER_BYTES 56  /* fixed frame header, see dg_msg_encode */
#define DG_MSG_PART_BYTES 16    /* per part: kind u32, reserved u32, count u64 */
#define DG_MSG_VERSION 1

typedef enum dg_msg_type {
    DG_MSG_GEN_BATCHES = 1, /* MD-GAN server -> worker: X^(g), X^(d) (+ their labels) */
    DG_MSG_FEEDBACK = 2,    /* MD-GAN worker -> server: F_n; stat = (D loss, G loss) */
    DG_MSG_SWAP = 3,        /* MD-GAN server -> worker: send your D to worker aux */
    DG_MSG_DISC = 4,        /* MD-GAN worker -> worker: θ (+ state, + optimiser) */
    DG_MSG_COPY_DISC = 5,   /* MD-GAN server -> worker: send a copy of your D to aux (a join) */
    DG_MSG_MODEL = 6,       /* FL-GAN both ways: w, θ (+ optimisers); aux = shard size up */
    DG_MSG_STOP = 7,        /* server -> worker: training is over */
    DG_MSG_USER = 64        /* first type free for applications */
} dg_msg_type;

typedef enum dg_part_kind { DG_PART_F32 = 1, DG_PART_I32 = 2, DG_PART_BYTES = 3 } dg_part_kind;

typedef struct dg_part {
    dg_part_kind kind;
    size_t count;      /* values (bytes for DG_PART_BYTES) */
    void *data;        /* inside the message's buffer */
} dg_part;

typedef struct dg_msg {
    int type, from, to, n_parts;
    int64_t iteration;
    int64_t aux;
    float stat[2];
    dg_part part[DG_MSG_MAX_PARTS];
    /* owned by the transport's pool */
    unsigned char *buf;
    size_t cap;
    struct dg_msg *next;
} dg_msg;

typedef struct dg_traffic {
    uint64_t messages;
    uint64_t payload_bytes;   /* 4 per float32/int32 value, 1 per raw byte */
    uint64_t frame_bytes;     /* header + part table of each message */
} dg_traffic;

typedef struct dg_transport dg_transport;
struct dg_transport {
    int n_peers;
    /* implementation: send takes ownership of m in every case (on failure
       the message is freed); recv waits up to timeout_ms (0: poll, < 0:
       forever) and returns DG_ERR_TIMEOUT when nothing came; pending is the
       number of messages waiting for self (-1 if unknown); close frees the
       transport (call dg_transport_base_free inside) */
    dg_result (*send)(dg_transport *t, dg_msg *m);
    dg_result (*recv)(dg_transport *t, int self, int timeout_ms, dg_msg **out);
    int (*pending)(dg_transport *t, int self);
    void (*close)(dg_transport *t);
    void *impl;
    /* shared by every implementation (dg_transport_base_init) */
    dg_traffic *links;        /* n_peers x n_peers, [from * n_peers + to] */
    void *msg_pool;
};

DGDEF dg_result dg_transport_base_init(dg_transport *t, int n_peers);
DGDEF void dg_transport_base_free(dg_transport *t);
/* Counts m on its link, then sends it (ownership passes in every case). */
DGDEF dg_result dg_transport_send(dg_transport *t, dg_msg *m);
DGDEF dg_result dg_transport_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out);
DGDEF int dg_transport_pending(dg_transport *t, int self);
DGDEF void dg_transport_close(dg_transport *t);
/* Traffic on link from -> to; either may be DG_ANY_PEER to add links up. */
DGDEF dg_traffic dg_transport_traffic(const dg_transport *t, int from, int to);
DGDEF void dg_transport_reset_traffic(dg_transport *t);

/* A message of n_parts parts of the given kinds and counts, from the pool
   (recycled buffers, best fit; a new one only when none fits). */
DGDEF dg_result dg_msg_create(dg_transport *t, int type, int from, int to, int64_t iteration,
                              int n_parts, const dg_part_kind *kinds, const size_t *counts,
                              dg_msg **out);
DGDEF void dg_msg_free(dg_transport *t, dg_msg *m);
/* Part i as floats / ints when it has that kind and exactly count values,
   else NULL. */
DGDEF float *dg_msg_f32(const dg_msg *m, int i, size_t count);
DGDEF int32_t *dg_msg_i32(const dg_msg *m, int i, size_t count);
DGDEF size_t dg_msg_payload_bytes(const dg_msg *m);
DGDEF size_t dg_msg_frame_bytes(const dg_msg *m);   /* header + part table */
/* Codec.  Frame, little-endian:
     0 u32 magic "DGMS" | 4 u16 version | 6 u16 type | 8 i32 from | 12 i32 to
     16 i64 iteration | 24 i64 aux | 32 f32 stat0 | 36 f32 stat1
     40 u32 n_parts | 44 u32 CRC-32 of bytes 56.. | 48 u64 payload bytes
     56 part table: n_parts x (u32 kind, u32 0, u64 count)
     then the parts' values back to back (float32 / int32 little-endian).
   encoded size = frame bytes + payload bytes. */
DGDEF size_t dg_msg_encoded_size(const dg_msg *m);
DGDEF dg_result dg_msg_encode(const dg_msg *m, void *buf, size_t cap, size_t *written);
/* Validates magic, version, type, peers (< t->n_peers), part kinds, sizes
   (payload <= max_payload), the CRC and the exact length before it
   allocates a message from t's pool. */
DGDEF dg_result dg_msg_decode(dg_transport *t, const void *buf, size_t len, size_t max_payload,
                              dg_msg **out);

/* In-process transport: n_peers inboxes of queue_cap messages (0: 1024);
   a send to a full inbox waits up to send_timeout_ms (0: 10 s) and then
   fails with DG_ERR_TIMEOUT. */
DGDEF dg_result dg_inproc_create(dg_transport **out, int n_peers, int queue_cap,
                                 int send_timeout_ms);

/* ==== dg_roles ==== */

/* MD-GAN (papers.md section 1).  The server holds the generator G and its
   Adam state; worker n holds its shard and a discriminator D_n.  One global
   iteration t:

     server  dg_mdgan_server_begin: k noise batches from the stream
             (seed, NOISE, t), X = G(Z) once on the k*b stacked rows, and to
             every live worker n a GEN_BATCHES message with
             X^(g) = X_(n mod k), X^(d) = X_((n+1) mod k)  (2*b*d floats,
             + 2*b labels in ACGAN mode)
     worker  dg_mdgan_worker_handle(GEN_BATCHES): L x dg_gan_d_step(real
             batch of the shard, X^(d)), then dg_gan_g_feedback(X^(g),
             scale 1) written straight into a FEEDBACK message: F_n, b*d
             floats, unscaled
     server  on the last live feedback (or dg_mdgan_server_expire when the
             barrier times out): per generated batch j the sum of the F_n
             with n mod k = j, in worker order, times 1/(N_live*b); one
             backward of G over the k*b rows; one Adam step
     swap    every m*E/b iterations the server sends each live worker a SWAP
             naming its partner under a derangement drawn from
             (seed, SWAP, round); workers send their D (+ Adam state by
             default) peer to peer and hold the next GEN_BATCHES until their
             new D arrives.

   Roles are state machines: they react to one message at a time
   (dg_*_handle) and never block, so one process can host 50 workers on two
   cores (the in-process driver runs each worker's pending work as a task of
   one dg_pool) and a socket driver can host one role per process with the
   same code.  Every random stream derives from (run seed, role, iteration):
   noise from (seed, DG_MDGAN_STREAM_NOISE, t), real batches from a batcher
   seeded by (seed, DG_MDGAN_STREAM_DATA, n), initial weights from
   (seed, DG_MDGAN_STREAM_INIT, role), the swap partners from
   (seed, DG_MDGAN_STREAM_SWAP, round), a joiner's donor from
   (seed, DG_MDGAN_STREAM_JOIN, t), so a run is the same on any transport and
   any thread count.

   FL-GAN: each worker holds a whole GAN.  A round: the server sends (w, θ),
   every worker trains E local epochs (m*E/b iterations of the standalone
   step) on its shard and sends (w, θ) back with its shard size; the server
   averages them weighted by shard size (and the Adam states, as an option)
   and scores its averaged G. */

#define DG_MDGAN_STREAM_NOISE 0x6d646e6f697365ull  /* index: iteration */
#define DG_MDGAN_STREAM_DATA 0x6d6464617461ull     /* index: worker id */
#define DG_MDGAN_STREAM_INIT 0x6d64696e6974ull     /* index: 0 = G, n = D_n */
#define DG_MDGAN_STREAM_SWAP 0x6d6473776170ull     /* index: swap round */
#define DG_MDGAN_STREAM_JOIN 0x6d646a6f696eull     /* index: iteration */
#define DG_FLGAN_STREAM_NOISE 0x666c6e6f697365ull  /* stream + worker id; index: local iteration */

#define DG_MDGAN_K_LOG2 (-1) /* k = ceil(log2 N), at least 1 */

/* The 64-bit seed of stream (seed, stream, index): what the roles pass to
   dg_net_init and dg_batcher_init, exported so a test can rebuild them. */
DGDEF uint64_t dg_mdgan_seed(uint64_t seed, uint64_t stream, uint64_t index);

/* Every "Decision" of papers.md is a field here.  Start from
   dg_mdgan_config_init() and change what you need. */
typedef struct dg_mdgan_config {
    int n_workers;        /* N: worker ids 1..N (required) */
    int max_workers;      /* worker slots, >= N; slots N+1.. join later (0: N) */
    int c, h, w;          /* image shape (required) */
    int n_classes;        /* 0: plain GAN (default); C > 0: ACGAN, labels travel */
    dg_arch arch;         /* DG_ARCH_DCGAN */
    int z_dim;            /* ℓ = 100 */
    int batch;            /* b = 64 */
    int k;                /* generated batches per iteration: 1 (default),
                             DG_MDGAN_K_LOG2, or any 1..N.  Decision: with
                             k = 1, X^(g) and X^(d) are the same batch */
    int disc_steps;       /* L = 1 */
    int fresh_real;       /* Decision: 1 (default) a fresh real batch for each
                             of the L D steps; 0 one per iteration (paper) */
    int saturating;       /* Decision: 0 (default) non-saturating -log D(G(z));
                             1 the paper's log(1 - D(G(z))) */
    int local_epochs;     /* E = 1: swap every m*E/b iterations; 0: never swap */
    int swap_every;       /* iterations between swaps; 0 = round(m*E/b) with m
                             the mean shard size (Decision for unequal shards) */
    int swap_optimizer;   /* Decision: 1 (default) D's Adam state travels with
                             D; 0 it stays with the worker */
    float lr_g, lr_d;     /* Adam: 2e-4 */
    float beta1, beta2;   /* 0.5, 0.999 */
    float eps;            /* 1e-8 */
    float init_std;       /* < 0 (default): 0.02 for DCGAN (DCGAN init),
                             0 (PyTorch default) for MLP */
    uint64_t seed;        /* 1 */
    int barrier_timeout_ms; /* 0 (default): the server waits until it is told
                             (dg_mdgan_server_expire; the in-process driver
                             tells it when every queue is empty); > 0: the
                             server's poll drops the workers that miss this
                             deadline */
    void (*log)(void *user, const char *line); /* events (drops, joins); NULL: silent */
    void *log_user;
} dg_mdgan_config;

DGDEF dg_mdgan_config dg_mdgan_config_init(void);
/* The effective k for cfg (DG_MDGAN_K_LOG2 resolved); 0 when invalid. */
DGDEF int dg_mdgan_k(const dg_mdgan_config *cfg);

typedef struct dg_mdgan_stats {
    int64_t iteration;    /* iterations done */
    int n_live;           /* workers whose feedback made the last update */
    int n_dropped;        /* workers dropped so far */
    int64_t swaps;        /* swap rounds announced */
    float d_loss, g_loss; /* means over the live workers of the last iteration */
    double compute_s;     /* the server's own compute time, cumulated */
} dg_mdgan_stats;

typedef struct dg_mdgan_server dg_mdgan_server;
typedef struct dg_mdgan_worker dg_mdgan_worker;

/* Builds, plans (k*b rows) and initialises G on pool.  The transport must
   have at least max_workers + 1 peers. */
DGDEF dg_result dg_mdgan_server_create(dg_mdgan_server **out, const dg_mdgan_config *cfg,
                                       dg_transport *t, dg_pool *pool);
DGDEF void dg_mdgan_server_free(dg_mdgan_server *s);
/* Starts the next iteration (joins first, then GEN_BATCHES to every live
   worker).  DG_ERR_STATE while an iteration is open. */
DGDEF dg_result dg_mdgan_server_begin(dg_mdgan_server *s);
/* Reacts to one message (takes ownership).  When the last missing feedback
   arrives, the iteration completes (G update, swap announcement). */
DGDEF dg_result dg_mdgan_server_handle(dg_mdgan_server *s, dg_msg *m);
/* Receives and handles messages until the iteration completes (DG_OK) or
   nothing arrives within timeout_ms (DG_ERR_TIMEOUT; 0 = only what is
   queued).  With barrier_timeout_ms > 0 it expires the barrier itself. */
DGDEF dg_result dg_mdgan_server_poll(dg_mdgan_server *s, int timeout_ms);
/* Live workers whose feedback is still missing (0: no iteration open). */
DGDEF int dg_mdgan_server_missing(const dg_mdgan_server *s);
/* The barrier's deadline passed: drop the missing workers from N_live
   (logged) and complete the iteration with the feedback received. */
DGDEF dg_result dg_mdgan_server_expire(dg_mdgan_server *s);
/* Worker id (a free slot) joins at the next begin with a copy of the D of a
   live worker. */
DGDEF dg_result dg_mdgan_server_add_worker(dg_mdgan_server *s, int id);
/* STOP to every live worker. */
DGDEF dg_result dg_mdgan_server_stop(dg_mdgan_server *s);
DGDEF int dg_mdgan_server_is_live(const dg_mdgan_server *s, int id);
DGDEF const dg_mdgan_stats *dg_mdgan_server_stats(const dg_mdgan_server *s);
DGDEF dg_net *dg_mdgan_server_generator(dg_mdgan_server *s);
DGDEF dg_optim *dg_mdgan_server_optim(dg_mdgan_server *s);
/* Checkpoint of the server between iterations: the iteration, the swap
   round and G with its Adam state (dg_net_save_mem).  The noise stream needs
   no saved position: it is (seed, t). */
DGDEF size_t dg_mdgan_server_save_size(const dg_mdgan_server *s);
DGDEF dg_result dg_mdgan_server_save_mem(const dg_mdgan_server *s, void *buf, size_t cap,
                                         size_t *written);
DGDEF dg_result dg_mdgan_server_load_mem(dg_mdgan_server *s, const void *buf, size_t len);

/* Worker id (1..max_workers) over its shard idx[0..count) of ds (kept by
   pointer).  joining != 0: it waits for a DISC before it trains (a worker
   that joins later). */
DGDEF dg_result dg_mdgan_worker_create(dg_mdgan_worker **out, const dg_mdgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count, int joining);
DGDEF void dg_mdgan_worker_free(dg_mdgan_worker *w);
DGDEF dg_result dg_mdgan_worker_handle(dg_mdgan_worker *w, dg_msg *m);
/* Handles every message that arrives within timeout_ms (0: what is queued). */
DGDEF dg_result dg_mdgan_worker_poll(dg_mdgan_worker *w, int timeout_ms);
/* Fault injection: from iteration t on the worker drops every message (it
   crashed). */
DGDEF void dg_mdgan_worker_crash_at(dg_mdgan_worker *w, int64_t t);
/* 1 while a generated batch waits for the discriminator of a swap */
DGDEF int dg_mdgan_worker_holding(const dg_mdgan_worker *w);
/* Gives up the awaited discriminator (its sender is dead): the worker keeps
   its own and trains on the held batch. */
DGDEF dg_result dg_mdgan_worker_skip_swap(dg_mdgan_worker *w);
DGDEF int dg_mdgan_worker_alive(const dg_mdgan_worker *w);
DGDEF int dg_mdgan_worker_stopped(const dg_mdgan_worker *w);
DGDEF int64_t dg_mdgan_worker_iterations(const dg_mdgan_worker *w);
DGDEF double dg_mdgan_worker_compute_seconds(const dg_mdgan_worker *w);
DGDEF dg_net *dg_mdgan_worker_discriminator(dg_mdgan_worker *w);
DGDEF dg_optim *dg_mdgan_worker_optim(dg_mdgan_worker *w);
/* Worker checkpoint between iterations: D, its Adam state, the batcher
   position. */
DGDEF size_t dg_mdgan_worker_save_size(const dg_mdgan_worker *w);
DGDEF dg_result dg_mdgan_worker_save_mem(const dg_mdgan_worker *w, void *buf, size_t cap,
                                         size_t *written);
DGDEF dg_result dg_mdgan_worker_load_mem(dg_mdgan_worker *w, const void *buf, size_t len);

/* ---- FL-GAN ---- */

typedef struct dg_flgan_config {
    int n_workers;        /* N (required) */
    int c, h, w;          /* image shape (required) */
    int n_classes;        /* 0: plain GAN; C > 0: ACGAN */
    dg_arch arch;         /* DG_ARCH_DCGAN */
    int z_dim;            /* 100 */
    int batch;            /* b = 64 */
    int local_epochs;     /* E = 1 */
    int local_iters;      /* iterations per round; 0 = round(m_n*E/b) per worker */
    int saturating;       /* 0: non-saturating generator loss */
    int average_optimizer;/* 0 (default): Adam states stay local; 1: sent and averaged too */
    float lr, beta1, beta2, eps; /* 2e-4, 0.5, 0.999, 1e-8 */
    float init_std;       /* < 0: arch default (as MD-GAN) */
    uint64_t seed;        /* 1 */
    int barrier_timeout_ms;
    void (*log)(void *user, const char *line);
    void *log_user;
} dg_flgan_config;

DGDEF dg_flgan_config dg_flgan_config_init(void);

typedef struct dg_flgan_stats {
    int64_t rounds;       /* rounds averaged */
    int64_t iterations;   /* generator updates per worker so far (mean) */
    int n_live, n_dropped;
    float d_loss, g_loss; /* means over workers of their last local iteration */
    double compute_s;
} dg_flgan_stats;

typedef struct dg_flgan_server dg_flgan_server;
typedef struct dg_flgan_worker dg_flgan_worker;

DGDEF dg_result dg_flgan_server_create(dg_flgan_server **out, const dg_flgan_config *cfg,
                                       dg_transport *t, dg_pool *pool);
DGDEF void dg_flgan_server_free(dg_flgan_server *s);
DGDEF dg_result dg_flgan_server_begin(dg_flgan_server *s);       /* MODEL to every live worker */
DGDEF dg_result dg_flgan_server_handle(dg_flgan_server *s, dg_msg *m);
DGDEF dg_result dg_flgan_server_poll(dg_flgan_server *s, int timeout_ms);
DGDEF int dg_flgan_server_missing(const dg_flgan_server *s);
DGDEF dg_result dg_flgan_server_expire(dg_flgan_server *s);
DGDEF dg_result dg_flgan_server_stop(dg_flgan_server *s);
DGDEF const dg_flgan_stats *dg_flgan_server_stats(const dg_flgan_server *s);
DGDEF dg_net *dg_flgan_server_generator(dg_flgan_server *s);
DGDEF dg_net *dg_flgan_server_discriminator(dg_flgan_server *s);
DGDEF dg_result dg_flgan_worker_create(dg_flgan_worker **out, const dg_flgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count);
DGDEF void dg_flgan_worker_free(dg_flgan_worker *w);
DGDEF dg_result dg_flgan_worker_handle(dg_flgan_worker *w, dg_msg *m);
DGDEF dg_result dg_flgan_worker_poll(dg_flgan_worker *w, int timeout_ms);
DGDEF void dg_flgan_worker_crash_at(dg_flgan_worker *w, int64_t round);
DGDEF int dg_flgan_worker_stopped(const dg_flgan_worker *w);
DGDEF double dg_flgan_worker_compute_seconds(const dg_flgan_worker *w);
DGDEF int dg_flgan_worker_iters_per_round(const dg_flgan_worker *w);

/* ---- the in-process driver ---- */

/* One process, one dg_pool, a server and N workers on a dg_inproc
   transport.  An iteration (a round for FL-GAN) is: the server begins on
   the calling thread (its kernels use the whole pool), then rounds of
   dg_parallel_for over the worker slots, each task handling one worker's
   queued messages (its kernels run inline on that pool thread, so two cores
   serve any N), then the server handles its queue; when every queue is
   empty and the server still waits, the missing workers are dead and the
   server is told (dg_*_server_expire).  Nothing depends on which thread ran
   which task, so 1 and 2 threads give the same bits. */
typedef struct dg_fault {
    int worker;           /* worker id */
    int64_t iteration;    /* crash: from this iteration on (FL-GAN: round);
                             join: joins at this iteration */
} dg_fault;

typedef struct dg_mdgan_run dg_mdgan_run;

/* part gives each worker slot its shard: slot n uses part's list n - 1, so
   part->n_workers >= cfg->max_workers.  Joins name slots above N. */
DGDEF dg_result dg_mdgan_run_create(dg_mdgan_run **out, const dg_mdgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes, const dg_fault *joins,
                                    int n_joins);
/* One global iteration, until the server's update (a swap it announces is
   carried out at the start of the next one). */
DGDEF dg_result dg_mdgan_run_iteration(dg_mdgan_run *r);
/* Carries out an announced swap now (workers handle their queues until
   every queue is empty), so that the workers can be checkpointed.  The
   result of the run does not change. */
DGDEF dg_result dg_mdgan_run_settle(dg_mdgan_run *r);
DGDEF void dg_mdgan_run_free(dg_mdgan_run *r);
DGDEF dg_transport *dg_mdgan_run_transport(dg_mdgan_run *r);
DGDEF dg_mdgan_server *dg_mdgan_run_server(dg_mdgan_run *r);
DGDEF dg_mdgan_worker *dg_mdgan_run_worker(dg_mdgan_run *r, int id);
/* Sum of the workers' own compute time (seconds). */
DGDEF double dg_mdgan_run_worker_compute(const dg_mdgan_run *r);

typedef struct dg_flgan_run dg_flgan_run;
DGDEF dg_result dg_flgan_run_create(dg_flgan_run **out, const dg_flgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes);
DGDEF dg_result dg_flgan_run_round(dg_flgan_run *r);
DGDEF void dg_flgan_run_free(dg_flgan_run *r);
DGDEF dg_transport *dg_flgan_run_transport(dg_flgan_run *r);
DGDEF dg_flgan_server *dg_flgan_run_server(dg_flgan_run *r);
DGDEF dg_flgan_worker *dg_flgan_run_worker(dg_flgan_run *r, int id);
DGDEF double dg_flgan_run_worker_compute(const dg_flgan_run *r);

#ifdef __cplusplus
}
#endif
#endif /* DG_WIP_MDGAN_DECL */

/* ======================================================================
   Part 2: implementation
   ====================================================================== */
#if defined(DISTGAN_IMPLEMENTATION) && !defined(DG_WIP_MDGAN_IMPL)
#define DG_WIP_MDGAN_IMPL

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_transport ==== */

/* C11 timespec_get (no POSIX feature macro needed): wall-clock seconds,
   for compute timings and the condition-variable deadlines below. */
static double dg__now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t dg__part_bytes(dg_part_kind kind, size_t count)
{
    return kind == DG_PART_BYTES ? count : 4 * count;
}

/* The pool of message buffers: a free list under a mutex.  dg_msg_create
   takes the smallest free buffer that fits (best fit), so the few sizes a
   role uses (feedback, generated batches, a discriminator) settle into
   their own buffers after the first iterations. */
typedef struct dg__msg_pool {
    pthread_mutex_t mu;
    dg_msg *free_list;
} dg__msg_pool;

DGDEF dg_result dg_transport_base_init(dg_transport *t, int n_peers)
{
    dg__msg_pool *mp;
    if (!t || n_peers < 1 || n_peers > 65536)
        return dg__fail(DG_ERR_ARG, "dg_transport_base_init: %d peers", n_peers);
    t->n_peers = n_peers;
    t->links = (dg_traffic *)dg__calloc((size_t)n_peers * n_peers, sizeof(dg_traffic));
    mp = (dg__msg_pool *)dg__calloc(1, sizeof *mp);
    if (!t->links || !mp) {
        dg__free(t->links);
        dg__free(mp);
        t->links = NULL;
        return dg__fail(DG_ERR_NOMEM, "dg_transport_base_init: no memory for %d peers", n_peers);
    }
    pthread_mutex_init(&mp->mu, NULL);
    t->msg_pool = mp;
    return DG_OK;
}

DGDEF void dg_transport_base_free(dg_transport *t)
{
    dg__msg_pool *mp;
    if (!t) return;
    mp = (dg__msg_pool *)t->msg_pool;
    if (mp) {
        while (mp->free_list) {
            dg_msg *m = mp->free_list;
            mp->free_list = m->next;
            dg__free(m->buf);
            dg__free(m);
        }
        pthread_mutex_destroy(&mp->mu);
        dg__free(mp);
    }
    dg__free(t->links);
    t->links = NULL;
    t->msg_pool = NULL;
}

DGDEF size_t dg_msg_payload_bytes(const dg_msg *m)
{
    size_t n = 0;
    int i;
    for (i = 0; m && i < m->n_parts; i++) n += dg__part_bytes(m->part[i].kind, m->part[i].count);
    return n;
}

DGDEF size_t dg_msg_frame_bytes(const dg_msg *m)
{
    return m ? DG_MSG_HEADER_BYTES + (size_t)DG_MSG_PART_BYTES * (size_t)m->n_parts : 0;
}

DGDEF size_t dg_msg_encoded_size(const dg_msg *m)
{
    return dg_msg_frame_bytes(m) + dg_msg_payload_bytes(m);
}

DGDEF dg_result dg_msg_create(dg_transport *t, int type, int from, int to, int64_t iteration,
                              int n_parts, const dg_part_kind *kinds, const size_t *counts,
                              dg_msg **out)
{
    dg__msg_pool *mp;
    dg_msg *m = NULL, **best = NULL, **pp;
    size_t need = 0, off[DG_MSG_MAX_PARTS];
    int i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_msg_create: out is NULL");
    *out = NULL;
    if (!t || !t->msg_pool || n_parts < 0 || n_parts > DG_MSG_MAX_PARTS ||
        (n_parts && (!kinds || !counts)))
        return dg__fail(DG_ERR_ARG, "dg_msg_create: bad arguments (%d parts)", n_parts);
    for (i = 0; i < n_parts; i++) {
        if (kinds[i] != DG_PART_F32 && kinds[i] != DG_PART_I32 && kinds[i] != DG_PART_BYTES)
            return dg__fail(DG_ERR_ARG, "dg_msg_create: part %d has kind %d", i, (int)kinds[i]);
        if (counts[i] > ((size_t)1 << 40))
            return dg__fail(DG_ERR_TOO_LARGE, "dg_msg_create: part %d of %zu values", i, counts[i]);
        off[i] = need;
        need += (dg__part_bytes(kinds[i], counts[i]) + 63) & ~(size_t)63; /* aligned parts */
    }
    mp = (dg__msg_pool *)t->msg_pool;
    pthread_mutex_lock(&mp->mu);
    for (pp = &mp->free_list; *pp; pp = &(*pp)->next)
        if ((*pp)->cap >= need && (!best || (*pp)->cap < (*best)->cap)) best = pp;
    if (best) {
        m = *best;
        *best = m->next;
    }
    pthread_mutex_unlock(&mp->mu);
    if (!m) {
        m = (dg_msg *)dg__calloc(1, sizeof *m);
        if (!m) return dg__fail(DG_ERR_NOMEM, "dg_msg_create: no memory");
        /* touch the buffer now (dg__calloc): first-touch page faults would
           otherwise land in the middle of a training step */
        m->buf = (unsigned char *)dg__calloc(need ? need : 64, 1);
        if (!m->buf) {
            dg__free(m);
            return dg__fail(DG_ERR_NOMEM, "dg_msg_create: no memory for %zu bytes", need);
        }
        m->cap = need ? need : 64;
    }
    m->type = type;
    m->from = from;
    m->to = to;
    m->iteration = iteration;
    m->aux = 0;
    m->stat[0] = m->stat[1] = 0.0f;
    m->n_parts = n_parts;
    m->next = NULL;
    for (i = 0; i < DG_MSG_MAX_PARTS; i++) {
        m->part[i].kind = i < n_parts ? kinds[i] : DG_PART_BYTES;
        m->part[i].count = i < n_parts ? counts[i] : 0;
        m->part[i].data = i < n_parts ? m->buf + off[i] : NULL;
    }
    *out = m;
    return DG_OK;
}

DGDEF void dg_msg_free(dg_transport *t, dg_msg *m)
{
    dg__msg_pool *mp;
    if (!m) return;
    if (!t || !t->msg_pool) { /* no pool to return it to */
        dg__free(m->buf);
        dg__free(m);
        return;
    }
    mp = (dg__msg_pool *)t->msg_pool;
    pthread_mutex_lock(&mp->mu);
    m->next = mp->free_list;
    mp->free_list = m;
    pthread_mutex_unlock(&mp->mu);
}

DGDEF float *dg_msg_f32(const dg_msg *m, int i, size_t count)
{
    if (!m || i < 0 || i >= m->n_parts || m->part[i].kind != DG_PART_F32 ||
        m->part[i].count != count)
        return NULL;
    return (float *)m->part[i].data;
}

DGDEF int32_t *dg_msg_i32(const dg_msg *m, int i, size_t count)
{
    if (!m || i < 0 || i >= m->n_parts || m->part[i].kind != DG_PART_I32 ||
        m->part[i].count != count)
        return NULL;
    return (int32_t *)m->part[i].data;
}

static void dg__le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
static void dg__le64(unsigned char *p, uint64_t v)
{
    dg__le32(p, (uint32_t)v);
    dg__le32(p + 4, (uint32_t)(v >> 32));
}
static uint32_t dg__rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t dg__rd64(const unsigned char *p)
{
    return (uint64_t)dg__rd32(p) | (uint64_t)dg__rd32(p + 4) << 32;
}

DGDEF dg_result dg_msg_encode(const dg_msg *m, void *buf, size_t cap, size_t *written)
{
    unsigned char *p = (unsigned char *)buf, *q;
    size_t need, payload, j;
    uint32_t u;
    int i;
    if (!m || !buf) return dg__fail(DG_ERR_ARG, "dg_msg_encode: NULL argument");
    need = dg_msg_encoded_size(m);
    payload = dg_msg_payload_bytes(m);
    if (cap < need) return dg__fail(DG_ERR_TOO_LARGE, "dg_msg_encode: need %zu bytes", need);
    memcpy(p, "DGMS", 4);
    p[4] = DG_MSG_VERSION & 0xff;
    p[5] = 0;
    p[6] = (unsigned char)(m->type & 0xff);
    p[7] = (unsigned char)((m->type >> 8) & 0xff);
    dg__le32(p + 8, (uint32_t)m->from);
    dg__le32(p + 12, (uint32_t)m->to);
    dg__le64(p + 16, (uint64_t)m->iteration);
    dg__le64(p + 24, (uint64_t)m->aux);
    memcpy(&u, &m->stat[0], 4);
    dg__le32(p + 32, u);
    memcpy(&u, &m->stat[1], 4);
    dg__le32(p + 36, u);
    dg__le32(p + 40, (uint32_t)m->n_parts);
    dg__le64(p + 48, (uint64_t)payload);
    q = p + DG_MSG_HEADER_BYTES;
    for (i = 0; i < m->n_parts; i++, q += DG_MSG_PART_BYTES) {
        dg__le32(q, (uint32_t)m->part[i].kind);
        dg__le32(q + 4, 0);
        dg__le64(q + 8, (uint64_t)m->part[i].count);
    }
    for (i = 0; i < m->n_parts; i++) {
        const unsigned char *src = (const unsigned char *)m->part[i].data;
        if (m->part[i].kind == DG_PART_BYTES) {
            memcpy(q, src, m->part[i].count);
            q += m->part[i].count;
        } else {
            for (j = 0; j < m->part[i].count; j++, q += 4) {
                memcpy(&u, src + 4 * j, 4);
                dg__le32(q, u);
            }
        }
    }
    dg__le32(p + 44, dg_crc32(0, p + DG_MSG_HEADER_BYTES, need - DG_MSG_HEADER_BYTES));
    if (written) *written = need;
    return DG_OK;
}

DGDEF dg_result dg_msg_decode(dg_transport *t, const void *buf, size_t len, size_t max_payload,
                              dg_msg **out)
{
    const unsigned char *p = (const unsigned char *)buf, *q;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS], payload = 0, j;
    uint32_t n_parts, u;
    int type, from, to, i;
    dg_msg *m;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_msg_decode: out is NULL");
    *out = NULL;
    if (!t || !buf) return dg__fail(DG_ERR_ARG, "dg_msg_decode: NULL argument");
    if (len < DG_MSG_HEADER_BYTES || memcmp(p, "DGMS", 4) != 0)
        return dg__fail(DG_ERR_FORMAT, "message: bad magic or %zu-byte frame", len);
    if (p[4] != DG_MSG_VERSION || p[5] != 0)
        return dg__fail(DG_ERR_VERSION, "message: version %u", (unsigned)(p[4] | p[5] << 8));
    type = p[6] | p[7] << 8;
    from = (int)(int32_t)dg__rd32(p + 8);
    to = (int)(int32_t)dg__rd32(p + 12);
    if (type < 1 || (type > DG_MSG_STOP && type < DG_MSG_USER))
        return dg__fail(DG_ERR_FORMAT, "message: unknown type %d", type);
    if (from < 0 || from >= t->n_peers || to < 0 || to >= t->n_peers)
        return dg__fail(DG_ERR_FORMAT, "message: peers %d -> %d outside 0..%d", from, to,
                        t->n_peers - 1);
    n_parts = dg__rd32(p + 40);
    if (n_parts > DG_MSG_MAX_PARTS)
        return dg__fail(DG_ERR_FORMAT, "message: %u parts (at most %d)", n_parts, DG_MSG_MAX_PARTS);
    if (len < DG_MSG_HEADER_BYTES + (size_t)DG_MSG_PART_BYTES * n_parts)
        return dg__fail(DG_ERR_FORMAT, "message: truncated part table");
    q = p + DG_MSG_HEADER_BYTES;
    for (i = 0; i < (int)n_parts; i++, q += DG_MSG_PART_BYTES) {
        uint64_t c = dg__rd64(q + 8);
        u = dg__rd32(q);
        if ((u != DG_PART_F32 && u != DG_PART_I32 && u != DG_PART_BYTES) || dg__rd32(q + 4) != 0)
            return dg__fail(DG_ERR_FORMAT, "message: part %d has kind %u", i, u);
        if (c > max_payload || dg__part_bytes((dg_part_kind)u, (size_t)c) > max_payload - payload)
            return dg__fail(DG_ERR_TOO_LARGE, "message: payload over the limit of %zu bytes",
                            max_payload);
        kinds[i] = (dg_part_kind)u;
        counts[i] = (size_t)c;
        payload += dg__part_bytes(kinds[i], counts[i]);
    }
    if (dg__rd64(p + 48) != payload ||
        len != DG_MSG_HEADER_BYTES + (size_t)DG_MSG_PART_BYTES * n_parts + payload)
        return dg__fail(DG_ERR_FORMAT, "message: length %zu does not match its %zu-byte payload",
                        len, payload);
    if (dg_crc32(0, p + DG_MSG_HEADER_BYTES, len - DG_MSG_HEADER_BYTES) != dg__rd32(p + 44))
        return dg__fail(DG_ERR_CHECKSUM, "message: CRC mismatch");
    if ((r = dg_msg_create(t, type, from, to, (int64_t)dg__rd64(p + 16), (int)n_parts, kinds,
                           counts, &m)) != DG_OK)
        return r;
    m->aux = (int64_t)dg__rd64(p + 24);
    u = dg__rd32(p + 32);
    memcpy(&m->stat[0], &u, 4);
    u = dg__rd32(p + 36);
    memcpy(&m->stat[1], &u, 4);
    for (i = 0; i < (int)n_parts; i++) {
        unsigned char *dst = (unsigned char *)m->part[i].data;
        if (kinds[i] == DG_PART_BYTES) {
            memcpy(dst, q, counts[i]);
            q += counts[i];
        } else {
            for (j = 0; j < counts[i]; j++, q += 4) {
                u = dg__rd32(q);
                memcpy(dst + 4 * j, &u, 4);
            }
        }
    }
    *out = m;
    return DG_OK;
}

DGDEF dg_result dg_transport_send(dg_transport *t, dg_msg *m)
{
    if (!t || !m) {
        if (m) dg_msg_free(t, m);
        return dg__fail(DG_ERR_ARG, "dg_transport_send: NULL argument");
    }
    if (m->from < 0 || m->from >= t->n_peers || m->to < 0 || m->to >= t->n_peers) {
        int from = m->from, to = m->to;
        dg_msg_free(t, m);
        return dg__fail(DG_ERR_ARG, "dg_transport_send: peers %d -> %d", from, to);
    }
    {
        dg_traffic *l = &t->links[(size_t)m->from * t->n_peers + m->to];
        __atomic_fetch_add(&l->messages, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->payload_bytes, (uint64_t)dg_msg_payload_bytes(m), __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->frame_bytes, (uint64_t)dg_msg_frame_bytes(m), __ATOMIC_RELAXED);
    }
    return t->send(t, m);
}

DGDEF dg_result dg_transport_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out)
{
    if (!out) return dg__fail(DG_ERR_ARG, "dg_transport_recv: out is NULL");
    *out = NULL;
    if (!t || self < 0 || self >= t->n_peers)
        return dg__fail(DG_ERR_ARG, "dg_transport_recv: peer %d", self);
    return t->recv(t, self, timeout_ms, out);
}

DGDEF int dg_transport_pending(dg_transport *t, int self)
{
    return t && t->pending && self >= 0 && self < t->n_peers ? t->pending(t, self) : -1;
}

DGDEF void dg_transport_close(dg_transport *t)
{
    if (t && t->close) t->close(t);
}

DGDEF dg_traffic dg_transport_traffic(const dg_transport *t, int from, int to)
{
    dg_traffic s = {0, 0, 0};
    int f, g;
    if (!t || !t->links) return s;
    for (f = 0; f < t->n_peers; f++) {
        if (from != DG_ANY_PEER && f != from) continue;
        for (g = 0; g < t->n_peers; g++) {
            const dg_traffic *l = &t->links[(size_t)f * t->n_peers + g];
            if (to != DG_ANY_PEER && g != to) continue;
            s.messages += __atomic_load_n(&l->messages, __ATOMIC_RELAXED);
            s.payload_bytes += __atomic_load_n(&l->payload_bytes, __ATOMIC_RELAXED);
            s.frame_bytes += __atomic_load_n(&l->frame_bytes, __ATOMIC_RELAXED);
        }
    }
    return s;
}

DGDEF void dg_transport_reset_traffic(dg_transport *t)
{
    size_t i;
    if (!t || !t->links) return;
    for (i = 0; i < (size_t)t->n_peers * t->n_peers; i++) {
        __atomic_store_n(&t->links[i].messages, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->links[i].payload_bytes, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->links[i].frame_bytes, 0, __ATOMIC_RELAXED);
    }
}

/* ---- in-process transport: one bounded FIFO inbox per peer ---- */

typedef struct dg__inbox {
    pthread_mutex_t mu;
    pthread_cond_t nonempty, nonfull;
    dg_msg *head, *tail;
    int count;
} dg__inbox;

typedef struct dg__inproc {
    dg_transport base;
    dg__inbox *box;
    int cap, send_timeout_ms;
} dg__inproc;

/* absolute time ms from now, for pthread_cond_timedwait (CLOCK_REALTIME,
   the condition variables' default clock, which TIME_UTC reads) */
static struct timespec dg__deadline(int ms)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static dg_result dg__inproc_send(dg_transport *t, dg_msg *m)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    dg__inbox *b = &ip->box[m->to];
    struct timespec dl = dg__deadline(ip->send_timeout_ms);
    pthread_mutex_lock(&b->mu);
    while (b->count >= ip->cap)
        if (pthread_cond_timedwait(&b->nonfull, &b->mu, &dl) == ETIMEDOUT) break;
    if (b->count >= ip->cap) {
        int to = m->to;
        pthread_mutex_unlock(&b->mu);
        dg_msg_free(t, m);
        return dg__fail(DG_ERR_TIMEOUT, "inproc: inbox of peer %d stayed full", to);
    }
    m->next = NULL;
    if (b->tail)
        b->tail->next = m;
    else
        b->head = m;
    b->tail = m;
    b->count++;
    pthread_cond_signal(&b->nonempty);
    pthread_mutex_unlock(&b->mu);
    return DG_OK;
}

static dg_result dg__inproc_recv(dg_transport *t, int self, int timeout_ms, dg_msg **out)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    dg__inbox *b = &ip->box[self];
    dg_msg *m;
    pthread_mutex_lock(&b->mu);
    if (!b->head && timeout_ms != 0) {
        if (timeout_ms < 0) {
            while (!b->head) pthread_cond_wait(&b->nonempty, &b->mu);
        } else {
            struct timespec dl = dg__deadline(timeout_ms);
            while (!b->head)
                if (pthread_cond_timedwait(&b->nonempty, &b->mu, &dl) == ETIMEDOUT) break;
        }
    }
    m = b->head;
    if (m) {
        b->head = m->next;
        if (!b->head) b->tail = NULL;
        b->count--;
        m->next = NULL;
        pthread_cond_signal(&b->nonfull);
    }
    pthread_mutex_unlock(&b->mu);
    *out = m;
    return m ? DG_OK : DG_ERR_TIMEOUT;
}

static int dg__inproc_pending(dg_transport *t, int self)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    int n;
    pthread_mutex_lock(&ip->box[self].mu);
    n = ip->box[self].count;
    pthread_mutex_unlock(&ip->box[self].mu);
    return n;
}

static void dg__inproc_close(dg_transport *t)
{
    dg__inproc *ip = (dg__inproc *)t->impl;
    int i;
    for (i = 0; i < t->n_peers; i++) {
        dg__inbox *b = &ip->box[i];
        while (b->head) {
            dg_msg *m = b->head;
            b->head = m->next;
            dg_msg_free(t, m);
        }
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->nonempty);
        pthread_cond_destroy(&b->nonfull);
    }
    dg__free(ip->box);
    dg_transport_base_free(t);
    dg__free(ip);
}

DGDEF dg_result dg_inproc_create(dg_transport **out, int n_peers, int queue_cap,
                                 int send_timeout_ms)
{
    dg__inproc *ip;
    dg_result r;
    int i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_inproc_create: out is NULL");
    *out = NULL;
    ip = (dg__inproc *)dg__calloc(1, sizeof *ip);
    if (!ip) return dg__fail(DG_ERR_NOMEM, "dg_inproc_create: no memory");
    if ((r = dg_transport_base_init(&ip->base, n_peers)) != DG_OK) {
        dg__free(ip);
        return r;
    }
    ip->box = (dg__inbox *)dg__calloc((size_t)n_peers, sizeof(dg__inbox));
    if (!ip->box) {
        dg_transport_base_free(&ip->base);
        dg__free(ip);
        return dg__fail(DG_ERR_NOMEM, "dg_inproc_create: no memory for %d inboxes", n_peers);
    }
    for (i = 0; i < n_peers; i++) {
        pthread_mutex_init(&ip->box[i].mu, NULL);
        pthread_cond_init(&ip->box[i].nonempty, NULL);
        pthread_cond_init(&ip->box[i].nonfull, NULL);
    }
    ip->cap = queue_cap > 0 ? queue_cap : 1024;
    ip->send_timeout_ms = send_timeout_ms > 0 ? send_timeout_ms : 10000;
    ip->base.send = dg__inproc_send;
    ip->base.recv = dg__inproc_recv;
    ip->base.pending = dg__inproc_pending;
    ip->base.close = dg__inproc_close;
    ip->base.impl = ip;
    *out = &ip->base;
    return DG_OK;
}

/* ==== dg_roles ==== */

DGDEF uint64_t dg_mdgan_seed(uint64_t seed, uint64_t stream, uint64_t index)
{
    dg_rng r = dg_rng_make(seed, stream, index);
    return dg_rng_u64(&r);
}

DGDEF dg_mdgan_config dg_mdgan_config_init(void)
{
    dg_mdgan_config c;
    memset(&c, 0, sizeof c);
    c.arch = DG_ARCH_DCGAN;
    c.z_dim = 100;
    c.batch = 64;
    c.k = 1;
    c.disc_steps = 1;
    c.fresh_real = 1;
    c.saturating = 0;
    c.local_epochs = 1;
    c.swap_optimizer = 1;
    c.lr_g = c.lr_d = 2e-4f;
    c.beta1 = 0.5f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.init_std = -1.0f;
    c.seed = 1;
    return c;
}

DGDEF int dg_mdgan_k(const dg_mdgan_config *cfg)
{
    int k;
    if (!cfg || cfg->n_workers < 1) return 0;
    if (cfg->k == DG_MDGAN_K_LOG2) {
        for (k = 0; (1 << k) < cfg->n_workers; k++) {
        }
        return k < 1 ? 1 : k;
    }
    return cfg->k >= 1 && cfg->k <= cfg->n_workers ? cfg->k : 0;
}

static float dg__init_std(dg_arch arch, float std) { return std >= 0.0f ? std : arch == DG_ARCH_DCGAN ? 0.02f : 0.0f; }

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void dg__log(void (*fn)(void *, const char *), void *user, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    if (!fn) return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fn(user, line);
}

/* G or D built, planned for max_batch and initialised from
   (seed, DG_MDGAN_STREAM_INIT, role). */
static dg_result dg__build_net(dg_net **out, int is_g, dg_arch arch, int z_dim, int n_classes,
                               int c, int h, int w, dg_pool *pool, int max_batch, uint64_t seed,
                               uint64_t role, float init_std)
{
    dg_result r = is_g ? dg_build_generator(out, arch, z_dim, n_classes, c, h, w)
                       : dg_build_discriminator(out, arch, c, h, w, 1 + n_classes);
    if (r != DG_OK) return r;
    if ((r = dg_net_plan(*out, pool, max_batch)) == DG_OK)
        r = dg_net_init(*out, dg_mdgan_seed(seed, DG_MDGAN_STREAM_INIT, role),
                        dg__init_std(arch, init_std));
    if (r != DG_OK) {
        dg_net_free(*out);
        *out = NULL;
    }
    return r;
}

/* Sends a message of parts (dst pointers filled by the caller afterwards is
   not possible: parts are copied from src here).  Used for control
   messages and copies of nets. */
static dg_result dg__send_copy(dg_transport *t, int type, int from, int to, int64_t it,
                               int64_t aux, int n, const dg_part_kind *kinds, const size_t *counts,
                               const void *const *src)
{
    dg_msg *m;
    dg_result r;
    int i;
    if ((r = dg_msg_create(t, type, from, to, it, n, kinds, counts, &m)) != DG_OK) return r;
    m->aux = aux;
    for (i = 0; i < n; i++)
        if (counts[i]) memcpy(m->part[i].data, src[i], dg__part_bytes(kinds[i], counts[i]));
    return dg_transport_send(t, m);
}

/* The parts of a net on the wire: parameters, then (if any) the non-trained
   state (batchnorm running statistics), then (if with_opt) the optimiser's
   flat state.  Returns the number of parts. */
static int dg__net_parts(dg_net *net, dg_optim *opt, int with_opt, dg_part_kind *kinds,
                         size_t *counts, const void **src)
{
    int n = 0;
    kinds[n] = DG_PART_F32;
    counts[n] = dg_net_param_count(net);
    src[n++] = dg_net_params(net);
    if (dg_net_state_count(net)) {
        kinds[n] = DG_PART_F32;
        counts[n] = dg_net_state_count(net);
        src[n++] = dg_net_state(net);
    }
    if (with_opt) {
        kinds[n] = DG_PART_F32;
        counts[n] = dg_optim_state_count(opt);
        src[n++] = opt->state;
    }
    return n;
}

/* Installs parts [first, first + n) of m written by dg__net_parts. */
static dg_result dg__net_install(dg_net *net, dg_optim *opt, int with_opt, const dg_msg *m,
                                 int first, int *used)
{
    const float *p = dg_msg_f32(m, first, dg_net_param_count(net)), *s = NULL, *o = NULL;
    int i = first + 1;
    if (p && dg_net_state_count(net)) s = dg_msg_f32(m, i++, dg_net_state_count(net));
    if (p && with_opt) o = dg_msg_f32(m, i++, dg_optim_state_count(opt));
    if (!p || (dg_net_state_count(net) && !s) || (with_opt && !o))
        return dg__fail(DG_ERR_FORMAT, "message %d from %d: parts do not fit the network", m->type,
                        m->from);
    memcpy(dg_net_params(net), p, sizeof(float) * dg_net_param_count(net));
    if (s) memcpy(dg_net_state(net), s, sizeof(float) * dg_net_state_count(net));
    if (o) memcpy(opt->state, o, sizeof(float) * dg_optim_state_count(opt));
    if (used) *used = i - first;
    return DG_OK;
}

/* ---- MD-GAN server ---- */

struct dg_mdgan_server {
    dg_mdgan_config cfg;
    dg_transport *t;
    dg_pool *pool;
    int k, d, row, slots, swap_every;
    dg_net *g;
    dg_optim opt;
    float *g_in, *dy;              /* k*b x row noise; k*b x d summed feedback */
    int32_t *labels;               /* k*b */
    const float *fake;             /* G's output of this iteration (k*b x d) */
    char *live, *joining;          /* per slot 0..slots */
    dg_msg **fb;                   /* feedback received this iteration, per slot */
    int open, missing;
    int64_t iteration, round;
    dg_mdgan_stats stats;
};

DGDEF dg_result dg_mdgan_server_create(dg_mdgan_server **out, const dg_mdgan_config *cfg,
                                       dg_transport *t, dg_pool *pool)
{
    dg_mdgan_server *s;
    dg_result r;
    size_t kb;
    int n;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: out is NULL");
    *out = NULL;
    if (!cfg || !t || !pool) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: NULL argument");
    if (cfg->n_workers < 1 || cfg->batch < 1 || cfg->z_dim < 1 || cfg->disc_steps < 1 ||
        cfg->n_classes < 0 || cfg->c < 1 || cfg->h < 1 || cfg->w < 1 || cfg->local_epochs < 0 ||
        cfg->swap_every < 0 || !dg_mdgan_k(cfg))
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: bad config (N %d, b %d, k %d, L %d)",
                        cfg->n_workers, cfg->batch, cfg->k, cfg->disc_steps);
    n = cfg->max_workers > cfg->n_workers ? cfg->max_workers : cfg->n_workers;
    if (t->n_peers < n + 1)
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_create: transport has %d peers, need %d",
                        t->n_peers, n + 1);
    s = (dg_mdgan_server *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_mdgan_server_create: no memory");
    s->cfg = *cfg;
    s->t = t;
    s->pool = pool;
    s->slots = n;
    s->k = dg_mdgan_k(cfg);
    s->d = cfg->c * cfg->h * cfg->w;
    s->row = cfg->z_dim + cfg->n_classes;
    kb = (size_t)s->k * cfg->batch;
    r = dg__build_net(&s->g, 1, cfg->arch, cfg->z_dim, cfg->n_classes, cfg->c, cfg->h, cfg->w,
                      pool, (int)kb, cfg->seed, 0, cfg->init_std);
    if (r == DG_OK)
        r = dg_optim_adam(&s->opt, dg_net_param_count(s->g), cfg->lr_g, cfg->beta1, cfg->beta2,
                          cfg->eps);
    if (r == DG_OK) {
        s->g_in = (float *)dg__calloc(kb * s->row, sizeof(float));
        s->dy = (float *)dg__calloc(kb * s->d, sizeof(float));
        s->labels = (int32_t *)dg__calloc(kb, sizeof(int32_t));
        s->live = (char *)dg__calloc((size_t)n + 1, 1);
        s->joining = (char *)dg__calloc((size_t)n + 1, 1);
        s->fb = (dg_msg **)dg__calloc((size_t)n + 1, sizeof(dg_msg *));
        if (!s->g_in || !s->dy || !s->labels || !s->live || !s->joining || !s->fb)
            r = dg__fail(DG_ERR_NOMEM, "dg_mdgan_server_create: no memory");
    }
    if (r != DG_OK) {
        dg_mdgan_server_free(s);
        return r;
    }
    for (n = 1; n <= cfg->n_workers; n++) s->live[n] = 1;
    s->stats.n_live = cfg->n_workers;
    *out = s;
    return DG_OK;
}

DGDEF void dg_mdgan_server_free(dg_mdgan_server *s)
{
    int n;
    if (!s) return;
    for (n = 0; s->fb && n <= s->slots; n++) dg_msg_free(s->t, s->fb[n]);
    dg_net_free(s->g);
    dg_optim_free(&s->opt);
    dg__free(s->g_in);
    dg__free(s->dy);
    dg__free(s->labels);
    dg__free(s->live);
    dg__free(s->joining);
    dg__free(s->fb);
    dg__free(s);
}

/* The period of the swaps in iterations.  The server holds no data, so it
   cannot know m: swap_every = 0 (m*E/b) is resolved by whoever knows the
   shards (dg_mdgan_run from the partition); a server created directly with
   swap_every = 0 never swaps. */
static int dg__swap_period(const dg_mdgan_config *c) { return c->local_epochs ? c->swap_every : 0; }

/* Announces a joiner (a DISC copy from a live donor), then sends
   X^(g) = X_(n mod k) and X^(d) = X_((n+1) mod k) to every live worker. */
DGDEF dg_result dg_mdgan_server_begin(dg_mdgan_server *s)
{
    const dg_mdgan_config *c;
    int64_t t;
    double t0;
    size_t bd, b;
    int n, j;
    dg_result r;
    dg_rng rng;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_begin: NULL");
    if (s->open) return dg__fail(DG_ERR_STATE, "dg_mdgan_server_begin: iteration still open");
    c = &s->cfg;
    t = s->iteration;
    t0 = dg__now();
    b = (size_t)c->batch;
    bd = b * s->d;
    for (n = 1; n <= s->slots; n++) {
        int live[1024], nl = 0, i, donor;
        if (!s->joining[n]) continue;
        s->joining[n] = 0;
        for (i = 1; i <= s->slots && nl < 1024; i++)
            if (s->live[i]) live[nl++] = i;
        if (!nl) {
            dg__log(c->log, c->log_user, "iteration %lld: worker %d cannot join, no live worker",
                    (long long)t, n);
            continue;
        }
        rng = dg_rng_make(c->seed, DG_MDGAN_STREAM_JOIN, (uint64_t)t * 65536u + (uint64_t)n);
        donor = live[dg_rng_below(&rng, (uint32_t)nl)];
        if ((r = dg__send_copy(s->t, DG_MSG_COPY_DISC, DG_PEER_SERVER, donor, t, n, 0, NULL, NULL,
                               NULL)) != DG_OK)
            return r;
        s->live[n] = 1;
        dg__log(c->log, c->log_user, "iteration %lld: worker %d joins with a copy of D_%d",
                (long long)t, n, donor);
    }
    rng = dg_rng_make(c->seed, DG_MDGAN_STREAM_NOISE, (uint64_t)t);
    for (j = 0; j < s->k; j++)
        dg_gan_sample_input(&rng, c->batch, c->z_dim, c->n_classes, s->g_in + j * b * s->row,
                            s->labels + j * b);
    if ((r = dg_net_forward(s->g, s->g_in, s->k * c->batch, 1, &s->fake)) != DG_OK) return r;
    s->missing = 0;
    for (n = 1; n <= s->slots; n++) {
        dg_part_kind kinds[4] = {DG_PART_F32, DG_PART_F32, DG_PART_I32, DG_PART_I32};
        size_t counts[4];
        dg_msg *m;
        int jg = n % s->k, jd = (n + 1) % s->k;
        if (!s->live[n]) continue;
        counts[0] = counts[1] = bd;
        counts[2] = counts[3] = b;
        if ((r = dg_msg_create(s->t, DG_MSG_GEN_BATCHES, DG_PEER_SERVER, n, t,
                               c->n_classes ? 4 : 2, kinds, counts, &m)) != DG_OK)
            return r;
        memcpy(m->part[0].data, s->fake + jg * bd, 4 * bd);
        memcpy(m->part[1].data, s->fake + jd * bd, 4 * bd);
        if (c->n_classes) {
            memcpy(m->part[2].data, s->labels + jg * b, 4 * b);
            memcpy(m->part[3].data, s->labels + jd * b, 4 * b);
        }
        if (dg_transport_send(s->t, m) != DG_OK) {
            s->live[n] = 0; /* unreachable: dropped now */
            s->stats.n_dropped++;
            dg__log(c->log, c->log_user, "iteration %lld: worker %d unreachable, dropped (%s)",
                    (long long)t, n, dg_last_error());
            continue;
        }
        s->missing++;
    }
    s->open = 1;
    s->stats.compute_s += dg__now() - t0;
    if (!s->missing) return dg_mdgan_server_expire(s);
    return DG_OK;
}

/* Draws a uniformly random derangement of a[0..n) (n >= 2) by rejection:
   shuffle until no element stays in place (about e tries on average). */
static void dg__derangement(dg_rng *rng, const int *a, int n, int *to)
{
    uint32_t idx[1024];
    int i, ok;
    do {
        for (i = 0; i < n; i++) idx[i] = (uint32_t)i;
        dg_rng_shuffle(rng, idx, (size_t)n);
        for (ok = 1, i = 0; i < n; i++)
            if (idx[i] == (uint32_t)i) ok = 0;
    } while (!ok);
    for (i = 0; i < n; i++) to[i] = a[idx[i]];
}

/* Ends the iteration: feedback of each generated batch summed in worker
   order, scaled once by 1/(N_live*b), one backward of G, one Adam step,
   then the swap announcement when it is due. */
static dg_result dg__mdgan_server_finish(dg_mdgan_server *s)
{
    const dg_mdgan_config *c = &s->cfg;
    size_t bd = (size_t)c->batch * s->d, i;
    double t0 = dg__now(), dl = 0.0, gl = 0.0;
    int n, j, n_got = 0, period;
    dg_result r = DG_OK;
    for (n = 1; n <= s->slots; n++) {
        if (s->live[n] && !s->fb[n]) {
            s->live[n] = 0;
            s->stats.n_dropped++;
            dg__log(c->log, c->log_user,
                    "iteration %lld: worker %d missed the feedback barrier, dropped",
                    (long long)s->iteration, n);
        }
        if (s->fb[n]) n_got++;
    }
    if (n_got) {
        float scale = 1.0f / ((float)n_got * (float)c->batch);
        for (j = 0; j < s->k; j++) {
            float *dst = s->dy + j * bd;
            int first = 1;
            for (n = 1; n <= s->slots; n++) {
                const float *f;
                if (!s->fb[n] || n % s->k != j) continue;
                f = (const float *)s->fb[n]->part[0].data;
                if (first)
                    memcpy(dst, f, 4 * bd);
                else
                    for (i = 0; i < bd; i++) dst[i] += f[i];
                first = 0;
            }
            if (first)
                memset(dst, 0, 4 * bd);
            else
                for (i = 0; i < bd; i++) dst[i] *= scale;
        }
        for (n = 1; n <= s->slots; n++)
            if (s->fb[n]) {
                dl += s->fb[n]->stat[0];
                gl += s->fb[n]->stat[1];
            }
        dg_net_zero_grad(s->g);
        r = dg_net_backward(s->g, s->dy, NULL);
        if (r == DG_OK) r = dg_optim_step(&s->opt, s->pool, dg_net_params(s->g), dg_net_grads(s->g));
        s->stats.d_loss = (float)(dl / n_got);
        s->stats.g_loss = (float)(gl / n_got);
    } else {
        dg__log(c->log, c->log_user, "iteration %lld: no feedback at all, G unchanged",
                (long long)s->iteration);
    }
    for (n = 0; n <= s->slots; n++) {
        dg_msg_free(s->t, s->fb[n]);
        s->fb[n] = NULL;
    }
    s->open = 0;
    s->missing = 0;
    s->stats.n_live = n_got;
    s->iteration++;
    s->stats.iteration = s->iteration;
    period = dg__swap_period(c);
    if (r == DG_OK && period > 0 && s->iteration % period == 0) {
        int live[1024], to[1024], nl = 0;
        for (n = 1; n <= s->slots && nl < 1024; n++)
            if (s->live[n]) live[nl++] = n;
        if (nl >= 2) {
            dg_rng rng = dg_rng_make(c->seed, DG_MDGAN_STREAM_SWAP, (uint64_t)s->round);
            dg__derangement(&rng, live, nl, to);
            for (n = 0; n < nl && r == DG_OK; n++)
                r = dg__send_copy(s->t, DG_MSG_SWAP, DG_PEER_SERVER, live[n], s->iteration - 1,
                                  to[n], 0, NULL, NULL, NULL);
            s->stats.swaps++;
        }
        s->round++;
    }
    s->stats.compute_s += dg__now() - t0;
    return r;
}

DGDEF dg_result dg_mdgan_server_handle(dg_mdgan_server *s, dg_msg *m)
{
    if (!s || !m) {
        dg_msg_free(s ? s->t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_handle: NULL argument");
    }
    if (m->type != DG_MSG_FEEDBACK || !s->open || m->iteration != s->iteration || m->from < 1 ||
        m->from > s->slots || !s->live[m->from] || s->fb[m->from]) {
        /* late feedback of a dropped worker, or a stray message: ignored */
        dg__log(s->cfg.log, s->cfg.log_user,
                "iteration %lld: ignored message type %d of iteration %lld from %d",
                (long long)s->iteration, m->type, (long long)m->iteration, m->from);
        dg_msg_free(s->t, m);
        return DG_OK;
    }
    if (!dg_msg_f32(m, 0, (size_t)s->cfg.batch * s->d)) {
        int from = m->from;
        dg_msg_free(s->t, m);
        return dg__fail(DG_ERR_FORMAT, "feedback from %d has the wrong shape", from);
    }
    s->fb[m->from] = m;
    if (--s->missing == 0) return dg__mdgan_server_finish(s);
    return DG_OK;
}

DGDEF dg_result dg_mdgan_server_expire(dg_mdgan_server *s)
{
    if (!s) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_expire: NULL");
    if (!s->open) return DG_OK;
    return dg__mdgan_server_finish(s);
}

DGDEF dg_result dg_mdgan_server_poll(dg_mdgan_server *s, int timeout_ms)
{
    double start = dg__now();
    if (!s) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_poll: NULL");
    while (s->open) {
        dg_msg *m;
        int wait = timeout_ms;
        double left;
        dg_result r;
        if (s->cfg.barrier_timeout_ms > 0) {
            left = s->cfg.barrier_timeout_ms - 1e3 * (dg__now() - start);
            if (left <= 0) return dg_mdgan_server_expire(s);
            if (wait < 0 || wait > (int)left) wait = (int)left + 1;
        }
        if (dg_transport_recv(s->t, DG_PEER_SERVER, wait, &m) != DG_OK) {
            if (s->cfg.barrier_timeout_ms > 0 && timeout_ms != 0) continue;
            return DG_ERR_TIMEOUT;
        }
        if ((r = dg_mdgan_server_handle(s, m)) != DG_OK) return r;
        if (timeout_ms > 0 && 1e3 * (dg__now() - start) > timeout_ms && s->open)
            return DG_ERR_TIMEOUT;
    }
    return DG_OK;
}

DGDEF int dg_mdgan_server_missing(const dg_mdgan_server *s) { return s && s->open ? s->missing : 0; }

DGDEF dg_result dg_mdgan_server_add_worker(dg_mdgan_server *s, int id)
{
    if (!s || id < 1 || id > s->slots || s->live[id])
        return dg__fail(DG_ERR_ARG, "dg_mdgan_server_add_worker: slot %d is not free", id);
    s->joining[id] = 1;
    return DG_OK;
}

DGDEF dg_result dg_mdgan_server_stop(dg_mdgan_server *s)
{
    int n;
    dg_result r = DG_OK;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_stop: NULL");
    for (n = 1; n <= s->slots; n++)
        if (s->live[n] && r == DG_OK)
            r = dg__send_copy(s->t, DG_MSG_STOP, DG_PEER_SERVER, n, s->iteration, 0, 0, NULL, NULL,
                              NULL);
    return r;
}

DGDEF int dg_mdgan_server_is_live(const dg_mdgan_server *s, int id)
{
    return s && id >= 1 && id <= s->slots && s->live[id];
}
DGDEF const dg_mdgan_stats *dg_mdgan_server_stats(const dg_mdgan_server *s) { return s ? &s->stats : NULL; }
DGDEF dg_net *dg_mdgan_server_generator(dg_mdgan_server *s) { return s ? s->g : NULL; }
DGDEF dg_optim *dg_mdgan_server_optim(dg_mdgan_server *s) { return s ? &s->opt : NULL; }

/* Checkpoint: "DGMC" | u32 version 1 | i64 iteration | i64 swap round |
   u64 net bytes | u32 CRC-32 of the 28 bytes before | dg_net_save_mem(G,
   Adam) (which has its own CRC). */
#define DG__CKPT_HEAD 36

static void dg__ckpt_head(unsigned char *p, const char *magic, int64_t a, int64_t b, uint64_t len)
{
    memcpy(p, magic, 4);
    dg__le32(p + 4, 1);
    dg__le64(p + 8, (uint64_t)a);
    dg__le64(p + 16, (uint64_t)b);
    dg__le64(p + 24, len);
    dg__le32(p + 32, dg_crc32(0, p, 32));
}

static dg_result dg__ckpt_read(const unsigned char *p, size_t len, const char *magic, int64_t *a,
                               int64_t *b, size_t *net_len)
{
    if (len < DG__CKPT_HEAD || memcmp(p, magic, 4) != 0)
        return dg__fail(DG_ERR_FORMAT, "checkpoint: not a %.4s checkpoint", magic);
    if (dg__rd32(p + 32) != dg_crc32(0, p, 32))
        return dg__fail(DG_ERR_CHECKSUM, "checkpoint: header CRC mismatch");
    if (dg__rd32(p + 4) != 1) return dg__fail(DG_ERR_VERSION, "checkpoint: version %u", dg__rd32(p + 4));
    *a = (int64_t)dg__rd64(p + 8);
    *b = (int64_t)dg__rd64(p + 16);
    *net_len = (size_t)dg__rd64(p + 24);
    if (*net_len != len - DG__CKPT_HEAD || *a < 0 || *b < 0)
        return dg__fail(DG_ERR_FORMAT, "checkpoint: inconsistent header");
    return DG_OK;
}

DGDEF size_t dg_mdgan_server_save_size(const dg_mdgan_server *s)
{
    return s ? DG__CKPT_HEAD + dg_net_save_size(s->g, &s->opt) : 0;
}

DGDEF dg_result dg_mdgan_server_save_mem(const dg_mdgan_server *s, void *buf, size_t cap,
                                         size_t *written)
{
    size_t n;
    dg_result r;
    if (!s || !buf) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_save_mem: NULL argument");
    if (s->open) return dg__fail(DG_ERR_STATE, "dg_mdgan_server_save_mem: iteration open");
    if (cap < dg_mdgan_server_save_size(s))
        return dg__fail(DG_ERR_TOO_LARGE, "dg_mdgan_server_save_mem: need %zu bytes",
                        dg_mdgan_server_save_size(s));
    r = dg_net_save_mem(s->g, &s->opt, (unsigned char *)buf + DG__CKPT_HEAD,
                        cap - DG__CKPT_HEAD, &n);
    if (r != DG_OK) return r;
    dg__ckpt_head((unsigned char *)buf, "DGMC", s->iteration, s->round, n);
    if (written) *written = DG__CKPT_HEAD + n;
    return DG_OK;
}

DGDEF dg_result dg_mdgan_server_load_mem(dg_mdgan_server *s, const void *buf, size_t len)
{
    int64_t it, round;
    size_t n;
    dg_result r;
    if (!s || !buf) return dg__fail(DG_ERR_ARG, "dg_mdgan_server_load_mem: NULL argument");
    if (s->open) return dg__fail(DG_ERR_STATE, "dg_mdgan_server_load_mem: iteration open");
    if ((r = dg__ckpt_read((const unsigned char *)buf, len, "DGMC", &it, &round, &n)) != DG_OK)
        return r;
    if ((r = dg_net_load_mem(s->g, &s->opt, (const unsigned char *)buf + DG__CKPT_HEAD, n)) != DG_OK)
        return r;
    s->iteration = it;
    s->round = round;
    s->stats.iteration = it;
    return DG_OK;
}

/* ---- MD-GAN worker ---- */

struct dg_mdgan_worker {
    dg_mdgan_config cfg;
    int id, d;
    dg_transport *t;
    dg_pool *pool;
    dg_net *disc;
    dg_optim opt;
    dg_batcher batcher;
    float *real;
    int32_t *real_labels;
    int awaiting;            /* sent or will receive a D: hold GEN until it arrives */
    dg_msg *deferred;        /* a GEN_BATCHES held while awaiting */
    dg_msg *early_disc;      /* a DISC that came before its SWAP announcement */
    int64_t crash_at, iterations;
    int dead, stopped;
    double compute_s;
};

DGDEF dg_result dg_mdgan_worker_create(dg_mdgan_worker **out, const dg_mdgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count, int joining)
{
    dg_mdgan_worker *w;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_create: out is NULL");
    *out = NULL;
    if (!cfg || !t || !pool || !ds || !idx || !count || id < 1 || id >= t->n_peers ||
        cfg->batch < 1 || cfg->disc_steps < 1)
        return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_create: bad arguments (worker %d)", id);
    if (ds->c != cfg->c || ds->h != cfg->h || ds->w != cfg->w ||
        (cfg->n_classes && ds->n_classes != cfg->n_classes))
        return dg__fail(DG_ERR_CONFIG, "dg_mdgan_worker_create: data %dx%dx%d (%d classes) vs "
                        "config %dx%dx%d (%d classes)", ds->c, ds->h, ds->w, ds->n_classes, cfg->c,
                        cfg->h, cfg->w, cfg->n_classes);
    w = (dg_mdgan_worker *)dg__calloc(1, sizeof *w);
    if (!w) return dg__fail(DG_ERR_NOMEM, "dg_mdgan_worker_create: no memory");
    w->cfg = *cfg;
    w->id = id;
    w->t = t;
    w->pool = pool;
    w->d = cfg->c * cfg->h * cfg->w;
    w->crash_at = INT64_MAX;
    w->awaiting = joining != 0;
    r = dg__build_net(&w->disc, 0, cfg->arch, cfg->z_dim, cfg->n_classes, cfg->c, cfg->h, cfg->w,
                      pool, cfg->batch, cfg->seed, (uint64_t)id, cfg->init_std);
    if (r == DG_OK)
        r = dg_optim_adam(&w->opt, dg_net_param_count(w->disc), cfg->lr_d, cfg->beta1, cfg->beta2,
                          cfg->eps);
    if (r == DG_OK)
        r = dg_batcher_init(&w->batcher, ds, idx, count, cfg->batch,
                            dg_mdgan_seed(cfg->seed, DG_MDGAN_STREAM_DATA, (uint64_t)id));
    if (r == DG_OK) {
        w->real = (float *)dg__calloc((size_t)cfg->batch * w->d, sizeof(float));
        w->real_labels = (int32_t *)dg__calloc((size_t)cfg->batch, sizeof(int32_t));
        if (!w->real || !w->real_labels) r = dg__fail(DG_ERR_NOMEM, "dg_mdgan_worker_create: no memory");
    }
    if (r != DG_OK) {
        dg_mdgan_worker_free(w);
        return r;
    }
    *out = w;
    return DG_OK;
}

DGDEF void dg_mdgan_worker_free(dg_mdgan_worker *w)
{
    if (!w) return;
    dg_msg_free(w->t, w->deferred);
    dg_msg_free(w->t, w->early_disc);
    dg_net_free(w->disc);
    dg_optim_free(&w->opt);
    dg_batcher_free(&w->batcher);
    dg__free(w->real);
    dg__free(w->real_labels);
    dg__free(w);
}

/* One worker iteration: L discriminator steps on (real, X^(d)), then the
   error feedback F_n on X^(g), written into the FEEDBACK message. */
static dg_result dg__mdgan_worker_iterate(dg_mdgan_worker *w, dg_msg *gen)
{
    const dg_mdgan_config *c = &w->cfg;
    size_t bd = (size_t)c->batch * w->d;
    const float *xg = dg_msg_f32(gen, 0, bd), *xd = dg_msg_f32(gen, 1, bd);
    const int32_t *lg = c->n_classes ? dg_msg_i32(gen, 2, (size_t)c->batch) : NULL;
    const int32_t *ld = c->n_classes ? dg_msg_i32(gen, 3, (size_t)c->batch) : NULL;
    int32_t *rl = c->n_classes ? w->real_labels : NULL;
    dg_part_kind kind = DG_PART_F32;
    float d_loss = 0.0f, g_loss = 0.0f;
    double t0 = dg__now();
    dg_msg *fb = NULL;
    dg_result r = DG_OK;
    int l;
    if (!xg || !xd || (c->n_classes && (!lg || !ld))) {
        dg_msg_free(w->t, gen);
        return dg__fail(DG_ERR_FORMAT, "worker %d: generated batches of the wrong shape", w->id);
    }
    for (l = 0; l < c->disc_steps && r == DG_OK; l++) {
        if (l == 0 || c->fresh_real) r = dg_batcher_next(&w->batcher, w->real, rl);
        if (r == DG_OK)
            r = dg_gan_d_step(w->disc, &w->opt, w->pool, w->real, rl, xd, ld, c->batch,
                              c->n_classes, &d_loss);
    }
    if (r == DG_OK)
        r = dg_msg_create(w->t, DG_MSG_FEEDBACK, w->id, DG_PEER_SERVER, gen->iteration, 1, &kind,
                          &bd, &fb);
    if (r == DG_OK)
        r = dg_gan_g_feedback(w->disc, xg, lg, c->batch, c->n_classes, c->saturating, 1.0f,
                              (float *)fb->part[0].data, &g_loss);
    dg_msg_free(w->t, gen);
    w->compute_s += dg__now() - t0;
    if (r != DG_OK) {
        dg_msg_free(w->t, fb);
        return r;
    }
    fb->stat[0] = d_loss;
    fb->stat[1] = g_loss;
    w->iterations++;
    return dg_transport_send(w->t, fb);
}

static dg_result dg__mdgan_worker_install(dg_mdgan_worker *w, dg_msg *m)
{
    dg_result r = dg__net_install(w->disc, &w->opt, w->cfg.swap_optimizer, m, 0, NULL);
    if (r == DG_OK && w->cfg.swap_optimizer) w->opt.t = m->aux;
    dg_msg_free(w->t, m);
    return r;
}

static dg_result dg__mdgan_worker_send_disc(dg_mdgan_worker *w, int to, int64_t it)
{
    dg_part_kind kinds[3];
    size_t counts[3];
    const void *src[3];
    int n = dg__net_parts(w->disc, &w->opt, w->cfg.swap_optimizer, kinds, counts, src);
    if (to < 1 || to >= w->t->n_peers || to == w->id)
        return dg__fail(DG_ERR_FORMAT, "worker %d: swap partner %d", w->id, to);
    return dg__send_copy(w->t, DG_MSG_DISC, w->id, to, it, w->opt.t, n, kinds, counts, src);
}

DGDEF dg_result dg_mdgan_worker_handle(dg_mdgan_worker *w, dg_msg *m)
{
    dg_result r = DG_OK;
    if (!w || !m) {
        dg_msg_free(w ? w->t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_handle: NULL argument");
    }
    if (!w->dead && m->type == DG_MSG_GEN_BATCHES && m->iteration >= w->crash_at) {
        w->dead = 1;
        dg__log(w->cfg.log, w->cfg.log_user, "worker %d: crashed at iteration %lld", w->id,
                (long long)m->iteration);
    }
    if (w->dead || w->stopped) {
        dg_msg_free(w->t, m);
        return DG_OK;
    }
    switch (m->type) {
    case DG_MSG_GEN_BATCHES:
        if (w->awaiting) {
            /* a newer iteration supersedes a held one: the server went on
               without this worker (over sockets, after its deadline) */
            if (w->deferred) dg_msg_free(w->t, w->deferred);
            w->deferred = m;
            return DG_OK;
        }
        return dg__mdgan_worker_iterate(w, m);
    case DG_MSG_SWAP:
        r = dg__mdgan_worker_send_disc(w, (int)m->aux, m->iteration);
        dg_msg_free(w->t, m);
        if (r != DG_OK) return r;
        if (w->early_disc) {
            dg_msg *d = w->early_disc;
            w->early_disc = NULL;
            return dg__mdgan_worker_install(w, d);
        }
        w->awaiting = 1;
        return DG_OK;
    case DG_MSG_DISC:
        if (!w->awaiting) { /* came before its announcement: keep it */
            if (w->early_disc) {
                dg_msg_free(w->t, m);
                return dg__fail(DG_ERR_STATE, "worker %d: two discriminators in one swap", w->id);
            }
            w->early_disc = m;
            return DG_OK;
        }
        w->awaiting = 0;
        if ((r = dg__mdgan_worker_install(w, m)) != DG_OK) return r;
        if (w->deferred) {
            dg_msg *g = w->deferred;
            w->deferred = NULL;
            return dg__mdgan_worker_iterate(w, g);
        }
        return DG_OK;
    case DG_MSG_COPY_DISC:
        r = dg__mdgan_worker_send_disc(w, (int)m->aux, m->iteration);
        dg_msg_free(w->t, m);
        return r;
    case DG_MSG_STOP:
        w->stopped = 1;
        dg_msg_free(w->t, m);
        return DG_OK;
    default:
        r = dg__fail(DG_ERR_FORMAT, "worker %d: unexpected message type %d from %d", w->id,
                     m->type, m->from);
        dg_msg_free(w->t, m);
        return r;
    }
}

DGDEF dg_result dg_mdgan_worker_poll(dg_mdgan_worker *w, int timeout_ms)
{
    dg_msg *m;
    dg_result r;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_poll: NULL");
    while (dg_transport_recv(w->t, w->id, timeout_ms, &m) == DG_OK) {
        if ((r = dg_mdgan_worker_handle(w, m)) != DG_OK) return r;
        timeout_ms = 0;
    }
    return DG_OK;
}

DGDEF void dg_mdgan_worker_crash_at(dg_mdgan_worker *w, int64_t t)
{
    if (w) w->crash_at = t;
}
DGDEF int dg_mdgan_worker_holding(const dg_mdgan_worker *w) { return w && w->awaiting && w->deferred; }

DGDEF dg_result dg_mdgan_worker_skip_swap(dg_mdgan_worker *w)
{
    dg_msg *g;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_skip_swap: NULL");
    w->awaiting = 0;
    if (!w->deferred) return DG_OK;
    g = w->deferred;
    w->deferred = NULL;
    return dg__mdgan_worker_iterate(w, g);
}
DGDEF int dg_mdgan_worker_alive(const dg_mdgan_worker *w) { return w && !w->dead; }
DGDEF int dg_mdgan_worker_stopped(const dg_mdgan_worker *w) { return w && w->stopped; }
DGDEF int64_t dg_mdgan_worker_iterations(const dg_mdgan_worker *w) { return w ? w->iterations : 0; }
DGDEF double dg_mdgan_worker_compute_seconds(const dg_mdgan_worker *w) { return w ? w->compute_s : 0.0; }
DGDEF dg_net *dg_mdgan_worker_discriminator(dg_mdgan_worker *w) { return w ? w->disc : NULL; }
DGDEF dg_optim *dg_mdgan_worker_optim(dg_mdgan_worker *w) { return w ? &w->opt : NULL; }

/* Worker checkpoint: "DGMW" header (a = batcher epoch, b = position), then
   dg_net_save_mem(D, Adam). */
DGDEF size_t dg_mdgan_worker_save_size(const dg_mdgan_worker *w)
{
    return w ? DG__CKPT_HEAD + dg_net_save_size(w->disc, &w->opt) : 0;
}

DGDEF dg_result dg_mdgan_worker_save_mem(const dg_mdgan_worker *w, void *buf, size_t cap,
                                         size_t *written)
{
    size_t n;
    dg_result r;
    if (!w || !buf) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_save_mem: NULL argument");
    if (w->awaiting || w->deferred)
        return dg__fail(DG_ERR_STATE, "dg_mdgan_worker_save_mem: a swap is in flight");
    if (cap < dg_mdgan_worker_save_size(w))
        return dg__fail(DG_ERR_TOO_LARGE, "dg_mdgan_worker_save_mem: need %zu bytes",
                        dg_mdgan_worker_save_size(w));
    r = dg_net_save_mem(w->disc, &w->opt, (unsigned char *)buf + DG__CKPT_HEAD,
                        cap - DG__CKPT_HEAD, &n);
    if (r != DG_OK) return r;
    dg__ckpt_head((unsigned char *)buf, "DGMW", (int64_t)w->batcher.epoch, (int64_t)w->batcher.pos, n);
    if (written) *written = DG__CKPT_HEAD + n;
    return DG_OK;
}

DGDEF dg_result dg_mdgan_worker_load_mem(dg_mdgan_worker *w, const void *buf, size_t len)
{
    int64_t epoch, pos;
    size_t n;
    dg_result r;
    if (!w || !buf) return dg__fail(DG_ERR_ARG, "dg_mdgan_worker_load_mem: NULL argument");
    if ((r = dg__ckpt_read((const unsigned char *)buf, len, "DGMW", &epoch, &pos, &n)) != DG_OK)
        return r;
    if ((size_t)pos > w->batcher.n) return dg__fail(DG_ERR_CONFIG, "worker checkpoint: shard differs");
    if ((r = dg_net_load_mem(w->disc, &w->opt, (const unsigned char *)buf + DG__CKPT_HEAD, n)) != DG_OK)
        return r;
    return dg_batcher_seek(&w->batcher, (uint64_t)epoch, (size_t)pos);
}

/* ---- FL-GAN ---- */

DGDEF dg_flgan_config dg_flgan_config_init(void)
{
    dg_flgan_config c;
    memset(&c, 0, sizeof c);
    c.arch = DG_ARCH_DCGAN;
    c.z_dim = 100;
    c.batch = 64;
    c.local_epochs = 1;
    c.lr = 2e-4f;
    c.beta1 = 0.5f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.init_std = -1.0f;
    c.seed = 1;
    return c;
}

/* A whole GAN (the FL-GAN server's averaged model or a worker's local one). */
typedef struct dg__gan_pair {
    dg_net *g, *d;
    dg_optim og, od;
} dg__gan_pair;

static dg_result dg__pair_create(dg__gan_pair *p, const dg_flgan_config *c, dg_pool *pool)
{
    dg_result r;
    memset(p, 0, sizeof *p);
    r = dg__build_net(&p->g, 1, c->arch, c->z_dim, c->n_classes, c->c, c->h, c->w, pool, c->batch,
                      c->seed, 0, c->init_std);
    if (r == DG_OK)
        r = dg__build_net(&p->d, 0, c->arch, c->z_dim, c->n_classes, c->c, c->h, c->w, pool,
                          c->batch, c->seed, 1, c->init_std);
    if (r == DG_OK)
        r = dg_optim_adam(&p->og, dg_net_param_count(p->g), c->lr, c->beta1, c->beta2, c->eps);
    if (r == DG_OK)
        r = dg_optim_adam(&p->od, dg_net_param_count(p->d), c->lr, c->beta1, c->beta2, c->eps);
    return r;
}

static void dg__pair_free(dg__gan_pair *p)
{
    dg_net_free(p->g);
    dg_net_free(p->d);
    dg_optim_free(&p->og);
    dg_optim_free(&p->od);
    memset(p, 0, sizeof *p);
}

/* Sends (w [, state] [, Adam], θ [, state] [, Adam]) as one MODEL message. */
static dg_result dg__pair_send(dg__gan_pair *p, int with_opt, dg_transport *t, int type, int from,
                               int to, int64_t it, int64_t aux, const float *stat)
{
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    const void *src[DG_MSG_MAX_PARTS];
    dg_msg *m;
    dg_result r;
    int n = dg__net_parts(p->g, &p->og, with_opt, kinds, counts, src), i;
    n += dg__net_parts(p->d, &p->od, with_opt, kinds + n, counts + n, src + n);
    if ((r = dg_msg_create(t, type, from, to, it, n, kinds, counts, &m)) != DG_OK) return r;
    for (i = 0; i < n; i++) memcpy(m->part[i].data, src[i], 4 * counts[i]);
    m->aux = aux;
    if (stat) {
        m->stat[0] = stat[0];
        m->stat[1] = stat[1];
    }
    return dg_transport_send(t, m);
}

static dg_result dg__pair_install(dg__gan_pair *p, int with_opt, const dg_msg *m)
{
    int used = 0;
    dg_result r = dg__net_install(p->g, &p->og, with_opt, m, 0, &used);
    if (r == DG_OK) r = dg__net_install(p->d, &p->od, with_opt, m, used, NULL);
    return r;
}

struct dg_flgan_server {
    dg_flgan_config cfg;
    dg_transport *t;
    dg_pool *pool;
    dg__gan_pair model;
    char *live;
    dg_msg **up;
    int open, missing;
    int64_t round;
    dg_flgan_stats stats;
};

DGDEF dg_result dg_flgan_server_create(dg_flgan_server **out, const dg_flgan_config *cfg,
                                       dg_transport *t, dg_pool *pool)
{
    dg_flgan_server *s;
    dg_result r;
    int n;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_flgan_server_create: out is NULL");
    *out = NULL;
    if (!cfg || !t || !pool || cfg->n_workers < 1 || cfg->batch < 1 || cfg->local_epochs < 0 ||
        t->n_peers < cfg->n_workers + 1)
        return dg__fail(DG_ERR_ARG, "dg_flgan_server_create: bad arguments");
    s = (dg_flgan_server *)dg__calloc(1, sizeof *s);
    if (!s) return dg__fail(DG_ERR_NOMEM, "dg_flgan_server_create: no memory");
    s->cfg = *cfg;
    s->t = t;
    s->pool = pool;
    r = dg__pair_create(&s->model, cfg, pool);
    if (r == DG_OK) {
        s->live = (char *)dg__calloc((size_t)cfg->n_workers + 1, 1);
        s->up = (dg_msg **)dg__calloc((size_t)cfg->n_workers + 1, sizeof(dg_msg *));
        if (!s->live || !s->up) r = dg__fail(DG_ERR_NOMEM, "dg_flgan_server_create: no memory");
    }
    if (r != DG_OK) {
        dg_flgan_server_free(s);
        return r;
    }
    for (n = 1; n <= cfg->n_workers; n++) s->live[n] = 1;
    s->stats.n_live = cfg->n_workers;
    *out = s;
    return DG_OK;
}

DGDEF void dg_flgan_server_free(dg_flgan_server *s)
{
    int n;
    if (!s) return;
    for (n = 0; s->up && n <= s->cfg.n_workers; n++) dg_msg_free(s->t, s->up[n]);
    dg__pair_free(&s->model);
    dg__free(s->live);
    dg__free(s->up);
    dg__free(s);
}

DGDEF dg_result dg_flgan_server_begin(dg_flgan_server *s)
{
    int n;
    double t0;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_flgan_server_begin: NULL");
    if (s->open) return dg__fail(DG_ERR_STATE, "dg_flgan_server_begin: round still open");
    t0 = dg__now();
    s->missing = 0;
    for (n = 1; n <= s->cfg.n_workers; n++) {
        if (!s->live[n]) continue;
        if (dg__pair_send(&s->model, s->cfg.average_optimizer, s->t, DG_MSG_MODEL, DG_PEER_SERVER,
                          n, s->round, 0, NULL) != DG_OK) {
            s->live[n] = 0;
            s->stats.n_dropped++;
            continue;
        }
        s->missing++;
    }
    s->open = 1;
    s->stats.compute_s += dg__now() - t0;
    return s->missing ? DG_OK : dg_flgan_server_expire(s);
}

/* Weighted average of the uploaded models, weights m_n / sum m, in worker
   order, into the server's model (params, state, and Adam if sent). */
static dg_result dg__flgan_server_finish(dg_flgan_server *s)
{
    const dg_flgan_config *c = &s->cfg;
    double total = 0.0, dl = 0.0, gl = 0.0, t0 = dg__now();
    int n, i, n_got = 0, first = 1;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    const void *src[DG_MSG_MAX_PARTS];
    float *dst[DG_MSG_MAX_PARTS];
    int parts = dg__net_parts(s->model.g, &s->model.og, c->average_optimizer, kinds, counts, src);
    parts += dg__net_parts(s->model.d, &s->model.od, c->average_optimizer, kinds + parts,
                           counts + parts, src + parts);
    for (i = 0; i < parts; i++) dst[i] = (float *)src[i];
    for (n = 1; n <= c->n_workers; n++) {
        if (s->live[n] && !s->up[n]) {
            s->live[n] = 0;
            s->stats.n_dropped++;
            dg__log(c->log, c->log_user, "round %lld: worker %d missed the barrier, dropped",
                    (long long)s->round, n);
        }
        if (s->up[n]) {
            n_got++;
            total += (double)s->up[n]->aux;
        }
    }
    for (n = 1; n <= c->n_workers && n_got; n++) {
        const dg_msg *m = s->up[n];
        float wgt;
        size_t j;
        if (!m) continue;
        wgt = (float)((double)m->aux / total);
        for (i = 0; i < parts; i++) {
            const float *x = (const float *)m->part[i].data;
            if (first)
                for (j = 0; j < counts[i]; j++) dst[i][j] = wgt * x[j];
            else
                for (j = 0; j < counts[i]; j++) dst[i][j] += wgt * x[j];
        }
        first = 0;
        dl += m->stat[0];
        gl += m->stat[1];
    }
    if (n_got) {
        s->stats.d_loss = (float)(dl / n_got);
        s->stats.g_loss = (float)(gl / n_got);
    }
    for (n = 0; n <= c->n_workers; n++) {
        dg_msg_free(s->t, s->up[n]);
        s->up[n] = NULL;
    }
    s->open = 0;
    s->missing = 0;
    s->round++;
    s->stats.rounds = s->round;
    s->stats.n_live = n_got;
    s->stats.compute_s += dg__now() - t0;
    return DG_OK;
}

DGDEF dg_result dg_flgan_server_handle(dg_flgan_server *s, dg_msg *m)
{
    if (!s || !m) {
        dg_msg_free(s ? s->t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_flgan_server_handle: NULL argument");
    }
    if (m->type != DG_MSG_MODEL || !s->open || m->iteration != s->round || m->from < 1 ||
        m->from > s->cfg.n_workers || !s->live[m->from] || s->up[m->from] || m->aux <= 0) {
        dg_msg_free(s->t, m);
        return DG_OK;
    }
    {
        /* check the shapes once here so the average can trust them */
        dg__gan_pair *p = &s->model;
        dg_part_kind kinds[DG_MSG_MAX_PARTS];
        size_t counts[DG_MSG_MAX_PARTS];
        const void *src[DG_MSG_MAX_PARTS];
        int parts = dg__net_parts(p->g, &p->og, s->cfg.average_optimizer, kinds, counts, src), i;
        parts += dg__net_parts(p->d, &p->od, s->cfg.average_optimizer, kinds + parts,
                               counts + parts, src + parts);
        for (i = 0; i < parts; i++)
            if (!dg_msg_f32(m, i, counts[i])) break;
        if (i < parts || m->n_parts != parts) {
            int from = m->from;
            dg_msg_free(s->t, m);
            return dg__fail(DG_ERR_FORMAT, "FL-GAN model from %d has the wrong shape", from);
        }
    }
    s->up[m->from] = m;
    if (--s->missing == 0) return dg__flgan_server_finish(s);
    return DG_OK;
}

DGDEF dg_result dg_flgan_server_expire(dg_flgan_server *s)
{
    if (!s) return dg__fail(DG_ERR_ARG, "dg_flgan_server_expire: NULL");
    return s->open ? dg__flgan_server_finish(s) : DG_OK;
}

DGDEF dg_result dg_flgan_server_poll(dg_flgan_server *s, int timeout_ms)
{
    double start = dg__now();
    if (!s) return dg__fail(DG_ERR_ARG, "dg_flgan_server_poll: NULL");
    while (s->open) {
        dg_msg *m;
        dg_result r;
        int wait = timeout_ms;
        if (s->cfg.barrier_timeout_ms > 0) {
            double left = s->cfg.barrier_timeout_ms - 1e3 * (dg__now() - start);
            if (left <= 0) return dg_flgan_server_expire(s);
            if (wait < 0 || wait > (int)left) wait = (int)left + 1;
        }
        if (dg_transport_recv(s->t, DG_PEER_SERVER, wait, &m) != DG_OK) {
            if (s->cfg.barrier_timeout_ms > 0 && timeout_ms != 0) continue;
            return DG_ERR_TIMEOUT;
        }
        if ((r = dg_flgan_server_handle(s, m)) != DG_OK) return r;
    }
    return DG_OK;
}

DGDEF int dg_flgan_server_missing(const dg_flgan_server *s) { return s && s->open ? s->missing : 0; }
DGDEF dg_result dg_flgan_server_stop(dg_flgan_server *s)
{
    int n;
    dg_result r = DG_OK;
    if (!s) return dg__fail(DG_ERR_ARG, "dg_flgan_server_stop: NULL");
    for (n = 1; n <= s->cfg.n_workers && r == DG_OK; n++)
        if (s->live[n])
            r = dg__send_copy(s->t, DG_MSG_STOP, DG_PEER_SERVER, n, s->round, 0, 0, NULL, NULL, NULL);
    return r;
}
DGDEF const dg_flgan_stats *dg_flgan_server_stats(const dg_flgan_server *s) { return s ? &s->stats : NULL; }
DGDEF dg_net *dg_flgan_server_generator(dg_flgan_server *s) { return s ? s->model.g : NULL; }
DGDEF dg_net *dg_flgan_server_discriminator(dg_flgan_server *s) { return s ? s->model.d : NULL; }

struct dg_flgan_worker {
    dg_flgan_config cfg;
    int id, d, iters_per_round;
    size_t shard;
    dg_transport *t;
    dg_pool *pool;
    dg__gan_pair gan;
    dg_batcher batcher;
    float *real, *g_in, *dx;
    int32_t *real_labels, *fake_labels;
    int64_t local_iter, crash_at;
    int dead, stopped;
    double compute_s;
};

DGDEF dg_result dg_flgan_worker_create(dg_flgan_worker **out, const dg_flgan_config *cfg, int id,
                                       dg_transport *t, dg_pool *pool, const dg_dataset *ds,
                                       const uint32_t *idx, size_t count)
{
    dg_flgan_worker *w;
    dg_result r;
    size_t b;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_flgan_worker_create: out is NULL");
    *out = NULL;
    if (!cfg || !t || !pool || !ds || !idx || !count || id < 1 || id >= t->n_peers ||
        cfg->batch < 1 || ds->c != cfg->c || ds->h != cfg->h || ds->w != cfg->w ||
        (cfg->n_classes && ds->n_classes != cfg->n_classes))
        return dg__fail(DG_ERR_ARG, "dg_flgan_worker_create: bad arguments (worker %d)", id);
    w = (dg_flgan_worker *)dg__calloc(1, sizeof *w);
    if (!w) return dg__fail(DG_ERR_NOMEM, "dg_flgan_worker_create: no memory");
    w->cfg = *cfg;
    w->id = id;
    w->t = t;
    w->pool = pool;
    w->shard = count;
    w->d = cfg->c * cfg->h * cfg->w;
    w->crash_at = INT64_MAX;
    w->iters_per_round = cfg->local_iters > 0
                             ? cfg->local_iters
                             : (int)floor((double)count * cfg->local_epochs / cfg->batch + 0.5);
    if (w->iters_per_round < 1) w->iters_per_round = 1;
    b = (size_t)cfg->batch;
    r = dg__pair_create(&w->gan, cfg, pool);
    if (r == DG_OK)
        r = dg_batcher_init(&w->batcher, ds, idx, count, cfg->batch,
                            dg_mdgan_seed(cfg->seed, DG_MDGAN_STREAM_DATA, (uint64_t)id));
    if (r == DG_OK) {
        w->real = (float *)dg__calloc(b * w->d, sizeof(float));
        w->dx = (float *)dg__calloc(b * w->d, sizeof(float));
        w->g_in = (float *)dg__calloc(b * (size_t)(cfg->z_dim + cfg->n_classes), sizeof(float));
        w->real_labels = (int32_t *)dg__calloc(b, sizeof(int32_t));
        w->fake_labels = (int32_t *)dg__calloc(b, sizeof(int32_t));
        if (!w->real || !w->dx || !w->g_in || !w->real_labels || !w->fake_labels)
            r = dg__fail(DG_ERR_NOMEM, "dg_flgan_worker_create: no memory");
    }
    if (r != DG_OK) {
        dg_flgan_worker_free(w);
        return r;
    }
    *out = w;
    return DG_OK;
}

DGDEF void dg_flgan_worker_free(dg_flgan_worker *w)
{
    if (!w) return;
    dg__pair_free(&w->gan);
    dg_batcher_free(&w->batcher);
    dg__free(w->real);
    dg__free(w->dx);
    dg__free(w->g_in);
    dg__free(w->real_labels);
    dg__free(w->fake_labels);
    dg__free(w);
}

/* One standalone GAN iteration on the shard: noise (seed, FL noise + id,
   local iteration), X = G(z), D step on (real, X), feedback of X with scale
   1/b, G backward, Adam on G. */
static dg_result dg__flgan_local_step(dg_flgan_worker *w, float *d_loss, float *g_loss)
{
    const dg_flgan_config *c = &w->cfg;
    dg_rng rng = dg_rng_make(c->seed, DG_FLGAN_STREAM_NOISE + (uint64_t)w->id,
                             (uint64_t)w->local_iter);
    int32_t *rl = c->n_classes ? w->real_labels : NULL, *fl = c->n_classes ? w->fake_labels : NULL;
    const float *fake;
    dg_result r;
    dg_gan_sample_input(&rng, c->batch, c->z_dim, c->n_classes, w->g_in, w->fake_labels);
    if ((r = dg_net_forward(w->gan.g, w->g_in, c->batch, 1, &fake)) != DG_OK) return r;
    if ((r = dg_batcher_next(&w->batcher, w->real, rl)) != DG_OK) return r;
    if ((r = dg_gan_d_step(w->gan.d, &w->gan.od, w->pool, w->real, rl, fake, fl, c->batch,
                           c->n_classes, d_loss)) != DG_OK)
        return r;
    if ((r = dg_gan_g_feedback(w->gan.d, fake, fl, c->batch, c->n_classes, c->saturating,
                               1.0f / c->batch, w->dx, g_loss)) != DG_OK)
        return r;
    dg_net_zero_grad(w->gan.g);
    if ((r = dg_net_backward(w->gan.g, w->dx, NULL)) != DG_OK) return r;
    w->local_iter++;
    return dg_optim_step(&w->gan.og, w->pool, dg_net_params(w->gan.g), dg_net_grads(w->gan.g));
}

DGDEF dg_result dg_flgan_worker_handle(dg_flgan_worker *w, dg_msg *m)
{
    float stat[2] = {0.0f, 0.0f};
    double t0;
    dg_result r;
    int i;
    if (!w || !m) {
        dg_msg_free(w ? w->t : NULL, m);
        return dg__fail(DG_ERR_ARG, "dg_flgan_worker_handle: NULL argument");
    }
    if (m->type == DG_MSG_MODEL && m->iteration >= w->crash_at && !w->dead) {
        w->dead = 1;
        dg__log(w->cfg.log, w->cfg.log_user, "worker %d: crashed at round %lld", w->id,
                (long long)m->iteration);
    }
    if (w->dead || w->stopped || m->type != DG_MSG_MODEL) {
        if (m->type == DG_MSG_STOP) w->stopped = 1;
        dg_msg_free(w->t, m);
        return DG_OK;
    }
    t0 = dg__now();
    r = dg__pair_install(&w->gan, w->cfg.average_optimizer, m);
    for (i = 0; i < w->iters_per_round && r == DG_OK; i++) r = dg__flgan_local_step(w, &stat[0], &stat[1]);
    w->compute_s += dg__now() - t0;
    if (r == DG_OK)
        r = dg__pair_send(&w->gan, w->cfg.average_optimizer, w->t, DG_MSG_MODEL, w->id,
                          DG_PEER_SERVER, m->iteration, (int64_t)w->shard, stat);
    dg_msg_free(w->t, m);
    return r;
}

DGDEF dg_result dg_flgan_worker_poll(dg_flgan_worker *w, int timeout_ms)
{
    dg_msg *m;
    dg_result r;
    if (!w) return dg__fail(DG_ERR_ARG, "dg_flgan_worker_poll: NULL");
    while (dg_transport_recv(w->t, w->id, timeout_ms, &m) == DG_OK) {
        if ((r = dg_flgan_worker_handle(w, m)) != DG_OK) return r;
        timeout_ms = 0;
    }
    return DG_OK;
}

DGDEF void dg_flgan_worker_crash_at(dg_flgan_worker *w, int64_t round)
{
    if (w) w->crash_at = round;
}
DGDEF double dg_flgan_worker_compute_seconds(const dg_flgan_worker *w) { return w ? w->compute_s : 0.0; }
DGDEF int dg_flgan_worker_stopped(const dg_flgan_worker *w) { return w && w->stopped; }
DGDEF int dg_flgan_worker_iters_per_round(const dg_flgan_worker *w) { return w ? w->iters_per_round : 0; }

/* ---- the in-process driver ---- */

struct dg_mdgan_run {
    dg_mdgan_config cfg;
    dg_pool *pool;
    dg_transport *t;
    dg_mdgan_server *server;
    dg_mdgan_worker **workers;  /* slots 1..max */
    int slots;
    dg_fault *joins;
    int n_joins;
    dg_result task_error;       /* first error of a worker task (atomic-free: guarded) */
    pthread_mutex_t mu;
};

DGDEF dg_result dg_mdgan_run_create(dg_mdgan_run **out, const dg_mdgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes, const dg_fault *joins,
                                    int n_joins)
{
    dg_mdgan_run *r;
    dg_result e;
    int n, i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: out is NULL");
    *out = NULL;
    if (!cfg || !pool || !ds || !part || n_crashes < 0 || n_joins < 0 ||
        (n_crashes && !crashes) || (n_joins && !joins) || cfg->n_workers < 1)
        return dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: bad arguments");
    r = (dg_mdgan_run *)dg__calloc(1, sizeof *r);
    if (!r) return dg__fail(DG_ERR_NOMEM, "dg_mdgan_run_create: no memory");
    pthread_mutex_init(&r->mu, NULL);
    r->cfg = *cfg;
    r->slots = cfg->max_workers > cfg->n_workers ? cfg->max_workers : cfg->n_workers;
    for (i = 0; i < n_joins; i++)
        if (joins[i].worker > r->slots) r->slots = joins[i].worker;
    r->cfg.max_workers = r->slots;
    if (part->n_workers < r->slots) {
        dg_mdgan_run_free(r);
        return dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: partition has %d shards for %d slots",
                        part->n_workers, r->slots);
    }
    if (r->cfg.swap_every == 0 && r->cfg.local_epochs > 0) { /* m*E/b, m the mean shard size */
        double m = (double)part->n / part->n_workers;
        r->cfg.swap_every = (int)floor(m * r->cfg.local_epochs / r->cfg.batch + 0.5);
        if (r->cfg.swap_every < 1) r->cfg.swap_every = 1;
    }
    r->pool = pool;
    e = dg_inproc_create(&r->t, r->slots + 1, 4 * r->slots + 64, 0);
    if (e == DG_OK) e = dg_mdgan_server_create(&r->server, &r->cfg, r->t, pool);
    if (e == DG_OK) {
        r->workers = (dg_mdgan_worker **)dg__calloc((size_t)r->slots + 1, sizeof(dg_mdgan_worker *));
        r->joins = (dg_fault *)dg__calloc((size_t)n_joins + 1, sizeof(dg_fault));
        if (!r->workers || !r->joins) e = dg__fail(DG_ERR_NOMEM, "dg_mdgan_run_create: no memory");
    }
    for (n = 1; e == DG_OK && n <= r->slots; n++) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(part, n - 1, &count);
        e = dg_mdgan_worker_create(&r->workers[n], &r->cfg, n, r->t, pool, ds, idx, count,
                                   n > cfg->n_workers);
    }
    for (i = 0; e == DG_OK && i < n_crashes; i++) {
        if (crashes[i].worker < 1 || crashes[i].worker > r->slots)
            e = dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: crash of worker %d", crashes[i].worker);
        else
            dg_mdgan_worker_crash_at(r->workers[crashes[i].worker], crashes[i].iteration);
    }
    for (i = 0; e == DG_OK && i < n_joins; i++) {
        if (joins[i].worker <= cfg->n_workers)
            e = dg__fail(DG_ERR_ARG, "dg_mdgan_run_create: joiner %d is not above N = %d",
                         joins[i].worker, cfg->n_workers);
        r->joins[i] = joins[i];
    }
    r->n_joins = n_joins;
    if (e != DG_OK) {
        dg_mdgan_run_free(r);
        return e;
    }
    *out = r;
    return DG_OK;
}

DGDEF void dg_mdgan_run_free(dg_mdgan_run *r)
{
    int n;
    if (!r) return;
    for (n = 1; r->workers && n <= r->slots; n++) dg_mdgan_worker_free(r->workers[n]);
    dg_mdgan_server_free(r->server);
    dg_transport_close(r->t);
    dg__free(r->workers);
    dg__free(r->joins);
    pthread_mutex_destroy(&r->mu);
    dg__free(r);
}

static void dg__run_error(pthread_mutex_t *mu, dg_result *slot, dg_result e)
{
    if (e == DG_OK) return;
    pthread_mutex_lock(mu);
    if (*slot == DG_OK) *slot = e;
    pthread_mutex_unlock(mu);
}

static void dg__mdgan_worker_task(void *arg, int task, int thread)
{
    dg_mdgan_run *r = (dg_mdgan_run *)arg;
    int id = task + 1;
    (void)thread;
    if (dg_transport_pending(r->t, id) > 0)
        dg__run_error(&r->mu, &r->task_error, dg_mdgan_worker_poll(r->workers[id], 0));
}

/* True when no inbox holds a message: nothing can happen any more. */
static int dg__quiet(dg_transport *t)
{
    int p;
    for (p = 0; p < t->n_peers; p++)
        if (dg_transport_pending(t, p) > 0) return 0;
    return 1;
}

DGDEF dg_result dg_mdgan_run_iteration(dg_mdgan_run *r)
{
    dg_result e;
    int i;
    if (!r) return dg__fail(DG_ERR_ARG, "dg_mdgan_run_iteration: NULL");
    for (i = 0; i < r->n_joins; i++)
        if (r->joins[i].iteration == r->server->iteration)
            if ((e = dg_mdgan_server_add_worker(r->server, r->joins[i].worker)) != DG_OK) return e;
    if ((e = dg_mdgan_server_begin(r->server)) != DG_OK) return e;
    while (r->server->open) {
        dg_parallel_for(r->pool, r->slots, dg__mdgan_worker_task, r);
        if (r->task_error != DG_OK) return r->task_error;
        e = dg_mdgan_server_poll(r->server, 0);
        if (e != DG_OK && e != DG_ERR_TIMEOUT) return e;
        if (r->server->open && dg__quiet(r->t)) /* the missing ones are dead: tell the server */
            if ((e = dg_mdgan_server_expire(r->server)) != DG_OK) return e;
    }
    return DG_OK;
}

DGDEF dg_result dg_mdgan_run_settle(dg_mdgan_run *r)
{
    if (!r) return dg__fail(DG_ERR_ARG, "dg_mdgan_run_settle: NULL");
    while (!dg__quiet(r->t)) {
        dg_msg *m;
        dg_parallel_for(r->pool, r->slots, dg__mdgan_worker_task, r);
        if (r->task_error != DG_OK) return r->task_error;
        while (dg_transport_recv(r->t, DG_PEER_SERVER, 0, &m) == DG_OK)
            dg_mdgan_server_handle(r->server, m); /* stray messages: ignored */
    }
    return DG_OK;
}

DGDEF dg_transport *dg_mdgan_run_transport(dg_mdgan_run *r) { return r ? r->t : NULL; }
DGDEF dg_mdgan_server *dg_mdgan_run_server(dg_mdgan_run *r) { return r ? r->server : NULL; }
DGDEF dg_mdgan_worker *dg_mdgan_run_worker(dg_mdgan_run *r, int id)
{
    return r && id >= 1 && id <= r->slots ? r->workers[id] : NULL;
}
DGDEF double dg_mdgan_run_worker_compute(const dg_mdgan_run *r)
{
    double s = 0.0;
    int n;
    for (n = 1; r && n <= r->slots; n++) s += r->workers[n]->compute_s;
    return s;
}

struct dg_flgan_run {
    dg_flgan_config cfg;
    dg_pool *pool;
    dg_transport *t;
    dg_flgan_server *server;
    dg_flgan_worker **workers;
    dg_result task_error;
    pthread_mutex_t mu;
};

DGDEF dg_result dg_flgan_run_create(dg_flgan_run **out, const dg_flgan_config *cfg,
                                    dg_pool *pool, const dg_dataset *ds, const dg_partition *part,
                                    const dg_fault *crashes, int n_crashes)
{
    dg_flgan_run *r;
    dg_result e;
    int n, i;
    if (!out) return dg__fail(DG_ERR_ARG, "dg_flgan_run_create: out is NULL");
    *out = NULL;
    if (!cfg || !pool || !ds || !part || cfg->n_workers < 1 || part->n_workers < cfg->n_workers ||
        n_crashes < 0 || (n_crashes && !crashes))
        return dg__fail(DG_ERR_ARG, "dg_flgan_run_create: bad arguments");
    r = (dg_flgan_run *)dg__calloc(1, sizeof *r);
    if (!r) return dg__fail(DG_ERR_NOMEM, "dg_flgan_run_create: no memory");
    pthread_mutex_init(&r->mu, NULL);
    r->cfg = *cfg;
    r->pool = pool;
    e = dg_inproc_create(&r->t, cfg->n_workers + 1, 4 * cfg->n_workers + 64, 0);
    if (e == DG_OK) e = dg_flgan_server_create(&r->server, cfg, r->t, pool);
    if (e == DG_OK) {
        r->workers = (dg_flgan_worker **)dg__calloc((size_t)cfg->n_workers + 1, sizeof(void *));
        if (!r->workers) e = dg__fail(DG_ERR_NOMEM, "dg_flgan_run_create: no memory");
    }
    for (n = 1; e == DG_OK && n <= cfg->n_workers; n++) {
        size_t count;
        const uint32_t *idx = dg_partition_worker(part, n - 1, &count);
        e = dg_flgan_worker_create(&r->workers[n], cfg, n, r->t, pool, ds, idx, count);
    }
    for (i = 0; e == DG_OK && i < n_crashes; i++) {
        if (crashes[i].worker < 1 || crashes[i].worker > cfg->n_workers)
            e = dg__fail(DG_ERR_ARG, "dg_flgan_run_create: crash of worker %d", crashes[i].worker);
        else
            dg_flgan_worker_crash_at(r->workers[crashes[i].worker], crashes[i].iteration);
    }
    if (e != DG_OK) {
        dg_flgan_run_free(r);
        return e;
    }
    *out = r;
    return DG_OK;
}

DGDEF void dg_flgan_run_free(dg_flgan_run *r)
{
    int n;
    if (!r) return;
    for (n = 1; r->workers && n <= r->cfg.n_workers; n++) dg_flgan_worker_free(r->workers[n]);
    dg_flgan_server_free(r->server);
    dg_transport_close(r->t);
    dg__free(r->workers);
    pthread_mutex_destroy(&r->mu);
    dg__free(r);
}

static void dg__flgan_worker_task(void *arg, int task, int thread)
{
    dg_flgan_run *r = (dg_flgan_run *)arg;
    int id = task + 1;
    (void)thread;
    if (dg_transport_pending(r->t, id) > 0)
        dg__run_error(&r->mu, &r->task_error, dg_flgan_worker_poll(r->workers[id], 0));
}

DGDEF dg_result dg_flgan_run_round(dg_flgan_run *r)
{
    dg_result e;
    if (!r) return dg__fail(DG_ERR_ARG, "dg_flgan_run_round: NULL");
    if ((e = dg_flgan_server_begin(r->server)) != DG_OK) return e;
    while (r->server->open) {
        dg_parallel_for(r->pool, r->cfg.n_workers, dg__flgan_worker_task, r);
        if (r->task_error != DG_OK) return r->task_error;
        e = dg_flgan_server_poll(r->server, 0);
        if (e != DG_OK && e != DG_ERR_TIMEOUT) return e;
        if (r->server->open && dg__quiet(r->t))
            if ((e = dg_flgan_server_expire(r->server)) != DG_OK) return e;
    }
    {
        int n;
        double it = 0.0;
        for (n = 1; n <= r->cfg.n_workers; n++) it += (double)r->workers[n]->local_iter;
        r->server->stats.iterations = (int64_t)(it / r->cfg.n_workers + 0.5);
    }
    return DG_OK;
}

DGDEF dg_transport *dg_flgan_run_transport(dg_flgan_run *r) { return r ? r->t : NULL; }
DGDEF dg_flgan_server *dg_flgan_run_server(dg_flgan_run *r) { return r ? r->server : NULL; }
DGDEF dg_flgan_worker *dg_flgan_run_worker(dg_flgan_run *r, int id)
{
    return r && id >= 1 && id <= r->cfg.n_workers ? r->workers[id] : NULL;
}
DGDEF double dg_flgan_run_worker_compute(const dg_flgan_run *r)
{
    double s = 0.0;
    int n;
    for (n = 1; r && n <= r->cfg.n_workers; n++) s += r->workers[n]->compute_s;
    return s;
}

#ifdef __cplusplus
}
#endif
#endif /* DISTGAN_IMPLEMENTATION && !DG_WIP_MDGAN_IMPL */
