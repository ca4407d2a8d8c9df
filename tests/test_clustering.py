"""k-means (gen_lightning/clustering.py): the partition of separated blobs, the Lloyd fixed point, nearest centres."""

import pytest
import torch

from gen_lightning.clustering import kmeans, kmeans_plus_plus, nearest, squared_distances
from gen_lightning.data.gmm import GaussianMixture
from gen_lightning.errors import ConfigError


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labelings split the points the same way, whatever the label names."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_separated_modes(seed):
    """ring8: 8 modes 1.5 apart with std 0.02. k-means++ puts a seed in a mode not yet seeded unless it draws a point
    at 0.02-scale distance over ones at 1.5-scale (probability ~1e-4 a draw), so the exact partition is the answer
    for every seed, not a lucky one."""
    x, comp = GaussianMixture.preset("ring8").sample(2000, generator=torch.Generator().manual_seed(seed))
    centers, assign = kmeans(x.float(), 8, generator=torch.Generator().manual_seed(seed))
    assert same_partition(assign, comp)
    for j in range(8):  # Lloyd's fixed point: each centre is the mean of its points
        torch.testing.assert_close(centers[j], x[assign == j].float().mean(0))


def test_nearest_is_the_argmin_of_all_distances():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1000, 5, generator=g), torch.randn(7, 5, generator=g)
    assert torch.equal(nearest(x, c, chunk=64), torch.cdist(x, c).argmin(1))
    torch.testing.assert_close(squared_distances(x, c), torch.cdist(x, c).pow(2), atol=1e-4, rtol=1e-4)


def test_kmeans_plus_plus_never_repeats_a_point_while_distinct_ones_are_left():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # one duplicate: three distinct points
    for seed in range(20):
        seeds = kmeans_plus_plus(x, 3, torch.Generator().manual_seed(seed))
        assert len({tuple(s.tolist()) for s in seeds}) == 3  # a seed's own copies have weight 0


def test_one_cluster_per_point_and_one_for_all():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    centers, assign = kmeans(x, 6)
    assert sorted(assign.tolist()) == list(range(6))
    torch.testing.assert_close(centers[assign], x)
    centers, assign = kmeans(x, 1)
    torch.testing.assert_close(centers[0], x.mean(0))
    assert assign.eq(0).all()


def test_kmeans_refuses_more_clusters_than_points():
    with pytest.raises(ConfigError, match="k=5; lower num_clusters"):
        kmeans(torch.zeros(4, 2), 5)
