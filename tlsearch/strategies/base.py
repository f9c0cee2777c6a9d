"""What a strategy does: given a loaded model and a trial's config, say what trains and how fast.

One small interface for every strategy and both model sources:
`prepare(loaded, config) -> Prepared` (the model to train, its optimizer parameter groups with
per-group learning rates, the modules that stay frozen in eval mode, and how to save/restore the
trainable state).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from tlsearch.models.layers import LayerMap
from tlsearch.models.sources import LoadedModel
from tlsearch.registry import Registry
from tlsearch.space.trial_config import TrialConfig

WEIGHTS_FILE = "model.safetensors"


@dataclass
class ParamGroup:
    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float
    param_names: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    def for_optimizer(self) -> dict:
        return {"params": self.params, "lr": self.lr, "weight_decay": self.weight_decay, "name": self.name}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "params": self.size,
            "tensors": len(self.params),
            "lr": self.lr,
            "weight_decay": self.weight_decay,
        }


@dataclass
class Prepared:
    model: nn.Module
    param_groups: list[ParamGroup]
    # Kept in eval mode while training (frozen prefix: no dropout noise, no batch-norm updates).
    frozen_modules: list[nn.Module]
    # Where the frozen, deterministic part of the model ends, when it is one prefix whose output can be
    # computed once and reused (tlsearch.models.tails: HEAD or block_boundary(i)); None: not cacheable.
    feature_boundary: str | None = None

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        for module in self.frozen_modules:
            module.eval()

    def checkpoint_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the model (the model's own tensors: copy them to keep them)."""
        return trainable_tensors(model, self.frozen_modules)

    def write_checkpoint(self, model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        """Writes `tensors` (`checkpoint_tensors`, maybe copied earlier) as this strategy's files."""
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS_FILE)
        )

    def save(self, model: nn.Module, directory: Path) -> None:
        self.write_checkpoint(model, self.checkpoint_tensors(model), directory)

    def load(self, model: nn.Module, directory: Path) -> None:
        load_trainable(model, directory)


class Strategy(Protocol):
    def __call__(self, loaded: LoadedModel, config: TrialConfig) -> Prepared: ...


STRATEGIES: Registry[Strategy] = Registry("strategy")


# --- shared mechanics -----------------------------------------------------------------------


def freeze_except(model: nn.Module, trainable: set[str]) -> list[str]:
    """Freeze every parameter not in `trainable` and convert the batch norms of fully frozen modules
    to FrozenBatchNorm2d (timm.utils.freeze), so their running statistics stop moving too.
    Returns the names of the outermost fully frozen modules."""
    from timm.utils import freeze

    frozen_modules: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in frozen_modules):
            continue
        names = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if names and not any(n in trainable for n in names):
            frozen_modules.append(name)
    if frozen_modules:
        freeze(model, frozen_modules)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return frozen_modules


def layerwise_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    layers: LayerMap,
    *,
    head_lr: float,
    backbone_lr: float,
    decay: float,
    weight_decay: float,
) -> list[ParamGroup]:
    """Head at head_lr; backbone layer l at backbone_lr * decay ** (L - l); no weight decay on 1-d
    tensors (biases, norms) and the model's own no-decay list (position embeddings, tokens)."""
    groups: dict[str, ParamGroup] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name in layers.no_weight_decay
        if name in layers.head_params:
            key, lr = "head", head_lr
        else:
            layer = layers.layer_of[name]
            key, lr = f"layer_{layer:02d}", backbone_lr * layers.lr_scale(name, decay)
        key += "_no_decay" if no_decay else ""
        group = groups.get(key)
        if group is None:
            group = groups[key] = ParamGroup(key, [], lr, 0.0 if no_decay else weight_decay)
        group.params.append(param)
        group.param_names.append(name)
    return sorted(groups.values(), key=lambda g: (g.name.startswith("head"), g.name))


def trainable_tensors(model: nn.Module, frozen_modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the buffers of modules that train (e.g. batch-norm statistics)."""
    frozen = {id(m) for fm in frozen_modules for m in fm.modules()}
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        if id(module) in frozen:
            continue
        prefix = f"{module_name}." if module_name else ""
        for pname, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                tensors[prefix + pname] = param
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for bname, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    tensors[prefix + bname] = buf
    return tensors


def load_trainable(model: nn.Module, directory: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(directory / WEIGHTS_FILE))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not fit the model: unexpected keys {result.unexpected_keys[:5]}")
