"""AWS: Batch job definitions (the pipeline on one large instance, training multi-node,
evaluation as an array), their compute environments and queues, a submit script that chains
them; the pipeline as EMR steps (managed Spark); and the S3 lifecycle rule that aborts the
multipart uploads a killed task leaves behind."""

from __future__ import annotations

import base64
import re
from typing import Any

from flipcommon.config import ConfigError
from infra.render.commands import (
    EFA_NCCL_ENV,
    HEADER,
    NCCL_ENV,
    eval_command,
    pipeline_overrides,
    shell_word,
    spark_submit,
    stage_args,
    torchrun,
)
from infra.render.deploy import AwsDeploy, Deploy, check_single_machine_memory


def _aws(d: Deploy) -> AwsDeploy:
    if d.aws is None:
        raise ConfigError("deploy.yaml has no aws section")
    return d.aws


def _container_job(
    d: Deploy, name: str, image: str, command: list[str], attempts: int, resources: dict
) -> dict:
    """A single-container Batch job definition on EC2 with the job role."""
    return {
        "jobDefinitionName": name,
        "type": "container",
        "platformCapabilities": ["EC2"],
        "retryStrategy": {"attempts": attempts},
        "containerProperties": {
            "image": image,
            "command": command,
            "jobRoleArn": _aws(d).job_role_arn,
            "resourceRequirements": [
                {"type": kind, "value": str(value)} for kind, value in resources.items()
            ],
        },
    }


def batch_pipeline(d: Deploy) -> dict:
    """A single large instance running Spark in local mode (the whole stage in one job)."""
    p = d.pipeline
    overrides = [
        o
        for o in pipeline_overrides(d)
        if not o.startswith(("spark.master=", "download.processes="))
    ]
    resources = {"VCPU": p.executor_cores * 4, "MEMORY": 256 * 1024}
    # as many tasks as vCPUs asked for (local[*] would take every CPU the host has, whatever
    # the job reserved), each retried like an executor's task (local mode otherwise fails the
    # job at a task's first failure)
    master = f"spark.master=local[{resources['VCPU']},{p.task_max_failures}]"
    slots = f"download.processes={resources['VCPU']}"  # the tasks at once: per-site pacing
    command = ["python", *stage_args("pipeline", p.config, [master, slots, *overrides])]
    check_single_machine_memory(d, resources["VCPU"], resources["MEMORY"] / 1024)
    return _container_job(d, "flip-pipeline", d.images.pipeline, command, 3, resources)


def batch_train(d: Deploy) -> dict:
    t = d.train
    # Batch passes the node index and the main node's address as environment variables, and
    # does not expand them in a command: a shell does.
    line = " ".join(
        shell_word(a)
        for a in torchrun(
            d,
            "$AWS_BATCH_JOB_NODE_INDEX",
            "${AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS:-localhost}",
        )
    )
    container = {
        "image": d.images.gpu,
        "command": ["sh", "-c", f"exec {line}"],
        "jobRoleArn": _aws(d).job_role_arn,
        "resourceRequirements": [
            {"type": "GPU", "value": str(t.gpus_per_node)},
            {"type": "VCPU", "value": str(t.cpus)},
            {"type": "MEMORY", "value": str(1024 * t.memory_gib)},
        ],
        "environment": [{"name": k, "value": v} for k, v in NCCL_ENV.items()],
        # /dev/shm carries the loader workers' batches to each rank (Docker's default: 64 MB)
        "linuxParameters": {"sharedMemorySize": 1024 * t.shm_gib},
    }
    if t.efa_interfaces:
        _add_efa(container, t.efa_interfaces)
    return {
        "jobDefinitionName": "flip-train",
        "type": "multinode",
        "retryStrategy": {"attempts": 5},
        "nodeProperties": {
            "numNodes": t.nodes,
            "mainNode": 0,
            "nodeRangeProperties": [{"targetNodes": f"0:{t.nodes - 1}", "container": container}],
        },
    }


def _add_efa(container: dict, interfaces: int) -> None:
    """The node's EFA devices passed into the container, memory it may pin for RDMA without a
    limit, and NCCL pointed at the EFA provider."""
    container["linuxParameters"]["devices"] = [
        {
            "hostPath": f"/dev/infiniband/uverbs{i}",
            "containerPath": f"/dev/infiniband/uverbs{i}",
            "permissions": ["READ", "WRITE", "MKNOD"],
        }
        for i in range(interfaces)
    ]
    container["ulimits"] = [{"name": "memlock", "softLimit": -1, "hardLimit": -1}]
    container["environment"] += [{"name": k, "value": v} for k, v in EFA_NCCL_ENV.items()]


GPU_LAUNCH_TEMPLATE = "flip-gpu"
# SIGTERM to SIGKILL on a Batch container is the ECS agent's ECS_CONTAINER_STOP_TIMEOUT (30 s
# unless set), too short for a large model's checkpoint: the GPU instances' user data sets it
# from train.stop_grace_s. Batch takes user data only as MIME multi-part.
USER_DATA = """MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="==FLIP=="

--==FLIP==
Content-Type: text/x-shellscript; charset="us-ascii"

#!/bin/bash
echo ECS_CONTAINER_STOP_TIMEOUT={stop}s >> /etc/ecs/ecs.config

--==FLIP==--
"""


def gpu_launch_template(d: Deploy) -> dict:
    """``aws ec2 create-launch-template --cli-input-json``: the GPU instances of the flip-gpu
    compute environment. Their ECS agent gives a stopped container train.stop_grace_s + 30 s
    to checkpoint before it is killed; with ``train.efa_interfaces`` > 0, one EFA interface per
    network card (the first card also carries the instance's primary interface)."""
    a = _aws(d)
    user_data = USER_DATA.format(stop=d.train.stop_grace_s + 30)
    data: dict[str, Any] = {"UserData": base64.b64encode(user_data.encode()).decode()}
    if d.train.efa_interfaces:
        data["NetworkInterfaces"] = [
            {
                "NetworkCardIndex": card,
                "DeviceIndex": 0 if card == 0 else 1,
                "InterfaceType": "efa",
                # the security groups here, not the compute environment's (Batch takes one or
                # the other); the subnet is the compute environment's
                "Groups": a.security_group_ids,
                "DeleteOnTermination": True,
            }
            for card in range(d.train.efa_interfaces)
        ]
    return {"LaunchTemplateName": GPU_LAUNCH_TEMPLATE, "LaunchTemplateData": data}


def batch_eval(d: Deploy) -> dict:
    e = d.eval
    # submit as an array job: aws batch submit-job --array-properties size=<eval.checkpoints>
    command = eval_command(d, "AWS_BATCH_JOB_ARRAY_INDEX")
    resources = {"GPU": 1, "VCPU": e.cpus, "MEMORY": 1024 * e.memory_gib}
    job = _container_job(d, "flip-eval", d.images.gpu, command, 2, resources)
    job["containerProperties"]["linuxParameters"] = {"sharedMemorySize": 1024 * e.shm_gib}
    return job


def batch_compute_environments(d: Deploy) -> list[dict]:
    """``aws batch create-compute-environment --cli-input-json`` for each: CPU instances for the
    pipeline, GPU instances (in a cluster placement group) for training and evaluation."""
    a = _aws(d)

    def environment(name: str, instance_type: str, max_vcpus: int, **extra: Any) -> dict:
        return {
            "computeEnvironmentName": name,
            "type": "MANAGED",
            "state": "ENABLED",
            "computeResources": {
                "type": "EC2",  # multi-node parallel jobs do not run on Spot
                "allocationStrategy": "BEST_FIT_PROGRESSIVE",
                "minvCpus": 0,  # nothing runs, nothing is paid for
                "maxvCpus": max_vcpus,
                "instanceTypes": [instance_type],
                "subnets": a.subnets,
                "securityGroupIds": a.security_group_ids,
                "instanceRole": a.instance_role,
                **extra,
            },
        }

    gpu_nodes = max(d.train.nodes, 1)
    gpu = environment(
        "flip-gpu",
        a.gpu_instance_type,
        a.gpu_instance_vcpus * gpu_nodes,
        placementGroup=a.placement_group,
        # the stop timeout, and with EFA the interfaces
        launchTemplate={"launchTemplateName": GPU_LAUNCH_TEMPLATE, "version": "$Latest"},
    )
    if d.train.efa_interfaces:
        # the template's interfaces carry the security groups: Batch refuses them in both places
        del gpu["computeResources"]["securityGroupIds"]
    return [environment("flip-cpu", a.cpu_instance_type, a.cpu_instance_vcpus * 4), gpu]


def batch_job_queues(d: Deploy) -> list[dict]:
    """``aws batch create-job-queue --cli-input-json`` for each."""
    return [
        {
            "jobQueueName": f"{name}-queue",
            "state": "ENABLED",
            "priority": 1,
            "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": name}],
        }
        for name in ("flip-cpu", "flip-gpu")
    ]


def batch_submit_script(d: Deploy) -> str:
    ids = "--query jobId --output text"
    return (
        "#!/bin/sh\n"
        + HEADER
        + "# The pipeline, then training, then the evaluation array (one task per checkpoint),\n"
        + "# chained: each job starts only once the one before it has succeeded (dependsOn).\n"
        + "# Register the job definitions first (aws batch register-job-definition\n"
        + "# --cli-input-json file://…), and create the GPU launch template\n"
        + "# (gpu-launch-template.json), then the compute environments and queues, once.\n"
        + "set -eu\n"
        + "PIPELINE_JOB=$(aws batch submit-job --job-name flip-pipeline "
        + f"--job-queue flip-cpu-queue --job-definition flip-pipeline {ids})\n"
        + "TRAIN_JOB=$(aws batch submit-job --job-name flip-train --job-queue flip-gpu-queue "
        + f'--job-definition flip-train --depends-on "jobId=$PIPELINE_JOB" {ids})\n'
        + "aws batch submit-job --job-name flip-eval --job-queue flip-gpu-queue "
        + f"--job-definition flip-eval --array-properties size={d.eval.checkpoints} "
        + '--depends-on "jobId=$TRAIN_JOB"\n'
    )


def emr_steps(d: Deploy) -> list[dict]:
    """``aws emr add-steps --cluster-id ID --steps file://emr-steps.json`` (managed Spark)."""
    return [
        {
            "Name": "flip-pipeline",
            "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": spark_submit(d, "yarn", {})},
        }
    ]


# A shard's tar and a checkpoint's weights go up as multipart uploads. One stopped by a failed
# shard is aborted (``pipeline.shard_download.give_up``), but an executor killed for memory, a
# lost spot node or a cancelled job leaves its parts: billed, invisible to a listing, kept until
# aborted. S3 aborts them itself under this rule.
ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS = 2
S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def s3_lifecycle(d: Deploy) -> dict[str, dict]:
    """Per bucket of the deploy's shard set and runs: ``aws s3api
    put-bucket-lifecycle-configuration --cli-input-json file://…`` input aborting incomplete
    multipart uploads under those prefixes. (That call replaces a bucket's rules: merge them
    into a bucket that has its own.)"""
    prefixes: dict[str, list[str]] = {}
    for url in (d.storage.shards, d.storage.runs):
        if not url.startswith("s3://"):
            continue
        bucket, _, key = url[len("s3://") :].partition("/")
        if not S3_BUCKET_NAME.fullmatch(bucket):  # it also names a rendered file
            raise ConfigError(f"storage URL {url!r}: {bucket!r} is not an S3 bucket name")
        prefix = key.rstrip("/") + "/" if key else ""
        prefixes.setdefault(bucket, []).append(prefix)
    return {
        bucket: {
            "Bucket": bucket,
            "LifecycleConfiguration": {
                "Rules": [
                    {
                        "ID": f"flip-abort-incomplete-uploads-{index}",
                        "Status": "Enabled",
                        "Filter": {"Prefix": prefix},
                        "AbortIncompleteMultipartUpload": {
                            "DaysAfterInitiation": ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS
                        },
                    }
                    for index, prefix in enumerate(sorted(set(found)))
                ]
            },
        }
        for bucket, found in prefixes.items()
    }
