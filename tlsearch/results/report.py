"""A leaderboard from the files on disk alone (works after the cluster is gone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tlsearch.errors import UserInputError
from tlsearch.results.files import RESOLVED_SPEC, TRIALS_TABLE, read_trials
from tlsearch.spec import vocab


def load_resolved(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESOLVED_SPEC
    if not path.exists():
        raise UserInputError(f"{run_dir} is not a tlsearch run directory (no {RESOLVED_SPEC})")
    return yaml.safe_load(path.read_text())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def leaderboard(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    resolved = load_resolved(run_dir)
    metric = resolved["search"]["metric"]
    mode = resolved["search"].get("mode") or vocab.METRICS[metric]
    trials = read_trials(run_dir)
    if not trials:
        return f"{run_dir}: no trials recorded yet ({TRIALS_TABLE} missing or empty)"
    key = f"best_{metric}"
    scored = [t for t in trials if t.get(key) is not None]
    reverse = mode == "max"
    scored.sort(key=lambda t: t[key], reverse=reverse)
    per_strategy: dict[str, dict[str, Any]] = {}
    for t in scored:
        per_strategy.setdefault(t["strategy"], t)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1

    columns = [
        "strategy",
        "trial_id",
        "status",
        "epochs",
        key,
        metric,
        "trainable_params",
        "wall_s",
        "device_s",
    ]
    rows = [[_fmt(t.get(c)) for c in columns] for t in per_strategy.values()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [
        f"search {resolved['name']} ({run_dir})",
        f"trials: {len(trials)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
        f"metric: {metric} ({mode})",
        "",
        "best trial per strategy:",
        line,
        "-" * len(line),
    ]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if scored:
        best = scored[0]
        params = {k: v for k, v in best.items() if "/" in k and v is not None}
        out += [
            "",
            f"best overall: {best['trial_id']} ({best['strategy']}) {key}={_fmt(best[key])}",
            f"  config: {params}",
            f"  checkpoint: {best.get('checkpoint') or '-'}",
        ]
    errors = [t for t in trials if t["status"] == "error"]
    for t in errors[:5]:
        out.append(
            f"error in {t['trial_id']} ({t['strategy']}): {(t.get('error') or '').splitlines()[-1:] or ''}"
        )
    return "\n".join(out)
