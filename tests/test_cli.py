"""The stage entry points: --help explains, a user's mistake is one clear line and exit 2."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("stage", ["pipeline", "training", "evaluation"])
def test_help_gives_examples_and_outputs(stage):
    out = subprocess.run(
        [sys.executable, "-m", stage, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "Examples:" in out and "writes" in out.lower()


@pytest.mark.parametrize(
    ("script", "stage"),
    [
        ("flip-pipeline", "pipeline"),
        ("flip-train", "training"),
        ("flip-eval", "evaluation"),
        ("flip-experiment", "experiment"),
    ],
)
def test_console_scripts_are_the_stage_entry_points(script, stage):
    from pathlib import Path

    path = Path(sys.executable).parent / script
    assert path.exists(), f"{script} not installed (pip install -e .)"
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True)
    assert f"python -m {stage}" in out.stdout and "Examples:" in out.stdout


def test_bad_override_exits_2_with_a_message(capsys):
    from training.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["configs/train/flip_tiny.yaml", "batch_size=lots"])
    assert exit_info.value.code == 2
    assert "batch_size: expected int" in capsys.readouterr().err


def test_a_batch_that_does_not_split_exits_2_before_any_model_is_built(capsys, tmp_path):
    from training.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["configs/train/flip_tiny.yaml", "micro_batch=12", f"run_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "does not split into micro-batches of 12" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_missing_dataset_exits_2_naming_what_to_put_where(micro_run, tmp_path, capsys):
    from evaluation.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["configs/eval/paper.yaml", f"train_run_dir={micro_run}", f"output_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "eval_data/imagenet/val/CLASS" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stage", "config", "override", "message"),
    [
        ("training", "configs/train/flip_tiny.yaml", "parallelism=fdsp", "['ddp', 'fsdp']"),
        ("training", "configs/train/flip_tiny.yaml", "precision=bf18", "got 'bf18'"),
        ("pipeline", "configs/pipeline/demo.yaml", "download.resize_mode=crop", "'border'"),
        (
            "evaluation",
            "configs/eval/demo.yaml",
            "tasks=[{name: x, dataset: fashion_mnst}]",
            "tasks[0].dataset: expected one of",
        ),
    ],
)
def test_a_typo_in_a_fixed_choice_fails_at_load(stage, config, override, message, capsys):
    import importlib

    main = importlib.import_module(f"{stage}.__main__").main
    with pytest.raises(SystemExit) as exit_info:
        main([config, override])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bug_keeps_its_traceback():
    from flipcommon.cli import run_stage, stage_parser
    from training.config import TrainConfig

    def buggy(config, args):
        raise ValueError("an internal invariant broke")

    parser = stage_parser("test", "test", "a=1")
    with pytest.raises(ValueError, match="internal invariant"):
        run_stage(parser, TrainConfig, buggy, ["configs/train/flip_tiny.yaml"])
