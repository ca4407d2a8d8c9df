"""Turning samples into pictures: image grids (torchvision) and 2-D scatter plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402


def to_unit(x: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """Float samples in `value_range` -> float in [0, 1] for display."""
    lo, hi = value_range if value_range is not None else (0.0, 1.0)
    return ((x.float() - lo) / (hi - lo)).clamp(0, 1)


def to_uint8(x: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """Float samples in `value_range` -> uint8 in [0, 255], as the data was stored."""
    return to_unit(x, value_range).mul(255).round().to(torch.uint8)


def image_grid(x: torch.Tensor, value_range: tuple[float, float] | None, nrow: int) -> torch.Tensor:
    """(N, C, H, W) samples -> one (3, H', W') grid in [0, 1]."""
    return make_grid(to_unit(x.detach().cpu(), value_range), nrow=nrow, padding=2, pad_value=1.0)


def save_grid(grid: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)


def scatter_figure(samples: torch.Tensor, real: torch.Tensor | None = None, title: str = "") -> plt.Figure:
    """2-D samples (orange) over real data (grey), on equal axes."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if real is not None:
        r = real.detach().cpu()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.6", alpha=0.5, label="data")
    s = samples.detach().float().cpu()
    ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:orange", alpha=0.7, label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
