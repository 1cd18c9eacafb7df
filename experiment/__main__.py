"""``python -m experiment CONFIG [key=value ...]``: FLIP vs CLIP at equal training compute."""

from __future__ import annotations

from pathlib import Path

from experiment.config import ExperimentConfig
from flipcommon.cli import run_stage, stage_parser

HELP = """\
Train every arm of the experiment for the same training compute (or time) and for every seed;
evaluate each at regular points of its run on a held-out suite; write the tables, plots and a
write-up. An arm is a way of spending the budget: a mask ratio with its batch (the paper's
Table 1a: unmasked CLIP, FLIP at 50% or 75% with 2x or 4x the batch), optionally two masked
views per pair (views: 2), pre-training at a lower image size (image_size: 32), and a short
unmasked tuning at full size at the end (unmasked_tuning: true).
configs/experiment/flip_vs_clip.yaml runs 4 arms; flip_vs_clip_full.yaml all 8.

Writes into output_dir: arms/ARM/seedN/ (train_config.yaml, train.log, train/ with the final
checkpoint, eval/, points.json), results.json, results.md, masking_table.md,
accuracy_vs_time.png, accuracy_vs_samples.png, writeup.md. A rerun skips finished arms and
resumes a cut-short one. Needs a shard set (make shards) and the held-out suite's data.

Budget: budget_gflops=G (the shipped configs' choice): the same counted training compute per
arm (FLOPs per sample counted on the model at each mask ratio and image size × samples), which
no machine's speed or load changes; wall time is recorded either way, and
accuracy_vs_compute.png is drawn. budget_gflops=0 budget_s=S gives every arm S seconds of
training time instead (what a busy or drifting machine distorts).

Scale up: point train_config/train_overrides at real shards and a real model, set
train_launcher to e.g. [torchrun, --nproc-per-node, "8", -m, training], raise the budget.

Examples:
  python -m experiment configs/experiment/flip_vs_clip.yaml
  python -m experiment configs/experiment/flip_vs_clip.yaml budget_gflops=20000 seeds=[0]
  python -m experiment configs/experiment/flip_vs_clip_full.yaml
  python -m experiment configs/experiment/flip_vs_clip.yaml budget_gflops=0 budget_s=150
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
    parser = stage_parser("python -m experiment", HELP, "seeds=[0]")
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
