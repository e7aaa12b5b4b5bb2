"""Moving Fashion-MNIST: labelled action clips made on the fly from real Fashion-MNIST items.

A video task the suite can always run offline: each clip shows one real Fashion-MNIST item on a
black canvas moving in one of 8 ways (:data:`MOTIONS`), and the label is the motion, not the
item. Every clip draws its own start position, angle, scale and speed, and its item.

The task is built so that frame order is the only cue to the direction: the two motions of each
pair (left/right, up/down, clockwise/anticlockwise, zoom in/out) draw their states from the same
distribution and traverse them in opposite time order, so the *set* of frames of a "left" clip is
distributed exactly as that of a "right" clip. A per-frame model with temporal average pooling
(``model=frame2d``) can tell the 4 kinds of motion apart but not the direction, so it cannot
beat 50%; a spatio-temporal model (R3D, R(2+1)D) can reach 100%.

Clips are rendered batched with ``affine_grid``/``grid_sample`` (one warp of all T frames of all
clips of a batch), seeded: validation and test clips are fixed at setup; training clips are
re-drawn every epoch, each batch from a generator seeded by ``clip_seed``, the epoch and the
batch index, so a run (and its resume) sees the same clips for any run seed. Items of the
training and validation clips come from disjoint parts of the Fashion-MNIST training split; items
of the test clips from its test split.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from deeprecipe.batches import Labeled
from deeprecipe.data.base import ImageArrays, TensorBatchDataset, keep_batch
from deeprecipe.data.fashion_mnist import DEBIAN_ROOT, load_split
from deeprecipe.data.video import VideoDataModule, clip_statistics
from deeprecipe.errors import ConfigError

log = logging.getLogger(__name__)

MOTIONS = (
    "left",
    "right",
    "up",
    "down",
    "clockwise",
    "anticlockwise",
    "zoom_in",
    "zoom_out",
)
# Ranges of the per-clip draws, in affine_grid's normalized canvas units (the canvas spans
# [-1, 1]; an item of scale s spans 2 s, i.e. the fraction s of the canvas side).
SCALE = (0.45, 0.6)  # item size of the clips that do not zoom
POSITION = 0.25  # static centre coordinates are uniform in [-POSITION, POSITION]
START_ANGLE = math.radians(25)  # static angles are uniform in [-START_ANGLE, START_ANGLE]
SHIFT = (0.5, 0.9)  # translation distance over the clip (8 to 14 px on a 32 px canvas)
TRACK = 0.7  # translated centres stay within [-TRACK, TRACK]
TURN = (math.radians(60), math.radians(135))  # rotation over the clip
ZOOM_SCALE = (0.3, 0.42)  # the smaller scale of a zooming item
ZOOM_RATIO = (1.5, 2.2)  # larger / smaller scale of a zooming item


class Trajectory(NamedTuple):
    """Where an item is in each frame, in canvas coordinates (x right, y down, both in [-1, 1]).

    ``centres`` (N, T, 2) as (x, y); ``scales`` (N, T): item side / canvas side; ``angles``
    (N, T) in radians, positive = clockwise on screen.
    """

    centres: Tensor
    scales: Tensor
    angles: Tensor


def _uniform(low: float, high: float, count: int, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def draw_trajectories(motions: Tensor, num_frames: int, generator: torch.Generator) -> Trajectory:
    """One random trajectory per clip; ``motions`` (N,) are indices into :data:`MOTIONS`.

    Each pair of opposite motions shares one distribution of paths; the second of the pair runs
    it backwards in time (see the module docstring for why).
    """
    count = len(motions)
    progress = torch.linspace(0.0, 1.0, num_frames) if num_frames > 1 else torch.zeros(1)
    # the fraction of the path reached at each frame: forward for left/right/... pairs' "positive"
    # member, backward for the other
    backward = torch.isin(motions, torch.tensor([0, 2, 5, 7]))  # left, up, anticlockwise, out
    along = torch.where(backward[:, None], 1.0 - progress, progress)  # (N, T)

    centre = _uniform(-POSITION, POSITION, 2 * count, generator).view(count, 1, 2)
    centres = centre.expand(count, num_frames, 2).clone()  # (N, T, 2)
    scales = _uniform(*SCALE, count, generator)[:, None].expand(count, num_frames).clone()
    angles = _uniform(-START_ANGLE, START_ANGLE, count, generator)[:, None]
    angles = angles.expand(count, num_frames).clone()  # (N, T)

    shift = _uniform(*SHIFT, count, generator)  # (N,)
    start = -TRACK + (2 * TRACK - shift) * torch.rand(count, generator=generator)  # (N,)
    path = start[:, None] + shift[:, None] * along  # (N, T) from start to start + shift
    turn = _uniform(*TURN, count, generator)[:, None] * along  # (N, T)
    small = _uniform(*ZOOM_SCALE, count, generator)[:, None]
    ratio = _uniform(*ZOOM_RATIO, count, generator)[:, None]
    zoom = small * ratio.pow(along)  # (N, T) geometric: the same relative growth every frame

    horizontal = (motions == 0) | (motions == 1)  # left: x decreases; right: x increases
    vertical = (motions == 2) | (motions == 3)  # up: y decreases (screen y points down)
    rotating = (motions == 4) | (motions == 5)
    zooming = (motions == 6) | (motions == 7)
    centres[..., 0] = torch.where(horizontal[:, None], path, centres[..., 0])
    centres[..., 1] = torch.where(vertical[:, None], path, centres[..., 1])
    angles = torch.where(rotating[:, None], angles + turn, angles)
    scales = torch.where(zooming[:, None], zoom, scales)
    return Trajectory(centres, scales, angles)


def render_clips(items: Tensor, trajectory: Trajectory, size: int) -> Tensor:
    """Draw each item along its trajectory on a black ``size`` x ``size`` canvas.

    Args:
        items: uint8 (N, C, h, w), one item per clip.
        trajectory: see :class:`Trajectory`, with N clips of T frames.
        size: canvas height and width.

    Returns uint8 clips (N, C, T, size, size). One ``affine_grid``/``grid_sample`` over all N x T
    frames: each output pixel p samples the item at ``R(-angle) (p - centre) / scale``.
    """
    count, frames = trajectory.scales.shape
    channels = items.shape[1]
    cos = torch.cos(trajectory.angles).reshape(-1)  # (N T,)
    sin = torch.sin(trajectory.angles).reshape(-1)
    inverse_scale = 1.0 / trajectory.scales.reshape(-1)
    centre_x, centre_y = trajectory.centres.reshape(-1, 2).unbind(dim=1)
    # rows of R(-angle) / scale, with R(a) = [[cos, -sin], [sin, cos]] turning +x toward +y,
    # which is clockwise on a screen whose y axis points down
    row_x = torch.stack([cos, sin, -(cos * centre_x + sin * centre_y)], dim=1)
    row_y = torch.stack([-sin, cos, -(-sin * centre_x + cos * centre_y)], dim=1)
    theta = torch.stack([row_x, row_y], dim=1) * inverse_scale[:, None, None]  # (N T, 2, 3)
    grid = F.affine_grid(theta, [count * frames, channels, size, size], align_corners=False)
    source = items.float().repeat_interleave(frames, dim=0)  # (N T, C, h, w)
    canvas = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    canvas = canvas.round_().clamp_(0, 255).to(torch.uint8)  # (N T, C, size, size)
    return canvas.view(count, frames, channels, size, size).transpose(1, 2).contiguous()


def draw_clips(
    pool: Tensor, count: int, num_frames: int, size: int, generator: torch.Generator
) -> ImageArrays:
    """``count`` clips with class-balanced motions and random items of ``pool`` (N, C, h, w)."""
    motions = torch.arange(count) % len(MOTIONS)
    motions = motions[torch.randperm(count, generator=generator)]
    chosen = torch.randint(0, len(pool), (count,), generator=generator)
    trajectory = draw_trajectories(motions, num_frames, generator)
    return ImageArrays(render_clips(pool[chosen], trajectory, size), motions)


def draw_batch(
    pool: Tensor, count: int, num_frames: int, size: int, generator: torch.Generator
) -> Labeled:
    """One training batch: :func:`draw_clips` as a :class:`Labeled` batch."""
    clips = draw_clips(pool, count, num_frames, size, generator)
    return Labeled(clips.images, clips.labels)


class MovingFashionDataModule(VideoDataModule):
    """Action clips of moving Fashion-MNIST items, labelled with one of 8 motions.

    Args:
        root: folder with the Fashion-MNIST idx files (see :mod:`deeprecipe.data.fashion_mnist`).
        num_classes: must be 8 (:data:`MOTIONS`).
        in_chans: must be 1 (Fashion-MNIST is grey).
        image_size: canvas height and width.
        num_frames: frames per clip.
        train_clips: training clips per epoch.
        val_clips: validation clips (fixed).
        test_clips: test clips (fixed, items from the test split).
        val_items: Fashion-MNIST training images kept for the validation clips' items.
        redraw_train: draw new training clips every epoch; false repeats epoch 0's clips.
        clip_seed: seed of the item split and of every clip, independent of the run seed.
        batch_size, eval_batch_size: see :class:`~deeprecipe.data.video.VideoDataModule`.

    Clips are rendered in the main process (a batch costs about a millisecond), so there are no
    DataLoader workers to configure.
    """

    def __init__(
        self,
        root: str = DEBIAN_ROOT,
        num_classes: int = 8,
        in_chans: int = 1,
        image_size: int = 32,
        num_frames: int = 8,
        train_clips: int = 2048,
        val_clips: int = 1024,
        test_clips: int = 2048,
        val_items: int = 5000,
        redraw_train: bool = True,
        clip_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = 256,
        pin_memory: bool = False,
    ) -> None:
        if num_classes != len(MOTIONS):
            raise ConfigError(
                f"data.num_classes={num_classes}, but moving Fashion-MNIST has {len(MOTIONS)} "
                f"motion classes ({', '.join(MOTIONS)}); set data.num_classes={len(MOTIONS)}."
            )
        if in_chans != 1:
            raise ConfigError(f"data.in_chans={in_chans}; Fashion-MNIST is grey: set it to 1.")
        super().__init__(
            num_classes=num_classes,
            in_chans=in_chans,
            image_size=image_size,
            num_frames=num_frames,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=0,
            pin_memory=pin_memory,
        )
        for name, value in (
            ("train_clips", train_clips),
            ("val_clips", val_clips),
            ("test_clips", test_clips),
            ("val_items", val_items),
        ):
            if value < 1:
                raise ConfigError(f"data.{name}={value}; it must be a positive integer.")
        if train_clips < batch_size:
            raise ConfigError(
                f"data.train_clips={train_clips} is fewer than data.batch_size={batch_size}; "
                "raise the clip count or lower the batch size."
            )
        self.root = Path(root)
        self.train_clips = train_clips
        self.val_clips = val_clips
        self.test_clips = test_clips
        self.val_items = val_items
        self.redraw_train = redraw_train
        self.clip_seed = clip_seed
        self.train_pool: Tensor | None = None
        self.val: ImageArrays | None = None
        self.test: ImageArrays | None = None

    def prepare_data(self) -> None:
        load_split(self.root, "t10k")  # fails early, naming the fix, when the files are missing

    def setup(self, stage: str | None = None) -> None:
        if self.val is not None:
            return
        train_items = load_split(self.root, "train").images  # (60000, 1, 28, 28)
        test_items = load_split(self.root, "t10k").images
        if self.val_items >= len(train_items):
            raise ConfigError(
                f"data.val_items={self.val_items} leaves no Fashion-MNIST training item for the "
                f"training clips ({len(train_items)} in all); lower it."
            )
        generator = torch.Generator().manual_seed(self.clip_seed)
        order = torch.randperm(len(train_items), generator=generator)
        self.train_pool = train_items[order[self.val_items :]]
        val_pool = train_items[order[: self.val_items]]
        size, frames = self.image_size, self.num_frames
        self.val = draw_clips(val_pool, self.val_clips, frames, size, generator)
        self.test = draw_clips(test_items, self.test_clips, frames, size, generator)
        sample = draw_clips(self.train_pool, min(self.train_clips, 1024), frames, size, generator)
        self.mean, self.std = clip_statistics(sample.images)
        log.info(
            "Moving Fashion-MNIST: %d train clips per epoch / %d val / %d test, %d frames of "
            "%dx%d, mean %.4f std %.4f",
            self.train_clips,
            self.val_clips,
            self.test_clips,
            frames,
            size,
            size,
            self.mean[0],
            self.std[0],
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_pool is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        draw = partial(
            draw_batch, self.train_pool, self.batch_size, self.num_frames, self.image_size
        )
        epoch = self.epoch_source() if self.redraw_train else (lambda: 0)
        # the last partial batch is dropped; seed + 1: apart from the val/test draws
        length = self.train_clips // self.batch_size
        return self.seeded_train_loader(draw, length, self.clip_seed + 1, epoch)

    def _fixed_loader(self, clips: ImageArrays | None) -> DataLoader:
        if clips is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        dataset = TensorBatchDataset(clips)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=self.eval_sampler(dataset),
            collate_fn=keep_batch,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.val)

    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.test)
