"""The final test evaluation against scikit-learn and scipy on the same predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from tlsearch.final.evaluation import (
    bootstrap_distribution,
    evaluate,
    figures,
    length_quartiles,
    misclassified_table,
    reliability,
)

LABELS = ["cat", "dog", "fox", "owl"]


def predictions(n: int, classes: int, seed: int, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that favour the true class (a model better than chance, not perfect)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), targets] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, targets


def test_every_metric_matches_sklearn() -> None:
    probs, y = predictions(300, 4, seed=1)
    pred = probs.argmax(1)
    m = evaluate(probs, y, LABELS, resamples=50)
    assert m["rows"] == 300
    assert m["test_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["test_f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    expected_auc = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(4)])
    assert m["test_roc_auc"] == pytest.approx(expected_auc)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(4))
    for i, label in enumerate(LABELS):
        assert m["per_class"][label] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
        )
    assert m["confusion_matrix"] == {"labels": LABELS, "matrix": confusion_matrix(y, pred).tolist()}


def test_a_class_absent_from_the_test_rows() -> None:
    """Class 3 has no test rows but is predicted once: support 0, precision 0, and macro-F1 averages
    over all four classes (the absent one scoring 0), as the search's val_f1_macro does."""
    probs, y = predictions(120, 3, seed=2)
    probs = np.hstack([probs, np.zeros((120, 1))])
    probs[0] = [0.1, 0.1, 0.1, 0.7]
    pred = probs.argmax(1)
    m = evaluate(probs, y, LABELS, resamples=20)
    assert m["per_class"]["owl"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["test_f1_macro"] == pytest.approx(
        f1_score(y, pred, labels=range(4), average="macro", zero_division=0)
    )
    precision, recall, _, _ = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    assert [m["per_class"][c]["precision"] for c in LABELS] == pytest.approx(precision)
    assert [m["per_class"][c]["recall"] for c in LABELS] == pytest.approx(recall)
    # ROC-AUC over the classes present with positives and negatives (owl has no positives)
    expected_auc = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert m["test_roc_auc"] == pytest.approx(expected_auc)
    assert confusion_matrix(y, pred, labels=range(4)).tolist() == m["confusion_matrix"]["matrix"]


def test_binary_roc_auc_is_the_positive_class_and_undefined_with_one_class() -> None:
    probs, y = predictions(200, 2, seed=3)
    m = evaluate(probs, y, ["neg", "pos"], resamples=20)
    assert m["test_roc_auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    one_class = evaluate(probs[y == 1], y[y == 1], ["neg", "pos"], resamples=20)
    assert one_class["test_roc_auc"] is None  # NaN, written as JSON null


def test_ece_by_hand() -> None:
    """Five rows, 15 bins of width 1/15: confidences 0.9, 0.9 (bin 13), 0.6 (bin 8: its upper edge is
    9/15 = 0.6), 0.95 (bin 14), 0.5 (bin 7)."""
    probs = np.array(
        [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.05, 0.95], [0.5, 0.5]]
    )  # top classes: 0, 0, 1, 1, 0 (argmax takes the first on a tie)
    y = np.array([0, 1, 1, 1, 1])  # correct: yes, no, yes, yes, no
    # bin 13 (0.8667, 0.9333]: rows 0, 1: accuracy 0.5, confidence 0.9 -> 2/5 * 0.4
    # bin 8 (0.5333, 0.6]: row 2: accuracy 1, confidence 0.6 -> 1/5 * 0.4
    # bin 14 (0.9333, 1]: row 3: accuracy 1, confidence 0.95 -> 1/5 * 0.05
    # bin 7 (0.4667, 0.5333]: row 4: accuracy 0, confidence 0.5 -> 1/5 * 0.5
    expected = 2 / 5 * 0.4 + 1 / 5 * 0.4 + 1 / 5 * 0.05 + 1 / 5 * 0.5
    result = reliability(probs, y, bins=15)
    assert result["ece"] == pytest.approx(expected)
    by_bin = {k: b for k, b in enumerate(result["bins"]) if b["count"]}
    assert sorted(by_bin) == [7, 8, 13, 14]
    assert by_bin[13] == pytest.approx(
        {"low": 13 / 15, "high": 14 / 15, "count": 2, "confidence": 0.9, "accuracy": 0.5}
    )
    assert result["bins"][0]["confidence"] is None and result["bins"][0]["count"] == 0
    assert evaluate(probs, y, ["a", "b"], resamples=10)["ece"] == pytest.approx(expected)


def test_a_confidence_on_a_bin_edge_goes_to_the_lower_bin() -> None:
    probs = np.array([[2 / 3, 1 / 3]])  # 2/3 = 10/15: the upper edge of bin 9
    assert reliability(probs, np.array([0]))["bins"][9]["count"] == 1


def test_bootstrap_equals_scipy_on_the_same_resamples() -> None:
    """scipy.stats.bootstrap draws its resamples as `rng.integers(0, n, (resamples, n))`; given the same
    seed it draws exactly ours (the rows fit one block), so the percentile intervals agree to rounding."""
    probs, y = predictions(400, 4, seed=4)
    pred = probs.argmax(1)
    m = evaluate(probs, y, LABELS, resamples=1000, seed=7)
    ours = m["intervals"]
    assert (ours["method"], ours["resamples"], ours["seed"]) == ("percentile", 1000, 7)

    def macro_f1(true: np.ndarray, predicted: np.ndarray) -> float:
        return f1_score(true, predicted, labels=range(4), average="macro", zero_division=0)

    accuracy = scipy.stats.bootstrap(
        ((pred == y).astype(float),),
        np.mean,
        n_resamples=1000,
        method="percentile",
        rng=np.random.default_rng(7),
    )
    f1 = scipy.stats.bootstrap(
        (y, pred),
        macro_f1,
        paired=True,
        vectorized=False,
        n_resamples=1000,
        method="percentile",
        rng=np.random.default_rng(7),
    )
    for name, result in (("test_accuracy", accuracy), ("test_f1_macro", f1)):
        interval = result.confidence_interval
        assert ours[name] == pytest.approx([interval.low, interval.high], abs=1e-12)
        assert ours[name][0] < m[name] < ours[name][1]


def test_bootstrap_agrees_with_scipy_on_independent_resamples() -> None:
    """Different seeds: both intervals estimate the same percentiles from 1,000 resamples each. The
    Monte Carlo error of a 2.5% percentile from B = 1,000 draws is about sqrt(.025 * .975 / B) / phi(1.96)
    = 0.085 bootstrap standard errors (normal approximation), so the two ends differ by about 0.12 of
    one with standard deviation; 0.5 standard errors is over 4 of those, plus one row's 1/n of the
    accuracy's discreteness."""
    probs, y = predictions(500, 3, seed=5)
    pred = probs.argmax(1)
    ours = evaluate(probs, y, LABELS[:3], resamples=1000, seed=0)["intervals"]["test_accuracy"]
    theirs = scipy.stats.bootstrap(
        ((pred == y).astype(float),), np.mean, n_resamples=1000, method="percentile", rng=12345
    )
    tolerance = 0.5 * theirs.standard_error + 1 / len(y)
    interval = theirs.confidence_interval
    assert ours == pytest.approx([interval.low, interval.high], abs=tolerance)
    assert abs(ours[0] - interval.low) > 0 or abs(ours[1] - interval.high) > 0  # independent draws


def test_bootstrap_is_seeded_and_each_resample_matches_sklearn() -> None:
    probs, y = predictions(60, 3, seed=6)
    pred = probs.argmax(1)
    a = bootstrap_distribution(y, pred, 3, resamples=30, seed=3)
    b = bootstrap_distribution(y, pred, 3, resamples=30, seed=3)
    np.testing.assert_array_equal(a["test_f1_macro"], b["test_f1_macro"])
    rows = np.random.default_rng(3).integers(0, 60, size=(30, 60))
    expected = [f1_score(y[r], pred[r], labels=range(3), average="macro", zero_division=0) for r in rows]
    np.testing.assert_allclose(a["test_f1_macro"], expected)
    np.testing.assert_allclose(a["test_accuracy"], [(y[r] == pred[r]).mean() for r in rows])


def test_bootstrap_of_10k_rows_in_blocks() -> None:
    """1,000 resamples of 10k rows: 10M indices, drawn and counted in blocks (no per-resample loop)."""
    from tlsearch.final import evaluation

    probs, y = predictions(10_000, 5, seed=7)
    pred = probs.argmax(1)
    whole = bootstrap_distribution(y, pred, 5, resamples=1000, seed=0)
    assert whole["test_accuracy"].shape == (1000,)
    low, high = np.quantile(whole["test_accuracy"], [0.025, 0.975])
    accuracy = (pred == y).mean()
    spread = math.sqrt(accuracy * (1 - accuracy) / 10_000)  # the binomial standard error
    assert low < accuracy < high and (high - low) == pytest.approx(2 * 1.96 * spread, rel=0.2)
    # Blocks draw from one generator in turn: the same resamples whatever the block size.
    original = evaluation._INDICES_PER_BLOCK
    try:
        evaluation._INDICES_PER_BLOCK = 10_000 * 7  # blocks of 7 resamples
        blocked = bootstrap_distribution(y, pred, 5, resamples=1000, seed=0)
    finally:
        evaluation._INDICES_PER_BLOCK = original
    np.testing.assert_array_equal(blocked["test_f1_macro"], whole["test_f1_macro"])


def test_slices_and_length_quartiles() -> None:
    probs, y = predictions(80, 3, seed=8)
    pred = probs.argmax(1)
    region = ["north" if i % 4 else None for i in range(80)]
    texts = [" ".join(["w"] * (1 + i % 8)) for i in range(80)]  # lengths 1..8, ten of each
    quartiles = length_quartiles(texts)
    assert sorted(set(quartiles)) == [
        "Q1 (1-2 words)",
        "Q2 (3-4 words)",
        "Q3 (5-6 words)",
        "Q4 (7-8 words)",
    ]
    m = evaluate(probs, y, LABELS[:3], slices={"region": region, "length": quartiles}, resamples=10)
    north = np.array([g == "north" for g in region])
    assert m["slices"]["region"]["north"]["rows"] == 60
    assert m["slices"]["region"]["(missing)"]["rows"] == 20
    assert m["slices"]["region"]["north"]["test_accuracy"] == pytest.approx(
        accuracy_score(y[north], pred[north])
    )
    # macro-F1 within a group over the classes it holds: scikit-learn's default label set
    assert m["slices"]["region"]["north"]["test_f1_macro"] == pytest.approx(
        f1_score(y[north], pred[north], average="macro")
    )
    assert sum(g["rows"] for g in m["slices"]["length"].values()) == 80


def test_one_slice_group_is_the_whole_test_split() -> None:
    probs, y = predictions(50, 3, seed=9)
    m = evaluate(probs, y, LABELS[:3], slices={"source": ["web"] * 50}, resamples=10)
    assert m["slices"]["source"] == {
        "web": {
            "rows": 50,
            "test_accuracy": pytest.approx(m["test_accuracy"]),
            "test_f1_macro": pytest.approx(f1_score(y, probs.argmax(1), average="macro")),
        }
    }
    assert length_quartiles(["same length"] * 6) == ["Q1 (2-2 words)"] * 6


def test_confused_pairs_and_misclassified_table() -> None:
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # true 1 -> predicted 0, p(true) 0.2
            [0.6, 0.3, 0.1],  # true 1 -> 0, p(true) 0.3
            [0.1, 0.1, 0.8],  # true 0 -> 2, p(true) 0.1
            [0.2, 0.7, 0.1],  # true 1, right
        ]
    )
    y = np.array([1, 1, 0, 1])
    m = evaluate(probs, y, ["a", "b", "c"], resamples=10)
    assert m["confused_pairs"] == [
        {"true": "b", "predicted": "a", "count": 2, "share_of_true": pytest.approx(2 / 3)},
        {"true": "a", "predicted": "c", "count": 1, "share_of_true": 1.0},
    ]
    table = misclassified_table(probs, y, ["a", "b", "c"], row_ids=[10, 11, 12, 13])
    assert table.column_names == ["row_id", "true", "predicted", "probability", "loss"]
    assert table.to_pydict() == {
        "row_id": [12, 10, 11],
        "true": ["a", "b", "b"],
        "predicted": ["c", "a", "a"],
        "probability": [0.8, 0.7, 0.6],
        "loss": pytest.approx([-math.log(0.1), -math.log(0.2), -math.log(0.3)]),
    }


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="expected"):
        evaluate(np.ones((3, 2)) / 2, np.array([0, 1, 0]), LABELS)
    with pytest.raises(ValueError, match="class indices"):
        evaluate(np.ones((2, 2)) / 2, np.array([0, 2]), ["a", "b"])


def test_figures_draw_the_reliability_bins_and_the_matrix() -> None:
    probs, y = predictions(200, 4, seed=10)
    m = evaluate(probs, y, LABELS, resamples=10)
    drawn = figures(m)
    assert set(drawn) == {"reliability", "confusion_matrix"}
    bars = drawn["reliability"].axes[0].patches
    filled = [b for b in m["reliability"] if b["count"]]
    assert [bar.get_height() for bar in bars] == pytest.approx([b["accuracy"] for b in filled])
    image = drawn["confusion_matrix"].axes[0].images[0].get_array()
    np.testing.assert_array_equal(image, m["confusion_matrix"]["matrix"])
    import matplotlib.pyplot as plt

    for fig in drawn.values():
        plt.close(fig)
