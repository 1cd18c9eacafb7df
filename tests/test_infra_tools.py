"""The images' Dockerfile and every rendered cloud-job file and shell script, checked by tools no
one here wrote: hadolint, shellcheck, kubernetes-validate (Kubernetes' own OpenAPI schemas,
required fields and strict: no unknown ones) and botocore's service models for the submitted jobs.
Each tool is shown to catch a slip too."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator
from packaging.specifiers import SpecifierSet

from infra.render.deploy import load_deploy
from infra.render.files import render_all

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "infra" / "generated"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
TOOLS = Path(sys.executable).parent  # installed by `make test` with the dev extras
SHELL_SCRIPTS = [
    *sorted(GENERATED.glob("slurm/*.sbatch")),
    *sorted(GENERATED.glob("*/*.sh")),
    *sorted(ROOT.glob("benchmarks/gpu/*.sh")),
    ROOT / "infra" / "install_system_packages.sh",
    ROOT / ".ci" / "run",
]
# CRDs have no schema in Kubernetes' own set; the PyTorchJob is checked against the Kubeflow
# training operator's models in test_infra.py
K8S_MANIFESTS = [
    p for p in sorted(GENERATED.glob("kubernetes/*.yaml")) if "pytorchjob" not in p.name
]


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TOOLS / name), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_hadolint_passes_the_dockerfile(tmp_path):
    result = run_tool("hadolint", "--no-color", "--failure-threshold", "info", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    slip = tmp_path / "Dockerfile"
    slip.write_text(DOCKERFILE.read_text().replace("WORKDIR /app", "RUN cd /app", 1))
    assert run_tool("hadolint", "--no-color", slip).returncode != 0  # DL3003


def test_shellcheck_passes_every_script(tmp_path):
    assert len(SHELL_SCRIPTS) >= 6 and all(p.exists() for p in SHELL_SCRIPTS)
    result = run_tool("shellcheck", "--severity=info", *SHELL_SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr
    slip = tmp_path / "submit.sh"
    slip.write_text("#!/bin/sh\nJOB=$1\naws batch describe-jobs --jobs $JOB\n")
    assert run_tool("shellcheck", slip).returncode != 0  # SC2086: unquoted


def test_kubernetes_validate_passes_every_manifest(tmp_path):
    assert len(K8S_MANIFESTS) >= 3
    result = run_tool("kubernetes-validate", "--strict", *K8S_MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = list(yaml.safe_load_all((GENERATED / "kubernetes" / "train-job.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    slips = {
        "required field missing": lambda j: j["spec"]["template"]["spec"].pop("containers"),
        "wrong type": lambda j: j["spec"].update(backoffLimit="six"),
        "unknown field": lambda j: j["spec"]["template"]["spec"]["containers"][0].update(
            comand=["typo"]
        ),
    }
    for name, slip in slips.items():
        broken = yaml.safe_load(yaml.safe_dump(job))
        slip(broken)
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(broken))
        assert run_tool("kubernetes-validate", "--strict", path).returncode != 0, name


def test_every_image_installs_the_project_on_a_python_it_supports():
    """Each image that installs the project runs a Python in ``requires-python`` (read from the
    Dockerfile's own base images and ARG defaults), and none forbids the hub for its users."""
    text = DOCKERFILE.read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    supported = SpecifierSet(project["requires-python"])
    installing = []
    for block in re.split(r"^(?=FROM )", text, flags=re.M):
        match = re.match(r"FROM (\S+) AS (\w+)", block)
        if not match or "pip install" not in block:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda v: defaults[v.group(1)], match.group(1))
        version = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", image)
        assert version, f"stage {match.group(2)} installs the project on {image}: which Python?"
        assert supported.contains(version.group(1)), (match.group(2), image, str(supported))
        installing.append(match.group(2))
    assert installing == ["pipeline", "gpu"]
    assert not re.search(r"^\s*HF_HUB_OFFLINE=", text, re.M)


def _batch_submissions(script: str) -> list[tuple[str | None, dict]]:
    """(the variable that takes the job's id, SubmitJob's parameters) per `aws batch
    submit-job` line, read from the script as written."""
    flags = {
        "--job-name": "jobName",
        "--job-queue": "jobQueue",
        "--job-definition": "jobDefinition",
    }
    submissions = []
    for line in script.splitlines():
        match = re.fullmatch(r"(?:(\w+)=\$\()?aws batch submit-job (.+?)\)?", line)
        if not match:
            continue
        words, params = iter(shlex.split(match.group(2))), {}
        for flag in words:
            value = next(words)
            if flag in flags:
                params[flags[flag]] = value
            elif flag == "--array-properties":
                params["arrayProperties"] = {"size": int(value.removeprefix("size="))}
            elif flag == "--depends-on":
                params["dependsOn"] = [{"jobId": value.removeprefix("jobId=")}]
            else:
                assert flag in ("--query", "--output"), flag
        submissions.append((match.group(1), params))
    return submissions


def test_batch_jobs_are_chained_and_match_aws_service_model():
    """Training waits for the pipeline, evaluation for training (dependsOn on the ids the
    script captured), and each submission is a valid SubmitJob for botocore's own model."""
    shape = (
        botocore.session.get_session()
        .get_service_model("batch")
        .operation_model("SubmitJob")
        .input_shape
    )
    submissions = _batch_submissions((GENERATED / "aws-batch" / "submit.sh").read_text())
    assert [p["jobName"] for _, p in submissions] == ["flip-pipeline", "flip-train", "flip-eval"]
    for (before, _), (_, params) in itertools.pairwise(submissions):
        assert params["dependsOn"] == [{"jobId": f"${before}"}]
    for _, params in submissions:
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), report.generate_report()


def test_slurm_evaluation_waits_for_training():
    lines = (GENERATED / "slurm" / "submit.sh").read_text().splitlines()
    train = next(line for line in lines if "train.sbatch" in line)
    evaluate = next(line for line in lines if "eval-array.sbatch" in line)
    assert train == "TRAIN_JOB=$(sbatch --parsable infra/generated/slurm/train.sbatch)"
    assert '--dependency="afterok:${TRAIN_JOB%%;*}"' in evaluate
    for line in (train, evaluate):
        assert (ROOT / line.split()[-1].rstrip(")")).exists()


def test_the_efa_option_renders_files_aws_and_kubernetes_accept(tmp_path):
    """``train.efa_interfaces`` (off in the shipped deploy.yaml) on, as for p5.48xlarge: the
    Batch training job gets the devices, the GPU compute environment's launch template one EFA
    interface per network card, the Kubernetes pods the EFA device plugin's resource; each
    checked by the platform's own model."""
    deploy = load_deploy()
    deploy.train.efa_interfaces = 32
    files = render_all(deploy)
    job = json.loads(files["aws-batch/train-job-definition.json"])
    container = job["nodeProperties"]["nodeRangeProperties"][0]["container"]
    assert len(container["linuxParameters"]["devices"]) == 32
    template = json.loads(files["aws-batch/gpu-launch-template.json"])
    interfaces = template["LaunchTemplateData"]["NetworkInterfaces"]
    assert len(interfaces) == 32 and all("SubnetId" not in i for i in interfaces)
    (gpu,) = [
        e
        for e in json.loads(files["aws-batch/compute-environments.json"])
        if e["computeEnvironmentName"] == "flip-gpu"
    ]
    assert (
        gpu["computeResources"]["launchTemplate"]["launchTemplateName"]
        == (template["LaunchTemplateName"])
    )
    # Batch takes security groups from the compute environment or the template, not both
    assert "securityGroupIds" not in gpu["computeResources"]
    assert all(i["Groups"] for i in interfaces)
    for params, service, operation in [
        (job, "batch", "RegisterJobDefinition"),
        (gpu, "batch", "CreateComputeEnvironment"),
        (template, "ec2", "CreateLaunchTemplate"),
    ]:
        shape = (
            botocore.session.get_session()
            .get_service_model(service)
            .operation_model(operation)
            .input_shape
        )
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), report.generate_report()
    manifest = tmp_path / "train-job.yaml"
    manifest.write_text(files["kubernetes/train-job.yaml"])
    result = run_tool("kubernetes-validate", "--strict", manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vpc.amazonaws.com/efa: '32'" in files["kubernetes/train-job.yaml"]
    plain = json.loads(render_all(load_deploy())["aws-batch/gpu-launch-template.json"])
    assert "NetworkInterfaces" not in plain["LaunchTemplateData"]


def test_the_gpu_machines_script_runs_on_the_cpu_at_toy_size(tmp_path):
    """benchmarks/gpu/run_on_device.sh is written for a GPU that is seldom lent: the whole
    script runs here at toy size (DEVICE_CHECK_TOY=1: the micro model on the CPU, one step, the
    linear probe on a random-init model's features, the same commands otherwise), so neither
    it nor the scripts it runs break unseen."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEVICE_CHECK_TOY": "1", "OUT": str(tmp_path)}
    env |= {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", "benchmarks/gpu/run_on_device.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    step_check = (tmp_path / "distributed_step_check.log").read_text()
    assert "1 ranks, cpu: all checks passed" in step_check, step_check[-2000:]
    figures = json.loads((tmp_path / "train_step_mfu.json").read_text())
    assert "mfu" in json.dumps(figures) and (tmp_path / "train_step_mfu.md").exists()
    assert all("host_syncs_per_step" in row for row in figures["rows"])  # None off a GPU
    probe = (tmp_path / "linear_probe.log").read_text()
    assert "probe only ours" in probe and "clip_benchmark" in probe, probe[-2000:]


def _deploy_file(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((ROOT / "infra" / "deploy.yaml").read_text())
    change(data)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_control_characters_and_dollars_in_deploy_values_are_refused_at_load(tmp_path):
    from flipcommon.config import ConfigError

    cases = {
        "train.run_name": lambda d: d["train"].update(run_name="x\ntouch /tmp/pwned"),
        "train.overrides.0": lambda d: d["train"].update(overrides=["x=$(touch /tmp/pwned)"]),
        "storage.shards": lambda d: d["storage"].update(shards="s3://b/${IFS}x"),
        "pipeline.overrides.0": lambda d: d["pipeline"].update(overrides=["a=\x1b[31m"]),
    }
    for where, change in cases.items():
        with pytest.raises(ConfigError, match=re.escape(where)):
            load_deploy(_deploy_file(tmp_path, change))


# Values that pass the load check but mean something to a shell
HOSTILE = ["x=`touch PWNED`", "y=a;touch PWNED", 'z=it\'s "quoted" & | > < * ~ #', "w=a b"]


# srun on one node: its own options dropped, the task run in its place
SRUN_STUB = 'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"'


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def test_rendered_scripts_pass_hostile_values_as_plain_words(tmp_path):
    """The SLURM script and the AWS Batch command, rendered with shell-hostile overrides: both
    shellcheck-clean, and run (with stub srun/scontrol/torchrun) they hand torchrun each value
    as one word and run nothing else."""
    from infra.render import aws, slurm

    deploy = load_deploy(
        _deploy_file(tmp_path, lambda d: d["train"].update(overrides=list(HOSTILE)))
    )
    script = tmp_path / "train.sbatch"
    script.write_text(slurm.train(deploy))
    result = run_tool("shellcheck", "--severity=info", script)
    assert result.returncode == 0, result.stdout
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    args_file = tmp_path / "torchrun-args"
    _stub(bin_dir, "torchrun", f'printf "%s\\0" "$@" > {shlex.quote(str(args_file))}')
    _stub(bin_dir, "scontrol", "echo node-a")
    _stub(bin_dir, "srun", SRUN_STUB)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_JOB_NODELIST": "node-a",
        "SLURM_SUBMIT_DIR": str(work),
        "SLURM_NODEID": "3",
    }
    run = subprocess.run(["bash", str(script)], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    args = args_file.read_text().split("\0")[:-1]
    assert "--node-rank=3" in args and "--master-addr=node-a" in args
    assert args[-len(HOSTILE) :] == HOSTILE
    assert not list(work.iterdir()) and not (tmp_path / "PWNED").exists()

    # AWS Batch: `sh -c "exec …"` with the node index from the environment
    args_file.unlink()
    command = aws.batch_train(deploy)["nodeProperties"]["nodeRangeProperties"][0]["container"][
        "command"
    ]
    env = {"PATH": env["PATH"], "AWS_BATCH_JOB_NODE_INDEX": "5"}
    run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    args = args_file.read_text().split("\0")[:-1]
    assert "--node-rank=5" in args and "--master-addr=localhost" in args
    assert args[-len(HOSTILE) :] == HOSTILE
    assert not list(work.iterdir())


def test_sbatch_lines_take_plain_values_only(tmp_path):
    from flipcommon.config import ConfigError
    from infra.render import slurm

    deploy = load_deploy(_deploy_file(tmp_path, lambda d: d["train"].update(run_name="a b")))
    with pytest.raises(ConfigError, match="train.run_name"):
        slurm.train(deploy)


@pytest.mark.parametrize("ending", ["time limit", "preempted", "finished", "failed"])
def test_the_slurm_job_requeues_itself_when_stopped_and_fails_when_training_fails(tmp_path, ending):
    """The rendered train.sbatch run with stub srun/scontrol/scancel and a torchrun that
    stands in for the ranks (SIGTERM: exit 1, as torchrun does after its workers checkpoint).
    Near the time limit (USR1 to the script) every step gets SIGTERM through scancel and the
    job requeues itself; preempted or cancelled (SIGTERM to the script and the steps) it
    leaves the requeue to Slurm; training that ends exits with its status, so the
    evaluation's afterok follows only a finished run."""
    import signal
    import time

    from infra.render import slurm

    deploy = load_deploy(ROOT / "infra" / "deploy.yaml")
    script = tmp_path / "train.sbatch"
    script.write_text(slurm.train(deploy))
    bin_dir, log, pid_file = tmp_path / "bin", tmp_path / "log", tmp_path / "torchrun.pid"
    bin_dir.mkdir()
    _stub(bin_dir, "srun", SRUN_STUB)
    _stub(bin_dir, "scontrol", f'[ "$1" = show ] && echo node-a || echo "scontrol $*" >> {log}')
    _stub(bin_dir, "scancel", f'echo "scancel $*" >> {log}; kill -TERM "$(cat {pid_file})"')
    exit_code = {"finished": 0, "failed": 3}.get(ending)
    body = f"trap 'echo torchrun stopped >> {log}; exit 1' TERM\necho $$ > {pid_file}.tmp\n"
    body += f"mv {pid_file}.tmp {pid_file}\n"
    body += f"exit {exit_code}" if exit_code is not None else "sleep 60 & wait $!"
    _stub(bin_dir, "torchrun", body)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node-a",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_NODEID": "0",
    }
    job = subprocess.Popen(
        ["bash", str(script)],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if ending == "time limit":
        job.send_signal(signal.SIGUSR1)
    elif ending == "preempted":  # Slurm signals the batch shell and every step itself
        job.send_signal(signal.SIGTERM)
        subprocess.run(["kill", "-TERM", pid_file.read_text().strip()], check=True)
    output = job.communicate(timeout=60)[0]
    calls = log.read_text().splitlines() if log.exists() else []
    if ending == "time limit":
        assert job.returncode == 0, output
        assert calls == ["scancel --signal=TERM 4242", "torchrun stopped", "scontrol requeue 4242"]
        assert "training stopped (time limit; step exit 1)" in output
    elif ending == "preempted":  # Slurm requeues a preempted job itself; a cancelled one ends
        assert job.returncode == 1 and calls == ["torchrun stopped"], (output, calls)
    else:
        assert job.returncode == exit_code and calls == [], (output, calls)


def test_a_slurm_time_limit_too_short_to_checkpoint_and_train_is_refused(tmp_path):
    from flipcommon.config import ConfigError
    from infra.render import slurm

    assert slurm.time_limit_s("72:00:00") == 72 * 3600
    assert slurm.time_limit_s("2-12:30") == (2 * 24 + 12) * 3600 + 30 * 60
    assert slurm.time_limit_s("90") == 5400 and slurm.time_limit_s("10:30") == 630
    assert slurm.time_limit_s("UNLIMITED") is None
    deploy = load_deploy(_deploy_file(tmp_path, lambda d: d["slurm"].update(time="0:20:00")))
    with pytest.raises(ConfigError, match="slurm.time=0:20:00"):
        slurm.train(deploy)


def test_the_s3_lifecycle_rule_is_valid_and_an_s3_endpoint_applies_it(s3_endpoint):
    """The rendered rule that aborts incomplete multipart uploads: valid input for
    PutBucketLifecycleConfiguration (botocore's own model), and taken by a real S3 endpoint."""
    from dataclasses import replace

    import boto3

    from flipcommon.config import ConfigError

    deploy = load_deploy()
    files = render_all(deploy)
    (name,) = [n for n in files if n.startswith("aws-s3/")]
    params = json.loads(files[name])
    shape = (
        botocore.session.get_session()
        .get_service_model("s3")
        .operation_model("PutBucketLifecycleConfiguration")
        .input_shape
    )
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()
    rules = params["LifecycleConfiguration"]["Rules"]
    assert {r["Filter"]["Prefix"] for r in rules} == {"laion400m-256/", "runs/"}
    client = boto3.client("s3")  # the endpoint from the fixture's environment
    client.create_bucket(Bucket=params["Bucket"])
    client.put_bucket_lifecycle_configuration(**params)
    applied = client.get_bucket_lifecycle_configuration(Bucket=params["Bucket"])["Rules"]
    assert [r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] for r in applied] == [2, 2]
    # the bucket names a rendered file: anything but a bucket name is refused
    for url in ("s3://../x", "s3://My_Bucket/x", "s3:///x"):
        with pytest.raises(ConfigError, match="bucket"):
            render_all(replace(deploy, storage=replace(deploy.storage, runs=url)))
