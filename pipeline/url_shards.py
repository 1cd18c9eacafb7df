"""Write the URL list that the downloader shards, deterministically, on shared storage, with
each site's URLs kept together.

Rows are grouped by registrable domain (``pipeline.domains``) in runs of at most a quarter of a
shard, and the runs are placed by a hash of (domain, run), so a domain's URLs land in as few
shards as its size allows, while a large domain is cut into runs spread over the whole list
(and no shard is one site's alone when others are there to mix). Beside the files, the number
of shards each multi-shard domain touches (its spread) is recorded: the download tasks divide
the politeness interval's budget by it, which makes the interval a bound for the whole cluster.

The same input always gives the same files, shard ids and keys. The files are written through
fsspec, so the output may be any URL fsspec knows (s3://, gs://), with no Hadoop connector.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from flipcommon.storage import url_join
from pipeline.domains import domain_of_url, write_spread
from pipeline.fsspec_io import arrow_schema, reset_folder, write_part

URL_COLUMNS = ["SAMPLE_ID", "URL", "TEXT", "LICENSE", "NSFW", "similarity"]
MAX_DOMAIN_SHARE = 0.25  # the longest run of one domain, as a fraction of a shard
ORDER = ["_order", "_domain", "_run", "SAMPLE_ID", "URL"]


@F.pandas_udf(T.StringType())
def _registrable_domains(urls: pd.Series) -> pd.Series:
    return urls.map(domain_of_url)


def domain_ordered(df: DataFrame, samples_per_shard: int) -> DataFrame:
    """``df`` with _domain, _run (a domain's rows cut in runs) and _order (where the run goes)."""
    run_rows = max(1, int(samples_per_shard * MAX_DOMAIN_SHARE))
    within_domain = Window.partitionBy("_domain").orderBy("SAMPLE_ID", "URL")
    return (
        df.withColumn("_domain", _registrable_domains("URL"))
        .withColumn("_run", F.floor((F.row_number().over(within_domain) - 1) / run_rows))
        .withColumn("_order", F.xxhash64("_domain", "_run"))
    )


def write_url_list(df: DataFrame, output_dir: str, rows: int, samples_per_shard: int) -> str:
    """The URL list's parquet parts (about one shard each) and its domain spread file under
    ``<output_dir>/_work/urls``; returns that folder."""
    path = url_join(output_dir, "_work", "urls")
    files = max(1, math.ceil(rows / samples_per_shard))
    ordered = (
        domain_ordered(df.select(*URL_COLUMNS), samples_per_shard)
        .repartitionByRange(files, *ORDER)
        .sortWithinPartitions(*ORDER)
    )
    reset_folder(path)
    schema = arrow_schema(df.select(*URL_COLUMNS).schema)

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Write the partition's URL columns; yield each (domain, shard) it holds, where the
        downloader's reader cuts every file into shards of ``samples_per_shard`` rows."""
        from pyspark import TaskContext

        received = list(batches)
        if not received or not sum(b.num_rows for b in received):
            return
        table = pa.Table.from_batches(received)
        part = TaskContext.get().partitionId()
        write_part(path, part, table.select(URL_COLUMNS).cast(schema))
        domains = table.column("_domain").to_pylist()
        touched = sorted({(d, i // samples_per_shard) for i, d in enumerate(domains)})
        yield pa.RecordBatch.from_pydict(
            {
                "domain": [d for d, _ in touched],
                "part": [part] * len(touched),
                "shard": [s for _, s in touched],
            }
        )

    touched = ordered.mapInArrow(write, "domain string, part long, shard long")
    spread = touched.groupBy("domain").count().where("count > 1").collect()
    write_spread(path, {row["domain"]: int(row["count"]) for row in spread})
    return path
