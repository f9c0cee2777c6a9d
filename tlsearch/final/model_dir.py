"""`final/model/`: the final model as a directory that loads without tlsearch (docs/final.md shows how).

    model.safetensors   the weights (LoRA, DoRA and IA3 merged into the base weights by peft's
                        merge_and_unload; a prompt-tuned model's base weights, with its trained head)
    adapter/            a prompt-tuned model's prompt (and head), in peft's format: a prompt does not
                        merge into weights, so the model loads as the base plus this adapter
    config.json         the model's config: transformers' `save_pretrained` (hf), or timm's `local-dir:`
                        layout (architecture, model_args, pretrained_cfg with the preprocessing)
    tokenizer files     text models: the tokenizer, as `save_pretrained` writes it
    tlsearch.json       source, task, labels, layout, pooling and max_length (text), image_size and the
                        timm data config the training pipeline used (images), trust_remote_code (a
                        model that ships its own code, saved beside it)

Each way of laying a model out is a `Layout` in LAYOUTS, chosen at save time by `layout_for(source,
pooling)` and recorded in tlsearch.json, which `load_final_model` dispatches on: a text model with its own
pooling step (`cls` / `mean` in place of the transformers head) is one more registered layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from tlsearch.errors import UserInputError
from tlsearch.registry import Registry

META_FILE = "tlsearch.json"
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
TEXT_TASK = "text-classification"
# Poolings the transformers classification head itself implements (its pooler or first token):
# `AutoModelForSequenceClassification` as trained. `auto` means the model's own head.
OWN_HEAD_POOLINGS = (None, "auto", "pooler")


@dataclass
class FinalModel:
    """A loaded final model: the module in eval mode, how its inputs are prepared (a transformers
    tokenizer for text; for images the timm data config whose eval transform gives the uint8 pixels the
    module's normalisation expects), the class names in output order, and tlsearch.json."""

    module: nn.Module
    preprocessing: Any
    labels: list[str]
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        return "text" if self.meta["task"] == TEXT_TASK else "image"

    @property
    def source(self) -> str:
        return self.meta["source"]


class Layout(Protocol):
    """How one kind of final model is written to and read from its directory."""

    def save(self, directory: Path, model: nn.Module, preprocessing: Any, meta: dict[str, Any]) -> None:
        """Write the weights (model.safetensors), config and preprocessing files."""
        ...

    def load(self, directory: Path, meta: dict[str, Any]) -> tuple[nn.Module, Any]:
        """The module (any mode) and its preprocessing."""
        ...


LAYOUTS: Registry[Layout] = Registry("final-model layout")


def layout_for(source: str, pooling: str | None) -> str:
    """The layout of a model from `source` whose text head reads `pooling` (None for images)."""
    if source == "timm":
        return "timm"
    if source == "hf":
        return "hf" if pooling in OWN_HEAD_POOLINGS else f"hf-{pooling}"
    raise ValueError(f"no final-model layout for model source `{source}`")


def save_final_model(
    directory: Path,
    model: nn.Module,
    preprocessing: Any,
    *,
    source: str,
    task: str,
    labels: list[str] | tuple[str, ...],
    pooling: str | None = None,
    max_length: int | None = None,
    image_size: int | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write `model` (a peft model is merged first) and its preprocessing into `directory` (created;
    it must not exist or be empty). preprocessing: the LoadedModel's (tokenizer or timm data config).
    trust_remote_code: the model ships its own code (`model.trust_remote_code`), which transformers
    saves beside it and which loading it back runs."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty")
    text = task == TEXT_TASK
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "task": task,
        "labels": [str(label) for label in labels],
        "layout": layout_for(source, pooling if text else None),
    }
    if text:
        meta |= {"pooling": pooling or "auto", "max_length": max_length}
    else:
        meta |= {"image_size": image_size, "data_config": _jsonable(preprocessing)}
    if trust_remote_code:
        meta["trust_remote_code"] = True
    layout = LAYOUTS.get(meta["layout"])
    directory.mkdir(parents=True, exist_ok=True)
    if is_prompt_learning(model):
        model.save_pretrained(str(directory / ADAPTER_DIR))  # type: ignore[operator]
        meta["adapter"] = ADAPTER_DIR
        module = base_with_trained_head(model)
    else:
        module = merged(model)
    layout.save(directory, module, preprocessing, meta)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    honour_umask(directory)
    return directory


def honour_umask(directory: Path) -> None:
    """Give every file under `directory` the mode a new file gets under this process's umask.
    safetensors writes through a temporary file (created 0o600) renamed into place, so weights saved by
    `save_file` or `save_pretrained` would otherwise be unreadable to the group whatever the umask."""
    mode = 0o666 & ~current_umask()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def current_umask() -> int:
    """The umask, read without changing it where Linux says it (os.umask sets it to ask, a moment
    in which another thread's new file would get the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def load_final_model(directory: Path) -> FinalModel:
    """The model a `save_final_model` wrote, in eval mode, with its preprocessing and labels."""
    directory = Path(directory)
    path = directory / META_FILE
    if not path.exists():
        raise UserInputError(f"{directory} holds no final model (no {META_FILE})")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserInputError(
            f"{path}: final-model format {meta.get('format_version')}; this tlsearch reads {FORMAT_VERSION}"
        )
    module, preprocessing = LAYOUTS.get(meta["layout"]).load(directory, meta)
    if meta.get("adapter"):
        from peft import PeftModel

        module = PeftModel.from_pretrained(module, str(directory / meta["adapter"]))
    return FinalModel(module.eval(), preprocessing, list(meta["labels"]), meta)


def is_prompt_learning(model: nn.Module) -> bool:
    """A peft model whose adapter is a prompt (prompt tuning): nothing to merge into the weights."""
    from peft import PeftModel

    return isinstance(model, PeftModel) and bool(model.peft_config[model.active_adapter].is_prompt_learning)


def base_with_trained_head(model: Any) -> nn.Module:
    """A prompt-tuned peft model's base model with the head peft trained (its `modules_to_save` copy)
    in place of the original one, so the base directory alone holds the trained classifier."""
    from peft.utils import ModulesToSaveWrapper

    base: nn.Module = model.get_base_model()
    for name, module in list(base.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, attribute = name.rpartition(".")
            owner = base.get_submodule(parent) if parent else base
            setattr(owner, attribute, module.modules_to_save[model.active_adapter])
    return base


def merged(model: nn.Module) -> nn.Module:
    """The model with LoRA adapters merged into its weights (peft's merge_and_unload): the plain
    architecture, which loads without peft. Other modules as they are."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def _jsonable(data_config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(data_config).items()}


def data_config_of(meta: dict[str, Any]) -> dict[str, Any]:
    """tlsearch.json's timm data config as the model source made it (JSON's lists back to tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in meta["data_config"].items()}


class HuggingFaceLayout:
    """transformers' own: `save_pretrained` (config.json with the class names as id2label,
    model.safetensors) and, for text, the tokenizer's files."""

    def save(self, directory: Path, model: nn.Module, preprocessing: Any, meta: dict[str, Any]) -> None:
        config: Any = model.config
        config.id2label = dict(enumerate(meta["labels"]))
        config.label2id = {label: i for i, label in enumerate(meta["labels"])}
        model.save_pretrained(directory, safe_serialization=True)  # type: ignore[operator]
        if meta["task"] == TEXT_TASK:
            preprocessing.save_pretrained(directory)

    def load(self, directory: Path, meta: dict[str, Any]) -> tuple[nn.Module, Any]:
        from transformers import (
            AutoModelForImageClassification,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        remote_code = shipped_code(directory, meta)
        if meta["task"] == TEXT_TASK:
            model = AutoModelForSequenceClassification.from_pretrained(
                directory, trust_remote_code=remote_code
            )
            return model, AutoTokenizer.from_pretrained(directory, trust_remote_code=remote_code)
        model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=remote_code)
        return model, data_config_of(meta)


class TimmLayout:
    """timm's `local-dir:` layout (timm's save_for_hf): config.json holds the architecture, the arguments
    it was built with (img_size, num_classes) and a pretrained_cfg carrying the preprocessing."""

    def save(self, directory: Path, model: nn.Module, preprocessing: Any, meta: dict[str, Any]) -> None:
        from timm.models import save_for_hf

        save_for_hf(
            model,
            str(directory),
            model_config={"label_names": meta["labels"]},
            safe_serialization=True,
            data_config=dict(preprocessing),
        )

    def load(self, directory: Path, meta: dict[str, Any]) -> tuple[nn.Module, Any]:
        import timm

        model = timm.create_model(f"local-dir:{directory.resolve()}", pretrained=True)
        return model, data_config_of(meta)


class PooledLayout:
    """A text model whose head reads pooled token states (`model.pooling: cls | mean`,
    tlsearch.models.pooling.PooledClassifier): the base model as transformers saves it (config.json,
    model.safetensors: loads with `AutoModel.from_pretrained`), the tokenizer, and the linear head in
    `classifier.safetensors` (`weight`, `bias`); the pooling is in tlsearch.json."""

    def save(self, directory: Path, model: nn.Module, preprocessing: Any, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        base: Any = model.base_model
        base.config.id2label = dict(enumerate(meta["labels"]))
        base.config.label2id = {label: i for i, label in enumerate(meta["labels"])}
        base.save_pretrained(directory, safe_serialization=True)
        head: Any = model.classifier
        save_file(
            {
                "weight": head.weight.detach().cpu().contiguous(),
                "bias": head.bias.detach().cpu().contiguous(),
            },
            str(directory / HEAD_FILE),
        )
        preprocessing.save_pretrained(directory)

    def load(self, directory: Path, meta: dict[str, Any]) -> tuple[nn.Module, Any]:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from tlsearch.models.pooling import PooledClassifier

        remote_code = shipped_code(directory, meta)
        base = AutoModel.from_pretrained(directory, trust_remote_code=remote_code)
        model = PooledClassifier(base, meta["pooling"], len(meta["labels"]))
        with torch.no_grad():
            head = load_file(str(directory / HEAD_FILE))
            model.classifier.weight.copy_(head["weight"])
            model.classifier.bias.copy_(head["bias"])
        return model, AutoTokenizer.from_pretrained(directory, trust_remote_code=remote_code)


def shipped_code(directory: Path, meta: dict[str, Any]) -> bool:
    """Whether loading this final model runs the code its model shipped with (the search's
    `model.trust_remote_code`, recorded in tlsearch.json); says so when it does."""
    if not meta.get("trust_remote_code"):
        return False
    from tlsearch.models.hf_source import warn_remote_code

    warn_remote_code(str(directory))
    return True


HEAD_FILE = "classifier.safetensors"
LAYOUTS.register("hf")(HuggingFaceLayout())
LAYOUTS.register("hf-cls")(PooledLayout())
LAYOUTS.register("hf-mean")(PooledLayout())
LAYOUTS.register("timm")(TimmLayout())
