"""Semi-supervised splits: a few labelled training images per class, the rest unlabelled.

:class:`SemiSupervised` is mixed in front of a source DataModule
(``class SemiFashionMNISTDataModule(SemiSupervised, FashionMNISTDataModule)``). After the
source's setup it splits the training split into a class-balanced labelled set of
``labels_per_class`` images per class and an unlabelled set of all the others (disjoint). The
training loader yields :class:`~deeprecipe.batches.Semi` batches through Lightning's
``CombinedLoader``: an epoch is one pass over the unlabelled set in batches of
``mu * batch_size``, and the labelled set is reshuffled and repeated as often as needed to give
every step a labelled batch of ``batch_size`` (as FixMatch does with 40 labels).

Both batch sizes are global, as everywhere in the suite: under DDP each of the W processes
loads ``batch_size / W`` labelled and ``mu * batch_size / W`` unlabelled images per step, its
share of the batches a single process would load (the orders are pure functions of the run
seed and the epoch), so a config means the same optimization on any number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Sampler

from deeprecipe.batches import Semi, Unlabeled
from deeprecipe.data.base import (
    EpochShuffleSampler,
    ImageArrays,
    ImageDataModule,
    TensorBatchDataset,
    keep_batch,
    mixed_seed,
    run_seed,
    stratified_subset,
)
from deeprecipe.data.digits import DigitsDataModule
from deeprecipe.data.fashion_mnist import FashionMNISTDataModule
from deeprecipe.errors import ConfigError


class UnlabeledBatchDataset(Dataset):
    """Like :class:`TensorBatchDataset`, but yields :class:`Unlabeled` (labels kept hidden)."""

    def __init__(self, arrays: ImageArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> Unlabeled:
        return Unlabeled(self.arrays.images[index], self.arrays.labels[index])

    def __getitems__(self, indices: list[int]) -> Unlabeled:
        index = torch.as_tensor(indices)
        return Unlabeled(self.arrays.images[index], self.arrays.labels[index])


class RepeatedShuffleSampler(Sampler[int]):
    """``num_samples`` indices: fresh permutations of ``range(length)`` end to end, each a pure
    function of ``(seed, epoch, k)`` for the k-th permutation of the epoch, so that every
    process of a DDP run draws the same order and takes its share of it."""

    def __init__(self, length: int, num_samples: int, seed: int) -> None:
        self.length = length
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        orders: list[torch.Tensor] = []
        count = 0
        while count < self.num_samples:
            generator = torch.Generator().manual_seed(
                mixed_seed(self.seed, self.epoch, len(orders))
            )
            orders.append(torch.randperm(self.length, generator=generator))
            count += self.length
        return iter(torch.cat(orders)[: self.num_samples].tolist())


def split_labeled(
    train: ImageArrays, num_classes: int, labels_per_class: int, split_seed: int
) -> tuple[ImageArrays, ImageArrays]:
    """(labelled, unlabelled): ``labels_per_class`` images per class (seeded), and the others.

    Shared by every regime that starts from a few labels (semi-supervised methods, self-training),
    so that with the same ``split_seed`` they all see the same labelled images.
    """
    generator = torch.Generator().manual_seed(split_seed)
    labeled = stratified_subset(
        train.labels, num_classes, generator, per_class=labels_per_class
    )  # (K * labels_per_class,)
    is_unlabeled = torch.ones(len(train), dtype=torch.bool)
    is_unlabeled[labeled] = False
    return train.take(labeled), train.take(torch.nonzero(is_unlabeled).flatten())


class SemiSupervised(ImageDataModule):
    """Labelled + unlabelled training batches for the semi-supervised methods.

    Args:
        labels_per_class: labelled training images per class (balanced, seeded by
            ``split_seed``); every other training image is unlabelled.
        mu: unlabelled images per labelled image in a step (FixMatch's mu): the unlabelled
            batch holds ``mu * batch_size`` images.
        **kwargs: the source's arguments (``batch_size`` is the labelled batch size).
    """

    def __init__(self, labels_per_class: int = 25, mu: int = 7, **kwargs: Any) -> None:
        if kwargs.get("train_fraction", 1.0) != 1.0:
            raise ConfigError("data.train_fraction does not apply to semi-supervised data.")
        super().__init__(**kwargs)
        if labels_per_class < 1:
            raise ConfigError(f"data.labels_per_class={labels_per_class}; it must be >= 1.")
        if mu < 1:
            raise ConfigError(f"data.mu={mu}; it must be a positive integer.")
        # Not the base class's labels_per_class, which would drop the unlabelled images.
        self.semi_labels_per_class = labels_per_class
        self.mu = mu
        self.unlabeled: ImageArrays | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.unlabeled is not None:
            return
        super().setup(stage)
        assert self.train is not None
        labeled, unlabeled = split_labeled(
            self.train, self.num_classes, self.semi_labels_per_class, self.split_seed
        )
        if len(unlabeled) < self.mu * self.batch_size:
            raise ConfigError(
                f"{len(unlabeled)} unlabelled images are fewer than one unlabelled batch of "
                f"data.mu * data.batch_size = {self.mu * self.batch_size}; lower either."
            )
        self.train, self.unlabeled = labeled, unlabeled

    def train_dataloader(self) -> CombinedLoader:  # type: ignore[override]
        if self.train is None or self.unlabeled is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global labelled batch, split over "
                f"{world} processes; make it a multiple of {world}."
            )
        unlabeled_batch = self.mu * self.batch_size
        steps = len(self.unlabeled) // unlabeled_batch
        common: dict[str, Any] = {
            "collate_fn": keep_batch,
            "drop_last": True,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }
        seed = run_seed()

        def share(sampler: Sampler[int]) -> Sampler[int]:
            # rank r takes every world-th index of the shared order: the ranks' batches of a
            # step together are the single process's batch
            if world == 1:
                return sampler
            return DistributedSamplerWrapper(sampler, world, rank, shuffle=False, drop_last=True)

        unlabeled = DataLoader(
            UnlabeledBatchDataset(self.unlabeled),
            batch_size=unlabeled_batch // world,
            sampler=share(EpochShuffleSampler(len(self.unlabeled), mixed_seed(seed, 1))),
            **common,
        )
        # Fresh permutations of the labelled set, concatenated to fill the epoch's steps.
        labeled_order = RepeatedShuffleSampler(
            len(self.train), steps * self.batch_size, mixed_seed(seed, 2)
        )
        labeled = DataLoader(
            TensorBatchDataset(self.train),
            batch_size=self.batch_size // world,
            sampler=share(labeled_order),
            **common,
        )
        # A Semi of loaders: the CombinedLoader yields a Semi of batches.
        return CombinedLoader(Semi._make((labeled, unlabeled)), mode="max_size_cycle")


class SemiFashionMNISTDataModule(SemiSupervised, FashionMNISTDataModule):
    """Fashion-MNIST with ``labels_per_class`` labelled training images per class."""


class SemiDigitsDataModule(SemiSupervised, DigitsDataModule):
    """scikit-learn's digits with few labels (for second-long tests)."""
