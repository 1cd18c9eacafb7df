"""How large an image can get inside the resizer: the aspect ratios a resize mode takes, and the
most pixels an image has once resized (what the blurrer works on)."""

from __future__ import annotations

import math

from pipeline.config import DownloadConfig

SHORTER_SIDE_MODES = ("keep_ratio", "center_crop")  # they scale the shorter side to image_size


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


def largest_resized_pixels(download: DownloadConfig) -> int:
    """The most pixels an image has after the resize (before a crop or border): the longer
    side at image_size, the shorter side at image_size up to the widest aspect ratio taken, or
    the image as it came ("no")."""
    side = download.image_size**2
    if download.resize_mode in SHORTER_SIDE_MODES:
        return min(int(side * max_aspect_ratio(download)), download.max_pixels)
    if download.resize_mode == "no":
        return download.max_pixels
    return side
