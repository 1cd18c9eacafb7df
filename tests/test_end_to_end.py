"""HTTP → shards → a few training steps → eval, through the three stages' own entry points."""

import json
import subprocess
import sys

import pytest

from tests.conftest import TEST_ITEMS_PER_SOURCE


def _run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_three_stages_from_their_command_lines(tmp_path, demo_corpus_dir):
    shards, run_dir, eval_dir = tmp_path / "shards", tmp_path / "run", tmp_path / "eval"
    _run(
        "pipeline",
        "configs/pipeline/demo.yaml",
        f"output_dir={shards}",
        f"demo.cache_dir={demo_corpus_dir}",
        f"demo.limit_per_source={TEST_ITEMS_PER_SOURCE}",
        "demo.hang_seconds=3",
        "fetch.deadline_s=1.5",
        "fetch.socket_timeout_s=1",
        "download.samples_per_shard=40",
        "download.image_size=32",
    )
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["counts"]["kept"] > 0
    _run(
        "training",
        "configs/train/flip_tiny.yaml",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        "model.name=flip_micro",
        "batch_size=8",
        "data.workers=1",
        "phases=[{name: pretrain, mask_ratio: 0.5, samples: 16}, "
        "{name: unmasked_tuning, mask_ratio: 0.0, samples: 8}]",
    )
    out = _run(
        "evaluation",
        "configs/eval/demo.yaml",
        f"train_run_dir={run_dir}",
        f"output_dir={eval_dir}",
        f"demo_corpus_dir={demo_corpus_dir}",
        "tasks=[{name: tux, dataset: tuxpaint, task: retrieval, limit: 20}, "
        "{name: emoji, dataset: emoji_heldout, task: zeroshot_classification, limit: 20}]",
    )
    assert "chance %" in out
    results = json.loads((eval_dir / "results.json").read_text())
    assert {r["task_name"] for r in results["results"]} == {"tux", "emoji"}
