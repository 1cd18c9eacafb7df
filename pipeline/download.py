"""Download the URL list into webdataset shards, one Spark task per shard.

img2dataset's Reader cuts the URL list into shards and its Spark distributor runs them; each
task runs our ``ShardDownloader`` (img2dataset's resizer and writer behind our fetch step, see
``pipeline.fetch``). Then a final pass re-fetches the samples that failed retryably. The
SparkSession must already exist (``spark_session.get_spark``): the distributor reuses it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import fsspec
import pyarrow.parquet as pq
from img2dataset.distributor import pyspark_distributor
from img2dataset.reader import Reader
from pyspark.sql import SparkSession

from flipcommon.storage import url_join
from pipeline.config import DownloadConfig, FetchConfig
from pipeline.manifest import read_shard_stats
from pipeline.progress import DownloadProgress
from pipeline.shard_download import (
    BlocklistRef,
    ShardDownloader,
    SitePacing,
    staging_root,
)
from pipeline.shard_retry import ShardRetrier
from pipeline.url_shards import URL_COLUMNS

log = logging.getLogger(__name__)

EXTRA_COLUMNS = [c for c in URL_COLUMNS if c not in ("URL", "TEXT")]
OOM_SHARD_COUNT = 5  # shard names 00000…99999, as img2dataset names them
SUBJOB_SHARDS = 1000  # shards per Spark job; the driver holds only their ids
MAX_SHARD_RETRY = 1  # distributor-level: a whole shard that raised is run once more


def download_shards(
    url_list: str,
    output_dir: str,
    download: DownloadConfig,
    fetch: FetchConfig,
    blocklist: BlocklistRef | None = None,
) -> dict[str, Any]:
    """Download every shard not done yet, then the final retry pass; returns the run's
    progress summary (``pipeline.progress``)."""
    fs, root = fsspec.core.url_to_fs(output_dir)
    fs.makedirs(root, exist_ok=True)
    # What an interrupted run left half-written; committed shards are never in here.
    staging = fsspec.core.url_to_fs(staging_root(output_dir))[1]
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    committed = read_shard_stats(output_dir)  # one read: at 40k shards, 40k small files
    done = {int(name) for name in committed}
    feather_dir = url_join(output_dir, "_work", "feather")
    fs.makedirs(fsspec.core.url_to_fs(feather_dir)[1], exist_ok=True)
    reader = Reader(
        url_list,
        "parquet",
        "URL",
        "TEXT",
        None,
        None,
        list(EXTRA_COLUMNS),
        download.samples_per_shard,
        done,
        feather_dir,
    )
    spark = SparkSession.getActiveSession()
    # The most shard tasks that can run at once: a domain's shards beyond that never overlap.
    pacing = SitePacing(url_list, max(download.processes, spark.sparkContext.defaultParallelism))
    downloader = ShardDownloader(output_dir, download, fetch, OOM_SHARD_COUNT, blocklist, pacing)
    log.info("downloading (%d shards already done)", len(done))
    shards, rows = url_list_size(reader, download.samples_per_shard)
    to_do = rows - sum(int(s["count"]) for s in committed.values())
    with DownloadProgress(output_dir, to_do, download.progress_interval_s) as progress:
        pyspark_distributor(download.processes, downloader, reader, SUBJOB_SHARDS, MAX_SHARD_RETRY)
    missing = shards - len(read_shard_stats(output_dir))
    if missing:
        raise IncompleteDownloadError(
            f"{missing} shard(s) failed twice (see the executor logs for the traceback); "
            "run the stage again: finished shards are kept, these are redone"
        )
    if download.retry_pass:
        retry_failed_samples(output_dir, download, fetch, blocklist, pacing)
    return progress.summary()


class IncompleteDownloadError(RuntimeError):
    pass


def url_list_size(reader: Reader, samples_per_shard: int) -> tuple[int, int]:
    """(shards the Reader cuts from the URL list, per file as it does; rows), from footers."""
    shards = total = 0
    for path in reader.input_files:
        with reader.fs.open(path, "rb") as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        shards += math.ceil(rows / samples_per_shard)
        total += rows
    return shards, total


def retry_failed_samples(
    output_dir: str,
    download: DownloadConfig,
    fetch: FetchConfig,
    blocklist: BlocklistRef | None = None,
    pacing: SitePacing | None = None,
) -> None:
    """Re-fetch, once, every sample that failed with a retryable error, shard by shard."""
    pending = [
        name
        for name, stats in read_shard_stats(output_dir).items()
        if stats.get("retryable_failures", 0) > 0 and "retry_pass" not in stats
    ]
    if not pending:
        return
    log.info("final pass: retrying failed samples of %d shards", len(pending))
    spark = SparkSession.getActiveSession()
    retrier = ShardRetrier(output_dir, download, fetch, blocklist, pacing)
    results = []
    for start in range(0, len(pending), SUBJOB_SHARDS):
        batch = pending[start : start + SUBJOB_SHARDS]
        results += spark.sparkContext.parallelize(batch, len(batch)).map(retrier).collect()
    retried = sum(r["retry_pass"]["retried"] for r in results)
    recovered = sum(r["retry_pass"]["recovered"] for r in results)
    log.info("final pass: %d of %d retried samples recovered", recovered, retried)
