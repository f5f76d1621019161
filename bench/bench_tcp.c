/* bench/bench_tcp.c: what TCP costs.
 *
 *   bench tcp_throughput size=... msgs=... gbps=... raw_gbps=... ratio=...
 *       ratio_min=... ratio_max=...
 *     float32 tensor payload through a server and a worker transport over
 *     loopback (framing, CRC-32 both ways, the receiver's state machine and
 *     message pool) against a plain blocking write/read loop of the same
 *     message sizes on a loopback TCP socket (sender and receiver threads
 *     as ours), in the same run: ROUNDS rounds, ours and raw alternating;
 *     gbps and raw_gbps are the medians, ratio their quotient, ratio_min /
 *     ratio_max the spread of the rounds' quotients; gbps_spread and
 *     raw_spread are max / min of each loop's rounds: a dip of the ratio
 *     with a wide raw_spread is the reference's noise, one with a wide
 *     gbps_spread and a narrow raw_spread a stall of ours.
 *   bench mdgan_iter transport=inproc|tcp workers=N ms=... overhead=...
 *     one MD-GAN iteration of the reference DCGAN (b = 64, 28 x 28) with
 *     N = 4 and 10 workers: in-process and over TCP, each worker on its own
 *     thread with a one-thread pool (bench/mdgan_iter.h; bench/mpi_mdgan.c
 *     adds MPI).
 *   `bench_tcp throughput` runs the throughput lines only; `bench_tcp ours
 *   SIZE N` or `bench_tcp raw SIZE N` sends N messages of SIZE bytes one
 *   way only (after a warm-up), for `perf stat` of the CPU per message. */
#include "bench_common.h"
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "mdgan_iter.h"

#define ROUNDS 5

typedef struct sink {
    dg_transport *t;
    int self, n;
    int fd;
    size_t bytes;
} sink;

static void *tp_recv(void *arg)
{
    sink *s = (sink *)arg;
    int i;
    for (i = 0; i < s->n; i++) {
        dg_msg *m;
        if (dg_transport_recv(s->t, s->self, 30000, &m) != DG_OK) break;
        dg_msg_free(s->t, m);
    }
    return NULL;
}

static void *raw_recv(void *arg)
{
    sink *s = (sink *)arg;
    char *buf = (char *)malloc(s->bytes);
    int i;
    for (i = 0; i < s->n; i++) {
        size_t got = 0;
        while (got < s->bytes) {
            ssize_t r = read(s->fd, buf + got, s->bytes - got);
            if (r <= 0) { free(buf); return NULL; }
            got += (size_t)r;
        }
    }
    free(buf);
    return NULL;
}

static double raw_gbps(size_t bytes, int n)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0), a, i, one = 1;
    char *buf = (char *)malloc(bytes);
    pthread_t th;
    sink s;
    double t0, t;
    /* written, as a message's values are: an untouched calloc'd buffer
       maps the kernel's shared zero page, which the copy into the socket
       reads from cache whatever the size (16 MB at twice the speed of a
       real buffer's) */
    memset(buf, 0x5a, bytes);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(l, (struct sockaddr *)&sa, sizeof sa);
    listen(l, 1);
    getsockname(l, (struct sockaddr *)&sa, &sl);
    connect(c, (struct sockaddr *)&sa, sizeof sa);
    a = accept(l, NULL, NULL);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s.fd = a;
    s.n = n;
    s.bytes = bytes;
    pthread_create(&th, NULL, raw_recv, &s);
    t0 = bench_now();
    for (i = 0; i < n; i++) {
        size_t put = 0;
        while (put < bytes) {
            ssize_t w = write(c, buf + put, bytes - put);
            if (w <= 0) break;
            put += (size_t)w;
        }
    }
    pthread_join(th, NULL);
    t = bench_now() - t0;
    close(a);
    close(c);
    close(l);
    free(buf);
    return (double)bytes * n / t / 1e9;
}

static double ours_gbps(dg_transport *srv, dg_transport *wk, size_t floats, int n)
{
    dg_part_kind kind = DG_PART_F32;
    pthread_t th;
    sink s;
    double t0;
    int i;
    s.t = srv;
    s.self = 0;
    s.n = n;
    pthread_create(&th, NULL, tp_recv, &s);
    t0 = bench_now();
    for (i = 0; i < n; i++) {
        dg_msg *m;
        if (dg_msg_create(wk, DG_MSG_FEEDBACK, 1, 0, i, 1, &kind, &floats, &m) ||
            dg_transport_send(wk, m)) {
            printf("bench tcp_throughput status=failed (%s)\n", dg_last_error());
            break;
        }
    }
    pthread_join(th, NULL);
    return 4.0 * floats * n / (bench_now() - t0) / 1e9;
}

/* ROUNDS rounds, ours and raw alternating (the machine is shared): the
   medians, their quotient, and the spread of the rounds' quotients. */
static void throughput(dg_transport *srv, dg_transport *wk, size_t floats, int n)
{
    double ours[ROUNDS], raw[ROUNDS], q[ROUNDS], mo, mr;
    int r;
    ours_gbps(srv, wk, floats, n / 4 + 1); /* warm-up: the pools' buffers */
    for (r = 0; r < ROUNDS; r++) {
        ours[r] = ours_gbps(srv, wk, floats, n);
        raw[r] = raw_gbps(4 * floats, n);
        q[r] = ours[r] / raw[r];
    }
    mo = bench_median(ours, ROUNDS); /* each sorted: the extremes */
    mr = bench_median(raw, ROUNDS);
    bench_median(q, ROUNDS);
    printf("bench tcp_throughput size=%zu msgs=%d gbps=%.3f raw_gbps=%.3f ratio=%.2f "
           "ratio_min=%.2f ratio_max=%.2f gbps_spread=%.2f raw_spread=%.2f\n", 4 * floats, n,
           mo, mr, mo / mr, q[0], q[ROUNDS - 1], ours[ROUNDS - 1] / ours[0],
           raw[ROUNDS - 1] / raw[0]);
    fflush(stdout);
}

static dg_tcp_config base_cfg(int self, int n_peers)
{
    dg_tcp_config c;
    c = dg_tcp_config_init();
    c.self = self;
    c.n_peers = n_peers;
    c.max_message = (uint64_t)64 << 20;
    return c;
}

int main(int argc, char **argv)
{
    dg_transport *srv = NULL, *wk = NULL;
    dg_tcp_config c = base_cfg(0, 2);
    char addr[64];
    c.listen = "127.0.0.1:0";
    if (dg_tcp_server_create(&srv, &c) != DG_OK) {
        printf("bench tcp_throughput status=failed (%s)\n", dg_last_error());
        return 0;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)dg_tcp_port(srv));
    c = base_cfg(1, 2);
    c.connect = addr;
    if (dg_tcp_worker_create(&wk, &c) != DG_OK) {
        printf("bench tcp_throughput status=failed (%s)\n", dg_last_error());
        return 0;
    }
    if (argc > 3 && (!strcmp(argv[1], "ours") || !strcmp(argv[1], "raw"))) {
        size_t floats = (size_t)atol(argv[2]) / 4;
        int n = atoi(argv[3]);
        double g = !strcmp(argv[1], "raw") ? raw_gbps(4 * floats, n)
                                           : (ours_gbps(srv, wk, floats, n / 4 + 1),
                                              ours_gbps(srv, wk, floats, n));
        printf("bench tcp_one_way %s size=%zu msgs=%d gbps=%.3f\n", argv[1], 4 * floats, n, g);
        dg_transport_close(wk);
        dg_transport_close(srv);
        return 0;
    }
    throughput(srv, wk, 1024 / 4, 20000);            /* 1 KB */
    throughput(srv, wk, 65536 / 4, 4000);            /* 64 KB */
    throughput(srv, wk, (1 << 20) / 4, 400);         /* 1 MB */
    throughput(srv, wk, (16 << 20) / 4, 30);         /* 16 MB */
    dg_transport_close(wk);
    dg_transport_close(srv);
    if (argc > 1 && !strcmp(argv[1], "throughput")) return 0;

    {   /* MD-GAN iteration at N = 4 and 10 (bench/mdgan_iter.h) */
        static const int nws[2] = {4, 10};
        dg_dataset ds;
        dg_pool *pool;
        int k;
        if (!mdi_dataset(&ds) || dg_pool_create(&pool, 0) != DG_OK) {
            printf("bench mdgan_iter status=failed (%s)\n", dg_last_error());
            return 0;
        }
        for (k = 0; k < 2; k++) {
            dg_partition part;
            double inproc[MDI_ROUNDS], tcp[MDI_ROUNDS];
            int r;
            if (dg_partition_iid(&part, ds.n, nws[k], 1) != DG_OK) break;
            for (r = 0; r < MDI_ROUNDS; r++) {
                inproc[r] = mdi_inproc_ms(&ds, &part, nws[k], pool);
                tcp[r] = mdi_tcp_ms(&ds, &part, nws[k], pool);
            }
            mdi_print("inproc", nws[k], inproc, NULL);
            mdi_print("tcp", nws[k], tcp, inproc);
            dg_partition_free(&part);
        }
        dg_pool_destroy(pool);
        dg_dataset_free(&ds);
    }
    return 0;
}
