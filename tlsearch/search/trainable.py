"""The Tune function trainable: one trial. Module level, so `Tuner.restore` can import it."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from tlsearch.space.trial_config import Continuation, TrialConfig
from tlsearch.spec.objective import primary
from tlsearch.train.checkpoint import META_FILE
from tlsearch.train.host_memory import release_freed_host_memory
from tlsearch.train.inputs import RunContext, TrialInputs
from tlsearch.train.loop import train_trial
from tlsearch.train.session import TrainSession, TuneSession, node_id

# The trial driver of a multi-worker trial only waits on its Train controller.
DRIVER_CPUS = 0.01
TRAIN_CONTROLLER_FAILURE_LIMIT = 2
# Ray Train gives a worker group 60 s to start; workers that import torch and transformers on a
# busy node (or pull an image) can take longer, and a timed-out start fails the trial. Ray passes the
# variable on from this process to the Train controller; a value set by the user wins.
WORKER_GROUP_START_TIMEOUT_S = "300"
# A reused trial process runs the next trial once the stopped one's thread has ended; Tune waits 2 s
# for that and otherwise replaces the process (a cold start). With background reports a stopped
# trial's thread may be mid-step on a slow device when Tune asks: it ends at its next step.
FUNCTION_THREAD_TIMEOUT_S = "30"


def run_trial(config: dict[str, Any], run: RunContext) -> None:
    from ray import tune

    started_at = time.time()
    params, continuation = Continuation.split(config)
    trial_id = tune.get_context().get_trial_id()
    warm_start = None
    if continuation is not None:
        warm_start = find_checkpoint(run, continuation.trial_id, continuation.epoch)
        if warm_start is None:
            print(
                f"[tlsearch] trial {trial_id}: no checkpoint of trial {continuation.trial_id} at epoch "
                f"{continuation.epoch} (deleted, or on storage this node does not see): it trains "
                "from its start",
                flush=True,
            )
    inputs = TrialInputs(
        run, TrialConfig.parse(params), trial_id, started_at, driver_node=node_id(), warm_start=warm_start
    )
    if run.spec.resources.workers_per_trial == 1:
        # Read by Tune in this process when it hands the process to the next trial; a user's value wins.
        os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", FUNCTION_THREAD_TIMEOUT_S)
        try:
            train_trial(inputs, TuneSession(run.use_gpu, background=run.spec.training.background_checkpoints))
        finally:  # the process may run the next trial: what this one freed goes back to the OS
            release_freed_host_memory()
    else:
        _fit_with_ray_train(inputs)


def find_checkpoint(run: RunContext, trial_id: str, epoch: int) -> str | None:
    """Where trial `trial_id` of this search keeps its checkpoint of `epoch` (a path or a URI), or
    None. Tune keeps a trial's latest checkpoint whatever its score (checkpoints_to_keep), and the
    epoch ASHA stopped a trial at is its latest."""
    import pyarrow.fs

    experiment = (run.experiment_dir or run.run_dir).rstrip("/")
    if run.spec.resources.workers_per_trial == 1:  # Tune's checkpoint_000000, ... (trial_dirname)
        parent = f"{experiment}/trial_{trial_id}"
    else:  # Ray Train's, one run per trial (_fit_with_ray_train)
        parent = f"{experiment}/train/{run.spec.name}-{trial_id}"
    try:
        if "://" in parent:  # checkpoint_storage on S3, GCS, ...
            filesystem, path = pyarrow.fs.FileSystem.from_uri(parent)
        else:
            filesystem, path = pyarrow.fs.LocalFileSystem(), parent
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError):
        return None
    names = sorted(
        (
            i.base_name
            for i in listing
            if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_")
        ),
        reverse=True,  # zero-padded: the latest first
    )
    for name in names:
        try:
            with filesystem.open_input_stream(f"{path}/{name}/{META_FILE}") as f:
                if json.loads(f.read()).get("epoch") == epoch:
                    return f"{parent}/{name}"
        except (OSError, ValueError):
            continue
    return None


def _train_worker(loop_config: dict[str, Any]) -> None:
    train_trial(loop_config["inputs"], TrainSession())


def _fit_with_ray_train(inputs: TrialInputs) -> None:
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_GROUP_START_TIMEOUT_S)
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    run, spec = inputs.run, inputs.run.spec
    r = spec.resources
    resources: dict[str, float] = {"CPU": r.cpus_per_worker}
    if run.use_gpu:
        resources["GPU"] = r.worker_gpus(True)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"inputs": inputs},
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=run.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            # A fit() with an existing (storage, name) resumes that run: one name per trial, so a
            # retried trial continues from its own checkpoint and never from another's.
            name=f"{spec.name}-{inputs.trial_id}",
            storage_path=f"{run.experiment_dir or run.run_dir}/train",
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.training.checkpoints_to_keep,
                checkpoint_score_attribute=primary(spec.search.objectives).metric,
                checkpoint_score_order=primary(spec.search.objectives).mode,
            ),
            failure_config=ray.train.FailureConfig(
                max_failures=spec.search.max_failures, controller_failure_limit=TRAIN_CONTROLLER_FAILURE_LIMIT
            ),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
