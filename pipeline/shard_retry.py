"""The download's final pass: re-fetch one committed shard's retryable failures and rewrite
the shard (``ShardRetrier``), and reading a committed shard's tar back."""

from __future__ import annotations

import tarfile
import time
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow.parquet as pq

from flipcommon.storage import url_join
from pipeline.config import DownloadConfig, FetchConfig
from pipeline.fetch import is_retryable
from pipeline.shard_download import (
    ENCODE_FORMAT,
    BlocklistRef,
    ShardWriter,
    SitePacing,
    make_processor,
    process_all,
)


class ShardRetrier:
    """The final pass: re-fetch one committed shard's retryable failures and rewrite it.

    Old successes are copied as they are; the rewritten shard replaces the old one the same
    atomic way, and its stats record that the pass ran, so a rerun does not repeat it.
    """

    def __init__(
        self,
        output_dir: str,
        download: DownloadConfig,
        fetch: FetchConfig,
        blocklist: BlocklistRef | None = None,
        pacing: SitePacing | None = None,
    ):
        self.output_dir = output_dir
        self.download = download
        self.fetch = fetch
        self.blocklist = blocklist
        self.pacing = pacing

    def __call__(self, name: str) -> dict[str, Any]:
        start_time = time.time()
        base = url_join(self.output_dir, name)
        with fsspec.open(base + ".parquet", "rb") as handle:
            table = pq.read_table(handle)
        rows = table.to_pylist()
        retry = [
            (i, r["url"])
            for i, r in enumerate(rows)
            if r["status"] != "success" and (r.get("retryable") or is_retryable(r["error_message"]))
        ]
        processor = make_processor(self.download, self.fetch, self.blocklist, self.pacing)
        stop_at = time.monotonic() + self.download.shard_deadline_s
        fresh = {
            i: (image, result)
            for i, image, result in process_all(retry, processor, self.download.threads, stop_at)
        }
        images = read_tar_images(base + ".tar")
        writer = ShardWriter(self.output_dir, int(name), len(name), table.schema)
        recovered = 0
        for index, row in enumerate(rows):
            if index in fresh:
                image, result = fresh[index]
                recovered += result["status"] == "success"
                # A second retryable failure is final: the pass runs once.
                writer.write(image, {**row, **result, "retryable": False})
            elif row["status"] == "success":
                if row["key"] not in images:
                    raise RuntimeError(f"{base}.tar lacks the image of {row['key']}")
                writer.write(images[row["key"]], row)
            else:
                writer.write(None, row)
        summary = {"retried": len(retry), "recovered": recovered}
        return writer.commit(start_time, {"retry_pass": summary})


def iter_tar_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A shard's samples in tar order, streamed: (key, {extension: bytes}); a sample's members
    sit together in the tar, so a reader may stop after the first few."""
    key, parts = None, {}
    with fsspec.open(url, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name, _, ext = member.name.partition(".")
            if key is not None and name != key:
                yield key, parts
                parts = {}
            key = name
            parts[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, parts


def read_tar_samples(url: str) -> dict[str, dict[str, bytes]]:
    """A shard's samples in tar order: key -> {extension: bytes} (jpg, txt, json)."""
    samples: dict[str, dict[str, bytes]] = {}
    for key, parts in iter_tar_samples(url):
        samples.setdefault(key, {}).update(parts)
    return samples


def read_tar_images(url: str) -> dict[str, bytes]:
    return {k: p[ENCODE_FORMAT] for k, p in read_tar_samples(url).items() if ENCODE_FORMAT in p}
