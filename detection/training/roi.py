"""Training settings and R-CNN sampling helpers shared by the region-classifier trainers.

R-CNN fine-tuning semantics (``sampler``): a proposal with IoU >= 0.5 to a ground-truth box is a positive of its class,
the rest background; ground-truth boxes join as positives.  Members of an ensemble differ in seed and in sampling
(odd members draw background only from the near misses, IoU in [0.1, 0.5)).  The roi-mode trainer is
``detection.training.finetune``; the warp-mode trainer ``detection.training.warp``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["MemberSettings", "member_bg_iou_low", "pool_indices", "pick_positives"]


@dataclass
class MemberSettings:
    """How the region classifiers train (``tools/train_classifier.py``'s ``train.*``): the recipe's defaults."""

    epochs: int = 4
    rois_per_batch: int = 128
    fg_fraction: float = 0.25
    # a proposal with IoU >= fg_iou to an object is its positive, below it background: 0.6, chosen on a dev split
    # carved from train over 0.5 / 0.7 (tools/experiments/ablate_finetune.py --fg-iou; docs/classifiers.md)
    fg_iou: float = 0.6
    fg_per_image: int = 32  # the cached pool of RoIs per training image
    bg_per_image: int = 96
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    flip: bool = True
    # image-centric fine-tuning (model.trainable_stages, detection.training.finetune): images per mini-batch (each
    # gives every member rois_per_batch / images_per_batch RoIs) and the fine-tuned stages' learning-rate factor
    # (0: the stages stay as they are and only the heads train, e.g. heads grown from a fine-tuned model's)
    images_per_batch: int = 2
    trunk_lr_scale: float = 0.1
    # rare classes (issue 15): repeat-factor sampling (LVIS, Gupta et al. 2019) -- an exhaustively annotated image
    # is shown max(1, sqrt(repeat_thresh / f_c)) times an epoch for its rarest class c (f_c: the share of training
    # images holding c); 0 turns it off.  balance_positives: an image's positives are drawn with equal shares per
    # class present (a mouse beside a person is not drowned by the person's many overlapping proposals)
    repeat_thresh: float = 0.0
    balance_positives: bool = False
    # multi-scale training (Fast R-CNN's image pyramid, matched to multi-scale testing): shorter sides, the model's
    # image_size among them, e.g. [600, 1200].  Every image trains at image_size as before; an exhaustively annotated
    # image with an object that the test-time rule (RegionEnsemble.assign_scales) reads at another level also trains
    # there, on the proposals that rule sends to that level.  None: image_size only.  multiscale_sources: the parts of
    # a composite dataset that take part (None: all), since each level costs its own trunk-map cache
    image_sizes: Optional[List[int]] = None
    multiscale_sources: Optional[List[str]] = None


def member_bg_iou_low(member: int) -> float:
    """Background lower IoU bound of member ``member``: the members differ in sampling (the paper's did)."""
    return 0.1 if member % 2 else 0.0


def _pick(idx: Tensor, n: int, gen: torch.Generator) -> Tensor:
    return idx[torch.randperm(len(idx), generator=gen)[:n]]


def pick_positives(labels: Tensor, idx: Tensor, n: int, gen: torch.Generator, *, balance: bool = False) -> Tensor:
    """Up to ``n`` of the positives ``idx`` (indices into ``labels``), without repeats: uniformly, or with
    ``balance`` in equal shares per class present -- round robin over the classes (in a random order) taking each
    class's positives in a random order, so a class with fewer positives than its share gives them all and the rest
    goes to the others.  With one class present both draw alike."""
    if not balance or len(idx) <= n:
        return _pick(idx, n, gen)
    cls = labels[idx]
    classes = torch.unique(cls)
    if len(classes) == 1:
        return _pick(idx, n, gen)
    queues = [_pick(idx[cls == c], int((cls == c).sum()), gen)
              for c in classes[torch.randperm(len(classes), generator=gen)]]
    out: list[Tensor] = []
    for k in range(max(len(q) for q in queues)):
        out += [q[k] for q in queues if k < len(q)]
        if len(out) >= n:
            break
    return torch.stack(out[:n])


def pool_indices(labels: Tensor, max_iou: Tensor, *, fg: int, bg: int, gen: torch.Generator,
                 balance: bool = False) -> Tensor:
    """One image's cached RoIs: up to ``fg`` positives (class-balanced with ``balance``: :func:`pick_positives`),
    ``bg`` background (half near misses, IoU >= 0.1, half the rest; a short side is filled from the other)."""
    pos = pick_positives(labels, torch.nonzero(labels > 0).flatten(), fg, gen, balance=balance)
    near = torch.nonzero((labels == 0) & (max_iou >= 0.1)).flatten()
    far = torch.nonzero((labels == 0) & (max_iou < 0.1)).flatten()
    n_near = min(len(near), max(bg // 2, bg - len(far)))
    return torch.cat([pos, _pick(near, n_near, gen), _pick(far, bg - n_near, gen)])
