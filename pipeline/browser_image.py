"""An image as a browser shows it, before the resizer sees it.

img2dataset's resizer decodes with OpenCV as stored (``IMREAD_UNCHANGED``): this OpenCV has no
GIF decoder, EXIF orientation is ignored (a portrait phone photo is stored on its side), and
greyscale, palette or 16-bit sources come out as single-channel or 16-bit arrays. Browsers show
all of them, upright and in colour. So an image that is not already plain 8-bit RGB without an
orientation is decoded here with Pillow — the first frame of an animation, turned upright,
alpha over white as the resizer does it, 8-bit RGB — and handed on as a lossless PNG. Plain
RGB images (nearly all of the web) pass through untouched, read only as far as their header.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

# RGBA is flattened here too: Pillow blends in 8 bits; measured on a 16 Mpx RGBA PNG, the peak
# from bytes to resized JPEG is 24 bytes per pixel this way, 76 with the resizer's float64 blend.
PASS_THROUGH_MODES = ("RGB",)
# Formats OpenCV decodes as Pillow reads them, when plain: anything else (TIFF, whose 16-bit RGB
# Pillow calls "RGB" and OpenCV decodes as 16-bit; AVIF, which this OpenCV cannot read; BMP…)
# is handed on through Pillow.
PASS_THROUGH_FORMATS = ("JPEG", "PNG", "WEBP")
ORIENTATION_TAG = 0x0112


class NotAnImage(ValueError):
    pass


def browser_ready(data: bytes, max_pixels: int) -> bytes:
    """``data`` itself when OpenCV reads it as a browser shows it; else the browser's view as
    PNG. Raises ``NotAnImage`` (bytes Pillow cannot read: left to the resizer's own error) or
    ``ValueError("too many pixels")`` from the header, before any decoding."""
    with warnings.catch_warnings():  # our cap, not Pillow's warning, decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise NotAnImage(str(err)) from err
    with image:
        if image.width * image.height > max_pixels:
            raise ValueError("too many pixels")
        upright = image.getexif().get(ORIENTATION_TAG, 1) in (0, 1)
        eight_bit = not (image.format == "PNG" and data[24:25] not in (b"\x08", b""))
        # an RGB PNG with a tRNS chunk stays "RGB" in Pillow, but OpenCV reads it with alpha
        # and the resizer would blend that in float64 (76 bytes per pixel)
        opaque = "transparency" not in image.info
        plain = image.mode in PASS_THROUGH_MODES and eight_bit and opaque
        if image.format in PASS_THROUGH_FORMATS and plain and upright:
            return data
        try:
            image.seek(0)  # an animation's first frame, as a browser shows before it plays
            shown = ImageOps.exif_transpose(image)
            out = io.BytesIO()
            flattened(shown).save(out, "PNG", compress_level=1)
        except (OSError, ValueError, SyntaxError) as err:  # a truncated or broken body
            raise NotAnImage(str(err)) from err
    return out.getvalue()


def flattened(image: Image.Image) -> Image.Image:
    """8-bit RGB; any transparency over white (what the resizer does with alpha)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits
        image = image.point(lambda value: value / 257).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
