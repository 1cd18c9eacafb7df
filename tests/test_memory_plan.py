"""The memory planner: its activation model against the bytes autograd saves (flip_tiny at
every mask ratio, fp32 and bf16, with and without checkpointing), the parts it sums under DDP
and FSDP, and ``python -m training CONFIG --plan``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import memory_plan_check  # noqa: E402

from training.config import PhaseConfig, TrainConfig  # noqa: E402
from training.memory_plan import plan  # noqa: E402


def test_the_activation_model_is_within_15_percent_of_what_autograd_saves():
    rows = memory_plan_check.measure("flip_tiny", (2, 4), [0.0, 0.5, 0.75])
    assert len(rows) == 12
    for row in rows:
        assert 0.85 <= row["ratio"] <= 1.15, row
    # the check can fail: masking halves what is saved, checkpointing cuts it by far more
    by = {(r["checkpointing"], r["precision"], r["mask"]): r["measured"] for r in rows}
    assert by[(False, "fp32", 0.5)] < 0.7 * by[(False, "fp32", 0.0)]
    assert by[(True, "fp32", 0.0)] < 0.2 * by[(False, "fp32", 0.0)]


def _config(**changes) -> TrainConfig:
    config = TrainConfig()
    config.model.name = "vit_b16"
    config.batch_size = 4096
    config.phases = [PhaseConfig(name="pretrain", mask_ratio=0.5)]
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_fsdp_shards_the_model_state_and_ddp_keeps_it_whole():
    gpu = 80 * 2**30
    ddp = plan(
        _config(parallelism="ddp"), 64, gpu, parameters=150_000_000, block_parameters=7_000_000
    )[0]
    fsdp = plan(
        _config(parallelism="fsdp"), 64, gpu, parameters=150_000_000, block_parameters=7_000_000
    )[0]
    assert ddp.parts["optimizer state"] == 2 * 150_000_000 * 4
    assert fsdp.parts["optimizer state"] == pytest.approx(2 * 150_000_000 * 4 / 64)
    assert fsdp.fixed < ddp.fixed and fsdp.largest_micro_batch >= ddp.largest_micro_batch
    # one micro-batch of the whole local batch (4096 / 64) is what the step runs
    assert ddp.micro_batch == 64 and ddp.accum_steps == 1
    growing = ("activations", "one block recomputed", "backward working memory")
    assert sum(ddp.parts.get(k, 0) for k in growing) == pytest.approx(ddp.per_sample * 64)
    assert ddp.local_batch % ddp.largest_dividing == 0
    # a smaller GPU fits a smaller micro-batch; checkpointing fits a larger one
    small = plan(_config(), 64, 16 * 2**30, parameters=150_000_000, block_parameters=7_000_000)[0]
    assert small.largest_micro_batch < ddp.largest_micro_batch
    ckpt = plan(_config(grad_checkpointing=True), 64, gpu, 150_000_000, 7_000_000)[0]
    assert ckpt.largest_micro_batch > 3 * ddp.largest_micro_batch


def test_accumulation_adds_the_cached_features_and_the_logits_span_the_global_batch():
    config = _config(micro_batch=16)
    (phase,) = plan(config, 64, 80 * 2**30, parameters=150_000_000, block_parameters=7_000_000)
    assert phase.accum_steps == 4 and "cached features" in phase.parts
    assert phase.parts["loss logits"] == 2 * 3 * 64 * 4096 * 4
    # two views: each view's loss over the batch, not the repeated batch squared
    config.phases[0].views = 2
    (two,) = plan(config, 64, 80 * 2**30, parameters=150_000_000, block_parameters=7_000_000)
    assert two.parts["loss logits"] == 2 * phase.parts["loss logits"]


def test_what_fsdp_and_bf16_hold_beyond_the_shards():
    """FSDP accumulating without sync keeps every unit's unsharded fp32 gradient until the
    step's last micro-batch; DDP under bf16 autocast holds bf16 copies of the weights."""
    args = (64, 80 * 2**30, 150_000_000, 7_000_000)
    fsdp_accum = plan(_config(parallelism="fsdp", micro_batch=16), *args)[0]
    fsdp_once = plan(_config(parallelism="fsdp"), *args)[0]
    assert fsdp_accum.parts["FSDP unsharded gradients"] == 150_000_000 * 4
    assert fsdp_once.parts["FSDP unsharded gradients"] == 7_000_000 * 4
    assert plan(_config(precision="bf16"), *args)[0].parts["bf16 weight copies"] == 3e8


def test_the_plan_command_prints_every_phase(capsys):
    from training.__main__ import main

    main(["configs/train/vit_h14.yaml", "--plan", "--world-size", "64", "--gpu-gib", "80"])
    out = capsys.readouterr().out
    assert "vit_h14" in out and "64 rank(s)" in out
    assert out.count("the largest micro-batch that fits") >= 2  # pre-training and tuning
    assert "optimizer state" in out and "shared memory per node" in out
