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


# ---- adversarial losses (Goodfellow et al. 2014; Miyato et al. 2018; Gulrajani et al. 2017; Mescheder et al. 2018)
#
# Unlike the terms above, each of these returns a scalar: the mean over the batch. `real` and
# `fake` are the discriminator's raw outputs (logits, or critic values for WGAN), shape (B,).


def d_loss_bce(real: torch.Tensor, fake: torch.Tensor, real_target: float = 1.0) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))) with D = sigmoid(logit) (Goodfellow et al. 2014, eq. 1).

    `real_target` < 1 is one-sided label smoothing (Salimans et al. 2016): the real target becomes
    e.g. 0.9 and the fake target stays 0.
    """
    real_term = torch.nn.functional.binary_cross_entropy_with_logits(real, real_target * torch.ones_like(real))
    fake_term = torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    return real_term + fake_term


def g_loss_bce(fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, sec. 3)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al. 2019, eq. 3), to minimize: 1 / (d_I / d_z + eps) for the pairs
    (fake[i], fake[h + i]) drawn from (z[i], z[h + i]), h = B // 2, with d the mean absolute difference over the
    pairs. A generator that maps distinct latents to one image pays 1 / eps; one that spreads them pays little."""
    h = fake.shape[0] // 2
    if h == 0:
        raise ValueError(f"the mode-seeking term needs at least 2 samples, got {fake.shape[0]}")
    d_image = (fake[:h] - fake[h : 2 * h]).abs().mean()
    d_latent = (z[:h] - z[h : 2 * h]).abs().mean()
    return 1.0 / (d_image / d_latent + eps)


def d_loss_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (the hinge loss of Miyato et al. 2018)."""
    return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()


def g_loss_hinge(fake: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -fake.mean()


def d_loss_wgan(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)]: the critic maximizes the Wasserstein-1 dual (Gulrajani et al. 2017, alg. 1)."""
    return fake.mean() - real.mean()


def g_loss_wgan(fake: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -fake.mean()


def _critic_output(critic, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return critic(x) if labels is None else critic(x, labels)


def _per_example_grad(critic, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """d critic(x_i) / d x_i for every example, flattened: `(B, *shape) -> (B, prod(shape))`, with a graph for backprop."""
    x = x.detach().requires_grad_(True)
    out = _critic_output(critic, x, labels)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1)


def gradient_penalty(
    critic, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E[(||grad D(x_hat)|| - 1)^2] at x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per example (Gulrajani et al. 2017, eq. 3).

    Multiply by the penalty weight (lambda = 10 in the paper) in the model.
    """
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device, generator=generator)  # (B, 1, ...)
    x_hat = eps * real.detach() + (1 - eps) * fake.detach()
    grad = _per_example_grad(critic, x_hat, labels)
    return (grad.norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(critic, real: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """E[||grad D(x)||^2] on real data; the R1 regularizer is gamma/2 times this (Mescheder et al. 2018, eq. 9)."""
    grad = _per_example_grad(critic, real, labels)
    return grad.pow(2).sum(1).mean()


# ---- score matching (Song & Ermon 2019; Vincent 2011) ------------------------------------------


def dsm_loss(score, x0: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Denoising score matching at x~ = x0 + sigma z with lambda(sigma) = sigma^2, per example `(B,)` (Song & Ermon 2019, eq. 5-6).

    lambda(sigma) * 1/2 ||s(x~, sigma) + (x~ - x0) / sigma^2||^2 = 1/2 ||sigma s(x~, sigma) + z||^2, summed over
    the data dimensions. `score(x, sigma) -> (B, *shape)` with sigma `(B,)`; drawing sigma uniformly from the L
    levels, one per example, makes the batch mean an unbiased estimate of eq. 6's average over levels.
    """
    sigma_b = sigma.view(-1, *([1] * (x0.ndim - 1)))  # (B,) -> (B, 1, ...)
    x_noisy = x0 + sigma_b * z
    return 0.5 * (sigma_b * score(x_noisy, sigma) + z).pow(2).flatten(1).sum(1)  # (B, *shape) -> (B,)


# ---- diffusion (Ho et al. 2020; Salimans & Ho 2022) ---------------------------------------------
def diffusion_target(schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, prediction: str) -> torch.Tensor:
    """What the network should output at x_t = q_sample(x0, t, eps): eps, x0, or v = sqrt(ab) eps - sqrt(1 - ab) x0."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return schedule.v_target(x0, t, eps)
    raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")


def min_snr_weight(schedule, t: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights `(B,)` (Hang et al. 2023): each timestep's loss counts as the x0-prediction MSE
    weighted by min(SNR_t, gamma), SNR_t = ab_t / (1 - ab_t). The eps MSE is SNR_t times the x0 MSE and the v MSE
    (SNR_t + 1) times, so the weights on the loss of each parameterization are min(SNR, gamma) / SNR (eps),
    min(SNR, gamma) (x0) and min(SNR, gamma) / (SNR + 1) (v)."""
    ab = schedule.alpha_bar[t]
    snr = ab / (1.0 - ab)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")


def diffusion_simple_loss(
    net, schedule, x0: torch.Tensor, t: torch.Tensor, prediction: str = "eps", labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None, snr_gamma: float | None = None,
) -> torch.Tensor:
    """L_simple = E ||target - net(x_t, t)||^2, averaged over every dimension (DDPM eq. 14 for eps); with `snr_gamma`,
    each example's mean weighted by `min_snr_weight` (Min-SNR-gamma, Hang et al. 2023).

    eps ~ N(0, I) is drawn with `generator`; `t` (B,) are integer timesteps, passed to the net as time t / T.
    """
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = schedule.q_sample(x0, t, eps)
    out = net(xt, schedule.net_time(t), labels)
    err = (out - diffusion_target(schedule, x0, t, eps, prediction)).pow(2)
    if snr_gamma is None:
        return err.mean()
    return (err.flatten(1).mean(1) * min_snr_weight(schedule, t, prediction, snr_gamma)).mean()


def contrastive_divergence(e_pos: torch.Tensor, e_neg: torch.Tensor, alpha: float) -> torch.Tensor:
    """IGEBM's loss: mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2); `(B,), (B,) -> ()`."""
    return e_pos.mean() - e_neg.mean() + alpha * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
