"""Readers for COCO JSON (``bbox`` = 0-based continuous x, y, w, h) and YOLO txt (normalised centre/size)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import yaml

from detection.boxes import box_xywh_to_xyxy, box_yolo_to_xyxy
from detection.data.records import DetectionDataset, ScanReport, SkipImage
from detection.data.scan import build_record, image_size_or_skip, resolve_class_map, scan
from detection.labels import ClassMap

__all__ = ["read_coco", "read_yolo", "load_json"]

_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def load_json(path: Path):
    """``json.load`` with an error that names the file and the position of the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None


def read_coco(annotation_file: str | Path, *, images_dir: str | Path | None = None,
              class_map: str | ClassMap = "coco80", name: str | None = None, strict: bool = False,
              progress: bool = True) -> DetectionDataset:
    """A COCO-format JSON file.  Categories are mapped by *name* through ``class_map``; images are looked up in
    ``images_dir`` (default: the JSON's folder).  Crowd boxes (``iscrowd=1``) become ``difficult`` (ignored by the
    VOC protocol).  Categories no annotation uses (e.g. an exporter's parent category) are harmless.
    """
    annotation_file = Path(annotation_file)
    data = load_json(annotation_file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{annotation_file}: not a COCO dataset (needs 'images' and 'annotations' lists)")
    img_dir = Path(images_dir) if images_dir is not None else annotation_file.parent
    cmap = resolve_class_map(class_map)
    cat_names = {c["id"]: c["name"] for c in data.get("categories", []) if "id" in c and "name" in c}
    report = ScanReport()
    by_image = defaultdict(list)
    images = {}
    for im in data["images"]:
        if "id" not in im or "file_name" not in im:
            report.add("bad_annotation", annotation_file, f"image entry without id/file_name: {str(im)[:80]}")
            continue
        images[im["id"]] = im
    for ann in data["annotations"]:
        bbox = ann.get("bbox")
        if ann.get("image_id") not in images or not isinstance(bbox, list) or len(bbox) != 4:
            report.add("bad_annotation", annotation_file, f"annotation {ann.get('id')}: unknown image or bad bbox")
            continue
        by_image[ann["image_id"]].append(ann)

    def parse(image_id, rep: ScanReport):
        im = images[image_id]
        path = img_dir / im["file_name"]
        width, height = image_size_or_skip(path)
        if (im.get("width"), im.get("height")) != (width, height):
            rep.add("size_mismatch", path, f"JSON says {im.get('width')}x{im.get('height')}, image is {width}x{height}")
        anns = by_image.get(image_id, [])
        names = [cat_names.get(a.get("category_id"), f"<category id {a.get('category_id')}>") for a in anns]
        try:
            boxes = box_xywh_to_xyxy([[float(v) for v in a["bbox"]] for a in anns])
        except (TypeError, ValueError):
            raise SkipImage("bad_annotation", f"{annotation_file}: non-numeric bbox for image {im['file_name']}")
        return build_record(path=path, image_id=Path(im["file_name"]).stem, width=width, height=height, names=names,
                            boxes=boxes, difficult=[bool(a.get("iscrowd", 0)) for a in anns], class_map=cmap,
                            ann_file=f"{annotation_file}[{im['file_name']}]", report=rep, strict=strict)

    dname = name or annotation_file.parent.name
    records = scan(list(images), parse, name=dname, report=report, total=len(images), progress=progress)
    return DetectionDataset(dname, records, report)


def read_yolo(root: str | Path, *, images: str = "images", labels: str = "labels", names: str = "names.yaml",
              class_map: str | ClassMap = "coco80", name: str | None = None, strict: bool = False,
              progress: bool = True) -> DetectionDataset:
    """A YOLO folder: ``root/images/*.jpg``, ``root/labels/<stem>.txt`` with ``class cx cy w h`` (normalised) lines
    and ``root/names.yaml`` (``names: {index: name}`` or a list).  Boxes are scaled by the real image size.  An image
    without a label file has no objects (YOLO's convention) and is counted as such.
    """
    root = Path(root)
    img_dir, lbl_dir = root / images, root / labels
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir}: image folder not found (read_yolo root={root})")
    names_file = root / names
    try:
        raw = yaml.safe_load(names_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{names_file}: cannot read class names ({e})") from None
    raw = raw.get("names", raw) if isinstance(raw, dict) else raw
    index_to_name = dict(enumerate(raw)) if isinstance(raw, list) else {int(k): str(v) for k, v in raw.items()}
    cmap = resolve_class_map(class_map)
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)

    def parse(path: Path, rep: ScanReport):
        width, height = image_size_or_skip(path)
        lbl = lbl_dir / f"{path.stem}.txt"
        cls_names, boxes = [], []
        if not lbl.exists():
            rep.add("no_label_file", lbl, "image kept with no objects")
        else:
            for lineno, line in enumerate(lbl.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    cls, vals = int(parts[0]), [float(v) for v in parts[1:5]]
                    if len(parts) != 5:
                        raise ValueError
                except ValueError:
                    raise SkipImage("bad_annotation", f"{lbl}:{lineno}: expected 'class cx cy w h', got {line!r}")
                cls_names.append(index_to_name.get(cls, f"<class index {cls}>"))
                boxes.append(vals)
        return build_record(path=path, image_id=path.stem, width=width, height=height, names=cls_names,
                            boxes=box_yolo_to_xyxy(boxes, width=width, height=height),
                            difficult=[False] * len(cls_names), class_map=cmap, ann_file=lbl, report=rep,
                            strict=strict)

    dname = name or root.name
    report = ScanReport()
    records = scan(files, parse, name=dname, report=report, total=len(files), progress=progress)
    stems = {p.stem for p in files}
    for lbl in sorted(lbl_dir.glob("*.txt")) if lbl_dir.is_dir() else []:
        if lbl.stem not in stems:  # a label file whose image is missing: its boxes cannot be used
            n = sum(1 for ln in lbl.read_text().splitlines() if ln.strip())
            report.add("orphan_label_file", lbl, f"no image {lbl.stem}.* in {img_dir}; {n} boxes dropped", n=n)
    return DetectionDataset(dname, records, report)
