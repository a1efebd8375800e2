"""Region classifiers and their ensemble: proposals of one image -> 201-way softmax (background + DET-200), averaged.

Two ways to get a proposal's features (``RegionConfig.mode``):

* ``warp`` -- R-CNN, the paper: each proposal is context-padded and warped to ``crop_size`` (224) and goes through the
  whole backbone; the globally pooled last map feeds the member's head.  With ``shared_trunk=False`` every member owns
  (and fine-tunes) its whole backbone: the paper's six GoogLeNets.
* ``roi``  -- SPPnet / Fast R-CNN: the trunk runs once on the whole image (shorter side ``image_size``) and each
  context-padded proposal is RoI-aligned (``roi_size`` x ``roi_size``) from a stride-32 map: the last one
  (``roi_layer="last"``) or the one before the last block (``"stem"``: lite0's 320-channel ``blocks.6``, before
  its 1x1 expansion to 1280).  Far cheaper on a CPU: the embedded default (``stem``, 4x4).  ``context_regions``
  adds the same window enlarged about its centre, pooled on a coarser grid from the same map (multi-region features,
  Gidaris & Komodakis 2015): whether the object goes on beyond the box is what tells a part from its whole.

Members of a ``shared_trunk`` ensemble share one frozen ImageNet trunk (up to the backbone's last block, the
"stem"); each member owns its head, and the frozen last block (the "neck") is shared too.  The ensemble averages
the members' softmax (the paper).  Boxes are ``Tensor[N, 4]`` float xyxy, absolute pixels, no +1.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detection.boxes import mirror_boxes
from detection.crops import context_boxes, warp_crops
from detection.models.backbones import Backbone, is_lite
from detection.files import atomic_torch_save

__all__ = ["RegionConfig", "roi_pool", "pool_regions", "flat_regions", "enlarge_rois", "RoIHead", "PooledHead",
           "RegionEnsemble", "MODES", "split_backbone", "save_ensemble",
           "load_ensemble", "default_region_model_path", "stem_stages", "split_stem", "stages_state_dict",
           "load_stages_state_dict", "trunk_fingerprint", "grow_heads"]

MODES = ("roi", "warp")
ROI_LAYERS = ("last", "stem")
NUM_CLASSES = 201  # background + the 200 ILSVRC DET classes


@dataclass
class RegionConfig:
    """Architecture of a region-classifier ensemble (saved with it)."""

    backbone: str = "lite0"
    mode: str = "roi"
    members: int = 6
    shared_trunk: bool = True  # False: each member owns its whole backbone (the paper's configuration)
    num_classes: int = NUM_CLASSES
    crop_size: int = 224  # warp: proposals are warped to crop_size x crop_size
    context_padding: int = 16  # pixels of context around a box at crop_size (R-CNN: 16 at 224)
    image_size: int = 600  # roi: the image's shorter side is resized to this ...
    max_image_size: int = 1000  # ... unless its longer side would pass this
    # roi: enlarge an image at most this many times (None: no limit).  A 64 px Tiny ImageNet photo is then seen at
    # the size of an object in a photo (e.g. 4: 256 px), not blown up to 600 px; photos of 150 px and more are
    # unaffected at image_size 600
    max_upscale: Optional[float] = None
    roi_size: int = 2  # roi: RoIAlign grid on the pooled map (frozen features; the heads are MLPs on them)
    roi_layer: str = "last"  # roi: pool the last map ("last") or the map before the last block ("stem")
    standardize: bool = False  # roi: heads standardise their input with the training features' mean and std
    hidden: int = 256  # hidden layer of the head (0: a linear head)
    dropout: float = 0.3
    # roi mode, roi_layer=stem: how many of the trunk's last stages (lite0: blocks.6, blocks.5, ...) were fine-tuned
    # with the heads (0: a frozen ImageNet trunk); the file then carries those stages' weights
    trainable_stages: int = 0
    # roi mode: more regions per proposal, each [factor, grid]: its context window enlarged factor times about its
    # centre, RoI-aligned grid x grid from the same map and read by the heads after the window's own roi_size grid.
    # [[2, 2]]: the window doubled, 2x2 (+1 280 inputs on blocks.6); [] (the shipped model): the window alone
    context_regions: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"RegionConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.roi_layer not in ROI_LAYERS:
            raise ValueError(f"RegionConfig.roi_layer must be one of {ROI_LAYERS}, got {self.roi_layer!r}")
        if self.members < 1:
            raise ValueError(f"RegionConfig.members must be >= 1, got {self.members}")
        if self.num_classes < 2:
            raise ValueError("RegionConfig.num_classes counts background + classes: at least 2")
        if self.trainable_stages < 0:
            raise ValueError(f"RegionConfig.trainable_stages must be >= 0, got {self.trainable_stages}")
        if self.trainable_stages and (self.mode != "roi" or self.roi_layer != "stem" or not self.shared_trunk):
            raise ValueError("RegionConfig.trainable_stages > 0 needs mode=roi, roi_layer=stem and shared_trunk=true "
                             "(the warp mode fine-tunes whole backbones instead)")
        try:
            regions = [(float(f), g) for f, g in (self.context_regions or [])]
            ok = all(f >= 1.0 and int(g) == g and int(g) >= 1 for f, g in regions)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError("RegionConfig.context_regions takes [factor, grid] pairs with factor >= 1 and a "
                             f"whole grid >= 1 (e.g. [[2, 2]]), got {self.context_regions!r}")
        if regions and self.mode != "roi":
            raise ValueError("RegionConfig.context_regions needs mode=roi (a warped crop has no map around it)")
        self.context_regions = [[f, int(g)] for f, g in regions]

    @property
    def grids(self) -> list[tuple[float, int]]:
        """roi mode: (enlargement, grid) of every region a proposal is pooled as, its own window first."""
        return [(1.0, self.roi_size)] + [(f, g) for f, g in self.context_regions]


def _mlp(d_in: int, *, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, num_classes))
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def roi_pool(fmap: Tensor, rois: Tensor, *, roi_size: int) -> Tensor:
    """Last feature map ``[B, C, h, w]`` + RoIs ``[R, 5]`` (batch index, xyxy in map cells) -> ``[R, C, s, s]``."""
    return roi_align(fmap, rois, output_size=roi_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def enlarge_rois(rois: Tensor, factor: float) -> Tensor:
    """RoIs ``[R, 5]`` with each box scaled ``factor`` times about its centre (the batch index kept)."""
    if factor == 1.0:
        return rois
    centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
    half = (rois[:, 3:5] - rois[:, 1:3]) / 2 * factor
    return torch.cat([rois[:, :1], centre - half, centre + half], 1)


def pool_regions(fmap: Tensor, rois: Tensor, grids: list[tuple[float, int]]) -> list[Tensor]:
    """Each region of ``grids`` (:attr:`RegionConfig.grids`: enlargement, grid) of every RoI: ``[R, C, g, g]`` each,
    in order.  The heads read them flattened and concatenated (:func:`flat_regions`)."""
    return [roi_pool(fmap, enlarge_rois(rois, f), roi_size=g) for f, g in grids]


def flat_regions(parts: list[Tensor]) -> Tensor:
    """:func:`pool_regions`' parts -> the heads' input ``[R, sum(C * g * g)]``."""
    return parts[0].flatten(1) if len(parts) == 1 else torch.cat([p.flatten(1) for p in parts], 1)


class RoIHead(nn.Module):
    """RoI-pooled features ``[R, C, s, s]`` (:func:`roi_pool` of the last map; with ``context_regions`` the
    flattened regions ``[R, d]`` of :func:`flat_regions`) -> logits ``[R, classes]``.

    The pooling has no parameters, so training can cache pooled features and the members share them at test time.
    With ``cfg.standardize`` the flattened input is standardised by the buffers ``feat_mean`` / ``feat_std``
    (set from the training features by :meth:`set_feature_stats`, saved with the head).
    """

    def __init__(self, *, in_channels: int, cfg: RegionConfig):
        super().__init__()
        d = in_channels * sum(g * g for _, g in cfg.grids)
        self.standardize = cfg.standardize
        if cfg.standardize:
            self.register_buffer("feat_mean", torch.zeros(d))
            self.register_buffer("feat_std", torch.ones(d))
        self.classifier = _mlp(d, hidden=cfg.hidden, num_classes=cfg.num_classes, dropout=cfg.dropout)

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        if not self.standardize:
            raise RuntimeError("this head was built with standardize=False")
        self.feat_mean.copy_(mean.flatten())
        self.feat_std.copy_(std.flatten())

    def forward(self, pooled: Tensor) -> Tensor:
        x = pooled.flatten(1)
        if self.standardize:
            first = self.classifier[0]
            if (not torch.is_grad_enabled() and isinstance(first, nn.Linear)
                    and float((self.feat_mean / self.feat_std).abs().max()) <= 100.0):
                # inference: fold the standardisation into the first layer, W' = W / std, b' = b - W' mean (the
                # same function, to float rounding); standardising [R, d] costs more than the layer's product
                # (astronaut, 1 743 proposals, 2 cores: 38 vs 31 ms a member).  Not when |mean / std| is large: the
                # folded terms would then nearly cancel and lose float32 digits (the shipped heads: under 4).
                # (Calls F.linear directly: hooks on classifier[0] do not fire on this path.)
                w = first.weight / self.feat_std
                x = F.linear(x, w, torch.addmv(first.bias, w, self.feat_mean, alpha=-1))
                return self.classifier[1:](x)
            x = (x - self.feat_mean) / self.feat_std
        return self.classifier(x)


def grow_heads(heads: nn.ModuleList, source: nn.ModuleList, *, mean: Tensor | None = None,
               std: Tensor | None = None) -> None:
    """Load ``source``'s :class:`RoIHead` s into ``heads``, whose input has more regions appended
    (``context_regions`` added after the source's): the first layer's weights for the new inputs start at zero, so
    the grown heads compute exactly the source's logits until they train.  ``mean`` / ``std``: the full input's
    standardisation statistics (:func:`detection.training.finetune._feature_stats`); the source's are kept for its
    own inputs and the new inputs take the tail."""
    if len(heads) != len(source):
        raise ValueError(f"{len(source)} heads cannot grow into {len(heads)}")
    for head, src in zip(heads, source):
        state = {k: v.clone() for k, v in src.state_dict().items()}
        first = next(k for k, m in head.classifier.named_modules() if isinstance(m, nn.Linear))
        key = f"classifier.{first}.weight"
        w_new, w_old = head.state_dict()[key], state[key]
        d_old, d_new = w_old.shape[1], w_new.shape[1]
        if w_old.shape[0] != w_new.shape[0] or d_old > d_new:
            raise ValueError(f"heads with a first layer of {tuple(w_old.shape)} cannot grow into {tuple(w_new.shape)}")
        state[key] = torch.cat([w_old, w_old.new_zeros(w_old.shape[0], d_new - d_old)], 1)
        if head.standardize:
            if mean is None or std is None or mean.numel() != d_new or std.numel() != d_new:
                raise ValueError(f"growing standardised heads to {d_new} inputs needs mean and std of {d_new}")
            state["feat_mean"] = torch.cat([state["feat_mean"], mean.flatten()[d_old:].to(state["feat_mean"])])
            state["feat_std"] = torch.cat([state["feat_std"], std.flatten()[d_old:].to(state["feat_std"])])
        head.load_state_dict(state)


class PooledHead(nn.Module):
    """Last feature maps of warped crops ``[N, C, h, w]`` -> logits ``[N, classes]`` (global average pool + MLP)."""

    def __init__(self, *, in_channels: int, cfg: RegionConfig):
        super().__init__()
        self.classifier = _mlp(in_channels, hidden=cfg.hidden, num_classes=cfg.num_classes, dropout=cfg.dropout)

    def forward(self, fmap: Tensor) -> Tensor:
        return self.classifier(fmap.mean((2, 3)))


def split_backbone(backbone: Backbone) -> tuple[nn.Module, nn.Module]:
    """(stem, neck): ``backbone.features`` cut before its last block (lite0: ``conv_head`` + BN; googlenet:
    ``inception5b``).  Training caches the stem's output and runs the neck on the fly (a quarter of the bytes)."""
    n = 2 if is_lite(backbone.spec.name) else 1
    layers = list(backbone.features.children())
    return nn.Sequential(*layers[:-n]), nn.Sequential(*layers[-n:])


def _stem_children(backbone: Backbone) -> list[tuple[str, nn.Module]]:
    """The stem's layers with their names in ``backbone.features`` (lite0's ``blocks`` expanded: ``blocks.i``)."""
    n = 2 if is_lite(backbone.spec.name) else 1
    out: list[tuple[str, nn.Module]] = []
    for name, mod in list(backbone.features.named_children())[:-n]:
        if name == "blocks":
            out += [(f"blocks.{i}", b) for i, b in enumerate(mod)]
        else:
            out.append((name, mod))
    return out


def stem_stages(backbone: Backbone) -> list[str]:
    """Names (in ``backbone.features``) of the stem's stages, first to last: lite0 ``blocks.0`` .. ``blocks.6``;
    googlenet its inception modules up to ``inception5a``.  ``trainable_stages=k`` fine-tunes the last k."""
    return [n for n, _ in _stem_children(backbone) if n.startswith(("blocks.", "inception"))]


def split_stem(backbone: Backbone, trainable: int) -> tuple[nn.Sequential, nn.Sequential, list[str]]:
    """(frozen part, trainable part, names of the trainable layers) of the stem (:func:`split_backbone`), cut
    before its last ``trainable`` stages (:func:`stem_stages`; the layers between two stages, e.g. googlenet's
    max-pools, go with the later one).  The parts share the backbone's modules."""
    stages = stem_stages(backbone)
    if not 0 <= trainable < len(stages):
        raise ValueError(f"trainable_stages must be in 0..{len(stages) - 1} for {backbone.spec.name} "
                         f"(its stem stages: {', '.join(stages)}), got {trainable}")
    layers = _stem_children(backbone)
    names = [n for n, _ in layers]
    if trainable:
        first = stages[len(stages) - trainable]
        prev = stages[len(stages) - trainable - 1]
        cut = names.index(prev) + 1  # right after the last frozen stage
        assert names.index(first) >= cut
    else:
        cut = len(layers)

    def seq(part):
        return nn.Sequential(OrderedDict((n.replace(".", "_"), m) for n, m in part))

    return seq(layers[:cut]), seq(layers[cut:]), names[cut:]


def stages_state_dict(backbone: Backbone, names: list[str]) -> dict[str, Tensor]:
    """The parameters and buffers of the layers ``names`` (keys relative to ``backbone.features``)."""
    out = {}
    for n in names:
        for k, v in backbone.features.get_submodule(n).state_dict().items():
            out[f"{n}.{k}"] = v.detach().clone(memory_format=torch.contiguous_format)  # (the trunk runs channels_last)
    return out


def load_stages_state_dict(backbone: Backbone, state: dict[str, Tensor]) -> None:
    """Load :func:`stages_state_dict` output into ``backbone``.  Every key of the layers it names must be there
    (but BatchNorm's ``num_batches_tracked``: fine-tuning freezes BatchNorm); any other key is an error."""
    full = backbone.features.state_dict()
    bad = [k for k in state if k not in full]
    if bad:
        raise KeyError(f"{backbone.spec.name} has no trunk weights named {bad[:5]}")
    layers = {n for n, _ in _stem_children(backbone) if any(k.startswith(n + ".") for k in state)}
    missing = [k for k in full if any(k.startswith(n + ".") for n in layers) and k not in state
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"trunk weights {missing[:5]} are missing")
    backbone.features.load_state_dict(state, strict=False)


class RegionEnsemble(nn.Module):
    """M region classifiers; :meth:`predict` gives the averaged softmax of one image's proposals.

    ``backbones``: one (shared trunk) or ``cfg.members`` (each member owns one).  No device is hard-coded: move the
    module with ``.to(device)``; images and boxes follow it.
    """

    def __init__(self, *, cfg: RegionConfig, backbones: list[Backbone]):
        super().__init__()
        want = 1 if cfg.shared_trunk else cfg.members
        if len(backbones) != want:
            raise ValueError(f"{'a shared trunk needs 1 backbone' if cfg.shared_trunk else f'{want} members need {want} backbones'}, "
                             f"got {len(backbones)}")
        self.cfg = cfg
        self.backbones = nn.ModuleList(backbones)
        spec = backbones[0].spec
        c = spec.stem_channels if cfg.mode == "roi" and cfg.roi_layer == "stem" else spec.feature_channels
        head = RoIHead if cfg.mode == "roi" else PooledHead
        self.heads = nn.ModuleList(head(in_channels=c, cfg=cfg) for _ in range(cfg.members))
        self.record: dict = {}
        # {wnid: [boxes in exhaustively annotated photos, boxes in positives-only photos]} of the training data
        # (what the ImageNet prior's per-class trust is computed from); None: unknown
        self.class_boxes: dict | None = None
        self.last_seconds: dict = {}  # where the last member_logits call spent its time
        self.fused = False  # set by fuse_for_inference (then it cannot train or be saved)
        # what the shared trunk computes: the backbone and the fine-tuned stages' weights (load_ensemble and
        # trunk_fingerprint set it); a MultiBox head trained on these maps carries the same id
        self.trunk_id = f"{cfg.backbone}:imagenet" if not cfg.trainable_stages else ""

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    def fuse_for_inference(self) -> "RegionEnsemble":
        """Fold the trunks' BatchNorms into their convolutions (:func:`~detection.models.backbones.fold_batchnorm`):
        the same scores to float rounding, the trunk ~20 % faster on a CPU.  In place, for a model that only
        detects (``load_detector`` does it); training or saving it afterwards raises.  Returns ``self``."""
        from detection.models.backbones import fold_batchnorm

        if not self.fused:
            self.eval()
            for bb in self.backbones:
                fold_batchnorm(bb)
            self.fused = True
        return self

    def train(self, mode: bool = True) -> "RegionEnsemble":
        if mode and self.fused:
            raise RuntimeError("this ensemble was fused for inference (fuse_for_inference): its BatchNorms are "
                               "folded away, so it cannot train; load the file again to train")
        return super().train(mode)

    def _backbone(self, member: int) -> Backbone:
        return self.backbones[0 if self.cfg.shared_trunk else member]

    def roi_map(self, x: Tensor, member: int = 0) -> Tensor:
        """roi mode: the stride-32 map the proposals are pooled from (``cfg.roi_layer``) for images ``[B, 3, h, w]``."""
        bb = self._backbone(member)
        if self.cfg.roi_layer == "stem":
            return split_backbone(bb)[0](x)
        return bb(x)

    def trunk_maps(self, x: Tensor, *, fine: bool = False) -> tuple[Tensor, ...]:
        """One pass of the shared trunk over images ``[B, 3, h, w]``: (the map proposals are pooled from, stride 32;
        the stride-16 map taken on the way, ``spec.mid_layer``) -- what a shared-trunk MultiBox head reads -- and with
        ``fine`` the stride-8 map (``spec.fine_layer``) third."""
        if self.cfg.mode != "roi" or self.cfg.roi_layer != "stem" or not self.cfg.shared_trunk:
            raise ValueError("trunk_maps needs a shared-trunk roi-mode model pooling the stem map "
                             f"(mode=roi, roi_layer=stem, shared_trunk=true); this one has {self.cfg}")
        bb = self.backbones[0]
        names = [bb.spec.mid_layer] + ([bb.spec.fine_layer] if fine else [])
        if fine and not bb.spec.fine_layer:
            raise ValueError(f"{bb.spec.name} offers no stride-8 map")
        taken: dict[str, Tensor] = {}
        hooks = [bb.features.get_submodule(n).register_forward_hook(
            lambda _m, _i, o, n=n: taken.__setitem__(n, o)) for n in names]
        try:
            last = self.roi_map(x)
        finally:
            for h in hooks:
                h.remove()
        return (last, *(taken[n] for n in names))

    # ------------------------------------------------------------------ inputs

    def image_scale(self, width: int, height: int, image_size: int | None = None) -> float:
        """roi mode: the factor that brings the shorter side to ``image_size`` (default ``cfg.image_size``; the
        longer side at most ``max_image_size`` in the same proportion, enlargement at most ``max_upscale``)."""
        size = self.cfg.image_size if image_size is None else int(image_size)
        longest = self.cfg.max_image_size * size / self.cfg.image_size
        s = min(size / min(width, height), longest / max(width, height))
        return min(s, float(self.cfg.max_upscale)) if self.cfg.max_upscale else s

    def prepare_image(self, image_rgb: np.ndarray, image_size: int | None = None) -> tuple[Tensor, float]:
        """``uint8[H, W, 3]`` -> (normalised ``[3, h, w]`` on the module's device, scale).  roi mode resizes
        (bilinear, antialiased) by :meth:`image_scale` (``image_size``: another shorter side than the model's);
        warp mode keeps the original pixels (scale 1)."""
        arr = image_rgb if image_rgb.flags.writeable and image_rgb.flags.c_contiguous else np.array(image_rgb)
        x = torch.from_numpy(arr).permute(2, 0, 1).to(self.device)
        x = x.float() / 255.0
        scale = 1.0
        if self.cfg.mode == "roi":
            h, w = image_rgb.shape[:2]
            scale = self.image_scale(w, h, image_size)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
        return self.backbones[0].normalize(x), scale

    def rois(self, boxes: Tensor, *, scale: float, batch_index: Tensor | int = 0) -> Tensor:
        """roi mode: proposals in image pixels -> ``[N, 5]`` RoIs in cells of the last map, context-padded like
        R-CNN's crops."""
        stride = self.backbones[0].spec.feature_stride
        win = context_boxes(boxes.to(self.device), size=self.cfg.crop_size, padding=self.cfg.context_padding)
        idx = torch.as_tensor(batch_index, dtype=win.dtype, device=win.device).expand(win.shape[0])
        return torch.cat([idx[:, None], win * (scale / stride)], 1)

    # ------------------------------------------------------------------ inference

    def assign_scales(self, boxes: Tensor, scales: list[float]) -> Tensor:
        """Multi-scale testing (Fast R-CNN, §5.2): each box goes to the image scale at which its area is closest to
        ``crop_size``² (the size the classifiers were built around).  ``boxes [N, 4]`` in image pixels, ``scales``
        the image's factors -> ``Long[N]`` indices into ``scales`` (ties: the first)."""
        area = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).float()
        s = torch.as_tensor(scales, dtype=area.dtype, device=area.device)
        gap = (area[:, None] * s[None] ** 2 - float(self.cfg.crop_size) ** 2).abs()
        return gap.argmin(1)

    @torch.inference_mode()
    def member_logits(self, image_rgb: np.ndarray, boxes: Tensor, *, batch_size: int = 64, flip: bool = False,
                      image_sizes: list[int] | tuple[int, ...] | None = None,
                      view: tuple[Tensor, float, Tensor] | None = None) -> Tensor:
        """Logits of every member for one image's proposals: ``Tensor[M, N, classes]``.

        ``flip``: also classify the mirror image (the network input flipped left to right, the boxes mirrored with
        it), a second view of every proposal: ``Tensor[2, M, N, classes]``, the image's view first.
        ``image_sizes`` (roi mode): shorter sides of an image pyramid, e.g. ``(600, 1200)``; each proposal is pooled
        from the level where its area is closest to ``crop_size``² (:meth:`assign_scales`), so a 40 px object is
        pooled from a map at twice the resolution.  None: the model's ``image_size`` alone."""
        import time

        self.check_image_sizes(image_sizes)
        boxes = boxes.float().to(self.device)
        seconds: dict = {}
        h, w = image_rgb.shape[:2]
        mirrored = mirror_boxes(boxes, float(w)) if flip else None

        def views_at(size, b, mb) -> Tensor:  # [V, M, n, classes] of boxes b (mirrored: mb) at one level
            fmap = None
            if view is not None and size in (None, self.cfg.image_size):
                x, scale, fmap = view
            else:
                x, scale = self.prepare_image(image_rgb, size)
            out = [self._view_logits(x, b, scale, batch_size, seconds, fmap=fmap)]
            if flip:
                t = time.perf_counter()
                out.append(self._view_logits(x.flip(-1), mb, scale, batch_size, seconds))
                seconds["flip_view"] = seconds.get("flip_view", 0.0) + time.perf_counter() - t
            return torch.stack(out) if flip else out[0][None]

        sizes = [None] if image_sizes is None else list(dict.fromkeys(int(v) for v in image_sizes))
        if len(sizes) == 1:
            out = views_at(sizes[0], boxes, mirrored)
        else:
            # (levels whose scales coincide, e.g. a small photo capped by max_upscale, tie in assign_scales: the first
            # takes every box and the others, left empty, are not computed)
            level = self.assign_scales(boxes, [self.image_scale(w, h, v) for v in sizes])
            out = torch.zeros(2 if flip else 1, self.cfg.members, boxes.shape[0], self.cfg.num_classes,
                              device=self.device)
            for k, v in enumerate(sizes):
                sel = (level == k).nonzero().flatten()
                if sel.numel():
                    out[:, :, sel] = views_at(v, boxes[sel], mirrored[sel] if flip else None)
        self.last_seconds = seconds
        return out if flip else out[0]

    def check_image_sizes(self, image_sizes) -> None:
        """Raise ``ValueError`` unless ``image_sizes`` (multi-scale testing) is ``None`` or positive shorter sides for
        a roi-mode model."""
        if image_sizes is None:
            return
        if self.cfg.mode != "roi":
            raise ValueError(f"image_sizes (multi-scale testing) needs a roi-mode model; this one is in "
                             f"{self.cfg.mode} mode, which crops each proposal at its own resolution already")
        if len(image_sizes) == 0 or any(int(v) < 1 for v in image_sizes):
            raise ValueError(f"image_sizes must be positive shorter sides, got {list(image_sizes)}")

    def _view_logits(self, x: Tensor, boxes: Tensor, scale: float, batch_size: int, seconds: dict,
                     fmap: Tensor | None = None) -> Tensor:
        """One view's ``[M, N, classes]``; adds its time per part to ``seconds``.  ``fmap``: the shared trunk's roi
        map of ``x``, already computed (roi mode)."""
        import time

        t0 = time.perf_counter()
        M, N = self.cfg.members, boxes.shape[0]
        out = torch.zeros(M, N, self.cfg.num_classes, device=self.device)
        if N == 0:
            return out
        if self.cfg.mode == "roi":
            rois = self.rois(boxes, scale=scale)
            pooled, t_heads = {}, 0.0
            for m in range(M):
                key = 0 if self.cfg.shared_trunk else m
                if key not in pooled:
                    f = fmap if fmap is not None and key == 0 else self.roi_map(x[None], m)
                    pooled[key] = flat_regions(pool_regions(f, rois, self.cfg.grids))
                t = time.perf_counter()
                out[m] = self.heads[m](pooled[key])
                t_heads += time.perf_counter() - t
            total = time.perf_counter() - t0
            seconds["trunk_and_roi_pool"] = seconds.get("trunk_and_roi_pool", 0.0) + total - t_heads
            seconds["heads"] = seconds.get("heads", 0.0) + t_heads
            return out
        for s in range(0, N, batch_size):  # warp: crops in batches, the trunk once per batch if shared
            crops = warp_crops(x, boxes[s:s + batch_size], size=self.cfg.crop_size, padding=self.cfg.context_padding)
            fmaps = {}
            for m in range(M):
                key = 0 if self.cfg.shared_trunk else m
                if key not in fmaps:
                    fmaps[key] = self._backbone(m)(crops)
                out[m, s:s + batch_size] = self.heads[m](fmaps[key])
        seconds["crops_trunk_and_heads"] = seconds.get("crops_trunk_and_heads", 0.0) + time.perf_counter() - t0
        return out

    def predict(self, image_rgb: np.ndarray, boxes: Tensor, *, members: int | None = None, flip: bool = False,
                image_sizes: list[int] | tuple[int, ...] | None = None,
                view: tuple[Tensor, float, Tensor] | None = None) -> Tensor:
        """Averaged softmax of the first ``members`` members (all by default): ``Tensor[N, classes]``, CPU float.
        ``flip``: the average also takes in every member's softmax on the mirror image (2 x members views).
        ``image_sizes``: multi-scale testing, ``view``: a trunk pass already made (:meth:`member_logits`)."""
        if members is not None and not 1 <= members <= self.cfg.members:
            raise ValueError(f"members must be in 1..{self.cfg.members}, got {members}")
        logits = self.member_logits(image_rgb, boxes, flip=flip, image_sizes=image_sizes, view=view)
        if not flip:
            logits = logits[None]
        logits = logits[:, :members] if members is not None else logits
        return logits.float().softmax(-1).mean((0, 1)).cpu()


# ------------------------------------------------------------------ persistence


def trunk_fingerprint(backbone: str, stages: dict[str, Tensor]) -> str:
    """``"<backbone>:<sha1 prefix>"`` of fine-tuned trunk stages (:func:`stages_state_dict`): names, dtypes and
    values.  Two models with the same fingerprint compute the same trunk maps."""
    import hashlib

    h = hashlib.sha1()
    for k in sorted(stages):
        v = stages[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.numpy().tobytes() if v.dtype != torch.bfloat16 else v.float().numpy().tobytes())
    return f"{backbone}:{h.hexdigest()[:16]}"


def default_region_model_path():
    """Where the embedded default region-classifier ensemble ships inside the package."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "weights" / "region_lite0.pt"


def save_ensemble(model: RegionEnsemble, path, *, record: dict | None = None, with_backbones: bool | None = None
                  ) -> None:
    """Save config, class list, heads (fp16) and training record; the backbones too when they were trained
    (``with_backbones``; default: when the members own their backbones).  Atomic (temp file + rename)."""
    from dataclasses import asdict

    from detection.labels import det200

    if model.fused:
        raise ValueError(f"{path}: cannot save an ensemble fused for inference (its BatchNorms are folded into the "
                         f"convolutions); save the model as loaded or trained")
    if with_backbones is None:
        with_backbones = not model.cfg.shared_trunk
    heads = {k: v.half() if v.is_floating_point() else v for k, v in model.heads.state_dict().items()}
    trunk = None
    if model.cfg.trainable_stages and not with_backbones:  # only the fine-tuned stages of the shared trunk
        _, _, names = split_stem(model.backbones[0], model.cfg.trainable_stages)
        trunk = stages_state_dict(model.backbones[0], names)
    blob = {"config": asdict(model.cfg), "classes": list(det200().wnids),
            "heads": heads, "record": record or model.record or {},
            "backbones": model.backbones.state_dict() if with_backbones else None, "trunk_stages": trunk}
    atomic_torch_save(blob, path)


def load_ensemble(path=None, *, backbone_weights: str | None = "imagenet", device: str | torch.device = "cpu"
                  ) -> RegionEnsemble:
    """Load a :func:`save_ensemble` file (``weights_only=True``; default: the embedded model), in eval mode.

    Backbones saved in the file are used; otherwise they are built with ``backbone_weights``.  The file's class list
    must be the DET-200 list this package uses (a ``ValueError`` otherwise).
    """
    from pathlib import Path

    from detection.labels import det200
    from detection.models.backbones import build_backbone

    path = Path(path) if path is not None else default_region_model_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: region-classifier model not found (train one with "
                                f"tools/train_classifier.py)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = RegionConfig(**blob["config"])
    want = list(det200().wnids)
    if cfg.num_classes == NUM_CLASSES and blob["classes"] != want:
        raise ValueError(f"{path}: its class list is not this package's DET-200 order")
    n = 1 if cfg.shared_trunk else cfg.members
    saved = blob.get("backbones")
    backbones = [build_backbone(cfg.backbone, weights=None if saved is not None else backbone_weights)
                 for _ in range(n)]
    model = RegionEnsemble(cfg=cfg, backbones=backbones)
    if saved is not None:
        model.backbones.load_state_dict(saved)
    elif cfg.trainable_stages:
        if blob.get("trunk_stages") is None:
            raise ValueError(f"{path}: trainable_stages={cfg.trainable_stages} but the file has no trunk weights")
        load_stages_state_dict(model.backbones[0], blob["trunk_stages"])
        model.trunk_id = trunk_fingerprint(cfg.backbone, blob["trunk_stages"])
    model.heads.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["heads"].items()})
    model.record = blob.get("record", {})
    model.class_boxes = model.record.get("class_boxes")
    sidecar = path.with_name(path.stem + ".class_boxes.json")
    if model.class_boxes is None and sidecar.is_file():  # a model trained before its record held them
        import json

        model.class_boxes = json.loads(sidecar.read_text())["class_boxes"]
    return model.to(device).eval()
