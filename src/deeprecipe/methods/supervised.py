"""Fully supervised training: cross-entropy on labelled batches."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.models.base import Backbone


class Supervised(BaseMethod):
    """Cross-entropy with optional label smoothing and dropout before the head.

    Args:
        label_smoothing: target mass spread uniformly over all classes.
        head_dropout: dropout on the pooled features before the linear head.
        See :class:`BaseMethod` for the rest.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment=None,
        label_smoothing: float = 0.0,
        head_dropout: float = 0.0,
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
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"method.label_smoothing={label_smoothing}; it must be in [0, 1).")
        if not 0.0 <= head_dropout < 1.0:
            raise ConfigError(f"method.head_dropout={head_dropout}; it must be in [0, 1).")
        self.label_smoothing = label_smoothing
        self.head_dropout = head_dropout

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone.forward_features(x)  # (B, F)
        return self.head(F.dropout(features, self.head_dropout, self.training))

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        logits = self(batch.x)  # (B, num_classes)
        loss = F.cross_entropy(logits, batch.y, label_smoothing=self.label_smoothing)
        self.train_metrics.update(logits.detach(), batch.y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.y))
        return loss
