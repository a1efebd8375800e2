"""MultiBox network: a backbone's last feature map -> K class-agnostic boxes (offsets from K priors) + K confidences.

Each output slot ``k`` is tied to prior ``k`` (a k-means centre of training boxes).  The head pools a convolved feature map
inside a context-enlarged window around the prior (RoIAlign), adds a global image descriptor and a learned embedding
of the prior, and predicts the prior's offset and the box's object confidence with one small MLP shared by all
slots -- so the head stays small (a few MB) whatever K is.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detection.models.backbones import Backbone, build_backbone
from detection.files import atomic_torch_save

__all__ = ["MultiBoxConfig", "MultiBoxHead", "MultiBox", "SharedMultiBox", "crop_windows", "window_boxes",
           "small_prior_ids", "save_multibox", "load_multibox", "multibox_trunk"]

TRUNKS = ("own", "region")


@dataclass
class MultiBoxConfig:
    """Architecture of a MultiBox model (saved with it)."""

    backbone: str = "lite0"  # trunk="region": taken from the region classifiers, whatever is set here
    input_size: int = 320  # images are warped to input_size x input_size
    num_priors: int = 400
    reduce_channels: int = 128
    roi_size: int = 1
    # also read the backbone's stride-16 map (FPN-style top-down merge): small objects need it (a 20 px object is
    # under one cell of the stride-32 map)
    mid_level: bool = False
    context: float = 1.5  # the RoI window is the prior enlarged by this factor around its centre
    hidden: int = 192
    global_dim: int = 128
    prior_embed_dim: int = 32
    # "own": the network runs its own backbone on ``input_size`` warps of the image (and crops);
    # "region": the head reads the region classifiers' trunk maps at their image scale (their stride-32 map before
    # the last block, and the stride-16 map on the way): one trunk pass serves both stages (Faster R-CNN's shared
    # features); ``input_size`` and crops do not apply
    trunk: str = "own"
    # trunk="region": also read the trunk's stride-8 map (top-down from the stride-16 one); a prior whose context
    # window is under fine_cells cells of the stride-16 map is pooled from it (small objects), the others from the
    # stride-16 map
    fine_level: bool = False
    fine_cells: float = 4.0
    # fine_level: smooth the stride-8 sum with a 3x3 conv as the other levels (True), or take it as the 1x1 lateral
    # plus the upsampled stride-16 map through a ReLU (False): the 3x3 conv over the 8x larger map is most of an
    # epoch's time (python tools/experiments/bench_multibox_head.py)
    fine_smooth: bool = True

    def __post_init__(self) -> None:
        if self.trunk not in TRUNKS:
            raise ValueError(f"MultiBoxConfig.trunk must be one of {TRUNKS}, got {self.trunk!r}")
        if self.trunk == "region" and not self.mid_level:
            raise ValueError("MultiBoxConfig.trunk='region' reads the stride-16 map too: mid_level must be true")
        if self.fine_level and self.trunk != "region":
            raise ValueError("MultiBoxConfig.fine_level needs trunk='region' (the classifiers' pass gives the map)")


class MultiBoxHead(nn.Module):
    """Feature map ``[B, C, h, w]`` + priors ``[K, 4]`` (normalised xyxy) -> boxes ``[B, K, 4]``, logits ``[B, K]``."""

    def __init__(self, *, in_channels: int, cfg: MultiBoxConfig, mid_channels: int = 0, fine_channels: int = 0):
        super().__init__()
        self.cfg = cfg
        self.mid_channels = mid_channels
        self.fine_channels = fine_channels
        # per-image work (a 1x1 and a 3x3 conv on the small map) is cheap; per-slot work (the MLP) is kept small,
        # since it runs B x K times
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, cfg.reduce_channels, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(cfg.reduce_channels, cfg.reduce_channels, 3, padding=1),
                                    nn.ReLU(inplace=True))
        if mid_channels:  # top-down: the reduced stride-32 map, upsampled, plus a lateral 1x1 of the stride-16 map
            self.lateral = nn.Conv2d(mid_channels, cfg.reduce_channels, 1)
            self.smooth = nn.Sequential(nn.Conv2d(cfg.reduce_channels, cfg.reduce_channels, 3, padding=1),
                                        nn.ReLU(inplace=True))
        if fine_channels:  # one more top-down step: the stride-8 map, for the small priors
            self.lateral8 = nn.Conv2d(fine_channels, cfg.reduce_channels, 1)
            self.smooth8 = (nn.Sequential(nn.Conv2d(cfg.reduce_channels, cfg.reduce_channels, 3, padding=1),
                                          nn.ReLU(inplace=True)) if cfg.fine_smooth else nn.ReLU())
        self.glob = nn.Sequential(nn.Linear(in_channels, cfg.global_dim), nn.ReLU(inplace=True))
        self.prior_embed = nn.Embedding(cfg.num_priors, cfg.prior_embed_dim)
        d_in = cfg.reduce_channels * cfg.roi_size ** 2 + cfg.global_dim + cfg.prior_embed_dim
        self.mlp = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(inplace=True),
                                 nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(inplace=True))
        self.delta = nn.Linear(cfg.hidden, 4)
        self.conf = nn.Linear(cfg.hidden, 1)
        nn.init.zeros_(self.delta.weight)  # start exactly at the priors
        nn.init.zeros_(self.delta.bias)
        nn.init.normal_(self.conf.weight, std=0.01)
        nn.init.constant_(self.conf.bias, -5.0)  # a few objects among hundreds of slots

    def forward(self, fmap: Tensor, priors: Tensor, mid: Tensor | None = None, fine: Tensor | None = None, *,
                windows: Tensor | None = None, prior_ids: Tensor | None = None,
                window_image: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``fmap [B, C, h, w]`` last map, ``priors [K, 4]``, ``mid [B, C_mid, 2h, 2w]`` the stride-16 map (needed
        when the head was built with ``mid_channels``), ``fine [B, C_fine, 4h, 4w]`` the stride-8 map (needed with
        ``fine_channels``) -> boxes ``[B, K, 4]`` normalised xyxy, logits ``[B, K]``.

        ``windows [W, 4]`` (normalised xyxy, one image: ``B == 1``): run the head on each window of the maps as if
        the window were the whole image -- its priors' context windows scaled into the window, its global descriptor
        pooled inside it -- giving boxes ``[W, K, 4]`` normalised to each window.  A window multiplies the box slots
        (one per prior) without another trunk pass.  ``window_image [W]``: the image of the batch each window is
        cut from (windows of several images at once, as in training; default: one image).  ``prior_ids [K]``: which
        of the head's priors ``priors`` are (their learned embeddings; default: all of them, in order).
        """
        r, r8 = self.maps(fmap, mid, fine)
        return self.slots(fmap, r, r8, priors, windows=windows, prior_ids=prior_ids, window_image=window_image)

    def maps(self, fmap: Tensor, mid: Tensor | None = None, fine: Tensor | None = None
             ) -> tuple[Tensor, Tensor | None]:
        """The reduced maps the slots pool from: the top-down sum at stride 16 (or 32), and at stride 8 for a
        ``fine_channels`` head (else ``None``)."""
        r = self.reduce(fmap)
        if self.mid_channels:
            if mid is None:
                raise ValueError("this MultiBox head reads the stride-16 map too: pass mid=")
            r = self.smooth(self.lateral(mid) + F.interpolate(r, size=mid.shape[-2:], mode="nearest"))
        r8 = None
        if self.fine_channels:
            if fine is None:
                raise ValueError("this MultiBox head reads the stride-8 map too: pass fine=")
            r8 = self.smooth8(self.lateral8(fine) + F.interpolate(r, size=fine.shape[-2:], mode="nearest"))
        return r, r8

    def slots(self, fmap: Tensor, r: Tensor, r8: Tensor | None, priors: Tensor, *, windows: Tensor | None = None,
              prior_ids: Tensor | None = None, window_image: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The per-prior part of :meth:`forward` on maps from :meth:`maps` (same arguments)."""
        K = priors.shape[0]
        centre = (priors[:, :2] + priors[:, 2:]) / 2
        half = (priors[:, 2:] - priors[:, :2]) / 2 * self.cfg.context
        win = torch.cat([centre - half, centre + half], 1)  # normalised context windows [K, 4]
        if windows is None:
            B = fmap.shape[0]
            image = torch.arange(B, device=fmap.device)
            win = win[None].expand(B, K, 4)
            gvec = fmap.mean((2, 3))
        else:
            B = windows.shape[0]
            if window_image is None:
                if fmap.shape[0] != 1:
                    raise ValueError(f"windows= of a batch of {fmap.shape[0]} images: pass window_image= too")
                image = torch.zeros(B, dtype=torch.long, device=fmap.device)
            else:
                if window_image.shape != (B,):
                    raise ValueError(f"window_image must be [{B}], got {tuple(window_image.shape)}")
                image = window_image.to(device=fmap.device, dtype=torch.long)
            size = (windows[:, 2:] - windows[:, :2]).repeat(1, 2)
            win = win[None] * size[:, None] + windows[:, None, :2].repeat(1, 1, 2)  # [W, K, 4] in the image
            h, w = fmap.shape[-2:]
            cells = windows * windows.new_tensor([w, h, w, h])
            gvec = roi_align(fmap, torch.cat([image[:, None].to(cells.dtype), cells], 1), output_size=4,
                             sampling_ratio=2, aligned=True).mean((2, 3))
        if r8 is not None:
            h, w = r.shape[-2:]
            side = ((win[..., 2] - win[..., 0]) * w * (win[..., 3] - win[..., 1]) * h).clamp(min=0).sqrt()
            small = side < self.cfg.fine_cells  # [B, K]: pooled from the stride-8 map
            pooled = r.new_zeros((B, K, r.shape[1] * self.cfg.roi_size ** 2))
            for level, sel in ((r, ~small), (r8, small)):
                if sel.any():
                    pooled[sel] = self._pool(level, win[sel], image[:, None].expand(B, K)[sel])
            pooled = pooled.flatten(0, 1)
        else:
            pooled = self._pool(r, win.reshape(-1, 4), image.repeat_interleave(K))  # [B*K, reduce * roi^2]
        g = self.glob(gvec).repeat_interleave(K, 0)
        emb = self.prior_embed.weight if prior_ids is None else self.prior_embed(prior_ids)
        e = emb.repeat(B, 1)
        hdn = self.mlp(torch.cat([pooled, g, e], 1))
        boxes = priors.repeat(B, 1) + self.delta(hdn)
        return boxes.view(B, K, 4), self.conf(hdn).view(B, K)

    def _pool(self, r: Tensor, win: Tensor, image: Tensor) -> Tensor:
        """RoIAlign of normalised windows ``[N, 4]``, window ``i`` on image ``image[i]`` of map ``r [B, C, h, w]``
        -> ``[N, C*s*s]``."""
        h, w = r.shape[-2:]
        cells = win * win.new_tensor([w, h, w, h])
        rois = torch.cat([image[:, None].to(cells.dtype), cells], 1)
        return roi_align(r, rois, output_size=self.cfg.roi_size, spatial_scale=1.0, sampling_ratio=2,
                         aligned=True).flatten(1)


class MultiBox(nn.Module):
    """Backbone + :class:`MultiBoxHead` + priors.  ``propose`` gives pixel boxes of one image, best first."""

    def __init__(self, *, backbone: Backbone, cfg: MultiBoxConfig, priors: Tensor):
        super().__init__()
        if priors.shape != (cfg.num_priors, 4):
            raise ValueError(f"priors must be [{cfg.num_priors}, 4], got {tuple(priors.shape)}")
        self.cfg = cfg
        self.backbone = backbone
        self.head = MultiBoxHead(in_channels=backbone.spec.feature_channels, cfg=cfg,
                                 mid_channels=backbone.spec.mid_channels if cfg.mid_level else 0)
        self.register_buffer("priors", priors.float().clone())

    def preprocess(self, image_rgb: np.ndarray) -> Tensor:
        """``uint8[H, W, 3]`` -> normalised ``[1, 3, S, S]`` (warped, bilinear, antialiased)."""
        x = torch.from_numpy(np.array(image_rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(self.cfg.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.backbone.normalize(x)

    def trunk(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Normalised images ``[B, 3, S, S]`` -> (last map, stride-16 map or ``None``): what the head reads."""
        if self.cfg.mid_level:
            mid, last = self.backbone.forward_levels(x)
            return last, mid
        return self.backbone(x), None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images ``[B, 3, S, S]`` -> (boxes ``[B, K, 4]`` normalised xyxy, logits ``[B, K]``)."""
        last, mid = self.trunk(x)
        return self.head(last, self.priors, mid)

    @torch.inference_mode()
    def propose(self, image_rgb: np.ndarray, *, top_k: int | None = None, crops: Sequence[Sequence[float]] = (),
                drop_cut: bool = False) -> tuple[Tensor, Tensor]:
        """Boxes of one RGB image in its pixels (``Tensor[N, 4]`` xyxy, clipped, best first) and their confidences.

        ``crops``: levels ``(grid, fraction)`` of overlapping crops (see :func:`crop_windows`) run together with the
        whole image (one batch on a GPU, one window at a time on a CPU); every window's boxes are mapped back into
        the image and all are ranked together by confidence.  A crop is warped to the same input size, so its objects reach the network ``1 / fraction`` times
        larger: small objects that are under a cell of the whole-image maps become findable.  With ``drop_cut`` a
        crop's boxes that reach one of its edges inside the image (within 2 % of the crop's side) are dropped: they
        are objects cut by the crop, which a larger window sees whole.  Near-duplicates across windows remain
        (the merge removes them with NMS before taking a top k, see :func:`~detection.proposals.merge.merge_proposals`).
        """
        h, w = image_rgb.shape[:2]
        windows = crop_windows(w, h, levels=crops)
        x = torch.cat([self.preprocess(image_rgb[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]).to(self.priors.device)
        # on a CPU one window at a time is faster than one batch of 14 (measured on chelsea, 2 cores: 1.1 vs 3.1 s;
        # the trunk's activations outgrow the caches); a GPU takes them all at once
        chunk = len(windows) if x.device.type == "cuda" else 1
        outs = [self(x[i:i + chunk]) for i in range(0, len(windows), chunk)]
        boxes, logits = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        b, scores = window_boxes(boxes, logits, windows, width=w, height=h, drop_cut=drop_cut)
        order = torch.sort(scores, descending=True, stable=True).indices
        if top_k is not None:
            order = order[:top_k]
        return b[order], scores[order]


class SharedMultiBox(nn.Module):
    """A MultiBox head on the region classifiers' trunk maps (``cfg.trunk == "region"``): no backbone of its own.

    ``trunk_id`` names the trunk it was trained on (:attr:`RegionEnsemble.trunk_id
    <detection.models.region.RegionEnsemble.trunk_id>`); its boxes are only meaningful on maps of that trunk, so the
    detector and :class:`~detection.proposals.pipeline.MultiBoxSource` check it.
    """

    def __init__(self, *, cfg: MultiBoxConfig, priors: Tensor, trunk_id: str = ""):
        super().__init__()
        from detection.models.backbones import backbone_spec

        if cfg.trunk != "region":
            raise ValueError(f"SharedMultiBox needs MultiBoxConfig.trunk='region', got {cfg.trunk!r}")
        if priors.shape != (cfg.num_priors, 4):
            raise ValueError(f"priors must be [{cfg.num_priors}, 4], got {tuple(priors.shape)}")
        spec = backbone_spec(cfg.backbone)
        self.cfg = cfg
        self.trunk_id = trunk_id
        if cfg.fine_level and not spec.fine_layer:
            raise ValueError(f"fine_level: {cfg.backbone} offers no stride-8 map")
        self.head = MultiBoxHead(in_channels=spec.stem_channels, cfg=cfg, mid_channels=spec.mid_channels,
                                 fine_channels=spec.fine_channels if cfg.fine_level else 0)
        self.register_buffer("priors", priors.float().clone())

    def forward(self, last: Tensor, mid: Tensor, fine: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Trunk maps ``[B, C, h, w]`` (stride 32), ``[B, C_mid, ~2h, ~2w]`` (stride 16) and, for a ``fine_level``
        head, ``[B, C_fine, ~4h, ~4w]`` (stride 8) -> (boxes ``[B, K, 4]`` normalised xyxy, logits ``[B, K]``)."""
        return self.head(last, self.priors, mid, fine)

    @torch.inference_mode()
    def propose_from_maps(self, last: Tensor, mid: Tensor, fine: Tensor | None = None, *, width: int, height: int,
                          crops: Sequence[Sequence[float]] = (), crop_prior_area: float = 1.0,
                          crop_weight: float = 1.0, drop_cut: bool = False) -> tuple[Tensor, Tensor]:
        """Boxes of one image in its pixels (``Tensor[N, 4]`` xyxy, clipped, best first, on the CPU) and their
        confidences, from that image's trunk maps (batch of one): all K of the whole image's.

        ``crops``: levels ``(grid, fraction)`` of windows (see :func:`crop_windows`) cut from the same maps; the head
        runs on each window as if it were the whole image (:meth:`MultiBoxHead.forward` ``windows=``), so each
        window adds box slots for the objects it holds -- what crops bought a MultiBox with its own trunk, without
        another trunk pass.  In a window only the priors under ``crop_prior_area`` of its area run (the larger ones
        would repeat the whole image's boxes of large objects), its confidences are multiplied by ``crop_weight``
        (the whole image's boxes rank first among equals), and with ``drop_cut`` its boxes cut by one of its inner
        edges are dropped.
        """
        head = self.head
        r, r8 = head.maps(last, mid, fine)
        boxes, logits = head.slots(last, r, r8, self.priors)
        b, s = to_pixel_boxes(boxes[0], logits[0], width=width, height=height, top_k=None)
        if not crops:
            return b, s
        windows = crop_windows(width, height, levels=crops)[1:]
        ids = small_prior_ids(self.priors, crop_prior_area)
        if not ids.numel():
            return b, s
        norm = torch.tensor(windows, dtype=last.dtype, device=last.device) / last.new_tensor(
            [width, height, width, height])
        wb, wl = head.slots(last, r, r8, self.priors[ids], windows=norm, prior_ids=ids)
        cb, cs = window_boxes(wb, wl, windows, width=width, height=height, drop_cut=drop_cut)
        b, s = torch.cat([b, cb]), torch.cat([s, cs * crop_weight])
        order = torch.sort(s, descending=True, stable=True).indices
        return b[order], s[order]


def small_prior_ids(priors: Tensor, max_area: float) -> Tensor:
    """Indices of the priors (normalised xyxy ``[K, 4]``) whose area is under ``max_area``: those a window runs."""
    area = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])
    return (area < max_area).nonzero().flatten()


def crop_windows(width: int, height: int, *, levels: Sequence[Sequence[float]] = ()
                 ) -> list[tuple[int, int, int, int]]:
    """The whole image, then for each level ``(grid, fraction)``: ``grid x grid`` windows each ``fraction`` of the
    width and height, evenly spaced from corner to corner (overlapping when ``grid * fraction > 1``), row by row;
    integer pixel xyxy."""
    out = [(0, 0, int(width), int(height))]
    for level in levels:
        if len(level) != 2:
            raise ValueError(f"a crop level is [grid, fraction], got {list(level)}")
        grid, fraction = level
        if grid != int(grid) or grid < 2:
            raise ValueError(f"a crop level's grid must be an integer >= 2, got {grid}")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"a crop level's fraction must be in (0, 1), got {fraction}")
        grid = int(grid)
        cw, ch = max(1, round(fraction * width)), max(1, round(fraction * height))
        for i in range(grid):
            for j in range(grid):
                x0 = round((width - cw) * j / (grid - 1))
                y0 = round((height - ch) * i / (grid - 1))
                out.append((x0, y0, x0 + cw, y0 + ch))
    return out


def window_boxes(boxes: Tensor, logits: Tensor, windows: Sequence[Sequence[int]], *, width: int, height: int,
                 drop_cut: bool = False) -> tuple[Tensor, Tensor]:
    """Boxes ``[W, K, 4]`` normalised to each of ``W`` pixel windows (xyxy) + logits ``[W, K]`` -> pixel boxes of the
    image ``[N, 4]`` (each clipped to its window) and confidences ``[N]``, window by window, unsorted.

    With ``drop_cut`` a window's boxes that reach one of its edges inside the image (within 2 % of the window's
    side) are dropped: objects cut by the window, which a larger window sees whole."""
    raw = boxes.float().cpu()
    win = torch.tensor(windows, dtype=torch.float32).reshape(-1, 4)
    size = (win[:, 2:] - win[:, :2]).repeat(1, 2)
    b = _to_pixels(raw, size[:, None], win[:, None, :2].repeat(1, 1, 2))
    scores = torch.sigmoid(logits.float().cpu())
    keep = torch.ones(scores.shape, dtype=torch.bool)
    if drop_cut:
        margin = 0.02
        inner_lo = win[:, None, :2] > 0  # [W, 1, 2]: which of a window's edges lie inside the image
        inner_hi = win[:, None, 2:] < torch.tensor([width, height])
        lo = torch.minimum(raw[..., :2], raw[..., 2:])  # [W, K, 2]: (x, y) of each box's top-left corner
        hi = torch.maximum(raw[..., :2], raw[..., 2:])
        keep = ~(((lo <= margin) & inner_lo).any(-1) | ((hi >= 1 - margin) & inner_hi).any(-1))
    return b[keep], scores[keep]


def to_pixel_boxes(boxes: Tensor, logits: Tensor, *, width: int, height: int, top_k: int | None
                   ) -> tuple[Tensor, Tensor]:
    """Normalised ``[K, 4]`` + logits -> pixel boxes clipped to the image, sorted by confidence (stable), top-k."""
    scores = torch.sigmoid(logits.float())
    order = torch.sort(scores, descending=True, stable=True).indices
    if top_k is not None:
        order = order[:top_k]
    b = _to_pixels(boxes.float()[order].cpu(), torch.tensor([width, height, width, height], dtype=torch.float32))
    return b, scores[order].cpu()


def _to_pixels(boxes: Tensor, scale: Tensor, offset: Tensor | float = 0.0) -> Tensor:
    """Normalised ``[..., 4]`` boxes -> pixel xyxy: clipped to the window (``[0, 1]``), scaled, shifted, corners
    ordered (a predicted box may come out flipped)."""
    b = boxes.clamp(0, 1) * scale + offset
    return torch.cat([torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])], -1)


def save_multibox(model: MultiBox, path: str | os.PathLike, *, record: dict | None = None) -> None:
    """Save head + priors + config + training record (the trunk is rebuilt from its own weights), half precision."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.head.state_dict().items()}
    blob = {"config": asdict(model.cfg), "priors": model.priors.cpu(), "head": state, "record": record or {},
            "trunk_id": getattr(model, "trunk_id", "")}
    atomic_torch_save(blob, path)


def multibox_trunk(path: str | os.PathLike) -> str:
    """The ``trunk`` of a saved MultiBox file (``"own"`` or ``"region"``), without building it."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    return blob["config"].get("trunk", "own")


def load_multibox(path: str | os.PathLike, *, backbone_weights: str | None = "imagenet"
                  ) -> "MultiBox | SharedMultiBox":
    """Load a model saved by :func:`save_multibox` (``weights_only=True``): a :class:`MultiBox` (its backbone gets
    ``backbone_weights``) or, for ``trunk="region"``, a :class:`SharedMultiBox`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MultiBox model not found")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = MultiBoxConfig(**{"trunk": "own", **blob["config"]})  # (files from before the trunk setting: own)
    if cfg.trunk == "region":
        model = SharedMultiBox(cfg=cfg, priors=blob["priors"], trunk_id=blob.get("trunk_id", ""))
    else:
        model = MultiBox(backbone=build_backbone(cfg.backbone, weights=backbone_weights), cfg=cfg,
                         priors=blob["priors"])
    model.head.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["head"].items()})
    model.record = blob.get("record", {})
    return model.eval()
