"""The detector: proposals -> region-classifier ensemble -> per-class NMS -> detections in DET-200 labels.

No bounding-box regression (the paper's configuration): a detection's box is its proposal.  Boxes are
``Tensor[N, 4]`` float ``(x1, y1, x2, y2)``, absolute pixels, no +1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detection.models.region import RegionEnsemble

__all__ = ["DetectorSettings", "DetectionResult", "postprocess", "weight_sources", "Detector", "detect_dataset"]


@dataclass
class DetectorSettings:
    nms_iou: float = 0.3  # R-CNN's per-class NMS threshold
    max_per_class: int = 100  # per image
    score_threshold: float = 0.01
    members: int | None = None  # use the first ``members`` members of the ensemble (None: all)
    # also classify every proposal on the mirror image and average both views' softmax (test-time augmentation;
    # the classifiers were trained on both): twice the classifier's time (+0.36 s on chelsea, 2 cores); chosen on the
    # held-out COCO photos (docs/classifiers.md): 30.09 -> 30.37 % with 6 members, 25.36 -> 28.62 % with one
    flip: bool = True
    # the class scores of MultiBox's boxes are multiplied by this (1: as the classifiers give them).  MultiBox's boxes
    # are 14 % of `paper`'s proposals but half of its top detections, a third of those mislocalised (SS boxes: a
    # fifth): the classifiers over-trust them.  Chosen on the held-out COCO photos (docs/classifiers.md): 30.37 ->
    # 32.56 % with 6 members (SS alone 31.60, rcnn 31.57)
    multibox_weight: float = 0.5
    # multi-scale testing (Fast R-CNN): shorter sides of an image pyramid, e.g. (600, 1200); each proposal is pooled
    # from the level where its area is closest to 224^2.  None: the model's own image_size.  Off by default: on the
    # held-out COCO photos it helps the classes of many small objects (person +10, car +11 AP; val 62.06 -> 62.30 %)
    # but costs 3.4-4x the classifier's time and the mAP of 1-3-object classes (COCO 37.68 -> 34.91 %; docs/breadth.md,
    # "Small objects and multi-scale testing")
    image_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.multibox_weight <= 1.0:
            raise ValueError(f"multibox_weight must be in [0, 1], got {self.multibox_weight}")
        if self.image_sizes is not None:
            self.image_sizes = tuple(int(v) for v in self.image_sizes)
            if not self.image_sizes or min(self.image_sizes) < 1:
                raise ValueError(f"image_sizes must be positive shorter sides, got {list(self.image_sizes)}")


def weight_sources(probs: Tensor, source: Tensor | None, multibox_weight: float) -> Tensor:
    """``probs [N, C + 1]`` with the class columns of MultiBox's boxes (``source == 1``, the merge's tag) scaled by
    ``multibox_weight`` (background untouched); unchanged when ``source`` is ``None`` or the weight is 1."""
    if source is None or multibox_weight == 1.0:
        return probs
    source = torch.as_tensor(source).to(probs.device)
    if source.shape[0] != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} rows of scores but {source.shape[0]} source tags")
    out = probs.clone()
    out[source == 1, 1:] *= multibox_weight
    return out


@dataclass
class DetectionResult:
    """Detections of one image: ``boxes [D, 4]`` xyxy pixels, ``scores [D]``, ``labels [D]`` DET-200 (1..200), best
    first; ``seconds`` per stage (``proposals``, ``classify``, ``nms``); ``num_proposals``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    num_proposals: int = 0
    seconds: dict = field(default_factory=dict)


def postprocess(boxes: Tensor, probs: Tensor, *, nms_iou: float = 0.3, max_per_class: int = 100,
                score_threshold: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class NMS of class scores.

    Args:
        boxes: ``Tensor[N, 4]`` proposals.  probs: ``Tensor[N, C + 1]`` softmax, column 0 background.
    Returns:
        (boxes ``[D, 4]``, scores ``[D]``, labels ``[D]`` in 1..C), by descending score; every (proposal, class)
        with a score >= ``score_threshold`` is a candidate, NMS at ``nms_iou`` runs within each class, and each
        class keeps at most ``max_per_class`` boxes.
    """
    if probs.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {probs.shape[0]} rows of scores")
    cls_scores = probs[:, 1:].float()
    idx, cls = torch.nonzero(cls_scores >= score_threshold, as_tuple=True)
    if idx.numel() == 0:
        return boxes.new_zeros((0, 4)).float(), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    b, s, lab = boxes[idx].float(), cls_scores[idx, cls], cls + 1
    keep = batched_nms(b, s, lab, nms_iou)  # sorted by decreasing score
    b, s, lab = b[keep], s[keep], lab[keep]
    if max_per_class > 0:
        # rank of each detection within its class (detections are already sorted by score)
        order = torch.argsort(lab, stable=True)
        sorted_lab = lab[order]
        first = torch.searchsorted(sorted_lab, sorted_lab, side="left")
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order)) - first
        ok = rank < max_per_class
        b, s, lab = b[ok], s[ok], lab[ok]
    return b, s, lab


class Detector:
    """Proposals (a ``ProposalStage`` or given boxes) -> ensemble -> :func:`postprocess`."""

    def __init__(self, *, classifier: RegionEnsemble, proposals=None, settings: DetectorSettings | None = None):
        self.classifier = classifier.eval()
        self.proposals = proposals
        self.settings = settings or DetectorSettings()
        classifier.check_image_sizes(self.settings.image_sizes)  # a warp-mode model: said now, not at the first image

    def detect(self, image_rgb: np.ndarray, *, boxes: Tensor | None = None, source: Tensor | None = None
               ) -> DetectionResult:
        """Detect objects in one ``uint8[H, W, 3]`` RGB image; ``boxes``: precomputed proposals (else the stage's),
        ``source``: their merge tags (1: MultiBox, weighted by ``settings.multibox_weight``; ``None``: no weighting)."""
        t0 = time.perf_counter()
        seconds = {}
        if boxes is None:
            if self.proposals is None:
                raise ValueError("no proposals: pass boxes= or build the Detector with a proposal stage")
            boxes, source = self.proposals.propose(image_rgb)
            seconds.update(getattr(self.proposals, "last_seconds", {}))
            seconds["proposals"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        probs = self.classifier.predict(image_rgb, boxes, members=self.settings.members, flip=self.settings.flip,
                                        image_sizes=self.settings.image_sizes)
        probs = weight_sources(probs, source, self.settings.multibox_weight)
        t2 = time.perf_counter()
        b, s, lab = postprocess(boxes.float().cpu(), probs, nms_iou=self.settings.nms_iou,
                                max_per_class=self.settings.max_per_class,
                                score_threshold=self.settings.score_threshold)
        seconds.update(classify=t2 - t1, nms=time.perf_counter() - t2)
        seconds.update({f"classify.{k}": v for k, v in self.classifier.last_seconds.items()})
        return DetectionResult(boxes=b, scores=s, labels=lab, num_proposals=int(boxes.shape[0]), seconds=seconds)


def detect_dataset(detector: Detector, dataset, proposals: list, *, progress: bool = True, log=print):
    """Run ``detector`` over every image of ``dataset`` with precomputed ``proposals``, one per record: an entry of
    :meth:`proposals.pipeline.ProposalStage.load` (``{"boxes", "source", ...}``: MultiBox's boxes are weighted by
    their tags), a bare ``Tensor[N, 4]`` of boxes (no tags, no weighting), or ``None``.

    Returns ``(Detections, stats)``; images that cannot be read or have no proposals are skipped, counted in
    ``stats["skipped"]`` (a list of messages) and reported through ``log``.  ``stats`` also sums the seconds per stage.
    """
    from detection.progress import progress as progress_bar

    from detection.data.image_io import ImageDecodeError, read_image_rgb
    from detection.evaluation.detections import Detections

    per_image, positions, skipped = [], [], []
    seconds = {"read": 0.0, "classify": 0.0, "nms": 0.0}
    n_props = 0
    for i, (r, props) in enumerate(progress_bar(list(zip(dataset.records, proposals)), desc=f"detect {dataset.name}",
                                        unit="img", disable=not progress)):
        if props is None:
            skipped.append(f"{r.path}: no proposals")
            continue
        t0 = time.perf_counter()
        try:
            img = read_image_rgb(r.path)
        except ImageDecodeError as e:
            skipped.append(str(e))
            continue
        seconds["read"] += time.perf_counter() - t0
        boxes, source = (props["boxes"], props["source"]) if isinstance(props, dict) else (props, None)
        res = detector.detect(img, boxes=boxes, source=source)
        for k in ("classify", "nms"):
            seconds[k] += res.seconds[k]
        n_props += res.num_proposals
        per_image.append((res.boxes, res.scores, res.labels))
        positions.append(i)
    for s in skipped:
        log(f"detect: skipped {s}")
    dets = Detections.from_per_image(per_image, positions)
    return dets, {"images": len(positions), "positions": positions, "skipped": skipped, "seconds": seconds,
                  "proposals_per_image": n_props / max(len(positions), 1)}
