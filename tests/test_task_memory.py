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
    assert "memory_overhead: 39g" in text
    small = tmp_path / "deploy.yaml"
    small.write_text(text.replace("memory_overhead: 39g", "memory_overhead: 8g"))
    with pytest.raises(ConfigError, match=r"memory_overhead=8g .*: 16 download tasks"):
        load_deploy(small)
    load_deploy(DEPLOY)


def test_a_single_machine_job_must_hold_a_task_per_vcpu_beside_the_driver():
    """AWS Batch runs the stage in local mode on one machine: 64 vCPUs at 2.31 GiB a task and a
    16 GiB driver heap fit its 256 GiB; 64 GiB would not."""
    from infra.render.aws import batch_pipeline
    from infra.render.deploy import check_single_machine_memory, load_deploy

    deploy = load_deploy()
    job = batch_pipeline(deploy)  # the rendered job passes its own check
    memory = {
        r["type"]: int(r["value"]) for r in job["containerProperties"]["resourceRequirements"]
    }
    check_single_machine_memory(deploy, memory["VCPU"], memory["MEMORY"] / 1024)
    with pytest.raises(ConfigError, match=r"64 GiB \(64 vCPUs\): 64 download tasks"):
        check_single_machine_memory(deploy, 64, 64)


def test_a_server_that_declares_much_and_sends_nothing_holds_one_window():
    """Content-Length of 8 MiB, then silence: the body's room in the budget is taken as it
    arrives, a window ahead, not all at once (eight such would fill a 64 MiB budget)."""
    import socket

    from pipeline.fetch import WINDOW_BYTES, Fetcher

    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def answer():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n" + b"\xff" * 10)
        release.wait(10)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    budget = ByteBudget(64 << 20)
    config = FetchConfig(
        deadline_s=3.0, allowed_networks=["127.0.0.0/8"], robots_txt=False, max_bytes=16 << 20
    )
    fetcher = Fetcher(config, budget=budget)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/a.jpg"
    result = []
    worker = threading.Thread(target=lambda: result.append(fetcher.fetch(url)))
    worker.start()
    time.sleep(1.0)
    held_while_silent = budget.held
    release.set()
    worker.join(10)
    listener.close()
    assert 0 < held_while_silent <= WINDOW_BYTES
    assert result[0].error in ("incomplete body", "connection closed") and budget.held == 0


def test_task_local_failures_stay_retryable_after_a_second_attempt():
    from pipeline.fetch import FetchResult
    from pipeline.shard_download import second_attempt

    first = FetchResult(None, "http 503", True)
    for reason in ("robots.txt unreachable", "waited for memory", "shard deadline exceeded"):
        assert second_attempt(first, FetchResult(None, reason, True)).retryable, reason
    assert not second_attempt(first, FetchResult(None, "http 503", True)).retryable


def test_content_lengths_python_would_refuse_to_read_are_numbers_past_any_cap():
    from pipeline.fetch import declared_length

    assert declared_length("9" * 5000) > 1 << 40  # int() refuses more than 4,300 digits
    assert declared_length("\u00b2") == 0 and declared_length(None) == 0
    assert declared_length(" 42 ") == 42


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border", "keep_ratio_largest"])
def test_a_thin_image_cannot_grow_past_the_pixel_cap_when_resized(mode):
    """keep_ratio and center_crop scale the shorter side up to image_size: a 1 × 20,000 PNG
    would become 64 × 1,280,000 pixels (~800 MB resident, measured) before the crop. Such an
    image is refused in those modes; a 3:1 one is kept; border modes shrink the long side."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.fetch import FetchResult
    from pipeline.shard_download import make_processor

    def png(height: int, width: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    download = DownloadConfig(image_size=64, resize_mode=mode, max_pixels=1_000_000)
    processor = make_processor(download, FetchConfig(robots_txt=False))
    _, thin = processor.finish(FetchResult(png(1, 20_000), None))
    image, wide = processor.finish(FetchResult(png(100, 300), None))
    assert wide["status"] == "success" and image
    if mode in ("keep_ratio", "center_crop"):
        assert (thin["status"], thin["error_message"]) == (
            "failed_to_resize",
            "aspect ratio too large",
        )
    else:
        assert thin["status"] == "success" and max(thin["width"], thin["height"]) == 64


def test_a_resize_mode_whose_smallest_image_passes_the_pixel_cap_is_refused():
    with pytest.raises(TaskMemoryError, match="raise max_pixels or lower image_size"):
        check_task_memory(
            DownloadConfig(image_size=2048, resize_mode="center_crop", max_pixels=1_000_000),
            FetchConfig(),
        )
    check_task_memory(DownloadConfig(image_size=2048, max_pixels=1_000_000), FetchConfig())
