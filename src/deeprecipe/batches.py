"""Typed batches passed between DataModules and methods.

Every DataModule yields one of these types; methods unpack them by field name, never by position.
"""

from typing import NamedTuple

from torch import Tensor


class Labeled(NamedTuple):
    """Inputs with one integer class label each.

    ``x`` is uint8 ``(B, C, H, W)`` from the DataModule and the normalized float network input
    after ``BaseMethod.on_after_batch_transfer``; ``y`` is int64 ``(B,)``.
    """

    x: Tensor
    y: Tensor
