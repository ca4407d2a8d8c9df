"""EBM: the contrastive-divergence loss by hand, the replay buffer, a training step, divergence, sampling."""

import math

import lightning as L
import pytest
import torch
from torch import nn

from gen_lightning.data.gmm import GMMDataModule
from gen_lightning.errors import ConfigError, TrainingDivergedError
from gen_lightning.models.ebm import EBM, contrastive_divergence
from gen_lightning.nets.energy import MLPEnergy


class Quadratic(nn.Module):
    """E(x) = c |x|^2 with a learnable c: exp(-E) is N(0, 1/(2c) I)."""

    def __init__(self, c: float = 0.5):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))

    def forward(self, x):
        return self.c * x.flatten(1).pow(2).sum(1)


class Images:
    """The DataModule contract for (1, 4, 4) images in [-1, 1]."""

    data_shape, num_classes, value_range, dataset_name = (1, 4, 4), None, (-1.0, 1.0), "toy images"

    def describe(self):
        return {"dataset": self.dataset_name}


def ebm(energy=None, dm=None, **kwargs) -> EBM:
    kwargs.setdefault("init_range", [-3.0, 3.0])
    model = EBM(energy if energy is not None else MLPEnergy([2], [16, 16]), **kwargs)
    model.bind_data(dm if dm is not None else GMMDataModule(n_train=256, n_val=64, n_test=64, batch_size=64))
    return model


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     limit_val_batches=0, accelerator="cpu", **kwargs)  # fmt: skip


def test_contrastive_divergence_by_hand():
    # means 2 and 1, mean squares 5 and 2: 2 - 1 + 0.5 * (5 + 2) = 4.5
    loss = contrastive_divergence(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0]), alpha=0.5)
    assert loss.item() == pytest.approx(4.5)


def test_training_loss_on_a_hand_made_energy():
    # One chain start [2, 0] (buffer of one entry, no reinit); one noiseless step of 0.5 on E = 0.5 |x|^2
    # gives x- = [2, 0] - 0.5 * [2, 0] = [1, 0], E(x-) = 0.5. Data [0, 0], [2, 2]: E = 0, 4.
    # loss = mean(0, 4) - 0.5 + 0.1 * (mean(0, 16) + 0.25) = 1.5 + 0.825
    model = ebm(Quadratic(0.5), buffer_size=1, reinit_prob=0.0, sgld_steps=1, step_size=0.5, noise_std=0.0, alpha=0.1)
    model.replay.copy_(torch.tensor([[2.0, 0.0]]))
    batch = (torch.tensor([[0.0, 0.0], [2.0, 2.0]]), torch.zeros(2, dtype=torch.long))
    loss = model.training_step(batch, 0)
    assert loss.item() == pytest.approx(2.325)
    torch.testing.assert_close(model.replay, torch.tensor([[1.0, 0.0]]))  # the negative went back into the buffer


def test_buffer_starts_reinitialize_about_reinit_prob():
    torch.manual_seed(0)
    model = ebm(buffer_size=100, reinit_prob=0.3)
    model.replay.fill_(10.0)  # outside the box, so reinitialized starts are recognizable
    x, idx, reinit = model.buffer_starts(20000)
    assert reinit.float().mean().item() == pytest.approx(0.3, abs=0.015)  # binomial SE 0.0032
    assert torch.all(x[~reinit] == 10.0)
    assert x[reinit].min() >= -3 and x[reinit].max() <= 3
    assert idx.min() >= 0 and idx.max() < 100


def test_negatives_replace_the_entries_they_started_from():
    model = ebm(buffer_size=50, sgld_steps=2)
    before = model.replay.clone()
    torch.manual_seed(1)
    _, idx, _ = model.buffer_starts(8)
    torch.manual_seed(1)  # the same draws again inside negatives()
    x = model.negatives(8)
    last_write = {int(i): k for k, i in enumerate(idx)}  # a repeated index keeps its last chain
    for i, k in last_write.items():
        torch.testing.assert_close(model.replay[i], x[k])
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[idx] = False
    torch.testing.assert_close(model.replay[untouched], before[untouched])


def test_one_training_step_changes_the_energy():
    torch.manual_seed(0)
    model = ebm(sgld_steps=2, buffer_size=64)
    before = [p.detach().clone() for p in model.energy.parameters()]
    trainer(max_steps=1).fit(model, datamodule=GMMDataModule(n_train=256, n_val=64, n_test=64, batch_size=64))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.energy.parameters()))


class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.value = value

    def forward(self, x):
        return self.w * x.flatten(1).sum(1) + self.value


@pytest.mark.parametrize("energy, kwargs, match", [
    (Constant(math.nan), {}, "the loss became nan"),
    (Constant(50.0), {"max_energy": 10.0}, r"\|E\| = 50 > max_energy = 10"),
])  # fmt: skip
def test_divergence_stops_with_one_line_before_the_update(energy, kwargs, match):
    model = ebm(energy, sgld_steps=1, buffer_size=8, **kwargs)
    dm = GMMDataModule(n_train=64, n_val=64, n_test=64, batch_size=32)
    with pytest.raises(TrainingDivergedError, match=match) as err:
        trainer(max_steps=1).fit(model, datamodule=dm)
    assert "\n" not in str(err.value) and "No checkpoint had been written yet" in str(err.value)
    assert model.energy.w.item() == 0.0  # no optimizer step


def test_sample_from_noise_and_from_buffer():
    model = ebm(sample_steps=3, buffer_size=16)
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 2) and x.abs().max() <= 3
    with torch.inference_mode():  # sample() runs SGLD even in Lightning's test loop
        y = model.sample(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, y)
    model.replay.fill_(0.5)
    z = model.sample(4, generator=torch.Generator().manual_seed(0), from_buffer=True)
    assert (z - 0.5).abs().max() < 0.2  # three steps of noise 0.01 from the buffer entries
    model.sample_init = "buffer"  # the config's way: the same chains without from_buffer
    torch.testing.assert_close(model.sample(4, generator=torch.Generator().manual_seed(0)), z)
    with pytest.raises(ConfigError, match="sample_init must be"):
        ebm(sample_init="replay")
    assert model.network_evaluations_per_sample == 3
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.zeros(2, dtype=torch.long))


def test_images_start_in_their_value_range():
    model = ebm(nn.Sequential(nn.Flatten(), nn.Linear(16, 1), nn.Flatten(0)), dm=Images(), init_range=None, buffer_size=8)
    assert model.replay.shape == (8, 1, 4, 4) and model.replay.abs().max() <= 1
    assert {"test/nll_nats", "test/bpd", "test/kl_data_model"} <= model.omitted_metrics.keys()
    with pytest.raises(ConfigError, match="2-D data only"):
        model.log_prob(torch.zeros(1, 1, 4, 4))


def test_2d_data_has_a_density_but_no_bits_per_dim():
    model = ebm()
    assert "test/bpd" in model.omitted_metrics
    assert "test/nll_nats" not in model.omitted_metrics and "test/kl_data_model" not in model.omitted_metrics
    assert model.density_kind == "exact" and ebm(nn.Sequential(nn.Flatten(), nn.Linear(16, 1), nn.Flatten(0)), dm=Images(),
                                                 init_range=None, buffer_size=8).density_kind is None


def test_log_prob_of_a_gaussian_energy_is_normalized_on_the_grid():
    # E = 0.5 |x|^2 on [-6, 6]^2: exp(-E)/Z is N(0, I) (mass outside the box ~1e-8), log p(0) = -log(2 pi)
    model = ebm(Quadratic(0.5), init_range=[-6.0, 6.0], grid_size=256)
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    expected = -math.log(2 * math.pi) - 0.5 * x.pow(2).sum(1)
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-4, rtol=0)


def test_replay_buffer_travels_in_the_checkpoint(tmp_path):
    model = ebm(buffer_size=32, sgld_steps=1)
    t = trainer(max_steps=2, default_root_dir=tmp_path)
    t.fit(model, datamodule=GMMDataModule(n_train=128, n_val=64, n_test=64, batch_size=32))
    t.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    fresh = EBM(MLPEnergy([2], [16, 16]), init_range=[-3.0, 3.0], buffer_size=32)  # no data: buffer not allocated
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    torch.testing.assert_close(fresh.replay, model.replay)
    other = ebm(buffer_size=16)
    with pytest.raises(ConfigError, match="buffer_size: 32"):
        other.on_load_checkpoint(ckpt)


def test_fit_from_a_checkpoint_resumes_the_saved_chains(tmp_path):
    # setup() fills a fresh buffer with noise; restoring the checkpoint must then put the saved chains back
    dm = GMMDataModule(n_train=128, n_val=64, n_test=64, batch_size=32)
    model = ebm(buffer_size=32, sgld_steps=1)
    t = trainer(max_steps=2, default_root_dir=tmp_path)
    t.fit(model, datamodule=dm)
    t.save_checkpoint(tmp_path / "last.ckpt")
    resumed = EBM(MLPEnergy([2], [16, 16]), init_range=[-3.0, 3.0], buffer_size=32, sgld_steps=1)
    trainer(max_steps=2, default_root_dir=tmp_path).fit(
        resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt", weights_only=False  # hparams hold the nets built here
    )
    torch.testing.assert_close(resumed.replay, model.replay)  # no further steps: max_steps was reached


@pytest.mark.parametrize("dm, kwargs, match", [
    (GMMDataModule(), {"init_range": None}, "init_range"),
    (type("Unit", (Images,), {"value_range": (0.0, 1.0)})(), {}, r"\[-1, 1\]"),
])  # fmt: skip
def test_check_data_refuses_what_the_ebm_cannot_sample(dm, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ebm(dm=dm, **kwargs)


@pytest.mark.parametrize("kwargs", [{"reinit_prob": 1.5}, {"alpha": -1.0}, {"sgld_steps": 0}, {"init_range": [1.0, -1.0]}])
def test_bad_hparams_raise(kwargs):
    with pytest.raises(ConfigError):
        EBM(MLPEnergy([2], [8]), **kwargs)
