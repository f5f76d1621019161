#!/usr/bin/python3
"""Golden FID for tests/test_metrics.c (test fid_golden), computed independently
of distgan with numpy and scipy, the way pytorch-fid does it:

    FID = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))

with np.cov (unbiased, divided by N - 1) and scipy.linalg.sqrtm.  The two
feature sets are integer formulas that the C test regenerates exactly.
Run with Debian's interpreter:  /usr/bin/python3 tests/golden_fid.py
(apt-get install -y python3-numpy python3-scipy)."""
import numpy as np
import scipy.linalg

N, D = 40, 5


def set_a(i, j):
    return ((i * (j + 3) + j * j * 5 + (i * i) % 7) % 13) - 6 + 0.25 * j


def set_b(i, j):
    return ((i * 7 + j * 11 + (i * j) % 5) % 17) * 0.5 - 3 + ((i + j) % 3 == 0)


A = np.array([[set_a(i, j) for j in range(D)] for i in range(N)], dtype=np.float64)
B = np.array([[set_b(i, j) for j in range(D)] for i in range(N)], dtype=np.float64)
mu1, mu2 = A.mean(axis=0), B.mean(axis=0)
S1, S2 = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
covmean = scipy.linalg.sqrtm(S1 @ S2)
if np.iscomplexobj(covmean):
    covmean = covmean.real
fid = np.sum((mu1 - mu2) ** 2) + np.trace(S1) + np.trace(S2) - 2 * np.trace(covmean)
print("eigenvalues S1", np.linalg.eigvalsh(S1))
print("eigenvalues S2", np.linalg.eigvalsh(S2))
print("FID %.12f" % fid)
