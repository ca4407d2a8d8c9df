"""The two callbacks the CLI always adds: metrics.json after `gen test`, sample files after `gen predict`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from gen_lightning.callbacks.render import image_grid, save_figure, save_grid, scatter_figure, to_uint8


def run_dir(trainer: L.Trainer) -> Path:
    """Where a run's outputs go: the logger's version directory, else the default root."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def _jsonable(value):
    """Tensors become numbers; inf and nan become the strings "inf" and "nan" (JSON has no such numbers)."""
    value = value.item() if isinstance(value, torch.Tensor) else value
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


REPORT_SECTIONS = ("omitted", "conventions", "training", "sampling", "extra")


class ReportingCallback(L.Callback):
    """A callback whose findings go to metrics.json beside the logged metrics.

    It keeps them itself, never on the model: `omit` (a metric that does not apply, and why), `note` (what a number
    depends on, or a further result such as a class histogram); `MetricsWriter` collects `metrics_report()` from
    every callback of the run.
    """

    def reset_report(self) -> None:
        self._report: dict[str, dict] = {section: {} for section in REPORT_SECTIONS}

    def omit(self, names: list[str], reason: str) -> None:
        self.note("omitted", dict.fromkeys(names, reason))

    def note(self, section: str, entries: dict) -> None:
        if not hasattr(self, "_report"):
            self.reset_report()
        self._report[section].update(entries)

    def metrics_report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return getattr(self, "_report", {})


def collect_report(trainer: L.Trainer, pl_module: L.LightningModule, logged: dict) -> dict[str, dict]:
    """The model's declared `omitted_metrics` and `metric_conventions`, then every callback's `metrics_report()`
    (a later row wins). A metric that some callback logged is not reported as omitted."""
    merged: dict[str, dict] = {section: {} for section in REPORT_SECTIONS}
    merged["omitted"].update(getattr(pl_module, "omitted_metrics", {}))
    merged["conventions"].update(getattr(pl_module, "metric_conventions", {}))
    for callback in trainer.callbacks:
        if callable(getattr(callback, "metrics_report", None)):
            for section, entries in callback.metrics_report(trainer, pl_module).items():
                merged[section].update(entries)
    merged["omitted"] = {name: why for name, why in merged["omitted"].items() if name not in logged}
    return merged


class MetricsWriter(L.Callback):
    """After `gen test`: writes `metrics.json` in the run directory and logs the metrics with the hparams.

    metrics.json holds the test metrics, the metrics that do not apply and why (`omitted`, never shown
    as 0), the data and likelihood conventions, the checkpoint and how long the model had trained: the
    model's declarations and the rows every callback returns (`collect_report`).
    """

    def __init__(self, filename: str = "metrics.json"):
        self.filename = filename
        self.path: Path | None = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: _jsonable(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        rows = collect_report(trainer, pl_module, metrics)
        report = {
            "model": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "data": getattr(pl_module, "data_info", {}),
            "checkpoint": trainer.ckpt_path,
            "untrained": trainer.ckpt_path is None,  # only with `gen test --allow_untrained true`
            "trained": getattr(pl_module, "trained_progress", {}),
            "metrics": dict(sorted(metrics.items())),
            "omitted": rows["omitted"],
            "conventions": rows["conventions"],
            "training": rows["training"],
            "sampling": {"network_evaluations_per_sample": getattr(pl_module, "network_evaluations_per_sample", None),
                         **rows["sampling"]},
            "extra": rows["extra"],  # e.g. the class histogram of samples
            "num_parameters": sum(p.numel() for p in pl_module.parameters()),
        }
        if trainer.logger is not None:
            finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            trainer.logger.log_hyperparams(dict(pl_module.hparams), finite)
        if not trainer.is_global_zero:
            return
        self.path = run_dir(trainer) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"metrics written to {self.path}")


class SampleWriter(BasePredictionWriter):
    """After `gen predict`: writes N samples to `output` (a .pt file) and a picture beside it.

    The .pt file holds `{"samples": uint8 (N, C, H, W) or float (N, 2), "labels": (N,) or None}`.
    Images also give a PNG grid (one row per class for conditional models); 2-D data gives a
    scatter plot. `num_samples` overrides the DataModule's `predict_size`.
    """

    def __init__(self, num_samples: int | None = None, output: str | None = None, nrow: int | None = None):
        super().__init__(write_interval="epoch")
        self.num_samples = num_samples
        self.output = output
        self.nrow = nrow
        self.path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The predict loader is the DataModule's; tell it how many samples were asked for.
        if stage == "predict" and self.num_samples is not None and trainer.datamodule is not None:
            trainer.datamodule.predict_size = self.num_samples

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        samples = torch.cat([p["samples"].detach().cpu() for p in predictions])
        labels = None if predictions[0]["labels"] is None else torch.cat([p["labels"].cpu() for p in predictions])
        path = Path(self.output) if self.output else run_dir(trainer) / "samples.pt"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}_rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        is_image = samples.ndim == 4
        stored = to_uint8(samples, pl_module.value_range) if is_image else samples.float()
        torch.save({"samples": stored, "labels": labels}, path)
        if is_image:
            nrow = self.nrow or (pl_module.num_classes if labels is not None else max(1, int(len(samples) ** 0.5)))
            save_grid(image_grid(samples[:400], pl_module.value_range, nrow), path.with_suffix(".png"))
        else:
            fig = scatter_figure(samples, title=f"{type(pl_module).__name__}: {len(samples)} samples")
            save_figure(fig, path.with_suffix(".png"))
            plt.close(fig)
        self.path = path
        print(f"{len(samples)} samples written to {path} and {path.with_suffix('.png')}")
