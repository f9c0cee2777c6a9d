"""What a trial holds per device, data parallel or sharded, and which `parallelism: auto` picks.

Per device, for the trial's prepared model (what trains fixed by its strategy) at its batch size:
- parameters: every parameter (sharded: 1/N of them, plus the largest block gathered whole and the
  next one prefetched; in bf16 on GPUs);
- gradients: one fp32 gradient per trainable parameter (DDP: a second copy in its reduction buckets;
  sharded: 1/N);
- optimizer: AdamW's two fp32 moments per trainable parameter (sharded: 1/N);
- activations: the tensors autograd keeps for the backward pass, counted by running the model once on
  the meta device with `saved_tensors_hooks` (shapes only, no memory, no compute) at the trial's batch
  size, with text at `max_length` (batches pad to their longest row: an upper bound); bf16 on GPUs.

`auto` picks DDP where its total fits `DEVICE_FRACTION` of the device's memory, FSDP where it does not
(and DDP on CPUs, where host memory is the limit and nothing gains from sharding it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlsearch.models.sources import LoadedModel, ModelSource
from tlsearch.space import TrialConfig
from tlsearch.spec.model import ModelSpec, Spec
from tlsearch.spec.strategy import STRATEGIES
from tlsearch.train.sharding import DDP, FSDP

DEVICE_FRACTION = 0.85  # of a device's memory: the rest for the allocator's fragmentation, CUDA context
ADAM_MOMENTS = 2  # fp32 tensors AdamW keeps per trainable parameter
GIB = 2**30
# The head's size when the data's labels are not read yet (`validate`): a few classes weigh nothing
# beside a backbone.
NUM_CLASSES_FOR_PLAN = 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one device holds while a trial trains."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = ", ".join(
            f"{name} {size(getattr(self, name))}"
            for name in ("parameters", "gradients", "optimizer", "activations")
        )
        return f"{size(self.total)} ({parts})"


def size(n_bytes: int) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"


def estimate(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    activation_bytes: int,
    *,
    workers: int,
    parallelism: str,
    on_gpu: bool,
) -> MemoryEstimate:
    """The per-device estimate of training `model` (its `requires_grad` as the strategy set them) on
    `workers` workers under `parallelism` (none, ddp, fsdp); `activation_bytes`:
    `saved_activation_bytes` at the trial's batch size."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in params)
    # Autocast keeps fp32 weights and computes in bf16: about half of what autograd saves is bf16.
    activations = activation_bytes // 2 if on_gpu else activation_bytes
    if parallelism != FSDP:
        gradient_copies = 2 if parallelism == DDP else 1  # DDP's reduction buckets
        return MemoryEstimate(
            weights, gradient_copies * 4 * trainable, ADAM_MOMENTS * 4 * trainable, activations
        )
    gathered_bytes = 2 if on_gpu else 4  # MixedPrecisionPolicy gathers bf16 parameters
    largest_block = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    return MemoryEstimate(
        weights // workers + 2 * largest_block * gathered_bytes,
        4 * trainable // workers,
        ADAM_MOMENTS * 4 * trainable // workers,
        activations,
    )


def saved_activation_bytes(model: nn.Module, source: ModelSource, batch: Any) -> int:
    """Bytes autograd keeps for the backward pass of one training forward of `batch` through `model`
    as the strategy prepared it (both may be on the meta device); the parameters, which it keeps
    too, not counted."""
    own = {id(p) for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in own:
            seen[id(base)] = base.numel() * base.element_size()  # views of one tensor count once
        return tensor

    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            source.logits(model, batch)
    finally:
        model.train(was_training)
    return sum(seen.values())


def meta_batch(loaded: LoadedModel, batch_size: int, max_length: int | None) -> Any:
    """A training batch of the model's input shape on the meta device (text at `max_length`)."""
    with torch.device("meta"):
        if max_length is not None:
            # No attention mask: the model would read it (is anything padded?), which meta tensors
            # cannot answer; a full-length batch pads nothing anyway.
            return {"input_ids": torch.zeros((batch_size, max_length), dtype=torch.long)}
        return torch.zeros((batch_size, *loaded.preprocessing["input_size"]))


def choose_sharding(ddp: MemoryEstimate, device: torch.device) -> bool:
    """`auto`: shard where the DDP estimate exceeds DEVICE_FRACTION of this GPU's memory."""
    if device.type != "cuda":
        return False
    _, capacity = torch.cuda.mem_get_info(device)
    return ddp.total > DEVICE_FRACTION * capacity


def plan(
    model_spec: ModelSpec, num_classes: int, config: TrialConfig[Any], *, workers: int, on_gpu: bool
) -> tuple[MemoryEstimate, MemoryEstimate]:
    """(DDP, FSDP) estimates per device for a trial of `config`, from its model built on the meta
    device (no weights read, nothing allocated)."""
    from tlsearch.models.sources import build_model
    from tlsearch.strategies.base import prepare

    loaded = build_model(model_spec, num_classes, weights=False)
    prepared = prepare(loaded, config)
    text = model_spec.task == "text-classification"
    batch = meta_batch(loaded, config.common.batch_size, model_spec.max_length if text else None)
    activations = saved_activation_bytes(prepared.model, loaded.source, batch)
    blocks = [loaded.model.get_submodule(prefix) for prefix in loaded.layers.block_prefixes]
    return tuple(  # type: ignore[return-value]
        estimate(prepared.model, blocks, activations, workers=workers, parallelism=way, on_gpu=on_gpu)
        for way in (DDP, FSDP)
    )


def plan_lines(spec: Spec) -> list[str]:
    """Per strategy, the DDP and FSDP estimates per device of a multi-worker search's trials at the
    strategy's preferred knobs and the largest batch size searched (`tlsearch validate` prints them),
    and which `auto` would pick on this machine's GPU, if it has one."""
    from tlsearch.space import build_space

    space = build_space(spec)
    batch = dict(space.common)["batch_size"]
    largest = max(batch.choices) if batch.choices else batch.high
    workers, on_gpu = spec.resources.workers_per_trial, torch.cuda.is_available()
    device = f"on this machine's GPU ({torch.cuda.get_device_name()})" if on_gpu else "on a GPU"
    lines = [
        f"memory per device, {workers} workers, batch size {largest}"
        f"{', bf16 on GPU' if on_gpu else ''} (`auto` shards where DDP exceeds "
        f"{DEVICE_FRACTION:.0%} of a device {device}):"
    ]
    for strategy in space.strategy_names():
        config = TrialConfig.parse(space.default_point(strategy, {"batch_size": largest}))
        ddp, fsdp = plan(spec.model, NUM_CLASSES_FOR_PLAN, config, workers=workers, on_gpu=on_gpu)
        pick = ""
        if on_gpu:
            pick = " -> fsdp" if choose_sharding(ddp, torch.device("cuda")) else " -> ddp"
        reason = STRATEGIES.get(strategy).not_sharded_because
        sharded = f"not sharded: {reason}" if reason else fsdp.describe()
        lines.append(f"  {strategy:<14} ddp {ddp.describe()}; fsdp {sharded}{pick}")
    return lines
