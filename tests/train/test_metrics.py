"""Validation metrics against scikit-learn on the same predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from tlsearch.train.metrics import classification_metrics


def test_multiclass_matches_sklearn() -> None:
    torch.manual_seed(0)
    logits = torch.randn(50, 4)
    targets = torch.randint(0, 4, (50,))
    m = classification_metrics(logits, targets, 4)
    probs = logits.softmax(1).numpy()
    assert m["val_accuracy"] == pytest.approx((probs.argmax(1) == targets.numpy()).mean())
    assert m["val_f1_macro"] == pytest.approx(f1_score(targets, probs.argmax(1), average="macro"))
    assert m["val_loss"] == pytest.approx(log_loss(targets, probs, labels=range(4)), rel=1e-5)
    assert m["val_roc_auc"] == pytest.approx(
        roc_auc_score(targets, probs, multi_class="ovr", average="macro")
    )


def test_binary_auc_uses_the_positive_class() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5], [0.2, 0.4]])
    targets = torch.tensor([0, 1, 0, 1])
    m = classification_metrics(logits, targets, 2)
    assert m["val_roc_auc"] == pytest.approx(roc_auc_score(targets, logits.softmax(1)[:, 1]))
    assert m["val_accuracy"] == 1.0


def test_auc_over_present_classes_and_nan_when_undefined() -> None:
    logits = torch.randn(6, 3)
    targets = torch.tensor([0, 0, 1, 1, 0, 1])  # class 2 absent from the validation set
    m = classification_metrics(logits, targets, 3)
    probs = logits.softmax(1).numpy()
    expected = np.mean([roc_auc_score(targets.numpy() == c, probs[:, c]) for c in (0, 1)])
    assert m["val_roc_auc"] == pytest.approx(expected)
    # macro-F1 counts the absent class as 0, over all classes the model predicts into
    assert 0.0 <= m["val_f1_macro"] <= 1.0
    assert math.isnan(classification_metrics(torch.randn(3, 2), torch.tensor([1, 1, 1]), 2)["val_roc_auc"])
