/* tests/test_metrics.c: symmetric eigen-decomposition, running feature
 * statistics, FID (self, symmetry, closed forms, a scipy golden value),
 * classifier score and accuracy. */
#define _POSIX_C_SOURCE 200809L /* distgan.h uses POSIX; system headers come first here */
#include <stdlib.h>
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "harness.h"

#define MAXN 64

/* a random orthogonal matrix (Gram-Schmidt on Gaussian columns), row-major */
static void random_orthogonal(dg_rng *r, int n, double *Q)
{
    int i, j, k;
    for (i = 0; i < n * n; i++) Q[i] = dg_rng_normal(r);
    for (j = 0; j < n; j++) {
        double nrm = 0;
        for (k = 0; k < j; k++) {
            double dot = 0;
            for (i = 0; i < n; i++) dot += Q[i * n + j] * Q[i * n + k];
            for (i = 0; i < n; i++) Q[i * n + j] -= dot * Q[i * n + k];
        }
        for (i = 0; i < n; i++) nrm += Q[i * n + j] * Q[i * n + j];
        nrm = sqrt(nrm);
        for (i = 0; i < n; i++) Q[i * n + j] /= nrm;
    }
}

/* A = Q diag(w) Q^T */
static void compose(int n, const double *Q, const double *w, double *A)
{
    int i, j, k;
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double s = 0;
            for (k = 0; k < n; k++) s += Q[i * n + k] * w[k] * Q[j * n + k];
            A[i * n + j] = s;
        }
}

/* max |A - V diag(w) V^T| and max |V^T V - I| */
static void eig_errors(int n, const double *A, const double *w, const double *V, double *rec, double *orth)
{
    static double R[MAXN * MAXN];
    int i, j, k;
    *rec = *orth = 0;
    compose(n, V, w, R);
    for (i = 0; i < n * n; i++) *rec = fmax(*rec, fabs(R[i] - A[i]));
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double s = 0;
            for (k = 0; k < n; k++) s += V[k * n + i] * V[k * n + j];
            *orth = fmax(*orth, fabs(s - (i == j)));
        }
}

TEST(eig_random)
{
    static double A[MAXN * MAXN], V[MAXN * MAXN], w[MAXN], w2[MAXN];
    int sizes[] = {1, 2, 3, 4, 7, 16, 33, 64}, s, i, j;
    dg_rng r = dg_rng_make(1, 2, 3);
    for (s = 0; s < 8; s++) {
        int n = sizes[s], asc = 1;
        double rec, orth, scale = 0;
        for (i = 0; i < n; i++)
            for (j = 0; j <= i; j++) A[i * n + j] = A[j * n + i] = dg_rng_normal(&r) * 3;
        for (i = 0; i < n * n; i++) scale = fmax(scale, fabs(A[i]));
        CHECK_OK(dg_sym_eig(n, A, w, V));
        eig_errors(n, A, w, V, &rec, &orth);
        for (i = 1; i < n; i++) asc &= w[i - 1] <= w[i];
        CHECK(asc);
        CHECK(rec < 1e-4 * scale && rec < 1e-9 * scale * n);
        CHECK(orth < 1e-10);
        /* eigenvalues alone agree */
        CHECK_OK(dg_sym_eig(n, A, w2, NULL));
        for (i = 0; i < n; i++) CHECK_NEAR(w2[i], w[i], 1e-10 * scale * n);
        /* only the lower triangle is read */
        for (i = 0; i < n; i++)
            for (j = i + 1; j < n; j++) A[i * n + j] = 1e6;
        CHECK_OK(dg_sym_eig(n, A, w2, NULL));
        for (i = 0; i < n; i++) CHECK_NEAR(w2[i], w[i], 1e-10 * scale * n);
    }
    /* size 1 */
    A[0] = -2.5;
    CHECK_OK(dg_sym_eig(1, A, w, V));
    CHECK(w[0] == -2.5 && fabs(V[0]) == 1.0);
    CHECK(dg_sym_eig(0, A, w, V) == DG_ERR_ARG);
    A[2] = NAN; /* row 1, column 0: in the lower triangle */
    CHECK(dg_sym_eig(2, A, w, V) == DG_ERR_ARG);
}

TEST(eig_structured)
{
    static double A[MAXN * MAXN], V[MAXN * MAXN], Q[MAXN * MAXN], w[MAXN];
    double want[6] = {1, 1, 1, 2, 2, 5}, rec, orth;
    int i, n = 6;
    dg_rng r = dg_rng_make(4, 5, 6);
    /* repeated eigenvalues in a random basis */
    random_orthogonal(&r, n, Q);
    compose(n, Q, want, A);
    CHECK_OK(dg_sym_eig(n, A, w, V));
    for (i = 0; i < n; i++) CHECK_NEAR(w[i], want[i], 1e-12);
    eig_errors(n, A, w, V, &rec, &orth);
    CHECK(rec < 1e-12 && orth < 1e-12);
    /* already diagonal, identity, zero, rank one */
    memset(A, 0, sizeof A);
    for (i = 0; i < 5; i++) A[i * 5 + i] = 5 - i;
    CHECK_OK(dg_sym_eig(5, A, w, V));
    for (i = 0; i < 5; i++) CHECK_NEAR(w[i], i + 1, 1e-14);
    eig_errors(5, A, w, V, &rec, &orth);
    CHECK(rec < 1e-14 && orth < 1e-14);
    memset(A, 0, sizeof A);
    CHECK_OK(dg_sym_eig(4, A, w, V));
    for (i = 0; i < 4; i++) CHECK(w[i] == 0);
    eig_errors(4, A, w, V, &rec, &orth);
    CHECK(orth < 1e-14);
    for (i = 0; i < 16; i++) A[i] = 1; /* ones(4): eigenvalues 0, 0, 0, 4 */
    CHECK_OK(dg_sym_eig(4, A, w, V));
    CHECK_NEAR(w[3], 4, 1e-12);
    CHECK_NEAR(w[0], 0, 1e-12);
    eig_errors(4, A, w, V, &rec, &orth);
    CHECK(rec < 1e-12 && orth < 1e-12);
    /* badly scaled: eigenvalues 1e-8 .. 1e8 */
    {
        double ws[8] = {1e-8, 1e-4, 1e-2, 1, 3, 1e2, 1e5, 1e8};
        random_orthogonal(&r, 8, Q);
        compose(8, Q, ws, A);
        CHECK_OK(dg_sym_eig(8, A, w, V));
        for (i = 0; i < 8; i++) CHECK_NEAR(w[i], ws[i], 1e-6);
    }
}

TEST(feature_stats)
{
    enum { N = 257, D = 6 };
    static float x[N * D];
    double mean[D], cov[D * D], m2[D], c2[D * D], ref_m[D] = {0}, ref_c[D * D] = {0};
    dg_feature_stats s, a, b;
    dg_rng r = dg_rng_make(7, 0, 0);
    int i, j, k;
    size_t at = 0, chunk = 1;
    for (i = 0; i < N * D; i++) x[i] = 1000.0f + 3.0f * dg_rng_normal(&r) + (float)(i % D);
    /* two-pass reference */
    for (i = 0; i < N; i++)
        for (j = 0; j < D; j++) ref_m[j] += x[i * D + j] / (double)N;
    for (i = 0; i < N; i++)
        for (j = 0; j < D; j++)
            for (k = 0; k < D; k++) ref_c[j * D + k] += (x[i * D + j] - ref_m[j]) * (x[i * D + k] - ref_m[k]) / (N - 1.0);
    /* batches of 1, 2, 3, ... rows */
    CHECK_OK(dg_feature_stats_init(&s, D));
    CHECK(dg_feature_stats_get(&s, mean, cov) == DG_ERR_STATE);
    while (at < N) {
        size_t n = chunk < N - at ? chunk : N - at;
        CHECK_OK(dg_feature_stats_add(&s, x + at * D, n));
        at += n;
        chunk++;
    }
    CHECK(s.count == N);
    CHECK_OK(dg_feature_stats_get(&s, mean, cov));
    for (j = 0; j < D; j++) CHECK_NEAR(mean[j], ref_m[j], 1e-9);
    for (j = 0; j < D * D; j++) CHECK_NEAR(cov[j], ref_c[j], 1e-9);
    /* merging two halves gives the same */
    CHECK_OK(dg_feature_stats_init(&a, D));
    CHECK_OK(dg_feature_stats_init(&b, D));
    CHECK_OK(dg_feature_stats_add(&a, x, 100));
    CHECK_OK(dg_feature_stats_add(&b, x + 100 * D, N - 100));
    CHECK_OK(dg_feature_stats_merge(&a, &b));
    CHECK_OK(dg_feature_stats_get(&a, m2, c2));
    for (j = 0; j < D; j++) CHECK_NEAR(m2[j], ref_m[j], 1e-9);
    for (j = 0; j < D * D; j++) CHECK_NEAR(c2[j], ref_c[j], 1e-9);
    dg_feature_stats_free(&a);
    dg_feature_stats_free(&b);
    CHECK_OK(dg_feature_stats_init(&a, D + 1));
    CHECK(dg_feature_stats_merge(&a, &s) == DG_ERR_SHAPE);
    dg_feature_stats_free(&a);
    dg_feature_stats_free(&s);
    CHECK(dg_feature_stats_init(&s, 0) == DG_ERR_ARG);
}

static void fill_features(dg_rng *r, float *x, int n, int d, float shift)
{
    int i, j;
    for (i = 0; i < n; i++) {
        float z = dg_rng_normal(r);
        for (j = 0; j < d; j++) x[i * d + j] = shift + dg_rng_normal(r) * (1.0f + 0.3f * j) + z * (j % 3);
    }
}

TEST(fid_self_and_symmetry)
{
    enum { N = 500, D = 10 };
    static float x[N * D], y[N * D];
    dg_feature_stats a, b;
    dg_rng r = dg_rng_make(9, 0, 0);
    double f_aa, f_ab, f_ba;
    fill_features(&r, x, N, D, 0.0f);
    fill_features(&r, y, N, D, 0.5f);
    CHECK_OK(dg_feature_stats_init(&a, D));
    CHECK_OK(dg_feature_stats_init(&b, D));
    CHECK_OK(dg_feature_stats_add(&a, x, N));
    CHECK_OK(dg_feature_stats_add(&b, y, N));
    CHECK_OK(dg_fid_from_stats(&a, &a, &f_aa));
    CHECK_OK(dg_fid_from_stats(&a, &b, &f_ab));
    CHECK_OK(dg_fid_from_stats(&b, &a, &f_ba));
    printf("  fid(a,a) = %.3g, fid(a,b) = %.6f, fid(b,a) = %.6f\n", f_aa, f_ab, f_ba);
    CHECK_NEAR(f_aa, 0, 1e-3);
    CHECK(f_aa >= 0);
    CHECK(f_ab > 1.0);
    CHECK_NEAR(f_ab, f_ba, 1e-9 * f_ab);
    dg_feature_stats_free(&a);
    dg_feature_stats_free(&b);
}

TEST(fid_closed_form)
{
    static double Q[16], S1[16], S2[16];
    double mu1[4] = {0, 1, 2, 3}, mu2[4] = {1, 1, 0, 3}, a[4] = {1, 4, 0.25, 9}, b[4] = {4, 1, 1, 9};
    double want = 1 + 4, fid;
    int i;
    dg_rng r = dg_rng_make(10, 0, 0);
    for (i = 0; i < 4; i++) want += (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
    /* diagonal covariances */
    memset(S1, 0, sizeof S1);
    memset(S2, 0, sizeof S2);
    for (i = 0; i < 4; i++) S1[i * 5] = a[i], S2[i * 5] = b[i];
    CHECK_OK(dg_fid(4, mu1, S1, mu2, S2, &fid));
    CHECK_NEAR(fid, want, 1e-10);
    /* commuting, non-diagonal: the same eigenbasis Q */
    random_orthogonal(&r, 4, Q);
    compose(4, Q, a, S1);
    compose(4, Q, b, S2);
    CHECK_OK(dg_fid(4, mu1, S1, mu2, S2, &fid));
    CHECK_NEAR(fid, want, 1e-9);
    /* 1-d: (mu1 - mu2)^2 + (s1 - s2)^2 */
    S1[0] = 4, S2[0] = 9;
    CHECK_OK(dg_fid(1, mu1, S1, mu2, S2, &fid));
    CHECK_NEAR(fid, 1 + 1, 1e-12);
    /* a singular covariance is fine; a negative-definite one is refused */
    memset(S1, 0, sizeof S1);
    S1[0] = 1;
    compose(4, Q, b, S2);
    CHECK_OK(dg_fid(4, mu1, S1, mu1, S1, &fid));
    CHECK_NEAR(fid, 0, 1e-12);
    S1[5] = -1;
    CHECK(dg_fid(4, mu1, S1, mu2, S2, &fid) == DG_ERR_ARG && strstr(dg_last_error(), "cov1"));
}

/* the data of tests/golden_fid.py, regenerated exactly */
static double set_a(int i, int j) { return ((i * (j + 3) + j * j * 5 + (i * i) % 7) % 13) - 6 + 0.25 * j; }
static double set_b(int i, int j) { return ((i * 7 + j * 11 + (i * j) % 5) % 17) * 0.5 - 3 + ((i + j) % 3 == 0); }

TEST(fid_golden)
{
    /* Golden value from `/usr/bin/python3 tests/golden_fid.py` (numpy 1.24.2,
       scipy 1.10.1): np.cov + scipy.linalg.sqrtm(S1 @ S2), pytorch-fid's
       formula, on N = 40 rows of D = 5 features given by set_a / set_b.
       Printed: FID 23.952661125301 */
    enum { N = 40, D = 5 };
    float xa[N * D], xb[N * D];
    dg_feature_stats a, b;
    double fid;
    int i, j;
    for (i = 0; i < N; i++)
        for (j = 0; j < D; j++) xa[i * D + j] = (float)set_a(i, j), xb[i * D + j] = (float)set_b(i, j);
    CHECK_OK(dg_feature_stats_init(&a, D));
    CHECK_OK(dg_feature_stats_init(&b, D));
    CHECK_OK(dg_feature_stats_add(&a, xa, 13)); /* in uneven batches */
    CHECK_OK(dg_feature_stats_add(&a, xa + 13 * D, N - 13));
    CHECK_OK(dg_feature_stats_add(&b, xb, N));
    CHECK_OK(dg_fid_from_stats(&a, &b, &fid));
    CHECK_NEAR(fid, 23.952661125301, 1e-8);
    dg_feature_stats_free(&a);
    dg_feature_stats_free(&b);
}

TEST(classifier_score)
{
    enum { N = 1000, C = 10 };
    static float p[N * C];
    double mean, std;
    float two[4] = {0.9f, 0.1f, 0.1f, 0.9f};
    int i;
    /* perfect one-hot over balanced classes: score = C */
    for (i = 0; i < N * C; i++) p[i] = (i / C) % C == i % C ? 1.0f : 0.0f;
    CHECK_OK(dg_classifier_score(p, N, C, 0, 1, &mean, &std));
    CHECK_NEAR(mean, C, 1e-9);
    CHECK_OK(dg_classifier_score(p, N, C, 0, 10, &mean, &std));
    CHECK_NEAR(mean, C, 1e-9);
    CHECK_NEAR(std, 0, 1e-9);
    /* as confident logits */
    for (i = 0; i < N * C; i++) p[i] = (i / C) % C == i % C ? 60.0f : -40.0f;
    CHECK_OK(dg_classifier_score(p, N, C, 1, 1, &mean, NULL));
    CHECK_NEAR(mean, C, 1e-6);
    /* one class only, or uniform: score 1 */
    for (i = 0; i < N * C; i++) p[i] = i % C == 3 ? 1.0f : 0.0f;
    CHECK_OK(dg_classifier_score(p, N, C, 0, 1, &mean, NULL));
    CHECK_NEAR(mean, 1, 1e-12);
    for (i = 0; i < N * C; i++) p[i] = 0.1f;
    CHECK_OK(dg_classifier_score(p, N, C, 0, 5, &mean, &std));
    CHECK_NEAR(mean, 1, 1e-6);
    for (i = 0; i < N * C; i++) p[i] = 2.5f; /* equal logits */
    CHECK_OK(dg_classifier_score(p, N, C, 1, 1, &mean, NULL));
    CHECK_NEAR(mean, 1, 1e-12);
    /* by hand: p(y) = (.5, .5), KL = .9 ln 1.8 + .1 ln .2 for both rows */
    CHECK_OK(dg_classifier_score(two, 2, 2, 0, 1, &mean, NULL));
    CHECK_NEAR(mean, exp(0.9 * log(1.8) + 0.1 * log(0.2)), 1e-6);
    /* splits differ: first half perfect over 2 classes, second half constant */
    {
        float q[8] = {1, 0, 0, 1, 1, 0, 1, 0};
        CHECK_OK(dg_classifier_score(q, 4, 2, 0, 2, &mean, &std));
        CHECK_NEAR(mean, 1.5, 1e-9);
        CHECK_NEAR(std, 0.5, 1e-9);
    }
    /* refusals */
    two[0] = 0.5f;
    CHECK(dg_classifier_score(two, 2, 2, 0, 1, &mean, NULL) == DG_ERR_ARG);
    two[0] = -0.1f;
    CHECK(dg_classifier_score(two, 2, 2, 0, 1, &mean, NULL) == DG_ERR_ARG);
    CHECK(dg_classifier_score(two, 2, 2, 0, 3, &mean, NULL) == DG_ERR_ARG);
}

TEST(accuracy)
{
    float lg[12] = {0.1f, 0.9f, 0.0f, /* 1 */ 2, 2, 1, /* tie: 0 */ -1, -2, -0.5f, /* 2 */ 0, 0, 3 /* 2 */};
    int32_t lab[4] = {1, 0, 0, 2};
    double acc;
    CHECK_OK(dg_accuracy(lg, lab, 4, 3, &acc));
    CHECK_NEAR(acc, 0.75, 1e-12);
    lab[3] = 3;
    CHECK(dg_accuracy(lg, lab, 4, 3, &acc) == DG_ERR_ARG && strstr(dg_last_error(), "label[3] = 3"));
}

int main(void)
{
    RUN(eig_random);
    RUN(eig_structured);
    RUN(feature_stats);
    RUN(fid_self_and_symmetry);
    RUN(fid_closed_form);
    RUN(fid_golden);
    RUN(classifier_score);
    RUN(accuracy);
    return th_done();
}
