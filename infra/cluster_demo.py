"""Rehearse the cloud jobs on this machine (``make cluster-demo``).

The commands are built by infra/render's own functions — the ones that write the Kubernetes,
SLURM, Batch and EMR files — from infra/local/deploy.yaml, and run here:

1. pipeline: ``spark-submit --master spark://…`` against a real standalone Spark master and
   worker started on loopback (pyspark's own launcher), the demo corpus served on loopback;
2. training: the Kubernetes training Job's ``torchrun --nnodes=1 --nproc-per-node=2
   --rdzv-backend=c10d … -m training …`` with its rendezvous on loopback (gloo on CPU);
3. evaluation: the array job, run index by index with ``JOB_COMPLETION_INDEX`` set as
   Kubernetes sets it, each index evaluating one checkpoint into its own folder.

    python infra/cluster_demo.py [--quick] [--out runs/cluster-demo]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.render import kubernetes  # noqa: E402
from infra.render.commands import spark_submit  # noqa: E402
from infra.render.deploy import Deploy, load_deploy  # noqa: E402
from pipeline.local_cluster import SPARK_SUBMIT, spark_env, standalone_cluster  # noqa: E402

QUICK = {
    "pipeline": [
        "demo.limit_per_source=40",
        "download.samples_per_shard=30",
        "download.image_size=64",
    ],
    "train": [
        "batch_size=16",
        "data.workers=0",
        "checkpoint_every_steps=4",
        "phases=[{name: pretrain, mask_ratio: 0.5, samples: 128, base_lr: 1.0e-3}, "
        "{name: unmasked_tuning, mask_ratio: 0.0, samples: 32, base_lr: 1.0e-4}]",
    ],
    "eval": ["tasks=[{name: tux, dataset: tuxpaint, task: retrieval, limit: 40}]"],
    "checkpoints": 3,  # steps 4, 8, 10
}


def local_deploy(out: str, quick: bool) -> Deploy:
    d = load_deploy(ROOT / "infra" / "local" / "deploy.yaml")
    d.storage.shards = f"{out}/shards"
    d.storage.runs = out
    if quick:
        # a corpus of its own: the smaller render must not replace the demo's cached corpus
        d.pipeline.overrides += [*QUICK["pipeline"], f"demo.cache_dir={out}/demo_corpus"]
        d.train.overrides = [
            o for o in d.train.overrides if not o.startswith(("phases=", "batch_size="))
        ] + QUICK["train"]
        d.eval.overrides += QUICK["eval"]
        d.eval.checkpoints = QUICK["checkpoints"]
    return d


RENDEZVOUS_HOST = "flip-train-0.flip-train"


def kubernetes_command(objects: list[dict], kind: str) -> tuple[list[str], dict[str, str]]:
    """The container command and its literal environment values, of the one object of
    ``kind`` in a rendered manifest."""
    (job,) = [o for o in objects if o["kind"] == kind]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return list(container["command"]), env


def run(step: str, argv: list[str], env: dict[str, str]) -> float:
    print(f"\n== {step}: {' '.join(argv[:6])} …", flush=True)
    start = time.monotonic()
    subprocess.run(argv, cwd=ROOT, env=env, check=True)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/cluster-demo")
    parser.add_argument("--quick", action="store_true", help="a few samples per step (tests)")
    args = parser.parse_args(argv)
    d = local_deploy(args.out, args.quick)
    env = spark_env()
    times = {}
    bin_dir = Path(sys.executable).parent

    with standalone_cluster(ROOT / args.out / "spark-logs", cores=2, memory="3g") as master:
        submit = spark_submit(d, master, {"spark.driver.host": "127.0.0.1"}, str(ROOT))
        submit[0] = str(SPARK_SUBMIT)
        times["pipeline"] = run("pipeline on a standalone Spark cluster", submit, env)

    train, train_env = kubernetes_command(kubernetes.train(d), "Job")
    # the rendezvous host is pod 0's name under the Job's headless service; here, loopback
    train = [a.replace(RENDEZVOUS_HOST, "127.0.0.1") for a in train]
    train[0] = str(bin_dir / "torchrun")
    times["training"] = run(
        "training with torchrun, 2 processes (gloo)", train, {**env, **train_env}
    )

    command, _ = kubernetes_command(kubernetes.evaluation(d), "Job")
    command = [sys.executable, *command[1:]]
    start = time.monotonic()
    for index in range(d.eval.checkpoints):
        run(f"evaluation array task {index}", command, {**env, "JOB_COMPLETION_INDEX": str(index)})
    times["evaluation"] = time.monotonic() - start

    print("\ncluster rehearsal done: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(
        f"shards: {d.storage.shards}  run: {args.out}/{d.train.run_name}  "
        f"evaluations: {args.out}/{d.train.run_name}/eval/NNNN"
    )
    return 0


if __name__ == "__main__":
    if shutil.which("java") is None:
        sys.exit("java is missing: Spark needs it (make setup installs it)")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
