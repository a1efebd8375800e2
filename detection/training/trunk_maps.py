"""The frozen part of the trunk, cached: its maps of every training image and its mirror, computed once.

The trunk is split (:func:`detection.models.region.split_stem`) into a frozen part and the last
``cfg.trainable_stages`` stages.  The frozen part's output is computed once per training image and its mirror image
(fp16, one atomic file per image, keyed by everything that determines it: :class:`TrunkCache`), so an epoch only runs
the trainable stages, RoIAlign and the heads.  A cache of an earlier cut of the same trunk is reused (the layers in
between run on it).  Multi-scale training caches each pyramid level apart (:func:`level_model`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from detection.data.records import DetectionDataset
from detection.models.region import RegionEnsemble, split_stem
from detection.progress import progress as progress_bar
from detection.proposals.cache import DatasetCache, ProposalCache, file_sha1

__all__ = ["TrunkCache", "trunk_settings", "trunk_cache", "cache_trunk_maps", "level_model", "pyramid_sizes",
           "level_boxes"]


class TrunkCache(ProposalCache):
    """Per-image cache of the frozen trunk part's output: ``{"map", "map_flip"}`` fp16 ``[C, h, w]`` (the image and
    its mirror), ``scale`` (image pixels -> network input), ``width``, ``height``, ``image_sha1``."""

    def __init__(self, root: str | Path, dataset: str, settings: dict):
        super().__init__(root, dataset, "trunk_maps", settings)


def trunk_settings(model: RegionEnsemble, *, backbone_weights: str | None) -> dict:
    """Everything that determines the cached maps (the cache key)."""
    cfg = model.cfg
    frozen, _, _ = split_stem(model.backbones[0], cfg.trainable_stages)
    return {"backbone": cfg.backbone, "weights": str(backbone_weights), "image_size": cfg.image_size,
            "max_image_size": cfg.max_image_size, "frozen_layers": [n for n, _ in frozen.named_children()]}


def _source_cache(cache: TrunkCache) -> tuple[TrunkCache, int] | None:
    """A cache of the same dataset and trunk cut earlier (its frozen layers a proper prefix of ours), the latest
    cut first: maps can be derived from it by running the layers in between (a fraction of the trunk)."""
    import json

    mine = cache.settings["frozen_layers"]
    best = None
    for d in cache.dir.parent.glob("trunk_maps-*"):
        f = d / "settings.json"
        if d == cache.dir or not f.exists():
            continue
        st = json.loads(f.read_text())["settings"]
        fl = st.get("frozen_layers", [])
        if all(st.get(k) == cache.settings[k] for k in cache.settings if k != "frozen_layers") \
                and len(fl) < len(mine) and mine[:len(fl)] == fl and (best is None or len(fl) > best[1]):
            best = (TrunkCache(cache.root, cache.dataset, st), len(fl))
    return best


def _scale_matches(model: RegionEnsemble, entry: dict) -> bool:
    """A cached map was computed at the scale the model takes the image at now (``max_upscale`` changes it for
    small images only, so it is checked per image rather than keyed)."""
    want = model.image_scale(entry["width"], entry["height"])
    return abs(float(entry["scale"]) - want) <= 1e-6 * want


def trunk_cache(root: str | Path, dataset: DetectionDataset, settings: dict) -> DatasetCache:
    """The trunk maps of ``dataset``'s images, each kept with its source (:class:`DatasetCache`)."""
    return DatasetCache(root, dataset, make=lambda ns: TrunkCache(root, ns, settings))


@torch.inference_mode()
def cache_trunk_maps(dataset: DetectionDataset, model: RegionEnsemble, cache: DatasetCache, *,
                     positions: list[int], rank: int = 0, world_size: int = 1, progress: bool = True
                     ) -> list[str]:
    """Compute the frozen part's maps of ``dataset.records[positions]`` (this rank's share, ``rank::world_size``)
    that are not cached yet.  Where a cache of an earlier cut of the same trunk has the image, the map is derived
    from it (the layers in between only).  Returns the messages of images that could not be decoded (reported,
    skipped)."""
    from detection.data.image_io import ImageDecodeError, read_image_rgb

    frozen, _, _ = split_stem(model.backbones[0], model.cfg.trainable_stages)
    frozen.eval()
    sources: dict[str, tuple] = {}  # per image source: an earlier cut's cache and the layers in between
    skipped = []
    mine = positions[rank::world_size]
    for p in progress_bar(mine, desc=f"trunk maps {dataset.name}", unit="img", disable=not progress):
        r = dataset.records[p]
        sha = file_sha1(r.path)
        have = cache.load(r, sha)
        if have is not None and _scale_matches(model, have):
            continue
        ns, local = cache.slot(r)
        if ns not in sources:
            found = _source_cache(cache.prepare(r))
            sources[ns] = (found[0], nn.Sequential(*list(frozen.children())[found[1]:])) if found else (None, None)
        source, bridge = sources[ns]
        src = source.load(local, sha) if source is not None else None
        if src is not None and not _scale_matches(model, src):
            src = None
        if src is not None:
            both = bridge(torch.stack([src["map"], src["map_flip"]]).float())
            meta = {k: src[k] for k in ("scale", "width", "height")}
        else:
            try:
                img = read_image_rgb(r.path)
            except ImageDecodeError as e:
                skipped.append(str(e))
                continue
            x, scale = model.prepare_image(img)
            both = frozen(torch.stack([x, x.flip(-1)]))
            meta = {"scale": float(scale), "width": int(img.shape[1]), "height": int(img.shape[0])}
        cache.save(r, {"map": both[0].half().cpu().contiguous(), "map_flip": both[1].half().cpu().contiguous(),
                       **meta, "image_sha1": sha})
    return skipped


def level_model(model: RegionEnsemble, image_size: int) -> RegionEnsemble:
    """``model`` taken at another shorter side, for caching its trunk maps there: it shares ``model``'s trunk, and its
    :meth:`~RegionEnsemble.image_scale` is ``model.image_scale(w, h, image_size)`` (the longer-side cap scaled in
    proportion, ``max_upscale`` kept), the scale multi-scale testing uses for that level.  The size is part of the
    trunk-map cache key, so each level is cached apart."""
    from dataclasses import replace

    cfg = model.cfg
    longest = cfg.max_image_size * int(image_size) / cfg.image_size
    longest = int(longest) if float(longest).is_integer() else longest
    return RegionEnsemble(cfg=replace(cfg, image_size=int(image_size), max_image_size=longest),
                          backbones=list(model.backbones)).eval()


def pyramid_sizes(model: RegionEnsemble, sizes) -> list[int]:
    """Multi-scale training's levels (``MemberSettings.image_sizes``), checked: positive shorter sides, the model's
    ``image_size`` among them (every image trains there, as the one-scale detector reads it), duplicates dropped,
    in the given order (the order multi-scale testing breaks ties in).  ``None`` or empty: ``[image_size]``."""
    if not sizes:
        return [model.cfg.image_size]
    model.check_image_sizes(sizes)  # the same rule as multi-scale testing: positive sizes, a roi-mode model
    out = list(dict.fromkeys(int(v) for v in sizes))
    if model.cfg.image_size not in out:
        raise ValueError(f"train.image_sizes {out} must include model.image_size ({model.cfg.image_size}): every "
                         f"image trains at the size the one-scale detector reads it")
    return out


def level_boxes(model: RegionEnsemble, boxes: Tensor, *, width: int, height: int, sizes: list[int]) -> Tensor:
    """``Long[N]``: the index into ``sizes`` of the level multi-scale testing reads each box from
    (:meth:`RegionEnsemble.assign_scales` at the image's scales for ``sizes``)."""
    return model.assign_scales(boxes.float(), [model.image_scale(width, height, v) for v in sizes])
