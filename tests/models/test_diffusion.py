"""DDPM and ConditionalDDPM: one training step changes the net, sampling shapes and label rules,
label dropout, network evaluations per sample, data checks, and the variational bound's pieces."""

import math
from types import SimpleNamespace

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.models.diffusion import ConditionalDDPM, DDPM
from gen_lightning.samplers.vlb import discretized_gaussian_log_likelihood, normal_kl
from gen_lightning.nets.denoiser_mlp import DenoiserMLP
from gen_lightning.nets.unet import UNet
from gen_lightning.samplers import DDIMSampler, DDPMSampler, LinearSchedule


def _dm(shape=(2,), num_classes=None, value_range=None, name="toy"):
    return SimpleNamespace(data_shape=shape, num_classes=num_classes, value_range=value_range, dataset_name=name,
                           describe=lambda: {"name": name})


def _mlp_model(cls=DDPM, num_classes=None, **kw):
    net = DenoiserMLP(dim=2, hidden=32, depth=2, time_embed_dim=16, num_classes=num_classes)
    model = cls(net, schedule=LinearSchedule(num_steps=50), sampler=DDIMSampler(10), **kw)
    model.bind_data(_dm(num_classes=num_classes))
    return model


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_one_training_step_changes_the_net(prediction):
    torch.manual_seed(0)
    model = _mlp_model(prediction=prediction)
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.net.parameters()]
    loss = model.loss(torch.randn(64, 2), None)
    assert loss.item() > 0
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters()))


def test_untrained_eps_net_has_unit_simple_loss():
    """The zero-initialized output layer predicts eps = 0, so the eps-MSE is E[eps^2] = 1."""
    model = _mlp_model()
    g = torch.Generator().manual_seed(0)
    assert model.loss(torch.randn(20_000, 2, generator=g), None, generator=g).item() == pytest.approx(1.0, abs=0.03)


def test_sample_shapes_labels_and_evaluations():
    model = _mlp_model()
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 2)
    assert torch.equal(x, model.sample(5, generator=torch.Generator().manual_seed(0)))
    assert model.trajectory(3, generator=torch.Generator().manual_seed(0)).shape == (11, 3, 2)
    assert model.network_evaluations_per_sample == 10
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.tensor([0, 1]))
    model.sampler = DDPMSampler()
    assert model.network_evaluations_per_sample == 50


def test_conditional_label_dropout_guidance_and_evaluations():
    model = _mlp_model(ConditionalDDPM, num_classes=4, label_dropout=0.25, guidance_scale=3.0)
    torch.manual_seed(0)
    labels = model.training_labels(torch.zeros(20_000, dtype=torch.long))
    assert set(labels.unique().tolist()) == {0, 4}  # 4 = the null token
    assert (labels == 4).float().mean().item() == pytest.approx(0.25, abs=0.015)
    assert model.network_evaluations_per_sample == 20  # guided: two passes per step
    assert model.sample(3, labels=torch.tensor([0, 1, 3])).shape == (3, 2)
    with pytest.raises(ConfigError, match="pass labels"):
        model.sample(3)
    model.guidance_scale = 1.0
    assert model.network_evaluations_per_sample == 10
    with pytest.raises(ConfigError, match="label_dropout"):
        ConditionalDDPM(DenoiserMLP(num_classes=4), label_dropout=0.0, guidance_scale=2.0)
    with pytest.raises(ConfigError, match="guidance_scale"):
        ConditionalDDPM(DenoiserMLP(num_classes=4), guidance_scale=-1.0)


def test_check_data_refuses_what_does_not_fit():
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        DDPM(UNet(1, 28, channels=16, num_res_blocks=1)).bind_data(_dm((1, 28, 28), value_range=(0.0, 1.0)))
    with pytest.raises(ConfigError, match="cannot read data of shape"):
        DDPM(UNet(1, 28, channels=16, num_res_blocks=1)).bind_data(_dm((3, 32, 32), value_range=(-1.0, 1.0)))
    with pytest.raises(ConfigError, match="ConditionalDDPM"):
        DDPM(DenoiserMLP(num_classes=3)).bind_data(_dm(num_classes=3))
    with pytest.raises(ConfigError, match="num_classes: 3"):
        ConditionalDDPM(DenoiserMLP()).bind_data(_dm(num_classes=3))
    with pytest.raises(ConfigError, match="prediction"):
        DDPM(DenoiserMLP(), prediction="score")
    with pytest.raises(ConfigError, match="snr_gamma must be > 0 .* got 0.0"):
        DDPM(DenoiserMLP(), snr_gamma=0.0)
    assert "min-SNR-5 weighted" in DDPM(DenoiserMLP(), snr_gamma=5.0).loss_name


def test_vlb_pieces_closed_forms():
    # KL(N(0, 1) || N(1, e^2)) = log(e) + (1 + 1) / (2 e^2) - 1/2 = 1 + 1/e^2 - 1/2
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(2.0))
    assert kl.item() == pytest.approx(0.5 + math.exp(-2.0))
    # a decoder much narrower than a bin puts all its mass in the bin: log P = 0; the 256 bins sum to 1
    x = torch.tensor([0.0, 1.0, -1.0])
    assert torch.allclose(discretized_gaussian_log_likelihood(x, x, torch.full((3,), -10.0)), torch.zeros(3), atol=1e-6)
    grid = torch.linspace(-1, 1, 256)
    p = discretized_gaussian_log_likelihood(grid, torch.full((256,), 0.3), torch.full((256,), math.log(0.2))).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_vlb_bits_per_dim_of_an_untrained_net():
    """For T = 4 and a net that predicts eps = 0, the bound is finite, positive, and the same for the same seed."""
    model = DDPM(UNet(1, 8, channels=8, channel_mults=[1], num_res_blocks=1, attention_resolutions=[]),
                 schedule=LinearSchedule(num_steps=4, beta_start=0.1, beta_end=0.5), vlb_bpd=True)
    model.bind_data(_dm((1, 8, 8), value_range=(-1.0, 1.0)))
    x0 = torch.randint(0, 256, (2, 1, 8, 8)).float() / 127.5 - 1
    torch.manual_seed(0)
    bpd = model.vlb_bits_per_dim(x0)
    assert bpd.shape == (2,) and torch.isfinite(bpd).all() and (bpd > 0).all()
    torch.manual_seed(0)
    assert torch.equal(bpd, model.vlb_bits_per_dim(x0))


def test_dequantize_trains_on_8bit_images_spread_over_their_bins(monkeypatch):
    from gen_lightning import losses

    class Zero(torch.nn.Module):
        num_classes = None

        def forward(self, x, t, labels=None):
            return torch.zeros_like(x)

    seen = []
    monkeypatch.setattr(losses, "diffusion_simple_loss", lambda net, schedule, x0, *a: (seen.append(x0), x0.sum())[1])
    model = DDPM(Zero(), dequantize=True)
    model.bind_data(SimpleNamespace(**vars(_dm(shape=(1, 4, 4), value_range=(-1.0, 1.0))), binarize="none"))
    k = torch.randint(0, 256, (64, 1, 4, 4), generator=torch.Generator().manual_seed(0)).double()
    model.loss(-1 + 2 * k / 255, None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.floor((seen[0] + 1) / 2 * 256), k)
    with pytest.raises(ConfigError, match="set dequantize: false"):
        DDPM(Zero(), dequantize=True).bind_data(SimpleNamespace(**vars(_dm()), binarize="none"))


# ---- the learning-rate schedule: warm-up, then constant or cosine over the fit -----------------------------------


def _lrs_of_a_fit(model, max_steps: int) -> list[float]:
    """The learning rate every optimizer step of a real fit on a ring of 2-D points used."""
    import lightning as L

    from gen_lightning.data import GMMDataModule

    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", callbacks=[Record()])
    trainer.fit(model, datamodule=GMMDataModule(preset="ring8", n_train=512, n_val=8, n_test=8, batch_size=32))
    return seen


@pytest.mark.parametrize("schedule, factors", [
    # warm-up over 2 steps: 1/2, 1; then 8 steps of a half cosine from 1 towards 0: 0.5 (1 + cos(pi k / 8)), k = 0..7
    ("cosine", [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]),
    ("constant", [0.5] + [1.0] * 9),
])
def test_lr_schedule_warms_up_then_holds_or_decays_over_the_fits_steps(schedule, factors):
    from functools import partial

    model = _mlp_model(optimizer=partial(torch.optim.SGD, lr=0.1), lr_warmup_steps=2, lr_schedule=schedule)
    assert _lrs_of_a_fit(model, max_steps=10) == pytest.approx([0.1 * f for f in factors])


def test_lr_schedule_must_be_constant_or_cosine():
    with pytest.raises(ConfigError, match="lr_schedule must be 'constant' or 'cosine', got 'linear'"):
        _mlp_model(lr_schedule="linear")


# ---- the self-guided DDPM ------------------------------------------------------------------
class ClusterOracle(torch.nn.Module):
    """The exact eps of data made of isotropic Gaussians N(centers[c], s^2): given a cluster c, E[eps | x_t, c] of its
    Gaussian; given the null label K, E[eps | x_t] of the mixture weighted by `weights` (tests/samplers/test_ddpm_ddim.py
    has the same closed forms). Records the labels of every call."""

    def __init__(self, schedule, centers, s, weights):
        super().__init__()
        self.schedule, self.centers, self.s2, self.weights = schedule, centers, s * s, weights / weights.sum()
        self.num_classes, self.seen = centers.shape[0], []

    def forward(self, xt, t, labels=None):
        self.seen.append(labels)
        ab = self.schedule.alpha_bar[self.schedule.step_of(t)][:, None, None]  # (B, 1, 1)
        mu = ab.sqrt() * self.centers[None]  # (B, K, 2)
        var = ab * self.s2 + 1 - ab
        log_w = self.weights.log()[None] - ((xt[:, None] - mu) ** 2).sum(-1) / (2 * var[..., 0])  # (B, K)
        post = torch.softmax(log_w, 1)  # p(c | x_t)
        null = labels == self.num_classes
        post = torch.where(null[:, None], post, torch.nn.functional.one_hot(labels.clamp(max=self.num_classes - 1),
                                                                            self.num_classes).float())
        score = (post[..., None] * -(xt[:, None] - mu) / var).sum(1)
        return -(1 - ab[:, 0, 0, None]).sqrt() * score


def _self_guided(num_clusters=8, guidance_scale=1.0, **kw):
    from gen_lightning.models.diffusion import SelfGuidedDDPM

    net = DenoiserMLP(dim=2, hidden=32, depth=2, time_embed_dim=16, num_classes=num_clusters)
    return SelfGuidedDDPM(net, num_clusters=num_clusters, cluster_images=512, schedule=LinearSchedule(),
                          sampler=DDIMSampler(50), guidance_scale=guidance_scale, **kw)


def _ring8():
    from gen_lightning.data import GMMDataModule

    return GMMDataModule(preset="ring8", n_train=1024, n_val=128, n_test=128, batch_size=64)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_self_guided_ddpm_samples_land_in_the_clusters_they_draw(guidance_scale):
    """With the exact conditional eps of each ring8 cluster (its centre, std 0.02), every sample ends in the cluster
    the model drew for it, guided or not, and the clusters come in proportion to their sizes; the null label is used
    only for guidance (two passes a step)."""
    dm = _ring8()
    dm.setup("fit")
    model = _self_guided(guidance_scale=guidance_scale)
    model.bind_data(dm)
    model.fit_clusters(dm)
    oracle = ClusterOracle(model.schedule, model.cluster_centers, 0.02, model.cluster_sizes.float())
    model.net = oracle
    x = model.sample(800, generator=torch.Generator().manual_seed(0))
    drawn = model.draw_clusters(800, torch.Generator().manual_seed(0))  # what sample() drew with that generator
    cond = [labels for labels in oracle.seen if not (labels == 8).all()]
    assert len(cond) == 50 and all(torch.equal(labels, drawn) for labels in cond)  # the same clusters every step
    assert len(oracle.seen) == (100 if guidance_scale != 1.0 else 50)
    assert model.network_evaluations_per_sample == len(oracle.seen)
    assert torch.equal(model.labels_of(x), drawn)
    dist = (x - model.cluster_centers[drawn]).norm(dim=1) / 0.02
    assert (dist < 3).float().mean() > 0.97
    torch.testing.assert_close(torch.bincount(drawn, minlength=8) / 800.0,
                               model.cluster_sizes / model.cluster_sizes.sum(), atol=0.05, rtol=0)


class LabelSpy(torch.nn.Module):
    """Wraps a conditional net and records the labels it is called with."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_classes, self.seen = net, net.num_classes, []

    def forward(self, xt, t, labels=None):
        self.seen.append(labels)
        return self.net(xt, t, labels)


def test_self_guided_ddpm_trains_on_clusters_with_dropout_and_never_reads_labels(tmp_path):
    """Training and held-out batches reach the net as clusters (dropout to the null token in training only), the
    dataset's labels unread; the clusters survive a checkpoint; the ODE likelihood is the null-label model's."""
    import lightning as L

    from gen_lightning.data import GMMDataModule
    from gen_lightning.models.diffusion import SelfGuidedDDPM

    class Unlabeled(GMMDataModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch[0], torch.full_like(batch[1], 10**6)

    dm = Unlabeled(preset="ring8", n_train=1024, n_val=128, n_test=128, batch_size=256)
    model = _self_guided(label_dropout=0.5)
    model.net = spy = LabelSpy(model.net)
    trainer = L.Trainer(max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=4, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    # the data check's probe (labelled), 8 training steps and one validation batch after steps 4 and 8
    assert len(spy.seen) == 11 and torch.equal(spy.seen[0], torch.zeros(2, dtype=torch.long))
    train = torch.cat(spy.seen[1:5] + spy.seen[6:10])
    assert train.max() == 8 and train.min() >= 0  # clusters and the null token, never 10**6
    assert 0.4 < (train == 8).float().mean() < 0.6  # label_dropout 0.5 over 2,048 labels
    val_x = dm.split("val").__getitems__(list(range(128)))[0]
    assert torch.equal(spy.seen[5], model.labels_of(val_x)) and torch.equal(spy.seen[10], spy.seen[5])  # no dropout
    spy.seen.clear()
    with torch.inference_mode():  # as in Lightning's test loop, where callbacks.ODELikelihood calls it
        model.ode_log_prob(val_x[:4], steps=4)
    assert spy.seen and all(torch.equal(labels, torch.full((4,), 8)) for labels in spy.seen)
    with pytest.raises(ConfigError, match="unconditional"):
        model.ode_log_prob(val_x[:4], labels=torch.zeros(4, dtype=torch.long))
    ckpt = tmp_path / "sg.ckpt"
    model.net = spy.net  # as configured (the hyperparameters hold the unwrapped net)
    trainer.save_checkpoint(ckpt)
    loaded = SelfGuidedDDPM.load_from_checkpoint(ckpt, weights_only=False)  # hparams hold the net: a test-made file
    torch.testing.assert_close(loaded.cluster_centers, model.cluster_centers)
    torch.testing.assert_close(loaded.sample(6, generator=torch.Generator().manual_seed(1)),
                               model.sample(6, generator=torch.Generator().manual_seed(1)))


def test_self_guided_ddpm_refusals():
    model = _self_guided()
    with pytest.raises(ConfigError, match="no clusters yet"):
        model.bind_data(_ring8()) or model.sample(4)
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(4, labels=torch.zeros(4, dtype=torch.long))
    from gen_lightning.models.diffusion import SelfGuidedDDPM

    wrong = SelfGuidedDDPM(DenoiserMLP(dim=2, hidden=8, depth=1, time_embed_dim=8, num_classes=8), num_clusters=5)
    with pytest.raises(ConfigError, match=r"the net has num_classes=8 but SelfGuidedDDPM conditions it on 5 clusters"):
        wrong.bind_data(_ring8())
    with pytest.raises(ConfigError, match="needs the unconditional model"):
        _self_guided(label_dropout=0.0, guidance_scale=2.0)


def test_conditional_ode_likelihood_runs_under_inference_mode():
    """Lightning's test loop makes its batches, labels included, in inference mode; the ODE differentiates the net,
    whose label lookup must be able to save the labels for backward."""
    model = _mlp_model(ConditionalDDPM, num_classes=4)
    with torch.inference_mode():
        x, y = torch.randn(3, 2), torch.tensor([0, 1, 3])
        nll = model.ode_log_prob(x, labels=y, steps=4)
    assert nll.shape == (3,) and torch.isfinite(nll).all()
