#!/usr/bin/env python
"""Is MultiBox better on its own training images?  Coverage (recall at IoU >= 0.5) of MultiBox's top 200 (after its
NMS, as merged), of selective search k x 2, and of the merged ``paper`` set, on the cached train and val images.

MultiBox was trained on the train split, so its boxes there may be better than on val: a classifier trained on
train proposals would then see better MultiBox boxes than it meets at test time.  Reads the proposal caches only.

    python tools/experiments/multibox_skew.py            # every cached image of train and val
    python tools/experiments/multibox_skew.py val        # one split
"""
from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detection import config as hs

hs.register_schemas()


def main() -> None:
    from detection.proposals.cache import DatasetCache, file_sha1
    from detection.proposals.coverage import best_iou
    from detection.proposals.merge import merge_proposals
    from detection.proposals.pipeline import ProposalStage

    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    print(f"{'images of':<14}{'images':>8}{'objects':>9}{'MB top-200':>12}{'SS k x 2':>10}{'paper':>9}"
          f"{'MB boxes IoU>=0.5 share':>26}")
    for split in sys.argv[1:] or ("train", "val"):
        with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
            cfg = compose("eval_map", overrides=[f"dataset={split}", "proposals=paper"])
        hs.resolve_data_root(cfg)
        ds = instantiate(cfg.dataset, _convert_="all")
        ps = hs.proposal_settings(cfg.proposals)
        stage = ProposalStage(ps, cache_root=hs.resolve_cache_dir(cfg) / "proposals")
        ss_c = DatasetCache(stage.cache_root, ds, stage.ss.method, stage.ss.settings)
        mb_c = DatasetCache(stage.cache_root, ds, stage.mb.method, stage.mb.settings)
        groups: dict[str, dict] = {}
        for r in ds.records:
            if len(r.boxes) == 0:
                continue
            # one row per source folder of the split (voc07_train, coco128, fruit; val): like compared with like
            g = groups.setdefault(r.source or ds.name, {"hits": {"mb": 0, "ss": 0, "paper": 0}, "n_obj": 0,
                                                              "n_img": 0, "mb_good": 0, "mb_all": 0})
            hits = g["hits"]
            sha = file_sha1(r.path)
            ss, mb = ss_c.load(r, sha), mb_c.load(r, sha)
            if ss is None or mb is None:
                continue
            mb_only, _ = merge_proposals(ss_boxes=torch.zeros(0, 4), mb_boxes=mb["boxes"], mb_scores=mb["scores"],
                                         top_k=ps.multibox.top_k, mb_nms_iou=ps.multibox.nms_iou,
                                         dedup_iou=ps.dedup_iou, min_size=ps.min_size)
            ss_only, _ = merge_proposals(ss_boxes=ss["boxes"], top_k=0, dedup_iou=ps.dedup_iou, min_size=ps.min_size)
            paper, _ = merge_proposals(ss_boxes=ss["boxes"], mb_boxes=mb["boxes"], mb_scores=mb["scores"],
                                       top_k=ps.multibox.top_k, mb_nms_iou=ps.multibox.nms_iou,
                                       dedup_iou=ps.dedup_iou, min_size=ps.min_size)
            for key, boxes in (("mb", mb_only), ("ss", ss_only), ("paper", paper)):
                hits[key] += int((best_iou(boxes, r.boxes)[0] >= 0.5).sum())
            if len(mb_only):
                from torchvision.ops import box_iou

                g["mb_good"] += int((box_iou(mb_only, r.boxes).max(1).values >= 0.5).sum())
                g["mb_all"] += len(mb_only)
            g["n_obj"] += len(r.boxes)
            g["n_img"] += 1
        for name, g in groups.items():
            pct = {k: 100 * v / max(1, g["n_obj"]) for k, v in g["hits"].items()}
            print(f"{name:<14}{g['n_img']:>8}{g['n_obj']:>9}{pct['mb']:>11.2f}%{pct['ss']:>9.2f}%"
                  f"{pct['paper']:>8.2f}%{100 * g['mb_good'] / max(1, g['mb_all']):>25.2f}%", flush=True)


if __name__ == "__main__":
    main()
