#!/usr/bin/env python
"""Which trunk stages should the region classifiers fine-tune?  Chosen on a dev split carved from train, never val.

The dev split: every ``--dev-every``-th voc07/train image (by position in the train split, so the same photos every
run) whose proposals are cached; the rest of the cached train images train.  For each ``--stages`` value k, the
embedded default's recipe (lite0, roi mode, 600 px, 6 members) trains its last k trunk stages with the heads
(``detection.training.finetune``; k = 0: frozen trunk, heads only) on ``paper`` proposals + ground truth, then is
scored on dev with the same proposals (ILSVRC protocol; six members and member 0 alone; per-class NMS at each
``--nms`` threshold).  Also printed: per dev
object, whether its best well-localised proposal (IoU >= 0.5) outscores its best poorly-localised one
(0.1 <= IoU < 0.5), and the seconds per training epoch.  Proposals are read from the cache only (fill it with
``tools/extract_proposals.py --split train``, or ``--extract`` for the images the run takes); images without them
are counted and left out.

    python tools/experiments/ablate_finetune.py --stages 0 1 2 --epochs 3 --train-images 600 --dev-images 150
    python tools/experiments/ablate_finetune.py --stages 2 --fg-iou 0.5 0.6 0.7 --dev-every 5    # the positives' IoU threshold
    python tools/experiments/ablate_finetune.py --backbones lite0 lite1 lite2 --stages 0 --members 1 \
        --proposals-override proposals.multibox.top_k=0          # which trunk (selective search k x 2 alone)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.ops import box_iou

from detection import config as hs
from detection.data.records import DetectionDataset
from detection.detector import Detector, DetectorSettings
from detection.evaluation import evaluate
from detection.evaluation.detections import Detections
from detection.models.backbones import build_backbone
from detection.models.region import RegionConfig, RegionEnsemble
from detection.progress import progress as progress_bar
from detection.proposals.pipeline import ProposalStage
from detection.training.finetune import train_finetuned
from detection.training.roi import MemberSettings

hs.register_schemas()


def carve_dev(ds: DetectionDataset, proposals: list, *, every: int) -> tuple[list[int], list[int]]:
    """(dev positions, train positions) among the images with proposals: dev = voc07/train images whose position
    in the split is a multiple of ``every``."""
    dev, train = [], []
    for i, (r, p) in enumerate(zip(ds.records, proposals)):
        if p is None:
            continue
        (dev if i % every == 0 and "voc07" in str(r.path) else train).append(i)
    return dev, train


def dev_scores(model: RegionEnsemble, dev: DetectionDataset, props: list, *, nms: list[float]) -> dict:
    """One trunk pass per dev image: mAP of the six members and of member 0 at each NMS threshold, and the
    localisation contest (per object: does its best IoU >= 0.5 proposal outscore its best 0.1-0.5 one?)."""
    from detection.data.image_io import read_image_rgb

    probs6, probs1 = [], []
    wins = total = 0
    with torch.inference_mode():
        for r, p in progress_bar(list(zip(dev.records, props)), desc="dev", unit="img"):
            logits = model.member_logits(read_image_rgb(r.path), p).float()
            probs6.append(logits.softmax(-1).mean(0))
            probs1.append(logits[0].softmax(-1))
            if len(r.boxes):
                iou = box_iou(r.boxes, p)
                for g in range(len(r.boxes)):
                    good, poor = iou[g] >= 0.5, (iou[g] >= 0.1) & (iou[g] < 0.5)
                    if good.any() and poor.any():
                        score = probs6[-1][:, r.labels[g]]
                        total += 1
                        wins += int(score[good].max() >= score[poor].max())
    out = {"wins": wins, "contests": total}
    for t in nms:
        # scored by the detector's own step (Detector.score): the region classifiers alone, per-class NMS at t
        det = Detector(classifier=model, settings=DetectorSettings(nms_iou=t, imagenet_prior=False, threads=None))
        for key, probs in (("mAP", probs6), ("mAP_member0", probs1)):
            per = [det.score(p, pr) for p, pr in zip(props, probs)]
            out[f"{key}@nms{t:g}"] = evaluate(Detections.from_per_image(per), dev).map
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--backbones", nargs="+", default=None,
                    help="trunks to compare (lite0, lite1, lite2; default: the model config's)")
    ap.add_argument("--proposals-override", nargs="*", default=[],
                    help="Hydra overrides of the proposals node, e.g. proposals.multibox.top_k=0 (selective search "
                         "alone: independent of the MultiBox model)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--dev-every", type=int, default=10)
    ap.add_argument("--train-images", type=int, default=0, help="at most this many training images (0: all)")
    ap.add_argument("--dev-images", type=int, default=0, help="at most this many dev images (0: all)")
    ap.add_argument("--trunk-lr-scale", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0, help="the training draws' seed (another seed: the noise of a row)")
    ap.add_argument("--fg-iou", type=float, nargs="+", default=[0.5],
                    help="positive IoU thresholds to compare (a proposal below it is background); one run per "
                         "stages x threshold")
    ap.add_argument("--nms", type=float, nargs="+", default=[0.3, 0.4, 0.5],
                    help="per-class NMS thresholds to score (the first is the table's)")
    ap.add_argument("--extract", action="store_true",
                    help="compute the missing proposals of the images the run takes first (else: cached ones only)")
    ap.add_argument("--out", default="checkpoints/ablate_finetune")
    ap.add_argument("--data-root", default=None, help="default: $DET_DATA_ROOT or ../shared/data")
    args = ap.parse_args()

    overrides = (["dataset=train", "proposals=paper"] + list(args.proposals_override)
                 + ([f"data_root={args.data_root}"] if args.data_root else []))
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("train_classifier", overrides=overrides)
    hs.resolve_data_root(cfg)
    cache = hs.resolve_cache_dir(cfg)
    ds = instantiate(cfg.dataset, _convert_="all")
    stage = ProposalStage(hs.proposal_settings(cfg.proposals), cache_root=cache / "proposals")
    if args.extract:  # the proposals of the images the run takes (the carve is by position, not by the cache)
        dev, train = carve_dev(ds, [True] * len(ds), every=args.dev_every)
        take = sorted(train[:args.train_images or None] + dev[:args.dev_images or None])
        stage.extract(DetectionDataset(ds.name, [ds.records[i] for i in take], ds.report), workers=2)
    props = [p["boxes"] if p is not None else None for p in stage.load(ds, skip_missing=True)]
    dev, train = carve_dev(ds, props, every=args.dev_every)
    print(f"train split: {len(ds)} images, {sum(p is not None for p in props)} with cached proposals "
          f"({sum(p is None for p in props)} without: left out); dev {len(dev)}, training {len(train)}")
    if not dev or not train:
        raise SystemExit(f"error: {'no dev' if not dev else 'no training'} image has cached proposals of these "
                         f"settings ({' '.join(overrides[1:])}) under {cache / 'proposals'}: fill the cache with "
                         f"tools/extract_proposals.py --split train and the same overrides, or pass --extract")
    if args.train_images:
        train = train[:args.train_images]
    if args.dev_images:
        dev = dev[:args.dev_images]
    keep = set(train)
    train_props = [props[i] if i in keep else None for i in range(len(ds))]
    dev_ds = DetectionDataset("dev", [ds.records[i] for i in dev], ds.report)
    dev_props = [props[i] for i in dev]
    print(f"using {len(train)} training and {len(dev)} dev images")

    rows = []
    base = OmegaConf.to_container(cfg.model)
    # the earliest cut first: the later cuts' maps derive from it
    backbones = args.backbones or [base["backbone"]]
    runs = [(b, k, f) for b in backbones for k in sorted(args.stages, reverse=True) for f in args.fg_iou]
    for backbone, k, fg_iou in runs:
        rcfg = RegionConfig(**{**base, "backbone": backbone, "members": args.members, "trainable_stages": k})
        model = RegionEnsemble(cfg=rcfg, backbones=[build_backbone(rcfg.backbone, weights="imagenet")]).eval()
        mset = MemberSettings(**{**OmegaConf.to_container(cfg.train), "epochs": args.epochs,
                                 "trunk_lr_scale": args.trunk_lr_scale, "fg_iou": fg_iou, "seed": args.seed})
        run_dir = Path(args.out) / ((f"{backbone}_" if len(backbones) > 1 else "")
                                    + (f"stages{k}" if len(args.fg_iou) == 1 else f"stages{k}_fg{fg_iou:g}"))
        t = time.perf_counter()
        rec = train_finetuned(model, ds, train_props, settings=mset, cache_root=cache, out_dir=run_dir,
                              log=lambda *a: None)
        t_train = time.perf_counter() - t
        model.eval()
        row = {"backbone": backbone, "trainable_stages": k, "fg_iou": fg_iou, "seed": args.seed, "stages": rec["stages"], "train_images": rec["images"],
               "epoch_seconds": rec["seconds"] / max(1, len(rec["epochs"])), "cache_seconds": rec["trunk_cache_seconds"],
               "train_seconds": t_train, "final_loss": rec["epochs"][-1]["loss"],
               "roi_accuracy": rec["epochs"][-1]["roi_accuracy"]}
        row.update(dev_scores(model, dev_ds, dev_props, nms=args.nms))
        row["dev_mAP"], row["dev_mAP_member0"] = row[f"mAP@nms{args.nms[0]:g}"], row[f"mAP_member0@nms{args.nms[0]:g}"]
        rows.append(row)
        torch.save({"row": row}, run_dir / "dev.pt")
        print(f"{backbone}, stages {k} ({', '.join(rec['stages']) or 'frozen'}), positives IoU >= {fg_iou:g}: dev mAP {100 * row['dev_mAP']:.2f}% "
              f"(member 0 {100 * row['dev_mAP_member0']:.2f}%), well- beats poorly-localised "
              f"{row['wins']}/{row['contests']}, {row['epoch_seconds']:.0f} s/epoch", flush=True)
    print(f"\n{'trunk':<7}{'trainable stages':<26}{'fg IoU':>7}{'dev mAP':>9}{'member 0':>10}{'loc wins':>12}{'s/epoch':>9}")
    for r in rows:
        name = f"{r['trainable_stages']} ({', '.join(r['stages']) or 'frozen'})"
        print(f"{r['backbone']:<7}{name:<26}{r['fg_iou']:>7g}{100 * r['dev_mAP']:>8.2f}%{100 * r['dev_mAP_member0']:>9.2f}%"
              f"{r['wins']:>6}/{r['contests']:<5}{r['epoch_seconds']:>9.0f}")
    print("dev mAP (six members) by per-class NMS threshold: " + "; ".join(
        f"stages {r['trainable_stages']} fg {r['fg_iou']:g}: " + ", ".join(f"{t:g} {100 * r[f'mAP@nms{t:g}']:.2f}%" for t in args.nms)
        for r in rows))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
