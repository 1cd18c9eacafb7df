"""The header parser that guards against decompression bombs agrees with PIL."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.image_header import declared_size

CASES = [
    ("JPEG", "RGB", {}),
    ("JPEG", "L", {"progressive": True}),
    ("PNG", "RGBA", {}),
    ("PNG", "L", {}),
    ("GIF", "P", {}),
    ("WEBP", "RGB", {"quality": 80}),
    ("WEBP", "RGBA", {"lossless": True}),
    ("WEBP", "RGBA", {"quality": 80}),  # VP8X container
    ("BMP", "RGB", {}),
    ("TIFF", "RGB", {}),
]


@pytest.mark.parametrize(("fmt", "mode", "options"), CASES)
def test_declared_size_matches_pil(fmt, mode, options):
    rng = np.random.default_rng(len(fmt) + len(mode))
    for _ in range(3):
        width, height = (int(v) for v in rng.integers(1, 2500, 2))
        buffer = io.BytesIO()
        Image.new(mode, (width, height)).save(buffer, fmt, **options)
        assert declared_size(buffer.getvalue()) == (width, height)


def test_jpeg_with_large_metadata_segments_and_junk():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "camera"
    Image.new("RGB", (321, 123)).save(buffer, "JPEG", exif=exif.tobytes(), icc_profile=b"x" * 9000)
    assert declared_size(buffer.getvalue()) == (321, 123)
    assert declared_size(b"<html>nope</html>") is None
    assert declared_size(b"\xff\xd8\xff\xe0\x00") is None  # cut inside the first segment


def test_a_stray_byte_between_jpeg_segments_does_not_hide_the_size():
    """libjpeg skips bytes between segments (a warning) and decodes the image at full size:
    the scanner must too, or the pixel cap is bypassed."""
    import cv2
    import numpy as np

    buffer = io.BytesIO()
    Image.new("RGB", (321, 123)).save(buffer, "JPEG")
    data = buffer.getvalue()
    app0_end = 4 + int.from_bytes(data[4:6], "big")  # SOI, then APP0's marker and length
    stray = data[:app0_end] + b"\x00\x13" + data[app0_end:]
    decoded = cv2.imdecode(np.frombuffer(stray, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None and decoded.shape[:2] == (123, 321)  # libjpeg reads it whole
    assert declared_size(stray) == (321, 123)


def test_bytes_no_capped_decoder_can_size_are_refused():
    from pipeline.config import DownloadConfig, FetchConfig
    from pipeline.fetch import FetchResult
    from pipeline.shard_download import make_processor

    radiance = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n" + b"\x02\x02" * 64
    processor = make_processor(DownloadConfig(), FetchConfig())
    _, result = processor.finish(FetchResult(radiance))
    assert (result["status"], result["error_message"]) == (
        "failed_to_resize",
        "Image decoding error",
    )
