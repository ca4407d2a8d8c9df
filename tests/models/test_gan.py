"""GAN and conditional GAN: network shapes, the data contract, one manual-optimization step, EMA, divergence."""

from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn

from gen_lightning.callbacks import SampleGrid
from gen_lightning.data import GMMDataModule
from gen_lightning.errors import ConfigError, TrainingDivergedError
from gen_lightning.models.gan import GAN, ConditionalGAN, SelfConditionedGAN
from gen_lightning.nets.dcgan import DCGANDiscriminator, DCGANGenerator, MinibatchStd
from gen_lightning.nets.gan_mlp import MLPDiscriminator, MLPGenerator

IMAGE_SHAPES = [(1, 28), (3, 32), (3, 64)]


# ---- networks ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels, size", IMAGE_SHAPES)
@pytest.mark.parametrize("num_classes", [None, 10])
def test_dcgan_shapes(channels, size, num_classes):
    g = DCGANGenerator(latent_dim=16, channels=channels, image_size=size, width=8, num_classes=num_classes)
    d = DCGANDiscriminator(channels=channels, image_size=size, width=8, num_classes=num_classes)
    labels = torch.tensor([0, 3, 9]) if num_classes else None
    x = g(torch.randn(3, 16), labels)
    assert x.shape == (3, channels, size, size)
    assert x.abs().max() <= 1.0  # tanh output, the GAN data range
    assert d(x, labels).shape == (3,)


@pytest.mark.parametrize("norm, spectral_norm", [("batch", False), ("layer", True), ("none", True)])
def test_dcgan_discriminator_options(norm, spectral_norm):
    d = DCGANDiscriminator(channels=3, image_size=32, width=8, norm=norm, spectral_norm=spectral_norm, num_classes=10)
    assert d(torch.randn(2, 3, 32, 32), torch.tensor([1, 2])).shape == (2,)
    assert any(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == (norm == "batch")
    first = d.features[0]
    assert hasattr(first, "parametrizations") == spectral_norm
    assert not isinstance(d.features[1], nn.BatchNorm2d)  # no norm after the first conv (Radford et al. 2016)


def test_minibatch_std_is_the_groups_average_feature_spread():
    # groups of 2 take examples (0, 2) and (1, 3): per feature the population std of two values a, b is |a - b| / 2
    h = torch.tensor([[1.0, 5.0], [0.0, 0.0], [3.0, 1.0], [0.0, 4.0]]).view(4, 2, 1, 1)
    out = MinibatchStd(group_size=2)(h)
    assert out.shape == (4, 3, 1, 1)
    torch.testing.assert_close(out[:, :2], h)  # the features pass through
    group_a, group_b = (1.0 + 2.0) / 2, (0.0 + 2.0) / 2  # mean over features of |a - b| / 2
    torch.testing.assert_close(out[:, 2].flatten(), torch.tensor([group_a, group_b, group_a, group_b]), atol=1e-4, rtol=0)
    # a collapsed batch (every example the same) scores ~0 whatever the features
    same = torch.randn(1, 2, 3, 3).expand(8, -1, -1, -1)
    assert MinibatchStd(4)(same)[:, 2].abs().max() < 1e-3
    # a batch that is not a multiple of the group (an epoch's last batch) uses smaller groups: 6 = 3 groups of 2
    assert MinibatchStd(4)(torch.randn(6, 2, 3, 3)).shape == (6, 3, 3, 3)
    d = DCGANDiscriminator(width=4, minibatch_std=4)
    assert d(torch.randn(6, 1, 28, 28)).shape == (6,)
    with pytest.raises(ConfigError, match="group size"):
        DCGANDiscriminator(minibatch_std=-1)
    with pytest.raises(ConfigError, match=">= 2"):
        MinibatchStd(1)


def test_pacgan_discriminator_scores_consecutive_examples_jointly():
    torch.manual_seed(0)
    d = DCGANDiscriminator(width=4, norm="none", pack=2)  # no norm: each pack's score depends on that pack alone
    assert d.features[0].in_channels == 2  # the pack's two images stacked along the channels
    x = torch.randn(7, 1, 28, 28)
    scores = d(x)
    assert scores.shape == (3,)  # 7 examples: packs (0, 1), (2, 3), (4, 5); example 6 is dropped
    torch.testing.assert_close(d(x[:6]), scores)
    torch.testing.assert_close(d(x[2:4]), scores[1:2])
    torch.testing.assert_close(d(x[[4, 5, 0, 1]]), scores[[2, 0]])  # reordering packs reorders their scores
    assert not torch.allclose(d(x[[1, 0]]), scores[:1])  # within a pack the order matters: channel 0 is the first
    with torch.no_grad():  # with the second channel's weights zero, only each pack's first member counts
        d.features[0].weight[:, 1].zero_()
    y = x.clone()
    y[1::2] = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(d(y[:6]), d(x[:6]))
    with pytest.raises(ConfigError, match="pack"):
        DCGANDiscriminator(pack=0)
    with pytest.raises(ConfigError, match="unconditional"):
        DCGANDiscriminator(pack=2, num_classes=10)
    with pytest.raises(ConfigError, match="pack: 1"):
        GAN(DCGANGenerator(latent_dim=4, width=4), DCGANDiscriminator(width=4, norm="layer", pack=2), latent_dim=4,
            loss="wgan-gp")


@pytest.mark.parametrize("num_classes", [None, 25])
def test_mlp_shapes(num_classes):
    g = MLPGenerator(latent_dim=4, hidden=[32, 32], num_classes=num_classes, batch_norm=True)
    d = MLPDiscriminator(hidden=[32, 32], spectral_norm=True, num_classes=num_classes)
    labels = torch.arange(5) if num_classes else None
    x = g(torch.randn(5, 4), labels)
    assert x.shape == (5, 2)
    assert d(x, labels).shape == (5,)


def test_packed_discriminator_scores_groups_of_samples():
    d = MLPDiscriminator(hidden=[8], pack=4)
    assert d(torch.randn(12, 2)).shape == (3,)
    x = torch.randn(8, 2)
    torch.testing.assert_close(d(x), d.head(d.body(x.reshape(2, 8)), None))  # packs: consecutive examples side by side
    with pytest.raises(ConfigError, match="does not split into packs of 4"):
        d(torch.randn(10, 2))
    with pytest.raises(ConfigError, match="takes no labels"):
        MLPDiscriminator(pack=2, num_classes=10)


def test_mlp_generator_starts_spread_at_unit_scale():
    # He init keeps the signal's scale through the ReLU layers; PyTorch's default shrinks it ~20x here
    x = MLPGenerator(latent_dim=8)(torch.randn(4096, 8, generator=torch.Generator().manual_seed(0)))
    assert 0.3 < x.std(0).min() and x.std(0).max() < 3.0


def test_nets_check_their_labels():
    with pytest.raises(ValueError, match="takes no labels"):
        MLPGenerator(latent_dim=4)(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs labels"):
        DCGANDiscriminator(num_classes=10)(torch.randn(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="num_classes"):
        MLPGenerator(num_classes=1)
    with pytest.raises(ConfigError, match="image_size"):
        DCGANGenerator(image_size=48)


def test_projection_head_uses_the_label():
    d = MLPDiscriminator(hidden=[8], num_classes=3)
    x = torch.randn(4, 2).repeat(3, 1)  # the same 4 points under labels 0, 1, 2
    out = d(x, torch.arange(3).repeat_interleave(4)).view(3, 4)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


# ---- the data contract -------------------------------------------------------------------
def mlp_gan(cls=GAN, num_classes=None, **kwargs) -> GAN:
    return cls(MLPGenerator(latent_dim=4, hidden=[32, 32], num_classes=num_classes),
               MLPDiscriminator(hidden=[32, 32], num_classes=num_classes), latent_dim=4, **kwargs)


def dcgan(channels=1, size=28, num_classes=None, cls=GAN) -> GAN:
    return cls(DCGANGenerator(latent_dim=8, channels=channels, image_size=size, width=4, num_classes=num_classes),
               DCGANDiscriminator(channels=channels, image_size=size, width=4, num_classes=num_classes), latent_dim=8)


def image_dm(shape=(1, 28, 28), value_range=(-1.0, 1.0), num_classes=10, name="MNIST"):
    return SimpleNamespace(data_shape=shape, value_range=value_range, num_classes=num_classes, dataset_name=name,
                           describe=lambda: {"dataset": name})


@pytest.mark.parametrize("channels, size", IMAGE_SHAPES)
def test_dcgan_fits_its_data(channels, size):
    for model in (dcgan(channels, size), dcgan(channels, size, num_classes=10, cls=ConditionalGAN)):
        model.bind_data(image_dm((channels, size, size)))
        x = model.sample(4, labels=torch.arange(4) if model.conditional else None)
        assert x.shape == (4, channels, size, size)


def test_images_must_be_in_minus_one_one():
    with pytest.raises(ConfigError, match='value_range: "-1,1"'):
        dcgan().bind_data(image_dm(value_range=(0.0, 1.0)))


def test_generator_shape_mismatch_is_one_config_error():
    with pytest.raises(ConfigError, match=r"generator outputs \(B, 3, 32, 32\).*\(B, 1, 28, 28\)"):
        dcgan(channels=3, size=32).bind_data(image_dm())


def test_discriminator_that_cannot_read_the_data():
    model = GAN(DCGANGenerator(latent_dim=8, width=4), DCGANDiscriminator(channels=3, width=4), latent_dim=8)
    with pytest.raises(ConfigError, match="discriminator cannot read data of shape"):
        model.bind_data(image_dm())


def test_latent_dim_mismatch():
    model = GAN(MLPGenerator(latent_dim=3, hidden=[8]), MLPDiscriminator(hidden=[8]), latent_dim=4)
    with pytest.raises(ConfigError, match="generator cannot read latents"):
        model.bind_data(GMMDataModule(preset="ring8"))


def test_packed_discriminator_fits_the_data():
    model = GAN(MLPGenerator(latent_dim=4, hidden=[8]), MLPDiscriminator(hidden=[8], pack=2), latent_dim=4)
    model.bind_data(GMMDataModule(preset="ring8"))


def test_gmm_is_fine_for_the_unconditional_gan():
    model = mlp_gan()
    model.bind_data(GMMDataModule(preset="grid25"))
    assert model.sample(10).shape == (10, 2)
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(10, labels=torch.zeros(10, dtype=torch.long))


def test_conditional_gan_refuses_unlabeled_data():
    model = mlp_gan(ConditionalGAN, num_classes=25)
    assert model.conditional and not mlp_gan().conditional
    with pytest.raises(ConfigError, match="conditional but GMM-grid25 has no labels"):
        model.bind_data(GMMDataModule(preset="grid25"))


def test_conditional_nets_must_know_the_number_of_classes():
    with pytest.raises(ConfigError, match="num_classes: 10"):
        dcgan(num_classes=None, cls=ConditionalGAN).bind_data(image_dm())
    with pytest.raises(ConfigError, match="ConditionalGAN"):
        dcgan(num_classes=10).bind_data(image_dm())


def test_conditional_samples_follow_their_labels():
    model = dcgan(num_classes=10, cls=ConditionalGAN)
    model.bind_data(image_dm())
    g = lambda: torch.Generator().manual_seed(0)
    same_z_other_label = model.sample(2, torch.tensor([0, 0]), g()), model.sample(2, torch.tensor([5, 5]), g())
    assert not torch.allclose(*same_z_other_label)
    torch.testing.assert_close(model.sample(2, torch.tensor([0, 0]), g()), same_z_other_label[0])
    with pytest.raises(ConfigError, match="pass labels"):
        model.sample(2)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_critic": 0}, "n_critic must be >= 1"),
    ({"real_label": 1.2}, "real_label must be in"),
    ({"loss": "hinge", "real_label": 0.9}, "applies to loss 'bce' only"),
    ({"loss": "wgan-gp", "gp_weight": 0.0}, "gp_weight > 0"),
    ({"r1_gamma": -1.0}, "r1_gamma must be >= 0"),
])
def test_hyperparameters_out_of_range(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        mlp_gan(**kwargs)


def test_wgan_gp_refuses_batchnorm_in_the_discriminator():
    g, d = DCGANGenerator(width=4), DCGANDiscriminator(width=4, norm="batch")
    with pytest.raises(ConfigError, match="norm: layer"):
        GAN(g, d, latent_dim=100, loss="wgan-gp")
    GAN(g, DCGANDiscriminator(width=4, norm="layer"), latent_dim=100, loss="wgan-gp")


# ---- training ------------------------------------------------------------------------------
def tiny_gmm(**kwargs) -> GMMDataModule:
    return GMMDataModule(preset="grid25", n_train=256, n_val=128, n_test=128, batch_size=64, **kwargs)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0)
    return L.Trainer(**(defaults | kwargs))


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


class Snapshots:
    """Wraps each player's helper: the parameters of both players before and after it, and the frozen player's grads."""

    def __init__(self):
        self.records = []

    def around(self, name: str, model: GAN, step, *args):
        frozen = model.generator if name == "d" else model.discriminator
        grads_before = grads(frozen)
        before = params(model.generator), params(model.discriminator)
        out = step(*args)
        after = params(model.generator), params(model.discriminator)
        self.records.append((name, before, after, grads_before == grads(frozen)))
        return out


def grads(net: nn.Module) -> list:
    return [None if p.grad is None else p.grad.clone().tolist() for p in net.parameters()]


@pytest.mark.parametrize("loss, r1_gamma", [("bce", 0.0), ("hinge", 1.0), ("wgan-gp", 0.0)])
def test_one_step_moves_each_player_only_in_its_own_helper(loss, r1_gamma):
    snaps = Snapshots()

    class Recorded(GAN):
        def discriminator_step(self, *args):
            return snaps.around("d", self, super().discriminator_step, *args)

        def generator_step(self, *args):
            return snaps.around("g", self, super().generator_step, *args)

    model = Recorded(MLPGenerator(latent_dim=4, hidden=[16]), MLPDiscriminator(hidden=[16]), latent_dim=4,
                     loss=loss, r1_gamma=r1_gamma)
    trainer(limit_train_batches=1).fit(model, tiny_gmm())
    assert [r[0] for r in snaps.records] == ["d", "g"]
    (_, (g0, d0), (g1, d1), g_grads_kept), (_, (g2, d2), (g3, d3), d_grads_kept) = snaps.records
    assert same(g0, g1) and not same(d0, d1)  # D's step: G untouched, D moved
    assert same(d2, d3) and not same(g2, g3)  # G's step: D untouched, G moved
    assert g_grads_kept and d_grads_kept  # no gradient reached the frozen player
    assert all(p.requires_grad for p in model.parameters())  # both players unfrozen again afterwards


def test_n_critic_discriminator_steps_per_generator_step():
    calls = []

    class Counted(GAN):
        def discriminator_step(self, *args):
            calls.append("d")
            return super().discriminator_step(*args)

        def generator_step(self, *args):
            calls.append("g")
            return super().generator_step(*args)

    model = Counted(MLPGenerator(latent_dim=4, hidden=[16]), MLPDiscriminator(hidden=[16]), latent_dim=4, n_critic=2)
    trainer().fit(model, tiny_gmm())  # 4 batches
    assert calls == ["d", "d", "g", "d", "d", "g"]


def test_stability_signals_are_logged():
    model = mlp_gan()
    tr = trainer(limit_train_batches=2, limit_val_batches=1)
    tr.fit(model, tiny_gmm())
    logged = set(tr.callback_metrics)
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/d_grad_norm", "train/g_grad_norm",
            "val/loss"} <= logged
    assert 0 <= tr.callback_metrics["train/d_real"] <= 1  # BCE: a probability


class NaNAfter(nn.Module):
    """An MLP discriminator whose output turns NaN from its `after`-th training call on."""

    def __init__(self, after: int):
        super().__init__()
        self.net, self.after, self.calls = MLPDiscriminator(hidden=[16]), after, 0

    def forward(self, x, labels=None):
        self.calls += self.training
        out = self.net(x)
        return out * float("nan") if self.calls > self.after else out


def test_divergence_stops_before_the_weights_change():
    model = GAN(MLPGenerator(latent_dim=4, hidden=[16]), NaNAfter(after=4), latent_dim=4)  # D+G steps use 3 calls
    before = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before["params"] = params(pl_module)

    with pytest.raises(TrainingDivergedError, match="the discriminator loss became nan at step 2"):
        trainer(callbacks=[Snapshot()]).fit(model, tiny_gmm())
    assert same(before["params"], params(model))  # the failing batch changed nothing
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lr_schedulers_step_once_per_epoch():
    model = mlp_gan(g_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                    d_optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer(max_epochs=2, limit_train_batches=1).fit(model, tiny_gmm())
    opt_g, opt_d = model.optimizers()
    assert opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)  # Adam's default lr, halved twice
    assert opt_d.param_groups[0]["lr"] == pytest.approx(1e-3)


# ---- EMA of the generator --------------------------------------------------------------
class RecordingGrid(SampleGrid):
    """A SampleGrid that also keeps the generator weights it drew with."""

    def draw(self, pl_module):
        self.weights = params(pl_module.generator)
        return super().draw(pl_module)


def test_sample_grid_draws_from_the_averaged_generator(tmp_path):
    grid = RecordingGrid(num_samples=16)
    after_first_step = {}

    class FirstStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after_first_step.setdefault("g", params(pl_module.generator))

    # decay 1: the average stays at the weights of the first update, after the first batch
    ema = EMAWeightAveraging(decay=1.0)
    model = mlp_gan()
    trainer(callbacks=[FirstStep(), grid, ema], limit_val_batches=1, default_root_dir=tmp_path).fit(model, tiny_gmm())
    assert same(grid.weights, after_first_step["g"])
    assert grid.last_path is not None and grid.last_path.is_file()


def test_ema_listed_before_the_sample_grid_is_refused():
    with pytest.raises(ConfigError, match="after SampleGrid"):
        trainer(callbacks=[EMAWeightAveraging(), SampleGrid()]).fit(mlp_gan(), tiny_gmm())


# ---- mode seeking (MSGAN, Mao et al. 2019) ----------------------------------------------------------------------


def test_mode_seeking_loss_closed_form():
    """Pairs (f0, f2), (f1, f3): mean |image difference| 2, mean |latent difference| 4: 1 / (0.5 + eps)."""
    from gen_lightning.losses import mode_seeking_loss

    fake = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    z = torch.tensor([[0.0], [0.0], [4.0], [4.0]])
    assert mode_seeking_loss(fake, z).item() == pytest.approx(1 / (0.5 + 1e-5))
    assert mode_seeking_loss(fake[[0, 1, 0, 1]], z).item() == pytest.approx(1e5)  # collapsed pairs pay 1 / eps


def test_mode_seeking_pairs_the_fakes_labels():
    model = mlp_gan(ConditionalGAN, num_classes=3, mode_seeking=1.0)
    assert model.paired(torch.tensor([0, 1, 2, 2, 1])).tolist() == [0, 1, 0, 1, 1]
    assert mlp_gan(ConditionalGAN, num_classes=3).paired(torch.tensor([0, 1, 2])).tolist() == [0, 1, 2]


def test_mode_seeking_alone_spreads_the_generators_pairs():
    """With D's score flat in x (a constant), G's only gradient is the mode-seeking term: SGD steps on it move the
    pairs of fakes apart, at fixed latents."""

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(1))

        def forward(self, x, labels=None):
            return self.bias.expand(x.shape[0])

    torch.manual_seed(0)
    model = GAN(MLPGenerator(latent_dim=4, hidden=[32, 32], data_shape=[2]), Flat(), latent_dim=4, mode_seeking=1.0,
                g_optimizer=partial(torch.optim.SGD, lr=0.05), d_optimizer=partial(torch.optim.SGD, lr=0.0))
    z = torch.randn(64, 4)

    def spread():
        with torch.no_grad():
            fake = model.generator(z)
        return (fake[:32] - fake[32:]).abs().mean().item()

    before = spread()
    trainer(max_epochs=3).fit(model, datamodule=tiny_gmm())
    assert spread() > 1.5 * before


def test_mode_seeking_refusals():
    with pytest.raises(ConfigError, match="mode_seeking must be >= 0, got -1.0"):
        mlp_gan(mode_seeking=-1.0)
    with pytest.raises(ConfigError, match="conditional WGAN-GP penalty cannot follow"):
        mlp_gan(ConditionalGAN, num_classes=3, mode_seeking=1.0, loss="wgan-gp")
    mlp_gan(mode_seeking=1.0, loss="wgan-gp")  # unconditional: the fakes carry no labels


# ---- the self-conditioned GAN --------------------------------------------------------------
def sc_gan(num_clusters=8, **kwargs) -> SelfConditionedGAN:
    return mlp_gan(SelfConditionedGAN, num_classes=num_clusters, num_clusters=num_clusters, cluster_images=512, **kwargs)


def ring8(**kwargs) -> GMMDataModule:
    return GMMDataModule(preset="ring8", n_train=1024, n_val=128, n_test=128, batch_size=64, **kwargs)


class LabelSpy(nn.Module):
    """Wraps a conditional network and records the labels it is called with."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.num_classes, self.seen = net, net.num_classes, []

    def forward(self, x, labels=None):
        self.seen.append(labels)
        return self.net(x, labels)


def test_self_conditioned_gan_labels_each_example_with_its_mode():
    """On ring8 the 8 clusters are the 8 modes (tests/test_clustering.py), so the labels the networks train on are
    the modes, and sampling draws each about as often as the data holds it; the dataset's labels are never read."""
    dm = ring8()
    model = sc_gan()
    model.generator, model.discriminator = LabelSpy(model.generator), LabelSpy(model.discriminator)
    trainer(max_steps=10).fit(model, datamodule=dm)
    assert model.cluster_centers.shape == (8, 2) and model.cluster_sizes.sum() == 512
    x, comp = dm.split("train").__getitems__(list(range(1024)))
    assert same_partition(model.labels_of(x, torch.full_like(comp, -1)), comp)
    batches = [labels for labels in model.discriminator.seen if labels is not None]
    assert batches and all(labels.max() < 8 for labels in batches)
    # sampling: clusters in proportion to their sizes (40,000 draws: each share within 0.01, ~5 standard errors)
    drawn = model.draw_clusters(40000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.bincount(drawn, minlength=8) / 40000.0,
                               model.cluster_sizes / model.cluster_sizes.sum(), atol=0.01, rtol=0)
    model.generator.seen.clear()
    model.sample(5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.generator.seen[-1], model.draw_clusters(5, torch.Generator().manual_seed(3)))


def test_self_conditioned_gan_trains_without_reading_dataset_labels():
    """Out-of-range labels in every batch would break a label embedding: the model must not look at them."""

    class Unlabeled(GMMDataModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            x, y = batch
            return x, torch.full_like(y, 10**6)

    trainer(max_steps=6).fit(sc_gan(mode_seeking=1.0), datamodule=Unlabeled(preset="ring8", n_train=256, n_val=64,
                                                                           n_test=64, batch_size=32))


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_self_conditioned_gan_keeps_its_clusters_in_the_checkpoint(tmp_path):
    dm = ring8()
    model = sc_gan()
    fit = trainer(max_steps=4, default_root_dir=tmp_path, enable_checkpointing=True)
    fit.fit(model, datamodule=dm)
    ckpt = tmp_path / "last.ckpt"
    fit.save_checkpoint(ckpt)
    loaded = SelfConditionedGAN.load_from_checkpoint(ckpt, weights_only=False)  # hparams hold the nets: a test-made file
    torch.testing.assert_close(loaded.cluster_centers, model.cluster_centers)
    torch.testing.assert_close(loaded.sample(16, generator=torch.Generator().manual_seed(1)),
                               model.sample(16, generator=torch.Generator().manual_seed(1)))
    # a resumed fit keeps the saved clusters, even where its own settings would cluster otherwise
    resumed = sc_gan(cluster_seed=99)
    trainer(max_steps=8).fit(resumed, datamodule=dm, ckpt_path=ckpt, weights_only=False)
    torch.testing.assert_close(resumed.cluster_centers, model.cluster_centers)


def test_self_conditioned_gan_refusals():
    model = sc_gan()
    with pytest.raises(ConfigError, match="no clusters yet"):
        model.bind_data(ring8()) or model.sample(4)
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(4, labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"num_classes=8 but SelfConditionedGAN conditions it on 5 clusters"):
        mlp_gan(SelfConditionedGAN, num_classes=8, num_clusters=5).bind_data(ring8())
    with pytest.raises(ConfigError, match="cluster_images \\(4\\) must be >= num_clusters \\(8\\)"):
        mlp_gan(SelfConditionedGAN, num_classes=8, num_clusters=8, cluster_images=4)
