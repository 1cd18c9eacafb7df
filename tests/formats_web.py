"""A web on loopback serving pictures the way ordinary servers serve them: each kind a browser
shows (GIF, animated GIF, EXIF-rotated, CMYK and progressive JPEG, WebP, 16-bit and palette
PNG, RGBA), bodies gzip-encoded, chunked or sent by an HTTP/1.0 server without a length, and
URLs with raw UTF-8 and spaces in the path (as LAION's metadata has them). Every kind must end
as an RGB JPEG the right way up: ``KINDS`` gives the size a browser shows for each.

Used by tests/test_formats_web.py (our stage) and benchmarks/formats_vs_img2dataset.py (the
same URLs through raw img2dataset).
"""

from __future__ import annotations

import gzip
import io
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
from PIL import Image


def _picture() -> Image.Image:
    """80 wide, 48 high (landscape, so a picture left on its side shows): red grows to the
    right, green downwards, and a dark block sits in the top-left corner, so a picture turned
    the wrong way, mirrored or taken from the wrong frame reads differently."""
    x = np.linspace(0, 255, 80)[None, :].repeat(48, 0)
    y = np.linspace(0, 255, 48)[:, None].repeat(80, 1)
    pixels = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    pixels[:16, :24] = 20
    return Image.fromarray(pixels)


PICTURE = _picture()


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    """Stored 80×48 with EXIF orientation 6: a browser shows it 48×80 (portrait)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(PICTURE, "JPEG", exif=exif.tobytes())


def _sixteen_bit_png() -> bytes:
    grey = np.asarray(PICTURE.convert("L")).astype(np.uint16) * 257
    return _encoded(Image.fromarray(grey), "PNG")


def _half_transparent() -> Image.Image:
    """PICTURE with its right quarter fully transparent: a browser shows white there (on a
    white page), as the resizer's alpha blend does."""
    rgba = PICTURE.convert("RGBA")
    alpha = np.full((48, 80), 255, np.uint8)
    alpha[:, 60:] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def shown(name: str) -> Image.Image:
    """The picture of kind ``name`` as a browser shows it (RGB, upright, first frame)."""
    if name == "jpeg, EXIF-rotated":
        return PICTURE.transpose(Image.Transpose.ROTATE_270)  # orientation 6, turned back
    if name == "png, 16-bit greyscale":
        return PICTURE.convert("L").convert("RGB")
    if name == "png, RGBA":
        white = Image.new("RGBA", PICTURE.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, _half_transparent()).convert("RGB")
    return PICTURE


@dataclass(frozen=True)
class Kind:
    path: str  # as the metadata writes it (raw UTF-8 and spaces included)
    body: bytes
    shown: tuple[int, int]  # (width, height) as a browser shows it
    delivery: str = "length"  # length | gzip | chunked | http10


JPEG = _encoded(PICTURE, "JPEG", quality=90)
KINDS: dict[str, Kind] = {
    "jpeg (control)": Kind("/plain.jpg", JPEG, (80, 48)),
    "jpeg, progressive": Kind(
        "/progressive.jpg", _encoded(PICTURE, "JPEG", progressive=True), (80, 48)
    ),
    "jpeg, CMYK": Kind("/cmyk.jpg", _encoded(PICTURE.convert("CMYK"), "JPEG"), (80, 48)),
    "jpeg, EXIF-rotated": Kind("/rotated.jpg", _rotated_jpeg(), (48, 80)),
    "gif": Kind("/still.gif", _encoded(PICTURE.convert("P"), "GIF"), (80, 48)),
    "gif, animated": Kind(
        "/animated.gif",
        _encoded(
            PICTURE.convert("P"),
            "GIF",
            save_all=True,
            append_images=[PICTURE.rotate(180).convert("P")],
            duration=100,
            loop=0,
        ),
        (80, 48),
    ),
    "webp": Kind("/picture.webp", _encoded(PICTURE, "WEBP"), (80, 48)),
    "png, 16-bit greyscale": Kind("/grey16.png", _sixteen_bit_png(), (80, 48)),
    "png, palette": Kind("/palette.png", _encoded(PICTURE.convert("P"), "PNG"), (80, 48)),
    "png, RGBA": Kind("/rgba.png", _encoded(_half_transparent(), "PNG"), (80, 48)),
    "body gzip-encoded": Kind("/gzipped.jpg", JPEG, (80, 48), "gzip"),
    "body chunked": Kind("/chunked.jpg", JPEG, (80, 48), "chunked"),
    "HTTP/1.0, no length": Kind("/http10.jpg", JPEG, (80, 48), "http10"),
    "raw UTF-8 and spaces in the URL": Kind("/photos/café au lait 1.jpg", JPEG, (80, 48)),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@dataclass
class FormatsWeb:
    host: str = "127.0.0.1"
    requested: list[str] = field(default_factory=list)  # request targets as they arrived
    _server: _Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def urls(self) -> dict[str, str]:
        """Kind name -> URL as the metadata writes it."""
        return {name: self.base_url + kind.path for name, kind in KINDS.items()}

    def __enter__(self) -> FormatsWeb:
        self._server = _Server((self.host, 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        web = self
        by_path = {kind.path: kind for kind in KINDS.values()}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                web.requested.append(self.path)
                if self.path == "/robots.txt":
                    return self._reply(404, b"", {"Content-Type": "text/plain"})
                # a browser sends raw UTF-8 and spaces percent-encoded; the server decodes
                kind = by_path.get(unquote(self.path))
                if kind is None:
                    return self._reply(404, b"", {})
                kind_type = {"gif": "image/gif", "webp": "image/webp", "png": "image/png"}
                content_type = kind_type.get(kind.path.rsplit(".", 1)[1], "image/jpeg")
                if kind.delivery == "gzip":
                    body = gzip.compress(kind.body)
                    headers = {"Content-Type": content_type, "Content-Encoding": "gzip"}
                    return self._reply(200, body, headers)
                if kind.delivery == "chunked":
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(kind.body), 1000):
                        piece = kind.body[start : start + 1000]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return None
                if kind.delivery == "http10":  # no length: the body ends when the server closes
                    self.protocol_version = "HTTP/1.0"
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.end_headers()
                    self.wfile.write(kind.body)
                    self.close_connection = True
                    return None
                return self._reply(200, kind.body, {"Content-Type": content_type})

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
