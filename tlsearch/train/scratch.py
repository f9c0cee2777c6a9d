"""Where a trial writes each epoch's checkpoint before Ray copies it to the trial's storage.

Ray's pattern is a temporary directory around `report` (Ray copies the files to storage inside
`report`). A trial process that is killed while it holds one (a search interrupted or stopped with
`ray job stop`, the kernel's OOM killer, a preempted node) never unwinds its `with`, and the
checkpoint stays in the node's temporary directory: for BERT-base with AdamW state 1.3 GB each time
(found as 49 checkpoints that runs of the test suite had left in /tmp).

So each process keeps its checkpoints under one folder named after itself (pid and start time,
since pids are reused), empties it before writing the next one (whatever is there was persisted
already or belongs to a trial that is over), and removes the folders of processes that no longer
run when it makes its first checkpoint. A process that ends normally removes its folder; what a
killed one left is removed by the next trial process on that node. `TLSEARCH_TMPDIR` moves the
folders off the default temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

PREFIX = "tlsearch-ckpt-"
_FOLDER = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")
_process_folders: dict[int, Path] = {}  # by pid: a forked child gets its own folder


def scratch_root() -> Path:
    return Path(os.environ.get("TLSEARCH_TMPDIR") or tempfile.gettempdir())


def _started(pid: int) -> int | None:
    """The process's start time in whole seconds, None if it does not run (or cannot be seen)."""
    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def remove_orphans(root: Path | None = None) -> list[Path]:
    """Remove the checkpoint folders of processes that no longer run; returns them."""
    removed = []
    for folder in (root or scratch_root()).glob(f"{PREFIX}*-*"):
        match = _FOLDER.match(folder.name)
        if not match:
            continue
        pid, started = int(match[1]), int(match[2])
        if _started(pid) != started:  # gone, or the pid now belongs to another process
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _process_folder() -> Path:
    pid = os.getpid()
    if pid not in _process_folders:
        root = scratch_root()
        remove_orphans(root)
        folder = root / f"{PREFIX}{pid}-{_started(pid)}"
        folder.mkdir(parents=True, exist_ok=True)
        _process_folders[pid] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # a process that ends normally
    return _process_folders[pid]


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A new empty directory for one checkpoint, removed when the `with` ends; checkpoints an earlier
    trial of this process left behind are removed first."""
    folder = _process_folder()
    folder.mkdir(parents=True, exist_ok=True)  # others only remove dead processes' folders; a person might
    for stale in folder.iterdir():
        shutil.rmtree(stale, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(dir=folder))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
