"""pycocotools AP50 as a cross-check (a thin wrapper: the matching and AP are pycocotools' own).

This is a different protocol from ILSVRC's: 101-point interpolated AP, continuous-pixel IoU, at most 100 detections
per image and class, crowd regions.  Difficult objects are ordinary boxes here (as in ILSVRC).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.boxes import box_xyxy_to_xywh
from detection.evaluation.detections import Detections, GroundTruth
from detection.evaluation.protocols import Metrics

__all__ = ["evaluate_coco", "coco_ap50"]


def coco_ap50(coco_gt: COCO, coco_dt: COCO, *, max_dets: int = 100) -> tuple[float, dict[int, float]]:
    """AP at IoU 0.5 (area all, ``max_dets``) from pycocotools, overall and per category id."""
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.maxDets = [1, 10, max_dets]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress we do not want
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][0, :, :, 0, 2]  # [R, K] at IoU 0.5, area all, maxDets=max_dets
    per_cat = {}
    for k, cat in enumerate(ev.params.catIds):
        p = prec[:, k]
        per_cat[cat] = float(np.mean(p)) if (p > -1).all() else float("nan")
    valid = prec[prec > -1]
    return (float(np.mean(valid)) if valid.size else float("nan")), per_cat


def _gt_to_coco(gt: GroundTruth, num_classes: int) -> COCO:
    xywh = box_xyxy_to_xywh(gt.boxes).double().numpy()
    anns = [{"id": i + 1, "image_id": int(im) + 1, "category_id": int(c), "bbox": [float(v) for v in b],
             "area": float(b[2] * b[3]), "iscrowd": 0}
            for i, (im, c, b) in enumerate(zip(gt.image, gt.labels, xywh))]
    data = {"images": [{"id": i + 1} for i in range(gt.num_images)], "annotations": anns,
            "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)]}
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco(dets: Detections, gt: GroundTruth, *, num_classes: int = 200) -> Metrics:
    """pycocotools AP50 per DET class and its mean (classes without ground truth excluded)."""
    if gt.blacklist:
        stride = num_classes + 1
        bl = np.array([i * stride + c for i, c in gt.blacklist])
        keep_gt = ~np.isin(gt.image * stride + gt.labels, bl)
        gt = GroundTruth(gt.image[keep_gt], gt.boxes[keep_gt], gt.labels[keep_gt], gt.difficult[keep_gt], set(),
                         gt.num_images)
        dets = dets.select(torch.from_numpy(~np.isin(dets.image.numpy() * stride + dets.labels.numpy(), bl)))
    coco_gt = _gt_to_coco(gt, num_classes)
    npos = np.bincount(gt.labels, minlength=num_classes + 1)
    ndet = np.bincount(dets.labels.numpy(), minlength=num_classes + 1)
    if len(dets):
        xywh = box_xyxy_to_xywh(dets.boxes).double().numpy()
        # loadRes takes an [N, 7] array: image_id, x, y, w, h, score, category_id
        arr = np.column_stack([dets.image.numpy() + 1, xywh, dets.scores.numpy(), dets.labels.numpy()])
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(arr)
        m, per_cat = coco_ap50(coco_gt, coco_dt)
    else:
        per_cat = {c: 0.0 for c in range(1, num_classes + 1) if npos[c] > 0}
        m = float(np.mean(list(per_cat.values()))) if per_cat else float("nan")
    ap = {c: (per_cat.get(c, float("nan")) if npos[c] > 0 else float("nan")) for c in range(1, num_classes + 1)}
    return Metrics(protocol="coco", ap=ap, npos={c: int(npos[c]) for c in ap}, ndet={c: int(ndet[c]) for c in ap},
                   map=m, num_images=gt.num_images,
                   notes=["pycocotools AP50: 101-point interpolation, continuous pixels, maxDets=100 per image"])

