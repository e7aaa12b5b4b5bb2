"""MNIST, CIFAR-10/100 and STL-10 through torchvision, held in memory as uint8 tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.errors import ConfigError, DataNotFoundError

# name -> (torchvision class name, channels, size, classes, split argument of the class)
_SOURCES: dict[str, tuple[str, int, int, int, str]] = {
    "mnist": ("MNIST", 1, 28, 10, "train"),
    "cifar10": ("CIFAR10", 3, 32, 10, "train"),
    "cifar100": ("CIFAR100", 3, 32, 100, "train"),
    "stl10": ("STL10", 3, 96, 10, "split"),
}


class TorchvisionDataModule(ImageDataModule):
    """One of torchvision's classic datasets: ``mnist``, ``cifar10``, ``cifar100``, ``stl10``.

    Args:
        name: which dataset.
        root: folder holding (or receiving) torchvision's files for it.
        download: fetch the files when absent (needs internet). Offline and absent, the run
            stops with a message naming the folder and the fix.
        **kwargs: see :class:`ImageDataModule`; ``num_classes``, ``in_chans`` and ``image_size``
            default to the dataset's own.
    """

    def __init__(self, name: str, root: str, download: bool = True, **kwargs: Any) -> None:
        if name not in _SOURCES:
            raise ConfigError(f"data.name={name!r} is not one of {sorted(_SOURCES)}.")
        _, chans, size, classes, _ = _SOURCES[name]
        kwargs.setdefault("num_classes", classes)
        kwargs.setdefault("in_chans", chans)
        kwargs.setdefault("image_size", size)
        super().__init__(**kwargs)
        self.dataset = name
        self.root = Path(root)
        self.download = download

    @property
    def source_name(self) -> str:
        return self.dataset

    def _dataset(self, train: bool, download: bool) -> Any:
        class_name, *_, split_arg = _SOURCES[self.dataset]
        cls = getattr(torchvision.datasets, class_name)
        split = (
            {"train": train} if split_arg == "train" else {"split": "train" if train else "test"}
        )
        try:
            return cls(str(self.root / self.dataset), download=download, **split)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError...
            how = (
                "The download failed (no internet?): copy the dataset's files there by hand"
                if download
                else "Set data.download=true on a machine with internet, or copy the files there"
            )
            raise DataNotFoundError(
                f"{class_name} is not in {self.root / self.dataset} ({error}). {how}, or point "
                "data.root at a folder that has them. Offline, the suite's default dataset "
                "(data=fashion_mnist) installs with `apt-get install dataset-fashion-mnist`."
            ) from error

    def prepare_data(self) -> None:
        if self.download:
            self._dataset(train=True, download=True)
            self._dataset(train=False, download=True)

    def load_arrays(self) -> tuple[ImageArrays, ImageArrays]:
        return self._arrays(self._dataset(True, False)), self._arrays(self._dataset(False, False))

    def _arrays(self, dataset: Any) -> ImageArrays:
        images = torch.as_tensor(np.asarray(dataset.data))
        if images.ndim == 3:  # MNIST: (N, H, W)
            images = images.unsqueeze(1)
        elif images.shape[-1] == 3:  # CIFAR: (N, H, W, C)
            images = images.permute(0, 3, 1, 2)
        labels = getattr(dataset, "targets", None)
        if labels is None:  # STL-10
            labels = dataset.labels
        return ImageArrays(
            images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long)
        )
