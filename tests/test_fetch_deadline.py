"""One deadline per attempt, whatever phase the server stalls in (and the shard's budget).

Every fault here would hold a per-operation timeout forever (trickles) or past the deadline
(silence, with the per-operation timeout set longer than the deadline on purpose), so a pass
means the deadline itself ended the attempt.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import FetchConfig
from pipeline.deadline_net import Resolver
from pipeline.fetch import Fetcher
from tests.hostile_web import HostileWeb
from tests.phase_faults import (
    EXPECTED,
    PhaseFaults,
    expected_after_robots_txt,
    never_answering_lookup,
    timed,
)

DEADLINE_S = 2.0
SLACK_S = 1.0  # the goal: no attempt outlives its deadline by more than this


def strict_fetch(**overrides) -> FetchConfig:
    config = FetchConfig(
        deadline_s=DEADLINE_S,
        socket_timeout_s=60.0,  # longer than the deadline: only the deadline can end a stall
        retries=0,
        allowed_networks=["127.0.0.0/8"],
        max_bytes=1 << 20,
        robots_txt=False,  # the image request's phases (robots.txt's: their own test below)
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    with PhaseFaults(tmp_path_factory.mktemp("tls")) as servers:
        yield servers


@pytest.mark.parametrize("behaviour", sorted(EXPECTED))
def test_every_phase_fault_ends_within_the_deadline(faults, behaviour):
    url = {name: url for url, name in faults.urls().items()}[behaviour]
    fetcher = Fetcher(strict_fetch(ca_file=faults.ca_file))
    result, elapsed = timed(lambda: fetcher.fetch(url))
    _, status, reason = EXPECTED[behaviour]
    assert elapsed <= DEADLINE_S + SLACK_S, (behaviour, elapsed, result.error)
    if status == "success":
        assert result.data is not None and result.error is None
    else:
        assert result.data is None and result.error == reason, (behaviour, result.error)


@pytest.mark.parametrize("behaviour", sorted(EXPECTED))
def test_a_robots_txt_fault_in_any_phase_ends_within_its_own_deadline(faults, behaviour):
    """The site's robots.txt comes first, in the same deadline machinery: a stall in any phase
    of it makes the site unreachable (complete disallow, retryable) within one deadline; a
    fault every URL of the site would meet ends them with its own reason; an answer that is
    no robots.txt at all (an image, an endless body, cut at the cap) allows the image."""
    url = {name: url for url, name in faults.urls().items()}[behaviour]
    fetcher = Fetcher(strict_fetch(ca_file=faults.ca_file, robots_txt=True))
    result, elapsed = timed(lambda: fetcher.fetch(url))
    _, reason = expected_after_robots_txt(behaviour)
    assert result.error == reason, (behaviour, result.error)
    if reason == "robots.txt unreachable":
        assert result.retryable and elapsed <= DEADLINE_S + SLACK_S, (behaviour, elapsed)
    else:  # robots.txt then the image, each within its deadline
        assert elapsed <= 2 * DEADLINE_S + SLACK_S, (behaviour, elapsed)
    assert fetcher.robots.fetches == 1


def test_trust_comes_from_the_config(faults):
    url = {name: url for url, name in faults.urls().items()}["tls-ok"]
    assert Fetcher(strict_fetch()).fetch(url).error == "tls error"  # system store only
    assert Fetcher(strict_fetch(ca_file=faults.ca_file)).fetch(url).data is not None


def test_a_resolver_that_never_answers_ends_at_the_deadline():
    release = threading.Event()
    resolver = Resolver(lookup=never_answering_lookup(release))
    try:
        fetcher = Fetcher(strict_fetch(), resolver=resolver)
        result, elapsed = timed(lambda: fetcher.fetch("http://images.example.com/a.jpg"))
    finally:
        release.set()
    assert result.error == "deadline exceeded" and result.retryable
    assert DEADLINE_S - 0.1 <= elapsed <= DEADLINE_S + SLACK_S


def test_stuck_lookups_hold_a_bounded_number_of_threads():
    release = threading.Event()
    resolver = Resolver(lookup=never_answering_lookup(release), max_pending=2)
    fetcher = Fetcher(strict_fetch(deadline_s=0.3), resolver=resolver)
    before = threading.active_count()
    try:
        for i in range(6):
            assert fetcher.fetch(f"http://host{i}.example.com/").error == "deadline exceeded"
        assert threading.active_count() - before <= 2
    finally:
        release.set()


def test_answers_are_cached_and_failures_briefly():
    calls = []

    def lookup(host, port, **_):
        calls.append(host)
        return [(2, 1, 6, "", ("127.0.0.1", port))]

    now = [0.0]
    resolver = Resolver(lookup=lookup, cache_s=10, clock=lambda: now[0])
    from pipeline.deadline_net import Deadline

    deadline = Deadline.within(5, 5)
    assert resolver.addresses("a.example", 80, deadline) == ["127.0.0.1"]
    assert resolver.addresses("a.example", 80, deadline) == ["127.0.0.1"]
    now[0] = 11.0
    resolver.addresses("a.example", 80, deadline)
    assert calls == ["a.example", "a.example"]


@pytest.mark.parametrize(
    ("errno", "reason", "retryable", "lookups"),
    [
        (socket.EAI_NONAME, "dns failure: no such host", False, 1),
        (socket.EAI_AGAIN, "dns failure", True, 2),
    ],
)
def test_a_name_that_does_not_exist_is_final_and_asked_once(errno, reason, retryable, lookups):
    """NXDOMAIN gives the same answer later: final, not left to the final pass, and reused for
    a minute so a dead domain's other URLs do not ask again. A resolver that failed
    (EAI_AGAIN) is asked again."""
    calls = []

    def lookup(host, port, **_):
        calls.append(host)
        raise socket.gaierror(errno, "lookup failed")

    now = [0.0]
    resolver = Resolver(lookup=lookup, clock=lambda: now[0], negative_cache_s=60)
    fetcher = Fetcher(strict_fetch(retries=0), resolver=resolver)
    first = fetcher.fetch("http://gone.example/a.jpg")
    second = fetcher.fetch("http://gone.example/b.jpg")
    assert (first.error, first.retryable) == (reason, retryable)
    assert (second.error, second.retryable) == (reason, retryable)
    assert calls == ["gone.example"] * lookups
    now[0] = 61.0
    fetcher.fetch("http://gone.example/c.jpg")
    assert calls == ["gone.example"] * (lookups + 1)


def test_the_shard_budget_ends_a_request_in_flight():
    with HostileWeb() as web:
        fetcher = Fetcher(strict_fetch(deadline_s=30.0))
        stop_at = time.monotonic() + 1.0
        result, elapsed = timed(lambda: fetcher.fetch(web.base_url + "/drip", stop_at))
    assert result.error == "shard deadline exceeded" and result.retryable
    assert elapsed <= 1.0 + SLACK_S


def test_retries_never_outlive_the_shard_budget(faults):
    url = {name: url for url, name in faults.urls().items()}["trickled-headers"]
    fetcher = Fetcher(strict_fetch(retries=5, backoff_base_s=0.01))
    stop_at = time.monotonic() + 3.0
    result, elapsed = timed(lambda: fetcher.fetch(url, stop_at))
    # two full attempts fit (2 s each would not): the second is cut by the budget
    assert result.error == "shard deadline exceeded" and result.attempts == 2
    assert elapsed <= 3.0 + SLACK_S


@pytest.mark.timeout(120)
def test_a_shard_commits_at_its_budget_with_requests_in_flight(tmp_path, faults):
    """Every thread is stuck in a trickle when the budget ends: the shard still commits on
    time, and every row is accounted for (retryable, for the final pass)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import DownloadConfig
    from pipeline.shard_download import ShardDownloader
    from pipeline.url_shards import UrlList, part_url

    with HostileWeb() as web:
        trickle = {name: url for url, name in faults.urls().items()}["trickled-headers"]
        urls = [web.base_url + "/ok/0.jpg"] + [trickle] * 11
        table = pa.table({"URL": urls, "TEXT": [f"c{i}" for i in range(len(urls))]})
        (tmp_path / "urls").mkdir()
        pq.write_table(table, part_url(str(tmp_path / "urls"), 0))
        download = DownloadConfig(image_size=32, samples_per_shard=16, threads=4)
        download.shard_deadline_s = 2.0
        url_list = UrlList(str(tmp_path / "urls"), len(urls), download.samples_per_shard)
        downloader = ShardDownloader(
            str(tmp_path / "shards"), url_list, download, strict_fetch(deadline_s=30.0)
        )
        stats, elapsed = timed(lambda: downloader.download_shard(0))
    assert elapsed <= download.shard_deadline_s + 2 * SLACK_S
    assert stats["count"] == len(urls) and stats["successes"] == 1
    assert stats["status_dict"]["shard deadline exceeded"] == 11
    assert stats["retryable_failures"] == 11


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    phase=st.sampled_from(["status", "headers", "body"]),
    lead=st.integers(min_value=0, max_value=100_000),
    gap_s=st.floats(min_value=0.01, max_value=0.9),
)
def test_a_trickle_anywhere_at_any_pace_ends_at_the_deadline(faults, phase, lead, gap_s):
    deadline_s = 1.0
    fetcher = Fetcher(strict_fetch(deadline_s=deadline_s))
    result, elapsed = timed(lambda: fetcher.fetch(faults.trickle_url(phase, lead, gap_s)))
    assert result.error == "deadline exceeded", (phase, lead, gap_s, result.error)
    assert elapsed <= deadline_s + SLACK_S, (phase, lead, gap_s, elapsed)
