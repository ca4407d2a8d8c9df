"""Flow: densities in closed form, dequantization and bits/dim by hand, the data contract, sampling, a short GMM fit."""

import math
from functools import partial

import lightning as L
import pytest
import torch
from torch import nn

from gen_lightning.data import GMMDataModule, ImageDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.models.flow import (
    Flow,
    bits_per_dim,
    inverse_logit_transform,
    logit_transform,
    quantize,
    uniform_dequantize,
)
from gen_lightning.nets.flows import RealNVP, VariationalDequantizer, VectorRealNVP

pytestmark = pytest.mark.filterwarnings("ignore:Attribute '.*' is an instance of `nn.Module`")


class IdentityFlow(nn.Module):
    """z = x, log|det| = 0: the model's density is the base density itself."""

    def forward(self, x):
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z):
        return z


class ScaleFlow(nn.Module):
    """z = x / sigma: log|det| = -D log sigma, so p(x) = N(x; 0, sigma^2 I)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x / self.sigma, torch.full((x.shape[0],), -x[0].numel() * math.log(self.sigma))

    def inverse(self, z):
        return z * self.sigma


class TinyImages(ImageDataModule):
    """80 random 8-bit 1x4x4 images in memory."""

    data_shape = (1, 4, 4)
    num_classes = 10

    def __init__(self, **kwargs):
        super().__init__(batch_size=16, val_size=16, **kwargs)

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (80, 1, 4, 4), generator=g, dtype=torch.uint8)
        self._set_splits((x[:64], torch.zeros(64, dtype=torch.long)), (x[64:], torch.zeros(16, dtype=torch.long)))


def bound(model: Flow, dm) -> Flow:
    dm.setup("fit")
    model.bind_data(dm)
    return model


# ---- densities in closed form ------------------------------------------------------------------


def test_identity_flow_gives_the_standard_normal_log_density():
    model = bound(Flow(IdentityFlow()), GMMDataModule(n_train=64, n_val=8, n_test=8))
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    # log N(x; 0, I) = -|x|^2/2 - log(2 pi) in 2-D
    expected = torch.tensor([-math.log(2 * math.pi), -2.5 - math.log(2 * math.pi)])
    torch.testing.assert_close(model.log_prob(x), expected)


def test_scale_flow_gives_the_gaussian_of_that_scale():
    model = bound(Flow(ScaleFlow(0.5)), GMMDataModule(n_train=64, n_val=8, n_test=8))
    x = torch.tensor([[0.5, -0.5]])
    # log N(x; 0, 0.25 I) = -|x|^2/(2*0.25) - log(2 pi) - 2 log 0.5
    expected = -1.0 - math.log(2 * math.pi) - 2 * math.log(0.5)
    torch.testing.assert_close(model.log_prob(x), torch.tensor([expected]))


def test_image_log_prob_without_logit_is_the_normal_density_of_the_dequantized_image():
    model = bound(Flow(IdentityFlow(), logit_alpha=None), TinyImages())
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=torch.Generator().manual_seed(1)) / 255.0
    g = torch.Generator().manual_seed(5)
    y = uniform_dequantize(x, torch.Generator().manual_seed(5))
    expected = -0.5 * y.pow(2).flatten(1).sum(1) - 8 * math.log(2 * math.pi)  # D = 16
    torch.testing.assert_close(model.log_prob(x, generator=g), expected)


# ---- dequantization, logit and bits/dim ---------------------------------------------------------


def test_bits_per_dim_golden_values():
    # a uniform density on [0, 1)^D (nll 0) is 8 bits per 8-bit dimension; each extra D ln 2 nats adds one bit
    assert bits_per_dim(torch.tensor(0.0), 784).item() == pytest.approx(8.0)
    assert bits_per_dim(torch.tensor(784 * math.log(2)), 784).item() == pytest.approx(9.0)
    # a density of 2^(-1.05 * D) on 8-bit values: nll_y = D (1.05 - 8) ln 2
    assert bits_per_dim(torch.tensor(3072 * (1.05 - 8) * math.log(2)), 3072).item() == pytest.approx(1.05)


def test_dequantization_stays_in_its_bin_and_quantize_inverts_it():
    x = torch.arange(256.0).repeat(4) / 255.0
    y = uniform_dequantize(x, torch.Generator().manual_seed(0))
    k = torch.arange(256.0).repeat(4)
    assert ((y >= k / 256) & (y < (k + 1) / 256)).all()
    assert torch.equal(quantize(y), x)


def test_logit_transform_inverts_and_its_log_jacobian_matches_autograd():
    y = torch.tensor([[0.0, 0.3, 0.5, 0.999]], dtype=torch.float64)
    w, log_jac = logit_transform(y, 0.05)
    torch.testing.assert_close(inverse_logit_transform(w, 0.05), y)
    jac = torch.autograd.functional.jacobian(lambda v: logit_transform(v, 0.05)[0], y).reshape(4, 4)
    torch.testing.assert_close(log_jac, torch.linalg.slogdet(jac)[1].reshape(1))
    assert w[0, 2].item() == pytest.approx(0.0)  # y = 1/2 maps to logit(1/2) = 0


def test_variational_dequantization_stays_in_the_bin_and_subtracts_log_q():
    deq = VariationalDequantizer(1, 4, num_couplings=2, hidden=4)
    model = bound(Flow(IdentityFlow(), dequantizer=deq, logit_alpha=None), TinyImages())
    x = torch.arange(16.0).view(1, 1, 4, 4) * 17 / 255  # k = 0, 17, ..., 255
    y, log_q = model.dequantize(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.floor(y * 256), x * 255)
    w, correction = model.preprocess(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(correction, -log_q)
    assert "variational" in model.metric_conventions["test/nll_nats"]
    with pytest.raises(ConfigError, match="2-D data is not dequantized"):
        bound(Flow(IdentityFlow(), dequantizer=deq), GMMDataModule(n_train=64, n_val=8, n_test=8))


def test_bits_per_dim_is_reported_by_the_convention_for_images():
    model = bound(Flow(IdentityFlow()), TinyImages())
    assert model.density_kind == "exact" and "test/bpd" not in model.omitted_metrics
    assert "D ln 256" in model.metric_conventions["bits_per_dim"]
    torch.testing.assert_close(model.bits_per_dim(torch.tensor([0.0])), torch.tensor([8.0]))
    gmm = bound(Flow(IdentityFlow()), GMMDataModule(n_train=64, n_val=8, n_test=8))
    assert "test/bpd" in gmm.omitted_metrics and gmm.bits_per_dim(torch.tensor([0.0])) is None


# ---- data contract and settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "dm_kwargs, message",
    [
        ({"binarize": "dynamic"}, "binarized"),
        ({"value_range": "-1,1"}, "value_range"),
    ],
)
def test_images_must_be_8_bit_values_in_zero_one(dm_kwargs, message):
    with pytest.raises(ConfigError, match=message):
        bound(Flow(RealNVP(1, 4, num_scales=2, hidden=4, num_blocks=1)), TinyImages(**dm_kwargs))


def test_net_of_the_wrong_shape_is_refused():
    with pytest.raises(ConfigError, match="flow net cannot read data of shape"):
        bound(Flow(RealNVP(1, 8, num_scales=2, hidden=4, num_blocks=1)), TinyImages())


@pytest.mark.parametrize(
    "kwargs, message",
    [({"logit_alpha": 0.5}, "logit_alpha must be in"), ({"sample_temperature": 0.0}, "sample_temperature must be > 0")],
)
def test_bad_hyperparameters_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Flow(IdentityFlow(), **kwargs)


# ---- sampling ---------------------------------------------------------------------------


def test_temperature_scales_the_base_samples():
    model = bound(Flow(IdentityFlow(), sample_temperature=0.5), GMMDataModule(n_train=64, n_val=8, n_test=8))
    x = model.sample(20000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2)
    assert x.std().item() == pytest.approx(0.5, abs=0.01)  # the config's T
    x2 = model.sample(20000, generator=torch.Generator().manual_seed(0), temperature=2.0)
    assert x2.std().item() == pytest.approx(2.0, abs=0.04)
    assert torch.equal(model.sample(5, generator=torch.Generator().manual_seed(3)),
                       model.sample(5, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.zeros(2, dtype=torch.long))


def test_image_samples_are_8_bit_values_in_zero_one():
    model = bound(Flow(RealNVP(1, 4, num_scales=2, hidden=4, num_blocks=1)), TinyImages())
    x = model.sample(8, generator=torch.Generator().manual_seed(0), temperature=3.0)
    assert x.shape == (8, 1, 4, 4) and x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(x * 255, torch.round(x * 255))


# ---- a short fit: KL(data || model) goes down ------------------------------------------------------


def test_gmm_kl_goes_down_during_a_short_fit():
    torch.manual_seed(0)
    dm = GMMDataModule(preset="ring8", n_train=4096, n_val=8, n_test=1000)
    model = bound(Flow(VectorRealNVP(2, num_couplings=6, hidden=64)), dm)
    x_test = dm.split("test").x
    log_p_data = dm.log_prob(x_test)

    def kl() -> float:
        with torch.no_grad():
            return (log_p_data - model.log_prob(x_test)).mean().item()

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_train = dm.split("train").x
    model.train()
    first_batch = x_train[:256]
    model.log_prob(first_batch)  # ActNorm's data-dependent init, as the first training batch does
    model.eval()
    before = kl()
    model.train()
    for step in range(200):
        batch = x_train[torch.randint(0, len(x_train), (256,))]
        loss = -model.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = kl()
    # after ActNorm's init the flow is one broad Gaussian over the ring: KL ~ 2.6 nats. 300 steps take it
    # to the ring (mass spread along the circle: ~2.5 - its true width's entropy) and below.
    assert before > 2.0
    assert after < before - 1.0


# ---- the learning-rate schedule's interval ----------------------------------------------------------


@pytest.mark.parametrize("interval, halvings", [("step", 3), ("epoch", 0)])
def test_scheduler_interval_steps_the_schedule_every_step_or_every_epoch(interval, halvings):
    """StepLR(step_size=1, gamma=0.5) over 3 steps of one epoch: lr / 8 when stepped every step, unchanged per epoch."""
    dm = GMMDataModule(preset="ring8", n_train=512, n_val=8, n_test=8, batch_size=64)
    model = Flow(VectorRealNVP(2, num_couplings=2, hidden=8), optimizer=partial(torch.optim.SGD, lr=0.1),
                 scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5), scheduler_interval=interval)
    trainer = L.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", callbacks=[])
    trainer.fit(model, datamodule=dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**halvings)


def test_scheduler_interval_must_be_epoch_or_step():
    model = Flow(VectorRealNVP(2, num_couplings=2, hidden=8), scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1),
                 scheduler_interval="batch")
    with pytest.raises(ConfigError, match="scheduler_interval must be 'epoch' or 'step', got 'batch'"):
        model.configure_optimizers()

