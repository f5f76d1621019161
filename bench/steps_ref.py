"""PyTorch CPU reference for `bench gan_step` and `bench sgd_step`
(bench/bench_steps.c): the same networks, layer by layer, the same
optimiser, batch and thread count, timed the same way.

usage: python3 steps_ref.py gan_mlp B THREADS
       python3 steps_ref.py sgd_cnn B THREADS
prints "params=<parameters> ms=<best mean ms per step> cpu_ms=<CPU ms per
step, in the round that used the least> rss_mb=<peak>".  bench_steps.c refuses the figure when params differs
from its own net's count.

gan_mlp: the MD-GAN paper's MLP GAN (distgan.h dg_build_generator /
  dg_build_discriminator with DG_ARCH_MLP on 1 x 28 x 28), one iteration of
  the standalone trainer (dg_gan_trainer_step, L = 1): G forward on fresh
  noise, a D step on a real and the fake batch (two forwards, BCE with
  logits, Adam), then the non-saturating G loss through D (D forward and
  backward to the images) and G backward, Adam on G.  Adam 2e-4 / 0.5 /
  0.999, eps 1e-8.
sgd_cnn: the AdaComp paper's MNIST CNN (dg_asgd_net_create with
  DG_ASGD_ARCH_CNN, 421,642 parameters): forward, softmax cross-entropy,
  backward, one plain SGD step (lr 0.1, no momentum).

Timing, as bench_time() in bench_common.h with bench_steps.c's settings:
ten warm-up steps, then 15 rounds that each run steps for at least 50 ms;
the best round's mean (short rounds find the host's quiet moments).
"""
import sys

import torch
import torch.nn as nn

import ref_common

mode, B, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)


if mode == "gan_mlp":
    Z, D_IN = 100, 28 * 28
    G = nn.Sequential(
        nn.Linear(Z, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, D_IN), nn.Tanh())
    D = nn.Sequential(
        nn.Linear(D_IN, 512), nn.LeakyReLU(0.2),
        nn.Linear(512, 512), nn.LeakyReLU(0.2),
        nn.Linear(512, 1))
    ref_common.init(list(G.modules()) + list(D.modules()))
    step = ref_common.gan_step(G, D, Z, torch.rand(B, D_IN) * 2 - 1)
    params = sum(p.numel() for p in G.parameters()) + sum(p.numel() for p in D.parameters())
elif mode == "sgd_cnn":
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ce = nn.CrossEntropyLoss()
    x = torch.rand(B, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (B,))
    params = sum(p.numel() for p in net.parameters())

    def step():
        opt.zero_grad()
        ce(net(x), y).backward()
        opt.step()
else:
    sys.exit("unknown mode " + mode)

best, cpu = ref_common.best_time(step, 10, 15, 0.05)
print("params=%d ms=%.4f cpu_ms=%.4f rss_mb=%.1f" % (params, best * 1e3, cpu * 1e3, ref_common.rss_mb()))
