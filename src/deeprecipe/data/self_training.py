"""Training data of one self-training round: the labelled split plus teacher-labelled images.

Self-training runs in rounds (:mod:`deeprecipe.self_training`): a teacher labels the unlabelled
images offline, a student trains on the union, the student becomes the next teacher. Each round
is an ordinary run, so the pseudo-labels travel between rounds as a file (``data.pseudo_labels``,
written by :func:`save_pseudo_labels`): round ``r``'s run dir keeps the exact labels its student
learnt from.

:class:`SelfTrainingData` is mixed in front of a source DataModule. It splits the training split
as the semi-supervised data do (:func:`~deeprecipe.data.semi.split_labeled`, same images for the
same ``split_seed`` and ``labels_per_class``), keeps the unlabelled part with its hidden labels
(``unlabeled``, for the teacher and for measuring pseudo-label accuracy) and trains on
:class:`~deeprecipe.batches.PseudoLabeled` batches of the labelled images (one-hot targets) and
the pseudo-labelled ones. Validation and test batches are plain :class:`Labeled` ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deeprecipe.batches import PseudoLabeled
from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.data.digits import DigitsDataModule
from deeprecipe.data.fashion_mnist import FashionMNISTDataModule
from deeprecipe.data.hashtag_data import loader_over
from deeprecipe.data.semi import split_labeled
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError

log = logging.getLogger(__name__)


class PseudoLabels(NamedTuple):
    """Teacher labels of part of the unlabelled set: ``indices`` int64 ``(M,)`` into it, distinct;
    ``targets`` float ``(M, K)``, each row a distribution (one-hot for hard labels)."""

    indices: Tensor
    targets: Tensor


@dataclass
class PseudoArrays(ImageArrays):
    """:class:`ImageArrays` (``labels`` true, hidden for pseudo-labelled images) plus float
    targets ``(N, K)`` and the bool ``is_pseudo`` ``(N,)``."""

    targets: Tensor
    is_pseudo: Tensor

    def take(self, index: Tensor) -> PseudoArrays:
        return PseudoArrays(
            self.images[index], self.labels[index], self.targets[index], self.is_pseudo[index]
        )


class PseudoLabeledBatchDataset(Dataset):
    """Like :class:`~deeprecipe.data.base.TensorBatchDataset`, but yields :class:`PseudoLabeled`."""

    def __init__(self, arrays: PseudoArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> PseudoLabeled:
        a = self.arrays
        return PseudoLabeled(a.images[index], a.targets[index], a.labels[index], a.is_pseudo[index])

    def __getitems__(self, indices: list[int]) -> PseudoLabeled:
        return self[torch.as_tensor(indices)]  # type: ignore[index]


class SelfTrainingData(ImageDataModule):
    """The labelled split and, from ``pseudo_labels``, the teacher-labelled images as one set.

    Args:
        labels_per_class: labelled training images per class (balanced, seeded by
            ``split_seed``); the other training images are the unlabelled set.
        pseudo_labels: a file of :func:`save_pseudo_labels` for this split, or None (round 0:
            the teacher trains on the labelled images alone).
        min_epoch_size: the training set is repeated (whole copies, each image once per copy)
            until an epoch holds at least this many images, so that the labelled-only round 0
            gets as many steps per epoch as a round on the union, and is validated as rarely.
        **kwargs: the source's arguments (``train_fraction`` does not apply).
    """

    def __init__(
        self,
        labels_per_class: int = 25,
        pseudo_labels: str | None = None,
        min_epoch_size: int = 0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("train_fraction", 1.0) != 1.0:
            raise ConfigError("data.train_fraction does not apply to self-training data.")
        super().__init__(**kwargs)
        if labels_per_class < 1:
            raise ConfigError(f"data.labels_per_class={labels_per_class}; it must be >= 1.")
        if min_epoch_size < 0:
            raise ConfigError(f"data.min_epoch_size={min_epoch_size}; it must be >= 0.")
        # Not the base class's labels_per_class, which would drop the unlabelled images.
        self.split_labels_per_class = labels_per_class
        self.pseudo_labels = pseudo_labels
        self.min_epoch_size = min_epoch_size
        self.labeled: ImageArrays | None = None
        self.unlabeled: ImageArrays | None = None
        self.num_pseudo = 0

    def setup(self, stage: str | None = None) -> None:
        if self.unlabeled is not None:
            return
        super().setup(stage)
        assert self.train is not None
        labeled, unlabeled = split_labeled(
            self.train, self.num_classes, self.split_labels_per_class, self.split_seed
        )
        union = PseudoArrays(
            labeled.images,
            labeled.labels,
            F.one_hot(labeled.labels, self.num_classes).float(),
            torch.zeros(len(labeled), dtype=torch.bool),
        )
        if self.pseudo_labels is not None:
            pseudo = self.read_pseudo_labels(Path(self.pseudo_labels), len(unlabeled))
            chosen = unlabeled.take(pseudo.indices)
            union = PseudoArrays(
                torch.cat([union.images, chosen.images]),
                torch.cat([union.labels, chosen.labels]),
                torch.cat([union.targets, pseudo.targets.float()]),
                torch.cat([union.is_pseudo, torch.ones(len(chosen), dtype=torch.bool)]),
            )
            self.num_pseudo = len(chosen)
        copies = max(1, math.ceil(self.min_epoch_size / len(union)))
        if copies > 1:
            union = union.take(torch.arange(len(union)).repeat(copies))
        if len(union) < self.batch_size:
            raise ConfigError(
                f"The self-training set has {len(union)} images, fewer than data.batch_size="
                f"{self.batch_size}; raise data.min_epoch_size or lower the batch size."
            )
        self.train, self.labeled, self.unlabeled = union, labeled, unlabeled
        log.info(
            "self-training set: %d labelled + %d pseudo-labelled images (x%d per epoch), "
            "%d unlabelled",
            len(labeled),
            self.num_pseudo,
            copies,
            len(unlabeled),
        )

    def split_identity(self, num_unlabeled: int) -> dict[str, Any]:
        """What pseudo-labels must have been made for: this source, split and unlabelled set."""
        return {
            "source": self.source_name,
            "split_seed": self.split_seed,
            "labels_per_class": self.split_labels_per_class,
            "num_unlabeled": num_unlabeled,
            "num_classes": self.num_classes,
        }

    def read_pseudo_labels(self, path: Path, num_unlabeled: int) -> PseudoLabels:
        """Load and check a file of :func:`save_pseudo_labels` against this split."""
        if not path.is_file():
            raise DataNotFoundError(
                f"data.pseudo_labels={path}: no such file. The self-training driver "
                "(python -m deeprecipe.self_training) writes it in each round's dir."
            )
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise CorruptDataError(
                f"data.pseudo_labels={path} cannot be read ({type(error).__name__}); delete it "
                "and let the driver label the round again."
            ) from None
        expected = self.split_identity(num_unlabeled)
        made_for = {key: content.get(key) for key in expected} if isinstance(content, dict) else {}
        if made_for != expected:
            raise ConfigError(
                f"data.pseudo_labels={path} was made for {made_for}, not for this data "
                f"{expected}; use the data settings of the run that wrote it."
            )
        indices, targets = content.get("indices"), content.get("targets")
        valid = (
            isinstance(indices, Tensor)
            and isinstance(targets, Tensor)
            and indices.dtype == torch.int64
            and indices.ndim == 1
            and targets.shape == (len(indices), self.num_classes)
            and targets.is_floating_point()
        )
        if valid and len(indices):
            valid = (
                int(indices.min()) >= 0
                and int(indices.max()) < num_unlabeled
                and len(torch.unique(indices)) == len(indices)
                and bool((targets >= 0).all())
                and torch.allclose(targets.double().sum(dim=1), torch.ones(len(targets)).double())
            )
        if not valid:
            raise CorruptDataError(
                f"data.pseudo_labels={path} does not hold distinct indices into the unlabelled "
                "set with one target distribution each; delete it and label the round again."
            )
        return PseudoLabels(indices, targets)

    def _loader(self, arrays: ImageArrays | None, batch_size: int, train: bool) -> DataLoader:
        loader = super()._loader(arrays, batch_size, train)
        if not train:
            return loader
        assert isinstance(arrays, PseudoArrays)
        return loader_over(loader, PseudoLabeledBatchDataset(arrays))


def save_pseudo_labels(path: Path, labels: PseudoLabels, datamodule: SelfTrainingData) -> None:
    """Write ``labels`` (of ``datamodule.unlabeled``) for :class:`SelfTrainingData` to read."""
    if datamodule.unlabeled is None:
        raise RuntimeError("Call setup() on the DataModule before saving its pseudo-labels.")
    content = {
        **datamodule.split_identity(len(datamodule.unlabeled)),
        "indices": labels.indices.long().cpu(),
        "targets": labels.targets.float().cpu(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    torch.save(content, temp)
    temp.replace(path)


class SelfTrainingFashionMNISTDataModule(SelfTrainingData, FashionMNISTDataModule):
    """Fashion-MNIST with ``labels_per_class`` labels per class and teacher-labelled images."""


class SelfTrainingDigitsDataModule(SelfTrainingData, DigitsDataModule):
    """scikit-learn's digits for self-training (for second-long tests)."""
