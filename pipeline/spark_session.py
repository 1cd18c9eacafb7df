"""Create the SparkSession ourselves: img2dataset's default asks for a 16 GB driver."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from pipeline.config import SparkConfig


def get_spark(config: SparkConfig) -> SparkSession:
    # Executors must run the same interpreter (and so the same packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder
    if config.master:  # empty: the master spark-submit (or spark-defaults.conf) was given
        # We start the JVM, so driver settings take effect here. Under spark-submit the JVM
        # is already running (its --driver-memory counts, not this) and the launcher's task
        # retries are left as it set them.
        builder = (
            builder.master(config.master)
            .config("spark.driver.memory", config.driver_memory)
            .config("spark.task.maxFailures", "4")
        )
    builder = (
        builder.appName(config.app_name)
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "true")
        # one task per shard; never let a slow task block the driver's heartbeat
        .config("spark.network.timeout", "600s")
        # PySpark's daemon less ~110 ms of CPU per task spent re-reading archives that
        # duplicate the installed pyspark (pipeline.spark_daemon)
        .config("spark.python.daemon.module", "pipeline.spark_daemon")
    )
    for key, value in config.conf.items():  # last: the user's settings win
        builder = builder.config(key, str(value))
    return builder.getOrCreate()
