"""Jigsaw puzzles (Noroozi and Favaro 2016): recognize which permutation shuffled 3x3 tiles.

Also home of the tiling that context prediction (:mod:`deeprecipe.methods.context`) shares.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError
from deeprecipe.methods.base import BaseMethod, OptimizerFactory, SchedulerFactory
from deeprecipe.methods.ssl_parts import mlp, online_probe_loss
from deeprecipe.models.base import Backbone

GRID = 3  # tiles per side
TILES = GRID * GRID
MAX_TILES = 10  # 10! = 3.6 million permutations to search: the most that stays quick


@functools.lru_cache(maxsize=8)
def _hamming_permutations(num_permutations: int, num_tiles: int, seed: int) -> Tensor:
    if not 2 <= num_tiles <= MAX_TILES:
        raise ConfigError(
            f"{num_tiles} tiles; enumerating their permutations needs 2 to {MAX_TILES}."
        )
    every = torch.tensor(list(itertools.permutations(range(num_tiles))), dtype=torch.uint8)
    if not 1 <= num_permutations <= len(every):
        raise ConfigError(
            f"method.num_permutations={num_permutations}; choose 1 to {len(every)} (the "
            f"permutations of {num_tiles} tiles), e.g. 100."
        )
    generator = torch.Generator().manual_seed(seed)
    columns = every.T.contiguous()  # (num_tiles, n!): one row per place, fast to compare

    def distances(index: int) -> Tensor:  # Hamming distance of every permutation to one (n!,)
        return (columns != columns[:, index : index + 1]).sum(dim=0, dtype=torch.uint8)

    chosen = [int(torch.randint(len(every), (1,), generator=generator))]
    nearest = distances(chosen[0])  # to the nearest chosen permutation; the chosen ones are at 0
    for _ in range(num_permutations - 1):
        candidates = (nearest == nearest.max()).nonzero()[:, 0]  # ties of the farthest
        pick = int(candidates[torch.randint(len(candidates), (1,), generator=generator)])
        chosen.append(pick)
        torch.minimum(nearest, distances(pick), out=nearest)
    return every[chosen].long()


def hamming_permutations(num_permutations: int, num_tiles: int = TILES, seed: int = 0) -> Tensor:
    """A set of ``num_permutations`` permutations of ``num_tiles`` tiles far apart in Hamming
    distance: (num_permutations, num_tiles) int64.

    Greedy farthest-point selection (Noroozi and Favaro 2016): start from a random permutation,
    then repeatedly add the permutation whose Hamming distance to its nearest chosen one is
    largest, ties broken at random. Close permutations would differ in one or two tiles only and
    be ambiguous classes. Deterministic for a given ``seed``; cached, as enumerating all 9! =
    362,880 permutations of a 3x3 puzzle takes a second or two.
    """
    return _hamming_permutations(num_permutations, num_tiles, seed).clone()


def grid_tiles(images: Tensor, tile_size: int, grid: int = GRID) -> Tensor:
    """Cut each image into ``grid`` x ``grid`` cells and crop one ``tile_size`` tile per cell.

    Each tile sits at an independent random offset inside its cell (per image and tile), so the
    ``cell - tile_size`` pixels left over become a random gap between neighbouring tiles: the
    network cannot solve the task by continuing edges and textures across tile borders. One
    indexing op for the whole batch (written here: kornia and torchvision crop one box per
    image, not a grid of independently jittered ones).

    Args:
        images: (B, C, H, W) with ``min(H, W) // grid >= tile_size``.
        tile_size: side of the square tiles.
        grid: cells per side.

    Returns:
        (B, grid * grid, C, tile_size, tile_size), cells in row-major order.
    """
    batch, _, height, width = images.shape
    cell = min(height, width) // grid
    if not 1 <= tile_size <= cell:
        raise ConfigError(
            f"method.tile_size={tile_size} does not fit the {cell}-pixel cells of a "
            f"{height}x{width} image cut {grid}x{grid}; choose at most {cell} (or raise "
            "method.resize_to)."
        )
    device = images.device
    starts = torch.arange(grid, device=device) * cell
    top = starts.repeat_interleave(grid)  # (G,) row of each cell, row-major
    left = starts.repeat(grid)  # (G,)
    jitter = torch.randint(0, cell - tile_size + 1, (batch, grid * grid, 2), device=device)
    span = torch.arange(tile_size, device=device)
    rows = (top + jitter[..., 0])[..., None] + span  # (B, G, t)
    cols = (left + jitter[..., 1])[..., None] + span  # (B, G, t)
    sample = torch.arange(batch, device=device)[:, None, None, None]
    tiles = images[sample, :, rows[..., :, None], cols[..., None, :]]  # (B, G, t, t, C)
    return tiles.permute(0, 1, 4, 2, 3)


def shuffle_tiles(tiles: Tensor, order: Tensor) -> Tensor:
    """Place ``i`` of image ``b`` gets tile ``order[b, i]``: tiles (B, G, C, t, t), order (B, G)."""
    return tiles.gather(1, order[:, :, None, None, None].expand_as(tiles))


def standardize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Each tile and channel to zero mean and unit variance over its pixels: (..., C, t, t).

    Tiles then do not give away their place by brightness or contrast (vignetting, the
    illumination of a scene), a shortcut Noroozi and Favaro remove the same way.
    """
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


def upsample(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of (B, C, H, W) to ``size`` x ``size`` (tiles of 28-pixel images would
    be a few pixels wide)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def check_tiling(resize_to: int, tile_size: int) -> None:
    """The tiles must fit their cells: ``tile_size <= resize_to // 3``."""
    if resize_to < GRID or not 1 <= tile_size <= resize_to // GRID:
        raise ConfigError(
            f"method.tile_size={tile_size} with method.resize_to={resize_to}: tiles must fit "
            f"the {resize_to // GRID}-pixel cells of the 3x3 grid (e.g. resize_to=63, "
            "tile_size=18: 3-pixel gaps on average)."
        )


class Jigsaw(BaseMethod):
    """A pretext task: classify which of ``num_permutations`` permutations shuffled 3x3 tiles.

    The (augmented, normalized) image is upsampled to ``resize_to`` pixels and cut into 3x3
    cells; one ``tile_size`` tile is cropped at a random place in each cell (gap and jitter,
    see :func:`grid_tiles`) and standardized on its own. The tiles are shuffled by a
    permutation drawn from the Hamming-distant set, each is encoded by the shared backbone (a
    siamese network), and the nine feature vectors, concatenated in the shuffled order, go
    through an MLP that names the permutation. Ordering the tiles requires knowing the parts of
    an object. An online linear probe on the backbone's features of the whole image (one extra
    forward pass without gradients) monitors the representation as ``val/acc``; its batch-norm
    statistics then average tiles and whole images, which the kNN monitor and linear probes see.

    Args:
        num_permutations: classes of the puzzle (Noroozi and Favaro: 1,000 on ImageNet).
        permutation_seed: seed of the permutation set (part of the checkpoint as a buffer).
        resize_to: side the image is upsampled to before tiling (28 px images: 63 or 75).
        tile_size: side of each tile, at most ``resize_to // 3``.
        standardize: standardize each tile on its own (see :func:`standardize_tiles`).
        hidden_dim: hidden width of the permutation MLP.
        See :class:`BaseMethod` for the rest; ``augment`` is applied before tiling.
    """

    permutations: Tensor

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        in_chans: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        augment: nn.Module | None = None,
        num_permutations: int = 100,
        permutation_seed: int = 0,
        resize_to: int = 63,
        tile_size: int = 18,
        standardize: bool = True,
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
        self.register_buffer(
            "permutations", hamming_permutations(num_permutations, TILES, permutation_seed)
        )
        self.resize_to = resize_to
        self.tile_size = tile_size
        self.standardize = standardize
        self.jigsaw_head = mlp(TILES * backbone.num_features, hidden_dim, num_permutations)

    def training_step(self, batch: Labeled, batch_idx: int) -> Tensor:
        batch_size = len(batch.y)
        tiles = grid_tiles(upsample(batch.x, self.resize_to), self.tile_size)  # (B, 9, C, t, t)
        if self.standardize:
            tiles = standardize_tiles(tiles)
        labels = torch.randint(len(self.permutations), (batch_size,), device=tiles.device)
        shuffled = shuffle_tiles(tiles, self.permutations[labels])
        inputs = shuffled.flatten(0, 1)  # (9B, C, t, t), image-major
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        features = self.backbone.forward_features(inputs)  # (9B, F)
        logits = self.jigsaw_head(features.view(batch_size, -1))  # (B, num_permutations)
        ssl_loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            whole = self.backbone.forward_features(batch.x)  # (B, F)
        probe_loss = online_probe_loss(self, whole, batch.y)
        jigsaw_acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        self.log("train/loss", ssl_loss, prog_bar=True, batch_size=batch_size)
        self.log(
            "train/probe_loss",
            probe_loss,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log("train/jigsaw_acc", jigsaw_acc, on_step=False, on_epoch=True, sync_dist=True)
        return ssl_loss + probe_loss
