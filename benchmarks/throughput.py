"""Steady-state training throughput: tlsearch's loop against a plain PyTorch loop (issue 5, target 3).

    .venv/bin/python benchmarks/throughput.py            # full size, 8 min on 2 cores: throughput.json
    .venv/bin/python benchmarks/throughput.py --quick    # tiny sizes, 1 min: throughput_quick.json
    .venv/bin/python benchmarks/throughput.py --parts compile --name throughput_compile
                                                         # torch.compile against eager (slow on CPUs)

Each case trains the same model (tlsearch's model source and strategy: same weights, same AdamW
parameter groups), on the same data, batch size, autocast and gradient clipping, two ways, each side
in processes of its own:

- ours: `setup_training` + `train_epoch` from tlsearch/train/loop.py, the two functions `train_trial`
  runs in every trial, so loaders, memory format, fused AdamW, host memory settings, scheduler and
  the per-epoch loss read-back are what trials get. One worker: as a single-worker trial runs, on a
  thread of its own (Tune's function runner) with the Tune runner's device handling (`TuneSession`),
  without Ray's start-up. Two workers: Ray Train DDP (`TorchTrainer`, `TrainSession`,
  `prepare_model`; Ray Train too runs the loop on a thread) on a local Ray cluster started once.
- plain: a loop written by hand around the same model (`DataLoader`, AdamW, `LambdaLR`, autocast,
  `clip_grad_norm_`; no loss bookkeeping at all) in the main thread of a process per rank started by
  `torch.multiprocessing`; two workers: `torch.distributed` DDP over gloo. Both sides run at the
  scheduling priority Ray gives its workers (niceness 15), so that other work on a shared machine
  slows both alike.

What is timed: whole training epochs (samples/s; no evaluation, no checkpoints, no start-up), after
warm-up epochs. Whole epochs rather than single steps because the loop synchronises with the device
once per epoch: timing single steps would add synchronisations the loop does not have. Both sides are
set up side by side and take turns epoch by epoch (ours, plain, then plain, ours, ...; each group
waits for its turn on a file), so a machine shared with other work disturbs both alike, seconds
apart. A case's figure is the median over timed epoch pairs of (ours samples/s) / (plain samples/s);
`train_vs_plain_throughput` is the smallest of them over the cases.

Extras measured the same way: our loop with freed host memory kept in the process
(`training.keep_host_memory`, the default) against glibc's defaults, for the CNN on one and two
workers (on a thread glibc drops the step's buffers from its arena every step: the 2-worker CNN ran at
0.94x plain before the setting); channels-last against the contiguous layout for the CNN and fused
AdamW against the per-tensor loop (optimizer step alone), in this process; and (--parts compile)
torch.compile against eager.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from tlsearch.data.datasets import ImageDataset, load_split
from tlsearch.data.tables import DataFiles
from tlsearch.models.sources import build_model
from tlsearch.space.trial_config import TrialConfig
from tlsearch.strategies.base import prepare
from tlsearch.testing import trial_config
from tlsearch.train import process_cache
from tlsearch.train.inputs import RunContext, TrialInputs
from tlsearch.train.loop import (
    build_datasets,
    loader_workers,
    setup_training,
    train_epoch,
    use_channels_last,
)
from tlsearch.train.session import TuneSession

EpochFn = Callable[[int], int]  # trains epoch `index`, returns the samples it saw
# Trains epoch `index` and says (samples, seconds) for the whole group: samples summed over the
# ranks, seconds of the slowest rank.
TimedEpochFn = Callable[[int], tuple[int, float]]
RAY_WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", "15"))  # noqa: SIM112 (Ray spells it so)
TURN_TIMEOUT_S = 1800.0


def full_finetuning(batch_size: int) -> TrialConfig:
    return trial_config(
        "full",
        head_lr=1e-3,
        weight_decay=0.05,
        warmup_fraction=0.1,
        batch_size=batch_size,
        backbone_lr=1e-4,
        layer_decay=0.75,
    )


@dataclass(frozen=True)
class Case:
    name: str
    model: dict[str, Any]  # the spec's `model` section
    data: dict[str, Any]  # the spec's `data` section (without max_train_samples)
    config: TrialConfig
    samples_per_worker: int  # training rows per worker: steps per epoch = this / batch size
    timed_epochs: int
    warmup_epochs: int = 1
    training: dict[str, Any] = field(default_factory=dict)  # the spec's `training` section

    @property
    def epochs(self) -> int:
        return self.warmup_epochs + self.timed_epochs

    def spec(self, workers: int, cpus: float, use_gpu: bool = False) -> Any:
        from tlsearch.spec import validate_spec

        data = dict(self.data)
        if "builtin" in data:
            data.update(max_train_samples=self.samples_per_worker * workers, max_validation_samples=10)
        return validate_spec(
            {
                "name": f"throughput-{self.name}",
                "seed": 0,
                "model": self.model,
                "data": data,
                "strategies": {self.config.strategy: {}},
                "search": {"num_samples": 1, "max_epochs": self.epochs, "scheduler": {"type": "fifo"}},
                "resources": {"workers_per_trial": workers, "cpus_per_worker": cpus, "use_gpu": use_gpu},
                "training": self.training,
            }
        )


def timm_model(name: str, image_size: int, pretrained: bool = False) -> dict[str, Any]:
    task = "image-classification"
    return {"source": "timm", "name": name, "task": task, "pretrained": pretrained, "image_size": image_size}


def case_inputs(
    case: Case, workers: int, cpus: float, root: Path, *, use_gpu: bool = False, data: DataFiles | None = None
) -> TrialInputs:
    """What a trial of this case would receive. `data` replaces the builtin data (synthetic inputs)."""
    spec = case.spec(workers, cpus, use_gpu)
    if data is None:
        from tlsearch.search.resolve import resolve_data  # imports Optuna: not needed with `data`

        data, _ = resolve_data(spec, root / case.data.get("builtin", case.name), reuse=True)
    return TrialInputs(
        RunContext(str(root), spec, data, use_gpu), case.config, f"bench-{case.name}", time.time()
    )


# --- timing ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(epoch: EpochFn, device: torch.device) -> TimedEpochFn:
    def run(index: int) -> tuple[int, float]:
        _sync(device)
        start = time.perf_counter()
        seen = epoch(index)
        _sync(device)
        return seen, time.perf_counter() - start

    return run


def group_totals(seen: int, seconds: float, world_size: int, device: torch.device) -> tuple[int, float]:
    """Samples summed over the ranks, seconds of the slowest rank."""
    if world_size == 1:
        return seen, seconds
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    samples = torch.tensor([float(seen)], dtype=torch.float64, device=on)
    slowest = torch.tensor([seconds], dtype=torch.float64, device=on)
    dist.all_reduce(samples)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return int(samples.item()), float(slowest.item())


def _rate(epochs: list[tuple[int, float]]) -> float:
    return sum(s for s, _ in epochs) / sum(t for _, t in epochs)


def alternate(candidate: TimedEpochFn, baseline: TimedEpochFn, case: Case, label: str) -> dict[str, Any]:
    """Epoch by epoch: candidate, baseline, then baseline, candidate, ... Each side's epoch is timed
    alone; the ratio of each timed pair compares two epochs run seconds apart."""
    ours: list[tuple[int, float]] = []
    base: list[tuple[int, float]] = []
    for index in range(case.epochs):
        order = [(candidate, ours), (baseline, base)]
        for run, into in order if index % 2 == 0 else reversed(order):
            into.append(run(index))
        if index >= case.warmup_epochs:
            print(
                f"  {label} epoch {index + 1}/{case.epochs}: {_rate(ours[-1:]):9.2f} vs "
                f"{_rate(base[-1:]):9.2f} samples/s (ratio {_rate(ours[-1:]) / _rate(base[-1:]):.3f})",
                flush=True,
            )
    w = case.warmup_epochs
    ratios = [_rate([o]) / _rate([b]) for o, b in zip(ours[w:], base[w:], strict=True)]
    return {
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_of_totals": round(_rate(ours[w:]) / _rate(base[w:]), 4),
        "ratios": [round(r, 4) for r in ratios],
        "candidate_samples_per_s": round(_rate(ours[w:]), 3),
        "baseline_samples_per_s": round(_rate(base[w:]), 3),
        "candidate_first_epoch_s": round(ours[0][1], 2),  # torch.compile compiles in it
        "baseline_first_epoch_s": round(base[0][1], 2),
        "timed_epochs": len(ratios),
        "timed_samples_per_side": sum(s for s, _ in ours[w:]),
    }


def alone(run: TimedEpochFn, case: Case) -> dict[str, Any]:
    epochs = [run(index) for index in range(case.epochs)]
    steady = epochs[case.warmup_epochs :]
    return {
        "samples_per_s": _rate(steady),
        "timed_samples": sum(s for s, _ in steady),
        "first_epoch_s": epochs[0][1],
        "steady_epoch_s": sum(t for _, t in steady) / len(steady),
    }


def release() -> None:
    gc.collect()  # DataLoader worker processes end with their loader
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- ours: the trial loop's own functions ---------------------------------------------------


def ours_epochs(
    inputs: TrialInputs, session: Any, datasets: tuple[Dataset, Dataset] | None = None
) -> EpochFn:
    """`datasets` (synthetic ones) stand in for the trial's files: they are what its process keeps as
    the search's data sets (tlsearch/train/process_cache.py), as a reused trial process would."""
    if datasets is not None:
        key = process_cache.dataset_key(inputs.run.data, inputs.run.spec.model)
        process_cache.clear()
        process_cache.datasets(key, lambda: datasets)
    training = setup_training(inputs, session)

    def epoch(index: int) -> int:
        loss_sum, seen = train_epoch(training, index)
        loss_sum.item()  # the loop reads the epoch's loss once, as train_trial does
        return seen

    return epoch


def ours_here(inputs: TrialInputs, datasets: tuple[Dataset, Dataset] | None = None) -> TimedEpochFn:
    """One worker, in this process, with the single-worker runner's device handling."""
    session = TuneSession(inputs.run.use_gpu)
    return timed(ours_epochs(inputs, session, datasets), session.device)


# --- plain: a hand-written PyTorch loop around the same model --------------------------------


class FloatImages(ImageDataset):
    """Images as a plain loop feeds them: timm's float pipeline (ToTensor + Normalize per image),
    stacked by torch's default collate."""

    collate = staticmethod(default_collate)


def plain_datasets(inputs: TrialInputs, loaded: Any) -> tuple[Dataset, Dataset]:
    """Text as trials have it (tokenised up front); images through the float pipeline, where trials
    move uint8 pixels and normalise them on the device (tlsearch/train/batches.py)."""
    if inputs.run.data.input_kind == "text":
        return build_datasets(inputs, loaded)
    from timm.data import create_transform

    transform = create_transform(**loaded.preprocessing, is_training=False)
    train, validation = (load_split(inputs.run.data, split) for split in ("train", "validation"))
    return FloatImages(train, transform), FloatImages(validation, transform)


def plain_epochs(
    inputs: TrialInputs,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    datasets: tuple[Dataset, Dataset] | None = None,
) -> EpochFn:
    spec, config = inputs.run.spec, inputs.config
    torch.manual_seed(spec.seed)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    loaded = build_model(spec.model, inputs.run.num_classes)
    prepared = prepare(loaded, config)  # the same model and AdamW parameter groups as a trial's
    model = prepared.model
    memory_format = torch.preserve_format
    if use_channels_last(spec.training.channels_last, loaded):  # the same layout as a trial's
        memory_format = torch.channels_last
        model = model.to(memory_format=memory_format)
    model = model.to(device)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_gpu else None
        )
    train_set = datasets[0] if datasets is not None else plain_datasets(inputs, loaded)[0]
    workers = loader_workers(inputs.run)
    sampler = (
        DistributedSampler(train_set, world_size, rank, shuffle=True, seed=spec.seed)
        if world_size > 1
        else None
    )
    loader = DataLoader(
        train_set,
        batch_size=config.common.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=train_set.collate,  # type: ignore[attr-defined]
        num_workers=workers,
        pin_memory=on_gpu,
        persistent_workers=workers > 0,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(prepared.optimizer_groups(prepared.model), fused=True)
    total = len(loader) * spec.search.max_epochs
    warm = round(config.common.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
        ),
    )
    clip = spec.training.grad_clip_norm

    def epoch(index: int) -> int:
        if sampler is not None:
            sampler.set_epoch(index)
        model.train()
        for module in prepared.frozen_modules:
            module.eval()
        seen = 0
        for batch, target in loader:
            target = target.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                if isinstance(batch, dict):
                    logits = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).logits
                else:
                    logits = model(batch.to(device, non_blocking=True, memory_format=memory_format))
                loss = F.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            scheduler.step()
            seen += target.shape[0]
        return seen

    return epoch


def plain_here(inputs: TrialInputs, datasets: tuple[Dataset, Dataset] | None = None) -> TimedEpochFn:
    device = torch.device("cuda:0" if inputs.run.use_gpu else "cpu")
    return timed(plain_epochs(inputs, device, datasets=datasets), device)


# --- two-worker groups that take turns ------------------------------------------------------


def follow_turns(
    epoch: EpochFn, device: torch.device, rank: int, world_size: int, folder: Path, epochs: int
) -> None:
    """A group's side of the turn-taking: announce readiness, then train epoch i when `go-i` exists
    and leave the group's (samples, seconds) in `done-i.json`."""
    run = timed(epoch, device)
    if world_size > 1:
        dist.barrier()
    if rank == 0:
        (folder / "ready").write_text(json.dumps({"niceness": os.nice(0)}))
    for index in range(epochs):
        while not (folder / f"go-{index}").exists():
            time.sleep(0.005)
        seen, seconds = group_totals(*run(index), world_size, device)
        if rank == 0:
            part_file = folder / f"done-{index}.part"
            part_file.write_text(json.dumps({"samples": seen, "seconds": seconds}))
            part_file.rename(folder / f"done-{index}.json")


class Group:
    """A training group running elsewhere (Ray Train workers, spawned processes), driven epoch by
    epoch through files in `folder`."""

    def __init__(self, folder: Path, alive: Callable[[], str | None]):
        self.folder, self.alive = folder, alive  # alive(): None, or why the group is gone
        self.niceness: int | None = None

    def _wait_for(self, path: Path) -> None:
        deadline = time.time() + TURN_TIMEOUT_S
        while not path.exists():
            failure = self.alive()
            if failure is not None or time.time() > deadline:
                raise RuntimeError(f"training group in {self.folder} stopped: {failure or 'timed out'}")
            time.sleep(0.005)

    def wait_ready(self) -> None:
        self._wait_for(self.folder / "ready")
        self.niceness = json.loads((self.folder / "ready").read_text())["niceness"]

    def epoch(self, index: int) -> tuple[int, float]:
        (self.folder / f"go-{index}").touch()
        self._wait_for(self.folder / f"done-{index}.json")
        result = json.loads((self.folder / f"done-{index}.json").read_text())
        return result["samples"], result["seconds"]


def _ray_train_worker(config: dict[str, Any]) -> None:
    from tlsearch.train.session import TrainSession

    inputs: TrialInputs = config["inputs"]
    session = TrainSession()
    epoch = ours_epochs(inputs, session)
    follow_turns(
        epoch,
        session.device,
        session.world_rank,
        session.world_size,
        Path(config["folder"]),
        config["epochs"],
    )


def ours_ray_train(inputs: TrialInputs, epochs: int, folder: Path) -> tuple[Group, Callable[[], None]]:
    """Our loop on Ray Train DDP workers, as a multi-worker trial runs it (fit() in a thread here)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    folder.mkdir(parents=True)
    r = inputs.run.spec.resources
    trainer = TorchTrainer(
        _ray_train_worker,
        train_loop_config={"inputs": inputs, "epochs": epochs, "folder": str(folder)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=False, resources_per_worker={"CPU": r.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(name=folder.name, storage_path=str(folder.parent / "ray")),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            result = trainer.fit()
            outcome["error"] = result.error
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()

    def alive() -> str | None:
        return None if thread.is_alive() else f"Ray Train run ended: {outcome.get('error')!r}"

    def finish() -> None:
        thread.join()
        if outcome.get("error") is not None:
            raise RuntimeError(f"Ray Train run failed: {outcome['error']!r}")

    return Group(folder, alive), finish


def _plain_ddp_worker(rank: int, inputs: TrialInputs, epochs: int, port: int, folder: str) -> None:
    # Ray starts its worker processes at niceness 15 (RAY_worker_niceness), below everything else on
    # the machine. The plain ranks take the same priority, so that other work on a shared machine
    # slows both sides alike; on a quiet machine priority changes nothing.
    os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))
    world_size = inputs.run.spec.resources.workers_per_trial
    if world_size > 1:
        address = f"tcp://127.0.0.1:{port}"
        dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
    try:
        device = torch.device("cpu")
        follow_turns(
            plain_epochs(inputs, device, rank, world_size), device, rank, world_size, Path(folder), epochs
        )
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _ours_tune_worker(rank: int, inputs: TrialInputs, epochs: int, folder: str) -> None:
    # As a single-worker trial runs: in a Ray worker process (niceness 15), on a thread of its own
    # (Tune's function runner), with the Tune runner's device handling.
    os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            session = TuneSession(inputs.run.use_gpu)
            follow_turns(ours_epochs(inputs, session), session.device, 0, 1, Path(folder), epochs)
        except BaseException as exc:  # re-raised in the process's main thread: the process fails
            failure.append(exc)

    thread = threading.Thread(target=run, name="trial-runner")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _spawn(
    target: Callable[..., None], args: tuple, nprocs: int
) -> tuple[Callable[[], str | None], Callable[[], None]]:
    import torch.multiprocessing as mp

    context = mp.start_processes(target, args=args, nprocs=nprocs, join=False, start_method="spawn")

    def alive() -> str | None:
        codes = [p.exitcode for p in context.processes]
        return None if all(c is None or c == 0 for c in codes) else f"processes exited with {codes}"

    def finish() -> None:
        while not context.join():
            pass

    return alive, finish


def ours_tune_process(inputs: TrialInputs, epochs: int, folder: Path) -> tuple[Group, Callable[[], None]]:
    """Our loop as a single-worker trial runs it, in a process of its own (without Ray's start-up)."""
    folder.mkdir(parents=True)
    alive, finish = _spawn(_ours_tune_worker, (inputs, epochs, str(folder)), 1)
    return Group(folder, alive), finish


def plain_ddp(inputs: TrialInputs, epochs: int, folder: Path) -> tuple[Group, Callable[[], None]]:
    """The plain loop in the main thread of a process per rank (torch.multiprocessing), under
    torch.distributed DDP for several ranks."""
    folder.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    alive, finish = _spawn(
        _plain_ddp_worker, (inputs, epochs, port, str(folder)), inputs.run.spec.resources.workers_per_trial
    )
    return Group(folder, alive), finish


def ours_as_trials_run(inputs: TrialInputs, epochs: int, folder: Path) -> tuple[Group, Callable[[], None]]:
    if inputs.run.spec.resources.workers_per_trial > 1:
        return ours_ray_train(inputs, epochs, folder)
    return ours_tune_process(inputs, epochs, folder)


def groups_case(
    candidate: tuple[Group, Callable[[], None]],
    baseline: tuple[Group, Callable[[], None]],
    case: Case,
    label: str,
) -> dict[str, Any]:
    """Two groups of processes taking turns epoch by epoch."""
    (first, finish_first), (second, finish_second) = candidate, baseline
    first.wait_ready()
    second.wait_ready()
    outcome = alternate(first.epoch, second.epoch, case, label)
    finish_first()
    finish_second()
    return {**outcome, "niceness": {"candidate": first.niceness, "baseline": second.niceness}}


def loop_case(inputs: TrialInputs, case: Case, scratch: Path, label: str) -> dict[str, Any]:
    stamp = time.time_ns()
    ours = ours_as_trials_run(inputs, case.epochs, scratch / f"ours-{stamp}")
    plain = plain_ddp(inputs, case.epochs, scratch / f"plain-{stamp}")
    return groups_case(ours, plain, case, label)


def with_training(case: Case, **training: Any) -> Case:
    return replace(case, training={**case.training, **training})


def host_memory_case(case: Case, workers: int, cpus: float, root: Path, label: str) -> dict[str, Any]:
    """Our loop with `training.keep_host_memory` (the default) against the same loop without it."""
    stamp = time.time_ns()
    kept, default = (
        ours_as_trials_run(
            case_inputs(with_training(case, keep_host_memory=keep), workers, cpus, root),
            case.epochs,
            root / f"{name}-{stamp}",
        )
        for keep, name in ((True, "kept"), (False, "default"))
    )
    return groups_case(kept, default, case, label)


# --- extras ---------------------------------------------------------------------------------


def fused_adamw_step(inputs: TrialInputs, steps: int = 10) -> dict[str, Any]:
    """Optimizer step alone over the case's parameter groups: fused (what the loop uses) against
    the per-tensor loop (PyTorch's CPU default)."""
    spec = inputs.run.spec
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    prepared = prepare(build_model(spec.model, inputs.run.num_classes), inputs.config)
    params = [p for g in prepared.optimizer_groups(prepared.model) for p in g["params"]]
    for p in params:
        p.grad = torch.randn_like(p)
    out: dict[str, list[float]] = {"fused": [], "for_loop": []}
    for _ in range(3):  # interleaved
        for name, options in (("fused", {"fused": True}), ("for_loop", {"foreach": False})):
            optimizer = torch.optim.AdamW(prepared.optimizer_groups(prepared.model), **options)
            optimizer.step()  # creates the state
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.step()
            out[name].append((time.perf_counter() - start) / steps * 1000)
    fused, loop = statistics.median(out["fused"]), statistics.median(out["for_loop"])
    return {"fused_ms": round(fused, 2), "for_loop_ms": round(loop, 2), "speedup": round(loop / fused, 2)}


# --- the cases ------------------------------------------------------------------------------


def cases(quick: bool) -> tuple[list[tuple[Case, int]], Case, Case]:
    """(case, workers) pairs for the loop-vs-plain figure, the CNN case for channels-last, and the
    text case for fused AdamW. Full size: the demo's model and batch (MiniLM-L6, 128 tokens, 16 per
    worker) and the vision example's CNN (EfficientNet-Lite0 with its shipped weights, 32 per worker),
    four steps per epoch."""
    text_model = {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"}
    text_model["max_length"] = 32 if quick else 128
    bbc, mnist = {"builtin": "bbc-news"}, {"builtin": "mnist-5k"}
    if quick:
        text = Case("text-minilm", text_model, bbc, full_finetuning(8), 32, timed_epochs=4)
        vision = Case("vision-test-vit", timm_model("test_vit", 64), mnist, full_finetuning(16), 64, 4)
        cnn = timm_model("test_efficientnet", 64)
        convnet = Case("vision-test-efficientnet", cnn, mnist, full_finetuning(16), 64, 4)
        return [(text, 1), (vision, 1), (vision, 2)], convnet, text
    text = Case("text-minilm", text_model, bbc, full_finetuning(16), 64, timed_epochs=8)
    effnet = timm_model("builtin:efficientnet-lite0", 128, pretrained=True)
    vision = Case("vision-efficientnet-lite0", effnet, mnist, full_finetuning(32), 128, timed_epochs=10)
    # Its 2-worker epochs last about a second per side on 2 cores: ten pairs spread 0.84-1.13, so it
    # takes three times as many for a median that resolves a few percent.
    vision_2w = replace(vision, timed_epochs=30)
    return [(text, 1), (vision, 1), (text, 2), (vision_2w, 2)], vision, text


def start_ray(cpus: float) -> None:
    import ray

    # A cluster of our own (address="local"), on loopback, with the dashboard a search would have.
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )


PARTS = ("loop", "host_memory", "channels_last", "fused_adamw", "compile")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (about a minute, plus Ray's start)")
    parser.add_argument(
        "--timed-epochs", type=int, default=None, help="timed epochs per side (default per case)"
    )
    parser.add_argument("--workers", default="1,2", help="worker counts for the loop part (default 1,2)")
    parser.add_argument("--cases", default="text,vision", help="which models (default text,vision)")
    parser.add_argument(
        "--parts",
        default="loop,host_memory,channels_last,fused_adamw",
        help=f"what to measure, of {','.join(PARTS)} (default: all but compile, which is slow on CPUs)",
    )
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="threads per worker (default 1)")
    parser.add_argument("--name", default=None, help="result file name (default throughput[_quick])")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}; known: {', '.join(PARTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    wanted = {int(w) for w in args.workers.split(",")}
    all_cases, convnet, text = cases(args.quick)
    if args.timed_epochs is not None:
        all_cases = [(replace(c, timed_epochs=args.timed_epochs), w) for c, w in all_cases]
        convnet = replace(convnet, timed_epochs=args.timed_epochs)
    kinds = set(args.cases.split(","))
    chosen = [(c, w) for c, w in all_cases if w in wanted and c.name.split("-")[0] in kinds]
    cpus = args.cpus_per_worker
    root = Path(tempfile.mkdtemp(prefix="tlsearch-throughput-"))
    load_before = os.getloadavg()
    started = time.time()

    def case_record(case: Case, **more: Any) -> dict[str, Any]:
        return {
            "model": case.model["name"],
            "batch_size_per_worker": case.config.common.batch_size,
            "steps_per_epoch": case.samples_per_worker // case.config.common.batch_size,
            "strategy": case.config.strategy,
            "warmup_epochs": case.warmup_epochs,
            **more,
        }

    results: list[dict[str, Any]] = []
    # One local Ray cluster for the Ray Train groups: the loop part runs one at a time, the host
    # memory part two side by side.
    ray_workers = [w for _, w in chosen if w > 1] if "loop" in parts else []
    if "host_memory" in parts:
        ray_workers += [2 * w for w in wanted if w > 1]
    if ray_workers:
        start_ray(max(ray_workers) * cpus)
    for case, workers in chosen if "loop" in parts else []:
        inputs = case_inputs(case, workers, cpus, root)
        label = f"{case.name}/{workers}w"
        print(f"[throughput] {label}: ours vs plain, {case.timed_epochs} timed epochs each", flush=True)
        outcome = loop_case(inputs, case, root, label)
        results.append({"case": label, "workers": workers, **case_record(case), **outcome})
        release()

    extras: dict[str, Any] = {}
    if "channels_last" in parts:
        print("[throughput] channels-last against contiguous (CNN, 1 worker)", flush=True)
        layouts = [replace(convnet, training={"channels_last": v}) for v in ("auto", False)]
        channels_last, contiguous = (ours_here(case_inputs(c, 1, cpus, root)) for c in layouts)
        extras["channels_last_vs_contiguous"] = case_record(
            convnet, **alternate(channels_last, contiguous, convnet, "channels-last")
        )
        del channels_last, contiguous
        release()
    if "host_memory" in parts:
        for workers in sorted(wanted):
            # the 2-worker CNN case's epochs are short and noisy: as many pairs as the loop part's
            case = next((c for c, w in all_cases if w == workers and c.name == convnet.name), convnet)
            label = f"host-memory/{case.name}/{workers}w"
            print(f"[throughput] {label}: freed host memory kept against glibc's defaults", flush=True)
            extras[f"host_memory_kept_vs_default/{workers}w"] = case_record(
                case, workers=workers, **host_memory_case(case, workers, cpus, root, label)
            )
            release()
    if "fused_adamw" in parts:
        print("[throughput] fused AdamW against the per-tensor loop (optimizer step alone)", flush=True)
        extras["fused_adamw_step"] = {
            "model": text.model["name"],
            **fused_adamw_step(case_inputs(text, 1, cpus, root)),
        }
    if "compile" in parts:
        for case in {c.name: c for c, _ in all_cases if c.name.split("-")[0] in kinds}.values():
            print(f"[throughput] torch.compile against eager: {case.name} (1 worker)", flush=True)
            compiled = ours_here(case_inputs(replace(case, training={"compile": True}), 1, cpus, root))
            eager = ours_here(case_inputs(case, 1, cpus, root))
            extras[f"compile_vs_eager/{case.name}"] = case_record(
                case, **alternate(compiled, eager, case, "compile")
            )
            del compiled, eager
            release()

    headline = min(r["ratio_median"] for r in results) if results else None
    figures = {
        "train_vs_plain_throughput": headline,
        "target": 0.98,
        "cases": results,
        "extras": extras,
        "quick": args.quick,
        "parts": parts,
        "cpus_per_worker": cpus,
        "wall_s": round(time.time() - started, 1),
        # How busy the machine was: the ratios are robust to it, the absolute samples/s are not.
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    from benchmarks._common import write_result
    from benchmarks.summary import refresh

    name = args.name or ("throughput_quick" if args.quick else "throughput")
    command = "python benchmarks/throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    path = write_result(name, figures, command.strip())
    if headline is not None and not args.quick and args.name is None:
        refresh()
    print(path)
    print(json.dumps({"train_vs_plain_throughput": headline, "wall_s": figures["wall_s"]}))


if __name__ == "__main__":
    main()
