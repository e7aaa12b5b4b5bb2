"""The model of one self-training round: teacher (round 0) or student (later rounds).

Self-training (Yarowsky 1995; Xie et al. 2020's Noisy Student) alternates offline: a teacher
labels the unlabelled images, a student trains on labelled and pseudo-labelled images together,
the student becomes the teacher. The rounds are separate runs driven by
:mod:`deeprecipe.self_training`; this method is what each of them trains. Noisy Student's point
is that the student learns under noise the teacher labelled without: augmentation (the ``aug``
group), dropout before the head (``head_dropout``) and the backbone's own (``model.dropout``,
``model.drop_path_rate`` where the model has them), while the teacher labels clean, unaugmented
images in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from deeprecipe.batches import Labeled, PseudoLabeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.models.base import Backbone


class SelfTraining(BaseMethod):
    """Cross-entropy against the targets of :class:`PseudoLabeled` batches, pseudo ones weighted.

    The loss is ``sum_i w_i CE(logits_i, target_i) / sum_i w_i`` with ``w_i = 1`` for labelled
    images and ``pseudo_weight`` for pseudo-labelled ones; targets are one-hot or, for soft
    pseudo-labels, the teacher's distribution. Plain :class:`Labeled` batches train as labelled.
    ``train/acc`` is measured on the labelled images; ``train/pseudo_acc`` is the share of
    pseudo-labelled training images whose target's top class is their hidden true class, and
    ``train/pseudo_share`` the share of pseudo-labelled images in the batches.

    Args:
        pseudo_weight: weight of a pseudo-labelled image relative to a labelled one, >= 0.
        head_dropout: dropout on the pooled features before the head (student noise).
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
        pseudo_weight: float = 1.0,
        head_dropout: float = 0.0,
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
            head_init=head_init,
        )
        if pseudo_weight < 0:
            raise ConfigError(f"method.pseudo_weight={pseudo_weight}; it must be >= 0.")
        if not 0.0 <= head_dropout < 1.0:
            raise ConfigError(f"method.head_dropout={head_dropout}; it must be in [0, 1).")
        self.pseudo_weight = pseudo_weight
        self.head_dropout = head_dropout
        self.pseudo_acc = MeanMetric()
        self.pseudo_share = MeanMetric()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training only) and normalize :class:`PseudoLabeled` images; others as usual."""
        if isinstance(batch, PseudoLabeled):
            x = self.prepare_images(batch.x, augment=self.trainer.training)
            return PseudoLabeled(x, batch.target, batch.y_hidden, batch.is_pseudo)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone.forward_features(x)  # (B, F)
        return self.head(F.dropout(features, self.head_dropout, self.training))

    def training_step(self, batch: PseudoLabeled | Labeled, batch_idx: int) -> Tensor:
        if isinstance(batch, Labeled):
            target = F.one_hot(batch.y, self.num_classes).float()
            batch = PseudoLabeled(batch.x, target, batch.y, torch.zeros_like(batch.y).bool())
        logits = self(batch.x)  # (B, K)
        per_image = -(batch.target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)  # (B,)
        is_pseudo = batch.is_pseudo
        weight = torch.where(is_pseudo, self.pseudo_weight, 1.0).to(per_image.dtype)  # (B,)
        loss = (weight * per_image).sum() / weight.sum().clamp_min(1e-12)
        labeled = ~is_pseudo
        if labeled.any():  # the labelled images are a small share of the union's batches
            self.train_metrics.update(logits.detach()[labeled], batch.y_hidden[labeled])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(per_image))
        self.pseudo_share.update(is_pseudo.float())
        monitors = {"train/pseudo_share": self.pseudo_share}
        if is_pseudo.any():  # round 0 has none: no NaN accuracy logged
            top_class = batch.target[is_pseudo].argmax(dim=1)  # (B_pseudo,)
            self.pseudo_acc.update((top_class == batch.y_hidden[is_pseudo]).float())
            monitors["train/pseudo_acc"] = self.pseudo_acc
        self.log_dict(monitors, on_step=False, on_epoch=True, batch_size=len(per_image))
        return loss
