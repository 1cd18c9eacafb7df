"""Download the URL list into webdataset shards: one Spark job, one task per shard (or per
few small shards).

Each task reads its own URL-list part and writes its own shard (``ShardDownloader``:
img2dataset's resizer and writer behind our fetch step, see ``pipeline.fetch``) and hands its
stats back. The driver stays out of the data path: it lists what is already committed once
(one listing, the stats files read concurrently), submits every pending shard in a single job
(no barriers: a slow shard holds only its own task slot), and collects the stats. A shard whose
task raised is run once more; then the final pass downloads the samples that failed retryably
into new shards (``pipeline.shard_retry``). The SparkSession must already exist
(``spark_session.get_spark``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import fsspec
from pyspark.sql import SparkSession

from pipeline.config import DownloadConfig, FetchConfig
from pipeline.manifest import committed_shard_names, read_shard_stats
from pipeline.progress import DownloadProgress
from pipeline.shard_download import (
    OOM_SHARD_COUNT,
    BlocklistRef,
    ShardDownloader,
    SitePacing,
    shard_name,
    staging_root,
)
from pipeline.shard_retry import carried_columns, retry_url_list
from pipeline.site_placement import SitePlacement
from pipeline.url_shards import UrlList

log = logging.getLogger(__name__)

SHARD_ATTEMPTS = 2  # a shard whose task raised is run once more, then the stage stops
# Small shards share a task up to about this many samples: a task's own cost (scheduling, a
# Python worker's turn: ~25 ms on local[2]) then stays far below its download time.
TASK_SAMPLES = 1_000
TASKS_PER_SLOT = 4  # at least: the last tasks of a job stay short beside the whole


@dataclass(frozen=True)
class DownloadResult:
    stats: dict[str, dict[str, Any]]  # every committed shard's stats, by shard name
    run: dict[str, Any]  # this run's progress summary (``pipeline.progress``)


class IncompleteDownloadError(RuntimeError):
    pass


def download_shards(
    url_list: UrlList,
    output_dir: str,
    download: DownloadConfig,
    fetch: FetchConfig,
    blocklist: BlocklistRef | None = None,
) -> DownloadResult:
    """Download every shard not done yet, then the final pass (unless turned off)."""
    fs, root = fsspec.core.url_to_fs(output_dir)
    fs.makedirs(root, exist_ok=True)
    # What an interrupted run left half-written (local storage only: on an object store an
    # upload is visible only once complete, so shards are written in place).
    staging = fsspec.core.url_to_fs(staging_root(output_dir))[1]
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    stats = read_shard_stats(output_dir)
    spark = SparkSession.getActiveSession()
    # The most shard tasks that can run at once: a domain's shards beyond that never overlap.
    concurrency = max(download.processes, spark.sparkContext.defaultParallelism)
    pacing = SitePacing(url_list.path, concurrency)
    warn_if_pacing_outlasts_shards(pacing, fetch, download)
    first_names = {shard_name(i, OOM_SHARD_COUNT) for i in url_list.shard_ids}
    to_do = url_list.rows - sum(int(s["count"]) for n, s in stats.items() if n in first_names)
    log.info("downloading %d shards (%d already done)", url_list.shards, len(stats))
    context = spark.sparkContext
    interval = download.progress_interval_s
    with DownloadProgress(output_dir, to_do, interval, context) as progress:
        shards = ShardTasks(output_dir, download, fetch, blocklist, progress.finished)
        stats |= run_shards(url_list, shards, pacing, stats)
        log.info("first pass: %d shards committed", len(stats))
        if download.retry_pass:
            first_pass = {n: s for n, s in stats.items() if n in first_names}
            retry = retry_url_list(
                spark,
                output_dir,
                first_pass,
                download.samples_per_shard,
                first_shard=url_list.first_shard + url_list.shards,
                placement=SitePlacement.of(download, fetch),
                concurrency=concurrency,
                carried=carried_columns(url_list),
            )
            if retry.rows:
                log.info("final pass: %d retryable failures in %d shards", retry.rows, retry.shards)
                progress.total += retry.rows
                pacing = SitePacing(retry.path, concurrency)
                stats |= run_shards(retry, shards, pacing, stats, final_pass=True)
            log.info("final pass done")
    return DownloadResult(stats, progress.summary())


def warn_if_pacing_outlasts_shards(
    pacing: SitePacing, fetch: FetchConfig, download: DownloadConfig
) -> None:
    """A site so large that its share of a shard, at its pace, takes most of the shard's
    deadline: its URLs past the deadline would fail (retryably). Say so before hours are
    spent."""
    slowest = pacing.slowest_site(fetch.per_domain_interval_s)
    if slowest is not None and slowest[1] > 0.75 * download.shard_deadline_s:
        site, seconds = slowest
        log.warning(
            "site %s: its share of a shard takes ~%.0f s at fetch.per_domain_interval_s=%g with "
            "up to %d tasks at once, against download.shard_deadline_s=%g; shards holding it "
            "will run long. Fewer samples per shard or a longer deadline gives it room",
            ascii(site),  # a name from the metadata: no control characters into the log
            seconds,
            fetch.per_domain_interval_s,
            pacing.concurrency,
            download.shard_deadline_s,
        )


@dataclass(frozen=True)
class ShardTasks:
    """What every shard task of a run shares."""

    output_dir: str
    download: DownloadConfig
    fetch: FetchConfig
    blocklist: BlocklistRef | None
    finished: Any  # the progress accumulator (``pipeline.progress.FinishedShards``)


def run_shards(
    url_list: UrlList,
    tasks: ShardTasks,
    pacing: SitePacing,
    committed: dict[str, dict[str, Any]],
    final_pass: bool = False,
) -> dict[str, dict[str, Any]]:
    """Download the shards of ``url_list`` that are not in ``committed``, all in one Spark job
    (one task per shard, or per few small shards: ``task_groups``); returns their stats.
    Raises ``IncompleteDownloadError`` naming the shards that failed every attempt."""
    downloader = ShardDownloader(
        tasks.output_dir,
        url_list,
        tasks.download,
        tasks.fetch,
        tasks.blocklist,
        pacing,
        final_pass,
        tasks.finished,
    )
    pending = [i for i in url_list.shard_ids if shard_name(i, OOM_SHARD_COUNT) not in committed]
    context = SparkSession.getActiveSession().sparkContext
    slots = max(tasks.download.processes, context.defaultParallelism)
    done: dict[str, dict[str, Any]] = {}
    errors: dict[int, str] = {}
    for _ in range(SHARD_ATTEMPTS):
        if not pending:
            break
        try:
            groups = task_groups(pending, url_list.samples_per_shard, slots)
            outcomes = context.parallelize(groups, len(groups)).flatMap(downloader).collect()
        except Exception as err:  # noqa: BLE001 - a worker that crashed (not raised) 4 times
            missing = set(pending) - {
                int(n) for n in committed_shard_names(tasks.output_dir) if n.isdigit()
            }
            names = ", ".join(shard_name(i, OOM_SHARD_COUNT) for i in sorted(missing)[:50])
            raise IncompleteDownloadError(
                f"the download job stopped ({type(err).__name__}); {len(missing)} shard(s) not "
                f"committed, among them {names}. Run the stage again: finished shards are "
                "kept; the executor logs say why a worker died"
            ) from err
        returned = sorted(o["shard_id"] for o in outcomes)
        if returned != sorted(pending):  # a shard lost or doubled by a task: never pass it by
            raise IncompleteDownloadError(
                f"the download job returned {len(returned)} outcomes for {len(pending)} shards"
            )
        errors = {o["shard_id"]: o["error"] for o in outcomes if "error" in o}
        done |= {o["name"]: o["stats"] for o in outcomes if "stats" in o}
        pending = sorted(errors)
    if errors:
        listed = ", ".join(f"{shard_name(i, OOM_SHARD_COUNT)} ({e})" for i, e in errors.items())
        raise IncompleteDownloadError(
            f"{len(errors)} shard(s) failed twice: {listed[:2000]} (the executor logs hold the "
            "tracebacks); run the stage again: finished shards are kept, these are redone"
        )
    return done


def task_groups(shard_ids: list[int], samples_per_shard: int, slots: int) -> list[list[int]]:
    """The shards of each Spark task, in order: one per task where shards are large (LAION's
    10,000 samples); small shards share a task up to ``TASK_SAMPLES`` samples, while every task
    slot still gets ``TASKS_PER_SLOT`` tasks or more."""
    per_task = min(
        math.ceil(TASK_SAMPLES / max(samples_per_shard, 1)),
        len(shard_ids) // (slots * TASKS_PER_SLOT),
    )
    per_task = max(per_task, 1)
    return [shard_ids[i : i + per_task] for i in range(0, len(shard_ids), per_task)]
