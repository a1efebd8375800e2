#!/usr/bin/env python
"""What a training split teaches: boxes per DET class and per source, and the classes with enough boxes.

    python tools/experiments/dataset_stats.py --split train breadth_train --min-boxes 20 [--extra-root PATH] [--json out.json]

For each split: images, boxes, positives-only photos, and per source (a composite's parts) the photos, boxes and
classes it brings (``--json``: also its boxes per class, which ``compare_classes.py --stats`` reads); then the
classes with at least ``--min-boxes`` boxes in each split, and those the later splits gain over the first.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from detection import config as hs


def split_stats(dataset, *, min_boxes: int) -> dict:
    from detection.labels import det200

    space = det200()
    per_source: dict[str, dict] = defaultdict(lambda: {"images": 0, "boxes": 0, "classes": Counter(),
                                                       "positives_only": 0})
    total = Counter()
    for r in dataset.records:
        s = per_source[r.source or dataset.name]
        s["images"] += 1
        s["boxes"] += len(r)
        s["positives_only"] += int(not r.exhaustive)
        s["classes"].update(r.labels.tolist())
        total.update(r.labels.tolist())
    enough = sorted((space.names[c] for c, n in total.items() if n >= min_boxes), key=str.lower)
    return {"dataset": dataset.name, "images": len(dataset), "boxes": dataset.num_boxes,
            "positives_only": sum(not r.exhaustive for r in dataset.records),
            "classes": len(total), f"classes_with_{min_boxes}_boxes": len(enough), "enough": enough,
            "boxes_per_class": {space.names[c]: n for c, n in total.most_common()},
            "sources": {k: {"images": v["images"], "boxes": v["boxes"], "positives_only": v["positives_only"],
                            "classes": len(v["classes"]),
                            f"classes_with_{min_boxes}_boxes": sum(n >= min_boxes for n in v["classes"].values()),
                            "boxes_per_class": {space.names[c]: n for c, n in v["classes"].most_common()}}
                        for k, v in per_source.items()}}


def main(argv=None) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", nargs="+", default=["train"], help="dataset presets (configs/dataset/)")
    ap.add_argument("--min-boxes", type=int, default=20)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--extra-root", default=None, help="public data outside the project (docs/breadth.md)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--class-boxes", default=None, metavar="FILE",
                    help="write the last split's training boxes per class ({wnid: [exhaustive, positives only]}) "
                         "as a <model>.class_boxes.json sidecar, for a model trained on it before its record kept "
                         "them (the ImageNet prior's trust reads them)")
    a = ap.parse_args(argv)
    hs.register_schemas()
    out = []
    for split in a.split:
        over = [f"dataset={split}"] + ([f"data_root={a.data_root}"] if a.data_root else []) + (
            [f"extra_root={a.extra_root}"] if a.extra_root else [])
        with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
            cfg = compose("train_classifier", overrides=over)
        hs.resolve_data_root(cfg)
        ds = instantiate(cfg.dataset, _convert_="all")
        st = split_stats(ds, min_boxes=a.min_boxes)
        out.append(st)
        k = f"classes_with_{a.min_boxes}_boxes"
        print(f"\n{ds.name}: {st['images']} images ({st['positives_only']} positives only), {st['boxes']} boxes, "
              f"{st['classes']} DET classes, {st[k]} with >= {a.min_boxes} boxes")
        print(f"  {'source':<22}{'images':>8}{'boxes':>8}{'pos.only':>9}{'classes':>9}{'>=' + str(a.min_boxes):>7}")
        for name, s in st["sources"].items():
            print(f"  {name:<22}{s['images']:>8}{s['boxes']:>8}{s['positives_only']:>9}{s['classes']:>9}{s[k]:>7}")
    if len(out) > 1:
        base = set(out[0]["enough"])
        for st in out[1:]:
            gained = sorted(set(st["enough"]) - base, key=str.lower)
            print(f"\n{st['dataset']} has {len(gained)} classes with >= {a.min_boxes} boxes that {out[0]['dataset']} "
                  f"lacks: {', '.join(gained)}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))
    if a.class_boxes:
        about = (f"training boxes per DET class (wnid) of a model trained on {ds.name}: [boxes in exhaustively "
                 f"annotated photos, boxes in positives-only photos]. tools/train_classifier.py writes the same into "
                 f"a new model's record (record['class_boxes']).")
        Path(a.class_boxes).write_text(json.dumps({"about": about, "class_boxes": ds.class_boxes()}, indent=1) + "\n")
        print(f"wrote {a.class_boxes} ({len(ds.class_boxes())} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
