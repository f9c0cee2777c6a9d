"""The final model's one evaluation on the test split: what `final/metrics.json` holds, from predicted
probabilities alone (docs/final.md says what each number means).

- `test_accuracy`, `test_f1_macro` (over every class, a class without test rows scoring 0, as the
  search's `val_f1_macro`), `test_roc_auc` (tlsearch.train.metrics.roc_auc: the search's `val_roc_auc`);
- `per_class` precision / recall / F1 / support, `confusion_matrix` (rows true, columns predicted);
- `ece`: expected calibration error over 15 equal-width bins of the top-class probability, with the
  reliability diagram's data (`reliability`);
- `intervals`: 95% percentile bootstrap intervals of accuracy and macro-F1 (1,000 resamples of the test
  rows, fixed seed), vectorised: every resample's confusion counts come from one `bincount`;
- `slices`: accuracy and macro-F1 per group of each slice column (`length_quartiles` makes the text
  length one);
- `confused_pairs`: the off-diagonal cells of the confusion matrix, largest first.

`misclassified_table` lists the wrong predictions, highest loss first; `figures` draws the reliability
diagram and the confusion matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tlsearch.train.metrics import roc_auc

BINS = 15
RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
# Row indices drawn per block of resamples: bounds the bootstrap's memory (int64 indices) on large test
# splits. Blocks draw from one generator in turn, so the resamples depend only on the seed and n.
_INDICES_PER_BLOCK = 1 << 24
MISSING_GROUP = "(missing)"


def evaluate(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    *,
    slices: Mapping[str, Sequence[Any]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    bins: int = BINS,
    top_pairs: int = 10,
) -> dict[str, Any]:
    """Everything `final/metrics.json` holds about the test rows (JSON-able).

    probs: (n, classes) predicted probabilities (rows sum to 1); targets: (n,) class indices into
    `labels`; slices: slice name -> one group value per row (None counts as its own group)."""
    probs, targets = _checked(probs, targets, labels)
    num_classes = len(labels)
    pred = probs.argmax(axis=1)
    counts = confusion_counts(targets, pred, num_classes)
    calibration = reliability(probs, targets, bins)
    return {
        "rows": len(targets),
        "test_accuracy": accuracy_of(counts),
        "test_f1_macro": f1_macro_of(counts),
        # JSON has no NaN: undefined (one class in the test rows) is null.
        "test_roc_auc": None if math.isnan(auc := roc_auc(targets, probs, num_classes)) else auc,
        "per_class": per_class(counts, labels),
        "confusion_matrix": {"labels": list(labels), "matrix": counts.tolist()},
        "ece": calibration["ece"],
        "reliability": calibration["bins"],
        "intervals": bootstrap_intervals(
            targets, pred, num_classes, resamples=resamples, seed=seed, confidence=confidence
        ),
        "slices": {
            name: slice_metrics(targets, pred, num_classes, groups) for name, groups in (slices or {}).items()
        },
        "confused_pairs": confused_pairs(counts, labels, top=top_pairs),
    }


def _checked(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(
            f"probs has shape {probs.shape}; expected (rows, {len(labels)}) for {len(labels)} labels"
        )
    if targets.shape != (probs.shape[0],):
        raise ValueError(f"targets has shape {targets.shape}; expected ({probs.shape[0]},)")
    if len(targets) == 0:
        raise ValueError("no rows to evaluate")
    if targets.min() < 0 or targets.max() >= len(labels):
        raise ValueError(f"targets must be class indices in [0, {len(labels)})")
    return probs, targets


# --- counts and the metrics made of them ------------------------------------------------------


def confusion_counts(targets: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted class."""
    codes = targets * num_classes + pred
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_of(counts: np.ndarray) -> float:
    return float(_accuracy(counts))


def f1_macro_of(counts: np.ndarray) -> float:
    """Macro-F1 over every class (0 for a class neither present nor predicted: scikit-learn's
    zero_division=0)."""
    return float(_f1_macro(counts))


def _accuracy(counts: np.ndarray) -> np.ndarray:
    """From confusion counts with optional leading batch axes (one matrix per resample)."""
    return np.trace(counts, axis1=-2, axis2=-1) / counts.sum(axis=(-2, -1))


def _f1_macro(counts: np.ndarray) -> np.ndarray:
    return _f1(counts).mean(axis=-1)


def _f1(counts: np.ndarray) -> np.ndarray:
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    # 2tp / (2tp + fp + fn) = 2tp / (support + predicted)
    denominator = counts.sum(axis=-1) + counts.sum(axis=-2)
    return np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)


def per_class(counts: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support per class name (0 where undefined, as zero_division=0)."""
    tp = np.diagonal(counts)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(tp.shape), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(tp.shape), where=support > 0)
    f1 = _f1(counts)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def confused_pairs(counts: np.ndarray, labels: Sequence[str], top: int = 10) -> list[dict[str, Any]]:
    """The `top` most frequent (true, predicted) mistakes, largest count first (ties in label order);
    `share_of_true` is the count over the true class's support."""
    off = counts.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.nonzero(off)
    order = np.lexsort((pred_idx, true_idx, -off[true_idx, pred_idx]))[:top]
    support = counts.sum(axis=1)
    return [
        {
            "true": labels[t],
            "predicted": labels[p],
            "count": int(off[t, p]),
            "share_of_true": float(off[t, p] / support[t]),
        }
        for t, p in zip(true_idx[order], pred_idx[order], strict=True)
    ]


# --- calibration -----------------------------------------------------------------------------


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Expected calibration error and its reliability diagram: the top-class probability (confidence)
    binned into `bins` equal-width bins ((k/bins, (k+1)/bins], the first closed at 0);
    ECE = sum over bins of (rows in bin / rows) * |accuracy in bin - mean confidence in bin|."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)
    filled = count > 0
    mean_confidence = np.divide(confidence_sum, count, out=np.zeros(bins), where=filled)
    accuracy = np.divide(correct_sum, count, out=np.zeros(bins), where=filled)
    ece = float(np.sum(count / len(targets) * np.abs(accuracy - mean_confidence)))
    return {
        "ece": ece,
        "bins": [
            {
                "low": k / bins,
                "high": (k + 1) / bins,
                "count": int(count[k]),
                "confidence": float(mean_confidence[k]) if filled[k] else None,
                "accuracy": float(accuracy[k]) if filled[k] else None,
            }
            for k in range(bins)
        ],
    }


# --- bootstrap intervals ---------------------------------------------------------------------


def bootstrap_intervals(
    targets: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of test accuracy and macro-F1: `resamples` resamples of the test
    rows with replacement (numpy's default_rng(seed), each resample n row indices, as
    scipy.stats.bootstrap draws them), each one's statistic from its confusion counts; the interval is
    the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the resampled statistics."""
    distribution = bootstrap_distribution(targets, pred, num_classes, resamples=resamples, seed=seed)
    alpha = (1 - confidence) / 2
    out: dict[str, Any] = {
        metric: [float(v) for v in np.quantile(values, [alpha, 1 - alpha])]
        for metric, values in distribution.items()
    }
    return out | {"method": "percentile", "confidence": confidence, "resamples": resamples, "seed": seed}


def bootstrap_distribution(
    targets: np.ndarray, pred: np.ndarray, num_classes: int, *, resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, np.ndarray]:
    """Each resample's test accuracy and macro-F1 (arrays of `resamples` values)."""
    targets, pred = np.asarray(targets, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    n, cells = len(targets), num_classes * num_classes
    codes = targets * num_classes + pred
    rng = np.random.default_rng(seed)
    per_block = max(1, _INDICES_PER_BLOCK // n)
    blocks = []
    for start in range(0, resamples, per_block):
        size = min(per_block, resamples - start)
        rows = rng.integers(0, n, size=(size, n))
        # One bincount over (resample, cell) codes: every resample's confusion matrix at once.
        offsets = np.arange(size)[:, None] * cells
        blocks.append(
            np.bincount((offsets + codes[rows]).ravel(), minlength=size * cells).reshape(
                size, num_classes, num_classes
            )
        )
    counts = np.concatenate(blocks) if blocks else np.zeros((0, num_classes, num_classes), dtype=np.int64)
    return {"test_accuracy": _accuracy(counts), "test_f1_macro": _f1_macro(counts)}


# --- slices ----------------------------------------------------------------------------------


def slice_metrics(
    targets: np.ndarray, pred: np.ndarray, num_classes: int, groups: Sequence[Any]
) -> dict[str, dict[str, Any]]:
    """Per group (by its string form; None as "(missing)"): rows, accuracy and macro-F1. Within a
    group, macro-F1 averages over the classes present there (true or predicted): a group that holds
    one class is not marked down for the classes it cannot hold."""
    targets, pred = np.asarray(targets), np.asarray(pred)
    if len(groups) != len(targets):
        raise ValueError(f"a slice has {len(groups)} values for {len(targets)} rows")
    names = np.asarray([MISSING_GROUP if g is None else str(g) for g in groups], dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names), key=_natural):
        mask = names == name
        counts = confusion_counts(targets[mask], pred[mask], num_classes)
        present = (counts.sum(axis=0) + counts.sum(axis=1)) > 0
        out[name] = {
            "rows": int(mask.sum()),
            "test_accuracy": accuracy_of(counts),
            "test_f1_macro": float(_f1(counts)[present].mean()),
        }
    return out


def _natural(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


def length_quartiles(texts: Sequence[str | None]) -> list[str]:
    """Each text's length quartile as a slice group, by words (whitespace-separated): "Q1 (3-7 words)"
    ... "Q4 (...)", the range being the word counts that quartile actually holds. Texts at a quartile
    edge go to the lower quartile; ties across an edge can leave a quartile empty (it then has no group)."""
    lengths = np.asarray([len(str(t).split()) if t is not None else 0 for t in texts])
    if len(lengths) == 0:
        return []
    edges = np.quantile(lengths, [0.25, 0.5, 0.75])
    quartile = np.searchsorted(edges, lengths, side="left")
    names = {}
    for q in np.unique(quartile):
        held = lengths[quartile == q]
        names[int(q)] = f"Q{q + 1} ({held.min()}-{held.max()} words)"
    return [names[int(q)] for q in quartile]


# --- error analysis --------------------------------------------------------------------------


def misclassified_table(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    row_ids: Sequence[int] | None = None,
) -> pa.Table:
    """The misclassified rows, highest loss first: row_id (0-based position in the test rows unless
    given), true, predicted, probability (of the predicted class), loss (-log p(true)). The caller adds
    the input column (text or image reference) by row_id."""
    probs, targets = _checked(probs, targets, labels)
    ids = np.arange(len(targets)) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    pred = probs.argmax(axis=1)
    wrong = np.nonzero(pred != targets)[0]
    p_true = probs[wrong, targets[wrong]]
    # The smallest positive double bounds the loss (about 745) where the true class got probability 0.
    loss = -np.log(np.maximum(p_true, np.finfo(np.float64).tiny))
    by_loss = np.argsort(-loss, kind="stable")
    order = wrong[by_loss]
    names = np.asarray(labels, dtype=object)
    return pa.table(
        {
            "row_id": pa.array(ids[order], type=pa.int64()),
            "true": pa.array(names[targets[order]].tolist(), type=pa.string()),
            "predicted": pa.array(names[pred[order]].tolist(), type=pa.string()),
            "probability": pa.array(probs[order, pred[order]], type=pa.float64()),
            "loss": pa.array(loss[by_loss], type=pa.float64()),
        }
    )


# --- figures ---------------------------------------------------------------------------------


def figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The reliability diagram and the confusion matrix of `evaluate`'s output, as matplotlib figures
    (the caller saves and closes them, as tlsearch.results.report does its own)."""
    from tlsearch.results.report import _pyplot

    plt = _pyplot()
    out: dict[str, Any] = {}

    fig, ax = plt.subplots(figsize=(5, 5))
    filled = [b for b in metrics["reliability"] if b["count"]]
    width = 1 / len(metrics["reliability"])
    ax.bar(
        [b["low"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="#1f77b4",
        color="#1f77b4",
        alpha=0.6,
        label="accuracy in bin",
    )
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="black", ms=3)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top-class probability)",
        ylabel="accuracy",
        title=f"reliability (ECE {metrics['ece']:.3f})",
    )
    ax.legend(fontsize=8, loc="upper left")
    out["reliability"] = fig

    labels = metrics["confusion_matrix"]["labels"]
    matrix = np.asarray(metrics["confusion_matrix"]["matrix"])
    side = min(12.0, 3 + 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ax.grid(False)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    if len(labels) <= 30:  # counts in the cells while they stay legible
        high = matrix.max() or 1
        for (i, j), value in np.ndenumerate(matrix):
            color = "white" if value > high / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test split)")
    fig.tight_layout()
    out["confusion_matrix"] = fig
    return out
