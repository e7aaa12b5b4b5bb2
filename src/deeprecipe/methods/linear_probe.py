"""Linear probe: a linear classifier on a frozen (pretrained) backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.models.base import Backbone


class LinearProbe(BaseMethod):
    """Train only the linear head on the features of a frozen backbone: the standard measure of
    how linearly separable a self-supervised representation makes the classes.

    The backbone never gets gradients and stays in eval mode throughout (its batch-norm running
    statistics are those of pretraining and dropout is off), whatever mode Lightning sets. Load
    the pretrained weights with :func:`deeprecipe.transfer.load_backbone_weights`
    (``pretrained=PATH`` on the command line).

    Args:
        See :class:`BaseMethod`; ``augment`` (crop and flip, typically) is applied to training
        images as in supervised training.
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
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            in_chans,
            optimizer,
            scheduler,
            augment=augment,
            channels_last=channels_last,
        )
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> LinearProbe:
        """Set the training mode of the head; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        with torch.no_grad():
            features = self.backbone.forward_features(batch.x)  # (B, F)
        logits = self.head(features)  # (B, num_classes)
        loss = F.cross_entropy(logits, batch.y)
        self.train_metrics.update(logits.detach(), batch.y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.y))
        return loss
