"""Google Cloud: the pipeline as a Dataproc PySpark job (managed Spark)."""

from __future__ import annotations

import shlex

from flipcommon.config import ConfigError
from infra.render.commands import APP, HEADER, pipeline_overrides, spark_conf
from infra.render.deploy import Deploy


def dataproc_submit(d: Deploy) -> str:
    """The cluster's nodes must hold the project at /app (a custom image built from the
    pipeline image)."""
    if d.gcp is None:
        raise ConfigError("deploy.yaml has no gcp section")
    properties = ",".join(f"{k}={v}" for k, v in spark_conf(d, {}).items())
    command = [
        "gcloud",
        "dataproc",
        "jobs",
        "submit",
        "pyspark",
        f"file://{APP}/pipeline/__main__.py",
        f"--cluster={d.gcp.dataproc_cluster}",
        f"--region={d.gcp.region}",
        f"--properties={properties}",
        "--",
        d.pipeline.config,
        *pipeline_overrides(d),
    ]
    return "#!/bin/sh\n" + HEADER + " ".join(shlex.quote(a) for a in command) + "\n"
