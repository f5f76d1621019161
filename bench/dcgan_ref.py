"""PyTorch CPU reference for `bench dcgan_step`: the reference DCGAN of
bench_dcgan.c, same layers, initialisation, loss (BCE with logits,
non-saturating G loss) and optimiser (Adam 2e-4, betas 0.5/0.999).

usage: python3 dcgan_ref.py THREADS STEPS  ->  prints "ms=<best ms per step> rss_mb=<peak>"
"""
import resource
import sys
import time

import torch
import torch.nn as nn

threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
B, Z = 64, 100

G = nn.Sequential(
    nn.Linear(Z, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
    nn.Unflatten(1, (128, 7, 7)),
    nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
    nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())
D = nn.Sequential(
    nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
    nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
    nn.Flatten(), nn.Linear(128 * 7 * 7, 1))
for m in list(G.modules()) + list(D.modules()):
    if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
bce = nn.BCEWithLogitsLoss()
real = torch.rand(B, 1, 28, 28) * 2 - 1
ones, zeros = torch.ones(B, 1), torch.zeros(B, 1)


def step():
    z = torch.randn(B, Z)
    fake = G(z)
    optD.zero_grad()
    bce(D(real), ones).backward()
    bce(D(fake.detach()), zeros).backward()
    optD.step()
    optG.zero_grad()
    bce(D(fake), ones).backward()
    optG.step()


for _ in range(3):
    step()
best = float("inf")
cpu0 = time.process_time()
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - t0)
cpu = (time.process_time() - cpu0) / steps
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print("ms=%.2f cpu_ms=%.2f rss_mb=%.1f" % (best * 1e3, cpu * 1e3, rss))
