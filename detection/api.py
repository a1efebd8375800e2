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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from detection.detector import DetectionResult, Detector, DetectorSettings

__all__ = ["load_detector", "ObjectDetector", "ImageDetections", "as_rgb_array", "ImageInputError"]


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


def as_rgb_array(image) -> np.ndarray:
    """``uint8[H, W, 3]`` RGB from a path, a PIL image, a numpy array (``H×W`` grey, ``H×W×3`` RGB or ``H×W×4`` RGBA)
    or a uint8 tensor (``3×H×W``, torchvision's layout).  Raises ``ValueError`` naming the problem (an unreadable
    file: :class:`~detection.data.image_io.ImageDecodeError`, a ``ValueError`` naming the file)."""
    from detection.data.image_io import ImageDecodeError, read_image_rgb

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise ImageDecodeError(image, "no such file")
        return read_image_rgb(image)
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            from detection.data.image_io import pil_to_rgb

            return np.ascontiguousarray(pil_to_rgb(image))  # 16-bit, palette, CMYK as read_image_rgb does
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


def load_detector(model: str | Path | None = None, *, proposals="paper", device: str = "cpu",
                  members: int | None = None, nms_iou: float = 0.3, score_threshold: float = 0.05,
                  max_per_class: int = 100, flip: bool | None = None, multibox_weight: float = 0.5,
                  image_sizes: tuple[int, ...] | list[int] | None = None,
                  imagenet_prior: bool | None = None, prior_boxes: float | None = None,
                  prior_area_power: float | None = None, threads: int | None = None,
                  overlap_proposals: bool | None = None,
                  cache_dir: str | Path | None = None,
                  backbone_weights: str | None = "imagenet") -> ObjectDetector:
    """The detector, ready to run.

    Args:
        model: a region-classifier file (``tools/train_classifier.py``); ``None``: the embedded default (offline).
        proposals: ``"paper"`` (selective search with superpixels ×2 + the top 200 MultiBox boxes), ``"rcnn"``
            (selective search alone), another preset of ``configs/proposals/``, a YAML file shaped like them, or a
            :class:`~proposals.pipeline.ProposalSettings`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...  (both the classifiers and MultiBox run there).
        members: use the first N members of the ensemble (``None``: all six).
        nms_iou / score_threshold / max_per_class: the per-class NMS and what is kept per image.
        flip: also classify every proposal on the mirror image and average the two views' softmax (a second trunk
            pass; ``None``: the settings default, off).
        multibox_weight: the class scores of MultiBox's boxes are multiplied by this (0.5, chosen on held-out COCO
            photos: the classifiers over-trust those boxes); 1: as the classifiers give them.
        image_sizes: multi-scale testing, e.g. ``(600, 1200)``: each proposal is classified on the level of this
            image pyramid (shorter sides) where its area is closest to 224²; ``None`` (the default): the model's
            own scale.  Helps small objects at 3.4-4x the classifier's time (docs/breadth.md, "Small objects and
            multi-scale testing").
        imagenet_prior: fuse the region classifiers' scores with the trunk's own ImageNet classifier, folded into
            the 200 classes, so that classes without training boxes are detected too (``None``: the
            :class:`~detection.detector.DetectorSettings` default, on); ``False``: the region classifiers alone.
        prior_boxes: a class with n training boxes trusts the region classifiers n / (n + prior_boxes), the
            ImageNet classifier for the rest (``None``: the settings default).
        prior_area_power: the ImageNet evidence of a box is scaled by (its share of the image's area) to this
            power, which favours whole objects over their parts (``None``: the settings default; 0: off).
        threads: torch's (and OpenCV's) threads, process-wide, set before each image; 0 adapts them to the machine
            (all cores when idle, fewer beside busy processes); ``None``: the settings default.
        overlap_proposals: run selective search in a thread while the trunk runs (``None``: the settings default).
        cache_dir: where a dataset's proposals are cached (``None``: ``<project>/.cache``).
        backbone_weights: for a model file without its trunk weights (the paper configuration) and for the ImageNet
            prior: ``"imagenet"``, a local ``.pth`` file, or ``None`` (random, which the prior refuses).
    Raises:
        FileNotFoundError (a model file that does not exist), ValueError (a bad preset or setting).
    """
    from detection.models.region import load_ensemble
    from proposals.pipeline import ProposalStage, load_proposal_settings

    settings = load_proposal_settings(proposals)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here")
    # BatchNorms folded into the convolutions: the same scores to float rounding, faster (not for training)
    classifier = load_ensemble(model, device=dev, backbone_weights=backbone_weights).fuse_for_inference()
    if members is not None and not 1 <= members <= classifier.cfg.members:
        raise ValueError(f"members must be in 1..{classifier.cfg.members}, got {members}")
    if cache_dir is None:
        cache_dir = Path(__file__).resolve().parents[1] / ".cache"
    stage = ProposalStage(settings, cache_root=Path(cache_dir) / "proposals", device=dev)
    optional = {k: v for k, v in {"imagenet_prior": imagenet_prior, "prior_boxes": prior_boxes,
                                 "prior_area_power": prior_area_power, "threads": threads, "flip": flip,
                                 "overlap_proposals": overlap_proposals}.items()
                if v is not None}  # None: the settings dataclass's default
    det_settings = DetectorSettings(nms_iou=nms_iou, max_per_class=max_per_class, score_threshold=score_threshold,
                                    members=members, multibox_weight=multibox_weight,
                                    image_sizes=image_sizes, **optional)
    name = proposals if isinstance(proposals, (str, Path)) else "custom"
    return ObjectDetector(classifier=classifier, proposals=stage, settings=det_settings, proposal_preset=str(name),
                          device=str(dev), backbone_weights=backbone_weights)

