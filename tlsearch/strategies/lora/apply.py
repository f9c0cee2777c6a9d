"""Batch norms are frozen first (timm.utils.freeze) so a CNN's statistics do not drift under the
adapters; peft then freezes the remaining weights."""

from __future__ import annotations

from tlsearch.models.lora_targets import check_presets, resolve_lora_targets
from tlsearch.models.sources import LoadedModel
from tlsearch.space import Dim
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, adapter_groups, freeze_except
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
    # DoRA's magnitudes (`lora_magnitude_vector`, 1-d) get no decay: it would shrink the weights
    # they scale, not the update.
    groups = adapter_groups(
        model,
        mark="lora_",
        name="lora",
        lr=knobs.lr,
        head_lr=knobs.head_lr,
        weight_decay=common.weight_decay,
        decay_adapters=True,
    )
    return Prepared(model, groups, [], checkpoint=PeftAdapter())


def check(probe: LoadedModel, dims: dict[str, Dim]) -> None:
    check_presets(probe, dims["targets"].choices, "LoRA")
