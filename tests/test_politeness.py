"""Politeness across the cluster: a site's URLs in few shards, its pace divided among them."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.domains import (
    SPREAD_FILE,
    domain_of_url,
    load_site_urls,
    load_spread,
    registrable_domain,
)
from pipeline.fetch import DomainThrottle
from pipeline.shard_download import SitePacing
from pipeline.site_placement import MAX_DOMAIN_SHARE, SitePlacement
from pipeline.site_schedule import paced_order
from pipeline.url_shards import (
    URL_COLUMNS,
    UrlList,
    read_url_list,
    write_url_list,
)
from tests.hostile_web import HostileWeb, max_requests_in_window


def test_registrable_domains_from_the_bundled_suffix_list():
    assert registrable_domain("i.pinimg.com") == "pinimg.com"
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert registrable_domain("IMG.Example.COM.") == "example.com"
    assert registrable_domain("127.0.0.2") == "127.0.0.2"
    assert registrable_domain("localhost") == "localhost"
    assert domain_of_url("http://[::1]:8080/x.jpg") == "::1"
    assert domain_of_url("http://cdn1.shop.example.com/a.jpg") == "example.com"
    assert domain_of_url("not a url") == "" and domain_of_url(None) == ""
    assert domain_of_url("http://[broken/x") == ""


def test_spellings_of_one_server_are_one_site():
    """What the resolver is asked for decides the site: IDNA folding and every IP form, so
    metadata cannot split one server into many separately paced sites."""
    for alias in ("img.exa\u00admple.com", "ｅｘａｍｐｌｅ.com", "ex\u200bample.COM."):
        assert registrable_domain(alias) == "example.com", alias
    for alias in ("2130706433", "0x7f.1", "127.000.0.01", "127.0.0.1"):
        assert registrable_domain(alias) == "127.0.0.1", alias
    assert domain_of_url("http://[2001:db8:0::1]:8080/x") == "2001:db8::1"
    assert registrable_domain("bücher.de") == registrable_domain("xn--bcher-kva.de")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_shard_starts_round_robin_over_its_sites():
    items = [(0, "http://a.com/1"), (1, "http://a.com/2"), (2, "http://b.com/1")]
    items += [(3, "http://x.a.com/3"), (4, "http://c.org/1")]
    clock = FakeClock()
    throttle = DomainThrottle(0.0, clock=clock)
    order = paced_order(items, throttle, 100.0, clock=clock, sleep=clock.sleep)
    assert [i for i, _ in order] == [0, 2, 4, 1, 3]


def test_a_paced_site_is_started_in_its_turns_and_the_others_in_between():
    """A site paced at 10 s per request in this task: its URLs go when their slots come (the
    worker books each as it starts), the 20 others' at once, none waits in a thread."""
    clock = FakeClock()
    throttle = DomainThrottle(10.0, {"paced.com": 1}, clock=clock, default_multiplier=0)
    items = [(i, f"http://paced.com/{i}") for i in range(3)]
    items += [(3 + i, f"http://s{i}.org/x") for i in range(20)]
    started = []
    for index, url in paced_order(items, throttle, 25.0, clock=clock, sleep=clock.sleep):
        started.append((index, clock.now))
        throttle.reserve(domain_of_url(url))  # what the worker does as it starts the URL
    assert started[0] == (0, 0.0) and all(t == 0.0 for i, t in started if i >= 3)
    assert started[-2:] == [(1, 10.0), (2, 20.0)] and len(started) == 23
    # a deadline before the third turn: the third URL is not started
    clock = FakeClock()
    throttle = DomainThrottle(10.0, {"paced.com": 1}, clock=clock, default_multiplier=0)
    order = paced_order(items, throttle, 15.0, clock=clock, sleep=clock.sleep)
    left = []
    for index, url in order:
        left.append(index)
        throttle.reserve(domain_of_url(url))
    assert 2 not in left and 1 in left and len(left) == 22


def test_a_spread_domain_is_paced_that_many_times_slower():
    now = [0.0]
    throttle = DomainThrottle(0.5, {"big.com": 4}, clock=lambda: now[0], lane=0, wall_offset_s=0)
    assert [throttle.reserve("big.com") for _ in range(3)] == [0.0, 2.0, 4.0]
    assert [throttle.reserve("small.com") for _ in range(3)] == [0.0, 0.5, 1.0]


def test_a_site_reached_only_by_redirect_is_paced_as_if_every_task_reached_it():
    from pipeline.config import DownloadConfig, FetchConfig
    from pipeline.shard_download import make_processor

    fetch = FetchConfig(per_domain_interval_s=0.5)
    pacing = SitePacing(None, concurrency=8)
    processor = make_processor(DownloadConfig(), fetch, None, pacing, frozenset({"own.com"}))
    throttle = processor.fetcher.throttle
    throttle._lane, throttle._wall_offset, throttle._clock = 0, 0.0, (lambda: 0.0)
    assert [throttle.reserve("own.com") for _ in range(3)] == [0.0, 0.5, 1.0]
    # shared by up to 8 tasks: 8 × the interval, and the 1% headroom for the nodes' clocks
    waits = [throttle.reserve("cdn-elsewhere.net") for _ in range(3)]
    assert waits == pytest.approx([0.0, 4.04, 8.08])


def test_a_shared_sites_grid_runs_its_headroom_under_the_allowance():
    throttle = DomainThrottle(
        0.5, {"big.com": 4}, clock=lambda: 0.0, lane=0, wall_offset_s=0, headroom=0.25
    )
    assert [throttle.reserve("big.com") for _ in range(3)] == [0.0, 2.5, 5.0]
    assert throttle.interval_for("big.com") == 2.5
    # a site only this task holds keeps the interval: one task keeps it exactly
    assert [throttle.reserve("own.com") for _ in range(2)] == [0.0, 0.5]
    assert throttle.interval_for("own.com") == 0.5
    with pytest.raises(ValueError, match="headroom"):
        DomainThrottle(0.5, headroom=-0.1)


def test_tasks_that_start_together_spread_a_shared_sites_first_requests():
    """Eight tasks start at once, each pacing a site shared by eight shards: their first
    requests fall over the whole first interval, not all at its start."""

    def first_wait(lane: int) -> float:
        throttle = DomainThrottle(0.5, {"big.com": 8}, clock=lambda: 0.0, lane=lane)
        return throttle.reserve("big.com")

    firsts = sorted(first_wait(lane) for lane in range(8))
    assert all(0.0 <= wait <= 4.0 for wait in firsts) and firsts[-1] > 3.0
    assert max_requests_in_window(firsts, 0.5) <= 2
    # a site only this task holds is not delayed
    assert DomainThrottle(0.5, {"big.com": 8}).reserve("small.com") == 0.0


def test_tasks_in_consecutive_lanes_never_book_the_same_instant():
    """Shards 0..n-1 of a site shared by k ≥ n tasks: their slots lie on one wall-clock grid,
    each shard's at its own place (the golden-ratio sequence of its id), so the cluster's
    requests are evenly spread: in any window of T seconds at most T/I + 2 of them, whenever
    the tasks started, where independent random phases bunch."""
    interval, k = 0.01, 64
    times = []
    for shard, begin in enumerate(np.random.default_rng(0).uniform(0, 5, k)):
        throttle = DomainThrottle(
            interval, {"big.com": k}, clock=lambda b=begin: b, lane=shard, wall_offset_s=0.0
        )
        times += [begin + throttle.reserve("big.com") for _ in range(40)]
    times = np.sort(np.asarray(times))
    steady = times[(times > 5 + k * interval) & (times < times.max() - 5)]
    for window in (0.25, 0.5, 1.0):  # random phases here: up to T/I + 8
        most = max_requests_in_window(list(steady), window)
        assert most <= round(window / interval) + 2, (window, most)
    # the wall clock is the grid: a task that starts later, or on a clock off by whole
    # periods, keeps its place on it
    late = DomainThrottle(interval, {"big.com": k}, clock=lambda: 7.0, lane=3, wall_offset_s=0)
    early = DomainThrottle(interval, {"big.com": k}, clock=lambda: 0.0, lane=3, wall_offset_s=0)
    place = (7.0 + late.reserve("big.com")) % (k * interval)
    assert place == pytest.approx(early.reserve("big.com") % (k * interval))


def test_a_site_too_large_to_keep_together_is_spread_over_the_whole_list(spark, tmp_path):
    """At 1 request/s per site and a 160 s shard deadline (5 s per kept-together site), a
    150-URL site would hold each of its shards for 150 s: it goes over every shard, a few URLs
    each. A 4-URL site (4 s) stays in one shard."""
    samples_per_shard = 40
    df, rows = _site_rows(spark, {"huge.example.com": 150, "small.example.org": 4})
    placement = SitePlacement(samples_per_shard, interval_s=1.0, shard_deadline_s=160.0)
    assert placement.spread_over_list(150) and not placement.spread_over_list(4)

    url_list = write_url_list(df, str(tmp_path), len(rows), samples_per_shard, placement=placement)
    shards = _shards_per_domain(url_list)
    assert len(shards["example.com"]) == url_list.shards == 8
    per_shard = [
        sum(
            "huge.example.com" in url
            for url in pq.read_table(url_list.part_url(i))["URL"].to_pylist()
        )
        for i in url_list.shard_ids
    ]
    # the spread lane is interleaved by rank: each shard holds its exact share (± 1 row)
    assert url_list.spread_rows == sum(per_shard) == 150
    for index, count in enumerate(per_shard):
        rows_here = min(samples_per_shard, len(rows) - index * samples_per_shard)
        assert abs(count - rows_here * 150 / len(rows)) <= 1, per_shard
    assert len(shards["example.org"]) <= 2
    assert load_site_urls(url_list.path)["example.com"] == 150
    # what a shard then waits on it, with 8 tasks at once: ~19 URLs × 1 s × 8
    pacing = SitePacing(url_list.path, concurrency=8)
    site, seconds = pacing.slowest_site(1.0)
    assert site == "example.com" and seconds == -(-150 // 8) * 8


def test_lanes_cut_every_rank_once_in_exact_shares():
    url_list = UrlList("unused", rows=103, samples_per_shard=10, spread_rows=37)
    together, spread = set(), set()
    for index in range(url_list.shards):
        kept, spread_ranks = url_list.lane_ranks(index)
        assert len(kept) + len(spread_ranks) == (10 if index < 10 else 3)
        assert abs(len(spread_ranks) - 37 / 103 * (len(kept) + len(spread_ranks))) <= 1
        together |= set(kept)
        spread |= set(spread_ranks)
    assert together == set(range(66)) and spread == set(range(66, 103))
    # a list without a spread lane is cut as before
    plain = UrlList("unused", rows=25, samples_per_shard=10)
    assert [plain.lane_ranks(i) for i in range(3)][2] == (range(20, 25), range(25, 25))


def _site_rows(spark, sizes: dict[str, int]):
    """URL-list rows for the named hosts (that many URLs each) and 60 small sites of 1-4 URLs:
    the DataFrame and its rows."""
    sizes = sizes | {f"img.site{i}.net": 1 + i % 4 for i in range(60)}
    rows = []
    for host, n in sizes.items():
        for i in range(n):
            rows.append((len(rows), f"http://{host}/{i}.jpg", f"caption {len(rows)}"))
    frame = pd.DataFrame(rows, columns=["SAMPLE_ID", "URL", "TEXT"])
    frame["LICENSE"], frame["NSFW"], frame["similarity"] = "?", "?", 0.3
    return spark.createDataFrame(frame).select(*URL_COLUMNS), rows


def _shards_per_domain(url_list: UrlList) -> dict[str, set]:
    """The shards (one part each) each domain lands in."""
    shards: dict[str, set] = {}
    for shard in url_list.shard_ids:
        urls = pq.read_table(url_list.part_url(shard), columns=["URL"]).column("URL").to_pylist()
        for url in urls:
            shards.setdefault(domain_of_url(url), set()).add(shard)
    return shards


def test_url_list_keeps_sites_together_and_records_their_spread(spark, tmp_path):
    samples_per_shard = 40
    df, rows = _site_rows(spark, {"big.example.com": 150, "mid.example.org": 30})

    first = write_url_list(df, str(tmp_path / "a"), len(rows), samples_per_shard)
    second = write_url_list(df, str(tmp_path / "b"), len(rows), samples_per_shard)
    shards = _shards_per_domain(first)
    # every row once, no sort or hash column leaking into the files; one part per shard,
    # each exactly samples_per_shard rows but the last
    parts = sorted((tmp_path / "a" / "_work" / "urls").glob("*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in first.shard_ids]
    tables = [pq.read_table(p) for p in parts]
    assert [t.num_rows for t in tables] == [40] * 8 + [len(rows) - 320] == [40] * 8 + [10]
    assert all(t.column_names == URL_COLUMNS for t in tables)
    assert read_url_list(first.path) == first and first.rows == len(rows)
    # deterministic: the same input gives the same files
    for a, b in zip(
        sorted((tmp_path / "a").rglob("*.parquet")),
        sorted((tmp_path / "b").rglob("*.parquet")),
        strict=True,
    ):
        assert pq.read_table(a).equals(pq.read_table(b))
    assert load_spread(first.path) == load_spread(second.path)
    # small sites sit in one shard, or two where a shard boundary cuts them
    for i in range(60):
        assert len(shards[f"site{i}.net"]) <= 2
    # the big site is cut into runs of a quarter shard, spread, not one shard-filling block
    run = int(samples_per_shard * MAX_DOMAIN_SHARE)
    assert len(shards["example.com"]) >= 150 // samples_per_shard + 1
    assert len(shards["example.com"]) <= 2 * -(-150 // run)
    # the recorded spread is exactly what the reader's cut gives
    expected = {domain: len(s) for domain, s in shards.items() if len(s) > 1}
    assert dict(load_spread(first.path)) == expected
    assert (tmp_path / "a" / "_work" / "urls" / SPREAD_FILE).exists()


@pytest.mark.timeout(300)
def test_a_site_gets_at_most_one_request_per_interval_from_all_tasks(spark, tmp_path, caplog):
    """Three sites on loopback (127.0.0.2-4), their URLs spread over shards that run two at a
    time; the interval must hold for all tasks together: in any window of T seconds a site sees
    at most T/I requests, plus one per task running at once (the pacing's phase)."""
    from pipeline.config import PipelineConfig
    from pipeline.stage import build_shard_set
    from tests.test_fetch import _metadata, quick_fetch

    interval, tasks = 0.25, 2
    with contextlib.ExitStack() as stack:
        webs = [stack.enter_context(HostileWeb(f"127.0.0.{i}")) for i in (2, 3, 4)]
        urls = [f"{web.base_url}/ok/{i}.jpg" for web in webs for i in range(24)]
        config = PipelineConfig(output_dir=str(tmp_path / "shards"))
        config.download.image_size = 32
        config.download.samples_per_shard = 12
        config.download.threads = 8
        config.download.processes = tasks
        config.download.progress_interval_s = 1.0
        config.fetch = quick_fetch(per_domain_interval_s=interval)
        meta = _metadata(tmp_path / "polite.parquet", urls)
        with caplog.at_level(logging.INFO, logger="pipeline.progress"):
            manifest = build_shard_set(spark, config, [([meta], "parquet")])
        # every request counts against the interval, robots.txt included (once per task)
        times = [sorted(t for ts in web.requests.values() for t in ts) for web in webs]
        robots = [len(web.requests["/robots.txt"]) for web in webs]

    assert manifest["counts"]["kept"] == len(urls)
    spread = load_spread(str(tmp_path / "shards" / "_work" / "urls"))
    assert all(spread[f"127.0.0.{i}"] >= tasks for i in (2, 3, 4)), spread
    for site, robots_fetches in zip(times, robots, strict=True):
        assert 1 <= robots_fetches <= len(urls) // config.download.samples_per_shard
        assert len(site) == 24 + robots_fetches
        for window in (1.0, 2.0, 4.0):
            assert max_requests_in_window(site, window) <= window / interval + tasks, (window, site)

    # The paced run lasts many seconds: the driver printed progress while it ran, not only at
    # the end, and the manifest keeps the run's figures.
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    partial = [line for line in lines if not line.startswith(f"download: {len(urls)}/")]
    assert len(partial) >= 2 and "images/s" in partial[-1] and "% ok" in partial[-1], lines
    assert lines[-1].startswith(f"download: {len(urls)}/{len(urls)} samples (100.0%)"), lines
    run = manifest["counts"]["download"]["run"]
    assert run["samples"] == len(urls) and run["success_rate"] == 1.0
    assert run["images_per_s"] > 0 and len(run["timeline"]) >= 3


def test_url_list_is_the_same_whatever_the_partitioning(spark, tmp_path, monkeypatch):
    """Dedup keeps the smallest SAMPLE_ID and each part holds exact ranks of one total order, so
    other shuffle partitions and another cut of the sort give the same (shard, row, URL)
    triples — the keys a restart would give — each URL once."""
    import pyspark.sql.functions as F

    from pipeline import url_shards
    from pipeline.stage import deduplicated

    rows = []
    for i in range(700):
        host = f"img{i % 9}.site{i % 37}.com" if i % 5 else "cdn.big.example.org"
        rows.append((i, f"http://{host}/{i}.jpg", f"caption {i}", f"license {i % 3}"))
    rows += [(10_000 + i, url, text, "dup") for i, url, text, _ in rows[::7]]  # duplicates
    frame = pd.DataFrame(rows, columns=["SAMPLE_ID", "URL", "TEXT", "LICENSE"])
    frame["NSFW"], frame["similarity"] = "UNLIKELY", 0.3
    original = spark.conf.get("spark.sql.shuffle.partitions")

    def build(folder: str, shuffle_partitions: int, run_rows: int) -> list[tuple]:
        spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))
        monkeypatch.setattr(url_shards, "RUN_ROWS", run_rows)
        df = spark.createDataFrame(frame.sample(frac=1, random_state=shuffle_partitions))
        unique = deduplicated(df.repartition(shuffle_partitions, F.rand(shuffle_partitions)))
        url_list = write_url_list(unique, str(tmp_path / folder), 700, 64)
        triples = []
        for shard in url_list.shard_ids:
            table = pq.read_table(url_list.part_url(shard)).to_pylist()
            triples += [(shard, i, r["URL"], r["SAMPLE_ID"]) for i, r in enumerate(table)]
        return triples

    try:
        first = build("a", 3, 64)
        second = build("b", 11, 200)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", original)
    assert first == second
    assert len({url for _, _, url, _ in first}) == len(first) == 700
    assert all(sample_id < 10_000 for *_, sample_id in first)  # the smallest SAMPLE_ID kept


@pytest.mark.parametrize("overshoot_s", [0.0, 0.001, 0.004])
def test_a_feeder_that_wakes_late_keeps_a_shared_sites_pace(overshoot_s):
    """The real feed and throttle on a simulated clock whose sleeps all end late (a thread
    wakes a few ms after its time), and each URL booked by its worker 3 ms after the feed
    handed it out, with a wall clock near today's (~1.7e9 s): a shared site's URLs still go
    out at one per period, on the task's place of the grid, none waiting a whole period."""
    from pipeline.site_schedule import PacedOrder

    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds + overshoot_s

    interval, k, urls = 0.002, 2048, 40
    throttle = DomainThrottle(
        interval, {"big.com": k}, clock=lambda: now[0], lane=5, wall_offset_s=1.7e9
    )
    items = [(i, f"http://big.com/{i}.jpg") for i in range(urls)]
    sent = []
    for _ in PacedOrder(items, throttle, stop_at=1e6, clock=lambda: now[0], sleep=sleep):
        now[0] += 0.003  # the worker books its slot a little later
        wait = throttle.reserve("big.com")
        assert wait < interval * k / 2, wait  # never a whole period
        sent.append(now[0] + wait)
    period = interval * k
    assert len(sent) == urls
    assert (sent[-1] - sent[0]) / (urls - 1) == pytest.approx(period, rel=0.01)
    places = {round(((t + 1.7e9) % period) / interval) for t in sent}
    assert len(places) <= 3, places  # one place on the grid (give or take the lateness)
