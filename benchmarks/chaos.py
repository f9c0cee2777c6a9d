"""Chaos: trial processes killed at random during a search, which must still match a run without faults.

    .venv/bin/python benchmarks/chaos.py                       # 6 trials x 4 epochs, 4 kills
    .venv/bin/python benchmarks/chaos.py --quick               # 3 trials x 3 epochs, 2 kills

Ray's `tune_worker_fault_tolerance` release test, on tlsearch: a seeded FIFO search (`tlsearch run`
in a driver process of its own, on a local cluster it starts itself; the tiny BERT of
tlsearch.testing built from code, full fine-tuning, 600 training rows in batches of 4: epochs of
about a second) with `search.max_failures` above the number of kills, during which a killer thread
SIGKILLs a random running trial's process `--kills` times. It kills only pids the run itself
recorded (`rank0_pid` of epochs.jsonl), still alive, of a trial that has not ended and already has a
checkpoint (events.jsonl), then waits for that trial's retry to report an epoch before the next
kill. Then the same search (same seed and spec, another name) runs without faults.

Compared trial for trial (in the order trials started): the configuration, the status (every
trial `completed` with every epoch), and every epoch's metrics, exactly: on a CPU a trial's
training is deterministic given the seed, and a retry restores weights, optimizer, schedule and
torch's RNG from its checkpoint and reshuffles per epoch (`set_epoch`), so a retried epoch should
equal the undisturbed one bit for bit. The largest absolute difference per trial is reported
beside `matches`. Writes benchmarks/results/chaos.json (--quick: chaos_quick.json).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result

COMPARED_METRICS = ("val_loss", "val_accuracy", "val_f1_macro", "train_loss")
TRIAL_FIGURES = ("best_val_accuracy", "best_val_loss", "best_val_f1_macro", "epochs")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Killer(threading.Thread):
    """Kills `kills` running trial processes of the run in `run_dir`, one at a time, at random."""

    def __init__(
        self, run_dir: Path, driver: subprocess.Popen[Any], kills: int, seed: int, max_epochs: int
    ) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.driver, self.kills, self.max_epochs = run_dir, driver, kills, max_epochs
        self.rng = random.Random(seed)
        self.done: list[dict[str, Any]] = []
        self.killed: set[int] = set()  # a killed process may linger as a zombie: never "kill" it twice
        self.stop = threading.Event()

    def _state(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, read_jsonl

        return read_jsonl(self.run_dir / EPOCHS_LOG), read_jsonl(self.run_dir / EVENTS_LOG)

    def candidates(self) -> list[tuple[str, int, int]]:
        """(trial, its latest process, its latest epoch) of each trial that may be killed now."""
        epochs, events = self._state()
        ended = {e["trial_id"] for e in events if e.get("event") in ("end", "error")}
        checkpointed = {e["trial_id"] for e in events if e.get("event") == "checkpoint"}
        latest: dict[str, dict[str, Any]] = {}
        for row in epochs:
            latest[row["trial_id"]] = row
        return [
            (trial_id, int(row["rank0_pid"]), int(row["epoch"]))
            for trial_id, row in sorted(latest.items())
            # Not at its last epoch: a trial about to end could hand its (reused) process to the
            # next trial between the read and the kill.
            if trial_id not in ended
            and trial_id in checkpointed
            and int(row["epoch"]) < self.max_epochs
            and int(row["rank0_pid"]) not in self.killed
            and _alive(int(row["rank0_pid"]))
        ]

    def run(self) -> None:
        while len(self.done) < self.kills and not self.stop.is_set() and self.driver.poll() is None:
            # A random moment: wait 0-2 s, then kill a random candidate, if any.
            self.stop.wait(self.rng.uniform(0.0, 2.0))
            found = self.candidates()
            if not found:
                self.stop.wait(0.2)
                continue
            trial_id, pid, epoch = self.rng.choice(found)
            reported = len(self._state()[0])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.add(pid)
            self.done.append({"trial_id": trial_id, "pid": pid, "after_epoch": epoch, "time": time.time()})
            print(f"[chaos] killed trial {trial_id} (pid {pid}) after epoch {epoch}", flush=True)
            self._wait_for_retry(trial_id, pid, reported)

    def _wait_for_retry(self, trial_id: str, pid: int, reported: int) -> None:
        """Until the killed trial reports from a new process (or ends): one fault at a time.
        `reported`: the epoch rows before the kill (the trial's earlier rows may come from other
        processes of it)."""
        deadline = time.time() + 600
        while time.time() < deadline and not self.stop.is_set() and self.driver.poll() is None:
            epochs, events = self._state()
            later = epochs[reported:]
            if any(r["trial_id"] == trial_id and r["rank0_pid"] != pid for r in later) or any(
                e.get("trial_id") == trial_id and e.get("event") in ("end", "error") for e in events
            ):
                return
            self.stop.wait(0.2)


def make_inputs(work: Path, quick: bool) -> tuple[Path, dict[str, Path]]:
    from tlsearch.testing import make_tiny_bert, text_rows, write_parquet

    model = make_tiny_bert(work / "tiny-bert")
    data = {
        "train": write_parquet(text_rows(300 if quick else 600, seed=1), work / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), work / "validation.parquet"),
    }
    return model, data


def search_spec(
    model: Path,
    data: dict[str, Path],
    storage: Path,
    name: str,
    *,
    trials: int,
    epochs: int,
    concurrent: int,
    max_failures: int,
    seed: int,
) -> dict[str, Any]:
    from tlsearch.testing import text_spec

    return text_spec(
        model,
        data,
        storage,
        name=name,
        seed=seed,
        search={
            "num_samples": trials,
            "max_epochs": epochs,
            "max_concurrent": concurrent,
            "scheduler": {"type": "fifo"},
            "max_failures": max_failures,
        },
        # Full fine-tuning only: a linear probe's epochs on cached features end before a kill lands.
        strategies={"full": {}, "common": {"batch_size": 4}},
        tracking={"wandb": {"mode": "disabled"}},
    )


def run_search(spec: dict[str, Any], work: Path, kills: int, seed: int) -> dict[str, Any]:
    """`tlsearch run` of `spec` in a driver process of its own (no RAY_ADDRESS: its own local
    cluster), with a killer thread when `kills` > 0."""
    path = work / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_dir = Path(spec["storage"]) / spec["name"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["WANDB_MODE"] = "disabled"
    log = (work / f"{spec['name']}.log").open("w")
    started = time.perf_counter()
    driver = subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "run", str(path)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    killer = Killer(run_dir, driver, kills, seed, spec["search"]["max_epochs"]) if kills else None
    try:
        if killer:
            killer.start()
        code = driver.wait(timeout=3600)
    finally:
        if killer:
            killer.stop.set()
            killer.join(timeout=10)
        if driver.poll() is None:
            driver.kill()
        log.close()
    wall = time.perf_counter() - started
    if code != 0:
        tail = (work / f"{spec['name']}.log").read_text()[-4000:]
        sys.exit(f"{spec['name']}: tlsearch run exited {code}\n{tail}")
    return {"run_dir": run_dir, "wall_s": round(wall, 1), "kills": killer.done if killer else []}


def trials_in_order(run_dir: Path) -> list[dict[str, Any]]:
    """Each trial's row, configuration and epochs, in the order the trials started."""
    from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, epoch_rows, read_jsonl, read_trials

    events = read_jsonl(run_dir / EVENTS_LOG)
    order = list(dict.fromkeys(e["trial_id"] for e in events if e.get("event") == "start"))
    rows = {t["trial_id"]: t for t in read_trials(run_dir) if t.get("in_search", True)}
    epochs: dict[str, list[dict[str, Any]]] = {}
    for row in epoch_rows(run_dir):
        epochs.setdefault(row["trial_id"], []).append(row)
    reported: dict[str, list[tuple[int, int]]] = {}  # (epoch, pid) as each report arrived
    for row in read_jsonl(run_dir / EPOCHS_LOG):
        reported.setdefault(row["trial_id"], []).append((int(row["epoch"]), int(row["rank0_pid"])))
    retries: dict[str, int] = {}
    for e in events:
        if e.get("event") == "retry":
            retries[e["trial_id"]] = retries.get(e["trial_id"], 0) + 1
    out = []
    for trial_id in [t for t in order if t in rows] + sorted(set(rows) - set(order)):
        row = rows[trial_id]
        out.append(
            {
                "trial_id": trial_id,
                "status": row["status"],
                "config": {
                    k: v for k, v in sorted(row.items()) if ("/" in k or k == "strategy") and v is not None
                },
                **{k: row.get(k) for k in TRIAL_FIGURES},
                "epoch_metrics": [{m: e.get(m) for m in COMPARED_METRICS} for e in epochs.get(trial_id, [])],
                "retries": retries.get(trial_id, 0),
                "reported": reported.get(trial_id, []),
            }
        )
    return out


def _difference(a: Any, b: Any) -> float:
    if a is None and b is None:
        return 0.0
    if a is None or b is None:
        return float("inf")
    return abs(float(a) - float(b))


def compare(faulty: list[dict[str, Any]], clean: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    per_trial = []
    for i, (f, c) in enumerate(zip(faulty, clean, strict=False)):
        metric_diff = max(
            (
                _difference(fe.get(m), ce.get(m))
                for fe, ce in zip(f["epoch_metrics"], c["epoch_metrics"], strict=False)
                for m in COMPARED_METRICS
            ),
            default=0.0,
        )
        # Each retry's first epoch: where it went on from (a retry from epoch k's checkpoint reports k+1).
        pids = list(dict.fromkeys(pid for _, pid in f["reported"]))
        resumed_at = [next(ep for ep, pid in f["reported"] if pid == p) for p in pids[1:]]
        per_trial.append(
            {
                "index": i,
                "faulty_trial": f["trial_id"],
                "clean_trial": c["trial_id"],
                "same_config": f["config"] == c["config"],
                "status": [f["status"], c["status"]],
                "epochs": [f["epochs"], c["epochs"]],
                "retries": f["retries"],
                "processes": len(pids),
                "retry_first_epochs": resumed_at,
                "epochs_reported": len(f["reported"]),
                "best_val_accuracy": [f["best_val_accuracy"], c["best_val_accuracy"]],
                "best_val_loss": [f["best_val_loss"], c["best_val_loss"]],
                "best_val_accuracy_abs_diff": _difference(f["best_val_accuracy"], c["best_val_accuracy"]),
                "best_val_loss_abs_diff": _difference(f["best_val_loss"], c["best_val_loss"]),
                "epoch_metrics_max_abs_diff": metric_diff,
                "epoch_metrics_equal": f["epoch_metrics"] == c["epoch_metrics"],
            }
        )
    complete = all(
        t["status"] == ["completed", "completed"] and t["epochs"] == [epochs, epochs] for t in per_trial
    )
    return {
        "same_trial_count": len(faulty) == len(clean),
        "same_configs_in_order": len(faulty) == len(clean) and all(t["same_config"] for t in per_trial),
        "every_trial_completed_all_epochs": complete,
        "metrics_equal": all(t["epoch_metrics_equal"] for t in per_trial),
        "max_abs_diff_best_val_accuracy": max(
            (t["best_val_accuracy_abs_diff"] for t in per_trial), default=0.0
        ),
        "max_abs_diff_best_val_loss": max((t["best_val_loss_abs_diff"] for t in per_trial), default=0.0),
        "max_abs_diff_epoch_metrics": max((t["epoch_metrics_max_abs_diff"] for t in per_trial), default=0.0),
        "per_trial": per_trial,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 trials x 3 epochs, 2 kills, 300 rows")
    parser.add_argument("--trials", type=int, help="default 6 (--quick 3)")
    parser.add_argument("--epochs", type=int, help="default 4 (--quick 3)")
    parser.add_argument("--kills", type=int, help="default 4 (--quick 2)")
    parser.add_argument("--concurrent", type=int, default=2, help="search.max_concurrent")
    parser.add_argument("--seed", type=int, default=0, help="the spec's seed and the killer's")
    parser.add_argument("--keep", type=Path, help="keep both run directories under this folder")
    parser.add_argument("--name", help="result file name (default chaos[_quick])")
    args = parser.parse_args()
    trials = args.trials or (3 if args.quick else 6)
    epochs = args.epochs or (3 if args.quick else 4)
    kills = args.kills if args.kills is not None else (2 if args.quick else 4)
    max_failures = kills + 1  # above the kills a trial can take, all of them included

    started = time.time()
    work = args.keep or Path(tempfile.mkdtemp(prefix="tlsearch-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    model, data = make_inputs(work, args.quick)
    common = dict(
        trials=trials, epochs=epochs, concurrent=args.concurrent, max_failures=max_failures, seed=args.seed
    )
    faulty = run_search(search_spec(model, data, work / "runs", "chaos", **common), work, kills, args.seed)
    clean = run_search(search_spec(model, data, work / "runs", "chaos-clean", **common), work, 0, args.seed)
    faulty_trials, clean_trials = trials_in_order(faulty["run_dir"]), trials_in_order(clean["run_dir"])
    comparison = compare(faulty_trials, clean_trials, epochs)
    retries = sum(t["retries"] for t in faulty_trials)
    matches = (
        len(faulty["kills"]) == kills
        and retries == kills  # each kill seen by Tune as one failure, retried
        and comparison["same_configs_in_order"]
        and comparison["every_trial_completed_all_epochs"]
        and comparison["metrics_equal"]
    )
    figures = {
        "quick": args.quick,
        "trials": trials,
        "max_epochs": epochs,
        "max_concurrent": args.concurrent,
        "max_failures": max_failures,
        "seed": args.seed,
        "kills_asked": kills,
        "kills_done": len(faulty["kills"]),
        "kills": faulty["kills"],
        "retries_seen": retries,
        "matches": matches,
        **{k: v for k, v in comparison.items() if k != "per_trial"},
        "faulty_wall_s": faulty["wall_s"],
        "clean_wall_s": clean["wall_s"],
        "per_trial": comparison["per_trial"],
        "wall_s": round(time.time() - started, 1),
    }
    name = args.name or ("chaos_quick" if args.quick else "chaos")
    command = "python benchmarks/chaos.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_result(name, figures, command.strip()))
    print(
        f"chaos: {len(faulty['kills'])} kills, {retries} retries, matches={matches} "
        f"(configs {comparison['same_configs_in_order']}, completed "
        f"{comparison['every_trial_completed_all_epochs']}, metrics equal {comparison['metrics_equal']}, "
        f"max |diff| {comparison['max_abs_diff_epoch_metrics']}); {faulty['wall_s']} s against "
        f"{clean['wall_s']} s"
    )


if __name__ == "__main__":
    main()
