"""Network primitives that one wall-clock deadline bounds, whatever the peer does.

A socket timeout bounds one operation, so a peer that sends one byte per second resets it
forever: during the TLS handshake, the status line, the headers or the body alike. Here every
operation of a connection is armed, just before it runs, with the time left until one deadline
shared by the whole attempt (all redirect hops included):

- ``DeadlineSocket`` / ``DeadlineSSLSocket`` re-arm their timeout before every send, receive and
  handshake call, and raise ``DeadlineExceeded`` once the deadline has passed. http.client reads
  status line, headers and body through them, so no phase can outlast the deadline. (CPython's
  ssl module bounds one read, write or handshake call by the socket timeout as a whole, so a
  trickled TLS record cannot stretch it either.)
- ``Resolver``: getaddrinfo has no timeout at all and blocks its thread (a resolver that never
  answers holds it for as long as the system's resolver settings allow). Each lookup runs on a
  daemon thread and the caller waits only until its deadline; a stuck lookup keeps its thread,
  and at most ``max_pending`` such threads exist per resolver. Answers are cached for a few
  minutes: a web-scale URL list asks for the same hosts over and over.

The mechanism is chosen over an asyncio client because it keeps the fetch step's SSRF pin (the
checked address is the one connected to) and thread model as they are; an asyncio client
(aiohttp) would save at most ~8% of a task's CPU per image (docs/benchmarks.md, where the fault
matrix this was measured on is too).
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class DeadlineExceeded(TimeoutError):
    """The attempt's wall-clock deadline passed (not just one socket operation's timeout)."""


@dataclass(frozen=True)
class Deadline:
    """A monotonic instant, the per-operation timeout within it, and the failure reason to
    report when it passes ("deadline exceeded", or "shard deadline exceeded" when the shard's
    budget ends first)."""

    at: float
    per_operation_s: float
    reason: str = "deadline exceeded"

    @classmethod
    def within(
        cls, seconds: float, per_operation_s: float, stop_at: float = float("inf")
    ) -> Deadline:
        own = time.monotonic() + seconds
        if stop_at < own:
            return cls(stop_at, per_operation_s, "shard deadline exceeded")
        return cls(own, per_operation_s)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0

    def operation_timeout(self) -> float:
        """Timeout for the next socket operation; DeadlineExceeded when none is left."""
        remaining = self.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(self.reason)
        return min(remaining, self.per_operation_s)


def _armed(operation: Callable[..., Any]) -> Callable[..., Any]:
    """``operation`` with the socket's timeout set, just before it runs, to what is left of
    the socket's deadline."""

    def armed(self: Any, *args: Any) -> Any:
        self.settimeout(self.deadline.operation_timeout())
        return operation(self, *args)

    armed.__name__ = operation.__name__
    return armed


class DeadlineSocket(socket.socket):
    """A TCP socket whose every operation is bounded by what is left of ``deadline``."""

    deadline: Deadline
    recv = _armed(socket.socket.recv)
    recv_into = _armed(socket.socket.recv_into)
    send = _armed(socket.socket.send)
    sendall = _armed(socket.socket.sendall)


class DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS side: ``recv``/``recv_into`` go through ``read`` and ``sendall`` through
    ``send``, so arming these three and the handshake covers every TLS operation."""

    deadline: Deadline
    read = _armed(ssl.SSLSocket.read)
    send = _armed(ssl.SSLSocket.send)
    do_handshake = _armed(ssl.SSLSocket.do_handshake)


@functools.lru_cache(maxsize=8)
def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` (PEM) when given; made once per process and
    shared by its fetchers (loading the trust store takes ~20 ms of CPU, measured: too long to
    repeat per request or per shard). A context is safe to share between threads."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    context.sslsocket_class = DeadlineSSLSocket
    return context


def connect(address: str, port: int, deadline: Deadline) -> DeadlineSocket:
    """A TCP connection to exactly ``address`` (already checked), within the deadline."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = DeadlineSocket(family, socket.SOCK_STREAM)
    sock.deadline = deadline
    try:
        sock.settimeout(deadline.operation_timeout())
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def wrap_tls(
    sock: DeadlineSocket, context: ssl.SSLContext, server_hostname: str
) -> DeadlineSSLSocket:
    """TLS over ``sock``, its handshake within the same deadline as everything else."""
    deadline = sock.deadline
    wrapped = context.wrap_socket(
        sock, server_hostname=server_hostname, do_handshake_on_connect=False
    )
    if not isinstance(wrapped, DeadlineSSLSocket):
        wrapped.close()
        raise TypeError("the TLS context must make DeadlineSSLSocket sockets (see tls_context)")
    wrapped.deadline = deadline
    try:
        wrapped.do_handshake()
    except BaseException:
        wrapped.close()
        raise
    return wrapped


Lookup = Callable[..., list]
# getaddrinfo's answers for a name that does not exist (NXDOMAIN, or no address record)
NO_SUCH_HOST = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
)


class Resolver:
    """getaddrinfo under a deadline, with a short positive cache and a shorter one for names
    that do not exist (a dead domain's every URL would otherwise ask the resolver again).
    Thread-safe."""

    def __init__(
        self,
        lookup: Lookup = socket.getaddrinfo,
        cache_s: float = 300.0,
        max_pending: int = 64,
        clock: Callable[[], float] = time.monotonic,
        negative_cache_s: float = 60.0,
    ):
        self._lookup = lookup
        self._cache_s = cache_s
        self._negative_cache_s = negative_cache_s
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._failures: dict[tuple[str, int], tuple[float, int, str]] = {}
        self._lock = threading.Lock()
        # Held by a lookup's thread until getaddrinfo returns, so a resolver that never
        # answers cannot make this process start threads without end.
        self._slots = threading.BoundedSemaphore(max_pending)

    def addresses(self, host: str, port: int, deadline: Deadline) -> list[str]:
        """The addresses of ``host``; socket.gaierror from the lookup (or a recent failed one),
        DeadlineExceeded when it does not answer in time."""
        key = (host, port)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            failed = self._failures.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if failed is not None and failed[0] > now:
            raise socket.gaierror(failed[1], failed[2])
        if not self._slots.acquire(timeout=max(0.0, deadline.remaining())):
            raise DeadlineExceeded(deadline.reason)
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["infos"] = self._lookup(host, port, type=socket.SOCK_STREAM)
            except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
                outcome["error"] = err
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=run, name=f"resolve {host}", daemon=True).start()
        if not done.wait(max(0.0, deadline.remaining())):
            raise DeadlineExceeded(deadline.reason)
        if "error" in outcome:
            error = outcome["error"]
            # only "no such name": a resolver that failed (EAI_AGAIN) may answer a moment later
            no_such_host = isinstance(error, socket.gaierror) and error.errno in NO_SUCH_HOST
            if no_such_host and self._negative_cache_s > 0:
                expires = self._clock() + self._negative_cache_s
                with self._lock:
                    self._failures[key] = (expires, error.errno, str(error.strerror))
            raise error
        addresses = [info[4][0] for info in outcome["infos"]]
        with self._lock:
            self._cache[key] = (self._clock() + self._cache_s, addresses)
        return addresses
