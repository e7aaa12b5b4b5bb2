"""Head first, then everything: two-phase fine-tuning as a Lightning ``BaseFinetuning`` callback."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from deeprecipe.errors import ConfigError
from deeprecipe.methods.optimization import parameter_groups

DEFAULT_BACKBONE_LR_SCALE = 0.1


class HeadFirstFinetuning(BaseFinetuning):
    """Train the new head alone on the frozen backbone for ``head_epochs``, then fine-tune all.

    A freshly initialized head sends large, random gradients into the pretrained features in the
    first steps of fine-tuning and distorts them before it has learnt anything; training it
    first on frozen features (a linear probe, then fine-tuning: Kumar et al. 2022, "LP-FT")
    lets fine-tuning start from a sensible head.

    Phase 1 (epochs ``0 .. head_epochs - 1``): the backbone gets no gradients and stays in eval
    mode, so the head sees the features a linear probe sees (pretrained batch-norm statistics),
    and the optimizer holds the head only. Phase 2 (from epoch ``head_epochs``): the backbone's
    parameters (those the method itself does not freeze, see ``method.freeze_stages``) become
    trainable and join the optimizer as two groups (with and without weight decay, as
    :func:`~deeprecipe.methods.optimization.parameter_groups` splits them) at
    ``backbone_lr_scale`` times the head's base learning rate; they follow the run's schedule
    from where it stands, and the method's training mode is set again (its ``bn_eval`` and
    frozen stages apply). Resumed runs get the groups back (``BaseFinetuning``) and this callback
    extends the schedule to them before the checkpoint's schedule state is loaded.

    Args:
        head_epochs: epochs of phase 1 (0: none, the callback then only splits the groups).
        backbone_lr_scale: the backbone's learning rate relative to the head's; None takes the
            method's ``backbone_lr_scale`` (``method=finetune``: 0.1), else 0.1.
    """

    def __init__(self, head_epochs: int = 1, backbone_lr_scale: float | None = None) -> None:
        super().__init__()
        if head_epochs < 0:
            raise ConfigError(f"callbacks.two_phase.head_epochs={head_epochs}; it must be >= 0.")
        if backbone_lr_scale is not None and backbone_lr_scale <= 0:
            raise ConfigError(
                f"callbacks.two_phase.backbone_lr_scale={backbone_lr_scale}; it must be > 0."
            )
        self.head_epochs = head_epochs
        self.backbone_lr_scale = backbone_lr_scale
        self._trainable: list[str] = []  # backbone parameters to unfreeze in phase 2

    @staticmethod
    def _backbone(pl_module: L.LightningModule) -> nn.Module:
        backbone = getattr(pl_module, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(
                f"callbacks=two_phase fine-tunes a method's `backbone`; {type(pl_module).__name__}"
                " has none. Use it with method=finetune or method=supervised."
            )
        return backbone

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        backbone = self._backbone(pl_module)
        trainable = [name for name, p in backbone.named_parameters() if p.requires_grad]
        if trainable:  # a later setup (validate, test) finds it frozen already: keep the list
            self._trainable = trainable
        backbone.requires_grad_(False)
        backbone.eval()

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch < self.head_epochs:
            return
        backbone = self._backbone(pl_module)
        named = dict(backbone.named_parameters())
        unfreeze = [named[name] for name in self._trainable]
        if all(p.requires_grad for p in unfreeze):
            return  # phase 2 is running
        for param in unfreeze:
            param.requires_grad_(True)
        pl_module.train(pl_module.training)  # the backbone back in training mode, method rules
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        head = optimizer.param_groups[0]
        base_lr = head.get("initial_lr", head["lr"]) * self._scale(pl_module)
        schedule = self._schedule(pl_module.trainer, optimizer)
        factor = schedule.lr_lambdas[0](schedule.last_epoch) if schedule is not None else 1.0
        groups = parameter_groups(
            backbone,
            head.get("weight_decay", 0.0),
            getattr(pl_module, "decay_norm_and_bias", False),
        )
        for group in groups:
            params = [p for p in group["params"] if id(p) not in in_optimizer]
            if params:  # none when resumed: BaseFinetuning put the groups back already
                optimizer.add_param_group(
                    {**group, "params": params, "lr": base_lr * factor, "initial_lr": base_lr}
                )
        self._extend_schedule(pl_module.trainer, optimizer)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # restores the groups of a resumed run
        for optimizer in trainer.optimizers:
            self._extend_schedule(trainer, optimizer)

    def _scale(self, pl_module: L.LightningModule) -> float:
        if self.backbone_lr_scale is not None:
            return self.backbone_lr_scale
        return float(getattr(pl_module, "backbone_lr_scale", DEFAULT_BACKBONE_LR_SCALE))

    @staticmethod
    def _schedule(trainer: L.Trainer, optimizer: Optimizer) -> LambdaLR | None:
        for config in trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is optimizer:
                if isinstance(config.scheduler, LambdaLR):
                    return config.scheduler
                rank_zero_warn(
                    f"{type(config.scheduler).__name__} is not a LambdaLR: the backbone's "
                    "learning rate stays constant in phase 2."
                )
        return None

    def _extend_schedule(self, trainer: L.Trainer, optimizer: Optimizer) -> None:
        """Give every group the schedule's factor (the suite's schedules are one ``LambdaLR``
        factor shared by all groups) and its base learning rate."""
        schedule = self._schedule(trainer, optimizer)
        if schedule is None:
            return
        for group in optimizer.param_groups[len(schedule.base_lrs) :]:
            group.setdefault("initial_lr", group["lr"])
            schedule.base_lrs.append(group["initial_lr"])
            schedule.lr_lambdas.append(schedule.lr_lambdas[0])
