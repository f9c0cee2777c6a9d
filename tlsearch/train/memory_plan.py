"""What a trial holds per device, data parallel or sharded, and which `parallelism: auto` picks.

Per device, for the trial's prepared model (what trains fixed by its strategy) at its batch size:
- parameters: every parameter (sharded: 1/N of them, plus the largest block gathered whole and the
  next one prefetched; in bf16 on GPUs);
- gradients: one fp32 gradient per trainable parameter (DDP: a second copy in its reduction buckets;
  sharded: 1/N);
- optimizer: AdamW's two fp32 moments per trainable parameter (sharded: 1/N);
- activations: the tensors autograd keeps for the backward pass, counted by running the model once on
  the meta device with `saved_tensors_hooks` (shapes only, no memory, no compute) at the trial's batch
  size, with text at `max_length` (batches pad to their longest row: an upper bound); bf16 on GPUs;
- working memory: what one block computes on the way, kept or not (its temporaries in the forward,
  the gradients of its activations in the backward): the most any one block would save were all of
  it trained, counted in the same meta pass. Frozen blocks keep nothing, but they still compute.

`auto` picks DDP where its total fits `DEVICE_FRACTION` of the device's memory, FSDP where it does not
(and DDP on CPUs, where host memory is the limit and nothing gains from sharding it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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
    working: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.working

    def describe(self) -> str:
        parts = ", ".join(
            f"{name} {size(getattr(self, name))}"
            for name in ("parameters", "gradients", "optimizer", "activations", "working")
        )
        return f"{size(self.total)} ({parts})"


@dataclass(frozen=True)
class Activations:
    """Bytes of one training forward's activations (`count_activations`)."""

    saved: int  # what autograd keeps for the backward pass, with the strategy's `requires_grad`
    largest_block: int  # the most one block keeps were all of it trained: its working memory


def size(n_bytes: int) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"


def estimate(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    activations: Activations,
    *,
    workers: int,
    parallelism: str,
    on_gpu: bool,
) -> MemoryEstimate:
    """The per-device estimate of training `model` (its `requires_grad` as the strategy set them) on
    `workers` workers under `parallelism` (none, ddp, fsdp); `activations`: `count_activations` at
    the trial's batch size."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in params)
    # Autocast keeps fp32 weights and computes in bf16: about half of what autograd saves is bf16.
    saved, working = activations.saved, activations.largest_block
    if on_gpu:
        saved, working = saved // 2, working // 2
    if parallelism != FSDP:
        gradient_copies = 2 if parallelism == DDP else 1  # DDP's reduction buckets
        return MemoryEstimate(
            weights, gradient_copies * 4 * trainable, ADAM_MOMENTS * 4 * trainable, saved, working
        )
    gathered_bytes = 2 if on_gpu else 4  # MixedPrecisionPolicy gathers bf16 parameters
    largest_block = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    return MemoryEstimate(
        weights // workers + 2 * largest_block * gathered_bytes,
        4 * trainable // workers,
        ADAM_MOMENTS * 4 * trainable // workers,
        saved,
        working,
    )


def count_activations(
    model: nn.Module, source: ModelSource, batch: Any, blocks: Sequence[nn.Module], *, on_gpu: bool
) -> Activations:
    """Two training forwards of `batch` through `model` as the strategy prepared it (both may be on
    the meta device: shapes only, no memory, no compute): one counts what autograd saves with the
    strategy's `requires_grad`; one, every parameter briefly trainable so that frozen blocks show
    what they compute, what each block would save. The parameters, which autograd keeps too, are
    not counted."""
    params = list(model.parameters())
    trains = [p.requires_grad for p in params]
    was_training = model.training
    model.train()
    try:
        saved = sum(_saved_bytes(model, source, batch, blocks, on_gpu).values())
        for p in params:
            p.requires_grad_(True)
        per_block = _saved_bytes(model, source, batch, blocks, on_gpu)
    finally:
        for p, flag in zip(params, trains, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    per_block.pop(None, 0)  # outside every block: embeddings, the head
    return Activations(saved, max(per_block.values(), default=0))


def _saved_bytes(
    model: nn.Module, source: ModelSource, batch: Any, blocks: Sequence[nn.Module], on_gpu: bool
) -> dict[int | None, int]:
    """Bytes autograd saves in one forward, by the index of the block running when it saves them."""
    own = {id(p) for p in model.parameters()}
    seen: dict[int, tuple[int, int | None]] = {}
    current: list[int | None] = [None]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in own and id(base) not in seen:  # views of one tensor count once
            seen[id(base)] = (base.numel() * base.element_size(), current[0])
        return tensor

    def entering(index: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            current[0] = index

        return hook

    def leaving(*_: Any) -> None:
        current[0] = None

    handles = []
    for index, block in enumerate(blocks):
        handles += [block.register_forward_pre_hook(entering(index)), block.register_forward_hook(leaving)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), _FusedAttention(on_gpu):
            source.logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    by_block: dict[int | None, int] = {}
    for n_bytes, at_block in seen.values():
        by_block[at_block] = by_block.get(at_block, 0) + n_bytes
    return by_block


class _FusedAttention(TorchFunctionMode):
    """On the meta device `scaled_dot_product_attention` takes its math path, which saves the whole
    attention matrix for the backward pass; GPUs run a fused kernel (flash or memory-efficient) that
    saves only its output and log-sum-exp, and so do CPUs where no attention dropout is drawn (their
    fused kernel has none). Count what the device's kernel saves: the fused one on meta tensors."""

    def __init__(self, on_gpu: bool) -> None:
        super().__init__()
        self.on_gpu = on_gpu

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is nn.functional.scaled_dot_product_attention and not kwargs.get("enable_gqa"):
            named = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:], strict=False))
            named.update(kwargs)
            query, key, value = args[:3]
            fused = self.on_gpu or not named.get("dropout_p", 0.0)
            if fused and query.device.type == "meta" and query.dim() == 4:
                output, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    query,
                    key,
                    value,
                    named.get("dropout_p", 0.0),
                    named.get("is_causal", False),
                    attn_mask=named.get("attn_mask"),
                    scale=named.get("scale"),
                )
                return output
        return func(*args, **kwargs)


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
    model_spec: ModelSpec,
    num_classes: int,
    config: TrialConfig[Any],
    *,
    workers: int,
    on_gpu: bool,
    parallelisms: Sequence[str] = (DDP, FSDP),
) -> tuple[MemoryEstimate, ...]:
    """The estimates per device for a trial of `config` under each of `parallelisms`, from its model
    built on the meta device (no weights read, nothing allocated)."""
    from tlsearch.models.sources import build_model
    from tlsearch.strategies.base import prepare

    loaded = build_model(model_spec, num_classes, weights=False)
    prepared = prepare(loaded, config)
    text = model_spec.task == "text-classification"
    batch = meta_batch(loaded, config.common.batch_size, model_spec.max_length if text else None)
    blocks = [loaded.model.get_submodule(prefix) for prefix in loaded.layers.block_prefixes]
    activations = count_activations(prepared.model, loaded.source, batch, blocks, on_gpu=on_gpu)
    return tuple(
        estimate(prepared.model, blocks, activations, workers=workers, parallelism=way, on_gpu=on_gpu)
        for way in parallelisms
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
