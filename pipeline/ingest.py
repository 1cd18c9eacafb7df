"""Read metadata files of any number and format into one normalised Spark DataFrame.

The driver only plans: rows stay on the executors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from flipcommon.errors import UserError
from pipeline import fsspec_io
from pipeline.config import InputConfig

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
    # LAION-5B's probabilities that the image is unsafe / watermarked (filters.max_punsafe…)
    "punsafe": T.DoubleType(),
    "pwatermark": T.DoubleType(),
}
# What every sample's JSON and the shard's parquet already hold under these names (the
# downloader's fields and the URL list's columns): an extra column may not take one.
SAMPLE_FIELDS = frozenset(
    {"url", "caption", "key", "status", "error_message", "retryable", "width", "height"}
    | {"original_width", "original_height", "sha256", "exif", "retry_of", "final_pass"}
    | {"retryable_reasons", "sample_id", "license", "nsfw", "similarity", "text"}
    | {"image_path", "metadata"}  # what clip-retrieval's writer reads from a sample (explore/)
)
# no leading "_": the pipeline's own working columns (_domain, _lane, _drop_reason…) start so
EXTRA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class MetadataError(UserError, ValueError):
    """Metadata that lacks what the pipeline needs."""


@dataclass(frozen=True)
class MetadataLayout:
    """How a dataset's metadata files are written: their format, the columns holding the URL
    and the caption, and for csv/tsv files without a header row the names of their columns."""

    format: str = "parquet"  # parquet, csv, tsv, json (JSON lines)
    url_col: str = "URL"
    caption_col: str = "TEXT"
    columns: tuple[str, ...] = ()  # headerless csv/tsv: every column's name, in order
    # other normalised columns read from a column of another name: (normalised, theirs)
    renames: tuple[tuple[str, str], ...] = ()

    def sources(self) -> dict[str, str]:
        """Normalised column (lower case) -> the dataset's column (lower case), where named."""
        named = {"url": self.url_col, "text": self.caption_col, **dict(self.renames)}
        return {ours.lower(): theirs.lower() for ours, theirs in named.items()}


# The layouts of the datasets people bring (their published metadata files). LAION-5B's
# punsafe/pwatermark are read under their own names; other columns (DataComp's uid and
# face_bboxes…) only when input.save_additional_columns names them.
# DataComp's similarity is CLIP ViT-L/14's, COYO's ViT-B/32's: a filters.min_similarity
# threshold means what it means for that model.
PRESETS = {
    "laion400m": MetadataLayout("parquet", "URL", "TEXT"),
    "laion5b": MetadataLayout("parquet", "URL", "TEXT"),
    "datacomp": MetadataLayout(
        "parquet",
        "url",
        "text",
        renames=(
            ("similarity", "clip_l14_similarity_score"),
            ("WIDTH", "original_width"),
            ("HEIGHT", "original_height"),
        ),
    ),
    "coyo700m": MetadataLayout(
        "parquet", "url", "text", renames=(("similarity", "clip_similarity_vitb32"),)
    ),
    "cc12m": MetadataLayout("tsv", "url", "caption", ("url", "caption")),
    "cc3m": MetadataLayout("tsv", "url", "caption", ("caption", "url")),
}
FORMATS = ("parquet", "csv", "tsv", "json", "jsonl")


def layout_of(config: InputConfig) -> MetadataLayout:
    """The layout ``input`` names: its preset's, or its own format and columns."""
    own = MetadataLayout(config.format, config.url_col, config.caption_col, tuple(config.columns))
    if config.preset is None:
        return own
    if config.preset not in PRESETS:
        raise MetadataError(f"unknown input.preset {config.preset!r}: use one of {list(PRESETS)}")
    if own != MetadataLayout():
        raise MetadataError(
            "input.preset sets the format and columns: leave input.format, url_col, "
            "caption_col and columns unset, or drop the preset"
        )
    return PRESETS[config.preset]


def carried_columns(extras: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The columns ``input.save_additional_columns`` carries into every sample, as the
    normalised frame names them: a normalised column by its normalised name (``width`` is
    WIDTH, ``punsafe`` punsafe), any other as given. Refuses names that are not plain
    identifiers or that a sample already holds."""
    normalised = {name.lower(): name for name in NORMALISED_COLUMNS}
    carried: list[str] = []
    for name in extras:
        if not EXTRA_NAME.fullmatch(name):
            raise MetadataError(
                f"input.save_additional_columns: {name!r} is not a plain column name "
                "(a letter, then letters, digits and _, up to 64)"
            )
        key = name.lower()
        if key in SAMPLE_FIELDS and key not in ("width", "height"):
            raise MetadataError(
                f"input.save_additional_columns: {name!r} is already in every sample "
                f"(a sample holds {sorted(SAMPLE_FIELDS)})"
            )
        column = normalised.get(key, name)
        if key in ("width", "height"):
            column = f"metadata_{key}"  # the downloader's width/height are the image's own
        if column.lower() in (c.lower() for c in carried):
            raise MetadataError(f"input.save_additional_columns names {name!r} twice")
        carried.append(column)
    return tuple(carried)


def read_metadata(
    spark: SparkSession,
    urls: list[str],
    layout: MetadataLayout | str,
    reader: str = "auto",
    extras: tuple[str, ...] = (),
) -> DataFrame:
    """``layout``: a ``MetadataLayout`` or just a format (LAION's columns). ``reader``:
    ``spark`` (Hadoop's readers: local, hdfs://, s3a:// with its jars …), ``fsspec`` (any
    fsspec URL, read on the executors: ``pipeline.fsspec_io``) or ``auto`` (spark where it
    reads the scheme without extra jars, else fsspec). ``extras``: more of the metadata's
    columns to carry (``input.save_additional_columns``)."""
    layout = MetadataLayout(layout) if isinstance(layout, str) else layout
    carried_columns(extras)
    if not urls:
        raise MetadataError("no metadata given: set input.urls to files or folders")
    if layout.format not in FORMATS:
        raise MetadataError(f"unknown metadata format {layout.format!r}: use one of {FORMATS}")
    if reader not in ("auto", "spark", "fsspec"):
        raise MetadataError(f"unknown metadata reader {reader!r}: use auto, spark or fsspec")
    if layout.columns and layout.format not in ("csv", "tsv"):
        raise MetadataError("input.columns names the columns of csv/tsv files without a header")
    if layout.url_col.lower() == layout.caption_col.lower():
        raise MetadataError("input.url_col and input.caption_col name the same column")
    fmt = "json" if layout.format == "jsonl" else layout.format
    if reader == "spark" or (reader == "auto" and fsspec_io.spark_reads_natively(urls)):
        try:
            frame = _spark_read(spark, urls, fmt, layout.columns)
        except AnalysisException as err:
            if "COLUMN_ALREADY_EXISTS" not in str(err):
                raise
            first_line = str(err).splitlines()[0]
            clash = f"metadata has columns that differ only by case: {first_line}"
            raise MetadataError(clash) from err
        return normalise(frame, layout, extras)
    try:
        files = fsspec_io.list_files(urls, fmt)
    except FileNotFoundError as err:
        raise MetadataError(str(err)) from err
    try:
        present = fsspec_io.file_columns(files[0], fmt, layout.columns)
    except UnicodeDecodeError as err:
        raise MetadataError(
            f"{files[0]}: its column names are not UTF-8 ({err.reason} at byte {err.start}); "
            "re-encode the file as UTF-8, or name the columns with input.columns and drop the "
            "header row"
        ) from err
    _check_required(present, layout, extras)
    sources = layout.sources()
    used = set(sources.values())
    others = [c for c in NORMALISED_COLUMNS if c.lower() not in sources and c.lower() not in used]
    read = {c.lower() for c in [*sources.values(), *NORMALISED_COLUMNS]}
    raw = [e for e in extras if e.lower() not in read]  # the extras no other column reads
    wanted = [*dict.fromkeys(sources.values()), *others, *raw]
    frame = fsspec_io.read_as_strings(spark, files, fmt, wanted, layout.columns)
    return normalise(frame, layout, extras)


def _spark_read(spark: SparkSession, urls: list[str], fmt: str, columns: tuple[str, ...]):
    if fmt == "parquet":
        return spark.read.parquet(*urls)
    if fmt == "tsv":  # as written by the CC3M/CC12M tools: tab-separated, no quoting
        read = spark.read.option("sep", "\t").option("quote", "").option("header", not columns)
        frame = read.csv(*urls)
        return frame.toDF(*columns) if columns else frame
    if fmt == "csv":
        read = spark.read.option("header", not columns).option("multiLine", True)
        frame = read.option("escape", '"').csv(*urls)
        return frame.toDF(*columns) if columns else frame
    return spark.read.json(list(urls))


def _check_required(
    columns: list[str], layout: MetadataLayout, extras: tuple[str, ...] = ()
) -> None:
    read = set(layout.sources().values()) | {c.lower() for c in NORMALISED_COLUMNS}
    spellings: dict[str, list[str]] = {}
    for column in columns:
        spellings.setdefault(column.lower(), []).append(column)
    clashes = [names for key, names in spellings.items() if key in read and len(names) > 1]
    if clashes:
        raise MetadataError(f"metadata has columns that differ only by case: {clashes}")
    lower = set(spellings)
    missing = [c for c in (layout.url_col, layout.caption_col) if c.lower() not in lower]
    if missing:
        raise MetadataError(
            f"metadata lacks column(s) {missing}; it has {columns} "
            "(input.url_col / input.caption_col name the URL's and caption's columns)"
        )
    normalised = {c.lower() for c in NORMALISED_COLUMNS}
    absent = [e for e in extras if e.lower() not in lower and e.lower() not in normalised]
    if absent:
        raise MetadataError(
            f"input.save_additional_columns: metadata lacks {absent}; it has {columns}"
        )


def _clean_text(column: Column) -> Column:
    # Collapse whitespace (captions arrive with newlines and tabs); empty becomes null.
    text = F.trim(F.regexp_replace(column, r"\s+", " "))
    return F.when(F.length(text) > 0, text)


def _positive_int(column: Column) -> Column:
    value = column.cast(T.IntegerType())
    return F.when(value > 0, value)


def _carried(column: Column, data_type: T.DataType) -> Column:
    """An extra column in a type the URL list's parts hold: whole numbers, doubles and text as
    they are, other numbers as doubles, lists, maps and structs as JSON text, the rest as text."""
    if isinstance(data_type, T.DoubleType):  # NaN and infinities are not JSON: null
        return F.when(~(F.isnan(column) | (F.abs(column) == float("inf"))), column)
    if isinstance(data_type, (T.LongType, T.IntegerType, T.StringType)):
        return column
    if isinstance(data_type, T.BinaryType):  # bytes are not text: base64
        return F.base64(column)
    if isinstance(data_type, T.NumericType):
        return column.cast(T.DoubleType())
    if isinstance(data_type, (T.ArrayType, T.MapType, T.StructType)):
        return F.to_json(column)
    return column.cast(T.StringType())


def normalise(
    df: DataFrame, layout: MetadataLayout | None = None, extras: tuple[str, ...] = ()
) -> DataFrame:
    """Map to the normalised schema: the layout's URL and caption columns become URL and
    TEXT, missing optional columns are added, junk values cleaned; ``extras`` (metadata
    columns to carry, ``carried_columns``) follow."""
    layout = layout or MetadataLayout()
    _check_required(df.columns, layout, extras)
    lower = {c.lower(): c for c in df.columns}
    sources = layout.sources()
    used = set(sources.values())

    def col(name: str) -> Column:
        key = name.lower()
        # a column read as another one (caption_col: LICENSE) is not also read as itself
        source = lower.get(sources[key]) if key in sources else None
        if key not in sources and key not in used:
            source = lower.get(key)
        if source is None:
            return F.lit(None).cast(NORMALISED_COLUMNS[name])
        return F.col(f"`{source}`")

    sample_id = col("SAMPLE_ID").cast(T.LongType())
    nsfw = F.upper(F.trim(col("NSFW").cast(T.StringType())))
    similarity = col("similarity").cast(T.DoubleType())

    def probability(name: str) -> Column:
        value = col(name).try_cast(T.DoubleType())  # "n/a" in a csv is null, not an error
        return F.when(value.between(0.0, 1.0), value).alias(name)

    types = {f.name: f.dataType for f in df.schema.fields}
    carried = []
    for name, column in zip(extras, carried_columns(extras), strict=True):
        if name.lower() in ("width", "height"):
            carried.append(_positive_int(col(name.upper())).alias(column))
        elif column not in NORMALISED_COLUMNS:
            source = lower[name.lower()]
            carried.append(_carried(F.col(f"`{source}`"), types[source]).alias(column))
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
        probability("punsafe"),
        probability("pwatermark"),
        *carried,
    )
