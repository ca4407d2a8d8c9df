"""Every shipped config is a complete experiment that `gen` parses, and it keeps last.ckpt up to date."""

import sys
from pathlib import Path

import pytest
import yaml

from gen_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1] / "configs"
# the paper-sized recipes (configs/*.yaml) and the CPU tier of the MNIST league (configs/cpu/*.yaml)
CONFIGS = sorted(ROOT.glob("*.yaml")) + sorted((ROOT / "cpu").glob("*.yaml"))


def experiment(config: Path) -> str:
    """checkpoints/<experiment>: `vae_mnist` for configs/vae_mnist.yaml, `cpu/vae_mnist` for configs/cpu/vae_mnist.yaml."""
    return config.relative_to(ROOT).with_suffix("").as_posix()


@pytest.mark.parametrize("config", CONFIGS, ids=experiment)
def test_config_parses(config, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gen"])
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed_everything"] is not None and printed["model"]["class_path"] and printed["data"]["class_path"]


@pytest.mark.parametrize("config", CONFIGS, ids=experiment)
def test_config_writes_last_checkpoint_every_epoch(config):
    # Lightning 2.6's `save_last: true` beside a monitored top-1 only rewrites last.ckpt when the best
    # improves, so each config has an unmonitored ModelCheckpoint named `last` instead.
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    checkpoints = [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert any(c.get("filename") == "last" and c.get("monitor") is None for c in checkpoints), config.name
    assert all(c.get("dirpath") == f"checkpoints/{experiment(config)}" for c in checkpoints), config.name
    # With validation inside the epoch, Lightning writes an unmonitored checkpoint only after validations unless
    # it is told to save at the epoch's end, so the steps after the last validation would be lost (the test below).
    trainer = yaml.safe_load(config.read_text())["trainer"]
    if trainer.get("val_check_interval", 1.0) != 1.0:
        last = next(c for c in checkpoints if c.get("filename") == "last")
        assert last.get("save_on_train_epoch_end") is True, f"{config.name}: set save_on_train_epoch_end: true on `last`"


@pytest.mark.parametrize("save_on_train_epoch_end, saved_step", [(None, 4), (True, 5)])
def test_last_checkpoint_holds_the_final_step_with_validation_inside_the_epoch(tmp_path, save_on_train_epoch_end,
                                                                               saved_step):
    """max_steps 5 with validation every 2 batches: by default last.ckpt stops at step 4, the last validation's."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from gen_lightning.data import GMMDataModule
    from gen_lightning.models.flow import Flow
    from gen_lightning.nets.flows import VectorRealNVP

    torch.manual_seed(0)
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False,
                           save_on_train_epoch_end=save_on_train_epoch_end)
    trainer = L.Trainer(max_steps=5, val_check_interval=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[last])
    trainer.fit(Flow(VectorRealNVP(2, num_couplings=2, hidden=8)),
                datamodule=GMMDataModule(preset="ring8", n_train=640, n_val=64, n_test=8, batch_size=64))
    assert trainer.global_step == 5
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == saved_step


def test_stacked_configs_override_in_order(tmp_path, capsys, monkeypatch):
    """`--config base.yaml --config override.yaml` as in LightningCLI: the later file wins, the rest stays."""
    monkeypatch.setattr(sys, "argv", ["gen"])
    override = tmp_path / "short.yaml"
    override.write_text("trainer:\n  max_epochs: 3\nmodel:\n  init_args:\n    beta: 0.5\n")
    base = next(c for c in CONFIGS if c.stem == "vae_gmm")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(base), "--config", str(override), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 3 and printed["model"]["init_args"]["beta"] == 0.5
    assert printed["model"]["init_args"]["latent_dim"] == yaml.safe_load(base.read_text())["model"]["init_args"]["latent_dim"]


@pytest.mark.parametrize("config", CONFIGS, ids=experiment)
def test_a_per_step_decay_ends_at_the_last_step(config):
    """A cosine or linear decay stepped every step must span the fit: past T_max the cosine's rate climbs back up,
    and a linear decay that ends early leaves its last steps at the floor (one that ends late never reaches it)."""
    loaded = yaml.safe_load(config.read_text())
    args = loaded["model"].get("init_args", {})
    scheduler = args.get("scheduler") or {}
    length = {"CosineAnnealingLR": "T_max", "LinearLR": "total_iters"}.get(scheduler.get("class_path", "").rsplit(".", 1)[-1])
    if args.get("scheduler_interval") != "step" or length is None:
        return
    trainer, data = loaded["trainer"], loaded["data"]["init_args"]
    steps = trainer.get("max_steps", -1)
    if steps == -1:  # epochs of MNIST's 55,000 training digits (5,000 held out for validation)
        assert loaded["data"]["class_path"].endswith("MNISTDataModule"), f"{config.name}: count its epoch's steps here"
        steps = trainer["max_epochs"] * -(-(60000 - data.get("val_size", 5000)) // data["batch_size"])
    assert scheduler["init_args"][length] == steps, config.name
