"""The Tune function trainable: one trial. Module level, so `Tuner.restore` can import it."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from ray.train import DataConfig

from tlsearch.data.streamed import RAY_DATA, streamed_split
from tlsearch.models.sources import build_model
from tlsearch.space.trial_config import Continuation, TrialConfig, split_baseline
from tlsearch.train.checkpoint import checkpoint_retention
from tlsearch.train.host_memory import release_freed_host_memory
from tlsearch.train.inputs import RunContext, TrialInputs
from tlsearch.train.loop import train_trial
from tlsearch.train.session import TrainSession, TuneSession, node_id

SCRATCH = "scratch"  # the baseline trained from random weights (tlsearch.search.baselines)
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
    params, baseline = split_baseline(params)
    if baseline == SCRATCH:
        run = from_scratch(run)
    trial_id = tune.get_context().get_trial_id()
    if trial_id in run.ended_trials:
        return  # it ended before the driver was killed; its results are in the run directory
    continues_from = None
    if continuation is not None:
        continues_from = run.checkpoints.find(continuation.trial_id, continuation.epoch)
        if continues_from is None:
            print(
                f"[tlsearch] trial {trial_id}: no checkpoint of trial {continuation.trial_id} at epoch "
                f"{continuation.epoch} (deleted, or on storage this node does not see): it trains "
                "from its start",
                flush=True,
            )
    inputs = TrialInputs(
        run,
        TrialConfig.parse(params),
        trial_id,
        started_at,
        driver_node=node_id(),
        continues_from=continues_from,
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


def from_scratch(run: RunContext) -> RunContext:
    """The search's run with the model's architecture at random weights (`pretrained: false`)."""
    model = run.spec.model.model_copy(update={"pretrained": False})
    return dataclasses.replace(run, spec=run.spec.model_copy(update={"model": model}))


def _train_worker(loop_config: dict[str, Any]) -> None:
    inputs: TrialInputs = loop_config["inputs"]
    train_trial(inputs, TrainSession(inputs.run.spec.resources.fsdp))


class EachValidationRowOnce(DataConfig):
    """The training stream split evenly among the workers (each rank the same number of rows: the
    same number of steps), the validation stream so that every row is evaluated once by one worker:
    Ray Train's default `equal=True` split would leave up to N-1 rows out."""

    def __init__(self) -> None:
        super().__init__(datasets_to_split=["train"])

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        datasets = dict(datasets)
        validation = datasets.pop("validation", None)
        shards = super().configure(datasets, world_size, worker_handles, worker_node_ids, **kwargs)
        if validation is not None:
            validation = validation.copy(validation)
            validation.context.execution_options = self.default_ingest_options()
            parts = validation.streaming_split(world_size, equal=False)
            for shard, part in zip(shards, parts, strict=True):
                shard["validation"] = part
        return shards


def _fit_with_ray_train(inputs: TrialInputs) -> None:
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_GROUP_START_TIMEOUT_S)
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    run, spec = inputs.run, inputs.run.spec
    r = spec.resources
    storage_path, name = run.checkpoints.train_run(inputs.trial_id)
    resources: dict[str, float] = {"CPU": r.cpus_per_worker}
    if run.use_gpu:
        resources["GPU"] = r.worker_gpus(True)
    streams: dict[str, Any] = {}
    if run.data.loader == RAY_DATA:  # Ray Train divides them among the workers
        augmentation = inputs.config.common.augmentation
        preprocessing = build_model(spec.model, run.num_classes, weights=False).preprocessing
        streams = {
            split: streamed_split(run.data, split, spec.model, preprocessing, augmentation)
            for split in ("train", "validation")
        }
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"inputs": inputs},
        datasets=streams or None,
        dataset_config=EachValidationRowOnce(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=run.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # Train V2's callbacks; typed as V1's
            checkpoint_config=ray.train.CheckpointConfig(**checkpoint_retention(spec)),
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]  # Train V2's, typed as V1's
                max_failures=spec.search.max_failures, controller_failure_limit=TRAIN_CONTROLLER_FAILURE_LIMIT
            ),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
