"""Metrics in the feature space of the MNIST domain classifier (models/classifier.py).

Inception-v3 never saw a handwritten digit, so on MNIST we also measure in the space of a
classifier trained on MNIST itself:

- `classifier_fid`: the Fréchet distance (Heusel et al. 2017, "GANs trained by a two
  time-scale update rule converge to a local Nash equilibrium") between Gaussians fitted
  to the classifier's 128-d penultimate features of generated and real images;
- `class_histogram` and `coverage_metrics`: how the predicted classes of the samples spread
  over the 10 digits (mode coverage): classes covered, KL(histogram || uniform), entropy;
- `label_accuracy`: the fraction of a conditional model's samples that the classifier puts
  in the class they were asked for (controllability);
- `within_class_diversity`: per class, how varied a conditional model's samples of that class
  are, relative to real digits of the class (1 = as varied as real, 0 = one image per class).

Every function runs the classifier in eval mode under no_grad, in batches, on the
classifier's device; none of them draws random numbers. Images are float in `value_range`
(default: the range the classifier was trained on) or uint8 in [0, 255].
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Callable

import torch

from gen_lightning.errors import ConfigError
from gen_lightning.models.classifier import Classifier

TRAIN_COMMAND = "gen fit --config configs/classifier_mnist.yaml"
# The classifier that ships with the package (weights only, ~1 MB), reproduced by TRAIN_COMMAND and then
# `python -m gen_lightning.metrics.classifier checkpoints/classifier_mnist/best.ckpt` (export_classifier).
BUILTIN_MNIST_CLASSIFIER = Path(__file__).resolve().parents[1] / "assets" / "classifier_mnist.ckpt"
# A class is covered when it receives at least this share of what a uniform spread would
# give it (10% of n/K), so that a few misclassified blobs do not count as a mode.
COVERED_SHARE_OF_UNIFORM = 0.1
DEFAULT_BATCH_SIZE = 500

ValueRange = tuple[float, float] | None


def export_classifier(src: str | Path, dst: str | Path = BUILTIN_MNIST_CLASSIFIER) -> Path:
    """Keep what `load_classifier` needs of a `gen fit` checkpoint (weights, hyperparameters, data facts), drop the
    optimizer and loop states: the ~1 MB file that ships as BUILTIN_MNIST_CLASSIFIER."""
    checkpoint = torch.load(src, weights_only=True, map_location="cpu")
    keep = ("state_dict", "hyper_parameters", "hparams_name", "hparams_type", "_instantiator", "pytorch-lightning_version",
            "epoch", "global_step")
    slim = {k: checkpoint[k] for k in keep if k in checkpoint}
    slim["state_dict"] = {k: v.contiguous().clone() for k, v in slim["state_dict"].items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, dst)
    return dst


def load_classifier(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> Classifier:
    """The trained Classifier at `path` (relative to the working directory; None: the one shipped with the
    package, BUILTIN_MNIST_CLASSIFIER), in eval mode."""
    path = Path(path) if path is not None else BUILTIN_MNIST_CLASSIFIER
    if not path.is_file():
        raise ConfigError(f"no classifier checkpoint at {path}; train it with `{TRAIN_COMMAND}`")
    try:
        clf = Classifier.load_from_checkpoint(path, map_location=map_location)
    except pickle.UnpicklingError:  # hyperparameters pickled as objects, refused by torch.load(weights_only=True)
        raise ConfigError(
            f"{path} was not written by `gen` (its hyperparameters are Python objects, which are not unpickled "
            f"for safety); train the classifier with `{TRAIN_COMMAND}`"
        ) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{path} is not a Classifier checkpoint ({e}); train one with `{TRAIN_COMMAND}`") from None
    return clf.eval().requires_grad_(False)


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn over `x` in batches on the classifier's device, in eval mode (the previous mode is restored)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    was_training = clf.training
    clf.eval()
    try:
        return torch.cat([fn(x[i : i + batch_size].to(clf.device)).cpu() for i in range(0, len(x), batch_size)])
    finally:
        clf.train(was_training)


def classifier_features(
    clf: Classifier, x: torch.Tensor, value_range: ValueRange = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """(N, C, H, W) images -> (N, feature_dim) penultimate features, on the CPU."""
    return _batched(lambda b: clf.features(b, value_range), clf, x, batch_size)


def predicted_classes(
    clf: Classifier, x: torch.Tensor, value_range: ValueRange = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """(N, C, H, W) images -> (N,) argmax classes, on the CPU."""
    return _batched(lambda b: clf(b, value_range).argmax(dim=1), clf, x, batch_size)


# ---- Fréchet distance -------------------------------------------------------------------
def feature_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"moments need (N >= 2, D) features, got shape {tuple(features.shape)}")
    f = features.double()
    return f.mean(dim=0), torch.cov(f.T)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix; round-off negative eigenvalues are clipped to 0."""
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), the squared W2 distance between two Gaussians.

    Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2}), and the inner matrix is symmetric
    PSD, so both roots come from `eigh` in float64: no complex intermediate (scipy's `sqrtm`
    of the non-symmetric S1 S2 leaves tiny imaginary parts that need discarding), and
    singular covariances (dead ReLU features) are fine. NaN when a moment is not finite (e.g. a sample was).
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    if not all(torch.isfinite(t).all() for t in (mu1, mu2, sigma1, sigma2)):
        return math.nan  # features of non-finite samples: no distance, rather than a LAPACK failure mid-fit
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # symmetric up to round-off; eigvalsh reads one triangle
    trace_sqrt = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(fd), 0.0)  # a few ulps below 0 when the two sets are the same


def classifier_fid(
    clf: Classifier,
    fake: torch.Tensor,
    real: torch.Tensor,
    value_range: ValueRange = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Fréchet distance between the classifier features of `fake` and `real` images (same `value_range`)."""
    mu_f, sigma_f = feature_moments(classifier_features(clf, fake, value_range, batch_size))
    mu_r, sigma_r = feature_moments(classifier_features(clf, real, value_range, batch_size))
    return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)


# ---- mode coverage ------------------------------------------------------------------------
def class_histogram(
    clf: Classifier, x: torch.Tensor, value_range: ValueRange = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """(K,) counts of the classifier's predicted classes over the images `x`."""
    return torch.bincount(predicted_classes(clf, x, value_range, batch_size), minlength=clf.num_classes)


def coverage_metrics(counts: torch.Tensor) -> dict[str, float]:
    """classes_covered, class_kl_uniform = KL(p || uniform) in nats, and class_entropy (nats) of (K,) counts.

    KL(p || U) = log K - H(p): 0 for a perfectly even spread, log K when every sample is one class.
    """
    total = counts.sum().item()
    if total == 0:
        raise ValueError("the class histogram is empty; pass at least one image")
    k = len(counts)
    p = counts.double() / total
    nz = p > 0
    entropy = float(-(p[nz] * p[nz].log()).sum())
    threshold = COVERED_SHARE_OF_UNIFORM * total / k
    return {
        "classes_covered": int((counts >= threshold).sum()),
        "class_kl_uniform": math.log(k) - entropy,
        "class_entropy": entropy,
    }


def label_accuracy(
    clf: Classifier,
    x: torch.Tensor,
    requested_labels: torch.Tensor,
    value_range: ValueRange = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Fraction of conditional samples `x` that the classifier puts in the class they were requested for."""
    if len(x) != len(requested_labels):
        raise ValueError(f"{len(x)} images but {len(requested_labels)} requested labels")
    predicted = predicted_classes(clf, x, value_range, batch_size)
    return float((predicted == requested_labels.cpu()).double().mean())


# ---- diversity within each class -------------------------------------------------------------
def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """sqrt(trace Cov): the root-mean-square distance of (N, D) features to their mean (0 for N < 2)."""
    if len(features) < 2:
        return torch.zeros((), dtype=torch.float64)
    f = features.double()
    return (f - f.mean(dim=0)).square().sum(dim=1).mean().sqrt()


def within_class_diversity(
    fake_features: torch.Tensor, fake_labels: torch.Tensor, real_features: torch.Tensor, real_labels: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """(K,) per class c: spread of the classifier features of the samples asked for as c, divided by the spread of
    the real images of class c. 1 = as varied as real digits of that class, 0 = one image repeated."""
    ratios = []
    for c in range(num_classes):
        real_spread = feature_spread(real_features[real_labels.cpu() == c])
        fake_spread = feature_spread(fake_features[fake_labels.cpu() == c])
        ratios.append(fake_spread / real_spread if real_spread > 0 else torch.tensor(float("nan"), dtype=torch.float64))
    return torch.stack(ratios)


if __name__ == "__main__":  # python -m gen_lightning.metrics.classifier SRC.ckpt [DST]
    import sys

    print(export_classifier(*sys.argv[1:3]))
