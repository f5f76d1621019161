"""What the PyTorch references (dcgan_ref.py, steps_ref.py) share: the
initialisation of distgan.h's nets, the GAN training step of its trainer,
and the timing of bench_time() in bench_common.h.  Imported from the
script's own folder (python puts it first on sys.path)."""
import resource
import time

import torch
import torch.nn as nn


def init(modules):
    """dg_net_init's N(0, 0.02) weights and zero biases; batchnorm scales
    N(1, 0.02)."""
    for m in modules:
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def gan_step(G, D, z_dim, real):
    """One step of the standalone trainer with Adam 2e-4 / 0.5 / 0.999 on
    both nets: G forward on fresh noise, a D step on the real and the fake
    batch (BCE with logits), then the non-saturating G loss through D and a
    G step.  Returns the step as a function of no arguments."""
    b = real.shape[0]
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(b, 1), torch.zeros(b, 1)

    def step():
        fake = G(torch.randn(b, z_dim))
        optD.zero_grad()
        bce(D(real), ones).backward()
        bce(D(fake.detach()), zeros).backward()
        optD.step()
        optG.zero_grad()
        bce(D(fake), ones).backward()
        optG.step()
    return step


def best_time(step, warmup, rounds, min_s):
    """bench_time(): warmup steps, then `rounds` rounds that each run steps
    for at least min_s seconds (min_s = 0: one step a round).  Returns the
    best round's wall seconds per step and the least CPU seconds per step
    of a round."""
    for _ in range(warmup):
        step()
    best = cpu = float("inf")
    for _ in range(rounds):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            step()
            n += 1
            t = time.perf_counter() - t0
            if t >= min_s:
                break
        best = min(best, t / n)
        cpu = min(cpu, (time.process_time() - c0) / n)
    return best, cpu


def rss_mb():
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
