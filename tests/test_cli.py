"""The command line: exit codes and messages for bad input, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tlsearch.testing import text_spec

ROOT = Path(__file__).resolve().parents[1]


def tlsearch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlsearch", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_validate_shipped_specs_exits_0() -> None:
    specs = sorted(str(p) for p in (ROOT / "search_spaces").glob("*.yaml"))
    result = tlsearch("validate", *specs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(specs)


def test_validate_bad_spec_exits_2_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: {source: hf, name: m, task: text-classification}\ndata: {builtin: bbc-news}\n"
        "strategies:\n  lora: {rank: [0, 8]}\nsearch: {metrik: val_loss}\n"
    )
    result = tlsearch("validate", str(bad), str(ROOT / "search_spaces" / "bbc_news_minilm.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "strategies.lora.rank (line 5): choices must be integers ≥ 1" in result.stderr
    assert "search.metrik (line 6): unknown key `metrik`. Did you mean `metric`?" in result.stderr
    assert "bbc_news_minilm.yaml: ok" in result.stdout


def test_set_overrides_are_validated_too() -> None:
    result = tlsearch("validate", "search_spaces/bbc_news_minilm.yaml", "--set", "search.max_epochs=0")
    assert result.returncode == 2 and "search.max_epochs (from --set)" in result.stderr
    assert (
        tlsearch("validate", "search_spaces/bbc_news_minilm.yaml", "--set", "search.max_epochs=3").returncode
        == 0
    )


def test_run_with_missing_data_exits_2_and_leaves_nothing(tmp_path: Path, tiny_bert: Path) -> None:
    spec = text_spec(
        tiny_bert, {"train": tmp_path / "nope.parquet", "validation": tmp_path / "v.parquet"}, tmp_path
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    result = tlsearch("run", str(tmp_path / "s.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data file not found" in result.stderr
    assert not (tmp_path / "tiny-text").exists()


def test_run_with_a_missing_column_names_the_columns(
    tmp_path: Path, tiny_bert: Path, text_data: dict
) -> None:
    spec = text_spec(tiny_bert, text_data, tmp_path, data={"text_column": "body"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    result = tlsearch("run", str(tmp_path / "s.yaml"))
    assert result.returncode == 2
    assert "has no column `body`; its columns: text, label" in result.stderr


def test_run_refuses_an_existing_run_directory(tmp_path: Path) -> None:
    (tmp_path / "bbc-news-minilm").mkdir()
    (tmp_path / "bbc-news-minilm" / "keep.txt").write_text("precious")
    result = tlsearch("run", "search_spaces/bbc_news_minilm.yaml", "--set", f"storage={tmp_path}")
    assert result.returncode == 2
    assert "tlsearch resume" in result.stderr and "--name bbc-news-minilm-2" in result.stderr
    assert (tmp_path / "bbc-news-minilm" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("command", ["report", "resume", "export"])
def test_report_and_resume_need_a_run_directory(tmp_path: Path, command: str) -> None:
    result = tlsearch(command, str(tmp_path))
    assert result.returncode == 2 and "is not a tlsearch run directory" in result.stderr


def test_help_lists_the_commands() -> None:
    result = tlsearch("--help")
    assert result.returncode == 0
    for command in ("validate", "run", "resume", "report", "export"):
        assert command in result.stdout


# --- tlsearch export RUN_DIR ------------------------------------------------------------------


def text_run_dir(tmp_path: Path, tiny_bert: Path, text_data: dict, *, test_split: bool = True) -> Path:
    """A run directory as a search leaves it (spec.resolved.yaml), without running one."""
    from tlsearch.search.resolve import resolve, write_resolved_spec
    from tlsearch.spec import validate_spec
    from tlsearch.testing import text_rows, write_parquet

    files = dict(text_data)
    if test_split:
        files["test"] = write_parquet(text_rows(30, seed=9), tmp_path / "test.parquet")
    spec = validate_spec(
        text_spec(tiny_bert, files, tmp_path, data={"test": str(files["test"]) if test_split else None})
    )
    run_dir = tmp_path / spec.name
    run_dir.mkdir()
    write_resolved_spec(resolve(spec, run_dir), run_dir)
    return run_dir


def save_final(run_dir: Path, tiny_bert: Path) -> None:
    from tlsearch.final.model_dir import save_final_model
    from tlsearch.models import build_model
    from tlsearch.search.resolve import read_resolved_spec

    spec = read_resolved_spec(run_dir)
    labels = ["food", "sport", "tech"]
    loaded = build_model(spec.model, len(labels))
    save_final_model(
        run_dir / "final" / "model",
        loaded.model,
        loaded.preprocessing,
        source="hf",
        task=spec.model.task,
        labels=labels,
        max_length=spec.model.max_length,
    )


def snapshot(run_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}


def test_export_before_finalize_exits_2_and_changes_nothing(
    tmp_path: Path, tiny_bert: Path, text_data: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlsearch.cli import main

    run_dir = text_run_dir(tmp_path, tiny_bert, text_data)
    before = snapshot(run_dir)
    assert main(["export", str(run_dir)]) == 2
    assert f"run `tlsearch finalize {run_dir}` first" in capsys.readouterr().err
    (run_dir / "final").mkdir()
    before = snapshot(run_dir)
    assert main(["export", str(run_dir), "--format", "onnx"]) == 2
    assert "final/model does not exist: run `tlsearch finalize" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_export_without_a_test_split_exits_2(
    tmp_path: Path, tiny_bert: Path, text_data: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlsearch.cli import main

    run_dir = text_run_dir(tmp_path, tiny_bert, text_data, test_split=False)
    save_final(run_dir, tiny_bert)
    before = snapshot(run_dir)
    assert main(["export", str(run_dir)]) == 2
    assert "no test split" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_export_writes_the_graph_and_its_parity_once(
    tmp_path: Path, tiny_bert: Path, text_data: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tlsearch.cli import main

    run_dir = text_run_dir(tmp_path, tiny_bert, text_data)
    save_final(run_dir, tiny_bert)
    assert main(["export", str(run_dir), "--rows", "20"]) == 0
    out = capsys.readouterr().out
    assert "parity on 20 test rows" in out and "final/export.json" in out
    report = json.loads((run_dir / "final" / "export.json").read_text())
    assert report["parity_holds"] and report["max_abs_diff"] <= 1e-4 and report["argmax_agreement"] == 1.0
    assert set(report["parity"]["accuracy"]) == {"pytorch", "onnxruntime"}
    assert [i["name"] for i in report["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(report["latency"]) == {"pytorch", "onnxruntime"}
    assert (run_dir / "final" / "model.onnx").is_file()

    before = snapshot(run_dir)
    assert main(["export", str(run_dir)]) == 2
    assert "model.onnx exists already" in capsys.readouterr().err
    assert snapshot(run_dir) == before
