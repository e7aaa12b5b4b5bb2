"""Fully supervised training: cross-entropy on labelled batches, with the regularization recipe."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from deeprecipe.augment import MixupCutmix
from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.losses import soft_cross_entropy
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory, l1_penalty
from deeprecipe.methods.optimization import configure_optimization
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
        freeze_stages: partial fine-tuning: ``k`` freezes the backbone's ``stages()[0..k]``
            (the stem is stage 0, so ``1`` freezes the stem and the first stage): no gradients,
            and kept in eval mode (batch-norm statistics fixed, dropout off). None trains all.
        bn_eval: keep every batch norm of the backbone in eval mode, so fine-tuning uses and
            keeps the pretrained running statistics (small batches estimate them badly).
        backbone_lr_scale: the backbone's learning rate relative to ``optim.lr`` (the head's);
            fine-tuning uses 0.1 (``method=finetune``), training from scratch 1.
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
        freeze_stages: int | None = None,
        bn_eval: bool = False,
        backbone_lr_scale: float = 1.0,
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
        if backbone_lr_scale <= 0:
            raise ConfigError(
                f"method.backbone_lr_scale={backbone_lr_scale}; it must be > 0 (freeze the "
                "backbone with method=linear_probe or method.freeze_stages instead)."
            )
        self.label_smoothing = label_smoothing
        self.head_dropout = head_dropout
        self.mixing = mixing
        self.l1 = l1
        self.bn_eval = bn_eval
        self.backbone_lr_scale = backbone_lr_scale
        self.frozen_stages = self._freeze_stages(freeze_stages)
        self._keep_eval_modes()  # Lightning keeps each module's mode: set them from the start

    def _freeze_stages(self, freeze_stages: int | None) -> list[nn.Module]:
        if freeze_stages is None:
            return []
        stages = self.backbone.stages()
        if not 0 <= freeze_stages < len(stages):
            raise ConfigError(
                f"method.freeze_stages={freeze_stages}; {type(self.backbone).__name__} has "
                f"stages 0 (stem) to {len(stages) - 1}: choose one of them, or null."
            )
        frozen = stages[: freeze_stages + 1]
        for stage in frozen:
            stage.requires_grad_(False)
        return frozen

    def _keep_eval_modes(self) -> None:
        for stage in self.frozen_stages:
            stage.eval()
        if self.bn_eval:
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def train(self, mode: bool = True) -> Supervised:
        """Set the training mode, keeping frozen stages (and with ``bn_eval`` every backbone
        batch norm) in eval mode whatever mode is set."""
        super().train(mode)
        self._keep_eval_modes()
        return self

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

    def configure_optimizers(self) -> Any:
        return configure_optimization(
            self,
            self.optimizer_factory,
            self.scheduler_factory,
            self.decay_norm_and_bias,
            backbone_lr_scale=self.backbone_lr_scale,
        )
