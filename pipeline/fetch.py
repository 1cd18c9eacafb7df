"""Fetch one image URL politely and safely: the step img2dataset's downloader lacks.

img2dataset fetches with ``urllib.urlopen(timeout=…)``, whose timeout bounds each socket
operation, not the request: a server that drips one byte every few seconds holds a thread
forever. It also retries at once without backoff, ignores Retry-After, has no per-domain limit
and follows redirects to any address. This module replaces that step only:

- one wall-clock deadline per attempt that bounds every phase (name resolution, connect, TLS
  handshake, status line, headers, body, every redirect hop; see ``pipeline.deadline_net``),
  ended early by the shard's budget; caps on body bytes and (http.client's) on header lines;
- retries with exponential backoff (jittered) on 408/429/5xx and transport errors, honouring
  Retry-After, which also pauses the whole domain for this task;
- a per-site minimum interval between requests, kept cluster-wide with the URL list's domain
  spread (``pipeline.domains``);
- an SSRF guard: the host is resolved once, every resolved address must be public (or inside an
  allowed network, or the request's origin is one allowed by name, as the demo allows its own
  server), and the connection goes to that checked address, so DNS cannot change it between
  check and use; every redirect hop is checked the same way;
- the opt-outs: robots.txt (``pipeline.robots_txt``: fetched once per site per task, under
  the same deadline and pacing), the X-Robots-Tag directives (img2dataset's user-agent token
  semantics, plus ``noml``) and TDM-Rep's ``tdm-reservation: 1`` header.

Errors are short, low-cardinality reasons (``http 404``, ``deadline exceeded``…) because they
are counted per reason in the shard stats and the manifest.
"""

from __future__ import annotations

import http.client
import ipaddress
import math
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import quote, urljoin, urlsplit

from pipeline.byte_budget import WAITED_FOR_MEMORY, ByteBudget
from pipeline.config import FetchConfig
from pipeline.deadline_net import (
    NO_SUCH_HOST,
    Deadline,
    DeadlineExceeded,
    Resolver,
    connect,
    tls_context,
    wrap_tls,
)
from pipeline.domains import domain_of_url
from pipeline.robots_txt import (
    ALLOW_ALL,
    RobotsCache,
    SiteRules,
    origin_of,
    parse_rules,
    unreachable,
)

# Jitter and lanes from the OS, not the random module's shared state: img2dataset's blurrer
# calls random.seed(42) on every blur, which would give every task the same draws.
_RANDOM = random.SystemRandom()
CHUNK_BYTES = 64 * 1024
WINDOW_BYTES = 1 << 20  # a body's room in the task's byte budget is taken this much ahead
SHARD_DEADLINE = "shard deadline exceeded"  # the reason a task's own deadline gives
DEADLINE_EXCEEDED = "deadline exceeded"  # an attempt's own deadline
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


@dataclass(frozen=True)
class FetchResult:
    data: bytes | None
    error: str | None = None
    retryable: bool = False  # worth another try later (the stage's final pass)
    attempts: int = 1


class FetchError(Exception):
    def __init__(self, reason: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


# Reasons the final retry pass re-fetches; kept here so stats written by any run can be
# classified again from the reason alone.
RETRYABLE_REASONS = frozenset(
    {f"http {code}" for code in RETRYABLE_STATUS}
    | {
        "timeout",
        "deadline exceeded",
        "connection reset",
        "connection refused",
        "connection closed",
        "incomplete body",
        "dns failure",
        "network error",
        SHARD_DEADLINE,
        "robots.txt unreachable",
        WAITED_FOR_MEMORY,
    }
)


def is_retryable(reason: str | None) -> bool:
    return reason in RETRYABLE_REASONS


GOLDEN_FRACTION = (5**0.5 - 1) / 2
GRID_TOLERANCE_S = 1e-6  # a wall time's rounding is ~2.4e-7 s
# How late a shared site's place may still be taken: a thread handing a URL to another wakes
# a few ms late (Python's switch interval is 5 ms); missing the place would cost a whole period.
GRID_LATENESS_S = 0.025


class DomainThrottle:
    """A minimum interval between requests to one site (registrable domain), shared by a
    task's threads. A site with a multiplier k (the shards of it that may run at once,
    ``SitePacing``) is paced k times slower, so those shards together keep to ``interval_s``.

    A site without a multiplier gets ``default_multiplier``: a download task sets it to the
    most tasks at once, for sites it reaches only through redirects (any task may).

    A shared site's slots lie on one wall-clock grid for the whole cluster, period k ×
    interval × (1 + ``headroom``), each task at its own place on it: the fractional part of
    ``lane`` × the golden ratio. The lane is the task's executor slot's
    (``pipeline.task_lanes``): the first wave's shard ids, consecutive, whose places are spread
    evenly over the period (the three-gap theorem), so the site hears about one request per
    interval from the cluster in short windows too, not only on average. Independent random
    phases bunch: 1.16 × the allowance in 1-s windows at 2,048 tasks, the shard ids as lanes
    1.054 ×, leased lanes 1.008 × (the download simulation); what is left is the nodes' clocks
    disagreeing (1 ms apart, as NTP keeps them), which ``headroom`` (1%) covers. A throttle
    without a lane draws one at random per site."""

    def __init__(
        self,
        interval_s: float,
        multipliers: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        lane: int | None = None,
        default_multiplier: int = 1,
        wall_offset_s: float | None = None,
        headroom: float = 0.0,
    ):
        if headroom < 0:
            raise ValueError(f"headroom must be >= 0, not {headroom}")
        self.interval_s = interval_s
        self.headroom = headroom
        self.multipliers = multipliers or {}
        self.default_multiplier = default_multiplier
        self._clock = clock
        self._lane = lane
        # wall time − ``clock``: the grid is on the wall clock, which the nodes share
        self._wall_offset = time.time() - clock() if wall_offset_s is None else wall_offset_s
        self._next_free: dict[str, float] = {}
        self._lanes: dict[str, int] = {}
        self._lock = threading.Lock()

    def interval_for(self, domain: str) -> float:
        """The gap between this task's requests to ``domain``: a shared site's is its grid's
        period."""
        shared = self.multipliers.get(domain, self.default_multiplier)
        return self.interval_s * shared * (1.0 + self.headroom if shared > 1 else 1.0)

    def _slot(self, domain: str, now: float) -> float:
        """``domain``'s next slot (on the throttle's clock), which may have just passed: any
        time from its next free one for a site only this task holds; for a shared one, the
        task's next place on the cluster's grid, or the last one if it passed only a little
        while ago (``GRID_LATENESS_S``, at most half a period) and is the one due: a thread that
        wakes a little late keeps its place instead of waiting a whole period. A task's first
        request waits for its place (tasks that start together must not all send at once).
        Under the lock."""
        free = self._next_free.get(domain)
        shared = self.multipliers.get(domain, self.default_multiplier)
        if shared <= 1 or self.interval_s <= 0:
            return now if free is None else max(now, free)
        if domain not in self._lanes:
            self._lanes[domain] = _RANDOM.randrange(1 << 30) if self._lane is None else self._lane
        period = self.interval_s * shared * (1.0 + self.headroom)
        place = (self._lanes[domain] * GOLDEN_FRACTION) % 1.0 * period

        def place_from(at: float) -> float:  # the first place at or after ``at``
            past = math.fmod(at + self._wall_offset - place, period) % period
            if past <= GRID_TOLERANCE_S or period - past <= GRID_TOLERANCE_S:
                return at  # on a place, give or take the float rounding of a wall time
            return at + period - past

        if free is None:  # the first: the next place, set now so a late booking still gets it
            free = self._next_free[domain] = place_from(now)
        last = now - math.fmod(now + self._wall_offset - place, period) % period
        late = min(period / 2, max(self.interval_s, GRID_LATENESS_S))
        if now - last <= late and last >= free - GRID_TOLERANCE_S:
            return last
        return place_from(max(now, free))

    def reserve(self, domain: str) -> float:
        """Book the next slot for ``domain``; return how long to wait for it."""
        with self._lock:
            now = self._clock()
            slot = self._slot(domain, now)
            self._next_free[domain] = slot + self.interval_for(domain)
            return max(0.0, slot - now)

    def next_slot(self, domain: str) -> float:
        """When ``domain``'s next slot is (on the throttle's clock), without booking it: in the
        past when it is one that may still be taken late."""
        with self._lock:
            return self._slot(domain, self._clock())

    def pause(self, domain: str, seconds: float) -> None:
        """The site asked us to come back later (Retry-After): nobody in this task calls it
        before then."""
        with self._lock:
            until = self._clock() + seconds
            self._next_free[domain] = max(self._next_free.get(domain, 0.0), until)


# IPv6 forms that lead to an IPv4 host: the guard judges that host, not the IPv6 wrapping.
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: DNS64 on cloud subnets
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, still routed by some stacks
# IPv6 forms whose IPv4 host cannot be read off the address (RFC 8215's local-use NAT64 puts it
# where the operator chose) or that are not public (site-local, deprecated): refused.
NOT_PUBLIC_V6 = [ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("fec0::/10")]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and leads to: mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::a.b.c.d), 6to4 (2002:AABB:CCDD::) or IPv4-compatible (::a.b.c.d); else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_WELL_KNOWN or (ip in IPV4_COMPATIBLE and int(ip) > 0xFFFF):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


Origin = tuple[str, str, int]  # (scheme, host, port), the host as urlsplit lowercases it


def parse_origin(text: str) -> Origin:
    """An http(s) origin as ``fetch.allowed_origins`` lists it (``http://127.0.0.1:8000``): a
    scheme, a host and an optional port, nothing else; ValueError otherwise."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host[:port]")
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an origin has no user, path, query or fragment")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


@dataclass
class AddressGuard:
    """Refuses non-public addresses unless they fall in an explicitly allowed network, or the
    request goes to an origin allowed by name (whatever its host resolves to)."""

    allowed_networks: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]
        self._origins = {parse_origin(o) for o in self.allowed_origins}

    def permits(self, address: str, origin: Origin | None = None) -> bool:
        if origin is not None and origin in self._origins:
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address):
            if any(ip in net for net in NOT_PUBLIC_V6):
                return any(ip in net for net in self._allowed)
            ip = embedded_ipv4(ip) or ip  # the IPv4 host a translator or tunnel would reach
        if any(ip in net for net in self._allowed):
            return True
        return ip.is_global and not ip.is_multicast

    def choose(self, addresses: list[str], origin: Origin | None = None) -> str:
        """The first address permitted for ``origin``; FetchError if there is none."""
        for address in addresses:
            if self.permits(address, origin):
                return address
        raise FetchError("blocked: non-public address")


def robots_disallows(headers: Message, ua_token: str, directives: frozenset[str]) -> bool:
    """True if an X-Robots-Tag header (for all agents or for ``ua_token``) forbids use."""
    for value in headers.get_all("X-Robots-Tag") or []:
        agent, sep, rest = value.partition(":")
        # "noindex, nofollow" has no agent; "otherbot: noai" names one. A colon can only mean
        # an agent prefix when what precedes it is a single token.
        if sep and " " not in agent.strip() and "," not in agent:
            target, listed = agent.strip().lower(), rest
        else:
            target, listed = None, value
        if target not in (None, ua_token):
            continue
        if {d.strip().lower() for d in listed.split(",")} & directives:
            return True
    return False


class Fetcher:
    """Fetches image bytes under a FetchConfig. One per download task; thread-safe."""

    def __init__(
        self,
        config: FetchConfig,
        sleep: Callable[[float], None] = time.sleep,
        resolver: Resolver | None = None,
        pace_multipliers: Mapping[str, int] | None = None,
        unknown_site_multiplier: int = 1,
        lane: int | None = None,
        budget: ByteBudget | None = None,
        robots: RobotsCache | None = None,
    ):
        self.config = config
        self.budget = budget  # the task's bytes of bodies held (None: unbounded)
        self.guard = AddressGuard(list(config.allowed_networks), list(config.allowed_origins))
        self.resolver = resolver or Resolver(
            cache_s=config.dns_cache_s, negative_cache_s=config.dns_negative_cache_s
        )
        self.tls = tls_context(config.ca_file)
        self.throttle = DomainThrottle(
            config.per_domain_interval_s,
            pace_multipliers,
            default_multiplier=unknown_site_multiplier,
            lane=lane,
            headroom=config.shared_site_headroom,
        )
        self.directives = frozenset(d.strip().lower() for d in config.disallowed_directives)
        self.ua_token = config.user_agent_token.strip().lower()
        # robots.txt rules: the given cache (a worker's, shared by its tasks), else our own
        if config.robots_txt:
            self.robots = robots or RobotsCache(config.robots_txt_cache_bytes)
        else:
            self.robots = None
        self.user_agent = f"{BROWSER_UA} (compatible; {config.user_agent_token})"
        self._sleep = sleep

    def fetch(self, url: str, stop_at: float = float("inf")) -> FetchResult:
        """Up to ``1 + retries`` attempts; never sleeps past ``stop_at`` (monotonic)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return FetchResult(self._attempt(url, stop_at), attempts=attempts)
            except FetchError as err:
                last = err
            if not last.retryable or attempts > self.config.retries:
                break
            wait = self._backoff(attempts, last.retry_after)
            if wait is None or time.monotonic() + wait > stop_at:
                break
            self._sleep(wait)
        return FetchResult(None, last.reason, last.retryable, attempts)

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next attempt, or None when the server asks for too long."""
        if retry_after is not None:
            return retry_after if retry_after <= self.config.max_retry_after_s else None
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return ceiling * _RANDOM.uniform(0.5, 1.0)

    def _attempt(self, url: str, stop_at: float) -> bytes:
        # A site's robots.txt is a request of its own, with its own deadline; waiting for the
        # domain's turn is queueing, not the request: the deadline starts after.
        self._obey_robots(url, stop_at, SHARD_DEADLINE)
        self._wait_turn(domain_of_url(url), stop_at, SHARD_DEADLINE)
        deadline = Deadline.within(self.config.deadline_s, self.config.socket_timeout_s, stop_at)
        seen: set[str] = set()
        for hop in range(self.config.max_redirects + 1):
            if url in seen:
                raise FetchError("redirect loop")
            seen.add(url)
            if hop:  # a redirect to another site: its robots.txt within this attempt's time
                self._obey_robots(url, deadline.at, deadline.reason)
                self._wait_turn(domain_of_url(url), deadline.at, deadline.reason)
            outcome = self._request(url, deadline)
            if isinstance(outcome, bytes):
                return outcome
            url = outcome  # a redirect target, checked on the next hop
        raise FetchError("too many redirects")

    def _wait_turn(self, site: str, stop_at: float, reason: str) -> None:
        wait = self.throttle.reserve(site)
        if time.monotonic() + wait > stop_at:
            raise FetchError(reason, retryable=True)
        if wait > 0:
            self._sleep(wait)

    def _obey_robots(self, url: str, stop_at: float, reason: str) -> None:
        """Raise FetchError if the URL's site's robots.txt keeps us out of it (fetching the
        file first if this task has not yet); waits no later than ``stop_at``."""
        if self.robots is None:
            return
        scheme, host, port, target = request_parts(url)
        rules = self.robots.rules(
            f"{self.ua_token} {origin_of(scheme, host, port)}",
            lambda: self._fetch_robots(scheme, host, port, stop_at, reason),
            stop_at,
        )
        if rules is None:  # another thread is still fetching it
            raise FetchError(reason, retryable=True)
        refusal = rules.refusal(f"{scheme}://host{target}", self.ua_token)
        if refusal is not None:
            raise FetchError(*refusal)

    def _fetch_robots(
        self, scheme: str, host: str, port: int, stop_at: float, stop_reason: str
    ) -> SiteRules:
        """One origin's robots.txt, as RFC 9309 reads the answer (``pipeline.robots_txt``).
        ``stop_at``: when the caller must be done (the task's end, or the image attempt's
        deadline for a redirect's site), failing with ``stop_reason`` there."""
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/robots.txt"
        self._wait_turn(domain_of_url(url), stop_at, stop_reason)
        own = time.monotonic() + self.config.deadline_s
        deadline = Deadline(
            min(own, stop_at),
            self.config.socket_timeout_s,
            stop_reason if stop_at < own else DEADLINE_EXCEEDED,
        )
        seen: set[str] = set()
        for hop in range(self.config.max_redirects + 1):
            if url in seen:
                return ALLOW_ALL  # a redirect loop: no robots.txt to be had
            seen.add(url)
            try:
                if hop:
                    self._wait_turn(domain_of_url(url), deadline.at, deadline.reason)
                outcome = self._request(url, deadline, self._robots_response, "text/plain,*/*")
            except FetchError as err:
                if err.retryable and stop_at < own and deadline.passed():
                    # the caller's time is up, not the file's: nothing learned about the site
                    raise FetchError(stop_reason, retryable=True) from err
                if not err.retryable:
                    if hop == 0 and err.reason in ORIGIN_FAILURES:
                        # what every URL of the origin would meet (no such host, a blocked
                        # address, a TLS failure): that reason, asked again later
                        until = time.monotonic() + self.config.robots_txt_unreachable_s
                        return SiteRules(failure=(err.reason, False), expires_at=until)
                    # an answer that is no robots.txt (a garbled response, a redirect to
                    # nowhere usable): "unavailable", as a 4xx
                    return ALLOW_ALL
                return unreachable(time.monotonic() + self.config.robots_txt_unreachable_s)
            if isinstance(outcome, SiteRules):
                return outcome
            url = outcome
        return ALLOW_ALL  # more redirects than allowed: the standard's "unavailable"

    def _robots_response(
        self, url: str, response: http.client.HTTPResponse, deadline: Deadline
    ) -> SiteRules | str:
        status = response.status
        target = redirect_target(url, response)
        if target is not None:
            return target
        if 200 <= status < 300:
            cap = self.config.robots_txt_max_bytes
            body = self._read_body(response, deadline, cap, truncate=True, allow_empty=True)
            encoding = (response.getheader("Content-Encoding") or "").strip().lower()
            return parse_rules(decoded_body(body, encoding, cap, truncate=True), self.ua_token)
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.getheader("Retry-After"))
            if retry_after is not None:  # the site asked: nobody in this task calls it before
                self.throttle.pause(
                    domain_of_url(url), min(retry_after, self.config.max_retry_after_s)
                )
            return unreachable(time.monotonic() + self.config.robots_txt_unreachable_s)
        return ALLOW_ALL  # 4xx: the site has none

    def _request(
        self,
        url: str,
        deadline: Deadline,
        handle: Callable[[str, http.client.HTTPResponse, Deadline], object] | None = None,
        accept: str = "image/*,*/*;q=0.5",
    ):
        """One hop: the response's outcome by ``handle`` (default: an image's bytes, or the
        redirect target as a string)."""
        scheme, host, port, path = request_parts(url)
        conn: http.client.HTTPConnection | None = None
        try:
            addresses = self.resolver.addresses(host, port, deadline)
            address = self.guard.choose(addresses, (scheme, host, port))
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, context=self.tls)
                conn.sock = wrap_tls(connect(address, port, deadline), self.tls, host)
            else:
                conn = http.client.HTTPConnection(host, port)
                conn.sock = connect(address, port, deadline)  # pinned: no second lookup
            conn.request(
                "GET",
                path,
                headers={"User-Agent": self.user_agent, "Accept": accept},
            )
            response = conn.getresponse()
            return (handle or self._handle)(url, response, deadline)
        except FetchError:
            raise
        except Exception as err:  # noqa: BLE001 - every transport failure gets a reason
            raise transport_error(err, deadline) from err
        finally:
            if conn is not None:
                conn.close()

    def _handle(
        self, url: str, response: http.client.HTTPResponse, deadline: Deadline
    ) -> bytes | str:
        status = response.status
        target = redirect_target(url, response)
        if target is not None:
            return target
        if status != 200:
            retry_after = parse_retry_after(response.getheader("Retry-After"))
            if retry_after is not None:
                pause = min(retry_after, self.config.max_retry_after_s)
                self.throttle.pause(domain_of_url(url), pause)
            raise FetchError(f"http {status}", status in RETRYABLE_STATUS, retry_after)
        if self.directives and robots_disallows(response.headers, self.ua_token, self.directives):
            raise FetchError("X-Robots-Tag disallows use")
        if self.config.tdm_reservation and tdm_reserved(response.headers):
            raise FetchError("TDM reservation")
        declared_bytes = declared_length(response.getheader("Content-Length"))
        if declared_bytes > self.config.max_bytes:
            raise FetchError("body too large")
        # the task's budget of bytes held (pipeline.byte_budget): taken a window ahead of what
        # has arrived (a server that declares much and sends nothing holds one window), given
        # back when the sample is finished
        holding = BodyHolding(self.budget, deadline.at)
        try:
            body = self._read_body(
                response, deadline, self.config.max_bytes, holding=holding, expected=declared_bytes
            )
            holding.give_back(holding.count - len(body))  # a body shorter than declared
            encoding = (response.getheader("Content-Encoding") or "").strip().lower()
            data = decoded_body(body, encoding, self.config.max_bytes, holding=holding)
            if data is not body:
                holding.give_back(len(body))
            return data
        except BaseException:
            holding.give_back(holding.count)
            raise

    def release(self, fetched: FetchResult) -> None:
        """Give a finished sample's body back to the task's byte budget."""
        if self.budget is not None and fetched.data is not None:
            self.budget.release(len(fetched.data))

    def _read_body(
        self,
        response: http.client.HTTPResponse,
        deadline: Deadline,
        cap: int,
        truncate: bool = False,
        allow_empty: bool = False,
        holding: BodyHolding | None = None,
        expected: int = 0,
    ) -> bytes:
        """The body, never more than ``cap`` bytes: past it, FetchError, or with ``truncate``
        its first ``cap`` bytes. With ``holding``, room for every chunk is taken from the
        task's budget before it is read, a window at a time (up to ``expected``, the declared
        length, when there is one); the caller gives back what the body did not use."""
        chunks, total = [], 0
        while True:
            # Every socket read is armed with what is left of the deadline (DeadlineSocket),
            # so a body that drips forever ends at the deadline, not never.
            if deadline.passed():
                raise FetchError(deadline.reason, retryable=True)
            short = holding is not None and holding.count - total < CHUNK_BYTES
            if short and (not expected or holding.count < expected):
                left = expected - holding.count if expected else WINDOW_BYTES
                holding.take(min(WINDOW_BYTES, max(left, CHUNK_BYTES)))
            chunk = response.read1(CHUNK_BYTES)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                if truncate:
                    chunks.append(chunk[: len(chunk) - (total - cap)])
                    return b"".join(chunks)
                raise FetchError("body too large")
            if holding is not None and total > holding.count:  # past a declared length
                holding.take(total - holding.count)
            chunks.append(chunk)
        # http.client ends a body quietly when the server closes early; the declared length
        # still owed says so.
        if response.length:
            raise FetchError("incomplete body", retryable=True)
        if total == 0 and not allow_empty:
            raise FetchError("empty body")
        return b"".join(chunks)


# Content-Encoding a browser undoes (we ask for none; misconfigured servers send them anyway):
# zlib's window bits for each. Others ("br": no decoder installed) are left to the decoder.
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


DECODE_PIECE_BYTES = 1 << 20


def decoded_body(
    body: bytes, encoding: str, max_bytes: int, truncate: bool = False, holding=None
) -> bytes:
    """The body with its Content-Encoding undone, as a browser would, never past ``max_bytes``
    decoded (a few KB of gzip can hold gigabytes): past it, FetchError, or with ``truncate``
    the first ``max_bytes``. "deflate" may come without its zlib header, as some servers send
    it. Decoded a piece at a time, each piece taken from ``holding`` (a ``BodyHolding``)
    before the next is made; what a failed decoding took is given back."""
    if encoding in ("", "identity") or encoding not in ENCODINGS:
        return body
    if truncate and not body:
        return body
    for wbits in (ENCODINGS[encoding], -zlib.MAX_WBITS):
        decoder = zlib.decompressobj(wbits)
        pieces: list[bytes] = []
        size, rest = 0, body
        try:
            while True:
                piece = decoder.decompress(rest, DECODE_PIECE_BYTES)
                rest = decoder.unconsumed_tail
                if not piece and not rest:
                    break
                if size + len(piece) > max_bytes:
                    if not truncate:
                        raise FetchError("body too large")
                    piece = piece[: max_bytes - size]
                    rest = b""
                if holding is not None:
                    holding.take(len(piece))
                pieces.append(piece)
                size += len(piece)
        except zlib.error:
            if holding is not None:
                holding.give_back(size)
            if encoding == "deflate" and wbits > 0:
                continue  # raw deflate: try without the header
            raise FetchError("bad content encoding") from None
        except FetchError:
            if holding is not None:
                holding.give_back(size)
            raise
        if not size and not truncate:
            raise FetchError("empty body")
        return b"".join(pieces)
    raise FetchError("bad content encoding")


def transport_error(err: Exception, deadline: Deadline) -> FetchError:
    """A short reason for what went wrong below HTTP, or in parsing it."""
    if isinstance(err, DeadlineExceeded) or (isinstance(err, TimeoutError) and deadline.passed()):
        return FetchError(deadline.reason, retryable=True)
    if isinstance(err, TimeoutError):
        return FetchError("timeout", retryable=True)  # one operation stalled; time was left
    if isinstance(err, socket.gaierror):
        # The name does not exist (NXDOMAIN, or no address record): asking again later gives
        # the same answer. Anything else (EAI_AGAIN: the resolver failed) may pass.
        if err.errno in NO_SUCH_HOST:
            return FetchError("dns failure: no such host")
        return FetchError("dns failure", retryable=True)
    if isinstance(err, (http.client.RemoteDisconnected, BrokenPipeError)):
        return FetchError("connection closed", retryable=True)
    if isinstance(err, ConnectionResetError):
        return FetchError("connection reset", retryable=True)
    if isinstance(err, ConnectionRefusedError):
        return FetchError("connection refused", retryable=True)
    if isinstance(err, http.client.IncompleteRead):
        return FetchError("incomplete body", retryable=True)
    if isinstance(err, ssl.SSLError):
        return FetchError("tls error")
    # http.client's own caps: 64 KiB per status or header line, 100 header lines.
    if isinstance(err, http.client.LineTooLong):
        return FetchError("headers too large")
    if isinstance(err, http.client.HTTPException) and "more than" in str(err):
        return FetchError("too many headers")
    if isinstance(err, http.client.HTTPException):
        return FetchError("bad http response")
    if isinstance(err, OSError):
        return FetchError("network error", retryable=True)
    raise err


# What a browser leaves as it is (WHATWG URL): in a path, the ASCII printables but space, ",
# #, <, >, ?, `, {, }; in a query, all but space, ", #, <, >, '. "%" stays: an escape is kept.
PATH_SAFE = "!$%&'()*+,-./:;=@[]^_|~"
QUERY_SAFE = "!$%&()*+,-./:;=?@[]^_`{|}~\\"


def request_target(path: str, query: str) -> str:
    """The path and query as a browser sends them: spaces, raw UTF-8 (percent-encoded as its
    bytes) and other characters HTTP does not allow escaped; what is already escaped kept."""
    target = quote(path or "/", safe=PATH_SAFE, encoding="utf-8", errors="surrogatepass")
    if query:
        target += "?" + quote(query, safe=QUERY_SAFE, encoding="utf-8", errors="surrogatepass")
    return target


# Failures of a robots.txt request that every request to its origin would meet.
ORIGIN_FAILURES = frozenset(
    {"dns failure: no such host", "blocked: non-public address", "tls error", "unsupported url"}
)


class BodyHolding:
    """The bytes one response body holds of the task's ``ByteBudget`` (none without one)."""

    def __init__(self, budget: ByteBudget | None, until: float) -> None:
        self.budget = budget
        self.until = until
        self.count = 0

    def take(self, count: int) -> None:
        """Take ``count`` more bytes: a body not yet begun waits for room until the attempt's
        deadline; one already holding bytes (read as it comes, of unknown length) only
        briefly, then gives up and gives its bytes back. Otherwise bodies each holding a part
        of a full budget would all wait on each other until their deadlines."""
        if self.budget is None or count <= 0:
            return
        until = self.until if not self.count else min(self.until, time.monotonic() + 1.0)
        if not self.budget.acquire(count, until):
            raise FetchError(WAITED_FOR_MEMORY, retryable=True)
        self.count += count

    def give_back(self, count: int) -> None:
        if self.budget is None or count <= 0:
            return
        self.budget.release(count)
        self.count -= count


def request_parts(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an http(s) URL; FetchError if it has none."""
    try:  # an unclosed "[", a port that is no number, a host label IDNA refuses
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("unsupported url")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        parts.hostname.encode("idna")
    except (ValueError, UnicodeError) as err:
        raise FetchError("unsupported url") from err
    return parts.scheme, parts.hostname, port, request_target(parts.path, parts.query)


def redirect_target(url: str, response: http.client.HTTPResponse) -> str | None:
    """Where a redirect response sends ``url`` (None if it is no redirect, or one without a
    Location: then its status stands); FetchError for a Location no URL can be made of."""
    location = response.getheader("Location") if response.status in REDIRECT_STATUS else None
    if not location:
        return None
    try:
        return urljoin(url, location)
    except ValueError as err:  # e.g. "http://[::1"
        raise FetchError("bad redirect") from err


def tdm_reserved(headers: Message) -> bool:
    """TDM-Rep's opt-out: a ``tdm-reservation`` header of 1 (text and data mining rights
    reserved)."""
    return any(value.strip() == "1" for value in headers.get_all("tdm-reservation") or [])


def declared_length(value: str | None) -> int:
    """A Content-Length's bytes; 0 when absent or not a plain number (then the body is read to
    its end). Past 18 digits ``int`` would refuse it, and it is past any cap anyway."""
    if not value or not is_ascii_number(value.strip()):
        return 0
    return int(value.strip()[:19])


def is_ascii_number(value: str) -> bool:
    """Digits 0-9 only: ``str.isdigit`` also takes "²" and "¹", which ``int`` refuses."""
    return value.isascii() and value.isdigit()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if is_ascii_number(value):
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
