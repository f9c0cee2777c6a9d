"""How a strategy's trained state is saved in a checkpoint: a format each strategy passes to its
`Prepared` (composition, not a subclass per strategy).

- `TrainableWeights`: the trainable parameters, and the buffers of the modules that train (batch-norm
  statistics), as one safetensors file.
- `PeftAdapter`: peft's own adapter files (`adapter_config.json`, `adapter_model.safetensors`):
  the adapters and the modules peft trains in full (the new head), loadable with peft's API.

Taking the tensors and writing them are two steps: the training loop takes them between steps (the
model's own tensors, copied off the device when the files are written on another thread:
tlsearch.train.checkpoint), and the format writes whatever it was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"


class CheckpointFormat(Protocol):
    def tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of `model`: its own tensors (copy them to keep them)."""

    def write(self, model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        """Writes `tensors` (from `tensors`, maybe copied since) into `directory`."""

    def load(self, model: nn.Module, directory: Path) -> None:
        """Puts a checkpoint written by `write` back into a freshly prepared `model`."""


class TrainableWeights:
    def tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Trainable parameters plus the buffers of modules that train (e.g. batch-norm statistics);
        a frozen module has no trainable parameter, so none of its buffers."""
        tensors: dict[str, torch.Tensor] = {}
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            own = [(name, p) for name, p in module.named_parameters(recurse=False) if p.requires_grad]
            tensors.update({prefix + name: p for name, p in own})
            if own:
                tensors.update(
                    {prefix + b: buf for b, buf in module.named_buffers(recurse=False) if buf is not None}
                )
        return tensors

    def write(self, model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        from safetensors.torch import save_file

        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        save_file(cpu, str(directory / WEIGHTS_FILE))

    def load(self, model: nn.Module, directory: Path) -> None:
        from safetensors.torch import load_file

        result = model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
        if result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint does not fit the model: unexpected keys {result.unexpected_keys[:5]}"
            )


class PeftAdapter(TrainableWeights):
    """For a peft model (`get_peft_model`): peft saves and loads only what it trains."""

    def write(self, model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        # peft picks the adapter's and the head's entries out of the state dict it is given: the
        # trainable ones from `tensors` (maybe copied while training went on), the rest are frozen.
        model.save_pretrained(str(directory), state_dict={**model.state_dict(), **tensors})  # type: ignore[operator]

    def load(self, model: nn.Module, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        result: Any = set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))
        # A prompt's embeddings go into its prompt encoder, apart from the state dict peft reports on.
        unexpected = [k for k in result.unexpected_keys if k != "prompt_embeddings"]
        if unexpected:
            raise RuntimeError(f"adapter does not fit the model: unexpected keys {unexpected[:5]}")
