"""The final model as ONNX (`final/model.onnx`), checked against PyTorch in onnxruntime
(`final/export.json`). docs/final.md describes the graph for whoever serves it.

The graph (`serving_graph`) takes what the training loop feeds the model and returns its logits
(`logits`, float32, batch x classes):
- text: `input_ids`, `attention_mask` and, where the tokenizer gives them, `token_type_ids` (int64,
  batch x sequence, both axes dynamic): the tokenizer saved in `final/model/` with truncation to
  tlsearch.json's `max_length` and padding to the longest text of the batch.
- images: `pixels`, **uint8** RGB, batch x 3 x height x width (batch dynamic, the size fixed at
  tlsearch.json's data_config `input_size`): the image resized and centre-cropped by timm's eval
  transform of that data config (`create_transform(**data_config, is_training=False,
  use_prefetcher=True)`), not normalised. The normalisation, (pixels - 255 mean) / (255 std) with the
  data config's mean and std, is inside the graph, as the training loop does it on the device
  (tlsearch/train/batches.py): a server passes the cropped pixels and cannot get it wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlsearch.data.datasets import ImageDataset, Split, TextDataset
from tlsearch.errors import UserInputError
from tlsearch.final.evaluation import accuracy_of, confusion_counts
from tlsearch.final.latency import SERVING_BATCH, Inputs, onnx_latency, torch_latency
from tlsearch.final.model_dir import FinalModel, load_final_model
from tlsearch.models.sources import SOURCES
from tlsearch.train.batches import ToDevice

FINAL_DIR = "final"
MODEL_DIR = "model"
ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_INPUT = "pixels"
OUTPUT = "logits"
MAX_ABS_DIFF = 1e-4  # fp32 logits, PyTorch against onnxruntime
MARGIN = 1e-4  # rows whose top-2 logits are closer than this may flip either way: not counted
PARITY_BATCH = 32


class TextGraph(nn.Module):
    """input_ids, attention_mask[, token_type_ids] -> logits."""

    def __init__(self, final: FinalModel):
        super().__init__()
        self.model = final.module
        self.source = SOURCES.get(final.source)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return self.source.logits(self.model, batch)


class ImageGraph(nn.Module):
    """uint8 pixels -> logits, normalised inside with ToDevice's arithmetic."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, final: FinalModel):
        super().__init__()
        self.model = final.module
        self.source = SOURCES.get(final.source)
        normalise = ToDevice(torch.device("cpu"), final.preprocessing)
        self.register_buffer("mean", normalise.mean)
        self.register_buffer("std", normalise.std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.source.logits(self.model, pixels.float().sub(self.mean).div(self.std))


def serving_graph(final: FinalModel) -> nn.Module:
    """The module model.onnx is exported from, in eval mode: inputs as the module docstring says."""
    return (TextGraph(final) if final.kind == "text" else ImageGraph(final)).eval()


# --- inputs ----------------------------------------------------------------------------------


def encode(final: FinalModel, inputs: Sequence[Any], base_dir: Path = Path(".")) -> Inputs:
    """The graph's inputs for raw rows (texts; image bytes, Hugging Face image structs or paths,
    relative ones under `base_dir`), prepared by the training loop's own datasets and collation."""
    split = Split(list(inputs), np.zeros(len(inputs), dtype=np.int64), Path(base_dir))
    if final.kind == "text":
        texts = TextDataset(split, final.preprocessing, final.meta["max_length"])
        batch, _ = texts.collate([texts[i] for i in range(len(texts))])
        return {k: batch[k].numpy().astype(np.int64) for k in TEXT_INPUTS if k in batch}
    from timm.data import create_transform

    transform = create_transform(**final.preprocessing, is_training=False, use_prefetcher=True)
    images = ImageDataset(split, transform)
    pixels, _ = ImageDataset.collate([images[i] for i in range(len(images))])
    return {IMAGE_INPUT: pixels.numpy()}


def batches(
    final: FinalModel, inputs: Sequence[Any], base_dir: Path, size: int = PARITY_BATCH
) -> Iterator[Inputs]:
    for start in range(0, len(inputs), size):
        yield encode(final, inputs[start : start + size], base_dir)


def latency_batches(
    final: FinalModel, inputs: Sequence[Any], base_dir: Path, serving_batch: int = SERVING_BATCH
) -> tuple[list[Inputs], list[Inputs]]:
    """Single rows (up to 20) and three serving batches, cycling through the rows when there are fewer."""
    singles = [encode(final, [row], base_dir) for row in inputs[:20]]
    n = len(inputs)
    serving = [
        encode(final, [inputs[i % n] for i in range(k * serving_batch, (k + 1) * serving_batch)], base_dir)
        for k in range(3)
    ]
    return singles, serving


def _tensors(inputs: Inputs) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in inputs.items()}


# --- export ----------------------------------------------------------------------------------


def export_onnx(final: FinalModel, destination: Path, example: Inputs) -> int:
    """Write the serving graph to `destination` with torch.onnx.export (the dynamo exporter: torch.export
    and onnxscript), its batch axis (and a text's sequence axis) dynamic through torch.export.Dim;
    returns the ONNX opset. The example batch is doubled to two rows when it has one: an axis of size
    1 would be specialised to a constant."""
    graph = serving_graph(final)
    if len(next(iter(example.values()))) < 2:
        example = {k: np.concatenate([v, v]) for k, v in example.items()}
    batch = torch.export.Dim("batch")
    if final.kind == "text":
        sequence = torch.export.Dim("sequence", max=max(2, int(final.meta["max_length"])))
        dynamic: dict[str, Any] = {name: {0: batch, 1: sequence} for name in example}
    else:
        dynamic = {IMAGE_INPUT: {0: batch}}
    with warnings.catch_warnings():
        # One Dim shared by several inputs is named once; torch says so for every other use.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        program = torch.onnx.export(
            graph,
            (),
            kwargs=_tensors(example),
            dynamic_shapes=dynamic,
            output_names=[OUTPUT],
            dynamo=True,
            verbose=False,
        )
    if program is None:  # only the TorchScript exporter returns nothing
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    program.save(str(destination))
    return opset_of(destination)


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_session(path: Path) -> Any:
    """An onnxruntime session on the CPU at ORT_ENABLE_BASIC (the optimisations that keep fp32 results:
    constant folding, redundant nodes; no fused kernels with their own rounding)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def parity(
    final: FinalModel,
    session: Any,
    inputs: Sequence[Any],
    base_dir: Path,
    targets: np.ndarray | None = None,
) -> dict[str, Any]:
    """PyTorch's and onnxruntime's logits on the same rows (fp32, on the CPU): the largest absolute
    difference, and how often their top classes agree over the rows whose top-2 margin (in PyTorch) is
    at least MARGIN; with targets, each runtime's accuracy on these rows."""
    graph = serving_graph(final)
    ours, theirs = [], []
    for batch in batches(final, inputs, base_dir):
        with torch.inference_mode():
            ours.append(graph(**_tensors(batch)).float().numpy())
        theirs.append(session.run([OUTPUT], batch)[0])
    torch_logits, onnx_logits = np.concatenate(ours), np.concatenate(theirs)
    top2 = np.sort(torch_logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= MARGIN
    agree = torch_logits.argmax(1) == onnx_logits.argmax(1)
    out: dict[str, Any] = {
        "rows": len(torch_logits),
        "rows_compared": int(clear.sum()),
        "max_abs_diff": float(np.abs(torch_logits - onnx_logits).max()),
        "argmax_agreement": float(agree[clear].mean()) if clear.any() else None,
        "margin": MARGIN,
    }
    if targets is not None:
        classes = len(final.labels)
        out["accuracy"] = {
            runtime: accuracy_of(confusion_counts(np.asarray(targets), logits.argmax(1), classes))
            for runtime, logits in (("pytorch", torch_logits), ("onnxruntime", onnx_logits))
        }
    return out


def parity_holds(report: dict[str, Any]) -> bool:
    agreement = report["argmax_agreement"]
    return report["max_abs_diff"] <= MAX_ABS_DIFF and (agreement is None or agreement == 1.0)


# --- a run's final/ ----------------------------------------------------------------------------


def check_exportable(run_dir: Path) -> Path:
    """`RUN_DIR/final`, refusing (UserInputError, nothing written) when there is no final model yet
    or it was exported already."""
    final_dir = Path(run_dir) / FINAL_DIR
    if not (final_dir / MODEL_DIR).is_dir():
        missing = final_dir if not final_dir.is_dir() else final_dir / MODEL_DIR
        raise UserInputError(f"{missing} does not exist: run `tlsearch finalize {run_dir}` first")
    if (final_dir / ONNX_FILE).exists():
        raise UserInputError(
            f"{final_dir / ONNX_FILE} exists already; delete it (and {EXPORT_FILE}) to export again"
        )
    return final_dir


def export_final(
    run_dir: Path,
    inputs: Sequence[Any],
    true_labels: Sequence[str] | None = None,
    base_dir: Path = Path("."),
    *,
    serving_batch: int = SERVING_BATCH,
) -> dict[str, Any]:
    """Export `RUN_DIR/final/model/` to `final/model.onnx` and write `final/export.json` (returned):
    parity on `inputs` (real rows: the test split's; with their labels, each runtime's accuracy on
    them), opset, graph inputs and outputs, latency of both runtimes. Written in a temporary directory
    inside final/ and moved into place, model.onnx last: a killed export leaves no model.onnx, so it
    can run again."""
    final_dir = check_exportable(run_dir)
    if not len(inputs):
        raise UserInputError("the ONNX parity check needs real rows; the test split has none")
    final = load_final_model(final_dir / MODEL_DIR)
    targets = None if true_labels is None else _indices(true_labels, final.labels)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=final_dir))
    try:
        onnx_path = work / ONNX_FILE
        opset = export_onnx(final, onnx_path, encode(final, inputs[:2], base_dir))
        singles, serving = latency_batches(final, inputs, base_dir, serving_batch)
        # PyTorch first: onnxruntime's idle threads spin for a while after each run, taking cores
        # PyTorch would be timed on.
        pytorch = torch_latency_of(
            final, singles, serving, sorted((final_dir / MODEL_DIR).glob("*.safetensors"))
        )
        session = onnx_session(onnx_path)
        report: dict[str, Any] = {"format": "onnx", "file": ONNX_FILE, "opset": opset}
        checked = parity(final, session, inputs, base_dir, targets)
        report |= {key: checked.pop(key) for key in ("max_abs_diff", "argmax_agreement")}
        report["parity"] = checked | {
            "max_abs_diff_allowed": MAX_ABS_DIFF,
            "optimization": "ORT_ENABLE_BASIC",
        }
        report["parity_holds"] = parity_holds(report)
        report["inputs"] = [_describe(arg) for arg in session.get_inputs()]
        report["outputs"] = [_describe(arg) for arg in session.get_outputs()]
        report["labels"] = final.labels
        report["latency"] = {
            "pytorch": pytorch,
            "onnxruntime": onnx_latency(session, singles, serving, size_path=onnx_path),
        }
        (work / EXPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        for name in [
            EXPORT_FILE,
            *(p.name for p in work.iterdir() if p.name not in (EXPORT_FILE, ONNX_FILE)),
        ]:
            os.replace(work / name, final_dir / name)  # external weights (if any) before their graph
        os.replace(onnx_path, final_dir / ONNX_FILE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def torch_latency_of(
    final: FinalModel, singles: list[Inputs], serving: list[Inputs], weights: list[Path]
) -> dict[str, Any]:
    """The serving graph's latency on the current device (a GPU when there is one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graph = serving_graph(final).to(device)
    try:
        return torch_latency(graph, singles, serving, weights=weights)
    finally:
        graph.to("cpu")


def _indices(true_labels: Sequence[str], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(label) for label in true_labels} - set(index))
    if unknown:
        raise UserInputError(f"labels {unknown[:5]} are not among the final model's labels {labels[:10]}")
    return np.asarray([index[str(label)] for label in true_labels], dtype=np.int64)


def _describe(arg: Any) -> dict[str, Any]:
    return {"name": arg.name, "type": arg.type, "shape": list(arg.shape)}
