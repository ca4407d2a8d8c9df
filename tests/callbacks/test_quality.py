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


class _Clock:
    """A stand-in for time.perf_counter that returns the seconds it is set to."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fit_clock_logs_the_minutes_since_the_fit_started_after_each_validation_but_the_sanity_check(monkeypatch):
    from types import SimpleNamespace

    from gen_lightning.callbacks import FitClock

    clock, logged = _Clock(1000.0), []
    monkeypatch.setattr("gen_lightning.callbacks.quality.time.perf_counter", clock)
    module = SimpleNamespace(log=lambda name, value, **kw: logged.append((name, value)))
    trainer = SimpleNamespace(sanity_checking=True, callbacks=[])
    cb = FitClock()
    cb.setup(trainer, module, "fit")
    cb.on_fit_start(trainer, module)
    clock.now = 1030.0
    cb.on_validation_epoch_end(trainer, module)  # the sanity check: nothing logged
    trainer.sanity_checking = False
    clock.now = 1090.0
    cb.on_validation_epoch_end(trainer, module)
    clock.now = 1270.0
    cb.on_validation_epoch_end(trainer, module)
    assert logged == [("val/fit_minutes", 1.5), ("val/fit_minutes", 4.5)]


def test_fit_clock_refuses_a_fit_that_samplequality_already_times():
    from types import SimpleNamespace

    from gen_lightning.callbacks import FitClock

    trainer = SimpleNamespace(sanity_checking=False, callbacks=[SampleQuality(metric="gmm_modes")])
    with pytest.raises(ConfigError, match="drop the FitClock callback"):
        FitClock().setup(trainer, None, "fit")
    FitClock().setup(trainer, None, "test")  # only a fit is timed
