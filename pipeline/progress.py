"""Live progress of a download: each task publishes its counts, the driver sums and prints them.

Spark's accumulators reach the driver only when a task ends, and a shard task runs for many
minutes, so a running task rewrites a small JSON file under ``_work/progress/`` every few
seconds (any fsspec storage; one file per shard, rewritten in place; none for a shard that ends
sooner), and a finished task sends its final counts through an accumulator, which costs no
request. A thread on the driver lists that folder on the same period, reads the files that
changed (concurrently), and logs one line: samples done, images/s, success rate and the top
failure reasons so far. Its summary, with a thinned timeline, goes into the manifest and the
report.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Any

import fsspec
from pyspark.accumulators import AccumulatorParam

from flipcommon.storage import read_files, remove_if_exists, url_join, write_json_atomic

log = logging.getLogger(__name__)

TOP_REASONS = 5
TIMELINE_POINTS = 120  # kept in the manifest: enough for a plot, small at any run length


def progress_dir(output_dir: str) -> str:
    return url_join(output_dir, "_work", "progress")


class FinishedShards(AccumulatorParam):
    """An accumulator of finished shards' final counts: shard name -> record."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, first: dict, second: dict) -> dict:  # noqa: N802 - Spark's name
        first.update(second)
        return first


class TaskProgress:
    """A shard task's side: its counts so far, written at most every ``interval_s`` (the first
    time after one interval); at the end, into ``finished`` (an accumulator of
    ``FinishedShards``) where the driver gave one, else into the file."""

    def __init__(self, output_dir: str, name: str, interval_s: float, finished: Any = None):
        self.name = name
        self.url = url_join(progress_dir(output_dir), f"{name}.json")
        self.interval_s = interval_s
        self.finished = finished
        self._last = time.monotonic()
        self._written = False

    def update(self, counts: dict[str, int], reasons: Any, done: bool = False) -> None:
        """``reasons``: the shard's counter of outcomes (``dump()`` → reason: count), read
        only when a write is due."""
        now = time.monotonic()
        if not done and now - self._last < self.interval_s:
            return
        self._last = now
        failures = {r: n for r, n in reasons.dump().items() if r != "success"}
        record = {"count": counts["count"], "successes": counts["successes"]}
        record |= {"reasons": failures, "done": done, "updated": time.time()}
        if done and self.finished is not None:
            self.finished.add({self.name: record})
            if self._written:  # the driver now has the final counts: keep its listing short
                remove_if_exists(self.url)
            return
        try:
            write_json_atomic(self.url, record)
            self._written = True
        except OSError as err:  # progress is advisory: never fail a shard over it
            log.warning("progress of %s not written: %s", self.url, err)


def _change_token(info: dict[str, Any]) -> Any:
    """What tells a file's new version from its old one, on local disk or an object store."""
    return (info.get("mtime"), info.get("LastModified"), info.get("ETag"), info.get("size"))


class DownloadProgress:
    """The driver's side: ``with DownloadProgress(output_dir, total, interval_s):`` logs a
    line every ``interval_s``; ``summary()`` after the block gives the run's figures."""

    def __init__(self, output_dir: str, total: int, interval_s: float, context: Any = None):
        """``context``: a SparkContext; finished tasks then report through ``self.finished``."""
        self.folder = progress_dir(output_dir)
        self.finished = context.accumulator({}, FinishedShards()) if context else None
        self.total = total
        self.interval_s = interval_s
        self._shards: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, Any] = {}
        self._timeline: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)
        self._start = 0.0

    def __enter__(self) -> DownloadProgress:
        fs, root = fsspec.core.url_to_fs(self.folder)
        if fs.exists(root):  # a previous run's files would count twice
            fs.rm(root, recursive=True)
        fs.makedirs(root, exist_ok=True)
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
        log.info("download: %s", self.line())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
                log.info("download: %s", self.line())
            except Exception as err:  # noqa: BLE001 - a flaky listing must not stop the job
                log.warning("download progress unavailable: %s", err)

    def poll(self) -> None:
        """Read the task files that changed since the last poll."""
        fs, root = fsspec.core.url_to_fs(self.folder)
        fs.invalidate_cache(root)
        try:
            listing = fs.ls(root, detail=True)
        except FileNotFoundError:  # an object store has no folder until a task writes in it
            listing = []
        changed = {}
        for info in listing:
            name = info["name"].rsplit("/", 1)[-1]
            token = _change_token(info)
            if name.endswith(".json") and self._seen.get(name) != token:
                changed[info["name"]] = (name, token)
        for path, data in read_files(fs, list(changed), on_error="return").items():
            name, token = changed[path]
            try:
                self._shards[name.removesuffix(".json")] = json.loads(data)
                self._seen[name] = token
            except (TypeError, ValueError):
                continue  # an error, or replaced while read: next poll
        done, ok = self.totals()[:2]
        self._timeline.append((time.monotonic() - self._start, done, ok))

    def records(self) -> list[dict[str, Any]]:
        """Every shard's latest counts: finished ones from the accumulator, the rest from
        their files."""
        finished = dict(self.finished.value) if self.finished is not None else {}
        running = [r for name, r in self._shards.items() if name not in finished]
        return [*finished.values(), *running]

    def totals(self) -> tuple[int, int, collections.Counter]:
        reasons: collections.Counter = collections.Counter()
        records = self.records()
        for shard in records:
            reasons.update(shard.get("reasons", {}))
        done = sum(s["count"] for s in records)
        ok = sum(s["successes"] for s in records)
        return done, ok, reasons

    def line(self) -> str:
        done, ok, reasons = self.totals()
        elapsed = max(time.monotonic() - self._start, 1e-9)
        recent = ""
        if len(self._timeline) >= 2:
            (t0, _, k0), (t1, _, k1) = self._timeline[-2:]
            recent = f" (last {t1 - t0:.0f} s: {(k1 - k0) / max(t1 - t0, 1e-9):,.1f})"
        percent = 100 * done / self.total if self.total else 100.0
        rate = 100 * ok / done if done else 0.0
        top = " · ".join(f"{r} {n:,}" for r, n in reasons.most_common(TOP_REASONS)) or "none"
        finished = sum(1 for s in self.records() if s.get("done"))
        return (
            f"{done:,}/{self.total:,} samples ({percent:.1f}%), {ok / elapsed:,.1f} images/s"
            f"{recent}, "
            f"{rate:.1f}% ok, {finished} shard(s) done; top failures: {top}"
        )

    def summary(self) -> dict[str, Any]:
        done, ok, reasons = self.totals()
        seconds = self._timeline[-1][0] if self._timeline else 0.0
        step = max(1, len(self._timeline) // TIMELINE_POINTS)
        points = self._timeline[::step]
        if self._timeline and points[-1] != self._timeline[-1]:
            points.append(self._timeline[-1])
        return {
            "seconds": round(seconds, 1),
            "samples": done,
            "images_per_s": round(ok / seconds, 2) if seconds else 0.0,
            "success_rate": round(ok / done, 4) if done else 0.0,
            "top_failures": dict(reasons.most_common(TOP_REASONS)),
            # (seconds since start, samples done, images kept)
            "timeline": [[round(t, 1), d, k] for t, d, k in points],
        }
