"""The training loss of `strategies.common` (class weighting, label smoothing, focal loss) against
losses computed by hand, and a trial that trains with it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tlsearch.testing import text_rows, text_spec, trial_config, trial_inputs, write_parquet
from tlsearch.train.loop import setup_training, train_epoch
from tlsearch.train.losses import TrainingLoss, balanced_class_weights
from tlsearch.train.session import TuneSession

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, 1.0, 3.0]])
TARGETS = torch.tensor([0, 2, 1, 0])


def log_softmax_rows() -> list[list[float]]:
    rows = []
    for logits in LOGITS.tolist():
        top = max(logits)
        norm = top + math.log(sum(math.exp(v - top) for v in logits))
        rows.append([v - norm for v in logits])
    return rows


def test_balanced_weights_are_rows_over_classes_times_class_rows() -> None:
    targets = np.array([0, 0, 0, 1, 2, 2])  # 6 rows, 3 classes: 6 / (3 x count)
    assert balanced_class_weights(targets, 3).tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    # A class training never sees: 2 classes present, and the absent one keeps weight 1.
    assert balanced_class_weights(np.array([0, 0, 2]), 3).tolist() == pytest.approx([0.75, 1.0, 1.5])


def test_weighted_smoothed_cross_entropy_by_hand() -> None:
    weights, eps = [0.5, 2.0, 1.0], 0.1
    loss = TrainingLoss(torch.tensor(weights), label_smoothing=eps)(LOGITS, TARGETS)
    # PyTorch's rule: smoothed target (1 - eps) on the true class + eps / K on each, every class's
    # term weighted by its own weight, averaged over the rows' true-class weights.
    total, norm = 0.0, 0.0
    for logp, y in zip(log_softmax_rows(), TARGETS.tolist(), strict=True):
        total += -(1 - eps) * weights[y] * logp[y] - eps / 3 * sum(
            w * lp for w, lp in zip(weights, logp, strict=True)
        )
        norm += weights[y]
    assert loss.item() == pytest.approx(total / norm, rel=1e-6)
    plain = TrainingLoss()(LOGITS, TARGETS).item()
    expected = -sum(lp[y] for lp, y in zip(log_softmax_rows(), TARGETS.tolist(), strict=True)) / 4
    assert plain == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_focal_loss_by_hand(weighted: bool) -> None:
    gamma, weights = 2.0, [0.5, 2.0, 1.0]
    loss = TrainingLoss(torch.tensor(weights) if weighted else None, focal_gamma=gamma)(LOGITS, TARGETS)
    total, norm = 0.0, 0.0
    for logp, y in zip(log_softmax_rows(), TARGETS.tolist(), strict=True):
        w = weights[y] if weighted else 1.0
        total += w * (1 - math.exp(logp[y])) ** gamma * -logp[y]
        norm += w
    assert loss.item() == pytest.approx(total / norm, rel=1e-6)
    # gamma 0 is cross-entropy
    assert TrainingLoss(focal_gamma=0.0)(LOGITS, TARGETS).item() == pytest.approx(
        TrainingLoss()(LOGITS, TARGETS).item(), rel=1e-6
    )


def test_a_trial_trains_with_balanced_focal_loss(tiny_bert: Path, tmp_path: Path) -> None:
    # 3 classes, 12 / 6 / 6 training rows.
    rows = text_rows(36, seed=1)
    rows = [r for i, r in enumerate(rows) if i % 3 == 0 or i < 18]
    data = {
        "train": write_parquet(rows, tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(12, seed=2), tmp_path / "validation.parquet"),
    }
    labels = sorted({r["label"] for r in rows})
    counts = np.array([sum(r["label"] == label for r in rows) for label in labels])
    config = trial_config(
        "full",
        head_lr=1e-2,
        backbone_lr=1e-3,
        layer_decay=0.8,
        weight_decay=0.0,
        warmup_fraction=0.0,
        batch_size=8,
        class_weighting="balanced",
        loss="focal",
        focal_gamma=1.5,
    )
    inputs = trial_inputs(text_spec(tiny_bert, data, tmp_path / "runs"), config, tmp_path)
    training = setup_training(inputs, TuneSession(use_gpu=False))
    assert training.loss.focal_gamma == 1.5 and training.loss.class_weights is not None
    expected = len(rows) / (3 * counts)
    assert training.loss.class_weights.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    loss_sum, seen = train_epoch(training, 0)
    assert seen == len(rows) and torch.isfinite(loss_sum)


def test_the_defaults_are_plain_cross_entropy() -> None:
    config = trial_config(
        "linear_probe", head_lr=1e-3, weight_decay=0.0, warmup_fraction=0.0, batch_size=8
    )  # written as a trial config from before these knobs existed
    loss = TrainingLoss.of(config.common, np.array([0, 0, 1]), 2, torch.device("cpu"))
    assert loss == TrainingLoss()
