"""The MNIST domain classifier: the feature space and the judge of the MNIST sample metrics.

Not a generative model: a plain LightningModule trained with `gen fit --config
configs/classifier_mnist.yaml`, then loaded by metrics/classifier.py for the classifier FID,
the class histogram (mode coverage) and the label accuracy of conditional models.

Input convention. The injected net always sees float images in [0, 1]. `forward` and
`features` take float images in `value_range` (by default the range of the data it was
trained on, kept in the `input_range` buffer so the checkpoint carries it) or uint8 images
in [0, 255], and rescale them to [0, 1] first, clipping as a saved image would. So samples
of a model trained in [-1, 1] and of one trained in [0, 1] are judged on the same footing:
pass each model's `value_range`.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gen_lightning.errors import ConfigError


class Classifier(L.LightningModule):
    """Cross-entropy classifier around an injected net with `features(x)`, `forward(x) -> logits` and `num_classes`."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler  # stepped once per epoch
        self.data_info: dict = {}  # the DataModule's describe(), for metrics.json
        self.data_range: tuple[float, float] | None = None  # range of the batches this run feeds
        # Set from the DataModule in setup() and carried by the checkpoint: (lo, hi) of the
        # data it was trained on (the default range of float inputs) and its (C, H, W).
        self.register_buffer("input_range", torch.tensor([0.0, 1.0]))
        self.register_buffer("input_shape", torch.zeros(3, dtype=torch.long))

    # ---- data contract ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            self.bind_data(dm)

    def bind_data(self, dm) -> None:
        """Check the data has labels the head can predict, and remember its value range."""
        if dm.num_classes is None:
            raise ConfigError(f"the Classifier needs labeled data; {type(dm).__name__} has num_classes None")
        if self.num_classes != dm.num_classes:
            raise ConfigError(
                f"the net predicts {self.num_classes} classes but {type(dm).__name__} has {dm.num_classes}; "
                f"set model.init_args.net.init_args.num_classes: {dm.num_classes}"
            )
        if dm.value_range is None:
            raise ConfigError(f"the Classifier needs bounded images; {type(dm).__name__} has no value_range")
        # a checkpoint restored after setup() puts back the range and shape it was trained on
        self.input_range.copy_(torch.tensor(dm.value_range, dtype=self.input_range.dtype))
        self.input_shape.copy_(torch.tensor(dm.data_shape, dtype=torch.long))
        self.data_range = tuple(dm.value_range)
        self.data_info = dm.describe()

    @property
    def value_range(self) -> tuple[float, float]:
        lo, hi = self.input_range.tolist()
        return lo, hi

    @property
    def data_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the images it was trained on."""
        return tuple(self.input_shape.tolist())

    @property
    def num_classes(self) -> int:
        """The classes its head predicts (the injected net's `num_classes`)."""
        return int(self.net.num_classes)

    def to_unit(self, x: torch.Tensor, value_range: tuple[float, float] | None = None) -> torch.Tensor:
        """uint8 in [0, 255], or float in `value_range` (default: the trained range) -> float in [0, 1].

        Values outside the range are clipped, as they would be in a saved image: a sample is
        judged by the picture it makes.
        """
        if x.dtype == torch.uint8:
            return x.float() / 255.0
        lo, hi = value_range if value_range is not None else self.value_range
        return ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)

    # ---- the net, on any input range -------------------------------------------------
    def forward(self, x: torch.Tensor, value_range: tuple[float, float] | None = None) -> torch.Tensor:
        """Images (see the module docstring) -> (B, num_classes) logits."""
        return self.net(self.to_unit(x, value_range))

    def features(self, x: torch.Tensor, value_range: tuple[float, float] | None = None) -> torch.Tensor:
        """Images -> (B, feature_dim) penultimate features, the space of the classifier FID."""
        return self.net.features(self.to_unit(x, value_range))

    # ---- training ---------------------------------------------------------------------
    def _loss_and_accuracy(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x, self.data_range)  # the batches' own range, even when testing on other data
        return F.cross_entropy(logits, y), (logits.argmax(dim=1) == y).float().mean()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_accuracy(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, acc = self._loss_and_accuracy(batch)
        # batch_size makes the epoch mean an exact per-image mean when the last batch is short
        self.log("val/loss", loss, batch_size=len(batch[1]))
        self.log("val/acc", acc, prog_bar=True, batch_size=len(batch[1]))

    def test_step(self, batch, batch_idx: int) -> None:
        loss, acc = self._loss_and_accuracy(batch)
        self.log("test/loss", loss, batch_size=len(batch[1]))
        self.log("test/acc", acc, batch_size=len(batch[1]))

    def configure_optimizers(self):
        try:
            optimizer = self.optimizer(self.parameters())
        except ValueError as e:  # e.g. "Invalid learning rate: -0.001"
            raise ConfigError(f"model.optimizer rejected its arguments ({e}); fix model.optimizer.init_args") from None
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "epoch"}}
