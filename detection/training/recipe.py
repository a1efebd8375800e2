"""The training runs from a tool config: what ``tools/train_classifier.py`` and ``tools/train_multibox.py`` run.

Proposals (cached; each rank extracts its shard) -> the ensemble and its trunk maps -> training (roi mode:
:mod:`detection.training.finetune`; warp mode: :mod:`detection.training.warp`) -> validation -> the saved model and
its record.  Kill it and run the same command again: proposals, trunk maps and finished epochs are reused.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detection import config as hs
from detection.files import atomic_write, atomic_write_text

__all__ = ["train_classifier", "train_multibox_head", "warm_start", "lineage_class_boxes", "validate", "install"]


def install(trained: Path, dest: Path, *, log=print) -> None:
    """Copy a trained model over the package's embedded default (atomically: a detector loading it meanwhile reads
    the old file or the new one, never half of one)."""
    atomic_write(dest, trained.read_bytes())
    log(f"installed as the embedded default: {dest}")


def train_classifier(cfg: DictConfig) -> None:
    """``tools/train_classifier.py``'s job from its composed config (:class:`~detection.config.TrainClassifierConfig`):
    the split's proposals (cached, extracted where missing), the ensemble trained (roi mode: the fine-tuned stages and
    heads, :func:`~detection.training.finetune.train_finetuned`; warp mode: whole members), validated on
    ``val_dataset``, saved to ``out_dir/region.pt`` with its record (and installed as the embedded default with
    ``install``).  Under torchrun each rank takes its share; a restart resumes."""
    from detection.data.records import DetectionDataset
    from detection.models.backbones import build_backbone
    from detection.models.region import (RegionConfig, RegionEnsemble, default_region_model_path,
                                         load_stages_state_dict, save_ensemble, split_stem, stages_state_dict)
    from detection.training.roi import MemberSettings
    from detection.proposals.pipeline import ProposalStage

    hs.resolve_data_root(cfg)
    cache = hs.resolve_cache_dir(cfg)
    rank, world = hs.distributed_context()
    log = print if rank == 0 else (lambda *_a, **_k: None)
    t0 = time.perf_counter()
    dataset: DetectionDataset = instantiate(cfg.dataset, _convert_="all")
    log(dataset.summary())
    try:
        rcfg = RegionConfig(**OmegaConf.to_container(cfg.model))
    except ValueError as e:  # a bad model.* setting: say which, without a traceback
        sys.exit(f"error: {e}")
    mset = MemberSettings(**OmegaConf.to_container(cfg.train))
    psettings = hs.proposal_settings(cfg.proposals)
    warm, warm_info = warm_start(cfg, rcfg)  # checked before any proposal or trunk map is computed

    # 1. proposals (cached; each rank extracts its shard, then everyone reads the whole cache).  Photos that are not
    # exhaustively annotated give positives only: with positives_only_boxes=jitter they get boxes around their
    # object instead of proposals (no selective search / MultiBox on thousands of single-object photos)
    stage = ProposalStage(psettings, cache_root=cache / "proposals")
    jitter = cfg.positives_only_boxes == "jitter"
    if cfg.positives_only_boxes not in ("jitter", "proposals"):
        sys.exit(f"error: positives_only_boxes must be 'jitter' or 'proposals', got {cfg.positives_only_boxes!r}")
    with_props = [i for i, r in enumerate(dataset.records) if r.exhaustive or not jitter]
    sub = dataset.subset(with_props)
    if cfg.extract:
        for method, st in stage.extract(sub, workers=cfg.workers, rank=rank, world_size=world,
                                        progress=rank == 0).items():
            log(st.summary(f"{method} on {dataset.name}" + (f" (rank 0 of {world})" if world > 1 else "")))
    hs.barrier(world)
    loaded = stage.load(sub, skip_missing=True)
    proposals: list = [None] * len(dataset)
    for i, p in zip(with_props, loaded):
        proposals[i] = p["boxes"] if p is not None else None
    if jitter:
        from detection.training.sampler import jittered_positives

        n_jit = 0
        for i, r in enumerate(dataset.records):
            if not r.exhaustive:
                proposals[i] = jittered_positives(r.boxes, width=r.width, height=r.height, n=32, seed=r.image_id)
                n_jit += 1
        if n_jit:
            log(f"{n_jit} photos not exhaustively annotated: positives only, from 32 boxes jittered around each object")
    if not cfg.extract:
        log(f"extract=false: {sum(p is not None for p in loaded)} of {len(sub)} images have cached proposals; "
            f"the others are left out")
    t_prop = time.perf_counter() - t0

    # 2. the ensemble and its trunk features
    if not rcfg.shared_trunk or rcfg.mode != "roi":
        from detection.training.warp import train_warp_members

        if warm is not None:
            sys.exit("error: init_heads / init_model continue roi-mode ensembles; the warp mode trains whole "
                     "backbones from backbone_weights")

        model, record = train_warp_members(rcfg, mset, dataset, proposals, out_dir=cfg.out_dir,
                                           only=cfg.only_members, backbone_weights=cfg.backbone_weights,
                                           rank=rank, world_size=world, progress=rank == 0, log=log)
    else:
        # roi mode: the last model.trainable_stages stages of the shared trunk train with the members' heads on
        # image-centric mini-batches of the proposals the detector sees (0: a frozen trunk, heads only)
        from detection.training.finetune import train_finetuned

        if cfg.only_members is not None:
            log("note: roi-mode members train together (they share the fine-tuned stages): only_members is ignored")
        model = RegionEnsemble(cfg=rcfg, backbones=[build_backbone(rcfg.backbone, weights=cfg.backbone_weights)]
                               ).eval()
        init = None
        if warm is not None:
            init = warm.heads
            if cfg.init_model:  # the stages to fine-tune start from the source's (fine-tuned) ones
                names = split_stem(warm.backbones[0], rcfg.trainable_stages)[2]
                load_stages_state_dict(model.backbones[0], stages_state_dict(warm.backbones[0], names))
        record = train_finetuned(model, dataset, proposals, settings=mset, cache_root=cache,
                                 out_dir=cfg.out_dir, backbone_weights=cfg.backbone_weights, rank=rank,
                                 world_size=world, progress=rank == 0, log=log, init_heads=init,
                                 identity={"dataset": dataset.name, **warm_info})
        record.update(warm_info)
        model.eval()
    record.update({"dataset": dataset.name, "images": len(dataset), "proposal_seconds": t_prop,
                   "class_boxes": lineage_class_boxes(dataset, warm),
                   "proposals": OmegaConf.to_container(cfg.proposals), "total_seconds": time.perf_counter() - t0,
                   "command": " ".join(sys.argv), "world_size": world})
    if rank == 0 and cfg.val_dataset is not None:
        try:
            record["val"] = validate(cfg, model, stage)
            log(f"validation on {record['val']['dataset']} (training proposals): mAP {100 * record['val']['mAP']:.2f}% "
                f"with {rcfg.members} members, {100 * record['val']['mAP_member0']:.2f}% with member 0 alone")
        except Exception as e:  # the model is trained: a validation problem must not lose it
            log(f"warning: validation failed ({type(e).__name__}: {e}); the model is saved all the same")
    model.record = record
    model.class_boxes = record["class_boxes"]
    if rank == 0:
        out = Path(cfg.out_dir) / "region.pt"
        save_ensemble(model, out, record=record)
        atomic_write_text(Path(cfg.out_dir) / "record.json", json.dumps(record, indent=2, default=str))
        log(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB) in {record['total_seconds']:.0f} s")
        if cfg.install:
            install(out, default_region_model_path(), log=log)
    from detection.distributed import finish

    finish(world)


def lineage_class_boxes(dataset, warm) -> dict:
    """The training boxes per class (``{wnid: [exhaustive, positives only]}``) of the data the model has seen: this
    run's dataset's and, for a model continued from another (``init_heads`` / ``init_model``), the larger of the two
    counts per class.  The ImageNet prior's per-class trust is computed from them."""
    out = {w: list(v) for w, v in ((warm.class_boxes if warm is not None else None) or {}).items()}
    for w, counts in dataset.class_boxes().items():
        out[w] = [max(a, b) for a, b in zip(out.get(w, [0, 0]), counts)]
    return dict(sorted(out.items()))


def grows(source: list, run: list) -> bool:
    """Whether a run's ``context_regions`` add regions after a warm start's own (its heads grow:
    :func:`detection.models.region.grow_heads`)."""
    return len(run) > len(source) and list(run[:len(source)]) == list(source)  # (RegionConfig normalises both)


def warm_start(cfg: DictConfig, rcfg) -> tuple:
    """The ensemble that ``init_heads`` (heads only) or ``init_model`` (heads and fine-tuned stages) names, checked
    against this run's model, and what the record keeps of it (resolved path, SHA-1); ``(None, {...})`` for a fresh
    start."""
    from detection.models.region import default_region_model_path, load_ensemble
    from detection.proposals.cache import file_sha1

    if cfg.init_heads and cfg.init_model:
        sys.exit("error: give init_heads (heads only) or init_model (heads and fine-tuned stages), not both")
    if not (cfg.init_heads or cfg.init_model):
        return None, {"init_heads": None, "init_model": None}
    key, given = ("init_model", cfg.init_model) if cfg.init_model else ("init_heads", cfg.init_heads)
    path = default_region_model_path() if given == "default" else Path(given)
    try:
        src = load_ensemble(path)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {key}={given}: {e}")
    fields = ("mode", "members", "num_classes", "roi_size", "roi_layer", "context_regions", "hidden", "standardize")
    bad = [f"{f} {getattr(src.cfg, f)} vs {getattr(rcfg, f)}" for f in fields
           if getattr(src.cfg, f) != getattr(rcfg, f)
           and not (f == "context_regions" and grows(src.cfg.context_regions, rcfg.context_regions))]
    if bad:
        sys.exit(f"error: {key}={given}: its heads do not fit model ({'; '.join(bad)})")
    if cfg.init_model and (src.cfg.trainable_stages != rcfg.trainable_stages or src.cfg.backbone != rcfg.backbone):
        sys.exit(f"error: init_model={given}: it fine-tuned {src.cfg.trainable_stages} stages of "
                 f"{src.cfg.backbone}, this run {rcfg.trainable_stages} of {rcfg.backbone}")
    info = {"init_heads": None, "init_model": None}
    # the file, not how it was named ('default' or its path): a resume matches on this
    info[key] = {"path": str(path.resolve()), "sha1": file_sha1(path), "backbone_weights": str(cfg.backbone_weights)}
    return src, info


def validate(cfg: DictConfig, model, stage) -> dict:
    """mAP (ILSVRC protocol) of the trained ensemble and of its first member on ``val_dataset``, with the training
    proposal settings (cached, extracted where missing); the region classifiers alone (no ImageNet prior: what this
    training changes)."""
    from detection.detector import Detector, DetectorSettings, detect_dataset
    from detection.evaluation import evaluate
    from detection.sharded import restrict_to_scored

    val = instantiate(cfg.val_dataset, _convert_="all")
    stage.extract(val, workers=cfg.workers, progress=False)
    loaded = stage.load(val, skip_missing=True)  # boxes with their merge tags: the detector's MultiBox weighting too
    out = {"dataset": val.name}
    # a model trained on an image pyramid (train.image_sizes) is validated with multi-scale testing on the same levels
    sizes = list(cfg.train.image_sizes or [])
    sizes = sizes if len(set(sizes)) > 1 else None
    if sizes:
        out["image_sizes"] = list(sizes)
    for key, members in (("mAP", None), ("mAP_member0", 1)):
        dets, st = detect_dataset(Detector(classifier=model.eval(),
                                           settings=DetectorSettings(members=members, image_sizes=sizes,
                                                                     imagenet_prior=False)),
                                  val, loaded, progress=False)
        dets, val_eval = restrict_to_scored(dets, val, st["positions"])
        out[key] = evaluate(dets, val_eval).map
        out["images"] = len(val_eval)
    return out


def train_multibox_head(cfg: DictConfig) -> None:
    """``tools/train_multibox.py``'s job from its composed config (:class:`~detection.config.TrainMultiBoxConfig`):
    the split's trunk features (cached; the region classifiers' maps for ``model.trunk=region``), k-means priors, the
    head trained with per-epoch checkpoints and recall on the dev carve, saved to ``out_dir/multibox.pt`` (and
    installed as the embedded default with ``install``).  A restart resumes."""
    from detection.models import build_backbone
    from detection.proposals.multibox.model import MultiBox, MultiBoxConfig, SharedMultiBox
    from detection.proposals.multibox.train import (TrainSettings, compute_features, compute_region_features,
                                                    train_multibox, train_priors)
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
        mcfg = replace(mcfg, backbone=ensemble.cfg.backbone)  # the maps are the region model's: so is the backbone
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
        install(out, default_model_path(), log=print)
