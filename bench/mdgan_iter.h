/* bench/mdgan_iter.h: one MD-GAN iteration of one workload on every
   transport, for bench/bench_tcp.c (in-process and TCP) and
   bench/mpi_mdgan.c (the same, and MPI, in one run).

   The workload: the reference DCGAN, b = 64, 28 x 28 procedural shapes
   (4096 images, seed 1), N workers on an i.i.d. partition, swaps every
   round(m/b) iterations as the in-process run derives them.  In-process:
   the roles as tasks of one pool of a thread per core (dg_mdgan_run).
   Over a transport: the server's drive on that pool, every worker with a
   one-thread pool (its own thread over TCP, its own rank over MPI), as
   separate processes are.  A round times MDI_ITERS iterations after a
   first one (warm-up: buffers, connections) on every transport in turn;
   ms is the median over MDI_ROUNDS rounds, overhead the median of the
   rounds' ms / in-process ms - 1, overhead_min / _max their spread (the
   machine is shared: read the spread). */
#ifndef BENCH_MDGAN_ITER_H
#define BENCH_MDGAN_ITER_H

#define MDI_B 64
#define MDI_ITERS 4
#define MDI_ROUNDS 3

static dg_mdgan_config mdi_config(const dg_dataset *ds, int nw)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    c.n_workers = nw;
    c.c = ds->c; c.h = ds->h; c.w = ds->w;
    c.arch = DG_ARCH_DCGAN;
    c.batch = MDI_B;
    c.swap_every = (int)((double)ds->n / nw / MDI_B + 0.5); /* what swap_every = 0 derives */
    return c;
}

static int mdi_dataset(dg_dataset *ds)
{
    memset(ds, 0, sizeof *ds);
    return dg_dataset_make_shapes(ds, 4096, 1) == DG_OK;
}

static double mdi_inproc_ms(const dg_dataset *ds, const dg_partition *part, int nw, dg_pool *pool)
{
    dg_mdgan_config mc = mdi_config(ds, nw);
    dg_mdgan_run *run;
    double t0, ms;
    int i;
    if (dg_mdgan_run_create(&run, &mc, pool, ds, part, NULL, 0, NULL, 0) != DG_OK) return 0;
    dg_mdgan_run_iteration(run);
    t0 = bench_now();
    for (i = 0; i < MDI_ITERS; i++) dg_mdgan_run_iteration(run);
    ms = 1e3 * (bench_now() - t0) / MDI_ITERS;
    dg_mdgan_run_free(run);
    return ms;
}

typedef struct mdi_timing {
    double last, sum;
    int n;
} mdi_timing;

static void mdi_on_iter(void *user, const dg_drive_status *s)
{
    mdi_timing *tm = (mdi_timing *)user;
    double now = bench_now();
    if (s->iteration > 1) { /* the first iteration warms up */
        tm->sum += now - tm->last;
        tm->n++;
    }
    tm->last = now;
}

/* The server's drive on t for MDI_ITERS + 1 iterations: ms per iteration
   (0 when it failed). */
static double mdi_server_ms(const dg_dataset *ds, int nw, dg_transport *t, dg_pool *pool)
{
    dg_mdgan_config mc = mdi_config(ds, nw);
    dg_drive r;
    mdi_timing tm;
    memset(&r, 0, sizeof r);
    memset(&tm, 0, sizeof tm);
    r.iterations = MDI_ITERS + 1;
    r.progress = mdi_on_iter;
    r.user = &tm;
    tm.last = bench_now();
    if (dg_mdgan_server_drive(&mc, t, pool, &r) != DG_OK || !tm.n) return 0;
    return 1e3 * tm.sum / tm.n;
}

/* Worker id's drive on t with a one-thread pool. */
static dg_result mdi_worker(const dg_dataset *ds, const dg_partition *part, int nw, int id,
                            dg_transport *t)
{
    dg_mdgan_config mc = mdi_config(ds, nw);
    dg_pool *pool;
    dg_drive run;
    size_t count;
    const uint32_t *idx = dg_partition_worker(part, id - 1, &count);
    dg_result r;
    memset(&run, 0, sizeof run);
    if ((r = dg_pool_create(&pool, 1)) != DG_OK) return r;
    r = dg_mdgan_worker_drive(&mc, id, t, pool, ds, idx, count, &run);
    dg_pool_destroy(pool);
    return r;
}

static int mdi_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double mdi_median(const double *v, int n)
{
    double s[MDI_ROUNDS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, mdi_cmp);
    return s[n / 2];
}

/* The line of a transport from its rounds' ms (inproc: the in-process
   rounds, NULL for the in-process line itself). */
static void mdi_print(const char *transport, int nw, const double *ms, const double *inproc)
{
    double q[MDI_ROUNDS];
    int r;
    for (r = 0; r < MDI_ROUNDS; r++) {
        if (ms[r] <= 0 || (inproc && inproc[r] <= 0)) {
            printf("bench mdgan_iter transport=%s workers=%d status=failed (%s)\n", transport, nw,
                   dg_last_error());
            fflush(stdout);
            return;
        }
        q[r] = inproc ? 100.0 * (ms[r] / inproc[r] - 1.0) : 0;
    }
    printf("bench mdgan_iter transport=%s workers=%d ms=%.1f", transport, nw,
           mdi_median(ms, MDI_ROUNDS));
    if (inproc) {
        qsort(q, MDI_ROUNDS, sizeof *q, mdi_cmp);
        printf(" overhead=%.1f%% overhead_min=%.1f%% overhead_max=%.1f%%", q[MDI_ROUNDS / 2], q[0],
               q[MDI_ROUNDS - 1]);
    }
    printf("\n");
    fflush(stdout);
}

#ifndef DG_NO_TCP
typedef struct mdi_tcp_worker {
    const dg_dataset *ds;
    const dg_partition *part;
    int nw, id;
    dg_transport *t;
} mdi_tcp_worker;

static void *mdi_tcp_worker_main(void *arg)
{
    mdi_tcp_worker *a = (mdi_tcp_worker *)arg;
    mdi_worker(a->ds, a->part, a->nw, a->id, a->t);
    return NULL;
}

static dg_tcp_config mdi_tcp_cfg(int self, int n_peers, const unsigned char hash[32])
{
    dg_tcp_config c = dg_tcp_config_init();
    c.self = self;
    c.n_peers = n_peers;
    c.max_message = (uint64_t)64 << 20;
    memcpy(c.config_hash, hash, 32);
    return c;
}

/* Server and nw workers over loopback TCP in this process. */
static double mdi_tcp_ms(const dg_dataset *ds, const dg_partition *part, int nw, dg_pool *pool)
{
    dg_mdgan_config mc = mdi_config(ds, nw);
    dg_transport *st = NULL, **wt;
    pthread_t *th;
    mdi_tcp_worker *wa;
    dg_tcp_config c;
    unsigned char h[32];
    char addr[64];
    double ms = 0;
    int i, started = 0;
    wt = (dg_transport **)calloc((size_t)nw + 1, sizeof *wt);
    th = (pthread_t *)calloc((size_t)nw + 1, sizeof *th);
    wa = (mdi_tcp_worker *)calloc((size_t)nw + 1, sizeof *wa);
    dg_tcp_mdgan_config_hash(&mc, NULL, h);
    c = mdi_tcp_cfg(0, nw + 1, h);
    c.listen = "127.0.0.1:0";
    if (wt && th && wa && dg_tcp_server_create(&st, &c) == DG_OK) {
        snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)dg_tcp_port(st));
        for (i = 1; i <= nw; i++) {
            c = mdi_tcp_cfg(i, nw + 1, h);
            c.connect = addr;
            if (dg_tcp_worker_create(&wt[i], &c) != DG_OK) break;
            wa[i].ds = ds;
            wa[i].part = part;
            wa[i].nw = nw;
            wa[i].id = i;
            wa[i].t = wt[i];
            pthread_create(&th[i], NULL, mdi_tcp_worker_main, &wa[i]);
            started = i;
        }
        if (started == nw) ms = mdi_server_ms(ds, nw, st, pool);
        else dg_transport_goodbye(st, 1); /* the workers that started end too */
        for (i = 1; i <= started; i++) pthread_join(th[i], NULL);
    }
    for (i = 1; wt && i <= nw; i++) dg_transport_close(wt[i]);
    dg_transport_close(st);
    free(wt);
    free(th);
    free(wa);
    return ms;
}
#endif
#endif
