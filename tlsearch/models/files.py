"""What `validate` and `run` check of a model before any trial, in seconds and reading no weights:
its pretrained weights are safetensors files that open (a local directory or checkpoint file), and
a text model takes `model.max_length` tokens.

Pretrained weights are read only from safetensors, which hold tensors and nothing else: a pickled
torch file (`pytorch_model.bin`, `.pth`) can run code as it loads, and `torch.load(weights_only=True)`
only narrows what it may build (it has had bypasses, CVE-2025-32434).
"""

from __future__ import annotations

import json
from pathlib import Path

from tlsearch.errors import UserInputError
from tlsearch.models.hf_source import token_limit
from tlsearch.spec.model import ModelSpec

SAFETENSORS = ".safetensors"
# Pickled torch weights, as transformers and timm name them.
TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")


def check_model_files(spec: ModelSpec) -> None:
    """`validate`'s model check, from the files alone: the weights (check_weight_files) and, for a
    local text model, `model.max_length` against its config.json (`run` checks the loaded model's)."""
    check_weight_files(spec)
    path = Path(spec.name).expanduser()
    config_file = path / "config.json"
    if spec.builtin is None and spec.task == "text-classification" and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"model.name: cannot read {config_file} ({exc})") from None
        check_max_length(spec, token_limit(config))


def check_max_length(spec: ModelSpec, limit: int | None) -> None:
    """`model.max_length` within the model's limit (LoadedModel.max_tokens): longer texts would fail in
    every trial (an index error in the position embeddings), not before the search. Only a value the
    spec sets is refused: the default (128) is not, since a model with fewer positions is a test model
    whose texts are short."""
    if "max_length" in spec.model_fields_set and limit is not None and spec.max_length > limit:
        raise UserInputError(
            f"model.max_length is {spec.max_length}, but `{spec.name}` takes at most {limit} tokens "
            "(its position embeddings: config.json's `max_position_embeddings`, or the tokenizer's "
            f"`model_max_length`): set model.max_length to {limit} or less"
        )


def check_weight_files(spec: ModelSpec) -> None:
    """Refuse (UserInputError) a local model directory or checkpoint file whose pretrained weights
    are not safetensors files that open. Hub ids and builtins are left to loading (transformers is
    asked for safetensors only: use_safetensors=True)."""
    path = Path(spec.name).expanduser()
    if spec.pretrained and spec.builtin is None and path.exists():
        _check_weights(spec, path)


def _check_weights(spec: ModelSpec, path: Path) -> None:
    weights = sorted(path.glob(f"*{SAFETENSORS}")) if path.is_dir() else [path]
    if path.is_dir() and not weights:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
        if pickled:
            raise UserInputError(_pickled(spec, ", ".join(pickled)))
        raise UserInputError(
            f"model.name `{spec.name}`: the directory has no weights (no *{SAFETENSORS} file): save the "
            "model into it with `save_pretrained(DIR, safe_serialization=True)`, or set "
            "`model.pretrained: false` to train the architecture from random weights"
        )
    for file in weights:
        if file.suffix != SAFETENSORS:
            raise UserInputError(_pickled(spec, file.name))
        _check_opens(file)


def _pickled(spec: ModelSpec, names: str) -> str:
    return (
        f"model.name `{spec.name}`: its weights ({names}) are a pickled torch file; tlsearch reads "
        f"pretrained weights only from {SAFETENSORS} files (a pickle can run code as it loads). Convert "
        "them once: `model.save_pretrained(DIR, safe_serialization=True)` (transformers, timm's "
        "`save_for_hf`), or `safetensors.torch.save_file(torch.load(FILE, weights_only=True), "
        f"'model{SAFETENSORS}')` for a state dict"
    )


def _check_opens(file: Path) -> None:
    """The header parses and its tensors lie within the file (safetensors checks both on open)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise UserInputError(
            f"model.name: {file} is not a readable safetensors file ({exc}): it is damaged or another "
            "format; save the model again with `save_pretrained(DIR, safe_serialization=True)`"
        ) from None
