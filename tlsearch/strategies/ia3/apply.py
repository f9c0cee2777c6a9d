"""As for LoRA, batch norms are frozen first (timm.utils.freeze); peft then freezes the rest."""

from __future__ import annotations

from tlsearch.models.lora_targets import check_presets, is_attention, resolve_lora_targets
from tlsearch.models.sources import LoadedModel
from tlsearch.space import Dim
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, adapter_groups, freeze_except
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
    # Scaling vectors start at 1: weight decay would pull them towards 0, not towards the base model.
    groups = adapter_groups(
        model,
        mark="ia3_",
        name="ia3",
        lr=knobs.lr,
        head_lr=knobs.head_lr,
        weight_decay=common.weight_decay,
        decay_adapters=False,
    )
    return Prepared(model, groups, [], checkpoint=PeftAdapter())


def check(probe: LoadedModel, dims: dict[str, Dim]) -> None:
    check_presets(probe, dims["targets"].choices, "IA3")
