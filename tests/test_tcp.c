/* tests/test_tcp.c: the TCP transport (the dg_tcp section of distgan.h).
 *
 * Unit: SHA-256 (FIPS 180) and HMAC-SHA256 (RFC 4231) test vectors, the
 * frame header codec and each of its rejections, the handshake payloads,
 * transports of both kinds in one process (messages bit-exact both ways,
 * a 16 MB message, the size limit), several threads receiving on one
 * endpoint, and every handshake refusal.
 * Hostile input against a running server: random bytes, wrong magic, a
 * 2^63 length, a frame cut in the middle, a CRC mismatch, a client that
 * sends one byte per second, 200 connections at once, while a legitimate
 * worker keeps exchanging messages and memory stays bounded.
 * Integration, with real processes (build/distgan --transport tcp, forked and reaped,
 * 127.0.0.1 and ports found by binding port 0): MD-GAN and FL-GAN over TCP
 * give bit-identical generators to the in-process runs; kill -9 of a worker
 * (the live count drops, the restarted worker rejoins); kill -9 of the server
 * (--resume finishes the run); wrong secret, protocol version and
 * configuration refused with a clear message; SIGTERM checkpoints. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"
#include "proc.h"
#include "log_buf.h"
#include "small_gan.h"
#include "sender.h"

static int hex_eq(const unsigned char *d, const char *hex, size_t n)
{
    char s[129];
    size_t i;
    for (i = 0; i < n; i++) snprintf(s + 2 * i, 3, "%02x", d[i]);
    return strncmp(s, hex, 2 * n) == 0;
}

TEST(sha256_vectors)
{
    unsigned char d[32];
    dg_sha256_ctx s;
    int i;
    dg_sha256("", 0, d);
    CHECK(hex_eq(d, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 32));
    dg_sha256("abc", 3, d);
    CHECK(hex_eq(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 32));
    dg_sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, d);
    CHECK(hex_eq(d, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", 32));
    dg_sha256("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopq"
              "klmnopqrlmnopqrsmnopqrstnopqrstu", 112, d);
    CHECK(hex_eq(d, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1", 32));
    {   /* one million 'a', fed in odd pieces */
        static char a[1000];
        memset(a, 'a', sizeof a);
        dg_sha256_init(&s);
        for (i = 0; i < 1000; i++) dg_sha256_update(&s, a, i % 3 == 0 ? 999 : 1000 + 0 * i),
                                   dg_sha256_update(&s, a, i % 3 == 0 ? 1 : 0);
        dg_sha256_final(&s, d);
        CHECK(hex_eq(d, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", 32));
    }
}

TEST(hmac_rfc4231)
{
    unsigned char k[131], m[152], d[32];
    const char *long_data = "This is a test using a larger than block-size key and a larger than "
                            "block-size data. The key needs to be hashed before being used by the "
                            "HMAC algorithm.";
    int i;
    memset(k, 0x0b, 20);
    dg__hmac_sha256(k, 20, "Hi There", 8, d);
    CHECK(hex_eq(d, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", 32));
    dg__hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, d);
    CHECK(hex_eq(d, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 32));
    memset(k, 0xaa, 20);
    memset(m, 0xdd, 50);
    dg__hmac_sha256(k, 20, m, 50, d);
    CHECK(hex_eq(d, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe", 32));
    for (i = 0; i < 25; i++) k[i] = (unsigned char)(i + 1);
    memset(m, 0xcd, 50);
    dg__hmac_sha256(k, 25, m, 50, d);
    CHECK(hex_eq(d, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b", 32));
    memset(k, 0x0c, 20);
    dg__hmac_sha256(k, 20, "Test With Truncation", 20, d);
    CHECK(hex_eq(d, "a3b6167473100ee06e0c796c2955552b", 16));
    memset(k, 0xaa, 131);
    dg__hmac_sha256(k, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54, d);
    CHECK(hex_eq(d, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", 32));
    dg__hmac_sha256(k, 131, long_data, strlen(long_data), d);
    CHECK(hex_eq(d, "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2", 32));
    CHECK(dg__tcp_memneq(d, d, 32) == 0);
}

TEST(frame_codec)
{
    unsigned char b[DG_TCP_HEADER_SIZE], payload[5] = {1, 2, 3, 4, 5};
    dg__frame_header h = dg__frame_make(DG_MSG_FEEDBACK, 0, 3, 77, payload, 5), g;
    int i;
    dg__frame_header_encode(&h, b);
    CHECK(memcmp(b, "DGTP", 4) == 0);
    CHECK_OK(dg__frame_header_decode(b, 5, &g));
    CHECK(g.type == DG_MSG_FEEDBACK && g.sender == 3 && g.iteration == 77 && g.length == 5);
    CHECK_OK(dg__frame_check_payload(&g, payload));
    payload[2] ^= 1;
    CHECK(dg__frame_check_payload(&g, payload) == DG_ERR_CHECKSUM);
    CHECK(dg__frame_header_decode(b, 4, &g) == DG_ERR_TOO_LARGE);
    h.length = (uint64_t)1 << 63;
    dg__frame_header_encode(&h, b);
    CHECK(dg__frame_header_decode(b, DG_TCP_DEFAULT_MAX_MESSAGE, &g) == DG_ERR_TOO_LARGE);
    h.length = 5;
    h.version = 3;
    dg__frame_header_encode(&h, b);
    CHECK(dg__frame_header_decode(b, 5, &g) == DG_ERR_VERSION && g.version == 3);
    h.version = DG_TCP_VERSION;
    for (i = 0; i < 3; i++) { /* an unknown type, type 0, a heartbeat with an unknown flag */
        static const uint8_t bad[3][2] = {{0x99, 0}, {0, 0}, {DG__TCP_HEARTBEAT, 0x80}};
        h.type = bad[i][0];
        h.flags = bad[i][1];
        dg__frame_header_encode(&h, b);
        CHECK(dg__frame_header_decode(b, 5, &g) == DG_ERR_FORMAT);
    }
    h.flags = 0;
    dg__frame_header_encode(&h, b);
    b[0] = 'X';
    CHECK(dg__frame_header_decode(b, 5, &g) == DG_ERR_FORMAT);
}

TEST(handshake_payloads)
{
    dg__tcp_hello h, g;
    dg__tcp_welcome w, v;
    dg__tcp_peer_addr a[2], c[4];
    unsigned char b[128];
    char reason[64];
    uint32_t code, n;
    size_t len;
    memset(&h, 0, sizeof h);
    h.role = DG__TCP_ROLE_WORKER;
    h.worker_id = 3;
    h.listen_port = 4000;
    h.min_version = h.max_version = 1;
    h.config_hash[5] = 9;
    h.nonce[31] = 7;
    dg__tcp_hello_encode(&h, b);
    CHECK_OK(dg__tcp_hello_decode(b, DG__TCP_HELLO_SIZE, &g));
    CHECK(memcmp(&h, &g, sizeof h) == 0);
    CHECK(dg__tcp_hello_decode(b, DG__TCP_HELLO_SIZE - 1, &g) == DG_ERR_FORMAT);
    b[0] = 9;
    CHECK(dg__tcp_hello_decode(b, DG__TCP_HELLO_SIZE, &g) == DG_ERR_FORMAT);
    memset(&w, 0, sizeof w);
    w.n_workers = 4;
    w.iteration = 123;
    dg__tcp_welcome_encode(&w, b);
    CHECK_OK(dg__tcp_welcome_decode(b, DG__TCP_WELCOME_SIZE, &v));
    CHECK(v.n_workers == 4 && v.iteration == 123);
    len = dg__tcp_refuse_encode(DG__TCP_REFUSE_AUTH, "nope\x01", b, sizeof b);
    CHECK_OK(dg__tcp_refuse_decode(b, len, &code, reason, sizeof reason));
    CHECK(code == DG__TCP_REFUSE_AUTH && strcmp(reason, "nope?") == 0);
    CHECK(dg__tcp_refuse_decode(b, len - 1, &code, reason, sizeof reason) == DG_ERR_FORMAT);
    memset(a, 0, sizeof a);
    a[0].id = 1; a[0].port = 10; a[1].id = 2; a[1].port = 20; a[1].addr[15] = 1;
    len = dg__tcp_peers_encode(a, 2, b, sizeof b);
    CHECK_OK(dg__tcp_peers_decode(b, len, c, 4, &n));
    CHECK(n == 2 && c[1].port == 20 && c[1].addr[15] == 1);
    CHECK(dg__tcp_peers_decode(b, len, c, 1, &n) == DG_ERR_TOO_LARGE);
    {
        char host[64];
        uint16_t port;
        CHECK_OK(dg__tcp_parse_addr("127.0.0.1:7000", host, sizeof host, &port));
        CHECK(strcmp(host, "127.0.0.1") == 0 && port == 7000);
        CHECK(dg__tcp_parse_addr("127.0.0.1", host, sizeof host, &port) == DG_ERR_ARG);
        CHECK(dg__tcp_parse_addr("h:70000", host, sizeof host, &port) == DG_ERR_ARG);
    }
}

/* ---- transports in one process ---- */

static unsigned char hash_a[32] = {1}, hash_b[32] = {2};

/* A server of n_peers on loopback (any port) with secret (NULL: none)
   and the configuration hash_a. */
static dg_tcp_config server_config(int n_peers, const char *secret)
{
    dg_tcp_config c = dg_tcp_config_init();
    c.n_peers = n_peers;
    c.listen = "127.0.0.1:0";
    c.secret = secret;
    c.secret_len = secret ? strlen(secret) : 0;
    memcpy(c.config_hash, hash_a, 32);
    return c;
}

/* ... with short timeouts, for the tests of the handshake */
static dg_result make_server(dg_transport **t, int n_peers, const char *secret)
{
    dg_tcp_config c = server_config(n_peers, secret);
    c.max_message = (uint64_t)32 << 20;
    c.handshake_timeout_ms = 1500;
    c.frame_timeout_ms = 1500;
    c.max_pending = 32;
    return dg_tcp_server_create(t, &c);
}

static dg_result make_worker(dg_transport **t, int n_peers, int id, uint16_t port,
                             const char *secret, const unsigned char *hash, uint16_t version)
{
    dg_tcp_config c;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    c = dg_tcp_config_init();
    c.n_peers = n_peers;
    c.self = id;
    c.connect = addr;
    c.secret = secret;
    c.secret_len = secret ? strlen(secret) : 0;
    memcpy(c.config_hash, hash, 32);
    c.max_message = (uint64_t)32 << 20;
    c.protocol_version = version;
    return dg_tcp_worker_create(t, &c);
}

static dg_msg *make_msg(dg_transport *t, int type, int from, int to, size_t nf, uint32_t seed)
{
    dg_part_kind kinds[3] = {DG_PART_F32, DG_PART_I32, DG_PART_BYTES};
    size_t counts[3] = {nf, 3, 5}, i;
    dg_msg *m;
    if (dg_msg_create(t, type, from, to, 42, 3, kinds, counts, &m)) return NULL;
    for (i = 0; i < nf; i++) ((float *)m->part[0].data)[i] = (float)(i * 0.5 + seed);
    ((int32_t *)m->part[1].data)[2] = -7;
    memcpy(m->part[2].data, "bytes", 5);
    m->aux = -5;
    m->stat[0] = 1.5f;
    return m;
}

static int msg_ok(const dg_msg *m, int type, int from, size_t nf, uint32_t seed)
{
    const float *f = dg_msg_f32(m, 0, nf);
    const int32_t *k = dg_msg_i32(m, 1, 3);
    size_t i;
    if (!m || m->type != type || m->from != from || m->iteration != 42 || m->aux != -5 ||
        m->stat[0] != 1.5f || !f || !k || k[2] != -7 || memcmp(m->part[2].data, "bytes", 5))
        return 0;
    for (i = 0; i < nf; i++)
        if (f[i] != (float)(i * 0.5 + seed)) return 0;
    return 1;
}

TEST(transport_roundtrip)
{
    dg_transport *s = NULL, *w1 = NULL, *w2 = NULL;
    dg_msg *m;
    CHECK_OK(make_server(&s, 3, "sesame"));
    if (!s) return;
    CHECK_OK(make_worker(&w1, 3, 1, dg_tcp_port(s), "sesame", hash_a, 0));
    CHECK_OK(make_worker(&w2, 3, 2, dg_tcp_port(s), "sesame", hash_a, 0));
    if (!w1 || !w2) goto done;
    CHECK_OK(dg_transport_send(s, make_msg(s, DG_MSG_GEN_BATCHES, 0, 1, 1000, 1)));
    CHECK_OK(dg_transport_recv(w1, 1, 5000, &m));
    CHECK(msg_ok(m, DG_MSG_GEN_BATCHES, 0, 1000, 1));
    dg_msg_free(w1, m);
    CHECK_OK(dg_transport_send(w1, make_msg(w1, DG_MSG_FEEDBACK, 1, 0, 4 << 20, 2)));
    CHECK_OK(dg_transport_recv(s, 0, 10000, &m));
    CHECK(msg_ok(m, DG_MSG_FEEDBACK, 1, 4 << 20, 2));   /* 16 MB */
    dg_msg_free(s, m);
    /* worker to worker, peer to peer (the server told w1 where w2 listens) */
    {
        int k;
        for (k = 0; k < 100 && dg_transport_send(w1, make_msg(w1, DG_MSG_DISC, 1, 2, 777, 3)); k++) {
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
    }
    CHECK_OK(dg_transport_recv(w2, 2, 5000, &m));
    CHECK(msg_ok(m, DG_MSG_DISC, 1, 777, 3));
    dg_msg_free(w2, m);
    {
        uint64_t in, out;
        dg_tcp_wire_bytes(w2, 1, &in, &out);
        CHECK(in > 777 * 4);
        dg_tcp_wire_bytes(s, 2, &in, &out);
        CHECK(in < 1000); /* theta never went through the server */
    }
    /* over the limit: refused at the sender */
    CHECK(dg_transport_send(s, make_msg(s, DG_MSG_GEN_BATCHES, 0, 1, 9 << 20, 1)) == DG_ERR_TOO_LARGE);
    CHECK(dg_transport_recv(w1, 1, 0, &m) == DG_ERR_TIMEOUT);
done:
    dg_transport_close(w1);
    dg_transport_close(w2);
    dg_transport_close(s);
}

/* Several threads receive on one endpoint: one at a time reads the
   sockets (dg__tcp_await), the others wait for what it delivers or take
   over; every message arrives once, intact, and in its sender's order. */
#define RS_EACH 300
#define RS_THREADS 3
typedef struct rs_arg {
    dg_transport *t;
    int *left, bad, got;
    pthread_mutex_t *mu;
    unsigned char *seen; /* [from - 1][seq] */
} rs_arg;

static size_t rs_floats(int seq) { return seq % 2 ? 16384 : 256; } /* 64 KB and 1 KB */

static void *rs_recv(void *p)
{
    rs_arg *a = (rs_arg *)p;
    int last[3] = {-1, -1, -1};
    int64_t end = dg__tcp_ms() + 30000;
    for (;;) {
        dg_msg *m;
        int seq, done;
        pthread_mutex_lock(a->mu);
        done = *a->left <= 0;
        pthread_mutex_unlock(a->mu);
        if (done || dg__tcp_ms() > end) break;
        if (dg_transport_recv(a->t, 0, 100, &m) != DG_OK) continue;
        seq = m->part[0].count ? (int)((const float *)m->part[0].data)[0] : -1;
        if (m->from < 1 || m->from > 2 || seq < 0 || seq >= RS_EACH || seq <= last[m->from] ||
            !msg_ok(m, DG_MSG_FEEDBACK, m->from, rs_floats(seq), (uint32_t)seq)) {
            a->bad++;
        } else {
            last[m->from] = seq;
            pthread_mutex_lock(a->mu);
            a->seen[(m->from - 1) * RS_EACH + seq]++;
            (*a->left)--;
            pthread_mutex_unlock(a->mu);
            a->got++;
        }
        dg_msg_free(a->t, m);
    }
    return NULL;
}

TEST(receivers_share_an_endpoint)
{
    dg_transport *s = NULL, *w[2] = {NULL, NULL};
    pthread_t th[RS_THREADS];
    rs_arg a[RS_THREADS];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    unsigned char seen[2 * RS_EACH];
    int left = 2 * RS_EACH, i, k, once = 1, bad = 0;
    dg_msg *m;
    int64_t t0;
    dg_result r;
    memset(seen, 0, sizeof seen);
    CHECK_OK(make_server(&s, 3, "sesame"));
    if (!s) return;
    CHECK_OK(make_worker(&w[0], 3, 1, dg_tcp_port(s), "sesame", hash_a, 0));
    CHECK_OK(make_worker(&w[1], 3, 2, dg_tcp_port(s), "sesame", hash_a, 0));
    if (!w[0] || !w[1]) goto done;
    for (i = 0; i < RS_THREADS; i++) {
        a[i].t = s;
        a[i].left = &left;
        a[i].mu = &mu;
        a[i].seen = seen;
        a[i].bad = a[i].got = 0;
        pthread_create(&th[i], NULL, rs_recv, &a[i]);
    }
    for (k = 0; k < RS_EACH; k++)
        for (i = 0; i < 2; i++)
            CHECK_OK(dg_transport_send(w[i], make_msg(w[i], DG_MSG_FEEDBACK, i + 1, 0,
                                                      rs_floats(k), (uint32_t)k)));
    for (i = 0; i < RS_THREADS; i++) {
        pthread_join(th[i], NULL);
        bad += a[i].bad;
        printf("  receiver %d took %d messages\n", i, a[i].got);
    }
    for (k = 0; k < 2 * RS_EACH; k++) once &= seen[k] == 1;
    CHECK(bad == 0);
    CHECK(left == 0);
    CHECK(once);
    /* nothing more comes: a receiver's timeout holds */
    t0 = dg__tcp_ms();
    r = dg_transport_recv(s, 0, 300, &m);
    CHECK(r == DG_ERR_TIMEOUT);
    CHECK(dg__tcp_ms() - t0 >= 250 && dg__tcp_ms() - t0 < 3000);
done:
    dg_transport_close(w[0]);
    dg_transport_close(w[1]);
    dg_transport_close(s);
}

TEST(handshake_refusals)
{
    dg_transport *s = NULL, *w = NULL;
    CHECK_OK(make_server(&s, 3, "sesame"));
    if (!s) return;
    CHECK(make_worker(&w, 3, 1, dg_tcp_port(s), "wrong", hash_a, 0) == DG_ERR_AUTH);
    CHECK(strstr(dg_last_error(), "authentication failed") != NULL);
    CHECK(make_worker(&w, 3, 1, dg_tcp_port(s), NULL, hash_a, 0) == DG_ERR_AUTH);
    CHECK(make_worker(&w, 3, 1, dg_tcp_port(s), "sesame", hash_b, 0) == DG_ERR_CONFIG);
    CHECK(strstr(dg_last_error(), "configuration mismatch") != NULL);
    CHECK(make_worker(&w, 3, 1, dg_tcp_port(s), "sesame", hash_a, 3) == DG_ERR_VERSION);
    CHECK(strstr(dg_last_error(), "protocol version 3") != NULL);
    CHECK(make_worker(&w, 3, 7, dg_tcp_port(s), "sesame", hash_a, 0) == DG_ERR_ARG);
    CHECK(make_worker(&w, 4, 3, dg_tcp_port(s), "sesame", hash_a, 0) != DG_OK); /* no slot 3 */
    CHECK(dg_tcp_refused(s) >= 5);
    dg_transport_close(s);
    {   /* no secret: loopback only, unless told otherwise */
        dg_tcp_config c;
        c = dg_tcp_config_init();
        c.n_peers = 2;
        c.listen = "0.0.0.0:0";
        CHECK(dg_tcp_server_create(&s, &c) == DG_ERR_AUTH);
        c.allow_insecure = 1;
        CHECK_OK(dg_tcp_server_create(&s, &c));
        dg_transport_close(s);
    }
}

/* ---- hostile clients ---- */

static int raw_connect(uint16_t port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* 1 when the server closed fd within ms (reads and discards what comes). */
static int closed_within(int fd, int ms)
{
    int64_t end = dg__tcp_ms() + ms;
    char buf[512];
    while (dg__tcp_ms() < end) {
        struct pollfd p;
        p.fd = fd;
        p.events = POLLIN;
        if (poll(&p, 1, 50) == 1) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) return 1;
        }
    }
    return 0;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (!f) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* stop and rounds are shared with the main thread: atomics */
typedef struct pinger {
    dg_transport *s, *w;
    int stop;
    int rounds, failures;
} pinger;

/* The legitimate worker: a message to the server and its answer, again
   and again, while the hostile clients run. */
static void *ping_main(void *arg)
{
    pinger *p = (pinger *)arg;
    while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
        dg_msg *m;
        if (dg_transport_send(p->w, make_msg(p->w, DG_MSG_FEEDBACK, 1, 0, 10000, 4)) ||
            dg_transport_recv(p->s, 0, 5000, &m) || !msg_ok(m, DG_MSG_FEEDBACK, 1, 10000, 4)) {
            p->failures++;
            continue;
        }
        dg_msg_free(p->s, m);
        if (dg_transport_send(p->s, make_msg(p->s, DG_MSG_GEN_BATCHES, 0, 1, 10000, 5)) ||
            dg_transport_recv(p->w, 1, 5000, &m) || !msg_ok(m, DG_MSG_GEN_BATCHES, 0, 10000, 5)) {
            p->failures++;
            continue;
        }
        dg_msg_free(p->w, m);
        __atomic_fetch_add(&p->rounds, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* The legitimate pair of the hostile tests, in p: a server of n_peers and
   worker 1 connected to it; 0 (nothing left open) when either could not
   be made.  ping_main then keeps them talking. */
static int pinger_open(pinger *p, int n_peers)
{
    memset(p, 0, sizeof *p);
    CHECK_OK(make_server(&p->s, n_peers, "sesame"));
    if (!p->s) return 0;
    CHECK_OK(make_worker(&p->w, n_peers, 1, dg_tcp_port(p->s), "sesame", hash_a, 0));
    if (!p->w) {
        dg_transport_close(p->s);
        return 0;
    }
    return 1;
}

static void send_all(int fd, const void *p, size_t n)
{
    ssize_t w = write(fd, p, n);
    (void)w;
}

TEST(hostile_clients)
{
    dg_transport *s = NULL, *w = NULL;
    unsigned char frame[DG_TCP_HEADER_SIZE + 100], junk[4096];
    dg__frame_header h;
    pinger p;
    pthread_t th;
    long rss0, rss1;
    int fds[200], i, closed, rounds0;
    if (!pinger_open(&p, 2)) return;
    s = p.s;
    w = p.w;
    pthread_create(&th, NULL, ping_main, &p);
    rss0 = rss_kb();
    /* random bytes */
    for (i = 0; i < (int)sizeof junk; i++) junk[i] = (unsigned char)(i * 131 + 7);
    fds[0] = raw_connect(dg_tcp_port(s));
    send_all(fds[0], junk, sizeof junk);
    CHECK(closed_within(fds[0], 2000));
    close(fds[0]);
    /* wrong magic */
    h = dg__frame_make(DG__TCP_HEARTBEAT, 0, 1, 0, NULL, 0);
    dg__frame_header_encode(&h, frame);
    frame[1] = 'Z';
    fds[0] = raw_connect(dg_tcp_port(s));
    send_all(fds[0], frame, DG_TCP_HEADER_SIZE);
    CHECK(closed_within(fds[0], 2000));
    close(fds[0]);
    /* a length field of 2^63 */
    h = dg__frame_make(DG__TCP_HELLO, 0, 1, 0, NULL, 0);
    h.length = (uint64_t)1 << 63;
    dg__frame_header_encode(&h, frame);
    fds[0] = raw_connect(dg_tcp_port(s));
    send_all(fds[0], frame, DG_TCP_HEADER_SIZE);
    CHECK(closed_within(fds[0], 2000));
    close(fds[0]);
    /* a CRC mismatch */
    memset(frame + DG_TCP_HEADER_SIZE, 1, DG__TCP_HELLO_SIZE);
    h = dg__frame_make(DG__TCP_HELLO, 0, 1, 0, frame + DG_TCP_HEADER_SIZE, DG__TCP_HELLO_SIZE);
    h.crc ^= 1;
    dg__frame_header_encode(&h, frame);
    fds[0] = raw_connect(dg_tcp_port(s));
    send_all(fds[0], frame, DG_TCP_HEADER_SIZE + DG__TCP_HELLO_SIZE);
    CHECK(closed_within(fds[0], 2000));
    close(fds[0]);
    /* a frame cut in the middle (the client stays connected): timed out */
    h.crc ^= 1;
    dg__frame_header_encode(&h, frame);
    fds[0] = raw_connect(dg_tcp_port(s));
    send_all(fds[0], frame, DG_TCP_HEADER_SIZE + 10);
    CHECK(closed_within(fds[0], 4000));
    close(fds[0]);
    /* a slow client: one byte per second of a valid HELLO frame */
    fds[0] = raw_connect(dg_tcp_port(s));
    for (i = 0, closed = 0; i < 4 && !closed; i++) {
        send_all(fds[0], frame + i, 1);
        closed = closed_within(fds[0], 1000);
    }
    CHECK(closed); /* handshake timeout 1.5 s */
    close(fds[0]);
    /* 200 connections at once: the ones over the limit are refused, the
       others time out in their handshake */
    for (i = 0; i < 200; i++) fds[i] = raw_connect(dg_tcp_port(s));
    for (i = 0, closed = 0; i < 200; i++) {
        if (fds[i] < 0 || closed_within(fds[i], i < 150 ? 10 : 4000)) closed++;
    }
    for (i = 0, closed = 0; i < 200; i++) {
        if (fds[i] < 0 || closed_within(fds[i], 100)) closed++;
        if (fds[i] >= 0) close(fds[i]);
    }
    CHECK(closed == 200);
    rounds0 = __atomic_load_n(&p.rounds, __ATOMIC_ACQUIRE);
    {
        struct timespec ts = {0, 300000000};
        nanosleep(&ts, NULL);
    }
    __atomic_store_n(&p.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    rss1 = rss_kb();
    printf("  hostile: %d legitimate round trips (%d after the attacks), %d failures, "
           "%llu refused, RSS %+ld KB\n", p.rounds, p.rounds - rounds0, p.failures,
           (unsigned long long)dg_tcp_refused(s), rss1 - rss0);
    CHECK(p.failures == 0);
    CHECK(p.rounds > 20 && p.rounds > rounds0);
    CHECK(dg_transport_connected(s, 1));
    CHECK(rss1 - rss0 < 64 * 1024);
    dg_transport_close(w);
    dg_transport_close(s);
}

/* ---- real processes ---- */

/* tests/proc.h: spawn, reap, wait_for, show, read_floats */

/* one line of the file holds both a and b */
static int line_has(const char *name, const char *a, const char *b)
{
    char line[1024];
    int found = 0;
    FILE *f;
    if (!(f = fopen(tpath(name), "r"))) return 0;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, a) && strstr(line, b);
    fclose(f);
    return found;
}

static int wait_for_line(const char *name, const char *a, const char *b, int ms)
{
    double end = dg__now() + ms / 1e3;
    while (dg__now() < end) {
        if (line_has(name, a, b)) return 1;
        dg__drive_sleep_ms(20);
    }
    return 0;
}

/* build/distgan --transport tcp --role ROLE ...: the MLPs, one thread, and
   no evaluation on the server (an option a worker does not use is an error) */
#define TCP_ARGS(...) ((char *const[]){(char *)bin, "--transport", "tcp", "--arch", "mlp", \
                                       "--threads", "1", __VA_ARGS__, NULL})
#define ARGS(role, ...) (strcmp(role, "server") ? TCP_ARGS("--role", role, __VA_ARGS__) \
                         : TCP_ARGS("--role", role, "--no-eval", __VA_ARGS__))

/* workers 1..n of a run: w[i] is worker i + 1, its output in <prefix><i + 1>.out/.err */
#define SPAWN_WORKERS(w, n, prefix, addr, ...)                                               \
    do {                                                                                    \
        int w_;                                                                             \
        for (w_ = 0; w_ < (n); w_++)                                                        \
            (w)[w_] = spawn(nth(prefix, w_ + 1), ARGS("worker", "--connect", addr, "--id",  \
                                                      nth("", w_ + 1), __VA_ARGS__));       \
    } while (0)

/* The server <tag>srv with its own arguments (in parentheses) and the
   common ones, then its workers 1..n as <tag>w1.. with the common ones. */
#define UNPAREN(...) __VA_ARGS__
#define START_RUN(srv, w, n, tag, addr, server_args, ...)                                    \
    do {                                                                                    \
        (srv) = spawn(tag "srv",                                                            \
                      ARGS("server", "--listen", addr, UNPAREN server_args, __VA_ARGS__));  \
        SPAWN_WORKERS(w, n, tag "w", addr, __VA_ARGS__);                                    \
    } while (0)

/* a small run: n workers, 100 procedural shapes each, batches of 8 */
#define SMALL_RUN(n) "--workers", #n, "--dataset", "shapes:" #n "00", "--batch", "8"
/* fast fault detection: a peer silent for dead ms is dropped (heartbeats
   every 300 ms); the feedback barrier waits barrier ms */
#define FAULT_MS(dead, barrier) "--dead-ms", #dead, "--heartbeat-ms", "300", "--barrier-ms", #barrier

/* "it     10/80 |": the start of the server's progress line at iteration it */
static const char *it_is(int it, int of)
{
    static char buf[4][48];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "it %6d/%d |", it, of);
    return buf[k];
}

/* kill -9 of the worker *w, which the server <srv> (its srv.out and
   srv.err) must see as `live` within live_ms; then its restart, <name>
   with args, which the server must take back (logging `joined`) within
   join_ms.  1 when both were seen, else says which was not. */
static int worker_restarts(pid_t *w, const char *srv, const char *live, int live_ms,
                           const char *name, char *const *args, const char *joined, int join_ms)
{
    char out[64], err[64];
    int left, back;
    snprintf(out, sizeof out, "%s.out", srv);
    snprintf(err, sizeof err, "%s.err", srv);
    kill(*w, SIGKILL);
    reap(*w, 2000);
    if (!(left = wait_for(out, live, live_ms)))
        printf("  %s: no '%s' within %d ms of the kill\n", out, live, live_ms);
    *w = spawn(name, args);
    if (!(back = wait_for(err, joined, join_ms)))
        printf("  %s: no '%s' within %d ms of the restart\n", err, joined, join_ms);
    return left && back;
}

#define DATA "shapes:640"
#define NW 4
#define BATCH 16
#define ITERS 12   /* a swap every round(160 / 16) = 10 iterations: one swap */

/* the run's settings in an MD-GAN or an FL-GAN config, as build/distgan sets them */
#define TCP_RUN(cfg, ds)                                                          \
    ((cfg).n_workers = NW, (cfg).c = (ds).c, (cfg).h = (ds).h, (cfg).w = (ds).w, \
     (cfg).arch = DG_ARCH_MLP, (cfg).batch = BATCH, (cfg).seed = 1)

/* G (copied into *g, *n floats) of the in-process run the TCP run must
   equal: `rounds` MD-GAN iterations, or FL-GAN rounds of 3 local
   iterations, with the codecs of the spec codec (--codec) */
static void inproc_g(int md, int rounds, const char *codec, float **g, size_t *n)
{
    dg_dataset ds;
    dg_partition part;
    dg_pool *pool;
    dg_mdgan_run *mr = NULL;
    dg_flgan_run *fr = NULL;
    dg_net *gen = NULL;
    int i;
    *g = NULL;
    memset(&ds, 0, sizeof ds);
    dg_dataset_make_shapes(&ds, 640, 1);
    dg_partition_iid(&part, ds.n, NW, 1);
    dg_pool_create(&pool, 1);
    if (md) {
        dg_mdgan_config c = dg_mdgan_config_init();
        TCP_RUN(c, ds);
        dg_codec_set_parse(codec, &c.codec);
        if (dg_mdgan_run_create(&mr, &c, pool, &ds, &part, NULL, 0, NULL, 0) == DG_OK) {
            for (i = 0; i < rounds; i++) dg_mdgan_run_iteration(mr);
            gen = dg_mdgan_server_generator(dg_mdgan_run_server(mr));
        }
    } else {
        dg_flgan_config c = dg_flgan_config_init();
        TCP_RUN(c, ds);
        c.local_iters = 3;
        dg_codec_set_parse(codec, &c.codec);
        if (dg_flgan_run_create(&fr, &c, pool, &ds, &part, NULL, 0) == DG_OK) {
            for (i = 0; i < rounds; i++) dg_flgan_run_round(fr);
            gen = dg_flgan_server_generator(dg_flgan_run_server(fr));
        }
    }
    if (gen) {
        *n = dg_net_param_count(gen);
        *g = (float *)malloc(*n * sizeof(float));
        memcpy(*g, dg_net_params(gen), *n * 4);
    }
    dg_mdgan_run_free(mr);
    dg_flgan_run_free(fr);
    dg_pool_destroy(pool);
    dg_partition_free(&part);
    dg_dataset_free(&ds);
}

static void tcp_vs_inproc(const char *algo, const char *codec)
{
    char addr[32], nw[8], bs[8], it[8], what[128];
    pid_t srv, wk[NW];
    float *a;
    size_t na = 0;
    int i, md = !strcmp(algo, "mdgan");
    if (!proc_begin(addr, sizeof addr)) return;
    snprintf(nw, sizeof nw, "%d", NW);
    snprintf(bs, sizeof bs, "%d", BATCH);
    snprintf(it, sizeof it, "%d", md ? ITERS : 2 * 3); /* FL-GAN: 2 rounds of 3 */
    srv = spawn("srv", ARGS("server", "--listen", addr, "--workers", nw, "--algo", (char *)algo,
                            "--dataset", DATA, "--batch", bs, "--iters", it,
                            md ? "--swap-every" : "--local-iters", md ? "0" : "3", "--codec",
                            (char *)codec, "--out", "."));
    for (i = 0; i < NW; i++)
        wk[i] = spawn(nth("w", i + 1),
                      ARGS("worker", "--connect", addr, "--workers", nw, "--id", nth("", i + 1),
                           "--algo", (char *)algo, "--dataset", DATA, "--batch", bs,
                           md ? "--swap-every" : "--local-iters", md ? "0" : "3", "--codec",
                           (char *)codec));
    if (!reap_run(srv, 60000, wk, NW, 10000)) {
        CHECK(0);
        show("srv.err");
    }
    inproc_g(md, md ? ITERS : 2, codec, &a, &na);
    snprintf(what, sizeof what, "%s (codecs %s): generator parameters over TCP and in-process",
             algo, codec);
    check_same_as_file(what, a, na, "g.f32");
}

TEST(mdgan_tcp_equals_inproc) { tcp_vs_inproc("mdgan", "batch=none"); }
TEST(flgan_tcp_equals_inproc) { tcp_vs_inproc("flgan", "upload=none"); }
/* the codecs travel the same bytes both ways: the processes agree */
TEST(mdgan_codecs_tcp_equals_inproc) { tcp_vs_inproc("mdgan", "batch=int8,feedback=topk:0.1,swap=f16"); }
TEST(flgan_codecs_tcp_equals_inproc) { tcp_vs_inproc("flgan", "upload=topk:0.05,download=int8"); }
/* download deltas: round 0 dense, round 1 a delta from each worker's reference */
TEST(flgan_download_deltas_tcp_equals_inproc) { tcp_vs_inproc("flgan", "upload=topk:0.05,download=topk:0.05"); }

TEST(worker_killed_and_rejoins)
{
    char addr[32];
    pid_t srv, w[3];
    if (!proc_begin(addr, sizeof addr)) return;
#define COMMON SMALL_RUN(3), FAULT_MS(1500, 2000), "--swap-every", "5"
    START_RUN(srv, w, 3, "k", addr, ("--iters", "80", "--log-every", "1"), COMMON);
    CHECK(wait_for("ksrv.out", it_is(10, 80), 30000));
    CHECK(worker_restarts(&w[1], "ksrv", "| live 2/3 |", 15000,
                          "kw2b", ARGS("worker", "--connect", addr, "--id", "2", COMMON),
                          "worker 2 joins with a copy of D_", 15000));
    CHECK(reap_run(srv, 60000, w, 3, 10000));
    CHECK(line_has("ksrv.out", it_is(80, 80), "| live 3/3 |"));
    if (th_cur_failed) { show("ksrv.out"); show("ksrv.err"); show("kw2b.err"); }
}

TEST(server_killed_and_resumed)
{
    char addr[32];
    pid_t srv, w[2];
    if (!proc_begin(addr, sizeof addr)) return;
#define COMMON2 SMALL_RUN(2), FAULT_MS(1500, 3000), "--out", "run"
    START_RUN(srv, w, 2, "r", addr,
              ("--iters", "60", "--checkpoint-every", "5", "--log-every", "1"), COMMON2);
    CHECK(wait_for("rsrv.out", it_is(12, 60), 30000));
    kill(srv, SIGKILL);
    reap(srv, 2000);
    srv = spawn("rsrv2", ARGS("server", "--listen", addr, "--iters", "60", "--resume",
                              "--checkpoint-every", "5", "--log-every", "1", COMMON2));
    CHECK(wait_for("rsrv2.err", "resumed from", 10000));
    CHECK(reap_run(srv, 60000, w, 2, 10000));
    CHECK(line_has("rsrv2.out", it_is(60, 60), "| live 2/2 |"));
    CHECK(file_has("rw1.err", "reconnected"));
    if (th_cur_failed) { show("rsrv.out"); show("rsrv2.err"); show("rw1.err"); }
}

TEST(refusals_and_sigterm)
{
    char addr[32], s1[512], s2[512], ck[512];
    pid_t srv, w;
    FILE *f;
    struct stat st;
    if (!proc_begin(addr, sizeof addr)) return;
    snprintf(s1, sizeof s1, "%s", tpath("secret1"));
    snprintf(s2, sizeof s2, "%s", tpath("secret2"));
    snprintf(ck, sizeof ck, "%s", tpath("term/server.ckpt"));
    if ((f = fopen(s1, "w"))) { fputs("open sesame\n", f); fclose(f); }
    if ((f = fopen(s2, "w"))) { fputs("open barley\n", f); fclose(f); }
    srv = spawn("fsrv", ARGS("server", "--listen", addr, "--iters", "100000", "--secret-file", s1,
                             "--out", "term", "--log-every", "1", SMALL_RUN(1)));
    CHECK(wait_for("fsrv.out", "listening", 10000));
    w = spawn("fw1", ARGS("worker", "--connect", addr, "--id", "1", "--secret-file", s2, SMALL_RUN(1)));
    CHECK(reap(w, 10000) == 1);
    CHECK(file_has("fw1.err", "authentication failed"));
    w = spawn("fw2", ARGS("worker", "--connect", addr, "--id", "1", "--secret-file", s1,
                          "--protocol-version", "3", SMALL_RUN(1)));
    CHECK(reap(w, 10000) == 1);
    CHECK(file_has("fw2.err", "protocol version 3"));
    w = spawn("fw3", ARGS("worker", "--connect", addr, "--id", "1", "--secret-file", s1,
                          "--workers", "1", "--dataset", "shapes:100", "--batch", "4"));
    CHECK(reap(w, 10000) == 1);
    CHECK(file_has("fw3.err", "configuration mismatch"));
    /* the right one trains; SIGTERM: the server checkpoints and stops */
    w = spawn("fw4", ARGS("worker", "--connect", addr, "--id", "1", "--secret-file", s1, SMALL_RUN(1)));
    CHECK(wait_for("fsrv.out", it_is(20, 100000), 20000));
    kill(srv, SIGTERM);
    CHECK(reap(srv, 10000) == 0);
    CHECK(file_has("fsrv.err", "stop requested"));
    CHECK(stat(ck, &st) == 0 && st.st_size > 0);
    kill(w, SIGTERM);
    CHECK(reap(w, 10000) >= 0);
    if (th_cur_failed) { show("fsrv.err"); show("fw1.err"); show("fw2.err"); show("fw3.err"); }
}

/* ---- issue 10, the audit of the transport: each test failed on 38a04ff ---- */

/* Reads exactly n bytes within ms; 0 when they came. */
static int read_exact(int fd, void *p, size_t n, int ms)
{
    int64_t end = dg__tcp_ms() + ms;
    size_t got = 0;
    while (got < n) {
        struct pollfd q;
        ssize_t k;
        int left = (int)(end - dg__tcp_ms());
        q.fd = fd;
        q.events = POLLIN;
        if (left <= 0 || poll(&q, 1, left) != 1) return -1;
        k = read(fd, (char *)p + got, n - got);
        if (k <= 0) return -1;
        got += (size_t)k;
    }
    return 0;
}

/* One write (two would wait for Nagle and a delayed ACK). */
static int send_frame(int fd, uint8_t type, uint32_t sender, const void *p, size_t n)
{
    unsigned char b[DG_TCP_HEADER_SIZE + 128];
    dg__frame_header h = dg__frame_make(type, 0, sender, 0, p, n);
    if (n > 128) return -1;
    dg__frame_header_encode(&h, b);
    if (n) memcpy(b + DG_TCP_HEADER_SIZE, p, n);
    return write(fd, b, DG_TCP_HEADER_SIZE + n) == (ssize_t)(DG_TCP_HEADER_SIZE + n) ? 0 : -1;
}

/* Completes the handshake on a raw connected socket as worker `id`
   (hash_a): fd, or -1 (closed).  It can then send what no well-behaved
   worker would. */
static int raw_handshake(int fd, int id, const char *secret)
{
    unsigned char hello[DG__TCP_HELLO_SIZE], buf[DG_TCP_HEADER_SIZE + 64], proof[32];
    dg__tcp_hello h;
    if (fd < 0) return -1;
    memset(&h, 0, sizeof h);
    h.role = DG__TCP_ROLE_WORKER;
    h.worker_id = (uint32_t)id;
    h.min_version = h.max_version = DG_TCP_VERSION;
    memcpy(h.config_hash, hash_a, 32);
    h.nonce[0] = (unsigned char)id;
    dg__tcp_hello_encode(&h, hello);
    if (send_frame(fd, DG__TCP_HELLO, (uint32_t)id, hello, sizeof hello) ||
        read_exact(fd, buf, DG_TCP_HEADER_SIZE + DG__TCP_NONCE, 3000) || buf[6] != DG__TCP_CHALLENGE)
        goto fail;
    dg__tcp_client_proof(secret, strlen(secret), buf + DG_TCP_HEADER_SIZE, hello, proof);
    if (send_frame(fd, DG__TCP_AUTH, (uint32_t)id, proof, 32) ||
        read_exact(fd, buf, DG_TCP_HEADER_SIZE + DG__TCP_WELCOME_SIZE, 3000) ||
        buf[6] != DG__TCP_WELCOME)
        goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

static int raw_worker(uint16_t port, int id, const char *secret)
{
    return raw_handshake(raw_connect(port), id, secret);
}

/* A message frame's heads for m (TCP header, DGMS header and part table,
   as dg__tcp_write_msg writes them) into b; the values are the caller's.
   Returns the bytes written. */
static size_t app_heads(const dg_msg *m, unsigned char *b)
{
    size_t fb = dg_msg_frame_bytes(m);
    dg__frame_header h = dg__frame_make((uint8_t)m->type, 0, (uint32_t)m->from,
                                      (uint64_t)m->iteration, NULL, 0);
    dg__msg_head_encode(m, b + DG_TCP_HEADER_SIZE, 0);
    h.length = fb + dg_msg_payload_bytes(m);
    h.crc = dg_crc32(0, b + DG_TCP_HEADER_SIZE, DG_MSG_HEADER_BYTES);
    dg__frame_header_encode(&h, b);
    return DG_TCP_HEADER_SIZE + fb;
}

/* The heads of a FEEDBACK message of `bytes` payload (one part) from
   worker id, and nothing more. */
static int declare_feedback(int fd, int id, uint64_t bytes)
{
    unsigned char b[DG_TCP_HEADER_SIZE + DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES];
    dg_msg m;
    size_t n;
    memset(&m, 0, sizeof m);
    m.type = DG_MSG_FEEDBACK;
    m.from = id;
    m.to = 0;
    m.iteration = 1;
    m.n_parts = 1;
    m.part[0].kind = DG_PART_BYTES;
    m.part[0].count = (size_t)bytes;
    n = app_heads(&m, b);
    b[DG_TCP_HEADER_SIZE + DG_MSG_HEADER_BYTES] = DG_PART_F32; /* the part table is not */
    dg__le64(b + DG_TCP_HEADER_SIZE + DG_MSG_HEADER_BYTES + 8, bytes / 4); /* under that CRC */
    return write(fd, b, n) == (ssize_t)n ? 0 : -1;
}

/* Item 3: authenticated peers that declare huge messages and send nothing
   more made the server take (and touch) every declared buffer, then keep
   it in the pool: 1.5 GB from ten connections.  Memory now follows the
   bytes that came, and the legitimate worker keeps going. */
TEST(declared_sizes_cost_nothing)
{
    dg_transport *s = NULL, *w = NULL;
    pinger p;
    pthread_t th;
    long rss0, rss1, rss2;
    int fds[10], i, in = 0, closed = 0, rounds0;
    if (!pinger_open(&p, 12)) return;                 /* max_message 32 MiB */
    s = p.s;
    w = p.w;
    pthread_create(&th, NULL, ping_main, &p);
    while (__atomic_load_n(&p.rounds, __ATOMIC_ACQUIRE) < 20) dg__tcp_sleep_ms(10);
    rss0 = rss_kb();                                  /* the clean run */
    for (i = 0; i < 10; i++) {
        fds[i] = raw_worker(dg_tcp_port(s), 2 + i, "sesame");
        if (fds[i] >= 0 && declare_feedback(fds[i], 2 + i, ((uint64_t)32 << 20) - 4096 * (i + 1)) == 0)
            in++;
    }
    CHECK(in == 10);
    dg__tcp_sleep_ms(500);                            /* the server read every head */
    rss1 = rss_kb();
    rounds0 = __atomic_load_n(&p.rounds, __ATOMIC_ACQUIRE);
    for (i = 0; i < 10; i++)                          /* the frame timeout (1.5 s) ends them */
        if (fds[i] >= 0 && closed_within(fds[i], 5000)) closed++;
    CHECK(closed == in);
    dg__tcp_sleep_ms(200);
    __atomic_store_n(&p.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    rss2 = rss_kb();
    printf("  10 declared messages of ~32 MiB: RSS %ld MB clean, %+ld MB while declared, "
           "%+ld MB after; %d round trips meanwhile, %d failures\n", rss0 / 1024,
           (rss1 - rss0) / 1024, (rss2 - rss0) / 1024, p.rounds - rounds0, p.failures);
    CHECK(rss1 - rss0 < 64 * 1024);
    CHECK(rss2 - rss0 < 64 * 1024);
    CHECK(p.failures == 0 && p.rounds > rounds0);
    CHECK(dg_transport_connected(s, 1));
    for (i = 0; i < 10; i++)
        if (fds[i] >= 0) close(fds[i]);
    dg_transport_close(w);
    dg_transport_close(s);
}

/* Item 3: a message's declared size must fit its type in this run; a type
   the endpoint never receives is refused from the header. */
TEST(message_limits_per_type)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    uint64_t lim[DG_MSG_TYPE_MAX + 1], bd;
    dg_transport *s = NULL, *w = NULL;
    dg_msg *m;
    int fd;
    c.n_workers = 3; c.c = 1; c.h = 28; c.w = 28; c.arch = DG_ARCH_MLP; c.batch = 16;
    bd = 16 * 784;
    CHECK_OK(dg_mdgan_max_payload(&c, 0, lim));
    CHECK(lim[DG_MSG_FEEDBACK] == DG_MSG_HEADER_BYTES + 16 + 4 * bd);
    CHECK(lim[DG_MSG_GEN_BATCHES] == 0 && lim[DG_MSG_DISC] == 0 && lim[DG_MSG_USER] == 0);
    CHECK_OK(dg_mdgan_max_payload(&c, 2, lim));
    CHECK(lim[DG_MSG_GEN_BATCHES] == DG_MSG_HEADER_BYTES + 32 + 8 * bd && lim[DG_MSG_FEEDBACK] == 0);
    CHECK(lim[DG_MSG_STOP] == DG_MSG_HEADER_BYTES && lim[DG_MSG_SWAP] == DG_MSG_HEADER_BYTES);
    CHECK(lim[DG_MSG_DISC] > DG_MSG_HEADER_BYTES + 3 * 4 * (uint64_t)784 * 512); /* θ and Adam's moments */
    /* a server that takes only FEEDBACK of the pinger's size */
    CHECK_OK(make_server(&s, 4, "sesame"));
    if (!s) return;
    CHECK_OK(make_worker(&w, 4, 1, dg_tcp_port(s), "sesame", hash_a, 0));
    memset(lim, 0, sizeof lim);
    lim[DG_MSG_FEEDBACK] = DG_MSG_HEADER_BYTES + 3 * 16 + 4 * 10000 + 4 * 3 + 5;
    dg_transport_set_limits(s, lim);
    if (w) {
        CHECK_OK(dg_transport_send(w, make_msg(w, DG_MSG_FEEDBACK, 1, 0, 10000, 4)));
        CHECK_OK(dg_transport_recv(s, 0, 5000, &m));
        CHECK(msg_ok(m, DG_MSG_FEEDBACK, 1, 10000, 4));
        dg_msg_free(s, m);
    }
    fd = raw_worker(dg_tcp_port(s), 2, "sesame");     /* one byte over: closed at once */
    CHECK(fd >= 0 && declare_feedback(fd, 2, lim[DG_MSG_FEEDBACK] - (DG_MSG_HEADER_BYTES + 16) + 1) == 0);
    CHECK(closed_within(fd, 1000));                   /* the frame timeout is 1.5 s */
    if (fd >= 0) close(fd);
    fd = raw_worker(dg_tcp_port(s), 3, "sesame");     /* a type the server never receives */
    if (fd >= 0) {
        unsigned char b[24];
        memset(b, 0, sizeof b);
        CHECK(send_frame(fd, DG_MSG_STOP, 3, b, sizeof b) == 0);
        CHECK(closed_within(fd, 1000));
        close(fd);
    }
    CHECK(w && dg_transport_connected(s, 1));
    dg_transport_close(w);
    dg_transport_close(s);
}

/* A malformed frame from an authenticated peer closes that connection only,
   and the log names the peer's id and address. */
TEST(malformed_frame_names_the_peer)
{
    static log_buf log;
    dg_tcp_config c;
    dg_transport *s = NULL, *w = NULL;
    dg_msg *m;
    int fd;
    memset(&log, 0, sizeof log);
    pthread_mutex_init(&log.mu, NULL);
    c = server_config(3, "sesame");
    c.log = log_to;
    c.log_user = &log;
    CHECK_OK(dg_tcp_server_create(&s, &c));
    if (!s) return;
    CHECK_OK(make_worker(&w, 3, 1, dg_tcp_port(s), "sesame", hash_a, 0));
    fd = raw_worker(dg_tcp_port(s), 2, "sesame");
    if (fd >= 0) {
        unsigned char b[DG_TCP_HEADER_SIZE + DG_MSG_HEADER_BYTES + 16 + 8];
        dg_msg m1;
        memset(&m1, 0, sizeof m1);
        m1.type = DG_MSG_FEEDBACK;
        m1.from = 2;
        m1.n_parts = 1;    /* one part, of kind 9 */
        m1.part[0].kind = DG_PART_BYTES;
        m1.part[0].count = 8;
        memset(b, 0, sizeof b);
        app_heads(&m1, b);
        b[DG_TCP_HEADER_SIZE + DG_MSG_HEADER_BYTES] = 9;
        CHECK(write(fd, b, sizeof b) == (ssize_t)sizeof b);
        CHECK(closed_within(fd, 2000));
        close(fd);
    }
    CHECK(log_count(&log, "worker 2 (127.0.0.1:") > 0 &&
          log_count(&log, "invalid frame: message: part 0 has kind 9") > 0);
    if (w) {   /* the others go on */
        CHECK_OK(dg_transport_send(w, make_msg(w, DG_MSG_FEEDBACK, 1, 0, 100, 4)));
        CHECK_OK(dg_transport_recv(s, 0, 5000, &m));
        CHECK(msg_ok(m, DG_MSG_FEEDBACK, 1, 100, 4));
        dg_msg_free(s, m);
    }
    if (th_cur_failed) printf("%s", log.text);
    dg_transport_close(w);
    dg_transport_close(s);
    pthread_mutex_destroy(&log.mu);
}

/* The role's send to a worker that does not read blocks (up to its
   deadline), holding that connection; the I/O thread then waited for it to
   write PEERS when another worker connected, and every connection went
   unread meanwhile.  Now the I/O thread never waits for a peer. */
static void *send_big(void *arg)
{
    dg_transport *s = (dg_transport *)arg;
    dg_transport_send(s, make_msg(s, DG_MSG_GEN_BATCHES, 0, 2, (size_t)2 << 20, 6));
    return NULL;
}

/* A worker far ahead of its server: its connection is not read while the
   queued messages hold more than the backlog (4 MiB), with
   frames left half-way in the connection's input buffer; when the role
   catches up the reading resumes there, and every message arrives, in
   order and intact. */
static dg_msg *ahead_msg(const sender *s, int i)
{
    dg_msg *m = make_msg(s->t, DG_MSG_FEEDBACK, s->id, 0, 4001, (uint32_t)i);
    if (m) m->aux = i;
    return m;
}

TEST(a_worker_far_ahead_is_paused_and_resumed)
{
    dg_transport *s = NULL, *w = NULL;
    sender a = {NULL, 1, 6000, 0, ahead_msg};      /* 6000 x 16 KB: 96 MB */
    pthread_t th;
    uint64_t lim[DG_MSG_TYPE_MAX + 1];
    int i, ok = 0, stalled;
    CHECK_OK(make_server(&s, 3, "sesame"));
    if (!s) return;
    CHECK_OK(make_worker(&w, 3, 1, dg_tcp_port(s), "sesame", hash_a, 0));
    if (!w) { dg_transport_close(s); return; }
    memset(lim, 0, sizeof lim);
    lim[DG_MSG_FEEDBACK] = 64 << 10;
    dg_transport_set_limits(s, lim);
    a.t = w;
    pthread_create(&th, NULL, sender_main, &a);
    dg__tcp_sleep_ms(1500);
    stalled = __atomic_load_n(&a.sent, __ATOMIC_ACQUIRE);
    for (i = 0; i < a.n; i++) {
        dg_msg *m;
        if (dg_transport_recv(s, 0, 10000, &m) != DG_OK) break;
        if (m->aux == i && dg_msg_f32(m, 0, 4001) &&
            dg_msg_f32(m, 0, 4001)[4000] == (float)(4000 * 0.5 + i))
            ok++;
        dg_msg_free(s, m);
    }
    pthread_join(th, NULL);
    printf("  the sender stalled after %d of %d messages; %d arrived intact and in order\n",
           stalled, a.n, ok);
    CHECK(stalled < a.n);                         /* the server stopped reading */
    CHECK(ok == a.n);
    CHECK(dg_transport_connected(s, 1));
    dg_transport_close(w);
    dg_transport_close(s);
}

TEST(a_stalled_reader_stalls_nobody)
{
    dg_transport *s = NULL, *w = NULL;
    struct sockaddr_in sa;
    pinger p;
    pthread_t th, big;
    int stalled, small = 1, k, fd, rounds0, rounds1;
    if (!pinger_open(&p, 4)) return;
    s = p.s;
    w = p.w;
    /* worker 2 with the smallest receive buffer, never reading */
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(dg_tcp_port(s));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    stalled = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(stalled, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    if (connect(stalled, (struct sockaddr *)&sa, sizeof sa) == 0)
        stalled = raw_handshake(stalled, 2, "sesame");
    else
        close(stalled), stalled = -1;
    CHECK(stalled >= 0);
    pthread_create(&th, NULL, ping_main, &p);
    pthread_create(&big, NULL, send_big, s);          /* 8 MB to worker 2: it blocks */
    dg__tcp_sleep_ms(300);
    fd = raw_worker(dg_tcp_port(s), 3, "sesame");     /* PEERS due to everyone */
    CHECK(fd >= 0);
    rounds0 = __atomic_load_n(&p.rounds, __ATOMIC_ACQUIRE);
    for (k = 0; k < 300 && __atomic_load_n(&p.rounds, __ATOMIC_ACQUIRE) < rounds0 + 20; k++)
        dg__tcp_sleep_ms(20);
    rounds1 = __atomic_load_n(&p.rounds, __ATOMIC_ACQUIRE);
    __atomic_store_n(&p.stop, 1, __ATOMIC_RELEASE);
    if (stalled >= 0) close(stalled);                 /* ends the blocked send */
    pthread_join(big, NULL);
    pthread_join(th, NULL);
    printf("  beside a send blocked on a worker that does not read: %d round trips in %d ms, "
           "%d failures\n", rounds1 - rounds0, 20 * k, p.failures);
    CHECK(p.failures == 0 && rounds1 >= rounds0 + 20);
    if (fd >= 0) close(fd);
    dg_transport_close(w);
    dg_transport_close(s);
}

/* Item 4: the handshake slots.  With at most 4 from one address, a fifth
   connection evicts the oldest that has not sent a HELLO, and one that did
   survives the idle ones. */
TEST(handshake_slots_evict_the_idle)
{
    dg_tcp_config c;
    dg_transport *s = NULL;
    unsigned char hello[DG__TCP_HELLO_SIZE], buf[DG_TCP_HEADER_SIZE + DG__TCP_NONCE];
    dg__tcp_hello h;
    int idle[6], talker, i;
    c = server_config(3, "sesame");
    c.max_pending_per_addr = 4;
    CHECK_OK(dg_tcp_server_create(&s, &c));
    if (!s) return;
    /* one that sent its HELLO (waits for AUTH), then idle ones */
    memset(&h, 0, sizeof h);
    h.role = DG__TCP_ROLE_WORKER;
    h.worker_id = 1;
    h.min_version = h.max_version = DG_TCP_VERSION;
    memcpy(h.config_hash, hash_a, 32);
    dg__tcp_hello_encode(&h, hello);
    talker = raw_connect(dg_tcp_port(s));
    CHECK(send_frame(talker, DG__TCP_HELLO, 1, hello, sizeof hello) == 0);
    CHECK(read_exact(talker, buf, sizeof buf, 2000) == 0 && buf[6] == DG__TCP_CHALLENGE);
    for (i = 0; i < 3; i++) {
        idle[i] = raw_connect(dg_tcp_port(s));
        dg__tcp_sleep_ms(30);
    }
    CHECK(!closed_within(idle[0], 200));              /* 4 in their handshake: room */
    idle[3] = raw_connect(dg_tcp_port(s));            /* the fifth evicts idle[0] */
    CHECK(closed_within(idle[0], 2000));
    CHECK(!closed_within(idle[1], 100) && !closed_within(talker, 100));
    idle[4] = raw_connect(dg_tcp_port(s));            /* and the sixth idle[1] */
    CHECK(closed_within(idle[1], 2000));
    CHECK(!closed_within(talker, 100) && !closed_within(idle[4], 100));
    close(talker);
    for (i = 0; i < 5; i++) close(idle[i]);
    dg_transport_close(s);
}

/* Idle connections from the test's address, reopened as the server drops
   them, until told to stop. */
typedef struct flood {
    uint16_t port;
    int n, stop, opened;
} flood;

static void *flood_main(void *arg)
{
    flood *f = (flood *)arg;
    struct pollfd q[80];
    int i;
    for (i = 0; i < f->n; i++) {
        q[i].fd = raw_connect(f->port);
        q[i].events = POLLIN;
    }
    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        if (poll(q, (nfds_t)f->n, 50) <= 0) continue;
        for (i = 0; i < f->n; i++) {
            char b[256];
            if (!q[i].revents || (q[i].fd >= 0 && read(q[i].fd, b, sizeof b) > 0)) continue;
            if (q[i].fd >= 0) close(q[i].fd);
            q[i].fd = raw_connect(f->port);
            f->opened++;
        }
    }
    for (i = 0; i < f->n; i++)
        if (q[i].fd >= 0) close(q[i].fd);
    return NULL;
}

/* Item 4: 80 idle connections, reopened as the server drops them, filled
   the handshake slots and a restarted worker was refused and exited at
   once.  Now it gets in (eviction; it retries with backoff when refused). */
TEST(worker_restarts_through_a_slot_flood)
{
    char addr[32];
    pid_t srv, w[2];
    flood f;
    pthread_t th;
    int flooding = 0;
    uint16_t port = free_port();
    if (!have_bin()) { CHECK(0); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
#define COMMON4 SMALL_RUN(2), FAULT_MS(1500, 2000), "--swap-every", "5"
    START_RUN(srv, w, 2, "o", addr, ("--iters", "150", "--log-every", "1"), COMMON4);
    CHECK(wait_for("osrv.out", it_is(5, 150), 30000));
    memset(&f, 0, sizeof f);
    f.port = port;
    f.n = 80;
    flooding = pthread_create(&th, NULL, flood_main, &f) == 0;
    dg__tcp_sleep_ms(500);
    CHECK(worker_restarts(&w[1], "osrv", "| live 1/2 |", 15000,
                          "ow2b", ARGS("worker", "--connect", addr, "--id", "2", COMMON4),
                          "worker 2 joins with a copy of D_", 25000));
    if (flooding) {
        __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
        pthread_join(th, NULL);
    }
    printf("  slot flood: %d connections reopened\n", f.opened);
    CHECK(reap_run(srv, 60000, w, 2, 10000));
    if (th_cur_failed) { show("osrv.err"); show("ow2b.err"); }
}

/* Item 5: an empty secret turned authentication off; a long one was cut
   to 256 bytes. */
TEST(secret_empty_or_long)
{
    dg_transport *s = NULL, *w = NULL;
    dg_tcp_config c;
    char longs[301], prefix[257], addr[32], f0[512], f1[512], f2[512], f3[512];
    pid_t srv, wk;
    FILE *f;
    c = server_config(2, "");
    CHECK(dg_tcp_server_create(&s, &c) == DG_ERR_ARG);
    CHECK(strstr(dg_last_error(), "empty") != NULL);
    if (s) dg_transport_close(s);
    s = NULL;
    memset(longs, 'k', 300);
    longs[299] = 'z';                                 /* differs after byte 256 */
    longs[300] = 0;
    memcpy(prefix, longs, 256);
    prefix[256] = 0;
    CHECK_OK(make_server(&s, 2, longs));
    if (s) {
        CHECK_OK(make_worker(&w, 2, 1, dg_tcp_port(s), longs, hash_a, 0));
        dg_transport_close(w);
        w = NULL;
        CHECK(make_worker(&w, 2, 1, dg_tcp_port(s), prefix, hash_a, 0) == DG_ERR_AUTH);
        dg_transport_close(s);
    }
    /* the same through the program's --secret-file */
    if (!have_bin()) { CHECK(0); return; }
    snprintf(f0, sizeof f0, "%s", tpath("empty.key"));
    snprintf(f1, sizeof f1, "%s", tpath("newline.key"));
    snprintf(f2, sizeof f2, "%s", tpath("long.key"));
    snprintf(f3, sizeof f3, "%s", tpath("prefix.key"));
    if ((f = fopen(f0, "w"))) fclose(f);
    if ((f = fopen(f1, "w"))) { fputs("\n", f); fclose(f); }
    if ((f = fopen(f2, "w"))) { fprintf(f, "%s\n", longs); fclose(f); }
    if ((f = fopen(f3, "w"))) { fprintf(f, "%s\n", prefix); fclose(f); }
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)free_port());
    srv = spawn("es0", ARGS("server", "--listen", addr, "--iters", "100000", "--secret-file", f0, SMALL_RUN(1)));
    CHECK(reap(srv, 5000) == 1 && file_has("es0.err", "empty.key is empty"));
    srv = spawn("es1", ARGS("server", "--listen", addr, "--iters", "100000", "--secret-file", f1, SMALL_RUN(1)));
    CHECK(reap(srv, 5000) == 1 && file_has("es1.err", "newline.key is empty"));
    srv = spawn("ls", ARGS("server", "--listen", addr, "--iters", "100000", "--secret-file", f2, SMALL_RUN(1)));
    CHECK(wait_for("ls.out", "listening", 10000));
    wk = spawn("lw", ARGS("worker", "--connect", addr, "--id", "1", "--secret-file", f3, SMALL_RUN(1)));
    CHECK(reap(wk, 10000) == 1 && file_has("lw.err", "authentication failed"));
    kill(srv, SIGTERM);
    reap(srv, 10000);
}

typedef struct worker_arg {
    dg_transport *t;
    dg_dataset ds;
    dg_mdgan_config c;
    dg_pool *pool;
    dg_result r;
    int64_t ended;
} worker_arg;

static void *worker_main(void *arg)
{
    worker_arg *a = (worker_arg *)arg;
    dg_drive run;
    uint32_t idx[64];
    int i;
    for (i = 0; i < 64; i++) idx[i] = (uint32_t)i;
    memset(&run, 0, sizeof run);
    run.reconnect_ms = 3000;
    a->r = dg_mdgan_worker_drive(&a->c, 1, a->t, a->pool, &a->ds, idx, 64, &run);
    a->ended = dg__tcp_ms();
    return NULL;
}

/* Item 8: told that the run is over (BYE with LAST), workers redialled for
   30 s and exited 1.  A worker driver now ends with DG_OK at once, STOP or
   not; and a real 3-worker run ends every worker with 0 right after its
   server. */
TEST(workers_end_with_the_run)
{
    dg_transport *s = NULL;
    worker_arg a;
    pthread_t th;
    int64_t bye;
    char addr[32];
    pid_t srv, wk[3];
    memset(&a, 0, sizeof a);
    a.c = dg_mdgan_config_init();
    dg_dataset_make_shapes(&a.ds, 64, 1);
    a.c.n_workers = 1; a.c.c = a.ds.c; a.c.h = a.ds.h; a.c.w = a.ds.w;
    a.c.arch = DG_ARCH_MLP; a.c.batch = 8;
    dg_pool_create(&a.pool, 1);
    CHECK_OK(make_server(&s, 2, "sesame"));
    if (s) CHECK_OK(make_worker(&a.t, 2, 1, dg_tcp_port(s), "sesame", hash_a, 0));
    if (s && a.t) {
        pthread_create(&th, NULL, worker_main, &a);
        dg__tcp_sleep_ms(300);
        bye = dg__tcp_ms();
        dg_transport_goodbye(s, 1);                   /* no STOP came: the role never knew */
        dg_transport_close(s);
        s = NULL;
        pthread_join(th, NULL);
        printf("  the worker driver ended %lld ms after BYE (LAST): %s\n",
               (long long)(a.ended - bye), dg_result_str(a.r));
        CHECK(a.r == DG_OK);
        CHECK(a.ended - bye < 2000);
    }
    dg_transport_close(a.t);
    dg_transport_close(s);
    dg_pool_destroy(a.pool);
    dg_dataset_free(&a.ds);
    if (!proc_begin(addr, sizeof addr)) return;
#define COMMON6 SMALL_RUN(3), "--swap-every", "4"
    START_RUN(srv, wk, 3, "e", addr, ("--iters", "30"), COMMON6);
    CHECK(reap_run(srv, 60000, wk, 3, 3000));
    if (th_cur_failed) { show("esrv.err"); show("ew1.err"); }
}

/* ---- issue 10: faults of authenticated workers cost them, never the run ---- */

/* This process as the last worker (id n_workers) of a build/distgan run of
   SMALL_RUN(n_workers), which the server accepts only with the
   configuration hash build/distgan computes. */
typedef struct insider {
    dg_dataset ds;      /* the run's data */
    dg_mdgan_config mc; /* comes in with the flags the run sets beyond
                           SMALL_RUN (--swap-every, --E) */
    dg_tcp_config tc;   /* goes out ready for dial_worker */
    dg_transport *t;
    size_t feedback;    /* the floats of one FEEDBACK */
} insider;

/* in->mc from dg_mdgan_config_init() and the run's flags; in->ds is the
   caller's to free */
static dg_result insider_config(insider *in, int n_workers, const char *addr, const char *secret)
{
    char extra[64];
    dg_result r;
    int n_shapes = 100 * n_workers;
    dg_mdgan_config *mc = &in->mc;
    dg_tcp_config *tc = &in->tc;
    *tc = dg_tcp_config_init();
    in->t = NULL;
    memset(&in->ds, 0, sizeof in->ds);
    if ((r = dg_dataset_make_shapes(&in->ds, n_shapes, 1)) != DG_OK) return r;
    mc->n_workers = n_workers; mc->c = in->ds.c; mc->h = in->ds.h; mc->w = in->ds.w;
    mc->arch = DG_ARCH_MLP; mc->batch = 8; mc->seed = 1;
    snprintf(extra, sizeof extra, "data shapes:%d n=%d", n_shapes, n_shapes);
    dg_tcp_mdgan_config_hash(mc, extra, tc->config_hash);
    tc->n_peers = n_workers + 1;
    tc->self = n_workers;
    tc->connect = addr;
    tc->secret = secret;
    tc->secret_len = secret ? strlen(secret) : 0;
    tc->heartbeat_ms = 300;
    in->feedback = (size_t)mc->batch * in->ds.c * in->ds.h * in->ds.w;
    return DG_OK;
}

/* A FEEDBACK from worker self for the iteration: n floats, each v. */
static dg_result send_feedback(dg_transport *t, int self, int64_t iteration, size_t n, float v)
{
    dg_part_kind k = DG_PART_F32;
    dg_msg *fb;
    size_t i;
    dg_result r = dg_msg_create(t, DG_MSG_FEEDBACK, self, 0, iteration, 1, &k, &n, &fb);
    if (r != DG_OK) return r;
    for (i = 0; i < n; i++) ((float *)fb->part[0].data)[i] = v;
    return dg_transport_send(t, fb);
}

/* The worker's transport once the server takes it (it waits for the run's
   start, or for the slot to free), or NULL after ms. */
static dg_transport *dial_worker(const dg_tcp_config *tc, int ms)
{
    dg_transport *t = NULL;
    int64_t end = dg__tcp_ms() + ms;
    while (dg_tcp_worker_create(&t, tc) != DG_OK && dg__tcp_ms() < end) dg__tcp_sleep_ms(100);
    return t;
}

/* Worker 2 of 2 is this process: an authenticated peer that answers its
   first GEN_BATCHES with a FEEDBACK 7 floats too long (the audit's 25,095
   for 25,088).  The server drops that connection (logged with the id and
   the address), finishes the run with worker 1, writes G and its
   checkpoint and exits 0. */
TEST(malformed_feedback_costs_the_connection_not_the_run)
{
    char addr[32], ck[512];
    pid_t srv, w[1];
    insider in;
    dg_msg *m;
    int sent = 0;
    struct stat st;
    if (!proc_begin(addr, sizeof addr)) return;
    snprintf(ck, sizeof ck, "%s", tpath("bad/server.ckpt"));
#define COMMON7 SMALL_RUN(2), FAULT_MS(3000, 5000), "--swap-every", "5"
    START_RUN(srv, w, 1, "b", addr, ("--iters", "30", "--log-every", "1", "--out", "bad"), COMMON7);
    in.mc = dg_mdgan_config_init();
    in.mc.swap_every = 5;
    CHECK_OK(insider_config(&in, 2, addr, NULL));
    in.t = dial_worker(&in.tc, 10000);
    CHECK(in.t != NULL);
    while (in.t && !sent && dg_transport_recv(in.t, 2, 10000, &m) == DG_OK) {
        if (m->type == DG_MSG_GEN_BATCHES) {
            /* 7 floats short: 7 too many would not pass the transport's size limit */
            CHECK_OK(send_feedback(in.t, 2, m->iteration, in.feedback - 7, 0.0f));
            sent = 1;
        }
        dg_msg_free(in.t, m);
    }
    CHECK(sent);
    CHECK(reap_run(srv, 60000, w, 1, 10000));
    CHECK(file_has("bsrv.err", "worker 2 dropped"));
    CHECK(file_has("bsrv.err", "wrong shape"));
    CHECK(file_has("bsrv.err", "127.0.0.1"));
    CHECK(line_has("bsrv.out", it_is(30, 30), "| live 1/2 |"));
    CHECK(stat("bad/g.f32", &st) == 0 && st.st_size > 0);
    CHECK(stat(ck, &st) == 0 && st.st_size > 0);
    if (th_cur_failed) { show("bsrv.out"); show("bsrv.err"); }
    if (in.t) dg_transport_close(in.t);
    dg_dataset_free(&in.ds);
}

/* A worker whose connection closes in the middle of an iteration (it has
   its GEN_BATCHES and will never answer) leaves the barrier at once: the
   iteration completes long before the 30 s deadline.  Worker 3 is this
   process: it answers iterations 0..4 with a zero feedback, then takes
   iteration 5 and closes its transport as a crash would. */
TEST(closed_worker_leaves_the_barrier_at_once)
{
    char addr[32];
    pid_t srv, w[2];
    insider in;
    dg_msg *m;
    int64_t t0 = 0, waited;
    if (!proc_begin(addr, sizeof addr)) return;
#define COMMON8 SMALL_RUN(3), FAULT_MS(30000, 30000), "--E", "0"
    START_RUN(srv, w, 2, "d", addr, ("--iters", "30", "--log-every", "1"), COMMON8);
    in.mc = dg_mdgan_config_init();
    in.mc.local_epochs = 0; /* as build/distgan --E 0 (no swap) */
    CHECK_OK(insider_config(&in, 3, addr, NULL));
    in.t = dial_worker(&in.tc, 10000);
    CHECK(in.t != NULL);
    while (in.t && dg_transport_recv(in.t, 3, 10000, &m) == DG_OK) {
        if (m->type == DG_MSG_GEN_BATCHES && m->iteration < 5) {
            CHECK_OK(send_feedback(in.t, 3, m->iteration, in.feedback, 0.0f));
        } else if (m->type == DG_MSG_GEN_BATCHES) {
            dg_msg_free(in.t, m);
            break;
        }
        dg_msg_free(in.t, m);
    }
    CHECK(line_has("dsrv.out", it_is(5, 30), "| live 3/3 |"));
    if (in.t) {
        dg_transport_close(in.t);
        t0 = dg__tcp_ms();
    }
    CHECK(wait_for_line("dsrv.out", it_is(6, 30), "| live 2/3 |", 40000));
    waited = dg__tcp_ms() - t0;
    printf("  iteration 6 completed %lld ms after worker 3 closed in the middle of it "
           "(barrier 30000 ms)\n", (long long)waited);
    CHECK(waited < 10000);
    CHECK(reap_run(srv, 60000, w, 2, 10000));
    if (th_cur_failed) { show("dsrv.out"); show("dsrv.err"); }
    dg_dataset_free(&in.ds);
}

/* FL-GAN over TCP: a killed worker leaves at once, its restart rejoins at
   the next round with the global model, and SIGTERM writes the FL-GAN
   checkpoint. */
static void flgan_rejoin(const char *codec)
{
    char addr[32], ck[512], magic[12] = {0};
    pid_t srv, w[2];
    FILE *f;
    if (!proc_begin(addr, sizeof addr)) return;
    snprintf(ck, sizeof ck, "%s", tpath("fl/flgan_server.ckpt"));
#define COMMON9 "--algo", "flgan", SMALL_RUN(2), "--local-iters", "2", FAULT_MS(30000, 30000), "--codec", (char *)codec
    START_RUN(srv, w, 2, "l", addr,
              ("--iters", "100000", "--log-every", "1", "--out", "fl"), COMMON9);
    CHECK(wait_for("lsrv.out", it_is(2 * 5, 100000), 30000)); /* round 5 */
    CHECK(worker_restarts(&w[1], "lsrv", "| live 1/2 |", 10000,   /* at once: --dead-ms is 30000 */
                          "lw2b", ARGS("worker", "--connect", addr, "--id", "2", COMMON9),
                          "worker 2 rejoins", 15000));
    CHECK(wait_for("lsrv.out", "| live 2/2 |", 15000));
    kill(srv, SIGTERM);
    CHECK(reap(srv, 10000) == 0);
    /* an FL-GAN server's checkpoint (kind 6) */
    CHECK((f = fopen(ck, "rb")) != NULL && fread(magic, 1, 12, f) == 12 &&
          !memcmp(magic, "DGCK", 4) && magic[8] == 6);
    if (f) fclose(f);
    kill(w[0], SIGTERM);
    kill(w[1], SIGTERM);
    reap(w[0], 10000);
    reap(w[1], 10000);
    if (th_cur_failed) { show("lsrv.out"); show("lsrv.err"); show("lw2b.err"); }
}

TEST(flgan_worker_rejoins_and_checkpoints) { flgan_rejoin("upload=none"); }
/* a restarted worker holds no reference: the server sends it the dense model */
TEST(flgan_download_deltas_worker_rejoins) { flgan_rejoin("upload=topk:0.1,download=topk:0.1"); }

/* Asynchronous MD-GAN over TCP, in real time (--quorum 2 of 3; no swap):
   worker 3 sleeps 400 ms before each feedback (--slow, a fault transport),
   workers 1 and 2 20 ms.  The server closes its iterations on the
   feedback of 1 and 2 and uses 3's when it comes, computed on an older G:
   stale (a server that waited for every worker would use all of them
   fresh).  Whatever the scheduling: the run ends at its 40 iterations
   (each one at least 20 ms, so 3's feedback comes during the run) with
   stale feedback used and a finite G. */
TEST(async_quorum_leaves_the_straggler_behind)
{
    char addr[32];
    pid_t srv, w[3];
    long long stale = -1;
    const char *at;
    float *g;
    size_t n = 0, i;
    int finite = 1;
    if (!proc_begin(addr, sizeof addr)) return;
#define COMMON10 SMALL_RUN(3), "--E", "0", "--quorum", "2", "--slow", "1@20,2@20,3@400"
    START_RUN(srv, w, 3, "a", addr, ("--iters", "40", "--log-every", "10", "--out", "as"), COMMON10);
    CHECK(reap_run(srv, 60000, w, 3, 10000));
    CHECK(file_has("asrv.out", it_is(40, 40)));
    at = strstr(slurp("asrv.out"), "asynchronous: ");
    CHECK(at && sscanf(at, "asynchronous: %lld stale", &stale) == 1 && stale > 0);
    g = read_floats("as/g.f32", &n);
    for (i = 0; i < n; i++) finite &= isfinite(g[i]) != 0;
    CHECK(g && n > 0 && finite);
    printf("  40 iterations, quorum 2 of 3, worker 3 20x slower: %lld stale feedbacks used\n", stale);
    free(g);
    if (th_cur_failed) { show("asrv.out"); show("asrv.err"); show("aw3.err"); }
}

/* kill -9 of a worker in an asynchronous run: it is dropped once its
   connection is gone (not for being slow), the run goes on with the two
   others and ends at its iterations.  The deadline (10 ms, under the 20
   ms each worker sleeps) closes most iterations on their first feedback:
   past it the server waits for one, it does not spin or close empty. */
TEST(async_worker_killed)
{
    char addr[32];
    pid_t srv, w[3];
    if (!proc_begin(addr, sizeof addr)) return;
#define COMMON11 SMALL_RUN(3), "--E", "0", \
                 "--quorum", "2", "--deadline", "0.01", "--slow", "1@20,2@20,3@20", \
                 "--dead-ms", "1500", "--heartbeat-ms", "300"
    START_RUN(srv, w, 3, "b", addr, ("--iters", "60", "--log-every", "1"), COMMON11);
    CHECK(wait_for("bsrv.out", it_is(10, 60), 30000));
    kill(w[1], SIGKILL);
    reap(w[1], 2000);
    w[1] = w[2];
    CHECK(wait_for_line("bsrv.err", "worker 2 ", "dropped", 15000));
    CHECK(reap_run(srv, 60000, w, 2, 10000));
    CHECK(file_has("bsrv.out", it_is(60, 60)));
    CHECK(!file_has("bsrv.err", "no feedback at all"));
    if (th_cur_failed) { show("bsrv.out"); show("bsrv.err"); }
}

/* The audit's insider cases at once, while a legitimate 3-worker run
   trains: worker slot 4 belongs to an authenticated insider that sends a
   FEEDBACK of the wrong shape, rejoins and sends one full of NaN, rejoins
   and declares a 200 MB message; meanwhile 80 idle connections flood the
   handshake slots and worker 3 is killed and restarted.  The run must
   finish with every worker exiting 0, a finite G, and the server's RSS
   within 64 MB of what it was before the attacks. */
static long proc_rss_kb(pid_t pid)
{
    char path[64];
    long pages = 0, resident = 0;
    FILE *f;
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    if (!(f = fopen(path, "r"))) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Answers the newest GEN_BATCHES with a FEEDBACK of n floats, each value
   v, until the server closes the connection; 1 when it did. */
static int insider_feedback(dg_transport *t, size_t n, float v)
{
    int64_t end = dg__tcp_ms() + 30000;
    while (dg_transport_connected(t, 0) && dg__tcp_ms() < end) {
        dg_msg *m = NULL;
        if (dg_transport_recv(t, 4, 200, &m) != DG_OK) continue;
        if (m->type == DG_MSG_GEN_BATCHES && dg_transport_pending(t, 4) == 0)
            send_feedback(t, 4, m->iteration, n, v);
        dg_msg_free(t, m);
    }
    return !dg_transport_connected(t, 0);
}

/* A server whose workers never come (or are all gone) does not count
   iterations that train nothing: it waits wait_workers_ms and fails. */
static void count_progress(void *user, const dg_drive_status *st)
{
    (void)st;
    ++*(int *)user;
}

TEST(server_without_workers_fails)
{
    dg_transport *s = NULL;
    dg_pool *pool;
    dg_mdgan_config c = small_config(2);
    dg_drive d;
    int progress = 0;
    int64_t t0;
    dg_result r;
    memset(&d, 0, sizeof d);
    d.iterations = 5;
    d.wait_workers_ms = 300;
    d.progress = count_progress;
    d.user = &progress;
    CHECK_OK(dg_pool_create(&pool, 1));
    CHECK_OK(make_server(&s, 3, "sesame"));
    if (!s) return;
    t0 = dg__tcp_ms();
    r = dg_mdgan_server_drive(&c, s, pool, &d);
    CHECK(r == DG_ERR_TIMEOUT);
    CHECK(strstr(dg_last_error(), "no worker connected") && strstr(dg_last_error(), "iteration 0"));
    CHECK(progress == 0);
    CHECK(dg__tcp_ms() - t0 < 5000);
    dg_transport_close(s);
    dg_pool_destroy(pool);
}

TEST(insiders_while_a_run_trains)
{
    char addr[32], secret_path[512];
    static const char secret[] = "insider-test-secret";
    pid_t srv, w[4];
    insider in;
    unsigned char saved_hash[32];
    flood f;
    pthread_t th;
    long rss0, rss_max = 0;
    size_t n = 0, i, bad = 0;
    float *g;
    int fd, flooding, j, sent_shape, sent_nan, huge_closed = 0;
    FILE *sf;
    uint16_t port = free_port();
    if (!have_bin()) { CHECK(0); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    snprintf(secret_path, sizeof secret_path, "%s", tpath("insider.secret"));
    if ((sf = fopen(secret_path, "w"))) {
        fprintf(sf, "%s\n", secret);
        fclose(sf);
    }
#define COMMON12 SMALL_RUN(4), FAULT_MS(3000, 5000), "--swap-every", "5", \
                 "--secret-file", secret_path
    START_RUN(srv, w + 1, 3, "i", addr,
              ("--iters", "400", "--log-every", "1", "--out", "insider"), COMMON12);
    /* the insider holds the secret and the run's configuration hash */
    in.mc = dg_mdgan_config_init();
    in.mc.swap_every = 5;
    CHECK_OK(insider_config(&in, 4, addr, secret));
    in.t = dial_worker(&in.tc, 20000);         /* the server waits for all 4 at the start */
    CHECK(in.t != NULL);
    sent_shape = in.t && insider_feedback(in.t, in.feedback - 7, 0.0f);
    if (in.t) dg_transport_close(in.t);
    CHECK(wait_for("isrv.out", it_is(3, 400), 60000));
    rss0 = proc_rss_kb(srv);                   /* the run in its steady state */
    memset(&f, 0, sizeof f);
    f.port = port;
    f.n = 80;
    flooding = pthread_create(&th, NULL, flood_main, &f) == 0;
    in.t = dial_worker(&in.tc, 20000);         /* its slot frees when the server drops the last */
    sent_nan = in.t && insider_feedback(in.t, in.feedback, NAN);
    if (in.t) dg_transport_close(in.t);
    rss_max = proc_rss_kb(srv) > rss_max ? proc_rss_kb(srv) : rss_max;
    memcpy(saved_hash, hash_a, 32);            /* raw_handshake speaks with hash_a */
    memcpy(hash_a, in.tc.config_hash, 32);
    for (j = 0; j < 100 && (fd = raw_worker(port, 4, secret)) < 0; j++) dg__tcp_sleep_ms(100);
    memcpy(hash_a, saved_hash, 32);
    if (fd >= 0) {
        CHECK(declare_feedback(fd, 4, (uint64_t)200 << 20) == 0);
        huge_closed = closed_within(fd, 5000);
        close(fd);
    }
    rss_max = proc_rss_kb(srv) > rss_max ? proc_rss_kb(srv) : rss_max;
    kill(w[3], SIGKILL);                       /* a legitimate worker restarts through the flood */
    reap(w[3], 2000);
    w[3] = spawn("iw3b", ARGS("worker", "--connect", addr, "--id", "3", COMMON12));
    CHECK(wait_for("isrv.err", "worker 3 joins with a copy of D_", 30000));
    rss_max = proc_rss_kb(srv) > rss_max ? proc_rss_kb(srv) : rss_max;
    if (flooding) {
        __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
        pthread_join(th, NULL);
    }
    printf("  insiders: wrong shape %s, NaN %s, 200 MB declared %s; %d flood connections; "
           "server RSS %ld MB before, at most %+ld MB during\n", sent_shape ? "dropped" : "NOT dropped",
           sent_nan ? "dropped" : "NOT dropped", huge_closed ? "closed" : "NOT closed", f.opened,
           rss0 / 1024, (rss_max - rss0) / 1024);
    CHECK(sent_shape && sent_nan && huge_closed);
    CHECK(rss_max - rss0 < 64 * 1024);
    CHECK(reap(srv, 120000) == 0);
    for (j = 1; j <= 3; j++) CHECK(reap(w[j], 10000) == 0);
    CHECK(file_has("isrv.err", "wrong shape"));
    CHECK(file_has("isrv.err", "not finite") || file_has("isrv.err", "non-finite"));
    CHECK(file_has("isrv.out", it_is(400, 400)));
    g = read_floats("insider/g.f32", &n);
    CHECK(g && n > 0);
    for (i = 0; g && i < n; i++) bad += !isfinite(g[i]);
    CHECK(bad == 0);
    free(g);
    if (th_cur_failed) { show("isrv.out"); show("isrv.err"); show("iw3b.err"); }
    dg_dataset_free(&in.ds);
}

int main(void)
{
    if (!proc_setup("build/distgan", "tcp", 300)) return 1;
    RUN(sha256_vectors);
    RUN(hmac_rfc4231);
    RUN(frame_codec);
    RUN(handshake_payloads);
    RUN(transport_roundtrip);
    RUN(receivers_share_an_endpoint);
    RUN(handshake_refusals);
    RUN(hostile_clients);
    RUN(mdgan_tcp_equals_inproc);
    RUN(flgan_tcp_equals_inproc);
    RUN(mdgan_codecs_tcp_equals_inproc);
    RUN(flgan_codecs_tcp_equals_inproc);
    RUN(flgan_download_deltas_tcp_equals_inproc);
    RUN(worker_killed_and_rejoins);
    RUN(server_killed_and_resumed);
    RUN(refusals_and_sigterm);
    RUN(declared_sizes_cost_nothing);
    RUN(message_limits_per_type);
    RUN(malformed_frame_names_the_peer);
    RUN(a_worker_far_ahead_is_paused_and_resumed);
    RUN(a_stalled_reader_stalls_nobody);
    RUN(handshake_slots_evict_the_idle);
    RUN(worker_restarts_through_a_slot_flood);
    RUN(secret_empty_or_long);
    RUN(workers_end_with_the_run);
    RUN(malformed_feedback_costs_the_connection_not_the_run);
    RUN(closed_worker_leaves_the_barrier_at_once);
    RUN(flgan_worker_rejoins_and_checkpoints);
    RUN(flgan_download_deltas_worker_rejoins);
    RUN(async_quorum_leaves_the_straggler_behind);
    RUN(async_worker_killed);
    RUN(insiders_while_a_run_trains);
    RUN(server_without_workers_fails);
    scratch_remove();
    return th_done();
}
