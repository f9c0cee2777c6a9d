"""Tune's config dict for one trial -> a typed, frozen TrialConfig. Nothing downstream reads raw dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from tlsearch.space.space import STRATEGY_PARAM
from tlsearch.spec.strategy import COMMON, STRATEGIES, CommonKnobs, Knobs

K = TypeVar("K", bound=Knobs)


@dataclass(frozen=True)
class TrialConfig(Generic[K]):
    """One trial's configuration: its strategy, the knobs every strategy shares, and the strategy's own
    knobs (its `Knobs` class: `TrialConfig[LoraKnobs]` has `knobs.rank`)."""

    strategy: str
    common: CommonKnobs
    knobs: K

    @classmethod
    def parse(cls, config: dict[str, Any]) -> TrialConfig[Knobs]:
        """Accepts Tune's nested dict (`{"lora": {"rank": 8}}`) or flat Optuna names (`lora/rank`);
        the knobs must be exactly the strategy's and the common ones."""
        flat = {k: _plain(v) for k, v in flatten(config).items()}
        strategy = flat.pop(STRATEGY_PARAM, None)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r} in trial config")
        own = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{strategy}/")}
        common = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{COMMON}/")}
        if len(own) + len(common) != len(flat):
            raise ValueError(f"trial config does not match the {strategy} space: {sorted(flat)}")
        try:
            knobs = STRATEGIES.get(strategy).knobs.model_validate(own)
            return TrialConfig(strategy, CommonKnobs.model_validate(common), knobs)
        except ValidationError as exc:
            raise ValueError(f"trial config does not match the {strategy} space: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        """Flat, with the names the study and trials.parquet use (`strategy`, `lora/rank`, ...)."""
        return {
            STRATEGY_PARAM: self.strategy,
            **{f"{self.strategy}/{k}": v for k, v in self.knobs.model_dump().items()},
            **{f"{COMMON}/{k}": v for k, v in self.common.model_dump().items()},
        }


def _plain(value: Any) -> Any:
    """numpy scalars (from a sampler or a table) as Python's own."""
    return value.item() if hasattr(value, "item") else value


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


# Beside the hyperparameters in a baseline trial's Tune config (tlsearch.search.baselines): which
# baseline it is. A trial the searcher proposed has none.
BASELINE_KEY = "baseline"


def split_baseline(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Tune's config -> (the hyperparameters, the baseline's name or None)."""
    rest = {k: v for k, v in config.items() if k != BASELINE_KEY}
    baseline = config.get(BASELINE_KEY)
    return rest, None if baseline is None else str(baseline)


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
