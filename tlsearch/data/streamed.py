"""Splits streamed from Parquet by Ray Data (`data.loader: ray_data`).

A trial's rows are read a block at a time, tokenised or decoded in Ray Data's tasks (anywhere on the
cluster), and handed to the training loop in batches: a worker holds the blocks in flight, not the
split. The training split is divided among a trial's workers by Ray Train (each rank the same number
of rows, as DDP and FSDP need the same number of steps); the validation split so that every row is
evaluated exactly once across the workers (tlsearch.search.trainable.EachValidationRowOnce).

Rows reach the loop in the same form as the in-memory data sets give them (tlsearch.data.datasets):
text as a dict of token tensors padded to the batch's longest row, images as uint8 pixels the device
normalises, targets as class indices.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tlsearch.data.tables import DataFiles, is_missing, label_strings, open_image
from tlsearch.errors import UserInputError
from tlsearch.spec.model import ModelSpec

MEMORY, RAY_DATA = "memory", "ray_data"
# `data.loader: auto` streams a split larger than this once tokenised or decoded.
STREAM_ABOVE_BYTES = 2 * 1024**3
# Rows per Ray Data task: a block of tokens or pixels, small next to a worker's memory.
ENCODE_BATCH_ROWS = 256
# Training rows shuffled within this many before batching, besides the blocks' random order.
SHUFFLE_BUFFER_ROWS = 2048
LABEL = "label"


def parquet_rows(path: str) -> int:
    """A Parquet file's row count, from its footer (no data read)."""
    return int(pq.ParquetFile(path).metadata.num_rows)


def encoded_bytes_per_row(input_kind: str, model: ModelSpec, preprocessing: Any) -> int:
    """What one row takes once tokenised or decoded as the model reads it: int64 token ids and
    attention mask at `max_length`, or uint8 pixels at the model's input size."""
    if input_kind == "text":
        return 2 * 8 * model.max_length
    return int(np.prod(preprocessing["input_size"]))


def choose_loader(
    files: DataFiles,
    model: ModelSpec,
    preprocessing: Any,
    asked: str,
    refusals: list[tuple[str, str]],
    *,
    stream_above_bytes: int = STREAM_ABOVE_BYTES,
) -> tuple[str, str]:
    """`data.loader` resolved (memory or ray_data) and why: `auto` streams when a training or
    validation split would exceed `stream_above_bytes` once encoded and nothing in `refusals`
    (tlsearch.spec.model.streaming_refusals) stands in the way."""
    if asked != "auto":
        return asked, "data.loader"
    per_row = encoded_bytes_per_row(files.input_kind, model, preprocessing)
    sizes = {}
    for split in ("train", "validation"):
        path = files.path(split)
        if Path(path).suffix.lower() in (".parquet", ".pq"):
            sizes[split] = parquet_rows(path) * per_row
    large = {split: size for split, size in sizes.items() if size > stream_above_bytes}
    if not large:
        return MEMORY, f"every split under {stream_above_bytes / 1024**3:g} GiB encoded"
    described = ", ".join(f"{split} {size / 1024**3:.1f} GiB" for split, size in large.items())
    if refusals:
        field, why = refusals[0]
        return MEMORY, f"{described} encoded, but data.{field}: {why}"
    return RAY_DATA, f"{described} encoded"


def streamed_split(
    files: DataFiles, split: str, model: ModelSpec, preprocessing: Any, augmentation: str = "none"
) -> Any:
    """`split` as a Ray dataset of encoded rows: token columns or `pixels`, and `label`.
    `preprocessing`: the model's tokenizer or image data config (`LoadedModel.preprocessing`), shipped
    to Ray Data's tasks with them."""
    import ray.data

    dataset = ray.data.read_parquet(files.path(split), columns=[files.input_column, files.label_column])
    return dataset.map_batches(
        _encode,  # type: ignore[arg-type]  # keyword arguments after the batch: fn_kwargs
        batch_size=ENCODE_BATCH_ROWS,
        batch_format="numpy",
        fn_kwargs={
            "files": files,
            "split": split,
            "max_length": model.max_length,
            "preprocessing": preprocessing,
            "augmentation": augmentation if split == "train" else "none",
        },
    )


def _image_transform(preprocessing: dict[str, Any], augmentation: str) -> Any:
    if augmentation != "none":
        from tlsearch.data.augmentation import training_transform

        return training_transform(preprocessing, augmentation)
    from timm.data import create_transform

    return create_transform(**preprocessing, is_training=False, use_prefetcher=True)


def _encode(
    batch: dict[str, np.ndarray],
    *,
    files: DataFiles,
    split: str,
    max_length: int,
    preprocessing: Any,
    augmentation: str,
) -> dict[str, np.ndarray]:
    """One Ray Data batch of raw rows, encoded (a task on any node of the cluster)."""
    path = files.path(split)
    labels, inputs = batch[files.label_column], batch[files.input_column]
    index = {label: i for i, label in enumerate(files.labels)}
    if any(is_missing(v) for v in labels):
        raise UserInputError(f"{path}: label column `{files.label_column}` has missing values: fill them")
    unknown = sorted({str(v) for v in labels} - set(index))
    if unknown:
        raise UserInputError(
            f"{path}: labels {unknown[:5]} are not in the label set {list(files.labels)[:10]}"
        )
    if any(v is None for v in inputs):
        raise UserInputError(f"{path}: rows without `{files.input_column}`: fill them")
    out: dict[str, np.ndarray] = {LABEL: np.asarray([index[str(v)] for v in labels], dtype=np.int64)}
    if files.input_kind == "text":
        encoded = preprocessing(
            [str(t) for t in inputs],
            truncation=True,
            max_length=max_length,
            padding="max_length",  # fixed-width columns; each training batch is cut to its longest row
            return_tensors="np",
        )
        out.update({key: np.asarray(value, dtype=np.int32) for key, value in encoded.items()})
    else:
        transform = _image_transform(preprocessing, augmentation)
        base_dir = Path(path).resolve().parent
        out["pixels"] = np.stack(
            [transform(open_image(item, base_dir).convert("RGB")).numpy() for item in inputs]
        )
    return out


class StreamedBatches:
    """A rank's stream of one split (a Ray DataIterator) as the loop's batches: `(inputs, targets)`
    as the in-memory data sets collate them. `shuffle_seed`: training order, reshuffled each epoch
    (`set_epoch`); `rows_per_rank`: how many rows this rank gets per epoch (the steps per epoch of
    the learning-rate schedule), where known."""

    def __init__(
        self,
        iterator: Any,
        batch_size: int,
        input_kind: str,
        *,
        shuffle_seed: int | None = None,
        rows_per_rank: int | None = None,
    ):
        self.iterator = iterator
        self.batch_size = batch_size
        self.input_kind = input_kind
        self.shuffle_seed = shuffle_seed
        self.rows_per_rank = rows_per_rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.rows_per_rank is None:
            raise TypeError("a validation stream's length is known only once it has been read")
        return math.ceil(self.rows_per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        shuffle = self.shuffle_seed is not None
        for batch in self.iterator.iter_batches(
            batch_size=self.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS if shuffle else None,
            local_shuffle_seed=(self.shuffle_seed or 0) + self.epoch if shuffle else None,
        ):
            yield self.collate(batch)

    def collate(self, batch: dict[str, np.ndarray]) -> tuple[Any, Any]:
        import torch

        # Copies: Ray hands out read-only views of its object store, which torch must not write to.
        target = torch.from_numpy(np.array(batch[LABEL]))
        if self.input_kind != "text":
            return torch.from_numpy(np.array(batch["pixels"])), target
        # Padded to max_length in the stream: keep the columns some row uses (either padding side).
        used = batch["attention_mask"].any(axis=0)
        return {
            key: torch.from_numpy(np.array(value[:, used], dtype=np.int64))
            for key, value in batch.items()
            if key != LABEL
        }, target


def split_targets(files: DataFiles, split: str) -> np.ndarray:
    """A split's class indices, in file order (for class weights: read from the label column alone)."""
    table = pq.read_table(files.path(split), columns=[files.label_column])
    index = {label: i for i, label in enumerate(files.labels)}
    return np.asarray([index[v] for v in label_strings(table, files.label_column)], dtype=np.int64)
