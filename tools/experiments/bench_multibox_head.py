#!/usr/bin/env python
"""Time of the shared MultiBox head's training step (forward + backward) per photo, with and without the stride-8
level, on maps of a 600 x 902 photo (Lite0: stride-32 320 x 19 x 29, stride-16 112 x 38 x 57, stride-8 40 x 75 x 113).

    python tools/experiments/bench_multibox_head.py [--batch 16] [--repeats 5] [--threads 2]

What decides whether the fine level can be trained in an afternoon on 2 cores: ``fine_smooth=false`` drops the 3x3
conv on the stride-8 map (MultiBoxConfig.fine_smooth).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from detection.proposals.multibox.model import MultiBoxConfig, SharedMultiBox


def step_seconds(cfg: MultiBoxConfig, *, batch: int, repeats: int) -> float:
    torch.manual_seed(0)
    priors = torch.rand(cfg.num_priors, 2) * 0.6
    priors = torch.cat([priors, priors + 0.05 + torch.rand(cfg.num_priors, 2) * 0.35], 1).clamp(max=1)
    m = SharedMultiBox(cfg=cfg, priors=priors).train()
    opt = torch.optim.SGD(m.head.parameters(), lr=1e-3)
    last, mid = torch.randn(batch, 320, 19, 29), torch.randn(batch, 112, 38, 57)
    fine = torch.randn(batch, 40, 75, 113) if cfg.fine_level else None
    times = []
    for k in range(repeats + 1):
        t = time.perf_counter()
        boxes, logits = m(last, mid, fine)
        (boxes.square().mean() + logits.mean()).backward()
        opt.step()
        opt.zero_grad()
        if k:  # the first is a warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times) / batch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = dict(trunk="region", mid_level=True, num_priors=800, roi_size=2, hidden=256)
    variants = {"stride 32 + 16 (shipped)": MultiBoxConfig(**base),
                "+ stride 8, 3x3 smooth": MultiBoxConfig(**base, fine_level=True, fine_smooth=True),
                "+ stride 8, 1x1 only": MultiBoxConfig(**base, fine_level=True, fine_smooth=False)}
    ref = None
    print(f"{'head':<28}{'ms / photo (fwd + bwd)':>24}{'x shipped':>11}")
    for name, cfg in variants.items():
        s = step_seconds(cfg, batch=args.batch, repeats=args.repeats)
        ref = ref or s
        print(f"{name:<28}{1000 * s:>24.1f}{s / ref:>11.2f}")


if __name__ == "__main__":
    main()
