"""The evaluation stage: one checkpoint, a suite of tasks, results and a report."""

from __future__ import annotations

import logging

from evaluation.config import EvalConfig
from evaluation.models import load_checkpoint, resolve_checkpoint
from evaluation.report import format_table, write_results
from evaluation.tasks import run_task
from training.distributed import resolve_device

log = logging.getLogger(__name__)


def run(config: EvalConfig) -> list[dict]:
    if not config.tasks:
        raise ValueError("the suite lists no tasks")
    ckpt_dir = resolve_checkpoint(config.checkpoint, config.train_run_dir)
    device = resolve_device(config.device)
    model, preprocess, tokenizer, ckpt_config = load_checkpoint(ckpt_dir)
    model.to(device)
    records = []
    for index, task in enumerate(config.tasks, 1):
        record = run_task(
            task, model, preprocess, tokenizer, device, config.batch_size, config.demo_corpus_dir
        )
        headline = ", ".join(f"{k} {100 * v:.2f}" for k, v in list(record["metrics"].items())[:2])
        print(f"[{index}/{len(config.tasks)}] {task.name}: {headline}", flush=True)
        records.append(record)
    info = ckpt_config.get("flip", {})
    model_info = {
        "checkpoint": ckpt_dir,
        "samples_seen": info.get("samples_seen"),
        "model_name": info.get("model_name"),
    }
    write_results(config.output_dir, records, model_info)
    print()
    print(format_table(records))
    print(f"\nwrote {config.output_dir}/results.json and report.md")
    return records
