"""VAE: the bound's parts checked by hand, the data contract, sampling, and a tiny Lightning run."""

import math

import lightning as L
import pytest
import torch
from torch import nn

from gen_lightning.callbacks import DensityMetrics
from gen_lightning.data import GMMDataModule, ImageDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian
from gen_lightning.models.vae import VAE
from gen_lightning.nets.conv import ConvDecoder, ConvEncoder
from gen_lightning.nets.mlp import MLP

pytestmark = pytest.mark.filterwarnings("ignore:Attribute '.*' is an instance of `nn.Module`")


class TinyImages(ImageDataModule):
    """64 random 8-bit 1x4x4 images per split, in memory; binarize and value_range as configured."""

    data_shape = (1, 4, 4)
    num_classes = 10

    def __init__(self, binarize="dynamic", **kwargs):
        super().__init__(batch_size=16, val_size=16, binarize=binarize, **kwargs)

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (80, 1, 4, 4), generator=g, dtype=torch.uint8)
        self._set_splits((x[:64], torch.zeros(64, dtype=torch.long)), (x[64:], torch.zeros(16, dtype=torch.long)))


def tiny_vae(likelihood=None, data_shape=(1, 4, 4), latent_dim=2, **kwargs) -> VAE:
    likelihood = likelihood or Bernoulli()
    out_shape = list(likelihood.param_shape(data_shape))
    encoder = MLP(list(data_shape), [2 * latent_dim], hidden=[16])
    decoder = MLP([latent_dim], out_shape, hidden=[16])
    return VAE(encoder, decoder, likelihood, latent_dim=latent_dim, **kwargs)


def bound(model: VAE, dm) -> VAE:
    dm.setup("fit")
    model.bind_data(dm)
    return model


# ---- hyperparameters and the KL warm-up ---------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dim": 0}, "latent_dim must be >= 1, got 0"),
        ({"beta": -0.5}, "beta must be >= 0, got -0.5"),
        ({"kl_warmup_steps": -1}, "kl_warmup_steps must be >= 0, got -1"),
        ({"iw_samples": 0}, "iw_samples must be >= 1, got 0"),
        ({"iw_chunk": 0}, "iw_chunk must be >= 1, got 0"),
        ({"sample_mode": "median"}, "sample_mode must be 'mean' or 'sample'"),
    ],
)
def test_bad_hyperparameters_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VAE(nn.Identity(), nn.Identity(), Bernoulli(), **{"latent_dim": 2, **kwargs})


def test_kl_warmup_is_linear_then_constant():
    model = tiny_vae(beta=2.0, kl_warmup_steps=100)
    assert [model.kl_weight(s) for s in (0, 25, 50, 100, 5000)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert tiny_vae(beta=0.7).kl_weight(0) == 0.7  # no warm-up


# ---- the data contract -------------------------------------------------------------------


def test_decoder_of_the_wrong_shape_names_both_shapes():
    dm = TinyImages()
    dm.data_shape = (1, 32, 32)
    model = VAE(MLP([1, 32, 32], [4], [8]), MLP([2], [1, 28, 28], [8]), Bernoulli(), latent_dim=2)
    with pytest.raises(ConfigError, match=r"decoder outputs \(B, 1, 28, 28\) but Bernoulli needs \(B, 1, 32, 32\)"):
        model.check_data(dm)


def test_encoder_that_does_not_fit_the_data_or_latent_dim():
    dm = TinyImages()
    with pytest.raises(ConfigError, match=r"encoder cannot read data of shape \(B, 1, 4, 4\).*in_shape"):
        VAE(MLP([1, 8, 8], [4], [8]), MLP([2], [1, 4, 4], [8]), Bernoulli(), latent_dim=2).check_data(dm)
    with pytest.raises(ConfigError, match=r"encoder outputs \(B, 3\) but latent_dim=2 needs \(B, 4\)"):
        VAE(MLP([1, 4, 4], [3], [8]), MLP([2], [1, 4, 4], [8]), Bernoulli(), latent_dim=2).check_data(dm)
    with pytest.raises(ConfigError, match=r"decoder cannot read latents of shape \(B, 2\)"):
        VAE(MLP([1, 4, 4], [4], [8]), MLP([3], [1, 4, 4], [8]), Bernoulli(), latent_dim=2).check_data(dm)


def test_likelihood_that_does_not_fit_the_data():
    with pytest.raises(ConfigError, match="Bernoulli likelihood needs binary data"):
        tiny_vae(Bernoulli()).check_data(TinyImages(binarize="none"))
    with pytest.raises(ConfigError, match="8-bit images"):
        tiny_vae(DiscretizedLogistic()).check_data(TinyImages(binarize="dynamic"))


def test_check_data_leaves_batchnorm_statistics_alone():
    encoder, decoder = ConvEncoder(1, 28, [4, 8], 4), ConvDecoder(2, 1, 28, [4, 8])
    model = VAE(encoder, decoder, Bernoulli(), latent_dim=2)
    dm = TinyImages()
    dm.data_shape = (1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.check_data(dm)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_omitted_metrics_and_conventions():
    gmm = bound(tiny_vae(Gaussian(), data_shape=(2,)), GMMDataModule(preset="ring8", n_train=64))
    assert set(gmm.omitted_metrics) == {"val/bpd", "test/bpd_elbo", "test/bpd"}
    assert gmm.omitted_metrics["test/bpd"].startswith("2-D continuous data")
    assert gmm.density_kind == "bound" and "importance-weighted" in gmm.metric_conventions["test/nll_nats"]
    mnist_like = bound(tiny_vae(Bernoulli()), TinyImages())
    assert set(mnist_like.omitted_metrics) == set()  # KL(data || model) on data without a density: DensityMetrics
    assert "nll / (D ln 2)" in mnist_like.metric_conventions["bits_per_dim"]
    blurry = bound(tiny_vae(Gaussian(std=0.1)), TinyImages(binarize="none"))
    assert "dequantize: true" in blurry.omitted_metrics["test/bpd"]


def test_bits_per_dim_by_hand():
    d = 16  # data (1, 4, 4)
    discrete = bound(tiny_vae(Bernoulli()), TinyImages())
    assert math.isclose(discrete.bits_per_dim(torch.tensor(d * math.log(2))).item(), 1.0, rel_tol=1e-6)
    density = bound(tiny_vae(Gaussian(dequantize=True)), TinyImages(binarize="none"))
    # a density of 256^D on [0, 1]^D (nll = -D ln 256) is the uniform 8-bit distribution: 8 bits/dim
    assert math.isclose(density.bits_per_dim(torch.tensor(-d * math.log(256) + 8 * d * math.log(2))).item(), 8.0, rel_tol=1e-6)


# ---- the bounds ----------------------------------------------------------------------------


def exact_linear_gaussian_vae(w: float, s: float) -> VAE:
    """z ~ N(0, 1), x | z ~ N(w z, s^2), so x ~ N(0, w^2 + s^2); the encoder is the exact posterior
    q(z | x) = N(w x / (w^2 + s^2), s^2 / (w^2 + s^2))."""
    encoder, decoder = nn.Linear(1, 2), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[w / (w**2 + s**2)], [0.0]]))
        encoder.bias.copy_(torch.tensor([0.0, math.log(s**2 / (w**2 + s**2))]))
        decoder.weight.fill_(w)
    return VAE(encoder, decoder, Gaussian(std=s), latent_dim=1, iw_chunk=7)


@pytest.mark.parametrize("k", [1, 5, 100])
def test_iwae_with_the_exact_posterior_is_exactly_log_px(k):
    torch.manual_seed(0)
    w, s = 1.5, 0.5
    model = exact_linear_gaussian_vae(w, s)
    x = torch.tensor([[-2.0], [0.0], [0.7], [3.0]])
    log_px = torch.distributions.Normal(0.0, math.sqrt(w**2 + s**2)).log_prob(x[:, 0])
    assert torch.allclose(model.iwae_log_likelihood(x, k), log_px, atol=1e-5)


def test_iwae_is_above_the_elbo_and_equals_it_in_expectation_for_k1():
    torch.manual_seed(0)
    model = tiny_vae(Gaussian(), data_shape=(2,), latent_dim=2, iw_chunk=64).eval()
    x = torch.tensor([[1.0, -0.5], [0.2, 2.0]]).repeat_interleave(4000, dim=0)  # many draws of two points
    with torch.no_grad():
        log_px_z, kl = model.elbo_terms(x)
        elbo = (log_px_z - kl).view(2, -1).mean(1)
        iwae_1 = model.iwae_log_likelihood(x, 1).view(2, -1).mean(1)
        iwae_100 = model.iwae_log_likelihood(x[::4000], 100)
    assert torch.allclose(iwae_1, elbo, atol=0.05)  # E[log w] = ELBO; 4000 draws each
    assert (iwae_100 > elbo).all()


def test_log_prob_uses_iw_samples_and_is_finite():
    model = tiny_vae(Gaussian(), data_shape=(2,), iw_samples=10, iw_chunk=3)
    assert model.log_prob(torch.randn(5, 2)).shape == (5,)


def test_float32_bound_under_bf16_autocast():
    model = tiny_vae(Bernoulli())
    x = torch.bernoulli(torch.full((4, 1, 4, 4), 0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, _ = model.encode(x)
        log_px_z, kl = model.elbo_terms(x)
    assert mu.dtype == log_px_z.dtype == kl.dtype == torch.float32


# ---- sampling ------------------------------------------------------------------------------


def test_sample_shape_range_and_determinism():
    model = bound(tiny_vae(Bernoulli()), TinyImages())
    a = model.sample(6, generator=torch.Generator().manual_seed(3))
    b = model.sample(6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, 1, 4, 4) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    drawn = bound(tiny_vae(Bernoulli(), sample_mode="sample"), TinyImages()).sample(6)
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.zeros(2, dtype=torch.long))


def test_sample_on_gmm_has_the_data_shape():
    model = bound(tiny_vae(Gaussian(), data_shape=(2,)), GMMDataModule(preset="ring8", n_train=64))
    assert model.sample(5).shape == (5, 2)


def test_interpolation_grid_starts_and_ends_at_the_posterior_means():
    model = bound(tiny_vae(Bernoulli()), TinyImages())
    x_a, x_b = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    grid = model.interpolate(x_a, x_b, steps=5)
    assert grid.shape == (15, 1, 4, 4)
    with torch.no_grad():
        ends = model.likelihood.mean(model.decode(model.encode(torch.cat([x_a, x_b]))[0]))
    assert torch.allclose(grid.view(3, 5, 1, 4, 4)[:, 0], ends[:3], atol=1e-6)
    assert torch.allclose(grid.view(3, 5, 1, 4, 4)[:, -1], ends[3:], atol=1e-6)


# ---- a tiny run through Lightning ------------------------------------------------------------


def run(model: VAE, dm) -> dict:
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, log_every_n_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[DensityMetrics()],
    )
    trainer.fit(model, dm)
    fit_metrics = dict(trainer.callback_metrics)
    return fit_metrics | trainer.test(model, dm, verbose=False)[0]


def test_fit_and_test_on_gmm_log_the_density_metrics():
    metrics = run(tiny_vae(Gaussian(), data_shape=(2,), iw_samples=20, kl_warmup_steps=10), GMMDataModule(n_train=64, n_val=32, n_test=32, batch_size=16))
    assert {"train/loss", "train/rec", "train/kl", "train/beta", "val/loss"} <= set(metrics)
    assert {"test/nelbo_nats", "test/nll_nats", "test/kl_data_model"} <= set(metrics)
    assert not any("bpd" in name for name in metrics)
    assert metrics["train/beta"] == pytest.approx(0.1)  # logged at step 1 of a 10-step warm-up


def test_fit_and_test_on_images_log_bits_per_dim():
    dm = TinyImages(binarize="none")
    model = VAE(ConvEncoder(1, 4, [4], 4, norm="group"), ConvDecoder(2, 2, 4, [4], norm="group"), DiscretizedLogistic(), latent_dim=2, iw_samples=10)
    metrics = run(model, dm)
    assert {"val/loss", "val/bpd", "test/nelbo_nats", "test/nll_nats", "test/bpd_elbo", "test/bpd"} <= set(metrics)
    assert "test/kl_data_model" not in metrics
    assert metrics["test/bpd"] == pytest.approx(metrics["test/nll_nats"] / (16 * math.log(2)), rel=1e-5)


def test_scheduler_is_stepped_per_epoch_and_metric_declarations_are_read_only():
    from functools import partial

    model = tiny_vae(scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    config = model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(tiny_vae().configure_optimizers(), torch.optim.Adam)
    with pytest.raises(AttributeError):  # callbacks keep their findings; the model's are computed from its config
        model.omitted_metrics = {"test/fid": "a callback's note"}


# ---- the networks the configs inject -------------------------------------------------------


@pytest.mark.parametrize("image_size", [28, 32, 64])
@pytest.mark.parametrize("channels", [[8], [8, 16], [8, 16, 32]])
def test_conv_decoder_mirrors_the_encoder_to_the_exact_size(image_size, channels):
    encoder = ConvEncoder(3, image_size, channels, out_features=10, norm="group")
    decoder = ConvDecoder(5, 6, image_size, channels, norm="batch", out_activation="tanh")
    h = encoder(torch.randn(2, 3, image_size, image_size))
    x = decoder(h[:, :5])
    assert h.shape == (2, 10) and x.shape == (2, 6, image_size, image_size)
    assert x.abs().max() <= 1  # tanh output for a GAN generator


def test_mlp_reshapes_and_refuses_bad_shapes():
    net = MLP([1, 4, 4], [2, 3], hidden=[8, 8], activation="silu")
    assert net(torch.randn(5, 1, 4, 4)).shape == (5, 2, 3)
    assert MLP([3], [1, 2, 2], hidden=[]).net[0].in_features == 3  # no hidden layer: one Linear
    with pytest.raises(ValueError, match=r"expects input \(B, 1, 4, 4\)"):
        net(torch.randn(5, 16))
    with pytest.raises(ConfigError, match="hidden must hold sizes >= 1"):
        MLP([2], [2], hidden=[0])
    with pytest.raises(ConfigError, match="too small for 4 stride-2 layers"):
        ConvEncoder(1, 8, [4, 4, 4, 4], 2)
