"""Model sources (timm, Hugging Face), layer maps and LoRA target presets."""

from tlsearch.models.layers import LayerMap
from tlsearch.models.lora_targets import resolve_lora_targets
from tlsearch.models.sources import LoadedModel, ModelSource, build_model

__all__ = ["LayerMap", "LoadedModel", "ModelSource", "build_model", "resolve_lora_targets"]
