"""ODELikelihood: dequantization, bits/dim and KL(data || model) around a model's probability-flow log-density."""

import math
from types import SimpleNamespace

import pytest
import torch

from gen_lightning.callbacks.ode_likelihood import ODELikelihood
from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import dequantized_bits_per_dim


def test_a_uniform_density_on_the_data_range_is_8_bits_per_dim():
    """p(x) = 2^-D on [-1, 1]^D: nll = D ln 2, which is 0 nats on [0, 1]^D, i.e. exactly 8 bits per dimension."""
    d = 784
    assert dequantized_bits_per_dim(torch.tensor(d * math.log(2)), d, (-1.0, 1.0)).item() == pytest.approx(8.0)
    assert dequantized_bits_per_dim(torch.tensor(0.0), d, (0.0, 1.0)).item() == pytest.approx(8.0)


class StandardNormalModel:
    """A stand-in exposing the callback's surface: the density N(0, I), as flow matching's untrained net gives."""

    conditional = False

    def __init__(self, shape, value_range):
        self.data_shape, self.value_range = shape, value_range
        self.logged, self.seen = {}, []

    def ode_log_prob(self, x, labels=None, steps=50, probes=1, generator=None):
        self.seen.append(x)
        return -0.5 * (x.flatten(1) ** 2).sum(1) - 0.5 * x[0].numel() * math.log(2 * math.pi)

    def log(self, name, value, batch_size):
        self.logged.setdefault(name, []).append((value.item(), batch_size))


def test_images_are_dequantized_into_the_data_range_and_converted_to_bits_per_dim():
    model = StandardNormalModel((1, 2, 2), (-1.0, 1.0))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(dataset_name="toy", data_shape=(1, 2, 2)))
    cb = ODELikelihood(steps=3, num_examples=5)
    cb.setup(trainer, model, "test")
    k = torch.randint(0, 256, (4, 1, 2, 2), generator=torch.Generator().manual_seed(0)).float()
    x = k / 255 * 2 - 1  # 8-bit images in [-1, 1]
    cb.on_test_epoch_start(trainer, model)
    cb.on_test_batch_end(trainer, model, None, (x, torch.zeros(4)), 0)
    cb.on_test_batch_end(trainer, model, None, (x, torch.zeros(4)), 1)  # only 1 more example counts
    cb.on_test_batch_end(trainer, model, None, (x, torch.zeros(4)), 2)  # none
    assert [b for _, b in model.logged["test/nll_nats"]] == [4, 1]
    deq = model.seen[0]
    # (k + u)/256 mapped to [-1, 1]: each value inside its own 8-bit bin, below the next one
    y = (deq + 1) / 2 * 256
    assert ((y - k) >= 0).all() and ((y - k) < 1).all()
    nll = 0.5 * (deq.flatten(1) ** 2).sum(1) + 2 * math.log(2 * math.pi)
    assert model.logged["test/bpd"][0][0] == pytest.approx(dequantized_bits_per_dim(nll, 4, (-1.0, 1.0)).mean().item(), rel=1e-5)
    assert "test/kl_data_model" in cb.metrics_report(trainer, model)["omitted"]


def test_it_refuses_models_without_an_ode_and_bad_arguments():
    with pytest.raises(ConfigError, match="probability-flow ODE"):
        ODELikelihood().setup(SimpleNamespace(), SimpleNamespace(), "test")
    with pytest.raises(ConfigError, match="probes"):
        ODELikelihood(probes=0)
