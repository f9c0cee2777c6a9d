"""Every GPU figure of the performance issue (issue 5) in one go, on one H100 or H200 (about 4 min).

    bash benchmarks/gpu/run.sh                 # on the GPU machine: $OUT/gpu_results.json, $OUT/checks/*.json
    bash benchmarks/gpu/run.sh --dry-run       # the same code paths on CPU with tiny models (< 1 min; CI)
    bash benchmarks/gpu/run.sh --only loop_vs_plain     # a subset of the checks, by name
    python benchmarks/gpu/run.py --record gpu_results.json    # file a GPU run under benchmarks/results/

The checks are a list of named functions (CHECKS below). Each returns its figures, which land in
$OUT/checks/<name>.json and under its name in $OUT/gpu_results.json; a check that fails records its
error and the others still run. To add one, write a function taking the Context and append it.

- vit_b16_full / vit_b16_full_compile: ViT-B/16 (timm `vit_base_patch16_224`, random weights: nothing
  can be downloaded there) full fine-tuning at 224 px, bf16 autocast, batch 128, trained by tlsearch's
  loop (`setup_training` + `train_epoch`, as trials run it) eager and with `training.compile: true`:
  images/s over the timed epochs and MFU = images/s x training FLOPs per image / the chip's dense
  bf16 peak. Training FLOPs per image = 3 x the forward's, counted by
  torch.utils.flop_counter.FlopCounterMode. Inputs are random tensors already at 224 px (image
  decoding is left out: this measures the training loop), fed through the loop's own DataLoader.
- loop_vs_plain: the same model and data, tlsearch's loop against a hand-written PyTorch loop, set up
  side by side and taking turns epoch by epoch (benchmarks/throughput.py has both loops).
- trial_overhead: target 1 on the GPU, benchmarks/trial_overhead.py's searches through tlsearch on a
  local Ray cluster (per-trial start-up with and without reused processes, device-busy fraction).
- vit_b16_model_only: the same training step on a batch already on the device, eager and compiled:
  the ceiling without the input pipeline (the gap to vit_b16_full is the DataLoader path's cost).
- The feature cache's figure (target 2) is a ratio measured on the CPU (benchmarks/feature_cache.py).
- fsdp_memory_sweep (issue 25): with the GPU's memory capped at 6 GiB, full fine-tuning of BERT shapes
  of 0.1-0.5 B parameters replicated (DDP), sharded (FSDP2) and sharded with CPU offload at the same
  batch: the largest that trains each way, FSDP/DDP throughput where both fit (about 2 min).
- vit_b16_mfu_variants (issue 25): the ViT-B/16 step toward 40% MFU, a child process per variant,
  each capped (batch 256; bf16 parameters with fp32 master weights; CUDA graphs; max-autotune).
  Both at once, within 6 minutes: `bash benchmarks/gpu/run.sh --only fsdp_memory_sweep,vit_b16_mfu_variants`.

The headline keys `gpu_name`, `vit_b16_full_img_s` and `vit_b16_full_mfu` take the faster of eager and
compiled training.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch.utils.data import Dataset, default_collate

from benchmarks.throughput import (
    Case,
    alone,
    alternate,
    case_inputs,
    full_finetuning,
    ours_here,
    plain_here,
    release,
    timm_model,
)
from tlsearch.data.datasets import ImageDataset
from tlsearch.data.tables import DataFiles
from tlsearch.train.inputs import TrialInputs

ROOT = Path(__file__).resolve().parents[2]

# Dense BF16 tensor-core peaks in FLOP/s, by GPU name (first match wins). NVIDIA's datasheets give
# BF16 "with sparsity"; dense is half: H100 SXM 1,979 -> 989.4 T, H100 NVL 1,671 -> 835.5 T,
# H100 PCIe 1,513 -> 756.5 T (NVIDIA H100 Tensor Core GPU datasheet); H200 SXM 1,979 -> 989.4 T,
# H200 NVL 1,671 -> 835.5 T (NVIDIA H200 datasheet; GH200 has the H100/H200 SXM tensor cores);
# A100 624 -> 312 T (NVIDIA A100 datasheet).
DENSE_BF16_PEAKS = (
    ("H100 PCIe", 756.5e12),
    ("H100 NVL", 835.5e12),
    ("H200 NVL", 835.5e12),
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("A100", 312e12),
)
PEAK_SOURCE = "NVIDIA H100 / H200 / A100 datasheets: BF16 tensor-core TFLOPS with sparsity, halved for dense"


def dense_bf16_peak(gpu_name: str) -> float | None:
    for marker, peak in DENSE_BF16_PEAKS:
        if marker.lower() in gpu_name.lower():
            return peak
    return None


@dataclass(frozen=True)
class Sizes:
    model: str
    image_size: int
    batch_size: int
    steps_per_epoch: int
    timed_epochs: int  # after one warm-up epoch (vit_b16_full, vit_b16_full_compile)
    pair_epochs: int  # timed epochs per side, taking turns (loop_vs_plain)
    classes: int = 10


FULL = Sizes("vit_base_patch16_224", 224, 128, 40, 3, 4)
DRY = Sizes("test_vit", 32, 8, 4, 1, 1)


@dataclass
class Context:
    dry_run: bool
    out: Path
    device: torch.device
    gpu_name: str
    sizes: Sizes
    scratch: Path
    shared: dict[str, Any] = field(default_factory=dict)  # what one check leaves for another
    budget_s: float | None = None  # no check starts after this many seconds (the device time is short)
    busy_trials: int = 3  # device_busy's search (trial_overhead's busy search keeps 3)


# A dry run's overhead and busy searches: 2 trials each, the fewest that show a cold and a warm start.
DRY_RUN_TRIALS = 2


class SyntheticImages(Dataset):
    """Random images already resized to the model's input size, as uint8 pixels (what trials' image
    datasets give: the device normalises them); labels cycle through the classes."""

    def __init__(self, length: int, image_size: int, classes: int):
        generator = torch.Generator().manual_seed(0)
        shape = (16, 3, image_size, image_size)
        self.pool = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        self.length, self.classes = length, classes
        self.targets = (torch.arange(length) % classes).numpy()  # what the training loss counts classes by

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.pool[i % len(self.pool)], i % self.classes

    collate = staticmethod(ImageDataset.collate)


class SyntheticFloatImages(SyntheticImages):
    """The same images as a plain loop's float pipeline gives them (normalised per image on the host)."""

    def __init__(self, length: int, image_size: int, classes: int):
        super().__init__(length, image_size, classes)
        self.pool = (self.pool.float() / 255 - 0.5) / 0.5

    collate = staticmethod(default_collate)


def shm_gib() -> float:
    try:
        return shutil.disk_usage("/dev/shm").free / 2**30
    except OSError:
        return 0.0


def vit_inputs(
    ctx: Context, *, compile: bool, timed_epochs: int
) -> tuple[Case, TrialInputs, tuple[Dataset, Dataset]]:
    s = ctx.sizes
    on_gpu = ctx.device.type == "cuda"
    # DataLoader workers hand batches over in shared memory (a 224 px batch of 128 is 77 MB).
    workers = 1 if ctx.dry_run else (min(8, (os.cpu_count() or 2) - 1) if shm_gib() >= 4 else 0)
    case = Case(
        "gpu-vit-compiled" if compile else "gpu-vit",
        timm_model(s.model, s.image_size),
        {"train": "synthetic.parquet", "validation": "synthetic.parquet", "image_column": "image"},
        full_finetuning(s.batch_size),
        samples_per_worker=s.batch_size * s.steps_per_epoch,  # whole batches: one shape, one graph
        timed_epochs=timed_epochs,
        training={"compile": compile, "loader_workers": workers},
    )
    labels = tuple(str(i) for i in range(s.classes))
    data = DataFiles("synthetic", "synthetic", None, "image", "image", "label", labels)
    cpus = float(os.cpu_count() or 1) if on_gpu else 1.0
    inputs = case_inputs(case, 1, cpus, ctx.scratch, use_gpu=on_gpu, data=data)
    train = SyntheticImages(case.samples_per_worker, s.image_size, s.classes)
    return case, inputs, (train, SyntheticImages(s.batch_size, s.image_size, s.classes))


def train_flops_per_image(inputs: TrialInputs, device: torch.device) -> float:
    """Training FLOPs per image of the model as trials build it (forward_flops_x3)."""
    from tlsearch.models.sources import build_model

    spec = inputs.run.spec
    model = build_model(spec.model, inputs.run.num_classes).model.to(device).eval()
    size = spec.model.image_size
    return forward_flops_x3(model, torch.zeros(2, 3, size, size, device=device))


def forward_flops_x3(model: torch.nn.Module, x: torch.Tensor) -> float:
    """3 x the forward's FLOPs per row of `x` (backward ~ 2 x forward), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"),
        FlopCounterMode(display=False) as counter,
    ):
        model(x)
    return 3 * counter.get_total_flops() / x.shape[0]


def _vit_training(ctx: Context, compile: bool) -> dict[str, Any]:
    case, inputs, datasets = vit_inputs(ctx, compile=compile, timed_epochs=ctx.sizes.timed_epochs)
    if "train_flops_per_image" not in ctx.shared:
        ctx.shared["train_flops_per_image"] = train_flops_per_image(inputs, ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    measured = alone(ours_here(inputs, datasets), case)
    img_s = measured["samples_per_s"]
    flops = ctx.shared["train_flops_per_image"]
    peak = dense_bf16_peak(ctx.gpu_name) if ctx.device.type == "cuda" else None
    return {
        "model": ctx.sizes.model,
        "image_size": ctx.sizes.image_size,
        "batch_size": ctx.sizes.batch_size,
        "strategy": "full",
        "compile": compile,
        "img_s": round(img_s, 1),
        "mfu": round(img_s * flops / peak, 4) if peak else None,
        "train_flops_per_image": flops,
        "achieved_tflop_s": round(img_s * flops / 1e12, 1),
        "peak_dense_bf16_tflop_s": peak / 1e12 if peak else None,
        "peak_source": PEAK_SOURCE if peak else f"no known peak for {ctx.gpu_name!r}",
        "timed_images": measured["timed_samples"],
        "first_epoch_s": round(measured["first_epoch_s"], 1),  # compiling happens in it
        "steady_epoch_s": round(measured["steady_epoch_s"], 2),
        "loader_workers": inputs.run.spec.training.loader_workers,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if ctx.device.type == "cuda"
        else None,
    }


def check_vit_eager(ctx: Context) -> dict[str, Any]:
    return _vit_training(ctx, compile=False)


def check_vit_compile(ctx: Context) -> dict[str, Any]:
    return _vit_training(ctx, compile=True)


def check_loop_vs_plain(ctx: Context) -> dict[str, Any]:
    case, inputs, datasets = vit_inputs(ctx, compile=False, timed_epochs=ctx.sizes.pair_epochs)
    # Both set up side by side (two ViT-B/16 trainings fit an H100 twice over), taking turns by epoch.
    s = ctx.sizes
    floats = tuple(SyntheticFloatImages(len(d), s.image_size, s.classes) for d in datasets)
    outcome = alternate(ours_here(inputs, datasets), plain_here(inputs, floats), case, "loop vs plain")
    return {"model": ctx.sizes.model, "batch_size": ctx.sizes.batch_size, "compile": False, **outcome}


def _overhead_search(ctx: Context, folder: str) -> tuple[Path, int, int]:
    """The spec both trial-overhead checks search with: (spec, overhead trials, busy rows). No
    pretrained weights or demo data can reach the GPU machine: a BERT-base-shaped model (12 layers,
    768 wide, random weights, saved and loaded by path like a checkpoint) on synthetic 3-topic texts
    of 60 words. Each check has its own `folder` (a search never overwrites an existing one)."""
    import yaml

    from tlsearch.testing import make_tiny_bert, text_rows, write_parquet

    root = ctx.scratch / folder
    if ctx.dry_run:
        model = make_tiny_bert(root / "bert", max_positions=128)  # the spec's max_length below
        rows, overhead_trials, busy_rows, words = 256, DRY_RUN_TRIALS, 128, 12
    else:
        model = make_tiny_bert(
            root / "bert", layers=12, hidden=768, heads=12, intermediate=3072, max_positions=512
        )
        rows, overhead_trials, busy_rows, words = 8_000, 6, 8_000, 60
    files = {
        split: write_parquet(text_rows(n, seed, words), root / f"{split}.parquet")
        for split, n, seed in (("train", rows, 0), ("validation", 512, 1))
    }
    spec = root / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "gpu-overhead",
                "storage": str(root / "runs"),
                "model": {
                    "source": "hf",
                    "name": str(model),
                    "task": "text-classification",
                    "max_length": 128,
                },
                "data": {
                    "train": str(files["train"]),
                    "validation": str(files["validation"]),
                    "text_column": "text",
                },
                "strategies": {"full": {}, "linear_probe": {}},
                "search": {"num_samples": 2, "max_epochs": 1, "baselines": []},
                "audit": {"enabled": False},
                "finalize": {"after_search": False},
                "resources": {"cpus_per_worker": 2},
            }
        )
    )
    return spec, overhead_trials, busy_rows


OVERHEAD_BASE = [
    "search.scheduler.type=fifo",
    "tracking.wandb.mode=disabled",
    "search.seed_configs=none",
    "search.baselines=[]",  # the figures are of the search's own trials
    "audit.enabled=false",
    "finalize.after_search=false",
]


def _busy_overrides(busy_rows: int) -> list[str]:
    return ["search.max_epochs=3", f"data.max_train_samples={busy_rows}", "data.max_validation_samples=512"]


@contextlib.contextmanager
def _overhead_cluster(ctx: Context, folder: str) -> Iterator[tuple[Path, int, int, str]]:
    """_overhead_search's spec, overhead trials, busy rows and run storage, with this process the
    driver of a new local Ray cluster (shut down afterwards)."""
    import ray

    from tlsearch.search.runner import connect

    spec, overhead_trials, busy_rows = _overhead_search(ctx, folder)
    connect(None)
    try:
        yield spec, overhead_trials, busy_rows, str(ctx.scratch / folder / "runs")
    finally:
        ray.shutdown()


def _overhead_model(ctx: Context) -> str:
    return "tiny BERT" if ctx.dry_run else "BERT-base shapes, random weights"


def check_trial_overhead(ctx: Context) -> dict[str, Any]:
    """Issue 5, target 1 on the GPU: benchmarks/trial_overhead.py's searches (real Tune + Optuna on a
    local Ray cluster, trials one at a time on the one GPU) on _overhead_search's model and texts.
    Overhead: 6 one-epoch trials per mode; busy: 3 trials of 3 epochs on 8,000 texts with reused
    processes."""
    from benchmarks.trial_overhead import measure

    with _overhead_cluster(ctx, "overhead") as (spec, overhead_trials, busy_rows, storage):
        figures = measure(
            spec,
            OVERHEAD_BASE,
            overhead_trials=overhead_trials,
            busy_trials=DRY_RUN_TRIALS if ctx.dry_run else 3,
            busy=_busy_overrides(busy_rows),
            slots=1,
            storage=storage,
            busy_modes=(True,),
            on_busy=lambda busy: ctx.shared.update(busy_search=busy),
        )
    return {"model": _overhead_model(ctx), **figures}


def check_device_busy(ctx: Context) -> dict[str, Any]:
    """Only trial_overhead's busy search (reused processes, `--busy-trials` trials of 3 epochs, 3 by
    default), for a run whose device time has no room for the overhead searches: the device-busy
    fraction, where the idle seconds went, each trial's start-up with its parts (the first pays the
    cold start), checkpoint saves, host memory. More trials spread the one cold start as a longer
    search does (the CPU figure's search has 6)."""
    from benchmarks.trial_overhead import measure_busy

    # The same search as trial_overhead's busy one: when this run measured it already, not again.
    earlier = ctx.shared.get("busy_search")
    if earlier is not None and earlier["busy_trials"] == ctx.busy_trials:
        return {"model": _overhead_model(ctx), **earlier, "from": "trial_overhead"}
    with _overhead_cluster(ctx, "busy") as (spec, _, busy_rows, storage):
        figures = measure_busy(
            spec,
            OVERHEAD_BASE,
            busy_trials=ctx.busy_trials,
            busy=_busy_overrides(busy_rows),
            slots=1,
            storage=storage,
            reuse=True,
        )
    return {"model": _overhead_model(ctx), **figures}


def _timed_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> tuple[float, float]:
    """(images/s over `steps` training steps after 3 warm-up steps, the warm-up's seconds)."""
    on_gpu = x.device.type == "cuda"

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    warm_start = time.time()
    for _ in range(3):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    start = time.time()
    for _ in range(steps):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    return x.shape[0] * steps / (time.time() - start), start - warm_start


def check_model_only(ctx: Context) -> dict[str, Any]:
    """The ceiling without any input pipeline: the same ViT-B/16 step (timm model, bf16 autocast, fused
    AdamW) on one batch that already sits on the device, eager then compiled, then compiled at twice
    the batch. The gap to vit_b16_full / vit_b16_full_compile is what the DataLoader path (uint8
    pixels through worker processes, pinned memory, host-to-device copy, normalising) costs; the
    doubled batch shows whether larger matrix products would lift the MFU."""
    import timm

    s = ctx.sizes
    on_gpu = ctx.device.type == "cuda"
    flops = ctx.shared.get("train_flops_per_image")
    peak = dense_bf16_peak(ctx.gpu_name) if on_gpu else None
    steps = 20 if not ctx.dry_run else 2
    out: dict[str, Any] = {"model": s.model, "batch_size": s.batch_size, "steps": steps}
    for name, compiled, batch in (
        ("eager", False, s.batch_size),
        ("compiled", True, s.batch_size),
        (f"compiled_batch_{2 * s.batch_size}", True, 2 * s.batch_size),
    ):
        model = timm.create_model(s.model, pretrained=False, num_classes=s.classes, img_size=s.image_size)
        model = model.to(ctx.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        if compiled:
            model.compile()
        x = torch.randn(batch, 3, s.image_size, s.image_size, device=ctx.device)
        y = torch.randint(0, s.classes, (batch,), device=ctx.device)
        if flops is None:  # run alone (--only): count them here
            flops = forward_flops_x3(model, x[:2])
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        img_s, warmup_s = _timed_steps(model, optimizer, x, y, steps)
        out[f"{name}_img_s"] = round(img_s, 1)
        out[f"{name}_mfu"] = round(img_s * flops / peak, 4) if peak and flops else None
        out[f"{name}_warmup_s"] = round(warmup_s, 1)
        if on_gpu:
            out[f"{name}_max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"  model only {name}: {out[f'{name}_img_s']} img/s, MFU {out[f'{name}_mfu']}", flush=True)
        del model, optimizer, x, y
        release()
    return out


# --- issue 25: sharding on a memory-capped GPU, and ViT-B/16 toward 40% MFU ------------------------

# BERT shapes of the memory sweep: (layers, hidden, heads), about 0.1, 0.2, 0.35 and 0.5 B parameters
# (12 x hidden^2 per layer; a small vocabulary keeps them in the blocks).
SWEEP = ((12, 768, 12), (16, 1024, 16), (24, 1088, 16), (24, 1280, 16))
DRY_SWEEP = ((2, 32, 2), (2, 64, 2))
SWEEP_CAP_GIB = 6.0  # the device memory a sweep run may use (set_per_process_memory_fraction)
SWEEP_BATCH, SWEEP_SEQUENCE = 8, 128
SWEEP_WAYS = ("ddp", "fsdp", "fsdp_offload")
VARIANT_SECONDS = 60.0  # each variant's cap (the sweep: its timed steps; MFU: its whole child process)


def _process_group(device: torch.device) -> bool:
    """A process group of one (NCCL on the GPU, gloo on CPU) for DDP and FSDP2 in this process; True
    when this call made it (the caller destroys it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    return True


def _sweep_run(ctx: Context, model_dir: Path, way: str) -> dict[str, Any]:
    """Full fine-tuning of the model at `model_dir` through tlsearch's pieces (the `full` strategy,
    DDP or the session's sharding, fused AdamW, bf16 autocast on the GPU), SWEEP_BATCH rows of
    SWEEP_SEQUENCE tokens a step, for up to VARIANT_SECONDS: whether it fits, its peak device memory
    and samples/s after the first step."""
    from torch.nn.parallel import DistributedDataParallel

    from tlsearch.models.sources import build_model
    from tlsearch.spec.model import FsdpSpec, ModelSpec
    from tlsearch.strategies.base import prepare
    from tlsearch.testing import preferred_trial_config
    from tlsearch.train.loop import seed_everything
    from tlsearch.train.sharding import shard

    on_gpu = ctx.device.type == "cuda"
    seed_everything(0)
    spec = ModelSpec(
        source="hf",
        name=str(model_dir),
        task="text-classification",
        max_length=SWEEP_SEQUENCE,
        pretrained=False,
    )
    loaded = build_model(spec, 2)
    prepared = prepare(loaded, preferred_trial_config("full", batch_size=SWEEP_BATCH))
    parameters = sum(p.numel() for p in prepared.model.parameters())
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    steps, started = 0, 0.0
    try:
        if way == "ddp":
            model: torch.nn.Module = DistributedDataParallel(
                prepared.model.to(ctx.device), device_ids=[ctx.device.index] if on_gpu else None
            )
        else:
            blocks = [loaded.model.get_submodule(p) for p in loaded.layers.block_prefixes]
            model = shard(prepared.model, blocks, FsdpSpec(cpu_offload=way == "fsdp_offload"), ctx.device)
        optimizer = torch.optim.AdamW(prepared.optimizer_groups(model), fused=True)
        ids = torch.randint(1, 10, (SWEEP_BATCH, SWEEP_SEQUENCE), device=ctx.device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        target = torch.randint(0, 2, (SWEEP_BATCH,), device=ctx.device)
        model.train()
        limit = VARIANT_SECONDS if not ctx.dry_run else 0.5
        while steps < 30:
            if steps == 1:  # the first step allocates gradients and AdamW's state
                if on_gpu:
                    torch.cuda.synchronize()
                started = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                loss = torch.nn.functional.cross_entropy(loaded.source.logits(model, batch).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps > 1 and time.perf_counter() - started > limit:
                break
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        out: dict[str, Any] = {"fits": True, "samples_per_s": round(SWEEP_BATCH * (steps - 1) / seconds, 2)}
    except torch.OutOfMemoryError as exc:
        out = {"fits": False, "error": str(exc).splitlines()[0][:200]}
    out.update(parameters=parameters, steps=steps)
    if on_gpu:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def check_fsdp_memory_sweep(ctx: Context) -> dict[str, Any]:
    """With the GPU's memory capped at SWEEP_CAP_GIB: full fine-tuning of BERT shapes from 0.1 to 0.5 B
    parameters, replicated (DDP), sharded (FSDP2) and sharded with CPU offload, at the same batch; the
    largest that trains each way, and FSDP's throughput over DDP's where both fit. One GPU: a process
    group of one, so sharding divides nothing here (tests/train/test_sharding.py and benchmarks/fsdp.py
    measure the division over workers); what this shows is the memory CPU offload frees and what
    FSDP2's gathering and offload cost in time. A way that does not fit a size skips the larger ones."""
    import torch.distributed as dist

    from tlsearch.testing import make_tiny_bert

    on_gpu = ctx.device.type == "cuda"
    if on_gpu:
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, SWEEP_CAP_GIB * 2**30 / total), ctx.device)
    made = _process_group(ctx.device)
    runs: dict[str, dict[str, Any]] = {}
    try:
        failed: set[str] = set()
        for layers, hidden, heads in DRY_SWEEP if ctx.dry_run else SWEEP:
            name = f"{layers}x{hidden}"
            model_dir = make_tiny_bert(
                ctx.scratch / f"bert-{name}",
                layers=layers,
                hidden=hidden,
                heads=heads,
                intermediate=4 * hidden,
                max_positions=SWEEP_SEQUENCE,
                weights=False,
            )
            runs[name] = {}
            for way in SWEEP_WAYS:
                if way in failed:
                    runs[name][way] = {"fits": False, "skipped": "a smaller size did not fit"}
                    continue
                runs[name][way] = _sweep_run(ctx, model_dir, way)
                if not runs[name][way]["fits"]:
                    failed.add(way)
                print(f"  sweep {name} {way}: {runs[name][way]}", flush=True)
                release()
    finally:
        if made:
            dist.destroy_process_group()
        if on_gpu:
            torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)

    def largest(way: str) -> int | None:
        fitting = [r[way]["parameters"] for r in runs.values() if r[way].get("fits")]
        return max(fitting) if fitting else None

    both = [r for r in runs.values() if r["ddp"].get("fits") and r["fsdp"].get("fits")]
    return {
        "cap_gib": SWEEP_CAP_GIB if on_gpu else None,
        "batch_size": SWEEP_BATCH,
        "sequence_length": SWEEP_SEQUENCE,
        "runs": runs,
        **{f"largest_params_{way}": largest(way) for way in SWEEP_WAYS},
        "fsdp_vs_ddp_throughput_one_gpu": [
            round(r["fsdp"]["samples_per_s"] / r["ddp"]["samples_per_s"], 3) for r in both
        ],
    }


# ViT-B/16 training-step variants toward 40% MFU, in the order of what each is expected to add. Each
# runs in a child process of its own (a clean compile cache and allocator) capped at VARIANT_SECONDS,
# max-autotune at twice that (its GEMM autotuning alone can take minutes): a variant past its cap is
# recorded as such.
MFU_VARIANTS = {
    "compiled_b256": {"batch": 256, "mode": None, "bf16_params": False},
    "compiled_b256_bf16_params": {"batch": 256, "mode": None, "bf16_params": True},
    "cuda_graphs_b256_bf16_params": {"batch": 256, "mode": "reduce-overhead", "bf16_params": True},
    "max_autotune_b256_bf16_params": {"batch": 256, "mode": "max-autotune", "bf16_params": True},
}


def mfu_variant(name: str, device: torch.device, sizes: Sizes, dry_run: bool) -> dict[str, Any]:
    """One variant's images/s and MFU over 20 timed steps (2 in a dry run) after 3 warm-up steps:
    timm's ViT-B/16 fully fine-tuned on one batch on the device, fused AdamW. `bf16_params`: the
    model's parameters in bf16 (no per-step casts under autocast) with fp32 master weights that AdamW
    updates and copies back; otherwise fp32 parameters under bf16 autocast, as trials train."""
    import timm

    variant = MFU_VARIANTS[name]
    batch = variant["batch"] if not dry_run else 2 * sizes.batch_size
    on_gpu = device.type == "cuda"
    model = timm.create_model(
        sizes.model, pretrained=False, num_classes=sizes.classes, img_size=sizes.image_size
    )
    model = model.to(device).train()
    x = torch.randn(batch, 3, sizes.image_size, sizes.image_size, device=device)
    y = torch.randint(0, sizes.classes, (batch,), device=device)
    flops = forward_flops_x3(model, x[:2])
    params = [p for p in model.parameters() if p.requires_grad]
    if variant["bf16_params"]:
        master = [p.detach().clone().float() for p in params]
        model.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
        optimizer = torch.optim.AdamW(master, lr=1e-4, fused=True)
    else:
        master = params
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    # Dry run: no mode (the CPU's compile takes none beside aot_eager, _compile_without_codegen).
    model.compile(**({"mode": variant["mode"]} if variant["mode"] and not dry_run else {}))

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu and not variant["bf16_params"]):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        if variant["bf16_params"]:  # the bf16 gradients onto the fp32 masters, the update back
            for m, p in zip(master, params, strict=True):
                m.grad = p.grad.float() if p.grad is not None else None
                p.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_copy_(params, master)
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    steps = 2 if dry_run else 20
    warm_start = time.time()
    for _ in range(3):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    for _ in range(steps):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    img_s = batch * steps / (time.time() - start)
    peak = dense_bf16_peak(torch.cuda.get_device_name(device)) if on_gpu else None
    return {
        "batch_size": batch,
        "img_s": round(img_s, 1),
        "mfu": round(img_s * flops / peak, 4) if peak else None,
        "warmup_s": round(start - warm_start, 1),
        "train_flops_per_image": flops,
        **({"max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)} if on_gpu else {}),
    }


def check_vit_mfu_variants(ctx: Context) -> dict[str, Any]:
    """ViT-B/16 full fine-tuning at 224 px toward 40% of the chip's dense bf16 peak: the step of
    vit_b16_model_only (compiled, fused AdamW) at batch 256, then with bf16 parameters and fp32 master
    weights, then CUDA graphs (`reduce-overhead`), then `max-autotune`; each variant's images/s, MFU
    and warm-up (compile) time, or that it ran past its cap."""
    variants: dict[str, Any] = {}
    for name, variant in MFU_VARIANTS.items():
        if ctx.dry_run and variant["mode"]:
            variants[name] = {
                "status": "skipped",
                "why": "a compile mode of the GPU's (the dry run's is aot_eager)",
            }
            continue
        cap = VARIANT_SECONDS * (2 if "autotune" in name else 1) * (5 if ctx.dry_run else 1)
        command = [sys.executable, str(Path(__file__).resolve()), "--mfu-variant", name]
        if ctx.dry_run:
            command.append("--dry-run")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=cap, cwd=ROOT)
        except subprocess.TimeoutExpired:
            variants[name] = {"status": "past its cap", "cap_s": cap}
        else:
            if done.returncode == 0:
                variants[name] = {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}
            else:
                variants[name] = {"status": "error", "error": (done.stderr or done.stdout)[-1500:]}
        print(f"  mfu {name}: {variants[name]}", flush=True)
    measured = [v["mfu"] for v in variants.values() if v.get("mfu") is not None]
    return {"variants": variants, "best_mfu": max(measured) if measured else None}


CHECKS: list[tuple[str, Callable[[Context], dict[str, Any]]]] = [
    ("vit_b16_full", check_vit_eager),
    ("trial_overhead", check_trial_overhead),
    ("vit_b16_full_compile", check_vit_compile),
    ("loop_vs_plain", check_loop_vs_plain),
    ("vit_b16_model_only", check_model_only),
    ("device_busy", check_device_busy),
    ("fsdp_memory_sweep", check_fsdp_memory_sweep),
    ("vit_b16_mfu_variants", check_vit_mfu_variants),
]
# Run only when named in --only: device_busy repeats trial_overhead's busy search alone.
OPT_IN = {"device_busy"}


def default_checks() -> list[str]:
    return [name for name, _ in CHECKS if name not in OPT_IN]


def environment(device: torch.device, gpu_name: str) -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for lib in ("torch", "timm", "transformers", "peft", "ray", "optuna"):
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    # TLSEARCH_GIT_SHA first: the device machine's copy of the tree may carry a stale .git.
    sha = (
        os.environ.get("TLSEARCH_GIT_SHA")
        or subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    return {
        "gpu_name": gpu_name,
        "device": str(device),
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "shm_free_gib": round(shm_gib(), 1),
        "git_sha": sha or "unknown",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions,
    }


def headline(parts: dict[str, dict[str, Any]], gpu_name: str) -> dict[str, Any]:
    runs = [parts[n] for n in ("vit_b16_full", "vit_b16_full_compile") if parts.get(n, {}).get("img_s")]
    best = max(runs, key=lambda r: r["img_s"]) if runs else {}
    return {
        "gpu_name": gpu_name,
        "vit_b16_full_img_s": best.get("img_s"),
        "vit_b16_full_mfu": best.get("mfu"),
        "vit_b16_full_compile": best.get("compile"),
        "train_vs_plain_throughput_gpu": parts.get("loop_vs_plain", {}).get("ratio_median"),
        "trial_overhead_s_gpu": parts.get("trial_overhead", {}).get("trial_overhead_s"),
        "trial_handoff_s_gpu": parts.get("trial_overhead", {}).get("trial_handoff_s"),
        # The busy search alone when a run measured it (a later run than trial_overhead's).
        "device_busy_fraction_gpu": parts.get("device_busy", {}).get("device_busy_fraction")
        or parts.get("trial_overhead", {}).get("device_busy_fraction"),
        # Issue 25: the best step variant's MFU, and the largest model each way trains when capped.
        "vit_b16_best_variant_mfu": parts.get("vit_b16_mfu_variants", {}).get("best_mfu"),
        **{
            f"sweep_largest_params_{way}": parts.get("fsdp_memory_sweep", {}).get(f"largest_params_{way}")
            for way in SWEEP_WAYS
        },
    }


def run(ctx: Context, names: list[str]) -> dict[str, Any]:
    (ctx.out / "checks").mkdir(parents=True, exist_ok=True)
    env = environment(ctx.device, ctx.gpu_name)
    print(
        f"[gpu] {ctx.gpu_name}; torch {env['versions']['torch']}, CUDA {env['cuda']}; {env['cpus']} CPUs",
        flush=True,
    )
    parts: dict[str, dict[str, Any]] = {}
    started = time.time()
    for name, check in CHECKS:
        if name not in names:
            continue
        if ctx.budget_s is not None and time.time() - started > ctx.budget_s:
            parts[name] = {"status": "skipped", "why": f"past the {ctx.budget_s:.0f} s budget"}
            print(f"[gpu] {name}: skipped (past the budget)", flush=True)
            continue
        print(f"[gpu] {name} ...", flush=True)
        start = time.time()
        try:
            part = {"status": "ok", **check(ctx)}
        except Exception as exc:  # one failing check must not cost the others' figures
            part = {
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        part["seconds"] = round(time.time() - start, 1)
        parts[name] = part
        (ctx.out / "checks" / f"{name}.json").write_text(json.dumps(part, indent=2, default=str) + "\n")
        shown = {k: v for k, v in part.items() if k not in ("traceback", "note")}
        print(f"[gpu] {name}: {json.dumps(shown, default=str)}", flush=True)
        release()
    results = {
        **headline(parts, ctx.gpu_name),
        "dry_run": ctx.dry_run,
        "wall_s": round(time.time() - started, 1),
        "environment": env,
        "checks": parts,
    }
    (ctx.out / "gpu_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def record(paths: list[Path]) -> None:
    """File GPU runs under benchmarks/results/gpu_results.json and refresh summary.json. Several runs
    (e.g. one that ran out of its time budget, then `--only` the skipped checks) merge: each check is
    taken from the last run that ran it, and the headline is recomputed from the merged checks. Runs
    of another chip than the recorded file's become the new gpu_results.json (summary.json's GPU
    figures) and the earlier chip's file is kept as gpu_results_<chip>.json; recording that chip
    again takes that file among the paths (it merges back into gpu_results.json)."""
    from benchmarks._common import RESULTS
    from benchmarks.summary import refresh

    runs = []
    for path in paths:
        source = path / "gpu_results.json" if path.is_dir() else path
        results = json.loads(source.read_text())
        if results.get("dry_run"):
            raise SystemExit(f"{source} is a dry run: only GPU runs are recorded")
        runs.append(results)
    if len({r["gpu_name"] for r in runs}) > 1:
        raise SystemExit(
            f"runs on different GPUs do not merge: {sorted({r['gpu_name'] for r in runs})}; record a new"
            " chip's runs alone (the recorded file of another chip is kept as gpu_results_<chip>.json)"
        )
    checks: dict[str, dict[str, Any]] = {}
    for run_results in runs:
        env = run_results["environment"]
        for name, part in run_results["checks"].items():
            if part.get("status") != "skipped" or name not in checks:
                # A recorded (merged) file's checks keep the run and commit they came from.
                checks[name] = {"run": env["date"], "git_sha": env["git_sha"], **part}
    checks = {name: checks[name] for name, _ in CHECKS if name in checks}
    first, last = runs[0], runs[-1]
    merged = {
        "benchmark": "gpu",
        "command": "bash benchmarks/gpu/run.sh",
        "date": last["environment"]["date"],
        "git_sha": last["environment"]["git_sha"],
        **headline(checks, first["gpu_name"]),
        "dry_run": False,
        "wall_s": round(sum(r["wall_s"] for r in runs), 1),
        "runs": [
            past
            for r in runs
            for past in r.get("runs")  # a recorded file lists the runs merged into it
            or [{"date": r["environment"]["date"], "wall_s": r["wall_s"], "checks": list(r["checks"])}]
        ],
        "environment": last["environment"],
        "checks": checks,
    }
    target = RESULTS / "gpu_results.json"
    own = RESULTS / f"gpu_results_{gpu_slug(first['gpu_name'])}.json"  # this chip's figures, if kept
    given = {path.resolve() for path in paths}
    if own.exists() and own.resolve() not in given:
        raise SystemExit(f"{own} holds earlier {first['gpu_name']} runs: record them too (--record {own} …)")
    if target.exists():
        previous = json.loads(target.read_text())
        if previous["gpu_name"] != first["gpu_name"]:
            # The latest GPU's figures head the summary; another chip's stay on file, never lost.
            kept = RESULTS / f"gpu_results_{gpu_slug(previous['gpu_name'])}.json"
            if kept.exists():
                raise SystemExit(f"{kept} exists: merge {target} into it first (--record {kept} {target})")
            target.rename(kept)
            print(f"{previous['gpu_name']}'s figures: {kept}")
    target.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    own.unlink(missing_ok=True)  # merged into the target
    refresh()
    print(target)


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3' (a file-name part)."""
    return re.sub(r"[^a-z0-9]+", "_", gpu_name.lower()).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny models: the same code paths, < 1 min"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default $OUT, else a temp dir)"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated check names: " + ", ".join(n for n, _ in CHECKS)
    )
    parser.add_argument("--batch-size", type=int, default=None, help="ViT-B/16 batch (default 128)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="start no check after this many seconds (skipped)"
    )
    parser.add_argument(
        "--busy-trials",
        type=int,
        default=None,
        help=f"trials in device_busy's search (default 3, {DRY_RUN_TRIALS} in a dry run; about a minute "
        "each on an H100)",
    )
    parser.add_argument(
        "--record",
        type=Path,
        nargs="+",
        default=None,
        help="file GPU runs' gpu_results.json (several merge, the last run of a check wins) and stop",
    )
    parser.add_argument("--mfu-variant", default=None, choices=sorted(MFU_VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mfu_variant is not None:  # a child of vit_b16_mfu_variants: its figures on stdout
        if args.dry_run:
            _compile_without_codegen()
        device = torch.device("cpu" if args.dry_run else "cuda:0")
        print(json.dumps(mfu_variant(args.mfu_variant, device, DRY if args.dry_run else FULL, args.dry_run)))
        return
    if args.record is not None:
        try:
            record(args.record)
        except SystemExit as refused:  # bad input: one message and exit code 2, nothing written
            if isinstance(refused.code, str):
                parser.error(refused.code)
            raise
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    names = default_checks() if args.only is None else args.only.split(",")
    unknown = set(names) - {n for n, _ in CHECKS}
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; known: {', '.join(n for n, _ in CHECKS)}")
    if args.busy_trials is None:
        args.busy_trials = DRY_RUN_TRIALS if args.dry_run else 3
    if args.busy_trials < 1:
        parser.error(f"--busy-trials must be at least 1, but got {args.busy_trials}")
    if args.dry_run:
        device, gpu_name = torch.device("cpu"), "cpu (dry run)"
        _compile_without_codegen()
    elif torch.cuda.is_available():
        device, gpu_name = torch.device("cuda:0"), torch.cuda.get_device_name(0)
    else:
        raise SystemExit("no CUDA GPU here: run with --dry-run for the CPU check of the code paths")
    out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="tlsearch-gpu-"))
    with tempfile.TemporaryDirectory(prefix="tlsearch-gpu-scratch-") as scratch:
        sizes = DRY if args.dry_run else FULL
        if args.batch_size is not None:
            sizes = replace(sizes, batch_size=args.batch_size)
        ctx = Context(
            args.dry_run,
            out,
            device,
            gpu_name,
            sizes,
            Path(scratch),
            budget_s=args.budget_s,
            busy_trials=args.busy_trials,
        )
        results = run(ctx, names)
    print(f"[gpu] wrote {out / 'gpu_results.json'} in {results['wall_s']} s")
    failed = [n for n, p in results["checks"].items() if p["status"] == "error"]
    if failed:
        raise SystemExit(f"[gpu] checks failed: {', '.join(failed)}")


def _compile_without_codegen() -> None:
    """Dry run: torch.compile traces with dynamo and AOTAutograd as on the GPU but skips inductor's
    code generation (C++ compilation would take minutes on a small CPU)."""
    compile_module = torch.nn.Module.compile

    def compile_aot_eager(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backend", "aot_eager")
        compile_module(self, *args, **kwargs)

    torch.nn.Module.compile = compile_aot_eager  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
