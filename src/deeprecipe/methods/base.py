"""BaseMethod: what every supervision regime shares.

A method owns the backbone, a linear classification head, the device-side augmentation and
normalization, the classification metrics of validation and test, and the optimizer and
learning-rate schedule built from partial configs. A regime subclasses it once and writes
``training_step`` (plus its own ``__init__`` arguments).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.models.base import Backbone

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; the statistics are buffers, so checkpoints keep them."""

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.5))

    def set_stats(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean.copy_(torch.tensor(mean).view_as(self.mean))
        self.std.copy_(torch.tensor(std).view_as(self.std))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return (x - self.mean) / self.std


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy, micro-averaged.

    Argument validation is off: it scans every batch, and the DataModules check label ranges once
    at setup.
    """
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(
            num_classes, top_k=5, average="micro", validate_args=False
        )
    return MetricCollection(metrics, prefix=prefix)


def parameter_groups(
    module: nn.Module, weight_decay: float, decay_norm_and_bias: bool
) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with ``weight_decay``, norm and bias parameters without.

    Norm scales and biases are the 1-D parameters; decaying them only shrinks the function's
    scale and offsets and is commonly found to hurt (Goyal et al. 2017).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


class BaseMethod(L.LightningModule):
    """Backbone + linear head + augmentation + metrics + optimizer/schedule, for all regimes.

    Args:
        backbone: a model meeting the contract of :mod:`deeprecipe.models.base`.
        num_classes: classes of the labelled task (the head's outputs).
        in_chans: image channels (size of the normalization statistics).
        optimizer: partial optimizer; called with parameter groups.
        scheduler: partial schedule from :mod:`deeprecipe.schedules`; called with the optimizer,
            ``total_steps`` and ``steps_per_epoch``; stepped every iteration.
        augment: batched training augmentation applied on the device, or None.
        channels_last: keep convolution inputs and weights in NHWC, faster for oneDNN and
            tensor cores.
        decay_norm_and_bias: also apply weight decay to norm and bias parameters.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        channels_last: bool = True,
        decay_norm_and_bias: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}; a classifier needs at least 2.")
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.augment = augment
        self.normalize = Normalize(in_chans)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        self.decay_norm_and_bias = decay_norm_and_bias
        self.num_classes = num_classes
        self.train_metrics = classification_metrics(num_classes, "train/")
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")

    # ------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if mean is not None and std is not None:
            if len(mean) != self.normalize.mean.shape[1]:
                raise ConfigError(
                    f"The data has {len(mean)} channels but the method was built for "
                    f"{self.normalize.mean.shape[1]}; set method.in_chans=${{data.in_chans}}."
                )
            self.normalize.set_stats(mean, std)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training only), normalize and lay out images once they are on the device."""
        if isinstance(batch, Labeled):
            return Labeled(self.prepare_images(batch.x, augment=self.trainer.training), batch.y)
        return batch

    def prepare_images(self, x: Tensor, augment: bool) -> Tensor:
        """uint8 images (or floats in [0, 1]) -> (augmented) normalized network input."""
        if x.dtype == torch.uint8:  # shipped as uint8: 4x less host-to-device traffic
            x = x.float().div_(255)
        if augment and self.augment is not None:
            x = self.augment(x)
        x = self.normalize(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ---------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes) of normalized inputs."""
        return self.head(self.backbone.forward_features(x))

    # --------------------------------------------------------------------------- training
    def on_train_epoch_end(self) -> None:
        """Log the epoch's training accuracy, which regimes accumulate in ``train_metrics``.

        Logged once per epoch rather than with every step: each value logged per step costs
        Lightning ~1 ms of bookkeeping per step.
        """
        if any(metric.update_called for metric in self.train_metrics.values()):
            self.log_dict(self.train_metrics.compute())
            self.train_metrics.reset()

    # ----------------------------------------------------------------- validation and test
    def _evaluate(self, batch: Labeled, metrics: MetricCollection, prefix: str) -> None:
        logits = self(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        metrics.update(logits, batch.y)
        self.log(f"{prefix}loss", loss, batch_size=len(batch.y), sync_dist=True)
        self.log_dict(metrics, batch_size=len(batch.y))

    def validation_step(self, batch: Labeled, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val/")

    def test_step(self, batch: Labeled, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test/")

    # ------------------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        groups = parameter_groups(self, weight_decay, self.decay_norm_and_bias)
        optimizer = self.optimizer_factory(groups)
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError(
                "The learning-rate schedule needs a known length: set trainer.max_epochs or "
                "trainer.max_steps (trainer.max_time alone leaves it unknown)."
            )
        batches = self.trainer.num_training_batches  # known once estimated_stepping_batches ran
        accumulate = self.trainer.accumulate_grad_batches
        steps_per_epoch = max(1, math.ceil(batches / accumulate)) if math.isfinite(batches) else 1
        scheduler = self.scheduler_factory(
            optimizer, total_steps=int(total_steps), steps_per_epoch=steps_per_epoch
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
