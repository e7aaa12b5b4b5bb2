"""Max-norm constraint on the weights, applied after every optimizer step."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from deeprecipe.errors import ConfigError

_UNIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MaxNorm(L.Callback):
    """Keep each unit's incoming weight vector at L2 norm <= ``max_norm`` (Srivastava et al. 2014).

    A unit's incoming weights are one row of a linear layer's (out, in) matrix, or one output
    channel's (in, k, k) kernel of a convolution. After every optimizer step, ``torch.renorm``
    scales the vectors above the bound back onto it and leaves the others alone; biases and norm
    layers are not constrained. The constraint bounds the weights without shrinking them all as
    weight decay does, which is what lets dropout nets train with large learning rates.

    Args:
        max_norm: the bound c (the paper uses 3 to 4).
    """

    def __init__(self, max_norm: float = 3.0) -> None:
        if not max_norm > 0:
            raise ConfigError(f"callbacks.max_norm.max_norm={max_norm}; it must be > 0.")
        self.max_norm = max_norm
        self.weights: list[Tensor] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = [m.weight for m in pl_module.modules() if isinstance(m, _UNIT_LAYERS)]

    @torch.no_grad()
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for weight in self.weights:  # (out, in) or (out, in, k, ...): a unit per index of dim 0
            weight.renorm_(2, 0, self.max_norm)
