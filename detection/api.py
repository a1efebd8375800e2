"""The detector from Python, without the repository's tools::

    from detection import load_detector

    det = load_detector()                        # embedded default: 6 region classifiers, 'paper' proposals, CPU
    result = det.detect("photo.jpg")             # a path, a PIL image, a uint8 RGB array (H, W, 3) or tensor (3, H, W)
    for d in result.above(0.3):
        print(d["name"], d["wnid"], round(d["score"], 3), d["box_xyxy"])
    results = det.detect_many(["a.jpg", "b.jpg"])  # progress over many images

Results carry ``boxes`` (``Tensor[D, 4]`` xyxy pixels), ``scores``, DET-200 ``labels`` (1..200), class ``names`` and
WordNet ``wnids``, best first, and the seconds per stage.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from detection.detector import DetectionResult, Detector, DetectorSettings, LoadSettings

__all__ = ["load_detector", "split_settings", "ObjectDetector", "ImageDetections", "as_rgb_array", "ImageInputError"]


class ImageInputError(ValueError):
    """An image given to :meth:`ObjectDetector.detect` that is not one (wrong type, dtype or shape)."""

log = logging.getLogger(__name__)


@dataclass
class ImageDetections(DetectionResult):
    """The detections of one image (a :class:`~detection.detector.DetectionResult` with names attached).

    ``boxes [D, 4]`` float xyxy pixels, ``scores [D]``, ``labels [D]`` DET-200 indices, ``names`` / ``wnids`` (one per
    detection), best first; ``width``, ``height`` of the image; ``image`` its path when it came from a file.
    """

    names: list = field(default_factory=list)
    wnids: list = field(default_factory=list)
    width: int = 0
    height: int = 0
    image: str | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __getitem__(self, i: int) -> dict:
        return {"label": int(self.labels[i]), "wnid": self.wnids[i], "name": self.names[i],
                "score": float(self.scores[i]), "box_xyxy": [round(float(v), 2) for v in self.boxes[i]]}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to_list(self) -> list[dict]:
        """One dict per detection: label, wnid, name, score, box_xyxy."""
        return list(self)

    def above(self, score: float) -> list[dict]:
        """The detections scoring at least ``score``, as dicts."""
        return [d for d in self if d["score"] >= score]

    def to_dict(self) -> dict:
        return {"image": self.image, "width": self.width, "height": self.height, "proposals": self.num_proposals,
                "seconds": dict(self.seconds), "detections": self.to_list()}

    def __repr__(self) -> str:
        top = ", ".join(f"{d['name']} {d['score']:.2f}" for d in self.to_list()[:3])
        src = f"{self.image}, " if self.image else ""
        return f"ImageDetections({src}{len(self)} detections{': ' + top if top else ''})"


def as_rgb_array(image, *, upright: bool = True) -> np.ndarray:
    """``uint8[H, W, 3]`` RGB from a path, a PIL image, a numpy array (``H×W`` grey, ``H×W×3`` RGB or ``H×W×4`` RGBA)
    or a uint8 tensor (``3×H×W``, torchvision's layout).  A file or PIL image is turned upright by its EXIF
    orientation (a phone photo stored sideways is detected as it is viewed; ``upright=False``: the stored pixels, as
    dataset annotations need).  Raises ``ValueError`` naming the problem (an unreadable file:
    :class:`~detection.data.image_io.ImageDecodeError`, naming the file)."""
    from detection.data.image_io import ImageDecodeError, read_image_rgb

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise ImageDecodeError(image, "no such file")
        return read_image_rgb(image, upright=upright)
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            from detection.data.image_io import pil_to_rgb, turn_upright

            # 16-bit, palette, CMYK as read_image_rgb does
            return np.ascontiguousarray(pil_to_rgb(turn_upright(image) if upright else image))
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ImageInputError(f"image tensor must be (3, H, W) or (1, H, W), got {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            raise ImageInputError(f"image tensor must be uint8 (0..255), got {image.dtype}")
        image = image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ImageInputError(f"cannot detect in a {type(image).__name__}: give a path, a PIL image, a uint8 array "
                              f"or tensor")
    if image.dtype != np.uint8:
        raise ImageInputError(f"image array must be uint8 (0..255), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageInputError(f"image array must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey, got {image.shape}")
    if min(image.shape[:2]) < 2:
        raise ImageInputError(f"image too small: {image.shape[1]}x{image.shape[0]} pixels")
    return np.ascontiguousarray(image)


class ObjectDetector(Detector):
    """A :class:`~detection.detector.Detector` whose :meth:`detect` takes any image and names its classes."""

    def __init__(self, *, classifier, proposals=None, settings: DetectorSettings | None = None,
                 proposal_preset: str = "", device: str = "cpu", backbone_weights="imagenet"):
        super().__init__(classifier=classifier, proposals=proposals, settings=settings,
                         backbone_weights=backbone_weights)
        self.proposal_preset = proposal_preset
        self.device = device
        from detection.labels import det200

        self.classes = det200()

    def detect(self, image, *, boxes: torch.Tensor | None = None, source: torch.Tensor | None = None
               ) -> ImageDetections:
        """Detect objects in one image (a path, PIL image, uint8 array or tensor); ``boxes``: your own proposals
        (``Tensor[N, 4]`` xyxy pixels) instead of the detector's, ``source``: their tags (1: MultiBox's, whose
        scores ``multibox_weight`` scales; ``None``: none)."""
        path = str(image) if isinstance(image, (str, Path)) else None
        rgb = as_rgb_array(image)
        with torch.inference_mode():
            t = time.perf_counter()
            res = super().detect(rgb, boxes=boxes, source=source)
            res.seconds["total"] = time.perf_counter() - t
        labels = [int(v) for v in res.labels]
        return ImageDetections(boxes=res.boxes, scores=res.scores, labels=res.labels,
                               num_proposals=res.num_proposals, seconds=res.seconds,
                               names=[self.classes.name(v) for v in labels],
                               wnids=[self.classes.wnid(v) for v in labels],
                               width=int(rgb.shape[1]), height=int(rgb.shape[0]), image=path)

    def detect_many(self, images: Iterable, *, progress: bool = True, on_error: str = "raise"
                    ) -> list[ImageDetections | None]:
        """:meth:`detect` over many images, in order, with progress.  ``on_error="skip"``: an unreadable image is
        logged (named, with the problem) and its place holds ``None``; ``"raise"`` (default): the error propagates."""
        from detection.data.image_io import ImageDecodeError
        from detection.progress import progress as progress_bar

        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        images = list(images)
        out: list[ImageDetections | None] = []
        skipped = 0
        for im in progress_bar(images, desc="detect", unit="img", disable=not progress):
            try:
                out.append(self.detect(im))
            except (ImageDecodeError, ImageInputError) as e:  # a bad file or input, named; bugs still raise
                if on_error == "raise":
                    raise
                log.warning("detect: skipped %s", e)
                skipped += 1
                out.append(None)
        if skipped:
            log.warning("detect: %d of %d images skipped (unreadable)", skipped, len(images))
        return out

    def __repr__(self) -> str:
        c = self.classifier.cfg
        s = self.settings
        return (f"ObjectDetector({s.members or c.members} of {c.members} x {c.backbone} ({c.mode}), "
                f"proposals={self.proposal_preset!r}, nms_iou={s.nms_iou}, score_threshold={s.score_threshold}, "
                f"flip={s.flip}, multibox_weight={s.multibox_weight:g}, "
                + (f"imagenet_prior=True (prior_boxes={s.prior_boxes:g}, prior_area_power={s.prior_area_power:g}), "
                   if s.imagenet_prior else "imagenet_prior=False, ")
                + (f"image_sizes={list(s.image_sizes)}, " if s.image_sizes else "") +
                f"device={self.device!r})")


def split_settings(overrides: dict) -> tuple[dict, dict]:
    """``{name: value}`` -> (:class:`~detection.detector.LoadSettings` fields, :class:`DetectorSettings` fields);
    ``TypeError`` naming an unknown setting and listing the known ones."""
    load_names = {f.name for f in fields(LoadSettings)}
    det_names = {f.name for f in fields(DetectorSettings)}
    unknown = sorted(set(overrides) - load_names - det_names)
    if unknown:
        raise TypeError(f"load_detector() got unknown setting{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)}; the settings are {', '.join(sorted(load_names | det_names))}")
    return ({k: v for k, v in overrides.items() if k in load_names},
            {k: v for k, v in overrides.items() if k in det_names})


def load_detector(model: str | Path | None = None, *, settings: DetectorSettings | None = None,
                  **overrides) -> ObjectDetector:
    """The detector, ready to run.

    Args:
        model: a region-classifier file (``tools/train_classifier.py``); ``None``: the embedded default (offline).
        settings: the scoring settings whole (:class:`~detection.detector.DetectorSettings`); ``None``: its
            defaults.
        **overrides: any field of :class:`~detection.detector.LoadSettings` (``proposals``, ``device``,
            ``backbone_weights``, ``cache_dir``) or of :class:`~detection.detector.DetectorSettings` (``members``,
            ``nms_iou``, ``score_threshold``, ``max_per_class``, ``flip``, ``multibox_weight``, ``image_sizes``,
            ``imagenet_prior``, ``prior_boxes``, ``prior_area_power``, ``overlap_proposals``, ``threads``), by name;
            the dataclasses hold each default and say what it does.  ``proposals`` may also be a
            :class:`~detection.proposals.pipeline.ProposalSettings`.
    Raises:
        TypeError (an unknown setting), ValueError (a setting out of range, a bad preset: raised before any weights
        load), FileNotFoundError (a model file that does not exist).
    """
    from dataclasses import replace

    from detection.models.region import load_ensemble
    from detection.paths import resolve_cache_dir
    from detection.proposals.pipeline import ProposalStage, load_proposal_settings

    load_kw, det_kw = split_settings(overrides)
    proposals = load_kw.pop("proposals", LoadSettings.proposals)
    preset_name = str(proposals) if isinstance(proposals, (str, Path)) else "custom"
    if not isinstance(proposals, (str, Path)):
        load_kw["proposals"] = "custom"
    load = LoadSettings(model=str(model) if model is not None else None, **load_kw)
    det_settings = replace(settings or DetectorSettings(), **det_kw)  # validated on construction
    psettings = load_proposal_settings(proposals)
    dev = torch.device(load.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={load.device!r} but CUDA is not available here")
    # BatchNorms folded into the convolutions: the same scores to float rounding, faster (not for training)
    classifier = load_ensemble(model, device=dev, backbone_weights=load.backbone_weights).fuse_for_inference()
    if det_settings.members is not None and det_settings.members > classifier.cfg.members:
        raise ValueError(f"members must be in 1..{classifier.cfg.members}, got {det_settings.members}")
    stage = ProposalStage(psettings, cache_root=resolve_cache_dir(load.cache_dir) / "proposals", device=dev)
    return ObjectDetector(classifier=classifier, proposals=stage, settings=det_settings, proposal_preset=preset_name,
                          device=str(dev), backbone_weights=load.backbone_weights)
