"""What a strategy does: given a loaded model and a trial's knobs, say what trains and how fast.

One small interface for every strategy and model source: a strategy's implementation module has
`apply(loaded, knobs, common) -> Prepared` (the model to train, its optimizer parameter groups with
per-group learning rates, the modules that stay frozen in eval mode, and the format its checkpoints
take), and may have `check(probe, dims)` (refuses a search space the architecture cannot serve,
before any trial starts). `prepare` and `check` find that module through the strategy's registration
(tlsearch.spec.strategy).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tlsearch.models.layers import LayerMap
from tlsearch.models.sources import LoadedModel
from tlsearch.space import Dim, TrialConfig
from tlsearch.spec.strategy import STRATEGIES
from tlsearch.strategies.formats import CheckpointFormat, TrainableWeights


@dataclass
class ParamGroup:
    """An optimizer parameter group, by parameter name in the prepared model: the optimizer's groups
    are built from the model as the session wrapped it (a wrapper may replace the parameter objects:
    FSDP2's `fully_shard` does), looked up by these names."""

    name: str
    param_names: list[str]
    lr: float
    weight_decay: float
    size: int  # parameters in the group

    @classmethod
    def of(
        cls, name: str, named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float
    ) -> ParamGroup:
        return cls(name, [n for n, _ in named], lr, weight_decay, sum(p.numel() for _, p in named))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.size,
            "tensors": len(self.param_names),
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
    # What a checkpoint holds of the model and in which files (passed in by each strategy).
    checkpoint: CheckpointFormat = field(default_factory=TrainableWeights)
    # Gradual unfreezing: the parameter names that train in an epoch (0-based; a set that only
    # grows). None: what trains never changes. `param_groups` hold every parameter that ever trains.
    trainable_at: Callable[[int], set[str]] | None = None
    # LP-FT: epochs the head trains alone on the frozen backbone's features before the trial's first
    # epoch (tlsearch.train.head_probe); 0: none.
    head_probe_epochs: int = 0

    @property
    def trainable_params(self) -> int:
        """Parameters the optimizer trains (by the last epoch, where blocks join gradually)."""
        return sum(g.size for g in self.param_groups)

    def enter_epoch(self, epoch: int) -> bool:
        """Gradual unfreezing: what trains in `epoch` gets `requires_grad`, the rest not, and the
        modules with nothing left to train are the ones kept in eval mode. Whether that changed."""
        if self.trainable_at is None:
            return False
        wanted = self.trainable_at(epoch)
        changed = False
        for name, param in self.model.named_parameters():
            if param.requires_grad != (name in wanted):
                param.requires_grad_(name in wanted)
                changed = True
        if changed:
            self.frozen_modules = fully_frozen_modules(self.model)
        return changed

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        for module in self.frozen_modules:
            module.eval()

    def optimizer_groups(self, wrapped: nn.Module, trained: nn.Module | None = None) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, each parameter looked up by name in `wrapped`, the module as
        the session wrapped it: a wrapper that replaces the parameter objects (FSDP2's `fully_shard`)
        keeps every group and its learning rate. `trained` is what was wrapped: the prepared model (the
        default), or the tail that trains on cached features, which holds the model's own modules under
        other names."""
        trained = self.model if trained is None else trained
        name_in_trained = {id(p): name for name, p in trained.named_parameters()}
        renamed = {name: name_in_trained.get(id(p)) for name, p in self.model.named_parameters()}
        inner = wrapped.module if isinstance(wrapped, DistributedDataParallel) else wrapped
        params = dict(inner.named_parameters())
        groups = []
        for group in self.param_groups:
            missing = [n for n in group.param_names if renamed.get(n) not in params]
            if missing:
                raise RuntimeError(
                    f"parameter group {group.name}: {missing[:3]} are not in the module that trains"
                )
            found = [params[renamed[n]] for n in group.param_names]
            groups.append(
                {"params": found, "lr": group.lr, "weight_decay": group.weight_decay, "name": group.name}
            )
        return groups


def implementation(strategy: str) -> ModuleType:
    return importlib.import_module(STRATEGIES.get(strategy).implementation)


def prepare(loaded: LoadedModel, config: TrialConfig) -> Prepared:
    """Apply the trial's strategy to a freshly loaded model."""
    return implementation(config.strategy).apply(loaded, config.knobs, config.common)


def check(strategy: str, probe: LoadedModel, dims: dict[str, Dim]) -> None:
    """Refuse (UserInputError) a strategy's search space that this architecture cannot serve;
    `probe` is the model built on the meta device."""
    hook = getattr(implementation(strategy), "check", None)
    if hook is not None:
        hook(probe, dims)


# --- shared mechanics -----------------------------------------------------------------------


def freeze_except(model: nn.Module, trainable: set[str]) -> list[nn.Module]:
    """Freeze every parameter not in `trainable` and convert the batch norms of fully frozen modules
    to FrozenBatchNorm2d (timm.utils.freeze), so their running statistics stop moving too.
    Returns the outermost fully frozen modules."""
    from timm.utils import freeze

    frozen = _outermost_frozen(model, trainable)
    if frozen:
        freeze(model, frozen)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return [model.get_submodule(n) for n in frozen]


def fully_frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost modules none of whose parameters train (as they stand now), to keep in eval mode:
    no dropout noise, no batch-norm statistics moving."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return [model.get_submodule(n) for n in _outermost_frozen(model, trainable)]


def _outermost_frozen(model: nn.Module, trainable: set[str]) -> list[str]:
    frozen: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in frozen):
            continue
        names = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if names and not any(n in trainable for n in names):
            frozen.append(name)
    return frozen


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
    members: dict[str, list[tuple[str, nn.Parameter]]] = {}
    rates: dict[str, tuple[float, float]] = {}
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
        members.setdefault(key, []).append((name, param))
        rates[key] = (lr, 0.0 if no_decay else weight_decay)
    groups = [ParamGroup.of(key, named, *rates[key]) for key, named in members.items()]
    return sorted(groups, key=lambda g: (g.name.startswith("head"), g.name))


def layerwise(
    loaded: LoadedModel,
    trainable: set[str],
    *,
    head_lr: float,
    backbone_lr: float,
    layer_decay: float,
    weight_decay: float,
    feature_boundary: str | None = None,
) -> Prepared:
    """`trainable` trains at the layer-wise rates (head_lr for the head, backbone_lr for the top block,
    decaying by layer_decay per block below); the rest is frozen and kept in eval mode."""
    model = loaded.model
    frozen = freeze_except(model, trainable)
    groups = layerwise_groups(
        model.named_parameters(),
        loaded.layers,
        head_lr=head_lr,
        backbone_lr=backbone_lr,
        decay=layer_decay,
        weight_decay=weight_decay,
    )
    return Prepared(model, groups, frozen, feature_boundary)


def adapter_groups(
    model: nn.Module,
    *,
    mark: str,
    name: str,
    lr: float,
    head_lr: float,
    weight_decay: float,
    decay_adapters: bool,
) -> list[ParamGroup]:
    """A peft model's optimizer groups: the adapters' trained tensors (names holding `mark`) at `lr`,
    the head peft trains in full (`modules_to_save`) at `head_lr`. No weight decay on 1-d tensors, nor
    on the adapters unless `decay_adapters` (scaling vectors and prompts decay towards 0, which is not
    the base model)."""
    adapters: list[tuple[str, nn.Parameter]] = []
    head: list[tuple[str, nn.Parameter]] = []
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            (adapters if mark in param_name else head).append((param_name, param))

    def by_decay(members: list[tuple[str, nn.Parameter]], key: str, rate: float) -> list[ParamGroup]:
        return [
            ParamGroup.of(key, [(n, p) for n, p in members if p.ndim > 1], rate, weight_decay),
            ParamGroup.of(f"{key}_no_decay", [(n, p) for n, p in members if p.ndim <= 1], rate, 0.0),
        ]

    own = by_decay(adapters, name, lr) if decay_adapters else [ParamGroup.of(name, adapters, lr, 0.0)]
    return [g for g in (*own, *by_decay(head, "head", head_lr)) if g.param_names]
