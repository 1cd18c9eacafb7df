"""Feature extraction with a progress bar; features come back L2-normalised on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[Image.Image], preprocess: Callable) -> None:
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(self.images[index])


@torch.no_grad()
def image_features(model, images, preprocess, device, batch_size: int, desc: str) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(
        _ImageDataset(images, preprocess), batch_size=batch_size, num_workers=0
    )
    out = []
    for batch in tqdm(loader, desc=f"{desc}: images", unit="batch", leave=False):
        out.append(F.normalize(model.encode_image(batch.to(device)).float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def text_features(model, texts: list[str], tokenizer, device, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size]).to(device)
        out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out)
