"""Every shared DataModule keeps the GenerativeData protocol that models read (data/base.py), and only GMM data
has an exact density."""

from types import SimpleNamespace

import pytest
import torch
from torchvision.io import write_png

from gen_lightning.data import (CIFAR10DataModule, GenerativeData, GMMDataModule, ImageFolderDataModule, MNISTDataModule,
                                has_density)


@pytest.mark.parametrize("make", [lambda tmp: GMMDataModule(preset="grid25"),
                                  lambda tmp: MNISTDataModule(root=str(tmp)),
                                  lambda tmp: CIFAR10DataModule(root=str(tmp)),
                                  lambda tmp: ImageFolderDataModule(root=str(tmp / "pets"), image_size=8)])
def test_every_datamodule_keeps_the_protocol(make, tmp_path):
    for label in ("cat", "dog"):  # a two-class folder for ImageFolderDataModule
        (tmp_path / "pets" / label).mkdir(parents=True)
        write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / "pets" / label / "0.png"))
    dm = make(tmp_path)
    assert isinstance(dm, GenerativeData)
    assert has_density(dm) == isinstance(dm, GMMDataModule)


def test_the_protocol_names_what_is_missing():
    partial = SimpleNamespace(dataset_name="toy", data_shape=(2,), num_classes=None, value_range=None, describe=dict)
    assert not isinstance(partial, GenerativeData)  # no `binarize`
    assert isinstance(SimpleNamespace(**vars(partial), binarize="none"), GenerativeData)
    assert not has_density(partial) and has_density(SimpleNamespace(log_prob=lambda x: x))
