"""A run directory records its layout version; `tlsearch resume` refuses (exit 2, one message) a run
written in another layout, naming the version that wrote it, and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tlsearch.cli import main
from tlsearch.results.files import LAYOUT_VERSION, RESOLVED_SPEC
from tlsearch.search.resolve import read_resolved_spec
from tlsearch.spec import validate_spec

SPEC = {
    "name": "old",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
}


def run_dir(tmp_path: Path, record: dict) -> Path:
    directory = tmp_path / "old"
    directory.mkdir()
    document = {**validate_spec(SPEC).dump_complete(), "resolved": record}
    (directory / RESOLVED_SPEC).write_text(yaml.safe_dump(document, sort_keys=False))
    return directory


def test_a_run_of_the_first_layout_is_refused_with_the_version_that_wrote_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = run_dir(tmp_path, {"versions": {"tlsearch": "0.1.0"}})  # no layout_version: layout 1
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    assert main(["resume", str(directory)]) == 2
    err = capsys.readouterr().err
    assert "written by tlsearch 0.1.0 in run-directory layout 1" in err
    assert f"resumes layout {LAYOUT_VERSION} only" in err and "tlsearch report" in err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before


def test_a_run_of_this_layout_reads_back(tmp_path: Path) -> None:
    directory = run_dir(tmp_path, {"layout_version": LAYOUT_VERSION})
    assert read_resolved_spec(directory) == validate_spec(SPEC)
