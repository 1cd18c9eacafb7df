"""The experiment's outputs: results table, masking-ratio table, plots and a write-up, all
generated from the numbers."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from evaluation.plots import _png, _pyplot
from experiment.analysis import (
    ArmSummary,
    Comparison,
    Stat,
    budget_use,
    chance_level,
    comparisons,
    curve,
    near_chance,
    runs_by_arm,
    summarise,
    verdict,
)
from experiment.config import ExperimentConfig
from flipcommon.storage import write_json_atomic


def pct(s: Stat) -> str:
    if math.isnan(s.mean):
        return "–"
    return f"{100 * s.mean:.2f}" if math.isnan(s.std) else f"{100 * s.mean:.2f} ± {100 * s.std:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(summaries: list[ArmSummary], keys: list[str]) -> str:
    header = ["arm", "mask", "batch", "seeds", "samples seen", "steps", "train s", *keys]
    rows = [
        [
            s.arm,
            f"{s.mask_ratio:.0%}"
            + (f" ×{s.views} views" if s.views > 1 else "")
            + (f" at {s.image_size} px" if s.image_size else ""),
            str(s.batch_size),
            str(s.seeds),
            f"{s.samples_seen.mean:,.0f}",
            f"{s.steps.mean:.0f}",
            f"{s.train_seconds.mean:.0f}",
            *(pct(s.metrics[k]) for k in keys),
        ]
        for s in summaries
    ]
    return _table(header, rows)


def masking_table(
    summaries: list[ArmSummary], flops: dict[tuple[float, int], dict], key: str
) -> str:
    """The miniature of the paper's Table 1a: per mask ratio, compute per sample, time per
    sample, samples in the budget, accuracy without and with unmasked tuning (arms of one view
    at full size; the others are in the results table)."""
    summaries = [s for s in summaries if s.views == 1 and s.image_size == 0]
    header = [
        "mask ratio",
        "batch",
        "GFLOPs/sample (image tower)",
        "GFLOPs/sample (step)",
        "ms/sample (measured)",
        "samples in budget",
        f"{key} no tuning",
        f"{key} + tuning",
    ]
    rows = []
    for ratio in sorted({s.mask_ratio for s in summaries}):
        plain = next(
            (s for s in summaries if s.mask_ratio == ratio and not s.unmasked_tuning), None
        )
        tuned = next((s for s in summaries if s.mask_ratio == ratio and s.unmasked_tuning), None)
        ref = plain or tuned
        count = flops.get((ratio, 0), {})
        ms = 1000 * ref.train_seconds.mean / ref.samples_seen.mean
        rows.append(
            [
                f"{ratio:.0%}",
                str(ref.batch_size),
                f"{count.get('image', math.nan) / 1e9:.3f}",
                f"{count.get('total', math.nan) / 1e9:.3f}",
                f"{ms:.2f}",
                f"{ref.samples_seen.mean:,.0f}",
                pct(plain.metrics[key]) if plain else "–",
                pct(tuned.metrics[key]) if tuned else "–",
            ]
        )
    return _table(header, rows)


def comparison_table(items: list[Comparison]) -> str:
    """Welch's t-test of each comparison, with its degrees of freedom, critical value, p-value
    and effect size (figures in points of the metric)."""
    header = ["comparison", "difference", "std. error", "Welch t", "df", "critical t", "p"]
    header += ["Hedges' g", "outcome"]
    rows = []
    for c in items:
        tested = not math.isnan(c.p_value)
        figures = (
            [
                f"{100 * c.stderr:.2f}",
                f"{c.t:.2f}",
                f"{c.df:.1f}",
                f"{c.critical_t:.2f}",
                f"{c.p_value:.3f}",
                f"{c.effect_size:.2f}",
            ]
            if tested
            else ["–"] * 6
        )
        rows.append([f"{c.arm} vs {c.baseline}", f"{100 * c.difference:+.2f}", *figures, c.outcome])
    return _table(header, rows)


def plot_curves(runs: list[dict], key: str, x: str, xlabel: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, arm_runs in runs_by_arm(runs).items():
        points = curve(arm_runs, key, x)
        xs = [p[0] for p in points]
        means = [100 * p[1].mean for p in points]
        stds = [0.0 if math.isnan(p[1].std) else 100 * p[1].std for p in points]
        style = "--" if arm_runs[0]["unmasked_tuning"] else "-"
        line = ax.plot(xs, means, style, marker="o", label=arm)[0]
        ax.fill_between(
            xs,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
    chance = runs[0]["points"][-1].get("chance", {}).get(key)
    if chance is not None:
        ax.axhline(100 * chance, color="black", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(f"{key} vs {xlabel} (mean ± std over seeds)")
    ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def write_outputs(
    config: ExperimentConfig, runs: list[dict], flops: dict[tuple[float, int], dict], model: str
) -> list[str]:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = [config.headline, *[k for k in config.table_metrics if k != config.headline]]
    summaries = summarise(runs, keys)
    chance = chance_level(runs, config.headline)
    compared = comparisons(summaries, config.headline, chance)
    files = {
        "results.md": results_table(summaries, keys),
        "masking_table.md": masking_table(summaries, flops, config.headline),
    }
    for name, text in files.items():
        (out / name).write_text(text + "\n")
    (out / "accuracy_vs_time.png").write_bytes(
        plot_curves(runs, config.headline, "train_seconds", "training time (s)")
    )
    (out / "accuracy_vs_samples.png").write_bytes(
        plot_curves(runs, config.headline, "samples_seen", "samples seen")
    )
    if all("gflops" in p for r in runs for p in r["points"]):
        (out / "accuracy_vs_compute.png").write_bytes(
            plot_curves(runs, config.headline, "gflops", "training compute (counted GFLOPs)")
        )
    (out / "writeup.md").write_text(writeup(config, summaries, compared, files, model, chance))
    write_json_atomic(
        str(out / "results.json"),
        {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "headline": config.headline,
            "flops_per_sample": {
                f"{ratio}" + (f"@{size}px" if size else ""): v for (ratio, size), v in flops.items()
            },
            "verdict": verdict(compared["versus_unmasked"], _budget_word(config)),
            "runs": runs,
        },
    )
    names = [*files, "accuracy_vs_time.png", "accuracy_vs_samples.png", "writeup.md"]
    if (out / "accuracy_vs_compute.png").exists():
        names.append("accuracy_vs_compute.png")
    return [str(out / n) for n in [*names, "results.json"]]


def writeup(
    config: ExperimentConfig,
    summaries: list[ArmSummary],
    compared: dict[str, list[Comparison]],
    tables: dict[str, str],
    model: str,
    chance: float,
) -> str:
    at_chance = [s.arm for s in summaries if near_chance(s.metrics[config.headline], chance)]
    chance_line = (
        f"- Near chance (below twice the chance level of {100 * chance:.2f}%): "
        f"{', '.join(at_chance)}. A comparison between two such arms is a tie, whatever its "
        "error bars: neither has learned the task."
        if at_chance
        else f"- Every arm ends clearly above twice the chance level ({100 * chance:.2f}%)."
    )
    lines = [
        "# FLIP vs CLIP at equal training " + ("compute" if config.budget_gflops > 0 else "time"),
        "",
        f"Generated {dt.date.today().isoformat()} by `make experiment` from "
        f"{config.output_dir}/results.json.",
        "",
        f"**Result: {verdict(compared['versus_unmasked'], _budget_word(config))}** "
        "(headline metric "
        f"`{config.headline}`, at the end of each run; a difference whose Welch's t-test over "
        "seeds gives p < 0.05 counts as better or worse, others as a tie).",
        "",
        *_setup_lines(config, model),
        "## Results (final point, mean ± std over seeds, %)",
        "",
        tables["results.md"],
        "",
        "## Masking ratio (miniature Table 1a)",
        "",
        tables["masking_table.md"],
        "",
        "FLOPs are counted by torch's FLOP counter on one training step (forward and backward) "
        "of the real model; time per sample is the arms' own training clock over their samples.",
        "",
        "## How the arms spent the budget",
        "",
        *(f"- {line}" for line in budget_use(summaries)),
        "",
        "## Comparisons",
        "",
        comparison_table(compared["versus_unmasked"] + compared["tuning"]),
        "",
        chance_line,
        "",
        *(
            ["![accuracy vs training compute](accuracy_vs_compute.png)"]
            if config.budget_gflops > 0
            else []
        ),
        "![accuracy vs training time](accuracy_vs_time.png)",
        "![accuracy vs samples seen](accuracy_vs_samples.png)",
        "",
        *READING,
    ]
    return "\n".join(lines)


READING = [
    "## Reading it",
    "",
    "- The masked arms see more samples in the same time; whether that buys accuracy "
    "depends on how much of a step the image tower is (the text tower and the optimizer "
    "update cost the same at every ratio) and on how much data there is to see.",
    "- At this scale a run is minutes on a CPU and the corpus is a few thousand pairs, so "
    "differences of a fraction of a point are within seed noise; the paper's setting "
    "(400M pairs, large ViTs, GPUs) is where its claim was made.",
    "",
]


def _budget_word(config: ExperimentConfig) -> str:
    return "training compute" if config.budget_gflops > 0 else "training time"


def _budget_line(config: ExperimentConfig) -> str:
    if config.budget_gflops > 0:
        return (
            f"- Every arm trains on {config.budget_gflops:g} GFLOPs of counted training compute "
            "(forward + backward FLOPs per sample counted on the model at the phase's mask "
            "ratio and image size, × its views, × samples, in whole batches), warmup and cosine "
            "decay over its samples; "
        )
    return (
        f"- Every arm trains for {config.budget_s:g} s on the trainer's clock (the step loop; "
        "checkpoint writes excluded), with warmup and cosine decay on that clock; "
    )


def _setup_lines(config: ExperimentConfig, model: str) -> list[str]:
    return [
        "## Setup",
        "",
        f"- Model `{model}`, recipe `{config.train_config}` "
        f"{' '.join(config.train_overrides)}; suite `{config.eval_config}`.",
        _budget_line(config) + f"{len(config.seeds)} seed(s) per arm, seeds in the outer loop.",
        f"- Batch {config.base_batch} × the arm's scale (the paper's Table 1a: 1×, 2×, 4× for "
        f"0%, 50%, 75%); lr = {config.base_lr:g} × batch / 256.",
        f"- +tuning arms spend the last {config.tuning_fraction:.0%} of the same budget "
        f"unmasked at full size (lr {config.tuning_base_lr:g} × batch / 256).",
        f"- Evaluated at {config.eval_points} equal shares of the budget and at phase ends.",
        "",
    ]
