"""Losses as pure functions of tensors, each tested against an independent reference."""

from deeprecipe.losses.classification import smooth_targets, soft_cross_entropy
from deeprecipe.losses.robust import (
    bootstrap_cross_entropy,
    generalized_cross_entropy,
    multi_hot_bce,
    multi_hot_softmax_loss,
    symmetric_cross_entropy,
)
from deeprecipe.losses.ssl import barlow_twins_loss, byol_loss, moco_infonce, nt_xent

__all__ = ["smooth_targets", "soft_cross_entropy"]
__all__ += ["barlow_twins_loss", "byol_loss", "moco_infonce", "nt_xent"]

__all__ += [
    "bootstrap_cross_entropy",
    "generalized_cross_entropy",
    "multi_hot_bce",
    "multi_hot_softmax_loss",
    "symmetric_cross_entropy",
]
