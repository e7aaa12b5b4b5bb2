"""MoCo v2 (He et al. 2020; Chen et al. 2020): contrast queries against a queue of momentum keys."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled, Views
from deeprecipe.errors import ConfigError
from deeprecipe.losses import moco_infonce
from deeprecipe.losses.ssl import gather_batches
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.momentum import OncePerOptimizerStep, ema_update_, momentum_copy
from deeprecipe.methods.ssl_parts import augmented_views, check_augment, mlp, online_probe_loss
from deeprecipe.models.base import Backbone


class MoCo(OncePerOptimizerStep, BaseMethod):
    """Momentum encoder + queue of negatives (v2: MLP projector, SimCLR augmentation).

    The key encoder (backbone + projector) is an EMA of the query encoder; the keys of each batch,
    gathered from all processes, replace the oldest entries of a FIFO queue of ``queue_size``
    negatives, so the number of negatives does not depend on the batch size. The queue and its
    pointer are buffers: they travel with checkpoints. The loss is symmetrized (each view is once
    the query) and both views' keys are enqueued.

    Batch norm is per process and not shuffled (MoCo's shuffle-BN is left out): the positive key
    sees different batch statistics from its query only across processes.

    Args:
        proj_hidden_dim: hidden width of the 2-layer projector (MoCo v2: 2048).
        proj_dim: embedding width (MoCo v2: 128).
        queue_size: number of negative keys kept (MoCo: 65536 on ImageNet).
        temperature: InfoNCE temperature (MoCo v2: 0.2).
        momentum: EMA momentum of the key encoder (MoCo: 0.999; 0.99 suits short runs).
        See :class:`BaseMethod` for the rest; ``augment`` draws each view and is required.
    """

    queue: Tensor
    queue_pointer: Tensor

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
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
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
        check_augment(augment, "moco")
        if queue_size < 1:
            raise ConfigError(f"method.queue_size={queue_size}; it must be a positive integer.")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"method.momentum={momentum}; it must be in [0, 1).")
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.temperature = temperature
        self.momentum = momentum
        # random unit vectors until real keys replace them, as in MoCo
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.channels_last:
            self.momentum_backbone.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and isinstance(batch, Labeled):
            return augmented_views(self, batch)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: Views, batch_idx: int) -> Tensor:
        images = torch.cat(batch.views)  # (2B, C, H, W)
        features = self.backbone.forward_features(images)  # (2B, F)
        q1, q2 = self.projector(features).chunk(2)  # (B, proj_dim) each
        with torch.no_grad():
            keys = self.momentum_projector(self.momentum_backbone.forward_features(images))
            keys = F.normalize(keys, dim=1)  # (2B, proj_dim)
            k1, k2 = keys.chunk(2)
        queue = self.queue.clone()  # (K, proj_dim) the negatives of this step
        ssl_loss = (
            moco_infonce(q1, k2, queue, self.temperature)
            + moco_infonce(q2, k1, queue, self.temperature)
        ) / 2
        self.enqueue(keys)
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

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (n, D) of every process over the oldest queue entries, wrapping around.

        Indexing on the device keeps the pointer off the host: no sync per step.
        """
        keys = gather_batches(keys)  # (world * n, D)
        keys = keys[-len(self.queue) :]  # a batch larger than the queue keeps its newest keys
        size = len(self.queue)
        rows = (self.queue_pointer + torch.arange(len(keys), device=keys.device)) % size
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_pointer.copy_((self.queue_pointer + len(keys)) % size)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.optimizer_stepped():  # gradient accumulation: no step yet
            return
        ema_update_(self.momentum_backbone, self.backbone, self.momentum)
        ema_update_(self.momentum_projector, self.projector, self.momentum)
