"""The linear probe: a real logistic regression, its penalty chosen on held-out data."""

import numpy as np
import pytest
import torch

from evaluation.linear_probe import DEFAULT_C_GRID, fit_logistic, linear_probe, penalty_for
from flipcommon.errors import UserError


def _clusters(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_probe_separates_clusters_and_reports_its_choice():
    train_x, train_y = _clusters(60, 5, 16, 0.3, seed=0)
    test_x, test_y = _clusters(20, 5, 16, 0.3, seed=0)
    metrics = linear_probe(train_x, train_y, test_x, test_y, num_classes=5)
    assert metrics["top1"] > 0.95 and metrics["top5"] == 1.0
    assert metrics["C"] in DEFAULT_C_GRID
    assert metrics["penalty"] == pytest.approx(penalty_for(metrics["C"], len(train_y)))
    assert 0.0 <= metrics["val_top1"] <= 1.0


def test_fit_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = _clusters(80, 4, 12, 1.2, seed=1)  # overlapping: the penalty matters
    penalty = 1e-2
    ours = fit_logistic(x, y, 4, penalty, max_iter=500)
    # sklearn minimises C * sum(CE) + ||w||²/2, i.e. mean(CE) + ||w||² / (2 C n)
    theirs = LogisticRegression(C=1 / (2 * penalty * len(y)), max_iter=2000, tol=1e-8)
    theirs.fit(x.numpy(), y.numpy())
    ours_pred = ours.logits(x).argmax(dim=1).numpy()
    assert (ours_pred == theirs.predict(x.numpy())).mean() > 0.98
    np.testing.assert_allclose(ours.weight.T.numpy(), theirs.coef_, atol=2e-2)


def test_a_warm_started_fit_reaches_the_same_minimum():
    """The sweep starts each fit from the previous (stronger) one's solution: only the path
    changes, not the minimiser."""
    from sklearn.linear_model import LogisticRegression

    x, y = _clusters(80, 4, 12, 1.2, seed=2)
    penalty = 1e-3
    start = fit_logistic(x, y, 4, 1e-1)
    start_weight = start.weight.clone()
    ours = fit_logistic(x, y, 4, penalty, start=start)
    theirs = LogisticRegression(C=1 / (2 * penalty * len(y)), max_iter=5000, tol=1e-10)
    theirs.fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(ours.weight.T.numpy(), theirs.coef_, atol=2e-2)
    assert torch.equal(start.weight, start_weight)  # the start is left as it was
    # and the start is used: one iteration from the optimum stays there, one from zero does not
    from_optimum = fit_logistic(x, y, 4, penalty, max_iter=1, start=ours)
    from_zero = fit_logistic(x, y, 4, penalty, max_iter=1)
    assert torch.allclose(from_optimum.weight, ours.weight, atol=1e-3)
    assert not torch.allclose(from_zero.weight, ours.weight, atol=1e-1)


def test_one_class_training_set_is_a_clear_error():
    x = torch.randn(10, 4)
    with pytest.raises(UserError, match="at least 2 classes"):
        linear_probe(x, torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long), 2)


def test_linear_probe_task_in_the_stage(micro_run, demo_corpus_dir, tmp_path):
    from evaluation.config import EvalConfig, TaskConfig
    from evaluation.stage import run

    task = TaskConfig("fashion/probe", "fashion_mnist", "linear_probe", limit=100, train_limit=200)
    records = run(
        EvalConfig(
            train_run_dir=str(micro_run),
            output_dir=str(tmp_path),
            demo_corpus_dir=str(demo_corpus_dir),
            tasks=[task],
            device="cpu",
        )
    )
    record = records[0]
    assert record["counts"] == {"train_samples": 200, "samples": 100, "classes": 10}
    assert 0.0 <= record["metrics"]["top1"] <= 1.0
    assert {"C", "penalty", "val_top1"} <= set(record["details"])
