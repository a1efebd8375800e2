"""Training MultiBox on a frozen backbone: trunk features computed once (chunked, resumable), then the head.

Nothing is lost to a kill: feature chunks and per-epoch checkpoints are written atomically, and a restart with the same
settings continues from the last complete chunk / epoch (same data order, same RNG state).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.ops import nms
from detection.progress import progress as progress_bar

from detection.data.image_io import ImageDecodeError, read_image_rgb
from detection.data.records import DetectionDataset
from detection.proposals.cache import settings_hash
from detection.proposals.coverage import coverage
from detection.proposals.multibox.loss import multibox_loss
from detection.proposals.multibox.model import (MultiBox, SharedMultiBox, save_multibox, small_prior_ids,
                                                to_pixel_boxes)
from detection.proposals.multibox.priors import kmeans_priors
from detection.files import atomic_torch_save, atomic_write_text

__all__ = ["TrainSettings", "FeatureSet", "compute_features", "compute_region_features", "split_features",
           "train_multibox", "evaluate_recall", "window_targets"]

CHUNK = 128


@dataclass
class TrainSettings:
    epochs: int = 6  # the shipped head: 6 epochs on the classifiers' trunk maps (docs/proposals.md)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    alpha: float = 0.3
    seed: int = 0
    flip: bool = True
    top_k_eval: int = 200
    # > 0 (a head on the region classifiers' trunk): each training photo also gives one window of a window_grid x
    # window_grid grid, each window_fraction of the photo (what proposals.multibox.crops=[[grid, fraction]] runs at
    # test time); there the head runs its priors under window_prior_area of the window's area and learns the
    # objects whole inside it (under twice that area) as if the window were the photo; 0: the whole photo only
    window_grid: int = 0
    window_fraction: float = 0.45
    window_prior_area: float = 0.05

    def __post_init__(self) -> None:
        if self.window_grid and (int(self.window_grid) != self.window_grid or self.window_grid < 2):
            raise ValueError(f"train.window_grid must be 0 (off) or an integer >= 2, got {self.window_grid}")
        if not 0.0 < self.window_fraction < 1.0:
            raise ValueError(f"train.window_fraction must be in (0, 1), got {self.window_fraction}")
        if not 0.0 < self.window_prior_area <= 1.0:
            raise ValueError(f"train.window_prior_area must be in (0, 1], got {self.window_prior_area}")

    @property
    def crops(self) -> list:
        """The test-time crop levels the windows train for (``proposals.multibox.crops``)."""
        return [[self.window_grid, self.window_fraction]] if self.window_grid else []


@dataclass
class FeatureSet:
    """Frozen-trunk features of a dataset: ``feats [N, C, s, s]`` fp16, ``gts[i]`` normalised xyxy ``[G_i, 4]``,
    ``sizes[i] = (width, height)``, ``ids[i]`` image id; ``mids [N, C_mid, 2s, 2s]`` fp16, the stride-16 maps, for
    heads that read them (else ``None``).

    Maps of the region classifiers' trunk (``trunk="region"``) keep each photo's aspect ratio, so their sizes
    differ: ``feats`` and ``mids`` are then lists of ``[C, h_i, w_i]`` tensors, and :meth:`batches` groups
    photos of one map size."""

    feats: Tensor | list[Tensor]
    gts: list[Tensor]
    sizes: list[tuple[int, int]]
    ids: list[str]
    mids: Tensor | list[Tensor] | None = None
    fines: list[Tensor] | None = None  # the stride-8 maps (region trunk, for fine_level heads)

    def maps(self, sel) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(last maps, stride-16 maps or ``None``, stride-8 maps or ``None``) of the images ``sel`` (one map size), as
        float32."""
        sel = [int(i) for i in sel]
        if isinstance(self.feats, list):
            shapes = {self._shape_key(i) for i in sel}
            if len(shapes) > 1:
                raise ValueError(f"maps of different sizes in one batch: {sorted(shapes)} (use batches())")

            def stack(maps):
                return torch.stack([maps[i] for i in sel]).float() if maps is not None else None

            return stack(self.feats), stack(self.mids), stack(self.fines)
        return self.feats[sel].float(), self.mids[sel].float() if self.mids is not None else None, None

    def _shape_key(self, i: int) -> tuple:
        """Image ``i``'s map sizes at every level it has: a photo's stride-8 map can differ in size from another's
        whose coarser maps match (a 75x100 stride-8 map and a 75x99 one both round to 19x25 at stride 32)."""
        return tuple(tuple(m[i].shape) for m in (self.feats, self.mids, self.fines) if m is not None)

    def batches(self, order, batch_size: int) -> list[list[int]]:
        """The images ``order`` in batches of at most ``batch_size`` that share their map sizes at every level, in order
        of each batch's first image (all maps one size: plain consecutive slices)."""
        order = [int(i) for i in order]
        if not isinstance(self.feats, list):
            return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        open_: dict[tuple, list[int]] = {}
        out: list[list[int]] = []
        for i in order:
            key = self._shape_key(i)
            b = open_.setdefault(key, [])
            if not b:
                out.append(b)
            b.append(i)
            if len(b) == batch_size:
                del open_[key]
        return out


def _flip_boxes(g: Tensor) -> Tensor:
    """Mirror normalised xyxy boxes left-right."""
    return torch.stack([1 - g[:, 2], g[:, 1], 1 - g[:, 0], g[:, 3]], 1)


def _readable(records, skipped: list[str]):
    """``(record, RGB image)`` of each record whose image decodes; the others' errors go to ``skipped``."""
    for r in records:
        try:
            yield r, read_image_rgb(r.path)
        except ImageDecodeError as e:
            skipped.append(str(e))


def _norm_boxes(r) -> Tensor:
    return r.boxes / r.boxes.new_tensor([r.width, r.height, r.width, r.height])


def _cached_chunks(dataset: DetectionDataset, out_dir: Path, compute, *, desc: str, progress: bool) -> list[dict]:
    """The chunks of ``CHUNK`` records of ``dataset``: each loaded from ``out_dir`` when there (resume), else
    ``compute(records, skipped)`` (a dict with ``ids``), saved atomically; skipped images are reported."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = []
    bar = {} if progress else {"disable": True}
    for ci in progress_bar(range(math.ceil(len(dataset) / CHUNK)), desc=desc, unit="chunk", **bar):
        path = out_dir / f"chunk{ci:05d}.pt"
        if path.exists():
            chunks.append(torch.load(path, weights_only=True))
            continue
        skipped: list[str] = []
        chunk = {**compute(dataset.records[ci * CHUNK:(ci + 1) * CHUNK], skipped), "skipped": skipped}
        atomic_torch_save(chunk, path)
        chunks.append(chunk)
    for c in chunks:
        for msg in c["skipped"]:
            print(f"{desc}: skipped {msg}")
    return [c for c in chunks if len(c["ids"])]


@torch.inference_mode()
def compute_features(dataset: DetectionDataset, model: MultiBox, *, cache_dir: str | Path, batch_size: int = 16,
                     progress: bool = True) -> FeatureSet:
    """Trunk features of every image, cached in chunks under ``cache_dir``.  (Mirroring for training is done on the
    feature map: a stride-32 map of a mirrored photo is close to the mirrored map, at no extra trunk pass.)

    Images that cannot be decoded are reported and left out.  A chunk already on disk is reused (resume).
    """
    key = settings_hash("multibox-features", {
        "dataset": dataset.name, "n": len(dataset), "backbone": model.cfg.backbone, "size": model.cfg.input_size,
        "mid_level": model.cfg.mid_level, "ids": settings_hash("ids", {"ids": [r.image_id for r in dataset]})})
    model.eval()

    def compute(records, skipped):
        feats, mids, gts, sizes, ids = [], [], [], [], []
        batch: list[Tensor] = []

        def flush():
            if batch:
                last, mid = model.trunk(torch.cat(batch))
                feats.append(last.half())
                if mid is not None:
                    mids.append(mid.half())
                batch.clear()

        for r, img in _readable(records, skipped):
            batch.append(model.preprocess(img))
            gts.append(_norm_boxes(r))
            sizes.append((r.width, r.height))
            ids.append(r.image_id)
            if len(batch) >= batch_size:
                flush()
        flush()
        return {"feats": torch.cat(feats) if feats else torch.zeros(0), "gts": gts, "sizes": sizes, "ids": ids,
                "mids": torch.cat(mids) if mids else None}

    chunks = _cached_chunks(dataset, Path(cache_dir) / f"{dataset.name}-{key}", compute,
                            desc=f"features {dataset.name}", progress=progress)
    has_mid = bool(chunks) and chunks[0].get("mids") is not None
    return FeatureSet(feats=torch.cat([c["feats"] for c in chunks]),
                      gts=[g for c in chunks for g in c["gts"]], sizes=[tuple(s) for c in chunks for s in c["sizes"]],
                      ids=[i for c in chunks for i in c["ids"]],
                      mids=torch.cat([c["mids"] for c in chunks]) if has_mid else None)


@torch.inference_mode()
def compute_region_features(dataset: DetectionDataset, ensemble, *, cache_dir: str | Path, fine: bool = False,
                            progress: bool = True) -> FeatureSet:
    """The region classifiers' trunk maps of every image at their image scale (:meth:`RegionEnsemble.trunk_maps
    <detection.models.region.RegionEnsemble.trunk_maps>`), what a shared-trunk MultiBox head reads at test time;
    cached in chunks under ``cache_dir`` keyed by the trunk's fingerprint and the images (a restart reuses them).

    ``fine``: also the stride-8 maps (for ``fine_level`` heads; cached apart).  Images that cannot be decoded are
    reported and left out."""
    c = ensemble.cfg
    key = settings_hash("multibox-region-features", {
        "dataset": dataset.name, "n": len(dataset), "trunk": ensemble.trunk_id, "image_size": c.image_size,
        "max_image_size": c.max_image_size, "max_upscale": c.max_upscale,
        "ids": settings_hash("ids", {"ids": [r.image_id for r in dataset]}), **({"fine": True} if fine else {})})
    ensemble.eval()

    def compute(records, skipped):
        chunk = {"feats": [], "mids": [], "gts": [], "sizes": [], "ids": [], **({"fines": []} if fine else {})}
        for r, img in _readable(records, skipped):
            x, _ = ensemble.prepare_image(img)
            for name, m in zip(("feats", "mids", "fines"), ensemble.trunk_maps(x[None], fine=fine)):
                chunk[name].append(m[0].half().contiguous().cpu())
            chunk["gts"].append(_norm_boxes(r))
            chunk["sizes"].append((r.width, r.height))
            chunk["ids"].append(r.image_id)
        return chunk

    chunks = _cached_chunks(dataset, Path(cache_dir) / f"{dataset.name}-region-{key}", compute,
                            desc=f"trunk maps {dataset.name}", progress=progress)

    def cat(name):
        return [t for ch in chunks for t in ch[name]]

    return FeatureSet(feats=cat("feats"), gts=cat("gts"), sizes=[tuple(sz) for sz in cat("sizes")], ids=cat("ids"),
                      mids=cat("mids"), fines=cat("fines") if fine else None)


def split_features(features: FeatureSet, ids: set[str]) -> tuple[FeatureSet, FeatureSet]:
    """(the images not in ``ids``, the images in ``ids``): a dev split carved from cached features."""
    def pick(keep):
        sel = [i for i, x in enumerate(features.ids) if (x in ids) == keep]
        if isinstance(features.feats, list):
            feats = [features.feats[i] for i in sel]
            mids = [features.mids[i] for i in sel] if features.mids is not None else None
        else:
            feats = features.feats[sel]
            mids = features.mids[sel] if features.mids is not None else None
        fines = [features.fines[i] for i in sel] if features.fines is not None else None
        return FeatureSet(feats=feats, gts=[features.gts[i] for i in sel], sizes=[features.sizes[i] for i in sel],
                          ids=[features.ids[i] for i in sel], mids=mids, fines=fines)

    return pick(False), pick(True)


def window_targets(gts: list[Tensor], *, grid: int, fraction: float, max_area: float, generator: torch.Generator,
                   margin: float = 0.02) -> tuple[Tensor, list[Tensor]]:
    """One window per image, drawn from the ``grid x grid`` windows of ``fraction`` of the photo
    (:func:`~detection.proposals.multibox.model.crop_windows`' layout), and its targets: the ground-truth boxes
    ``gts[b]`` (normalised xyxy) whole inside it (within ``margin`` of its side, clipped to it) and under
    ``max_area`` of its area, normalised to the window.  Objects the window cuts, or larger ones, are the whole
    photo's to find: the window's slots learn them as background (at test time its boxes that reach an inner edge
    are dropped).  Returns (windows ``[B, 4]`` normalised xyxy, targets)."""
    cells = torch.randint(grid * grid, (len(gts),), generator=generator).tolist()
    windows, targets = [], []
    for g, c in zip(gts, cells):
        i, j = divmod(c, grid)
        x0, y0 = (1 - fraction) * j / (grid - 1), (1 - fraction) * i / (grid - 1)
        win = torch.tensor([x0, y0, x0 + fraction, y0 + fraction])
        windows.append(win)
        t = (g.float() - win[:2].repeat(2)) / fraction  # in the window's frame
        inside = (t[:, :2] >= -margin).all(1) & (t[:, 2:] <= 1 + margin).all(1)
        t = t[inside].clamp(0, 1)
        targets.append(t[(t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]) < max_area])
    return torch.stack(windows) if windows else torch.zeros(0, 4), targets


def train_priors(features: FeatureSet, *, k: int, seed: int) -> Tensor:
    """k-means priors from the normalised training boxes and their mirror images (MultiBox's outputs are mirrored
    in training, so the priors should be left-right symmetric too)."""
    boxes = torch.cat([g for g in features.gts if len(g)])
    boxes = torch.cat([boxes, _flip_boxes(boxes)])
    return kmeans_priors(boxes, k=k, seed=seed)


@torch.inference_mode()
def evaluate_recall(model: MultiBox, features: FeatureSet, *, top_k: int, batch_size: int = 64,
                    crops: list | None = None, crop_prior_area: float = 1.0, crop_weight: float = 1.0,
                    nms_iou: float = 0.7) -> dict:
    """Recall of ground truth at IoU 0.5 / 0.7 by the top-k boxes of each image.

    ``crops`` (a head on the region classifiers' trunk): the whole image and these windows of its maps, as
    :meth:`~detection.proposals.multibox.model.SharedMultiBox.propose_from_maps` gives them (boxes cut by a window
    dropped), near-duplicates suppressed at ``nms_iou`` before the top k -- what the proposal stage takes."""
    model.eval()
    props, gts = [], []
    # windows run one image at a time (propose_from_maps); the whole image alone runs in batches
    for sel in features.batches(range(len(features.ids)), 1 if crops else batch_size):
        last, mid, fine = features.maps(sel)
        if crops:
            w, h = features.sizes[sel[0]]
            b, s = model.propose_from_maps(last, mid, fine, width=w, height=h, crops=crops,
                                           crop_prior_area=crop_prior_area, crop_weight=crop_weight, drop_cut=True)
            props.append(b[nms(b, s, nms_iou)[:top_k]])
        else:
            boxes, logits = model.head(last, model.priors, mid, fine)
            for j, i in enumerate(sel):
                w, h = features.sizes[i]
                props.append(to_pixel_boxes(boxes[j], logits[j], width=w, height=h, top_k=top_k)[0])
        gts += [features.gts[i] * torch.tensor(features.sizes[i] * 2) for i in sel]
    cov = coverage(props, gts, thresholds=(0.5, 0.7), counts=(10, 50, 100, top_k))
    return {"recall@0.5": cov.recall[0.5], "recall@0.7": cov.recall[0.7], "num_gt": cov.num_gt,
            "curve": dict(zip(cov.counts, cov.curve))}


def train_multibox(model: MultiBox, train: FeatureSet, *, settings: TrainSettings, out_dir: str | Path,
                   val: FeatureSet | None = None, progress: bool = True, log=print) -> dict:
    """Train ``model.head`` on cached features; checkpoint every epoch in ``out_dir``; resume from the last one.

    Returns the training record (per-epoch losses and validation recall, time, settings).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "last.ckpt"
    head = model.head
    if settings.window_grid and not isinstance(model, SharedMultiBox):
        raise ValueError("train.window_grid trains windows of the region classifiers' trunk maps: it needs "
                         "model.trunk=region (a MultiBox with its own trunk runs crops through the trunk instead)")
    window_ids = small_prior_ids(model.priors, settings.window_prior_area)
    if settings.window_grid and not window_ids.numel():
        raise ValueError(f"train.window_prior_area={settings.window_prior_area}: no prior is that small")
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = len(train.batches(range(len(train.ids)), settings.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
                                                pct_start=0.1)
    record = {"settings": asdict(settings), "config": asdict(model.cfg), "epochs": [], "train_images": len(train.ids)}
    start_epoch = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        old = ck["record"]
        # (settings added since the checkpoint was written count at their defaults)
        old = {**old, "settings": {**asdict(TrainSettings()), **old.get("settings", {})}}
        differ = [f"{k} {old.get(k)} vs {record[k]}" for k in ("settings", "config", "train_images")
                  if old.get(k) != record[k]]
        if differ:  # a checkpoint of another run: resuming it would mix two recipes (or break the schedule)
            raise ValueError(f"{ckpt_path}: a checkpoint of a run with other settings ({'; '.join(differ)}); "
                             f"give another out_dir, or delete it to start over")
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        record = ck["record"]
        start_epoch = ck["epoch"] + 1
        torch.set_rng_state(ck["rng"])
        log(f"resumed from {ckpt_path} after epoch {ck['epoch'] + 1}")
    t0 = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        # one generator per epoch: a resumed run draws exactly the shuffles and mirrors of an uninterrupted one
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        head.train()
        perm = torch.randperm(len(train.ids), generator=gen)
        tot = {"loss": 0.0, "loc": 0.0, "conf": 0.0}
        bar = {} if progress else {"disable": True}
        batches = train.batches(perm.tolist(), settings.batch_size)
        for sel in progress_bar(batches, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", leave=False,
                                **bar):
            x, mid, fine = train.maps(sel)
            gts = [train.gts[i] for i in sel]
            if settings.flip:
                mirror = torch.rand(len(sel), generator=gen) < 0.5
                x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
                if mid is not None:
                    mid = torch.where(mirror[:, None, None, None], mid.flip(-1), mid)
                if fine is not None:
                    fine = torch.where(mirror[:, None, None, None], fine.flip(-1), fine)
                gts = [_flip_boxes(g) if m else g for g, m in zip(gts, mirror.tolist())]
            r, r8 = head.maps(x, mid, fine)
            boxes, logits = head.slots(x, r, r8, model.priors)
            loss, parts = multibox_loss(boxes, logits, gts, alpha=settings.alpha)
            if settings.window_grid:  # the same maps, one window of each photo, its small priors
                windows, wgts = window_targets(gts, grid=settings.window_grid, fraction=settings.window_fraction,
                                               max_area=2 * settings.window_prior_area, generator=gen)
                wb, wl = head.slots(x, r, r8, model.priors[window_ids], windows=windows, prior_ids=window_ids,
                                    window_image=torch.arange(len(sel)))
                wloss, _ = multibox_loss(wb, wl, wgts, alpha=settings.alpha)
                loss = loss + wloss
                tot["window"] = tot.get("window", 0.0) + float(wloss.detach()) * len(sel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot["loss"] += float(loss.detach()) * len(sel)
            tot["loc"] += parts["loc"] * len(sel)
            tot["conf"] += parts["conf"] * len(sel)
        ep = {k: v / len(perm) for k, v in tot.items()}
        ep["epoch"] = epoch + 1
        if val is not None:
            ep["val"] = evaluate_recall(model, val, top_k=settings.top_k_eval)
            if settings.window_grid:  # with the windows it trained, as the proposal stage runs them
                ep["val_windows"] = evaluate_recall(model, val, top_k=settings.top_k_eval, crops=settings.crops,
                                                    crop_prior_area=settings.window_prior_area)
        record["epochs"].append(ep)
        log(f"epoch {epoch + 1}: loss {ep['loss']:.3f} (loc {ep['loc']:.4f}, conf {ep['conf']:.3f})"
            + (f", window {ep['window']:.3f}" if "window" in ep else "")
            + (f", val recall@0.5 top-{settings.top_k_eval} {ep['val']['recall@0.5']:.3f}" if val is not None else "")
            + (f" (with windows {ep['val_windows']['recall@0.5']:.3f})" if "val_windows" in ep else ""))
        atomic_torch_save({"head": head.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                           "record": record, "epoch": epoch, "rng": torch.get_rng_state()}, ckpt_path)
    record["train_seconds"] = record.get("train_seconds", 0.0) + time.perf_counter() - t0
    save_multibox(model, out_dir / "multibox.pt", record=record)
    atomic_write_text(out_dir / "record.json", json.dumps(record, indent=2))
    return record
