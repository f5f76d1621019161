/* tests/fuzz_codec.c: libFuzzer target for the decoder of coded GAN
 * payloads (dg_codec_decode).
 *
 * Input: byte 0 the codec the receiver expects (1..4, taken mod 5: 0 asks
 * for none, which decodes nothing), bytes 1-2 the number of values n it
 * expects (1..4096, little-endian), the rest the payload.  The decoder
 * must never crash or read past the payload, and when it accepts, every
 * value it wrote is finite and, for top-k and IBM, at most the payload's
 * entry count is non-zero; an accepted float16 payload re-encodes to
 * exactly its bytes (the format is canonical).  Anything else aborts.
 * tests/corpus/codec holds one valid payload of each codec.
 *
 *   clang -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined tests/fuzz_codec.c
 *   ./a.out corpus_dir tests/corpus/codec
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char payload[1 << 16] __attribute__((aligned(64)));
    static unsigned char again[1 << 16] __attribute__((aligned(64)));
    static float out[4096];
    static uint32_t segs[4096];
    dg_codec_kind kind;
    size_t n, len, i, nonzero = 0;
    if (size < 3 || size - 3 > sizeof payload) return 0;
    kind = (dg_codec_kind)(data[0] % 5);
    n = (size_t)(data[1] | data[2] << 8) % 4096 + 1;
    len = size - 3;
    memcpy(payload, data + 3, len);
    if (kind == DG_CODEC_NONE) return 0;
    if (dg_codec_decode(kind, payload, len, out, n) != DG_OK) return 0;
    for (i = 0; i < n; i++) {
        if (!(out[i] - out[i] == 0.0f)) abort(); /* finite */
        nonzero += out[i] != 0.0f;
    }
    if (kind == DG_CODEC_TOPK || kind == DG_CODEC_IBM) {
        uint32_t s, nnz;
        memcpy(&s, payload + 4, 4);
        memcpy(&nnz, payload + 16 + 4 * (size_t)s + (kind == DG_CODEC_IBM ? 4 * (size_t)s : 0), 4);
        if (nonzero > nnz) abort();
    }
    if (kind == DG_CODEC_F16) {
        dg_codec c;
        uint32_t s;
        size_t w;
        memset(&c, 0, sizeof c);
        c.kind = DG_CODEC_F16;
        memcpy(&s, payload + 4, 4);
        memcpy(segs, payload + 16, 4 * (size_t)s);
        if (dg_codec_encode(&c, out, n, segs, s, NULL, again, sizeof again, &w) != DG_OK ||
            w != len || memcmp(again, payload, len))
            abort();
    }
    return 0;
}
