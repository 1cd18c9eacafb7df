"""The Kubernetes training Job's launcher restarts training as a gang: two torchrun agents (two
"nodes") started with the rendered command's own options and an elastic c10d rendezvous on
loopback; one node's worker is killed with SIGKILL after the first checkpoint; both nodes start
their workers again together and the run finishes from that checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flipcommon.checkpoints import latest_checkpoint
from infra.cluster_demo import RENDEZVOUS_HOST, kubernetes_command
from infra.render import kubernetes
from infra.render.deploy import ROOT, load_deploy
from tests.conftest import micro_training_args

PHASES = [
    {"name": "pretrain", "mask_ratio": 0.5, "samples": 8 * 12, "base_lr": 1e-3},
    {"name": "unmasked_tuning", "mask_ratio": 0.0, "samples": 8 * 4, "base_lr": 1e-4},
]
TOTAL_STEPS = 16  # a global batch of 8: 4 per node


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rendered_launcher(port: int) -> tuple[list[str], dict[str, str]]:
    """The Kubernetes training Job's torchrun options and environment, for 2 nodes of 1
    process each, with the rendezvous host (pod 0 under the headless service) on loopback."""
    deploy = load_deploy(ROOT / "infra" / "local" / "deploy.yaml")
    deploy.train.nodes, deploy.train.gpus_per_node = 2, 1
    command, env = kubernetes_command(kubernetes.train(deploy), "Job")
    launcher = command[: command.index("-m")]
    assert "resume=true" in command  # what makes a restarted worker continue, not start over
    endpoint = f"{RENDEZVOUS_HOST}:{deploy.train.master_port}"
    assert f"--rdzv-endpoint={endpoint}" in launcher and "--rdzv-backend=c10d" in launcher
    launcher = [a.replace(endpoint, f"127.0.0.1:{port}") for a in launcher]
    return [str(Path(sys.executable).parent / "torchrun"), *launcher[1:]], env


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_restarts_every_node_from_the_last_checkpoint(tmp_path, shard_set):
    run_dir = tmp_path / "run"
    launcher, launcher_env = _rendered_launcher(_free_port())
    argv = [
        *launcher,
        *micro_training_args(
            run_dir,
            shard_set,
            "checkpoint_every_steps=4",
            "log_every_steps=1",
            "resume=true",
            f"phases={json.dumps(PHASES)}",
        ),
    ]
    env = {**os.environ, **launcher_env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    agents = [
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "LATEST").exists(), 300, "a checkpoint")
        killed_at = latest_checkpoint(str(run_dir))
        (worker,) = _children(agents[1].pid)
        os.kill(worker, signal.SIGKILL)
        for agent in agents:
            agent.wait(timeout=300)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    output = [log.read_text() for log in logs]
    assert [a.returncode for a in agents] == [0, 0], output[0][-3000:] + output[1][-3000:]
    assert killed_at is not None and not killed_at.endswith(f"{TOTAL_STEPS:08d}")
    assert latest_checkpoint(str(run_dir)).endswith(f"step_{TOTAL_STEPS:08d}")
    # both nodes' workers started twice (rendezvous rounds 1 and 2: a gang restart) and the
    # second time each resumed from a checkpoint
    both = "\n".join(output)
    assert both.count("resumed from") == 2, both[-4000:]
    # and nothing failed but the killed worker: the restarted group formed at the first try
    assert re.findall(r"failed \(exitcode: (-?\d+)\)", both) == ["-9"], both[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
