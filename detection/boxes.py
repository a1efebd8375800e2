"""The project's one box convention and the converters at its edges.

Inside the project every box is a ``Tensor[N, 4]`` of float32 ``(x1, y1, x2, y2)`` in absolute, continuous pixel
coordinates with no ``+1``: a box covering pixel columns 0..9 is ``x1=0, x2=10`` and has width ``x2 - x1 = 10``
(the convention of ``torchvision.ops``).  Other conventions exist only at the edges, converted by the
``box_<from>_to_<to>`` functions below:

* ``xywh``  -- OpenCV's ``(x, y, w, h)`` and COCO's ``bbox``; same continuous pixels.
* ``yolo``  -- YOLO's normalised ``(cx, cy, w, h)`` in ``[0, 1]`` of the image size.
* ``inclusive`` -- ILSVRC / PASCAL VOC annotations and the ILSVRC devkit: 1-based, inclusive pixel indices, so a box
  covering pixel columns 1..10 has ``xmin=1, xmax=10`` and width ``xmax - xmin + 1 = 10``.

The inclusive mapping is ``x1 = xmin - 1, x2 = xmax`` (and back).  With it, the devkit's inclusive-pixel IoU
(``iw = min(xmax) - max(xmin) + 1``, area ``(xmax - xmin + 1)(ymax - ymin + 1)``) equals the continuous IoU of the
converted boxes exactly, for integer and fractional coordinates alike, so evaluation code can work in our convention.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "as_boxes",
    "box_xywh_to_xyxy",
    "box_xyxy_to_xywh",
    "box_yolo_to_xyxy",
    "box_xyxy_to_yolo",
    "box_inclusive_to_xyxy",
    "box_xyxy_to_inclusive",
    "mirror_boxes",
]


def as_boxes(boxes) -> Tensor:
    """Any array-like of shape ``[N, 4]`` (or empty) -> float32 ``Tensor[N, 4]``."""
    t = torch.as_tensor(boxes, dtype=torch.float32)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(t.shape)}")
    return t


def box_xywh_to_xyxy(boxes) -> Tensor:
    """OpenCV / COCO ``(x, y, w, h)`` -> ``(x1, y1, x2, y2)``; both absolute continuous pixels, ``Tensor[N, 4]``."""
    return box_convert(as_boxes(boxes), "xywh", "xyxy")


def box_xyxy_to_xywh(boxes) -> Tensor:
    """``(x1, y1, x2, y2)`` -> OpenCV / COCO ``(x, y, w, h)``; ``Tensor[N, 4]``."""
    return box_convert(as_boxes(boxes), "xyxy", "xywh")


def box_yolo_to_xyxy(boxes, *, width: float, height: float) -> Tensor:
    """YOLO normalised ``(cx, cy, w, h)`` -> absolute ``(x1, y1, x2, y2)`` for an image of ``width`` x ``height``."""
    b = as_boxes(boxes)
    scale = b.new_tensor([width, height, width, height])
    return box_convert(b * scale, "cxcywh", "xyxy")


def box_xyxy_to_yolo(boxes, *, width: float, height: float) -> Tensor:
    """Absolute ``(x1, y1, x2, y2)`` -> YOLO normalised ``(cx, cy, w, h)`` for an image of ``width`` x ``height``."""
    b = box_convert(as_boxes(boxes), "xyxy", "cxcywh")
    return b / b.new_tensor([width, height, width, height])


def box_inclusive_to_xyxy(boxes) -> Tensor:
    """ILSVRC/VOC 1-based inclusive ``(xmin, ymin, xmax, ymax)`` -> continuous ``(x1, y1, x2, y2)``."""
    b = as_boxes(boxes).clone()
    b[:, :2] -= 1.0
    return b


def box_xyxy_to_inclusive(boxes) -> Tensor:
    """Continuous ``(x1, y1, x2, y2)`` -> ILSVRC/VOC 1-based inclusive ``(xmin, ymin, xmax, ymax)``."""
    b = as_boxes(boxes).clone()
    b[:, :2] += 1.0
    return b


def mirror_boxes(boxes: Tensor, width: float) -> Tensor:
    """Boxes ``[N, 4]`` xyxy of an image ``width`` pixels wide -> the same boxes in its mirror image (flipped left to
    right); applying it twice gives the boxes back."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
