"""Adversarial losses and penalties on hand-made logits and critics, with answers computed by hand."""

import math

import pytest
import torch
from torch import nn

from gen_lightning import losses

LOG2 = math.log(2.0)


def test_bce_at_logit_zero_is_log_2_per_term():
    zeros = torch.zeros(4)
    # D = sigmoid(0) = 1/2: -log(1/2) for real plus -log(1 - 1/2) for fake
    assert losses.d_loss_bce(zeros, zeros).item() == pytest.approx(2 * LOG2)
    assert losses.g_loss_bce(zeros).item() == pytest.approx(LOG2)


def test_bce_on_confident_logits():
    real, fake = torch.tensor([3.0]), torch.tensor([-2.0])
    softplus = lambda t: math.log1p(math.exp(t))  # -log sigmoid(l) = softplus(-l); -log(1 - sigmoid(l)) = softplus(l)
    assert losses.d_loss_bce(real, fake).item() == pytest.approx(softplus(-3.0) + softplus(-2.0))
    assert losses.g_loss_bce(fake).item() == pytest.approx(softplus(2.0))  # non-saturating: -log D(G(z))


def test_one_sided_label_smoothing_changes_only_the_real_target():
    # BCE(l, t) = softplus(l) - t*l for a logit l and target t
    real, fake = torch.tensor([2.0]), torch.tensor([1.0])
    expected_real = math.log1p(math.exp(2.0)) - 0.9 * 2.0
    expected_fake = math.log1p(math.exp(1.0))
    assert losses.d_loss_bce(real, fake, real_target=0.9).item() == pytest.approx(expected_real + expected_fake)


def test_hinge():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # mean(max(0, 1 - [2, 0.5])) = (0 + 0.5)/2; mean(max(0, 1 + [-3, 0])) = (0 + 1)/2
    assert losses.d_loss_hinge(real, fake).item() == pytest.approx(0.25 + 0.5)
    assert losses.g_loss_hinge(fake).item() == pytest.approx(1.5)


def test_wgan():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert losses.d_loss_wgan(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert losses.g_loss_wgan(fake).item() == pytest.approx(0.5)


def linear_critic(w: list[float]) -> nn.Linear:
    """f(x) = w . x: its gradient is w everywhere, so ||grad f|| = ||w|| at every interpolate."""
    f = nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([w]))
    return f


@pytest.mark.parametrize("w, expected", [([3.0, 4.0], (5.0 - 1.0) ** 2), ([0.6, 0.8], 0.0), ([0.0, 0.0], 1.0)])
def test_gradient_penalty_of_a_linear_critic_is_exact(w, expected):
    torch.manual_seed(0)
    real, fake = torch.randn(16, 2), torch.randn(16, 2) + 5
    gp = losses.gradient_penalty(linear_critic(w), real, fake)
    assert gp.item() == pytest.approx(expected, abs=1e-6)


def test_gradient_penalty_reaches_the_critic_weights():
    f = linear_critic([3.0, 4.0])
    losses.gradient_penalty(f, torch.randn(8, 2), torch.randn(8, 2)).backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 2 * 4 * [3, 4] / 5
    torch.testing.assert_close(f.weight.grad, torch.tensor([[4.8, 6.4]]))


def test_gradient_penalty_passes_labels_to_a_conditional_critic():
    seen = {}

    def critic(x, labels):
        seen["labels"] = labels
        return (x * labels[:, None].float()).sum(1)  # gradient = label * (1, 1): norm sqrt(2) * label

    labels = torch.tensor([0, 1, 2, 3])
    gp = losses.gradient_penalty(critic, torch.randn(4, 2), torch.randn(4, 2), labels)
    assert seen["labels"] is labels
    expected = sum((math.sqrt(2) * k - 1) ** 2 for k in range(4)) / 4
    assert gp.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_penalty_on_images_flattens_per_example():
    # f(x) = sum of all pixels: grad is all ones, norm sqrt(C*H*W) = sqrt(12)
    gp = losses.gradient_penalty(lambda x: x.sum((1, 2, 3)), torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2))
    assert gp.item() == pytest.approx((math.sqrt(12) - 1) ** 2, rel=1e-6)


def test_r1_penalty_is_the_squared_gradient_norm_on_real_data():
    assert losses.r1_penalty(linear_critic([3.0, 4.0]), torch.randn(7, 2)).item() == pytest.approx(25.0)
    # f(x) = ||x||^2 / 2 has gradient x: E||x||^2 over the batch
    real = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert losses.r1_penalty(lambda x: 0.5 * x.pow(2).sum(1), real).item() == pytest.approx((1.0 + 4.0) / 2)


def test_penalties_leave_their_inputs_untouched():
    real, fake = torch.randn(4, 2), torch.randn(4, 2, requires_grad=True)
    losses.gradient_penalty(linear_critic([1.0, 1.0]), real, fake)
    losses.r1_penalty(linear_critic([1.0, 1.0]), real)
    assert not real.requires_grad and fake.grad is None
