"""Which parameters belong to which depth of the backbone: the map every model source builds
(`ModelSource.layer_map`: timm_source.py, hf_source.py) and every strategy reads.

A LayerMap numbers the backbone from the bottom: 0 is the stem / embeddings, block i is i + 1, and
whatever sits above the last block (final norm, pooler, neck) shares the top block's number L.
Head parameters are kept apart. Strategies derive freezing (`partial`) and layer-wise learning
rates (`partial`, `full`) from this one map: layer l gets `backbone_lr * decay ** (L - l)`.
"""

from __future__ import annotations

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


def head_param_names(model: nn.Module, head_modules: tuple[str, ...]) -> frozenset[str]:
    """Full names of the head modules' parameters: kept apart from the backbone's depth numbering."""
    names = set()
    for module_name in head_modules:
        for pname, _ in model.get_submodule(module_name).named_parameters():
            names.add(f"{module_name}.{pname}")
    return frozenset(names)


def is_convolutional(model: nn.Module) -> bool:
    """A convolutional network (ResNet, EfficientNet, ConvNeXt, a hybrid ViT's CNN stem): more than
    one 2-d convolution. A plain ViT's single patch-embedding convolution does not make it one."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1
