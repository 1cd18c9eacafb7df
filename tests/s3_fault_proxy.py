"""An unreliable, distant S3: a proxy on loopback in front of the moto server that fails a share
of requests the way S3 does under load (503 SlowDown before the request is applied, 500 after it
was applied with the answer lost), and may add a bucket's latency to every request. Failures
are drawn from a seeded generator; every request's (method, start, end) is recorded."""

from __future__ import annotations

import http.client
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "content-length"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


class FaultyS3Proxy:
    def __init__(
        self,
        upstream: str,
        fail_before: float,
        fail_after: float,
        seed: int = 0,
        latency_s: float = 0.0,
    ):
        parts = urlsplit(upstream)
        self.latency_s = latency_s
        self.requests: list[tuple[str, float, float]] = []  # (method, start, end), monotonic
        self.paths: list[tuple[str, str]] = []  # (method, path)
        self.upstream = (parts.hostname, parts.port)
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.counts = {"forwarded": 0, "failed_before": 0, "failed_after": 0}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyS3Proxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _draw(self) -> str:
        with self._lock:
            u = self._rng.random()
            if u < self.fail_before:
                fate = "failed_before"
            elif u < self.fail_before + self.fail_after:
                fate = "failed_after"
            else:
                fate = "forwarded"
            self.counts[fate] += 1
            return fate

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _relay(self) -> None:
                start = time.monotonic()
                try:
                    self._relay_once()
                finally:
                    proxy.requests.append((self.command, start, time.monotonic()))
                    proxy.paths.append((self.command, self.path))

            def _relay_once(self) -> None:
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fate = proxy._draw()
                if fate == "failed_before":
                    return self._answer(503, SLOW_DOWN)
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                if fate == "failed_after":
                    return self._answer(500, INTERNAL)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                # HEAD answers carry the object's length, not the (empty) body's
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815

        return Handler
