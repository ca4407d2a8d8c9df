"""The DDPM variational bound on -log p(x0) in bits/dim (Ho et al. 2020, eq. 5 and sec. 3.3).

L = L_T + sum_{t>=1} L_{t-1} + L_0: KL terms between the true posterior q(x_{t-1} | x_t, x0) and the
model's Gaussian step, plus the discretized Gaussian decoder of eq. 13 for 8-bit images in [-1, 1].
"""

from __future__ import annotations

import math

import torch

from gen_lightning.samplers.schedules import Denoiser, gather


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for x on the 256-level grid of [-1, 1], bins of width 2/255 (DDPM eq. 13)."""
    inv_std = torch.exp(-log_std)
    cdf_plus = _std_normal_cdf(inv_std * (x - mean + 1.0 / 255))
    cdf_minus = _std_normal_cdf(inv_std * (x - mean - 1.0 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_minus = (1.0 - cdf_minus).clamp(min=1e-12).log()
    log_bin = (cdf_plus - cdf_minus).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_bin))


@torch.no_grad()
def vlb_bits_per_dim(denoiser: Denoiser, x0: torch.Tensor, variance: str = "fixed_small") -> torch.Tensor:
    """(B,) bound L_T + sum_t L_{t-1} + L_0 in bits/dim of images x0 in [-1, 1], with the sampler's fixed variance.

    One network pass per t with x_t ~ q(x_t | x0); `denoiser` gives (x0_hat, eps_hat) and should clip x0_hat to [-1, 1].
    """
    s = denoiser.schedule.to(x0.device)
    log_var = s.variance(variance).clone()
    log_var[0] = s.posterior_variance[1]  # beta~_0 = 0; the decoder's variance as in improved-diffusion
    log_var = log_var.log()
    dims = list(range(1, x0.ndim))
    total = torch.zeros(x0.shape[0], device=x0.device)
    for t in range(s.num_steps):
        tb = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
        xt = s.q_sample(x0, tb, torch.randn_like(x0))
        mean = s.q_posterior_mean(denoiser(xt, tb)[0], xt, tb)
        lv = gather(log_var, tb, x0)
        if t == 0:
            total -= discretized_gaussian_log_likelihood(x0, mean, 0.5 * lv).sum(dims)
        else:
            true_lv = gather(s.posterior_variance, tb, x0).log()
            total += normal_kl(s.q_posterior_mean(x0, xt, tb), true_lv, mean, lv).sum(dims)
    tb = torch.full((x0.shape[0],), s.num_steps - 1, device=x0.device, dtype=torch.long)
    mean_T, var_T = gather(s.sqrt_alpha_bar, tb, x0) * x0, gather(1 - s.alpha_bar, tb, x0)
    total += normal_kl(mean_T, var_T.log(), torch.zeros_like(x0), torch.zeros_like(x0)).sum(dims)  # L_T
    return total / (x0[0].numel() * math.log(2.0))
