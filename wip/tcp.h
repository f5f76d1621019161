/* wip/tcp.h: the TCP transport of distgan.h (the second implementation of
   the dg_transport interface of wip/mdgan.h), written apart while the other
   sections are in progress.  Part 1 (declarations) and part 2
   (implementation) are pasted verbatim into distgan.h after the transport
   section; until then include this file after wip/mdgan.h:

      #define DISTGAN_IMPLEMENTATION
      #include "distgan.h"
      #include "wip/data.h"
      #include "wip/gan.h"
      #include "wip/mdgan.h"
      #include "wip/tcp.h"

   Uses the dg_config section of distgan.h, libc, pthreads and POSIX
   sockets (<sys/socket.h>, <netinet/in.h>, <poll.h>).  The wire format is
   documented byte by byte in docs/protocol.md. */

/* ======================================================================
   Part 1: public declarations
   ====================================================================== */
#ifndef DG_WIP_TCP_DECL
#define DG_WIP_TCP_DECL

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_tcp ==== */

/* The roles of MD-GAN and FL-GAN talk through a dg_transport; this section
   carries that interface over TCP so that one server process and N worker
   processes, possibly on different machines, run the same roles unchanged
   and produce bit-identical parameters to an in-process run.

   Walkthrough.  Everything on the wire is a frame: a 32-byte little-endian
   header (magic "DGTP", protocol version, message type, flags, sender id,
   CRC-32 of the payload, iteration, payload length) and the payload.
   dg_frame_header_decode checks every field before anything is allocated,
   and a payload longer than the configured maximum is refused from its
   header alone, so a hostile peer can make us hold at most one maximum-size
   buffer per authenticated connection and 1 KiB per unauthenticated one.

   A connection starts with a handshake (HELLO, CHALLENGE, AUTH, WELCOME or
   REFUSE): the client states its protocol version, role, worker id,
   listening port for peer-to-peer swaps and a SHA-256 hash of the run
   configuration (network, hyperparameters, dataset shape); the server
   answers with a fresh nonce, the client proves that it knows the shared
   secret with HMAC-SHA256 over both nonces and its HELLO, and the server
   proves it back.  Any mismatch is answered with a REFUSE frame that names
   the reason (and the peer prints it) before the connection closes.  With
   no secret configured, the server listens on loopback only unless told
   otherwise (allow_insecure).

   Each endpoint (the server's, or a worker's) owns one I/O thread that runs
   a poll() loop over its listening socket, its connections and a wake-up
   pipe: it accepts, runs handshakes, reads frames through a per-connection
   state machine (header, then payload) with bounded buffers, sends
   heartbeats and drops connections that are idle, slow (a frame or a
   handshake that does not complete in time) or malformed.  Complete frames
   go to a bounded receive queue that dg_transport's recv pops with a
   timeout; sends are written directly by the calling thread (no copy) with
   a deadline.  Workers listen too: the server tells every worker the
   addresses of the live workers, so at a swap round theta travels worker to
   worker over a connection the sender dials itself; the server never sees
   it.  Worker joins and losses reach the role as events, so a dead worker is
   dropped from the iteration (N_live) and a restarted one rejoins.

   Nothing here prints or exits: messages go to an optional log callback.
   The one piece of process-wide state is the SIGINT/SIGTERM flag of
   dg_tcp_install_signal_handlers (a volatile sig_atomic_t, the only thing a
   signal handler may portably write), which the drivers poll to checkpoint
   and shut down gracefully. */

#define DG_TCP_MAGIC 0x50544744u        /* "DGTP" read as a little-endian u32 */
#define DG_TCP_VERSION 1u
#define DG_TCP_HEADER_SIZE 32
/* Default upper bound on a payload (a configured maximum overrides it). */
#define DG_TCP_DEFAULT_MAX_MESSAGE ((uint64_t)256 << 20)
/* Upper bound on any payload before the handshake completes. */
#define DG_TCP_MAX_HANDSHAKE 1024u
#define DG_TCP_SECRET_MAX 256

/* Frame types.  1..0x7F belong to the roles (their message types travel
   untouched); 0xF0.. are the transport's own. */
enum {
    DG_TCP_APP_MAX = 0x7F,
    DG_TCP_HELLO = 0xF0,      /* client -> server: who I am */
    DG_TCP_CHALLENGE = 0xF1,  /* server -> client: nonce */
    DG_TCP_AUTH = 0xF2,       /* client -> server: HMAC proof */
    DG_TCP_WELCOME = 0xF3,    /* server -> client: accepted, server's proof */
    DG_TCP_REFUSE = 0xF4,     /* either way: code + reason, then close */
    DG_TCP_HEARTBEAT = 0xF5,  /* either way, empty */
    DG_TCP_BYE = 0xF6,        /* either way: graceful close (u32 code) */
    DG_TCP_PEERS = 0xF7       /* server -> worker: addresses of live workers */
};
/* Header flag bits; any other bit set is a format error. */
#define DG_TCP_FLAG_LAST 0x01u      /* BYE: the run is over (not a crash) */
#define DG_TCP_FLAGS_KNOWN 0x01u

/* Roles in the HELLO. */
enum { DG_TCP_ROLE_WORKER = 1, DG_TCP_ROLE_PEER = 2 };

/* ---- SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) ---- */
typedef struct dg_sha256_ctx {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char buf[64];
    unsigned n;
} dg_sha256_ctx;

DGDEF void dg_sha256_init(dg_sha256_ctx *s);
DGDEF void dg_sha256_update(dg_sha256_ctx *s, const void *data, size_t n);
DGDEF void dg_sha256_final(dg_sha256_ctx *s, unsigned char out[32]);
DGDEF void dg_sha256(const void *data, size_t n, unsigned char out[32]);
DGDEF void dg_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t n,
                          unsigned char out[32]);
/* Constant-time comparison of n bytes: 0 when equal. */
DGDEF int dg_tcp_memneq(const void *a, const void *b, size_t n);

/* ---- frames ----
   Header, little-endian:  0 u32 magic | 4 u16 version | 6 u8 type |
   7 u8 flags | 8 u32 sender (peer id: 0 server, n worker) | 12 u32 CRC-32 of the payload |
   16 u64 iteration | 24 u64 payload length. */
typedef struct dg_frame_header {
    uint16_t version;
    uint8_t type, flags;
    uint32_t sender;
    uint32_t crc;
    uint64_t iteration;
    uint64_t length;
} dg_frame_header;

DGDEF void dg_frame_header_encode(const dg_frame_header *h, unsigned char out[DG_TCP_HEADER_SIZE]);
/* Field by field: magic (DG_ERR_FORMAT), version (DG_ERR_VERSION; h is
   still filled so that the caller can name the version), type and flags
   (DG_ERR_FORMAT), length <= max_length (DG_ERR_TOO_LARGE). */
DGDEF dg_result dg_frame_header_decode(const unsigned char in[DG_TCP_HEADER_SIZE],
                                       uint64_t max_length, dg_frame_header *h);
/* DG_ERR_CHECKSUM when the payload's CRC-32 differs from the header's. */
DGDEF dg_result dg_frame_check_payload(const dg_frame_header *h, const void *payload);
/* Header for a payload: fills magic/version/crc/length. */
DGDEF dg_frame_header dg_frame_make(uint8_t type, uint8_t flags, uint32_t sender,
                                    uint64_t iteration, const void *payload, uint64_t length);

/* ---- handshake payloads ---- */
#define DG_TCP_NONCE 32
typedef struct dg_tcp_hello {
    uint8_t role;                   /* DG_TCP_ROLE_* */
    uint32_t worker_id;
    uint16_t listen_port;           /* 0: this peer does not listen */
    uint16_t min_version, max_version;
    unsigned char config_hash[32];
    unsigned char nonce[DG_TCP_NONCE];
} dg_tcp_hello;
#define DG_TCP_HELLO_SIZE 76

typedef struct dg_tcp_welcome {
    unsigned char proof[32];        /* HMAC of the server side */
    uint32_t n_workers;
    uint64_t iteration;             /* where the server's run stands */
} dg_tcp_welcome;
#define DG_TCP_WELCOME_SIZE 44

/* The reason codes of a REFUSE (and of a BYE). */
typedef enum dg_tcp_refusal {
    DG_TCP_REFUSE_VERSION = 1,
    DG_TCP_REFUSE_AUTH = 2,
    DG_TCP_REFUSE_CONFIG = 3,
    DG_TCP_REFUSE_ID = 4,          /* worker id out of range or already live */
    DG_TCP_REFUSE_FULL = 5,        /* connection limit */
    DG_TCP_REFUSE_FORMAT = 6,
    DG_TCP_REFUSE_SHUTDOWN = 7
} dg_tcp_refusal;

/* One entry of a PEERS payload: u32 id | u8[16] IPv6 or v4-mapped | u16 port */
typedef struct dg_tcp_peer_addr {
    uint32_t id;
    unsigned char addr[16];
    uint16_t port;
} dg_tcp_peer_addr;
#define DG_TCP_PEER_ADDR_SIZE 22

DGDEF void dg_tcp_hello_encode(const dg_tcp_hello *h, unsigned char out[DG_TCP_HELLO_SIZE]);
DGDEF dg_result dg_tcp_hello_decode(const void *p, size_t n, dg_tcp_hello *h);
DGDEF void dg_tcp_welcome_encode(const dg_tcp_welcome *w, unsigned char out[DG_TCP_WELCOME_SIZE]);
DGDEF dg_result dg_tcp_welcome_decode(const void *p, size_t n, dg_tcp_welcome *w);
/* REFUSE: u32 code | u16 length | text (printable ASCII, <= 200 bytes). */
DGDEF size_t dg_tcp_refuse_encode(uint32_t code, const char *reason, unsigned char *out, size_t cap);
DGDEF dg_result dg_tcp_refuse_decode(const void *p, size_t n, uint32_t *code, char *reason,
                                     size_t reason_cap);
/* PEERS: u32 count | count x entry; at most max_peers entries. */
DGDEF dg_result dg_tcp_peers_decode(const void *p, size_t n, dg_tcp_peer_addr *out,
                                    uint32_t max_peers, uint32_t *count);
DGDEF size_t dg_tcp_peers_encode(const dg_tcp_peer_addr *a, uint32_t count, unsigned char *out,
                                 size_t cap);
/* The proofs: client = HMAC(secret, "dgtp client" | server nonce | HELLO),
   server = HMAC(secret, "dgtp server" | client nonce | server nonce). */
DGDEF void dg_tcp_client_proof(const void *secret, size_t secret_len,
                               const unsigned char server_nonce[DG_TCP_NONCE],
                               const unsigned char hello[DG_TCP_HELLO_SIZE], unsigned char out[32]);
DGDEF void dg_tcp_server_proof(const void *secret, size_t secret_len,
                               const unsigned char client_nonce[DG_TCP_NONCE],
                               const unsigned char server_nonce[DG_TCP_NONCE], unsigned char out[32]);

/* "HOST:PORT" (HOST an IPv4 address, "localhost", or "[v6]") -> parts. */
DGDEF dg_result dg_tcp_parse_addr(const char *s, char *host, size_t host_cap, uint16_t *port);

/* ---- the transport ---- */

/* Zero means default everywhere (dg_tcp_config_init fills the defaults). */
typedef struct dg_tcp_config {
    int n_peers;              /* server + worker slots: max_workers + 1 (required) */
    int self;                 /* 0: the server; n >= 1: worker n */
    const char *listen;       /* server: "HOST:PORT" (PORT 0: any free port);
                                 worker: its swap listener, default the
                                 server's loopback-ness: "127.0.0.1:0" when
                                 the server is on loopback, else "0.0.0.0:0" */
    const char *connect;      /* worker: the server's "HOST:PORT" */
    const void *secret;       /* shared secret (NULL: none); <= 256 bytes */
    size_t secret_len;
    int allow_insecure;       /* server: listen beyond loopback without a secret */
    unsigned char config_hash[32]; /* dg_tcp_mdgan_config_hash & co. */
    uint64_t max_message;     /* payload limit (DG_TCP_DEFAULT_MAX_MESSAGE) */
    int max_pending;          /* connections in their handshake at once (64) */
    int handshake_timeout_ms; /* a handshake must complete within (5000) */
    int frame_timeout_ms;     /* a started frame must complete within (30000) */
    int heartbeat_ms;         /* send a heartbeat after this much silence (1000) */
    int dead_ms;              /* drop a peer silent for this long (10000) */
    int send_timeout_ms;      /* a send must complete within (30000) */
    int connect_timeout_ms;   /* connect + handshake (5000) */
    uint64_t iteration;       /* server: announced in WELCOME (where the run stands) */
    uint16_t protocol_version;/* 0: DG_TCP_VERSION (others only to test refusals) */
    void (*log)(void *user, const char *line); /* connections, drops, refusals */
    void *log_user;
} dg_tcp_config;

DGDEF void dg_tcp_config_init(dg_tcp_config *c);

/* The server's transport: listens and accepts workers 1..n_peers-1 (and
   nothing else).  DG_ERR_AUTH when asked to listen beyond loopback without
   a secret and without allow_insecure. */
DGDEF dg_result dg_tcp_server_create(dg_transport **out, const dg_tcp_config *cfg);
/* A worker's transport: listens for swap partners, connects to the server
   and runs the handshake.  A refusal comes back as DG_ERR_VERSION,
   DG_ERR_AUTH or DG_ERR_CONFIG (DG_ERR_CLOSED for the others) with the
   server's reason in dg_last_error(); DG_ERR_TIMEOUT / DG_ERR_IO when the
   server cannot be reached. */
DGDEF dg_result dg_tcp_worker_create(dg_transport **out, const dg_tcp_config *cfg);
/* Worker: dials the server again after it was lost (same listener). */
DGDEF dg_result dg_tcp_reconnect(dg_transport *t);
/* The port the transport listens on (the server's, or a worker's swap port). */
DGDEF uint16_t dg_tcp_port(const dg_transport *t);
/* 1 when peer has a live, authenticated connection. */
DGDEF int dg_tcp_connected(dg_transport *t, int peer);
/* The server's iteration announced in the last WELCOME (worker side). */
DGDEF uint64_t dg_tcp_server_iteration(const dg_transport *t);
/* Bytes on the wire to / from peer (frames, handshakes, heartbeats),
   DG_ANY_PEER for all; connections refused so far. */
DGDEF void dg_tcp_wire_bytes(dg_transport *t, int peer, uint64_t *in, uint64_t *out);
DGDEF uint64_t dg_tcp_refused(dg_transport *t);
/* Sends BYE with DG_TCP_FLAG_LAST to every peer: the run is over. */
DGDEF void dg_tcp_goodbye(dg_transport *t);

/* ---- drivers: one role per process ---- */

/* Frees what a driver returned (*g_out). */
DGDEF void dg_tcp_free(void *p);

/* SHA-256 of the fields that must agree between peers (network,
   hyperparameters, image shape, seed, N), plus a free-form string (e.g. the
   dataset's name and size). */
DGDEF void dg_tcp_mdgan_config_hash(const dg_mdgan_config *c, const char *extra,
                                    unsigned char out[32]);
DGDEF void dg_tcp_flgan_config_hash(const dg_flgan_config *c, const char *extra,
                                    unsigned char out[32]);

typedef struct dg_tcp_run {
    int64_t iterations;       /* MD-GAN iterations / FL-GAN rounds to reach */
    const char *checkpoint;   /* server: checkpoint path (NULL: none) */
    int checkpoint_every;     /* server: every n iterations (0: only at the end) */
    int resume;               /* server: continue from the checkpoint if it exists */
    int wait_workers_ms;      /* server: wait for the N workers at the start (60000) */
    int reconnect_ms;         /* worker: keep redialling a lost server this long (30000) */
    int swap_wait_ms;         /* worker: a D that does not come is skipped after (barrier/2) */
    /* server: after every iteration (MD-GAN) or round (FL-GAN) */
    void (*progress)(void *user, int64_t iteration, int n_live, float d_loss, float g_loss,
                     const dg_transport *t);
    void *user;
} dg_tcp_run;

/* Server process: creates the role on t, resumes, waits for the workers,
   runs until run->iterations (or SIGINT/SIGTERM: dg_tcp_stop_requested),
   checkpoints, sends STOP and BYE.  A worker that connects while not live
   is added back (it joins with a copy of a live worker's D).  *g_out (may
   be NULL) receives the final generator parameters: dg_tcp_free them. */
DGDEF dg_result dg_tcp_mdgan_server_run(const dg_mdgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_tcp_run *run, float **g_out,
                                        size_t *g_count);
/* Worker process: serves its role until STOP, SIGINT/SIGTERM or a server
   lost for longer than run->reconnect_ms. */
DGDEF dg_result dg_tcp_mdgan_worker_run(const dg_mdgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                        size_t count, const dg_tcp_run *run);
DGDEF dg_result dg_tcp_flgan_server_run(const dg_flgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_tcp_run *run, float **g_out,
                                        size_t *g_count);
DGDEF dg_result dg_tcp_flgan_worker_run(const dg_flgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                        size_t count, const dg_tcp_run *run);

/* ---- signals ----
   Installs SIGINT/SIGTERM handlers that only set a flag (the one
   process-wide variable of this section, a volatile sig_atomic_t) and
   ignores SIGPIPE.  Drivers poll dg_tcp_stop_requested() between
   iterations, checkpoint and close gracefully. */
DGDEF void dg_tcp_install_signal_handlers(void);
DGDEF int dg_tcp_stop_requested(void);
DGDEF void dg_tcp_request_stop(void);

#ifdef __cplusplus
}
#endif
#endif /* DG_WIP_TCP_DECL */

/* ======================================================================
   Part 2: implementation
   ====================================================================== */
#if defined(DISTGAN_IMPLEMENTATION) && !defined(DG_WIP_TCP_IMPL)
#define DG_WIP_TCP_IMPL

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==== dg_tcp ==== */

/* ---- SHA-256 ---- */
static const uint32_t dg__sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define DG__ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void dg__sha256_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = DG__ROR(w[i - 15], 7) ^ DG__ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = DG__ROR(w[i - 2], 17) ^ DG__ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (DG__ROR(e, 6) ^ DG__ROR(e, 11) ^ DG__ROR(e, 25)) + ((e & f) ^ (~e & g)) +
             dg__sha_k[i] + w[i];
        t2 = (DG__ROR(a, 2) ^ DG__ROR(a, 13) ^ DG__ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

DGDEF void dg_sha256_init(dg_sha256_ctx *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->bytes = 0;
    s->n = 0;
}

DGDEF void dg_sha256_update(dg_sha256_ctx *s, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    s->bytes += n;
    if (s->n) {
        size_t take = 64 - s->n < n ? 64 - s->n : n;
        memcpy(s->buf + s->n, p, take);
        s->n += (unsigned)take; p += take; n -= take;
        if (s->n < 64) return;
        dg__sha256_block(s->h, s->buf);
        s->n = 0;
    }
    for (; n >= 64; p += 64, n -= 64) dg__sha256_block(s->h, p);
    memcpy(s->buf, p, n);
    s->n = (unsigned)n;
}

DGDEF void dg_sha256_final(dg_sha256_ctx *s, unsigned char out[32])
{
    uint64_t bits = s->bytes * 8;
    int i;
    s->buf[s->n++] = 0x80;
    if (s->n > 56) {
        memset(s->buf + s->n, 0, 64 - s->n);
        dg__sha256_block(s->h, s->buf);
        s->n = 0;
    }
    memset(s->buf + s->n, 0, 56 - s->n);
    for (i = 0; i < 8; i++) s->buf[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    dg__sha256_block(s->h, s->buf);
    for (i = 0; i < 32; i++) out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
    memset(s, 0, sizeof *s);
}

DGDEF void dg_sha256(const void *data, size_t n, unsigned char out[32])
{
    dg_sha256_ctx s;
    dg_sha256_init(&s);
    dg_sha256_update(&s, data, n);
    dg_sha256_final(&s, out);
}

/* HMAC(K, m) = H((K0 ^ opad) | H((K0 ^ ipad) | m)), K0 = K (hashed when
   longer than the 64-byte block) padded with zeros. */
static void dg__hmac_begin(const void *key, size_t key_len, dg_sha256_ctx *inner, dg_sha256_ctx *outer)
{
    unsigned char k0[64], pad[64];
    int i;
    memset(k0, 0, sizeof k0);
    if (key_len > 64) dg_sha256(key, key_len, k0);
    else if (key_len) memcpy(k0, key, key_len);
    for (i = 0; i < 64; i++) pad[i] = k0[i] ^ 0x36;
    dg_sha256_init(inner);
    dg_sha256_update(inner, pad, 64);
    for (i = 0; i < 64; i++) pad[i] = k0[i] ^ 0x5c;
    dg_sha256_init(outer);
    dg_sha256_update(outer, pad, 64);
}

static void dg__hmac_end(dg_sha256_ctx *inner, dg_sha256_ctx *outer, unsigned char out[32])
{
    unsigned char ih[32];
    dg_sha256_final(inner, ih);
    dg_sha256_update(outer, ih, 32);
    dg_sha256_final(outer, out);
}

DGDEF void dg_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t n,
                          unsigned char out[32])
{
    dg_sha256_ctx in, outer;
    dg__hmac_begin(key, key_len, &in, &outer);
    dg_sha256_update(&in, msg, n);
    dg__hmac_end(&in, &outer, out);
}

DGDEF int dg_tcp_memneq(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = (const volatile unsigned char *)a;
    const volatile unsigned char *y = (const volatile unsigned char *)b;
    unsigned char d = 0;
    size_t i;
    for (i = 0; i < n; i++) d |= (unsigned char)(x[i] ^ y[i]);
    return d != 0;
}

/* ---- little-endian helpers ---- */
static void dg__tcp_le16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static void dg__tcp_le32(unsigned char *p, uint32_t v)
{
    int i;
    for (i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void dg__tcp_le64(unsigned char *p, uint64_t v)
{
    int i;
    for (i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint16_t dg__tcp_rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t dg__tcp_rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t dg__tcp_rd64(const unsigned char *p)
{
    return (uint64_t)dg__tcp_rd32(p) | (uint64_t)dg__tcp_rd32(p + 4) << 32;
}

/* ---- frames ---- */
DGDEF void dg_frame_header_encode(const dg_frame_header *h, unsigned char out[DG_TCP_HEADER_SIZE])
{
    dg__tcp_le32(out, DG_TCP_MAGIC);
    dg__tcp_le16(out + 4, h->version);
    out[6] = h->type;
    out[7] = h->flags;
    dg__tcp_le32(out + 8, h->sender);
    dg__tcp_le32(out + 12, h->crc);
    dg__tcp_le64(out + 16, h->iteration);
    dg__tcp_le64(out + 24, h->length);
}

static int dg__tcp_type_known(unsigned t)
{
    return (t >= 1 && t <= DG_TCP_APP_MAX) || (t >= DG_TCP_HELLO && t <= DG_TCP_PEERS);
}

DGDEF dg_result dg_frame_header_decode(const unsigned char in[DG_TCP_HEADER_SIZE],
                                       uint64_t max_length, dg_frame_header *h)
{
    uint32_t magic = dg__tcp_rd32(in);
    memset(h, 0, sizeof *h);
    if (magic != DG_TCP_MAGIC)
        return dg__fail(DG_ERR_FORMAT, "tcp: bad magic 0x%08x (want 0x%08x \"DGTP\")",
                        (unsigned)magic, (unsigned)DG_TCP_MAGIC);
    h->version = dg__tcp_rd16(in + 4);
    h->type = in[6];
    h->flags = in[7];
    h->sender = dg__tcp_rd32(in + 8);
    h->crc = dg__tcp_rd32(in + 12);
    h->iteration = dg__tcp_rd64(in + 16);
    h->length = dg__tcp_rd64(in + 24);
    if (h->version != DG_TCP_VERSION)
        return dg__fail(DG_ERR_VERSION, "tcp: protocol version %u, this side speaks %u",
                        (unsigned)h->version, (unsigned)DG_TCP_VERSION);
    if (!dg__tcp_type_known(h->type))
        return dg__fail(DG_ERR_FORMAT, "tcp: unknown message type 0x%02x", (unsigned)h->type);
    if (h->flags & ~DG_TCP_FLAGS_KNOWN)
        return dg__fail(DG_ERR_FORMAT, "tcp: unknown flags 0x%02x", (unsigned)h->flags);
    if (h->length > max_length)
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: payload of %llu bytes over the limit of %llu",
                        (unsigned long long)h->length, (unsigned long long)max_length);
    return DG_OK;
}

DGDEF dg_result dg_frame_check_payload(const dg_frame_header *h, const void *payload)
{
    uint32_t crc = dg_crc32(0, payload, (size_t)h->length);
    if (crc != h->crc)
        return dg__fail(DG_ERR_CHECKSUM, "tcp: payload CRC-32 0x%08x, header says 0x%08x",
                        (unsigned)crc, (unsigned)h->crc);
    return DG_OK;
}

DGDEF dg_frame_header dg_frame_make(uint8_t type, uint8_t flags, uint32_t sender,
                                    uint64_t iteration, const void *payload, uint64_t length)
{
    dg_frame_header h;
    h.version = DG_TCP_VERSION;
    h.type = type;
    h.flags = flags;
    h.sender = sender;
    h.iteration = iteration;
    h.length = length;
    h.crc = dg_crc32(0, payload, (size_t)length);
    return h;
}

/* ---- handshake payloads ----
   HELLO (76 bytes): 0 u8 role | 1 u8 0 | 2 u16 min version | 4 u16 max
   version | 6 u16 listen port | 8 u32 worker id | 12 u8[32] config hash |
   44 u8[32] nonce. */
DGDEF void dg_tcp_hello_encode(const dg_tcp_hello *h, unsigned char out[DG_TCP_HELLO_SIZE])
{
    out[0] = h->role;
    out[1] = 0;
    dg__tcp_le16(out + 2, h->min_version);
    dg__tcp_le16(out + 4, h->max_version);
    dg__tcp_le16(out + 6, h->listen_port);
    dg__tcp_le32(out + 8, h->worker_id);
    memcpy(out + 12, h->config_hash, 32);
    memcpy(out + 44, h->nonce, DG_TCP_NONCE);
}

DGDEF dg_result dg_tcp_hello_decode(const void *p, size_t n, dg_tcp_hello *h)
{
    const unsigned char *b = (const unsigned char *)p;
    memset(h, 0, sizeof *h);
    if (n != DG_TCP_HELLO_SIZE)
        return dg__fail(DG_ERR_FORMAT, "tcp: HELLO of %zu bytes (want %d)", n, DG_TCP_HELLO_SIZE);
    if (b[0] != DG_TCP_ROLE_WORKER && b[0] != DG_TCP_ROLE_PEER)
        return dg__fail(DG_ERR_FORMAT, "tcp: HELLO with unknown role %u", (unsigned)b[0]);
    if (b[1] != 0) return dg__fail(DG_ERR_FORMAT, "tcp: HELLO reserved byte %u", (unsigned)b[1]);
    h->role = b[0];
    h->min_version = dg__tcp_rd16(b + 2);
    h->max_version = dg__tcp_rd16(b + 4);
    if (h->min_version > h->max_version)
        return dg__fail(DG_ERR_FORMAT, "tcp: HELLO versions %u..%u", (unsigned)h->min_version,
                        (unsigned)h->max_version);
    h->listen_port = dg__tcp_rd16(b + 6);
    h->worker_id = dg__tcp_rd32(b + 8);
    memcpy(h->config_hash, b + 12, 32);
    memcpy(h->nonce, b + 44, DG_TCP_NONCE);
    return DG_OK;
}

/* WELCOME (44 bytes): 0 u8[32] server proof | 32 u32 workers | 36 u64 iteration */
DGDEF void dg_tcp_welcome_encode(const dg_tcp_welcome *w, unsigned char out[DG_TCP_WELCOME_SIZE])
{
    memcpy(out, w->proof, 32);
    dg__tcp_le32(out + 32, w->n_workers);
    dg__tcp_le64(out + 36, w->iteration);
}

DGDEF dg_result dg_tcp_welcome_decode(const void *p, size_t n, dg_tcp_welcome *w)
{
    const unsigned char *b = (const unsigned char *)p;
    memset(w, 0, sizeof *w);
    if (n != DG_TCP_WELCOME_SIZE)
        return dg__fail(DG_ERR_FORMAT, "tcp: WELCOME of %zu bytes (want %d)", n,
                        DG_TCP_WELCOME_SIZE);
    memcpy(w->proof, b, 32);
    w->n_workers = dg__tcp_rd32(b + 32);
    w->iteration = dg__tcp_rd64(b + 36);
    if (w->n_workers == 0 || w->n_workers > 65535)
        return dg__fail(DG_ERR_FORMAT, "tcp: WELCOME with %u workers", (unsigned)w->n_workers);
    return DG_OK;
}

#define DG__REASON_MAX 200

DGDEF size_t dg_tcp_refuse_encode(uint32_t code, const char *reason, unsigned char *out, size_t cap)
{
    size_t len = reason ? strlen(reason) : 0, i;
    if (len > DG__REASON_MAX) len = DG__REASON_MAX;
    if (cap < 6 + len) return 0;
    dg__tcp_le32(out, code);
    dg__tcp_le16(out + 4, (uint16_t)len);
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)reason[i];
        out[6 + i] = (c >= 32 && c < 127) ? c : '?';
    }
    return 6 + len;
}

DGDEF dg_result dg_tcp_refuse_decode(const void *p, size_t n, uint32_t *code, char *reason,
                                     size_t reason_cap)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t len, i;
    if (reason_cap) reason[0] = 0;
    *code = 0;
    if (n < 6) return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE of %zu bytes", n);
    len = dg__tcp_rd16(b + 4);
    if (len > DG__REASON_MAX || n != 6 + len)
        return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE reason of %zu bytes in %zu", len, n);
    for (i = 0; i < len; i++)
        if (b[6 + i] < 32 || b[6 + i] >= 127)
            return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE reason with byte 0x%02x", b[6 + i]);
    *code = dg__tcp_rd32(b);
    if (*code < DG_TCP_REFUSE_VERSION || *code > DG_TCP_REFUSE_SHUTDOWN)
        return dg__fail(DG_ERR_FORMAT, "tcp: REFUSE code %u", (unsigned)*code);
    if (reason_cap) {
        size_t m = len < reason_cap - 1 ? len : reason_cap - 1;
        memcpy(reason, b + 6, m);
        reason[m] = 0;
    }
    return DG_OK;
}

DGDEF size_t dg_tcp_peers_encode(const dg_tcp_peer_addr *a, uint32_t count, unsigned char *out,
                                 size_t cap)
{
    size_t need = 4 + (size_t)count * DG_TCP_PEER_ADDR_SIZE, i;
    if (cap < need) return 0;
    dg__tcp_le32(out, count);
    for (i = 0; i < count; i++) {
        unsigned char *e = out + 4 + i * DG_TCP_PEER_ADDR_SIZE;
        dg__tcp_le32(e, a[i].id);
        memcpy(e + 4, a[i].addr, 16);
        dg__tcp_le16(e + 20, a[i].port);
    }
    return need;
}

DGDEF dg_result dg_tcp_peers_decode(const void *p, size_t n, dg_tcp_peer_addr *out,
                                    uint32_t max_peers, uint32_t *count)
{
    const unsigned char *b = (const unsigned char *)p;
    uint32_t c, i;
    *count = 0;
    if (n < 4) return dg__fail(DG_ERR_FORMAT, "tcp: PEERS of %zu bytes", n);
    c = dg__tcp_rd32(b);
    if (c > max_peers)
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: PEERS lists %u peers (max %u)", (unsigned)c,
                        (unsigned)max_peers);
    if (n != 4 + (size_t)c * DG_TCP_PEER_ADDR_SIZE)
        return dg__fail(DG_ERR_FORMAT, "tcp: PEERS of %zu bytes for %u peers", n, (unsigned)c);
    for (i = 0; i < c; i++) {
        const unsigned char *e = b + 4 + (size_t)i * DG_TCP_PEER_ADDR_SIZE;
        out[i].id = dg__tcp_rd32(e);
        memcpy(out[i].addr, e + 4, 16);
        out[i].port = dg__tcp_rd16(e + 20);
        if (out[i].port == 0)
            return dg__fail(DG_ERR_FORMAT, "tcp: PEERS entry %u with port 0", (unsigned)i);
    }
    *count = c;
    return DG_OK;
}

DGDEF void dg_tcp_client_proof(const void *secret, size_t secret_len,
                               const unsigned char server_nonce[DG_TCP_NONCE],
                               const unsigned char hello[DG_TCP_HELLO_SIZE], unsigned char out[32])
{
    dg_sha256_ctx in, outer;
    dg__hmac_begin(secret, secret_len, &in, &outer);
    dg_sha256_update(&in, "dgtp client", 11);
    dg_sha256_update(&in, server_nonce, DG_TCP_NONCE);
    dg_sha256_update(&in, hello, DG_TCP_HELLO_SIZE);
    dg__hmac_end(&in, &outer, out);
}

DGDEF void dg_tcp_server_proof(const void *secret, size_t secret_len,
                               const unsigned char client_nonce[DG_TCP_NONCE],
                               const unsigned char server_nonce[DG_TCP_NONCE], unsigned char out[32])
{
    dg_sha256_ctx in, outer;
    dg__hmac_begin(secret, secret_len, &in, &outer);
    dg_sha256_update(&in, "dgtp server", 11);
    dg_sha256_update(&in, client_nonce, DG_TCP_NONCE);
    dg_sha256_update(&in, server_nonce, DG_TCP_NONCE);
    dg__hmac_end(&in, &outer, out);
}

DGDEF dg_result dg_tcp_parse_addr(const char *s, char *host, size_t host_cap, uint16_t *port)
{
    const char *colon, *h0, *h1;
    char *end;
    unsigned long p;
    size_t hl;
    if (!s || !host || !port) return dg__fail(DG_ERR_ARG, "tcp: NULL address");
    colon = strrchr(s, ':');
    if (!colon) return dg__fail(DG_ERR_ARG, "tcp: address \"%s\" is not HOST:PORT", s);
    h0 = s;
    h1 = colon;
    if (*s == '[') {
        if (colon == s || colon[-1] != ']')
            return dg__fail(DG_ERR_ARG, "tcp: address \"%s\": unbalanced [", s);
        h0 = s + 1;
        h1 = colon - 1;
    }
    hl = (size_t)(h1 - h0);
    if (hl == 0 || hl >= host_cap) return dg__fail(DG_ERR_ARG, "tcp: address \"%s\": bad host", s);
    p = strtoul(colon + 1, &end, 10);
    if (end == colon + 1 || *end || p > 65535)
        return dg__fail(DG_ERR_ARG, "tcp: address \"%s\": bad port", s);
    memcpy(host, h0, hl);
    host[hl] = 0;
    *port = (uint16_t)p;
    return DG_OK;
}

/* ---- signals ---- */
/* The only process-wide variable of this section: written by the SIGINT /
   SIGTERM handler, read by the drivers between iterations. */
static volatile sig_atomic_t dg__tcp_stop_flag;

static void dg__tcp_on_signal(int sig)
{
    (void)sig;
    dg__tcp_stop_flag = 1;
}

DGDEF void dg_tcp_install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = dg__tcp_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

DGDEF int dg_tcp_stop_requested(void) { return dg__tcp_stop_flag != 0; }
DGDEF void dg_tcp_request_stop(void) { dg__tcp_stop_flag = 1; }

/* ---- the receive state machine ----
   Pure over buffers, so the fuzz target drives exactly the code that reads
   sockets: dg__rx_want says where the next bytes go, the caller fills some
   of them (read(2), or memcpy in the fuzz target) and dg__rx_got validates
   each part as soon as it is complete.  Stages: the 32-byte frame header;
   then either a control payload (<= max_control bytes) or a message body:
   its 24-byte head, its part table, and the parts' values read straight
   into a dg_msg of the transport's pool.  Nothing is allocated before the
   header (and for a message, the part table) passed every check, and the
   CRC-32 is accumulated over the bytes as they arrive (still in cache).

   Message body, little-endian: 0 i32 to | 4 u32 parts | 8 i64 aux |
   16 f32 stat0 | 20 f32 stat1 | 24 parts x (u32 kind, u32 0, u64 count) |
   values of part 0, 1, ... back to back (4 bytes per F32/I32 value, 1 per
   byte).  The frame's type, sender and iteration are the message's. */
#define DG__BODY_HEAD 24
#define DG__RX_HEADER 0
#define DG__RX_CONTROL 1
#define DG__RX_BODY 2
#define DG__RX_TABLE 3
#define DG__RX_PARTS 4

typedef struct dg__rx {
    int stage;
    unsigned char hdr[DG_TCP_HEADER_SIZE];
    size_t got;                     /* bytes of the current stage */
    dg_frame_header h;
    unsigned char *payload;         /* control payload */
    unsigned char body[DG__BODY_HEAD + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS];
    size_t table;                   /* bytes of the part table */
    dg_msg *m;                      /* message being filled */
    int part;
    uint32_t crc;
    /* limits and expectations, set by the owner */
    uint64_t max_length, max_control;
    int allow_app;                  /* messages only after the handshake */
    int lenient_refuse;             /* a client reads a REFUSE of any version */
    int self, peer;                 /* expected to / from (-1: any) */
    dg_transport *t;                /* the pool of messages (and n_peers) */
} dg__rx;

static void dg__rx_init(dg__rx *rx, dg_transport *t, uint64_t max_length, uint64_t max_control)
{
    memset(rx, 0, sizeof *rx);
    rx->t = t;
    rx->max_length = max_length;
    rx->max_control = max_control;
    rx->self = rx->peer = -1;
}

static void dg__rx_reset(dg__rx *rx)
{
    dg__free(rx->payload);
    rx->payload = NULL;
    if (rx->m) dg_msg_free(rx->t, rx->m);
    rx->m = NULL;
    rx->stage = DG__RX_HEADER;
    rx->got = 0;
}

/* Nonzero while a frame is half received. */
static int dg__rx_busy(const dg__rx *rx) { return rx->stage != DG__RX_HEADER || rx->got != 0; }

static size_t dg__part_size(const dg_part *p) { return p->kind == DG_PART_BYTES ? p->count : 4 * p->count; }

static void dg__rx_want(dg__rx *rx, unsigned char **p, size_t *n)
{
    switch (rx->stage) {
    case DG__RX_HEADER: *p = rx->hdr + rx->got; *n = DG_TCP_HEADER_SIZE - rx->got; return;
    case DG__RX_CONTROL: *p = rx->payload + rx->got; *n = (size_t)rx->h.length - rx->got; return;
    case DG__RX_BODY: *p = rx->body + rx->got; *n = DG__BODY_HEAD - rx->got; return;
    case DG__RX_TABLE: *p = rx->body + DG__BODY_HEAD + rx->got; *n = rx->table - rx->got; return;
    default:
        *p = (unsigned char *)rx->m->part[rx->part].data + rx->got;
        *n = dg__part_size(&rx->m->part[rx->part]) - rx->got;
    }
}

static int dg__rx_error(dg__rx *rx, dg_result r)
{
    dg__rx_reset(rx);
    return r;
}

/* Moves to the next non-empty part; 1 when the message is complete. */
static int dg__rx_next_part(dg__rx *rx)
{
    while (rx->part < rx->m->n_parts && dg__part_size(&rx->m->part[rx->part]) == 0) rx->part++;
    rx->got = 0;
    return rx->part >= rx->m->n_parts;
}

/* After the part table: every count checked against the frame's length
   (exactly), then the message is taken from the pool. */
static int dg__rx_table_done(dg__rx *rx)
{
    const unsigned char *b = rx->body;
    dg_part_kind kinds[DG_MSG_MAX_PARTS];
    size_t counts[DG_MSG_MAX_PARTS];
    uint64_t left = rx->h.length - DG__BODY_HEAD - rx->table;
    uint32_t i, np = dg__tcp_rd32(b + 4), u;
    int32_t to = (int32_t)dg__tcp_rd32(b);
    dg_result r;
    for (i = 0; i < np; i++) {
        const unsigned char *e = b + DG__BODY_HEAD + DG_MSG_PART_BYTES * i;
        uint64_t c = dg__tcp_rd64(e + 8), bytes;
        u = dg__tcp_rd32(e);
        if ((u != DG_PART_F32 && u != DG_PART_I32 && u != DG_PART_BYTES) || dg__tcp_rd32(e + 4))
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: part %u has kind %u", i, u));
        if (u != DG_PART_BYTES && c > left / 4)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: part %u of %llu values does not "
                                             "fit the frame", i, (unsigned long long)c));
        bytes = u == DG_PART_BYTES ? c : 4 * c;
        if (bytes > left)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: part %u of %llu bytes does not "
                                             "fit the frame", i, (unsigned long long)bytes));
        left -= bytes;
        kinds[i] = (dg_part_kind)u;
        counts[i] = (size_t)c;
    }
    if (left)
        return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: %llu bytes after the last part",
                                         (unsigned long long)left));
    r = dg_msg_create(rx->t, rx->h.type, (int)rx->h.sender, (int)to, (int64_t)rx->h.iteration,
                      (int)np, kinds, counts, &rx->m);
    if (r) return dg__rx_error(rx, r);
    rx->m->aux = (int64_t)dg__tcp_rd64(b + 8);
    u = dg__tcp_rd32(b + 16);
    memcpy(&rx->m->stat[0], &u, 4);
    u = dg__tcp_rd32(b + 20);
    memcpy(&rx->m->stat[1], &u, 4);
    rx->stage = DG__RX_PARTS;
    rx->part = 0;
    return 0;
}

/* n bytes were written where dg__rx_want said.  Returns 0 when more bytes
   are needed; 1 when a control frame is complete (*h, *payload owned by the
   caller: dg__free, NULL when empty); 2 when a message is complete (*m,
   owned by the caller: dg_msg_free); or an error, after which the
   connection must be closed (the rx is reset and reusable). */
static int dg__rx_got(dg__rx *rx, size_t n, dg_frame_header *h, unsigned char **payload,
                      dg_msg **m)
{
    dg_result r;
    int n_peers = rx->t ? rx->t->n_peers : 0;
    rx->got += n;
    switch (rx->stage) {
    case DG__RX_HEADER: {
        if (rx->got < DG_TCP_HEADER_SIZE) return 0;
        r = dg_frame_header_decode(rx->hdr, rx->max_length, &rx->h);
        if (r == DG_ERR_VERSION && rx->lenient_refuse && rx->h.type == DG_TCP_REFUSE &&
            rx->h.length <= rx->max_control)
            r = DG_OK;
        if (r) return dg__rx_error(rx, r);
        rx->got = 0;
        rx->crc = 0;
        if (rx->h.type > DG_TCP_APP_MAX) {
            if (rx->h.length > rx->max_control)
                return dg__rx_error(rx, dg__fail(DG_ERR_TOO_LARGE, "tcp: control frame 0x%02x of "
                                                 "%llu bytes (limit %llu)", rx->h.type,
                                                 (unsigned long long)rx->h.length,
                                                 (unsigned long long)rx->max_control));
            if (rx->h.length == 0) break;
            rx->payload = (unsigned char *)dg__alloc((size_t)rx->h.length);
            if (!rx->payload)
                return dg__rx_error(rx, dg__fail(DG_ERR_NOMEM, "tcp: no memory for %llu bytes",
                                                 (unsigned long long)rx->h.length));
            rx->stage = DG__RX_CONTROL;
            return 0;
        }
        if (!rx->allow_app || !rx->t)
            return dg__rx_error(rx, dg__fail(DG_ERR_AUTH, "tcp: message type %u before the "
                                             "handshake", rx->h.type));
        if (rx->h.sender >= (uint32_t)n_peers || (rx->peer >= 0 && rx->h.sender != (uint32_t)rx->peer))
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: sender %u on the connection of "
                                             "peer %d", (unsigned)rx->h.sender, rx->peer));
        if (rx->h.iteration > (uint64_t)INT64_MAX)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: iteration %llu",
                                             (unsigned long long)rx->h.iteration));
        if (rx->h.length < DG__BODY_HEAD)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: message of %llu bytes",
                                             (unsigned long long)rx->h.length));
        rx->stage = DG__RX_BODY;
        return 0;
    }
    case DG__RX_CONTROL:
        if (rx->got < rx->h.length) return 0;
        break;
    case DG__RX_BODY: {
        uint32_t np;
        int32_t to;
        if (rx->got < DG__BODY_HEAD) return 0;
        rx->crc = dg_crc32(0, rx->body, DG__BODY_HEAD);
        np = dg__tcp_rd32(rx->body + 4);
        to = (int32_t)dg__tcp_rd32(rx->body);
        if (np > DG_MSG_MAX_PARTS)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: %u parts (at most %d)",
                                             (unsigned)np, DG_MSG_MAX_PARTS));
        if (to < 0 || to >= n_peers || (rx->self >= 0 && to != rx->self))
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: message for peer %d on the "
                                             "connection of %d", (int)to, rx->self));
        rx->table = (size_t)DG_MSG_PART_BYTES * np;
        if (DG__BODY_HEAD + rx->table > rx->h.length)
            return dg__rx_error(rx, dg__fail(DG_ERR_FORMAT, "tcp: part table beyond the frame"));
        rx->got = 0;
        rx->stage = DG__RX_TABLE;
        if (np) return 0;
    }
        /* fall through */
    case DG__RX_TABLE:
        if (rx->got < rx->table) return 0;
        rx->crc = dg_crc32(rx->crc, rx->body + DG__BODY_HEAD, rx->table);
        if ((r = (dg_result)dg__rx_table_done(rx)) != 0) return r;
        if (!dg__rx_next_part(rx)) return 0;
        goto complete;
    default: {
        unsigned char *base = (unsigned char *)rx->m->part[rx->part].data;
        rx->crc = dg_crc32(rx->crc, base + rx->got - n, n);
        if (rx->got < dg__part_size(&rx->m->part[rx->part])) return 0;
        rx->part++;
        if (!dg__rx_next_part(rx)) return 0;
        goto complete;
    }
    }
    /* a control frame is complete */
    if (dg_frame_check_payload(&rx->h, rx->payload))
        return dg__rx_error(rx, DG_ERR_CHECKSUM);
    *h = rx->h;
    *payload = rx->payload;
    rx->payload = NULL;
    rx->stage = DG__RX_HEADER;
    rx->got = 0;
    return 1;
complete:
    if (rx->crc != rx->h.crc)
        return dg__rx_error(rx, dg__fail(DG_ERR_CHECKSUM, "tcp: message CRC-32 0x%08x, header "
                                         "says 0x%08x", (unsigned)rx->crc, (unsigned)rx->h.crc));
    *h = rx->h;
    *m = rx->m;
    rx->m = NULL;
    rx->stage = DG__RX_HEADER;
    rx->got = 0;
    return 2;
}

/* ---- sockets ---- */
static int64_t dg__tcp_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void dg__tcp_logf(const dg_tcp_config *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void dg__tcp_logf(const dg_tcp_config *c, const char *fmt, ...)
{
    char line[320];
    va_list ap;
    if (!c->log) return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->log(c->log_user, line);
}

static int dg__tcp_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0), one = 1;
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

/* IPv4 "a.b.c.d", "localhost" or a host name (getaddrinfo, AF_INET). */
static dg_result dg__tcp_resolve(const char *spec, struct sockaddr_in *sa)
{
    char host[256];
    uint16_t port;
    dg_result r = dg_tcp_parse_addr(spec, host, sizeof host, &port);
    if (r) return r;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        struct addrinfo hints, *ai = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai)
            return dg__fail(DG_ERR_IO, "tcp: cannot resolve host \"%s\"", host);
        sa->sin_addr = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
        freeaddrinfo(ai);
    }
    return DG_OK;
}

static int dg__tcp_is_loopback(const struct sockaddr_in *sa)
{
    return (ntohl(sa->sin_addr.s_addr) >> 24) == 127;
}

static dg_result dg__tcp_listen(const struct sockaddr_in *sa, int *fd_out, uint16_t *port)
{
    struct sockaddr_in b;
    socklen_t bl = sizeof b;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    if (fd < 0) return dg__fail(DG_ERR_IO, "tcp: socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 || listen(fd, 256) < 0 ||
        dg__tcp_nonblock(fd) < 0 || getsockname(fd, (struct sockaddr *)&b, &bl) < 0) {
        int e = errno;
        close(fd);
        return dg__fail(DG_ERR_IO, "tcp: cannot listen on %s:%u: %s", ip,
                        (unsigned)ntohs(sa->sin_port), strerror(e));
    }
    *fd_out = fd;
    *port = ntohs(b.sin_port);
    return DG_OK;
}

static dg_result dg__tcp_connect(const struct sockaddr_in *sa, int64_t deadline, int *fd_out)
{
    char ip[INET_ADDRSTRLEN];
    int fd = socket(AF_INET, SOCK_STREAM, 0), err = 0;
    socklen_t el = sizeof err;
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    if (fd < 0) return dg__fail(DG_ERR_IO, "tcp: socket: %s", strerror(errno));
    dg__tcp_nonblock(fd);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) {
        struct pollfd p;
        int left;
        if (errno != EINPROGRESS) {
            err = errno;
            close(fd);
            return dg__fail(DG_ERR_IO, "tcp: connect to %s:%u: %s", ip,
                            (unsigned)ntohs(sa->sin_port), strerror(err));
        }
        p.fd = fd;
        p.events = POLLOUT;
        left = (int)(deadline - dg__tcp_ms());
        if (left < 0 || poll(&p, 1, left) != 1) {
            close(fd);
            return dg__fail(DG_ERR_TIMEOUT, "tcp: connect to %s:%u timed out", ip,
                            (unsigned)ntohs(sa->sin_port));
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            close(fd);
            return dg__fail(DG_ERR_IO, "tcp: connect to %s:%u: %s", ip,
                            (unsigned)ntohs(sa->sin_port), strerror(err));
        }
    }
    *fd_out = fd;
    return DG_OK;
}

/* Writes all of iov before deadline (non-blocking socket + poll). */
static dg_result dg__tcp_writev(int fd, struct iovec *iov, int n, int64_t deadline, uint64_t *count)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n > 64 ? 64 : n);
        if (w > 0) {
            *count += (uint64_t)w;
            while (n > 0 && (size_t)w >= iov->iov_len) {
                w -= (ssize_t)iov->iov_len;
                iov++;
                n--;
            }
            if (n > 0) {
                iov->iov_base = (char *)iov->iov_base + w;
                iov->iov_len -= (size_t)w;
            }
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p;
            int left = (int)(deadline - dg__tcp_ms());
            p.fd = fd;
            p.events = POLLOUT;
            if (left <= 0) return dg__fail(DG_ERR_TIMEOUT, "tcp: send timed out");
            if (poll(&p, 1, left > 1000 ? 1000 : left) < 0 && errno != EINTR)
                return dg__fail(DG_ERR_IO, "tcp: poll: %s", strerror(errno));
            continue;
        }
        return dg__fail(DG_ERR_CLOSED, "tcp: send: %s", w < 0 ? strerror(errno) : "closed");
    }
    return DG_OK;
}

static dg_result dg__tcp_write_frame(int fd, uint8_t type, uint8_t flags, uint32_t sender,
                                     uint64_t it, const void *payload, size_t n, int64_t deadline,
                                     uint16_t version, uint64_t *count)
{
    unsigned char hdr[DG_TCP_HEADER_SIZE];
    struct iovec iov[2];
    dg_frame_header h = dg_frame_make(type, flags, sender, it, payload, n);
    if (version) h.version = version;
    dg_frame_header_encode(&h, hdr);
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof hdr;
    iov[1].iov_base = (void *)payload;
    iov[1].iov_len = n;
    return dg__tcp_writev(fd, iov, n ? 2 : 1, deadline, count);
}

/* ---- the endpoint ---- */
#define DG__TC_FREE 0
#define DG__TC_HELLO 1   /* accepted, waiting for HELLO */
#define DG__TC_AUTH 2    /* CHALLENGE sent, waiting for AUTH */
#define DG__TC_LIVE 3
#define DG__TC_DEAD 4    /* shut down; closed once no sender is inside */
#define DG__MAX_CONTROL ((uint64_t)1 << 16)

typedef struct dg__tconn {
    int fd, state, peer, role, paused;
    dg__rx rx;
    int64_t opened, last_rx, last_tx, frame_start;
    unsigned char nonce[DG_TCP_NONCE], hello[DG_TCP_HELLO_SIZE];
    unsigned char addr[16];
    uint16_t listen_port;
    int senders;             /* threads writing on it (endpoint mutex) */
    pthread_mutex_t wmu;     /* one writer at a time */
} dg__tconn;

typedef struct dg__tcp {
    dg_transport base;
    dg_tcp_config cfg;
    unsigned char secret[DG_TCP_SECRET_MAX];
    struct sockaddr_in server_addr;
    int lfd, wake[2], n_conns, io_started, quit, refused_n;
    uint16_t port, version;
    pthread_t io;
    pthread_mutex_t mu;       /* conns' state and peer, inbox, directory */
    pthread_cond_t cv;
    dg__tconn *conns;
    dg_msg *head, *tail;
    int count;
    size_t *queued;           /* per peer: bytes waiting in the inbox */
    dg_tcp_peer_addr *dir;    /* worker: where the other workers listen */
    uint32_t n_dir;
    uint64_t *wire_in, *wire_out, server_iteration;
    unsigned char nonce_key[32];
    uint64_t nonce_ctr;
} dg__tcp;

static dg__tcp *dg__tcp_of(const dg_transport *t) { return (dg__tcp *)t->impl; }

static void dg__tcp_wake(dg__tcp *t)
{
    char c = 1;
    ssize_t w = write(t->wake[1], &c, 1);
    (void)w;
}

/* Nonces: HMAC(key, counter) with a key read from /dev/urandom (mixed with
   the time and the pid when it cannot be read). */
static void dg__tcp_nonce(dg__tcp *t, unsigned char out[DG_TCP_NONCE])
{
    unsigned char c[8];
    pthread_mutex_lock(&t->mu);
    dg__tcp_le64(c, ++t->nonce_ctr);
    pthread_mutex_unlock(&t->mu);
    dg_hmac_sha256(t->nonce_key, 32, c, 8, out);
}

static void dg__tcp_seed_nonces(dg__tcp *t)
{
    unsigned char buf[64];
    struct timespec ts;
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f ? fread(buf, 1, 32, f) : 0;
    if (f) fclose(f);
    clock_gettime(CLOCK_REALTIME, &ts);
    memcpy(buf + 32, &ts, sizeof ts < 16 ? sizeof ts : 16);
    dg__tcp_le64(buf + 48, (uint64_t)getpid());
    dg__tcp_le64(buf + 56, (uint64_t)(uintptr_t)t);
    (void)got;
    dg_sha256(buf, sizeof buf, t->nonce_key);
}

/* Under t->mu.  Shuts the socket down (a sender inside fails at once); the
   fd is closed by the I/O thread when no sender is left. */
static void dg__tcp_drop(dg__tcp *t, dg__tconn *c, const char *why)
{
    if (c->state == DG__TC_FREE || c->state == DG__TC_DEAD) return;
    if (c->state == DG__TC_LIVE && c->peer >= 0)
        dg__tcp_logf(&t->cfg, "tcp: %s %d disconnected: %s", c->peer ? "worker" : "server",
                     c->peer, why);
    else
        dg__tcp_logf(&t->cfg, "tcp: connection dropped before its handshake completed: %s", why);
    shutdown(c->fd, SHUT_RDWR);
    c->state = DG__TC_DEAD; /* its rx belongs to the I/O thread: reset on release */
}

static void dg__tcp_release(dg__tcp *t, dg__tconn *c)
{
    (void)t;
    dg__rx_reset(&c->rx);
    close(c->fd);
    c->fd = -1;
    c->state = DG__TC_FREE;
    c->peer = -1;
    c->paused = 0;
}

static dg__tconn *dg__tcp_slot(dg__tcp *t)
{
    int i;
    for (i = 0; i < t->n_conns; i++)
        if (t->conns[i].state == DG__TC_FREE) return &t->conns[i];
    return NULL;
}

/* Under t->mu: the live connection of peer (the newest if two). */
static dg__tconn *dg__tcp_find(dg__tcp *t, int peer)
{
    dg__tconn *best = NULL;
    int i;
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state == DG__TC_LIVE && c->peer == peer && (!best || c->opened > best->opened)) best = c;
    }
    return best;
}

/* Under t->mu: a new live connection (fd) to/from peer. */
static dg__tconn *dg__tcp_adopt(dg__tcp *t, int fd, int peer, int role, int64_t now)
{
    dg__tconn *c = dg__tcp_slot(t);
    if (!c) return NULL;
    c->fd = fd;
    c->state = DG__TC_LIVE;
    c->peer = peer;
    c->role = role;
    c->opened = c->last_rx = c->last_tx = now;
    c->paused = 0;
    dg__rx_init(&c->rx, &t->base, t->cfg.max_message, DG__MAX_CONTROL);
    c->rx.allow_app = 1;
    c->rx.self = t->cfg.self;
    c->rx.peer = peer;
    return c;
}

static void dg__tcp_refuse(dg__tcp *t, dg__tconn *c, uint32_t code, const char *reason)
{
    unsigned char buf[8 + DG__REASON_MAX];
    size_t n = dg_tcp_refuse_encode(code, reason, buf, sizeof buf);
    uint64_t w = 0;
    dg__tcp_write_frame(c->fd, DG_TCP_REFUSE, 0, (uint32_t)t->cfg.self, 0, buf, n,
                        dg__tcp_ms() + 200, 0, &w);
    t->wire_out[0] += 0; /* refusals are not a peer's traffic */
    t->refused_n++;
    dg__tcp_logf(&t->cfg, "tcp: refused a connection: %s", reason);
    dg__tcp_drop(t, c, reason);
}

/* Server: the PEERS list (live workers and their swap ports) to every
   live worker.  Under t->mu. */
static void dg__tcp_broadcast_peers(dg__tcp *t)
{
    dg_tcp_peer_addr *a;
    unsigned char *buf;
    uint32_t n = 0;
    size_t len;
    int i;
    a = (dg_tcp_peer_addr *)dg__calloc((size_t)t->n_conns + 1, sizeof *a);
    buf = (unsigned char *)dg__alloc(4 + ((size_t)t->n_conns + 1) * DG_TCP_PEER_ADDR_SIZE);
    if (!a || !buf) {
        dg__free(a);
        dg__free(buf);
        return;
    }
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state != DG__TC_LIVE || c->role != DG_TCP_ROLE_WORKER || !c->listen_port) continue;
        a[n].id = (uint32_t)c->peer;
        memcpy(a[n].addr, c->addr, 16);
        a[n].port = c->listen_port;
        n++;
    }
    len = dg_tcp_peers_encode(a, n, buf, 4 + ((size_t)t->n_conns + 1) * DG_TCP_PEER_ADDR_SIZE);
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        uint64_t w = 0;
        if (c->state != DG__TC_LIVE || c->role != DG_TCP_ROLE_WORKER) continue;
        if (pthread_mutex_trylock(&c->wmu) != 0) {
            /* a send is in progress: wait for it (bounded by its deadline) */
            pthread_mutex_unlock(&t->mu);
            pthread_mutex_lock(&c->wmu);
            pthread_mutex_lock(&t->mu);
            if (c->state != DG__TC_LIVE) {
                pthread_mutex_unlock(&c->wmu);
                continue;
            }
        }
        if (dg__tcp_write_frame(c->fd, DG_TCP_PEERS, 0, 0, 0, buf, len,
                                dg__tcp_ms() + t->cfg.send_timeout_ms, 0, &w) == DG_OK)
            c->last_tx = dg__tcp_ms();
        t->wire_out[c->peer] += w;
        pthread_mutex_unlock(&c->wmu);
    }
    dg__free(a);
    dg__free(buf);
}

/* Server side of the handshake, on the I/O thread, under t->mu. */
static void dg__tcp_on_control(dg__tcp *t, dg__tconn *c, const dg_frame_header *h,
                               const unsigned char *p)
{
    char why[DG__REASON_MAX + 1];
    int64_t now = dg__tcp_ms();
    uint64_t w = 0;
    if (c->state == DG__TC_HELLO && h->type == DG_TCP_HELLO) {
        dg_tcp_hello hello;
        if (dg_tcp_hello_decode(p, (size_t)h->length, &hello)) {
            dg__tcp_refuse(t, c, DG_TCP_REFUSE_FORMAT, dg_last_error());
            return;
        }
        if (hello.min_version > t->version || hello.max_version < t->version) {
            snprintf(why, sizeof why, "protocol version %u..%u not supported: this side speaks %u",
                     (unsigned)hello.min_version, (unsigned)hello.max_version, (unsigned)t->version);
            dg__tcp_refuse(t, c, DG_TCP_REFUSE_VERSION, why);
            return;
        }
        if ((t->cfg.self == 0 && hello.role != DG_TCP_ROLE_WORKER) ||
            (t->cfg.self != 0 && hello.role != DG_TCP_ROLE_PEER) || hello.worker_id < 1 ||
            hello.worker_id >= (uint32_t)t->base.n_peers || (int)hello.worker_id == t->cfg.self ||
            h->sender != hello.worker_id) {
            snprintf(why, sizeof why, "worker id %u (role %u) not accepted here: ids are 1..%d",
                     (unsigned)hello.worker_id, (unsigned)hello.role, t->base.n_peers - 1);
            dg__tcp_refuse(t, c, DG_TCP_REFUSE_ID, why);
            return;
        }
        if (dg_tcp_memneq(hello.config_hash, t->cfg.config_hash, 32)) {
            snprintf(why, sizeof why, "configuration mismatch: worker %u runs configuration "
                     "%02x%02x%02x%02x..., this side %02x%02x%02x%02x... (network, "
                     "hyperparameters, data shape, seed and N must agree)",
                     (unsigned)hello.worker_id, hello.config_hash[0], hello.config_hash[1],
                     hello.config_hash[2], hello.config_hash[3], t->cfg.config_hash[0],
                     t->cfg.config_hash[1], t->cfg.config_hash[2], t->cfg.config_hash[3]);
            dg__tcp_refuse(t, c, DG_TCP_REFUSE_CONFIG, why);
            return;
        }
        memcpy(c->hello, p, DG_TCP_HELLO_SIZE);
        c->peer = (int)hello.worker_id;
        c->role = hello.role;
        c->listen_port = hello.listen_port;
        pthread_mutex_unlock(&t->mu);
        dg__tcp_nonce(t, c->nonce);
        pthread_mutex_lock(&t->mu);
        if (dg__tcp_write_frame(c->fd, DG_TCP_CHALLENGE, 0, (uint32_t)t->cfg.self, 0, c->nonce,
                                DG_TCP_NONCE, now + 1000, 0, &w)) {
            dg__tcp_drop(t, c, dg_last_error());
            return;
        }
        c->state = DG__TC_AUTH;
        return;
    }
    if (c->state == DG__TC_AUTH && h->type == DG_TCP_AUTH) {
        unsigned char want[32], buf[DG_TCP_WELCOME_SIZE];
        dg_tcp_welcome wel;
        dg__tconn *old;
        dg_tcp_hello hello;
        if (h->length != 32) {
            dg__tcp_refuse(t, c, DG_TCP_REFUSE_FORMAT, "AUTH must carry 32 bytes");
            return;
        }
        dg_tcp_client_proof(t->secret, t->cfg.secret_len, c->nonce, c->hello, want);
        if (dg_tcp_memneq(want, p, 32)) {
            dg__tcp_refuse(t, c, DG_TCP_REFUSE_AUTH, "authentication failed: wrong or missing "
                           "shared secret");
            return;
        }
        dg_tcp_hello_decode(c->hello, DG_TCP_HELLO_SIZE, &hello);
        dg_tcp_server_proof(t->secret, t->cfg.secret_len, hello.nonce, c->nonce, wel.proof);
        wel.n_workers = (uint32_t)(t->base.n_peers - 1);
        wel.iteration = t->cfg.iteration;
        dg_tcp_welcome_encode(&wel, buf);
        if (dg__tcp_write_frame(c->fd, DG_TCP_WELCOME, 0, (uint32_t)t->cfg.self, 0, buf,
                                sizeof buf, now + 1000, 0, &w)) {
            dg__tcp_drop(t, c, dg_last_error());
            return;
        }
        while ((old = dg__tcp_find(t, c->peer)) != NULL && c->role == DG_TCP_ROLE_WORKER)
            dg__tcp_drop(t, old, "replaced by a new connection of the same worker");
        c->state = DG__TC_LIVE;
        c->last_rx = c->last_tx = now;
        c->rx.allow_app = 1;
        c->rx.max_length = t->cfg.max_message;
        c->rx.max_control = DG__MAX_CONTROL;
        c->rx.peer = c->peer;
        c->rx.self = t->cfg.self;
        t->wire_in[c->peer] += 0;
        dg__tcp_logf(&t->cfg, "tcp: %s %d connected", c->role == DG_TCP_ROLE_WORKER ? "worker" :
                     "swap partner", c->peer);
        if (t->cfg.self == 0) dg__tcp_broadcast_peers(t);
        pthread_cond_broadcast(&t->cv);
        return;
    }
    if (c->state == DG__TC_LIVE) {
        if (h->type == DG_TCP_HEARTBEAT) return;
        if (h->type == DG_TCP_BYE) {
            dg__tcp_drop(t, c, (h->flags & DG_TCP_FLAG_LAST) ? "the run is over" : "goodbye");
            return;
        }
        if (h->type == DG_TCP_PEERS && t->cfg.self != 0 && c->peer == 0) {
            dg_tcp_peer_addr *a = (dg_tcp_peer_addr *)dg__calloc((size_t)t->base.n_peers,
                                                                 sizeof *a);
            uint32_t n;
            if (!a) return;
            if (dg_tcp_peers_decode(p, (size_t)h->length, a, (uint32_t)t->base.n_peers, &n)) {
                dg__free(a);
                dg__tcp_drop(t, c, dg_last_error());
                return;
            }
            dg__free(t->dir);
            t->dir = a;
            t->n_dir = n;
            return;
        }
    }
    snprintf(why, sizeof why, "unexpected frame type 0x%02x in state %d", h->type, c->state);
    if (c->state == DG__TC_LIVE)
        dg__tcp_drop(t, c, why);
    else
        dg__tcp_refuse(t, c, DG_TCP_REFUSE_FORMAT, why);
}

/* Under t->mu: a message for the role. */
static void dg__tcp_deliver(dg__tcp *t, dg__tconn *c, dg_msg *m)
{
    size_t bytes = dg_msg_payload_bytes(m);
    dg_traffic *l = &t->base.links[(size_t)m->from * t->base.n_peers + m->to];
    if (t->cfg.self != 0 && m->from == 0 && c->peer == 0) { /* fine */ }
    m->next = NULL;
    if (t->tail) t->tail->next = m;
    else t->head = m;
    t->tail = m;
    t->count++;
    t->queued[m->from] += bytes;
    /* the receiving side counts its incoming links too */
    __atomic_fetch_add(&l->messages, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&l->payload_bytes, (uint64_t)bytes, __ATOMIC_RELAXED);
    __atomic_fetch_add(&l->frame_bytes, (uint64_t)dg_msg_frame_bytes(m), __ATOMIC_RELAXED);
    /* backpressure: a peer that is far ahead of the role is not read */
    if (t->queued[m->from] > 2 * (size_t)t->cfg.max_message + ((size_t)64 << 20)) c->paused = 1;
    pthread_cond_broadcast(&t->cv);
}

/* Reads what a connection has; under t->mu (released around read). */
static void dg__tcp_read(dg__tcp *t, dg__tconn *c)
{
    int rounds;
    for (rounds = 0; rounds < 64 && (c->state != DG__TC_FREE && c->state != DG__TC_DEAD) &&
                     !c->paused; rounds++) {
        unsigned char *dst, *payload = NULL;
        size_t want;
        ssize_t n;
        dg_frame_header h;
        dg_msg *m = NULL;
        int r, busy;
        dg__rx_want(&c->rx, &dst, &want);
        busy = dg__rx_busy(&c->rx);
        /* the fd and the rx belong to this thread: read and validate
           without the endpoint lock, so senders and recv never wait on a
           large read or its CRC */
        pthread_mutex_unlock(&t->mu);
        n = read(c->fd, dst, want);
        r = n > 0 ? dg__rx_got(&c->rx, (size_t)n, &h, &payload, &m) : 0;
        pthread_mutex_lock(&t->mu);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            dg__tcp_drop(t, c, n == 0 ? (busy ? "connection closed in the middle of a frame"
                                              : "connection closed")
                                      : strerror(errno));
            return;
        }
        c->last_rx = dg__tcp_ms();
        if (!busy) c->frame_start = c->last_rx;
        if (c->peer >= 0 && c->state == DG__TC_LIVE) t->wire_in[c->peer] += (uint64_t)n;
        if (c->state == DG__TC_DEAD) { /* dropped meanwhile by a sender */
            dg__free(payload);
            if (m) dg_msg_free(&t->base, m);
            return;
        }
        if (r < 0) {
            char why[300];
            snprintf(why, sizeof why, "%s", dg_last_error());
            if (r == DG_ERR_CHECKSUM && !strstr(why, "CRC")) snprintf(why, sizeof why, "CRC-32 mismatch");
            if (c->state == DG__TC_LIVE) {
                dg__tcp_logf(&t->cfg, "tcp: invalid frame from peer %d: %s", c->peer, why);
                dg__tcp_drop(t, c, why);
            } else {
                dg__tcp_refuse(t, c, r == DG_ERR_VERSION ? DG_TCP_REFUSE_VERSION
                                                         : DG_TCP_REFUSE_FORMAT, why);
            }
            return;
        }
        if (r == 1) {
            dg__tcp_on_control(t, c, &h, payload);
            dg__free(payload);
        } else if (r == 2) {
            dg__tcp_deliver(t, c, m);
        }
    }
}

static void dg__tcp_accept(dg__tcp *t, int64_t now)
{
    int k;
    for (k = 0; k < 64; k++) {
        struct sockaddr_in sa;
        socklen_t sl = sizeof sa;
        int fd = accept(t->lfd, (struct sockaddr *)&sa, &sl), pending = 0, i;
        dg__tconn *c;
        if (fd < 0) return;
        for (i = 0; i < t->n_conns; i++)
            if (t->conns[i].state == DG__TC_HELLO || t->conns[i].state == DG__TC_AUTH) pending++;
        c = pending < t->cfg.max_pending ? dg__tcp_slot(t) : NULL;
        if (!c || dg__tcp_nonblock(fd) < 0) {
            static const char full[] = "connection limit reached";
            unsigned char buf[64];
            size_t n = dg_tcp_refuse_encode(DG_TCP_REFUSE_FULL, full, buf, sizeof buf);
            uint64_t w = 0;
            dg__tcp_nonblock(fd);
            dg__tcp_write_frame(fd, DG_TCP_REFUSE, 0, (uint32_t)t->cfg.self, 0, buf, n, now, 0, &w);
            close(fd);
            if (t->refused_n++ % 100 == 0)
                dg__tcp_logf(&t->cfg, "tcp: refused a connection: %s", full);
            continue;
        }
        c->fd = fd;
        c->state = DG__TC_HELLO;
        c->peer = -1;
        c->role = 0;
        c->opened = c->last_rx = c->last_tx = now;
        c->paused = 0;
        c->listen_port = 0;
        memset(c->addr, 0, 16);
        c->addr[10] = c->addr[11] = 0xff;
        memcpy(c->addr + 12, &sa.sin_addr, 4);
        /* before the handshake: small control frames only */
        dg__rx_init(&c->rx, &t->base, DG_TCP_MAX_HANDSHAKE, DG_TCP_MAX_HANDSHAKE);
    }
}

/* Timeouts and heartbeats; under t->mu. */
static void dg__tcp_timers(dg__tcp *t, int64_t now)
{
    int i;
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state == DG__TC_DEAD && c->senders == 0) {
            dg__tcp_release(t, c);
            continue;
        }
        if (c->state == DG__TC_HELLO || c->state == DG__TC_AUTH) {
            if (now - c->opened > t->cfg.handshake_timeout_ms)
                dg__tcp_drop(t, c, "handshake timed out");
            continue;
        }
        if (c->state != DG__TC_LIVE) continue;
        if (dg__rx_busy(&c->rx) && now - c->frame_start > t->cfg.frame_timeout_ms) {
            dg__tcp_drop(t, c, "a frame did not complete in time");
            continue;
        }
        if (!c->paused && now - c->last_rx > t->cfg.dead_ms) {
            dg__tcp_drop(t, c, "silent for too long (no heartbeat)");
            continue;
        }
        if (now - c->last_tx >= t->cfg.heartbeat_ms && pthread_mutex_trylock(&c->wmu) == 0) {
            struct pollfd p;
            uint64_t w = 0;
            p.fd = c->fd;
            p.events = POLLOUT;
            if (poll(&p, 1, 0) == 1 && (p.revents & POLLOUT)) {
                if (dg__tcp_write_frame(c->fd, DG_TCP_HEARTBEAT, 0, (uint32_t)t->cfg.self, 0, NULL,
                                        0, now + 1000, 0, &w) == DG_OK)
                    c->last_tx = now;
                else
                    dg__tcp_drop(t, c, "cannot send a heartbeat");
            }
            if (c->peer >= 0) t->wire_out[c->peer] += w;
            pthread_mutex_unlock(&c->wmu);
        }
    }
}

static void *dg__tcp_io_main(void *arg)
{
    dg__tcp *t = (dg__tcp *)arg;
    struct pollfd *pf = (struct pollfd *)dg__calloc((size_t)t->n_conns + 2, sizeof *pf);
    int *who = (int *)dg__calloc((size_t)t->n_conns + 2, sizeof(int));
    if (!pf || !who) {
        dg__free(pf);
        dg__free(who);
        return NULL;
    }
    pthread_mutex_lock(&t->mu);
    while (!t->quit) {
        int n = 0, i, r;
        int64_t now;
        pf[n].fd = t->wake[0];
        pf[n].events = POLLIN;
        who[n++] = -1;
        if (t->lfd >= 0) {
            pf[n].fd = t->lfd;
            pf[n].events = POLLIN;
            who[n++] = -2;
        }
        for (i = 0; i < t->n_conns; i++) {
            dg__tconn *c = &t->conns[i];
            if (c->state == DG__TC_FREE || c->state == DG__TC_DEAD || c->paused) continue;
            pf[n].fd = c->fd;
            pf[n].events = POLLIN;
            who[n++] = i;
        }
        pthread_mutex_unlock(&t->mu);
        r = poll(pf, (nfds_t)n, 100);
        pthread_mutex_lock(&t->mu);
        now = dg__tcp_ms();
        for (i = 0; r > 0 && i < n; i++) {
            if (!pf[i].revents) continue;
            if (who[i] == -1) {
                char buf[64];
                while (read(t->wake[0], buf, sizeof buf) > 0) {
                }
            } else if (who[i] == -2) {
                dg__tcp_accept(t, now);
            } else {
                dg__tcp_read(t, &t->conns[who[i]]);
            }
        }
        dg__tcp_timers(t, dg__tcp_ms());
    }
    pthread_mutex_unlock(&t->mu);
    dg__free(pf);
    dg__free(who);
    return NULL;
}

/* ---- the dg_transport functions ---- */

/* Writes m on c: header, body head and part table in one buffer, the parts
   from the message itself (no copy), CRC-32 over the body first. */
static dg_result dg__tcp_write_msg(dg__tcp *t, dg__tconn *c, const dg_msg *m, uint64_t *w)
{
    unsigned char head[DG_TCP_HEADER_SIZE + DG__BODY_HEAD + DG_MSG_PART_BYTES * DG_MSG_MAX_PARTS];
    unsigned char *b = head + DG_TCP_HEADER_SIZE;
    struct iovec iov[1 + DG_MSG_MAX_PARTS];
    size_t body = DG__BODY_HEAD + (size_t)DG_MSG_PART_BYTES * m->n_parts;
    uint64_t len = body;
    dg_frame_header h;
    uint32_t u, crc;
    int i, n = 1;
    dg__tcp_le32(b, (uint32_t)m->to);
    dg__tcp_le32(b + 4, (uint32_t)m->n_parts);
    dg__tcp_le64(b + 8, (uint64_t)m->aux);
    memcpy(&u, &m->stat[0], 4);
    dg__tcp_le32(b + 16, u);
    memcpy(&u, &m->stat[1], 4);
    dg__tcp_le32(b + 20, u);
    for (i = 0; i < m->n_parts; i++) {
        unsigned char *e = b + DG__BODY_HEAD + DG_MSG_PART_BYTES * i;
        dg__tcp_le32(e, (uint32_t)m->part[i].kind);
        dg__tcp_le32(e + 4, 0);
        dg__tcp_le64(e + 8, (uint64_t)m->part[i].count);
    }
    crc = dg_crc32(0, b, body);
    for (i = 0; i < m->n_parts; i++) {
        size_t pb = dg__part_size(&m->part[i]);
        if (!pb) continue;
        crc = dg_crc32(crc, m->part[i].data, pb);
        iov[n].iov_base = m->part[i].data;
        iov[n].iov_len = pb;
        n++;
        len += pb;
    }
    if (len > t->cfg.max_message)
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: message of %llu bytes over the limit of %llu",
                        (unsigned long long)len, (unsigned long long)t->cfg.max_message);
    h.version = t->version;
    h.type = (uint8_t)m->type;
    h.flags = 0;
    h.sender = (uint32_t)m->from;
    h.crc = crc;
    h.iteration = (uint64_t)m->iteration;
    h.length = len;
    dg_frame_header_encode(&h, head);
    iov[0].iov_base = head;
    iov[0].iov_len = DG_TCP_HEADER_SIZE + body;
    return dg__tcp_writev(c->fd, iov, n, dg__tcp_ms() + t->cfg.send_timeout_ms, w);
}

static dg_result dg__tcp_dial_peer(dg__tcp *t, int peer);

static dg_result dg__tcp_send(dg_transport *bt, dg_msg *m)
{
    dg__tcp *t = dg__tcp_of(bt);
    dg__tconn *c;
    dg_result r;
    uint64_t w = 0;
    int to = m->to;
    if (m->type < 1 || m->type > DG_TCP_APP_MAX || m->from != t->cfg.self || to == t->cfg.self) {
        r = dg__fail(DG_ERR_ARG, "tcp: cannot send type %d from %d to %d on the transport of %d",
                     m->type, m->from, to, t->cfg.self);
        dg_msg_free(bt, m);
        return r;
    }
    pthread_mutex_lock(&t->mu);
    c = dg__tcp_find(t, to);
    pthread_mutex_unlock(&t->mu);
    if (!c && t->cfg.self != 0 && to != 0) { /* worker to worker: dial the partner */
        if ((r = dg__tcp_dial_peer(t, to)) != DG_OK) {
            dg_msg_free(bt, m);
            return r;
        }
    }
    pthread_mutex_lock(&t->mu);
    c = dg__tcp_find(t, to);
    if (c) c->senders++;
    pthread_mutex_unlock(&t->mu);
    if (!c) {
        dg_msg_free(bt, m);
        return dg__fail(DG_ERR_CLOSED, "tcp: no connection to peer %d", to);
    }
    pthread_mutex_lock(&c->wmu);
    r = dg__tcp_write_msg(t, c, m, &w);
    pthread_mutex_unlock(&c->wmu);
    pthread_mutex_lock(&t->mu);
    c->senders--;
    c->last_tx = dg__tcp_ms();
    t->wire_out[to] += w;
    if (r != DG_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s", dg_last_error());
        dg__tcp_drop(t, c, why);
    }
    pthread_mutex_unlock(&t->mu);
    dg__tcp_wake(t);
    dg_msg_free(bt, m);
    if (r != DG_OK) return dg__fail(r, "tcp: send to peer %d failed", to);
    return DG_OK;
}

static dg_result dg__tcp_recv(dg_transport *bt, int self, int timeout_ms, dg_msg **out)
{
    dg__tcp *t = dg__tcp_of(bt);
    dg_msg *m;
    int wake = 0;
    *out = NULL;
    if (self != t->cfg.self)
        return dg__fail(DG_ERR_ARG, "tcp: recv for peer %d on the transport of %d", self,
                        t->cfg.self);
    pthread_mutex_lock(&t->mu);
    if (!t->head && timeout_ms != 0) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        if (timeout_ms > 0) {
            dl.tv_sec += timeout_ms / 1000;
            dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
            if (dl.tv_nsec >= 1000000000L) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000L;
            }
        }
        while (!t->head) {
            if (timeout_ms < 0)
                pthread_cond_wait(&t->cv, &t->mu);
            else if (pthread_cond_timedwait(&t->cv, &t->mu, &dl) == ETIMEDOUT)
                break;
        }
    }
    m = t->head;
    if (m) {
        int i;
        t->head = m->next;
        if (!t->head) t->tail = NULL;
        t->count--;
        m->next = NULL;
        t->queued[m->from] -= dg_msg_payload_bytes(m);
        for (i = 0; i < t->n_conns; i++)
            if (t->conns[i].paused && t->conns[i].peer == m->from &&
                t->queued[m->from] <= (size_t)t->cfg.max_message) {
                t->conns[i].paused = 0;
                t->conns[i].last_rx = dg__tcp_ms();
                wake = 1;
            }
    }
    pthread_mutex_unlock(&t->mu);
    if (wake) dg__tcp_wake(t);
    *out = m;
    return m ? DG_OK : DG_ERR_TIMEOUT;
}

static int dg__tcp_pending(dg_transport *bt, int self)
{
    dg__tcp *t = dg__tcp_of(bt);
    int n;
    if (self != t->cfg.self) return 0;
    pthread_mutex_lock(&t->mu);
    n = t->count;
    pthread_mutex_unlock(&t->mu);
    return n;
}

static void dg__tcp_close(dg_transport *bt)
{
    dg__tcp *t = dg__tcp_of(bt);
    int i;
    if (t->io_started) {
        pthread_mutex_lock(&t->mu);
        t->quit = 1;
        pthread_mutex_unlock(&t->mu);
        dg__tcp_wake(t);
        pthread_join(t->io, NULL);
    }
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        if (c->state != DG__TC_FREE) close(c->fd);
        dg__rx_reset(&c->rx);
        pthread_mutex_destroy(&c->wmu);
    }
    while (t->head) {
        dg_msg *m = t->head;
        t->head = m->next;
        dg_msg_free(bt, m);
    }
    if (t->lfd >= 0) close(t->lfd);
    if (t->wake[0] >= 0) close(t->wake[0]);
    if (t->wake[1] >= 0) close(t->wake[1]);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    dg__free(t->conns);
    dg__free(t->queued);
    dg__free(t->dir);
    dg__free(t->wire_in);
    dg__free(t->wire_out);
    dg_transport_base_free(bt);
    memset(t->secret, 0, sizeof t->secret);
    dg__free(t);
}

DGDEF void dg_tcp_config_init(dg_tcp_config *c)
{
    memset(c, 0, sizeof *c);
}

static void dg__tcp_defaults(dg_tcp_config *c)
{
    if (!c->max_message) c->max_message = DG_TCP_DEFAULT_MAX_MESSAGE;
    if (c->max_pending <= 0) c->max_pending = 64;
    if (c->handshake_timeout_ms <= 0) c->handshake_timeout_ms = 5000;
    if (c->frame_timeout_ms <= 0) c->frame_timeout_ms = 30000;
    if (c->heartbeat_ms <= 0) c->heartbeat_ms = 1000;
    if (c->dead_ms <= 0) c->dead_ms = 10000;
    if (c->send_timeout_ms <= 0) c->send_timeout_ms = 30000;
    if (c->connect_timeout_ms <= 0) c->connect_timeout_ms = 5000;
}

static dg_result dg__tcp_new(dg__tcp **out, const dg_tcp_config *cfg)
{
    dg__tcp *t;
    dg_result r;
    int i;
    const union { uint32_t u; unsigned char c[4]; } probe = {1};
    *out = NULL;
    if (!probe.c[0]) return dg__fail(DG_ERR_UNSUPPORTED, "tcp: little-endian hosts only");
    if (!cfg || cfg->n_peers < 2 || cfg->self < 0 || cfg->self >= cfg->n_peers)
        return dg__fail(DG_ERR_ARG, "tcp: %d peers, self %d", cfg ? cfg->n_peers : 0,
                        cfg ? cfg->self : -1);
    if (cfg->secret_len > DG_TCP_SECRET_MAX || (cfg->secret_len && !cfg->secret))
        return dg__fail(DG_ERR_ARG, "tcp: secret of %zu bytes (at most %d)", cfg->secret_len,
                        DG_TCP_SECRET_MAX);
    t = (dg__tcp *)dg__calloc(1, sizeof *t);
    if (!t) return dg__fail(DG_ERR_NOMEM, "tcp: no memory");
    if ((r = dg_transport_base_init(&t->base, cfg->n_peers)) != DG_OK) {
        dg__free(t);
        return r;
    }
    t->cfg = *cfg;
    dg__tcp_defaults(&t->cfg);
    if (cfg->secret_len) memcpy(t->secret, cfg->secret, cfg->secret_len);
    t->cfg.secret = NULL;
    t->version = cfg->protocol_version ? cfg->protocol_version : DG_TCP_VERSION;
    t->lfd = t->wake[0] = t->wake[1] = -1;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->n_conns = 2 * cfg->n_peers + t->cfg.max_pending + 4;
    t->conns = (dg__tconn *)dg__calloc((size_t)t->n_conns, sizeof *t->conns);
    t->queued = (size_t *)dg__calloc((size_t)cfg->n_peers, sizeof(size_t));
    t->wire_in = (uint64_t *)dg__calloc((size_t)cfg->n_peers, sizeof(uint64_t));
    t->wire_out = (uint64_t *)dg__calloc((size_t)cfg->n_peers, sizeof(uint64_t));
    t->base.send = dg__tcp_send;
    t->base.recv = dg__tcp_recv;
    t->base.pending = dg__tcp_pending;
    t->base.close = dg__tcp_close;
    t->base.impl = t;
    if (!t->conns || !t->queued || !t->wire_in || !t->wire_out) {
        dg__tcp_close(&t->base);
        return dg__fail(DG_ERR_NOMEM, "tcp: no memory for %d connections", cfg->n_peers);
    }
    for (i = 0; i < t->n_conns; i++) {
        t->conns[i].fd = -1;
        t->conns[i].peer = -1;
        pthread_mutex_init(&t->conns[i].wmu, NULL);
    }
    if (pipe(t->wake) < 0) {
        dg__tcp_close(&t->base);
        return dg__fail(DG_ERR_IO, "tcp: pipe: %s", strerror(errno));
    }
    fcntl(t->wake[0], F_SETFL, O_NONBLOCK);
    fcntl(t->wake[1], F_SETFL, O_NONBLOCK);
    dg__tcp_seed_nonces(t);
    *out = t;
    return DG_OK;
}

static dg_result dg__tcp_start(dg__tcp *t)
{
    if (pthread_create(&t->io, NULL, dg__tcp_io_main, t) != 0)
        return dg__fail(DG_ERR_NOMEM, "tcp: cannot start the I/O thread");
    t->io_started = 1;
    return DG_OK;
}

DGDEF dg_result dg_tcp_server_create(dg_transport **out, const dg_tcp_config *cfg)
{
    struct sockaddr_in sa;
    dg__tcp *t;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "tcp: out is NULL");
    *out = NULL;
    if (!cfg || cfg->self != 0 || !cfg->listen)
        return dg__fail(DG_ERR_ARG, "tcp: the server needs self = 0 and a listen address");
    if ((r = dg__tcp_resolve(cfg->listen, &sa)) != DG_OK) return r;
    if (!cfg->secret_len && !cfg->allow_insecure && !dg__tcp_is_loopback(&sa))
        return dg__fail(DG_ERR_AUTH, "tcp: refusing to listen on %s without a shared secret "
                        "(configure a secret, or allow insecure listening explicitly)", cfg->listen);
    if ((r = dg__tcp_new(&t, cfg)) != DG_OK) return r;
    if ((r = dg__tcp_listen(&sa, &t->lfd, &t->port)) == DG_OK) r = dg__tcp_start(t);
    if (r != DG_OK) {
        dg__tcp_close(&t->base);
        return r;
    }
    dg__tcp_logf(&t->cfg, "tcp: server listening on port %u for %d workers%s", (unsigned)t->port,
                 cfg->n_peers - 1, cfg->secret_len ? " (authenticated)" : "");
    *out = &t->base;
    return DG_OK;
}

/* Client side of the handshake on a connected socket (caller's thread). */
static dg_result dg__tcp_handshake(dg__tcp *t, int fd, int role, int64_t deadline,
                                   dg_tcp_welcome *wel)
{
    unsigned char hello[DG_TCP_HELLO_SIZE], proof[32], server_nonce[DG_TCP_NONCE];
    dg_tcp_hello h;
    dg__rx rx;
    uint64_t w = 0;
    int step;
    dg_result r;
    memset(&h, 0, sizeof h);
    h.role = (uint8_t)role;
    h.worker_id = (uint32_t)t->cfg.self;
    h.listen_port = t->port;
    h.min_version = h.max_version = t->version;
    memcpy(h.config_hash, t->cfg.config_hash, 32);
    dg__tcp_nonce(t, h.nonce);
    dg_tcp_hello_encode(&h, hello);
    if ((r = dg__tcp_write_frame(fd, DG_TCP_HELLO, 0, (uint32_t)t->cfg.self, 0, hello,
                                 sizeof hello, deadline, t->version, &w)) != DG_OK)
        return r;
    dg__rx_init(&rx, NULL, DG_TCP_MAX_HANDSHAKE, DG_TCP_MAX_HANDSHAKE);
    rx.lenient_refuse = 1;
    for (step = 0; step < 2;) {
        unsigned char *dst, *payload = NULL;
        size_t want;
        ssize_t n;
        dg_frame_header fh;
        dg_msg *m = NULL;
        struct pollfd p;
        int left = (int)(deadline - dg__tcp_ms()), k;
        if (left <= 0) return dg__fail(DG_ERR_TIMEOUT, "tcp: handshake timed out");
        p.fd = fd;
        p.events = POLLIN;
        if (poll(&p, 1, left) <= 0) continue;
        dg__rx_want(&rx, &dst, &want);
        n = read(fd, dst, want);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) {
            dg__rx_reset(&rx);
            return dg__fail(DG_ERR_CLOSED, "tcp: the server closed the connection during the "
                            "handshake");
        }
        k = dg__rx_got(&rx, (size_t)n, &fh, &payload, &m);
        if (k < 0) return dg__fail((dg_result)k, "tcp: bad handshake reply: %s", dg_last_error());
        if (k != 1) continue;
        if (fh.type == DG_TCP_REFUSE) {
            uint32_t code;
            char reason[DG__REASON_MAX + 1];
            dg_result e = dg_tcp_refuse_decode(payload, (size_t)fh.length, &code, reason,
                                               sizeof reason);
            dg__free(payload);
            if (e) return dg__fail(DG_ERR_CLOSED, "tcp: refused (unreadable reason)");
            e = code == DG_TCP_REFUSE_VERSION ? DG_ERR_VERSION
                : code == DG_TCP_REFUSE_AUTH  ? DG_ERR_AUTH
                : code == DG_TCP_REFUSE_CONFIG ? DG_ERR_CONFIG
                                               : DG_ERR_CLOSED;
            return dg__fail(e, "tcp: refused by the peer: %s", reason);
        }
        if (step == 0 && fh.type == DG_TCP_CHALLENGE && fh.length == DG_TCP_NONCE) {
            dg_tcp_client_proof(t->secret, t->cfg.secret_len, payload, hello, proof);
            memcpy(server_nonce, payload, DG_TCP_NONCE);
            dg__free(payload);
            if ((r = dg__tcp_write_frame(fd, DG_TCP_AUTH, 0, (uint32_t)t->cfg.self, 0, proof, 32,
                                         deadline, t->version, &w)) != DG_OK)
                return r;
            step = 1;
            continue;
        }
        if (step == 1 && fh.type == DG_TCP_WELCOME) {
            unsigned char want_proof[32];
            r = dg_tcp_welcome_decode(payload, (size_t)fh.length, wel);
            dg__free(payload);
            if (r) return r;
            dg_tcp_server_proof(t->secret, t->cfg.secret_len, h.nonce, server_nonce,
                                want_proof);
            if (dg_tcp_memneq(want_proof, wel->proof, 32))
                return dg__fail(DG_ERR_AUTH, "tcp: the server could not prove the shared secret");
            if (wel->n_workers != (uint32_t)(t->base.n_peers - 1))
                return dg__fail(DG_ERR_CONFIG, "tcp: the server has %u worker slots, this side %d",
                                (unsigned)wel->n_workers, t->base.n_peers - 1);
            return DG_OK;
        }
        dg__free(payload);
        return dg__fail(DG_ERR_FORMAT, "tcp: unexpected frame 0x%02x during the handshake",
                        fh.type);
    }
    return dg__fail(DG_ERR_TIMEOUT, "tcp: handshake timed out");
}

static dg_result dg__tcp_dial(dg__tcp *t, const struct sockaddr_in *sa, int role, int peer)
{
    int64_t deadline = dg__tcp_ms() + t->cfg.connect_timeout_ms;
    dg_tcp_welcome wel;
    dg__tconn *c;
    dg_result r;
    int fd = -1;
    if ((r = dg__tcp_connect(sa, deadline, &fd)) != DG_OK) return r;
    if ((r = dg__tcp_handshake(t, fd, role, deadline, &wel)) != DG_OK) {
        close(fd);
        return r;
    }
    pthread_mutex_lock(&t->mu);
    if (peer == 0) {
        t->server_iteration = wel.iteration;
        while ((c = dg__tcp_find(t, 0)) != NULL) dg__tcp_drop(t, c, "reconnected");
    }
    c = dg__tcp_adopt(t, fd, peer, role, dg__tcp_ms());
    pthread_mutex_unlock(&t->mu);
    if (!c) {
        close(fd);
        return dg__fail(DG_ERR_TOO_LARGE, "tcp: no free connection slot");
    }
    dg__tcp_wake(t);
    return DG_OK;
}

static dg_result dg__tcp_dial_peer(dg__tcp *t, int peer)
{
    struct sockaddr_in sa;
    uint32_t i;
    int found = 0;
    memset(&sa, 0, sizeof sa);
    pthread_mutex_lock(&t->mu);
    for (i = 0; i < t->n_dir; i++)
        if (t->dir[i].id == (uint32_t)peer) {
            sa.sin_family = AF_INET;
            memcpy(&sa.sin_addr, t->dir[i].addr + 12, 4);
            sa.sin_port = htons(t->dir[i].port);
            found = 1;
        }
    pthread_mutex_unlock(&t->mu);
    if (!found) return dg__fail(DG_ERR_CLOSED, "tcp: worker %d is not live (no address)", peer);
    return dg__tcp_dial(t, &sa, DG_TCP_ROLE_PEER, peer);
}

DGDEF dg_result dg_tcp_worker_create(dg_transport **out, const dg_tcp_config *cfg)
{
    struct sockaddr_in sa;
    dg__tcp *t;
    dg_result r;
    if (!out) return dg__fail(DG_ERR_ARG, "tcp: out is NULL");
    *out = NULL;
    if (!cfg || cfg->self < 1 || !cfg->connect)
        return dg__fail(DG_ERR_ARG, "tcp: a worker needs self >= 1 and the server's address");
    if ((r = dg__tcp_new(&t, cfg)) != DG_OK) return r;
    r = dg__tcp_resolve(cfg->connect, &t->server_addr);
    if (r == DG_OK) {
        if (cfg->listen)
            r = dg__tcp_resolve(cfg->listen, &sa);
        else {
            sa = t->server_addr;
            sa.sin_port = 0;
            if (!dg__tcp_is_loopback(&sa)) sa.sin_addr.s_addr = htonl(INADDR_ANY);
        }
    }
    if (r == DG_OK && !cfg->secret_len && !cfg->allow_insecure && !dg__tcp_is_loopback(&sa))
        r = dg__fail(DG_ERR_AUTH, "tcp: refusing to listen for swap partners beyond loopback "
                     "without a shared secret");
    if (r == DG_OK) r = dg__tcp_listen(&sa, &t->lfd, &t->port);
    if (r == DG_OK) r = dg__tcp_start(t);
    if (r == DG_OK) r = dg__tcp_dial(t, &t->server_addr, DG_TCP_ROLE_WORKER, 0);
    if (r != DG_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", dg_last_error());
        dg__tcp_close(&t->base);
        return dg__fail(r, "%s", why);
    }
    dg__tcp_logf(&t->cfg, "tcp: worker %d connected to %s (swap port %u)", cfg->self, cfg->connect,
                 (unsigned)t->port);
    *out = &t->base;
    return DG_OK;
}

DGDEF dg_result dg_tcp_reconnect(dg_transport *bt)
{
    dg__tcp *t;
    if (!bt) return dg__fail(DG_ERR_ARG, "tcp: NULL transport");
    t = dg__tcp_of(bt);
    if (t->cfg.self == 0) return dg__fail(DG_ERR_ARG, "tcp: the server does not reconnect");
    return dg__tcp_dial(t, &t->server_addr, DG_TCP_ROLE_WORKER, 0);
}

DGDEF uint16_t dg_tcp_port(const dg_transport *t) { return t ? dg__tcp_of(t)->port : 0; }

DGDEF int dg_tcp_connected(dg_transport *bt, int peer)
{
    dg__tcp *t;
    int r;
    if (!bt) return 0;
    t = dg__tcp_of(bt);
    pthread_mutex_lock(&t->mu);
    r = dg__tcp_find(t, peer) != NULL;
    pthread_mutex_unlock(&t->mu);
    return r;
}

DGDEF uint64_t dg_tcp_server_iteration(const dg_transport *t)
{
    return t ? dg__tcp_of(t)->server_iteration : 0;
}

DGDEF void dg_tcp_wire_bytes(dg_transport *bt, int peer, uint64_t *in, uint64_t *out)
{
    dg__tcp *t = dg__tcp_of(bt);
    int p;
    *in = *out = 0;
    pthread_mutex_lock(&t->mu);
    for (p = 0; p < bt->n_peers; p++)
        if (peer == DG_ANY_PEER || p == peer) {
            *in += t->wire_in[p];
            *out += t->wire_out[p];
        }
    pthread_mutex_unlock(&t->mu);
}

DGDEF uint64_t dg_tcp_refused(dg_transport *bt)
{
    dg__tcp *t = dg__tcp_of(bt);
    uint64_t n;
    pthread_mutex_lock(&t->mu);
    n = (uint64_t)t->refused_n;
    pthread_mutex_unlock(&t->mu);
    return n;
}

DGDEF void dg_tcp_goodbye(dg_transport *bt)
{
    dg__tcp *t = dg__tcp_of(bt);
    int i;
    pthread_mutex_lock(&t->mu);
    for (i = 0; i < t->n_conns; i++) {
        dg__tconn *c = &t->conns[i];
        uint64_t w = 0;
        unsigned char buf[16];
        size_t n = dg_tcp_refuse_encode(DG_TCP_REFUSE_SHUTDOWN, "done", buf, sizeof buf);
        if (c->state != DG__TC_LIVE) continue;
        pthread_mutex_lock(&c->wmu);
        dg__tcp_write_frame(c->fd, DG_TCP_BYE, DG_TCP_FLAG_LAST, (uint32_t)t->cfg.self, 0, buf, n,
                            dg__tcp_ms() + 500, 0, &w);
        pthread_mutex_unlock(&c->wmu);
    }
    pthread_mutex_unlock(&t->mu);
}

/* ---- drivers ---- */

DGDEF void dg_tcp_free(void *p) { dg__free(p); }

static void dg__hash_i(dg_sha256_ctx *s, int64_t v)
{
    unsigned char b[8];
    dg__tcp_le64(b, (uint64_t)v);
    dg_sha256_update(s, b, 8);
}
static void dg__hash_f(dg_sha256_ctx *s, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    dg__hash_i(s, (int64_t)u);
}

DGDEF void dg_tcp_mdgan_config_hash(const dg_mdgan_config *c, const char *extra,
                                    unsigned char out[32])
{
    dg_sha256_ctx s;
    dg_sha256_init(&s);
    dg_sha256_update(&s, "distgan md-gan v1", 17);
    dg__hash_i(&s, c->n_workers);
    dg__hash_i(&s, c->max_workers > c->n_workers ? c->max_workers : c->n_workers);
    dg__hash_i(&s, c->c); dg__hash_i(&s, c->h); dg__hash_i(&s, c->w);
    dg__hash_i(&s, c->n_classes); dg__hash_i(&s, (int64_t)c->arch); dg__hash_i(&s, c->z_dim);
    dg__hash_i(&s, c->batch); dg__hash_i(&s, dg_mdgan_k(c)); dg__hash_i(&s, c->disc_steps);
    dg__hash_i(&s, c->fresh_real); dg__hash_i(&s, c->saturating); dg__hash_i(&s, c->local_epochs);
    dg__hash_i(&s, c->swap_every); dg__hash_i(&s, c->swap_optimizer);
    dg__hash_f(&s, c->lr_g); dg__hash_f(&s, c->lr_d); dg__hash_f(&s, c->beta1);
    dg__hash_f(&s, c->beta2); dg__hash_f(&s, c->eps); dg__hash_f(&s, c->init_std);
    dg__hash_i(&s, (int64_t)c->seed);
    if (extra) dg_sha256_update(&s, extra, strlen(extra));
    dg_sha256_final(&s, out);
}

DGDEF void dg_tcp_flgan_config_hash(const dg_flgan_config *c, const char *extra,
                                    unsigned char out[32])
{
    dg_sha256_ctx s;
    dg_sha256_init(&s);
    dg_sha256_update(&s, "distgan fl-gan v1", 17);
    dg__hash_i(&s, c->n_workers);
    dg__hash_i(&s, c->c); dg__hash_i(&s, c->h); dg__hash_i(&s, c->w);
    dg__hash_i(&s, c->n_classes); dg__hash_i(&s, (int64_t)c->arch); dg__hash_i(&s, c->z_dim);
    dg__hash_i(&s, c->batch); dg__hash_i(&s, c->local_epochs); dg__hash_i(&s, c->local_iters);
    dg__hash_i(&s, c->saturating); dg__hash_i(&s, c->average_optimizer);
    dg__hash_f(&s, c->lr); dg__hash_f(&s, c->beta1); dg__hash_f(&s, c->beta2);
    dg__hash_f(&s, c->eps); dg__hash_f(&s, c->init_std);
    dg__hash_i(&s, (int64_t)c->seed);
    if (extra) dg_sha256_update(&s, extra, strlen(extra));
    dg_sha256_final(&s, out);
}

static void dg__tcp_sleep_ms(int ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

/* Writes buf to path through path.tmp and rename(2): a crash never leaves
   a half-written checkpoint. */
static dg_result dg__tcp_write_file(const char *path, const void *buf, size_t n)
{
    char tmp[4096];
    FILE *f;
    int ok;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f) return dg__fail(DG_ERR_IO, "checkpoint: cannot write %s", tmp);
    ok = fwrite(buf, 1, n, f) == n;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) return dg__fail(DG_ERR_IO, "checkpoint: cannot write %s", path);
    return DG_OK;
}

static dg_result dg__tcp_read_file(const char *path, unsigned char **buf, size_t *n)
{
    FILE *f = fopen(path, "rb");
    long len;
    *buf = NULL;
    if (!f) return dg__fail(DG_ERR_IO, "checkpoint: cannot open %s", path);
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        len > ((long)1 << 31)) {
        fclose(f);
        return dg__fail(DG_ERR_IO, "checkpoint: cannot size %s", path);
    }
    *buf = (unsigned char *)dg__alloc(len ? (size_t)len : 1);
    if (!*buf || fread(*buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        dg__free(*buf);
        *buf = NULL;
        return dg__fail(DG_ERR_IO, "checkpoint: cannot read %s", path);
    }
    fclose(f);
    *n = (size_t)len;
    return DG_OK;
}

static dg_result dg__tcp_mdgan_checkpoint(dg_mdgan_server *s, const char *path)
{
    size_t n = dg_mdgan_server_save_size(s), w;
    unsigned char *buf;
    dg_result r;
    if (!path) return DG_OK;
    buf = (unsigned char *)dg__alloc(n);
    if (!buf) return dg__fail(DG_ERR_NOMEM, "checkpoint: no memory");
    r = dg_mdgan_server_save_mem(s, buf, n, &w);
    if (r == DG_OK) r = dg__tcp_write_file(path, buf, w);
    dg__free(buf);
    return r;
}

static void dg__tcp_announce(dg_transport *t, uint64_t iteration)
{
    dg__tcp *tt = dg__tcp_of(t);
    pthread_mutex_lock(&tt->mu);
    tt->cfg.iteration = iteration;
    pthread_mutex_unlock(&tt->mu);
}

/* The server waits up to ms for workers 1..n to be connected. */
static int dg__tcp_wait_workers(dg_transport *t, int n, int ms)
{
    int64_t end = dg__tcp_ms() + ms;
    int k, have = 0;
    for (;;) {
        for (have = 0, k = 1; k <= n; k++) have += dg_tcp_connected(t, k);
        if (have == n || dg__tcp_ms() >= end || dg_tcp_stop_requested()) return have;
        dg__tcp_sleep_ms(20);
    }
}

static dg_result dg__tcp_copy_params(dg_net *g, float **g_out, size_t *g_count)
{
    size_t n = dg_net_param_count(g);
    if (!g_out) return DG_OK;
    *g_out = (float *)dg__alloc(n * sizeof(float));
    if (!*g_out) return dg__fail(DG_ERR_NOMEM, "tcp: no memory for G");
    memcpy(*g_out, dg_net_params(g), n * sizeof(float));
    if (g_count) *g_count = n;
    return DG_OK;
}

DGDEF dg_result dg_tcp_mdgan_server_run(const dg_mdgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_tcp_run *run, float **g_out,
                                        size_t *g_count)
{
    dg_mdgan_server *s;
    dg_tcp_config *tc;
    dg_mdgan_config c;
    dg_result r, e;
    int have, n;
    if (g_out) *g_out = NULL;
    if (!cfg || !t || !pool || !run) return dg__fail(DG_ERR_ARG, "tcp: server run: NULL argument");
    tc = &dg__tcp_of(t)->cfg;
    c = *cfg;
    if (c.barrier_timeout_ms <= 0) c.barrier_timeout_ms = 2 * tc->dead_ms;
    if ((r = dg_mdgan_server_create(&s, &c, t, pool)) != DG_OK) return r;
    if (run->resume && run->checkpoint) {
        unsigned char *buf;
        size_t len = 0;
        FILE *f = fopen(run->checkpoint, "rb");
        if (f) {
            fclose(f);
            r = dg__tcp_read_file(run->checkpoint, &buf, &len);
            if (r == DG_OK) {
                r = dg_mdgan_server_load_mem(s, buf, len);
                dg__free(buf);
            }
            if (r != DG_OK) {
                dg_mdgan_server_free(s);
                return r;
            }
            dg__tcp_logf(tc, "resumed from %s at iteration %lld", run->checkpoint,
                         (long long)dg_mdgan_server_stats(s)->iteration);
        }
    }
    dg__tcp_announce(t, (uint64_t)dg_mdgan_server_stats(s)->iteration);
    have = dg__tcp_wait_workers(t, c.n_workers, run->wait_workers_ms > 0 ? run->wait_workers_ms : 60000);
    dg__tcp_logf(tc, "%d of %d workers connected", have, c.n_workers);
    r = DG_OK;
    while (r == DG_OK && dg_mdgan_server_stats(s)->iteration < run->iterations &&
           !dg_tcp_stop_requested()) {
        const dg_mdgan_stats *st;
        int64_t it;
        for (n = 1; n < t->n_peers; n++)
            if (dg_tcp_connected(t, n) && !dg_mdgan_server_is_live(s, n))
                dg_mdgan_server_add_worker(s, n);
        if ((r = dg_mdgan_server_begin(s)) != DG_OK) break;
        while (r == DG_OK && dg_mdgan_server_missing(s) > 0) {
            r = dg_mdgan_server_poll(s, 200);
            if (r == DG_ERR_TIMEOUT) r = DG_OK;
        }
        if (r != DG_OK) break;
        st = dg_mdgan_server_stats(s);
        it = st->iteration;
        dg__tcp_announce(t, (uint64_t)it);
        if (run->progress) run->progress(run->user, it, st->n_live, st->d_loss, st->g_loss, t);
        if (run->checkpoint_every > 0 && it % run->checkpoint_every == 0 &&
            (e = dg__tcp_mdgan_checkpoint(s, run->checkpoint)) != DG_OK)
            dg__tcp_logf(tc, "checkpoint failed: %s", dg_last_error());
    }
    if (dg_tcp_stop_requested()) dg__tcp_logf(tc, "stop requested: checkpoint and shut down");
    if ((e = dg__tcp_mdgan_checkpoint(s, run->checkpoint)) != DG_OK && r == DG_OK) r = e;
    if (r == DG_OK && !dg_tcp_stop_requested()) dg_mdgan_server_stop(s);
    if (r == DG_OK) r = dg__tcp_copy_params(dg_mdgan_server_generator(s), g_out, g_count);
    dg__tcp_sleep_ms(50);
    dg_tcp_goodbye(t);
    dg_mdgan_server_free(s);
    return r;
}

/* A worker that lost the server redials it for run->reconnect_ms. */
static dg_result dg__tcp_keep_server(dg_transport *t, const dg_tcp_run *run)
{
    dg_tcp_config *tc = &dg__tcp_of(t)->cfg;
    int64_t end;
    if (dg_tcp_connected(t, 0)) return DG_OK;
    dg__tcp_logf(tc, "worker %d: lost the server, reconnecting", tc->self);
    end = dg__tcp_ms() + (run->reconnect_ms > 0 ? run->reconnect_ms : 30000);
    while (dg__tcp_ms() < end && !dg_tcp_stop_requested()) {
        if (dg_tcp_reconnect(t) == DG_OK) {
            dg__tcp_logf(tc, "worker %d: reconnected (server at iteration %llu)", tc->self,
                         (unsigned long long)dg_tcp_server_iteration(t));
            return DG_OK;
        }
        dg__tcp_sleep_ms(250);
    }
    return dg__fail(DG_ERR_CLOSED, "worker %d: the server is gone", tc->self);
}

DGDEF dg_result dg_tcp_mdgan_worker_run(const dg_mdgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                        size_t count, const dg_tcp_run *run)
{
    dg_mdgan_worker *w;
    dg_tcp_config *tc;
    dg_result r;
    int64_t held_since = -1;
    int swap_wait;
    if (!cfg || !t || !pool || !ds || !run) return dg__fail(DG_ERR_ARG, "tcp: worker run: NULL");
    tc = &dg__tcp_of(t)->cfg;
    swap_wait = run->swap_wait_ms > 0 ? run->swap_wait_ms : tc->dead_ms;
    /* a worker that arrives in a running job joins: it waits for a live D */
    r = dg_mdgan_worker_create(&w, cfg, tc->self, t, pool, ds, idx, count,
                               dg_tcp_server_iteration(t) > 0);
    if (r != DG_OK) return r;
    while (!dg_tcp_stop_requested() && !dg_mdgan_worker_stopped(w)) {
        dg_msg *m;
        if (dg_transport_recv(t, tc->self, 100, &m) == DG_OK &&
            (r = dg_mdgan_worker_handle(w, m)) != DG_OK)
            dg__tcp_logf(tc, "worker %d: %s", tc->self, dg_last_error());
        if (dg_mdgan_worker_holding(w)) {
            if (held_since < 0) held_since = dg__tcp_ms();
            if (dg__tcp_ms() - held_since > swap_wait) { /* the partner is dead: skip the swap */
                dg__tcp_logf(tc, "worker %d: no discriminator came within %d ms, keeping mine",
                             tc->self, swap_wait);
                if (dg_mdgan_worker_skip_swap(w) != DG_OK)
                    dg__tcp_logf(tc, "worker %d: %s", tc->self, dg_last_error());
                held_since = -1;
            }
        } else {
            held_since = -1;
        }
        if (!dg_mdgan_worker_stopped(w) && (r = dg__tcp_keep_server(t, run)) != DG_OK) break;
        r = DG_OK;
    }
    if (dg_mdgan_worker_stopped(w)) dg__tcp_logf(tc, "worker %d: training is over", tc->self);
    dg_mdgan_worker_free(w);
    return r;
}

DGDEF dg_result dg_tcp_flgan_server_run(const dg_flgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_tcp_run *run, float **g_out,
                                        size_t *g_count)
{
    dg_flgan_server *s;
    dg_tcp_config *tc;
    dg_flgan_config c;
    dg_result r;
    int64_t round = 0;
    int have;
    if (g_out) *g_out = NULL;
    if (!cfg || !t || !pool || !run) return dg__fail(DG_ERR_ARG, "tcp: server run: NULL argument");
    tc = &dg__tcp_of(t)->cfg;
    c = *cfg;
    if (c.barrier_timeout_ms <= 0) c.barrier_timeout_ms = 60000;
    if ((r = dg_flgan_server_create(&s, &c, t, pool)) != DG_OK) return r;
    have = dg__tcp_wait_workers(t, c.n_workers, run->wait_workers_ms > 0 ? run->wait_workers_ms : 60000);
    dg__tcp_logf(tc, "%d of %d workers connected", have, c.n_workers);
    while (r == DG_OK && round < run->iterations && !dg_tcp_stop_requested()) {
        const dg_flgan_stats *st;
        if ((r = dg_flgan_server_begin(s)) != DG_OK) break;
        while (r == DG_OK && dg_flgan_server_missing(s) > 0) {
            r = dg_flgan_server_poll(s, 200);
            if (r == DG_ERR_TIMEOUT) r = DG_OK;
        }
        round++;
        st = dg_flgan_server_stats(s);
        dg__tcp_announce(t, (uint64_t)round);
        if (r == DG_OK && run->progress)
            run->progress(run->user, round, st->n_live, st->d_loss, st->g_loss, t);
    }
    if (r == DG_OK && !dg_tcp_stop_requested()) dg_flgan_server_stop(s);
    if (r == DG_OK) r = dg__tcp_copy_params(dg_flgan_server_generator(s), g_out, g_count);
    dg__tcp_sleep_ms(50);
    dg_tcp_goodbye(t);
    dg_flgan_server_free(s);
    return r;
}

DGDEF dg_result dg_tcp_flgan_worker_run(const dg_flgan_config *cfg, dg_transport *t,
                                        dg_pool *pool, const dg_dataset *ds, const uint32_t *idx,
                                        size_t count, const dg_tcp_run *run)
{
    dg_flgan_worker *w;
    dg_tcp_config *tc;
    dg_result r;
    if (!cfg || !t || !pool || !ds || !run) return dg__fail(DG_ERR_ARG, "tcp: worker run: NULL");
    tc = &dg__tcp_of(t)->cfg;
    if ((r = dg_flgan_worker_create(&w, cfg, tc->self, t, pool, ds, idx, count)) != DG_OK) return r;
    while (!dg_tcp_stop_requested() && !dg_flgan_worker_stopped(w)) {
        dg_msg *m;
        if (dg_transport_recv(t, tc->self, 100, &m) == DG_OK &&
            dg_flgan_worker_handle(w, m) != DG_OK)
            dg__tcp_logf(tc, "worker %d: %s", tc->self, dg_last_error());
        if (!dg_flgan_worker_stopped(w) && (r = dg__tcp_keep_server(t, run)) != DG_OK) break;
        r = DG_OK;
    }
    dg_flgan_worker_free(w);
    return r;
}



#ifdef __cplusplus
}
#endif
#endif /* DG_WIP_TCP_IMPL */
