"""ONNX export of final models: parity with PyTorch in onnxruntime, dynamic axes, the export of a run's
final/ (files, refusals). Each export takes seconds on a CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tlsearch.errors import UserInputError
from tlsearch.final.export import (
    EXPORT_FILE,
    MAX_ABS_DIFF,
    ONNX_FILE,
    check_exportable,
    encode,
    export_final,
    export_onnx,
    onnx_session,
    parity,
    serving_graph,
)
from tlsearch.final.model_dir import FinalModel, load_final_model, save_final_model
from tlsearch.models import LoadedModel, build_model
from tlsearch.spec.model import ModelSpec
from tlsearch.testing import CLASS_WORDS, image_rows, text_rows
from tlsearch.train.batches import ToDevice

LABELS = sorted(CLASS_WORDS)  # food, sport, tech: text_rows' labels


def text_model(tiny_bert: Path) -> tuple[LoadedModel, ModelSpec]:
    spec = ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", max_length=16)
    torch.manual_seed(0)
    return build_model(spec, 3), spec


def saved_text_model(model: torch.nn.Module, tokenizer: Any, spec: ModelSpec, directory: Path) -> FinalModel:
    save_final_model(
        directory,
        model,
        tokenizer,
        source="hf",
        task=spec.task,
        labels=LABELS,
        pooling="auto",
        max_length=spec.max_length,
    )
    return load_final_model(directory)


def check_parity(final: FinalModel, path: Path, rows: list, labels: list[str]) -> dict:
    session = onnx_session(path)
    targets = np.asarray([LABELS.index(label) for label in labels])
    report = parity(final, session, rows, Path("."), targets)
    assert report["rows"] == len(rows)
    assert report["max_abs_diff"] <= MAX_ABS_DIFF
    assert report["argmax_agreement"] == 1.0 and report["rows_compared"] > 0
    assert report["accuracy"]["pytorch"] == report["accuracy"]["onnxruntime"]
    return report


def test_text_parity_with_dynamic_batch_and_sequence(tmp_path: Path, tiny_bert: Path) -> None:
    loaded, spec = text_model(tiny_bert)
    final = saved_text_model(loaded.model, loaded.preprocessing, spec, tmp_path / "model")
    rows = text_rows(40, seed=3, words_per_row=9)
    texts = [r["text"] for r in rows]
    example = encode(final, texts[:2])
    path = tmp_path / ONNX_FILE
    assert export_onnx(final, path, example) >= 18
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [tuple(i.shape) for i in session.get_inputs()] == [("batch", "sequence")] * 3
    # Other batch sizes and sequence lengths than the example's (2 x 11), padding included
    graph = serving_graph(final)
    for batch_texts in (["goal"], ["goal match", "a big new report said today the team score", "chip"]):
        batch = encode(final, batch_texts)
        assert batch["input_ids"].shape != example["input_ids"].shape
        with torch.no_grad():
            expected = graph(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
        np.testing.assert_allclose(session.run(None, batch)[0], expected, atol=MAX_ABS_DIFF, rtol=0)
    check_parity(final, path, texts, [r["label"] for r in rows])


def test_a_mean_pooled_text_model_exports_with_parity(tmp_path: Path, tiny_bert: Path) -> None:
    """The mean over the real tokens (model.pooling: mean) inside the graph: padding in a batch of
    mixed lengths must not move a row's logits."""
    spec = ModelSpec(
        source="hf", name=str(tiny_bert), task="text-classification", max_length=16, pooling="mean"
    )
    torch.manual_seed(0)
    loaded = build_model(spec, 3)
    save_final_model(
        tmp_path / "model",
        loaded.model,
        loaded.preprocessing,
        source="hf",
        task=spec.task,
        labels=LABELS,
        pooling="mean",
        max_length=16,
    )
    final = load_final_model(tmp_path / "model")
    rows = text_rows(40, seed=4, words_per_row=9)
    texts = [r["text"] for r in rows]
    path = tmp_path / ONNX_FILE
    export_onnx(final, path, encode(final, texts[:2]))
    session = onnx_session(path)
    alone, padded = encode(final, ["goal"]), encode(final, ["goal", "a big new report said today the team"])
    np.testing.assert_allclose(session.run(None, padded)[0][:1], session.run(None, alone)[0], atol=1e-5)
    check_parity(final, path, texts, [r["label"] for r in rows])


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_a_merged_adapter_model_exports_with_parity(method: str, tmp_path: Path, tiny_bert: Path) -> None:
    from peft import IA3Config, LoraConfig, get_peft_model

    loaded, spec = text_model(tiny_bert)
    # As the lora and ia3 strategies wrap it (tlsearch/strategies/*/apply.py), with adapters that are
    # not the identity: trained ones, so that merging changes the weights.
    head = list(loaded.head_modules)
    config: Any
    if method == "ia3":
        config = IA3Config(
            target_modules=["query", "value", "intermediate.dense"],
            feedforward_modules=["intermediate.dense"],
            modules_to_save=head,
            init_ia3_weights=False,
        )
    else:
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["query", "value"],
            modules_to_save=head,
            init_lora_weights=False,
            use_dora=method == "dora",
        )
    peft_model = get_peft_model(loaded.model, config).eval()
    # IA3's vectors far from 1 and a head of unit scale, as after training: the tiny model's fresh
    # head (std 0.02) would hide what the vectors change.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "ia3_" in name:
                param.uniform_(-2.0, 3.0)
            elif "modules_to_save" in name:
                param.normal_()
    rows = text_rows(24, seed=4)
    texts = [r["text"] for r in rows]
    batch = loaded.preprocessing(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        unmerged = peft_model(**batch).logits
        base_only = peft_model.get_base_model()
        with peft_model.disable_adapter():
            without_adapters = base_only(**batch).logits
    assert not torch.allclose(unmerged, without_adapters, atol=1e-3)  # the adapters matter
    final = saved_text_model(
        peft_model, loaded.preprocessing, spec, tmp_path / "model"
    )  # merged by save_final_model
    assert not any("lora_" in name or "ia3_" in name for name, _ in final.module.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(final.module(**batch).logits, unmerged, atol=1e-5, rtol=1e-5)
    path = tmp_path / ONNX_FILE
    export_onnx(final, path, encode(final, texts[:2]))
    check_parity(final, path, texts, [r["label"] for r in rows])


def image_run_dir(tmp_path: Path) -> Path:
    spec = ModelSpec(
        source="timm", name="test_vit", task="image-classification", pretrained=False, image_size=32
    )
    torch.manual_seed(0)
    loaded = build_model(spec, 3)
    run_dir = tmp_path / "run"
    save_final_model(
        run_dir / "final" / "model",
        loaded.model,
        loaded.preprocessing,
        source="timm",
        task=spec.task,
        labels=["0", "1", "2"],
        image_size=32,
    )
    return run_dir


def test_export_of_a_runs_final_model(tmp_path: Path) -> None:
    """A timm model: parity, export.json complete, the graph normalising uint8 pixels as training did."""
    run_dir = image_run_dir(tmp_path)
    rows = image_rows(30, seed=5)
    report = export_final(
        run_dir, [r["image"] for r in rows], [str(r["label"]) for r in rows], serving_batch=8
    )
    final_dir = run_dir / "final"
    assert sorted(p.name for p in final_dir.iterdir()) == [EXPORT_FILE, "model", ONNX_FILE]  # no leftovers
    assert json.loads((final_dir / EXPORT_FILE).read_text()) == report
    assert report["max_abs_diff"] <= MAX_ABS_DIFF and report["argmax_agreement"] == 1.0
    assert report["parity_holds"] and report["parity"]["rows"] == 30 and report["opset"] >= 18
    assert report["inputs"] == [{"name": "pixels", "type": "tensor(uint8)", "shape": ["batch", 3, 32, 32]}]
    assert report["outputs"] == [{"name": "logits", "type": "tensor(float)", "shape": ["batch", 3]}]
    for runtime in ("pytorch", "onnxruntime"):
        latency = report["latency"][runtime]
        assert latency["serving_batch"] == 8 and latency["batch1_p95_ms"] >= latency["batch1_p50_ms"]
        assert latency["size_on_disk_bytes"] > 0 and latency["parameters"] > 0
    # The graph's input is what the training loop's loader gives; normalised inside as ToDevice does.
    final = load_final_model(final_dir / "model")
    pixels = encode(final, [r["image"] for r in rows[:5]])["pixels"]
    with torch.no_grad():
        trained_path = final.module(
            ToDevice(torch.device("cpu"), final.preprocessing)(torch.from_numpy(pixels))
        )
    onnx_logits = onnx_session(final_dir / ONNX_FILE).run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(onnx_logits, trained_path.numpy(), atol=MAX_ABS_DIFF, rtol=0)
    # batch 1, other than the example's 2
    assert onnx_session(final_dir / ONNX_FILE).run(None, {"pixels": pixels[:1]})[0].shape == (1, 3)

    before = {p: p.stat().st_mtime_ns for p in final_dir.rglob("*")}
    with pytest.raises(UserInputError, match="exists already"):
        export_final(run_dir, [r["image"] for r in rows])
    assert {p: p.stat().st_mtime_ns for p in final_dir.rglob("*")} == before


def test_export_refuses_without_a_final_model(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="run `tlsearch finalize"):
        check_exportable(tmp_path)
    (tmp_path / "final").mkdir()
    with pytest.raises(UserInputError, match=r"final/model does not exist"):
        check_exportable(tmp_path)
    assert [p.name for p in tmp_path.rglob("*")] == ["final"]


def test_labels_the_model_does_not_know_are_refused(tmp_path: Path) -> None:
    run_dir = image_run_dir(tmp_path)
    rows = image_rows(3, seed=6)
    with pytest.raises(UserInputError, match="not among the final model's labels"):
        export_final(run_dir, [r["image"] for r in rows], ["0", "1", "7"])
    assert sorted(p.name for p in (run_dir / "final").iterdir()) == ["model"]


@pytest.mark.parametrize("pooling", ["auto", "mean"])
def test_a_prompt_tuned_model_is_saved_as_base_and_adapter_and_exports_with_parity(
    pooling: str, tmp_path: Path, tiny_bert: Path
) -> None:
    """A prompt does not merge into weights: final/model/ holds the base model (with the trained head)
    and the prompt as a peft adapter; loaded, it gives the prompt-tuned model's logits, and its ONNX
    graph those of onnxruntime."""
    from tlsearch.strategies.base import prepare
    from tlsearch.testing import trial_config

    spec = ModelSpec(
        source="hf", name=str(tiny_bert), task="text-classification", max_length=16, pooling=pooling
    )
    torch.manual_seed(0)
    loaded = build_model(spec, 3)
    config = trial_config(
        "prompt_tuning",
        head_lr=1e-2,
        lr=1e-2,
        num_virtual_tokens=4,
        weight_decay=0.0,
        warmup_fraction=0.0,
        batch_size=4,
    )
    prepared = prepare(loaded, config)
    model = prepared.model.eval()
    with torch.no_grad():  # as after training: a prompt and a head of their own
        for param in model.parameters():
            if param.requires_grad:
                param.normal_()
    rows = text_rows(24, seed=4)
    texts = [r["text"] for r in rows]
    batch = loaded.preprocessing(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        tuned = model(**batch).logits
        # the base model with the same head, without the prompt (peft's disable_adapter fails for
        # prompt learning on a classifier: peft 0.21 reaches for generation hooks)
        unprompted = model.get_base_model()(**batch).logits
    assert not torch.allclose(tuned, unprompted, atol=1e-3)  # the prompt matters
    resolved = loaded.pooling
    save_final_model(
        tmp_path / "model",
        model,
        loaded.preprocessing,
        source="hf",
        task=spec.task,
        labels=LABELS,
        pooling=resolved,
        max_length=spec.max_length,
    )
    adapter = json.loads((tmp_path / "model" / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["num_virtual_tokens"] == 4
    final = load_final_model(tmp_path / "model")
    assert final.meta["adapter"] == "adapter"
    with torch.no_grad():
        torch.testing.assert_close(final.module(**batch).logits, tuned, atol=1e-5, rtol=1e-5)
    path = tmp_path / ONNX_FILE
    export_onnx(final, path, encode(final, texts[:2]))
    check_parity(final, path, texts, [r["label"] for r in rows])
