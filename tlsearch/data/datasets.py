"""Torch datasets over a split: pre-tokenised text or decoded-on-the-fly images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tlsearch.data.tables import DataFiles, label_strings, open_image, stratified_subset
from tlsearch.errors import UserInputError


@dataclass
class Split:
    inputs: list[Any]  # texts, image bytes or image paths
    targets: np.ndarray  # class indices (int64)
    base_dir: Path  # image paths are relative to the data file's folder, or to the image folder


def load_split(files: DataFiles, split: str) -> Split:
    """A split's rows as training reads them: for `train`, without the rows the audit drops, then the
    `max_train_samples` subset of the rest."""
    path = files.path(split)
    table = files.read(split, [files.input_column, files.label_column])
    kept = np.arange(table.num_rows)
    if split == "train" and files.drop_train_rows:
        kept = np.setdiff1d(kept, np.asarray(files.drop_train_rows, dtype=np.int64))
    labels = label_strings(table, files.label_column, kept.tolist())
    limit = {"train": files.max_train_samples, "validation": files.max_validation_samples}.get(split)
    subset = stratified_subset(labels, limit)
    rows, labels = kept[subset], [labels[i] for i in subset]
    index = {label: i for i, label in enumerate(files.labels)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise UserInputError(
            f"{path}: labels {unknown[:5]} are not in the label set {list(files.labels)[:10]}"
        )
    inputs = table.column(files.input_column).to_pylist()
    missing = sum(inputs[i] is None for i in rows)
    if missing:
        raise UserInputError(
            f"{path}: {missing} rows have no `{files.input_column}`: fill them, or drop those training rows "
            "with `audit.drop: [undecodable_inputs]`"
        )
    return Split(
        inputs=[inputs[i] for i in rows],
        targets=np.asarray([index[label] for label in labels], dtype=np.int64),
        base_dir=Path(path).resolve() if Path(path).is_dir() else Path(path).resolve().parent,
    )


class TextDataset(Dataset):
    """Tokenised once up front (fast tokenizers batch this); padded per batch by `collate`."""

    def __init__(self, split: Split, tokenizer: Any, max_length: int):
        encoded = tokenizer([str(t) for t in split.inputs], truncation=True, max_length=max_length)
        self.features = [{key: encoded[key][i] for key in encoded} for i in range(len(split.inputs))]
        self.targets = split.targets
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[dict[str, list[int]], int]:
        return self.features[i], int(self.targets[i])

    def collate(
        self, batch: list[tuple[dict[str, list[int]], int]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        features = self.tokenizer.pad([f for f, _ in batch], return_tensors="pt")
        return dict(features), torch.tensor([t for _, t in batch], dtype=torch.long)


class ImageDataset(Dataset):
    """Images as encoded bytes or file paths, decoded and transformed per item into uint8 pixels
    (timm's transforms with `use_prefetcher=True`)."""

    def __init__(self, split: Split, transform: Callable[[Any], torch.Tensor]):
        self.split = split
        self.targets = split.targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = open_image(self.split.inputs[i], self.split.base_dir).convert("RGB")
        return self.transform(image), int(self.split.targets[i])

    @staticmethod
    def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 pixels (the transform's `use_prefetcher=True` output): the training device
        normalises them (tlsearch/train/batches.py)."""
        from timm.data.loader import fast_collate

        return fast_collate(batch)
