"""An epoch's checkpoint taken between steps and written later (background reports) holds the state
at the moment it was taken, in the same files an immediate write gives."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_loop import FULL, LORA
from tlsearch.testing import text_spec, trial_inputs
from tlsearch.train.checkpoint import META_FILE, STATE_FILE, EpochCheckpoint, host_copy, read_meta, restore
from tlsearch.train.loop import Training, setup_training, train_epoch
from tlsearch.train.session import LocalSession, _InFlight


def _take(training: Training, epoch: int) -> EpochCheckpoint:
    return EpochCheckpoint.take(
        training.prepared,
        training.optimizer,
        training.scheduler,
        meta={"epoch": epoch},
        epoch=epoch,
        wall_s=1.0,
    )


def _files(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: the strategy's safetensors files and the optimizer state."""
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update({f"{path.name}:{k}": v for k, v in load_file(str(path)).items()})
    state = torch.load(directory / STATE_FILE, weights_only=True)
    for index, moments in state["optimizer"]["state"].items():
        tensors.update({f"optimizer:{index}:{k}": v for k, v in moments.items()})
    return tensors


@pytest.mark.parametrize("config", [FULL, LORA], ids=["full", "lora"])
def test_a_detached_checkpoint_keeps_the_state_it_was_taken_at(
    config, tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    inputs = trial_inputs(text_spec(tiny_bert, text_data, tmp_path), config, tmp_path)
    training = setup_training(inputs, LocalSession())
    train_epoch(training, 0)

    at_once, later = tmp_path / "at_once", tmp_path / "later"
    at_once.mkdir()
    later.mkdir()
    _take(training, 1).write(at_once)
    detached = _take(training, 1).detached()
    train_epoch(training, 1)  # training goes on and changes weights and AdamW's moments in place
    assert detached.write(later) > 0

    assert sorted(p.name for p in later.iterdir()) == sorted(p.name for p in at_once.iterdir())
    expected, written = _files(at_once), _files(later)
    assert written.keys() == expected.keys() and len(written) > 4
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor), name
    # ... and the live ones did move on, so the comparison above can fail.
    moved = _files_now(training, tmp_path / "now")
    assert any(not torch.equal(moved[n], t) for n, t in expected.items() if n in moved)
    assert read_meta(later) == {"epoch": 1} and (later / META_FILE).exists()
    assert torch.load(later / STATE_FILE, weights_only=True)["wall_s"] == 1.0


def _files_now(training: Training, directory: Path) -> dict[str, torch.Tensor]:
    directory.mkdir()
    _take(training, 2).write(directory)
    return _files(directory)


def test_host_copy_copies_tensors_through_containers() -> None:
    weight = torch.ones(2, 3).t()  # not contiguous
    state = {"a": [weight, (torch.zeros(1), 3)], "b": {"lr": 0.1, "betas": (0.9, 0.99)}}
    copied = host_copy(state)
    weight.add_(1)
    assert torch.equal(copied["a"][0], torch.ones(3, 2)) and copied["a"][0].is_contiguous()
    assert isinstance(copied["a"][1], tuple) and copied["a"][1][1] == 3
    assert copied["b"] == {"lr": 0.1, "betas": (0.9, 0.99)} and copied["b"] is not state["b"]


def test_a_report_in_flight_hands_its_error_to_the_training_thread() -> None:
    release = threading.Event()

    def stopped() -> None:
        release.wait(10)
        raise SystemExit(0)  # what Tune's report raises in a trial it stops

    in_flight = _InFlight(stopped)
    assert not in_flight.done()
    release.set()
    with pytest.raises(SystemExit):
        in_flight.wait()
    assert in_flight.done()

    ok = _InFlight(lambda: None)
    ok.wait()
    assert ok.error is None


def test_restore_puts_a_fresh_trial_where_the_checkpoint_left_off(
    tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:
    inputs = trial_inputs(text_spec(tiny_bert, text_data, tmp_path), FULL, tmp_path)
    training = setup_training(inputs, LocalSession())
    train_epoch(training, 0)
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    _take(training, 1).write(directory)
    taken_rng = torch.get_rng_state()

    fresh = setup_training(inputs, LocalSession())  # new weights' head, new optimizer and schedule
    assert not all(torch.equal(a, b) for a, b in zip(fresh.trainable, training.trainable, strict=True))
    restored = restore(directory, fresh.prepared, fresh.optimizer, fresh.scheduler)
    assert (restored.epoch, restored.wall_s, restored.inherited_device_s) == (1, 1.0, 0.0)
    assert restored.meta == {"epoch": 1}
    assert all(torch.equal(a, b) for a, b in zip(fresh.trainable, training.trainable, strict=True))
    assert fresh.scheduler.state_dict() == training.scheduler.state_dict()
    for mine, theirs in zip(fresh.optimizer.state.values(), training.optimizer.state.values(), strict=True):
        assert all(torch.equal(mine[k], theirs[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(torch.get_rng_state(), taken_rng)
