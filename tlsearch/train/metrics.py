"""Epoch metrics over the full validation set: loss, accuracy, macro-F1, ROC-AUC (binary / one-vs-rest)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import f1_score

    logits = logits.float()
    loss = F.cross_entropy(logits, targets).item()
    probs = logits.softmax(dim=1).numpy()
    y = targets.numpy()
    pred = probs.argmax(axis=1)
    accuracy = float((pred == y).mean())
    f1 = float(f1_score(y, pred, labels=np.arange(num_classes), average="macro", zero_division=0))
    return {
        "val_loss": loss,
        "val_accuracy": accuracy,
        "val_f1_macro": f1,
        "val_roc_auc": roc_auc(y, probs, num_classes),
    }


def roc_auc(y: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """Binary: AUC of the positive class. Multiclass: macro one-vs-rest AUC over the classes that
    appear in the evaluated rows with both positives and negatives (NaN when none does). The final
    model's test ROC-AUC (tlsearch.final.evaluation) is this same number."""
    from sklearn.metrics import roc_auc_score

    if num_classes == 2:
        return float(roc_auc_score(y, probs[:, 1])) if len(np.unique(y)) == 2 else math.nan
    scores = [roc_auc_score(y == c, probs[:, c]) for c in range(num_classes) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(scores)) if scores else math.nan
