#!/usr/bin/env python
"""How much of a class the ImageNet prior recovers without its training boxes (LSDA's protocol on this project's data).

Half of the classes the region classifiers have training boxes of (a fixed seed, stratified: half of those with
exhaustive boxes, half of those with Tiny ImageNet's positives-only boxes) are *hidden*: their identity is taken from
the region classifiers' scores and their trust set to 0, so the fused detector must name them from the ImageNet
classifier alone, as it does for the classes that never had a box.  Per split, each photo is classified once
(proposals from the cache, the six members with the mirror view, the prior where a detection can follow) and scored
as:

    supervised           the region classifiers alone (the classes' own boxes)
    default              the shipped fusion (every class at its own trust)
    ImageNet alone       the prior as a detector: folded ImageNet probability x (box share)^gamma, no objectness
    hidden, kept         the hidden classes by the fusion with trust 0; their classifier mass stays objectness
    hidden, dropped      the same, their mass moved to background (what a classifier never shown them would say)

and reported for the hidden classes, the other trained classes and the classes without boxes (ILSVRC mAP, or top-5
localisation for photos labelled one class at a time: ``NAME:loc``).  The ``kept``/``dropped`` pair brackets what
hiding the boxes from training would give.

    python tools/experiments/imagenet_transfer.py --split breadth_tiny_val:loc breadth_coco_val val --out results/transfer

A split's pass is kept in ``<out>/<split>.pass.pt`` and reused (``--fresh`` recomputes it); the tables go to
``<out>/transfer.json`` and ``<out>/transfer.md``, with the DET classes that have at least one correct detection (an
ILSVRC AP above 0) on any of the splits, by the region classifiers alone and by the default.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detection import config as hs
from detection.files import atomic_torch_save

hs.register_schemas()

VARIANTS = ["supervised", "default", "ImageNet alone", "hidden, kept", "hidden, dropped"]
GROUPS = ["hidden", "other trained", "without boxes"]


def hidden_classes(class_boxes: dict, seed: int = 0) -> list[int]:
    """Half of the exhaustively boxed classes and half of the positives-only ones, drawn with ``seed``."""
    from detection.labels import det200

    exh = sorted(w for w, (e, p) in class_boxes.items() if e > 0)
    pos = sorted(w for w, (e, p) in class_boxes.items() if e == 0 and p > 0)
    chosen = random.Random(seed).sample(exh, len(exh) // 2) + random.Random(seed).sample(pos, len(pos) // 2)
    return sorted(det200().index_of_wnid(w) for w in chosen)


def variant_scores(name: str, P, F, area, trust, hidden, gamma: float):
    """The ``[N, 201]`` scores of one variant from the classifiers' softmax ``P`` and the folded prior ``F``."""
    from detection.detector import fuse_imagenet

    if name == "supervised":
        return P
    if name == "default":
        return fuse_imagenet(P, F, trust, box_area=area, area_power=gamma)
    if name == "ImageNet alone":
        out = torch.zeros_like(P)
        out[:, 1:] = F[:, 1:] * area.clamp(1e-4, 1.0)[:, None] ** gamma
        return out
    H = torch.tensor(hidden)
    P = P.clone()
    if name == "hidden, dropped":
        P[:, 0] += P[:, H].sum(1)
    P[:, H] = 0.0
    t = trust.clone()
    t[H] = 0.0
    return fuse_imagenet(P, F, t, box_area=area, area_power=gamma)


def classify_split(split: str, out: Path, fresh: bool, model, prior, settings, overrides, images: int = 0) -> tuple:
    """``(dataset, [per-photo dict | None])``: boxes, sources, ``P``, ``F``, box shares; cached in ``out``."""
    from detection.data.image_io import ImageDecodeError, read_image_rgb
    from detection.detector import box_area_share
    from detection.progress import progress as progress_bar
    from detection.proposals.pipeline import ProposalStage

    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=[f"dataset={split}", *overrides])
    hs.resolve_data_root(cfg)
    dataset = instantiate(cfg.dataset, _convert_="all")
    if images:
        dataset.records = dataset.records[:images]
    print(dataset.summary())
    path = out / f"{split}.pass.pt"
    if path.is_file() and not fresh:
        blob = torch.load(path, weights_only=False)
        if blob["images"] == [str(r.path) for r in dataset.records]:
            print(f"{split}: the pass of {path} reused")
            return dataset, blob["rows"], blob["skipped"]
    stage = ProposalStage(hs.proposal_settings(cfg.proposals), cache_root=hs.resolve_cache_dir(cfg) / "proposals")
    props = stage.load(dataset)
    rows, skipped = [], []
    floor = 0.5 * settings.score_threshold  # as Detector.detect: no detection can come from a box under it
    with torch.inference_mode():
        for r, p in zip(progress_bar(dataset.records, desc=f"classify {split}", unit="img"), props):
            try:
                img = read_image_rgb(r.path)
            except ImageDecodeError as e:
                skipped.append(str(e))
                rows.append(None)
                continue
            P = model.predict(img, p["boxes"], members=settings.members, flip=settings.flip,
                              image_sizes=settings.image_sizes).float()
            F = torch.zeros_like(P)
            need = (1.0 - P[:, 0]) >= floor
            if need.any():
                F[need] = prior.predict(img, p["boxes"][need]).float()
            rows.append({"boxes": p["boxes"].float(), "source": p["source"], "P": P.half(), "F": F.half(),
                         "area": box_area_share(p["boxes"], *img.shape[:2])})
    atomic_torch_save({"images": [str(r.path) for r in dataset.records], "rows": rows, "skipped": skipped}, path)
    return dataset, rows, skipped


def main() -> None:
    from detection.detector import DetectorSettings, postprocess, weight_sources
    from detection.evaluation import Detections, GroundTruth, evaluate_ilsvrc
    from detection.evaluation.loc import evaluate_loc, training_groups
    from detection.labels import det200
    from detection.models.imagenet_prior import build_imagenet_prior, class_trust
    from detection.models.region import load_ensemble
    from detection.sharded import restrict_to_scored

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", nargs="+", default=["breadth_tiny_val:loc", "breadth_coco_val", "val"],
                    help="dataset presets; NAME:loc scores by top-5 localisation (photos labelled one class at a "
                         "time), NAME by ILSVRC mAP")
    ap.add_argument("--seed", type=int, default=0, help="which half of the trained classes is hidden (default 0)")
    ap.add_argument("--out", default="results/transfer")
    ap.add_argument("--images", type=int, default=0, help="only the first N photos of each split (0: all)")
    ap.add_argument("--fresh", action="store_true", help="recompute the passes kept in --out")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a Hydra override of the eval_map config, e.g. extra_root=... (repeatable)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = DetectorSettings(score_threshold=0.01)  # eval_map's floor
    model = load_ensemble().fuse_for_inference()
    c = model.cfg
    prior = build_imagenet_prior(backbone=c.backbone, image_size=c.image_size, max_image_size=c.max_image_size,
                                 max_upscale=c.max_upscale)
    space = det200()
    trust = class_trust(model.class_boxes, prior_boxes=settings.prior_boxes)
    hidden = hidden_classes(model.class_boxes, args.seed)
    groups = training_groups(model.class_boxes)
    trained = groups["classes with training boxes"]
    classes = {"hidden": hidden, "other trained": sorted(set(trained) - set(hidden)),
               "without boxes": groups["classes without training boxes"]}
    print(f"hidden (seed {args.seed}, {len(hidden)} of {len(trained)} trained classes): "
          + ", ".join(space.name(k) for k in hidden))
    report = {"seed": args.seed, "hidden": [space.name(k) for k in hidden], "splits": {}}
    for spec in args.split:
        split, _, protocol = spec.partition(":")
        protocol = protocol or "ilsvrc"
        t0 = time.perf_counter()
        dataset, rows, skipped = classify_split(split, out, args.fresh, model, prior, settings, args.override,
                                                   args.images)
        scored = [i for i, r in enumerate(rows) if r is not None]
        gt_classes = {int(v) for r in dataset.records for v in r.labels.tolist()}
        res = {"protocol": protocol, "images": len(scored), "skipped": skipped, "variants": {},
               "classes_with_gt": sorted(gt_classes),
               "classes_present": {g: len(set(v) & gt_classes) for g, v in classes.items()}}
        for name in VARIANTS:
            per = []
            for i in scored:
                r = rows[i]
                s = variant_scores(name, r["P"].float(), r["F"].float(), r["area"], trust, hidden,
                                   settings.prior_area_power)
                s = weight_sources(s, r["source"], settings.multibox_weight)
                per.append(postprocess(r["boxes"], s, nms_iou=settings.nms_iou, max_per_class=settings.max_per_class,
                                       score_threshold=settings.score_threshold))
            d, ds = restrict_to_scored(Detections.from_per_image(per, scored), dataset, scored)
            gt = GroundTruth.from_dataset(ds)
            row = {}
            if protocol == "loc":
                m = evaluate_loc(d, gt)
                for g, cl in classes.items():
                    sub = m.restrict(cl)
                    if sub.num_queries:
                        row[g] = {"top5_loc": sub.localised[5], "top1_loc": sub.localised[1],
                                  "classes_localised": sub.classes_localised(), "classes": len(sub.queries)}
            else:
                m = evaluate_ilsvrc(d, gt)
                for g, cl in classes.items():
                    aps = [m.ap[k] for k in cl if m.npos.get(k, 0) > 0]
                    if aps:
                        row[g] = {"mAP": sum(aps) / len(aps), "classes": len(aps),
                                  "classes_found": sum(a > 0 for a in aps)}
            res["variants"][name] = row
            if name in ("supervised", "default"):  # the classes with at least one correct detection (an AP > 0)
                m = m if protocol != "loc" else evaluate_ilsvrc(d, gt)
                res.setdefault("classes_found", {})[name] = sorted(k for k, a in m.ap.items() if a > 0)
        res["seconds"] = time.perf_counter() - t0
        report["splits"][spec] = res
        print(format_table({spec: res}))
    present = {k for res in report["splits"].values() for k in res["classes_with_gt"]}
    for name in ("supervised", "default"):
        found = sorted({k for res in report["splits"].values() for k in res["classes_found"][name]})
        report[f"classes_found_{name}"] = [space.name(k) for k in found]
        print(f"DET classes with at least one correct detection on these splits, {name}: {len(found)} of the "
              f"{len(present)} present (of 200)")
    (out / "transfer.json").write_text(json.dumps(report, indent=2))
    (out / "transfer.md").write_text(format_table(report["splits"]) + "\n")
    print(f"wrote {out / 'transfer.json'}, {out / 'transfer.md'}")


def format_table(splits: dict) -> str:
    """One markdown table per split: variants down, class groups across."""
    lines = []
    for spec, res in splits.items():
        loc = res["protocol"] == "loc"
        key = "top5_loc" if loc else "mAP"
        present = [g for g in GROUPS if any(g in row for row in res["variants"].values())]
        lines += [f"**{spec}** ({res['images']} photos, {'top-5 localisation' if loc else 'ILSVRC mAP'})", "",
                  "| | " + " | ".join(f"{g} ({next(r[g]['classes'] for r in res['variants'].values() if g in r)})"
                                      for g in present) + " |",
                  "|---|" + "---|" * len(present)]
        for name, row in res["variants"].items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * row[g][key]:.2f} %" if g in row else "" for g in present)
                         + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
