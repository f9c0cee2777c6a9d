"""The training loop's pieces outside Ray: `setup_training` builds what a trial trains with, and
`train_epoch` trains; channels-last and torch.compile change speed, not results."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tlsearch.models.layers import is_convolutional
from tlsearch.space import TrialConfig
from tlsearch.testing import image_spec, text_spec, trial_config, trial_inputs
from tlsearch.train.inputs import TrialInputs
from tlsearch.train.loop import (
    Training,
    describe_trial,
    evaluate,
    setup_training,
    train_epoch,
    train_trial,
)
from tlsearch.train.session import LocalSession, TuneSession

FULL = trial_config(
    "full",
    head_lr=1e-2,
    weight_decay=0.05,
    warmup_fraction=0.1,
    batch_size=8,
    backbone_lr=1e-3,
    layer_decay=0.8,
)
LORA = trial_config(
    "lora",
    head_lr=1e-2,
    weight_decay=0.05,
    warmup_fraction=0.1,
    batch_size=8,
    lr=2e-3,
    rank=2,
    alpha=4,
    dropout=0.0,
    targets="attention",
)


def one_epoch(inputs: TrialInputs) -> tuple[Training, float, int]:
    training = setup_training(inputs, TuneSession(use_gpu=False))
    loss_sum, seen = train_epoch(training, 0)
    return training, loss_sum.item(), seen


def test_channels_last_is_for_convolutional_networks_only(tiny_bert: Path) -> None:
    import timm
    from transformers import AutoModelForSequenceClassification

    assert is_convolutional(timm.create_model("test_resnet"))
    assert is_convolutional(timm.create_model("test_efficientnet"))
    assert not is_convolutional(timm.create_model("test_vit"))  # one patch-embedding convolution
    assert not is_convolutional(AutoModelForSequenceClassification.from_pretrained(tiny_bert))


def test_an_epoch_trains_every_row_with_fused_adamw(tiny_bert: Path, text_data: dict, tmp_path: Path) -> None:
    inputs = trial_inputs(text_spec(tiny_bert, text_data, tmp_path / "runs"), FULL, tmp_path)
    training = setup_training(inputs, TuneSession(use_gpu=False))
    assert training.optimizer.defaults["fused"] is True
    assert [g["name"] for g in training.optimizer.param_groups] == [
        g.name for g in training.prepared.param_groups
    ]
    assert not training.channels_last and not training.mixed_precision
    described = describe_trial(inputs, training)
    on_cpu = "on cpu: bf16 autocast off, channels-last off, torch.compile off, freed host memory kept on"
    assert on_cpu in described
    before = [p.detach().clone() for p in training.trainable]
    loss_sum, seen = train_epoch(training, 0)
    assert seen == 48 and loss_sum.dtype == torch.float64 and torch.isfinite(loss_sum)
    assert training.scheduler.last_epoch == len(training.train_loader)  # one scheduler step per batch
    assert all(not torch.equal(b, p) for b, p in zip(before, training.trainable, strict=True))
    logits, targets = evaluate(training, TuneSession(use_gpu=False), 3)
    assert logits.shape == (24, 3) and targets.shape == (24,)


def test_channels_last_trains_a_cnn_like_the_contiguous_layout(image_data: dict, tmp_path: Path) -> None:
    from tlsearch.strategies.formats import WEIGHTS_FILE

    def run(channels_last: bool | str) -> tuple[Training, float]:
        model, settings = {"name": "test_resnet"}, {"channels_last": channels_last}
        spec = image_spec(image_data, tmp_path / "runs", model=model, training=settings)
        training, loss, seen = one_epoch(trial_inputs(spec, FULL, tmp_path))
        assert seen == 36
        return training, loss

    auto, auto_loss = run("auto")
    plain, plain_loss = run(False)
    assert auto.channels_last and not plain.channels_last
    convs = [m.weight for m in auto.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert auto_loss == pytest.approx(plain_loss, rel=1e-4)
    for a, b in zip(auto.trainable, plain.trainable, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    # A channels-last checkpoint loads into a contiguous model (and back) unchanged.
    auto.prepared.checkpoint.write(auto.model, auto.prepared.checkpoint.tensors(auto.model), tmp_path)
    assert (tmp_path / WEIGHTS_FILE).is_file()
    plain.prepared.checkpoint.load(plain.model, tmp_path)
    for a, b in zip(auto.trainable, plain.trainable, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("config", [FULL, LORA], ids=["full", "lora"])
def test_a_hugging_face_image_classifier_trains_through_the_loop(
    config: TrialConfig, tiny_vit: Path, image_data: dict, tmp_path: Path
) -> None:
    from tests.train.test_features import hf_image_spec

    spec = hf_image_spec(tiny_vit, image_data, tmp_path / "runs", search={"max_epochs": 1})
    session = LocalSession()
    train_trial(trial_inputs(spec, config, tmp_path), session)
    (report,) = session.reports
    assert report["strategy"] == config.strategy and report["feature_cache"] == "none"
    assert report["train_loss"] > 0 and 0.0 <= report["val_accuracy"] <= 1.0


@pytest.mark.slow
def test_compiled_lora_trains_like_eager_and_checkpoints_the_same_adapter(
    tiny_bert: Path, text_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._inductor.config
    from safetensors.torch import load_file

    from tlsearch.strategies.formats import ADAPTER_FILE

    # Compiled dropout draws its own random numbers; eager's make the two runs comparable.
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)

    results = {}
    for compiled in (False, True):
        spec = text_spec(tiny_bert, text_data, tmp_path / "runs", training={"compile": compiled})
        training, loss, seen = one_epoch(trial_inputs(spec, LORA, tmp_path))
        assert seen == 48
        assert (training.model._compiled_call_impl is not None) == compiled  # nn.Module.compile()
        logits, _ = evaluate(training, TuneSession(use_gpu=False), 3)
        out = tmp_path / f"adapter-{compiled}"
        out.mkdir()
        prepared = training.prepared
        prepared.checkpoint.write(training.model, prepared.checkpoint.tensors(training.model), out)
        results[compiled] = (loss, logits, load_file(str(out / ADAPTER_FILE)))
    (eager_loss, eager_logits, eager_adapter), (loss, logits, adapter) = results[False], results[True]
    assert loss == pytest.approx(eager_loss, rel=1e-4)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-3, atol=1e-4)
    assert adapter.keys() == eager_adapter.keys()  # no `_orig_mod.` in the names
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, eager_adapter[name], rtol=1e-3, atol=1e-5)


def test_a_trial_continues_another_from_its_checkpoint(
    tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:
    """ASHA's promotion: trial b starts from trial a's epoch-1 checkpoint, reports a's epoch 1 again
    (ASHA judges it where a was stopped), then trains epochs 2 and 3 as a did: the same weights,
    optimizer, schedule, data order and random state. Its device-seconds go on from a's."""
    spec = text_spec(tiny_bert, text_data, tmp_path / "runs", search={"max_epochs": 3})
    a_inputs = trial_inputs(spec, FULL, tmp_path)
    a = LocalSession(checkpoints_to=tmp_path / "a")
    train_trial(a_inputs, a)
    b = LocalSession()
    continues_from = str(tmp_path / "a" / "epoch_0001")
    train_trial(replace(a_inputs, trial_id="b", started_at=time.time(), continues_from=continues_from), b)

    assert [r["epoch"] for r in b.reports] == [1, 2, 3]
    for mine, theirs in zip(b.reports, a.reports, strict=True):
        for name in ("train_loss", "val_loss", "val_accuracy", "val_f1_macro"):
            assert mine[name] == pytest.approx(theirs[name], abs=1e-5), name
    # b's epoch 1 is a's report (its timings to the bit), not one b trained.
    assert b.reports[0]["epoch_s"] == a.reports[0]["epoch_s"]
    inherited = a.reports[0]["device_s"]
    assert b.reports[0]["device_s"] == inherited and b.reports[2]["device_s"] > inherited
    assert {r["inherited_device_s"] for r in b.reports} == {inherited}
    assert {r["inherited_device_s"] for r in a.reports} == {0.0}
