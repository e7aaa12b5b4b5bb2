"""Linear probe: a linear classifier on a frozen (pretrained) backbone, at its end or any stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.models.base import Backbone


class _StageReached(Exception):
    """Raised by the forward hook to stop the backbone once the probed stage has run."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


def global_pool(output: Tensor) -> Tensor:
    """A stage's output as one vector per sample: the mean over every axis after the channels
    of (B, C, ...) maps (spatial and temporal positions), over the tokens of (B, N, D)
    transformer outputs; (B, F) vectors as they are."""
    if output.ndim == 2:
        return output
    if output.ndim == 3:  # tokens (B, N, D)
        return output.mean(dim=1)
    return output.flatten(2).mean(dim=2)  # (B, C, H, W) or (B, C, T, H, W) -> (B, C)


def stage_features(backbone: Backbone, x: Tensor, stage: int) -> Tensor:
    """Globally pooled output of ``backbone.stages()[stage]`` for the inputs ``x``: (B, C_stage).

    A forward hook on the stage catches its output while ``forward_features`` runs and stops the
    pass there, so later stages cost nothing and the backbone's own wiring (skip connections,
    class tokens) is respected without the probe knowing it.
    """
    stages = backbone.stages()
    if not 0 <= stage < len(stages):
        raise ConfigError(
            f"method.stage={stage}; {type(backbone).__name__} has stages 0 (stem) to "
            f"{len(stages) - 1}: choose one of them, or null for the final features."
        )

    def stop(module: nn.Module, inputs: object, output: Tensor) -> None:
        raise _StageReached(output)

    handle = stages[stage].register_forward_hook(stop)
    try:
        backbone.forward_features(x)
    except _StageReached as reached:
        return global_pool(reached.output)
    finally:
        handle.remove()
    raise ConfigError(
        f"Stage {stage} of {type(backbone).__name__} ({type(stages[stage]).__name__}) did not "
        "run in forward_features; its stages() do not match its forward."
    )


class LinearProbe(BaseMethod):
    """Train only the linear head on the features of a frozen backbone: the standard measure of
    how linearly separable a self-supervised representation makes the classes.

    The backbone never gets gradients and stays in eval mode throughout (its batch-norm running
    statistics are those of pretraining and dropout is off), whatever mode Lightning sets. Load
    the pretrained weights with :func:`deeprecipe.transfer.load_backbone_weights`
    (``pretrained=PATH`` on the command line).

    With ``stage`` the head reads an intermediate representation instead: the globally
    average-pooled output of ``backbone.stages()[stage]`` (see :func:`stage_features`), which
    shows how linearly decodable the classes are along the depth of the network.

    Args:
        stage: index into ``backbone.stages()`` (0 is the stem); None probes the final pooled
            features (``forward_features``).
        image_size: input side, needed with ``stage`` to size the head by one dry forward pass.
        See :class:`BaseMethod`; ``augment`` (crop and flip, typically) is applied to training
        images as in supervised training.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        channels_last: bool = True,
        stage: int | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            in_chans,
            optimizer,
            scheduler,
            augment=augment,
            channels_last=channels_last,
        )
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.stage = stage
        if stage is not None:
            if image_size is None:
                raise ConfigError(
                    f"method.stage={stage} needs method.image_size=${{data.image_size}} to size "
                    "the head."
                )
            with torch.no_grad():
                dry_run = torch.zeros(2, in_chans, image_size, image_size)
                width = stage_features(self.backbone, dry_run, stage).shape[1]
            self.head = nn.Linear(width, num_classes)
            nn.init.zeros_(self.head.weight)  # as BaseMethod's head: initial loss log(C)
            nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> LinearProbe:
        """Set the training mode of the head; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, F)
        """The probed representation: final features, or the pooled output of ``stage``."""
        if self.stage is None:
            return self.backbone.forward_features(x)
        return stage_features(self.backbone, x, self.stage)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        with torch.no_grad():
            features = self.features(batch.x)  # (B, F)
        logits = self.head(features)  # (B, num_classes)
        loss = F.cross_entropy(logits, batch.y)
        self.train_metrics.update(logits.detach(), batch.y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.y))
        return loss
