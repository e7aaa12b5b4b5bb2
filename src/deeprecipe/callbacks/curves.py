"""The lecture's learning-curve plot, saved at the end of every run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


class LearningCurves(L.Callback):
    """Record per-step training loss and per-epoch accuracies; plot them when the run ends.

    Writes ``plots/learning_curves.png`` (loss as a scatter with its moving average; train vs
    validation accuracy per epoch) and the numbers behind it as ``plots/learning_curves.json`` in
    the trainer's ``default_root_dir``. Losses stay on the device until the epoch ends, so the
    recording adds no synchronization to the training step.
    """

    def __init__(self, window: int = 50) -> None:
        self.window = window
        self.losses: list[float] = []
        self.epochs: list[dict[str, float]] = []
        self._pending: list[torch.Tensor] = []
        self._validated = False  # a validation ran since the last epoch row

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending.append(loss.detach())

    def _flush(self, trainer: L.Trainer) -> None:
        if self._pending:
            self.losses.extend(torch.stack(self._pending).float().cpu().tolist())
            self._pending.clear()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._snapshot(trainer, trainer.current_epoch - 1)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def _snapshot(self, trainer: L.Trainer, epoch: int) -> None:
        self._flush(trainer)
        metrics = trainer.callback_metrics
        row = {"epoch": float(epoch), "step": float(len(self.losses))}
        # callback_metrics keeps the last validation's values through epochs that did not
        # validate (check_val_every_n_epoch > 1): only a validated epoch gets val/* in its row
        names = ["train/acc"] + (["val/acc", "val/loss"] if self._validated else [])
        for name in names:
            if name in metrics:
                row[name] = float(metrics[name])
        self._validated = False
        self.epochs.append(row)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a completed last epoch the counter has already moved on to the next one
        last = trainer.current_epoch - 1
        recorded = {row["epoch"] for row in self.epochs}
        self._snapshot(trainer, last if last >= 0 and last not in recorded else last + 1)
        self.save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._flush(trainer)
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or not self.losses:
            return
        folder = Path(trainer.default_root_dir) / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "learning_curves.json").write_text(
            json.dumps({"loss": self.losses, "epochs": self.epochs})
        )
        plot_learning_curves(self.losses, self.epochs, self.window, folder / "learning_curves.png")


def plot_learning_curves(
    losses: list[float], epochs: list[dict[str, float]], window: int, path: Path
) -> None:
    """Two panels: loss per step (scatter + moving average) and accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps = list(range(1, len(losses) + 1))
    ax_loss.scatter(steps, losses, s=2, alpha=0.3, label="train loss (step)")
    ax_loss.plot(
        steps, moving_average(losses, window), color="C3", label=f"moving average ({window})"
    )
    ax_loss.set(xlabel="step", ylabel="loss", title="Training loss")
    ax_loss.legend()
    for name, style in (("train/acc", "o-"), ("val/acc", "s-")):
        points = [(row["epoch"] + 1, row[name]) for row in epochs if name in row]
        if points:
            ax_acc.plot(*zip(*points, strict=True), style, label=name)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    if ax_acc.lines:
        ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
