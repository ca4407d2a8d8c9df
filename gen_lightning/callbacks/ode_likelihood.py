"""`gen test` likelihood of continuous-time models by their probability-flow ODE (flow matching, DDPM).

The model exposes `ode_log_prob(x, labels, steps, probes, generator) -> (B,)` nats of continuous data `x`
(models/flow_matching.py, models/diffusion.py; samplers/ode.py does the integration). This callback owns what
is shared with the other density families:

- 8-bit images are uniformly dequantized first, the flows' convention (`likelihoods.uniform_dequantize`:
  k/255 -> (k + u)/256, mapped back to the data range), one seeded draw per test batch;
- bits/dim of the 8-bit data: `likelihoods.dequantized_bits_per_dim` (so DDPM, flow matching, RealNVP and Glow
  land in one column);
- on data with an exact density (GMM), KL(data || model) = mean of log p_data(x) - log p_model(x).

Only the first `num_examples` test examples are used: each costs 2 `steps` network passes with gradients per
Hutchinson probe. Logged as `test/nll_nats`, `test/bpd` (images) and `test/kl_data_model` (GMM).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from gen_lightning.callbacks.density import log_density_metrics, no_density_reason
from gen_lightning.callbacks.outputs import ReportingCallback
from gen_lightning.data.base import has_density
from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import dequantize_in_range, dequantized_bits_per_dim


class ODELikelihood(ReportingCallback):
    def __init__(self, steps: int = 50, probes: int | None = 1, num_examples: int = 1000, seed: int = 0):
        if steps < 1 or num_examples < 1:
            raise ConfigError(f"ODELikelihood needs steps >= 1 and num_examples >= 1, got {steps} and {num_examples}")
        if probes is not None and probes < 1:
            raise ConfigError(f"ODELikelihood probes must be >= 1 (Hutchinson) or null (the exact trace), got {probes}")
        self.steps, self.probes, self.num_examples, self.seed = steps, probes, num_examples, seed
        self._seen = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "ode_log_prob", None)):
            raise ConfigError(f"ODELikelihood needs a model with a probability-flow ODE (FlowMatching, DDPM), not "
                              f"{type(pl_module).__name__}; remove the callback")
        if stage != "test":
            return
        self.reset_report()
        dm = trainer.datamodule  # callbacks are set up before the model has read the data
        images = len(dm.data_shape) == 3
        trace = "the exact trace" if self.probes is None else f"Hutchinson's trace estimate with {self.probes} Rademacher probe(s)"
        self.note("conventions", {"test/nll_nats": (
            f"-log p(x) in nats by the probability-flow ODE (Heun, {self.steps} steps, {trace}) on the first "
            f"{self.num_examples} test examples" + (", 8-bit images uniformly dequantized, (k + u)/256 mapped to the "
                                                    "data range" if images else ""))})
        if images:
            self.note("conventions", {"test/bpd": "(nll of y = (k + u)/256 in [0, 1) + D ln 256) / (D ln 2)"})
        else:
            self.omit(["test/bpd"], "bits/dim applies to 8-bit images")
        if not has_density(dm):
            self.omit(["test/kl_data_model"], no_density_reason(dm))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._seen >= self.num_examples:
            return
        x, y = batch
        x, y = x[: self.num_examples - self._seen], y[: self.num_examples - self._seen]
        self._seen += x.shape[0]
        g = torch.Generator(device=x.device).manual_seed(self.seed + batch_idx)
        images = len(pl_module.data_shape) == 3
        if images:
            x = dequantize_in_range(x, pl_module.value_range, g)
        labels = y if getattr(pl_module, "conditional", False) else None
        nll = -pl_module.ode_log_prob(x, labels=labels, steps=self.steps, probes=self.probes, generator=g)
        bpd = dequantized_bits_per_dim(nll, math.prod(pl_module.data_shape), pl_module.value_range) if images else None
        log_density_metrics(pl_module, trainer.datamodule, x, nll, bpd)
