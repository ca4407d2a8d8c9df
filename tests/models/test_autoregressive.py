"""AutoregressiveModel and its conditionals: closed forms, ensembles, data checks, a training step."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning import likelihoods
from gen_lightning.likelihoods import Bernoulli, Categorical256, MixtureOfGaussians
from gen_lightning.models.autoregressive import AutoregressiveModel
from gen_lightning.nets.made import MADE
from gen_lightning.nets.nade import NADE
from gen_lightning.nets.pixelcnn import GatedPixelCNN


def fake_dm(shape, binarize="dynamic", value_range=(0.0, 1.0), name="fake"):
    """What a DataModule exposes to a model (data/base.py)."""
    info = {"dataset": name, "binarize": binarize, "binarize_convention": f"{binarize} convention"}
    return SimpleNamespace(data_shape=shape, num_classes=None, value_range=value_range, binarize=binarize,
                           dataset_name=name, describe=lambda: info)


def bound(net, likelihood, dm) -> AutoregressiveModel:
    model = AutoregressiveModel(net, likelihood)
    model.bind_data(dm)
    return model


# ---- conditionals ---------------------------------------------------------------------------


def test_categorical256_uniform_logits_give_d_log_256():
    x = torch.randint(0, 256, (2, 3, 2, 2)).float() / 255
    params = torch.zeros(2, 256 * 3, 2, 2)
    assert torch.allclose(Categorical256().log_prob(params, x), torch.full((2,), -12 * math.log(256)))


def test_categorical256_puts_the_mass_where_the_logit_is():
    params = torch.full((1, 256, 1, 1), -1e4)
    params[0, 17] = 0.0  # all mass on k = 17
    x = torch.full((1, 1, 1, 1), 17 / 255)
    assert torch.allclose(Categorical256().log_prob(params, x), torch.zeros(1))
    assert Categorical256().sample(params).item() == pytest.approx(17 / 255)
    assert Categorical256().mean(params).item() == pytest.approx(17 / 255)


def test_one_component_mixture_is_a_gaussian():
    mog = MixtureOfGaussians(num_components=1, min_std=1e-6)
    mu, log_std, x = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, math.log(2.0)]]), torch.tensor([[1.0, 1.0]])
    params = torch.cat([torch.zeros(1, 2), mu, log_std], dim=1)  # logits, means, log-stds: (1, 3K*D)
    expected = sum(-0.5 * ((xi - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
                   for xi, m, s in [(1.0, 0.5, 1.0), (1.0, -1.0, 2.0)])
    assert mog.log_prob(params, x).item() == pytest.approx(expected, abs=1e-5)


def test_mixture_samples_have_the_mixtures_moments():
    """pi = (0.25, 0.75), mu = (-2, 2), sigma = (0.5, 1): mean 1, variance 0.25*4.25 + 0.75*5 - 1 = 3.8125."""
    mog = MixtureOfGaussians(num_components=2, min_std=1e-6, spread=0.0)
    params = torch.tensor([[math.log(0.25), math.log(0.75), -2.0, 2.0, math.log(0.5), 0.0]]).expand(40000, -1)
    x = mog.sample(params, generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(1.0, abs=0.03)
    assert x.var().item() == pytest.approx(3.8125, abs=0.08)


def test_mixture_means_start_evenly_spread():
    mog = MixtureOfGaussians(num_components=4, spread=2.0)
    _, mu, _ = mog.components(torch.zeros(1, 12))  # a net that outputs 0: the means are the offsets
    assert mu[0, :, 0].tolist() == [-1.5, -0.5, 0.5, 1.5]


def test_mog_made_density_integrates_to_one_on_a_grid():
    torch.manual_seed(0)
    model = bound(MADE([2], hidden=[32], params_per_dim=9), MixtureOfGaussians(3, min_std=0.05),
                  fake_dm((2,), binarize="none", value_range=None))
    step = 0.02
    ticks = torch.arange(-8, 8, step) + step / 2  # cell centres
    grid = torch.cartesian_prod(ticks, ticks)  # (640000, 2)
    with torch.no_grad():
        mass = model.log_prob(grid).exp().sum() * step**2
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


# ---- the model ------------------------------------------------------------------------------


def test_ensemble_log_prob_is_the_log_mean_of_the_masks_probabilities():
    torch.manual_seed(1)
    model = bound(MADE([1, 2, 3], hidden=[16], order="random", num_masks=3), Bernoulli(), fake_dm((1, 2, 3)))
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6))).view(-1, 1, 2, 3)
    with torch.no_grad():
        each = torch.stack([model.log_prob_one_mask(x, m).exp() for m in range(3)])  # (3, 64)
        assert torch.allclose(model.log_prob(x).exp(), each.mean(0), atol=1e-7)
        assert abs(model.log_prob(x).logsumexp(0).exp().item() - 1.0) < 1e-5


@pytest.mark.parametrize("net", [NADE([1, 2, 2], hidden=4), MADE([1, 2, 2], hidden=[8], num_masks=2),
                                 GatedPixelCNN(1, 2, 1, 4, 1, 3, 3, 4)], ids=lambda n: type(n).__name__)
def test_sample_has_the_data_shape_and_refuses_labels(net):
    model = bound(net, Bernoulli(), fake_dm((1, 2, 2)))
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 2, 2) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert model.training  # sample() switches to eval mode and back
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.zeros(2, dtype=torch.long))


def test_contract_values_for_binarized_and_8bit_images():
    binary = bound(NADE([1, 4, 4], hidden=4), Bernoulli(), fake_dm((1, 4, 4)))
    assert binary.network_evaluations_per_sample == 16
    assert "test/bpd" in binary.omitted_metrics and "nats per image" in binary.omitted_metrics["test/bpd"]
    assert binary.metric_conventions["binarization"] == "dynamic convention"
    rgb = bound(GatedPixelCNN(3, 4, 256, 6, 1, 3, 3, 6), Categorical256(), fake_dm((3, 4, 4), binarize="none"))
    assert rgb.network_evaluations_per_sample == 48 and "test/bpd" not in rgb.omitted_metrics
    assert rgb.bits_per_dim(torch.tensor(48 * math.log(2))).item() == pytest.approx(1.0)  # nll / (D ln 2)


def test_one_training_step_changes_the_parameters():
    torch.manual_seed(2)
    model = bound(GatedPixelCNN(1, 4, 1, 6, 2, 3, 3, 6), Bernoulli(), fake_dm((1, 4, 4)))
    opt = model.configure_optimizers()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.bernoulli(torch.full((8, 1, 4, 4), 0.3))
    loss = model.training_step((x, None), 0)  # mean NLL in nats
    assert loss.item() == pytest.approx(-model.log_prob(x).mean().item(), rel=1e-6)
    loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "net, likelihood, dm, message",
    [
        (NADE([1, 2, 2], 4), Bernoulli(), fake_dm((1, 2, 2), binarize="none"), "binarize='none'"),
        (GatedPixelCNN(1, 2, 256, 4, 1, 3, 3, 4), Categorical256(), fake_dm((1, 2, 2)), "binarize='dynamic'"),
        (MADE([2], [8], 3), MixtureOfGaussians(1), fake_dm((1, 2, 2), binarize="none"), "holds images of shape"),
        (NADE([1, 3, 3], 4), Bernoulli(), fake_dm((1, 2, 2)), r"NADE cannot read data of shape \(1, 2, 2\)"),
        (GatedPixelCNN(1, 2, 1, 4, 1, 3, 3, 4), Categorical256(), fake_dm((1, 2, 2), binarize="none"),
         "set the net's params_per_dim/params_per_channel to 256"),
    ],
)
def test_refuses_data_that_does_not_fit(net, likelihood, dm, message):
    with pytest.raises(ConfigError, match=message) as exc:
        AutoregressiveModel(net, likelihood).bind_data(dm)
    assert "\n" not in str(exc.value)


class SpyMADE(MADE):
    """A MADE that records the mask index of every call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def forward(self, x, mask=0):
        self.seen.append(mask)
        return super().forward(x, mask)


def test_training_cycles_through_the_masks_and_validation_averages_them():
    import lightning as L

    from gen_lightning.data import GMMDataModule

    net = SpyMADE([2], hidden=[8], params_per_dim=6, order="random", num_masks=3)
    model = AutoregressiveModel(net, MixtureOfGaussians(2))
    dm = GMMDataModule(preset="ring8", n_train=64, n_val=16, n_test=16, batch_size=16)
    trainer = L.Trainer(max_steps=4, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    probe, train, val = net.seen[0], net.seen[1:5], net.seen[5:]  # setup checks the net's output shape once
    assert probe == 0 and train == [0, 1, 2, 0] and val == [0, 1, 2]  # step k uses mask k % 3; validation all 3


def test_the_conditionals_moved_to_likelihoods_keep_their_old_import_path():
    """Configs and checkpoints of earlier versions name gen_lightning.models.autoregressive.Categorical256."""
    from gen_lightning.models import autoregressive

    assert autoregressive.Categorical256 is likelihoods.Categorical256
    assert autoregressive.MixtureOfGaussians is likelihoods.MixtureOfGaussians
