"""Test-only pieces for the DDP tests (used via PYTHONPATH=tests, also by child ranks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor, nn


class StepLossLog(L.Callback):
    """Write this rank's loss of every training step to ``<folder>/loss_rank<R>.json``, with the
    world size and the base learning rate the rank trained with (``initial_lr``)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"loss_rank{trainer.global_rank}.json"
        base_lr = trainer.optimizers[0].param_groups[0]["initial_lr"]
        record = {"world_size": trainer.world_size, "base_lr": base_lr, "losses": self.losses}
        path.write_text(json.dumps(record))


class AlternatingFlip(nn.Module):
    """A deterministic stand-in for augmentation: every second call mirrors the images.

    SimCLR draws its two views by two calls, so the views differ (original and mirror) while
    every image gets the same views whichever process holds it: runs on 1 and 2 processes must
    then agree exactly, which random augmentation (per-rank streams) would prevent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        self.calls += 1
        return x.flip(-1) if self.calls % 2 == 0 else x
