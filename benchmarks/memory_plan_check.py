"""The memory planner's activation model against the bytes autograd saves.

    python benchmarks/memory_plan_check.py [--models flip_tiny vit_b16] [--batches 2 4]

For each model, mask ratio, precision (fp32, bf16 autocast) and gradient checkpointing on or
off: the bytes per sample that ``training.memory_plan.activation_bytes`` predicts, against
those counted with ``torch.autograd.graph.saved_tensors_hooks`` during one forward of both
towers in training mode — the same count on any device — per sample as the difference between
two batch sizes (what does not grow with the batch, such as bf16 copies of the weights, drops
out). Parameters saved for the backward pass are not activations and are not counted.

The count is checked under the CPU's autocast policy (what this machine runs). On CUDA the
planner counts one difference: autocast runs layer_norm in fp32 there, so each norm saves an
fp32 copy of its bf16 input (``towers(device="cuda")``, the planner's default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import PhaseConfig  # noqa: E402
from training.masking import set_mask_ratio  # noqa: E402
from training.memory_plan import activation_bytes, towers  # noqa: E402
from training.model import build_model  # noqa: E402


def saved_bytes(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves in one forward, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images, tokens)
    return sum(seen.values())


def measure(name: str, batches: tuple[int, int], masks: list[float]) -> list[dict]:
    torch.manual_seed(0)
    model, cfg, _ = build_model(name)
    model.train()
    size = int(cfg["vision_cfg"]["image_size"])
    context = int(cfg["text_cfg"]["context_length"])
    rows = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        for precision in ("fp32", "bf16"):
            for mask in masks:
                set_mask_ratio(model, mask)
                counted = []
                for batch in batches:
                    images = torch.randn(batch, 3, size, size)
                    tokens = torch.randint(1, 1000, (batch, context))
                    bf16 = precision == "bf16"
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        counted.append(saved_bytes(model, images, tokens))
                per_sample = (counted[1] - counted[0]) / (batches[1] - batches[0])
                phase = PhaseConfig(mask_ratio=mask)
                image, text, side = towers(name, "openclip", phase, precision, device="cpu")
                model_bytes = activation_bytes(image, text, side, precision, checkpointing)
                rows.append(
                    {
                        "model": name,
                        "checkpointing": checkpointing,
                        "precision": precision,
                        "mask": mask,
                        "measured": per_sample,
                        "planned": model_bytes["saved"],
                        "ratio": model_bytes["saved"] / per_sample,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["flip_tiny", "vit_b16"])
    parser.add_argument("--batches", nargs=2, type=int, default=[2, 4])
    parser.add_argument("--masks", nargs="+", type=float, default=[0.0, 0.5, 0.75])
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(
        "model | checkpointing | precision | mask | measured MB/sample | planned | planned/measured"
    )
    worst = 0.0
    for name in args.models:
        for row in measure(name, tuple(args.batches), args.masks):
            worst = max(worst, abs(row["ratio"] - 1))
            print(
                f"{row['model']} | {'on' if row['checkpointing'] else 'off'} | "
                f"{row['precision']} | {row['mask']:g} | {row['measured'] / 1e6:.2f} | "
                f"{row['planned'] / 1e6:.2f} | {row['ratio']:.3f}"
            )
    print(f"largest difference: {worst:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
