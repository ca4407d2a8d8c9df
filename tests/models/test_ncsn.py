"""The NCSN LightningModule: the score's parametrization, the DSM loss with an oracle network,
one training step, sampling, and the data checks."""

import math

import lightning as L
import pytest
import torch
from torch import nn

from gen_lightning.data.base import ImageDataModule
from gen_lightning.data.gmm import GMMDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.models.ncsn import NCSN
from gen_lightning.nets.denoiser_mlp import DenoiserMLP
from gen_lightning.nets.unet import UNet
from gen_lightning.samplers.langevin import AnnealedLangevin
from gen_lightning.samplers.sigmas import GeometricSigmas


class Squares(ImageDataModule):
    """(1, 8, 8) images: a bright 4x4 square in one of four corners on a dark background."""

    data_shape = (1, 8, 8)
    num_classes = 4

    def setup(self, stage=None):
        if self._splits:
            return
        y = torch.arange(300) % 4
        x = torch.zeros(300, 1, 8, 8, dtype=torch.uint8)
        for c in range(4):
            r, col = divmod(c, 2)
            x[y == c, :, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] = 255
        self._set_splits(train=(x[:200], y[:200]), test=(x[200:], y[200:]))


class OracleForPointMass(nn.Module):
    """The optimal net for data at 0: x~ = sigma z, so net(x~, t) = sigma s(x~) = -x~ / sigma, with sigma read back from t."""

    def __init__(self, sigmas: GeometricSigmas):
        super().__init__()
        self.sigmas = sigmas
        self.unused = nn.Linear(1, 1)

    def forward(self, x, t, labels=None):
        log_ratio = math.log(self.sigmas.sigma_max / self.sigmas.sigma_min)
        sigma = self.sigmas.sigma_min * torch.exp(t * log_ratio)  # inverts NCSN.noise_t
        return -x / sigma.view(-1, *([1] * (x.ndim - 1)))


def gmm_model(**sampler_kwargs) -> NCSN:
    sigmas = GeometricSigmas(sigma_max=6.0, sigma_min=0.02, num_levels=5)
    sampler = AnnealedLangevin(**({"n_steps_each": 3, "step_lr": 1e-4} | sampler_kwargs))
    return NCSN(DenoiserMLP(dim=2, hidden=32, depth=2, time_embed_dim=16), sigmas, sampler)


def gmm_data(n_train=512) -> GMMDataModule:
    dm = GMMDataModule(preset="grid25", n_train=n_train, n_val=256, n_test=256, batch_size=128)
    dm.setup()
    return dm


def test_noise_conditioning_spans_0_to_1_and_the_score_is_net_over_sigma():
    model = gmm_model()
    s = model.sigmas.sigmas
    t = model.noise_t(s)
    torch.testing.assert_close(t[[0, -1]], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(t, torch.linspace(1.0, 0.0, 5), atol=1e-6, rtol=0)  # geometric sigmas: evenly spaced t
    x = torch.randn(5, 2)
    net_out = model.net(x, t)
    torch.testing.assert_close(model.score(x, s), net_out / s[:, None])


def test_scaled_input_is_ddpms_input_and_the_score_keeps_its_form():
    sigmas = GeometricSigmas(sigma_max=6.0, sigma_min=0.02, num_levels=5)
    seen = []

    class Recorder(nn.Module):
        def forward(self, x, t, labels=None):
            seen.append(x)
            return -x  # any net: the score is its output over sigma
    model = NCSN(Recorder(), sigmas, AnnealedLangevin(), scale_input=True)
    x0, z, sigma = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0.02, 1.0, 6.0])
    alpha_bar = 1 / (1 + sigma**2)
    score = model.score(x0 + sigma[:, None] * z, sigma)
    # the net sees DDPM's x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) z at alpha_bar = 1 / (1 + sigma^2)
    torch.testing.assert_close(seen[0], alpha_bar.sqrt()[:, None] * x0 + (1 - alpha_bar).sqrt()[:, None] * z)
    torch.testing.assert_close(score, -seen[0] / sigma[:, None])


def test_dsm_loss_of_the_oracle_net_is_zero_on_point_mass_data():
    sigmas = GeometricSigmas(sigma_max=6.0, sigma_min=0.02, num_levels=5)
    model = NCSN(OracleForPointMass(sigmas), sigmas, AnnealedLangevin())
    g = torch.Generator().manual_seed(0)
    assert model.dsm(torch.zeros(64, 1, 4, 4), generator=g).item() == pytest.approx(0.0, abs=1e-8)
    # the untrained DenoiserMLP outputs 0 (zero-initialized last layer): loss = E 1/2 ||z||^2 = D/2 = 1
    untrained = gmm_model()
    loss = untrained.dsm(torch.randn(20000, 2, generator=g), generator=g).item()
    assert loss == pytest.approx(1.0, rel=0.03)  # 1/2 chi2_2 per example, SE 0.7% over 20,000


def test_min_snr_weighting_of_the_untrained_net_is_the_mean_clipped_weight():
    """The untrained net outputs 0, so every example costs 1/2 ||z||^2 (mean 1 in 2-D) times its level's weight
    min(1, gamma sigma^2): the loss is the mean of that weight over the 5 levels (6, ~1.44, ~0.35, ~0.083, 0.02)."""
    model = gmm_model()
    model.snr_gamma = 5.0
    g = torch.Generator().manual_seed(0)
    weights = (5.0 * model.sigmas.to("cpu").pow(2)).clamp(max=1.0)
    assert 0.03 < weights.mean().item() < 0.7  # two levels clipped to 1, three discounted
    loss = model.dsm(torch.randn(40000, 2, generator=g), generator=g).item()
    assert loss == pytest.approx(weights.mean().item(), rel=0.03)  # SE 0.8% over 40,000: 3.9 SE
    with pytest.raises(ConfigError, match="snr_gamma must be > 0"):
        NCSN(DenoiserMLP(dim=2), model.sigmas, AnnealedLangevin(), snr_gamma=-1.0)


def test_held_out_loss_is_seeded_by_batch_index():
    model = gmm_model()
    batch = (torch.randn(32, 2), torch.zeros(32, dtype=torch.long))
    with torch.no_grad():
        a, b, c = (model.held_out_loss(batch, i) for i in (3, 3, 4))
    assert a.item() == b.item() and a.item() != c.item()


def test_one_training_step_changes_the_parameters():
    model = gmm_model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=gmm_data())
    after = model.net.state_dict()
    assert not torch.equal(before["out.weight"], after["out.weight"])  # the zero-initialized output layer learns first
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "out.bias" in changed and "inp.weight" not in changed  # Adam's first step moves only params with gradients:
    # the output layer is 0, so nothing below it gets a gradient on step 1 (a check of the zero init, not a bug)


def test_sampling_shapes_reproducibility_and_network_evaluations():
    model = gmm_model(n_steps_each=3)
    model.bind_data(gmm_data())
    assert model.network_evaluations_per_sample == 5 * 3 + 1
    x = model.sample(7, generator=torch.Generator().manual_seed(0))
    y, traj = model.sample(7, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert x.shape == (7, 2) and torch.equal(x, y) and traj.shape == (5 + 2, 7, 2)
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.zeros(2, dtype=torch.long))


def test_image_samples_stay_in_range_and_the_unet_fits():
    net = UNet(in_channels=1, image_size=8, channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[], dropout=0.0)
    model = NCSN(net, GeometricSigmas(sigma_max=10.0, sigma_min=0.02, num_levels=3), AnnealedLangevin(n_steps_each=2))
    dm = Squares(value_range="-1,1", val_size=50)
    dm.setup()
    model.bind_data(dm)
    x = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert "test/nll_nats" in model.omitted_metrics


def test_data_checks_refuse_what_does_not_fit():
    net = UNet(in_channels=1, image_size=8, channels=8, channel_mults=[1], num_res_blocks=1, attention_resolutions=[], dropout=0.0)
    model = NCSN(net, GeometricSigmas(10.0, 0.02, 3), AnnealedLangevin())
    with pytest.raises(ConfigError, match=r'value_range: "-1,1"'):
        model.bind_data(Squares(value_range="0,1"))
    with pytest.raises(ConfigError, match="the net cannot read data of shape"):
        model.bind_data(gmm_data(n_train=16))
    with pytest.raises(ConfigError, match="num_classes: null"):
        NCSN(DenoiserMLP(dim=2, hidden=8, depth=1, num_classes=4), GeometricSigmas(10.0, 0.02, 3), AnnealedLangevin())


class OracleForGaussian(OracleForPointMass):
    """The optimal net for data ~ N(0, s0^2 I): p_sigma = N(0, (s0^2 + sigma^2) I), net = sigma s = -sigma x / (s0^2 + sigma^2)."""

    def __init__(self, sigmas: GeometricSigmas, s0: float):
        super().__init__(sigmas)
        self.s0 = s0

    def forward(self, x, t, labels=None):
        sigma = -x / super().forward(x, t)  # sigma, broadcast to x's shape
        return -sigma * x / (self.s0**2 + sigma**2)


@pytest.mark.parametrize("s0", [0.0, 0.5])
def test_probability_flow_density_of_gaussian_data_is_the_closed_form(s0):
    """log p(x) by the ODE from sigma_L to sigma_1 = log N(x; 0, (s0^2 + sigma_L^2) I): exact for s0 = 0 (the prior
    N(0, sigma_1^2 I) is then the true p_sigma_1), and within D s0^2 / (2 sigma_1^2) = 1e-4 nats for s0 = 0.5."""
    sigmas = GeometricSigmas(sigma_max=50.0, sigma_min=0.01, num_levels=10)
    model = NCSN(OracleForGaussian(sigmas, s0), sigmas, AnnealedLangevin(n_steps_each=1))
    model.bind_data(gmm_data(n_train=16))
    x = (s0**2 + 0.01**2) ** 0.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(0.0, (s0**2 + 0.01**2) ** 0.5).log_prob(x).sum(1)
    errors = [(model.ode_log_prob(x, steps=n, probes=None) - expected).abs().max().item() for n in (100, 200, 400)]
    assert errors[2] < 2e-3
    assert 3 < errors[0] / errors[1] < 5  # Heun: second order in the step (measured 4.0 and 4.4)
    hutchinson = model.ode_log_prob(x, steps=400, probes=1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hutchinson, expected, atol=2e-3, rtol=0)  # the field is isotropic: e^T J e = tr J for +-1 probes


def test_dequantize_trains_on_8bit_images_spread_over_their_bins(monkeypatch):
    from gen_lightning import losses

    seen = []
    monkeypatch.setattr(losses, "dsm_loss", lambda score, x0, sigma, z: (seen.append(x0), x0.flatten(1).sum(1))[1])
    net = UNet(in_channels=1, image_size=8, channels=8, channel_mults=[1], num_res_blocks=1, attention_resolutions=[], dropout=0.0)
    sigmas = GeometricSigmas(sigma_max=10.0, sigma_min=0.02, num_levels=3)
    model = NCSN(net, sigmas, AnnealedLangevin(n_steps_each=1), dequantize=True)
    dm = Squares(value_range="-1,1", val_size=50)
    dm.setup()
    model.bind_data(dm)
    k = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0)).double()
    model.dsm(-1 + 2 * k / 255, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.floor((seen[0] + 1) / 2 * 256), k)
    with pytest.raises(ConfigError, match="set dequantize: false"):
        NCSN(DenoiserMLP(dim=2, hidden=8, depth=1, time_embed_dim=8), sigmas, AnnealedLangevin(), dequantize=True).bind_data(gmm_data(16))


def test_ode_sampler_with_the_oracle_maps_the_prior_draw_by_the_closed_form():
    """Data ~ N(0, s0^2 I): the flow of p_sigma = N(0, (s0^2 + sigma^2) I) scales x by sqrt((s0^2 + sigma^2) / (s0^2 + sigma_1^2)),
    and Tweedie's step at sigma_L multiplies by s0^2 / (s0^2 + sigma_L^2); x(sigma_1) = sigma_1 z with z from the generator."""
    from gen_lightning.samplers.ode import HeunSampler

    s0, hi, lo = 0.5, 50.0, 0.01
    sigmas = GeometricSigmas(sigma_max=hi, sigma_min=lo, num_levels=10)
    model = NCSN(OracleForGaussian(sigmas, s0), sigmas, HeunSampler(num_steps=200))
    model.bind_data(gmm_data(n_train=16))
    assert model.network_evaluations_per_sample == 2 * 200 + 1
    x = model.sample(256, generator=torch.Generator().manual_seed(3))
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
    expected = hi * z * ((s0**2 + lo**2) / (s0**2 + hi**2)) ** 0.5 * s0**2 / (s0**2 + lo**2)
    torch.testing.assert_close(x, expected, atol=1e-4, rtol=3e-3)  # 2% at 50 steps, second order
    y, trajectory = model.sample(4, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert trajectory.shape == (200 + 2, 4, 2) and torch.equal(trajectory[-1], y)


# ---- the self-guided NCSN ------------------------------------------------------------------
class ClusterScoreOracle(nn.Module):
    """The optimal net for data made of Gaussians N(centers[c], s^2) blurred by sigma: given a cluster c,
    sigma s = -sigma (x - centers[c]) / (s^2 + sigma^2); given the null label K, sigma times the mixture's score
    (weights `weights`). Records the labels of every call."""

    def __init__(self, sigmas, centers, s, weights):
        super().__init__()
        self.sigmas, self.centers, self.s2, self.weights = sigmas, centers, s * s, weights / weights.sum()
        self.num_classes, self.seen = centers.shape[0], []

    def forward(self, x, t, labels=None):
        self.seen.append(labels)
        sigma = (self.sigmas.sigma_min * torch.exp(t * math.log(self.sigmas.sigma_max / self.sigmas.sigma_min)))[:, None, None]
        var = self.s2 + sigma**2  # (B, 1, 1)
        diff = x[:, None] - self.centers[None]  # (B, K, 2)
        post = torch.softmax(self.weights.log()[None] - (diff**2).sum(-1) / (2 * var[..., 0]), 1)  # p(c | x)
        null = labels == self.num_classes
        post = torch.where(null[:, None], post, nn.functional.one_hot(labels.clamp(max=self.num_classes - 1),
                                                                      self.num_classes).float())
        return (post[..., None] * -sigma * diff / var).sum(1)


def self_guided_ncsn(num_clusters=8, **kwargs):
    from gen_lightning.models.ncsn import SelfGuidedNCSN
    from gen_lightning.samplers.ve_ancestral import VEAncestralSampler

    sigmas = GeometricSigmas(sigma_max=6.0, sigma_min=0.01, num_levels=100)
    net = DenoiserMLP(dim=2, hidden=32, depth=2, time_embed_dim=16, num_classes=num_clusters)
    return SelfGuidedNCSN(net, sigmas, VEAncestralSampler(num_steps=40), num_clusters=num_clusters, cluster_images=512,
                          **kwargs)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_self_guided_ncsn_samples_land_in_the_clusters_they_draw(guidance_scale):
    """With the exact score of each ring8 cluster (its centre, std 0.02), VE ancestral sampling ends every sample in
    the cluster the model drew for it, guided or not; the null label serves guidance only."""
    dm = GMMDataModule(preset="ring8", n_train=1024, n_val=128, n_test=128, batch_size=128)
    dm.setup()
    model = self_guided_ncsn(guidance_scale=guidance_scale)
    model.bind_data(dm)
    model.fit_clusters(dm)
    model.net = oracle = ClusterScoreOracle(model.sigmas, model.cluster_centers, 0.02, model.cluster_sizes.float())
    x = model.sample(600, generator=torch.Generator().manual_seed(0))
    drawn = model.draw_clusters(600, torch.Generator().manual_seed(0))  # what sample() drew with that generator
    assert len(oracle.seen) == model.network_evaluations_per_sample == (41 if guidance_scale == 1.0 else 82)
    assert all(torch.equal(labels, drawn) for labels in oracle.seen if not (labels == 8).all())
    assert torch.equal(model.labels_of(x), drawn)
    assert ((x - model.cluster_centers[drawn]).norm(dim=1) < 3 * 0.02).float().mean() > 0.97


def test_self_guided_ncsn_trains_on_clusters_and_scores_the_null_label_by_default():
    class Unlabeled(GMMDataModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch[0], torch.full_like(batch[1], 10**6)

    dm = Unlabeled(preset="ring8", n_train=512, n_val=128, n_test=128, batch_size=256)
    model = self_guided_ncsn(label_dropout=0.5)
    seen = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    L.Trainer(max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
              num_sanity_val_steps=0, limit_val_batches=0).fit(model, datamodule=dm)
    train = torch.cat(seen[1:])  # after the data check's probe, which scores the null label
    assert torch.equal(seen[0], torch.full((2,), 8)) and train.numel() == 1024
    assert train.max() == 8 and 0.4 < (train == 8).float().mean() < 0.6  # clusters, and the null token half the time
    x = dm.split("val").__getitems__(list(range(8)))[0]
    seen.clear()
    model.ode_log_prob(x, steps=3)
    assert seen and all(torch.equal(labels, torch.full((8,), 8)) for labels in seen)
    from gen_lightning.models.ncsn import SelfGuidedNCSN

    with pytest.raises(ConfigError, match="num_classes=8 but SelfGuidedNCSN conditions it on 5 clusters"):
        SelfGuidedNCSN(DenoiserMLP(dim=2, hidden=8, depth=1, num_classes=8), GeometricSigmas(10.0, 0.02, 3),
                       AnnealedLangevin(), num_clusters=5)
    with pytest.raises(ConfigError, match="needs the unconditional model"):
        self_guided_ncsn(label_dropout=0.0, guidance_scale=2.0)
