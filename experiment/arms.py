"""Turn an arm of the experiment into a training config: the same recipe, the arm's masking,
batch and phases, all on a clock of the same length."""

from __future__ import annotations

from dataclasses import replace

from experiment.config import ArmConfig, ExperimentConfig
from flipcommon.errors import UserError
from flipcommon.storage import url_join
from training.config import PhaseConfig, TrainConfig


class ExperimentConfigError(UserError, ValueError):
    """An experiment config, or an output folder, that cannot be run as asked."""


def arm_dir(config: ExperimentConfig, arm: ArmConfig, seed: int) -> str:
    return url_join(config.output_dir, "arms", arm.name, f"seed{seed}")


# counted training FLOPs of one sample by (mask ratio, image size) (experiment.flops, "total")
FlopsPerSample = dict[tuple[float, int], float]


def compute_budget(config: ExperimentConfig) -> bool:
    """True when arms share a budget of counted compute rather than of training time."""
    return config.budget_gflops > 0


def _phases(
    config: ExperimentConfig, arm: ArmConfig, pretrain: dict, tuning: dict | None
) -> list[PhaseConfig]:
    """Pre-training at the arm's masking, then (``tuning`` given) unmasked tuning; the
    lengths come as PhaseConfig fields: seconds or samples, with their warmup."""
    phases = [
        PhaseConfig(
            name="pretrain",
            mask_ratio=arm.mask_ratio,
            base_lr=config.base_lr,
            views=arm.views,
            image_size=arm.image_size,
            **pretrain,
        )
    ]
    if tuning:
        phases.append(
            PhaseConfig(
                name="unmasked_tuning", mask_ratio=0.0, base_lr=config.tuning_base_lr, **tuning
            )
        )
    return phases


def arm_phases_by_compute(
    config: ExperimentConfig, arm: ArmConfig, flops: FlopsPerSample
) -> list[PhaseConfig]:
    """The same split as by time, in samples: a phase at mask ratio r (and image size s) gets
    its share of ``budget_gflops`` divided by the counted FLOPs of one sample at (r, s) (times
    its views), in whole batches, so every arm spends the budget to within one batch per phase,
    whatever the machine's speed."""
    batch = config.base_batch * arm.batch_scale
    budget = config.budget_gflops * 1e9
    tuning = budget * config.tuning_fraction if arm.unmasked_tuning else 0.0

    def length(flops_share: float, per_sample: float) -> dict:
        samples = max(1, int(flops_share / per_sample / batch)) * batch
        return {"samples": samples, "warmup_samples": int(samples * config.warmup_fraction)}

    pretrain = length(budget - tuning, flops[(arm.mask_ratio, arm.image_size)] * arm.views)
    return _phases(config, arm, pretrain, length(tuning, flops[(0.0, 0)]) if tuning else None)


def phase_gflops(phases: list[PhaseConfig], flops: FlopsPerSample, samples_seen: int) -> float:
    """Counted training compute after ``samples_seen`` samples of a run of these phases (a
    pair seen in ``views`` views costs that many samples)."""
    total, start = 0.0, 0
    for phase in phases:
        done = min(max(samples_seen - start, 0), phase.samples)
        total += done * flops[(phase.mask_ratio, phase.image_size)] * phase.views
        start += phase.samples
    return total / 1e9


def arm_phases(config: ExperimentConfig, arm: ArmConfig) -> list[PhaseConfig]:
    """Pre-training for the budget, or for all but tuning_fraction of it and then unmasked
    tuning for the rest. Lengths are on the trainer's clock, so every arm trains as long."""
    tuning_s = config.budget_s * config.tuning_fraction if arm.unmasked_tuning else 0.0

    def length(seconds: float) -> dict:
        return {"seconds": seconds, "warmup_seconds": seconds * config.warmup_fraction}

    pretrain = length(config.budget_s - tuning_s)
    return _phases(config, arm, pretrain, length(tuning_s) if tuning_s else None)


def flops_settings(config: ExperimentConfig) -> list[tuple[float, int]]:
    """The (mask ratio, image size) pairs whose compute the arms need counted."""
    return sorted({(a.mask_ratio, a.image_size) for a in config.arms} | {(0.0, 0)})


def arm_train_config(
    base: TrainConfig,
    config: ExperimentConfig,
    arm: ArmConfig,
    seed: int,
    flops: FlopsPerSample | None = None,
) -> TrainConfig:
    batch = config.base_batch * arm.batch_scale
    if compute_budget(config):
        if flops is None:
            raise ExperimentConfigError("budget_gflops needs the counted FLOPs per sample")
        phases = arm_phases_by_compute(config, arm, flops)
        steps = sum(p.samples for p in phases) // batch
        # evaluation points at equal shares of the compute: every so many steps
        every_steps, every_s = max(1, steps // config.eval_points), 0.0
    else:
        phases = arm_phases(config, arm)
        every_steps, every_s = 0, config.budget_s / config.eval_points
    return replace(
        base,
        run_dir=url_join(arm_dir(config, arm, seed), "train"),
        phases=phases,
        batch_size=batch,
        seed=seed,
        checkpoint_every_steps=every_steps,
        checkpoint_every_s=every_s,
        resume=True,  # a rerun of the experiment continues an arm a crash cut short
    )


def validate(config: ExperimentConfig) -> None:
    if config.budget_s <= 0 or config.eval_points < 1:
        raise ExperimentConfigError("budget_s must be > 0 and eval_points >= 1")
    if config.budget_gflops < 0:
        raise ExperimentConfigError("budget_gflops must be >= 0 (0: budget_s of time)")
    if not config.seeds or not config.arms:
        raise ExperimentConfigError("the experiment needs at least one seed and one arm")
    names = [a.name for a in config.arms]
    if len(set(names)) != len(names):
        raise ExperimentConfigError(f"arm names must be unique: {names}")
    for arm in config.arms:
        if not 0.0 <= arm.mask_ratio < 1.0 or arm.batch_scale < 1 or arm.views < 1:
            raise ExperimentConfigError(
                f"arm {arm.name}: mask_ratio in [0, 1), batch_scale >= 1 and views >= 1"
            )
        if arm.image_size < 0:
            raise ExperimentConfigError(f"arm {arm.name}: image_size >= 0 (0: the model's)")
        if "/" in arm.name or not arm.name:
            raise ExperimentConfigError(
                f"arm name {arm.name!r} names a folder: no '/' and not empty"
            )
    if not 0.0 < config.tuning_fraction < 1.0:
        raise ExperimentConfigError("tuning_fraction must be in (0, 1)")
    if config.keep_checkpoints not in ("final", "all"):
        raise ExperimentConfigError("keep_checkpoints is final or all")
    if ":" not in config.headline:
        raise ExperimentConfigError("headline is TASK:METRIC, e.g. emoji_heldout/name:top1")
