#!/usr/bin/env python
"""Per-class AP of two or more evaluations side by side (the ``metrics.json`` of eval_map.py or compare_detectors.py),
with the change from the first: what a new model gained and lost class by class.

    python tools/experiments/compare_classes.py before=results/cmp_val/prev/prev-paper-m6/metrics.json \\
        after=results/cmp_val/tune/tune-paper-m6/metrics.json [--sort delta|gt|name] [--out table.md]

Prints a Markdown table (class, objects, AP of each, change of the last against the first) and the mAP row; classes
present in any of the files are listed, a class absent from one shows ``-`` there.  Every file must use the same
protocol and images (checked: protocol, number of images), else the comparison would mean nothing.

    python tools/experiments/compare_classes.py before=… after=… --stats stats.json [--split breadth_train] \\
        [--merge coco_subsets=coco_tiny_train,coco_tiny_val,tiny_coco_train,tiny_coco_val,coco_mini_train]

``--stats`` (the ``--json`` of dataset_stats.py; ``--split`` picks one of its splits, default the last) adds each
class's training boxes by source, and a second table that splits the change of mAP by the source that brought most
of a class's training boxes: the classes of each source add up to the change of mAP over the classes both
evaluations score (its last row; equal to the mAP row's change when every class is scored by both).  It says where a
gain or loss sits, not what removing a source would do (that needs a run without it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    d = _read_json(path)
    if not isinstance(d, dict) or "per_class" not in d or "mAP" not in d:
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


def load_source_boxes(path: str | Path, split: str | None = None,
                      merge: dict[str, list[str]] | None = None) -> dict[str, dict[str, int]]:
    """Training boxes per class and source from dataset_stats.py's ``--json``: class name -> {source: boxes}, of
    ``split`` (a dataset name in the file; default its last split); ``merge`` counts several sources as one
    (new name -> its sources, each of which must be in the split)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stats file (write one with dataset_stats.py --json)")
    splits = _read_json(path)
    if isinstance(splits, dict):
        splits = [splits]
    if (not isinstance(splits, list) or not splits
            or any(not isinstance(st, dict) or "sources" not in st or "dataset" not in st for st in splits)):
        raise ValueError(f"{path}: not a dataset_stats.py --json file (needs 'dataset' and 'sources')")
    names = [st["dataset"] for st in splits]
    if split is not None and split not in names:
        raise ValueError(f"{path}: no split {split!r} (it has {', '.join(names)})")
    st = splits[names.index(split)] if split is not None else splits[-1]
    alias: dict[str, str] = {}
    for new_name, parts in (merge or {}).items():
        if not parts:
            raise ValueError(f"merge {new_name!r}: no sources to merge")
        if new_name in st["sources"] and new_name not in parts:
            raise ValueError(f"{path}: merge name {new_name!r} is already a source of {st['dataset']}")
        for part in parts:
            if part not in st["sources"]:
                raise ValueError(f"{path}: {st['dataset']} has no source {part!r} to merge into {new_name!r} "
                                 f"(it has {', '.join(st['sources'])})")
            if part in alias:
                raise ValueError(f"merge: source {part!r} is in both {alias[part]!r} and {new_name!r}")
            alias[part] = new_name
    out: dict[str, dict[str, int]] = {}
    for source, s in st["sources"].items():
        if "boxes_per_class" not in s:
            raise ValueError(f"{path}: source {source!r} has no boxes_per_class (written by an older dataset_stats.py)")
        key = alias.get(source, source)
        for name, n in s["boxes_per_class"].items():
            per = out.setdefault(name, {})
            per[key] = per.get(key, 0) + n
    return out


def by_count(boxes: dict[str, int] | None) -> list[tuple[str, int]]:
    """A class's (source, boxes), most boxes first (a tie: alphabetical)."""
    return sorted((boxes or {}).items(), key=lambda kv: (-kv[1], kv[0]))


def main_source(boxes: dict[str, int] | None) -> str:
    """The source with most of a class's training boxes (a tie: the alphabetically first), or '(none)'."""
    ranked = by_count(boxes)
    return ranked[0][0] if ranked else "(none)"


def source_rows(rows: list[dict], source_boxes: dict[str, dict[str, int]]) -> list[dict]:
    """The change of mAP split by each class's main training source: per source the classes, their objects, their
    mean AP in the first and last evaluation and ``contribution`` = their summed change / all compared classes, so
    the contributions add up to the change of mAP over the classes that both evaluations score."""
    both = [r for r in rows if r["delta"] is not None]
    groups: dict[str, list[dict]] = {}
    for r in both:
        groups.setdefault(main_source(source_boxes.get(r["name"])), []).append(r)
    names = list(both[0]["ap"]) if both else []
    out = []
    for source, rs in groups.items():
        out.append({"source": source, "classes": len(rs), "num_gt": sum(r["num_gt"] for r in rs),
                    "first": sum(r["ap"][names[0]] for r in rs) / len(rs),
                    "last": sum(r["ap"][names[-1]] for r in rs) / len(rs),
                    "contribution": sum(r["delta"] for r in rs) / len(both)})
    return sorted(out, key=lambda g: (-g["contribution"], g["source"]))


def markdown(metrics: dict[str, dict], rows: list[dict],
             source_boxes: dict[str, dict[str, int]] | None = None) -> str:
    names = list(metrics)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    def boxes(name):
        return ", ".join(f"{k} {n}" for k, n in by_count((source_boxes or {}).get(name))) or "0"

    change = len(names) > 1
    head = ["class", "objects", *names] + (["change"] if change else []) + (
        ["training boxes"] if source_boxes is not None else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], str(r["num_gt"]), *(pct(r["ap"][n]) for n in names)]
        if change:
            cells.append("-" if r["delta"] is None else f"{100 * r['delta']:+.1f}")
        if source_boxes is not None:
            cells.append(boxes(r["name"]))
        lines.append("| " + " | ".join(cells) + " |")
    maps = [metrics[n]["mAP"] for n in names]
    tail = ["**mAP**", str(sum(r["num_gt"] for r in rows)), *(f"**{pct(v)}**" for v in maps)]
    if change:
        tail.append(f"**{100 * (maps[-1] - maps[0]):+.2f}**")
    if source_boxes is not None:
        tail.append("")
    lines.append("| " + " | ".join(tail) + " |")
    if source_boxes is not None and change:
        lines += ["", f"| main training source | classes | objects | mean AP {names[0]} | mean AP {names[-1]} | "
                      "share of the mAP change |", "|---|---|---|---|---|---|"]
        groups = source_rows(rows, source_boxes)
        for g in groups:
            lines.append(f"| {g['source']} | {g['classes']} | {g['num_gt']} | {pct(g['first'])} | {pct(g['last'])} | "
                         f"{100 * g['contribution']:+.2f} |")
        scored = sum(g["classes"] for g in groups)
        lines.append(f"| **all** ({scored} of {len(rows)} classes scored by both) | {scored} | "
                     f"{sum(g['num_gt'] for g in groups)} | | | **{100 * sum(g['contribution'] for g in groups):+.2f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=METRICS_JSON")
    ap.add_argument("--sort", default="delta", choices=["delta", "gt", "name"])
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--stats", default=None, help="dataset_stats.py --json file: training boxes per class and source")
    ap.add_argument("--split", default=None, help="the split of --stats to use (default: its last)")
    ap.add_argument("--merge", action="append", default=[], metavar="NAME=SOURCE,SOURCE,...",
                    help="count these sources of --stats as one (repeatable), e.g. coco_subsets=coco_tiny_train,...")
    args = ap.parse_args(argv)
    merge = {}
    for spec in args.merge:
        name, sep, parts = spec.partition("=")
        if not sep or not name or not parts:
            sys.exit(f"error: --merge {spec!r}: give NAME=SOURCE,SOURCE,...")
        if name in merge:
            sys.exit(f"error: --merge {name!r} given twice")
        merge[name] = [p for p in parts.split(",") if p]
        if not merge[name]:
            sys.exit(f"error: --merge {spec!r}: no sources")
    if not args.stats and (args.split or merge):
        ap.error("--split and --merge need --stats")
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
        boxes = load_source_boxes(args.stats, args.split, merge) if args.stats else None
        table = markdown(metrics, class_rows(metrics, sort=args.sort), boxes)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
