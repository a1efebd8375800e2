"""Selective search (Uijlings et al.) with OpenCV contrib's building blocks, deterministic, in original pixels.

Modes:

* ``fast``    -- OpenCV's ``switchToSelectiveSearchFast(base_k, inc_k, sigma)``: HSV + Lab, three Felzenszwalb
  segmentations ``k = base_k, base_k + inc_k, base_k + 2 inc_k`` (OpenCV's fixed minimum segment size 100 px),
  strategies colour+fill+texture+size and fill+texture+size.
* ``uijlings`` -- the original "fast" recipe rebuilt from OpenCV's blocks: HSV + Lab, ``k = base_k, base_k + inc_k``
  (Uijlings: 50, 100) with minimum segment size = k, the same two strategies.
* ``quality`` -- OpenCV's ``switchToSelectiveSearchQuality``; ``single`` -- ``switchToSingleStrategy(base_k)``.

``k_scale`` multiplies every k (and Uijlings' min size = k): ``k_scale=2`` is the GoogLeNet paper's doubled superpixel
size, about half the boxes; ``k_scale=1`` is R-CNN.

Determinism: OpenCV ranks regions by ``rand() * level``, drawn from the C library's global generator, so its order
changes from call to call.  We seed that generator (``srand(seed)``) right before ``process()``, which makes the
boxes *and their order* identical for the same image and settings in every process (a test checks this across
processes).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["SelectiveSearchSettings", "selective_search", "MODES"]

MODES = ("fast", "uijlings", "quality", "single")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
_lock = threading.Lock()  # srand + process must not interleave between threads


@dataclass
class SelectiveSearchSettings:
    """Settings of one selective-search run (all that determines its output; part of the cache key)."""

    mode: str = "fast"
    base_k: int = 100
    inc_k: int = 100
    k_scale: float = 1.0
    sigma: float = 0.8
    resize_width: int | None = 500
    min_box_size: float = 0.0  # in original pixels; boxes with a smaller side are dropped
    seed: int = 1

    def __post_init__(self) -> None:
        # canonical types: 2 and 2.0 must give the same cache key
        self.base_k, self.inc_k, self.seed = int(self.base_k), int(self.inc_k), int(self.seed)
        self.k_scale, self.sigma, self.min_box_size = float(self.k_scale), float(self.sigma), float(self.min_box_size)
        self.resize_width = None if self.resize_width is None else int(self.resize_width)
        if self.mode not in MODES:
            raise ValueError(f"selective search mode {self.mode!r} is not one of {MODES}")
        if self.base_k <= 0 or self.inc_k < 0 or self.k_scale <= 0 or self.sigma < 0:
            raise ValueError(f"selective search needs base_k > 0, inc_k >= 0, k_scale > 0, sigma >= 0: {self}")
        if self.resize_width is not None and self.resize_width < 16:
            raise ValueError(f"resize_width must be >= 16 or None, got {self.resize_width}")

    def as_dict(self) -> dict:
        return asdict(self)


def _segmenter(bgr: np.ndarray, s: SelectiveSearchSettings):
    seg = cv2.ximgproc.segmentation
    ss = seg.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    base_k = max(1, int(round(s.base_k * s.k_scale)))
    inc_k = int(round(s.inc_k * s.k_scale))
    if s.mode == "fast":
        ss.switchToSelectiveSearchFast(base_k, inc_k, s.sigma)
    elif s.mode == "quality":
        ss.switchToSelectiveSearchQuality(base_k, inc_k, s.sigma)
    elif s.mode == "single":
        ss.switchToSingleStrategy(base_k, s.sigma)
    else:  # uijlings
        ss.clearImages()
        ss.clearGraphSegmentations()
        ss.clearStrategies()
        ss.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV))
        ss.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab))
        for k in sorted({base_k, base_k + inc_k}):
            ss.addGraphSegmentation(seg.createGraphSegmentation(sigma=s.sigma, k=float(k), min_size=int(k)))
        ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
            seg.createSelectiveSearchSegmentationStrategyColor(), seg.createSelectiveSearchSegmentationStrategyFill(),
            seg.createSelectiveSearchSegmentationStrategyTexture(), seg.createSelectiveSearchSegmentationStrategySize()))
        ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
            seg.createSelectiveSearchSegmentationStrategyFill(), seg.createSelectiveSearchSegmentationStrategyTexture(),
            seg.createSelectiveSearchSegmentationStrategySize()))
    return ss


def selective_search(image_rgb: np.ndarray, settings: SelectiveSearchSettings = SelectiveSearchSettings()) -> Tensor:
    """Selective-search boxes of an RGB ``uint8[H, W, 3]`` image.

    The image is resized to ``settings.resize_width`` wide first (R-CNN: 500 px), and the boxes are mapped back.

    Returns:
        ``Tensor[N, 4]`` float32 ``(x1, y1, x2, y2)`` in the original image's continuous pixels (no +1), in OpenCV's
        (seeded) ranking order, unique, each side at least ``min_box_size``.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"selective_search needs an RGB uint8 [H, W, 3] image, got {image_rgb.shape} {image_rgb.dtype}")
    h, w = image_rgb.shape[:2]
    scale = 1.0
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    if settings.resize_width is not None and w != settings.resize_width:
        scale = w / settings.resize_width
        new_h = max(1, int(round(h / scale)))
        bgr = cv2.resize(bgr, (settings.resize_width, new_h), interpolation=cv2.INTER_AREA)
    sy = h / bgr.shape[0]
    ss = _segmenter(bgr, settings)
    with _lock:
        _libc.srand(ctypes.c_uint(settings.seed))
        rects = ss.process()
    if len(rects) == 0:
        return torch.zeros(0, 4)
    r = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    boxes = np.stack([r[:, 0] * scale, r[:, 1] * sy, (r[:, 0] + r[:, 2]) * scale, (r[:, 1] + r[:, 3]) * sy], 1)
    boxes = np.minimum(boxes, [w, h, w, h])
    if settings.min_box_size > 0:
        keep = ((boxes[:, 2] - boxes[:, 0]) >= settings.min_box_size) & \
               ((boxes[:, 3] - boxes[:, 1]) >= settings.min_box_size)
        boxes = boxes[keep]
    return torch.from_numpy(boxes.astype(np.float32))
