"""LoRA (peft): low-rank adapters on the preset's target modules; the new head trains in full.

Batch norms are frozen first (timm.utils.freeze) so a CNN's statistics do not drift under adapters;
peft then freezes the remaining weights. Checkpoints hold the adapter (and head) only, in peft's
own format (`adapter_config.json`, `adapter_model.safetensors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlsearch.models.lora_targets import resolve_lora_targets
from tlsearch.models.sources import LoadedModel
from tlsearch.space.trial_config import TrialConfig
from tlsearch.strategies.base import STRATEGIES, ParamGroup, Prepared, freeze_except

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass
class LoraPrepared(Prepared):
    def write_checkpoint(self, model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        # peft picks the adapter's and the head's entries out of the state dict it is given: the
        # trainable ones from `tensors` (maybe copied while training went on), the rest are frozen.
        model.save_pretrained(str(directory), state_dict={**model.state_dict(), **tensors})  # type: ignore[operator]

    def load(self, model: nn.Module, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        result = set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))
        if result.unexpected_keys:
            raise RuntimeError(
                f"adapter does not fit the model: unexpected keys {result.unexpected_keys[:5]}"
            )


@STRATEGIES.register("lora")
def lora(loaded: LoadedModel, config: TrialConfig) -> Prepared:
    from peft import LoraConfig, get_peft_model

    assert config.lora_targets and config.lora_rank and config.lora_alpha is not None
    targets = resolve_lora_targets(loaded, config.lora_targets)
    # Freeze everything (batch norms become FrozenBatchNorm2d) before peft adds the adapters.
    freeze_except(loaded.model, set(loaded.layers.head_params))
    peft_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout or 0.0,
        target_modules=targets,
        modules_to_save=list(loaded.head_modules),
        bias="none",
    )
    model = get_peft_model(loaded.model, peft_config)
    adapters: list[tuple[str, nn.Parameter]] = []
    head: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (adapters if "lora_" in name else head).append((name, param))
    assert config.backbone_lr is not None

    def group(name: str, items: list[tuple[str, nn.Parameter]], lr: float, wd: float) -> ParamGroup:
        return ParamGroup(name, [p for _, p in items], lr, wd, [n for n, _ in items])

    groups = [
        group("lora", [(n, p) for n, p in adapters], config.backbone_lr, config.weight_decay),
        group("head", [(n, p) for n, p in head if p.ndim > 1], config.head_lr, config.weight_decay),
        group("head_no_decay", [(n, p) for n, p in head if p.ndim <= 1], config.head_lr, 0.0),
    ]
    return LoraPrepared(model, [g for g in groups if g.params], [])
