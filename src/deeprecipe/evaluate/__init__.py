"""Evaluation beyond one plain forward pass: test-time augmentation, and after training,
ensembles of checkpoints (``python -m deeprecipe.evaluate.ensemble``)."""

from deeprecipe.evaluate.tta import TTA_MODES, check_tta, tta_probabilities, tta_views

__all__ = ["TTA_MODES", "check_tta", "tta_probabilities", "tta_views"]
