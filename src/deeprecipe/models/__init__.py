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

__all__ = [
    "MLP",
    "VGG",
    "AlexNet",
    "Backbone",
    "CausalTransformer",
    "GoogLeNet",
    "LeNet5",
    "RecurrentNet",
    "ResNet",
    "ResNet9",
    "SequenceBackbone",
    "SequenceClassifierBackbone",
    "TimmBackbone",
]
