"""`tlsearch finalize RUN_DIR`: the search's best configuration becomes the final model, evaluated once
on the untouched test split (docs/final.md).

1. The best trial's configuration (best.json) is retrained on the training and validation rows the
   search read, for the epochs of its best checkpoint (`finalize.retrain: true`), or its best
   checkpoint is kept as it is (`retrain: false`; `retrained` in metrics.json says which).
2. The model predicts every test row once: metrics with bootstrap intervals, calibration, slices, the
   baselines on the same rows (majority from the training class shares; scratch and the default linear
   probe from their best checkpoints) and the transfer gain with a paired bootstrap interval.
3. Written into a temporary directory renamed to `final/` (a killed finalize leaves none): metrics.json,
   misclassified.parquet, latency.json, the figures, and the model (model/, loadable without tlsearch).
4. `finalize.export` (on by default) then writes model.onnx and export.json (tlsearch export).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.data.datasets import Split, load_split
from tlsearch.data.tables import DataFiles
from tlsearch.errors import UserInputError
from tlsearch.final.evaluation import (
    accuracy_of,
    bootstrap_distribution,
    confusion_counts,
    evaluate,
    f1_macro_of,
    figures,
    length_quartiles,
)
from tlsearch.final.evaluation import misclassified_table as misclassified_rows
from tlsearch.final.export import FINAL_DIR, MODEL_DIR, latency_batches, serving_graph
from tlsearch.final.model_dir import load_final_model, save_final_model
from tlsearch.results.files import BEST_FILE, checkpoint_location, read_trials
from tlsearch.search.baselines import MAJORITY, SCRATCH
from tlsearch.search.resolve import Resolved, read_resolved_spec, resolve
from tlsearch.space.trial_config import TrialConfig
from tlsearch.spec import Spec

METRICS_FILE = "metrics.json"
LATENCY_FILE = "latency.json"
MISCLASSIFIED_FILE = "misclassified.parquet"
# The test metric each search metric is judged by on the test split (the transfer gain's).
TEST_METRIC = {"val_accuracy": "test_accuracy", "val_f1_macro": "test_f1_macro"}


@dataclass
class ChosenModel:
    """The best configuration's model as a trial builds it (before it is saved as the final model,
    tlsearch.final.model_dir): what the test evaluation predicts with."""

    model: Any  # the prepared nn.Module (a peft model for LoRA), in eval mode
    loaded: Any  # its LoadedModel (preprocessing, source)
    epochs: int  # epochs it trained
    checkpoint: str  # the checkpoint its weights came from


def finalize_run(run_dir: Path, *, retrain: bool | None = None, export: bool | None = None) -> dict[str, Any]:
    """Finalize a finished search; returns metrics.json. Refuses (UserInputError, nothing changed) a run
    without a test split or a completed trial, and a second finalize."""
    run_dir = Path(run_dir).expanduser().resolve()
    spec = read_resolved_spec(run_dir)
    final_dir = run_dir / FINAL_DIR
    if final_dir.exists():
        raise UserInputError(
            f"{final_dir} exists: this search was finalized already (its test split is spent)"
        )
    best = _best(run_dir)
    resolved = resolve(spec, run_dir, resuming=True)  # the data as the search read it, unchanged
    data = resolved.data
    if data.test is None:
        raise UserInputError(
            f"{run_dir}: the data has no test split (data.test), so there is nothing to finalize on"
        )
    retrain = spec.finalize.retrain if retrain is None else retrain
    started = time.time()
    staging = run_dir / f".{FINAL_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        config = TrialConfig.parse(best["config"])
        final = (
            _retrained(resolved, config, best, staging)
            if retrain
            else _from_checkpoint(spec, data, config, best["checkpoint"], run_dir)
        )
        test = load_split(data, "test")
        probs = predict(final, test, spec)
        metrics = evaluate(probs, test.targets, data.labels, slices=_slices(spec, data, test))
        metrics |= {
            "retrained": retrain,
            "trial_id": best["trial_id"],
            "strategy": best["strategy"],
            "config": best["config"],
            "epochs": final.epochs,
        }
        metrics |= _baselines_on_test(run_dir, spec, data, test, probs)
        _write_outputs(staging, metrics, probs, test, data)
        save_final_model(
            staging / MODEL_DIR,
            final.model,
            final.loaded.preprocessing,
            source=spec.model.source,
            task=spec.model.task,
            labels=list(data.labels),
            pooling=final.loaded.pooling,
            max_length=spec.model.max_length if spec.model.task == "text-classification" else None,
            image_size=spec.model.image_size,
            trust_remote_code=spec.model.trust_remote_code,
        )
        (staging / LATENCY_FILE).write_text(json.dumps(_latency(staging / MODEL_DIR, test), indent=2) + "\n")
        metrics["seconds"] = round(time.time() - started, 1)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
        # Before the rename: a driver killed after it finds final/ and never logs again; killed
        # before it, the finalize runs again and continues the same W&B run.
        _log_to_wandb(run_dir, spec, metrics, staging)
        os.rename(staging, final_dir)  # all of final/ or none of it
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(summary_line(metrics, final_dir), flush=True)
    complete_final(run_dir, export=spec.finalize.export if export is None else export)
    return metrics


def complete_final(run_dir: Path, *, export: bool) -> None:
    """The steps after final/ is in place, each done when its file is missing: the ONNX export (when
    wanted) and the model card. A driver killed between them leaves final/ without them, and the
    resumed search (finalize after the search) does what is left."""
    from tlsearch.final.export import ONNX_FILE

    final_dir = run_dir / FINAL_DIR
    for leftover in final_dir.glob(".export-*"):  # a killed export's work directory
        shutil.rmtree(leftover, ignore_errors=True)
    if export and not (final_dir / ONNX_FILE).exists():
        export_run(run_dir)
    write_model_card(run_dir)  # from final/'s files: again after a resumed export, which it names


def remove_killed_finalize(run_dir: Path) -> None:
    """A finalize killed before its rename left its staging directory: nothing in it counts."""
    for staging in run_dir.glob(f".{FINAL_DIR}.tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)


def _log_to_wandb(run_dir: Path, spec: Spec, metrics: dict[str, Any], final_dir: Path) -> None:
    from tlsearch.tracking.wandb_runs import WandbTracker

    tracker = WandbTracker(run_dir, spec.name, spec.tracking.wandb)
    if not tracker.enabled:
        return
    gain = metrics.get("transfer_gain") or {}
    summary = {
        key: metrics[key]
        for key in ("test_accuracy", "test_f1_macro", "test_roc_auc", "ece", "rows", "epochs")
    }
    summary |= {f"{metric}_ci": metrics["intervals"][metric] for metric in ("test_accuracy", "test_f1_macro")}
    summary |= {"retrained": metrics["retrained"], "transfer_gain": gain.get("value")}
    summary |= {
        f"baseline_{name}_test_accuracy": b["test_accuracy"] for name, b in metrics["baselines"].items()
    }
    config = {"search": spec.name, "trial_id": metrics["trial_id"], **metrics["config"]}
    tracker.log_final(config, summary, {p.stem: p for p in sorted(final_dir.glob("*.png"))})
    tracker.close()


def _best(run_dir: Path) -> dict[str, Any]:
    path = run_dir / BEST_FILE
    best = json.loads(path.read_text()) if path.exists() else None
    if not best or not best.get("checkpoint"):
        raise UserInputError(
            f"{run_dir}: no completed trial with a checkpoint ({BEST_FILE}): finish the search first "
            f"(`tlsearch resume {run_dir}`)"
        )
    return dict(best)


# --- the model -------------------------------------------------------------------------------


def _from_checkpoint(
    spec: Spec, data: DataFiles, config: TrialConfig, checkpoint: str, run_dir: Path
) -> ChosenModel:
    """The trial's model with the weights of `checkpoint` (a trials.parquet value)."""
    from tlsearch.models import build_model
    from tlsearch.strategies.base import prepare
    from tlsearch.train.checkpoint import load_weights, open_checkpoint, read_meta
    from tlsearch.train.loop import seed_everything

    seed_everything(spec.seed)
    loaded = build_model(spec.model, len(data.labels))
    prepared = prepare(loaded, config)
    location = checkpoint_location(run_dir, checkpoint)
    with open_checkpoint(location) as directory:
        assert directory is not None
        load_weights(prepared, directory)  # written sharded or not
        epochs = int(read_meta(directory)["epoch"])
    return ChosenModel(prepared.model.eval(), loaded, epochs, location)


def _retrained(resolved: Resolved, config: TrialConfig, best: dict[str, Any], staging: Path) -> ChosenModel:
    """The best configuration trained again on the training and validation rows the search read, for
    the epochs of the best trial's best checkpoint, in this process."""
    from tlsearch.train.checkpoint import open_checkpoint, read_meta
    from tlsearch.train.inputs import RunContext, TrialInputs
    from tlsearch.train.loop import train_trial
    from tlsearch.train.session import LocalSession

    spec, data, run_dir = resolved.spec, resolved.data, staging.parent
    with open_checkpoint(checkpoint_location(run_dir, best["checkpoint"])) as directory:
        assert directory is not None
        epochs = int(read_meta(directory)["epoch"])
    work = staging / ".retrain"
    combined = _train_and_validation(data, work / "train_validation.parquet")
    retrain_data = replace(data, train=str(combined), max_train_samples=None, drop_train_rows=())
    retrain_spec = spec.model_copy(update={"search": spec.search.model_copy(update={"max_epochs": epochs})})
    run = RunContext(str(run_dir), retrain_spec, retrain_data, use_gpu=_on_gpu())
    session = LocalSession(device="cuda" if _on_gpu() else "cpu", checkpoints_to=work / "checkpoints")
    print(
        f"[tlsearch] finalize: retraining {best['strategy']} on training + validation rows for "
        f"{epochs} epochs",
        flush=True,
    )
    train_trial(TrialInputs(run, config, "final", time.time()), session)
    last = work / "checkpoints" / f"epoch_{epochs:04d}"
    final = _from_checkpoint(spec, data, config, str(last), run_dir)
    shutil.rmtree(work, ignore_errors=True)
    return final


def _train_and_validation(data: DataFiles, path: Path) -> Path:
    """The training rows the search read (its subset, less what the audit dropped) and its validation
    rows, as one Parquet file; relative image paths made absolute."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs: list[Any] = []
    labels: list[str] = []
    for split in ("train", "validation"):
        rows = load_split(data, split)
        for item, target in zip(rows.inputs, rows.targets, strict=True):
            if isinstance(item, str) and data.input_kind == "image" and not Path(item).is_absolute():
                item = str(rows.base_dir / item)
            inputs.append(item)
            labels.append(data.labels[int(target)])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({data.input_column: inputs, data.label_column: labels}), path)
    return path


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def predict(final: ChosenModel, split: Split, spec: Spec) -> np.ndarray:
    """Probabilities of every row of `split`, in order, as the training loop feeds the model."""
    import torch
    from torch.utils.data import DataLoader

    from tlsearch.train.batches import ToDevice
    from tlsearch.train.loop import split_dataset

    device = torch.device("cuda" if _on_gpu() else "cpu")
    dataset = split_dataset(
        split, "text" if spec.model.task == "text-classification" else "image", spec.model, final.loaded
    )
    loader = DataLoader(dataset, batch_size=spec.training.eval_batch_size, collate_fn=dataset.collate)
    to_device = ToDevice(device, final.loaded.preprocessing)
    model = final.model.to(device).eval()
    parts = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch, _ in loader:
            parts.append(final.loaded.source.logits(model, to_device(batch)).float().softmax(dim=1).cpu())
    model.to("cpu")
    return torch.cat(parts).numpy().astype(np.float64)


# --- evaluation around the model --------------------------------------------------------------


def _slices(spec: Spec, data: DataFiles, test: Split) -> dict[str, list[Any]]:
    """`finalize.slices` columns of the test file, and text-length quartiles for text."""
    slices: dict[str, list[Any]] = {}
    if spec.finalize.slices:
        table = data.read("test", list(spec.finalize.slices))
        for column in spec.finalize.slices:
            slices[column] = table.column(column).to_pylist()
    if data.input_kind == "text":
        slices["text_length"] = length_quartiles([str(t) for t in test.inputs])
    return slices


def _baselines_on_test(
    run_dir: Path, spec: Spec, data: DataFiles, test: Split, probs: np.ndarray
) -> dict[str, Any]:
    """The baselines on the same test rows, and the transfer gain (with a paired percentile bootstrap
    interval: the final model and the baseline resampled on the same rows)."""
    num_classes = len(data.labels)
    predictions: dict[str, np.ndarray] = {}
    rows = {t["baseline"]: t for t in read_trials(run_dir) if t.get("baseline") and t["status"] != "error"}
    if MAJORITY in rows:
        train = load_split(data, "train")
        majority = int(np.bincount(train.targets, minlength=num_classes).argmax())
        predictions[MAJORITY] = np.full(len(test.targets), majority)
    for name, row in rows.items():
        if name == MAJORITY or not row.get("checkpoint"):
            continue
        config = TrialConfig.parse(
            {k: v for k, v in row.items() if k == "strategy" or ("/" in k and v is not None)}
        )
        model_spec = (
            spec
            if name != SCRATCH
            else spec.model_copy(update={"model": spec.model.model_copy(update={"pretrained": False})})
        )
        model = _from_checkpoint(model_spec, data, config, row["checkpoint"], run_dir)
        predictions[name] = predict(model, test, model_spec).argmax(axis=1)
    final_pred = probs.argmax(axis=1)
    out: dict[str, Any] = {
        "baselines": {name: _scores(test.targets, pred, num_classes) for name, pred in predictions.items()}
    }
    metric = TEST_METRIC.get(spec.search.metric, "test_accuracy")
    reference = [n for n in (MAJORITY, SCRATCH) if n in predictions]
    out["transfer_gain"] = None
    if reference:
        against = max(reference, key=lambda n: out["baselines"][n][metric])
        value = _scores(test.targets, final_pred, num_classes)[metric] - out["baselines"][against][metric]
        # The final model and the baseline resampled on the same rows (the same seed): a paired interval.
        gain = (
            bootstrap_distribution(test.targets, final_pred, num_classes)[metric]
            - bootstrap_distribution(test.targets, predictions[against], num_classes)[metric]
        )
        out["transfer_gain"] = {
            "metric": metric,
            "against": against,
            "value": value,
            "interval": [float(v) for v in np.quantile(gain, [0.025, 0.975])],
            "method": "paired percentile bootstrap",
        }
    return out


def _scores(targets: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    counts = confusion_counts(targets, pred, num_classes)
    return {"test_accuracy": accuracy_of(counts), "test_f1_macro": f1_macro_of(counts)}


def _write_outputs(
    staging: Path, metrics: dict[str, Any], probs: np.ndarray, test: Split, data: DataFiles
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = misclassified_rows(probs, test.targets, data.labels)
    inputs = [test.inputs[i] for i in table.column("row_id").to_pylist()]
    if data.input_kind == "image":  # an image reference, not its bytes
        inputs = [
            i if isinstance(i, str) else f"test row {r}"
            for i, r in zip(inputs, table.column("row_id").to_pylist(), strict=True)
        ]
    pq.write_table(
        table.append_column(data.input_column, pa.array([str(i) for i in inputs])),
        staging / MISCLASSIFIED_FILE,
    )
    import matplotlib.pyplot as plt

    for name, figure in figures(metrics).items():
        figure.savefig(staging / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(figure)


def _latency(model_dir: Path, test: Split) -> dict[str, Any]:
    """Per-example latency of the saved final model on this machine's device (PyTorch)."""
    from tlsearch.final.export import torch_latency_of

    final = load_final_model(model_dir)
    singles, serving = latency_batches(final, test.inputs, test.base_dir)
    return torch_latency_of(final, singles, serving, sorted(model_dir.rglob("*.safetensors")))  # adapter too


def summary_line(metrics: dict[str, Any], final_dir: Path) -> str:
    low, high = metrics["intervals"]["test_accuracy"]
    gain = metrics.get("transfer_gain")
    text = (
        f"[tlsearch] final model ({'retrained' if metrics['retrained'] else 'best checkpoint'}): test "
        f"accuracy {metrics['test_accuracy']:.4f} [{low:.4f}, {high:.4f}], "
        f"macro-F1 {metrics['test_f1_macro']:.4f}, "
        f"ECE {metrics['ece']:.4f}"
    )
    if gain:
        low, high = gain["interval"]
        text += (
            f"; transfer gain {gain['value']:+.4f} {gain['metric']} against {gain['against']} "
            f"[{low:+.4f}, {high:+.4f}]"
        )
    return text + f"\n[tlsearch] written: {final_dir}"


# --- export and predict -------------------------------------------------------------------------


def export_run(run_dir: Path, rows: int = 256) -> dict[str, Any]:
    """`tlsearch export`: final/model.onnx with its parity check on up to `rows` test rows."""
    from tlsearch.data.tables import stratified_subset
    from tlsearch.final.export import check_exportable, export_final
    from tlsearch.search.resolve import resolve_data

    run_dir = Path(run_dir).expanduser().resolve()
    spec = read_resolved_spec(run_dir)
    check_exportable(run_dir)  # refuse before reading any data
    files, _ = resolve_data(spec, run_dir, reuse=True)
    if files.test is None:
        raise UserInputError(f"{run_dir}'s data has no test split: the ONNX parity check runs on test rows")
    test = load_split(files, "test")
    true_labels = [files.labels[t] for t in test.targets]
    keep = stratified_subset(true_labels, max(1, rows))
    return export_final(
        run_dir, [test.inputs[i] for i in keep], [true_labels[i] for i in keep], test.base_dir
    )


def predict_run(
    run_dir: Path, output: Path, *, input_file: Path | None = None, split: str | None = None
) -> Path:
    """`tlsearch predict`: the final model's predictions for every row of `input_file` (Parquet, CSV or
    an image folder, read with the search's input column) or of the run's own `split`, written to
    `output` (.parquet or .csv): the input's row id, `prediction` and `prob_<class>` per class. With
    final/model.onnx, onnxruntime predicts; otherwise PyTorch."""
    import pyarrow as pa

    from tlsearch.data.tables import read_table
    from tlsearch.final.export import ONNX_FILE, batches, onnx_session
    from tlsearch.search.resolve import resolve_data

    run_dir = Path(run_dir).expanduser().resolve()
    output = Path(output).expanduser()
    if output.suffix.lower() not in (".parquet", ".csv"):
        raise UserInputError(f"--output must end in .parquet or .csv, but got {output}")
    if output.exists():
        raise UserInputError(f"{output} exists: give a new --output file")
    final_dir = run_dir / FINAL_DIR
    if not (final_dir / MODEL_DIR).is_dir():
        raise UserInputError(
            f"{final_dir / MODEL_DIR} does not exist: run `tlsearch finalize {run_dir}` first"
        )
    spec = read_resolved_spec(run_dir)
    files, _ = resolve_data(spec, run_dir, reuse=True)
    if split is not None:
        rows = load_split(files, split)
        inputs, base_dir = rows.inputs, rows.base_dir
    else:
        assert input_file is not None
        path = Path(input_file).expanduser().resolve()
        table = read_table(path, folder_columns=(files.input_column, files.label_column))
        if files.input_column not in table.column_names:
            raise UserInputError(
                f"{path} has no column `{files.input_column}` (the input column this model was trained on); "
                f"its columns: {', '.join(table.column_names)}"
            )
        inputs = table.column(files.input_column).to_pylist()
        base_dir = path if path.is_dir() else path.parent
    final = load_final_model(final_dir / MODEL_DIR)
    onnx = final_dir / ONNX_FILE
    if onnx.exists():
        session = onnx_session(onnx)

        def logits(batch: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(session.run(None, batch)[0])

    else:
        import torch

        graph = serving_graph(final)

        def logits(batch: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return graph(**{k: torch.from_numpy(v) for k, v in batch.items()}).float().numpy()

    scores = (
        np.concatenate([logits(b) for b in batches(final, inputs, base_dir)])
        if inputs
        else np.zeros((0, len(final.labels)))
    )
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    columns: dict[str, Any] = {
        "row_id": pa.array(np.arange(len(inputs)), pa.int64()),
        "prediction": pa.array([final.labels[i] for i in probs.argmax(axis=1)], pa.string()),
    }
    columns |= {f"prob_{label}": pa.array(probs[:, i], pa.float64()) for i, label in enumerate(final.labels)}
    _write_table(pa.table(columns), output)
    return output


def _write_table(table: Any, path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix.lower() == ".csv":
        pacsv.write_csv(table, tmp)
    else:
        pq.write_table(table, tmp)
    tmp.replace(path)


MODEL_CARD = "MODEL_CARD.md"


def write_model_card(run_dir: Path) -> Path:
    """final/MODEL_CARD.md from the run's files: data fingerprint, audit, configuration, test metrics
    with intervals, baselines, transfer gain, latency, export, intended use and limits."""
    import yaml

    from tlsearch.results.files import RESOLVED_SPEC

    final_dir = run_dir / FINAL_DIR
    resolved = yaml.safe_load((run_dir / RESOLVED_SPEC).read_text())
    m = json.loads((final_dir / METRICS_FILE).read_text())

    def read(name: str) -> dict[str, Any] | None:
        path = final_dir / name
        return json.loads(path.read_text()) if path.exists() else None

    latency, export = read(LATENCY_FILE), read("export.json")
    audit_path = run_dir / "audit.json"
    audit = json.loads(audit_path.read_text()) if audit_path.exists() else None
    ci = m["intervals"]
    model = resolved["model"]
    lines = [
        f"# Model card: `{resolved['name']}`",
        "",
        f"A {model['task']} model: `{model['name']}` ({model['source']}) adapted with `{m['strategy']}`, "
        f"{'retrained on the training and validation rows' if m['retrained'] else 'the best trial'}"
        f" ({m['epochs']} epochs), chosen by a tlsearch search on `{resolved['search']['metric']}`.",
        "",
        "## Data",
        "",
        *(
            f"- {split}: `{info['path']}` (sha256 `{info['sha256'][:16]}…`)"
            for split, info in resolved["resolved"]["data"].items()
        ),
        f"- classes: {', '.join(resolved['resolved']['labels'])}",
        f"- audit: {audit['status'] if audit else 'not run'}"
        + (
            f" (exact duplicates across splits {sum(audit['exact_duplicates_across'].values())}, "
            f"near duplicates {sum(audit['near_duplicates_across'].values())}, likely label errors "
            f"{(audit.get('label_issues') or {}).get('count', '-')})"
            if audit
            else ""
        ),
        "",
        "## Configuration",
        "",
        *(f"- `{k}`: {v}" for k, v in m["config"].items()),
        "",
        f"## Test metrics ({m['rows']} rows, evaluated once)",
        "",
        "| metric | value | 95% interval |",
        "|---|---|---|",
        *(
            f"| {label} | {m[key]:.4f} | {ci[key][0]:.4f} – {ci[key][1]:.4f} |"
            for label, key in (("accuracy", "test_accuracy"), ("macro-F1", "test_f1_macro"))
        ),
        f"| ROC-AUC | {m['test_roc_auc'] if m['test_roc_auc'] is not None else '-'} | |",
        f"| ECE (15 bins) | {m['ece']:.4f} | |",
        "",
        "Intervals: percentile bootstrap, 1,000 resamples of the test rows, fixed seed.",
        "",
        "## Baselines on the same test rows",
        "",
        *(
            f"- {name}: accuracy {b['test_accuracy']:.4f}, macro-F1 {b['test_f1_macro']:.4f}"
            for name, b in m["baselines"].items()
        ),
    ]
    gain = m.get("transfer_gain")
    if gain:
        lines.append(
            f"- transfer gain: {gain['value']:+.4f} {gain['metric']} against {gain['against']} "
            f"(95% interval {gain['interval'][0]:+.4f} to {gain['interval'][1]:+.4f}, paired bootstrap)"
        )
    lines += ["", "## Serving", ""]
    for name, report in (
        ("PyTorch", latency),
        *((("ONNX Runtime", export["latency"]["onnxruntime"]),) if export else ()),
    ):
        if report:
            lines.append(
                f"- {name} on {report.get('device', 'cpu')}: {report['batch1_p50_ms']:.2f} ms per example at "
                f"batch 1 (p95 {report['batch1_p95_ms']:.2f}), {report['serving_p50_ms']:.2f} ms at batch "
                f"{report['serving_batch']}; {report['parameters']:,} parameters"
            )
    if export:
        lines.append(
            f"- `model.onnx` (opset {export['opset']}): max |logit difference| to PyTorch "
            f"{export['max_abs_diff']:.1e}, top-class agreement {export['argmax_agreement']}"
        )
    lines += [
        "",
        "## Intended use and limits",
        "",
        f"- Classifies {'texts' if model['task'] == 'text-classification' else 'images'} into the classes "
        "above; inputs prepared as in `model/` (its tokenizer or image preprocessing).",
        "- Measured on one test split drawn like the training data: it says nothing about data from "
        "elsewhere, later, or of other kinds; check the slices in metrics.json and the misclassified rows "
        "before relying on it for a group.",
        "- Probabilities are as calibrated as the ECE above says; the audit's findings apply to the "
        "training data.",
        "",
    ]
    path = final_dir / MODEL_CARD
    tmp = final_dir / f".{MODEL_CARD}.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
