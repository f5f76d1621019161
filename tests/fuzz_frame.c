/* tests/fuzz_frame.c: libFuzzer target for the TCP transport's input path.
 *
 * The bytes are what a peer could send on a connection.  They go through
 * the very receive state machine that reads sockets (header, validation,
 * bounded allocation, payload, CRC), in chunks whose sizes come from the
 * input, and every complete frame's payload goes to the decoder of its
 * type: handshake messages (HELLO, WELCOME, REFUSE, PEERS) and the roles'
 * messages, whose payload is the DGMS frame of dg_msg_encode.  A decoder
 * that accepts must re-encode its result to exactly the same bytes (the
 * formats are canonical): a message that the state machine took must be
 * what dg_msg_encode writes and what dg_msg_decode takes.  A rejected
 * frame ends the "connection" as it does on a socket.  Anything unexpected
 * aborts.
 *
 *   clang -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined tests/fuzz_frame.c
 *   ./a.out corpus_dir tests/corpus/frame
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#define FZ_MAX_PEERS 64

/* The fixed-size handshake record dg__tcp_<rec>: what its decoder takes,
   its encoder writes back byte for byte. */
#define FZ_RECORD_ROUNDTRIP(rec)                                    \
    do {                                                            \
        dg__tcp_##rec m;                                            \
        if (dg__tcp_##rec##_decode(p, n, &m) == DG_OK) {            \
            dg__tcp_##rec##_encode(&m, buf);                        \
            if (memcmp(buf, p, n)) abort();                         \
        }                                                           \
    } while (0)

static void check_payload(const dg__frame_header *h, const unsigned char *p, size_t n)
{
    unsigned char buf[4 + FZ_MAX_PEERS * DG__TCP_PEER_ADDR_SIZE];
    switch (h->type) {
    case DG__TCP_HELLO: FZ_RECORD_ROUNDTRIP(hello); break;
    case DG__TCP_WELCOME: FZ_RECORD_ROUNDTRIP(welcome); break;
    case DG__TCP_REFUSE:
    case DG__TCP_BYE: {
        uint32_t code;
        char reason[256];
        if (dg__tcp_refuse_decode(p, n, &code, reason, sizeof reason) == DG_OK) {
            size_t m = dg__tcp_refuse_encode(code, reason, buf, sizeof buf);
            if (m != n || memcmp(buf, p, n)) abort();
        }
        break;
    }
    case DG__TCP_PEERS: {
        dg__tcp_peer_addr a[FZ_MAX_PEERS];
        uint32_t count;
        if (dg__tcp_peers_decode(p, n, a, FZ_MAX_PEERS, &count) == DG_OK) {
            size_t m = dg__tcp_peers_encode(a, count, buf, sizeof buf);
            if (m != n || memcmp(buf, p, n)) abort();
        }
        break;
    }
    default:
        break;
    }
}

/* A message that got through is, byte for byte, the dg_msg_encode frame
   of its payload p (n bytes), and dg_msg_decode takes those bytes back. */
static void check_message(dg_transport *t, const dg__frame_header *h, const dg_msg *m,
                          const unsigned char *p, size_t n)
{
    static unsigned char buf[1 << 16];
    size_t i, total = 0, w;
    dg_msg *d;
    if (m->n_parts < 0 || m->n_parts > DG_MSG_MAX_PARTS) abort();
    for (i = 0; i < (size_t)m->n_parts; i++) total += dg__part_size(&m->part[i]);
    if (dg_msg_payload_bytes(m) != total) abort();
    if (m->type != h->type || (uint32_t)m->from != h->sender || (uint64_t)m->iteration != h->iteration)
        abort();
    if (dg_msg_encoded_size(m) != n) abort();
    if (n > sizeof buf) return;
    if (dg_msg_encode(m, buf, sizeof buf, &w) != DG_OK || w != n || memcmp(buf, p, n)) abort();
    if (dg_msg_decode(t, p, n, n, &d) != DG_OK) abort();
    if (d->type != m->type || d->to != m->to || d->aux != m->aux || d->n_parts != m->n_parts)
        abort();
    dg_msg_free(t, d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t limits[4] = {0, 64, 4096, DG_TCP_DEFAULT_MAX_MESSAGE};
    static dg_transport pool_owner; /* only its message pool is used */
    static int ready;
    dg__rx rx;
    size_t pos = 2, start = 2;
    unsigned chunk;
    if (!ready) {
        if (dg_transport_base_init(&pool_owner, 8)) abort();
        ready = 1;
    }
    if (size < 2) return 0;
    chunk = data[0] & 0x3f;                /* 0: as much as wanted, else at most chunk bytes */
    dg__rx_init(&rx, &pool_owner, limits[data[1] & 3], (data[1] & 4) ? 64 : 1024);
    rx.allow_app = !(data[1] & 8);
    rx.lenient_refuse = (data[1] & 16) != 0;
    if (data[1] & 32) { rx.self = 1; rx.peer = 0; }
    while (pos < size) {
        unsigned char *dst, *payload = NULL;
        size_t want, n;
        dg__frame_header h;
        dg_msg *m = NULL;
        int r;
        if (!dg__rx_busy(&rx)) start = pos;   /* a frame begins here */
        dg__rx_want(&rx, &dst, &want);
        if (want == 0) abort();            /* the machine always wants bytes */
        n = size - pos < want ? size - pos : want;
        if (chunk && n > chunk) n = chunk;
        memcpy(dst, data + pos, n);
        pos += n;
        r = dg__rx_got(&rx, n, &h, &payload, &m);
        if (r < 0) break;                  /* the connection would close */
        if (r == 1) {
            if (h.length > rx.max_control) abort();
            if (h.length && !payload) abort();
            check_payload(&h, payload, (size_t)h.length);
            dg__free(payload);
        } else if (r == 2) {
            if (!m || h.length > rx.max_length) abort();
            if (pos - start != DG_TCP_HEADER_SIZE + h.length) abort();
            check_message(&pool_owner, &h, m, data + start + DG_TCP_HEADER_SIZE, (size_t)h.length);
            dg_msg_free(&pool_owner, m);
        }
    }
    dg__rx_reset(&rx);
    return 0;
}
