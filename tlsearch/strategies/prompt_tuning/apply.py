from __future__ import annotations

from typing import Any

from tlsearch.errors import UserInputError
from tlsearch.models.sources import LoadedModel
from tlsearch.space import Dim
from tlsearch.spec.strategy import CommonKnobs
from tlsearch.strategies.base import Prepared, adapter_groups
from tlsearch.strategies.formats import PeftAdapter
from tlsearch.strategies.prompt_tuning import PromptTuningKnobs


def apply(loaded: LoadedModel, knobs: PromptTuningKnobs, common: CommonKnobs) -> Prepared:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    peft_config = PromptTuningConfig(
        task_type=TaskType.SEQ_CLS,
        num_virtual_tokens=knobs.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        modules_to_save=list(loaded.head_modules),
    )
    # peft freezes every weight of the model; the prompt and the head's trained copy train.
    model = get_peft_model(loaded.model, peft_config)
    # The virtual tokens are embeddings: no decay towards 0, which no real token sits at.
    groups = adapter_groups(
        model,
        mark="prompt_encoder.",
        name="prompt",
        lr=knobs.lr,
        head_lr=knobs.head_lr,
        weight_decay=common.weight_decay,
        decay_adapters=False,
    )
    return Prepared(model, groups, [], checkpoint=PeftAdapter())


def check(probe: LoadedModel, dims: dict[str, Dim]) -> None:
    """A Hugging Face text model, with room for the virtual tokens among its positions."""
    if probe.pooling is None or probe.source.name != "hf":
        raise UserInputError(
            "strategies.prompt_tuning: prompt tuning needs a Hugging Face text model (it puts trained "
            "token embeddings before the input); remove it for this model"
        )
    config: Any = getattr(probe.model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    most = max(int(v) for v in (dims["num_virtual_tokens"].values() or [dims["num_virtual_tokens"].high]))
    if positions is not None and most >= positions:
        raise UserInputError(
            f"strategies.prompt_tuning.num_virtual_tokens: the model has {positions} positions, so "
            f"the virtual tokens must be fewer, but up to {most} are searched"
        )
