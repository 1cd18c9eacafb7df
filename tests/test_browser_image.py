"""Pictures as a browser shows them reach the shards: GIF (first frame), EXIF-rotated JPEGs
upright, greyscale / palette / 16-bit sources as 3-channel RGB; plain RGB passes untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.browser_image import browser_ready
from pipeline.config import DownloadConfig, FetchConfig
from pipeline.fetch import FetchResult
from pipeline.shard_download import make_processor

RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """Stored 60×40 (landscape) with EXIF orientation 6: a browser shows it 40×60."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(RGB, "JPEG", exif=exif.tobytes())


SOURCES = {
    "gif, animated": (
        encoded(RGB.convert("P"), "GIF", save_all=True, append_images=[RGB.convert("P")]),
        (60, 40),
    ),
    "jpeg, EXIF-rotated": (rotated_jpeg(), (40, 60)),
    "png, greyscale": (encoded(RGB.convert("L"), "PNG"), (60, 40)),
    "png, 16-bit greyscale": (
        encoded(Image.fromarray((np.arange(2400).reshape(40, 60) * 27).astype(np.uint16)), "PNG"),
        (60, 40),
    ),
    "png, RGBA (blended in 8 bits here, not in float64 by the resizer)": (
        encoded(RGB.convert("RGBA"), "PNG"),
        (60, 40),
    ),
    "png, palette with transparency": (
        encoded(RGB.convert("P"), "PNG", transparency=0),
        (60, 40),
    ),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_source_is_stored_as_a_browser_shows_it(name):
    data, shown_size = SOURCES[name]
    download = DownloadConfig(image_size=64, resize_mode="keep_ratio")
    processor = make_processor(download, FetchConfig())
    stored, result = processor.finish(FetchResult(data))
    assert result["status"] == "success", result
    assert (result["original_width"], result["original_height"]) == shown_size
    with Image.open(io.BytesIO(stored)) as image:
        assert image.mode == "RGB" and image.format == "JPEG"
        width, height = image.size
    assert (width > height) == (shown_size[0] > shown_size[1])  # upright, as shown


def test_plain_rgb_passes_through_untouched():
    jpeg = encoded(RGB, "JPEG")
    assert browser_ready(jpeg, 10**8) is jpeg


def test_the_pixel_cap_applies_to_every_format_pillow_can_size():
    """A format the header scanner does not know (here TIFF) is sized by Pillow and capped."""
    big = encoded(Image.new("L", (4000, 3000)), "TIFF", compression="tiff_deflate")
    processor = make_processor(DownloadConfig(max_pixels=10_000_000), FetchConfig())
    _, result = processor.finish(FetchResult(big))
    assert result == {**result, "status": "failed_to_resize", "error_message": "too many pixels"}


def _sixteen_bit_rgb_tiff() -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".tiff", np.asarray(RGB).astype(np.uint16) * 257)
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize(
    "name, data",
    [
        # Pillow calls it "RGB", OpenCV reads its tRNS as alpha (then a float64 blend)
        ("png, RGB with a transparent colour", encoded(RGB, "PNG", transparency=(0, 0, 0))),
        # Pillow calls it "RGB", OpenCV decodes 16 bits a channel: white, or wrapped if blurred
        ("tiff, 16-bit RGB", _sixteen_bit_rgb_tiff()),
        ("avif", encoded(RGB, "AVIF")),  # this OpenCV cannot decode it
    ],
)
def test_formats_opencv_reads_otherwise_than_pillow_keep_their_pixels(name, data):
    """Handed on through Pillow, not passed to OpenCV as they came: stored with the source's
    own pixel values (its mean brightness), as 8-bit RGB."""
    processor = make_processor(
        DownloadConfig(image_size=60, resize_mode="keep_ratio"), FetchConfig()
    )
    assert browser_ready(data, 10**8) is not data
    stored, result = processor.finish(FetchResult(data))
    assert result["status"] == "success", result
    with Image.open(io.BytesIO(stored)) as image:
        assert image.mode == "RGB"
        mean = np.asarray(image, dtype=np.float64).mean()
    assert abs(mean - np.asarray(RGB, dtype=np.float64).mean()) < 8, (name, mean)
