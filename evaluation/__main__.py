"""``python -m evaluation CONFIG [key=value ...]``: evaluate a checkpoint on a suite."""

from __future__ import annotations

from evaluation.config import EvalConfig
from flipcommon.cli import run_stage, stage_parser

HELP = """\
Evaluate a checkpoint (open_clip layout: open_clip_config.json + open_clip_model.safetensors)
on a suite of tasks (the config's tasks:): zero-shot classification (top-1, top-5, mean
per-class recall), image-text retrieval (recall@1/5/10 both ways) and linear probe (logistic
regression on frozen features, its C swept over CLIP's 1e-6…1e6 on a validation split). Images
are never masked at evaluation. Datasets: built in (fashion_mnist, animal_mnist, tuxpaint;
emoji_heldout and concepts_heldout, held out of the demo corpus: the Noto emoji style, and whole
concepts never trained on) or on disk with path= (image_folder, clip_benchmark_wds, shard_set).

Which model: checkpoint= a checkpoint folder (any fsspec URL; empty: the newest of
train_run_dir); checkpoints=[A,B] several, compared; every_checkpoint=true all of the run
(metric vs samples seen); open_clip_model=NAME open_clip_weights=FILE any open_clip model.
Writes output_dir/results.json (one record per checkpoint × task), report.md and report.html
(tables and plots), clip_benchmark/ (the same results in CLIP_benchmark's per-task format, for
`clip_benchmark build`), and prints a table with the chance level beside each figure.

Scale out: one array task per checkpoint — array_index_env=AWS_BATCH_JOB_ARRAY_INDEX
(or JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID) evaluates only that checkpoint of the list,
into output_dir/NNNN. device=cuda on GPU nodes (default: auto).

Examples:
  python -m evaluation configs/eval/demo.yaml
  python -m evaluation configs/eval/demo.yaml checkpoint=runs/demo/train/checkpoints/step_00000200
  python -m evaluation configs/eval/demo.yaml every_checkpoint=true output_dir=runs/demo/eval-all
"""


def _run(config: EvalConfig, _args) -> None:
    from evaluation.stage import run

    run(config)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m evaluation", HELP, "checkpoint=PATH")
    from evaluation.datasets import DatasetMissing
    from flipcommon.checkpoints import CheckpointError

    run_stage(parser, EvalConfig, _run, argv, user_errors=(DatasetMissing, CheckpointError))


if __name__ == "__main__":
    main()
