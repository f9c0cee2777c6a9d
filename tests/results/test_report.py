"""The report: files from a run directory alone, plots rendered by a real headless browser, and a
reproduce command that really reproduces the best configuration."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from tests.audit.planted import planted_text_data
from tlsearch.audit import AUDIT_FILE, run_audit
from tlsearch.data.paths import audit_files
from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, RESOLVED_SPEC, append_jsonl, write_tables
from tlsearch.results.report import FIGURES, leaderboard, reproduce_command, write_report
from tlsearch.results.study import make_storage
from tlsearch.space import build_space, seed_points
from tlsearch.spec import load_spec, validate_spec

SPEC = {
    "name": "rep",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
    "search": {"metric": "val_f1_macro", "max_epochs": 3},
}
PARAMS = {
    "full": {"full/head_lr": (1e-4, 3e-2), "full/backbone_lr": (5e-6, 5e-4), "full/layer_decay": (0.5, 1.0)},
    "lora": {"lora/head_lr": (1e-4, 3e-2), "lora/lr": (1e-4, 5e-3), "lora/dropout": (0.0, 0.2)},
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished search's files: logs, tables, spec.resolved.yaml and a real Optuna journal."""
    run = tmp_path / "rep"
    run.mkdir()
    spec = validate_spec({**SPEC, "storage": str(tmp_path)})
    document = spec.model_dump(mode="json") | {
        "resolved": {"optuna": {"study_name": "rep-1", "storage": str(run / "optuna.journal")}}
    }
    (run / RESOLVED_SPEC).write_text(yaml.safe_dump(document))
    study = optuna.create_study(study_name="rep-1", storage=make_storage(None, run), direction="maximize")
    rng = random.Random(0)
    for i in range(10):
        strategy = "full" if i % 2 else "lora"
        params = {k: rng.uniform(*bounds) for k, bounds in PARAMS[strategy].items()}
        params |= {"strategy": strategy, "common/weight_decay": rng.uniform(0, 0.1), "common/batch_size": 16}
        if strategy == "lora":
            params |= {"lora/rank": 8, "lora/alpha": 16.0, "lora/targets": "attention"}
        stopped = i in (3, 6)
        epochs = 1 if stopped else 3
        curve = [0.3 + 0.1 * e + 0.02 * i * (strategy == "full") for e in range(1, epochs + 1)]
        flat = params | {"common/warmup_fraction": 0.1}
        append_jsonl(run / EVENTS_LOG, {"event": "start", "trial_id": f"t{i}", "config": flat})
        for e, value in enumerate(curve, start=1):
            append_jsonl(
                run / EPOCHS_LOG,
                {
                    "trial_id": f"t{i}",
                    "epoch": e,
                    "time": i + e / 10,
                    "strategy": strategy,
                    "val_f1_macro": value,
                    "val_loss": 1 - value,
                    "wall_s": 10.0 * e,
                    "device_s": 10.0 * e,
                    "trainable_params": 1000 if strategy == "lora" else 20000,
                },
            )
        append_jsonl(run / EVENTS_LOG, {"event": "end", "trial_id": f"t{i}", "status": "ok"})
        distributions = {
            k: optuna.distributions.FloatDistribution(*PARAMS[strategy][k]) for k in PARAMS[strategy]
        }
        distributions |= {
            "strategy": optuna.distributions.CategoricalDistribution(["lora", "full"]),
            "common/weight_decay": optuna.distributions.FloatDistribution(0, 0.1),
            "common/batch_size": optuna.distributions.CategoricalDistribution([16, 32]),
        }
        if strategy == "lora":
            distributions |= {
                "lora/rank": optuna.distributions.CategoricalDistribution([4, 8]),
                "lora/alpha": optuna.distributions.CategoricalDistribution([8.0, 16.0]),
                "lora/targets": optuna.distributions.CategoricalDistribution(["attention"]),
            }
        study.add_trial(
            optuna.trial.create_trial(
                params={k: v for k, v in params.items()},
                distributions=distributions,
                value=None if stopped else curve[-1],
                intermediate_values=dict(enumerate(curve, start=1)),
                state=optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.COMPLETE,
            )
        )
    write_tables(run, "val_f1_macro", "max", 3)
    return run


def test_markdown_json_and_images(run_dir: Path) -> None:
    report = write_report(run_dir)
    assert set(report.files) == {"html", "md", "json"}
    md = (run_dir / "report.md").read_text()
    for name in FIGURES:
        assert f"](report/{name}.png)" in md and (run_dir / "report" / f"{name}.png").stat().st_size > 5000
    assert "| full | t9 | completed | 3 |" in md  # the best trial leads the leaderboard
    summary = json.loads((run_dir / "report.json").read_text())
    assert summary["best"]["trial_id"] == "t9" and summary["statuses"]["stopped_early"] == 2
    assert set(summary["importances"]) == {"full", "lora"}
    assert abs(sum(summary["importances"]["full"].values()) - 1) < 1e-6
    assert "optuna-dashboard" in " ".join(summary["follow_up"])
    assert "best overall: t9 (full)" in leaderboard(run_dir)


def test_the_data_audit_section(run_dir: Path, tmp_path: Path) -> None:
    assert "## Data audit" not in (write_report(run_dir, ("md",)).files["md"]).read_text()  # no audit.json
    files, _ = planted_text_data(tmp_path / "data")
    spec = validate_spec(
        {
            "name": "a",
            "model": SPEC["model"],
            "data": {**{k: str(v) for k, v in files.items()}, "text_column": "text"},
            "audit": {"label_issues": False, "drop": ["missing_labels"]},
        }
    )
    (run_dir / AUDIT_FILE).write_text(json.dumps(run_audit(spec, audit_files(spec, tmp_path))))
    report = write_report(run_dir)
    md = report.files["md"].read_text()
    section = md[md.index("## Data audit") :].split("\n## ")[0]
    assert "- status: **warnings**" in section and "- rows: train 74, validation 35, test 33" in section
    assert "- missing labels: train 2" in section
    assert "- exact duplicates across splits: train/validation 2, train/test 1, validation/test 1" in section
    assert "train.parquet): 2 rows have no label (rows 67, 68)" in section
    assert "- dropped from training (`audit.drop`: missing_labels): 2 rows" in section
    assert "<h2>Data audit</h2>" in report.files["html"].read_text()
    audit = json.loads(report.files["json"].read_text())["audit"]
    assert audit["status"] == "warnings" and audit["near_duplicates_across"]["train/validation"] == 2


def test_reproduce_command_reproduces_the_best_configuration(run_dir: Path) -> None:
    report = write_report(run_dir, ("json",))
    args = shlex.split(reproduce_command(report))
    assert args[:3] == ["tlsearch", "run", str(run_dir / RESOLVED_SPEC)]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    spec = load_spec(args[2], overrides)
    (point,) = seed_points(spec, build_space(spec, num_blocks=6))
    best = report.best["config"]  # type: ignore[index]
    assert spec.search.num_samples == 1
    assert {k: v for k, v in point.items()} == {k: v for k, v in best.items() if k in point}
    assert all(point[k] == v for k, v in best.items() if k in point)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_html_renders_every_plot_in_a_real_browser(run_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("TLSEARCH_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required here (make test installs it with apt-get)")
        pytest.skip("chromium is not installed")
    write_report(run_dir, ("html",))
    page = (run_dir / "report.html").as_uri()
    assert "http" not in (run_dir / "report.html").read_text().split("<body>")[0]  # nothing fetched: offline
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert f'data-figures-rendered="{len(FIGURES)}/{len(FIGURES)}"' in dom
    for name in FIGURES:
        assert f'id="fig-{name}" data-rendered="true"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1300,4200", page],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one
    # Kept for people to look at: TLSEARCH_KEEP_SCREENSHOT=path copies it out.
    if os.environ.get("TLSEARCH_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["TLSEARCH_KEEP_SCREENSHOT"])
