"""Read metadata files of any number and format into one normalised Spark DataFrame.

The driver only plans: rows stay on the executors.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

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
}
REQUIRED_COLUMNS = ("URL", "TEXT")


class MetadataError(ValueError):
    """Metadata that lacks what the pipeline needs."""


def read_metadata(spark: SparkSession, urls: list[str], fmt: str) -> DataFrame:
    if not urls:
        raise MetadataError("no metadata given: set input.urls to files or folders")
    reader = spark.read
    if fmt == "parquet":
        df = reader.parquet(*urls)
    elif fmt == "csv":
        df = (
            reader.option("header", True).option("multiLine", True).option("escape", '"').csv(*urls)
        )
    elif fmt in ("json", "jsonl"):
        df = reader.json(list(urls))
    else:
        raise MetadataError(f"unknown metadata format {fmt!r}: use parquet, csv or json")
    return normalise(df)


def _clean_text(column: Column) -> Column:
    # Collapse whitespace (captions arrive with newlines and tabs); empty becomes null.
    text = F.trim(F.regexp_replace(column, r"\s+", " "))
    return F.when(F.length(text) > 0, text)


def _positive_int(column: Column) -> Column:
    value = column.cast(T.IntegerType())
    return F.when(value > 0, value)


def normalise(df: DataFrame) -> DataFrame:
    """Map to the normalised schema: add missing optional columns, clean junk values."""
    lower = {c.lower(): c for c in df.columns}
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in lower]
    if missing:
        raise MetadataError(f"metadata lacks column(s) {missing}; it has {df.columns}")

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
    )
