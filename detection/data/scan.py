"""The scan loop shared by all readers: progress bar, per-image error capture, label mapping, box checks."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import torch
from detection.progress import progress as progress_bar

from detection.data.image_io import ImageDecodeError, read_image_size
from detection.data.records import ImageRecord, ScanReport, SkipImage, sanitize_boxes
from detection.labels import ClassMap, coco80_map, identity_map, imagenet_map, voc20_map

__all__ = ["resolve_class_map", "scan", "build_record", "image_size_or_skip"]

T = TypeVar("T")

_MAPS: dict[str, Callable[[], ClassMap]] = {"voc20": voc20_map, "coco80": coco80_map, "det200": identity_map,
                                            "imagenet": imagenet_map}


def resolve_class_map(spec: str | Path | ClassMap) -> ClassMap:
    """``"voc20"``, ``"coco80"``, ``"det200"`` (names/wnids already in DET-200), ``"imagenet"`` (ImageNet wnids by
    the WordNet hierarchy), or a ``.tsv`` file of ``source name <tab> DET-200 wnid`` lines (``-``: no DET class,
    the objects stay unlabelled; ``#`` comments) -> :class:`ClassMap`."""
    if isinstance(spec, ClassMap):
        return spec
    if str(spec).endswith(".tsv"):
        from detection.labels import class_map_file

        return class_map_file(spec)
    if spec in _MAPS:
        return _MAPS[spec]()
    from importlib import resources

    from detection.labels import class_map_file

    shipped = resources.files("detection.resources").joinpath(f"{spec}_to_det200.tsv")
    if shipped.is_file():  # the maps of the smaller public sources (docs/breadth.md), shipped as <name>_to_det200.tsv
        return class_map_file(shipped)
    known = sorted(_MAPS) + sorted(f.name.removesuffix("_to_det200.tsv") for f in
                                   resources.files("detection.resources").iterdir()
                                   if f.name.endswith("_to_det200.tsv") and f.name.removesuffix("_to_det200.tsv")
                                   not in ("voc20", "coco80", "imagenet"))
    raise ValueError(f"unknown class map {spec!r}; choose one of {known} or a .tsv file")


def image_size_or_skip(path: Path) -> tuple[int, int]:
    """Real ``(width, height)`` from the image header; a missing or undecodable file becomes a counted skip."""
    if not path.exists():
        raise SkipImage("missing_image", f"{path}: image file not found")
    try:
        return read_image_size(path)
    except ImageDecodeError as e:
        raise SkipImage("unreadable_image", str(e)) from None


def build_record(*, path: Path, image_id: str, width: int, height: int, names: Sequence[str], boxes,
                 difficult: Sequence[bool], class_map: ClassMap, ann_file: str | Path, report: ScanReport,
                 strict: bool = False) -> ImageRecord:
    """Map source class names to DET-200, check boxes, and build the record.

    Objects of known classes with no DET-200 synset are dropped and counted as unlabeled (background); unknown class
    names are dropped and counted (or raise ``ValueError`` naming the file with ``strict=True``).
    """
    labels, keep = [], []
    for i, name in enumerate(names):
        try:
            det = class_map.lookup(name)
        except KeyError:
            if strict:
                raise ValueError(f"{ann_file}: unknown class name {name!r} (class map {class_map.source})") from None
            report.add("unknown_class", ann_file, f"{name!r} not in class map {class_map.source}")
            continue
        if det is None:
            report.add_unmapped(name)
            continue
        labels.append(det)
        keep.append(i)
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)[keep]
    flags = torch.as_tensor([bool(difficult[i]) for i in keep], dtype=torch.bool)
    b, ok = sanitize_boxes(b, width=width, height=height, file=ann_file, report=report)
    return ImageRecord(path=path, width=width, height=height, boxes=b,
                       labels=torch.as_tensor(labels, dtype=torch.int64)[ok], difficult=flags[ok], image_id=image_id)


def scan(items: Iterable[T], parse: Callable[[T, ScanReport], ImageRecord | None], *, name: str,
         report: ScanReport, total: int | None = None, progress: bool = True) -> list[ImageRecord]:
    """Run ``parse`` over ``items`` with a progress bar; a ``SkipImage`` is counted in ``report`` and the scan goes on.

    ``parse`` returns a record, or ``None`` for an item that is not an image of the dataset (nothing to count).
    """
    records = []
    bar = {} if progress else {"disable": True}  # without an explicit value, TQDM_DISABLE=1 still turns it off
    for item in progress_bar(items, total=total, desc=f"scan {name}", unit="img", leave=False, **bar):
        try:
            rec = parse(item, report)
        except SkipImage as e:
            report.add(e.kind, e.detail)
            continue
        if rec is not None:
            records.append(rec)
    return records
