"""From the runs' evaluation points to the experiment's tables and verdicts (pure functions).

A run record (runner.py): arm, seed, mask_ratio, batch_size, unmasked_tuning, budget_s, and
points: one per evaluated checkpoint, oldest first, with train_seconds, samples_seen and
metrics keyed TASK:METRIC.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample standard deviation over seeds (nan for one seed)
    n: int

    @property
    def stderr(self) -> float:
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan


def stat(values: list[float]) -> Stat:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return Stat(math.nan, math.nan, 0)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Stat(statistics.fmean(values), std, len(values))


def runs_by_arm(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by arm, arms in the order they first appear (the config's order)."""
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["arm"], []).append(run)
    return grouped


def final_metric(run: dict, key: str) -> float:
    return run["points"][-1]["metrics"].get(key, math.nan)


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    mask_ratio: float
    batch_size: int
    unmasked_tuning: bool
    seeds: int
    train_seconds: Stat
    samples_seen: Stat
    steps: Stat  # optimizer steps taken in the budget
    metrics: dict[str, Stat]  # TASK:METRIC -> over seeds, at each run's final point
    views: int = 1
    image_size: int = 0  # pre-training image size (0: the model's)


def summarise(runs: list[dict], keys: list[str]) -> list[ArmSummary]:
    summaries = []
    for arm, arm_runs in runs_by_arm(runs).items():
        first = arm_runs[0]
        summaries.append(
            ArmSummary(
                arm=arm,
                mask_ratio=first["mask_ratio"],
                batch_size=first["batch_size"],
                unmasked_tuning=first["unmasked_tuning"],
                seeds=len(arm_runs),
                train_seconds=stat([r["points"][-1]["train_seconds"] for r in arm_runs]),
                samples_seen=stat([r["points"][-1]["samples_seen"] for r in arm_runs]),
                steps=stat([r["points"][-1].get("step") or math.nan for r in arm_runs]),
                metrics={k: stat([final_metric(r, k) for r in arm_runs]) for k in keys},
                views=first.get("views", 1),
                image_size=first.get("image_size", 0),
            )
        )
    return summaries


def curve(arm_runs: list[dict], key: str, x: str = "train_seconds") -> list[tuple[float, Stat]]:
    """An arm's metric against ``x`` (train_seconds or samples_seen): the i-th evaluation point
    of every seed averaged together (the seeds' points fall at the same shares of the budget)."""
    count = min(len(r["points"]) for r in arm_runs)
    return [
        (
            statistics.fmean(r["points"][i][x] for r in arm_runs),
            stat([r["points"][i]["metrics"].get(key, math.nan) for r in arm_runs]),
        )
        for i in range(count)
    ]


def chance_level(runs: list[dict], key: str) -> float:
    chances = [r["points"][-1].get("chance", {}).get(key) for r in runs]
    chances = [c for c in chances if c is not None]
    return max(chances) if chances else 0.0


def near_chance(value: Stat, chance: float) -> bool:
    """Below twice the chance level: a model that has learned next to nothing of the task."""
    return value.mean < 2 * chance


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test of an arm against a baseline over seeds (unequal variances, the
    Welch–Satterthwaite degrees of freedom, two-sided at 5%)."""

    arm: str
    baseline: str
    difference: float  # arm − baseline, in metric units
    stderr: float  # of the difference (Welch), nan with one seed on either side
    both_near_chance: bool = False  # then any difference is noise, whatever the error bars
    df: float = math.nan  # Welch–Satterthwaite degrees of freedom
    t: float = math.nan
    p_value: float = math.nan  # two-sided
    critical_t: float = math.nan  # |t| beyond this: p < 0.05 at ``df``
    effect_size: float = math.nan  # Hedges' g: the difference in pooled standard deviations

    @property
    def outcome(self) -> str:
        """better / worse when Welch's test rejects equal means at 5%, else tie; undecided
        without error bars; a tie whenever both sides are near chance."""
        if self.both_near_chance:
            return "tie"
        if math.isnan(self.p_value):
            return "undecided"
        if self.p_value < 0.05:
            return "better" if self.difference > 0 else "worse"
        return "tie"


def welch(a: Stat, b: Stat) -> tuple[float, float, float, float, float]:
    """Welch's t-test from two samples' means, standard deviations and sizes: (stderr, df, t,
    two-sided p, critical |t| at 5%). All nan when a side has a single value."""
    from scipy import stats as scipy_stats

    nan5 = (math.nan,) * 5
    if a.n < 2 or b.n < 2:
        return nan5
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    stderr = math.sqrt(va + vb)
    difference = a.mean - b.mean
    if stderr == 0:  # identical seeds on both sides: certain, whatever the df
        p = 1.0 if difference == 0 else 0.0
        return 0.0, math.inf, math.copysign(math.inf, difference) if difference else 0.0, p, 0.0
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    t = difference / stderr
    p = 2 * scipy_stats.t.sf(abs(t), df)
    return stderr, df, t, p, float(scipy_stats.t.ppf(0.975, df))


def hedges_g(a: Stat, b: Stat) -> float:
    if a.n < 2 or b.n < 2:
        return math.nan
    pooled = math.sqrt(((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / (a.n + b.n - 2))
    if pooled == 0:
        return math.nan
    correction = 1 - 3 / (4 * (a.n + b.n) - 9)  # small-sample bias of Cohen's d
    return (a.mean - b.mean) / pooled * correction


def compare(arm: ArmSummary, baseline: ArmSummary, key: str, chance: float = 0.0) -> Comparison:
    a, b = arm.metrics[key], baseline.metrics[key]
    stderr, df, t, p, critical = welch(a, b)
    noise = chance > 0 and near_chance(a, chance) and near_chance(b, chance)
    return Comparison(
        arm.arm, baseline.arm, a.mean - b.mean, stderr, noise, df, t, p, critical, hedges_g(a, b)
    )


def _plain_clip(summaries: list[ArmSummary]) -> ArmSummary | None:
    return next(
        (
            s
            for s in summaries
            if s.mask_ratio == 0 and not s.unmasked_tuning and s.views == 1 and not s.image_size
        ),
        None,
    )


def comparisons(
    summaries: list[ArmSummary], key: str, chance: float = 0.0
) -> dict[str, list[Comparison]]:
    """Every other arm against the unmasked baseline (the first plain CLIP arm: no masking, no
    tuning, one view at full size), and each +tuning arm against the same ratio without
    tuning."""
    baseline = _plain_clip(summaries)
    versus_clip = []
    if baseline is not None:
        versus_clip = [compare(s, baseline, key, chance) for s in summaries if s is not baseline]
    versus_untuned = []
    for tuned in (s for s in summaries if s.unmasked_tuning):
        untuned = next(
            (
                s
                for s in summaries
                if s.mask_ratio == tuned.mask_ratio
                and not s.unmasked_tuning
                and s.batch_size == tuned.batch_size
            ),
            None,
        )
        if untuned is not None:
            versus_untuned.append(compare(tuned, untuned, key, chance))
    return {"versus_unmasked": versus_clip, "tuning": versus_untuned}


def verdict(versus_unmasked: list[Comparison], budget: str = "training time") -> str:
    """One sentence on whether FLIP (or another way of spending the budget) beat CLIP at equal
    ``budget`` here."""
    if not versus_unmasked:
        return "no arm was compared with plain unmasked CLIP"
    outcomes = {c.outcome for c in versus_unmasked}
    winners = [c.arm for c in versus_unmasked if c.outcome == "better"]
    if winners:
        return f"FLIP beat CLIP at equal {budget}: {', '.join(winners)} scored higher"
    if outcomes == {"worse"}:
        return f"CLIP beat FLIP at equal {budget}: every other arm scored lower"
    if "undecided" in outcomes:
        return "undecided: one seed gives no error bars"
    losers = [c.arm for c in versus_unmasked if c.outcome == "worse"]
    tail = f" ({', '.join(losers)} scored lower)" if losers else ""
    return f"FLIP did not beat CLIP at equal {budget}: no other arm scored higher" + tail


def budget_use(summaries: list[ArmSummary]) -> list[str]:
    """How each masked arm spent the same time, against the unmasked baseline: samples seen and
    optimizer steps taken (a larger batch sees more samples in fewer steps)."""
    baseline = _plain_clip(summaries)
    if baseline is None:
        return []
    lines = []
    for s in summaries:
        if s is baseline:
            continue
        samples = s.samples_seen.mean / baseline.samples_seen.mean
        steps = s.steps.mean / baseline.steps.mean
        lines.append(
            f"{s.arm}: {samples:.2f}× {baseline.arm}'s samples in {steps:.2f}× its optimizer "
            f"steps (batch {s.batch_size} vs {baseline.batch_size})"
        )
    return lines
