"""Sharded training (FSDP2) on real Ray Train worker groups of 2 and 4 (gloo, CPU): one worker group
per world size runs the whole matrix of strategies and models, to keep CI short (4 workers: `full`,
`partial` and `lora`). For each case: every rank holds about 1/N of the parameters and of AdamW's
state; the losses of K steps match a single process training
on the same global batch; the sharded checkpoint (each rank its files, merged as Ray Train merges
them) restores into a fresh sharded model and optimizer, and loads into an unsharded model here."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tlsearch.models.sources import build_model
from tlsearch.spec.model import FsdpSpec, ModelSpec
from tlsearch.spec.strategy import STRATEGIES
from tlsearch.strategies.base import Prepared, prepare
from tlsearch.testing import preferred_trial_config
from tlsearch.train.checkpoint import EpochCheckpoint, load_weights, restore
from tlsearch.train.loop import seed_everything

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS, BATCH, NUM_CLASSES = 3, 8, 3
STRATEGIES_BY_WORKERS = {
    2: {
        "timm_vit": ("full", "partial", "linear_probe", "lora", "ia3"),
        "hf_bert": ("full", "partial", "lora", "ia3", "prompt_tuning"),
    },
    4: {"timm_vit": ("full", "partial", "lora"), "hf_bert": ("full", "partial", "lora")},
}


def _model_specs(tiny_bert: Path) -> dict[str, dict[str, Any]]:
    return {
        "timm_vit": {
            "source": "timm",
            "name": "test_vit",
            "task": "image-classification",
            "pretrained": False,
            "image_size": 32,
        },
        "hf_bert": {"source": "hf", "name": str(tiny_bert), "task": "text-classification", "max_length": 16},
    }


def _config(strategy: str) -> Any:
    """The strategy's preferred knobs (dropout off: ranks and the single process draw no masks)."""
    no_dropout = {"dropout": 0.0} if "dropout" in STRATEGIES.get(strategy).knobs.model_fields else {}
    return preferred_trial_config(strategy, batch_size=BATCH, head_lr=1e-2, **no_dropout)


def _prepared(model_spec: dict[str, Any], strategy: str) -> tuple[Prepared, Any, list[nn.Module]]:
    seed_everything(0)
    loaded = build_model(ModelSpec(**model_spec), NUM_CLASSES)
    prepared = prepare(loaded, _config(strategy))
    blocks = [loaded.model.get_submodule(p) for p in loaded.layers.block_prefixes]
    return prepared, loaded.source, blocks


def _batches(model_spec: dict[str, Any]) -> list[tuple[Any, torch.Tensor]]:
    """STEPS global batches of BATCH rows, the same in every process."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        target = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
        if model_spec["source"] == "hf":
            ids = torch.randint(1, 10, (BATCH, 16), generator=generator)  # the tiny vocabulary
            batches.append(({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, target))
        else:
            batches.append((torch.randn((BATCH, 3, 32, 32), generator=generator), target))
    return batches


def _rows(batch: Any, rows: slice) -> Any:
    return {k: v[rows] for k, v in batch.items()} if isinstance(batch, dict) else batch[rows]


def _train(
    prepared: Prepared, model: nn.Module, source: Any, batches: list[Any], rows: slice, world_size: int
) -> tuple[list[float], torch.optim.Optimizer, Any]:
    """STEPS steps on each global batch's `rows`; the global batch's mean loss after each."""
    import torch.distributed as dist

    optimizer = torch.optim.AdamW(prepared.optimizer_groups(model), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model.eval()  # no dropout anywhere: the processes' losses are comparable
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses = []
    for batch, target in batches:
        loss = nn.functional.cross_entropy(source.logits(model, _rows(batch, rows)), target[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        mean = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(mean)
        losses.append(float(mean) / world_size)
    return losses, optimizer, scheduler


def _matrix_worker(config: dict[str, Any]) -> None:
    """Runs on each of the worker group's ranks: every (model, strategy) case, sharded."""
    import ray.train
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from tlsearch.testing import local_numel
    from tlsearch.train.sharding import is_sharded, shard

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    root = Path(config["root"])
    per_rank = BATCH // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    results: dict[str, Any] = {}
    for name, model_spec in config["models"].items():
        batches = _batches(model_spec)
        for strategy in STRATEGIES_BY_WORKERS[world][name]:
            case = f"{name}-{strategy}"
            prepared, source, blocks = _prepared(model_spec, strategy)
            model = shard(prepared.model, blocks, FsdpSpec(), torch.device("cpu"))
            losses, optimizer, scheduler = _train(prepared, model, source, batches, rows, world)
            moments = [v for s in optimizer.state.values() for v in s.values() if v.ndim > 0]
            held = torch.tensor(
                [
                    sum(local_numel(p) for p in model.parameters()),
                    sum(local_numel(p) for p in model.parameters() if p.requires_grad),
                    sum(local_numel(v) for v in moments),
                ],
                dtype=torch.float64,
            )
            # The sharded checkpoint: each rank writes its own directory, merged as Ray Train does.
            mine = root / case / f"rank{rank}"
            mine.mkdir(parents=True)
            checkpoint = EpochCheckpoint.take_sharded(
                prepared, optimizer, scheduler, {"epoch": STEPS}, rank, epoch=1, wall_s=1.0
            )
            checkpoint.write(mine)
            dist.barrier()
            merged = root / case / "merged"
            if rank == 0:
                for part in range(world):
                    shutil.copytree(root / case / f"rank{part}", merged, dirs_exist_ok=True)
            full = get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            trained = {k: v for k, v in full.items() if k in checkpoint.tensors}
            dist.barrier()
            # Restored into a fresh sharded model and optimizer: the same weights, and the next step
            # gives the same loss as the first model's.
            again, _, again_blocks = _prepared(model_spec, strategy)
            again_model = shard(again.model, again_blocks, FsdpSpec(), torch.device("cpu"))
            again_optimizer = torch.optim.AdamW(again.optimizer_groups(again_model), fused=True)
            again_scheduler = torch.optim.lr_scheduler.LambdaLR(again_optimizer, lambda step: 1.0)
            restored = restore(merged, again, again_optimizer, again_scheduler)
            same = all(
                torch.equal(a.full_tensor(), b.full_tensor())
                for a, b in zip(model.parameters(), again_model.parameters(), strict=True)
            )
            next_losses = []
            for m, opt in ((model, optimizer), (again_model, again_optimizer)):
                batch, target = batches[0]
                loss = nn.functional.cross_entropy(source.logits(m, _rows(batch, rows)), target[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                next_loss = source.logits(m, _rows(batch, rows)).sum().detach()
                dist.all_reduce(next_loss)
                next_losses.append(float(next_loss))
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, held.tolist())
            if rank == 0:
                torch.save(trained, root / case / "full.pt")
                results[case] = {
                    "sharded": is_sharded(model),
                    "losses": losses,
                    "held": gathered,  # per rank: parameters, trainable parameters, AdamW moments
                    "restored_epoch": restored.epoch,
                    "restored_same": same,
                    "next_step": next_losses,
                }
    if rank == 0:
        (root / "results.json").write_text(json.dumps(results))


def _share(shape: torch.Size, workers: int) -> int:
    """The most one of `workers` ranks holds of a tensor: its cut dimension (the first, or the longest
    where the first is shorter than the worker count) divided, rounded up."""
    if not shape:
        return 1
    dim = 0 if shape[0] >= workers else max(range(len(shape)), key=lambda d: shape[d])
    return math.ceil(shape[dim] / workers) * (math.prod(shape) // shape[dim])


def _single_process(
    model_spec: dict[str, Any], strategy: str, workers: int
) -> tuple[list[float], dict[str, tuple[int, int]]]:
    """The losses of one process on the whole batches, and per kind of tensor (every parameter, the
    trainable ones, AdamW's moments) (the total, the most a rank may hold of it)."""
    prepared, source, _ = _prepared(model_spec, strategy)
    losses, optimizer, _ = _train(prepared, prepared.model, source, _batches(model_spec), slice(None), 1)
    kinds = {
        "params": list(prepared.model.parameters()),
        "trainable": [p for p in prepared.model.parameters() if p.requires_grad],
        "moments": [v for s in optimizer.state.values() for v in s.values() if v.ndim > 0],
    }
    sizes = {
        kind: (sum(t.numel() for t in tensors), sum(_share(t.shape, workers) for t in tensors))
        for kind, tensors in kinds.items()
    }
    return losses, sizes


@pytest.mark.parametrize("workers", sorted(STRATEGIES_BY_WORKERS))
def test_sharded_training_matches_one_process_and_its_checkpoint_round_trips(
    ray_connected, tiny_bert: Path, tmp_path: Path, workers: int
) -> None:  # type: ignore[no-untyped-def]
    import ray.train
    from ray.train.torch import TorchTrainer

    models = _model_specs(tiny_bert)
    trainer = TorchTrainer(
        _matrix_worker,
        train_loop_config={"root": str(tmp_path / "cases"), "models": models},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray"), name="matrix"),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    results = json.loads((tmp_path / "cases" / "results.json").read_text())
    matrix = STRATEGIES_BY_WORKERS[workers]
    assert set(results) == {f"{m}-{s}" for m, names in matrix.items() for s in names}
    for case, got in results.items():
        name, strategy = case.split("-", 1)
        expected_losses, sizes = _single_process(models[name], strategy, workers)
        assert got["sharded"], case
        assert got["losses"] == pytest.approx(expected_losses, rel=1e-4, abs=1e-5), case
        # The ranks hold each tensor once between them, each at most its share rounded up per tensor
        # (about 1/N: within 5 points here, beside a tiny linear probe's three-row head).
        for kind, held in zip(
            ("params", "trainable", "moments"), zip(*got["held"], strict=True), strict=True
        ):
            total, share = sizes[kind]
            assert sum(held) == total and max(held) <= share, (case, kind, held, sizes[kind])
            if total > 10_000:
                assert max(held) <= (1 / workers + 0.05) * total, (case, kind, held)
        assert got["restored_epoch"] == 1 and got["restored_same"], case
        assert got["next_step"][0] == pytest.approx(got["next_step"][1], rel=1e-5), case
        # The merged shards load into an unsharded model (as finalize does): the gathered weights.
        prepared, _, _ = _prepared(models[name], strategy)
        load_weights(prepared, tmp_path / "cases" / case / "merged")
        full = torch.load(tmp_path / "cases" / case / "full.pt", weights_only=True)
        own = dict(prepared.model.state_dict())
        assert full and all(torch.equal(own[k], v) for k, v in full.items()), case
