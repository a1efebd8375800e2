#!/usr/bin/env python
"""Which frozen-trunk RoI features should the embedded region heads use?  (An experiment; no assertions.)

One trunk pass per image gives several candidate features of each context-padded proposal: the 1 280-channel
``conv_head`` map 2x2 (``last2``), the 320-channel ``blocks.6`` map before it 4x4 (``stem4``), and the stride-16
``blocks.4`` map 4x4 / 6x6 (``mid4`` / ``mid6``).  For each variant one MLP head (5 120 -> 256 -> 201 for the first
two) is trained with R-CNN sampling (32 positives + 96 background per image, 5 epochs) on a random subset of the
train split, then scored (ILSVRC protocol) on the first images of val with ``paper`` proposals (cached, computed
where missing).  It also counts, per val object, whether its best well-localised proposal (IoU >= 0.5) outscores
its best poorly-localised one (0.1 <= IoU < 0.5): features that cannot tell them apart lose the object in NMS.

    python tools/experiments/ablate_roi_features.py --train-images 600 --val-images 150        # README figures, ~10 min
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torchvision.ops import box_iou, roi_align

from detection import config as hs
from detection.data.image_io import read_image_rgb
from detection.detector import postprocess
from detection.evaluation import evaluate
from detection.evaluation.detections import Detections
from detection.models.backbones import build_backbone
from detection.models.region import RegionConfig, RegionEnsemble
from detection.progress import progress as progress_bar
from detection.training.roi import pool_indices
from detection.training.sampler import labelled_images

hs.register_schemas()

VARIANTS = {"last2": ["last2"], "stem4": ["stem4"], "last2+mid4": ["last2", "mid4"], "stem4+mid4": ["stem4", "mid4"],
            "last2+mid6": ["last2", "mid6"]}


def load_split(name: str, n: int, *, train: bool, data_root: str | None):
    """(dataset restricted to n images, their proposals): train = a seeded random subset with the training
    proposals (SS k x 2), val = the first n images with ``paper`` proposals."""
    overrides = [f"dataset={name}", "proposals=paper"] + (["proposals.multibox.top_k=0"] if train else [])
    if data_root:
        overrides.append(f"data_root={data_root}")
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_proposals", overrides=overrides)
    hs.resolve_data_root(cfg)
    ds = instantiate(cfg.dataset, _convert_="all")
    idx = (torch.randperm(len(ds.records), generator=torch.Generator().manual_seed(1))[:n].tolist() if train
           else list(range(min(n, len(ds.records)))))
    ds.records = [ds.records[i] for i in idx]
    from detection.proposals.pipeline import ProposalStage

    stage = ProposalStage(hs.proposal_settings(cfg.proposals), cache_root=hs.resolve_cache_dir(cfg) / "proposals")
    stage.extract(ds, workers=1)
    return ds, stage.load(ds, skip_missing=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--val-images", type=int, default=150)
    ap.add_argument("--image-size", type=int, default=600, help="shorter side of the trunk's input")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--data-root", default=None, help="default: $DET_DATA_ROOT or ../shared/data")
    args = ap.parse_args()
    torch.manual_seed(0)

    bb = build_backbone("lite0").eval()
    model = RegionEnsemble(cfg=RegionConfig(members=1, image_size=args.image_size,
                                            max_image_size=round(args.image_size * 5 / 3)), backbones=[bb]).eval()
    taps: dict = {}
    for layer in ("blocks.4", "blocks.6"):
        bb.features.get_submodule(layer).register_forward_hook(lambda m, i, o, layer=layer: taps.__setitem__(layer, o))

    def features(img, boxes) -> dict:
        x, scale = model.prepare_image(img)
        last = bb(x[None])
        r32 = model.rois(boxes, scale=scale)
        r16 = r32.clone()
        r16[:, 1:] *= 2

        def pool(f, r, s):
            return roi_align(f, r, output_size=s, spatial_scale=1.0, sampling_ratio=2, aligned=True).flatten(1)

        return {"last2": pool(last, r32, 2), "stem4": pool(taps["blocks.6"], r32, 4),
                "mid4": pool(taps["blocks.4"], r16, 4), "mid6": pool(taps["blocks.4"], r16, 6)}

    train, train_props = load_split("train", args.train_images, train=True, data_root=args.data_root)
    feats: dict = {k: [] for k in ("last2", "stem4", "mid4", "mid6")}
    labels, skipped = [], []
    with torch.inference_mode():
        boxes_of = [p["boxes"] if p is not None else None for p in train_props]
        for i, _r, img, boxes, lab, max_iou in progress_bar(labelled_images(train.records, boxes_of, skipped=skipped),
                                                    total=len(train.records), desc="train features", unit="img"):
            keep = pool_indices(lab, max_iou, fg=32, bg=96, gen=torch.Generator().manual_seed(i))
            for k, v in features(img, boxes[keep]).items():
                feats[k].append(v.half())
            labels.append(lab[keep])
    for s in skipped:
        print(f"skipped {s}")
    feats = {k: torch.cat(v) for k, v in feats.items()}
    y = torch.cat(labels)
    fg, bg = torch.nonzero(y > 0).flatten(), torch.nonzero(y == 0).flatten()
    print(f"{len(y)} training RoIs from {len(train.records) - len(skipped)} images, {len(fg)} positives")

    heads = {}
    for name, keys in VARIANTS.items():
        x = torch.cat([feats[k] for k in keys], 1)
        mean, std = x.float().mean(0), x.float().std(0) + 1e-3
        torch.manual_seed(0)
        head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                   torch.nn.Linear(256, 201))
        opt = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-4)
        steps = math.ceil(len(fg) / 32)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps * args.epochs)
        t = time.perf_counter()
        for _ in progress_bar(range(args.epochs), desc=f"head {name}", unit="epoch"):
            perm = fg[torch.randperm(len(fg))]
            for s in range(steps):
                b = torch.cat([perm[s * 32:(s + 1) * 32], bg[torch.randint(len(bg), (96,))]])
                loss = torch.nn.functional.cross_entropy(head((x[b].float() - mean) / std), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        heads[name] = (head.eval(), keys, mean, std)
        print(f"{name}: {x.shape[1]} inputs, trained in {time.perf_counter() - t:.0f} s, last loss {loss.item():.3f}")

    val, val_props = load_split("val", args.val_images, train=False, data_root=args.data_root)
    probs: dict = {name: [] for name in VARIANTS}
    with torch.inference_mode():
        for r, p in progress_bar(list(zip(val.records, val_props)), desc="val", unit="img"):
            f = features(read_image_rgb(r.path), p["boxes"])
            for name, (head, keys, mean, std) in heads.items():
                probs[name].append(head((torch.cat([f[k] for k in keys], 1) - mean) / std).softmax(-1))
    print(f"\n{'variant':<14}{'inputs':>8}{'val mAP':>10}   well- beats poorly-localised")
    for name, keys in VARIANTS.items():
        per = [postprocess(p["boxes"], pr, nms_iou=0.3) for p, pr in zip(val_props, probs[name])]
        m = evaluate(Detections.from_per_image(per), val, protocol="ilsvrc").map
        wins = total = 0
        for r, p, pr in zip(val.records, val_props, probs[name]):
            if len(r.boxes) == 0:
                continue
            iou = box_iou(r.boxes, p["boxes"])
            for g in range(len(r.boxes)):
                score = pr[:, r.labels[g]]
                good, poor = iou[g] >= 0.5, (iou[g] >= 0.1) & (iou[g] < 0.5)
                if good.any() and poor.any():
                    total += 1
                    wins += int(score[good].max() >= score[poor].max())
        dim = heads[name][0][0].in_features
        print(f"{name:<14}{dim:>8}{100 * m:>9.2f}%   {wins}/{total}")


if __name__ == "__main__":
    main()
