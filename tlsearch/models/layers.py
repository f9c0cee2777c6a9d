"""Which parameters belong to which depth of the backbone, for both timm and Hugging Face models.

A LayerMap numbers the backbone from the bottom: 0 is the stem / embeddings, block i is i + 1, and
whatever sits above the last block (final norm, pooler, neck) shares the top block's number L.
Head parameters are kept apart. Strategies derive freezing (`partial`) and layer-wise learning
rates (`partial`, `full`) from this one map: layer l gets `backbone_lr * decay ** (L - l)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerMap:
    num_blocks: int
    layer_of: dict[str, int]  # backbone parameter name -> 0 .. num_blocks
    head_params: frozenset[str]
    block_prefixes: tuple[str, ...]  # module name of each block, bottom to top
    no_weight_decay: frozenset[str] = frozenset()  # beyond the 1-d rule (e.g. timm's pos_embed)

    def in_blocks(self, module_name: str) -> bool:
        return any(module_name == p or module_name.startswith(p + ".") for p in self.block_prefixes)

    def lr_scale(self, name: str, decay: float) -> float:
        return decay ** (self.num_blocks - self.layer_of[name])

    def top_blocks(self, depth: int) -> set[str]:
        """Backbone parameters in the top `depth` blocks, plus the final norm / pooler above them."""
        lowest = self.num_blocks - depth + 1
        return {name for name, layer in self.layer_of.items() if layer >= lowest}


def _head_param_names(model: nn.Module, head_modules: tuple[str, ...]) -> frozenset[str]:
    names = set()
    for module_name in head_modules:
        for pname, _ in model.get_submodule(module_name).named_parameters():
            names.add(f"{module_name}.{pname}")
    return frozenset(names)


def timm_layer_map(model: nn.Module, head_modules: tuple[str, ...]) -> LayerMap:
    """Layer ids from timm's own `group_matcher(coarse=False)`, as `param_groups_layer_decay` uses them."""
    from timm.models import group_parameters
    from timm.models._manipulate import MATCH_PREV_GROUP

    matcher = model.group_matcher(coarse=False)  # type: ignore[operator]
    raw = group_parameters(model, matcher, reverse=True)
    head = _head_param_names(model, head_modules)
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


def _matcher_specs(matcher: object) -> list[tuple[str, tuple | None]]:
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


def hf_layer_map(model: nn.Module, head_modules: tuple[str, ...]) -> LayerMap:
    """The equivalent map for transformers models: embeddings 0, `<blocks>.i` -> i + 1, rest on top."""
    prefix = model.base_model_prefix  # type: ignore[attr-defined]
    blocks_name, blocks = _find_blocks(model.get_submodule(prefix))
    blocks_name = f"{prefix}.{blocks_name}"
    head = _head_param_names(model, head_modules)
    layer_of: dict[str, int] = {}
    seen_blocks = False
    pattern = re.compile(re.escape(blocks_name) + r"\.(\d+)\.")
    for name, _ in model.named_parameters():
        if name in head:
            continue
        match = pattern.match(name)
        if match:
            seen_blocks = True
            layer_of[name] = int(match.group(1)) + 1
        else:
            # Before the blocks: embeddings (0). After them: final norm / pooler (top).
            layer_of[name] = len(blocks) if seen_blocks else 0
    prefixes = tuple(f"{blocks_name}.{i}" for i in range(len(blocks)))
    return LayerMap(len(blocks), layer_of, head, prefixes)


def _find_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of repeated transformer blocks: the one holding the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise ValueError(f"no block list (nn.ModuleList) found in {type(backbone).__name__}")
    return best[1], best[2]


def is_convolutional(model: nn.Module) -> bool:
    """A convolutional network (ResNet, EfficientNet, ConvNeXt, a hybrid ViT's CNN stem): more than
    one 2-d convolution. A plain ViT's single patch-embedding convolution does not make it one."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1
