"""Checkpoints, in one place: what one holds, taking it, writing it, restoring it, and where a search
keeps them.

A checkpoint holds what the strategy saves of the model (its `Prepared.checkpoint` format:
tlsearch.strategies.formats, safetensors either way), the optimizer, schedule and RNG state to go on
from (`STATE_FILE`, read back with `torch.load(weights_only=True)`), and `META_FILE` (the trial, its
configuration, the epoch's metrics). The loop takes one at each epoch's end; the session writes it:
at once (Ray Train workers, a local session), or, for a single-worker Tune trial, on a thread of its
own while the next epoch trains (tlsearch.train.session). `detached` makes the second safe: it copies
what the next steps change (trainable weights, AdamW's moments) to host memory first.

A sharded (FSDP2) trial's checkpoint holds no whole tensor anywhere: every worker writes its shards
of the saved weights (`MODEL_SHARDS`) and of the optimizer state (`OPTIMIZER_SHARDS`) with
torch.distributed.checkpoint in safetensors files (DCP's Hugging Face storage, each file naming its
shard's offsets: no pickle), and rank 0 the rest; Ray Train merges the workers' files into one
checkpoint directory. `restore` puts the shards back into a sharded trial on any number of workers,
`load_weights` into an unsharded model too (finalize, export), since DCP reshards on reading.

Where they live (`CheckpointLayout`): a single-worker trial reports to Tune, which keeps them as
`<experiment>/trial_<id>/checkpoint_000000/`, ...; a multi-worker trial is one Ray Train run per
trial, `<experiment>/train/<search>-<id>/checkpoint_epoch_0001/`, ... The experiment directory is the
run directory, or `<checkpoint_storage>/<search>` (a path or a pyarrow.fs URI).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tlsearch.spec import Spec
    from tlsearch.strategies.base import Prepared

STATE_FILE = "training_state.pt"
META_FILE = "meta.json"
MODEL_SHARDS = "model_shards"  # a sharded trial's saved weights, one safetensors file per worker
OPTIMIZER_SHARDS = "optimizer_shards"  # its optimizer's tensors, the same way
EPOCH_DIR_PREFIX = "checkpoint_epoch_"  # a multi-worker trial's checkpoint directories
# Ray Train's record of the checkpoints it keeps; its name is internal to Ray (a test checks it).
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"


def _epoch_of(dirname: str) -> int | None:
    digits = dirname.removeprefix(EPOCH_DIR_PREFIX)
    return int(digits) if digits != dirname and digits.isdigit() else None


def host_copy(value: Any) -> Any:
    """`value` with every tensor in it (through dicts, lists and tuples) copied to host memory;
    contiguous, as safetensors writes them."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(v) for v in value)
    return copy.deepcopy(value)


@dataclass(frozen=True)
class EpochCheckpoint:
    prepared: Prepared  # its model: the names the strategy saves, cached features or not
    tensors: dict[str, torch.Tensor]  # what the strategy saves of it: the model's own, until `detached`
    state: dict[str, Any]  # optimizer, scheduler, RNG, epoch, ...: torch.save'd as STATE_FILE
    meta: dict[str, Any]
    # A sharded trial's: this worker's shards of the optimizer state (by DCP's flattened names); the
    # optimizer's other values (learning rates, betas, ...) are in `state`.
    optimizer_tensors: dict[str, torch.Tensor] | None = None
    # False on a sharded trial's other ranks: rank 0 writes STATE_FILE and META_FILE.
    writes_state: bool = True

    @classmethod
    def take(
        cls,
        prepared: Prepared,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        meta: dict[str, Any],
        **state: Any,
    ) -> EpochCheckpoint:
        """The checkpoint as training leaves it now (the live tensors); `state` goes into STATE_FILE."""
        return cls(
            prepared=prepared,
            tensors=prepared.checkpoint.tensors(prepared.model),
            state={
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **state,
            },
            meta=meta,
        )

    @classmethod
    def take_sharded(
        cls,
        prepared: Prepared,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        meta: dict[str, Any],
        rank: int,
        **state: Any,
    ) -> EpochCheckpoint:
        """This worker's part of a sharded trial's checkpoint (every rank takes one)."""
        optimizer_tensors, optimizer_values = _flat_optimizer_state(prepared, optimizer)
        return cls(
            prepared=prepared,
            tensors=prepared.checkpoint.tensors(prepared.model),
            state={
                "optimizer_values": optimizer_values,
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **state,
            },
            meta=meta,
            optimizer_tensors=optimizer_tensors,
            writes_state=rank == 0,
        )

    def detached(self) -> EpochCheckpoint:
        """The same checkpoint in host memory, no longer tied to tensors that training changes."""
        return replace(self, tensors=host_copy(self.tensors), state=host_copy(self.state))

    def write(self, directory: Path) -> float:
        """Writes the files into the (empty) `directory`; returns the seconds it took."""
        started = time.time()
        if self.optimizer_tensors is not None:  # a collective: every rank writes its shards
            _save_shards(self.tensors, directory / MODEL_SHARDS)
            _save_shards(self.optimizer_tensors, directory / OPTIMIZER_SHARDS)
        else:
            self.prepared.checkpoint.write(self.prepared.model, self.tensors, directory)
        if self.writes_state:
            torch.save(self.state, directory / STATE_FILE)
            (directory / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
        return time.time() - started


def _flat_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # One entry per tensor ("state.<parameter>.exp_avg"): DCP saves and reshards them by name.
    return StateDictOptions(flatten_optimizer_state_dict=True)


def _flat_optimizer_state(
    prepared: Prepared, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A sharded model's optimizer state by parameter name: (its tensors, each rank its shards; the
    rest: learning rates, betas, ...). An optimizer that has not stepped yet gets its state first."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    flat: dict[str, Any] = dict(get_optimizer_state_dict(prepared.model, optimizer, options=_flat_options()))
    tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: v for k, v in flat.items() if k not in tensors}


def _save_shards(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    directory.mkdir()
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=True))


def _load_shards(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """Reads a sharded checkpoint's tensors into `tensors` in place, whatever their sharding now (a
    sharded model on any number of workers, or a whole one in a single process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(directory)))


def is_sharded_checkpoint(directory: Path) -> bool:
    return (directory / MODEL_SHARDS).is_dir()


def load_weights(prepared: Prepared, directory: Path) -> None:
    """Puts a checkpoint's weights into a freshly prepared model, sharded or not, from a checkpoint
    written sharded or not."""
    if is_sharded_checkpoint(directory):
        with torch.no_grad():
            _load_shards(prepared.checkpoint.tensors(prepared.model), directory / MODEL_SHARDS)
    else:
        prepared.checkpoint.load(prepared.model, directory)


@dataclass(frozen=True)
class Restored:
    """Where a restored checkpoint leaves the trial."""

    epoch: int  # epochs done
    wall_s: float  # the trial's wall seconds up to that epoch
    inherited_device_s: float  # device-seconds of a trial it continued (ASHA's promotion)
    meta: dict[str, Any]


def restore(
    directory: Path,
    prepared: Prepared,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Restored:
    """Puts a checkpoint back into a freshly prepared trial: model weights (safetensors), optimizer,
    schedule and the RNG state the next epoch draws from."""
    load_weights(prepared, directory)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    if is_sharded_checkpoint(directory):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        # The optimizer's own state as the template that DCP fills in place, then its other values.
        tensors, _ = _flat_optimizer_state(prepared, optimizer)
        _load_shards(tensors, directory / OPTIMIZER_SHARDS)
        flat = {**tensors, **state["optimizer_values"]}
        set_optimizer_state_dict(prepared.model, optimizer, flat, options=_flat_options())
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return Restored(
        int(state["epoch"]),
        float(state["wall_s"]),
        float(state.get("inherited_device_s", 0.0)),
        read_meta(directory),
    )


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / META_FILE).read_text())


def read_meta_at(filesystem: Any, path: str) -> dict[str, Any] | None:
    """The META_FILE of the checkpoint at `path` on a pyarrow filesystem (local, S3, GCS), or None
    where it is missing or unreadable. Written last: a checkpoint that has it is whole."""
    try:
        with filesystem.open_input_stream(f"{path}/{META_FILE}") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


@contextlib.contextmanager
def as_directory(checkpoint: Any) -> Iterator[Path | None]:
    """A Ray checkpoint (Tune's or Ray Train's) as a local directory while the `with` lasts; None for None."""
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

    with as_directory(ray.train.Checkpoint(location)) as directory:
        yield directory


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a search's trials keep their checkpoints (the module docstring has the trees)."""

    experiment_dir: str  # a path or a URI
    search: str  # the search's name
    multi_worker: bool  # trials run on Ray Train workers

    @staticmethod
    def trial_dirname(trial_id: str) -> str:
        """Tune's directory of a trial (instead of Tune's default name with every parameter in it)."""
        return f"trial_{trial_id}"

    @staticmethod
    def epoch_dirname(epoch: int) -> str:
        """A Ray Train checkpoint's directory name (Tune numbers its own)."""
        return f"{EPOCH_DIR_PREFIX}{epoch:04d}"

    def train_run(self, trial_id: str) -> tuple[str, str]:
        """(storage_path, name) of a multi-worker trial's Ray Train run. A `fit()` with an existing
        (storage, name) resumes that run: one name per trial, so a retried trial continues from its own
        checkpoint and never from another's."""
        return f"{self.experiment_dir}/train", f"{self.search}-{trial_id}"

    def trial_checkpoints(self, trial_id: str) -> str:
        """The directory holding a trial's checkpoint directories."""
        if self.multi_worker:
            return "/".join(self.train_run(trial_id))
        return f"{self.experiment_dir}/{self.trial_dirname(trial_id)}"

    def _listing(self, trial_id: str) -> tuple[Any, str, list[str]] | None:
        """(filesystem, path, checkpoint directory names, the latest first) of a trial, or None when
        its storage cannot be read."""
        import pyarrow.fs

        parent = self.trial_checkpoints(trial_id)
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
        return filesystem, path, names

    def remove_unreported(self, trial_id: str, last_reported_epoch: int) -> list[str]:
        """Deletes an ended multi-worker trial's checkpoints that Tune never saw, and returns their names.
        Ray Train workers write a checkpoint before its report reaches the controller, which takes one
        report at a time, and Tune's answer waits for the driver: on short epochs a trial ASHA stops
        at epoch N has already written N+1 and N+2, which no checkpoint manager tracks or deletes. A
        checkpoint Ray Train registered (named in its snapshot) is kept whatever its epoch."""
        listed = self._listing(trial_id) if self.multi_worker else None
        if listed is None:
            return []
        filesystem, path, names = listed
        try:
            with filesystem.open_input_stream(f"{path}/{TRAIN_SNAPSHOT}") as f:
                registered = f.read().decode()
        except (OSError, ValueError):
            registered = ""  # no checkpoint registered yet
        removed = []
        for name in names:
            epoch = _epoch_of(name)
            if epoch is None or epoch <= last_reported_epoch or f'"{name}"' in registered:
                continue
            try:
                filesystem.delete_dir(f"{path}/{name}")
            except OSError:
                continue  # gone already (deleted by Ray Train, or by an earlier sweep)
            removed.append(name)
        return removed

    def find(self, trial_id: str, epoch: int) -> str | None:
        """Trial `trial_id`'s checkpoint of `epoch` (a path or a URI), or None. Tune and Ray Train keep a
        trial's latest checkpoint whatever its score (checkpoints_to_keep), and the epoch ASHA stopped a
        trial at is its latest."""
        listed = self._listing(trial_id)
        if listed is None:
            return None
        filesystem, path, names = listed
        parent = self.trial_checkpoints(trial_id)
        for name in names:
            meta = read_meta_at(filesystem, f"{path}/{name}")
            if meta is not None and meta.get("epoch") == epoch:
                return f"{parent}/{name}"
        return None


def checkpoint_retention(spec: Spec) -> dict[str, Any]:
    """The arguments of Tune's and Ray Train's CheckpointConfig for `training.checkpoints_to_keep`.
    Ray keeps `num_to_keep` checkpoints by score *and* the latest whatever its score, so one fewer by
    score keeps at most `checkpoints_to_keep` on disk, the best and the latest among them (the latest
    is what a trial ASHA stopped continues from when promoted)."""
    from tlsearch.spec.objective import primary

    objective = primary(spec.search.objectives)
    return {
        "num_to_keep": spec.training.checkpoints_to_keep - 1,
        "checkpoint_score_attribute": objective.metric,
        "checkpoint_score_order": objective.mode,
    }
