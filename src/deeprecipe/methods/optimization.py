"""Optimizer and per-iteration schedule from partial configs, for any LightningModule.

A function rather than a BaseMethod method so that methods outside the ``BaseMethod`` family (the
language model) share it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


def parameter_groups(
    module: nn.Module,
    weight_decay: float,
    decay_norm_and_bias: bool,
    backbone_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with ``weight_decay``, norm and bias parameters without.

    Norm scales and biases are the 1-D parameters; decaying them only shrinks the function's
    scale and offsets and is commonly found to hurt (Goyal et al. 2017). With ``backbone_lr``
    the parameters of ``module.backbone`` form two more groups at that learning rate (the rest
    keep the optimizer's), so fine-tuning can adapt pretrained features more gently than it
    trains the new head.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    backbone = getattr(module, "backbone", None)
    if backbone_lr is not None and isinstance(backbone, nn.Module):
        in_backbone = {id(p) for p in backbone.parameters()}
        rest = [p for p in params if id(p) not in in_backbone]
        scaled = [p for p in params if id(p) in in_backbone]
        groups = _decay_groups(rest, weight_decay, decay_norm_and_bias)
        for group in _decay_groups(scaled, weight_decay, decay_norm_and_bias):
            groups.append({**group, "lr": backbone_lr})
        return [group for group in groups if group["params"]]
    return _decay_groups(params, weight_decay, decay_norm_and_bias)


def _decay_groups(
    params: list[nn.Parameter], weight_decay: float, decay_norm_and_bias: bool
) -> list[dict[str, Any]]:
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def linear_scaling(optimizer: OptimizerFactory, trainer: L.Trainer) -> OptimizerFactory:
    """Apply the linear scaling rule when the optimizer config asks for it (Goyal et al. 2017).

    ``+optim.scale_lr=true`` multiplies ``optim.lr`` by ``global batch / optim.base_batch_size``
    (default 256), the global batch being ``data.batch_size`` (the batch of all processes, see
    :class:`~deeprecipe.data.base.ImageDataModule`) times ``trainer.accumulate_grad_batches``;
    the scheduler's warmup (``scheduler.warmup_epochs``) then ramps up to the scaled rate, as the
    rule needs for large batches. Both keys are taken out of the partial optimizer, which never
    sees them. Without ``scale_lr`` the factory is returned unchanged.
    """
    keywords = dict(getattr(optimizer, "keywords", {}))
    scale = keywords.pop("scale_lr", False)
    base_batch_size = keywords.pop("base_batch_size", 256)
    if not isinstance(optimizer, partial) or keywords == optimizer.keywords:
        return optimizer
    if not scale and "base_batch_size" in optimizer.keywords:
        log.warning(
            "optim.base_batch_size=%s has no effect without +optim.scale_lr=true (the linear "
            "scaling rule); add it, or drop base_batch_size.",
            base_batch_size,
        )
    if scale:
        datamodule = getattr(trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", None)
        if not isinstance(batch_size, int) or "lr" not in keywords or base_batch_size <= 0:
            raise ConfigError(
                "optim.scale_lr=true needs optim.lr, data.batch_size and a positive "
                f"optim.base_batch_size (got {base_batch_size!r}); set them or drop scale_lr."
            )
        global_batch = batch_size * trainer.accumulate_grad_batches
        lr = keywords["lr"] * global_batch / base_batch_size
        log.info(
            "Linear scaling rule: lr %g x %d / %d", keywords["lr"], global_batch, base_batch_size
        )
        keywords["lr"] = lr
    return partial(optimizer.func, *optimizer.args, **keywords)


def configure_optimization(
    module: L.LightningModule,
    optimizer: OptimizerFactory,
    scheduler: SchedulerFactory,
    decay_norm_and_bias: bool,
    backbone_lr_scale: float = 1.0,
) -> OptimizerLRSchedulerConfig:
    """What ``configure_optimizers`` returns: the optimizer over ``module``'s parameter groups
    (no weight decay on norm and bias unless ``decay_norm_and_bias``; ``module.backbone`` at
    ``backbone_lr_scale`` times ``optim.lr`` when that is not 1) and its schedule, stepped every
    iteration over the trainer's total number of optimizer steps.
    """
    trainer = module.trainer
    optimizer = linear_scaling(optimizer, trainer)
    keywords = getattr(optimizer, "keywords", {})
    weight_decay = keywords.get("weight_decay", 0.0)
    backbone_lr = None
    if backbone_lr_scale != 1.0:
        if "lr" not in keywords:
            raise ConfigError(
                f"method.backbone_lr_scale={backbone_lr_scale} scales optim.lr, which the "
                "optimizer config does not set; add optim.lr."
            )
        backbone_lr = keywords["lr"] * backbone_lr_scale
    built = optimizer(parameter_groups(module, weight_decay, decay_norm_and_bias, backbone_lr))
    total_steps = trainer.estimated_stepping_batches
    if not math.isfinite(total_steps):
        raise ConfigError(
            "The learning-rate schedule needs a known length: set trainer.max_epochs or "
            "trainer.max_steps (trainer.max_time alone leaves it unknown)."
        )
    batches = trainer.num_training_batches  # known once estimated_stepping_batches loaded it
    if not math.isfinite(batches) and trainer.max_epochs == -1:
        # With max_steps and max_epochs=-1 Lightning returns max_steps without loading the
        # training data, so the epoch length (for scheduler.warmup_epochs, epoch-based decays)
        # was unknown here and an epoch silently counted as one step. Load it now, as Lightning
        # itself does for an epoch-bounded run.
        trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
    accumulate = trainer.accumulate_grad_batches
    if math.isfinite(batches):
        steps_per_epoch = max(1, math.ceil(batches / accumulate))
    else:
        steps_per_epoch = 1
        log.warning(
            "The training data has no length (an iterable dataset): the schedule counts one "
            "step per epoch, so scheduler.warmup_epochs and epoch-based decays mean steps; set "
            "scheduler.warmup_steps to count the warm-up in iterations."
        )
    schedule = scheduler(built, total_steps=int(total_steps), steps_per_epoch=steps_per_epoch)
    return {"optimizer": built, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
