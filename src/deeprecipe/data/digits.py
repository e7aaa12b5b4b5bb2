"""scikit-learn's bundled 8x8 digits (1,797 images): real data for second-long tests."""

from __future__ import annotations

import torch

from deeprecipe.data.base import ImageArrays, ImageDataModule


class DigitsDataModule(ImageDataModule):
    """The UCI handwritten digits bundled with scikit-learn: 10 classes, 8x8 grey, no test split.

    Pixel values 0..16 are scaled to 0..255. A ``test_size`` part is held out as test set.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 8,
        val_size: float = 0.1,
        test_size: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_chans=in_chans,
            image_size=image_size,
            val_size=val_size,
            test_size=test_size,
            **kwargs,
        )

    @property
    def source_name(self) -> str:
        return "digits"

    def load_arrays(self) -> tuple[ImageArrays, None]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).mul(255 / 16).round().clamp(0, 255)
        labels = torch.from_numpy(digits.target).long()
        return ImageArrays(images.to(torch.uint8).unsqueeze(1), labels), None
