"""Noisy training labels for any image source; validation and test labels stay clean.

:class:`NoisyTrainLabels` is mixed in front of a source DataModule
(``class NoisyFashionMNISTDataModule(NoisyTrainLabels, FashionMNISTDataModule)``): after the
source's usual setup it replaces the training labels by a seeded draw of one of the noise models
of :mod:`deeprecipe.data.labels`. The clean training labels and the realized transition matrix
stay on the DataModule for analysis (``clean_train_labels``, ``noise_transition``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.data.digits import DigitsDataModule
from deeprecipe.data.fashion_mnist import FashionMNISTDataModule
from deeprecipe.data.labels import (
    FASHION_MNIST_CONFUSIONS,
    NoisyLabels,
    apply_transition,
    confusion_group_transition,
    instance_dependent_noise,
    nearest_centroid_scores,
    pair_flip_transition,
    symmetric_transition,
)
from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)

NOISE_MODELS = ("symmetric", "pair_flip", "confusion_groups", "instance")


class NoisyTrainLabels(ImageDataModule):
    """Corrupts the training labels of the source it is mixed into.

    Args:
        noise: ``symmetric`` (uniform flips to other classes), ``pair_flip`` (class ``i`` to
            ``i + 1``), ``confusion_groups`` (flips within groups of look-alike classes) or
            ``instance`` (flip probability grows with how close an image lies to another
            class's mean image, see :func:`~deeprecipe.data.labels.nearest_centroid_scores`).
        noise_rate: flip probability per label (the mean over examples for ``instance``).
        noise_seed: seed of the noise draw, independent of the run seed and the split seed.
        confusion_groups: class groups for ``confusion_groups``.
        **kwargs: the source's arguments.
    """

    def __init__(
        self,
        noise: str = "symmetric",
        noise_rate: float = 0.4,
        noise_seed: int = 0,
        confusion_groups: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("classes") is not None:
            raise ConfigError(
                "data.classes does not apply to noisy-label data: its confusion groups name the "
                "source's class indices. Leave data.classes null."
            )
        super().__init__(**kwargs)
        if noise not in NOISE_MODELS:
            raise ConfigError(f"data.noise={noise!r}; choose one of {', '.join(NOISE_MODELS)}.")
        if not 0.0 <= noise_rate <= 1.0:
            raise ConfigError(f"data.noise_rate={noise_rate}; it must be in [0, 1].")
        if noise == "confusion_groups" and not confusion_groups:
            raise ConfigError("data.noise=confusion_groups needs data.confusion_groups.")
        self.noise = noise
        self.noise_rate = noise_rate
        self.noise_seed = noise_seed
        self.confusion_groups = confusion_groups
        self.clean_train_labels: torch.Tensor | None = None
        self.noise_transition: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.clean_train_labels is not None:
            return
        super().setup(stage)
        assert self.train is not None
        draw = self._corrupt(self.train, torch.Generator().manual_seed(self.noise_seed))
        self.clean_train_labels = self.train.labels
        self.noise_transition = draw.transition
        self.train = ImageArrays(self.train.images, draw.labels)
        flipped = (draw.labels != self.clean_train_labels).double().mean().item()
        log.info("%s noise: %.3f of training labels flipped", self.noise, flipped)

    def _corrupt(self, train: ImageArrays, generator: torch.Generator) -> NoisyLabels:
        classes, rate = self.num_classes, self.noise_rate
        if self.noise == "instance":
            scores = nearest_centroid_scores(train.images, train.labels, classes)  # (N, K)
            return instance_dependent_noise(train.labels, scores, rate, generator)
        if self.noise == "symmetric":
            transition = symmetric_transition(classes, rate)
        elif self.noise == "pair_flip":
            transition = pair_flip_transition(classes, rate)
        else:
            assert self.confusion_groups is not None
            transition = confusion_group_transition(classes, rate, self.confusion_groups)
        return apply_transition(train.labels, transition, generator)


class NoisyFashionMNISTDataModule(NoisyTrainLabels, FashionMNISTDataModule):
    """Fashion-MNIST with noisy training labels; look-alike groups of tops and of footwear."""

    def __init__(
        self, confusion_groups: Sequence[Sequence[int]] = FASHION_MNIST_CONFUSIONS, **kwargs: Any
    ) -> None:
        super().__init__(confusion_groups=confusion_groups, **kwargs)


class NoisyDigitsDataModule(NoisyTrainLabels, DigitsDataModule):
    """scikit-learn's digits with noisy training labels (for second-long tests)."""
