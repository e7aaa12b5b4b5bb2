"""Pieces the semi-supervised methods share: ramp-ups and pseudo-label monitoring.

The EMA teacher update is :func:`deeprecipe.methods.momentum.ema_update_`, shared with BYOL/MoCo.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torchmetrics import MeanMetric

from deeprecipe.errors import ConfigError


def check_fraction(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}={value}; it must be in [0, 1].")


def linear_ramp(progress: float, start: float, end: float) -> float:
    """0 before ``start``, 1 after ``end``, linear between (Lee 2013's ``alpha(t)``, scaled to 1).

    ``progress`` is the fraction of training done, ``global_step / total_steps``.
    """
    if progress >= end:
        return 1.0
    return max(0.0, (progress - start) / (end - start))


def sigmoid_ramp(progress: float, end: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = progress / end`` clipped to 1 (Laine & Aila 2017)."""
    if end <= 0.0:
        return 1.0
    t = min(1.0, progress / end)
    return math.exp(-5.0 * (1.0 - t) ** 2)


class PseudoLabelMetrics(nn.Module):
    """Epoch means of the mask rate and of pseudo-label accuracy on the masked examples.

    Accumulated on the device (no host sync per step); log the two metrics with
    ``on_epoch=True``. The accuracy is measured against the hidden true labels of the
    unlabelled images, which training never sees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask_rate = MeanMetric(nan_strategy="disable")
        self.pseudo_acc = MeanMetric(nan_strategy="disable")

    def update(self, pseudo: Tensor, y_hidden: Tensor, mask: Tensor) -> None:
        """``pseudo`` and ``y_hidden`` int64 (B,), ``mask`` (B,) bool or float in {0, 1}."""
        weight = mask.float()
        self.mask_rate.update(weight)
        self.pseudo_acc.update((pseudo == y_hidden).float(), weight)
