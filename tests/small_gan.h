/* tests/small_gan.h: the small data and GAN of the in-process MD-GAN and
 * FL-GAN tests (tests/test_mdgan.c, tests/test_netsim.c and others), and
 * their thread pools.  Include after distgan.h and harness.h. */
#ifndef DG_TEST_SMALL_GAN_H
#define DG_TEST_SMALL_GAN_H

/* The tests' thread pools, of one thread and of two (results must not
   depend on the count): pools_create in main, before the tests. */
static dg_pool *pool1, *pool2;

static inline int pools_create(void)
{
    return dg_pool_create(&pool1, 1) == DG_OK && dg_pool_create(&pool2, 2) == DG_OK;
}

static inline void pools_destroy(void)
{
    dg_pool_destroy(pool1);
    dg_pool_destroy(pool2);
}

/* n images of 1 x 8 x 8 in 4 classes: a bright row or column whose place
   depends on the class, plus noise; deterministic in seed */
static inline void make_data(dg_dataset *ds, size_t n, uint64_t seed)
{
    dg_rng rng = dg_rng_make(seed, 99, 0);
    size_t i;
    int p;
    dg_dataset_create(ds, n, 1, 8, 8, 4);
    for (i = 0; i < n; i++) {
        uint8_t *img = ds->pixels + i * 64;
        int c = (int)(i % 4), at = 1 + 2 * c;
        ds->labels[i] = c;
        for (p = 0; p < 64; p++) img[p] = (uint8_t)dg_rng_below(&rng, 60);
        for (p = 0; p < 8; p++) img[(c & 1) ? p * 8 + at : at * 8 + p] = 230;
    }
}

/* make_data(n, seed) in i.i.d. shards for `workers` workers (partition seed
   5): the data of an in-process run, made and freed in one line each */
typedef struct small_data {
    dg_dataset ds;
    dg_partition part;
} small_data;

static inline void small_data_make(small_data *d, size_t n, uint64_t seed, int workers)
{
    make_data(&d->ds, n, seed);
    CHECK_OK(dg_partition_iid(&d->part, d->ds.n, workers, 5));
}

static inline void small_data_free(small_data *d)
{
    dg_partition_free(&d->part);
    dg_dataset_free(&d->ds);
}

/* n workers on the small MLP GAN of these tests (8x8 grey images, z of 16,
   batches of 8, a power of two: see standalone_equivalence), for an MD-GAN
   or an FL-GAN config */
#define SMALL_GAN(cfg, n)                                                       \
    ((cfg).n_workers = (n), (cfg).c = 1, (cfg).h = (cfg).w = 8,                 \
     (cfg).arch = DG_ARCH_MLP, (cfg).z_dim = 16, (cfg).batch = 8)

/* MD-GAN on it: no local epochs, seed 11 */
static inline dg_mdgan_config small_config(int n_workers)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    SMALL_GAN(c, n_workers);
    c.local_epochs = 0;
    c.seed = 11;
    return c;
}

/* FL-GAN on the same small MLP GAN */
static inline dg_flgan_config small_flgan_config(int n_workers, int local_iters)
{
    dg_flgan_config c = dg_flgan_config_init();
    SMALL_GAN(c, n_workers);
    c.local_iters = local_iters;
    return c;
}
#endif
