"""Data sources as LightningDataModules; all yield :class:`deeprecipe.batches.Labeled` batches."""

from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.data.digits import DigitsDataModule
from deeprecipe.data.fashion_mnist import FashionMNISTDataModule
from deeprecipe.data.image_folder import ImageFolderDataModule
from deeprecipe.data.torchvision_sets import TorchvisionDataModule

__all__ = [
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageArrays",
    "ImageDataModule",
    "ImageFolderDataModule",
    "TorchvisionDataModule",
]
