"""Likely label errors among the training rows: confident learning on out-of-sample probabilities.

1. The frozen features: the spec's backbone, loaded through its model source, cut at the head
   boundary (`make_tail(loaded, HEAD)`: what the new head reads), fed every usable training row with
   the training loop's own preprocessing; each row's features flattened to one vector. Cached under
   `<run dir>/audit/` by a key over the model and the rows, so a search resumed after an interrupted
   audit does not compute them again.
2. Out-of-sample predicted probabilities: a logistic regression on the standardised features,
   cross-validated over 5 stratified folds (fewer when a class has fewer rows), so no row is scored by
   a model that saw its label.
3. `cleanlab.filter.find_label_issues` (confident learning) flags the rows whose given label the
   probabilities contradict, ranked by self-confidence (the probability of the given label), the
   least likely first.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlsearch.spec.model import ModelSpec

if TYPE_CHECKING:
    from tlsearch.data.datasets import Split

FOLDS = 5
FEATURES_FORMAT = 1


@dataclass(frozen=True)
class LabelIssues:
    rows: list[int]  # flagged row ids, ranked: the most likely wrong label first
    checked: int  # training rows scored
    folds: int
    skipped: str | None = None  # why no row was scored

    def as_json(self) -> dict[str, object]:
        return {
            "count": len(self.rows),
            "rows": self.rows,
            "checked": self.checked,
            "folds": self.folds,
            "skipped": self.skipped,
        }


def frozen_features(
    model: ModelSpec,
    num_classes: int,
    split: Split,
    input_kind: str,
    *,
    seed: int,
    batch_size: int,
    cache_dir: Path | None = None,
    cache_inputs: dict[str, object] | None = None,
) -> np.ndarray:
    """One vector per row of `split`: what the new head of `model` reads, flattened. `cache_inputs`
    describes the rows (their file's sha256 and ids) for the cache's key; no cache without it."""
    import torch

    from tlsearch.models import build_model
    from tlsearch.models.base import sha256_json
    from tlsearch.models.tails import HEAD, make_tail
    from tlsearch.train.batches import ToDevice
    from tlsearch.train.features import extract_features, weights_sha256
    from tlsearch.train.loop import seed_everything, split_dataset

    seed_everything(seed)  # a model built from random weights (`pretrained: false`) is the same each time
    loaded = build_model(model, num_classes)
    tail = make_tail(loaded, HEAD)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = None
    if cache_dir is not None and cache_inputs is not None:
        fingerprint = loaded.source.fingerprint(loaded, model)
        key = sha256_json(
            {
                "format": FEATURES_FORMAT,
                "rows": cache_inputs,
                "input_kind": input_kind,
                "model": model.model_dump(mode="json"),
                "config": fingerprint.config,
                "preprocessing": fingerprint.preprocessing,
                "frozen_weights": weights_sha256(loaded.model, loaded.head_modules),
                "device": device.type,
            }
        )[:20]
        path = cache_dir / f"features-{key}.npy"
        if path.exists():
            return np.load(path)
    dataset = split_dataset(split, input_kind, model, loaded)
    loaded.model.to(device)
    # The loop's precision: bf16 autocast on GPUs.
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        features, _, _ = extract_features(
            tail, loaded.model, dataset, ToDevice(device, loaded.preprocessing), batch_size, 0
        )
    features = features.reshape(len(features), -1).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.npy")
        np.save(staging, features)
        os.replace(staging, path)  # atomic: a killed audit leaves no half file under the final name
    return features


def find_label_issues(features: np.ndarray, targets: np.ndarray, seed: int = 0) -> LabelIssues:
    """Row positions (into `features`) of likely label errors, ranked. Classes with a single row
    cannot be cross-validated: their rows are left out."""
    import cleanlab.filter
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = Counter(targets.tolist())
    positions = np.asarray([i for i, t in enumerate(targets.tolist()) if counts[t] >= 2], dtype=np.int64)
    classes = sorted({int(targets[i]) for i in positions})
    if len(classes) < 2:
        return LabelIssues([], 0, 0, "fewer than 2 classes with 2 or more usable training rows")
    index = {c: k for k, c in enumerate(classes)}
    labels = np.asarray([index[int(targets[i])] for i in positions])
    folds = min(FOLDS, min(counts[c] for c in classes))
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probabilities = cross_val_predict(
        head,
        features[positions],
        labels,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        method="predict_proba",
    )
    flagged = cleanlab.filter.find_label_issues(
        labels=labels, pred_probs=probabilities, return_indices_ranked_by="self_confidence"
    )
    return LabelIssues([int(positions[k]) for k in flagged], len(positions), folds)
