"""Decoder output distributions p(x | params): the observation model of a VAE.

A decoder outputs `params` of shape `(B, P*C, *rest)` for data of shape `(C, *rest)`, with
`P = params_per_channel`: the P parameter maps of each channel are stacked channel-major, so
`params.unflatten(1, (P, C))` separates them. Every likelihood gives

  - `log_prob(params, x) -> (B,)`: log p(x | params) summed over all dimensions, in nats;
  - `mean(params)`: the value shown as a sample, in the data's range;
  - `sample(params, generator)`: a draw from p(x | params);
  - `prepare(x)`: what the likelihood is evaluated on (uniform dequantization for a density on
    8-bit images, the data itself otherwise);
  - `discrete`: True when it assigns probabilities to discrete values, so bits/dim is
    `nll / (D ln 2)`; False for densities, where bits/dim applies only to dequantized 8-bit
    images: `(nll + D ln 256) / (D ln 2)` for data in [0, 1] (../shared/DESIGN.md);
  - `check(dm)`: raises ConfigError when the DataModule's data does not fit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gen_lightning.errors import ConfigError


# ---- the one dequantization and bits/dim convention (flows, Gaussian likelihoods, ODE likelihoods) ----


def uniform_dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """8-bit values x = k/255 in [0, 1] -> y = (k + u) / 256 with u ~ U[0, 1): continuous, in [0, 1)."""
    k = torch.round(x * 255.0)
    u = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return (k + u) / 256.0


def dequantize_in_range(x: torch.Tensor, value_range: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """8-bit values rescaled to `value_range` (e.g. [-1, 1]) -> their uniform dequantization in the same range:
    lo + (hi - lo) (k + u) / 256 (`uniform_dequantize` of (x - lo) / (hi - lo))."""
    lo, hi = value_range
    return lo + (hi - lo) * uniform_dequantize((x - lo) / (hi - lo), generator)


def bits_per_dim(nll: torch.Tensor, num_dims: int) -> torch.Tensor:
    """NLL in nats of dequantized data y in [0, 1)^D -> bits/dim of the 8-bit data: (nll + D ln 256) / (D ln 2)."""
    return (nll + num_dims * math.log(256)) / (num_dims * math.log(2))


def dequantized_bits_per_dim(nll: torch.Tensor, num_dims: int, value_range: tuple[float, float]) -> torch.Tensor:
    """NLL in nats of dequantized data rescaled to `value_range` (e.g. [-1, 1]) -> bits/dim of the 8-bit data.

    y = (x - lo) / (hi - lo) maps it back to [0, 1), where log p(y) = log p(x) + D log(hi - lo).
    """
    lo, hi = value_range
    return bits_per_dim(nll - num_dims * math.log(hi - lo), num_dims)


def quantize(y: torch.Tensor) -> torch.Tensor:
    """The inverse of the dequantization: y in [0, 1) -> the 8-bit value k/255 with k = floor(256 y)."""
    return torch.floor(y * 256.0).clamp(0, 255) / 255.0


def logit_transform(y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w = logit(p), p = alpha + (1 - 2 alpha) y (RealNVP, sec. 4.1), and log|dw/dy| summed per example `(B,)`:
    dw/dy = (1 - 2 alpha) / (p (1 - p))."""
    p = alpha + (1.0 - 2.0 * alpha) * y
    w = torch.log(p) - torch.log1p(-p)
    log_jacobian = math.log(1.0 - 2.0 * alpha) - torch.log(p) - torch.log1p(-p)
    return w, log_jacobian.flatten(1).sum(1)


def inverse_logit_transform(w: torch.Tensor, alpha: float) -> torch.Tensor:
    """w -> y = (sigmoid(w) - alpha) / (1 - 2 alpha)."""
    return (torch.sigmoid(w) - alpha) / (1.0 - 2.0 * alpha)


def _is_8bit_image_in_unit_range(dm) -> bool:
    value_range = tuple(dm.value_range) if dm.value_range is not None else None
    return len(dm.data_shape) == 3 and value_range == (0.0, 1.0) and dm.binarize == "none"


LOG_2PI = math.log(2 * math.pi)


class Likelihood(nn.Module):
    """Base class: subclasses set `params_per_channel` and `discrete` and define the distribution."""

    params_per_channel: int = 1
    discrete: bool = False
    dequantize: bool = False

    def param_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The decoder's output shape (without batch) for data of shape `(C, *rest)`."""
        return (self.params_per_channel * data_shape[0], *data_shape[1:])

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`(B, P*C, *rest)` -> P tensors of shape `(B, C, *rest)`."""
        return params.unflatten(1, (self.params_per_channel, -1)).unbind(1)

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def check(self, dm) -> None:
        """Accept any data; subclasses refuse what they cannot model."""

    def describe(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define describe()")

    def bpd_omitted_reason(self, data_shape: tuple[int, ...]) -> str | None:
        """Why bits/dim does not apply to data of this shape under this likelihood, or None when it does."""
        if len(data_shape) != 3:
            return f"{math.prod(data_shape)}-D continuous data: bits/dim applies to 8-bit images"
        if not (self.discrete or self.dequantize):
            return (f"{type(self).__name__} is a density on images that are not dequantized, so its NLL is "
                    "not a bound on the 8-bit data's; set the likelihood's dequantize: true")
        return None

    def bits_per_dim(self, nll: torch.Tensor, num_dims: int) -> torch.Tensor:
        """NLL in nats -> bits/dim: nll / (D ln 2) for a discrete likelihood, `bits_per_dim` (dequantized [0, 1] data)
        for a density."""
        return nll / (num_dims * math.log(2)) if self.discrete else bits_per_dim(nll, num_dims)

    def bpd_convention(self, num_dims: int) -> str:
        return (f"nll / (D ln 2), D = {num_dims}" if self.discrete
                else f"(nll + D ln 256) / (D ln 2), D = {num_dims}: uniform dequantization of 8-bit data in [0, 1]")

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define log_prob()")

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define mean()")

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define sample()")


class Bernoulli(Likelihood):
    """Independent Bernoulli per pixel with logits; for binarized images (values in {0, 1})."""

    params_per_channel = 1
    discrete = True

    def check(self, dm) -> None:
        if dm.binarize == "none":
            raise ConfigError(
                f"the Bernoulli likelihood needs binary data but {dm.dataset_name} has binarize='none'; "
                "set the data's binarize to 'dynamic' (or 'threshold'), or use DiscretizedLogistic for 8-bit images"
            )

    def describe(self) -> str:
        return "Bernoulli(logits) per pixel: an exact probability of each binary image; bits/dim = nll / (D ln 2)"

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_px = -F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return log_px.flatten(1).sum(1)  # (B, C, H, W) -> (B,)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class Gaussian(Likelihood):
    """Diagonal Gaussian N(x; mu, sigma^2) for continuous data.

    `std=None`: the decoder outputs a mean and a log-std per dimension (P = 2); the log-std
    has a smooth floor at log(min_std), because the density of a continuous x is unbounded as
    sigma -> 0. `std=<float>`: the decoder outputs the mean only (P = 1) and one global std,
    fixed, or learned from that start when `learn_std`.

    `dequantize=True` is for 8-bit images in [0, 1]: x = k/255 becomes (k + u)/256 with
    u ~ U[0, 1) at every evaluation (training, validation and test), so the density is a
    density of dequantized data and `(nll + D ln 256) / (D ln 2)` bounds the discrete
    model's bits/dim (Theis et al. 2016). Without it (GMM points) bits/dim does not apply.
    """

    discrete = False

    def __init__(self, std: float | None = None, learn_std: bool = False, min_std: float = 1e-3, dequantize: bool = False):
        super().__init__()
        if std is not None and std <= 0:
            raise ConfigError(f"Gaussian std must be > 0, got {std}; or set std: null to let the decoder output it")
        if min_std <= 0:
            raise ConfigError(f"Gaussian min_std must be > 0, got {min_std}")
        if learn_std and std is None:
            raise ConfigError("learn_std=true needs a global starting std; set std (e.g. 0.1) or learn_std: false")
        self.params_per_channel = 2 if std is None else 1
        self.min_log_std = math.log(min_std)
        self.dequantize = dequantize
        self.global_log_std = None if std is None else nn.Parameter(torch.tensor(math.log(std)), requires_grad=learn_std)

    def check(self, dm) -> None:
        if self.dequantize and not _is_8bit_image_in_unit_range(dm):
            raise ConfigError(
                f"Gaussian(dequantize=True) needs 8-bit images in [0, 1] (binarize='none', value_range '0,1') but "
                f"{dm.dataset_name} has shape {tuple(dm.data_shape)}, binarize={dm.binarize!r}, value_range={dm.value_range}; "
                "set dequantize: false"
            )

    def describe(self) -> str:
        std = "per-dimension std from the decoder" if self.global_log_std is None else "one global std"
        deq = "; 8-bit data uniformly dequantized: x = (k + u)/256" if self.dequantize else ""
        return f"Gaussian density with {std} (floor {math.exp(self.min_log_std):g}){deq}"

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.dequantize:
            return x
        return uniform_dequantize(x, generator)  # k/255 -> (k + u)/256

    def mean_and_log_std(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.global_log_std is not None:
            return params, self.global_log_std.expand_as(params)
        mu, raw_log_std = self.split(params)
        return mu, self.min_log_std + F.softplus(raw_log_std - self.min_log_std)  # smooth floor at log(min_std)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, log_std = self.mean_and_log_std(params)
        log_px = -0.5 * ((x - mu) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        return log_px.flatten(1).sum(1)  # (B, *data_shape) -> (B,)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.mean_and_log_std(params)[0]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, log_std = self.mean_and_log_std(params)
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + log_std.exp() * eps


class DiscretizedLogistic(Likelihood):
    """One logistic per subpixel, integrated over 256 bins (Salimans et al. 2017, PixelCNN++ eq. 2).

    For x = k/255 in [0, 1], with bin half-width h = 1/510 and s = exp(log_scale):
      P(k) = sigmoid((x - mu + h)/s) - sigmoid((x - mu - h)/s)   for 0 < k < 255,
      P(0) = sigmoid((h - mu)/s),  P(255) = 1 - sigmoid((1 - h - mu)/s),
    so the 256 probabilities of a subpixel sum to 1. With a = (x - mu + h)/s > b = (x - mu - h)/s,
      log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)),
    each term stable in float32, so no fallback to the density at the bin centre is needed.
    The decoder outputs mu and log_scale per subpixel (P = 2); log_scale is clamped at -7 as in
    PixelCNN++.
    """

    params_per_channel = 2
    discrete = True
    num_bins = 256
    min_log_scale = -7.0

    def check(self, dm) -> None:
        if not _is_8bit_image_in_unit_range(dm):
            raise ConfigError(
                f"DiscretizedLogistic needs 8-bit images in [0, 1] (binarize='none', value_range '0,1') but "
                f"{dm.dataset_name} has shape {tuple(dm.data_shape)}, binarize={dm.binarize!r}, value_range={dm.value_range}; "
                "set the data's binarize: none and value_range: '0,1', or use Bernoulli for binarized images"
            )

    def describe(self) -> str:
        return "discretized logistic per subpixel on 256 bins (Salimans et al. 2017): bits/dim = nll / (D ln 2)"

    def mu_and_log_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_scale = self.split(params)
        return mu, log_scale.clamp(min=self.min_log_scale)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, log_scale = self.mu_and_log_scale(params)
        half_bin = 0.5 / (self.num_bins - 1)
        inv_s = torch.exp(-log_scale)
        a = (x - mu + half_bin) * inv_s  # upper edge of the bin
        b = (x - mu - half_bin) * inv_s  # lower edge of the bin
        log_cdf_a = -F.softplus(-a)  # log sigmoid(a): the whole mass below the upper edge, for k = 0
        log_sf_b = -F.softplus(b)  # log(1 - sigmoid(b)): the mass above the lower edge, for k = 255
        log_mass = log_cdf_a + log_sf_b + torch.log(-torch.expm1(b - a))
        k = torch.round(x * (self.num_bins - 1))
        log_px = torch.where(k <= 0, log_cdf_a, torch.where(k >= self.num_bins - 1, log_sf_b, log_mass))
        return log_px.flatten(1).sum(1)  # (B, C, H, W) -> (B,)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        mu, _ = self.mu_and_log_scale(params)
        return mu.clamp(0.0, 1.0)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, log_scale = self.mu_and_log_scale(params)
        u = torch.rand(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator).clamp(1e-5, 1 - 1e-5)
        x = mu + log_scale.exp() * (torch.log(u) - torch.log1p(-u))  # inverse logistic CDF
        return (torch.round(x.clamp(0.0, 1.0) * (self.num_bins - 1)) / (self.num_bins - 1))


# ---- the conditionals of autoregressive models (models/autoregressive.py) ------------------------------


class Categorical256(Likelihood):
    """A 256-way softmax per subpixel (PixelRNN/PixelCNN, van den Oord et al. 2016): x = k/255, k in 0..255.

    `params` `(B, 256*C, *rest)`: logit of value k for channel c at index k*C + c.
    """

    params_per_channel = 256
    discrete = True

    def check(self, dm) -> None:
        if not _is_8bit_image_in_unit_range(dm):
            raise ConfigError(
                f"Categorical256 needs 8-bit images in [0, 1] (binarize='none', value_range '0,1') but {dm.dataset_name} has "
                f"shape {tuple(dm.data_shape)}, binarize={dm.binarize!r}, value_range={dm.value_range}; "
                "set the data's binarize: none and value_range: '0,1', or use Bernoulli for binarized images"
            )

    def describe(self) -> str:
        return "256-way categorical per subpixel: an exact probability of each 8-bit image; bits/dim = nll / (D ln 2)"

    def logits(self, params: torch.Tensor) -> torch.Tensor:
        return params.unflatten(1, (256, -1))  # (B, 256*C, *rest) -> (B, 256, C, *rest)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        k = torch.round(x * 255).long().clamp(0, 255)
        log_px = -F.cross_entropy(self.logits(params), k, reduction="none")  # (B, C, *rest)
        return log_px.flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        values = torch.arange(256, device=params.device, dtype=params.dtype) / 255
        probs = self.logits(params).softmax(1)
        return torch.einsum("bk...,k->b...", probs, values)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits = self.logits(params).movedim(1, -1)  # (B, C, *rest, 256)
        k = torch.multinomial(logits.reshape(-1, 256).softmax(-1), 1, generator=generator)  # (N, 1)
        return k.view(logits.shape[:-1]).float() / 255


class MixtureOfGaussians(Likelihood):
    """p(x_d | params) = sum_k pi_k N(x_d; mu_k, sigma_k^2), K components per dimension, for continuous data.

    `params` `(B, 3K*D)`: K mixture logits, K means and K raw log-stds per dimension (parameter-major).
    The log-std has a smooth floor at log(min_std), as the density is unbounded when sigma -> 0.
    Component k's mean is the net's output plus a fixed offset spread * ((2k + 1)/K - 1), evenly
    spaced in [-spread, spread]: a freshly initialized net puts every component near 0, and a
    1-D mixture whose components start together separates them slowly (on ring8, p(x1) stayed
    at 3 merged components after 600 steps, KL 2.1 nats; with the offsets, see tests/e2e).
    """

    discrete = False

    def __init__(self, num_components: int = 10, min_std: float = 1e-3, spread: float = 2.0):
        super().__init__()
        if num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {num_components}")
        if min_std <= 0:
            raise ConfigError(f"min_std must be > 0, got {min_std}")
        if spread < 0:
            raise ConfigError(f"spread must be >= 0, got {spread}; it spaces the components' initial means in [-spread, spread]")
        self.num_components = num_components
        self.params_per_channel = 3 * num_components
        self.min_log_std = math.log(min_std)
        k = torch.arange(num_components, dtype=torch.float32)
        self.register_buffer("mean_offsets", spread * ((2 * k + 1) / num_components - 1)[:, None])  # (K, 1)

    def check(self, dm) -> None:
        if len(dm.data_shape) == 3:
            raise ConfigError(
                f"MixtureOfGaussians is a density for continuous vectors but {dm.dataset_name} holds images of shape "
                f"{tuple(dm.data_shape)}; use Bernoulli for binarized images or Categorical256 for 8-bit images"
            )

    def describe(self) -> str:
        return f"mixture of {self.num_components} Gaussians per conditional (std floor {math.exp(self.min_log_std):g}, means offset evenly in [-spread, spread])"

    def components(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log pi, mu, log sigma, each `(B, K, D)`."""
        logits, mu, raw = params.unflatten(1, (3, self.num_components, -1)).unbind(1)  # (B, 3K*D) -> 3 x (B, K, D)
        log_std = self.min_log_std + F.softplus(raw - self.min_log_std)
        return logits.log_softmax(1), mu + self.mean_offsets, log_std

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_pi, mu, log_std = self.components(params)
        x = x.flatten(1)[:, None]  # (B, D) -> (B, 1, D)
        log_normal = -0.5 * ((x - mu) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * LOG_2PI
        return torch.logsumexp(log_pi + log_normal, dim=1).sum(1)  # (B, K, D) -> (B, D) -> (B,)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        log_pi, mu, _ = self.components(params)
        return (log_pi.exp() * mu).sum(1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        log_pi, mu, log_std = self.components(params)
        b, k, d = mu.shape
        pi = log_pi.exp().transpose(1, 2).reshape(b * d, k)  # (B, K, D) -> (B*D, K)
        which = torch.multinomial(pi, 1, generator=generator).view(b, 1, d)  # component per dimension
        eps = torch.randn(b, d, device=mu.device, dtype=mu.dtype, generator=generator)
        pick = lambda t: t.gather(1, which)[:, 0]  # (B, K, D) -> (B, D)
        return pick(mu) + pick(log_std).exp() * eps


# ---- the family's LightningModule -----------------------------------------------------------
