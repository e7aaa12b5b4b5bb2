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
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

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


def run_seed() -> int:
    """The run's seed as ``lightning.seed_everything`` recorded it (``PL_GLOBAL_SEED``)."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mixed_seed(*numbers: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (run seed, epoch, step, ...).

    SplitMix64 folded over the numbers: neighbouring tuples give unrelated seeds, in about a
    microsecond (numpy's SeedSequence takes 30), which matters when it runs every step.
    """
    state = 0
    for number in numbers:
        state = _splitmix64(state ^ (number & _MASK64))
    return state >> 1


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that is a pure function of ``(seed, epoch)``, able to start mid-epoch.

    torch's ``RandomSampler`` draws each epoch's permutation from the global RNG, so the order
    of epoch ``e`` depends on everything that ran before it and a resumed run cannot replay it.
    Here the permutation of epoch ``e`` is ``randperm`` under a generator seeded by the run seed
    and ``e``. Lightning calls :meth:`set_epoch` before every epoch (also through
    ``DistributedSamplerWrapper``); :meth:`resume_at` makes the next pass skip the examples an
    interrupted epoch had already trained on.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, examples_done: int) -> None:
        """Make the next pass the rest of ``epoch`` after its first ``examples_done`` examples."""
        self.epoch, self.start = epoch, examples_done

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=generator)[self.start :]
        self.start = 0  # only the first pass after a resume starts late
        return iter(order.tolist())


class SequentialResumeSampler(DistributedSampler):
    """``0 .. length - 1`` in order, able to start mid-epoch (:meth:`resume_at`), like
    :class:`EpochShuffleSampler` without the shuffle: for data whose order matters (the chunks
    of truncated BPTT carry their streams from one batch to the next). Every process reads all
    items (its dataset is already its share); being a ``DistributedSampler`` keeps Lightning
    from sharding the items under DDP."""

    def __init__(self, length: int) -> None:
        super().__init__(range(length), num_replicas=1, rank=0, shuffle=False)  # type: ignore[arg-type]
        self.length = length
        self.start = 0

    def set_epoch(self, epoch: int) -> None:  # the order is the same every epoch
        pass

    def resume_at(self, epoch: int, examples_done: int) -> None:
        """Make the next pass start after its first ``examples_done`` items."""
        self.start = examples_done

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        # a generator: the start is read at the first item, not when the loader's iterator is
        # made (Lightning makes it before the resumed position is handed back)
        start, self.start = self.start, 0  # only the first pass after a resume starts late
        yield from range(start, self.length)


def training_position(trainer: L.Trainer | None) -> tuple[int, int] | None:
    """(epoch, batches trained in it) while fitting: what a checkpoint must resume from."""
    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return None
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx + 1


class ResumableLoader(DataLoader):
    """A training DataLoader that can continue an epoch where a checkpoint left it.

    ``state_dict()`` is the position ``{"epoch", "batches_done"}`` (batches this process had
    trained on in that epoch), read from the trainer through ``position``; ``load_state_dict``
    makes the next pass continue that epoch's permutation after those batches, so a resumed
    run trains on exactly the batches the interrupted one had left (a finished pass starts the
    next epoch). Lightning's own hand-over of loader states runs too early for us (its
    ``estimated_stepping_batches``, which the LR schedules use, builds the loader before the
    checkpoint is restored), so :class:`deeprecipe.resume.ExactResume` saves and applies the
    position instead; the two methods also tell Lightning that the loader is resumable.

    Args:
        position: returns ``(epoch, batches trained in it)``, or None outside training.
        world_size: processes sharing the permutation (DDP), each taking its share of a batch.
        **kwargs: DataLoader arguments; ``sampler`` is an :class:`EpochShuffleSampler`, or one
            in Lightning's ``DistributedSamplerWrapper``, or a :class:`SequentialResumeSampler`
            (with ``batch_size=None`` when every item already is a batch).
    """

    def __init__(
        self,
        *args: Any,
        position: Callable[[], tuple[int, int] | None] | None = None,
        world_size: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self.world_size = world_size

    def epoch_sampler(self) -> EpochShuffleSampler | SequentialResumeSampler | None:
        """The resumable sampler behind this loader, also inside a DDP wrapper."""
        sampler: Any = self.sampler
        if isinstance(sampler, DistributedSamplerWrapper):
            # the wrapped sampler, where Lightning's _DatasetSamplerWrapper keeps it
            sampler = getattr(sampler.dataset, "_sampler", None)
        resumable = EpochShuffleSampler | SequentialResumeSampler
        return sampler if isinstance(sampler, resumable) else None

    def state_dict(self) -> dict[str, int]:
        where = self.position() if self.position is not None else None
        if where is None:
            return {}
        epoch, batches_done = where
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        sampler = self.epoch_sampler()
        if "epoch" not in state_dict or sampler is None:
            return
        per_batch = self.batch_size or 1  # batch_size=None: every item is a whole batch
        epoch, batches_done = state_dict["epoch"], state_dict["batches_done"]
        if batches_done >= len(self):  # saved at the end of the epoch: the next one starts
            epoch, batches_done = epoch + 1, 0
        world_size = self.world_size() if self.world_size is not None else 1
        # rank r takes every world_size-th index, so k batches of each rank are the first
        # k * batch_size * world_size indices of the shared order
        sampler.resume_at(epoch, batches_done * per_batch * world_size)


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
        batch_size: training batch size, global: under DDP each of the W processes loads
            ``batch_size / W`` images per step (it must divide), so that a config means the same
            optimization on any number of processes.
        eval_batch_size: global batch size for validation and test; defaults to ``batch_size``.
        val_size: examples held out of the training set for validation, as a count (>= 1) or a
            fraction (< 1). Seeded by ``split_seed``.
        test_size: used only by sources without an official test set: the part of the data held
            out as test set, as a count or a fraction.
        split_seed: seed of the val split and of the label subsets, independent of the run seed
            so that runs with different seeds see the same split.
        labels_per_class: keep only this many labelled training examples per class (balanced).
        train_fraction: keep only this fraction of each class of the training split.
        classes: keep only the images of these source classes (train, val and test), relabelled
            0..k-1 in the order listed; ``num_classes`` must then be k. Splits a dataset into
            disjoint class sets, e.g. pretrain on classes 0-4 and transfer to 5-9.
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
        classes: Sequence[int] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if classes is not None:
            classes = [int(c) for c in classes]
            if len(set(classes)) != len(classes) or min(classes, default=0) < 0:
                raise ConfigError(
                    f"data.classes={classes}; list distinct source class indices (>= 0)."
                )
            if len(classes) != num_classes:
                raise ConfigError(
                    f"data.classes lists {len(classes)} classes but data.num_classes="
                    f"{num_classes}; set data.num_classes={len(classes)}."
                )
        if image_size < 1:
            raise ConfigError(f"data.image_size={image_size}; it must be a positive integer.")
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
        self.classes = classes
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
        if self.classes is not None:
            train_all = self._keep_classes(train_all, "training")
            test = None if test is None else self._keep_classes(test, "test")
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

    def _keep_classes(self, arrays: ImageArrays, split: str) -> ImageArrays:
        """The images of ``self.classes`` only, their labels renumbered 0..k-1 in that order."""
        assert self.classes is not None
        labels = arrays.labels.long()
        top = max(int(labels.max()) if len(labels) else -1, *self.classes)
        table = torch.full((top + 1,), -1, dtype=torch.long)
        table[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        new = table[labels.clamp_min(0)].masked_fill(labels < 0, -1)
        keep = torch.nonzero(new >= 0).flatten()
        empty = [c for c in self.classes if not bool((labels == c).any())]
        if empty:
            raise ConfigError(
                f"data.classes={self.classes}: the {self.source_name} {split} set has no "
                f"images of class {empty}; list classes the source has."
            )
        return ImageArrays(arrays.images[keep], new[keep])

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
        if images.is_floating_point() and not torch.isfinite(images).all():
            count = int((~torch.isfinite(images)).sum())
            raise CorruptDataError(
                f"{where}: {count} pixel values are NaN or infinite; the source must decode "
                "its files to uint8 images in [0, 255]."
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise CorruptDataError(f"{where}: labels are {labels.dtype}; they must be integers.")
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
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if train and batch_size % world:
            raise ConfigError(
                f"data.batch_size={batch_size} is the global batch, split over {world} "
                f"processes; make it a multiple of {world}."
            )
        common: dict[str, Any] = {
            "batch_size": math.ceil(batch_size / world),  # this process's share
            "drop_last": train,
            "collate_fn": keep_batch,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }
        if not train:
            # under DDP unpadded shards: Lightning's DistributedSampler would repeat images so
            # that all shards have the same size, and they would count twice in val/test metrics
            dataset = TensorBatchDataset(arrays)
            shards = None
            if world > 1:
                shards = UnrepeatedDistributedSampler(dataset, world, rank, shuffle=False)
            return DataLoader(dataset, sampler=shards, **common)
        seed = run_seed()
        sampler: Sampler[int] = EpochShuffleSampler(len(arrays), seed)
        if world > 1:
            # rank r takes every world-th index of the epoch's permutation, so a global batch
            # holds the same images on any number of processes; Lightning's own wrapper would
            # shuffle the permutation again (and pad it with repeated images)
            sampler = DistributedSamplerWrapper(sampler, world, rank, shuffle=False, drop_last=True)
        return ResumableLoader(
            TensorBatchDataset(arrays),
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed),
            position=lambda: training_position(self.trainer),
            world_size=lambda: self.trainer.world_size if self.trainer is not None else 1,
            **common,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, self.eval_batch_size, train=False)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
