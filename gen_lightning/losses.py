"""Loss terms as pure functions of tensors; each family's LightningModule composes them.

Conventions: a batch dimension B comes first and every term returns a per-example tensor
`(B,)` (or `(K, B)` for K samples per example), summed over the data or latent dimensions,
in nats. The module takes the mean over the batch.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)

# ---- VAE (Kingma & Welling 2014; Burda et al. 2016) -----------------------------------------


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2) (Kingma & Welling 2014, eq. 10)."""
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per example, `(B, L) -> (B,)`.

    Closed form (Kingma & Welling 2014, appendix B): 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dimension, `(..., L) -> (...)`."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension, `(..., L) -> (...)`."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def iwae_log_likelihood(log_w: torch.Tensor) -> torch.Tensor:
    """The k-sample importance-weighted bound from log weights `(K, B) -> (B,)`.

    log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x), z_k ~ q(z | x), and
    L_K = log (1/K) sum_k w_k (Burda et al. 2016, eq. 8), computed with logsumexp.
    """
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
