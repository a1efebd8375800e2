"""Coverage report of a proposal stage on a dataset: what the merged set covers and what each source adds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from detection.data.records import DetectionDataset
from detection.files import atomic_write
from detection.proposals.coverage import coverage
from detection.proposals.merge import SOURCE_MULTIBOX, SOURCE_SELECTIVE_SEARCH

__all__ = ["proposal_report", "format_report", "plot_coverage"]


def proposal_report(dataset: DetectionDataset, proposals: list[dict]) -> dict:
    """Coverage of merged proposals (``[{"boxes", "source", "seconds"}]`` per image) and of each source alone.

    Returns a flat dict of figures (recall as fractions) plus the coverage-vs-count curve.
    """
    gts = [r.boxes for r in dataset.records]
    labels = [r.labels for r in dataset.records]
    merged = coverage([p["boxes"] for p in proposals], gts, labels)
    ss = coverage([p["boxes"][p["source"] == SOURCE_SELECTIVE_SEARCH] for p in proposals], gts)
    mb = coverage([p["boxes"][p["source"] == SOURCE_MULTIBOX] for p in proposals], gts)
    return {
        "images": merged.num_images,
        "gt_boxes": merged.num_gt,
        "proposals/img": merged.proposals_per_image,
        "coverage@0.5": merged.recall[0.5],
        "coverage@0.7": merged.recall[0.7],
        "s/img": float(np.mean([p["seconds"] for p in proposals])) if proposals else float("nan"),
        "ss/img": ss.proposals_per_image,
        "ss_coverage@0.5": ss.recall[0.5],
        "mb/img": mb.proposals_per_image,
        "mb_coverage@0.5": mb.recall[0.5],
        "mb_adds@0.5": merged.recall[0.5] - ss.recall[0.5],
        "curve": {"counts": merged.counts, "coverage@0.5": merged.curve},
        "per_class@0.5": merged.per_class,
    }


def format_report(rep: dict, *, title: str = "") -> str:
    pct = lambda v: f"{100 * v:6.2f}%"  # noqa: E731
    lines = [title] if title else []
    lines += [
        f"{'source':<22} {'boxes/img':>10} {'cov@0.5':>9} {'cov@0.7':>9}",
        f"{'selective search':<22} {rep['ss/img']:>10.0f} {pct(rep['ss_coverage@0.5']):>9} {'':>9}",
        f"{'MultiBox':<22} {rep['mb/img']:>10.0f} {pct(rep['mb_coverage@0.5']):>9} {'':>9}",
        f"{'merged':<22} {rep['proposals/img']:>10.0f} {pct(rep['coverage@0.5']):>9} {pct(rep['coverage@0.7']):>9}",
        f"MultiBox adds {100 * rep['mb_adds@0.5']:+.2f} points at IoU 0.5; {rep['gt_boxes']} ground-truth boxes in "
        f"{rep['images']} images; {rep['s/img']:.2f} s/image of proposal compute (1 core)",
    ]
    return "\n".join(lines)


def plot_coverage(rep: dict, path: str | Path, *, label: str = "") -> None:
    """Coverage (IoU >= 0.5) against the number of proposals kept per image, log-scale x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, cov = rep["curve"]["counts"], rep["curve"]["coverage@0.5"]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    ax.semilogx(counts, [100 * c for c in cov], marker="o", label=label or "merged proposals")
    ax.axvline(rep["proposals/img"], color="grey", ls=":", lw=1)
    ax.set(xlabel="proposals kept per image", ylabel="coverage at IoU 0.5 (%)", ylim=(0, 100),
           title=f"{100 * rep['coverage@0.5']:.1f}% with {rep['proposals/img']:.0f} proposals/image")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
