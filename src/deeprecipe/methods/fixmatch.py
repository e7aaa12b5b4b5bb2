"""FixMatch (Sohn et al. 2020): confident weak-view pseudo-labels supervise a strong view."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Semi, SemiViews
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.semi_tools import PseudoLabelMetrics, check_fraction
from deeprecipe.models.base import Backbone


class FixMatch(BaseMethod):
    """Cross-entropy on labelled images plus consistency between two views of unlabelled ones.

    For each unlabelled image the model predicts on a weakly augmented view; where its
    confidence is at least ``threshold``, the argmax class becomes a hard label for a strongly
    augmented view of the same image:
    ``CE(labelled) + unlabeled_weight * mean(mask * CE(strong view, pseudo-label))``. The
    threshold makes the model learn first from the images it is sure of; the strong view makes
    the task hard enough to be informative.

    Args:
        augment: the weak view (flip and shift, ``aug=weak``), also used on labelled images.
        strong_augment: the strong view (weak + RandAugment + Cutout, the ``strong_view`` preset).
        threshold: confidence a pseudo-label needs (paper: 0.95).
        unlabeled_weight: weight ``lambda_u`` of the unlabelled term (paper: 1).
        See :class:`BaseMethod` for the rest.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None,
        strong_augment: nn.Module,
        threshold: float = 0.95,
        unlabeled_weight: float = 1.0,
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
        if unlabeled_weight < 0:
            raise ConfigError(f"method.unlabeled_weight={unlabeled_weight}; it must be >= 0.")
        self.strong_augment = strong_augment
        self.threshold = threshold
        self.unlabeled_weight = unlabeled_weight
        self.pseudo_metrics = PseudoLabelMetrics()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A :class:`Semi` batch becomes :class:`SemiViews`: weak and strong unlabelled views."""
        if isinstance(batch, Semi):
            labeled = super().on_after_batch_transfer(batch.labeled, dataloader_idx)
            images = batch.unlabeled.x.float().div_(255)  # (B_u, C, H, W) in [0, 1]
            weak = self.prepare_images(images, augment=True)
            strong = self.prepare_images(self.strong_augment(images), augment=False)
            return SemiViews(labeled, weak, strong, batch.unlabeled.y_hidden)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: SemiViews, batch_idx: int) -> Tensor:
        labeled = batch.labeled
        num_labeled, num_unlabeled = len(labeled.y), len(batch.y_hidden)
        # One forward over all three parts, so BatchNorm statistics see all of them.
        logits = self(torch.cat([labeled.x, batch.target_view, batch.student_view]))
        logits_labeled = logits[:num_labeled]  # (B, K)
        logits_weak, logits_strong = logits[num_labeled:].chunk(2)  # (B_u, K) each
        supervised = F.cross_entropy(logits_labeled, labeled.y)
        confidence, pseudo = F.softmax(logits_weak.detach(), dim=1).max(dim=1)  # (B_u,)
        mask = (confidence >= self.threshold).float()  # (B_u,)
        per_image = F.cross_entropy(logits_strong, pseudo, reduction="none")  # (B_u,)
        unsupervised = (per_image * mask).mean()
        loss = supervised + self.unlabeled_weight * unsupervised
        self.train_metrics.update(logits_labeled.detach(), labeled.y)
        self.pseudo_metrics.update(pseudo, batch.y_hidden, mask)
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
