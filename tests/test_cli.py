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
