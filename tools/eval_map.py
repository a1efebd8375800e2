#!/usr/bin/env python
"""Run the detector on a split and score it with the ILSVRC DET protocol (or VOC / pycocotools AP50), or score a
results file.

    python tools/eval_map.py --split val                               # the embedded default detector
    torchrun --nproc_per_node=2 tools/eval_map.py --split val          # each rank detects its shards; rank 0 scores
    python tools/eval_map.py -m --split val proposals=rcnn,paper detector.members=1,6
    python tools/eval_map.py --split val detections=results.json
    python tools/eval_map.py split=val_small detections=dets.txt eval.protocol=voc
    python tools/eval_map.py dataset=voc dataset.root=/data/VOC2007 detections=dets.json
    python tools/eval_map.py -m split=val_small detections=dets.json eval.protocol=ilsvrc,voc,coco

Prints the per-class table and mAP, and the error breakdown (top false positives by type, misses by size:
``detection.evaluation.errors``; ``eval.errors=false`` skips it); writes metrics.json, pr_curves.png, errors.png (and, when it ran the detector,
detections.json in COCO results format) to the Hydra run folder.  Proposals come from the cache, extracted first
where missing.  The detector runs in shards of ``shard_size`` images, each saved under ``<cache_dir>/detections/`` as it
finishes: a killed run, started again with the same settings, resumes where it stopped (``resume=false`` recomputes).
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from detection import config as hs

hs.register_schemas()


@hydra.main(config_path=hs.CONFIG_DIR, config_name="eval_map", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from detection.distributed import finish

    rank, world = hs.distributed_context(cfg.detector.device) if cfg.detections is None else (0, 1)
    try:
        if rank != 0:
            return evaluate_split(cfg, rank, world)
        with hs.log_to_run_folder():  # the console's messages also in <run folder>/eval_map.log
            return evaluate_split(cfg, rank, world)
    finally:
        finish(world)


def evaluate_split(cfg: DictConfig, rank: int, world: int) -> float | None:
    from detection.evaluation import evaluate, format_table, plot_pr, read_detections, save_metrics

    log = print if rank == 0 else (lambda *_a, **_k: None)
    root = hs.resolve_data_root(cfg)
    if "${data_root}" in str(cfg.dataset) and not root.is_dir():
        sys.exit(f"error: data root {root} not found: set DET_DATA_ROOT or data_root=PATH")
    dataset = instantiate(cfg.dataset, _convert_="all")
    if cfg.limit is not None:
        if cfg.limit < 1:
            sys.exit(f"error: limit={cfg.limit}: give a positive number of images (or null for all)")
        # the first N images, with their blacklist entries and image numbers
        dataset = dataset.subset(range(min(cfg.limit, len(dataset))))
    log(dataset.summary() + (f"\nlimit={cfg.limit}: the first {len(dataset)} images only" if cfg.limit else ""))
    out = Path(HydraConfig.get().runtime.output_dir)
    # what the dataset's readers skipped or repaired, by kind (the messages are in the log)
    extra = {"dataset": dataset.name, "dataset_report": dict(dataset.report.counts)}
    if cfg.detections is None:
        dets, dataset, more = run_detector(cfg, dataset, out, rank, world, log)
        extra.update(more)
        if rank != 0:
            return None
    else:
        dets, report = read_detections(Path(cfg.detections), dataset)
        print(f"detections: {len(dets)} read from {cfg.detections}")
        if report.counts:
            print(report.summary())
        extra["detections"] = str(cfg.detections)
    out.mkdir(parents=True, exist_ok=True)
    protocol = cfg.eval.protocol.value if hasattr(cfg.eval.protocol, "value") else str(cfg.eval.protocol)
    class_boxes = extra.pop("class_boxes", None)  # the model's training boxes per class (loc groups its figures)
    if protocol == "loc":
        return score_loc(dets, dataset, out, extra, class_boxes)
    metrics = evaluate(dets, dataset, protocol=protocol)
    print(format_table(metrics, title=f"{dataset.name}:"))
    written = [out / "metrics.json", out / "pr_curves.png"]
    errors = None
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
    if cfg.eval.report:
        from detection.evaluation.html import write_report

        written.append(write_report(out, metrics=metrics, dataset=dataset, dets=dets, errors=errors,
                                    info=report_info(cfg, extra), gallery_classes=cfg.eval.report_classes))
    print("wrote " + ", ".join(str(w) for w in written))
    return metrics.map


def score_loc(dets, dataset, out: Path, extra: dict, class_boxes: dict | None) -> float:
    """``eval.protocol=loc``: top-k localisation of photos labelled one class at a time (Tiny ImageNet, ImageNet
    LOC); the headline is split by whether the model had training boxes of the class.  Writes metrics.json; the AP
    plots, error breakdown and report page belong to exhaustively annotated photos and are not made."""
    import json

    from detection.evaluation import GroundTruth
    from detection.files import atomic_write_text
    from detection.evaluation.loc import evaluate_loc, format_loc, training_groups

    m = evaluate_loc(dets, GroundTruth.from_dataset(dataset))
    groups = training_groups(class_boxes)
    print(format_loc(m, title=f"{dataset.name}:", groups=groups))
    atomic_write_text(out / "metrics.json", json.dumps({**m.to_dict(groups), **extra}, indent=2))
    print(f"wrote {out / 'metrics.json'} (protocol loc: no AP plots, error breakdown or report page)")
    return m.localised[max(m.ks)]


def report_info(cfg: DictConfig, extra: dict) -> dict:
    """The headline facts of report.html: what ran, on what, how long."""
    from detection.models.region import default_region_model_path

    info = {"dataset": extra.get("dataset"), "protocol": str(getattr(cfg.eval.protocol, "value", cfg.eval.protocol))}
    if cfg.detections is not None:
        info["detections"] = str(cfg.detections)
        return info
    p = cfg.proposals
    mb = f" + top {p.multibox.top_k} MultiBox" if p.multibox.top_k else ""
    info.update({"model": cfg.detector.model or f"embedded default ({default_region_model_path().name})",
                 "ensemble members": extra.get("ensemble_members"),
                 "proposals": f"selective search {p.selective_search.mode} k × {p.selective_search.k_scale:g}{mb} "
                              f"({extra.get('proposals_per_image', 0):.0f} / image)",
                 "mirror view (test-time flip)": "on" if cfg.detector.flip else "off",
                 "MultiBox boxes: score weight": f"{cfg.detector.multibox_weight:g}",
                 "ImageNet prior": (f"on (a class of n training boxes trusts the region classifiers n / (n + "
                                    f"{cfg.detector.prior_boxes:g}); area power {cfg.detector.prior_area_power:g})"
                                    if cfg.detector.imagenet_prior else "off"),
                 "image pyramid (shorter sides)": (", ".join(f"{v} px" for v in cfg.detector.image_sizes)
                                                   if cfg.detector.image_sizes else "off (the model's own scale)"),
                 "NMS IoU": cfg.detector.nms_iou, "ranks": extra.get("ranks"),
                 "detector time": f"{extra.get('seconds_per_image', 0):.2f} s / image (proposals cached)",
                 "detections file": extra.get("detections"), "command": " ".join(sys.argv)})
    return info


def run_detector(cfg: DictConfig, dataset, out: Path, rank: int, world: int, log):
    """Proposals (cached; each rank extracts its share of the missing ones) -> the detector over this rank's shards
    (each saved as it finishes, so a killed run resumes) -> gathered; rank 0 writes detections.json.

    Returns (detections, the dataset of the images that were scored, extra fields for metrics.json).
    """
    import time

    from detection.distributed import barrier
    from detection.evaluation import write_coco_results
    from detection.sharded import detect_sharded, restrict_to_scored

    t0 = time.perf_counter()
    try:
        detector = hs.build_detector(cfg)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for method, st in detector.proposals.extract(dataset, workers=cfg.workers, rank=rank, world_size=world,
                                                 progress=rank == 0).items():
        log(st.summary(f"{method} on {dataset.name}" + (f" (rank 0 of {world})" if world > 1 else "")))
    barrier(world)
    t1 = time.perf_counter()
    dets, stats = detect_sharded(detector, dataset, cache_dir=hs.resolve_cache_dir(cfg), shard_size=cfg.shard_size,
                                 rank=rank, world_size=world, resume=cfg.resume, progress=rank == 0, log=log)
    t2 = time.perf_counter()
    if rank != 0:
        return None, dataset, {}
    sh = stats["shards"]
    if sh["resumed"]:
        log(f"detect: {sh['resumed']} of {sh['total']} shards were already done (resumed from {stats['dir']})")
    if stats["skipped"]:
        log(f"{len(stats['skipped'])} images without a result (unreadable or no proposals) are left out of the "
            f"evaluation (listed in metrics.json under skipped_images)")
        for msg in stats["skipped"]:
            log(f"  skipped {msg}")
    dets, dataset = restrict_to_scored(dets, dataset, stats["positions"])
    out.mkdir(parents=True, exist_ok=True)
    write_coco_results(dets, dataset, out / "detections.json")
    n = max(stats["images"], 1)
    extra = {"dataset": dataset.name, "detections": str(out / "detections.json"),
             "proposals_per_image": stats["proposals_per_image"],
             "ensemble_members": cfg.detector.members or detector.classifier.cfg.members, "ranks": world,
             "seconds_per_image": (t2 - t1) / n, "proposal_seconds": t1 - t0,
             "classify_seconds_per_image": stats["seconds"].get("classify", 0.0) / n,
             "shards": sh, "class_boxes": detector.classifier.class_boxes, "skipped_images": list(stats["skipped"])}
    resumed = "" if sh["resumed"] == 0 else ", all resumed" if sh["computed"] == 0 else ", part resumed"
    log(f"detector: {len(dets)} detections on {stats['images']} images, {stats['proposals_per_image']:.0f} "
        f"proposals/image, {t2 - t1:.1f} s wall on {world} rank{'s' if world > 1 else ''} "
        f"({(t2 - t1) / n:.2f} s/image{resumed}; proposals: "
        f"{t1 - t0:.0f} s)")
    return dets, dataset, extra


def check_names(argv: list[str]) -> None:
    """Stop with the right name for a setting given under another tool's or an old name."""
    for a in argv:
        key = a.lstrip("+~").split("=", 1)[0]
        if key == "model":
            sys.exit(f"error: {a!r}: the region-classifier file is detector.model=PATH here (model= is "
                     f"train_classifier.py's architecture preset)")
        if key.startswith("ensemble."):
            new = {"ensemble.size": "detector.members", "ensemble.model": "detector.model",
                   "ensemble.device": "detector.device"}.get(key, "detector.*")
            sys.exit(f"error: {a!r}: the ensemble settings are {new}= now (python tools/eval_map.py --help)")


if __name__ == "__main__":
    check_names(sys.argv[1:])
    sys.argv = [sys.argv[0]] + hs.rewrite_argv(sys.argv[1:])
    main()
