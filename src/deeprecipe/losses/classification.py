"""Classification losses on soft targets, and label smoothing (Szegedy et al. 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deeprecipe.errors import ConfigError


def smooth_targets(y: Tensor, num_classes: int, epsilon: float) -> Tensor:
    """Smoothed one-hot targets (B, K) of int64 labels ``y`` (B,).

    The true class gets ``1 - eps + eps / K`` (the lecture's ``1 - (K - 1) / K * eps``) and every
    other class ``eps / K``; ``eps = 0`` gives the one-hot targets.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ConfigError(f"label smoothing epsilon={epsilon}; it must be in [0, 1).")
    one_hot = F.one_hot(y, num_classes).float()  # (B, K)
    return one_hot * (1 - epsilon) + epsilon / num_classes


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k t_k log softmax(logits)_k``; logits and targets (B, K).

    The cross-entropy of Mixup/CutMix and label-smoothed targets, through ``F.cross_entropy``
    (which takes class probabilities as targets and runs in float32 under autocast).
    """
    if logits.shape != soft_targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and soft targets {tuple(soft_targets.shape)} must have "
            "the same shape (B, num_classes)."
        )
    dtype = torch.promote_types(logits.dtype, soft_targets.dtype)  # bf16 logits: float32
    return F.cross_entropy(logits.to(dtype), soft_targets.to(dtype))
