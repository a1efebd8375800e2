"""MultiBox training loss: bipartite matching of ground truth to predictions, then
``alpha * 1/2 ||l - g||^2`` over matched pairs + logistic confidence loss (Erhan et al. 2014, eq. 1-3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["match", "multibox_loss", "matching_cost"]


def matching_cost(pred: Tensor, logits: Tensor, gt: Tensor, *, alpha: float) -> Tensor:
    """``cost[i, j] = 1/2 ||l_i - g_j||^2`` of assigning ground truth ``j`` to prediction ``i`` (Erhan et al., eq. 2:
    the match minimises F_match, the location term alone).  Confidences are deliberately not part of it: with them,
    whichever slot is most confident would win every match wherever it points, and confidence would never learn to
    depend on location.  ``pred [K, 4]``, ``gt [G, 4]`` (normalised xyxy) -> ``[K, G]``; ``logits``/``alpha`` unused
    (kept for the signature shared with the loss)."""
    return 0.5 * torch.cdist(pred.double(), gt.double()).pow(2)


def match(pred: Tensor, logits: Tensor, gt: Tensor, *, alpha: float) -> tuple[Tensor, Tensor]:
    """Minimum-cost bipartite matching (Hungarian, ``scipy.optimize.linear_sum_assignment``).

    Returns ``(pred_idx [G], gt_idx [G])``: each ground-truth box gets exactly one prediction (needs ``K >= G``).
    """
    if gt.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if gt.shape[0] > pred.shape[0]:
        raise ValueError(f"{gt.shape[0]} ground-truth boxes but only {pred.shape[0]} predictions")
    cost = matching_cost(pred.detach(), logits.detach(), gt, alpha=alpha).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def multibox_loss(pred: Tensor, logits: Tensor, gts: list[Tensor], *, alpha: float = 0.3
                  ) -> tuple[Tensor, dict[str, float]]:
    """Loss of a batch.  ``pred [B, K, 4]`` normalised xyxy, ``logits [B, K]``, ``gts[b] [G_b, 4]`` normalised.

    Returns (mean loss per image, {"loc": ..., "conf": ..., "matched": ...}).
    """
    B = pred.shape[0]
    target = torch.zeros_like(logits)
    loc_terms = []
    n_matched = 0
    for b in range(B):
        g = gts[b].to(pred)
        pi, gi = match(pred[b], logits[b], g, alpha=alpha)
        if len(pi):
            target[b, pi] = 1.0
            loc_terms.append(0.5 * (pred[b, pi] - g[gi]).pow(2).sum())
            n_matched += len(pi)
    loc = torch.stack(loc_terms).sum() / B if loc_terms else pred.sum() * 0.0
    conf = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / B
    loss = alpha * loc + conf
    return loss, {"loc": float(loc.detach()), "conf": float(conf.detach()), "matched": float(n_matched) / B}
