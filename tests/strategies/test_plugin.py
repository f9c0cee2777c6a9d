"""A strategy defined outside the package: its knobs and `apply` in this module, one registration
line, and then the whole way through: spec -> search space -> trial config -> apply -> one CPU epoch.

The strategy is BitFit (Ben Zaken et al., 2022): only the backbone's biases and the new head train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import optuna
import pytest
from torch import nn

from tlsearch.errors import SpecError
from tlsearch.models import build_model
from tlsearch.models.sources import LoadedModel
from tlsearch.space import TrialConfig, build_space
from tlsearch.spec import validate_spec
from tlsearch.spec.params import Param
from tlsearch.spec.strategy import HEAD_LR, CommonKnobs, Knobs, Strategy, learning_rate, register_strategy
from tlsearch.strategies.base import ParamGroup, Prepared, freeze_except, prepare
from tlsearch.strategies.formats import WEIGHTS_FILE
from tlsearch.testing import text_spec, trial_inputs
from tlsearch.train.loop import train_trial
from tlsearch.train.session import LocalSession


class BitFitKnobs(Knobs):
    """`bitfit`: the backbone's biases and the new head."""

    head_lr: Annotated[float, HEAD_LR]
    bias_lr: Annotated[
        float, learning_rate(Param.range(1e-4, 1e-2, log=True), 1e-3, "Learning rate of the biases.")
    ]


def apply(loaded: LoadedModel, knobs: BitFitKnobs, common: CommonKnobs) -> Prepared:
    head = loaded.layers.head_params
    biases = {name for name, _ in loaded.model.named_parameters() if name.endswith(".bias")} - head
    frozen = freeze_except(loaded.model, biases | head)
    named: list[tuple[str, nn.Parameter]] = list(loaded.model.named_parameters())
    groups = [
        ParamGroup.of("biases", [(n, p) for n, p in named if n in biases], knobs.bias_lr, 0.0),
        ParamGroup.of("head", [(n, p) for n, p in named if n in head], knobs.head_lr, common.weight_decay),
    ]
    return Prepared(loaded.model, groups, frozen)


register_strategy(Strategy("bitfit", BitFitKnobs, __name__, summary="the backbone's biases and the new head"))


def test_a_strategy_registered_in_one_line_runs_spec_to_epoch(
    tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:
    document = text_spec(
        tiny_bert,
        text_data,
        tmp_path / "runs",
        strategies={"bitfit": {"bias_lr": [1e-3, 1e-2]}},
        search={"max_epochs": 1},
    )
    spec = validate_spec(document)
    assert spec.strategies.enabled() == ["bitfit"]
    with pytest.raises(SpecError, match=r"strategies.bitfit.bias_lr: `low` must be > 0"):
        validate_spec({**document, "strategies": {"bitfit": {"bias_lr": {"low": 0.0, "high": 1.0}}}})
    assert (
        "bitfit"
        not in validate_spec({k: v for k, v in document.items() if k != "strategies"}).strategies.enabled()
    )

    space = build_space(spec, num_blocks=2)
    trial = optuna.trial.FixedTrial(space.default_point("bitfit"))
    constants = space(trial)
    config = TrialConfig.parse({**trial.params, **constants})
    assert isinstance(config.knobs, BitFitKnobs) and config.knobs.bias_lr == 1e-3  # the preferred value

    inputs = trial_inputs(document, config, tmp_path)
    prepared = prepare(build_model(spec.model, inputs.run.num_classes), config)
    trainable = {n for n, p in prepared.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable)

    session = LocalSession(checkpoints_to=tmp_path / "checkpoints")
    train_trial(inputs, session)
    (report,) = session.reports
    assert (report["strategy"], report["epoch"]) == ("bitfit", 1)
    assert report["trainable_params"] == prepared.trainable_params
    assert {g["name"]: g["lr"] for g in json.loads(report["param_groups"])} == {"biases": 1e-3, "head": 1e-3}
    assert (tmp_path / "checkpoints" / "epoch_0001" / WEIGHTS_FILE).exists()
