"""Extract one proposal source over a dataset into its cache, with worker processes and/or torchrun ranks.

A *source* is a picklable callable ``source(image_rgb uint8[H, W, 3]) -> (boxes Tensor[N, 4], scores Tensor[N] | None)``
with ``.method`` (str) and ``.settings`` (dict, everything that determines its output).  Every image is computed
once: entries already cached (for the same image bytes) are skipped, so a killed run resumes where it stopped.  An
image that cannot be decoded is reported and skipped, never fatal.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor
from detection.progress import progress as progress_bar

from detection.data.image_io import ImageDecodeError, read_image_rgb
from detection.data.records import DetectionDataset
from detection.proposals.cache import DatasetCache, ProposalCache, file_sha1
from detection.proposals.selective_search import SelectiveSearchSettings, selective_search

__all__ = ["ProposalSource", "SelectiveSearchSource", "ExtractStats", "extract_split"]


class ProposalSource(Protocol):
    method: str
    settings: dict

    def __call__(self, image_rgb: np.ndarray) -> tuple[Tensor, Tensor | None]: ...


@dataclass
class SelectiveSearchSource:
    """Selective search as a proposal source (boxes in its seeded ranking order, no scores)."""

    params: SelectiveSearchSettings = field(default_factory=SelectiveSearchSettings)
    method: str = "selective_search"

    @property
    def settings(self) -> dict:
        return self.params.as_dict()

    def __call__(self, image_rgb: np.ndarray) -> tuple[Tensor, Tensor | None]:
        return selective_search(image_rgb, self.params), None


@dataclass
class ExtractStats:
    """What an extraction did: images computed / found cached / skipped (with reasons), time per computed image."""

    computed: int = 0
    cached: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0  # summed compute time of the computed images
    wall: float = 0.0
    num_boxes: int = 0

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.computed if self.computed else float("nan")

    def merge(self, other: "ExtractStats") -> None:
        self.computed += other.computed
        self.cached += other.cached
        self.skipped += other.skipped
        self.seconds += other.seconds
        self.num_boxes += other.num_boxes
        self.wall = max(self.wall, other.wall)

    def summary(self, name: str) -> str:
        if self.computed == 0:
            s = (f"{name}: all {self.cached} images already cached" if not self.skipped
                 else f"{name}: nothing computed, {self.cached} images already cached, {len(self.skipped)} skipped")
        else:
            s = (f"{name}: {self.computed} images computed ({self.seconds_per_image:.2f} s/image of compute, "
                 f"{self.wall:.0f} s wall), {self.cached} already cached, {len(self.skipped)} skipped")
        return s + "".join(f"\n  skipped: {m}" for m in self.skipped)


_worker_source: Callable | None = None
_worker_root: str | None = None
_worker_caches: dict[str, ProposalCache] = {}


def _init_worker(source, cache_root: str, threads: int) -> None:
    global _worker_source, _worker_root
    _worker_source, _worker_root = source, str(cache_root)
    _worker_caches.clear()
    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover
        pass


def _compute_one(item: tuple[str, str, str, str]) -> tuple[str, int, float, str | None]:
    """Worker body: decode, run the source, save in the cache of the image's source (``item``: source name, image
    id there, path, SHA-1).  Returns (image id, boxes, seconds, error or None)."""
    ns, image_id, path, sha1 = item
    if ns not in _worker_caches:
        _worker_caches[ns] = ProposalCache(_worker_root, ns, _worker_source.method, _worker_source.settings)
    try:
        image = read_image_rgb(path)
    except ImageDecodeError as e:
        return image_id, 0, 0.0, str(e)
    t = time.perf_counter()
    boxes, scores = _worker_source(image)
    dt = time.perf_counter() - t
    entry = {"boxes": boxes.float().contiguous(), "image_sha1": sha1, "width": int(image.shape[1]),
             "height": int(image.shape[0]), "seconds": float(dt)}
    if scores is not None:
        entry["scores"] = scores.float().contiguous()
    _worker_caches[ns].save(image_id, entry)
    return image_id, int(boxes.shape[0]), dt, None


def extract_split(dataset: DetectionDataset, source: ProposalSource, *, cache_root: str | Path, workers: int = 1,
                  rank: int = 0, world_size: int = 1, progress: bool = True, threads_per_worker: int = 1
                  ) -> ExtractStats:
    """Fill the cache of ``source`` for ``dataset`` (this rank's shard: images ``rank::world_size``).

    Args:
        workers: processes computing in parallel on this rank (1 = in this process).
        rank, world_size: torchrun sharding; every rank writes its own images into the shared cache folder.
    Returns:
        This rank's :class:`ExtractStats`.
    """
    cache = DatasetCache(cache_root, dataset, source.method, source.settings)
    start = time.perf_counter()
    stats = ExtractStats()
    todo = []
    for r in dataset.records[rank::world_size]:
        try:
            sha1 = file_sha1(r.path)
        except OSError as e:
            stats.skipped.append(f"{r.path}: cannot read ({e.strerror or e})")
            continue
        if cache.load(r, sha1) is not None:
            stats.cached += 1
        else:
            cache.prepare(r)
            todo.append((*cache.slot(r), str(r.path), sha1))
    bar = {} if progress else {"disable": True}
    desc = f"{source.method} {dataset.name}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else "")
    with progress_bar(total=len(todo), desc=desc, unit="img", **bar) as pbar:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(source, cache_root, max(1, torch.get_num_threads()))
            results = map(_compute_one, todo)
            _consume(results, stats, pbar)
        else:
            # spawn, not fork: a parent that has already run OpenCV (its thread pool) or torch deadlocks its forked
            # children (seen: tools/experiments/bench_proposals.py after an in-process selective search hung forever).
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(source, str(cache_root), threads_per_worker)) as pool:
                _consume(pool.imap_unordered(_compute_one, todo, chunksize=1), stats, pbar)
    stats.wall = time.perf_counter() - start
    return stats


def _consume(results, stats: ExtractStats, pbar) -> None:
    for image_id, n, dt, err in results:
        if err is not None:
            stats.skipped.append(err)
        else:
            stats.computed += 1
            stats.seconds += dt
            stats.num_boxes += n
        pbar.update(1)
