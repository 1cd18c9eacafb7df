"""The download's final pass, append-only: the samples that failed retryably in the first pass
become a URL list of their own, downloaded into new shards numbered after the first pass's.

Nothing committed is rewritten (at LAION scale a rewrite would re-read and re-write most of the
corpus). A retried sample's row in its first-pass shard keeps ``retryable: true``; its final row
is in a retry shard, with ``retry_of`` naming the first-pass key. So in a shard set whose final
pass ran, a row with ``retryable`` set is superseded, and every other row is final.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from flipcommon.storage import read_bytes, url_join
from pipeline.site_placement import SitePlacement
from pipeline.url_shards import URL_COLUMNS, UrlList, read_url_list, write_url_list

RETRY_FOLDER = "retry_urls"
FINAL_PASS_WAVES = 2  # final-pass shards per task slot
FINAL_PASS_MIN_SAMPLES = 100  # below this a shard costs more in overhead than it spreads
RETRY_COLUMNS = {  # the shard parquet's column -> the URL list's column, and its type
    "SAMPLE_ID": ("SAMPLE_ID", T.LongType()),
    "url": ("URL", T.StringType()),
    "caption": ("TEXT", T.StringType()),
    "LICENSE": ("LICENSE", T.StringType()),
    "NSFW": ("NSFW", T.StringType()),
    "similarity": ("similarity", T.DoubleType()),
    "key": ("retry_of", T.StringType()),
}


SPARK_TYPES = {
    pa.int64(): T.LongType(),
    pa.int32(): T.IntegerType(),
    pa.float64(): T.DoubleType(),
    pa.string(): T.StringType(),
}


def carried_columns(url_list: UrlList) -> dict[str, T.DataType]:
    """The metadata columns a URL list carries beyond its own (``input.save_additional_columns``),
    with their types, from one part's schema: the final pass carries them too."""
    if not url_list.rows:
        return {}
    data = read_bytes(url_list.part_url(url_list.shard_ids[0]))
    schema = pq.read_schema(pa.BufferReader(data))
    own = {*URL_COLUMNS, "retry_of"}
    return {
        f.name: SPARK_TYPES.get(f.type, T.StringType())
        for f in schema
        if f.name not in own and not f.name.startswith("_")
    }


def retryable_rows(
    output_dir: str, names: Iterator[str], carried: tuple[str, ...] = ()
) -> Iterator[tuple]:
    """The retryable failures of the named committed shards, as URL-list rows (executor side),
    their ``carried`` metadata columns last."""
    for name in names:
        data = read_bytes(url_join(output_dir, f"{name}.parquet"))
        table = pq.read_table(pa.BufferReader(data))
        wanted = [*RETRY_COLUMNS, *carried]
        present = [c for c in wanted if c in table.column_names]
        rows = table.select([*present, "retryable"]).to_pylist()
        for row in rows:
            if row["retryable"]:
                yield tuple(row.get(column) for column in wanted)


def final_pass_samples_per_shard(rows: int, samples_per_shard: int, concurrency: int) -> int:
    """The final pass's shard size. Its rows are mostly hosts that did not answer, each holding
    a thread for a whole deadline: cut at the first pass's size, the few shards they fill would
    each hold a task for hours while the other slots idle. Cut so each task slot gets about
    ``FINAL_PASS_WAVES`` shards, never larger than the first pass's."""
    wanted = math.ceil(rows / (FINAL_PASS_WAVES * max(1, concurrency)))
    return min(samples_per_shard, max(FINAL_PASS_MIN_SAMPLES, wanted))


def retry_url_list(
    spark: SparkSession,
    output_dir: str,
    first_pass: dict[str, dict[str, Any]],
    samples_per_shard: int,
    first_shard: int,
    placement: SitePlacement | None = None,
    concurrency: int = 1,
    carried: dict[str, T.DataType] | None = None,
) -> UrlList:
    """The final pass's URL list: reused when complete, else built from the first-pass shards'
    parquet files on the executors (the driver only names the shards that have failures).
    ``samples_per_shard``: the first pass's, the most a final-pass shard holds
    (``final_pass_samples_per_shard``). ``carried``: the first pass's extra metadata columns
    (``carried_columns``), carried into the final pass's samples."""
    path = url_join(output_dir, "_work", RETRY_FOLDER)
    existing = read_url_list(path)
    if existing is not None:
        return existing
    names = sorted(n for n, s in first_pass.items() if s.get("retryable_failures", 0) > 0)
    rows = sum(int(first_pass[n]["retryable_failures"]) for n in names)
    carried = carried or {}
    fields = [*RETRY_COLUMNS.values(), *carried.items()]
    schema = T.StructType([T.StructField(c, t) for c, t in fields])
    context = spark.sparkContext
    tasks = max(1, min(len(names), 4 * context.defaultParallelism))
    extra = tuple(carried)
    rdd = context.parallelize(names, tasks).mapPartitions(
        lambda part: retryable_rows(output_dir, part, extra)
    )
    frame = spark.createDataFrame(rdd, schema)
    per_shard = final_pass_samples_per_shard(rows, samples_per_shard, concurrency)
    if placement is not None:
        placement = replace(placement, samples_per_shard=per_shard)
    return write_url_list(
        frame,
        output_dir,
        rows,
        per_shard,
        folder=RETRY_FOLDER,
        first_shard=first_shard,
        placement=placement,
    )
