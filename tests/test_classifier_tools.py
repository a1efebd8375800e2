"""train_classifier.py (one process and torchrun/DDP), eval_map.py running the detector, detect.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from conftest import PROJECT_ROOT, assert_map_is_the_class_mean
from detection.detector import DetectorSettings
from detection.models.backbones import build_backbone
from detection.models.region import load_ensemble

sys.path.insert(0, str(PROJECT_ROOT / "tools"))
from detection import config as hs  # noqa: E402

hs.register_schemas()


def run(*args, timeout=600):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def _common(tiny_voc, tmp_path):
    return ["dataset=voc", f"dataset.root={tiny_voc}", "dataset.name=tiny", f"cache_dir={tmp_path / 'cache'}",
            "proposals=rcnn", "proposals.selective_search.resize_width=128", "workers=1"]


def test_train_classifier_then_eval_map_and_detect(tiny_voc, tmp_path):
    common = _common(tiny_voc, tmp_path)
    train = common + ["dataset@val_dataset=voc", f"+val_dataset.root={tiny_voc}", "val_dataset.name=tiny",
                      "model.members=2", "model.image_size=128", "model.max_image_size=200",
                      "train.epochs=2", "train.rois_per_batch=32", f"out_dir={tmp_path / 'model'}",
                      f"hydra.run.dir={tmp_path / 'run'}"]
    r = run(sys.executable, "tools/train_classifier.py", *train)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "broken.jpg" in r.stdout and "1 images skipped" in r.stdout  # reported, not silently dropped
    assert "fine-tuning epoch 2:" in r.stdout
    model = load_ensemble(tmp_path / "model" / "region.pt")
    assert model.cfg.members == 2 and model.cfg.image_size == 128
    rec = model.record
    assert len(rec["epochs"]) == 2 and rec["world_size"] == 1 and rec["trainable_stages"] == 2  # the recipe fine-tunes blocks.5-6
    assert rec["val"]["dataset"] == "tiny" and "validation on tiny" in r.stdout and rec["val"]["images"] == 4  # broken.jpg left out
    # the boxes it saw per class travel with it (the ImageNet prior's trust): tiny's two classes, exhaustive boxes
    assert model.class_boxes == rec["class_boxes"] and len(rec["class_boxes"]) >= 1
    assert all(e > 0 and p == 0 for e, p in rec["class_boxes"].values())
    # a second run finds every epoch done: nothing is recomputed, the same model comes out
    r2 = run(sys.executable, "tools/train_classifier.py", *train)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "fine-tuning: resumed" in r2.stdout and "images already cached" in r2.stdout and "images computed" not in r2.stdout
    again = load_ensemble(tmp_path / "model" / "region.pt")
    for a, b in zip(model.heads.state_dict().values(), again.heads.state_dict().values()):
        torch.testing.assert_close(a, b)

    # init_model continues a trained ensemble: its heads and fine-tuned stages start the run (with lr 0 they are
    # exactly what comes out); a mismatching cut or both warm starts at once are clear errors
    cont = [o for o in train if not o.startswith(("out_dir=", "train.epochs=", "dataset@val_dataset"))
            and "val_dataset" not in o]
    cont += ["val_dataset=null", "train.epochs=1", "train.lr=0", f"out_dir={tmp_path / 'cont'}",
             f"init_model={tmp_path / 'model' / 'region.pt'}"]
    r = run(sys.executable, "tools/train_classifier.py", *cont)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "heads initialised from a trained ensemble" in r.stdout
    cont_model = load_ensemble(tmp_path / "cont" / "region.pt")
    src = cont_model.record["init_model"]
    assert src["path"] == str((tmp_path / "model" / "region.pt").resolve()) and len(src["sha1"]) == 40
    assert cont_model.record["init_heads"] is None
    for a, b in zip(list(model.heads.state_dict().values()) + list(model.backbones.state_dict().values()),
                    list(cont_model.heads.state_dict().values()) + list(cont_model.backbones.state_dict().values())):
        torch.testing.assert_close(a, b)
    # (the stages compared are trained ones, not the ImageNet weights both would have without the warm start)
    imagenet = build_backbone("lite0").features.blocks[6].state_dict()
    assert any(not torch.equal(v, imagenet[k]) for k, v in model.backbones[0].features.blocks[6].state_dict().items())
    r = run(sys.executable, "tools/train_classifier.py", *cont, "model.trainable_stages=1")
    assert r.returncode != 0 and "it fine-tuned 2 stages of lite0, this run 1" in r.stderr
    r = run(sys.executable, "tools/train_classifier.py", *cont, "init_heads=default")
    assert r.returncode != 0 and "not both" in r.stderr
    # context regions added to a trained model: its heads grow (zero weights for the new inputs), its stages are kept
    grow = [o for o in cont if not o.startswith("out_dir=")] + [f"out_dir={tmp_path / 'grown'}",
                                                                 "model.context_regions=[[2,2]]", "train.trunk_lr_scale=0"]
    r = run(sys.executable, "tools/train_classifier.py", *grow)
    assert r.returncode == 0 and "grown to the regions" in r.stdout, r.stderr[-3000:]
    grown = load_ensemble(tmp_path / "grown" / "region.pt")
    assert grown.cfg.context_regions == [[2.0, 2]] and grown.record["init_model"]["sha1"] == src["sha1"]
    torch.testing.assert_close(grown.backbones[0].features.blocks[6].state_dict(),
                               model.backbones[0].features.blocks[6].state_dict())
    r = run(sys.executable, "tools/train_classifier.py", *[o for o in cont if not o.startswith("init_model=")],
            f"init_model={tmp_path / 'grown' / 'region.pt'}", "model.context_regions=[[3,2]]")
    assert r.returncode != 0 and "do not fit model (context_regions [[2.0, 2]] vs [[3.0, 2]])" in r.stderr, \
        r.stderr[-3000:]
    r = run(sys.executable, "tools/train_classifier.py", *cont, "model.context_regions=[[0.5,2]]")
    assert r.returncode != 0 and "error: RegionConfig.context_regions takes [factor, grid]" in r.stderr
    # the same file named another way resumes; the same out_dir with another starting point is refused
    again = [o for o in cont if not o.startswith("init_model=")] + [
        f"init_model={tmp_path / 'model' / '..' / 'model' / 'region.pt'}"]
    r = run(sys.executable, "tools/train_classifier.py", *again)
    assert r.returncode == 0 and "fine-tuning: resumed" in r.stdout, r.stderr[-3000:]
    # ... but not with another recipe: two positive thresholds in one set of weights would be neither run
    r = run(sys.executable, "tools/train_classifier.py", *again, "train.fg_iou=0.7")
    assert r.returncode != 0 and "other training settings (fg_iou 0.6 -> 0.7)" in r.stderr, r.stderr[-3000:]
    r = run(sys.executable, "tools/train_classifier.py", *[o for o in cont if not o.startswith("init_model=")])
    assert r.returncode != 0 and "the checkpoint of another run (it differs in init_model)" in r.stderr

    # eval_map runs the detector over the split (proposals from the cache) and scores it; -m sweeps the ensemble
    ev = common + [f"detector.model={tmp_path / 'model' / 'region.pt'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    r = run(sys.executable, "tools/eval_map.py", "-m", *ev, "detector.members=1,2", "detector.flip=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Sweep summary (2 jobs" in r.stdout and "are left out of the evaluation" in r.stdout
    jobs = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [j["ensemble_members"] for j in jobs] == [1, 2]
    for k in ("0", "1"):
        m = json.loads((tmp_path / "sweep" / k / "metrics.json").read_text())
        assert_map_is_the_class_mean(m)
        # the unreadable photo is in the run's files, not only on the console
        assert [s for s in m["skipped_images"] if "broken.jpg" in s]
        assert "broken.jpg" in (tmp_path / "sweep" / k / "eval_map.log").read_text()
    dets = json.loads((tmp_path / "sweep" / "1" / "detections.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} <= set(dets[0])
    m = json.loads((tmp_path / "sweep" / "1" / "metrics.json").read_text())
    assert set(m["errors"]["overall"]) >= {"tp", "duplicate", "mislocalised", "confusion", "background", "found"}
    assert (tmp_path / "sweep" / "1" / "errors.png").stat().st_size > 10_000

    # compare_detectors: one trunk pass per image gives the same figures as the separate eval_map runs
    # ... and with the test-time flip (each proposal's softmax averaged with its mirror image's)
    r = run(sys.executable, "tools/eval_map.py", *[o for o in ev if not o.startswith("hydra.sweep")],
            "detector.members=2", "detector.flip=true", f"hydra.run.dir={tmp_path / 'flip'}")
    assert r.returncode == 0, r.stderr[-3000:]
    flip_map = json.loads((tmp_path / "flip" / "metrics.json").read_text())["mAP"]
    report = (tmp_path / "flip" / "report.html").read_text()
    assert "mirror view (test-time flip)" in report and "MultiBox boxes: score weight" in report
    r = run(sys.executable, "tools/experiments/compare_detectors.py", "--split", "voc", "--proposals", "rcnn", "--members", "1",
            "2", "--flip", "off", "on", "--nms", "0.3", "0.6", "--model", f"tiny={tmp_path / 'model' / 'region.pt'}",
            "--out", str(tmp_path / "cmp"), *[f"--override={o}" for o in common[1:] if not o.startswith("proposals=")])
    assert r.returncode == 0, r.stderr[-3000:]
    cmp = {row["variant"]: row["mAP"] for row in json.loads((tmp_path / "cmp" / "summary.json").read_text())}
    assert set(cmp) == {f"tiny-rcnn-m{m}{f}-nms{t}" for m in (1, 2) for f in ("", "-flip") for t in ("0.3", "0.6")}
    assert cmp["tiny-rcnn-m1-nms0.3"] == pytest.approx(jobs[0]["mAP"], abs=1e-9)
    assert cmp["tiny-rcnn-m2-nms0.3"] == pytest.approx(jobs[1]["mAP"], abs=1e-9)
    assert cmp["tiny-rcnn-m2-flip-nms0.3"] == pytest.approx(flip_map, abs=1e-6) and flip_map != jobs[1]["mAP"]
    # a looser per-class NMS keeps more boxes of the same scores
    n = {t: len(json.loads((tmp_path / "cmp" / f"tiny-rcnn-m2-flip-nms{t}" / "detections.json").read_text()))
         for t in ("0.3", "0.6")}
    assert n["0.6"] >= n["0.3"] > 0

    # multi-scale testing (an image pyramid of 128 and 256 px): eval_map's setting and compare_detectors' option give
    # the same figure, and the report names the pyramid
    r = run(sys.executable, "tools/eval_map.py", *[o for o in ev if not o.startswith("hydra.sweep")],
            "detector.members=2", "detector.image_sizes=[128,256]", f"hydra.run.dir={tmp_path / 'ms'}")
    assert r.returncode == 0, r.stderr[-3000:]
    ms_map = json.loads((tmp_path / "ms" / "metrics.json").read_text())["mAP"]
    assert "128 px, 256 px" in (tmp_path / "ms" / "report.html").read_text()
    r = run(sys.executable, "tools/experiments/compare_detectors.py", "--split", "voc", "--proposals", "rcnn", "--members", "2",
            "--image-sizes", "128", "256", "--model", f"tiny={tmp_path / 'model' / 'region.pt'}",
            "--out", str(tmp_path / "cmp_ms"), *[f"--override={o}" for o in common[1:] if not o.startswith("proposals=")])
    assert r.returncode == 0, r.stderr[-3000:]
    row, = json.loads((tmp_path / "cmp_ms" / "summary.json").read_text())
    assert row["variant"] == "tiny-rcnn-m2-ms128x256"  # the detector's default: no mirror view
    assert row["mAP"] == pytest.approx(ms_map, abs=1e-6) and ms_map != flip_map

    # detect.py: PNG + JSON per image, a clear error for a missing file (exit status 1, the others still done)
    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    out = tmp_path / "det"
    r = run(sys.executable, "tools/detect.py", str(photo), str(tmp_path / "nope.jpg"), "--model",
            str(tmp_path / "model" / "region.pt"), "--proposals", "rcnn", "--out", str(out), "--score-threshold", "0")
    assert r.returncode == 1 and "nope.jpg: no such file" in r.stderr
    res = json.loads((out / "chelsea.det.json").read_text())
    assert res["width"] == 451 and res["proposals"] > 100 and len(res["detections"]) > 0
    assert {"selective_search", "classify", "nms"} <= set(res["seconds"])
    assert Image.open(out / "chelsea.det.png").size == (451, 300)
    assert "time:" in r.stdout and "selective_search" in r.stdout


def test_train_classifier_under_torchrun_ddp(tiny_voc, tmp_path):
    common = _common(tiny_voc, tmp_path)
    # multi-scale training (train.image_sizes) on 2 ranks, validated with multi-scale testing on the same levels
    args = common + ["dataset@val_dataset=voc", f"+val_dataset.root={tiny_voc}", "val_dataset.name=tiny",
                     "model.members=1", "model.image_size=128", "model.max_image_size=200",
                     "train.epochs=1", "train.rois_per_batch=32", "train.image_sizes=[128,256]",
                     f"out_dir={tmp_path / 'model'}", f"hydra.run.dir={tmp_path / 'run'}"]
    r = run(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
            "tools/train_classifier.py", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    model = load_ensemble(tmp_path / "model" / "region.pt")
    rec = model.record
    assert rec["world_size"] == 2 and len(rec["epochs"]) == 1 and rec["settings"]["image_sizes"] == [128, 256]
    assert rec["multiscale_images"] >= 1 and "also train at shorter side 256" in r.stdout
    assert rec["val"]["image_sizes"] == [128, 256] and rec["val"]["mAP"] is not None
    # the two ranks shared the trunk-map caches: each readable image's file exists once, each level in its own
    per_level = sorted(len(list(d.glob("*.pt"))) for d in (tmp_path / "cache" / "trunk_maps" / "tiny").glob("trunk_maps-*"))
    assert len(per_level) == 2 and per_level[1] == 4 and rec["multiscale_images"] <= per_level[0] <= 4


@pytest.mark.parametrize("name", ["train_classifier", "eval_map"])
@pytest.mark.parametrize("proposals", ["rcnn", "paper"])
def test_classifier_configs_compose(name, proposals):
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=[f"proposals={proposals}", "data_root=/data"])
    # training proposals are the detector's own (paper: with MultiBox's 200)
    want = 200 if proposals == "paper" else 0
    assert hs.proposal_settings(cfg.proposals).multibox.top_k == want
    if name == "train_classifier":  # the recipe: the model/ preset over RegionConfig's defaults
        assert cfg.model.roi_layer == "stem" and cfg.model.trainable_stages == 2 and cfg.model.members == 6
    else:  # the detector's node carries its settings dataclass's fields (and nothing restates them)
        assert hs.detector_settings(cfg.detector) == DetectorSettings()
    with pytest.raises(Exception, match="membrs"):
        with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
            compose("train_classifier", overrides=["model.membrs=2"])


def test_paper_configuration_trains_and_detects_end_to_end(tiny_voc, tmp_path):
    """Six GoogLeNets fine-tuned whole on warped crops -- here two, random init, 64 px crops, one epoch."""
    common = _common(tiny_voc, tmp_path)
    r = run(sys.executable, "tools/train_classifier.py", *common, "val_dataset=null", "model=paper",
            "backbone_weights=null", "model.members=2", "model.crop_size=64", "train.epochs=1",
            "train.rois_per_batch=16", f"out_dir={tmp_path / 'model'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    model = load_ensemble(tmp_path / "model" / "region.pt")
    assert model.cfg.backbone == "googlenet" and model.cfg.mode == "warp" and len(model.backbones) == 2
    # each member fine-tuned its own whole network: the two backbones differ
    w0, w1 = (b.features.conv1.conv.weight for b in model.backbones)
    assert not torch.equal(w0, w1)
    evaluate = [sys.executable, "tools/eval_map.py", *common, f"detector.model={tmp_path / 'model' / 'region.pt'}",
                "detector.score_threshold=0.0", f"hydra.run.dir={tmp_path / 'eval'}"]
    if not (Path.home() / ".cache/torch/hub/checkpoints/googlenet-1378be20.pth").exists():
        # offline, the ImageNet prior cannot have GoogLeNet's ImageNet classifier: a clear error, naming the switch
        r = run(*evaluate)
        assert r.returncode != 0 and "detector.imagenet_prior=false" in r.stderr
    r = run(*evaluate, "detector.imagenet_prior=false")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["num_images"] == 4
    assert_map_is_the_class_mean(m)
    assert len(json.loads((tmp_path / "eval" / "detections.json").read_text())) > 0


@pytest.mark.slow
def test_detect_finds_the_cat_with_the_embedded_default(tmp_path):
    """A fresh install, offline: the shipped ensemble + MultiBox + selective search find chelsea's domestic cat."""
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, quality=95)
    r = run(sys.executable, "tools/detect.py", str(photo), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "chelsea.det.json").read_text())
    best = res["detections"][0]
    assert best["name"] == "domestic cat" and best["score"] > 0.3, res["detections"][:3]
    x1, y1, x2, y2 = best["box_xyxy"]  # the cat fills most of the photo's right two thirds
    assert (x2 - x1) * (y2 - y1) > 0.2 * 451 * 300
    assert res["proposals"] > 300 and "multibox" in res["seconds"]
