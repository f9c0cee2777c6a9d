"""Reading user data: Parquet and CSV, image bytes and image paths, labels, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from tlsearch.data.datasets import ImageDataset, TextDataset, load_split
from tlsearch.data.tables import DataFiles, column_names, label_set, read_table
from tlsearch.errors import UserInputError
from tlsearch.testing import image_rows, text_rows


def files(
    train: Path, validation: Path, column: str, kind: str, labels: tuple[str, ...], **kw: object
) -> DataFiles:
    return DataFiles(str(train), str(validation), None, column, kind, "label", labels, **kw)  # type: ignore[arg-type]


def test_csv_text_split_tokenised_and_padded(tmp_path: Path, tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    path = tmp_path / "train.csv"
    pacsv.write_csv(pa.Table.from_pylist(text_rows(12, seed=0)), path)
    assert column_names(path) == ["text", "label"]
    labels = label_set([read_table(path)], "label")
    split = load_split(files(path, path, "text", "text", labels, max_train_samples=6), "train")
    assert len(split.inputs) == 6 and sorted(split.targets.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    dataset = TextDataset(split, AutoTokenizer.from_pretrained(tiny_bert), max_length=5)
    features, target = dataset.collate([dataset[0], dataset[1]])
    assert features["input_ids"].shape == (2, 5) and target.dtype == torch.long


def test_images_as_bytes_and_as_relative_paths(tmp_path: Path) -> None:
    from timm.data import create_transform

    rows = image_rows(6, seed=0, size=16)
    (tmp_path / "img").mkdir()
    for i, row in enumerate(rows):
        (tmp_path / "img" / f"{i}.png").write_bytes(row["image"])
    by_bytes = tmp_path / "bytes.parquet"
    by_path = tmp_path / "paths.parquet"
    pq.write_table(pa.Table.from_pylist(rows), by_bytes)
    pq.write_table(
        pa.Table.from_pylist([{"image": f"img/{i}.png", "label": r["label"]} for i, r in enumerate(rows)]),
        by_path,
    )
    transform = create_transform(input_size=(3, 16, 16), crop_pct=1.0, use_prefetcher=True)
    labels = ("0", "1", "2")
    a = ImageDataset(load_split(files(by_bytes, by_bytes, "image", "image", labels), "train"), transform)
    b = ImageDataset(load_split(files(by_path, by_path, "image", "image", labels), "train"), transform)
    assert torch.equal(a[3][0], b[3][0]) and a[3][1] == b[3][1] == 0
    images, targets = ImageDataset.collate([a[0], a[1]])
    # uint8 pixels: normalised on the training device (tests/train/test_batches.py)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8 and targets.tolist() == [0, 1]


def test_numeric_labels_sort_numerically() -> None:
    table = pa.table({"label": [10, 2, 1, 2]})
    assert label_set([table], "label") == ("1", "2", "10")


def test_bad_data_gets_clear_errors(tmp_path: Path) -> None:
    missing_label = tmp_path / "m.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", None]}), missing_label)
    # A missing label is no class; reading the split refuses it unless the audit drops its row.
    assert label_set([read_table(missing_label)], "label") == ("x",)
    with pytest.raises(
        UserInputError, match=r"1 missing values: fill them, or drop .* `audit.drop: \[missing_labels\]`"
    ):
        load_split(files(missing_label, missing_label, "text", "text", ("x",)), "train")
    assert load_split(
        files(missing_label, missing_label, "text", "text", ("x",), drop_train_rows=(1,)), "train"
    ).inputs == ["a"]
    good = tmp_path / "g.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "zzz"]}), good)
    with pytest.raises(UserInputError, match=r"labels \['zzz'\] are not in the label set"):
        load_split(files(good, good, "text", "text", ("x", "y")), "train")
    with pytest.raises(UserInputError, match="data file not found"):
        read_table(tmp_path / "nope.parquet")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(UserInputError, match="cannot read"):
        column_names(tmp_path / "broken.parquet")
