"""Where a spec's data files are: your own files, or a builtin data set written out as Parquet."""

from __future__ import annotations

from pathlib import Path

from tlsearch.data.builtin import materialize
from tlsearch.data.tables import DataFiles
from tlsearch.spec.model import Spec
from tlsearch.spec.vocab import FOLDER_COLUMNS


def data_paths(spec: Spec, run_dir: Path, *, reuse: bool = False) -> tuple[dict[str, str | None], str, str]:
    """(each split's file, the input column, the input kind): your own files made absolute, or a
    builtin data set written as Parquet under `<run_dir>/data/` (reuse: keep the files already there)."""
    d = spec.data
    if d.builtin is not None:
        paths, column, kind = materialize(d.builtin, run_dir / "data", reuse=reuse)
        return {k: str(v) for k, v in paths.items()}, column, kind
    kind = "text" if spec.model.task == "text-classification" else "image"
    # An image folder's rows are read under the default column names unless tables beside it name them.
    column = (d.text_column if kind == "text" else d.image_column or FOLDER_COLUMNS[0]) or ""
    splits = {
        k: (str(Path(v).expanduser().resolve()) if v else None)
        for k, v in (("train", d.train), ("validation", d.validation), ("test", d.test))
    }
    return splits, column, kind


def audit_files(spec: Spec, directory: Path) -> DataFiles:
    """The spec's data as `tlsearch audit` reads it, unchecked: the audit itself reports a missing file
    or column. A builtin data set is written under `directory`."""
    splits, column, kind = data_paths(spec, directory)
    return DataFiles(
        train=splits["train"],  # type: ignore[arg-type]
        validation=splits["validation"],  # type: ignore[arg-type]
        test=splits.get("test"),
        input_column=column,
        input_kind=kind,
        label_column=spec.data.label_column,
        labels=(),  # the audit finds the labels itself
    )
