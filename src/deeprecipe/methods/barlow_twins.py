"""Barlow Twins (Zbontar et al. 2021): decorrelate embedding dimensions across two views."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deeprecipe.batches import Labeled, Views
from deeprecipe.losses import barlow_twins_loss
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.ssl_parts import augmented_views, check_augment, mlp, online_probe_loss
from deeprecipe.models.base import Backbone


class BarlowTwins(BaseMethod):
    """Cross-correlation of the two views' projections driven to the identity matrix.

    Invariance comes from the diagonal (each dimension agrees across views), non-collapse from
    the off-diagonal (dimensions carry different information); no negatives, no momentum
    network. Under DDP the correlation is computed over the global batch.

    Args:
        proj_hidden_dim: hidden width of the 3-layer projector (Barlow Twins: 8192).
        proj_dim: embedding width, the size of the correlation matrix (Barlow Twins: 8192).
        lambda_offdiag: weight of the off-diagonal term (5e-3 for 8192 dimensions; roughly
            ``1 / proj_dim`` keeps both terms balanced at other widths).
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
        proj_dim: int = 1024,
        lambda_offdiag: float = 5e-3,
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
        check_augment(augment, "barlow_twins")
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim, num_layers=3)
        self.lambda_offdiag = lambda_offdiag

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and isinstance(batch, Labeled):
            return augmented_views(self, batch)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: Views, batch_idx: int) -> Tensor:
        features = self.backbone.forward_features(torch.cat(batch.views))  # (2B, F)
        z1, z2 = self.projector(features).chunk(2)  # (B, proj_dim) each
        ssl_loss = barlow_twins_loss(z1, z2, self.lambda_offdiag)
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
