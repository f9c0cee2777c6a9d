"""Labelled tables on disk (Parquet or CSV via pyarrow, or an image folder read as a table): reading,
hashing, labels, subsets."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tlsearch.data.folders import image_folder_sha256, read_image_folder
from tlsearch.errors import UserInputError
from tlsearch.spec.vocab import FOLDER_COLUMNS

# Subsets are drawn with this seed, independent of the search seed, so that two searches over the
# same spec data see the same rows.
SUBSET_SEED = 20261127


@dataclass(frozen=True)
class DataFiles:
    """Where a search's data lives and how to read it; shipped to every worker."""

    train: str
    validation: str
    test: str | None
    input_column: str
    input_kind: str  # "text" | "image"
    label_column: str
    labels: tuple[str, ...]  # class names in index order, as strings
    max_train_samples: int | None = None
    max_validation_samples: int | None = None
    # Training rows (0-based positions in the file) the data audit's `audit.drop` removes, before the
    # max_train_samples subset is drawn from the rest.
    drop_train_rows: tuple[int, ...] = ()
    # How trials read the training and validation rows: `memory` or `ray_data` (`data.loader`
    # resolved; tlsearch.data.streamed).
    loader: str = "memory"

    def path(self, split: str) -> str:
        value = getattr(self, split)
        if value is None:
            raise UserInputError(f"no `{split}` split in this search's data")
        return value

    def read(self, split: str, columns: Sequence[str] | None = None) -> pa.Table:
        """A split as a table, an image folder's with this search's input and label column names."""
        return read_table(self.path(split), columns, folder_columns=(self.input_column, self.label_column))


def read_table(
    path: str | Path,
    columns: Sequence[str] | None = None,
    *,
    folder_columns: tuple[str, str] = FOLDER_COLUMNS,
) -> pa.Table:
    """A Parquet or CSV file, or a directory read as an image folder whose table has the columns
    `folder_columns` (image path relative to the directory, label)."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"data file not found: {path}")
    if path.is_dir():
        table = read_image_folder(path, *folder_columns)
        missing = [c for c in columns or () if c not in table.column_names]
        if missing:
            raise UserInputError(
                f"{path} is an image folder, read as the columns {', '.join(folder_columns)}: it has no "
                f"column {', '.join(missing)}"
            )
        return table.select(list(columns)) if columns else table
    _check_not_empty(path)
    try:
        if path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path)
            return table.select(list(columns)) if columns else table
        return pq.read_table(path, columns=list(columns) if columns else None)
    except (pa.ArrowInvalid, KeyError) as exc:
        raise UserInputError(f"cannot read {path}: {exc}") from None


def column_names(path: str | Path, *, folder_columns: tuple[str, str] = FOLDER_COLUMNS) -> list[str]:
    """Column names without reading the data (Parquet schema; CSV header; an image folder's two)."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"data file not found: {path}")
    if path.is_dir():
        return list(folder_columns)
    return _schema(path).names


def _schema(path: Path) -> pa.Schema:
    """A Parquet file's schema, or a CSV file's as pyarrow infers it from its first block."""
    _check_not_empty(path)
    try:
        if path.suffix.lower() == ".csv":
            with pacsv.open_csv(path) as reader:
                return reader.schema
        return pq.read_schema(path)
    except pa.ArrowInvalid as exc:
        raise UserInputError(f"cannot read {path}: {exc}") from None


def _check_not_empty(path: Path) -> None:
    if path.is_file() and path.stat().st_size == 0:
        raise UserInputError(
            f"{path} is empty (0 bytes): write the split's rows into it (Parquet, or CSV with a header)"
        )


def check_column_types(
    key: str, path: str | Path, input_column: str, input_kind: str, label_column: str
) -> None:
    """The input and label columns hold what a classifier reads: texts as strings; images as encoded
    bytes, paths or Hugging Face's {bytes, path} struct; labels as strings, integers or booleans (a
    float label is a regression target, or integers that a missing value turned into floats). Read
    from the schema only; an image folder's columns are right by construction. `key`: the spec's key
    that names the file (`data.train`)."""
    path = Path(path)
    if path.is_dir():
        return
    schema = _schema(path)
    types = dict(zip(schema.names, schema.types, strict=True))
    wanted = {
        input_column: ("text" if input_kind == "text" else "image", _takes_input(input_kind)),
        label_column: ("label", _is_label),
    }
    for column, (what, fits) in wanted.items():
        kind = types[column]
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_null(kind) or fits(kind)):
            raise UserInputError(
                f"{key} ({path}): column `{column}` holds {types[column]} values, not {what}s: "
                + _TYPE_FIXES[what].format(column=column)
            )


_TYPE_FIXES = {
    "text": "store the texts as strings (pandas: df[{column!r}] = df[{column!r}].astype(str))",
    "image": "store encoded image bytes (PNG, JPEG), image paths, or {{bytes, path}} structs",
    "label": "store class names as strings or integers (pandas: "
    "df[{column!r}] = df[{column!r}].astype('Int64') for whole numbers, or .astype(str))",
}


def _takes_input(kind: str) -> Callable[[pa.DataType], bool]:
    return _is_text if kind == "text" else _is_image


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_image(kind: pa.DataType) -> bool:
    return (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or _is_text(kind)  # a path
        or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)
    )


def _is_label(kind: pa.DataType) -> bool:
    return _is_text(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)


def open_image(item: Any, base_dir: Path) -> Any:
    """A PIL image from a table cell: encoded bytes, Hugging Face datasets' `{bytes, path}` struct, or
    a file path (relative to the data file's directory `base_dir`). Decoded lazily, as PIL does."""
    from PIL import Image

    if isinstance(item, bytes | bytearray):
        return Image.open(io.BytesIO(item))
    if isinstance(item, dict) and "bytes" in item:  # Hugging Face datasets' image struct
        return Image.open(io.BytesIO(item["bytes"])) if item["bytes"] else Image.open(item["path"])
    path = Path(str(item))
    return Image.open(path if path.is_absolute() else base_dir / path)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, or of an image folder's images (tlsearch.data.folders): the data's
    fingerprint, which resume and the feature cache compare."""
    if Path(path).is_dir():
        return image_folder_sha256(path)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_missing(value: object) -> bool:
    """A missing or empty value (a label, a text): None, or a string of whitespace only."""
    return value is None or (isinstance(value, str) and not value.strip())


def label_strings(table: pa.Table, column: str, rows: Sequence[int] | None = None) -> list[str]:
    """Labels as strings, the one representation every split and checkpoint shares; `rows`: only
    those rows (all by default), refused when any of them has no label."""
    values = table.column(column).to_pylist()
    if rows is not None:
        values = [values[i] for i in rows]
    missing = sum(is_missing(v) for v in values)
    if missing:
        raise UserInputError(
            f"label column `{column}` has {missing} missing values: fill them, or drop those training "
            "rows with `audit.drop: [missing_labels]`"
        )
    return [str(v) for v in values]


def label_set(tables: Sequence[pa.Table], column: str) -> tuple[str, ...]:
    """Sorted union of the labels in all splits (numeric labels sort numerically). Missing labels are
    no class: the data audit reports them, and reading a split refuses them unless they are dropped."""
    seen: set[str] = set()
    for table in tables:
        seen.update(str(v) for v in table.column(column).to_pylist() if not is_missing(v))

    def key(label: str) -> tuple[int, float | str]:
        try:
            return (0, float(label))
        except ValueError:
            return (1, label)

    return tuple(sorted(seen, key=key))


def stratified_subset(labels: Sequence[str], size: int | None, seed: int = SUBSET_SEED) -> np.ndarray:
    """Row indices of a class-stratified subset of `size` rows (all rows when size is None or larger)."""
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(n), train_size=size, stratify=_stratifiable(labels), random_state=seed
    )
    return np.sort(keep)


def _stratifiable(labels: Sequence[str]) -> Sequence[str] | None:
    # Stratification needs at least two rows per class; fall back to a plain random subset.
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return labels if counts.min() >= 2 else None
