"""Run every arm for every seed, evaluate each at its checkpoints, then write the results.

Seeds are the outer loop, so drifts in machine speed over the hour spread across all arms
alike. Each arm trains in its own process (the same `python -m training` a user runs, or
`train_launcher`), then its checkpoints are evaluated here. An arm whose points.json exists is
done; a rerun of the experiment skips it, and an arm a crash cut short resumes from its last
checkpoint.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from evaluation.config import EvalConfig
from evaluation.report import write_results
from evaluation.stage import evaluate_checkpoint
from experiment.arms import (
    ExperimentConfigError,
    FlopsPerSample,
    arm_dir,
    arm_train_config,
    compute_budget,
    phase_gflops,
    validate,
)
from experiment.config import ArmConfig, ExperimentConfig
from flipcommon.checkpoints import STATE_FILE, list_checkpoints
from flipcommon.config import load_config
from flipcommon.storage import read_json, write_json_atomic
from training.config import TrainConfig
from training.distributed import resolve_device

POINTS_FILE = "points.json"


class ArmFailed(RuntimeError):
    pass


def run_arms(config: ExperimentConfig, flops: FlopsPerSample | None = None) -> list[dict]:
    """Train and evaluate every (seed, arm); return one record per run with its points.
    ``flops`` (counted training FLOPs per sample by mask ratio and image size) sizes the arms'
    phases under a compute budget."""
    validate(config)
    if "://" in config.output_dir:
        raise ExperimentConfigError("output_dir is the experiment's local work folder (no URL)")
    base = load_config(TrainConfig, config.train_config, config.train_overrides)
    suite = load_config(EvalConfig, config.eval_config)
    if not suite.tasks:
        raise ExperimentConfigError(f"{config.eval_config} lists no tasks")
    runs = []
    total = len(config.seeds) * len(config.arms)
    for seed in config.seeds:
        for arm in config.arms:
            print(f"== [{len(runs) + 1}/{total}] arm {arm.name}, seed {seed}", flush=True)
            runs.append(run_arm(config, base, suite, arm, seed, flops))
    return runs


def run_arm(
    config: ExperimentConfig,
    base: TrainConfig,
    suite: EvalConfig,
    arm: ArmConfig,
    seed: int,
    flops: FlopsPerSample | None = None,
) -> dict:
    folder = Path(arm_dir(config, arm, seed))
    done = folder / POINTS_FILE
    if done.exists():
        record = read_json(str(done))
        check_same_setup(record, config, arm, seed, base)
        print(f"   done before: {done}", flush=True)
        return record
    train_config = arm_train_config(base, config, arm, seed, flops)
    train(config, train_config, folder)
    checkpoints = list_checkpoints(train_config.run_dir)
    points = evaluate(suite, checkpoints, str(folder / "eval"))
    if compute_budget(config) and flops is not None:
        for point in points:
            point["gflops"] = phase_gflops(train_config.phases, flops, point["samples_seen"])
    record = {
        "arm": arm.name,
        "seed": seed,
        "mask_ratio": arm.mask_ratio,
        "batch_size": train_config.batch_size,
        "unmasked_tuning": arm.unmasked_tuning,
        "views": arm.views,
        "image_size": arm.image_size,
        "budget_s": config.budget_s,
        "budget_gflops": config.budget_gflops,
        "crop_scale_min": train_config.data.crop_scale_min,
        "points": points,
    }
    write_json_atomic(str(done), record)  # last: marks the arm done
    if config.keep_checkpoints == "final":
        prune_checkpoints(checkpoints)
    final = points[-1]
    print(
        f"   {final['samples_seen']} samples in {final['train_seconds']:.1f} s of training; "
        f"{config.headline} {100 * final['metrics'].get(config.headline, float('nan')):.2f}",
        flush=True,
    )
    return record


def check_same_setup(
    record: dict, config: ExperimentConfig, arm: ArmConfig, seed: int, base: TrainConfig
) -> None:
    """A finished arm is reused only if it ran the arm as configured now."""
    expected = {
        "mask_ratio": arm.mask_ratio,
        "batch_size": config.base_batch * arm.batch_scale,
        "unmasked_tuning": arm.unmasked_tuning,
        "views": arm.views,
        "image_size": arm.image_size,
        "budget_s": config.budget_s,
        "budget_gflops": config.budget_gflops,
        "crop_scale_min": base.data.crop_scale_min,
        "seed": seed,
    }
    # records written before these settings existed ran with their defaults (the crop's was
    # 0.5 until 2026-12-06)
    was = {"views": 1, "image_size": 0, "budget_gflops": 0.0, "crop_scale_min": 0.5} | record
    differing = {k: (was.get(k), v) for k, v in expected.items() if was.get(k) != v}
    if differing:
        raise ExperimentConfigError(
            f"{arm_dir(config, arm, seed)} holds a run of another setup (was, now: {differing}): "
            "give the experiment another output_dir, or delete that folder"
        )


def train(config: ExperimentConfig, train_config: TrainConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "train_config.yaml"
    config_path.write_text(yaml.safe_dump(asdict(train_config), sort_keys=False))
    launcher = config.train_launcher or [sys.executable, "-m", "training"]
    log_path = folder / "train.log"
    with log_path.open("ab") as log:
        result = subprocess.run([*launcher, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise ArmFailed(
            f"training {folder} exited with status {result.returncode}; last lines of "
            f"{log_path}:\n" + "\n".join(tail)
        )


def evaluate(suite: EvalConfig, checkpoints: list[str], output_dir: str) -> list[dict]:
    """The suite on each checkpoint, oldest first: one point per checkpoint."""
    if not checkpoints:
        raise ArmFailed(f"training left no checkpoint for {output_dir}")
    device = resolve_device(suite.device)
    records = []
    points = []
    for ckpt_dir in checkpoints:
        results = evaluate_checkpoint(ckpt_dir, suite, device)
        records += results
        model = results[0]["model"]
        points.append(
            {
                "checkpoint": ckpt_dir,
                "step": model["step"],
                "phase": model["phase"],
                "samples_seen": model["samples_seen"],
                "train_seconds": model["train_seconds"],
                "metrics": {
                    f"{r['task_name']}:{name}": value
                    for r in results
                    for name, value in r["metrics"].items()
                },
                "chance": {
                    f"{r['task_name']}:{name}": value
                    for r in results
                    for name, value in r["chance"].items()
                },
            }
        )
    write_results(output_dir, records)
    return points


def prune_checkpoints(checkpoints: list[str]) -> None:
    """Keep the final weights only: the evaluations are done, and 15 runs' optimizer states
    would fill a small disk."""
    for ckpt_dir in checkpoints[:-1]:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    Path(checkpoints[-1], STATE_FILE).unlink(missing_ok=True)
