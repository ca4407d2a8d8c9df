"""Energy-based model trained by contrastive divergence with SGLD negatives and a replay buffer.

The energy network E(x) defines p(x) = exp(-E(x)) / Z. The gradient of the negative log
likelihood is E_data[grad E(x+)] - E_model[grad E(x-)], so each step (Du & Mordatch 2019,
"IGEBM"; Grathwohl et al. 2020, "JEM"):

  1. starts B chains from the replay buffer, each replaced by uniform noise with probability
     `reinit_prob` (IGEBM sec. 3.1: persistent chains that still explore);
  2. runs `sgld_steps` SGLD steps on E (samplers/sgld.py) to get the negatives x-, and writes
     them back into the buffer in place of the entries they started from;
  3. minimizes the contrastive divergence with IGEBM's L2 energy regularizer (sec. 3.3)

       loss = mean E(x+) - mean E(x-) + alpha * (mean E(x+)^2 + mean E(x-)^2),

     which lowers the energy of data, raises it on the model's samples, and keeps both near 0.

The buffer is a registered buffer `replay` `(buffer_size, *data_shape)`, so it is saved in every
checkpoint and `--ckpt_path` resumes the same chains (CIFAR-10 at 10,000 entries: 123 MB).

`sample(n)` runs `sample_steps` SGLD steps (each one forward and one backward pass of E) from uniform
noise (`sample_init: noise`), or continues the replay buffer's persistent chains (`sample_init: buffer`, as
IGEBM and JEM show their samples). Images are in [-1, 1] (DESIGN.md) and the chains are clamped to it;
2-D data has no value range, so the config gives the box `init_range` the chains start in and stay in.
An energy beyond `max_energy` in absolute value (or a non-finite loss or gradient) stops the run with
TrainingDivergedError before the weights change.

There is no tractable likelihood for images (Z is unknown). For 2-D data Z, the integral of exp(-E) over
the box, is computed on a grid, which gives `log_prob` and KL(data || model) on GMM data.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gen_lightning.errors import ConfigError, check_rules
from gen_lightning.losses import contrastive_divergence
from gen_lightning.metrics.two_sample import energy_distance
from gen_lightning.models.base import GenerativeModel, shape_text
from gen_lightning.samplers.sgld import SGLD, grid_log_normalizer

NO_LIKELIHOOD = "an EBM's normalizer Z of exp(-E(x)) is intractable for images, so there is no likelihood"


def _check_hparams(**h) -> None:
    check_rules([
        (h["sgld_steps"] >= 1, f"sgld_steps must be >= 1, got {h['sgld_steps']}"),
        (h["sample_steps"] >= 1, f"sample_steps must be >= 1, got {h['sample_steps']}"),
        (h["sample_init"] in ("noise", "buffer"), f"sample_init must be 'noise' or 'buffer', got {h['sample_init']!r}"),
        (h["step_size"] > 0, f"step_size must be > 0, got {h['step_size']}"),
        (h["noise_std"] >= 0, f"noise_std must be >= 0, got {h['noise_std']}"),
        (h["alpha"] >= 0, f"alpha (weight of the energy L2 regularizer) must be >= 0, got {h['alpha']}"),
        (h["buffer_size"] >= 1, f"buffer_size must be >= 1, got {h['buffer_size']}"),
        (0 <= h["reinit_prob"] <= 1, f"reinit_prob must be in [0, 1], got {h['reinit_prob']}; 1 means no replay buffer"),
        (h["data_noise"] >= 0, f"data_noise must be >= 0, got {h['data_noise']}"),
        (h["max_energy"] > 0, f"max_energy must be > 0, got {h['max_energy']}"),
        (h["init_range"] is None or (len(h["init_range"]) == 2 and h["init_range"][0] < h["init_range"][1]),
         f"init_range must be [lo, hi] with lo < hi, got {h['init_range']}"),
    ])  # fmt: skip


class EBM(GenerativeModel):
    """An unconditional EBM; `energy`: `(B, *data_shape) -> (B,)`; `scheduler` (optional) steps once per epoch
    (`scheduler_interval: step`: every step)."""

    log_grad_norm = True  # train/grad_norm, from the divergence guard (models/divergence.py)
    divergence_advice = "Lower the learning rate or step_size, raise alpha (the energy L2 weight), or turn on the energy network's spectral_norm"

    conditional = False
    sampling_options = ("predict_seed", "sample_steps", "sample_init")

    def __init__(
        self,
        energy: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        sgld_steps: int = 20,
        sample_steps: int = 100,
        sample_init: Literal["noise", "buffer"] = "noise",
        step_size: float = 1.0,
        noise_std: float = 0.01,
        alpha: float = 1.0,
        buffer_size: int = 10000,
        reinit_prob: float = 0.05,
        data_noise: float = 0.0,
        init_range: tuple[float, float] | None = None,
        max_energy: float = 1.0e4,
        grid_size: int = 512,
        predict_seed: int = 1234,
    ):
        super().__init__(predict_seed=predict_seed)
        _check_hparams(sgld_steps=sgld_steps, sample_steps=sample_steps, sample_init=sample_init, step_size=step_size, noise_std=noise_std,
                       alpha=alpha, buffer_size=buffer_size, reinit_prob=reinit_prob, data_noise=data_noise,
                       max_energy=max_energy, init_range=init_range)  # fmt: skip
        self.save_hyperparameters()
        self.energy, self.optimizer_callable, self.scheduler_callable = energy, optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.sgld_steps, self.sample_steps, self.sample_init = sgld_steps, sample_steps, sample_init
        self.step_size, self.noise_std = step_size, noise_std
        self.alpha, self.buffer_size, self.reinit_prob, self.data_noise = alpha, buffer_size, reinit_prob, data_noise
        self.init_range = tuple(init_range) if init_range is not None else None
        self.max_energy, self.grid_size = max_energy, grid_size
        self.network_evaluations_per_sample = sample_steps  # SGLD steps, each a forward and a backward pass of E
        self.register_buffer("replay", torch.empty(0))  # (buffer_size, *data_shape), allocated in bind_data

    # ---- SGLD and the replay buffer -----------------------------------------------------
    def sgld(self, num_steps: int) -> SGLD:
        return SGLD(num_steps, self.step_size, self.noise_std, clamp=self.data_range)

    def buffer_starts(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chain starts `(n, *data_shape)`: buffer entries at random `idx` `(n,)`, `reinit` `(n,)` of them noise."""
        idx = torch.randint(0, self.buffer_size, (n,), device=self.device)
        reinit = torch.rand(n, device=self.device) < self.reinit_prob
        x = self.replay[idx].clone()
        x[reinit] = self.uniform_noise(int(reinit.sum()))
        return x, idx, reinit

    def negatives(self, n: int) -> torch.Tensor:
        """x- for one training step: SGLD from the buffer, written back where the chains came from."""
        x, idx, reinit = self.buffer_starts(n)
        x = self.sgld(self.sgld_steps).sample(self.energy, tuple(x.shape), x_init=x)
        self.replay[idx] = x
        self.log_step({"train/reinit_fraction": reinit.float().mean()})
        return x

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x_pos, _ = batch
        if self.data_noise > 0:  # JEM: a little Gaussian noise on the data smooths its energy
            x_pos = x_pos + self.data_noise * torch.randn_like(x_pos)
        x_neg = self.negatives(x_pos.shape[0])
        e_pos, e_neg = self.energy(x_pos), self.energy(x_neg)
        loss = contrastive_divergence(e_pos, e_neg, self.alpha)
        largest = torch.cat([e_pos, e_neg]).detach().abs().max().item()
        if largest > self.max_energy:  # stop before the weights change (models/divergence.py guards non-finite values)
            self.diverged(f"the energy reached |E| = {largest:.4g} > max_energy = {self.max_energy:g}")
        self.log_step({"train/loss": loss, "train/energy_pos": e_pos.mean(), "train/energy_neg": e_neg.mean(),
                       "train/cd": e_pos.mean() - e_neg.mean()})  # fmt: skip
        return loss

    def configure_optimizers(self):
        return self.optimizers_with_scheduler(self.optimizer_callable, self.energy.parameters(), self.scheduler_callable,
                                              self.scheduler_interval)

    # ---- the chains' box and the saved buffer ------------------------------------------------
    @property
    def has_density(self) -> bool:
        """2-D data: Z is an integral over the box, computed on a grid, so log_prob exists."""
        return self.data_shape == (2,)

    @property
    def data_range(self) -> tuple[float, float]:
        """Where the chains start (uniform noise) and are clamped: the images' value range, or init_range."""
        return tuple(self.value_range) if self.value_range is not None else self.init_range

    def uniform_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        lo, hi = self.data_range
        return lo + (hi - lo) * torch.rand(n, *self.data_shape, generator=generator, device=self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint["state_dict"].get("replay")
        if saved is not None and self.replay.numel() == 0:  # load_from_checkpoint without a DataModule
            self.replay = torch.empty_like(saved, device=self.device)
        elif saved is not None and self.replay.shape != saved.shape:
            raise ConfigError(f"the checkpoint's replay buffer has shape {tuple(saved.shape)} but this model's has "
                              f"{tuple(self.replay.shape)}; set model.init_args.buffer_size: {saved.shape[0]}")

    # ---- validation and test ---------------------------------------------------------------
    def buffer_distance(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Energy distance between x and as many buffer entries drawn with seed `batch_idx`."""
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        idx = torch.randint(0, self.buffer_size, (x.shape[0],), generator=g, device=self.device)
        return energy_distance(self.replay[idx], x)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        self.log("val/loss", self.buffer_distance(x, batch_idx), prog_bar=True, batch_size=x.shape[0])
        self.log("val/energy_data", self.energy(x).mean(), batch_size=x.shape[0])

    def test_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        metrics = {"test/energy_data": self.energy(x).mean(), "test/buffer_energy_distance": self.buffer_distance(x, batch_idx)}
        self.log_dict(metrics, batch_size=x.shape[0])  # NLL and KL(data || model) on 2-D data: callbacks.DensityMetrics

    # ---- 2-D density --------------------------------------------------------------------
    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """2-D data only: log exp(-E(x)) / Z, Z over the box by the midpoint rule on `grid_size`^2 cells; `(B, 2) -> (B,)`."""
        if not self.has_density:
            raise ConfigError(f"{NO_LIKELIHOOD}; log_prob is defined for 2-D data only")
        return -self.energy(x) - grid_log_normalizer(self.energy, self.data_range, self.grid_size, self.device)

    # ---- sampling -----------------------------------------------------------------------
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               from_buffer: bool | None = None) -> torch.Tensor:
        """n samples `(n, *data_shape)`: `sample_steps` SGLD steps from uniform noise, or from buffer entries
        (`from_buffer`; None: as `sample_init` says)."""
        self.check_sample_args(n, labels)
        if from_buffer if from_buffer is not None else self.sample_init == "buffer":
            x0 = self.replay[torch.randint(0, self.buffer_size, (n,), generator=generator, device=self.device)]
        else:
            x0 = self.uniform_noise(n, generator)
        return self.sgld(self.sample_steps).sample(self.energy, tuple(x0.shape), generator, x_init=x0)

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        """Images in [-1, 1], or a box (init_range) for data without a value range; one energy per example."""
        self.require_symmetric_range(dm, "the EBM takes images in [-1, 1] (DESIGN.md)")
        if dm.value_range is None and self.init_range is None:
            raise ConfigError(f"{dm.dataset_name} has no value range, so the SGLD chains need a box to start in and "
                              "stay in; set model.init_args.init_range, e.g. [-3, 3] for ring8")
        x = torch.zeros(2, *dm.data_shape, device=self.device)
        e = self.probe(self.energy, lambda: self.energy(x), f"the energy network cannot read data of shape {shape_text(tuple(dm.data_shape))}",
                       "set its in_channels/image_size (ConvEnergy) or data_shape (MLPEnergy)")
        if tuple(e.shape) != (2,):
            raise ConfigError(f"the energy network must output one energy per example, shape (B,); got {tuple(e.shape)}")

    def bind_data(self, dm) -> None:
        super().bind_data(dm)
        shape = (self.buffer_size, *self.data_shape)
        if tuple(self.replay.shape) != shape:  # a fresh buffer of uniform noise; a checkpoint replaces it
            self.replay = self.uniform_noise(self.buffer_size)

    # ---- what the evaluation callbacks read (callbacks.DensityMetrics, MetricsWriter) ----------
    @property
    def density_kind(self) -> str | None:
        return "exact" if self.has_density else None  # 2-D: Z by a fine grid; images: Z is intractable

    @property
    def omitted_metrics(self) -> dict[str, str]:
        if self.has_density:
            return {"test/bpd": "2-D continuous data: bits/dim applies to 8-bit images"}
        return {"test/nll_nats": NO_LIKELIHOOD, "test/bpd": NO_LIKELIHOOD,
                "test/kl_data_model": f"{NO_LIKELIHOOD}; KL(data || model) needs log p_model(x)"}

    @property
    def metric_conventions(self) -> dict[str, str]:
        start = "uniform noise" if self.sample_init == "noise" else "replay-buffer entries (persistent chains)"
        conventions = {
            "val/loss": "energy distance between a validation batch and as many replay-buffer entries (fixed seeds)",
            "sampling": f"{self.sample_steps} SGLD steps (step {self.step_size}, noise {self.noise_std}) from {start}; "
                        "each step is one forward and one backward pass of E",
        }
        if self.has_density:
            conventions["log_prob"] = (f"2-D data: log Z of exp(-E) over the init_range box {list(self.data_range)}, by a "
                                       f"{self.grid_size}x{self.grid_size} midpoint rule; test/nll_nats per point")
        return conventions
