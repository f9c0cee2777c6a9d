"""Batches onto the training device, images normalised there.

Image datasets hand over uint8 pixels (timm's transforms with `use_prefetcher=True`, collated by
timm's `fast_collate`): a quarter of float32's bytes through the DataLoader workers' shared memory,
the pinned-memory copy and the host-to-device transfer. The device then scales them with the
model's mean and std, as timm's `PrefetchLoader` does (the same arithmetic; here without its
side stream, which would put the first step's batch one batch later, and with channels-last).
"""

from __future__ import annotations

from typing import Any

import torch


class ToDevice:
    """Moves a loader's batch to `device`: text batches (dicts of tensors) as they are, uint8 image
    batches normalised to float32 (in channels-last when asked), float batches (cached features)
    as they are."""

    def __init__(self, device: torch.device, preprocessing: Any = None, channels_last: bool = False):
        self.device = device
        self.channels_last = channels_last
        self.mean = self.std = None
        if isinstance(preprocessing, dict) and "mean" in preprocessing:  # timm's data config
            from timm.data.loader import adapt_to_chs  # one value per channel, as the prefetcher has it

            channels = int(preprocessing.get("input_size", (3,))[0])
            self.mean, self.std = (
                torch.tensor([v * 255 for v in adapt_to_chs(preprocessing[key], channels)], device=device)
                .float()
                .view(1, channels, 1, 1)
                for key in ("mean", "std")
            )

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, dict):
            return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)  # still uint8: a quarter to move
        if batch.dtype == torch.uint8:
            if self.mean is None:
                raise ValueError("uint8 image batches need the model's mean and std to be normalised")
            # Element-wise: the memory format is kept. (x - 255 mean) / (255 std) = (x / 255 - mean) / std
            batch = batch.float().sub_(self.mean).div_(self.std)
        return batch
