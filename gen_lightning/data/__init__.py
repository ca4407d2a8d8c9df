"""Shared DataModules. Each keeps the `GenerativeData` protocol (base.py): `data_shape`, `num_classes`,
`value_range`, `binarize`, `describe()` and, where the data has one, an exact `log_prob`."""

from gen_lightning.data.base import GenerativeData, ImageDataModule, has_density
from gen_lightning.data.cifar10 import CIFAR10DataModule
from gen_lightning.data.gmm import GaussianMixture, GMMDataModule
from gen_lightning.data.image_folder import ImageFolderDataModule
from gen_lightning.data.mnist import MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "GMMDataModule",
    "GaussianMixture",
    "GenerativeData",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "has_density",
]
