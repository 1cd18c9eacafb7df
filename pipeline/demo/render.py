"""Rasterise source artwork into RGB images (transparency composited onto white)."""

from __future__ import annotations

import io

from PIL import Image

NOTO_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
# NotoColorEmoji is a bitmap font with one strike: Pillow can only load it at this size.
NOTO_STRIKE_SIZE = 109


def flatten_on_white(image: Image.Image) -> Image.Image:
    """Composite transparency onto white; CLIP-style training expects opaque RGB images."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def render_svg(svg_bytes: bytes, max_side: int) -> Image.Image:
    import cairosvg  # imported lazily: needs libcairo, only the corpus builder uses it

    png = cairosvg.svg2png(bytestring=svg_bytes, output_width=max_side)
    image = Image.open(io.BytesIO(png))
    image.load()
    return fit_within(flatten_on_white(image), max_side)


def render_emoji_glyph(text: str, font_path: str = NOTO_EMOJI_FONT) -> Image.Image | None:
    """Render one emoji from a colour bitmap font; None when the font lacks the glyph."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, NOTO_STRIKE_SIZE)
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    # A missing glyph renders as the font's "tofu" box or as separate pieces of a sequence,
    # which shows up as a very wide image; real emoji are about square.
    if glyph.width > 1.6 * glyph.height or glyph.width < 20:
        return None
    return flatten_on_white(glyph)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
