"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

p(x) = prod_i p(x_i | x_<i) over pixels in raster order (row by row, left to right) and, within
a pixel, over channels R -> G -> B. Two stacks of convolutions keep that order:

- the vertical stack sees every pixel in the rows up to and including row i (a (k//2 + 1) x k
  kernel padded above). Its features reach the horizontal stack only through a one-row shift
  down, so the horizontal stack at (i, j) receives rows < i, the whole width of the receptive
  field, up-right included: the blind spot of a masked 3x3 stack (van den Oord 2016, fig. 1)
  does not occur;
- the horizontal stack sees row i up to column j (a 1 x (k//2 + 1) kernel padded on the left).
  Its tap at column j is masked by channel groups: the first layer (mask A) lets the features of
  channel group g see the input channels < g only, later layers (mask B) the groups <= g.

Each layer is gated, y = tanh(W_f * x) . sigm(W_g * x) (eq. 4), and the horizontal stack has a
residual 1x1 connection (fig. 2). The head maps the horizontal stack to P parameter maps per
data channel, laid out channel-major: output p*C + c is parameter p of channel c.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gen_lightning.errors import check_rules


def channel_groups(num_channels: int, data_channels: int) -> torch.Tensor:
    """Which data channel (R=0, G=1, B=2) each of `num_channels` features belongs to: contiguous blocks."""
    return torch.arange(num_channels) * data_channels // num_channels


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigm(b) for x = [a, b] along channels: `(B, 2F, H, W) -> (B, F, H, W)` (eq. 4)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Row i takes row i-1 (zeros in row 0): what the vertical stack saw up to row i-1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class VerticalConv2d(nn.Conv2d):
    """A (k//2 + 1) x k convolution whose output (i, j) sees rows i-k//2..i, columns j-k//2..j+k//2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, (kernel_size // 2 + 1, kernel_size))
        self.half = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.half, self.half, self.half, 0)))  # pad left, right, top


class HorizontalConv2d(nn.Conv2d):
    """A 1 x (k//2 + 1) convolution whose output (i, j) sees row i, columns j-k//2..j.

    The tap at column j connects output channel o to input channel c only when
    group_out(o) > group_in(c) (mask "A") or >= (mask "B"); the taps to the left are all open.
    kernel_size 1 gives a masked 1x1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, in_groups: torch.Tensor,
                 out_groups: torch.Tensor, mask_type: str):
        super().__init__(in_channels, out_channels, (1, kernel_size // 2 + 1))
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        self.half = kernel_size // 2
        centre = out_groups[:, None] > in_groups[None, :] if mask_type == "A" else out_groups[:, None] >= in_groups[None, :]
        mask = torch.ones_like(self.weight)  # (out, in, 1, k//2 + 1)
        mask[:, :, 0, -1] = centre.float()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (self.half, 0, 0, 0)), self.weight * self.mask, self.bias)  # pad left


class GatedLayer(nn.Module):
    """One gated layer of both stacks (fig. 2): `(v, h) -> (v', h')`, each `(B, F, H, W)`."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, data_channels: int, first: bool):
        super().__init__()
        groups = channel_groups(channels, data_channels)
        in_groups = torch.arange(in_channels) if first else groups  # the first layer reads the image itself
        gated_groups = torch.cat([groups, groups])  # [a, b] halves of the 2F pre-activation share groups
        self.first = first
        self.v_conv = VerticalConv2d(in_channels, 2 * channels, kernel_size)
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)  # rows above only: no channel mask needed
        self.h_conv = HorizontalConv2d(in_channels, 2 * channels, kernel_size, in_groups, gated_groups, "A" if first else "B")
        self.h_out = HorizontalConv2d(channels, channels, 1, groups, groups, "B")

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.v_conv(v)  # (B, 2F, H, W)
        return gate(v_pre), self.horizontal(h, self.v_to_h(down_shift(v_pre)))  # the vertical stack enters one row down

    def horizontal(self, h: torch.Tensor, from_above: torch.Tensor) -> torch.Tensor:
        """The horizontal stack's step, given what the vertical stack passes it (`v_to_h` of the rows above)."""
        h_new = self.h_out(gate(self.h_conv(h) + from_above))
        return h_new if self.first else h + h_new  # residual on the horizontal stack


class GatedPixelCNN(nn.Module):
    """`(B, C, H, W)` in [0, 1] -> `(B, P*C, H, W)`: the parameters of p(x_{c,i,j} | everything before it).

    `params_per_channel`: P = 1 for Bernoulli logits, 256 for a 256-way categorical.
    `num_layers` gated layers of `channels` features; the first uses `first_kernel_size`.
    """

    num_masks = 1

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        params_per_channel: int = 1,
        channels: int = 64,
        num_layers: int = 15,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        head_channels: int = 256,
    ):
        super().__init__()
        check_rules([
            (in_channels >= 1 and image_size >= 1, f"in_channels and image_size must be >= 1, got {in_channels} and {image_size}"),
            (num_layers >= 1, f"num_layers must be >= 1, got {num_layers}"),
            (channels >= in_channels and head_channels >= in_channels,
             f"channels and head_channels must be >= in_channels={in_channels} (one group per colour), got {channels} and {head_channels}"),
            (kernel_size % 2 == 1 and first_kernel_size % 2 == 1,
             f"kernel sizes must be odd, got kernel_size={kernel_size}, first_kernel_size={first_kernel_size}"),
            (params_per_channel >= 1, f"params_per_channel must be >= 1, got {params_per_channel}"),
        ])
        self.in_channels, self.image_size, self.params_per_channel = in_channels, image_size, params_per_channel
        c = in_channels
        self.layers = nn.ModuleList(
            GatedLayer(c if i == 0 else channels, channels, first_kernel_size if i == 0 else kernel_size, c, first=i == 0)
            for i in range(num_layers)
        )
        feature_groups, head_groups = channel_groups(channels, c), channel_groups(head_channels, c)
        out_groups = torch.arange(params_per_channel * c) % c  # output p*C + c belongs to channel c
        self.head = nn.ModuleList([
            HorizontalConv2d(channels, head_channels, 1, feature_groups, head_groups, "B"),
            HorizontalConv2d(head_channels, params_per_channel * c, 1, head_groups, out_groups, "B"),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.in_channels, self.image_size
        if tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"GatedPixelCNN was built for images (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        return self._params(x)

    def _params(self, x: torch.Tensor) -> torch.Tensor:
        """The stacks and head on any number of rows: row i of the output reads rows <= i only."""
        x = 2 * x - 1  # [0, 1] -> [-1, 1]
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h)
        return self._head(h)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head[1](F.relu(self.head[0](F.relu(h))))  # (B, P*C, H, W)

    def _vertical_row(self, x: torch.Tensor, gated: list[torch.Tensor], r: int) -> list[torch.Tensor]:
        """Row r of every layer's vertical stack, once row r of x is drawn: stored in `gated` (per layer `(B, F, H, W)`),
        and returned as what each layer's horizontal stack receives in row r + 1, `v_to_h` of the row, `(B, 2F, 1, W)`.

        A layer's row r reads rows r - k//2..r of the layer below, which are kept, so each row is computed once.
        """
        below, out = 2 * x - 1, []
        for layer, kept in zip(self.layers, gated):
            window = below[:, :, max(0, r - layer.v_conv.half) : r + 1]  # the conv pads above row 0, as the full forward
            v_pre = layer.v_conv(window)[:, :, -1:]  # (B, 2F, 1, W): row r
            out.append(layer.v_to_h(v_pre))
            kept[:, :, r : r + 1] = gate(v_pre)
            below = kept
        return out

    @torch.no_grad()
    def sample(self, n: int, likelihood, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples `(n, C, H, W)`: one evaluation per pixel and channel, raster order, R -> G -> B.

        Each evaluation computes only what is new, from features it keeps: every layer's vertical stack once a
        row, and every layer's horizontal stack once a pixel, as a matrix product over the k//2 + 1 columns its
        tap reads in the layer below (kept). The conditionals equal the full forward's (tests/nets/test_pixelcnn.py).
        """
        c, s = self.in_channels, self.image_size
        weight = self.head[1].weight
        x = torch.zeros(n, c, s, s, device=weight.device, dtype=weight.dtype)
        gated = [x.new_zeros(n, layer.v_to_h.in_channels // 2, s, s) for layer in self.layers]  # vertical, kept
        rows = [x.new_zeros(n, layer.h_out.out_channels, s) for layer in self.layers]  # horizontal, this row
        h_convs = [_ColumnConv(layer.h_conv) for layer in self.layers]
        h_outs = [_ColumnConv(layer.h_out) for layer in self.layers]
        head = [_ColumnConv(conv) for conv in self.head]
        # row 0 receives the down-shift's zero padding from above
        from_above = [layer.v_to_h(x.new_zeros(n, layer.v_to_h.in_channels, 1, s))[:, :, 0] for layer in self.layers]
        for i in range(s):
            for j in range(s):
                for ch in range(c):  # a drawn channel changes column j: recompute it in every layer
                    below = 2 * x[:, :, i] - 1  # (n, C, W)
                    for layer, h_conv, h_out, above, row in zip(self.layers, h_convs, h_outs, from_above, rows):
                        h_new = h_out(gate(h_conv(below, j) + above[:, :, j]))  # (n, F)
                        row[:, :, j] = h_new if layer.first else below[:, :, j] + h_new
                        below = row
                    params = head[1](F.relu(head[0](F.relu(below), j)))[:, :, None, None]  # (n, P*C, 1, 1)
                    x[:, ch, i, j] = likelihood.sample(params, generator=generator)[:, ch, 0, 0]
            if i + 1 < s:
                from_above = [a[:, :, 0] for a in self._vertical_row(x, gated, i)]
        return x


class _ColumnConv:
    """A HorizontalConv2d at one column as a matrix product: its masked `(out, in, 1, taps)` weight flattened to
    `(out, in * taps)` against the `taps` columns up to and including column j (zeros left of column 0, as its
    padding). `(n, in, W), j -> (n, out)`; a 1x1 conv also takes `(n, in)` alone."""

    def __init__(self, conv: HorizontalConv2d):
        self.taps = conv.weight.shape[-1]
        self.weight, self.bias = (conv.weight * conv.mask).flatten(1), conv.bias

    def __call__(self, h: torch.Tensor, j: int | None = None) -> torch.Tensor:
        if j is not None:
            h = h[:, :, max(0, j + 1 - self.taps) : j + 1]
            h = F.pad(h, (self.taps - h.shape[-1], 0)).flatten(1)  # (n, in, taps) -> (n, in * taps): in-major, as the weight
        return F.linear(h, self.weight, self.bias)
