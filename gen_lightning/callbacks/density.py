"""`gen test` density metrics of every model that declares a density: NLL, bits/dim and KL(data || model).

The callback sees the model's public surface only:

- `density_kind`: "exact" (flows, NADE/MADE/PixelCNN, an EBM's grid-normalized density on 2-D data), "bound"
  (the VAE's importance-weighted estimate, a lower bound on log p in expectation) or None (nothing to evaluate:
  GANs; DDPM, flow matching and NCSN have their likelihood by the ODE, `ODELikelihood`);
- `log_prob(x)`: nats per example of a test batch as the DataModule yields it;
- `bits_per_dim(nll)`: the model's conversion to bits/dim of 8-bit data, or None where it does not apply (its
  `omitted_metrics` says why);

and, on data with an exact density (GMM), the DataModule's `log_prob(x)`. Per test batch it logs

    test/nll_nats      = -log_prob(x)
    test/bpd           = bits_per_dim(nll)
    test/kl_data_model = log p_data(x) - log p_model(x), averaged: KL(data || model)

The random draws inside `log_prob` (a dequantization, the IWAE samples) come from the global generator seeded
with `seed + batch_idx` and restored afterwards, so testing a checkpoint twice gives the same numbers. `gen` adds
this callback to every run (`--density.enabled false` turns it off).
"""

from __future__ import annotations

import lightning as L
import torch

from gen_lightning.callbacks.outputs import ReportingCallback
from gen_lightning.data.base import has_density
from gen_lightning.errors import ConfigError

KINDS = ("exact", "bound")


def no_density_reason(dm) -> str:
    return f"{dm.dataset_name} has no exact density; KL(data || model) needs synthetic data (GMM)"


def log_density_metrics(pl_module: L.LightningModule, dm, x: torch.Tensor, nll: torch.Tensor,
                        bpd: torch.Tensor | None) -> None:
    """Log test/nll_nats, test/bpd (when given) and, on data with an exact density, test/kl_data_model =
    mean of log p_data(x) - log p_model(x), for a test batch x and its `nll` `(B,)`; shared with ODELikelihood."""
    metrics = {"test/nll_nats": nll}
    if bpd is not None:
        metrics["test/bpd"] = bpd
    if has_density(dm):
        metrics["test/kl_data_model"] = dm.log_prob(x).to(nll) + nll
    for name, value in metrics.items():
        pl_module.log(name, value.mean(), batch_size=x.shape[0])


class DensityMetrics(ReportingCallback):
    def __init__(self, seed: int = 0, enabled: bool = True):
        self.seed, self.enabled = seed, enabled

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.reset_report()
        kind = self.kind(pl_module)
        if stage != "test" or kind is None:
            return
        if kind not in KINDS:
            raise ConfigError(f"{type(pl_module).__name__}.density_kind must be one of {KINDS} or None, got {kind!r}")
        dm = trainer.datamodule
        if dm is not None and not has_density(dm):
            self.omit(["test/kl_data_model"], no_density_reason(dm))
        elif dm is not None:
            bound = "" if kind == "exact" else ": an upper bound in expectation, log p_model being a lower bound"
            self.note("conventions", {"test/kl_data_model": f"mean over test points of log p_data(x) - log p_model(x){bound}"})

    def kind(self, pl_module: L.LightningModule) -> str | None:
        return getattr(pl_module, "density_kind", None) if self.enabled else None

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.kind(pl_module) is None:
            return
        x = batch[0]
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + batch_idx)
            nll = -pl_module.log_prob(x).float()
        log_density_metrics(pl_module, trainer.datamodule, x, nll, pl_module.bits_per_dim(nll))
