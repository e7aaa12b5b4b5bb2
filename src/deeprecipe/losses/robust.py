"""Losses that tolerate noisy labels, and multi-label losses for hashtag targets.

All take logits ``(B, K)`` and return the batch mean. Written by hand: neither torch nor
torchmetrics offers them; each is tested against a straightforward reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deeprecipe.errors import ConfigError


def generalized_cross_entropy(logits: Tensor, y: Tensor, q: float = 0.7) -> Tensor:
    """GCE (Zhang & Sabuncu 2018): ``(1 - p_y ** q) / q``; labels ``y`` (B,).

    ``q -> 0`` gives cross-entropy, ``q = 1`` the mean absolute error of the probabilities, which
    is robust to label noise but slow to fit; ``q = 0.7`` is the paper's compromise.
    """
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"method.loss.q={q}; the GCE exponent must be in (0, 1].")
    log_p_true = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)  # (B,)
    return ((1.0 - torch.exp(q * log_p_true)) / q).mean()


def symmetric_cross_entropy(
    logits: Tensor, y: Tensor, alpha: float = 0.1, beta: float = 1.0, log_clamp: float = -4.0
) -> Tensor:
    """SCE (Wang et al. 2019): ``alpha * CE + beta * RCE``; labels ``y`` (B,).

    The reverse cross-entropy ``-sum_k p_k log t_k`` swaps prediction and one-hot target, with
    ``log 0`` clamped to ``A = log_clamp``; it reduces to ``-A * (1 - p_y)``.
    """
    if alpha < 0 or beta < 0:
        raise ConfigError(f"method.loss alpha={alpha}, beta={beta}; both must be >= 0.")
    if log_clamp >= 0:
        raise ConfigError(f"method.loss.log_clamp={log_clamp}; it must be negative (log 0 -> A).")
    logits = logits.float()
    cross_entropy = F.cross_entropy(logits, y)
    p_true = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)  # (B,)
    reverse = (-log_clamp * (1.0 - p_true)).mean()
    return alpha * cross_entropy + beta * reverse


def bootstrap_cross_entropy(
    logits: Tensor, y: Tensor, beta: float = 0.95, hard: bool = False
) -> Tensor:
    """Bootstrapping (Reed et al. 2015): cross-entropy on ``beta * t + (1 - beta) * z``.

    ``t`` is the one-hot label of ``y`` (B,) and ``z`` the model's own prediction: its
    probabilities (soft, paper's beta 0.95) or its one-hot argmax (hard, paper's beta 0.8). ``z``
    is treated as a target, without gradient.
    """
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"method.loss.beta={beta}; it must be in [0, 1].")
    logits = logits.float()
    num_classes = logits.shape[1]
    probabilities = F.softmax(logits.detach(), dim=1)  # (B, K)
    if hard:
        probabilities = F.one_hot(probabilities.argmax(dim=1), num_classes).float()
    targets = beta * F.one_hot(y, num_classes).float() + (1.0 - beta) * probabilities  # (B, K)
    return F.cross_entropy(logits, targets)


def multi_hot_softmax_loss(logits: Tensor, multi_hot: Tensor) -> Tensor:
    """Softmax cross-entropy on the multi-hot target normalized to sum 1 (Mahajan et al. 2018).

    ``multi_hot`` (B, K) is 0/1 or bool; an image with ``k`` tags puts ``1 / k`` on each. Images
    without any tag carry no signal and are left out of the mean.
    """
    targets = multi_hot.float()  # (B, K)
    counts = targets.sum(dim=1)  # (B,)
    per_image = -(targets / counts.clamp_min(1)[:, None] * F.log_softmax(logits.float(), 1)).sum(1)
    return per_image.sum() / (counts > 0).sum().clamp_min(1)


def multi_hot_bce(logits: Tensor, multi_hot: Tensor) -> Tensor:
    """Independent binary cross-entropy per tag, averaged over images and tags; (B, K)."""
    return F.binary_cross_entropy_with_logits(logits.float(), multi_hot.float())
