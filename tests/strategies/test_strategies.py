"""Every registered strategy on every model source: what trains, at which learning rate, what stays
frozen, and that checkpoints restore the trained state exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tlsearch.models import build_model
from tlsearch.space import TrialConfig
from tlsearch.spec import vocab
from tlsearch.spec.model import ModelSpec
from tlsearch.strategies import STRATEGIES, prepare

CONFIGS = {
    "linear_probe": TrialConfig(
        "linear_probe", head_lr=1e-2, weight_decay=0.05, warmup_fraction=0.0, batch_size=4
    ),
    "partial": TrialConfig(
        "partial",
        head_lr=1e-2,
        weight_decay=0.05,
        warmup_fraction=0.0,
        batch_size=4,
        backbone_lr=1e-3,
        layer_decay=0.5,
        unfreeze_depth=1,
    ),
    "full": TrialConfig(
        "full",
        head_lr=1e-2,
        weight_decay=0.05,
        warmup_fraction=0.0,
        batch_size=4,
        backbone_lr=1e-3,
        layer_decay=0.5,
    ),
    "lora": TrialConfig(
        "lora",
        head_lr=1e-2,
        weight_decay=0.05,
        warmup_fraction=0.0,
        batch_size=4,
        backbone_lr=2e-3,
        lora_rank=2,
        lora_alpha=4.0,
        lora_dropout=0.0,
        lora_targets="attention",
    ),
}


# hf-image: a Hugging Face ViT (AutoModelForImageClassification) through the hf source.
SOURCES = ["timm", "hf", "hf-image"]


def model_spec(source: str, tiny_bert: Path, tiny_vit: Path | None = None) -> ModelSpec:
    if source == "hf":
        return ModelSpec(source="hf", name=str(tiny_bert), task="text-classification")
    if source == "hf-image":
        assert tiny_vit is not None
        return ModelSpec(source="hf", name=str(tiny_vit), task="image-classification")
    return ModelSpec(
        source="timm", name="test_vit", task="image-classification", pretrained=False, image_size=32
    )


def batch(source: str) -> object:
    torch.manual_seed(3)
    if source == "hf":
        return {
            "input_ids": torch.randint(5, 20, (4, 8)),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
        }
    return torch.randn(4, 3, 32, 32)


def logits(model: nn.Module, inputs: object) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


def test_registry_matches_the_vocabulary() -> None:
    assert set(STRATEGIES) == set(vocab.STRATEGIES)
    with pytest.raises(ValueError, match="already registered"):
        STRATEGIES.register("full")(lambda loaded, config: None)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("strategy", list(vocab.STRATEGIES))
def test_trainable_sets_and_learning_rates(
    source: str, strategy: str, tiny_bert: Path, tiny_vit: Path
) -> None:
    torch.manual_seed(0)
    loaded = build_model(model_spec(source, tiny_bert, tiny_vit), num_classes=3)
    layers = loaded.layers
    config = CONFIGS[strategy]
    prepared = prepare(loaded, config)
    trainable = {n for n, p in prepared.model.named_parameters() if p.requires_grad}
    lr_of = {name: g.lr for g in prepared.param_groups for name in g.param_names}
    assert set(lr_of) == trainable  # every trainable tensor is in exactly one group
    assert prepared.trainable_params == sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)

    if strategy == "linear_probe":
        assert trainable == set(layers.head_params)
    elif strategy == "partial":
        top = {n for n, lid in layers.layer_of.items() if lid == layers.num_blocks}
        assert trainable == top | set(layers.head_params)
        assert all(lr_of[n] == pytest.approx(config.backbone_lr) for n in top)
    elif strategy == "full":
        assert trainable == {n for n, _ in prepared.model.named_parameters()}
        for name in trainable - set(layers.head_params):
            expected = config.backbone_lr * config.layer_decay ** (layers.num_blocks - layers.layer_of[name])
            assert lr_of[name] == pytest.approx(expected), name
        stem = next(n for n, lid in layers.layer_of.items() if lid == 0)
        assert lr_of[stem] == pytest.approx(config.backbone_lr * config.layer_decay**layers.num_blocks)
    else:
        assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
        assert all(lr_of[n] == config.backbone_lr for n in trainable if "lora_" in n)
        assert any("modules_to_save" in n for n in trainable)  # the new head trains in full
    if strategy != "lora":
        assert all(lr_of[n] == config.head_lr for n in layers.head_params)
    for group in prepared.param_groups:
        assert group.weight_decay in (0.0, config.weight_decay)
        assert all(p.ndim > 1 for p in group.params) or group.weight_decay == 0.0


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("strategy", list(vocab.STRATEGIES))
def test_checkpoint_restores_the_trained_state(
    source: str, strategy: str, tiny_bert: Path, tiny_vit: Path, tmp_path: Path
) -> None:
    spec = model_spec(source, tiny_bert, tiny_vit)
    config = CONFIGS[strategy]
    torch.manual_seed(0)
    prepared = prepare(build_model(spec, num_classes=3), config)
    model = prepared.model
    optimizer = torch.optim.AdamW([g.for_optimizer() for g in prepared.param_groups])
    inputs = batch(source)
    prepared.train_mode(model)
    for _ in range(3):
        loss = logits(model, inputs).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prepared.save(model, tmp_path)

    torch.manual_seed(0)  # same pretrained weights and same head initialisation as a restarted trial
    fresh = prepare(build_model(spec, num_classes=3), config)
    model.eval()
    fresh.model.eval()
    before = logits(fresh.model, inputs)
    fresh.load(fresh.model, tmp_path)
    with torch.no_grad():
        assert torch.allclose(logits(model, inputs), logits(fresh.model, inputs), atol=1e-6)
        assert not torch.allclose(before, logits(fresh.model, inputs), atol=1e-6)
    if strategy == "lora":
        files = {p.name for p in tmp_path.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        from safetensors.torch import load_file

        saved = load_file(str(tmp_path / "adapter_model.safetensors"))
        assert saved and all("lora_" in k or "classifier" in k or "head" in k for k in saved)


def test_frozen_prefix_stays_in_eval_mode_and_batch_norm_is_frozen() -> None:
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    spec = ModelSpec(source="timm", name="test_efficientnet", task="image-classification", pretrained=False)
    loaded = build_model(spec, num_classes=3)
    prepared = prepare(loaded, CONFIGS["partial"])
    prepared.train_mode(prepared.model)
    frozen_bn = [
        m for m in prepared.model.modules() if isinstance(m, FrozenBatchNorm2d | FrozenBatchNormAct2d)
    ]
    live_bn = [m for m in prepared.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and live_bn  # the prefix's statistics no longer move; the top block's do
    assert all(not m.training for fm in prepared.frozen_modules for m in fm.modules())
    assert prepared.model.get_classifier().training


def test_linear_probe_backbone_in_eval_mode(tiny_bert: Path) -> None:
    prepared = prepare(build_model(model_spec("hf", tiny_bert), num_classes=3), CONFIGS["linear_probe"])
    prepared.train_mode(prepared.model)
    assert not prepared.model.bert.training and not prepared.model.bert.encoder.layer[0].training
    assert prepared.model.classifier.training


def test_partial_depth_beyond_the_model_is_refused(tiny_bert: Path) -> None:
    config = TrialConfig(
        "partial",
        head_lr=1e-2,
        weight_decay=0.0,
        warmup_fraction=0.0,
        batch_size=4,
        backbone_lr=1e-3,
        layer_decay=0.5,
        unfreeze_depth=3,
    )
    with pytest.raises(ValueError, match="unfreeze_depth must be ≤ the model's 2 blocks"):
        prepare(build_model(model_spec("hf", tiny_bert), num_classes=3), config)
