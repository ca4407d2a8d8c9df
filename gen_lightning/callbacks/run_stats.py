"""Training stability and speed, measured the same way for every family.

`FitStats` (during `gen fit`) records every `train/*` scalar on the steps Lightning logs
(every `log_every_n_steps`: the families hand their scalars to `self.log` only there,
models/divergence.py `log_step`), the number of non-finite losses among them, the wall time and
the training throughput. It never synchronises the device per step: a `float()` of a GPU scalar or
a `torch.cuda.synchronize` each step would serialise the pipeline, so the scalars are copied off
the device only on those logging steps, and the clock is synchronised only where training pauses
(epoch ends and validation), which keeps data loading inside the measured training time. Its
summary travels in every checkpoint, so `gen test --ckpt_path` reads it back and
puts it in metrics.json. `SamplingSpeed` (during `gen test`) times `sample()` at a fixed batch size.
Every figure carries the device, dtype and batch size it was measured with.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from gen_lightning.callbacks.outputs import ReportingCallback
from gen_lightning.errors import ConfigError
from gen_lightning.models.divergence import is_logging_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def coefficient_of_variation(values: list[float]) -> float | None:
    """std / |mean| of the finite values; None when it is undefined."""
    finite = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
    if len(finite) < 2 or finite.mean().abs() < 1e-12:
        return None
    return float(finite.std() / finite.mean().abs())


def conditions(trainer: L.Trainer, pl_module: L.LightningModule, batch_size: int) -> dict:
    return {
        "device": torch.cuda.get_device_name(pl_module.device) if pl_module.device.type == "cuda" else "cpu",
        "num_devices": trainer.world_size,
        "precision": str(trainer.precision),
        "batch_size": batch_size,
        "cpu_threads": torch.get_num_threads(),
    }


MIN_TAIL = 8  # logged values the stability tail takes at least (a short fit logs few)
CHECKPOINT_KEY = "gen_lightning_fit_stats"  # the fit's summary, beside the weights


class FitStats(L.Callback):
    """Stability (loss CV over the last `tail_fraction` of the logged steps, at least the last MIN_TAIL of them;
    non-finite losses) and speed of a fit."""

    def __init__(self, tail_fraction: float = 0.1):
        if not 0 < tail_fraction <= 1:
            raise ConfigError(f"fit_stats.tail_fraction must be in (0, 1], got {tail_fraction}")
        self.tail_fraction = tail_fraction
        self.history: dict[str, list[float]] = {}
        self.train_seconds = 0.0
        self.images = 0
        self.batches = 0
        self.batch_size = 0
        self.segment_start: float | None = None  # the clock of the training stretch under way
        self.paused_for_validation = False
        self._pending: dict[str, list[torch.Tensor]] = {}  # this stretch's scalars, still on the device
        self.fitted: dict = {}  # the summary of the fit: this process's, or the one in the checkpoint tested

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()
        self.wall_before = getattr(self, "wall_before", 0.0)  # from an earlier run this one resumes

    # ---- the clock runs while training, stops for validation; synchronised only there ---------
    def resume_clock(self, pl_module) -> None:
        _sync(pl_module.device)
        self.segment_start = time.perf_counter()

    def stop_clock(self, pl_module) -> None:
        if self.segment_start is not None:
            _sync(pl_module.device)
            self.train_seconds += time.perf_counter() - self.segment_start
            self.segment_start = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.resume_clock(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.stop_clock(pl_module)

    def train_seconds_so_far(self) -> float:
        """Training time up to now, the stretch under way included (a checkpoint or an interruption mid-epoch)."""
        return self.train_seconds + (time.perf_counter() - self.segment_start if self.segment_start is not None else 0.0)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.paused_for_validation = self.segment_start is not None  # validation inside a training epoch
        self.stop_clock(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.paused_for_validation:
            self.paused_for_validation = False
            self.resume_clock(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = batch[0].shape[0] if isinstance(batch, (tuple, list)) else len(batch)
        self.images += n * trainer.world_size
        self.batch_size = max(self.batch_size, n)  # the configured size, not a short last batch
        self.batches += 1
        if not is_logging_step(trainer):  # the other steps log nothing: callback_metrics still hold older values
            return
        for key, value in trainer.callback_metrics.items():  # kept on the device: no float() here
            if key.startswith("train/") and not key.endswith("_epoch") and value.numel() == 1:
                self._pending.setdefault(key.removesuffix("_step"), []).append(value.detach().reshape(()).clone())
        self.flush()  # one transfer (and sync) per scalar name per logging step

    def flush(self) -> None:
        """Move the scalars kept on the device into `history`: one transfer (and sync) per scalar name."""
        for key, values in self._pending.items():
            self.history.setdefault(key, []).extend(torch.stack(values).float().cpu().tolist())
        self._pending = {}

    def summary(self) -> dict:
        self.flush()
        stats: dict = {"steps": self.batches}
        for key, values in sorted(self.history.items()):
            tail = values[-max(int(len(values) * self.tail_fraction), min(len(values), MIN_TAIL)) :]
            name = key.removeprefix("train/")
            stats[f"{name}_cv_tail"] = coefficient_of_variation(tail)
            stats[f"{name}_nonfinite"] = sum(not math.isfinite(v) for v in values)
            if "loss" in name:
                finite_tail = [v for v in tail if math.isfinite(v)]
                stats[f"{name}_std_tail"] = float(torch.tensor(finite_tail).std()) if len(finite_tail) > 1 else None
        return stats

    def report(self, trainer, pl_module) -> dict:
        wall = self.wall_before + time.perf_counter() - self.fit_start
        train_seconds = self.train_seconds_so_far()
        return {
            "stability": self.summary(),
            "speed": {
                "fit_wall_seconds": wall,
                "train_seconds": train_seconds,
                "train_images_per_second": self.images / train_seconds if train_seconds else None,
                "conditions": conditions(trainer, pl_module, self.batch_size),
            },
        }

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.report(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.fitted = checkpoint.get(CHECKPOINT_KEY, {})

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fitted = self.report(trainer, pl_module)

    def metrics_report(self, trainer, pl_module) -> dict:
        return {"training": self.fitted}

    def state_dict(self) -> dict:
        self.flush()
        wall = self.wall_before + time.perf_counter() - getattr(self, "fit_start", time.perf_counter())
        return {"history": self.history, "train_seconds": self.train_seconds_so_far(), "images": self.images,
                "batches": self.batches, "wall": wall}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.train_seconds, self.images = state["history"], state["train_seconds"], state["images"]
        self.batches = state.get("batches", 0)
        self.wall_before = state["wall"]


class SamplingSpeed(ReportingCallback):
    """At `gen test`: ms per sample of `sample()` at a fixed batch size, after one warm-up batch."""

    def __init__(self, batch_size: int = 256, repeats: int = 3, enabled: bool = True):
        if batch_size < 1 or repeats < 1:
            raise ConfigError(f"speed.batch_size and speed.repeats must be >= 1, got {batch_size} and {repeats}")
        self.batch_size, self.repeats, self.enabled = batch_size, repeats, enabled

    @torch.no_grad()
    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or not hasattr(pl_module, "sample"):
            return
        k = getattr(pl_module, "num_classes", None) if getattr(pl_module, "conditional", False) else None
        labels = torch.arange(self.batch_size, device=pl_module.device) % k if k else None
        g = torch.Generator(device=pl_module.device).manual_seed(0)
        pl_module.sample(self.batch_size, labels=labels, generator=g)  # warm-up
        _sync(pl_module.device)
        start = time.perf_counter()
        for _ in range(self.repeats):
            pl_module.sample(self.batch_size, labels=labels, generator=g)
        _sync(pl_module.device)
        ms = 1000 * (time.perf_counter() - start) / (self.repeats * self.batch_size)
        pl_module.log("test/sample_ms_per_img", ms, sync_dist=False)
        self.note("sampling", {
            **conditions(trainer, pl_module, self.batch_size),
            "network_evaluations_per_sample": getattr(pl_module, "network_evaluations_per_sample", None),
        })
