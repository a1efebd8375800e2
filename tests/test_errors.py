"""Error analysis (detection.evaluation.errors) on hand-made cases whose answers are known."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detection.data.records import DetectionDataset, ImageRecord
from detection.evaluation import Detections
from detection.evaluation.errors import FP_TYPES, LOC_KINDS, analyze_errors, format_errors, plot_errors
from detection.labels import det200

CAT, DOG = 59, 60


def _rec(i, boxes, labels, w=1000, h=1000):
    return ImageRecord(f"img{i}.jpg", w, h, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                       torch.tensor(labels), torch.zeros(len(labels), dtype=torch.bool), f"img{i}")


@pytest.fixture
def two_images():
    # image 0: a cat (100x100 at 100,100) and a dog far away; image 1: a tiny cat (20x20: 0.04 % of the image)
    return DetectionDataset("t", [_rec(0, [[100, 100, 200, 200], [600, 600, 900, 900]], [CAT, DOG]),
                                  _rec(1, [[10, 10, 30, 30]], [CAT])])


def test_each_false_positive_type_and_the_misses(two_images):
    dets = Detections(
        image=[0, 0, 0, 0, 0, 0],
        boxes=[[100, 100, 200, 200],    # TP: the cat
               [101, 101, 200, 200],    # duplicate of the matched cat (IoU ~0.98)
               [100, 100, 160, 200],    # IoU 0.6 with the taken cat: a duplicate too
               [100, 100, 140, 200],    # IoU 0.4: mislocalised
               [600, 600, 900, 900],    # on the dog, labelled cat: confusion
               [400, 0, 500, 50]],      # nothing there: background
        scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], labels=[CAT] * 6)
    rep = analyze_errors(dets, two_images, top_factor=3.0)  # 2 cats -> top 6 detections
    row = rep.per_class[CAT]
    assert row == {"objects": 2, "top": 6, "tp": 1, "duplicate": 2, "mislocalised": 1, "confusion": 1,
                   "background": 1, "found": 1, "mislocalised_part": 1, "mislocalised_group": 0,
                   "mislocalised_loose": 0, "mislocalised_shifted": 0}  # the IoU 0.4 box lies inside the cat
    assert list(rep.fp_type) == ["", "duplicate", "duplicate", "mislocalised", "confusion", "background"]
    # the tiny cat is missed, the big cat found; the dog (no detection) missed
    assert rep.by_size["<0.5%"] == {"objects": 1, "found": 0, "missed": 1}
    assert rep.by_size["0.5-2%"] == {"objects": 1, "found": 1, "missed": 0}  # 100x100 = 1 % of the image
    assert rep.by_size["2-10%"] == {"objects": 1, "found": 0, "missed": 1}   # 300x300 = 9 %
    assert rep.overall["found"] == 1 and rep.overall["objects"] == 3


def test_mislocalised_kinds_by_hand():
    """A mislocalised detection is a part (inside an object of its class, holding none), a group (holds two or
    more), loose (holds one, too large) or shifted; other types and other classes' objects do not count."""
    # two cats side by side, a dog inside the left cat's box area on another class
    ds = DetectionDataset("k", [_rec(0, [[100, 100, 200, 200], [210, 100, 310, 200], [100, 100, 150, 150]],
                                     [CAT, CAT, DOG])])
    dets = Detections(image=[0] * 6,
                      boxes=[[100, 100, 200, 200],   # TP: the left cat
                             [110, 110, 150, 190],   # inside the left cat, IoU 0.32: part
                             [95, 95, 315, 205],     # holds both cats: group
                             [205, 60, 330, 240],    # holds the right cat, IoU 0.44: loose
                             [180, 150, 260, 260],   # half on the right cat, holds none: shifted
                             [80, 80, 150, 150]],    # on the dog, labelled cat; IoU 0.20 with the left cat,
                      scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], labels=[CAT] * 6)  # holding the dog only: shifted
    rep = analyze_errors(dets, ds, top_factor=3.0)
    assert list(rep.fp_type) == ["", "mislocalised", "mislocalised", "mislocalised", "mislocalised", "mislocalised"]
    assert list(rep.loc_kind) == ["", "part", "group", "loose", "shifted", "shifted"]
    row = rep.per_class[CAT]
    assert [row[f"mislocalised_{k}"] for k in LOC_KINDS] == [1, 1, 1, 2]
    assert sum(row[f"mislocalised_{k}"] for k in LOC_KINDS) == row["mislocalised"]
    text = format_errors(rep, space=det200())
    assert "the mislocalised by kind: part 1 (20.0%), group 1 (20.0%), loose 1 (20.0%), shifted 2 (40.0%)" in text


def test_only_the_top_n_detections_are_examined(two_images):
    dets = Detections(image=[0, 0, 0], boxes=[[400, 0, 500, 50], [100, 100, 200, 200], [0, 900, 50, 950]],
                      scores=[0.9, 0.8, 0.1], labels=[CAT, CAT, CAT])
    rep = analyze_errors(dets, two_images)  # top 1 x 2 cats = the two best
    assert rep.per_class[CAT]["top"] == 2 and rep.per_class[CAT]["background"] == 1
    assert rep.per_class[CAT]["tp"] == 1


def test_ilsvrc_threshold_decides_duplicate_for_small_objects(two_images):
    # the 20x20 cat's threshold is min(0.5, 400/(30*30)) ~ 0.444; the second box's IoU is 0.85
    dets = Detections(image=[1, 1], boxes=[[10, 10, 30, 30], [10, 10, 30, 27]], scores=[0.9, 0.8],
                      labels=[CAT, CAT])
    rep = analyze_errors(dets, two_images, top_factor=1.0)
    assert list(rep.fp_type) == ["", "duplicate"]  # IoU 0.85 >= threshold, object already taken


def test_report_renders_and_serialises(two_images, tmp_path):
    dets = Detections(image=[0, 1], boxes=[[100, 100, 200, 200], [500, 500, 520, 520]], scores=[0.9, 0.5],
                      labels=[CAT, DOG])
    rep = analyze_errors(dets, two_images)
    text = format_errors(rep, space=det200())
    assert "domestic cat" in text and "share of the top false positives" in text
    d = rep.to_dict(det200())
    json.dumps(d)
    assert d["overall"]["tp"] == 1 and set(FP_TYPES) <= set(d["overall"])
    plot_errors(rep, tmp_path / "e.png", space=det200(), title="t")
    assert Image.open(tmp_path / "e.png").size[0] > 500


def test_empty_detections(two_images):
    rep = analyze_errors(Detections.empty(), two_images)
    assert rep.overall["found"] == 0 and rep.overall["objects"] == 3
    assert np.asarray(rep.fp_type).size == 0
