"""Tiny real models and data sets built from code, for tests (tlsearch's own and yours).

Like `optuna.testing`, the one part of the package that exists for tests: everything here builds a
real object (a BERT or a ViT saved with `save_pretrained`, labelled rows written as Parquet, a spec
document) small enough to train in seconds on a CPU, with nothing downloaded.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlsearch.space import TrialConfig
from tlsearch.spec.strategy import COMMON

if TYPE_CHECKING:
    import torch

    from tlsearch.train.inputs import TrialInputs

CLASS_WORDS = {
    "sport": ["goal", "match", "team", "score", "league"],
    "tech": ["chip", "software", "robot", "network", "data"],
    "food": ["bread", "cheese", "soup", "apple", "spice"],
}
NEUTRAL = ["the", "a", "today", "new", "big", "report", "said", "people"]


def make_tiny_bert(
    directory: Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 64,
    weights: bool = True,
) -> Path:
    """A small BERT with its own WordPiece vocabulary, saved with save_pretrained (random weights
    stand in for pretrained ones: loading by path is what is under test). The sizes make larger ones
    too (BERT-base shapes for a GPU benchmark); weights=False saves its configuration alone (load it
    with `model.pretrained: false`: nothing to write or read for a large one)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *NEUTRAL,
        *(w for ws in CLASS_WORDS.values() for w in ws),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 takes `vocab=` (a path or a dict); the old `vocab_file=` is silently ignored.
    tokenizer = BertTokenizer(vocab=str(directory / "vocab.txt"))
    assert tokenizer.unk_token_id not in tokenizer("goal chip bread")["input_ids"]
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
    )
    config.num_labels = 2  # PretrainedConfig's keyword, which the configs' signatures do not list
    import torch

    torch.manual_seed(0)
    if weights:
        BertForSequenceClassification(config).save_pretrained(directory)
    else:
        config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_sentence_transformers_pooling(
    directory: Path, pooling: str = "mean", normalize: bool = True
) -> Path:
    """Beside a model saved with save_pretrained, the files sentence-transformers writes to say how it
    pools (`modules.json`, `1_Pooling/config.json`): what `model.pooling: auto` reads."""
    import json

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    hidden = json.loads((directory / "config.json").read_text())["hidden_size"]
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    wanted = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}[pooling]
    config = {"word_embedding_dimension": hidden} | {f"pooling_mode_{m}": m == wanted for m in modes}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def make_tiny_vit(
    directory: Path,
    *,
    image_size: int = 32,
    patch: int = 8,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
) -> Path:
    """A small Hugging Face ViT image classifier with its image processor beside it, saved with
    save_pretrained: what `source: hf` loads for image-classification (random weights stand in for
    pretrained ones)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
    )
    config.num_labels = 2  # PretrainedConfig's keyword, which the configs' signatures do not list
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(directory)
    # Per-channel statistics (not ViT's 0.5 everywhere): a mix-up of channels would show.
    processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(directory)
    return directory


# A model that ships its own code: a BERT under classes of its own, in files of the model directory
# that transformers imports only when trusted.
REMOTE_CONFIGURATION = """
from transformers import BertConfig


class ShippedConfig(BertConfig):
    model_type = "tlsearch-shipped"
"""
REMOTE_MODELING = """
from transformers import BertForSequenceClassification, BertModel

from .configuration_shipped import ShippedConfig


class ShippedModel(BertModel):
    config_class = ShippedConfig


class ShippedForSequenceClassification(BertForSequenceClassification):
    config_class = ShippedConfig
"""


def make_model_that_ships_code(tiny_bert: Path, directory: Path) -> Path:
    """A copy of `tiny_bert` (make_tiny_bert's directory) whose classes are its own code, as a hub
    repository with `auto_map` has them: loading it needs trust_remote_code."""
    import json
    import shutil

    shutil.copytree(tiny_bert, directory)
    (directory / "configuration_shipped.py").write_text(REMOTE_CONFIGURATION)
    (directory / "modeling_shipped.py").write_text(REMOTE_MODELING)
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "tlsearch-shipped"
    config["auto_map"] = {
        "AutoConfig": "configuration_shipped.ShippedConfig",
        "AutoModel": "modeling_shipped.ShippedModel",
        "AutoModelForSequenceClassification": "modeling_shipped.ShippedForSequenceClassification",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def text_rows(n: int, seed: int, words_per_row: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    labels = list(CLASS_WORDS)
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.choices(CLASS_WORDS[label], k=3) + rng.choices(NEUTRAL, k=words_per_row - 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def hard_text_rows(n: int, seed: int, words_per_row: int = 12, noise: float = 0.15) -> list[dict[str, Any]]:
    """Like `text_rows`, but one class word among many neutral ones and `noise` of the labels drawn at
    random: accuracy stays well below 1, so two classifiers' accuracies can be told apart."""
    rng = random.Random(seed)
    labels = list(CLASS_WORDS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(CLASS_WORDS[label]), *rng.choices(NEUTRAL, k=words_per_row - 1)]
        rng.shuffle(words)
        shown = rng.choice(labels) if rng.random() < noise else label
        rows.append({"text": " ".join(words), "label": shown})
    return rows


def image_rows(n: int, seed: int, size: int = 32) -> list[dict[str, Any]]:
    """Three classes told apart by colour, with noise: learnable in a few steps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {0: (200, 40, 40), 1: (40, 200, 40), 2: (40, 40, 200)}
    rows = []
    for i in range(n):
        label = i % 3
        pixels = rng.normal(colours[label], 40, size=(size, size, 3)).clip(0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        rows.append({"image": buf.getvalue(), "label": label})
    return rows


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_image_folder(rows: list[dict[str, Any]], root: Path) -> Path:
    """`image_rows` as an image folder split: <root>/<label>/<row number>.png."""
    for i, row in enumerate(rows):
        path = root / str(row["label"]) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row["image"])
    return root


def text_spec(tiny_bert: Path, files: dict[str, Path], storage: Path, **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "tiny-text",
        "storage": str(storage),
        "model": {"source": "hf", "name": str(tiny_bert), "task": "text-classification", "max_length": 16},
        "data": {"train": str(files["train"]), "validation": str(files["validation"]), "text_column": "text"},
        # Baselines and the audit's feature pass off: a test about something else need not pay for
        # them (the tests of those parts turn them on).
        "search": {"num_samples": 4, "max_epochs": 2, "baselines": []},
        "audit": {"label_issues": False},
        "finalize": {"after_search": False},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def image_spec(files: dict[str, Path], storage: Path, **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "tiny-image",
        "storage": str(storage),
        "model": {
            "source": "timm",
            "name": "test_vit",
            "task": "image-classification",
            "pretrained": False,
            "image_size": 32,
        },
        "data": {
            "train": str(files["train"]),
            "validation": str(files["validation"]),
            "image_column": "image",
        },
        # Baselines and the audit's feature pass off: a test about something else need not pay for
        # them (the tests of those parts turn them on).
        "search": {"num_samples": 4, "max_epochs": 2, "baselines": []},
        "audit": {"label_issues": False},
        "finalize": {"after_search": False},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def preferred_trial_config(strategy: str, **overrides: Any) -> TrialConfig[Any]:
    """A trial's config at the strategy's and the common knobs' preferred values (what a search
    tries first), with `overrides` by unprefixed name."""
    from tlsearch.spec.strategy import STRATEGIES, CommonKnobs

    knobs = STRATEGIES.get(strategy).knobs
    values = {k: knobs.knob(k).preferred for k in knobs.model_fields}
    values.update({k: CommonKnobs.knob(k).preferred for k in CommonKnobs.model_fields})
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"{strategy} has no knobs {sorted(unknown)}")
    return trial_config(strategy, **{**values, **overrides})


def trial_config(strategy: str, **knobs: Any) -> TrialConfig[Any]:
    """A trial's config from unprefixed knob names: the common ones (`batch_size`, ...) and the
    strategy's own (`rank`, ...), every one given."""
    from tlsearch.spec.strategy import CommonKnobs

    flat = {(COMMON if k in CommonKnobs.model_fields else strategy) + f"/{k}": v for k, v in knobs.items()}
    return TrialConfig.parse({"strategy": strategy, **flat})


def trial_inputs(spec_dict: dict[str, Any], config: TrialConfig[Any], run_dir: Path) -> TrialInputs:
    """What a trial of `config` receives in a search of `spec_dict` (trial id `t0`), to run the loop
    in this process (e.g. `train_trial(inputs, LocalSession())`)."""
    import time

    from tlsearch.search.resolve import resolve_data
    from tlsearch.spec import validate_spec
    from tlsearch.train.inputs import RunContext, TrialInputs

    spec = validate_spec(spec_dict)
    data, _ = resolve_data(spec, run_dir)
    return TrialInputs(RunContext(str(run_dir), spec, data, use_gpu=False), config, "t0", time.time())


def local_numel(tensor: torch.Tensor) -> int:
    """Elements this worker holds of `tensor` (its shard, for a sharded one)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local().numel() if isinstance(tensor, DTensor) else tensor.numel()
