"""Kubernetes: the pipeline as a Spark driver Job (executors as pods it creates), training as an
Indexed Job of one pod per node (or a Kubeflow PyTorchJob), evaluation as an Indexed Job."""

from __future__ import annotations

import copy
import math
from typing import Any

import yaml

from infra.render.commands import (
    EFA_NCCL_ENV,
    NCCL_ENV,
    eval_command,
    spark_submit,
    torchrun_elastic,
)
from infra.render.deploy import Deploy, TrainDeploy, spark_size_gib

SHM_MOUNT = {"name": "shm", "mountPath": "/dev/shm"}
ENV = [{"name": name, "value": value} for name, value in NCCL_ENV.items()]
# Workers get a store of their own per rendezvous round instead of sharing the agents' one:
# keys in the shared store are set apart by each node's local restart count, which differs
# between a node whose worker failed and one restarted with it, so the restarted process group
# would read the dead round's addresses (without this, tests/test_gang_restart.py lost three
# rounds to "connection refused" before the counts met).
ELASTIC_ENV = [{"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"}]
EFA_ENV = [{"name": name, "value": value} for name, value in EFA_NCCL_ENV.items()]
EFA_RESOURCE = "vpc.amazonaws.com/efa"
# Kubernetes' default ndots:5 makes every lookup of a name with fewer than five dots (every
# image host, the bucket's endpoint) try each search domain first: several NXDOMAINs per name
# through the cluster DNS. Two dots still let in-cluster short names resolve.
DNS_CONFIG = {"options": [{"name": "ndots", "value": "2"}]}
EXECUTOR_TEMPLATE_DIR = "/etc/flip/spark"


def _metadata(d: Deploy, name: str) -> dict:
    return {"name": name, "namespace": d.kubernetes.namespace, "labels": {"app": "flip"}}


def _job(
    d: Deploy,
    name: str,
    stage: str,
    containers: list[dict],
    *,
    service_account: str,
    backoff_limit: int,
    indexed: int | None = None,
    subdomain: str | None = None,
    volumes: list[dict] | None = None,
) -> dict:
    """A batch/v1 Job; ``indexed=N`` makes it an Indexed Job of N pods, all at once. A pod
    evicted or preempted (a node drained, a spot node reclaimed) is replaced without counting
    against ``backoff_limit``: only the job's own failures use it up."""
    spec: dict[str, Any] = {}
    if indexed is not None:
        spec |= {"completionMode": "Indexed", "completions": indexed, "parallelism": indexed}
    spec["podFailurePolicy"] = {
        "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    }
    pod: dict[str, Any] = {"subdomain": subdomain} if subdomain else {}
    pod |= {"serviceAccountName": service_account, "restartPolicy": "Never"}
    pod["dnsConfig"] = copy.deepcopy(DNS_CONFIG)
    pod["containers"] = containers
    if volumes:
        pod["volumes"] = volumes
    spec["backoffLimit"] = backoff_limit
    spec["template"] = {"metadata": {"labels": {"app": "flip", "stage": stage}}, "spec": pod}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(d, name), "spec": spec}


def pipeline(d: Deploy) -> list[dict]:
    image = d.images.pipeline
    service_account = d.kubernetes.spark_service_account
    command = spark_submit(
        d,
        "k8s://https://kubernetes.default.svc:443",
        {
            "spark.kubernetes.namespace": d.kubernetes.namespace,
            "spark.kubernetes.container.image": image,
            "spark.kubernetes.authenticate.driver.serviceAccountName": service_account,
            # executors take the same identity (its annotations give them the bucket) and
            # the same DNS settings, from a pod template the driver reads
            "spark.kubernetes.authenticate.executor.serviceAccountName": service_account,
            "spark.kubernetes.executor.podTemplateFile": f"{EXECUTOR_TEMPLATE_DIR}/executor.yaml",
            "spark.kubernetes.executor.request.cores": str(d.pipeline.executor_cores),
            "spark.driver.host": "$(POD_IP)",  # client mode: executors dial the driver pod
            "spark.driver.bindAddress": "0.0.0.0",
            # executors are owned by the driver pod: they go when it goes, never orphaned
            "spark.kubernetes.driver.pod.name": "$(POD_NAME)",
        },
    )
    container = {
        "name": "driver",
        "image": image,
        "command": command,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "resources": {"requests": {"cpu": "4", "memory": driver_pod_memory(d)}},
        "volumeMounts": [{"name": "executor-template", "mountPath": EXECUTOR_TEMPLATE_DIR}],
    }
    # backoffLimit 3: a rerun keeps finished shards
    job = _job(
        d,
        "flip-pipeline",
        "pipeline",
        [container],
        service_account=service_account,
        backoff_limit=3,
        volumes=[{"name": "executor-template", "configMap": {"name": EXECUTOR_TEMPLATE}}],
    )
    return [*spark_rbac(d, service_account), executor_template(d), job]


EXECUTOR_TEMPLATE = "flip-spark-executor-template"


def executor_template(d: Deploy) -> dict:
    """The executor pods' template (Spark fills in image, resources and command)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"dnsConfig": copy.deepcopy(DNS_CONFIG)}}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(d, EXECUTOR_TEMPLATE),
        "data": {"executor.yaml": yaml.safe_dump(pod, sort_keys=False)},
    }


def driver_pod_memory(d: Deploy) -> str:
    """The driver pod's memory: its JVM heap and 4 GiB for the JVM's own and Python's."""
    heap = spark_size_gib(d.pipeline.driver_memory, "pipeline.driver_memory")
    return f"{math.ceil(heap) + 4}Gi"


def spark_rbac(d: Deploy, service_account: str) -> list[dict]:
    """The driver's identity: it creates, watches and deletes its executor pods (and the
    service and config maps Spark makes for them), in its namespace only."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(d, service_account),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"],
                "verbs": ["create", "get", "list", "watch", "delete", "deletecollection"],
            }
        ],
    }
    subject = {
        "kind": "ServiceAccount",
        "name": service_account,
        "namespace": d.kubernetes.namespace,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(d, service_account),
        "subjects": [subject],
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": service_account,
        },
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(d, service_account),
    }
    annotations = d.kubernetes.spark_service_account_annotations
    if annotations:
        account["metadata"]["annotations"] = dict(annotations)
    return [account, role, binding]


def train(d: Deploy) -> list[dict]:
    t = d.train
    name = "flip-train"
    # pod 0 hosts the rendezvous; if it is the one replaced, the others' agents lose it, fail,
    # and are replaced in turn: the Job's backoff is the outer gang restart
    command = torchrun_elastic(d, f"{name}-0.{name}", t.run_name)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(d, name),
        "spec": {  # headless: pod i is reachable as flip-train-i.flip-train
            "clusterIP": "None",
            "selector": {"app": "flip", "stage": "train"},
            "ports": [{"name": "rendezvous", "port": t.master_port}],
        },
    }
    job = _job(
        d,
        name,
        "train",
        [_trainer_container(d, command)],
        service_account=d.kubernetes.service_account,
        # A worker that fails is restarted with all the others by torchrun (up to max_restarts);
        # a pod that fails is replaced alone, and when its agent rejoins the rendezvous the
        # survivors' agents restart their workers with it; everyone resumes from the last
        # checkpoint. Backoff counts pods that give up (max_restarts used, rendezvous lost).
        backoff_limit=2 * t.nodes,
        indexed=t.nodes,
        subdomain=name,
        volumes=[shm_volume(t.shm_gib)],
    )
    job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = stop_grace(t)
    return [service, job]


def stop_grace(t: TrainDeploy) -> int:
    """How long a training pod has from SIGTERM to SIGKILL: torchrun's own wait for its
    workers' checkpoint (``--shutdown-timeout``), and time to leave after it."""
    return t.stop_grace_s + 30


def _trainer_container(d: Deploy, command: list[str]) -> dict:
    t = d.train
    return {
        "name": "trainer",
        "image": d.images.gpu,
        "command": command,
        "env": ENV + ELASTIC_ENV + (EFA_ENV if t.efa_interfaces else []),
        "resources": gpu_resources(t.cpus, t.memory_gib, t.gpus_per_node, t.efa_interfaces),
        "volumeMounts": [SHM_MOUNT],
    }


def gpu_resources(cpus: int, memory_gib: int, gpus: int, efa: int = 0) -> dict:
    """GPUs (and EFA interfaces, from the EKS EFA device plugin) as limits: Kubernetes needs
    requests = limits for extended resources; CPU and memory requested, so the scheduler places
    the pod on a node with room for its loader workers."""
    devices = {"nvidia.com/gpu": str(gpus)}
    if efa:
        devices[EFA_RESOURCE] = str(efa)
    return {
        "requests": {"cpu": str(cpus), "memory": f"{memory_gib}Gi", **devices},
        "limits": devices,
    }


def shm_volume(gib: int) -> dict:
    """/dev/shm in memory, where loader workers hand their batches to the trainer (a
    container's default is 64 MB); it counts against the pod's memory."""
    return {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{gib}Gi"}}


def train_pytorchjob(d: Deploy) -> list[dict]:
    """The same training as a Kubeflow training-operator PyTorchJob (for clusters that run the
    operator): a Master and nodes − 1 Workers. The operator gives each pod RANK (its node
    index) and MASTER_ADDR; Kubernetes expands them in the command."""
    t = d.train
    container = _trainer_container(d, torchrun_elastic(d, "$(MASTER_ADDR)", t.run_name))
    # the operator reads the rendezvous port from the port of this name
    container["ports"] = [{"name": "pytorchjob-port", "containerPort": t.master_port}]

    def replica(count: int) -> dict:
        pod = {  # copies: the YAML holds each replica's spec in full, without anchors
            "serviceAccountName": d.kubernetes.service_account,
            "containers": [copy.deepcopy(container)],
            "volumes": [shm_volume(t.shm_gib)],
            "terminationGracePeriodSeconds": stop_grace(t),
        }
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {"metadata": {"labels": {"app": "flip", "stage": "train"}}, "spec": pod},
        }

    specs = {"Master": replica(1)}
    if t.nodes > 1:
        specs["Worker"] = replica(t.nodes - 1)
    return [
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": _metadata(d, "flip-train"),
            "spec": {
                # preemption: failed pods restart and resume from the last checkpoint
                "runPolicy": {"backoffLimit": 20, "cleanPodPolicy": "None"},
                "pytorchReplicaSpecs": specs,
            },
        }
    ]


def evaluation(d: Deploy) -> list[dict]:
    e = d.eval
    container = {
        "name": "eval",
        "image": d.images.gpu,
        "command": eval_command(d, "JOB_COMPLETION_INDEX"),
        "resources": gpu_resources(e.cpus, e.memory_gib, 1),
        "volumeMounts": [SHM_MOUNT],
    }
    return [
        _job(
            d,
            "flip-eval",
            "eval",
            [container],
            service_account=d.kubernetes.service_account,
            backoff_limit=3,
            indexed=e.checkpoints,
            volumes=[shm_volume(e.shm_gib)],
        )
    ]
