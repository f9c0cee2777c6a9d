"""The data audit as a search's first step: audit.json, the refusal, the training rows `audit.drop`
removes (and spec.resolved.yaml's record of them), and a resume that does not audit again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.audit.planted import planted_text_data
from tlsearch.audit import AUDIT_FILE
from tlsearch.data.datasets import load_split
from tlsearch.data.tables import read_table
from tlsearch.errors import UserInputError
from tlsearch.models.base import sha256_json
from tlsearch.search.resolve import resolve, write_resolved_spec
from tlsearch.spec import validate_spec
from tlsearch.spec.model import Spec


def planted_spec(tiny_bert: Path, root: Path, **audit: Any) -> Spec:
    files, _ = planted_text_data(root)
    return validate_spec(
        {
            "name": "planted",
            "storage": str(root / "runs"),
            "model": {
                "source": "hf",
                "name": str(tiny_bert),
                "task": "text-classification",
                "max_length": 16,
            },
            "data": {**{k: str(v) for k, v in files.items()}, "text_column": "text", "max_train_samples": 40},
            "audit": {"label_issues": False, **audit},
        }
    )


def test_the_search_refuses_missing_labels_it_does_not_drop(tiny_bert: Path, tmp_path: Path) -> None:
    spec = planted_spec(tiny_bert, tmp_path)
    run_dir = spec.run_dir()
    run_dir.mkdir(parents=True)
    with pytest.raises(
        UserInputError,
        match=r"train \(.*train\.parquet\): 2 rows have no label .* `missing_labels` under `audit.drop`",
    ):
        resolve(spec, run_dir)
    assert json.loads((run_dir / AUDIT_FILE).read_text())["status"] == "warnings"


def test_drop_removes_exactly_the_listed_rows_and_is_recorded(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = planted_spec(
        tiny_bert, tmp_path, drop=["missing_labels", "undecodable_inputs", "exact_duplicates_across"]
    )
    run_dir = spec.run_dir()
    run_dir.mkdir(parents=True)
    resolved = resolve(spec, run_dir)
    assert "Data audit (" in capsys.readouterr().out  # the summary, printed
    dropped = (3, 10, 20, 67, 68, 69, 70)  # no label, no text, duplicated by validation / test rows
    assert resolved.data.drop_train_rows == dropped
    # Training reads the other rows, and draws its max_train_samples subset from them.
    table = read_table(spec.data.train or "")
    texts = table.column("text").to_pylist()
    kept = [texts[i] for i in range(table.num_rows) if i not in dropped]
    everything = load_split(resolved.data, "train")
    assert len(everything.inputs) == 40 and set(everything.inputs) <= set(kept)
    without_subset = load_split(dataclasses.replace(resolved.data, max_train_samples=None), "train")
    assert without_subset.inputs == kept

    write_resolved_spec(resolved, run_dir)
    record = yaml.safe_load((run_dir / "spec.resolved.yaml").read_text())["resolved"]["audit"]
    assert record["dropped_train_rows"]["count"] == len(dropped)
    assert record["dropped_train_rows"]["sha256"] == sha256_json(list(dropped))
    assert record["dropped_train_rows"]["by_finding"] == {
        "missing_labels": 2,
        "undecodable_inputs": 2,
        "exact_duplicates_across": 3,
    }
    assert json.loads((run_dir / AUDIT_FILE).read_text())["drop"]["train_rows"] == list(dropped)

    # A resumed search reads audit.json instead of auditing again.
    before = (run_dir / AUDIT_FILE).stat().st_mtime_ns
    again = resolve(spec, run_dir, resuming=True)
    assert again.data.drop_train_rows == dropped
    assert (run_dir / AUDIT_FILE).stat().st_mtime_ns == before
    assert f"(from {run_dir / AUDIT_FILE})" in capsys.readouterr().out
    # One cut short (a driver killed while Tune's sync copied it, before tlsearch kept Tune off it)
    # is audited again rather than failing the resume.
    (run_dir / AUDIT_FILE).write_text("")
    again = resolve(spec, run_dir, resuming=True)
    assert again.data.drop_train_rows == dropped
    assert json.loads((run_dir / AUDIT_FILE).read_text())["drop"]["train_rows"] == list(dropped)


def test_fail_on_warnings_refuses_what_drop_leaves(tiny_bert: Path, tmp_path: Path) -> None:
    spec = planted_spec(
        tiny_bert, tmp_path, drop=["missing_labels", "undecodable_inputs"], fail_on="warnings"
    )
    spec.run_dir().mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"`audit.fail_on` is `warnings`: .*labels training never has"):
        resolve(spec, spec.run_dir())


def test_a_disabled_audit_leaves_the_hard_errors(tiny_bert: Path, tmp_path: Path) -> None:
    spec = planted_spec(tiny_bert, tmp_path, enabled=False)
    spec.run_dir().mkdir(parents=True)
    resolved = resolve(spec, spec.run_dir())
    assert resolved.audit is None and not (spec.run_dir() / AUDIT_FILE).exists()
    with pytest.raises(UserInputError, match="2 missing values"):
        load_split(resolved.data, "train")
