"""Close a shard set: ``sizes.json`` then ``manifest.json`` (written last: it marks completion).

Every count is reconciled: rows in = dropped by each rule + duplicates + download failures +
decontaminated + kept. A mismatch is an error, not a footnote.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import fsspec

from flipcommon.shard_set import close_shard_set


class ReconciliationError(RuntimeError):
    pass


def read_shard_stats(output_dir: str) -> dict[str, dict[str, Any]]:
    fs, root = fsspec.core.url_to_fs(output_dir)
    stats = {}
    for path in sorted(fs.glob(f"{root}/*_stats.json")):
        with fs.open(path, "r") as handle:
            stats[Path(path).name.removesuffix("_stats.json")] = json.load(handle)
    return stats


def shard_sizes(stats: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {f"{shard}.tar": int(s["successes"]) for shard, s in sorted(stats.items())}


def download_summary(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    errors: collections.Counter[str] = collections.Counter()
    totals: collections.Counter[str] = collections.Counter()
    for s in stats.values():
        for key in (
            "count",
            "successes",
            "failed_to_download",
            "failed_to_resize",
            "decontaminated",
        ):
            totals[key] += int(s.get(key, 0))
        retry = s.get("retry_pass") or {}
        totals["retried"] += int(retry.get("retried", 0))
        totals["recovered"] += int(retry.get("recovered", 0))
        for reason, n in (s.get("status_dict") or {}).items():
            if reason != "success":
                errors[reason] += int(n)
    return {
        "attempted": totals["count"],
        "succeeded": totals["successes"],
        "failed_to_download": totals["failed_to_download"],
        "failed_to_resize": totals["failed_to_resize"],
        "decontaminated": totals["decontaminated"],
        "errors": dict(errors.most_common()),
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
        "sources": sources,
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
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``run``: the download's progress summary (throughput, success rate, top failures and
    timeline of this run; a resumed run's covers only the shards it downloaded)."""
    stats = read_shard_stats(output_dir)
    counts = {**counts, "download": download_summary(stats)}
    if run is not None:
        counts["download"]["run"] = run
    reconcile(counts)
    from pipeline.report import write_report  # matplotlib only when a set is closed

    write_report(spark, output_dir, {**counts, "kept": counts["download"]["succeeded"]})
    sizes = shard_sizes(stats)
    kept = {**counts, "kept": counts["download"]["succeeded"]}
    manifest = shard_set_manifest(kept, parameters, sources, list(sizes))
    close_shard_set(output_dir, sizes, manifest)
    return manifest
