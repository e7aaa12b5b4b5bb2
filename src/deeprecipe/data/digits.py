"""scikit-learn's bundled 8x8 digits (1,797 images): real data for second-long tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deeprecipe.data.base import ImageArrays, ImageDataModule

NATIVE_SIZE = 8


class DigitsDataModule(ImageDataModule):
    """The UCI handwritten digits bundled with scikit-learn: 10 classes, 8x8 grey, no test split.

    Pixel values 0..16 are scaled to 0..255. A ``test_size`` part is held out as test set.
    With ``image_size`` other than 8 the images are resized to it once, bilinearly (half-pixel
    centres, no antialiasing), e.g. 28 to feed a network trained on Fashion-MNIST.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = NATIVE_SIZE,
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
        images = torch.from_numpy(digits.images).float().mul(255 / 16).unsqueeze(1)
        if self.image_size != NATIVE_SIZE:
            images = F.interpolate(
                images, size=self.image_size, mode="bilinear", align_corners=False
            )
        images = images.round().clamp(0, 255)
        labels = torch.from_numpy(digits.target).long()
        return ImageArrays(images.to(torch.uint8), labels), None
