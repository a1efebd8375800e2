"""One trunk pass per photo: the MultiBox head on the region classifiers' trunk maps, the classifiers and the ImageNet
prior reading the same pass, selective search beside it, and the thread settings reaching both stages."""
import pytest
import torch

from detection.proposals.multibox.model import MultiBoxConfig, SharedMultiBox, load_multibox, save_multibox
from detection.proposals.multibox.train import FeatureSet, TrainSettings, train_multibox

TINY = dict(num_priors=12, reduce_channels=8, hidden=16, global_dim=8, prior_embed_dim=4, roi_size=2, mid_level=True,
            trunk="region")


def tiny_priors(k=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * 0.5
    return torch.cat([xy, xy + 0.2 + torch.rand(k, 2, generator=g) * 0.3], 1)


def shared_head(trunk_id="lite0:test", seed=0):
    torch.manual_seed(seed)
    m = SharedMultiBox(cfg=MultiBoxConfig(**TINY), priors=tiny_priors(), trunk_id=trunk_id).eval()
    with torch.no_grad():  # away from the priors, so that boxes differ from them
        m.head.delta.weight.normal_(std=0.05)
        m.head.conf.weight.normal_(std=0.5)
    return m


def test_region_trunk_needs_the_stride16_map_and_a_known_trunk():
    with pytest.raises(ValueError, match="mid_level must be true"):
        MultiBoxConfig(trunk="region", mid_level=False)
    with pytest.raises(ValueError, match="trunk must be one of"):
        MultiBoxConfig(trunk="shared")


def test_shared_head_saves_and_loads_with_its_trunk_id(tmp_path):
    m = shared_head("lite0:abc")
    save_multibox(m, tmp_path / "mb.pt")
    back = load_multibox(tmp_path / "mb.pt")
    assert isinstance(back, SharedMultiBox) and back.trunk_id == "lite0:abc" and back.cfg.trunk == "region"
    last, mid = torch.randn(1, 320, 5, 7), torch.randn(1, 112, 10, 14)
    b0, s0 = m.propose_from_maps(last, mid, width=224, height=160)
    b1, s1 = back.propose_from_maps(last, mid, width=224, height=160)
    torch.testing.assert_close(b0, b1, atol=0.05, rtol=0)  # pixels (the file keeps the head in half precision)
    assert (s0[:-1] >= s0[1:]).all() and b0.shape == (12, 4)
    assert (b0[:, 0] >= 0).all() and (b0[:, 2] <= 224).all() and (b0[:, 3] <= 160).all()


def test_feature_batches_group_one_map_size_and_count_as_ceil_per_size():
    sizes = [(5, 7)] * 5 + [(7, 5)] * 3 + [(6, 6)]
    fs = FeatureSet(feats=[torch.zeros(4, h, w) for h, w in sizes], gts=[torch.zeros(0, 4)] * 9,
                    sizes=[(1, 1)] * 9, ids=[str(i) for i in range(9)],
                    mids=[torch.zeros(2, 2 * h, 2 * w) for h, w in sizes])
    order = [8, 0, 5, 1, 2, 6, 3, 7, 4]
    batches = fs.batches(order, 2)
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert all(len({sizes[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert len(batches) == 3 + 2 + 1  # ceil(5/2) + ceil(3/2) + 1, whatever the order
    assert batches[0] == [8] and batches[1] == [0, 1]
    with pytest.raises(ValueError, match="different sizes"):
        fs.maps([0, 5])
    last, mid, fine = fs.maps([5, 6])
    assert last.shape == (2, 4, 7, 5) and mid.shape == (2, 2, 14, 10) and fine is None


def test_feature_batches_split_photos_whose_stride8_maps_differ():
    """Two photos can share their stride-32 and stride-16 map sizes and still differ at stride 8 (600x800 and 600x792
    photos: 75x100 against 75x99): they go to separate batches, and maps() of both is refused by name."""
    fs = FeatureSet(feats=[torch.zeros(4, 19, 25)] * 3, gts=[torch.zeros(0, 4)] * 3, sizes=[(1, 1)] * 3,
                    ids=["a", "b", "c"], mids=[torch.zeros(2, 38, 50)] * 3,
                    fines=[torch.zeros(1, 75, 100), torch.zeros(1, 75, 99), torch.zeros(1, 75, 100)])
    assert fs.batches([0, 1, 2], 8) == [[0, 2], [1]]
    assert fs.maps([0, 2])[2].shape == (2, 1, 75, 100)
    with pytest.raises(ValueError, match="different sizes"):
        fs.maps([0, 1])


def test_training_on_maps_of_several_sizes_lowers_the_loss_and_resumes(tmp_path):
    g = torch.Generator().manual_seed(0)
    sizes = [(3, 4), (4, 3), (3, 4), (4, 3), (3, 4), (4, 4)]
    gts = [tiny_priors(2, seed=i)[:1 + i % 2] for i in range(6)]
    feats = [torch.randn(320, h, w, generator=g).half() for h, w in sizes]
    # a map that says where its object is: the mean of the box's cells is raised
    for f, gt in zip(feats, gts):
        h, w = f.shape[1:]
        for x0, y0, x1, y1 in gt.tolist():
            f[:8, int(y0 * h):max(int(y0 * h) + 1, int(y1 * h)), int(x0 * w):max(int(x0 * w) + 1, int(x1 * w))] += 3
    fs = FeatureSet(feats=feats, gts=gts, sizes=[(128, 96)] * 6, ids=[str(i) for i in range(6)],
                    mids=[torch.randn(112, 2 * h, 2 * w, generator=g).half() for h, w in sizes])
    settings = TrainSettings(epochs=4, batch_size=2, lr=3e-3)
    m = shared_head()
    rec = train_multibox(m, fs, settings=settings, out_dir=tmp_path / "a", progress=False, log=lambda *_: None)
    losses = [e["loss"] for e in rec["epochs"]]
    assert losses[-1] < losses[0]
    # killed during epoch 2 (its log line raises before its checkpoint), then run again: the same head
    class Stop(Exception):
        pass

    def stop_at_second(msg, calls=[]):
        calls.append(msg)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        train_multibox(shared_head(), fs, settings=settings, out_dir=tmp_path / "b", progress=False,
                       log=stop_at_second)
    torch.manual_seed(123)  # a fresh process: another global RNG state
    resumed = shared_head()
    msgs = []
    rec2 = train_multibox(resumed, fs, settings=settings, out_dir=tmp_path / "b", progress=False, log=msgs.append)
    assert msgs[0].startswith("resumed from") and len(rec2["epochs"]) == 4
    for p, q in zip(m.head.state_dict().values(), resumed.head.state_dict().values()):
        torch.testing.assert_close(p, q)


# ------------------------------------------------------------------ on the embedded classifiers' trunk


@pytest.fixture(scope="module")
def ensemble():
    from detection.models.region import load_ensemble

    return load_ensemble().fuse_for_inference()


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return skimage.data.chelsea()


def test_trunk_maps_are_the_roi_map_and_the_stride16_map_of_one_pass(ensemble, photo):
    x, _ = ensemble.prepare_image(photo)
    with torch.inference_mode():
        last, mid = ensemble.trunk_maps(x[None])
        torch.testing.assert_close(last, ensemble.roi_map(x[None]))
        mid_alone = ensemble.backbones[0].forward_levels(x[None])[0]
    torch.testing.assert_close(mid, mid_alone)
    assert last.shape[1] == 320 and mid.shape[1] == 112
    assert (mid.shape[-1] + 1) // 2 == last.shape[-1] and (mid.shape[-2] + 1) // 2 == last.shape[-2]  # strides 16, 32


def test_classifiers_reuse_a_given_pass_exactly(ensemble, photo):
    boxes = torch.tensor([[60.0, 20, 420, 300], [10, 10, 100, 120], [200, 50, 440, 280]])
    x, scale = ensemble.prepare_image(photo)
    with torch.inference_mode():
        last, _ = ensemble.trunk_maps(x[None])
    for flip in (False, True):
        want = ensemble.predict(photo, boxes, flip=flip)
        got = ensemble.predict(photo, boxes, flip=flip, view=(x, scale, last))
        torch.testing.assert_close(got, want)


def test_backbone_continues_from_the_stride16_map():
    from detection.models.backbones import build_backbone, fold_batchnorm

    bb = build_backbone("lite0", weights=None).eval()
    fold_batchnorm(bb)
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        mid, last = bb.forward_levels(x)
        torch.testing.assert_close(bb.forward_from_mid(mid), last)


@pytest.fixture(scope="module")
def shared_file(tmp_path_factory, ensemble):
    path = tmp_path_factory.mktemp("mb") / "shared.pt"
    save_multibox(shared_head(ensemble.trunk_id), path)
    return path


@pytest.mark.parametrize("crops", [[], [[2, 0.6], [3, 0.45]]])
def test_source_on_its_own_pass_equals_the_detectors_shared_pass(shared_file, photo, crops):
    """The shared-feature MultiBox gives the same boxes from the detector's trunk pass as from its own, with and
    without crop windows (the crop settings reach the detector's pass)."""
    from detection import load_detector
    from detection.proposals.pipeline import load_proposal_settings

    settings = load_proposal_settings("paper")
    settings.multibox.model = str(shared_file)
    settings.multibox.crops = crops
    settings.multibox.crop_prior_area = 1.0  # (every tiny prior runs in the windows)
    det = load_detector(proposals=settings, imagenet_prior=False, flip=False)
    assert det.shared_multibox is not None and det.shared_multibox.crops == crops
    own_boxes, own_scores = det.proposals.mb(photo)
    seconds = {}
    boxes, source, view, mid = det._propose_shared(photo, seconds)
    want_boxes, want_source = det.proposals.merge(det.proposals.ss(photo)[0], own_boxes, own_scores)
    torch.testing.assert_close(boxes, want_boxes)
    assert torch.equal(source, want_source)
    if crops:  # the windows' slots add boxes (NMS 0.7 removes near-duplicates of the whole image's)
        assert 12 < len(own_boxes) <= 12 * 14 and int((source == 1).sum()) > 12  # (cut boxes dropped)
    else:
        assert int((source == 1).sum()) == 12
    assert {"trunk", "multibox", "selective_search"} <= set(seconds)
    # the detection from the shared pass equals the detection from the same proposals given as boxes
    r_shared = det.detect(photo)
    r_boxes = det.detect(photo, boxes=want_boxes, source=want_source)
    torch.testing.assert_close(r_shared.scores, r_boxes.scores)
    assert torch.equal(r_shared.labels, r_boxes.labels)


def test_overlap_and_thread_settings_reach_both_stages(shared_file, photo):
    from detection import load_detector
    from detection.proposals.pipeline import load_proposal_settings

    settings = load_proposal_settings("paper")
    settings.multibox.model = str(shared_file)
    before = torch.get_num_threads()
    try:
        det = load_detector(proposals=settings, imagenet_prior=False, flip=False, threads=1, overlap_proposals=False)
        assert torch.get_num_threads() == 1 and det.settings.threads == 1
        import cv2

        assert cv2.getNumThreads() == 1
        serial = det.detect(photo)
        assert "selective_search_wait" not in serial.seconds
        det.settings.overlap_proposals = True
        overlapped = det.detect(photo)
        assert "selective_search_wait" in overlapped.seconds
        torch.testing.assert_close(overlapped.scores, serial.scores)
        torch.testing.assert_close(overlapped.boxes, serial.boxes)
        assert det.last_threads == 1
        torch.set_num_threads(2)
        det.settings.threads = 1  # a fixed count is set again before each image
        det.detect(photo)
        assert det.last_threads == 1 and torch.get_num_threads() == 1
        # while selective search runs in its thread, the trunk leaves it a core; the classifiers get all again
        seen, trunk_maps = [], det.classifier.trunk_maps
        det.classifier.trunk_maps = lambda *a, **k: (seen.append(torch.get_num_threads()), trunk_maps(*a, **k))[1]
        det.settings.threads = 2
        two = det.detect(photo)
        det.settings.overlap_proposals = False
        det.detect(photo)
        assert seen == [1, 2] and det.last_threads == 2 and torch.get_num_threads() == 2
        torch.testing.assert_close(two.scores, serial.scores)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        load_detector(threads=-1)


def test_adapting_threads_stay_within_the_process_threads():
    """threads=0 never goes above the threads the process had (OMP_NUM_THREADS, torchrun's one a rank), even after
    an earlier detector set fewer."""
    from detection.detector import process_threads, set_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert process_threads() == 2
        set_threads(1)  # as a detector adapting on a busy machine
        assert torch.get_num_threads() == 1 and process_threads() == 2
        torch.set_num_threads(1)  # the user's own setting is taken as the new limit ...
        set_threads(1)
        assert process_threads() == 2  # ... unless it equals what the detector set last
        torch.set_num_threads(3)
        assert process_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_free_cores_counts_other_processes_running():
    """threads=0 adapts to the machine through free_cores: busy processes beside this one take cores away."""
    import os
    import subprocess
    import sys
    import time

    from detection.detector import free_cores

    cores = len(os.sched_getaffinity(0))
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert free_cores(samples=5) == 0
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert 0 <= free_cores() <= cores


def test_a_head_of_another_trunk_is_refused(tmp_path, ensemble):
    from detection import load_detector
    from detection.proposals.pipeline import MultiBoxSource, load_proposal_settings

    path = tmp_path / "other.pt"
    save_multibox(shared_head("lite0:0123456789abcdef"), path)
    settings = load_proposal_settings("paper")
    settings.multibox.model = str(path)
    with pytest.raises(ValueError, match="retrain it on their maps"):
        load_detector(proposals=settings, imagenet_prior=False)
    with pytest.raises(ValueError, match="retrain it on their maps"):
        MultiBoxSource(path).check_trunk(ensemble)


def test_head_on_a_window_is_the_head_on_its_priors_mapped_into_the_image():
    """A window of the maps is the whole image for the head: the slot of prior p in window W pools what the whole
    image's slot of prior W(p) pools, and predicts the same offset (in the window's frame) and logit.  (The
    global descriptor, pooled inside the window, is held constant here by zeroing its weights.)"""
    m = shared_head()
    with torch.no_grad():
        m.head.glob[0].weight.zero_()
    last, mid = torch.randn(1, 320, 6, 8), torch.randn(1, 112, 12, 16)
    windows = torch.tensor([[0.25, 0.0, 0.75, 0.5], [0.1, 0.3, 0.6, 0.9]])
    ids = torch.tensor([0, 3, 5, 11])
    P = m.priors[ids]
    with torch.no_grad():
        wb, wl = m.head(last, P, mid, windows=windows, prior_ids=ids)
        assert wb.shape == (2, 4, 4) and wl.shape == (2, 4)
        for k, w in enumerate(windows):
            size, off = (w[2:] - w[:2]).repeat(2), w[:2].repeat(2)
            mapped = P * size + off  # the priors in the image's coordinates
            b, lg = m.head(last, mapped, mid, prior_ids=ids)
            torch.testing.assert_close(wl[k], lg[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(wb[k] - P, b[0] - mapped, atol=1e-5, rtol=0)  # the same offset, in its frame
        with pytest.raises(ValueError, match="pass window_image"):
            m.head(last.repeat(2, 1, 1, 1), P, mid.repeat(2, 1, 1, 1), windows=windows, prior_ids=ids)


def test_windows_of_a_batch_equal_each_image_alone():
    """Training cuts one window from each image of a batch (``window_image=``): the same slots as the window on its
    image alone, the global descriptor included."""
    m = shared_head()
    last, mid = torch.randn(2, 320, 6, 8), torch.randn(2, 112, 12, 16)
    windows = torch.tensor([[0.25, 0.0, 0.75, 0.5], [0.1, 0.3, 0.6, 0.9], [0.0, 0.0, 0.5, 0.5]])
    image = torch.tensor([1, 0, 1])
    ids = torch.tensor([1, 2, 7])
    with torch.no_grad():
        wb, wl = m.head(last, m.priors[ids], mid, windows=windows, prior_ids=ids, window_image=image)
        for k, (w, i) in enumerate(zip(windows, image.tolist())):
            b, lg = m.head(last[i:i + 1], m.priors[ids], mid[i:i + 1], windows=w[None], prior_ids=ids)
            torch.testing.assert_close(wb[k], b[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(wl[k], lg[0], atol=1e-5, rtol=0)
        assert not torch.allclose(wl[0], wl[2])  # another window of the same image: other slots
        with pytest.raises(ValueError, match="window_image must be"):
            m.head(last, m.priors[ids], mid, windows=windows, prior_ids=ids, window_image=image[:2])


def test_crop_windows_add_slots_of_small_priors_weighted_and_inside_their_windows():
    m = shared_head()
    last, mid = torch.randn(1, 320, 5, 7), torch.randn(1, 112, 10, 14)
    W, H = 224, 160
    whole_b, whole_s = m.propose_from_maps(last, mid, width=W, height=H)
    area = (m.priors[:, 2] - m.priors[:, 0]) * (m.priors[:, 3] - m.priors[:, 1])
    limit = float(area.median())
    n_small = int((area < limit).sum())
    assert 0 < n_small < 12
    b, s = m.propose_from_maps(last, mid, width=W, height=H, crops=[[2, 0.6]], crop_prior_area=limit)
    assert b.shape == (12 + 4 * n_small, 4) and (s[:-1] >= s[1:]).all()
    b1, s1 = m.propose_from_maps(last, mid, width=W, height=H, crops=[[2, 0.6]], crop_prior_area=limit,
                                 crop_weight=0.5)
    # the whole image's boxes and confidences are unchanged; the windows' confidences are halved
    whole = {tuple(x) for x in torch.cat([whole_b, whole_s[:, None]], 1).tolist()}
    got = {tuple(x) for x in torch.cat([b1, s1[:, None]], 1).tolist()}
    assert whole <= got
    extra = sorted(v for *_, v in got - whole)
    full = sorted(v for *_, v in {tuple(x) for x in torch.cat([b, s[:, None]], 1).tolist()} - whole)
    torch.testing.assert_close(torch.tensor(extra), torch.tensor(full) * 0.5)
    # each window's boxes lie inside it (clipped to it): the 2 x 2 windows are 134 x 96 px at the corners
    from detection.proposals.multibox.model import crop_windows

    wins = torch.tensor(crop_windows(W, H, levels=[[2, 0.6]])[1:], dtype=torch.float32)
    wb = b[~torch.tensor([tuple(x) in {tuple(y) for y in whole_b.tolist()} for x in b.tolist()])]
    inside = ((wb[:, None, :2] >= wins[None, :, :2] - 1e-3) & (wb[:, None, 2:] <= wins[None, :, 2:] + 1e-3)).all(-1)
    assert inside.any(1).all()
    # drop_cut removes the windows' boxes that reach an inner edge; no prior small enough: the whole image alone
    bc, _ = m.propose_from_maps(last, mid, width=W, height=H, crops=[[2, 0.6]], crop_prior_area=limit,
                                drop_cut=True)
    assert 12 <= len(bc) <= len(b)
    b0, s0 = m.propose_from_maps(last, mid, width=W, height=H, crops=[[2, 0.6]], crop_prior_area=1e-6)
    assert torch.equal(b0, whole_b) and torch.equal(s0, whole_s)


def test_imagenet_prior_continues_from_the_classifiers_pass(photo):
    from detection import load_detector

    det = load_detector(flip=False)
    assert det.prior_shares_mid
    boxes = torch.tensor([[60.0, 20, 420, 300], [10, 10, 100, 120], [0, 0, 451, 300]])
    x, scale = det.classifier.prepare_image(photo)
    with torch.inference_mode():
        _, mid = det.classifier.trunk_maps(x[None])
    torch.testing.assert_close(det.prior.predict(photo, boxes, mid=(scale, mid)), det.prior.predict(photo, boxes))


@pytest.mark.parametrize("smooth", [True, False])
def test_fine_level_pools_small_priors_from_the_stride8_map_and_the_others_not(smooth):
    priors = torch.tensor([[0.1, 0.1, 0.15, 0.15], [0.0, 0.0, 0.9, 0.9], [0.5, 0.5, 0.56, 0.58], [0.2, 0.3, 0.8, 0.7]])
    cfg = MultiBoxConfig(**{**TINY, "num_priors": 4, "fine_level": True, "fine_cells": 4.0, "fine_smooth": smooth})
    torch.manual_seed(0)
    m = SharedMultiBox(cfg=cfg, priors=priors).eval()
    with torch.no_grad():
        m.head.delta.weight.normal_(std=0.1)
    last, mid, fine = torch.randn(1, 320, 6, 8), torch.randn(1, 112, 12, 16), torch.randn(1, 40, 24, 32)
    with torch.no_grad():
        b0, l0 = m(last, mid, fine)
        b1, l1 = m(last, mid, fine + torch.randn_like(fine))
    # context windows on the 12 x 16 stride-16 map: priors 0 and 2 span under 4 cells, 1 and 3 far more
    changed = ((b0 - b1).abs().amax(-1) > 0)[0] | ((l0 - l1).abs() > 0)[0]
    assert changed.tolist() == [True, False, True, False]
    # the light branch has no 3x3 conv on the stride-8 map: only the 1x1 lateral's weights are added for it
    n3x3 = sum(p.numel() for p in m.head.smooth8.parameters())
    assert (n3x3 == 0) == (not smooth)
    with pytest.raises(ValueError, match="stride-8 map too"):
        m(last, mid)
    with pytest.raises(ValueError, match="needs trunk='region'"):
        MultiBoxConfig(fine_level=True)


def test_paper_crops_preset_runs_the_multibox_with_its_own_trunk_on_crops(photo):
    """The preset of the MultiBox network with its own backbone (14 windows a photo) stays selectable, by Python and
    by Hydra alike."""
    import sys

    from hydra import compose, initialize_config_dir
    from torchvision.ops import box_iou

    from conftest import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "tools"))
    from detection import config as hs
    from detection.proposals.pipeline import MultiBoxSource, load_proposal_settings

    hs.register_schemas()
    s = load_proposal_settings("paper_crops")
    assert s.selective_search.k_scale == 2.0 and s.multibox.top_k == 200 and s.multibox.crops == [[2, 0.6], [3, 0.45]]
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_map", overrides=["proposals=paper_crops", "data_root=/data"])
    assert hs.proposal_settings(cfg.proposals) == s
    src = MultiBoxSource(s.multibox.model, crops=s.multibox.crops, drop_cut=s.multibox.drop_cut)
    assert not src.shared and src.path.name == "multibox_lite0_crops.pt"
    boxes, scores = src(photo)
    assert float(box_iou(boxes[:5], torch.tensor([[60.0, 20, 420, 300]])).max()) > 0.7  # the cat


def test_region_features_are_the_trunk_maps_cached_with_skips_reported_and_reused(tiny_voc, tmp_path, ensemble,
                                                                                   capsys):
    from detection.data import read_voc
    from detection.data.image_io import read_image_rgb
    from detection.proposals.multibox.train import compute_region_features

    ds = read_voc(tiny_voc, name="tiny")
    fs = compute_region_features(ds, ensemble, cache_dir=tmp_path, fine=True, progress=False)
    assert "broken.jpg" in capsys.readouterr().out and len(fs.ids) == len(ds) - 1  # the corrupt photo, reported
    r = next(r for r in ds.records if "chelsea" in str(r.path))
    i = fs.ids.index(r.image_id)
    x, _ = ensemble.prepare_image(read_image_rgb(r.path))
    with torch.inference_mode():
        want = ensemble.trunk_maps(x[None], fine=True)
    for got, w in zip((fs.feats[i], fs.mids[i], fs.fines[i]), want):
        torch.testing.assert_close(got.float(), w[0].half().float())
    torch.testing.assert_close(fs.gts[i] * torch.tensor([451.0, 300, 451, 300]), r.boxes)
    chunks = sorted(tmp_path.glob("*/chunk*.pt"))
    stamp = [c.stat().st_mtime_ns for c in chunks]
    again = compute_region_features(ds, ensemble, cache_dir=tmp_path, fine=True, progress=False)  # from the cache
    assert [c.stat().st_mtime_ns for c in chunks] == stamp and again.ids == fs.ids
    assert all(torch.equal(a, b) for a, b in zip(again.fines, fs.fines))
    plain = compute_region_features(ds, ensemble, cache_dir=tmp_path, progress=False)  # without fine: cached apart
    assert plain.fines is None and len(sorted(tmp_path.glob("*/chunk*.pt"))) == 2 * len(chunks)


@pytest.mark.slow
def test_train_multibox_tool_trains_resumes_and_saves_a_usable_head(tiny_voc, tmp_path):
    """tools/train_multibox.py end to end on real photos (the shipped recipe: a head on the embedded classifiers'
    trunk), then again with more epochs: it resumes, and the file it writes serves the proposal stage."""
    import subprocess
    import sys

    from conftest import PROJECT_ROOT
    from detection.models.region import load_ensemble
    from detection.proposals.pipeline import ProposalSettings, ProposalStage

    common = [sys.executable, "tools/train_multibox.py", "dataset=voc", f"dataset.root={tiny_voc}", "dataset.name=tiny",
              f"cache_dir={tmp_path / 'cache'}", "model.num_priors=8", "train.batch_size=2", "dev_every=0",
              f"out_dir={tmp_path / 'mb'}", f"hydra.run.dir={tmp_path / 'run'}",
              "model.backbone=lite2"]  # the region classifiers' trunk decides: a head reads their maps
    r = subprocess.run(common + ["train.epochs=2"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "broken.jpg" in r.stdout  # the corrupt photo is reported, the others train
    r = subprocess.run(common + ["train.epochs=2"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "resumed from" in r.stdout + r.stderr, r.stderr[-3000:]  # its epochs are not redone
    # the same out_dir with another recipe is refused by name, not resumed into a mix of the two
    r = subprocess.run(common + ["train.epochs=3"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "a checkpoint of a run with other settings" in r.stderr
    m = load_multibox(tmp_path / "mb" / "multibox.pt")
    assert isinstance(m, SharedMultiBox) and len(m.record["epochs"]) == 2 and m.priors.shape == (8, 4)
    assert m.trunk_id == load_ensemble().trunk_id  # trained on the embedded classifiers' maps: it runs with them
    assert m.cfg.backbone == load_ensemble().cfg.backbone
    stage = ProposalStage(ProposalSettings.from_dict({"multibox": {"model": str(tmp_path / "mb" / "multibox.pt")}}),
                          cache_root=tmp_path / "pc")
    assert stage.mb.shared and stage.mb.model().cfg.num_priors == 8


@pytest.mark.slow
def test_a_fine_level_head_trains_on_real_photos_and_serves_the_detector(tiny_voc, tmp_path):
    """The stride-8 level (fine_level, without its 3x3: fine_smooth=false) through tools/train_multibox.py on real
    photos of four sizes, then inside load_detector(): the detector's one trunk pass gives the head its stride-8 map."""
    import subprocess
    import sys

    import skimage.data

    from conftest import PROJECT_ROOT
    from detection import load_detector
    from detection.proposals.pipeline import ProposalSettings

    r = subprocess.run([sys.executable, "tools/train_multibox.py", "dataset=voc", f"dataset.root={tiny_voc}",
                        "dataset.name=tiny", f"cache_dir={tmp_path / 'cache'}", "model.num_priors=8",
                        "model.fine_level=true", "model.fine_smooth=false", "train.batch_size=2", "train.epochs=1",
                        "dev_every=0", f"out_dir={tmp_path / 'mb'}", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_multibox(tmp_path / "mb" / "multibox.pt")
    assert m.cfg.fine_level and not m.cfg.fine_smooth
    mb = {"model": str(tmp_path / "mb" / "multibox.pt"), "top_k": 8}
    det = load_detector(proposals=ProposalSettings.from_dict({"selective_search": {"k_scale": 2.0}, "multibox": mb}),
                        cache_dir=tmp_path / "c2", threads=2)
    assert det.shared_multibox is not None and det.shared_multibox.fine_level
    out = det.detect(skimage.data.chelsea())
    assert "multibox" in out.seconds and out.num_proposals > 0
    _, source, _, _ = det._propose_shared(skimage.data.chelsea(), {})
    assert 0 < int((source == 1).sum()) <= 8  # its boxes are among the proposals the classifiers score


def test_window_settings_reach_the_shared_source_from_hydra():
    """``proposals.multibox.crops=...`` with the embedded (shared) head: windows of the one pass, keyed apart in the
    cache from the whole-photo boxes."""
    from hydra import compose, initialize_config_dir

    from detection import config as hs
    from detection.proposals.pipeline import ProposalStage, load_proposal_settings

    hs.register_schemas()
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval_proposals", overrides=["proposals.multibox.crops=[[3,0.45]]",
                                                    "proposals.multibox.crop_weight=0.25", "data_root=/data"])
    s = hs.proposal_settings(cfg.proposals)
    assert s.multibox.crops == [[3, 0.45]] and s.multibox.crop_weight == 0.25
    assert s.multibox.crop_prior_area == load_proposal_settings("paper").multibox.crop_prior_area
    windowed = ProposalStage(s, cache_root="unused").mb
    whole = ProposalStage(load_proposal_settings("paper"), cache_root="unused").mb
    assert windowed.shared and (windowed.crops, windowed.crop_weight) == ([[3, 0.45]], 0.25)
    assert windowed.settings != whole.settings and "crops" not in whole.settings
