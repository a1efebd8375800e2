"""Top-k localisation for photos labelled one class at a time (ILSVRC CLS-LOC style).

ImageNet's classification/localisation photos, and Tiny ImageNet's, box the objects of one class and leave every
other object unlabelled.  Plain mAP would count a correct detection of an unlabelled object as a false positive, so
such photos are scored as ILSVRC CLS-LOC scores them: a photo is **localised at k** when one of its ``k``
best-scoring detections (all classes together, by descending score; ties in input order) has the photo's class and
an IoU >= 0.5 with one of the photo's boxes of that class.  A photo with boxes of several classes counts once per
class (a query each).  IoU is the devkits' (equal to the continuous IoU of our boxes, :mod:`detection.boxes`), with
the fixed 0.5 threshold of CLS-LOC.

Reported: top-1 / top-5 localisation over the queries, the same per class (recall of that class's photos), the
classes localised at least once, and top-k *classification* (the class among the k best detections, whatever the
box), which separates naming errors from localisation errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detection.evaluation.detections import Detections, GroundTruth

__all__ = ["LocMetrics", "evaluate_loc", "format_loc", "training_groups", "LOC_IOU"]

LOC_IOU = 0.5


@dataclass
class LocMetrics:
    """Top-k localisation of a dataset.

    ``localised[k]`` / ``classified[k]``: the fraction of queries (photo, class) localised / classified within the k
    best detections; ``per_class[k][c]``: the fraction of class ``c``'s queries localised at k; ``queries[c]``: how
    many photos of class ``c``; ``hits[k][c]``: how many of them are localised at k.
    """

    ks: tuple[int, ...]
    localised: dict[int, float]
    classified: dict[int, float]
    per_class: dict[int, dict[int, float]]
    hits: dict[int, dict[int, int]]
    queries: dict[int, int]
    num_images: int
    query_hits: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # [Q] bool per k
    query_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    query_classified: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # [Q] bool per k

    @property
    def protocol(self) -> str:
        return "loc"

    @property
    def num_queries(self) -> int:
        return int(sum(self.queries.values()))

    def classes_localised(self, k: int | None = None) -> int:
        """How many classes have at least one photo localised at ``k`` (default: the largest k)."""
        k = max(self.ks) if k is None else k
        return sum(1 for v in self.hits[k].values() if v > 0)

    def restrict(self, classes) -> "LocMetrics":
        """The same figures over the queries of ``classes`` only (e.g. the classes with no training box)."""
        keep = np.isin(self.query_labels, np.asarray(sorted(set(int(c) for c in classes)), dtype=np.int64))
        return _summarise(self.ks, {k: v[keep] for k, v in self.query_hits.items()},
                          {k: v[keep] for k, v in self.query_classified.items()}, self.query_labels[keep],
                          self.num_images)

    def to_dict(self, groups: dict | None = None) -> dict:
        """The figures as JSON; ``groups`` (``{"name": [labels]}``, e.g. :func:`training_groups`) adds each group's
        headline figures under its name (a group without photos is left out)."""
        out = self._headline()
        out["per_class"] = {str(c): {"photos": n, **{f"top{k}": self.per_class[k][c] for k in self.ks}}
                            for c, n in sorted(self.queries.items())}
        for name, classes in (groups or {}).items():
            sub = self.restrict(classes)
            if sub.num_queries:
                out[name] = sub._headline()
        return out

    def _headline(self) -> dict:
        return {"protocol": "loc", "ks": list(self.ks), "num_images": self.num_images, "queries": self.num_queries,
                **{f"top{k}_loc": self.localised[k] for k in self.ks},
                **{f"top{k}_cls": self.classified[k] for k in self.ks},
                **{f"classes_localised_top{k}": self.classes_localised(k) for k in self.ks},
                "classes": len(self.queries)}


def _summarise(ks, query_hits, query_cls, labels, num_images) -> LocMetrics:
    classes = np.unique(labels)
    queries = {int(c): int((labels == c).sum()) for c in classes}
    hits = {k: {int(c): int(query_hits[k][labels == c].sum()) for c in classes} for k in ks}
    per_class = {k: {c: hits[k][c] / queries[c] for c in queries} for k in ks}
    n = max(len(labels), 1)
    m = LocMetrics(ks=tuple(ks), localised={k: float(query_hits[k].sum()) / n if len(labels) else float("nan")
                                            for k in ks},
                   classified={k: float(query_cls[k].sum()) / n if len(labels) else float("nan") for k in ks},
                   per_class=per_class, hits=hits, queries=queries, num_images=num_images,
                   query_hits=query_hits, query_labels=labels, query_classified=query_cls)
    return m


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[A, B]`` of xyxy boxes; equal to the devkits' inclusive-pixel IoU of the same boxes (``x1 + 1 .. x2``,
    ``+1`` in every width: :mod:`detection.boxes`)."""
    ax1, ay1, ax2, ay2 = (a[:, i, None] for i in range(4))
    bx1, by1, bx2, by2 = (b[None, :, i] for i in range(4))
    iw = np.minimum(ax2, bx2) - np.maximum(ax1, bx1)
    ih = np.minimum(ay2, by2) - np.maximum(ay1, by1)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def evaluate_loc(dets: Detections, gt: GroundTruth, *, ks: tuple[int, ...] = (1, 5)) -> LocMetrics:
    """Top-k localisation (module docstring) of ``dets`` against ``gt``; blacklisted (image, class) pairs are no
    queries, and their detections still take a place among the k best (they are detections the photo returned)."""
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {list(ks)}")
    kmax = ks[-1]
    img, lbl = dets.image.numpy(), dets.labels.numpy()
    score, boxes = dets.scores.numpy(), dets.boxes.double().numpy()
    # each image's kmax best detections: by image, then descending score, ties in input order
    order = np.lexsort((np.arange(len(img)), -score, img))
    img_o = img[order]
    first = np.r_[True, img_o[1:] != img_o[:-1]] if len(img_o) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(img_o)), 0)) if len(img_o) else np.zeros(0, int)
    rank = np.arange(len(img_o)) - start
    top = order[rank < kmax]
    top_rank = rank[rank < kmax]
    by_image: dict[int, np.ndarray] = {}
    for i in np.unique(img[top]):
        sel = img[top] == i
        by_image[int(i)] = top[sel][np.argsort(top_rank[sel], kind="stable")]
    # one query per (image, class) with ground truth, blacklist excluded
    pairs = sorted({(int(i), int(c)) for i, c in zip(gt.image, gt.labels)} - set(gt.blacklist))
    q_hits = {k: np.zeros(len(pairs), bool) for k in ks}
    q_cls = {k: np.zeros(len(pairs), bool) for k in ks}
    labels = np.array([c for _, c in pairs], dtype=np.int64)
    for q, (i, c) in enumerate(pairs):
        mine = by_image.get(i)
        if mine is None:
            continue
        same = lbl[mine] == c
        gtb = gt.boxes[(gt.image == i) & (gt.labels == c)]
        ok = np.zeros(len(mine), bool)
        if same.any():
            ok[same] = (_iou_matrix(boxes[mine[same]], gtb) >= LOC_IOU).any(1)
        for k in ks:
            q_hits[k][q] = ok[:k].any()
            q_cls[k][q] = same[:k].any()
    return _summarise(ks, q_hits, q_cls, labels, gt.num_images)


def training_groups(class_boxes: dict | None) -> dict[str, list[int]] | None:
    """``{"classes with training boxes": [labels], "classes without training boxes": [labels]}`` from a model's
    ``class_boxes`` (``{wnid: [exhaustive, positives only]}``); ``None`` for ``None``."""
    if class_boxes is None:
        return None
    from detection.labels import det200

    space = det200()
    trained = {space.index_of_wnid(w) for w, counts in class_boxes.items() if sum(counts) > 0}
    return {"classes with training boxes": sorted(trained),
            "classes without training boxes": sorted(set(range(1, space.num_classes + 1)) - trained)}


def format_loc(m: LocMetrics, *, title: str = "", groups: dict | None = None, max_classes: int = 40) -> str:
    """The headline (top-k localisation and classification, classes localised), optional groups of classes
    (``{"name": [labels]}``, e.g. with / without training boxes), and the per-class recall of up to
    ``max_classes`` classes with the most photos."""
    from detection.labels import det200

    space = det200()
    ks = m.ks

    def line(name: str, x: LocMetrics) -> str:
        loc = "  ".join(f"top-{k} {100 * x.localised[k]:6.2f}%" for k in ks)
        cls = "  ".join(f"top-{k} {100 * x.classified[k]:6.2f}%" for k in ks)
        return (f"{name:<28} {x.num_queries:>6} photos  localised: {loc}  named: {cls}  "
                f"classes localised {x.classes_localised()} of {len(x.queries)}")

    rows = [f"{title}  protocol: top-k localisation (ILSVRC CLS-LOC style, IoU >= {LOC_IOU})".strip(),
            line("all", m)]
    for name, classes in (groups or {}).items():
        sub = m.restrict(classes)
        if sub.num_queries:
            rows.append(line(name, sub))
    shown = sorted(m.queries, key=lambda c: (-m.queries[c], c))[:max_classes]
    rows.append(f"{'class':<24} {'photos':>6} " + " ".join(f"{'top-' + str(k):>7}" for k in ks))
    for c in shown:
        rows.append(f"{space.name(c)[:24]:<24} {m.queries[c]:>6} "
                    + " ".join(f"{100 * m.per_class[k][c]:>6.1f}%" for k in ks))
    if len(m.queries) > len(shown):
        rows.append(f"  ... {len(m.queries) - len(shown)} more classes in metrics.json")
    return "\n".join(rows)
