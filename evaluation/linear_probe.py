"""Linear probe: multinomial logistic regression on frozen, L2-normalised features.

The L2 penalty is swept on a validation split carved from the training features; the best is
refit on all training features and scored on the test features. Full-batch L-BFGS on the
features' device (CPU or GPU): features are small, so each fit takes well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evaluation.metrics import classification_metrics

DEFAULT_PENALTIES = tuple(10.0**e for e in range(-6, 1))


@dataclass(frozen=True)
class LinearModel:
    weight: torch.Tensor  # [dim, classes]
    bias: torch.Tensor  # [classes]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight + self.bias


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    penalty: float,
    max_iter: int = 200,
) -> LinearModel:
    weight = torch.zeros(features.shape[1], num_classes, device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearModel(weight.detach(), bias.detach())


def split_validation(labels: torch.Tensor, fraction: float, seed: int):
    """Indices of a random (seeded) train/validation split."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(len(labels) * fraction))
    return order[n_val:], order[:n_val]


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics on the test features, plus the penalty chosen on the validation split."""
    if len(torch.unique(train_labels)) < 2:
        raise ValueError("a linear probe needs training samples of at least 2 classes")
    train_x = F.normalize(train_features.float(), dim=-1)
    test_x = F.normalize(test_features.float(), dim=-1)
    fit_idx, val_idx = split_validation(train_labels, val_fraction, seed)
    scores = {}
    for penalty in penalties:
        model = fit_logistic(train_x[fit_idx], train_labels[fit_idx], num_classes, penalty)
        predicted = model.logits(train_x[val_idx]).argmax(dim=1)
        scores[penalty] = (predicted == train_labels[val_idx]).float().mean().item()
    best = max(penalties, key=lambda p: (scores[p], p))  # ties: the stronger penalty
    model = fit_logistic(train_x, train_labels, num_classes, best)
    metrics = classification_metrics(model.logits(test_x).cpu(), test_labels.cpu())
    metrics["val_top1"] = scores[best]
    metrics["penalty"] = best
    return metrics
