"""The feature cache: its key, its store (one builder, atomic publication, damaged files never read),
and trials trained on cached features that match trials that run the whole model."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tlsearch.models import build_model
from tlsearch.models.tails import HEAD, block_boundary
from tlsearch.search.resolve import resolve_data
from tlsearch.space import TrialConfig
from tlsearch.spec import validate_spec
from tlsearch.testing import (
    image_rows,
    image_spec,
    text_rows,
    text_spec,
    trial_config,
    write_image_folder,
    write_parquet,
)
from tlsearch.train import features
from tlsearch.train.features import FeatureDataset, FeatureStore, feature_key, write_split
from tlsearch.train.inputs import RunContext, TrialInputs
from tlsearch.train.loop import train_trial
from tlsearch.train.session import LocalSession

LINEAR_PROBE = trial_config("linear_probe", head_lr=0.1, weight_decay=0.01, warmup_fraction=0.1, batch_size=8)
PARTIAL = trial_config(
    "partial",
    head_lr=0.03,
    weight_decay=0.01,
    warmup_fraction=0.1,
    batch_size=8,
    backbone_lr=3e-3,
    layer_decay=0.8,
    unfreeze_depth=1,
)


def trial_inputs(spec: dict[str, Any], run_dir: Path, trial_id: str = "t0", **training: Any) -> TrialInputs:
    spec = {**spec, "training": {**spec.get("training", {}), **training}}
    validated = validate_spec(spec)
    data, hashes = resolve_data(validated, run_dir)
    run = RunContext(str(run_dir), validated, data, False, data_sha256=hashes)
    return TrialInputs(run, LINEAR_PROBE, trial_id, time.time())


# --- the key ---------------------------------------------------------------------------------


def key_name(inputs: TrialInputs, boundary: str = HEAD, device: str = "cpu") -> str:
    torch.manual_seed(inputs.run.spec.seed)  # as the loop does: random weights are the same each time
    loaded = build_model(inputs.run.spec.model, inputs.run.num_classes)
    return feature_key(inputs, loaded, boundary, torch.device(device)).name


def test_key_is_stable_and_changes_with_every_input(
    tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = text_spec(tiny_bert, text_data, tmp_path / "runs")
    inputs = trial_inputs(spec, tmp_path / "run")
    base = key_name(inputs)
    assert base.startswith("head-")
    assert key_name(inputs) == base  # a fresh load of the same model and data

    # The head is not part of the features: a different head leaves the key alone.
    torch.manual_seed(0)
    loaded = build_model(inputs.run.spec.model, inputs.run.num_classes)
    with torch.no_grad():
        loaded.model.classifier.weight.add_(1.0)
    assert feature_key(inputs, loaded, HEAD, torch.device("cpu")).name == base
    # ... but any frozen weight does.
    with torch.no_grad():
        loaded.model.bert.encoder.layer[0].output.dense.bias[0] += 1e-3
    assert feature_key(inputs, loaded, HEAD, torch.device("cpu")).name != base

    changed = {
        "boundary": key_name(inputs, block_boundary(1)),
        "device": key_name(inputs, device="cuda"),
        "max_length": key_name(
            trial_inputs({**spec, "model": {**spec["model"], "max_length": 12}}, tmp_path / "run")
        ),
        "subset": key_name(
            trial_inputs({**spec, "data": {**spec["data"], "max_train_samples": 30}}, tmp_path / "run")
        ),
    }
    # The training rows the data audit drops (audit.drop).
    dropped = dataclasses.replace(
        inputs.run, data=dataclasses.replace(inputs.run.data, drop_train_rows=(3, 5))
    )
    changed["dropped rows"] = key_name(dataclasses.replace(inputs, run=dropped))
    other_rows = write_parquet(text_rows(48, seed=7), tmp_path / "other.parquet")
    changed["data"] = key_name(
        trial_inputs({**spec, "data": {**spec["data"], "train": str(other_rows)}}, tmp_path / "run")
    )
    # The tokenizer: one more token in its vocabulary.
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path / "bert-more-tokens"
    shutil.copytree(tiny_bert, tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_tokens(["zebra"])
    tokenizer.save_pretrained(tokenizer_dir)
    changed["tokenizer"] = key_name(
        trial_inputs({**spec, "model": {**spec["model"], "name": str(tokenizer_dir)}}, tmp_path / "run")
    )
    monkeypatch.setattr(features, "_version", lambda library: "99.0")
    changed["versions"] = key_name(inputs)
    assert all(name != base for name in changed.values()), changed
    assert len(set(changed.values())) == len(changed)


def test_timm_key_follows_the_image_preprocessing(image_data: dict[str, Path], tmp_path: Path) -> None:
    spec = image_spec(image_data, tmp_path / "runs")
    first = key_name(trial_inputs(spec, tmp_path / "run"))
    assert key_name(trial_inputs(spec, tmp_path / "run")) == first
    larger = {**spec, "model": {**spec["model"], "image_size": 48}}
    assert key_name(trial_inputs(larger, tmp_path / "run")) != first


# --- the store -------------------------------------------------------------------------------


def build_rows(directory: Path, rows: int = 4) -> dict[str, Any]:
    features_ = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    write_split(directory / "train.arrow", features_, np.arange(rows), None)
    return {"supported": True, "splits": {"train": {"file": "train.arrow", "rows": rows, "row_shape": [3]}}}


def test_publication_is_atomic_and_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "features")

    def failing(directory: Path) -> dict[str, Any]:
        build_rows(directory)
        raise RuntimeError("the builder died half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        store.obtain("head-1", failing, {"trial_id": "a"})
    assert store.lookup("head-1") is None
    assert sorted(p.name for p in store.root.iterdir()) == ["head-1.lock"]  # no staging, no note

    # A builder killed outright leaves its staging directory: it is never read, and the next
    # builder clears it.
    leftover = store.root / ".head-1.tmp-deadbeef"
    leftover.mkdir()
    build_rows(leftover)
    manifest, built = store.obtain("head-1", build_rows, {"trial_id": "b"})
    assert built and manifest["built_by"]["trial_id"] == "b" and not leftover.exists()
    manifest, built = store.obtain("head-1", lambda d: pytest.fail("built twice"), {"trial_id": "c"})
    assert not built and manifest["built_by"]["trial_id"] == "b"
    assert set(manifest["files"]) == {"train.arrow"}

    # Read in place: the rows are a read-only view of the mapped file, batches copy theirs out.
    dataset = FeatureDataset(store.path("head-1") / "train.arrow", [3], lambda rows, _: rows)
    assert not dataset.features.flags.writeable and not dataset.features.flags.owndata
    rows, targets = dataset.__getitems__([3, 1])
    assert rows.tolist() == [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]] and targets.tolist() == [3, 1]


def test_a_damaged_cache_is_rebuilt_not_read(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "features")
    store.obtain("head-2", build_rows, {"trial_id": "a"})
    path = store.path("head-2") / "train.arrow"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    assert store.lookup("head-2") is None
    manifest, built = store.obtain("head-2", build_rows, {"trial_id": "b"})
    assert built and store.lookup("head-2") == manifest

    (store.path("head-2") / "train.arrow").write_bytes(b"truncated")
    assert store.lookup("head-2") is None
    (store.path("head-2") / "manifest.json").write_text("{not json")
    assert store.lookup("head-2") is None


def race(root: str, log: str, start_at: float) -> tuple[bool, str]:
    """One of the racing processes: waits for the common start, then obtains the same cache."""

    def slow_build(directory: Path) -> dict[str, Any]:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.5)
        return build_rows(directory)

    time.sleep(max(0.0, start_at - time.time()))
    manifest, built = FeatureStore(Path(root)).obtain("head-3", slow_build, {"trial_id": str(os.getpid())})
    return built, manifest["built_by"]["trial_id"]


def test_two_processes_racing_build_once(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        start_at = time.time() + 8  # both processes are up (torch imported) by then
        results = pool.starmap(race, [(str(tmp_path / "features"), str(log), start_at)] * 2)
    assert len(log.read_text().split()) == 1
    assert sorted(built for built, _ in results) == [False, True]
    assert len({builder for _, builder in results}) == 1  # both read the one cache


# --- trials on cached features match trials that run the whole model ---------------------------


def run_trial(inputs: TrialInputs, config: TrialConfig, trial_id: str) -> list[dict[str, Any]]:
    session = LocalSession()
    train_trial(TrialInputs(inputs.run, config, trial_id, time.time()), session)
    return session.reports


def hf_image_spec(
    tiny_vit: Path, image_data: dict[str, Path], storage: Path, **sections: Any
) -> dict[str, Any]:
    """image_spec with a Hugging Face ViT (its image processor sets the size)."""
    model = {"source": "hf", "name": str(tiny_vit), "pretrained": True, "image_size": None}
    return image_spec(image_data, storage, model=model, **sections)


def test_hf_image_key_follows_the_image_processor(
    tiny_vit: Path, image_data: dict[str, Path], tmp_path: Path
) -> None:
    inputs = trial_inputs(hf_image_spec(tiny_vit, image_data, tmp_path / "runs"), tmp_path / "run")
    torch.manual_seed(0)
    loaded = build_model(inputs.run.spec.model, inputs.run.num_classes)
    key = feature_key(inputs, loaded, HEAD, torch.device("cpu"))
    assert key.inputs["preprocessing"] == {"data_config": loaded.preprocessing}
    assert set(key.inputs["versions"]) == {"torch", "transformers", "timm", "torchvision"}
    assert key.name == key_name(inputs)


@pytest.mark.parametrize("config", [LINEAR_PROBE, PARTIAL], ids=["linear_probe", "partial"])
@pytest.mark.parametrize("source", ["hf", "timm", "hf-image"])
def test_cached_trials_match_uncached_ones(
    source: str,
    config: TrialConfig,
    tiny_bert: Path,
    tiny_vit: Path,
    text_data: dict[str, Path],
    image_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    storage, epochs = tmp_path / "runs", {"max_epochs": 3}
    spec = {
        "hf": lambda: text_spec(tiny_bert, text_data, storage, search=epochs),
        "timm": lambda: image_spec(image_data, storage, search=epochs),
        "hf-image": lambda: hf_image_spec(tiny_vit, image_data, storage, search=epochs),
    }[source]()
    uncached = run_trial(trial_inputs(spec, tmp_path / "run", feature_cache="off"), config, "off")
    cached = trial_inputs(spec, tmp_path / "run")
    built = run_trial(cached, config, "first")
    reused = run_trial(cached, config, "second")

    assert [r["feature_cache"] for r in (uncached[0], built[0], reused[0])] == ["off", "built", "reused"]
    assert built[0]["feature_cache_s"] > 0
    prefix = "block" if config.strategy == "partial" else "head"
    caches = [p for p in (tmp_path / "run" / "features").iterdir() if p.is_dir()]
    assert len(caches) == 1 and caches[0].name.startswith(prefix)
    for whole, first, second in zip(uncached, built, reused, strict=True):
        for metric in ("train_loss", "val_loss", "val_accuracy", "val_f1_macro"):
            assert first[metric] == pytest.approx(whole[metric], rel=1e-5, abs=1e-6), metric
            assert second[metric] == pytest.approx(whole[metric], rel=1e-5, abs=1e-6), metric
    # The metrics moved: the comparison above compares training runs, not constants.
    assert uncached[-1]["train_loss"] != pytest.approx(uncached[0]["train_loss"], rel=1e-3)


def test_a_strategy_that_trains_the_whole_model_runs_uncached(
    tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    spec = text_spec(tiny_bert, text_data, tmp_path / "runs", search={"max_epochs": 1})
    full = trial_config(
        "full",
        head_lr=1e-2,
        weight_decay=0.0,
        warmup_fraction=0.0,
        batch_size=8,
        backbone_lr=1e-4,
        layer_decay=0.8,
    )
    (report,) = run_trial(trial_inputs(spec, tmp_path / "run"), full, "full")
    assert report["feature_cache"] == "none" and not (tmp_path / "run" / "features").exists()


def test_a_cache_too_large_to_hold_is_refused_and_the_trial_trains_uncached(
    tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(features, "MAX_CACHE_BYTES", 1000)
    spec = text_spec(tiny_bert, text_data, tmp_path / "runs", search={"max_epochs": 1})
    inputs = trial_inputs(spec, tmp_path / "run")
    (first,) = run_trial(inputs, LINEAR_PROBE, "first")
    (second,) = run_trial(inputs, LINEAR_PROBE, "second")
    assert first["feature_cache"] == second["feature_cache"] == "unsupported"
    (cache,) = [p for p in (tmp_path / "run" / "features").iterdir() if p.is_dir()]
    manifest = FeatureStore(cache.parent).lookup(cache.name)
    assert manifest is not None and not manifest["supported"] and "GiB" in manifest["reason"]
    assert manifest["built_by"]["trial_id"] == "first"  # the second trial read the verdict


def test_image_folder_splits_train_and_key_the_cache_by_their_images(tmp_path: Path) -> None:
    folders = {
        "train": write_image_folder(image_rows(36, seed=1), tmp_path / "train"),
        "validation": write_image_folder(image_rows(18, seed=2), tmp_path / "validation"),
    }
    spec = image_spec(folders, tmp_path / "runs", search={"max_epochs": 2})
    del spec["data"]["image_column"]  # every split a folder: its rows are `image` and `label`
    inputs = trial_inputs(spec, tmp_path / "run")
    first = key_name(inputs)
    assert key_name(trial_inputs(spec, tmp_path / "run")) == first

    reports = run_trial(inputs, LINEAR_PROBE, "t0")
    assert len(reports) == 2 and reports[0]["feature_cache"] == "built"
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in reports)

    image = folders["train"] / "0" / "000.png"
    image.write_bytes(image_rows(1, seed=99)[0]["image"])  # one training image redrawn
    assert key_name(trial_inputs(spec, tmp_path / "run")) != first
