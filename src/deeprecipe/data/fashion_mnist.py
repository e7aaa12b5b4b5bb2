"""Fashion-MNIST from its original idx files (Debian package ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.errors import CorruptDataError, DataNotFoundError

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) as the array its header describes.

    The format: two zero bytes, a dtype code, the number of dimensions, then each dimension as a
    big-endian int32, then the data. Raises :class:`CorruptDataError` naming the file when the
    header or the length is wrong.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise CorruptDataError(
            f"Cannot read {path}: {error}. Reinstall or re-download it."
        ) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CorruptDataError(f"{path} is not an idx file (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise CorruptDataError(
            f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}. "
            "Reinstall or re-download it."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the data with "
        "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in "
        f"{DEBIAN_ROOT}), or download the four idx files from "
        "https://github.com/zalandoresearch/fashion-mnist and set data.root=THEIR_FOLDER."
    )


def load_split(root: Path, split: str) -> ImageArrays:
    """Load ``train`` (60k) or ``t10k`` (10k) as uint8 (N, 1, 28, 28) images and int64 labels."""
    images = read_idx(_find(root, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise CorruptDataError(
            f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, "
            f"labels {labels.shape}."
        )
    return ImageArrays(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST: 60k training and 10k test greyscale 28x28 images of 10 clothing classes.

    Args:
        root: folder with the idx files (``.gz`` or not); the Debian package's by default.
        **kwargs: see :class:`ImageDataModule`.
    """

    def __init__(
        self,
        root: str = DEBIAN_ROOT,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        **kwargs,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs
        )
        self.root = Path(root)

    @property
    def source_name(self) -> str:
        return "Fashion-MNIST"

    def prepare_data(self) -> None:
        for split in ("train", "t10k"):
            _find(self.root, f"{split}-images-idx3-ubyte")
            _find(self.root, f"{split}-labels-idx1-ubyte")

    def load_arrays(self) -> tuple[ImageArrays, ImageArrays]:
        return load_split(self.root, "train"), load_split(self.root, "t10k")
