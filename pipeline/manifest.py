"""Close a shard set: ``sizes.json`` then ``manifest.json`` (written last: it marks completion).

Every count is reconciled: rows in = dropped by each rule + duplicates + download failures +
decontaminated + kept. A mismatch is an error, not a footnote.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import fsspec

from flipcommon.shard_set import close_shard_set
from flipcommon.storage import read_files

STATS_SUFFIX = "_stats.json"


class ReconciliationError(RuntimeError):
    pass


def committed_shard_names(output_dir: str) -> list[str]:
    """The names of the shards whose stats file (their commit marker) is in ``output_dir``,
    from one fresh listing."""
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        names = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(
        Path(p).name.removesuffix(STATS_SUFFIX) for p in names if p.endswith(STATS_SUFFIX)
    )


def read_shard_stats(output_dir: str) -> dict[str, dict[str, Any]]:
    """Every committed shard's ``_stats.json``, by shard name: one fresh listing (other
    processes wrote since any cached one), then the files read concurrently (one request
    each; an object store's latency is paid once per batch, not once per shard)."""
    fs, root = fsspec.core.url_to_fs(output_dir)
    paths = {
        f"{root.rstrip('/')}/{name}{STATS_SUFFIX}": name
        for name in committed_shard_names(output_dir)
    }
    contents = read_files(fs, list(paths))
    return {name: json.loads(contents[path]) for path, name in paths.items()}


def shard_sizes(stats: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {f"{shard}.tar": int(s["successes"]) for shard, s in sorted(stats.items())}


def final_pass_ran(stats: dict[str, dict[str, Any]]) -> bool:
    return any(s.get("final_pass") for s in stats.values())


def download_summary(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The download's counts over all shards. The final pass's shards hold second attempts of
    the first pass's retryable failures: a sample counts once, by its last attempt."""
    errors: collections.Counter[str] = collections.Counter()
    totals: collections.Counter[str] = collections.Counter()
    retried = final_pass_ran(stats)
    for s in stats.values():
        for key in ("successes", "failed_to_download", "failed_to_resize", "decontaminated"):
            totals[key] += int(s.get(key, 0))
        if s.get("final_pass"):
            totals["retried"] += int(s["count"])
            totals["recovered"] += int(s["successes"])
        else:
            totals["count"] += int(s["count"])
        for reason, n in (s.get("status_dict") or {}).items():
            if reason != "success":
                errors[reason] += int(n)
        if retried and not s.get("final_pass"):
            errors.subtract(s.get("retryable_reasons") or {})
    return {
        "attempted": totals["count"],
        "succeeded": totals["successes"],
        "failed_to_download": totals["failed_to_download"] - totals["retried"],
        "failed_to_resize": totals["failed_to_resize"],
        "decontaminated": totals["decontaminated"],
        "errors": dict((+errors).most_common()),
        # the final pass: samples re-fetched after a retryable failure, and how many came back
        "retry_pass": {"retried": totals["retried"], "recovered": totals["recovered"]},
        "shards": len(stats),
    }


def reconcile(counts: dict[str, Any]) -> None:
    filtered = sum(counts["filters"].values())
    dl = counts["download"]
    accounted = filtered + counts["duplicates"] + dl["failed_to_download"] + dl["failed_to_resize"]
    accounted += dl.get("decontaminated", 0) + dl["succeeded"]
    if accounted != counts["rows_in"] or dl["attempted"] != counts["sent_to_download"]:
        raise ReconciliationError(
            f"counts do not add up: rows in {counts['rows_in']}, accounted {accounted} "
            f"(filtered {filtered}, duplicates {counts['duplicates']}, download {dl}); "
            f"sent to download {counts['sent_to_download']}, attempted {dl['attempted']}"
        )


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def without_secrets(url: str) -> str:
    """A source URL as a manifest may keep it: no user or password, no query string or fragment
    (a signed URL's signature and expiry live there). Local paths stay as given."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed "[": keep the scheme only, nothing that may be secret
        return url.partition("://")[0] + "://…"
    if not parts.scheme or "://" not in url:
        return url
    # the address as written, less "user:password@" (Azure's abfs/wasb name a container there:
    # kept, its password not)
    user, _, address = parts.netloc.rpartition("@")
    if user and parts.scheme in ("abfs", "abfss", "wasb", "wasbs"):
        address = f"{user.partition(':')[0]}@{address}"
    return urllib.parse.urlunsplit((parts.scheme, address, parts.path, "", ""))


def shard_set_manifest(
    counts: dict[str, Any],
    parameters: dict[str, Any],
    sources: list[str],
    shards: list[str],
    **extra: Any,
) -> dict[str, Any]:
    """The keys every shard set's manifest.json has, whichever stage wrote it."""
    return {
        "format": "webdataset (img2dataset layout)",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "sources": [without_secrets(source) for source in sources],
        "counts": counts,
        "parameters": parameters,
        **extra,
        "shards": sorted(shards),
    }


def write_manifest(
    spark,
    output_dir: str,
    counts: dict[str, Any],
    parameters: dict[str, Any],
    sources: list[str],
    stats: dict[str, dict[str, Any]],
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``stats``: every shard's stats (``download.DownloadResult``); ``run``: the download's
    progress summary (throughput, success rate, top failures and timeline of this run; a
    resumed run's covers only the shards it downloaded)."""
    counts = {**counts, "download": download_summary(stats)}
    if run is not None:
        counts["download"]["run"] = run
    reconcile(counts)
    from pipeline.report import write_report  # matplotlib only when a set is closed

    kept = {**counts, "kept": counts["download"]["succeeded"]}
    write_report(spark, output_dir, kept, list(stats), final_pass_ran(stats))
    sizes = shard_sizes(stats)
    manifest = shard_set_manifest(kept, parameters, sources, list(sizes))
    close_shard_set(output_dir, sizes, manifest)
    return manifest
