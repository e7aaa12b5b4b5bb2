"""What the video sources share: the clip DataModule base, PyAV decoding and frame sampling.

A clip is uint8 ``(C, T, H, W)`` and a batch of clips ``(B, C, T, H, W)``, the layout of
torch's 3-D convolutions, so the method's uint8 -> float -> per-channel normalization path works
on clips as on images. Video files are decoded with PyAV (FFmpeg's libraries, bundled in the
``av`` wheel, so no system FFmpeg is needed) and only the frames a clip uses are converted and
resized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from deeprecipe.batches import Labeled
from deeprecipe.errors import ConfigError, CorruptDataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv")


# ------------------------------------------------------------------------ temporal sampling
def uniform_indices(total: int, num_frames: int) -> Tensor:
    """``num_frames`` indices spread evenly over a video of ``total`` frames.

    Index ``i`` is the middle frame of the ``i``-th of ``num_frames`` equal segments of the video
    (TSN's test-time sampling): ``floor((2 i + 1) * total / (2 num_frames))``. A video shorter than
    the clip repeats frames. Integer arithmetic, so the indices do not depend on rounding.
    """
    steps = torch.arange(num_frames)
    return ((2 * steps + 1) * total) // (2 * num_frames)


def window_indices(total: int, num_frames: int, stride: int, start: int) -> Tensor:
    """``num_frames`` frames ``stride`` apart from ``start``; past the end, the last frame."""
    return (start + stride * torch.arange(num_frames)).clamp_max(total - 1)


def window_span(num_frames: int, stride: int) -> int:
    """Frames a contiguous window of ``num_frames`` samples ``stride`` apart covers."""
    return (num_frames - 1) * stride + 1


def random_window_start(
    total: int, num_frames: int, stride: int, generator: torch.Generator | None = None
) -> int:
    """A start uniform over the positions where the whole window fits (0 if it never fits)."""
    last_start = max(total - window_span(num_frames, stride), 0)
    return int(torch.randint(0, last_start + 1, (1,), generator=generator))


def centre_window_start(total: int, num_frames: int, stride: int) -> int:
    """The start of the window in the middle of the video: the deterministic evaluation view."""
    return max(total - window_span(num_frames, stride), 0) // 2


# ---------------------------------------------------------------------------------- decoding
def _shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is ``size``."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def _to_array(frame, size: int | None, gray: bool) -> np.ndarray:
    """One decoded frame as uint8 (H, W, C); with ``size``, shorter side resized then centre crop.

    The resize runs in FFmpeg's swscale with area averaging, which filters properly when it
    shrinks a frame (HD to 32 px), before the frame ever becomes a numpy array.
    """
    pixel_format = "gray" if gray else "rgb24"
    if size is None:
        array = frame.to_ndarray(format=pixel_format)
    else:
        width, height = _shorter_side_size(frame.width, frame.height, size)
        array = frame.to_ndarray(
            format=pixel_format, width=width, height=height, interpolation="AREA"
        )
        top, left = (height - size) // 2, (width - size) // 2
        array = array[top : top + size, left : left + size]
    return array[..., None] if array.ndim == 2 else array


def decode_frames(
    path: Path,
    size: int | None,
    gray: bool,
    choose: Callable[[int], Tensor] | None = None,
) -> Tensor:
    """Frames of the video at ``path`` as uint8 ``(N, C, H, W)``.

    Args:
        path: the video file.
        size: output height and width (shorter side resized to it, then a centre crop), or None
            to keep the native resolution.
        gray: one luma channel instead of RGB.
        choose: maps the video's frame count to the indices to return (e.g.
            :func:`uniform_indices`); None returns every frame. Decoding stops after the last
            chosen frame when the container states its frame count.

    Raises :class:`CorruptDataError` naming the file when it cannot be opened or decoded.
    """
    import av  # imported here: only the video sources need PyAV

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CorruptDataError(
                    f"{path} has no video stream; delete it or move it out of the data folder."
                )
            stream = container.streams.video[0]
            stated = stream.frames  # 0 when the container does not say
            if choose is not None and stated > 0:
                wanted = choose(stated).tolist()
                kept: dict[int, np.ndarray] = {}
                for index, frame in enumerate(container.decode(stream)):
                    if index in wanted:
                        kept[index] = _to_array(frame, size, gray)
                    if index >= max(wanted):
                        break
                if len(kept) == len(set(wanted)):
                    return _stack([kept[index] for index in wanted], path)
                container.seek(0)  # the header overstated the length: decode all and re-choose
            frames = list(container.decode(stream))
    except CorruptDataError:
        raise
    except Exception as error:  # PyAV raises FFmpegError subclasses, OSError, ValueError
        raise CorruptDataError(
            f"Cannot decode video {path}: {error}. Delete or replace the file (check it plays "
            "with `ffprobe`), or re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`."
        ) from error
    if not frames:
        raise CorruptDataError(f"{path} holds no decodable video frame; delete or replace it.")
    chosen = range(len(frames)) if choose is None else choose(len(frames)).tolist()
    return _stack([_to_array(frames[index], size, gray) for index in chosen], path)


def _stack(arrays: Sequence[np.ndarray], path: Path) -> Tensor:
    if not arrays:
        raise CorruptDataError(f"{path} holds no decodable video frame; delete or replace it.")
    stacked = np.stack(arrays)  # (N, H, W, C)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def collate_labeled(items: Sequence[tuple[Tensor, int]]) -> Labeled:
    """Stack (clip, label) pairs decoded in workers into one :class:`Labeled` batch."""
    return Labeled(
        torch.stack([clip for clip, _ in items]),
        torch.tensor([label for _, label in items], dtype=torch.long),
    )


def clip_statistics(clips: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 clips ``(N, C, T, H, W)``."""
    pixels = clips.float().div_(255)
    mean = pixels.mean(dim=(0, 2, 3, 4))
    std = pixels.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


# ------------------------------------------------------------------------ generated batches
def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of batch ``index`` of ``epoch``: statistically independent streams for
    every (seed, epoch, batch), derived by numpy's ``SeedSequence``."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


class SeededBatches(Dataset):
    """``length`` whole batches made on the fly; batch i of epoch e by ``draw(generator)`` with
    :func:`batch_generator` ``(seed, e, i)``.

    Each batch depends only on (seed, epoch, index), not on the run seed nor on which batches
    came before, so an epoch is reproducible and a resumed run sees the same clips. Use it with
    ``DataLoader(batch_size=None)``. ``epoch`` says which epoch is running. ``shard=(rank,
    world)`` returns clips ``rank::world`` of each batch: under DDP every process draws the same
    global batch (a millisecond's work) and keeps its share, so a global batch holds the same
    clips on any number of processes.
    """

    def __init__(
        self,
        draw: Callable[[torch.Generator], Any],
        length: int,
        seed: int,
        epoch: Callable[[], int],
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.draw = draw
        self.length = length
        self.seed = seed
        self.epoch = epoch
        self.rank, self.world = shard

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(index)
        batch = self.draw(batch_generator(self.seed, self.epoch(), index))
        if self.world == 1:
            return batch
        return type(batch)(*(part[self.rank :: self.world] for part in batch))


class EveryIndexSampler(DistributedSampler):
    """Every index in order on every process: for datasets that shard themselves
    (:class:`SeededBatches`). A ``DistributedSampler``, so Lightning does not put its own (which
    would hand each process a different subset of the batches) in its place."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- DataModule
class VideoDataModule(L.LightningDataModule):
    """Base class of the clip sources: the data facts configs interpolate, and batch settings.

    Subclasses yield uint8 clips ``(B, C, T, H, W)`` in :class:`~deeprecipe.batches.Labeled` or
    :class:`~deeprecipe.batches.Unlabeled` batches and set ``mean``/``std`` (per channel, [0, 1]
    units) in ``setup``; the method normalizes with them as it does for images.

    Args:
        num_classes: classes of the labelled task.
        in_chans: 1 (grey) or 3 (RGB).
        image_size: height and width of every frame.
        num_frames: frames per clip (T).
        batch_size: training clips per batch.
        eval_batch_size: clips per validation/test batch; defaults to ``batch_size``.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster copies to a GPU.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        image_size: int,
        num_frames: int,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ConfigError(f"data.in_chans={in_chans}; videos are read as 1 (grey) or 3 (RGB).")
        for name, value in (
            ("image_size", image_size),
            ("num_frames", num_frames),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size or 1),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{name}={value!r}; it must be a positive integer.")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers}; it must be >= 0.")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.image_size = image_size
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.mean: tuple[float, ...] = (0.5,) * in_chans
        self.std: tuple[float, ...] = (0.5,) * in_chans
        self._train_loaders_made = 0

    def process_share(self) -> tuple[int, int]:
        """(rank, world) of this process; ``data.batch_size`` must split evenly over the world:
        it is the GLOBAL batch, as for images (each process trains on batch_size / world)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch, split over {world} "
                f"processes; make it a multiple of {world}."
            )
        return rank, world

    def eval_sampler(self, dataset: Dataset) -> Sampler[int] | None:
        """Under DDP each process evaluates its own clips, none repeated (Lightning's default
        sampler pads the shards with repeated clips, which would count twice in val/test
        metrics); None with one process."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        return UnrepeatedDistributedSampler(
            dataset,  # type: ignore[arg-type]
            trainer.world_size,
            trainer.global_rank,
            shuffle=False,
        )

    def seeded_train_loader(
        self,
        draw: Callable[[torch.Generator], Any],
        length: int,
        seed: int,
        epoch: Callable[[], int] | None = None,
    ) -> DataLoader:
        """The training loader of ``length`` global batches drawn by ``draw`` (see
        :class:`SeededBatches`; ``epoch`` defaults to :meth:`epoch_source`), each process taking
        its share of every batch."""
        rank, world = self.process_share()
        epoch = epoch if epoch is not None else self.epoch_source()
        batches = SeededBatches(draw, length, seed, epoch, shard=(rank, world))
        sampler = EveryIndexSampler(batches) if world > 1 else None
        return DataLoader(batches, batch_size=None, sampler=sampler, pin_memory=self.pin_memory)

    def epoch_source(self) -> Callable[[], int]:
        """For a new training loader: what says which epoch runs. Under a trainer, its current
        epoch (Lightning makes the loader once per fit); without one, each new loader is the
        next epoch (0, 1, ...), so a loop over ``train_dataloader()`` calls sees new clips."""
        trainer = self.trainer
        if trainer is not None:
            return lambda: trainer.current_epoch
        epoch = self._train_loaders_made
        self._train_loaders_made += 1
        return lambda: epoch

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip."""
        return (self.in_chans, self.num_frames, self.image_size, self.image_size)
