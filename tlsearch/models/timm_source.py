"""The timm model source: image classifiers by registry name, local directory, checkpoint file or
builtin weights; their layer map from timm's own parameter grouping; their tails; their fingerprint.

Tails (tlsearch.models.tails) of a timm model:
- HEAD: the classifier, after the dropout timm applies to pre-logits features.
- below block i: blocks i and up, then the modules `forward_features` applies after the blocks
  (a ViT's final norm, an EfficientNet's conv_head and bn2, nothing for a ResNet), then `forward_head`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsearch.errors import UserInputError
from tlsearch.models.base import Fingerprint, LoadedModel, maybe_meta, register, sha256_json
from tlsearch.models.layers import LayerMap, head_param_names
from tlsearch.models.tails import (
    HEAD,
    Features,
    Tail,
    TailUnsupported,
    block_boundary,
    boundary_block,
    eval_mode,
    input_of,
    shallow_copy,
)
from tlsearch.spec.model import ModelSpec


class TimmSource:
    """Models from timm (and timm-format checkpoints); a batch is one image tensor."""

    name = "timm"

    def load(self, spec: ModelSpec, num_classes: int, weights: bool) -> LoadedModel:
        import timm

        model = _create(spec, num_classes, weights)
        if weights:
            # Transfer learning trains a new head, even when the checkpoint carries one of the same size.
            model.reset_classifier(num_classes)  # type: ignore[operator]
        head = _head_modules(model)
        data_config = timm.data.resolve_model_data_config(model)
        if spec.image_size is not None:
            data_config["input_size"] = (3, spec.image_size, spec.image_size)
            data_config["crop_pct"] = 1.0
        return LoadedModel(model, head, self.layer_map(model, head), data_config, source=self)

    def layer_map(self, model: nn.Module, head_modules: tuple[str, ...]) -> LayerMap:
        """Layer ids from timm's own `group_matcher(coarse=False)`, as `param_groups_layer_decay` does."""
        from timm.models import group_parameters
        from timm.models._manipulate import MATCH_PREV_GROUP

        matcher = model.group_matcher(coarse=False)  # type: ignore[operator]
        raw = group_parameters(model, matcher, reverse=True)
        head = head_param_names(model, head_modules)
        head_ids = {raw[n] for n in head}
        # Unmatched parameters (head, and necks such as fc_norm) all get timm's largest id. Non-head
        # ones belong above the last block: they take the top block's learning rate.
        ids = sorted({raw[n] for n in raw if n not in head and raw[n] not in head_ids})
        stem_regex = matcher.get("stem") if isinstance(matcher, dict) else None
        has_stem = (
            bool(ids)
            and stem_regex is not None
            and any(re.match(stem_regex, n) and raw[n] == ids[0] for n in raw)
        )
        position = {raw_id: i + (0 if has_stem else 1) for i, raw_id in enumerate(ids)}
        num_blocks = len(ids) - (1 if has_stem else 0)
        layer_of = {n: position.get(r, num_blocks) for n, r in raw.items() if n not in head}
        # Parameters timm merges into the last block's group (final norm, conv_head) are not in a block.
        merged = [spec[0] for spec in _matcher_specs(matcher) if spec[1] == MATCH_PREV_GROUP]
        in_block = {
            n: lid
            for n, lid in layer_of.items()
            if lid >= 1 and raw[n] in position and not any(re.match(rx, n) for rx in merged)
        }
        prefixes = _block_prefixes(in_block, num_blocks)
        no_wd = frozenset(getattr(model, "no_weight_decay", lambda: set())())
        no_wd_params = frozenset(n for n in layer_of if any(n == k or n.startswith(k + ".") for k in no_wd))
        return LayerMap(num_blocks, layer_of, head, prefixes, no_wd_params)

    def tail(self, loaded: LoadedModel, boundary: str) -> Tail:
        index = boundary_block(boundary)
        return _head_tail(loaded) if index is None else _block_tail(loaded, index)

    def fingerprint(self, loaded: LoadedModel, spec: ModelSpec) -> Fingerprint:
        config = dict(getattr(loaded.model, "pretrained_cfg", {}) or {})
        return Fingerprint(
            config=sha256_json(config),
            # input size, interpolation, crop, mean, std: what timm's eval transform and ToDevice apply
            preprocessing={"data_config": loaded.preprocessing},
            libraries=("torch", "timm", "torchvision"),
        )

    def logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(batch)


TIMM = register(TimmSource())


# --- loading ---------------------------------------------------------------------------------


def _create(spec: ModelSpec, num_classes: int, weights: bool) -> nn.Module:
    """The architecture `spec` names, with the checkpoint's weights when `weights` and pretrained."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if spec.image_size is not None:
        kwargs["img_size"] = spec.image_size
    builtin = spec.builtin
    path = Path(spec.name).expanduser()
    pretrained = spec.pretrained and weights
    with maybe_meta(weights):
        try:
            if builtin == "efficientnet-lite0":
                from tlsearch.models.effnet_lite0 import ARCHITECTURE, load_efficientnet_lite0

                if pretrained:
                    return load_efficientnet_lite0(num_classes=num_classes)
                return _create_timm(ARCHITECTURE, pretrained=False, **kwargs)
            if builtin is not None:
                raise UserInputError(f"unknown builtin timm model `{builtin}`")
            if path.is_dir():
                return _create_timm(f"local-dir:{path.resolve()}", pretrained=pretrained, **kwargs)
            if path.is_file():
                if spec.architecture is None:
                    raise UserInputError(
                        f"model.name is a checkpoint file ({path}); set model.architecture to its timm "
                        "architecture (e.g. vit_small_patch16_224)"
                    )
                overlay = {"file": str(path.resolve())}
                return _create_timm(
                    spec.architecture, pretrained=pretrained, pretrained_cfg_overlay=overlay, **kwargs
                )
            if not timm.is_model(spec.name):
                from tlsearch.registry import suggest

                raise UserInputError(
                    f"model.name `{spec.name}` is neither a timm architecture nor an existing path."
                    f"{suggest(spec.name, timm.list_models())}"
                )
            return _create_timm(spec.name, pretrained=pretrained, **kwargs)
        except UserInputError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise UserInputError(f"cannot load timm model `{spec.name}`: {exc}") from exc


def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    """timm.create_model, passing img_size only to architectures that take it (ViTs size their
    position embeddings to the input; CNNs take any size and reject the argument)."""
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
        return timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})


def _head_modules(model: nn.Module) -> tuple[str, ...]:
    """The classifier's modules, as timm's pretrained config names them (else get_classifier's)."""
    classifier = model.pretrained_cfg.get("classifier")  # type: ignore[union-attr,operator]
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    present = dict(model.named_modules())
    names = tuple(n for n in names if n in present)
    if not names:
        target = model.get_classifier()  # type: ignore[operator]
        names = tuple(n for n, m in model.named_modules() if m is target and n)
    return names


# --- the layer map ---------------------------------------------------------------------------


def _matcher_specs(matcher: object) -> list[tuple[str, tuple | None]]:
    """(regex, suffix) of every rule in a group matcher: the suffix marks rules merged into a group."""
    if not isinstance(matcher, dict):
        return []
    specs: list[tuple[str, tuple | None]] = []
    for mspec in matcher.values():
        if isinstance(mspec, list | tuple):
            specs += [(rx, suffix) for rx, suffix in mspec]
        elif mspec is not None:
            specs.append((mspec, None))
    return specs


def _block_prefixes(layer_of: dict[str, int], num_blocks: int) -> tuple[str, ...]:
    """Longest common module prefix of each block's parameters (e.g. `blocks.3`, `blocks.1.2`)."""
    prefixes = []
    for layer in range(1, num_blocks + 1):
        names = [n.split(".")[:-1] for n, lid in layer_of.items() if lid == layer]
        common = names[0]
        for parts in names[1:]:
            k = 0
            while k < min(len(common), len(parts)) and common[k] == parts[k]:
                k += 1
            common = common[:k]
        prefixes.append(".".join(common))
    return tuple(prefixes)


# --- tails -----------------------------------------------------------------------------------


def _head_tail(loaded: LoadedModel) -> Tail:
    model: Any = loaded.model  # a timm model: forward_features, get_classifier, ... are not typed
    # timm applies dropout to the pre-logits features, in train mode only: a ViT with its `head_drop`,
    # most CNNs with F.dropout(p=drop_rate). check_tail's train-mode comparison confirms the rate.
    head_drop = getattr(model, "head_drop", None)
    rate = (
        head_drop.p if isinstance(head_drop, nn.Dropout) else float(getattr(model, "drop_rate", 0.0) or 0.0)
    )
    tail = nn.Sequential(nn.Dropout(rate), model.get_classifier())

    def extract(images: torch.Tensor) -> Features:
        return model.forward_head(model.forward_features(images), pre_logits=True), None

    return Tail(HEAD, tail, extract, lambda rows, _: rows)


class _TimmTail(nn.Module):
    """The blocks above a boundary, then what forward_features and forward_head run after them."""

    def __init__(self, above: list[nn.Module], head_side: Any):
        super().__init__()
        self.above = nn.Sequential(*above)  # the remaining blocks, then forward_features' last modules
        # The model without what forward_features runs: forward_head's own (an untyped timm method).
        self.head_side: Any = head_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_side.forward_head(self.above(x))


def _block_tail(loaded: LoadedModel, index: int) -> Tail:
    model: Any = loaded.model
    blocks = _block_modules(model, loaded.layers, index)
    # Which top-level modules forward_features runs, in order: those after the last block's container
    # run above the blocks (ViT: norm); the ones it never runs belong to forward_head.
    order = _forward_features_order(model, tuple(loaded.preprocessing["input_size"]))
    containers = {p.split(".", 1)[0] for p in loaded.layers.block_prefixes}
    if not containers <= set(order):
        raise TailUnsupported("forward_features does not run the blocks as top-level modules")
    after = order[max(order.index(c) for c in containers) + 1 :]
    head_side = shallow_copy(model)
    head_side._modules = {name: m for name, m in model._modules.items() if name not in order}
    tail = _TimmTail(blocks + [model.get_submodule(name) for name in after], head_side)

    def extract(images: torch.Tensor) -> Features:
        return input_of(blocks[0], lambda: model.forward_features(images)), None

    return Tail(block_boundary(index), tail, extract, lambda rows, _: rows)


def _block_modules(model: nn.Module, layers: LayerMap, index: int) -> list[nn.Module]:
    """Blocks index.. as modules that each hold exactly their own block's parameters: chained in order,
    they run those blocks. (Not so for a ConvNeXt stage's first block: it shares a layer with the stage's
    downsample, and the stage module holding both also holds the stage's other blocks.)"""
    modules = []
    for i in range(index, layers.num_blocks):
        prefix = layers.block_prefixes[i]
        module = model.get_submodule(prefix)
        if any(layers.layer_of.get(f"{prefix}.{name}") != i + 1 for name, _ in module.named_parameters()):
            raise TailUnsupported(f"block {i} is not a module of its own (`{prefix}` holds more)")
        modules.append(module)
    return modules


def _forward_features_order(model: Any, input_size: tuple[int, ...]) -> list[str]:
    """Names of the top-level modules forward_features runs, in the order they finish (one probe image)."""
    done: list[str] = []
    handles = [
        child.register_forward_hook(lambda *_, name=name: done.append(name) if name not in done else None)
        for name, child in model.named_children()
    ]
    try:
        with torch.no_grad(), eval_mode(model):
            model.forward_features(torch.zeros((1, *input_size)))
    finally:
        for handle in handles:
            handle.remove()
    return done
