"""Spark reading and writing through fsspec, for storage Spark's Hadoop layer cannot reach.

Spark reads ``s3://``, ``gs://`` and friends only with connector jars on its classpath
(hadoop-aws, the GCS connector), which a stock pyspark lacks. Here the driver only lists file
names; executors open each file with fsspec (s3fs, gcsfs …) and stream it in record batches, so
any URL fsspec knows works on any cluster, and no file passes through the driver.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from flipcommon.storage import url_join, write_bytes_atomic

BATCH_ROWS = 65_536
DISCOVERY_ROWS = 1000  # JSON lines: the rows whose keys name a file's columns, when none are asked
CSV_BLOCK_BYTES = 16 << 20  # a block must hold a whole row: captions of up to ~16 MB
SUFFIXES = {
    "parquet": (".parquet",),
    "csv": (".csv",),
    "tsv": (".tsv",),
    "json": (".json", ".jsonl"),
}
# Schemes Spark's Hadoop layer reads without extra jars; the rest go through fsspec.
SPARK_NATIVE_SCHEMES = ("", "file", "hdfs", "s3a", "dbfs", "abfs", "abfss", "wasbs")


def scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else ""


def spark_reads_natively(urls: list[str]) -> bool:
    return all(scheme(u) in SPARK_NATIVE_SCHEMES for u in urls)


def list_files(urls: list[str], fmt: str) -> list[str]:
    """Every metadata file named by ``urls`` (files, or folders searched recursively)."""
    files: list[str] = []
    for url in urls:
        fs, root = fsspec.core.url_to_fs(url)
        if not fs.exists(root):
            raise FileNotFoundError(f"metadata {url} does not exist")
        if fs.isfile(root):
            files.append(url)
            continue
        found = [p for p in sorted(fs.find(root)) if p.endswith(SUFFIXES[fmt])]
        files += [fs.unstrip_protocol(p) for p in found]
    if not files:
        raise FileNotFoundError(f"no {fmt} files under {urls}")
    return files


def _skip_row(row) -> str:
    """A csv/tsv row with too few or too many fields (a stray tab in a caption) is skipped, as
    Spark's reader drops it, instead of failing the whole file."""
    return "skip"


def _batches(
    url: str, fmt: str, columns: tuple[str, ...] = (), text_columns: tuple[str, ...] = ()
) -> Iterator[pa.RecordBatch]:
    """``columns``: a csv/tsv file without a header row, its columns' names; ``text_columns``:
    columns to read as text whatever they look like."""
    with fsspec.open(url, "rb") as handle:
        if fmt == "parquet":
            yield from pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS)
        elif fmt in ("csv", "tsv"):
            if fmt == "csv":
                parse = pa_csv.ParseOptions(newlines_in_values=True)
            else:  # as the CC3M/CC12M tools write it: tabs, no quoting
                parse = pa_csv.ParseOptions(delimiter="\t", quote_char=False)
            parse.invalid_row_handler = _skip_row
            names = list(columns) or None
            read = pa_csv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES)
            # the columns read as text: a caption of digits must not become a number (nor a
            # column of numbers in its first block fail at its first word)
            text = {v for c in (*columns, *text_columns) for v in (c, c.lower(), c.upper())}
            convert = pa_csv.ConvertOptions(
                column_types=dict.fromkeys(text, pa.string()),
                strings_can_be_null=True,  # an empty field is null, as Spark's reader makes it
                check_utf8=False,  # invalid UTF-8 is replaced when read (read_as_strings)
            )
            yield from pa_csv.open_csv(
                handle, read_options=read, parse_options=parse, convert_options=convert
            )
        else:
            # s3fs and friends read a whole block (50 MiB) per line iterated: buffered, ~30 ms
            # a line becomes well under a microsecond
            yield from _json_lines_batches(io.BufferedReader(handle, 1 << 20), text_columns)


def _json_text(value: object) -> str | None:
    """A JSON value as the text column Spark's reader gives for it: strings as they are,
    anything else (numbers, booleans, objects, lists) as compact JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _json_lines_batches(handle, wanted: tuple[str, ...] = ()) -> Iterator[pa.RecordBatch]:
    """JSON lines streamed (memory: one batch of rows and the longest line), every value as
    text. ``wanted``: the columns to read, matched case-insensitively in each row (``URL`` in
    one line, ``url`` in the next); without it, the columns the first ``DISCOVERY_ROWS`` rows
    name. As Spark's reader does, a byte sequence that is not UTF-8 becomes U+FFFD and a line
    that is not a JSON object yields no row, instead of failing the whole file."""
    names: list[str] = list(wanted)
    rows: list[dict] = []

    def batch() -> pa.RecordBatch:
        columns = {}
        for name in names:
            key = name.lower()
            values = [_json_text(row.get(key)) for row in rows]
            columns[name] = pa.array(values, pa.string())
        return pa.RecordBatch.from_pydict(columns)

    for count, raw in enumerate(handle):
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's limit
            continue
        if not isinstance(row, dict):
            continue
        if not wanted and count < DISCOVERY_ROWS:  # the file's columns, as its first rows name them
            known = {name.lower() for name in names}
            for key in row:
                if key.lower() not in known:
                    known.add(key.lower())
                    names.append(key)
        rows.append({k.lower(): v for k, v in row.items()})
        if len(rows) == BATCH_ROWS:
            yield batch()
            rows = []
    if rows:
        yield batch()


def file_columns(url: str, fmt: str, header: tuple[str, ...] = ()) -> list[str]:
    for batch in _batches(url, fmt, header):
        return batch.schema.names
    return list(header)


def _text(column: pa.Array) -> list[str | None]:
    """A column's values as text. Text that is not valid UTF-8 (a csv/tsv read unchecked) gets
    U+FFFD for each bad byte sequence, as Spark's reader gives it, instead of failing the file;
    lists, structs and maps become JSON text, bytes base64, float32 is widened as Spark does."""
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_struct(kind):
        return [
            None if v is None else json.dumps(v, default=str, separators=(",", ":"))
            for v in column.to_pylist()
        ]
    if pa.types.is_map(kind):
        return [
            None if v is None else json.dumps(dict(v), default=str, separators=(",", ":"))
            for v in column.to_pylist()
        ]
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [None if v is None else base64.b64encode(v).decode() for v in column.to_pylist()]
    if pa.types.is_float32(kind) or pa.types.is_float16(kind):
        column = column.cast(pa.float64())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        raw = column.cast(
            pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
        )
        return [None if v is None else v.decode("utf-8", "replace") for v in raw.to_pylist()]
    return column.cast(pa.string()).to_pylist()


def read_as_strings(
    spark: SparkSession,
    files: list[str],
    fmt: str,
    columns: list[str],
    header: tuple[str, ...] = (),
):
    """A DataFrame of ``columns`` (matched case-insensitively, absent ones null) as strings, one
    partition per file; callers cast (``ingest.normalise``). ``header``: csv/tsv files without
    a header row, their columns' names."""

    def rows(url: str) -> Iterator[tuple]:
        for batch in _batches(url, fmt, header, tuple(columns)):
            by_lower = {name.lower(): name for name in batch.schema.names}
            values = []
            for column in columns:
                name = by_lower.get(column.lower())
                if name is None:
                    values.append([None] * batch.num_rows)
                else:
                    values.append(_text(batch.column(name)))
            yield from zip(*values, strict=True)

    schema = T.StructType([T.StructField(c, T.StringType()) for c in columns])
    rdd = spark.sparkContext.parallelize(files, len(files)).flatMap(rows)
    return spark.createDataFrame(rdd, schema)


ARROW_TYPES = {
    T.LongType(): pa.int64(),
    T.IntegerType(): pa.int32(),
    T.DoubleType(): pa.float64(),
    T.StringType(): pa.string(),
}


def arrow_schema(schema: T.StructType) -> pa.Schema:
    """The same columns in Arrow types, so every part file has one schema (an all-null column
    in one partition must not become Arrow's null type)."""
    return pa.schema([(f.name, ARROW_TYPES[f.dataType]) for f in schema.fields])


def reset_folder(url: str) -> None:
    """An empty folder at ``url``, replacing what was there."""
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)


def write_part(url: str, index: int, table: pa.Table) -> None:
    """``part-NNNNN.parquet`` under ``url``, atomically (names sort in partition order)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(url_join(url, f"part-{index:05d}.parquet"), buffer.getvalue())


def write_parquet_parts(df: DataFrame, url: str) -> int:
    """Write each partition of ``df`` as ``part-NNNNN.parquet`` under ``url`` (replacing what
    was there), in partition order, each file atomic. Returns the number of files written.

    Partitions arrive as Arrow record batches (``mapInArrow``), so rows never become Python
    objects on the executors."""
    reset_folder(url)
    schema = arrow_schema(df.schema)

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        received = list(batches)
        if not received or not sum(b.num_rows for b in received):
            return
        table = pa.Table.from_batches(received).cast(schema)
        write_part(url, TaskContext.get().partitionId(), table)
        yield pa.RecordBatch.from_pydict({"files": [1]})

    written = df.mapInArrow(write, "files long").collect()
    return len(written)
