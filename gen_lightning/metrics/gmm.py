"""Mode metrics for 2-D Gaussian mixtures, as ../shared/DESIGN.md defines them.

- A sample is *high quality* when it lies within 3 std of its nearest mode.
- A mode is *covered* when at least 20 high-quality samples fall in it.
- `reverse_kl_modes` is KL(histogram of the high-quality samples' modes || true weights)
  (the PacGAN / VEEGAN convention); it is infinite when no sample is high quality.
- `kl_data_model` = E_data[log p_data(x) - log p_model(x)], for models with a density.
"""

from __future__ import annotations

import math

import torch

from gen_lightning.data.gmm import GaussianMixture

HIGH_QUALITY_STDS = 3.0
MIN_SAMPLES_PER_MODE = 20


def mode_histogram(samples: torch.Tensor, gmm: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of high-quality samples per mode (K,), and the high-quality mask (n,)."""
    mode, dist_in_stds = gmm.nearest_mode(samples.detach().cpu())
    high_quality = dist_in_stds <= HIGH_QUALITY_STDS
    counts = torch.bincount(mode[high_quality], minlength=gmm.num_components)
    return counts, high_quality


def reverse_kl_modes(counts: torch.Tensor, weights: torch.Tensor) -> float:
    """KL(p_gen || w) over modes, with p_gen the normalized counts and 0 log 0 = 0."""
    total = counts.sum().item()
    if total == 0:
        return math.inf
    p = counts.double() / total
    nz = p > 0
    return float((p[nz] * (p[nz] / weights[nz]).log()).sum())


def gmm_mode_metrics(samples: torch.Tensor, gmm: GaussianMixture) -> dict[str, float]:
    """modes_covered, high_quality_fraction and reverse_kl_modes of (n, 2) samples."""
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise ValueError(f"GMM metrics need samples of shape (n, 2), got {tuple(samples.shape)}")
    counts, high_quality = mode_histogram(samples, gmm)
    return {
        "modes_covered": int((counts >= MIN_SAMPLES_PER_MODE).sum()),
        "num_modes": gmm.num_components,
        "high_quality_fraction": float(high_quality.float().mean()),
        "reverse_kl_modes": reverse_kl_modes(counts, gmm.weights),
    }


def kl_data_model(x_data: torch.Tensor, model_log_prob: torch.Tensor, gmm: GaussianMixture) -> float:
    """Monte-Carlo KL(data || model) from the model's log density at data points."""
    return float((gmm.log_prob(x_data) - model_log_prob.double().cpu()).mean())
