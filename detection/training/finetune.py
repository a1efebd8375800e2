"""Fine-tuning ``roi``-mode region classifiers, Fast R-CNN style: the trunk's last stages train with the heads.

The jobs live apart: the frozen trunk part's maps are cached by :mod:`detection.training.trunk_maps`, the images and
their RoIs are drawn by :mod:`detection.training.sampler` (typed :class:`~detection.training.sampler.TrainItem`), the
network is :class:`~detection.training.network.FineTuneNet`, and this module is the loop.

The trunk is split (:func:`detection.models.region.split_stem`) into a frozen part and the last
``cfg.trainable_stages`` stages.  The frozen part's output is computed once per training image and its mirror image
(fp16, one atomic file per image, keyed by everything that determines it: :class:`TrunkCache`), so an epoch only runs
the trainable stages, RoIAlign and the heads.  ``trainable_stages=0`` is the frozen trunk: the cache then holds the
map the heads pool from, and only the heads train.

Mini-batches are image-centric (Fast R-CNN): ``images_per_batch`` images, each giving every member
``rois_per_batch / images_per_batch`` RoIs at R-CNN's 1:3 positive:background ratio (``fg_fraction``), drawn from the
image's proposals (the detector's own: selective search + MultiBox) with the ground truth added as positives.
Images not exhaustively annotated (``ImageRecord.exhaustive`` False: one object boxed per photo, as in ImageNet's
classification images) give positives only, R-CNN's rule; they are spread evenly through each epoch
(:func:`epoch_order`) and the batch's exhaustive images draw the background they do not, keeping 1:3.  The
six members share the fine-tuned stages and own their heads: each member draws its own RoIs (its seed; odd members
draw background only from near misses, IoU in [0.1, 0.5)), and the shared stages learn from the sum of the members'
losses.  BatchNorm is frozen (statistics and affine parameters: timm's ``freeze_batch_norm_2d``, the
``FrozenBatchNorm2d`` of timm's BatchNorm-with-activation layers).  The fine-tuned stages learn at ``trunk_lr_scale``
times the heads' rate.  For rare classes, ``repeat_thresh`` shows the exhaustively annotated images of rare classes
more than once an epoch (:func:`repeat_factors`, LVIS's repeat-factor sampling) and ``balance_positives`` draws an
image's positives in equal shares per class present (:func:`detection.training.roi.pick_positives`).

Nothing is lost to a kill: the cache is per image and atomic, the checkpoint (stages + heads + optimiser + schedule
+ record) is written after every epoch, and the same call resumes after the last finished epoch, drawing exactly what
an uninterrupted run would.  Under ``torchrun`` each rank takes its images of every mini-batch and DDP averages the
gradients.  Boxes are ``Tensor[N, 4]`` float xyxy, absolute pixels, no +1.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detection.boxes import mirror_boxes
from detection.data.records import DetectionDataset
from detection.models.region import RegionEnsemble, grow_heads, pool_regions, split_stem
from detection.progress import progress as progress_bar
from detection.proposals.cache import DatasetCache, file_sha1
from detection.training.loop import MemberRun
from detection.training.network import FineTuneNet
from detection.training.roi import MemberSettings
from detection.training.sampler import (TrainItem, batch_draws, epoch_order, label_proposals, repeat_factors,
                                        sample_indices)
from detection.training.trunk_maps import (cache_trunk_maps, level_boxes, level_model, pyramid_sizes, trunk_cache,
                                           trunk_settings)

__all__ = ["train_finetuned"]


def _item(model: RegionEnsemble, r, slot, entry: dict, boxes: Tensor, labels: Tensor, max_iou: Tensor, *,
          level: int = 0) -> TrainItem:
    """One training item: an image's labelled proposals at one level (``level``: its trunk-map cache's place in the
    trainer's list, 0 the model's own size) and their RoIs on that level's map and its mirror."""
    scale = entry["scale"]
    return TrainItem(image_id=r.image_id, slot=slot, level=level, exhaustive=r.exhaustive, boxes=boxes,
                     labels=labels, max_iou=max_iou, rois=model.rois(boxes, scale=scale).cpu(),
                     rois_flip=model.rois(mirror_boxes(boxes, entry["width"]), scale=scale).cpu())


def _level_items(model: RegionEnsemble, dataset: DetectionDataset, proposals: list[Tensor | None],
                 positions: list[int], *, sizes: list[int], level: int, settings, cache_root, backbone_weights,
                 rank: int, world_size: int, progress: bool, log, index: int) -> tuple[DatasetCache, list[TrainItem]]:
    """Multi-scale training at ``sizes[level]``: the exhaustively annotated images (of ``settings.multiscale_sources``)
    holding an object that multi-scale testing reads at that level, their trunk maps cached there, each an item whose
    proposals (ground truth included) are those the test-time rule sends to that level.  Returns the level's cache
    and items (``level`` = ``index``: the cache's place in the trainer's list)."""
    size = sizes[level]
    lm = level_model(model, size)
    cache = trunk_cache(Path(cache_root) / "trunk_maps", dataset, trunk_settings(lm, backbone_weights=backbone_weights))
    wanted = settings.multiscale_sources
    if wanted is not None:
        known = {r.source or dataset.name for r in dataset.records}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ValueError(f"train.multiscale_sources: {', '.join(unknown)} not among {dataset.name}'s parts "
                             f"({', '.join(sorted(known))})")
    chosen = []
    for i in positions:
        r = dataset.records[i]
        if not r.exhaustive or (wanted is not None and (r.source or dataset.name) not in wanted) or not len(r.boxes):
            continue
        if (level_boxes(model, r.boxes, width=r.width, height=r.height, sizes=sizes) == level).any():
            chosen.append(i)
    skipped = cache_trunk_maps(dataset, lm, cache, positions=chosen, rank=rank, world_size=world_size,
                               progress=progress)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    items, without = [], 0
    for i in chosen:
        r = dataset.records[i]
        e = cache.load(r, file_sha1(r.path))
        if e is None:
            continue  # undecodable: reported with the image's own level
        boxes, labels, max_iou = label_proposals(proposals[i], r.boxes, r.labels, fg_iou=settings.fg_iou)
        keep = level_boxes(model, boxes, width=r.width, height=r.height, sizes=sizes) == level
        boxes, labels, max_iou = boxes[keep], labels[keep], max_iou[keep]
        if not (labels > 0).any():
            without += 1  # its small object has no proposal at this level's share: nothing to learn it from
            continue
        items.append(_item(model, r, cache.slot(r), e, boxes, labels, max_iou, level=index))
    log(f"multi-scale training: {len(items)} images also train at shorter side {size} on the proposals multi-scale "
        f"testing reads there ({len(chosen)} hold an object read there"
        + (f", of sources {', '.join(wanted)}" if wanted is not None else "")
        + (f"; {without} without a positive there" if without else "")
        + (f"; {len(skipped)} could not be read" if skipped else "") + ")")
    return cache, items


def _feature_stats(net: FineTuneNet, cache: DatasetCache, items: list[TrainItem], *, rois_per_image: int,
                   gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-input mean and std (flip-symmetric, + 1e-3) of the heads' pooled inputs over sampled RoIs of up to 64
    training images, with the initial stages: the heads' input standardisation, fixed for training."""
    feats: list[list[Tensor]] = [[] for _ in net.grids]
    with torch.no_grad():
        for it in items[:64]:
            e = cache.load_slot(it.slot)
            idx = sample_indices(it.labels, it.max_iou, num=rois_per_image, fg_fraction=0.25, generator=gen)
            x = net.stages(e["map"].float()[None])
            for k, part in enumerate(pool_regions(x, it.rois[idx], net.grids)):
                feats[k].append(part)
    means, stds = [], []
    for parts in feats:  # per region: its grid mirrored is the mirror image's
        f = torch.cat(parts).double()
        m1 = f.mean(0)
        m2 = (f * f).mean(0)
        m1, m2 = (m1 + m1.flip(-1)) / 2, (m2 + m2.flip(-1)) / 2
        means.append(m1.flatten())
        stds.append((m2 - m1 * m1).clamp_min(0).sqrt().flatten() + 1e-3)
    return torch.cat(means).float(), torch.cat(stds).float()


def train_finetuned(model: RegionEnsemble, dataset: DetectionDataset, proposals: list[Tensor | None], *,
                    settings: MemberSettings, cache_root: str | Path, out_dir: str | Path,
                    backbone_weights: str | None = "imagenet", rank: int = 0, world_size: int = 1,
                    progress: bool = True, log=print, init_heads: nn.ModuleList | None = None,
                    identity: dict | None = None) -> dict:
    """Train ``model`` (roi mode, shared trunk): its last ``cfg.trainable_stages`` stages and every member's head.

    ``proposals[i]``: the proposals of ``dataset.records[i]`` (``None``: none, reported and skipped).  The frozen
    part's maps are cached under ``cache_root/trunk_maps`` (:class:`TrunkCache`), the per-epoch checkpoint is
    ``out_dir/finetune.ckpt``.  ``init_heads``: start the members' heads from these (e.g. a trained ensemble's
    ``heads``, same architecture) instead of a fresh initialisation.  ``identity``: what the run starts from (e.g.
    the dataset and the warm start's SHA-1); a checkpoint in ``out_dir`` of another identity is refused.  On return the
    model holds the trained weights (in eval mode).  Returns the training record.
    """
    import time

    cfg = model.cfg
    t0 = time.perf_counter()
    cache = trunk_cache(Path(cache_root) / "trunk_maps", dataset, trunk_settings(model, backbone_weights=backbone_weights))
    skipped = [f"{r.path}: no proposals" for r, p in zip(dataset.records, proposals) if p is None]
    positions = [i for i, p in enumerate(proposals) if p is not None]
    skipped += cache_trunk_maps(dataset, model, cache, positions=positions, rank=rank, world_size=world_size,
                                progress=progress)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    t_cache = time.perf_counter() - t0
    items, no_pos = [], 0
    reported = {s.split(": ", 1)[0] for s in skipped}  # every message starts "<path>: "
    for i in positions:
        r = dataset.records[i]
        try:
            e = cache.load(r, file_sha1(r.path))
        except OSError:
            e = None
        if e is None:
            if str(r.path) not in reported:
                skipped.append(f"{r.path}: no trunk map")
            continue
        boxes, labels, max_iou = label_proposals(proposals[i], r.boxes, r.labels, fg_iou=settings.fg_iou,
                                                 exhaustive=r.exhaustive)
        if not (labels > 0).any():
            no_pos += 1
            continue  # an image without positives teaches background only: R-CNN's batches need its positives
        items.append(_item(model, r, cache.slot(r), e, boxes, labels, max_iou))
    caches = [cache]
    sizes = pyramid_sizes(model, settings.image_sizes)
    for k, v in enumerate(sizes):
        if v == cfg.image_size:
            continue
        found = _level_items(model, dataset, proposals, positions, sizes=sizes, level=k, settings=settings,
                             cache_root=cache_root, backbone_weights=backbone_weights, rank=rank,
                             world_size=world_size, progress=progress, log=log, index=len(caches))
        caches.append(found[0])
        items += found[1]
    t_cache = time.perf_counter() - t0
    for s in skipped[:5]:
        log(f"fine-tuning: skipped {s}")
    if len(skipped) > 5:
        log(f"fine-tuning: ... {len(skipped) - 5} more images skipped ({sum('no proposals' in s for s in skipped)} "
            f"of all {len(skipped)} for want of proposals)")
    if not items:
        raise RuntimeError(f"{dataset.name}: no training image with positives")
    _, _, names = split_stem(model.backbones[0], cfg.trainable_stages)
    partial = sum(not it.exhaustive for it in items)
    n_level = sum(it.level > 0 for it in items)
    if not names:
        what = "the heads alone (frozen trunk)"
    elif settings.trunk_lr_scale == 0:
        what = f"the heads alone ({', '.join(names)} kept as they are: trunk_lr_scale=0)"
    else:
        what = ", ".join(names)
    log(f"fine-tuning {what} on {len(items) - n_level} images of "
        f"{dataset.name}" + (f" + {n_level} at other scales" if n_level else "")
        + f" ({len(skipped)} images skipped, {no_pos} without objects left out"
        + (f"; {partial} not exhaustively annotated give positives only" if partial else "")
        + f"); trunk maps cached in {t_cache:.0f} s")
    n_img = settings.images_per_batch
    per_image = settings.rois_per_batch // n_img
    factors = repeat_factors(items, thresh=settings.repeat_thresh)
    shown = sum(factors)
    if settings.repeat_thresh > 0:
        rep = sum(f > 1 for f in factors)
        log(f"repeat-factor sampling (t={settings.repeat_thresh:g}): {rep} images of rare classes repeated (up to "
            f"{max(factors):.2f}x): an epoch shows {shown:.0f} images for {len(items)}")
    if settings.balance_positives:
        log("positives drawn with about equal shares per class present in an image (balance_positives)")
    steps = math.ceil(shown / n_img)
    net = FineTuneNet(model)
    gen0 = torch.Generator().manual_seed(settings.seed)
    grow = init_heads is not None and any(a.shape != b.shape for a, b in zip(
        net.heads.state_dict().values(), init_heads.state_dict().values()))
    if grow:  # warm start with context regions added: zero weights for the new inputs, their statistics measured
        mean, std = (_feature_stats(net, cache, items, rois_per_image=per_image, gen=gen0) if cfg.standardize
                     else (None, None))
        grow_heads(net.heads, init_heads, mean=mean, std=std)
        log(f"fine-tuning: heads initialised from a trained ensemble, grown to the regions {net.grids} (the new "
            f"inputs start with zero weights: the same logits as the source's until they train)")
    elif init_heads is not None:  # warm start: another ensemble's heads (and their input statistics)
        net.heads.load_state_dict(init_heads.state_dict())
        log("fine-tuning: heads initialised from a trained ensemble (warm start)")
    else:
        for m, head in enumerate(net.heads):
            torch.manual_seed(settings.seed * 7919 + m)  # each member's own initialisation
            for mod in head.modules():
                if isinstance(mod, nn.Linear):
                    mod.reset_parameters()
    if cfg.standardize and init_heads is None:
        mean, std = _feature_stats(net, cache, items, rois_per_image=per_image, gen=gen0)
        for head in net.heads:
            head.set_feature_stats(mean, std)
    groups = [{"params": [p for p in net.heads.parameters()], "lr": settings.lr}]
    if settings.trunk_lr_scale == 0:  # the stages stay as they are: no gradient through them, the heads alone
        net.stages.requires_grad_(False)
    trunk_params = [p for p in net.stages.parameters() if p.requires_grad]
    if trunk_params:
        groups.append({"params": trunk_params, "lr": settings.lr * settings.trunk_lr_scale})
    ddp = net
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(net)
    run = MemberRun(net, settings=settings, steps_per_epoch=steps, ckpt=Path(out_dir) / "finetune.ckpt",
                    record={"member": "all", "name": "fine-tuning", "trainable_stages": cfg.trainable_stages, "stages": net.names,
                            "images": len(items) - n_level, "skipped": len(skipped),
                            **({"multiscale_images": n_level} if n_level else {})}, log=log, param_groups=groups,
                    identity=identity)
    M = cfg.members
    n_fg = round(per_image * settings.fg_fraction)
    for epoch in range(run.start_epoch, settings.epochs):
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        torch.manual_seed(settings.seed * 100_003 + epoch)  # dropout: a resumed epoch draws what it would have
        order = epoch_order(items, gen, factors if settings.repeat_thresh > 0 else None)
        net.train()
        net.stages.eval()  # frozen BatchNorm (and no dropout in the stages): the trunk always runs in eval mode
        for s in progress_bar(range(steps), desc=f"fine-tune epoch {epoch + 1}/{settings.epochs}", unit="step",
                      leave=False, disable=not progress or rank != 0):
            batch = [order[(s * n_img + j) % len(order)] for j in range(n_img)]
            flips = (torch.rand(n_img, generator=gen) < 0.5) & settings.flip
            # every member's draws for every image of the batch, from the one epoch generator: rank-independent
            draws = batch_draws([items[b] for b in batch], members=M, per_image=per_image, fg=n_fg, gen=gen,
                                balance=settings.balance_positives)
            # every RoI of the batch weighs the same in each member's loss (Fast R-CNN's mean over the mini-batch),
            # however the RoIs fall on images and ranks: each rank sums its share, DDP's gradient mean is x world
            totals = [max(1, sum(len(d[1][m]) for d in draws)) for m in range(M)]
            loss = torch.zeros(())
            logits_all, targets_all = [], []
            for j in range(rank, n_img, world_size):
                it = items[batch[j]]
                e = caches[it.level].load_slot(it.slot)
                fmap = (e["map_flip"] if flips[j] else e["map"]).detach().float()[None]
                rois = it.rois_flip if flips[j] else it.rois
                pool, picks = draws[j]
                out = ddp(fmap, rois[pool], picks)
                for m in range(M):
                    y = it.labels[pool[picks[m]]]
                    loss = loss + F.cross_entropy(out[m], y, reduction="sum") / (totals[m] * M)
                    logits_all.append(out[m].detach())
                    targets_all.append(y)
            run.step_loss(loss * world_size, torch.cat(logits_all), torch.cat(targets_all))
        run.end_epoch(epoch, save=rank == 0)
    record = run.finish()
    record["trunk_cache_seconds"] = t_cache
    # the trained weights into the ensemble
    from detection.models.region import load_stages_state_dict

    if net.names:
        load_stages_state_dict(model.backbones[0], net.trunk_state())
    model.heads.load_state_dict(net.heads.state_dict())
    return record
