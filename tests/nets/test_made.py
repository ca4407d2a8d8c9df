"""MADE: mask structure by Jacobian for every mask and order, degrees, normalization, sampling."""

import itertools

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import Bernoulli, Gaussian
from gen_lightning.nets.made import MADE


def all_binary(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


def allowed(net: MADE, mask: int) -> torch.Tensor:
    """allowed[d, j]: input j comes before input d in the order of `mask`, `(D, D)`."""
    position = net.degrees_0[mask]  # m^0(j): position of input j in the order, 1..D
    return position[None, :] < position[:, None]


@pytest.mark.parametrize("order", ["natural", "random"])
def test_every_mask_is_autoregressive_in_its_order(order):
    torch.manual_seed(0)
    net = MADE([6], hidden=[40, 40], params_per_dim=2, order=order, num_masks=4, activation="tanh")
    for m in range(4):
        jac = torch.autograd.functional.jacobian(lambda x: net(x[None], m)[0], torch.randn(6))  # (P*D, D)
        jac = jac.view(2, 6, 6)  # output p*D + d -> [p, d]
        ok = allowed(net, m)
        assert (jac[:, ~ok] == 0).all(), f"mask {m}"
        # 40 tanh units per layer, degrees drawn from 1..5: with these seeds every allowed path exists
        assert (jac[:, ok] != 0).all(), f"mask {m}"


def test_natural_order_and_random_orders():
    net = MADE([5], hidden=[10], order="natural", num_masks=3)
    for m in range(3):
        assert net.order(m).tolist() == [0, 1, 2, 3, 4]
    net = MADE([5], hidden=[10], order="random", num_masks=3, seed=7)
    orders = [net.order(m).tolist() for m in range(3)]
    assert all(sorted(o) == [0, 1, 2, 3, 4] for o in orders) and len({tuple(o) for o in orders}) > 1


def test_hidden_degrees_lie_between_the_previous_minimum_and_d_minus_one():
    net = MADE([8], hidden=[50, 50], order="random", num_masks=5)
    for m in range(5):
        d1, d2 = net.degrees_1[m], net.degrees_2[m]
        assert d1.min() >= 1 and d1.max() <= 7
        assert d2.min() >= d1.min() and d2.max() <= 7


def test_masks_are_checkpointed_as_degrees():
    a = MADE([6], hidden=[12], order="random", num_masks=3, seed=1)
    b = MADE([6], hidden=[12], order="random", num_masks=3, seed=2)
    before = b.masks(1)  # built and kept before the load: the load must replace them
    b.load_state_dict(a.state_dict())
    assert not all(torch.equal(x, y) for x, y in zip(before, b.masks(1)))
    for m in range(3):
        assert all(torch.equal(x, y) for x, y in zip(a.masks(m), b.masks(m)))


def test_each_mask_is_a_normalized_distribution():
    torch.manual_seed(1)
    net = MADE([6], hidden=[16, 16], order="random", num_masks=3)
    with torch.no_grad():
        net.output_layer.bias.normal_()
    x = all_binary(6)
    for m in range(3):
        total = Bernoulli().log_prob(net(x, m), x).logsumexp(0).exp()
        assert abs(total.item() - 1.0) < 1e-5


def test_samples_follow_the_mixture_of_the_masks():
    """Frequencies of {0,1}^3 over 20,000 draws match the average of the masks' probabilities."""
    torch.manual_seed(2)
    net = MADE([3], hidden=[32], order="random", num_masks=2, seed=3)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)
    x = all_binary(3)
    p = torch.stack([Bernoulli().log_prob(net(x, m), x).exp() for m in range(2)]).mean(0).detach()
    samples = net.sample(20000, Bernoulli(), generator=torch.Generator().manual_seed(0))
    freq = torch.stack([(samples == v).all(1).float().mean() for v in x])
    assert (freq - p).abs().max() < 0.015


def test_refuses_bad_settings():
    with pytest.raises(ConfigError, match="at least 2 dimensions"):
        MADE([1])
    with pytest.raises(ConfigError, match="num_masks must be >= 1, got 0"):
        MADE([4], num_masks=0)
    with pytest.raises(ValueError, match=r"mask must be in \[0, 2\), got 2"):
        MADE([4], hidden=[8], num_masks=2)(torch.zeros(1, 4), 2)


def test_moves_between_dtypes_with_its_masks():
    net = MADE([3], hidden=[8]).to(torch.float64)  # nn.Module.to() goes through Module._apply: nothing may shadow it
    assert net(torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("hidden", [[24], [24, 16]])
def test_sampling_uses_the_full_forwards_conditionals(hidden, recording):
    """Each conditional used while drawing equals the full forward of the finished sample at that dimension.

    With one hidden layer the sampler updates the hidden pre-activation one input at a time (O(D H));
    output d of the full forward sees only x_<d, so it must give the same parameters, for every mask,
    order and parameter layout (P = 2: a Gaussian's mean and log-std, parameter-major).
    """
    torch.manual_seed(4)
    net = MADE([1, 3, 4], hidden=hidden, params_per_dim=2, order="random", num_masks=2, seed=5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)
    for m in range(2):
        rec = recording(Gaussian())
        x = net._sample_one_mask(7, m, rec, torch.Generator().manual_seed(m))
        full = net(x.view(7, 1, 3, 4), m).view(7, 2, 12)  # (n, P*D) -> (n, P, D)
        for params, d in zip(rec.params, net.order(m).tolist(), strict=True):
            torch.testing.assert_close(params, full[:, :, d], rtol=1e-5, atol=1e-5)
