#!/usr/bin/env python
"""Benchmarks of the region-classification stage (figures for the README / closing notes; no assertions).

1. Crop -> classify throughput against the bare backbone: the full warp path (batched context-padded warps from a
   real photo, backbone, pooled head) against the backbone alone on ready-made tensors of the same batch size.
2. detect.py latency on a 500 px photo after model load, per stage (selective search, MultiBox, trunk + RoI pooling,
   heads, NMS), for the embedded default (or --model).

    python tools/experiments/bench_classifier.py [--backbone lite0] [--batch 32] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch


def bench_crop_path(backbone_name: str, batch: int, repeats: int, crop: int) -> dict:
    from detection.crops import warp_crops
    from detection.models.backbones import build_backbone
    from detection.models.region import RegionConfig, RegionEnsemble

    bb = build_backbone(backbone_name).eval()
    model = RegionEnsemble(cfg=RegionConfig(backbone=backbone_name, mode="warp", members=1, crop_size=crop),
                           backbones=[bb]).eval()
    img = skimage.data.coffee()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, 2, generator=g) * torch.tensor([500.0, 350.0])
    boxes = torch.cat([xy, xy + 20 + torch.rand(batch, 2, generator=g) * 200], 1)
    ready = torch.randn(batch, 3, crop, crop)

    def bare():
        with torch.inference_mode():
            bb(ready)

    def full():
        with torch.inference_mode():
            x, _ = model.prepare_image(img)
            model.heads[0](bb(warp_crops(x, boxes, size=crop, padding=16)))

    def warp_only():
        with torch.inference_mode():
            x, _ = model.prepare_image(img)
            warp_crops(x, boxes, size=crop, padding=16)

    fns = {"bare_backbone": bare, "crop_and_classify": full, "warp_only": warp_only}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved, so that load from other processes hits every variant alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    out = {name: {"median_s": statistics.median(ts), "crops_per_s": batch / statistics.median(ts)}
           for name, ts in times.items()}
    out["ratio_full_vs_bare"] = out["crop_and_classify"]["crops_per_s"] / out["bare_backbone"]["crops_per_s"]
    return out


def bench_detect(model_path: str | None, repeats: int) -> dict:
    from PIL import Image

    from detection.detector import Detector
    from detection.models.region import load_ensemble
    from detection.proposals.pipeline import ProposalStage, load_proposal_settings

    img = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((500, 333), Image.BILINEAR))
    out = {}
    for preset in ("paper", "rcnn"):
        det = Detector(classifier=load_ensemble(model_path).fuse_for_inference(),
                       proposals=ProposalStage(load_proposal_settings(preset), cache_root="/tmp/unused"))
        det.detect(img)  # warm-up: loads MultiBox, first oneDNN calls
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            res = det.detect(img)
            runs.append({"total": time.perf_counter() - t, **res.seconds, "proposals_n": res.num_proposals})
        out[preset] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="lite0")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--model", default=None, help="region-classifier file for the latency part (default: embedded)")
    p.add_argument("--skip-detect", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"threads": torch.get_num_threads(),
           "crop_path": bench_crop_path(args.backbone, args.batch, args.repeats, args.crop)}
    c = res["crop_path"]
    print(f"{args.backbone} at {args.crop} px, batch {args.batch}, {res['threads']} threads:")
    for k in ("bare_backbone", "crop_and_classify", "warp_only"):
        print(f"  {k:<18} {c[k]['crops_per_s']:8.1f} crops/s  ({1000 * c[k]['median_s']:.0f} ms per batch)")
    print(f"  crop -> classify reaches {c['ratio_full_vs_bare']:.2f}x the bare backbone's throughput")
    if not args.skip_detect:
        res["detect"] = bench_detect(args.model, args.repeats)
        for preset, d in res["detect"].items():
            parts = ", ".join(f"{k} {v:.3f}" for k, v in d.items() if k not in ("total", "proposals_n"))
            print(f"detect, 500x333 photo, proposals '{preset}' ({d['proposals_n']:.0f} boxes): "
                  f"{d['total']:.2f} s  ({parts})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
