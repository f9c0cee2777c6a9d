"""The define-by-run space, exercised with optuna.trial.FixedTrial and a real Optuna study."""

from __future__ import annotations

import pickle

import optuna
import pytest

from tlsearch.errors import UserInputError
from tlsearch.space import TrialConfig, build_space, make_sampler, seed_points
from tlsearch.spec import validate_spec
from tlsearch.spec.strategy import STRATEGIES, CommonKnobs
from tlsearch.strategies.lora import LoraKnobs
from tlsearch.strategies.partial import PartialKnobs

BASE = {
    "name": "s",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
}


def spec_with(**sections: object):  # type: ignore[no-untyped-def]
    return validate_spec({**BASE, **sections})


BUILTIN = ["linear_probe", "partial", "full", "lora"]


@pytest.mark.parametrize("strategy", BUILTIN)
def test_fixed_trial_suggests_only_the_chosen_strategys_knobs(strategy: str) -> None:
    space = build_space(spec_with(), num_blocks=6)
    point = space.default_point(strategy)
    trial = optuna.trial.FixedTrial(point)
    constants = space(trial)
    names = set(trial.params) | set(constants)
    own = {f"{strategy}/{k}" for k in STRATEGIES.get(strategy).knobs.model_fields}
    common = {f"common/{k}" for k in CommonKnobs.model_fields}
    assert names == {"strategy"} | own | common
    config = TrialConfig.parse({**trial.params, **constants})
    assert config.strategy == strategy
    assert isinstance(config.knobs, STRATEGIES.get(strategy).knobs)  # the strategy's own, typed
    assert isinstance(config.knobs, LoraKnobs) == (strategy == "lora")
    assert isinstance(config.knobs, PartialKnobs) == (strategy == "partial")
    assert hasattr(config.knobs, "layer_decay") == (strategy in ("partial", "full"))
    assert config.as_dict() == {"strategy": strategy, **trial.params, **constants}  # one name each


def test_fixed_values_are_constants_not_sampled() -> None:
    space = build_space(spec_with(strategies={"lora": {"rank": 8, "targets": "attention"}}), num_blocks=6)
    trial = optuna.trial.FixedTrial(space.default_point("lora"))
    constants = space(trial)
    # One strategy: nothing to choose.
    assert constants["strategy"] == "lora" and "strategy" not in trial.params
    assert constants["lora/rank"] == 8 and "lora/rank" not in trial.params
    assert "lora/lr" in trial.params


def test_real_study_keeps_each_parameter_inside_its_strategy() -> None:
    spec = spec_with()
    space = build_space(spec, num_blocks=6)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    seen = set()
    for i in range(40):
        trial = study.ask()
        constants = space(trial)
        strategy = trial.params["strategy"]
        seen.add(strategy)
        assert all(k == "strategy" or k.split("/")[0] in (strategy, "common") for k in trial.params)
        TrialConfig.parse({**trial.params, **constants})
        study.tell(trial, float(i % 7))
    assert seen == set(BUILTIN)
    # Every name kept one distribution through the whole study (Optuna raises otherwise).
    assert len(study.trials) == 40


def test_sampler_settings_are_explicit() -> None:
    spec = spec_with(search={"sampler": {"n_startup_trials": 3, "seed": 5, "multivariate": True}})
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 3 and sampler._multivariate and sampler._group
    assert isinstance(
        make_sampler(spec_with(search={"sampler": {"type": "random"}})), optuna.samplers.RandomSampler
    )


def test_seed_points_default_one_per_strategy_in_range_and_custom() -> None:
    spec = spec_with(strategies={"full": {}, "lora": {"rank": [4, 16]}})
    space = build_space(spec, num_blocks=6)
    points = seed_points(spec, space)
    assert [p["strategy"] for p in points] == ["full", "lora"]
    assert points[1]["lora/rank"] == 4  # preferred 8 is not a choice: the first choice
    custom = spec_with(search={"seed_configs": [{"strategy": "lora", "rank": 16, "lr": 2e-3}]})
    (point,) = seed_points(custom, build_space(custom, num_blocks=6))
    assert point["lora/rank"] == 16 and point["lora/lr"] == 2e-3 and point["lora/head_lr"] == 1e-3
    assert seed_points(spec_with(search={"seed_configs": "none"}), space) == []


def test_seed_points_replay_through_the_space() -> None:
    spec = spec_with()
    space = build_space(spec, num_blocks=6)
    for point in seed_points(spec, space):
        trial = optuna.trial.FixedTrial(point)
        constants = space(trial)
        assert TrialConfig.parse({**trial.params, **constants}).strategy == point["strategy"]


def test_unfreeze_depth_bounded_by_the_model() -> None:
    default = build_space(spec_with(), num_blocks=2)
    dim = default.dims("partial")["unfreeze_depth"]
    assert (dim.low, dim.high) == (1, 2)  # the default 1..4 is clipped
    explicit = spec_with(strategies={"partial": {"unfreeze_depth": {"low": 1, "high": 8}}})
    with pytest.raises(UserInputError, match=r"strategies\.partial\.unfreeze_depth: the model has 6 blocks"):
        build_space(explicit, num_blocks=6)


def test_space_pickles_for_tune_restore() -> None:
    space = build_space(spec_with(), num_blocks=6)
    assert pickle.loads(pickle.dumps(space)) == space


def test_trial_config_rejects_a_mismatched_dict() -> None:
    space = build_space(spec_with(), num_blocks=6)
    good = space.default_point("full")
    TrialConfig.parse(good)
    with pytest.raises(ValueError, match="does not match"):
        TrialConfig.parse({**good, "lora/rank": 8})
    with pytest.raises(ValueError, match="does not match"):
        TrialConfig.parse({k: v for k, v in good.items() if k != "full/layer_decay"})
    nested = {
        "strategy": "full",
        "full": {k.split("/")[1]: v for k, v in good.items() if k.startswith("full/")},
        "common": {k.split("/")[1]: v for k, v in good.items() if k.startswith("common/")},
    }
    assert TrialConfig.parse(nested) == TrialConfig.parse(good)


def test_a_space_of_choices_and_integers_lists_its_configurations() -> None:
    space = build_space(
        spec_with(
            strategies={
                "linear_probe": {"head_lr": [0.001, 0.01]},
                "partial": {
                    "head_lr": [0.01],
                    "backbone_lr": [1e-4],
                    "layer_decay": [0.8],
                    "unfreeze_depth": [1, 2],
                },
                "common": {"weight_decay": [0.0], "batch_size": [16, 32]},
            }
        ),
        num_blocks=6,
    )
    points = space.enumerate()
    assert points is not None and len(points) == 2 * 2 + 2 * 2
    assert {"strategy": "partial", "partial/unfreeze_depth": 2, "common/batch_size": 32} in points
    # What Optuna records for a trial is exactly one of them.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    space(trial)
    assert trial.params in points


def test_a_float_range_is_not_listed() -> None:
    assert build_space(spec_with(strategies={"linear_probe": {}}), num_blocks=6).enumerate() is None


def test_focal_gamma_is_searched_only_where_the_loss_is_focal() -> None:
    spec = spec_with(
        strategies={
            "linear_probe": {"head_lr": 1e-3},
            "common": {
                "loss": ["cross_entropy", "focal"],
                "focal_gamma": [1.0, 2.0, 3.0],
                "weight_decay": 0.0,
                "batch_size": 16,
            },
        }
    )
    space = build_space(spec, num_blocks=6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        constants = space(trial)
        loss = trial.params["common/loss"]
        seen.add(loss)
        config = TrialConfig.parse({**trial.params, **constants})
        if loss == "focal":
            assert trial.params["common/focal_gamma"] in (1.0, 2.0, 3.0)
        else:
            # not sampled: the trial gets the preferred value, and the sampler models nothing
            assert "common/focal_gamma" not in trial.params and config.common.focal_gamma == 2.0
        study.tell(trial, 0.0)
    assert seen == {"cross_entropy", "focal"}
    # Listed in full: 1 cross-entropy configuration + 3 focal ones.
    listed = space.enumerate()
    assert listed is not None and len(listed) == 4
    assert sum("common/focal_gamma" in p for p in listed) == 3
    # A seed configuration enqueues only what its trial suggests.
    (seed,) = seed_points(
        validate_spec(
            {
                **BASE,
                "strategies": spec.strategies.model_dump(exclude_unset=True),
                "search": {"seed_configs": [{"strategy": "linear_probe", "loss": "cross_entropy"}]},
            }
        ),
        space,
    )
    assert seed == {"common/loss": "cross_entropy"}


def test_a_knob_applies_only_with_a_choice_of_an_earlier_knob() -> None:
    from typing import Annotated

    from tlsearch.spec.params import Param
    from tlsearch.spec.strategy import Knob, Knobs

    with pytest.raises(TypeError, match="applies_when names a choice"):

        class Broken(Knobs):  # declaring it is the test
            gamma: Annotated[float, Knob(Param.of(1.0), 1.0, "x", applies_when=("loss", "focal"))]
