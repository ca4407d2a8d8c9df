"""CIFAR-10 through torchvision, held in memory as one uint8 tensor (see base.py).

torchvision unpickles the five training batches and the test batch into `.data`, a numpy
array `(N, 32, 32, 3)`; we take it whole and permute it to `(N, 3, 32, 32)` instead of
indexing the dataset, which would build one PIL image per item. The validation split is
carved from the 50,000 training images with a seed; the test set is the official one.

These are the original pixels. The JPEG copy in ../shared/data is another dataset
("CIFAR-10 (JPEG)"): load it with ImageFolderDataModule.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10

from gen_lightning.data.base import Binarize, ImageDataModule, ValueRange, one_line
from gen_lightning.errors import DatasetNotFoundError


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10, `(3, 32, 32)`, 10 classes; `horizontal_flip` mirrors training batches at random."""

    data_shape = (3, 32, 32)
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
        horizontal_flip: bool = False,
        seed: int = 0,
        predict_size: int = 64,
    ):
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_size=val_size,
            value_range=value_range,
            binarize=binarize,
            horizontal_flip=horizontal_flip,
            seed=seed,
            predict_size=predict_size,
        )
        self.root = str(Path(root).expanduser())
        self.download = download

    @property
    def dataset_name(self) -> str:
        return "CIFAR-10"

    @property
    def batches_folder(self) -> Path:
        """Where torchvision looks for the pickled batches (and extracts the download to)."""
        return Path(self.root).resolve() / CIFAR10.base_folder

    def prepare_data(self) -> None:
        """Download once, on one process, before `setup` runs on every process."""
        if self.download:
            self._read(train=True)  # one archive holds both splits

    def setup(self, stage: str | None = None) -> None:
        if self._splits:  # loaded already: setup runs once per stage
            return
        self._set_splits(train=self._read(train=True), test=self._read(train=False))

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One split as `(x uint8 (N, 3, 32, 32), y long (N,))`."""
        try:
            ds = CIFAR10(self.root, train=train, download=self.download)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision wraps the rest
            raise DatasetNotFoundError(self._error_message(err)) from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        return x, torch.as_tensor(ds.targets, dtype=torch.long)

    def _error_message(self, err: Exception) -> str:
        # torchvision checks every batch's md5, so "missing" and "corrupted" look the same to it
        where = f"CIFAR-10 is missing or corrupted in {self.batches_folder}"
        files = "a `root` that holds cifar-10-batches-py/ extracted from the original cifar-10-python.tar.gz"
        if not self.download:
            return f"{where}; set `download: true` (needs internet) or {files}"
        return f"{where} and `download: true` could not fetch it ({one_line(err)}): connect to the internet, or set {files}"
