"""The training loss a trial's common knobs ask for: cross-entropy or focal loss (Lin et al., 2017),
with balanced class weights and label smoothing where asked. Only training uses it: validation and
test metrics stay plain cross-entropy, so trials with different losses compare on one scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tlsearch.spec.strategy import CommonKnobs


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """scikit-learn's `balanced` weights, rows / (classes present × the class's rows), per class index;
    a class training never sees gets 1 (no training row carries it, so it never counts)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(targets)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=targets)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True)
class TrainingLoss:
    """Mean loss over a batch of logits (float32) and class-index targets."""

    class_weights: torch.Tensor | None = None  # on the training device
    label_smoothing: float = 0.0
    focal_gamma: float | None = None  # None: cross-entropy

    @classmethod
    def of(
        cls, common: CommonKnobs, targets: np.ndarray, num_classes: int, device: torch.device
    ) -> TrainingLoss:
        """`targets`: every training row's class (the whole split, as each rank's sampler sees it)."""
        weights = None
        if common.class_weighting == "balanced":
            weights = balanced_class_weights(targets, num_classes).to(device)
        gamma = common.focal_gamma if common.loss == "focal" else None
        return cls(weights, common.label_smoothing, gamma)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`targets`: class indices, or soft targets per class (mixup's: its label smoothing is in
        them already, and the spec refuses class weights and focal loss with it)."""
        if targets.is_floating_point():
            return F.cross_entropy(logits, targets)
        if self.focal_gamma is None:
            return F.cross_entropy(
                logits, targets, weight=self.class_weights, label_smoothing=self.label_smoothing
            )
        # Each row's (weighted, smoothed) cross-entropy, scaled down by how sure the model already
        # is of the true class; averaged as PyTorch averages a weighted cross-entropy (by the
        # rows' weights).
        per_row = F.cross_entropy(
            logits,
            targets,
            weight=self.class_weights,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        p_true = logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
        focal = (1.0 - p_true).pow(self.focal_gamma) * per_row
        if self.class_weights is None:
            return focal.mean()
        return focal.sum() / self.class_weights[targets].sum()
