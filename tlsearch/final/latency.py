"""Per-example latency of a model on the current device, for a PyTorch module and an onnxruntime
session alike (the same keys: `final/latency.json`, and both halves of `final/export.json`'s latency).

A call is timed from host arrays to host logits (inputs moved to the device and logits back, as a
server sees it; CUDA synchronised), after warm-up calls; per-example milliseconds are a call's time over
its rows. Batch 1 and a serving batch: p50 and p95 over the timed calls (20, fewer past 10 s: the
counts are `batch1_calls` and `serving_calls`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Inputs = dict[str, np.ndarray]  # one batch: the graph's input names -> arrays (batch axis first)

WARMUP = 3
REPEATS = 20
SERVING_BATCH = 32
# Timed calls stop early past this many seconds (after at least MIN_REPEATS): a large model on a CPU
# would otherwise spend minutes on serving batches.
BUDGET_S = 10.0
MIN_REPEATS = 5


def torch_latency(
    module: Any,
    batch1: Sequence[Inputs],
    serving: Sequence[Inputs],
    *,
    weights: Sequence[Path] = (),
    warmup: int = WARMUP,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """`module(**inputs)` -> logits, on the device its parameters are on; `size_on_disk_bytes` is that of
    the `weights` files (a final model's `*.safetensors`)."""
    import torch

    device = next(module.parameters()).device
    on_gpu = device.type == "cuda"

    def call(inputs: Inputs) -> Any:
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
            logits = module(**tensors).cpu()
        if on_gpu:
            torch.cuda.synchronize(device)
        return logits

    parameters = sum(p.numel() for p in module.parameters())
    times = _measure(call, batch1, serving, warmup=warmup, repeats=repeats)
    return times | {
        "runtime": f"pytorch {torch.__version__}",
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "parameters": int(parameters),
        "size_on_disk_bytes": sum(_size(path) for path in weights),
    }


def onnx_latency(
    session: Any,
    batch1: Sequence[Inputs],
    serving: Sequence[Inputs],
    *,
    size_path: Path,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """An onnxruntime InferenceSession of the ONNX file at `size_path` (its first output the logits).
    `parameters` counts the graph's initializer elements: the weights and the constant buffers."""
    import onnx
    import onnxruntime

    graph = onnx.load(str(size_path), load_external_data=False).graph
    parameters = sum(int(np.prod(t.dims)) for t in graph.initializer)
    times = _measure(
        lambda inputs: session.run(None, inputs)[0], batch1, serving, warmup=warmup, repeats=repeats
    )
    return times | {
        "runtime": f"onnxruntime {onnxruntime.__version__}",
        "device": session.get_providers()[0],
        "parameters": parameters,
        # The graph file and its external weights (`<name>.data`, written for graphs over 2 GB)
        "size_on_disk_bytes": _size(size_path) + _size(size_path.with_name(size_path.name + ".data")),
    }


def _measure(
    call: Callable[[Inputs], Any],
    batch1: Sequence[Inputs],
    serving: Sequence[Inputs],
    *,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    if not batch1 or not serving:
        raise ValueError("latency needs at least one batch of one row and one serving batch")
    sizes = {len(next(iter(batch.values()))) for batch in serving}
    if len(sizes) != 1 or any(len(next(iter(b.values()))) != 1 for b in batch1):
        raise ValueError("batch1 must hold single rows and every serving batch the same number of rows")
    serving_batch = sizes.pop()
    single = _per_example_ms(call, batch1, 1, warmup, repeats)
    many = _per_example_ms(call, serving, serving_batch, warmup, repeats)
    return {
        "batch1_p50_ms": float(np.percentile(single, 50)),
        "batch1_p95_ms": float(np.percentile(single, 95)),
        "serving_batch": serving_batch,
        "serving_p50_ms": float(np.percentile(many, 50)),
        "serving_p95_ms": float(np.percentile(many, 95)),
        "warmup": warmup,
        "batch1_calls": len(single),
        "serving_calls": len(many),
    }


def _per_example_ms(
    call: Callable[[Inputs], Any], batches: Sequence[Inputs], rows: int, warmup: int, repeats: int
) -> np.ndarray:
    for i in range(warmup):
        call(batches[i % len(batches)])
    out: list[float] = []
    began = time.perf_counter()
    for i in range(repeats):
        if i >= MIN_REPEATS and time.perf_counter() - began > BUDGET_S:
            break
        batch = batches[i % len(batches)]  # cycle through real rows: lengths differ for text
        start = time.perf_counter()
        call(batch)
        out.append((time.perf_counter() - start) * 1000 / rows)
    return np.asarray(out)


def _size(path: Path) -> int:
    """Bytes on disk of a file; 0 when there is none."""
    return path.stat().st_size if path.is_file() else 0
