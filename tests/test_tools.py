"""The command-line tools and every Hydra config."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import PROJECT_ROOT, SHARED_DATA

sys.path.insert(0, str(PROJECT_ROOT / "tools"))
import hydra_support as hs  # noqa: E402

hs.register_schemas()
DATASETS = sorted(p.stem for p in (PROJECT_ROOT / "configs" / "dataset").glob("*.yaml"))
REF_DETS = SHARED_DATA / "voc100/reference/detections_coco.json"


def run_tool(*args, env=None):
    e = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, env=e,
                          timeout=300)


def test_rewrite_argv():
    assert hs.rewrite_argv(["--split", "val", "x=1"]) == ["dataset=val", "x=1"]
    assert hs.rewrite_argv(["--split=val_small"]) == ["dataset=val_small"]
    assert hs.rewrite_argv(["-m", "split=val,val_small"]) == ["-m", "dataset=val,val_small"]
    assert hs.rewrite_argv(["dataset=voc", "dataset.root=/x"]) == ["dataset=voc", "dataset.root=/x"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_composes(dataset):
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=[f"dataset={dataset}", "data_root=/data"])
    assert cfg.dataset._target_.startswith("detection.data.")
    assert cfg.eval.protocol == hs.Protocol.ilsvrc


def _chain(e: BaseException) -> str:
    return " | ".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)


def test_config_typos_fail_clearly():
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        with pytest.raises(Exception) as bad_value:
            compose("eval_map", overrides=["eval.protocol=vco"])
        assert "Invalid value 'vco', expected one of [ilsvrc, voc, coco]" in _chain(bad_value.value)
        with pytest.raises(Exception) as bad_key:
            compose("eval_map", overrides=["eval.protocl=voc"])
        assert "protocl" in _chain(bad_key.value)


@pytest.mark.parametrize("split,images", [("val_small", 100), ("train_small", 368)])
def test_split_presets_instantiate_on_shared_data(shared_data, split, images):
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=[f"dataset={split}", f"data_root={shared_data}"])
    ds = instantiate(cfg.dataset, _convert_="all")
    assert ds.name == split and len(ds) == images


def test_eval_map_scores_reference_detections(shared_data, tmp_path):
    r = run_tool("tools/eval_map.py", "--split", "val_small", f"detections={REF_DETS}", f"data_root={shared_data}",
                 f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "val_small: 100 images, 260 boxes in 19 DET classes" in r.stdout
    assert "detection_unmapped_class [dropped]: 27" in r.stdout
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["protocol"] == "ilsvrc" and m["num_classes_evaluated"] == 19 and m["dataset"] == "val_small"
    assert f"{100 * m['mAP']:.2f}%" in r.stdout.splitlines()[-2] or f"{100 * m['mAP']:.2f}%" in r.stdout
    assert (tmp_path / "pr_curves.png").stat().st_size > 10_000


def test_eval_map_sweep_prints_one_summary(shared_data, tmp_path):
    r = run_tool("tools/eval_map.py", "-m", "split=val_small", f"detections={REF_DETS}", f"data_root={shared_data}",
                 "eval.protocol=ilsvrc,voc,coco", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    rows = [ln for ln in summary if ln.startswith("eval.protocol=")]
    assert [ln.split()[0] for ln in rows] == ["eval.protocol=ilsvrc", "eval.protocol=voc", "eval.protocol=coco"]
    jobs = json.loads((tmp_path / "summary.json").read_text())
    assert [j["protocol"] for j in jobs] == ["ilsvrc", "voc", "coco"] and all(j["status"] == "ok" for j in jobs)
    assert "Sweep summary (3 jobs" in r.stdout


def test_eval_map_says_what_is_missing(shared_data, tmp_path):
    # no detections file: the detector runs, so a missing classifier model is named
    r = run_tool("tools/eval_map.py", "--split", "val_small", f"data_root={shared_data}", f"hydra.run.dir={tmp_path}",
                 f"ensemble.model={tmp_path / 'none.pt'}")
    assert r.returncode != 0 and "none.pt: region-classifier model not found" in r.stderr
    r = run_tool("tools/eval_map.py", "--split", "val_small", f"detections={REF_DETS}",
                 f"data_root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0 and "not found: set DET_DATA_ROOT or data_root=PATH" in r.stderr
    r = run_tool("tools/eval_map.py", "--split", "val_small", f"detections={tmp_path / 'none.json'}",
                 f"data_root={shared_data}", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0 and "none.json: detections file not found" in r.stderr


def test_bench_eval_runs_small(tmp_path):
    r = run_tool("tools/bench_eval.py", "--images", "30", "--dets", "2000", "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["dets"] == 2000 and figures["images"] == 30
    assert figures["ilsvrc_s"] > 0 and figures["coco_s"] > 0 and figures["speedup"] > 0
    assert 0 < figures["ilsvrc_map"] <= 1 and 0 < figures["coco_map"] <= 1


@pytest.mark.parametrize("preset, target", [("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
@pytest.mark.parametrize("tool", ["eval_map", "eval_proposals"])
def test_launcher_presets_compose(tool, preset, target):
    pytest.importorskip(f"hydra_plugins.hydra_{'joblib' if preset == 'parallel' else 'submitit'}_launcher",
                        reason='needs pip install -e ".[launchers]"')
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose(tool, overrides=[f"hydra/launcher={preset}", "data_root=/data"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith(target)
    if preset == "parallel":
        assert launcher.n_jobs == 2
    else:
        assert launcher.timeout_min == 120 and launcher.tasks_per_node == 1
        assert str(launcher.submitit_folder).endswith(".submitit/%j")
