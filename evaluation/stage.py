"""The evaluation stage: one or more checkpoints, a suite of tasks, results and reports."""

from __future__ import annotations

import logging
import os

from evaluation.clip_benchmark_results import FOLDER as CLIP_BENCHMARK_FOLDER
from evaluation.clip_benchmark_results import write_clip_benchmark_results
from evaluation.config import EvalConfig
from evaluation.models import resolve_checkpoints
from evaluation.report import format_table, write_results
from evaluation.tasks import run_task
from flipcommon.checkpoints import load_model
from flipcommon.errors import UserError
from flipcommon.storage import url_join
from training.distributed import resolve_device

log = logging.getLogger(__name__)


def evaluate_checkpoint(ckpt_dir: str, config: EvalConfig, device) -> list[dict]:
    """Run the suite on one checkpoint; one record per task, each naming the model."""
    model, preprocess, tokenizer, ckpt_config = load_model(ckpt_dir)
    model.to(device)
    info = ckpt_config.get("flip", {})
    model_info = {
        "checkpoint": ckpt_dir,
        "samples_seen": info.get("samples_seen"),
        "step": info.get("step"),
        "train_seconds": info.get("train_seconds"),
        "phase": info.get("phase"),
        "model_name": info.get("model_name"),
    }
    records = []
    feature_cache: dict = {}
    for index, task in enumerate(config.tasks, 1):
        record = run_task(
            task,
            model,
            preprocess,
            tokenizer,
            device,
            config.batch_size,
            config.demo_corpus_dir,
            feature_cache,
            config.workers,
        )
        headline = ", ".join(f"{k} {100 * v:.2f}" for k, v in list(record["metrics"].items())[:2])
        print(f"[{index}/{len(config.tasks)}] {task.name}: {headline}", flush=True)
        records.append({"model": model_info, **record})
    return records


def pick_array_member(checkpoints: list[str], config: EvalConfig) -> tuple[list[str], str]:
    """This array task's checkpoint, and its own output folder (tasks never share files)."""
    raw = os.environ.get(config.array_index_env)
    if raw is None or not raw.strip().isdigit():
        raise UserError(
            f"array_index_env={config.array_index_env}: that environment variable is "
            f"{'unset' if raw is None else repr(raw)}; the batch system sets it per array task"
        )
    index = int(raw)
    if index >= len(checkpoints):
        raise UserError(
            f"array index {index} but only {len(checkpoints)} checkpoint(s): size the array to "
            "the checkpoint list"
        )
    return [checkpoints[index]], url_join(config.output_dir, f"{index:04d}")


def run(config: EvalConfig) -> list[dict]:
    if not config.tasks:
        raise UserError("the suite lists no tasks")
    checkpoints = resolve_checkpoints(config)
    if config.array_index_env:
        checkpoints, config.output_dir = pick_array_member(checkpoints, config)
    device = resolve_device(config.device)
    records: list[dict] = []
    for number, ckpt_dir in enumerate(checkpoints, 1):
        if len(checkpoints) > 1:
            print(f"== checkpoint {number}/{len(checkpoints)}: {ckpt_dir}", flush=True)
        records += evaluate_checkpoint(ckpt_dir, config, device)
    written = write_results(config.output_dir, records)
    write_clip_benchmark_results(config.output_dir, records)
    written.append(url_join(config.output_dir, CLIP_BENCHMARK_FOLDER) + "/")
    print()
    print(format_table([r for r in records if r["model"]["checkpoint"] == checkpoints[-1]]))
    print(f"\nwrote {', '.join(written)}")
    return records
