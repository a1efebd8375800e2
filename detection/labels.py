"""The ILSVRC DET-200 label space and the maps of other datasets' classes into it.

Index 0 is background; the 200 DET classes are indices 1..200 in DET ID order (the devkit's ``det_id``), so a
label index equals the devkit's class id.  The synset list and the VOC-20 / COCO-80 maps ship with the package
(``detection/resources``), so nothing here needs the shared data folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Mapping

__all__ = ["LabelSpace", "det200", "ClassMap", "voc20_map", "coco80_map", "imagenet_map", "class_map_file",
           "BACKGROUND"]

BACKGROUND = 0


@dataclass(frozen=True)
class LabelSpace:
    """An ordered class list with index 0 = background.

    ``wnids[i]`` / ``names[i]`` describe label index ``i``; ``wnids[0] == "background"``.
    """

    wnids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.wnids) != len(self.names):
            raise ValueError("wnids and names differ in length")
        if len(set(self.wnids)) != len(self.wnids):
            raise ValueError("duplicate wnids in label space")

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded (200 for DET)."""
        return len(self.wnids) - 1

    def __len__(self) -> int:
        """Number of outputs a classifier needs: classes + background (201 for DET)."""
        return len(self.wnids)

    @property
    def _by_wnid(self) -> Mapping[str, int]:
        return _index(self.wnids)

    @property
    def _by_name(self) -> Mapping[str, int]:
        return _index(tuple(n.lower() for n in self.names))

    def index_of_wnid(self, wnid: str) -> int:
        try:
            return self._by_wnid[wnid]
        except KeyError:
            raise KeyError(f"unknown wnid {wnid!r}: not one of the {self.num_classes} classes") from None

    def index_of_name(self, name: str) -> int:
        """Case-insensitive look-up of a class name (e.g. ``"domestic cat"``)."""
        try:
            return self._by_name[name.lower()]
        except KeyError:
            raise KeyError(f"unknown class name {name!r}: not one of the {self.num_classes} classes") from None

    def index(self, key: str | int) -> int:
        """Index of a wnid, a class name or an index given as int or digit string."""
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            i = int(key)
            if not 0 <= i < len(self):
                raise KeyError(f"class index {i} out of range 0..{len(self) - 1}")
            return i
        if key in self._by_wnid:
            return self._by_wnid[key]
        return self.index_of_name(key)

    def name(self, index: int) -> str:
        return self.names[index]

    def wnid(self, index: int) -> str:
        return self.wnids[index]


@lru_cache(maxsize=None)
def _index(keys: tuple[str, ...]) -> dict[str, int]:
    return {k: i for i, k in enumerate(keys)}


def _read_resource(name: str) -> str:
    return resources.files("detection.resources").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def det200() -> LabelSpace:
    """The 200 ILSVRC DET classes in DET ID order, index 0 = background."""
    wnids, names = ["background"], ["background"]
    for line in _read_resource("det200_synsets.txt").splitlines():
        if line.strip():
            wnid, name = line.strip().split(" ", 1)
            wnids.append(wnid)
            names.append(name)
    if len(wnids) != 201:
        raise RuntimeError(f"det200_synsets.txt holds {len(wnids) - 1} classes, expected 200")
    return LabelSpace(tuple(wnids), tuple(names))


@dataclass(frozen=True)
class ClassMap:
    """Maps a source dataset's class names (and indices, for COCO/YOLO) into DET-200 label indices.

    ``to_det[name]`` is a DET index, or ``None`` for a known source class with no DET-200 synset (e.g. VOC ``bottle``):
    such objects stay in the photo unlabeled, i.e. background.  A name missing from ``to_det`` is unknown.
    """

    source: str
    to_det: Mapping[str, int | None]
    index_to_name: Mapping[int, str]

    def lookup(self, name: str) -> int | None:
        """DET index for a source class name (``None`` = unmapped); raises ``KeyError`` for an unknown name."""
        key = name.strip().lower()
        if key not in self.to_det:
            raise KeyError(name)
        return self.to_det[key]


def _parse_map(text: str, *, source: str, has_index: bool) -> ClassMap:
    space = det200()
    to_det: dict[str, int | None] = {}
    index_to_name: dict[int, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.rstrip("\n").split("\t")
        if has_index:
            idx, name, wnid = int(cols[0]), cols[1], cols[2]
            index_to_name[idx] = name
        else:
            name, wnid = cols[0], cols[1]
        to_det[name.strip().lower()] = None if wnid.strip() == "-" else space.index_of_wnid(wnid.strip())
    return ClassMap(source=source, to_det=to_det, index_to_name=index_to_name)


@lru_cache(maxsize=None)
def voc20_map() -> ClassMap:
    """VOC-20 class names -> DET-200 (``bottle`` has no unambiguous synset and maps to ``None``)."""
    return _parse_map(_read_resource("voc20_to_det200.tsv"), source="voc20", has_index=False)


@lru_cache(maxsize=None)
def coco80_map() -> ClassMap:
    """COCO-80 (YOLO indices 0..79 and names) -> DET-200; unmapped classes map to ``None``."""
    return _parse_map(_read_resource("coco80_to_det200.tsv"), source="coco80", has_index=True)


@lru_cache(maxsize=None)
def imagenet_map() -> ClassMap:
    """ImageNet synsets (the 1 000 ImageNet-1k wnids, Tiny ImageNet's among them) -> DET-200 by the WordNet 3.0
    hierarchy (:mod:`detection.data.wordnet`): 483 map, into all 200 classes; the others map to ``None``."""
    space = det200()
    to_det: dict[str, int | None] = {}
    for line in _read_resource("imagenet_to_det200.tsv").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        wnid, _words, det, *_ = line.split("\t")
        to_det[wnid.strip().lower()] = None if det.strip() == "-" else space.index_of_wnid(det.strip())
    return ClassMap(source="imagenet (WordNet 3.0)", to_det=to_det, index_to_name={})


def class_map_file(path) -> ClassMap:
    """A class map from a ``.tsv`` file: ``source name <tab> DET-200 wnid`` per line (``-``: no DET class; more
    columns, e.g. the DET name, are ignored; ``#`` starts a comment line).  An unknown wnid is an error naming the
    file."""
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"{path}: class map file not readable ({e})") from None
    try:
        return _parse_map(text, source=str(path), has_index=False)
    except (KeyError, IndexError) as e:
        raise ValueError(f"{path}: not a class map (name <tab> DET-200 wnid per line): {e}") from None


def identity_map() -> ClassMap:
    """DET-200 itself (by wnid and by name): for ILSVRC annotations and data already in DET labels."""
    space = det200()
    to_det: dict[str, int | None] = {}
    for i in range(1, len(space)):
        to_det[space.wnids[i].lower()] = i
        to_det[space.names[i].lower()] = i
    return ClassMap(source="det200", to_det=to_det, index_to_name={i - 1: space.names[i] for i in range(1, len(space))})
