"""One divergence guard for every family: training stops before a non-finite update, with one line that says what
happened, at which step and learning rate, which checkpoints hold the last finite weights, and what to try.

Lightning calls `on_before_backward` and `on_before_optimizer_step` for automatic and manual optimization alike, so
the guard sees every optimizer step; `on_save_checkpoint` of models/base.py refuses non-finite weights as the last
line of defence (`nonfinite_weights`). Families set `divergence_advice`, and `optimizer_names` when they have
several optimizers (the GAN).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from gen_lightning.errors import TrainingDivergedError


def is_logging_step(trainer: L.Trainer | None) -> bool:
    """Whether a training step's scalars are handed to `self.log`: on the steps Lightning writes to the loggers (every
    `log_every_n_steps`, the test its LearningRateMonitor makes; every step of a `fast_dev_run`), and on the fit's
    first step, so that `callback_metrics` and the progress bar hold every key from the start. True outside a Trainer.
    Valid from `training_step` through `on_train_batch_end`."""
    if trainer is None:
        return True
    first = trainer.fit_loop.epoch_loop._batches_that_stepped == 0
    return first or bool(trainer.fast_dev_run) or trainer._logger_connector.should_update_logs


class DivergenceGuard(L.LightningModule):
    """The guard's hooks and messages; models/base.py's GenerativeModel builds on it."""

    def __init__(self):
        super().__init__()
        # the guard's view of the current step: the loss being backpropagated, the gradient norm it checked
        self._guarded_loss: torch.Tensor | None = None
        self.last_grad_norm: torch.Tensor | None = None

    # what a family suggests when its training diverges; each family sets its own
    divergence_advice: str = "Lower the learning rate"
    # what each optimizer of configure_optimizers trains, in order, when there are several (GAN)
    optimizer_names: tuple[str, ...] = ()
    # log the gradient norm that the guard computes anyway as train/grad_norm (flows, EBM)
    log_grad_norm: bool = False

    def log_step(self, metrics: dict[str, torch.Tensor], prog_bar: str | None = "train/loss") -> None:
        """A training step's scalars, handed to `self.log` only on the steps Lightning writes to the loggers
        (`is_logging_step`). Each `self.log` costs about 1 ms on a CPU (Lightning moves its whole metric state to the
        value's device), as much as a small model's forward pass, and the others would be overwritten unseen; the
        TensorBoard curves are the same. `prog_bar` names the key the progress bar shows, refreshed on those steps."""
        if not is_logging_step(self._trainer):
            return
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key == prog_bar)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Keep the loss being backpropagated (also under manual optimization), for the check before the step."""
        self._guarded_loss = loss.detach()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before the optimizer changes any weight when the loss or the gradients are not finite.

        Lightning calls this after backward and before `optimizer.step()`, for automatic and manual
        optimization alike, so the weights (and with them every checkpoint) stay the last finite ones.
        One host sync per step: the loss and the gradient norm are checked together.
        """
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        loss = self._guarded_loss
        loss = torch.zeros((), device=grad_norm.device) if loss is None else loss.float().to(grad_norm.device)
        if not bool(torch.isfinite(torch.stack([loss, grad_norm.float()])).all()):
            whose = self._optimizer_name(optimizer)
            what = (f"the {whose}loss became {loss.item()}" if not math.isfinite(loss.item())
                    else f"the {whose}gradient norm became {grad_norm.item()}")
            self.diverged(what)
        self.last_grad_norm = grad_norm.detach()
        if self.log_grad_norm:
            self.log_step({"train/grad_norm": self.last_grad_norm})

    def _optimizer_name(self, optimizer) -> str:
        """'discriminator ' when a family names its optimizers, else ''."""
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        for name, opt in zip(self.optimizer_names, optimizers):
            if optimizer is opt or getattr(optimizer, "optimizer", None) is opt:
                return f"{name} "
        return ""

    def diverged(self, what: str) -> None:
        """Raise the one-line TrainingDivergedError: what happened, at which step, what is kept, what to try."""
        raise TrainingDivergedError(
            f"{what} at step {self.global_step} (epoch {self.current_epoch}){self._learning_rates()}; training stopped "
            f"before updating the weights. {self._checkpoints_kept()} {self.divergence_advice}"
        )

    def _learning_rates(self) -> str:
        """', learning rate 1000': the usual cause of a divergence, named in its message."""
        if self._trainer is None or not self.trainer.optimizers:
            return ""
        lrs = sorted({g["lr"] for opt in self.trainer.optimizers for g in opt.param_groups if "lr" in g})
        return f", learning rate {', '.join(f'{lr:g}' for lr in lrs)}" if lrs else ""

    def _checkpoints_kept(self) -> str:
        """Which checkpoints exist, for the divergence message."""
        if self._trainer is None:
            return "No checkpoint was written."
        callbacks = [cb for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        written = sorted({Path(p).name for cb in callbacks for p in (cb.last_model_path, cb.best_model_path) if p})
        if written:
            return (f"The checkpoints in {callbacks[0].dirpath} ({', '.join(written)}) hold the last finite weights "
                    "and were not overwritten.")
        earlier = sorted({p.name for cb in callbacks if Path(cb.dirpath).is_dir() for p in Path(cb.dirpath).glob("*.ckpt")})
        if earlier:
            return (f"This run wrote no checkpoint; those already in {callbacks[0].dirpath} ({', '.join(earlier)}) "
                    "were not touched.")
        return "No checkpoint had been written yet by this run, so there is none to resume from."

    @staticmethod
    def nonfinite_weights(state_dict: dict) -> list[str]:
        """Names of the floating-point tensors in `state_dict` that hold a NaN or an infinity."""
        return [k for k, v in state_dict.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
