"""Fully supervised training: cross-entropy on labelled batches, with the regularization recipe."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.augment import MixupCutmix
from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.losses import soft_cross_entropy
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory, l1_penalty
from deeprecipe.models.base import Backbone


class Supervised(BaseMethod):
    """Cross-entropy with optional label smoothing, Mixup/CutMix, dropout before the head and L1.

    Args:
        label_smoothing: target mass spread uniformly over all classes (without ``mixing``).
        head_dropout: dropout on the pooled features before the linear head.
        mixing: Mixup/CutMix applied to each training batch after the batch augmentation; the
            loss is then the cross-entropy on its soft targets. Label smoothing with mixing is
            ``mixing.label_smoothing`` (it smooths both labels of a pair), so ``label_smoothing``
            must stay 0: targets are never smoothed twice. Training accuracy is then measured
            against the argmax of the soft target, the class that makes up most of the mixed
            image (the image's own label when a batch is left unmixed).
        l1: weight of the L1 penalty ``l1 * sum |w|`` added to the loss, over weight matrices
            and kernels (not norm scales or biases); L2 is the optimizer's ``weight_decay``.
        See :class:`BaseMethod` for the rest.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        label_smoothing: float = 0.0,
        head_dropout: float = 0.0,
        mixing: MixupCutmix | None = None,
        l1: float = 0.0,
        tta: str | None = None,
        tta_padding: int = 2,
        channels_last: bool = True,
        decay_norm_and_bias: bool = False,
        head_init: str = "zero",
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
            tta=tta,
            tta_padding=tta_padding,
            head_init=head_init,
        )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"method.label_smoothing={label_smoothing}; it must be in [0, 1).")
        if not 0.0 <= head_dropout < 1.0:
            raise ConfigError(f"method.head_dropout={head_dropout}; it must be in [0, 1).")
        if l1 < 0:
            raise ConfigError(f"method.l1={l1}; it must be >= 0 (0 turns the penalty off).")
        if mixing is not None and label_smoothing > 0:
            raise ConfigError(
                f"method.label_smoothing={label_smoothing} with method.mixing would smooth the "
                "targets twice; set method.label_smoothing=0 and method.mixing.label_smoothing "
                f"={label_smoothing} instead."
            )
        if mixing is not None and mixing.num_classes != num_classes:
            raise ConfigError(
                f"method.mixing.num_classes={mixing.num_classes} but the data has {num_classes} "
                "classes; set method.mixing.num_classes=${data.num_classes}."
            )
        self.label_smoothing = label_smoothing
        self.head_dropout = head_dropout
        self.mixing = mixing
        self.l1 = l1

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone.forward_features(x)  # (B, F)
        return self.head(F.dropout(features, self.head_dropout, self.training))

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        if self.mixing is None:
            logits = self(batch.x)  # (B, num_classes)
            loss = F.cross_entropy(logits, batch.y, label_smoothing=self.label_smoothing)
            labels = batch.y  # (B,)
        else:
            # Mixing normalized images equals mixing then normalizing: both ops are per-pixel
            # convex combinations, which commute with the per-channel affine normalization.
            mixed, targets = self.mixing(batch.x, batch.y)  # (B, C, H, W), (B, num_classes)
            logits = self(mixed)
            loss = soft_cross_entropy(logits, targets)
            labels = targets.argmax(dim=1)  # (B,) the dominant class of each mixed image
        if self.l1 > 0:
            loss = loss + self.l1 * l1_penalty(self.parameters())
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.y))
        return loss
