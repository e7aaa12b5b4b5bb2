"""The user's videos laid out one folder per class (UCF101 / Kinetics style: ``root/CLASS/VIDEO``).

Videos are far too big to hold decoded, so each clip is decoded with PyAV inside the DataLoader
workers: ``num_frames`` frames chosen by ``sampling``, each resized so its shorter side is
``image_size`` and centre-cropped to a square (as :mod:`deeprecipe.data.image_folder` does for
images), shipped as uint8 ``(C, T, H, W)``.

``sampling``:

- ``uniform``: frames spread evenly over the whole video (:func:`~deeprecipe.data.video.
  uniform_indices`), the same in every epoch: a summary of the video, good for slow actions;
- ``random``: a contiguous window of frames ``stride`` apart at a random start in training (new
  every epoch), the centred window in validation and test, so evaluation is deterministic and
  sees the same time scale as training.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deeprecipe.data.video import (
    VIDEO_SUFFIXES,
    VideoDataModule,
    centre_window_start,
    clip_statistics,
    collate_labeled,
    decode_frames,
    random_window_start,
    uniform_indices,
    window_indices,
)
from deeprecipe.errors import ConfigError, CorruptDataError, DataNotFoundError

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "random")


def list_video_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (video, class index) for every video under ``root``.

    Raises :class:`DataNotFoundError` for a missing root and :class:`CorruptDataError` for a root
    without class folders or with an empty class folder (it would silently shift class indices).
    """
    if not root.is_dir():
        raise DataNotFoundError(
            f"Video folder {root} does not exist; set data.root to a folder laid out as "
            f"{root}/CLASS_NAME/VIDEO.mp4 (UCF101 and Kinetics unpack that way)."
        )
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CorruptDataError(
            f"{root} has no class folders; put each class's videos in {root}/CLASS_NAME/."
        )
    files: list[tuple[Path, int]] = []
    for index, folder in enumerate(classes):
        videos = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
        )
        if not videos:
            raise CorruptDataError(
                f"Class folder {folder} holds no videos ({', '.join(VIDEO_SUFFIXES)}); remove "
                "the folder or add videos to it."
            )
        files.extend((path, index) for path in videos)
    return [folder.name for folder in classes], files


def choose_frames(
    total: int,
    num_frames: int,
    sampling: str,
    stride: int,
    train: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of the ``num_frames`` frames a clip takes from a video of ``total`` frames."""
    if sampling == "uniform":
        return uniform_indices(total, num_frames)
    if train:
        start = random_window_start(total, num_frames, stride, generator)
    else:
        start = centre_window_start(total, num_frames, stride)
    return window_indices(total, num_frames, stride, start)


class VideoClipDataset(Dataset):
    """(clip uint8 (C, T, H, W), label) per video, decoded on access (in DataLoader workers).

    Training windows (``sampling=random``) draw from torch's global generator, which Lightning
    seeds per worker from the run seed (``seed_everything(workers=True)``).
    """

    def __init__(
        self,
        files: list[tuple[Path, int]],
        num_frames: int,
        image_size: int,
        gray: bool,
        sampling: str,
        stride: int,
        train: bool,
    ) -> None:
        self.files = files
        self.num_frames = num_frames
        self.image_size = image_size
        self.gray = gray
        self.sampling = sampling
        self.stride = stride
        self.train = train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.files[index]
        choose = partial(
            choose_frames,
            num_frames=self.num_frames,
            sampling=self.sampling,
            stride=self.stride,
            train=self.train,
        )
        frames = decode_frames(path, self.image_size, self.gray, choose)  # (T, C, H, W)
        return frames.transpose(0, 1).contiguous(), label  # (C, T, H, W)


class VideoFolderDataModule(VideoDataModule):
    """Videos in class folders, decoded into fixed-length clips in DataLoader workers.

    Args:
        root: training folder (``root/CLASS/VIDEO``), searched recursively inside each class.
        num_classes: class folders the data must have.
        in_chans: 1 (grey) or 3 (RGB).
        image_size: frame height and width.
        num_frames: frames per clip.
        sampling: ``uniform`` or ``random`` (see the module docstring).
        stride: frames between consecutive clip frames for ``sampling=random``.
        test_root: optional test folder with the same classes; without it ``test_size`` of
            ``root`` is held out.
        val_size: videos held out of the training folder for validation, a count (>= 1) or a
            fraction (< 1); seeded by ``split_seed``.
        test_size: share of ``root`` held out as test set when there is no ``test_root``.
        split_seed: seed of the splits, independent of the run seed.
        stats_clips: training clips decoded at setup to estimate the per-channel mean and std.
        batch_size, eval_batch_size, num_workers, pin_memory: see
            :class:`~deeprecipe.data.video.VideoDataModule`.
    """

    def __init__(
        self,
        root: str,
        num_classes: int,
        in_chans: int = 3,
        image_size: int = 112,
        num_frames: int = 16,
        sampling: str = "uniform",
        stride: int = 2,
        test_root: str | None = None,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 0,
        stats_clips: int = 32,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_chans=in_chans,
            image_size=image_size,
            num_frames=num_frames,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        if sampling not in SAMPLINGS:
            raise ConfigError(f"data.sampling={sampling!r}; choose {' or '.join(SAMPLINGS)}.")
        if stride < 1:
            raise ConfigError(f"data.stride={stride}; it must be a positive integer.")
        for name, value in (("val_size", val_size), ("test_size", test_size)):
            if value < 0:
                raise ConfigError(f"data.{name}={value}; it must be >= 0.")
        self.root = Path(root)
        self.test_root = Path(test_root) if test_root else None
        self.sampling = sampling
        self.stride = stride
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed
        self.stats_clips = stats_clips
        self.class_names: list[str] = []
        self.train_files: list[tuple[Path, int]] | None = None
        self.val_files: list[tuple[Path, int]] = []
        self.test_files: list[tuple[Path, int]] = []

    def prepare_data(self) -> None:
        self._list(self.root)  # fails early, naming the path and the fix
        if self.test_root is not None:
            self._list(self.test_root)

    def _list(self, root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
        names, files = list_video_folders(root)
        if len(names) != self.num_classes:
            raise ConfigError(
                f"{root} has {len(names)} class folders but data.num_classes={self.num_classes}; "
                f"set data.num_classes={len(names)}."
            )
        return names, files

    def setup(self, stage: str | None = None) -> None:
        if self.train_files is not None:
            return
        self.class_names, files = self._list(self.root)
        generator = torch.Generator().manual_seed(self.split_seed)
        if self.test_root is not None:
            test_names, self.test_files = self._list(self.test_root)
            if test_names != self.class_names:
                raise ConfigError(
                    f"The class folders of {self.test_root} ({', '.join(test_names)}) differ "
                    f"from those of {self.root} ({', '.join(self.class_names)}); give both the "
                    "same classes."
                )
        else:
            files, self.test_files = _split(files, self.test_size, generator, "data.test_size")
        train, self.val_files = _split(files, self.val_size, generator, "data.val_size")
        if len(train) < self.batch_size:
            raise ConfigError(
                f"{self.root} leaves {len(train)} training videos, fewer than data.batch_size="
                f"{self.batch_size}; lower the batch size or add videos."
            )
        self.train_files = train
        if self.stats_clips > 0:
            sample = torch.randperm(len(train), generator=generator)[: self.stats_clips]
            dataset = self._dataset([train[int(i)] for i in sample], train=False)
            clips = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, C, T, H, W)
            self.mean, self.std = clip_statistics(clips)
        log.info(
            "video folder %s: %d classes, %d train / %d val / %d test videos",
            self.root,
            len(self.class_names),
            len(train),
            len(self.val_files),
            len(self.test_files),
        )

    def _dataset(self, files: list[tuple[Path, int]], train: bool) -> VideoClipDataset:
        return VideoClipDataset(
            files,
            self.num_frames,
            self.image_size,
            self.in_chans == 1,
            self.sampling,
            self.stride,
            train,
        )

    def _loader(self, files: list[tuple[Path, int]] | None, train: bool) -> DataLoader:
        if files is None:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        # data.batch_size is the global batch: under DDP Lightning's sampler gives each process
        # a 1/world share of the videos, so each takes batch_size / world per step
        share = self.batch_size // self.process_share()[1] if train else self.eval_batch_size
        dataset = self._dataset(files, train)
        return DataLoader(
            dataset,
            batch_size=share,
            shuffle=train,
            sampler=None if train else self.eval_sampler(dataset),
            drop_last=train,
            collate_fn=collate_labeled,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_files, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_files, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_files, train=False)


def _split(
    files: list[tuple[Path, int]], size: float, generator: torch.Generator, name: str
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(kept, held out): ``size`` videos (a count >= 1 or a fraction < 1), seeded."""
    count = int(size) if size >= 1 else int(size * len(files))
    if count >= len(files):
        raise ConfigError(f"{name}={size} leaves no training video ({len(files)} in all).")
    order = torch.randperm(len(files), generator=generator).tolist()
    return [files[i] for i in order[count:]], [files[i] for i in order[:count]]
