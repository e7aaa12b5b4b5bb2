"""Rotation prediction (Gidaris et al. 2018): recognize which of 4 rotations an image shows."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled, Views
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.ssl_parts import online_probe_loss
from deeprecipe.models.base import Backbone

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


class RotationPrediction(BaseMethod):
    """A pretext task: a 4-way classifier on the backbone's features predicts the rotation.

    Knowing which way is up requires knowing what the object is, so the features become
    semantic without labels. Every image is shown in all four rotations (as in the paper), each
    rotation after the same augmentation; images must be square. An online linear probe on the
    unrotated view monitors the representation (``val/acc``).

    Args:
        See :class:`BaseMethod`; ``augment`` (optional here) is applied before rotating.
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
        self.rotation_head = nn.Linear(backbone.num_features, ROTATIONS)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and isinstance(batch, Labeled):
            x = self.prepare_images(batch.x, augment=True)  # (B, C, H, W)
            views = tuple(torch.rot90(x, turns, dims=(2, 3)) for turns in range(ROTATIONS))
            return Views(views, batch.y)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: Views, batch_idx: int) -> Tensor:
        batch_size = len(batch.y)
        features = self.backbone.forward_features(torch.cat(batch.views))  # (4B, F)
        logits = self.rotation_head(features)  # (4B, 4)
        # view v holds the images turned v times by 90 degrees
        turns = torch.arange(ROTATIONS, device=logits.device).repeat_interleave(batch_size)
        ssl_loss = F.cross_entropy(logits, turns)
        probe_loss = online_probe_loss(self, features[:batch_size], batch.y)
        rotation_acc = (logits.detach().argmax(dim=1) == turns).float().mean()
        self.log("train/loss", ssl_loss, prog_bar=True, batch_size=batch_size)
        self.log(
            "train/probe_loss",
            probe_loss,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log("train/rotation_acc", rotation_acc, on_step=False, on_epoch=True, sync_dist=True)
        return ssl_loss + probe_loss
