"""Data with planted problems whose counts the tests know exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tlsearch.testing import write_parquet

VOCABULARY = [f"w{i}" for i in range(400)]
LABELS = ("alpha", "beta", "gamma")


def distinct_texts(n: int, seed: int, words: int = 12) -> list[str]:
    """Random texts over a large vocabulary: no two share a word pair by more than chance."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(VOCABULARY, k=words)) for _ in range(n)]


def replace_words(text: str, fraction: float, seed: int) -> str:
    """`text` with `fraction` of its words (at random positions) replaced by words it does not hold."""
    rng = random.Random(seed)
    words = text.split()
    for position in rng.sample(range(len(words)), round(fraction * len(words))):
        words[position] = f"new{rng.randrange(10**6)}"
    return " ".join(words)


def balanced(texts: list[str]) -> list[dict[str, Any]]:
    return [{"text": text, "label": LABELS[i % len(LABELS)]} for i, text in enumerate(texts)]


def planted_text_data(root: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Three splits and the counts an audit must find in them."""
    train = balanced(distinct_texts(60, seed=1))
    long_train = distinct_texts(4, seed=9, words=40)
    train += balanced(long_train)  # rows 60-63: the near-duplicates' originals
    train.append({"text": "W7 w8, w9!", "label": "alpha"})  # row 64
    train.append({"text": "w7  W8 w9", "label": "alpha"})  # row 65: an exact duplicate of 64 (normalised)
    train.append({"text": "w7 w8 w9.", "label": "beta"})  # row 66: and another (2 beyond the first)
    train.append({"text": "no label here", "label": None})  # row 67
    train.append({"text": "an empty label", "label": " "})  # row 68
    train.append({"text": None, "label": "beta"})  # row 69
    train.append({"text": "   ", "label": "gamma"})  # row 70
    train += [{"text": text, "label": "delta"} for text in distinct_texts(3, seed=5)]  # rows 71-73: rare

    validation = balanced(distinct_texts(30, seed=2))
    validation.append({"text": train[3]["text"].upper() + " !", "label": train[3]["label"]})  # exact
    validation.append({"text": train[10]["text"], "label": train[10]["label"]})  # exact
    validation.append({"text": replace_words(long_train[0], 0.1, 1), "label": "alpha"})  # near
    validation.append({"text": replace_words(long_train[1], 0.1, 2), "label": "beta"})  # near
    validation.append({"text": "weather report today", "label": "weather"})  # unseen in training

    test = balanced(distinct_texts(30, seed=3))
    test.append({"text": validation[0]["text"], "label": validation[0]["label"]})  # exact, of validation
    test.append({"text": replace_words(long_train[2], 0.1, 3), "label": "gamma"})  # near, of train
    test.append({"text": train[20]["text"] + ".", "label": train[20]["label"]})  # exact, of train

    files = {
        split: write_parquet(rows, root / f"{split}.parquet")
        for split, rows in (("train", train), ("validation", validation), ("test", test))
    }
    expected = {
        "rows": {"train": 74, "validation": 35, "test": 33},
        "missing_labels": {"train": 2, "validation": 0, "test": 0},
        "missing_inputs": {"train": 2, "validation": 0, "test": 0},
        "unreadable_inputs": {"train": 0, "validation": 0, "test": 0},
        "unknown_labels": {"train": 0, "validation": 1, "test": 0},
        "exact_duplicates_within": {"train": 2, "validation": 0, "test": 0},
        "exact_duplicates_across": {"train/validation": 2, "train/test": 1, "validation/test": 1},
        "near_duplicates_across": {"train/validation": 2, "train/test": 1, "validation/test": 0},
        "rare_classes": 1,
    }
    return files, expected
