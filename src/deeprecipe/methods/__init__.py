"""Supervision regimes as LightningModules: one BaseMethod, one file per regime.

:class:`LanguageModel` (token streams) is a sibling of BaseMethod; its docstring says why.
"""

from deeprecipe.methods.barlow_twins import BarlowTwins
from deeprecipe.methods.base import BaseMethod
from deeprecipe.methods.byol import BYOL
from deeprecipe.methods.context import ContextPrediction
from deeprecipe.methods.fixmatch import FixMatch
from deeprecipe.methods.hashtag import HashtagPretraining
from deeprecipe.methods.jigsaw import Jigsaw
from deeprecipe.methods.language_model import LanguageModel
from deeprecipe.methods.linear_probe import LinearProbe
from deeprecipe.methods.mae import MAE
from deeprecipe.methods.mean_teacher import MeanTeacher
from deeprecipe.methods.moco import MoCo
from deeprecipe.methods.noisy import RobustSupervised
from deeprecipe.methods.pseudo_label import PseudoLabel
from deeprecipe.methods.rotation import RotationPrediction
from deeprecipe.methods.self_training import SelfTraining
from deeprecipe.methods.simclr import SimCLR
from deeprecipe.methods.supervised import Supervised
from deeprecipe.methods.temporal_order import TemporalOrder

__all__ = [
    "BYOL",
    "MAE",
    "BarlowTwins",
    "BaseMethod",
    "ContextPrediction",
    "FixMatch",
    "HashtagPretraining",
    "Jigsaw",
    "LanguageModel",
    "LinearProbe",
    "MeanTeacher",
    "MoCo",
    "PseudoLabel",
    "RobustSupervised",
    "RotationPrediction",
    "SelfTraining",
    "SimCLR",
    "Supervised",
    "TemporalOrder",
]
