#!/usr/bin/env python
"""Score several region-classifier models x proposal sets x member counts on a split, one trunk pass per image and
model (roi mode: a proposal's scores do not depend on the other proposals, so the union of every proposal set is
classified at once and each set's scores are taken from it).  The figures equal separate
``tools/eval_map.py`` runs (``detector.model=``, ``proposals=``, ``detector.members=``, ``detector.flip=``,
``detector.nms_iou=``, ``detector.multibox_weight=``), at a fraction of the time: every variant is scored by the
detector's own :meth:`~detection.detector.Detector.score` with its settings.

    python tools/experiments/compare_detectors.py --split val --model new=detection/models/weights/region_lite0.pt \\
        --model old=/path/old_region.pt --proposals paper ss rcnn --members 6 1 --out results/compare_val

Proposal sets: ``paper``, ``rcnn``, ``ss`` (= paper's selective search alone, ``proposals.multibox.top_k=0``); they
are read from the cache (fill it with ``tools/extract_proposals.py``; an image missing from any set is left out of
every set, counted).  Per variant: ``<out>/<model>-<proposals>-m<members>[-flip][-nms<iou>]/`` with ``metrics.json``
(mAP, per class, the error breakdown), ``detections.json`` and ``errors.png``; ``<out>/summary.json`` and a table.
``--nms 0.3 0.4 0.5`` scores several per-class NMS thresholds from the same class scores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detection import config as hs
from detection.progress import progress as progress_bar

hs.register_schemas()

PROPOSAL_SETS = {"paper": ["proposals=paper"], "rcnn": ["proposals=rcnn"],
                 "ss": ["proposals=paper", "proposals.multibox.top_k=0"]}


def main() -> None:
    from dataclasses import replace

    from detection.data.image_io import ImageDecodeError, read_image_rgb
    from detection.detector import Detector, DetectorSettings, box_area_share
    from detection.evaluation import (
        Detections,
        evaluate,
        save_metrics,
        write_coco_results,
    )
    from detection.evaluation.errors import analyze_errors, format_errors, plot_errors
    from detection.labels import det200
    from detection.models.region import load_ensemble
    from detection.proposals.pipeline import ProposalStage
    from detection.sharded import restrict_to_scored

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="val")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="a region-classifier file (repeatable); 'default' = the embedded model")
    ap.add_argument("--proposals", nargs="+", default=["paper", "ss"], choices=sorted(PROPOSAL_SETS))
    ap.add_argument("--members", type=int, nargs="+", default=[6, 1])
    ap.add_argument("--flip", nargs="+", default=["on" if DetectorSettings.flip else "off"], choices=["off", "on"],
                    help="test-time flip: 'on' also averages each proposal's softmax on the mirror image (variants "
                         "named ...-flip); 'off' the image's view only; 'off on' both from one pass (default: the "
                         "detector's)")
    ap.add_argument("--nms", type=float, nargs="+", default=[0.3],
                    help="per-class NMS IoU threshold(s); with several, each is a variant (named ...-nms0.4) of the same "
                         "pass")
    ap.add_argument("--soft-nms", type=float, nargs="+", default=[], metavar="SIGMA",
                    help="also Gaussian soft-NMS with each sigma instead of NMS (variants named ...-softnms0.5) of the "
                         "same pass")
    ap.add_argument("--mb-weight", type=float, nargs="+", default=[DetectorSettings().multibox_weight],
                    help="multiply the class scores of MultiBox's boxes by this (default: the detector's, 0.5; 1: "
                         "unweighted); with several, each is a variant (...-mbw0.5) of the same pass")
    ap.add_argument("--image-sizes", type=int, nargs="+", default=None, metavar="PX",
                    help="multi-scale testing: shorter sides of an image pyramid, e.g. 600 1200; each proposal is "
                         "pooled from the level where its area is closest to 224^2 (variants named ...-ms600x1200); "
                         "default: the model's image_size alone")
    ap.add_argument("--imagenet-prior", nargs="+", default=["on" if DetectorSettings.imagenet_prior else "off"],
                    choices=["off", "on"],
                    help="fuse with the trunk's own ImageNet classifier; 'off on': both from one pass, variants named "
                         "...-noprior and ...-prior<boxes> (default: the detector's)")
    ap.add_argument("--prior-boxes", type=float, nargs="+", default=[DetectorSettings.prior_boxes],
                    help="with the prior on: a class with n training boxes trusts the region classifiers "
                         "n / (n + this); with several, each is a variant of the same pass")
    ap.add_argument("--prior-area-power", type=float, default=DetectorSettings.prior_area_power,
                    help="with the prior on: its evidence is scaled by (box area / image area)^this "
                         f"(default: the detector's, {DetectorSettings.prior_area_power:g})")
    ap.add_argument("--images", type=int, default=0, help="only the first N images (0: all)")
    ap.add_argument("--out", default="results/compare")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a Hydra override of the eval_map config for every set, e.g. dataset.root=... (repeatable)")
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in (args.model or ["default=default"]))

    sets, sources, dataset = {}, {}, None
    for name in args.proposals:
        over = [f"dataset={args.split}", *PROPOSAL_SETS[name], *args.override] + (
            [f"data_root={args.data_root}"] if args.data_root else [])
        with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
            cfg = compose("eval_map", overrides=over)
        hs.resolve_data_root(cfg)
        if dataset is None:
            dataset = instantiate(cfg.dataset, _convert_="all")
            if args.images:
                dataset.records = dataset.records[:args.images]
        stage = ProposalStage(hs.proposal_settings(cfg.proposals), cache_root=hs.resolve_cache_dir(cfg) / "proposals")
        loaded = stage.load(dataset, skip_missing=True)
        sets[name] = [p["boxes"] if p is not None else None for p in loaded]
        sources[name] = [p["source"] if p is not None else None for p in loaded]
    keep = [i for i in range(len(dataset)) if all(s[i] is not None for s in sets.values())]
    if len(keep) < len(dataset):
        print(f"{len(dataset) - len(keep)} images lack cached proposals of some set: left out of every set")
    _, ds = restrict_to_scored(Detections.empty(), dataset, keep)  # (keeps the blacklist and image numbers)
    sets = {k: [v[i] for i in keep] for k, v in sets.items()}
    sources = {k: [v[i] for i in keep] for k, v in sources.items()}
    out = Path(args.out)
    rows = []
    flips = sorted(set(args.flip), key=["off", "on"].index)
    # each value once (a repeat would append twice to one variant's per-image list)
    args.members = list(dict.fromkeys(args.members))
    # (NMS IoU, soft-NMS sigma; 0: plain NMS)
    args.nms = [(t, 0.0) for t in dict.fromkeys(round(t, 6) for t in args.nms)] + [
        (DetectorSettings().nms_iou, g) for g in dict.fromkeys(round(g, 6) for g in args.soft_nms if g > 0)]
    weights = list(dict.fromkeys(round(w, 6) for w in args.mb_weight))
    # None: the prior off; a number: on, with that prior_boxes
    priors = ([None] if "off" in args.imagenet_prior else []) + (
        list(dict.fromkeys(round(b, 6) for b in args.prior_boxes)) if "on" in args.imagenet_prior else [])
    settings = DetectorSettings()  # the detector's score floor (eval_map's)
    for mname, mpath in models.items():
        model = load_ensemble(None if mpath == "default" else mpath).fuse_for_inference()
        M = model.cfg.members
        use_prior = any(b is not None for b in priors)
        if use_prior and model.class_boxes is None:
            sys.exit(f"error: {mpath}: no training box counts per class, so no ImageNet prior (--imagenet-prior off)")
        # the detector's own scoring (Detector.score), each variant with its settings; its ImageNet prior network
        det = Detector(classifier=model, proposals=None, settings=replace(settings, imagenet_prior=use_prior,
                                                                           threads=None))
        prior_net = det.prior
        per = {(p, m, f, t, w, b): [] for p in sets for m in args.members for f in flips for t in args.nms
               for w in weights for b in priors}
        t0, skipped, scored = time.perf_counter(), [], []
        with torch.inference_mode():
            for j, r in enumerate(progress_bar(ds.records, desc=f"{mname} on {ds.name}", unit="img")):
                try:
                    img = read_image_rgb(r.path)
                except ImageDecodeError as e:
                    skipped.append(str(e))  # left out of the evaluation, as eval_map.py does
                    continue
                scored.append(j)
                boxes = [sets[p][j] for p in sets]
                # the sets share most boxes (paper = MultiBox's 200 + selective search): classify each box once
                allb = torch.cat(boxes)
                uniq, inv = torch.unique(allb, dim=0, return_inverse=True)
                views = model.member_logits(img, uniq, flip="on" in flips, image_sizes=args.image_sizes).float()
                probs_v = (views if "on" in flips else views[None])[:, :, inv].softmax(-1)  # [V, M, N, C]
                prior_all = area_all = None
                if prior_net is not None:
                    # as Detector.detect: only a box whose objectness reaches half the score floor in some view and
                    # member (every variant's objectness is a mean of those) can yield a detection
                    fg = 1.0 - (views if "on" in flips else views[None]).softmax(-1)[..., 0].amax((0, 1))
                    need = fg >= 0.5 * settings.score_threshold
                    prior_u = torch.zeros(len(uniq), views.shape[-1])
                    if need.any():
                        prior_u[need] = prior_net.predict(img, uniq[need])
                    prior_all = prior_u[inv]
                    area_all = box_area_share(uniq, *img.shape[:2])[inv]
                s = 0
                for p, b in zip(sets, boxes):
                    part = probs_v[:, :, s:s + len(b)]
                    s += len(b)
                    if prior_all is not None:
                        prior_part, area_part = prior_all[s - len(b):s], area_all[s - len(b):s]
                    for m in args.members:
                        for f in flips:
                            probs = part[:(2 if f == "on" else 1), :min(m, M)].mean((0, 1))
                            for pb in priors:
                                for w in weights:
                                    for t in args.nms:
                                        variant = replace(settings, nms_iou=t[0], soft_nms_sigma=t[1],
                                                          multibox_weight=w,
                                                          prior_boxes=pb if pb is not None else settings.prior_boxes,
                                                          prior_area_power=args.prior_area_power)
                                        per[(p, m, f, t, w, pb)].append(det.score(
                                            b, probs, source=sources[p][j], settings=variant,
                                            prior=prior_part if pb is not None else None,
                                            box_area=area_part if pb is not None else None))
        secs = (time.perf_counter() - t0) / max(1, len(ds))
        for s in skipped:
            print(f"skipped {s}")
        for (p, m, f, t, w, pb), dets in per.items():
            d, ds_eval = restrict_to_scored(Detections.from_per_image(dets, scored), ds, scored)
            metrics = evaluate(d, ds_eval)
            errors = analyze_errors(d, ds_eval)
            nms_name = (f"-softnms{t[1]:g}" if t[1] else f"-nms{t[0]:g}") if len(args.nms) > 1 else ""
            name = (f"{mname}-{p}-m{m}" + ("-flip" if f == "on" else "") + nms_name
                    + (f"-mbw{w:g}" if len(weights) > 1 else "")
                    + ("-ms" + "x".join(map(str, args.image_sizes)) if args.image_sizes else "")
                    + ((f"-prior{pb:g}" if pb is not None else "-noprior") if len(priors) > 1 else ""))
            (out / name).mkdir(parents=True, exist_ok=True)
            write_coco_results(d, ds_eval, out / name / "detections.json")
            save_metrics(metrics, out / name / "metrics.json",
                         extra={"model": mpath, "proposals": p, "members": m, "flip": f == "on", "nms_iou": t[0],
                                "soft_nms_sigma": t[1], "mb_weight": w, "image_sizes": args.image_sizes,
                                "imagenet_prior": pb is not None, "prior_boxes": pb,
                                "prior_area_power": args.prior_area_power if pb is not None else None, "errors": errors.to_dict(det200()),
                                "proposals_per_image": sum(len(b) for b in sets[p]) / max(1, len(ds))})
            plot_errors(errors, out / name / "errors.png", space=det200(),
                        title=f"{name} on {ds.name}: mAP {100 * metrics.map:.2f}%")
            o = errors.overall
            rows.append({"variant": name, "mAP": metrics.map, "images": len(ds_eval), "nms_iou": t[0],
                         "soft_nms_sigma": t[1], "mb_weight": w, **{k: o[k] for k in o},
                         "seconds_per_image_all_sets": secs})
            print(f"\n== {name}: mAP {100 * metrics.map:.2f}% on {len(ds_eval)} images")
            print(format_errors(errors, space=det200(), max_classes=25))
    print(f"\n{'variant':<34}{'mAP':>8}{'TP':>7}{'dup':>7}{'misloc':>8}{'confus':>8}{'backgr':>8}{'found':>8}")
    for r in rows:
        print(f"{r['variant']:<34}{100 * r['mAP']:>7.2f}%{r['tp']:>7}{r['duplicate']:>7}{r['mislocalised']:>8}"
              f"{r['confusion']:>8}{r['background']:>8}{r['found']:>5}/{r['objects']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
