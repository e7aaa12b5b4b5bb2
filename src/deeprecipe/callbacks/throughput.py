"""Training throughput in samples per second."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from deeprecipe.batches import SemiViews, Views


def count_samples(batch: Any) -> int:
    """Training images in a batch: ``len(batch.x)``, summed over the parts of a composite batch
    (Semi: labelled + unlabelled); a multi-view batch counts its images once, whatever the number
    of views (Views: B; SemiViews: labelled + unlabelled), as SSL and semi papers report it."""
    if isinstance(batch, Views):
        return len(batch.y)
    if isinstance(batch, SemiViews):
        return len(batch.labeled.x) + len(batch.target_view)
    if hasattr(batch, "x"):
        return len(batch.x)
    if isinstance(batch, tuple | list):
        return sum(count_samples(part) for part in batch)
    return 0


class Throughput(L.Callback):
    """Samples per second of the training loop (data, forward, backward, optimizer, logging).

    Counts the samples of all processes under DDP (global throughput).

    Measured between consecutive batch starts within an epoch, so validation is excluded; the
    first ``skip_batches`` batches of the run are excluded as warm-up. Logged as
    ``train/throughput`` at each epoch end and kept in :attr:`samples_per_second`.
    """

    def __init__(self, skip_batches: int = 5) -> None:
        self.skip_batches = skip_batches
        self.samples = 0
        self.seconds = 0.0
        self._seen = 0
        self._last: float | None = None
        self._last_size = 0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None and self._seen > self.skip_batches:
            self.samples += self._last_size
            self.seconds += now - self._last
        self._last = now
        self._last_size = trainer.world_size * count_samples(batch)
        self._seen += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seconds > 0:
            pl_module.log("train/throughput", self.samples_per_second)
