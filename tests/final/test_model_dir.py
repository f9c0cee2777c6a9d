"""`final/model/`: a saved final model loads back with equal logits, for each source and task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tlsearch.errors import UserInputError
from tlsearch.final.export import encode
from tlsearch.final.model_dir import (
    LAYOUTS,
    META_FILE,
    WEIGHTS_FILE,
    layout_for,
    load_final_model,
    save_final_model,
)
from tlsearch.models import LoadedModel, build_model
from tlsearch.spec.model import ModelSpec
from tlsearch.testing import image_rows, make_model_that_ships_code, text_rows


def text_model(tiny_bert: Path) -> tuple[LoadedModel, ModelSpec]:
    spec = ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", max_length=16)
    torch.manual_seed(0)
    return build_model(spec, 3), spec


def timm_model() -> tuple[LoadedModel, ModelSpec]:
    spec = ModelSpec(
        source="timm", name="test_vit", task="image-classification", pretrained=False, image_size=32
    )
    torch.manual_seed(0)
    return build_model(spec, 3), spec


def save(loaded: LoadedModel, spec: ModelSpec, directory: Path, **extra: Any) -> Path:
    return save_final_model(
        directory,
        loaded.model,
        loaded.preprocessing,
        source=spec.source,
        task=spec.task,
        labels=["food", "sport", "tech"],
        max_length=spec.max_length,
        image_size=spec.image_size,
        **extra,
    )


def logits(loaded_model: torch.nn.Module, source: str, batch: Any) -> torch.Tensor:
    from tlsearch.models.sources import SOURCES

    with torch.no_grad():
        return SOURCES.get(source).logits(loaded_model.eval(), batch)


def test_hf_text_round_trip(tmp_path: Path, tiny_bert: Path) -> None:
    loaded, spec = text_model(tiny_bert)
    directory = save(loaded, spec, tmp_path / "model", pooling="auto")
    names = {p.name for p in directory.iterdir()}
    assert {WEIGHTS_FILE, "config.json", META_FILE, "tokenizer_config.json"} <= names
    final = load_final_model(directory)
    assert final.labels == ["food", "sport", "tech"] and final.kind == "text"
    assert not final.module.training
    assert final.meta["pooling"] == "auto" and final.meta["max_length"] == 16
    assert json.loads((directory / "config.json").read_text())["id2label"] == {
        "0": "food",
        "1": "sport",
        "2": "tech",
    }
    rows = [r["text"] for r in text_rows(6, seed=1)]
    batch = {k: torch.from_numpy(v) for k, v in encode(final, rows).items()}
    expected = loaded.preprocessing(rows, truncation=True, max_length=16, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(logits(final.module, "hf", batch), logits(loaded.model, "hf", batch))


def test_hf_image_round_trip(tmp_path: Path, tiny_vit: Path) -> None:
    spec = ModelSpec(source="hf", name=str(tiny_vit), task="image-classification")
    torch.manual_seed(0)
    loaded = build_model(spec, 3)
    directory = save(loaded, spec, tmp_path / "model")
    final = load_final_model(directory)
    assert final.kind == "image" and final.meta["layout"] == "hf"
    assert final.preprocessing == loaded.preprocessing  # the timm data config the loop used
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits(final.module, "hf", pixels), logits(loaded.model, "hf", pixels))


def test_timm_round_trip_in_timms_local_dir_layout(tmp_path: Path) -> None:
    import timm

    loaded, spec = timm_model()
    directory = save(loaded, spec, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    assert config["architecture"] == "test_vit" and config["label_names"] == ["food", "sport", "tech"]
    final = load_final_model(directory)
    assert final.meta["layout"] == "timm" and final.meta["image_size"] == 32
    # timm alone resolves the same preprocessing from config.json's pretrained_cfg
    assert final.preprocessing == loaded.preprocessing
    resolved = timm.data.resolve_model_data_config(final.module)
    assert json.dumps(resolved, sort_keys=True) == json.dumps(loaded.preprocessing, sort_keys=True)
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits(final.module, "timm", pixels), logits(loaded.model, "timm", pixels))
    images = encode(final, [r["image"] for r in image_rows(3, seed=2)])["pixels"]
    assert images.dtype.name == "uint8" and images.shape == (3, 3, 32, 32)


def test_a_peft_model_is_saved_merged(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    loaded, _ = timm_model()
    peft_model = get_peft_model(
        loaded.model,
        LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["head"], init_lora_weights=False),
    )
    pixels = torch.randn(2, 3, 32, 32)
    expected = logits(peft_model, "timm", pixels)
    directory = save_final_model(
        tmp_path / "model",
        peft_model,
        loaded.preprocessing,
        source="timm",
        task="image-classification",
        labels=["a", "b", "c"],
        image_size=32,
    )
    final = load_final_model(directory)
    assert not any("lora" in name for name, _ in final.module.named_parameters())
    torch.testing.assert_close(logits(final.module, "timm", pixels), expected, rtol=1e-5, atol=1e-5)


def test_refusals(tmp_path: Path) -> None:
    loaded, spec = timm_model()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        save(loaded, spec, tmp_path / "full")
    with pytest.raises(UserInputError, match=r"no tlsearch\.json"):
        load_final_model(tmp_path / "full")


def test_layouts_by_source_and_pooling() -> None:
    assert layout_for("timm", None) == "timm"
    assert [layout_for("hf", p) for p in (None, "auto", "pooler")] == ["hf"] * 3
    # A text model with its own pooling step (PooledClassifier) has a layout of its own.
    assert layout_for("hf", "mean") == "hf-mean" and {"hf-mean", "hf-cls"} <= set(LAYOUTS)
    with pytest.raises(UserInputError, match="unknown final-model layout `hf-max`"):
        LAYOUTS.get(layout_for("hf", "max"))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_pooled_text_model_round_trips(tiny_bert: Path, tmp_path: Path, pooling: str) -> None:
    """The base model as transformers saves it, the linear head beside it, the pooling in tlsearch.json:
    the loaded model gives the saved one's logits; the base model loads with plain AutoModel."""
    from transformers import AutoModel

    spec = ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", pooling=pooling)
    loaded = build_model(spec, num_classes=3)
    labels = ["food", "sport", "tech"]
    directory = save_final_model(
        tmp_path / "model",
        loaded.model,
        loaded.preprocessing,
        source="hf",
        task=spec.task,
        labels=labels,
        pooling=loaded.pooling,
        max_length=16,
    )
    final = load_final_model(directory)
    assert final.meta["layout"] == f"hf-{pooling}" and final.meta["pooling"] == pooling
    batch = dict(loaded.preprocessing(["goal match team", "chip"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        torch.testing.assert_close(final.module(**batch).logits, loaded.model.eval()(**batch).logits)
    assert AutoModel.from_pretrained(directory).config.hidden_size == 32


def test_the_final_model_of_a_model_that_ships_code_loads_with_it(tmp_path: Path, tiny_bert: Path) -> None:
    """`model.trust_remote_code` carries over: the code is saved beside the weights, tlsearch.json
    records it, and loading the final model back (export, predict) runs it."""
    shipped = make_model_that_ships_code(tiny_bert, tmp_path / "shipped")
    spec = ModelSpec(source="hf", name=str(shipped), task="text-classification", trust_remote_code=True)
    torch.manual_seed(0)
    loaded = build_model(spec, 3)
    directory = save(loaded, spec, tmp_path / "final", pooling="auto", trust_remote_code=True)
    assert json.loads((directory / META_FILE).read_text())["trust_remote_code"] is True
    assert (directory / "modeling_shipped.py").exists()
    final = load_final_model(directory)
    assert type(final.module).__name__ == "ShippedForSequenceClassification"
    batch = dict(final.preprocessing(["goal match"], return_tensors="pt"))
    torch.testing.assert_close(logits(final.module, "hf", batch), logits(loaded.model, "hf", batch))
