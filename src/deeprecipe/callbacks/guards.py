"""Stop training cleanly when the loss stops being a finite number."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from deeprecipe.errors import NonFiniteLossError


class NonFiniteLossGuard(L.Callback):
    """Check the loss before each backward pass; raise a clear error when it is NaN or infinite.

    The check runs before the gradients exist, so the weights are never updated with a
    non-finite gradient and every checkpoint written so far stays valid.

    Args:
        check_every_n_steps: check only every n-th step (each check waits for the device).
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_every_n_steps = max(1, check_every_n_steps)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        step = trainer.global_step
        if step % self.check_every_n_steps or bool(torch.isfinite(loss).all()):
            return
        value = "NaN" if torch.isnan(loss).any() else "infinite"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise NonFiniteLossError(
            f"The training loss became {value} at step {step} (epoch {trainer.current_epoch}, "
            f"learning rate {lr:.3g}). Lower the learning rate (optim.lr), add warmup "
            "(scheduler.warmup_epochs or warmup_steps) or gradient clipping "
            "(trainer.gradient_clip_val), and check the inputs for NaN. Checkpoints written "
            "before this step are kept."
        )
