"""What a shard set's manifest keeps of its sources, and what the training loader decodes."""

from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image

from pipeline.manifest import shard_set_manifest, without_secrets
from tests.hostile_web import png_bomb


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("s3://bucket/meta/", "s3://bucket/meta/"),
        (
            "https://user:secret@example.com:8443/m/part-0.parquet?X-Amz-Signature=abc#x",
            "https://example.com:8443/m/part-0.parquet",
        ),
        ("gs://b/p?token=t", "gs://b/p"),
        ("/data/meta/part-0.parquet", "/data/meta/part-0.parquet"),
        ("relative/meta", "relative/meta"),
    ],
)
def test_a_manifest_keeps_no_credentials_or_signatures(given, kept):
    assert without_secrets(given) == kept
    manifest = shard_set_manifest({}, {}, [given], [])
    assert manifest["sources"] == [kept]
    assert "secret" not in str(manifest) and "Signature" not in str(manifest)


def test_the_training_loader_refuses_an_image_over_its_pixel_limit():
    """Pillow only warns between its limit and twice it; the loader refuses at the limit,
    before decoding (a 72 Mpx PNG of a few KB would decode to ~216 MB)."""
    from training.data import DecodePairs

    side = int((Image.MAX_IMAGE_PIXELS * 1.125) ** 0.5)  # over the limit, under twice it
    decoded = []

    def transform(image):
        decoded.append(image.size)
        return image.size

    pairs = DecodePairs(transform, lambda texts: [texts])
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even the decompression-bomb warning is reached
        assert pairs.decode({"png": png_bomb(side), "txt": b"a bomb"}) is None
    assert decoded == []
    assert pairs.decode({"png": small.getvalue(), "txt": b"a square"}) is not None
