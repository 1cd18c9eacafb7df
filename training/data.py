"""Streaming loader: webdataset shards from any fsspec URL → (images, tokens) batches.

Composed from small iterator stages, webdataset-style. Broken samples (corrupt tar members,
undecodable images, missing or non-UTF-8 captions) are skipped and counted; the count rides
along with each batch so it survives DataLoader worker processes.
"""

from __future__ import annotations

import functools
import io
import logging
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec
import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms

from flipcommon.errors import UserError
from flipcommon.shard_set import read_sizes
from flipcommon.storage import url_join
from training.preemption import ignore_sigterm

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# Bound the decoded size: a shard is untrusted input.
Image.MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class ShardSet:
    urls: list[str]
    sizes: dict[str, int]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes.values())


def open_shard_set(root: str) -> ShardSet:
    """List a shard set's tars from its ``sizes.json`` (written by the pipeline)."""
    sizes = {name: n for name, n in read_sizes(root).items() if n > 0}
    if not sizes:
        raise UserError(f"shard set {root} holds no samples")
    return ShardSet([url_join(root, name) for name in sorted(sizes)], sizes)


def train_transform(image_size: int, scale_min: float) -> Callable:
    """Random resized crop to a uint8 CHW tensor. Batches stay uint8 through shared memory and
    the copy to the GPU (a quarter of float32's bytes); ``ImageNormalizer`` finishes them on
    the device."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                image_size,
                scale=(scale_min, 1.0),
                interpolation=transforms.InterpolationMode.BICUBIC,
            ),
            transforms.PILToTensor(),
        ]
    )


class ImageNormalizer:
    """uint8 image batches → the model's float input, ``(x / 255 - mean) / std``, on the device
    the batch is on (one fused multiply-add per value)."""

    def __init__(self, mean, std, device: torch.device) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
        return torch.addcmul(self.shift, images.float(), self.scale)


def open_url_stream(src: Iterator[dict]) -> Iterator[dict]:
    """Open each shard URL through fsspec (no ``pipe:`` shell strings built from config)."""
    for sample in src:
        url = sample["url"]
        try:
            stream = fsspec.open(url, "rb").open()
        except Exception as exc:  # an unreadable shard is skipped, counted, and logged
            log.warning("cannot open shard %s: %s", url, exc)
            yield {"__skipped__": 1}
            continue
        yield {**sample, "stream": stream}


class DecodePairs:
    """Decode raw tar samples into (image tensor, token tensor, skipped-before-this count)."""

    def __init__(self, transform: Callable, tokenizer: Callable) -> None:
        self.transform = transform
        self.tokenizer = tokenizer

    def __call__(self, src: Iterator[dict]) -> Iterator[tuple]:
        skipped = 0
        for sample in src:
            if "__skipped__" in sample:
                skipped += sample["__skipped__"]
                continue
            pair = self.decode(sample)
            if pair is None:
                skipped += 1
                continue
            yield (*pair, skipped)
            skipped = 0

    def decode(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        image_bytes = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        caption = sample.get("txt")
        if image_bytes is None or caption is None:
            return None
        try:
            text = caption.decode("utf-8").strip()
            if not text:
                return None
            with warnings.catch_warnings():  # Pillow only warns up to twice its limit ...
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(io.BytesIO(image_bytes))
            with opened as image:
                if image.width * image.height > Image.MAX_IMAGE_PIXELS:  # ... refused here
                    return None
                image = image.convert("RGB")
            return self.transform(image), self.tokenizer([text])[0]
        except (UnicodeDecodeError, OSError, ValueError, Image.DecompressionBombError):
            return None


def worker_seed(base_seed: int) -> int:
    """A seed per (run seed, DataLoader worker): each worker draws its own shard sequence."""
    info = torch.utils.data.get_worker_info()
    return base_seed * 1000 + (info.id if info is not None else 0)


class ShuffleBuffer:
    """Sample-level shuffle through a fixed-size buffer, seeded per worker (reproducible)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed

    def __call__(self, src: Iterator) -> Iterator:
        rng = random.Random(worker_seed(self.seed))
        buffer: list = []
        for item in src:
            if len(buffer) < self.size:
                buffer.append(item)
                continue
            index = rng.randrange(len(buffer))
            buffer[index], item = item, buffer[index]
            yield item
        rng.shuffle(buffer)
        yield from buffer


def collate(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, int]:
    images, tokens, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(tokens), int(sum(skipped))


def make_loader(
    shard_set: ShardSet,
    transform: Callable,
    tokenizer: Callable,
    batch_size: int,
    workers: int,
    shuffle_buffer: int,
    seed: int,
    worker_start: str = "spawn",
    prefetch_batches: int = 4,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """An endless stream of batches: shards are resampled with replacement, so an epoch is a
    number of samples (sizes.json), and every worker of every rank draws its own sequence."""
    if workers > 0 and prefetch_batches < 1:
        raise UserError(f"data.prefetch_batches must be at least 1, got {prefetch_batches}")
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            shard_set.urls, worker_seed=functools.partial(worker_seed, seed), deterministic=True
        ),
        open_url_stream,
        _tar_samples,
        ShuffleBuffer(shuffle_buffer, seed),
        DecodePairs(transform, tokenizer),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )
    return torch.utils.data.DataLoader(
        pipeline,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=worker_start if workers > 0 else None,
        prefetch_factor=prefetch_batches if workers > 0 else None,
        # page-locked batches copy to a GPU asynchronously (non_blocking) and faster
        pin_memory=pin_memory,
        worker_init_fn=ignore_sigterm if workers > 0 else None,
        # the workers' base seed from the stream's own seed, not drawn from the global generator
        # (whose state the run's checkpoints hold: opening a stream must not move it)
        generator=torch.Generator().manual_seed(seed),
    )


def _error_recorder(errors: list[Exception], url: str | None) -> Callable[[Exception], bool]:
    def note(exc: Exception) -> bool:
        log.warning("skipping broken tar data in %s: %s", url, exc)
        errors.append(exc)
        return True  # keep going

    return note


def _tar_samples(src: Iterator[dict]) -> Iterator[dict]:
    """Group tar members into samples; a corrupt or truncated tar ends its shard early and is
    counted as one skipped record (its remaining samples are unknowable)."""
    for sample in src:
        if "__skipped__" in sample:
            yield sample
            continue
        errors: list[Exception] = []
        note = _error_recorder(errors, sample.get("url"))
        try:
            files = wds.tariterators.tar_file_expander([sample], handler=note)
            yield from wds.tariterators.group_by_keys(files, handler=note)
        finally:
            sample["stream"].close()  # webdataset leaves it open: one handle per shard read
        if errors:
            yield {"__skipped__": len(errors)}
