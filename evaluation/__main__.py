"""``python -m evaluation CONFIG [key=value ...]``: evaluate a checkpoint on a suite."""

from __future__ import annotations

import argparse
import logging

from evaluation.config import EvalConfig
from flipcommon.config import load_config

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML suite config (see configs/eval/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. checkpoint=PATH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(EvalConfig, args.config, args.overrides)

    from evaluation.stage import run

    run(config)


if __name__ == "__main__":
    main()
