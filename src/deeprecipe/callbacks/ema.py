"""Polyak averaging: a moving average of the weights, evaluated next to the raw weights."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassAccuracy

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError


def _tensors(module: nn.Module) -> list[Tensor]:
    """Parameters then buffers, in the same order for a module and its deep copy."""
    return list(itertools.chain(module.parameters(), module.buffers()))


class EMAEvaluation(L.Callback):
    """An EMA (Polyak) copy of the method's weights, evaluated alongside the raw weights.

    After every optimizer step ``ema = decay * ema + (1 - decay) * w`` (the first step copies
    ``w``), over parameters and buffers, so BatchNorm statistics are averaged too. Validation and
    test run the EMA copy on the same batches as the method and log its accuracy as
    ``val/acc_ema`` and ``test/acc_ema`` next to the raw ``val/acc`` and ``test/acc``; training,
    the logged losses and checkpoint selection use the raw weights. The EMA copy is part of the
    callback state in every checkpoint, so testing the best checkpoint tests its EMA of that
    moment. With decay d it averages over roughly the last 1 / (1 - d) steps (200 for 0.995).

    Built on torch's ``get_ema_multi_avg_fn`` (one fused ``lerp`` over all float tensors) rather
    than on Lightning's ``EMAWeightAveraging``, which swaps the averaged weights into the model
    for validation and checkpoints so that raw and averaged weights cannot be reported side by
    side, or ``AveragedModel.update_parameters``, which reads its device-side step counter on the
    host twice per step (a device synchronization every step).

    Args:
        decay: weight of the running average at each step (the lecture's 0.995).
    """

    def __init__(self, decay: float = 0.995) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay}; it must be in (0, 1).")
        self.decay = decay
        self._average = get_ema_multi_avg_fn(decay)
        self.module: nn.Module | None = None  # the EMA copy of the LightningModule
        self.updates = 0
        self._last_step = -1
        self._pending: dict[str, Tensor] | None = None
        self._floating: list[bool] = []
        self._accuracy: MulticlassAccuracy | None = None

    # -------------------------------------------------------------------------- the copy
    def ema_module(self, pl_module: L.LightningModule) -> nn.Module:
        """The EMA copy, made from ``pl_module`` on first use (after it reached its device)."""
        if self.module is None:
            # Made outside inference mode (validation runs in it) so that training can update it.
            with torch.inference_mode(False), torch.no_grad():
                module = copy.deepcopy(pl_module).eval().requires_grad_(False)
                if self._pending is not None:
                    module.load_state_dict(self._pending)
                    self._pending = None
            self._floating = [t.is_floating_point() for t in _tensors(module)]
            self.module = module
        return self.module

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self._last_step:  # no optimizer step (gradient accumulation)
            return
        self._last_step = trainer.global_step
        averaged = _tensors(self.ema_module(pl_module))
        current = _tensors(pl_module)  # fetched each time: moving a module replaces its buffers
        with torch.no_grad():
            if self.updates == 0:
                for average, value in zip(averaged, current, strict=True):
                    average.copy_(value)
            else:
                pairs = list(zip(averaged, current, self._floating, strict=True))
                self._average(
                    [a for a, _, floating in pairs if floating],
                    [c for _, c, floating in pairs if floating],
                    None,
                )
                for average, value, floating in pairs:
                    if not floating:  # integer buffers such as BatchNorm's batch counter
                        average.copy_(value)
        self.updates += 1

    # ------------------------------------------------------------------------ evaluation
    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        if not isinstance(batch, Labeled):
            return
        context = (
            trainer.precision_plugin.test_step_context()
            if trainer.testing
            else trainer.precision_plugin.val_step_context()
        )
        with context:
            logits = self.ema_module(pl_module)(batch.x)  # (B, num_classes)
        if self._accuracy is None:
            self._accuracy = MulticlassAccuracy(
                logits.shape[-1], average="micro", validate_args=False
            ).to(logits.device)
        self._accuracy.update(logits, batch.y)

    def _log(self, pl_module: L.LightningModule, name: str) -> None:
        if self._accuracy is not None:
            pl_module.log(name, self._accuracy.compute())
            self._accuracy = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluate(trainer, pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "val/acc_ema")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluate(trainer, pl_module, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "test/acc_ema")

    # ---------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"updates": self.updates, "last_step": self._last_step}
        if self.module is not None:
            state["module"] = self.module.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = state_dict["updates"]
        self._last_step = state_dict["last_step"]
        weights = state_dict.get("module")
        if weights is None:
            return
        if self.module is None:
            self._pending = weights  # loaded into the copy when it is made
        else:
            self.module.load_state_dict(weights)
