"""Lightning's EMAWeightAveraging with the usual warm-up of the decay.

A plain EMA with decay 0.999 still holds 0.999^n of the initial weights after n updates: 37%
after 1,000 steps, so a short run (or the first epochs of a long one) samples from an average
dominated by the random initialization. This callback uses the warm-up of TensorFlow's
ExponentialMovingAverage(num_updates=...) and timm's ModelEmaV2:

    decay_n = min(decay, (1 + n) / (10 + n)),   n = number of averages taken so far,

which tracks the raw weights closely at first and reaches `decay` after ~10 / (1 - decay) steps
(10,000 for 0.999). Everything else, including where the average lives in checkpoints
(`state_dict`, with the raw weights under `current_model_state`), is Lightning's.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_info

from gen_lightning.errors import ConfigError


def warmup_decay(decay: float, num_averaged: torch.Tensor | int) -> torch.Tensor | float:
    """min(decay, (1 + n) / (10 + n)): 0.1 at the first average, `decay` once n >= (10 decay - 1) / (1 - decay)."""
    return torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay) if torch.is_tensor(num_averaged) else min(
        decay, (1 + num_averaged) / (10 + num_averaged)
    )


class EMA(EMAWeightAveraging):
    """EMAWeightAveraging whose decay warms up as min(decay, (1 + n) / (10 + n)); `warmup: false` is the plain EMA."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}; 0.999 or 0.9999 are usual")
        super().__init__(decay=decay, **kwargs)
        self.decay, self.warmup = decay, warmup
        if warmup:
            self._kwargs["avg_fn"] = self._warmup_average

    def _warmup_average(self, average: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = warmup_decay(self.decay, num_averaged)
        return d * average + (1 - d) * current

    def on_train_end(self, trainer, pl_module) -> None:
        average = self._average_model
        n = int(average.n_averaged) if average is not None else 0
        reached = math.ceil((10 * self.decay - 1) / (1 - self.decay))  # (1 + n) / (10 + n) >= decay from here on
        if self.warmup and 0 < n < reached:
            rank_zero_info(
                f"EMA: this fit took {n:,} averages and the warm-up reaches decay {self.decay} after {reached:,}, so the "
                f"last decay was {warmup_decay(self.decay, n):.4f} (an average over roughly the last {n // 9 + 1:,} "
                f"steps), the same for any decay above {warmup_decay(self.decay, n):.4f}"
            )
        super().on_train_end(trainer, pl_module)
