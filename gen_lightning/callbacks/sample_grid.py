"""Sample grids during fit: a PNG in the run directory and an image in TensorBoard.

The samples are drawn with a generator seeded the same way at every epoch, so grids from
different epochs show the same noise and can be compared. Conditional models get one row
per class. For 2-D data the grid is a scatter plot of samples over the validation data.
"""

from __future__ import annotations

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import WeightAveraging

from gen_lightning.callbacks.outputs import run_dir
from gen_lightning.callbacks.render import image_grid, save_figure, save_grid, scatter_figure
from gen_lightning.errors import ConfigError


def _due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
    return not trainer.sanity_checking and (epoch % every_n_epochs == 0 or last)


def _log_image(trainer: L.Trainer, tag: str, grid: torch.Tensor) -> None:
    experiment = getattr(trainer.logger, "experiment", None)
    if hasattr(experiment, "add_image"):
        experiment.add_image(tag, grid, global_step=trainer.global_step)


class SampleGrid(L.Callback):
    """Every `every_n_epochs` epochs (and at the last), draw `num_samples` with a fixed seed and save them."""

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 64, nrow: int | None = None, seed: int = 0):
        if every_n_epochs < 1:
            raise ConfigError(f"SampleGrid every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_samples < 1:
            raise ConfigError(f"SampleGrid num_samples must be >= 1, got {num_samples}")
        self.every_n_epochs, self.num_samples, self.nrow, self.seed = every_n_epochs, num_samples, nrow, seed
        self.last_path = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """EMA (WeightAveraging) listed before a SampleGrid would swap the raw weights back in before the grid is drawn:
        callbacks run in list order, and WeightAveraging swaps back in its on_validation_epoch_end. (`gen` orders
        WeightAveraging last itself; this catches the Python API.)"""
        callbacks = trainer.callbacks
        averaging = [i for i, c in enumerate(callbacks) if isinstance(c, WeightAveraging)]
        if stage == "fit" and averaging and min(averaging) < callbacks.index(self):
            raise ConfigError("list EMAWeightAveraging after SampleGrid in trainer.callbacks, so that the sample grid is "
                              "drawn from the averaged weights (callbacks run in list order)")

    def labels_for(self, pl_module) -> tuple[torch.Tensor | None, int]:
        """One row per class for conditional models: labels (K*per_row,) and the row length."""
        if not getattr(pl_module, "conditional", False):
            return None, self.nrow or max(1, int(self.num_samples**0.5))
        k = pl_module.num_classes
        per_row = max(1, self.num_samples // k)
        return torch.arange(k, device=pl_module.device).repeat_interleave(per_row), per_row

    @torch.no_grad()
    def draw(self, pl_module) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        labels, nrow = self.labels_for(pl_module)
        n = len(labels) if labels is not None else self.num_samples
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        return pl_module.sample(n, labels=labels, generator=g), labels, nrow

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs) or not trainer.is_global_zero:
            return
        samples, _, nrow = self.draw(pl_module)
        path = run_dir(trainer) / "samples" / f"epoch_{trainer.current_epoch:04d}.png"
        if samples.ndim == 4:
            grid = image_grid(samples, pl_module.value_range, nrow)
            save_grid(grid, path)
            _log_image(trainer, "samples", grid)
        else:
            real = trainer.datamodule.split("val").x if trainer.datamodule is not None else None
            fig = scatter_figure(samples, real, title=f"epoch {trainer.current_epoch}")
            save_figure(fig, path)
            experiment = getattr(trainer.logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("samples", fig, global_step=trainer.global_step)
            plt.close(fig)
        self.last_path = path


class LatentInterpolation(L.Callback):
    """For latent-variable models with `interpolate(x_a, x_b, steps)`: rows of decoded paths between real pairs."""

    def __init__(self, every_n_epochs: int = 5, rows: int = 8, steps: int = 10):
        if min(every_n_epochs, rows) < 1 or steps < 2:
            raise ConfigError(
                f"LatentInterpolation needs every_n_epochs, rows >= 1 and steps >= 2, got {every_n_epochs}, {rows}, {steps}"
            )
        self.every_n_epochs, self.rows, self.steps = every_n_epochs, rows, steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "interpolate"):
            raise ConfigError(f"LatentInterpolation needs a model with interpolate(); {type(pl_module).__name__} has none")

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if not _due(trainer, self.every_n_epochs) or not trainer.is_global_zero or dm is None:
            return
        x = dm.split("val").x[: 2 * self.rows].to(pl_module.device)
        if x.ndim != 4:  # interpolation grids are for images
            return
        x = dm.convert(x, train=False)
        path_images = pl_module.interpolate(x[: self.rows], x[self.rows :], self.steps)
        grid = image_grid(path_images, pl_module.value_range, nrow=self.steps)
        save_grid(grid, run_dir(trainer) / "interpolation" / f"epoch_{trainer.current_epoch:04d}.png")
        _log_image(trainer, "interpolation", grid)
