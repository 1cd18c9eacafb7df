"""The most memory one download task (one Spark Python worker) takes, from its config: what an
executor's memory overhead must hold for each of its cores.

Each part is bounded by the code and sized by a measurement (docs/benchmarks.md, "One download
task's memory"; tests/test_task_memory.py checks a task's peak against the sum on the worst
inputs):

- the worker and its imports: img2dataset's writer and resizer bring OpenCV, pyarrow and
  (through webdataset and albumentations) torch; measured resident after the imports, rounded
  up. About 370 MiB of it is the worker's own; the rest are pages of the shared libraries
  (torch's CUDA libraries: 3 GB mapped), 285-523 MiB measured: the more of those files the page
  cache holds, the more pages the kernel maps around each one touched, so a fresh install reads
  highest. They are clean and shared, yet YARN's process-tree monitor (EMR, Dataproc) counts
  them in every worker's resident size, so they are counted per task here;
- response bodies held (fetched, not yet written): ``download.max_bytes_in_flight``, a budget
  the task's threads take from (``pipeline.byte_budget``), twice over: a body's chunks and
  their joined copy exist together for a moment;
- decoding one image (the task decodes one at a time): at most ``download.max_pixels`` ×
  ``DECODE_BYTES_PER_PIXEL``, the worst measured of the formats a browser shows (lossless WebP
  with alpha: 32.1 bytes per pixel from bytes to resized JPEG; RGBA PNG 24, CMYK or
  EXIF-rotated JPEG 12, plain JPEG 6);
- shards being written: on an object store s3fs buffers the tar in 50 MiB blocks and copies a
  block as it uploads it; a task of small shards keeps up to ``COMMIT_BYTES`` of them waiting
  to commit (``pipeline.shard_download``); and the shard's rows as Python objects;
- blurring boxes (``download.bbox_col``): img2dataset's blurrer works in float32 on the
  resized image, ``BLUR_BYTES_PER_PIXEL`` of its most pixels
  (``pipeline.resize_bounds.largest_blurred_pixels``);
- robots.txt: a body being read per thread (``fetch.robots_txt_max_bytes``), two parsed at
  once (``HELD_BYTES_PER_BYTE`` × its size each) and the rules kept
  (``fetch.robots_txt_cache_bytes``).
"""

from __future__ import annotations

from flipcommon.config import ConfigError
from pipeline.config import DownloadConfig, FetchConfig
from pipeline.resize_bounds import largest_blurred_pixels
from pipeline.robots_txt import HELD_BYTES_PER_BYTE, PARSES_AT_ONCE

# measured resident after the imports: 650-892 MiB (369 private), the highest on a fresh install
WORKER_IMPORTS_BYTES = 1024 << 20
DECODE_BYTES_PER_PIXEL = 33
BLUR_BYTES_PER_PIXEL = 77  # img2dataset's blurrer, measured 76.4 on a 4 Mpx RGB image
S3_UPLOAD_BLOCK_BYTES = 50 << 20  # s3fs's default block
COMMIT_BYTES = 128 << 20  # at most this much of a task's shards waiting to commit (beside one)
ROWS_BYTES = 32 << 20  # a 10,000-row shard's rows as Python dicts, rounded up


class TaskMemoryError(ConfigError):
    pass


def task_memory(download: DownloadConfig, fetch: FetchConfig) -> dict[str, int]:
    """Bytes by part; their sum is one task's most."""
    parts = {
        "worker and its imports": WORKER_IMPORTS_BYTES,
        # a body's chunks and their joined copy live together for a moment
        "response bodies held (2 x download.max_bytes_in_flight)": 2 * download.max_bytes_in_flight,
        "decoding one image (download.max_pixels)": DECODE_BYTES_PER_PIXEL * download.max_pixels,
        "shards being written (upload blocks, or small shards waiting to commit)": max(
            2 * S3_UPLOAD_BLOCK_BYTES, COMMIT_BYTES
        )
        + ROWS_BYTES,
    }
    if download.bbox_col:
        parts["blurring boxes (download.bbox_col)"] = BLUR_BYTES_PER_PIXEL * largest_blurred_pixels(
            download
        )
    if fetch.robots_txt:
        parts["robots.txt being read and parsed (fetch.robots_txt_max_bytes)"] = (
            download.threads + PARSES_AT_ONCE * HELD_BYTES_PER_BYTE
        ) * fetch.robots_txt_max_bytes
        parts["robots.txt rules kept (fetch.robots_txt_cache_bytes)"] = fetch.robots_txt_cache_bytes
    return parts


def check_task_memory(download: DownloadConfig, fetch: FetchConfig) -> None:
    """The budget must hold a compressed body at the byte cap beside its decoded copy, or such
    a body could never be read; a mode that scales the shorter side to image_size needs room
    for at least a square of it under the pixel cap (``shard_download.max_aspect_ratio``)."""
    if download.bbox_col and download.resize_mode == "no":
        raise TaskMemoryError(
            "download.bbox_col with download.resize_mode=no would blur each image at the size it "
            "came (img2dataset's blurrer: 77 bytes per pixel, a kernel a fifth of the box): "
            "choose a resize mode"
        )
    square = download.image_size**2
    if download.resize_mode in ("keep_ratio", "center_crop") and square > download.max_pixels:
        raise TaskMemoryError(
            f"download.resize_mode={download.resize_mode} at download.image_size="
            f"{download.image_size} makes every image at least {square} pixels, past "
            f"download.max_pixels={download.max_pixels}: raise max_pixels or lower image_size"
        )
    if download.max_bytes_in_flight < 2 * fetch.max_bytes:
        raise TaskMemoryError(
            f"download.max_bytes_in_flight={download.max_bytes_in_flight} is below twice "
            f"fetch.max_bytes={fetch.max_bytes}: a compressed body at the cap and its decoded "
            "copy could never be held"
        )


def describe(download: DownloadConfig, fetch: FetchConfig) -> str:
    parts = task_memory(download, fetch)
    lines = [f"  {name}: {size / 2**20:,.0f} MiB" for name, size in parts.items()]
    total = sum(parts.values())
    return f"one download task holds at most {total / 2**30:.2f} GiB:\n" + "\n".join(lines)
