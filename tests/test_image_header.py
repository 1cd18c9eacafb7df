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
