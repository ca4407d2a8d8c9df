"""Shared DataModules. Each exposes `data_shape`, `num_classes` and `value_range` (see base.py)."""

from gen_lightning.data.base import ImageDataModule
from gen_lightning.data.cifar10 import CIFAR10DataModule
from gen_lightning.data.gmm import GaussianMixture, GMMDataModule
from gen_lightning.data.image_folder import ImageFolderDataModule
from gen_lightning.data.mnist import MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "GMMDataModule",
    "GaussianMixture",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
]
