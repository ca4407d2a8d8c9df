"""k-means in torch: the clusters that stand in for labels in the self-conditioned GAN (models/gan.py).

`kmeans` is Lloyd's algorithm (Lloyd 1982) seeded by k-means++ (Arthur & Vassilvitskii 2007): each next seed is a
point drawn with probability proportional to its squared distance to the nearest seed so far. A cluster that
loses all its points restarts at the point farthest from its centre.
"""

from __future__ import annotations

import torch

from gen_lightning.errors import ConfigError


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """||x_i - c_j||^2 `(N, K)` for rows x `(N, D)` and centres `(K, D)`, clamped at 0 against rounding."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centers.T + centers.pow(2).sum(1)).clamp_(min=0)


def nearest(x: torch.Tensor, centers: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of each row's nearest centre `(N,)`, computed `chunk` rows at a time."""
    return torch.cat([squared_distances(part, centers).argmin(1) for part in x.split(chunk)])


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k seeds `(k, D)` drawn by k-means++ from the rows of x."""
    first = torch.randint(0, x.shape[0], (1,), generator=generator, device=x.device)
    centers = [x[first]]
    closest = squared_distances(x, centers[0]).squeeze(1)
    for _ in range(1, k):
        # every point at distance 0 (all seeds already drawn) leaves nothing to weigh: draw uniformly instead
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centers.append(x[pick])
        closest = torch.minimum(closest, squared_distances(x, centers[-1]).squeeze(1))
    return torch.cat(centers)


def kmeans(x: torch.Tensor, k: int, iters: int = 50, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of x `(N, D)` into k: `(centres (k, D), assignment (N,))`.

    Stops when no point changes cluster, or after `iters` assignment steps; the assignment returned is each row's
    nearest returned centre."""
    if not 1 <= k <= x.shape[0]:
        raise ConfigError(f"k-means needs 1 <= k <= the number of points ({x.shape[0]}), got k={k}; "
                          "lower num_clusters or cluster more images")
    x = x.float()
    centers = kmeans_plus_plus(x, k, generator)
    assign = nearest(x, centers)
    for _ in range(iters):
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centers = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        for j in torch.nonzero(counts == 0).flatten().tolist():  # an emptied cluster restarts at the worst-fit point
            gaps = (x - centers[assign]).pow(2).sum(1)
            far = int(gaps.argmax())
            centers[j], assign[far] = x[far], j
        new = nearest(x, centers)
        if torch.equal(new, assign):
            break
        assign = new
    return centers, nearest(x, centers)
