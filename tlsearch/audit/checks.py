"""The audit's checks on the tables themselves: what each row holds, exact duplicates, class balance.

Every split is read whole (before `data.max_*_samples`), and each row is looked at once: its label
(missing or empty?), its input (missing or empty? for images: does it decode?) and the key it is
compared by: the text normalised (case, whitespace, punctuation), or a hash of the decoded pixels.
Images keep their perceptual hash and a small grayscale copy for the near-duplicate search.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.data.tables import DataFiles, column_names, is_missing, open_image
from tlsearch.errors import UserInputError

SPLITS = ("train", "validation", "test")
# Each pair of splits, the earlier one first: across-split findings count the later split's rows.
PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
THUMBNAIL = 32  # images are compared as THUMBNAIL x THUMBNAIL grayscale pixels (as pHash reads them)
_NOT_WORD = re.compile(r"[^\w\s]|_")


def pair_name(earlier: str, later: str) -> str:
    return f"{earlier}/{later}"


def normalise_text(text: str) -> str:
    """Case folded, punctuation and symbols removed, whitespace collapsed."""
    return " ".join(_NOT_WORD.sub("", text.casefold()).split())


@dataclass
class SplitRows:
    """One split as the audit sees it. Row ids are 0-based positions in the file as read."""

    name: str
    path: str
    labels: list[str | None]  # None: missing or empty
    missing_inputs: list[int] = field(default_factory=list)
    unreadable_inputs: list[int] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)  # as stored: texts, image bytes or paths
    keys: list[str | None] = field(default_factory=list)  # exact-duplicate key; None: no usable input
    texts: list[str | None] = field(default_factory=list)  # normalised texts (text data)
    phashes: np.ndarray | None = None  # uint64 per row (images; 0 where unusable)
    thumbnails: np.ndarray | None = None  # rows x THUMBNAIL² float32, centred and unit length (images)

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def base_dir(self) -> Path:
        path = Path(self.path).resolve()
        return path if path.is_dir() else path.parent  # an image folder's paths are relative to it

    def usable(self, row: int) -> bool:
        """The row's input can be compared and fed to a model."""
        return self.keys[row] is not None

    def missing_labels(self) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label is None]


def read_splits(files: DataFiles) -> tuple[dict[str, SplitRows], list[str]]:
    """(the splits that could be read, the problems that make the data unusable)."""
    splits: dict[str, SplitRows] = {}
    problems: list[str] = []
    for name in SPLITS:
        path = getattr(files, name)
        if path is None:
            continue
        try:
            names = column_names(path, folder_columns=(files.input_column, files.label_column))
            absent = [c for c in (files.input_column, files.label_column) if c not in names]
            if absent:
                problems.append(
                    f"data.{name} ({path}) has no column {', '.join(f'`{c}`' for c in absent)}; "
                    f"its columns: {', '.join(names)}"
                )
                continue
            table = files.read(name, [files.input_column, files.label_column])
        except UserInputError as exc:
            problems.append(f"data.{name}: {exc}")
            continue
        if table.num_rows == 0:
            problems.append(f"data.{name} ({path}) has no rows")
            continue
        labels = [None if is_missing(v) else str(v) for v in table.column(files.label_column).to_pylist()]
        rows = SplitRows(name, str(path), labels, inputs=table.column(files.input_column).to_pylist())
        if files.input_kind == "text":
            _read_texts(rows)
        else:
            _read_images(rows)
        splits[name] = rows
    return splits, problems


def _read_texts(rows: SplitRows) -> None:
    for i, value in enumerate(rows.inputs):
        if is_missing(value):
            rows.missing_inputs.append(i)
            rows.keys.append(None)
            rows.texts.append(None)
            continue
        text = normalise_text(str(value))
        rows.keys.append(text)
        rows.texts.append(text)


def _read_images(rows: SplitRows) -> None:
    import imagehash
    from PIL import Image

    phashes = np.zeros(rows.rows, dtype=np.uint64)
    thumbnails = np.zeros((rows.rows, THUMBNAIL * THUMBNAIL), dtype=np.float32)
    for i, value in enumerate(rows.inputs):
        if value is None or value in (b"", "") or (isinstance(value, dict) and not any(value.values())):
            rows.missing_inputs.append(i)
            rows.keys.append(None)
            continue
        try:
            image = open_image(value, rows.base_dir)
            image.load()
            rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            rows.unreadable_inputs.append(i)
            rows.keys.append(None)
            continue
        digest = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
        rows.keys.append(digest)
        phashes[i] = int(str(imagehash.phash(rgb)), 16)
        gray = np.asarray(rgb.convert("L").resize((THUMBNAIL, THUMBNAIL)), dtype=np.float32).reshape(-1)
        gray -= gray.mean()
        norm = float(np.linalg.norm(gray))
        thumbnails[i] = gray / norm if norm > 0 else gray  # a flat image correlates with nothing
    rows.phashes, rows.thumbnails = phashes, thumbnails


# --- exact duplicates ---------------------------------------------------------------------------


def duplicates_within(rows: SplitRows) -> list[list[int]]:
    """Groups of rows with the same key (two or more rows each), in order of their first row."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(rows.keys):
        if key is not None:
            groups[key].append(i)
    return [group for group in groups.values() if len(group) > 1]


@dataclass
class Matches:
    """Rows of the later split of a pair that match a row of the earlier one."""

    pairs: list[tuple[int, int]]  # (earlier row, later row): one per matched later row, the first match
    earlier_rows: set[int]  # every row of the earlier split that matches some later row

    @property
    def count(self) -> int:
        return len(self.pairs)


def duplicates_across(earlier: SplitRows, later: SplitRows) -> Matches:
    first: dict[str, int] = {}
    for i, key in enumerate(earlier.keys):
        if key is not None:
            first.setdefault(key, i)
    later_keys = {key for key in later.keys if key is not None}
    pairs = [(first[key], j) for j, key in enumerate(later.keys) if key is not None and key in first]
    matched = {i for i, key in enumerate(earlier.keys) if key is not None and key in later_keys}
    return Matches(pairs, matched)


# --- classes ------------------------------------------------------------------------------------


def sort_labels(labels: set[str]) -> list[str]:
    """Numeric labels numerically, the rest by name (as the search's label set is ordered)."""

    def key(label: str) -> tuple[int, float | str]:
        try:
            return (0, float(label))
        except ValueError:
            return (1, label)

    return sorted(labels, key=key)


def class_counts(rows: SplitRows) -> dict[str, int]:
    counts = Counter(label for label in rows.labels if label is not None)
    return {label: counts[label] for label in sort_labels(set(counts))}


def share_drift(a: dict[str, int], b: dict[str, int]) -> float:
    """Total variation distance between two splits' class shares: half the summed absolute
    differences, 0 for identical shares, 1 for disjoint classes."""
    total_a, total_b = sum(a.values()) or 1, sum(b.values()) or 1
    return 0.5 * sum(abs(a.get(c, 0) / total_a - b.get(c, 0) / total_b) for c in set(a) | set(b))
