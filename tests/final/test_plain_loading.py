"""docs/final.md's code blocks, run as they stand on final models saved here: loading `final/model/`
with plain transformers or timm, and serving `final/model.onnx` with onnxruntime, give what tlsearch's
own loader and serving graph give."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tlsearch.final.export import ONNX_FILE, encode, export_onnx, serving_graph
from tlsearch.final.model_dir import FinalModel, load_final_model, save_final_model
from tlsearch.models import build_model
from tlsearch.spec.model import ModelSpec
from tlsearch.testing import image_rows

DOC = Path(__file__).resolve().parents[2] / "docs" / "final.md"
LABELS = ["food", "sport", "tech"]
# The run directories the docs' examples name, in the order the blocks appear.
BLOCKS = (
    "runs/my-search",
    "runs/my-vision-search",
    "runs/my-hf-vision-search",
    "runs/my-sentence-search",
    "runs/my-vision-search",
)


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.M | re.S)


def save(spec: ModelSpec, run_dir: Path) -> FinalModel:
    torch.manual_seed(0)
    loaded = build_model(spec, len(LABELS))
    save_final_model(
        run_dir / "final" / "model",
        loaded.model,
        loaded.preprocessing,
        source=spec.source,
        task=spec.task,
        labels=LABELS,
        max_length=spec.max_length,
        image_size=spec.image_size,
    )
    return load_final_model(run_dir / "final" / "model")


def run_block(code: str, run_dir: Path, photo: Path, docs_run_dir: str) -> dict[str, Any]:
    assert docs_run_dir in code
    namespace: dict[str, Any] = {}
    exec(code.replace(docs_run_dir, str(run_dir)).replace("photo.png", str(photo)), namespace)
    return namespace


def reference_probs(final: FinalModel, inputs: list[Any]) -> np.ndarray:
    with torch.no_grad():
        return (
            serving_graph(final)(**{k: torch.from_numpy(v) for k, v in encode(final, inputs).items()})
            .softmax(-1)
            .numpy()
        )


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = image_rows(1, seed=11, size=48)[0]["image"]  # larger than the model's 32: resized and cropped
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    path.write_bytes(data)
    return path, data


def test_the_docs_have_the_blocks_this_test_runs() -> None:
    blocks = python_blocks()
    assert len(blocks) == len(BLOCKS)
    assert all(name in block for name, block in zip(BLOCKS, blocks, strict=True))


def test_text_model_with_plain_transformers(
    tmp_path: Path, tiny_bert: Path, photo: tuple[Path, bytes]
) -> None:
    run_dir = tmp_path / "text-run"
    final = save(
        ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", max_length=16), run_dir
    )
    ns = run_block(python_blocks()[0], run_dir, photo[0], BLOCKS[0])
    np.testing.assert_allclose(ns["probs"].numpy(), reference_probs(final, ns["texts"]), atol=1e-6)
    assert set(ns["predictions"]) <= set(LABELS)


def test_timm_model_with_plain_timm_and_its_onnx_graph(tmp_path: Path, photo: tuple[Path, bytes]) -> None:
    run_dir = tmp_path / "vision-run"
    spec = ModelSpec(
        source="timm", name="test_vit", task="image-classification", pretrained=False, image_size=32
    )
    final = save(spec, run_dir)
    ns = run_block(python_blocks()[1], run_dir, photo[0], BLOCKS[1])
    expected = reference_probs(final, [photo[1]])
    # timm's float pipeline (x / 255 - mean) / std against the loop's (x - 255 mean) / (255 std): rounding
    np.testing.assert_allclose(ns["probs"].numpy(), expected, atol=1e-5)
    assert ns["prediction"] in LABELS

    export_onnx(
        final, run_dir / "final" / ONNX_FILE, encode(final, [r["image"] for r in image_rows(2, seed=1)])
    )
    ns = run_block(python_blocks()[4], run_dir, photo[0], BLOCKS[4])
    assert ns["pixels"].dtype == np.uint8 and ns["pixels"].shape == (3, 3, 32, 32)
    with torch.no_grad():
        logits = serving_graph(final)(
            pixels=torch.from_numpy(encode(final, [photo[1]] * 3)["pixels"])
        ).numpy()
    np.testing.assert_allclose(ns["logits"], logits, atol=1e-4)


def test_hf_image_model_with_plain_transformers(
    tmp_path: Path, tiny_vit: Path, photo: tuple[Path, bytes]
) -> None:
    run_dir = tmp_path / "hf-vision-run"
    final = save(ModelSpec(source="hf", name=str(tiny_vit), task="image-classification"), run_dir)
    ns = run_block(python_blocks()[2], run_dir, photo[0], BLOCKS[2])
    np.testing.assert_allclose(ns["probs"].numpy(), reference_probs(final, [photo[1]]), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_text_model_with_plain_transformers(
    tmp_path: Path, tiny_bert: Path, photo: tuple[Path, bytes], pooling: str
) -> None:
    spec = ModelSpec(
        source="hf", name=str(tiny_bert), task="text-classification", max_length=16, pooling=pooling
    )
    torch.manual_seed(0)
    loaded = build_model(spec, len(LABELS))
    run_dir = tmp_path / "run"
    save_final_model(
        run_dir / "final" / "model",
        loaded.model,
        loaded.preprocessing,
        source="hf",
        task=spec.task,
        labels=LABELS,
        pooling=loaded.pooling,
        max_length=16,
    )
    final = load_final_model(run_dir / "final" / "model")
    ns = run_block(python_blocks()[3], run_dir, photo[0], BLOCKS[3])
    expected = reference_probs(final, ["the team scored a late goal", "new chip for the network"])
    np.testing.assert_allclose(ns["probs"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert ns["predictions"] == [LABELS[i] for i in expected.argmax(axis=1)]
