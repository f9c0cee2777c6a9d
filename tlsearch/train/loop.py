"""The training loop: one readable function, the same on every worker and in both runners.

`train_trial` = `setup_training` (model, strategy, loaders, fused AdamW with the strategy's parameter
groups, warmup + cosine) and, per epoch, `train_epoch` (bf16 autocast on GPU, gradient clipping, no
host synchronisation per step), evaluation on the full validation set (predictions gathered across
workers), every metric reported with a rank-0 checkpoint of the trainable weights.
benchmarks/throughput.py times `setup_training` + `train_epoch` against a plain PyTorch loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from tlsearch.data.augmentation import training_transform
from tlsearch.data.datasets import ImageDataset, Split, TextDataset, load_split
from tlsearch.data.streamed import RAY_DATA, StreamedBatches, parquet_rows, split_targets, streamed_split
from tlsearch.models.layers import is_convolutional
from tlsearch.models.sources import LoadedModel, ModelSource
from tlsearch.spec.model import ModelSpec
from tlsearch.spec.strategy import STRATEGIES, CommonKnobs
from tlsearch.strategies.base import Prepared, prepare
from tlsearch.train import process_cache
from tlsearch.train.batches import ToDevice
from tlsearch.train.checkpoint import EpochCheckpoint, open_checkpoint, restore
from tlsearch.train.features import FeatureCacheUse, use_feature_cache
from tlsearch.train.head_probe import HeadProbe, probe_head
from tlsearch.train.host_memory import configure_host_memory, resident_gib
from tlsearch.train.inputs import RunContext, TrialInputs
from tlsearch.train.losses import TrainingLoss
from tlsearch.train.memory_plan import choose_sharding, plan
from tlsearch.train.metrics import classification_metrics
from tlsearch.train.session import Session, node_id, node_ip
from tlsearch.train.sharding import DDP, FSDP, NONE, is_sharded


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the configuration is unusable."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_datasets(inputs: TrialInputs, loaded: LoadedModel) -> tuple[Any, Any]:
    files, spec = inputs.run.data, inputs.run.spec
    train, validation = load_split(files, "train"), load_split(files, "validation")
    return (
        split_dataset(train, files.input_kind, spec.model, loaded),
        split_dataset(validation, files.input_kind, spec.model, loaded),
    )


def split_dataset(split: Split, input_kind: str, model: ModelSpec, loaded: LoadedModel) -> Any:
    """A split's rows as the loop feeds them to `loaded` (each data set has its own `collate`)."""
    if input_kind == "text":
        return TextDataset(split, loaded.preprocessing, model.max_length)
    from timm.data import create_transform

    # Deterministic preprocessing (resize, centre crop) for training too: no augmentation keeps
    # trials comparable and makes a frozen prefix's features reusable. uint8 pixels: the device
    # normalises them (tlsearch/train/batches.py).
    transform = create_transform(**loaded.preprocessing, is_training=False, use_prefetcher=True)
    return ImageDataset(split, transform)


def _forward(model: nn.Module, batch: Any, to_device: ToDevice, source: ModelSource) -> torch.Tensor:
    """The logits of a loader's batch: the model source knows how its models (and their tails) take one."""
    return source.logits(model, to_device(batch))


def _collective_device() -> torch.device:
    """Where the process group's collectives take their tensors: the GPU for NCCL, else the host."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate each rank's rows on every rank (shards may differ in length by one)."""
    if world_size == 1:
        return tensor
    device = _collective_device()
    local = tensor.to(device)
    size = torch.tensor([local.shape[0]], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).cpu()


@dataclass
class Training:
    """Everything a trial's epochs use, built once by `setup_training`: the same objects whether the
    loop runs in a Tune trial actor, on Ray Train workers, or under a benchmark's stopwatch."""

    prepared: Prepared
    model: nn.Module  # wrapped for the session (DDP or sharded on several workers), compiled when asked
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[nn.Parameter]
    # Reshuffles the training rows each epoch (`set_epoch`): the loader's DistributedSampler, or
    # the training stream itself (data.loader: ray_data).
    sampler: DistributedSampler | StreamedBatches
    train_loader: DataLoader | StreamedBatches
    val_loader: DataLoader | StreamedBatches
    loss: TrainingLoss  # the common knobs' training loss (validation stays plain cross-entropy)
    mixup: Any  # timm's Mixup of the training batches (strategies.common.mixup), or None
    grad_clip_norm: float | None
    mixed_precision: bool  # bf16 autocast (on GPU)
    channels_last: bool  # image batches enter in the model's channels-last layout
    to_device: ToDevice  # a loader's batch onto the device (images normalised there)
    source: ModelSource  # feeds the model (or its tail) a batch (`_forward`)
    host_memory_kept: bool  # freed host memory stays in the process (tlsearch/train/host_memory.py)
    # What the feature cache did (tlsearch.train.features): the loaders then feed the model's tail
    # with cached features of its frozen prefix, and `model` is that tail.
    feature_cache: FeatureCacheUse
    # What `model` trains under: `fsdp` (sharded), `ddp`, or `none` (one process).
    parallelism: str = NONE
    head_probe: HeadProbe | None = None  # LP-FT's probe, run before the first epoch
    # Where a trial's start-up goes (benchmarks/trial_overhead.py): wall clock when this loop began
    # (a multi-worker trial's rank 0: after Ray Train started its workers), when the model was ready,
    # when the data was, and when the first training step began (its first batch in hand: the
    # step's own compute is training, not overhead).
    loop_started_at: float = 0.0
    model_ready: float = 0.0
    data_ready: float = 0.0
    first_step_at: float | None = None
    # The process's resident memory before this trial built anything: in a reused trial process,
    # what earlier trials left behind (the kept model and data included).
    rss_at_start_gib: float = 0.0
    # Called between steps: raises when a report still in flight failed or Tune stopped the trial
    # (Session.poll), so a stopped trial's thread ends within a step.
    poll: Callable[[], None] = lambda: None
    # The prepared model wrapped again for the session (gradual unfreezing changed what trains: DDP
    # registers the parameters that need gradients when it wraps).
    rewrap: Callable[[], nn.Module] | None = None
    # One row of the last training batch (streamed, sharded trials): the forward pass a rank runs
    # while another still evaluates (tlsearch.train.loop.evaluate).
    spare_row: Any = None

    def enter_epoch(self, epoch: int) -> None:
        """What trains in `epoch` (gradual unfreezing): the gradient-clipped set follows, and a
        multi-worker trial's DDP wrapper is rebuilt around the new set."""
        if not self.prepared.enter_epoch(epoch):
            return
        if self.rewrap is not None:
            self.model = self.rewrap()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.mixed_precision)


def batch_mixup(common: CommonKnobs, num_classes: int) -> Any:
    """timm's Mixup / CutMix (half the batches each) at the trial's alpha, with its label smoothing
    folded into the soft targets; None when `mixup` is 0."""
    if common.mixup <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=common.mixup,
        cutmix_alpha=common.mixup,
        switch_prob=0.5,
        label_smoothing=common.label_smoothing,
        num_classes=num_classes,
    )


def _even(inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup pairs each row with its mirror: an odd batch (the last of an epoch; the spec
    makes batch sizes even) leaves its last row out."""
    if target.shape[0] % 2:
        return inputs[:-1], target[:-1]
    return inputs, target


def use_channels_last(setting: str | bool, loaded: LoadedModel) -> bool:
    """`auto`: channels-last for convolutional networks (faster convolutions on GPUs and on CPUs:
    benchmarks/throughput.py measures it); a ViT's single patch-embedding convolution does not count."""
    if setting == "auto":
        return is_convolutional(loaded.model)
    return bool(setting)


def loader_workers(run: RunContext) -> int:
    """DataLoader processes per training worker: `training.loader_workers`, else none for text
    (tokenised up front) and one per CPU but the training process's own for images (decoded per item)."""
    workers = run.spec.training.loader_workers
    if workers is None:
        workers = 0 if run.data.input_kind == "text" else max(0, int(run.spec.resources.cpus_per_worker) - 1)
    return workers


def trains_sharded(inputs: TrialInputs, session: Session, blocks: list[nn.Module]) -> bool:
    """Whether a trial shards its model (FSDP2): `resources.parallelism`, for `auto` the memory plan
    (FSDP where DDP would not fit the GPU). Never on one worker, for a strategy that cannot (refused
    by name at validation), or for what holds no block (a head on cached features)."""
    run, config = inputs.run, inputs.config
    asked = run.spec.resources.parallelism
    if session.world_size == 1 or not blocks or STRATEGIES.get(config.strategy).not_sharded_because:
        return False
    if asked != "auto":
        return asked == FSDP
    if session.device.type != "cuda":
        return False
    ddp, _ = plan(run.spec.model, run.num_classes, config, workers=session.world_size, on_gpu=True)
    decision = [choose_sharding(ddp, session.device)]
    dist.broadcast_object_list(decision, src=0)  # one answer, should the ranks' devices differ
    return bool(decision[0])


def streamed_loaders(
    inputs: TrialInputs, session: Session, preprocessing: Any
) -> tuple[StreamedBatches, StreamedBatches]:
    """This rank's training and validation streams (data.loader: ray_data). A multi-worker trial's
    driver built the datasets and Ray Train divided them; one process builds them itself."""
    run, config, spec = inputs.run, inputs.config, inputs.run.spec
    kind = run.data.input_kind

    def build(split: str) -> Any:
        return streamed_split(run.data, split, spec.model, preprocessing, config.common.augmentation)

    train_rows = parquet_rows(run.data.train)
    train = StreamedBatches(
        session.stream("train", lambda: build("train")),
        config.common.batch_size,
        kind,
        shuffle_seed=spec.seed,
        # Ray Train gives each rank the same number of training rows (the rest is left out).
        rows_per_rank=train_rows // session.world_size,
    )
    validation = StreamedBatches(
        session.stream("validation", lambda: build("validation")), spec.training.eval_batch_size, kind
    )
    return train, validation


def setup_training(inputs: TrialInputs, session: Session) -> Training:
    """Model, strategy, loaders, optimizer and schedule of one trial, on the session's device."""
    run, config, spec = inputs.run, inputs.config, inputs.run.spec
    loop_started_at = time.time()
    seed_everything(spec.seed)
    rss_at_start_gib = resident_gib()
    # Before the model and the data take their memory.
    host_memory_kept = configure_host_memory(
        keep=spec.training.keep_host_memory, sharded=spec.resources.parallelism == FSDP
    )
    on_gpu = session.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    else:
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))

    # A reused trial process keeps the loaded model and the data sets (tlsearch/train/process_cache.py).
    loaded = process_cache.fresh_model(spec.model, run.num_classes, spec.seed)
    prepared = prepare(loaded, config)
    channels_last = use_channels_last(spec.training.channels_last, loaded)
    if channels_last:
        prepared.model.to(memory_format=torch.channels_last)  # before DDP: every rank's layout is the same

    model_ready = time.time()

    def trial_datasets() -> tuple[Any, Any]:  # (train, validation): each has its own `collate`
        key = process_cache.dataset_key(run.data, spec.model)
        train, validation = process_cache.datasets(key, lambda: build_datasets(inputs, loaded))
        if config.common.augmentation != "none":  # the same rows, augmented (validation never is)
            train = ImageDataset(
                train.split, training_transform(loaded.preprocessing, config.common.augmentation)
            )
        return train, validation

    train_set: Any
    val_set: Any
    workers = loader_workers(run)
    streamed = run.data.loader == RAY_DATA
    # LP-FT: the head alone first, unless a checkpoint (which holds the probed head) is restored.
    head_probe = None
    if prepared.head_probe_epochs and inputs.continues_from is None and not session.resumes():
        targets = trial_datasets()[0].targets
        head_probe = probe_head(
            inputs,
            loaded,
            prepared,
            session,
            trial_datasets,
            workers,
            TrainingLoss.of(config.common, targets, run.num_classes, session.device),
            warmup_cosine,
        )
    # A frozen prefix (linear probe, partial) runs once per search: train its tail on stored features.
    cache = use_feature_cache(inputs, loaded, prepared, session, trial_datasets, workers)
    if cache.tail is not None and cache.datasets is not None:
        (train_set, val_set), workers = cache.datasets, 0  # rows read from memory-mapped files
        channels_last = False  # batches are features, not images (the tail's weights keep their layout)
        trained = cache.tail.module
    else:
        trained = prepared.model

    # A sharded trial shards each block of what trains here (with cached features: the tail's).
    in_trained = set(trained.modules())
    blocks = [
        block
        for block in (loaded.model.get_submodule(prefix) for prefix in loaded.layers.block_prefixes)
        if block in in_trained
    ]
    shard_blocks = blocks if trains_sharded(inputs, session, blocks) else []

    def wrap() -> nn.Module:
        wrapped = session.wrap(trained, shard_blocks)
        if spec.training.compile:
            # In place: parameter names, checkpoints and the DDP wrapper stay as they are (a DDP module
            # compiled whole lets dynamo split its graph at the gradient buckets).
            wrapped.compile()
        return wrapped

    model = wrap()
    parallelism = FSDP if is_sharded(model) else DDP if session.world_size > 1 else NONE
    sampler: DistributedSampler[Any] | StreamedBatches
    train_loader: DataLoader[Any] | StreamedBatches
    val_loader: DataLoader[Any] | StreamedBatches
    if streamed:
        train_loader, val_loader = streamed_loaders(inputs, session, loaded.preprocessing)
        sampler, train_targets = train_loader, split_targets(run.data, "train")
    else:
        if cache.datasets is None:
            train_set, val_set = trial_datasets()

        sampler = DistributedSampler(
            train_set, num_replicas=session.world_size, rank=session.world_rank, shuffle=True, seed=spec.seed
        )
        train_loader = DataLoader(
            train_set,
            batch_size=config.common.batch_size,
            sampler=sampler,
            collate_fn=train_set.collate,
            num_workers=workers,
            pin_memory=on_gpu,
            persistent_workers=workers > 0,
            # The loaders' worker seeds come from their own generator, not the global one that
            # dropout draws from: dropout masks do not depend on how the data is loaded (cached or
            # not, workers or not).
            generator=torch.Generator().manual_seed(spec.seed),
        )
        # Each rank evaluates a disjoint shard; the metrics are computed on the gathered whole.
        val_shard = Subset(val_set, range(session.world_rank, len(val_set), session.world_size))
        val_loader = DataLoader(
            val_shard,
            batch_size=spec.training.eval_batch_size,
            collate_fn=val_set.collate,
            num_workers=workers,
            pin_memory=on_gpu,
            persistent_workers=workers > 0,
            # The loaders' worker seeds come from their own generator, not the global one that
            # dropout draws from: dropout masks do not depend on how the data is loaded (cached or
            # not, workers or not).
            generator=torch.Generator().manual_seed(spec.seed),
        )
        train_targets = train_set.targets

    # Fused AdamW on GPUs and CPUs alike: one kernel over all tensors (on a CPU 3-6x faster than
    # PyTorch's default per-tensor loop for MiniLM-L6's 22.7M parameters; benchmarks/throughput.py).
    optimizer = torch.optim.AdamW(prepared.optimizer_groups(model, trained), fused=True)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * spec.search.max_epochs
    warmup_steps = round(config.common.warmup_fraction * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
    return Training(
        prepared=prepared,
        model=model,
        device=session.device,
        optimizer=optimizer,
        scheduler=scheduler,
        trainable=[p for p in model.parameters() if p.requires_grad],
        sampler=sampler,
        train_loader=train_loader,
        val_loader=val_loader,
        loss=TrainingLoss.of(config.common, train_targets, run.num_classes, session.device),
        mixup=batch_mixup(config.common, run.num_classes),
        grad_clip_norm=spec.training.grad_clip_norm,
        mixed_precision=on_gpu,
        channels_last=channels_last,
        to_device=ToDevice(session.device, loaded.preprocessing, channels_last),
        source=loaded.source,
        host_memory_kept=host_memory_kept,
        feature_cache=cache,
        head_probe=head_probe,
        loop_started_at=loop_started_at,
        model_ready=model_ready,
        rss_at_start_gib=rss_at_start_gib,
        data_ready=time.time(),
        poll=session.poll,
        parallelism=parallelism,
        # Gradual unfreezing under DDP (it is refused sharded: tlsearch.spec.model._check_parallelism).
        rewrap=wrap if parallelism == DDP else None,
    )


def train_epoch(training: Training, epoch: int) -> tuple[torch.Tensor, int]:
    """One pass over this rank's training shard: (summed loss, on the device; samples seen).
    No host synchronisation inside: the caller reads the loss once per epoch (a per-step .item()
    would stall the GPU)."""
    t = training
    t.enter_epoch(epoch)
    t.sampler.set_epoch(epoch)
    t.prepared.train_mode(t.model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=t.device)
    seen, last = 0, None
    for batch, target in t.train_loader:
        t.poll()
        if t.mixup is not None and target.shape[0] < 2:
            continue  # nothing to mix a lone row with
        if t.first_step_at is None:
            t.first_step_at = time.time()
        target = target.to(t.device, non_blocking=True)
        with t.autocast():
            inputs = t.to_device(batch)
            if t.mixup is not None:
                inputs, target = t.mixup(*_even(inputs, target))  # soft targets
            loss = t.loss(t.source.logits(t.model, inputs).float(), target)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(t.trainable, t.grad_clip_norm)
        t.optimizer.step()
        t.scheduler.step()
        loss_sum += loss.detach().double() * target.shape[0]
        seen += target.shape[0]
        last = batch
    if seen and t.parallelism == FSDP and isinstance(t.val_loader, StreamedBatches):
        t.spare_row = _first_row(last)
    return loss_sum, seen


def _first_row(batch: Any) -> Any:
    """A loader's batch cut to its first row (a dict of tensors, or a tensor)."""
    if isinstance(batch, dict):
        return {key: value[:1] for key, value in batch.items()}
    return batch[:1]


@torch.no_grad()
def evaluate(training: Training, session: Session, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = training.model
    model.eval()
    streamed = isinstance(training.val_loader, StreamedBatches)
    # A sharded model's ranks must run as many forward passes (each gathers a block's parameters from
    # all ranks), but validation shards may differ by a batch: known before the first one, or for a
    # stream (whose shares Ray Data deals out as it reads) agreed on batch by batch.
    sharded = training.parallelism == FSDP
    missing = _missing_forward_passes(training) if sharded and not streamed else 0
    lockstep = sharded and streamed
    logits, targets = [], []
    batches = iter(training.val_loader)
    while True:
        item = next(batches, None)
        if lockstep and not _any_rank_has(item is not None):
            break
        if item is None:
            if not lockstep:
                break
            with training.autocast():  # others still evaluate: the same collectives, the output dropped
                _forward(model, training.spare_row, training.to_device, training.source)
            continue
        batch, target = item
        training.poll()
        with training.autocast():
            # Kept on the device until the end: one copy to the host instead of a stall per batch.
            logits.append(_forward(model, batch, training.to_device, training.source).float())
        targets.append(target)
    if missing:  # on the validation set's first row, the output dropped
        shard: Any = training.val_loader.dataset  # type: ignore[union-attr]  # a Subset (in memory)
        # Through a loader, as the set's own batches come (cached features are read batch-wise).
        one_row = DataLoader(Subset(shard.dataset, [0]), batch_size=1, collate_fn=shard.dataset.collate)
        batch, _ = next(iter(one_row))
        for _ in range(missing):
            with training.autocast():
                _forward(model, batch, training.to_device, training.source)
    # A rank may hold no validation rows at all (fewer rows than workers).
    local_logits = torch.cat(logits).cpu() if logits else torch.zeros((0, num_classes))
    local_targets = torch.cat(targets) if targets else torch.zeros((0,), dtype=torch.long)
    return _gather(local_logits, session.world_size), _gather(local_targets, session.world_size)


def _any_rank_has(mine: bool) -> bool:
    """Whether any rank of the process group passes True (every rank calls it)."""
    flag = torch.tensor([int(mine)], device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _missing_forward_passes(training: Training) -> int:
    """How many validation batches this rank has fewer than the rank with the most."""
    mine = len(training.val_loader)
    most = torch.tensor([mine], device=_collective_device())
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item()) - mine


def describe_trial(inputs: TrialInputs, training: Training) -> str:
    prepared = training.prepared
    on = {True: "on", False: "off"}
    lines = [
        f"[tlsearch] trial {inputs.trial_id}: {inputs.config.strategy} "
        f"{ {k: v for k, v in inputs.config.as_dict().items() if '/' in k} }",
        f"[tlsearch] trainable parameters: {prepared.trainable_params:,}",
        f"[tlsearch] on {training.device}: bf16 autocast {on[training.mixed_precision]}, "
        f"channels-last {on[training.channels_last]}, torch.compile {on[inputs.run.spec.training.compile]}, "
        f"freed host memory kept {on[training.host_memory_kept]}",
    ]
    for g in prepared.param_groups:
        lines.append(
            f"[tlsearch]   group {g.name:<20} {g.size:>12,} params  lr={g.lr:.3g}  wd={g.weight_decay:g}"
        )
    return "\n".join(lines)


def train_trial(inputs: TrialInputs, session: Session) -> None:
    run, config, spec = inputs.run, inputs.config, inputs.run.spec
    training = setup_training(inputs, session)
    prepared = training.prepared
    optimizer, scheduler = training.optimizer, training.scheduler

    start_epoch, wall_before, inherited_device_s = 0, 0.0, 0.0
    continued: dict[str, Any] | None = None  # meta.json of the trial this one continues
    # The trial's own checkpoint (a retry, a resumed search), else another trial's that it continues.
    with session.restore_dir() as own, open_checkpoint(None if own else inputs.continues_from) as other:
        checkpoint = own or other
        if checkpoint is not None:
            restored = restore(checkpoint, prepared, optimizer, scheduler)
            start_epoch, wall_before, inherited_device_s = (
                restored.epoch,
                restored.wall_s,
                restored.inherited_device_s,
            )
            if other is not None:
                continued = restored.meta
                # Its wall and device seconds go on from the other trial's (ASHA's time in device_s);
                # what this trial spent itself is device_s - inherited_device_s.
                inherited_device_s = float(continued["metrics"]["device_s"])
    resumed_at = inputs.started_at
    worker_nodes = session.worker_nodes()
    if session.world_rank == 0:
        print(describe_trial(inputs, training), flush=True)
        if continued is not None:
            print(
                f"[tlsearch] continues trial {continued['trial_id']} from its epoch {start_epoch} checkpoint",
                flush=True,
            )
        elif start_epoch:
            print(f"[tlsearch] resumed from the checkpoint of epoch {start_epoch}", flush=True)
    probe = training.head_probe
    static = {
        "strategy": config.strategy,
        "trainable_params": prepared.trainable_params,
        "param_groups": json.dumps([g.describe() for g in prepared.param_groups]),
        "node_id": node_id(),  # rank 0's node
        "node_ip": node_ip(),
        "worker_nodes": ",".join(worker_nodes),  # every rank's node, in rank order
        "driver_node": inputs.driver_node,  # the trial driver's node (multi-worker trials)
        # Not "pid": Tune overwrites that key with the trial actor's pid.
        "rank0_pid": os.getpid(),  # the process that trains (rank 0), for py-spy and friends
        "workers": session.world_size,
        "parallelism": training.parallelism,
        # built: this trial computed the frozen prefix's features (its wall and device seconds include
        # that); reused: another trial had; off / none / unsupported: it ran the whole model each step.
        # (lp_ft: what the cache did for its head probe, which ran on it)
        "feature_cache": probe.feature_cache if probe else training.feature_cache.status,
        "feature_cache_s": round(probe.feature_cache_s if probe else training.feature_cache.seconds, 3),
        "feature_cache_reason": (probe.feature_cache_reason if probe else training.feature_cache.reason)
        or None,
        "head_probe_s": round(probe.seconds, 3) if probe else None,
        "head_probe_loss": probe.train_loss if probe else None,
        "host_rss_at_start_gib": training.rss_at_start_gib,  # rank 0's process
        "inherited_device_s": inherited_device_s,
    }
    try:
        if continued is not None:
            # First the epoch it continues from, as the other trial reported it: ASHA judges this trial
            # at the rung the other was stopped at, with the value it had there, before it trains on.
            session.report({**continued["metrics"], **static, "epoch": start_epoch}, None, start_epoch)

        for epoch in range(start_epoch, spec.search.max_epochs):
            epoch_start = time.time()
            loss_sum, seen = train_epoch(training, epoch)
            train_time = time.time() - epoch_start
            totals = torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64)
            if session.world_size > 1:
                dist.all_reduce(totals)
            train_loss = totals[0].item() / max(1.0, totals[1].item())
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training diverged at epoch {epoch + 1}: train_loss={train_loss}")

            logits, targets = evaluate(training, session, run.num_classes)
            metrics: dict[str, Any] = dict(classification_metrics(logits, targets, run.num_classes))
            wall_s = wall_before + (time.time() - resumed_at)
            metrics.update(
                static,
                epoch=epoch + 1,
                train_loss=train_loss,
                epoch_s=time.time() - epoch_start,
                train_samples_per_s=totals[1].item() / max(train_time, 1e-9),
                val_rows=int(targets.shape[0]),
                wall_s=wall_s,
                device_s=wall_s * session.world_size * run.devices_per_worker,
                lr_head=_group_lr(optimizer, "head"),
                # Where a trial's start-up goes (the search's overhead): benchmarks/trial_overhead.py.
                # Ray Train's part (multi-worker trials): controller, worker group, process group.
                workers_start_s=training.loop_started_at - inputs.started_at,
                model_load_s=training.model_ready - training.loop_started_at,
                data_load_s=training.data_ready - training.model_ready,
                setup_s=(training.first_step_at or training.data_ready) - inputs.started_at,
                first_step_at=training.first_step_at,
                host_rss_gib=resident_gib(),  # rank 0's process at the epoch's end
            )
            epoch_checkpoint = None
            meta = {
                "trial_id": inputs.trial_id,
                "epoch": epoch + 1,
                "config": config.as_dict(),
                "labels": list(run.data.labels),
                "metrics": {k: v for k, v in metrics.items() if k != "param_groups"},
            }
            state = {"epoch": epoch + 1, "wall_s": wall_s, "inherited_device_s": inherited_device_s}
            if training.parallelism == FSDP:  # each rank its shards
                epoch_checkpoint = EpochCheckpoint.take_sharded(
                    prepared, optimizer, scheduler, meta, session.world_rank, **state
                )
            elif session.world_rank == 0:
                # the whole model's names, cached features or not
                epoch_checkpoint = EpochCheckpoint.take(prepared, optimizer, scheduler, meta, **state)
            # Between epochs, not training: `checkpoint_save_s` (what the training thread spent on the
            # checkpoint) is part of what keeps the device idle.
            session.report(metrics, epoch_checkpoint, epoch + 1)
    except BaseException:
        # The report in flight (the previous epoch's) still reaches Tune if it can; this error wins.
        with contextlib.suppress(BaseException):
            session.finish()
        raise
    session.finish()  # the last epoch's report reaches Tune before the trial's function returns


def _group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return float(group["lr"])
    return math.nan
