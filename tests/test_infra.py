"""The cloud-job files cannot drift: they equal a fresh render of infra/deploy.yaml, parse, match
their schemas (Kubernetes API models, the Kubeflow training operator's models, AWS's own service
models), and every command in them is a valid invocation of a stage CLI with a config that exists.

What this does not exercise: no image is built (no docker engine here) and nothing is submitted
to a cluster; see docs/deployment.md.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from pathlib import Path

import botocore.session
import kubeflow.training.models as kubeflow
import kubernetes.client as k8s
import pytest
import yaml
from botocore.validate import ParamValidator
from google.cloud import dataproc_v1
from google.protobuf.json_format import ParseError

from evaluation.config import EvalConfig
from flipcommon.config import load_config
from infra.render.deploy import load_deploy
from infra.render.files import render_all
from pipeline.config import PipelineConfig
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "infra" / "generated"
STAGES = {"pipeline": PipelineConfig, "training": TrainConfig, "evaluation": EvalConfig}
KINDS = {
    "Job": "V1Job",
    "Service": "V1Service",
    "PyTorchJob": "KubeflowOrgV1PyTorchJob",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "ConfigMap": "V1ConfigMap",
}


def test_committed_files_equal_a_fresh_render():
    files = render_all(load_deploy())
    on_disk = {str(p.relative_to(GENERATED)) for p in GENERATED.rglob("*") if p.is_file()}
    assert on_disk == set(files), "run `make manifests`"
    for rel, text in files.items():
        assert (GENERATED / rel).read_text() == text, f"{rel} is stale: run `make manifests`"


# --- schemas ---------------------------------------------------------------------------------


def _check_k8s(value, type_name: str, where: str) -> None:
    """Walk a manifest against the Kubernetes client's API models: every key must be a field of
    its object, every value of the field's type."""
    if type_name.startswith("list["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            _check_k8s(item, type_name[5:-1], f"{where}[{i}]")
    elif type_name.startswith("dict("):
        assert isinstance(value, dict), f"{where}: expected a mapping"
        inner = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            _check_k8s(item, inner, f"{where}.{key}")
    elif type_name == "str":
        assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
    elif type_name == "int":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: expected int"
    elif type_name == "bool":
        assert isinstance(value, bool), f"{where}: expected a bool"
    elif type_name == "object":
        assert isinstance(value, (str, int)), f"{where}: expected int or string"
    else:
        model = getattr(k8s, type_name, None) or getattr(kubeflow, type_name)
        assert isinstance(value, dict), f"{where}: expected a {type_name} mapping"
        fields = {json_key: name for name, json_key in model.attribute_map.items()}
        unknown = sorted(set(value) - set(fields))
        assert not unknown, f"{where}: {type_name} has no field(s) {unknown}"
        for key, item in value.items():
            _check_k8s(item, model.openapi_types[fields[key]], f"{where}.{key}")


def _k8s_objects() -> list[tuple[str, dict]]:
    objects = []
    for path in sorted((GENERATED / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            objects.append((path.name, doc))
    return objects


def test_kubernetes_manifests_match_the_api_models():
    objects = _k8s_objects()
    assert {doc["kind"] for _, doc in objects} == set(KINDS)
    for name, doc in objects:
        _check_k8s(doc, KINDS[doc["kind"]], f"{name}:{doc['kind']}")
        for container in _containers(doc):
            assert container["image"] and container["name"]


def test_spark_executors_get_the_driver_identity_and_dns_settings():
    """Executor pods are Spark's: their identity (the annotated service account, which reaches
    the bucket) and DNS settings come from spark conf and a pod template the driver reads."""
    objects = {doc["kind"]: doc for name, doc in _k8s_objects() if name == "pipeline-job.yaml"}
    account = objects["ServiceAccount"]
    assert account["metadata"]["annotations"], "the Spark service account has no cloud identity"
    template = yaml.safe_load(objects["ConfigMap"]["data"]["executor.yaml"])
    _check_k8s(template, "V1Pod", "executor template")
    assert template["spec"]["dnsConfig"] == {"options": [{"name": "ndots", "value": "2"}]}
    pod = objects["Job"]["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    conf = {c.split("=", 1)[0]: c.split("=", 1)[1] for c in command if c.startswith("spark.")}
    executor_account = conf["spark.kubernetes.authenticate.executor.serviceAccountName"]
    assert executor_account == account["metadata"]["name"]
    mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
    assert conf["spark.kubernetes.executor.podTemplateFile"] == f"{mount}/executor.yaml"
    assert pod["dnsConfig"] == template["spec"]["dnsConfig"]
    assert command[command.index("--driver-memory") + 1] == "16g"


def _aws_shape(service: str, operation: str):
    model = botocore.session.get_session().get_service_model(service)
    return model.operation_model(operation).input_shape


JOB_DEFINITIONS = sorted((GENERATED / "aws-batch").glob("*-job-definition.json"))


@pytest.mark.parametrize("path", JOB_DEFINITIONS, ids=str)
def test_batch_job_definitions_match_aws_service_model(path):
    report = ParamValidator().validate(
        json.loads(path.read_text()), _aws_shape("batch", "RegisterJobDefinition")
    )
    assert not report.has_errors(), report.generate_report()


def _batch_resources() -> tuple[list[dict], list[dict]]:
    batch = GENERATED / "aws-batch"
    return (
        json.loads((batch / "compute-environments.json").read_text()),
        json.loads((batch / "job-queues.json").read_text()),
    )


def test_batch_compute_environments_and_queues_match_aws_service_model():
    environments, queues = _batch_resources()
    for environment in environments:
        shape = _aws_shape("batch", "CreateComputeEnvironment")
        report = ParamValidator().validate(environment, shape)
        assert not report.has_errors(), report.generate_report()
    for queue in queues:
        report = ParamValidator().validate(queue, _aws_shape("batch", "CreateJobQueue"))
        assert not report.has_errors(), report.generate_report()
    # every queue the submit script names exists, and feeds from an environment that exists
    names = {e["computeEnvironmentName"] for e in environments}
    assert {o["computeEnvironment"] for q in queues for o in q["computeEnvironmentOrder"]} <= names
    submitted = re.findall(
        r"--job-queue (\S+)", (GENERATED / "aws-batch" / "submit.sh").read_text()
    )
    assert submitted and set(submitted) <= {q["jobQueueName"] for q in queues}


def test_batch_environments_fit_the_jobs():
    deploy = yaml.safe_load((ROOT / "infra" / "deploy.yaml").read_text())
    environments = {e["computeEnvironmentName"]: e for e in _batch_resources()[0]}
    gpu = environments["flip-gpu"]["computeResources"]
    train = json.loads((GENERATED / "aws-batch" / "train-job-definition.json").read_text())
    node = train["nodeProperties"]["nodeRangeProperties"][0]["container"]
    vcpus = int(next(r["value"] for r in node["resourceRequirements"] if r["type"] == "VCPU"))
    assert vcpus <= deploy["aws"]["gpu_instance_vcpus"]
    assert gpu["maxvCpus"] >= deploy["aws"]["gpu_instance_vcpus"] * deploy["train"]["nodes"]
    pipeline = json.loads((GENERATED / "aws-batch" / "pipeline-job-definition.json").read_text())
    requirements = pipeline["containerProperties"]["resourceRequirements"]
    vcpus = int(next(r["value"] for r in requirements if r["type"] == "VCPU"))
    assert vcpus <= deploy["aws"]["cpu_instance_vcpus"]


def test_emr_steps_match_aws_service_model():
    steps = json.loads((GENERATED / "emr" / "pipeline-steps.json").read_text())
    params = {"JobFlowId": "j-TEST", "Steps": steps}
    report = ParamValidator().validate(params, _aws_shape("emr", "AddJobFlowSteps"))
    assert not report.has_errors(), report.generate_report()


def _dataproc_workflow() -> dict:
    return yaml.safe_load((GENERATED / "dataproc" / "pipeline-workflow.yaml").read_text())


def test_dataproc_workflow_matches_the_dataproc_client_types():
    """The workflow template parses as the Dataproc client's own WorkflowTemplate message
    (an unknown field or a wrong type is an error), holds what the API requires, and the
    submit script instantiates this very file."""
    text = json.dumps(_dataproc_workflow())
    template = dataproc_v1.WorkflowTemplate.from_json(text, ignore_unknown_fields=False)
    (job,) = template.jobs
    assert job.step_id and job.pyspark_job.main_python_file_uri  # required by the API
    assert template.placement.cluster_selector.cluster_labels["goog-dataproc-cluster-name"]
    assert int(job.pyspark_job.properties["spark.executor.instances"]) > 0
    slip = text.replace("mainPythonFileUri", "mainPythonFile")
    with pytest.raises(ParseError, match='no field named "mainPythonFile"'):
        dataproc_v1.WorkflowTemplate.from_json(slip, ignore_unknown_fields=False)
    script = (GENERATED / "dataproc" / "submit-pipeline.sh").read_text()
    (line,) = [line for line in script.splitlines() if line.startswith("gcloud ")]
    argv = shlex.split(line)
    assert argv[:4] == ["gcloud", "dataproc", "workflow-templates", "instantiate-from-file"]
    (file_flag,) = [a for a in argv if a.startswith("--file=")]
    assert (
        ROOT / file_flag.removeprefix("--file=")
        == GENERATED / "dataproc" / "pipeline-workflow.yaml"
    )


# --- commands --------------------------------------------------------------------------------


def _containers(doc: dict) -> list[dict]:
    templates = [doc.get("spec", {}).get("template", {})] + [
        replica["template"]
        for replica in doc.get("spec", {}).get("pytorchReplicaSpecs", {}).values()
    ]
    return [c for t in templates for c in t.get("spec", {}).get("containers", [])]


def _commands() -> list[tuple[str, list[str]]]:
    """Every command line in the generated files, as argv lists."""
    found = []
    for name, doc in _k8s_objects():
        found += [(name, c["command"]) for c in _containers(doc)]
    for path in JOB_DEFINITIONS:
        definition = json.loads(path.read_text())
        containers = [definition.get("containerProperties")] + [
            r["container"]
            for r in definition.get("nodeProperties", {}).get("nodeRangeProperties", [])
        ]
        for container in filter(None, containers):
            command = container["command"]
            if command[:2] == ["sh", "-c"]:
                command = shlex.split(command[2].removeprefix("exec "))
            found.append((path.name, command))
    for step in json.loads((GENERATED / "emr" / "pipeline-steps.json").read_text()):
        found.append(("emr", step["HadoopJarStep"]["Args"]))
    for job in _dataproc_workflow()["jobs"]:
        found.append(
            ("dataproc", [job["pysparkJob"]["mainPythonFileUri"], *job["pysparkJob"]["args"]])
        )
    for path in sorted((GENERATED / "slurm").glob("*.sbatch")):
        for line in path.read_text().splitlines():
            if line.startswith("srun "):  # srun [options] bash -c '<command>' &
                words = shlex.split(line)
                found.append((path.name, shlex.split(words[words.index("-c") + 1])))
            elif line.startswith("python "):
                found.append((path.name, shlex.split(line)))
    return found


def _stage_invocation(argv: list[str]) -> tuple[str, list[str]]:
    """(stage, its arguments) from a launcher command line."""
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in STAGES:
            return argv[i + 1], argv[i + 2 :]
        if arg.endswith("pipeline/__main__.py"):
            rest = argv[i + 1 :]  # gcloud puts its own flags first, the job's after "--"
            return "pipeline", rest[rest.index("--") + 1 :] if "--" in rest else rest
    raise AssertionError(f"no stage invocation in {argv}")


def test_every_command_is_a_valid_stage_invocation():
    commands = _commands()
    stages = set()
    for where, argv in commands:
        stage, args = _stage_invocation(argv)
        stages.add(stage)
        config, overrides = args[0], args[1:]
        if argv[0] in ("spark-submit", "file:///app/pipeline/__main__.py"):
            # launchers that do not run in the project's folder name the config by its path
            # in the image
            assert config.startswith("/app/"), f"{where}: {config} is relative"
        config = config.removeprefix("/app/")
        assert (ROOT / config).is_file(), f"{where}: {config} does not exist"
        assert all(re.match(r"^[A-Za-z_][\w.]*=", o) for o in overrides), f"{where}: {overrides}"
        assert not any("$" in o for o in overrides), f"{where}: unexpanded variable in {overrides}"
        load_config(STAGES[stage], ROOT / config, overrides)  # raises on an unknown key or type
    assert stages == set(STAGES)
    assert len(commands) == 12


def test_launchers_agree_with_deploy_yaml():
    deploy = yaml.safe_load((ROOT / "infra" / "deploy.yaml").read_text())
    nodes, gpus = deploy["train"]["nodes"], deploy["train"]["gpus_per_node"]
    for where, argv in _commands():
        if argv[0] == "torchrun":
            assert f"--nnodes={nodes}" in argv and f"--nproc-per-node={gpus}" in argv, where
        conf = {}
        if argv[0] == "spark-submit":
            conf = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--conf")
        if where == "dataproc":
            conf = _dataproc_workflow()["jobs"][0]["pysparkJob"]["properties"]
        if conf:
            assert conf["spark.executor.instances"] == str(deploy["pipeline"]["executors"])
            assert conf["spark.dynamicAllocation.enabled"] == "false"


def test_dockerfile_targets_copy_what_exists_and_run_a_stage():
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    targets = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert targets == ["project", "pipeline", "gpu"]
    copied = re.findall(r"^COPY ((?:[^-\s]\S* )+)\S+$", text, re.M)
    for sources in copied:
        for source in sources.split():
            assert (ROOT / source).exists(), source
    assert len(copied) == 6 and text.count("COPY --from=project /app /app") == 2
    for cmd in re.findall(r"^CMD (\[.*\])$", text, re.M):
        argv = json.loads(cmd)
        stage, args = _stage_invocation(argv)
        load_config(STAGES[stage], ROOT / args[0], args[1:])
    assert "AWS_SECRET" not in text and "AWS_ACCESS" not in text  # no credentials baked in


def test_the_schema_checks_catch_mistakes():
    """The validators above are not vacuous: typical slips fail them."""
    _, job = next((n, d) for n, d in _k8s_objects() if d["kind"] == "Job")
    broken = json.loads(json.dumps(job))
    broken["spec"]["template"]["spec"]["containers"][0]["comand"] = ["typo"]
    with pytest.raises(AssertionError, match="no field"):
        _check_k8s(broken, "V1Job", "job")
    broken = json.loads(json.dumps(job))
    broken["spec"]["completions"] = "8"
    with pytest.raises(AssertionError, match="expected int"):
        _check_k8s(broken, "V1Job", "job")
    _, pytorchjob = next((n, d) for n, d in _k8s_objects() if d["kind"] == "PyTorchJob")
    pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["replica"] = 1
    with pytest.raises(AssertionError, match="no field"):
        _check_k8s(pytorchjob, KINDS["PyTorchJob"], "pytorchjob")
    definition = json.loads((GENERATED / "aws-batch" / "eval-job-definition.json").read_text())
    definition["containerProperties"]["command"] = "python -m evaluation"
    shape = _aws_shape("batch", "RegisterJobDefinition")
    assert ParamValidator().validate(definition, shape).has_errors()
    environment = _batch_resources()[0][0]
    environment["computeResources"]["maxvCpus"] = "256"
    shape = _aws_shape("batch", "CreateComputeEnvironment")
    assert ParamValidator().validate(environment, shape).has_errors()
    with pytest.raises(Exception, match="unknown key"):
        load_config(EvalConfig, ROOT / "configs/eval/paper.yaml", ["checkpont=x"])


def test_a_misspelt_deploy_key_is_an_error_that_names_it(tmp_path):
    import subprocess
    import sys

    text = (ROOT / "infra" / "deploy.yaml").read_text()
    assert "  gpus_per_node: 8" in text
    typo = tmp_path / "deploy.yaml"
    typo.write_text(text.replace("  gpus_per_node: 8", "  gpus_per_nod: 8"))
    result = subprocess.run(
        [sys.executable, "-m", "infra.render", "--check", "--deploy", str(typo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "train: unknown key(s) ['gpus_per_nod']" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_launcher_gives_a_stopped_run_time_to_checkpoint_and_fails_fast():
    """SIGTERM → checkpoint → exit: torchrun waits train.stop_grace_s for its workers before it
    kills them, a Kubernetes pod 30 s more, Slurm signals the script 120 s more before the
    time limit; one failed rank ends a Slurm step at once."""
    deploy = yaml.safe_load((ROOT / "infra" / "deploy.yaml").read_text())
    grace = deploy["train"]["stop_grace_s"]
    torchruns = [argv for _, argv in _commands() if argv[0] == "torchrun"]
    assert torchruns and all(f"--shutdown-timeout={grace}" in argv for argv in torchruns)
    for name in ("train-job.yaml", "train-pytorchjob.yaml"):
        text = (GENERATED / "kubernetes" / name).read_text()
        assert re.findall(r"terminationGracePeriodSeconds: (\d+)", text), name
        assert set(re.findall(r"terminationGracePeriodSeconds: (\d+)", text)) == {str(grace + 30)}
    sbatch = (GENERATED / "slurm" / "train.sbatch").read_text()
    assert f"#SBATCH --signal=B:USR1@{grace + 120}" in sbatch
    assert "srun --kill-on-bad-exit=1 " in sbatch
    # AWS Batch: the GPU instances' ECS agent waits as long as a pod before SIGKILL
    template = json.loads((GENERATED / "aws-batch" / "gpu-launch-template.json").read_text())
    report = ParamValidator().validate(template, _aws_shape("ec2", "CreateLaunchTemplate"))
    assert not report.has_errors(), report.generate_report()
    user_data = base64.b64decode(template["LaunchTemplateData"]["UserData"]).decode()
    assert f"ECS_CONTAINER_STOP_TIMEOUT={grace + 30}s" in user_data
    assert user_data.startswith("MIME-Version: 1.0")  # Batch takes multi-part user data only
    environments = json.loads((GENERATED / "aws-batch" / "compute-environments.json").read_text())
    (gpu,) = [e for e in environments if e["computeEnvironmentName"] == "flip-gpu"]
    launch = gpu["computeResources"]["launchTemplate"]["launchTemplateName"]
    assert launch == template["LaunchTemplateName"]


def test_training_shared_memory_comes_from_the_memory_planner(tmp_path):
    """train.shm_gib 0: the loader's batches per node (ranks × workers × prefetched batches of
    uint8 images) + 25%; a set value too small to hold them is refused at render."""
    import math

    from flipcommon.config import ConfigError, load_config
    from infra.render.deploy import load_deploy
    from training.config import TrainConfig
    from training.memory_plan import host_memory

    deploy = load_deploy()
    t = deploy.train
    config = load_config(TrainConfig, ROOT / "configs" / "train" / f"{t.model}.yaml", [])
    need = host_memory(config, t.nodes * t.gpus_per_node, t.gpus_per_node)
    assert t.shm_gib == math.ceil(need["shared memory per node"] / 2**30 * 1.25)
    assert f"sizeLimit: {t.shm_gib}Gi" in (GENERATED / "kubernetes" / "train-job.yaml").read_text()
    data = yaml.safe_load((ROOT / "infra" / "deploy.yaml").read_text())
    data["train"]["shm_gib"] = 2
    small = tmp_path / "deploy.yaml"
    small.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="train.shm_gib=2"):
        load_deploy(small)
