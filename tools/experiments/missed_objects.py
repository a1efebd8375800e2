#!/usr/bin/env python
"""Why the detector misses small objects: each object under ``--max-share`` of its photo, by cause.

    python tools/experiments/missed_objects.py --split val                  # the default detector, paper proposals
    python tools/experiments/missed_objects.py --split val --max-share 0.005 --limit 200

Causes, for an object of class c (ILSVRC's IoU threshold, ``min(0.5, wh / ((w + 10)(h + 10)))``):

* ``found``: a detection of class c matches it;
* ``not covered``: no proposal reaches the threshold;
* ``lost to NMS``: its best covering proposal scores c at or above the floor, but a better detection of class c
  overlaps that proposal by more than the NMS IoU (a crowded neighbour, or one box over several objects);
* ``under the floor: background`` / ``under the floor: another class``: its best covering proposal scores c under the
  score floor, and background (another class) is that proposal's top score;
* ``other``: what remains (the per-class cap).

Proposals come from the cache (fill it with ``tools/extract_proposals.py``: a photo missing from it stops the run
with its name); photos that cannot be read are skipped and counted.  Prints a table by size and the classes with the
most misses; writes ``missed_objects.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

CAUSES = ("found", "not covered", "lost to NMS", "under the floor: background", "under the floor: another class",
          "other")


def miss_causes(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                det_boxes: torch.Tensor, det_labels: torch.Tensor, *, score_threshold: float,
                nms_iou: float) -> list[str]:
    """The cause (one of :data:`CAUSES`) of each ground-truth object ``gt_boxes [G, 4]`` of class ``gt_labels [G]``
    (1..C): ``boxes [N, 4]`` the proposals, ``scores [N, C + 1]`` their class scores as the detector fed them to NMS
    (column 0 background), ``det_boxes [D, 4]`` / ``det_labels [D]`` the detections it kept."""
    from detection.evaluation.protocols import ilsvrc_iou_threshold

    thr = torch.as_tensor(ilsvrc_iou_threshold(gt_boxes.double().numpy()), dtype=torch.float32)
    cover = box_iou(gt_boxes.float(), boxes.float()) >= thr[:, None] if len(boxes) else None
    # an object is found when a kept detection of its class reaches its threshold
    found = ((box_iou(gt_boxes.float(), det_boxes.float()) >= thr[:, None])
             & (det_labels[None, :] == gt_labels[:, None])).any(1)
    out = []
    for k in range(len(gt_boxes)):
        c = int(gt_labels[k])
        mine = det_labels == c
        if found[k]:
            out.append("found")
            continue
        if cover is None or not cover[k].any():
            out.append("not covered")
            continue
        idx = cover[k].nonzero().flatten()
        j = int(idx[scores[idx, c].argmax()])
        if float(scores[j, c]) < score_threshold:
            out.append("under the floor: background" if int(scores[j].argmax()) == 0
                       else "under the floor: another class")
        elif mine.any() and bool((box_iou(boxes[j:j + 1].float(), det_boxes[mine].float()) > nms_iou).any()):
            out.append("lost to NMS")
        else:
            out.append("other")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val")
    p.add_argument("--proposals", default="paper", help="a proposal preset (its boxes must be cached)")
    p.add_argument("--max-share", type=float, default=0.02, help="objects under this share of the photo's area")
    p.add_argument("--limit", type=int, default=None, help="the first N photos only")
    p.add_argument("--out", default="results/missed_objects")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from detection import config as hs, load_detector
    from detection.data.image_io import ImageDecodeError, read_image_rgb
    from detection.labels import det200
    from detection.progress import progress
    from detection.proposals.pipeline import ProposalStage, load_proposal_settings

    hs.register_schemas()
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_proposals", overrides=[f"dataset={args.split}"])
    hs.resolve_data_root(cfg)
    ds = instantiate(cfg.dataset, _convert_="all")
    if args.limit:
        ds = type(ds)(ds.name, ds.records[:args.limit])
    stage = ProposalStage(load_proposal_settings(args.proposals), cache_root=hs.resolve_cache_dir(cfg) / "proposals")
    cached = stage.load(ds, skip_missing=True)
    det = load_detector(proposals=args.proposals)
    st = det.settings
    names = det200()
    counts = {size: collections.Counter() for size in ("under 0.5 %", f"0.5-{100 * args.max_share:g} %")}
    by_class = collections.defaultdict(collections.Counter)
    skipped = []
    for r, prop in progress(list(zip(ds.records, cached)), desc=f"missed objects {ds.name}", unit="img"):
        share = ((r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])) / (r.width * r.height)
        small = (share < args.max_share) & (r.labels > 0)
        if not small.any():
            continue
        if prop is None:
            skipped.append(f"{r.path}: no cached {args.proposals} proposals")
            continue
        try:
            img = read_image_rgb(r.path)
        except ImageDecodeError as e:
            skipped.append(str(e))
            continue
        boxes, source = prop["boxes"].float(), prop.get("source")
        with torch.inference_mode():  # the detector's own scoring, its class scores kept from before NMS
            probs = det.classifier.predict(img, boxes, members=st.members, flip=st.flip, image_sizes=st.image_sizes)
            prior, area = det.prior_evidence(img, boxes, probs)
            fused = det.class_scores(probs, source=source, prior=prior, box_area=area)
            b, _, lab = det.nms(boxes, fused)
        causes = miss_causes(r.boxes[small], r.labels[small], boxes, fused, b, lab,
                             score_threshold=st.score_threshold, nms_iou=st.nms_iou)
        for s, c, cause in zip(share[small].tolist(), r.labels[small].tolist(), causes):
            counts["under 0.5 %" if s < 0.005 else f"0.5-{100 * args.max_share:g} %"][cause] += 1
            if cause != "found":
                by_class[names.name(c)][cause] += 1
    for s in skipped:
        print(f"skipped {s}")
    print(f"{ds.name}: objects under {100 * args.max_share:g} % of the photo, {args.proposals} proposals, "
          f"{len(skipped)} photos skipped")
    width = {c: max(len(c), 13) + 2 for c in CAUSES}
    print(f"{'size':14s}{'objects':>9s}" + "".join(f"{c:>{width[c]}s}" for c in CAUSES))
    for size, ctr in counts.items():
        n = sum(ctr.values())
        print(f"{size:14s}{n:9d}" + "".join(f"{f'{ctr[c]} ({100 * ctr[c] / max(n, 1):.1f} %)':>{width[c]}s}"
                                            for c in CAUSES))
    print("classes with the most misses:")
    for name, ctr in sorted(by_class.items(), key=lambda x: -sum(x[1].values()))[:10]:
        print(f"  {name}: " + ", ".join(f"{c} {v}" for c, v in ctr.most_common()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "missed_objects.json").write_text(json.dumps(
        {"split": ds.name, "proposals": args.proposals, "max_share": args.max_share, "skipped": skipped,
         "by_size": {k: dict(v) for k, v in counts.items()}, "by_class": {k: dict(v) for k, v in by_class.items()}},
        indent=2))
    print(f"wrote {out / 'missed_objects.json'}")


if __name__ == "__main__":
    sys.exit(main())
