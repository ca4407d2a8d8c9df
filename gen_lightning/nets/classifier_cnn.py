"""A small CNN for the domain classifier behind the MNIST metrics (models/classifier.py).

Its 128-d penultimate layer is the feature space of the classifier FID, and its logits give
the class histogram and the label accuracy of conditional models. The input is float
`(B, C, H, W)` in [0, 1]; the Classifier module maps other ranges there first.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """conv 3x3 -> BatchNorm -> ReLU -> 2x2 max-pool: halves H and W (rounding down)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),  # BatchNorm supplies the bias
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ClassifierCNN(nn.Module):
    """conv blocks -> flatten -> `feature_dim` features (ReLU) -> dropout -> linear head over `num_classes`."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        channels: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 128,
        dropout: float = 0.3,
    ):
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {channels}")
        if image_size >> len(channels) < 1:
            raise ValueError(f"{len(channels)} blocks halve image_size={image_size} to nothing; use fewer channels")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(*(conv_block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        side = image_size >> len(channels)  # each block halves H and W, rounding down
        self.to_features = nn.Sequential(
            nn.Flatten(),  # (B, C, side, side) -> (B, C*side*side)
            nn.Dropout(dropout),
            nn.Linear(channels[-1] * side * side, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.num_classes = num_classes
        self.num_features = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, feature_dim): the space the classifier FID is measured in."""
        return self.to_features(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, num_classes) logits."""
        return self.head(self.dropout(self.features(x)))
