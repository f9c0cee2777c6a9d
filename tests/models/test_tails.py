"""Tails: the part of a model above a cached boundary reproduces the model, for both sources (Hugging
Face text and image models) and the timm families, and the check refuses tails that would not (a random
prefix, a wrong head dropout)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.strategies.test_strategies import CONFIGS
from tlsearch.models import build_model
from tlsearch.models.sources import LoadedModel
from tlsearch.models.tails import HEAD, TailUnsupported, block_boundary, check_tail, make_tail
from tlsearch.models.timm_source import TIMM
from tlsearch.space import TrialConfig
from tlsearch.spec.model import ModelSpec
from tlsearch.strategies.base import prepare

TIMM_FAMILIES = ["test_vit", "test_efficientnet", "test_resnet", "test_convnext"]


def partial(depth: int) -> TrialConfig:
    base = CONFIGS["partial"]
    return dataclasses.replace(base, knobs=base.knobs.model_copy(update={"unfreeze_depth": depth}))


def depth_of(config: TrialConfig) -> int | None:
    return getattr(config.knobs, "unfreeze_depth", None)


def spec_for(name: str, tiny_bert: Path, tiny_vit: Path | None = None) -> ModelSpec:
    if name in ("hf", "hf-mean", "hf-cls"):  # BERT's own head, or its base model under a pooling head
        pooling = name.removeprefix("hf-") if name != "hf" else "auto"
        return ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", pooling=pooling)
    if name == "hf-image":  # a Hugging Face ViT
        return ModelSpec(source="hf", name=str(tiny_vit), task="image-classification")
    return ModelSpec(source="timm", name=name, task="image-classification", pretrained=False, image_size=32)


def probe_for(loaded: LoadedModel) -> object:
    torch.manual_seed(1)
    if not isinstance(loaded.preprocessing, dict):  # a tokenizer, not an image data config
        texts = ["goal match team the", "chip data", "bread cheese soup apple a a a today"]
        return dict(loaded.preprocessing(texts, padding=True, return_tensors="pt"))
    return torch.randn(4, 3, 32, 32)


CASES = [
    (name, config)
    for name in ["hf", "hf-mean", "hf-cls", "hf-image", *TIMM_FAMILIES]
    for config in (CONFIGS["linear_probe"], partial(1), partial(2))
    # test_convnext's block 7 is the first block of a stage: see the test below.
    if (name, depth_of(config)) != ("test_convnext", 2)
]


@pytest.mark.parametrize(("name", "config"), CASES, ids=[f"{n}-{c.strategy}-{depth_of(c)}" for n, c in CASES])
def test_tail_reproduces_the_model_in_eval_and_train_mode(
    name: str, config: TrialConfig, tiny_bert: Path, tiny_vit: Path
) -> None:
    torch.manual_seed(0)
    loaded = build_model(spec_for(name, tiny_bert, tiny_vit), num_classes=3)
    prepared = prepare(loaded, config)
    if config.strategy == "linear_probe":
        assert prepared.feature_boundary == HEAD
    else:
        assert prepared.feature_boundary == block_boundary(
            loaded.layers.num_blocks - config.knobs.unfreeze_depth
        )
    tail = make_tail(loaded, prepared.feature_boundary)
    probe = probe_for(loaded)
    check_tail(prepared.model, tail, probe, prepared.train_mode, tolerance=1e-4, logits=loaded.source.logits)
    # Exactly the trained parameters (the same tensors) sit in the tail.
    trained = {id(p) for p in prepared.model.parameters() if p.requires_grad}
    assert {id(p) for p in tail.module.parameters() if p.requires_grad} == trained

    # Gradients reach the trained parameters through the tail as through the model.
    prepared.model.eval()
    with torch.no_grad():
        rows = tail.to_batch(*tail.extract(probe))
    tail.module.eval()
    loaded.source.logits(tail.module, rows).sum().backward()
    through_tail = [p.grad.clone() for p in prepared.model.parameters() if p.requires_grad]
    prepared.model.zero_grad()
    loaded.source.logits(prepared.model, probe).sum().backward()
    direct = [p.grad for p in prepared.model.parameters() if p.requires_grad]
    for a, b in zip(through_tail, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_hf_block_tail_reads_only_real_tokens(tiny_bert: Path) -> None:
    loaded = build_model(spec_for("hf", tiny_bert), num_classes=3)
    prepared = prepare(loaded, partial(1))
    tail = make_tail(loaded, prepared.feature_boundary)
    probe = probe_for(loaded)
    prepared.model.eval()
    with torch.no_grad():
        hidden, lengths = tail.extract(probe)
    assert lengths is not None and lengths.tolist() == probe["attention_mask"].sum(1).tolist()
    assert hidden.shape[:2] == probe["input_ids"].shape  # the input of the top block: every position


def timm_loaded(name: str, **kwargs: object) -> LoadedModel:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **kwargs)
    head = ("head",) if name == "test_vit" else (model.pretrained_cfg["classifier"],)
    data_config = timm.data.resolve_model_data_config(model)
    return LoadedModel(model, head, TIMM.layer_map(model, head), data_config, source=TIMM)


def test_a_random_op_below_the_boundary_is_refused() -> None:
    # Position dropout has no parameters, so it is not frozen: in train mode it draws random numbers
    # below the boundary, and stored features could not reproduce that.
    loaded = timm_loaded("test_vit", img_size=32, pos_drop_rate=0.5)
    prepared = prepare(loaded, CONFIGS["linear_probe"])
    tail = make_tail(loaded, HEAD)
    with pytest.raises(TailUnsupported, match="in train mode"):
        check_tail(
            prepared.model,
            tail,
            torch.randn(4, 3, 32, 32),
            prepared.train_mode,
            tolerance=1e-4,
            logits=loaded.source.logits,
        )


def test_the_head_dropout_must_match_and_the_random_state_is_left_alone() -> None:
    loaded = timm_loaded("test_efficientnet", drop_rate=0.5)
    prepared = prepare(loaded, CONFIGS["linear_probe"])
    tail = make_tail(loaded, HEAD)
    probe = torch.randn(4, 3, 32, 32)
    state = torch.get_rng_state()
    # p=0.5 on both sides
    check_tail(prepared.model, tail, probe, prepared.train_mode, tolerance=1e-4, logits=loaded.source.logits)
    assert torch.equal(state, torch.get_rng_state())
    tail.module[0] = nn.Dropout(0.1)
    with pytest.raises(TailUnsupported, match="in train mode"):
        check_tail(
            prepared.model, tail, probe, prepared.train_mode, tolerance=1e-4, logits=loaded.source.logits
        )


def test_a_tail_missing_a_trained_parameter_is_refused(tiny_bert: Path) -> None:
    loaded = build_model(spec_for("hf", tiny_bert), num_classes=3)
    prepared = prepare(loaded, partial(2))
    tail = make_tail(loaded, block_boundary(1))  # cut above a block that trains
    with pytest.raises(TailUnsupported, match="below the boundary"):
        check_tail(
            prepared.model,
            tail,
            probe_for(loaded),
            prepared.train_mode,
            tolerance=1e-4,
            logits=loaded.source.logits,
        )


def test_block_outside_the_model_is_refused(tiny_bert: Path) -> None:
    loaded = build_model(spec_for("hf", tiny_bert), num_classes=3)
    with pytest.raises(TailUnsupported, match="outside"):
        make_tail(loaded, block_boundary(loaded.layers.num_blocks))


def test_convnext_stage_start_is_refused(tiny_bert: Path) -> None:
    # The stage's downsample and first block form one layer; the module holding both (the stage) also
    # holds the stage's second block, so chaining block modules would run that block twice.
    loaded = build_model(spec_for("test_convnext", tiny_bert), num_classes=3)
    prepared = prepare(loaded, partial(2))
    with pytest.raises(TailUnsupported, match="not a module of its own"):
        make_tail(loaded, prepared.feature_boundary)
