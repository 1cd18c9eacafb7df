"""Every generated file: relative path under ``infra/generated/`` → content."""

from __future__ import annotations

import json
from typing import Any

import yaml

from infra.render import aws, gcp, kubernetes, slurm
from infra.render.commands import HEADER
from infra.render.deploy import ROOT, Deploy

GENERATED = ROOT / "infra" / "generated"


def _yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=100)


def _yaml_docs(objects: list[dict]) -> str:
    return HEADER + "---\n".join(_yaml(o) for o in objects)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def render_all(d: Deploy) -> dict[str, str]:
    files = {
        "kubernetes/pipeline-job.yaml": _yaml_docs(kubernetes.pipeline(d)),
        "kubernetes/train-job.yaml": _yaml_docs(kubernetes.train(d)),
        "kubernetes/eval-job.yaml": _yaml_docs(kubernetes.evaluation(d)),
        "slurm/train.sbatch": slurm.train(d),
        "slurm/eval-array.sbatch": slurm.evaluation(d),
        "slurm/submit.sh": slurm.submit(d),
        "aws-batch/pipeline-job-definition.json": _json(aws.batch_pipeline(d)),
        "aws-batch/train-job-definition.json": _json(aws.batch_train(d)),
        "aws-batch/eval-job-definition.json": _json(aws.batch_eval(d)),
        "aws-batch/gpu-launch-template.json": _json(aws.gpu_launch_template(d)),
        "aws-batch/compute-environments.json": _json(aws.batch_compute_environments(d)),
        "aws-batch/job-queues.json": _json(aws.batch_job_queues(d)),
        "aws-batch/submit.sh": aws.batch_submit_script(d),
        "emr/pipeline-steps.json": _json(aws.emr_steps(d)),
        "dataproc/submit-pipeline.sh": gcp.dataproc_submit(d),
        "dataproc/pipeline-workflow.yaml": HEADER + _yaml(gcp.dataproc_workflow(d)),
        "kubernetes/train-pytorchjob.yaml": _yaml_docs(kubernetes.train_pytorchjob(d)),
    }
    for bucket, lifecycle in aws.s3_lifecycle(d).items():
        files[f"aws-s3/lifecycle-{bucket}.json"] = _json(lifecycle)
    return files
