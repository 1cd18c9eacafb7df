"""Google Cloud: the pipeline as a Dataproc workflow template of one PySpark job (managed
Spark), instantiated on an existing cluster by a one-line script."""

from __future__ import annotations

import shlex

from flipcommon.config import ConfigError
from infra.render.commands import APP, HEADER, app_path, pipeline_overrides, spark_conf
from infra.render.deploy import Deploy, GcpDeploy

WORKFLOW_FILE = "infra/generated/dataproc/pipeline-workflow.yaml"


def _gcp(d: Deploy) -> GcpDeploy:
    if d.gcp is None:
        raise ConfigError("deploy.yaml has no gcp section")
    return d.gcp


def dataproc_workflow(d: Deploy) -> dict:
    """A WorkflowTemplate in the API's own field names, as ``gcloud dataproc workflow-templates
    instantiate-from-file`` reads it. The cluster's nodes must hold the project at /app (a
    custom image built from the pipeline image); it is picked by its name label."""
    job = {
        "stepId": "pipeline",
        "pysparkJob": {
            "mainPythonFileUri": f"file://{APP}/pipeline/__main__.py",
            "args": [app_path(d.pipeline.config), *pipeline_overrides(d)],
            "properties": spark_conf(d, {}),
        },
    }
    selector = {"clusterLabels": {"goog-dataproc-cluster-name": _gcp(d).dataproc_cluster}}
    return {"jobs": [job], "placement": {"clusterSelector": selector}}


def dataproc_submit(d: Deploy) -> str:
    command = [
        "gcloud",
        "dataproc",
        "workflow-templates",
        "instantiate-from-file",
        f"--file={WORKFLOW_FILE}",
        f"--region={_gcp(d).region}",
    ]
    return "#!/bin/sh\n" + HEADER + " ".join(shlex.quote(a) for a in command) + "\n"
