"""Supervision regimes as LightningModules: one BaseMethod, one file per regime."""

from deeprecipe.methods.base import BaseMethod
from deeprecipe.methods.supervised import Supervised

__all__ = ["BaseMethod", "Supervised"]
