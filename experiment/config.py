"""The experiment's config (``configs/experiment/*.yaml``): arms, budget, seeds, suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from flipcommon.config import Range


@dataclass
class ArmConfig:
    """One way of spending the budget: a mask ratio, its batch, with or without tuning."""

    name: str = "clip"
    mask_ratio: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    # batch = base_batch × this (the paper's Table 1a: 1×, 2×, 4×)
    batch_scale: Annotated[int, Range(1)] = 1
    unmasked_tuning: bool = False  # end with tuning_fraction of the budget at mask ratio 0
    # masked views of each pair per pre-training step: 2 spends what masking saves on a second
    # view of the same pairs rather than on more pairs (e.g. 50% masking, batch_scale 1)
    views: Annotated[int, Range(1)] = 1
    # > 0: pre-train on images downsampled to this size (fewer patch tokens by resolution
    # rather than by masking); unmasked tuning, if any, runs at the model's full size
    image_size: int = 0


def _paper_arms() -> list[ArmConfig]:
    return [
        ArmConfig("clip", 0.0, 1),
        ArmConfig("flip50", 0.5, 2),
        ArmConfig("flip50+tuning", 0.5, 2, True),
        ArmConfig("flip75", 0.75, 4),
        ArmConfig("flip75+tuning", 0.75, 4, True),
    ]


@dataclass
class ExperimentConfig:
    output_dir: str = "runs/experiment"
    # The training recipe every arm starts from (model, data, optimiser, loader); the arms set
    # phases, batch, seed, run_dir and checkpointing. train_overrides are key=value pairs on
    # top (e.g. data.shards=s3://bucket/shards, model.name=vit_b16).
    train_config: str = "configs/train/flip_tiny.yaml"
    train_overrides: list[str] = field(default_factory=list)
    # The held-out suite run at every evaluation point of every arm.
    eval_config: str = "configs/eval/experiment.yaml"
    budget_s: float = 150.0  # training time per arm, on the trainer's clock
    # > 0: every arm gets this much training compute instead (forward + backward GFLOPs per
    # sample counted on the model by experiment/flops.py, × samples): a budget no machine's
    # speed changes. Each phase then runs a number of samples; wall time is still recorded.
    budget_gflops: float = 0.0
    eval_points: int = 4  # evaluations at equal shares of the budget (plus phase ends)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # the unmasked arm's batch; others scale it by batch_scale
    base_batch: Annotated[int, Range(1)] = 64
    base_lr: float = 1.0e-3  # pre-training: lr = base_lr × batch / 256
    warmup_fraction: Annotated[float, Range(0, 1)] = 0.05  # of each pre-training phase
    tuning_fraction: Annotated[float, Range(0, 1)] = 0.1  # of the budget, in the +tuning arms
    tuning_base_lr: float = 1.0e-4
    arms: list[ArmConfig] = field(default_factory=_paper_arms)
    # TASK:METRIC the write-up and plots lead with: zero-shot over concepts never trained on
    headline: str = "concepts_heldout/name:top1"
    # further TASK:METRIC columns of the results table
    table_metrics: list[str] = field(
        default_factory=lambda: [
            "concepts_heldout/name:top5",
            "concepts_heldout/retrieval:image_retrieval_recall@10",
            "concepts_heldout/retrieval:text_retrieval_recall@10",
            "emoji_heldout/name:top5",
            "emoji_heldout/retrieval:image_retrieval_recall@10",
        ]
    )
    # How one arm's training is launched: empty runs this Python's `-m training`; on a GPU
    # node e.g. [torchrun, --nproc-per-node, "8", -m, training]. The arm's config path is added.
    train_launcher: list[str] = field(default_factory=list)
    keep_checkpoints: str = "final"  # final: each arm keeps its last weights only | all
