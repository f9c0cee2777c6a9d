"""A real search tracked end to end with no network: offline W&B runs read back with wandb's own
tool, the Optuna journal opened with Optuna's API, the report, and a fake API key found nowhere."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from tests.wandb_read import history, run_info, run_summary
from tlsearch.results.files import EPOCHS_TABLE, TRIALS_TABLE, read_table_whole
from tlsearch.results.report import latest_offline_runs
from tlsearch.results.study import open_storage
from tlsearch.testing import text_rows, text_spec, write_parquet

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
FAKE_KEY = "tlsearchfakekey" + "0123456789abcdef" * 2 + "xyz"


@contextlib.contextmanager
def optuna_dashboard(storage: Path) -> Iterator[Callable[[str], dict]]:
    """A real optuna-dashboard server on loopback over the study's storage; yields a GET helper."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("optuna-dashboard")),
            str(storage),
            "--port",
            str(port),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.time() + 60
        while True:
            try:
                get("/api/studies")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield get
    finally:
        server.terminate()
        server.wait(timeout=30)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def test_offline_wandb_optuna_journal_report_and_no_key_leak(tiny_bert: Path, tmp_path: Path) -> None:
    data = {
        "train": write_parquet(text_rows(120, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), tmp_path / "validation.parquet"),
        "test": write_parquet(text_rows(45, seed=3), tmp_path / "test.parquet"),
    }
    spec = text_spec(
        tiny_bert,
        data,
        tmp_path / "runs",
        search={
            "num_samples": 5,
            "max_epochs": 3,
            "metric": "val_loss",
            "max_concurrent": 1,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "seed_configs": [
                {"strategy": "full", "head_lr": 3e-2, "backbone_lr": 3e-3},
                {"strategy": "linear_probe", "head_lr": 1e-5},
            ],
            # The search's linear probe is not the default one: all three baselines run apart.
            "baselines": ["majority", "scratch", "default_linear_probe"],
        },
        strategies={
            "full": {
                "head_lr": {"low": 1e-5, "high": 1e-1, "log": True},
                "backbone_lr": {"low": 1e-5, "high": 1e-2, "log": True},
            },
            "linear_probe": {"head_lr": {"low": 1e-5, "high": 1e-1, "log": True}},
            "common": {"batch_size": 8},
        },
        tracking={"wandb": {"mode": "offline", "project": "tlsearch-tests", "tags": ["ci"]}},
        # The whole path: audit, search, baselines, finalize (retrained) and the ONNX export.
        audit={"label_issues": True},
        finalize={"after_search": True, "retrain": True},
    )
    spec["data"]["test"] = str(data["test"])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / spec["name"]
    sessions_before = set(Path("/tmp/ray").glob("session_2*"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of its own
    env |= {"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "offline"}
    started = time.time()
    driver = subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "run", str(spec_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # optuna-dashboard opens the study while the search runs, and again after it.
    journal = run_dir / "optuna.journal"
    deadline = time.time() + 300
    while not (journal.exists() and (run_dir / "trials.parquet").exists()) and time.time() < deadline:
        time.sleep(0.5)
    with optuna_dashboard(journal) as dashboard:
        during = dashboard("/api/studies")["study_summaries"]
    stdout, stderr = driver.communicate(timeout=900)
    assert driver.returncode == 0, stderr[-3000:]
    assert [s["study_name"] for s in during] == [
        yaml.safe_load((run_dir / "spec.resolved.yaml").read_text())["resolved"]["optuna"]["study_name"]
    ]
    with optuna_dashboard(journal) as dashboard:
        after = dashboard(f"/api/studies/{during[0]['study_id']}?after=0")
    assert len(after["trials"]) == 5

    rows = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
    trials = {t["trial_id"]: t for t in rows if t["in_search"]}
    epochs = read_table_whole(run_dir / EPOCHS_TABLE).to_pylist()
    assert len(trials) == 5 and any(t["status"] == "stopped_early" for t in trials.values())
    assert all(t["baseline"] is None for t in trials.values())
    check_baselines(run_dir, rows, stdout)
    check_final(run_dir, stdout, tmp_path)

    # W&B: one run per trial plus the search run, grouped by search, read back with wandb's own tool.
    runs = latest_offline_runs(run_dir)
    baseline_ids = {t["trial_id"] for t in rows if not t["in_search"]}
    assert set(runs) == {f"{spec['name']}-{t}" for t in {*trials, *baseline_ids}} | {
        f"{spec['name']}-search",
        f"{spec['name']}-final",
    }
    final_run = runs[f"{spec['name']}-final"]
    assert run_info(final_run)["job_type"] == "final"
    final_metrics = json.loads((run_dir / "final" / "metrics.json").read_text())
    assert run_summary(final_run)["summary"]["test_accuracy"] == pytest.approx(final_metrics["test_accuracy"])
    for trial_id in baseline_ids:
        assert run_info(runs[f"{spec['name']}-{trial_id}"])["job_type"] == "baseline"
    for trial_id, row in trials.items():
        directory = runs[f"{spec['name']}-{trial_id}"]
        info, summary = run_info(directory), run_summary(directory)
        assert info["run_group"] == spec["name"] and info["job_type"] == row["strategy"]
        assert info["project"] == "tlsearch-tests" and info["tags"] == ["ci"]
        config = summary["config"]
        assert config["strategy"] == row["strategy"] and config["trial_id"] == trial_id
        for key, value in row.items():
            if "/" in key and value is not None:
                assert config[key] == pytest.approx(value), key
        logged = [(h["_step"], h["val_loss"]) for h in history(directory)]
        reported = [(e["epoch"], e["val_loss"]) for e in epochs if e["trial_id"] == trial_id]
        assert logged == [(e, pytest.approx(v)) for e, v in reported]  # every epoch reported to Tune
        s = summary["summary"]
        assert s["stop_reason"] == row["status"] and s["epochs"] == row["epochs"]
        assert s["best_val_loss"] == pytest.approx(row["best_val_loss"])
        assert s["trainable_params"] == row["trainable_params"] and s["device_s"] == pytest.approx(
            row["device_s"]
        )
        assert summary["state"] == "finished" and summary["exit_code"] == 0
    search = run_summary(runs[f"{spec['name']}-search"])
    assert run_info(runs[f"{spec['name']}-search"])["job_type"] == "search"
    assert search["summary"]["trials"] == 5
    # The data audit ran first (audit.json); its counts are in the search run's summary.
    audit = json.loads((run_dir / "audit.json").read_text())
    assert search["summary"]["audit/status"] == audit["status"]
    assert search["summary"]["audit/exact_duplicates_across"] == sum(
        audit["exact_duplicates_across"].values()
    )
    assert search["summary"]["audit/label_issues"] == audit["label_issues"]["count"]
    assert "Data audit (" in stdout

    # Optuna: the persisted study opens with Optuna's own API; stopped trials are PRUNED.
    resolved = yaml.safe_load((run_dir / "spec.resolved.yaml").read_text())["resolved"]["optuna"]
    study = optuna.load_study(study_name=resolved["study_name"], storage=open_storage(resolved["storage"]))
    assert len(study.trials) == 5
    expected = {
        "completed": optuna.trial.TrialState.COMPLETE,
        "stopped_early": optuna.trial.TrialState.PRUNED,
    }
    assert sorted(t.state for t in study.trials) == sorted(expected[t["status"]] for t in trials.values())

    # The report, written at the end of the search.
    assert (run_dir / "report.html").stat().st_size > 10_000 and (run_dir / "report.md").exists()
    assert "wandb sync" in stdout and "optuna-dashboard" in stdout
    sync = next(
        line
        for line in json.loads((run_dir / "report.json").read_text())["follow_up"]
        if "wandb sync" in line
    )
    assert all(str(directory) in sync for directory in runs.values())  # the search run included
    cli = subprocess.run(
        [
            str(Path(sys.executable).with_name("optuna")),
            "trials",
            "--storage",
            resolved["storage"],
            "--storage-class",
            "JournalFileBackend",
            "--study-name",
            resolved["study_name"],
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(json.loads(cli.stdout)) == 5  # Optuna's own CLI reads the journal too

    # The key: in no file of the run, of W&B, or of the Ray session this search started.
    sessions = [
        s
        for s in set(Path("/tmp/ray").glob("session_2*")) - sessions_before
        if s.stat().st_mtime >= started - 5
    ]
    assert sessions, "the search's Ray session directory was not found"
    # The run directory's walk covers what finalize and export wrote, and W&B's offline files.
    searched = set(run_dir.rglob("*"))
    assert {run_dir / "final" / "model" / "model.safetensors", run_dir / "final" / "model.onnx"} <= searched
    assert any(path.suffix == ".wandb" for path in searched)
    for root in (run_dir, *sessions):
        assert files_containing(root, FAKE_KEY.encode()) == [], root


def check_final(run_dir: Path, stdout: str, tmp_path: Path) -> None:
    """final/ complete after the search; `tlsearch predict` on the test split reproduces its accuracy;
    a second finalize refuses and changes nothing."""
    final = run_dir / "final"
    for name in (
        "metrics.json",
        "misclassified.parquet",
        "latency.json",
        "export.json",
        "model.onnx",
        "MODEL_CARD.md",
    ):
        assert (final / name).is_file(), name
    assert (final / "model" / "tlsearch.json").is_file() and (final / "model" / "model.safetensors").is_file()
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["retrained"] is True and metrics["rows"] == 45
    assert set(metrics["baselines"]) == {"majority", "scratch", "default_linear_probe"}
    assert metrics["transfer_gain"]["against"] in ("majority", "scratch")
    low, high = metrics["intervals"]["test_accuracy"]
    assert low <= metrics["test_accuracy"] <= high
    export = json.loads((final / "export.json").read_text())
    assert export["max_abs_diff"] <= 1e-4 and export["argmax_agreement"] == 1.0
    assert "final model (retrained)" in stdout
    assert "## Final model" in (run_dir / "report.md").read_text()

    predictions = tmp_path / "predictions.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlsearch",
            "predict",
            str(run_dir),
            "--split",
            "test",
            "--output",
            str(predictions),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import pyarrow.csv as pacsv

    predicted = pacsv.read_csv(predictions).to_pylist()
    truth = pq.read_table(tmp_path / "test.parquet").column("label").to_pylist()
    assert {f"prob_{c}" for c in ("food", "sport", "tech")} <= set(predicted[0])
    accuracy = sum(p["prediction"] == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    assert accuracy == pytest.approx(metrics["test_accuracy"])

    before = {p: p.stat().st_mtime_ns for p in final.rglob("*")}
    again = subprocess.run(
        [sys.executable, "-m", "tlsearch", "finalize", str(run_dir)], cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode == 2 and "finalized already" in again.stderr and "Traceback" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in final.rglob("*")} == before


def check_baselines(run_dir: Path, rows: list[dict], stdout: str) -> None:
    """Majority, scratch and the default linear probe sit in trials.parquet beside the search's five
    trials, outside its study and its best; best.json carries the transfer gain (val_loss: lower is
    better, so the gain is the better baseline's loss minus the best trial's)."""
    baselines = {t["baseline"]: t for t in rows if not t["in_search"]}
    assert set(baselines) == {"majority", "scratch", "default_linear_probe"}
    assert all(t["status"] == "completed" for t in baselines.values())
    majority = baselines["majority"]
    assert majority["epochs"] == 0 and majority["device_s"] == 0.0
    assert majority["val_accuracy"] == pytest.approx(1 / 3, abs=0.04)  # three balanced classes
    assert baselines["default_linear_probe"]["strategy"] == "linear_probe"
    assert baselines["default_linear_probe"]["linear_probe/head_lr"] == pytest.approx(1e-2)
    scratch = baselines["scratch"]
    assert scratch["strategy"] == "full" and scratch["full/backbone_lr"] == pytest.approx(1e-3)
    search = sorted(
        (t for t in rows if t["in_search"] and t["status"] == "completed"),
        key=lambda t: t["device_s"] - (t["inherited_device_s"] or 0.0),
    )
    median = search[(len(search) - 1) // 2]
    assert 1 <= scratch["epochs"] <= median["epochs"]
    best = json.loads((run_dir / "best.json").read_text())
    assert best["trial_id"] not in {t["trial_id"] for t in baselines.values()}
    reference = min(baselines[name]["best_val_loss"] for name in ("majority", "scratch"))
    assert best["transfer_gain"] == pytest.approx(reference - best["value"])
    assert set(best["baselines"]) == set(baselines)
    assert "baselines:" in stdout and "transfer gain" in stdout
    assert "## Baselines" in (run_dir / "report.md").read_text()


def test_the_key_stays_out_of_ray_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local cluster started by tlsearch: its workers (trial actors, Train workers) never see the key,
    while the driver, which writes to W&B, keeps it."""
    import ray

    from tlsearch.search.runner import connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    connect(None)
    try:

        @ray.remote(num_cpus=0)
        def worker_key() -> str | None:
            return os.environ.get("WANDB_API_KEY")

        assert ray.get(worker_key.remote()) is None
        assert os.environ["WANDB_API_KEY"] == FAKE_KEY
    finally:
        ray.shutdown()
