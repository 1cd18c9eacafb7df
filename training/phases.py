"""Turn phase configs (lengths in samples) into step plans for a given global batch."""

from __future__ import annotations

from dataclasses import dataclass

from training.config import PhaseConfig
from training.optim import scaled_lr


@dataclass(frozen=True)
class PhasePlan:
    name: str
    mask_ratio: float
    steps: int
    warmup_steps: int
    peak_lr: float


def plan_phases(
    phases: list[PhaseConfig], global_batch: int, steps_override: int = 0
) -> list[PhasePlan]:
    if not phases:
        raise ValueError("a run needs at least one phase")
    plans = []
    for phase in phases:
        if not 0.0 <= phase.mask_ratio < 1.0:
            raise ValueError(f"phase {phase.name}: mask_ratio must be in [0, 1)")
        steps = steps_override or max(1, phase.samples // global_batch)
        warmup = 0 if steps_override else min(steps, phase.warmup_samples // global_batch)
        plans.append(
            PhasePlan(
                phase.name, phase.mask_ratio, steps, warmup, scaled_lr(phase.base_lr, global_batch)
            )
        )
    return plans
