"""BaseMethod: what every supervision regime shares.

A method owns the backbone, a linear classification head, the device-side augmentation and
normalization, the classification metrics of validation and test (plain, and with test-time
augmentation when ``tta`` is set), and the optimizer and learning-rate schedule built from
partial configs. A regime subclasses it once and writes
``training_step`` (plus its own ``__init__`` arguments).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from deeprecipe.augment.batched import Pipeline
from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.evaluate.tta import check_tta, tta_probabilities
from deeprecipe.methods.optimization import (
    OptimizerFactory,
    SchedulerFactory,
    configure_optimization,
)
from deeprecipe.models.base import Backbone

log = logging.getLogger(__name__)


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

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) images or (B, C, T, H, W) clips
        shape = (1, -1) + (1,) * (x.ndim - 2)  # per channel, broadcast over the rest
        return (x - self.mean.view(shape)) / self.std.view(shape)


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


def l1_penalty(parameters: Iterable[Tensor]) -> Tensor:
    """``sum |w|`` over the trainable weight matrices and kernels (ndim > 1) in ``parameters``.

    Norm scales and biases (1-D) are left out, as weight decay leaves them out by default.
    """
    return torch.stack([p.abs().sum() for p in parameters if p.ndim > 1 and p.requires_grad]).sum()


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
        tta: test-time augmentation of validation and test, ``flip`` or ``flip_crops`` (see
            :mod:`deeprecipe.evaluate.tta`), logged as ``val/acc_tta`` and ``test/acc_tta`` next
            to the plain ``val/acc`` and ``test/acc``; it costs 2 or 10 forward passes per batch.
        tta_padding: padding of the ``flip_crops`` corner crops (the training crop's padding).
        head_init: ``zero`` (default) starts the linear head at zero weights and bias, so the
            untrained classifier predicts the uniform distribution and its loss is exactly
            log(C), the lecture's step-1 check (PyTorch's default init gave ResNet-9 an initial
            loss of 3.5 against log(10) = 2.3); ``default`` keeps PyTorch's uniform init.
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
        tta: str | None = None,
        tta_padding: int = 2,
        head_init: str = "zero",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}; a classifier needs at least 2.")
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        if head_init == "zero":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        elif head_init != "default":
            raise ConfigError(f"method.head_init={head_init!r}; choose zero or default.")
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
        # a metric, not self.log(sync_dist=True), whose mean is off when DDP shards differ in size
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.tta = check_tta(tta, tta_padding)
        self.tta_padding = tta_padding
        self.val_acc_tta = self._tta_accuracy()
        self.test_acc_tta = self._tta_accuracy()

    def _tta_accuracy(self) -> MulticlassAccuracy | None:
        if self.tta is None:
            return None
        return MulticlassAccuracy(self.num_classes, average="micro", validate_args=False)

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
        empty = isinstance(self.augment, Pipeline) and not self.augment.steps  # aug=none
        if getattr(datamodule, "num_frames", None) and self.augment is not None and not empty:
            raise ConfigError(
                "The data are video clips (B, C, T, H, W) but the aug config holds image "
                "augmentations (B, C, H, W); set aug=none."
            )
        if self.channels_last and any(p.ndim == 5 for p in self.backbone.parameters()):
            self.channels_last = False  # a rank-4 layout: 3-D convolutions (video) cannot take it
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
    def _evaluate(
        self,
        batch: Labeled,
        metrics: MetricCollection,
        tta_accuracy: MulticlassAccuracy | None,
        prefix: str,
    ) -> None:
        logits = self(batch.x)  # (B, num_classes)
        loss = F.cross_entropy(logits, batch.y)
        metrics.update(logits, batch.y)
        mean_loss = self.val_loss if prefix == "val/" else self.test_loss
        mean_loss.update(loss, weight=len(batch.y))
        self.log(f"{prefix}loss", mean_loss, batch_size=len(batch.y))
        self.log_dict(metrics, batch_size=len(batch.y))
        if self.tta is not None and tta_accuracy is not None:
            black = self.normalize(batch.x.new_zeros(1, batch.x.shape[1], 1, 1))  # (1, C, 1, 1)
            probabilities = tta_probabilities(
                self, batch.x, logits, self.tta, self.tta_padding, black
            )  # (B, num_classes)
            tta_accuracy.update(probabilities, batch.y)
            self.log(f"{prefix}acc_tta", tta_accuracy, batch_size=len(batch.y))

    def validation_step(self, batch: Labeled, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_acc_tta, "val/")

    def test_step(self, batch: Labeled, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_acc_tta, "test/")

    # ------------------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        return configure_optimization(
            self, self.optimizer_factory, self.scheduler_factory, self.decay_norm_and_bias
        )
