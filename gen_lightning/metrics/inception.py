"""Inception metrics through torchmetrics, on torch-fidelity's TF-matching Inception-v3.

- FID: Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
  Nash equilibrium" (torchmetrics `FrechetInceptionDistance`);
- KID: Binkowski et al. 2018, "Demystifying MMD GANs" (`KernelInceptionDistance`);
- IS:  Salimans et al. 2016, "Improved techniques for training GANs" (`InceptionScore`);
- improved precision/recall (metrics/precision_recall.py; torchmetrics 1.9 has none).

How the pieces fit. Running Inception dominates the cost, so each image set goes through
the feature extractor once (`extract`), and the features are then handed to the
torchmetrics metrics through `PrecomputedFeatures`, an identity `feature` module: one pass
serves FID, KID and precision/recall, and the logits of the same pass serve IS. The
features of the real images are cached on disk once per (data, split, number of images,
feature extractor weights) (`reference_features`), so a second evaluation only runs the
generated images.

Weights. Offline, torch-fidelity cannot download `weights-inception-2015-12-05-6726825d.pth`.
`find_inception_weights` takes it from a local path given in the config, else from torch's
hub cache, where torch-fidelity itself would have downloaded it. Any `nn.Module` that maps
uint8 `(N, 3, H, W)` images to `(N, D)` features, or to a `(features, logits)` pair, can
stand in for Inception (tests use a small one).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torchmetrics.image import FrechetInceptionDistance, InceptionScore, KernelInceptionDistance

from gen_lightning.errors import ConfigError

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


# ---- weights ------------------------------------------------------------------------------
def hub_weights_path() -> Path:
    """Where torch-fidelity's download lands: `<torch.hub.get_dir()>/checkpoints/<file>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def find_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The configured `weights_path` if given, else the copy in torch's hub cache; one sentence when absent.

    A configured path that does not exist is an error, not a cue to look elsewhere, so a
    typo never silently evaluates with other weights.
    """
    candidate = hub_weights_path() if weights_path is None else Path(weights_path).expanduser()
    if candidate.is_file():
        return candidate
    file = f"{INCEPTION_WEIGHTS_FILE} (from {URL_INCEPTION_V3})"
    if weights_path is None:
        raise ConfigError(
            f"Inception weights not found: put {file} in torch's hub cache at {hub_weights_path()}, "
            "or anywhere and give that path as `inception_weights` in the config"
        )
    raise ConfigError(
        f"Inception weights not found at {candidate} (`inception_weights`): put {file} there, "
        f"or in torch's hub cache at {hub_weights_path()} and leave `inception_weights` unset"
    )


class InceptionV3(nn.Module):
    """torch-fidelity's TF-matching Inception-v3: uint8 (N, 3, H, W) -> (pool features (N, 2048), logits (N, 1008)).

    The images are resized to 299x299 with TensorFlow 1.x's bilinear resampling, as in the
    original FID code, so the numbers compare with published ones. It never leaves eval mode.
    """

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.weights_path = find_inception_weights(weights_path)
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(self.weights_path)
            )
        except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as e:
            raise ConfigError(
                f"{self.weights_path} is not torch-fidelity's Inception state dict ({type(e).__name__}); "
                f"replace it with {URL_INCEPTION_V3}"
            ) from None

    def train(self, mode: bool = True) -> InceptionV3:
        return super().train(False)  # BatchNorm statistics are part of the reference network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = self.net(x)
        return features, logits


# ---- feature extraction ----------------------------------------------------------------------
def to_rgb_uint8(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Float images in `value_range` -> uint8 (N, 3, H, W), as saved images would be; grey is repeated to RGB."""
    lo, hi = value_range
    x = ((x.float() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (N, 1, H, W) -> (N, 3, H, W)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract(
    extractor: nn.Module, images: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 (N, 3, H, W) -> features (N, D) and logits (N, K) or None, float32 on the CPU, in batches."""
    if images.dtype != torch.uint8:
        raise TypeError(f"the feature extractor takes uint8 images; got {images.dtype} (use to_rgb_uint8)")
    device = _device_of(extractor)
    extractor.eval()
    features, logits = [], []
    for i in range(0, len(images), batch_size):
        out = extractor(images[i : i + batch_size].to(device))
        f, lg = out if isinstance(out, tuple) else (out, None)
        features.append(f.float().cpu())
        if lg is not None:
            logits.append(lg.float().cpu())
    return torch.cat(features), (torch.cat(logits) if logits else None)


def fingerprint(module: nn.Module) -> str:
    """Class and a hash of every parameter and buffer: two extractors share cached features only if identical."""
    h = hashlib.sha1(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---- reference features, cached on disk ------------------------------------------------------
def default_cache_dir() -> Path:
    return Path("~/.cache/gen_lightning/fid_stats").expanduser()


def reference_key(data_info: dict, split: str, num_images: int, feature_id: str) -> str:
    """A file name that changes whenever the data, its conversion, the split, its size or the extractor do."""
    blob = json.dumps({"data": data_info, "split": split, "n": num_images, "feature": feature_id}, sort_keys=True)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:16]
    return f"{data_info.get('dataset', 'data')}-{split}-{num_images}-{digest}"


def reference_features(
    extractor: nn.Module, images: torch.Tensor, key: str, cache_dir: str | Path | None, batch_size: int
) -> torch.Tensor:
    """Features (N, D) of the real `images`, from `<cache_dir>/<key>.pt` when there, else computed and stored."""
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)["features"]
    features, _ = extract(extractor, images, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"features": features, "key": key}, tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    return features


# ---- the metrics, on features -------------------------------------------------------------
class PrecomputedFeatures(nn.Identity):
    """The `feature` module handed to torchmetrics: what it is fed are features already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # torchmetrics reads it instead of probing with a dummy image


def frechet_inception_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """torchmetrics FID of (N, D) feature sets, in float64."""
    fid = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1])).to(real.device)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def kernel_inception_distance(
    real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """torchmetrics KID (mean, std over `subsets` random subsets), with the subsets drawn from `seed`."""
    if subset_size > min(len(real), len(fake)):
        raise ConfigError(
            f"kid_subset_size={subset_size} exceeds the {len(fake)} generated / {len(real)} real images; "
            "lower kid_subset_size or raise num_samples"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subsets=subsets, subset_size=subset_size)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int, seed: int) -> tuple[float, float]:
    """torchmetrics IS (mean, std over `splits`) of (N, K) logits; the shuffle before splitting is seeded."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        score = InceptionScore(feature=PrecomputedFeatures(logits.shape[1]), splits=splits)
    score.update(logits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = score.compute()
    return float(mean), float(std)
