"""Memory a training step keeps for the backward pass, by mask ratio, same batch.

Counts the bytes of every non-weight tensor autograd saves for backward
(``saved_tensors_hooks``) in one forward pass — the activation memory that patch removal
shrinks, measured exactly and without timing noise — and, on a GPU, the peak allocated memory
of a whole step (weights, gradients and optimizer state included). Ratios are against mask
ratio 0 in the same process.

    python benchmarks/activation_memory_by_mask_ratio.py [--model vit_b16] [--batch 8]
"""

from __future__ import annotations

import argparse

import torch

from training.loss import contrastive_loss
from training.masking import set_mask_ratio
from training.model import build_model
from training.optim import build_optimizer


def saved_bytes(model, images, tokens, image_only: bool) -> int:
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # weights are saved too, but are no activation
            seen[storage.data_ptr()] = storage.nbytes()  # count shared storage once
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if image_only:
            features = model.encode_image(images, normalize=True)
            loss = features.sum()
        else:
            image_features, text_features, _ = model(images, tokens)
            loss = contrastive_loss(image_features, text_features, model.logit_scale)
    del loss
    return sum(seen.values())


def cuda_step_peak(model, optimizer, images, tokens) -> int:
    torch.cuda.reset_peak_memory_stats()
    image_features, text_features, _ = model(images, tokens)
    loss = contrastive_loss(image_features, text_features, model.logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, _ = build_model(args.model)
    model.to(device).train()
    optimizer = build_optimizer(model, 1e-5, 0.2, (0.9, 0.95))
    size = cfg["vision_cfg"]["image_size"]
    images = torch.randn(args.batch, 3, size, size, device=device)
    tokens = torch.randint(1, 49407, (args.batch, cfg["text_cfg"]["context_length"]), device=device)
    print(f"model {args.model}, batch {args.batch}, device {device}")
    print(
        "mask_ratio  image-tower saved MB  ratio  whole-model saved MB  ratio"
        + ("  step peak MB  ratio" if device.type == "cuda" else "")
    )
    base = None
    for ratio in (0.0, 0.5, 0.75):
        set_mask_ratio(model, ratio)
        image_only = saved_bytes(model, images, tokens, image_only=True)
        whole = saved_bytes(model, images, tokens, image_only=False)
        row = [image_only, whole]
        if device.type == "cuda":
            row.append(cuda_step_peak(model, optimizer, images, tokens))
        base = base or row
        cells = "  ".join(
            f"{v / 2**20:18.1f}  {v / b:5.2f}" for v, b in zip(row, base, strict=True)
        )
        print(f"{ratio:<10}  {cells}")


if __name__ == "__main__":
    main()
