"""Training ``roi``-mode ensemble members on a frozen trunk: RoI features pooled once (cached), MLP heads trained.

R-CNN fine-tuning semantics (``sampler``): a proposal with IoU >= 0.5 to a ground-truth box is a positive of its class,
the rest background; ground-truth boxes join as positives.  Each training image contributes a fixed pool of RoIs (up to
``fg_per_image`` (32) positives and ``bg_per_image`` (96) background, half of it near misses with IoU in [0.1, 0.5)), pooled
once from the frozen trunk's map.  Mini-batches are R-CNN's: ``rois_per_batch`` (128) with a ``fg_fraction`` (1/4:
32 positives + 96 background), drawn across all images; horizontal flips (the pooled grid mirrored).  Members differ
in seed (init, order, draws, flips) and in sampling (odd members draw background only from the near misses).

Nothing is lost to a kill: feature chunks and per-epoch checkpoints are written atomically; a restart with the same
settings continues.  Under ``torchrun`` every rank takes its share of each mini-batch and DDP averages the gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from detection.data.records import DetectionDataset
from detection.models.region import RegionEnsemble, roi_pool
from detection.training.loop import MemberRun
from detection.training.sampler import labelled_images

__all__ = ["MemberSettings", "RoIPool", "compute_roi_features", "train_member", "member_bg_iou_low"]

CHUNK = 64


@dataclass
class MemberSettings:
    epochs: int = 5
    rois_per_batch: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    fg_per_image: int = 32  # the cached pool of RoIs per training image
    bg_per_image: int = 96
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    flip: bool = True
    # image-centric fine-tuning (model.trainable_stages, detection.training.finetune): images per mini-batch (each
    # gives every member rois_per_batch / images_per_batch RoIs) and the fine-tuned stages' learning-rate factor
    images_per_batch: int = 2
    trunk_lr_scale: float = 0.1


@dataclass
class RoIPool:
    """Pooled RoI features of a training split: ``feats [R, C, s, s]`` fp16, ``labels [R]``, ``max_iou [R]``,
    ``image [R]`` (position of the RoI's image in the dataset), and the messages of skipped images."""

    feats: Tensor
    labels: Tensor
    max_iou: Tensor
    image: Tensor
    skipped: list
    _stats: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    def feature_stats(self, chunk: int = 65536) -> tuple[Tensor, Tensor]:
        """Per-feature mean and std ``[C, s, s]`` over every RoI and its mirror image (training flips, so the
        statistics are made symmetric); std + 1e-3, for the heads' input standardisation.  Computed once."""
        if self._stats is None:
            s1 = torch.zeros(self.feats.shape[1:], dtype=torch.float64)
            s2 = torch.zeros_like(s1)
            for i in range(0, len(self.feats), chunk):
                x = self.feats[i:i + chunk].double()
                s1 += x.sum(0)
                s2 += (x * x).sum(0)
            n = len(self.feats)
            s1, s2 = (s1 + s1.flip(-1)) / (2 * n), (s2 + s2.flip(-1)) / (2 * n)
            std = (s2 - s1 * s1).clamp_min(0).sqrt() + 1e-3
            self._stats = (s1.float(), std.float())
        return self._stats


def member_bg_iou_low(member: int) -> float:
    """Background lower IoU bound of member ``member``: the members differ in sampling (the paper's did)."""
    return 0.1 if member % 2 else 0.0


def _pick(idx: Tensor, n: int, gen: torch.Generator) -> Tensor:
    return idx[torch.randperm(len(idx), generator=gen)[:n]]


def pool_indices(labels: Tensor, max_iou: Tensor, *, fg: int, bg: int, gen: torch.Generator) -> Tensor:
    """One image's cached RoIs: up to ``fg`` positives, ``bg`` background (half near misses, IoU >= 0.1, half the
    rest; a short side is filled from the other)."""
    pos = _pick(torch.nonzero(labels > 0).flatten(), fg, gen)
    near = torch.nonzero((labels == 0) & (max_iou >= 0.1)).flatten()
    far = torch.nonzero((labels == 0) & (max_iou < 0.1)).flatten()
    n_near = min(len(near), max(bg // 2, bg - len(far)))
    return torch.cat([pos, _pick(near, n_near, gen), _pick(far, bg - n_near, gen)])


@torch.inference_mode()
def compute_roi_features(dataset: DetectionDataset, model: RegionEnsemble, proposals: list[Tensor | None], *,
                         settings: MemberSettings, cache_dir: str | Path, key: str, progress: bool = True,
                         log=print, shard: tuple[int, int] | None = None) -> RoIPool | None:
    """Pooled RoI features of every image, cached in chunks under ``cache_dir/key``.

    ``proposals[i]``: the proposals of ``dataset.records[i]`` (``None``: an image the proposal stage could not read).
    Unreadable images are reported and skipped.  ``shard=(rank, world_size)``: only compute (and cache) chunks
    ``rank::world_size`` and return ``None`` -- under torchrun each rank fills its part of the cache, then, after a
    barrier, every rank reads all of it.
    """
    model.backbones[0].eval()
    out_dir = Path(cache_dir) / key
    out_dir.mkdir(parents=True, exist_ok=True)
    parts, skipped = [], []
    n_chunks = math.ceil(len(dataset) / CHUNK)
    for ci in tqdm(range(n_chunks), desc=f"RoI features {dataset.name}", unit="chunk", disable=not progress):
        path = out_dir / f"chunk{ci:05d}.pt"
        if shard is not None and ci % shard[1] != shard[0]:
            continue
        chunk = torch.load(path, weights_only=True) if path.exists() else None
        if chunk is not None and any(proposals[p] is not None for p in chunk.get("no_proposals", [])):
            chunk = None  # computed while some proposals were missing: they are there now, so it is stale
        if chunk is None:
            chunk = {"feats": [], "labels": [], "max_iou": [], "image": [], "skipped": [], "no_proposals": []}
            rng = slice(ci * CHUNK, (ci + 1) * CHUNK)
            for pos, _r, img, boxes, labels, max_iou in labelled_images(
                    dataset.records[rng], proposals[rng], fg_iou=settings.fg_iou, skipped=chunk["skipped"],
                    missing=chunk["no_proposals"], start=ci * CHUNK):
                gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + pos)
                keep = pool_indices(labels, max_iou, fg=settings.fg_per_image, bg=settings.bg_per_image, gen=gen)
                x, scale = model.prepare_image(img)
                pooled = roi_pool(model.roi_map(x[None]), model.rois(boxes[keep], scale=scale),
                                  roi_size=model.cfg.roi_size)
                chunk["feats"].append(pooled.half().cpu())
                chunk["labels"].append(labels[keep])
                chunk["max_iou"].append(max_iou[keep])
                chunk["image"].append(torch.full((len(keep),), pos, dtype=torch.int64))
            chunk = {k: (torch.cat(v) if v else None) if k in ("feats", "labels", "max_iou", "image") else v
                     for k, v in chunk.items()}
            tmp = path.with_suffix(".tmp")
            torch.save(chunk, tmp)
            tmp.replace(path)
        if shard is None:
            parts.append(chunk)
            skipped += chunk["skipped"]
    if shard is not None:
        return None
    for s in skipped:
        log(f"RoI features: skipped {s}")
    parts = [p for p in parts if p["feats"] is not None]
    if not parts:
        raise RuntimeError(f"{dataset.name}: no training RoIs (every image was skipped)")
    return RoIPool(*(torch.cat([p[k] for p in parts]) for k in ("feats", "labels", "max_iou", "image")),
                   skipped=skipped)


def train_member(model: RegionEnsemble, member: int, pool: RoIPool, *, settings: MemberSettings,
                 out_dir: str | Path, rank: int = 0, world_size: int = 1, progress: bool = True, log=print) -> dict:
    """Train ``model.heads[member]`` on ``pool``; checkpoint every epoch to ``out_dir/member{m}.ckpt``; resume.

    An epoch draws every positive once (``fg_fraction * rois_per_batch`` per batch) with fresh background.
    Returns the member's training record (per-epoch loss, RoI accuracy, seconds).
    """
    out_dir = Path(out_dir)
    head = model.heads[member]
    torch.manual_seed(settings.seed * 7919 + member)  # the member's own initialisation
    for mod in head.modules():
        if isinstance(mod, nn.Linear):
            mod.reset_parameters()
    if getattr(head, "standardize", False):
        head.set_feature_stats(*pool.feature_stats())
    ddp = head
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(head)
    bg_low = member_bg_iou_low(member)
    fg_idx = torch.nonzero(pool.labels > 0).flatten()
    bg_idx = torch.nonzero((pool.labels == 0) & (pool.max_iou >= bg_low)).flatten()
    n_fg = round(settings.rois_per_batch * settings.fg_fraction)
    n_bg = settings.rois_per_batch - n_fg
    if len(fg_idx) == 0 or len(bg_idx) == 0:
        raise RuntimeError(f"member {member}: the RoI pool has {len(fg_idx)} positives and {len(bg_idx)} background")
    steps = math.ceil(len(fg_idx) / n_fg)
    run = MemberRun(head, settings=settings, steps_per_epoch=steps, ckpt=out_dir / f"member{member}.ckpt",
                    record={"member": member, "bg_iou_low": bg_low, "positives": len(fg_idx),
                            "background": len(bg_idx)}, log=log)
    for epoch in range(run.start_epoch, settings.epochs):
        # one generator per (member, epoch): a resumed run draws exactly what an uninterrupted one would
        gen = torch.Generator().manual_seed((settings.seed * 1000 + member) * 100_003 + epoch)
        fg_perm = fg_idx[torch.randperm(len(fg_idx), generator=gen)]
        head.train()
        for s in tqdm(range(steps), desc=f"member {member} epoch {epoch + 1}/{settings.epochs}", unit="step",
                      leave=False, disable=not progress or rank != 0):
            fg = fg_perm[s * n_fg:(s + 1) * n_fg]
            if len(fg) < n_fg:  # the last batch: top up with positives from the start of the epoch
                fg = torch.cat([fg, fg_perm[:n_fg - len(fg)]])
            bg = bg_idx[torch.randint(len(bg_idx), (n_bg,), generator=gen)]
            batch = torch.cat([fg, bg])
            flip = torch.rand(len(batch), generator=gen) < 0.5
            flip &= settings.flip
            mine = slice(rank, None, world_size)  # every rank takes its share of the batch
            x = pool.feats[batch[mine]].float()
            x = torch.where(flip[mine][:, None, None, None], x.flip(-1), x)
            y = pool.labels[batch[mine]]
            run.step(ddp(x), y)
        run.end_epoch(epoch, save=rank == 0)
    return run.finish()
