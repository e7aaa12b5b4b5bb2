"""Supervised training on noisy labels with a noise-robust loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.models.base import Backbone

ClassificationLoss = Callable[[Tensor, Tensor], Tensor]


class RobustSupervised(BaseMethod):
    """Train on (possibly noisy) labels with a loss of :mod:`deeprecipe.losses.robust`.

    Args:
        loss: ``loss(logits (B, K), labels (B,)) -> scalar``, e.g. a partial
            ``generalized_cross_entropy`` (q), ``symmetric_cross_entropy`` (alpha, beta,
            log_clamp) or ``bootstrap_cross_entropy`` (beta, hard); None is cross-entropy, the
            non-robust baseline. It is called once on dummy inputs here, so bad arguments fail
            before training.
        See :class:`BaseMethod` for the rest. Training accuracy is measured against the labels
        trained on, i.e. the noisy ones; validation and test labels are clean.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        loss: ClassificationLoss | None = None,
        channels_last: bool = True,
        decay_norm_and_bias: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            in_chans,
            optimizer,
            scheduler,
            augment=augment,
            channels_last=channels_last,
            decay_norm_and_bias=decay_norm_and_bias,
        )
        self.loss_fn: ClassificationLoss = loss if loss is not None else F.cross_entropy
        self.loss_fn(torch.zeros(1, num_classes), torch.zeros(1, dtype=torch.long))

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        logits = self(batch.x)  # (B, num_classes)
        loss = self.loss_fn(logits, batch.y)
        self.train_metrics.update(logits.detach(), batch.y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.y))
        return loss
