"""In-memory image DataModule shared by every image source.

Sources only decode their files into uint8 tensors (:meth:`ImageDataModule.load_arrays`); this
base class does everything else the same way for all of them: validation of what was loaded, a
seeded train/val split, label subsets for the low-label regimes, per-channel statistics of the
training split, and batched loading by tensor indexing (no per-image Python work). Batches stay
uint8 until they reach the device, where the method converts, augments and normalizes them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError, CorruptDataError

log = logging.getLogger(__name__)


@dataclass
class ImageArrays:
    """Images as uint8 ``(N, C, H, W)`` and labels as int64 ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Tensor) -> ImageArrays:
        return ImageArrays(self.images[index], self.labels[index])


class TensorBatchDataset(Dataset):
    """A map-style dataset over in-memory tensors that fetches a whole batch by one index op.

    The DataLoader calls ``__getitems__`` with the batch's indices, so a batch costs one
    ``tensor[indices]`` instead of B calls to ``__getitem__`` and a collate. Samplers (shuffle,
    DistributedSampler under DDP) work unchanged.
    """

    def __init__(self, arrays: ImageArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> Labeled:
        return Labeled(self.arrays.images[index], self.arrays.labels[index])

    def __getitems__(self, indices: list[int]) -> Labeled:
        index = torch.as_tensor(indices)
        return Labeled(self.arrays.images[index], self.arrays.labels[index])


def keep_batch(batch: Any) -> Any:
    """collate_fn for :class:`TensorBatchDataset`: the batch is already stacked."""
    return batch


def stratified_subset(
    labels: Tensor,
    num_classes: int,
    generator: torch.Generator,
    per_class: int | None = None,
    fraction: float | None = None,
) -> Tensor:
    """Indices of a seeded, class-balanced subset: `per_class` items or `fraction` of each class.

    Raises :class:`ConfigError` when a class has fewer than ``per_class`` items.
    """
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        if per_class is not None:
            take = per_class
            if take > len(members):
                raise ConfigError(
                    f"data.labels_per_class={per_class} but class {cls} has only {len(members)} "
                    "training examples; choose a value no larger than that."
                )
        else:
            assert fraction is not None
            take = max(1, round(fraction * len(members))) if len(members) else 0
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:take]])
    return torch.sort(torch.cat(chosen)).values


class ImageDataModule(L.LightningDataModule):
    """Base class for image classification data held in memory as uint8 tensors.

    Args:
        num_classes: number of classes the data must have; checked against the labels.
        in_chans: image channels the data must have (1 grey, 3 RGB).
        image_size: height and width the data must have.
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size for validation and test; defaults to ``batch_size``.
        val_size: examples held out of the training set for validation, as a count (>= 1) or a
            fraction (< 1). Seeded by ``split_seed``.
        test_size: used only by sources without an official test set: the part of the data held
            out as test set, as a count or a fraction.
        split_seed: seed of the val split and of the label subsets, independent of the run seed
            so that runs with different seeds see the same split.
        labels_per_class: keep only this many labelled training examples per class (balanced).
        train_fraction: keep only this fraction of each class of the training split.
        num_workers: DataLoader worker processes. In-memory batches need none.
        pin_memory: pin host memory for faster copies to a GPU.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        image_size: int,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        val_size: float = 5000,
        test_size: float = 0.2,
        split_seed: int = 0,
        labels_per_class: int | None = None,
        train_fraction: float = 1.0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}; it must be a positive integer.")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"data.eval_batch_size={eval_batch_size}; it must be positive.")
        if not 0.0 < train_fraction <= 1.0:
            raise ConfigError(f"data.train_fraction={train_fraction}; it must be in (0, 1].")
        if labels_per_class is not None and labels_per_class < 1:
            raise ConfigError(f"data.labels_per_class={labels_per_class}; it must be >= 1.")
        if labels_per_class is not None and train_fraction < 1.0:
            raise ConfigError("Set data.labels_per_class or data.train_fraction, not both.")
        if val_size < 0:
            raise ConfigError(f"data.val_size={val_size}; it must be >= 0.")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed
        self.labels_per_class = labels_per_class
        self.train_fraction = train_fraction
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train: ImageArrays | None = None
        self.val: ImageArrays | None = None
        self.test: ImageArrays | None = None
        self.mean: tuple[float, ...] = (0.5,) * in_chans
        self.std: tuple[float, ...] = (0.5,) * in_chans

    # ----------------------------------------------------------------- what a source provides
    def load_arrays(self) -> tuple[ImageArrays, ImageArrays | None]:
        """Decode the source into (training set, official test set or None)."""
        raise NotImplementedError

    @property
    def source_name(self) -> str:
        return type(self).__name__

    # ----------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        train_all, test = self.load_arrays()
        generator = torch.Generator().manual_seed(self.split_seed)
        if test is None:
            train_all, test = self._split(train_all, self.test_size, generator, "data.test_size")
        self._check(train_all, "training")
        self._check(test, "test")
        train, val = self._split(train_all, self.val_size, generator, "data.val_size")
        # Statistics of the whole training split, before any label subset: semi- and
        # self-supervised regimes see all of these images even when few carry labels.
        pixels = train.images.float().div_(255)
        self.mean = tuple(pixels.mean(dim=(0, 2, 3)).tolist())
        self.std = tuple(pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
        del pixels
        if self.labels_per_class is not None or self.train_fraction < 1.0:
            keep = stratified_subset(
                train.labels,
                self.num_classes,
                generator,
                per_class=self.labels_per_class,
                fraction=self.train_fraction if self.labels_per_class is None else None,
            )
            train = train.take(keep)
        if len(train) < self.batch_size:
            raise ConfigError(
                f"The training split has {len(train)} examples, fewer than data.batch_size="
                f"{self.batch_size}; lower the batch size or use more labels."
            )
        self.train, self.val, self.test = train, val, test
        log.info(
            "%s: %d train / %d val / %d test, mean %s std %s",
            self.source_name,
            len(train),
            len(val),
            len(test),
            _fmt(self.mean),
            _fmt(self.std),
        )

    @staticmethod
    def _split(
        arrays: ImageArrays, size: float, generator: torch.Generator, name: str
    ) -> tuple[ImageArrays, ImageArrays]:
        count = int(size) if size >= 1 else math.floor(size * len(arrays))
        if count >= len(arrays):
            raise ConfigError(f"{name}={size} leaves no training data ({len(arrays)} examples).")
        order = torch.randperm(len(arrays), generator=generator)
        return arrays.take(order[count:]), arrays.take(order[:count])

    def _check(self, arrays: ImageArrays, split: str) -> None:
        images, labels = arrays.images, arrays.labels
        where = f"{self.source_name} {split} set"
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise CorruptDataError(
                f"{where}: expected uint8 images (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}."
            )
        if len(images) != len(labels):
            raise CorruptDataError(f"{where}: {len(images)} images but {len(labels)} labels.")
        expected = (self.in_chans, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ConfigError(
                f"{where}: images are {tuple(images.shape[1:])} (C, H, W) but the config says "
                f"data.in_chans={self.in_chans}, data.image_size={self.image_size}; fix the config."
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise CorruptDataError(
                f"{where}: labels span [{int(labels.min())}, {int(labels.max())}] but "
                f"data.num_classes={self.num_classes}; fix data.num_classes or the labels."
            )

    # ----------------------------------------------------------------------- dataloaders
    def _loader(self, arrays: ImageArrays | None, batch_size: int, train: bool) -> DataLoader:
        if arrays is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        return DataLoader(
            TensorBatchDataset(arrays),
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, self.eval_batch_size, train=False)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
