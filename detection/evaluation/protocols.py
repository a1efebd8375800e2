"""The ILSVRC DET protocol (devkit ``eval_detection.m``) and the VOC protocol (``VOCevaldet.m``), vectorised.

Both work on the devkits' inclusive pixels: our continuous ``(x1, y1, x2, y2)`` box is ``(x1 + 1, y1 + 1, x2, y2)``
there, which recovers the annotation file's numbers exactly, and IoU, areas and the adaptive threshold are computed
with the devkits' own ``+1`` formulas.

ILSVRC: per image and class, detections in descending score order each take the *unmatched* ground truth with the
highest IoU among those whose IoU reaches the box's own threshold ``min(0.5, wh / ((w + 10)(h + 10)))``; ties go to
the first box in annotation order.  Blacklisted (image, class) pairs are ignored on both sides.
VOC: each detection takes the ground truth with the highest IoU (matched or not); IoU >= 0.5 and unmatched is a
true positive, already matched a false positive (duplicate), difficult ignored; difficult boxes are not counted.

The greedy matching is sequential only within one (image, class) group, so it runs in "rounds": round r handles the
r-th best detection of every group at once.  Groups are disjoint, so one round never conflicts with itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detection.evaluation.detections import Detections, GroundTruth

__all__ = ["Metrics", "evaluate_ilsvrc", "evaluate_voc", "voc_ap", "ilsvrc_iou_threshold", "PROTOCOLS"]

PIXEL_TOLERANCE = 10.0
DEFAULT_IOU = 0.5


@dataclass
class Metrics:
    """Result of an evaluation.

    ``ap[c]`` / ``npos[c]`` / ``ndet[c]`` for every label ``c`` in 1..num_classes (``ap`` is NaN for a class without
    ground truth); ``map`` is the mean AP over classes with ground truth; ``curves[c] = (recall, precision)`` arrays.
    """

    protocol: str
    ap: dict[int, float]
    npos: dict[int, int]
    ndet: dict[int, int]
    map: float
    num_images: int
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def evaluated_classes(self) -> list[int]:
        return [c for c in sorted(self.ap) if self.npos[c] > 0]


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC all-points AP: area under the monotone (right-to-left maximum) precision envelope (``VOCap.m``)."""
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def ilsvrc_iou_threshold(gt_boxes: np.ndarray) -> np.ndarray:
    """Per ground-truth box IoU threshold ``min(0.5, wh / ((w+10)(h+10)))``, w/h in inclusive pixels."""
    w = gt_boxes[:, 2] - (gt_boxes[:, 0] + 1) + 1
    h = gt_boxes[:, 3] - (gt_boxes[:, 1] + 1) + 1
    return np.minimum(DEFAULT_IOU, (w * h) / ((w + PIXEL_TOLERANCE) * (h + PIXEL_TOLERANCE)))


def _pairs(det_key: np.ndarray, gt_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) index pair sharing a group key; gt indices ascend within a detection."""
    gt_order = np.argsort(gt_key, kind="stable")
    gk = gt_key[gt_order]
    start = np.searchsorted(gk, det_key, "left")
    cnt = np.searchsorted(gk, det_key, "right") - start
    total = int(cnt.sum())
    det_idx = np.repeat(np.arange(det_key.shape[0]), cnt)
    within = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return det_idx, gt_order[np.repeat(start, cnt) + within]


def _iou_inclusive(db: np.ndarray, gb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Devkit IoU of paired boxes (given in our convention); returns (ov, intersects)."""
    dx1, dy1, dx2, dy2 = db[:, 0] + 1, db[:, 1] + 1, db[:, 2], db[:, 3]
    gx1, gy1, gx2, gy2 = gb[:, 0] + 1, gb[:, 1] + 1, gb[:, 2], gb[:, 3]
    iw = np.minimum(dx2, gx2) - np.maximum(dx1, gx1) + 1
    ih = np.minimum(dy2, gy2) - np.maximum(dy1, gy1) + 1
    inter = iw > 0
    inter &= ih > 0
    ua = (dx2 - dx1 + 1) * (dy2 - dy1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1) - iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = np.where(inter, iw * ih / ua, -np.inf)
    return ov, inter


class _Prepared:
    """Detections and ground truth as numpy arrays, blacklist applied, each detection's rank in its group."""

    def __init__(self, dets: Detections, gt: GroundTruth, num_classes: int):
        self.num_classes = num_classes
        img = dets.image.numpy()
        lbl = dets.labels.numpy()
        if len(lbl) and (lbl.min() < 1 or lbl.max() > num_classes):
            raise ValueError(f"detection labels must be in 1..{num_classes}, got {lbl.min()}..{lbl.max()}")
        if len(img) and (img.min() < 0 or img.max() >= gt.num_images):
            raise ValueError(f"detection image positions must be in 0..{gt.num_images - 1}")
        stride = num_classes + 1
        det_key = img * stride + lbl
        gt_key = gt.image * stride + gt.labels
        keep_det = np.ones(len(det_key), bool)
        keep_gt = np.ones(len(gt_key), bool)
        if gt.blacklist:
            bl = np.array([i * stride + c for i, c in gt.blacklist], dtype=np.int64)
            keep_det = ~np.isin(det_key, bl)
            keep_gt = ~np.isin(gt_key, bl)
        self.pos = np.nonzero(keep_det)[0]  # input (file) position of each kept detection
        self.img, self.lbl, self.key = img[keep_det], lbl[keep_det], det_key[keep_det]
        self.score = dets.scores.numpy()[keep_det]
        self.boxes = dets.boxes.double().numpy()[keep_det]
        self.gt_img, self.gt_lbl, self.gt_key = gt.image[keep_gt], gt.labels[keep_gt], gt_key[keep_gt]
        self.gt_boxes, self.gt_difficult = gt.boxes[keep_gt], gt.difficult[keep_gt]
        self.num_blacklisted_dets = int((~keep_det).sum())
        # rank of each detection within its (image, class) group: descending score, ties in input order
        order = np.lexsort((self.pos, -self.score, self.key))
        sk = self.key[order]
        first = np.ones(len(sk), bool)
        first[1:] = sk[1:] != sk[:-1]
        starts = np.maximum.accumulate(np.where(first, np.arange(len(sk)), 0))
        self.rank = np.empty(len(sk), np.int64)
        self.rank[order] = np.arange(len(sk)) - starts


def _match_ilsvrc(p: _Prepared, gt_of: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(true positive, ignored) per kept detection; ``gt_of`` (if given, length = kept detections) receives the
    kept ground-truth index each true positive matched (-1 otherwise)."""
    d, g = _pairs(p.key, p.gt_key)
    ov, _ = _iou_inclusive(p.boxes[d], p.gt_boxes[g])
    ok = ov >= ilsvrc_iou_threshold(p.gt_boxes)[g]  # -inf (no intersection) never passes
    d, g, ov = d[ok], g[ok], ov[ok]
    rank = p.rank[d]
    order = np.lexsort((g, -ov, d, rank))  # by round, detection, best IoU first, then annotation order
    d, g, rank = d[order], g[order], rank[order]
    tp = np.zeros(len(p.key), bool)
    matched = np.zeros(len(p.gt_key), bool)
    bounds = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        dd, gg = d[a:b], g[a:b]
        free = ~matched[gg]
        dd, gg = dd[free], gg[free]
        if len(dd):
            first = np.r_[True, dd[1:] != dd[:-1]]
            matched[gg[first]] = True
            tp[dd[first]] = True
            if gt_of is not None:
                gt_of[dd[first]] = gg[first]
    return tp, np.zeros(len(p.key), bool)


def _match_voc(p: _Prepared, min_overlap: float = DEFAULT_IOU) -> tuple[np.ndarray, np.ndarray]:
    d, g = _pairs(p.key, p.gt_key)
    ov, inter = _iou_inclusive(p.boxes[d], p.gt_boxes[g])
    d, g, ov = d[inter], g[inter], ov[inter]
    order = np.lexsort((g, -ov, d))  # best IoU per detection; strict '>' in the devkit keeps the first of ties
    d, g, ov = d[order], g[order], ov[order]
    first = np.r_[True, d[1:] != d[:-1]] if len(d) else np.zeros(0, bool)
    best_gt = np.full(len(p.key), -1)
    best_ov = np.full(len(p.key), -np.inf)
    best_gt[d[first]], best_ov[d[first]] = g[first], ov[first]
    hit = best_ov >= min_overlap
    ignored = hit & p.gt_difficult[np.maximum(best_gt, 0)] if len(p.gt_key) else np.zeros(len(p.key), bool)
    cand = np.flatnonzero(hit & ~ignored)
    tp = np.zeros(len(p.key), bool)
    if len(cand):
        o = np.lexsort((p.rank[cand], best_gt[cand]))  # per ground truth, the best-ranked detection wins
        c = cand[o]
        win = np.r_[True, best_gt[c][1:] != best_gt[c][:-1]]
        tp[c[win]] = True
    return tp, ignored


def _accumulate(p: _Prepared, tp: np.ndarray, ignored: np.ndarray, protocol: str, npos: np.ndarray,
                num_images: int) -> Metrics:
    keep = ~ignored
    lbl, score, tp_k = p.lbl[keep], p.score[keep], tp[keep]
    # global order: descending score; ties by image then file order (ILSVRC concatenates per-image lists),
    # by file order alone for VOC
    tie = (p.pos[keep], p.img[keep]) if protocol == "ilsvrc" else (p.pos[keep],)
    order = np.lexsort(tie + (-score, lbl))
    lbl, tp_k = lbl[order], tp_k[order]
    bounds = np.searchsorted(lbl, np.arange(1, p.num_classes + 2))
    ap, npos_d, ndet, curves = {}, {}, {}, {}
    for c in range(1, p.num_classes + 1):
        t = tp_k[bounds[c - 1]:bounds[c]]
        n = int(npos[c])
        npos_d[c], ndet[c] = n, len(t)
        if n == 0:
            ap[c] = float("nan")
            continue
        ctp = np.cumsum(t)
        cfp = np.cumsum(~t)
        rec = ctp / n
        prec = ctp / np.maximum(ctp + cfp, 1)
        ap[c] = voc_ap(rec, prec)
        curves[c] = (rec, prec)
    valid = [ap[c] for c in ap if npos_d[c] > 0]
    m = float(np.mean(valid)) if valid else float("nan")
    return Metrics(protocol=protocol, ap=ap, npos=npos_d, ndet=ndet, map=m, num_images=num_images, curves=curves)


def evaluate_ilsvrc(dets: Detections, gt: GroundTruth, *, num_classes: int = 200) -> Metrics:
    """ILSVRC DET protocol (devkit ``eval_detection.m``); difficult flags are not used, as in ILSVRC."""
    p = _Prepared(dets, gt, num_classes)
    tp, ignored = _match_ilsvrc(p)
    npos = np.bincount(p.gt_lbl, minlength=num_classes + 1)
    m = _accumulate(p, tp, ignored, "ilsvrc", npos, gt.num_images)
    if p.num_blacklisted_dets:
        m.notes.append(f"{p.num_blacklisted_dets} detections on blacklisted (image, class) pairs ignored")
    return m


def evaluate_voc(dets: Detections, gt: GroundTruth, *, num_classes: int = 200,
                 min_overlap: float = DEFAULT_IOU) -> Metrics:
    """VOC protocol (``VOCevaldet.m``, all-points AP): fixed IoU, difficult objects ignored."""
    p = _Prepared(dets, gt, num_classes)
    tp, ignored = _match_voc(p, min_overlap)
    npos = np.bincount(p.gt_lbl[~p.gt_difficult], minlength=num_classes + 1)
    m = _accumulate(p, tp, ignored, "voc", npos, gt.num_images)
    if ignored.any():
        m.notes.append(f"{int(ignored.sum())} detections matching difficult objects ignored")
    return m


PROTOCOLS = ("ilsvrc", "voc", "coco")
