"""The small contract every model family keeps (../shared/DESIGN.md, "Contract between the pieces").

- `sample(n, labels=None, generator=None)` returns samples in the data's value range.
  Conditional families set `conditional = True` and take labels; the others refuse them.
- Likelihood families also define `log_prob(x)` (or a bound on it) and declare which with `density_kind`
  ("exact" or "bound"), and `bits_per_dim(nll)` where bits/dim applies; callbacks.DensityMetrics reads them.
- Models declare what their metrics mean and which do not apply (`metric_conventions`, `omitted_metrics`:
  read-only, computed from the config and the data); evaluation callbacks keep their own findings.
- In `setup()` the model reads `data_shape`, `num_classes` and `value_range` from the
  DataModule and `check_data()` raises a clear error when they do not fit.
- Training stops before a non-finite update (models/divergence.py, `DivergenceGuard`, the base of this class).
- Checkpoints carry the model class, the data it was trained on and the RNG states, so that
  a checkpoint from another model fails with one sentence and `--ckpt_path` resumes exactly.
- `predict_step` draws one sample per index in the predict batch (see data.base.predict_loader).
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from typing import Any

import numpy as np
import torch

from gen_lightning.data.base import GenerativeData
from gen_lightning.errors import CheckpointMismatchError, ConfigError
from gen_lightning.models.divergence import DivergenceGuard


def shape_text(shape: tuple[int, ...]) -> str:
    """(1, 28, 28) -> "(B, 1, 28, 28)", for error messages about batch shapes."""
    return "(" + ", ".join(["B", *map(str, shape)]) + ")"


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Run `module` in eval mode (no dropout, BatchNorm running statistics, no ActNorm initialization), then restore its mode."""
    was_training = module.training
    module.train(False)
    try:
        yield module
    finally:
        module.train(was_training)


def _class_name(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def _numpy_state_to_tensors(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _numpy_state_from_tensors(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


class GenerativeModel(DivergenceGuard):
    """Base class of every family's LightningModule."""

    conditional: bool = False
    # init arguments that change how the model samples or evaluates, never its weights: `gen test|predict
    # --ckpt_path` keeps this run's values of them instead of the checkpoint's (cli.GenCLI._parse_ckpt_path)
    sampling_options: tuple[str, ...] = ("predict_seed",)
    # network evaluations to draw one sample (1 for a VAE decoder or a GAN generator, T for DDPM);
    # reported beside the sampling speed
    network_evaluations_per_sample: int | None = None

    def __init__(self, predict_seed: int = 1234):
        super().__init__()
        self.predict_seed = predict_seed
        self.data_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None
        self.value_range: tuple[float, float] | None = None
        self.data_info: dict = {}
        self.trained_progress: dict = {}
        self._rng_to_restore: dict | None = None

    # ---- data contract ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            self.bind_data(dm)

    def bind_data(self, dm: GenerativeData) -> None:
        """Read the DataModule's contract, check it fits this model, and build what depends on it."""
        if self.conditional and dm.num_classes is None:
            raise ConfigError(
                f"{type(self).__name__} is conditional but {dm.dataset_name} has no labels (num_classes is None); "
                "use a labeled dataset (MNIST, CIFAR-10) or the unconditional model"
            )
        self.check_data(dm)
        self.data_shape = tuple(dm.data_shape)
        self.num_classes = dm.num_classes
        self.value_range = tuple(dm.value_range) if dm.value_range is not None else None
        self.data_info = dm.describe()

    def check_data(self, dm: GenerativeData) -> None:
        """Families override this to refuse data they cannot model; the default accepts anything."""

    @staticmethod
    def require_symmetric_range(dm: GenerativeData, why: str) -> None:
        """Images must come in [-1, 1], for the reason `why`; data without a value range (2-D) passes."""
        if dm.value_range is not None and tuple(dm.value_range) != (-1.0, 1.0):
            raise ConfigError(f"{why}, but {dm.dataset_name} yields {tuple(dm.value_range)}; "
                              "set data.init_args.value_range: \"-1,1\"")

    def check_net_classes(self, dm: GenerativeData, conditional_model: str, **nets: torch.nn.Module) -> None:
        """Each net's num_classes must be the data's for a conditional model and None otherwise; `conditional_model`
        names the class to suggest when an unconditional model gets a conditional net."""
        want = dm.num_classes if self.conditional else None
        for name, net in nets.items():
            have = getattr(net, "num_classes", None)
            if have != want:
                fix = (f"set model.init_args.{name}.init_args.num_classes: {want}" if self.conditional
                       else f"use {conditional_model}, or set the {name}'s num_classes: null")
                raise ConfigError(f"the {name} has num_classes={have} but {type(self).__name__} on {dm.dataset_name} "
                                  f"needs {want}; {fix}")

    def probe_time_net(self, net: torch.nn.Module, shape: tuple[int, ...], labelled: bool | None = None) -> None:
        """One dummy pass of a time-conditioned net (UNet, DenoiserMLP) at t = 0, which must map data to data's shape;
        with labels when `labelled` (by default: when the model is conditional)."""
        x, t = torch.zeros(2, *shape, device=self.device), torch.zeros(2, device=self.device)
        labelled = self.conditional if labelled is None else labelled
        labels = torch.zeros(2, dtype=torch.long, device=self.device) if labelled else None
        out = self.probe(net, lambda: net(x, t, labels), f"the net cannot read data of shape {shape_text(shape)}",
                         "set its in_channels/image_size (UNet) or dim (DenoiserMLP)")
        if tuple(out.shape) != (2, *shape):
            raise ConfigError(f"the net outputs {shape_text(out.shape[1:])} but the data has shape {shape_text(shape)}")

    @staticmethod
    def probe(net: torch.nn.Module, call, what: str, fix: str):
        """`call()`, one dummy forward pass through `net` in eval mode without gradients; a failure becomes one
        ConfigError, "{what} ({the error's first line}); {fix}"."""
        try:
            with torch.no_grad(), eval_mode(net):
                return call()
        except (RuntimeError, ValueError, IndexError) as e:
            raise ConfigError(f"{what} ({str(e).splitlines()[0]}); {fix}") from None

    def check_labels(self, labels: torch.Tensor | None) -> None:
        if labels is not None and not self.conditional:
            raise ConfigError(f"{type(self).__name__} is unconditional; call sample() without labels")
        if labels is None and self.conditional:
            raise ConfigError(f"{type(self).__name__} is conditional; pass labels to sample()")

    @staticmethod
    def check_dequantize(dm, dequantize: bool) -> None:
        """Training on uniformly dequantized data (`dequantize: true`) is for 8-bit images only."""
        if dequantize and not (len(dm.data_shape) == 3 and dm.binarize == "none"):
            raise ConfigError(f"dequantize: true adds uniform noise of one 8-bit level to images, but {dm.dataset_name} "
                              f"yields {'binarized images' if len(dm.data_shape) == 3 else 'continuous data'}; set dequantize: false")

    def check_sample_args(self, n: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The checks every sample() starts with; returns the labels on the model's device."""
        self.check_labels(labels)
        if n < 1:
            raise ValueError(f"the number of samples must be >= 1, got {n}")
        if self.data_shape is None:
            raise ConfigError("the model does not know its data shape yet; fit it or load it from a checkpoint first")
        if labels is not None and tuple(labels.shape) != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        return None if labels is None else labels.to(self.device)

    # ---- classifier-free guidance (ConditionalDDPM, ConditionalFlowMatching) ---------------
    @staticmethod
    def check_guidance(label_dropout: float, guidance_scale: float) -> None:
        if not 0.0 <= label_dropout < 1.0:
            raise ConfigError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0 (0 unconditional, 1 conditional, > 1 guided), got {guidance_scale}")
        if guidance_scale != 1.0 and label_dropout == 0.0:
            raise ConfigError(f"guidance_scale {guidance_scale} needs the unconditional model, which label_dropout > 0 trains; "
                              "set label_dropout (0.1 in Ho & Salimans 2022) or guidance_scale: 1.0")

    def drop_labels(self, y: torch.Tensor, label_dropout: float, null_label: int | None = None) -> torch.Tensor:
        """Each label replaced by the null token (by default `num_classes`) with probability `label_dropout`."""
        drop = torch.rand(y.shape, device=y.device) < label_dropout
        return torch.where(drop, torch.full_like(y, self.num_classes if null_label is None else null_label), y)

    # ---- what the model declares to the evaluation callbacks ---------------------------
    # Read by callbacks (DensityMetrics, MetricsWriter); computed from the config and the bound data, never
    # written by a callback.
    @property
    def density_kind(self) -> str | None:
        """What `log_prob(x)` is: "exact", "bound" (a bound on log p, e.g. IWAE), or None (no density)."""
        return None

    def bits_per_dim(self, nll: torch.Tensor) -> torch.Tensor | None:
        """NLL in nats per example -> bits/dim of 8-bit data, or None where bits/dim does not apply."""
        return None

    @property
    def omitted_metrics(self) -> dict[str, str]:
        """Metrics this model does not report on its data, and why (metrics.json: never shown as 0)."""
        return {}

    @property
    def metric_conventions(self) -> dict[str, str]:
        """What this model's own metrics mean (metrics.json): likelihood, binarization, dequantization."""
        return {}

    def test_step(self, batch, batch_idx: int) -> None:
        """Families log their own held-out losses here; NLL, bits/dim and sample metrics come from callbacks."""

    # ---- sampling -------------------------------------------------------------------
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define sample()")

    def trajectory(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(S + 1, n, *data_shape) on the CPU: the start, then x after each sampler step, for a visual strip (families
        whose `sample` takes `return_trajectory`: DDPM, NCSN, flow matching)."""
        return self.sample(n, labels, generator, return_trajectory=True)[1]

    def clamped(self, out, return_trajectory: bool = False):
        """A sampler's output `x` or `(x, path)` with x clamped to the data's value range (the path as drawn)."""
        x, path = out if return_trajectory else (out, None)
        x = x if self.value_range is None else x.clamp(*self.value_range)
        return (x, path) if return_trajectory else x

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor | None]:
        idx, _ = batch
        n = idx.shape[0]
        labels = (idx % self.num_classes).to(self.device) if self.conditional else None
        g = torch.Generator(device=self.device).manual_seed(self.predict_seed + batch_idx)
        return {"samples": self.sample(n, labels=labels, generator=g), "labels": labels}

    # ---- optimizers -----------------------------------------------------------------
    def build_optimizer(self, optimizer_callable, params, name: str = "optimizer") -> torch.optim.Optimizer:
        """Instantiate an injected OptimizerCallable, turning torch's range checks into config errors."""
        try:
            return optimizer_callable(params)
        except ValueError as e:  # e.g. "Invalid learning rate: -0.001"
            raise ConfigError(f"model.{name} rejected its arguments ({e}); fix model.{name}.init_args in the config") from None

    def optimizers_with_scheduler(self, optimizer_callable, params, scheduler_callable=None, interval: str = "epoch"):
        """configure_optimizers' return: the optimizer, and the injected LRSchedulerCallable when one is set, stepped
        every `interval` ("epoch", or "step": every optimizer step, for a fit of a fraction of an epoch)."""
        if interval not in ("epoch", "step"):
            raise ConfigError(f"scheduler_interval must be 'epoch' or 'step', got {interval!r}")
        optimizer = self.build_optimizer(optimizer_callable, params)
        if scheduler_callable is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler_callable(optimizer), "interval": interval}}

    def optimizer_with_warmup(self, optimizer_callable, params, warmup_steps: int, schedule: str = "constant"):
        """The optimizer, with a linear learning-rate warm-up over `warmup_steps` steps when > 0, then the rate
        held (`schedule: constant`) or decayed to 0 by a half cosine over the rest of the fit (`cosine`: diffusers'
        get_cosine_schedule_with_warmup; the fit's steps are Lightning's `trainer.estimated_stepping_batches`)."""
        check_lr_schedule(schedule)
        opt = self.build_optimizer(optimizer_callable, params)
        if warmup_steps == 0 and schedule == "constant":
            return opt
        total = int(self.trainer.estimated_stepping_batches) if schedule == "cosine" else 0
        factor = functools.partial(_warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the last line of defence: a checkpoint of non-finite weights is never written over a good one
        bad = self.nonfinite_weights(checkpoint.get("state_dict", {}))
        if bad:
            self.diverged(f"{len(bad)} weight tensors became non-finite (first: {bad[0]})")
        checkpoint["gen_lightning"] = {
            "model_class": _class_name(self),
            "data_shape": list(self.data_shape) if self.data_shape else None,
            "num_classes": self.num_classes,
            "value_range": list(self.value_range) if self.value_range else None,
            "data": self.data_info,
            "fit_log_dir": self._trainer.log_dir if self._trainer is not None else None,  # training curves
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
                # numpy's state as plain tensors and ints, so the checkpoint loads with weights_only=True
                "numpy": _numpy_state_to_tensors(np.random.get_state()),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("gen_lightning")
        if meta is None:
            raise CheckpointMismatchError(
                "this checkpoint was not written by gen_lightning (no 'gen_lightning' entry); train it with `gen fit` first"
            )
        if meta["model_class"] != _class_name(self):
            raise CheckpointMismatchError(
                f"the checkpoint holds a {meta['model_class']} but the config builds a {_class_name(self)}; "
                "use the config that trained it (saved as config.yaml in its run directory)"
            )
        saved_shape = tuple(meta["data_shape"]) if meta["data_shape"] else None
        if self.data_shape is not None and saved_shape is not None and saved_shape != self.data_shape:
            raise CheckpointMismatchError(
                f"the checkpoint was trained on data of shape {saved_shape} but the data now has shape {self.data_shape}; "
                "use the data config it was trained with"
            )
        if self.data_shape is None:  # load_from_checkpoint without a DataModule
            self.data_shape = saved_shape
            self.num_classes = meta["num_classes"]
            self.value_range = tuple(meta["value_range"]) if meta["value_range"] else None
            self.data_info = meta["data"]
        self.trained_progress = {
            "epochs": checkpoint.get("epoch", 0) + 1,
            "global_step": checkpoint.get("global_step", 0),
            "fit_log_dir": meta.get("fit_log_dir"),
        }
        self._rng_to_restore = meta.get("rng")

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        try:
            return super().load_state_dict(state_dict, strict=strict, **kwargs)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise CheckpointMismatchError(
                f"the checkpoint's weights do not fit {type(self).__name__} as configured ({detail}); "
                "use the config that trained it (saved as config.yaml in its run directory)"
            ) from None

    def on_train_start(self) -> None:
        # Resume exactly: put the RNGs back where they were when the checkpoint was written, at the
        # same point of the loop (after the sanity check, before the next batch's noise draws; a
        # mid-epoch checkpoint resumes without another on_train_epoch_start).
        rng, self._rng_to_restore = self._rng_to_restore, None
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))


LR_SCHEDULES = ("constant", "cosine")


def check_lr_schedule(schedule: str) -> None:
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")


def _warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate's factor at optimizer step `step` (0-based): (step + 1) / warmup_steps during the warm-up,
    then 1 (total_steps = 0: constant) or 0.5 (1 + cos(pi p)) with p = the share of the steps after the warm-up done."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
