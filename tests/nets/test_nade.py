"""NADE: the autoregressive property, the paper's recursion, normalization and ancestral sampling."""

import itertools

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import Bernoulli
from gen_lightning.nets.nade import NADE


def all_binary(d: int) -> torch.Tensor:
    """All 2^d binary vectors, `(2^d, d)`."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


def log_prob(net: NADE, x: torch.Tensor) -> torch.Tensor:
    return Bernoulli().log_prob(net(x), x.flatten(1))


def test_output_d_depends_only_on_inputs_before_d():
    torch.manual_seed(0)
    net = NADE([7], hidden=5, block=3)  # blocks of 3 dimensions: the running sum crosses block edges
    jac = torch.autograd.functional.jacobian(lambda x: net(x[None])[0], torch.rand(7))  # (D out, D in)
    before = torch.ones(7, 7).tril(-1).bool()  # j < d
    assert (jac[~before] == 0).all()
    assert (jac[before] != 0).all()  # every earlier input reaches every later conditional


def test_forward_equals_the_papers_recursion():
    """a_1 = c, a_d = a_{d-1} + W[:, d-1] x_{d-1}, logit_d = b_d + V_d . sigm(a_d) (NADE eq. 4-6), written as a loop."""
    torch.manual_seed(1)
    net = NADE([2, 5], hidden=4, block=4)
    x = torch.bernoulli(torch.full((3, 2, 5), 0.5))
    flat = x.flatten(1)
    a = net.c.expand(3, -1)
    expected = []
    for d in range(10):
        expected.append(torch.sigmoid(a) @ net.V[d] + net.b[d])
        a = a + flat[:, d : d + 1] * net.W[:, d]
    assert torch.allclose(net(x), torch.stack(expected, 1), atol=1e-6)
    net.block = 1  # the block size is a speed knob only
    assert torch.allclose(net(x), torch.stack(expected, 1), atol=1e-6)


def test_probabilities_of_all_binary_vectors_sum_to_one():
    torch.manual_seed(2)
    net = NADE([6], hidden=8, block=4)
    with torch.no_grad():
        net.b.normal_()  # away from the all-0.5 start
    total = log_prob(net, all_binary(6)).logsumexp(0).exp()
    assert abs(total.item() - 1.0) < 1e-5


def test_ancestral_samples_follow_the_model():
    """Frequencies of the 8 vectors of {0,1}^3 in 20,000 samples match exp(log p) (binomial std <= 0.0035)."""
    torch.manual_seed(3)
    net = NADE([3], hidden=6)
    with torch.no_grad():
        net.W.mul_(6)
        net.V.mul_(6)  # strong dependence between the dimensions
    x = all_binary(3)
    p = log_prob(net, x).exp().detach()
    samples = net.sample(20000, Bernoulli(), generator=torch.Generator().manual_seed(0))
    freq = torch.stack([(samples == v).all(1).float().mean() for v in x])
    assert (freq - p).abs().max() < 0.015
    again = net.sample(20000, Bernoulli(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_refuses_bad_sizes_and_wrong_inputs():
    with pytest.raises(ConfigError, match="hidden and block must be >= 1, got 0"):
        NADE([4], hidden=0)
    with pytest.raises(ValueError, match=r"built for inputs \(B, 4\), got \(2, 5\)"):
        NADE([4], hidden=3)(torch.zeros(2, 5))
