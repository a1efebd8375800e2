#!/usr/bin/env python
"""Score detections on a split with the ILSVRC DET protocol (or VOC / pycocotools AP50).

    python tools/eval_map.py --split val detections=results.json
    python tools/eval_map.py split=val_small detections=dets.txt eval.protocol=voc
    python tools/eval_map.py dataset=voc dataset.root=/data/VOC2007 detections=dets.json
    python tools/eval_map.py -m split=val_small detections=dets.json eval.protocol=ilsvrc,voc,coco

Prints the per-class table and mAP; writes metrics.json and pr_curves.png to the Hydra run folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

import hydra_support as hs

hs.register_schemas()


@hydra.main(config_path=hs.CONFIG_DIR, config_name="eval_map", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from detection.evaluation import evaluate, format_table, plot_pr, read_detections, save_metrics

    root = hs.resolve_data_root(cfg)
    if "${data_root}" in str(cfg.dataset) and not root.is_dir():
        sys.exit(f"error: data root {root} not found: set DET_DATA_ROOT or data_root=PATH")
    if cfg.detections is None:
        sys.exit("error: no detections to score. Pass detections=PATH (COCO results .json or ILSVRC submission "
                 ".txt). Running the detector itself from eval_map.py comes with the region classifiers "
                 "(issue #4); until then score an existing results file.")
    dataset = instantiate(cfg.dataset, _convert_="all")
    print(dataset.summary())
    dets, report = read_detections(Path(cfg.detections), dataset)
    print(f"detections: {len(dets)} read from {cfg.detections}")
    if report.counts:
        print(report.summary())
    protocol = cfg.eval.protocol.value if hasattr(cfg.eval.protocol, "value") else str(cfg.eval.protocol)
    metrics = evaluate(dets, dataset, protocol=protocol)
    print(format_table(metrics, title=f"{dataset.name}:"))
    out = Path(HydraConfig.get().runtime.output_dir)
    save_metrics(metrics, out / "metrics.json", extra={"dataset": dataset.name, "detections": str(cfg.detections)})
    plot_pr(metrics, out / "pr_curves.png", max_classes=cfg.eval.pr_classes)
    print(f"wrote {out / 'metrics.json'} and {out / 'pr_curves.png'}")
    return metrics.map


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
