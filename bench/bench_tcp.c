/* bench/bench_tcp.c: what TCP costs.
 *
 *   bench tcp_throughput size=... msgs=... gbps=... raw_gbps=... ratio=...
 *     float32 tensor payload through a server and a worker transport over
 *     loopback (framing, CRC-32 both ways, the receiver's state machine and
 *     message pool) against a plain blocking write/read loop of the same
 *     message sizes on a loopback TCP socket, in the same run.
 *   bench mdgan_iter transport=inproc|tcp workers=4 ms=... overhead=...
 *     one MD-GAN iteration of the reference DCGAN (b = 64, 28 x 28) with 4
 *     workers: in-process (the roles as tasks of one pool) and over TCP
 *     (server and worker transports, each worker on its own thread with a
 *     one-thread pool, as separate processes would be).
 *   `bench_tcp throughput` runs the throughput lines only. */
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
    char *buf = (char *)calloc(bytes, 1);
    pthread_t th;
    sink s;
    double t0, t;
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

static void throughput(dg_transport *srv, dg_transport *wk, size_t floats, int n)
{
    dg_part_kind kind = DG_PART_F32;
    pthread_t th;
    sink s;
    double t0, t, gbps, raw;
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
    t = bench_now() - t0;
    gbps = 4.0 * floats * n / t / 1e9;
    raw = raw_gbps(4 * floats, n);
    printf("bench tcp_throughput size=%zu msgs=%d gbps=%.3f raw_gbps=%.3f ratio=%.2f\n",
           4 * floats, n, gbps, raw, gbps / raw);
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

/* ---- MD-GAN iteration ---- */
#define NW 4
#define B 64

typedef struct wk_arg {
    dg_mdgan_config cfg;
    int id;
    dg_transport *t;
    const dg_dataset *ds;
    const uint32_t *idx;
    size_t count;
} wk_arg;

static void *worker_main(void *arg)
{
    wk_arg *a = (wk_arg *)arg;
    dg_pool *pool;
    dg_drive run;
    memset(&run, 0, sizeof run);
    dg_pool_create(&pool, 1);
    dg_mdgan_worker_drive(&a->cfg, a->id, a->t, pool, a->ds, a->idx, a->count, &run);
    dg_pool_destroy(pool);
    return NULL;
}

typedef struct timing {
    double t0, last, sum;
    int n;
} timing;

static void on_iter(void *user, const dg_drive_status *s)
{
    timing *tm = (timing *)user;
    double now = bench_now();
    if (s->iteration > 1) { /* the first iteration warms up */
        tm->sum += now - tm->last;
        tm->n++;
    }
    tm->last = now;
}

int main(int argc, char **argv)
{
    dg_transport *srv = NULL, *wk = NULL;
    dg_tcp_config c = base_cfg(0, 2);
    char addr[64];
    int iters = 6;
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
    throughput(srv, wk, 1024 / 4, 20000);            /* 1 KB */
    throughput(srv, wk, 65536 / 4, 4000);            /* 64 KB */
    throughput(srv, wk, (1 << 20) / 4, 400);         /* 1 MB */
    throughput(srv, wk, (16 << 20) / 4, 30);         /* 16 MB */
    dg_transport_close(wk);
    dg_transport_close(srv);
    if (argc > 1 && !strcmp(argv[1], "throughput")) return 0;

    {   /* MD-GAN iteration, DCGAN b = 64, 4 workers */
        dg_dataset ds;
        dg_partition part;
        dg_pool *pool;
        dg_mdgan_config mc = dg_mdgan_config_init();
        dg_mdgan_run *run;
        double t0, inproc_ms, tcp_ms;
        int i;
        memset(&ds, 0, sizeof ds);
        dg_dataset_make_shapes(&ds, 4096, 1);
        dg_partition_iid(&part, ds.n, NW, 1);
        mc.n_workers = NW; mc.c = ds.c; mc.h = ds.h; mc.w = ds.w; mc.arch = DG_ARCH_DCGAN;
        mc.batch = B;
        dg_pool_create(&pool, 0);
        if (dg_mdgan_run_create(&run, &mc, pool, &ds, &part, NULL, 0, NULL, 0) != DG_OK) {
            printf("bench mdgan_iter status=failed (%s)\n", dg_last_error());
            return 0;
        }
        dg_mdgan_run_iteration(run);
        t0 = bench_now();
        for (i = 0; i < iters; i++) dg_mdgan_run_iteration(run);
        inproc_ms = 1e3 * (bench_now() - t0) / iters;
        dg_mdgan_run_free(run);
        printf("bench mdgan_iter transport=inproc workers=%d ms=%.1f\n", NW, inproc_ms);
        fflush(stdout);
        {
            dg_transport *st, *wt[NW + 1];
            pthread_t th[NW + 1];
            wk_arg wa[NW + 1];
            dg_drive r;
            timing tm;
            unsigned char h[32];
            mc.swap_every = (int)((double)ds.n / NW / B + 0.5);
            dg_tcp_mdgan_config_hash(&mc, NULL, h);
            c = base_cfg(0, NW + 1);
            c.listen = "127.0.0.1:0";
            memcpy(c.config_hash, h, 32);
            dg_tcp_server_create(&st, &c);
            snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)dg_tcp_port(st));
            for (i = 1; i <= NW; i++) {
                c = base_cfg(i, NW + 1);
                c.connect = addr;
                memcpy(c.config_hash, h, 32);
                if (dg_tcp_worker_create(&wt[i], &c) != DG_OK) {
                    printf("bench mdgan_iter status=failed (%s)\n", dg_last_error());
                    return 0;
                }
                wa[i].cfg = mc;
                wa[i].id = i;
                wa[i].t = wt[i];
                wa[i].ds = &ds;
                wa[i].idx = dg_partition_worker(&part, i - 1, &wa[i].count);
                pthread_create(&th[i], NULL, worker_main, &wa[i]);
            }
            memset(&r, 0, sizeof r);
            memset(&tm, 0, sizeof tm);
            r.iterations = iters + 1;
            r.progress = on_iter;
            r.user = &tm;
            tm.last = bench_now();
            dg_mdgan_server_drive(&mc, st, pool, &r);
            for (i = 1; i <= NW; i++) pthread_join(th[i], NULL);
            tcp_ms = tm.n ? 1e3 * tm.sum / tm.n : 0;
            printf("bench mdgan_iter transport=tcp workers=%d ms=%.1f overhead=%.1f%%\n", NW,
                   tcp_ms, 100.0 * (tcp_ms / inproc_ms - 1.0));
            for (i = 1; i <= NW; i++) dg_transport_close(wt[i]);
            dg_transport_close(st);
        }
        dg_pool_destroy(pool);
        dg_partition_free(&part);
        dg_dataset_free(&ds);
    }
    return 0;
}
