"""The training loop: one readable function, the same on every worker and in both runners.

Per epoch: train (AdamW with the strategy's parameter groups, warmup + cosine, gradient clipping,
bf16 autocast on GPU), evaluate on the full validation set (predictions gathered across workers),
report every metric and a rank-0 checkpoint of the trainable weights.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from tlsearch.data.datasets import ImageDataset, TextDataset, load_split
from tlsearch.models.sources import LoadedModel, build_model
from tlsearch.strategies import Prepared, prepare
from tlsearch.train.features import use_feature_cache
from tlsearch.train.inputs import TrialInputs
from tlsearch.train.metrics import classification_metrics
from tlsearch.train.session import Session, node_id, node_ip, scratch_dir

STATE_FILE = "training_state.pt"
META_FILE = "meta.json"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the configuration is unusable."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(warmup_steps: int, total_steps: int):  # type: ignore[no-untyped-def]
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_datasets(inputs: TrialInputs, loaded: LoadedModel) -> tuple[Any, Any]:
    files, spec = inputs.run.data, inputs.run.spec
    train, validation = load_split(files, "train"), load_split(files, "validation")
    if files.input_kind == "text":
        tokenizer = loaded.preprocessing
        return (
            TextDataset(train, tokenizer, spec.model.max_length),
            TextDataset(validation, tokenizer, spec.model.max_length),
        )
    from timm.data import create_transform

    # Deterministic preprocessing (resize, centre crop, normalise) for training too: no augmentation
    # keeps trials comparable and makes a frozen prefix's features reusable.
    transform = create_transform(**loaded.preprocessing, is_training=False)
    return ImageDataset(train, transform), ImageDataset(validation, transform)


def _forward(model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
    if isinstance(batch, dict):
        out = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
        return out.logits
    return model(batch.to(device, non_blocking=True))


def _gather(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate each rank's rows on every rank (shards may differ in length by one)."""
    if world_size == 1:
        return tensor
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
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


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, session: Session, autocast: Any, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, targets = [], []
    for batch, target in loader:
        with autocast():
            logits.append(_forward(model, batch, session.device).float().cpu())
        targets.append(target)
    # A rank may hold no validation rows at all (fewer rows than workers).
    local_logits = torch.cat(logits) if logits else torch.zeros((0, num_classes))
    local_targets = torch.cat(targets) if targets else torch.zeros((0,), dtype=torch.long)
    return _gather(local_logits, session.world_size), _gather(local_targets, session.world_size)


def describe_trial(inputs: TrialInputs, prepared: Prepared) -> str:
    lines = [
        f"[tlsearch] trial {inputs.trial_id}: {inputs.config.strategy} {inputs.config.as_dict()}",
        f"[tlsearch] trainable parameters: {prepared.trainable_params:,}",
    ]
    for g in prepared.param_groups:
        lines.append(
            f"[tlsearch]   group {g.name:<20} {g.size:>12,} params  lr={g.lr:.3g}  wd={g.weight_decay:g}"
        )
    return "\n".join(lines)


def train_trial(inputs: TrialInputs, session: Session) -> None:
    run, config, spec = inputs.run, inputs.config, inputs.run.spec
    seed_everything(spec.seed)
    if session.device.type == "cpu":
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))

    loaded = build_model(spec.model, run.num_classes)
    prepared = prepare(loaded, config)

    on_gpu = session.device.type == "cuda"
    workers = spec.training.loader_workers
    if workers is None:
        workers = 0 if run.data.input_kind == "text" else max(0, int(spec.resources.cpus_per_worker) - 1)
    # A frozen prefix (linear probe, partial) runs once per search: train its tail on stored features.
    cache = use_feature_cache(
        inputs, loaded, prepared, session, lambda: build_datasets(inputs, loaded), workers
    )
    if cache.tail is not None and cache.datasets is not None:
        (train_set, val_set), workers = cache.datasets, 0  # rows read from memory-mapped files
        model = session.wrap(cache.tail.module)
    else:
        train_set, val_set = build_datasets(inputs, loaded)
        model = session.wrap(prepared.model)

    # The loaders' worker seeds come from their own generator, not the global one that dropout draws
    # from: the dropout masks do not depend on how the data is loaded (cached or not, workers or not).
    sampler = DistributedSampler(
        train_set, num_replicas=session.world_size, rank=session.world_rank, shuffle=True, seed=spec.seed
    )
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=train_set.collate,
        num_workers=workers,
        pin_memory=on_gpu,
        persistent_workers=workers > 0,
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
        generator=torch.Generator().manual_seed(spec.seed),
    )

    optimizer = torch.optim.AdamW([g.for_optimizer() for g in prepared.param_groups], fused=on_gpu)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * spec.search.max_epochs
    warmup_steps = round(config.warmup_fraction * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
    trainable = [p for p in model.parameters() if p.requires_grad]

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu)

    start_epoch, wall_before = 0, 0.0
    with session.restore_dir() as checkpoint:
        if checkpoint is not None:
            prepared.load(prepared.model, checkpoint)
            state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, wall_before = state["epoch"], state["wall_s"]
    resumed_at = inputs.started_at
    worker_nodes = session.worker_nodes()
    if session.world_rank == 0:
        print(describe_trial(inputs, prepared), flush=True)
        if start_epoch:
            print(f"[tlsearch] resumed from the checkpoint of epoch {start_epoch}", flush=True)
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
        # built: this trial computed the frozen prefix's features (its wall and device seconds include
        # that); reused: another trial had; off / none / unsupported: it ran the whole model each step.
        "feature_cache": cache.status,
        "feature_cache_s": round(cache.seconds, 3),
    }

    for epoch in range(start_epoch, spec.search.max_epochs):
        epoch_start = time.time()
        sampler.set_epoch(epoch)
        prepared.train_mode(model)
        # Summed on the device and read once per epoch: a per-step .item() would stall the GPU.
        loss_sum = torch.zeros((), dtype=torch.float64, device=session.device)
        seen = 0
        for batch, target in train_loader:
            target = target.to(session.device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(_forward(model, batch, session.device).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.training.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, spec.training.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * target.shape[0]
            seen += target.shape[0]
        train_time = time.time() - epoch_start
        totals = torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64)
        if session.world_size > 1:
            dist.all_reduce(totals)
        train_loss = totals[0].item() / max(1.0, totals[1].item())
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training diverged at epoch {epoch + 1}: train_loss={train_loss}")

        logits, targets = evaluate(model, val_loader, session, autocast, run.num_classes)
        metrics = classification_metrics(logits, targets, run.num_classes)
        wall_s = wall_before + (time.time() - resumed_at)
        metrics.update(
            static,
            epoch=epoch + 1,
            train_loss=train_loss,
            epoch_s=time.time() - epoch_start,
            train_samples_per_s=totals[1].item() / max(train_time, 1e-9),
            wall_s=wall_s,
            device_s=wall_s * session.world_size * run.devices_per_worker,
            lr_head=_group_lr(optimizer, "head"),
        )
        with scratch_dir() as directory:
            checkpoint_dir = None
            if session.world_rank == 0:
                checkpoint_dir = directory
                prepared.save(prepared.model, directory)  # the whole model's names, cached or not
                torch.save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "epoch": epoch + 1,
                        "wall_s": wall_s,
                    },
                    directory / STATE_FILE,
                )
                meta = {
                    "trial_id": inputs.trial_id,
                    "epoch": epoch + 1,
                    "config": config.as_dict(),
                    "labels": list(run.data.labels),
                    "metrics": {k: v for k, v in metrics.items() if k != "param_groups"},
                }
                (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
            session.report(metrics, checkpoint_dir, epoch + 1)


def _group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return float(group["lr"])
    return math.nan


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / META_FILE).read_text())
