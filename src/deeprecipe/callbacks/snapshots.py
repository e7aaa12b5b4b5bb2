"""Snapshot ensembles: one checkpoint at the end of every cycle of a restarting schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch.optim.lr_scheduler import LambdaLR

from deeprecipe.errors import ConfigError
from deeprecipe.schedules import WarmupFactor


class SnapshotCheckpoint(L.Callback):
    """Save ``snapshot-KK.ckpt`` when cycle KK of the ``cosine_restarts`` schedule ends.

    Snapshot ensembles (Huang et al. 2017) get M models for the price of one training run: the
    cyclic schedule drives the weights into a different low-loss region in each cycle, and the
    weights at each cycle's end (the lowest learning rate) are saved. Average their predictions
    afterwards with ``python -m deeprecipe.evaluate.ensemble RUN_DIR/snapshots``. The cycle
    boundaries are read from the schedule itself, so they cannot drift from it. Snapshots hold
    the weights only (no optimizer state).

    Args:
        dirpath: folder of the snapshots; by default ``snapshots/`` in the trainer's root dir.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.schedule: WarmupFactor | None = None
        self._last_step = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if len(configs) == 1 else None
        factor = scheduler.lr_lambdas[0] if isinstance(scheduler, LambdaLR) else None
        if not isinstance(factor, WarmupFactor) or factor.shape != "cosine_restarts":
            raise ConfigError(
                "callbacks.snapshots saves one model per cycle of a restarting schedule; set "
                "scheduler=cosine_restarts (scheduler.cycles=M gives M snapshots)."
            )
        self.schedule = factor

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.schedule is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        cycle = self.schedule.cycle_ended(trainer.global_step)
        if cycle is not None:
            folder = Path(self.dirpath or Path(trainer.default_root_dir, "snapshots"))
            trainer.save_checkpoint(folder / f"snapshot-{cycle:02d}.ckpt", weights_only=True)
