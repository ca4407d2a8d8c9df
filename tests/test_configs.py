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
