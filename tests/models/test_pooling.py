"""`model.pooling`: what a text model's head reads. `auto` follows a sentence-transformers
configuration beside the model; mean pooling ignores padding; a linear probe on cached mean-pooled
features learns what scikit-learn's LogisticRegression learns from the same features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tlsearch.errors import UserInputError
from tlsearch.models import build_model
from tlsearch.models.pooling import PooledClassifier
from tlsearch.spec import validate_spec
from tlsearch.spec.model import ModelSpec
from tlsearch.testing import (
    hard_text_rows,
    save_sentence_transformers_pooling,
    text_spec,
    trial_config,
    trial_inputs,
    write_parquet,
)
from tlsearch.train.features import FeatureStore
from tlsearch.train.loop import train_trial
from tlsearch.train.session import LocalSession


@pytest.fixture
def sentence_bert(tiny_bert: Path, tmp_path: Path) -> Path:
    """The tiny BERT with the files sentence-transformers saves beside a mean-pooling model."""
    directory = Path(shutil.copytree(tiny_bert, tmp_path / "sentence-bert"))
    return save_sentence_transformers_pooling(directory, "mean")


def text_model(name: Path, pooling: str = "auto") -> ModelSpec:
    return ModelSpec(source="hf", name=str(name), task="text-classification", pooling=pooling)


def test_auto_follows_the_sentence_transformers_configuration(sentence_bert: Path, tiny_bert: Path) -> None:
    mean = build_model(text_model(sentence_bert), num_classes=3)
    assert isinstance(mean.model, PooledClassifier) and mean.pooling == "mean"
    assert mean.head_modules == ("classifier",)
    # The base model's pooler is gone: nothing in the model goes without a gradient.
    assert not any("pooler" in name for name, _ in mean.model.named_parameters())

    own = build_model(text_model(tiny_bert), num_classes=3)  # no sentence-transformers files
    assert type(own.model).__name__ == "BertForSequenceClassification" and own.pooling == "pooler"

    save_sentence_transformers_pooling(sentence_bert, "cls")
    assert build_model(text_model(sentence_bert), num_classes=3).pooling == "cls"
    # An explicit pooling wins over the configuration.
    assert build_model(text_model(sentence_bert, "pooler"), num_classes=3).pooling == "pooler"

    save_sentence_transformers_pooling(sentence_bert, "max")
    with pytest.raises(UserInputError, match=r"max_tokens.*set model.pooling"):
        build_model(text_model(sentence_bert), num_classes=3)


def test_mean_pooling_ignores_padding(tiny_bert: Path) -> None:
    loaded = build_model(text_model(tiny_bert, "mean"), num_classes=3)
    model, tokenizer = loaded.model.eval(), loaded.preprocessing
    short = "goal match"
    alone = tokenizer([short], return_tensors="pt")
    padded = tokenizer([short, "chip data bread cheese soup apple today"], padding=True, return_tensors="pt")
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).logits[:1], model(**alone).logits, rtol=1e-5, atol=1e-6)
        # Mean pooling by hand over the real tokens of the short text.
        hidden = model.base_model(**alone).last_hidden_state
        torch.testing.assert_close(model.features(**alone), hidden.mean(dim=1))


def test_pooling_applies_to_text_models_only(tiny_bert: Path) -> None:
    spec = {
        "name": "images",
        "model": {"source": "timm", "name": "test_vit", "task": "image-classification", "pooling": "mean"},
        "data": {"train": "t.parquet", "validation": "v.parquet", "image_column": "image"},
    }
    with pytest.raises(UserInputError, match=r"model.pooling.*text models only"):
        validate_spec(spec)


def test_a_linear_probe_on_mean_pooled_features_matches_logistic_regression(
    sentence_bert: Path, tmp_path: Path
) -> None:
    """The cached features are what the head reads (the mean-pooled vectors); a linear probe trained on
    them by the training loop ends within 0.02 validation accuracy of LogisticRegression on the same
    features (hard rows: both stay well below 1, so the comparison can fail)."""
    files = {
        "train": write_parquet(hard_text_rows(300, seed=1), tmp_path / "data" / "train.parquet"),
        "validation": write_parquet(hard_text_rows(300, seed=2), tmp_path / "data" / "validation.parquet"),
    }
    spec = text_spec(sentence_bert, files, tmp_path / "runs", search={"max_epochs": 30})
    config = trial_config("linear_probe", head_lr=0.1, weight_decay=0.0, warmup_fraction=0.0, batch_size=16)
    run_dir = tmp_path / "run"
    session = LocalSession()
    train_trial(trial_inputs(spec, config, run_dir), session)
    assert session.reports[-1]["feature_cache"] == "built"
    probe_accuracy = session.reports[-1]["val_accuracy"]

    store = FeatureStore(run_dir / "features")
    (cache,) = [p for p in store.root.iterdir() if p.is_dir() and p.name.startswith("head-")]
    manifest = store.lookup(cache.name)
    assert manifest is not None and manifest["inputs"]["preprocessing"]["pooling"] == "mean"
    train, validation = (
        pa.ipc.open_file(pa.memory_map(str(cache / f"{split}.arrow"))).read_all()
        for split in ("train", "validation")
    )
    hidden = 32  # make_tiny_bert's hidden size: one pooled vector per row
    x_train, x_val = (np.asarray(t.column("features").to_pylist(), np.float32) for t in (train, validation))
    assert x_train.shape == (300, hidden)
    from sklearn.linear_model import LogisticRegression

    y_train, y_val = (np.asarray(t.column("target").to_pylist()) for t in (train, validation))
    reference = LogisticRegression(max_iter=5000).fit(x_train, y_train).score(x_val, y_val)
    assert 0.5 < reference < 0.95
    assert abs(probe_accuracy - reference) <= 0.02, (probe_accuracy, reference)
