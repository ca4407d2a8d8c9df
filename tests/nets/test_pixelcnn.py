"""Gated PixelCNN: raster and colour order by Jacobian, no blind spot, normalization, sampling."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import Bernoulli
from gen_lightning.nets.pixelcnn import GatedPixelCNN, HorizontalConv2d, channel_groups


def small(**kw) -> GatedPixelCNN:
    args = dict(in_channels=1, image_size=5, params_per_channel=1, channels=8, num_layers=3, kernel_size=3,
                first_kernel_size=3, head_channels=8)
    return GatedPixelCNN(**(args | kw))


def jacobian(net: GatedPixelCNN, x: torch.Tensor) -> torch.Tensor:
    """d output[o, i, j] / d x[c, k, l] for one image: `(P*C, H, W, C, H, W)`."""
    return torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x)


def earlier(c_out: int, i: int, j: int, c_in: int, k: int, l: int) -> bool:
    """Input (c_in, k, l) comes before output (c_out, i, j): raster order, then R -> G -> B within a pixel."""
    return (k, l) < (i, j) or ((k, l) == (i, j) and c_in < c_out)


@pytest.mark.parametrize("channels", [1, 3])
def test_each_output_depends_only_on_earlier_subpixels(channels):
    torch.manual_seed(0)
    net = small(in_channels=channels, image_size=4, params_per_channel=2, channels=6, head_channels=6)
    jac = jacobian(net, torch.rand(channels, 4, 4))  # (2*C, 4, 4, C, 4, 4)
    for o, i, j, c, k, l in itertools.product(range(2 * channels), range(4), range(4), range(channels), range(4), range(4)):
        if not earlier(o % channels, i, j, c, k, l):
            assert jac[o, i, j, c, k, l] == 0, (o, i, j, c, k, l)
    if channels == 3:  # within a pixel: G sees R, B sees R and G
        assert jac[1, 2, 2, 0, 2, 2] != 0 and jac[2, 2, 2, 0, 2, 2] != 0 and jac[2, 2, 2, 1, 2, 2] != 0


def test_every_earlier_pixel_reaches_the_output():
    """Four layers of 3x3 cover a 4x4 image: output (3, 1) depends on all 13 pixels before it, up-right ones included."""
    torch.manual_seed(1)
    net = small(image_size=4, num_layers=4)
    jac = jacobian(net, torch.rand(1, 4, 4))[0, 3, 1, 0]  # (4, 4)
    before = torch.tensor([[(k, l) < (3, 1) for l in range(4)] for k in range(4)])
    assert (jac[before] != 0).all()
    assert (jac[~before] == 0).all()


class NaiveMaskedPixelCNN(torch.nn.Module):
    """The original masked 3x3 PixelCNN (mask A, then mask B) for contrast: it has a blind spot."""

    def __init__(self, layers: int = 2):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(1 if i == 0 else 8, 8 if i < layers - 1 else 1, 3, padding=1)
                                         for i in range(layers))
        self.masks = []
        for i in range(layers):
            m = torch.ones(3, 3)
            m[1, 2:] = 0
            m[2] = 0
            m[1, 1] = 0 if i == 0 else 1  # mask A excludes the centre
            self.masks.append(m)

    def forward(self, x):
        for i, (conv, m) in enumerate(zip(self.convs, self.masks)):
            x = F.conv2d(x, conv.weight * m, conv.bias, padding=1)
            x = torch.tanh(x) if i < len(self.convs) - 1 else x
        return x


def test_no_blind_spot_where_a_masked_pixelcnn_has_one():
    """Two 3x3 layers: the pixel one row up and two columns right of (3, 2) reaches it in the gated
    PixelCNN (its vertical stack is 5 wide after two layers) but not in the masked PixelCNN."""
    torch.manual_seed(2)
    x = torch.rand(1, 5, 5)
    naive = torch.autograd.functional.jacobian(lambda v: NaiveMaskedPixelCNN(2)(v[None])[0], x)[0, 3, 2, 0]
    gated = jacobian(small(num_layers=2), x)[0, 3, 2, 0]
    assert naive[2, 4] == 0 and naive[2, 3] != 0  # (2, 4): the blind spot
    assert gated[2, 4] != 0 and gated[2, 3] != 0


def test_probabilities_of_all_3x3_binary_images_sum_to_one():
    torch.manual_seed(3)
    net = small(image_size=3, num_layers=2)
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9))).view(-1, 1, 3, 3)  # all 512 images
    with torch.no_grad():
        total = Bernoulli().log_prob(net(x), x).logsumexp(0).exp()
    assert abs(total.item() - 1.0) < 1e-5


def test_sample_is_binary_and_reproducible():
    torch.manual_seed(4)
    net = small(image_size=3, num_layers=2)
    a = net.sample(4, Bernoulli(), generator=torch.Generator().manual_seed(0))
    b = net.sample(4, Bernoulli(), generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 3, 3) and torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}


def test_ancestral_samples_follow_the_model():
    """2x2 images: the frequencies of the 16 images in 10,000 samples match exp(log p) (binomial std <= 0.005)."""
    torch.manual_seed(5)
    net = GatedPixelCNN(1, 2, 1, 8, 2, 3, 3, 8)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)  # strong dependence between the pixels
        images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(-1, 1, 2, 2)
        p = Bernoulli().log_prob(net(images), images).exp()  # (16,)
    samples = net.sample(10000, Bernoulli(), generator=torch.Generator().manual_seed(0))
    freq = torch.stack([(samples == v).flatten(1).all(1).float().mean() for v in images])
    assert (freq - p).abs().max() < 0.02


def test_masked_1x1_connects_colour_groups_in_order():
    groups = channel_groups(6, 3)
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]
    conv_a = HorizontalConv2d(3, 6, 1, torch.arange(3), groups, "A")
    conv_b = HorizontalConv2d(6, 6, 1, groups, groups, "B")
    assert conv_a.mask[:, :, 0, 0].tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert torch.equal(conv_b.mask[:, :, 0, 0], (groups[:, None] >= groups[None, :]).float())  # group g sees groups <= g


def test_refuses_bad_settings_and_other_image_sizes():
    with pytest.raises(ConfigError, match="kernel sizes must be odd"):
        small(kernel_size=4)
    with pytest.raises(ConfigError, match="channels and head_channels must be >= in_channels=3"):
        small(in_channels=3, channels=2)
    with pytest.raises(ValueError, match=r"built for images \(B, 1, 5, 5\), got \(1, 1, 6, 6\)"):
        small()(torch.zeros(1, 1, 6, 6))


@pytest.mark.parametrize("channels", [1, 3])
def test_sampling_uses_the_full_forwards_conditionals(channels, recording):
    """The conditional used to draw each subpixel equals the full forward of the finished sample there.

    The sampler computes each row of the vertical stack and each pixel of the horizontal stack once, from the rows
    and columns it keeps: windows of k//2 + 1 rows or columns (4 in the first layer, kernel 7; 2 in the others), so
    from row and column 3 on a window's zero padding must not leak in. The full forward sees everything.
    """
    torch.manual_seed(6)
    net = small(in_channels=channels, image_size=9, channels=12, num_layers=3, first_kernel_size=7, head_channels=12)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)
    rec = recording(Bernoulli())
    x = net.sample(5, rec, generator=torch.Generator().manual_seed(1))
    full = net(x)  # (5, C, 9, 9)
    order = [(i, j, ch) for i in range(9) for j in range(9) for ch in range(channels)]
    assert len(rec.params) == len(order)
    for params, (i, j, ch) in zip(rec.params, order):
        # the drawn channel's logit (output p*C + c, P = 1); the later channels' were computed before it was drawn
        torch.testing.assert_close(params[:, ch, 0, 0], full[:, ch, i, j], rtol=1e-5, atol=1e-5)
