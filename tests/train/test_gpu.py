"""GPU-only checks (marked `gpu`; `make test` leaves them out): each strategy trains a step under bf16
autocast on CUDA, the way the loop does, for both model sources (and Hugging Face image models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.strategies.test_strategies import BUILTIN, CONFIGS, SOURCES, batch, logits, model_spec
from tlsearch.models import build_model
from tlsearch.strategies.base import prepare

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("strategy", BUILTIN)
def test_bf16_step_on_cuda(source: str, strategy: str, tiny_bert: Path, tiny_vit: Path) -> None:
    torch.manual_seed(0)
    spec = model_spec(source, tiny_bert, tiny_vit)
    prepared = prepare(build_model(spec, num_classes=3), CONFIGS[strategy])
    model = prepared.model.to("cuda")
    optimizer = torch.optim.AdamW(prepared.optimizer_groups(prepared.model), fused=True)
    inputs = batch(source)
    inputs = {k: v.cuda() for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.cuda()
    target = torch.tensor([0, 1, 2, 0], device="cuda")
    prepared.train_mode(model)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(logits(model, inputs).float(), target)
    loss.backward()
    optimizer.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
