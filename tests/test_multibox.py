"""MultiBox: priors, Hungarian matching (against brute force), loss, head, save/load, training resume."""
import itertools

import numpy as np
import pytest
import torch

from detection.proposals.multibox.loss import match, matching_cost, multibox_loss
from detection.proposals.multibox.model import MultiBoxConfig, MultiBoxHead, crop_windows, to_pixel_boxes
from detection.proposals.multibox.priors import kmeans_priors
from detection.proposals.multibox.train import FeatureSet, TrainSettings, train_multibox


def rand_boxes(n, g):
    xy = torch.rand(n, 2, generator=g) * 0.6
    return torch.cat([xy, xy + 0.05 + torch.rand(n, 2, generator=g) * 0.3], 1)


@pytest.mark.parametrize("seed", range(25))
def test_match_is_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    K, G = int(torch.randint(3, 7, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
    G = min(G, K)
    pred, gt = rand_boxes(K, g), rand_boxes(G, g)
    logits = torch.randn(K, generator=g) * 2
    cost = matching_cost(pred, logits, gt, alpha=0.3).numpy()
    best = min(sum(cost[p[j], j] for j in range(G)) for p in itertools.permutations(range(K), G))
    pi, gi = match(pred, logits, gt, alpha=0.3)
    assert sorted(gi.tolist()) == list(range(G)) and len(set(pi.tolist())) == G
    assert cost[pi.numpy(), gi.numpy()].sum() == pytest.approx(best, abs=1e-9)


def test_match_edge_cases():
    pi, gi = match(torch.rand(4, 4), torch.zeros(4), torch.zeros(0, 4), alpha=0.3)
    assert len(pi) == len(gi) == 0
    with pytest.raises(ValueError, match="only 1 predictions"):
        match(torch.rand(1, 4), torch.zeros(1), torch.rand(2, 4), alpha=0.3)


def test_loss_value_by_hand():
    pred = torch.tensor([[[0.0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]])
    logits = torch.tensor([[0.0, 0.0]])
    gt = [torch.tensor([[0.1, 0.0, 0.5, 0.5]])]
    loss, parts = multibox_loss(pred, logits, gt, alpha=0.3)
    # matched to slot 0: loc = 1/2 * 0.1^2; conf = BCE(0 -> 1) + BCE(0 -> 0) = 2 log 2
    assert parts["loc"] == pytest.approx(0.005) and parts["conf"] == pytest.approx(2 * np.log(2))
    assert float(loss) == pytest.approx(0.3 * 0.005 + 2 * np.log(2))


def test_kmeans_recovers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9], [0.0, 0.4, 1.0, 0.6]])
    pts = torch.cat([c + 0.01 * torch.randn(200, 4, generator=g) for c in centres])
    pri = kmeans_priors(pts, k=3, seed=1)
    got = sorted(map(tuple, pri.numpy().round(1)))
    assert got == sorted(map(tuple, centres.numpy().round(1)))
    assert torch.equal(pri, kmeans_priors(pts, k=3, seed=1))  # deterministic
    with pytest.raises(ValueError, match="at least k=5"):
        kmeans_priors(pts[:4], k=5)


def test_head_starts_at_priors_and_pixel_boxes_are_sorted():
    cfg = MultiBoxConfig(num_priors=6)
    head = MultiBoxHead(in_channels=8, cfg=cfg)
    priors = torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 3 + [[0.5, 0.5, 0.9, 0.9]] * 3)
    boxes, logits = head(torch.randn(2, 8, 5, 5), priors)
    assert boxes.shape == (2, 6, 4) and logits.shape == (2, 6)
    torch.testing.assert_close(boxes[0], priors)  # zero-initialised offsets
    px, sc = to_pixel_boxes(torch.tensor([[0.2, 0.1, -0.1, 0.5], [0, 0, 1, 1]]), torch.tensor([-1.0, 2.0]),
                            width=100, height=50, top_k=None)
    assert sc.tolist() == sorted(sc.tolist(), reverse=True)
    torch.testing.assert_close(px, torch.tensor([[0.0, 0, 100, 50], [0, 5, 20, 25]]))


def _toy_features(n=48, seed=0):
    """Feature maps whose bright cell marks where the (single) object is: learnable by the head."""
    g = torch.Generator().manual_seed(seed)
    feats, gts = torch.zeros(n, 8, 4, 4), []
    for i in range(n):
        cx, cy = int(torch.randint(0, 4, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g))
        feats[i, :, cy, cx] = 3.0
        gts.append(torch.tensor([[cx / 4, cy / 4, (cx + 1) / 4, (cy + 1) / 4]]))
    return FeatureSet(feats=feats.half(), gts=gts, sizes=[(64, 64)] * n, ids=[str(i) for i in range(n)])


class _Model(torch.nn.Module):
    def __init__(self, priors):
        super().__init__()
        self.cfg = MultiBoxConfig(num_priors=len(priors), reduce_channels=16, hidden=32, global_dim=8,
                                  prior_embed_dim=4)
        self.head = MultiBoxHead(in_channels=8, cfg=self.cfg)
        self.register_buffer("priors", priors)


def test_training_lowers_loss_and_resumes_exactly(tmp_path):
    train = _toy_features(64)
    priors = kmeans_priors(torch.cat(train.gts), k=16, seed=0)
    s = TrainSettings(epochs=8, batch_size=16, lr=1e-2, flip=True, top_k_eval=1)
    torch.manual_seed(0)
    full = _Model(priors)
    rec = train_multibox(full, train, settings=s, out_dir=tmp_path / "a", progress=False, log=lambda m: None,
                         val=train)
    losses = [e["loss"] for e in rec["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    # the single most confident box finds the object: the head learned where the bright cell is
    assert rec["epochs"][-1]["val"]["recall@0.5"] >= 0.9 > rec["epochs"][0]["val"]["recall@0.5"]
    # kill after 2 epochs (simulated by a 2-epoch run with the same schedule), then resume to 4
    torch.manual_seed(0)
    part = _Model(priors)
    two = s
    ck_dir = tmp_path / "b"
    class Stop(Exception):
        pass

    calls = {"n": 0}

    def log(msg):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train_multibox(part, train, settings=two, out_dir=ck_dir, progress=False, log=log, val=train)
    assert (ck_dir / "last.ckpt").exists()
    torch.manual_seed(123)  # a fresh process: different global RNG, same result expected
    resumed = _Model(priors)
    msgs = []
    rec2 = train_multibox(resumed, train, settings=two, out_dir=ck_dir, progress=False, log=msgs.append, val=train)
    assert msgs[0].startswith("resumed from") and len(rec2["epochs"]) == 8
    for a, b in zip(full.head.state_dict().values(), resumed.head.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_head_reading_the_stride16_map_starts_at_priors_and_needs_it():
    cfg = MultiBoxConfig(num_priors=4, roi_size=2, mid_level=True)
    head = MultiBoxHead(in_channels=8, cfg=cfg, mid_channels=3)
    priors = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0], [0.4, 0.4, 0.45, 0.45]])
    boxes, logits = head(torch.randn(2, 8, 4, 4), priors, torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(boxes[1], priors)
    assert logits.shape == (2, 4)
    with pytest.raises(ValueError, match="stride-16"):
        head(torch.randn(2, 8, 4, 4), priors)


def test_backbone_levels_are_one_pass_with_the_stride16_map():
    from detection.models.backbones import build_backbone

    bb = build_backbone("lite0", weights=None).eval()
    x = torch.randn(1, 3, 128, 96)
    with torch.inference_mode():
        mid, last = bb.forward_levels(x)
        torch.testing.assert_close(last, bb(x))
    assert mid.shape == (1, 112, 8, 6) and last.shape == (1, 1280, 4, 3)


def test_crop_windows_cover_the_image_corner_to_corner():
    assert crop_windows(500, 375) == [(0, 0, 500, 375)]
    w = crop_windows(500, 375, levels=[[2, 0.6]])
    assert w == [(0, 0, 500, 375), (0, 0, 300, 225), (200, 0, 500, 225), (0, 150, 300, 375), (200, 150, 500, 375)]
    w3 = crop_windows(101, 7, levels=[(3, 0.5)])
    assert len(w3) == 10 and w3[1][:2] == (0, 0) and w3[-1][2:] == (101, 7)
    assert all(x1 - x0 == 50 and y1 - y0 == 4 for x0, y0, x1, y1 in w3[1:])  # every crop the same size
    assert crop_windows(500, 375, levels=[[2, 0.6], [3, 0.5]]) == w + crop_windows(500, 375, levels=[[3, 0.5]])[1:]
    for bad, msg in [([[1, 0.5]], "grid"), ([[2.5, 0.5]], "grid"), ([[2, 1.0]], "fraction"), ([[2]], r"\[grid, fraction\]")]:
        with pytest.raises(ValueError, match=msg):
            crop_windows(10, 10, levels=bad)


def _tiny_random_multibox():
    from detection.models.backbones import build_backbone
    from detection.proposals.multibox.model import MultiBox

    torch.manual_seed(0)
    cfg = MultiBoxConfig(input_size=64, num_priors=6, reduce_channels=8, hidden=16, global_dim=8, prior_embed_dim=4)
    model = MultiBox(backbone=build_backbone("lite0", weights=None), cfg=cfg,
                     priors=kmeans_priors(rand_boxes(50, torch.Generator().manual_seed(1)), k=6, seed=0)).eval()
    torch.nn.init.normal_(model.head.delta.weight, std=0.5)  # boxes depend on the pixels, not only the priors
    torch.nn.init.normal_(model.head.conf.weight, std=0.5)
    return model


def _each_window_alone(model, img, levels, *, drop_cut=False):
    """Every window run on its own and shifted into image pixels, with the cut-box rule applied here independently."""
    h, w = img.shape[:2]
    boxes, scores = [], []
    for x0, y0, x1, y1 in crop_windows(w, h, levels=levels):
        b, s = model.propose(img[y0:y1, x0:x1])
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= x1 - x0).all() and (b[:, 3] <= y1 - y0).all()
        if drop_cut:
            mx, my = 0.02 * (x1 - x0), 0.02 * (y1 - y0)
            cut = ((b[:, 0] <= mx) & (x0 > 0)) | ((b[:, 1] <= my) & (y0 > 0)) \
                | ((b[:, 2] >= x1 - x0 - mx) & (x1 < w)) | ((b[:, 3] >= y1 - y0 - my) & (y1 < h))
            b, s = b[~cut], s[~cut]
        boxes.append(b + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
        scores.append(s)
    boxes, scores = torch.cat(boxes), torch.cat(scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    return boxes[order], scores[order]


def test_multi_crop_propose_is_each_window_run_alone_and_mapped_back():
    """propose(crops=...) = the whole image's boxes + each crop's own boxes shifted into image pixels, ranked."""
    model = _tiny_random_multibox()
    img = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    levels = [[2, 0.6], [3, 0.45]]
    boxes, scores = model.propose(img, crops=levels)
    assert boxes.shape == ((1 + 4 + 9) * 6, 4) and (scores[:-1] >= scores[1:]).all()
    want_b, want_s = _each_window_alone(model, img, levels)
    torch.testing.assert_close(scores, want_s)
    torch.testing.assert_close(boxes, want_b, atol=1e-4, rtol=0)
    top, _ = model.propose(img, crops=levels, top_k=7)
    torch.testing.assert_close(top, boxes[:7])


def test_drop_cut_removes_exactly_the_crop_boxes_at_inner_edges():
    model = _tiny_random_multibox()
    torch.nn.init.normal_(model.head.delta.weight, std=2.0)  # large offsets: many boxes reach their window's edges
    img = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    levels = [[2, 0.6]]
    all_b, _ = model.propose(img, crops=levels)
    boxes, scores = model.propose(img, crops=levels, drop_cut=True)
    want_b, want_s = _each_window_alone(model, img, levels, drop_cut=True)
    assert 6 <= len(boxes) < len(all_b)  # some crop boxes were cut; the whole image's 6 boxes never are
    torch.testing.assert_close(scores, want_s)
    torch.testing.assert_close(boxes, want_b, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_embedded_multibox_finds_the_cat():
    """The shipped head (on the region classifiers' trunk maps, 800 priors) on a real photo it never saw."""
    import skimage.data
    from torchvision.ops import box_iou

    from detection.proposals.multibox import default_model_path, load_multibox
    from detection.proposals.pipeline import MultiBoxSource

    model = load_multibox(default_model_path())
    assert model.cfg.trunk == "region" and model.cfg.num_priors == 800 and model.record["train_images"] == 3535
    boxes, scores = MultiBoxSource()(skimage.data.chelsea())
    assert boxes.shape == (800, 4) and (scores[:-1] >= scores[1:]).all()
    assert float(box_iou(boxes[:5], torch.tensor([[60.0, 20, 420, 300]])).max()) > 0.7  # the cat


def test_window_targets_keep_the_small_objects_whole_inside_the_drawn_window():
    from detection.proposals.multibox.train import window_targets

    gts = [torch.tensor([[0.05, 0.05, 0.15, 0.15],  # small, inside the top-left window only
                         [0.45, 0.05, 0.55, 0.15],  # small, inside both top windows
                         [0.55, 0.30, 0.65, 0.40],  # cut by the top-left window's right edge (0.6)
                         [0.00, 0.00, 0.50, 0.50]])]  # inside the top-left window, but too large for its slots
    seen = set()
    for seed in range(40):
        wins, targets = window_targets(gts, grid=2, fraction=0.6, max_area=0.1,
                                       generator=torch.Generator().manual_seed(seed))
        w, t = wins[0], targets[0]
        x0, y0 = round(float(w[0]), 6), round(float(w[1]), 6)
        assert x0 in (0.0, 0.4) and y0 in (0.0, 0.4) and torch.allclose(w[2:] - w[:2], torch.tensor([0.6, 0.6]))
        seen.add((x0, y0))
        expect = {(0.0, 0.0): [[0.05, 0.05, 0.15, 0.15], [0.45, 0.05, 0.55, 0.15]],
                  (0.4, 0.0): [[0.45, 0.05, 0.55, 0.15], [0.55, 0.30, 0.65, 0.40]],
                  (0.0, 0.4): [], (0.4, 0.4): []}[(x0, y0)]
        expect = (torch.tensor(expect).reshape(-1, 4) - w[:2].repeat(2)) / 0.6  # in the window's frame
        torch.testing.assert_close(t, expect)
    assert len(seen) == 4  # every window of the grid is drawn


def _toy_window_features(n=64):
    """Stride-16 maps whose bright 2 x 2 cells mark where the one object is (1/8 x 1/6 of the photo)."""
    g = torch.Generator().manual_seed(0)
    feats, mids, gts = [], [], []
    for _ in range(n):
        cy, cx = int(torch.randint(0, 11, (1,), generator=g)), int(torch.randint(0, 15, (1,), generator=g))
        mid = torch.zeros(112, 12, 16)
        mid[:, cy:cy + 2, cx:cx + 2] = 3.0
        feats.append(torch.zeros(320, 6, 8).half())
        mids.append(mid.half())
        gts.append(torch.tensor([[cx / 16, cy / 12, (cx + 2) / 16, (cy + 2) / 12]]))
    return FeatureSet(feats=feats, gts=gts, sizes=[(256, 192)] * n, ids=[str(i) for i in range(n)], mids=mids)


def test_window_training_teaches_the_windows_and_resumes_exactly(tmp_path):
    """Windows of the maps (``train.window_grid``): a head trained on them finds the object of a window as that
    window's most confident box, which the same head trained on whole photos alone does not; a killed run resumes
    to the same head (the windows are drawn from the epoch's generator too); a head with its own trunk refuses it."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_shared_trunk import TINY
    from torchvision.ops import box_iou

    from detection.proposals.multibox.model import SharedMultiBox
    from detection.proposals.multibox.train import window_targets

    fs = _toy_window_features()
    n = len(fs.ids)
    windows, targets = window_targets(fs.gts * 8, grid=3, fraction=0.45, max_area=2.0,
                                      generator=torch.Generator().manual_seed(1))  # 8 windows of each photo
    priors = kmeans_priors(torch.cat([t for t in targets if len(t)] + fs.gts), k=12, seed=0)

    def top1_hits(m):  # the share of windows holding the object whose most confident box finds it
        x, mid, _ = fs.maps(range(n))
        with torch.no_grad():
            b, lg = m.head(x, m.priors, mid, windows=windows, window_image=torch.arange(n).repeat(8))
        hits = [bool(box_iou(t, b[k, lg[k].argmax()][None]).max() >= 0.5) for k, t in enumerate(targets) if len(t)]
        return sum(hits) / len(hits)

    def trained(grid, out, epochs=24, log=lambda m: None):
        torch.manual_seed(0)
        m = SharedMultiBox(cfg=MultiBoxConfig(**{**TINY, "hidden": 32, "reduce_channels": 16}), priors=priors)
        s = TrainSettings(epochs=epochs, batch_size=16, lr=3e-3, window_grid=grid, window_prior_area=1.0)
        rec = train_multibox(m, fs, settings=s, out_dir=tmp_path / out, progress=False, log=log)
        return m, rec

    with_windows, rec = trained(3, "w")
    whole_only, _ = trained(0, "whole")
    assert "window" in rec["epochs"][-1]
    assert top1_hits(with_windows) >= 0.4 and top1_hits(whole_only) <= 0.1

    class Stop(Exception):
        pass

    def stop_after_2(msg):
        if msg.startswith("epoch 2"):
            raise Stop

    full, _ = trained(3, "full4", epochs=4)
    with pytest.raises(Stop):
        trained(3, "part4", epochs=4, log=stop_after_2)
    torch.manual_seed(123)
    resumed, _ = trained(3, "part4", epochs=4)
    for a, b in zip(full.head.state_dict().values(), resumed.head.state_dict().values()):
        torch.testing.assert_close(a, b)
    s = TrainSettings(window_grid=3)
    with pytest.raises(ValueError, match="needs model.trunk=region"):
        train_multibox(_Model(priors), fs, settings=s, out_dir=tmp_path / "own", progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="window_grid must be"):
        TrainSettings(window_grid=1)
