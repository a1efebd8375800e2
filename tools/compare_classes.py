#!/usr/bin/env python
"""Per-class AP of two or more evaluations side by side (the ``metrics.json`` of eval_map.py or compare_detectors.py),
with the change from the first: what a new model gained and lost class by class.

    python tools/compare_classes.py before=results/cmp_val/prev/prev-paper-m6/metrics.json \\
        after=results/cmp_val/tune/tune-paper-m6/metrics.json [--sort delta|gt|name] [--out table.md]

Prints a Markdown table (class, objects, AP of each, change of the last against the first) and the mAP row; classes
present in any of the files are listed, a class absent from one shows ``-`` there.  Every file must use the same
protocol and images (checked: protocol, number of images), else the comparison would mean nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    d = json.loads(path.read_text())
    if "per_class" not in d or "mAP" not in d:
        raise ValueError(f"{path}: not a metrics.json (needs 'mAP' and 'per_class')")
    return d


def class_rows(metrics: dict[str, dict], *, sort: str = "delta") -> list[dict]:
    """One row per class with ground truth in any evaluation: ``name``, ``num_gt``, ``ap`` (name -> AP or None),
    ``delta`` (last minus first, None when either is missing), sorted by ``sort`` (delta: largest gain first)."""
    names = list(metrics)
    first = metrics[names[0]]
    for n in names[1:]:
        m = metrics[n]
        if (m.get("protocol"), m.get("num_images")) != (first.get("protocol"), first.get("num_images")):
            raise ValueError(f"{n}: protocol/images {m.get('protocol')}/{m.get('num_images')} differ from "
                             f"{names[0]}'s {first.get('protocol')}/{first.get('num_images')}")
    rows: dict[int, dict] = {}
    for n in names:
        for c in metrics[n]["per_class"]:
            if not c.get("num_gt"):
                continue  # a class without objects has no AP (its detections are false positives elsewhere)
            row = rows.setdefault(c["label"], {"label": c["label"], "name": c["name"], "num_gt": c["num_gt"],
                                                "ap": {k: None for k in names}})
            row["ap"][n] = c["ap"]
    for row in rows.values():
        a, b = row["ap"][names[0]], row["ap"][names[-1]]
        row["delta"] = None if a is None or b is None else b - a
    key = {"delta": lambda r: (r["delta"] is None, -(r["delta"] or 0.0), r["name"].lower()),
           "gt": lambda r: (-r["num_gt"], r["name"].lower()), "name": lambda r: r["name"].lower()}
    if sort not in key:
        raise ValueError(f"sort must be one of {', '.join(key)}, got {sort!r}")
    return sorted(rows.values(), key=key[sort])


def markdown(metrics: dict[str, dict], rows: list[dict]) -> str:
    names = list(metrics)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    change = len(names) > 1
    head = ["class", "objects", *names] + (["change"] if change else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], str(r["num_gt"]), *(pct(r["ap"][n]) for n in names)]
        if change:
            cells.append("-" if r["delta"] is None else f"{100 * r['delta']:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    maps = [metrics[n]["mAP"] for n in names]
    tail = ["**mAP**", str(sum(r["num_gt"] for r in rows)), *(f"**{pct(v)}**" for v in maps)]
    if change:
        tail.append(f"**{100 * (maps[-1] - maps[0]):+.2f}**")
    lines.append("| " + " | ".join(tail) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=METRICS_JSON")
    ap.add_argument("--sort", default="delta", choices=["delta", "gt", "name"])
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    metrics = {}
    for spec in args.runs:
        if "=" not in spec:
            sys.exit(f"error: {spec!r}: give NAME=PATH (e.g. before=outputs/.../metrics.json)")
        name, path = spec.split("=", 1)
        try:
            metrics[name] = load_metrics(path)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
    try:
        table = markdown(metrics, class_rows(metrics, sort=args.sort))
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
