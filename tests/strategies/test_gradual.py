"""Gradual unfreezing: what trains in each epoch and at which rate, on both model sources; a trial
trains exactly that, and one continued from a checkpoint goes on with the same blocks and optimizer
state."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.strategies.test_strategies import model_spec
from tlsearch.models import build_model
from tlsearch.strategies.base import prepare
from tlsearch.strategies.gradual import unfrozen_blocks
from tlsearch.testing import text_spec, trial_config, trial_inputs
from tlsearch.train.loop import setup_training, train_epoch, train_trial
from tlsearch.train.session import LocalSession, TuneSession

COMMON = {"weight_decay": 0.0, "warmup_fraction": 0.0, "batch_size": 8}


def gradual(probe_epochs: int = 1, unfreeze_every: int = 1):  # type: ignore[no-untyped-def]
    return trial_config(
        "gradual",
        head_lr=1e-2,
        backbone_lr=1e-3,
        layer_decay=0.5,
        probe_epochs=probe_epochs,
        unfreeze_every=unfreeze_every,
        **COMMON,
    )


def test_the_schedule_adds_one_block_every_unfreeze_every_epochs() -> None:
    assert [unfrozen_blocks(e, 2, 1, 3) for e in range(7)] == [0, 0, 1, 2, 3, 4, 4]
    assert [unfrozen_blocks(e, 0, 2, 2) for e in range(7)] == [1, 1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("source", ["timm", "hf"])
def test_trainable_sets_and_learning_rates_by_epoch(source: str, tiny_bert: Path, tiny_vit: Path) -> None:
    torch.manual_seed(0)
    loaded = build_model(model_spec(source, tiny_bert, tiny_vit), num_classes=3)
    layers = loaded.layers
    config = gradual(probe_epochs=1, unfreeze_every=2)
    prepared = prepare(loaded, config)
    everything = {n for n, _ in prepared.model.named_parameters()}
    lr_of = {name: g.lr for g in prepared.param_groups for name in g.param_names}
    assert set(lr_of) == everything  # every parameter has its layer-wise rate from the start
    assert prepared.trainable_params == sum(p.numel() for p in prepared.model.parameters())
    for name in everything - set(layers.head_params):
        expected = 1e-3 * 0.5 ** (layers.num_blocks - layers.layer_of[name])
        assert lr_of[name] == pytest.approx(expected), name

    def training() -> set[str]:
        return {n for n, p in prepared.model.named_parameters() if p.requires_grad}

    assert training() == set(layers.head_params)  # the head alone, as prepared
    for epoch in range(2 * layers.num_blocks + 4):
        depth = unfrozen_blocks(epoch, 1, 2, layers.num_blocks)
        prepared.enter_epoch(epoch)
        assert training() == set(layers.head_params) | layers.top_blocks(depth), epoch
        # what does not train is kept in eval mode, what does is not
        prepared.train_mode(prepared.model)
        for name, module in prepared.model.named_modules():
            own = list(module.parameters(recurse=False))
            if own and name:  # (the root holds its trained children: it stays in train mode)
                assert module.training == any(p.requires_grad for p in own), (epoch, name)
    assert training() == everything


def test_a_trial_trains_only_what_has_joined(tiny_bert: Path, text_data: dict, tmp_path: Path) -> None:
    inputs = trial_inputs(text_spec(tiny_bert, text_data, tmp_path / "runs"), gradual(), tmp_path)
    t = setup_training(inputs, TuneSession(use_gpu=False))
    layers = build_model(model_spec("hf", tiny_bert), num_classes=3).layers  # the same names
    named = dict(t.prepared.model.named_parameters())
    top = layers.top_blocks(1)
    below = set(named) - top - set(layers.head_params)

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in named.items()}

    before = snapshot()
    train_epoch(t, 0)  # the head alone
    after_probe = snapshot()
    assert all(torch.equal(before[n], after_probe[n]) for n in top | below)
    assert any(not torch.equal(before[n], after_probe[n]) for n in layers.head_params)
    train_epoch(t, 1)  # the top block joins; nothing below it moves
    after_one = snapshot()
    assert all(torch.equal(after_probe[n], after_one[n]) for n in below)
    assert any(not torch.equal(after_probe[n], after_one[n]) for n in top)
    assert len(t.trainable) == sum(p.requires_grad for p in named.values())  # clipped set follows


def test_a_continued_trial_goes_on_with_the_same_blocks_and_optimizer_state(
    tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:
    """Trial b continues trial a from a's epoch-2 checkpoint (the top block has joined): its epochs
    3 and 4 (two blocks, then three) match a's."""
    spec = text_spec(tiny_bert, text_data, tmp_path / "runs", search={"max_epochs": 4})
    a_inputs = trial_inputs(spec, gradual(), tmp_path)
    a = LocalSession(checkpoints_to=tmp_path / "a")
    train_trial(a_inputs, a)
    b = LocalSession()
    continues_from = str(tmp_path / "a" / "epoch_0002")
    train_trial(replace(a_inputs, trial_id="b", started_at=time.time(), continues_from=continues_from), b)
    assert [r["epoch"] for r in b.reports] == [2, 3, 4]
    for mine, theirs in zip(b.reports, a.reports[1:], strict=True):
        for name in ("train_loss", "val_loss", "val_accuracy"):
            assert mine[name] == pytest.approx(theirs[name], abs=1e-5), (mine["epoch"], name)
    assert a.reports[0]["train_loss"] != pytest.approx(a.reports[1]["train_loss"], abs=1e-6)
