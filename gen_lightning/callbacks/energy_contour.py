"""For 2-D data: the learned energy E(x) (or the density exp(-E(x)) / Z) drawn as filled contours.

Every `every_n_epochs` epochs (and at the last) E is evaluated on a `grid_size` x `grid_size` grid
over the box the model samples in (`pl_module.data_range`, e.g. the EBM's init_range), drawn with
up to `num_points` validation points on top, saved as `energy/epoch_NNNN.png` in the run
directory and logged to TensorBoard as the figure `energy`. The model needs an `energy`
network `(B, 2) -> (B,)`.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import matplotlib.pyplot as plt
import torch

from gen_lightning.callbacks.outputs import run_dir
from gen_lightning.callbacks.render import save_figure
from gen_lightning.callbacks.sample_grid import _due
from gen_lightning.errors import ConfigError

Show = Literal["energy", "density"]


@torch.no_grad()
def energy_on_grid(energy: torch.nn.Module, lo: float, hi: float, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid's axis `(size,)` and E on it `(size, size)`, E[i, j] = E(axis[j], axis[i]) (rows are y)."""
    axis = torch.linspace(lo, hi, size, device=device)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1)  # (size^2, 2)
    e = torch.cat([energy(part) for part in points.split(16384)])
    return axis.cpu(), e.reshape(size, size).float().cpu()


def contour_figure(axis: torch.Tensor, e: torch.Tensor, points: torch.Tensor | None, show: Show, title: str) -> plt.Figure:
    """Filled contours of E, or of exp(-E) normalized on the grid, with the data points over them."""
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    if show == "density":
        step = float(axis[1] - axis[0])
        values = torch.exp(-e - torch.logsumexp(-e.flatten(), 0) - 2 * math.log(step))  # sums to 1 over the grid
        image = ax.contourf(axis, axis, values, levels=30, cmap="viridis")
    else:
        image = ax.contourf(axis, axis, e, levels=30, cmap="viridis_r")  # low energy bright, as high density
    fig.colorbar(image, ax=ax, label="exp(-E) / Z" if show == "density" else "E(x)")
    if points is not None:
        p = points.detach().float().cpu()
        ax.scatter(p[:, 0], p[:, 1], s=1, c="tab:red", alpha=0.5, label="data")
        ax.legend(loc="upper right", markerscale=6)
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.tight_layout()
    return fig


class EnergyContour(L.Callback):
    """Contour plot of a 2-D energy model every `every_n_epochs` epochs, as PNG and TensorBoard figure."""

    def __init__(self, every_n_epochs: int = 5, grid_size: int = 200, num_points: int = 1000, show: Show = "energy"):
        if every_n_epochs < 1 or grid_size < 2 or num_points < 0:
            raise ConfigError(f"EnergyContour needs every_n_epochs >= 1, grid_size >= 2 and num_points >= 0, "
                              f"got {every_n_epochs}, {grid_size} and {num_points}")  # fmt: skip
        if show not in ("energy", "density"):
            raise ConfigError(f"EnergyContour show must be 'energy' or 'density', got {show!r}")
        self.every_n_epochs, self.grid_size, self.num_points, self.show = every_n_epochs, grid_size, num_points, show
        self.last_path = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "energy", None), torch.nn.Module):
            raise ConfigError(f"EnergyContour draws an energy network, and {type(pl_module).__name__} has none "
                              "(no `energy` module); remove the callback")  # fmt: skip
        if not hasattr(type(pl_module), "data_range"):
            raise ConfigError(f"EnergyContour needs the box the model samples in (`data_range`), and "
                              f"{type(pl_module).__name__} has none; remove the callback")  # fmt: skip
        dm = trainer.datamodule
        if dm is not None and tuple(dm.data_shape) != (2,):
            raise ConfigError(f"EnergyContour draws 2-D data, but {dm.dataset_name} has shape {tuple(dm.data_shape)}; "
                              "remove the callback for other data")  # fmt: skip

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> plt.Figure:
        lo, hi = pl_module.data_range
        axis, e = energy_on_grid(pl_module.energy, lo, hi, self.grid_size, pl_module.device)
        dm = trainer.datamodule
        points = dm.split("val").x[: self.num_points] if dm is not None and self.num_points else None
        what = "density exp(-E)/Z" if self.show == "density" else "energy E(x)"
        return contour_figure(axis, e, points, self.show, f"{what}, epoch {trainer.current_epoch}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs) or not trainer.is_global_zero:
            return
        fig = self.draw(trainer, pl_module)
        path = run_dir(trainer) / "energy" / f"epoch_{trainer.current_epoch:04d}.png"
        save_figure(fig, path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure("energy", fig, global_step=trainer.global_step)
        plt.close(fig)
        self.last_path = path
