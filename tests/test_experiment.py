"""make experiment: arms on an equal clock, the analysis and verdicts, and a miniature run of
the whole thing through its command line."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from experiment.analysis import (
    Stat,
    budget_use,
    comparisons,
    curve,
    stat,
    summarise,
    verdict,
)
from experiment.arms import arm_train_config, phase_gflops, validate
from experiment.config import ArmConfig, ExperimentConfig
from training.config import TrainConfig
from training.phases import plan_phases


def test_every_arm_trains_for_the_same_budget():
    config = ExperimentConfig(budget_s=100, tuning_fraction=0.1, base_batch=32, eval_points=4)
    base = TrainConfig()
    for arm in config.arms:
        train = arm_train_config(base, config, arm, seed=3)
        assert sum(p.seconds for p in train.phases) == pytest.approx(100)
        assert train.batch_size == 32 * arm.batch_scale and train.seed == 3
        assert train.phases[0].mask_ratio == arm.mask_ratio
        assert train.checkpoint_every_s == 25 and train.resume
        assert arm.name in train.run_dir and "seed3" in train.run_dir
        plans = plan_phases(train.phases, train.batch_size)
        assert all(p.seconds and p.warmup_seconds < p.seconds for p in plans)
        if arm.unmasked_tuning:
            assert [p.mask_ratio for p in train.phases][1] == 0.0
            assert train.phases[1].seconds == pytest.approx(10)
        else:
            assert len(train.phases) == 1
    assert [a.batch_scale for a in config.arms] == [1, 2, 2, 4, 4]  # the paper's Table 1a


def test_the_full_experiment_holds_the_default_arms_on_the_same_budget():
    from flipcommon.config import load_config

    default = load_config(ExperimentConfig, "configs/experiment/flip_vs_clip.yaml")
    full = load_config(ExperimentConfig, "configs/experiment/flip_vs_clip_full.yaml")
    for config in (default, full):
        validate(config)
    assert default.budget_gflops > 0 and full.budget_gflops == default.budget_gflops
    assert all(arm in full.arms for arm in default.arms) and len(full.arms) > len(default.arms)
    same = ("train_config", "train_overrides", "eval_config", "seeds", "base_batch", "base_lr")
    assert all(getattr(full, key) == getattr(default, key) for key in same)
    assert full.output_dir != default.output_dir  # a rerun of either resumes its own arms


# counted training FLOPs per sample by (mask ratio, image size), shaped like a small ViT's
FLOPS = {(0.0, 0): 1.0e8, (0.5, 0): 6.0e7, (0.75, 0): 4.0e7, (0.0, 32): 3.5e7}


def test_a_compute_budget_gives_every_arm_the_same_counted_flops():
    """With budget_gflops each phase runs whole batches of samples, as many as its share of
    the compute buys at its mask ratio: every arm spends the budget to within one batch of its
    costliest phase, with no clock in it."""
    config = ExperimentConfig(budget_gflops=2000, tuning_fraction=0.1, base_batch=8, eval_points=4)
    base = TrainConfig()
    for arm in config.arms:
        train = arm_train_config(base, config, arm, seed=0, flops=FLOPS)
        batch = train.batch_size
        total = sum(p.samples for p in train.phases)
        spent = phase_gflops(train.phases, FLOPS, total)
        assert 2000 - batch * FLOPS[(0.0, 0)] / 1e9 * 2 < spent <= 2000
        assert all(p.samples % batch == 0 and not p.seconds for p in train.phases)
        assert train.checkpoint_every_s == 0
        assert train.checkpoint_every_steps == total // batch // 4
        if arm.unmasked_tuning:
            tuning = train.phases[1]
            assert tuning.mask_ratio == 0.0
            assert tuning.samples * FLOPS[(0.0, 0)] / 1e9 == pytest.approx(200, abs=batch / 10)
        assert train == arm_train_config(base, config, arm, seed=0, flops=FLOPS)
    # halfway through the first phase, half of that phase's compute
    flip75 = arm_train_config(base, config, config.arms[3], seed=0, flops=FLOPS)
    half = flip75.phases[0].samples // 2
    assert phase_gflops(flip75.phases, FLOPS, half) == pytest.approx(half * 4e7 / 1e9)
    with pytest.raises(ValueError, match="FLOPs per sample"):
        arm_train_config(base, config, config.arms[0], seed=0)
    # two views of each pair cost twice a pair: half the pairs for the same compute
    two_views = ArmConfig("flip50x2", mask_ratio=0.5, batch_scale=1, views=2)
    one_view = ArmConfig("flip50", mask_ratio=0.5, batch_scale=1)
    phase_2v = arm_train_config(base, config, two_views, 0, FLOPS).phases[0]
    phase_1v = arm_train_config(base, config, one_view, 0, FLOPS).phases[0]
    assert phase_2v.views == 2 and abs(2 * phase_2v.samples - phase_1v.samples) <= 16
    assert phase_gflops([phase_2v], FLOPS, phase_2v.samples) == pytest.approx(
        phase_gflops([phase_1v], FLOPS, phase_1v.samples), rel=0.01
    )
    # pre-training at a lower resolution buys samples at its own counted cost; the tuning
    # phase runs at full size
    low_res = ArmConfig("clip32+tuning", batch_scale=2, image_size=32, unmasked_tuning=True)
    phases = arm_train_config(base, config, low_res, 0, FLOPS).phases
    assert [(p.mask_ratio, p.image_size) for p in phases] == [(0.0, 32), (0.0, 0)]
    assert phases[0].samples * 3.5e7 / 1e9 == pytest.approx(1800, abs=16 * 3.5e7 / 1e9)
    assert phase_gflops(phases, FLOPS, sum(p.samples for p in phases)) <= 2000


def test_the_compute_curve_is_drawn_when_points_carry_compute(tmp_path):
    from experiment.report import write_outputs

    runs = _runs([0.1, 0.2], [0.3, 0.3], [0.4, 0.5])
    for run in runs:
        for point in run["points"]:
            point["gflops"] = point["samples_seen"] * 1e-3
            point["phase"] = "pretrain"
    config = ExperimentConfig(
        output_dir=str(tmp_path), budget_gflops=2, headline="t:m", table_metrics=[]
    )
    flops = {r: {"image": f / 2, "total": f} for r, f in FLOPS.items()}
    written = write_outputs(config, runs, flops, "flip_micro")
    assert (tmp_path / "accuracy_vs_compute.png").read_bytes()[:4] == b"\x89PNG"
    assert str(tmp_path / "accuracy_vs_compute.png") in written
    writeup = (tmp_path / "writeup.md").read_text()
    assert "equal training compute" in writeup and "2 GFLOPs of counted" in writeup


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budget_s": 0}, "budget_s"),
        ({"budget_gflops": -1}, "budget_gflops"),
        ({"seeds": []}, "seed"),
        ({"arms": [ArmConfig("a"), ArmConfig("a")]}, "unique"),
        ({"arms": [ArmConfig("a/b")]}, "folder"),
        ({"arms": [ArmConfig("a", mask_ratio=1.0)]}, "mask_ratio"),
        ({"arms": [ArmConfig("a", views=0)]}, "views"),
        ({"tuning_fraction": 1.0}, "tuning_fraction"),
        ({"headline": "top1"}, "TASK:METRIC"),
    ],
)
def test_bad_experiment_configs_are_refused(change, message):
    config = ExperimentConfig(**change)
    with pytest.raises(ValueError, match=message):
        validate(config)


def _run(arm: str, seed: int, finals: list[float], ratio=0.0, tuning=False) -> dict:
    points = [
        {
            "train_seconds": 10.0 * (i + 1),
            "samples_seen": 100 * (i + 1) * (2 if ratio else 1),
            "step": 10 * (i + 1),
            "metrics": {"t:m": v},
        }
        for i, v in enumerate(finals)
    ]
    return {
        "arm": arm,
        "seed": seed,
        "mask_ratio": ratio,
        "batch_size": 8,
        "unmasked_tuning": tuning,
        "points": points,
    }


def _runs(clip: list[float], flip: list[float], tuned: list[float]) -> list[dict]:
    runs = []
    for seed, (c, f, t) in enumerate(zip(clip, flip, tuned, strict=True)):
        runs += [
            _run("clip", seed, [0.0, c]),
            _run("flip50", seed, [0.0, f], 0.5),
            _run("flip50+tuning", seed, [0.0, t], 0.5, True),
        ]
    return runs


def test_summary_is_mean_and_std_over_seeds_at_the_final_point():
    summaries = summarise(_runs([0.1, 0.2, 0.3], [0.3, 0.3, 0.3], [0.4, 0.5, 0.6]), ["t:m"])
    assert [s.arm for s in summaries] == ["clip", "flip50", "flip50+tuning"]
    clip = summaries[0].metrics["t:m"]
    assert clip.mean == pytest.approx(0.2) and clip.std == pytest.approx(0.1) and clip.n == 3
    assert summaries[1].metrics["t:m"].std == pytest.approx(0.0)
    assert stat([0.5]).n == 1 and math.isnan(stat([0.5]).std) and math.isnan(Stat(1, 0, 1).stderr)
    assert budget_use(summaries)[0].startswith("flip50: 2.00× clip's samples in 1.00× its")


def test_verdict_states_whichever_way_the_result_falls():
    def outcome(clip, flip, tuned):
        summaries = summarise(_runs(clip, flip, tuned), ["t:m"])
        return comparisons(summaries, "t:m")

    better = outcome([0.10, 0.11, 0.12], [0.20, 0.21, 0.22], [0.2, 0.2, 0.2])
    assert [c.outcome for c in better["versus_unmasked"]] == ["better", "better"]
    assert verdict(better["versus_unmasked"]).startswith("FLIP beat CLIP")
    worse = outcome([0.20, 0.21, 0.22], [0.10, 0.11, 0.12], [0.1, 0.1, 0.1])
    assert verdict(worse["versus_unmasked"]).startswith("CLIP beat FLIP")
    tie = outcome([0.10, 0.20, 0.15], [0.12, 0.18, 0.15], [0.11, 0.19, 0.15])
    assert {c.outcome for c in tie["versus_unmasked"]} == {"tie"}
    assert verdict(tie["versus_unmasked"]).startswith("FLIP did not beat CLIP")
    one_seed = outcome([0.1], [0.2], [0.3])
    assert verdict(one_seed["versus_unmasked"]).startswith("undecided")
    near_chance = comparisons(
        summarise(_runs([0.010, 0.011], [0.02, 0.021], [0.1, 0.1]), ["t:m"]), "t:m", chance=0.02
    )
    assert [c.outcome for c in near_chance["versus_unmasked"]] == ["tie", "better"]
    (tuning,) = better["tuning"]
    assert (tuning.arm, tuning.baseline) == ("flip50+tuning", "flip50")
    assert tuning.difference == pytest.approx(-0.01)


def test_welch_test_matches_scipys_own_on_the_seeds_values():
    """Our comparison works from each arm's mean, std and n; scipy's ttest_ind (Welch) from the
    raw values: the same t, p and degrees of freedom."""
    from scipy import stats as scipy_stats

    from experiment.analysis import hedges_g, welch

    clip, flip = [0.101, 0.118, 0.109], [0.131, 0.125, 0.142, 0.120]
    stderr, df, t, p, critical = welch(stat(flip), stat(clip))
    theirs = scipy_stats.ttest_ind(flip, clip, equal_var=False)
    assert t == pytest.approx(theirs.statistic) and p == pytest.approx(theirs.pvalue)
    assert df == pytest.approx(theirs.df)
    assert critical == pytest.approx(scipy_stats.t.ppf(0.975, theirs.df))
    assert (p < 0.05) == (abs(t) > critical)
    assert hedges_g(stat(flip), stat(clip)) > 1  # a large effect in pooled standard deviations
    assert all(math.isnan(x) for x in welch(stat([0.1]), stat(clip)))  # one seed: untestable


def test_curve_averages_the_seeds_point_by_point():
    runs = [_run("a", 0, [0.1, 0.3]), _run("a", 1, [0.3, 0.5])]
    points = curve(runs, "t:m")
    assert [x for x, _ in points] == [10.0, 20.0]
    assert [s.mean for _, s in points] == pytest.approx([0.2, 0.4])
    assert [x for x, _ in curve(runs, "t:m", "samples_seen")] == [100, 200]


def _experiment_cli(tmp_path, shard_set, demo_corpus_dir, tasks: list[dict], *overrides: str):
    """``python -m experiment`` on the micro model and the test shard set, evaluating ``tasks``
    of the held-out emoji; returns (argv, output folder)."""
    out = tmp_path / "experiment"
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({"demo_corpus_dir": str(demo_corpus_dir), "tasks": tasks}))
    argv = [
        sys.executable,
        "-m",
        "experiment",
        "configs/experiment/flip_vs_clip.yaml",
        f"output_dir={out}",
        f"eval_config={suite}",
        f"train_overrides=[data.shards={shard_set}, model.name=flip_micro, data.workers=0, "
        "data.shuffle_buffer=16]",
        "eval_points=2",
        *overrides,
    ]
    return argv, out


def _one_arm_on_compute(
    tmp_path, shard_set, demo_corpus_dir, budget: float, arm: str, *overrides: str
):
    """One seed of one arm on a budget of ``budget`` GFLOPs, evaluated by retrieval on the
    held-out emoji."""
    task = {"name": "emoji_r", "dataset": "emoji_heldout", "task": "retrieval", "limit": 64}
    return _experiment_cli(
        tmp_path,
        shard_set,
        demo_corpus_dir,
        [task],
        f"budget_gflops={budget}",
        "seeds=[0]",
        f"arms=[{arm}]",
        "headline=emoji_r:image_retrieval_recall@10",
        "table_metrics=[]",
        *overrides,
    )


@pytest.mark.slow
def test_make_experiment_in_miniature(tmp_path, shard_set, demo_corpus_dir):
    tasks = [
        {"name": "emoji", "dataset": "emoji_heldout", "task": "zeroshot_classification"},
        {"name": "emoji_r", "dataset": "emoji_heldout", "task": "retrieval"},
    ]
    args, out = _experiment_cli(
        tmp_path,
        shard_set,
        demo_corpus_dir,
        tasks,
        "budget_s=4",
        "budget_gflops=0",
        "base_batch=8",
        "seeds=[0, 1]",
        "arms=[{name: clip, mask_ratio: 0.0}, "
        "{name: flip75+tuning, mask_ratio: 0.75, batch_scale: 2, unmasked_tuning: true}]",
        "headline=emoji:top1",
        "table_metrics=[emoji_r:image_retrieval_recall@10]",
    )
    first = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in ("results.md", "masking_table.md", "writeup.md", "results.json"):
        assert (out / name).stat().st_size > 100, name
    for name in ("accuracy_vs_time.png", "accuracy_vs_samples.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4
    for run in results["runs"]:
        points = run["points"]
        assert len(points) >= 2  # halfway and at the end (+ the phase end of tuning arms)
        assert points[-1]["train_seconds"] >= 4.0
        assert [p["train_seconds"] for p in points] == sorted(p["train_seconds"] for p in points)
        assert 0.0 <= points[-1]["metrics"]["emoji:top1"] <= 1.0
        checkpoints = out / "arms" / run["arm"] / f"seed{run['seed']}" / "train" / "checkpoints"
        kept = [p for p in checkpoints.iterdir() if p.is_dir()]
        assert len(kept) == 1 and not (kept[0] / "train_state.pt").exists()
    assert {r["points"][-1]["phase"] for r in results["runs"]} == {"pretrain", "unmasked_tuning"}
    writeup = (out / "writeup.md").read_text()
    assert results["verdict"] in writeup and "Table 1a" in writeup
    # a rerun reuses the finished arms; a changed setup over them is refused
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before") == 4
    changed = subprocess.run([*args, "budget_s=5"], capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "another setup" in changed.stderr
    by_compute = subprocess.run(
        [*args, "budget_gflops=1"], capture_output=True, text=True, timeout=300
    )
    assert by_compute.returncode == 2 and "budget_gflops" in by_compute.stderr
    wider = [
        a[:-1] + ", data.crop_scale_min=0.5]" if a.startswith("train_overrides=") else a
        for a in args
    ]
    cropped = subprocess.run(wider, capture_output=True, text=True, timeout=300)
    assert cropped.returncode == 2 and "crop_scale_min" in cropped.stderr


@pytest.mark.slow
def test_an_arm_on_a_compute_budget_runs_its_counted_samples(tmp_path, shard_set, demo_corpus_dir):
    """Through the command line: an arm of two masked views with unmasked tuning, on a budget
    of counted GFLOPs; its points carry their compute, ending at the budget."""
    from experiment.flops import train_flops_per_sample

    per_sample = train_flops_per_sample("flip_micro", "openclip", [(0.0, 0), (0.5, 0)])
    batch = 8
    # about 6 steps of two half-masked views and 2 unmasked steps
    cost = {r: c["total"] for (r, _), c in per_sample.items()}
    budget = batch * (6 * 2 * cost[0.5] + 2 * cost[0.0]) / 1e9
    args, out = _one_arm_on_compute(
        tmp_path,
        shard_set,
        demo_corpus_dir,
        budget,
        "{name: flip50x2+tuning, mask_ratio: 0.5, views: 2, unmasked_tuning: true}",
        "tuning_fraction=0.25",
        f"base_batch={batch}",
    )
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["views"] == 2 and run["budget_gflops"] == pytest.approx(budget)
    folder = out / "arms" / "flip50x2+tuning" / "seed0"
    phases = yaml.safe_load((folder / "train_config.yaml").read_text())["phases"]
    assert [(p["mask_ratio"], p["views"]) for p in phases] == [(0.5, 2), (0.0, 1)]
    points = run["points"]
    assert points[-1]["samples_seen"] == sum(p["samples"] for p in phases)
    # the budget spent, to within one batch of each phase
    slack = batch * (2 * cost[0.5] + cost[0.0]) / 1e9
    assert budget - slack < points[-1]["gflops"] <= budget * (1 + 1e-9)
    assert [p["gflops"] for p in points] == sorted(p["gflops"] for p in points)
    assert (out / "accuracy_vs_compute.png").read_bytes()[:4] == b"\x89PNG"
    assert "equal training compute" in (out / "writeup.md").read_text()


@pytest.mark.slow
def test_a_rerun_resumes_an_arm_a_crash_cut_short(tmp_path, shard_set, demo_corpus_dir):
    """On a compute budget an arm is a run of sample phases: cut short after its first
    checkpoint, a rerun of the experiment continues it and ends on the very weights of an
    uninterrupted run."""
    from experiment.flops import train_flops_per_sample
    from flipcommon.checkpoints import LATEST_FILE, latest_checkpoint, read_weights

    per_sample = train_flops_per_sample("flip_micro", "openclip", [(0.0, 0)])[(0.0, 0)]
    budget = 8 * 8 * per_sample["total"] / 1e9  # 8 steps of 8
    args, out = _one_arm_on_compute(
        tmp_path,
        shard_set,
        demo_corpus_dir,
        budget,
        "{name: clip, mask_ratio: 0.0}",
        "base_batch=8",
        "keep_checkpoints=all",
    )
    first = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    train_dir = out / "arms" / "clip" / "seed0" / "train"
    uninterrupted = read_weights(latest_checkpoint(str(train_dir)))
    checkpoints = sorted(p for p in (train_dir / "checkpoints").iterdir() if p.is_dir())
    assert len(checkpoints) == 2  # halfway and at the end
    # what a crash after the first checkpoint leaves: no points.json, LATEST on the first
    (out / "arms" / "clip" / "seed0" / "points.json").unlink()
    shutil.rmtree(checkpoints[1])
    (train_dir / "checkpoints" / LATEST_FILE).write_text(checkpoints[0].name)
    again = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (out / "arms" / "clip" / "seed0" / "train.log").read_text()
    assert f"resumed from {checkpoints[0]} at step 4" in log
    resumed = read_weights(latest_checkpoint(str(train_dir)))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert [p["samples_seen"] for p in run["points"]] == [32, 64]
