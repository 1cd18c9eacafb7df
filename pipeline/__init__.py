"""The pipeline stage: metadata → filters → URL list → webdataset shards."""

import os

# img2dataset's resizer imports albumentations, which asks PyPI for its newest version at import
# unless told not to: every Spark executor's Python worker would phone out (or wait on a
# firewall). Every process that imports this package — the driver, and the executors' workers
# through pipeline.spark_daemon — is told not to, whatever launched it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
