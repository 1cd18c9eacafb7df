"""Distributed contrastive loss and gradient accumulation give the gradients of one pass over
the whole global batch."""

import os
import socket
from contextlib import nullcontext as nullcontext_autocast

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.masking import set_mask_ratio
from training.model import build_model
from training.step import forward_backward

GLOBAL_BATCH = 8


def _inputs():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 49407, (GLOBAL_BATCH, 16), generator=generator)
    return images, tokens


def _model():
    torch.manual_seed(0)
    model, _, _ = build_model("flip_micro")
    set_mask_ratio(model, 0.0)  # masks are random per rank; equivalence is about the loss
    model.train()
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    images, tokens = _inputs()
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    loss = forward_backward(ddp, model, images[local], tokens[local], nullcontext_autocast)
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss)
    grads = _grads(model)
    # the same batch again, accumulated over two micro-batches a rank, twice (DDP checks at the
    # next forward that the step's reduction finished: the temperature's included)
    accumulated = {}
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        forward_backward(ddp, model, images[local], tokens[local], nullcontext_autocast, 2)
        accumulated = _grads(model)
    if rank == 0:
        torch.save(
            {"loss": torch.stack(losses).mean(), "grads": grads, "accumulated": accumulated},
            f"{out_dir}/ddp.pt",
        )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_matches_one_process_over_the_global_batch(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    model = _model()
    images, tokens = _inputs()
    loss = forward_backward(model, model, images, tokens, nullcontext_autocast)
    torch.testing.assert_close(ddp["loss"], loss, rtol=1e-5, atol=1e-6)
    reference = _grads(model)
    assert set(ddp["grads"]) == set(reference) == set(ddp["accumulated"])
    for name, grad in reference.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(ddp["accumulated"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_keeps_the_full_contrastive_batch():
    images, tokens = _inputs()
    whole = _model()
    loss = forward_backward(whole, whole, images, tokens, nullcontext_autocast)
    accumulated = _model()
    accum_loss = forward_backward(
        accumulated, accumulated, images, tokens, nullcontext_autocast, accum_steps=4
    )
    torch.testing.assert_close(accum_loss, loss.detach(), rtol=1e-5, atol=1e-6)
    reference = _grads(whole)
    for name, grad in _grads(accumulated).items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_replays_the_same_patch_removal():
    """With masking on, the gradient pass must see the same patches as the cached pass: the
    accumulated gradients then equal those of the micro-batches embedded once, with gradients,
    under the same random draws, and the loss theirs over the whole batch."""
    from training.loss import contrastive_loss

    model = _model()
    set_mask_ratio(model, 0.5)
    images, tokens = _inputs()
    torch.manual_seed(5)
    loss = forward_backward(model, model, images, tokens, nullcontext_autocast, accum_steps=2)
    accumulated = _grads(model)

    reference = _model()
    set_mask_ratio(reference, 0.5)
    torch.manual_seed(5)
    feats = [reference(i, t)[:2] for i, t in zip(images.chunk(2), tokens.chunk(2), strict=True)]
    expected = contrastive_loss(
        torch.cat([f[0] for f in feats]), torch.cat([f[1] for f in feats]), reference.logit_scale
    )
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    for name, grad in _grads(reference).items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # other patches give other gradients: the check above can fail
    set_mask_ratio(model, 0.5)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(6)
    forward_backward(model, model, images, tokens, nullcontext_autocast, accum_steps=2)
    assert not torch.allclose(
        _grads(model)["visual.conv1.weight"], accumulated["visual.conv1.weight"]
    )


def test_two_identical_views_give_the_one_view_loss_and_gradients():
    """Unmasked, both views are the same image: their mean loss is the single view's."""
    images, tokens = _inputs()
    one = _model()
    loss = forward_backward(one, one, images, tokens, nullcontext_autocast)
    for accum_steps in (1, 4):
        two = _model()
        two_loss = forward_backward(
            two, two, images, tokens, nullcontext_autocast, accum_steps, views=2
        )
        torch.testing.assert_close(two_loss, loss, rtol=1e-5, atol=1e-6)
        reference = _grads(one)
        for name, grad in _grads(two).items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_two_masked_views_each_see_their_own_patches_against_the_whole_batch():
    """Masked, each view draws its own patches; with micro-batches the loss is still each
    view's loss over the whole batch (view v of every micro-batch together), averaged."""
    from training.loss import contrastive_loss

    model = _model()
    set_mask_ratio(model, 0.5)
    images, tokens = _inputs()
    torch.manual_seed(7)
    loss = forward_backward(model, model, images, tokens, nullcontext_autocast, 2, views=2)
    torch.manual_seed(7)
    with torch.no_grad():
        feats = [
            model(i.repeat(2, 1, 1, 1), t.repeat(2, 1))[:2]
            for i, t in zip(images.chunk(2), tokens.chunk(2), strict=True)
        ]
    views = [
        (torch.cat([f[0].chunk(2)[v] for f in feats]), torch.cat([f[1].chunk(2)[v] for f in feats]))
        for v in range(2)
    ]
    assert not torch.allclose(views[0][0], views[1][0], atol=1e-3)  # different patches
    torch.testing.assert_close(views[0][1], views[1][1])  # the same captions
    expected = sum(contrastive_loss(i, t, model.logit_scale) for i, t in views) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_batch_must_split_into_micro_batches():
    model = _model()
    images, tokens = _inputs()
    with pytest.raises(ValueError, match="micro-batches"):
        forward_backward(model, model, images[:6], tokens[:6], nullcontext_autocast, accum_steps=4)


def _seeding_rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    """The trainer's order: the model from the run's seed, then the rank's own generators."""
    from training import rng
    from training.masking import remove_patches

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, _, _ = build_model("flip_micro")
    rng.seed_rank(0, rank)
    tokens = torch.arange(17.0).repeat(4, 1).unsqueeze(-1)  # 4 images, CLS + 16 patches
    mask = remove_patches(tokens, 0.5)[:, 1:, 0]
    first_weight = next(model.parameters()).detach().flatten()[:64].clone()
    states = rng.gather_states()  # every rank's generators, as a checkpoint stores them
    gathered = [torch.zeros_like(mask) for _ in range(world)]
    dist.all_gather(gathered, mask)
    weights = [torch.zeros_like(first_weight) for _ in range(world)]
    dist.all_gather(weights, first_weight)
    if rank == 0:
        torch.save({"masks": gathered, "weights": weights, "states": states}, f"{out_dir}/s.pt")
    dist.destroy_process_group()


def test_ranks_start_from_one_model_but_draw_their_own_masks(tmp_path):
    mp.spawn(_seeding_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "s.pt", weights_only=False)
    assert torch.equal(out["weights"][0], out["weights"][1])  # one initial model
    assert not torch.equal(out["masks"][0], out["masks"][1])  # independent patch removal
    assert len(out["states"]) == 2
    assert not torch.equal(out["states"][0]["torch"], out["states"][1]["torch"])


def _timeout_rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    import time

    from training.distributed import barrier, close_distributed, init_distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    init_distributed("cpu", timeout_s=1.0, storage_timeout_s=30.0)
    if rank == 0:
        time.sleep(3)  # writing a checkpoint: the others wait on storage, past the 1 s
        barrier(storage=True)
        time.sleep(4)  # hung in a step
        close_distributed()
        return
    start = time.monotonic()
    barrier(storage=True)
    waited_on_storage = time.monotonic() - start
    start = time.monotonic()
    try:
        barrier()
        outcome = "returned"
    except Exception as err:  # noqa: BLE001 - the test reads what happened
        outcome = type(err).__name__
    with open(f"{out_dir}/rank1.txt", "w") as handle:
        handle.write(f"{outcome} {time.monotonic() - start:.1f} {waited_on_storage:.1f}")
    close_distributed()


def test_a_collective_that_waits_past_the_configured_timeout_fails_instead_of_hanging(tmp_path):
    """A training collective gives up after dist_timeout_s (a rank died or hangs: the run
    stops in minutes), while a wait on storage (rank 0 writing a checkpoint) may take up to
    dist_storage_timeout_s."""
    mp.spawn(_timeout_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    outcome, seconds, on_storage = (tmp_path / "rank1.txt").read_text().split()
    assert outcome != "returned" and float(seconds) < 3.5, (outcome, seconds)
    assert float(on_storage) >= 2.5  # waited out rank 0's write, past the 1 s timeout


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 1])
def test_the_gpu_machines_distributed_step_check_runs_on_cpu(tmp_path, ranks):
    """The script a GPU machine runs (benchmarks/gpu/distributed_step_check.py), as a CPU smoke
    run with gloo, so it cannot rot between the rare GPU runs: on 2 ranks, and on 1 as with a
    single GPU (the cross-rank checks do not apply there)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    args += [f"--nproc-per-node={ranks}", "benchmarks/gpu/distributed_step_check.py"]
    args += ["--device", "cpu", "--model", "flip_micro", "--batch", "8", "--steps", "1"]
    args += ["--warmup", "1", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"{ranks} ranks, cpu: all checks passed" in result.stdout
    saved = json.loads((tmp_path / "distributed_step_check.json").read_text())
    results = {r["mode"]: r for r in saved["results"]}
    assert results["fsdp"]["loss_finite"]
    if ranks > 1:
        assert results["ddp"]["weights_equal_across_ranks"]
        assert results["ddp"]["masks_differ_between_ranks"]
    else:
        assert results["ddp"]["masks_differ_between_ranks"] is None  # nothing to compare
    mixed = results["fsdp_bf16_accum"]  # FSDP's bf16 policy, gradient sync skipped once
    assert mixed["loss_finite"] and mixed["block_compute_dtypes"] == ["torch.bfloat16"]
    assert mixed["param_dtypes"] == mixed["grad_dtypes"] == ["torch.float32"]
    assert results["fsdp"]["block_compute_dtypes"] == ["torch.float32"]  # autocast casts ops only
