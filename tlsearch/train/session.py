"""The seam between the training loop and Ray: one loop, two runners (and one without Ray).

- TuneSession: a single-worker trial runs the loop inside the Tune trial actor and checkpoints
  at Tune level (no worker group to start: DESIGN.md §2).
- TrainSession: a multi-worker trial runs the loop on Ray Train workers (DDP); rank 0's
  reports reach Tune through TuneReportCallback.
- LocalSession: one trial in this process, no Ray (benchmarks, tests): reports are kept in a list.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class Session(Protocol):
    world_rank: int
    world_size: int
    device: torch.device

    def wrap(self, model: nn.Module) -> nn.Module: ...
    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None: ...
    def worker_nodes(self) -> list[str]: ...


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


@contextlib.contextmanager
def _checkpoint_as_dir(checkpoint: Any) -> Iterator[Path | None]:
    if checkpoint is None:
        yield None
    else:
        with checkpoint.as_directory() as d:
            yield Path(d)


@contextlib.contextmanager
def open_checkpoint(location: str | None) -> Iterator[Path | None]:
    """A checkpoint directory by its path or URI (checkpoint_storage), as a local directory while
    the `with` lasts (a download for a URI); None for None."""
    if location is None:
        yield None
        return
    import ray.train

    with _checkpoint_as_dir(ray.train.Checkpoint(location)) as directory:
        yield directory


class TuneSession:
    world_rank = 0
    world_size = 1

    def __init__(self, use_gpu: bool):
        self.device = torch.device("cuda:0" if use_gpu and torch.cuda.is_available() else "cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def worker_nodes(self) -> list[str]:
        return [node_id()]

    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        from ray import tune

        return _checkpoint_as_dir(tune.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


class LocalSession:
    world_rank = 0
    world_size = 1

    def __init__(self, device: str = "cpu", checkpoints_to: Path | None = None):
        self.device = torch.device(device)
        self.reports: list[dict[str, Any]] = []  # each epoch's metrics, in order
        self.checkpoints_to = checkpoints_to  # each epoch's checkpoint kept as <dir>/epoch_0001, ...

    def wrap(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def worker_nodes(self) -> list[str]:
        return [node_id()]

    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        return contextlib.nullcontext(None)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self.checkpoints_to is not None:
            shutil.copytree(checkpoint_dir, self.checkpoints_to / f"epoch_{epoch:04d}")


class TrainSession:
    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def worker_nodes(self) -> list[str]:
        """Each rank's node, in rank order (a collective: every rank calls it)."""
        import torch.distributed as dist

        nodes: list[Any] = [None] * self.world_size
        dist.all_gather_object(nodes, node_id())
        return [str(n) for n in nodes]

    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        import ray.train

        return _checkpoint_as_dir(ray.train.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        import ray.train

        # Every rank reports (it is a barrier); only rank 0 carries the checkpoint.
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
