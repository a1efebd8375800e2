"""One record type per image, a scan report that counts every problem, and the dataset container."""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from detection.boxes import as_boxes
from detection.data.image_io import read_image_rgb

__all__ = ["ImageRecord", "ScanReport", "DetectionDataset", "concat_datasets", "sanitize_boxes", "SkipImage",
           "set_exhaustive"]


@dataclass
class ImageRecord:
    """One annotated image.

    Attributes:
        path: the image file.
        width, height: the real size of the stored pixels (from the image header, never trusted from annotations).
        boxes: ``Tensor[N, 4]`` float32 ``(x1, y1, x2, y2)``, absolute continuous pixels, no +1.
        labels: ``Tensor[N]`` int64 DET-200 indices in 1..200.
        difficult: ``Tensor[N]`` bool; ignored by the VOC protocol, ordinary boxes for ILSVRC.
        image_id: a name unique within its dataset (e.g. ``"voc100/2007_000027"``).
        exhaustive: every object of the label space in the image is boxed (VOC, COCO, ILSVRC DET val), so what
            is not boxed is background.  ``False`` for sources that box one object per photo (ImageNet's
            classification/localisation images, Tiny ImageNet): training takes only positives from them (R-CNN).
        source, source_id: in a composite, the part the image comes from and its id there (set by
            :func:`concat_datasets`; empty for a dataset read alone).  Caches are kept per source
            (:class:`~detection.proposals.cache.DatasetCache`), so every composite holding a part shares its entries.
    """

    path: Path
    width: int
    height: int
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    image_id: str
    exhaustive: bool = True
    source: str = ""
    source_id: str = ""

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        self.difficult = torch.as_tensor(self.difficult, dtype=torch.bool).reshape(-1)
        n = self.boxes.shape[0]
        if self.labels.shape[0] != n or self.difficult.shape[0] != n:
            raise ValueError(f"{self.path}: {n} boxes but {self.labels.shape[0]} labels, {self.difficult.shape[0]} flags")

    def __len__(self) -> int:
        return self.boxes.shape[0]


class SkipImage(Exception):
    """Raised by a reader for an image that cannot be used; the scan counts it and goes on.

    ``detail`` starts with the file concerned and says what is wrong with it.
    """

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


# Which report kinds drop something (an image or a box) and which only note a repair.
_DROPS_IMAGE = {"unreadable_image", "bad_annotation", "missing_image", "unmapped_synset", "no_boxes",
                "duplicate_image", "held_out_image", "conflicting_duplicate", "placeholder_boxes"}
_DROPS_BOX = {"box_inverted", "box_zero_area", "box_outside", "box_nonfinite", "unknown_class",
              "detection_unknown_image", "detection_unknown_class", "detection_unmapped_class",
              "orphan_label_file"}


@dataclass
class ScanReport:
    """Counts of everything a dataset scan skipped, dropped or repaired, with the files concerned."""

    counts: Counter = field(default_factory=Counter)
    files: dict = field(default_factory=lambda: defaultdict(list))
    unmapped: Counter = field(default_factory=Counter)  # source class name -> boxes left unlabeled

    def add(self, kind: str, file: str | Path, detail: str = "", n: int = 1) -> None:
        self.counts[kind] += n
        self.files[kind].append(f"{file}{': ' + detail if detail else ''}")

    def add_unmapped(self, name: str, n: int = 1) -> None:
        self.counts["unmapped_class"] += n
        self.unmapped[name] += n

    def merge(self, other: "ScanReport") -> None:
        self.counts.update(other.counts)
        for k, v in other.files.items():
            self.files[k].extend(v)
        self.unmapped.update(other.unmapped)

    @property
    def images_skipped(self) -> int:
        return sum(self.counts[k] for k in _DROPS_IMAGE)

    @property
    def boxes_dropped(self) -> int:
        return sum(self.counts[k] for k in _DROPS_BOX)

    def summary(self, *, examples: int = 3) -> str:
        """Human-readable lines, one per kind of problem, with up to ``examples`` files each."""
        lines = []
        for kind in sorted(self.counts):
            if kind == "unmapped_class":
                names = ", ".join(f"{k} ({v})" for k, v in self.unmapped.most_common())
                lines.append(f"  unmapped_class: {self.counts[kind]} boxes of classes with no DET-200 synset left "
                             f"unlabeled (background): {names}")
                continue
            eg = self.files.get(kind, [])[:examples]
            more = f" (+{len(self.files[kind]) - len(eg)} more)" if len(self.files.get(kind, [])) > len(eg) else ""
            what = "image skipped" if kind in _DROPS_IMAGE else "dropped" if kind in _DROPS_BOX else "repaired"
            lines.append(f"  {kind} [{what}]: {self.counts[kind]} -- " + "; ".join(eg) + more)
        return "\n".join(lines) if lines else "  no problems found"


def sanitize_boxes(boxes: Tensor, *, width: int, height: int, file: str | Path,
                   report: ScanReport) -> tuple[Tensor, Tensor]:
    """Validate ``(x1, y1, x2, y2)`` boxes against an image of ``width`` x ``height``.

    Non-finite, inverted (``x2 < x1`` or ``y2 < y1``: ambiguous, so rejected rather than swapped) and wholly
    outside boxes are rejected; boxes reaching outside the image are clipped to it; boxes with zero width or height
    after clipping are rejected.  Every rejection and clip is counted in ``report`` with the file name.

    Returns:
        (boxes ``Tensor[M, 4]`` clipped, keep ``Tensor[N]`` bool mask into the input).
    """
    b = as_boxes(boxes)
    keep = torch.ones(b.shape[0], dtype=torch.bool)
    out = b.clone()
    for i, (x1, y1, x2, y2) in enumerate(b.tolist()):
        desc = f"box {i} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) in {width}x{height} image"
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            report.add("box_nonfinite", file, desc)
            keep[i] = False
        elif x2 < x1 or y2 < y1:
            report.add("box_inverted", file, desc)
            keep[i] = False
        elif x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
            report.add("box_outside", file, desc)
            keep[i] = False
        else:
            cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
            cx2, cy2 = min(x2, float(width)), min(y2, float(height))
            if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
                report.add("box_zero_area", file, desc)
                keep[i] = False
                continue
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                # Overshoot within a pixel is rounding in the source format (YOLO's normalised floats); beyond, a
                # real annotation error.  Both are clipped and counted, under separate names.
                over = max(-x1, -y1, x2 - width, y2 - height)
                report.add("box_clipped" if over > 1.0 else "box_clipped_subpixel", file, desc)
                out[i] = torch.tensor([cx1, cy1, cx2, cy2])
    return out[keep], keep


class DetectionDataset(torch.utils.data.Dataset):
    """A list of :class:`ImageRecord` with the report of its scan.

    ``dataset[i]`` is the i-th record; :meth:`load_image` decodes its pixels.  ``blacklist`` holds
    ``(record position, DET label)`` pairs that the ILSVRC protocol ignores on both sides.  ``image_indices`` are the
    1-based image numbers of the ILSVRC submission format (the ``ImageSets`` ids for an ILSVRC layout, else positions).
    """

    def __init__(self, name: str, records: Sequence[ImageRecord], report: ScanReport | None = None, *,
                 blacklist: Iterable[tuple[int, int]] = (), image_indices: Sequence[int] | None = None):
        self.name = name
        self.records = list(records)
        self.report = report if report is not None else ScanReport()
        self.blacklist = set(blacklist)
        self.image_indices = list(image_indices) if image_indices is not None else list(range(1, len(self.records) + 1))
        if len(self.image_indices) != len(self.records) or len(set(self.image_indices)) != len(self.records):
            raise ValueError(f"{name}: image_indices must be unique, one per record")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    def load_image(self, i: int) -> np.ndarray:
        """``uint8[H, W, 3]`` RGB pixels of record ``i``; raises ``ImageDecodeError`` naming the file."""
        return read_image_rgb(self.records[i].path)

    def verify_images(self, *, progress: bool = True) -> "DetectionDataset":
        """Decode every image once; a truncated or corrupt file (which a header-only scan cannot see) is removed and
        counted as ``unreadable_image`` in the report.  Returns the dataset of the images that decode."""
        from detection.progress import progress as progress_bar

        from detection.data.image_io import ImageDecodeError

        keep, bar = [], {} if progress else {"disable": True}
        for pos, r in enumerate(progress_bar(self.records, desc=f"verify {self.name}", unit="img", leave=False, **bar)):
            try:
                read_image_rgb(r.path)
            except ImageDecodeError as e:
                self.report.add("unreadable_image", str(e))
                continue
            keep.append(pos)
        return self.subset(keep)

    def subset(self, positions: Sequence[int]) -> "DetectionDataset":
        """The records at ``positions`` (in that order) with their blacklist entries and ILSVRC image numbers, and
        the same scan report; the dataset itself when ``positions`` is all of it in order."""
        positions = list(positions)
        if positions == list(range(len(self.records))):
            return self
        new_pos = {old: new for new, old in enumerate(positions)}
        return DetectionDataset(self.name, [self.records[i] for i in positions], self.report,
                                blacklist={(new_pos[i], c) for i, c in self.blacklist if i in new_pos},
                                image_indices=[self.image_indices[i] for i in positions])

    def exhaustive_only(self) -> "DetectionDataset":
        """The exhaustively annotated images only (what can teach background: see ``ImageRecord.exhaustive``)."""
        return self.subset([i for i, r in enumerate(self.records) if r.exhaustive])

    @property
    def num_boxes(self) -> int:
        return sum(len(r) for r in self.records)

    def class_counts(self) -> Counter:
        """DET label -> number of ground-truth boxes."""
        c: Counter = Counter()
        for r in self.records:
            c.update(r.labels.tolist())
        return c

    def class_boxes(self) -> dict[str, list[int]]:
        """``{wnid: [boxes in exhaustively annotated photos, boxes in positives-only photos]}`` of the classes with
        boxes: what a model trained on this dataset has seen of each class (``RegionEnsemble.class_boxes``)."""
        from detection.labels import det200

        space = det200()
        out: dict[str, list[int]] = {}
        for r in self.records:
            for lbl in r.labels.tolist():
                out.setdefault(space.wnid(lbl), [0, 0])[0 if r.exhaustive else 1] += 1
        return dict(sorted(out.items()))

    def summary(self) -> str:
        partial = sum(not r.exhaustive for r in self.records)
        head = (f"{self.name}: {len(self)} images, {self.num_boxes} boxes in {len(self.class_counts())} DET classes"
                f" ({self.report.images_skipped} images skipped, {self.report.boxes_dropped} boxes dropped)"
                + (f"; {partial} images not exhaustively annotated (positives only)" if partial else ""))
        return head + "\n" + self.report.summary()

    def __repr__(self) -> str:
        return f"DetectionDataset({self.name!r}, {len(self)} images, {self.num_boxes} boxes)"


def _file_key(r: ImageRecord) -> tuple[int, str]:
    """Size and SHA-1 of the bytes: the same photo, whatever its name (two public subsets of COCO share files;
    Tiny ImageNet stores some photos under two classes)."""
    import hashlib

    try:
        data = Path(r.path).read_bytes()
    except OSError:
        return (-1, str(r.path))
    return (len(data), hashlib.sha1(data).hexdigest())


_VOC2007_EXPORT = re.compile(r"^(\d{6})_jpg\.rf\.[0-9a-f]+$")  # a Roboflow export of VOC2007: 000549_jpg.rf.<hash>
_VOC2012_OF_2007 = re.compile(r"^(2007)_(\d{6})$")  # VOC2012's name for a VOC2007 photo: 2007_000549


def voc_photo_id(path: str | Path) -> str | None:
    """``"2007_000549"`` for VOC2007's photo 000549 under any of its names (VOC2012's ``2007_000549.jpg``, a Roboflow
    export's ``000549_jpg.rf.<hash>.jpg``); ``None`` for other files.  The same photo re-encoded has other bytes, so
    byte hashes cannot see that two splits share it; its VOC name can."""
    stem = Path(path).stem
    m = _VOC2007_EXPORT.match(stem)
    if m:
        return f"2007_{m.group(1)}"
    m = _VOC2012_OF_2007.match(stem)
    return f"{m.group(1)}_{m.group(2)}" if m else None


def _photo_key(r: ImageRecord) -> tuple:
    """Which photo a record is: its VOC id when it has one (re-encoded copies keep it), else its bytes."""
    vid = voc_photo_id(r.path)
    return ("voc", vid) if vid is not None else ("bytes", *_file_key(r))


def without_photos_of(dataset: DetectionDataset, others: DetectionDataset | Sequence[DetectionDataset], *,
                      name: str | None = None) -> DetectionDataset:
    """``dataset`` less every photo that one of ``others`` holds too (:func:`_photo_key`: the same VOC photo under
    another name, or the same bytes), each left out and counted in the report as ``held_out_image``: e.g. an
    evaluation split kept disjoint from the training photos.  Only photos without a VOC id are read for their bytes."""
    others = [others] if isinstance(others, DetectionDataset) else list(others)
    held = {_photo_key(r) for o in others for r in o.records}
    keep, report = [], ScanReport()
    report.merge(dataset.report)
    for i, r in enumerate(dataset.records):
        key = _photo_key(r)
        if key in held:
            report.add("held_out_image", r.path, f"the same photo ({key[1] if key[0] == 'voc' else 'same bytes'}) "
                                                 f"is in {', '.join(o.name for o in others)}")
            continue
        keep.append(i)
    out = dataset.subset(keep)
    return DetectionDataset(name or dataset.name, out.records, report, blacklist=out.blacklist,
                            image_indices=out.image_indices)


def set_exhaustive(dataset: DetectionDataset, exhaustive: bool = False) -> DetectionDataset:
    """The same dataset with every record's ``exhaustive`` flag set (a per-source flag: see :class:`ImageRecord`)."""
    records = [ImageRecord(r.path, r.width, r.height, r.boxes, r.labels, r.difficult, r.image_id, bool(exhaustive),
                           r.source, r.source_id) for r in dataset.records]
    return DetectionDataset(dataset.name, records, dataset.report, blacklist=dataset.blacklist,
                            image_indices=dataset.image_indices)


def sample_dataset(dataset: DetectionDataset, *, count: int, seed: int = 0) -> DetectionDataset:
    """A fixed, seeded random ``count`` of ``dataset``'s images, kept in their original order (blacklist and image
    numbers follow: :meth:`DetectionDataset.subset`); all of it when ``count`` reaches its size.  Image ids are
    unchanged, so the part's cached proposals and trunk maps serve the sample too."""
    if count < 1:
        raise ValueError(f"{dataset.name}: sample count must be >= 1, got {count}")
    if count >= len(dataset):
        return dataset
    gen = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(dataset), generator=gen)[:count].tolist())
    return dataset.subset(keep)


def concat_datasets(*parts: DetectionDataset, name: str | None = None, dedupe: bool = False,
                    exclude: DetectionDataset | Sequence[DetectionDataset] | None = None) -> DetectionDataset:
    """Composite dataset (e.g. train = voc07/train + coco128 + fruit); image ids are prefixed to stay unique.

    ``dedupe``: a photo that an earlier part already holds (the same bytes; e.g. the same COCO image in two public
    subsets) is left out and counted as ``duplicate_image``.  ``exclude``: photos of these datasets (a
    held-out split) are left out and counted as ``held_out_image`` -- training never sees an evaluation photo.
    """
    records, report, blacklist = [], ScanReport(), set()
    held = set()
    for ex in ([exclude] if isinstance(exclude, DetectionDataset) else list(exclude or [])):
        held |= {_file_key(r) for r in ex.records}
    seen: dict[tuple[int, str], str] = {}
    for part in parts:
        offset = len(records)
        new_pos = {}
        for i, r in enumerate(part.records):
            rid = r.image_id if r.image_id.startswith(part.name + "/") else f"{part.name}/{r.image_id}"
            if held or dedupe:
                key = _file_key(r)
                if key in held:
                    report.add("held_out_image", r.path, "the same photo is in the held-out split")
                    continue
                if dedupe and key in seen:
                    report.add("duplicate_image", r.path, f"the same photo as {seen[key]}")
                    continue
                seen[key] = rid
            new_pos[i] = len(records) - offset
            records.append(ImageRecord(r.path, r.width, r.height, r.boxes, r.labels, r.difficult, rid, r.exhaustive,
                                       r.source or part.name, r.source_id or r.image_id))
        report.merge(part.report)
        blacklist |= {(offset + new_pos[i], c) for i, c in part.blacklist if i in new_pos}
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        dup = [k for k, v in Counter(ids).items() if v > 1][:3]
        raise ValueError(f"composite dataset has duplicate image ids, e.g. {dup}: a part was given twice?")
    return DetectionDataset(name or "+".join(p.name for p in parts), records, report, blacklist=blacklist)
