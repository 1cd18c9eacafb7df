"""Feature extraction with a progress bar; features come back L2-normalised on the CPU.

On CUDA the towers run under bf16 autocast (features are cast back to fp32 before they are
normalised), and batches come from pinned memory; on the CPU everything stays fp32.

An image that cannot be decoded is skipped and reported by index, so that callers drop its
label or captions too: nothing is scored silently against the wrong sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from flipcommon.errors import UserError

log = logging.getLogger(__name__)


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[Image.Image], preprocess: Callable) -> None:
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            return index, self.preprocess(self.images[index])
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for broken files
            log.warning("skipping image %d: %s", index, exc)
            return index, None


def _collate(batch):
    kept = [(i, t) for i, t in batch if t is not None]
    skipped = [i for i, t in batch if t is None]
    if not kept:
        return [], None, skipped
    return [i for i, _ in kept], torch.stack([t for _, t in kept]), skipped


def _autocast(device):
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def image_features(
    model, images, preprocess, device, batch_size: int, desc: str, workers: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """Features of the decodable images, and the indices of those that could not be decoded.
    ``workers`` loader processes decode and preprocess while the model runs."""
    loader = torch.utils.data.DataLoader(
        _ImageDataset(images, preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.device(device).type == "cuda",
    )
    out, skipped = [], []
    for _, batch, bad in tqdm(loader, desc=f"{desc}: images", unit="batch", leave=False):
        skipped += bad
        if batch is not None:
            with _autocast(device):
                encoded = model.encode_image(batch.to(device, non_blocking=True))
            out.append(F.normalize(encoded.float(), dim=-1).cpu())
    if not out:
        raise UserError(f"{desc}: none of the {len(images)} images could be decoded")
    return torch.cat(out), skipped


@torch.no_grad()
def text_features(model, texts: list[str], tokenizer, device, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size]).to(device)
        with _autocast(device):
            encoded = model.encode_text(tokens)
        out.append(F.normalize(encoded.float(), dim=-1).cpu())
    return torch.cat(out)
