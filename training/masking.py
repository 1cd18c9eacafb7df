"""FLIP patch removal: drop a random subset of patch tokens before the image encoder.

Unlike open_clip's PatchDropout (which draws its noise on the CPU), the noise, the sort and the
gather all run on the tokens' device, vectorised over the batch: no host round-trip per step.
"""

from __future__ import annotations

import torch
from torch import nn


def kept_count(num_patches: int, mask_ratio: float) -> int:
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def remove_patches(tokens: torch.Tensor, mask_ratio: float, generator=None) -> torch.Tensor:
    """Keep ``int(L*(1-r))`` random patch tokens per image; token 0 (CLS) is always kept.

    ``tokens``: [batch, 1 + L, width], positional embeddings already added.
    """
    cls_token, patches = tokens[:, :1], tokens[:, 1:]
    batch, length, width = patches.shape
    keep = kept_count(length, mask_ratio)
    noise = torch.rand(batch, length, device=tokens.device, generator=generator)
    keep_idx = noise.argsort(dim=1)[:, :keep]  # the lowest noise values survive
    kept = torch.gather(patches, 1, keep_idx.unsqueeze(-1).expand(-1, -1, width))
    return torch.cat([cls_token, kept], dim=1)


class PatchRemoval(nn.Module):
    """Drop-in for ``VisionTransformer.patch_dropout``; active only in training mode."""

    def __init__(self, mask_ratio: float = 0.0) -> None:
        super().__init__()
        self.mask_ratio = mask_ratio

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.training or self.mask_ratio <= 0.0:
            return tokens
        return remove_patches(tokens, self.mask_ratio)


def set_mask_ratio(model: nn.Module, mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    visual = model.visual
    if not isinstance(visual.patch_dropout, PatchRemoval):
        visual.patch_dropout = PatchRemoval()
    visual.patch_dropout.mask_ratio = mask_ratio
