"""SampleQuality logs a sample-quality metric under val/ during fit, every N epochs."""

from pathlib import Path

import pytest
import torch

from gen_lightning.callbacks import SampleQuality
from gen_lightning.cli import main
from gen_lightning.errors import ConfigError

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "vae_gmm.yaml")


def test_gmm_modes_logged_every_n_epochs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["gen"])
    main(["fit", "--config", CONFIG, "--trainer.max_epochs", "2", "--data.init_args.n_train", "2048",
          "--trainer.callbacks+=gen_lightning.callbacks.SampleQuality",
          "--trainer.callbacks.init_args.metric", "gmm_modes",
          "--trainer.callbacks.init_args.every_n_epochs", "2",
          "--trainer.callbacks.init_args.num_samples", "500"])  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "lightning_logs" / "vae_gmm" / "version_0"))
    acc.Reload()
    for tag in ("val/modes_covered", "val/high_quality_fraction", "val/reverse_kl_modes"):
        events = acc.Scalars(tag)
        assert len(events) == 1  # epoch 2 only, not epoch 1 nor the sanity check
        assert torch.isfinite(torch.tensor(events[0].value)) or tag == "val/reverse_kl_modes"
    assert 0 <= acc.Scalars("val/modes_covered")[0].value <= 8


def test_classifier_fid_defaults_to_the_shipped_classifier():
    assert SampleQuality(metric="classifier_fid").classifier_ckpt is None  # load_classifier(None): the package's own


def test_bad_counts_are_refused():
    with pytest.raises(ConfigError, match="every_n_epochs"):
        SampleQuality(metric="gmm_modes", every_n_epochs=0)
