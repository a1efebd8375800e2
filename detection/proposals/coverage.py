"""Proposal coverage: the share of ground-truth boxes that some proposal overlaps with IoU >= t (recall at IoU t)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["best_iou", "CoverageResult", "coverage"]

DEFAULT_COUNTS = (10, 20, 50, 100, 200, 300, 500, 1000, 1500, 2000, 3000, 5000)


def best_iou(proposals: Tensor, gt: Tensor, *, top_n: Sequence[int] = ()) -> Tensor:
    """For each ground-truth box, the best IoU over all proposals, and over the first ``n`` for each ``n``.

    Args:
        proposals: ``Tensor[N, 4]`` xyxy, in ranking order.
        gt: ``Tensor[G, 4]`` xyxy.
    Returns:
        ``Tensor[1 + len(top_n), G]``: row 0 over all proposals, row ``1 + i`` over ``proposals[:top_n[i]]``.
    """
    out = torch.zeros(1 + len(top_n), gt.shape[0])
    if gt.shape[0] == 0 or proposals.shape[0] == 0:
        return out
    iou = box_iou(gt.float(), proposals.float())  # [G, N]
    # running maximum along the ranking: best IoU among the first j proposals
    run = torch.cummax(iou, dim=1).values
    out[0] = run[:, -1]
    for i, n in enumerate(top_n):
        out[1 + i] = run[:, min(n, proposals.shape[0]) - 1] if n > 0 else 0.0
    return out


@dataclass
class CoverageResult:
    """Coverage of a proposal set over a dataset.

    ``recall[t]``: share of ground-truth boxes covered at IoU >= t; ``curve``: recall@0.5 when each image keeps its
    first n proposals, for the n in ``counts``; ``per_class[label]``: recall@0.5 per DET class.
    """

    num_images: int
    num_gt: int
    proposals_per_image: float
    recall: dict[float, float]
    counts: list[int]
    curve: list[float]
    per_class: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"num_images": self.num_images, "num_gt": self.num_gt,
                "proposals_per_image": self.proposals_per_image,
                "recall": {str(k): v for k, v in self.recall.items()},
                "curve": {"counts": self.counts, "recall@0.5": self.curve},
                "per_class": {str(k): v for k, v in self.per_class.items()}}


def coverage(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor] | None = None, *,
             thresholds: Sequence[float] = (0.5, 0.7), counts: Sequence[int] = DEFAULT_COUNTS) -> CoverageResult:
    """Coverage of per-image proposal lists (each ``Tensor[N_i, 4]`` xyxy, ranked) of per-image ground truth."""
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"{len(proposals)} proposal lists for {len(gt_boxes)} images")
    best_all, best_top, labels = [], [], []
    for i, (p, g) in enumerate(zip(proposals, gt_boxes)):
        b = best_iou(p, g, top_n=counts)
        best_all.append(b[0])
        best_top.append(b[1:])
        if gt_labels is not None:
            labels.append(gt_labels[i])
    best = torch.cat(best_all) if best_all else torch.zeros(0)
    num_gt = int(best.numel())
    recall = {float(t): (float((best >= t).float().mean()) if num_gt else float("nan")) for t in thresholds}
    top = torch.cat(best_top, dim=1) if best_top else torch.zeros(len(counts), 0)
    curve = [float((top[i] >= 0.5).float().mean()) if num_gt else float("nan") for i in range(len(counts))]
    per_class = {}
    if gt_labels is not None and num_gt:
        lab = torch.cat(labels)
        for c in torch.unique(lab).tolist():
            per_class[int(c)] = float((best[lab == c] >= 0.5).float().mean())
    ppi = float(np.mean([len(p) for p in proposals])) if len(proposals) else 0.0
    return CoverageResult(num_images=len(proposals), num_gt=num_gt, proposals_per_image=ppi, recall=recall,
                          counts=list(counts), curve=curve, per_class=per_class)
