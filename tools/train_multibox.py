#!/usr/bin/env python
"""Train the MultiBox proposal network on a split (frozen trunk; features computed once, cached).

    python tools/train_multibox.py                       # the shipped recipe: train split, 6 epochs, region trunk
    python tools/train_multibox.py split=train_small train.epochs=2
    python tools/train_multibox.py install=true          # also install as the package's embedded default
    python tools/train_multibox.py model.trunk=own model.input_size=448   # the network with its own backbone
    python tools/train_multibox.py dev_every=10 val_dataset=null   # recall on a dev split carved from train

Kill it and run the same command again: it resumes from the last finished epoch (and the cached features).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from detection import config as hs

hs.register_schemas()


@hydra.main(config_path=hs.CONFIG_DIR, config_name="train_multibox", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from detection.training.recipe import train_multibox_head

    train_multibox_head(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
