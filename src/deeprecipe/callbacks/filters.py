"""Images of the first layer's filters, the lecture's "visualize filters" check.

Well-trained first layers show structure (edges, blobs, colour opponents) and filters that differ
from each other; noise or near-copies point to too little training or a bad learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from deeprecipe.callbacks.sinks import log_image
from deeprecipe.errors import ConfigError


def first_layer(module: nn.Module) -> nn.Conv2d | nn.Linear | None:
    """The first convolution, else the first linear layer, in definition order."""
    layers = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    convolutions = [m for m in layers if isinstance(m, nn.Conv2d)]
    return (convolutions or layers or [None])[0]


def filter_images(weight: Tensor, in_chans: int | None = None) -> Tensor | None:
    """First-layer weights as images (O, 1 or 3, k, k), or None when they are not images.

    Convolution kernels (O, I, k, k) keep their RGB or grey channels (any other count: the
    first channel). Linear weights (O, in_features) become (O, C, S, S) images when
    ``in_features`` is ``in_chans`` square images (grey when ``in_chans`` is unknown).
    """
    weight = weight.detach().float().cpu()
    if weight.ndim == 2:
        channels = in_chans or 1
        side = math.isqrt(weight.shape[1] // channels)
        if channels * side * side != weight.shape[1]:
            return None
        weight = weight.reshape(-1, channels, side, side)
    if weight.shape[1] not in (1, 3):
        weight = weight[:, :1]
    return weight


def filter_grid(
    weight: Tensor, in_chans: int | None = None, max_filters: int = 64
) -> np.ndarray | None:
    """A grid of up to ``max_filters`` filters, each scaled to [0, 1]; (H, W, 3) uint8."""
    images = filter_images(weight, in_chans)
    if images is None:
        return None
    images = images[:max_filters]  # (O, 1 or 3, k, k)
    scale = max(1, 48 // images.shape[-1])  # draw small kernels large
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images, nrow=8, padding=1, normalize=True, scale_each=True, pad_value=1.0)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


class FirstLayerFilters(L.Callback):
    """Log the first layer's filters as one image every ``every_n_steps`` steps and at the end.

    The first layer is the first ``Conv2d`` of the model, else its first ``Linear`` (an MLP's
    weights drawn as images of the input's shape, taken from the datamodule's ``in_chans``);
    models whose first layer does not see images (sequences) are skipped. Logged as
    ``diag/first_layer_filters`` through the logger, or under ``plots/diag/``.
    """

    def __init__(self, every_n_steps: int = 500, max_filters: int = 64) -> None:
        if every_n_steps < 1 or max_filters < 1:
            raise ConfigError(
                f"FirstLayerFilters every_n_steps={every_n_steps}, max_filters={max_filters}; "
                "both must be positive."
            )
        self.every_n_steps = every_n_steps
        self.max_filters = max_filters

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if (trainer.global_step - 1) % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layer = first_layer(pl_module)
        in_chans = getattr(getattr(trainer, "datamodule", None), "in_chans", None)
        image = None if layer is None else filter_grid(layer.weight, in_chans, self.max_filters)
        if image is not None:
            log_image(trainer, "diag/first_layer_filters", image)
