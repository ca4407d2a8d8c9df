"""`gen`: the LightningCLI behind every experiment.

    gen fit      --config configs/vae_gmm.yaml
    gen test     --config configs/vae_gmm.yaml --ckpt_path checkpoints/vae_gmm/last.ckpt
    gen compare  lightning_logs/*/version_1 --output docs/results/compare
    gen predict  --config configs/vae_gmm.yaml --ckpt_path checkpoints/vae_gmm/last.ckpt \
                 --samples.num_samples 1000 --samples.output outputs/vae_gmm.pt

The model and data are chosen by `class_path` (subclass mode), so every family and
DataModule plugs in without a line here. Five callbacks are always on: `metrics` writes
metrics.json after `gen test`, `samples` writes the files of `gen predict`, `fit_stats`
records stability and speed during `gen fit`, `speed` times sampling at `gen test`, and
`density` logs NLL, bits/dim and KL(data || model) of every model that declares a density. Mistakes a
user can fix (gen_lightning.errors.GenError) print one line, `error: ...`, and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, WeightAveraging
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gen_lightning.callbacks.density import DensityMetrics
from gen_lightning.callbacks.outputs import MetricsWriter, SampleWriter
from gen_lightning.callbacks.run_stats import FitStats, SamplingSpeed
from gen_lightning.callbacks.interruption import SaveOnInterrupt
from gen_lightning.checkpoint_io import AtomicCheckpointIO
from gen_lightning.errors import CheckpointError, CheckpointMismatchError, ConfigError, GenError

# Lightning's own notices that say nothing to a gen user: modules passed to __init__ are saved
# by checkpointing anyway (the CLI stores their class_path in hparams), and an internal deprecation.
QUIET_WARNINGS = (
    r"Attribute '.*' is an instance of `nn.Module` and is already saved during checkpointing",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # our DataModules resume mid-epoch through their own state_dict (data.base.ResumableDataModule)
    r"You're resuming from a checkpoint that ended before the epoch ended",
)

# Subcommands that evaluate or sample a model: without --ckpt_path they would score random weights.
EVALUATING = ("validate", "test", "predict")


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX tiles: without them bf16 matmuls and convolutions are emulated on the CPU."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def warn_if_bf16_is_slow(trainer: L.Trainer) -> None:
    """One line when a CPU run asks for bf16 that this CPU can only emulate (measured 10-20x slower here)."""
    precision = str(trainer.precision)
    if "bf16" in precision and trainer.strategy.root_device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            f"precision {precision} on a CPU without avx512_bf16/AMX is emulated and much slower than float32 "
            "(a U-Net step 10x, a DCGAN step 20x on an AVX2 CPU); use --trainer.precision 32-true here",
            stacklevel=2,
        )


def model_class(model_config) -> type | None:
    """The class a config's `model.class_path` names (None when it cannot be imported)."""
    path = getattr(model_config, "class_path", None)
    module, _, name = (path or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def check_not_untrained(subcommand: str, config) -> None:
    """`gen test|validate|predict` of a generative model needs a trained checkpoint, or an explicit opt-in."""
    from gen_lightning.models.base import GenerativeModel

    cls = model_class(config.model)
    if subcommand not in EVALUATING or config.get("ckpt_path") or config.get("allow_untrained"):
        return
    if cls is not None and issubclass(cls, GenerativeModel):
        raise ConfigError(
            f"gen {subcommand} without --ckpt_path would {'sample' if subcommand == 'predict' else 'score'} an untrained "
            f"{cls.__name__}; pass --ckpt_path checkpoints/<experiment>/last.ckpt (or --allow_untrained true to do it on purpose)"
        )


def summarize_parser_error(lines: list[str]) -> str:
    """jsonargparse's nested union report -> its one informative line.

    'Parser key "model": ... Problem with given class_path 'X.VAE': / Option 'foo' is not accepted'
    becomes 'model (X.VAE): Option 'foo' is not accepted'.
    """
    first = lines[0].strip()
    key = first.removeprefix('Parser key "').split('"', 1)[0] if first.startswith('Parser key "') else None
    for i, line in enumerate(lines[:-1]):
        if "Problem with given class_path" in line:
            class_path = line.split("'")[1] if line.count("'") >= 2 else "?"
            return f"{key or 'config'} ({class_path}): {lines[i + 1].strip()}"
    return first


class GenArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, but a mistake prints its one line first, and a pointer to --help instead of the usage."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        lines = [line for line in str(message).strip().splitlines() if line.strip()] or ["invalid arguments"]
        sys.stderr.write(f"error: {summarize_parser_error(lines)}\n")
        if len(lines) > 1:
            sys.stderr.write("details:\n" + "\n".join(lines[:14]) + ("\n  ..." if len(lines) > 14 else "") + "\n")
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"(`{prog} --help` lists the arguments)\n")
        raise SystemExit(2)


DESCRIPTION = """\
gen: train, evaluate and compare generative models; one YAML config is one experiment.

  gen fit      --config configs/X.yaml
  gen test     --config configs/X.yaml --ckpt_path checkpoints/X/last.ckpt   (writes metrics.json)
  gen predict  --config configs/X.yaml --ckpt_path checkpoints/X/last.ckpt --samples.num_samples N --samples.output F.pt
  gen validate --config configs/X.yaml --ckpt_path checkpoints/X/last.ckpt
  gen compare  RUN_DIR [RUN_DIR ...] --output compare/   (tables and figures of finished runs; gen compare --help)
"""


def read_checkpoint(ckpt_path: str) -> dict | None:
    """The checkpoint's contents, or one CheckpointError naming the file and what is wrong with it.

    None when the file holds Python objects that `weights_only` loading refuses (hyperparameters
    of nets built in Python): Lightning loads those itself.
    """
    path = Path(ckpt_path)
    if not path.exists():
        raise CheckpointError(f"--ckpt_path {ckpt_path} does not exist; pass a .ckpt written by `gen fit` (e.g. checkpoints/<experiment>/last.ckpt)")
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {ckpt_path} is a folder; pass a .ckpt file in it")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} is not a readable checkpoint: truncated or not a PyTorch file "
            f"({path.stat().st_size} bytes, not a zip archive); use an intact .ckpt, e.g. the run's best-*.ckpt"
        )
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            return None
        raise CheckpointError(f"--ckpt_path {ckpt_path} is not a readable checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"--ckpt_path {ckpt_path} is not a readable checkpoint: truncated or not a PyTorch file ({reason}); "
            "use an intact .ckpt, e.g. the run's best-*.ckpt"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {ckpt_path} is a PyTorch file but not a Lightning checkpoint (no state_dict); "
                              "pass a .ckpt written by `gen fit`")
    return checkpoint


def check_checkpoint_class(ckpt_path: str | None, model_config) -> None:
    """Refuse an unreadable checkpoint, or one written by another model class than the config builds.

    LightningCLI would otherwise replace the config's model with the checkpoint's
    hyperparameters, class included, and run a model the user did not ask for.
    """
    if not ckpt_path:
        return
    checkpoint = read_checkpoint(ckpt_path)
    if checkpoint is None:
        return
    meta = checkpoint.get("gen_lightning")
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
def sampling_options(class_path: str | None) -> tuple[str, ...]:
    """The init arguments the model class declares as sampling-time options (GenerativeModel.sampling_options)."""
    if not class_path:
        return ()
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return ()  # LightningCLI reports the unknown class itself
    return tuple(getattr(cls, "sampling_options", ()))


class GenCLI(LightningCLI):
    def __init__(self, args: ArgsType = None, run: bool = True):
        super().__init__(
            # any LightningModule: the generative families and the MNIST domain classifier
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_class=GenArgumentParser,
            parser_kwargs={"description": DESCRIPTION, "formatter_class": argparse.RawDescriptionHelpFormatter},
            auto_configure_optimizers=False,  # every family injects its own OptimizerCallable(s)
            args=args,
            run=run,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_not_untrained(subcommand, self.config[subcommand])
            check_checkpoint_class(self.config[subcommand].get("ckpt_path"), self.config[subcommand].model)

    def _parse_ckpt_path(self) -> None:
        """Rebuild the model from the checkpoint's hyperparameters (LightningCLI), but keep this run's
        sampling-time options (the model class's `sampling_options`), so that e.g. `--config configs/overrides/ddim50.yaml`
        or `--model.init_args.guidance_scale 3` apply to `gen test`/`gen predict` of a trained model.
        None of them changes the weights."""
        subcommand = self.config.get("subcommand")
        model = self.config[subcommand].get("model", {}) if subcommand else {}
        init_args = model.get("init_args") if model else None
        options = sampling_options(model.get("class_path") if model else None)
        wanted = {k: init_args[k] for k in options if init_args is not None and k in init_args}
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

        trainer.callbacks = sorted([*trainer.callbacks, SaveOnInterrupt()], key=rank)
        warn_if_bf16_is_slow(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the user configured
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MetricsWriter, "metrics")
        parser.add_lightning_class_args(SampleWriter, "samples")
        parser.add_lightning_class_args(FitStats, "fit_stats")
        parser.add_lightning_class_args(SamplingSpeed, "speed")
        parser.add_lightning_class_args(DensityMetrics, "density")
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="gen test/validate/predict without --ckpt_path: evaluate the untrained model on purpose")


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
