"""Turn phase configs (lengths in samples) into step plans for a given global batch."""

from __future__ import annotations

from dataclasses import dataclass

from flipcommon.errors import UserError
from training.config import PhaseConfig
from training.optim import lr_at, lr_at_time, scaled_lr


@dataclass(frozen=True)
class PhasePlan:
    name: str
    mask_ratio: float
    steps: int  # 0 for a timed phase
    warmup_steps: int
    peak_lr: float
    seconds: float = 0.0  # > 0: a timed phase (length and schedule on the training clock)
    warmup_seconds: float = 0.0
    views: int = 1  # masked views of each pair per step
    image_size: int = 0  # > 0: images downsampled to this size (0: the model's)

    def finished(self, phase_step: int, phase_seconds: float) -> bool:
        if self.seconds:
            return phase_seconds >= self.seconds
        return phase_step >= self.steps

    def lr(self, phase_step: int, phase_seconds: float) -> float:
        if self.seconds:
            return lr_at_time(phase_seconds, self.seconds, self.warmup_seconds, self.peak_lr)
        return lr_at(phase_step, self.steps, self.warmup_steps, self.peak_lr)


def plan_phases(
    phases: list[PhaseConfig], global_batch: int, steps_override: int = 0
) -> list[PhasePlan]:
    if not phases:
        raise UserError("a run needs at least one phase")
    plans = []
    for phase in phases:
        if not 0.0 <= phase.mask_ratio < 1.0:
            raise UserError(f"phase {phase.name}: mask_ratio must be in [0, 1)")
        if phase.seconds < 0 or phase.warmup_seconds < 0:
            raise UserError(f"phase {phase.name}: seconds and warmup_seconds must be >= 0")
        if phase.views < 1:
            raise UserError(f"phase {phase.name}: views must be >= 1")
        if phase.image_size < 0:
            raise UserError(f"phase {phase.name}: image_size must be >= 0 (0: the model's)")
        peak_lr = scaled_lr(phase.base_lr, global_batch)
        if phase.seconds and not steps_override:
            if phase.warmup_seconds > phase.seconds:
                raise UserError(f"phase {phase.name}: warmup_seconds exceeds seconds")
            plans.append(
                PhasePlan(
                    phase.name,
                    phase.mask_ratio,
                    0,
                    0,
                    peak_lr,
                    phase.seconds,
                    phase.warmup_seconds,
                    phase.views,
                    phase.image_size,
                )
            )
            continue
        steps = steps_override or max(1, phase.samples // global_batch)
        warmup = 0 if steps_override else min(steps, phase.warmup_samples // global_batch)
        plans.append(
            PhasePlan(
                phase.name,
                phase.mask_ratio,
                steps,
                warmup,
                peak_lr,
                views=phase.views,
                image_size=phase.image_size,
            )
        )
    return plans
