"""Host memory each rank needs to resume a multi-rank run: every rank reading the whole
checkpoint itself (how resume worked before) against rank 0 reading it and broadcasting the
tensors (``training.checkpoint.resume_from``).

    python benchmarks/resume_host_memory.py [--model vit_b16] [--ranks 2]

Writes one checkpoint of the model and its AdamW state, then for each arm starts ``--ranks``
gloo processes that build the model and optimizer as the trainer does and resume from it. Each
rank reports its peak resident memory during the resume above what it held before (ru_maxrss;
every arm in fresh processes, since a peak cannot be reset). Prints the per-rank figures and
the ratio of the arms' totals. A node of 8 GPU ranks pays the total of 8 ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flipcommon.checkpoints import read_weights  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training.model import build_model  # noqa: E402
from training.optim import build_optimizer  # noqa: E402


def _rss_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _model_and_optimizer(name: str):
    torch.manual_seed(0)
    model, cfg, _ = build_model(name)
    return model, cfg, build_optimizer(model, 1e-4, 0.2, (0.9, 0.95))


def write_checkpoint(name: str, run_dir: str) -> str:
    model, cfg, optimizer = _model_and_optimizer(name)
    for param in model.parameters():  # one step on zero gradients creates AdamW's state
        param.grad = torch.zeros_like(param)
    optimizer.step()
    weights, optimizer_state = ckpt.full_state(model, optimizer)
    pp_cfg = {"size": cfg["vision_cfg"]["image_size"], "mean": [0.5] * 3, "std": [0.5] * 3}
    state = ckpt.TrainState(step=1)
    return ckpt.save_checkpoint(run_dir, weights, cfg, pp_cfg, optimizer_state, state, {}, [])


def _rank_main(rank: int, world: int, port: int, args, ckpt_dir: str, arm: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, _, optimizer = _model_and_optimizer(args.model)
    dist.barrier()
    before = _rss_gib()
    if arm == "every_rank_reads":
        saved = ckpt.read_train_state(ckpt_dir)
        ckpt.restore_full_state(model, optimizer, read_weights(ckpt_dir), saved["optimizer"], "x")
        del saved
    else:
        ckpt.resume_from(ckpt_dir, model, optimizer, rank, world)
    peak = _peak_gib()
    dist.barrier()
    Path(out, f"{arm}_{rank}.json").write_text(json.dumps({"extra_gib": peak - before}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    arms = ("every_rank_reads", "rank0_reads_and_broadcasts")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = write_checkpoint(args.model, tmp)
        size = sum(f.stat().st_size for f in Path(ckpt_dir).iterdir()) / 2**30
        print(f"{args.model}: checkpoint {size:.2f} GiB (weights + AdamW), {args.ranks} ranks")
        totals = {}
        for arm in arms:
            mp.spawn(
                _rank_main,
                args=(args.ranks, _free_port(), args, ckpt_dir, arm, tmp),
                nprocs=args.ranks,
                join=True,
            )
            extra = [
                json.loads(Path(tmp, f"{arm}_{r}.json").read_text())["extra_gib"]
                for r in range(args.ranks)
            ]
            totals[arm] = sum(extra)
            per_rank = ", ".join(f"{x:.2f}" for x in extra)
            print(f"{arm}: peak GiB above the model's own, per rank: {per_rank}")
    ratio = totals[arms[1]] / totals[arms[0]]
    print(f"all ranks together: {totals[arms[1]]:.2f} vs {totals[arms[0]]:.2f} GiB = {ratio:.2f}x")


if __name__ == "__main__":
    main()
