"""Read metadata files of any number and format into one normalised Spark DataFrame.

The driver only plans: rows stay on the executors.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from flipcommon.errors import UserError
from pipeline import fsspec_io

# The columns every later step relies on, with LAION-400M's names.
NORMALISED_COLUMNS = {
    "SAMPLE_ID": T.LongType(),
    "URL": T.StringType(),
    "TEXT": T.StringType(),
    "HEIGHT": T.IntegerType(),
    "WIDTH": T.IntegerType(),
    "LICENSE": T.StringType(),
    "NSFW": T.StringType(),
    "similarity": T.DoubleType(),
    "LANGUAGE": T.StringType(),  # ISO 639-1, when the metadata has it (LAION-2B-multi)
}
REQUIRED_COLUMNS = ("URL", "TEXT")


class MetadataError(UserError, ValueError):
    """Metadata that lacks what the pipeline needs."""


def read_metadata(
    spark: SparkSession, urls: list[str], fmt: str, reader: str = "auto"
) -> DataFrame:
    """``reader``: ``spark`` (Hadoop's readers: local, hdfs://, s3a:// with its jars …),
    ``fsspec`` (any fsspec URL, read on the executors: ``pipeline.fsspec_io``) or ``auto``
    (spark where it reads the scheme without extra jars, else fsspec)."""
    if not urls:
        raise MetadataError("no metadata given: set input.urls to files or folders")
    if fmt not in ("parquet", "csv", "json", "jsonl"):
        raise MetadataError(f"unknown metadata format {fmt!r}: use parquet, csv or json")
    if reader not in ("auto", "spark", "fsspec"):
        raise MetadataError(f"unknown metadata reader {reader!r}: use auto, spark or fsspec")
    fmt = "json" if fmt == "jsonl" else fmt
    if reader == "spark" or (reader == "auto" and fsspec_io.spark_reads_natively(urls)):
        return normalise(_spark_read(spark, urls, fmt))
    try:
        files = fsspec_io.list_files(urls, fmt)
    except FileNotFoundError as err:
        raise MetadataError(str(err)) from err
    present = fsspec_io.file_columns(files[0], fmt)
    _check_required(present)
    return normalise(fsspec_io.read_as_strings(spark, files, fmt, list(NORMALISED_COLUMNS)))


def _spark_read(spark: SparkSession, urls: list[str], fmt: str) -> DataFrame:
    if fmt == "parquet":
        return spark.read.parquet(*urls)
    if fmt == "csv":
        return (
            spark.read.option("header", True)
            .option("multiLine", True)
            .option("escape", '"')
            .csv(*urls)
        )
    return spark.read.json(list(urls))


def _check_required(columns: list[str]) -> None:
    lower = {c.lower() for c in columns}
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in lower]
    if missing:
        raise MetadataError(f"metadata lacks column(s) {missing}; it has {columns}")


def _clean_text(column: Column) -> Column:
    # Collapse whitespace (captions arrive with newlines and tabs); empty becomes null.
    text = F.trim(F.regexp_replace(column, r"\s+", " "))
    return F.when(F.length(text) > 0, text)


def _positive_int(column: Column) -> Column:
    value = column.cast(T.IntegerType())
    return F.when(value > 0, value)


def normalise(df: DataFrame) -> DataFrame:
    """Map to the normalised schema: add missing optional columns, clean junk values."""
    _check_required(df.columns)
    lower = {c.lower(): c for c in df.columns}

    def col(name: str) -> Column:
        source = lower.get(name.lower())
        if source is None:
            return F.lit(None).cast(NORMALISED_COLUMNS[name])
        return F.col(f"`{source}`")

    sample_id = col("SAMPLE_ID").cast(T.LongType())
    nsfw = F.upper(F.trim(col("NSFW").cast(T.StringType())))
    similarity = col("similarity").cast(T.DoubleType())
    return df.select(
        sample_id.alias("SAMPLE_ID"),
        F.trim(col("URL").cast(T.StringType())).alias("URL"),
        _clean_text(col("TEXT").cast(T.StringType())).alias("TEXT"),
        _positive_int(col("HEIGHT")).alias("HEIGHT"),
        _positive_int(col("WIDTH")).alias("WIDTH"),
        col("LICENSE").cast(T.StringType()).alias("LICENSE"),
        F.when(nsfw.isin("UNLIKELY", "UNSURE", "NSFW"), nsfw).alias("NSFW"),
        # CLIP cosine similarity lies in [-1, 1]; LAION ships junk values up to 6016.
        F.when(similarity.between(-1.0, 1.0), similarity).alias("similarity"),
        _clean_text(F.lower(col("LANGUAGE").cast(T.StringType()))).alias("LANGUAGE"),
    )
