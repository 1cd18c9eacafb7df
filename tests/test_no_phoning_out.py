"""Importing the pipeline (as every Spark executor's Python worker does) opens no connection,
whatever environment launched it: albumentations' version check at import is turned off by the
package itself, not only by the Makefile."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD_CONNECTIONS = """
import json, socket, sys
attempts = []
def refuse(self, address, *args):
    attempts.append(str(address))
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(attempts))
"""


def connections_on_import(*modules: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run(
        [sys.executable, "-c", RECORD_CONNECTIONS, *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_shard_task_imports_open_no_connection():
    assert connections_on_import("pipeline.spark_daemon", "pipeline.shard_download") == []


def test_albumentations_alone_would_have_phoned_out():
    """The control: the same import without the pipeline package first tries the network."""
    assert connections_on_import("albumentations")


def test_opencv_refuses_what_the_header_check_missed_once_the_pipeline_is_imported(tmp_path):
    """The backstop: a PNG declaring 12,000 x 12,000 pixels (over 2**27) with next to no data.
    With the pipeline imported first, as in every executor, OpenCV refuses it at the header;
    the control, without, gets past the size check to the (missing) data."""
    ihdr = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 0, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b""))
    path = tmp_path / "big.png"
    path.write_bytes(body + png_chunk(b"IEND", b""))
    decode = (
        f"import cv2, numpy; data = numpy.fromfile({str(path)!r}, numpy.uint8)\n"
        "try:\n    print(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) is None)\n"
        "except cv2.error as err:\n"
        "    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(err) else err)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}

    def run(code: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip()

    assert run("import pipeline.spark_daemon\n" + decode) == "refused"
    assert run(decode) == "True"  # OpenCV's default limit (2**30) lets it through to decoding


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
