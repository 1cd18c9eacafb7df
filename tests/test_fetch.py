"""The fetch step against a hostile web on loopback: every fault ends with its own reason."""

from __future__ import annotations

import io
import json
import tarfile
from email.message import Message
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import FetchConfig
from pipeline.fetch import DomainThrottle, Fetcher, parse_retry_after, robots_disallows
from tests import phase_faults
from tests.hostile_web import EXPECTED, PRIVATE_URL, HostileWeb

LOOPBACK = ["127.0.0.0/8"]


def quick_fetch(**overrides) -> FetchConfig:
    config = FetchConfig(
        deadline_s=2.0,
        socket_timeout_s=1.0,
        retries=1,
        backoff_base_s=0.1,
        max_retry_after_s=2.0,
        allowed_networks=list(LOOPBACK),
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_guard_refuses_loopback_unless_allowed_and_never_connects():
    with HostileWeb() as web:
        url = web.base_url + "/ok/0.jpg"
        refused = Fetcher(quick_fetch(allowed_networks=[])).fetch(url)
        assert refused.data is None and refused.error == "blocked: non-public address"
        assert not refused.retryable
        assert "/ok/0.jpg" not in web.requests
        assert Fetcher(quick_fetch()).fetch(url).data is not None


def test_an_allowed_origin_is_exactly_that_origin():
    """The demo's allowance: its own server's scheme, host and port, not the rest of loopback
    (another port, a redirect there, another scheme, the same address by another name)."""
    with HostileWeb() as allowed, HostileWeb() as other:
        fetcher = Fetcher(quick_fetch(allowed_networks=[], allowed_origins=[allowed.base_url]))
        assert fetcher.fetch(allowed.base_url + "/ok/0.jpg").data is not None
        assert fetcher.fetch(allowed.base_url + "/redirect-ok").data is not None
        port = allowed.base_url.rsplit(":", 1)[1]
        for url in (
            other.base_url + "/ok/1.jpg",
            allowed.base_url + "/redirect-to?" + other.base_url + "/ok/2.jpg",
            f"http://localhost:{port}/ok/3.jpg",
            f"http://127.0.0.2:{port}/ok/4.jpg",
        ):
            result = fetcher.fetch(url)
            assert result.error == "blocked: non-public address", url
        assert not other.requests


@pytest.mark.parametrize(
    "origin",
    ["127.0.0.1:8000", "ftp://h", "http://h/path", "http://u@h", "http://h?q", "http://h:x"],
)
def test_an_origin_that_is_not_one_is_refused_at_load(origin):
    from flipcommon.config import ConfigError, load_config
    from pipeline.config import PipelineConfig

    with pytest.raises(ConfigError, match="allowed_origins"):
        load_config(PipelineConfig, None, [f"fetch.allowed_origins=[{origin!r}]"])


@pytest.mark.parametrize(
    "url",
    [
        PRIVATE_URL,
        "http://192.168.1.1/",
        "http://169.254.169.254/",
        "http://[::1]:9/",
        "http://0.0.0.0/",
        # IPv6 forms of private IPv4 hosts: NAT64 (DNS64 on a cloud subnet), 6to4,
        # IPv4-compatible, mapped; and the forms whose host cannot be read off or not public
        "http://[64:ff9b::a00:1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:a00:1::1]/",
        "http://[::a00:1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[64:ff9b:1::a00:1]/",
        "http://[fec0::1]/",
    ],
)
def test_guard_refuses_private_link_local_and_unspecified_addresses(url):
    result = Fetcher(quick_fetch(allowed_networks=[])).fetch(url)
    assert result.error == "blocked: non-public address"


def test_ipv6_forms_of_public_ipv4_hosts_stay_public():
    from pipeline.fetch import AddressGuard

    guard = AddressGuard()
    for address in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"):
        assert guard.permits(address), address
    # an allowed network covers its hosts whatever IPv6 form reaches them
    assert AddressGuard(["127.0.0.0/8"]).permits("64:ff9b::7f00:1")


def test_unsupported_schemes_are_refused():
    fetcher = Fetcher(quick_fetch())
    for url in ("file:///etc/passwd", "ftp://example.com/x.jpg", "http:///nohost"):
        assert fetcher.fetch(url).error == "unsupported url"


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://[::1/x.jpg", f"http://{'a' * 64}.example.com/x.jpg", "http://h:x/"],
)
def test_urls_python_cannot_parse_are_refused_cleanly(url):
    result = Fetcher(quick_fetch()).fetch(url)
    assert result.error == "unsupported url" and not result.retryable


def test_drip_feed_ends_at_the_deadline_not_never():
    with HostileWeb() as web:
        result = Fetcher(quick_fetch(retries=0)).fetch(web.base_url + "/drip")
    # Bytes keep coming every 0.2 s, so the 1 s per-read timeout never fires; only the
    # wall-clock deadline can end this request, and it reports itself by name.
    assert result.error == "deadline exceeded" and result.retryable


def test_retry_after_is_honoured_before_the_next_attempt():
    with HostileWeb() as web:
        result = Fetcher(quick_fetch()).fetch(web.base_url + "/retry-after-1s")
        first, second = web.requests["/retry-after-1s"]
    assert result.data is not None and result.attempts == 2
    assert second - first >= 1.0


def test_retry_after_longer_than_the_cap_gives_up_at_once_as_retryable():
    with HostileWeb() as web:
        result = Fetcher(quick_fetch(retries=3)).fetch(web.base_url + "/retry-after-1h")
        assert len(web.requests["/retry-after-1h"]) == 1
    assert result.error == "http 429" and result.retryable


def test_domain_throttle_spaces_requests_and_pauses_on_retry_after():
    now = [100.0]
    throttle = DomainThrottle(0.5, clock=lambda: now[0])
    assert [throttle.reserve("a.com") for _ in range(3)] == [0.0, 0.5, 1.0]
    assert throttle.reserve("b.com") == 0.0
    throttle.pause("b.com", 30)
    assert throttle.reserve("b.com") == 30.0


def test_robots_header_semantics():
    def headers(*values: str) -> Message:
        message = Message()
        for value in values:
            message["X-Robots-Tag"] = value
        return message

    directives = frozenset({"noai", "noindex"})
    assert robots_disallows(headers("noai"), "flip-pipeline", directives)
    assert robots_disallows(headers("nofollow, NoIndex"), "flip-pipeline", directives)
    assert robots_disallows(headers("flip-pipeline: noai"), "flip-pipeline", directives)
    assert not robots_disallows(headers("otherbot: noai"), "flip-pipeline", directives)
    assert not robots_disallows(headers("nofollow"), "flip-pipeline", directives)


def test_retry_after_parsing():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def _metadata(path: Path, urls: list[str]) -> str:
    n = len(urls)
    table = pa.table(
        {
            "SAMPLE_ID": pa.array(range(n), pa.int64()),
            "URL": urls,
            "TEXT": [f"a picture number {i}" for i in range(n)],
            "HEIGHT": pa.array([48] * n, pa.int32()),
            "WIDTH": pa.array([64] * n, pa.int32()),
            "LICENSE": ["?"] * n,
            "NSFW": ["UNLIKELY"] * n,
            "similarity": pa.array([0.3] * n, pa.float64()),
        }
    )
    pq.write_table(table, path)
    return str(path)


@pytest.mark.timeout(300)  # the bound: a hung request would hold the stage forever
def test_stage_survives_the_hostile_web(tmp_path, spark):
    from pipeline.config import PipelineConfig
    from pipeline.stage import build_shard_set

    with HostileWeb() as web, phase_faults.PhaseFaults(tmp_path) as faults:
        urls = web.urls()
        phase_urls = faults.urls()
        config = PipelineConfig(output_dir=str(tmp_path / "shards"))
        config.download.image_size = 32
        config.download.samples_per_shard = 8
        config.download.threads = 4
        config.download.max_pixels = 10_000_000
        # A per-operation timeout longer than the deadline: only the deadline ends a stall.
        config.fetch = quick_fetch(socket_timeout_s=5.0, ca_file=faults.ca_file)
        meta = _metadata(tmp_path / "hostile.parquet", list(urls) + list(phase_urls))
        manifest = build_shard_set(spark, config, [([meta], "parquet")])
        requests = {path: list(times) for path, times in web.requests.items()}

    out = tmp_path / "shards"
    rows = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))])
    # The final pass ran: a first-pass row flagged retryable is superseded by its retry row.
    retried = rows[rows["retryable"].fillna(False).astype(bool)]
    rows = rows[~rows["retryable"].fillna(False).astype(bool)]
    assert sorted(rows["retry_of"].dropna()) == sorted(retried["key"])
    columns = zip(rows["url"], rows["status"], rows["error_message"], strict=True)
    outcome = {(urls | phase_urls)[u]: (s, e) for u, s, e in columns}
    assert len(rows) == len(urls) + len(phase_urls)
    for behaviour in phase_faults.EXPECTED:
        expected = phase_faults.expected_after_robots_txt(behaviour)
        assert outcome.pop(behaviour) == expected, behaviour
    assert outcome.pop("private") == ("failed_to_download", "blocked: non-public address")
    for path, (status, reason) in EXPECTED.items():
        got_status, got_reason = outcome[path]
        assert got_status == status, (path, outcome[path])
        if reason is None:
            assert got_reason is None, path
        else:
            assert got_reason in reason.split("|"), (path, got_reason)

    counts = manifest["counts"]
    dl = counts["download"]
    succeeded = sum(1 for s, _ in EXPECTED.values() if s == "success")
    succeeded += sum(1 for _, s, _ in phase_faults.EXPECTED.values() if s == "success")
    assert (
        counts["rows_in"]
        == len(urls) + len(phase_urls)
        == counts["kept"] + dl["failed_to_download"] + dl["failed_to_resize"]
    )
    assert counts["kept"] == succeeded
    assert dl["retry_pass"]["recovered"] == 1  # /flaky, on its third request
    assert len(requests["/flaky"]) == 3 and len(requests["/retry-after-1h"]) == 2
    first, second = requests["/retry-after-1s"]
    assert second - first >= 1.0
    assert "/loop-back" in requests and not any("169.254" in p for p in requests)

    images = 0
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                        image.load()  # raises on a truncated or corrupt image
                        assert image.size == (32, 32)
                    images += 1
    assert images == succeeded == sum(json.loads((out / "sizes.json").read_text()).values())
    assert not list((out / "_work" / "staging").glob("*")), "no half-written shard is left"
