"""resolve_data on image folders: every split a folder, folders mixed with tables (one column mapping
for both), and what is on disk checked against the form the spec names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsearch.data.datasets import load_split
from tlsearch.data.tables import file_sha256
from tlsearch.errors import UserInputError
from tlsearch.search.resolve import resolve, resolve_data
from tlsearch.spec import validate_spec
from tlsearch.testing import image_rows, image_spec, write_image_folder, write_parquet


def folder_spec(tmp_path: Path, **data: object) -> dict:
    spec = image_spec({"train": Path("unused"), "validation": Path("unused")}, tmp_path / "runs")
    spec["data"] = data
    return spec


def test_every_split_a_folder(tmp_path: Path) -> None:
    splits = {
        name: write_image_folder(image_rows(n, seed=i, size=8), tmp_path / name)
        for i, (name, n) in enumerate((("train", 9), ("validation", 6), ("test", 3)))
    }
    spec = folder_spec(tmp_path, **{name: f"{path}/" for name, path in splits.items()})
    files, hashes = resolve_data(validate_spec(spec), tmp_path / "run")
    assert (files.input_column, files.label_column, files.input_kind) == ("image", "label", "image")
    assert files.labels == ("0", "1", "2")
    assert files.train == str(splits["train"].resolve()) and files.test == str(splits["test"].resolve())
    assert hashes == {name: file_sha256(path) for name, path in splits.items()}
    assert len(set(hashes.values())) == 3
    assert load_split(files, "validation").inputs[0] == "0/000.png"


def test_a_folder_mixed_with_a_table_takes_the_tables_column_names(tmp_path: Path) -> None:
    rows = [{"img": r["image"], "y": r["label"]} for r in image_rows(9, seed=0, size=8)]
    train = write_parquet(rows, tmp_path / "train.parquet")
    validation = write_image_folder(image_rows(6, seed=1, size=8), tmp_path / "val")
    spec = folder_spec(
        tmp_path, train=str(train), validation=str(validation), image_column="img", label_column="y"
    )
    files, _ = resolve_data(validate_spec(spec), tmp_path / "run")
    assert (files.input_column, files.label_column, files.labels) == ("img", "y", ("0", "1", "2"))
    train_split, validation_split = load_split(files, "train"), load_split(files, "validation")
    assert isinstance(train_split.inputs[0], bytes) and validation_split.inputs[0] == "0/000.png"
    assert validation_split.base_dir == validation.resolve() and train_split.base_dir == tmp_path.resolve()
    assert validation_split.targets.tolist() == [0, 0, 1, 1, 2, 2]


def test_what_is_on_disk_must_be_the_form_the_spec_names(tmp_path: Path) -> None:
    folder = write_image_folder(image_rows(6, seed=1, size=8), tmp_path / "folder")
    table = write_parquet(image_rows(6, seed=2, size=8), tmp_path / "table.parquet")
    a_file = tmp_path / "images"
    a_file.write_bytes(table.read_bytes())
    parquet_named_folder = write_image_folder(image_rows(6, seed=3, size=8), tmp_path / "dir.parquet")
    cases = [
        ({"train": str(a_file), "validation": str(folder)}, "data.train: .* is a file where an image folder"),
        (
            {"train": str(table), "validation": str(parquet_named_folder), "image_column": "image"},
            r"data.validation: .* is a directory, but a .parquet split is one file",
        ),
        (
            {"train": str(folder), "validation": str(tmp_path / "nope")},
            "data.validation: image folder not found",
        ),
    ]
    for data, message in cases:
        with pytest.raises(UserInputError, match=message):
            resolve_data(validate_spec(folder_spec(tmp_path, **data)), tmp_path / "run")


def test_default_strategies_a_convolutional_model_cannot_run_are_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        split: write_parquet(image_rows(9, seed=i, size=8), tmp_path / f"{split}.parquet")
        for i, split in enumerate(("train", "validation"))
    }
    model = {"name": "test_efficientnet"}
    spec = validate_spec(image_spec(files, tmp_path / "runs", model=model, audit={"enabled": False}))
    assert "lora" in spec.strategies.enabled()  # the defaults, before the model is known
    resolved = resolve(spec, tmp_path / "run")
    assert "lora" not in resolved.space.strategy_names()
    assert "lora" not in resolved.spec.strategies.enabled()
    assert {"linear_probe", "full"} <= set(resolved.space.strategy_names())
    assert (
        "default strategy `lora` left out: strategies.lora.targets: the LoRA target preset"
        in capsys.readouterr().out
    )

    named = image_spec(
        files, tmp_path / "runs", model=model, audit={"enabled": False}, strategies={"lora": {}}
    )
    with pytest.raises(UserInputError, match="matches no module of this model"):
        resolve(validate_spec(named), tmp_path / "run2")


def test_a_resumed_search_is_resolved_as_it_started_without_building_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlsearch.search import resolve as resolve_module
    from tlsearch.search.resolve import read_resolved_spec, write_resolved_spec

    files = {
        split: write_parquet(image_rows(9, seed=i, size=8), tmp_path / f"{split}.parquet")
        for i, split in enumerate(("train", "validation"))
    }
    spec = validate_spec(image_spec(files, tmp_path / "runs", audit={"enabled": False}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = resolve(spec, run_dir)
    write_resolved_spec(started, run_dir)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed search built its model again")

    monkeypatch.setattr(resolve_module, "build_model", no_model)
    resumed = resolve(read_resolved_spec(run_dir), run_dir, resuming=True)
    assert (resumed.num_blocks, resumed.pooling, resumed.data.loader) == (
        started.num_blocks,
        started.pooling,
        started.data.loader,
    )
    assert resumed.space.strategy_names() == started.space.strategy_names()
    for name in started.space.strategy_names():
        assert resumed.space.dims(name) == started.space.dims(name)
    assert resumed.study_name == started.study_name and resumed.hashes == started.hashes
