"""The demo web: serves the corpus images over HTTP on loopback, broken the way the web is.

Each URL's fate is a pure function of its key, so runs are reproducible: most images are served
fine, a few answer 404 or 500, hang past the client's timeout, send truncated bytes, or send an
HTML page instead of an image.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass(frozen=True)
class FaultRates:
    not_found: float = 0.03
    server_error: float = 0.01
    hang: float = 0.01
    truncated: float = 0.02
    not_image: float = 0.02

    def as_cumulative(self) -> list[tuple[str, float]]:
        total, out = 0.0, []
        for kind in ("not_found", "server_error", "hang", "truncated", "not_image"):
            total += getattr(self, kind)
            out.append((kind, total))
        return out


NO_FAULTS = FaultRates(0, 0, 0, 0, 0)


def fault_for(key: str, rates: FaultRates) -> str:
    """'ok' or the kind of breakage this URL has, fixed by a hash of its key."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    for kind, upper in rates.as_cumulative():
        if u < upper:
            return kind
    return "ok"


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) drops SYNs under 64+ concurrent downloads; the client's
    # SYN retry (1 s, 3 s …) then shows up as stalls that are the server's, not the web's.
    request_queue_size = 1024
    daemon_threads = True


@dataclass
class DemoWeb:
    images_dir: Path
    rates: FaultRates = field(default_factory=FaultRates)
    hang_seconds: float = 12.0
    host: str = "127.0.0.1"
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the demo web first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> DemoWeb:
        handler = _make_handler(Path(self.images_dir), self.rates, self.hang_seconds)
        self._server = _Server((self.host, self.port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> DemoWeb:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(images_dir: Path, rates: FaultRates, hang_seconds: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # thousands of requests; the pipeline's stats are the record

        def handle(self) -> None:
            # A client that stops reading (an error status, a deadline) closes with data
            # unread, so its kernel resets the connection: normal on the web, no traceback.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                super().handle()

        def do_GET(self) -> None:  # noqa: N802
            name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
            key = name.rsplit(".", 1)[0]
            path = images_dir / name
            fault = fault_for(key, rates)
            if not self.path.startswith("/img/") or not path.is_file() or fault == "not_found":
                return self._send(404, b"not found", "text/plain")
            if fault == "server_error":
                return self._send(500, b"internal error", "text/plain")
            if fault == "hang":
                time.sleep(hang_seconds)
                return self._send(504, b"gateway timeout", "text/plain")
            if fault == "not_image":
                page = b"<html><body><h1>Image moved</h1><p>Please log in.</p></body></html>"
                return self._send(200, page, "text/html")
            body = path.read_bytes()
            if fault == "truncated":
                body = body[: len(body) // 3]
            self._send(200, body, "image/jpeg")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its timeout fired): normal on the web

    return Handler
