"""Adapter target presets (LoRA's, IA3's) resolved against the model's own module names (never the head).

- `attention`: linear layers inside the blocks whose path names an attention module
  (`attn`, `attention`, `self_attn`, ...): timm's `attn.qkv`/`attn.proj`, BERT's
  `attention.self.query`/`attention.output.dense`, Llama's `self_attn.q_proj`, ...
- `attention_mlp`: every linear layer inside the blocks.
- `all_linear`: every linear layer of the backbone (blocks, pooler, projections), not the head.
"""

from __future__ import annotations

import re

from torch import nn

from tlsearch.errors import UserInputError
from tlsearch.models.sources import LoadedModel
from tlsearch.spec import vocab

_ATTENTION = re.compile(r"(^|_)(attn|attention)($|_)", re.IGNORECASE)


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # GPT-2 style models use transformers' Conv1D as their linear layer; peft supports it.
    return type(module).__name__ == "Conv1D"


def linear_modules(loaded: LoadedModel) -> list[str]:
    head = loaded.head_modules
    return [
        name
        for name, module in loaded.model.named_modules()
        if name and _is_linear(module) and not any(name == h or name.startswith(h + ".") for h in head)
    ]


def is_attention(name: str) -> bool:
    """A module whose path names an attention module (`blocks.0.attn.qkv`)."""
    return any(_ATTENTION.search(part) for part in name.split("."))


def resolve_lora_targets(loaded: LoadedModel, preset: str, method: str = "LoRA") -> list[str]:
    """The module names `preset` selects; `method` names the adapters (and their strategy, whose
    `targets` key the messages name)."""
    if preset not in vocab.LORA_TARGET_PRESETS:
        raise UserInputError(
            f"strategies.{method.lower()}.targets: unknown {method} target preset `{preset}`; known: "
            f"{', '.join(vocab.LORA_TARGET_PRESETS)}"
        )
    candidates = linear_modules(loaded)
    in_blocks = [n for n in candidates if loaded.layers.in_blocks(n)]
    if preset == "all_linear":
        targets = candidates
    elif preset == "attention_mlp":
        targets = in_blocks
    else:
        targets = [n for n in in_blocks if is_attention(n)]
    if not targets:
        shown = ", ".join(candidates[:8]) + (" ..." if len(candidates) > 8 else "")
        fix = (
            f"choose a preset that selects some of them ({', '.join(_presets_matching(loaded, candidates))})"
            if candidates
            else "none (a convolutional model): use partial or full fine-tuning instead"
        )
        raise UserInputError(
            f"strategies.{method.lower()}.targets: the {method} target preset `{preset}` matches no module "
            f"of this model. Linear modules outside the head: {shown + '; ' if candidates else ''}{fix}"
        )
    return targets


def _presets_matching(loaded: LoadedModel, candidates: list[str]) -> list[str]:
    """The presets that select at least one of `candidates` (all_linear always does)."""
    in_blocks = [n for n in candidates if loaded.layers.in_blocks(n)]
    found = {"attention": any(is_attention(n) for n in in_blocks), "attention_mlp": bool(in_blocks)}
    return [p for p in vocab.LORA_TARGET_PRESETS if found.get(p, True)]


def check_presets(probe: LoadedModel, presets: tuple[object, ...] | None, method: str) -> None:
    """Every target preset a search space holds matches modules of this model (a strategy's `check`:
    fails before the search, not in every trial)."""
    for preset in presets or ():
        resolve_lora_targets(probe, str(preset), method)
