"""Prompt tuning in a trial (virtual tokens before the input, the head; nothing else moves), and the
models it refuses before a search starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.strategies.test_strategies import model_spec
from tlsearch.errors import UserInputError
from tlsearch.models import build_model
from tlsearch.space import Dim
from tlsearch.strategies.base import check
from tlsearch.testing import text_spec, trial_config, trial_inputs
from tlsearch.train.loop import setup_training, train_epoch
from tlsearch.train.session import TuneSession

PROMPT = trial_config(
    "prompt_tuning",
    head_lr=1e-2,
    lr=3e-2,
    num_virtual_tokens=4,
    weight_decay=0.0,
    warmup_fraction=0.0,
    batch_size=8,
)


def test_a_trial_trains_the_prompt_and_the_head_only(
    tiny_bert: Path, text_data: dict, tmp_path: Path
) -> None:
    inputs = trial_inputs(text_spec(tiny_bert, text_data, tmp_path / "runs"), PROMPT, tmp_path)
    t = setup_training(inputs, TuneSession(use_gpu=False))
    assert t.feature_cache.status == "none"  # the prompt changes every layer's input
    named = dict(t.prepared.model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    loss_sum, seen = train_epoch(t, 0)
    assert seen == 48 and torch.isfinite(loss_sum)
    moved = {n for n, p in named.items() if not torch.equal(before[n], p.detach())}
    assert moved and all(n.startswith("prompt_encoder.") or "modules_to_save" in n for n in moved)
    assert any(n.startswith("prompt_encoder.") for n in moved)
    assert {g.name for g in t.prepared.param_groups} == {"prompt", "head", "head_no_decay"}


def test_prompt_tuning_is_refused_for_image_models_and_too_many_tokens(
    tiny_bert: Path, tiny_vit: Path
) -> None:
    tokens = {"num_virtual_tokens": Dim("int", choices=(4,))}
    for source in ("timm", "hf-image"):
        with pytest.raises(UserInputError, match="needs a Hugging Face text model"):
            check("prompt_tuning", build_model(model_spec(source, tiny_bert, tiny_vit), 3), tokens)
    text = build_model(model_spec("hf", tiny_bert), 3)
    check("prompt_tuning", text, tokens)
    with pytest.raises(UserInputError, match="has 64 positions"):
        check("prompt_tuning", text, {"num_virtual_tokens": Dim("int", low=8, high=64)})
