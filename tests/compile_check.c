/* Compiled by tests/compile_check.sh as C with gcc and clang, as C++, and
   with DISTGAN_STATIC; a second file (-DSECOND_UNIT) uses the header
   without the implementation, so the declarations link against it. */
#ifndef SECOND_UNIT
#define DISTGAN_IMPLEMENTATION
#ifdef WITH_ADACOMP
#define ADACOMP_IMPLEMENTATION
#endif
#endif
#ifdef WITH_ADACOMP
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include "../adacomp.h"
#endif
#include "../distgan.h"

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
    return ok ? 0 : 1;
}
#endif
