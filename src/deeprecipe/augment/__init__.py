"""Batched augmentation on the device with per-sample random parameters."""

from deeprecipe.augment.batched import Pipeline, RandomHorizontalFlip, RandomPadCrop
from deeprecipe.augment.erasing import Cutout, RandomErasing
from deeprecipe.augment.geometric import RandomResizedCrop
from deeprecipe.augment.mixing import CutMix, Mixup, MixupCutmix
from deeprecipe.augment.photometric import ColorJitter, GaussianBlur, PCALighting, RandomGrayscale
from deeprecipe.augment.randaugment import RandAugment

__all__ = [
    "ColorJitter",
    "CutMix",
    "Cutout",
    "GaussianBlur",
    "Mixup",
    "MixupCutmix",
    "PCALighting",
    "Pipeline",
    "RandAugment",
    "RandomErasing",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomPadCrop",
    "RandomResizedCrop",
]
