"""Reports of a :class:`Metrics`: a printed per-class table, a JSON file and a precision-recall plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from detection.files import atomic_write, atomic_write_text
from detection.evaluation.protocols import Metrics
from detection.labels import LabelSpace, det200

__all__ = ["format_table", "save_metrics", "plot_pr", "metrics_to_dict"]

_PROTOCOL_NAMES = {
    "ilsvrc": "ILSVRC DET (devkit eval_detection.m: adaptive IoU min(0.5, wh/((w+10)(h+10))), all-points AP)",
    "voc": "PASCAL VOC (VOCevaldet.m: IoU 0.5, difficult ignored, all-points AP)",
    "coco": "pycocotools AP50 (cross-check: 101-point AP, continuous pixels, maxDets 100)",
}


def format_table(m: Metrics, *, space: LabelSpace | None = None, title: str = "") -> str:
    """Per-class AP table for the classes with ground truth, then the mAP line."""
    space = space or det200()
    rows = [f"{title}  protocol: {_PROTOCOL_NAMES.get(m.protocol, m.protocol)}".strip(),
            f"{'class':<24} {'wnid':<10} {'GT':>6} {'dets':>8} {'AP':>7}"]
    for c in m.evaluated_classes:
        rows.append(f"{space.name(c)[:24]:<24} {space.wnid(c):<10} {m.npos[c]:>6} {m.ndet[c]:>8} "
                    f"{100 * m.ap[c]:>6.2f}%")
    extra = sum(m.ndet[c] for c in m.ap if m.npos[c] == 0)
    rows.append(f"{'mAP':<24} {'':<10} {sum(m.npos.values()):>6} {sum(m.ndet.values()):>8} {100 * m.map:>6.2f}%"
                f"   ({len(m.evaluated_classes)} classes with ground truth, {m.num_images} images)")
    if extra:
        rows.append(f"  {extra} detections of classes without ground truth here: counted in no AP")
    rows += [f"  note: {n}" for n in m.notes]
    return "\n".join(rows)


def metrics_to_dict(m: Metrics, *, space: LabelSpace | None = None) -> dict:
    space = space or det200()
    return {
        "protocol": m.protocol,
        "mAP": m.map,
        "num_images": m.num_images,
        "num_classes_evaluated": len(m.evaluated_classes),
        "notes": m.notes,
        "per_class": [{"label": c, "wnid": space.wnid(c), "name": space.name(c), "ap": m.ap[c],
                       "num_gt": m.npos[c], "num_dets": m.ndet[c]}
                      for c in sorted(m.ap) if m.npos[c] > 0 or m.ndet[c] > 0],
    }


def save_metrics(m: Metrics, path: str | Path, *, extra: dict | None = None) -> None:
    """JSON with mAP, protocol and per-class AP / GT / detection counts (NaN written as null)."""
    d = metrics_to_dict(m)
    if extra:
        d.update(extra)

    def clean(o):
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    atomic_write_text(path, json.dumps(clean(d), indent=2))


def plot_pr(m: Metrics, path: str | Path, *, space: LabelSpace | None = None, max_classes: int = 20) -> None:
    """Precision-recall curves (monotone envelope, as AP integrates it) of the classes with the most ground truth
    (at most ``max_classes``), with their AP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = space or det200()
    classes = sorted(m.curves, key=lambda c: -m.npos[c])[:max_classes]
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(classes):
        rec, prec = m.curves[c]
        if len(rec) == 0:  # ground truth but no detections: AP 0, a flat line at precision 0
            rec, prec = np.array([1.0]), np.array([0.0])
        envelope = np.maximum.accumulate(prec[::-1])[::-1]  # the curve AP integrates
        ax.plot(np.r_[0, rec], np.r_[envelope[:1], envelope], color=cmap(i % 20), lw=1.4, drawstyle="steps-pre",
                label=f"{space.name(c)} ({100 * m.ap[c]:.1f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"{m.protocol} protocol: mAP {100 * m.map:.2f}% over {len(m.evaluated_classes)} classes")
    ax.grid(alpha=0.3)
    if classes:
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
