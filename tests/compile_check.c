/* Compiled by tests/compile_check.sh as C with gcc and clang, as C++, and
   with DISTGAN_STATIC; a second file (-DSECOND_UNIT) uses the header
   without the implementation, so the declarations link against it.
   Include orders: adacomp.h before distgan.h (default with WITH_ADACOMP)
   or after (DISTGAN_FIRST), and with a program's own system headers first
   (SYSTEM_FIRST). */
#ifndef SECOND_UNIT
#define DISTGAN_IMPLEMENTATION
#ifdef WITH_ADACOMP
#define ADACOMP_IMPLEMENTATION
#endif
#endif
#ifdef SYSTEM_FIRST
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#endif
#if defined(WITH_ADACOMP) && !defined(DISTGAN_FIRST)
#include "../adacomp.h"
#endif
#include "../distgan.h"
#if defined(WITH_ADACOMP) && defined(DISTGAN_FIRST)
#include "../adacomp.h"
#endif
#include <string.h>

#ifdef SECOND_UNIT
int second_unit(void);
int second_unit(void) { return dg_result_str(DG_ERR_IO)[0] == 'I'; }
#else
#ifdef LINK_SECOND
int second_unit(void);
#endif
int main(void)
{
    dg_pool *pool;
    dg_net *net;
    int ok;
    if (dg_pool_create(&pool, 1) != DG_OK) return 1;
    ok = dg_net_create(&net, 1, 4, 4) == DG_OK && dg_net_linear(net, 2) == DG_OK &&
         dg_net_plan(net, pool, 2) == DG_OK;
    dg_net_free(net);
    dg_pool_destroy(pool);
#ifdef LINK_SECOND
    ok = ok && second_unit();
#endif
#ifdef DG_NO_SIMD
    if (dg_pool_create(&pool, 1) != DG_OK) return 1;
    ok = ok && dg_pool_set_isa(pool, DG_ISA_AVX2) == DG_ERR_UNSUPPORTED &&
         strstr(dg_last_error(), "not in this build") != NULL;
    dg_pool_destroy(pool);
#endif
#ifdef DG_NO_STB
    { /* the stb-dependent calls are there, and say this build lacks them */
        float px[16] = {0};
        dg_dataset ds;
        /* an empty gzip member: header, an empty stored block, CRC and ISIZE 0 */
        static const unsigned char gz[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0,
                                           0, 0, 0, 0, 0, 0, 0, 0};
        ok = ok && dg_write_png_grid("never.png", px, 1, 1, 4, 4, 1, 0) == DG_ERR_UNSUPPORTED &&
             dg_dataset_load_image_dir(&ds, ".", 0) == DG_ERR_UNSUPPORTED &&
             dg_dataset_load_idx_mem(&ds, gz, sizeof gz, NULL, 0) == DG_ERR_UNSUPPORTED;
    }
#endif
#ifdef DG_NO_TCP
    { /* no sockets: the roles still run, here one in-process MD-GAN iteration */
        dg_dataset ds;
        dg_partition part;
        dg_mdgan_run *run = NULL;
        dg_mdgan_config c = dg_mdgan_config_init();
        c.n_workers = 2;
        c.c = 1;
        c.h = c.w = 4;
        c.arch = DG_ARCH_MLP;
        c.z_dim = 4;
        c.batch = 2;
        if (dg_pool_create(&pool, 1) != DG_OK) return 1;
        ok = ok && dg_dataset_create(&ds, 8, 1, 4, 4, 0) == DG_OK &&
             dg_partition_iid(&part, ds.n, 2, 1) == DG_OK &&
             dg_mdgan_run_create(&run, &c, pool, &ds, &part, NULL, 0, NULL, 0) == DG_OK &&
             dg_mdgan_run_iteration(run) == DG_OK &&
             dg_mdgan_server_stats(dg_mdgan_run_server(run))->iteration == 1;
        dg_mdgan_run_free(run);
        dg_partition_free(&part);
        dg_dataset_free(&ds);
        dg_pool_destroy(pool);
    }
#endif
    return ok ? 0 : 1;
}
#endif
