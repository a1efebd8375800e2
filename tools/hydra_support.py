"""Hydra glue shared by the tools: config schemas, ``--split`` sugar, data-root default, the sweep summary."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from detection.detector import DetectorSettings
from detection.models.region import RegionConfig
from detection.training.roi import MemberSettings
from proposals.multibox.model import MultiBoxConfig
from proposals.multibox.train import TrainSettings
from proposals.pipeline import ProposalSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "configs")


class Protocol(str, Enum):
    ilsvrc = "ilsvrc"
    voc = "voc"
    coco = "coco"
    loc = "loc"  # top-k localisation, for photos labelled one class at a time (detection.evaluation.loc)


@dataclass
class EvalConfig:
    protocol: Protocol = Protocol.ilsvrc
    pr_classes: int = 20
    errors: bool = True
    report: bool = True
    report_classes: int = 40


@dataclass
class EnsembleConfig:
    model: Optional[str] = None  # a region-classifier file; None: the embedded default
    size: Optional[int] = None  # use the first `size` members; None: all
    device: str = "cpu"


@dataclass
class DetectorConfig:
    nms_iou: float = 0.3
    max_per_class: int = 100
    score_threshold: float = 0.01
    flip: bool = DetectorSettings.flip  # average each proposal's softmax with its mirror image's (test-time flip)
    multibox_weight: float = 0.5  # MultiBox's boxes' class scores times this (1: unweighted)
    image_sizes: Optional[list[int]] = None  # multi-scale testing: an image pyramid's shorter sides (None: off)
    # the ImageNet prior (detection.detector.DetectorSettings holds the defaults and says what they do)
    imagenet_prior: bool = DetectorSettings.imagenet_prior
    prior_boxes: float = DetectorSettings.prior_boxes
    prior_area_power: float = DetectorSettings.prior_area_power
    overlap_proposals: bool = DetectorSettings.overlap_proposals
    threads: Optional[int] = DetectorSettings.threads  # torch's threads (0: adapt to the machine; None: as set)


@dataclass
class EvalMapConfig:
    dataset: Any = None
    data_root: Optional[str] = None
    extra_root: Optional[str] = None
    cache_dir: Optional[str] = None
    workers: int = 2
    detections: Optional[str] = None
    limit: Optional[int] = None
    shard_size: int = 50
    resume: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)
    proposals: ProposalSettings = field(default_factory=ProposalSettings)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass
class TrainMultiBoxConfig:
    dataset: Any = None
    val_dataset: Any = None
    data_root: Optional[str] = None
    extra_root: Optional[str] = None
    cache_dir: Optional[str] = None
    out_dir: str = "checkpoints/multibox"
    install: bool = False
    region_model: Optional[str] = None  # model.trunk=region: the region classifiers whose trunk maps the head reads
    dev_every: int = 0  # > 0: every dev_every-th voc07 photo of the dataset is held out as a dev split (recall)
    model: MultiBoxConfig = field(default_factory=MultiBoxConfig)
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass
class ProposalsToolConfig:
    dataset: Any = None
    data_root: Optional[str] = None
    extra_root: Optional[str] = None
    cache_dir: Optional[str] = None
    workers: int = 2
    chunk_size: Optional[int] = None
    exhaustive_only: bool = False
    proposals: ProposalSettings = field(default_factory=ProposalSettings)


@dataclass
class TrainClassifierConfig:
    dataset: Any = None
    val_dataset: Any = None
    data_root: Optional[str] = None
    extra_root: Optional[str] = None
    cache_dir: Optional[str] = None
    workers: int = 2
    # false: train on the images whose proposals are cached already (the others are reported and left out)
    extract: bool = True
    # roi mode: start the heads from a trained ensemble's ('default': the embedded model); null: fresh heads
    init_heads: Optional[str] = None
    # roi mode: continue a trained ensemble ('default': the embedded model): its heads and its fine-tuned trunk
    # stages start this run (the same architecture and trainable_stages); null: init_heads or fresh
    init_model: Optional[str] = None
    # photos not exhaustively annotated (positives only): 'jitter' (boxes around the object) or 'proposals'
    positives_only_boxes: str = "jitter"
    out_dir: str = "checkpoints/classifier"
    install: bool = False
    # train only these members (e.g. [0, 1]); null: all of model.members
    only_members: Optional[list] = None
    backbone_weights: Optional[str] = "imagenet"
    proposals: ProposalSettings = field(default_factory=ProposalSettings)
    model: RegionConfig = field(default_factory=RegionConfig)
    train: MemberSettings = field(default_factory=MemberSettings)


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_classifier_schema", node=TrainClassifierConfig)
    cs.store(name="proposals_tool_schema", node=ProposalsToolConfig)
    cs.store(name="eval_map_schema", node=EvalMapConfig)
    cs.store(name="train_multibox_schema", node=TrainMultiBoxConfig)


def proposal_settings(cfg: DictConfig) -> ProposalSettings:
    """The typed settings object of a ``proposals`` config node."""
    return ProposalSettings.from_dict(OmegaConf.to_container(cfg, resolve=True))


def build_detector(cfg: DictConfig):
    """The detector of a tool config (``ensemble``, ``detector`` and ``proposals`` nodes), through the Python API;
    under torchrun a ``cuda`` device means this rank's GPU."""
    from detection.api import load_detector
    from detection.distributed import rank_device

    return load_detector(cfg.ensemble.model, proposals=proposal_settings(cfg.proposals),
                         device=str(rank_device(cfg.ensemble.device)), members=cfg.ensemble.size,
                         nms_iou=cfg.detector.nms_iou, max_per_class=cfg.detector.max_per_class,
                         score_threshold=cfg.detector.score_threshold, flip=cfg.detector.flip,
                         multibox_weight=cfg.detector.multibox_weight,
                         image_sizes=cfg.detector.image_sizes, imagenet_prior=cfg.detector.imagenet_prior,
                         prior_boxes=cfg.detector.prior_boxes,
                         prior_area_power=cfg.detector.prior_area_power, threads=cfg.detector.threads,
                         overlap_proposals=cfg.detector.overlap_proposals, cache_dir=resolve_cache_dir(cfg))


def distributed_context(device: str = "cpu") -> tuple[int, int]:
    """(rank, world size); under torchrun, joins the process group (NCCL for CUDA, gloo on the CPU)."""
    from detection.distributed import init_distributed

    return init_distributed(device)


def barrier(world_size: int) -> None:
    """Wait for every torchrun rank (no-op in a single process)."""
    from detection.distributed import barrier as _barrier

    _barrier(world_size)


def resolve_cache_dir(cfg: DictConfig) -> Path:
    """Fill ``cfg.cache_dir`` ($DET_CACHE_DIR, else <project>/.cache)."""
    root = Path(cfg.cache_dir) if cfg.cache_dir else PROJECT_ROOT / ".cache"
    cfg.cache_dir = str(root)
    return root


def rewrite_argv(argv: list[str]) -> list[str]:
    """``--split X`` / ``--split=X`` / ``split=X`` -> Hydra's ``dataset=X`` (the split presets live in dataset/).
    ``--threads N`` / ``--threads=N`` sets torch's and OpenCV's threads for this process now (extraction workers keep
    one each) and is taken out."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--threads" or a.startswith("--threads="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            if not value.isdigit() or int(value) < 1:
                sys.exit(f"error: --threads needs a positive whole number, got {value!r}")
            from detection.detector import set_threads

            set_threads(int(value))
            i += 1 if "=" in a else 2
            continue
        if a == "--split":
            if i + 1 >= len(argv):
                sys.exit("error: --split needs a value, e.g. --split val")
            out.append(f"dataset={argv[i + 1]}")
            i += 2
            continue
        if a.startswith("--split="):
            a = "dataset=" + a.split("=", 1)[1]
        elif a.startswith("split="):
            a = "dataset=" + a.split("=", 1)[1]
        out.append(a)
        i += 1
    return out


def resolve_data_root(cfg: DictConfig) -> Path:
    """Fill ``cfg.data_root`` ($DET_DATA_ROOT, else <project>/../shared/data) and say clearly when it is missing.

    A dataset that reads public data kept outside the project (``${extra_root}``: Tiny ImageNet and the COCO subsets
    of docs/breadth.md) needs ``extra_root`` ($DET_EXTRA_ROOT); without it the tool stops here, saying so."""
    root = Path(cfg.data_root) if cfg.data_root else PROJECT_ROOT.parent / "shared" / "data"
    cfg.data_root = str(root)
    if "extra_root" in cfg:
        raw = " ".join(str(cfg.get(k)) for k in ("dataset", "val_dataset") if k in cfg)  # unresolved: shows ${..}
        if "${extra_root}" in raw:
            if not cfg.extra_root:
                raise SystemExit("error: this dataset reads data kept outside the project (Tiny ImageNet, COCO "
                                 "subsets): set extra_root=PATH or DET_EXTRA_ROOT to the folder holding them "
                                 "(docs/breadth.md says what goes there)")
            if not Path(cfg.extra_root).is_dir():
                raise SystemExit(f"error: extra_root {cfg.extra_root} is not a folder (docs/breadth.md)")
    return root


class SweepSummary(Callback):
    """At the end of a ``-m`` sweep, print and save one table of every job's overrides and metrics."""

    def __init__(self, metric_file: str = "metrics.json") -> None:
        self.metric_file = metric_file

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = []
        for job in sorted(sweep_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
            ovr_file = job / ".hydra" / "overrides.yaml"
            if not job.is_dir() or not ovr_file.exists():
                continue
            overrides = " ".join(yaml.safe_load(ovr_file.read_text()) or [])
            mfile = job / self.metric_file
            if not mfile.exists():
                rows.append({"job": job.name, "overrides": overrides, "status": "FAILED (no metrics)"})
                continue
            m = json.loads(mfile.read_text())
            rows.append({"job": job.name, "overrides": overrides, "status": "ok",
                         **{k: v for k, v in m.items() if isinstance(v, (int, float, str)) or v is None}})
        if not rows:
            print(f"sweep summary: no jobs found in {sweep_dir}")
            return
        # show only the overrides that vary across the sweep, and the numeric results
        split = [r["overrides"].split() for r in rows]
        common = set(split[0]).intersection(*split[1:])
        for r, ov in zip(rows, split):
            r["swept"] = " ".join(o for o in ov if o not in common) or "(no overrides)"
        keys: list[str] = []
        for r in rows:
            keys += [k for k, v in r.items() if isinstance(v, (int, float)) and k not in keys]
        width = max(len("swept overrides"), *(len(r["swept"]) for r in rows))
        lines = [f"common: {' '.join(sorted(common)) or '-'}",
                 f"{'swept overrides':<{width}}  " + "  ".join(f"{k[:14]:>14}" for k in keys)]
        for r in rows:
            cells = []
            for k in keys:
                v = r.get(k)
                cells.append(f"{100 * v:>13.2f}%" if (k.lower().endswith("map") or "@" in k) and isinstance(v, float)
                             else f"{v:>14.2f}" if isinstance(v, float) else f"{'-' if v is None else v:>14}")
            status = "" if r["status"] == "ok" else f"  {r['status']}"
            lines.append(f"{r['swept']:<{width}}  " + "  ".join(cells) + status)
        table = "\n".join(lines)
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2))
        (sweep_dir / "summary.txt").write_text(table + "\n")
        from detection.evaluation.html import write_summary_page

        page = write_summary_page(sweep_dir, rows, keys=keys, common=" ".join(sorted(common)))
        print(f"\nSweep summary ({len(rows)} jobs, {sweep_dir}/summary.txt, {page.name}):\n{table}")
