"""The sharded (FSDP) option: two gloo processes under torchrun train the same weights as DDP
(gradient accumulation included), write a whole, open_clip-loadable checkpoint, and resume from
it exactly; a timed phase ends on every rank at the same step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from flipcommon.checkpoints import (
    WEIGHTS_FILE,
    latest_checkpoint,
    read_config,
    read_weights,
    register_model_config,
)
from tests.conftest import micro_training_args
from training import checkpoint as ckpt

REPO = Path(__file__).parent.parent
PHASES = [
    {
        "name": "pretrain",
        "mask_ratio": 0.5,
        "samples": 8 * 6,
        "base_lr": 1e-3,
        "warmup_samples": 16,
    },
    # two micro-batches per step: gradient sync skipped on the first (DDP's no_sync, FSDP's
    # set_requires_gradient_sync), the same summed gradients
    {
        "name": "unmasked_tuning",
        "mask_ratio": 0.0,
        "samples": 24,
        "base_lr": 1e-4,
        "micro_batch": 2,
    },
]


def _torchrun(run_dir: Path, shards: Path, *overrides: str) -> None:
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        *micro_training_args(run_dir, shards, "checkpoint_every_steps=0", *overrides),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def _next_mask(rng_state: dict) -> torch.Tensor:
    """The patches the next masked step would keep, from a rank's saved generator state."""
    from training.masking import remove_patches

    generator = torch.Generator().manual_seed(0)
    generator.set_state(rng_state["torch"])
    tokens = torch.arange(17.0).repeat(4, 1).unsqueeze(-1)  # 4 images, CLS + 16 patches
    return remove_patches(tokens, 0.5, generator)[:, 1:, 0]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_weights(latest_checkpoint(str(run_dir)))


@pytest.mark.slow
def test_fsdp_trains_like_ddp_resumes_exactly_and_keeps_ranks_on_one_clock(tmp_path, shard_set):
    phases = f"phases={json.dumps(PHASES)}"
    _torchrun(tmp_path / "fsdp", shard_set, phases, "parallelism=fsdp")
    # a sharded run cuts the text tower once per rank (training.trainer): the same for DDP here,
    # so that the two runs round alike
    _torchrun(tmp_path / "ddp", shard_set, phases, "parallelism=ddp", "text_length_groups=1")
    fsdp, ddp = _final_weights(tmp_path / "fsdp"), _final_weights(tmp_path / "ddp")
    assert set(fsdp) == set(ddp)
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=1e-5, msg=name)

    # stopped at the phase boundary, then resumed under FSDP: the same final weights
    resumed = tmp_path / "resumed"
    _torchrun(resumed, shard_set, f"phases={json.dumps(PHASES[:1])}", "parallelism=fsdp")
    _torchrun(resumed, shard_set, phases, "parallelism=fsdp", "resume=true")
    for name, tensor in _final_weights(resumed).items():
        torch.testing.assert_close(tensor, fsdp[name], rtol=1e-5, atol=1e-6, msg=name)
    state = ckpt.read_train_state(latest_checkpoint(str(resumed)))
    assert state["train_state"]["step"] == 9 and state["train_state"]["samples_seen"] == 72
    # each rank draws its own patch masks, and resumes its own generators: the next step's
    # masks differ between the ranks and match the uninterrupted run's, rank by rank
    straight = ckpt.read_train_state(latest_checkpoint(str(tmp_path / "fsdp")))["rng"]
    after_resume = state["rng"]
    assert len(straight) == len(after_resume) == 2
    assert not torch.equal(_next_mask(after_resume[0]), _next_mask(after_resume[1]))
    for rank in (0, 1):
        assert torch.equal(_next_mask(after_resume[rank]), _next_mask(straight[rank])), rank
    assert all(isinstance(key, str) for key in state["optimizer"]["state"])  # keyed by name

    # a timed phase under torchrun: the ranks agree on the clock, so they stop together
    timed = [{"name": "pretrain", "mask_ratio": 0.5, "seconds": 3.0, "base_lr": 1e-3}]
    _torchrun(tmp_path / "timed", shard_set, f"phases={json.dumps(timed)}", "parallelism=fsdp")
    info = read_config(latest_checkpoint(str(tmp_path / "timed")))["flip"]
    assert info["train_seconds"] >= 3.0

    # the sharded run's checkpoint is whole and loads into open_clip as written
    latest = latest_checkpoint(str(tmp_path / "fsdp"))
    register_model_config("fsdp-test", read_config(latest)["model_cfg"])
    model = open_clip.create_model("fsdp-test", pretrained=f"{latest}/{WEIGHTS_FILE}")
    torch.testing.assert_close(model.state_dict()["logit_scale"], fsdp["logit_scale"])
