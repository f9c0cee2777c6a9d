"""End-to-end searches on a real local Ray cluster: DDP trials, ASHA, every strategy on both model
sources, results on disk, checkpoints, a trial retried from its checkpoint, and a killed driver resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.wandb_read import history, run_summary
from tlsearch.cli import main
from tlsearch.results.files import (
    BEST_FILE,
    EPOCHS_TABLE,
    EVENTS_LOG,
    RESOLVED_SPEC,
    TRIALS_TABLE,
    read_jsonl,
    read_table_whole,
)
from tlsearch.results.report import latest_offline_runs
from tlsearch.results.study import open_storage
from tlsearch.search.runner import run_search
from tlsearch.search.tune_sync import OWN_SYNCED_FILES
from tlsearch.spec import validate_spec
from tlsearch.testing import image_spec, text_rows, text_spec, write_parquet
from tlsearch.train.checkpoint import META_FILE, CheckpointLayout

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "stopped_early"}

# Longer than Tune's upload of its experiment state to the run directory (local copies of a few
# small files, in a thread of the driver).
TUNE_UPLOAD_S = 1.5
# A line Ray forwards from a worker process: "(name pid=123) ...", possibly in ANSI colour.
FORWARDED_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\(\S+ pid=\d+")


def epochs_of(run_dir: Path) -> list[dict]:
    return read_table_whole(run_dir / EPOCHS_TABLE).to_pylist()


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
    # group, which resumes from that checkpoint (sharded: each rank from its shards). Once the retry
    # reports an epoch, kill it again: past `search.max_failures` (1), the trial ends `error` and the
    # search goes on.
    run_dir = spec.run_dir()
    assert spec.search.max_failures == 1
    killed: list[str] = []

    def kill_a_worker() -> None:
        def first_checkpoint() -> bool:
            return any(r.get("checkpoint") for r in read_jsonl(run_dir / "epochs.jsonl"))

        _wait_for(first_checkpoint, 300, "a first Train checkpoint")
        row = next(r for r in read_jsonl(run_dir / "epochs.jsonl") if r.get("checkpoint"))
        killed.append(row["trial_id"])
        os.kill(row["rank0_pid"], signal.SIGKILL)

        def retry_pid() -> int | None:
            rows = read_jsonl(run_dir / "epochs.jsonl")
            pids = [r["rank0_pid"] for r in rows if r["trial_id"] == killed[0]]
            return next((pid for pid in pids if pid != row["rank0_pid"]), None)

        _wait_for(lambda: retry_pid() is not None, 300, "the killed trial's retry")
        killed.append(row["trial_id"])
        os.kill(retry_pid(), signal.SIGKILL)  # type: ignore[arg-type]

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    outcome = run_search(spec)
    killer.join(timeout=1)
    assert outcome.run_dir == run_dir

    trials = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
    assert len(trials) == 5 and len({t["trial_id"] for t in trials}) == 5
    victim, again = killed  # killed twice
    assert again == victim
    assert all(t["status"] in TERMINAL for t in trials if t["trial_id"] != victim), [
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
        if t["status"] in TERMINAL:
            check_kept_checkpoints(run_dir, spec.name, t, multi_worker=True)
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
    ended = [t for t in trials if t["status"] in TERMINAL]
    assert best["value"] == min(t["best_val_loss"] for t in ended)
    # The killed trial went on from its checkpoint (epoch 1 was reported once, epoch 2 by its
    # retry), and killed again it failed for good, with the reason.
    reported = [r["epoch"] for r in read_jsonl(run_dir / "epochs.jsonl") if r["trial_id"] == victim]
    assert reported.count(1) == 1 and 2 in reported, reported
    failed = {t["trial_id"]: t for t in trials}[victim]
    assert failed["status"] == "error" and failed["error"], failed


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
        trials = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
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
    trials = {t["strategy"]: t for t in read_table_whole(run_dir / TRIALS_TABLE).to_pylist()}
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


def second_long_epochs(tmp_path: Path, *, with_test: bool = False) -> dict[str, Path]:
    """Data on which the tiny BERT's full fine-tuning (batches of 4) takes about a second an epoch:
    time to kill a process or fill a disk between two checkpoints."""
    splits = {"train": (600, 1), "validation": (30, 2), **({"test": (30, 3)} if with_test else {})}
    return {
        name: write_parquet(text_rows(n, seed), tmp_path / f"{name}.parquet")
        for name, (n, seed) in splits.items()
    }


def _start_run(spec: dict, tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`tlsearch run` of `spec` (written beside the data) in a driver process of its own."""
    path = tmp_path / f"{spec['name']}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "run", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ends(run_dir: Path) -> int:
    return sum(e["event"] == "end" for e in read_jsonl(run_dir / EVENTS_LOG))


def check_kept_checkpoints(run_dir: Path, name: str, trial: dict, multi_worker: bool) -> None:
    """A trial keeps at most `training.checkpoints_to_keep` (2) checkpoints: its best and its latest."""
    parent = Path(CheckpointLayout(str(run_dir), name, multi_worker).trial_checkpoints(trial["trial_id"]))
    kept = {
        json.loads((path / META_FILE).read_text())["epoch"]: path
        for path in parent.iterdir()
        if path.is_dir()
        and path.name.startswith("checkpoint_")  # not Train's checkpoint_manager_snapshot.json
    }
    assert 1 <= len(kept) <= 2, (trial["trial_id"], sorted(kept))
    assert max(kept) == trial["epochs"], (trial["trial_id"], sorted(kept), trial["epochs"])
    assert (run_dir / trial["checkpoint"]).resolve() in {p.resolve() for p in kept.values()}


def _resume(run_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`tlsearch resume RUN_DIR` in a driver process of its own (its stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "resume", str(run_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ended_trials(run_dir: Path) -> dict[str, dict]:
    """The trials the recorder has written as ended so far, by id."""
    if not (run_dir / TRIALS_TABLE).exists():
        return {}
    rows = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
    return {t["trial_id"]: t for t in rows if t["status"] in ("completed", "stopped_early", "error")}


def _offline_dirs(run_dir: Path) -> dict[str, int]:
    """How many offline W&B directories each run id has (a continued run adds one per session)."""
    counts: dict[str, int] = {}
    for path in (run_dir / "wandb").glob("offline-run-*"):
        run_id = path.name.split("-", 3)[-1]  # offline-run-<time>-<run id>
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def _trial_pids(run_dir: Path, trial_id: str) -> list[int]:
    return [r["rank0_pid"] for r in read_jsonl(run_dir / "epochs.jsonl") if r["trial_id"] == trial_id]


def test_driver_stopped_every_way_and_a_trial_killed_past_its_retries(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_bert: Path, tmp_path: Path
) -> None:
    """One search through every way its driver stops: Ctrl-C to the new driver, then SIGKILL before
    any trial ends, mid-way, during the last trials and during the finalize, and SIGTERM (as
    `timeout` and CI runners send it) between them; `tlsearch resume` after each. Ctrl-C and SIGTERM
    stop it without a traceback (exit 130). Between them one trial's process is killed once (it
    retries from its checkpoint) and again (past `max_failures`: it ends `error`, the search goes
    on). At the end every trial is in the tables once, no finished trial ran again, each W&B run was
    continued rather than duplicated, the Optuna study has no trial left RUNNING, and the report and
    final/ are complete. (One search for all of them: each driver's start-up is most of a stop's
    cost.)"""
    data = second_long_epochs(tmp_path, with_test=True)
    # Six epochs: the victim's retry, first seen when it reports epoch 2, has four to go when its
    # kill lands (with four, a fast machine finished the retry before the kill).
    epochs = 6
    spec = text_spec(
        tiny_bert,
        data,
        tmp_path / "runs",
        search={
            "num_samples": 5,
            "max_epochs": epochs,
            "max_concurrent": 2,
            "scheduler": {"type": "fifo"},
            "max_failures": 1,
        },
        # Full fine-tuning only: a linear probe's epochs on cached features end before a kill lands.
        strategies={"full": {}, "common": {"batch_size": 4}},
        tracking={"wandb": {"mode": "offline", "project": "tlsearch-tests"}},
        finalize={"after_search": True},
    )
    spec["data"]["test"] = str(data["test"])
    run_dir = tmp_path / "runs" / spec["name"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "WANDB_MODE": "offline"}
    ended_before: dict[str, dict] = {}  # trial id -> its row when a driver was stopped
    runs_before: dict[str, int] = {}

    def stop(driver: subprocess.Popen[str], how: signal.Signals, when: str) -> None:
        driver.send_signal(how)
        if how == signal.SIGKILL:
            driver.wait(timeout=30)
        else:
            _, stderr = driver.communicate(timeout=120)
            assert driver.returncode == 130, (how, stderr[-2000:])
            # The driver's own output ends without a traceback. Lines Ray forwards from trial
            # processes ("(run_trial pid=9394) ...") are left out: a trial process Tune stops can
            # print Python's "Exception ignored in ... _weakrefset" when the interrupt lands in a
            # weakref callback.
            output = "\n".join(line for line in stderr.splitlines() if not FORWARDED_LINE.match(line))
            assert f"tlsearch resume {run_dir}" in output, (how, output[-2000:])
            assert "Traceback" not in output[-2000:], (how, output[-2000:])
        for trial_id, row in _ended_trials(run_dir).items():
            ended_before.setdefault(trial_id, row)  # as it was when it ended first
        ended_runs = {f"{spec['name']}-{trial_id}" for trial_id in ended_before}
        runs_before.update({n: c for n, c in _offline_dirs(run_dir).items() if n in ended_runs})
        print(f"driver stopped ({how.name}) {when}: {len(ended_before)} trials ended")

    def checkpointed(since: int) -> bool:
        """A checkpoint written after the first `since` events (by the driver started then)."""
        return any(e["event"] == "checkpoint" for e in read_jsonl(run_dir / EVENTS_LOG)[since:])

    drivers: list[subprocess.Popen[str]] = []
    try:
        # 1. Ctrl-C to the new driver, once a first checkpoint is written.
        drivers.append(_start_run(spec, tmp_path, env))
        _wait_for(lambda: checkpointed(0), 240, "a first checkpoint")
        stop(drivers[-1], signal.SIGINT, "by Ctrl-C")

        # 2. SIGKILL before any trial ends: once the resumed driver has checkpointed.
        drivers.append(_resume(run_dir, env))
        since = len(read_jsonl(run_dir / EVENTS_LOG))
        _wait_for(lambda: checkpointed(since), 240, "a checkpoint after the resume")
        # Not during the upload of Tune's state that a checkpoint sets off: a kill then can leave
        # one of Tune's files cut short, which no resume reads (docs/reliability.md, not guaranteed).
        time.sleep(TUNE_UPLOAD_S)
        assert _ends(run_dir) == 0, "the driver was killed too late"
        stop(drivers[-1], signal.SIGKILL, "before any trial ended")

        # 3. Resumed: a running trial's process killed after a checkpoint retries from it; killed
        #    again in its retry, it is past max_failures (1): `error`, and the search goes on.
        drivers.append(_resume(run_dir, env))
        #    The victim is a trial that has just trained its first epoch: its retry (from epoch 2)
        #    still has epochs to go when the second kill lands.
        seen = len(read_jsonl(run_dir / "epochs.jsonl"))

        def first_epoch_after_resume() -> dict | None:
            rows = read_jsonl(run_dir / "epochs.jsonl")[seen:]
            return next((r for r in rows if r["epoch"] == 1), None)

        _wait_for(lambda: first_epoch_after_resume() is not None, 240, "a first epoch after the resume")
        row = first_epoch_after_resume()
        assert row is not None
        victim, first_pid = row["trial_id"], row["rank0_pid"]
        os.kill(first_pid, signal.SIGKILL)
        _wait_for(
            lambda: any(pid != first_pid for pid in _trial_pids(run_dir, victim)), 240, "the victim's retry"
        )
        retry = [r for r in read_jsonl(run_dir / "epochs.jsonl") if r["trial_id"] == victim][-1]
        assert retry["epoch"] < epochs, "the victim's retry ended before its kill"
        os.kill(retry["rank0_pid"], signal.SIGKILL)
        #    SIGKILL mid-way: the victim and another trial ended.
        _wait_for(
            lambda: victim in _ended_trials(run_dir) and len(_ended_trials(run_dir)) >= 2,
            300,
            "two ended trials",
        )
        stop(drivers[-1], signal.SIGKILL, "mid-way")
        assert victim in ended_before and ended_before[victim]["status"] == "error", ended_before.get(victim)

        # 4. SIGTERM to a resumed driver, once it has checkpointed.
        drivers.append(_resume(run_dir, env))
        since = len(read_jsonl(run_dir / EVENTS_LOG))
        _wait_for(lambda: checkpointed(since), 240, "a checkpoint after the resume")
        stop(drivers[-1], signal.SIGTERM, "by SIGTERM")

        # 5. SIGKILL during the last trials.
        drivers.append(_resume(run_dir, env))
        _wait_for(lambda: len(_ended_trials(run_dir)) >= 4, 300, "four ended trials")
        stop(drivers[-1], signal.SIGKILL, "during the last trials")
        assert len(ended_before) < 5, "the driver was killed too late"

        # 6. SIGKILL during the finalize: once its staging directory is there.
        drivers.append(_resume(run_dir, env))
        _wait_for(lambda: any(run_dir.glob(".final.tmp-*")), 300, "the finalize to start")
        stop(drivers[-1], signal.SIGKILL, "during the finalize")
        assert not (run_dir / "final").exists(), "the driver was killed too late"

        drivers.append(_resume(run_dir, env))
        _, stderr = drivers[-1].communicate(timeout=600)
        assert drivers[-1].returncode == 0, stderr[-3000:]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()

    trials = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
    trials = [t for t in trials if t["in_search"]]
    assert len(trials) == 5 and len({t["trial_id"] for t in trials}) == 5, [
        (t["trial_id"], t["status"]) for t in trials
    ]
    by_id = {t["trial_id"]: t for t in trials}
    assert by_id[victim]["status"] == "error" and by_id[victim]["error"], by_id[victim]
    others = [t for t in trials if t["trial_id"] != victim]
    assert all(t["status"] == "completed" and t["epochs"] == epochs for t in others)
    # No trial that had ended before a kill ran again (Tune's saved state may still call it running):
    # nothing of it was recorded after its end, and its row is as it was.
    ended_at: set[str] = set()
    for event in read_jsonl(run_dir / EVENTS_LOG):
        assert event.get("trial_id") not in ended_at or event["event"] == "abandoned", event
        if event["event"] == "end":
            ended_at.add(event["trial_id"])
    for trial_id, before in ended_before.items():
        after = by_id[trial_id]
        for key in ("status", "wall_s", "epochs", "best_val_accuracy", "best_val_loss", "checkpoint"):
            assert after[key] == before[key], (trial_id, key, before[key], after[key])
    for t in trials:
        if t["trial_id"] != victim:
            check_kept_checkpoints(run_dir, spec["name"], t, multi_worker=False)
    rows = [r for r in epochs_of(run_dir) if r["trial_id"] != victim]
    assert len(rows) == 4 * epochs and len({(r["trial_id"], r["epoch"]) for r in rows}) == 4 * epochs
    # W&B: each trial's newest offline directory holds its whole history; a trial that had ended
    # got no directory after it (continued, never duplicated), and there is one final run.
    runs = latest_offline_runs(run_dir)
    for t in trials:
        run = runs[f"{spec['name']}-{t['trial_id']}"]
        assert run_summary(run)["summary"]["stop_reason"] == t["status"]
        if t["trial_id"] != victim:
            assert [h["_step"] for h in history(run)] == list(range(1, epochs + 1))
    after_dirs = _offline_dirs(run_dir)
    for name, count in runs_before.items():
        assert after_dirs[name] == count, (name, count, after_dirs[name])
    assert f"{spec['name']}-final" in runs
    info = yaml.safe_load((run_dir / RESOLVED_SPEC).read_text())["resolved"]["optuna"]
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    assert all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 4
    # The victim retried from its checkpoint once: epoch 1 was reported by its first process only.
    epochs_reported = [r["epoch"] for r in read_jsonl(run_dir / "epochs.jsonl") if r["trial_id"] == victim]
    assert epochs_reported.count(1) <= 1, epochs_reported
    # The report and final/ are complete, and the killed finalize left nothing behind.
    assert "## Final model" in (run_dir / "report.md").read_text()
    final = run_dir / "final"
    for name in ("metrics.json", "model", "latency.json", "model.onnx", "export.json", "MODEL_CARD.md"):
        assert (final / name).exists(), name
    assert not list(run_dir.glob(".final.tmp-*")) and not list(final.glob(".export-*"))
    # Tune's sync takes every .json and .pkl atop the run directory into a resumed driver's staging
    # folder and uploads it back: tlsearch's own are kept out of it (tlsearch.search.tune_sync).
    tune_state = re.compile(r"(experiment_state|search_gen_state|searcher-state)-.+|tuner\.pkl")
    own = {
        p.name
        for p in run_dir.iterdir()
        if p.suffix in (".json", ".pkl") and not tune_state.fullmatch(p.name)
    }
    assert own <= set(OWN_SYNCED_FILES), own - set(OWN_SYNCED_FILES)
    assert json.loads((run_dir / "audit.json").read_text())["status"]


def test_a_storage_that_fills_up_stops_the_search_and_resume_finishes(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_bert: Path, tmp_path: Path
) -> None:
    """The storage is a 64 MiB tmpfs, filled by another file after the first checkpoint: the search
    stops (exit 1) with a message naming the full storage and the `tlsearch resume` command, no
    traceback; once the file is gone, `resume` finishes every trial."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    storage = tmp_path / "small-disk"
    storage.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(storage)], check=True)
    try:
        data = second_long_epochs(tmp_path)
        spec = text_spec(
            tiny_bert,
            data,
            storage,
            search={"num_samples": 2, "max_epochs": 3, "max_concurrent": 1, "scheduler": {"type": "fifo"}},
            strategies={"full": {}, "common": {"batch_size": 4}},
        )
        run_dir = storage / spec["name"]
        env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
        driver = _start_run(spec, tmp_path, env)
        ballast = storage / "someone-elses-file"
        try:
            _wait_for(
                lambda: any(e["event"] == "checkpoint" for e in read_jsonl(run_dir / EVENTS_LOG)),
                240,
                "a first checkpoint",
            )
            with open(ballast, "wb") as f:  # leaves 8 MiB: less than the search keeps free
                os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(storage).free - 8 * 2**20)
            _, stderr = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
        driver_output = "\n".join(line for line in stderr.splitlines() if not FORWARDED_LINE.match(line))
        assert driver.returncode == 1, stderr[-3000:]
        assert f"the storage of {run_dir} is full" in driver_output, driver_output[-2000:]
        assert f"tlsearch resume {run_dir}" in driver_output and "Traceback" not in driver_output
        assert _ends(run_dir) < 2, "the search ended before the storage filled up"

        ballast.unlink()
        resumed = _resume(run_dir, env)
        _, stderr = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, stderr[-3000:]
        trials = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
        assert len(trials) == 2 and all(t["status"] == "completed" and t["epochs"] == 3 for t in trials), (
            trials
        )
        # Nothing was trained twice from its start: each trial reported its first epoch once.
        for t in trials:
            epochs = [
                r["epoch"] for r in read_jsonl(run_dir / "epochs.jsonl") if r["trial_id"] == t["trial_id"]
            ]
            assert epochs.count(1) == 1, epochs
    finally:
        subprocess.run(["umount", "-l", str(storage)], check=False)  # lazily: Ray may hold a file open


def test_a_search_whose_every_trial_failed_exits_1_and_reports_it(  # type: ignore[no-untyped-def]
    ray_cluster, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its one trial killed with no retry left (`max_failures: 0`): exit 1, "no trial finished" with
    the trial's error, and a report (and `tlsearch report`) that says so."""
    data = second_long_epochs(tmp_path)
    spec = text_spec(
        tiny_bert,
        data,
        tmp_path / "runs",
        search={"num_samples": 1, "max_epochs": 4, "scheduler": {"type": "fifo"}, "max_failures": 0},
        strategies={"full": {}, "common": {"batch_size": 4}},
    )
    run_dir = tmp_path / "runs" / spec["name"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    driver = _start_run(spec, tmp_path, env)
    try:
        _wait_for(lambda: bool(read_jsonl(run_dir / "epochs.jsonl")), 240, "a first epoch")
        os.kill(read_jsonl(run_dir / "epochs.jsonl")[0]["rank0_pid"], signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, out[-2000:] + err[-2000:]
    assert "no trial finished" in err, err[-3000:]
    (trial,) = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
    assert trial["status"] == "error" and trial["error"], trial
    assert f"trial {trial['trial_id']}: " in err  # the failed trials are listed with their errors
    report = (run_dir / "report.md").read_text()
    assert "no trial finished" in report.lower()
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0  # in this process: a driver's start-up saved
    assert "Traceback" not in capsys.readouterr().err


def test_two_searches_at_once_on_one_machine(tiny_bert: Path, tmp_path: Path) -> None:
    """Two `tlsearch run` started together, one storage, no cluster given: each starts its own local
    cluster and both finish. Started at the same moment with them, a second run of one of the names
    is refused (exit 2), and the first of that name is untouched."""
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
        return _start_run(spec, tmp_path, env)

    # Two drivers of the run "second": which one wins is a race.
    drivers = {
        label: start(name)
        for label, name in (("first", "first"), ("second", "second"), ("second-again", "second"))
    }
    outputs = {label: d.communicate(timeout=600) for label, d in drivers.items()}
    ended = {label: (drivers[label].returncode, *out) for label, out in outputs.items()}
    codes = {label: code for label, (code, _, _) in ended.items()}
    assert codes["first"] == 0, ended["first"][2][-2000:]
    assert sorted((codes["second"], codes["second-again"])) == [0, 2], [e[2][-2000:] for e in ended.values()]
    (refused,) = [err for code, _, err in ended.values() if code == 2]
    assert "already exists" in refused or "being driven by" in refused, refused[-2000:]
    assert "Traceback" not in refused
    for name in ("first", "second"):
        (trial,) = read_table_whole(tmp_path / "runs" / name / TRIALS_TABLE).to_pylist()
        assert trial["status"] == "completed"


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
    trials = read_table_whole(run_dir / TRIALS_TABLE).to_pylist()
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
    trials = read_table_whole(outcome.run_dir / TRIALS_TABLE).to_pylist()
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
    assert read_table_whole(outcome.run_dir / TRIALS_TABLE).to_pylist() == trials
