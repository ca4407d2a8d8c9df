"""Flow layers and networks: invertibility, log-dets against the autograd Jacobian, masks, ActNorm's init.

Everything runs in float64, so inverse(forward(x)) agrees with x to ~1e-10 and the log-det with
log|det J| of the full Jacobian to ~1e-8. Parameters are perturbed away from their initial values
first: zero-initialized couplings start as the identity, whose log-det (0) proves nothing.
"""

import math

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.nets.flow_layers import (
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    InvConv1x1,
    MLPST,
    ResNetST,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from gen_lightning.nets.flows import Glow, RealNVP, VariationalDequantizer, VectorRealNVP


def perturbed(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """float64 copy with every parameter moved by N(0, scale^2), then in eval mode."""
    module = module.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.eval()


def warmed_up(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Training-mode passes (ActNorm's data-dependent init, BatchNorm's running statistics), then perturbed.

    Deep networks get smaller perturbations: 0.3 on every weight of a dozen stacked layers makes
    the scales grow without bound, and the test would measure overflow, not the flow.
    """
    module.double().train()
    with torch.no_grad():
        for _ in range(3):
            module(x)
    deep = sum(isinstance(m, AffineCoupling) for m in module.modules()) > 1
    return perturbed(module, scale=0.03 if deep else 0.3)


def jacobian_logdet(f, x: torch.Tensor) -> torch.Tensor:
    """log|det dz/dx| per example from the full autograd Jacobian of f on each single example."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0][0], xi)  # (*shape, *shape)
        d = xi.numel()
        out.append(torch.linalg.slogdet(jac.reshape(d, d))[1])
    return torch.stack(out)


IMG = (3, 1, 4, 4)  # three 1x4x4 images: 16x16 Jacobians


def image_layers():
    g = torch.Generator().manual_seed(1)
    four = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    return {
        "coupling-checkerboard-tanh": (AffineCoupling(checkerboard_mask(4, 4, 0), ResNetST(1, 8, 1), "tanh"), IMG),
        "coupling-checkerboard-sigmoid": (AffineCoupling(checkerboard_mask(4, 4, 1), ResNetST(1, 8, 1), "sigmoid"), IMG),
        "coupling-channel": (AffineCoupling(channel_mask(4, 1), ResNetST(4, 8, 1), "tanh"), four.shape),
        "actnorm": (ActNorm(4), four.shape),
        "batchnorm": (BatchNormFlow(4), four.shape),
        "invconv-lu": (InvConv1x1(4, lu=True), four.shape),
        "invconv-slogdet": (InvConv1x1(4, lu=False), four.shape),
        "squeeze": (Squeeze(), IMG),
        "realnvp": (RealNVP(1, 4, num_scales=2, hidden=8, num_blocks=1), IMG),
        "realnvp-batchnorm-sigmoid": (RealNVP(1, 4, num_scales=2, hidden=8, num_blocks=1, norm="batchnorm", scale="sigmoid"), IMG),
        "glow": (Glow(1, 4, num_levels=2, steps_per_level=2, hidden=8), IMG),
        "glow-no-lu": (Glow(1, 4, num_levels=2, steps_per_level=2, hidden=8, lu=False), IMG),
        "glow-split-priors": (Glow(1, 4, num_levels=2, steps_per_level=1, hidden=8, split_priors=True), IMG),
        "vector-realnvp": (VectorRealNVP(2, num_couplings=4, hidden=16), (5, 2)),
        "vector-realnvp-6d-batchnorm": (VectorRealNVP(6, num_couplings=3, hidden=16, norm="batchnorm"), (5, 6)),
    }


@pytest.mark.parametrize("name", list(image_layers()))
def test_inverse_of_forward_is_identity_and_logdet_matches_the_jacobian(name):
    layer, shape = image_layers()[name]
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    layer = warmed_up(layer, x)
    z, logdet = layer(x)
    assert z.numel() == x.numel() and logdet.shape == (x.shape[0],)  # squeeze reshapes, the rest keep the shape
    torch.testing.assert_close(layer.inverse(z), x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet, jacobian_logdet(layer, x), atol=1e-8, rtol=0)


def test_multiscale_flows_invert_on_mnist_and_cifar_shapes():
    g = torch.Generator().manual_seed(3)
    for net, shape in [
        (RealNVP(1, 28, num_scales=3, hidden=4, num_blocks=1), (2, 1, 28, 28)),
        (Glow(1, 28, num_levels=2, steps_per_level=2, hidden=4, split_priors=True), (2, 1, 28, 28)),
        (RealNVP(3, 32, num_scales=4, hidden=4, num_blocks=1), (2, 3, 32, 32)),
    ]:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        net = warmed_up(net, x)
        z, logdet = net(x)
        torch.testing.assert_close(net.inverse(z), x, atol=1e-9, rtol=0)
        assert torch.isfinite(logdet).all()


def test_multiscale_shapes_factor_out_half_the_channels():
    # MNIST: 1x28x28 -> (squeeze) 4x14x14, 2 out -> 2x14x14 -> 8x7x7, 4 out -> last scale 4x7x7
    net = RealNVP(1, 28, num_scales=3, hidden=4, num_blocks=1)
    assert net.out_shapes == [(4, 14, 14), (8, 7, 7), (4, 7, 7)]
    assert net.factored_shapes == [(2, 14, 14), (4, 7, 7)]
    assert sum(math.prod(s) for s in net.factored_shapes + net.out_shapes[-1:]) == 784
    glow = Glow(3, 32, num_levels=3, steps_per_level=1, hidden=4)
    assert glow.out_shapes == [(12, 16, 16), (24, 8, 8), (48, 4, 4)]
    assert glow.factored_shapes == [(6, 16, 16), (12, 8, 8)]


# ---- pieces checked by hand ----------------------------------------------------------------


def test_masks():
    b0, b1 = checkerboard_mask(3, 3, 0), checkerboard_mask(3, 3, 1)
    assert b0.shape == (1, 1, 3, 3)
    assert b0[0, 0].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert torch.equal(b0 + b1, torch.ones_like(b0))
    assert channel_mask(4, 0).flatten().tolist() == [1, 1, 0, 0]
    assert channel_mask(4, 1).flatten().tolist() == [0, 0, 1, 1]
    assert alternating_mask(3, 0).tolist() == [[1, 0, 1]] and alternating_mask(3, 1).tolist() == [[0, 1, 0]]


def test_coupling_leaves_the_masked_dimensions_unchanged():
    layer = perturbed(AffineCoupling(checkerboard_mask(4, 4, 0), ResNetST(1, 8, 1)))
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    z, _ = layer(x)
    kept = checkerboard_mask(4, 4, 0).bool().expand_as(x)
    assert torch.equal(z[kept], x[kept])
    assert not torch.allclose(z[~kept], x[~kept])


def test_couplings_start_as_the_identity():
    x = torch.randn(2, 1, 4, 4)
    for layer in (AffineCoupling(checkerboard_mask(4, 4, 0), ResNetST(1, 8, 1), "tanh"),
                  AffineCoupling(alternating_mask(2, 0), MLPST(2, 8), "tanh")):
        xin = x if layer.mask.dim() == 4 else x.flatten(1)[:, :2]
        z, logdet = layer(xin)
        assert torch.equal(z, xin) and torch.equal(logdet, torch.zeros(2))


def test_sigmoid_scale_lies_in_zero_one():
    # exp(s) = sigmoid(h + 2): s < 0 wherever the mask lets the coupling act, whatever the net outputs
    layer = perturbed(AffineCoupling(alternating_mask(2, 0), MLPST(2, 8), "sigmoid"), scale=1.0)
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s, _ = layer._s_t(x * layer.mask)
    assert (s[:, 1] < 0).all() and (s[:, 0] == 0).all()
    assert s[:, 1].std() > 0.01  # the net's output reaches the scale


def test_actnorm_initializes_to_zero_mean_unit_variance_per_channel():
    x = 3.0 + 2.0 * torch.randn(64, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    x[:, 1] *= 10
    layer = ActNorm(3).train()
    z, logdet = layer(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    # log|det| = H*W * sum(logs) = -25 * sum(log std_c)
    std = x.transpose(0, 1).flatten(1).std(1, unbiased=False)
    torch.testing.assert_close(logdet, (-25 * torch.log(std).sum()).expand(64), rtol=1e-5, atol=1e-4)
    before = layer.bias.detach().clone()
    layer(x + 100)  # initialized once: a later batch does not re-initialize
    assert torch.equal(layer.bias, before) and bool(layer.initialized)


def test_actnorm_does_not_initialize_in_eval_mode():
    layer = ActNorm(2).eval()
    x = torch.randn(4, 2)
    z, logdet = layer(x)
    assert torch.equal(z, x) and not bool(layer.initialized) and torch.equal(logdet, torch.zeros(4))


def test_squeeze_golden_value():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z, logdet = Squeeze()(x)
    assert z.shape == (1, 4, 2, 2) and logdet.tolist() == [0.0]
    # channel 0 holds the top-left of each 2x2 patch, channel 3 the bottom-right
    assert z[0, 0].tolist() == [[0, 2], [8, 10]] and z[0, 3].tolist() == [[5, 7], [13, 15]]


def test_lu_weight_is_the_initial_rotation_and_its_logdet_is_zero():
    layer = InvConv1x1(5, lu=True, seed=7)
    plain = InvConv1x1(5, lu=False, seed=7)
    w, logdet = layer.weight_and_logdet()
    torch.testing.assert_close(w, plain.weight.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(w @ w.T, torch.eye(5), atol=1e-5, rtol=0)
    assert abs(logdet.item()) < 1e-5  # a rotation has |det| = 1


def test_variational_dequantizer_log_q_is_the_change_of_variables_of_eps_to_u():
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (2, 1, 4, 4), generator=g).double() / 255
    deq = warmed_up(VariationalDequantizer(1, 4, num_couplings=2, hidden=8), x)
    eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    u, log_q = deq.transform(eps, x)
    assert ((u > 0) & (u < 1)).all()
    # log q(u | x) = log N(eps; 0, I) - log|det du/deps|, with du/deps from autograd (16x16 per image)
    log_normal = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
    expected = torch.stack([
        log_normal[i] - torch.linalg.slogdet(
            torch.autograd.functional.jacobian(lambda e: deq.transform(e[None], x[i : i + 1])[0][0], eps[i]).reshape(16, 16)
        )[1]
        for i in range(2)
    ])
    torch.testing.assert_close(log_q, expected, atol=1e-8, rtol=0)
    # u depends on x: the same eps gives other noise for another image
    assert not torch.allclose(deq.transform(eps, x.flip(0))[0], u)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RealNVP(1, 30, num_scales=3), "image_size must be a multiple of 4, got 30"),
        (lambda: Glow(1, 28, num_levels=3), "image_size must be a multiple of 8, got 28"),
        (lambda: RealNVP(1, 28, norm="layernorm"), "norm must be 'actnorm', 'batchnorm' or 'none'"),
        (lambda: AffineCoupling(alternating_mask(2, 0), MLPST(2), "exp"), "scale must be 'tanh' or 'sigmoid'"),
        (lambda: VectorRealNVP(dim=1), "dim >= 2"),
    ],
)
def test_bad_settings_raise_config_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
