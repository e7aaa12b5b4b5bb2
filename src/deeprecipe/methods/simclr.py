"""SimCLR (Chen et al. 2020): two augmented views of each image attract, all others repel."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deeprecipe.batches import Labeled, Views
from deeprecipe.losses import nt_xent
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.ssl_parts import augmented_views, check_augment, mlp, online_probe_loss
from deeprecipe.models.base import Backbone


class SimCLR(BaseMethod):
    """Contrastive pretraining with NT-Xent on a projection MLP, plus an online linear probe.

    Both views go through the backbone in one batch, so batch-norm statistics cover both (as in
    SimCLR's global BN on one device). Under DDP the loss contrasts against the global batch:
    :func:`~deeprecipe.losses.nt_xent` gathers the embeddings of every process with their
    gradients, and ``trainer.sync_batchnorm=true`` makes the batch-norm statistics global too,
    so that 2 processes train as one process on their combined batch (``tests/test_ddp.py``).

    Args:
        proj_hidden_dim: hidden width of the 2-layer projection MLP (SimCLR: 2048).
        proj_dim: output width of the projection, where the loss is computed (SimCLR: 128).
        temperature: softmax temperature of NT-Xent (SimCLR: 0.1 to 0.5).
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
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        temperature: float = 0.2,
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
        check_augment(augment, "simclr")
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim)
        self.temperature = temperature

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and isinstance(batch, Labeled):
            return augmented_views(self, batch)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: Views, batch_idx: int) -> Tensor:
        first, second = batch.views  # (B, C, H, W) each
        features = self.backbone.forward_features(torch.cat([first, second]))  # (2B, F)
        z1, z2 = self.projector(features).chunk(2)  # (B, proj_dim) each
        ssl_loss = nt_xent(z1, z2, self.temperature)
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
