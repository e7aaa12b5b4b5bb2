"""Jigsaw and context prediction: permutation set, tiling, pairing, and fast_dev_run training."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from deeprecipe.data.base import ImageArrays, TensorBatchDataset, keep_batch
from deeprecipe.errors import ConfigError
from deeprecipe.methods import ContextPrediction, Jigsaw
from deeprecipe.methods.context import context_pair
from deeprecipe.methods.jigsaw import (
    grid_tiles,
    hamming_permutations,
    shuffle_tiles,
    standardize_tiles,
)
from deeprecipe.models import ResNet9

SMALL = ["model=resnet9", "model.width=8"]


def hamming(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------- permutation set
@pytest.mark.parametrize(("num_tiles", "count"), [(4, 8), (5, 12)])
def test_permutations_are_greedy_farthest_points(num_tiles, count):
    """Brute force: each added permutation is one of the farthest from those chosen before."""
    chosen = [tuple(row) for row in hamming_permutations(count, num_tiles, seed=3).tolist()]
    every = list(itertools.permutations(range(num_tiles)))
    assert len(set(chosen)) == count and all(p in every for p in chosen)
    for k in range(1, count):
        before = chosen[:k]
        farthest = max(min(hamming(p, q) for q in before) for p in every if p not in before)
        assert min(hamming(chosen[k], q) for q in before) == farthest


def test_permutations_are_deterministic_per_seed():
    first = hamming_permutations(20, 9, seed=0)
    assert first.shape == (20, 9) and first.dtype == torch.int64
    assert torch.equal(first, hamming_permutations(20, 9, seed=0))
    assert not torch.equal(first, hamming_permutations(20, 9, seed=1))
    assert all(sorted(row) == list(range(9)) for row in first.tolist())
    # the greedy set of 9-tile permutations keeps every pair at least 6 places apart at this size
    distances = (first[:, None] != first[None, :]).sum(dim=2) + 9 * torch.eye(20, dtype=torch.long)
    assert int(distances.min()) >= 6


def test_permutation_count_is_checked():
    with pytest.raises(ConfigError, match="num_permutations=25"):
        hamming_permutations(25, 4)


# -------------------------------------------------------------------------------- tiling
def coordinate_images(batch: int, side: int) -> torch.Tensor:
    """Images whose pixel value is its flat index ``row * side + col``: (B, 1, side, side)."""
    return (
        torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side).repeat(batch, 1, 1, 1)
    )


def test_tiles_are_jittered_crops_inside_their_cells():
    side, tile, cell = 30, 7, 10
    tiles = grid_tiles(coordinate_images(16, side), tile)  # (16, 9, 1, 7, 7)
    assert tiles.shape == (16, 9, 1, tile, tile)
    top_left = tiles[:, :, 0, 0, 0].long()  # (B, 9) flat index of each tile's corner
    rows, cols = top_left // side, top_left % side
    for index in range(9):
        cell_row, cell_col = divmod(index, 3)
        assert ((rows[:, index] >= cell_row * cell) & (rows[:, index] <= cell_row * cell + 3)).all()
        assert ((cols[:, index] >= cell_col * cell) & (cols[:, index] <= cell_col * cell + 3)).all()
    # every tile is the contiguous square below and right of its corner
    span = torch.arange(tile)
    expected = top_left[..., None, None] + span[:, None] * side + span[None, :]
    assert torch.equal(tiles[:, :, 0].long(), expected)
    # the offsets vary between images and tiles (jitter), over all 4 x 4 places
    assert len(set(zip(rows.flatten().tolist(), cols.flatten().tolist(), strict=True))) > 9 * 4


def test_tiles_without_gap_are_the_cells():
    images = torch.rand(2, 3, 12, 12)
    tiles = grid_tiles(images, 4)
    assert torch.equal(tiles[:, 5], images[:, :, 4:8, 8:12])  # cell (1, 2)
    with pytest.raises(ConfigError, match="tile_size=5"):
        grid_tiles(images, 5)


def test_shuffle_places_the_named_tiles():
    tiles = torch.rand(2, 9, 1, 3, 3)
    order = torch.stack([torch.randperm(9), torch.randperm(9)])
    shuffled = shuffle_tiles(tiles, order)
    for b in range(2):
        for place in range(9):
            assert torch.equal(shuffled[b, place], tiles[b, order[b, place]])


def test_standardized_tiles_match_a_direct_computation():
    tiles = torch.rand(2, 9, 3, 5, 5) * 4 + 1
    out = standardize_tiles(tiles)
    one = tiles[1, 7, 2]
    reference = (one - one.mean()) / (one.std() + 1e-5)
    assert torch.allclose(out[1, 7, 2], reference, atol=1e-6)


def test_context_pair_takes_the_centre_and_the_named_neighbour():
    images = coordinate_images(8, 9)
    tiles = grid_tiles(images, 3)  # no gap: exact cells
    positions = torch.arange(8)
    centre, neighbour = context_pair(tiles, positions)
    assert torch.equal(centre, images[:, :, 3:6, 3:6])
    cells = [0, 1, 2, 3, 5, 6, 7, 8]  # the centre (4) is never a neighbour
    for b, cell in enumerate(cells):
        row, col = divmod(cell, 3)
        assert torch.equal(neighbour[b], images[b, :, 3 * row : 3 * row + 3, 3 * col : 3 * col + 3])


# ------------------------------------------------------------------------------ training
class RandomImages(L.LightningDataModule):
    """Random uint8 RGB images of a given side, for methods that must work on 32 x 32 too."""

    def __init__(self, side: int, chans: int = 3, size: int = 64) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (size, chans, side, side), generator=generator)
        labels = torch.randint(0, 10, (size,), generator=generator)
        self.arrays = ImageArrays(images.to(torch.uint8), labels)

    def _loader(self) -> DataLoader:
        return DataLoader(TensorBatchDataset(self.arrays), batch_size=16, collate_fn=keep_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


def fast_fit(method: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(method, datamodule=datamodule)


def build(cfg):
    return instantiate(
        cfg.method,
        backbone=instantiate(cfg.model),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.aug),
    )


@pytest.mark.parametrize(
    ("name", "head"), [("jigsaw", "jigsaw_head"), ("context", "position_head")]
)
def test_pretext_fast_dev_run_on_fashion(make_cfg, fashion, name, head):
    method = build(make_cfg(f"+experiment={name}_pretrain", *SMALL, "method.hidden_dim=32"))
    before = [p.detach().clone() for p in method.backbone.parameters()]
    head_before = [p.detach().clone() for p in getattr(method, head).parameters()]
    fast_fit(method, fashion)
    assert any(
        not torch.equal(b, p) for b, p in zip(before, method.backbone.parameters(), strict=True)
    )
    assert any(
        not torch.equal(b, p)
        for b, p in zip(head_before, getattr(method, head).parameters(), strict=True)
    )


@pytest.mark.parametrize("cls", [Jigsaw, ContextPrediction])
def test_pretext_tasks_train_on_32_pixel_colour_images(cls):
    method = cls(
        ResNet9(in_chans=3, width=8),
        10,
        3,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        scheduler=lambda optimizer, **_: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1),
        resize_to=48,
        tile_size=14,
        hidden_dim=32,
    )
    fast_fit(method, RandomImages(32))
    assert method.trainer.callback_metrics["train/loss"].isfinite()


def test_tiling_options_are_checked():
    with pytest.raises(ConfigError, match="tile_size=22 with method.resize_to=63"):
        Jigsaw(ResNet9(1, 8), 10, 1, None, None, resize_to=63, tile_size=22)  # type: ignore[arg-type]
