"""Lightning callbacks: run bookkeeping and safety nets used by every method, and the recipe's
weight constraints and averages (max-norm, EMA, snapshot ensembles) and training diagnostics."""

from deeprecipe.callbacks.activations import ActivationStatistics
from deeprecipe.callbacks.curves import LearningCurves
from deeprecipe.callbacks.ema import EMAEvaluation
from deeprecipe.callbacks.filters import FirstLayerFilters
from deeprecipe.callbacks.guards import NonFiniteLossGuard
from deeprecipe.callbacks.layer_guard import NonFiniteLayerGuard
from deeprecipe.callbacks.max_norm import MaxNorm
from deeprecipe.callbacks.snapshots import SnapshotCheckpoint
from deeprecipe.callbacks.throughput import Throughput
from deeprecipe.callbacks.updates import GradientNorms, UpdateRatio

__all__ = [
    "ActivationStatistics",
    "EMAEvaluation",
    "FirstLayerFilters",
    "GradientNorms",
    "LearningCurves",
    "MaxNorm",
    "NonFiniteLayerGuard",
    "NonFiniteLossGuard",
    "SnapshotCheckpoint",
    "Throughput",
    "UpdateRatio",
]

from deeprecipe.callbacks.knn import KNNMonitor

__all__ += ["KNNMonitor"]
