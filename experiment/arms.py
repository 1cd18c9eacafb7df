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


def arm_phases(config: ExperimentConfig, arm: ArmConfig) -> list[PhaseConfig]:
    """Pre-training for the budget, or for all but tuning_fraction of it and then unmasked
    tuning for the rest. Lengths are on the trainer's clock, so every arm trains as long."""
    tuning_s = config.budget_s * config.tuning_fraction if arm.unmasked_tuning else 0.0
    pretrain_s = config.budget_s - tuning_s
    phases = [
        PhaseConfig(
            name="pretrain",
            mask_ratio=arm.mask_ratio,
            base_lr=config.base_lr,
            seconds=pretrain_s,
            warmup_seconds=pretrain_s * config.warmup_fraction,
        )
    ]
    if tuning_s:
        phases.append(
            PhaseConfig(
                name="unmasked_tuning",
                mask_ratio=0.0,
                base_lr=config.tuning_base_lr,
                seconds=tuning_s,
                warmup_seconds=tuning_s * config.warmup_fraction,
            )
        )
    return phases


def arm_train_config(
    base: TrainConfig, config: ExperimentConfig, arm: ArmConfig, seed: int
) -> TrainConfig:
    return replace(
        base,
        run_dir=url_join(arm_dir(config, arm, seed), "train"),
        phases=arm_phases(config, arm),
        batch_size=config.base_batch * arm.batch_scale,
        seed=seed,
        checkpoint_every_steps=0,
        checkpoint_every_s=config.budget_s / config.eval_points,
        resume=True,  # a rerun of the experiment continues an arm a crash cut short
    )


def validate(config: ExperimentConfig) -> None:
    if config.budget_s <= 0 or config.eval_points < 1:
        raise ExperimentConfigError("budget_s must be > 0 and eval_points >= 1")
    if not config.seeds or not config.arms:
        raise ExperimentConfigError("the experiment needs at least one seed and one arm")
    names = [a.name for a in config.arms]
    if len(set(names)) != len(names):
        raise ExperimentConfigError(f"arm names must be unique: {names}")
    for arm in config.arms:
        if not 0.0 <= arm.mask_ratio < 1.0 or arm.batch_scale < 1:
            raise ExperimentConfigError(
                f"arm {arm.name}: mask_ratio in [0, 1) and batch_scale >= 1"
            )
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
