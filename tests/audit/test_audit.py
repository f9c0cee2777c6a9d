"""The audit's counts on data with planted problems, its status, and what a search does about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.audit.planted import planted_text_data
from tlsearch.audit import run_audit, search_refusal, summary_text, wandb_summary
from tlsearch.data.paths import audit_files
from tlsearch.spec import validate_spec
from tlsearch.spec.model import AuditSpec, Spec


def text_spec(files: dict[str, Path], root: Path, **audit: Any) -> Spec:
    """A spec over `files`; the model is never loaded unless the label-issue pass is on."""
    return validate_spec(
        {
            "name": "audited",
            "storage": str(root / "runs"),
            "model": {"source": "hf", "name": str(root / "no-model"), "task": "text-classification"},
            "data": {**{k: str(v) for k, v in files.items()}, "text_column": "text"},
            "audit": {"label_issues": False, **audit},
        }
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spec, dict[str, Any], dict[str, Any]]:
    root = tmp_path_factory.mktemp("planted")
    files, expected = planted_text_data(root)
    spec = text_spec(files, root)
    return spec, run_audit(spec, audit_files(spec, root)), expected


def test_every_planted_problem_is_counted_exactly(planted: tuple[Spec, dict, dict]) -> None:
    _, report, expected = planted
    for key, value in expected.items():
        assert report[key] == value, key
    examples = report["examples"]
    assert examples["missing_labels"]["train"] == [67, 68]
    assert examples["missing_inputs"]["train"] == [69, 70]
    assert examples["exact_duplicates_within"]["train"] == [[64, 65, 66]]
    assert examples["exact_duplicates_across"]["train/validation"] == [[3, 30], [10, 31]]
    assert examples["exact_duplicates_across"]["validation/test"] == [[0, 30]]
    assert examples["near_duplicates_across"]["train/validation"] == [[60, 32], [61, 33]]
    assert examples["near_duplicates_across"]["train/test"] == [[62, 31]]
    assert examples["unknown_labels"]["validation"] == [34]
    assert examples["rare_classes"] == ["delta"]
    assert report["class_counts"]["train"] == {"alpha": 24, "beta": 23, "delta": 3, "gamma": 22}
    assert report["imbalance_ratio"] == 8.0  # 24 / 3: below the threshold of 10
    assert report["classes_missing"] == {"train": 1, "validation": 1, "test": 2}  # weather; delta; both
    assert 0 < report["class_share_drift"]["train/validation"] < 0.2
    assert report["status"] == "warnings" and report["unusable"] == []
    findings = {(w["finding"], w["where"]) for w in report["warnings"]}
    assert ("missing_labels", "train") in findings and ("unknown_labels", "validation") in findings
    assert ("imbalance_ratio", "train") not in findings
    assert "scope" in report and "before the data.max_train_samples" in report["scope"]
    text = summary_text(report)
    # Each finding names the split's file: the message is read where the spec is not at hand.
    assert f"train ({report['files']['train']}): 2 rows have no label (rows 67, 68)" in text
    # A label only validation has: a warning naming the split, its file and the label, not a refusal.
    assert (
        f"validation ({report['files']['validation']}): 1 row has labels training never has (weather)" in text
    )


def test_a_search_refuses_missing_labels_unless_dropped(planted: tuple[Spec, dict, dict]) -> None:
    _, report, _ = planted
    refusal = search_refusal(report, AuditSpec())
    assert refusal is not None and "`missing_labels` under `audit.drop`" in refusal
    assert "`undecodable_inputs` under `audit.drop`" in refusal
    dropping = AuditSpec(drop=("missing_labels", "undecodable_inputs"))
    assert search_refusal(report, dropping) is None  # the other warnings let a search run
    strict = AuditSpec(drop=("missing_labels", "undecodable_inputs"), fail_on="warnings")
    refusal = search_refusal(report, strict)
    assert refusal is not None and "labels training never has" in refusal and "no label" not in refusal


def test_drop_lists_the_training_rows_of_each_finding(tmp_path: Path) -> None:
    files, _ = planted_text_data(tmp_path)
    spec = text_spec(
        files,
        tmp_path,
        drop=["missing_labels", "undecodable_inputs", "exact_duplicates_across", "near_duplicates_across"],
    )
    drop = run_audit(spec, audit_files(spec, tmp_path))["drop"]
    assert drop["by_finding"] == {
        "missing_labels": 2,
        "undecodable_inputs": 2,
        "exact_duplicates_across": 3,  # the training rows that validation or test rows duplicate
        "near_duplicates_across": 3,
    }
    assert drop["train_rows"] == [3, 10, 20, 60, 61, 62, 67, 68, 69, 70] and drop["count"] == 10


def test_unusable_data(tmp_path: Path) -> None:
    files, _ = planted_text_data(tmp_path)
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "x"]}), tmp_path / "one-class.parquet")
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}),
        tmp_path / "empty.parquet",
    )
    pq.write_table(pa.table({"body": ["a"], "label": ["x"]}), tmp_path / "other-column.parquet")
    cases = {
        "one-class": ("train", "data.train has 1 class(es)"),
        "empty": ("validation", "has no rows"),
        "other-column": ("test", "has no column `text`; its columns: body, label"),
        "nope": ("test", "data file not found"),
    }
    for name, (split, message) in cases.items():
        spec = text_spec({**files, split: tmp_path / f"{name}.parquet"}, tmp_path)
        report = run_audit(spec, audit_files(spec, tmp_path))
        assert report["status"] == "unusable", name
        assert any(message in problem for problem in report["unusable"]), report["unusable"]
        refusal = search_refusal(report, spec.audit)
        assert refusal is not None and message in refusal


def test_the_wandb_summary_holds_the_totals(planted: tuple[Spec, dict, dict]) -> None:
    _, report, _ = planted
    summary = wandb_summary(report)
    assert summary["audit/status"] == "warnings"
    assert summary["audit/exact_duplicates_across"] == 4 and summary["audit/near_duplicates_across"] == 3
    assert summary["audit/missing_labels"] == 2 and summary["audit/dropped_train_rows"] == 0
    assert all(isinstance(v, int | float | str) for v in summary.values())
