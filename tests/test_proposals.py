"""Selective search, coverage, merge and cache."""
import hashlib
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import PROJECT_ROOT
from detection.proposals.cache import ProposalCache, file_sha1, settings_hash
from detection.proposals.coverage import best_iou, coverage
from detection.proposals.merge import SOURCE_MULTIBOX, SOURCE_SELECTIVE_SEARCH, merge_proposals
from detection.proposals.selective_search import SelectiveSearchSettings, selective_search

SMALL = dict(resize_width=160)  # small images keep the tests fast; the full 500 px runs in the integration tests


def test_boxes_in_original_pixels_match_bare_opencv(coffee):
    s = SelectiveSearchSettings(**SMALL)
    boxes = selective_search(coffee, s)
    h, w = coffee.shape[:2]
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4 and len(boxes) > 20
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= w and boxes[:, 3].max() <= h
    # the same set as OpenCV's own call on the resized image, mapped back by the resize factors
    small = cv2.resize(np.ascontiguousarray(coffee[:, :, ::-1]), (160, round(h * 160 / w)), interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(small)
    ss.switchToSelectiveSearchFast(100, 100, 0.8)
    r = ss.process().astype(np.float64)
    fx, fy = w / 160, h / small.shape[0]
    bare = np.stack([r[:, 0] * fx, r[:, 1] * fy, (r[:, 0] + r[:, 2]) * fx, (r[:, 1] + r[:, 3]) * fy], 1)
    ours = boxes.double().numpy()
    assert len(ours) == len(bare)
    key = lambda a: sorted(map(tuple, np.round(a, 3)))  # noqa: E731
    assert key(ours) == key(bare)


def _digest(boxes: torch.Tensor) -> str:
    return hashlib.sha1(boxes.numpy().tobytes()).hexdigest()


def test_same_boxes_same_order_in_every_process(coffee):
    s = SelectiveSearchSettings(**SMALL)
    here = [_digest(selective_search(coffee, s)) for _ in range(2)]
    code = ("import hashlib, skimage.data; from detection.proposals.selective_search import *; "
            "b = selective_search(skimage.data.coffee(), SelectiveSearchSettings(resize_width=160)); "
            "print(hashlib.sha1(b.numpy().tobytes()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert here[0] == here[1] == other.stdout.strip()


def test_doubling_k_gives_fewer_boxes_and_modes_run(coffee):
    n1 = len(selective_search(coffee, SelectiveSearchSettings(**SMALL)))
    n2 = len(selective_search(coffee, SelectiveSearchSettings(k_scale=2, **SMALL)))
    assert n2 < 0.8 * n1
    for mode in ("uijlings", "single", "quality"):
        b = selective_search(coffee, SelectiveSearchSettings(mode=mode, resize_width=96))
        assert len(b) > 0, mode
    filtered = selective_search(coffee, SelectiveSearchSettings(min_box_size=40, **SMALL))
    assert ((filtered[:, 2:] - filtered[:, :2]) >= 40).all() and len(filtered) < n1


def test_settings_validation_and_canonical_hash():
    with pytest.raises(ValueError, match="mode 'turbo'"):
        SelectiveSearchSettings(mode="turbo")
    with pytest.raises(ValueError, match="k_scale > 0"):
        SelectiveSearchSettings(k_scale=0)
    with pytest.raises(ValueError, match="RGB uint8"):
        selective_search(np.zeros((10, 10), np.uint8))
    a = SelectiveSearchSettings(k_scale=2).as_dict()
    b = SelectiveSearchSettings(k_scale=2.0, base_k=100.0).as_dict()
    assert settings_hash("ss", a) == settings_hash("ss", b)
    assert settings_hash("ss", a) != settings_hash("ss", SelectiveSearchSettings(k_scale=1).as_dict())


def test_best_iou_and_coverage_known_values():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    props = torch.tensor([[100.0, 100, 110, 110], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 10]])
    b = best_iou(props, gt, top_n=(1, 2, 3))
    torch.testing.assert_close(b, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 0.0], [0.5, 1.0]]))
    cov = coverage([props], [gt], [torch.tensor([1, 2])], thresholds=(0.5, 0.7), counts=(1, 2, 3, 4))
    assert cov.recall == {0.5: 1.0, 0.7: 1.0} and cov.curve == [0.0, 0.5, 1.0, 1.0]
    assert cov.per_class == {1: 1.0, 2: 1.0} and cov.proposals_per_image == 4
    empty = coverage([torch.zeros(0, 4)], [gt])
    assert empty.recall[0.5] == 0.0 and empty.num_gt == 2
    assert best_iou(props, torch.zeros(0, 4)).shape == (1, 0)


def test_merge_order_tags_and_dedup():
    ss = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.2], [50, 50, 60, 60], [5, 5, 5, 9]])
    mb = torch.tensor([[0.0, 0, 10, 10.1], [30, 30, 40, 40], [70, 70, 80, 80]])
    scores = torch.tensor([0.2, 0.9, 0.1])
    boxes, src = merge_proposals(ss_boxes=ss, mb_boxes=mb, mb_scores=scores, top_k=2, dedup_iou=0.95)
    # MultiBox first by confidence (top 2), then SS in order; near-duplicates of earlier boxes and the degenerate
    # box dropped
    torch.testing.assert_close(boxes, torch.tensor([[30.0, 30, 40, 40], [0, 0, 10, 10.1], [50, 50, 60, 60]]))
    assert src.tolist() == [SOURCE_MULTIBOX, SOURCE_MULTIBOX, SOURCE_SELECTIVE_SEARCH]
    boxes, src = merge_proposals(ss_boxes=ss, dedup_iou=1.0)
    assert len(boxes) == 3 and (src == SOURCE_SELECTIVE_SEARCH).all()
    boxes, src = merge_proposals(ss_boxes=ss, mb_boxes=mb, mb_scores=scores, top_k=3, dedup_iou=1.0, min_size=10)
    assert len(boxes) == 6 and src.tolist() == [1, 1, 1, 0, 0, 0]  # only the 0-wide SS box is too small
    boxes, _ = merge_proposals(ss_boxes=ss, mb_boxes=mb, mb_scores=scores, top_k=3, dedup_iou=1.0, min_size=10.05)
    assert len(boxes) == 0  # every box here is 10 px wide


def test_merge_suppresses_multibox_near_duplicates_before_top_k():
    ss = torch.tensor([[100.0, 100, 120, 120]])
    mb = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5], [0, 0, 10.3, 10], [30, 30, 40, 40], [60, 60, 70, 70]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    # without NMS the top 3 are three copies of one box; with NMS at 0.7 they are three different boxes
    boxes, _ = merge_proposals(ss_boxes=ss, mb_boxes=mb, mb_scores=scores, top_k=3, dedup_iou=1.0)
    torch.testing.assert_close(boxes[:3], mb[:3])
    boxes, src = merge_proposals(ss_boxes=ss, mb_boxes=mb, mb_scores=scores, top_k=3, mb_nms_iou=0.7, dedup_iou=1.0)
    torch.testing.assert_close(boxes, torch.cat([mb[[0, 3, 4]], ss]))
    assert src.tolist() == [SOURCE_MULTIBOX] * 3 + [SOURCE_SELECTIVE_SEARCH]


def test_cache_roundtrip_stale_and_atomic(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(b"pretend image bytes")
    sha = file_sha1(img)
    c = ProposalCache(tmp_path / "cache", "my/split", "selective_search", {"k": 1})
    c.prepare()
    assert json.loads((c.dir / "settings.json").read_text())["settings"] == {"k": 1}
    assert c.load("x/1", sha) is None
    c.save("x/1", {"boxes": torch.ones(3, 4), "image_sha1": sha, "seconds": 0.5})
    e = c.load("x/1", sha)
    assert e["boxes"].shape == (3, 4) and e["seconds"] == 0.5
    img.write_bytes(b"the image changed")
    assert c.load("x/1", file_sha1(img)) is None  # stale: never returned
    c.path("x/2").write_bytes(b"half a file")
    assert c.load("x/2") is None  # damaged: recomputed, not trusted
    assert not list(c.dir.glob(".tmp-*"))
    other = ProposalCache(tmp_path / "cache", "my/split", "selective_search", {"k": 2})
    assert other.dir != c.dir


def test_multibox_source_keys_its_cache_by_the_crop_settings_and_rejects_bad_ones(tmp_path):
    import pickle

    from detection.models.backbones import build_backbone
    from detection.proposals.multibox.model import MultiBox, MultiBoxConfig, save_multibox
    from detection.proposals.pipeline import MultiBoxSource

    own = tmp_path / "own.pt"  # a MultiBox with its own backbone: the one kind that takes crops
    cfg = MultiBoxConfig(input_size=64, num_priors=4, reduce_channels=8, hidden=8, global_dim=4, prior_embed_dim=2)
    save_multibox(MultiBox(backbone=build_backbone("lite0", weights=None), cfg=cfg, priors=torch.rand(4, 4)), own)
    whole = MultiBoxSource(own)
    crops = MultiBoxSource(own, crops=[[2, 0.6]])
    cut = MultiBoxSource(own, crops=[[2, 0.6]], drop_cut=True)
    keys = {settings_hash("multibox", s.settings) for s in (whole, crops, cut)}
    assert len(keys) == 3  # a cache filled with one setting is never read for another
    assert whole.settings == {"model_sha1": file_sha1(whole.path)}  # whole-image caches keep their old key
    assert pickle.loads(pickle.dumps(cut)).settings == cut.settings  # what a worker process receives
    assert not whole.shared and MultiBoxSource().shared  # the embedded head reads the classifiers' trunk
    with pytest.raises(ValueError, match="fraction"):
        MultiBoxSource(own, crops=[[2, 1.5]])
    # the embedded head (on the classifiers' trunk) takes crops as windows of their maps: its key holds the
    # window settings too
    shared = [MultiBoxSource(crops=[[2, 0.6]]), MultiBoxSource(crops=[[2, 0.6]], crop_weight=0.25),
              MultiBoxSource(crops=[[2, 0.6]], crop_prior_area=0.1)]
    assert len({settings_hash("multibox", s.settings) for s in shared}) == 3
    assert MultiBoxSource().settings == {"model_sha1": file_sha1(MultiBoxSource().path)}
    with pytest.raises(ValueError, match="crop_weight must be in"):
        MultiBoxSource(crops=[[2, 0.6]], crop_weight=0.0)
    with pytest.raises(ValueError, match="crop_prior_area must be in"):
        MultiBoxSource(crop_prior_area=1.5)
