"""A NaN/Inf guard that names the first layer whose output stopped being finite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn

from deeprecipe.callbacks.guards import NonFiniteLossGuard
from deeprecipe.errors import NonFiniteLossError


class NonFiniteLayer(NamedTuple):
    """The first module (in forward order) whose output held NaN or Inf."""

    name: str
    kind: str  # module class name
    input_finite: bool
    parameters_finite: bool

    def describe(self) -> str:
        if not self.input_finite:
            cause = "its input was already non-finite: check the data for NaN/Inf"
        elif not self.parameters_finite:
            cause = "its own parameters are non-finite: an earlier update diverged"
        else:
            cause = (
                "its input and parameters were finite, so its own computation overflowed "
                "(too large activations, or log/sqrt/division of bad values)"
            )
        return f"The first layer with a non-finite output is '{self.name}' ({self.kind}): {cause}."


def floating_tensors(value: Any) -> Iterator[Tensor]:
    """Every floating-point tensor in a module's (nested tuple, list or dict) output or inputs."""
    if isinstance(value, Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from floating_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from floating_tensors(item)


def _finite(value: Any) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in floating_tensors(value))


def first_non_finite_layer(root: nn.Module, forward: Callable[[], Any]) -> NonFiniteLayer | None:
    """Run ``forward()`` (under no_grad) with hooks on every submodule of ``root``; return the
    first submodule, in the order outputs were produced, whose output is non-finite.

    A module's output is produced after its children's, so the innermost culprit comes first.
    """
    found: list[NonFiniteLayer] = []

    def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def check(module: nn.Module, inputs: Any, output: Any) -> None:
            if not found and not _finite(output):
                params = all(bool(torch.isfinite(p).all()) for p in module.parameters())
                found.append(NonFiniteLayer(name, type(module).__name__, _finite(inputs), params))

        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in root.named_modules() if n]
    try:
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


class NonFiniteLayerGuard(NonFiniteLossGuard):
    """:class:`NonFiniteLossGuard` whose error also names the first layer gone non-finite.

    Costs nothing while the loss is finite: only when it is not does the guard run the same
    training step again under forward hooks (no gradients) to find, in forward order, the first
    layer whose output holds NaN or Inf, and say whether its input or its own parameters were
    already bad. ``conf/callbacks/diagnostics.yaml`` puts it in place of the plain guard.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        super().__init__(check_every_n_steps)
        self._batch: tuple[Any, int] | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = (batch, batch_idx)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        try:
            super().on_before_backward(trainer, pl_module, loss)
        except NonFiniteLossError as error:
            if self._batch is None:
                raise
            batch, batch_idx = self._batch
            layer = first_non_finite_layer(
                pl_module, lambda: pl_module.training_step(batch, batch_idx)
            )
            where = layer.describe() if layer else "Every layer's output was finite on a rerun."
            raise NonFiniteLossError(f"{error} {where}") from None
