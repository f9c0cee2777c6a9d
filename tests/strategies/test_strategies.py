"""Every registered strategy on every model source: what trains, at which learning rate, what stays
frozen, and that checkpoints restore the trained state exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tlsearch.models import build_model
from tlsearch.spec.model import ModelSpec
from tlsearch.spec.strategy import STRATEGIES, Strategy, register_strategy
from tlsearch.strategies.base import prepare
from tlsearch.strategies.formats import ADAPTER_FILE
from tlsearch.testing import trial_config

BUILTIN = ["linear_probe", "partial", "full", "lora"]
COMMON = {"weight_decay": 0.05, "warmup_fraction": 0.0, "batch_size": 4}
CONFIGS = {
    "linear_probe": trial_config("linear_probe", head_lr=1e-2, **COMMON),
    "partial": trial_config(
        "partial", head_lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, unfreeze_depth=1, **COMMON
    ),
    "full": trial_config("full", head_lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, **COMMON),
    **{
        name: trial_config(
            "lora",
            head_lr=1e-2,
            lr=2e-3,
            rank=2,
            alpha=4.0,
            dropout=0.0,
            targets="attention",
            variant=variant,
            **COMMON,
        )
        for name, variant in (("lora", "lora"), ("dora", "dora"), ("rslora", "rslora"))
    },
    "ia3": trial_config("ia3", head_lr=1e-2, lr=1e-2, targets="attention_mlp", **COMMON),
    "prompt_tuning": trial_config("prompt_tuning", head_lr=1e-2, lr=1e-2, num_virtual_tokens=3, **COMMON),
}
TEXT_ONLY = {"prompt_tuning"}  # on the Hugging Face text sources
# Every configuration above: each strategy, each LoRA variant.
CONFIGURED = list(CONFIGS)
PEFT = {"lora", "ia3", "prompt_tuning"}
ADAPTER_MARK = {"lora": "lora_", "ia3": "ia3_", "prompt_tuning": "prompt_"}


# hf-image: a Hugging Face ViT (AutoModelForImageClassification) through the hf source; hf-mean: the
# BERT's base model under a mean-pooling head (tlsearch.models.pooling.PooledClassifier).
SOURCES = ["timm", "hf", "hf-mean", "hf-image"]


def model_spec(source: str, tiny_bert: Path, tiny_vit: Path | None = None) -> ModelSpec:
    if source in ("hf", "hf-mean"):
        pooling = "mean" if source == "hf-mean" else "auto"
        return ModelSpec(source="hf", name=str(tiny_bert), task="text-classification", pooling=pooling)
    if source == "hf-image":
        assert tiny_vit is not None
        return ModelSpec(source="hf", name=str(tiny_vit), task="image-classification")
    return ModelSpec(
        source="timm", name="test_vit", task="image-classification", pretrained=False, image_size=32
    )


def batch(source: str) -> object:
    torch.manual_seed(3)
    if source in ("hf", "hf-mean"):
        return {
            "input_ids": torch.randint(5, 20, (4, 8)),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
        }
    return torch.randn(4, 3, 32, 32)


def logits(model: nn.Module, inputs: object) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


def test_the_builtin_strategies_are_registered_in_order_and_names_are_strict() -> None:
    assert STRATEGIES.names()[:4] == BUILTIN
    full = STRATEGIES.get("full")
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(full)
    with pytest.raises(ValueError, match="lower-case letters"):
        Strategy("common", full.knobs, full.implementation, "clashes with the common knobs")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("configured", CONFIGURED)
def test_trainable_sets_and_learning_rates(
    source: str, configured: str, tiny_bert: Path, tiny_vit: Path
) -> None:
    if configured in TEXT_ONLY and source not in ("hf", "hf-mean"):
        pytest.skip("a text-model strategy")
    torch.manual_seed(0)
    loaded = build_model(model_spec(source, tiny_bert, tiny_vit), num_classes=3)
    layers = loaded.layers
    config = CONFIGS[configured]
    strategy = config.strategy
    knobs, common = config.knobs, config.common
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
        assert all(lr_of[n] == pytest.approx(knobs.backbone_lr) for n in top)
    elif strategy == "full":
        assert trainable == {n for n, _ in prepared.model.named_parameters()}
        for name in trainable - set(layers.head_params):
            expected = knobs.backbone_lr * knobs.layer_decay ** (layers.num_blocks - layers.layer_of[name])
            assert lr_of[name] == pytest.approx(expected), name
        stem = next(n for n, lid in layers.layer_of.items() if lid == 0)
        assert lr_of[stem] == pytest.approx(knobs.backbone_lr * knobs.layer_decay**layers.num_blocks)
    else:
        mark = ADAPTER_MARK[strategy]
        assert trainable and all(mark in n or "modules_to_save" in n for n in trainable)
        assert all(lr_of[n] == knobs.lr for n in trainable if mark in n)
        assert any("modules_to_save" in n for n in trainable)  # the new head trains in full
        # DoRA adds a trained magnitude per adapted output; the others do not
        assert any("lora_magnitude_vector" in n for n in trainable) == (configured == "dora")
    if strategy not in PEFT:
        assert all(lr_of[n] == knobs.head_lr for n in layers.head_params)
    params = dict(prepared.model.named_parameters())
    for group in prepared.param_groups:
        assert group.weight_decay in (0.0, common.weight_decay)
        assert all(params[n].ndim > 1 for n in group.param_names) or group.weight_decay == 0.0
        assert group.size == sum(params[n].numel() for n in group.param_names)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("configured", CONFIGURED)
def test_checkpoint_restores_the_trained_state(
    source: str, configured: str, tiny_bert: Path, tiny_vit: Path, tmp_path: Path
) -> None:
    if configured in TEXT_ONLY and source not in ("hf", "hf-mean"):
        pytest.skip("a text-model strategy")
    spec = model_spec(source, tiny_bert, tiny_vit)
    config = CONFIGS[configured]
    strategy = config.strategy
    torch.manual_seed(0)
    prepared = prepare(build_model(spec, num_classes=3), config)
    model = prepared.model
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [params[n] for n in g.param_names], "lr": g.lr} for g in prepared.param_groups]
    )
    inputs = batch(source)
    prepared.train_mode(model)
    for _ in range(3):
        loss = logits(model, inputs).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prepared.checkpoint.write(model, prepared.checkpoint.tensors(model), tmp_path)

    torch.manual_seed(0)  # same pretrained weights and same head initialisation as a restarted trial
    fresh = prepare(build_model(spec, num_classes=3), config)
    model.eval()
    fresh.model.eval()
    before = logits(fresh.model, inputs)
    fresh.checkpoint.load(fresh.model, tmp_path)
    with torch.no_grad():
        assert torch.allclose(logits(model, inputs), logits(fresh.model, inputs), atol=1e-6)
        assert not torch.allclose(before, logits(fresh.model, inputs), atol=1e-6)
    if strategy in PEFT:  # adapter-only, in peft's format, loadable by peft itself
        files = {p.name for p in tmp_path.iterdir()}
        assert {"adapter_config.json", ADAPTER_FILE} <= files
        import json

        from safetensors.torch import load_file

        saved = load_file(str(tmp_path / ADAPTER_FILE))
        mark = ADAPTER_MARK[strategy]
        assert saved and all(mark in k or "classifier" in k or "head" in k for k in saved)
        adapter_config = json.loads((tmp_path / "adapter_config.json").read_text())
        assert adapter_config["peft_type"] == strategy.upper()
        if strategy == "lora":
            assert (adapter_config["use_dora"], adapter_config["use_rslora"]) == (
                configured == "dora",
                configured == "rslora",
            )


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
    config = trial_config(
        "partial", head_lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, unfreeze_depth=3, **COMMON
    )
    with pytest.raises(ValueError, match="unfreeze_depth must be ≤ the model's 2 blocks"):
        prepare(build_model(model_spec("hf", tiny_bert), num_classes=3), config)


def test_optimizer_groups_follow_a_wrapper_that_replaces_the_parameters(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """FSDP2's `fully_shard` (here on CPU, a gloo group of one process) replaces every parameter with a
    DTensor: groups looked up by name hold the new objects, with their learning rates."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    prepared = prepare(build_model(model_spec("hf", tiny_bert), num_classes=3), CONFIGS["full"])
    stale = {n: p for n, p in prepared.model.named_parameters()}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for block in prepared.model.bert.encoder.layer:
            fully_shard(block)
        fully_shard(prepared.model)
        groups = prepared.optimizer_groups(prepared.model)
        wrapped = dict(prepared.model.named_parameters())
        assert [g["name"] for g in groups] == [g.name for g in prepared.param_groups]
        for group, planned in zip(groups, prepared.param_groups, strict=True):
            assert group["lr"] == planned.lr
            names = planned.param_names
            assert all(
                p is wrapped[n] and p is not stale[n] for p, n in zip(group["params"], names, strict=True)
            )
        optimizer = torch.optim.AdamW(groups)
        logits(prepared.model, batch("hf")).logsumexp(1).mean().backward()
        optimizer.step()  # the optimizer steps the sharded parameters
    finally:
        dist.destroy_process_group()
