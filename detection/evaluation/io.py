"""Detection files: COCO results JSON and the ILSVRC submission text format, read against a dataset, and written.

* COCO results: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, or a dict holding such a
  list under ``"annotations"`` with ``"images"`` (``id`` -> ``file_name``) and ``"categories"`` (``id`` -> ``name``).
  Plain lists use our writer's ids: ``image_id`` = the dataset's 1-based image index, ``category_id`` = DET id.
  With ``images``/``categories`` given, images are matched by file name and classes by name (DET-200 names or
  wnids, else VOC-20, else COCO-80 names).
* ILSVRC: lines ``<image_index> <det_id> <score> <xmin> <ymin> <xmax> <ymax>``, 1-based inclusive pixel boxes.

Detections that cannot be placed (unknown image, class with no DET-200 synset) are dropped and counted in the returned
:class:`~detection.data.records.ScanReport`, never silently.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from detection.boxes import box_inclusive_to_xyxy, box_xywh_to_xyxy, box_xyxy_to_inclusive, box_xyxy_to_xywh
from detection.data.coco_yolo import load_json
from detection.data.records import DetectionDataset, ScanReport
from detection.evaluation.detections import Detections
from detection.labels import coco80_map, identity_map, voc20_map
from detection.files import atomic_write_text

__all__ = ["read_detections", "read_coco_results", "read_ilsvrc_submission", "write_coco_results",
           "write_ilsvrc_submission"]


def _class_by_name(name: str) -> int | None:
    """DET index of a class name in any known vocabulary; None when it has no DET-200 synset; KeyError if unknown."""
    for cmap in (identity_map(), voc20_map(), coco80_map()):
        try:
            return cmap.lookup(name)
        except KeyError:
            continue
    raise KeyError(name)


def _image_lookup(dataset: DetectionDataset) -> dict[str, int]:
    """File name / stem / image id -> dataset position."""
    out = {}
    for pos, r in enumerate(dataset.records):
        for k in (r.path.name, r.path.stem, r.image_id, r.image_id.rsplit("/", 1)[-1]):
            out.setdefault(k, pos)
    return out


def read_coco_results(path: str | Path, dataset: DetectionDataset) -> tuple[Detections, ScanReport]:
    """COCO results JSON (list, or dict with annotations/images/categories) -> detections on ``dataset``."""
    path = Path(path)
    data = load_json(path)
    report = ScanReport()
    if isinstance(data, dict):
        if not isinstance(data.get("annotations"), list):
            raise ValueError(f"{path}: a dict of detections needs an 'annotations' list")
        anns = data["annotations"]
        by_name = _image_lookup(dataset)
        img_map = {}
        for im in data.get("images", []):
            key = Path(str(im.get("file_name", ""))).name
            if key in by_name or Path(key).stem in by_name:
                img_map[im["id"]] = by_name.get(key, by_name.get(Path(key).stem))
        cat_map = {}
        for c in data.get("categories", []):
            try:
                cat_map[c["id"]] = _class_by_name(str(c["name"]))
            except KeyError:
                cat_map[c["id"]] = "unknown:" + str(c["name"])
        if not data.get("images"):
            img_map = {idx: pos for pos, idx in enumerate(dataset.image_indices)}
        if not data.get("categories"):
            cat_map = {c: c for c in range(1, 201)}
    elif isinstance(data, list):
        anns = data
        img_map = {idx: pos for pos, idx in enumerate(dataset.image_indices)}
        cat_map = {c: c for c in range(1, 201)}
    else:
        raise ValueError(f"{path}: expected a list of detections or a dict with 'annotations'")
    image, boxes, scores, labels = [], [], [], []
    for i, a in enumerate(anns):
        try:
            img_id, cat_id, bbox, score = a["image_id"], a["category_id"], a["bbox"], float(a["score"])
            if len(bbox) != 4:
                raise ValueError
            bbox = [float(v) for v in bbox]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: detection {i} is malformed (needs image_id, category_id, bbox[4], score): "
                             f"{str(a)[:120]}") from None
        if img_id not in img_map:
            report.add("detection_unknown_image", path, f"image_id {img_id}")
            continue
        label = cat_map.get(cat_id)
        if label is None or isinstance(label, str):
            kind = "detection_unknown_class" if isinstance(label, str) or cat_id not in cat_map else \
                "detection_unmapped_class"
            report.add(kind, path, f"category_id {cat_id} ({label if isinstance(label, str) else 'no DET synset'})")
            continue
        image.append(img_map[img_id])
        boxes.append(bbox)
        scores.append(score)
        labels.append(label)
    dets = Detections(image, box_xywh_to_xyxy(boxes), scores, labels) if image else Detections.empty()
    return dets, report


def read_ilsvrc_submission(path: str | Path, dataset: DetectionDataset) -> tuple[Detections, ScanReport]:
    """ILSVRC submission text -> detections on ``dataset`` (devkit: images not in the split are pruned, counted)."""
    path = Path(path)
    report = ScanReport()
    try:
        arr = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: not an ILSVRC submission (<image> <det_id> <score> <x1> <y1> <x2> <y2>): {e}") \
            from None
    if arr.size == 0:
        return Detections.empty(), report
    if arr.shape[1] != 7:
        raise ValueError(f"{path}: expected 7 columns per line, found {arr.shape[1]}")
    img_idx, det_id = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    pos_of = {idx: pos for pos, idx in enumerate(dataset.image_indices)}
    pos = np.array([pos_of.get(int(i), -1) for i in img_idx], dtype=np.int64)
    ok = pos >= 0
    if (~ok).any():
        report.add("detection_unknown_image", path, f"image indices e.g. {sorted(set(img_idx[~ok].tolist()))[:5]}",
                   n=int((~ok).sum()))
    bad_cls = ok & ((det_id < 1) | (det_id > 200))
    if bad_cls.any():
        report.add("detection_unknown_class", path, f"det ids e.g. {sorted(set(det_id[bad_cls].tolist()))[:5]}",
                   n=int(bad_cls.sum()))
    ok &= ~bad_cls
    return Detections(pos[ok], box_inclusive_to_xyxy(arr[ok, 3:7]), arr[ok, 2], det_id[ok]), report


def read_detections(path: str | Path, dataset: DetectionDataset) -> tuple[Detections, ScanReport]:
    """A detections file by its extension: ``.json`` (COCO results) or ``.txt`` (ILSVRC submission)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detections file not found")
    if path.suffix.lower() == ".json":
        return read_coco_results(path, dataset)
    if path.suffix.lower() in (".txt", ".det"):
        return read_ilsvrc_submission(path, dataset)
    raise ValueError(f"{path}: unknown detections format (expected .json COCO results or .txt ILSVRC submission)")


def write_coco_results(dets: Detections, dataset: DetectionDataset, path: str | Path) -> None:
    """COCO results list with ``image_id`` = the dataset's 1-based image index and ``category_id`` = DET id."""
    idx = np.asarray(dataset.image_indices)[dets.image.numpy()] if len(dets) else []
    xywh = box_xyxy_to_xywh(dets.boxes).tolist()
    out = [{"image_id": int(i), "category_id": int(c), "bbox": b, "score": float(s)}
           for i, c, b, s in zip(idx, dets.labels.tolist(), xywh, dets.scores.tolist())]
    atomic_write_text(path, json.dumps(out))


def write_ilsvrc_submission(dets: Detections, dataset: DetectionDataset, path: str | Path) -> None:
    """ILSVRC submission text: ``<image_index> <det_id> <score> <xmin> <ymin> <xmax> <ymax>`` (1-based, inclusive)."""
    idx = np.asarray(dataset.image_indices)[dets.image.numpy()] if len(dets) else []
    inc = box_xyxy_to_inclusive(dets.boxes).double().numpy() if len(dets) else np.zeros((0, 4))
    # full precision, so that a written file evaluates exactly like the detections it came from
    lines = [f"{int(i)} {int(c)} {s!r} {b[0]:.9g} {b[1]:.9g} {b[2]:.9g} {b[3]:.9g}"
             for i, c, s, b in zip(idx, dets.labels.tolist(), dets.scores.tolist(), inc)]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))

