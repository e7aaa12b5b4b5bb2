"""Backbones: plain nn.Modules meeting the contract in :mod:`deeprecipe.models.base`."""

from deeprecipe.models.alexnet import AlexNet
from deeprecipe.models.base import Backbone
from deeprecipe.models.googlenet import GoogLeNet
from deeprecipe.models.lenet import LeNet5
from deeprecipe.models.mlp import MLP
from deeprecipe.models.resnet import ResNet, ResNet9
from deeprecipe.models.rnn import RecurrentNet
from deeprecipe.models.sequence import SequenceBackbone, SequenceClassifierBackbone
from deeprecipe.models.timm_backbone import TimmBackbone
from deeprecipe.models.transformer import CausalTransformer
from deeprecipe.models.vgg import VGG
from deeprecipe.models.video import (
    R3D,
    Frame2D,
    R2Plus1D,
    TorchvisionVideoResNet,
    VideoBackbone,
)

__all__ = [
    "MLP",
    "R3D",
    "VGG",
    "AlexNet",
    "Backbone",
    "CausalTransformer",
    "Frame2D",
    "GoogLeNet",
    "LeNet5",
    "R2Plus1D",
    "RecurrentNet",
    "ResNet",
    "ResNet9",
    "SequenceBackbone",
    "SequenceClassifierBackbone",
    "TimmBackbone",
    "TorchvisionVideoResNet",
    "VideoBackbone",
]
