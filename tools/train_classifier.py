#!/usr/bin/env python
"""Train the region-classifier ensemble (R-CNN fine-tuning) on a split's cached proposals.

    python tools/train_classifier.py                                   # embedded default: lite0, roi mode, 6 members
    python tools/train_classifier.py split=train_small train.epochs=2 model.members=2
    python tools/train_classifier.py install=true                      # also install as the embedded default
    torchrun --nproc_per_node=2 tools/train_classifier.py workers=1    # DDP over 2 processes (gloo on CPU)
    python tools/train_classifier.py model=paper backbone_weights=imagenet   # six GoogLeNets on warped crops, whole

    python tools/train_classifier.py model.trainable_stages=1 extract=false   # only the images already cached
    python tools/train_classifier.py dataset=breadth_tune init_model=default  # continue the embedded model

Kill it and run the same command again: proposals, trunk maps and finished epochs are reused.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from detection import config as hs

hs.register_schemas()


@hydra.main(config_path=hs.CONFIG_DIR, config_name="train_classifier", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from detection.training.recipe import train_classifier

    train_classifier(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
