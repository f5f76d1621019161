/* tools/golden_decode.c: prints the numbers inside a checkpoint, not its
 * bytes, so that tools/golden.sh can compare results across changes of a
 * file's container or layer records.
 *
 *   golden_decode FILE | sha256sum
 *
 * Finds every net image ("DGNT", see dg_net_save_mem) inside FILE (a net
 * file, or a role checkpoint that embeds one or more), checks its CRC, and
 * writes to stdout, per net: input c, h, w, layer count, parameter and
 * state counts, the parameters, the state, the optimiser's kind, step count
 * and state, all as little-endian binary.  Layer records and hyperparameters
 * are skipped: they describe the net, the golden values are its numbers.
 * Exit status 1 when FILE holds no valid net. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t crc32(const unsigned char *p, size_t n)
{
    uint32_t c = ~0u;
    int k;
    while (n--) {
        c ^= *p++;
        for (k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

static uint64_t rd(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    int i;
    for (i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* The layer record of each format version: bytes per layer. */
static size_t layer_bytes(uint32_t version) { return version == 1 ? 40 : version == 2 ? 52 : 0; }

/* p: payload of n bytes; writes the numbers, returns 0 when it parsed. */
static int emit(const unsigned char *p, size_t n, uint32_t version)
{
    size_t pos = 16, lb = layer_bytes(version), np, ns, no;
    uint32_t kind;
    if (!lb || n < 16) return 1;
    fwrite(p, 1, 16, stdout); /* c, h, w, layer count */
    pos += lb * rd(p + 12, 4);
    if (pos + 16 > n) return 1;
    np = (size_t)rd(p + pos, 8);
    ns = (size_t)rd(p + pos + 8, 8);
    if ((np + ns) > (n - pos - 16) / 4) return 1;
    fwrite(p + pos, 1, 16 + 4 * (np + ns), stdout);
    pos += 16 + 4 * (np + ns);
    if (pos + 4 > n) return 1;
    kind = (uint32_t)rd(p + pos, 4);
    fwrite(p + pos, 1, 4, stdout);
    pos += 4;
    if (!kind) return 0;
    if (pos + 16 + 28 + 8 > n) return 1;
    fwrite(p + pos + 8, 1, 8, stdout); /* steps t */
    pos += 16 + 28;
    no = (size_t)rd(p + pos, 8);
    if (no > (n - pos - 8) / 4) return 1;
    fwrite(p + pos, 1, 8 + 4 * no, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    FILE *f;
    unsigned char *buf;
    long len;
    size_t i, found = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: golden_decode FILE\n");
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (!f || fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        fprintf(stderr, "golden_decode: cannot read %s\n", argv[1]);
        return 2;
    }
    buf = (unsigned char *)malloc((size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) return 2;
    fclose(f);
    for (i = 0; i + 20 <= (size_t)len; i++) {
        uint64_t n;
        if (memcmp(buf + i, "DGNT", 4)) continue;
        n = rd(buf + i + 8, 8);
        if (n > (size_t)len - i - 20 || rd(buf + i + 16, 4) != crc32(buf + i + 20, (size_t)n))
            continue;
        if (emit(buf + i + 20, (size_t)n, (uint32_t)rd(buf + i + 4, 4))) {
            fprintf(stderr, "golden_decode: %s: net at byte %zu does not parse\n", argv[1], i);
            return 1;
        }
        found++;
        i += 20 + (size_t)n - 1;
    }
    free(buf);
    if (!found) fprintf(stderr, "golden_decode: %s: no net inside\n", argv[1]);
    return found ? 0 : 1;
}
