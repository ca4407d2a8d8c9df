"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall
metric for assessing generative models"), on any feature space.

torchmetrics 1.9 has no precision/recall for generative models, so it lives here. Each set
is summarized by the union of balls around its points, the radius of each ball being the
distance to the point's k-th nearest neighbour within its own set (k = 3 in the paper):

- precision = fraction of generated points inside the real manifold (quality);
- recall    = fraction of real points inside the generated manifold (coverage).

Distances are computed in row chunks, so memory stays at `chunk x N` whatever N is.
"""

from __future__ import annotations

import torch

from gen_lightning.errors import ConfigError

DEFAULT_K = 3  # the paper's choice
DEFAULT_CHUNK = 1000


def _check(features: torch.Tensor, k: int, name: str) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name} features must be (N, D), got shape {tuple(features.shape)}")
    if len(features) <= k:
        raise ConfigError(f"precision/recall with k={k} needs more than {k} {name} samples, got {len(features)}")


def knn_radii(features: torch.Tensor, k: int = DEFAULT_K, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest neighbour in the same set, itself excluded."""
    _check(features, k, "these")
    f = features.double()
    # each row's smallest distance is the point to itself (0), so the k-th neighbour is the (k+1)-th value
    return torch.cat([torch.cdist(f[i : i + chunk], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), chunk)])


def fraction_inside(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> float:
    """Fraction of `queries` within `radii[j]` of some `support[j]` (inside the support's manifold)."""
    q, s, r = queries.double(), support.double(), radii.double()
    inside = [(torch.cdist(q[i : i + chunk], s) <= r).any(dim=1) for i in range(0, len(q), chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = DEFAULT_K, chunk: int = DEFAULT_CHUNK
) -> dict[str, float]:
    """Improved precision and recall of `fake` (N_f, D) against `real` (N_r, D) features."""
    if k < 1:
        raise ConfigError(f"precision/recall k must be >= 1, got {k}")
    _check(real, k, "real")
    _check(fake, k, "generated")
    return {
        "precision": fraction_inside(fake, real, knn_radii(real, k, chunk), chunk),
        "recall": fraction_inside(real, fake, knn_radii(fake, k, chunk), chunk),
    }
