"""The ImageNet prior: the fold of the 1 000 ImageNet classes into DET-200, the pyramid levels, real photos."""
import pytest
import skimage.data
import torch

from detection.labels import det200, imagenet_map
from detection.models.imagenet_prior import ImageNetPrior, build_imagenet_prior, imagenet_fold_matrix, resize_scale


def test_fold_matrix_follows_the_shipped_wordnet_table():
    fold = imagenet_fold_matrix()
    assert fold.shape == (1000, 201)
    assert torch.equal(fold.sum(1), torch.ones(1000))  # every synset in exactly one column
    assert int(fold[:, 1:].sum()) == 483  # 483 synsets fall under a DET class ...
    assert (fold[:, 1:].sum(0) >= 1).all()  # ... and every one of the 200 classes has at least one
    space = det200()
    assert fold[0, 0] == 1  # tench: no DET class
    assert fold[1, space.index_of_name("goldfish")] == 1
    assert int(fold[:, space.index_of_name("dog")].sum()) == 118
    # the same map as the readers use (detection.labels.imagenet_map), row by row in sorted-wnid order
    cmap = imagenet_map()
    wnids = sorted(cmap.to_det)
    for i in (0, 1, 151, 281, 999):
        want = cmap.to_det[wnids[i]] or 0
        assert fold[i, want] == 1


def test_resize_scale():
    assert resize_scale(451, 300, size=600, max_size=1000, max_upscale=None) == pytest.approx(2.0)
    assert resize_scale(2000, 300, size=600, max_size=1000, max_upscale=None) == pytest.approx(0.5)  # long side
    assert resize_scale(64, 64, size=600, max_size=1000, max_upscale=4) == 4.0
    assert resize_scale(64, 64, size=600, max_size=1000, max_upscale=None) == pytest.approx(600 / 64)


@pytest.fixture(scope="module")
def prior():
    torch.set_num_threads(2)
    return build_imagenet_prior(levels=(600, 300))


def test_levels_and_assignment(prior):
    scales = prior.level_scales(451, 300)
    assert scales == pytest.approx([2.0, 1.0])
    # context window of a 192 px box is 224 px: at scale 1 it matches exactly -> level 1 (300 px); a 96 px box has a
    # 112 px window, 224 at scale 2 -> level 0
    boxes = torch.tensor([[0.0, 0.0, 192.0, 192.0], [10.0, 10.0, 106.0, 106.0]])
    assert prior.assign_levels(boxes, scales).tolist() == [1, 0]
    assert prior.level_scales(64, 64) == pytest.approx([600 / 64, 300 / 64])
    capped = ImageNetPrior(backbone=prior.backbone, levels=(600, 300), max_upscale=4)  # a 64 px photo: one level
    assert capped.level_scales(64, 64) == [4.0, 4.0]
    assert capped.assign_levels(boxes, [4.0, 4.0]).tolist() == [0, 0]  # ties go to the first level


def test_frozen_and_clear_errors(prior):
    prior.train()
    assert not prior.training and not any(p.requires_grad for p in prior.parameters())
    with pytest.raises(ValueError, match="levels"):
        ImageNetPrior(backbone=prior.backbone, levels=())


def test_real_photo_cat_and_pyramid(prior):
    img = skimage.data.chelsea()  # 451 x 300, a cat
    boxes = torch.tensor([[60.0, 20.0, 420.0, 300.0],   # the cat: its window is read at 300 px
                          [140.0, 90.0, 240.0, 180.0],  # the cat's face: read at 600 px
                          [0.0, 0.0, 451.0, 300.0]])
    probs = prior.predict(img, boxes)
    assert probs.shape == (3, 201) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-4)
    cat = det200().index_of_name("domestic cat")
    assert int(probs[0, 1:].argmax()) + 1 == cat and probs[0, cat] > 0.3
    assert int(probs[2, 1:].argmax()) + 1 == cat
    # each row equals a one-level prior's row at the level the pyramid assigns it
    level = prior.assign_levels(boxes, prior.level_scales(451, 300))
    for k, size in enumerate(prior.levels):
        one = ImageNetPrior(backbone=prior.backbone, levels=(size,))
        sel = (level == k).nonzero().flatten()
        assert sel.numel() > 0
        assert torch.allclose(one.predict(img, boxes[sel]), probs[sel], atol=1e-5)
    assert prior.predict(img, torch.zeros(0, 4)).shape == (0, 201)


def test_rocket_is_no_det_class(prior):
    """A space rocket is none of the 200 classes: most of the mass stays outside them (column 0)."""
    img = skimage.data.rocket()
    h, w = img.shape[:2]
    probs = prior.predict(img, torch.tensor([[0.0, 0.0, float(w), float(h)]]))
    assert probs[0, 0] > 0.5


# ------------------------------------------------------------------ trust and fusion

def test_class_trust_from_box_counts():
    from detection.models import imagenet_prior as ip

    space = det200()
    dog, cat, snake = (space.index_of_name(n) for n in ("dog", "domestic cat", "snake"))
    boxes = {space.wnid(dog): [60, 0], space.wnid(cat): [20, 100], space.wnid(snake): [0, 25]}
    t = ip.class_trust(boxes, prior_boxes=20.0)
    assert t.shape == (201,) and t[0] == 1.0
    w = ip.POSITIVES_ONLY_WEIGHT
    assert t[dog] == pytest.approx(60 / 80) and t[cat] == pytest.approx((20 + 100 * w) / (40 + 100 * w))
    assert t[space.index_of_name("guitar")] == 0.0  # never trained
    assert t[snake] == pytest.approx(25 * w / (25 * w + 20))  # positives-only boxes count w each
    hard = ip.class_trust(boxes, prior_boxes=0.0)  # 0: every class with a box is trusted fully
    assert hard[dog] == 1.0 and hard[space.index_of_name("guitar")] == 0.0
    with pytest.raises(KeyError):
        ip.class_trust({"n99999999": [1, 0]}, prior_boxes=20.0)


def test_fuse_imagenet_by_hand():
    from detection.detector import fuse_imagenet

    probs = torch.tensor([[0.2, 0.5, 0.2, 0.1],    # objectness 0.8
                          [0.9, 0.05, 0.05, 0.0]])  # objectness 0.1
    prior = torch.tensor([[0.3, 0.1, 0.1, 0.5],
                          [0.0, 0.0, 0.0, 1.0]])
    trust = torch.tensor([1.0, 1.0, 0.5, 0.0])
    out = fuse_imagenet(probs, prior, trust)
    assert torch.equal(out[:, 0], probs[:, 0]) and torch.allclose(out[:, 1], probs[:, 1])  # trusted: unchanged
    # half trusted: noisy-OR of the classifiers' 0.2 and half the evidence 0.8 * 0.1
    assert out[0, 2] == pytest.approx(1 - (1 - 0.2) * (1 - 0.5 * 0.8 * 0.1))
    assert out[0, 3] == pytest.approx(1 - 0.9 * (1 - 0.8 * 0.5))
    assert out[1, 3] == pytest.approx(0.1)  # never trained, prior certain: the box's objectness
    assert (out[:, 1:] <= 2 * (1 - probs[:, :1]) + 1e-6).all()  # the bound detect() relies on
    with pytest.raises(ValueError, match="fit"):
        fuse_imagenet(probs, prior[:, :3], trust)


def test_fuse_imagenet_area_power_prefers_the_whole_object():
    from detection.detector import fuse_imagenet

    # two boxes the classifiers find equally object-like, the prior equally sure of class 1: the whole object
    # (half the image) against a part of it (1/32 of the image)
    probs = torch.tensor([[0.4, 0.0, 0.6], [0.4, 0.0, 0.6]])
    prior = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.9, 0.1]])
    trust = torch.tensor([1.0, 0.0, 1.0])
    area = torch.tensor([0.5, 1 / 32])
    flat = fuse_imagenet(probs, prior, trust)
    assert flat[0, 1] == flat[1, 1]
    out = fuse_imagenet(probs, prior, trust, box_area=area, area_power=0.25)
    assert out[0, 1] == pytest.approx(0.6 * 0.9 * 0.5 ** 0.25)
    assert out[1, 1] == pytest.approx(0.6 * 0.9 * (1 / 32) ** 0.25)
    assert out[0, 1] > out[1, 1]
    assert torch.allclose(out[:, 2], probs[:, 2])  # a trusted class is not touched
    with pytest.raises(ValueError, match="box_area"):
        fuse_imagenet(probs, prior, trust, area_power=0.25)
    with pytest.raises(ValueError, match="area_power"):
        fuse_imagenet(probs, prior, trust, box_area=area, area_power=-1.0)


def test_score_variants_equal_detectors_built_with_their_settings(prior):
    """Detector.score with another variant's settings (compare_detectors' one-pass sweep) scores exactly as a
    detector built with those settings does."""
    from dataclasses import replace

    from detection.detector import Detector, DetectorSettings
    from detection.models.region import load_ensemble

    model = load_ensemble().fuse_for_inference()
    base = DetectorSettings(threads=None)
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(40, 2, generator=g) * 200
    boxes = torch.cat([boxes, boxes + 20 + torch.rand(40, 2, generator=g) * 200], 1)
    probs = torch.rand(40, 201, generator=g).softmax(-1)
    p = torch.rand(40, 201, generator=g).softmax(-1)
    area = torch.rand(40, generator=g)
    source = (torch.arange(40) % 3 == 0).long()
    det = Detector(classifier=model, settings=base, prior=prior)
    for variant in (replace(base, prior_boxes=5.0, nms_iou=0.5), replace(base, multibox_weight=1.0),
                    replace(base, prior_area_power=0.0, prior_boxes=5.0)):
        want = Detector(classifier=model, settings=variant, prior=prior).score(boxes, probs, source=source, prior=p,
                                                                               box_area=area)
        got = det.score(boxes, probs, source=source, prior=p, box_area=area, settings=variant)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    assert set(det._trusts) == {20.0, 5.0}  # a variant's trust computed once, kept


def test_install_replaces_the_embedded_file_whole(tmp_path):
    from detection.training.recipe import install

    trained, dest = tmp_path / "out" / "region.pt", tmp_path / "pkg" / "weights" / "region_lite0.pt"
    trained.parent.mkdir()
    trained.write_bytes(b"new weights")
    said = []
    install(trained, dest, log=said.append)
    assert dest.read_bytes() == b"new weights" and str(dest) in said[0]
    assert [p.name for p in dest.parent.iterdir()] == ["region_lite0.pt"]  # no temporary file left
