"""Noise schedules: alpha_bar against its closed form, the posterior against Bayes' rule, q(x_t | x_0)
sampling statistics, and the parameterization conversions."""

import math

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.schedules import CosineSchedule, LinearSchedule


def test_linear_alpha_bar_is_the_product_of_one_minus_beta():
    s = LinearSchedule()  # beta_t = 1e-4 + t (0.02 - 1e-4) / 999
    for t in (0, 1, 499, 999):
        expected = math.prod(1 - (1e-4 + k * (0.02 - 1e-4) / 999) for k in range(t + 1))
        assert s.alpha_bar[t].item() == pytest.approx(expected, rel=1e-5)
    assert s.alpha_bar[0].item() == pytest.approx(0.9999)
    assert s.alpha_bar[999].item() == pytest.approx(4.036e-5, rel=1e-3)  # x_T is nearly pure noise
    assert s.alpha_bar_prev[0] == 1.0 and torch.equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])


def test_cosine_alpha_bar_is_f_t_over_f_0():
    s = CosineSchedule(num_steps=1000, s=0.008)

    def f(u: float) -> float:
        return math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 250, 500, 900):  # index t is the paper's t + 1
        assert s.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-5)
    assert s.alpha_bar[499].item() == pytest.approx(f(500) / f(0), rel=1e-5)
    assert s.betas.max().item() == pytest.approx(0.999)  # the last beta is clipped
    assert (s.betas[:-1] < 0.999).all()


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from prior N(sqrt(ab_prev) x0, 1 - ab_prev) and likelihood N(sqrt(alpha) x_{t-1}, beta)."""
    s = LinearSchedule()
    x0, xt = torch.tensor([[0.7]]), torch.tensor([[-0.4]])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # the reference in float64 throughout
    for t in (1, 10, 500, 999):
        ab_prev, alpha, beta = torch.prod(1 - betas[:t]), 1 - betas[t], betas[t]
        var = 1 / (1 / (1 - ab_prev) + alpha / beta)
        mean = var * (ab_prev.sqrt() * 0.7 / (1 - ab_prev) + alpha.sqrt() * -0.4 / beta)
        assert s.posterior_variance[t].item() == pytest.approx(var.item(), rel=1e-4)
        got = s.q_posterior_mean(x0, xt, torch.tensor([t]))
        assert got.item() == pytest.approx(mean.item(), rel=1e-4, abs=1e-6)
    assert s.posterior_variance[0] == 0  # x_0 is given at the last step
    torch.testing.assert_close(s.variance("fixed_large"), s.betas)
    with pytest.raises(ConfigError, match="variance"):
        s.variance("learned")


def test_q_sample_mean_and_variance():
    s = LinearSchedule()
    g = torch.Generator().manual_seed(0)
    n, t = 200_000, 300
    x0 = torch.full((n, 1), 1.5)
    eps = torch.randn(n, 1, generator=g)
    xt = s.q_sample(x0, torch.full((n,), t), eps)
    ab = s.alpha_bar[t].item()
    # standard errors: sqrt((1 - ab) / n) ~ 0.002 for the mean, ~0.003 relative for the variance
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 1.5, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.015)


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule()])
def test_parameterizations_convert_back_and_forth(schedule):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    t = torch.tensor([0, 1, 100, 500, 900, 998])
    xt = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.x0_from_eps(xt, t, eps), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(schedule.eps_from_x0(xt, t, x0), eps, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(schedule.x0_from_v(xt, t, schedule.v_target(x0, t, eps)), x0, atol=1e-5, rtol=1e-5)


def test_schedule_errors_and_device_move():
    with pytest.raises(ConfigError, match="beta_start"):
        LinearSchedule(beta_start=0.03, beta_end=0.02)
    with pytest.raises(ConfigError, match="num_steps"):
        CosineSchedule(num_steps=0)
    s = LinearSchedule(num_steps=10)
    assert s.to("cpu") is s and s.device.type == "cpu" and s.num_steps == 10


@pytest.mark.parametrize("num_steps", [1000, 37])
def test_net_time_is_step_over_T_and_step_of_inverts_it(num_steps):
    s = LinearSchedule(num_steps=num_steps)
    steps = torch.arange(num_steps)
    time = s.net_time(steps)
    assert time.dtype == torch.float32 and time.min() == 0 and time.max() < 1
    torch.testing.assert_close(time, steps.double().div(num_steps).float())
    assert torch.equal(s.step_of(time), steps)


def test_the_embedding_of_step_i_over_1000_is_that_of_the_old_step_index():
    """T = 1000 checkpoints trained when the nets read the step index i itself see the same embedding of i / 1000."""
    from gen_lightning.nets.unet import timestep_embedding

    steps = torch.arange(1000)
    old = torch.cat([torch.cos(steps.double()[:, None]), torch.sin(steps.double()[:, None])], 1)  # dim 2: freq 1
    torch.testing.assert_close(timestep_embedding(LinearSchedule().net_time(steps), 2).double(), old, atol=2e-4, rtol=0)
