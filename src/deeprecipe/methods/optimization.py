"""Optimizer and per-iteration schedule from partial configs, for any LightningModule.

A function rather than a BaseMethod method so that methods outside the ``BaseMethod`` family (the
language model) share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from deeprecipe.errors import ConfigError

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


def parameter_groups(
    module: nn.Module, weight_decay: float, decay_norm_and_bias: bool
) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with ``weight_decay``, norm and bias parameters without.

    Norm scales and biases are the 1-D parameters; decaying them only shrinks the function's
    scale and offsets and is commonly found to hurt (Goyal et al. 2017).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def configure_optimization(
    module: L.LightningModule,
    optimizer: OptimizerFactory,
    scheduler: SchedulerFactory,
    decay_norm_and_bias: bool,
) -> OptimizerLRSchedulerConfig:
    """What ``configure_optimizers`` returns: the optimizer over ``module``'s parameter groups
    (no weight decay on norm and bias unless ``decay_norm_and_bias``) and its schedule, stepped
    every iteration over the trainer's total number of optimizer steps.
    """
    weight_decay = getattr(optimizer, "keywords", {}).get("weight_decay", 0.0)
    built = optimizer(parameter_groups(module, weight_decay, decay_norm_and_bias))
    trainer = module.trainer
    total_steps = trainer.estimated_stepping_batches
    if not math.isfinite(total_steps):
        raise ConfigError(
            "The learning-rate schedule needs a known length: set trainer.max_epochs or "
            "trainer.max_steps (trainer.max_time alone leaves it unknown)."
        )
    batches = trainer.num_training_batches  # known once estimated_stepping_batches ran
    accumulate = trainer.accumulate_grad_batches
    steps_per_epoch = max(1, math.ceil(batches / accumulate)) if math.isfinite(batches) else 1
    schedule = scheduler(built, total_steps=int(total_steps), steps_per_epoch=steps_per_epoch)
    return {"optimizer": built, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
