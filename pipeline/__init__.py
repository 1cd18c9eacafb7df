"""The pipeline stage: metadata → filters → URL list → webdataset shards."""

import os

# img2dataset's resizer imports albumentations, which asks PyPI for its newest version at import
# unless told not to: every Spark executor's Python worker would phone out (or wait on a
# firewall). Every process that imports this package — the driver, and the executors' workers
# through pipeline.spark_daemon — is told not to, whatever launched it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# OpenCV's own pixel limit, read once when cv2 loads (before any decode): a backstop behind the
# header check (download.max_pixels, at most this), for bytes whose declared size would slip
# past it. OpenCV's default is 2**30 pixels (~3 GB decoded); this is 2**27 (~400 MB as RGB).
OPENCV_PIXEL_BACKSTOP = 1 << 27
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(OPENCV_PIXEL_BACKSTOP)  # not a larger inherited one
