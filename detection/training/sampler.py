"""R-CNN fine-tuning samples: proposals labelled by overlap with the ground truth, mini-batches of fixed fg share.

A proposal whose best IoU with a ground-truth box is >= ``fg_iou`` (0.5) is a positive of that box's class; the
rest are background (R-CNN; ``bg_iou_low > 0`` keeps only background with IoU in ``[bg_iou_low, fg_iou)``, Fast
R-CNN's hard-ish negatives).  Ground-truth boxes themselves join the proposals as positives (R-CNN).  Boxes are
``Tensor[N, 4]`` xyxy pixels, no +1.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from detection.data.image_io import ImageDecodeError, read_image_rgb
from detection.data.records import ImageRecord

__all__ = ["label_proposals", "sample_indices", "labelled_images", "jittered_positives"]


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
