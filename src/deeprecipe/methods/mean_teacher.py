"""Mean Teacher (Tarvainen & Valpola 2017): match an exponential moving average of the model."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Semi, SemiViews
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.momentum import OncePerOptimizerStep, ema_update_, momentum_copy
from deeprecipe.methods.semi_tools import PseudoLabelMetrics, check_fraction, sigmoid_ramp
from deeprecipe.models.base import Backbone


class MeanTeacher(OncePerOptimizerStep, BaseMethod):
    """Cross-entropy on labelled images plus consistency with an EMA teacher on unlabelled ones.

    The teacher is a copy of backbone and head whose weights follow the student's as an
    exponential moving average after every step; it sees one augmented view of each unlabelled
    image, the student another, and the loss
    ``CE(labelled) + consistency_weight * ramp(t) * MSE(softmax(student), softmax(teacher))``
    pulls the student towards the teacher's (smoother, more accurate) predictions. ``ramp`` is the
    sigmoid ramp-up ``exp(-5 (1 - t)^2)`` over the first ``rampup_end`` of training.

    Args:
        ema_decay: the teacher keeps this much of itself each step; it is
            ``min(ema_decay, 1 - 1 / (step + 1))``, so early teachers average few steps.
        consistency_weight: weight of the consistency term (paper: 100 on CIFAR-10 with the MSE
            averaged over classes, as here).
        rampup_end: fraction of training over which the consistency weight ramps up.
        eval_with_teacher: validate and test the teacher (usually the better model) rather than
            the student.
        confidence_threshold: only for monitoring: ``train/mask_rate`` is the fraction of teacher
            predictions at least this confident and ``train/pseudo_acc`` their accuracy.
        See :class:`BaseMethod` for the rest; ``augment`` makes both views.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        ema_decay: float = 0.99,
        consistency_weight: float = 100.0,
        rampup_end: float = 0.3,
        eval_with_teacher: bool = True,
        confidence_threshold: float = 0.95,
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
        check_fraction(ema_decay, "method.ema_decay")
        check_fraction(rampup_end, "method.rampup_end")
        check_fraction(confidence_threshold, "method.confidence_threshold")
        if consistency_weight < 0:
            raise ConfigError(f"method.consistency_weight={consistency_weight}; it must be >= 0.")
        self.ema_decay = ema_decay
        self.consistency_weight = consistency_weight
        self.rampup_end = rampup_end
        self.eval_with_teacher = eval_with_teacher
        self.confidence_threshold = confidence_threshold
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head = momentum_copy(self.head)
        self.pseudo_metrics = PseudoLabelMetrics()
        self.total_steps = 1

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.channels_last:
            self.teacher_backbone.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A :class:`Semi` batch becomes :class:`SemiViews`: two independent augmented views."""
        if isinstance(batch, Semi):
            labeled = super().on_after_batch_transfer(batch.labeled, dataloader_idx)
            teacher_view = self.prepare_images(batch.unlabeled.x, augment=True)
            student_view = self.prepare_images(batch.unlabeled.x, augment=True)
            return SemiViews(labeled, teacher_view, student_view, batch.unlabeled.y_hidden)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def student(self, x: Tensor) -> Tensor:
        """Student logits (B, K)."""
        return self.head(self.backbone.forward_features(x))

    def teacher(self, x: Tensor) -> Tensor:
        """Teacher logits (B, K)."""
        return self.teacher_head(self.teacher_backbone.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K): of the teacher in evaluation if ``eval_with_teacher``, else student."""
        if self.eval_with_teacher and not self.training:
            return self.teacher(x)
        return self.student(x)

    def on_train_start(self) -> None:
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def training_step(self, batch: SemiViews, batch_idx: int) -> Tensor:
        labeled = batch.labeled
        num_labeled, num_unlabeled = len(labeled.y), len(batch.y_hidden)
        logits = self.student(torch.cat([labeled.x, batch.student_view]))  # (B + B_u, K)
        logits_labeled, logits_unlabeled = logits[:num_labeled], logits[num_labeled:]
        with torch.no_grad():
            teacher_probabilities = F.softmax(self.teacher(batch.target_view), dim=1)  # (B_u, K)
        supervised = F.cross_entropy(logits_labeled, labeled.y)
        consistency = F.mse_loss(F.softmax(logits_unlabeled, dim=1), teacher_probabilities)
        ramp = sigmoid_ramp(self.global_step / self.total_steps, self.rampup_end)
        loss = supervised + self.consistency_weight * ramp * consistency
        confidence, pseudo = teacher_probabilities.max(dim=1)  # (B_u,)
        self.train_metrics.update(logits_labeled.detach(), labeled.y)
        self.pseudo_metrics.update(pseudo, batch.y_hidden, confidence >= self.confidence_threshold)
        self.log("train/loss", loss, prog_bar=True, batch_size=num_labeled)
        self.log_dict(
            {
                "train/loss_consistency": consistency,
                "train/mask_rate": self.pseudo_metrics.mask_rate,
                "train/pseudo_acc": self.pseudo_metrics.pseudo_acc,
            },
            on_step=False,
            on_epoch=True,
            batch_size=num_unlabeled,
            sync_dist=True,  # tensors; the metric objects sync themselves
        )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Move the teacher towards the student after each optimizer step."""
        if not self.optimizer_stepped():  # gradient accumulation: no step yet
            return
        decay = min(self.ema_decay, 1.0 - 1.0 / (self.global_step + 1))
        ema_update_(self.teacher_backbone, self.backbone, decay)
        ema_update_(self.teacher_head, self.head, decay)
