/* tests/mpi_transport.c: the MPI transport, run under mpirun with 3 ranks
   (tests/run.sh; any size >= 2 works).  Every rank runs every test; a test
   passes when it passes on all ranks, and rank 0 prints the lines.
   With the argument "funneled", MPI starts at MPI_THREAD_FUNNELED and the
   one test is that dg_mpi_create refuses it clearly. */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include <pthread.h>
#include <sys/resource.h>
#include <time.h>
#define DISTGAN_MPI
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "mpi_harness.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static dg_transport *open_mpi(int checksum, uint64_t max_message)
{
    dg_transport *t = NULL;
    dg_mpi_config c;
    dg_mpi_config_init(&c);
    c.checksum = checksum;
    c.max_message = max_message;
    c.frame_timeout_ms = 300;
    if (dg_mpi_create(&t, MPI_COMM_WORLD, &c) != DG_OK)
        printf("rank %d: dg_mpi_create: %s\n", rank, dg_last_error());
    return t;
}

/* Fills part i of m with a pattern that depends on seed. */
static void fill(dg_msg *m, uint32_t seed)
{
    int i;
    size_t j;
    for (i = 0; i < m->n_parts; i++) {
        unsigned char *p = (unsigned char *)m->part[i].data;
        size_t n = m->part[i].kind == DG_PART_BYTES ? m->part[i].count : 4 * m->part[i].count;
        for (j = 0; j < n; j++) p[j] = (unsigned char)((j * 2654435761u + seed * 40503u + i) >> 7);
    }
}

static int same_pattern(const dg_msg *m, uint32_t seed)
{
    int i;
    size_t j;
    for (i = 0; i < m->n_parts; i++) {
        const unsigned char *p = (const unsigned char *)m->part[i].data;
        size_t n = m->part[i].kind == DG_PART_BYTES ? m->part[i].count : 4 * m->part[i].count;
        for (j = 0; j < n; j++)
            if (p[j] != (unsigned char)((j * 2654435761u + seed * 40503u + i) >> 7)) return 0;
    }
    return 1;
}

/* A message whose parts and header fields depend on it and seed. */
static dg_result make_msg(dg_transport *t, int type, int from, int to, int64_t it, int n,
                          const dg_part_kind *k, const size_t *c, uint32_t seed, dg_msg **m)
{
    dg_result r = dg_msg_create(t, type, from, to, it, n, k, c, m);
    if (r != DG_OK) return r;
    fill(*m, seed);
    (*m)->aux = -it;
    (*m)->stat[0] = 0.5f * (float)it;
    (*m)->stat[1] = -1.0f;
    return DG_OK;
}

static dg_result send_msg(dg_transport *t, int type, int to, int64_t it, int n,
                          const dg_part_kind *k, const size_t *c, uint32_t seed)
{
    dg_msg *m;
    dg_result r = make_msg(t, type, rank, to, it, n, k, c, seed, &m);
    return r != DG_OK ? r : dg_transport_send(t, m);
}

TEST(create_and_arguments)
{
    dg_transport *t = open_mpi(0, 0), *t2 = NULL;
    dg_mpi_config c;
    dg_msg *m = NULL;
    CHECK(t != NULL);
    if (!t) return;
    CHECK(dg_mpi_rank(t) == rank);
    CHECK(t->n_peers == size);
    CHECK(dg_mpi_comm(t) != MPI_COMM_NULL && dg_mpi_comm(t) != MPI_COMM_WORLD);
    CHECK(dg_transport_recv(t, (rank + 1) % size, 0, &m) == DG_ERR_ARG);
    CHECK(dg_transport_pending(t, (rank + 1) % size) == 0);
    {   /* only this rank's messages, within the limit */
        dg_part_kind k = DG_PART_BYTES;
        size_t n = 1;
        CHECK_OK(dg_msg_create(t, DG_MSG_USER, (rank + 1) % size, 0, 0, 1, &k, &n, &m));
        CHECK(dg_transport_send(t, m) == DG_ERR_ARG);
    }
    dg_mpi_config_init(&c);
    c.max_message = (uint64_t)3 << 30;
    CHECK(dg_mpi_create(&t2, MPI_COMM_WORLD, &c) == DG_ERR_ARG && t2 == NULL);
    CHECK(strstr(dg_last_error(), "max_message") != NULL);
    CHECK(dg_mpi_rank(NULL) == -1);
    dg_transport_close(t);
}

/* Rank 0 sends, rank 1 checks and echoes back, rank 0 checks: every part
   kind, the empty message, all kinds in one message, 1 KB to 64 MB. */
static void round_trips(int checksum)
{
    static const size_t bytes[] = {0, 1024, 1 << 20, 64 << 20};
    dg_transport *t = open_mpi(checksum, 0);
    int s, k, it = 0;
    CHECK(t != NULL);
    if (!t) return;
    for (s = 0; s < 4; s++)
        for (k = 0; k < 4; k++, it++) {
            /* k = 3: three parts of all kinds plus an empty one */
            dg_part_kind kinds[4] = {DG_PART_F32, DG_PART_I32, DG_PART_BYTES, DG_PART_F32};
            size_t counts[4];
            int n = k < 3 ? 1 : 4;
            dg_msg *m = NULL;
            if (k < 3) {
                kinds[0] = (dg_part_kind)(DG_PART_F32 + k);
                counts[0] = kinds[0] == DG_PART_BYTES ? bytes[s] : bytes[s] / 4;
            } else {
                counts[0] = bytes[s] / 8;
                counts[1] = bytes[s] / 16;
                counts[2] = bytes[s] / 4 + 3; /* odd: the next part starts unaligned on the wire */
                counts[3] = 0;
            }
            if (rank == 0) {
                CHECK_OK(send_msg(t, DG_MSG_USER + k, 1, it, n, kinds, counts, (uint32_t)it));
                CHECK_OK(dg_transport_recv(t, 0, 60000, &m));
            } else if (rank == 1) {
                CHECK_OK(dg_transport_recv(t, 1, 60000, &m));
            }
            if (rank > 1) continue;
            CHECK(m != NULL);
            if (!m) return;
            CHECK(m->type == DG_MSG_USER + k && m->from == 1 - rank && m->to == rank);
            CHECK(m->iteration == it && m->aux == -it && m->stat[0] == 0.5f * (float)it &&
                  m->stat[1] == -1.0f);
            CHECK(m->n_parts == n);
            CHECK(m->part[0].kind == kinds[0] && m->part[0].count == counts[0]);
            CHECK(n == 1 || (m->part[2].kind == DG_PART_BYTES && m->part[2].count == counts[2] &&
                             m->part[3].count == 0));
            CHECK(same_pattern(m, (uint32_t)it));
            if (rank == 1) { /* echo: the received message goes back as is */
                m->from = 1;
                m->to = 0;
                CHECK_OK(dg_transport_send(t, m));
            } else {
                dg_msg_free(t, m);
            }
        }
    dg_transport_close(t);
}

TEST(round_trip_every_kind_and_size) { round_trips(0); }
TEST(round_trip_with_checksum) { round_trips(1); }

/* Every rank > 0 sends 300 messages to rank 0, small (one MPI message)
   and large (head + parts) interleaved; rank 0 sees each sender's in
   order. */
TEST(order_per_link)
{
    enum { COUNT = 300 };
    dg_transport *t = open_mpi(0, 0);
    dg_part_kind k = DG_PART_F32;
    int i, ok = 1;
    CHECK(t != NULL);
    if (!t) return;
    if (rank > 0) {
        for (i = 0; i < COUNT; i++) {
            size_t c = i % 3 == 0 ? 40000 : (size_t)(i % 7);
            if (send_msg(t, DG_MSG_FEEDBACK, 0, i, 1, &k, &c, (uint32_t)(rank * 1000 + i)) != DG_OK)
                ok = 0;
        }
    } else {
        int64_t next[64] = {0};
        for (i = 0; i < COUNT * (size - 1); i++) {
            dg_msg *m;
            if (dg_transport_recv(t, 0, 30000, &m) != DG_OK) {
                ok = 0;
                break;
            }
            if (m->from < 1 || m->from >= 64 || m->iteration != next[m->from]++ ||
                !same_pattern(m, (uint32_t)(m->from * 1000 + m->iteration)))
                ok = 0;
            dg_msg_free(t, m);
        }
    }
    CHECK(ok);
    dg_transport_close(t);
}

/* Every rank sends three 4 MB discriminators to the next one at once, with
   a 1 MB window: the third send waits (two frames are always let through)
   while the partner is in its own send, so sends must receive meanwhile
   (the swap of MD-GAN). */
TEST(ring_swap_does_not_deadlock)
{
    dg_transport *t = NULL;
    dg_mpi_config c;
    dg_part_kind k = DG_PART_F32;
    size_t n = 1 << 20;
    int i, to = (rank + 1) % size;
    dg_mpi_config_init(&c);
    c.send_window = 1 << 20;
    CHECK_OK(dg_mpi_create(&t, MPI_COMM_WORLD, &c));
    if (!t) return;
    for (i = 0; i < 3; i++)
        CHECK_OK(send_msg(t, DG_MSG_DISC, to, i, 1, &k, &n, (uint32_t)(rank * 10 + i)));
    for (i = 0; i < 3; i++) {
        dg_msg *m = NULL;
        int from = (rank + size - 1) % size;
        CHECK_OK(dg_transport_recv(t, rank, 30000, &m));
        if (!m) continue;
        CHECK(m->from == from && m->iteration == i && same_pattern(m, (uint32_t)(from * 10 + i)));
        dg_msg_free(t, m);
    }
    dg_transport_close(t);
}

/* peer_window 64 KB: rank 0's two 256 KB frames to rank 1 go (two always
   do), the third waits while rank 1 receives nothing and times out; a frame
   to rank 2 meanwhile goes (the window is per receiver). */
TEST(peer_window_holds_one_receiver)
{
    dg_transport *t = NULL;
    dg_mpi_config c;
    dg_part_kind k = DG_PART_F32;
    size_t n = 1 << 16;
    double t0, dt;
    int i;
    dg_mpi_config_init(&c);
    c.peer_window = 64 << 10;
    c.send_timeout_ms = 300;
    CHECK_OK(dg_mpi_create(&t, MPI_COMM_WORLD, &c));
    if (!t) return;
    if (rank == 0) {
        for (i = 0; i < 2; i++) CHECK_OK(send_msg(t, DG_MSG_DISC, 1, i, 1, &k, &n, (uint32_t)i));
        t0 = now_s();
        CHECK(send_msg(t, DG_MSG_DISC, 1, 2, 1, &k, &n, 2) == DG_ERR_TIMEOUT);
        dt = now_s() - t0;
        CHECK(dt >= 0.29 && dt < 5.0);
        if (size > 2) /* rank 2 receives after the barrier: a wait would time out */
            CHECK_OK(send_msg(t, DG_MSG_DISC, 2, 0, 1, &k, &n, 7));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    for (i = 0; rank == 1 && i < 2; i++) {
        dg_msg *m = NULL;
        CHECK_OK(dg_transport_recv(t, rank, 30000, &m));
        CHECK(m && m->from == 0 && m->iteration == i && same_pattern(m, (uint32_t)i));
        dg_msg_free(t, m);
    }
    if (rank == 2) {
        dg_msg *m = NULL;
        CHECK_OK(dg_transport_recv(t, rank, 30000, &m));
        CHECK(m && m->from == 0 && same_pattern(m, 7));
        dg_msg_free(t, m);
    }
    dg_transport_close(t);
}

TEST(recv_timeout_is_bounded)
{
    dg_transport *t = open_mpi(0, 0);
    dg_msg *m = (dg_msg *)&m;
    double t0, dt;
    CHECK(t != NULL);
    if (!t) return;
    t0 = now_s();
    CHECK(dg_transport_recv(t, rank, 0, &m) == DG_ERR_TIMEOUT);
    CHECK(m == NULL);
    CHECK(dg_transport_recv(t, rank, 200, &m) == DG_ERR_TIMEOUT);
    dt = now_s() - t0;
    CHECK(dt >= 0.199 && dt < 2.0);
    dg_transport_close(t);
}

TEST(pending_counts)
{
    enum { COUNT = 5 };
    dg_transport *t = open_mpi(0, 0);
    dg_part_kind k = DG_PART_I32;
    size_t n[2] = {3, 10000}; /* one MPI message, and head + part */
    int i;
    CHECK(t != NULL);
    if (!t) return;
    CHECK(dg_transport_pending(t, rank) == 0);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1)
        for (i = 0; i < COUNT; i++) CHECK_OK(send_msg(t, DG_MSG_USER, 0, i, 1, &k, &n[i & 1], 7));
    if (rank == 0) {
        double end = now_s() + 10;
        while (dg_transport_pending(t, 0) < COUNT && now_s() < end) {
        }
        CHECK(dg_transport_pending(t, 0) == COUNT);
        for (i = 0; i < COUNT; i++) {
            dg_msg *m = NULL;
            CHECK_OK(dg_transport_recv(t, 0, 0, &m)); /* already here */
            CHECK(m && m->iteration == i);
            dg_msg_free(t, m);
            CHECK(dg_transport_pending(t, 0) == COUNT - 1 - i);
        }
    }
    dg_transport_close(t);
}

/* The same message sequence through an in-process transport: the counters
   of every link this rank is on must be equal, the others zero (each rank
   counts what it sends and what it receives; a message to itself once). */
TEST(traffic_equals_inproc)
{
    dg_transport *t = open_mpi(0, 0), *ip = NULL;
    int a, b, j;
    CHECK(t != NULL);
    CHECK_OK(dg_inproc_create(&ip, size, 0, 0));
    if (!t || !ip) return;
    for (a = 0; a < size; a++)
        for (b = 0; b < size; b++)
            for (j = 0; j < 3; j++) {
                dg_part_kind kinds[3] = {DG_PART_F32, DG_PART_BYTES, DG_PART_I32};
                size_t counts[3] = {(size_t)(j * 30000 + a), (size_t)(b + 1), (size_t)j};
                dg_msg *m = NULL;
                int n = 1 + j;
                if (dg_msg_create(ip, DG_MSG_USER, a, b, j, n, kinds, counts, &m) == DG_OK)
                    CHECK_OK(dg_transport_send(ip, m));
                CHECK_OK(dg_transport_recv(ip, b, 0, &m));
                dg_msg_free(ip, m);
                if (a == rank) CHECK_OK(send_msg(t, DG_MSG_USER, b, j, n, kinds, counts, 1));
            }
    for (j = 0; j < 3 * size; j++) { /* everything for this rank */
        dg_msg *m = NULL;
        CHECK_OK(dg_transport_recv(t, rank, 30000, &m));
        dg_msg_free(t, m);
    }
    for (a = 0; a < size; a++)
        for (b = 0; b < size; b++) {
            dg_traffic x = dg_transport_traffic(t, a, b), y = dg_transport_traffic(ip, a, b);
            if (a != rank && b != rank) y.messages = y.payload_bytes = y.frame_bytes = 0;
            CHECK(x.messages == y.messages && x.payload_bytes == y.payload_bytes &&
                  x.frame_bytes == y.frame_bytes);
        }
    dg_transport_close(ip);
    dg_transport_close(t);
}

/* Rank 1 sends rank 0 bad frames with plain MPI_Send on the transport's
   communicator; each is refused with an error naming rank 1, and the
   transport keeps working. */
TEST(malformed_frames_rejected)
{
    dg_transport *t = open_mpi(0, 1024);
    MPI_Comm comm;
    unsigned char buf[4096];
    dg_part_kind k = DG_PART_F32;
    size_t n = 100;
    int i, s;
    static const dg_result expect[] = {DG_ERR_FORMAT, DG_ERR_FORMAT, DG_ERR_CHECKSUM,
                                       DG_ERR_TOO_LARGE, DG_ERR_FORMAT, DG_ERR_FORMAT,
                                       DG_ERR_FORMAT, DG_ERR_TIMEOUT, DG_ERR_FORMAT};
    enum { CASES = sizeof expect / sizeof expect[0] };
    CHECK(t != NULL);
    if (!t) return;
    comm = dg_mpi_comm(t);
    if (rank == 1) {
        dg_msg *m;
        size_t len;
        for (i = 0; i < (int)sizeof buf; i++) buf[i] = (unsigned char)(i * 37);
        MPI_Send(buf, 1000, MPI_BYTE, 0, DG_MPI_TAG_FRAME, comm);          /* garbage */
        CHECK_OK(dg_msg_create(t, DG_MSG_FEEDBACK, 2, 0, 0, 1, &k, &n, &m)); /* from 2 */
        fill(m, 3);
        CHECK_OK(dg_msg_encode(m, buf, sizeof buf, &len));
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_FRAME, comm);
        m->from = 1;
        CHECK_OK(dg_msg_encode(m, buf, sizeof buf, &len));
        buf[len - 5] ^= 0x40;                                               /* bit flip */
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_FRAME, comm);
        MPI_Send(buf, 3000, MPI_BYTE, 0, DG_MPI_TAG_FRAME, comm);           /* over 1 KiB */
        MPI_Send(buf, 40, MPI_BYTE, 0, DG_MPI_TAG_PART, comm);              /* no head */
        MPI_Send(buf, 40, MPI_BYTE, 0, 99, comm);                           /* not a frame */
        buf[len - 5] ^= 0x40;
        MPI_Send(buf, (int)dg_msg_frame_bytes(m), MPI_BYTE, 0, DG_MPI_TAG_HEAD, comm);
        MPI_Send(buf, 12, MPI_BYTE, 0, DG_MPI_TAG_PART, comm);              /* 12 bytes, not 400 */
        MPI_Send(buf, (int)dg_msg_frame_bytes(m), MPI_BYTE, 0, DG_MPI_TAG_HEAD, comm); /* no part */
        MPI_Barrier(MPI_COMM_WORLD); /* rank 0 saw the timeout: now a late part, refused */
        MPI_Send(buf, 400, MPI_BYTE, 0, DG_MPI_TAG_PART, comm);
        dg_msg_free(t, m);
        CHECK_OK(send_msg(t, DG_MSG_FEEDBACK, 0, 77, 1, &k, &n, 5));        /* still works */
    } else if (rank == 0) {
        for (s = 0; s < CASES; s++) {
            dg_msg *m = NULL;
            dg_result r = dg_transport_recv(t, 0, 10000, &m);
            CHECK(r == expect[s] && m == NULL);
            if (r != expect[s] || !strstr(dg_last_error(), "rank 1"))
                printf("  case %d: %d %s\n", s, (int)r, dg_last_error());
            if (s == 7) MPI_Barrier(MPI_COMM_WORLD);
        }
        {
            dg_msg *m = NULL;
            CHECK_OK(dg_transport_recv(t, 0, 10000, &m));
            CHECK(m && m->iteration == 77 && same_pattern(m, 5));
            dg_msg_free(t, m);
        }
    } else {
        MPI_Barrier(MPI_COMM_WORLD);
    }
    dg_transport_close(t);
}

/* The frame of make_msg's message, encoded by dg_msg_encode into buf; its
   CRC field zeroed unless crc.  Returns the encoded size (0: it did not
   fit). */
static size_t expected_frame(dg_transport *t, int from, int to, int64_t it, int n,
                             const dg_part_kind *k, const size_t *c, uint32_t seed, int crc,
                             unsigned char *buf, size_t cap)
{
    dg_msg *m;
    size_t len = 0;
    if (make_msg(t, DG_MSG_USER, from, to, it, n, k, c, seed, &m) != DG_OK) return 0;
    if (dg_msg_encode(m, buf, cap, &len) != DG_OK) len = 0;
    if (!crc && len) memset(buf + 44, 0, 4);
    dg_msg_free(t, m);
    return len;
}

/* Around the one-message threshold (inline_max = 4 KiB), with and without
   the CRC: a payload of 4096 bytes goes encoded (DG_MPI_TAG_FRAME), 4100
   bytes in one message from the message's buffer (DG_MPI_TAG_INPLACE + 1),
   two parts lying back to back (4096 + 12 bytes) the same (+ 2), two that
   do not (4100 + 12) as head and parts.  Rank 1 looks at the first MPI
   message of each (tag, size), takes one copy of each one-message frame
   off the communicator itself and compares it byte for byte with
   dg_msg_encode's frame, and receives another through the transport. */
TEST(one_message_threshold)
{
    static const struct { size_t c0, c1; int n, tag; } cases[] = {
        {1024, 0, 1, DG_MPI_TAG_FRAME},  {1025, 0, 1, DG_MPI_TAG_INPLACE + 1},
        {1024, 3, 2, DG_MPI_TAG_INPLACE + 2}, {1025, 3, 2, DG_MPI_TAG_HEAD}};
    static unsigned char want[8192], got[8192];
    dg_part_kind k[2] = {DG_PART_F32, DG_PART_I32};
    int crc, i, j;
    for (crc = 0; crc < 2; crc++) {
        dg_transport *t = open_mpi(crc, 0);
        MPI_Comm comm;
        CHECK(t != NULL);
        if (!t) return;
        comm = dg_mpi_comm(t);
        for (i = 0; i < 4; i++) {
            size_t c[2] = {cases[i].c0, cases[i].c1};
            int n = cases[i].n, tag = cases[i].tag, it = 10 * i + crc, one = tag != DG_MPI_TAG_HEAD;
            if (crc && tag != DG_MPI_TAG_FRAME)
                tag += one ? DG_MPI_TAG_INPLACE_CRC - DG_MPI_TAG_INPLACE
                           : DG_MPI_TAG_HEAD_CRC - DG_MPI_TAG_HEAD;
            for (j = 0; j < 2 && rank == 0; j++)
                CHECK_OK(send_msg(t, DG_MSG_USER, 1, it, n, k, c, (uint32_t)it));
            if (rank != 1) continue;
            for (j = 0; j < 2; j++) {
                size_t len = expected_frame(t, 0, 1, it, n, k, c, (uint32_t)it,
                                            crc || tag == DG_MPI_TAG_FRAME, want, sizeof want);
                MPI_Status st;
                int count = -1;
                dg_msg *m = NULL;
                MPI_Probe(0, MPI_ANY_TAG, comm, &st);
                MPI_Get_count(&st, MPI_BYTE, &count);
                CHECK(st.MPI_TAG == tag);
                CHECK(count == (one ? (int)len : DG_MSG_HEADER_BYTES + DG_MSG_PART_BYTES * n));
                if (j == 0 && one) { /* this copy by hand: the bytes on the wire */
                    MPI_Recv(got, (int)sizeof got, MPI_BYTE, 0, st.MPI_TAG, comm,
                             MPI_STATUS_IGNORE);
                    CHECK(len > 0 && memcmp(got, want, len) == 0);
                    continue;
                }
                CHECK_OK(dg_transport_recv(t, 1, 30000, &m));
                CHECK(m && m->type == DG_MSG_USER && m->from == 0 && m->iteration == it &&
                      m->aux == -it && m->stat[0] == 0.5f * (float)it && m->n_parts == n &&
                      m->part[0].count == c[0] && same_pattern(m, (uint32_t)it));
                dg_msg_free(t, m);
            }
        }
        dg_transport_close(t);
    }
}

/* Rank 1 sends rank 0 bad one-message frames by hand; each is refused
   with an error naming rank 1, and a good one made by hand (with its
   CRC) is then received whole. */
TEST(one_message_frames_checked)
{
    dg_transport *t = open_mpi(0, 1024);
    static unsigned char buf[4096];
    static const dg_result expect[] = {DG_ERR_FORMAT, DG_ERR_FORMAT, DG_ERR_FORMAT,
                                       DG_ERR_CHECKSUM, DG_ERR_FORMAT, DG_ERR_FORMAT,
                                       DG_ERR_TOO_LARGE};
    enum { CASES = sizeof expect / sizeof expect[0] };
    dg_part_kind k[2] = {DG_PART_F32, DG_PART_I32};
    size_t c[2] = {96, 3}, c2[2] = {25, 3}, big = 500, len;
    int s;
    CHECK(t != NULL);
    if (!t) return;
    if (rank == 1) {
        MPI_Comm comm = dg_mpi_comm(t);
        len = expected_frame(t, 1, 0, 5, 1, k, c, 5, 1, buf, sizeof buf);
        MPI_Send(buf, (int)len - 4, MPI_BYTE, 0, DG_MPI_TAG_INPLACE + 1, comm); /* truncated */
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_INPLACE + 2, comm);     /* 2 parts? */
        len = expected_frame(t, 1, 0, 5, 2, k, c2, 5, 1, buf, sizeof buf); /* 100 + 12 bytes */
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_INPLACE + 2, comm); /* not back to back */
        len = expected_frame(t, 1, 0, 5, 1, k, c, 5, 1, buf, sizeof buf);
        buf[len - 5] ^= 0x40;
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_INPLACE_CRC + 1, comm); /* bit flip */
        MPI_Send(buf, 20, MPI_BYTE, 0, DG_MPI_TAG_INPLACE + 1, comm);           /* no head */
        len = expected_frame(t, 0, 0, 5, 1, k, c, 5, 1, buf, sizeof buf);       /* from 0 */
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_INPLACE + 1, comm);
        len = expected_frame(t, 1, 0, 5, 1, k, &big, 5, 1, buf, sizeof buf);    /* over 1 KiB */
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_INPLACE + 1, comm);
        len = expected_frame(t, 1, 0, 6, 2, k, c, 6, 1, buf, sizeof buf);       /* good */
        MPI_Send(buf, (int)len, MPI_BYTE, 0, DG_MPI_TAG_INPLACE_CRC + 2, comm);
    } else if (rank == 0) {
        dg_msg *m = NULL;
        for (s = 0; s < CASES; s++) {
            dg_result r = dg_transport_recv(t, 0, 10000, &m);
            CHECK(r == expect[s] && m == NULL);
            if (r != expect[s] || !strstr(dg_last_error(), "rank 1"))
                printf("  case %d: %d %s\n", s, (int)r, dg_last_error());
        }
        CHECK_OK(dg_transport_recv(t, 0, 10000, &m));
        CHECK(m && m->from == 1 && m->iteration == 6 && m->aux == -6 && m->n_parts == 2 &&
              m->part[0].count == 96 && m->part[1].count == 3 && same_pattern(m, 6));
        dg_msg_free(t, m);
    }
    dg_transport_close(t);
}

/* Rank 0 sends from one thread and receives on another, both ways with
   rank 1, on the same transport. */
typedef struct pump {
    dg_transport *t;
    int ok;
} pump;

static void *pump_send(void *arg)
{
    pump *p = (pump *)arg;
    dg_part_kind k = DG_PART_F32;
    int i;
    for (i = 0; i < 200; i++) {
        size_t c = i % 4 == 0 ? 20000 : 10;
        if (send_msg(p->t, DG_MSG_USER, 1 - rank, i, 1, &k, &c, (uint32_t)i) != DG_OK) p->ok = 0;
    }
    return NULL;
}

TEST(send_and_recv_on_two_threads)
{
    dg_transport *t = open_mpi(0, 0);
    pthread_t th;
    pump p;
    int i;
    CHECK(t != NULL);
    if (!t) return;
    p.t = t;
    p.ok = 1;
    if (rank < 2) {
        pthread_create(&th, NULL, pump_send, &p);
        for (i = 0; i < 200; i++) {
            dg_msg *m = NULL;
            if (dg_transport_recv(t, rank, 30000, &m) != DG_OK || m->iteration != i ||
                !same_pattern(m, (uint32_t)i))
                p.ok = 0;
            dg_msg_free(t, m);
        }
        pthread_join(th, NULL);
    }
    CHECK(p.ok);
    dg_transport_close(t);
}

/* An idle receiver sleeps: CPU time well under the wall time.  (The bound
   is loose on purpose; the measured share is printed.) */
TEST(idle_receiver_sleeps)
{
    dg_transport *t = open_mpi(0, 0);
    struct rusage r0, r1;
    double t0, wall, cpu;
    dg_msg *m;
    CHECK(t != NULL);
    if (!t) return;
    if (rank == 0) {
        getrusage(RUSAGE_THREAD, &r0);
        t0 = now_s();
        CHECK(dg_transport_recv(t, 0, 1000, &m) == DG_ERR_TIMEOUT);
        wall = now_s() - t0;
        getrusage(RUSAGE_THREAD, &r1);
        cpu = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) +
              1e-6 * (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) +
              (double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
              1e-6 * (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
        printf("  idle receiver: %.2f%% of a core over %.2f s\n", 100.0 * cpu / wall, wall);
        CHECK(cpu < 0.5 * wall);
    }
    dg_transport_close(t);
}

/* Close is collective and returns even when a frame was never received. */
TEST(close_with_unreceived_frames)
{
    dg_transport *t = open_mpi(0, 0);
    dg_part_kind k = DG_PART_F32;
    size_t n[2] = {4, 1 << 18};
    double t0;
    CHECK(t != NULL);
    if (!t) return;
    if (rank == 1) {
        CHECK_OK(send_msg(t, DG_MSG_USER, 0, 0, 1, &k, &n[0], 1));
        CHECK_OK(send_msg(t, DG_MSG_USER, 0, 1, 1, &k, &n[1], 1));
    }
    t0 = now_s();
    dg_transport_close(t);
    CHECK(now_s() - t0 < 10.0);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "funneled") == 0) { /* below the level the transport needs */
        dg_transport *t = NULL;
        int level;
        MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &level);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        th_cur_failed = 0;
        if (level < MPI_THREAD_SERIALIZED) {
            CHECK(dg_mpi_create(&t, MPI_COMM_WORLD, NULL) == DG_ERR_UNSUPPORTED && t == NULL);
            CHECK(strstr(dg_last_error(), "MPI_THREAD_SERIALIZED") != NULL);
        }
        if (th_cur_failed) th_failed++; else th_passed++;
        if (rank == 0) printf("%s thread_level_checked\n", th_cur_failed ? "FAIL" : "ok  ");
        MPI_Finalize();
        return rank == 0 ? th_done() : 0;
    }
    if (!mpi_start(&argc, &argv, 2, 0)) return 1;
    MPI_RUN(create_and_arguments);
    MPI_RUN(round_trip_every_kind_and_size);
    MPI_RUN(round_trip_with_checksum);
    MPI_RUN(order_per_link);
    MPI_RUN(ring_swap_does_not_deadlock);
    MPI_RUN(peer_window_holds_one_receiver);
    MPI_RUN(recv_timeout_is_bounded);
    MPI_RUN(pending_counts);
    MPI_RUN(traffic_equals_inproc);
    MPI_RUN(malformed_frames_rejected);
    MPI_RUN(one_message_threshold);
    MPI_RUN(one_message_frames_checked);
    MPI_RUN(send_and_recv_on_two_threads);
    MPI_RUN(idle_receiver_sleeps);
    MPI_RUN(close_with_unreceived_frames);
    return mpi_done();
}
