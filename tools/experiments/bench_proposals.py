#!/usr/bin/env python
"""Benchmarks of the proposal stage (figures for the README / closing notes; no assertions).

1. Selective-search wrapper overhead: ``proposals.selective_search.selective_search`` (resize, seeding, box
   conversion, clipping) against OpenCV's bare ``process()`` on the same already-resized images.
2. Extraction throughput: ``extract_split`` with 2 worker processes against 1, on the first N images of a split,
   each into a fresh cache.

    python tools/experiments/bench_proposals.py --images 40 --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from detection.data import read_coco, read_image_rgb
from detection.data.records import DetectionDataset
from detection.proposals.extract import SelectiveSearchSource, extract_split
from detection.proposals.selective_search import (
    SelectiveSearchSettings,
    selective_search,
)


def bench_overhead(paths: list[Path], settings: SelectiveSearchSettings) -> dict:
    bare_t, ours_t = [], []
    for p in paths:
        rgb = read_image_rgb(p)
        h, w = rgb.shape[:2]
        small = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (500, round(h * 500 / w)),
                           interpolation=cv2.INTER_AREA)
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(small)
        ss.switchToSelectiveSearchFast(settings.base_k, settings.inc_k, settings.sigma)
        t = time.perf_counter()
        ss.process()
        bare_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        selective_search(rgb, settings)
        ours_t.append(time.perf_counter() - t)
    bare, ours = float(np.mean(bare_t)), float(np.mean(ours_t))
    return {"bare_process_s": bare, "wrapper_s": ours, "overhead_s": ours - bare, "overhead_pct": 100 * (ours / bare - 1)}


def bench_workers(dataset: DetectionDataset, settings: SelectiveSearchSettings) -> dict:
    out = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            st = extract_split(dataset, SelectiveSearchSource(settings), cache_root=d, workers=workers)
            out[f"workers{workers}_s"] = st.wall
    out["speedup"] = out["workers1_s"] / out["workers2_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ds = read_coco(Path(args.data_root) / "voc07/val/_annotations.coco.json", class_map="voc20", name="val",
                   progress=False)
    sub = DetectionDataset("val_bench", ds.records[: args.images], ds.report)
    settings = SelectiveSearchSettings()
    print(f"selective search fast k x 1 on the first {len(sub)} val images")
    o = bench_overhead([r.path for r in sub.records[: min(20, len(sub))]], settings)
    print(f"wrapper overhead: bare process() {o['bare_process_s']:.3f} s/image, selective_search() "
          f"{o['wrapper_s']:.3f} s/image: +{o['overhead_s'] * 1000:.1f} ms ({o['overhead_pct']:+.1f}%)")
    w = bench_workers(sub, settings)
    print(f"extraction: 1 worker {w['workers1_s']:.1f} s, 2 workers {w['workers2_s']:.1f} s: "
          f"speed-up {w['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(sub), **o, **w}, indent=2))


if __name__ == "__main__":
    main()
