"""What a user meets: one source of settings, readable run files, failed images recorded, upright photos, helpful
--help, a disjoint smoke split, and an install that works outside the checkout."""
import ast
import dataclasses
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import PROJECT_ROOT
from detection.detector import DetectorSettings, LoadSettings
from detection.files import atomic_torch_save, atomic_write, new_file_mode


def _tool(*args, cwd=PROJECT_ROOT, env=None, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# -- one source of settings ------------------------------------------------------------------------------------------

def test_tools_take_the_detector_settings_from_the_dataclasses():
    sys.path.insert(0, str(PROJECT_ROOT / "tools"))
    import detect
    from hydra import compose, initialize_config_dir

    from detection import config

    args = detect.parse_args(["photo.jpg"])
    for f in dataclasses.fields(DetectorSettings):  # every setting an option, under its own name, its default
        assert getattr(args, f.name) == f.default, f.name
    assert args.proposals == LoadSettings.proposals and args.device == LoadSettings.device
    args = detect.parse_args(["photo.jpg", "--members", "2", "--no-imagenet-prior", "--image-sizes", "600", "900",
                              "--score-threshold", "0.2"])
    s = config.settings_from_args(args, DetectorSettings)
    assert (s.members, s.imagenet_prior, s.image_sizes, s.score_threshold) == (2, False, (600, 900), 0.2)
    args = detect.parse_args(["photo.jpg", "--backbone-weights", "none", "--threads", "none", "--members", "3"])
    assert args.backbone_weights is None and args.threads is None and args.members == 3  # "none": a None setting
    # eval_map's detector node is built from the same fields; its YAML restates none of them
    config.register_schemas()
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=["detector.members=3", "detector.flip=true"])
    names = [f.name for f in dataclasses.fields(config.DetectorNode)]
    assert names == ["model", "device", "backbone_weights"] + [f.name for f in dataclasses.fields(DetectorSettings)]
    settings = config.detector_settings(cfg.detector)
    assert settings == DetectorSettings(members=3, flip=True)
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        with pytest.raises(Exception, match="nms"):
            compose("eval_map", overrides=["detector.nms=0.5"])  # one name per setting: a typo is an error
        cfg = compose("eval_map", overrides=["detector.nms_iou=1.5"])
    with pytest.raises(ValueError, match="nms_iou must be in"):
        config.detector_settings(cfg.detector)


def test_load_detector_checks_settings_before_loading_weights(tmp_path):
    from detection import load_detector

    missing = tmp_path / "no_model.pt"
    with pytest.raises(TypeError, match="unknown setting nms;.*nms_iou"):
        load_detector(missing, nms=0.5)
    with pytest.raises(ValueError, match="score_threshold must be in"):  # not the missing file: settings first
        load_detector(missing, score_threshold=2)
    with pytest.raises(ValueError, match="members must be"):
        load_detector(missing, members=0)
    with pytest.raises(FileNotFoundError, match="no_model.pt"):
        load_detector(missing)


# -- files -----------------------------------------------------------------------------------------------------------

def test_atomic_writes_are_whole_and_readable_like_other_files(tmp_path):
    import torch

    p = atomic_write(tmp_path / "sub" / "a.json", '{"a": 1}')
    assert p.read_text() == '{"a": 1}' and (p.stat().st_mode & 0o777) == new_file_mode()
    atomic_write(p, b"xy")
    assert p.read_bytes() == b"xy"
    atomic_torch_save({"t": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt")["t"], torch.arange(3))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, fail)
    assert p.read_bytes() == b"xy" and sorted(x.name for x in p.parent.iterdir()) == ["a.json"]  # no temp left


def test_photos_are_read_upright_datasets_keep_the_stored_grid(tmp_path):
    from detection.api import as_rgb_array
    from detection.data.image_io import read_image_rgb

    upright = skimage.data.chelsea()  # 300 x 451
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # stored turned 90 degrees anticlockwise: 451 x 300
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored grid turned back upright
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    got = as_rgb_array(path)
    assert got.shape == upright.shape and np.abs(got.astype(int) - upright).mean() < 3
    assert as_rgb_array(Image.open(path)).shape == upright.shape  # a PIL image too
    assert read_image_rgb(path).shape == stored.shape  # a dataset's annotations refer to the stored pixels
    assert as_rgb_array(path, upright=False).shape == stored.shape


# -- detect.py ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_detect_tool_records_failures_and_writes_readable_files(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    upright = skimage.data.chelsea()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1))).save(photos / "cat_phone.jpg", quality=95,
                                                                      exif=exif)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    props = tmp_path / "fast.yaml"  # rcnn with a small selective search: the same code path, faster
    props.write_text("selective_search:\n  resize_width: 200\n")
    out = tmp_path / "out"
    r = _tool("tools/detect.py", str(photos), str(tmp_path / "none-*.png"), "--proposals", str(props), "--out",
              str(out), "--no-draw")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "1 of 2 images done" in r.stdout and "1 failed, 1 inputs without images" in r.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["images"] == 2 and run["done"] == 1
    assert [f["file"] for f in run["failed"]] == [str(photos / "broken.jpg")] and run["failed"][0]["error"]
    assert run["inputs_without_images"] and "none-*.png" in run["inputs_without_images"][0]
    assert run["settings"] == dataclasses.asdict(DetectorSettings())
    images = json.loads((out / "images.json").read_text())["images"]
    assert [(i["width"], i["height"]) for i in images] == [(451, 300)]  # the upright frame
    dets = json.loads((out / "detections.json").read_text())
    assert dets and max(dets, key=lambda d: d["score"])["category_id"] == 59  # domestic cat (DET id)
    for name in ("run.json", "images.json", "detections.json", "cat_phone.det.json"):
        assert ((out / name).stat().st_mode & 0o777) == new_file_mode(), name


def test_help_says_what_the_tools_do_with_their_defaults():
    r = _tool("tools/detect.py", "--help")
    assert r.returncode == 0
    for text in ("--score-threshold", "(default: 0.01)", "--show", "(default: 0.3)", "EXIF orientation",
                 "--no-imagenet-prior", "(default: paper)"):
        assert text in r.stdout, text
    r = _tool("tools/eval_map.py", "--help")
    assert r.returncode == 0
    for text in ("ILSVRC DET protocol", "--split NAME", "detector.members", "detector.model=PATH",
                 "proposals=paper|rcnn", "eval.protocol", "val_small", "breadth_coco_val", "paper_crops"):
        assert text in r.stdout, text
    assert "ensemble.size" not in r.stdout and "ensemble.model" not in r.stdout
    for wrong, right in (("model=region.pt", "detector.model=PATH"), ("ensemble.size=2", "detector.members=")):
        r = _tool("tools/eval_map.py", "--split", "val", wrong)
        assert r.returncode != 0 and right in r.stderr, r.stderr[-500:]


def test_default_output_folders_are_ignored_by_git():
    ignored = {line.strip().rstrip("/") for line in (PROJECT_ROOT / ".gitignore").read_text().splitlines()}
    assert {"detections", "outputs", "multirun", "checkpoints", ".cache"} <= ignored


# -- the smoke split ---------------------------------------------------------------------------------------------------

def test_val_small_holds_no_training_photo(shared_data):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from detection import config
    from detection.data.records import voc_photo_id

    assert voc_photo_id("2007_000549.jpg") == voc_photo_id("000549_jpg.rf.0123abcd.jpg") == "2007_000549"
    assert voc_photo_id("2008_000549.jpg") is None and voc_photo_id("cat.jpg") is None
    config.register_schemas()
    with initialize_config_dir(config_dir=config.CONFIG_DIR, version_base="1.3"):
        small = compose("eval_map", overrides=["dataset=val_small", f"data_root={shared_data}"])
        train = compose("eval_map", overrides=["dataset=train", f"data_root={shared_data}"])
    small_ds, train_ds = instantiate(small.dataset, _convert_="all"), instantiate(train.dataset, _convert_="all")
    train_ids = {voc_photo_id(r.path) for r in train_ds.records} - {None}
    assert len(train_ids) > 3000
    assert len(small_ds) == 49 and not train_ids & {voc_photo_id(r.path) for r in small_ds.records}
    assert small_ds.report.counts["held_out_image"] == 51


# -- the package -------------------------------------------------------------------------------------------------------

def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_proposals_sit_below_the_detector():
    """detection.proposals uses the data, models and utility layers, never the detector, API, training, evaluation
    or tool glue above it (which use it)."""
    above = ("detection.api", "detection.detector", "detection.training", "detection.evaluation", "detection.config",
             "detection.sharded", "detection.distributed")
    for path in (PROJECT_ROOT / "detection" / "proposals").rglob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(above) or m == "proposals" or m.startswith("proposals.")]
        assert not bad, f"{path.relative_to(PROJECT_ROOT)} imports {bad}"
    for path in (PROJECT_ROOT / "detection").rglob("*.py"):  # nothing imports the tools
        assert not [m for m in _imports(path) if m.split(".")[0] in ("tools", "hydra_support")], path


@pytest.mark.slow
def test_a_plain_install_works_outside_the_checkout(tmp_path):
    """pip install . (not editable): presets, resources and weights ship in the wheel; load_detector().detect() from
    another folder; caches go to $DET_CACHE_DIR, never into the package."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(PROJECT_ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(wheels.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    from detection.models.region import default_region_model_path
    from detection.proposals.multibox import default_model_path

    for want in ("detection/proposals/presets/paper.yaml", "detection/resources/det200_synsets.txt",
                 f"detection/models/weights/{default_region_model_path().name}",
                 f"detection/models/weights/{default_model_path().name}"):
        assert want in names, want
    assert not any(n.startswith(("tools/", "tests/", "configs/")) for n in names)
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(work / "cat.jpg", quality=95)
    script = ("import detection, json; from detection import load_detector\n"
              "r = load_detector(proposals='rcnn').detect('cat.jpg')\n"
              "print(json.dumps({'file': detection.__file__, 'top': r[0]['name']}))\n")
    cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(site), "DET_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(site)) and out["top"] == "domestic cat"
    assert not any(p.name == ".cache" for p in site.rglob("*"))
