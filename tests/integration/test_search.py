"""End-to-end searches on a real local Ray cluster: DDP trials, ASHA, every strategy on both model
sources, results on disk, checkpoints, a trial retried from its checkpoint, and a killed driver resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from tests.wandb_read import history, run_summary
from tlsearch.results.files import (
    BEST_FILE,
    EPOCHS_TABLE,
    EVENTS_LOG,
    RESOLVED_SPEC,
    TRIALS_TABLE,
    read_jsonl,
)
from tlsearch.results.report import latest_offline_runs
from tlsearch.results.study import open_storage
from tlsearch.search.runner import run_search
from tlsearch.spec import validate_spec
from tlsearch.testing import image_spec, text_rows, text_spec, write_parquet

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "stopped_early"}

# A line Ray forwards from a worker process: "(name pid=123) ...", possibly in ANSI colour.
FORWARDED_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\(\S+ pid=\d+")


def epochs_of(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / EPOCHS_TABLE).to_pylist()


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_multi_worker_search_with_asha(  # type: ignore[no-untyped-def]
    ray_connected, tiny_bert: Path, tmp_path: Path, parallelism: str
) -> None:
    # 25 validation rows: with 2 workers the shards hold 13 and 12; metrics over the gathered whole
    # are multiples of 1/25, per-shard ones would not be. In batches of 6 the shards are 3 and 2
    # forward passes: a sharded model's ranks must still run as many.
    data = {
        "train": write_parquet(text_rows(160, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(25, seed=2), tmp_path / "validation.parquet"),
    }
    spec = validate_spec(
        text_spec(
            tiny_bert,
            data,
            tmp_path / "runs",
            search={
                "num_samples": 5,
                "max_epochs": 3,
                "metric": "val_loss",
                "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
                # A strong configuration first, then weak ones ASHA must cut at the first rung.
                "seed_configs": [
                    {"strategy": "full", "head_lr": 3e-2, "backbone_lr": 3e-3},
                    {"strategy": "linear_probe", "head_lr": 1e-5},
                    {"strategy": "lora", "head_lr": 1e-5, "lr": 1e-5},
                    {"strategy": "partial", "head_lr": 1e-5, "backbone_lr": 1e-5},
                    # Its head probe on the linear probe's cached features, then sharded or DDP.
                    {"strategy": "lp_ft", "head_lr": 1e-5, "backbone_lr": 1e-5, "probe_epochs": 2},
                ],
            },
            strategies={
                "linear_probe": {"head_lr": {"low": 1e-5, "high": 1e-1, "log": True}},
                "partial": {
                    "head_lr": {"low": 1e-5, "high": 1e-1, "log": True},
                    "backbone_lr": {"low": 1e-5, "high": 1e-2, "log": True},
                },
                "full": {
                    "head_lr": {"low": 1e-5, "high": 1e-1, "log": True},
                    "backbone_lr": {"low": 1e-5, "high": 1e-2, "log": True},
                },
                "lora": {
                    "head_lr": {"low": 1e-5, "high": 1e-1, "log": True},
                    "lr": {"low": 1e-5, "high": 1e-2, "log": True},
                },
                "lp_ft": {
                    "head_lr": {"low": 1e-5, "high": 1e-1, "log": True},
                    "backbone_lr": {"low": 1e-5, "high": 1e-2, "log": True},
                    "probe_epochs": 2,
                },
                "common": {"batch_size": 8},
            },
            resources={"workers_per_trial": 2, "cpus_per_worker": 1, "parallelism": parallelism},
            training={"eval_batch_size": 6},
        )
    )
    # Kill the first trial's rank-0 worker after its first checkpoint: Ray Train restarts the worker
    # group, which resumes from that checkpoint (sharded: each rank from its shards).
    run_dir = spec.run_dir()
    killed: list[str] = []

    def kill_a_worker() -> None:
        def first_checkpoint() -> bool:
            return any(r.get("checkpoint") for r in read_jsonl(run_dir / "epochs.jsonl"))

        _wait_for(first_checkpoint, 300, "a first Train checkpoint")
        row = next(r for r in read_jsonl(run_dir / "epochs.jsonl") if r.get("checkpoint"))
        killed.append(row["trial_id"])
        os.kill(row["rank0_pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    outcome = run_search(spec)
    killer.join(timeout=1)
    assert outcome.run_dir == run_dir

    trials = pq.read_table(run_dir / TRIALS_TABLE).to_pylist()
    assert len(trials) == 5 and len({t["trial_id"] for t in trials}) == 5
    assert all(t["status"] in TERMINAL for t in trials), [
        (t["trial_id"], t["status"], t["error"]) for t in trials
    ]
    assert any(t["status"] == "stopped_early" for t in trials)
    # Trials ASHA stopped left no Ray Train worker or placement group behind (Ray issue #54305).
    _wait_for(lambda: not _train_leftovers(ray_connected.address), 60, "the stopped trials' workers to go")
    assert {t["strategy"] for t in trials} == {"full", "linear_probe", "lora", "partial", "lp_ft"}
    for t in trials:
        assert t["workers"] == 2
        # Sharded, but for a head on cached features (no block to shard: data parallel).
        sharded = parallelism == "fsdp" and t["strategy"] != "linear_probe"
        assert t["parallelism"] == ("fsdp" if sharded else "ddp"), t
        files = {p.name for p in (run_dir / t["checkpoint"]).iterdir()}
        assert ("model_shards" in files) == sharded, files
        assert t["device_s"] == pytest.approx(2 * t["wall_s"])  # 2 workers x 1 CPU each
        # Ray Train's start of the workers is its own part of the start-up, before the model's load
        assert 0 < t["workers_start_s"] < t["setup_s"] and 0 < t["model_load_s"] < t["setup_s"]
        assert t["checkpoint"] and (run_dir / t["checkpoint"]).is_dir()
        assert t["checkpoint"].startswith(f"train/{spec.name}-{t['trial_id']}/checkpoint_epoch_")
        assert t["epochs"] == (3 if t["status"] == "completed" else t["epochs"])
    for row in epochs_of(run_dir):
        assert abs(row["val_accuracy"] * 25 - round(row["val_accuracy"] * 25)) < 1e-6, row
    # Linear-probe and partial trials trained on cached features, each cache built by one rank of one
    # trial and read by both ranks of the others.
    for t in trials:
        cacheable = t["strategy"] in ("linear_probe", "partial", "lp_ft")  # lp_ft: its head probe
        assert t["feature_cache"] in (("built", "reused") if cacheable else ("none",)), t
    caches = [p for p in (run_dir / "features").iterdir() if p.is_dir()]
    assert len(caches) == sum(t["feature_cache"] == "built" for t in trials) >= 2
    (lp_ft,) = [t for t in trials if t["strategy"] == "lp_ft"]
    assert lp_ft["head_probe_s"] > 0 and lp_ft["head_probe_loss"] > 0
    best = json.loads((run_dir / BEST_FILE).read_text())
    assert best["strategy"] == "full" and best["value"] == min(t["best_val_loss"] for t in trials)
    # The killed trial went on from its checkpoint: epoch 1 was reported once, the rest followed.
    (victim,) = killed
    reported = [r["epoch"] for r in read_jsonl(run_dir / "epochs.jsonl") if r["trial_id"] == victim]
    assert reported.count(1) == 1 and max(reported) == 3, reported
    assert {t["trial_id"]: t["status"] for t in trials}[victim] == "completed"


def test_streamed_searches_sharded_and_in_the_trial_actor(  # type: ignore[no-untyped-def]
    ray_connected, tiny_bert: Path, image_data: dict, tmp_path: Path
) -> None:
    """data.loader: ray_data. Text on 2 sharded workers per trial: the training rows split evenly,
    the 25 validation rows each evaluated once (the shares differ; the sharded ranks run as many
    forward passes). Images in the trial actor, decoded and augmented in Ray Data's tasks (a linear
    probe: no features cached of rows that are not held)."""
    data = {
        "train": write_parquet(text_rows(61, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(25, seed=2), tmp_path / "validation.parquet"),
    }
    searches = [
        text_spec(
            tiny_bert,
            data,
            tmp_path / "runs",
            data={"loader": "ray_data"},
            # One trial at a time: 2 of the cluster's 4 CPUs left for Ray Data's tasks.
            search={"num_samples": 1, "max_epochs": 2, "max_concurrent": 1, "scheduler": {"type": "fifo"}},
            strategies={"full": {}, "common": {"batch_size": 8}},
            resources={"workers_per_trial": 2, "cpus_per_worker": 1, "parallelism": "fsdp"},
            training={"eval_batch_size": 4},
        ),
        image_spec(
            image_data,
            tmp_path / "runs",
            data={"loader": "ray_data"},
            search={"num_samples": 1, "max_epochs": 2, "scheduler": {"type": "fifo"}},
            strategies={"linear_probe": {}, "common": {"augmentation": "light"}},
        ),
    ]
    for spec_dict in searches:
        spec = validate_spec(spec_dict)
        run_dir = run_search(spec).run_dir
        trials = pq.read_table(run_dir / TRIALS_TABLE).to_pylist()
        assert len(trials) == 1 and all(t["status"] == "completed" for t in trials), trials
        workers = spec.resources.workers_per_trial
        validation_rows = 25 if workers == 2 else 18
        for t in trials:
            assert t["workers"] == workers and t["epochs"] == 2
            assert t["parallelism"] == ("fsdp" if workers == 2 else "none")
            if t["strategy"] == "linear_probe":  # nothing is held to cache features of
                assert (t["feature_cache"], t["feature_cache_reason"]) == ("off", "streamed"), t
        assert all(row["val_rows"] == validation_rows for row in epochs_of(run_dir))
        resolved = yaml.safe_load((run_dir / RESOLVED_SPEC).read_text())
        assert resolved["resolved"]["data_loader"] == "ray_data"


def test_every_strategy_on_timm_in_the_trial_actor(ray_connected, image_data: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = validate_spec(
        image_spec(
            image_data,
            tmp_path / "runs",
            search={"num_samples": 7, "max_epochs": 2, "scheduler": {"type": "fifo"}},
            strategies={
                "linear_probe": {},
                "partial": {},
                "full": {},
                "lora": {},
                "gradual": {},
                "lp_ft": {"probe_epochs": 3},
                "ia3": {},
                "common": {"batch_size": 12},
            },
        )
    )
    run_dir = run_search(spec).run_dir
    trials = {t["strategy"]: t for t in pq.read_table(run_dir / TRIALS_TABLE).to_pylist()}
    assert set(trials) == {"linear_probe", "partial", "full", "lora", "gradual", "lp_ft", "ia3"}
    assert all(t["status"] == "completed" and t["epochs"] == 2 for t in trials.values())
    # LP-FT probed its head on the linear probe's cached features before its first epoch
    assert trials["lp_ft"]["head_probe_s"] > 0 and trials["lp_ft"]["feature_cache"] == "reused"
    assert trials["linear_probe"]["head_probe_s"] is None
    assert (
        trials["linear_probe"]["trainable_params"]
        < trials["ia3"]["trainable_params"]
        < trials["lora"]["trainable_params"]
        < trials["full"]["trainable_params"]
    )
    for strategy, t in trials.items():
        checkpoint = run_dir / t["checkpoint"]
        meta = json.loads((checkpoint / "meta.json").read_text())
        assert meta["config"]["strategy"] == strategy and meta["labels"] == ["0", "1", "2"]
        weights = "adapter_model.safetensors" if strategy in ("lora", "ia3") else "model.safetensors"
        assert (checkpoint / weights).exists() and (checkpoint / "training_state.pt").exists()
        groups = json.loads(t["param_groups"])
        assert sum(g["params"] for g in groups) == t["trainable_params"]
    resolved = yaml.safe_load((run_dir / RESOLVED_SPEC).read_text())
    assert resolved["resolved"]["versions"]["ray"].startswith("2.")
    assert len(resolved["resolved"]["data"]["train"]["sha256"]) == 64

    report = subprocess.run(
        [sys.executable, "-m", "tlsearch", "report", str(run_dir)], capture_output=True, text=True, cwd=ROOT
    )
    assert report.returncode == 0 and "best trial per strategy" in report.stdout
    for strategy in trials:
        assert strategy in report.stdout


def _train_leftovers(address: str) -> list[str]:
    """Ray Train workers still alive and placement groups still held, on the cluster at `address`
    (named: without it the State API asks the cluster this machine started last, which another test
    may have started and stopped)."""
    from ray.util.state import list_actors, list_placement_groups

    workers = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    groups = list_placement_groups(address=address, filters=[("state", "=", "CREATED")], limit=1000)
    return [f"actor {a.class_name}" for a in workers if "TrainWorker" in a.class_name] + [
        f"placement group {g.placement_group_id}" for g in groups
    ]


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def _ends(run_dir: Path) -> int:
    return sum(e["event"] == "end" for e in read_jsonl(run_dir / EVENTS_LOG))


def test_killed_trial_retries_from_its_checkpoint_and_killed_driver_resumes(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_bert: Path, tmp_path: Path
) -> None:
    # Epochs long enough (about a second) to kill processes between two checkpoints.
    data = {
        "train": write_parquet(text_rows(600, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), tmp_path / "validation.parquet"),
    }
    spec = text_spec(
        tiny_bert,
        data,
        tmp_path / "runs",
        search={
            "num_samples": 6,
            "max_epochs": 4,
            "max_concurrent": 2,
            "scheduler": {"type": "fifo"},
            "max_failures": 1,
        },
        strategies={"full": {}, "linear_probe": {}, "common": {"batch_size": 4}},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / spec["name"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "run", str(spec_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # 1. Kill a running trial's process after its first checkpoint: Tune retries it, and the
        #    retry resumes from that checkpoint.
        _wait_for(
            lambda: any(e["event"] == "checkpoint" for e in read_jsonl(run_dir / EVENTS_LOG)),
            240,
            "a first checkpoint",
        )
        victim = next(e["trial_id"] for e in read_jsonl(run_dir / EVENTS_LOG) if e["event"] == "checkpoint")
        pid = next(r["rank0_pid"] for r in read_jsonl(run_dir / "epochs.jsonl") if r["trial_id"] == victim)
        os.kill(pid, signal.SIGKILL)
        # 2. Kill the driver itself once two trials have finished.
        _wait_for(lambda: _ends(run_dir) >= 2, 300, "two finished trials")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert _ends(run_dir) < 6, "the driver was killed too late to test resuming"

    resumed = subprocess.run(
        [sys.executable, "-m", "tlsearch", "resume", str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    trials = pq.read_table(run_dir / TRIALS_TABLE).to_pylist()
    assert len(trials) == 6 and len({t["trial_id"] for t in trials}) == 6, [
        (t["trial_id"], t["status"]) for t in trials
    ]
    assert all(t["status"] == "completed" and t["epochs"] == 4 for t in trials), trials
    rows = epochs_of(run_dir)
    assert len(rows) == 6 * 4 and len({(r["trial_id"], r["epoch"]) for r in rows}) == 24
    # Each trial's newest offline W&B directory holds its whole history (replayed after the resume),
    # and the Optuna journal ends with every trial terminal (the dead driver's RUNNING ones failed).
    runs = latest_offline_runs(run_dir)
    for t in trials:
        assert [h["_step"] for h in history(runs[f"{spec['name']}-{t['trial_id']}"])] == [1, 2, 3, 4]
        assert run_summary(runs[f"{spec['name']}-{t['trial_id']}"])["summary"]["stop_reason"] == "completed"
    info = yaml.safe_load((run_dir / "spec.resolved.yaml").read_text())["resolved"]["optuna"]
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    assert len(study.trials) >= 6 and all(t.state.is_finished() for t in study.trials)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 6

    events = read_jsonl(run_dir / EVENTS_LOG)
    retried = {e["trial_id"] for e in events if e["event"] == "retry"}
    assert victim in retried
    # The retried trial resumed from a checkpoint: its epochs were not all reported from scratch.
    reported = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    for trial_id in retried:
        epochs = [r["epoch"] for r in reported if r["trial_id"] == trial_id]
        assert epochs.count(1) == 1, epochs


def test_a_search_whose_every_trial_failed_exits_1_and_reports_it(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_bert: Path, tmp_path: Path
) -> None:
    """Its one trial killed with no retry left (`max_failures: 0`): exit 1, "no trial finished" with
    the trial's error, and a report (and `tlsearch report`) that says so."""
    data = {
        "train": write_parquet(text_rows(600, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), tmp_path / "validation.parquet"),
    }
    spec = text_spec(
        tiny_bert,
        data,
        tmp_path / "runs",
        search={"num_samples": 1, "max_epochs": 4, "scheduler": {"type": "fifo"}, "max_failures": 0},
        strategies={"full": {}, "common": {"batch_size": 4}},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / spec["name"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "run", str(spec_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: bool(read_jsonl(run_dir / "epochs.jsonl")), 240, "a first epoch")
        os.kill(read_jsonl(run_dir / "epochs.jsonl")[0]["rank0_pid"], signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, out[-2000:] + err[-2000:]
    assert "no trial finished" in err, err[-3000:]
    (trial,) = pq.read_table(run_dir / TRIALS_TABLE).to_pylist()
    assert trial["status"] == "error" and trial["error"], trial
    assert f"trial {trial['trial_id']}: " in err  # the failed trials are listed with their errors
    report = (run_dir / "report.md").read_text()
    assert "no trial finished" in report.lower()
    again = subprocess.run(
        [sys.executable, "-m", "tlsearch", "report", str(run_dir)], cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]


def test_two_searches_at_once_on_one_machine(tiny_bert: Path, tmp_path: Path) -> None:
    """Two `tlsearch run` started together, one storage, no cluster given: each starts its own local
    cluster and both finish. The same name twice at once: one runs, the other is refused (exit 2)."""
    data = {
        "train": write_parquet(text_rows(40, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(12, seed=2), tmp_path / "validation.parquet"),
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def start(name: str) -> subprocess.Popen[str]:
        spec = text_spec(
            tiny_bert,
            data,
            tmp_path / "runs",
            name=name,
            search={"num_samples": 1, "max_epochs": 1, "scheduler": {"type": "fifo"}},
            strategies={"linear_probe": {}},
        )
        path = tmp_path / f"{name}-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return subprocess.Popen(
            [sys.executable, "-m", "tlsearch", "run", str(path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    for names in (("first", "second"), ("same", "same")):
        drivers = [start(name) for name in names]
        ended = [(d.wait(timeout=600), *d.communicate()) for d in drivers]
        codes = sorted(code for code, _, _ in ended)
        if names[0] != names[1]:
            assert codes == [0, 0], [err[-2000:] for _, _, err in ended]
        else:
            assert codes == [0, 2], [err[-2000:] for _, _, err in ended]
            (refused,) = [err for code, _, err in ended if code == 2]
            assert "already exists" in refused or "being driven by" in refused, refused[-2000:]
            assert "Traceback" not in refused
        for name in set(names):
            (trial,) = pq.read_table(tmp_path / "runs" / name / TRIALS_TABLE).to_pylist()
            assert trial["status"] == "completed"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_and_resume_finishes(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_bert: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """Ctrl-C, or SIGTERM as `timeout` and CI runners send it: the driver stops without a traceback
    (exit 130) and `tlsearch resume` finishes the search."""
    data = {
        "train": write_parquet(text_rows(300, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), tmp_path / "validation.parquet"),
    }
    spec = text_spec(
        tiny_bert,
        data,
        tmp_path / "runs",
        search={"num_samples": 3, "max_epochs": 2, "max_concurrent": 1, "scheduler": {"type": "fifo"}},
        strategies={"full": {}, "common": {"batch_size": 4}},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / spec["name"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "run", str(spec_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _ends(run_dir) >= 1, 240, "a finished trial")
        driver.send_signal(stop)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr[-2000:]
    # The driver's own output ends without a traceback. Lines Ray forwards from trial processes
    # ("(run_trial pid=9394) ...") are left out: a trial process Tune stops can print Python's
    # "Exception ignored in ... _weakrefset" when the interrupt lands in a weakref callback.
    driver_output = "\n".join(line for line in stderr.splitlines() if not FORWARDED_LINE.match(line))
    assert f"tlsearch resume {run_dir}" in driver_output and "Traceback" not in driver_output[-2000:]

    resumed = subprocess.run(
        [sys.executable, "-m", "tlsearch", "resume", str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pq.read_table(run_dir / TRIALS_TABLE).to_pylist()
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials)


def test_a_small_discrete_space_runs_each_configuration_once_then_ends(  # type: ignore[no-untyped-def]
    ray_connected, tiny_bert: Path, tmp_path: Path
) -> None:
    files = {
        split: write_parquet(text_rows(n, seed), tmp_path / f"{split}.parquet")
        for split, n, seed in (("train", 24, 0), ("validation", 12, 1))
    }
    spec = validate_spec(
        text_spec(
            tiny_bert,
            files,
            tmp_path / "runs",
            search={"num_samples": 6, "max_epochs": 1, "scheduler": {"type": "fifo"}, "seed_configs": "none"},
            strategies={
                "linear_probe": {"head_lr": [0.01, 0.1]},
                "common": {"batch_size": [8], "weight_decay": [0.0]},
            },
            tracking={"wandb": {"mode": "disabled"}},
        )
    )
    run_dir = run_search(spec).run_dir
    trials = pq.read_table(run_dir / TRIALS_TABLE).to_pylist()
    # Two configurations in the space: two trials, not six, and never the same one twice.
    assert sorted(t["linear_probe/head_lr"] for t in trials) == [0.01, 0.1]
    assert all(t["status"] == "completed" for t in trials)
    info = yaml.safe_load((run_dir / RESOLVED_SPEC).read_text())["resolved"]["optuna"]
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    skipped = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert all("duplicate_of" in t.user_attrs for t in skipped)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2


def test_time_budget_stops_the_search_and_leaves_every_trial_ended(  # type: ignore[no-untyped-def]
    ray_connected, tiny_bert: Path, tmp_path: Path
) -> None:
    from tlsearch.search.runner import resume_search

    files = {
        split: write_parquet(text_rows(n, seed), tmp_path / f"{split}.parquet")
        for split, n, seed in (("train", 48, 0), ("validation", 12, 1))
    }
    spec = validate_spec(
        text_spec(
            tiny_bert,
            files,
            tmp_path / "runs",
            # Far more epochs than 12 s hold: the first trial is cut by the budget.
            search={
                "num_samples": 4,
                "max_epochs": 400,
                "max_concurrent": 1,
                "scheduler": {"type": "fifo"},
                "time_budget_s": 12,
                "baselines": [],
            },
            strategies={"linear_probe": {}, "common": {"batch_size": 8}},
            tracking={"wandb": {"mode": "disabled"}},
        )
    )
    started = time.monotonic()
    outcome = run_search(spec)
    assert time.monotonic() - started < 120
    assert outcome.budget_spent and not outcome.interrupted and outcome.succeeded
    trials = pq.read_table(outcome.run_dir / TRIALS_TABLE).to_pylist()
    assert 1 <= len(trials) < 4 and all(t["status"] != "running" for t in trials)
    cut = [t for t in trials if t["ended_by"] == "time_budget"]
    assert cut and all(t["status"] == "stopped_early" and 0 < t["epochs"] < 400 for t in cut)

    info = yaml.safe_load((outcome.run_dir / RESOLVED_SPEC).read_text())["resolved"]["optuna"]
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.PRUNED in states

    # Resuming a search whose budget is spent starts no trial and changes no row.
    resumed = resume_search(outcome.run_dir)
    assert resumed.budget_spent and not resumed.interrupted
    assert pq.read_table(outcome.run_dir / TRIALS_TABLE).to_pylist() == trials
