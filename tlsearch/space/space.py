"""The conditional search space as an Optuna define-by-run function.

`strategy` is suggested first; then only that strategy's knobs, namespaced per strategy
(`lora/rank`, `partial/unfreeze_depth`), so every parameter name keeps one distribution for the
whole study (docs/design.md §20). Knobs shared by all strategies live under `common/`.
Fixed values are returned as constants, not suggested, so the sampler only models real choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from tlsearch.errors import UserInputError
from tlsearch.spec.model import Spec
from tlsearch.spec.params import Param
from tlsearch.spec.strategy import COMMON, STRATEGIES, CommonKnobs, Knobs

STRATEGY_PARAM = "strategy"


@dataclass(frozen=True)
class Dim:
    """One knob's distribution, plain data so the space pickles with Tune's searcher state."""

    kind: str  # float | int | str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    preferred: Any = None  # the knob's preferred value (seed configurations), before clipping
    # (knob, value): suggested only where that knob of the same section takes that value; elsewhere
    # the trial gets the default, unsampled (Knob.applies_when).
    applies_when: tuple[str, Any] | None = None

    @classmethod
    def of(cls, knobs: type[Knobs], name: str, p: Param) -> Dim:
        knob = knobs.knob(name)
        return cls(
            knobs.kind(name), p.choices, p.low, p.high, p.log, p.step, knob.preferred, knob.applies_when
        )

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether the knob is in play, given the section's values so far (by knob name)."""
        return self.applies_when is None or values.get(self.applies_when[0]) == self.applies_when[1]

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        assert self.low is not None and self.high is not None  # a range
        if self.kind == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def values(self) -> list[Any] | None:
        """Every value the knob can take, or None where they are not few and discrete (a float range)."""
        if self.choices is not None:
            return list(self.choices)
        if self.kind == "int" and not self.log and self.low is not None and self.high is not None:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None

    def default(self) -> Any:
        """The preferred value where the range admits it, else the nearest admissible one."""
        return Param(choices=self.choices, low=self.low, high=self.high, log=self.log).default(self.preferred)


@dataclass(frozen=True)
class SearchSpace:
    """Callable define-by-run space. A module-level class so `Tuner.restore` can unpickle it."""

    strategies: tuple[tuple[str, tuple[tuple[str, Dim], ...]], ...]
    common: tuple[tuple[str, Dim], ...]

    def strategy_names(self) -> list[str]:
        return [name for name, _ in self.strategies]

    def dims(self, strategy: str) -> dict[str, Dim]:
        return dict(dict(self.strategies)[strategy])

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        names = self.strategy_names()
        strategy = names[0] if len(names) == 1 else trial.suggest_categorical(STRATEGY_PARAM, names)
        constants: dict[str, Any] = {STRATEGY_PARAM: strategy} if len(names) == 1 else {}
        for prefix, dims in ((strategy, self.dims(strategy)), (COMMON, dict(self.common))):
            values: dict[str, Any] = {}
            for knob, dim in dims.items():
                name = f"{prefix}/{knob}"
                if dim.fixed:
                    constants[name] = values[knob] = dim.choices[0]  # type: ignore[index]
                elif not dim.applies(values):
                    constants[name] = values[knob] = dim.default()
                else:
                    values[knob] = dim.suggest(trial, name)
        return constants

    def enumerate(self, limit: int = 10_000) -> list[dict[str, Any]] | None:
        """Every configuration, as the flat parameters the space suggests (Optuna's `trial.params`),
        where every knob takes finitely many values and there are at most `limit` of them; else None."""
        points: list[dict[str, Any]] = []
        names = self.strategy_names()
        for strategy in names:
            strategy_points: list[dict[str, Any]] = [{STRATEGY_PARAM: strategy} if len(names) > 1 else {}]
            for prefix, dims in ((strategy, self.dims(strategy)), (COMMON, dict(self.common))):
                for knob, dim in dims.items():
                    if dim.fixed:
                        continue
                    values = dim.values()
                    if values is None or len(strategy_points) * len(values) + len(points) > limit:
                        return None
                    strategy_points = [
                        q
                        for p in strategy_points
                        for q in (
                            [{**p, f"{prefix}/{knob}": v} for v in values]
                            if dim.applies(self._section_values(p, prefix, dims))
                            else [p]
                        )
                    ]
            points.extend(strategy_points)
        return points

    @staticmethod
    def _section_values(point: dict[str, Any], prefix: str, dims: dict[str, Dim]) -> dict[str, Any]:
        """A section's knob values in a flat point, the fixed ones included."""
        values = {k: d.choices[0] for k, d in dims.items() if d.fixed}  # type: ignore[index]
        values.update({k.split("/", 1)[1]: v for k, v in point.items() if k.startswith(f"{prefix}/")})
        return values

    def is_suggested(self, name: str, point: dict[str, Any] | None = None) -> bool:
        """Whether the space suggests `name` (in the configuration `point`, where a knob applies only
        with another one's value)."""
        if name == STRATEGY_PARAM:
            return len(self.strategies) > 1
        prefix, knob = name.split("/", 1)
        dims = dict(self.common) if prefix == COMMON else self.dims(prefix)
        dim = dims[knob]
        if dim.fixed:
            return False
        return point is None or dim.applies(self._section_values(point, prefix, dims))

    def default_point(self, strategy: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """A full flat config for `strategy`: preferred defaults, clipped into range, then overrides."""
        overrides = overrides or {}
        point: dict[str, Any] = {STRATEGY_PARAM: strategy}
        for prefix, dims in ((strategy, self.dims(strategy)), (COMMON, dict(self.common))):
            for knob, dim in dims.items():
                point[f"{prefix}/{knob}"] = overrides.get(knob, dim.default())
        return point


def build_space(spec: Spec, num_blocks: int | None = None) -> SearchSpace:
    """The space for `spec`. `num_blocks` (the backbone's block count) bounds the knobs marked
    `at_most_blocks` (partial's `unfreeze_depth`)."""
    strategies = []
    for name in spec.strategies.enabled():
        space, knobs = spec.strategies.space(name), STRATEGIES.get(name).knobs
        dims = []
        for knob in knobs.model_fields:
            param: Param = getattr(space, knob)
            if knobs.knob(knob).at_most_blocks and num_blocks is not None:
                param = _at_most(
                    param, num_blocks, f"strategies.{name}.{knob}", explicit=knob in space.model_fields_set
                )
            dims.append((knob, Dim.of(knobs, knob, param)))
        strategies.append((name, tuple(dims)))
    common = spec.strategies.common
    common_dims = tuple(
        (knob, Dim.of(CommonKnobs, knob, getattr(common, knob))) for knob in CommonKnobs.model_fields
    )
    return SearchSpace(tuple(strategies), common_dims)


def _at_most(param: Param, num_blocks: int, where: str, *, explicit: bool) -> Param:
    """An integer knob's range bounded by the model's block count."""
    values = [int(v) for v in (param.choices or (param.low, param.high)) if v is not None]
    if max(values) <= num_blocks:
        return param
    if explicit:
        raise UserInputError(
            f"{where}: the model has {num_blocks} blocks, so values must be ≤ {num_blocks}, but the range "
            f"is {param.describe()}"
        )
    if param.choices is not None:
        kept = tuple(c for c in values if c <= num_blocks) or (num_blocks,)
        return Param(choices=kept)
    return Param(low=min(values[0], num_blocks), high=num_blocks)


def seed_points(spec: Spec, space: SearchSpace) -> list[dict[str, Any]]:
    """Configurations evaluated first (Tune's points_to_evaluate), flat Optuna names."""
    seeds = spec.search.seed_configs
    if seeds == "none":
        return []
    if seeds == "default":
        points = [space.default_point(s) for s in space.strategy_names()]
    else:
        points = [space.default_point(seed.strategy, seed.knobs()) for seed in seeds]
    # Enqueue only what the space suggests; constants come back from the space function itself.
    return [{k: v for k, v in p.items() if space.is_suggested(k, p)} for p in points]


def make_sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    s = spec.search.sampler
    seed = s.seed if s.seed is not None else spec.seed
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=s.n_startup_trials,
        multivariate=s.multivariate,
        group=s.group and s.multivariate,
        constant_liar=s.constant_liar,
    )
