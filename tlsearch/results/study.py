"""Where a search's Optuna study lives: a journal file in the run directory, or an RDB URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

JOURNAL_FILE = "optuna.journal"


def make_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    if url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(run_dir) / JOURNAL_FILE)))


def storage_description(url: str | None, run_dir: Path) -> str:
    """What `optuna-dashboard` and `optuna.load_study` take: the journal path or the RDB URL."""
    return url or str(Path(run_dir) / JOURNAL_FILE)


def open_storage(description: str) -> optuna.storages.BaseStorage:
    """The inverse of storage_description."""
    if "://" in description:
        return optuna.storages.RDBStorage(description)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(description))


def load_recorded_study(resolved: dict[str, Any]) -> optuna.Study | None:
    """The study named in a run's spec.resolved.yaml, or None when it is not there (yet)."""
    info = resolved.get("resolved", {}).get("optuna")
    if not info:
        return None
    if "://" not in info["storage"] and not Path(info["storage"]).exists():
        return None
    try:
        return optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    except KeyError:  # the study was never created (the search stopped before its first trial)
        return None
