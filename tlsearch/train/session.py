"""The seam between the training loop and Ray: one loop, two runners (and one without Ray).

- TuneSession: a single-worker trial runs the loop inside the Tune trial actor and checkpoints
  at Tune level (no worker group to start: docs/design.md §12). With `background` (the spec's
  `training.background_checkpoints`) each epoch's report goes to Tune from a thread of its own: the
  files are written, Ray copies them to the trial's storage and the driver answers while the next
  epoch trains (the device would otherwise wait for all three, every epoch).
- TrainSession: a multi-worker trial runs the loop on Ray Train workers, data parallel (DDP) or
  sharded (FSDP2: tlsearch.train.sharding); rank 0's reports reach Tune through TuneReportCallback.
- LocalSession: one trial in this process, no Ray (benchmarks, tests): reports are kept in a list.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tlsearch.spec.model import FsdpSpec
from tlsearch.train.checkpoint import CheckpointLayout, EpochCheckpoint, as_directory
from tlsearch.train.scratch import scratch_dir
from tlsearch.train.sharding import shard


class Session(Protocol):
    world_rank: int
    world_size: int
    device: torch.device

    def wrap(self, model: nn.Module, shard_blocks: Sequence[nn.Module] = ()) -> nn.Module:
        """The module as this session trains it: on its device; on several workers DDP, or sharded
        when `shard_blocks` names the blocks to shard one by one. A wrapper may replace the parameter
        objects: the loop builds the optimizer from the wrapped module."""

    def stream(self, split: str, build: Callable[[], Any]) -> Any:
        """This rank's Ray DataIterator over a streamed split (`data.loader: ray_data`): a
        multi-worker trial's share, as Ray Train divided it; else the whole of `build()`'s dataset."""

    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]: ...
    def resumes(self) -> bool:
        """Whether this run of the trial starts from its own checkpoint (a retry, a resumed search)."""

    def report(self, metrics: dict[str, Any], checkpoint: EpochCheckpoint | None, epoch: int) -> None: ...
    def poll(self) -> None:
        """Between steps: raises what a report still in flight raised (SystemExit: Tune stopped the trial)."""

    def finish(self) -> None:
        """After the last epoch: waits for the reports in flight."""

    def worker_nodes(self) -> list[str]: ...


def _write_then(
    metrics: dict[str, Any], checkpoint: EpochCheckpoint | None, report: Callable[[Path | None], None]
) -> None:
    """Writes the checkpoint (if any) into a scratch directory and calls `report` with it there;
    `checkpoint_write_s` in the metrics says how long the files took."""
    if checkpoint is None:
        report(None)
        return
    with scratch_dir() as directory:
        metrics["checkpoint_write_s"] = checkpoint.write(directory)
        metrics.setdefault("checkpoint_save_s", metrics["checkpoint_write_s"])  # written in line
        report(directory)


class _InFlight:
    """One report running on a thread of its own; what it raised is kept for the training thread."""

    def __init__(self, job: Callable[[], None]):
        self.error: BaseException | None = None
        # A daemon: a report Tune never answers (the driver is gone) must not keep the process alive.
        self._thread = threading.Thread(target=self._run, args=(job,), name="tlsearch-report", daemon=True)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:  # SystemExit included: Ray's way of saying "stopped"
            self.error = error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


class TuneSession:
    world_rank = 0
    world_size = 1

    def __init__(self, use_gpu: bool, background: bool = False):
        self.device = torch.device("cuda:0" if use_gpu and torch.cuda.is_available() else "cpu")
        self.background = background
        self._in_flight: _InFlight | None = None

    def wrap(self, model: nn.Module, shard_blocks: Sequence[nn.Module] = ()) -> nn.Module:
        return model.to(self.device)  # one process: nothing to shard over

    def worker_nodes(self) -> list[str]:
        return [node_id()]

    def stream(self, split: str, build: Callable[[], Any]) -> Any:
        return build().iterator()  # one process reads it all

    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        from ray import tune

        return as_directory(tune.get_checkpoint())

    def resumes(self) -> bool:
        from ray import tune

        return tune.get_checkpoint() is not None

    def report(self, metrics: dict[str, Any], checkpoint: EpochCheckpoint | None, epoch: int) -> None:
        """Hands the epoch to Tune. Tune's `report` returns once the checkpoint files are in the
        trial's storage and the driver has taken the result (and asked for the next one, or set the
        trial to stop: then it raises SystemExit). In the background that happens on another thread,
        one report at a time and in order; the training thread waits only for the previous one (long
        done, unless epochs are very short) and to copy the checkpoint off the device."""
        from ray import tune

        def send(directory: Path | None) -> None:
            on_storage = tune.Checkpoint.from_directory(str(directory)) if directory else None
            tune.report(metrics, checkpoint=on_storage)

        held = time.time()
        self.finish()
        if self.background:
            if checkpoint is not None:
                checkpoint = checkpoint.detached()
                metrics["checkpoint_save_s"] = time.time() - held  # the training thread's part
            self._in_flight = _InFlight(lambda: _write_then(metrics, checkpoint, send))
        else:
            _write_then(metrics, checkpoint, send)

    def poll(self) -> None:
        if self._in_flight is not None and self._in_flight.done():
            self.finish()

    def finish(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.wait()


class LocalSession:
    world_rank = 0
    world_size = 1

    def __init__(self, device: str = "cpu", checkpoints_to: Path | None = None):
        self.device = torch.device(device)
        self.reports: list[dict[str, Any]] = []  # each epoch's metrics, in order
        self.checkpoints_to = checkpoints_to  # each epoch's checkpoint kept as <dir>/epoch_0001, ...

    def wrap(self, model: nn.Module, shard_blocks: Sequence[nn.Module] = ()) -> nn.Module:
        return model.to(self.device)  # one process: nothing to shard over

    def worker_nodes(self) -> list[str]:
        return [node_id()]

    def stream(self, split: str, build: Callable[[], Any]) -> Any:
        return build().iterator()  # one process reads it all

    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        return contextlib.nullcontext(None)

    def resumes(self) -> bool:
        return False

    def report(self, metrics: dict[str, Any], checkpoint: EpochCheckpoint | None, epoch: int) -> None:
        def keep(directory: Path | None) -> None:
            self.reports.append(dict(metrics))
            if directory is not None and self.checkpoints_to is not None:
                shutil.copytree(directory, self.checkpoints_to / f"epoch_{epoch:04d}")

        _write_then(metrics, checkpoint, keep)

    def poll(self) -> None:
        pass

    def finish(self) -> None:
        pass


class TrainSession:
    def __init__(self, fsdp: FsdpSpec | None = None) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            # Before the first collective on this process group's NCCL communicator: otherwise every
            # rank may open it on GPU 0 and FSDP's first all-gather hangs (Ray issue #57860).
            torch.cuda.set_device(self.device)
        self.fsdp = fsdp or FsdpSpec()  # how a sharded trial shards

    def wrap(self, model: nn.Module, shard_blocks: Sequence[nn.Module] = ()) -> nn.Module:
        import ray.train.torch

        if shard_blocks:
            return shard(model, shard_blocks, self.fsdp, self.device)
        return ray.train.torch.prepare_model(model)

    def stream(self, split: str, build: Callable[[], Any]) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(split)  # the trial driver built it (search/trainable.py)

    def worker_nodes(self) -> list[str]:
        """Each rank's node, in rank order (a collective: every rank calls it)."""
        import torch.distributed as dist

        nodes: list[Any] = [None] * self.world_size
        dist.all_gather_object(nodes, node_id())
        return [str(n) for n in nodes]

    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        import ray.train

        return as_directory(ray.train.get_checkpoint())

    def resumes(self) -> bool:
        import ray.train

        return ray.train.get_checkpoint() is not None

    def report(self, metrics: dict[str, Any], checkpoint: EpochCheckpoint | None, epoch: int) -> None:
        import ray.train

        def send(directory: Path | None) -> None:
            on_storage = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
            ray.train.report(
                metrics, checkpoint=on_storage, checkpoint_dir_name=CheckpointLayout.epoch_dirname(epoch)
            )

        # Every rank reports (it is a barrier); rank 0 carries the checkpoint, or each rank its
        # shards (Ray Train merges their files into one checkpoint directory).
        _write_then(metrics, checkpoint, send)

    def poll(self) -> None:
        pass

    def finish(self) -> None:
        pass
