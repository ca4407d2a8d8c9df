"""Fréchet distance in closed form, the torchmetrics FID/KID/IS path on stand-in features,
the Inception weights loader and the on-disk cache of real features."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.metrics import inception as inc
from gen_lightning.metrics.classifier import feature_moments, frechet_distance


def gaussian(n, mu, std, seed):
    """n draws of N(mu, diag(std^2)), exactly standardized so the sample moments are mu and std^2."""
    z = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0)
    return torch.tensor(mu, dtype=torch.float64) + z * torch.tensor(std, dtype=torch.float64)


MU1, STD1 = [0.0, 1.0, -2.0, 0.5], [1.0, 2.0, 0.5, 1.5]
MU2, STD2 = [1.0, 1.0, 0.0, 0.5], [2.0, 1.0, 0.5, 3.0]
# diagonal covariances: the sqrt is elementwise, so FID = ||mu1 - mu2||^2 + sum (std1 - std2)^2
EXPECTED = sum((a - b) ** 2 for a, b in zip(MU1, MU2)) + sum((a - b) ** 2 for a, b in zip(STD1, STD2))


# ---- the closed-form helper -------------------------------------------------------------------
def test_one_dimension_by_hand():
    # N(0, 1) vs N(3, 4): 3^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10
    assert frechet_distance(torch.tensor([0.0]), torch.tensor([[1.0]]), torch.tensor([3.0]), torch.tensor([[4.0]])) == pytest.approx(10.0)


def test_diagonal_covariances_match_the_closed_form():
    fd = frechet_distance(torch.tensor(MU1), torch.diag(torch.tensor(STD1) ** 2), torch.tensor(MU2), torch.diag(torch.tensor(STD2) ** 2))
    assert EXPECTED == pytest.approx(9.25)  # 1 + 4 + (1 + 1 + 0 + 2.25)
    assert fd == pytest.approx(EXPECTED, rel=1e-12)


def test_full_covariances_match_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace()) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_a_set_against_itself_is_zero_even_with_singular_covariance():
    x = gaussian(500, MU1, STD1, seed=1)
    x = torch.cat([x, torch.zeros(500, 3)], dim=1)  # three dead features: a singular covariance
    mu, sigma = feature_moments(x)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


# ---- the torchmetrics path -------------------------------------------------------------------
def test_torchmetrics_fid_on_identity_features_matches_the_closed_form():
    real, fake = gaussian(4000, MU1, STD1, seed=2), gaussian(4000, MU2, STD2, seed=3)
    assert inc.frechet_inception_distance(real, fake) == pytest.approx(EXPECTED, rel=0.02)  # sampling error only
    # and agrees with our helper on the same moments to round-off
    ours = frechet_distance(*feature_moments(real), *feature_moments(fake))
    assert inc.frechet_inception_distance(real, fake) == pytest.approx(ours, rel=1e-9)
    assert inc.frechet_inception_distance(real, real) == pytest.approx(0.0, abs=1e-6)


class TinyFeatures(nn.Module):
    """Stand-in for Inception: uint8 (N, 3, H, W) -> (N, 8) features; counts its calls."""

    def __init__(self, logits: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.proj.bias)
        self.logits, self.calls = logits, 0

    def forward(self, x):
        self.calls += 1
        f = self.proj(x.float() / 255.0).mean(dim=(2, 3))  # (N, 8, h, w) -> (N, 8)
        return (f, 3 * f) if self.logits else f


def images(n, seed, brightness=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 16, 16, generator=g) * brightness).clamp(0, 1)


def test_fid_through_a_stand_in_feature_network():
    net = TinyFeatures()
    a = inc.extract(net, inc.to_rgb_uint8(images(600, 0), (0.0, 1.0)), batch_size=128)
    b = inc.extract(net, inc.to_rgb_uint8(images(600, 1), (0.0, 1.0)), batch_size=128)
    c = inc.extract(net, inc.to_rgb_uint8(images(600, 2, brightness=0.5), (0.0, 1.0)), batch_size=128)
    assert a[0].shape == (600, 8) and a[1] is None  # no logits from this extractor
    assert net.calls == 3 * 5  # ceil(600 / 128) batches per set
    same = inc.frechet_inception_distance(a[0], a[0])
    close = inc.frechet_inception_distance(a[0], b[0])
    far = inc.frechet_inception_distance(a[0], c[0])
    assert same == pytest.approx(0.0, abs=1e-6) and 0 < close < far


def test_to_rgb_uint8_repeats_grey_and_maps_either_range():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    out = inc.to_rgb_uint8(x, (-1.0, 1.0))
    assert out.shape == (1, 3, 1, 3) and out.dtype == torch.uint8
    assert out[0, :, 0].tolist() == [[0, 128, 255]] * 3
    assert torch.equal(inc.to_rgb_uint8((x + 1) / 2, (0.0, 1.0)), out)


def test_kid_is_near_zero_for_the_same_distribution_and_repeatable():
    real, same = gaussian(500, MU1, STD1, seed=4).float(), gaussian(500, MU1, STD1, seed=6).float()
    fake = gaussian(500, MU2, STD2, seed=5).float()
    kid_same, _ = inc.kernel_inception_distance(real, same, subsets=10, subset_size=250, seed=0)
    kid_diff = inc.kernel_inception_distance(real, fake, subsets=10, subset_size=250, seed=0)
    assert abs(kid_same) < 0.02 * kid_diff[0]
    assert kid_diff == inc.kernel_inception_distance(real, fake, subsets=10, subset_size=250, seed=0)
    with pytest.raises(ConfigError, match="kid_subset_size=600"):
        inc.kernel_inception_distance(real, fake, subsets=5, subset_size=600, seed=0)


@pytest.mark.filterwarnings("ignore:std")  # one split has no spread
def test_inception_score_by_hand():
    # every sample certain of its class, classes balanced: IS = exp(H(marginal)) = K
    k = 10
    confident = 50.0 * torch.eye(k).repeat(100, 1)  # (1000, 10): 100 per class
    assert inc.inception_score(confident, splits=1, seed=0)[0] == pytest.approx(k, rel=1e-4)
    # every sample uniform over the classes: IS = 1
    assert inc.inception_score(torch.zeros(1000, k), splits=5, seed=0)[0] == pytest.approx(1.0)


# ---- Inception weights --------------------------------------------------------------------------
class StandInInception(nn.Module):
    """Takes the place of torch-fidelity's FeatureExtractorInceptionV3: loads a state dict from the path it is given."""

    def __init__(self, name, features_list, feature_extractor_weights_path):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.loaded_from = feature_extractor_weights_path
        self.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=True))

    def forward(self, x):
        f = x.float().mean(dim=(2, 3))
        return f, self.fc(f)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints" / inc.INCEPTION_WEIGHTS_FILE


def test_weights_are_read_from_the_configured_path(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(inc, "FeatureExtractorInceptionV3", StandInInception)
    saved = {f"fc.{k}": v for k, v in nn.Linear(3, 2).state_dict().items()}
    path = tmp_path / "my_weights.pth"
    torch.save(saved, path)
    net = inc.InceptionV3(str(path))
    assert net.net.loaded_from == str(path)
    assert torch.equal(net.net.fc.weight, saved["fc.weight"])
    features, logits = net(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    assert features.shape == (2, 3) and logits.shape == (2, 2)


def test_weights_fall_back_to_the_hub_cache_only_when_no_path_is_configured(tmp_path, hub):
    hub.parent.mkdir(parents=True)
    torch.save({}, hub)
    assert inc.find_inception_weights(None) == hub
    with pytest.raises(ConfigError, match="not found at"):  # a configured path that is missing is an error
        inc.find_inception_weights(tmp_path / "typo.pth")


@pytest.mark.parametrize("configured", [None, "missing/weights.pth"])
def test_without_weights_one_sentence_names_the_file_and_both_places(hub, configured):
    with pytest.raises(ConfigError) as err:
        inc.InceptionV3(configured)
    message = str(err.value)
    assert inc.INCEPTION_WEIGHTS_FILE in message and str(hub) in message and "`inception_weights`" in message
    assert "\n" not in message and message.count(". ") == 0
    if configured is not None:
        assert configured in message


def test_a_file_that_is_not_inception_weights_is_a_config_error(tmp_path, hub):
    path = tmp_path / inc.INCEPTION_WEIGHTS_FILE
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ConfigError, match="is not torch-fidelity's Inception state dict"):
        inc.InceptionV3(path)


# ---- the cache of real features ------------------------------------------------------------------
def test_reference_features_are_computed_once(tmp_path):
    net = TinyFeatures()
    real = inc.to_rgb_uint8(images(300, 0), (0.0, 1.0))
    key = inc.reference_key({"dataset": "Toy", "binarize": "none"}, "test", len(real), inc.fingerprint(net))
    first = inc.reference_features(net, real, key, tmp_path, batch_size=100)
    assert net.calls == 3 and (tmp_path / f"{key}.pt").is_file()
    second = inc.reference_features(net, real, key, tmp_path, batch_size=100)
    assert net.calls == 3 and torch.equal(first, second)  # read back, not recomputed


def test_the_cache_key_follows_data_split_size_and_weights():
    net, other = TinyFeatures(), TinyFeatures()
    with torch.no_grad():
        other.proj.bias.add_(1.0)
    base = ({"dataset": "MNIST", "binarize": "none"}, "test", 10000, inc.fingerprint(net))
    assert inc.reference_key(*base) == inc.reference_key({"binarize": "none", "dataset": "MNIST"}, "test", 10000, inc.fingerprint(TinyFeatures()))
    assert inc.reference_key(*base).startswith("MNIST-test-10000-")
    variants = [
        ({"dataset": "MNIST", "binarize": "dynamic"}, "test", 10000, base[3]),
        (base[0], "val", 10000, base[3]),
        (base[0], "test", 5000, base[3]),
        (base[0], "test", 10000, inc.fingerprint(other)),
    ]
    assert len({inc.reference_key(*base), *(inc.reference_key(*v) for v in variants)}) == 5
