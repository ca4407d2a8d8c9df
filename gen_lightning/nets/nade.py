"""NADE: the neural autoregressive distribution estimator (Larochelle & Murray 2011).

For binary x in {0, 1}^D, in the natural order d = 1..D,

  p(x) = prod_d p(x_d | x_<d),   p(x_d = 1 | x_<d) = sigm(b_d + V_d . h_d),   h_d = sigm(a_d),
  a_1 = c,   a_d = a_{d-1} + W[:, d-1] x_{d-1}                                  (NADE eq. 4-6)

One hidden-layer weight matrix W (H, D) is shared by all D conditionals: a_d adds one column of W
to a_{d-1}, so all D conditionals cost O(DH) together. `forward` runs the recursion `block`
dimensions at a time (inside a block the partial sums are one small batched matmul with a
strictly lower-triangular mask); `sample` runs it one dimension at a time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gen_lightning.errors import ConfigError


class NADE(nn.Module):
    """Bernoulli NADE on `in_shape` (e.g. [1, 28, 28]); outputs the D logits of p(x_d = 1 | x_<d).

    `forward(x)`: `(B, *in_shape) -> (B, D)` logits, the d-th depending on x_<d only.
    `sample(n, likelihood, generator)`: ancestral sampling with the running pre-activation.
    """

    num_masks = 1  # one fixed order (MADE averages over several)

    def __init__(self, in_shape: list[int], hidden: int = 500, block: int = 8):
        super().__init__()
        if hidden < 1 or block < 1:
            raise ConfigError(f"NADE hidden and block must be >= 1, got {hidden} and {block}")
        self.block = block  # dimensions per chunk of the running sum: speed only, the result does not depend on it
        self.in_shape = tuple(in_shape)
        self.num_dims = math.prod(self.in_shape)  # D
        self.hidden = hidden
        d, h = self.num_dims, hidden
        # Initialization as in the reference code: small uniform weights, zero biases.
        self.W = nn.Parameter(torch.empty(h, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.empty(d, h).uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h)))
        self.b = nn.Parameter(torch.zeros(d))

    @property
    def order(self) -> torch.Tensor:
        """The generation order: flat indices 0..D-1 of the data (the natural order)."""
        return torch.arange(self.num_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"NADE was built for inputs (B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        x = x.flatten(1)  # (B, *in_shape) -> (B, D)
        a_start = self.c.expand(x.shape[0], -1)  # a_1 = c: (B, H)
        logits = []
        for lo in range(0, self.num_dims, self.block):  # S = block dims at a time, so (B, S, H) stays in cache
            hi = min(lo + self.block, self.num_dims)
            x_blk, w_blk = x[:, lo:hi], self.W[:, lo:hi]  # (B, S), (H, S)
            before = torch.ones(hi - lo, hi - lo, device=x.device).tril(-1)  # before[i, k] = 1[k < i]
            # a_{lo+i} = a_lo + sum_{k<i} W[:, lo+k] x_{lo+k}: (B, S, S) @ (S, H) -> (B, S, H)
            a = torch.baddbmm(a_start[:, None, :], x_blk[:, None, :] * before, w_blk.t().expand(x.shape[0], -1, -1))
            logits.append((torch.sigmoid(a) * self.V[lo:hi]).sum(-1) + self.b[lo:hi])  # b_d + V_d . h_d: (B, S)
            a_start = torch.addmm(a_start, x_blk, w_blk.t())  # a_hi = a_lo + W[:, lo:hi] x_lo:hi
        return torch.cat(logits, dim=1)  # (B, D)

    @torch.no_grad()
    def sample(self, n: int, likelihood, generator: torch.Generator | None = None) -> torch.Tensor:
        """n ancestral samples `(n, *in_shape)`: x_d ~ p(x_d | x_<d), then a_{d+1} = a_d + W[:, d] x_d."""
        x = torch.zeros(n, self.num_dims, device=self.W.device)
        a = self.c.expand(n, -1).clone()  # a_1 = c: (n, H)
        for d in range(self.num_dims):
            logit = torch.sigmoid(a) @ self.V[d] + self.b[d]  # (n,)
            x[:, d] = likelihood.sample(logit[:, None], generator=generator)[:, 0]
            a += x[:, d : d + 1] * self.W[:, d]  # (n, 1) * (H,) -> (n, H)
        return x.view(n, *self.in_shape)
