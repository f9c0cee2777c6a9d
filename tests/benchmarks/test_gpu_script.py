"""The GPU benchmark script (benchmarks/gpu/run.sh): its dry run takes the same code paths on CPU with
tiny models and writes the results file a GPU run would; MFU uses the right peak for each chip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALL_CHECKS = (
    "vit_b16_full",
    "trial_overhead",
    "vit_b16_full_compile",
    "loop_vs_plain",
    "vit_b16_model_only",
    "device_busy",
    "fsdp_memory_sweep",
    "vit_b16_mfu_variants",
)


def test_dry_run_writes_every_check_and_the_headline(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--dry-run", "--only", ",".join(ALL_CHECKS)],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    assert results["dry_run"] is True and results["gpu_name"] == "cpu (dry run)"
    checks = results["checks"]
    assert tuple(checks) == ALL_CHECKS
    for name, part in checks.items():
        assert json.loads((tmp_path / "checks" / f"{name}.json").read_text()) == part
        assert part["status"] == "ok", part
    eager, compiled = checks["vit_b16_full"], checks["vit_b16_full_compile"]
    assert eager["compile"] is False and compiled["compile"] is True
    for part in (eager, compiled):
        assert part["img_s"] > 0 and part["timed_images"] == 32  # 1 timed epoch of 4 batches of 8
        assert part["train_flops_per_image"] > 1e6  # test_vit at 32 px: ~2.9 MFLOP forward, x3
        assert part["mfu"] is None  # no bf16 peak for a CPU
    assert results["vit_b16_full_img_s"] == max(eager["img_s"], compiled["img_s"])
    ratio = checks["loop_vs_plain"]
    assert ratio["ratio_median"] > 0 and len(ratio["ratios"]) == 1
    ceiling = checks["vit_b16_model_only"]
    assert ceiling["eager_img_s"] > 0 and ceiling["compiled_img_s"] > 0
    assert ceiling["compiled_batch_16_img_s"] > 0  # twice the dry run's batch of 8
    # Real searches on a local Ray cluster, with and without reused trial processes.
    overhead = checks["trial_overhead"]
    modes = overhead["modes"]
    assert modes["new_process_per_trial"]["overhead_trials"] == 2  # a dry run's, as busy_trials
    assert modes["reused_processes"]["busy_trials"] == 2
    assert overhead["trial_overhead_s"] is not None and 0 < overhead["device_busy_fraction"] <= 1
    assert results["trial_overhead_s_gpu"] == overhead["trial_overhead_s"]
    # The busy search alone: each trial's start-up with its parts, the first one cold. Measured
    # once: with trial_overhead in the same run, device_busy takes that run's busy search.
    busy = checks["device_busy"]
    assert busy["from"] == "trial_overhead"
    assert busy["busy_trials"] == 2 and len(busy["busy_startups"]) == 2
    assert all(s["startup_s"] > 0 and s["model_load_s"] is not None for s in busy["busy_startups"])
    assert busy["busy_startups"][0]["model_load_s"] > busy["busy_startups"][1]["model_load_s"]
    assert 0 < busy["device_busy_fraction"] <= 1
    idle = busy["busy_idle_s"]  # the idle seconds, split into their parts
    assert idle["total"] > 0 and idle["startups"] > 0 and idle["checkpoint_saves"] >= 0
    assert abs(idle["startups"] + idle["checkpoint_saves"] + idle["other"] - idle["total"]) < 0.05
    assert results["device_busy_fraction_gpu"] == busy["device_busy_fraction"]
    # Full fine-tuning of two BERT sizes replicated, sharded and sharded with CPU offload, each with
    # its parameter count; on the GPU its memory is capped (none on a CPU).
    sweep = checks["fsdp_memory_sweep"]
    assert sweep["cap_gib"] is None and list(sweep["runs"]) == ["2x32", "2x64"]
    for run in sweep["runs"].values():
        assert list(run) == ["ddp", "fsdp", "fsdp_offload"]
        assert all(way["fits"] and way["samples_per_s"] > 0 and way["steps"] >= 2 for way in run.values())
    assert sweep["largest_params_fsdp_offload"] == sweep["runs"]["2x64"]["ddp"]["parameters"] > 100_000
    assert len(sweep["fsdp_vs_ddp_throughput_one_gpu"]) == 2
    # Each MFU variant in a child process of its own; those of a GPU compile mode wait for a GPU.
    variants = checks["vit_b16_mfu_variants"]["variants"]
    assert variants["compiled_b256"]["status"] == variants["compiled_b256_bf16_params"]["status"] == "ok"
    assert all(variants[v]["img_s"] > 0 for v in ("compiled_b256", "compiled_b256_bf16_params"))
    assert variants["max_autotune_b256_bf16_params"]["status"] == "skipped"
    assert "[gpu] wrote" in result.stdout


def test_peaks_by_gpu_name() -> None:
    from benchmarks.gpu.run import dense_bf16_peak

    assert dense_bf16_peak("NVIDIA H100 80GB HBM3") == 989.4e12  # SXM
    assert dense_bf16_peak("NVIDIA H100 PCIe") == 756.5e12
    assert dense_bf16_peak("NVIDIA H100 NVL") == 835.5e12
    assert dense_bf16_peak("NVIDIA H200") == 989.4e12
    assert dense_bf16_peak("NVIDIA GH200 480GB") == 989.4e12
    assert dense_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert dense_bf16_peak("NVIDIA GeForce RTX 4090") is None


def test_record_merges_runs_check_by_check(tmp_path: Path, monkeypatch) -> None:
    """A run that ran out of its budget, then `--only` the skipped checks: one results file whose
    headline comes from the merged checks."""
    from benchmarks.gpu import run

    def write(name: str, checks: dict, date: str) -> Path:
        results = {
            "gpu_name": "NVIDIA H200",
            "dry_run": False,
            "wall_s": 10.0,
            "environment": {"date": date, "git_sha": "abc"},
            "checks": checks,
        }
        path = tmp_path / name
        path.write_text(json.dumps(results))
        return path

    first = write(
        "first.json",
        {
            "vit_b16_full": {"status": "ok", "img_s": 2000.0, "mfu": 0.2, "compile": False},
            "vit_b16_full_compile": {"status": "skipped"},
        },
        "2026-01-01T00:00:00+00:00",
    )
    second = write(
        "second.json",
        {"vit_b16_full_compile": {"status": "ok", "img_s": 2200.0, "mfu": 0.22, "compile": True}},
        "2026-01-01T00:10:00+00:00",
    )
    monkeypatch.setattr("benchmarks._common.RESULTS", tmp_path)
    monkeypatch.setattr("benchmarks.summary.refresh", lambda: None)
    run.record([first, second])
    merged = json.loads((tmp_path / "gpu_results.json").read_text())
    assert merged["checks"]["vit_b16_full_compile"]["status"] == "ok"
    assert merged["vit_b16_full_img_s"] == 2200.0 and merged["vit_b16_full_compile"] is True
    assert merged["wall_s"] == 20.0 and len(merged["runs"]) == 2


def test_default_run_leaves_out_the_opt_in_checks() -> None:
    from benchmarks.gpu import run

    assert run.default_checks() == [name for name in ALL_CHECKS if name != "device_busy"]


def test_record_adds_a_run_to_a_recorded_file(tmp_path: Path, monkeypatch) -> None:
    """A later session's run merges into the recorded file: its checks replace theirs, the others
    keep the run and commit they came from, and the list of runs grows."""
    from benchmarks.gpu import run

    monkeypatch.setattr("benchmarks._common.RESULTS", tmp_path)
    monkeypatch.setattr("benchmarks.summary.refresh", lambda: None)
    earlier = {
        "gpu_name": "NVIDIA H200",
        "dry_run": False,
        "wall_s": 30.0,
        "runs": [
            {"date": "d1", "wall_s": 10.0, "checks": ["a"]},
            {"date": "d2", "wall_s": 20.0, "checks": ["b"]},
        ],
        "environment": {"date": "d2", "git_sha": "old"},
        "checks": {
            "trial_overhead": {"status": "ok", "run": "d1", "git_sha": "old", "device_busy_fraction": 0.88},
            "vit_b16_full": {"status": "ok", "run": "d2", "git_sha": "old", "img_s": 2000.0, "mfu": 0.2},
        },
    }
    later = {
        "gpu_name": "NVIDIA H200",
        "dry_run": False,
        "wall_s": 5.0,
        "environment": {"date": "d3", "git_sha": "new"},
        "checks": {"vit_b16_full": {"status": "ok", "img_s": 2500.0, "mfu": 0.25, "compile": False}},
    }
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    (tmp_path / "later.json").write_text(json.dumps(later))
    run.record([tmp_path / "earlier.json", tmp_path / "later.json"])
    merged = json.loads((tmp_path / "gpu_results.json").read_text())
    assert [r["date"] for r in merged["runs"]] == ["d1", "d2", "d3"]
    assert merged["checks"]["vit_b16_full"]["git_sha"] == "new" and merged["vit_b16_full_img_s"] == 2500.0
    assert merged["checks"]["trial_overhead"]["git_sha"] == "old"
    assert merged["checks"]["trial_overhead"]["run"] == "d1"
    assert merged["device_busy_fraction_gpu"] == 0.88


def test_record_of_another_chip_keeps_the_earlier_chips_file(tmp_path: Path, monkeypatch) -> None:
    """An H100 run after H200 runs heads the summary; the H200 figures stay on file under their chip's
    name, and recording the H200 again merges that file back (nothing is lost either way)."""
    from benchmarks.gpu import run

    monkeypatch.setattr("benchmarks._common.RESULTS", tmp_path)
    monkeypatch.setattr("benchmarks.summary.refresh", lambda: None)

    def write(name: str, gpu: str, img_s: float, date: str) -> Path:
        path = tmp_path / "runs" / name
        path.parent.mkdir(exist_ok=True)
        checks = {"vit_b16_full": {"status": "ok", "img_s": img_s, "mfu": img_s / 1e4, "compile": False}}
        results = {"gpu_name": gpu, "dry_run": False, "wall_s": 1.0, "checks": checks}
        path.write_text(json.dumps({**results, "environment": {"date": date, "git_sha": "s"}}))
        return path

    run.record([write("h200.json", "NVIDIA H200", 2000.0, "d1")])
    run.record([write("h100.json", "NVIDIA H100 80GB HBM3", 2900.0, "d2")])
    latest = json.loads((tmp_path / "gpu_results.json").read_text())
    kept = tmp_path / "gpu_results_nvidia_h200.json"
    assert latest["gpu_name"] == "NVIDIA H100 80GB HBM3" and latest["vit_b16_full_img_s"] == 2900.0
    assert json.loads(kept.read_text())["vit_b16_full_img_s"] == 2000.0

    again = write("h200-again.json", "NVIDIA H200", 2100.0, "d3")
    with pytest.raises(SystemExit, match="record them too"):  # the kept H200 runs must come along
        run.record([again])
    with pytest.raises(SystemExit, match="do not merge"):
        run.record([tmp_path / "gpu_results.json", again])
    run.record([kept, again])
    latest = json.loads((tmp_path / "gpu_results.json").read_text())
    assert latest["gpu_name"] == "NVIDIA H200" and [r["date"] for r in latest["runs"]] == ["d1", "d3"]
    h100 = json.loads((tmp_path / "gpu_results_nvidia_h100_80gb_hbm3.json").read_text())
    assert h100["runs"][0]["date"] == "d2"
    assert not kept.exists()


def test_busy_trials_below_one_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "run.py"), "--dry-run", "--busy-trials", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--busy-trials must be at least 1, but got 0" in result.stderr


def test_record_of_a_dry_run_is_a_usage_error(tmp_path: Path) -> None:
    dry = tmp_path / "gpu_results.json"
    dry.write_text(json.dumps({"gpu_name": "cpu (dry run)", "dry_run": True}))
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "run.py"), "--record", str(dry)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "is a dry run: only GPU runs are recorded" in result.stderr
