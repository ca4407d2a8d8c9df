"""MNIST through torchvision, held in memory as one uint8 tensor (see base.py).

torchvision reads the four IDX files into `.data` (uint8 `(N, 28, 28)`) and `.targets`;
we take those tensors whole instead of indexing the dataset, which would build one PIL
image per item. The validation split is carved from the 60,000 training images with a
seed; the 10,000 test images are the official test set.

Offline, pass `root: ../shared/data` (the folder that holds `MNIST/raw/`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import MNIST

from gen_lightning.data.base import Binarize, ImageDataModule, ValueRange, one_line
from gen_lightning.errors import DatasetNotFoundError


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class MNISTDataModule(ImageDataModule):
    """MNIST digits, `(1, 28, 28)`, 10 classes; binarize for the likelihood models."""

    data_shape = (1, 28, 28)
    num_classes = 10

    def __init__(
        self,
        root: str = "../shared/data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 5000,
        value_range: ValueRange = "0,1",
        binarize: Binarize = "none",
        seed: int = 0,
        predict_size: int = 64,
    ):
        # no horizontal_flip: a mirrored digit is not a digit
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_size=val_size,
            value_range=value_range,
            binarize=binarize,
            horizontal_flip=False,
            seed=seed,
            predict_size=predict_size,
        )
        self.root = str(Path(root).expanduser())
        self.download = download

    @property
    def raw_folder(self) -> Path:
        """Where torchvision looks for the IDX files (and downloads them to)."""
        return Path(self.root).resolve() / "MNIST" / "raw"

    def prepare_data(self) -> None:
        """Download once, on one process, before `setup` runs on every process."""
        if self.download:
            self._read(train=True)  # torchvision fetches all four files at once

    def setup(self, stage: str | None = None) -> None:
        if self._splits:  # loaded already: setup runs once per stage
            return
        self._set_splits(train=self._read(train=True), test=self._read(train=False))

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One split as `(x uint8 (N, 1, 28, 28), y long (N,))`."""
        try:
            ds = MNIST(self.root, train=train, download=self.download)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision wraps the rest
            raise DatasetNotFoundError(self._error_message(err)) from None
        return ds.data.unsqueeze(1), ds.targets.long()  # (N, 28, 28) -> (N, 1, 28, 28)

    def _error_message(self, err: Exception) -> str:
        if all((self.raw_folder / name).is_file() for name in IDX_FILES):
            return f"the MNIST files in {self.raw_folder} could not be read ({one_line(err)}); replace them with the original IDX files"
        where = f"MNIST is not in {self.raw_folder}"
        files = "a `root` whose MNIST/raw holds the four IDX files (e.g. `root: ../shared/data`)"
        if not self.download:
            return f"{where}; set `download: true` (needs internet) or {files}"
        return f"{where} and `download: true` could not fetch it ({one_line(err)}): connect to the internet, or set {files}"
