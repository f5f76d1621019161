"""PyTorch CPU reference for `bench dcgan_step`: the reference DCGAN of
bench_dcgan.c, same layers, initialisation, loss (BCE with logits,
non-saturating G loss) and optimiser (Adam 2e-4, betas 0.5/0.999).

usage: python3 dcgan_ref.py THREADS STEPS  ->  prints "ms=<best ms per step>
cpu_ms=<least CPU ms of a step> rss_mb=<peak>", after three warm-up steps
"""
import sys

import torch
import torch.nn as nn

import ref_common

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
ref_common.init(list(G.modules()) + list(D.modules()))
step = ref_common.gan_step(G, D, Z, torch.rand(B, 1, 28, 28) * 2 - 1)

best, cpu = ref_common.best_time(step, 3, steps, 0.0)
print("ms=%.2f cpu_ms=%.2f rss_mb=%.1f" % (best * 1e3, cpu * 1e3, ref_common.rss_mb()))
