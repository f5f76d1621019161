/* tests/fuzz_ac_decode.c: libFuzzer target for the AdaComp packet decoder.
 *
 * Arbitrary bytes are decoded against a fixed layout (sizes 1, odd, and
 * over 128 so that two-byte varints occur).  The decoder must never crash
 * and must reject what it cannot represent; when it accepts, the packet
 * format is canonical, so re-encoding must give back exactly the input and
 * ac_packet_size must predict its length; the accepted update is then
 * applied by a parameter server.  The raw bytes, accepted or not, also go
 * through ac_server_apply_packet and ac_server_consume_packet (TAU and
 * CONSTANT servers, where the consuming one checks as it applies and
 * restores on a NaN/Inf): the same result and the same w bits, w as it was
 * when refused.  Anything unexpected aborts.
 *
 *   clang -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined tests/fuzz_ac_decode.c
 *   ./a.out corpus_dir tests/corpus/ac_decode
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ADACOMP_IMPLEMENTATION
#include "../adacomp.h"

/* Keep in step with the seed generator described in docs/adacomp.md. */
static const uint32_t fz_sizes[] = {5, 1, 130, 3, 64, 200};
#define FZ_TOTAL (5 + 1 + 130 + 3 + 64 + 200)

/* Whatever index set got through the decoder is safe to apply: a fresh PS
   takes it at t_pull = 0 and again at t_pull = 0 (tau = 1), so the second
   apply counts sigma over the first.  w must stay finite. */
static void apply_twice(const ac_layout *layout, ac_update *u)
{
    static float w[FZ_TOTAL];
    uint32_t sigma[FZ_TOTAL], j;
    ac_server *s;
    memset(w, 0, sizeof w);
    if (ac_server_init(&s, layout, w, NULL) != AC_OK) abort();
    u->t_pull = 0;
    if (ac_server_apply(s, u) != AC_OK) abort();
    if (ac_server_sigma(s, u, sigma) != AC_OK) abort();
    for (j = 0; j < u->nnz; j++)
        if (sigma[j] != 1) abort();
    if (ac_server_apply(s, u) != AC_OK || ac_server_clock(s) != 2) abort();
    for (j = 0; j < FZ_TOTAL; j++) /* nothing the decoder accepts poisons w */
        if (w[j] - w[j] != 0.0f) abort();
    ac_server_free(s);
}

/* Both packet paths over the same bytes, from the same nonzero w. */
static void both_paths(const ac_layout *layout, const uint8_t *data, size_t size)
{
    static float w[2][FZ_TOTAL], w0[FZ_TOTAL];
    unsigned char *copy = (unsigned char *)malloc(size ? size : 1);
    ac_server_config sc = ac_server_config_init();
    ac_server *s[2];
    ac_result r[2];
    uint32_t j;
    int k, st;
    if (!copy) abort();
    for (j = 0; j < FZ_TOTAL; j++) w0[j] = 0.25f * (float)j - 10.0f;
    for (st = AC_STALENESS_TAU; st <= AC_STALENESS_CONSTANT; st++) {
        sc.staleness = (ac_staleness)st;
        for (k = 0; k < 2; k++) {
            memcpy(w[k], w0, sizeof w0);
            if (ac_server_init(&s[k], layout, w[k], &sc) != AC_OK) abort();
        }
        if (size) memcpy(copy, data, size);
        r[0] = ac_server_apply_packet(s[0], data, size);
        r[1] = ac_server_consume_packet(s[1], size ? copy : NULL, size);
        if (r[0] != r[1] || memcmp(w[0], w[1], sizeof w0) != 0) abort();
        if (r[0] != AC_OK && memcmp(w[0], w0, sizeof w0) != 0) abort();
        for (k = 0; k < 2; k++) ac_server_free(s[k]);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint32_t mem[(6 * 2 + FZ_TOTAL * 2)];
    static unsigned char out[AC_PACKET_HEADER_SIZE + 6 * 9 + FZ_TOTAL * 9 + FZ_TOTAL / 8 + 1];
    ac_layout layout = {6, fz_sizes};
    ac_update u;
    size_t written = 0;
    ac_result r;

    if (ac_update_init(&u, &layout, FZ_TOTAL, mem, sizeof mem) != AC_OK) abort();
    both_paths(&layout, data, size);
    r = ac_decode(&u, data, size);
    if (r != AC_OK) {
        /* a failure must leave nothing half-decoded and explain itself */
        if (r > 0 || u.nnz != 0 || ac_last_error()[0] == '\0') abort();
        return 0;
    }
    if (ac_packet_size(&u) != size) abort();
    if (ac_encode(&u, out, sizeof out, &written) != AC_OK) abort();
    if (written != size || memcmp(out, data, size) != 0) abort();
    apply_twice(&layout, &u);
    return 0;
}
