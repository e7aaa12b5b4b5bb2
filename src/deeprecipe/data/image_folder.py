"""The user's own images laid out one folder per class (``root/CLASS/IMAGE``)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def list_class_folders(root: Path) -> list[tuple[Path, int]]:
    """(file, class index) for every image under ``root/CLASS/``, classes in sorted order.

    Raises :class:`DataNotFoundError` for a missing root and :class:`CorruptDataError` for a root
    without class folders or with an empty class folder (it would silently shift class indices).
    """
    if not root.is_dir():
        raise DataNotFoundError(f"Image folder {root} does not exist; set data.root to it.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CorruptDataError(f"{root} has no class folders; expected {root}/CLASS_NAME/IMAGE.")
    files: list[tuple[Path, int]] = []
    for index, folder in enumerate(classes):
        images = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise CorruptDataError(
                f"Class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "remove it or add images."
            )
        files.extend((path, index) for path in images)
    return files


class ImageFolderDataModule(ImageDataModule):
    """Images in class folders, decoded once at setup, resized and held in memory as uint8.

    Each image is resized so its shorter side is ``image_size`` and centre-cropped to a square.

    Args:
        root: training folder (``root/CLASS/IMAGE``).
        test_root: optional test folder with the same classes; without it ``test_size`` of
            ``root`` is held out.
        skip_corrupt: skip unreadable images (counted and logged) instead of stopping with an
            error that names the first one.
        decode_threads: threads decoding images at setup.
        **kwargs: see :class:`ImageDataModule`.
    """

    def __init__(
        self,
        root: str,
        num_classes: int,
        in_chans: int = 3,
        image_size: int = 64,
        test_root: str | None = None,
        skip_corrupt: bool = False,
        decode_threads: int = 4,
        **kwargs,
    ) -> None:
        if in_chans not in (1, 3):
            raise ConfigError(f"data.in_chans={in_chans}; image folders are read as 1 or 3.")
        super().__init__(
            num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs
        )
        self.root = Path(root)
        self.test_root = Path(test_root) if test_root else None
        self.skip_corrupt = skip_corrupt
        self.decode_threads = decode_threads
        self.skipped: list[Path] = []

    @property
    def source_name(self) -> str:
        return f"image folder {self.root}"

    def load_arrays(self) -> tuple[ImageArrays, ImageArrays | None]:
        train = self._decode_folder(self.root)
        test = self._decode_folder(self.test_root) if self.test_root else None
        return train, test

    def _decode_folder(self, root: Path) -> ImageArrays:
        files = list_class_folders(root)
        found = len({label for _, label in files})
        if found != self.num_classes:
            raise ConfigError(
                f"{root} has {found} class folders but data.num_classes={self.num_classes}; "
                f"set data.num_classes={found}."
            )
        with ThreadPoolExecutor(self.decode_threads) as pool:
            decoded = list(pool.map(self._decode, (path for path, _ in files)))
        images, labels = [], []
        for (path, label), image in zip(files, decoded, strict=True):
            if image is None:
                self.skipped.append(path)
                continue
            images.append(image)
            labels.append(label)
        if self.skipped:
            log.warning(
                "Skipped %d unreadable images (data.skip_corrupt=true), first: %s",
                len(self.skipped),
                ", ".join(str(p) for p in self.skipped[:5]),
            )
        if not images:
            raise CorruptDataError(f"No readable image in {root}.")
        return ImageArrays(torch.stack(images), torch.tensor(labels, dtype=torch.long))

    def _decode(self, path: Path) -> torch.Tensor | None:
        """``(in_chans, image_size, image_size)`` uint8, whatever the file's mode and size.

        torchvision's decoder is fast but leaves cases that would break ``torch.stack`` later:
        animated GIFs (one image per frame), WebP/GIF read as 3 channels even in grey mode, and
        formats it cannot read (BMP, TIFF); Pillow decodes those. 16-bit images are rescaled
        to 8 bits. A file neither can read is corrupt or truncated: an error naming it.
        """
        mode = ImageReadMode.RGB if self.in_chans == 3 else ImageReadMode.GRAY
        try:
            image: torch.Tensor | None = decode_image(str(path), mode=mode)
        except RuntimeError:  # unknown format or bad bytes: Pillow decides which
            image = None
        if image is None or image.ndim != 3 or image.shape[0] != self.in_chans:
            image = self._decode_with_pillow(path)
            if image is None:
                return None
        if image.dtype != torch.uint8:  # 16-bit PNG
            image = TF.to_dtype(image, torch.uint8, scale=True)
        image = TF.resize(image, [self.image_size], antialias=True)
        return TF.center_crop(image, [self.image_size, self.image_size]).contiguous()

    def _decode_with_pillow(self, path: Path) -> torch.Tensor | None:
        from PIL import Image

        try:
            with Image.open(path) as opened:  # the first frame of an animation
                converted = opened.convert("RGB" if self.in_chans == 3 else "L")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            if self.skip_corrupt:
                return None
            raise CorruptDataError(
                f"Cannot decode image {path}: {error}. The file is corrupt, truncated or not an "
                "image; delete or replace it, or set data.skip_corrupt=true to skip unreadable "
                "images."
            ) from None
        array = torch.from_numpy(np.asarray(converted).copy())  # (H, W) or (H, W, 3)
        return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)
