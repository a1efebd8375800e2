#!/usr/bin/env python
"""Train the MultiBox proposal network on a split (frozen trunk; features computed once, cached).

    python tools/train_multibox.py                       # train split, 12 epochs, checkpoints/multibox/train
    python tools/train_multibox.py split=train_small train.epochs=2
    python tools/train_multibox.py install=true          # also install as the package's embedded default
    python tools/train_multibox.py model.trunk=own model.input_size=448   # the network with its own backbone
    python tools/train_multibox.py dev_every=10 val_dataset=null   # recall on a dev split carved from train

Kill it and run the same command again: it resumes from the last finished epoch (and the cached features).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detection import config as hs

hs.register_schemas()


@hydra.main(config_path=hs.CONFIG_DIR, config_name="train_multibox", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from detection.models import build_backbone
    from detection.proposals.multibox.model import MultiBox, MultiBoxConfig, SharedMultiBox
    from detection.proposals.multibox.train import (TrainSettings, compute_features, compute_region_features, train_multibox,
                                          train_priors)
    from detection.proposals.multibox import default_model_path

    hs.resolve_data_root(cfg)
    cache = hs.resolve_cache_dir(cfg) / "multibox_features"
    t0 = time.perf_counter()
    train_ds = instantiate(cfg.dataset, _convert_="all")
    val_ds = instantiate(cfg.val_dataset, _convert_="all") if cfg.val_dataset is not None else None
    print(train_ds.summary())
    partial = sum(not r.exhaustive for r in train_ds.records)
    if partial:  # MultiBox learns "no object here" from every unmatched prior: only exhaustive photos can teach it
        train_ds = train_ds.exhaustive_only()
        print(f"{partial} photos not exhaustively annotated left out (their unboxed objects would be negatives)")
    mcfg = MultiBoxConfig(**OmegaConf.to_container(cfg.model))
    tset = TrainSettings(**OmegaConf.to_container(cfg.train))
    torch.manual_seed(tset.seed)
    if mcfg.trunk == "region":  # the head reads the region classifiers' trunk: their model gives the maps
        from detection.models.region import load_ensemble

        ensemble = load_ensemble(cfg.region_model).fuse_for_inference()
        if ensemble.cfg.backbone != mcfg.backbone:
            raise ValueError(f"model.backbone={mcfg.backbone} but the region model's trunk is "
                             f"{ensemble.cfg.backbone}")
        model = SharedMultiBox(cfg=mcfg, priors=torch.zeros(mcfg.num_priors, 4), trunk_id=ensemble.trunk_id)
        print(f"trunk: the region classifiers' ({cfg.region_model or 'embedded default'}, {ensemble.trunk_id})")

        def features(ds):
            return compute_region_features(ds, ensemble, cache_dir=cache, fine=mcfg.fine_level)
    else:
        model = MultiBox(backbone=build_backbone(mcfg.backbone), cfg=mcfg, priors=torch.zeros(mcfg.num_priors, 4))

        def features(ds):
            return compute_features(ds, model, cache_dir=cache)
    feats = features(train_ds)
    val = features(val_ds) if val_ds is not None else None
    if cfg.dev_every:  # a dev split carved from train: every dev_every-th voc07 photo (by position), not trained on
        from detection.proposals.multibox.train import split_features

        dev_ids = {r.image_id for i, r in enumerate(train_ds.records)
                   if i % cfg.dev_every == 0 and "voc07" in str(r.path)}
        feats, val = split_features(feats, dev_ids)
        print(f"dev split carved from {train_ds.name}: {len(val.ids)} photos (recall reported per epoch), "
              f"{len(feats.ids)} train")
    t_feat = time.perf_counter() - t0
    model.priors.copy_(train_priors(feats, k=mcfg.num_priors, seed=tset.seed))
    print(f"features: {len(feats.ids)} train images in {t_feat:.0f} s; {mcfg.num_priors} k-means priors")
    record = train_multibox(model, feats, settings=tset, out_dir=cfg.out_dir, val=val)
    record.update({"dataset": train_ds.name, "dev_every": cfg.dev_every,
                   "val_dataset": val_ds.name if val_ds else (f"dev (every {cfg.dev_every}th voc07 photo of "
                                                               f"{train_ds.name})" if cfg.dev_every else None),
                   "feature_seconds": t_feat, "total_seconds": time.perf_counter() - t0,
                   "command": " ".join(sys.argv)})
    from detection.proposals.multibox.model import save_multibox

    out = Path(cfg.out_dir) / "multibox.pt"
    save_multibox(model, out, record=record)
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if cfg.install:
        dest = default_model_path()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, dest)
        print(f"installed as the embedded default: {dest}")


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
