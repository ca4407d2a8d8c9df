"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015).

An MLP whose weight matrices are multiplied by binary masks so that output d depends only on
the inputs that come before d in an ordering. Each unit gets a degree m (MADE sec. 4):

  input d:      m^0(d) = its position in the order, 1..D
  hidden k:     m^l(k) ~ U{min_k' m^{l-1}(k'), ..., D-1}
  hidden mask:  M^l[k, k'] = 1[m^l(k) >= m^{l-1}(k')]                       (MADE eq. 12)
  output mask:  M^V[d, k]  = 1[m^0(d) > m^L(k)]                               (MADE eq. 13)

so every path from input j to output d passes degrees m^0(j) <= ... < m^0(d).

`num_masks` > 1 draws that many orderings (with `order: random`) and connectivities: training
uses mask `step % num_masks` (order- and connectivity-agnostic training, MADE sec. 4.2), and
the model averages the probabilities of all masks at test (an ensemble: log mean exp).
The degrees are buffers, so a checkpoint keeps its masks; each mask is rebuilt from them.

Each dimension has `params_per_dim` output parameters (1 Bernoulli logit; 3K for a mixture
of K Gaussians), laid out parameter-major: output p*D + d is parameter p of dimension d.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gen_lightning.errors import ConfigError, check_rules
from gen_lightning.nets.mlp import Activation, make_activation


def _check(in_shape: list[int], hidden: list[int], params_per_dim: int, num_masks: int) -> int:
    num_dims = math.prod(in_shape)
    check_rules([
        (num_dims >= 2, f"MADE needs at least 2 dimensions, got in_shape {list(in_shape)}"),
        (len(hidden) >= 1 and all(h >= 1 for h in hidden), f"MADE hidden must hold >= 1 sizes >= 1, got {list(hidden)}"),
        (params_per_dim >= 1, f"params_per_dim must be >= 1, got {params_per_dim}"),
        (num_masks >= 1, f"num_masks must be >= 1, got {num_masks}; 1 is one fixed order and connectivity"),
    ])
    return num_dims


class MADE(nn.Module):
    """`(B, *in_shape) -> (B, params_per_dim * D)`: the parameters of each p(x_d | x_<d).

    `order`: "natural" (d = 1..D, as NADE) or "random" (a fresh permutation per mask).
    `seed`: the degrees are drawn from torch.Generator(seed + m) for mask m.
    """

    def __init__(
        self,
        in_shape: list[int],
        hidden: list[int] = [500],
        params_per_dim: int = 1,
        order: Literal["natural", "random"] = "natural",
        num_masks: int = 1,
        activation: Activation = "relu",
        seed: int = 0,
    ):
        super().__init__()
        if order not in ("natural", "random"):
            raise ConfigError(f"MADE order must be 'natural' or 'random', got {order!r}")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.num_dims = _check(self.in_shape, hidden, params_per_dim, num_masks)  # D
        self.params_per_dim, self.num_masks, self.order_kind = params_per_dim, num_masks, order
        widths = [self.num_dims, *hidden]
        # plain Linear layers hold the weights; every call multiplies them by the masks (masked_weights)
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output_layer = nn.Linear(widths[-1], params_per_dim * self.num_dims)
        self.activation = make_activation(activation)
        degrees = [self._draw_degrees(hidden, order, seed + m) for m in range(num_masks)]
        for l in range(len(hidden) + 1):  # degrees[m][l]: (widths[l],); stored as (num_masks, widths[l])
            self.register_buffer(f"degrees_{l}", torch.stack([deg[l] for deg in degrees]))

    def _draw_degrees(self, hidden: list[int], order: str, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        d = self.num_dims
        if order == "natural":
            degrees = [torch.arange(1, d + 1)]
        else:
            degrees = [torch.randperm(d, generator=g) + 1]  # m^0(j): position of input j in the order
        for width in hidden:
            low = int(degrees[-1].min())
            degrees.append(torch.randint(low, d, (width,), generator=g))  # U{low, ..., D-1}
        return degrees

    def masks(self, mask: int = 0) -> list[torch.Tensor]:
        """The binary `(out, in)` masks of every layer for mask index `mask`.

        Built from the degree buffers and kept until those change (a checkpoint load copies into them, which
        bumps their version; a move to another device or dtype replaces them): a training step reuses them.
        """
        buffers = [getattr(self, f"degrees_{l}") for l in range(len(self.hidden_layers) + 1)]
        key = (mask, self.output_layer.weight.dtype, *((b.data_ptr(), b._version) for b in buffers))
        cached = getattr(self, "_masks_cache", None)
        if cached is None or cached[0] != key:
            self._masks_cache = (key, self._build_masks(mask))
        return self._masks_cache[1]

    def _build_masks(self, mask: int) -> list[torch.Tensor]:
        degrees = [getattr(self, f"degrees_{l}")[mask] for l in range(len(self.hidden_layers) + 1)]
        hidden = [(deg[:, None] >= prev[None, :]).float() for prev, deg in zip(degrees[:-1], degrees[1:])]  # eq. 12
        out_deg = degrees[0].repeat(self.params_per_dim)  # output p*D + d has the degree of input d
        return [*hidden, (out_deg[:, None] > degrees[-1][None, :]).float()]  # eq. 13

    def order(self, mask: int = 0) -> torch.Tensor:
        """Flat input indices in the order mask `mask` generates them: `(D,)`."""
        return torch.argsort(self.degrees_0[mask])

    def forward(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        if not 0 <= mask < self.num_masks:
            raise ValueError(f"mask must be in [0, {self.num_masks}), got {mask}")
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"MADE was built for inputs (B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        return self._masked_forward(x.flatten(1), self.masked_weights(mask))  # (B, *in_shape) -> (B, D) -> (B, P*D)

    def masked_weights(self, mask: int = 0) -> list[torch.Tensor]:
        """Each layer's weight times its binary mask: `(out, in)` per layer."""
        layers = [*self.hidden_layers, self.output_layer]
        return [layer.weight * m for layer, m in zip(layers, self.masks(mask))]

    def _masked_forward(self, h: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        *hidden_weights, out_weight = weights
        for layer, w in zip(self.hidden_layers, hidden_weights):
            h = self.activation(F.linear(h, w, layer.bias))
        return F.linear(h, out_weight, self.output_layer.bias)

    @torch.no_grad()
    def sample(self, n: int, likelihood, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples from the mixture of the masks' models: a mask drawn uniformly per sample, then D ancestral steps."""
        device = self.output_layer.weight.device
        which = torch.randint(self.num_masks, (n,), device=device, generator=generator)
        x = torch.zeros(n, self.num_dims, device=device)
        for m in range(self.num_masks):
            rows = (which == m).nonzero().flatten()
            if len(rows):
                x[rows] = self._sample_one_mask(len(rows), m, likelihood, generator)
        return x.view(n, *self.in_shape)

    def _sample_one_mask(self, n: int, mask: int, likelihood, generator) -> torch.Tensor:
        if len(self.hidden_layers) == 1:
            return self._sample_one_mask_incremental(n, mask, likelihood, generator)
        weight = self.output_layer.weight
        x = torch.zeros(n, self.num_dims, device=weight.device, dtype=weight.dtype)
        weights = self.masked_weights(mask)  # masked once, not once per dimension
        for d in self.order(mask).tolist():  # one network evaluation per dimension
            params = self._masked_forward(x, weights).view(n, self.params_per_dim, self.num_dims)[:, :, d]  # (n, P*D) -> (n, P)
            x[:, d] = likelihood.sample(params, generator=generator)[:, 0]  # (n, P) -> (n, 1)
        return x

    def _sample_one_mask_incremental(self, n: int, mask: int, likelihood, generator) -> torch.Tensor:
        """One hidden layer: the NADE recurrence (Larochelle & Murray 2011) in MADE's masks, O(D H) a sample.

        The pre-activation a = b + W x of the full forward, with x zero where not drawn yet, gains the
        column W[:, d] x_d once x_d is drawn, and output d needs only its P rows of the output layer, so
        the D steps cost 2 D H per sample instead of the full forward's 2 D^2 H. The conditionals equal
        the full forward's up to float rounding (tests/nets/test_made.py).
        """
        w_in, w_out = self.masked_weights(mask)  # (H, D), (P*D, H)
        w_in = w_in.T.contiguous()  # (D, H): row d is input d's column, read once per step
        a = self.hidden_layers[0].bias.expand(n, -1).clone()  # (n, H)
        x = torch.zeros(n, self.num_dims, device=w_in.device, dtype=w_in.dtype)
        out_bias = self.output_layer.bias.view(self.params_per_dim, self.num_dims)  # (P, D)
        w_out = w_out.view(self.params_per_dim, self.num_dims, -1)  # (P, D, H)
        for d in self.order(mask).tolist():
            params = self.activation(a) @ w_out[:, d].T + out_bias[:, d]  # (n, H) @ (H, P) -> (n, P)
            x[:, d] = likelihood.sample(params, generator=generator)[:, 0]
            a.addr_(x[:, d], w_in[d])  # a += x_d w_d^T: (n,) outer (H,)
        return x
