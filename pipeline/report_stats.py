"""The numbers behind the shard set's report, computed where the shards are read: each Spark
task reads its share of the per-shard parquet files (through fsspec, so any store) and sums them
into fixed-size partial statistics; the driver only merges those. Its memory and time grow with
the number of shards by a few integers each, never with the number of samples or captions.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from flipcommon.storage import read_bytes, url_join
from pipeline.url_shards import batched

SIDE_BINS = np.array([0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 1e9])
CAPTION_BINS = np.array([0, 10, 20, 40, 80, 160, 320, 640, 1e9])
COLUMNS = ["status", "error_message", "retryable", "url", "original_width", "original_height"]
COLUMNS += ["caption"]
KEPT_ERRORS = 200  # distinct error messages a partial keeps (the report shows the top 10)
REASON_CHARS = 80  # a failure reason is its error message, cut to this length
READER_THREADS = 16


@dataclass
class ShardSetStats:
    status: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    side_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SIDE_BINS) - 1, int))
    caption_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(CAPTION_BINS) - 1, int))
    per_shard: dict[str, int] = field(default_factory=dict)  # shard name -> samples kept
    # one failed row per failure reason: reason -> {"url": …, "status": …}
    failure_examples: dict[str, dict[str, str]] = field(default_factory=dict)

    def add_shard(self, name: str, table, superseded_retryable: bool = False) -> None:
        """``superseded_retryable``: the final pass ran, so rows flagged retryable have their
        final row in a retry shard and are left out here."""
        frame = table.to_pandas()
        if superseded_retryable:
            frame = frame[~frame["retryable"].fillna(False).astype(bool)]
        self.status.update(frame["status"].fillna("unknown"))
        failed = frame[frame["status"] != "success"]
        reasons = failed["error_message"].fillna("unknown").str.slice(0, REASON_CHARS)
        self.errors.update(reasons)
        for reason, row in zip(reasons, failed.itertuples(), strict=True):
            self.failure_examples.setdefault(reason, {"url": row.url, "status": row.status})
        ok = frame[frame["status"] == "success"]
        self.per_shard[name] = len(ok)
        sides = np.minimum(ok["original_width"], ok["original_height"]).dropna().to_numpy()
        self.side_hist += np.histogram(sides, SIDE_BINS)[0]
        lengths = frame["caption"].dropna().str.len().to_numpy()
        self.caption_hist += np.histogram(lengths, CAPTION_BINS)[0]

    def merged(self, other: ShardSetStats) -> ShardSetStats:
        errors = self.errors + other.errors
        return ShardSetStats(
            status=self.status + other.status,
            errors=collections.Counter(dict(errors.most_common(KEPT_ERRORS))),
            side_hist=self.side_hist + other.side_hist,
            caption_hist=self.caption_hist + other.caption_hist,
            per_shard={**self.per_shard, **other.per_shard},
            failure_examples={**other.failure_examples, **self.failure_examples},
        )


def stats_of_files(
    output_dir: str, names: Iterator[str], superseded_retryable: bool
) -> Iterator[ShardSetStats]:
    """One partial over the named shards' parquet files (runs on an executor)."""
    from multiprocessing.pool import ThreadPool

    def read(name: str) -> tuple[str, pa.Table]:
        data = read_bytes(url_join(output_dir, f"{name}.parquet"))
        return name, pq.read_table(pa.BufferReader(data), columns=COLUMNS)

    stats = ShardSetStats()
    with ThreadPool(READER_THREADS) as pool:  # small files: overlap the stores' round trips
        for window in batched(names, 2 * READER_THREADS):  # imap alone would read all ahead
            for name, table in pool.imap(read, window):
                stats.add_shard(name, table, superseded_retryable)
    stats.errors = collections.Counter(dict(stats.errors.most_common(KEPT_ERRORS)))
    yield stats


def collect_stats(
    spark: SparkSession, output_dir: str, shards: list[str], superseded_retryable: bool = False
) -> ShardSetStats:
    """The statistics of the named shards (``shards``: names without extension)."""
    if not shards:
        return ShardSetStats()
    context = spark.sparkContext
    partitions = min(len(shards), 4 * context.defaultParallelism)
    return (
        context.parallelize(sorted(shards), partitions)
        .mapPartitions(lambda names: stats_of_files(output_dir, names, superseded_retryable))
        .treeReduce(ShardSetStats.merged)  # merged on the executors, not one by one here
    )
