"""Batch norms are frozen first (timm.utils.freeze) so a CNN's statistics do not drift under the
adapters; peft then freezes the remaining weights."""

from __future__ import annotations

from torch import nn

from tlsearch.models.lora_targets import resolve_lora_targets
from tlsearch.models.sources import LoadedModel
from tlsearch.space import Dim
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import ParamGroup, Prepared, freeze_except
from tlsearch.strategies.formats import PeftAdapter
from tlsearch.strategies.lora import LoraKnobs


def apply(loaded: LoadedModel, knobs: LoraKnobs, common: CommonKnobs) -> Prepared:
    from peft import LoraConfig, get_peft_model

    targets = resolve_lora_targets(loaded, knobs.targets)
    # Freeze everything (batch norms become FrozenBatchNorm2d) before peft adds the adapters.
    freeze_except(loaded.model, set(loaded.layers.head_params))
    peft_config = LoraConfig(
        r=knobs.rank,
        lora_alpha=knobs.alpha,  # type: ignore[arg-type]  # peft annotates an int; alphas may be any number
        lora_dropout=knobs.dropout,
        target_modules=targets,
        modules_to_save=list(loaded.head_modules),
        bias="none",
        use_dora=knobs.variant == "dora",
        use_rslora=knobs.variant == "rslora",
    )
    model = get_peft_model(loaded.model, peft_config)
    adapters: list[tuple[str, nn.Parameter]] = []
    head: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if param.requires_grad:  # DoRA's magnitudes are `lora_magnitude_vector`
            (adapters if "lora_" in name else head).append((name, param))
    groups = [
        ParamGroup.of("lora", [(n, p) for n, p in adapters if p.ndim > 1], knobs.lr, common.weight_decay),
        # DoRA's magnitudes: decaying them would shrink the weights they scale, not the update.
        ParamGroup.of("lora_no_decay", [(n, p) for n, p in adapters if p.ndim <= 1], knobs.lr, 0.0),
        ParamGroup.of("head", [(n, p) for n, p in head if p.ndim > 1], knobs.head_lr, common.weight_decay),
        ParamGroup.of("head_no_decay", [(n, p) for n, p in head if p.ndim <= 1], knobs.head_lr, 0.0),
    ]
    return Prepared(model, [g for g in groups if g.param_names], [], checkpoint=PeftAdapter())


def check(probe: LoadedModel, dims: dict[str, Dim]) -> None:
    """Every target preset searched matches modules of this model (fails now, not in every trial)."""
    for preset in dims["targets"].choices or ():
        resolve_lora_targets(probe, str(preset))
