"""The lecture's "command center" numbers for the weights: update/weight ratio, gradient norms.

Both look at the weight matrices and kernels (parameters with two or more dimensions) and name
each by its layer, the parameter path without ``.weight`` (``backbone.layers.0.0``), so the two
families of curves line up in the logger.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from deeprecipe.callbacks.sinks import log_scalars
from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)


def layer_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable weights with two or more dimensions, keyed by layer name."""
    return {
        name.removesuffix(".weight"): parameter
        for name, parameter in module.named_parameters()
        if parameter.requires_grad and parameter.ndim >= 2
    }


def _check_every(every_n_steps: int) -> int:
    if every_n_steps < 1:
        raise ConfigError(f"every_n_steps={every_n_steps}; use a positive number of steps.")
    return every_n_steps


def update_ratios(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """``||after - before|| / ||before||`` per layer (Frobenius norms), in one device sync."""
    names = list(before)
    if not names:
        return {}
    update_norms = torch.stack([torch.linalg.vector_norm(after[n] - before[n]) for n in names])
    weight_norms = torch.stack([torch.linalg.vector_norm(before[n]) for n in names])
    ratios = update_norms / weight_norms.clamp_min(torch.finfo(weight_norms.dtype).tiny)
    return dict(zip(names, ratios.tolist(), strict=True))


class UpdateRatio(L.Callback):
    """Per-layer ratio of the size of one update to the size of the weights.

    The lecture tracks ``||lr * dW|| / ||W||`` and wants it near 1e-3: much smaller and the layer
    barely learns (learning rate too low), much larger and the updates swamp the weights
    (learning rate too high). Measured here as ``||W_after - W_before|| / ||W_before||`` around
    the optimizer step, so momentum, Adam's scaling and weight decay count; for plain SGD without
    weight decay it is exactly ``lr * ||dW|| / ||W||``.

    Logged every ``every_n_steps`` optimizer steps as ``diag/update_ratio/LAYER``; the last values
    stay in :attr:`latest`. A warning names each layer (once per run) whose ratio leaves
    ``[target / tolerance, target * tolerance]``.

    Args:
        every_n_steps: measure on every n-th optimizer step (each copies the weights once).
        target: the ratio to aim for.
        tolerance: factor either side of ``target`` before a warning.
    """

    def __init__(
        self, every_n_steps: int = 50, target: float = 1e-3, tolerance: float = 10.0
    ) -> None:
        if target <= 0 or tolerance < 1:
            raise ConfigError(
                f"UpdateRatio target={target}, tolerance={tolerance}; use target > 0 and "
                "tolerance >= 1 (e.g. 1e-3 and 10)."
            )
        self.every_n_steps = _check_every(every_n_steps)
        self.target = target
        self.tolerance = tolerance
        self.latest: dict[str, float] = {}
        self._before: dict[str, Tensor] | None = None
        self._warned: set[tuple[str, str]] = set()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._before = {n: w.detach().clone() for n, w in layer_weights(pl_module).items()}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._before is None:
            return
        after = {name: weight.detach() for name, weight in layer_weights(pl_module).items()}
        self.latest = update_ratios(self._before, after)
        self._before = None
        log_scalars(trainer, {f"diag/update_ratio/{n}": r for n, r in self.latest.items()})
        self._warn_far_off(trainer.global_step)

    def _warn_far_off(self, step: int) -> None:
        low, high = self.target / self.tolerance, self.target * self.tolerance
        for name, ratio in self.latest.items():
            if low <= ratio <= high:
                continue
            direction = "low" if ratio < low else "high"
            if (name, direction) in self._warned:
                continue
            self._warned.add((name, direction))
            hint = (
                "the layer barely learns: learning rate too low, or vanishing gradients"
                if direction == "low"
                else "updates swamp the weights: learning rate too high"
            )
            log.warning(
                "update/weight ratio of %s is %.1e at step %d, far from ~%.0e: %s.",
                name,
                ratio,
                step,
                self.target,
                hint,
            )


class GradientNorms(L.Callback):
    """L2 norm of each layer's weight gradient, every ``every_n_steps`` optimizer steps.

    Logged as ``diag/grad_norm/LAYER`` (last values in :attr:`latest`), read after gradient
    unscaling and before clipping and the step. Norms that grow by orders of magnitude mean
    exploding gradients; early layers far below late ones mean vanishing gradients. Written here
    rather than with Lightning's ``grad_norm`` so that the layer names match
    ``diag/update_ratio`` and all norms come back in one device sync.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = _check_every(every_n_steps)
        self.latest: dict[str, float] = {}

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        grads = {n: w.grad for n, w in layer_weights(pl_module).items() if w.grad is not None}
        if not grads:
            return
        norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads.values()])
        self.latest = dict(zip(grads, norms.tolist(), strict=True))
        log_scalars(trainer, {f"diag/grad_norm/{n}": v for n, v in self.latest.items()})
