"""Sharded (FSDP2) against data-parallel (DDP) training on 2 CPU workers: what each worker holds.

    .venv/bin/python benchmarks/fsdp.py [--steps 6] [--batch-size 2]
    .venv/bin/python benchmarks/fsdp.py --quick   # a tiny BERT (under a minute): fsdp_quick.json

A BERT-base-shaped model (12 layers, hidden 768, random weights, a small vocabulary: 86M parameters,
1.28 GiB of DDP training state) fully fine-tuned through tlsearch's own pieces (the `full` strategy,
the session's wrapping, fused AdamW, the host-memory settings a trial of each kind runs with) on a
real Ray Train worker group of 2, once with DDP and once sharded. Two rows of 128 tokens per worker
by default: the training state, which sharding divides, then outweighs the activations, which it
does not (at 8 rows they are ~1.5 GiB a worker, either way). Per worker (rank 0; the ranks agree
within a shard's padding):

- `state_bytes`: parameters + gradients + AdamW's moments this worker holds (local shards when sharded);
- `peak_rss_delta_bytes`: the process's peak resident memory minus its resident memory before the
  model was built;
- `samples_per_s`: training samples per second over the steps after the first (both workers).

Figures (results/fsdp.json, listed in summary.json): `fsdp_state_bytes_per_worker_vs_ddp` (target
≤ 0.55), `fsdp_memory_per_worker_vs_ddp` (≤ 0.75), `fsdp_vs_ddp_throughput` (≥ 0.8).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ray_runtime_env, write_result
from benchmarks.summary import refresh

WORKERS, SEQUENCE = 2, 128
BERT_BASE = {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072, "max_positions": SEQUENCE}
TINY = {"layers": 2, "hidden": 64, "heads": 2, "intermediate": 128, "max_positions": SEQUENCE}


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch
    import torch.distributed as dist

    from tlsearch.models.sources import build_model
    from tlsearch.spec.model import FsdpSpec, ModelSpec
    from tlsearch.strategies.base import prepare
    from tlsearch.testing import local_numel, preferred_trial_config
    from tlsearch.train.host_memory import configure_host_memory, resident_gib
    from tlsearch.train.loop import seed_everything
    from tlsearch.train.session import TrainSession

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    # The malloc settings a trial of this parallelism runs with (tlsearch/train/host_memory.py).
    configure_host_memory(keep=True, sharded=config["parallelism"] == "fsdp")
    rss_before = resident_gib() * 2**30
    seed_everything(0)
    spec = ModelSpec(source="hf", name=config["model"], task="text-classification", max_length=SEQUENCE)
    loaded = build_model(spec, 2)
    prepared = prepare(loaded, preferred_trial_config("full", batch_size=config["batch_size"]))
    blocks = [loaded.model.get_submodule(p) for p in loaded.layers.block_prefixes]
    sharded = config["parallelism"] == "fsdp"
    model = TrainSession(FsdpSpec()).wrap(prepared.model, blocks if sharded else ())
    optimizer = torch.optim.AdamW(prepared.optimizer_groups(model), fused=True)
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(1, 10, (config["batch_size"], SEQUENCE), generator=generator)  # its small vocabulary
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    target = torch.randint(0, 2, (config["batch_size"],), generator=generator)
    model.train()
    started = 0.0
    for step in range(config["steps"]):
        if step == 1:  # the first step allocates gradients and AdamW's state
            dist.barrier()
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(loaded.source.logits(model, batch), target)
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: counted below
        loss.backward()
        optimizer.step()
    dist.barrier()
    seconds = time.perf_counter() - started
    params = list(model.parameters())
    state = sum(local_numel(p) * p.element_size() for p in params)
    state += sum(local_numel(p.grad) * p.grad.element_size() for p in params if p.grad is not None)
    state += sum(
        local_numel(v) * v.element_size() for s in optimizer.state.values() for v in s.values() if v.ndim > 0
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    samples = (config["steps"] - 1) * config["batch_size"] * WORKERS
    if rank == 0:  # Ray Train V2 keeps no metrics reported without a checkpoint: a file instead
        figures = {
            "state_bytes": state,
            "peak_rss_delta_bytes": peak - rss_before,
            "samples_per_s": samples / seconds,
            "parameters": sum(p.numel() for p in prepared.model.parameters()) if not sharded else None,
        }
        Path(config["out"]).write_text(json.dumps(figures))


def measure(parallelism: str, model: Path, steps: int, batch_size: int, storage: Path) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "parallelism": parallelism,
            "model": str(model),
            "steps": steps,
            "batch_size": batch_size,
            "out": str(storage / f"{parallelism}.json"),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(storage), name=parallelism),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    figures: dict[str, Any] = json.loads((storage / f"{parallelism}.json").read_text())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny BERT, for development")
    args = parser.parse_args()

    import ray

    from tlsearch.testing import make_tiny_bert

    with tempfile.TemporaryDirectory() as scratch:
        model = make_tiny_bert(Path(scratch) / "bert", **(TINY if args.quick else BERT_BASE))
        ray.init(
            address="local",  # its own cluster, whatever else runs on this machine
            num_cpus=WORKERS,
            include_dashboard=False,
            runtime_env=ray_runtime_env(),
            _node_ip_address="127.0.0.1",
        )
        try:
            runs = {
                way: measure(way, model, args.steps, args.batch_size, Path(scratch))
                for way in ("ddp", "fsdp")
            }
        finally:
            ray.shutdown()
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    figures = {
        "workers": WORKERS,
        "model": "tiny BERT (2 x 64)" if args.quick else "BERT-base shapes (12 x 768, random weights)",
        "parameters": ddp["parameters"],
        "steps": args.steps,
        "batch_size_per_worker": args.batch_size,
        "sequence_length": SEQUENCE,
        "runs": {way: {k: v for k, v in run.items() if k != "parameters"} for way, run in runs.items()},
        "fsdp_state_bytes_per_worker_vs_ddp": fsdp["state_bytes"] / ddp["state_bytes"],
        "fsdp_memory_per_worker_vs_ddp": fsdp["peak_rss_delta_bytes"] / ddp["peak_rss_delta_bytes"],
        "fsdp_vs_ddp_throughput": fsdp["samples_per_s"] / ddp["samples_per_s"],
    }
    command = "python benchmarks/fsdp.py" + (" --quick" if args.quick else "")
    path = write_result("fsdp_quick" if args.quick else "fsdp", figures, command)
    if not args.quick:
        refresh()
    print(path)
    for key in (
        "fsdp_state_bytes_per_worker_vs_ddp",
        "fsdp_memory_per_worker_vs_ddp",
        "fsdp_vs_ddp_throughput",
    ):
        print(f"{key}: {figures[key]:.3f}")


if __name__ == "__main__":
    main()
