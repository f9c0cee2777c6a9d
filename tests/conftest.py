"""Shared fixtures: tiny real models built from code and saved locally, tiny labelled data sets, and
the real local Ray cluster of the integration tests (tests/integration, tests/benchmarks)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Nothing may reach a model hub: every model here is built from code or loaded from a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Imported as the session starts: it turns on Ray's token auth for this process, which Ray reads
# before any test's driver connects (a session of tests/benchmarks alone collects no integration
# conftest of its own).
from tests.integration.conftest import LocalCluster
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


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalCluster]:
    """One cluster a session, whichever directory's tests ask first."""
    cluster = LocalCluster(num_cpus=4)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ray_connected(ray_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """This test process attached to the cluster as a driver (for in-process searches). Ray adds the
    driver's working directory to its workers' path: run from the repository root (as `make test`
    does) for them to import benchmarks/ by reference."""
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False)
    try:
        yield ray_cluster
    finally:
        ray.shutdown()
