"""LP-FT's first phase: the new head trained alone on the frozen backbone, before the trial's first
epoch (`Prepared.head_probe_epochs`, the `lp_ft` strategy).

The probe reads the feature cache at the head boundary, the same cache linear-probe trials of the
search build and reuse, so after the first such trial it costs a fraction of a second an epoch;
where the cache is off or the model does not allow it, the probe runs the whole model with its
backbone frozen and in eval mode. Every rank of a multi-worker trial runs the same probe over every
training row, then takes rank 0's head (no rank can drift). A trial restored from a checkpoint
skips it: its head is in the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from tlsearch.models.sources import LoadedModel
from tlsearch.models.tails import HEAD
from tlsearch.strategies.base import Prepared, fully_frozen_modules
from tlsearch.train.batches import ToDevice
from tlsearch.train.features import use_feature_cache
from tlsearch.train.inputs import TrialInputs
from tlsearch.train.losses import TrainingLoss
from tlsearch.train.session import Session


@dataclass(frozen=True)
class HeadProbe:
    feature_cache: str  # what the feature cache did for the probe (built, reused, off, unsupported)
    feature_cache_reason: str  # why it was off (tlsearch.train.features.FeatureCacheUse.reason)
    feature_cache_s: float
    seconds: float  # the whole probe, the cache included
    train_loss: float  # the last probe epoch's mean training loss


def probe_head(
    inputs: TrialInputs,
    loaded: LoadedModel,
    prepared: Prepared,
    session: Session,
    make_datasets: Callable[[], tuple[Any, Any]],
    loader_workers: int,
    loss: TrainingLoss,
    schedule: Callable[[int, int], Callable[[int], float]],
) -> HeadProbe:
    """Trains `prepared`'s head groups alone for `prepared.head_probe_epochs` epochs (cosine from the
    groups' rates to 0: `schedule(warmup_steps, total_steps)`), on the session's device."""
    started = time.time()
    model, device, spec = prepared.model, session.device, inputs.run.spec
    head = set(loaded.layers.head_params)
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(name in head)
    head_groups = [g for g in prepared.param_groups if set(g.param_names) <= head]
    # The linear probe's view of the model: the head trains, everything else is a frozen prefix.
    view = Prepared(model, head_groups, fully_frozen_modules(model), feature_boundary=HEAD)
    train_set: Any
    try:
        cache = use_feature_cache(inputs, loaded, view, session, make_datasets, loader_workers)
        if cache.tail is not None and cache.datasets is not None:
            trained, train_set, workers = cache.tail.module, cache.datasets[0], 0
        else:
            trained, (train_set, _) = model, make_datasets()
            workers = loader_workers
        trained.to(device)
        params = dict(model.named_parameters())
        optimizer = torch.optim.AdamW(
            [
                {"params": [params[n] for n in g.param_names], "lr": g.lr, "weight_decay": g.weight_decay}
                for g in head_groups
            ]
        )
        loader = DataLoader(
            train_set,
            batch_size=inputs.config.common.batch_size,
            shuffle=True,
            collate_fn=train_set.collate,
            num_workers=workers,
            generator=torch.Generator().manual_seed(spec.seed),  # every rank: the same order
        )
        epochs = prepared.head_probe_epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(0, epochs * max(1, len(loader))))
        to_device = ToDevice(device, loaded.preprocessing)
        on_gpu = device.type == "cuda"
        loss_sum, seen = torch.zeros((), dtype=torch.float64), 0
        for _ in range(epochs):
            view.train_mode(trained)
            loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
            for batch, target in loader:
                session.poll()
                target = target.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                    batch_loss = loss(loaded.source.logits(trained, to_device(batch)).float(), target)
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += batch_loss.detach().double() * target.shape[0]
                seen += target.shape[0]
        if session.world_size > 1:
            import torch.distributed as dist

            for name in sorted(head):
                dist.broadcast(params[name].data, src=0)
        train_loss = float(loss_sum) / max(1, seen)
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(trains[name])
    return HeadProbe(cache.status, cache.reason, cache.seconds, time.time() - started, train_loss)
