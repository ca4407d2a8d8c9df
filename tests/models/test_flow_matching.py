"""FlowMatching and ConditionalFlowMatching: the path and its target (an oracle net has zero loss), the
couplings (OT pairs, reflow pairs), guidance conventions, sampling shapes and evaluations, and the
probability-flow likelihood against a closed form."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.models.flow_matching import ConditionalFlowMatching, FlowMatching
from gen_lightning.nets.denoiser_mlp import DenoiserMLP
from gen_lightning.samplers.ode import EulerSampler, HeunSampler


def _dm(shape=(2,), num_classes=None, value_range=None, name="toy"):
    return SimpleNamespace(data_shape=shape, num_classes=num_classes, value_range=value_range, dataset_name=name,
                           describe=lambda: {"name": name})


def _model(cls=FlowMatching, num_classes=None, net=None, **kw):
    net = net or DenoiserMLP(dim=2, hidden=32, depth=2, time_embed_dim=16, num_classes=num_classes)
    model = cls(net, sampler=EulerSampler(10), **kw)
    model.bind_data(_dm(num_classes=num_classes))
    return model


class PointVelocity(nn.Module):
    """The exact marginal velocity when all data sits at c (sigma_min = 0): v(x, t) = (c - x) / (1 - t)."""

    num_classes = None

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t, labels=None):
        t = t.view(-1, 1)  # the nets' continuous time, as flow matching's own
        return (self.c - x) / (1 - t)


def test_the_oracle_velocity_has_zero_loss_and_samples_the_point():
    c = torch.tensor([2.0, -1.0])
    model = _model(net=PointVelocity(c))
    x1 = c.expand(256, 2)
    assert model.loss(x1, None, generator=torch.Generator().manual_seed(0)).item() < 1e-10
    # Euler on v = (c - x)/(1 - t) lands on c exactly at its last step (h = 1 - t there)
    assert torch.allclose(model.sample(8, generator=torch.Generator().manual_seed(1)), c.expand(8, 2), atol=1e-5)


def test_one_training_step_changes_the_net_and_the_untrained_loss_is_known():
    """The zero-initialized output predicts v = 0, so the loss is E|x1 - x0|^2 / D = E[x1^2] + 1 per dimension."""
    torch.manual_seed(0)
    model = _model()
    g = torch.Generator().manual_seed(0)
    x1 = 3.0 + torch.randn(20_000, 2, generator=g)
    assert model.loss(x1, None, generator=g).item() == pytest.approx(9.0 + 1.0 + 1.0, rel=0.03)
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.net.parameters()]
    model.loss(x1[:64], None).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters()))


def test_ot_coupling_shortens_the_paths():
    """Minibatch OT pairs have a smaller total squared length than independent ones (the point of OT-CFM)."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(128, 2, generator=g) * 3
    independent = _model().pairs(x1, None, torch.Generator().manual_seed(1))
    ot = _model(coupling="ot").pairs(x1, None, torch.Generator().manual_seed(1))
    assert torch.equal(ot[1], x1) and torch.equal(ot[0].sort(0).values, independent[0].sort(0).values)  # same noise, reordered
    assert ((ot[0] - x1) ** 2).sum() < 0.7 * ((independent[0] - x1) ** 2).sum()


def test_reflow_pairs_are_the_teachers_own_ode_solutions():
    teacher = _model()
    student = _model()
    student._teacher.append(teacher)
    x1 = torch.randn(16, 2)
    x0, target = student.pairs(x1, None, torch.Generator().manual_seed(2))
    assert torch.equal(target, teacher.sampler.sample(teacher.velocity(None), (16, 2), x_init=x0))


def test_guidance_scale_zero_is_exactly_unconditional_sampling():
    torch.manual_seed(0)
    model = _model(ConditionalFlowMatching, num_classes=3, guidance_scale=0.0)
    for p in model.net.parameters():  # a random, non-trivial net (the output layer starts at zero)
        nn.init.normal_(p, std=0.3)
    labels = torch.tensor([0, 1, 2, 0])
    guided = model.sample(4, labels=labels, generator=torch.Generator().manual_seed(3))
    model.guidance_scale = 1.0  # the conditional model with the null label = the unconditional model
    null = model.sample(4, labels=torch.full((4,), 3), generator=torch.Generator().manual_seed(3))
    assert torch.equal(guided, null)
    cond = model.sample(4, labels=labels, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(cond, null)
    model.guidance_scale = 2.0
    assert model.network_evaluations_per_sample == 20  # two passes per Euler step


def test_sample_shapes_labels_and_evaluations():
    model = _model()
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 2) and torch.equal(x, model.sample(5, generator=torch.Generator().manual_seed(0)))
    assert model.trajectory(3, generator=torch.Generator().manual_seed(0)).shape == (11, 3, 2)
    assert model.network_evaluations_per_sample == 10
    model.sampler = HeunSampler(10)
    assert model.network_evaluations_per_sample == 20
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="conditional"):
        _model(ConditionalFlowMatching, num_classes=3).sample(2)


@pytest.mark.parametrize("kw, match", [({"coupling": "sinkhorn"}, "coupling"), ({"sigma_min": 1.0}, "sigma_min"),
                                       ({"lr_warmup_steps": -1}, "lr_warmup_steps"),
                                       ({"lr_schedule": "linear"}, "lr_schedule must be 'constant' or 'cosine'")])
def test_bad_arguments_are_refused_in_one_line(kw, match):
    with pytest.raises(ConfigError, match=match):
        FlowMatching(DenoiserMLP(dim=2), **kw)


def test_a_net_for_other_data_is_refused():
    with pytest.raises(ConfigError, match="num_classes"):
        _model(num_classes=None, net=DenoiserMLP(dim=2, num_classes=3))
    model = FlowMatching(DenoiserMLP(dim=3))
    with pytest.raises(ConfigError, match="cannot read data"):
        model.bind_data(_dm())


def test_log_prob_of_the_untrained_net_is_the_standard_normal():
    """v = 0 leaves x in place, so log p(x) is log N(x; 0, I) exactly, with the exact trace or Hutchinson."""
    model = _model()
    x = torch.randn(10, 2)
    want = -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
    assert torch.allclose(model.ode_log_prob(x, steps=5, probes=None), want, atol=1e-5)
    assert torch.allclose(model.ode_log_prob(x, steps=5, generator=torch.Generator().manual_seed(0)), want, atol=1e-5)


class ShapeNet(nn.Module):
    """A net for any shape that predicts zero (the dequantization tests look only at the data the loss sees)."""

    num_classes = None

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, labels=None):
        return self.w * x


def test_dequantize_trains_on_8bit_images_spread_over_their_bins_and_refuses_other_data():
    model = FlowMatching(ShapeNet(), dequantize=True)
    image_dm = SimpleNamespace(**vars(_dm(shape=(1, 4, 4), value_range=(-1.0, 1.0))), binarize="none")
    model.bind_data(image_dm)
    k = torch.randint(0, 256, (64, 1, 4, 4), generator=torch.Generator().manual_seed(0)).double()
    seen = []
    model.pairs = lambda x1, labels, generator: (seen.append(x1), (torch.zeros_like(x1), x1))[1]
    model.loss(-1 + 2 * k / 255, None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.floor((seen[0] + 1) / 2 * 256), k)  # in bin k of [-1, 1), not on the grid point
    assert not torch.allclose(seen[0], -1 + 2 * k / 255, atol=1e-3)
    two_d = SimpleNamespace(**vars(_dm()), binarize="none")
    binarized = SimpleNamespace(**{**vars(image_dm), "binarize": "dynamic"})
    for dm in (two_d, binarized):
        with pytest.raises(ConfigError, match="set dequantize: false"):
            FlowMatching(ShapeNet(), dequantize=True).bind_data(dm)


def _save_checkpoint(model, path):
    import lightning

    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


def test_reflow_starts_from_the_teachers_weights_and_refuses_another_architecture(tmp_path):
    torch.manual_seed(0)
    teacher = _model()
    for p in teacher.net.parameters():  # a non-trivial teacher (the output layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    ckpt = _save_checkpoint(teacher, tmp_path / "teacher.ckpt")
    student = _model(reflow_from=ckpt)
    assert not all(torch.equal(a, b) for a, b in zip(student.net.state_dict().values(), teacher.net.state_dict().values()))
    student.setup("fit")
    for a, b in zip(student.net.state_dict().values(), teacher.net.state_dict().values()):
        assert torch.equal(a, b)
    fresh = _model(reflow_from=ckpt, reflow_init=False)
    fresh.setup("fit")
    assert not all(torch.equal(a, b) for a, b in zip(fresh.net.state_dict().values(), teacher.net.state_dict().values()))
    wide = _model(net=DenoiserMLP(dim=2, hidden=48, depth=2, time_embed_dim=16), reflow_from=ckpt)
    with pytest.raises(ConfigError, match="reflow_init: false"):
        wide.setup("fit")
