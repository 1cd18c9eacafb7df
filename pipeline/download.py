"""Download the URL list into webdataset shards with img2dataset, distributed by Spark.

img2dataset does the fetching, resizing, layout and per-shard stats; Spark runs one task per
shard. The SparkSession must already exist (``spark_session.get_spark``): img2dataset reuses the
active one.
"""

from __future__ import annotations

from img2dataset import download as img2dataset_download

from pipeline.config import DownloadConfig
from pipeline.url_shards import URL_COLUMNS

EXTRA_COLUMNS = [c for c in URL_COLUMNS if c not in ("URL", "TEXT")]


def download_shards(url_list: str, output_dir: str, config: DownloadConfig) -> None:
    img2dataset_download(
        url_list=url_list,
        input_format="parquet",
        url_col="URL",
        caption_col="TEXT",
        save_additional_columns=list(EXTRA_COLUMNS),
        output_folder=output_dir,
        output_format="webdataset",
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        encode_quality=config.encode_quality,
        number_sample_per_shard=config.samples_per_shard,
        processes_count=config.processes,
        thread_count=config.threads,
        timeout=config.timeout,
        retries=config.retries,
        distributor="pyspark",
        subjob_size=1000,
        incremental_mode="incremental",  # finished shards (stats written) are kept on rerun
        compute_hash="sha256",
        enable_wandb=False,
    )
