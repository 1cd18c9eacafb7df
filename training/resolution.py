"""Image-token reduction by resolution: a phase may train on downsampled images (a quarter of
the patch tokens at half the side), then a later phase runs the same weights at full size.

open_clip's ViT adds a positional embedding of its full-size grid to the patch tokens; on a
smaller grid the embedding is resized (bicubic, as when fine-tuning a ViT at another
resolution) inside the graph, so its gradient still reaches the full-size parameter. At the
model's own size nothing changes: open_clip's code runs as it is.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from flipcommon.errors import UserError

_MARK = "_flip_any_resolution"


def resized_positional_embedding(embedding: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``embedding``: [1 + side², width] (class token first) → [1 + grid[0]·grid[1], width]."""
    cls_pos, patch_pos = embedding[:1], embedding[1:]
    side = math.isqrt(patch_pos.shape[0])
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def _embeds_any_resolution(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
    if grid == tuple(self.grid_size):
        return type(self)._embeds(self, x)
    # the steps of open_clip's VisionTransformer._embeds, with the embedding resized
    x = self.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + resized_positional_embedding(self.positional_embedding, grid).to(x.dtype)
    x = self.patch_dropout(x)
    return self.ln_pre(x)


def enable_any_resolution(model: nn.Module) -> None:
    """Let ``model.visual`` (open_clip's VisionTransformer) take images of any size that is a
    multiple of its patch. Models without that layout (timm towers) are refused here, when a
    phase asks for another size, rather than failing mid-run."""
    visual = model.visual
    if getattr(visual, _MARK, False):
        return
    needed = ("_embeds", "conv1", "positional_embedding", "grid_size", "patch_size", "ln_pre")
    if not all(hasattr(visual, name) for name in needed):
        raise UserError(
            f"{type(visual).__name__} is not open_clip's VisionTransformer: a phase's "
            "image_size needs its positional embedding"
        )
    visual._embeds = types.MethodType(_embeds_any_resolution, visual)
    setattr(visual, _MARK, True)


def model_image_size(model: nn.Module) -> int:
    return int(model.visual.grid_size[0] * model.visual.patch_size[0])


def check_image_size(size: int, model: nn.Module) -> None:
    patch, full = int(model.visual.patch_size[0]), model_image_size(model)
    if size % patch or not patch <= size <= full:
        raise UserError(
            f"image_size {size} must be a multiple of the model's {patch} px patch, "
            f"between {patch} and its {full} px"
        )


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised float images [B, 3, H, W] → [B, 3, size, size], antialiased (as an image
    decoded at the lower resolution would look), on their own device."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
