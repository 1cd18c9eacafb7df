"""Download one URL-list part into one webdataset shard, committed atomically.

This takes the place of img2dataset's ``Downloader`` and reuses its Resizer,
WebDatasetSampleWriter, CappedCounter and key scheme. What differs is the input (the task reads
its own part of the URL list, ``pipeline.url_shards``), the fetch step (``pipeline.fetch``), a
decoded-pixel cap checked from the image header before any decoding, a per-shard wall-clock
budget, a ``retryable`` flag per failed sample, and the commit: the stats file, the marker that
a shard is done, is written last and atomically. On local storage the tar and parquet are
written under ``_work/staging`` and renamed into place; an object store publishes an upload only
once it is complete, so there they are written in place (a rename would be a copy and a delete).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import itertools
import logging
import math
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.pool import ThreadPool
from threading import Semaphore
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from img2dataset.blurrer import BoundingBoxBlurrer
from img2dataset.downloader import compute_key
from img2dataset.logger import CappedCounter
from img2dataset.resizer import Resizer
from img2dataset.writer import WebDatasetSampleWriter

from flipcommon.shard_tars import IMAGE_EXTENSION
from flipcommon.storage import (
    exists,
    is_local,
    read_bytes,
    read_json,
    url_join,
    write_json_atomic,
)
from pipeline.blur_boxes import BadBoxes, exif_orientation, parse_boxes, upright_boxes
from pipeline.browser_image import NotAnImage, browser_ready
from pipeline.byte_budget import WAITED_FOR_MEMORY, ByteBudget
from pipeline.config import DownloadConfig, FetchConfig
from pipeline.decontaminate import Blocklist, load_blocklist
from pipeline.domains import domain_of_url, load_site_urls, load_spread
from pipeline.fetch import SHARD_DEADLINE, Fetcher, FetchResult
from pipeline.image_header import declared_size
from pipeline.malloc_tuning import bound_malloc
from pipeline.progress import TaskProgress
from pipeline.resize_bounds import TOO_WIDE_TO_BLUR, blurrable, max_aspect_ratio
from pipeline.robots_txt import ROBOTS_UNREACHABLE, worker_cache
from pipeline.site_placement import seconds_per_shard
from pipeline.site_schedule import PacedOrder
from pipeline.spark_daemon import freeze_imported_objects
from pipeline.task_lanes import executor_lanes_folder, lease_lane, task_partition
from pipeline.task_memory import COMMIT_BYTES
from pipeline.url_shards import UrlList

log = logging.getLogger(__name__)

ENCODE_FORMAT = IMAGE_EXTENSION
# A task of several shards reads up to this many parts ahead and leaves up to this many shards
# committing behind the one it downloads: a small shard's round trips to the store overlap.
IO_AHEAD = 4
SAMPLE_OVERHEAD_BYTES = 4096  # a sample's tar headers, caption and json, about
OOM_SHARD_COUNT = 5  # shard names 00000…99999, as img2dataset names them
# URL-list columns as the shard's parquet names them; as img2dataset's reader does, they come
# after the other columns, caption then url
SHARD_COLUMNS = {"TEXT": "caption", "URL": "url"}
RESULT_FIELDS = [
    pa.field("key", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("retryable", pa.bool_()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("sha256", pa.string()),
]


def shard_name(shard_id: int, oom_shard_count: int) -> str:
    return f"{shard_id:0{oom_shard_count}d}"


def staging_root(output_dir: str) -> str:
    return url_join(output_dir, "_work", "staging")


def pixel_cap_error(size: tuple[int, int] | None, max_pixels: int) -> str | None:
    """Refuse an image whose header declares (``declared_size``) more pixels than the cap,
    before decoding it. Bytes whose size cannot be read here are left to ``browser_ready``,
    which refuses what Pillow cannot size."""
    if size is None:
        return None
    return "too many pixels" if size[0] * size[1] > max_pixels else None


def truncation_error(data: bytes) -> str | None:
    """JPEG and PNG bodies cut short still decode (OpenCV fills the rest with grey); their end
    markers say whether the file is whole. Other formats are left to the decoder.

    In JPEG entropy-coded data a 0xFF byte is always stuffed or a restart marker, so FF D9 near
    the end is the end-of-image marker, not image data."""
    if data[:3] == b"\xff\xd8\xff":
        # EOI; encoders and CMSs sometimes append a little padding or junk after it
        whole = b"\xff\xd9" in data[-1024:]
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        whole = b"IEND" in data[-16:]
    else:
        return None
    return None if whole else "truncated image"


@dataclass
class SampleProcessor:
    """Fetch (I/O, in the task's threads) → checks and resize (CPU, in the task's main thread,
    as img2dataset does: measured faster than decoding in 32 threads on few cores). One per
    task: it owns the task's domain throttle."""

    fetcher: Fetcher
    resizer: Resizer
    download: DownloadConfig  # the pixel cap, and for blurring (download.bbox_col) its bounds
    blocklist: Blocklist | None = None

    def fetch(self, url: str, stop_at: float) -> FetchResult:
        return self.fetcher.fetch(url, stop_at)

    def finish(
        self, fetched: FetchResult, boxes: object = None
    ) -> tuple[bytes | None, dict[str, Any]]:
        """``boxes``: the sample's value of download.bbox_col, when blurring."""
        if fetched.data is None:
            return None, failure("failed_to_download", fetched.error, fetched.retryable)
        size = declared_size(fetched.data)  # the header, read once
        error = truncation_error(fetched.data) or pixel_cap_error(size, self.download.max_pixels)
        if error is not None:
            return None, failure("failed_to_resize", error)
        sha256 = hashlib.sha256(fetched.data).hexdigest()
        if self.blocklist is not None:
            reason = self.blocklist.match(fetched.data, sha256)
            if reason is not None:
                return None, failure("decontaminated", reason)
        blur = None
        if self.download.bbox_col:
            try:
                blur = parse_boxes(boxes)
            except BadBoxes as err:
                return None, failure("failed_to_resize", str(err))
            if blur:  # the stored image's boxes, turned as browser_ready turns the image
                if size is None or not blurrable(self.download, *size):
                    return None, failure("failed_to_resize", TOO_WIDE_TO_BLUR)
                blur = upright_boxes(blur, exif_orientation(fetched.data))
        try:  # what a browser shows: first frame, upright, 8-bit RGB (pipeline.browser_image)
            shown = browser_ready(fetched.data, self.download.max_pixels)
        except NotAnImage:
            # bytes Pillow cannot read have no size we can check: OpenCV could still decode
            # some (HDR, EXR) past the pixel cap, so they are refused, as undecodable
            return None, failure("failed_to_resize", "Image decoding error")
        except ValueError as err:
            return None, failure("failed_to_resize", str(err))
        image, width, height, original_width, original_height, error = self.resizer(
            io.BytesIO(shown), [list(box) for box in blur] if blur else None
        )
        if error is not None:
            if "CV_IO_MAX_IMAGE_PIXELS" in error:  # OpenCV's own limit (pipeline/__init__.py)
                error = "too many pixels"
            return None, failure("failed_to_resize", error)
        return image, {
            "status": "success",
            "error_message": None,
            "retryable": False,
            "width": width,
            "height": height,
            "original_width": original_width,
            "original_height": original_height,
            "sha256": sha256,
        }


def give_up(handle: Any) -> None:
    """Close a file being written without finishing it where the file system can: an object
    store's buffered file (s3fs) aborts its multipart upload and uploads nothing, so no part of
    it reaches its name; a local file is closed (its staging folder goes with the shard)."""
    if handle is None:
        return
    if isinstance(handle, fsspec.spec.AbstractBufferedFile) and handle.mode in ("wb", "ab"):
        handle.discard()
        handle.closed = True  # its buffer is gone: a later close must not try to upload it
        return
    handle.close()


def failure(status: str, reason: str | None, retryable: bool = False) -> dict[str, Any]:
    return {
        "status": status,
        "error_message": reason,
        "retryable": retryable,
        "width": None,
        "height": None,
        "original_width": None,
        "original_height": None,
        "sha256": None,
    }


@dataclass(frozen=True)
class SitePacing:
    """Where the URL list's domain spread is, and how many tasks may run at once: a domain is
    paced at ``per_domain_interval_s × min(spread, concurrency)`` per task."""

    url_list: str | None = None
    concurrency: int = 1

    def multipliers(self) -> dict[str, int]:
        spread = load_spread(self.url_list) if self.url_list else {}
        return {domain: min(k, self.concurrency) for domain, k in spread.items()}

    def slowest_site(self, interval_s: float) -> tuple[str, float] | None:
        """The site a shard waits on longest under this pacing, and for how long."""
        if not self.url_list or interval_s <= 0:
            return None
        spread = load_spread(self.url_list)
        waits = [
            (seconds_per_shard(urls, spread.get(site, 1), interval_s, self.concurrency), site)
            for site, urls in load_site_urls(self.url_list).items()
        ]
        if not waits:
            return None
        seconds, site = max(waits)
        return site, seconds


@dataclass(frozen=True)
class BlocklistRef:
    url: str
    max_distance: int


def make_processor(
    download: DownloadConfig,
    fetch: FetchConfig,
    blocklist: BlocklistRef | None = None,
    pacing: SitePacing | None = None,
    own_sites: frozenset[str] = frozenset(),
    lane: int | None = None,
    robots_scope: str = "",
) -> SampleProcessor:
    """``own_sites``: the sites of the shard's own URLs. One that only this shard holds is
    paced at the interval; a site reached only through a redirect, which any task may reach,
    at the interval × the most tasks at once, like a site spread over every shard. ``lane``:
    the task's place on a shared site's slot grid (``pipeline.task_lanes``; ``DomainThrottle``)."""
    resizer = Resizer(
        image_size=download.image_size,
        resize_mode=download.resize_mode,
        resize_only_if_bigger=False,
        encode_quality=download.encode_quality,
        encode_format=ENCODE_FORMAT,
        max_aspect_ratio=max_aspect_ratio(download),
        # img2dataset's: Gaussian blur of the boxes grown by a tenth of the largest one's
        # diagonal, on the resized image (before a crop or border), as DataComp blurred faces
        blurrer=BoundingBoxBlurrer() if download.bbox_col else None,
    )
    loaded = load_blocklist(blocklist.url, blocklist.max_distance) if blocklist else None
    multipliers = {site: 1 for site in own_sites} | (pacing.multipliers() if pacing else {})
    unknown = pacing.concurrency if pacing else 1
    fetcher = Fetcher(
        fetch,
        pace_multipliers=multipliers,
        unknown_site_multiplier=unknown,
        lane=lane,
        budget=ByteBudget(download.max_bytes_in_flight),
        # robots.txt rules kept across the worker's tasks of one job (``robots_scope``)
        robots=worker_cache(fetch.robots_txt_cache_bytes, robots_scope) if robots_scope else None,
    )
    return SampleProcessor(fetcher, resizer, download, loaded)


@dataclass(frozen=True)
class InTaskRetry:
    """A retryable failure is tried once more in its own task, ``after_s`` after it failed,
    when the task has at least that long plus a whole attempt (``attempt_s``, the fetch
    deadline) still to run anyway: its paced sites' turns, its URLs not yet started — and its
    own site's turns, with the retry's added, end before that too (a retry of the site the
    task waits on would lengthen it by that site's interval). Such a retry costs the task no
    time, and its URL no place in the final pass, which only starts
    when every first-pass shard is done (at 32 nodes, 1.8 h after a 11.6 h first pass in the
    download simulation). A second retryable failure is then final."""

    after_s: float
    attempt_s: float

    def worth_it(self, work_left_s: float, own_site_s: float) -> bool:
        """``own_site_s``: the failed URL's site's turns left in the task, the retry's too."""
        return max(self.after_s, own_site_s) + self.attempt_s <= work_left_s


def process_all(
    urls: list[tuple[int, str]],
    processor: SampleProcessor,
    threads: int,
    stop_at: float,
    retry: InTaskRetry | None = None,
    blur_boxes: Mapping[int, object] | None = None,
) -> Iterator[tuple[int, bytes | None, dict[str, Any]]]:
    """(index, image, result) for every (index, url), in completion order. ``blur_boxes``: each
    index's value of download.bbox_col, when the processor blurs.

    URLs start in their sites' turns (``pipeline.site_schedule``: a paced site's URL when its
    slot comes, the other sites' in between, round-robin). A URL is handed out only when a
    thread is free to start it, so it starts in its turn, not after a queue. At most
    ``2 × threads`` results wait to be written (memory stays flat). Requests still in flight at
    ``stop_at`` end then (their deadline is cut to it), and URLs not started by then: all come
    out as retryable ``shard deadline exceeded`` failures. With ``retry``, a retryable failure
    may start again later in the task (``InTaskRetry``); its result is the second attempt's.
    """
    in_flight = Semaphore(threads * 2)
    idle_threads = Semaphore(threads)
    started: set[int] = set()
    order = PacedOrder(urls, processor.fetcher.throttle, stop_at)
    fetch_seconds: list[float] = []  # of finished fetches, for the time the rest will take
    estimate = [-math.inf, 0.0]  # when work_left_s last looked, and what it found
    retried: dict[int, tuple[str, FetchResult]] = {}  # index -> its URL, first failure

    def feed() -> Iterator[tuple[int, str]]:
        items = iter(order)
        while True:
            in_flight.acquire()
            idle_threads.acquire()
            item = next(items, None)
            if item is None or time.monotonic() >= stop_at:
                idle_threads.release()
                in_flight.release()
                return
            started.add(item[0])
            yield item

    def work(item: tuple[int, str]) -> tuple[int, FetchResult]:
        index, url = item
        began = time.monotonic()
        try:
            return index, processor.fetch(url, stop_at)
        except Exception as err:  # noqa: BLE001 - one sample's bug must not lose the shard
            traceback.print_exc()
            return index, FetchResult(None, f"internal error: {type(err).__name__}")
        finally:
            fetch_seconds.append(time.monotonic() - began)
            idle_threads.release()

    def work_left_s() -> float:
        """The task's time still to run, at least: its slowest site's turns, or its queued
        URLs at the mean fetch time so far. Read at most once a second (it looks at every
        site, and a shard may fail a thousand URLs)."""
        now = time.monotonic()
        if now - estimate[0] >= 1.0:
            mean = sum(fetch_seconds) / len(fetch_seconds) if fetch_seconds else 0.0
            estimate[:] = [now, max(order.paced_time_left(), order.queued() * mean / threads)]
        return estimate[1] - (now - estimate[0])

    def retried_later(index: int, fetched: FetchResult) -> bool:
        if retry is None or not fetched.retryable or index in retried:
            return False
        if fetched.error == SHARD_DEADLINE:
            return False
        url = urls_by_index[index]
        site = domain_of_url(url)
        own_site_s = order.site_time_left(site) + processor.fetcher.throttle.interval_for(site)
        if not retry.worth_it(work_left_s(), own_site_s):
            return False
        if not order.add((index, url), time.monotonic() + retry.after_s):
            return False
        retried[index] = (url, fetched)
        return True

    urls_by_index = dict(urls) if retry is not None else {}
    # no more threads than URLs: starting 64 threads costs ~10 ms, a small shard's whole time
    with ThreadPool(max(1, min(threads, len(urls)))) as pool:
        for index, fetched in pool.imap_unordered(work, feed()):
            if retried_later(index, fetched):
                in_flight.release()
                continue
            if index in retried:
                fetched = second_attempt(retried.pop(index)[1], fetched)
            try:
                boxes = blur_boxes.get(index) if blur_boxes is not None else None
                image, result = processor.finish(fetched, boxes)
            except Exception as err:  # noqa: BLE001 - as above
                traceback.print_exc()
                image, result = (
                    None,
                    failure("failed_to_resize", f"internal error: {type(err).__name__}"),
                )
            finally:
                processor.fetcher.release(fetched)  # its body's bytes, back to the budget
            yield index, image, result
            in_flight.release()
    for index, (_, first) in retried.items():  # put back, but the task ended before its turn
        yield index, None, failure("failed_to_download", first.error, first.retryable)
    for index, _ in urls:
        if index not in started:
            yield index, None, failure("failed_to_download", SHARD_DEADLINE, True)


# Retryable failures that say nothing new about the URL when they come again: the task's end,
# its own memory budget, a site's robots.txt found unreachable earlier in the task (cached):
# a second one leaves the URL to the final pass instead of making its failure final.
NOT_THE_SITES_ANSWER = frozenset({SHARD_DEADLINE, WAITED_FOR_MEMORY, ROBOTS_UNREACHABLE})


def second_attempt(first: FetchResult, second: FetchResult) -> FetchResult:
    """A retried URL's result: the second attempt's, whose retryable failure is final (its URL
    was asked twice, ``InTaskRetry.after_s`` apart) unless the shard's deadline cut it."""
    retryable = second.retryable and second.error in NOT_THE_SITES_ANSWER
    attempts = first.attempts + second.attempts
    return replace(second, retryable=retryable, attempts=attempts)


class ShardWriter:
    """Writes a shard under a staging name and commits it: data files moved, stats last."""

    def __init__(self, output_dir: str, shard_id: int, oom_shard_count: int, schema: pa.Schema):
        self.output_dir = output_dir
        self.name = shard_name(shard_id, oom_shard_count)
        self.staging = None
        folder = output_dir
        if is_local(output_dir):
            self.staging = url_join(staging_root(output_dir), f"{self.name}-{uuid.uuid4().hex[:8]}")
            fs, path = fsspec.core.url_to_fs(self.staging)
            fs.makedirs(path, exist_ok=True)
            folder = self.staging
        self.writer = WebDatasetSampleWriter(
            shard_id, folder, True, oom_shard_count, schema, ENCODE_FORMAT
        )
        self.counts = {
            "count": 0,
            "successes": 0,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "decontaminated": 0,
        }
        self.bytes_written = 0  # about: the tar's images and their headers, caption, json
        self.retryable_failures = 0
        self.retryable_reasons: collections.Counter[str] = collections.Counter()
        self.status = CappedCounter()

    def close_files(self) -> None:
        """Finish the tar and the parquet file. On an object store closing a file is its
        upload: the two go at once (img2dataset's writer would close them one after the other,
        a round trip each)."""
        writer = self.writer
        parts = ("tarwriter", "tar_fd", "buffered_parquet_writer")
        if self.staging is not None or not all(hasattr(writer, p) for p in parts):
            writer.close()  # local files, or an img2dataset whose writer is built otherwise
            return

        def close_tar() -> None:
            writer.tarwriter.close()
            writer.tar_fd.close()

        with ThreadPool(1) as pool:
            tar = pool.apply_async(close_tar)
            try:
                writer.buffered_parquet_writer.close()
            finally:
                tar.get()

    def discard(self) -> None:
        """Drop a shard that failed before its commit: its files are given up and its staging
        folder removed. The shard has no stats file, so the driver reruns it."""
        parquet = getattr(self.writer, "buffered_parquet_writer", None)
        with contextlib.suppress(Exception):  # its footer, into a file about to be dropped
            parquet.parquet_writer.close()  # (else its finaliser writes into a dropped file)
        for handle in (getattr(self.writer, "tar_fd", None), getattr(parquet, "output_fd", None)):
            with contextlib.suppress(Exception):  # best effort: the shard is failing already
                give_up(handle)
        if self.staging is not None:
            fs, path = fsspec.core.url_to_fs(self.staging)
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path, recursive=True)

    def write(self, image: bytes | None, meta: dict[str, Any]) -> None:
        self.writer.write(image, meta["key"], meta.get("caption"), meta)
        self.bytes_written += len(image or b"") + SAMPLE_OVERHEAD_BYTES
        self.counts["count"] += 1
        if meta["status"] == "success":
            self.counts["successes"] += 1
            self.status.increment("success")
        else:
            self.counts[meta["status"]] += 1
            self.status.increment(meta["error_message"])
            if meta["retryable"]:
                self.retryable_failures += 1
                self.retryable_reasons[meta["error_message"]] += 1

    def commit(self, start_time: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self.close_files()
        fs, _ = fsspec.core.url_to_fs(self.output_dir)
        if self.staging is not None:
            for suffix in (".tar", ".parquet"):
                source = url_join(self.staging, self.name + suffix)
                target = url_join(self.output_dir, self.name + suffix)
                fs.mv(fsspec.core.url_to_fs(source)[1], fsspec.core.url_to_fs(target)[1])
        end_time = time.time()
        stats = {
            **self.counts,
            "retryable_failures": self.retryable_failures,
            # what the final pass's retry of these samples supersedes in the error counts
            "retryable_reasons": dict(self.retryable_reasons),
            "duration": end_time - start_time,
            "start_time": start_time,
            "end_time": end_time,
            "status_dict": self.status.dump(),
            **(extra or {}),
        }
        write_json_atomic(url_join(self.output_dir, f"{self.name}_stats.json"), stats)
        if self.staging is not None:
            fs.rm(fsspec.core.url_to_fs(self.staging)[1], recursive=True)
        return stats


def result_schema(input_schema: pa.Schema) -> pa.Schema:
    schema = input_schema
    for result_field in RESULT_FIELDS:
        if result_field.name not in schema.names:
            schema = schema.append(result_field)
    return schema


def read_part(url: str) -> pa.Table:
    """A URL-list part as the shard's input rows: the other columns, then caption and url."""
    table = pq.read_table(io.BytesIO(read_bytes(url)))
    table = table.rename_columns([SHARD_COLUMNS.get(c, c) for c in table.column_names])
    last = list(SHARD_COLUMNS.values())
    return table.select([c for c in table.column_names if c not in last] + last)


class ShardDownloader:
    """Downloads a task's shards of a URL list per call: ``(shard_ids) -> outcomes``, where
    each outcome holds a shard's stats, or the error that stopped it (the driver decides what
    follows, so one broken shard never aborts the job). Picklable: Spark ships it to the
    executors.

    ``final_pass``: the list is the final pass's; a failure there is final (not retryable)."""

    def __init__(
        self,
        output_dir: str,
        url_list: UrlList,
        download: DownloadConfig,
        fetch: FetchConfig,
        blocklist: BlocklistRef | None = None,
        pacing: SitePacing | None = None,
        final_pass: bool = False,
        finished: Any = None,
    ):
        self.output_dir = output_dir
        self.url_list = url_list
        self.finished = finished  # the driver's progress accumulator, if any
        self.download = download
        self.fetch = fetch
        self.blocklist = blocklist
        self.pacing = pacing
        self.final_pass = final_pass

    def __call__(self, shard_ids: list[int]) -> list[dict[str, Any]]:
        """Download a task's shards one after the other. The next shards' parts are read while
        one downloads, and a shard commits while the next ones download (up to ``IO_AHEAD``
        each way, and ``COMMIT_BYTES`` of shards waiting to commit: on an object store a small
        shard's upload holds its whole tar until it completes), so a task of several small
        shards does not wait on a store's round trips between them. The task as a whole keeps
        to ``shard_deadline_s``: a shard it cannot start in time commits its rows as retryable
        failures, for the final pass."""
        freeze_imported_objects()
        bound_malloc()
        if not shard_ids:
            return []
        with lease_lane(executor_lanes_folder(), task_partition(shard_ids[0])) as lane:
            return self.download_task(shard_ids, lane)

    def download_task(self, shard_ids: list[int], lane: int) -> list[dict[str, Any]]:
        """``__call__``'s work, its shards' requests at ``lane``'s places on shared sites."""
        task_stop = time.monotonic() + self.download.shard_deadline_s
        outcomes, shard_ids = self.already_committed(shard_ids)
        to_read = iter(shard_ids)
        reading: collections.deque[tuple[int, Future]] = collections.deque()
        committing: collections.deque[tuple[int, Future, int]] = collections.deque()
        with ThreadPoolExecutor(2 * IO_AHEAD, thread_name_prefix="shard-io") as background:

            def read_ahead() -> None:
                for shard_id in itertools.islice(to_read, IO_AHEAD - len(reading)):
                    part = self.url_list.part_url(shard_id)
                    reading.append((shard_id, background.submit(read_part, part)))

            read_ahead()
            while reading:
                shard_id, part = reading.popleft()
                read_ahead()
                try:
                    writer, commit = self.download_into_writer(
                        shard_id, part.result(), task_stop, lane
                    )
                except Exception as err:  # noqa: BLE001 - the driver reruns the shard
                    outcomes.append(shard_error(shard_id, err))
                    continue
                committing.append((shard_id, background.submit(commit), writer.bytes_written))
                while len(committing) > IO_AHEAD or (
                    len(committing) > 1 and sum(c[2] for c in committing) > COMMIT_BYTES
                ):
                    outcomes.append(committed_outcome(*committing.popleft()[:2]))
            outcomes.extend(committed_outcome(shard_id, c) for shard_id, c, _ in committing)
        return outcomes

    def already_committed(self, shard_ids: list[int]) -> tuple[list[dict[str, Any]], list[int]]:
        """On a retry of the task (its worker died), the shards an earlier attempt committed:
        their outcomes from their stats files, and the shards left to do. A first attempt
        checks nothing (one request per shard saved)."""
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is None or context.attemptNumber() == 0:
            return [], shard_ids
        done, left = [], []
        for shard_id in shard_ids:
            name = shard_name(shard_id, OOM_SHARD_COUNT)
            stats_url = url_join(self.output_dir, f"{name}_stats.json")
            if exists(stats_url):
                done.append({"shard_id": shard_id, "name": name, "stats": read_json(stats_url)})
            else:
                left.append(shard_id)
        return done, left

    def download_shard(self, shard_id: int) -> dict[str, Any]:
        """One shard, start to commit."""
        table = read_part(self.url_list.part_url(shard_id))
        _, commit = self.download_into_writer(shard_id, table, math.inf, shard_id)
        return commit()

    def download_into_writer(
        self, shard_id: int, table: pa.Table, task_stop: float, lane: int
    ) -> tuple[ShardWriter, Callable[[], dict]]:
        """Fetch a shard's samples into its writer, until its deadline or ``task_stop``, at
        ``lane``'s places on shared sites (``pipeline.task_lanes``); returns the writer and
        what commits it (and gives the stats)."""
        start_time = time.time()
        # checked before any file is opened: a list without the column fails the shard
        column = blur_column(table.schema.names, self.download.bbox_col)
        rows = table.to_pylist()
        writer = ShardWriter(
            self.output_dir, shard_id, OOM_SHARD_COUNT, result_schema(table.schema)
        )
        try:
            return self._fill(writer, shard_id, rows, column, task_stop, lane, start_time)
        except BaseException:
            writer.discard()
            raise

    def _fill(
        self,
        writer: ShardWriter,
        shard_id: int,
        rows: list[dict[str, Any]],
        blur_col: str | None,
        task_stop: float,
        lane: int,
        start_time: float,
    ) -> tuple[ShardWriter, Callable[[], dict]]:
        """``download_into_writer``'s fetching and writing, once the writer is open."""
        fetch_start = time.monotonic()
        # the list's, not the config's: keys stay unique if a rerun's config differs
        digits = math.ceil(math.log10(self.url_list.samples_per_shard))
        urls = [(index, row["url"]) for index, row in enumerate(rows)]
        own_sites = frozenset(domain_of_url(url) for _, url in urls)
        processor = make_processor(
            self.download,
            self.fetch,
            self.blocklist,
            self.pacing,
            own_sites,
            lane=lane,
            robots_scope=self.output_dir,
        )
        stop_at = min(time.monotonic() + self.download.shard_deadline_s, task_stop)
        progress = TaskProgress(
            self.output_dir, writer.name, self.download.progress_interval_s, self.finished
        )
        final = {"retryable": False} if self.final_pass else {}
        retry_after = None if self.final_pass else self.download.retry_in_task_after_s
        retry = None if retry_after is None else InTaskRetry(retry_after, self.fetch.deadline_s)
        threads = self.download.threads
        blur = None
        if blur_col is not None:
            blur = {index: row[blur_col] for index, row in enumerate(rows)}
        for index, image, result in process_all(urls, processor, threads, stop_at, retry, blur):
            key = compute_key(index, shard_id, digits, OOM_SHARD_COUNT)
            writer.write(image, {**rows[index], "key": key, **result, **final})
            progress.update(writer.counts, writer.status)
        extra = {"fetch_seconds": round(time.monotonic() - fetch_start, 3)}
        extra |= {"final_pass": True} if self.final_pass else {}

        def commit() -> dict[str, Any]:
            try:
                stats = writer.commit(start_time, extra)
            except BaseException:
                writer.discard()  # the rerun starts clean; no stats file, so it reruns
                raise
            progress.update(writer.counts, writer.status, done=True)
            return stats

        return writer, commit


def blur_column(names: list[str], bbox_col: str | None) -> str | None:
    """The URL list's column of boxes to blur (carried as the metadata names it, in any case;
    None when not blurring). A list without it fails the shard: its images would otherwise be
    written unblurred."""
    if not bbox_col:
        return None
    for name in names:
        if name.lower() == bbox_col.lower():
            return name
    raise ValueError(f"download.bbox_col={bbox_col!r}: the URL list has no such column ({names})")


def shard_error(shard_id: int, err: BaseException) -> dict[str, Any]:
    """A shard that raised: the driver decides what follows (the traceback goes to the
    executor's log), so one broken shard never aborts the job."""
    traceback.print_exception(err)
    name = shard_name(shard_id, OOM_SHARD_COUNT)
    return {"shard_id": shard_id, "name": name, "error": f"{type(err).__name__}: {err}"}


def committed_outcome(shard_id: int, commit: Future) -> dict[str, Any]:
    try:
        stats = commit.result()
    except Exception as err:  # noqa: BLE001 - as above
        return shard_error(shard_id, err)
    return {"shard_id": shard_id, "name": shard_name(shard_id, OOM_SHARD_COUNT), "stats": stats}
