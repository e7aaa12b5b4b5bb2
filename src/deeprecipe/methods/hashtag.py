"""Weakly supervised pretraining on hashtags: multi-label targets over a tag vocabulary.

Mahajan et al. (2018) pretrain on billions of Instagram images by predicting their hashtags with
a softmax over the vocabulary against the multi-hot target normalized to sum 1, and found it
better than per-tag binary cross-entropy; both are here (``loss``). The pretrained backbone is then
fine-tuned on a small clean split (``+experiment=hashtag_finetune pretrained=PATH``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.functional.classification import multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat

from deeprecipe.batches import Labeled, Tagged
from deeprecipe.errors import ConfigError
from deeprecipe.losses import multi_hot_bce, multi_hot_softmax_loss
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.models.base import Backbone

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "softmax": multi_hot_softmax_loss,
    "bce": multi_hot_bce,
}


class TagMeanAveragePrecision(Metric):
    """Mean over tags of the average precision of ranking the images by their score for the tag.

    torchmetrics' ``MultilabelAveragePrecision(average="macro")`` counts a tag without any
    positive image as AP 0, which drags the mean down on small or rare-tag batches; here such
    tags are left out, as in retrieval mAP.
    """

    full_state_update = False
    scores: list[Tensor]
    tags: list[Tensor]

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("tags", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, tags: Tensor) -> None:
        """``scores`` float ``(B, T)``, ``tags`` bool or 0/1 ``(B, T)``."""
        self.scores.append(scores.float())
        self.tags.append(tags.long())

    def compute(self) -> Tensor:
        scores = dim_zero_cat(self.scores)
        tags = dim_zero_cat(self.tags)
        present = tags.sum(dim=0) > 0  # (T,)
        if not present.any():
            return scores.new_tensor(float("nan"))
        per_tag = multilabel_average_precision(
            scores[:, present], tags[:, present], int(present.sum()), average=None
        )  # (T_present,)
        return per_tag.mean()


class HashtagPretraining(BaseMethod):
    """Backbone + linear head over the ``num_tags`` targets, trained on :class:`Tagged` batches.

    Validation and test log, besides ``{val,test}/loss`` (the training loss on their tags):
    ``tag_map`` (:class:`TagMeanAveragePrecision` of the tag scores), ``precision_at_1`` (the
    top-scored tag is one of the image's tags, over images with tags) and ``acc`` (and
    ``acc_top5``): the class accuracy against the hidden true labels, reading a class score as
    the summed probability of the targets that stand for the class (the identity for the designed
    label space; synonyms summed, non-visual tags ignored for the raw one). The raw space's
    mapping comes from the simulator through the DataModule (``target_class``) and serves the
    monitor only: training never uses it.

    Args:
        num_tags: targets of the label space (``${data.num_tags}``).
        loss: ``softmax`` (cross-entropy against the multi-hot target normalized to sum 1;
            images without tags are left out) or ``bce`` (independent per-tag binary
            cross-entropy).
        See :class:`BaseMethod` for the rest; ``num_classes`` is the classes of the monitor.
    """

    target_class: Tensor

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        num_tags: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        loss: str = "softmax",
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
        if loss not in LOSSES:
            raise ConfigError(f"method.loss={loss!r}; choose one of {', '.join(LOSSES)}.")
        if num_tags < 2:
            raise ConfigError(f"method.num_tags={num_tags}; the tag head needs at least 2.")
        self.head = nn.Linear(backbone.num_features, num_tags)
        if head_init == "zero":  # as BaseMethod's class head: the initial loss is the chance one
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.num_tags = num_tags
        # until setup() reads the DataModule's: target k is class k when there are as many
        default = torch.arange(num_tags) if num_tags == num_classes else torch.full((num_tags,), -1)
        self.register_buffer("target_class", default, persistent=False)
        self.val_tag_map = TagMeanAveragePrecision(num_tags)
        self.test_tag_map = TagMeanAveragePrecision(num_tags)
        self.val_precision_at_1, self.test_precision_at_1 = MeanMetric(), MeanMetric()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        mapping = getattr(getattr(self.trainer, "datamodule", None), "target_class", None)
        if mapping is None:
            return
        if len(mapping) != self.num_tags:
            raise ConfigError(
                f"The data has {len(mapping)} tag targets but the method was built for "
                f"{self.num_tags}; set method.num_tags=${{data.num_tags}}."
            )
        self.target_class = mapping.to(self.target_class.device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training only) and normalize :class:`Tagged` images; others as usual."""
        if isinstance(batch, Tagged):
            x = self.prepare_images(batch.x, augment=self.trainer.training)
            return Tagged(x, batch.tags, batch.y_hidden)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def tag_probabilities(self, logits: Tensor) -> Tensor:
        """``(B, T)``: softmax over the tags, or per-tag sigmoids for ``bce``."""
        logits = logits.float()
        return logits.softmax(dim=1) if self.loss_name == "softmax" else logits.sigmoid()

    def class_scores(self, logits: Tensor) -> Tensor:
        """``(B, K)``: per class, the summed probability of the targets standing for it."""
        probabilities = self.tag_probabilities(logits)  # (B, T)
        visual = self.target_class >= 0  # (T,)
        scores = probabilities.new_zeros(len(probabilities), self.num_classes)
        return scores.index_add_(1, self.target_class[visual], probabilities[:, visual])

    # --------------------------------------------------------------------------- training
    def training_step(self, batch: Tagged, batch_idx: int) -> Tensor:
        logits = self(batch.x)  # (B, T)
        loss = self.loss_fn(logits, batch.tags)
        self.train_metrics.update(self.class_scores(logits.detach()), batch.y_hidden)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.tags))
        return loss

    # ----------------------------------------------------------------- validation and test
    def _evaluate_tags(self, batch: Tagged | Labeled, prefix: str) -> None:
        logits = self(batch.x)  # (B, T)
        labels = batch.y_hidden if isinstance(batch, Tagged) else batch.y
        metrics = self.val_metrics if prefix == "val/" else self.test_metrics
        metrics.update(self.class_scores(logits), labels)
        self.log_dict(metrics, batch_size=len(labels))
        if not isinstance(batch, Tagged):  # clean labels only: class accuracy is all there is
            return
        tags = batch.tags  # (B, T)
        mean_loss = self.val_loss if prefix == "val/" else self.test_loss
        mean_loss.update(self.loss_fn(logits, tags), weight=len(tags))
        tag_map = self.val_tag_map if prefix == "val/" else self.test_tag_map
        tag_map.update(self.tag_probabilities(logits), tags)
        tagged = tags.any(dim=1)  # (B,)
        top_is_tag = tags.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)  # (B,)
        precision = self.val_precision_at_1 if prefix == "val/" else self.test_precision_at_1
        precision.update(top_is_tag[tagged].float())
        self.log(f"{prefix}loss", mean_loss, batch_size=len(tags))
        self.log(f"{prefix}tag_map", tag_map, batch_size=len(tags))
        self.log(f"{prefix}precision_at_1", precision, batch_size=len(tags))

    def validation_step(self, batch: Tagged | Labeled, batch_idx: int) -> None:
        self._evaluate_tags(batch, "val/")

    def test_step(self, batch: Tagged | Labeled, batch_idx: int) -> None:
        self._evaluate_tags(batch, "test/")
