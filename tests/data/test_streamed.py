"""Streamed splits (data.loader: ray_data): `auto` chooses them for large splits, the spec refuses
what a stream cannot do, the rows reach the loop as the in-memory data sets give them, and a process
reading a stream holds much less than one holding the whole split."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.streamed_data import held_gib, synthetic_split
from tlsearch.data.datasets import ImageDataset, TextDataset, load_split
from tlsearch.data.streamed import MEMORY, RAY_DATA, StreamedBatches, choose_loader, streamed_split
from tlsearch.errors import SpecError
from tlsearch.models.sources import build_model
from tlsearch.search.resolve import resolve_data
from tlsearch.spec import validate_spec
from tlsearch.spec.model import streaming_refusals
from tlsearch.testing import image_rows, image_spec, text_rows, text_spec, write_parquet
from tlsearch.train.loop import split_dataset
from tlsearch.train.session import LocalSession

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def text_data(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_parquet(text_rows(90, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(31, seed=2), tmp_path / "validation.parquet"),
    }


def test_auto_streams_a_split_over_the_threshold_unless_the_spec_stands_in_the_way(
    tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    spec = validate_spec(text_spec(tiny_bert, text_data, tmp_path / "runs"))
    files, _ = resolve_data(spec, tmp_path)
    tokenizer = build_model(spec.model, 3, weights=False).preprocessing
    # 90 training rows x 16 tokens x (ids + mask) x 8 bytes: 23,040 bytes.
    assert choose_loader(files, spec.model, tokenizer, "auto", [], stream_above_bytes=20_000) == (
        RAY_DATA,
        "train 0.0 GiB encoded",
    )
    loader, why = choose_loader(files, spec.model, tokenizer, "auto", [], stream_above_bytes=30_000)
    assert loader == MEMORY and "under" in why
    refused = [("max_train_samples", "draws its subset by row position")]
    loader, why = choose_loader(files, spec.model, tokenizer, "auto", refused, stream_above_bytes=20_000)
    assert loader == MEMORY and "data.max_train_samples: draws its subset" in why
    assert choose_loader(files, spec.model, tokenizer, "ray_data", [])[0] == RAY_DATA


def test_the_spec_refuses_what_a_stream_cannot_do_all_at_once(tiny_bert: Path, tmp_path: Path) -> None:
    files = {"train": tmp_path / "train.csv", "validation": tmp_path / "validation.parquet"}
    spec = text_spec(
        tiny_bert,
        files,
        tmp_path / "runs",
        data={"loader": "ray_data", "max_train_samples": 10},
        audit={"drop": ["missing_labels"]},
        strategies={"full": {}, "lp_ft": {}},
    )
    with pytest.raises(SpecError) as info:
        validate_spec(spec)
    problems = "\n".join(info.value.problems)
    for expected in (
        "data.train",
        "streaming reads Parquet files",
        "data.max_train_samples",
        "audit.drop",
        "strategies.lp_ft cannot read streamed data",
    ):
        assert expected in problems, problems
    # `auto` takes the same reasons as grounds to hold the splits in memory, and refuses nothing.
    auto = validate_spec({**spec, "data": {**spec["data"], "loader": "auto"}})
    assert len(streaming_refusals(auto)) == 4


def _memory_rows(dataset: Any) -> list[tuple[Any, int]]:
    batch, targets = dataset.collate([dataset[i] for i in range(len(dataset))])
    return _rows(batch, targets)


def _rows(batch: Any, targets: torch.Tensor) -> list[tuple[Any, int]]:
    """(input, target) per row, text trimmed of its padding: comparable whatever the batching."""
    if isinstance(batch, dict):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return [(tuple(ids[i][mask[i].bool()].tolist()), int(t)) for i, t in enumerate(targets)]
    images = [tuple(np.asarray(image).ravel().tolist()) for image in batch]
    return [(image, int(t)) for image, t in zip(images, targets, strict=True)]


@pytest.mark.integration
def test_streams_give_the_rows_the_in_memory_data_sets_give(  # type: ignore[no-untyped-def]
    ray_connected, tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    image_data = {
        "train": write_parquet(image_rows(20, seed=1), tmp_path / "images" / "train.parquet"),
        "validation": write_parquet(image_rows(9, seed=2), tmp_path / "images" / "validation.parquet"),
    }
    for spec_dict in (
        text_spec(tiny_bert, text_data, tmp_path / "runs"),
        image_spec(image_data, tmp_path / "runs"),
    ):
        spec = validate_spec(spec_dict)
        files, _ = resolve_data(spec, tmp_path)
        loaded = build_model(spec.model, len(files.labels), weights=False)
        for split in ("train", "validation"):
            in_memory = split_dataset(load_split(files, split), files.input_kind, spec.model, loaded)
            assert isinstance(in_memory, TextDataset | ImageDataset)
            stream = StreamedBatches(
                LocalSession().stream(
                    split, functools.partial(streamed_split, files, split, spec.model, loaded.preprocessing)
                ),
                batch_size=4,
                input_kind=files.input_kind,
                shuffle_seed=0 if split == "train" else None,
            )
            streamed = [row for batch, targets in stream for row in _rows(batch, targets)]
            assert sorted(streamed) == sorted(_memory_rows(in_memory)), (spec.model.source, split)


@pytest.mark.integration
@pytest.mark.slow
def test_a_stream_holds_much_less_than_the_whole_split(  # type: ignore[no-untyped-def]
    ray_connected, tmp_path: Path
) -> None:
    rows = 60_000
    files, model = synthetic_split(tmp_path, rows)
    held = {mode: held_gib(files, model, mode, ray_connected.address) for mode in ("memory", "ray_data")}
    assert all(h["rows"] == rows for h in held.values())
    # Tokenised whole, the split's rows are Python lists of token ids; streamed, a few blocks.
    assert held["ray_data"]["held_gib"] < 0.25 * held["memory"]["held_gib"], held
