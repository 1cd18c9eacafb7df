"""A multi-GPU training step, DDP then FSDP, with the checks a first GPU run needs: every rank
draws its own patch masks, DDP leaves identical weights on every rank, FSDP steps with the
trainer's AdamW over sharded and replicated parameters, under bf16 autocast; then FSDP with its
bf16 mixed-precision policy and two accumulated micro-batches (gradient sync skipped on the
first): blocks compute in bf16, shards and their gradients stay fp32. The step time and peak
memory of each.

    torchrun --nproc-per-node=2 benchmarks/gpu/distributed_step_check.py [--model vit_b16]
    torchrun --nproc-per-node=2 benchmarks/gpu/distributed_step_check.py --device cpu \\
        --model flip_micro --batch 8 --steps 2      # a CPU smoke run (gloo)

Uses the trainer's own pieces (model, seeding, loss, step, sharding), not its data loader, so it
runs where only torch and open_clip are installed. Rank 0 prints one table and writes
distributed_step_check.json to $OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training import rng  # noqa: E402
from training.distributed import close_distributed, init_distributed, resolve_device  # noqa: E402
from training.masking import remove_patches, set_mask_ratio  # noqa: E402
from training.model import build_model  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.sharding import (  # noqa: E402
    average_replicated_grads,
    shard_model,
    transformer_blocks,
)
from training.step import forward_backward  # noqa: E402


def masks_differ_between_ranks(device: torch.device) -> bool | None:
    """Draw a mask as PatchRemoval does (the global generator) and compare across ranks (None
    with one rank: nothing to compare)."""
    if dist.get_world_size() == 1:
        return None
    tokens = torch.arange(17.0, device=device).repeat(4, 1).unsqueeze(-1)
    mask = remove_patches(tokens, 0.5)[:, 1:, 0].contiguous()
    gathered = [torch.zeros_like(mask) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mask)
    return all(not torch.equal(gathered[0], other) for other in gathered[1:])


def weights_equal_across_ranks(model: torch.nn.Module) -> bool | None:
    if dist.get_world_size() == 1:
        return None
    flat = torch.cat([p.detach().float().flatten()[:1024] for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def precision_of(model: torch.nn.Module, compute_dtypes: set[str]) -> dict:
    """The dtypes blocks computed in, parameters are held in, and gradients came out in."""
    return {
        "block_compute_dtypes": sorted(compute_dtypes),
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "grad_dtypes": sorted(
            {str(p.grad.dtype) for p in model.parameters() if p.grad is not None}
        ),
    }


def run_mode(mode: str, args, rank: int, device: torch.device) -> dict:
    torch.manual_seed(0)  # one initial model on every rank, as the trainer builds it
    model, cfg, _ = build_model(args.model)
    rng.seed_rank(0, rank)  # then each rank its own masks
    set_mask_ratio(model, args.mask_ratio)
    model.to(device).train()
    sharded = mode.startswith("fsdp")
    mixed = mode == "fsdp_bf16_accum"
    if sharded:
        shard_model(model, "bf16" if mixed else "fp32")
    compute_dtypes: set[str] = set()
    first_block = transformer_blocks(model)[0]
    first_block.register_forward_pre_hook(
        lambda block, _: compute_dtypes.add(str(next(block.parameters()).dtype))
    )
    optimizer = build_optimizer(model, 1e-4, 0.2, (0.9, 0.95))
    train_model = (
        model
        if sharded
        else torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    )
    size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    images = torch.randn(args.batch, 3, size, size, device=device)
    tokens = torch.randint(1, 49407, (args.batch, context), device=device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(
            train_model, model, images, tokens, autocast, accum_steps=2 if mixed else 1
        )
        if sharded:
            average_replicated_grads(model)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    result = {
        "mode": mode,
        "model": args.model,
        "batch_per_rank": args.batch,
        "s_per_step": sum(times) / len(times),
        "loss_dtype": str(loss.dtype),
        "loss_finite": bool(torch.isfinite(loss)),
        "masks_differ_between_ranks": masks_differ_between_ranks(device),
        **precision_of(model, compute_dtypes),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }
    if mode == "ddp":
        result["weights_equal_across_ranks"] = weights_equal_across_ranks(model)
    del train_model, model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--batch", type=int, default=64, help="per rank")
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    kind = "cuda" if args.device == "cuda" else "cpu"
    info = init_distributed(kind)
    device = resolve_device(args.device, info.local_rank)
    if info.world_size == 1:  # one GPU: the sharded and mixed-precision paths, one rank
        if "MASTER_ADDR" not in os.environ:
            sys.exit("run under torchrun (--nproc-per-node 2, or 1 with a single GPU)")
        backend = "nccl" if kind == "cuda" else "gloo"
        dist.init_process_group(backend, rank=0, world_size=1)
    modes = ("ddp", "fsdp", "fsdp_bf16_accum")
    results = [run_mode(mode, args, info.rank, device) for mode in modes]
    if info.is_main:
        for r in results:
            print(json.dumps(r))
        name = torch.cuda.get_device_name(device) if kind == "cuda" else "cpu"
        header = f"{info.world_size} ranks, {name}"
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed_step_check.json").write_text(
            json.dumps({"setup": header, "results": results}, indent=2)
        )
        ok = all(r["loss_finite"] for r in results)
        if info.world_size > 1:  # the cross-rank checks
            ok = ok and all(r["masks_differ_between_ranks"] for r in results)
            ok = ok and results[0]["weights_equal_across_ranks"]
        mixed = results[2]
        ok = ok and mixed["block_compute_dtypes"] == ["torch.bfloat16"]
        ok = ok and mixed["param_dtypes"] == mixed["grad_dtypes"] == ["torch.float32"]
        print(f"{header}: {'all checks passed' if ok else 'A CHECK FAILED'}")
    dist.barrier()  # leave together (a rank torn down early can abort a busy peer under gloo)
    close_distributed()


if __name__ == "__main__":
    main()
