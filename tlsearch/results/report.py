"""The search report, from the files on disk alone (it works after the cluster is gone).

`leaderboard()` is the text the CLI prints; `write_report()` writes report.html (self-contained: inline
SVG plots and CSS, opens offline), report.md (with PNG plots under report/) and report.json.
"""

from __future__ import annotations

import html
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tlsearch.audit import AUDIT_FILE
from tlsearch.errors import UserInputError
from tlsearch.results.files import (
    REPORT_SUMMARY,
    RESOLVED_SPEC,
    TRIALS_TABLE,
    abandoned_trials,
    best_trial,
    epoch_rows,
    read_trials,
    spent_device_s,
)
from tlsearch.results.study import load_recorded_study
from tlsearch.spec import vocab
from tlsearch.spec.strategy import COMMON, STRATEGIES

REPORT_DIR = "report"
FORMATS = ("html", "md", "json")
# A strategy's colour: its place among the registered strategies (the built-in four: blue, green, red,
# purple), the same in every report.
PALETTE = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def strategy_color(strategy: str | None) -> str:
    names = STRATEGIES.names()
    return PALETTE[names.index(strategy) % len(PALETTE)] if strategy in names else "grey"


FIGURES = {
    "learning_curves": "Learning curves: the search metric per epoch, one line per trial",
    "anytime": "Best so far against trial index (anytime curve); dots are each trial's best",
    "strategy_metric": "Best value of the search metric per strategy (each dot one trial)",
    "cost": "Trainable parameters and device-seconds per trial, by strategy",
    "importances": "Parameter importances per strategy (Optuna, over completed trials)",
}


def load_resolved(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESOLVED_SPEC
    if not path.exists():
        raise UserInputError(f"{run_dir} is not a tlsearch run directory (no {RESOLVED_SPEC})")
    return yaml.safe_load(path.read_text())


@dataclass
class Report:
    run_dir: Path
    resolved: dict[str, Any]
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    best: dict[str, Any] | None
    baselines: list[dict[str, Any]] = field(default_factory=list)  # rows with a `baseline`
    # final/: metrics.json, and latency.json, export.json and the top misclassified rows when there
    final: dict[str, Any] | None = None
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_notes: dict[str, str] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)  # figure name -> PNG
    svgs: dict[str, str] = field(default_factory=dict)  # figure name -> inline SVG text
    files: dict[str, Path] = field(default_factory=dict)  # format -> written file
    audit: dict[str, Any] | None = None  # the data audit's report (audit.json), when the search ran one

    @property
    def name(self) -> str:
        return self.resolved["name"]

    @property
    def metric(self) -> str:
        return self.resolved["search"]["metric"]

    @property
    def mode(self) -> str:
        return self.resolved["search"].get("mode") or vocab.METRICS[self.metric]

    @property
    def strategies(self) -> list[str]:
        """The strategies searched, in the order the search had them."""
        return [name for name in self.resolved.get("strategies", {}) if name != COMMON]

    def sorted_trials(self) -> list[dict[str, Any]]:
        key = f"best_{self.metric}"
        scored = [t for t in self.trials if t.get(key) is not None]
        return sorted(scored, key=lambda t: t[key], reverse=self.mode == "max")

    def best_per_strategy(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for t in self.sorted_trials():
            out.setdefault(t["strategy"], t)
        return out


def load_report(run_dir: Path, *, importances: bool = False) -> Report:
    run_dir = Path(run_dir)
    resolved = load_resolved(run_dir)
    rows = read_trials(run_dir)
    # The plots and the leaderboard are of the search's trials; baselines run apart are listed apart.
    trials = [t for t in rows if t.get("in_search", True)]
    baseline_rows = [t for t in rows if t.get("baseline")]
    report = Report(run_dir, resolved, trials, epoch_rows(run_dir), None, baselines=baseline_rows)
    report.best = best_trial(rows, report.metric, report.mode)
    if (run_dir / AUDIT_FILE).exists():
        report.audit = json.loads((run_dir / AUDIT_FILE).read_text())
    report.final = _read_final(run_dir)
    if importances:  # fits a model per strategy: only for the written report
        report.importances, report.importance_notes = _importances(report)
    return report


# --- text ------------------------------------------------------------------------------------


def _fmt(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and column.endswith("_s"):  # seconds: a tenth is plenty
        return f"{value:,.1f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def _columns(report: Report) -> list[str]:
    m = report.metric
    return [
        "strategy",
        "trial_id",
        "status",
        "epochs",
        f"best_{m}",
        m,
        "trainable_params",
        "wall_s",
        "device_s",
    ]


def _baseline_columns(report: Report) -> list[str]:
    m = report.metric
    return ["baseline", "trial_id", "strategy", "status", "epochs", f"best_{m}", "wall_s", "device_s"]


def _text_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    cells = [[_fmt(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return [header, "-" * len(header), *body]


def leaderboard(run_dir: Path) -> str:
    report = load_report(run_dir)
    if not report.trials:
        return f"{run_dir}: no trials recorded yet ({TRIALS_TABLE} missing or empty)"
    counts: dict[str, int] = {}
    for t in report.trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    out = [
        f"search {report.name} ({report.run_dir})",
        f"trials: {len(report.trials)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
        f"metric: {report.metric} ({report.mode})",
        "",
        "best trial per strategy:",
        *_text_table(list(report.best_per_strategy().values()), _columns(report)),
    ]
    if report.best:
        out += [
            "",
            f"best overall: {report.best['trial_id']} ({report.best['strategy']}) "
            f"best_{report.metric}={_fmt(report.best['value'])}",
            f"  config: { {k: v for k, v in report.best['config'].items() if k != 'strategy'} }",
            f"  checkpoint: {report.best.get('checkpoint') or '-'}",
            f"  reproduce: {reproduce_command(report)}",
        ]
    if report.baselines:
        out += ["", "baselines:", *_text_table(report.baselines, _baseline_columns(report))]
        gain = (report.best or {}).get("transfer_gain")
        if gain is not None:
            out.append(
                f"transfer gain (best trial against majority and scratch): {gain:+.4f} {report.metric}"
            )
    for t in [t for t in report.trials if t["status"] == "error"][:5]:
        last = (t.get("error") or "").strip().splitlines()[-1:] or [""]
        out.append(f"error in {t['trial_id']} ({t['strategy']}): {last[0]}")
    out += ["", *follow_up_commands(report)]
    return "\n".join(out)


def reproduce_command(report: Report) -> str:
    """A one-trial search with exactly the best configuration, on the same data and seed."""
    if report.best is None:
        return "-"
    config = report.best["config"]
    seed = {"strategy": config["strategy"]} | {k.split("/", 1)[1]: v for k, v in config.items() if "/" in k}
    args = [
        "tlsearch",
        "run",
        str(report.run_dir / RESOLVED_SPEC),
        "--name",
        f"{report.name}-trial-{report.best['trial_id']}",
        "--set",
        "search.num_samples=1",
        "--set",
        "search.scheduler.type=fifo",
        "--set",
        f"search.seed_configs={json.dumps([seed])}",
    ]
    return shlex.join(args)


def latest_offline_runs(run_dir: Path) -> dict[str, Path]:
    """The newest offline W&B directory of each run id. A resumed search replays a trial's whole
    history into a new directory, so syncing the newest one uploads the complete run. Runs of
    trials a killed driver had started but the resumed search never knew are left out."""
    abandoned = {f"-{trial_id}" for trial_id in abandoned_trials(Path(run_dir))}
    latest: dict[str, Path] = {}
    for path in sorted((Path(run_dir) / "wandb").glob("offline-run-*")):
        run_id = path.name.split("-", 3)[-1]
        if not any(run_id.endswith(suffix) for suffix in abandoned):
            latest[run_id] = path  # sorted by the timestamp in the name: the last wins
    return latest


def follow_up_commands(report: Report) -> list[str]:
    lines = []
    offline = latest_offline_runs(report.run_dir)
    if offline:
        lines.append(f"upload the {len(offline)} offline W&B runs (newest directory of each run):")
        lines.append("  " + shlex.join(["wandb", "sync", *map(str, sorted(offline.values()))]))
    info = report.resolved.get("resolved", {}).get("optuna")
    if info:
        storage = info["storage"]
        lines.append(f"look at the Optuna study `{info['study_name']}`:")
        lines.append(f"  optuna-dashboard {shlex.quote(storage)}")
        journal = [] if "://" in storage else ["--storage-class", "JournalFileBackend"]
        lines.append(
            "  "
            + shlex.join(
                [
                    "optuna",
                    "trials",
                    "--storage",
                    storage,
                    *journal,
                    "--study-name",
                    info["study_name"],
                    "-f",
                    "table",
                ]
            )
        )
    return lines


# --- importances ---------------------------------------------------------------------------


def _importances(report: Report) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    import optuna

    study = load_recorded_study(report.resolved)
    if study is None:
        return {}, {"all": "no Optuna study recorded"}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values: dict[str, dict[str, float]] = {}
    notes: dict[str, str] = {}
    only = report.strategies[0] if len(report.strategies) == 1 else None
    for strategy in report.strategies:
        mine = [t for t in complete if t.params.get("strategy", only) == strategy]
        params = sorted(
            {p for t in mine for p in t.params if p.startswith(f"{strategy}/") or p.startswith(f"{COMMON}/")}
        )
        if len(mine) < 3 or not params:
            noun = "trial" if len(mine) == 1 else "trials"
            notes[strategy] = f"{len(mine)} completed {noun}: too few to estimate importances"
            continue
        try:
            values[strategy] = optuna.importance.get_param_importances(study, params=params)
        except (ValueError, RuntimeError) as exc:
            notes[strategy] = f"not computed: {exc}"
    return values, notes


# --- figures -------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "tlsearch"})
    return plt


def _legend(ax: Any, strategies: list[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=strategy_color(s), marker="o", label=s) for s in strategies]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")


def figures(report: Report) -> dict[str, Any]:
    plt = _pyplot()
    metric, strategies = (
        report.metric,
        [s for s in report.strategies if any(t["strategy"] == s for t in report.trials)],
    )
    out: dict[str, Any] = {}

    fig, ax = plt.subplots(figsize=(7, 4))
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in report.epochs:
        by_trial.setdefault(row["trial_id"], []).append(row)
    status = {t["trial_id"]: t["status"] for t in report.trials}
    for trial_id, rows in by_trial.items():
        points = [(r["epoch"], r.get(metric)) for r in rows if r.get(metric) is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        color = strategy_color(rows[0].get("strategy"))
        ax.plot(xs, ys, color=color, alpha=0.8, linewidth=1.2)
        end = "x" if status.get(trial_id) == "stopped_early" else "o"
        ax.plot(xs[-1:], ys[-1:], marker=end, color=color, markersize=5)
    ax.set(xlabel="epoch", ylabel=metric, title="learning curves (x: stopped early)")
    _legend(ax, strategies)
    out["learning_curves"] = fig

    fig, ax = plt.subplots(figsize=(7, 4))
    order = sorted(report.trials, key=lambda t: _start_order(report, t["trial_id"]))
    pick = max if report.mode == "max" else min
    best_so_far: list[float] = []
    for i, t in enumerate(order, start=1):
        value = t.get(f"best_{metric}")
        if value is not None:
            ax.scatter([i], [value], color=strategy_color(t["strategy"]), s=18, zorder=3)
            best_so_far.append(value if not best_so_far else pick(best_so_far[-1], value))
        elif best_so_far:
            best_so_far.append(best_so_far[-1])
        else:
            best_so_far.append(math.nan)
    ax.step(
        range(1, len(order) + 1), best_so_far, where="post", color="black", linewidth=1.5, label="best so far"
    )
    ax.set(xlabel="trial (in start order)", ylabel=f"best {metric}", title="anytime performance")
    _legend(ax, strategies)
    out["anytime"] = fig

    fig, ax = plt.subplots(figsize=(7, 4))
    groups = [
        [
            t[f"best_{metric}"]
            for t in report.trials
            if t["strategy"] == s and t.get(f"best_{metric}") is not None
        ]
        for s in strategies
    ]
    if any(groups):
        ax.boxplot([g or [math.nan] for g in groups], tick_labels=strategies, showfliers=False)
        for i, (s, g) in enumerate(zip(strategies, groups, strict=True), start=1):
            ax.scatter([i] * len(g), g, color=strategy_color(s), s=18, zorder=3)
    ax.set(ylabel=f"best {metric}", title=f"{metric} by strategy")
    out["strategy_metric"] = fig

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for i, s in enumerate(strategies, start=1):
        mine = [t for t in report.trials if t["strategy"] == s]
        color = strategy_color(s)
        params = [t["trainable_params"] for t in mine if t.get("trainable_params")]
        cost = [spent_device_s(t) for t in mine if t.get("device_s") is not None]
        left.scatter([i] * len(params), params, color=color, s=18)
        right.bar([i], [sum(cost)], color=color, alpha=0.35)
        right.scatter([i] * len(cost), cost, color=color, s=18, zorder=3)
    for ax, title, label in (
        (left, "trainable parameters", "parameters"),
        (right, "device-seconds (bar: total)", "device-s"),
    ):
        ax.set_xticks(range(1, len(strategies) + 1), strategies, rotation=20)
        ax.set(title=title, ylabel=label)
    left.set_yscale("log")
    fig.tight_layout()
    out["cost"] = fig

    shown = [s for s in strategies if report.importances.get(s)]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.5 * max(1, len(shown)), 3.5), squeeze=False)
    for ax, s in zip(axes[0], shown, strict=False):
        names = list(report.importances[s])[::-1]
        ax.barh(names, [report.importances[s][n] for n in names], color=strategy_color(s))
        ax.set(title=s, xlabel="importance")
        ax.tick_params(axis="y", labelsize=8)
    if not shown:
        axes[0][0].text(0.5, 0.5, "too few completed trials per strategy", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    out["importances"] = fig
    return out


def _start_order(report: Report, trial_id: str) -> float:
    times = [r.get("time", math.inf) for r in report.epochs if r["trial_id"] == trial_id]
    return min(times) if times else math.inf


def _svg(fig: Any) -> str:
    import io

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: the SVG sits inline in the HTML


# --- files ---------------------------------------------------------------------------------


def render_figures(run_dir: Path) -> Report:
    """Load the search's tables and draw every figure: PNGs under report/ (for Markdown and W&B),
    SVG text kept for the self-contained HTML."""
    report = load_report(run_dir, importances=True)
    plt = _pyplot()
    images_dir = report.run_dir / REPORT_DIR
    images_dir.mkdir(exist_ok=True)
    for name, fig in figures(report).items():
        report.images[name] = images_dir / f"{name}.png"
        fig.savefig(report.images[name], bbox_inches="tight")
        report.svgs[name] = _svg(fig)
        plt.close(fig)
    return report


def write_report_files(report: Report, formats: tuple[str, ...] = FORMATS) -> Report:
    """Write the report in the given formats. Called after anything that adds to the run directory
    (the search's own W&B run), so the follow-up commands list it."""
    if "html" in formats:
        report.files["html"] = _write(report.run_dir / "report.html", _html(report))
    if "md" in formats:
        report.files["md"] = _write(report.run_dir / "report.md", _markdown(report))
    if "json" in formats:
        report.files["json"] = _write(
            report.run_dir / REPORT_SUMMARY, json.dumps(_summary(report), indent=2, default=str)
        )
    return report


def write_report(run_dir: Path, formats: tuple[str, ...] = FORMATS) -> Report:
    return write_report_files(render_figures(run_dir), formats)


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _summary(report: Report) -> dict[str, Any]:
    return {
        "search": report.name,
        "metric": report.metric,
        "mode": report.mode,
        "trials": len(report.trials),
        "statuses": {
            s: sum(t["status"] == s for t in report.trials) for s in ("completed", "stopped_early", "error")
        },
        "best": report.best,
        "baselines": {
            t["baseline"]: {k: t.get(k) for k in _baseline_columns(report)} for t in report.baselines
        },
        "best_per_strategy": {
            s: {k: t.get(k) for k in _columns(report)} for s, t in report.best_per_strategy().items()
        },
        "importances": report.importances,
        "importance_notes": report.importance_notes,
        "reproduce": reproduce_command(report),
        "follow_up": follow_up_commands(report),
        "figures": {name: str(path.relative_to(report.run_dir)) for name, path in report.images.items()},
        "audit": _audit_summary(report.audit),
    }


# Per-split or per-pair counts the report's "Data audit" section lists (the rest is in audit.json).
AUDIT_COUNTS = {
    "missing_labels": "missing labels",
    "missing_inputs": "missing inputs",
    "unreadable_inputs": "undecodable inputs",
    "unknown_labels": "labels training never has",
    "exact_duplicates_within": "exact duplicates within a split",
    "exact_duplicates_across": "exact duplicates across splits",
    "near_duplicates_across": "near-duplicates across splits",
}


def _audit_summary(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    if audit is None:
        return None
    return {
        "status": audit["status"],
        **{key: audit.get(key) for key in AUDIT_COUNTS},
        "imbalance_ratio": audit.get("imbalance_ratio"),
        "rare_classes": audit.get("rare_classes"),
        "label_issues": audit.get("label_issues", {}).get("count"),
        "dropped_train_rows": audit.get("drop", {}).get("count"),
        "file": AUDIT_FILE,
    }


def _audit_lines(audit: dict[str, Any]) -> list[str]:
    """The "Data audit" section (Markdown list items): status, counts, a few examples."""
    lines = [
        f"- status: **{audit['status']}** ({audit['scope']}; every row id in `{AUDIT_FILE}`)",
        "- rows: " + ", ".join(f"{split} {n:,}" for split, n in audit["rows"].items()),
    ]
    lines += [f"- unusable: {problem}" for problem in audit["unusable"]]
    for key, what in AUDIT_COUNTS.items():
        counts = {where: n for where, n in audit.get(key, {}).items() if n}
        if counts:
            lines.append(f"- {what}: " + ", ".join(f"{where} {n}" for where, n in counts.items()))
    if audit.get("imbalance_ratio") is not None:
        lines.append(f"- imbalance ratio (largest / smallest training class): {audit['imbalance_ratio']:g}")
    issues = audit.get("label_issues", {})
    if issues.get("skipped"):
        lines.append(f"- label issues: not checked ({issues['skipped']})")
    else:
        shown = ", ".join(str(row) for row in issues.get("rows", [])[:5])
        lines.append(
            f"- label issues: {issues.get('count', 0)} of {issues.get('checked', 0)} training rows"
            + (f" (most likely first: rows {shown})" if shown else "")
        )
    lines += [f"- warning: {warning['message']}" for warning in audit["warnings"][:10]]
    drop = audit.get("drop", {})
    if drop.get("findings"):
        lines.append(
            f"- dropped from training (`audit.drop`: {', '.join(drop['findings'])}): {drop['count']} rows"
        )
    return lines


def _md_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c), c) for c in columns) + " |" for r in rows]
    return lines


def _markdown(report: Report) -> str:
    columns = _columns(report)
    out = [
        f"# Search `{report.name}`",
        "",
        *_overview(report),
        "",
        "## Best trial per strategy",
        "",
        *_md_table(list(report.best_per_strategy().values()), columns),
        "",
        "## Leaderboard",
        "",
        *_md_table(report.sorted_trials(), columns),
        "",
        *_baseline_lines(report),
        *_final_lines(report),
    ]
    if report.audit is not None:
        out += ["## Data audit", "", *_audit_lines(report.audit), ""]
    for name, caption in FIGURES.items():
        out += [f"## {caption}", "", f"![{name}]({REPORT_DIR}/{name}.png)", ""]
    out += [
        "## Parameter importances",
        "",
        *_importance_lines(report),
        "",
        "## Reproduce the best trial",
        "",
        "```",
        reproduce_command(report),
        "```",
        "",
        "## Follow up",
        "",
        "```",
        *follow_up_commands(report),
        "```",
        "",
    ]
    return "\n".join(out)


def _overview(report: Report) -> list[str]:
    statuses = {
        s: sum(t["status"] == s for t in report.trials) for s in ("completed", "stopped_early", "error")
    }
    lines = [
        f"- metric: `{report.metric}` ({report.mode})",
        f"- trials: {len(report.trials)} ({', '.join(f'{n} {s}' for s, n in statuses.items())})",
        f"- device-seconds: {sum(spent_device_s(t) for t in report.trials):,.0f}",
        f"- run directory: `{report.run_dir}`",
    ]
    if report.best:
        lines.insert(
            0,
            f"- best: trial `{report.best['trial_id']}` ({report.best['strategy']}), "
            f"best_{report.metric} = {_fmt(report.best['value'])}",
        )
    elif not statuses["completed"] and not statuses["stopped_early"]:
        failed = [t for t in report.trials if t["status"] == "error"]
        lines.insert(0, f"- no trial finished: {len(failed)} failed")
        lines[1:1] = [f"- trial `{t['trial_id']}` failed: {error_line(t.get('error'))}" for t in failed[:10]]
    return lines


def error_line(error: Any) -> str:
    """A trial's recorded error in one line: a traceback's last line, which says what went wrong."""
    lines = str(error or "no error recorded").strip().splitlines()
    return (lines[-1] if lines else "no error recorded")[:300]


FINAL_DIR = "final"  # tlsearch finalize's output (tlsearch/search/finalize.py)
FINAL_FIGURES = {"confusion_matrix": "Confusion matrix (test)", "reliability": "Reliability diagram (test)"}


def _read_final(run_dir: Path) -> dict[str, Any] | None:
    final = run_dir / FINAL_DIR
    if not (final / "metrics.json").exists():
        return None
    out: dict[str, Any] = {"metrics": json.loads((final / "metrics.json").read_text())}
    for name in ("latency", "export"):
        if (final / f"{name}.json").exists():
            out[name] = json.loads((final / f"{name}.json").read_text())
    if (final / "misclassified.parquet").exists():
        import pyarrow.parquet as pq

        out["misclassified"] = pq.read_table(final / "misclassified.parquet").slice(0, 10).to_pylist()
    return out


def _final_lines(report: Report) -> list[str]:
    """The "Final model" section (markdown): test metrics once, baselines, slices, errors, latency."""
    if report.final is None:
        return []
    m = report.final["metrics"]
    ci = m["intervals"]
    lines = [
        "## Final model",
        "",
        f"- {'retrained on training + validation' if m['retrained'] else 'the best trial weights'}: "
        f"trial `{m['trial_id']}` ({m['strategy']}), {m['epochs']} epochs; evaluated once on "
        f"{m['rows']} test rows",
        f"- test accuracy {m['test_accuracy']:.4f} "
        f"(95% CI {ci['test_accuracy'][0]:.4f}-{ci['test_accuracy'][1]:.4f}), "
        f"macro-F1 {m['test_f1_macro']:.4f} ({ci['test_f1_macro'][0]:.4f}-{ci['test_f1_macro'][1]:.4f}), "
        f"ROC-AUC {_fmt(m['test_roc_auc'])}, ECE {m['ece']:.4f}",
    ]
    gain = m.get("transfer_gain")
    if gain:
        lines.append(
            f"- transfer gain on test: {gain['value']:+.4f} {gain['metric']} against {gain['against']} "
            f"(95% CI {gain['interval'][0]:+.4f} to {gain['interval'][1]:+.4f})"
        )
    for name, b in m.get("baselines", {}).items():
        lines.append(
            f"- baseline {name}: test accuracy {b['test_accuracy']:.4f}, macro-F1 {b['test_f1_macro']:.4f}"
        )
    latency = report.final.get("latency")
    if latency:
        lines.append(
            f"- latency ({latency['device']}): {latency['batch1_p50_ms']:.2f} ms per example at batch 1 "
            "(p50), "
            f"{latency['serving_p50_ms']:.2f} ms at batch {latency['serving_batch']}"
        )
    export = report.final.get("export")
    if export:
        lines.append(
            f"- ONNX (opset {export['opset']}): max |logit difference| {export['max_abs_diff']:.1e}, "
            f"top-class agreement {export['argmax_agreement']}"
        )
    lines += ["", *(f"![{n}]({FINAL_DIR}/{n}.png)" for n in FINAL_FIGURES), ""]
    for name, groups in m.get("slices", {}).items():
        lines += [
            f"Slices by `{name}`:",
            "",
            *_md_table(
                [{"group": g} | v for g, v in groups.items()],
                ["group", "rows", "test_accuracy", "test_f1_macro"],
            ),
            "",
        ]
    wrong = report.final.get("misclassified") or []
    if wrong:
        columns = [c for c in wrong[0] if c not in ("probability",)]
        lines += [
            "Misclassified test rows, highest loss first:",
            "",
            *_md_table(
                [{k: (str(v)[:80] if isinstance(v, str) else v) for k, v in r.items()} for r in wrong],
                columns,
            ),
            "",
        ]
    return lines


def _gain_line(report: Report) -> str:
    gain = (report.best or {}).get("transfer_gain")
    if gain is None:
        return "transfer gain: - (neither the majority nor the scratch baseline ran)"
    return (
        f"transfer gain: {gain:+.4f} {report.metric}, the best trial against the better of majority "
        "and scratch"
    )


def _baseline_lines(report: Report) -> list[str]:
    if not report.baselines:
        return []
    return [
        "## Baselines",
        "",
        *_md_table(report.baselines, _baseline_columns(report)),
        "",
        _gain_line(report),
        "",
    ]


def _importance_lines(report: Report) -> list[str]:
    lines = []
    for strategy, values in report.importances.items():
        lines.append(f"- **{strategy}**: " + ", ".join(f"`{k}` {v:.2f}" for k, v in values.items()))
    for strategy, note in report.importance_notes.items():
        lines.append(f"- **{strategy}**: {note}")
    return lines or ["- none"]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f5f5f5}
td:first-child,th:first-child,td:nth-child(2){text-align:left}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#555}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.8rem;white-space:pre-wrap;word-break:break-all}
.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:50%;margin-right:.3rem;vertical-align:middle}
"""
# Marks each figure once the browser has laid its SVG out with a non-empty size: tests read it back.
CHECK_JS = """
window.addEventListener('load', function () {
  var figs = document.querySelectorAll('figure.plot'), ok = 0;
  figs.forEach(function (f) {
    var svg = f.querySelector('svg'), box = svg && svg.getBoundingClientRect();
    var drawn = svg && svg.querySelectorAll('path,use,line,rect').length;
    var rendered = !!(box && box.width > 50 && box.height > 50 && drawn > 5);
    f.setAttribute('data-rendered', rendered ? 'true' : 'false'); if (rendered) ok++;
  });
  document.body.setAttribute('data-figures-rendered', ok + '/' + figs.length);
});
"""


def _html_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            text = html.escape(_fmt(r.get(c), c))
            if c == "strategy":
                color = strategy_color(str(r.get(c)))
                text = f'<span class="swatch" style="background:{color}"></span>{text}'
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html(report: Report) -> str:
    columns = _columns(report)
    overview = "".join(f"<li>{html.escape(line[2:]).replace('`', '')}</li>" for line in _overview(report))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>tlsearch report: {html.escape(report.name)}</title><style>{CSS}</style>",
        f"<script>{CHECK_JS}</script></head><body>",
        f"<h1>Search <code>{html.escape(report.name)}</code></h1><ul>{overview}</ul>",
        "<h2>Best trial per strategy</h2>",
        _html_table(list(report.best_per_strategy().values()), columns),
        "<h2>Leaderboard</h2>",
        _html_table(report.sorted_trials(), columns),
    ]
    if report.audit is not None:
        items = "".join(
            f"<li>{html.escape(line[2:]).replace('**', '').replace('`', '')}</li>"
            for line in _audit_lines(report.audit)
        )
        parts.append(f"<h2>Data audit</h2><ul>{items}</ul>")
    if report.final is not None:
        final_lines = _final_lines(report)
        items = "".join(
            f"<li>{html.escape(line[2:]).replace('`', '')}</li>"
            for line in final_lines
            if line.startswith("- ")
        )
        images = "".join(
            f"<figure><img src='{FINAL_DIR}/{n}.png' alt='{html.escape(c)}' style='max-width:48%'>"
            f"<figcaption>{html.escape(c)}</figcaption></figure>"
            for n, c in FINAL_FIGURES.items()
        )
        parts.append(f"<h2>Final model</h2><ul>{items}</ul>{images}")
    if report.baselines:
        parts += [
            "<h2>Baselines</h2>",
            _html_table(report.baselines, _baseline_columns(report)),
            f"<p>{html.escape(_gain_line(report))}</p>",
        ]
    for name, caption in FIGURES.items():
        parts.append(
            f"<h2>{html.escape(caption)}</h2><figure class='plot' id='fig-{name}'>{report.svgs[name]}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    importances = "".join(
        f"<li>{html.escape(line[2:]).replace('**', '').replace('`', '')}</li>"
        for line in _importance_lines(report)
    )
    parts += [
        f"<h2>Parameter importances</h2><ul>{importances}</ul>",
        f"<h2>Reproduce the best trial</h2><pre>{html.escape(reproduce_command(report))}</pre>",
        f"<h2>Follow up</h2><pre>{html.escape(chr(10).join(follow_up_commands(report)))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
