"""What a trial's workers need, as plain picklable data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tlsearch.data.tables import DataFiles
from tlsearch.space.trial_config import TrialConfig
from tlsearch.spec.model import Spec
from tlsearch.train.checkpoint import CheckpointLayout


@dataclass(frozen=True)
class RunContext:
    """The same for every trial of a search; shipped once through the object store."""

    run_dir: str
    spec: Spec
    data: DataFiles
    use_gpu: bool
    # The Tune experiment: the run directory, or `<checkpoint_storage>/<name>` (a path or a URI).
    experiment_dir: str = ""
    # sha256 of each data file by split (spec.resolved.yaml records the same): part of the feature
    # cache's key. Empty: hashed where needed.
    data_sha256: dict[str, str] = field(default_factory=dict)
    # Trials that ended before a killed driver's last save of Tune's experiment state: the restored
    # experiment starts them again, and they return at once instead of training again.
    ended_trials: frozenset[str] = frozenset()

    @property
    def num_classes(self) -> int:
        return len(self.data.labels)

    @property
    def devices_per_worker(self) -> float:
        """GPUs per worker when on GPU, else CPUs: the unit of device-seconds."""
        r = self.spec.resources
        return r.worker_gpus(True) if self.use_gpu else r.cpus_per_worker

    @property
    def checkpoints(self) -> CheckpointLayout:
        multi_worker = self.spec.resources.workers_per_trial > 1
        return CheckpointLayout(self.experiment_dir or self.run_dir, self.spec.name, multi_worker)


@dataclass(frozen=True)
class TrialInputs:
    run: RunContext
    config: TrialConfig[Any]
    trial_id: str
    started_at: float  # wall clock at the trial function's start: wall_s includes set-up
    driver_node: str = ""  # node of the Tune trial actor (the trial driver)
    # A checkpoint of another trial to start from (a path or a URI): the trial continues that one's
    # training (ASHA's promotion, search/policy/promotion.py). Its own checkpoint, on a retry, comes first.
    continues_from: str | None = None
