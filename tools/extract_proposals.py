#!/usr/bin/env python
"""Extract (and cache) the proposals of a split: selective search and MultiBox, with a progress bar.

    python tools/extract_proposals.py --split val proposals=paper workers=2
    torchrun --nproc_per_node=2 tools/extract_proposals.py --split val workers=1

Cached images are skipped, so a killed run resumes; an unreadable image is reported and skipped.  Under torchrun
each rank takes images rank::world_size and writes them into the shared cache; rank 0 prints the merged summary.
"""
from __future__ import annotations

import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from detection import config as hs

hs.register_schemas()


@hydra.main(config_path=hs.CONFIG_DIR, config_name="extract_proposals", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from detection.proposals.extract import ExtractStats
    from detection.proposals.pipeline import ProposalStage

    hs.resolve_data_root(cfg)
    cache = hs.resolve_cache_dir(cfg) / "proposals"
    rank, world = hs.distributed_context()
    dataset = instantiate(cfg.dataset, _convert_="all")
    if rank == 0:
        print(dataset.summary())
    if cfg.exhaustive_only:
        keep = dataset.exhaustive_only()
        if rank == 0 and len(keep) < len(dataset):
            print(f"exhaustive_only: {len(dataset) - len(keep)} photos not exhaustively annotated left out (training "
                  f"gives them jittered boxes: positives_only_boxes=jitter)")
        dataset = keep
    stage = ProposalStage(hs.proposal_settings(cfg.proposals), cache_root=cache)
    stats = stage.extract(dataset, workers=cfg.workers, rank=rank, world_size=world, chunk_size=cfg.chunk_size,
                          log=print if rank == 0 else None)
    if world > 1:
        from detection.distributed import finish, gather_objects

        gathered = gather_objects(stats, world)
        if rank == 0:
            merged = {}
            for part in gathered:
                for method, st in part.items():
                    merged.setdefault(method, ExtractStats()).merge(st)
            stats = merged
        finish(world)
    if rank == 0:
        for method, st in stats.items():
            print(st.summary(f"{method} on {dataset.name}" + (f" ({world} ranks)" if world > 1 else "")))
        print(f"cache: {cache}")


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
