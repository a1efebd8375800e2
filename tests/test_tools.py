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
sys.path.insert(0, str(PROJECT_ROOT / "tools" / "experiments"))
from detection import config as hs  # noqa: E402

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


def test_threads_option_sets_the_process_threads_and_leaves_hydras_arguments():
    import cv2
    import torch

    before = torch.get_num_threads()
    try:
        assert hs.rewrite_argv(["--threads", "1", "--split", "val"]) == ["dataset=val"]
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        assert hs.rewrite_argv(["x=1", "--threads=2"]) == ["x=1"] and torch.get_num_threads() == 2
        with pytest.raises(SystemExit, match="positive whole number"):
            hs.rewrite_argv(["--threads", "0"])
    finally:
        torch.set_num_threads(before)


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
        assert "Invalid value 'vco', expected one of [ilsvrc, voc, coco, loc]" in _chain(bad_value.value)
        with pytest.raises(Exception) as bad_key:
            compose("eval_map", overrides=["eval.protocl=voc"])
        assert "protocl" in _chain(bad_key.value)


@pytest.mark.parametrize("split,images", [("val_small", 49), ("voc100", 100), ("train_small", 368)])
def test_split_presets_instantiate_on_shared_data(shared_data, split, images):
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=[f"dataset={split}", f"data_root={shared_data}"])
    ds = instantiate(cfg.dataset, _convert_="all")
    assert ds.name == split and len(ds) == images


def test_eval_map_scores_reference_detections(shared_data, tmp_path):
    r = run_tool("tools/eval_map.py", "--split", "voc100", f"detections={REF_DETS}", f"data_root={shared_data}",
                 f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "voc100: 100 images, 260 boxes in 19 DET classes" in r.stdout
    assert "detection_unmapped_class [dropped]: 27" in r.stdout
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["protocol"] == "ilsvrc" and m["num_classes_evaluated"] == 19 and m["dataset"] == "voc100"
    assert f"{100 * m['mAP']:.2f}%" in r.stdout.splitlines()[-2] or f"{100 * m['mAP']:.2f}%" in r.stdout
    assert (tmp_path / "pr_curves.png").stat().st_size > 10_000


def test_eval_map_sweep_prints_one_summary(shared_data, tmp_path):
    r = run_tool("tools/eval_map.py", "-m", "split=voc100", f"detections={REF_DETS}", f"data_root={shared_data}",
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
                 f"detector.model={tmp_path / 'none.pt'}")
    assert r.returncode != 0 and "none.pt: region-classifier model not found" in r.stderr
    r = run_tool("tools/eval_map.py", "--split", "voc100", f"detections={REF_DETS}",
                 f"data_root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0 and "not found: set DET_DATA_ROOT or data_root=PATH" in r.stderr
    r = run_tool("tools/eval_map.py", "--split", "val_small", f"detections={tmp_path / 'none.json'}",
                 f"data_root={shared_data}", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0 and "none.json: detections file not found" in r.stderr


def test_bench_eval_runs_small(tmp_path):
    r = run_tool("tools/experiments/bench_eval.py", "--images", "30", "--dets", "2000", "--json", str(tmp_path / "b.json"))
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


def test_compare_classes_table(tmp_path):
    from compare_classes import class_rows, markdown

    def metrics(m, aps, images=10):
        return {"protocol": "ilsvrc", "num_images": images, "mAP": m,
                "per_class": [{"label": k, "name": n, "num_gt": g, "ap": a, "num_dets": 5} for k, n, g, a in aps]}

    a = metrics(0.5, [(1, "cat", 4, 0.6), (2, "dog", 2, 0.4), (3, "ski", 0, None)])
    b = metrics(0.6, [(1, "cat", 4, 0.5), (2, "dog", 2, 0.7), (4, "laptop", 1, 0.2)])
    rows = class_rows({"before": a, "after": b})
    assert [r["name"] for r in rows] == ["dog", "cat", "laptop"]  # gains first, a class missing from one last
    assert rows[0]["delta"] == pytest.approx(0.3) and rows[1]["delta"] == pytest.approx(-0.1)
    assert rows[2]["ap"] == {"before": None, "after": 0.2} and rows[2]["delta"] is None
    assert [r["name"] for r in class_rows({"before": a, "after": b}, sort="gt")] == ["cat", "dog", "laptop"]
    table = markdown({"before": a, "after": b}, rows)
    assert "| dog | 2 | 40.0 | 70.0 | +30.0 |" in table and "| laptop | 1 | - | 20.0 | - |" in table
    assert table.splitlines()[-1] == "| **mAP** | 7 | **50.0** | **60.0** | **+10.00** |"
    with pytest.raises(ValueError, match="differ"):
        class_rows({"a": a, "b": metrics(0.5, [], images=11)})
    # the tool: files in, the table out; a bad argument is a clear error
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    r = run_tool("tools/experiments/compare_classes.py", f"before={tmp_path / 'a.json'}", f"after={tmp_path / 'b.json'}",
                 "--out", str(tmp_path / "t.md"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t.md").read_text().strip() == r.stdout.strip() == table
    r = run_tool("tools/experiments/compare_classes.py", f"x={tmp_path / 'nope.json'}")
    assert r.returncode != 0 and "nope.json: no such metrics file" in r.stderr


def test_compare_classes_splits_the_change_by_training_source(tmp_path):
    from compare_classes import class_rows, load_source_boxes, markdown, source_rows

    def metrics(m, aps):
        return {"protocol": "ilsvrc", "num_images": 10, "mAP": m,
                "per_class": [{"label": k, "name": n, "num_gt": g, "ap": a, "num_dets": 5} for k, n, g, a in aps]}

    a = metrics(0.3, [(1, "cat", 4, 0.6), (2, "laptop", 2, 0.0), (3, "ski", 1, 0.3), (4, "mouse", 3, 0.3)])
    b = metrics(0.4, [(1, "cat", 4, 0.5), (2, "laptop", 2, 0.5), (3, "ski", 1, 0.3), (4, "mouse", 3, 0.3)])
    stats = [{"dataset": "train", "sources": {"voc": {"boxes_per_class": {"cat": 9}}}},
             {"dataset": "breadth", "sources": {"voc": {"boxes_per_class": {"cat": 9, "laptop": 1}},
                                                "coco": {"boxes_per_class": {"laptop": 5, "cat": 2, "mouse": 3}},
                                                "tiny": {"boxes_per_class": {"mouse": 3}}}}]
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    boxes = load_source_boxes(tmp_path / "stats.json")  # the last split by default
    assert boxes == {"cat": {"voc": 9, "coco": 2}, "laptop": {"voc": 1, "coco": 5}, "mouse": {"coco": 3, "tiny": 3}}
    assert load_source_boxes(tmp_path / "stats.json", "train") == {"cat": {"voc": 9}}
    assert load_source_boxes(tmp_path / "stats.json", merge={"extra": ["coco", "tiny"]})["mouse"] == {"extra": 6}
    with pytest.raises(ValueError, match="no source 'x' to merge into 'extra'"):
        load_source_boxes(tmp_path / "stats.json", merge={"extra": ["coco", "x"]})
    with pytest.raises(ValueError, match="merge name 'voc' is already a source"):
        load_source_boxes(tmp_path / "stats.json", merge={"voc": ["coco", "tiny"]})
    with pytest.raises(ValueError, match="source 'coco' is in both 'x' and 'y'"):
        load_source_boxes(tmp_path / "stats.json", merge={"x": ["coco"], "y": ["coco"]})
    for bad in ("", "[1]", "3"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(ValueError, match="bad.json: not"):
            load_source_boxes(tmp_path / "bad.json")
    rows = class_rows({"before": a, "after": b})
    groups = {g["source"]: g for g in source_rows(rows, boxes)}
    # laptop (+0.5) and mouse (0; a tie goes to the alphabetically first) are coco's, cat (-0.1) voc's, ski none
    assert set(groups) == {"coco", "voc", "(none)"}
    assert groups["coco"]["classes"] == 2 and groups["coco"]["num_gt"] == 5
    assert groups["coco"]["contribution"] == pytest.approx(0.5 / 4) and groups["voc"]["contribution"] == pytest.approx(-0.1 / 4)
    assert groups["(none)"]["contribution"] == 0 and groups["coco"]["last"] == pytest.approx(0.4)
    assert sum(g["contribution"] for g in groups.values()) == pytest.approx(0.1)  # adds up to the mAP change
    # a class one evaluation lacks is left out of the shares, and the total row says over how many classes
    c = metrics(0.3, [(1, "cat", 4, 0.6), (2, "laptop", 2, 0.5), (3, "ski", 1, 0.3)])
    t2 = markdown({"before": a, "after": c}, class_rows({"before": a, "after": c}), boxes)
    assert t2.splitlines()[-1] == "| **all** (3 of 4 classes scored by both) | 3 | 7 | | | **+16.67** |"
    table = markdown({"before": a, "after": b}, rows, boxes)
    assert "| laptop | 2 | 0.0 | 50.0 | +50.0 | coco 5, voc 1 |" in table and "| ski | 1 | 30.0 | 30.0 | +0.0 | 0 |" in table
    assert "| coco | 2 | 5 | 15.0 | 40.0 | +12.50 |" in table and "| voc | 1 | 4 | 60.0 | 50.0 | -2.50 |" in table
    # the tool; a wrong split or file is a clear error
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    r = run_tool("tools/experiments/compare_classes.py", f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'b.json'}",
                 "--stats", str(tmp_path / "stats.json"), "--split", "breadth")
    assert r.returncode == 0, r.stderr
    assert "| main training source |" in r.stdout and "| coco | 2 | 5 | 15.0 | 40.0 | +12.50 |" in r.stdout
    r = run_tool("tools/experiments/compare_classes.py", f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'b.json'}",
                 "--stats", str(tmp_path / "stats.json"), "--merge", "extra=coco,tiny")
    assert r.returncode == 0, r.stderr
    assert "| laptop | 2 | 0.0 | 50.0 | +50.0 | extra 5, voc 1 |" in r.stdout and "| extra | 2 | 5 |" in r.stdout
    r = run_tool("tools/experiments/compare_classes.py", f"a={tmp_path / 'a.json'}", "--merge", "extra=coco")
    assert r.returncode != 0 and "--split and --merge need --stats" in r.stderr
    r = run_tool("tools/experiments/compare_classes.py", f"a={tmp_path / 'a.json'}", "--stats", str(tmp_path / "stats.json"),
                 "--split", "nope")
    assert r.returncode != 0 and "no split 'nope' (it has train, breadth)" in r.stderr
    (tmp_path / "old.json").write_text(json.dumps([{"dataset": "x", "sources": {"voc": {"boxes": 3}}}]))
    with pytest.raises(ValueError, match="no boxes_per_class"):
        load_source_boxes(tmp_path / "old.json")
    with pytest.raises(FileNotFoundError, match="dataset_stats.py --json"):
        load_source_boxes(tmp_path / "missing.json")


def test_ablate_finetune_dev_split_is_carved_from_voc07_train_photos_with_proposals():
    """The dev split of the ablations: every k-th voc07 photo by position, only images with proposals, never a
    photo in both halves -- the settings are chosen on it, so a leak into training would flatter them."""
    import torch
    from types import SimpleNamespace

    import ablate_finetune as af

    paths = ["voc07/train/a.jpg", "voc07/train/b.jpg", "coco128/c.jpg", "voc07/train/d.jpg", "voc07/train/e.jpg",
             "fruit/f.jpg", "voc07/train/g.jpg"]
    ds = SimpleNamespace(records=[SimpleNamespace(path=Path(p)) for p in paths])
    props = [torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4), None, torch.zeros(1, 4),
             torch.zeros(1, 4)]
    dev, train = af.carve_dev(ds, props, every=3)
    assert dev == [0, 3, 6]             # positions 0, 3, 6: voc07 photos with proposals
    assert train == [1, 2, 5]           # position 4 has no proposals: in neither half
    dev, train = af.carve_dev(ds, props, every=2)
    assert dev == [0, 6] and train == [1, 2, 3, 5]  # 2 (coco) and 4 (no proposals) never in dev


def test_eval_map_loc_protocol(shared_data, tmp_path):
    """eval.protocol=loc: top-k localisation per (photo, class), written to metrics.json; no AP plots."""
    r = run_tool("tools/eval_map.py", "--split", "voc100", f"detections={REF_DETS}", f"data_root={shared_data}",
                 "eval.protocol=loc", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["protocol"] == "loc" and m["ks"] == [1, 5] and m["num_images"] == 100
    assert 0 < m["top1_loc"] <= m["top5_loc"] < 1 and m["top5_loc"] <= m["top5_cls"]
    assert m["classes"] == 19 and 0 < m["classes_localised_top5"] <= 19
    assert f"top-5 {100 * m['top5_loc']:6.2f}%" in r.stdout
    assert not (tmp_path / "pr_curves.png").exists()


def test_whole_photo_baseline(shared_data, tmp_path):
    """tools/experiments/whole_photo.py: the ImageNet classifier's top classes boxed by the whole photo, scored by loc."""
    r = run_tool("tools/experiments/whole_photo.py", "--split", "val_small", "--images", "12", "--out", str(tmp_path),
                 "--override", f"data_root={shared_data}")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["num_images"] == 12 and m["protocol"] == "loc" and m["top5_cls"] > 0.3
    assert "classes with training boxes" in m and "classes with training boxes" in r.stdout  # VOC: all have boxes
    dets = json.loads((tmp_path / "detections.json").read_text())
    assert len(dets) == 12 * 5  # five classes a photo
    assert all(d["bbox"][:2] == [0.0, 0.0] for d in dets)  # boxed by the whole photo


def test_imagenet_transfer_hidden_classes_and_variants():
    """tools/experiments/imagenet_transfer.py: a fixed, stratified half of the trained classes hidden; each variant's scores."""
    import torch

    import imagenet_transfer as it
    from detection.labels import det200

    space = det200()
    boxes = {space.wnid(k): ([10, 0] if k <= 10 else [0, 5]) for k in range(1, 21)}  # 10 exhaustive, 10 Tiny-only
    h = it.hidden_classes(boxes, seed=0)
    assert h == it.hidden_classes(boxes, seed=0) != it.hidden_classes(boxes, seed=1)
    assert len([k for k in h if k <= 10]) == 5 and len([k for k in h if k > 10]) == 5
    P = torch.zeros(1, 201)
    P[0, 0], P[0, 1], P[0, 2] = 0.4, 0.5, 0.1    # objectness 0.6: class 1 (hidden) 0.5, class 2 (visible) 0.1
    F = torch.zeros(1, 201)
    F[0, 1], F[0, 3] = 0.8, 0.2                  # the prior: class 1 0.8, class 3 (never trained) 0.2
    area, trust = torch.tensor([1.0]), torch.ones(201)
    trust[3] = 0.0
    s = {v: it.variant_scores(v, P, F, area, trust, [1], gamma=0.25) for v in it.VARIANTS}
    assert torch.equal(s["supervised"], P)
    assert s["default"][0, 1] == pytest.approx(0.5) and s["default"][0, 3] == pytest.approx(0.6 * 0.2)
    assert s["ImageNet alone"][0, 1] == pytest.approx(0.8) and s["ImageNet alone"][0, 2] == 0
    assert s["hidden, kept"][0, 1] == pytest.approx(0.6 * 0.8)   # named by the prior, objectness kept
    assert s["hidden, dropped"][0, 1] == pytest.approx(0.1 * 0.8)  # its 0.5 moved to background
    assert s["hidden, kept"][0, 2] == pytest.approx(0.1)  # a visible class keeps its score


def test_dataset_stats_writes_a_class_boxes_sidecar(shared_data, tmp_path):
    """--class-boxes: the sidecar a model trained before its record kept the counts reads (RegionEnsemble)."""
    import dataset_stats

    out = tmp_path / "m.class_boxes.json"
    assert dataset_stats.main(["--split", "voc100", "--data-root", str(shared_data), "--class-boxes", str(out)]) == 0
    blob = json.loads(out.read_text())
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=["dataset=voc100", f"data_root={shared_data}"])
    assert blob["class_boxes"] == instantiate(cfg.dataset, _convert_="all").class_boxes()
    assert sum(e for e, p in blob["class_boxes"].values()) == 260 and "voc100" in blob["about"]


def test_bench_scale_busy_processes_run_until_killed():
    """bench_scale --busy N: N processes keep the cores busy while detect() is timed, and are gone after."""
    import bench_scale

    procs = bench_scale.start_busy(2)
    try:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)  # still running after their start-up
    finally:
        for p in procs:
            p.kill()
    assert all(p.wait(timeout=10) != 0 for p in procs)
    assert bench_scale.start_busy(0) == []


def test_bench_trunks_times_each_trunk_at_the_classifiers_scale():
    r = subprocess.run([sys.executable, "tools/experiments/bench_trunks.py", "--trunks", "lite0", "lite2", "--repeats", "1",
                        "--threads", "1", "--size", "160"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["lite0", "lite2"]
    assert "160x241 pass (1 threads)" in lines[0] and "3.35 M trunk parameters" in lines[0]
    assert "4.78 M trunk parameters" in lines[1]


def test_bench_multibox_head_times_the_three_heads(capsys):
    import bench_multibox_head

    bench_multibox_head.main(["--batch", "1", "--repeats", "1", "--threads", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == 3 and rows[0][-1] == "1.00" and all(float(r[-2]) > 0 for r in rows)


def test_miss_causes_by_hand():
    """tools/experiments/missed_objects.py: each missed object's cause from its best covering proposal."""
    import torch
    from missed_objects import miss_causes

    gt = torch.tensor([[0.0, 0, 40, 40], [100, 0, 140, 40], [200, 0, 240, 40], [300, 0, 340, 40],
                       [400, 0, 440, 40]])
    labels = torch.tensor([1, 1, 2, 2, 1])
    boxes = torch.tensor([[0.0, 0, 40, 40],  # covers object 0
                          [100, 0, 140, 40],  # covers object 1 ...
                          [115, 0, 155, 40],  # ... and this better box of class 1 overlaps it by 0.45 (not a match)
                          [200, 0, 240, 40],  # covers object 2, class 2 under the floor, background on top
                          [300, 0, 340, 40]])  # covers object 3, class 2 under the floor, class 1 on top
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.3, 0.0], [0.2, 0.8, 0.0], [0.99, 0.0, 0.005],
                           [0.3, 0.695, 0.005]])
    det_boxes = torch.tensor([[0.0, 0, 40, 40], [115, 0, 155, 40], [300, 0, 340, 40]])
    det_labels = torch.tensor([1, 1, 1])
    causes = miss_causes(gt, labels, boxes, scores, det_boxes, det_labels, score_threshold=0.01, nms_iou=0.3)
    assert causes == ["found", "lost to NMS", "under the floor: background", "under the floor: another class",
                      "not covered"]
    # without the better neighbour the covered box was dropped by something else (the per-class cap)
    assert miss_causes(gt[1:2], labels[1:2], boxes, scores, det_boxes[:1], det_labels[:1], score_threshold=0.01,
                       nms_iou=0.3) == ["other"]
