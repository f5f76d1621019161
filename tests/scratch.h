/* tests/scratch.h: a scratch folder for a test program's files, made under
 * $TMPDIR (else /tmp) and removed at the end:
 *
 *   int main(void) { if (!scratch_create("data")) return 1; ...
 *                    RUN(x); ... scratch_remove(); return th_done(); }
 *   tpath("a.png")   the file a.png in it (eight buffers in turn, so that a
 *                    few paths can be live at once)
 *
 * mkdtemp is POSIX: include this after distgan.h or a _POSIX_C_SOURCE. */
#ifndef DG_TEST_SCRATCH_H
#define DG_TEST_SCRATCH_H
#include <stdio.h>
#include <stdlib.h>

static char tmpdir[256];

static const char *tpath(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

/* $TMPDIR/dg_test_<name>_XXXXXX; 0 (said on stdout) when it cannot be made */
static int scratch_create(const char *name)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/dg_test_%s_XXXXXX", base ? base : "/tmp", name);
    if (mkdtemp(tmpdir)) return 1;
    printf("cannot create a temporary folder\n");
    return 0;
}

static void rm_rf(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) printf("  (cleanup of %s failed)\n", path);
}

static void scratch_remove(void) { rm_rf(tmpdir); }
#endif
