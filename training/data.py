"""Streaming loader: webdataset shards from any fsspec URL → (images, tokens) batches.

Composed from small iterator stages, webdataset-style. Broken samples (corrupt tar members,
undecodable images, missing or non-UTF-8 captions) are skipped and counted; the count rides
along with each batch so it survives DataLoader worker processes.
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import multiprocessing
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec
import numpy
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


def segment_seed(stream_seed: int, start_step: int) -> int:
    """The seed of the stream's segment that starts at ``start_step``."""
    return stream_seed + 1_000_003 * start_step


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


class SegmentStart:
    """Where the stream's segment starts, in memory shared with the loader's workers: the step,
    and a count of segments begun. A worker reads both as it begins a segment, and the count
    before each sample: once the count moves, its segment ends there."""

    def __init__(self, context) -> None:  # the loader's multiprocessing context
        self._step = context.RawValue("q", 0)
        self._count = context.RawValue("q", 0)

    def move_to(self, step: int) -> None:
        self._step.value = step
        self._count.value += 1

    def end(self) -> None:
        """End every worker's segment (before they are stopped: a busy one ends its batch)."""
        self._count.value += 1

    def read(self) -> tuple[int, int]:
        return self._step.value, self._count.value

    def is_current(self, count: int) -> bool:
        return self._count.value == count


class SegmentedBatches(torch.utils.data.IterableDataset):
    """Endless batches in segments. Each iteration is the segment that starts at the step held
    in ``start`` when it begins: its shards, shuffle and crops are seeded from (stream seed,
    that step, worker) alone, so the segment a resumed run opens in fresh workers is the one
    the uninterrupted run opened in the workers it kept. A segment ends at its worker's next
    sample once another begins: the worker then starts the next one (a persistent DataLoader's
    new iteration) without being respawned."""

    def __init__(
        self,
        shard_set: ShardSet,
        decode: DecodePairs,
        batch_size: int,
        shuffle_buffer: int,
        stream_seed: int,
        start: SegmentStart,
    ) -> None:
        self.shard_set = shard_set
        self.decode = decode
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.stream_seed = stream_seed
        self.start = start
        # The segment workers started from now on begin with, in plain attributes (copied into
        # each worker as it starts): a worker still starting when a restart moves ``start``
        # must begin the segment it was started for, which then ends at once, and take the
        # new one from torch's message; reading ``start`` there would begin the new segment
        # outside that message, and the worker not hear it until that segment's first batch.
        self.first_segment = start.read()
        self._begun = False  # in a worker: its first segment begun

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and not self._begun:
            step, count = self.first_segment
            self._begun = True
        else:
            step, count = self.start.read()
        seed = segment_seed(self.stream_seed, step)
        if in_worker:
            _seed_worker_generators(worker_seed(seed))
        # checked before and after the shuffle buffer: a worker filling its buffer, or one
        # mid-batch, leaves the old segment at its next sample, not after a buffer or a batch
        current = functools.partial(_while_current, self.start, count)
        pipeline = wds.DataPipeline(
            wds.ResampledShards(
                self.shard_set.urls,
                worker_seed=functools.partial(worker_seed, seed),
                deterministic=True,
            ),
            open_url_stream,
            _tar_samples,
            current,
            ShuffleBuffer(self.shuffle_buffer, seed),
            current,
            self.decode,
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        )
        return _segment(iter(pipeline), in_worker)


RELEASE_EVERY_SAMPLES = 1024


def _segment(batches: Iterator, in_worker: bool) -> Iterator:
    release = _freed_memory_release() if in_worker else None
    since_release = RELEASE_EVERY_SAMPLES  # at the first batch
    for batch in batches:
        if release is not None and since_release >= RELEASE_EVERY_SAMPLES:
            # Freed sample bytes (a shuffle buffer churns through ~50 KB objects; at a new
            # segment, by its first batch, the old one's whole buffer is dropped: torch
            # replaces the worker's iterator after making this one) would stay with glibc,
            # and a worker's resident memory climb for the run.
            release()
            since_release = 0
        since_release += len(batch[0])
        yield batch


def _freed_memory_release() -> Callable[[], object] | None:
    """glibc's malloc_trim(0): freed heap pages handed back to the system (None elsewhere)."""
    try:
        return functools.partial(ctypes.CDLL("libc.so.6").malloc_trim, 0)
    except (OSError, AttributeError):
        return None


def _seed_worker_generators(seed: int) -> None:
    """A worker's global generators (the crops draw from torch's) seeded at each segment: a
    kept worker must draw what a fresh one would. Offset from the seed the shard sampler and
    the shuffle use for their own generators, so no two draw the same sequence."""
    seed = (seed * 2 + 1) % 2**63
    random.seed(seed)
    torch.manual_seed(seed)
    numpy.random.seed(seed % 2**32)


def _while_current(start: SegmentStart, count: int, src: Iterator) -> Iterator:
    # checked before each pull: an ended segment reads nothing more from storage
    items = iter(src)
    while start.is_current(count):
        item = next(items, _END)
        if item is _END:
            return
        yield item


_END = object()


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
    number of samples (sizes.json), and every worker of every rank draws its own sequence.
    Iterating it gives the segment that starts at step 0; ``BatchStream`` moves it on. Its
    workers persist for the loader's life."""
    if workers > 0 and prefetch_batches < 1:
        raise UserError(f"data.prefetch_batches must be at least 1, got {prefetch_batches}")
    context = multiprocessing.get_context(worker_start if workers > 0 else None)
    dataset = SegmentedBatches(
        shard_set,
        DecodePairs(transform, tokenizer),
        batch_size,
        shuffle_buffer,
        seed,
        SegmentStart(context),
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=context if workers > 0 else None,
        prefetch_factor=prefetch_batches if workers > 0 else None,
        # page-locked batches copy to a GPU asynchronously (non_blocking) and faster
        pin_memory=pin_memory,
        worker_init_fn=ignore_sigterm if workers > 0 else None,
        # torch's own worker seeds, from a fixed generator rather than the global one (whose
        # state the run's checkpoints hold: starting the workers must not move it); each
        # segment seeds the workers' generators itself
        generator=torch.Generator().manual_seed(seed),
    )


class BatchStream:
    """The run's batch stream over one loader: ``restart(step)`` starts the segment from
    ``step`` in the same workers (their shuffle buffers refill; nothing is respawned), the
    batches a resumed run starting there sees.

    A restart waits for every worker to begin the new segment, which each does at its next
    sample; when the workers send nothing for ``restart_deadline_s`` (one blocked in a read
    from storage that stopped answering) they are killed and started afresh, as a resumed
    run's would be: the same batches."""

    def __init__(
        self, loader: torch.utils.data.DataLoader, step: int, restart_deadline_s: float = 300.0
    ) -> None:
        self.loader = loader
        self.restart_deadline_s = restart_deadline_s
        self._batches: Iterator | None = None
        self.restart(step)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        return next(self._batches)

    def restart(self, step: int) -> None:
        # the step first: the workers read it when they begin the segment (torch tells them
        # to, in iter(), and discards what they made of the old one)
        dataset = self.loader.dataset
        dataset.start.move_to(step)
        dataset.first_segment = dataset.start.read()  # for workers started from here on
        kept = getattr(self.loader, "_iterator", None)  # a persistent loader's, once started
        if kept is None:
            self._batches = iter(self.loader)
            return
        kept._timeout = self.restart_deadline_s  # torch's wait for each reply, for this only
        try:
            self._batches = iter(self.loader)
        except RuntimeError as err:
            # torch's words for its wait running out; anything else (a worker that died, too
            # many open files) is the loader's own error, as at any other batch
            timed_out = "timed out" in str(err)
            if not timed_out or not all(worker.is_alive() for worker in kept._workers):
                raise
            log.warning(
                "loader workers sent nothing for %g s when asked to begin the segment at "
                "step %d (%s); starting fresh ones",
                self.restart_deadline_s,
                step,
                err,
            )
            _stop_workers(kept, kill=True)
            self.loader._iterator = None  # the next iter() starts new workers
            self._batches = iter(self.loader)
        finally:
            kept._timeout = self.loader.timeout

    def close(self, kill: bool = False) -> None:
        """Stop the loader's workers: asked to finish (torch waits up to 5 s for each, then
        they are killed), or with ``kill`` ended at once."""
        self.loader.dataset.start.end()  # a busy worker stops at its next sample
        # a persistent loader's workers, even where a failed restart left no stream
        old = getattr(self.loader, "_iterator", None)
        if old is None:
            old = self._batches
        self._batches = None
        _stop_workers(old, kill)


def _stop_workers(batches: Iterator | None, kill: bool) -> None:
    """Stop a multi-process DataLoader iterator's workers (others have none)."""
    if kill and getattr(batches, "_worker_pids_set", False):
        # torch's SIGCHLD handler would take the kill for a crash: unregister them first
        # (as its own shutdown does before it stops them)
        from torch.utils.data._utils.signal_handling import _remove_worker_pids

        _remove_worker_pids(id(batches))
        batches._worker_pids_set = False
        for worker in batches._workers:
            worker.kill()
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
        # torch's last resort is SIGTERM, which our workers ignore (it is the trainer's to
        # act on): one still busy, e.g. blocked in a read, is killed instead
        for worker in batches._workers:
            if worker.is_alive():
                worker.kill()
                # a process in uninterruptible sleep (a read from a hung FUSE mount) outlives
                # SIGKILL until its read returns: said, not waited for
                worker.join(timeout=5)
                if worker.is_alive():
                    log.error("loader worker %d outlived SIGKILL (blocked in I/O)", worker.pid)


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
