"""LP-FT: the head is probed alone on frozen features before the first epoch (on the feature cache,
or through the whole model where the cache is off: the same head either way), then everything
trains at layer-wise rates; a trial restored from a checkpoint does not probe again."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.strategies.test_strategies import model_spec
from tlsearch.models import build_model
from tlsearch.strategies.base import prepare
from tlsearch.testing import text_spec, trial_config, trial_inputs
from tlsearch.train.loop import setup_training, train_trial
from tlsearch.train.session import LocalSession, TuneSession

LP_FT = trial_config(
    "lp_ft",
    head_lr=3e-2,
    backbone_lr=1e-3,
    layer_decay=0.5,
    probe_epochs=15,
    weight_decay=0.0,
    warmup_fraction=0.0,
    batch_size=8,
)


def test_everything_trains_at_layerwise_rates_after_the_probe(tiny_bert: Path) -> None:
    loaded = build_model(model_spec("hf", tiny_bert), num_classes=3)
    prepared = prepare(loaded, LP_FT)
    layers = loaded.layers
    assert prepared.head_probe_epochs == 15
    assert all(p.requires_grad for p in prepared.model.parameters())
    lr_of = {name: g.lr for g in prepared.param_groups for name in g.param_names}
    for name, _ in prepared.model.named_parameters():
        expected = (
            3e-2 if name in layers.head_params else 1e-3 * 0.5 ** (layers.num_blocks - layers.layer_of[name])
        )
        assert lr_of[name] == pytest.approx(expected), name


def probed(tiny_bert: Path, text_data: dict, tmp_path: Path, **training: object):  # type: ignore[no-untyped-def]
    spec = text_spec(tiny_bert, text_data, tmp_path / "runs", training=training)
    return setup_training(trial_inputs(spec, LP_FT, tmp_path), TuneSession(use_gpu=False))


def test_the_probe_trains_the_head_alone_cached_or_not(
    tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    fresh = dict(build_model(model_spec("hf", tiny_bert), num_classes=3).model.named_parameters())
    layers = build_model(model_spec("hf", tiny_bert), num_classes=3).layers
    cached = probed(tiny_bert, text_data, tmp_path / "a")
    assert cached.head_probe is not None and cached.head_probe.feature_cache == "built"
    assert cached.head_probe.train_loss < math.log(3)  # it fitted the training rows
    again = probed(tiny_bert, text_data, tmp_path / "a")  # the same run directory: its cache
    assert again.head_probe is not None and again.head_probe.feature_cache == "reused"
    uncached = probed(tiny_bert, text_data, tmp_path / "b", feature_cache="off")
    assert uncached.head_probe is not None and uncached.head_probe.feature_cache == "off"
    for training in (cached, uncached):
        params = dict(training.prepared.model.named_parameters())
        for name, value in params.items():
            moved = not torch.equal(value.detach(), fresh[name].detach())
            assert moved == (name in layers.head_params), name
        assert all(p.requires_grad for p in params.values())  # then everything trains
    # The cache stores what the head reads: the same probe, within float error.
    heads = [
        {n: p for n, p in t.prepared.model.named_parameters() if n in layers.head_params}
        for t in (cached, uncached)
    ]
    for name in layers.head_params:
        torch.testing.assert_close(heads[0][name], heads[1][name], atol=1e-4, rtol=1e-4)


def test_a_continued_trial_does_not_probe_again(tiny_bert: Path, text_data: dict, tmp_path: Path) -> None:
    spec = text_spec(tiny_bert, text_data, tmp_path / "runs", search={"max_epochs": 3})
    a_inputs = trial_inputs(spec, LP_FT, tmp_path)
    a = LocalSession(checkpoints_to=tmp_path / "a")
    train_trial(a_inputs, a)
    assert all(r["head_probe_s"] > 0 and r["feature_cache"] == "built" for r in a.reports)
    b = LocalSession()
    continues_from = str(tmp_path / "a" / "epoch_0001")
    train_trial(replace(a_inputs, trial_id="b", started_at=time.time(), continues_from=continues_from), b)
    assert [r["epoch"] for r in b.reports] == [1, 2, 3]
    assert all(r["head_probe_s"] is None for r in b.reports[1:])
    for mine, theirs in zip(b.reports[1:], a.reports[1:], strict=True):
        for name in ("train_loss", "val_loss", "val_accuracy"):
            assert mine[name] == pytest.approx(theirs[name], abs=1e-5), (mine["epoch"], name)
