"""Shared fixtures: tiny real models built from code and saved locally, tiny labelled data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may reach a model hub: every model here is built from code or loaded from a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tlsearch.testing import image_rows, make_tiny_bert, make_tiny_vit, text_rows, write_parquet


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text-data")
    return {
        "train": write_parquet(text_rows(48, seed=1), root / "train.parquet"),
        "validation": write_parquet(text_rows(24, seed=2), root / "validation.parquet"),
    }


@pytest.fixture(scope="session")
def image_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-data")
    return {
        "train": write_parquet(image_rows(36, seed=1), root / "train.parquet"),
        "validation": write_parquet(image_rows(18, seed=2), root / "validation.parquet"),
    }
