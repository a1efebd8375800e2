#!/usr/bin/env python
"""Benchmark: our vectorised ILSVRC DET evaluation vs pycocotools AP50 on one large synthetic dataset.

Builds a seeded synthetic ground truth and detection set with numpy (not timed in either figure, reported on its
own), then times ``evaluate_ilsvrc`` and ``evaluate_coco`` (the latter includes building pycocotools' COCO
objects, which is part of using it) with ``time.perf_counter`` and prints seconds, mAP and the speed-up.
The two mAPs differ by design (different protocols: ILSVRC's adaptive IoU threshold and all-points AP vs
COCO's 101-point AP at IoU 0.5 with at most 100 detections per image and class); only the times are compared.

    python tools/experiments/bench_eval.py                                  # 5000 images, 1M detections (minutes)
    python tools/experiments/bench_eval.py --images 200 --dets 20000        # quick check
    python tools/experiments/bench_eval.py --skip-coco --json bench.json    # ours only, figures written as JSON
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from detection.evaluation.coco import evaluate_coco
from detection.evaluation.detections import Detections, GroundTruth
from detection.evaluation.protocols import Metrics, evaluate_ilsvrc

MAX_CLASSES_PER_IMAGE = 6
TP_LIKE_FRACTION = 0.3  # share of detections that are jittered copies of a ground-truth box


def _clip_boxes(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray,
                w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Clip to ``[0, w] x [0, h]`` keeping every box at least 1 px wide and tall."""
    x1 = np.clip(x1, 0.0, w - 1.0)
    y1 = np.clip(y1, 0.0, h - 1.0)
    x2 = np.clip(np.maximum(x2, x1 + 1.0), x1 + 1.0, w)
    y2 = np.clip(np.maximum(y2, y1 + 1.0), y1 + 1.0, h)
    return np.stack([x1, y1, x2, y2], axis=1)


def build_synthetic(images: int, classes: int, dets: int, gt_per_image: int,
                    seed: int) -> tuple[Detections, GroundTruth]:
    """Seeded synthetic set: integer gt boxes, float detections (jittered gt copies + random false positives)."""
    rng = np.random.default_rng(seed)
    size = rng.integers(300, 801, size=(images, 2)).astype(np.float64)  # (width, height) per image
    k = rng.integers(1, min(MAX_CLASSES_PER_IMAGE, classes) + 1, size=images)  # distinct classes per image
    img_classes = rng.random((images, classes)).argsort(axis=1)[:, :MAX_CLASSES_PER_IMAGE] + 1

    g_img = np.repeat(np.arange(images, dtype=np.int64), gt_per_image)
    g_lbl = img_classes[g_img, rng.integers(0, k[g_img])].astype(np.int64)
    gw, gh = size[g_img, 0], size[g_img, 1]
    bw = np.floor(gw * rng.uniform(0.05, 0.6, len(g_img)))
    bh = np.floor(gh * rng.uniform(0.05, 0.6, len(g_img)))
    gx1 = np.floor(rng.uniform(0, 1, len(g_img)) * (gw - bw))
    gy1 = np.floor(rng.uniform(0, 1, len(g_img)) * (gh - bh))
    g_boxes = np.stack([gx1, gy1, gx1 + bw, gy1 + bh], axis=1)
    gt = GroundTruth(g_img, g_boxes, g_lbl, np.zeros(len(g_img), bool), set(), images)

    n_tp = int(round(dets * TP_LIKE_FRACTION)) if len(g_img) else 0
    n_fp = dets - n_tp
    # true-positive-like: each coordinate jittered by N(0, s * box side), s spread so IoU straddles 0.5
    src = rng.integers(0, max(len(g_img), 1), n_tp)
    s = rng.uniform(0.02, 0.3, n_tp)[:, None]
    side = np.stack([bw[src], bh[src], bw[src], bh[src]], axis=1)
    jit = g_boxes[src] + rng.normal(0.0, 1.0, (n_tp, 4)) * s * side
    tp_lbl = g_lbl[src].copy()
    wrong = rng.random(n_tp) < 0.1  # some get another class of the image
    tp_lbl[wrong] = img_classes[g_img[src[wrong]], rng.integers(0, k[g_img[src[wrong]]])]
    # false positives: random boxes in random images, class mostly one of the image's
    fp_img = rng.integers(0, images, n_fp)
    fw, fh = size[fp_img, 0], size[fp_img, 1]
    fx1, fy1 = rng.uniform(0, 1, n_fp) * fw * 0.9, rng.uniform(0, 1, n_fp) * fh * 0.9
    fx2 = fx1 + rng.uniform(0.05, 0.6, n_fp) * fw
    fy2 = fy1 + rng.uniform(0.05, 0.6, n_fp) * fh
    fp_lbl = np.where(rng.random(n_fp) < 0.9, img_classes[fp_img, rng.integers(0, k[fp_img])],
                      rng.integers(1, classes + 1, n_fp))

    d_img = np.concatenate([g_img[src], fp_img])
    w, h = size[d_img, 0], size[d_img, 1]
    raw = np.concatenate([jit, np.stack([fx1, fy1, fx2, fy2], axis=1)])
    boxes = _clip_boxes(raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3], w, h)
    scores = rng.random(dets) + np.r_[0.5 * rng.random(n_tp), np.zeros(n_fp)]  # TP-like score a bit higher
    labels = np.concatenate([tp_lbl, fp_lbl]).astype(np.int64)
    perm = rng.permutation(dets)  # interleave, as a real results file would be
    return Detections(d_img[perm], boxes[perm], scores[perm], labels[perm]), gt


def _timed(name: str, fn: Callable[[Detections, GroundTruth], Metrics], dets: Detections,
           gt: GroundTruth) -> tuple[float, float]:
    print(f"[bench] running {name} ...", flush=True)
    t0 = time.perf_counter()
    metrics = fn(dets, gt)
    dt = time.perf_counter() - t0
    print(f"[bench] {name}: {dt:.2f} s, mAP {metrics.map:.4f}", flush=True)
    return dt, metrics.map


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--dets", type=int, default=1_000_000, help="total detections")
    ap.add_argument("--gt-per-image", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-coco", action="store_true", help="time only the ILSVRC protocol")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)

    print(f"[bench] building synthetic data: {a.images} images, {a.classes} classes, {a.dets} detections, "
          f"{a.gt_per_image} gt/image, seed {a.seed} ...", flush=True)
    t0 = time.perf_counter()
    dets, gt = build_synthetic(a.images, a.classes, a.dets, a.gt_per_image, a.seed)
    t_build = time.perf_counter() - t0
    print(f"[bench] built in {t_build:.2f} s: {len(dets)} detections, {len(gt.labels)} gt boxes, "
          f"{len(np.unique(gt.labels))} classes with gt", flush=True)

    fig: dict = {"images": a.images, "classes": a.classes, "dets": len(dets), "gt": int(len(gt.labels)),
                 "seed": a.seed, "build_s": t_build}
    fig["ilsvrc_s"], fig["ilsvrc_map"] = _timed("ours (evaluate_ilsvrc)", evaluate_ilsvrc, dets, gt)
    rows = [("ours: ILSVRC", fig["ilsvrc_s"], fig["ilsvrc_map"])]
    if not a.skip_coco:
        print("[bench] pycocotools may take minutes at 1M detections", flush=True)
        fig["coco_s"], fig["coco_map"] = _timed("pycocotools AP50 (evaluate_coco)", evaluate_coco, dets, gt)
        fig["speedup"] = fig["coco_s"] / fig["ilsvrc_s"]
        rows.append(("pycocotools: AP50", fig["coco_s"], fig["coco_map"]))

    print(f"\n{'method':<20} {'seconds':>10} {'mAP':>8}")
    for name, sec, m in rows:
        print(f"{name:<20} {sec:>10.2f} {m:>8.4f}")
    print(f"(synthetic data build: {t_build:.2f} s, not included)")
    if "speedup" in fig:
        print(f"speed-up pycocotools / ours: {fig['speedup']:.1f}x")
    if a.json is not None:
        a.json.write_text(json.dumps(fig, indent=2))
        print(f"[bench] wrote {a.json}")
    return fig


if __name__ == "__main__":
    main()
