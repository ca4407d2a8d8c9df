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
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, WeightAveraging
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from gen_lightning.callbacks.outputs import MetricsWriter, SampleWriter
from gen_lightning.callbacks.run_stats import FitStats, SamplingSpeed
from gen_lightning.errors import CheckpointMismatchError, GenError

# Lightning's own notices that say nothing to a gen user: modules passed to __init__ are saved
# by checkpointing anyway (the CLI stores their class_path in hparams), and an internal deprecation.
QUIET_WARNINGS = (
    r"Attribute '.*' is an instance of `nn.Module` and is already saved during checkpointing",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def check_checkpoint_class(ckpt_path: str | None, model_config) -> None:
    """Refuse a checkpoint written by another model class than the config builds.

    LightningCLI would otherwise replace the config's model with the checkpoint's
    hyperparameters, class included, and run a model the user did not ask for.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    meta = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("gen_lightning")
    wanted = getattr(model_config, "class_path", None)
    if meta is not None and wanted is not None and meta["model_class"] != wanted:
        raise CheckpointMismatchError(
            f"{ckpt_path} holds a {meta['model_class']} but the config builds a {wanted}; "
            "use the config that trained it (saved as config.yaml in its run directory)"
        )


def find_gen_error(exc: BaseException | None) -> GenError | None:
    """The user-facing error behind `exc`, if any (jsonargparse wraps errors raised in __init__)."""
    while exc is not None:
        if isinstance(exc, GenError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# Model arguments that only change how a trained model is sampled or evaluated, never its weights:
# with --ckpt_path they come from this run's config, not from the checkpoint's hyperparameters.
SAMPLING_OPTIONS = ("sampler", "guidance_scale", "sample_temperature", "sample_steps", "sample_mode", "iw_samples", "iw_chunk", "predict_seed")


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

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint_class(self.config[subcommand].get("ckpt_path"), self.config[subcommand].model)

    def _parse_ckpt_path(self) -> None:
        """Rebuild the model from the checkpoint's hyperparameters (LightningCLI), but keep this run's
        sampling-time options (SAMPLING_OPTIONS), so that e.g. `--config configs/overrides/ddim50.yaml`
        or `--model.init_args.guidance_scale 3` apply to `gen test`/`gen predict` of a trained model.
        None of them changes the weights."""
        subcommand = self.config.get("subcommand")
        init_args = self.config[subcommand].get("model", {}).get("init_args") if subcommand else None
        wanted = {k: init_args[k] for k in SAMPLING_OPTIONS if init_args is not None and k in init_args}
        super()._parse_ckpt_path()
        if not wanted:
            return
        rebuilt = self.config[subcommand].model.get("init_args")
        for key, value in wanted.items():
            if rebuilt is not None and key in rebuilt and rebuilt[key] != value:
                rebuilt[key] = value

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
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    try:
        GenCLI(args=args)
    except Exception as e:
        user_error = find_gen_error(e)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
