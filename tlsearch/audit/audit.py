"""The data audit of a spec's data: every check, the report (`audit.json`), its status, what a search
does about it, and the rows `audit.drop` removes from training (docs/audit.md).

Counting rules: a duplicate group within a split counts its rows beyond the first; across splits, the
rows of the later split (validation for `train/validation`, test for the others) that match a row of
the earlier one. Row ids are 0-based positions in the file as read.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.audit.checks import (
    PAIRS,
    Matches,
    SplitRows,
    class_counts,
    duplicates_across,
    duplicates_within,
    pair_name,
    read_splits,
    share_drift,
    sort_labels,
)
from tlsearch.audit.label_issues import LabelIssues
from tlsearch.audit.near_duplicates import TextIndex, image_matches
from tlsearch.data.tables import DataFiles, file_sha256
from tlsearch.spec.model import AuditSpec, Spec

AUDIT_FILE = "audit.json"
AUDIT_DIR = "audit"  # the audit's own files in a run directory (the cached frozen features)
EXAMPLES = 10  # examples kept per finding (label issues keep every flagged row under `rows`)
SCOPE = "the whole data files, before the data.max_train_samples / max_validation_samples subsets"
# Findings a search refuses unless `audit.drop` lists them (then their training rows are dropped).
BLOCKING = ("missing_labels", "undecodable_inputs")


def _log(message: str) -> None:
    print(f"[tlsearch] audit: {message}", file=sys.stderr, flush=True)  # stdout may carry the JSON


def run_audit(
    spec: Spec, files: DataFiles, *, cache_dir: Path | None = None, log: Callable[[str], None] = _log
) -> dict[str, Any]:
    """Audit `files` (the spec's data) with `spec.audit`'s settings; the report as JSON-able data.
    `cache_dir`: where the frozen features of the label-issue pass are kept (none: not kept)."""
    settings = spec.audit
    splits, unusable = read_splits(files)
    train = splits.get("train")
    if train is not None and len(class_counts(train)) < 2:
        unusable.append(
            f"data.train has {len(class_counts(train))} class(es) with a label in `{files.label_column}`: "
            "need at least 2"
        )
    report: dict[str, Any] = {
        "status": "unusable" if unusable else "clean",
        "scope": SCOPE,
        "input_kind": files.input_kind,
        "files": {name: rows.path for name, rows in splits.items()},
        "unusable": unusable,
        "warnings": [],
    }
    examples: dict[str, Any] = {}
    report |= _row_findings(splits, examples)
    pairs = [(a, b) for a, b in PAIRS if a in splits and b in splits]
    exact = {(a, b): duplicates_across(splits[a], splits[b]) for a, b in pairs}
    report["exact_duplicates_within"] = {}
    examples["exact_duplicates_within"] = {}
    for name, rows in splits.items():
        groups = duplicates_within(rows)
        report["exact_duplicates_within"][name] = sum(len(g) - 1 for g in groups)
        examples["exact_duplicates_within"][name] = groups[:EXAMPLES]
    log("near-duplicates across splits")
    near = _near_duplicates(splits, pairs, exact, settings)
    for finding, found in (("exact_duplicates_across", exact), ("near_duplicates_across", near)):
        report[finding] = {pair_name(a, b): m.count for (a, b), m in found.items()}
        examples[finding] = {
            pair_name(a, b): [list(p) for p in m.pairs[:EXAMPLES]] for (a, b), m in found.items()
        }
    report |= _class_findings(splits, settings, examples)
    issues = LabelIssues([], 0, 0, "audit.label_issues is false")
    if not settings.label_issues:
        pass
    elif train is None or unusable:
        issues = LabelIssues([], 0, 0, "the data is unusable")
    else:
        log(f"likely label errors: frozen features of the training rows ({spec.model.name})")
        issues = _label_issues(spec, files, train, cache_dir)
    report["label_issues"] = issues.as_json()
    examples["label_issues"] = issues.rows[:EXAMPLES]
    report["examples"] = examples
    report["warnings"] = [] if unusable else _warnings(report, splits, settings)
    if not unusable and report["warnings"]:
        report["status"] = "warnings"
    report["settings"] = settings.model_dump(mode="json")
    report["drop"] = _drop(settings, report, splits, exact, near, issues)
    return report


def _row_findings(splits: dict[str, SplitRows], examples: dict[str, Any]) -> dict[str, Any]:
    train_labels = set(class_counts(splits["train"])) if "train" in splits else set()
    found: dict[str, dict[str, list[int]]] = {
        "missing_labels": {name: rows.missing_labels() for name, rows in splits.items()},
        "missing_inputs": {name: rows.missing_inputs for name, rows in splits.items()},
        "unreadable_inputs": {name: rows.unreadable_inputs for name, rows in splits.items()},
        "unknown_labels": {
            name: []
            if name == "train"
            else [i for i, label in enumerate(rows.labels) if label is not None and label not in train_labels]
            for name, rows in splits.items()
        },
    }
    out: dict[str, Any] = {"rows": {name: rows.rows for name, rows in splits.items()}}
    for finding, by_split in found.items():
        out[finding] = {name: len(ids) for name, ids in by_split.items()}
        examples[finding] = {name: ids[:EXAMPLES] for name, ids in by_split.items()}
    return out


def _near_duplicates(
    splits: dict[str, SplitRows],
    pairs: list[tuple[str, str]],
    exact: dict[tuple[str, str], Matches],
    settings: AuditSpec,
) -> dict[tuple[str, str], Matches]:
    thresholds = settings.near_duplicates
    if not pairs:
        return {}
    if next(iter(splits.values())).phashes is None:  # texts
        indexes = {a: TextIndex(splits[a], thresholds.text_jaccard) for a in {a for a, _ in pairs}}
        return {(a, b): indexes[a].matches(splits[b], exact[(a, b)]) for a, b in pairs}
    return {
        (a, b): image_matches(
            splits[a],
            splits[b],
            exact[(a, b)],
            hash_bits=thresholds.image_hash_bits,
            pixel_distance=thresholds.image_pixel_distance,
        )
        for a, b in pairs
    }


def _class_findings(
    splits: dict[str, SplitRows], settings: AuditSpec, examples: dict[str, Any]
) -> dict[str, Any]:
    counts = {name: class_counts(rows) for name, rows in splits.items()}
    every = sort_labels({label for by_class in counts.values() for label in by_class})
    train = counts.get("train", {})
    rare = [label for label, n in train.items() if n < settings.rare_class_rows]
    missing = {name: [label for label in every if label not in by_class] for name, by_class in counts.items()}
    examples["rare_classes"] = rare[:EXAMPLES]
    examples["classes_missing"] = {name: labels[:EXAMPLES] for name, labels in missing.items()}
    return {
        "class_counts": counts,
        "imbalance_ratio": round(max(train.values()) / min(train.values()), 4) if train else None,
        "class_share_drift": {
            pair_name(a, b): round(share_drift(counts[a], counts[b]), 4)
            for a, b in PAIRS
            if a in counts and b in counts
        },
        "rare_classes": len(rare),
        "classes_missing": {name: len(labels) for name, labels in missing.items()},
    }


def _label_issues(spec: Spec, files: DataFiles, train: SplitRows, cache_dir: Path | None) -> LabelIssues:
    """Label issues among the training rows that have a label and a usable input."""
    # Here, not above: an audit without the feature pass needs neither torch nor the model.
    from tlsearch.audit.label_issues import find_label_issues, frozen_features
    from tlsearch.data.datasets import Split
    from tlsearch.models.base import sha256_json

    labelled = {i: label for i, label in enumerate(train.labels) if label is not None and train.usable(i)}
    rows = list(labelled)
    index = {label: k for k, label in enumerate(sort_labels(set(labelled.values())))}
    targets = np.asarray([index[labelled[i]] for i in rows], dtype=np.int64)
    split = Split([train.inputs[i] for i in rows], targets, train.base_dir)
    features = frozen_features(
        spec.model,
        len(index),
        split,
        files.input_kind,
        seed=spec.seed,
        batch_size=spec.training.eval_batch_size,
        cache_dir=cache_dir,
        cache_inputs={
            "sha256": file_sha256(train.path),
            "rows": sha256_json(rows),
            "columns": [files.input_column, files.label_column],
        },
    )
    found = find_label_issues(features, targets, seed=spec.seed)
    return LabelIssues([rows[k] for k in found.rows], found.checked, found.folds, found.skipped)


def _warnings(
    report: dict[str, Any], splits: dict[str, SplitRows], settings: AuditSpec
) -> list[dict[str, str]]:
    """Each warning: the finding (as `audit.drop` names it, where it can drop it), where (a split or a
    pair of splits) and a sentence."""
    out: list[dict[str, str]] = []
    examples = report["examples"]

    def add(finding: str, where: str, message: str) -> None:
        # A split's findings name its file: the message is read where the spec is not at hand.
        named = f"{where} ({report['files'][where]})" if where in report.get("files", {}) else where
        out.append({"finding": finding, "where": where, "message": f"{named}: {message}"})

    for name in splits:
        if n := report["missing_labels"][name]:
            add(
                "missing_labels",
                name,
                f"{_rows(n)} no label (rows {_ids(examples['missing_labels'][name])})",
            )
        bad = report["missing_inputs"][name] + report["unreadable_inputs"][name]
        if bad:
            ids = sorted(examples["missing_inputs"][name] + examples["unreadable_inputs"][name])
            add(
                "undecodable_inputs",
                name,
                f"{_rows(bad)} an input that is missing, empty or cannot be decoded (rows {_ids(ids)})",
            )
        if n := report["unknown_labels"][name]:
            labels = sort_labels({splits[name].labels[i] or "" for i in examples["unknown_labels"][name]})
            add("unknown_labels", name, f"{_rows(n)} labels training never has ({', '.join(labels)})")
    for finding, what in (("exact_duplicates_across", "exactly"), ("near_duplicates_across", "nearly")):
        for pair, n in report[finding].items():
            if n:
                later = pair.split("/")[1]
                first = examples[finding][pair][0]
                add(
                    finding,
                    pair,
                    f"{_rows(n, later, 'duplicate')} an earlier row {what} (e.g. {later} row "
                    f"{first[1]} and {pair.split('/')[0]} row {first[0]})",
                )
    ratio = report["imbalance_ratio"]
    if ratio is not None and ratio > settings.imbalance_ratio:
        add("imbalance_ratio", "train", f"the largest class has {ratio:g} times the rows of the smallest")
    if n := report["rare_classes"]:
        add(
            "rare_classes",
            "train",
            f"classes with fewer than {settings.rare_class_rows} rows: {n} "
            f"({', '.join(examples['rare_classes'])})",
        )
    if n := report["label_issues"]["count"]:
        add(
            "label_issues",
            "train",
            f"{n} of {report['label_issues']['checked']} rows have a likely wrong label "
            f"(most likely first: rows {_ids(report['label_issues']['rows'])})",
        )
    return out


def _rows(n: int, kind: str = "", verb: str = "have") -> str:
    """'1 row has', '2 rows have' ('1 validation row duplicates', ...)."""
    singular = {"have": "has"}.get(verb, verb + "s")
    return f"{n} {kind + ' ' if kind else ''}{'row ' + singular if n == 1 else 'rows ' + verb}"


def _ids(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:EXAMPLES])
    return shown + (", ..." if len(rows) > EXAMPLES else "")


def _drop(
    settings: AuditSpec,
    report: dict[str, Any],
    splits: dict[str, SplitRows],
    exact: dict[tuple[str, str], Matches],
    near: dict[tuple[str, str], Matches],
    issues: LabelIssues,
) -> dict[str, Any]:
    """The training rows `audit.drop` removes, by finding (a row may stand under several)."""
    train = splits.get("train")
    by_finding: dict[str, list[int]] = {}
    if train is not None:
        across = {"exact_duplicates_across": exact, "near_duplicates_across": near}
        for finding in settings.drop:
            if finding == "missing_labels":
                rows = set(train.missing_labels())
            elif finding == "undecodable_inputs":
                rows = set(train.missing_inputs) | set(train.unreadable_inputs)
            elif finding == "label_issues":
                rows = set(issues.rows)
            else:  # the training rows that match a validation or test row
                rows = {i for (a, _), m in across[finding].items() if a == "train" for i in m.earlier_rows}
            by_finding[finding] = sorted(rows)
    dropped = sorted({i for rows in by_finding.values() for i in rows})
    return {
        "findings": list(settings.drop),
        "count": len(dropped),
        "by_finding": {finding: len(rows) for finding, rows in by_finding.items()},
        # sha256 of the ids' JSON (as tlsearch.models.base.sha256_json, whose package imports torch)
        "sha256": hashlib.sha256(json.dumps(dropped).encode()).hexdigest(),
        "train_rows": dropped,
    }


# --- what the report means for a search, and how it reads --------------------------------------


def dropped_train_rows(report: dict[str, Any]) -> tuple[int, ...]:
    return tuple(report.get("drop", {}).get("train_rows", ()))


def search_refusal(report: dict[str, Any], settings: AuditSpec) -> str | None:
    """Why a search must not run on this data (one message), or None. Missing labels and undecodable
    inputs refuse unless `audit.drop` lists them (training rows only: validation and test rows must be
    fixed in the file); with `fail_on: warnings`, any warning `audit.drop` does not take care of."""
    if report["status"] == "unusable":
        return "the data audit found the data unusable: " + "; ".join(report["unusable"])
    blocking, rest = [], []
    for warning in report["warnings"]:
        dropped = warning["finding"] in settings.drop and warning["where"] in (
            "train",
            "train/validation",
            "train/test",
        )
        if warning["finding"] in BLOCKING and not dropped:
            fix = (
                f"list `{warning['finding']}` under `audit.drop` to drop those rows from training"
                if warning["where"] == "train"
                else "fix them in the file (`audit.drop` removes training rows only)"
            )
            blocking.append(f"{warning['message']}: {fix}")
        elif not dropped:
            rest.append(warning["message"])
    where = "`tlsearch audit SPEC --format json` lists every row"
    if blocking:
        return "the data audit refuses this search: " + "; ".join(blocking) + f". {where}."
    if settings.fail_on == "warnings" and rest:
        return (
            "the data audit found warnings and `audit.fail_on` is `warnings`: "
            + "; ".join(rest)
            + f". Drop the rows (`audit.drop`), fix the data, or set `audit.fail_on: unusable`; {where}."
        )
    return None


def summary_text(report: dict[str, Any]) -> str:
    """The human summary: status, sizes, class balance, every warning, what is dropped."""
    lines = [f"Data audit ({report['scope']}): {report['status']}"]
    lines += [f"  unusable: {problem}" for problem in report["unusable"]]
    if report["rows"]:
        lines.append("  rows: " + ", ".join(f"{split} {n:,}" for split, n in report["rows"].items()))
    train = report["class_counts"].get("train", {})
    if train:
        drift = ", ".join(f"{pair} {value:.3f}" for pair, value in report["class_share_drift"].items())
        lines.append(
            f"  classes: {len(train)} in training, imbalance ratio {report['imbalance_ratio']:g}"
            + (f"; class-share drift (total variation) {drift}" if drift else "")
        )
    within = {split: n for split, n in report["exact_duplicates_within"].items() if n}
    if within:
        lines.append(
            "  exact duplicates within a split: " + ", ".join(f"{split} {n}" for split, n in within.items())
        )
    lines += [f"  - {warning['message']}" for warning in report["warnings"]]
    issues = report["label_issues"]
    if issues["skipped"]:
        lines.append(f"  label issues: not checked ({issues['skipped']})")
    elif not issues["count"]:
        lines.append(f"  label issues: none among {issues['checked']:,} training rows")
    drop = report["drop"]
    if drop["findings"]:
        counts = ", ".join(f"{finding} {n}" for finding, n in drop["by_finding"].items())
        lines.append(f"  dropped from training (audit.drop): {drop['count']} rows ({counts})")
    return "\n".join(lines)


def wandb_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The audit's counts for a W&B summary (`audit/...`): totals over splits and pairs."""
    out: dict[str, Any] = {"audit/status": report["status"]}
    for finding in (
        "missing_labels",
        "missing_inputs",
        "unreadable_inputs",
        "unknown_labels",
        "exact_duplicates_within",
        "exact_duplicates_across",
        "near_duplicates_across",
    ):
        out[f"audit/{finding}"] = sum(report.get(finding, {}).values())
    out["audit/label_issues"] = report.get("label_issues", {}).get("count", 0)
    out["audit/rare_classes"] = report.get("rare_classes", 0)
    out["audit/imbalance_ratio"] = report.get("imbalance_ratio")
    out["audit/dropped_train_rows"] = report.get("drop", {}).get("count", 0)
    return out
