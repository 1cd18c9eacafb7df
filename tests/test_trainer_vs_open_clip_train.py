"""The trainer-vs-open_clip_train benchmark at toy size, so it cannot rot: both real trainers on
the test shard set, both checkpoints through our evaluation, the table with Welch's p."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOY_PHASES = (
    "phases=[{name: pretrain, mask_ratio: 0.5, samples: 48, base_lr: 2.0e-3, warmup_samples: 16},"
    " {name: unmasked_tuning, mask_ratio: 0.0, samples: 32, base_lr: 2.0e-4}]"
)


@pytest.mark.slow
def test_both_trainers_run_the_same_recipe_and_are_compared_over_seeds(
    tmp_path, shard_set, demo_corpus_dir
):
    suite = tmp_path / "suite.yaml"
    task = {"name": "emoji_r", "dataset": "emoji_heldout", "task": "retrieval", "limit": 64}
    suite.write_text(json.dumps({"demo_corpus_dir": str(demo_corpus_dir), "tasks": [task]}))
    out = tmp_path / "bench"
    args = [
        sys.executable,
        "benchmarks/trainer_vs_open_clip_train.py",
        "--shards", str(shard_set),
        "--out", str(out),
        "--eval-config", str(suite),
        "--seeds", "0", "1",
        "--set", "model.name=flip_micro",
        "--set", "batch_size=16",
        "--set", "data.workers=1",
        "--set", TOY_PHASES,
        "--figures", "emoji_r:image_retrieval_recall@10",
    ]  # fmt: skip
    first = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [
        ("open_clip_train", 0), ("open_clip_train", 1), ("ours", 0), ("ours", 1)
    ]  # fmt: skip
    for run in runs:
        point = run["points"][-1]
        assert point["samples_seen"] == (3 + 2) * 16  # 48 // 16 + 32 // 16 steps of 16
        assert 0.0 <= point["metrics"]["emoji_r:image_retrieval_recall@10"] <= 1.0
        assert run["wall_seconds"] > 0
    # open_clip_train ran the recipe's phases as ours did: same steps, lr, warmup, masking
    logs = out / "open_clip_train" / "seed1" / "open_clip_logs"
    pretrain = params(logs / "phase0" / "params.txt")
    tuning = params(logs / "phase1" / "params.txt")
    assert pretrain["train_num_samples"] == "48" and tuning["train_num_samples"] == "32"
    assert float(pretrain["lr"]) == pytest.approx(2e-3 * 16 / 256)
    assert float(tuning["lr"]) == pytest.approx(2e-4 * 16 / 256)
    assert pretrain["warmup"] == "1" and tuning["warmup"] == "0"
    assert pretrain["force_patch_dropout"] == "0.5" and tuning["force_patch_dropout"] == "None"
    assert pretrain["seed"] == "1"
    assert tuning["pretrained"].endswith("phase0/checkpoints/epoch_1.pt")

    table = (out / "table.md").read_text()
    assert "| emoji_r:image_retrieval_recall@10 |" in table and "p=" in table
    assert "| wall ms per sample |" in table

    again = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before") == 4
    changed = subprocess.run(
        [*args[:-2], "--set", "weight_decay=0.1", *args[-2:]],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert changed.returncode != 0 and "another setup" in changed.stderr


def params(path: Path) -> dict[str, str]:
    """open_clip_train's record of its arguments (``name: value`` lines)."""
    pairs = (line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    return {key.strip(): value.strip() for key, value in pairs}
