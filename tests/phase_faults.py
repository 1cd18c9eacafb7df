"""Servers on loopback that misbehave in every phase of an HTTP(S) exchange, one port each.

``tests.hostile_web`` breaks HTTP at the application level (status codes, bodies, redirects);
these break it below and around that: silence after accept or after the request, a status line
or headers that trickle, too many or too large headers, bodies without end, and TLS handshakes
that stall or trickle. Every behaviour holds its connection until the client lets go (or the
server stops), so only the client's own deadline can end the exchange.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import trustme

from tests.hostile_web import sample_image

TRICKLE_S = 0.2  # a byte per TRICKLE_S: far inside any per-operation timeout the tests use
HOLD_S = 120.0  # how long a silent server holds a connection (the tests end long before)

# behaviour -> (scheme, expected status, expected reason, or None for success)
EXPECTED: dict[str, tuple[str, str, str | None]] = {
    "stalled-connect": ("http", "failed_to_download", "deadline exceeded"),
    "silent-after-accept": ("http", "failed_to_download", "deadline exceeded"),
    "silent-after-request": ("http", "failed_to_download", "deadline exceeded"),
    "trickled-status-line": ("http", "failed_to_download", "deadline exceeded"),
    "trickled-headers": ("http", "failed_to_download", "deadline exceeded"),
    "thousands-of-headers": ("http", "failed_to_download", "too many headers"),
    "enormous-header": ("http", "failed_to_download", "headers too large"),
    "endless-body": ("http", "failed_to_download", "body too large"),
    "endless-slow-body": ("http", "failed_to_download", "deadline exceeded"),
    "tls-ok": ("https", "success", None),
    "tls-untrusted": ("https", "failed_to_download", "tls error"),
    "tls-silent-handshake": ("https", "failed_to_download", "deadline exceeded"),
    "tls-trickled-handshake": ("https", "failed_to_download", "deadline exceeded"),
}


def expected_after_robots_txt(behaviour: str) -> tuple[str, str | None]:
    """(status, reason) when the site's robots.txt is fetched first (it meets the fault
    first): a stall makes the site unreachable, anything else ends as it would anyway."""
    _, status, reason = EXPECTED[behaviour]
    return status, "robots.txt unreachable" if reason == "deadline exceeded" else reason


# Not in the matrix above: trickles at a place and pace the request path chooses
# (``/trickle?phase=headers&lead=12&gap=0.3``), for randomised tests.
PARAMETRIC = ("trickle",)


def trickle_response(phase: str, lead: int) -> tuple[bytes, int]:
    """A full response (its body under any byte cap) and the offset at which the ``trickle``
    behaviour slows to a byte per gap: inside the status line, the headers or the body."""
    status = b"HTTP/1.1 200 OK\r\n"
    headers = b"Content-Type: image/jpeg\r\nX-Filler: 0123456789\r\nContent-Length: 500000\r\n\r\n"
    body = b"\xff" * 500_000
    start = {
        "status": lead % len(status),
        "headers": len(status) + lead % len(headers),
        "body": len(status) + len(headers) + lead % len(body),
    }[phase]
    return status + headers + body, start


class PhaseFaults:
    """One listener per behaviour in EXPECTED; ``urls()`` maps each URL to its behaviour.

    ``ca_file`` is the PEM of the CA that signed the TLS listeners' certificate (for the
    client's config); ``tls-untrusted`` uses a certificate from a CA nobody trusts.
    """

    def __init__(self, directory: Path, max_bytes: int = 1 << 20):
        self.max_bytes = max_bytes
        self._stop = threading.Event()
        self._listeners: dict[str, socket.socket] = {}
        ca, stranger = trustme.CA(), trustme.CA()
        self.ca_file = str(directory / "phase-faults-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        self._trusted = self._server_context(ca)
        self._untrusted = self._server_context(stranger)

    @staticmethod
    def _server_context(ca: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context

    def urls(self) -> dict[str, str]:
        return {
            f"{EXPECTED[name][0]}://127.0.0.1:{sock.getsockname()[1]}/{name}.jpg": name
            for name, sock in self._listeners.items()
            if name in EXPECTED
        }

    def trickle_url(self, phase: str, lead: int, gap_s: float) -> str:
        port = self._listeners["trickle"].getsockname()[1]
        return f"http://127.0.0.1:{port}/trickle?phase={phase}&lead={lead}&gap={gap_s}"

    def __enter__(self) -> PhaseFaults:
        for name in (*EXPECTED, *PARAMETRIC):
            if name == "stalled-connect":
                self._listeners[name] = self._full_backlog()
                continue
            listener = socket.create_server(("127.0.0.1", 0))
            self._listeners[name] = listener
            threading.Thread(target=self._accept, args=(name, listener), daemon=True).start()
        return self

    def _full_backlog(self) -> socket.socket:
        """A listener that never accepts, its queue filled by one connection of ours: the
        kernel then drops new SYNs, so a client's connect hangs (as to a black-holed host)."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self._filler = socket.create_connection(listener.getsockname(), timeout=5)
        return listener

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for listener in self._listeners.values():
            listener.close()
        if hasattr(self, "_filler"):
            self._filler.close()

    def _accept(self, name: str, listener: socket.socket) -> None:
        behaviour: Callable[[socket.socket], None] = getattr(self, "_" + name.replace("-", "_"))
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(behaviour, conn), daemon=True).start()

    def _serve(self, behaviour: Callable[[socket.socket], None], conn: socket.socket) -> None:
        try:
            behaviour(conn)
        except OSError:
            pass  # the client gave up, as it must
        finally:
            conn.close()

    def _hold(self) -> None:
        self._stop.wait(HOLD_S)

    def _send_slowly(self, conn: socket.socket, data: bytes, forever: bytes = b"") -> None:
        """Send ``data`` a byte at a time, then repeat ``forever`` the same way."""
        for i in range(len(data)):
            conn.sendall(data[i : i + 1])
            if self._stop.wait(TRICKLE_S):
                return
        while forever and not self._stop.is_set():
            for i in range(len(forever)):
                conn.sendall(forever[i : i + 1])
                if self._stop.wait(TRICKLE_S):
                    return

    @staticmethod
    def _read_request(conn: socket.socket | ssl.SSLSocket) -> str:
        """Read the request head; return its target (path and query)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionResetError("client left")
            data += chunk
        return data.split(b" ", 2)[1].decode()

    # -- behaviours, one per EXPECTED key, and the parametric trickle ------------------------

    def _trickle(self, conn: socket.socket) -> None:
        query = parse_qs(urlsplit(self._read_request(conn)).query)
        gap = float(query["gap"][0])
        response, start = trickle_response(query["phase"][0], int(query["lead"][0]))
        conn.sendall(response[:start])
        for i in range(start, len(response)):
            conn.sendall(response[i : i + 1])
            if self._stop.wait(gap):
                return

    def _silent_after_accept(self, conn: socket.socket) -> None:
        self._hold()

    def _silent_after_request(self, conn: socket.socket) -> None:
        self._read_request(conn)
        self._hold()

    def _trickled_status_line(self, conn: socket.socket) -> None:
        self._read_request(conn)
        self._send_slowly(conn, b"HTTP/1.1 200 ", forever=b"OK")  # a line that never ends

    def _trickled_headers(self, conn: socket.socket) -> None:
        self._read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        self._send_slowly(conn, b"Content-Type: image/jpeg\r\n", forever=b"X-Slow: yes\r\n")

    def _thousands_of_headers(self, conn: socket.socket) -> None:
        self._read_request(conn)
        lines = b"".join(b"X-Header-%d: value\r\n" % i for i in range(5000))
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
        self._hold()

    def _enormous_header(self, conn: socket.socket) -> None:
        self._read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * (1 << 20) + b"\r\n\r\n")
        self._hold()

    def _endless_body(self, conn: socket.socket) -> None:
        self._read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n")
        block = b"\xff" * 65536
        while not self._stop.is_set():
            conn.sendall(block)

    def _endless_slow_body(self, conn: socket.socket) -> None:
        self._read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n")
        while not self._stop.wait(0.05):  # 20 KiB/s: under any byte cap within the deadline
            conn.sendall(b"\xff" * 1024)

    def _respond_image(self, conn: ssl.SSLSocket) -> None:
        self._read_request(conn)
        body = sample_image(11)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n" % len(body)
        conn.sendall(head + b"Connection: close\r\n\r\n" + body)

    def _tls_ok(self, conn: socket.socket) -> None:
        with self._trusted.wrap_socket(conn, server_side=True) as tls:
            self._respond_image(tls)

    def _tls_untrusted(self, conn: socket.socket) -> None:
        with self._untrusted.wrap_socket(conn, server_side=True) as tls:
            self._respond_image(tls)

    def _tls_silent_handshake(self, conn: socket.socket) -> None:
        conn.recv(4096)  # the ClientHello, never answered
        self._hold()

    def _tls_trickled_handshake(self, conn: socket.socket) -> None:
        """A real TLS server whose every outgoing handshake byte is sent a byte at a time."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._trusted.wrap_bio(incoming, outgoing, server_side=True)
        while not self._stop.is_set():
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    self._send_slowly(conn, pending)
                    continue
                data = conn.recv(4096)
                if not data:
                    return
                incoming.write(data)
        self._send_slowly(conn, outgoing.read())


def never_answering_lookup(release: threading.Event) -> Callable[..., list]:
    """A getaddrinfo stand-in for a DNS server that never replies (until ``release``)."""

    def lookup(host: str, port: int, **_: object) -> list:
        release.wait(HOLD_S)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    return lookup


def timed(call: Callable[[], object]) -> tuple[object, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start
