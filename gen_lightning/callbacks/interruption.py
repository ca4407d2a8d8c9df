"""Interrupting `gen fit` loses nothing: SIGTERM or Ctrl+C saves a resumable checkpoint of the current step.

Lightning already turns SIGTERM into a stop at the end of the batch in flight (its signal
connector sets `trainer.received_sigterm`, and the loops raise `SIGTERMException` there). This
callback makes Ctrl+C (SIGINT) take the same path instead of raising KeyboardInterrupt in the
middle of a backward pass or an optimizer step; a second Ctrl+C interrupts at once. When the stop
comes, it saves the checkpoint where the run's `last.ckpt` lives, so

    gen fit --config X.yaml --ckpt_path checkpoints/X/last.ckpt

resumes from that step (the DataModule skips the batches of the epoch already trained on,
data.base.ResumableDataModule), and `gen` exits 143 (SIGTERM) or 130 (SIGINT), as shells expect.
The checkpoint is written atomically (checkpoint_io.AtomicCheckpointIO): a kill during the write
leaves the previous file readable.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the run's last.ckpt is: the ModelCheckpoint that writes `last`, else any one's folder, else the root."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    for cb in callbacks:
        if cb.dirpath and (cb.filename == "last" or cb.save_last):
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST if cb.save_last else 'last'}{cb.FILE_EXTENSION}"
    folder = next((cb.dirpath for cb in callbacks if cb.dirpath), None) or trainer.default_root_dir
    return Path(folder) / "last.ckpt"


class SaveOnInterrupt(L.Callback):
    """On SIGTERM or SIGINT: finish the batch in flight; during fit save last.ckpt; exit 143 or 130."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.message: str | None = None
        self._previous_sigint = None
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.signum, self.message, self._trainer = None, None, trainer
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()

    def _on_sigint(self, signum, frame) -> None:
        if self.signum == signal.SIGINT:  # the second Ctrl+C: stop now, as Python would
            raise KeyboardInterrupt
        self.signum = signal.SIGINT
        print("\ninterrupt: stopping after the current batch (Ctrl+C again to stop at once)", flush=True)
        self._trainer._signal_connector.received_sigterm = True  # Lightning's stop-at-batch-end path

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.signum or signal.SIGTERM
        exception.code = 128 + signum  # SIGTERMException is a SystemExit: this is the process's exit status
        name = signal.Signals(signum).name
        if trainer.state.fn != "fit":
            self.message = f"{name} during {trainer.state.fn}: stopped, nothing written"
        else:
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            self.message = (
                f"{name} at step {trainer.global_step} (epoch {trainer.current_epoch}, after batch {batches} of "
                f"{trainer.num_training_batches}); saved {path}. Resume with the same command and --ckpt_path {path}"
            )
        print(f"error: {self.message}", file=sys.stderr, flush=True)
