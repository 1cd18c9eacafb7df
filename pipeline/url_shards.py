"""Write the URL list that the downloader shards: one parquet part per shard, exact, stable, and
with each site's URLs kept together.

Rows are grouped by registrable domain (``pipeline.domains``) in runs of about a quarter of a
shard, and the runs are placed by a hash of (domain, run), so a domain's URLs land in as few
shards as its size allows (and no shard is one site's alone when others are there to mix). A
site too large for that under the politeness interval is spread over the whole list, row by
row (``pipeline.site_placement``). Beside the parts, the number of shards each multi-shard
domain touches (its spread) and its URL count are recorded: the download tasks divide the
politeness interval's budget by the spread, which makes the interval a bound for the whole
cluster.

Exact and stable: every row gets its rank in one total order (the sort key ends in the row's
own (SAMPLE_ID, URL, TEXT), unique after dedup), and shard ``first + i`` holds ranks
``[i × samples_per_shard, (i + 1) × samples_per_shard)``. The ranks do not depend on how
Spark partitions the sort, so a rerun with other settings cuts the same shards. Two jobs, both
on the executors: the range-partitioned sort writes sorted runs and returns their lengths; then
one task per shard reads the slice of runs its ranks fall in and writes its part. A marker
(``_url_list.json``) with the counts is written last: a list with its marker is complete and is
reused as it is by a rerun.

The files are written through fsspec, so the output may be any URL fsspec knows (s3://, gs://),
with no Hadoop connector.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from flipcommon.storage import (
    exists,
    read_bytes,
    read_json,
    url_join,
    write_bytes_atomic,
    write_json_atomic,
)
from pipeline.domains import domain_of_url, write_spread
from pipeline.fsspec_io import arrow_schema, reset_folder
from pipeline.site_placement import SitePlacement

URL_COLUMNS = ["SAMPLE_ID", "URL", "TEXT", "LICENSE", "NSFW", "similarity"]
ROW_ORDER = ["SAMPLE_ID", "URL", "TEXT"]  # unique per row once (URL, TEXT) is deduplicated
# _lane 0: kept-together sites' runs; 1: spread sites' rows (each lane sorted on its own, then
# interleaved by rank so every shard holds the same share of spread rows)
# The range key is a prefix of the order: a range bound never falls inside a group that the
# order would sort otherwise, so the bounds (a sample) cannot change the order.
RANGE_KEY = ["_lane", "_order", "_run", "SAMPLE_ID"]
ORDER = [*RANGE_KEY, "_domain", "URL", "TEXT"]
MARKER_FILE = "_url_list.json"
SORTED_RUNS = "_sorted"  # the sort's output, read by the part writers, removed after
RUN_ROWS = 50_000  # rows per sorted run (~15 MB of LAION rows): the sort's partition size
PART_WRITER_THREADS = 16  # a part is a few small requests: a task overlaps many


@F.pandas_udf(T.StringType())
def _registrable_domains(urls: pd.Series) -> pd.Series:
    return urls.map(domain_of_url)


@dataclass(frozen=True)
class UrlList:
    """A complete URL list: shard ``first_shard + i`` is ``part-{first_shard + i:05d}.parquet``.

    ``info``: what the writer recorded beside the counts (the stage keeps its input counts and
    a fingerprint of the settings the list was built with)."""

    path: str
    rows: int
    samples_per_shard: int
    first_shard: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    spread_rows: int = 0  # rows of sites spread over the whole list (the last in rank order)

    def lane_ranks(self, index: int) -> tuple[range, range]:
        """Shard ``first_shard + index``'s rows, as ranks in the sorted runs: a slice of the
        kept-together lane and a slice of the spread lane. Of the first g rows of the list,
        ⌊g × together / rows⌋ are kept-together ones, so each shard holds its exact share of
        both (± 1 row) and exactly ``samples_per_shard`` rows but the last."""
        together = self.rows - self.spread_rows
        low = index * self.samples_per_shard
        high = min(low + self.samples_per_shard, self.rows)

        def kept(g: int) -> int:
            return g * together // self.rows if self.rows else 0

        spread = range(together + low - kept(low), together + high - kept(high))
        return range(kept(low), kept(high)), spread

    @property
    def shards(self) -> int:
        return math.ceil(self.rows / self.samples_per_shard)

    @property
    def shard_ids(self) -> range:
        return range(self.first_shard, self.first_shard + self.shards)

    def part_url(self, shard_id: int) -> str:
        return part_url(self.path, shard_id)


def part_url(path: str, shard_id: int) -> str:
    return url_join(path, f"part-{shard_id:05d}.parquet")


def read_url_list(path: str) -> UrlList | None:
    """The list at ``path`` if its marker says it is complete, else None."""
    marker = url_join(path, MARKER_FILE)
    if not exists(marker):
        return None
    return UrlList(path=path, **read_json(marker))


def domain_ordered(df: DataFrame, placement: SitePlacement) -> DataFrame:
    """``df`` with _domain, _run (a domain's rows cut in runs) and _order (where the row goes).

    A row's run is a hash of the row modulo the domain's run count, not its rank in the domain:
    no window over a domain, so a 20M-URL site is not sorted by one task. Only domains with more
    than one run (at most rows / run_rows of them) reach the driver, as a small broadcast table.
    """
    with_domain = df.withColumn("_domain", _registrable_domains("URL"))
    large = (
        with_domain.groupBy("_domain").count().filter(F.col("count") > placement.run_rows).collect()
    )
    table = [
        (row["_domain"], placement.runs(row["count"]), placement.spread_over_list(row["count"]))
        for row in large
    ]
    schema = "_domain string, _runs long, _spread boolean"
    layout = df.sparkSession.createDataFrame(table, schema)
    # Of the row's id, caption and URL path (not its scheme and authority: the demo serves its
    # corpus on a new port each run, and its rebuilt list must cut the same shards). Null ids
    # or a caption repeated across a site's URLs still differ by path, so they do not clump
    # into one run or one place of the spread lane.
    url_path = F.regexp_replace("URL", r"^[^/]*//[^/]*", "")
    row_hash = F.xxhash64("SAMPLE_ID", "TEXT", url_path)
    spread = F.coalesce(F.col("_spread"), F.lit(False))
    return (
        with_domain.join(F.broadcast(layout), "_domain", "left")
        .withColumn("_run", F.pmod(row_hash, F.coalesce(F.col("_runs"), F.lit(1))))
        # a spread row's place is its own hash: uniform over the list, like the runs' places
        .withColumn("_order", F.when(spread, row_hash).otherwise(F.xxhash64("_domain", "_run")))
        .withColumn("_lane", spread.cast("int"))
        .drop("_runs", "_spread")
    )


def write_url_list(
    df: DataFrame,
    output_dir: str,
    rows: int,
    samples_per_shard: int,
    *,
    folder: str = "urls",
    first_shard: int = 0,
    info: dict[str, Any] | None = None,
    placement: SitePlacement | None = None,
) -> UrlList:
    """Write ``df``'s rows (``rows`` of them) as the URL list under ``<output_dir>/_work/<folder>``:
    parts, domain spread, then the marker. Columns other than ``URL_COLUMNS`` that ``df`` has
    (e.g. the final pass's ``retry_of``) are kept. ``placement``: which sites are spread over
    the whole list (default: none, every site kept together)."""
    path = url_join(output_dir, "_work", folder)
    columns = [*URL_COLUMNS, *[c for c in df.columns if c not in URL_COLUMNS]]
    df = df.select(*columns)
    reset_folder(path)
    schema = arrow_schema(df.schema)
    url_list = UrlList(path, rows, samples_per_shard, first_shard, info or {})
    if rows:
        runs = url_join(path, SORTED_RUNS)
        partitions = math.ceil(rows / max(RUN_ROWS, samples_per_shard))
        placement = placement or SitePlacement(samples_per_shard)
        lengths, spread_rows = _write_sorted_runs(df, runs, partitions, placement, schema)
        if sum(lengths) != rows:
            raise RuntimeError(f"the URL list's sort wrote {sum(lengths)} rows, expected {rows}")
        url_list = dataclasses.replace(url_list, spread_rows=spread_rows)
        spread, urls = _write_parts(df.sparkSession, url_list, runs, lengths, schema)
        write_spread(path, spread, urls)
        fs, runs_path = fsspec.core.url_to_fs(runs)
        fs.rm(runs_path, recursive=True)
    else:
        write_spread(path, {})
    marker = asdict(url_list)
    del marker["path"]
    write_json_atomic(url_join(path, MARKER_FILE), marker)
    return url_list


def batched(items: Iterator, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _run_url(runs: str, index: int) -> str:
    return url_join(runs, f"run-{index:05d}.parquet")


def _write_sorted_runs(
    df: DataFrame, runs: str, partitions: int, placement: SitePlacement, schema: pa.Schema
) -> tuple[list[int], int]:
    """Sort ``df`` into ``partitions`` range partitions, each written as one run file (with its
    _domain column); return every run's length in partition order (0 for an empty one), and
    how many rows are in the spread lane."""
    # Range bounds from the fixed-width prefix of the order: Spark samples its keys to the
    # driver (~3 × 100 per partition), and URL and caption would make that sample ~0.6 GB at
    # LAION-400M. Equal prefixes land in one partition, so the sort inside each still gives
    # one total order.
    ordered = (
        domain_ordered(df, placement)
        .repartitionByRange(partitions, *RANGE_KEY)
        .sortWithinPartitions(*ORDER)
    )
    run_schema = schema.append(pa.field("_domain", pa.string()))

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        index = TaskContext.get().partitionId()
        received = [b for b in batches if b.num_rows]
        length = sum(b.num_rows for b in received)
        spread = 0
        if length:
            table = pa.Table.from_batches(received)
            spread = pc.sum(table.column("_lane")).as_py() or 0
            table = table.select(run_schema.names).cast(run_schema)
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer)
            write_bytes_atomic(_run_url(runs, index), buffer.getvalue().to_pybytes())
        yield pa.RecordBatch.from_pydict({"run": [index], "rows": [length], "spread": [spread]})

    counted = ordered.mapInArrow(write, "run long, rows long, spread long").collect()
    lengths = [0] * partitions
    for row in counted:
        lengths[row["run"]] = row["rows"]
    return lengths, sum(row["spread"] for row in counted)


def _write_parts(
    spark, url_list: UrlList, runs: str, lengths: list[int], schema: pa.Schema
) -> tuple[dict[str, int], dict[str, int]]:
    """Write every shard's part on the executors; return, for each domain in more than one
    shard, how many shards (its spread) and how many URLs. A task writes a contiguous range of
    shards: it reads each run it needs once, whole, and uploads its parts many at once."""
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)

    def write_range(indices: Iterator[int]) -> Iterator[tuple[str, tuple[int, int]]]:
        from multiprocessing.pool import ThreadPool

        # one reader per lane: each reads its runs in ascending order, once
        together, spread = RunReader(runs, starts), RunReader(runs, starts)

        def slice_for(index: int) -> pa.Table:
            kept, spread_ranks = url_list.lane_ranks(index)
            pieces = [together.slice(kept), spread.slice(spread_ranks)]
            return pa.concat_tables([p for p in pieces if p is not None])

        def write(item: tuple[int, pa.Table]) -> list[tuple[str, int]]:
            index, table = item
            buffer = pa.BufferOutputStream()
            pq.write_table(table.select(schema.names), buffer)
            part = url_list.part_url(url_list.first_shard + index)
            write_bytes_atomic(part, buffer.getvalue().to_pybytes())
            counts = table.column("_domain").value_counts().to_pylist()
            return [(c["values"], c["counts"]) for c in counts]

        # In windows of 2 × threads: a pool's imap would slice every part of the task ahead
        # of its writers, holding every run they share.
        with ThreadPool(PART_WRITER_THREADS) as pool:
            for window in batched(indices, 2 * PART_WRITER_THREADS):
                tables = [(index, slice_for(index)) for index in window]
                for domains in pool.imap_unordered(write, tables):
                    yield from ((domain, (1, urls)) for domain, urls in domains)

    context = spark.sparkContext
    shards = url_list.shards
    tasks = min(shards, 4 * context.defaultParallelism)
    multi_shard = (
        context.parallelize(range(shards), tasks)
        .mapPartitions(write_range)
        .reduceByKey(lambda a, b: (a[0] + b[0], a[1] + b[1]))
        .filter(lambda pair: pair[1][0] > 1)
        .collectAsMap()
    )
    spread = {domain: k for domain, (k, _) in multi_shard.items()}
    urls = {domain: n for domain, (_, n) in multi_shard.items()}
    return spread, urls


class RunReader:
    """Slices of the sorted runs by rank, for shards asked in ascending order: each run is read
    once (one request) and dropped when no later shard needs it."""

    def __init__(self, runs: str, starts: list[int]):
        self.runs = runs
        self.starts = starts
        self.cached: dict[int, pa.Table] = {}

    def run(self, index: int) -> pa.Table:
        if index not in self.cached:
            data = read_bytes(_run_url(self.runs, index))
            self.cached[index] = pq.read_table(pa.BufferReader(data))
        return self.cached[index]

    def slice(self, ranks: range) -> pa.Table | None:
        """The rows ranked ``ranks`` (asked in ascending order)."""
        low, high = ranks.start, ranks.stop
        starts = self.starts
        first = max(0, bisect.bisect_right(starts, low) - 1)
        for stale in [r for r in self.cached if r < first]:
            del self.cached[stale]  # slices already handed out keep their own buffers
        pieces = []
        run = first
        while run < len(starts) - 1 and starts[run] < high:
            begin, end = (
                max(low, starts[run]) - starts[run],
                min(high, starts[run + 1]) - starts[run],
            )
            if end > begin:
                pieces.append(self.run(run).slice(begin, end - begin))
            run += 1
        return pa.concat_tables(pieces) if pieces else None
