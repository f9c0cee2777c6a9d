"""The data audit (`tlsearch audit SPEC`, and the first step of every search): checks on the tables,
near-duplicates across splits, likely label errors (docs/audit.md)."""

from tlsearch.audit.audit import (
    AUDIT_DIR,
    AUDIT_FILE,
    dropped_train_rows,
    run_audit,
    search_refusal,
    summary_text,
    wandb_summary,
)

__all__ = [
    "AUDIT_DIR",
    "AUDIT_FILE",
    "dropped_train_rows",
    "run_audit",
    "search_refusal",
    "summary_text",
    "wandb_summary",
]
