"""Class conditioning for GAN networks: a label embedding for the generator, a projection head for the discriminator.

The generator concatenates a learned embedding of the label to z. The discriminator scores
features phi(x) with psi(phi(x)) + <V y, phi(x)>, the projection discriminator of Miyato &
Koyama (2018). With `num_classes=None` both modules are unconditional and refuse labels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from gen_lightning.errors import ConfigError


def check_labels(num_classes: int | None, labels: torch.Tensor | None, who: str) -> None:
    """A conditional net needs labels and an unconditional one refuses them."""
    if num_classes is None and labels is not None:
        raise ValueError(f"{who} was built without num_classes, so it takes no labels")
    if num_classes is not None and labels is None:
        raise ValueError(f"{who} was built with num_classes={num_classes}, so it needs labels")


def check_num_classes(num_classes: int | None) -> None:
    if num_classes is not None and num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (or null for an unconditional net), got {num_classes}")


class LabelConcat(nn.Module):
    """`z (B, L), labels (B,) -> (B, L + embed_dim)`; the identity on z when unconditional."""

    def __init__(self, num_classes: int | None, embed_dim: int):
        super().__init__()
        check_num_classes(num_classes)
        if embed_dim < 1:
            raise ConfigError(f"embed_dim must be >= 1, got {embed_dim}")
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes is not None else None
        self.extra_dim = embed_dim if num_classes is not None else 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        check_labels(self.num_classes, labels, "the generator")
        return z if self.embed is None else torch.cat([z, self.embed(labels)], dim=1)


class ProjectionHead(nn.Module):
    """`phi (B, F), labels (B,) -> logit (B,)`: psi(phi) + <V y, phi> (Miyato & Koyama 2018)."""

    def __init__(self, features: int, num_classes: int | None, spectral_norm: bool = False):
        super().__init__()
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.psi = nn.Linear(features, 1)
        nn.init.normal_(self.psi.weight, 0.0, 0.02)
        self.embed = nn.Embedding(num_classes, features) if num_classes is not None else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if spectral_norm:
            self.psi = sn(self.psi)
            self.embed = sn(self.embed) if self.embed is not None else None

    def forward(self, phi: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        check_labels(self.num_classes, labels, "the discriminator")
        logit = self.psi(phi).squeeze(1)  # (B, 1) -> (B,)
        if self.embed is None:
            return logit
        return logit + (self.embed(labels) * phi).sum(1)
