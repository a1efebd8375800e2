"""Fine-tuning the trunk's last stages with the heads (detection.training.finetune) on real photos."""
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image

from detection.data.records import DetectionDataset, ImageRecord
from detection.models.backbones import build_backbone
from detection.models.region import (RegionConfig, RegionEnsemble, load_ensemble, save_ensemble, split_backbone,
                                     split_stem, stem_stages)
from detection.boxes import mirror_boxes
from detection.training.finetune import train_finetuned
from detection.training.network import FineTuneNet
from detection.training.sampler import member_draws
from detection.training.trunk_maps import TrunkCache, trunk_settings
from detection.training.roi import MemberSettings, member_bg_iou_low


def _cfg(k, members=2, **kw):
    return RegionConfig(members=members, image_size=160, max_image_size=240, roi_size=4, roi_layer="stem",
                        standardize=True, trainable_stages=k, **kw)


@pytest.fixture
def photos(tmp_path):
    """Two real photos with one box each, and proposals around them (some good, some partial, some background)."""
    recs, props = [], []
    for i, (name, img, box, label) in enumerate([("chelsea", skimage.data.chelsea(), (60, 20, 420, 300), 59),
                                                 ("astronaut", skimage.data.astronaut(), (100, 10, 400, 512), 124)]):
        p = tmp_path / f"{name}.jpg"
        Image.fromarray(img).save(p, quality=92)
        h, w = img.shape[:2]
        b = torch.tensor([box], dtype=torch.float32)
        recs.append(ImageRecord(p, w, h, b, torch.tensor([label]), torch.tensor([False]), name))
        g = torch.Generator().manual_seed(i)
        xy = torch.rand(120, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(120, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        jitter = b + torch.randn(20, 4, generator=g) * 25
        props.append(torch.cat([torch.cat([xy, xy + wh], 1), jitter]).clamp(min=0))
    return DetectionDataset("two", recs), props


def test_stem_stages_and_split_compose_to_the_stem():
    bb = build_backbone("lite0", weights=None).eval()
    assert stem_stages(bb) == [f"blocks.{i}" for i in range(7)]
    x = torch.randn(1, 3, 96, 128)
    stem, _ = split_backbone(bb)
    with torch.no_grad():
        want = stem(x)
        for k in (0, 1, 2, 3):
            frozen, trainable, names = split_stem(bb, k)
            assert names == [f"blocks.{i}" for i in range(7 - k, 7)]
            torch.testing.assert_close(trainable(frozen(x)), want)
    assert split_stem(bb, 2)[0](x).shape[1] == 112  # blocks.4: the stride-16 map
    with pytest.raises(ValueError, match="trainable_stages must be in 0..6"):
        split_stem(bb, 7)
    with pytest.raises(ValueError, match="mode=roi, roi_layer=stem"):
        RegionConfig(mode="warp", trainable_stages=1)


def test_member_draws_keep_the_ratio_and_differ_by_member():
    labels = torch.tensor([3] * 10 + [0] * 200)
    max_iou = torch.cat([torch.full((10,), 0.7), torch.linspace(0, 0.49, 200)])
    pool, picks = member_draws(labels, max_iou, members=4, fg=4, bg=12, gen=torch.Generator().manual_seed(0))
    assert len(set(pool.tolist())) == len(pool) == 8 + 24  # 2x the member share, no repeats
    for m, p in enumerate(picks):
        lab, iou = labels[pool[p]], max_iou[pool[p]]
        assert int((lab > 0).sum()) == 4 and int((lab == 0).sum()) == 12
        assert bool((iou[lab == 0] >= member_bg_iou_low(m)).all())  # odd members: near misses only
    assert not torch.equal(picks[0], picks[2])


def test_mirror_boxes_round_trip():
    b = torch.tensor([[10.0, 5.0, 30.0, 40.0]])
    assert mirror_boxes(b, 100).tolist() == [[70.0, 5.0, 90.0, 40.0]]
    torch.testing.assert_close(mirror_boxes(mirror_boxes(b, 100), 100), b)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_training_path_equals_inference_path(photos, tmp_path, k):
    """The logits the fine-tuning computes from the cached frozen map equal the detector's logits for the same
    boxes, before and after training (so the saved, reloaded model is the one that was trained)."""
    ds, props = photos
    model = RegionEnsemble(cfg=_cfg(k), backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    settings = MemberSettings(epochs=1, rois_per_batch=32, images_per_batch=2, lr=1e-3, trunk_lr_scale=1.0)
    rec = train_finetuned(model, ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "o",
                          progress=False, log=lambda *a: None)
    assert rec["images"] == 2 and rec["stages"] == [f"blocks.{i}" for i in range(7 - k, 7)]
    path = tmp_path / "m.pt"
    save_ensemble(model.eval(), path)
    loaded = load_ensemble(path)
    cache = TrunkCache(tmp_path / "c" / "trunk_maps", ds.name, trunk_settings(model, backbone_weights="imagenet"))
    net = FineTuneNet(loaded).eval()
    for r, p in zip(ds.records, props):
        e = cache.load(r.image_id)
        rois = loaded.rois(p[:16], scale=e["scale"])
        with torch.no_grad():
            train_path = net(e["map"].float()[None], rois, [torch.arange(16)] * 2)
        infer = loaded.member_logits(__import__("numpy").asarray(Image.open(r.path).convert("RGB")), p[:16])
        for m in range(2):
            torch.testing.assert_close(train_path[m], infer[m], atol=2e-2, rtol=1e-2)
    if k:  # the fine-tuned stage really changed, and the file carries it
        fresh = build_backbone("lite0", weights="imagenet")
        name = f"blocks.{7 - k}"
        a = fresh.features.get_submodule(name).state_dict()
        b = loaded.backbones[0].features.get_submodule(name).state_dict()
        assert any(not torch.equal(a[key], b[key]) for key in a if a[key].is_floating_point())


class _Kill(Exception):
    pass


def test_killed_run_resumes_to_the_same_model(photos, tmp_path):
    """Kill after epoch 1 of 2, rerun: it resumes from the checkpoint and ends with the uninterrupted run's weights."""
    ds, props = photos
    settings = MemberSettings(epochs=2, rois_per_batch=32, images_per_batch=1, trunk_lr_scale=1.0)

    def fresh():
        return RegionEnsemble(cfg=_cfg(1), backbones=[build_backbone("lite0", weights="imagenet")]).eval()

    full = fresh()
    train_finetuned(full, ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "a",
                    progress=False, log=lambda *a: None)

    def kill_after_epoch_1(msg):
        if msg.startswith("fine-tuning epoch 1:"):
            raise _Kill

    with pytest.raises(_Kill):
        train_finetuned(fresh(), ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "b",
                        progress=False, log=kill_after_epoch_1)
    msgs = []
    resumed = fresh()
    rec = train_finetuned(resumed, ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "b",
                          progress=False, log=msgs.append)
    assert any("resumed" in m and "after epoch 1" in m for m in msgs)
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2]
    for a, b in zip(full.heads.state_dict().values(), resumed.heads.state_dict().values()):
        torch.testing.assert_close(a, b)
    a = full.backbones[0].features.get_submodule("blocks.6").state_dict()
    b = resumed.backbones[0].features.get_submodule("blocks.6").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_heads_standardise_with_flip_symmetric_training_statistics(photos, tmp_path):
    ds, props = photos
    model = RegionEnsemble(cfg=_cfg(0), backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    train_finetuned(model, ds, props, settings=MemberSettings(epochs=1, rois_per_batch=32), cache_root=tmp_path / "c",
                    out_dir=tmp_path / "o", progress=False, log=lambda *a: None)
    h0, h1 = model.heads
    torch.testing.assert_close(h0.feat_mean, h1.feat_mean)  # one input scale for every member
    mean, std = h0.feat_mean.view(320, 4, 4), h0.feat_std.view(320, 4, 4)
    torch.testing.assert_close(mean, mean.flip(-1))  # flips are part of training
    torch.testing.assert_close(std, std.flip(-1))
    assert float(std.min()) >= 1e-3 and float(mean.abs().max()) > 0.01 and not torch.allclose(std, torch.ones_like(std))


def test_context_regions_train_as_they_detect_with_flip_symmetric_statistics_per_region(photos, tmp_path):
    """context_regions=[[2, 2]] through fine-tuning: the training path's logits equal the detector's after training,
    and each region's input statistics are mirror-symmetric on its own grid (4x4, then 2x2)."""
    ds, props = photos
    model = RegionEnsemble(cfg=_cfg(1, context_regions=[[2, 2]]),
                           backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    settings = MemberSettings(epochs=1, rois_per_batch=32, images_per_batch=2, trunk_lr_scale=1.0)
    train_finetuned(model, ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "o",
                    progress=False, log=lambda *a: None)
    h0 = model.heads[0]
    assert h0.feat_mean.numel() == 320 * (16 + 4)
    for part, g in ((slice(0, 320 * 16), 4), (slice(320 * 16, None), 2)):
        mean, std = h0.feat_mean[part].view(320, g, g), h0.feat_std[part].view(320, g, g)
        torch.testing.assert_close(mean, mean.flip(-1))
        torch.testing.assert_close(std, std.flip(-1))
        assert float(mean.abs().max()) > 0.01
    cache = TrunkCache(tmp_path / "c" / "trunk_maps", ds.name, trunk_settings(model, backbone_weights="imagenet"))
    net = FineTuneNet(model).eval()
    r, p = ds.records[0], props[0]
    e = cache.load(r.image_id)
    with torch.no_grad():
        train_path = net(e["map"].float()[None], model.rois(p[:16], scale=e["scale"]), [torch.arange(16)] * 2)
    infer = model.member_logits(__import__("numpy").asarray(Image.open(r.path).convert("RGB")), p[:16])
    torch.testing.assert_close(train_path[1], infer[1], atol=2e-2, rtol=1e-2)


def test_later_cut_maps_derive_from_an_earlier_cut_cache(photos, tmp_path):
    """A cache cut before blocks.5 serves a cut before blocks.6: the maps equal those computed from the image."""
    from detection.training.trunk_maps import cache_trunk_maps, trunk_cache

    ds, _ = photos
    bb = build_backbone("lite0", weights="imagenet")
    early = RegionEnsemble(cfg=_cfg(2), backbones=[bb]).eval()
    late = RegionEnsemble(cfg=_cfg(1), backbones=[bb]).eval()
    root = tmp_path / "c"
    c2 = trunk_cache(root, ds, trunk_settings(early, backbone_weights="imagenet"))
    cache_trunk_maps(ds, early, c2, positions=[0, 1], progress=False)
    derived = trunk_cache(root, ds, trunk_settings(late, backbone_weights="imagenet"))
    for r in ds.records:  # the images are not decoded again: make them undecodable meanwhile (the cache checks
        r.path.rename(r.path.with_suffix(".bak"))  # the hash of the original bytes)
        r.path.write_bytes(b"")
    import detection.training.trunk_maps as ft

    real_sha = ft.file_sha1
    ft.file_sha1 = lambda p: real_sha(Path(p).with_suffix(".bak"))
    try:
        skipped = cache_trunk_maps(ds, late, derived, positions=[0, 1], progress=False)
    finally:
        ft.file_sha1 = real_sha
        for r in ds.records:
            r.path.with_suffix(".bak").replace(r.path)
    assert skipped == []  # nothing had to be decoded
    direct = trunk_cache(tmp_path / "d", ds, trunk_settings(late, backbone_weights="imagenet"))
    cache_trunk_maps(ds, late, direct, positions=[0, 1], progress=False)
    for r in ds.records:
        a, b = derived.load(r), direct.load(r)
        assert a["map"].shape == b["map"].shape and a["scale"] == b["scale"]
        torch.testing.assert_close(a["map"].float(), b["map"].float(), atol=0.05, rtol=0.02)
        torch.testing.assert_close(a["map_flip"].float(), b["map_flip"].float(), atol=0.05, rtol=0.02)


def test_warm_start_takes_the_given_heads_and_their_statistics(photos, tmp_path):
    ds, props = photos
    src = RegionEnsemble(cfg=_cfg(0), backbones=[build_backbone("lite0", weights=None)])
    for h in src.heads:
        h.set_feature_stats(torch.full((5120,), 0.5), torch.full((5120,), 2.0))
    model = RegionEnsemble(cfg=_cfg(2), backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    msgs = []
    train_finetuned(model, ds, props, settings=MemberSettings(epochs=1, rois_per_batch=32, lr=0.0),
                    cache_root=tmp_path / "c", out_dir=tmp_path / "o", progress=False, log=msgs.append,
                    init_heads=src.heads)
    assert any("warm start" in m for m in msgs)
    for a, b in zip(src.heads.state_dict().values(), model.heads.state_dict().values()):
        torch.testing.assert_close(a, b)  # lr 0: the heads are exactly the ones given, statistics included


def test_heads_grow_only_by_regions_added_after_their_own():
    from detection.training.recipe import grows

    assert grows([], [[2.0, 2]]) and grows([[2.0, 2]], [[2.0, 2], [3.0, 2]])
    assert not grows([[2.0, 2]], [[2.0, 2]])  # nothing added
    assert not grows([[2.0, 2]], [[3.0, 2], [2.0, 2]])  # the source's region is not first
    assert not grows([[2.0, 2]], [])


def test_heads_grow_context_regions_from_a_fine_tuned_model_and_start_with_its_logits(photos, tmp_path):
    """A fine-tuned model's heads warm-start a model with context_regions added: zero weights for the new inputs
    (the same logits as the source), the source's statistics kept for its own inputs; with trunk_lr_scale=0 only
    the heads train and the fine-tuned stages stay exactly as they were."""
    from detection.models.region import load_stages_state_dict, stages_state_dict

    ds, props = photos
    src = RegionEnsemble(cfg=_cfg(1), backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    train_finetuned(src, ds, props, settings=MemberSettings(epochs=1, rois_per_batch=32, trunk_lr_scale=1.0),
                    cache_root=tmp_path / "c", out_dir=tmp_path / "s", progress=False, log=lambda *a: None)
    names = split_stem(src.backbones[0], 1)[2]

    def grown(out, lr, epochs=1):
        model = RegionEnsemble(cfg=_cfg(1, context_regions=[[2, 2]]),
                               backbones=[build_backbone("lite0", weights="imagenet")]).eval()
        load_stages_state_dict(model.backbones[0], stages_state_dict(src.backbones[0], names))
        msgs = []
        train_finetuned(model, ds, props, settings=MemberSettings(epochs=epochs, rois_per_batch=32, lr=lr,
                                                                  trunk_lr_scale=0.0),
                        cache_root=tmp_path / "c", out_dir=tmp_path / out, progress=False, log=msgs.append,
                        init_heads=src.heads)
        assert any("grown to the regions" in m for m in msgs)
        assert any("fine-tuning the heads alone (blocks.6 kept as they are" in m for m in msgs)
        return model

    image = __import__("numpy").asarray(Image.open(ds.records[0].path).convert("RGB"))
    start = grown("g0", 0.0)
    d_old = 320 * 16
    assert start.heads[0].feat_mean.numel() == 320 * (16 + 4)
    torch.testing.assert_close(start.heads[0].feat_mean[:d_old], src.heads[0].feat_mean)
    assert float(start.heads[0].feat_std[d_old:].min()) > 0 and float(start.heads[0].feat_mean[d_old:].abs().max()) > 0
    torch.testing.assert_close(start.member_logits(image, props[0]), src.member_logits(image, props[0]),
                               atol=1e-4, rtol=1e-4)
    trained = grown("g1", 1e-2, epochs=3)
    for k, v in stages_state_dict(src.backbones[0], names).items():  # trunk_lr_scale=0: the stages did not move
        torch.testing.assert_close(stages_state_dict(trained.backbones[0], names)[k], v, atol=0, rtol=0)
    w = trained.heads[0].classifier[0].weight
    assert float(w[:, d_old:].detach().abs().max()) > 0  # the new inputs learned
    diff = (trained.member_logits(image, props[0]) - src.member_logits(image, props[0])).abs().max()
    assert float(diff) > 1e-2  # and the heads moved


def test_a_positives_only_photo_trains_with_the_others_and_gives_no_background(photos, tmp_path):
    """A photo not exhaustively annotated joins training with its positives only: the run logs it, and its labelled
    RoIs hold no background while the exhaustive photo's do."""
    from detection.data.records import set_exhaustive
    from detection.training.sampler import jittered_positives, label_proposals

    ds, props = photos
    ds = DetectionDataset("mix", [ds.records[0], set_exhaustive(DetectionDataset("p", [ds.records[1]]))[0]])
    r1 = ds.records[1]
    props = [props[0], jittered_positives(r1.boxes, width=r1.width, height=r1.height, n=16, seed=r1.image_id)]
    _, lab, _ = label_proposals(props[1], r1.boxes, r1.labels, exhaustive=r1.exhaustive)
    assert len(lab) > 8 and bool((lab > 0).all())
    model = RegionEnsemble(cfg=_cfg(1), backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    settings = MemberSettings(epochs=1, rois_per_batch=32, images_per_batch=2, lr=1e-3)
    lines = []
    rec = train_finetuned(model, ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "o",
                          progress=False, log=lines.append)
    assert rec["images"] == 2
    assert any("1 not exhaustively annotated give positives only" in s for s in lines)


def test_repeat_factor_sampling_lengthens_the_epoch_and_a_resume_keeps_the_recipe(photos, tmp_path):
    """With repeat_thresh each image of a class held by half the images is shown sqrt(t / 0.5) times: the run says
    so and trains; a rerun in the same out_dir with another threshold is refused, not mixed into the weights."""
    ds, props = photos
    model = RegionEnsemble(cfg=_cfg(1), backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    settings = MemberSettings(epochs=1, rois_per_batch=32, images_per_batch=1, repeat_thresh=2.0,
                              balance_positives=True)
    lines = []
    rec = train_finetuned(model, ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "o",
                          progress=False, log=lines.append)
    assert any("2 images of rare classes repeated (up to 2.00x): an epoch shows 4 images for 2" in s for s in lines)
    assert any("balance_positives" in s for s in lines)
    assert rec["settings"]["repeat_thresh"] == 2.0 and len(rec["epochs"]) == 1
    again = MemberSettings(epochs=1, rois_per_batch=32, images_per_batch=1, repeat_thresh=0.5)
    with pytest.raises(RuntimeError, match=r"repeat_thresh 2\.0 -> 0\.5"):
        train_finetuned(model, ds, props, settings=again, cache_root=tmp_path / "c", out_dir=tmp_path / "o",
                        progress=False, log=lambda *a: None)


def test_pyramid_levels_are_checked_and_each_level_scales_like_multiscale_testing():
    """Multi-scale training's levels: the model's own size must be among them; a level's model takes an image at the
    scale multi-scale testing uses for that level (longer-side cap and max_upscale included), shares the trunk, and
    keys its trunk maps apart."""
    from dataclasses import replace

    from detection.training.trunk_maps import level_model, pyramid_sizes

    model = RegionEnsemble(cfg=replace(_cfg(1), max_upscale=4.0), backbones=[build_backbone("lite0", weights=None)])
    assert pyramid_sizes(model, None) == [160] and pyramid_sizes(model, []) == [160]
    assert pyramid_sizes(model, [320, 160, 320]) == [320, 160]
    with pytest.raises(ValueError, match=r"must include model.image_size \(160\)"):
        pyramid_sizes(model, [320, 640])
    with pytest.raises(ValueError, match="positive shorter sides"):
        pyramid_sizes(model, [160, 0])
    fine = level_model(model, 320)
    assert fine.cfg.image_size == 320 and fine.cfg.max_image_size == 480 and fine.cfg.max_upscale == 4.0
    assert fine.backbones[0] is model.backbones[0]
    for w, h in [(451, 300), (300, 451), (64, 64), (2000, 300)]:  # plain, portrait, capped by max_upscale, by the long side
        assert fine.image_scale(w, h) == pytest.approx(model.image_scale(w, h, 320), rel=1e-12)
    assert fine.image_scale(64, 64) == 4.0 and fine.image_scale(2000, 300) == pytest.approx(480 / 2000)
    assert trunk_settings(fine, backbone_weights="imagenet") != trunk_settings(model, backbone_weights="imagenet")


def test_multiscale_training_adds_the_finer_level_of_images_with_small_objects(photos, tmp_path):
    """train.image_sizes=[160, 320]: the astronaut, whose box multi-scale testing reads at 320, also trains at 320
    on the proposals that rule sends there; chelsea's large cat does not.  The level's maps are cached apart at its
    scale, and the logits training computes there equal multi-scale testing's for the same boxes.  A rerun with
    other levels in the same out_dir is refused."""
    import numpy as np

    from detection.training.trunk_maps import level_boxes, level_model

    ds, props = photos
    model = RegionEnsemble(cfg=_cfg(1), backbones=[build_backbone("lite0", weights="imagenet")]).eval()
    sizes = [160, 320]
    chelsea, astronaut = ds.records
    assert level_boxes(model, chelsea.boxes, width=chelsea.width, height=chelsea.height, sizes=sizes).tolist() == [0]
    assert level_boxes(model, astronaut.boxes, width=astronaut.width, height=astronaut.height,
                       sizes=sizes).tolist() == [1]
    settings = MemberSettings(epochs=1, rois_per_batch=32, images_per_batch=1, trunk_lr_scale=1.0, image_sizes=sizes)
    lines = []
    rec = train_finetuned(model, ds, props, settings=settings, cache_root=tmp_path / "c", out_dir=tmp_path / "o",
                          progress=False, log=lines.append)
    assert rec["images"] == 2 and rec["multiscale_images"] == 1 and rec["settings"]["image_sizes"] == sizes
    assert any("1 images also train at shorter side 320" in s and "1 hold an object read there" in s for s in lines)
    assert any("on 2 images of two + 1 at other scales" in s for s in lines)
    fine = TrunkCache(tmp_path / "c" / "trunk_maps", ds.name,
                      trunk_settings(level_model(model, 320), backbone_weights="imagenet"))
    assert fine.load("chelsea") is None
    e = fine.load("astronaut")
    assert e["scale"] == pytest.approx(model.image_scale(512, 512, 320))
    assert e["map"].shape[-2:] == (10, 10)  # 320 px at stride 32 (the frozen part ends with blocks.5)
    p = props[1]
    lv = level_boxes(model, p, width=512, height=512, sizes=sizes)
    sel = p[lv == 1][:12]
    assert len(sel) == 12
    whole = torch.tensor([[0.0, 0.0, 512.0, 512.0]])  # the whole photo stays at 160
    assert level_boxes(model, whole, width=512, height=512, sizes=sizes).tolist() == [0]
    net = FineTuneNet(model).eval()
    with torch.no_grad():
        train_path = net(e["map"].float()[None], model.rois(sel, scale=e["scale"]), [torch.arange(len(sel))] * 2)
    infer = model.member_logits(np.asarray(Image.open(astronaut.path).convert("RGB")), sel, image_sizes=(160, 320))
    one_level = model.member_logits(np.asarray(Image.open(astronaut.path).convert("RGB")), sel)
    for m in range(2):
        torch.testing.assert_close(train_path[m], infer[m], atol=2e-2, rtol=1e-2)
    assert (infer - one_level).abs().max() > 0.1  # the finer level really is another view
    with pytest.raises(ValueError, match=r"multiscale_sources: coco not among two's parts \(two\)"):
        train_finetuned(model, ds, props, settings=MemberSettings(epochs=1, image_sizes=sizes,
                                                                  multiscale_sources=["coco"]),
                        cache_root=tmp_path / "c", out_dir=tmp_path / "o2", progress=False, log=lambda *a: None)
    with pytest.raises(RuntimeError, match=r"image_sizes \[160, 320\] -> None"):
        train_finetuned(model, ds, props, settings=MemberSettings(epochs=1, rois_per_batch=32, images_per_batch=1,
                                                                  trunk_lr_scale=1.0),
                        cache_root=tmp_path / "c", out_dir=tmp_path / "o", progress=False, log=lambda *a: None)
