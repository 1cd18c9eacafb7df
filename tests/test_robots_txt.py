"""robots.txt as RFC 9309 reads it, fetched once per site per task, bounded, on loopback."""

from __future__ import annotations

import gzip
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import FetchConfig
from pipeline.fetch import Fetcher, is_retryable
from pipeline.robots_txt import (
    MAX_RULES,
    MAX_WILDCARDS,
    ROBOTS_DISALLOWS,
    RobotsCache,
    SiteRules,
    parse_rules,
    unreachable,
)
from tests.hostile_web import sample_image

AGENT = "flip-pipeline"
RULES = b"""# comments and unknown lines are ignored
User-agent: otherbot
Disallow: /

User-agent: *
Disallow: /private/
Allow: /private/public/
Disallow: /*.gif$
Disallow: /tmp
Sitemap: http://example.com/sitemap.xml
"""


@pytest.mark.parametrize(
    "path, allowed",
    [
        ("/a.jpg", True),
        ("/private/a.jpg", False),
        ("/private/public/a.jpg", True),  # the longest match wins, whatever the order
        ("/x/y.gif", False),  # "*" matches any run of characters
        ("/x/y.gif?size=1", True),  # "$" anchors the end, the query included
        ("/tmp", False),
        ("/tmpfile.jpg", False),  # a rule is a prefix
        ("/TMP", True),  # paths are case-sensitive
    ],
)
def test_rules_for_any_agent(path, allowed):
    rules = parse_rules(RULES, AGENT)
    assert (rules.refusal(f"http://h{path}", AGENT) is None) is allowed


def test_an_agents_own_group_replaces_the_star_group():
    ours = b"User-agent: *\nDisallow: /\n\nUser-agent: Flip-Pipeline\nDisallow: /no/\n"
    rules = parse_rules(ours, AGENT)
    assert rules.refusal("http://h/a.jpg", AGENT) is None  # token matched case-insensitively
    assert rules.refusal("http://h/no/a.jpg", AGENT) == (ROBOTS_DISALLOWS, False)
    somebot = parse_rules(ours, "somebot")
    assert somebot.refusal("http://h/a.jpg", "somebot") == (ROBOTS_DISALLOWS, False)


@pytest.mark.parametrize(
    "text, allowed",
    [
        ("User-agent: flip\nDisallow: /\n", True),  # another product token, not a prefix
        ("User-agent: flip-pipeline/2.1\nDisallow: /\n", False),  # a version after the token
        ("User-agent: flip-pipeline\nDisallow:\n\nUser-agent: *\nDisallow: /\n", True),  # ours
        # a blank line ends nothing: consecutive user-agent lines share the rules after them
        ("User-agent: flip-pipeline\n\nUser-agent: *\nDisallow: /\n", False),
        ("User-agent: a\nUser-agent: flip-pipeline\nDisallow: /x\nUser-agent: *\nDisallow: /\n",
         True),  # a group of several agents; its rules only
        ("User-agent: flip-pipeline\nDisallow: /a\n\nUser-agent: flip-pipeline\nDisallow: /\n",
         False),  # two groups naming us are merged
        ("Sitemap: /s.xml\nDisallow: /\n", True),  # a rule before any group applies to none
    ],
)  # fmt: skip
def test_only_the_groups_for_our_token_apply(text, allowed):
    rules = parse_rules(text.encode(), AGENT)
    assert (rules.refusal("http://h/a.jpg", AGENT) is None) is allowed


def test_hostile_files_cost_bounded_time_and_memory():
    """Many agents over many rules (Protego files each rule under every agent of its group:
    their product), more rules than any site needs, more wildcards than a check should scan."""
    agents = "".join(f"User-agent: bot{i}\n" for i in range(2000))
    product = (agents + "allow:a\n" * 20000).encode()[: 512 << 10]
    started = time.monotonic()
    assert parse_rules(product, AGENT).refusal("http://h/a", AGENT) is None  # not for us
    assert time.monotonic() - started < 2.0
    many = ("User-agent: *\n" + "Disallow: /x\n" * (MAX_RULES + 1)).encode()
    assert parse_rules(many, AGENT).failure == ("robots.txt unreadable", False)
    stars = ("User-agent: *\nDisallow: /" + "*a" * (MAX_WILDCARDS + 1) + "\n").encode()
    assert parse_rules(stars, AGENT).failure == ("robots.txt unreadable", False)
    kept = parse_rules(("User-agent: *\n" + "Disallow: /x\n" * 100).encode(), AGENT)
    assert kept.held_bytes < 100_000  # our group's rules only, not the whole file


def test_hostile_bytes_parse_to_rules_not_errors():
    for body in (b"", b"\xff\xfe\x00garbage\x00", b"\xef\xbb\xbfUser-agent: *\nDisallow: /x\n"):
        rules = parse_rules(body, AGENT)
        assert rules.failure is None
    # a BOM before the first line does not hide it; invalid UTF-8 in a rule is replaced
    bom = b"\xef\xbb\xbfUser-agent: *\nDisallow: /x\n"
    assert parse_rules(bom, AGENT).refusal("http://h/x", AGENT)
    replaced = b"User-agent: *\nDisallow: /\xff\n"
    assert parse_rules(replaced, AGENT).refusal("http://h/a", AGENT) is None


def test_the_cache_fetches_each_origin_once_while_threads_wait():
    cache = RobotsCache(max_bytes=1 << 20)
    calls = []

    def slow_fetch():
        calls.append(1)
        time.sleep(0.2)
        return parse_rules(RULES, AGENT)

    with ThreadPoolExecutor(8) as pool:
        found = list(
            pool.map(
                lambda _: cache.rules("http://a:80", slow_fetch, time.monotonic() + 5), range(8)
            )
        )
    assert len(calls) == 1 and cache.fetches == 1
    assert all(rules is found[0] for rules in found)


def test_the_cache_keeps_its_byte_budget_dropping_the_least_recently_used():
    cache = RobotsCache(max_bytes=80_000)
    small = SiteRules(held_bytes=10_000)
    for name in "abcdefgh":
        cache.rules(name, lambda: small, 0)
    cache.rules("a", lambda: pytest.fail("a is cached"), 0)  # a is now the most recent
    cache.rules("i", lambda: small, 0)  # over budget: b goes
    assert cache.held_bytes <= 80_000
    refetched = []
    cache.rules("b", lambda: refetched.append(1) or small, 0)
    assert refetched == [1]
    # one site's file above an eighth of the budget is used, not kept: it pushes nothing out
    cache.rules("huge", lambda: SiteRules(held_bytes=50_000), 0)
    assert cache.held_bytes == 80_000
    cache.rules("a", lambda: pytest.fail("a is still cached"), 0)


def test_threads_waiting_on_a_fetch_get_its_result_even_when_it_is_not_kept():
    cache = RobotsCache(max_bytes=80_000)
    calls = []

    def huge():
        calls.append(1)
        time.sleep(0.2)
        return SiteRules(held_bytes=50_000)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: cache.rules("o", huge, time.monotonic() + 5), range(4)))
    assert len(calls) == 1


def test_an_unreachable_site_is_asked_again_later_and_a_failed_fetch_caches_nothing():
    now = [0.0]
    cache = RobotsCache(max_bytes=1 << 20, clock=lambda: now[0])
    answers = iter([unreachable(until=300.0), SiteRules()])
    assert cache.rules("o", lambda: next(answers), 0).failure == ("robots.txt unreachable", True)
    now[0] = 299.0
    assert cache.rules("o", lambda: pytest.fail("still unreachable"), 0).failure is not None
    now[0] = 301.0
    assert cache.rules("o", lambda: next(answers), 0).failure is None
    assert is_retryable("robots.txt unreachable")

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.rules("p", broken, 0)
    assert cache.rules("p", lambda: SiteRules(), 0).failure is None


class Site:
    """One origin on loopback: ``robots`` is what /robots.txt answers (status, body, headers),
    every other path an image; ``requests`` lists the paths asked for."""

    def __init__(self, robots=(404, b"", {})) -> None:
        self.robots = robots
        self.requests: list[str] = []
        self.image_headers: dict[str, str] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                site.requests.append(self.path)
                if self.path == "/robots.txt":
                    status, body, headers = site.robots
                else:
                    status, body, headers = 200, sample_image(1), site.image_headers
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Site:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def fetcher(**overrides) -> Fetcher:
    config = FetchConfig(deadline_s=3.0, socket_timeout_s=2.0, allowed_networks=["127.0.0.0/8"])
    for key, value in overrides.items():
        setattr(config, key, value)
    return Fetcher(config)


def test_a_task_obeys_the_sites_rules_and_asks_for_them_once():
    with Site((200, RULES, {})) as site:
        task = fetcher()
        urls = [f"{site.url}/img/{i}.jpg" for i in range(12)] + [f"{site.url}/private/a.jpg"] * 4
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(task.fetch, urls))
    assert all(r.data for r in results[:12])
    assert {(r.error, r.retryable) for r in results[12:]} == {(ROBOTS_DISALLOWS, False)}
    assert site.requests.count("/robots.txt") == 1
    assert not any(path.startswith("/private/") for path in site.requests)


@pytest.mark.parametrize(
    "robots, error",
    [
        ((404, b"", {}), None),  # no robots.txt: everything allowed
        ((403, b"User-agent: *\nDisallow: /\n", {}), None),  # any 4xx: the same
        ((500, b"", {}), "robots.txt unreachable"),  # server error: complete disallow
        ((503, b"", {"Retry-After": "1"}), "robots.txt unreachable"),
        ((429, b"", {}), "robots.txt unreachable"),  # as a server error (a site asking to wait)
        ((200, gzip.compress(b"User-agent: *\nDisallow: /\n"), {"Content-Encoding": "gzip"}),
         ROBOTS_DISALLOWS),  # a compressed file, undone as a browser would
        ((200, b"#" * (600 << 10) + b"\nUser-agent: *\nDisallow: /\n", {}), None),  # past the cap
        ((200, b"User-agent: *\nDisallow: /\n", {}), ROBOTS_DISALLOWS),
    ],
)  # fmt: skip
def test_what_a_robots_answer_means(robots, error):
    with Site(robots) as site:
        result = fetcher().fetch(f"{site.url}/a.jpg")
    assert result.error == error
    if error is not None:
        assert "/a.jpg" not in site.requests  # nothing is fetched from a disallowed site
    if error == "robots.txt unreachable":
        assert result.retryable


def test_robots_txt_redirects_are_followed_and_guarded():
    with Site((200, b"User-agent: *\nDisallow: /a\n", {})) as rules_host:
        moved = (301, b"", {"Location": f"{rules_host.url}/robots.txt"})
        with Site(moved) as site:
            assert fetcher().fetch(f"{site.url}/a.jpg").error == ROBOTS_DISALLOWS
        # a redirect into a network the guard refuses is never followed: the site has no
        # robots.txt to be had ("unavailable": open), as if it had answered 404
        inward = (302, b"", {"Location": "http://169.254.169.254/robots.txt"})
        with Site(inward) as site:
            assert fetcher().fetch(f"{site.url}/a.jpg").data is not None
            assert site.requests == ["/robots.txt", "/a.jpg"]
    looping = (302, b"", {"Location": "/robots.txt"})  # a loop: as if there were none
    with Site(looping) as site:
        assert fetcher().fetch(f"{site.url}/a.jpg").data is not None


def test_robots_txt_off_fetches_nothing_but_the_image():
    with Site((200, b"User-agent: *\nDisallow: /\n", {})) as site:
        assert fetcher(robots_txt=False).fetch(f"{site.url}/a.jpg").data is not None
    assert site.requests == ["/a.jpg"]


@pytest.mark.parametrize(
    "headers, error",
    [
        ({"tdm-reservation": "1"}, "TDM reservation"),
        ({"tdm-reservation": "0"}, None),
        ({"X-Robots-Tag": "noml"}, "X-Robots-Tag disallows use"),
        ({"X-Robots-Tag": "otherbot: noml"}, None),
    ],
)
def test_response_header_opt_outs(headers, error):
    with Site() as site:
        site.image_headers = headers
        assert fetcher().fetch(f"{site.url}/a.jpg").error == error


def test_a_workers_tasks_of_one_job_share_what_they_learned():
    from pipeline.robots_txt import worker_cache

    with Site((200, b"User-agent: *\nDisallow: /no\n", {})) as site:
        shared = worker_cache(1 << 20, "job-a")
        config = fetcher().config
        for _ in range(3):  # three tasks, one after another, in the same worker
            assert Fetcher(config, robots=shared).fetch(f"{site.url}/a.jpg").data
        assert site.requests.count("/robots.txt") == 1
        assert worker_cache(1 << 20, "job-a") is shared
        assert worker_cache(1 << 20, "job-b") is not shared  # another job starts afresh
