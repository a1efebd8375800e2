"""What a detector gets wrong: its top false positives by type and its missed objects by size (Hoiem et al. 2012).

The framing follows Hoiem, Chodpathumwan and Dai, "Diagnosing error in object detectors" (ECCV 2012): for each class
the ``N`` highest-scoring detections are examined, ``N`` = ``top_factor`` x the class's number of objects, and
each false positive among them (by the ILSVRC DET protocol's own matching: per-box threshold
``min(0.5, wh / ((w+10)(h+10)))``, inclusive pixels, blacklist) gets the first type that applies:

* ``duplicate``    -- overlaps an object of its class by at least that object's threshold (the object was already
  taken by a higher-scoring detection);
* ``mislocalised`` -- overlaps an object of its class by IoU in [0.1, threshold);
* ``confusion``    -- overlaps an object of another class by IoU >= 0.1;
* ``background``   -- anything else.

A mislocalised detection is also given its kind, by how it lies on the objects of its class in its image (a share
of at least 0.7 of an area counts as inside): ``group`` -- it holds two or more objects; ``part`` -- it lies inside
an object and holds none (a head, a wheel); ``loose`` -- it holds one object, too large for it; ``shifted`` --
none of these.

Misses: an object no detection of its class matched (at any score) is missed; objects are binned by their share of
the image's area.  Boxes are ``(x1, y1, x2, y2)`` continuous pixels, no +1 (converted to the devkit's inclusive
pixels inside, as the protocol does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detection.files import atomic_write
from detection.data.records import DetectionDataset
from detection.evaluation.detections import Detections, GroundTruth
from detection.evaluation.protocols import _iou_inclusive, _match_ilsvrc, _pairs, _Prepared, ilsvrc_iou_threshold

__all__ = ["ErrorReport", "analyze_errors", "FP_TYPES", "LOC_KINDS", "SIZE_BINS", "format_errors", "plot_errors"]

FP_TYPES = ("duplicate", "mislocalised", "confusion", "background")
# the kinds of a mislocalised detection (module doc); per class counted as "mislocalised_<kind>"
LOC_KINDS = ("part", "group", "loose", "shifted")
INSIDE = 0.7  # the share of a box's area inside another from which it counts as inside
# object area as a share of its image's area: (name, low, high)
SIZE_BINS = (("<0.5%", 0.0, 0.005), ("0.5-2%", 0.005, 0.02), ("2-10%", 0.02, 0.1), ("10-30%", 0.1, 0.3),
             (">30%", 0.3, np.inf))
LOC_IOU = 0.1


@dataclass
class ErrorReport:
    """``per_class[c]``: ``objects``, ``top`` (detections examined), ``tp`` among them, one count per
    :data:`FP_TYPES`, the mislocalised split by kind (``mislocalised_part``, ... for each of :data:`LOC_KINDS`),
    ``found`` (objects matched at any score); ``by_size``: per :data:`SIZE_BINS` name, ``objects`` and ``found``;
    ``fp_type`` / ``loc_kind`` / ``top_rank``: per kept detection, its FP type ('' for a true positive), its kind
    when mislocalised ('' otherwise) and its rank in its class (0 = highest score); ``gt_*``: per object, where it
    is and whether it was found."""

    per_class: dict[int, dict]
    by_size: dict[str, dict]
    top_factor: float
    fp_type: np.ndarray = field(repr=False)
    top_rank: np.ndarray = field(repr=False)
    det_index: np.ndarray = field(repr=False)  # input position of each kept detection
    # the (non-blacklisted) objects: image position, box (xyxy continuous), label, matched at any score
    gt_image: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    gt_boxes: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 4)))
    gt_label: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    gt_found: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    loc_kind: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, object))

    @property
    def overall(self) -> dict:
        keys = ("objects", "top", "tp", *FP_TYPES, *(f"mislocalised_{k}" for k in LOC_KINDS), "found")
        return {k: int(sum(v[k] for v in self.per_class.values())) for k in keys}

    def to_dict(self, space=None) -> dict:
        def name(c):
            return space.names[c] if space is not None else str(c)

        return {"framing": "Hoiem et al. 2012: top N = top_factor x objects per class; FP types in priority order",
                "top_factor": self.top_factor, "fp_types": list(FP_TYPES), "mislocalised_kinds": list(LOC_KINDS),
                "overall": self.overall,
                "per_class": {name(c): v for c, v in sorted(self.per_class.items())},
                "misses_by_size": self.by_size}


def analyze_errors(dets: Detections, dataset: DetectionDataset, *, top_factor: float = 1.0,
                   num_classes: int = 200) -> ErrorReport:
    """Classify the top false positives and the missed objects of ``dets`` on ``dataset`` (see the module doc)."""
    gt = GroundTruth.from_dataset(dataset)
    p = _Prepared(dets, gt, num_classes)
    gt_of = np.full(len(p.key), -1)
    tp, _ = _match_ilsvrc(p, gt_of)
    n = len(p.key)
    # best IoU of each detection with objects of its own class (and their threshold) and of other classes
    d, g = _pairs(p.img, p.gt_img)
    ov, _ = _iou_inclusive(p.boxes[d], p.gt_boxes[g]) if len(d) else (np.zeros(0), None)
    same = p.gt_lbl[g] == p.lbl[d]
    thr = ilsvrc_iou_threshold(p.gt_boxes)[g] if len(g) else np.zeros(0)
    dup = np.zeros(n, bool)
    np.logical_or.at(dup, d[same], ov[same] >= thr[same])
    best_same = np.full(n, -np.inf)
    np.maximum.at(best_same, d[same], ov[same])
    best_other = np.full(n, -np.inf)
    np.maximum.at(best_other, d[~same], ov[~same])
    kind = np.where(dup, 0, np.where(best_same >= LOC_IOU, 1, np.where(best_other >= LOC_IOU, 2, 3)))
    fp_type = np.where(tp, "", np.array(FP_TYPES, dtype=object)[kind])
    loc_kind = _loc_kinds(p.boxes, p.gt_boxes, d[same], g[same], fp_type == "mislocalised")
    # rank of each detection within its class, by descending score (ties in input order)
    order = np.lexsort((p.pos, -p.score, p.lbl))
    first = np.r_[True, p.lbl[order][1:] != p.lbl[order][:-1]] if n else np.zeros(0, bool)
    starts = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else np.zeros(0, np.int64)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts
    found = np.zeros(len(p.gt_key), bool)
    found[gt_of[tp]] = True
    per_class = {}
    for c in np.unique(np.r_[p.gt_lbl, p.lbl]).astype(int):
        objects = int((p.gt_lbl == c).sum())
        top = int(np.ceil(top_factor * objects))
        sel = (p.lbl == c) & (rank < top)
        row = {"objects": objects, "top": int(sel.sum()), "tp": int((sel & tp).sum())}
        for t in FP_TYPES:
            row[t] = int((sel & (fp_type == t)).sum())
        for k in LOC_KINDS:
            row[f"mislocalised_{k}"] = int((sel & (loc_kind == k)).sum())
        row["found"] = int(found[p.gt_lbl == c].sum())
        per_class[int(c)] = row
    sizes = np.array([(r.width * r.height) for r in dataset.records], dtype=np.float64)
    gb = p.gt_boxes
    share = ((gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1])) / sizes[p.gt_img] if len(gb) else np.zeros(0)
    by_size = {}
    for name, lo, hi in SIZE_BINS:
        m = (share >= lo) & (share < hi)
        by_size[name] = {"objects": int(m.sum()), "found": int((m & found).sum()),
                         "missed": int((m & ~found).sum())}
    return ErrorReport(per_class=per_class, by_size=by_size, top_factor=top_factor, fp_type=fp_type,
                       top_rank=rank, det_index=p.pos, gt_image=p.gt_img, gt_boxes=p.gt_boxes, gt_label=p.gt_lbl,
                       gt_found=found, loc_kind=loc_kind)


def _loc_kinds(boxes: np.ndarray, gt_boxes: np.ndarray, d: np.ndarray, g: np.ndarray, mis: np.ndarray
               ) -> np.ndarray:
    """The kind (:data:`LOC_KINDS`) of each detection flagged ``mis``, '' for the others.  ``(d, g)``: every
    (detection, object of its class in its image) pair."""
    out = np.full(len(boxes), "", dtype=object)
    if not mis.any():
        return out
    sel = mis[d]
    d, g = d[sel], g[sel]
    db, gb = boxes[d], gt_boxes[g]
    iw = np.clip(np.minimum(db[:, 2], gb[:, 2]) - np.maximum(db[:, 0], gb[:, 0]), 0, None)
    ih = np.clip(np.minimum(db[:, 3], gb[:, 3]) - np.maximum(db[:, 1], gb[:, 1]), 0, None)
    inter = iw * ih
    d_area = (db[:, 2] - db[:, 0]) * (db[:, 3] - db[:, 1])
    g_area = (gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1])
    holds = np.zeros(len(boxes), np.int64)
    np.add.at(holds, d, inter >= INSIDE * g_area)
    inside = np.zeros(len(boxes), bool)
    np.logical_or.at(inside, d, inter >= INSIDE * d_area)
    kinds = np.where(holds >= 2, "group", np.where(holds == 1, "loose", np.where(inside, "part", "shifted")))
    out[mis] = kinds[mis]
    return out


def format_errors(rep: ErrorReport, *, space=None, max_classes: int = 200) -> str:
    """The breakdown as text: one row per class with objects (most objects first), then overall and by size."""
    def name(c):
        return space.names[c] if space is not None else str(c)

    head = f"{'class':<22}{'objects':>8}{'top N':>7}{'TP':>6}" + "".join(f"{t[:12]:>13}" for t in FP_TYPES) + \
        f"{'found':>8}"
    lines = [f"Top false positives (Hoiem et al.: the top {rep.top_factor:g} x objects detections per class) "
             f"and objects found", head]
    rows = sorted((c for c, v in rep.per_class.items() if v["objects"]), key=lambda c: -rep.per_class[c]["objects"])
    for c in rows[:max_classes]:
        v = rep.per_class[c]
        lines.append(f"{name(c)[:21]:<22}{v['objects']:>8}{v['top']:>7}{v['tp']:>6}"
                     + "".join(f"{v[t]:>13}" for t in FP_TYPES) + f"{v['found']:>8}")
    o = rep.overall
    fp = sum(o[t] for t in FP_TYPES)
    lines.append(f"{'all':<22}{o['objects']:>8}{o['top']:>7}{o['tp']:>6}" + "".join(f"{o[t]:>13}" for t in FP_TYPES)
                 + f"{o['found']:>8}")
    if fp:
        lines.append("share of the top false positives: " + ", ".join(f"{t} {100 * o[t] / fp:.1f}%" for t in FP_TYPES))
    if o["mislocalised"]:
        lines.append("the mislocalised by kind: " + ", ".join(
            f"{k} {o[f'mislocalised_{k}']} ({100 * o[f'mislocalised_{k}'] / o['mislocalised']:.1f}%)"
            for k in LOC_KINDS) + " (part: inside an object of its class; group: holds two or more; loose: holds one)")
    lines.append("objects found (matched at any score) by size (share of the image): " + ", ".join(
        f"{k} {v['found']}/{v['objects']}" + (f" ({100 * v['found'] / v['objects']:.1f}%)" if v["objects"] else "")
        for k, v in rep.by_size.items()))
    return "\n".join(lines)


def plot_errors(rep: ErrorReport, path: str | Path, *, space=None, max_classes: int = 30, title: str = "") -> None:
    """Two panels: per class (most objects first) the top detections split into TP and the FP types; found and
    missed objects by size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((c for c, v in rep.per_class.items() if v["objects"]),
                  key=lambda c: -rep.per_class[c]["objects"])[:max_classes]
    names = [space.names[c] if space is not None else str(c) for c in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, max(4, 0.28 * len(rows) + 1.5)),
                               gridspec_kw={"width_ratios": [3, 2]})
    colors = {"tp": "#2ca02c", "duplicate": "#9467bd", "mislocalised": "#ff7f0e", "confusion": "#1f77b4",
              "background": "#7f7f7f"}
    left = np.zeros(len(rows))
    y = np.arange(len(rows))
    for key in ("tp", *FP_TYPES):
        vals = np.array([rep.per_class[c][key] / max(1, rep.per_class[c]["top"]) for c in rows])
        a.barh(y, vals, left=left, color=colors[key], label=key if key != "tp" else "true positive")
        left += vals
    a.set_yticks(y, names, fontsize=8)
    a.invert_yaxis()
    a.set_xlim(0, 1)
    a.set_xlabel(f"share of the top {rep.top_factor:g} x objects detections")
    a.legend(loc="lower right", fontsize=8)
    a.set_title("top detections per class")
    bins = list(rep.by_size)
    found = [rep.by_size[k]["found"] for k in bins]
    missed = [rep.by_size[k]["missed"] for k in bins]
    b.bar(bins, found, color="#2ca02c", label="found")
    b.bar(bins, missed, bottom=found, color="#d62728", label="missed")
    for i, k in enumerate(bins):
        n = rep.by_size[k]["objects"]
        if n:
            b.text(i, n, f"{100 * found[i] / n:.0f}%", ha="center", va="bottom", fontsize=8)
    b.set_xlabel("object area / image area")
    b.set_ylabel("objects")
    b.legend(fontsize=8)
    b.set_title("objects found at any score, by size")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
