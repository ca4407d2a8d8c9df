"""U-Net and DenoiserMLP: shapes at 28 and 32 px, zero output at init, class embedding with a null
token, the time embedding's closed form, and clear errors."""

import math

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.nets.denoiser_mlp import DenoiserMLP
from gen_lightning.nets.unet import UNet, timestep_embedding


def _perturb(net: torch.nn.Module) -> None:
    """Give the zero-initialized layers weights, so that outputs depend on every input."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 0.003])  # continuous time in [0, 1], read as 1000 t = 0 and 3
    emb = timestep_embedding(t, 4)  # freqs 1 and 10000^(-1/2) = 0.01
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(3.0), math.cos(0.03), math.sin(3.0), math.sin(0.03)]])
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize(
    "in_channels, size, mults, attn",
    [(1, 28, [1, 2, 2], [14]), (3, 32, [1, 2, 2, 2], [16]), (3, 32, [1, 2], [32, 16])],
)
def test_unet_shapes_and_zero_init(in_channels, size, mults, attn):
    net = UNet(in_channels, size, channels=16, channel_mults=mults, num_res_blocks=1, attention_resolutions=attn)
    x = torch.randn(3, in_channels, size, size)
    out = net(x, torch.tensor([0.0, 0.0105, 0.999]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # the final conv starts at zero
    _perturb(net)
    assert net(x, torch.tensor([0.0, 0.0105, 0.999])).abs().sum() > 0


@pytest.mark.parametrize("channels", [16, 32, 64])
def test_unet_time_changes_the_output(channels):
    """The time embedding must survive the GroupNorm after it: with one channel a group (the old rule at 16 or 32
    channels) the per-channel shift was normalized away and the outputs differed by float noise only (~1e-7)."""
    net = UNet(1, 28, channels=channels, num_res_blocks=1).eval()
    _perturb(net)
    x = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([0.001, 0.5]))
    assert (out[0] - out[1]).abs().mean() > 0.01 * out.abs().mean()


def test_unet_class_embedding_and_null_token():
    net = UNet(1, 28, channels=16, num_res_blocks=1, num_classes=10).eval()
    assert net.class_embed.num_embeddings == 11  # 10 classes + the "no label" token
    _perturb(net)
    x = torch.randn(1, 1, 28, 28).expand(3, -1, -1, -1)
    out = net(x, torch.full((3,), 0.005), torch.tensor([0, 3, 10]))
    assert out.shape == x.shape
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    with pytest.raises(ValueError, match="pass labels"):
        net(x, torch.full((3,), 0.005))
    with pytest.raises(ValueError, match="takes no labels"):
        UNet(1, 28, channels=16, num_res_blocks=1)(x, torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_unet_label_embedding_starts_at_the_asked_scale():
    """label_embed_std sets the rows' initial spread (default 1, nn.Embedding's); 201 rows x 64 dims = 12,864 draws,
    so the sample std is within 2% of its value."""
    torch.manual_seed(0)
    default = UNet(1, 28, channels=16, num_res_blocks=1, num_classes=200).class_embed.weight
    small = UNet(1, 28, channels=16, num_res_blocks=1, num_classes=200, label_embed_std=0.02).class_embed.weight
    assert default.shape == small.shape == (201, 64)
    assert abs(default.std().item() - 1.0) < 0.02 and abs(small.std().item() - 0.02) < 0.0004
    with pytest.raises(ConfigError, match="label_embed_std must be >= 0"):
        UNet(1, 28, num_classes=10, label_embed_std=-1.0)


def test_unet_config_errors():
    with pytest.raises(ConfigError, match="attention_resolutions"):
        UNet(1, 28, channel_mults=[1, 2, 2], attention_resolutions=[16])
    with pytest.raises(ConfigError, match="cannot be halved"):
        UNet(1, 28, channel_mults=[1, 2, 2, 2], attention_resolutions=[])
    with pytest.raises(ConfigError, match="dropout"):
        UNet(1, 28, dropout=1.5)
    with pytest.raises(ValueError, match="expects"):
        UNet(1, 28, channels=16, num_res_blocks=1)(torch.randn(2, 1, 32, 32), torch.zeros(2))


def test_denoiser_mlp_shapes_labels_and_init():
    net = DenoiserMLP(dim=2, hidden=32, depth=2, time_embed_dim=16, num_classes=4)
    x = torch.randn(6, 2)
    labels = torch.tensor([0, 1, 2, 3, 4, 4])  # 4 = no label
    assert torch.count_nonzero(net(x, torch.arange(6.0), labels)) == 0
    _perturb(net)
    out = net(x, torch.arange(6.0), labels)
    assert out.shape == (6, 2) and out.abs().sum() > 0
    with pytest.raises(ValueError, match="pass labels"):
        net(x, torch.arange(6.0))
    with pytest.raises(ConfigError, match="num_classes"):
        DenoiserMLP(num_classes=1)


def test_denoiser_mlp_fourier_features_closed_form():
    net = DenoiserMLP(dim=2, hidden=8, depth=1, time_embed_dim=4, fourier_octaves=2, fourier_wavelength=4.0)
    x = torch.tensor([[1.0, 0.5]])  # f = 2 pi / 4 = pi/2 and pi
    a = [math.pi / 2, math.pi, math.pi / 4, math.pi / 2]  # (x1 f1, x1 f2, x2 f1, x2 f2)
    expected = torch.tensor([[1.0, 0.5, *map(math.sin, a), *map(math.cos, a)]])
    torch.testing.assert_close(net.features(x), expected)
    assert net.inp.in_features == 10 and "freqs" not in net.state_dict()
    with pytest.raises(ConfigError, match="fourier"):
        DenoiserMLP(fourier_octaves=-1)


def test_attention_applies_its_1x1_convolutions_as_matrix_products():
    """The block computes qkv and proj with F.linear over the tokens, for speed; the result (and so the meaning of
    trained weights) is that of the 1x1 convolutions the weights belong to."""
    from gen_lightning.nets.unet import AttentionBlock

    block = AttentionBlock(32)
    _perturb(block)
    x = torch.randn(3, 32, 7, 7, generator=torch.Generator().manual_seed(1))
    b, c, h, w = x.shape
    q, k, v = block.qkv(block.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # the convolutions themselves
    attended = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    expected = x + block.proj(attended.transpose(1, 2).reshape(b, c, h, w))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(block(x), x)  # the perturbed block does attend
