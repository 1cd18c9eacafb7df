"""``python -m experiment CONFIG [key=value ...]``: FLIP vs CLIP at equal training time."""

from __future__ import annotations

from pathlib import Path

from experiment.config import ExperimentConfig
from flipcommon.cli import run_stage, stage_parser

HELP = """\
Train every arm of the experiment (unmasked CLIP, FLIP at 50% and 75% masking with 2x and 4x
the batch, each with and without a short unmasked tuning) for the same training time and for
every seed; evaluate each at regular points of its run on a held-out suite; write the tables,
plots and a write-up.

Writes into output_dir: arms/ARM/seedN/ (train_config.yaml, train.log, train/ with the final
checkpoint, eval/, points.json), results.json, results.md, masking_table.md,
accuracy_vs_time.png, accuracy_vs_samples.png, writeup.md. A rerun skips finished arms and
resumes a cut-short one. Needs a shard set (make shards) and the held-out suite's data.

Budget: budget_s of training time per arm, or budget_gflops=G: the same counted training
compute per arm (FLOPs per sample counted on the model at each mask ratio and image size ×
samples), which no
machine's speed or load changes; wall time is recorded either way, and accuracy_vs_compute.png
is drawn.

Scale up: point train_config/train_overrides at real shards and a real model, set
train_launcher to e.g. [torchrun, --nproc-per-node, "8", -m, training], raise the budget.

Examples:
  python -m experiment configs/experiment/flip_vs_clip.yaml
  python -m experiment configs/experiment/flip_vs_clip.yaml budget_s=60 seeds=[0]
  python -m experiment configs/experiment/flip_vs_clip.yaml budget_gflops=2e5
"""


def _run(config: ExperimentConfig, _args) -> None:
    from experiment.arms import flops_settings, validate
    from experiment.flops import train_flops_per_sample
    from experiment.report import write_outputs
    from experiment.runner import run_arms
    from flipcommon.config import load_config
    from training.config import TrainConfig

    validate(config)
    model = load_config(TrainConfig, config.train_config, config.train_overrides).model
    flops = train_flops_per_sample(model.name, model.variant, flops_settings(config))
    runs = run_arms(config, {setting: counts["total"] for setting, counts in flops.items()})
    written = write_outputs(config, runs, flops, model.name)
    print(Path(config.output_dir, "writeup.md").read_text())
    print(f"wrote {', '.join(written)}")


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m experiment", HELP, "budget_s=60")
    from evaluation.datasets import DatasetMissing
    from experiment.arms import ExperimentConfigError
    from experiment.runner import ArmFailed
    from flipcommon.checkpoints import CheckpointError

    run_stage(
        parser,
        ExperimentConfig,
        _run,
        argv,
        user_errors=(
            ExperimentConfigError,
            DatasetMissing,
            CheckpointError,
            ArmFailed,
            FileNotFoundError,
        ),
    )


if __name__ == "__main__":
    main()
