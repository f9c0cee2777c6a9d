"""Where a frozen prefix ends, how to read its output, and what runs above it.

A trial whose lower part is frozen and deterministic (eval mode, deterministic preprocessing) need not
run that part every step: the feature cache (tlsearch.train.features) computes the prefix's output once
per search for every row, and each epoch feeds the stored tensors to the model's *tail*. A tail is made
of the model's own modules (the same Parameter objects: training the tail trains the model, and the
model's checkpoints hold the result), arranged so the model's own forward code runs above the boundary:

- Hugging Face, HEAD (linear probe): the model with its base model replaced by a replay of the base
  model's output (the first token's last hidden state and the pooled output, which is what
  sequence-classification heads read).
- Hugging Face, below block i (partial): the model with its embeddings replaced by the stored hidden
  states (passed as `inputs_embeds`) and its block list cut to blocks i and up; the model builds the
  attention mask from `attention_mask` as usual.
- timm, HEAD: the classifier, after the dropout timm applies to pre-logits features.
- timm, below block i: blocks i and up, then the modules `forward_features` applies after the blocks
  (a ViT's final norm, an EfficientNet's conv_head and bn2, nothing for a ResNet), then `forward_head`.

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

from tlsearch.models.layers import LayerMap
from tlsearch.models.sources import LoadedModel

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
    if loaded.source == "hf":
        return _hf_head_tail(loaded) if index is None else _hf_block_tail(loaded, index)
    if loaded.source == "timm":
        return _timm_head_tail(loaded) if index is None else _timm_block_tail(loaded, index)
    raise TailUnsupported(f"no tails for model source `{loaded.source}`")


# --- Hugging Face -----------------------------------------------------------------------------


class _BaseOutputReplay(nn.Module):
    """Stands in for a Hugging Face base model: returns the stored output it is handed as
    `inputs_embeds` (rows × [first token, pooled output] × hidden; no pooled output when the base model
    has no pooler)."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pooled = inputs_embeds[:, 1] if inputs_embeds.shape[1] > 1 else None
        return BaseModelOutputWithPooling(last_hidden_state=inputs_embeds[:, :1], pooler_output=pooled)


class _StoredHiddenStates(nn.Module):
    """Stands in for a Hugging Face embeddings module: returns the stored hidden states it is handed
    as `inputs_embeds`, unchanged (they already went through the embeddings and the frozen blocks)."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if inputs_embeds is None:
            raise TypeError("the stored hidden states must arrive as `inputs_embeds`")
        return inputs_embeds


def _hf_head_tail(loaded: LoadedModel) -> Tail:
    model = loaded.model
    base = model.base_model

    def extract(batch: dict[str, torch.Tensor]) -> Features:
        out = base(**batch)
        first = out.last_hidden_state[:, :1]
        pooled = getattr(out, "pooler_output", None)
        return (first if pooled is None else torch.cat([first, pooled[:, None]], dim=1)), None

    tail = _replaced(model, {model.base_model_prefix: _BaseOutputReplay()})
    return Tail(HEAD, tail, extract, lambda rows, _: {"inputs_embeds": rows})


def _hf_block_tail(loaded: LoadedModel, index: int) -> Tail:
    model = loaded.model
    blocks_path, blocks = _block_list(model, loaded.layers.block_prefixes)
    tail = _replaced(
        model,
        {_embeddings_path(model): _StoredHiddenStates(), blocks_path: nn.ModuleList(list(blocks)[index:])},
    )
    base = model.base_model

    def extract(batch: dict[str, torch.Tensor]) -> Features:
        hidden = _input_of(blocks[index], lambda: base(**batch))
        mask = batch.get("attention_mask")
        if mask is None:
            return hidden, torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long)
        lengths = mask.sum(dim=1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask.bool(), positions[None, :] < lengths[:, None]):
            raise TailUnsupported("the tokenizer pads on the left; stored rows are padded on the right")
        return hidden, lengths

    def to_batch(rows: torch.Tensor, lengths: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert lengths is not None
        mask = torch.arange(rows.shape[1])[None, :] < lengths[:, None]
        return {"inputs_embeds": rows, "attention_mask": mask.long()}

    return Tail(block_boundary(index), tail, extract, to_batch)


def _block_list(model: nn.Module, prefixes: tuple[str, ...]) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding every block, in order (`bert.encoder.layer`)."""
    parents = {p.rsplit(".", 1)[0] for p in prefixes}
    if len(parents) != 1:
        raise TailUnsupported(f"the blocks do not sit in one list: {sorted(parents)[:3]}")
    path = parents.pop()
    blocks = model.get_submodule(path)
    if not isinstance(blocks, nn.ModuleList) or [f"{path}.{i}" for i in range(len(blocks))] != list(prefixes):
        raise TailUnsupported(f"`{path}` is not the list of the model's blocks in order")
    return path, blocks


def _embeddings_path(model: nn.Module) -> str:
    """The base model's child that holds the input embeddings (`bert.embeddings`)."""
    prefix, target = model.base_model_prefix, model.get_input_embeddings()
    for name, child in model.base_model.named_children():
        if any(m is target for m in child.modules()):
            return f"{prefix}.{name}"
    raise TailUnsupported("no child of the base model holds its input embeddings")


# --- timm --------------------------------------------------------------------------------------


def _timm_head_tail(loaded: LoadedModel) -> Tail:
    model = loaded.model
    # timm applies dropout to the pre-logits features, in train mode only: a ViT with its `head_drop`,
    # most CNNs with F.dropout(p=drop_rate). check_tail's train-mode comparison confirms the rate.
    head_drop = getattr(model, "head_drop", None)
    rate = (
        head_drop.p if isinstance(head_drop, nn.Dropout) else float(getattr(model, "drop_rate", 0.0) or 0.0)
    )
    tail = nn.Sequential(nn.Dropout(rate), model.get_classifier())

    def extract(images: torch.Tensor) -> Features:
        return model.forward_head(model.forward_features(images), pre_logits=True), None

    return Tail(HEAD, tail, extract, lambda rows, _: rows)


class _TimmTail(nn.Module):
    def __init__(self, above: list[nn.Module], head_side: nn.Module):
        super().__init__()
        self.above = nn.Sequential(*above)  # the remaining blocks, then forward_features' last modules
        self.head_side = head_side  # the model without what forward_features runs: forward_head's own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_side.forward_head(self.above(x))


def _timm_block_tail(loaded: LoadedModel, index: int) -> Tail:
    model = loaded.model
    blocks = _block_modules(model, loaded.layers, index)
    # Which top-level modules forward_features runs, in order: those after the last block's container
    # run above the blocks (ViT: norm); the ones it never runs belong to forward_head.
    order = _forward_features_order(model, tuple(loaded.preprocessing["input_size"]))
    containers = {p.split(".", 1)[0] for p in loaded.layers.block_prefixes}
    if not containers <= set(order):
        raise TailUnsupported("forward_features does not run the blocks as top-level modules")
    after = order[max(order.index(c) for c in containers) + 1 :]
    head_side = _shallow_copy(model)
    head_side._modules = {name: m for name, m in model._modules.items() if name not in order}
    tail = _TimmTail(blocks + [model.get_submodule(name) for name in after], head_side)

    def extract(images: torch.Tensor) -> Features:
        return _input_of(blocks[0], lambda: model.forward_features(images)), None

    return Tail(block_boundary(index), tail, extract, lambda rows, _: rows)


def _block_modules(model: nn.Module, layers: LayerMap, index: int) -> list[nn.Module]:
    """Blocks index.. as modules that each hold exactly their own block's parameters: chained in order,
    they run those blocks. (Not so for a ConvNeXt stage's first block: it shares a layer with the stage's
    downsample, and the stage module holding both also holds the stage's other blocks.)"""
    modules = []
    for i in range(index, layers.num_blocks):
        prefix = layers.block_prefixes[i]
        module = model.get_submodule(prefix)
        if any(layers.layer_of.get(f"{prefix}.{name}") != i + 1 for name, _ in module.named_parameters()):
            raise TailUnsupported(f"block {i} is not a module of its own (`{prefix}` holds more)")
        modules.append(module)
    return modules


def _forward_features_order(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """Names of the top-level modules forward_features runs, in the order they finish (one probe image)."""
    done: list[str] = []
    handles = [
        child.register_forward_hook(lambda *_, name=name: done.append(name) if name not in done else None)
        for name, child in model.named_children()
    ]
    try:
        with torch.no_grad(), eval_mode(model):
            model.forward_features(torch.zeros((1, *input_size)))
    finally:
        for handle in handles:
            handle.remove()
    return done


# --- shared mechanics ----------------------------------------------------------------------------


class _BoundaryReached(Exception):
    pass


def _input_of(module: nn.Module, run: Callable[[], Any]) -> torch.Tensor:
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


def _shallow_copy(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def _replaced(root: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A copy of `root` with the module at each dotted path replaced. Only the modules on the way are
    copied; every other module, parameter and buffer is the original."""
    copies = {"": _shallow_copy(root)}
    for path, replacement in replacements.items():
        *parents, leaf = path.split(".")
        here = ""
        for name in parents:
            below = f"{here}.{name}" if here else name
            if below not in copies:
                copies[below] = _shallow_copy(copies[here]._modules[name])
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


def logits_of(model: nn.Module, batch: Any) -> torch.Tensor:
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    return out.logits if hasattr(out, "logits") else out


def check_tail(
    model: nn.Module,
    tail: Tail,
    probe: Any,
    train_mode: Callable[[nn.Module], None],
    tolerance: float,
) -> None:
    """Raise TailUnsupported unless the tail, fed the probe's boundary tensors, gives the model's own
    logits and gradients (of every trained parameter) in eval mode, and the model's own logits in train
    mode (`train_mode` as the trial sets it) from one random state. Leaves the model's modes, buffers,
    gradients and the random state as they were."""
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
                expected, got = logits_of(model, probe), logits_of(tail.module, rows)
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
                expected = logits_of(model, probe)
                torch.manual_seed(20261127)
                got = logits_of(tail.module, rows)
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
