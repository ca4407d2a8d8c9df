"""Divergence never costs a checkpoint, in every family: one guard (models/base.py) for all of them.

Each family's GMM config is fitted with a learning rate of 1000, as a user who mistyped it would.
The run must stop with exit status 2 and one line that names the step, the learning rate and
what is kept, and every checkpoint left in checkpoints/<experiment>/ must hold finite weights.
"""

import math

import pytest
import torch
from conftest import CONFIGS

from gen_lightning.cli import main
from gen_lightning.models.base import GenerativeModel

LR = "1000"
# config -> the learning-rate arguments of its optimizers
FAMILIES = {
    "vae_gmm": ["--model.init_args.optimizer.init_args.lr", LR],
    "gan_gmm_ring8": ["--model.init_args.g_optimizer.init_args.lr", LR, "--model.init_args.d_optimizer.init_args.lr", LR],
    "ddpm_gmm": ["--model.init_args.optimizer.init_args.lr", LR],
    "ncsn_gmm": ["--model.init_args.optimizer.init_args.lr", LR],
    "made_gmm": ["--model.init_args.optimizer.init_args.lr", LR],
    "flow_gmm": ["--model.init_args.optimizer.init_args.lr", LR],
    "ebm_gmm": ["--model.init_args.optimizer.init_args.lr", LR],
}
SMALL = ["--trainer.max_epochs", "4", "--trainer.limit_train_batches", "30", "--trainer.limit_val_batches", "1",
         "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_a_diverging_fit_stops_with_one_line_and_keeps_finite_checkpoints(name, workdir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), *SMALL, *FAMILIES[name]])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and " at step " in line and "learning rate 1000" in line, line
    assert "stopped before updating the weights" in line
    kept = sorted((workdir / "checkpoints" / name).glob("*.ckpt")) if (workdir / "checkpoints" / name).is_dir() else []
    if kept:
        assert "hold the last finite weights" in line
    else:
        assert "No checkpoint had been written yet" in line
    for path in kept:
        checkpoint = torch.load(path, weights_only=False)
        assert GenerativeModel.nonfinite_weights(checkpoint["state_dict"]) == [], path.name


def test_a_checkpoint_of_non_finite_weights_is_refused():
    """The last line of defence: on_save_checkpoint raises rather than write NaN weights."""
    from gen_lightning.errors import TrainingDivergedError
    from gen_lightning.models.vae import VAE

    state = {"w": torch.ones(3), "b": torch.tensor([0.0, math.nan]), "steps": torch.tensor(3)}
    assert GenerativeModel.nonfinite_weights(state) == ["b"]
    model = VAE.__new__(VAE)
    GenerativeModel.__init__(model)
    with pytest.raises(TrainingDivergedError, match="1 weight tensors became non-finite"):
        model.on_save_checkpoint({"state_dict": state})
