"""The pipeline stage: metadata → rule filters + dedup → URL list → download → manifest."""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, replace

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flipcommon.shard_set import MANIFEST_FILE, read_manifest, sizes_url
from flipcommon.storage import absolute, exists, remove_folder, remove_if_exists, url_join
from pipeline import filters, ingest, manifest, url_shards
from pipeline.config import DemoConfig, PipelineConfig
from pipeline.decontaminate import build_blocklist
from pipeline.download import download_shards
from pipeline.manifest import committed_shard_names
from pipeline.shard_download import BlocklistRef
from pipeline.shard_retry import RETRY_FOLDER
from pipeline.site_placement import SitePlacement
from pipeline.spark_session import get_spark
from pipeline.task_memory import check_task_memory
from pipeline.task_memory import describe as describe_task_memory

# (metadata files, their layout) per source: the user's metadata, the demo's
Groups = list[tuple[list[str], "ingest.MetadataLayout | str"]]
log = logging.getLogger(__name__)


@contextlib.contextmanager
def demo_metadata(config: DemoConfig) -> Iterator[tuple[list[str], str]]:
    """Build (or reuse) the demo corpus, serve it on loopback, yield its metadata files and the
    server's origin (the one non-public origin the download may fetch from)."""
    from pipeline.demo import corpus, web

    cache = corpus.build_corpus(
        corpus.CorpusSpec(config.cache_dir, limit_per_source=config.limit_per_source)
    )
    rates = web.FaultRates(**config.fault_rates) if config.fault_rates else web.FaultRates()
    with (
        web.DemoWeb(cache / "images", rates, config.hang_seconds) as demo_web,
        tempfile.TemporaryDirectory(prefix="demo-metadata-") as tmp,
    ):
        path = f"{tmp}/demo.parquet"
        rows = corpus.write_laion_metadata(corpus.load_items(cache), demo_web.base_url, path)
        log.info("demo web serving %d images at %s", rows, demo_web.base_url)
        yield [path], demo_web.base_url


def allowing_origin(config: PipelineConfig, origin: str) -> PipelineConfig:
    """A copy of ``config`` whose SSRF guard lets ``origin`` through (the demo's own server on
    loopback), and no other address of its network."""
    fetch = replace(config.fetch, allowed_origins=[*config.fetch.allowed_origins, origin])
    return replace(config, fetch=fetch)


def with_absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """A copy of ``config`` whose local paths are absolute: Spark executors resolve a relative
    path against their own working directory (a worker's ``work/app-…/N/``), not the driver's."""
    clip = config.clip_score
    checkpoint = clip.checkpoint
    if checkpoint.startswith("open_clip:") and "@" in checkpoint:
        name, weights = checkpoint.split("@", 1)
        checkpoint = f"{name}@{absolute(weights)}"
    elif checkpoint:
        checkpoint = absolute(checkpoint)
    return replace(
        config,
        output_dir=absolute(config.output_dir),
        input=replace(config.input, urls=[absolute(u) for u in config.input.urls]),
        demo=replace(config.demo, cache_dir=absolute(config.demo.cache_dir)),
        decontamination=replace(
            config.decontamination,
            sources=[absolute(u) for u in config.decontamination.sources],
        ),
        clip_score=replace(clip, output_dir=absolute(clip.output_dir), checkpoint=checkpoint),
    )


def run(config: PipelineConfig, spark: SparkSession | None = None) -> dict:
    """Build the shard set in ``config.output_dir`` (then its CLIP-score filtered copy, if
    enabled); return the shard set's manifest."""
    config = with_absolute_paths(config)
    check_task_memory(config.download, config.fetch)
    if config.clip_score.enabled:  # its mistakes surface now, not after the download
        from pipeline.clip_score import check_config

        check_config(config.clip_score)
    manifest = read_manifest(config.output_dir)
    if manifest is not None:
        log.info("%s is complete (%s present)", config.output_dir, MANIFEST_FILE)
    else:
        spark = spark or get_spark(config.spark)
        log.info("Spark master: %s", spark.sparkContext.master)
        log.info(describe_task_memory(config.download, config.fetch))
        with contextlib.ExitStack() as stack:
            # (files, format) groups: the user's metadata in its format, the demo's as parquet
            user = [(list(config.input.urls), ingest.layout_of(config.input))]
            groups = user if config.input.urls else []
            if config.demo.enabled:
                paths, origin = stack.enter_context(demo_metadata(config.demo))
                groups.append((paths, "parquet"))
                config = allowing_origin(config, origin)
            manifest = build_shard_set(spark, config, groups)
    if config.clip_score.enabled:
        from pipeline.clip_score import run_clip_score  # torch only when the filter is on

        scoring = replace(  # the caller's config stays as given
            config.clip_score,
            output_dir=config.clip_score.output_dir or config.output_dir.rstrip("/") + "-clip",
        )
        filtered = run_clip_score(spark or get_spark(config.spark), config.output_dir, scoring)
        log.info("CLIP-score filtered set %s: %s", scoring.output_dir, filtered["counts"])
    return manifest


class UrlListMismatchError(ValueError):
    """The output folder's URL list was built from other inputs or settings."""


def layout_fingerprint(layout: ingest.MetadataLayout) -> dict:
    """The metadata's layout as a URL list's fingerprint holds it: its format, and its columns
    where they are not LAION's (a list built before presets existed stays reusable)."""
    columns = {"url_col": layout.url_col, "caption_col": layout.caption_col}
    columns["columns"] = list(layout.columns)  # as JSON gives it back
    laion = ingest.MetadataLayout()
    laion = {"url_col": laion.url_col, "caption_col": laion.caption_col, "columns": []}
    return {"format": layout.format} | ({"columns": columns} if columns != laion else {})


def carried_extras(config: PipelineConfig) -> tuple[str, ...]:
    """The metadata columns carried into every sample: input.save_additional_columns, and
    download.bbox_col (the boxes each sample's task blurs) unless already among them."""
    extras = tuple(config.input.save_additional_columns)
    bbox = config.download.bbox_col
    if bbox and bbox.lower() not in (name.lower() for name in extras):
        extras += (bbox,)
    return extras


def url_list_fingerprint(config: PipelineConfig, sources: list[str]) -> dict:
    """What a URL list depends on: a rerun with other values must not reuse it."""
    # filters added since lists were first written count only when set: an older list stays
    # reusable
    later = ("max_punsafe", "max_pwatermark")
    rules = {k: v for k, v in asdict(config.filters).items() if k not in later or v}
    extras = {"extra_columns": list(carried_extras(config))}
    return {
        "sources": sources,
        **layout_fingerprint(ingest.layout_of(config.input)),
        "filters": rules,
        "samples_per_shard": config.download.samples_per_shard,
        **(extras if carried_extras(config) else {}),
        # a list reused with blurring switched on or off would mix blurred and unblurred shards
        **({"bbox_col": config.download.bbox_col} if config.download.bbox_col else {}),
    }


def build_url_list(
    spark: SparkSession, config: PipelineConfig, groups: Groups
) -> url_shards.UrlList:
    """Metadata → rule filters → dedup → the URL list, with the input counts in its marker."""
    extras = carried_extras(config)
    frames = [
        ingest.read_metadata(spark, urls, fmt, config.input.reader, extras) for urls, fmt in groups
    ]
    metadata = functools.reduce(lambda a, b: a.unionByName(b), frames)
    sources = [url for urls, _ in groups for url in urls]
    kept, drops = filters.apply_rules(metadata, filters.build_rules(config.filters))
    rows_in = sum(drops.values())
    passed = drops.pop("_kept")
    unique = deduplicated(kept, ingest.carried_columns(extras)).cache()
    sent = unique.count()
    log.info(
        "rows in %d, filtered %s, duplicates %d, to download %d",
        rows_in,
        drops,
        passed - sent,
        sent,
    )
    counts = {"rows_in": rows_in, "filters": drops, "duplicates": passed - sent}
    # a final-pass list belongs to the first-pass list it was drawn from
    remove_folder(url_join(config.output_dir, "_work", RETRY_FOLDER))
    placement = SitePlacement.of(config.download, config.fetch)
    info = {
        "counts": counts,
        "fingerprint": url_list_fingerprint(config, sources),
        "placement": placement.record(),
    }
    url_list = url_shards.write_url_list(
        unique,
        config.output_dir,
        sent,
        config.download.samples_per_shard,
        info=info,
        placement=placement,
    )
    unique.unpersist()
    return url_list


def deduplicated(df: DataFrame, carried: tuple[str, ...] = ()) -> DataFrame:
    """One row per (URL, TEXT): the one with the smallest (SAMPLE_ID, LICENSE, NSFW,
    similarity, then the ``carried`` columns), so a rerun keeps the same row whatever the
    partitioning; the carried columns come with it."""
    rest = [c for c in url_shards.URL_COLUMNS if c not in ("URL", "TEXT")] + list(carried)
    first = F.min(F.struct(*rest)).alias("_first")
    return df.groupBy("URL", "TEXT").agg(first).select("URL", "TEXT", "_first.*")


def reusable_url_list(config: PipelineConfig, groups: Groups) -> url_shards.UrlList | None:
    """The URL list an earlier run of this output folder completed, if it may be reused: a
    rerun then cuts exactly the same shards and skips reading the metadata. The demo's list
    is always rebuilt (its web's port changes per run)."""
    existing = url_shards.read_url_list(url_join(config.output_dir, "_work", "urls"))
    if existing is None and not config.demo.enabled and committed_shard_names(config.output_dir):
        # A new cut would give those shard ids other rows (the demo's rebuilt list is the
        # same cut: its rows and order do not change).
        raise UrlListMismatchError(
            f"{config.output_dir} holds committed shards but not the URL list they were cut "
            "from (_work/urls/_url_list.json); use another output_dir, or delete the shards "
            "to start over"
        )
    if existing is None or config.demo.enabled:
        return None
    sources = [url for urls, _ in groups for url in urls]
    if existing.info.get("fingerprint") != url_list_fingerprint(config, sources):
        raise UrlListMismatchError(
            f"{config.output_dir} holds a URL list built from other inputs or settings "
            f"({existing.info.get('fingerprint')}); use another output_dir, or delete "
            f"{existing.path} and the shards to start over"
        )
    log.info("reusing the URL list of an earlier run (%d rows)", existing.rows)
    placement = SitePlacement.of(config.download, config.fetch).record()
    if existing.info.get("placement") != placement:
        # The cut stays (committed shards are named by it); only the speed differs: the
        # pacing follows today's settings whatever the layout.
        log.warning(
            "the URL list was laid out for other politeness settings (%s; now %s): its shards "
            "are kept as cut, and large sites may hold shards longer than this layout would",
            existing.info.get("placement", "an older layout"),
            placement,
        )
    return existing


def build_shard_set(spark: SparkSession, config: PipelineConfig, groups: Groups) -> dict:
    if not groups:
        raise ingest.MetadataError("no metadata given: set input.urls or demo.enabled=true")
    url_list = reusable_url_list(config, groups) or build_url_list(spark, config, groups)
    # A sizes.json left by an interrupted close is rewritten below anyway.
    remove_if_exists(sizes_url(config.output_dir))
    blocklist = None
    if config.decontamination.sources:
        blocklist = BlocklistRef(
            url_join(config.output_dir, "_work", "decontamination.parquet"),
            config.decontamination.max_distance,
        )
        # Built once per shard set, so shards done before a restart saw the same list.
        if not exists(blocklist.url):
            build_blocklist(spark, list(config.decontamination.sources), blocklist.url)
    result = download_shards(url_list, config.output_dir, config.download, config.fetch, blocklist)
    counts = {**url_list.info["counts"], "sent_to_download": url_list.rows}
    parameters = {
        "filters": {rule.name: rule.params for rule in filters.build_rules(config.filters)},
        "dedup": ["URL", "TEXT"],
        "download": asdict(config.download),
        "fetch": asdict(config.fetch),
        "decontamination": asdict(config.decontamination),
    }
    sources = [url for urls, _ in groups for url in urls]
    manifest_written = manifest.write_manifest(
        spark, config.output_dir, counts, parameters, sources, result.stats, result.run
    )
    log.info("shard set complete: %s", manifest_written["counts"])
    return manifest_written
