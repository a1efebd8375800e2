"""MultiBox priors: k-means of the training ground-truth boxes in normalised ``(x1, y1, x2, y2)`` coordinates."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["kmeans_priors"]


def kmeans_priors(boxes_norm: Tensor, *, k: int, seed: int = 0, iters: int = 50) -> Tensor:
    """k-means (k-means++ init, Lloyd iterations, Euclidean on the 4 coordinates) of normalised boxes.

    Args:
        boxes_norm: ``Tensor[M, 4]`` xyxy in ``[0, 1]`` (box / image size).
    Returns:
        ``Tensor[k, 4]`` cluster centres, sorted by area (descending) then position, so the order is deterministic.
    """
    x = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)
    if len(x) < k:
        raise ValueError(f"k-means needs at least k={k} boxes, got {len(x)}")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, 4))
    centres[0] = x[rng.integers(len(x))]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for i in range(1, k):  # k-means++: next centre with probability ~ squared distance
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        centres[i] = x[rng.choice(len(x), p=p)]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(1))
    for _ in range(iters):
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
        assign = dist.argmin(1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        cnt = np.bincount(assign, minlength=k)
        empty = cnt == 0
        new = np.where(empty[:, None], centres, sums / np.maximum(cnt, 1)[:, None])
        if empty.any():  # re-seed an empty cluster at the point farthest from its centre
            far = dist[np.arange(len(x)), assign].argsort()[::-1][: int(empty.sum())]
            new[empty] = x[far]
        if np.allclose(new, centres):
            break
        centres = new
    area = (centres[:, 2] - centres[:, 0]) * (centres[:, 3] - centres[:, 1])
    order = np.lexsort((centres[:, 1], centres[:, 0], -area))
    return torch.from_numpy(centres[order]).float()
