"""The Python API: load_detector() -> detect() on a real photo, whatever form the image comes in."""
import logging

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from detection import ImageDetections, load_detector
from detection.api import ImageInputError, as_rgb_array
from detection.proposals.pipeline import MultiBoxSettings, ProposalSettings, load_proposal_settings, proposal_presets
from detection.proposals.selective_search import SelectiveSearchSettings


@pytest.fixture(scope="module")
def small_detector(tmp_path_factory):
    """The embedded default ensemble, 'paper' proposals on a 250 px wide selective search (faster, same path)."""
    paper = load_proposal_settings("paper")
    paper.selective_search.resize_width = 250
    # threads fixed: with threads=0 the count follows the machine's load from image to image, and scores then differ
    # in the last float digits, enough to reorder near-tied boxes between the image forms compared below
    return load_detector(proposals=paper, threads=2, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_detect_a_photo_in_every_form(small_detector, tmp_path):
    rgb = skimage.data.chelsea()
    path = tmp_path / "chelsea.png"  # lossless: the same pixels as the array
    Image.fromarray(rgb).save(path)
    by_array = small_detector.detect(rgb)
    assert isinstance(by_array, ImageDetections) and len(by_array) > 0
    best = by_array[0]
    assert best["name"] == "domestic cat" and best["wnid"] == "n02121808" and best["score"] > 0.5
    x1, y1, x2, y2 = best["box_xyxy"]
    assert (x2 - x1) * (y2 - y1) > 0.4 * 451 * 300  # the cat fills most of the photo
    assert (by_array.width, by_array.height) == (451, 300) and by_array.image is None
    assert {"proposals", "classify", "total"} <= set(by_array.seconds)
    for other in (str(path), path, Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1).contiguous()):
        r = small_detector.detect(other)
        assert torch.equal(r.boxes, by_array.boxes) and torch.equal(r.labels, by_array.labels)
        assert torch.allclose(r.scores, by_array.scores)
    assert small_detector.detect(path).image == str(path)
    assert [d["name"] for d in by_array.above(0.5)] == ["domestic cat"] * len(by_array.above(0.5))
    d = by_array.to_dict()
    assert d["width"] == 451 and d["detections"][0] == best and "domestic cat" in repr(by_array)
    # the detector runs with its BatchNorms folded away (inference only): the classifier's trunk and MultiBox
    bn = (torch.nn.BatchNorm2d,)
    assert small_detector.classifier.fused
    assert not any(isinstance(m, bn) for m in small_detector.classifier.modules())
    assert not any(isinstance(m, bn) for m in small_detector.proposals.mb._model.modules())


@pytest.mark.slow
def test_detect_many_in_order_and_skipping(small_detector, tmp_path, caplog):
    for name in ("chelsea", "astronaut"):
        Image.fromarray(getattr(skimage.data, name)()).save(tmp_path / f"{name}.jpg", quality=95)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [tmp_path / "chelsea.jpg", tmp_path / "broken.jpg", tmp_path / "astronaut.jpg"]
    with pytest.raises(ValueError, match="broken.jpg"):
        small_detector.detect_many(paths, progress=False)
    with caplog.at_level(logging.WARNING, logger="detection.api"):
        res = small_detector.detect_many(paths, progress=False, on_error="skip")
    assert res[1] is None and "broken.jpg" in caplog.text and "1 of 3 images skipped" in caplog.text
    assert res[0][0]["name"] == "domestic cat" and res[2][0]["name"] == "person"
    with pytest.raises(ValueError, match="on_error"):
        small_detector.detect_many(paths, on_error="ignore")


def test_image_forms_and_their_errors(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb_array(grey).shape == (3, 4, 3)
    rgba = np.zeros((5, 6, 4), np.uint8)
    assert as_rgb_array(rgba).shape == (5, 6, 3)
    assert as_rgb_array(torch.zeros(1, 5, 6, dtype=torch.uint8)).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="uint8"):
        as_rgb_array(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        as_rgb_array(torch.zeros(3, 5, 6))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        as_rgb_array(np.zeros((5, 6, 2), np.uint8))
    with pytest.raises(ValueError, match="nope.jpg: no such file"):
        as_rgb_array(tmp_path / "nope.jpg")
    with pytest.raises(ImageInputError, match="list"):
        as_rgb_array([[1, 2]])
    # a 16-bit PIL image is scaled by its range, as when the file is read from disk
    deep = Image.fromarray((np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16))
    assert deep.mode.startswith("I;16") and as_rgb_array(deep)[0, 1, 0] == round(3000 * 255 / 65535)


def test_load_detector_settings_and_errors(tmp_path):
    det = load_detector(proposals="rcnn", members=2, nms_iou=0.4, score_threshold=0.2, cache_dir=tmp_path)
    assert det.settings.members == 2 and det.settings.nms_iou == 0.4 and det.settings.score_threshold == 0.2
    assert det.proposals.mb is None and det.proposals.settings.selective_search.k_scale == 1.0
    assert "2 of 6" in repr(det) and "'rcnn'" in repr(det)
    assert not det.settings.flip and "flip=False" in repr(det)  # the test-time flip is off by default
    assert load_detector(proposals="rcnn", flip=True, cache_dir=tmp_path).settings.flip
    # MultiBox's boxes' scores are halved by default (chosen on held-out COCO photos); 1 leaves them
    assert det.settings.multibox_weight == 0.5 and "multibox_weight=0.5" in repr(det)
    assert load_detector(proposals="rcnn", multibox_weight=1, cache_dir=tmp_path).settings.multibox_weight == 1
    with pytest.raises(ValueError, match="multibox_weight must be in"):
        load_detector(proposals="rcnn", multibox_weight=-1, cache_dir=tmp_path)
    # multi-scale testing is off by default; a pyramid is kept as given and shown
    assert det.settings.image_sizes is None and "image_sizes" not in repr(det)
    ms = load_detector(proposals="rcnn", image_sizes=[600, 1200], cache_dir=tmp_path)
    assert ms.settings.image_sizes == (600, 1200) and "image_sizes=[600, 1200]" in repr(ms)
    with pytest.raises(ValueError, match="image_sizes must be positive"):
        load_detector(proposals="rcnn", image_sizes=[], cache_dir=tmp_path)
    assert load_detector(cache_dir=tmp_path).proposals.settings.multibox.top_k == 200  # paper by default
    with pytest.raises(ValueError, match="unknown proposal preset 'fast'.*paper, paper_crops, rcnn"):
        load_detector(proposals="fast")
    with pytest.raises(ValueError, match="members must be in 1..6"):
        load_detector(members=7, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no_model.pt"):
        load_detector(tmp_path / "no_model.pt")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_detector(device="cuda")
    assert {"paper", "rcnn"} <= set(proposal_presets())


def test_proposal_settings_from_yaml_and_objects(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("selective_search:\n  k_scale: 3.0\nmultibox:\n  top_k: 50\n")
    s = load_proposal_settings(f)
    assert s.selective_search.k_scale == 3.0 and s.multibox.top_k == 50 and s.dedup_iou == 0.95
    mine = ProposalSettings(selective_search=SelectiveSearchSettings(k_scale=2.0), multibox=MultiBoxSettings(top_k=0))
    assert load_proposal_settings(mine) is mine
    f.write_text("selective_search:\n  k_scale: 3.0\nnms: 0.5\n")
    with pytest.raises(ValueError, match="unknown proposal settings: nms"):
        load_proposal_settings(f)
    with pytest.raises(FileNotFoundError, match="other.yaml"):
        load_proposal_settings(tmp_path / "other.yaml")


@pytest.mark.slow
def test_imagenet_prior_names_a_class_without_training_boxes(small_detector):
    """The astronaut's helmet (lower right, about (280, 345, 512, 512)): 'helmet' has no training box, so the region
    classifiers alone cannot name it; fused with the ImageNet prior the default does, and the rocket (no DET class)
    gains nothing."""
    from detection.api import ObjectDetector
    from detection.detector import DetectorSettings
    from detection.labels import det200

    assert small_detector.settings.imagenet_prior  # on by default
    helmet = det200().index_of_name("helmet")
    assert det200().wnid(helmet) not in small_detector.classifier.class_boxes
    img = skimage.data.astronaut()
    boxes, source = small_detector.proposals.propose(img)
    alone = ObjectDetector(classifier=small_detector.classifier,
                           settings=DetectorSettings(imagenet_prior=False, score_threshold=0.05))
    off = alone.detect(img, boxes=boxes, source=source)
    on = small_detector.detect(img, boxes=boxes, source=source)
    assert helmet not in off.labels.tolist()
    found = on.boxes[on.labels == helmet]
    assert len(found) > 0 and "imagenet_prior" in on.seconds
    from torchvision.ops import box_iou
    assert box_iou(found, torch.tensor([[280.0, 345.0, 512.0, 512.0]])).max() >= 0.5
    # what the region classifiers found stays (person first, same score)
    assert on[0]["name"] == off[0]["name"] == "person" and on[0]["score"] == pytest.approx(off[0]["score"], abs=1e-3)
    rocket = skimage.data.rocket()
    r_on = small_detector.detect(rocket)
    assert len(r_on.above(0.3)) == 0
