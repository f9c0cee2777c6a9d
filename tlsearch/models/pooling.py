"""What a text model's new head reads: `model.pooling` resolved, and the classifier that pools.

`pooler` is the model's own sequence-classification head as transformers builds it
(`AutoModelForSequenceClassification`: BERT reads its pooler, a tanh dense layer over [CLS]). A
sentence-transformers model never trained that pooler: its embedding is the mean (or the [CLS] state)
of the last hidden states, and a head on the untrained pooler learns little (on BBC News with
all-MiniLM-L6-v2, a linear probe on the pooler barely beats the majority class). `cls` and `mean` are
`PooledClassifier`: the base model (its pooler dropped), the pooling and a new linear head.

`auto` follows the model's sentence-transformers configuration (`modules.json` naming a Pooling module,
whose `config.json` says which tokens it pools) and is `pooler` for a model without one. Its
`Normalize` module (unit-length embeddings, for cosine similarity) is not applied: a linear head learns
the scale it needs, and unit-length features would only slow a head trained at the same learning rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsearch.errors import UserInputError

POOLED = ("cls", "mean")  # the poolings PooledClassifier implements; `pooler` is the model's own head


def sentence_transformers_pooling(location: str) -> str | None:
    """`cls` or `mean` from a sentence-transformers configuration beside the model (a local directory
    or a hub repository, as transformers finds files), or None when there is none."""
    modules_file = _model_file(location, "modules.json")
    if modules_file is None:
        return None
    modules = json.loads(Path(modules_file).read_text())
    pooling = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    if not pooling:
        return None
    config_file = _model_file(location, f"{pooling[0].get('path') or '1_Pooling'}/config.json")
    if config_file is None:
        raise UserInputError(
            f"{location}: modules.json names a Pooling module without its config.json; set model.pooling"
        )
    config = json.loads(Path(config_file).read_text())
    modes = sorted(
        key.removeprefix("pooling_mode_")
        for key, on in config.items()
        if key.startswith("pooling_mode_") and on is True
    )
    by_mode = {"mean_tokens": "mean", "cls_token": "cls"}
    if len(modes) != 1 or modes[0] not in by_mode:
        raise UserInputError(
            f"{location}: the sentence-transformers pooling is {' + '.join(modes) or 'none'}, which "
            "tlsearch does not implement: set model.pooling to mean, cls or pooler"
        )
    return by_mode[modes[0]]


def resolve_pooling(pooling: str, location: str) -> str:
    """`model.pooling` with `auto` resolved: `cls`, `mean` or `pooler`."""
    if pooling != "auto":
        return pooling
    return sentence_transformers_pooling(location) or "pooler"


def _model_file(location: str, name: str) -> str | None:
    """A file of the model's directory or hub repository; None when it has none (or, offline, when it
    is not in the local cache)."""
    from transformers.utils import cached_file

    return cached_file(
        location,
        name,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """rows × tokens × hidden -> rows × hidden: the first token, or the mean over the real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


class PooledClassifier(nn.Module):
    """A transformers base model, a pooling step over its last hidden states and a linear head
    (`classifier`), without dropout before it: sentence-transformers' classification heads have none,
    and on frozen features it is noise that holds a linear probe back (a tiny BERT's mean-pooled
    features: 0.55 validation accuracy with dropout 0.1, 0.72 without, where scikit-learn's
    LogisticRegression reaches 0.73). The base model sits under its own prefix (`bert`), so parameter names,
    the layer map and LoRA targets read as they do for `AutoModelForSequenceClassification`; the
    attributes the rest of tlsearch reads of a transformers model (`config`, `base_model_prefix`,
    `base_model`, `main_input_name`, `get_input_embeddings`, `device`) are there too. Returns an object with
    `.logits`, as a transformers classifier does."""

    def __init__(self, base: nn.Module, pooling: str, num_labels: int):
        super().__init__()
        if pooling not in POOLED:
            raise ValueError(f"PooledClassifier pools {' or '.join(POOLED)}, not {pooling!r}")
        config: Any = base.config
        self.config = config
        self.pooling = pooling
        self.base_model_prefix: str = base.base_model_prefix  # type: ignore[assignment]
        self.main_input_name: str = getattr(base, "main_input_name", "input_ids")
        if isinstance(getattr(base, "pooler", None), nn.Module):
            base.pooler = None  # type: ignore[assignment]  # unused: its parameters would never get a gradient (DDP refuses those)
        self.add_module(self.base_model_prefix, base)
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    @property
    def base_model(self) -> nn.Module:
        return self.get_submodule(self.base_model_prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()  # type: ignore[operator]

    @property
    def device(self) -> torch.device:  # as a transformers model has it (peft's prompt tuning reads it)
        return next(self.parameters()).device

    def features(self, **inputs: Any) -> torch.Tensor:
        """What the head reads: rows × hidden."""
        given = {key: value for key, value in inputs.items() if value is not None}
        out = self.base_model(**given)
        return pool(out.last_hidden_state, given.get("attention_mask"), self.pooling)

    def forward(self, **inputs: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.classifier(self.features(**inputs)))
