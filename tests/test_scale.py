"""Detection beyond one process: eval_map.py under torchrun (sharded, resumable), the process-group backend."""
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from conftest import PROJECT_ROOT
from detection.data.records import DetectionDataset, ImageRecord
from detection.distributed import backend_for, rank_device
from detection.evaluation.detections import Detections
from detection.sharded import restrict_to_scored


def run_tool(*args, timeout=900):
    env = {**os.environ, "DET_PROGRESS": "lines", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def eval_args(tiny_voc, tmp_path, run):
    return ["dataset=voc", f"dataset.root={tiny_voc}", "dataset.name=tiny", f"cache_dir={tmp_path / 'cache'}",
            "proposals=rcnn", "proposals.selective_search.resize_width=128", "workers=1", "shard_size=1",
            "eval.errors=false", f"hydra.run.dir={tmp_path / run}"]


@pytest.mark.slow
def test_eval_map_torchrun_equals_one_process_and_resumes(tiny_voc, tmp_path):
    # two ranks: each extracts and detects its share; rank 0 gathers, scores and writes once
    r2 = run_tool(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                  "tools/eval_map.py", *eval_args(tiny_voc, tmp_path, "two"))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "on 2 ranks" in r2.stdout and r2.stdout.count("mAP ") == 1  # one table, from rank 0
    assert "broken.jpg" in r2.stdout and "left out of the evaluation" in r2.stdout
    shards = sorted((tmp_path / "cache" / "detections" / "tiny").glob("*/shard-*.pt"))
    assert len(shards) == 5  # 5 images, shard_size=1, the broken one's shard records its skip
    # one process, the shards recomputed (resume=false): the same detections and the same mAP
    r1 = run_tool(sys.executable, "tools/eval_map.py", *eval_args(tiny_voc, tmp_path, "one"), "resume=false")
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert "already done" not in r1.stdout
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["mAP"] == m2["mAP"] and m1["num_images"] == m2["num_images"] == 4
    assert m2["ranks"] == 2 and m1["ranks"] == 1
    d1 = json.loads((tmp_path / "one" / "detections.json").read_text())
    d2 = json.loads((tmp_path / "two" / "detections.json").read_text())
    assert len(d1) > 0 and d1 == d2
    # a killed run: two shards lost; a new run redoes those two only and gives the same result
    shards[0].unlink()
    shards[2].unlink()
    r3 = run_tool(sys.executable, "tools/eval_map.py", *eval_args(tiny_voc, tmp_path, "three"))
    assert r3.returncode == 0, r3.stderr[-3000:]
    # shard 1 (broken.jpg, left out) is tried again like the two lost ones: 2 of 5 resumed
    assert "2 of 5 shards were already done" in r3.stdout
    assert json.loads((tmp_path / "three" / "detections.json").read_text()) == d1
    # a different setting is a different run: nothing reused
    r4 = run_tool(sys.executable, "tools/eval_map.py", *eval_args(tiny_voc, tmp_path, "four"), "detector.nms_iou=0.5",
                  "limit=3")
    assert r4.returncode == 0, r4.stderr[-3000:]
    assert "already done" not in r4.stdout and "the first 3 images only" in r4.stdout
    assert json.loads((tmp_path / "four" / "metrics.json").read_text())["num_images"] == 2  # astronaut, chelsea (broken left out)


def test_restrict_to_scored_keeps_blacklist_and_image_indices():
    recs = [ImageRecord(path=f"/x/{i}.jpg", width=10, height=10, boxes=torch.tensor([[1.0, 1, 5, 5]]),
                        labels=[i + 1], difficult=[False], image_id=str(i)) for i in range(4)]
    ds = DetectionDataset("d", recs, blacklist=[(1, 7), (3, 9)], image_indices=[11, 12, 13, 14])
    dets = Detections(image=[1, 3, 3], boxes=torch.ones(3, 4).cumsum(1), scores=[0.9, 0.8, 0.7], labels=[2, 4, 4])
    d2, ds2 = restrict_to_scored(dets, ds, [1, 3])  # images 0 and 2 could not be read
    assert d2.image.tolist() == [0, 1, 1] and [r.image_id for r in ds2.records] == ["1", "3"]
    assert ds2.blacklist == {(0, 7), (1, 9)} and ds2.image_indices == [12, 14]
    same, ds3 = restrict_to_scored(dets, ds, [0, 1, 2, 3])
    assert same is dets and ds3 is ds


def test_process_group_backend_follows_the_device(monkeypatch):
    assert backend_for("cpu") == "gloo"
    if torch.distributed.is_nccl_available():
        assert backend_for("cuda") == "nccl" and backend_for("cuda:1") == "nccl"
    else:
        with pytest.raises(RuntimeError, match="NCCL"):
            backend_for("cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cuda") == torch.device("cuda", 1)  # each rank on its own GPU
    assert rank_device("cuda:0") == torch.device("cuda", 0) and rank_device("cpu") == torch.device("cpu")


def _detect_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("detect_tool", PROJECT_ROOT / "tools" / "detect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_detect_inputs_files_folders_globs(tmp_path):
    detect = _detect_module()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    (tmp_path / "empty").mkdir()
    for f in ("a/x.jpg", "a/y.PNG", "a/notes.txt", "a/deep/x.jpg", "z.jpeg"):
        (tmp_path / f).write_bytes(b"")
    paths, problems = detect.expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.jpeg"), str(tmp_path / "a/x.jpg"),
                                            str(tmp_path / "*.gif"), str(tmp_path / "empty"), "missing.jpg"])
    rel = [str(p.relative_to(tmp_path)) if p.is_absolute() else str(p) for p in paths]
    assert rel == ["a/x.jpg", "a/y.PNG", "z.jpeg", "missing.jpg"]  # sorted per folder, no repeats, the missing kept
    assert len(problems) == 2 and "matches no file" in problems[0] and "empty: no images" in problems[1]
    deep, _ = detect.expand_inputs([str(tmp_path / "a")], recursive=True)
    assert len(deep) == 3
    # outputs never overwrite each other
    assert detect.output_names([tmp_path / "a/x.jpg", tmp_path / "a/deep/x.jpg", tmp_path / "z.jpeg"]) == \
        ["a_x", "deep_x", "z"]
    tricky = [Path("d1/a.jpg"), Path("d1/a.png"), Path("x/d1_a-1.jpg"), Path("y/IMG.jpg"), Path("y/img.png")]
    names = detect.output_names(tricky)
    assert len({n.lower() for n in names}) == len(tricky), names  # no two alike, even ignoring case


@pytest.mark.slow
def test_detect_tool_under_torchrun_equals_one_process(tiny_voc, tmp_path):
    props = tmp_path / "small.yaml"  # the paper preset with a small selective search: fast, same code path
    props.write_text("defaults: [rcnn]\nselective_search:\n  k_scale: 2.0\n  resize_width: 160\n"
                     "multibox:\n  top_k: 200\n")
    import shutil

    shutil.copy(PROJECT_ROOT / "detection" / "proposals" / "presets" / "rcnn.yaml", tmp_path / "rcnn.yaml")
    common = [str(tiny_voc / "JPEGImages"), "--proposals", str(props), "--no-draw", "--score-threshold", "0.01"]
    r2 = run_tool(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537",
                  "tools/detect.py", *common, "--out", str(tmp_path / "two"))
    assert r2.returncode == 1, r2.stderr[-3000:]  # broken.jpg: named, the others done
    assert "broken.jpg" in r2.stderr and "4 of 5 images done" in r2.stdout and "on 2 ranks" in r2.stdout
    r1 = run_tool(sys.executable, "tools/detect.py", *common, "--out", str(tmp_path / "one"))
    assert r1.returncode == 1 and "4 of 5 images done" in r1.stdout
    d1 = json.loads((tmp_path / "one" / "detections.json").read_text())
    d2 = json.loads((tmp_path / "two" / "detections.json").read_text())
    assert len(d1) > 0 and d1 == d2
    images = json.loads((tmp_path / "two" / "images.json").read_text())
    names = {im["id"]: im["file_name"].rsplit("/", 1)[-1] for im in images["images"]}
    assert sorted(names.values()) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    assert len(images["categories"]) == 200
    cats = {c["id"]: c["name"] for c in images["categories"]}
    best = {}
    for d in d2:  # each photo's best detection
        if d["score"] > best.get(names[d["image_id"]], (0, ""))[0]:
            best[names[d["image_id"]]] = (d["score"], cats[d["category_id"]])
    assert best["chelsea.jpg"][1] == "domestic cat" and best["astronaut.jpg"][1] == "person"
    assert not list((tmp_path / "two").glob("*.png"))  # --no-draw
    per = json.loads((tmp_path / "two" / "chelsea.det.json").read_text())
    assert per["detections"][0]["name"] == "domestic cat"
    # pycocotools reads the pair
    from pycocotools.coco import COCO

    gt = COCO(str(tmp_path / "two" / "images.json"))
    assert len(gt.loadRes(str(tmp_path / "two" / "detections.json")).anns) == len(d2)


@pytest.mark.slow
def test_detect_sharded_weights_multibox_boxes_by_their_tags(tiny_voc, tmp_path):
    """The cache's merge tags reach the detector: with multibox_weight=0 no detection is a MultiBox box, with 1 some
    are, and the SS-tagged ones keep their scores."""
    from detection.api import load_detector
    from detection.data import read_voc
    from detection.sharded import detect_sharded
    from detection.proposals.pipeline import load_proposal_settings

    ds = read_voc(tiny_voc, name="tiny")
    ds.records = [r for r in ds.records if "broken" not in str(r.path)]
    paper = load_proposal_settings("paper")
    paper.selective_search.resize_width = 128
    out = {}
    for w in (1.0, 0.0):
        # (one thread: the two runs' scores are compared to 1e-6, and sums over another thread count round
        # differently)
        det = load_detector(proposals=paper, members=1, flip=False, multibox_weight=w, score_threshold=0.02,
                            cache_dir=tmp_path, threads=1)
        det.proposals.extract(ds, progress=False)
        dets, _ = detect_sharded(det, ds, cache_dir=tmp_path, shard_size=2, progress=False, log=lambda *_: None)
        out[w] = dets
    loaded = det.proposals.load(ds)
    def tagged(dets):
        tags = []
        for b, i in zip(dets.boxes, dets.image):
            p = loaded[int(i)]
            j = int((p["boxes"] - b).abs().sum(1).argmin())
            assert torch.allclose(p["boxes"][j], b)  # a detection's box is its proposal
            tags.append(int(p["source"][j]))
        return torch.tensor(tags)
    t1, t0 = tagged(out[1.0]), tagged(out[0.0])
    assert (t1 == 1).any() and not (t0 == 1).any()
    ss1 = {(int(i), tuple(b.tolist()), int(c)): float(s) for i, b, c, s, t in
           zip(out[1.0].image, out[1.0].boxes, out[1.0].labels, out[1.0].scores, t1) if t == 0}
    ss0 = {(int(i), tuple(b.tolist()), int(c)): float(s) for i, b, c, s in
           zip(out[0.0].image, out[0.0].boxes, out[0.0].labels, out[0.0].scores)}
    common = set(ss1) & set(ss0)
    assert common and all(abs(ss1[k] - ss0[k]) < 1e-6 for k in common)
