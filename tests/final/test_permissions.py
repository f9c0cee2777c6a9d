"""Run directories and exported models honour the user's umask and never grant write access to
others: what a search's driver writes in-process (the results tables, final/model/, the ONNX export),
under a umask that lets the group read (0o027), walked file by file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.final.test_export import image_run_dir
from tests.results.test_files import build, epoch, start
from tlsearch.final.export import export_final
from tlsearch.testing import image_rows

UMASK = 0o027  # group may read, others nothing: a blanket 0o600 would break it, 0o644 would ignore it


@pytest.fixture
def group_readable_umask() -> Iterator[int]:
    previous = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(previous)  # the umask is the whole process's


def modes_beyond_the_umask(root: Path, umask: int) -> list[str]:
    """Each path under `root` whose mode grants more than a new file or folder gets under `umask`,
    or less than the group's read (a mode set by hand rather than by the umask)."""
    wrong = []
    for path in [root, *sorted(root.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        allowed = (0o777 if path.is_dir() else 0o666) & ~umask
        wanted_by_group = stat.S_IRGRP | (stat.S_IXGRP if path.is_dir() else 0)
        if mode & ~allowed or mode & wanted_by_group != wanted_by_group or mode & stat.S_IWOTH:
            wrong.append(f"{path.relative_to(root)}: {oct(mode)}")
    return wrong


def test_a_run_directory_final_model_and_export_follow_the_umask(
    tmp_path: Path, group_readable_umask: int
) -> None:
    # final/model/ (saved as finalize saves it) and, below, its ONNX export (written in a temporary
    # folder, then moved into final/).
    run_dir = image_run_dir(tmp_path)
    # The results tables, rewritten through temporary files as trials finish.
    build(
        run_dir,
        [epoch("a", 1, 0.5), epoch("a", 2, 0.8)],
        [start("a"), {"event": "end", "trial_id": "a", "status": "ok"}],
    )
    rows = image_rows(8, seed=5)
    export_final(run_dir, [r["image"] for r in rows], [str(r["label"]) for r in rows], serving_batch=4)

    written = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")}
    assert {"trials.parquet", "best.json", "final/model/model.safetensors", "final/model.onnx"} <= written
    assert modes_beyond_the_umask(run_dir, group_readable_umask) == []
