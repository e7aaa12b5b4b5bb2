"""Context prediction (Doersch et al. 2015): where does a patch lie relative to the centre one?"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.jigsaw import (
    TILES,
    check_tiling,
    grid_tiles,
    standardize_tiles,
    upsample,
)
from deeprecipe.methods.ssl_parts import mlp, online_probe_loss
from deeprecipe.models.base import Backbone

CENTRE = TILES // 2  # cell 4 of the row-major 3x3 grid
NEIGHBOURS = TILES - 1  # the 8 classes


def context_pair(tiles: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """The centre tile and the neighbour at class ``positions`` of each image.

    Args:
        tiles: (B, 9, C, t, t) from :func:`~deeprecipe.methods.jigsaw.grid_tiles`.
        positions: (B,) classes 0-7, the 8 neighbours in row-major order (top-left, top,
            top-right, left, right, bottom-left, bottom, bottom-right): cells 0-3 and 5-8.

    Returns:
        ``centre`` and ``neighbour``, (B, C, t, t) each.
    """
    cells = positions + (positions >= CENTRE).long()  # skip the centre cell
    rows = torch.arange(len(tiles), device=tiles.device)
    return tiles[:, CENTRE], tiles[rows, cells]


class ContextPrediction(BaseMethod):
    """A pretext task: given the centre patch of a 3x3 grid and one of its 8 neighbours, both
    encoded by the shared backbone, classify the neighbour's position.

    As in :class:`~deeprecipe.methods.jigsaw.Jigsaw` the image is upsampled to ``resize_to``
    pixels and each patch is cropped at a random place within its cell, so a random gap
    separates the patches and their offsets jitter: the two trivial shortcuts Doersch et al.
    found, continuing lines across the patch border and matching textures at a fixed offset, no
    longer name the position. Their third shortcut, chromatic aberration (colour channels
    shifted towards the image border), needs colour: it does not exist on grayscale data such as
    Fashion-MNIST, so no colour dropping is done; on colour data, ``standardize`` (per-patch,
    per-channel standardization) removes the brightness and colour-cast cues. The pair's
    features are concatenated (first the centre) and an MLP names the position. An online
    linear probe on the whole image's features (an extra forward pass without gradients)
    monitors the representation as ``val/acc``.

    Args:
        resize_to: side the image is upsampled to before cutting the 3x3 grid.
        tile_size: side of each patch, at most ``resize_to // 3``.
        standardize: standardize each patch on its own.
        hidden_dim: hidden width of the position MLP.
        See :class:`BaseMethod` for the rest; ``augment`` is applied before cropping patches.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        resize_to: int = 63,
        tile_size: int = 18,
        standardize: bool = False,
        hidden_dim: int = 512,
        channels_last: bool = True,
        decay_norm_and_bias: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            in_chans,
            optimizer,
            scheduler,
            augment=augment,
            channels_last=channels_last,
            decay_norm_and_bias=decay_norm_and_bias,
        )
        check_tiling(resize_to, tile_size)
        self.resize_to = resize_to
        self.tile_size = tile_size
        self.standardize = standardize
        self.position_head = mlp(2 * backbone.num_features, hidden_dim, NEIGHBOURS)

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        batch_size = len(batch.y)
        tiles = grid_tiles(upsample(batch.x, self.resize_to), self.tile_size)  # (B, 9, C, t, t)
        if self.standardize:
            tiles = standardize_tiles(tiles)
        positions = torch.randint(NEIGHBOURS, (batch_size,), device=tiles.device)
        centre, neighbour = context_pair(tiles, positions)  # (B, C, t, t) each
        inputs = torch.cat([centre, neighbour])  # (2B, C, t, t)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        features = self.backbone.forward_features(inputs)  # (2B, F)
        pair = torch.cat(features.chunk(2), dim=1)  # (B, 2F): centre, then neighbour
        logits = self.position_head(pair)  # (B, 8)
        ssl_loss = F.cross_entropy(logits, positions)
        with torch.no_grad():
            whole = self.backbone.forward_features(batch.x)  # (B, F)
        probe_loss = online_probe_loss(self, whole, batch.y)
        position_acc = (logits.detach().argmax(dim=1) == positions).float().mean()
        self.log("train/loss", ssl_loss, prog_bar=True, batch_size=batch_size)
        self.log(
            "train/probe_loss",
            probe_loss,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log("train/position_acc", position_acc, on_step=False, on_epoch=True, sync_dist=True)
        return ssl_loss + probe_loss
