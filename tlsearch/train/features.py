"""Cached frozen features: a frozen, deterministic prefix runs once per search, not every step.

A linear-probe trial trains only the head, a partial trial only the top blocks; below them the model
is frozen, in eval mode, fed deterministic preprocessing: its output for a row never changes. The first
trial that needs a prefix's output computes it for every training and validation row and publishes it
under `<run dir>/features/<key>/`; every later trial (and every worker of a multi-worker trial) reads it
and trains only the model's tail (tlsearch.models.tails) on it, the one training loop unchanged.

- The key is a content hash over everything that changes the features: the model's class, config and
  frozen weights (a hash of the state dict), the boundary (prefix depth), the preprocessing (the
  tokenizer and max_length, or the image data config), the data files' sha256 with the columns, labels
  and subsets read from them, the device kind and precision, and the library versions (the model
  source's `fingerprint` says which config, preprocessing and libraries).
- Files, not the object store: the run directory is the place every node shares (cluster/README.md);
  files outlive the trial that built them (ASHA kills trial processes, and an object dies with its
  owner), survive `tlsearch resume`, and are memory-mapped, so trials on one node share one copy in the
  page cache and each worker pages in only the rows it reads. Arrow IPC, uncompressed: mapped
  without decoding.
- One builder: a file lock per key (filelock; flock, which NFSv4 supports). Others wait on it, then
  read. The builder writes into a temporary directory and renames it into place (atomic): a
  half-written cache is never visible. Each file's sha256 is in the manifest and checked before use: a
  damaged cache is rebuilt, never read.
- The builder first checks on a probe batch that the tail reproduces the model (models.tails.check_tail);
  where it does not, the manifest says so and every trial trains uncached.
- The build is device time: the trial records it (`feature_cache: built`, `feature_cache_s`), inside
  its wall and device seconds like any other set-up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlsearch.data.streamed import RAY_DATA
from tlsearch.data.tables import SUBSET_SEED, file_sha256
from tlsearch.models.base import sha256_json
from tlsearch.models.sources import LoadedModel
from tlsearch.models.tails import Tail, TailUnsupported, check_tail, eval_mode, make_tail
from tlsearch.strategies.base import Prepared
from tlsearch.train.batches import ToDevice
from tlsearch.train.inputs import TrialInputs
from tlsearch.train.session import Session, node_id

FEATURES_DIR = "features"
MANIFEST = "manifest.json"
# 2: image features computed from uint8 pixels normalised on the device (1: normalised per image on
# the host; equal within float rounding, but a cache holds exactly what the trial would compute).
FORMAT_VERSION = 2
PROBE_ROWS = 8
# How far the tail's logits may stray from the model's on the probe (relative to their largest value):
# float32 on CPU differs only by summation order; bf16 autocast on GPU rounds both sides alike.
TOLERANCE = {"cpu": 1e-4, "cuda": 2e-2}
# The builder holds a cache's rows in memory before writing them (e.g. a ViT's tokens below a block
# for a large image set would not fit): larger ones are refused, and their trials train uncached.
MAX_CACHE_BYTES = 16 * 2**30


# --- the key ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureKey:
    name: str  # the cache directory's name: <boundary>-<digest>
    inputs: dict[str, Any]  # what the digest covers, readable (kept in the manifest)


def feature_key(inputs: TrialInputs, loaded: LoadedModel, boundary: str, device: torch.device) -> FeatureKey:
    run, data = inputs.run, inputs.run.data
    hashes = run.data_sha256 or {split: file_sha256(data.path(split)) for split in ("train", "validation")}
    fingerprint = loaded.source.fingerprint(loaded, run.spec.model)
    described: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "boundary": boundary,
        "model": {
            "source": loaded.source.name,
            "class": f"{type(loaded.model).__module__}.{type(loaded.model).__qualname__}",
            "config": fingerprint.config,
            "frozen_weights": weights_sha256(loaded.model, loaded.head_modules),
        },
        "preprocessing": fingerprint.preprocessing,
        "data": {
            "train_sha256": hashes["train"],
            "validation_sha256": hashes["validation"],
            "input_column": data.input_column,
            "label_column": data.label_column,
            "labels": list(data.labels),
            "max_train_samples": data.max_train_samples,
            "max_validation_samples": data.max_validation_samples,
            "subset_seed": SUBSET_SEED,
        },
        "compute": {"device": device.type, "autocast": "bfloat16" if device.type == "cuda" else None},
        "versions": {lib: _version(lib) for lib in fingerprint.libraries},
    }
    if data.drop_train_rows:  # the training rows the data audit drops (audit.drop); ids in audit.json
        described["data"]["dropped_train_rows"] = sha256_json(list(data.drop_train_rows))
    digest = sha256_json(described)[:20]
    return FeatureKey(f"{boundary.replace(':', '')}-{digest}", described)


def weights_sha256(model: nn.Module, head_modules: Sequence[str]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor outside the head."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if any(name == h or name.startswith(h + ".") for h in head_modules):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def _version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --- the store: one builder, atomic publication, checked reads ---------------------------------


class FeatureStore:
    """Published caches under `root`, one directory per key, each with a manifest naming its files."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def lookup(self, name: str) -> dict[str, Any] | None:
        """The manifest of a published, intact cache; None when absent or damaged."""
        directory = self.path(name)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        for file, info in files.items():
            path = directory / file
            if (
                not path.is_file()
                or path.stat().st_size != info["bytes"]
                or file_sha256(path) != info["sha256"]
            ):
                return None
        return manifest

    def obtain(
        self, name: str, build: Callable[[Path], dict[str, Any]], owner: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """(manifest, built): the published cache `name`, built by `build(directory)` (which writes its
        files there and returns the manifest's other fields) unless some process published it first."""
        from filelock import FileLock, Timeout

        manifest = self.lookup(name)
        if manifest is not None:
            return manifest, False
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / f"{name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(
                f"[tlsearch] waiting for the feature cache {name}: {self._builder(name)} builds it",
                flush=True,
            )
            lock.acquire()
        try:
            manifest = self.lookup(name)
            if manifest is not None:
                return manifest, False
            self._clear(name)
            note = self.root / f"{name}.building"
            note.write_text(json.dumps(owner))
            staging = self.root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            try:
                started = time.time()
                manifest = dict(build(staging))
                manifest["built_by"] = {
                    **owner,
                    "seconds": round(time.time() - started, 3),
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
                manifest["files"] = {
                    p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                    for p in sorted(staging.iterdir())
                }
                _write_synced(staging / MANIFEST, json.dumps(manifest, indent=1, default=str))
                _fsync_dir(staging)
                os.rename(staging, self.path(name))  # atomic: readers see all of it or nothing
                _fsync_dir(self.root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
                note.unlink(missing_ok=True)
            return manifest, True
        finally:
            lock.release()

    def _builder(self, name: str) -> str:
        try:
            owner = json.loads((self.root / f"{name}.building").read_text())
            return f"trial {owner.get('trial_id')} on {owner.get('node')}"
        except (OSError, ValueError):
            return "another process"

    def _clear(self, name: str) -> None:
        """Under the lock: remove a damaged copy and what killed builders left behind."""
        for staging in self.root.glob(f".{name}.tmp-*"):
            shutil.rmtree(staging, ignore_errors=True)
        directory = self.path(name)
        if directory.exists():
            print(
                f"[tlsearch] the feature cache {name} is damaged (a file does not match its sha256): "
                "building it again",
                flush=True,
            )
            aside = self.root / f".{name}.damaged-{uuid.uuid4().hex[:8]}"
            os.rename(directory, aside)  # readers that mapped its files keep them until they close
            shutil.rmtree(aside, ignore_errors=True)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the files ------------------------------------------------------------------------------


def write_split(path: Path, features: np.ndarray, targets: np.ndarray, lengths: np.ndarray | None) -> None:
    """One Arrow IPC file: `features` (one fixed-size list of float32 per row), `target`, and `length`
    (tokens per row, text below a block)."""
    width = int(np.prod(features.shape[1:]))
    columns = {
        "features": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), pa.float32()), width),
        "target": pa.array(targets, pa.int64()),
    }
    if lengths is not None:
        columns["length"] = pa.array(lengths, pa.int32())
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class FeatureDataset(Dataset):
    """A split's stored boundary tensors, memory-mapped: a batch reads only its own rows."""

    def __init__(self, path: Path, row_shape: Sequence[int], to_batch: Callable[..., Any]):
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        (column,) = table.column("features").chunks  # write_split writes one record batch
        # A read-only view of the mapped file (no copy); batches copy their rows out of it.
        self.features = column.flatten().to_numpy(zero_copy_only=True).reshape(len(table), *row_shape)
        self.targets = table.column("target").to_numpy()
        self.lengths = table.column("length").to_numpy() if "length" in table.column_names else None
        self.to_batch = to_batch
        self._table = table  # keeps the mapping alive

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: list[int]) -> tuple[Any, torch.Tensor]:
        rows = np.asarray(indices)
        if self.lengths is None:
            features, lengths = torch.from_numpy(self.features[rows]), None
        else:
            lengths = torch.from_numpy(self.lengths[rows].astype(np.int64))
            features = torch.from_numpy(self.features[rows, : int(lengths.max())])
        return self.to_batch(features, lengths), torch.from_numpy(self.targets[rows])

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return self.__getitems__([i])

    @staticmethod
    def collate(batch: tuple[Any, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        return batch  # __getitems__ built the batch already


# --- a trial's use of the cache ---------------------------------------------------------------


@dataclass
class FeatureCacheUse:
    """What the cache did for one trial; `status` and `seconds` go on its result rows."""

    status: str  # built | reused | off | unsupported | none (the strategy)
    # why it is off: `setting` (training.feature_cache), `augmentation`, `mixup`, `streamed` (data.loader)
    reason: str = ""
    seconds: float = 0.0  # obtaining the features: building them, or waiting for and checking them
    key: str = ""
    tail: Tail | None = None
    datasets: tuple[FeatureDataset, FeatureDataset] | None = None  # train, validation


def use_feature_cache(
    inputs: TrialInputs,
    loaded: LoadedModel,
    prepared: Prepared,
    session: Session,
    make_datasets: Callable[[], tuple[Any, Any]],
    loader_workers: int,
) -> FeatureCacheUse:
    """The trial's cached features and the tail to train on them, building them first when no trial
    has; or why the trial trains the whole model (status off / none / unsupported). Every rank of a
    multi-worker trial calls it; one process builds, all read."""
    use = _use_feature_cache(inputs, loaded, prepared, session, make_datasets, loader_workers)
    if session.world_size > 1:  # the trial built the cache if any of its ranks did
        import torch.distributed as dist

        statuses: list[Any] = [None] * session.world_size
        dist.all_gather_object(statuses, (use.status, use.seconds))
        if any(status == "built" for status, _ in statuses):
            use.status = "built"
        use.seconds = max(seconds for _, seconds in statuses)
    return use


def _use_feature_cache(
    inputs: TrialInputs,
    loaded: LoadedModel,
    prepared: Prepared,
    session: Session,
    make_datasets: Callable[[], tuple[Any, Any]],
    loader_workers: int,
) -> FeatureCacheUse:
    spec, rank, device = inputs.run.spec, session.world_rank, session.device
    boundary = prepared.feature_boundary
    if spec.training.feature_cache == "off":
        return FeatureCacheUse("off", "setting")
    if inputs.run.data.loader == RAY_DATA:  # the rows pass once an epoch; none are held to store
        return FeatureCacheUse("off", "streamed")
    if boundary is None:
        return FeatureCacheUse("none")
    # The frozen prefix sees other pixels every epoch: what it outputs cannot be stored once.
    common = inputs.config.common
    if common.augmentation != "none":
        return FeatureCacheUse("off", "augmentation")
    if common.mixup > 0:
        return FeatureCacheUse("off", "mixup")
    started = time.time()
    try:
        tail = make_tail(loaded, boundary)
    except TailUnsupported as exc:
        if rank == 0:
            print(
                f"[tlsearch] feature cache: not for this model at {boundary} ({exc}); training uncached",
                flush=True,
            )
        return FeatureCacheUse("unsupported")
    key = feature_key(inputs, loaded, boundary, device)
    store = FeatureStore(Path(inputs.run.run_dir) / FEATURES_DIR)
    owner = {"trial_id": inputs.trial_id, "rank": rank, "node": node_id(), "device": device.type}

    def build(directory: Path) -> dict[str, Any]:
        batch_size, logits = spec.training.eval_batch_size, loaded.source.logits
        to_device = ToDevice(device, loaded.preprocessing)
        built = _build(
            directory, tail, logits, prepared, make_datasets(), to_device, batch_size, loader_workers
        )
        return built | {"key": key.name, "inputs": key.inputs}

    manifest, built = store.obtain(key.name, build, owner)
    seconds = time.time() - started
    if not manifest["supported"]:
        if rank == 0 or built:
            print(f"[tlsearch] feature cache {key.name}: {manifest['reason']}; training uncached", flush=True)
        return FeatureCacheUse("unsupported", seconds=seconds, key=key.name)
    directory = store.path(key.name)
    train, validation = (
        FeatureDataset(directory / info["file"], info["row_shape"], tail.to_batch)
        for info in (manifest["splits"]["train"], manifest["splits"]["validation"])
    )
    if built:
        size = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
        print(
            f"[tlsearch] trial {inputs.trial_id}: built the feature cache {key.name} ({len(train)} + "
            f"{len(validation)} rows, {size:.1f} MiB) in {manifest['built_by']['seconds']:.1f} s",
            flush=True,
        )
    elif rank == 0 and manifest["built_by"]["trial_id"] != inputs.trial_id:  # not another rank's build
        print(
            f"[tlsearch] trial {inputs.trial_id}: reused the feature cache {key.name} built by trial "
            f"{manifest['built_by']['trial_id']}",
            flush=True,
        )
    return FeatureCacheUse(
        "built" if built else "reused", seconds=seconds, key=key.name, tail=tail, datasets=(train, validation)
    )


def _build(
    directory: Path,
    tail: Tail,
    logits: Callable[[nn.Module, Any], torch.Tensor],
    prepared: Prepared,
    datasets: tuple[Any, Any],
    to_device: ToDevice,
    batch_size: int,
    loader_workers: int,
) -> dict[str, Any]:
    """Check the tail on a probe batch, then write every row's boundary tensors, split by split.
    Runs the frozen prefix on the trial's device (under the loop's autocast) from a forked random
    state: the trial's own random stream is the same as if nothing had run."""
    model, device = prepared.model, to_device.device
    on_gpu = device.type == "cuda"
    train_set, validation_set = datasets
    with torch.random.fork_rng(devices=[device] if on_gpu else []):
        model.to(device)
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                probe, _ = train_set.collate([train_set[i] for i in range(min(PROBE_ROWS, len(train_set)))])
                probe = to_device(probe)
                try:
                    check_tail(model, tail, probe, prepared.train_mode, TOLERANCE[device.type], logits=logits)
                except TailUnsupported as exc:
                    return {"supported": False, "reason": str(exc), "splits": {}}
                with torch.no_grad(), eval_mode(model):
                    row_bytes = tail.extract(probe)[0][0].numel() * 4
                estimate = row_bytes * (len(train_set) + len(validation_set))
                if estimate > MAX_CACHE_BYTES:
                    reason = (
                        f"the features would take about {estimate / 2**30:.1f} GiB, more than the "
                        f"{MAX_CACHE_BYTES / 2**30:g} GiB a cache may hold"
                    )
                    return {"supported": False, "reason": reason, "splits": {}}
                splits = {}
                for split, dataset in (("train", train_set), ("validation", validation_set)):
                    features, targets, lengths = extract_features(
                        tail, model, dataset, to_device, batch_size, loader_workers
                    )
                    file = f"{split}.arrow"
                    write_split(directory / file, features, targets, lengths)
                    splits[split] = {
                        "file": file,
                        "rows": len(features),
                        "row_shape": list(features.shape[1:]),
                    }
        finally:
            model.to("cpu")  # the trial moves what it trains (the tail) back to its device
    return {"supported": True, "format": FORMAT_VERSION, "boundary": tail.boundary, "splits": splits}


@torch.no_grad()
def extract_features(
    tail: Tail, model: nn.Module, dataset: Any, to_device: ToDevice, batch_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(boundary tensors, targets, token counts or None) of every row, in the dataset's order."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate, num_workers=workers)
    parts: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    with eval_mode(model):
        for batch, target in loader:
            features, lengths = tail.extract(to_device(batch))
            parts.append(features.float().cpu().numpy())
            targets.append(target.numpy())
            if lengths is not None:
                counts.append(lengths.cpu().numpy())
    if not counts:
        return np.concatenate(parts), np.concatenate(targets), None
    # Text below a block: rows padded on the right to the longest row, zeros past each row's end.
    row_lengths = np.concatenate(counts)
    out = np.zeros((len(row_lengths), int(row_lengths.max()), *parts[0].shape[2:]), dtype=np.float32)
    row = 0
    for part in parts:
        for row_features in part:
            out[row, : row_lengths[row]] = row_features[: row_lengths[row]]
            row += 1
    return out, np.concatenate(targets), row_lengths
