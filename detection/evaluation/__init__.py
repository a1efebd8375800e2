"""Evaluation: the ILSVRC DET protocol (the truth), the VOC protocol, and pycocotools AP50 as a cross-check."""
from __future__ import annotations

from detection.data.records import DetectionDataset
from detection.evaluation.coco import evaluate_coco
from detection.evaluation.detections import Detections, GroundTruth
from detection.evaluation.io import (read_detections, write_coco_results, write_ilsvrc_submission)
from detection.evaluation.protocols import PROTOCOLS, Metrics, evaluate_ilsvrc, evaluate_voc, voc_ap
from detection.evaluation.report import format_table, plot_pr, save_metrics

__all__ = ["evaluate", "Detections", "GroundTruth", "Metrics", "PROTOCOLS", "evaluate_ilsvrc", "evaluate_voc",
           "evaluate_coco", "voc_ap", "read_detections", "write_coco_results", "write_ilsvrc_submission",
           "format_table", "plot_pr", "save_metrics"]


def evaluate(detections: Detections, dataset: DetectionDataset, *, protocol: str = "ilsvrc") -> Metrics:
    """Score ``detections`` against ``dataset``'s ground truth with ``protocol`` in ``ilsvrc`` | ``voc`` | ``coco``."""
    gt = GroundTruth.from_dataset(dataset)
    if protocol == "ilsvrc":
        return evaluate_ilsvrc(detections, gt)
    if protocol == "voc":
        return evaluate_voc(detections, gt)
    if protocol == "coco":
        return evaluate_coco(detections, gt)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
