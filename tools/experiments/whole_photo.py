#!/usr/bin/env python
"""The baseline for photos of one object: the trunk's own ImageNet classifier on the whole photo, its k most probable
DET classes (the 1 000 ImageNet probabilities folded into the 200 classes) each boxed by the whole photo, scored with
top-k localisation (``eval.protocol=loc``) beside the detector.

    python tools/experiments/whole_photo.py --split breadth_tiny_val --out results/whole_photo_tiny_val

Writes ``<out>/detections.json`` (COCO results; ``tools/eval_map.py detections=... eval.protocol=loc`` scores it
again) and ``<out>/metrics.json``; prints the localisation table, split into the classes the embedded region
classifiers have training boxes of and the others.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detection import config as hs

hs.register_schemas()


def main() -> None:
    from detection.data.image_io import ImageDecodeError, read_image_rgb
    from detection.evaluation import Detections, GroundTruth, write_coco_results
    from detection.evaluation.loc import evaluate_loc, format_loc, training_groups
    from detection.files import atomic_write_text
    from detection.models.imagenet_prior import build_imagenet_prior
    from detection.models.region import load_ensemble
    from detection.progress import progress as progress_bar
    from detection.sharded import restrict_to_scored

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="breadth_tiny_val", help="a dataset preset of configs/dataset/")
    ap.add_argument("--top", type=int, default=5, help="how many classes per photo (default 5)")
    ap.add_argument("--size", type=int, default=224, help="the photo's shorter side for the classifier (default 224)")
    ap.add_argument("--images", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--out", default="results/whole_photo")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a Hydra override of the eval_map config, e.g. extra_root=... (repeatable)")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=[f"dataset={args.split}", *args.override])
    hs.resolve_data_root(cfg)
    dataset = instantiate(cfg.dataset, _convert_="all")
    if args.images:
        dataset.records = dataset.records[:args.images]
    print(dataset.summary())
    prior = build_imagenet_prior()
    per, scored, skipped = [], [], []
    with torch.inference_mode():
        for i, r in enumerate(progress_bar(dataset.records, desc=f"whole photo on {dataset.name}", unit="img")):
            try:
                img = read_image_rgb(r.path)
            except ImageDecodeError as e:
                skipped.append(str(e))
                continue
            top = prior.whole_photo(img, size=args.size)[1:].topk(args.top)
            h, w = img.shape[:2]
            per.append((torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(args.top, 4), top.values,
                        top.indices + 1))
            scored.append(i)
    for s in skipped:
        print(f"skipped {s}")
    dets, ds = restrict_to_scored(Detections.from_per_image(per, scored), dataset, scored)
    m = evaluate_loc(dets, GroundTruth.from_dataset(ds))
    groups = training_groups(load_ensemble().class_boxes)
    print(format_loc(m, title=f"{ds.name}, whole-photo ImageNet classifier (top {args.top} classes):", groups=groups))
    out = Path(args.out)
    write_coco_results(dets, ds, out / "detections.json")
    d = {**m.to_dict(groups), "dataset": ds.name, "method": f"whole-photo ImageNet classifier at {args.size} px",
         "skipped": skipped}
    atomic_write_text(out / "metrics.json", json.dumps(d, indent=2))
    print(f"wrote {out / 'detections.json'}, {out / 'metrics.json'}")


if __name__ == "__main__":
    main()
