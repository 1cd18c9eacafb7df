"""Write the URL list that the downloader shards, deterministically and on shared storage.

Rows are range-partitioned by SAMPLE_ID and sorted inside each file, so the same input always
gives the same files, shard ids and keys; the files live under the output URL, where every
executor can read them (never a driver-local path). They are written through fsspec, so the
output may be any URL fsspec knows (s3://, gs://), with no Hadoop connector needed.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame

from flipcommon.storage import url_join
from pipeline.fsspec_io import write_parquet_parts

URL_COLUMNS = ["SAMPLE_ID", "URL", "TEXT", "LICENSE", "NSFW", "similarity"]


def write_url_list(df: DataFrame, output_dir: str, rows: int, rows_per_file: int) -> str:
    path = url_join(output_dir, "_work", "urls")
    files = max(1, math.ceil(rows / rows_per_file))
    ordered = (
        df.select(*URL_COLUMNS)
        .repartitionByRange(files, "SAMPLE_ID", "URL")
        .sortWithinPartitions("SAMPLE_ID", "URL")
    )
    write_parquet_parts(ordered, path)
    return path
