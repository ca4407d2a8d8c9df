"""Training throughput and sampling time of the GAN configs, on this machine's device.

    python benchmarks/gan_speed.py                       # every config below, batch sizes from the configs
    python benchmarks/gan_speed.py --configs gan_mnist --steps 20 --sample_batch 256

Each config is built exactly as `gen fit` builds it (gen_lightning.cli.GenCLI with run=False).
Training: `--warmup` batches, then `--steps` timed batches of the config's training step (one D
step, and one G step every n_critic batches) through Lightning, in samples per second.
Sampling: `sample()` on `--sample_batch` samples after one warm-up call, in ms per sample. The
device, thread count and batch sizes are printed beside each figure; on a shared CPU the
figures move with the load, so compare them within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch

from gen_lightning.cli import GenCLI

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["gan_gmm_grid25", "gan_mnist", "cgan_mnist", "gan_cifar10"]


class BatchTimer(L.Callback):
    """Wall time of each training batch after the first `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.seconds, self.samples = warmup, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        if batch_idx >= self.warmup:
            self.seconds += time.perf_counter() - self.start
            self.samples += batch[0].shape[0]


def build(name: str, overrides: list[str]):
    cli = GenCLI(args=["--config", str(REPO / "configs" / f"{name}.yaml"), *overrides], run=False)
    return cli.model, cli.datamodule


def train_throughput(model, dm, warmup: int, steps: int) -> float:
    timer = BatchTimer(warmup)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], accelerator="auto", devices=1)
    trainer.fit(model, dm)
    return timer.samples / timer.seconds


@torch.no_grad()
def sampling_ms(model, n: int, repeats: int) -> float:
    labels = torch.arange(n, device=model.device) % model.num_classes if model.conditional else None
    model.sample(n, labels=labels)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.sample(n, labels=labels)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / (repeats * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample_batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        model, dm = build(name, ["--trainer.logger", "false"])
        rows.append({
            "config": name,
            "train_samples_per_s": round(train_throughput(model, dm, args.warmup, args.steps), 1),
            "train_batch": dm.batch_size,
            "n_critic": model.n_critic,
            "sample_ms_per_sample": round(sampling_ms(model, args.sample_batch, args.repeats), 4),
            "sample_batch": args.sample_batch,
            "device": torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
        })
        print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
