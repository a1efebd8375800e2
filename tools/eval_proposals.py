#!/usr/bin/env python
"""Proposal coverage on a split: recall of ground truth at IoU 0.5 / 0.7 against the number of proposals.

    python tools/eval_proposals.py --split val                      # proposals=paper
    python tools/eval_proposals.py --split val proposals=rcnn
    python tools/eval_proposals.py -m --split val proposals.selective_search.k_scale=1,2 proposals.multibox.top_k=0,200

Missing proposals are extracted (and cached) first.  Writes coverage.json and coverage.png to the run folder; a
-m sweep ends with one summary table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from detection import config as hs
from detection.files import atomic_write_text

hs.register_schemas()


@hydra.main(config_path=hs.CONFIG_DIR, config_name="eval_proposals", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from detection.proposals.pipeline import ProposalStage
    from detection.proposals.report import format_report, plot_coverage, proposal_report

    hs.resolve_data_root(cfg)
    cache = hs.resolve_cache_dir(cfg) / "proposals"
    dataset = instantiate(cfg.dataset, _convert_="all")
    print(dataset.summary())
    stage = ProposalStage(hs.proposal_settings(cfg.proposals), cache_root=cache)
    for method, st in stage.extract(dataset, workers=cfg.workers).items():
        print(st.summary(f"{method} on {dataset.name}"))
    loaded = stage.load(dataset, skip_missing=True)
    keep = [i for i, p in enumerate(loaded) if p is not None]
    if len(keep) < len(dataset):
        print(f"{len(dataset) - len(keep)} images without proposals (unreadable, reported above) are left out of "
              f"the coverage figures")
        dataset = dataset.subset(keep)
    rep = proposal_report(dataset, [loaded[i] for i in keep])
    ss = cfg.proposals.selective_search
    print(format_report(rep, title=f"{dataset.name}: selective search {ss.mode} k x {ss.k_scale:g} + "
                                   f"top {cfg.proposals.multibox.top_k} MultiBox"))
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "coverage.json", json.dumps({"dataset": dataset.name, **rep}, indent=2))
    plot_coverage(rep, out / "coverage.png")
    from collections import Counter

    from detection.evaluation.html import write_coverage_page

    objects = Counter(int(c) for r in dataset.records for c in r.labels.tolist())
    mb = cfg.proposals.multibox
    page = write_coverage_page(out, rep, title=f"{dataset.name}: proposal coverage", objects=objects, info={
        "dataset": dataset.name,
        "proposals": f"selective search {ss.mode} k × {ss.k_scale:g}" + (f" + top {mb.top_k} MultiBox" if mb.top_k
                                                                          else ""),
        "command": " ".join(sys.argv)})
    print(f"wrote {out / 'coverage.json'}, {out / 'coverage.png'} and {page}")
    return rep["coverage@0.5"]


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
