"""FitStats: stability and speed of a fit without synchronising the device on every step."""

import lightning as L

from gen_lightning.callbacks import run_stats
from gen_lightning.callbacks.run_stats import FitStats
from gen_lightning.data import GMMDataModule
from gen_lightning.likelihoods import MixtureOfGaussians
from gen_lightning.models.autoregressive import AutoregressiveModel
from gen_lightning.nets.made import MADE


class Losses(L.Callback):
    """Every step's training loss, as training_step returned it."""

    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_scalars_are_read_on_logging_steps_and_the_clock_synchronises_only_where_training_pauses(monkeypatch):
    syncs, flushes = [], []
    monkeypatch.setattr(run_stats, "_sync", lambda device: syncs.append(device))
    flush = FitStats.flush
    monkeypatch.setattr(FitStats, "flush", lambda self: (flushes.append(len(self._pending)), flush(self)))
    stats, losses = FitStats(), Losses()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=10, limit_val_batches=1, log_every_n_steps=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[stats, losses])  # fmt: skip
    model = AutoregressiveModel(MADE([2], hidden=[8], params_per_dim=6), MixtureOfGaussians(2))
    log_calls = []
    log = model.log
    model.log = lambda name, value, **kw: (log_calls.append(name), log(name, value, **kw))
    trainer.fit(model, GMMDataModule(preset="ring8", n_train=320, n_val=32, n_test=32, batch_size=32))
    assert stats.batches == 20 and stats.images == 640
    # per epoch: the epoch's start, validation's start and end, the epoch's end; never per step
    assert len(syncs) <= 2 * 4
    assert sum(n > 0 for n in flushes) == 6  # scalars copied off the device after batches 1, 4, 8, 12, 16, 20
    summary = stats.summary()
    # the logging steps' losses, exactly: the first batch, then 4, 8, 12, 16, 20 (Lightning logs when (step + 1) % 4 == 0)
    logged = (0, 3, 7, 11, 15, 19)
    assert summary["steps"] == 20 and stats.history["train/loss"] == [losses.values[i] for i in logged]
    assert log_calls.count("train/loss") == len(logged)  # the model called self.log on those steps only (log_step)
    assert summary["loss_nonfinite"] == 0 and summary["loss_cv_tail"] is not None
    report = stats.report(trainer, model)
    assert 0 < report["speed"]["train_seconds"] <= report["speed"]["fit_wall_seconds"]
    assert report["speed"]["train_images_per_second"] == 640 / report["speed"]["train_seconds"]
