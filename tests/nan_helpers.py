"""Test-only callback that breaks training on purpose (used via PYTHONPATH=tests)."""

from __future__ import annotations

import lightning as L
import torch


class PoisonWeightsAt(L.Callback):
    """Fill the first parameter with NaN when training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
