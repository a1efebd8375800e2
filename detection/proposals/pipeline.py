"""The proposal stage as one object: selective search (cached) + MultiBox (cached) -> merged proposals per image."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from detection.data.records import DetectionDataset
from detection.proposals.cache import DatasetCache, file_sha1
from detection.proposals.extract import ExtractStats, SelectiveSearchSource, extract_split
from detection.proposals.merge import merge_proposals
from detection.proposals.selective_search import SelectiveSearchSettings

__all__ = ["MultiBoxSettings", "ProposalSettings", "MultiBoxSource", "ProposalStage", "proposal_presets",
           "load_proposal_settings"]

# the proposal presets ship inside the package (package data): detection/proposals/presets/*.yaml
PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class MultiBoxSettings:
    top_k: int = 200
    # a saved MultiBox file, or the name of one shipped in detection/models/weights/; None: the embedded default
    model: str | None = None
    # a MultiBox head on the region classifiers' trunk (the embedded default) reads the maps of this region model
    # (None: the embedded classifiers); inside a detector, the detector's own classifiers
    region_model: str | None = None
    # the whole image + for each level [grid, fraction] grid x grid overlapping crops, each that fraction of the
    # image ([]: the whole image only): crops give small objects box slots of their own.  A MultiBox network with its
    # own backbone (trunk "own") runs it on each crop warped to its input size (a trunk pass per crop); a head on
    # the region classifiers' trunk runs on windows of their one pass's maps (no extra trunk pass)
    crops: list = field(default_factory=list)
    # drop a crop's boxes that reach one of its edges inside the image (objects cut by the crop)
    drop_cut: bool = True
    # a head on the region classifiers' trunk runs in a crop only the priors under this share of the crop's area
    # (the larger ones repeat the whole image's boxes of large objects), and multiplies the crop's confidences by
    # crop_weight (the whole image's boxes rank first among equals); chosen on the dev carve of train
    # (docs/proposals.md)
    crop_prior_area: float = 0.05
    crop_weight: float = 0.5
    # near-duplicate MultiBox boxes (from neighbouring priors or overlapping crops) are suppressed at this IoU before
    # the top_k are taken (1.0: none)
    nms_iou: float = 0.7


@dataclass
class ProposalSettings:
    """Everything that defines the proposal stage (``detection/proposals/presets/*.yaml``)."""

    selective_search: SelectiveSearchSettings = field(default_factory=SelectiveSearchSettings)
    multibox: MultiBoxSettings = field(default_factory=MultiBoxSettings)
    dedup_iou: float = 0.95
    min_size: float = 4.0  # boxes with a side under this many pixels are dropped


    @classmethod
    def from_dict(cls, c: dict) -> "ProposalSettings":
        """From a plain dict shaped like ``detection/proposals/presets/*.yaml`` (missing keys keep their defaults)."""
        unknown = set(c) - {"selective_search", "multibox", "dedup_iou", "min_size"}
        if unknown:
            raise ValueError(f"unknown proposal settings: {', '.join(sorted(unknown))}")
        d = cls()
        try:
            return cls(selective_search=SelectiveSearchSettings(**(c.get("selective_search") or {})),
                       multibox=MultiBoxSettings(**(c.get("multibox") or {})),
                       dedup_iou=c.get("dedup_iou", d.dedup_iou), min_size=c.get("min_size", d.min_size))
        except TypeError as e:  # an unknown key inside selective_search / multibox
            raise ValueError(f"bad proposal settings: {e}") from None


def proposal_presets() -> list[str]:
    """Names of the proposal presets (``paper``, ``rcnn``, ...)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_proposal_settings(preset: "str | Path | ProposalSettings") -> ProposalSettings:
    """A preset name (``"paper"``, ``"rcnn"``), a YAML file shaped like ``detection/proposals/presets/*.yaml``, or
    settings."""
    from omegaconf import OmegaConf

    if isinstance(preset, ProposalSettings):
        return preset
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            have = ", ".join(proposal_presets()) or f"none: {PRESET_DIR} is missing (a broken install)"
            raise ValueError(f"unknown proposal preset {str(preset)!r}; choose one of {have}, or give a .yaml file")
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: proposal settings file not found")
    return ProposalSettings.from_dict(OmegaConf.to_container(_load_preset_node(path), resolve=True))


def _load_preset_node(path: Path, depth: int = 0):
    """A preset file with the presets it builds on merged under it (``defaults:``, e.g. paper on rcnn)."""
    from omegaconf import OmegaConf

    if depth > 8:
        raise ValueError(f"{path}: presets build on each other in a loop")
    node = OmegaConf.load(path)
    for parent in node.pop("defaults", []) or []:
        if isinstance(parent, str) and parent != "_self_":
            node = OmegaConf.merge(_load_preset_node(path.parent / f"{parent}.yaml", depth + 1), node)
    return node


class MultiBoxSource:
    """MultiBox as a cacheable proposal source: all K boxes with their confidences (top-k is cut at merge time).

    The model is loaded lazily, so the source pickles cheaply into worker processes.
    """

    method = "multibox"

    def __init__(self, model_path: str | Path | None = None, *, crops: Sequence[Sequence[float]] = (),
                 drop_cut: bool = False, crop_prior_area: float | None = None, crop_weight: float | None = None,
                 device: str | torch.device = "cpu", region_model: str | Path | None = None):
        from detection.proposals.multibox import default_model_path
        from detection.proposals.multibox.model import crop_windows, multibox_trunk

        crop_windows(100, 100, levels=crops)  # invalid settings fail here, not in a worker
        self.crops = [[int(g), float(f)] for g, f in crops]
        self.drop_cut = bool(drop_cut)
        d = MultiBoxSettings()
        crop_prior_area = d.crop_prior_area if crop_prior_area is None else crop_prior_area
        crop_weight = d.crop_weight if crop_weight is None else crop_weight
        if not 0.0 < crop_prior_area <= 1.0:
            raise ValueError(f"multibox crop_prior_area must be in (0, 1], got {crop_prior_area}")
        if not 0.0 < crop_weight <= 1.0:
            raise ValueError(f"multibox crop_weight must be in (0, 1], got {crop_weight}")
        self.crop_prior_area = float(crop_prior_area)
        self.crop_weight = float(crop_weight)
        self.device = str(device)  # where the network runs (not part of the cache key)

        self.path = Path(model_path) if model_path else default_model_path()
        if model_path and not self.path.is_file() and (default_model_path().parent / str(model_path)).is_file():
            self.path = default_model_path().parent / str(model_path)  # a file shipped with the package, by name
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: MultiBox model not found (train one with tools/train_multibox.py, "
                                    f"or set proposals.multibox.top_k=0 for selective search alone)")
        self.trunk = multibox_trunk(self.path)  # "own" or "region"
        self.region_model = Path(region_model) if region_model else None
        self._sha1 = file_sha1(self.path)
        self._model = None
        self._ensemble = None

    @property
    def shared(self) -> bool:
        """True when the head reads the region classifiers' trunk maps (no backbone of its own)."""
        return self.trunk == "region"

    def model(self):
        """The network, loaded on first use (BatchNorms folded: inference only)."""
        if self._model is None:
            from detection.models.backbones import fold_batchnorm
            from detection.proposals.multibox.model import load_multibox

            model = load_multibox(self.path).eval()
            if not self.shared:
                fold_batchnorm(model)  # ~25 % faster on a CPU, the same boxes to float rounding
            self._model = model.to(self.device)
        return self._model

    def check_trunk(self, ensemble) -> None:
        """Raise ``ValueError`` unless this (shared) head was trained on ``ensemble``'s trunk maps."""
        want = self.model().trunk_id
        if ensemble.trunk_id != want:
            raise ValueError(f"{self.path}: this MultiBox head was trained on the trunk {want or '(unknown)'}, but the "
                             f"region classifiers' trunk is {ensemble.trunk_id or '(unknown)'}; retrain it on their "
                             f"maps (tools/train_multibox.py region_model=<their file>) or give the matching "
                             f"proposals.multibox.model")

    @property
    def fine_level(self) -> bool:
        """True when the (shared) head also reads the trunk's stride-8 map."""
        return bool(getattr(self.model().cfg, "fine_level", False))

    def from_maps(self, last: Tensor, mid: Tensor, fine: Tensor | None = None, *, width: int, height: int
                  ) -> tuple[Tensor, Tensor]:
        """A shared head's boxes (pixels, best first) and confidences from one image's trunk maps."""
        return self.model().propose_from_maps(last, mid, fine, width=width, height=height, crops=self.crops,
                                              crop_prior_area=self.crop_prior_area, crop_weight=self.crop_weight,
                                              drop_cut=self.drop_cut)

    @property
    def settings(self) -> dict:
        s = {"model_sha1": self._sha1}
        if self.crops:  # (the whole-image-only key is unchanged)
            s.update(crops=self.crops, drop_cut=self.drop_cut)
            if self.shared:
                s.update(crop_prior_area=self.crop_prior_area, crop_weight=self.crop_weight)
        return s

    def __getstate__(self):
        return {**self.__dict__, "_model": None, "_ensemble": None}

    def __call__(self, image_rgb: np.ndarray) -> tuple[Tensor, Tensor]:
        if not self.shared:
            return self.model().propose(image_rgb, crops=self.crops, drop_cut=self.drop_cut)
        if self._ensemble is None:  # the region classifiers' trunk, for extraction outside a detector
            from detection.models.region import load_ensemble

            ens = load_ensemble(self.region_model, device=self.device)
            self.check_trunk(ens)
            self._ensemble = ens.fuse_for_inference()
        with torch.inference_mode():
            x, _ = self._ensemble.prepare_image(image_rgb)
            maps = self._ensemble.trunk_maps(x[None], fine=self.fine_level)
        h, w = image_rgb.shape[:2]
        return self.from_maps(*maps, width=w, height=h)


class ProposalStage:
    """Proposals of a dataset's images from the caches, computing what is missing first."""

    def __init__(self, settings: ProposalSettings, *, cache_root: str | Path, device: str | torch.device = "cpu"):
        self.settings = settings
        self.cache_root = Path(cache_root)
        self.ss = SelectiveSearchSource(settings.selective_search)
        mb = settings.multibox
        self.mb = (MultiBoxSource(mb.model, crops=mb.crops, drop_cut=mb.drop_cut, crop_prior_area=mb.crop_prior_area,
                                  crop_weight=mb.crop_weight, device=device,
                                  region_model=mb.region_model) if mb.top_k > 0 else None)
        self.last_seconds: dict = {}  # time per source of the last propose() call

    def sources(self):
        return [s for s in (self.ss, self.mb) if s is not None]

    def extract(self, dataset: DetectionDataset, *, workers: int = 1, rank: int = 0, world_size: int = 1,
                progress: bool = True, chunk_size: int | None = None, log=None) -> dict[str, ExtractStats]:
        """Fill every source's cache for ``dataset`` (this rank's shard).

        ``chunk_size``: take the images ``chunk_size`` at a time, every source on a chunk before the next, so that a
        long run stopped part way leaves whole images (both sources cached) to train or evaluate on; ``log`` then
        gets a line per chunk.  ``None``: each source over all images in turn.
        """
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunks = ([dataset] if not chunk_size or chunk_size >= len(dataset) else
                  [DetectionDataset(dataset.name, dataset.records[i:i + chunk_size])
                   for i in range(0, len(dataset), chunk_size)])
        out: dict[str, ExtractStats] = {}
        for k, part in enumerate(chunks):
            for src in self.sources():
                # on a CPU, MultiBox in worker processes of one thread each beats one process of many threads
                # (2 cores: 0.73 vs 0.83 s an image); on a GPU one process feeds it
                w = workers if src.method != "multibox" or self.mb.device == "cpu" else 1
                st = extract_split(part, src, cache_root=self.cache_root, workers=w, rank=rank,
                                   world_size=world_size, progress=progress)
                acc = out.setdefault(src.method, ExtractStats())
                wall = acc.wall + st.wall  # (merge keeps the longest wall, right for ranks; chunks add up)
                acc.merge(st)
                acc.wall = wall
            if log is not None and len(chunks) > 1:
                log(f"chunk {k + 1}/{len(chunks)} done: " + ", ".join(
                    f"{m} {st.computed} computed / {st.cached} cached" for m, st in out.items()))
        return out

    def _cache(self, dataset: DetectionDataset, src) -> DatasetCache:
        return DatasetCache(self.cache_root, dataset, src.method, src.settings)

    def load(self, dataset: DetectionDataset, *, skip_missing: bool = False) -> list[dict | None]:
        """Per image: ``{"boxes", "source", "seconds"}`` (merged proposals, their source tags, compute time).

        A missing or stale cache entry raises ``RuntimeError`` naming the image (run :meth:`extract`), or gives
        ``None`` with ``skip_missing`` (for images the extraction reported as unreadable).
        """
        ss_cache = self._cache(dataset, self.ss)
        mb_cache = self._cache(dataset, self.mb) if self.mb is not None else None
        out = []
        for r in dataset.records:
            try:
                sha = file_sha1(r.path)
            except OSError as e:  # gone or unreadable since the scan (the extraction reported it too)
                if skip_missing:
                    out.append(None)
                    continue
                raise RuntimeError(f"{r.path}: cannot read ({e.strerror or e})") from None
            ss = ss_cache.load(r, sha)
            mb = mb_cache.load(r, sha) if mb_cache is not None else None
            if ss is None or (mb_cache is not None and mb is None):
                if skip_missing:
                    out.append(None)
                    continue
                raise RuntimeError(f"{r.path}: proposals missing or stale in {self.cache_root} for "
                                   f"{dataset.name}; run the extraction first")
            boxes, source = self.merge(ss["boxes"], mb["boxes"] if mb else None, mb["scores"] if mb else None)
            out.append({"boxes": boxes, "source": source, "seconds": ss["seconds"] + (mb["seconds"] if mb else 0.0)})
        return out

    def merge(self, ss_boxes: Tensor, mb_boxes: Tensor | None, mb_scores: Tensor | None) -> tuple[Tensor, Tensor]:
        """Both sources' boxes of one image -> (merged boxes, source tags) by this stage's settings."""
        return merge_proposals(ss_boxes=ss_boxes, mb_boxes=mb_boxes, mb_scores=mb_scores,
                               top_k=self.settings.multibox.top_k, mb_nms_iou=self.settings.multibox.nms_iou,
                               dedup_iou=self.settings.dedup_iou, min_size=self.settings.min_size)

    def propose(self, image_rgb: np.ndarray) -> tuple[Tensor, Tensor]:
        """Merged proposals of one image, computed now (no cache).  ``self.last_seconds`` then holds the time of
        each source.  (Inside a :class:`~detection.detector.Detector` a shared MultiBox head reads the classifiers'
        own trunk pass instead, see ``Detector.detect``.)"""
        import time

        t0 = time.perf_counter()
        ss, _ = self.ss(image_rgb)
        t1 = time.perf_counter()
        mb_boxes, mb_scores = self.mb(image_rgb) if self.mb is not None else (None, None)
        t2 = time.perf_counter()
        self.last_seconds = {"selective_search": t1 - t0, "multibox": t2 - t1}
        return self.merge(ss, mb_boxes, mb_scores)
