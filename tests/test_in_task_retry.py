"""A retryable failure is tried again in its own task when the task has work left anyway
(its paced site's turns), some time after it failed; the second failure is final. Without
such work left, or without the setting, the failure waits for the final pass."""

from __future__ import annotations

import contextlib
import time

from pipeline.config import DownloadConfig
from pipeline.shard_download import InTaskRetry, make_processor, process_all
from tests.hostile_web import HostileWeb
from tests.test_fetch import quick_fetch

INTERVAL = 0.2  # the paced site: 15 URLs hold the task ~3 s
RETRY = InTaskRetry(after_s=0.5, attempt_s=1.0)


def _run(urls: list[str], retry: InTaskRetry | None) -> dict[str, dict]:
    fetch = quick_fetch(retries=0, deadline_s=1.0, per_domain_interval_s=INTERVAL)
    processor = make_processor(DownloadConfig(image_size=32), fetch)
    indexed = list(enumerate(urls))
    results = process_all(indexed, processor, 4, time.monotonic() + 60, retry)
    return {urls[index]: result for index, _, result in results}


def _web_urls(paced: HostileWeb, faulty: HostileWeb, paced_urls: int) -> list[str]:
    return [f"{faulty.base_url}/500", f"{faulty.base_url}/retry-after-1s"] + [
        f"{paced.base_url}/ok/{i}.jpg" for i in range(paced_urls)
    ]


def test_a_task_with_paced_work_left_retries_its_failures_later():
    with contextlib.ExitStack() as stack:
        paced, faulty = (stack.enter_context(HostileWeb(f"127.0.0.{i}")) for i in (2, 3))
        urls = _web_urls(paced, faulty, 15)
        results = _run(urls, RETRY)
    assert len(results) == len(urls)
    # 500 twice: asked twice, half a second apart at least; the second failure is final
    assert results[urls[0]]["error_message"] == "http 500"
    assert results[urls[0]]["retryable"] is False
    # 429 once: the second attempt, after the gap, gets the image
    assert results[urls[1]]["status"] == "success"
    first, second = faulty.requests["/500"]
    assert second - first >= RETRY.after_s
    assert all(results[u]["status"] == "success" for u in urls[2:])


def test_a_task_without_work_left_leaves_its_failures_to_the_final_pass():
    with contextlib.ExitStack() as stack:
        paced, faulty = (stack.enter_context(HostileWeb(f"127.0.0.{i}")) for i in (2, 3))
        urls = _web_urls(paced, faulty, 2)  # ~0.4 s of pacing: less than gap + attempt
        results = _run(urls, RETRY)
        assert len(faulty.requests["/500"]) == 1
    for url in urls[:2]:
        assert results[url]["status"] == "failed_to_download"
        assert results[url]["retryable"] is True


def test_without_the_setting_nothing_is_retried_in_the_task():
    with contextlib.ExitStack() as stack:
        paced, faulty = (stack.enter_context(HostileWeb(f"127.0.0.{i}")) for i in (2, 3))
        urls = _web_urls(paced, faulty, 15)
        results = _run(urls, None)
        assert len(faulty.requests["/500"]) == 1
    assert results[urls[0]]["retryable"] is True and results[urls[1]]["retryable"] is True


def test_a_retry_the_deadline_cuts_stays_retryable():
    """Put back, but the shard's deadline comes before its turn: the first failure stands,
    still retryable, and nothing is lost."""
    with contextlib.ExitStack() as stack:
        paced, faulty = (stack.enter_context(HostileWeb(f"127.0.0.{i}")) for i in (2, 3))
        urls = _web_urls(paced, faulty, 15)
        fetch = quick_fetch(retries=0, deadline_s=1.0, per_domain_interval_s=INTERVAL)
        processor = make_processor(DownloadConfig(image_size=32), fetch)
        stop_at = time.monotonic() + RETRY.after_s * 0.8
        results = list(process_all(list(enumerate(urls)), processor, 4, stop_at, RETRY))
        assert len(faulty.requests["/500"]) == 1
    assert sorted(index for index, _, _ in results) == list(range(len(urls)))
    by_url = {urls[index]: result for index, _, result in results}
    assert by_url[urls[0]]["error_message"] == "http 500" and by_url[urls[0]]["retryable"]


def test_a_failure_of_the_site_the_task_waits_on_is_left_to_the_final_pass():
    """The paced site's own failure: retrying it would add a turn to the site that sets the
    task's length, so it waits for the final pass."""
    with HostileWeb("127.0.0.2") as paced:
        urls = [f"{paced.base_url}/500"] + [f"{paced.base_url}/ok/{i}.jpg" for i in range(15)]
        results = _run(urls, RETRY)
        assert len(paced.requests["/500"]) == 1
    assert results[urls[0]]["retryable"] is True
    assert all(results[u]["status"] == "success" for u in urls[1:])
