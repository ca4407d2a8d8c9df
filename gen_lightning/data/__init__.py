"""Shared DataModules. Each exposes `data_shape`, `num_classes` and `value_range` (see base.py)."""

from gen_lightning.data.base import ImageDataModule
from gen_lightning.data.gmm import GaussianMixture, GMMDataModule

__all__ = ["GMMDataModule", "GaussianMixture", "ImageDataModule"]
