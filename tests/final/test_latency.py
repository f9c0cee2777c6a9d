"""Latency measurements: the same keys for a PyTorch module and an onnxruntime session (no absolute
times: they depend on the machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tlsearch.final.latency import onnx_latency, torch_latency

KEYS = {
    "batch1_p50_ms",
    "batch1_p95_ms",
    "serving_batch",
    "serving_p50_ms",
    "serving_p95_ms",
    "warmup",
    "batch1_calls",
    "serving_calls",
    "runtime",
    "device",
    "parameters",
    "size_on_disk_bytes",
}


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


def batches(serving: int) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    singles = [{"features": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(4)]
    return singles, [{"features": rng.normal(size=(serving, 8)).astype(np.float32)} for _ in range(2)]


def linear_onnx(path: Path) -> Path:
    """y = x W + b as an ONNX graph built with onnx.helper (3 x 8 + 3 = 27 weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 3), dtype=np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(3, dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_torch_latency_keys(tmp_path: Path) -> None:
    module = Linear().eval()
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 123)
    singles, serving = batches(serving=5)
    result = torch_latency(
        module, singles, serving, weights=[weights, tmp_path / "absent"], warmup=1, repeats=6
    )
    assert set(result) == KEYS
    assert result["serving_batch"] == 5 and result["parameters"] == 8 * 3 + 3
    assert result["size_on_disk_bytes"] == 123 and result["device"] == "cpu"
    assert result["batch1_calls"] == result["serving_calls"] == 6
    assert 0 < result["batch1_p50_ms"] <= result["batch1_p95_ms"]
    assert 0 < result["serving_p50_ms"] <= result["serving_p95_ms"]


def test_onnx_latency_has_the_same_keys(tmp_path: Path) -> None:
    import onnxruntime

    path = linear_onnx(tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    singles, serving = batches(serving=4)
    result = onnx_latency(session, singles, serving, size_path=path, warmup=1, repeats=6)
    assert set(result) == KEYS
    assert result["parameters"] == 27 and result["size_on_disk_bytes"] == path.stat().st_size
    assert result["device"] == "CPUExecutionProvider" and result["serving_batch"] == 4
    assert 0 < result["batch1_p50_ms"] <= result["batch1_p95_ms"]
    assert 0 < result["serving_p50_ms"] <= result["serving_p95_ms"]


def test_batches_must_be_single_rows_and_one_serving_size() -> None:
    module = Linear().eval()
    singles, serving = batches(serving=4)
    with pytest.raises(ValueError, match="single rows"):
        torch_latency(module, serving, serving, repeats=2)
    with pytest.raises(ValueError, match="same number of rows"):
        torch_latency(module, singles, [*serving, *batches(serving=3)[1]], repeats=2)


def test_timed_calls_stop_at_the_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlsearch.final import latency

    monkeypatch.setattr(latency, "BUDGET_S", 0.0)
    singles, serving = batches(serving=4)
    result = torch_latency(Linear().eval(), singles, serving, warmup=0, repeats=50)
    assert result["batch1_calls"] == result["serving_calls"] == latency.MIN_REPEATS
