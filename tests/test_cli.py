"""The command line: exit codes and messages for bad input, never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.audit.planted import balanced, distinct_texts, planted_text_data
from tlsearch.testing import image_rows, image_spec, text_rows, text_spec, write_image_folder, write_parquet

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


def test_validate_a_spec_with_image_folder_splits(tmp_path: Path) -> None:
    """A split path without a .parquet or .csv suffix is an image folder; validate reads the folders'
    class names and the tables' schemas and labels (no image)."""
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        write_image_folder(image_rows(6, seed=seed), tmp_path / split)
    write_parquet(image_rows(6, seed=4), tmp_path / "val.parquet")
    spec = image_spec({"train": tmp_path / "train", "validation": tmp_path / "val.parquet"}, tmp_path)
    spec["data"]["test"] = str(tmp_path / "test") + "/"
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(spec))
    del spec["data"]["image_column"]
    spec["data"]["validation"] = str(tmp_path / "val")
    (tmp_path / "folders.yaml").write_text(yaml.safe_dump(spec))
    result = tlsearch("validate", str(tmp_path / "mixed.yaml"), str(tmp_path / "folders.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (tiny-image") == 2

    spec["data"]["image_column"] = "image"  # every split a folder: no column to name
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    result = tlsearch("validate", str(tmp_path / "bad.yaml"), "--set", "model.task=text-classification")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for problem in ("data.train", "data.validation", "data.test"):  # text reads tables only
        assert f"{problem} (line" in result.stderr and "are for image-classification" in result.stderr
    result = tlsearch("validate", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and "data.image_column (line" in result.stderr
    assert "every split is an image folder" in result.stderr


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
    for command in ("validate", "audit", "run", "resume", "report", "finalize", "export", "predict"):
        assert command in result.stdout


def audit_spec(tmp_path: Path, files: dict[str, Path]) -> Path:
    path = tmp_path / "audit.yaml"
    spec = {
        "name": "audited",
        "model": {"source": "hf", "name": str(tmp_path / "not-loaded"), "task": "text-classification"},
        "data": {**{k: str(v) for k, v in files.items()}, "text_column": "text"},
        "audit": {"label_issues": True},  # turned off by --set below: the model is never loaded
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_audit_exit_codes_and_json(tmp_path: Path) -> None:
    clean = {
        "train": write_parquet(balanced(distinct_texts(30, seed=1)), tmp_path / "clean" / "train.parquet"),
        "validation": write_parquet(balanced(distinct_texts(15, seed=2)), tmp_path / "clean" / "val.parquet"),
    }
    off = ("--set", "audit.label_issues=false")
    result = tlsearch("audit", str(audit_spec(tmp_path / "clean", clean)), *off)
    assert result.returncode == 0, result.stderr
    assert "Data audit (" in result.stdout and ": clean" in result.stdout

    planted, _ = planted_text_data(tmp_path / "planted")
    spec = audit_spec(tmp_path / "planted", planted)
    result = tlsearch("audit", str(spec), *off, "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # stdout holds the JSON alone
    assert report["status"] == "warnings" and report["missing_labels"]["train"] == 2

    (tmp_path / "planted" / "validation.parquet").write_text("not parquet")
    result = tlsearch("audit", str(spec), *off, "--format", "json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["status"] == "unusable"
    assert tlsearch("audit", str(tmp_path / "missing.yaml")).returncode == 2


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


# --- tlsearch finalize / predict: bad input --------------------------------------------------------


def test_finalize_refuses_a_run_without_a_completed_trial_or_a_test_split(
    tmp_path: Path, tiny_bert: Path, text_data: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlsearch.cli import main

    run_dir = text_run_dir(tmp_path / "with-test", tiny_bert, text_data)
    before = snapshot(run_dir)
    assert main(["finalize", str(run_dir)]) == 2
    assert "no completed trial" in capsys.readouterr().err
    assert snapshot(run_dir) == before

    (tmp_path / "no-test").mkdir()
    run_dir = text_run_dir(tmp_path / "no-test", tiny_bert, text_data, test_split=False)
    (run_dir / "best.json").write_text(
        json.dumps({"trial_id": "t0", "checkpoint": "trial_t0/checkpoint_000000"})
    )
    before = snapshot(run_dir)
    assert main(["finalize", str(run_dir)]) == 2
    assert "no test split" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_predict_refuses_a_file_without_the_input_column_and_a_run_without_a_final_model(
    tmp_path: Path, tiny_bert: Path, text_data: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlsearch.cli import main

    run_dir = text_run_dir(tmp_path, tiny_bert, text_data)
    rows = write_parquet([{"body": "goal match"}], tmp_path / "rows.parquet")
    out = tmp_path / "out.parquet"
    assert main(["predict", str(run_dir), "--input", str(rows), "--output", str(out)]) == 2
    assert "run `tlsearch finalize" in capsys.readouterr().err
    save_final(run_dir, tiny_bert)
    assert main(["predict", str(run_dir), "--input", str(rows), "--output", str(out)]) == 2
    assert "has no column `text`" in capsys.readouterr().err and not out.exists()

    good = write_parquet([{"text": "goal match team"}, {"text": "chip data"}], tmp_path / "good.parquet")
    assert main(["predict", str(run_dir), "--input", str(good), "--output", str(out)]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pylist()
    assert [r["row_id"] for r in table] == [0, 1]
    assert all(abs(sum(r[f"prob_{c}"] for c in ("food", "sport", "tech")) - 1) < 1e-5 for r in table)
    assert main(["predict", str(run_dir), "--input", str(good), "--output", str(out)]) == 2  # exists


def test_validate_prints_the_memory_plan_of_a_multi_worker_spec(tiny_bert: Path, tmp_path: Path) -> None:
    files = {
        "train": write_parquet(text_rows(12, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(6, seed=2), tmp_path / "validation.parquet"),
    }
    spec = text_spec(
        tiny_bert,
        files,
        tmp_path,
        resources={"workers_per_trial": 4},
        strategies={"full": {}, "lora": {}, "gradual": {}, "common": {"batch_size": [8, 32]}},
    )
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = tlsearch("validate", str(tmp_path / "spec.yaml"))
    assert result.returncode == 0, result.stderr
    assert "memory per device, 4 workers, batch size 32" in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(lines) == {"full", "lora", "gradual"}
    total = re.compile(r"(ddp|fsdp) ([0-9.]+) (GiB|MiB)")
    full = {way: float(v) * (1024 if unit == "GiB" else 1) for way, v, unit in total.findall(lines["full"])}
    assert 0 < full["fsdp"] < full["ddp"]  # a quarter of the weights, gradients and AdamW's moments
    assert "fsdp not sharded: it unfreezes blocks mid-trial" in lines["gradual"]
