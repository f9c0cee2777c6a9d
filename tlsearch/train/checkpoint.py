"""One epoch's checkpoint, taken between steps and written when the session says.

A checkpoint holds what the strategy saves of the model (its trainable weights: tlsearch.strategies),
the optimizer, schedule and RNG state to go on from (`STATE_FILE`), and `META_FILE` (the trial, its
configuration, the epoch's metrics). The loop takes one at each epoch's end; the session writes it:
at once (Ray Train workers, a local session), or, for a single-worker Tune trial, on a thread of its
own while the next epoch trains (tlsearch.train.session). `detached` makes the second safe: it copies
what the next steps change (trainable weights, AdamW's moments) to host memory first.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tlsearch.strategies import Prepared

STATE_FILE = "training_state.pt"
META_FILE = "meta.json"


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
            tensors=prepared.checkpoint_tensors(prepared.model),
            state={
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **state,
            },
            meta=meta,
        )

    def detached(self) -> EpochCheckpoint:
        """The same checkpoint in host memory, no longer tied to tensors that training changes."""
        return replace(self, tensors=host_copy(self.tensors), state=host_copy(self.state))

    def write(self, directory: Path) -> float:
        """Writes the files into the (empty) `directory`; returns the seconds it took."""
        started = time.time()
        self.prepared.write_checkpoint(self.prepared.model, self.tensors, directory)
        torch.save(self.state, directory / STATE_FILE)
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
        return time.time() - started


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / META_FILE).read_text())
