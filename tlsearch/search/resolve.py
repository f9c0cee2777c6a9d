"""Everything a search needs checked and pinned down before Ray starts: data files, labels, model
structure, the search space; written to spec.resolved.yaml."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tlsearch import __version__
from tlsearch.audit import AUDIT_DIR, AUDIT_FILE, dropped_train_rows, run_audit, search_refusal, summary_text
from tlsearch.data.paths import data_paths
from tlsearch.data.streamed import choose_loader
from tlsearch.data.tables import (
    DataFiles,
    check_column_types,
    column_names,
    file_sha256,
    label_set,
    read_table,
)
from tlsearch.errors import UserInputError
from tlsearch.models import LoadedModel, build_model
from tlsearch.models.files import check_max_length, check_weight_files
from tlsearch.results.files import LAYOUT_VERSION, RESOLVED_SPEC
from tlsearch.results.study import storage_description
from tlsearch.space import SearchSpace, build_space
from tlsearch.spec import Spec
from tlsearch.spec.load import validate_spec
from tlsearch.spec.model import StrategiesSpec, split_form, streaming_refusals
from tlsearch.spec.strategy import STRATEGIES
from tlsearch.spec.vocab import TABLE_SUFFIXES
from tlsearch.strategies.base import check

LIBRARIES = (
    "tlsearch",
    "ray",
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "peft",
    "optuna",
    "pyarrow",
    "pydantic",
    "wandb",
)


@dataclass(frozen=True)
class Resolved:
    spec: Spec
    data: DataFiles
    space: SearchSpace
    num_blocks: int
    hashes: dict[str, str]
    study_name: str  # unique: several searches may share one Optuna storage
    pooling: str | None = None  # what a text model's head reads, `model.pooling: auto` resolved
    audit: dict[str, Any] | None = None  # the data audit's report (audit.json); None: audit.enabled false


def check_data(spec: Spec) -> None:
    """What `tlsearch validate` checks of a spec's own data files before a search would: that they
    exist in the form named, have the columns and at least two classes to train on (schemas and label
    columns only; builtin data sets are known good)."""
    if spec.data.builtin is None:
        resolve_data(spec, Path(spec.storage), hash_files=False)


def resolve_data(
    spec: Spec, run_dir: Path, *, reuse: bool = False, hash_files: bool = True
) -> tuple[DataFiles, dict[str, str]]:
    d = spec.data
    splits, column, kind = data_paths(spec, run_dir, reuse=reuse)
    if d.builtin is None:
        for split in d.splits():
            _check_form(split, split_form(getattr(d, split)), Path(splits[split] or ""))
    names_of_folder = (column, d.label_column)
    tables = []
    for split, path in splits.items():
        if path is None:
            continue
        names = column_names(path, folder_columns=names_of_folder)
        missing = [c for c in (column, d.label_column) if c not in names]
        if missing:
            raise UserInputError(
                f"data.{split} ({path}) has no column {', '.join(f'`{m}`' for m in missing)}; "
                f"its columns: {', '.join(names)}"
            )
        check_column_types(f"data.{split}", path, column, kind, d.label_column)
        tables.append(read_table(path, [d.label_column], folder_columns=names_of_folder))
        if split == "train":
            trained = label_set(tables[-1:], d.label_column)
            if tables[-1].num_rows == 0:
                raise UserInputError(f"data.train ({path}) has no rows")
            if len(trained) < 2:
                raise UserInputError(
                    f"data.train ({path}) has {len(trained)} class(es) in `{d.label_column}` "
                    f"({', '.join(trained) or 'no labels'}): a classifier needs at least 2 to learn from"
                )
    labels = label_set(tables, d.label_column)
    if len(labels) < 2:
        raise UserInputError(f"the data has {len(labels)} class(es) in `{d.label_column}`: need at least 2")
    files = DataFiles(
        train=splits["train"],  # type: ignore[arg-type]
        validation=splits["validation"],  # type: ignore[arg-type]
        test=splits.get("test"),
        input_column=column,
        input_kind=kind,
        label_column=d.label_column,
        labels=labels,
        max_train_samples=d.max_train_samples,
        max_validation_samples=d.max_validation_samples,
    )
    hashes = {split: file_sha256(path) for split, path in splits.items() if path and hash_files}
    return files, hashes


def _check_form(split: str, form: str | None, path: Path) -> None:
    """The spec names a split as a table or an image folder (tlsearch.spec.model.split_form): what is
    on disk must be that."""
    if form == "folder":
        if not path.exists():
            raise UserInputError(f"data.{split}: image folder not found: {path}")
        if not path.is_dir():
            raise UserInputError(
                f"data.{split}: {path} is a file where an image folder (<folder>/<class>/<image>) was "
                f"expected; a Parquet or CSV split needs a {', '.join(TABLE_SUFFIXES)} name"
            )
    elif path.is_dir():
        raise UserInputError(
            f"data.{split}: {path} is a directory, but a {path.suffix} split is one file; an image folder's "
            "path has no such suffix (or ends in `/`)"
        )


def resolve(spec: Spec, run_dir: Path, *, resuming: bool = False) -> Resolved:
    """Check and pin down a search, then audit its data (docs/audit.md). resuming: keep the run's data
    files (refusing to go on if any changed since the search started), its Optuna study and its audit."""
    data, hashes = resolve_data(spec, run_dir, reuse=resuming)
    record = recorded(run_dir) if resuming else {}
    if resuming:
        _check_unchanged(record, hashes)
        study_name = record["optuna"]["study_name"]
    else:
        study_name = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    check_weight_files(spec.model)  # the meta probe reads no weights: their files are checked here
    probed = _probed_at_start(record) if resuming else None
    if probed is not None:
        # Probed, its strategies checked and its loader chosen when the search started (all in
        # spec.resolved.yaml): a resumed driver skips the model's import and build, seconds a resume.
        num_blocks, pooling, loader = probed
        space = build_space(spec, num_blocks=num_blocks)
    else:
        probe = build_model(spec.model, len(data.labels), weights=False)
        if not resuming:  # a resumed search keeps the max_length it started with
            check_max_length(spec.model, probe.max_tokens)
        spec, space = _checked_space(spec, probe)
        loader, why = choose_loader(
            data, spec.model, probe.preprocessing, spec.data.loader, streaming_refusals(spec)
        )
        if spec.data.loader == "auto":
            print(f"[tlsearch] data.loader: {loader} ({why})", flush=True)
        num_blocks, pooling = probe.layers.num_blocks, probe.pooling
    data = dataclasses.replace(data, loader=loader)
    # After the checks above: a spec that cannot run fails in seconds, before the feature pass.
    audit = audit_search(spec, data, run_dir, resuming=resuming)
    if audit is not None:
        data = dataclasses.replace(data, drop_train_rows=dropped_train_rows(audit))
    return Resolved(spec, data, space, num_blocks, hashes, study_name, pooling=pooling, audit=audit)


def _probed_at_start(record: dict[str, Any]) -> tuple[int, str | None, str] | None:
    """(model blocks, pooling, data loader) as a search's start recorded them (`record`: the `resolved`
    block of its spec.resolved.yaml), or None where the record predates them."""
    if not isinstance(record.get("model_blocks"), int) or not isinstance(record.get("data_loader"), str):
        return None
    return record["model_blocks"], record.get("model_pooling"), record["data_loader"]


def _checked_space(spec: Spec, probe: LoadedModel) -> tuple[Spec, SearchSpace]:
    """The search space, every strategy checked against the model now rather than in every trial.
    A spec without a `strategies` section searches the defaults: those this model cannot run (LoRA on
    a convolutional network) are left out, saying why. A strategy the spec names fails the search."""
    defaulted = "strategies" not in spec.model_fields_set
    space = build_space(spec, num_blocks=probe.layers.num_blocks)
    kept: list[str] = []
    for strategy in space.strategy_names():
        try:
            check(strategy, probe, space.dims(strategy))
        except UserInputError as exc:
            if not defaulted:
                raise
            print(f"[tlsearch] default strategy `{strategy}` left out: {exc}", flush=True)
        else:
            kept.append(strategy)
    if kept == space.strategy_names():
        return spec, space
    sections = {name: spec.strategies.space(name) for name in kept}
    spec = spec.model_copy(update={"strategies": StrategiesSpec(**sections, common=spec.strategies.common)})
    return spec, build_space(spec, num_blocks=probe.layers.num_blocks)


def audit_search(
    spec: Spec, data: DataFiles, run_dir: Path, *, resuming: bool = False
) -> dict[str, Any] | None:
    """The search's data audit: run (its frozen features cached under `<run dir>/audit/`), written to
    `<run dir>/audit.json` and summarised, or read back from audit.json when a resumed search has it.
    Raises UserInputError where the audit says the search must not run."""
    if not spec.audit.enabled:
        return None
    path = run_dir / AUDIT_FILE
    report: dict[str, Any] | None = _read_audit(path) if resuming else None
    if report is not None:
        print(f"[tlsearch] data audit: {report['status']} (from {path})", flush=True)
    else:  # a new search, or a resumed one whose audit.json is missing or cut short: audited (again)
        report = run_audit(spec, data, cache_dir=run_dir / AUDIT_DIR)
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_text(json.dumps(report, indent=1))
        os.replace(staging, path)
        print(summary_text(report), flush=True)
    refusal = search_refusal(report, spec.audit)
    if refusal:
        raise UserInputError(refusal)
    return report


def _read_audit(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and "status" in report else None


def recorded(run_dir: Path) -> dict[str, Any]:
    """The `resolved` block of a run's spec.resolved.yaml."""
    return yaml.safe_load((run_dir / RESOLVED_SPEC).read_text()).get("resolved", {})


def _check_unchanged(record: dict[str, Any], hashes: dict[str, str]) -> None:
    previous = record.get("data", {})
    changed = [split for split, info in previous.items() if hashes.get(split) != info.get("sha256")]
    if changed:
        raise UserInputError(
            f"the {', '.join(changed)} data changed since this search started (sha256 differs from "
            f"{RESOLVED_SPEC}); resuming would mix results from different data. Start a new search instead."
        )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def write_resolved_spec(resolved: Resolved, run_dir: Path) -> None:
    spec = resolved.spec
    document: dict[str, Any] = spec.dump_complete()
    document["storage"] = str(Path(spec.storage).expanduser().resolve())
    if spec.checkpoint_storage is not None:
        document["checkpoint_storage"] = spec.checkpoint_root()
    document["search"]["mode"] = spec.search.resolved_mode
    for strategy in resolved.space.strategy_names():
        knobs = STRATEGIES.get(strategy).knobs
        for knob, dim in resolved.space.dims(strategy).items():
            if knobs.knob(knob).at_most_blocks:  # a default range clipped to the model's blocks: as searched
                document["strategies"][strategy][knob] = _describe(dim)
    document["resolved"] = {
        "layout_version": LAYOUT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "data": {
            split: {"path": getattr(resolved.data, split), "sha256": digest}
            for split, digest in resolved.hashes.items()
        },
        "labels": list(resolved.data.labels),
        "data_loader": resolved.data.loader,
        "audit": _audit_record(resolved.audit),
        "optuna": {
            "study_name": resolved.study_name,
            "storage": storage_description(spec.tracking.optuna.storage, run_dir),
        },
        "model_blocks": resolved.num_blocks,
        **({"model_pooling": resolved.pooling} if resolved.pooling else {}),
        "space": {
            name: {knob: _describe(dim) for knob, dim in resolved.space.dims(name).items()}
            for name in resolved.space.strategy_names()
        }
        | {"common": {knob: _describe(dim) for knob, dim in resolved.space.common}},
    }
    (run_dir / RESOLVED_SPEC).write_text(
        "# Written by tlsearch: the spec with every default filled in, the data's content hashes and the\n"
        "# library versions. `tlsearch run` accepts this file as a spec (the `resolved` block is ignored).\n"
        + yaml.safe_dump(document, sort_keys=False)
    )


def _audit_record(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What spec.resolved.yaml keeps of the audit: its status and the training rows dropped (their
    count and digest; the ids are in audit.json)."""
    if report is None:
        return None
    drop = report["drop"]
    return {
        "status": report["status"],
        "file": AUDIT_FILE,
        "dropped_train_rows": {
            "findings": drop["findings"],
            "count": drop["count"],
            "by_finding": drop["by_finding"],
            "sha256": drop["sha256"],
        },
    }


def _describe(dim: Any) -> Any:
    from tlsearch.spec.params import Param

    return Param(choices=dim.choices, low=dim.low, high=dim.high, log=dim.log, step=dim.step).model_dump()


def read_resolved_spec(run_dir: Path) -> Spec:
    """The spec a run was started with, refused (exit 2) when another layout version wrote the run:
    its pickled search state and checkpoints are this version's only."""
    path = run_dir / RESOLVED_SPEC
    if not path.exists():
        raise UserInputError(f"{run_dir} is not a tlsearch run directory (no {RESOLVED_SPEC})")
    document = yaml.safe_load(path.read_text())
    record = document.pop("resolved", None) or {}
    layout = record.get("layout_version", 1)
    if layout != LAYOUT_VERSION:
        wrote = record.get("versions", {}).get("tlsearch", "an older tlsearch")
        raise UserInputError(
            f"{run_dir} was written by tlsearch {wrote} in run-directory layout {layout}; this tlsearch "
            f"({__version__}) resumes layout {LAYOUT_VERSION} only. Its results stay readable "
            f"(`tlsearch report {run_dir}`); finish it with the tlsearch that started it "
            f"(pip install tlsearch=={wrote}), or start a new search."
        )
    return validate_spec(document, source=str(path))
