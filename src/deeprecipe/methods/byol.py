"""BYOL (Grill et al. 2020): predict a slowly moving target network's embedding of another view."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deeprecipe.batches import Labeled, Views
from deeprecipe.losses import byol_loss
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.momentum import (
    OncePerOptimizerStep,
    cosine_momentum,
    ema_update_,
    momentum_copy,
)
from deeprecipe.methods.ssl_parts import augmented_views, check_augment, mlp, online_probe_loss
from deeprecipe.models.base import Backbone


class BYOL(OncePerOptimizerStep, BaseMethod):
    """Online backbone + projector + predictor regress the target's projection; no negatives.

    The target (momentum) backbone and projector are exponential moving averages of the online
    ones, with momentum rising from ``base_momentum`` to ``final_momentum`` on a cosine over
    training; the asymmetry of the predictor and the stop-gradient keep the embedding from
    collapsing. The loss is symmetrized over the two views.

    Args:
        proj_hidden_dim: hidden width of the projector and predictor MLPs (BYOL: 4096).
        proj_dim: embedding width (BYOL: 256).
        base_momentum: target momentum at the first step (BYOL: 0.996).
        final_momentum: target momentum at the last step (BYOL: 1.0).
        See :class:`BaseMethod` for the rest; ``augment`` draws each view and is required.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        proj_hidden_dim: int = 1024,
        proj_dim: int = 256,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
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
        check_augment(augment, "byol")
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim)
        self.predictor = mlp(proj_dim, proj_hidden_dim, proj_dim)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.total_steps = 1

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.channels_last:
            self.momentum_backbone.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and isinstance(batch, Labeled):
            return augmented_views(self, batch)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def on_train_start(self) -> None:
        self.total_steps = int(self.trainer.estimated_stepping_batches)

    def training_step(self, batch: Views, batch_idx: int) -> Tensor:
        images = torch.cat(batch.views)  # (2B, C, H, W)
        features = self.backbone.forward_features(images)  # (2B, F)
        p1, p2 = self.predictor(self.projector(features)).chunk(2)  # (B, proj_dim) each
        with torch.no_grad():
            target = self.momentum_projector(self.momentum_backbone.forward_features(images))
            t1, t2 = target.chunk(2)  # (B, proj_dim) each
        ssl_loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        probe_loss = online_probe_loss(self, features[: len(batch.y)], batch.y)
        batch_size = len(batch.y)
        self.log("train/loss", ssl_loss, prog_bar=True, batch_size=batch_size)
        self.log(
            "train/probe_loss",
            probe_loss,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        return ssl_loss + probe_loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.optimizer_stepped():  # gradient accumulation: no step yet
            return
        momentum = cosine_momentum(
            self.trainer.global_step, self.total_steps, self.base_momentum, self.final_momentum
        )
        ema_update_(self.momentum_backbone, self.backbone, momentum)
        ema_update_(self.momentum_projector, self.projector, momentum)
