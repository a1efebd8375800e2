"""Extraction with worker processes and torchrun ranks, resume, bad images; the proposal tools end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from conftest import PROJECT_ROOT
from detection.data import read_voc
from detection.proposals.extract import SelectiveSearchSource, extract_split
from detection.proposals.pipeline import MultiBoxSettings, ProposalSettings, ProposalStage
from detection.proposals.selective_search import SelectiveSearchSettings

sys.path.insert(0, str(PROJECT_ROOT / "tools"))
from detection import config as hs  # noqa: E402

hs.register_schemas()
SS_SMALL = SelectiveSearchSettings(resize_width=128)


def test_extract_with_workers_resumes_and_reports_bad_images(tiny_voc, tmp_path):
    ds = read_voc(tiny_voc, name="tiny")
    src = SelectiveSearchSource(SS_SMALL)
    st = extract_split(ds, src, cache_root=tmp_path / "c", workers=2, progress=False)
    assert st.computed == 4 and st.cached == 0 and len(st.skipped) == 1
    assert "broken.jpg: corrupt or truncated" in st.skipped[0]
    again = extract_split(ds, src, cache_root=tmp_path / "c", workers=2, progress=False)
    assert again.computed == 0 and again.cached == 4 and len(again.skipped) == 1
    # same boxes as computing in this process, whichever worker computed them
    stage = ProposalStage(ProposalSettings(selective_search=SS_SMALL, multibox=MultiBoxSettings(top_k=0),
                                           dedup_iou=1.0), cache_root=tmp_path / "c")
    good = read_voc(tiny_voc, name="tiny").verify_images(progress=False)
    loaded = stage.load(good)
    for rec, p in zip(good, loaded):
        direct, _ = stage.propose(np.asarray(Image.open(rec.path).convert("RGB")))
        assert np.array_equal(p["boxes"].numpy(), direct.numpy())


def test_multibox_in_worker_processes_gives_what_one_process_gives(tiny_voc, tmp_path, monkeypatch):
    # on a CPU the stage runs MultiBox in the worker processes too (one thread each: faster than one process)
    import detection.proposals.pipeline as pipeline

    calls, real = [], pipeline.extract_split
    monkeypatch.setattr(pipeline, "extract_split",
                        lambda part, src, **kw: calls.append((src.method, kw["workers"])) or real(part, src, **kw))
    settings = ProposalSettings(selective_search=SS_SMALL, multibox=MultiBoxSettings(top_k=50, crops=[]))
    good = read_voc(tiny_voc, name="tiny").verify_images(progress=False)
    st = ProposalStage(settings, cache_root=tmp_path / "w").extract(good, workers=2, progress=False)
    assert st["multibox"].computed == 4 and calls == [("selective_search", 2), ("multibox", 2)]
    one = ProposalStage(settings, cache_root=tmp_path / "one")
    one.extract(good, workers=1, progress=False)
    for a, b in zip(ProposalStage(settings, cache_root=tmp_path / "w").load(good), one.load(good)):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-3)  # pixels; threads round differently
        assert a["source"].tolist() == b["source"].tolist() and (a["source"] == 1).any()


def run_tool(*args, timeout=600):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def test_torchrun_two_ranks_shard_and_merge(tiny_voc, tmp_path):
    common = ["dataset=voc", f"dataset.root={tiny_voc}", "dataset.name=tiny", f"cache_dir={tmp_path / 'cache'}",
              "proposals=rcnn", "proposals.selective_search.resize_width=128", "workers=1",
              f"hydra.run.dir={tmp_path / 'run'}"]
    r = run_tool(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                 "tools/extract_proposals.py", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "selective_search on tiny (2 ranks): 4 images computed" in r.stdout
    assert "1 skipped" in r.stdout and "broken.jpg" in r.stdout
    files = list((tmp_path / "cache" / "proposals" / "tiny").glob("selective_search-*/*.pt"))
    assert len(files) == 4
    # a single-process run afterwards finds everything cached
    r = run_tool(sys.executable, "tools/extract_proposals.py", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing computed, 4 images already cached, 1 skipped" in r.stdout


def test_eval_proposals_tool_and_sweep_summary(tiny_voc, tmp_path):
    common = ["dataset=voc", f"dataset.root={tiny_voc}", "dataset.name=tiny", f"cache_dir={tmp_path / 'cache'}",
              "proposals=rcnn", "proposals.selective_search.resize_width=128", "workers=2"]
    r = run_tool(sys.executable, "tools/eval_proposals.py", "-m", *common,
                 "proposals.selective_search.k_scale=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [j["overrides"].split()[-1] for j in jobs] == ["proposals.selective_search.k_scale=1",
                                                        "proposals.selective_search.k_scale=2"]
    assert jobs[0]["proposals/img"] > jobs[1]["proposals/img"] > 0
    assert all(0 < j["coverage@0.5"] <= 1 for j in jobs)
    assert "Sweep summary (2 jobs" in r.stdout and "coverage@0.5" in r.stdout
    cov = json.loads((tmp_path / "sweep" / "0" / "coverage.json").read_text())
    assert cov["images"] == 4 and cov["gt_boxes"] == 4 and cov["mb/img"] == 0
    assert (tmp_path / "sweep" / "0" / "coverage.png").stat().st_size > 5000
    # the pages: each job's coverage.html (its numbers those of coverage.json) and the sweep's summary.html
    from test_report_html import check_page

    page = check_page(tmp_path / "sweep" / "0" / "coverage.html")
    assert float([a for t, a in page.data if a.get("id") == "coverage"][0]["data-value"]) == cov["coverage@0.5"]
    assert "coverage.png" in page.imgs
    assert check_page(tmp_path / "sweep" / "summary.html").links == ["0/coverage.html", "1/coverage.html"]

    # the same sweep as two parallel joblib jobs (the 'parallel' launcher preset): the same summary table
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason='needs pip install -e ".[launchers]"')
    common = [c.replace("workers=2", "workers=1") for c in common]
    r = run_tool(sys.executable, "tools/eval_proposals.py", "-m", *common, "hydra/launcher=parallel",
                 "proposals.selective_search.k_scale=1,2", f"hydra.sweep.dir={tmp_path / 'sweep_joblib'}",
                 f"cache_dir={tmp_path / 'cache_joblib'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Joblib.Parallel" in r.stdout or "JoblibLauncher" in r.stdout + r.stderr
    seq = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    par = json.loads((tmp_path / "sweep_joblib" / "summary.json").read_text())
    assert [j["swept"] for j in par] == [j["swept"] for j in seq]
    for a, b in zip(par, seq):  # every figure but the time per image
        assert {k: v for k, v in a.items() if k not in ("s/img", "overrides")} == \
            {k: v for k, v in b.items() if k not in ("s/img", "overrides")}
    assert "Sweep summary (2 jobs" in r.stdout


@pytest.mark.parametrize("name", ["eval_proposals", "extract_proposals", "train_multibox"])
@pytest.mark.parametrize("proposals", ["rcnn", "paper"])
def test_proposal_configs_compose(name, proposals):
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        overrides = [] if name == "train_multibox" else [f"proposals={proposals}"]
        cfg = compose(name, overrides=overrides + ["data_root=/data"])
    if name != "train_multibox":
        s = hs.proposal_settings(cfg.proposals)
        assert s.selective_search.k_scale == (2.0 if proposals == "paper" else 1.0)
        assert s.multibox.top_k == (200 if proposals == "paper" else 0)
    else:
        assert cfg.model.num_priors >= 200 and cfg.model.trunk == "region" and cfg.dev_every > 0
        assert cfg.val_dataset is None  # recall on a dev split carved from train, not on a held-out split
        with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
            cfg = compose(name, overrides=["data_root=/data", "+dataset@val_dataset=val_small"])
        assert cfg.val_dataset.name == "val_small"


FORK_AFTER_OPENCV = """
import numpy as np, torch
from pathlib import Path
from PIL import Image
from detection.data.records import DetectionDataset, ImageRecord
from detection.proposals.extract import SelectiveSearchSource, extract_split
from detection.proposals.selective_search import SelectiveSearchSettings, selective_search

if __name__ == "__main__":
    d = Path({d!r})
    s = SelectiveSearchSettings(resize_width=160)
    img = np.asarray(Image.open({photo!r}).convert("RGB"))
    selective_search(img, s)  # the parent runs OpenCV (and its thread pool) before the workers start
    recs = []
    for i in range(4):
        Image.fromarray(np.roll(img, 25 * i, 1)).save(d / f"{{i}}.jpg")
        recs.append(ImageRecord(d / f"{{i}}.jpg", img.shape[1], img.shape[0], torch.zeros(0, 4),
                                torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), f"x/{{i}}"))
    st = extract_split(DetectionDataset("x", recs), SelectiveSearchSource(s), cache_root=d / "c", workers=2,
                       progress=False)
    print("computed", st.computed)
"""


def test_workers_start_after_the_parent_used_opencv(tiny_voc, tmp_path):
    """Forked workers of a parent that had already run selective search deadlocked (bench_proposals hung);
    workers are spawned now.  Run in a subprocess with a timeout so a regression fails instead of hanging."""
    photo = sorted(p for p in tiny_voc.glob("**/*.jpg") if "broken" not in p.name)[0]
    script = tmp_path / "fork_after_opencv.py"
    script.write_text(FORK_AFTER_OPENCV.format(d=str(tmp_path), photo=str(photo)))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(PROJECT_ROOT)}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "computed 4" in r.stdout


@pytest.mark.slow
def test_chunked_extraction_leaves_whole_images(tiny_voc, tmp_path):
    """chunk_size: every source on a chunk before the next, so a run stopped part way leaves whole images."""
    ds = read_voc(tiny_voc, name="tiny")
    stage = ProposalStage(ProposalSettings(selective_search=SS_SMALL, multibox=MultiBoxSettings(top_k=50, crops=[])),
                          cache_root=tmp_path / "c")
    seen = []

    def log(msg):  # after each chunk: how many images each source has cached
        seen.append((msg, [len(list((tmp_path / "c" / "tiny").glob(f"{m}-*/*.pt")))
                           for m in ("selective_search", "multibox")]))

    stats = stage.extract(ds, workers=1, progress=False, chunk_size=2, log=log)
    assert [m.split(" done")[0] for m, _ in seen] == ["chunk 1/3", "chunk 2/3", "chunk 3/3"]
    # chunks: (astronaut, broken), (chelsea, coffee), (rocket); broken.jpg is skipped by both sources
    assert [counts for _, counts in seen] == [[1, 1], [3, 3], [4, 4]]
    assert stats["selective_search"].computed == stats["multibox"].computed == 4
    assert len(stats["selective_search"].skipped) == 1
    with pytest.raises(ValueError, match="chunk_size"):
        stage.extract(ds, chunk_size=0)
