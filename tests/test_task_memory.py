"""One download task's memory: the byte budget its threads share, and its measured peak on the
worst inputs against what pipeline.task_memory states (the executors are sized by it)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from flipcommon.config import ConfigError
from pipeline.byte_budget import ByteBudget
from pipeline.config import DownloadConfig, FetchConfig
from pipeline.task_memory import (
    WORKER_IMPORTS_BYTES,
    TaskMemoryError,
    check_task_memory,
    task_memory,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_the_budget_waits_for_room_and_refuses_what_never_fits():
    budget = ByteBudget(100)
    assert budget.acquire(60) and not budget.acquire(50, until=time.monotonic() + 0.05)
    assert not budget.acquire(101)  # more than the whole budget: never
    freed = threading.Timer(0.1, budget.release, (60,))
    freed.start()
    assert budget.acquire(50, until=time.monotonic() + 5)  # woken by the release
    assert budget.held == 50 and budget.peak == 60
    with pytest.raises(RuntimeError):
        budget.release(51)


def test_one_task_stays_within_what_is_stated_for_it_on_the_worst_inputs():
    """Bodies at the cap, with and without a declared length, gzip that decodes to the cap,
    alpha WebP and PNG at the pixel cap, a robots.txt at its cap: more than the budget at once
    (8 threads, 2 copies of each kind per thread, bodies of 8 MiB against 16 MiB). Undeclared
    bodies that would each hold a part of a full budget give up instead of waiting on each
    other until their deadlines (the run takes seconds, not minutes)."""
    import task_memory_peak

    started = time.monotonic()
    row = task_memory_peak.measure(
        threads=8, max_bytes=8 << 20, in_flight=16 << 20, max_pixels=2_000_000, copies=2
    )
    measured = row["measured"]
    assert time.monotonic() - started < 120
    assert measured["held_peak"] <= 16 << 20
    assert measured["baseline"] <= WORKER_IMPORTS_BYTES
    assert row["growth"] <= row["stated_variable"], row
    assert measured["peak"] <= row["stated_total"]
    outcomes = measured["outcomes"]
    assert outcomes["success"] == 2 * 8 * 2  # every picture, WebP and PNG
    assert set(outcomes) <= {"success", "Image decoding error", "waited for memory"}


def test_a_budget_below_the_byte_cap_is_refused():
    with pytest.raises(TaskMemoryError, match="could never be held"):
        check_task_memory(DownloadConfig(max_bytes_in_flight=1 << 20), FetchConfig())
    check_task_memory(DownloadConfig(), FetchConfig())


def test_the_stated_figure_follows_the_config():
    small = sum(task_memory(DownloadConfig(max_pixels=1_000_000), FetchConfig()).values())
    large = sum(task_memory(DownloadConfig(max_pixels=25_000_000), FetchConfig()).values())
    assert large - small == 33 * 24_000_000
    without = task_memory(DownloadConfig(), FetchConfig(robots_txt=False))
    assert not any("robots" in part for part in without)


def test_executors_whose_overhead_cannot_hold_their_tasks_are_refused(tmp_path):
    from infra.render.deploy import DEPLOY, load_deploy

    text = DEPLOY.read_text()
    assert "memory_overhead: 32g" in text
    small = tmp_path / "deploy.yaml"
    small.write_text(text.replace("memory_overhead: 32g", "memory_overhead: 8g"))
    with pytest.raises(ConfigError, match="memory_overhead=8g: 16 download tasks"):
        load_deploy(small)
    load_deploy(DEPLOY)
