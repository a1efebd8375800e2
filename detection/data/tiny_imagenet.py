"""Tiny ImageNet (CS231n): 64 x 64 ImageNet photos, one boxed object each, labelled by ImageNet wnid.

Layout (as distributed, e.g. ``rangeetpan/IMagenet`` @ 6125d8a, folder ``tiny-imagenet-200/``)::

    wnids.txt                             one wnid per line
    train/<wnid>/<wnid>_boxes.txt         <file> <x0> <y0> <x1> <y1>  per image of train/<wnid>/images/
    val/val_annotations.txt               <file> <wnid> <x0> <y0> <x1> <y1>  per image of val/images/

Boxes are 0-based pixel indices *inclusive* of the last pixel (``x1 <= 63``; a box of one pixel column has
``x0 == x1``), so ``x1 + 1, y1 + 1`` gives the project's continuous, exclusive ``xyxy``.  Wnids map to DET-200 by
the WordNet hierarchy (``class_map="imagenet"``: :func:`detection.labels.imagenet_map`); the images of a wnid with
no DET ancestor are counted (``unmapped_synset``) and skipped, never guessed, as are a wnid's images without a
boxes file (``no_boxes``) or whose photos all carry one placeholder box (``placeholder_boxes``).  Photos stored twice (byte for byte) are kept once, and dropped altogether when the
copies disagree on the DET class (``conflicting_duplicate``).  Only one object per photo is boxed, so the records
are marked ``exhaustive=False``: training takes positives from them and no background (R-CNN's rule for ILSVRC's
classification images).
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from pathlib import Path

import torch

from detection.data.records import DetectionDataset, ImageRecord, ScanReport, SkipImage, sanitize_boxes
from detection.data.scan import image_size_or_skip, resolve_class_map, scan
from detection.labels import ClassMap

__all__ = ["read_tiny_imagenet"]


def _lines(path: Path) -> list[list[str]]:
    return [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _box(vals: list[str], where: str) -> list[float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in vals)
    except ValueError:
        raise SkipImage("bad_annotation", f"{where}: box {' '.join(vals)!r} is not four numbers") from None
    return [x0, y0, x1 + 1.0, y1 + 1.0]  # inclusive pixel indices -> continuous exclusive


def read_tiny_imagenet(root: str | Path, *, split: str = "train", class_map: str | ClassMap = "imagenet",
                       per_class: int | None = None, seed: int = 0, skip_per_class: int = 0,
                       exhaustive: bool = False,
                       name: str | None = None, progress: bool = True) -> DetectionDataset:
    """Tiny ImageNet's ``train`` or ``val`` split in DET-200 labels.

    ``per_class``: at most this many images per wnid (a seeded random choice, fixed per wnid whatever the other
    wnids); ``None``: all.  ``skip_per_class``: pass over the first this many of each wnid's seeded order first, so
    that ``per_class=5, skip_per_class=25`` draws photos disjoint from ``per_class=25`` (a dev split carved from
    the photos a model trained on ``per_class=25`` never saw).  Raises ``FileNotFoundError`` naming the path when ``root`` is not a Tiny ImageNet folder.
    """
    root = Path(root)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(f"{wnids_file}: not found -- is {root} a Tiny ImageNet folder (wnids.txt, train/, val/)?")
    cmap = resolve_class_map(class_map)
    wnids = [w[0] for w in _lines(wnids_file)]
    report = ScanReport()
    name = name or f"tiny_imagenet_{split}"

    # (image path, wnid, raw box fields, where) per image, grouped by wnid
    entries: dict[str, list[tuple[Path, list[str], str]]] = defaultdict(list)
    if split == "train":
        for w in wnids:
            box_file = root / "train" / w / f"{w}_boxes.txt"
            img_dir = root / "train" / w / "images"
            if not box_file.is_file():
                n = len(list(img_dir.glob("*.JPEG"))) if img_dir.is_dir() else 0
                report.add("no_boxes", box_file, f"not found: the {n} images of {w} have no boxes", n=max(n, 1))
                continue
            for k, f in enumerate(_lines(box_file), 1):
                if len(f) != 5:
                    report.add("bad_annotation", box_file, f"line {k}: expected '<file> x0 y0 x1 y1', got {' '.join(f)!r}")
                    continue
                entries[w].append((img_dir / f[0], f[1:], f"{box_file}:{k}"))
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise FileNotFoundError(f"{ann}: not found -- is {root} a Tiny ImageNet folder?")
        for k, f in enumerate(_lines(ann), 1):
            if len(f) != 6:
                report.add("bad_annotation", ann, f"line {k}: expected '<file> <wnid> x0 y0 x1 y1', got {' '.join(f)!r}")
                continue
            entries[f[1]].append((root / "val" / "images" / f[0], f[2:], f"{ann}:{k}"))

    chosen: list[tuple[Path, str, int, list[str], str]] = []
    for w in sorted(entries, key=lambda x: (wnids.index(x) if x in wnids else len(wnids), x)):
        items = entries[w]
        common, n_common = Counter(tuple(b) for _, b, _ in items).most_common(1)[0]
        if len(items) >= 5 and n_common >= 0.8 * len(items) and common[:2] != ("0", "0"):
            # the same small box on (nearly) every photo of a class is a placeholder, not an annotation (this copy's
            # two appended val classes: 17 33 28 39 on 48 and 50 of their 50 photos)
            report.add("placeholder_boxes", f"{split}/{w}", f"{len(items)} images: box {' '.join(common)} on "
                       f"{n_common} of them", n=len(items))
            continue
        try:
            det = cmap.lookup(w)
        except KeyError:
            report.add("unmapped_synset", f"{split}/{w}", f"{len(items)} images: wnid not in class map {cmap.source}",
                       n=len(items))
            continue
        if det is None:
            report.add("unmapped_synset", f"{split}/{w}", f"{len(items)} images: no DET-200 ancestor in WordNet",
                       n=len(items))
            continue
        chosen += [(p, w, det, box, where) for p, box, where in items]

    # byte-identical photos (over all the mapped photos, before any per_class choice): keep one; drop every copy
    # when they disagree on the DET class
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, (p, *_rest) in enumerate(chosen):
        try:
            by_hash[hashlib.sha1(p.read_bytes()).hexdigest()].append(i)
        except OSError:
            pass  # the scan reports the missing file
    drop = set()
    for idx in by_hash.values():
        if len(idx) > 1:
            if len({chosen[i][2] for i in idx}) > 1:
                for i in idx:
                    report.add("conflicting_duplicate", chosen[i][0],
                               "the same photo is labelled " + " and ".join(sorted({chosen[j][1] for j in idx})))
                drop.update(idx)
            else:
                for i in idx[1:]:
                    report.add("duplicate_image", chosen[i][0], f"the same photo as {chosen[idx[0]][0].name}")
                drop.update(idx[1:])
    chosen = [c for i, c in enumerate(chosen) if i not in drop]
    if skip_per_class < 0:
        raise ValueError(f"skip_per_class must be >= 0, got {skip_per_class}")
    if per_class is not None or skip_per_class:  # a fixed, seeded choice per wnid, whatever the other wnids
        by_wnid: dict[str, list] = defaultdict(list)
        for c in chosen:
            by_wnid[c[1]].append(c)
        chosen = []
        for w, items in by_wnid.items():
            if skip_per_class or len(items) > (per_class or 0):
                items = sorted(items, key=lambda e: e[0].name)
                random.Random(f"{seed}:{w}").shuffle(items)
                end = None if per_class is None else skip_per_class + per_class
                items = sorted(items[skip_per_class:end], key=lambda e: e[0].name)
            chosen += items

    def parse(item, rep: ScanReport) -> ImageRecord:
        path, w, det, raw, where = item
        width, height = image_size_or_skip(path)
        b, ok = sanitize_boxes(torch.tensor([_box(raw, where)]), width=width, height=height, file=where, report=rep)
        if not ok.all():
            raise SkipImage("bad_annotation", f"{where}: its only box is unusable (see the box counts)")
        stem = f"{split}/{w}/{path.stem}" if split == "train" else f"val/{path.stem}"
        return ImageRecord(path=path, width=width, height=height, boxes=b, labels=torch.tensor([det]),
                           difficult=torch.tensor([False]), image_id=stem, exhaustive=exhaustive)

    records = scan(chosen, parse, name=name, report=report, total=len(chosen), progress=progress)
    return DetectionDataset(name, records, report)
