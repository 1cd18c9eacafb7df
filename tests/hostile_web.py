"""A hostile web on loopback: one path per way a real server breaks a downloader.

Every path's behaviour is fixed (stateful ones count their requests), so a test can say exactly
what the stage must record for each URL.
"""

from __future__ import annotations

import gzip
import io
import socket
import struct
import threading
import time
import zlib
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

# path -> (expected status, expected reason or None for success)
EXPECTED: dict[str, tuple[str, str | None]] = {
    "/ok/0.jpg": ("success", None),
    "/ok/1.jpg": ("success", None),
    "/ok/2.png": ("success", None),
    "/redirect-ok": ("success", None),
    "/retry-after-1s": ("success", None),  # 429 once with Retry-After: 1, then the image
    "/flaky": ("success", None),  # 500 twice (both in-line attempts), then fine: final pass
    "/robots-other-agent": ("success", None),  # X-Robots-Tag aimed at another crawler
    "/404": ("failed_to_download", "http 404"),
    "/500": ("failed_to_download", "http 500"),
    "/retry-after-1h": ("failed_to_download", "http 429"),
    "/drip": ("failed_to_download", "deadline exceeded"),
    "/reset": ("failed_to_download", "connection reset|connection closed"),
    "/short-body": ("failed_to_download", "incomplete body"),
    "/empty": ("failed_to_download", "empty body"),
    "/loop": ("failed_to_download", "redirect loop"),
    "/noai": ("failed_to_download", "X-Robots-Tag disallows use"),
    "/robots-disallowed.jpg": ("failed_to_download", "robots.txt disallows"),  # by /robots.txt
    "/tdm-reserved.jpg": ("failed_to_download", "TDM reservation"),
    "/redirect-private": ("failed_to_download", "blocked: non-public address"),
    "/truncated.jpg": ("failed_to_resize", "truncated image"),
    "/html": ("failed_to_resize", "Image decoding error"),
    "/bomb.png": ("failed_to_resize", "too many pixels"),
    # headers and redirects Python's parsers refuse: a clean reason, not an internal error
    "/bad-length": ("success", None),  # Content-Length: ² (a digit to str.isdigit, not to int)
    "/bad-retry-after": ("failed_to_download", "http 503"),  # Retry-After: ¹
    "/bad-location": ("failed_to_download", "bad redirect"),  # Location: http://[::1
    # Content-Encoding a browser undoes: the image arrives; a bomb stops at the byte cap
    "/gzip.jpg": ("success", None),
    "/deflate-raw.jpg": ("success", None),
    "/gzip-bomb.jpg": ("failed_to_download", "body too large"),
    # raw UTF-8 and spaces, as LAION metadata has them: sent percent-encoded, as a browser does
    "/café photo.jpg": ("success", None),
    "/ok/4.jpg?size=big photo&ü=1": ("success", None),
}
# Not served by us at all: the guard must refuse it before any connection.
PRIVATE_URL = "http://10.0.0.1/internal.jpg"
BOMB_SIDE = 6000  # 36 M pixels; tests cap decoded pixels at 10 M


def sample_image(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(side: int) -> bytes:
    """A real decompression bomb: a valid greyscale PNG of side² zero pixels, a few KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * ((side + 1) * side), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def max_requests_in_window(times: list[float], window_s: float) -> int:
    """The most requests in any closed window of ``window_s`` seconds of a request log."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # Python's default 5 drops SYNs under a burst of connects


class HostileWeb:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: dict[str, list[float]] = defaultdict(list)
        self.files: dict[str, bytes] = {}  # served as-is under /file/NAME
        self._lock = threading.Lock()
        self._bomb = png_bomb(BOMB_SIDE)
        self._server = _Server((host, 0), self._handler())
        self._server.daemon_threads = True

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def urls(self) -> dict[str, str]:
        return {self.base_url + path: path for path in EXPECTED} | {PRIVATE_URL: "private"}

    def __enter__(self) -> HostileWeb:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _count(self, path: str) -> int:
        with self._lock:
            self.requests[path].append(time.monotonic())
            return len(self.requests[path])

    def _handler(self):
        web = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802, C901 - one branch per fault, on purpose
                path = self.path
                n = web._count(path)
                if path.startswith("/file/") and path[6:] in web.files:
                    return self.send(200, web.files[path[6:]])
                if path.startswith("/ok/"):
                    seed = int(path.rsplit("/", 1)[1].split(".")[0])
                    fmt = "PNG" if path.endswith(".png") else "JPEG"
                    return self.send(200, sample_image(seed, fmt))
                if path == "/redirect-ok":
                    return self.send(302, b"", {"Location": "/ok/0.jpg"})
                if path.startswith("/redirect-to?"):  # to any URL (another server's)
                    return self.send(302, b"", {"Location": path.split("?", 1)[1]})
                if path == "/retry-after-1s":
                    if n == 1:
                        return self.send(429, b"slow down", {"Retry-After": "1"})
                    return self.send(200, sample_image(7))
                if path == "/flaky":
                    if n <= 2:
                        return self.send(500, b"oops")
                    return self.send(200, sample_image(8))
                if path == "/robots-other-agent":
                    return self.send(200, sample_image(9), {"X-Robots-Tag": "otherbot: noai"})
                if path == "/404":
                    return self.send(404, b"not found")
                if path == "/500":
                    return self.send(500, b"internal error")
                if path == "/retry-after-1h":
                    return self.send(429, b"come back later", {"Retry-After": "3600"})
                if path == "/drip":
                    return self.drip()
                if path == "/reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return None
                if path == "/short-body":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(sample_image(3)[:500])
                    self.close_connection = True
                    return None
                if path == "/empty":
                    return self.send(200, b"")
                if path == "/loop":
                    return self.send(302, b"", {"Location": "/loop-back"})
                if path == "/loop-back":
                    return self.send(301, b"", {"Location": "/loop"})
                if path == "/robots.txt":
                    rules = b"User-agent: *\nDisallow: /robots-disallowed\n"
                    return self.send(200, rules, {"Content-Type": "text/plain"})
                if path in ("/robots-disallowed.jpg", "/tdm-reserved.jpg"):
                    return self.send(200, sample_image(15), {"tdm-reservation": "1"})
                if path == "/noai":
                    return self.send(200, sample_image(4), {"X-Robots-Tag": "noai, noimageai"})
                if path == "/redirect-private":
                    return self.send(302, b"", {"Location": "http://169.254.169.254/latest/"})
                if path == "/truncated.jpg":
                    image = sample_image(5)
                    return self.send(200, image[: len(image) * 2 // 3])
                if path == "/html":
                    page = b"<html><body>Please log in to see this image</body></html>"
                    return self.send(200, page, {"Content-Type": "text/html"})
                if path == "/bomb.png":
                    return self.send(200, web._bomb, {"Content-Type": "image/png"})
                if path == "/caf%C3%A9%20photo.jpg":  # only the browser's encoding is served
                    return self.send(200, sample_image(14))
                if path == "/bad-length":
                    return self.bad_length()
                if path == "/gzip.jpg":
                    body = gzip.compress(sample_image(12))
                    return self.send(200, body, {"Content-Encoding": "gzip"})
                if path == "/deflate-raw.jpg":
                    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
                    body = packer.compress(sample_image(13)) + packer.flush()
                    return self.send(200, body, {"Content-Encoding": "deflate"})
                if path == "/gzip-bomb.jpg":  # ~64 KB that decode to 64 MiB (caps: 1-32 MiB)
                    body = gzip.compress(b"\xff" * (64 << 20), 9)
                    return self.send(200, body, {"Content-Encoding": "gzip"})
                if path == "/bad-retry-after":
                    return self.send(503, b"busy", {"Retry-After": "\u00b9"})
                if path == "/bad-location":
                    return self.send(302, b"", {"Location": "http://[::1"})
                return self.send(404, b"unknown path")

            def drip(self) -> None:
                """Headers at once, then one byte per 0.2 s of a body that never ends."""
                self.send_response(200)
                self.send_header("Content-Length", str(10**6))  # under the byte cap
                self.end_headers()
                try:
                    for _ in range(3000):
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass  # the client gave up, as it must
                self.close_connection = True

            def bad_length(self) -> None:
                """An image whose Content-Length is "²": read to the connection's end."""
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "\u00b2")
                self.end_headers()
                self.wfile.write(sample_image(11))
                self.close_connection = True

            def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    headers = {"Content-Type": "image/jpeg", **(headers or {})}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        return Handler
