"""Start, resume and finish a search: the only module that builds Tune objects."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from tlsearch.audit import AUDIT_FILE, wandb_summary
from tlsearch.errors import UserInputError
from tlsearch.results.files import (
    EVENTS_LOG,
    TRIALS_TABLE,
    append_jsonl,
    checkpoint_exists,
    ended_trials,
    spent_device_s,
    write_tables,
)
from tlsearch.results.report import Report, render_figures, write_report_files
from tlsearch.results.study import make_storage
from tlsearch.search import baselines, budget, storage_guard
from tlsearch.search.checkpoint_catchup import ResumeFromNewestCheckpoint
from tlsearch.search.checkpoint_sweep import UnreportedCheckpointSweep
from tlsearch.search.policy.promotion import AshaRungs
from tlsearch.search.recorder import ResultsRecorder
from tlsearch.search.resolve import Resolved, read_resolved_spec, resolve, write_resolved_spec
from tlsearch.search.storage_guard import StorageGuard
from tlsearch.search.study import StudySearch, close_orphans
from tlsearch.search.trainable import DRIVER_CPUS, run_trial
from tlsearch.search.tune_sync import OwnFilesOutOfTuneSync
from tlsearch.space import SearchSpace, make_sampler, seed_points
from tlsearch.spec import Spec
from tlsearch.spec.objective import primary
from tlsearch.tracking.wandb_runs import WandbTracker, api_key_configured, resolve_mode
from tlsearch.train.checkpoint import CheckpointLayout, checkpoint_retention
from tlsearch.train.inputs import RunContext


@dataclass(frozen=True)
class Outcome:
    run_dir: Path
    trials: list[dict[str, Any]]  # every row of trials.parquet: the search's trials and the baselines
    num_samples: int
    finalize_error: str | None = None  # why finalize after the search failed (the search itself did not)
    budget_spent: bool = False  # search.time_budget_s ran out: fewer than num_samples trials is its end
    storage_full: str | None = None  # why the search stopped for its storage (tlsearch.search.storage_guard)

    @property
    def search_trials(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t.get("in_search", True)]

    @property
    def succeeded(self) -> bool:
        return any(t["status"] in ("completed", "stopped_early") for t in self.search_trials)

    @property
    def interrupted(self) -> bool:
        """Stopped before every trial (and baseline) ran to an end (Ctrl-C): `tlsearch resume`
        continues it."""
        search = self.search_trials
        if any(t["status"] == "running" for t in self.trials):
            return True
        return len(search) < self.num_samples and not self.budget_spent


BASELINES_DIR = "baselines"  # the baselines' Tune experiment, inside the search's


def check_reachable(address: str | None) -> None:
    """A cluster address (`host:port` of its GCS, as `ray start` prints it) must accept connections:
    refused within seconds, before anything is written, rather than Ray retrying for minutes."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local") or "://" in address:
        return  # Ray's own lookups (auto), a new cluster, or a client / dashboard URL
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserInputError(
            f"--address `{address}` is not HOST:PORT (the GCS address `ray start --head` prints, e.g. "
            "127.0.0.1:6379)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise UserInputError(
            f"no Ray cluster at {address} ({exc.strerror or exc}): start one with `ray start --head`, "
            "pass the address it prints, or leave --address (and RAY_ADDRESS) out for a local cluster"
        ) from None


def connect(address: str | None) -> None:
    """Attach to `address` / RAY_ADDRESS, or start a local cluster with the dashboard on loopback
    (Ray Train's cleanup of stopped trials goes through the dashboard's State API: docs/design.md §14).
    Ray's other ports listen on all interfaces, guarded by its token authentication
    (docs/reliability.md#security, measured by tests/integration/test_ports.py)."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return
    # The processes of a local cluster inherit this environment: keep the W&B key out of them
    # (only this driver logs to W&B).
    secret = os.environ.pop("WANDB_API_KEY", None)
    try:
        # address="local": a new cluster even when another one runs on this machine (plain
        # ray.init() would silently join that one). Ray replaces the loopback node address by the
        # machine's own wherever it has one (docs/design.md §18).
        ray.init(
            address="local", include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1"
        )
    finally:
        if secret is not None:
            os.environ["WANDB_API_KEY"] = secret


def plan_resources(spec: Spec, cluster: dict[str, float]) -> tuple[bool, dict[str, Any], int]:
    """(use GPUs?, the trial actor's resources, how many trials may run at once).

    Tune accounts only for the trial actor; a multi-worker trial's Train workers reserve their own
    placement group, so concurrency must come from the whole trial's need or extra trials wait forever.
    """
    r = spec.resources
    gpus = cluster.get("GPU", 0.0)
    # An explicit search.max_concurrent says how many trials the cluster will hold once its
    # autoscaler has added nodes: then what is missing now is waited for, not refused.
    autoscaling = spec.search.max_concurrent is not None
    use_gpu = gpus > 0 if r.use_gpu == "auto" else bool(r.use_gpu)
    if use_gpu and gpus <= 0 and not autoscaling:
        raise UserInputError(
            "resources.use_gpu is true, but the Ray cluster has no GPUs now; on an autoscaling cluster "
            "set search.max_concurrent so the search waits for GPU nodes"
        )
    gpus_per_worker = r.worker_gpus(use_gpu)
    workers = r.workers_per_trial
    need_cpu = workers * r.cpus_per_worker + (DRIVER_CPUS if workers > 1 else 0.0)
    need_gpu = workers * gpus_per_worker
    fits = [cluster.get("CPU", 0.0) / need_cpu]
    if need_gpu:
        fits.append(gpus / need_gpu)
    driver_extra = dict(r.trial_driver_resources) if workers > 1 else {}
    for name, amount in driver_extra.items():
        if cluster.get(name, 0.0) < amount and not autoscaling:
            raise UserInputError(
                f"resources.trial_driver_resources asks for {amount:g} `{name}`, but the cluster has "
                f"{cluster.get(name, 0.0):g}: start the nodes that should run trial drivers with "
                f"`ray start ... --resources '{{\"{name}\": 100}}'` (cluster/README.md)"
            )
        fits.append(cluster.get(name, 0.0) / amount)
    fit = math.floor(min(fits) + 1e-9)
    if fit < 1 and not autoscaling:
        raise UserInputError(
            f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs ({workers} workers), but the cluster "
            f"has {cluster.get('CPU', 0):g} CPUs and {gpus:g} GPUs: lower resources.workers_per_trial or "
            "cpus_per_worker (or, on an autoscaling cluster, set search.max_concurrent)"
        )
    if autoscaling and fit < (spec.search.max_concurrent or 0):
        print(
            f"[tlsearch] the cluster holds {fit} trial(s) now; search.max_concurrent is "
            f"{spec.search.max_concurrent}: the rest wait for the autoscaler to add nodes",
            flush=True,
        )
    max_concurrent = min(spec.search.max_concurrent or fit, spec.search.num_samples)
    # Single-worker trials train inside the trial actor, which holds the worker's resources.
    actor: dict[str, Any] = (
        {"cpu": r.cpus_per_worker, "gpu": gpus_per_worker} if workers == 1 else {"cpu": DRIVER_CPUS}
    )
    if driver_extra:
        actor["custom_resources"] = driver_extra
    return use_gpu, actor, max_concurrent


def experiment_location(spec: Spec, run_dir: Path) -> tuple[str, str]:
    """(storage_path, name) of the Tune experiment: the run directory itself, or a directory named
    after the search under `checkpoint_storage` (checkpoints on S3/GCS, the rest on the driver)."""
    root = spec.checkpoint_root()
    return (str(run_dir.parent), run_dir.name) if root is None else (root, run_dir.name)


def in_ray_job() -> bool:
    """Started by `ray job submit` (the job supervisor passes the job's config this way)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_job_storage(spec: Spec) -> None:
    """A Ray job runs in a temporary copy of its working directory: results under a relative path
    would vanish with it."""
    if not in_ray_job():
        return
    relative = [
        (key, value)
        for key, value in (("storage", spec.storage), ("checkpoint_storage", spec.checkpoint_storage))
        if value is not None and "://" not in value and not Path(value).expanduser().is_absolute()
    ]
    if relative:
        key, value = relative[0]
        raise UserInputError(
            f"`{key}` is {value!r}, relative to this Ray job's temporary working directory, which Ray "
            f"deletes: give an absolute path on a filesystem the head node keeps (a shared mount), "
            f"e.g. --set {key}=/mnt/shared/tlsearch-runs"
        )


def trial_dirname(trial: Any) -> str:
    return CheckpointLayout.trial_dirname(trial.trial_id)


def search_algorithms(
    spec: Spec, space: SearchSpace, study_name: str, storage: optuna.storages.BaseStorage | None
) -> tuple[StudySearch, Any]:
    """The searcher (Optuna study, sampler, seed configs) and the Tune scheduler of a search. The
    learning-curve replay (benchmarks/replay.py) drives the very same pair."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.search
    asha = s.scheduler
    objective = primary(s.objectives)  # what ASHA ranks trials by
    seconds = asha.time_attr == "device_s"
    # One set of settings for Ray's ASHA and the searcher's mirror of its rungs (promotion).
    rung_settings: dict[str, Any] = {
        "time_attr": asha.time_attr,
        "max_t": asha.max_t_s if seconds else s.max_epochs,
        "grace_period": asha.grace_period_s if seconds else asha.grace_period,
        "reduction_factor": asha.reduction_factor,
    }
    scheduler = (
        # stop_last_trials=False: trials that reach max_epochs end normally (docs/design.md §15)
        ASHAScheduler(**rung_settings, metric=objective.metric, mode=objective.mode, stop_last_trials=False)
        if asha.type == "asha"
        else FIFOScheduler()
    )
    promote = asha.type == "asha" and asha.promote and s.skip_duplicates
    rungs = AshaRungs(**rung_settings, objective=objective) if promote else None
    searcher = StudySearch(
        space=space,
        objectives=s.objectives,
        points_to_evaluate=seed_points(spec, space) or None,
        sampler=make_sampler(spec),
        study_name=study_name,
        storage=storage,
        max_epochs=s.max_epochs,
        skip_duplicates=s.skip_duplicates,
        rungs=rungs,
    )
    return searcher, scheduler


def _tuner(resolved: Resolved, run_dir: Path, *, restore: bool) -> Any:
    import ray
    from ray import tune

    spec = resolved.spec
    use_gpu, actor, max_concurrent = plan_resources(spec, ray.cluster_resources())
    storage_path, experiment_name = experiment_location(spec, run_dir)
    experiment_dir = f"{storage_path}/{experiment_name}"
    run = RunContext(
        str(run_dir),
        spec,
        resolved.data,
        use_gpu,
        experiment_dir,
        dict(resolved.hashes),
        ended_trials=ended_trials(run_dir) if restore else frozenset(),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, run=run), actor)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if nodes > 1 and "://" not in storage_path:
        # Trials on other nodes write checkpoints to this path on *their* disk.
        print(
            f"[tlsearch] {nodes} nodes: {storage_path} must be a filesystem every node mounts at the same "
            "path, or set checkpoint_storage to an s3:// or gs:// URI (cluster/README.md)",
            flush=True,
        )
    print(
        f"[tlsearch] {spec.name}: {spec.search.num_samples} trials, up to {max_concurrent} at once, "
        f"{'GPU' if use_gpu else 'CPU'}; strategies: {', '.join(resolved.space.strategy_names())}",
        flush=True,
    )
    if restore:
        return tune.Tuner.restore(
            experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=False
        )

    s = spec.search
    searcher, scheduler = search_algorithms(
        spec, resolved.space, resolved.study_name, make_storage(spec.tracking.optuna.storage, run_dir)
    )
    multi_worker = spec.resources.workers_per_trial > 1
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=s.num_samples,
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=trial_dirname,
            # Only single-worker trials: a stopped multi-worker trial must lose its actor, which takes
            # its Train controller and workers with it (docs/design.md §14); a reused actor would keep them.
            reuse_actors=spec.training.reuse_processes and not multi_worker,
        ),
        run_config=tune.RunConfig(
            name=experiment_name,
            storage_path=storage_path,
            callbacks=[
                ResumeFromNewestCheckpoint(str(run_dir)),
                OwnFilesOutOfTuneSync(),
                _recorder(spec, run_dir, time_budget=s.time_budget_s is not None),
                StorageGuard(str(run_dir), max_concurrent),
                *_sweeps(run),
            ],
            stop=budget.TimeBudget(str(run_dir), s.time_budget_s) if s.time_budget_s is not None else None,
            checkpoint_config=tune.CheckpointConfig(**checkpoint_retention(spec)),
            # Multi-worker trials retry inside Ray Train (from the Train checkpoint); retrying the
            # trial driver too would multiply attempts.
            failure_config=tune.FailureConfig(max_failures=0 if multi_worker else s.max_failures),
            verbose=1,
        ),
    )


def _sweeps(run: RunContext) -> list[UnreportedCheckpointSweep]:
    """Multi-worker trials write checkpoints Tune may never see (tlsearch.search.checkpoint_sweep)."""
    return [UnreportedCheckpointSweep(run.checkpoints)] if run.checkpoints.multi_worker else []


def _recorder(spec: Spec, run_dir: Path, *, time_budget: bool = False) -> ResultsRecorder:
    s = spec.search
    return ResultsRecorder(
        str(run_dir),
        s.objectives,
        s.max_epochs,
        spec.name,
        spec.tracking.wandb,
        checkpoint_root=spec.checkpoint_root(),
        time_budget=time_budget,
    )


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (`timeout`, a CI runner's cancel, a scheduler's preemption) stops the search as Ctrl-C
    does: Tune's own SIGINT handling ends the trials and saves its state, and `tlsearch resume`
    continues it. Installed after Ray's start, whose core worker sets a SIGTERM handler of its own
    that aborts the process; the previous handler is back afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fit(resolved: Resolved, run_dir: Path, *, restore: bool, address: str | None) -> Outcome:
    connect(address)
    storage_guard.reset()
    with sigterm_as_ctrl_c():
        return _fit_connected(resolved, run_dir, restore=restore)


def _fit_connected(resolved: Resolved, run_dir: Path, *, restore: bool) -> Outcome:
    print(f"[tlsearch] run directory: {run_dir}", flush=True)
    spec = resolved.spec
    if restore and budget.budget_spent(run_dir):
        # The search's trials had used up its time budget: what is left is after them (baselines,
        # the final model), and a trial the killed driver had not yet ended ends now.
        print("[tlsearch] the search's time budget is spent: no more trials", flush=True)
        if budget.end_cut_trials(run_dir):
            recorder = _recorder(spec, run_dir)
            recorder.setup()  # writes the W&B runs of the trials just ended
            recorder.tracker.close()
        budget.end_session(run_dir)
    else:
        tuner = _tuner(resolved, run_dir, restore=restore)
        grid = tuner.fit()
        budget.end_session(run_dir)
        if restore:
            forget_lost_trials(run_dir, {Path(result.path).name.removeprefix("trial_") for result in grid})
    best = primary(spec.search.objectives)  # what the best trial is by
    spent = budget.budget_spent(run_dir)
    trials = write_tables(run_dir, best.metric, best.mode, spec.search.max_epochs)
    outcome = Outcome(
        run_dir,
        trials,
        spec.search.num_samples,
        budget_spent=spent,
        storage_full=storage_guard.storage_full_reason(),
    )
    if not outcome.interrupted:
        storage = make_storage(spec.tracking.optuna.storage, run_dir)
        close_orphans(resolved.study_name, storage, pruned_when_reported=spent)
        if baselines.wanted(spec):
            run_baselines(resolved, run_dir, trials)
            trials = write_tables(run_dir, best.metric, best.mode, spec.search.max_epochs)
            outcome = Outcome(run_dir, trials, spec.search.num_samples, budget_spent=spent)
    report = render_figures(run_dir)
    log_search_to_wandb(run_dir, spec, trials, report)  # uses the PNGs; its offline run joins the follow-up
    write_report_files(report)
    if not outcome.interrupted and outcome.succeeded and spec.finalize.after_search:
        outcome = replace(outcome, finalize_error=_finalize_after_search(resolved, run_dir))
    return outcome


def _finalize_after_search(resolved: Resolved, run_dir: Path) -> str | None:
    """`tlsearch finalize` at the search's end (finalize.after_search), when the data has a test split
    and the run has no final/ yet (a resumed search finalizes once). A failure leaves the search's
    results as they are: it is reported, and `tlsearch finalize RUN_DIR` tries again."""
    from tlsearch.final.export import FINAL_DIR
    from tlsearch.search.finalize import complete_final, finalize_run, remove_killed_finalize

    if resolved.data.test is None:
        print("[tlsearch] finalize: the data has no test split (data.test): no final model", flush=True)
        return None
    remove_killed_finalize(run_dir)
    try:
        if (run_dir / FINAL_DIR).exists():
            complete_final(run_dir, export=resolved.spec.finalize.export)  # a killed driver's finalize
            return None
        finalize_run(run_dir)
    except Exception as exc:  # the search's own results stay; the message says how to try again
        import traceback

        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}"
    write_report_files(render_figures(run_dir))  # with its "Final model" section
    return None


def run_baselines(resolved: Resolved, run_dir: Path, trials: list[dict[str, Any]]) -> None:
    """The baselines the search has not run yet (tlsearch/search/baselines.py), after its trials."""
    spec = resolved.spec
    lost = baselines.unfinished_runs(trials)
    for trial_id in lost:  # a killed driver's baseline trial: it runs again below
        append_jsonl(run_dir / EVENTS_LOG, {"event": "abandoned", "trial_id": trial_id})
    if lost:
        best = primary(spec.search.objectives)
        trials = write_tables(run_dir, best.metric, best.mode, spec.search.max_epochs)
    if baselines.MAJORITY in baselines.wanted(spec) and baselines.MAJORITY not in baselines.ended(trials):
        baselines.record_majority(run_dir, spec, resolved.data)
        recorder = _recorder(spec, run_dir)
        recorder.setup()  # writes the W&B run of a trial that ended without one: this one
        recorder.tracker.close()
    to_train = baselines.plan(spec, resolved.space, resolved.num_blocks, run_dir, trials)
    if to_train:
        _fit_baselines(resolved, run_dir, to_train)


def _fit_baselines(resolved: Resolved, run_dir: Path, to_train: list[baselines.BaselineTrial]) -> None:
    """One Tune run of the trained baselines, beside the search's experiment (`<experiment>/baselines`):
    the same trainable, resources, recorder and checkpoint rules, no searcher or scheduler."""
    import ray
    from ray import tune

    spec = resolved.spec
    use_gpu, actor, max_concurrent = plan_resources(spec, ray.cluster_resources())
    storage_path, experiment_name = experiment_location(spec, run_dir)
    experiment_dir = f"{storage_path}/{experiment_name}"
    run = RunContext(
        str(run_dir), spec, resolved.data, use_gpu, f"{experiment_dir}/{BASELINES_DIR}", dict(resolved.hashes)
    )
    print(
        f"[tlsearch] baselines: {', '.join(b.name for b in to_train)} "
        + ", ".join(
            f"({b.name}: up to {b.max_epochs} epochs"
            + (f", {b.max_device_s:.0f} device-seconds)" if b.max_device_s is not None else ")")
            for b in to_train
        ),
        flush=True,
    )
    multi_worker = spec.resources.workers_per_trial > 1
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, run=run), actor),
        tune_config=tune.TuneConfig(
            search_alg=baselines.FixedConfigs([b.config for b in to_train]),
            num_samples=len(to_train),
            max_concurrent_trials=min(max_concurrent, len(to_train)),
            trial_dirname_creator=trial_dirname,
            reuse_actors=spec.training.reuse_processes and not multi_worker,
        ),
        run_config=tune.RunConfig(
            name=BASELINES_DIR,
            storage_path=experiment_dir,
            stop=baselines.BudgetStopper({b.name: (b.max_epochs, b.max_device_s) for b in to_train}),
            callbacks=[_recorder(spec, run_dir), StorageGuard(str(run_dir), max_concurrent), *_sweeps(run)],
            checkpoint_config=tune.CheckpointConfig(**checkpoint_retention(spec)),
            failure_config=tune.FailureConfig(max_failures=0 if multi_worker else spec.search.max_failures),
            verbose=1,
        ),
    )
    tuner.fit()


def log_search_to_wandb(run_dir: Path, spec: Spec, trials: list[dict[str, Any]], report: Report) -> None:
    """The search's own W&B run: leaderboard, best configuration, and the report's plots."""
    tracker = WandbTracker(run_dir, spec.name, spec.tracking.wandb)
    if not tracker.enabled:
        return
    objective = primary(spec.search.objectives)
    metric = objective.metric
    best = report.best or {}
    search = [t for t in trials if t.get("in_search", True)]  # the baselines are counted apart
    statuses = {s: sum(t["status"] == s for t in search) for s in ("completed", "stopped_early", "error")}
    config = {
        "search": spec.name,
        "metric": metric,
        "mode": objective.mode,
        "num_samples": spec.search.num_samples,
        "max_epochs": spec.search.max_epochs,
        "strategies": spec.strategies.enabled(),
        "best_config": best.get("config", {}),
    }
    summary = {
        "best_trial": best.get("trial_id"),
        "best_strategy": best.get("strategy"),
        f"best_{metric}": best.get("value"),
        "trials": len(search),
        **{f"trials_{k}": v for k, v in statuses.items()},
        "device_s": sum(spent_device_s(t) for t in search),
        "transfer_gain": best.get("transfer_gain"),
        **{f"baseline_{name}": b.get("value") for name, b in (best.get("baselines") or {}).items()},
    }
    if (run_dir / AUDIT_FILE).exists():  # the data audit's counts (audit/...)
        summary |= wandb_summary(json.loads((run_dir / AUDIT_FILE).read_text()))
    columns = [
        "trial_id",
        "strategy",
        "baseline",
        "status",
        "epochs",
        f"best_{metric}",
        metric,
        "trainable_params",
        "wall_s",
        "device_s",
    ]
    table = [
        {c: t.get(c) for c in columns} | {k: v for k, v in t.items() if "/" in k and v is not None}
        for t in trials
    ]
    tracker.log_search(config, summary, table, report.images)
    tracker.close()


def forget_lost_trials(run_dir: Path, tune_trial_ids: set[str]) -> None:
    """A driver killed between two saves of Tune's experiment state had started trials that the
    restored experiment (and its Optuna study) never knew. They are not part of the search: mark them
    abandoned so the tables list every search trial exactly once (the raw logs keep their lines)."""
    from tlsearch.results.files import EVENTS_LOG, append_jsonl, read_jsonl

    started = {e["trial_id"] for e in read_jsonl(run_dir / EVENTS_LOG) if e.get("event") == "start"}
    for trial_id in sorted(started - tune_trial_ids):
        append_jsonl(run_dir / EVENTS_LOG, {"event": "abandoned", "trial_id": trial_id})


DRIVER_LOCK = "driver.lock"  # in the run directory: who drives the search now (tlsearch.search.runner)
REACH_TIMEOUT_S = 5.0  # a cluster's address that accepts no connection in this long is refused


def check_tracking(spec: Spec) -> None:
    """W&B online needs a key: refused before anything starts, rather than runs that never reach W&B."""
    mode = resolve_mode(spec.tracking.wandb.mode)
    if mode == "online" and not api_key_configured():
        raise UserInputError(
            "W&B is online (tracking.wandb.mode, or WANDB_MODE), but no API key is configured: run "
            "`wandb login` or set WANDB_API_KEY, or set tracking.wandb.mode: offline (sync later with "
            "`wandb sync`)"
        )


def run_search(spec: Spec, *, address: str | None = None) -> Outcome:
    check_job_storage(spec)
    check_tracking(spec)
    check_reachable(address)
    run_dir = spec.run_dir()
    if run_dir.exists():
        raise UserInputError(
            f"{run_dir} already exists: continue it with `tlsearch resume {run_dir}`, or start a new search "
            f"with another name (`--name {spec.name}-2`)"
        )
    if spec.checkpoint_storage is not None:
        experiment = "/".join(experiment_location(spec, run_dir))
        if checkpoint_exists(experiment):
            raise UserInputError(
                f"{experiment} already exists (checkpoint_storage): another search of this name wrote "
                f"there; start this one with another name (`--name {spec.name}-2`)"
            )
    try:
        run_dir.mkdir(parents=True)  # atomic: of two searches of one name started at once, one wins
    except FileExistsError:
        raise UserInputError(
            f"{run_dir} already exists (another search of this name has just started): start this one "
            f"with another name (`--name {spec.name}-2`)"
        ) from None
    except OSError as exc:
        raise UserInputError(
            f"cannot create the run directory {run_dir}: {exc.strerror}; set `storage` to a directory "
            "you can write to"
        ) from None
    with driver_lock(run_dir):
        budget.start_session(run_dir)  # the time budget counts from here: the audit and Ray's start-up too
        try:
            resolved = resolve(spec, run_dir)
        except BaseException:
            # Nothing ran yet: remove only what this call created a moment ago.
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        write_resolved_spec(resolved, run_dir)
        return _fit(resolved, run_dir, restore=False, address=address)


def resume_search(run_dir: Path, *, address: str | None = None) -> Outcome:
    from ray import tune

    run_dir = Path(run_dir).expanduser().resolve()
    spec = read_resolved_spec(run_dir)
    check_tracking(spec)
    check_reachable(address)
    with driver_lock(run_dir):
        budget.start_session(run_dir)
        resolved = resolve(spec, run_dir, resuming=True)
        restorable = tune.Tuner.can_restore("/".join(experiment_location(spec, run_dir)))
        if not restorable and (run_dir / TRIALS_TABLE).exists():
            raise UserInputError(f"{run_dir} has results but no Tune experiment state to resume from")
        return _fit(resolved, run_dir, restore=restorable, address=address)


@contextlib.contextmanager
def driver_lock(run_dir: Path) -> Iterator[None]:
    """Held by the process driving this search (`run`, `resume`): a second driver of the same run is
    refused rather than writing beside it. An flock, which the kernel drops when its process dies: a
    killed driver's search resumes. (On a network file system shared by several machines, flock may
    hold on one machine only.)"""
    import fcntl

    with open(run_dir / DRIVER_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserInputError(
                f"{run_dir} is being driven by {holder}: wait for it to end (or stop it), then "
                f"`tlsearch resume {run_dir}` if it did not finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"tlsearch pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
