"""GaussianMixture and GMMDataModule: presets as in DESIGN.md, exact density, seeded data."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from gen_lightning.data import GaussianMixture, GMMDataModule
from gen_lightning.errors import ConfigError


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- presets --------------------------------------------------------------------------------
def test_ring8_preset_is_eight_equal_modes_on_the_circle_of_radius_2():
    gmm = GaussianMixture.preset("ring8")
    assert gmm.num_components == 8
    torch.testing.assert_close(gmm.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    angles = torch.atan2(gmm.means[:, 1], gmm.means[:, 0]).remainder(2 * math.pi)
    torch.testing.assert_close(angles.sort().values, torch.arange(8, dtype=torch.float64) * math.pi / 4)
    torch.testing.assert_close(gmm.stds, torch.full((8,), 0.02, dtype=torch.float64))
    torch.testing.assert_close(gmm.weights, torch.full((8,), 1 / 8, dtype=torch.float64))


def test_grid25_preset_is_the_5x5_grid_at_even_coordinates():
    gmm = GaussianMixture.preset("grid25")
    assert gmm.num_components == 25
    expected = {(float(a), float(b)) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)}
    assert {tuple(m) for m in gmm.means.tolist()} == expected
    torch.testing.assert_close(gmm.stds, torch.full((25,), 0.05, dtype=torch.float64))
    torch.testing.assert_close(gmm.weights, torch.full((25,), 1 / 25, dtype=torch.float64))


@pytest.mark.parametrize("preset, std", [("ring8", 0.02), ("grid25", 0.05)])
def test_samples_sit_around_their_own_mode_with_the_preset_std(preset, std):
    gmm = GaussianMixture.preset(preset)
    x, comp = gmm.sample(2500, generator=seeded(0))
    nearest, dist_in_stds = gmm.nearest_mode(x)
    # modes are >= 40 std apart, so the nearest mode is always the one the point came from
    assert torch.equal(nearest, comp)
    assert dist_in_stds.max() < 6.0  # P(|N(0, I_2)| > 6) = exp(-18): never in 2,500 draws
    residual = x.double() - gmm.means[comp]
    assert residual.std().item() == pytest.approx(std, rel=0.05)
    assert residual.mean(0).abs().max().item() < 0.1 * std
    # equal weights: every mode gets about n/K samples (binomial sd is ~ sqrt(n/K))
    counts = torch.bincount(comp, minlength=gmm.num_components).double()
    expected = 2500 / gmm.num_components
    assert (counts - expected).abs().max().item() < 5 * math.sqrt(expected)


# ---- density --------------------------------------------------------------------------------
def test_ring8_density_integrates_to_one_on_a_fine_grid():
    gmm = GaussianMixture.preset("ring8")
    # A Riemann sum of a Gaussian with step h is off by ~2 exp(-2 pi^2 std^2 / h^2) (Poisson
    # summation): at h = std / 2 that is 1e-34, so the grid sum must be 1 up to rounding.
    h = 0.01
    ticks = torch.arange(-2.2, 2.2 + h / 2, h, dtype=torch.float64)
    points = torch.cartesian_prod(ticks, ticks)  # (441 * 441, 2), covers every mode to 10 std
    total = gmm.log_prob(points).exp().sum().item() * h * h
    assert total == pytest.approx(1.0, abs=1e-6)


def test_log_prob_matches_scipy_on_an_uneven_mixture():
    means = [[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]]
    stds = [0.5, 1.0, 0.3]
    weights = [1.0, 2.0, 3.0]
    gmm = GaussianMixture(*(torch.tensor(v, dtype=torch.float64) for v in (means, stds, weights)))
    x = torch.randn(200, 2, generator=seeded(1), dtype=torch.float64) * 2
    density = sum(
        w / 6.0 * multivariate_normal(mean=m, cov=s**2 * np.eye(2)).pdf(x.numpy())
        for m, s, w in zip(means, stds, weights)
    )
    torch.testing.assert_close(gmm.log_prob(x), torch.as_tensor(density).log(), rtol=1e-9, atol=1e-9)


def test_log_prob_matches_a_sum_of_per_axis_normals():
    gmm = GaussianMixture.preset("grid25")
    x, _ = gmm.sample(100, generator=seeded(2))
    x = x.double()
    per_mode = torch.stack(
        [torch.distributions.Normal(m, s).log_prob(x).sum(1) for m, s in zip(gmm.means, gmm.stds)], dim=1
    )  # (n, K): isotropic 2-D normal = product of two 1-D normals
    expected = torch.logsumexp(per_mode + gmm.weights.log(), dim=1)
    torch.testing.assert_close(gmm.log_prob(x), expected)


def test_log_prob_at_a_ring8_mode_is_the_peak_of_one_component():
    gmm = GaussianMixture.preset("ring8")
    peak = math.log(1 / 8) - math.log(2 * math.pi * 0.02**2)  # w / (2 pi s^2); other modes add ~0
    # rel 1e-6, not 1e-9: the preset builds its stds in float32 (0.02 -> 0.0199999996)
    assert gmm.log_prob(torch.tensor([[2.0, 0.0]])).item() == pytest.approx(peak, rel=1e-6)


# ---- seeded data ----------------------------------------------------------------------------
def test_same_seed_gives_the_same_samples_and_another_seed_does_not():
    gmm = GaussianMixture.preset("ring8")
    a, ca = gmm.sample(500, generator=seeded(7))
    b, cb = gmm.sample(500, generator=seeded(7))
    c, _ = gmm.sample(500, generator=seeded(8))
    assert torch.equal(a, b) and torch.equal(ca, cb)
    assert not torch.equal(a, c)


def test_datamodule_splits_are_fixed_by_the_seed_and_differ_between_splits():
    def splits(seed):
        dm = GMMDataModule(preset="ring8", n_train=300, n_val=100, n_test=100, batch_size=64, seed=seed)
        dm.setup()
        return {name: dm.split(name).x for name in ("train", "val", "test")}

    first, again, other = splits(0), splits(0), splits(1)
    for name in first:
        assert torch.equal(first[name], again[name])
        assert not torch.equal(first[name], other[name])
    assert not torch.equal(first["val"], first["test"])
    assert [len(first[n]) for n in ("train", "val", "test")] == [300, 100, 100]


def test_datamodule_batches_and_contract():
    dm = GMMDataModule(preset="grid25", n_train=300, n_val=100, n_test=100, batch_size=64)
    dm.setup()
    x, comp = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 2) and x.dtype == torch.float32
    assert comp.dtype == torch.long and comp.max() < 25
    assert dm.data_shape == (2,) and dm.num_classes is None and dm.value_range is None
    assert dm.dataset_name == "GMM-grid25"
    torch.testing.assert_close(dm.log_prob(x), dm.gmm.log_prob(x))
    with pytest.raises(ConfigError, match="not images"):
        dm.to_uint8(x)


def test_custom_mixture_through_the_datamodule():
    dm = GMMDataModule(preset=None, means=[[0.0, 0.0], [10.0, 0.0]], stds=[0.1, 0.1], weights=[1.0, 3.0], n_train=4000)
    dm.setup()
    _, comp = dm._splits["train"]
    assert dm.dataset_name == "GMM-custom"
    assert comp.float().mean().item() == pytest.approx(0.75, abs=0.03)  # weight 3/4 on the second mode


# ---- bad inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "means, stds, weights, match",
    [
        ([[0.0, 0.0, 0.0]], [1.0], [1.0], "shape"),
        ([[0.0, 0.0], [1.0, 1.0]], [1.0], [1.0, 1.0], "one value per mode"),
        ([[0.0, 0.0]], [0.0], [1.0], "stds must be > 0"),
        ([[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0], [1.0, -1.0], "weights must be >= 0"),
        ([[0.0, 0.0]], [1.0], [0.0], "positive sum"),
    ],
)
def test_bad_mixtures_raise_config_error(means, stds, weights, match):
    with pytest.raises(ConfigError, match=match):
        GaussianMixture(torch.tensor(means), torch.tensor(stds), torch.tensor(weights))


def test_bad_datamodule_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="unknown GMM preset"):
        GaussianMixture.preset("ring9")
    with pytest.raises(ConfigError, match="needs a preset"):
        GMMDataModule(preset=None)
    with pytest.raises(ConfigError, match="n_val must be >= 1"):
        GMMDataModule(n_val=0)
    with pytest.raises(ConfigError, match="batch_size"):
        GMMDataModule(batch_size=0)


def test_a_mid_epoch_checkpoint_resumes_the_epoch_where_it_stopped():
    """The sampler of a resumed run yields the rest of that epoch's permutation, then whole epochs as before."""
    from gen_lightning.data.base import EpochShuffleSampler

    straight = EpochShuffleSampler(10, seed=3)
    straight.set_epoch(1)
    epoch1 = list(straight)
    resumed = EpochShuffleSampler(10, seed=3, resume_at=(1, 4))
    resumed.set_epoch(1)
    assert list(resumed) == epoch1[4:]
    assert list(resumed) == epoch1  # the skip applies to the first pass only
    resumed.set_epoch(2)
    straight.set_epoch(2)
    assert list(resumed) == list(straight)
    other_epoch = EpochShuffleSampler(10, seed=3, resume_at=(0, 4))  # a skip saved for epoch 0 is not applied to 1
    other_epoch.set_epoch(1)
    assert list(other_epoch) == epoch1


def test_the_datamodule_state_skips_whole_batches_of_the_same_size():
    dm = GMMDataModule(n_train=100, n_val=10, n_test=10, batch_size=8)
    dm.load_state_dict({"epoch": 0, "batches_done": 3, "batch_size": 8})
    loader = dm.train_dataloader()
    assert sum(len(x) for x, _ in loader) == 100 - 24  # 3 batches of 8 already trained on
    assert sum(len(x) for x, _ in dm.train_dataloader()) == 100  # a new loader: no skip left
    dm.load_state_dict({"epoch": 0, "batches_done": 3, "batch_size": 16})  # another batch size: positions differ
    assert sum(len(x) for x, _ in dm.train_dataloader()) == 100
    assert dm.state_dict() == {}  # outside a fit there is no position to save
