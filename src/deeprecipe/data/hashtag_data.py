"""Images with simulated hashtags as weak multi-label targets, for hashtag pretraining.

:class:`HashtagLabels` is mixed in front of a source DataModule
(``class HashtagFashionMNISTDataModule(HashtagLabels, FashionMNISTDataModule)``). After the
source's setup it draws a tag set for every image from its clean label with the simulator of
:mod:`deeprecipe.data.hashtags` (training, validation and test alike: hashtags are all such a
pretraining sees), then turns the tags into the targets of one of two label spaces:

- ``designed``: the label-space design step, synonyms merged into their class and non-visual
  tags dropped; ``T = K`` targets, target ``k`` is class ``k``;
- ``raw``: every tag of the vocabulary is its own target (``T = K * (1 + synonyms) +
  non-visual``), as when the design step is skipped.

Batches are :class:`~deeprecipe.batches.Tagged`: multi-hot targets plus the hidden true class,
which only the monitoring reads. ``pool_fraction`` keeps a seeded, class-stratified part of the
weakly labelled training pool; smaller fractions are subsets of larger ones (same seed), so a
study over pool sizes adds data instead of redrawing it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from deeprecipe.batches import Tagged
from deeprecipe.data.base import (
    ImageArrays,
    ImageDataModule,
    ResumableLoader,
    mixed_seed,
    stratified_subset,
)
from deeprecipe.data.digits import DigitsDataModule
from deeprecipe.data.fashion_mnist import CLASS_NAMES, FashionMNISTDataModule
from deeprecipe.data.hashtags import (
    HashtagVocabulary,
    build_vocabulary,
    design_label_space,
    label_space_noise,
    simulate_hashtags,
)
from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)

LABEL_SPACES = ("designed", "raw")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class TaggedArrays(ImageArrays):
    """:class:`ImageArrays` (``labels`` are the hidden true classes) plus bool tags ``(N, T)``."""

    tags: Tensor

    def take(self, index: Tensor) -> TaggedArrays:
        return TaggedArrays(self.images[index], self.labels[index], self.tags[index])


class TaggedBatchDataset(Dataset):
    """Like :class:`~deeprecipe.data.base.TensorBatchDataset`, but yields :class:`Tagged`."""

    def __init__(self, arrays: TaggedArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> Tagged:
        arrays = self.arrays
        return Tagged(arrays.images[index], arrays.tags[index], arrays.labels[index])

    def __getitems__(self, indices: list[int]) -> Tagged:
        return self[torch.as_tensor(indices)]  # type: ignore[index]


def loader_over(loader: DataLoader, dataset: Dataset) -> DataLoader:
    """``loader`` rebuilt over ``dataset``, which must index like the loader's own dataset.

    The base class builds its loaders over datasets of :class:`~deeprecipe.batches.Labeled`
    batches, with the resumable epoch shuffle and the DDP shards; a DataModule whose batches
    carry more than one label keeps all of that and swaps only the dataset. (A hook in
    :class:`ImageDataModule` naming the dataset class would make this unnecessary.)
    """
    if len(dataset) != len(loader.dataset):  # type: ignore[arg-type]
        raise ValueError("The new dataset must have the length of the loader's own.")
    sampler = None if isinstance(loader.sampler, SequentialSampler) else loader.sampler
    options: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "sampler": sampler,
        "drop_last": loader.drop_last,
        "collate_fn": loader.collate_fn,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "persistent_workers": loader.persistent_workers,
        "generator": loader.generator,
    }
    if isinstance(loader, ResumableLoader):
        options.update(position=loader.position, world_size=loader.world_size)
    return type(loader)(dataset, **options)


def target_names(vocabulary: HashtagVocabulary, label_space: str) -> tuple[str, ...]:
    """Names of the targets: the classes' canonical tags (designed) or every tag (raw)."""
    if label_space == "designed":
        return tuple(vocabulary.tags[int(i)] for i in vocabulary.class_tags[:, 0])
    return vocabulary.tags


def target_classes(vocabulary: HashtagVocabulary, label_space: str) -> Tensor:
    """int64 ``(T,)``: the class each target stands for, -1 for a non-visual tag."""
    if label_space == "designed":
        return torch.arange(vocabulary.num_classes)
    return vocabulary.tag_class.clone()


class HashtagLabels(ImageDataModule):
    """Replaces the labels of the source it is mixed into by simulated hashtags.

    Args:
        label_space: ``designed`` (tags mapped to classes, non-visual ones dropped) or ``raw``
            (every tag a target); see the module docstring.
        num_tags: the number of targets the method's head predicts (``method.num_tags``
            interpolates it); checked against the label space, since a config cannot compute
            it: ``num_classes`` when designed, ``num_classes * (1 + synonyms_per_class) +
            num_nonvisual`` when raw.
        pool_fraction: fraction of each class of the weakly labelled training pool to keep,
            in (0, 1]; nested across fractions for the same ``pool_seed``.
        pool_seed: seed of the pool subset, independent of the run and split seeds.
        tag_seed: seed of the simulated tags: training, validation and test tags are
            ``simulate_hashtags(labels, vocabulary, Generator().manual_seed(mixed_seed(tag_seed,
            s)))`` with ``s`` = 0, 1, 2 (the training ones drawn for the whole pool, so an image
            keeps its tags at any ``pool_fraction``).
        missing_rate, synonym_rate, incorrect_rate, nonvisual_rate: the simulator's noise,
            see :func:`~deeprecipe.data.hashtags.simulate_hashtags`.
        synonyms_per_class, num_nonvisual: the vocabulary, see
            :func:`~deeprecipe.data.hashtags.build_vocabulary`.
        drop_untagged: leave training images without any target out of the pool (they carry
            no signal for the softmax loss, and only negatives for BCE).
        class_names: names of the classes, from which the tags are spelled.
        **kwargs: the source's arguments; ``labels_per_class`` and ``train_fraction`` do not
            apply (use ``pool_fraction``).
    """

    def __init__(
        self,
        label_space: str = "designed",
        num_tags: int | None = None,
        pool_fraction: float = 1.0,
        pool_seed: int = 0,
        tag_seed: int = 0,
        missing_rate: float = 0.2,
        synonym_rate: float = 0.3,
        incorrect_rate: float = 0.2,
        nonvisual_rate: float = 0.5,
        synonyms_per_class: int = 2,
        num_nonvisual: int = 5,
        drop_untagged: bool = True,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("labels_per_class") is not None or kwargs.get("train_fraction", 1.0) != 1:
            raise ConfigError(
                "data.labels_per_class and data.train_fraction do not apply to hashtag data; "
                "set data.pool_fraction to use part of the weakly labelled pool."
            )
        if kwargs.get("classes") is not None:
            raise ConfigError(
                "data.classes does not apply to hashtag data: its tag vocabulary is built for "
                "all the source's classes. Leave data.classes null."
            )
        super().__init__(**kwargs)
        if label_space not in LABEL_SPACES:
            raise ConfigError(
                f"data.label_space={label_space!r}; choose designed (tags mapped to classes) or "
                "raw (every tag a target)."
            )
        if not 0.0 < pool_fraction <= 1.0:
            raise ConfigError(f"data.pool_fraction={pool_fraction}; it must be in (0, 1].")
        names = list(class_names) if class_names is not None else None
        if names is None:
            names = [f"class{k}" for k in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ConfigError(
                f"{len(names)} class names for data.num_classes={self.num_classes}; give one "
                "name per class."
            )
        self.vocabulary = build_vocabulary(names, synonyms_per_class, num_nonvisual)
        self.label_space = label_space
        self.target_names = target_names(self.vocabulary, label_space)
        self.target_class = target_classes(self.vocabulary, label_space)  # (T,)
        if num_tags is not None and num_tags != len(self.target_names):
            raise ConfigError(
                f"data.label_space={label_space} has {len(self.target_names)} targets "
                f"({self.num_classes} classes x {1 + synonyms_per_class} tags + {num_nonvisual} "
                f"non-visual when raw) but data.num_tags={num_tags}; set "
                f"data.num_tags={len(self.target_names)}."
            )
        self.num_tags = len(self.target_names)
        self.rates = {
            "missing_rate": missing_rate,
            "synonym_rate": synonym_rate,
            "incorrect_rate": incorrect_rate,
            "nonvisual_rate": nonvisual_rate,
        }
        for key, rate in self.rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"data.{key}={rate}; it must be in [0, 1].")
        self.pool_fraction = pool_fraction
        self.pool_seed = pool_seed
        self.tag_seed = tag_seed
        self.drop_untagged = drop_untagged
        self.raw_train_tags: Tensor | None = None  # (N, V) tags of the kept pool, for analysis

    def setup(self, stage: str | None = None) -> None:
        if isinstance(self.train, TaggedArrays):
            return
        super().setup(stage)
        assert self.train is not None and self.val is not None and self.test is not None
        # tags of the whole pool before the subset: an image keeps its tags at any pool size
        train_tags = self._simulate(self.train.labels, stream=0)  # (N, V)
        keep = torch.ones(len(self.train), dtype=torch.bool)
        if self.pool_fraction < 1.0:
            generator = torch.Generator().manual_seed(self.pool_seed)
            chosen = stratified_subset(
                self.train.labels, self.num_classes, generator, fraction=self.pool_fraction
            )
            keep = torch.zeros(len(self.train), dtype=torch.bool)
            keep[chosen] = True
        targets = self._targets(train_tags)  # (N, T)
        if self.drop_untagged:
            keep &= targets.any(dim=1)
        index = torch.nonzero(keep).flatten()
        if len(index) < self.batch_size:
            raise ConfigError(
                f"The hashtag pool keeps {len(index)} training images, fewer than "
                f"data.batch_size={self.batch_size}; raise data.pool_fraction or lower the "
                "batch size."
            )
        self.raw_train_tags = train_tags[index]
        self.train = TaggedArrays(
            self.train.images[index], self.train.labels[index], targets[index]
        )
        self.val = self._tagged(self.val, stream=1)
        self.test = self._tagged(self.test, stream=2)
        noise = label_space_noise(
            design_label_space(self.raw_train_tags, self.vocabulary), self.train.labels
        )
        log.info(
            "hashtags (%s, %d targets): %d training images, designed targets exact %.3f, "
            "missing the true class %.3f, with a wrong class %.3f",
            self.label_space,
            self.num_tags,
            len(self.train),
            noise.exact,
            noise.missing,
            noise.with_wrong,
        )

    def _simulate(self, labels: Tensor, stream: int) -> Tensor:
        generator = torch.Generator().manual_seed(mixed_seed(self.tag_seed, stream))
        return simulate_hashtags(labels, self.vocabulary, generator, **self.rates)

    def _targets(self, tags: Tensor) -> Tensor:
        """bool ``(N, T)`` targets of raw tags ``(N, V)`` in this label space."""
        if self.label_space == "designed":
            return design_label_space(tags, self.vocabulary)
        return tags

    def _tagged(self, arrays: ImageArrays, stream: int) -> TaggedArrays:
        targets = self._targets(self._simulate(arrays.labels, stream))
        return TaggedArrays(arrays.images, arrays.labels, targets)

    def _loader(self, arrays: ImageArrays | None, batch_size: int, train: bool) -> DataLoader:
        loader = super()._loader(arrays, batch_size, train)
        if not isinstance(arrays, TaggedArrays):
            raise RuntimeError("Call setup() before asking for a dataloader.")
        return loader_over(loader, TaggedBatchDataset(arrays))


class HashtagFashionMNISTDataModule(HashtagLabels, FashionMNISTDataModule):
    """Fashion-MNIST with simulated hashtags spelled from its class names (``#tshirttop``...)."""

    def __init__(self, class_names: Sequence[str] = CLASS_NAMES, **kwargs: Any) -> None:
        super().__init__(class_names=class_names, **kwargs)


class HashtagDigitsDataModule(HashtagLabels, DigitsDataModule):
    """scikit-learn's digits with simulated hashtags (``#zero``...), for second-long tests."""

    def __init__(self, class_names: Sequence[str] = DIGIT_NAMES, **kwargs: Any) -> None:
        super().__init__(class_names=class_names, **kwargs)
