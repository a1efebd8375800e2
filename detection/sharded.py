"""The detector over a dataset in shards: spread over torchrun ranks, each shard saved atomically so that a killed
run resumes where it stopped.

The images are cut into shards of ``shard_size`` consecutive images; rank ``r`` of ``w`` detects shards ``r, r + w,
...``.  Each finished shard is written to ``<cache_dir>/detections/<dataset>/<key>/shard-NNNNN.pt``, where the key
hashes everything the detections depend on (the classifier's weights, members, NMS settings, proposal settings, the
image list, the shard size and the detector's source code), so a shard is reused only by an identical run.  The
shards are gathered on rank 0, which alone needs them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from detection.data.records import DetectionDataset
from detection.detector import Detector, detect_dataset
from detection.evaluation.detections import Detections
from detection.files import atomic_torch_save

__all__ = ["run_key", "detect_sharded", "restrict_to_scored"]

SHARD_FORMAT = 2


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A hash of the package's own Python files, wherever it is installed: a shard computed by other code is never
    reused (over-inclusive on purpose: a change anywhere in the package starts new shards)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _tensor_digest(h, state: dict) -> None:
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(str((v.dtype, tuple(v.shape))).encode())
            h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())


def run_key(detector: Detector, dataset: DetectionDataset, shard_size: int) -> str:
    """A 12-hex-digit key of everything the detections of ``dataset`` depend on."""
    h = hashlib.sha1()
    _tensor_digest(h, detector.classifier.state_dict())
    stage = detector.proposals
    # (how the work is scheduled does not change the detections: threads, overlap)
    settings = {k: v for k, v in asdict(detector.settings).items() if k not in ("threads", "overlap_proposals")}
    meta = {"settings": settings, "classifier": asdict(detector.classifier.cfg),
            "proposals": asdict(stage.settings) if stage is not None else None,
            "sources": {s.method: s.settings for s in stage.sources()} if stage is not None else None,
            "shard_size": shard_size,
            "class_boxes": detector.classifier.class_boxes if detector.prior is not None else None}
    import torchvision

    meta["versions"] = {"format": SHARD_FORMAT, "torch": torch.__version__, "torchvision": torchvision.__version__}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for r in dataset.records:
        # the image's size and modification time: a file replaced at the same path is a new image
        try:
            st = os.stat(r.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "unreadable"
        h.update(f"{r.image_id}\t{r.path}\t{stamp}\n".encode())
    h.update(code_digest().encode())
    return h.hexdigest()[:12]


def restrict_to_scored(dets: Detections, dataset: DetectionDataset, positions: list[int]
                       ) -> tuple[Detections, DetectionDataset]:
    """Leave out of the evaluation the images that were not scored (unreadable, no proposals): renumber the
    detections' image positions to a dataset of the ``positions`` images only.  An image that could not be read must
    not count as all-missed."""
    if len(positions) == len(dataset):
        return dets, dataset
    remap = {old: new for new, old in enumerate(positions)}
    image = torch.tensor([remap[i] for i in dets.image.tolist()], dtype=torch.int64)
    return Detections(image, dets.boxes, dets.scores, dets.labels), dataset.subset(positions)


def detect_sharded(detector: Detector, dataset: DetectionDataset, *, cache_dir: str | Path, shard_size: int = 50,
                   rank: int = 0, world_size: int = 1, resume: bool = True, progress: bool = True, log=print
                   ) -> tuple[Detections, dict]:
    """Detect every image of ``dataset`` (proposals from ``detector.proposals``' cache, which must hold them),
    this rank's shards only, then gather on rank 0.

    Returns, on rank 0, ``(Detections, stats)`` as :func:`~detection.detector.detect_dataset` does (positions in
    ``dataset``), with ``stats["shards"]`` = {"total", "resumed", "computed"} over all ranks and ``stats["dir"]`` the
    shard folder; on other ranks ``(None, stats of this rank's shards)``.
    """
    from detection.distributed import gather_objects
    from detection.progress import progress as progress_bar

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if detector.proposals is None:
        raise ValueError("detect_sharded needs a detector with a proposal stage (its cache)")
    n = len(dataset)
    n_shards = (n + shard_size - 1) // shard_size
    folder = Path(cache_dir) / "detections" / dataset.name / run_key(detector, dataset, shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    mine = list(range(rank, n_shards, world_size))
    results, resumed, computed = [], 0, 0
    desc = f"detect {dataset.name}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else "")
    bar = progress_bar(total=sum(min(shard_size, n - c * shard_size) for c in mine), desc=desc, unit="img",
                       disable=not progress)
    with bar:
        for c in mine:
            lo, hi = c * shard_size, min(n, (c + 1) * shard_size)
            path = folder / f"shard-{c:05d}.pt"
            ids = [r.image_id for r in dataset.records[lo:hi]]
            part = None
            if resume and path.is_file():
                try:
                    part = torch.load(path, weights_only=True)
                    if part.get("image_ids") != ids or part.get("skipped"):
                        part = None  # another run's shard, or one with images left out: try those again
                except Exception as e:  # a damaged shard is recomputed, and said so
                    log(f"detect: {path} unreadable ({type(e).__name__}: {e}); recomputing it")
                    part = None
            if part is not None:
                resumed += 1
            else:
                sub = DetectionDataset(dataset.name, dataset.records[lo:hi])
                loaded = detector.proposals.load(sub, skip_missing=True)  # boxes with their merge tags
                t = time.perf_counter()
                dets, st = detect_dataset(detector, sub, loaded, progress=False, log=lambda *_: None)
                part = {"image_ids": ids, "shard": c, "image": dets.image + lo, "boxes": dets.boxes,
                        "scores": dets.scores, "labels": dets.labels, "positions": [p + lo for p in st["positions"]],
                        "skipped": st["skipped"], "seconds": {**st["seconds"], "wall": time.perf_counter() - t},
                        "proposals": st["proposals_per_image"] * len(st["positions"])}
                atomic_torch_save(part, path)
                computed += 1
            results.append(part)
            bar.update(hi - lo)
    gathered = gather_objects((results, resumed, computed), world_size)
    if gathered is None:  # not rank 0: only rank 0 needs the whole split
        return None, {"shards": {"total": n_shards, "resumed": resumed, "computed": computed}, "dir": str(folder)}
    parts = [p for g in gathered for p in g[0]]
    tot_resumed, tot_computed = sum(g[1] for g in gathered), sum(g[2] for g in gathered)
    parts.sort(key=lambda p: p["shard"])
    if [p["shard"] for p in parts] != list(range(n_shards)):
        raise RuntimeError(f"detect: gathered shards {[p['shard'] for p in parts]}, expected 0..{n_shards - 1}")
    if parts:
        dets = Detections(torch.cat([p["image"] for p in parts]), torch.cat([p["boxes"] for p in parts]),
                          torch.cat([p["scores"] for p in parts]), torch.cat([p["labels"] for p in parts]))
    else:
        dets = Detections.empty()
    positions = [i for p in parts for i in p["positions"]]
    skipped = [s for p in parts for s in p["skipped"]]
    for s in skipped:
        log(f"detect: skipped {s}")
    seconds: dict = {}
    for p in parts:
        for k, v in p["seconds"].items():
            seconds[k] = seconds.get(k, 0.0) + v
    stats = {"images": len(positions), "positions": positions, "skipped": skipped, "seconds": seconds,
             "proposals_per_image": sum(p["proposals"] for p in parts) / max(len(positions), 1),
             "shards": {"total": n_shards, "resumed": tot_resumed, "computed": tot_computed}, "dir": str(folder)}
    return dets, stats
