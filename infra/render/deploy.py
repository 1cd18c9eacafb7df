"""The deploy config (``infra/deploy.yaml``): where images and data live, and how large each
stage runs. Loaded by the stages' own config loader, so a misspelt or missing key is an error
that names it, not a KeyError deep in a renderer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any

from flipcommon.config import ConfigError, Range, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy.yaml"


@dataclass
class Images:
    pipeline: str
    gpu: str


@dataclass
class Storage:
    shards: str  # the shard set the pipeline writes and training reads
    runs: str  # training runs go to {runs}/{train.run_name}
    metadata: str = ""  # the pipeline's input; "" for the config's own (the demo corpus)


@dataclass
class PipelineDeploy:
    config: str  # configs/pipeline/*.yaml
    executors: Annotated[int, Range(1)]
    executor_cores: Annotated[int, Range(1)]
    executor_memory: str  # Spark's notation: 24g
    memory_overhead: str
    threads_per_task: Annotated[int, Range(1)]
    task_max_failures: Annotated[int, Range(1)]
    overrides: list[str] = field(default_factory=list)
    # the driver's JVM heap: the URL list's sort samples its range bounds there
    driver_memory: str = "16g"


@dataclass
class TrainDeploy:
    model: str  # configs/train/<model>.yaml
    run_name: str
    nodes: Annotated[int, Range(1)]
    gpus_per_node: Annotated[int, Range(1)]
    master_port: Annotated[int, Range(1, 65535)]
    device: str
    cpus: int  # per node
    memory_gib: int  # per node
    # /dev/shm per node; 0: from the memory planner (the loader's batches per node + 25%)
    shm_gib: Annotated[int, Range(0)] = 0
    # gang restarts torchrun's agents make on their own before the pod fails (Kubernetes)
    max_restarts: int = 3
    # From SIGTERM to a written checkpoint: the ranks stop at their next agreed check (about
    # every 5 s of steps) and write it (ViT-H/14 with Adam: ~16 GB). torchrun waits this long
    # before it kills its workers, Kubernetes this + 30 s, Slurm signals this + 120 s before
    # the time limit.
    stop_grace_s: Annotated[int, Range(30)] = 600
    # AWS Elastic Fabric Adapter interfaces per node (p5.48xlarge: 32, p4d.24xlarge: 4);
    # 0 = none. Needs the gpu-efa image (infra/docker/Dockerfile).
    efa_interfaces: int = 0
    overrides: list[str] = field(default_factory=list)


@dataclass
class EvalDeploy:
    suite: str  # configs/eval/<suite>.yaml
    checkpoints: Annotated[int, Range(2)]  # array size (AWS Batch arrays take 2 or more)
    device: str
    cpus: int  # per task
    memory_gib: int
    shm_gib: int
    overrides: list[str] = field(default_factory=list)


@dataclass
class KubernetesDeploy:
    namespace: str
    service_account: str
    spark_service_account: str
    # on the Spark service account (driver and executors): the cloud identity that reaches
    # the bucket, e.g. {eks.amazonaws.com/role-arn: arn:aws:iam::…:role/…} (IRSA) or
    # {iam.gke.io/gcp-service-account: …} (GKE workload identity)
    spark_service_account_annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class AwsDeploy:
    region: str
    job_role_arn: str
    emr_cluster_id: str
    subnets: list[str]
    security_group_ids: list[str]
    instance_role: str
    placement_group: str
    cpu_instance_type: str
    cpu_instance_vcpus: int
    gpu_instance_type: str
    gpu_instance_vcpus: int


@dataclass
class GcpDeploy:
    region: str
    dataproc_cluster: str


@dataclass
class SlurmDeploy:
    partition: str
    time: str
    cpus_per_task: int


@dataclass
class Deploy:
    images: Images
    storage: Storage
    pipeline: PipelineDeploy
    train: TrainDeploy
    eval: EvalDeploy
    kubernetes: KubernetesDeploy
    # platforms a deploy file may leave out (the local rehearsal has none of them)
    aws: AwsDeploy | None = None
    gcp: GcpDeploy | None = None
    slurm: SlurmDeploy | None = None


# Rendered files paste these values into shell scripts, #SBATCH lines and job definitions:
# none may hold a control character (a newline would start a command) or a "$" (the scripts'
# own shell variables are the only expansions they hold; infra.render.commands.PLACEHOLDERS).
UNSAFE_CHARACTERS = re.compile(r"[\x00-\x1f\x7f$]")


def unsafe_values(value: Any, where: str = "") -> list[str]:
    """Every string in ``value`` (a deploy dataclass, list or dict) holding an unsafe
    character, by its place in the file."""
    if is_dataclass(value):
        return [
            found
            for f in fields(value)
            for found in unsafe_values(getattr(value, f.name), f"{where}{f.name}.")
        ]
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
        keys = [k for k, _ in items if UNSAFE_CHARACTERS.search(k)]
        return [f"{where}{k}" for k in keys] + [
            found for k, v in items for found in unsafe_values(v, f"{where}{k}.")
        ]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in unsafe_values(v, f"{where}{i}.")]
    if isinstance(value, str) and UNSAFE_CHARACTERS.search(value):
        return [where.rstrip(".")]
    return []


def load_deploy(path: Path = DEPLOY) -> Deploy:
    deploy = load_config(Deploy, path)
    unsafe = unsafe_values(deploy)
    if unsafe:
        raise ConfigError(
            f"{path}: {', '.join(unsafe)}: a control character or '$' would reach the rendered "
            "scripts' shell; write the value without them"
        )
    deploy.train.shm_gib = training_shm_gib(deploy)
    check_executor_memory(deploy)
    return deploy


def spark_size_gib(value: str, where: str) -> float:
    """Spark's memory notation (24g, 512m, 1t) in GiB."""
    text = value.strip().lower()
    units = {"g": 1.0, "m": 1 / 1024, "t": 1024.0}
    if not text or text[-1] not in units or not (text[:-1].isascii() and text[:-1].isdigit()):
        raise ConfigError(f"{where}: {value!r} is not like 16g or 512m")
    return int(text[:-1]) * units[text[-1]]


def deployed_pipeline_config(d: Deploy):
    """The pipeline config as the rendered jobs run it (their threads per task, overrides)."""
    from pipeline.config import PipelineConfig

    p = d.pipeline
    return load_config(
        PipelineConfig, ROOT / p.config, [f"download.threads={p.threads_per_task}", *p.overrides]
    )


def jvm_off_heap_gib(heap_gib: float) -> float:
    return max(0.375, 0.1 * heap_gib)  # the JVM's own beyond its heap (Spark's default)


def download_tasks_refused(where: str, tasks: int, need: float, config) -> ConfigError:
    from pipeline.task_memory import describe

    return ConfigError(
        f"{where}: {tasks} download tasks at once and the JVM need up to {need:.1f} GiB ("
        + describe(config.download, config.fetch).replace(":\n  ", ": ").replace("\n  ", "; ")
        + "): raise it, or lower download.max_pixels / download.max_bytes_in_flight"
        " (with download.bbox_col: download.max_aspect_ratio)"
    )


def check_executor_memory(d: Deploy) -> None:
    """An executor's memory overhead (outside the JVM heap: the Python workers) must hold one
    download task's most (pipeline.task_memory) per core, or a worker is killed mid-shard."""
    from pipeline.task_memory import task_memory

    p = d.pipeline
    config = deployed_pipeline_config(d)
    per_task = sum(task_memory(config.download, config.fetch).values()) / 2**30
    heap = spark_size_gib(p.executor_memory, "pipeline.executor_memory")
    need = per_task * p.executor_cores + jvm_off_heap_gib(heap)
    have = spark_size_gib(p.memory_overhead, "pipeline.memory_overhead")
    if have < need:
        where = f"pipeline.memory_overhead={p.memory_overhead} (outside the JVM heap)"
        raise download_tasks_refused(where, p.executor_cores, need, config)


def check_single_machine_memory(d: Deploy, vcpus: int, memory_gib: float) -> None:
    """A job running the stage in Spark's local mode on one machine (AWS Batch: local[N], one
    task per vCPU) must hold every task's most beside the driver's JVM (heap and its own)."""
    from pipeline.task_memory import task_memory

    config = deployed_pipeline_config(d)
    per_task = sum(task_memory(config.download, config.fetch).values()) / 2**30
    heap = spark_size_gib(config.spark.driver_memory, "spark.driver_memory")
    need = per_task * vcpus + heap + jvm_off_heap_gib(heap)
    if memory_gib < need:
        where = f"the single-machine pipeline job's {memory_gib:g} GiB ({vcpus} vCPUs)"
        raise download_tasks_refused(where, vcpus, need, config)


LOADER_KEYS = ("data", "batch_size", "phases", "model")


def training_shm_gib(d: Deploy) -> int:
    """/dev/shm per training node: ``train.shm_gib``, or the loader's batches per node (the
    memory planner: ranks per node × workers × prefetched batches of uint8 images) + 25% when
    it is 0. A set value that cannot hold them is refused: workers would die on a full
    /dev/shm hours into the run."""
    import math

    from training.config import TrainConfig
    from training.memory_plan import host_memory

    t = d.train
    # the overrides that decide the loader's batches (the others are the stage's to check)
    sizing = [o for o in t.overrides if o.split("=", 1)[0].split(".")[0] in LOADER_KEYS]
    config = load_config(TrainConfig, ROOT / "configs" / "train" / f"{t.model}.yaml", sizing)
    need = host_memory(config, t.nodes * t.gpus_per_node, t.gpus_per_node)
    shm = need["shared memory per node"] / 2**30
    if t.shm_gib == 0:
        return max(1, math.ceil(shm * 1.25))
    if t.shm_gib < shm:
        raise ConfigError(
            f"train.shm_gib={t.shm_gib}: the loader keeps {shm:.1f} GiB of batches in /dev/shm per "
            f"node ({t.gpus_per_node} ranks × data.workers × data.prefetch_batches × the local "
            "batch of uint8 images; python -m training CONFIG --plan): raise it, or set 0 to "
            "take the planner's figure"
        )
    return t.shm_gib
