"""Sharded training (PyTorch FSDP2) on a Ray Train worker group.

`shard` applies `fully_shard` to each block of the backbone (the model source's layer map), then to
the whole model: each worker holds 1/N of every parameter, gradient and optimizer state, and gathers
one block's parameters at a time for its forward and backward passes. What trains is fixed before
(the strategy sets `requires_grad` first): frozen blocks shard too, and get no gradients. Parameter
names do not change, so the optimizer's layer-wise groups are rebuilt by name after sharding
(`Prepared.optimizer_groups`).

On GPUs the gathered parameters are bf16 and gradients are reduced in fp32 (`MixedPrecisionPolicy`);
the sharded parameters, and AdamW's state, stay fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tlsearch.spec.model import FsdpSpec

NONE, DDP, FSDP = "none", "ddp", "fsdp"  # what a trial records as its `parallelism`


def shard(
    model: nn.Module, blocks: Sequence[nn.Module], options: FsdpSpec, device: torch.device
) -> nn.Module:
    """`model` sharded in place over the default process group (one FSDP unit per block in `blocks`,
    the rest in the root's unit); returns it."""
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    on_gpu = device.type == "cuda"
    precision = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if on_gpu
        else MixedPrecisionPolicy()
    )
    offload = CPUOffloadPolicy(pin_memory=on_gpu) if options.cpu_offload else OffloadPolicy()
    if not options.cpu_offload:
        model.to(device)  # sharded where it lies: on the device
    for module in (*blocks, model):
        fully_shard(
            module,
            reshard_after_forward=options.reshard_after_forward,
            mp_policy=precision,
            offload_policy=offload,
            shard_placement_fn=_placement,
        )
    return model


def _placement(param: nn.Parameter) -> Any:
    """Where a parameter is cut: FSDP2's default, its first dimension, unless that is shorter than
    the worker count (a (1, n) scaling vector of IA3, a 2-class head's bias would sit on one rank
    whole): then its longest dimension."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    if param.ndim == 0 or param.shape[0] >= dist.get_world_size():
        return None
    return Shard(max(range(param.ndim), key=lambda dim: param.shape[dim]))


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
