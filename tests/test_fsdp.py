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


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A rank's own shard of a sharded tensor (the whole of a replicated one)."""
    return (tensor.to_local() if hasattr(tensor, "to_local") else tensor).clone()


def _gathers_rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    """Two accumulated steps (an optimizer step between) of a sharded micro model, with its
    units kept gathered through each step and, as before, gathered afresh for every pass; the
    all-gathers counted and each rank's gradient shards kept."""
    import contextlib
    from contextlib import nullcontext as nullcontext_autocast

    import torch.distributed as dist

    from training import step as step_module
    from training.masking import set_mask_ratio
    from training.model import build_model
    from training.sharding import _fsdp_units, _reshards_after_forward, shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    gathers = {"count": 0}
    real_gather = dist.all_gather_single

    def counted(*args, **kwargs):
        gathers["count"] += 1
        return real_gather(*args, **kwargs)

    dist.all_gather_single = counted  # what FSDP's default all-gather calls

    @contextlib.contextmanager
    def regathered(model):  # the behaviour before: every pass gathers its units afresh
        yield lambda: None

    generator = torch.Generator().manual_seed(1 + rank)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 49407, (8, 16), generator=generator)
    out = {}
    for mode in ("kept", "regathered"):
        torch.manual_seed(0)
        model, _, _ = build_model("flip_micro")
        set_mask_ratio(model.train(), 0.5)
        shard_model(model)
        units = _fsdp_units(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if mode == "regathered":
            step_module.gathered_for_the_step = regathered
        counts, settings = [], []
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            torch.manual_seed(7)
            before = gathers["count"]
            step_module.forward_backward(
                model, model, images, tokens, nullcontext_autocast, accum_steps=4
            )
            counts.append(gathers["count"] - before)
            settings.append([_reshards_after_forward(u) for u in units])
            optimizer.step()
        out[mode] = {
            "counts": counts,
            "units": len(units),
            "settings": settings,
            "grads": {n: _local(p.grad) for n, p in model.named_parameters()},
            "weights": {n: _local(p.detach()) for n, p in model.named_parameters()},
        }
        out[mode]["after_failure"] = None
        if mode == "kept":  # a step that fails half-way through a forward, then a good one
            bad = tokens.clone()
            bad[0, 0] = 10**6  # no such token: the embedding raises inside the root unit
            try:
                step_module.forward_backward(
                    model, model, images, bad, nullcontext_autocast, accum_steps=4
                )
            except IndexError:
                optimizer.zero_grad(set_to_none=True)
                before = gathers["count"]
                loss = step_module.forward_backward(
                    model, model, images, tokens, nullcontext_autocast, accum_steps=4
                )
                out[mode]["after_failure"] = (gathers["count"] - before, bool(torch.isfinite(loss)))
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_accumulated_fsdp_steps_gather_the_model_once_with_the_same_gradients(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gathers_rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        kept, regathered = out["kept"], out["regathered"]
        # every unit gathered once per step, against several times per micro-batch before
        assert kept["counts"] == [kept["units"]] * 2, kept["counts"]
        assert min(regathered["counts"]) >= 2 * 4 * kept["units"], regathered["counts"]
        # the units' own reshard settings are back after each step: blocks free, root keeps
        assert kept["settings"][0] == kept["settings"][1] == regathered["settings"][1]
        # torch's recovery after the failed step: the next one gathers each unit once again
        assert kept["after_failure"] == (kept["units"], True), kept["after_failure"]
        assert kept["settings"][0][0] is False and all(kept["settings"][0][1:]), kept["settings"]
        # the second step gathered the weights the optimizer had just updated
        for name, grad in regathered["grads"].items():
            torch.testing.assert_close(kept["grads"][name], grad, msg=name)
            torch.testing.assert_close(kept["weights"][name], regathered["weights"][name])
