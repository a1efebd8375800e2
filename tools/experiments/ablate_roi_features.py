#!/usr/bin/env python
"""Which frozen-trunk RoI features should the embedded region heads use?  (An experiment; no assertions.)

One trunk pass per image gives several candidate features of each context-padded proposal: the 1 280-channel
``conv_head`` map 2x2 (``last2``), the 320-channel ``blocks.6`` map before it 4x4 (``stem4``), the stride-16
``blocks.4`` map 4x4 / 6x6 (``mid4`` / ``mid6``), and context regions of ``blocks.6``: the context window enlarged
2x about its centre, 4x4 or 2x2 (``ctx2``, ``ctx2s``), or 3x, 2x2 (``ctx3s``) -- ``RegionConfig.context_regions``.
For each variant one MLP head (5 120 -> 256 -> 201 for the first two) is trained with R-CNN sampling (32 positives +
96 background per image, 5 epochs) on a random subset of the train split, then scored (ILSVRC protocol) on the first
images of val with ``paper`` proposals (cached, computed where missing).  ``--seeds``: one head per seed, each scored
alone (their mean printed, and each) and all of them with their softmax averaged.  It also counts, per scored
object, whether its best well-localised proposal (IoU >= 0.5) outscores its best poorly-localised one
(0.1 <= IoU < 0.5): features that cannot tell them apart lose the object in NMS.

``--dev-every N`` scores on a dev split carved from train instead of val: every N-th voc07/train photo (the first
``--dev-images``), the heads training on the first ``--train-images`` of the other voc07/train photos, selective
search k x 2 as proposals for both.  ``--trunk default`` reads the embedded classifiers' trunk (its fine-tuned
stages) instead of the ImageNet one: what heads retrained on the shipped trunk would see.

    python tools/experiments/ablate_roi_features.py --train-images 600 --val-images 150        # the RoI maps, ~10 min
    python tools/experiments/ablate_roi_features.py --dev-every 5 --train-images 1500 --dev-images 300 --trunk default \
        --variants stem4 stem4+ctx2s stem4+ctx3s stem4+ctx2 --fg-iou 0.6 --seeds 0 1 2 3 4 5   # context regions, 55 min
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
from detection.models.region import RegionConfig, RegionEnsemble, enlarge_rois
from detection.progress import progress as progress_bar
from detection.training.roi import pool_indices
from detection.training.sampler import labelled_images

hs.register_schemas()

VARIANTS = {"last2": ["last2"], "stem4": ["stem4"], "last2+mid4": ["last2", "mid4"], "stem4+mid4": ["stem4", "mid4"],
            "last2+mid6": ["last2", "mid6"], "stem4+ctx2": ["stem4", "ctx2"], "stem4+ctx2s": ["stem4", "ctx2s"],
            "stem4+ctx3s": ["stem4", "ctx3s"]}
DEFAULT_VARIANTS = ["last2", "stem4", "last2+mid4", "stem4+mid4", "last2+mid6"]
CONTEXT = {"ctx2": (2.0, 4), "ctx2s": (2.0, 2), "ctx3s": (3.0, 2)}  # (enlargement, grid) on blocks.6


def load_split(name: str, n: int, *, train: bool, data_root: str | None, dev_every: int = 0):
    """(dataset restricted to n images, their proposals).  ``dev_every`` 0: train = a seeded random subset of
    ``name`` with the training proposals (SS k x 2), val = the first n images of ``name`` with ``paper`` proposals.
    ``dev_every`` N: from voc07/train, SS k x 2 for both; dev (``train=False``) = the first n photos at positions
    0, N, 2N, ..., train = the first n of the others."""
    overrides = [f"dataset={name}", "proposals=paper"] + (["proposals.multibox.top_k=0"] if train or dev_every else [])
    if data_root:
        overrides.append(f"data_root={data_root}")
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_proposals", overrides=overrides)
    hs.resolve_data_root(cfg)
    ds = instantiate(cfg.dataset, _convert_="all")
    if dev_every:
        voc = [r for r in ds.records if r.source == "voc07_train"]
        if not voc:
            raise SystemExit(f"--dev-every: {name} holds no voc07/train photos to carve a dev split from")
        ds.records = [r for i, r in enumerate(voc) if (i % dev_every == 0) != train][:n]
    else:
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
    ap.add_argument("--val-images", "--dev-images", type=int, default=150, dest="val_images")
    ap.add_argument("--dev-every", type=int, default=0, help="score on every N-th voc07/train photo, not val")
    ap.add_argument("--image-size", type=int, default=600, help="shorter side of the trunk's input")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--fg-iou", type=float, default=0.5, help="a proposal is its object's positive from this IoU")
    ap.add_argument("--trunk", choices=["imagenet", "default"], default="imagenet",
                    help="the ImageNet Lite0 or the embedded classifiers' trunk (their fine-tuned stages)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="train each head once per seed")
    ap.add_argument("--data-root", default=None, help="default: $DET_DATA_ROOT or ../shared/data")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.trunk == "default":
        from detection.models.region import load_ensemble

        model = load_ensemble().eval()
        if args.image_size != model.cfg.image_size:
            raise SystemExit(f"--trunk default reads photos at the embedded classifiers' {model.cfg.image_size} px; "
                             f"--image-size {args.image_size} applies to --trunk imagenet only")
        bb = model.backbones[0]
    else:
        bb = build_backbone("lite0").eval()
        model = RegionEnsemble(cfg=RegionConfig(members=1, image_size=args.image_size,
                                                max_image_size=round(args.image_size * 5 / 3)), backbones=[bb]).eval()
    taps: dict = {}
    for layer in ("blocks.4", "blocks.6"):
        bb.features.get_submodule(layer).register_forward_hook(lambda m, i, o, layer=layer: taps.__setitem__(layer, o))
    wanted = sorted({k for v in args.variants for k in VARIANTS[v]})

    def features(img, boxes) -> dict:
        x, scale = model.prepare_image(img)
        last = bb(x[None])
        r32 = model.rois(boxes, scale=scale)
        r16 = r32.clone()
        r16[:, 1:] *= 2

        def pool(f, r, s):
            return roi_align(f, r, output_size=s, spatial_scale=1.0, sampling_ratio=2, aligned=True).flatten(1)

        make = {"last2": lambda: pool(last, r32, 2), "stem4": lambda: pool(taps["blocks.6"], r32, 4),
                "mid4": lambda: pool(taps["blocks.4"], r16, 4), "mid6": lambda: pool(taps["blocks.4"], r16, 6)}
        for k, (factor, grid) in CONTEXT.items():
            make[k] = lambda factor=factor, grid=grid: pool(taps["blocks.6"], enlarge_rois(r32, factor), grid)
        return {k: make[k]() for k in wanted}

    train, train_props = load_split("train", args.train_images, train=True, data_root=args.data_root,
                                    dev_every=args.dev_every)
    feats: dict = {k: [] for k in wanted}
    labels, skipped = [], []
    with torch.inference_mode():
        boxes_of = [p["boxes"] if p is not None else None for p in train_props]
        for i, _r, img, boxes, lab, max_iou in progress_bar(
                labelled_images(train.records, boxes_of, fg_iou=args.fg_iou, skipped=skipped),
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
    for name in args.variants:
        keys = VARIANTS[name]
        x = torch.cat([feats[k] for k in keys], 1)
        mean, std = x.float().mean(0), x.float().std(0) + 1e-3
        for seed in args.seeds:
            torch.manual_seed(seed)
            head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(256, 201))
            opt = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-4)
            steps = math.ceil(len(fg) / 32)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps * args.epochs)
            t = time.perf_counter()
            for _ in progress_bar(range(args.epochs), desc=f"head {name} seed {seed}", unit="epoch"):
                perm = fg[torch.randperm(len(fg))]
                for s in range(steps):
                    b = torch.cat([perm[s * 32:(s + 1) * 32], bg[torch.randint(len(bg), (96,))]])
                    loss = torch.nn.functional.cross_entropy(head((x[b].float() - mean) / std), y[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
            heads[name, seed] = (head.eval(), keys, mean, std)
            print(f"{name} seed {seed}: {x.shape[1]} inputs, trained in {time.perf_counter() - t:.0f} s, "
                  f"last loss {loss.item():.3f}")

    split = "dev" if args.dev_every else "val"
    val, val_props = load_split("train" if args.dev_every else "val", args.val_images, train=False,
                                data_root=args.data_root, dev_every=args.dev_every)
    probs: dict = {key: [] for key in heads}
    with torch.inference_mode():
        for r, p in progress_bar(list(zip(val.records, val_props)), desc=split, unit="img"):
            f = features(read_image_rgb(r.path), p["boxes"])
            for key, (head, keys, mean, std) in heads.items():
                probs[key].append(head((torch.cat([f[k] for k in keys], 1) - mean) / std).softmax(-1))
    # per scored object with both kinds of proposal: (image, class, well-localised mask, poorly-localised mask)
    contests = []
    for i, (r, p) in enumerate(zip(val.records, val_props)):
        if len(r.boxes):
            iou = box_iou(r.boxes, p["boxes"])
            for g in range(len(r.boxes)):
                good, poor = iou[g] >= 0.5, (iou[g] >= 0.1) & (iou[g] < 0.5)
                if good.any() and poor.any():
                    contests.append((i, int(r.labels[g]), good, poor))

    def score(prs: list) -> tuple[float, int]:
        """(mAP in %, objects whose well-localised proposal wins) of per-image softmax ``prs``."""
        per = [postprocess(p["boxes"], pr, nms_iou=0.3) for p, pr in zip(val_props, prs)]
        m = 100 * evaluate(Detections.from_per_image(per), val, protocol="ilsvrc").map
        won = sum(int(prs[i][good, c].max() >= prs[i][poor, c].max()) for i, c, good, poor in contests)
        return m, won

    print(f"\n{'variant':<14}{'inputs':>8}{f'{split} mAP':>10}{'seeds averaged':>16}{'per seed':>12}"
          "   well- beats poorly-localised")
    for name in args.variants:
        ens, _ = score([torch.stack([probs[name, seed][i] for seed in args.seeds]).mean(0)
                        for i in range(len(val_props))])
        maps, wins = zip(*(score(probs[name, seed]) for seed in args.seeds))
        dim = heads[name, args.seeds[0]][0][0].in_features
        print(f"{name:<14}{dim:>8}{sum(maps) / len(maps):>9.2f}%{ens:>15.2f}%   "
              f"{' '.join(f'{m:.2f}' for m in maps)}   {sum(wins) / len(wins):.0f}/{len(contests)}")

if __name__ == "__main__":
    main()
