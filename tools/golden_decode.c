/* tools/golden_decode.c: prints the numbers inside a checkpoint, not its
 * bytes, so that tools/golden.sh can compare results across changes of a
 * file's container or layer records.
 *
 *   golden_decode FILE | sha256sum
 *
 * Walks the checkpoint container ("DGCK", see dg_io in distgan.h) of FILE
 * (a net, trainer or role checkpoint), checks each section's CRC, and
 * writes to stdout, per net section (type 2), in file order: input c, h,
 * w, layer count, parameter and state counts, the parameters, the state,
 * the optimiser's kind, step count and state, all as little-endian binary.  Layer records and hyperparameters
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

/* p: a net section of n bytes; writes the numbers, returns 0 when it parsed. */
static int emit(const unsigned char *p, size_t n)
{
    size_t pos = 16, lb = 52, np, ns, no; /* 52: bytes per layer record */
    uint32_t kind;
    if (n < 16) return 1;
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
    uint32_t count;
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
    if (len < 16 || memcmp(buf, "DGCK", 4) || rd(buf + 4, 4) != 1) {
        fprintf(stderr, "golden_decode: %s: not a version 1 DGCK checkpoint\n", argv[1]);
        return 1;
    }
    count = (uint32_t)rd(buf + 12, 4);
    for (i = 16; count--;) {
        uint64_t n;
        uint32_t type;
        if ((size_t)len - i < 16) return 1;
        type = (uint32_t)rd(buf + i, 4);
        n = rd(buf + i + 4, 8);
        if (n > (size_t)len - i - 16 || rd(buf + i + 12, 4) != crc32(buf + i + 16, (size_t)n)) {
            fprintf(stderr, "golden_decode: %s: section at byte %zu is damaged\n", argv[1], i);
            return 1;
        }
        if (type == 2 && emit(buf + i + 16, (size_t)n)) {
            fprintf(stderr, "golden_decode: %s: net at byte %zu does not parse\n", argv[1], i);
            return 1;
        }
        found += type == 2;
        i += 16 + (size_t)n;
    }
    free(buf);
    if (!found) fprintf(stderr, "golden_decode: %s: no net inside\n", argv[1]);
    return found ? 0 : 1;
}
