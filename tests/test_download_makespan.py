"""The download makespan simulation, at toy size: it runs, its rows are consistent (no policy
beats the ideal it is measured against), and the pacing it drives keeps the busiest site to
its interval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import download_makespan as makespan  # noqa: E402


def test_the_simulation_runs_at_toy_size(tmp_path):
    out = tmp_path / "rows.json"
    args = ["--rows", "400000", "--tail-sites", "4000", "--nodes", "1", "2", "--json", str(out)]
    assert makespan.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * len(makespan.POLICIES)
    for row in rows:
        assert row["makespan_h"] >= 0.99 * row["ideal_h"] > 0, row
        # at most one request per interval on average over a minute (the pacing's phase may
        # put a few more into one window than its share)
        assert row["busiest_window_ratio"]["60s"] <= 1.05, row
    by_policy = {(r["nodes"], r["policy"]): r for r in rows}
    for nodes in (1, 2):
        now = by_policy[(nodes, makespan.POLICIES[-1].name)]
        before = by_policy[(nodes, makespan.POLICIES[1].name)]
        assert now["makespan_h"] < before["makespan_h"]
        # robots.txt: one more request per (shard, site), never free
        without_robots = by_policy[(nodes, makespan.POLICIES[-2].name)]
        assert now["makespan_h"] >= without_robots["makespan_h"]
        assert 0 < now["sites_per_url"] <= 1


def test_fifo_schedule_and_barriers():
    lengths = np.array([4.0, 1.0, 1.0, 1.0, 1.0])
    assert list(makespan.schedule(lengths, slots=2)) == [0.0, 0.0, 1.0, 2.0, 3.0]
    # jobs of two tasks: the second job waits for the first's slowest task
    assert list(makespan.schedule(lengths, slots=2, barrier_shards=2)) == [0, 0, 4, 4, 5]


def test_population_sums_to_its_rows():
    population = makespan.Population(rows=1_000_000, tail_sites=10_000)
    sizes = makespan.site_sizes(population)
    assert sizes.sum() == 1_000_000 and sizes[0] == 50_000
    assert (np.diff(sizes[5:]) <= 0).all()


def test_the_task_length_check_runs_at_toy_size(capsys):
    import shard_time_model

    args = ["--urls", "200", "--threads", "8", "--latency", "0.01"]
    assert shard_time_model.main([*args, "--shares", "0.1", "--ratios", "1"]) == 0
    assert "worst measured ÷ model" in capsys.readouterr().out


def test_leased_lanes_keep_the_first_waves_places_whatever_the_task_lengths(tmp_path):
    """Sixteen slots on four executors, tasks of very uneven length: at every moment the
    running tasks hold distinct lanes, all of the first wave's ids (0..15), where their shard
    ids spread far past that (a long task of the first wave beside much later ones)."""
    lengths = np.random.default_rng(3).lognormal(0.0, 1.5, 400)
    start, slot = makespan.schedule_slots(lengths, slots=16)
    lanes = makespan.leased_lanes(start, lengths, slot // 4, tmp_path)
    assert set(lanes) == set(range(16))
    widest = 0
    for moment in np.linspace(0, (start + lengths).max(), 200, endpoint=False):
        running = np.flatnonzero((start <= moment) & (moment < start + lengths))
        assert len(set(lanes[running])) == len(running) <= 16
        widest = max(widest, int(np.ptp(running)) if len(running) else 0)
    assert widest > 16  # the running ids alone are no wave: their places would bunch
