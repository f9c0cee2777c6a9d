"""Where a frozen prefix ends, how to read its output, and what runs above it.

A trial whose lower part is frozen and deterministic (eval mode, deterministic preprocessing) need not
run that part every step: the feature cache (tlsearch.train.features) computes the prefix's output once
per search for every row, and each epoch feeds the stored tensors to the model's *tail*. A tail is made
of the model's own modules (the same Parameter objects: training the tail trains the model, and the
model's checkpoints hold the result), arranged so the model's own forward code runs above the boundary.
Each model source makes its models' tails (`ModelSource.tail`: hf_source.py, timm_source.py); this
module holds what they share: the boundaries, `Tail`, the cutting and capturing mechanics, and the check.

That a tail reproduces its model is checked, never assumed: `check_tail` compares the two on a probe
batch in eval mode, and in train mode from one random state (dropout above the boundary must draw the
same masks, and nothing below it may draw at all). A model that fails is trained uncached.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlsearch.models.base import LoadedModel

HEAD = "head"
_BLOCK = "block:"


def block_boundary(index: int) -> str:
    """The boundary below block `index` (0-based, bottom to top): the cache holds that block's input."""
    return f"{_BLOCK}{index}"


def boundary_block(boundary: str) -> int | None:
    """The block index of a block boundary; None for HEAD."""
    return int(boundary.removeprefix(_BLOCK)) if boundary.startswith(_BLOCK) else None


class TailUnsupported(Exception):
    """The model's frozen prefix cannot be cached at this boundary; the message says why."""


# Stored rows of boundary tensors, and each row's token count (text below a block; None otherwise).
Features = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class Tail:
    boundary: str
    # The model above the boundary: takes `to_batch(...)` and returns what the model returns.
    module: nn.Module
    # A batch as the training loop feeds the model (on the model's device) -> its boundary tensors.
    # Run in eval mode without gradients; nothing above the boundary runs.
    extract: Callable[[Any], Features]
    # Rows of stored boundary tensors (cut to the batch's longest row, for text) -> the tail's input.
    to_batch: Callable[[torch.Tensor, torch.Tensor | None], Any]


def make_tail(loaded: LoadedModel, boundary: str) -> Tail:
    """The tail of `loaded.model` above `boundary`, sharing its modules. Raises TailUnsupported."""
    index = boundary_block(boundary)
    if index is not None and not 0 <= index < loaded.layers.num_blocks:
        raise TailUnsupported(f"block {index} is outside the model's {loaded.layers.num_blocks} blocks")
    return loaded.source.tail(loaded, boundary)


# --- shared mechanics ----------------------------------------------------------------------------


class _BoundaryReached(Exception):
    pass


def input_of(module: nn.Module, run: Callable[[], Any]) -> torch.Tensor:
    """The first input `module` receives while `run()` runs; the run stops there, so nothing above
    the boundary is computed."""
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _BoundaryReached

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        run()
    except _BoundaryReached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise TailUnsupported("the forward pass never reached the boundary block")
    return captured[0]


def shallow_copy(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def replaced(root: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A copy of `root` with the module at each dotted path replaced. Only the modules on the way are
    copied; every other module, parameter and buffer is the original."""
    copies = {"": shallow_copy(root)}
    for path, replacement in replacements.items():
        *parents, leaf = path.split(".")
        here = ""
        for name in parents:
            below = f"{here}.{name}" if here else name
            if below not in copies:
                child = copies[here]._modules[name]
                assert child is not None, below
                copies[below] = shallow_copy(child)
                copies[here]._modules[name] = copies[below]
            here = below
        copies[here]._modules[leaf] = replacement
    return copies[""]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_tail(
    model: nn.Module,
    tail: Tail,
    probe: Any,
    train_mode: Callable[[nn.Module], None],
    tolerance: float,
    *,
    logits: Callable[[nn.Module, Any], torch.Tensor],
) -> None:
    """Raise TailUnsupported unless the tail, fed the probe's boundary tensors, gives the model's own
    logits and gradients (of every trained parameter) in eval mode, and the model's own logits in train
    mode (`train_mode` as the trial sets it) from one random state; `logits` feeds either a batch as
    the loop does (the model source's `logits`). Leaves the model's modes, buffers, gradients and the
    random state as they were."""
    trained = [p for p in model.parameters() if p.requires_grad]
    missing = {id(p) for p in trained} - {id(p) for p in tail.module.parameters()}
    if missing:
        raise TailUnsupported(f"{len(missing)} trained parameter tensors lie below the boundary")
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # train mode moves batch-norm stats
    device = next(model.parameters()).device
    try:
        with eval_mode(model), eval_mode(tail.module):
            with torch.no_grad():
                rows = tail.to_batch(*tail.extract(probe))
            with torch.enable_grad():
                expected, got = logits(model, probe), logits(tail.module, rows)
            _compare(expected, got, "the logits in eval mode", tolerance)
            for a, b in zip(
                torch.autograd.grad(expected.float().sum(), trained),
                torch.autograd.grad(got.float().sum(), trained),
                strict=True,
            ):
                _compare(a, b, "the gradients", tolerance)
            train_mode(model)
            train_mode(tail.module)
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(20261127)
                expected = logits(model, probe)
                torch.manual_seed(20261127)
                got = logits(tail.module, rows)
            _compare(expected, got, "the logits in train mode", tolerance)
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])


def _compare(expected: torch.Tensor, got: torch.Tensor, what: str, tolerance: float) -> None:
    if expected.shape != got.shape:
        raise TailUnsupported(f"{what}: the tail gives shape {tuple(got.shape)}, not {tuple(expected.shape)}")
    scale = expected.float().abs().max().clamp_min(1e-12)
    error = ((expected.float() - got.float()).abs().max() / scale).item()
    if not error <= tolerance:
        raise TailUnsupported(
            f"{what} of the tail differ from the model's by {error:.2g} (relative; allowed {tolerance:g})"
        )
