"""Training ``warp``-mode members (the paper's configuration): R-CNN fine-tuning of whole networks on warped crops.

Each step takes ``images_per_step`` images, labels their proposals (``sampler``), draws R-CNN's 1/4 positives from
each, warps the RoIs with 16 px of context to ``crop_size`` (``detection.crops``), mirrors half of them, and trains
the member's backbone and head with cross-entropy.  Members own their backbones (``shared_trunk=False``) or share a
frozen one.  Per-epoch checkpoints (atomic) make a killed run resume; under ``torchrun`` every rank takes its share of
each step's images and DDP averages the gradients.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from detection.progress import progress as progress_bar

from detection.crops import warp_crops
from detection.data.records import DetectionDataset
from detection.models.backbones import build_backbone
from detection.models.region import RegionConfig, RegionEnsemble
from detection.training.loop import MemberRun
from detection.training.roi import MemberSettings, member_bg_iou_low
from detection.training.sampler import labelled_images, sample_indices

__all__ = ["train_warp_members"]


class _Member(nn.Module):
    """Backbone + head as one module (what DDP wraps)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, train_backbone: bool):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.train_backbone = train_backbone
        backbone.requires_grad_(train_backbone)

    def forward(self, crops: Tensor) -> Tensor:
        if self.train_backbone:
            return self.head(self.backbone(crops))
        with torch.no_grad():
            fmap = self.backbone.eval()(crops)
        return self.head(fmap)


def _load_images(dataset: DetectionDataset, proposals: list[Tensor | None], fg_iou: float, log) -> list[dict]:
    skipped: list = []
    items = [{"image": img, "boxes": boxes, "labels": labels, "max_iou": max_iou}
             for _pos, _r, img, boxes, labels, max_iou in labelled_images(dataset.records, proposals, fg_iou=fg_iou,
                                                                          skipped=skipped)]
    for s in skipped:
        log(f"warp training: skipped {s}")
    if not items:
        raise RuntimeError(f"{dataset.name}: no training images (every image was skipped)")
    return items


def train_warp_members(cfg: RegionConfig, settings: MemberSettings, dataset: DetectionDataset,
                       proposals: list[Tensor | None], *, out_dir: str | Path, only: list[int] | None = None,
                       backbone_weights: str | None = "imagenet", images_per_step: int = 2, rank: int = 0,
                       world_size: int = 1, progress: bool = True, log=print) -> tuple[RegionEnsemble, dict]:
    """Train the members of a warp-mode ensemble (all, or those in ``only``); returns (ensemble, record).

    The images of the split are held in memory (this path is for small subsets on a CPU, or a GPU).
    """
    if cfg.mode != "warp":
        raise ValueError("train_warp_members trains warp-mode ensembles (cfg.mode='warp')")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_backbones = 1 if cfg.shared_trunk else cfg.members
    backbones = [build_backbone(cfg.backbone, weights=backbone_weights) for _ in range(n_backbones)]
    model = RegionEnsemble(cfg=cfg, backbones=backbones)
    items = _load_images(dataset, proposals, settings.fg_iou, log)
    norm = backbones[0]
    images = [norm.normalize(torch.from_numpy(it["image"].copy()).permute(2, 0, 1)) for it in items]
    record = {"members": [], "mode": "warp", "backbone_weights": str(backbone_weights), "images": len(items)}
    per_step = images_per_step * world_size
    steps = math.ceil(len(items) / per_step)
    rois_per_image = settings.rois_per_batch // images_per_step
    for m in (only if only is not None else range(cfg.members)):
        torch.manual_seed(settings.seed * 7919 + m)
        for mod in model.heads[m].modules():
            if isinstance(mod, nn.Linear):
                mod.reset_parameters()
        member = _Member(model._backbone(m), model.heads[m], train_backbone=not cfg.shared_trunk)
        net = member
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(member)
        run = MemberRun(member, settings=settings, steps_per_epoch=steps, ckpt=out_dir / f"member{m}.ckpt",
                        record={"member": m, "bg_iou_low": member_bg_iou_low(m)}, log=log)
        for epoch in range(run.start_epoch, settings.epochs):
            gen = torch.Generator().manual_seed((settings.seed * 1000 + m) * 100_003 + epoch)
            perm = torch.randperm(len(items), generator=gen).tolist()
            if len(perm) % per_step:  # equal shares for every rank in every step
                perm += (perm * per_step)[:per_step - len(perm) % per_step]
            member.train()
            for s in progress_bar(range(0, len(perm), per_step), desc=f"member {m} epoch {epoch + 1}/{settings.epochs}",
                          unit="step", leave=False, disable=not progress or rank != 0):
                crops, targets = [], []
                for i in perm[s:s + per_step][rank::world_size]:
                    it = items[i]
                    idx = sample_indices(it["labels"], it["max_iou"], num=rois_per_image,
                                         fg_fraction=settings.fg_fraction, generator=gen,
                                         bg_iou_low=member_bg_iou_low(m))
                    c = warp_crops(images[i], it["boxes"][idx], size=cfg.crop_size, padding=cfg.context_padding)
                    if settings.flip:
                        flip = torch.rand(len(c), generator=gen) < 0.5
                        c = torch.where(flip[:, None, None, None], c.flip(-1), c)
                    crops.append(c)
                    targets.append(it["labels"][idx])
                run.step(net(torch.cat(crops)), torch.cat(targets))
            run.end_epoch(epoch, save=rank == 0)
        record["members"].append(run.finish())
    return model.eval(), record
