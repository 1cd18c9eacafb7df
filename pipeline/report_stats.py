"""The numbers behind the shard set's report, computed where the shards are read: each Spark
task reads its share of the per-shard parquet files (through fsspec, so any store) and sums them
into fixed-size partial statistics; the driver only merges those. Its memory and time grow with
the number of shards by a few integers each, never with the number of samples or captions.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

SIDE_BINS = np.array([0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 1e9])
CAPTION_BINS = np.array([0, 10, 20, 40, 80, 160, 320, 640, 1e9])
COLUMNS = ["status", "error_message", "url", "original_width", "original_height", "caption"]
KEPT_ERRORS = 200  # distinct error messages a partial keeps (the report shows the top 10)
REASON_CHARS = 80  # a failure reason is its error message, cut to this length


@dataclass
class ShardSetStats:
    status: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    side_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SIDE_BINS) - 1, int))
    caption_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(CAPTION_BINS) - 1, int))
    per_shard: dict[str, int] = field(default_factory=dict)  # shard name -> samples kept
    # one failed row per failure reason: reason -> {"url": …, "status": …}
    failure_examples: dict[str, dict[str, str]] = field(default_factory=dict)

    def add_shard(self, name: str, table) -> None:
        frame = table.to_pandas()
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


def shard_parquet_urls(output_dir: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(output_dir)
    return [fs.unstrip_protocol(p) for p in sorted(fs.glob(f"{root.rstrip('/')}/*.parquet"))]


def stats_of_files(urls: Iterator[str]) -> Iterator[ShardSetStats]:
    """One partial over the parquet files of a Spark partition (runs on an executor)."""
    stats = ShardSetStats()
    for url in urls:
        with fsspec.open(url, "rb") as handle:
            table = pq.read_table(handle, columns=COLUMNS)
        stats.add_shard(url.rsplit("/", 1)[-1].removesuffix(".parquet"), table)
    stats.errors = collections.Counter(dict(stats.errors.most_common(KEPT_ERRORS)))
    yield stats


def collect_stats(spark: SparkSession, output_dir: str) -> ShardSetStats:
    urls = shard_parquet_urls(output_dir)
    if not urls:
        return ShardSetStats()
    context = spark.sparkContext
    partitions = min(len(urls), 4 * context.defaultParallelism)
    return (
        context.parallelize(urls, partitions)
        .mapPartitions(stats_of_files)
        .reduce(ShardSetStats.merged)
    )
