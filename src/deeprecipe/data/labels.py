"""Label noise models: corrupt a clean label tensor in a seeded, reproducible way.

Three families, from the weak-supervision literature:

- **symmetric**: every label flips with probability ``rate`` to one of the other classes, chosen
  uniformly (the annotator guesses at random).
- **class-conditional** (asymmetric): a row-stochastic transition matrix ``T[i, j] =
  P(noisy = j | clean = i)``; built here as pair flips (class ``i`` to ``i + 1``) or as confusions
  within groups of look-alike classes (:data:`FASHION_MNIST_CONFUSIONS`).
- **instance-dependent**: the flip probability of each example grows with a per-example
  confusion score (e.g. a model's probability of a wrong class), and the wrong class is drawn in
  proportion to the model's scores: hard examples are mislabelled more often, as by people.

Every function takes a ``torch.Generator``, so the same seed gives the same noisy labels, and
returns :class:`NoisyLabels`: the noisy labels and the realized transition matrix (the row-
normalized confusion counts of clean against noisy labels), which differs from the requested one
by sampling error only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from deeprecipe.errors import ConfigError

# Groups of Fashion-MNIST classes that people (and models) confuse: tops (T-shirt/top, Pullover,
# Coat, Shirt) and footwear (Sandal, Sneaker, Ankle boot). Indices follow CLASS_NAMES.
FASHION_MNIST_CONFUSIONS: tuple[tuple[int, ...], ...] = ((0, 2, 4, 6), (5, 7, 9))


class NoisyLabels(NamedTuple):
    """``labels`` int64 ``(N,)`` after corruption; ``transition`` float ``(K, K)`` realized."""

    labels: Tensor
    transition: Tensor


def _check_rate(rate: float, key: str) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{key}={rate}; a noise rate must be in [0, 1].")


def realized_transition(clean: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """Row-normalized counts ``(K, K)``: the fraction of class ``i`` labelled ``j``.

    Rows of classes absent from ``clean`` are left at zero.
    """
    counts = torch.bincount(clean * num_classes + noisy, minlength=num_classes**2)
    counts = counts.view(num_classes, num_classes).double()  # (K, K)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def symmetric_transition(num_classes: int, rate: float) -> Tensor:
    """``T = (1 - rate) I + rate / (K - 1) (1 - I)``: flips go uniformly to the other classes."""
    _check_rate(rate, "noise rate")
    transition = torch.full(
        (num_classes, num_classes), rate / (num_classes - 1), dtype=torch.float64
    )
    return transition.fill_diagonal_(1.0 - rate)


def pair_flip_transition(num_classes: int, rate: float) -> Tensor:
    """Class ``i`` keeps its label with ``1 - rate`` and becomes ``i + 1 (mod K)`` with ``rate``."""
    _check_rate(rate, "noise rate")
    transition = torch.eye(num_classes, dtype=torch.float64) * (1.0 - rate)
    classes = torch.arange(num_classes)
    transition[classes, (classes + 1) % num_classes] += rate
    return transition


def confusion_group_transition(
    num_classes: int, rate: float, groups: Sequence[Sequence[int]]
) -> Tensor:
    """Each class in a group flips with ``rate``, uniformly to the other members of its group.

    Classes in no group keep their labels. Raises :class:`ConfigError` when a class is out of
    range, appears in two groups or a group has fewer than two classes.
    """
    _check_rate(rate, "noise rate")
    transition = torch.eye(num_classes, dtype=torch.float64)
    seen: set[int] = set()
    for group in groups:
        members = list(group)
        if len(members) < 2 or len(set(members)) != len(members):
            raise ConfigError(f"confusion group {members} needs at least two distinct classes.")
        for cls in members:
            if not 0 <= cls < num_classes or cls in seen:
                raise ConfigError(
                    f"confusion group class {cls} is out of range [0, {num_classes}) or in two "
                    "groups; each class may appear in one group only."
                )
            seen.add(cls)
            transition[cls, cls] = 1.0 - rate
            for other in members:
                if other != cls:
                    transition[cls, other] = rate / (len(members) - 1)
    return transition


def apply_transition(labels: Tensor, transition: Tensor, generator: torch.Generator) -> NoisyLabels:
    """Draw each noisy label from row ``transition[clean]``; labels ``(N,)``, transition ``(K, K)``.

    Raises :class:`ConfigError` when the matrix is not square and row-stochastic.
    """
    num_classes = transition.shape[0]
    if transition.shape != (num_classes, num_classes) or (transition < 0).any():
        raise ConfigError("A noise transition matrix must be square with non-negative entries.")
    if not torch.allclose(transition.sum(dim=1), torch.ones(num_classes, dtype=transition.dtype)):
        raise ConfigError("Each row of a noise transition matrix must sum to 1.")
    rows = transition.to(torch.float64)[labels.cpu()]  # (N, K)
    noisy = torch.multinomial(rows, 1, generator=generator).squeeze(1)  # (N,)
    noisy = noisy.to(labels.device)
    return NoisyLabels(noisy, realized_transition(labels, noisy, num_classes))


def instance_dependent_noise(
    labels: Tensor, scores: Tensor, rate: float, generator: torch.Generator
) -> NoisyLabels:
    """Flip hard examples more often: each with probability proportional to its confusion.

    Args:
        labels: clean int64 labels ``(N,)``.
        scores: non-negative per-class scores ``(N, K)``, e.g. a model's probabilities. The
            confusion of an example is its score mass on the wrong classes,
            ``c_i = sum_{j != y_i} s_ij``; it flips with ``p_i = min(1, rate * c_i / mean(c))``,
            so the mean flip rate is ``rate`` (a bit less where the clamp at 1 binds), and its
            noisy label is a wrong class ``j`` drawn with probability proportional to ``s_ij``.
        rate: the requested mean flip rate.
        generator: seeds both draws.
    """
    _check_rate(rate, "noise rate")
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or (scores < 0).any():
        raise ConfigError("Instance-dependent noise needs non-negative scores (N, num_classes).")
    labels_cpu = labels.cpu()
    wrong = scores.detach().cpu().double().clone()  # (N, K)
    wrong[torch.arange(len(labels_cpu)), labels_cpu] = 0.0
    confusion = wrong.sum(dim=1)  # (N,)
    if not (confusion > 0).all():
        raise ConfigError("Every example needs some score on a wrong class to be flippable.")
    flip_probability = (rate * confusion / confusion.mean()).clamp_max(1.0)  # (N,)
    flip = torch.rand(len(labels_cpu), generator=generator, dtype=torch.float64) < flip_probability
    wrong_class = torch.multinomial(wrong, 1, generator=generator).squeeze(1)  # (N,)
    noisy = torch.where(flip, wrong_class, labels_cpu).to(labels.device)
    return NoisyLabels(noisy, realized_transition(labels, noisy, scores.shape[1]))


def nearest_centroid_scores(images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Class probabilities ``(N, K)`` of a nearest-class-mean classifier on raw pixels.

    A model-free confusion score for :func:`instance_dependent_noise`: ``softmax(-d_ik / tau)``
    with ``d_ik`` the distance of image ``i`` to the mean image of class ``k`` and ``tau`` the
    standard deviation of all distances, so that images near another class's mean score high on it.
    """
    flat = images.flatten(1).float() / 255  # (N, D)
    centroids = torch.stack([flat[labels == k].mean(dim=0) for k in range(num_classes)])  # (K, D)
    distances = torch.cdist(flat, centroids)  # (N, K)
    return torch.softmax(-distances / distances.std(), dim=1)
