"""R-CNN fine-tuning samples: proposals labelled by overlap with the ground truth, mini-batches of fixed fg share.

A proposal whose best IoU with a ground-truth box is >= ``fg_iou`` (0.5) is a positive of that box's class; the
rest are background (R-CNN; ``bg_iou_low > 0`` keeps only background with IoU in ``[bg_iou_low, fg_iou)``, Fast
R-CNN's hard-ish negatives).  Ground-truth boxes themselves join the proposals as positives (R-CNN).  Boxes are
``Tensor[N, 4]`` xyxy pixels, no +1.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from detection.data.image_io import ImageDecodeError, read_image_rgb
from detection.data.records import ImageRecord

__all__ = ["label_proposals", "sample_indices", "labelled_images", "jittered_positives", "LabelledImage", "TrainItem",
           "member_draws", "batch_draws", "repeat_factors", "repeated", "epoch_order"]


@dataclass(kw_only=True)
class LabelledImage:
    """What sampling reads of a training image: its proposals' ``labels`` (0 background) and best IoU with the
    ground truth (``max_iou``), and whether it is exhaustively annotated (else it gives positives only)."""

    labels: Tensor
    max_iou: Tensor
    exhaustive: bool = True


@dataclass(kw_only=True)
class TrainItem(LabelledImage):
    """One training image at one level of fine-tuning: its labelled proposals (``boxes``, ground truth included), their
    RoIs on the cached trunk map and on its mirror (``rois``, ``rois_flip``), and where that map is cached (``level``:
    the cache's place in the trainer's list, 0 the model's own scale; ``slot``: the entry in it)."""

    image_id: str
    slot: tuple
    level: int
    boxes: Tensor
    rois: Tensor
    rois_flip: Tensor


def labelled_images(records: Sequence[ImageRecord], proposals: Sequence[Tensor | None], *, fg_iou: float = 0.5,
                    skipped: list, missing: list | None = None, start: int = 0
                    ) -> Iterator[tuple[int, ImageRecord, np.ndarray, Tensor, Tensor, Tensor]]:
    """The training images, decoded, with their proposals labelled (:func:`label_proposals`).

    Yields ``(position, record, image, boxes, labels, max_iou)``; ``position`` counts from ``start``.  An image
    without proposals (``None``) or that cannot be decoded is skipped and its message appended to ``skipped``
    (the positions of the former also to ``missing``, when given): counted, never silently dropped.
    """
    for j, (r, props) in enumerate(zip(records, proposals)):
        if props is None:
            skipped.append(f"{r.path}: no proposals")
            if missing is not None:
                missing.append(start + j)
            continue
        try:
            img = read_image_rgb(r.path)
        except ImageDecodeError as e:
            skipped.append(str(e))
            continue
        yield (start + j, r, img, *label_proposals(props, r.boxes, r.labels, fg_iou=fg_iou, exhaustive=r.exhaustive))


def label_proposals(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, fg_iou: float = 0.5,
                    add_gt: bool = True, exhaustive: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Label each proposal with the class of its best-overlapping ground truth, or 0 (background).

    Returns ``(boxes [P', 4], labels [P'] int64, max_iou [P'])``; with ``add_gt`` the ground-truth boxes come first
    (IoU 1 with themselves).  ``exhaustive=False`` (an image whose other objects are not boxed): only the positives
    are returned -- what is not boxed there may be an object, so no background is drawn from it (R-CNN).
    """
    boxes = proposals.float().reshape(-1, 4)
    gt_boxes = gt_boxes.float().reshape(-1, 4)
    if add_gt and len(gt_boxes):
        boxes = torch.cat([gt_boxes, boxes])
    labels = torch.zeros(len(boxes), dtype=torch.int64)
    max_iou = torch.zeros(len(boxes))
    if len(gt_boxes) and len(boxes):
        iou = box_iou(boxes, gt_boxes)  # [P', G]
        max_iou, arg = iou.max(1)
        fg = max_iou >= fg_iou
        labels[fg] = gt_labels.long()[arg[fg]]
    if not exhaustive:
        keep = labels > 0
        return boxes[keep], labels[keep], max_iou[keep]
    return boxes, labels, max_iou


def sample_indices(labels: Tensor, max_iou: Tensor, *, num: int, fg_fraction: float, generator: torch.Generator,
                   bg_iou_low: float = 0.0) -> Tensor:
    """Indices of one image's mini-batch share: up to ``round(num * fg_fraction)`` positives drawn at random without
    replacement, the rest background (fewer positives -> more background; too few of either -> a smaller batch)."""
    fg = torch.nonzero(labels > 0).flatten()
    bg = torch.nonzero((labels == 0) & (max_iou >= bg_iou_low)).flatten()
    if bg_iou_low > 0 and len(bg) < num:  # an image with few near misses: fall back to all background
        bg = torch.nonzero(labels == 0).flatten()
    n_fg = min(len(fg), round(num * fg_fraction))
    n_bg = min(len(bg), num - n_fg)
    pick_fg = fg[torch.randperm(len(fg), generator=generator)[:n_fg]]
    pick_bg = bg[torch.randperm(len(bg), generator=generator)[:n_bg]]
    return torch.cat([pick_fg, pick_bg])


def jittered_positives(gt_boxes: Tensor, *, width: int, height: int, n: int = 32, min_iou: float = 0.5,
                       seed: str | int = 0) -> Tensor:
    """Up to ``n`` boxes per ground-truth box overlapping it by IoU >= ``min_iou`` (centre shifted by up to a quarter
    of its size, each side scaled by 0.7-1.4, clipped to the image), the same for the same ``seed``.

    The positives of a photo that is not exhaustively annotated (one object boxed, e.g. Tiny ImageNet), where only
    positives are taken: what proposals overlapping the object by >= 0.5 would give, without running selective
    search and MultiBox on thousands of single-object photos.  ``Tensor[M, 4]`` xyxy pixels.
    """
    import hashlib

    gt = gt_boxes.float().reshape(-1, 4)
    if not len(gt) or n <= 0:
        return torch.zeros(0, 4)
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha1(str(seed).encode()).digest()[:8], "little") >> 1)
    out = []
    for b in gt:
        w, h = (b[2] - b[0]).clamp_min(1.0), (b[3] - b[1]).clamp_min(1.0)
        k = 4 * n
        r = torch.rand(k, 4, generator=gen)
        cx = (b[0] + b[2]) / 2 + (r[:, 0] - 0.5) * 0.5 * w
        cy = (b[1] + b[3]) / 2 + (r[:, 1] - 0.5) * 0.5 * h
        bw = w * torch.exp((r[:, 2] * 2 - 1) * 0.35)  # 0.70-1.42
        bh = h * torch.exp((r[:, 3] * 2 - 1) * 0.35)
        cand = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        cand[:, 0::2] = cand[:, 0::2].clamp(0, width)
        cand[:, 1::2] = cand[:, 1::2].clamp(0, height)
        ok = ((cand[:, 2] - cand[:, 0]) >= 1) & ((cand[:, 3] - cand[:, 1]) >= 1)
        cand = cand[ok]
        iou = box_iou(cand, b[None])[:, 0]
        out.append(cand[iou >= min_iou][:n])
    return torch.cat(out)


def member_draws(labels: Tensor, max_iou: Tensor, *, members: int, fg: int, bg: int, gen: torch.Generator,
                 balance: bool = False) -> tuple[Tensor, list[Tensor]]:
    """One image's RoIs for every member: ``(pool, picks)``.  ``pool`` (indices into the image's labelled
    proposals): up to 2*fg positives and 2*bg background, half of it near misses (IoU in [0.1, 0.5));
    ``picks[m]`` (indices into ``pool``): member m's up to ``fg`` positives and ``bg`` background, odd members'
    background from the near misses only (:func:`member_bg_iou_low`) -- the members differ in what they see, and
    the pool is RoI-pooled once.  ``balance``: positives drawn with about equal shares per class present
    (:func:`detection.training.roi.pick_positives`)."""
    from detection.training.roi import member_bg_iou_low, pick_positives, pool_indices

    pool = pool_indices(labels, max_iou, fg=2 * fg, bg=2 * bg, gen=gen, balance=balance)
    lab, iou = labels[pool], max_iou[pool]
    picks = []
    for m in range(members):
        pos = torch.nonzero(lab > 0).flatten()
        low = member_bg_iou_low(m)
        neg = torch.nonzero((lab == 0) & (iou >= low)).flatten()
        if low > 0 and len(neg) < bg:  # few near misses in this image: any background
            neg = torch.nonzero(lab == 0).flatten()
        picks.append(torch.cat([pick_positives(lab, pos, fg, gen, balance=balance),
                                neg[torch.randperm(len(neg), generator=gen)[:bg]]]))
    return pool, picks


def batch_draws(batch: list[LabelledImage], *, members: int, per_image: int, fg: int, gen: torch.Generator,
                balance: bool = False) -> list[tuple[Tensor, list[Tensor]]]:
    """:func:`member_draws` for each image of a mini-batch (items with ``labels``, ``max_iou``, ``exhaustive``):
    ``fg`` positives and ``per_image - fg`` background per image; a positives-only image gives no background, and
    the batch's exhaustive images draw its share instead, so the batch keeps R-CNN's 1:3."""
    n_exh = sum(it.exhaustive for it in batch)
    bg = round((per_image - fg) * len(batch) / max(1, n_exh))
    return [member_draws(it.labels, it.max_iou, members=members, fg=fg,
                         bg=bg if it.exhaustive else 0, gen=gen, balance=balance) for it in batch]


def repeat_factors(items: list[LabelledImage], *, thresh: float) -> list[float]:
    """Repeat-factor sampling (LVIS, Gupta et al. 2019): class c's factor is ``max(1, sqrt(thresh / f_c))``, ``f_c``
    the share of ``items`` (with ``labels``, ``exhaustive``) holding a positive of c; an exhaustively annotated
    image takes its rarest class's factor.  A positives-only image keeps 1: how many of them a class gets is their
    reader's setting (``per_class``), and they bring no background.  ``thresh <= 0``: all 1."""
    if thresh <= 0 or not items:
        return [1.0] * len(items)
    present = [set(it.labels[it.labels > 0].unique().tolist()) for it in items]
    counts: dict[int, int] = {}
    for cs in present:
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    per_class = {c: max(1.0, math.sqrt(thresh * len(items) / k)) for c, k in counts.items()}
    return [max((per_class[c] for c in cs), default=1.0) if it.exhaustive else 1.0
            for it, cs in zip(items, present)]


def repeated(factors: list[float], gen: torch.Generator) -> list[int]:
    """One epoch's image list: image i ``floor(r_i)`` times and once more with probability ``r_i - floor(r_i)``
    (stochastic rounding: over epochs image i is shown ``r_i`` times on average)."""
    u = torch.rand(len(factors), generator=gen).tolist()
    out = []
    for i, (r, x) in enumerate(zip(factors, u)):
        out += [i] * (int(r) + (x < r - int(r)))
    return out


def epoch_order(items: list[LabelledImage], gen: torch.Generator, factors: list[float] | None = None) -> list[int]:
    """A random order of ``items`` in which the positives-only images (``exhaustive`` False) are spread evenly
    among the others, so consecutive mini-batches mix them and each keeps background to learn from.  With every
    image exhaustive it is ``randperm``.  ``factors`` (:func:`repeat_factors`): each image is taken as often as
    :func:`repeated` says, the repeats shuffled in with the rest."""
    if factors is not None and any(f != 1.0 for f in factors):
        pool = repeated(factors, gen)
        perm = [pool[k] for k in torch.randperm(len(pool), generator=gen).tolist()]
    else:
        perm = torch.randperm(len(items), generator=gen).tolist()
    full = [i for i in perm if items[i].exhaustive]
    part = [i for i in perm if not items[i].exhaustive]
    if not part or not full:
        return perm
    keyed = [((k + 0.5) / len(full), 0, i) for k, i in enumerate(full)] + \
            [((k + 0.5) / len(part), 1, i) for k, i in enumerate(part)]
    return [i for _, _, i in sorted(keyed)]
