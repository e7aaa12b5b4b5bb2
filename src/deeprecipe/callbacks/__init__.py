"""Lightning callbacks: run bookkeeping and safety nets used by every method."""

from deeprecipe.callbacks.curves import LearningCurves
from deeprecipe.callbacks.guards import NonFiniteLossGuard
from deeprecipe.callbacks.throughput import Throughput

__all__ = ["LearningCurves", "NonFiniteLossGuard", "Throughput"]
