"""How large an image can get inside the resizer: the aspect ratios a resize mode takes, and the
most pixels an image has once resized (what the blurrer works on)."""

from __future__ import annotations

import math

from pipeline.config import DownloadConfig

SHORTER_SIDE_MODES = ("keep_ratio", "center_crop")  # they scale the shorter side to image_size
# Boxes are blurred on the resized image with a kernel a fifth of the largest box's side
# (img2dataset's blurrer): work grows as pixels × kernel. An image blurred in a shorter-side
# mode may be at most this many times longer than wide. Measured (one whole-image box, the
# largest kernel; 2 cores beside other work): 512 × 2,048 (4:1) 0.67 s, 512 × 8,192 (16:1)
# 11.6 s; a 100 × 9,500 source at 512 px (95:1) would take minutes.
BLUR_MAX_ASPECT = 4.0
TOO_WIDE_TO_BLUR = "aspect ratio too large to blur"


def max_aspect_ratio(download: DownloadConfig) -> float:
    """The widest image a resize mode takes: download.max_aspect_ratio (0: any), and within the
    pixel cap. keep_ratio and center_crop scale the shorter side to image_size, so an image of
    aspect ratio a becomes image_size² × a pixels before any crop: a 1 × 20,000 PNG would become
    64 × 1.28M (~800 MB at 64 px), a 1 × 25M one tens of GB. Those modes refuse what would pass
    download.max_pixels once resized; the others scale the longer side down, whatever the
    shape."""
    chosen = download.max_aspect_ratio or math.inf
    if download.resize_mode in SHORTER_SIDE_MODES:
        return min(chosen, download.max_pixels / download.image_size**2)
    return chosen


def largest_blurred_pixels(download: DownloadConfig) -> int:
    """The most pixels of an image whose boxes are blurred, once resized (before a crop or
    border): the longer side at image_size, or the shorter side at image_size up to
    ``BLUR_MAX_ASPECT``. ("no" keeps the image as it came: blurring refuses it,
    ``pipeline.task_memory.check_task_memory``.)"""
    square = download.image_size**2
    if download.resize_mode in SHORTER_SIDE_MODES:
        aspect = min(max_aspect_ratio(download), BLUR_MAX_ASPECT)
        return min(int(square * aspect), download.max_pixels)
    return square


def blurrable(download: DownloadConfig, width: int, height: int) -> bool:
    """Whether an image of this size may have its boxes blurred (see ``BLUR_MAX_ASPECT``)."""
    if download.resize_mode not in SHORTER_SIDE_MODES:
        return True
    return max(width, height) <= BLUR_MAX_ASPECT * max(min(width, height), 1)
