"""Two-sample statistics between generated and real batches, for models without a likelihood."""

from __future__ import annotations

import torch


def _mean_off_diagonal(d: torch.Tensor) -> torch.Tensor:
    n = d.shape[0]
    return d.sum() / (n * (n - 1))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (Szekely & Rizzo 2004).

    Zero in expectation exactly when X and Y have the same distribution, and free of any
    bandwidth. `x (n, ...)`, `y (m, ...)` with n, m >= 2 are flattened to vectors first.
    """
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"energy distance needs >= 2 points per sample, got {x.shape[0]} and {y.shape[0]}")
    x, y = x.flatten(1).double(), y.flatten(1).double()  # (n, ...) -> (n, D), in float64 against cancellation
    xy = torch.cdist(x, y).mean()
    xx = _mean_off_diagonal(torch.cdist(x, x))  # U-statistics: the zero diagonal is left out
    yy = _mean_off_diagonal(torch.cdist(y, y))
    return (2 * xy - xx - yy).float()
