"""Readers for VOC-style XML annotations and the ILSVRC DET layout as distributed.

Both use 1-based inclusive pixel boxes (``<xmin>..<xmax>``), converted at this edge to the project's continuous
``(x1, y1, x2, y2)`` with :func:`detection.boxes.box_inclusive_to_xyxy`.  The image size written in an XML is never
trusted: the real size comes from the image header (many real XMLs say ``0 x 0``), and a disagreement is reported.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from detection.boxes import box_inclusive_to_xyxy
from detection.data.records import DetectionDataset, ScanReport, SkipImage
from detection.data.scan import build_record, image_size_or_skip, resolve_class_map, scan
from detection.labels import ClassMap, det200

__all__ = ["read_voc", "read_ilsvrc_det", "parse_voc_xml", "read_blacklist"]

_IMAGE_EXTS = (".jpg", ".jpeg", ".JPEG", ".JPG", ".png", ".PNG", ".bmp")


def parse_voc_xml(xml_path: Path) -> dict:
    """Parse one VOC/ILSVRC XML -> ``{"filename", "width", "height", "names", "boxes" (inclusive), "difficult"}``.

    Raises ``SkipImage("bad_annotation", ...)`` naming the file for malformed XML or a malformed object.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise SkipImage("bad_annotation", f"{xml_path}: malformed XML ({e})") from None
    except OSError as e:
        raise SkipImage("bad_annotation", f"{xml_path}: cannot read ({e})") from None

    def num(node, tag: str, default: float | None = None) -> float:
        el = node.find(tag)
        if el is None or el.text is None or not el.text.strip():
            if default is not None:
                return default
            raise SkipImage("bad_annotation", f"{xml_path}: <{tag}> missing or empty")
        try:
            return float(el.text.strip())
        except ValueError:
            raise SkipImage("bad_annotation", f"{xml_path}: <{tag}> is not a number: {el.text.strip()!r}") from None

    size = root.find("size")
    names, boxes, difficult = [], [], []
    for obj in root.findall("object"):
        name_el = obj.find("name")
        bb = obj.find("bndbox")
        if name_el is None or not (name_el.text or "").strip() or bb is None:
            raise SkipImage("bad_annotation", f"{xml_path}: <object> without <name> or <bndbox>")
        names.append(name_el.text.strip())
        boxes.append([num(bb, "xmin"), num(bb, "ymin"), num(bb, "xmax"), num(bb, "ymax")])
        difficult.append(num(obj, "difficult", 0.0) > 0)
    fn = root.find("filename")
    return {
        "filename": fn.text.strip() if fn is not None and fn.text else None,
        "width": int(num(size, "width", 0.0)) if size is not None else 0,
        "height": int(num(size, "height", 0.0)) if size is not None else 0,
        "names": names,
        "boxes": boxes,
        "difficult": difficult,
    }


def _find_image(images_dir: Path, stem: str, filename: str | None) -> Path:
    if filename:
        p = images_dir / Path(filename).name
        if p.exists():
            return p
    for ext in _IMAGE_EXTS:
        p = images_dir / f"{stem}{ext}"
        if p.exists():
            return p
    raise SkipImage("missing_image", f"{images_dir / stem}.*: no image for annotation {stem}.xml")


def _record_from_xml(xml_path: Path, image_path: Path | None, images_dir: Path, image_id: str,
                     class_map: ClassMap, report: ScanReport, strict: bool):
    ann = parse_voc_xml(xml_path)
    path = image_path if image_path is not None else _find_image(images_dir, xml_path.stem, ann["filename"])
    width, height = image_size_or_skip(path)
    if ann["width"] <= 0 or ann["height"] <= 0:
        report.add("size_from_image", xml_path, f"XML says {ann['width']}x{ann['height']}, image is {width}x{height}")
    elif (ann["width"], ann["height"]) != (width, height):
        report.add("size_mismatch", xml_path, f"XML says {ann['width']}x{ann['height']}, image is {width}x{height}")
    return build_record(path=path, image_id=image_id, width=width, height=height, names=ann["names"],
                        boxes=box_inclusive_to_xyxy(ann["boxes"]), difficult=ann["difficult"], class_map=class_map,
                        ann_file=xml_path, report=report, strict=strict)


def read_voc(root: str | Path, *, annotations: str = "Annotations", images: str = "JPEGImages",
             class_map: str | ClassMap = "voc20", image_set: str | None = None, name: str | None = None,
             strict: bool = False, progress: bool = True) -> DetectionDataset:
    """A VOC-style folder: ``root/annotations/*.xml`` and ``root/images/<filename>``.

    For datasets whose XMLs sit beside the images (e.g. ``fruit/``) pass ``annotations="."`` and ``images="."``.
    ``image_set`` optionally names a file of ids (one per line, like ``ImageSets/Main/val.txt``) to restrict to.
    ``class_map``: ``"voc20"``, ``"coco80"`` or ``"det200"`` (XML names already DET-200 names or wnids).
    """
    root = Path(root)
    ann_dir, img_dir = root / annotations, root / images
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: annotation folder not found (read_voc root={root})")
    cmap = resolve_class_map(class_map)
    if image_set is not None:
        ids = [ln.split()[0] for ln in (root / image_set).read_text().splitlines() if ln.strip()]
        xmls = [ann_dir / f"{i}.xml" for i in ids]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    dname = name or root.name
    report = ScanReport()
    records = scan(xmls, lambda x, rep: _record_from_xml(x, None, img_dir, x.stem, cmap, rep, strict),
                   name=dname, report=report, total=len(xmls), progress=progress)
    if image_set is None and img_dir.is_dir():  # images nobody annotated are not silently part of the dataset
        used = {r.path.name for r in records}
        annotated = {x.stem for x in xmls}
        for p in sorted(img_dir.iterdir()):
            if p.suffix in _IMAGE_EXTS and p.name not in used and p.stem not in annotated:
                report.add("image_without_annotation", p, "not in the dataset")
    return DetectionDataset(dname, records, report)


def read_blacklist(path: Path, *, index_of_image: dict, dropped: set = frozenset()) -> set[tuple[int, int]]:
    """An ILSVRC blacklist file, lines ``<image index> <wnid or DET id>`` -> ``{(record position, DET label)}``.

    The image may be given by its ``ImageSets`` index (as in the devkit's files) or by its name.  Lines naming an
    image in ``dropped`` (in the image set, but skipped by the scan) are ignored; any other unknown image is an error.
    """
    space = det200()
    out = set()
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<image> <class>', got {line!r}")
        img, cls = parts
        key = int(img) if img.isdigit() else img
        if key in dropped:
            continue
        if key not in index_of_image:
            raise ValueError(f"{path}:{lineno}: image {img!r} is not in the image set")
        try:
            label = space.index(cls)
        except KeyError as e:
            raise ValueError(f"{path}:{lineno}: {e.args[0]}") from None
        out.add((index_of_image[key], label))
    return out


def read_ilsvrc_det(root: str | Path, *, split: str = "val", blacklist: str | Path | None = None,
                    name: str | None = None, strict: bool = False, progress: bool = True) -> DetectionDataset:
    """The ILSVRC DET layout as distributed.

    ``root/ImageSets/DET/<split>.txt`` (lines ``<image name> <index>``), ``root/Data/DET/<split>/<name>.JPEG`` and
    ``root/Annotations/DET/<split>/<name>.xml`` with wnid class names.  An image without an XML (negative training
    images) has no objects.  ``blacklist`` names the devkit's file of ``<image index> <wnid>`` pairs to ignore.
    """
    root = Path(root)
    set_file = root / "ImageSets" / "DET" / f"{split}.txt"
    if not set_file.is_file():
        raise FileNotFoundError(f"{set_file}: ILSVRC image set not found (root={root}, split={split})")
    entries = []
    for lineno, line in enumerate(set_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"{set_file}:{lineno}: expected '<image name> <index>', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    cmap = resolve_class_map("det200")
    data_dir, ann_dir = root / "Data" / "DET" / split, root / "Annotations" / "DET" / split
    report = ScanReport()
    dname = name or f"ilsvrc_det_{split}"
    index_of = {}

    def parse(entry, rep: ScanReport):
        stem, idx = entry
        img = data_dir / f"{stem}.JPEG"
        xml = ann_dir / f"{stem}.xml"
        if not xml.exists():
            width, height = image_size_or_skip(img)
            rec = build_record(path=img, image_id=stem, width=width, height=height, names=[], boxes=[],
                               difficult=[], class_map=cmap, ann_file=xml, report=rep)
        else:
            rec = _record_from_xml(xml, img, data_dir, stem, cmap, rep, strict)
        index_of[stem] = idx
        return rec

    records = scan(entries, parse, name=dname, report=report, total=len(entries), progress=progress)
    indices = [index_of[r.image_id] for r in records]
    bl = set()
    if blacklist is not None:
        lookup = {idx: pos for pos, idx in enumerate(indices)}
        lookup.update({r.image_id: pos for pos, r in enumerate(records)})
        dropped = {k for e in entries if e[0] not in index_of for k in e}
        bl = read_blacklist(Path(blacklist), index_of_image=lookup, dropped=dropped)
    return DetectionDataset(dname, records, report, blacklist=bl, image_indices=indices)
