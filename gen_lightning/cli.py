"""`gen`: the LightningCLI behind every experiment.

    gen fit      --config configs/vae_gmm.yaml
    gen test     --config configs/vae_gmm.yaml --ckpt_path checkpoints/vae_gmm/last.ckpt
    gen compare  lightning_logs/*/version_1 --output docs/results/compare
    gen predict  --config configs/vae_gmm.yaml --ckpt_path checkpoints/vae_gmm/last.ckpt \
                 --samples.num_samples 1000 --samples.output outputs/vae_gmm.pt

The model and data are chosen by `class_path` (subclass mode), so every family and
DataModule plugs in without a line here. Four callbacks are always on: `metrics` writes
metrics.json after `gen test`, `samples` writes the files of `gen predict`, `fit_stats`
records stability and speed during `gen fit`, and `speed` times sampling at `gen test`. Mistakes a
user can fix (gen_lightning.errors.GenError) print one line, `error: ...`, and exit 2.
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, WeightAveraging
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from gen_lightning.callbacks.outputs import MetricsWriter, SampleWriter
from gen_lightning.callbacks.run_stats import FitStats, SamplingSpeed
from gen_lightning.errors import GenError


class GenCLI(LightningCLI):
    def __init__(self, args: ArgsType = None, run: bool = True):
        super().__init__(
            # any LightningModule: the generative families and the MNIST domain classifier
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # every family injects its own OptimizerCallable(s)
            args=args,
            run=run,
        )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # EMA (WeightAveraging) swaps the average in at validation start and back at validation end.
        # Ordered after the other callbacks, it swaps back only once sample grids and quality metrics
        # have drawn from the EMA weights. Checkpoint callbacks stay last, as Lightning puts them.
        def rank(cb) -> int:
            return 2 if isinstance(cb, Checkpoint) else 1 if isinstance(cb, WeightAveraging) else 0

        trainer.callbacks = sorted(trainer.callbacks, key=rank)
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MetricsWriter, "metrics")
        parser.add_lightning_class_args(SampleWriter, "samples")
        parser.add_lightning_class_args(FitStats, "fit_stats")
        parser.add_lightning_class_args(SamplingSpeed, "speed")


def main(args: ArgsType = None) -> None:
    """Console entry point; tests drive it as `main(["fit", "--config", ...])`.

    `gen compare RUN_DIR...` is not a Trainer method, so it is dispatched before LightningCLI.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["compare"]:
        from gen_lightning.report import main as compare_main

        return compare_main(argv[1:])
    try:
        GenCLI(args=args)
    except GenError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
