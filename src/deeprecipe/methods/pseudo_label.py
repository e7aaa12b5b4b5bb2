"""Pseudo-Label (Lee 2013): train on the model's own confident predictions for unlabelled data."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Semi, Unlabeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.semi_tools import PseudoLabelMetrics, check_fraction, linear_ramp
from deeprecipe.models.base import Backbone


class PseudoLabel(BaseMethod):
    """Cross-entropy on labelled images plus, ramped up, on hard pseudo-labels of unlabelled ones.

    Each step the current model labels the unlabelled batch with its argmax class; those it
    predicts with probability at least ``threshold`` count in the loss
    ``CE(labelled) + unlabeled_weight * alpha(t) * mean(mask * CE(unlabelled, pseudo-label))``.
    ``alpha(t)`` is Lee's schedule: 0 until ``rampup_start``, linear to 1 at ``rampup_end``
    (fractions of training), so that early, poor predictions do not teach the model.

    Args:
        threshold: minimum confidence of a pseudo-label; 0 keeps all (Lee's original).
        unlabeled_weight: the final weight of the unlabelled term (Lee's ``alpha_f``).
        rampup_start: fraction of training before the unlabelled term starts.
        rampup_end: fraction of training at which it reaches its full weight.
        See :class:`BaseMethod` for the rest; ``augment`` applies to both batches.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        threshold: float = 0.95,
        unlabeled_weight: float = 1.0,
        rampup_start: float = 0.1,
        rampup_end: float = 0.4,
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
        check_fraction(threshold, "method.threshold")
        check_fraction(rampup_start, "method.rampup_start")
        check_fraction(rampup_end, "method.rampup_end")
        if rampup_end <= rampup_start:
            raise ConfigError(
                f"method.rampup_end={rampup_end} must be after method.rampup_start={rampup_start}."
            )
        if unlabeled_weight < 0:
            raise ConfigError(f"method.unlabeled_weight={unlabeled_weight}; it must be >= 0.")
        self.threshold = threshold
        self.unlabeled_weight = unlabeled_weight
        self.rampup_start = rampup_start
        self.rampup_end = rampup_end
        self.pseudo_metrics = PseudoLabelMetrics()
        self.total_steps = 1

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment and normalize both parts of a :class:`Semi` batch; other batches as usual."""
        if isinstance(batch, Semi):
            labeled = super().on_after_batch_transfer(batch.labeled, dataloader_idx)
            x = self.prepare_images(batch.unlabeled.x, augment=True)
            return Semi(labeled, Unlabeled(x, batch.unlabeled.y_hidden))
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def on_train_start(self) -> None:
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def training_step(self, batch: Semi, batch_idx: int) -> Tensor:
        labeled, unlabeled = batch.labeled, batch.unlabeled
        num_labeled, num_unlabeled = len(labeled.y), len(unlabeled.y_hidden)
        # One forward over both batches, so BatchNorm statistics see labelled and unlabelled data.
        logits = self(torch.cat([labeled.x, unlabeled.x]))  # (B + B_u, K)
        logits_labeled, logits_unlabeled = logits[:num_labeled], logits[num_labeled:]
        supervised = F.cross_entropy(logits_labeled, labeled.y)
        confidence, pseudo = F.softmax(logits_unlabeled.detach(), dim=1).max(dim=1)  # (B_u,)
        mask = (confidence >= self.threshold).float()  # (B_u,)
        per_image = F.cross_entropy(logits_unlabeled, pseudo, reduction="none")  # (B_u,)
        unsupervised = (per_image * mask).mean()
        ramp = linear_ramp(self.global_step / self.total_steps, self.rampup_start, self.rampup_end)
        loss = supervised + self.unlabeled_weight * ramp * unsupervised
        self.train_metrics.update(logits_labeled.detach(), labeled.y)
        self.pseudo_metrics.update(pseudo, unlabeled.y_hidden, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=num_labeled)
        self.log_dict(
            {
                "train/loss_unlabeled": unsupervised,
                "train/mask_rate": self.pseudo_metrics.mask_rate,
                "train/pseudo_acc": self.pseudo_metrics.pseudo_acc,
            },
            on_step=False,
            on_epoch=True,
            batch_size=num_unlabeled,
            sync_dist=True,  # tensors; the metric objects sync themselves
        )
        return loss
