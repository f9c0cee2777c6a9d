"""As for LoRA, batch norms are frozen first (timm.utils.freeze); peft then freezes the rest."""

from __future__ import annotations

from torch import nn

from tlsearch.models.lora_targets import is_attention, resolve_lora_targets
from tlsearch.models.sources import LoadedModel
from tlsearch.space import Dim
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import ParamGroup, Prepared, freeze_except
from tlsearch.strategies.formats import PeftAdapter
from tlsearch.strategies.ia3 import Ia3Knobs


def apply(loaded: LoadedModel, knobs: Ia3Knobs, common: CommonKnobs) -> Prepared:
    from peft import IA3Config, get_peft_model

    targets = resolve_lora_targets(loaded, knobs.targets, method="IA3")
    freeze_except(loaded.model, set(loaded.layers.head_params))
    peft_config = IA3Config(
        target_modules=targets,
        # IA3 scales a feed-forward layer's input and an attention projection's output (the paper's
        # keys, values and the MLP's inner activation).
        feedforward_modules=[t for t in targets if not is_attention(t)],
        modules_to_save=list(loaded.head_modules),
    )
    model = get_peft_model(loaded.model, peft_config)
    vectors: list[tuple[str, nn.Parameter]] = []
    head: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (vectors if "ia3_" in name else head).append((name, param))
    groups = [
        # Scaling vectors start at 1: weight decay would pull them towards 0, not towards the base model.
        ParamGroup.of("ia3", vectors, knobs.lr, 0.0),
        ParamGroup.of("head", [(n, p) for n, p in head if p.ndim > 1], knobs.head_lr, common.weight_decay),
        ParamGroup.of("head_no_decay", [(n, p) for n, p in head if p.ndim <= 1], knobs.head_lr, 0.0),
    ]
    return Prepared(model, [g for g in groups if g.param_names], [], checkpoint=PeftAdapter())


def check(probe: LoadedModel, dims: dict[str, Dim]) -> None:
    """Every target preset searched matches modules of this model (fails now, not in every trial)."""
    for preset in dims["targets"].choices or ():
        resolve_lora_targets(probe, str(preset), method="IA3")
