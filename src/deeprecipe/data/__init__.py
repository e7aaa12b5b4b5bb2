"""Data sources as LightningDataModules yielding typed batches (:mod:`deeprecipe.batches`)."""

from deeprecipe.data.base import ImageArrays, ImageDataModule
from deeprecipe.data.digits import DigitsDataModule
from deeprecipe.data.fashion_mnist import FashionMNISTDataModule
from deeprecipe.data.image_folder import ImageFolderDataModule
from deeprecipe.data.moving_fashion import MovingFashionDataModule
from deeprecipe.data.text import AustenDataModule, CharTextDataModule
from deeprecipe.data.torchvision_sets import TorchvisionDataModule
from deeprecipe.data.video import VideoDataModule
from deeprecipe.data.video_clips import VideoClipsDataModule
from deeprecipe.data.video_folder import VideoFolderDataModule

__all__ = [
    "AustenDataModule",
    "CharTextDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageArrays",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MovingFashionDataModule",
    "TorchvisionDataModule",
    "VideoClipsDataModule",
    "VideoDataModule",
    "VideoFolderDataModule",
]

from deeprecipe.data.hashtag_data import (
    HashtagDigitsDataModule,
    HashtagFashionMNISTDataModule,
    HashtagLabels,
)
from deeprecipe.data.noisy import (
    NoisyDigitsDataModule,
    NoisyFashionMNISTDataModule,
    NoisyTrainLabels,
)
from deeprecipe.data.self_training import (
    SelfTrainingData,
    SelfTrainingDigitsDataModule,
    SelfTrainingFashionMNISTDataModule,
)
from deeprecipe.data.semi import (
    SemiDigitsDataModule,
    SemiFashionMNISTDataModule,
    SemiSupervised,
)

__all__ += [
    "HashtagDigitsDataModule",
    "HashtagFashionMNISTDataModule",
    "HashtagLabels",
    "NoisyDigitsDataModule",
    "NoisyFashionMNISTDataModule",
    "NoisyTrainLabels",
    "SelfTrainingData",
    "SelfTrainingDigitsDataModule",
    "SelfTrainingFashionMNISTDataModule",
    "SemiDigitsDataModule",
    "SemiFashionMNISTDataModule",
    "SemiSupervised",
]
