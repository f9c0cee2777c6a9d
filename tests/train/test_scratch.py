"""Checkpoint scratch directories: a checkpoint that a stopped trial never got to remove is removed by
the next one of its process, or by any process once its own process has ended."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tlsearch.train import scratch
from tlsearch.train.scratch import PREFIX, remove_orphans, scratch_dir


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TLSEARCH_TMPDIR", str(tmp_path))
    monkeypatch.setattr(scratch, "_process_folders", {})
    return tmp_path


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_a_checkpoint_directory_is_empty_and_removed_after_use(root: Path) -> None:
    with scratch_dir() as directory:
        assert directory.is_dir() and not any(directory.iterdir())
        (directory / "model.safetensors").write_bytes(b"x" * 1000)
    assert not directory.exists()
    assert files_under(root) == []


def test_a_checkpoint_left_by_a_stopped_trial_goes_with_the_next_one(root: Path) -> None:
    # A trial stopped inside `report` never leaves its `with`: emulate it by never closing one.
    stopped = scratch_dir()
    left = stopped.__enter__()
    (left / "training_state.pt").write_bytes(b"x" * 1000)
    with scratch_dir() as directory:
        assert not left.exists()  # the previous trial's checkpoint, already persisted by Ray
        assert directory.parent == left.parent  # one folder per process
        (directory / "meta.json").write_text("{}")
    assert files_under(root) == []


def ended_process() -> psutil.Process:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(child.pid)
    process.create_time()  # read while it runs: cached on the object
    child.wait()
    return process


def test_folders_of_ended_processes_are_removed_and_live_ones_kept(root: Path) -> None:
    ended = ended_process()
    dead = root / f"{PREFIX}{ended.pid}-{int(ended.create_time())}"
    me = psutil.Process()
    reused_pid = root / f"{PREFIX}{me.pid}-{int(me.create_time()) - 1000}"  # same pid, older process
    alive = root / f"{PREFIX}{me.pid}-{int(me.create_time())}"
    unrelated = root / f"{PREFIX}abc"  # not a folder of ours (e.g. an older tlsearch's)
    for folder in (dead, reused_pid, alive, unrelated):
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "checkpoint" / "model.safetensors").write_bytes(b"x")
    assert sorted(remove_orphans()) == sorted([dead, reused_pid])
    assert alive.exists() and unrelated.exists() and not dead.exists() and not reused_pid.exists()


def test_a_process_first_checkpoint_sweeps_the_ended_ones(root: Path) -> None:
    ended = ended_process()
    dead = root / f"{PREFIX}{ended.pid}-{int(ended.create_time())}" / "tmpabc"
    dead.mkdir(parents=True)
    (dead / "training_state.pt").write_bytes(b"x")
    with scratch_dir():
        pass
    assert not dead.parent.exists()


KILLED_MID_CHECKPOINT = r"""
import os, signal, sys
from tlsearch.train.scratch import scratch_dir

with scratch_dir() as directory:
    (directory / "model.safetensors").write_bytes(b"x" * 1000)
    print(directory, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a stopped job would
"""


def test_what_a_killed_trial_process_left_goes_with_the_next_process(root: Path) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_CHECKPOINT], capture_output=True, text=True, timeout=60
    )
    assert killed.returncode == -9, killed.stderr
    left = Path(killed.stdout.strip())
    assert (left / "model.safetensors").exists() and left.is_relative_to(root)
    with scratch_dir():
        pass
    assert not left.exists() and not left.parent.exists()
    assert [p.name for p in root.iterdir()] == [
        f"{PREFIX}{os.getpid()}-{int(psutil.Process().create_time())}"
    ]


def test_a_process_that_ends_normally_takes_its_folder_along(root: Path) -> None:
    code = "from tlsearch.train.scratch import scratch_dir\nwith scratch_dir() as d:\n    print(d.parent)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent == root and list(root.iterdir()) == []
