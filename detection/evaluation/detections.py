"""Flat containers for the detections and the ground truth of a whole dataset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from detection.boxes import as_boxes
from detection.data.records import DetectionDataset

__all__ = ["Detections", "GroundTruth"]


@dataclass
class Detections:
    """All detections over a dataset, flat.

    Attributes:
        image: ``Tensor[D]`` int64, 0-based position of the image in its dataset.
        boxes: ``Tensor[D, 4]`` float32 ``(x1, y1, x2, y2)``, absolute continuous pixels, no +1.
        scores: ``Tensor[D]`` float.
        labels: ``Tensor[D]`` int64 DET-200 indices 1..200.
    """

    image: Tensor
    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        self.image = torch.as_tensor(self.image, dtype=torch.int64).reshape(-1)
        self.boxes = as_boxes(self.boxes)
        self.scores = torch.as_tensor(self.scores, dtype=torch.float64).reshape(-1)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        n = self.image.shape[0]
        if not (self.boxes.shape[0] == self.scores.shape[0] == self.labels.shape[0] == n):
            raise ValueError("Detections: image, boxes, scores and labels differ in length")
        if n and not torch.isfinite(self.scores).all():
            raise ValueError("Detections: non-finite scores")

    def __len__(self) -> int:
        return self.image.shape[0]

    @classmethod
    def empty(cls) -> "Detections":
        return cls(torch.zeros(0), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))

    @classmethod
    def from_per_image(cls, per_image: Sequence[tuple[Tensor, Tensor, Tensor]],
                       image_positions: Sequence[int] | None = None) -> "Detections":
        """From ``[(boxes Tensor[N,4], scores Tensor[N], labels Tensor[N]), ...]`` in dataset order."""
        positions = range(len(per_image)) if image_positions is None else image_positions
        parts = [(torch.full((len(s),), p, dtype=torch.int64), as_boxes(b), torch.as_tensor(s, dtype=torch.float64),
                  torch.as_tensor(lb, dtype=torch.int64)) for p, (b, s, lb) in zip(positions, per_image)]
        if not parts:
            return cls.empty()
        return cls(*(torch.cat(x) for x in zip(*parts)))

    def select(self, mask: Tensor) -> "Detections":
        return Detections(self.image[mask], self.boxes[mask], self.scores[mask], self.labels[mask])


@dataclass
class GroundTruth:
    """All ground truth of a dataset as numpy arrays (in dataset order, then annotation order), plus the blacklist.

    ``image`` int64 positions, ``boxes`` float64 ``[G, 4]`` xyxy, ``labels`` int64, ``difficult`` bool,
    ``blacklist`` a set of ``(image position, label)``, ``num_images``.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    blacklist: set
    num_images: int

    @classmethod
    def from_dataset(cls, dataset: DetectionDataset) -> "GroundTruth":
        recs = dataset.records
        counts = [len(r) for r in recs]
        if sum(counts):
            boxes = torch.cat([r.boxes for r in recs]).double().numpy()
            labels = torch.cat([r.labels for r in recs]).numpy()
            difficult = torch.cat([r.difficult for r in recs]).numpy()
        else:
            boxes, labels, difficult = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)
        image = np.repeat(np.arange(len(recs), dtype=np.int64), counts)
        return cls(image, boxes, labels, difficult, set(dataset.blacklist), len(recs))
