"""EnergyContour: E on the grid the right way round, a PNG in the run directory, refusals."""

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from gen_lightning.callbacks.energy_contour import EnergyContour, energy_on_grid
from gen_lightning.data.gmm import GMMDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.models.ebm import EBM
from gen_lightning.nets.energy import MLPEnergy


class FirstCoordinate(nn.Module):
    def forward(self, x):
        return x[:, 0]


def test_grid_rows_are_y_and_columns_are_x():
    axis, e = energy_on_grid(FirstCoordinate(), -1.0, 1.0, 5, "cpu")
    torch.testing.assert_close(axis, torch.linspace(-1, 1, 5))
    torch.testing.assert_close(e, axis.expand(5, 5))  # E[i, j] = x_j for every row i


@pytest.mark.parametrize("show", ["energy", "density"])
def test_contour_png_is_written_in_the_run_directory(tmp_path, show):
    torch.manual_seed(0)
    dm = GMMDataModule(n_train=64, n_val=64, n_test=64, batch_size=32)
    model = EBM(MLPEnergy([2], [8]), init_range=[-3.0, 3.0], sgld_steps=1, buffer_size=32)
    callback = EnergyContour(every_n_epochs=1, grid_size=20, show=show)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[callback],
                        logger=TensorBoardLogger(tmp_path, name="ebm"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert callback.last_path == tmp_path / "ebm" / "version_0" / "energy" / "epoch_0000.png"
    assert callback.last_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_bad_settings_and_models_without_an_energy():
    with pytest.raises(ConfigError, match="show"):
        EnergyContour(show="log")
    with pytest.raises(ConfigError, match="grid_size"):
        EnergyContour(grid_size=1)
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="no `energy` module"):
        EnergyContour().setup(trainer, L.LightningModule(), "fit")
