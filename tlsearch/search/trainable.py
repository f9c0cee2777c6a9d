"""The Tune function trainable: one trial. Module level, so `Tuner.restore` can import it."""

from __future__ import annotations

import os
import time
from typing import Any

from tlsearch.space.trial_config import TrialConfig
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


def run_trial(config: dict[str, Any], run: RunContext) -> None:
    from ray import tune

    inputs = TrialInputs(
        run, TrialConfig.parse(config), tune.get_context().get_trial_id(), time.time(), driver_node=node_id()
    )
    if run.spec.resources.workers_per_trial == 1:
        try:
            train_trial(inputs, TuneSession(run.use_gpu))
        finally:  # the process may run the next trial: what this one freed goes back to the OS
            release_freed_host_memory()
    else:
        _fit_with_ray_train(inputs)


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
                checkpoint_score_attribute=spec.search.metric,
                checkpoint_score_order=spec.search.resolved_mode,
            ),
            failure_config=ray.train.FailureConfig(
                max_failures=spec.search.max_failures, controller_failure_limit=TRAIN_CONTROLLER_FAILURE_LIMIT
            ),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
