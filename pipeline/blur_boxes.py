"""Boxes to blur in an image (``download.bbox_col``: DataComp's ``face_bboxes``), read from a
sample's metadata and turned upright with the image.

A box is ``[x_min, y_min, x_max, y_max]`` in [0, 1] of the image as stored, the way img2dataset
decodes it (OpenCV ignores EXIF orientation) and the way DataComp's face boxes were computed.
The pipeline shows an image upright (``pipeline.browser_image``), so its boxes are turned by the
same EXIF orientation before img2dataset's blurrer blurs them on the resized image.

A value that is not such a list fails the sample (``bad blur boxes``): an image whose faces
cannot be located is never written unblurred. That includes boxes outside the image (pixel
coordinates, say: clipped, they would cover nothing) and boxes with no area; coordinates up to
``SLACK`` outside [0, 1], as detectors give at an image's edge, are clipped to it.
"""

from __future__ import annotations

import io
import json
import math
import warnings

from PIL import Image

from pipeline.browser_image import ORIENTATION_TAG

MAX_BOXES = 1024  # far past any photo's faces; bounds the blurrer's per-box work
SLACK = 0.05
BAD_BOXES = "bad blur boxes"
Box = tuple[float, float, float, float]


class BadBoxes(ValueError):
    pass


def parse_boxes(value: object) -> list[Box]:
    """A metadata value as boxes: JSON text (a list column carried as text) or a list; null or
    empty: none. Coordinates are clipped to [0, 1]; anything else raises ``BadBoxes``."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except (ValueError, RecursionError) as err:  # deep nesting: RecursionError
            raise BadBoxes(BAD_BOXES) from err
    if not isinstance(value, list) or len(value) > MAX_BOXES:
        raise BadBoxes(BAD_BOXES)
    boxes = []
    for box in value:
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise BadBoxes(BAD_BOXES)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            raise BadBoxes(BAD_BOXES)
        try:
            coordinates = [float(v) for v in box]  # a 400-digit int: OverflowError
        except OverflowError as err:
            raise BadBoxes(BAD_BOXES) from err
        if not all(math.isfinite(v) and -SLACK <= v <= 1 + SLACK for v in coordinates):
            raise BadBoxes(BAD_BOXES)
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in coordinates)
        if x1 <= x0 or y1 <= y0:  # inverted, or no area: it would blur nothing
            raise BadBoxes(BAD_BOXES)
        boxes.append((x0, y0, x1, y1))
    return boxes


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) in an image's header; 1 when it has none or cannot be read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                orientation = image.getexif().get(ORIENTATION_TAG, 1)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return 1
    return orientation if orientation in range(1, 9) else 1


# Where a stored image's point (x, y), in [0, 1], lies once turned upright by each EXIF
# orientation (the transposition Pillow's exif_transpose applies).
_UPRIGHT = {
    1: lambda x, y: (x, y),
    2: lambda x, y: (1 - x, y),  # mirrored
    3: lambda x, y: (1 - x, 1 - y),  # turned 180°
    4: lambda x, y: (x, 1 - y),  # mirrored top to bottom
    5: lambda x, y: (y, x),  # transposed
    6: lambda x, y: (1 - y, x),  # stored turned 90° anticlockwise: turned back clockwise
    7: lambda x, y: (1 - y, 1 - x),  # transversed
    8: lambda x, y: (y, 1 - x),  # stored turned 90° clockwise
}


def upright_boxes(boxes: list[Box], orientation: int) -> list[Box]:
    """``boxes`` of the stored image, in the upright image's coordinates."""
    turn = _UPRIGHT.get(orientation, _UPRIGHT[1])
    upright = []
    for x0, y0, x1, y1 in boxes:
        (ax, ay), (bx, by) = turn(x0, y0), turn(x1, y1)
        upright.append((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))
    return upright
