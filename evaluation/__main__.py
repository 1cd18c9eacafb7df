"""``python -m evaluation CONFIG [key=value ...]``: evaluate a checkpoint on a suite."""

from __future__ import annotations

from evaluation.config import EvalConfig
from flipcommon.cli import run_stage, stage_parser

HELP = """\
Evaluate a checkpoint (open_clip layout: open_clip_config.json + open_clip_model.safetensors)
on a suite of tasks: zero-shot classification (top-1, top-5, mean per-class recall) and
image-text retrieval (recall@1/5/10 both ways). Images are never masked at evaluation.

checkpoint= names a checkpoint folder (any fsspec URL); left empty, the newest checkpoint of
train_run_dir is used. Writes output_dir/results.json and output_dir/report.md, and prints a
table with the chance level beside each figure.

Examples:
  python -m evaluation configs/eval/demo.yaml
  python -m evaluation configs/eval/demo.yaml checkpoint=runs/demo/train/checkpoints/step_00000200
"""


def _run(config: EvalConfig, _args) -> None:
    from evaluation.stage import run

    run(config)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m evaluation", HELP, "checkpoint=PATH")
    from evaluation.datasets import DatasetMissing
    from training.checkpoint import CheckpointError

    run_stage(parser, EvalConfig, _run, argv, user_errors=(DatasetMissing, CheckpointError))


if __name__ == "__main__":
    main()
