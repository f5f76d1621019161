/* bench/bench_asgd.c: AdaComp-ASGD pushes per second.
 *
 *   bench asgd_push transport=inproc|tcp workers=10 mode=hardy pushes=N
 *       pushes_per_s=... bytes_per_push=... model_bytes=...
 *     W = 10 workers on the AdaComp paper's MNIST CNN (421,642 parameters,
 *     28 x 28 x 1, dg_asgd_config_init() defaults: hardy, c = 0.01, batch 10)
 *     on procedural 28 x 28 data: pushes the PS applied per second of wall
 *     time (gradients, compression, transport, apply, the MODEL reply), and
 *     packet bytes per push.  inproc: dg_asgd_run (the virtual-clock
 *     schedule, gradients on one pool).  tcp: the process drivers on
 *     loopback TCP, the PS and each worker on its own thread with a
 *     one-thread pool, as separate processes would be, asynchronous
 *     schedule.  bench/mpi_asgd.c is the same over MPI.  The machine's
 *     cores bound it: the gradients dominate. */
#include "bench_common.h"
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#define ADACOMP_IMPLEMENTATION
#include "../adacomp.h"
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

#define W 10
#define PUSHES 300

static dg_dataset g_ds;
static dg_partition g_part;

static dg_asgd_config config(void)
{
    dg_asgd_config c = dg_asgd_config_init();
    c.n_workers = W;
    c.c = g_ds.c;
    c.h = g_ds.h;
    c.w = g_ds.w;
    c.n_classes = g_ds.n_classes;
    return c;
}

static void report(const char *transport, double s, const dg_asgd_stats *st, size_t n)
{
    printf("bench asgd_push transport=%s workers=%d mode=hardy pushes=%llu pushes_per_s=%.1f "
           "bytes_per_push=%.0f model_bytes=%zu\n",
           transport, W, (unsigned long long)st->applied, st->applied / s,
           st->pushes ? (double)st->bytes_pushed / st->pushes : 0.0, 4 * n);
    fflush(stdout);
}

static void bench_inproc(void)
{
    dg_asgd_config c = config();
    dg_pool *pool;
    dg_asgd_run *run = NULL;
    double t0;
    if (dg_pool_create(&pool, 0) || dg_asgd_run_create(&run, &c, pool, &g_ds, &g_part)) {
        printf("bench asgd_push transport=inproc status=failed (%s)\n", dg_last_error());
        return;
    }
    dg_asgd_run_updates(run, 20); /* warm-up */
    t0 = bench_now();
    if (dg_asgd_run_updates(run, PUSHES) == DG_OK) {
        dg_asgd_stats st = *dg_asgd_server_stats(dg_asgd_run_server(run));
        st.applied -= 20;
        report("inproc", bench_now() - t0, &st, (size_t)ac_layout_total(dg_asgd_run_layout(run)));
    }
    dg_asgd_run_free(run);
    dg_pool_destroy(pool);
}

typedef struct role {
    dg_asgd_config c;
    int id;
    dg_transport *t;
    dg_asgd_drive d;
    dg_result r;
    double t_first, t_end;
    dg_asgd_stats st;
    size_t n;
} role;

static void ps_progress(void *user, const dg_asgd_drive_status *s)
{
    role *p = (role *)user;
    if (!s->last) {
        if (p->t_first == 0) p->t_first = bench_now(); /* at 20 updates: the workers are all in */
        return;
    }
    p->t_end = bench_now();
    p->st = *dg_asgd_server_stats(s->server);
    p->n = (size_t)ac_layout_total(&s->server->layout);
}

static void *role_thread(void *arg)
{
    role *p = (role *)arg;
    dg_pool *pool;
    if ((p->r = dg_pool_create(&pool, 1)) != DG_OK) return NULL;
    if (p->id == 0) {
        p->r = dg_asgd_server_drive(&p->c, p->t, pool, &p->d);
    } else {
        size_t count;
        const uint32_t *idx = dg_partition_worker(&g_part, p->id - 1, &count);
        p->r = dg_asgd_worker_drive(&p->c, p->id, p->t, pool, &g_ds, idx, count, &p->d);
    }
    dg_pool_destroy(pool);
    return NULL;
}

static void bench_tcp(void)
{
    static role ro[W + 1];
    pthread_t th[W + 1];
    dg_tcp_config tc = dg_tcp_config_init();
    char addr[32];
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), i;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    tc.n_peers = W + 1;
    tc.listen = addr;
    tc.retry_ms = 10000;
    for (i = 0; i <= W; i++) {
        memset(&ro[i], 0, sizeof ro[i]);
        ro[i].c = config();
        ro[i].id = i;
        ro[i].d.d.iterations = PUSHES + 20;
        ro[i].d.progress_every = 20;
        ro[i].d.progress = ps_progress;
        ro[i].d.user = &ro[i];
        tc.self = i;
        if (i == 1) {
            tc.listen = NULL;
            tc.connect = addr;
        }
        if ((i == 0 ? dg_tcp_server_create(&ro[i].t, &tc) : dg_tcp_worker_create(&ro[i].t, &tc))) {
            printf("bench asgd_push transport=tcp status=failed (%s)\n", dg_last_error());
            return;
        }
    }
    for (i = 0; i <= W; i++) pthread_create(&th[i], NULL, role_thread, &ro[i]);
    for (i = 0; i <= W; i++) pthread_join(th[i], NULL);
    if (ro[0].r == DG_OK && ro[0].t_first > 0) {
        ro[0].st.applied -= 20;
        report("tcp", ro[0].t_end - ro[0].t_first, &ro[0].st, ro[0].n);
    } else {
        printf("bench asgd_push transport=tcp status=failed (%s)\n", dg_last_error());
    }
    for (i = W; i >= 0; i--) dg_transport_close(ro[i].t);
}

int main(void)
{
    /* 28 x 28 x 1, 10 classes, as the paper's MNIST */
    if (dg_dataset_make_shapes(&g_ds, 6000, 1) ||
        dg_asgd_partition_contiguous(&g_part, g_ds.n, W)) {
        printf("bench asgd_push status=failed (%s)\n", dg_last_error());
        return 1;
    }
    bench_inproc();
    bench_tcp();
    dg_partition_free(&g_part);
    dg_dataset_free(&g_ds);
    return 0;
}
