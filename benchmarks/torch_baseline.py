"""Peer baseline: the paper's template algorithm written in PyTorch (as in its official code).

Per batch of B examples: a forward pass for the masks, then the frozen-mask
network applied to a template of D+1 inputs {0, e_1, ..., e_D} per example;
squared differences to row 0 summed over rows give ||grad z||^2 of every
neuron. Needs the ``torch`` extra (CPU wheel is enough).
"""

from __future__ import annotations

import time

import numpy as np


def run(widths=(300, 300, 300, 300), d: int = 784, batches=(64, 256), repeats: int = 5, threads: int | None = None) -> list[dict]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    sizes = [d, *widths]
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    head = torch.nn.Linear(widths[-1], 10)
    params = [p for l in layers + [head] for p in l.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.5, nesterov=True)

    def margins_and_roll(x, C=1.0):
        # Forward pass: pre-activations and masks.
        h, zs, masks = x, [], []
        for l in layers:
            z = l(h)
            zs.append(z)
            m = (z > 0).to(z.dtype).detach()
            masks.append(m)
            h = z * m
        logits = head(h)
        # Template pass: (B, D+1, D) inputs through the frozen network.
        b = x.shape[0]
        tmpl = torch.cat([torch.zeros(1, d), torch.eye(d)]).expand(b, d + 1, d)
        t, sq = tmpl, []
        for l, m in zip(layers, masks):
            zt = l(t)
            diff = zt[:, 1:] - zt[:, :1]
            sq.append((diff * diff).sum(1))
            t = zt * m[:, None, :]
        sq = torch.cat(sq, 1)
        z = torch.cat(zs, 1)
        margin = (z.abs() / sq.sqrt().clamp_min(1e-10)).min(1).values
        roll = (sq + C * torch.relu(1 - z.abs())).mean(1)
        return logits, margin, roll

    rows = []
    for b in batches:
        x = torch.randn(b, d)
        y = torch.randint(0, 10, (b,))
        with torch.no_grad():
            margins_and_roll(x)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                margins_and_roll(x)
                ts.append(time.perf_counter() - t0)
        rows.append({"bench": "torch_margin_l2", "batch": b, "min_s": min(ts), "median_s": float(np.median(ts)), "examples_per_s": b / min(ts)})

    x = torch.randn(64, d)
    y = torch.randint(0, 10, (64,))

    def step(lam):
        opt.zero_grad()
        logits, _, roll = margins_and_roll(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + lam * roll.mean()
        loss.backward()
        opt.step()

    for name, lam in (("vanilla", 0.0), ("roll_exact_template", 2.0)):
        if lam == 0.0:

            def fn():
                opt.zero_grad()
                h = x
                for l in layers:
                    h = torch.relu(l(h))
                torch.nn.functional.cross_entropy(head(h), y).backward()
                opt.step()
        else:
            fn = lambda: step(lam)
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        rows.append({"bench": "torch_train_step", "variant": name, "batch": 64, "min_s": min(ts), "median_s": float(np.median(ts))})
    return rows
