"""On-disk proposal cache: one file per image, per (dataset, method settings hash); atomic, resumable, never stale.

Layout: ``<root>/<dataset>/<method>-<hash12>/settings.json`` and ``.../<image id>.pt``.  The hash covers every
setting that determines the output (and a format version), so a changed setting gets a new folder.  Each image file
records the SHA-1 of the image bytes it was computed from; an entry whose image changed since is treated as missing
(recomputed), never returned.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from detection.files import atomic_torch_save, atomic_write

__all__ = ["ProposalCache", "DatasetCache", "settings_hash", "file_sha1", "CACHE_FORMAT"]

CACHE_FORMAT = 1


def settings_hash(method: str, settings: dict) -> str:
    """12 hex digits identifying ``method`` with ``settings`` (JSON-serialisable) and the cache format."""
    blob = json.dumps({"method": method, "settings": settings, "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def file_sha1(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id.replace("/", "__"))


@dataclass
class ProposalCache:
    """The cache folder of one method/settings on one dataset."""

    root: Path
    dataset: str
    method: str
    settings: dict

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.key = settings_hash(self.method, self.settings)
        self.dir = self.root / _safe_name(self.dataset) / f"{self.method}-{self.key}"

    def prepare(self) -> None:
        """Create the folder and its ``settings.json`` (atomically; identical content if it exists)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / "settings.json"
        if not target.exists():
            atomic_write(target, json.dumps({"method": self.method, "settings": self.settings,
                                              "format": CACHE_FORMAT}, indent=2, default=str).encode())

    def path(self, image_id: str) -> Path:
        return self.dir / f"{_safe_name(image_id)}.pt"

    def load(self, image_id: str, image_sha1: str | None = None) -> dict | None:
        """The cached entry for an image, or None if absent, unreadable or computed from other image bytes."""
        p = self.path(image_id)
        if not p.exists():
            return None
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file is recomputed, not trusted
            return None
        if image_sha1 is not None and entry.get("image_sha1") != image_sha1:
            return None
        return entry

    def save(self, image_id: str, entry: dict) -> None:
        """Write an entry (tensors and plain values) atomically."""
        atomic_torch_save(entry, self.path(image_id))


class DatasetCache:
    """The entries of one method/settings for a dataset's images, each kept with the image's *source*.

    An image of a composite dataset (train = voc07_train + coco128 + fruit) is cached under its part's name and its
    id there (``ImageRecord.source`` / ``source_id``), so every composite holding that part -- train, train_small,
    breadth_train -- shares its entries; an image of a dataset read alone is cached under the dataset's name.
    Entries written before this layout (under the composite's name) are found there and linked into place.

    ``make(name)`` builds the cache of one source (default: a :class:`ProposalCache` of ``method``/``settings``).
    """

    def __init__(self, root: str | Path, dataset, method: str = "", settings: dict | None = None, *,
                 make: Callable[[str], ProposalCache] | None = None):
        self.name = dataset.name
        self._make = make or (lambda ns: ProposalCache(root, ns, method, settings or {}))
        self._caches: dict[str, ProposalCache] = {}

    def slot(self, record) -> tuple[str, str]:
        """``(source name, image id there)`` of a record."""
        return (record.source or self.name, record.source_id or record.image_id)

    def cache(self, name: str) -> ProposalCache:
        if name not in self._caches:
            self._caches[name] = self._make(name)
        return self._caches[name]

    def prepare(self, record) -> ProposalCache:
        c = self.cache(self.slot(record)[0])
        c.prepare()
        return c

    def load(self, record, image_sha1: str | None = None) -> dict | None:
        ns, local = self.slot(record)
        entry = self.cache(ns).load(local, image_sha1)
        if entry is None and record.source:
            legacy = self.cache(self.name)
            old = legacy.path(record.image_id)
            if old.exists() and legacy.dir != self.cache(ns).dir:
                entry = legacy.load(record.image_id, image_sha1)
                if entry is not None:
                    self._adopt(old, ns, local)
        return entry

    def load_slot(self, slot: tuple[str, str], image_sha1: str | None = None) -> dict | None:
        return self.cache(slot[0]).load(slot[1], image_sha1)

    def save(self, record, entry: dict) -> None:
        ns, local = self.slot(record)
        c = self.cache(ns)
        c.prepare()
        c.save(local, entry)

    def _adopt(self, old: Path, ns: str, local: str) -> None:
        c = self.cache(ns)
        c.prepare()
        new = c.path(local)
        tmp = c.dir / f".tmp-link-{os.getpid()}-{new.name}"
        try:  # a link under a temporary name, then renamed over: replaces a stale or damaged entry
            tmp.unlink(missing_ok=True)
            os.link(old, tmp)
            os.replace(tmp, new)
        except OSError:  # another filesystem: a copy, atomically
            tmp.unlink(missing_ok=True)
            atomic_write(new, old.read_bytes())
