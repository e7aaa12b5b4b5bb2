"""Momentum (EMA) networks shared by BYOL, MoCo and any teacher that trails a student.

A momentum network is a frozen copy of an online network whose weights follow the online ones
as an exponential moving average, ``target <- m * target + (1 - m) * online``, after each
optimizer step.
"""

from __future__ import annotations

import copy
import math
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def momentum_copy(online: ModuleT) -> ModuleT:
    """A copy of ``online`` that the optimizer never updates (no gradients)."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place ``target <- momentum * target + (1 - momentum) * online``, parameter-wise.

    Buffers (batch-norm running statistics) are copied: they are statistics of the online
    network's inputs, not weights to be averaged. One fused ``_foreach`` call per group keeps the
    update to a few kernel launches.
    """
    target_params: list[Tensor] = list(target.parameters())
    online_params: list[Tensor] = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks have different parameters")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers(), strict=True):
        target_buffer.copy_(online_buffer)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (1 + cos(pi * step / total_steps)) / 2``.

    It starts at ``base`` and rises to ``final`` at ``total_steps``, so the target moves less and
    less as training converges.
    """
    progress = min(step / max(1, total_steps), 1.0)
    return final - (final - base) * (1 + math.cos(math.pi * progress)) / 2


class OncePerOptimizerStep:
    """Mixin for a LightningModule whose momentum networks move once per OPTIMIZER step.

    ``on_train_batch_end`` runs after every batch; with ``trainer.accumulate_grad_batches=k``
    only every k-th batch ends with an optimizer step, and an update on each batch would turn a
    momentum ``m`` into ``m**k`` per step. ``optimizer_stepped()`` is True in
    ``on_train_batch_end`` only when the batch that just ended stepped the optimizer.
    """

    trainer: Any

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        self._global_step_at_batch_start = self.trainer.global_step
        return super().on_train_batch_start(batch, batch_idx)  # type: ignore[misc]

    def optimizer_stepped(self) -> bool:
        start = getattr(self, "_global_step_at_batch_start", None)
        return start is None or self.trainer.global_step != start
