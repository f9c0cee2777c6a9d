"""Tune's config dict for one trial -> a typed, frozen TrialConfig. Nothing downstream reads raw dicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tlsearch.space.space import COMMON, STRATEGY_PARAM
from tlsearch.spec.model import STRATEGY_SPACES, CommonSpace


@dataclass(frozen=True)
class TrialConfig:
    strategy: str
    head_lr: float
    weight_decay: float
    warmup_fraction: float
    batch_size: int
    # Learning rate of the backbone's top block (partial, full) or of the LoRA adapters (lora).
    backbone_lr: float | None = None
    layer_decay: float | None = None
    unfreeze_depth: int | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_targets: str | None = None

    @classmethod
    def parse(cls, config: dict[str, Any]) -> TrialConfig:
        """Accepts Tune's nested dict (`{"lora": {"rank": 8}}`) or flat Optuna names (`lora/rank`)."""
        flat = flatten(config)
        strategy = flat.pop(STRATEGY_PARAM)
        if strategy not in STRATEGY_SPACES:
            raise ValueError(f"unknown strategy {strategy!r} in trial config")
        own = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{strategy}/")}
        common = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{COMMON}/")}
        stray = set(flat) - {f"{strategy}/{k}" for k in own} - {f"{COMMON}/{k}" for k in common}
        if (
            stray
            or set(own) != set(STRATEGY_SPACES[strategy].model_fields)
            or set(common) != set(CommonSpace.model_fields)
        ):
            raise ValueError(f"trial config does not match the {strategy} space: {sorted(flat)}")
        fields: dict[str, Any] = {
            "strategy": strategy,
            "head_lr": float(own["head_lr"]),
            "weight_decay": float(common["weight_decay"]),
            "warmup_fraction": float(common["warmup_fraction"]),
            "batch_size": int(common["batch_size"]),
        }
        if "backbone_lr" in own:
            fields["backbone_lr"] = float(own["backbone_lr"])
        if "layer_decay" in own:
            fields["layer_decay"] = float(own["layer_decay"])
        if "unfreeze_depth" in own:
            fields["unfreeze_depth"] = int(own["unfreeze_depth"])
        if strategy == "lora":
            fields.update(
                backbone_lr=float(own["lr"]),
                lora_rank=int(own["rank"]),
                lora_alpha=float(own["alpha"]),
                lora_dropout=float(own["dropout"]),
                lora_targets=str(own["targets"]),
            )
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Continuation:
    """A trial that continues another one's training (ASHA's promotion of a trial it stopped): the
    searcher puts these two keys beside the hyperparameters in Tune's config; the trial starts from
    the checkpoint `trial_id` wrote at `epoch` (where ASHA stopped it)."""

    trial_id: str
    epoch: int

    TRIAL_KEY = "continues_trial"
    EPOCH_KEY = "continues_epoch"

    def into(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, self.TRIAL_KEY: self.trial_id, self.EPOCH_KEY: self.epoch}

    @classmethod
    def split(cls, config: dict[str, Any]) -> tuple[dict[str, Any], Continuation | None]:
        """Tune's config -> (the hyperparameters, the continuation or None)."""
        rest = {k: v for k, v in config.items() if k not in (cls.TRIAL_KEY, cls.EPOCH_KEY)}
        if config.get(cls.TRIAL_KEY) is None:
            return rest, None
        return rest, cls(str(config[cls.TRIAL_KEY]), int(config[cls.EPOCH_KEY]))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"lora": {"rank": 8}} -> {"lora/rank": 8} (the names the Optuna study uses)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out
