#!/usr/bin/env python
"""Run the detector on a split and score it with the ILSVRC DET protocol (or VOC / pycocotools AP50), or score a
results file.

    python tools/eval_map.py --split val                               # the embedded default detector
    python tools/eval_map.py -m --split val proposals=rcnn,paper ensemble.size=1,6
    python tools/eval_map.py --split val detections=results.json
    python tools/eval_map.py split=val_small detections=dets.txt eval.protocol=voc
    python tools/eval_map.py dataset=voc dataset.root=/data/VOC2007 detections=dets.json
    python tools/eval_map.py -m split=val_small detections=dets.json eval.protocol=ilsvrc,voc,coco

Prints the per-class table and mAP, and the error breakdown (top false positives by type, misses by size:
``detection.evaluation.errors``; ``eval.errors=false`` skips it); writes metrics.json, pr_curves.png, errors.png (and, when it ran the detector,
detections.json in COCO results format) to the Hydra run folder.  Proposals come from the cache, extracted first
where missing.
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
    dataset = instantiate(cfg.dataset, _convert_="all")
    print(dataset.summary())
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"dataset": dataset.name}
    if cfg.detections is None:
        dets, dataset, extra = run_detector(cfg, dataset, out)
    else:
        dets, report = read_detections(Path(cfg.detections), dataset)
        print(f"detections: {len(dets)} read from {cfg.detections}")
        if report.counts:
            print(report.summary())
        extra["detections"] = str(cfg.detections)
    protocol = cfg.eval.protocol.value if hasattr(cfg.eval.protocol, "value") else str(cfg.eval.protocol)
    metrics = evaluate(dets, dataset, protocol=protocol)
    print(format_table(metrics, title=f"{dataset.name}:"))
    written = [out / "metrics.json", out / "pr_curves.png"]
    if cfg.eval.errors:
        from detection.evaluation.errors import analyze_errors, format_errors, plot_errors
        from detection.labels import det200

        errors = analyze_errors(dets, dataset)
        print(format_errors(errors, space=det200(), max_classes=cfg.eval.pr_classes))
        extra["errors"] = errors.to_dict(det200())
        plot_errors(errors, out / "errors.png", space=det200(), title=f"{dataset.name}: mAP {100 * metrics.map:.2f}%")
        written.append(out / "errors.png")
    save_metrics(metrics, out / "metrics.json", extra=extra)
    plot_pr(metrics, out / "pr_curves.png", max_classes=cfg.eval.pr_classes)
    print("wrote " + ", ".join(str(w) for w in written))
    return metrics.map


def run_detector(cfg: DictConfig, dataset, out: Path):
    """Proposals (cached, extracted where missing) -> detector over ``dataset``; writes detections.json.

    Returns (detections, the dataset of the images that were scored, extra fields for metrics.json).
    """
    import time

    import torch

    from detection.data.records import DetectionDataset
    from detection.detector import detect_dataset
    from detection.evaluation import write_coco_results

    t0 = time.perf_counter()
    try:
        detector = hs.build_detector(cfg)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for method, st in detector.proposals.extract(dataset, workers=cfg.workers).items():
        print(st.summary(f"{method} on {dataset.name}"))
    loaded = detector.proposals.load(dataset, skip_missing=True)
    t1 = time.perf_counter()
    dets, stats = detect_dataset(detector, dataset, [p["boxes"] if p is not None else None for p in loaded])
    t2 = time.perf_counter()
    if stats["skipped"]:
        # an image that could not be read is out of the evaluation, not silently counted as all-missed
        keep = stats["positions"]
        print(f"{len(stats['skipped'])} unreadable images are left out of the evaluation")
        remap = {old: new for new, old in enumerate(keep)}
        dets.image = torch.tensor([remap[i] for i in dets.image.tolist()], dtype=torch.int64)
        dataset = DetectionDataset(dataset.name, [dataset.records[i] for i in keep], dataset.report)
    write_coco_results(dets, dataset, out / "detections.json")
    n = max(stats["images"], 1)
    extra = {"dataset": dataset.name, "detections": str(out / "detections.json"),
             "proposals_per_image": stats["proposals_per_image"],
             "ensemble_members": cfg.ensemble.size or detector.classifier.cfg.members,
             "seconds_per_image": (t2 - t1) / n, "proposal_seconds": t1 - t0,
             "classify_seconds_per_image": stats["seconds"]["classify"] / n}
    print(f"detector: {len(dets)} detections on {stats['images']} images, {stats['proposals_per_image']:.0f} "
          f"proposals/image, {extra['seconds_per_image']:.2f} s/image (proposals cached: {t1 - t0:.0f} s)")
    return dets, dataset, extra


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
